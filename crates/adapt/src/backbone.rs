//! Where a model's features come from, and the graph a head is appended to.
//!
//! - An image classifier whose output is a linear layer: the layer's input (EfficientNet-Lite0's
//!   1,280 pooled features), exposed as the only output of a features model that keeps the
//!   classifier's preprocessing.
//! - A text-embedding model with mean pooling: its own embeddings (`embed`'s path and cache);
//!   the head is appended after mean pooling and L2 normalisation built into the graph.
//! - A text classifier whose output is a linear layer (an adapted version): the layer's input
//!   (the pooled, normalised vector), exposed as a text-embedding model without pooling.
//!
//! Features run through the single point like every other answer, so they are cached under the
//! features model's digest and computed once.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use singlepoint_graph::{HeadInput, ModelProto};
use singlepoint_model::{Model, Pooling, Task, TextInput};
use singlepoint_runtime::{Classifier, InputEntry, RunStats, TextEntry, TextOptions};

use crate::examples::{Example, Examples};
use crate::AdaptError;

/// One input's features, or why it has none.
pub type FeatureRow = Result<Vec<f32>, String>;

/// How features are read from a base model.
#[derive(Clone, Debug)]
pub struct Backbone {
    /// The model run to get features (for a text embedder, the base itself).
    pub features_model: Arc<Model>,
    /// Feature width.
    pub width: usize,
    /// Texts: the embedding options features are read with (L2-normalised or not).
    pub text_normalize: Option<bool>,
    /// The graph a head is appended to, where on it, and whether it normalises first.
    pub graph: ModelProto,
    pub head_input: HeadInput,
    pub normalize_in_head: bool,
    /// The base model, whose manifest the adapted one starts from.
    pub base: Arc<Model>,
}

fn graph_error(model: &Model, e: singlepoint_graph::GraphError) -> AdaptError {
    AdaptError::Model(format!("{}: {e}", model.origin))
}

/// The manifest `base` is written with, as JSON.
pub(crate) fn manifest_json(base: &Model) -> Result<Value, AdaptError> {
    serde_json::from_str(&base.manifest_text)
        .map_err(|e| AdaptError::Model(format!("{}: its model.json: {e}", base.origin)))
}

/// Builds a model in memory from a manifest and its ONNX bytes (the base's tokenizer, if any).
pub(crate) fn model_from(
    base: &Model,
    manifest: &Value,
    onnx: Vec<u8>,
) -> Result<Model, AdaptError> {
    let text = serde_json::to_string_pretty(manifest).expect("JSON values serialise");
    let tokenizer = base.tokenizer_json.clone();
    let onnx = std::sync::Mutex::new(Some(onnx));
    let name = manifest["name"].as_str().unwrap_or("adapted").to_string();
    Model::from_parts(
        format!("{} (derived)", base.origin),
        &PathBuf::from(format!("{name}/model.json")),
        &text,
        |file| {
            let found = match file {
                "model.onnx" => onnx.lock().unwrap_or_else(|p| p.into_inner()).take(),
                "tokenizer.json" => tokenizer.as_deref().map(<[u8]>::to_vec),
                _ => None,
            };
            found.ok_or_else(|| singlepoint_model::ModelError::Io {
                path: file.into(),
                source: std::io::ErrorKind::NotFound.into(),
            })
        },
    )
    .map_err(|e| AdaptError::Model(e.to_string()))
}

fn output_spec(name: &str, width: usize) -> Value {
    json!([{ "name": name, "dtype": "float32", "shape": [-1, width] }])
}

