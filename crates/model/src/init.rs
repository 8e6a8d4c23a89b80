//! Writes a `model.json` for a bare ONNX file (`singlepoint init`): names, element types and
//! shapes (with the file's dimension names) come from the file's signature; what the file
//! cannot say (an image model's normalisation and resize recipe, which values pad shorter
//! items) comes from the caller, and a task that needs a fact nobody gave is refused with the
//! fields and the flags that give them.

use std::path::Path;

use serde_json::{json, Value};
use singlepoint_core::{Dim, TensorSpec};

use crate::manifest::{Activation, ColorOrder, CropRounding, ResizeFilter};
use crate::onnx::{self, SignatureError};
use crate::Task;

/// What `init` is told besides the ONNX file.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub name: String,
    /// The ONNX file's path relative to the manifest.
    pub onnx: String,
    pub task: Option<Task>,
    pub labels: Option<String>,
    /// `(input, value)`: pad this input's shorter items with `value`.
    pub pads: Vec<(String, f64)>,
    /// The largest size of every dynamic (non-batch) axis.
    pub max_length: Option<usize>,
    pub image: ImageOptions,
}

impl Options {
    /// A `tensor` model named `name` whose ONNX file is `onnx`.
    pub fn tensor(name: &str, onnx: &str) -> Options {
        Options {
            name: name.to_string(),
            onnx: onnx.to_string(),
            task: Some(Task::Tensor),
            ..Options::default()
        }
    }
}

/// The preprocessing facts of an image model.
#[derive(Clone, Debug, Default)]
pub struct ImageOptions {
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    pub scale: Option<f32>,
    /// `Some(n)`: resize the shorter side to `n`, then centre-crop to the model's size;
    /// `None` with `exact`: stretch to the model's size.
    pub shorter_side: Option<u32>,
    pub exact: bool,
    pub filter: Option<ResizeFilter>,
    pub crop_rounding: Option<CropRounding>,
    pub color: Option<ColorOrder>,
    /// Whether the output holds logits (`softmax`) or probabilities already (`none`).
    pub activation: Option<Activation>,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("`{file}`: {source}")]
    Signature {
        file: String,
        #[source]
        source: SignatureError,
    },
    #[error("{task} needs facts that `{file}` does not hold: {}", .missing.iter().map(|(f, flag)| format!("`{f}` ({flag})")).collect::<Vec<_>>().join(", "))]
    Missing {
        task: &'static str,
        file: String,
        /// `(manifest field, flag that gives it)`
        missing: Vec<(&'static str, &'static str)>,
    },
    #[error("{0}")]
    Invalid(String),
}

fn dims(spec: &TensorSpec) -> Value {
    Value::Array(
        spec.shape
            .iter()
            .enumerate()
            .map(|(i, d)| match (d, spec.symbol(i)) {
                (Dim::Fixed(n), _) => json!(n),
                (Dim::Dynamic, Some(s)) => json!(s),
                (Dim::Dynamic, None) => json!(-1),
            })
            .collect(),
    )
}

