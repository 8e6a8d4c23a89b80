//! int8 as a cost lever: a model's static int8 version, and a guard on what it costs in
//! answers.
//!
//! - Calibration inputs go through the model's own preparation (the task seam's `Prepare`:
//!   decoding, resizing, letterboxing, tokenising), then through a copy of the graph that
//!   exposes every activation the quantised graph needs ([`calibrate`]).
//! - The graph is rewritten in the QDQ form ONNX Runtime fuses into integer kernels
//!   (`singlepoint_graph::quant`), once per calibration method.
//! - The guard ([`measure`]) compares each int8 version with the float model on held-out
//!   inputs by the task's own measure: the top class for classifiers, matched detections for
//!   detectors, cosine for embeddings and tensor models. The method with the best agreement
//!   is kept; under the floor, the layers whose quantisation alone moves the outputs most stay
//!   in float, more of them until the floor holds; if it cannot hold with any layer
//!   quantised, nothing is written.

pub mod calibrate;
pub mod measure;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use singlepoint_backend::{BackendKind, EngineOptions};
use singlepoint_graph::quant::{self, QuantNode, Range, Role};
use singlepoint_graph::ModelProto;
use singlepoint_model::Model;
use singlepoint_protocol::ItemInput;

pub use calibrate::Method;
pub use measure::Measure;

use measure::Runner;

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{input}: {reason}")]
    Input { input: String, reason: String },
    #[error("{origin}: {reason}")]
    Model { origin: String, reason: String },
    #[error("{0}")]
    Engine(String),
    #[error(
        "no int8 version keeps {measure} agreement at {floor}: the best reached {best:.4} \
         with {float} of {total} layers in float; nothing was written"
    )]
    Unreachable {
        measure: &'static str,
        floor: f64,
        best: f64,
        float: usize,
        total: usize,
    },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// Fewest calibration and held-out inputs: fewer say nothing about a tensor's range or about
/// agreement.
pub const MIN_INPUTS: usize = 8;

/// One calibration or held-out input, and where it came from (for messages).
#[derive(Clone, Debug)]
pub struct Input {
    pub source: String,
    pub item: ItemInput,
}

/// How `quantize` works.
#[derive(Clone, Debug)]
pub struct Options {
    /// The least agreement with the float model the int8 version must keep (0 to 1).
    pub min_agreement: f64,
    /// Intra-op threads of the sessions `quantize` runs (and of the throughput it reports).
    pub threads: usize,
    /// Batch the throughput is measured at (items of one shape only).
    pub batch: usize,
    /// Calibration methods tried.
    pub methods: Vec<Method>,
    /// Calibration inputs the per-layer sensitivity is measured on (the first ones).
    pub sensitivity_inputs: usize,
    /// Layers (node names) the user keeps in float whatever they measure.
    pub keep_float: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            min_agreement: 0.99,
            threads: 1,
            batch: 16,
            methods: Method::ALL.to_vec(),
            sensitivity_inputs: 32,
            keep_float: Vec::new(),
        }
    }
}

impl Options {
    /// Checked once, before anything runs.
    pub fn validate(&self) -> Result<(), QuantizeError> {
        if !(self.min_agreement > 0.0 && self.min_agreement <= 1.0) {
            return Err(QuantizeError::Invalid(format!(
                "--min-agreement {} must be above 0 and at most 1",
                self.min_agreement
            )));
        }
        if self.threads == 0 || self.batch == 0 || self.methods.is_empty() {
            return Err(QuantizeError::Invalid(
                "threads, batch and the methods tried must not be zero".into(),
            ));
        }
        Ok(())
    }
}

/// One calibration method's int8 version with every layer quantised.
#[derive(Clone, Debug, Serialize)]
pub struct MethodResult {
    pub method: Method,
    pub agreement: f64,
}

/// A layer and how far quantising it alone moves the model's outputs (squared error over the
/// outputs' energy, on the sensitivity inputs).
#[derive(Clone, Debug, Serialize)]
pub struct Sensitivity {
    pub layer: String,
    pub op: String,
    pub error: f64,
}

/// Float and int8 throughput, measured alternately in one run.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub batch: usize,
    pub threads: usize,
    pub items: usize,
    pub float_per_s: f64,
    pub int8_per_s: f64,
    pub ratio: f64,
}