impl Backbone {
    /// How features are read from `base`.
    pub fn of(base: Arc<Model>) -> Result<Backbone, AdaptError> {
        let graph = singlepoint_graph::decode(&base.onnx).map_err(|e| graph_error(&base, e))?;
        let output = base.manifest.outputs[0].name.clone();
        let mut manifest = manifest_json(&base)?;
        manifest["onnx"] = json!("model.onnx");
        manifest["name"] = json!(format!("{}.features", base.manifest.name));
        match base.manifest.task {
            Task::ImageClassification | Task::TextClassification => {
                let features = singlepoint_graph::classifier_features(&graph, &output)
                    .map_err(|e| graph_error(&base, e))?;
                let exposed = singlepoint_graph::expose(&graph, &features)
                    .map_err(|e| graph_error(&base, e))?;
                let obj = manifest.as_object_mut().expect("a manifest is an object");
                obj.remove("labels");
                obj.remove("label_groups");
                obj.remove("postprocess");
                obj.insert(
                    "outputs".into(),
                    output_spec(&features.tensor, features.width),
                );
                let text_normalize = if base.manifest.task == Task::TextClassification {
                    obj.insert("task".into(), json!("text-embedding"));
                    if let Some(t) = obj.get_mut("text").and_then(Value::as_object_mut) {
                        t.insert("tokenizer".into(), json!("tokenizer.json"));
                        t.insert("normalize".into(), json!(false));
                    }
                    Some(false)
                } else {
                    obj.insert("postprocess".into(), json!({ "activation": "none" }));
                    None
                };
                let features_model =
                    model_from(&base, &manifest, singlepoint_graph::encode(&exposed))?;
                Ok(Backbone {
                    features_model: Arc::new(features_model),
                    width: features.width,
                    text_normalize,
                    graph: exposed,
                    head_input: HeadInput::Vector(features.tensor),
                    normalize_in_head: false,
                    base,
                })
            }
            Task::TextEmbedding => {
                let text = base.manifest.text.as_ref().expect("a text model");
                let spec = &base.manifest.outputs[0];
                let width = spec.shape.last().and_then(|d| d.fixed()).ok_or_else(|| {
                    AdaptError::Model(format!(
                        "{}: the embedding width ({}) is not declared",
                        base.origin,
                        spec.shape_string()
                    ))
                })?;
                let head_input = match text.pooling {
                    None => HeadInput::Vector(spec.name.clone()),
                    Some(Pooling::Mean) => {
                        let mask = text
                            .roles
                            .iter()
                            .position(|r| *r == TextInput::Mask)
                            .map(|i| base.manifest.inputs[i].spec.name.clone())
                            .ok_or_else(|| {
                                AdaptError::Model(format!(
                                    "{}: mean pooling needs an attention_mask input",
                                    base.origin
                                ))
                            })?;
                        HeadInput::MeanPool {
                            hidden: spec.name.clone(),
                            mask,
                        }
                    }
                    Some(other) => {
                        return Err(AdaptError::Model(format!(
                            "{}: adapt builds heads on mean-pooled embedders; this one pools by \
                             {other:?}",
                            base.origin
                        )))
                    }
                };
                Ok(Backbone {
                    features_model: base.clone(),
                    width,
                    text_normalize: Some(text.normalize),
                    graph,
                    head_input,
                    normalize_in_head: text.normalize,
                    base,
                })
            }
            other => Err(AdaptError::Model(format!(
                "{}: adapt trains heads on image-classification, text-embedding and \
                 text-classification models, not {}",
                base.origin,
                other.as_str()
            ))),
        }
    }

    /// The features of every example, in order (a failed one is its error), through
    /// `classifier` (the features model on the caller's engine and cache).
    pub fn features(
        &self,
        classifier: &Classifier,
        items: &[Example],
    ) -> Result<(Vec<FeatureRow>, RunStats), AdaptError> {
        let mut out = Vec::with_capacity(items.len());
        let run = |e: singlepoint_runtime::RuntimeError| AdaptError::Run(e.to_string());
        let stats = match self.text_normalize {
            None => {
                let mut inputs = Vec::new();
                for item in items {
                    match item {
                        Example::Image(path) => inputs.push(InputEntry {
                            path: path.clone(),
                            problem: None,
                        }),
                        Example::Text { from, .. } => {
                            return Err(AdaptError::Mismatch(format!(
                                "{from} is a text; {} reads images",
                                self.base.manifest.name
                            )))
                        }
                    }
                }
                classifier
                    .rows(inputs.into_iter(), |r| {
                        out.push(r.outcome.map_err(|e| e.to_string()));
                        ControlFlow::Continue(())
                    })
                    .map_err(run)?
            }
            Some(normalize) => {
                let mut texts = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Example::Text { text, from } => texts.push(TextEntry {
                            path: PathBuf::from(from),
                            line: i + 1,
                            text: Ok(Arc::from(text.as_str())),
                        }),
                        Example::Image(path) => {
                            return Err(AdaptError::Mismatch(format!(
                                "{} is a file; {} reads texts (give a TSV of label and text)",
                                path.display(),
                                self.base.manifest.name
                            )))
                        }
                    }
                }
                let options = TextOptions {
                    truncate: true,
                    normalize: Some(normalize),
                };
                classifier
                    .embed(texts.into_iter(), options, |r| {
                        out.push(r.outcome.map(|a| a.answer).map_err(|e| e.to_string()));
                        ControlFlow::Continue(())
                    })
                    .map_err(run)?
            }
        };
        Ok((out, stats))
    }

    /// Features of labelled examples: the rows that succeeded with their labels, and each
    /// failure (`source: reason`).
    pub fn labelled(
        &self,
        classifier: &Classifier,
        examples: &Examples,
    ) -> Result<LabelledFeatures, AdaptError> {
        let (rows, stats) = self.features(classifier, &examples.items)?;
        let mut out = LabelledFeatures {
            stats,
            ..LabelledFeatures::default()
        };
        for ((row, item), &label) in rows.into_iter().zip(&examples.items).zip(&examples.labels) {
            let source = match item {
                Example::Image(p) => p.display().to_string(),
                Example::Text { from, .. } => from.clone(),
            };
            match row {
                Ok(f) => {
                    out.features.push(f);
                    out.labels.push(label);
                    out.sources.push(source);
                }
                Err(e) => out.failed.push(format!("{source}: {e}")),
            }
        }
        Ok(out)
    }
}

/// Feature rows with their labels and where each came from.
#[derive(Clone, Debug, Default)]
pub struct LabelledFeatures {
    pub features: Vec<Vec<f32>>,
    pub labels: Vec<usize>,
    pub sources: Vec<String>,
    pub failed: Vec<String>,
    pub stats: RunStats,
}