/// The manifest text for the ONNX model in `bytes` (read from `file`, named in messages).
pub fn describe(file: &Path, bytes: &[u8], options: &Options) -> Result<String, InitError> {
    let shown = file.display().to_string();
    let sig = onnx::signature(bytes).map_err(|source| InitError::Signature {
        file: shown.clone(),
        source,
    })?;
    for (name, _) in &options.pads {
        if !sig.inputs.iter().any(|i| &i.name == name) {
            let names: Vec<&str> = sig.inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(InitError::Invalid(format!(
                "--pad names `{name}`, which is not an input of `{shown}`; its inputs are {}",
                names.join(", ")
            )));
        }
    }
    for t in sig.inputs.iter().chain(&sig.outputs) {
        if t.shape.is_empty() {
            return Err(InitError::Invalid(format!(
                "`{}` in `{shown}` is a scalar; singlepoint batches along a tensor's first axis",
                t.name
            )));
        }
    }
    let task = options.task.unwrap_or(Task::Tensor);
    let mut fields: Vec<(&str, Value)> = vec![
        ("name", json!(options.name)),
        ("version", json!("1")),
        ("task", json!(task.as_str())),
        ("onnx", json!(options.onnx)),
    ];
    let tensor = |t: &TensorSpec, with_rules: bool| {
        let mut v = json!({ "name": t.name, "dtype": t.dtype.as_str(), "shape": dims(t) });
        let varies = t.shape[1..].contains(&Dim::Dynamic);
        if with_rules && varies {
            if let Some((_, pad)) = options.pads.iter().find(|(n, _)| *n == t.name) {
                v["pad"] = json!(pad);
            }
            if let Some(max) = options.max_length {
                v["max_length"] = json!(max);
            }
        }
        v
    };
    match task {
        Task::Tensor => {
            if options.labels.is_some() {
                return Err(InitError::Invalid(
                    "--labels belongs to image tasks; a `tensor` model gives its outputs as they are"
                        .into(),
                ));
            }
            fields.push((
                "inputs",
                Value::Array(sig.inputs.iter().map(|t| tensor(t, true)).collect()),
            ));
            fields.push((
                "outputs",
                Value::Array(sig.outputs.iter().map(|t| tensor(t, false)).collect()),
            ));
        }
        Task::ObjectDetection => {
            return Err(InitError::Invalid(
                "init writes `tensor` and `image-classification` manifests; for an object detector write the `detection` section (output layout, thresholds) and its letterbox by hand, as models/yolov3-tiny/model.json does".into(),
            ))
        }
        Task::TextEmbedding | Task::TextClassification => {
            return Err(InitError::Invalid(format!(
                "init writes `tensor` and `image-classification` manifests; for `{}` write the `text` section (tokenizer file, max_length, pooling) by hand, as models/all-minilm-l6-v2/model.json does",
                task.as_str()
            )))
        }
        Task::ImageClassification => {
            let image = image_fields(&shown, &sig, options)?;
            fields.push(("inputs", json!([tensor(&sig.inputs[0], false)])));
            fields.push(("outputs", json!([tensor(&sig.outputs[0], false)])));
            fields.extend(image);
            if let Some(labels) = &options.labels {
                fields.push(("labels", json!(labels)));
            }
        }
    }
    // One field per line, tensors one per line: the layout of the bundled manifests.
    let mut text = String::from("{\n");
    for (i, (key, value)) in fields.iter().enumerate() {
        let rendered = match value {
            Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
                let lines: Vec<String> = items.iter().map(|v| format!("    {v}")).collect();
                format!("[\n{}\n  ]", lines.join(",\n"))
            }
            other => other.to_string(),
        };
        let comma = if i + 1 < fields.len() { "," } else { "" };
        text.push_str(&format!("  {}: {rendered}{comma}\n", json!(key)));
    }
    text.push_str("}\n");
    Ok(text)
}