/// What `quantize` measured and chose; written next to the model as `quantize.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub base: String,
    pub base_digest: String,
    /// The base's precision, and this version's.
    pub precision: &'static str,
    pub measure: &'static str,
    pub min_agreement: f64,
    pub calibration_inputs: usize,
    pub holdout_inputs: usize,
    /// Every method, all layers quantised.
    pub methods: Vec<MethodResult>,
    pub method: Method,
    /// The written version's agreement on the held-out inputs.
    pub agreement: f64,
    pub quantized_layers: usize,
    /// Layers kept in float, most sensitive first.
    pub float_layers: Vec<String>,
    pub clips_folded: usize,
    /// Measured only when the floor failed with every layer quantised.
    pub sensitivity: Vec<Sensitivity>,
    pub float_bytes: usize,
    pub int8_bytes: usize,
    pub throughput: Throughput,
    /// The written model's digest (filled in by [`write`]).
    pub digest: String,
}

/// A finished `quantize`: the int8 graph and its report.
pub struct Outcome {
    pub onnx: Vec<u8>,
    pub report: Report,
}

fn model_error(model: &Model, reason: impl ToString) -> QuantizeError {
    QuantizeError::Model {
        origin: model.origin.clone(),
        reason: reason.to_string(),
    }
}

/// Progress lines for the user (stages, method results).
pub type Progress<'a> = &'a dyn Fn(&str);

/// Quantises `model` (whose ONNX Runtime library the caller has located).
pub fn quantize(
    model: Arc<Model>,
    calibration: Vec<Input>,
    holdout: Vec<Input>,
    options: &Options,
    progress: Progress,
) -> Result<Outcome, QuantizeError> {
    options.validate()?;
    for (what, n) in [
        ("calibration", calibration.len()),
        ("held-out", holdout.len()),
    ] {
        if n < MIN_INPUTS {
            return Err(QuantizeError::Invalid(format!(
                "{n} {what} input{} given; quantize needs {MIN_INPUTS} at least",
                if n == 1 { "" } else { "s" }
            )));
        }
    }
    let graph = singlepoint_graph::decode(&model.onnx).map_err(|e| model_error(&model, e))?;
    if quant::is_quantized(&graph) {
        return Err(model_error(
            &model,
            "the model is already quantised (it holds quantised operators or int8 weights); \
             quantize a float model",
        ));
    }
    let nodes = quant::quantizable(&graph);
    let layers: Vec<&QuantNode> = nodes
        .iter()
        .filter(|n| matches!(n.role, Role::Weighted | Role::Elementwise))
        .collect();
    if !layers.iter().any(|n| n.role == Role::Weighted) {
        return Err(model_error(
            &model,
            "it has no Conv, Gemm or MatMul with constant weights to quantise",
        ));
    }
    for name in &options.keep_float {
        if !layers.iter().any(|l| &l.name == name) {
            return Err(model_error(
                &model,
                format!(
                    "it has no quantisable layer `{name}` (they are: {})",
                    layers
                        .iter()
                        .map(|l| l.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    let kept: HashSet<String> = options.keep_float.iter().cloned().collect();
    let measure = Measure::of(&model);
    let engine_options = EngineOptions {
        threads_per_session: options.threads,
        spin_wait: false,
    };
    let runner = Runner::new(model.clone(), engine_options, options.batch);
    progress(&format!(
        "preparing {} calibration and {} held-out inputs",
        calibration.len(),
        holdout.len()
    ));
    let calib = runner.prepare(calibration)?;
    let held = runner.prepare(holdout)?;

    progress("calibrating (two passes: bounds, then histograms)");
    let tensors = quant::calibration_tensors(&graph);
    let stats = runner.calibrate(&graph, &tensors, &calib)?;

    let float_engine = runner.engine(model.onnx.to_vec())?;
    let reference = runner.answers(&float_engine, &held)?;
    let build = |ranges: &HashMap<String, Range>, float: &HashSet<String>| {
        let float: HashSet<String> = float.union(&kept).cloned().collect();
        quant::quantize(&graph, ranges, &float).map_err(|e| model_error(&model, e))
    };
    let evaluate = |q: &ModelProto| -> Result<f64, QuantizeError> {
        let engine = runner.engine(singlepoint_graph::encode(q))?;
        let answers = runner.answers(&engine, &held)?;
        Ok(measure.agreement(&reference, &answers))
    };

    let mut methods = Vec::new();
    let mut best: Option<(f64, Method, HashMap<String, Range>)> = None;
    for &method in &options.methods {
        let ranges: HashMap<String, Range> = stats
            .iter()
            .map(|(t, s)| (t.clone(), s.range(method)))
            .collect();
        let (q, _) = build(&ranges, &HashSet::new())?;
        let agreement = evaluate(&q)?;
        progress(&format!(
            "{}: {} agreement {agreement:.4} with every layer in int8",
            method.as_str(),
            measure.as_str()
        ));
        methods.push(MethodResult { method, agreement });
        if best.as_ref().is_none_or(|b| agreement > b.0) {
            best = Some((agreement, method, ranges));
        }
    }
    let (mut agreement, method, ranges) = best.expect("at least one method");

    let mut float: Vec<String> = Vec::new();
    let mut sensitivity = Vec::new();
    if agreement < options.min_agreement {
        progress(&format!(
            "below {}: measuring each of {} layers' sensitivity on {} calibration inputs",
            options.min_agreement,
            layers.len(),
            options.sensitivity_inputs.min(calib.len())
        ));
        let subset = calib.first(options.sensitivity_inputs);
        let exact = runner.outputs(&float_engine, &subset)?;
        let all: HashSet<String> = layers.iter().map(|n| n.name.clone()).collect();
        for layer in &layers {
            let mut others = all.clone();
            others.remove(&layer.name);
            let (q, _) = build(&ranges, &others)?;
            let engine = runner.engine(singlepoint_graph::encode(&q))?;
            let got = runner.outputs(&engine, &subset)?;
            sensitivity.push(Sensitivity {
                layer: layer.name.clone(),
                op: layer.op.clone(),
                error: measure::relative_error(&exact, &got),
            });
        }
        sensitivity.sort_by(|a, b| b.error.total_cmp(&a.error));
        progress(&format!(
            "most sensitive: {}",
            sensitivity
                .iter()
                .take(5)
                .map(|s| format!("{} {:.2e}", s.layer, s.error))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let ranked: Vec<String> = sensitivity.iter().map(|s| s.layer.clone()).collect();
        let with = |k: usize| -> Result<f64, QuantizeError> {
            let set: HashSet<String> = ranked[..k].iter().cloned().collect();
            let (q, _) = build(&ranges, &set)?;
            let a = evaluate(&q)?;
            progress(&format!(
                "{k} most sensitive layer{} in float: agreement {a:.4}",
                if k == 1 { "" } else { "s" }
            ));
            Ok(a)
        };
        // Doubling until the floor holds, then bisection down to the fewest layers.
        let (mut failing, mut holding) = (0usize, None::<(usize, f64)>);
        let mut k = 1;
        let mut best_seen = (agreement, 0usize);
        while k < ranked.len() {
            let a = with(k)?;
            if a > best_seen.0 {
                best_seen = (a, k);
            }
            if a >= options.min_agreement {
                holding = Some((k, a));
                break;
            }
            failing = k;
            k *= 2;
        }
        if holding.is_none() && failing < ranked.len() - 1 {
            let k = ranked.len() - 1;
            let a = with(k)?;
            if a > best_seen.0 {
                best_seen = (a, k);
            }
            if a >= options.min_agreement {
                holding = Some((k, a));
            }
        }
        let Some((mut hi, mut hi_agreement)) = holding else {
            return Err(QuantizeError::Unreachable {
                measure: measure.as_str(),
                floor: options.min_agreement,
                best: best_seen.0,
                float: best_seen.1,
                total: ranked.len(),
            });
        };
        while hi - failing > 1 {
            let mid = failing + (hi - failing) / 2;
            let a = with(mid)?;
            if a >= options.min_agreement {
                hi = mid;
                hi_agreement = a;
            } else {
                failing = mid;
            }
        }
        float = ranked[..hi].to_vec();
        agreement = hi_agreement;
    }
    let (q, summary) = build(&ranges, &float.iter().cloned().collect())?;
    let onnx = singlepoint_graph::encode(&q);
    progress("measuring float and int8 throughput");
    let int8_engine = runner.engine(onnx.clone())?;
    let throughput = runner.throughput(&float_engine, &int8_engine, &held)?;
    let report = Report {
        base: model.origin.clone(),
        base_digest: model.digest.to_string(),
        precision: "int8",
        measure: measure.as_str(),
        min_agreement: options.min_agreement,
        calibration_inputs: calib.len(),
        holdout_inputs: held.len(),
        methods,
        method,
        agreement,
        quantized_layers: summary
            .quantized
            .iter()
            .filter(|n| layers.iter().any(|l| &l.name == *n))
            .count(),
        float_layers: {
            let mut all = float;
            all.extend(
                options
                    .keep_float
                    .iter()
                    .filter(|k| !all.contains(k))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            all
        },
        clips_folded: summary.folded,
        sensitivity,
        float_bytes: model.onnx.len(),
        int8_bytes: onnx.len(),
        throughput,
        digest: String::new(),
    };
    Ok(Outcome { onnx, report })
}

/// The name of the report file in a quantised model's folder.
pub const REPORT: &str = "quantize.json";

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), QuantizeError> {
    std::fs::write(path, bytes).map_err(|e| QuantizeError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The agreement of `variant` (a version of `base`: the same task and preparation, another
/// graph) with `base` on `inputs`, by the task's own measure.
pub fn agreement(
    base: Arc<Model>,
    variant: &Model,
    inputs: Vec<Input>,
    threads: usize,
) -> Result<f64, QuantizeError> {
    let options = EngineOptions {
        threads_per_session: threads,
        spin_wait: false,
    };
    let measure = Measure::of(&base);
    let runner = Runner::new(base.clone(), options, Options::default().batch);
    let items = runner.prepare(inputs)?;
    let exact = runner.answers(&runner.engine(base.onnx.to_vec())?, &items)?;
    let given = runner.answers(&runner.engine(variant.onnx.to_vec())?, &items)?;
    Ok(measure.agreement(&exact, &given))
}

/// Writes the int8 version to `dir` (created; it must not hold a model already): the base's
/// manifest and files with the int8 graph, and the report with the written model's digest.
pub fn write(base: &Model, outcome: &mut Outcome, dir: &Path) -> Result<(), QuantizeError> {
    if dir.join("model.json").exists() {
        return Err(QuantizeError::Io {
            path: dir.to_path_buf(),
            reason: "already holds a model; give a new folder".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| QuantizeError::Io {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut manifest: serde_json::Value = serde_json::from_str(&base.manifest_text)
        .map_err(|e| model_error(base, format!("its model.json: {e}")))?;
    manifest["onnx"] = serde_json::json!("model.onnx");
    for (rel, bytes) in &base.files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| QuantizeError::Io {
                path: parent.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        write_file(&path, bytes)?;
    }
    write_file(&dir.join("model.onnx"), &outcome.onnx)?;
    let text = serde_json::to_string_pretty(&manifest).expect("serialises");
    write_file(&dir.join("model.json"), format!("{text}\n").as_bytes())?;
    let written = Model::load(dir).map_err(|e| model_error(base, e))?;
    outcome.report.digest = written.digest.to_string();
    let json = serde_json::to_string_pretty(&outcome.report).expect("serialises");
    write_file(&dir.join(REPORT), format!("{json}\n").as_bytes())
}

/// A quantised model's report, as `tune` reads it: the base's digest and its agreement.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct ReportHeader {
    pub base_digest: String,
    pub agreement: f64,
    pub measure: String,
}

/// Reads the report of the int8 version in `dir`.
pub fn read_report(dir: &Path) -> Result<ReportHeader, QuantizeError> {
    let path = dir.join(REPORT);
    let text = std::fs::read_to_string(&path).map_err(|e| QuantizeError::Io {
        path: path.clone(),
        reason: format!("{e} (is it a folder `singlepoint quantize` wrote?)"),
    })?;
    serde_json::from_str(&text).map_err(|e| QuantizeError::Io {
        path,
        reason: e.to_string(),
    })
}

/// ONNX Runtime runs the int8 graphs; `quantize` has no other engine.
pub const ENGINE: BackendKind = BackendKind::Ort;