fn image_fields(
    shown: &str,
    sig: &onnx::Signature,
    options: &Options,
) -> Result<Vec<(&'static str, Value)>, InitError> {
    let [input] = sig.inputs.as_slice() else {
        return Err(InitError::Invalid(format!(
            "image classification takes one input; `{shown}` has {}",
            sig.inputs.len()
        )));
    };
    let fixed: Vec<Option<usize>> = input.shape.iter().map(|d| d.fixed()).collect();
    let (layout, channels, h, w) = match fixed.as_slice() {
        [_, Some(c @ (1 | 3)), Some(h), Some(w)] => ("nchw", *c, *h, *w),
        [_, Some(h), Some(w), Some(c @ (1 | 3))] => ("nhwc", *c, *h, *w),
        _ => {
            return Err(InitError::Invalid(format!(
                "input `{}` of `{shown}` has shape {}; an image model takes [batch, 1 or 3, height, width] or [batch, height, width, 1 or 3] with fixed sizes",
                input.name,
                input.shape_string()
            )))
        }
    };
    let o = &options.image;
    let mut missing = Vec::new();
    if o.mean.is_none() {
        missing.push(("preprocess.mean", "--mean"));
    }
    if o.std.is_none() {
        missing.push(("preprocess.std", "--std"));
    }
    if o.shorter_side.is_none() && !o.exact {
        missing.push((
            "preprocess.resize",
            "--resize-shorter N (then a centre crop) or --resize-exact",
        ));
    }
    if o.filter.is_none() {
        missing.push(("preprocess.resize.filter", "--filter"));
    }
    if o.shorter_side.is_some() && o.crop_rounding.is_none() {
        missing.push((
            "preprocess.crop.rounding",
            "--crop-rounding floor|half_even",
        ));
    }
    if o.activation.is_none() {
        missing.push(("postprocess.activation", "--activation softmax|none"));
    }
    if !missing.is_empty() {
        return Err(InitError::Missing {
            task: "image-classification",
            file: shown.to_string(),
            missing,
        });
    }
    let color = match (channels, o.color) {
        (1, _) => ColorOrder::Gray,
        (_, Some(ColorOrder::Gray)) | (_, None) => ColorOrder::Rgb,
        (_, Some(c)) => c,
    };
    let color = match color {
        ColorOrder::Rgb => "rgb",
        ColorOrder::Bgr => "bgr",
        ColorOrder::Gray => "gray",
    };
    let filter = match o.filter.unwrap_or(ResizeFilter::Bilinear) {
        ResizeFilter::Nearest => "nearest",
        ResizeFilter::Bilinear => "bilinear",
        ResizeFilter::Bicubic => "bicubic",
        ResizeFilter::Lanczos3 => "lanczos3",
    };
    let mut preprocess = json!({
        "color": color,
        "scale": o.scale.unwrap_or(1.0),
        "mean": o.mean,
        "std": o.std,
        "layout": layout,
    });
    match o.shorter_side {
        Some(size) => {
            preprocess["resize"] = json!({ "shorter_side": size, "filter": filter });
            let rounding = match o.crop_rounding {
                Some(CropRounding::HalfEven) => "half_even",
                _ => "floor",
            };
            preprocess["crop"] = json!({ "center": [h, w], "rounding": rounding });
        }
        None => preprocess["resize"] = json!({ "exact": [h, w], "filter": filter }),
    }
    Ok(vec![
        ("preprocess", preprocess),
        (
            "postprocess",
            json!({ "activation": match o.activation {
                Some(Activation::None) => "none",
                _ => "softmax",
            } }),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Manifest;

    fn digits() -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/digits-cnn/model.onnx"),
        )
        .unwrap()
    }

    #[test]
    fn a_tensor_manifest_from_the_signature_parses() {
        let text = describe(
            Path::new("d/model.onnx"),
            &digits(),
            &Options::tensor("d", "model.onnx"),
        )
        .unwrap();
        let m = Manifest::from_json(Path::new("d/model.json"), &text).unwrap();
        assert_eq!(m.task, Task::Tensor);
        assert_eq!(m.inputs[0].spec.shape_string(), "[-1, 1, 8, 8]");
        assert_eq!(m.outputs[0].name, "logits");
    }

    #[test]
    fn an_image_model_without_its_preprocessing_is_refused_naming_each_fact() {
        let mut options = Options::tensor("d", "model.onnx");
        options.task = Some(Task::ImageClassification);
        let err = describe(Path::new("d/model.onnx"), &digits(), &options).unwrap_err();
        let InitError::Missing { missing, .. } = &err else {
            panic!("{err}");
        };
        let fields: Vec<&str> = missing.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            [
                "preprocess.mean",
                "preprocess.std",
                "preprocess.resize",
                "preprocess.resize.filter",
                "postprocess.activation"
            ]
        );
        options.image = ImageOptions {
            mean: Some(vec![0.0]),
            std: Some(vec![16.0]),
            exact: true,
            filter: Some(ResizeFilter::Bilinear),
            activation: Some(Activation::Softmax),
            ..ImageOptions::default()
        };
        let text = describe(Path::new("d/model.onnx"), &digits(), &options).unwrap();
        let m = Manifest::from_json(Path::new("d/model.json"), &text).unwrap();
        assert_eq!(m.image.unwrap().preprocess.item_shape(), [1, 8, 8]);
    }

    #[test]
    fn a_pad_for_an_input_the_model_lacks_is_refused() {
        let mut options = Options::tensor("d", "model.onnx");
        options.pads = vec![("ids".into(), 0.0)];
        let err = describe(Path::new("d/model.onnx"), &digits(), &options).unwrap_err();
        assert!(err.to_string().contains("`ids`"), "{err}");
    }
}
