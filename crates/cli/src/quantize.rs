//! `singlepoint quantize`: a model's int8 version, calibrated on the user's inputs and kept
//! only when it agrees with the float model on held-out ones.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use singlepoint_model::Model;
use singlepoint_quantize::{Input, Method, Options, Outcome};
use singlepoint_runtime::ItemInput;
use singlepoint_runtime::{Inputs, TextLines};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MethodArg {
    Minmax,
    Percentile,
    Entropy,
}

#[derive(Args)]
pub struct QuantizeArgs {
    /// The float model: a model folder or model.json (default: the bundled EfficientNet-Lite0)
    model: Option<PathBuf>,

    /// Calibration inputs: images (files, folders, globs) for an image model, text files
    /// (one text a line) for a text model; they go through the model's own preprocessing
    #[arg(long, num_args = 1.., value_name = "INPUTS", required = true)]
    calibration: Vec<String>,

    /// Held-out inputs, in the same form, the int8 version is compared with the float model
    /// on (default: every second calibration input, which then is not calibrated on)
    #[arg(long, num_args = 1.., value_name = "INPUTS")]
    holdout: Vec<String>,

    /// The least agreement with the float model to keep (top-1 for classifiers, matched
    /// detections for detectors, mean cosine for embedders): under it the most sensitive
    /// layers stay in float; if no int8 version reaches it, nothing is written
    #[arg(long, default_value_t = 0.99)]
    min_agreement: f64,

    /// Write the int8 version to this new folder (its report in quantize.json)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Calibration methods to try (default: all three; the best agreement wins)
    #[arg(long = "method", value_enum)]
    methods: Vec<MethodArg>,

    /// Keep this layer (an ONNX node name) in float, whatever it measures; repeatable
    #[arg(long = "keep-float", value_name = "LAYER")]
    keep_float: Vec<String>,

    /// Threads of each session (and of the throughput reported)
    #[arg(long, default_value_t = 1)]
    threads: usize,

    /// Batch size the throughput is measured at
    #[arg(long, default_value_t = 16)]
    batch: usize,

    /// Never download ONNX Runtime (quantize needs it: the int8 kernels are its)
    #[arg(long, env = "SINGLEPOINT_NO_FETCH")]
    no_fetch: bool,
}

/// The inputs `args` name, read as the model takes them; an unreadable one is the error.
fn read_inputs(model: &Model, args: &[String]) -> anyhow::Result<Vec<Input>> {
    let mut out = Vec::new();
    if model.manifest.task.is_text() {
        for line in TextLines::new(args.to_vec(), None) {
            let source = format!("{}:{}", line.path.display(), line.line);
            let text = line.text.map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
            if text.trim().is_empty() {
                continue;
            }
            out.push(Input {
                source,
                item: ItemInput::Text {
                    text,
                    truncate: true,
                },
            });
        }
    } else {
        for entry in Inputs::new(args.to_vec(), None) {
            let source = entry.path.display().to_string();
            if let Some(problem) = entry.problem {
                anyhow::bail!("{source}: {}", problem.reason);
            }
            let bytes =
                std::fs::read(&entry.path).with_context(|| format!("cannot read {source}"))?;
            out.push(Input {
                source,
                item: ItemInput::Image(bytes.into()),
            });
        }
    }
    Ok(out)
}

pub fn run(args: QuantizeArgs) -> anyhow::Result<ExitCode> {
    let options = Options {
        min_agreement: args.min_agreement,
        threads: args.threads,
        batch: args.batch,
        methods: if args.methods.is_empty() {
            Method::ALL.to_vec()
        } else {
            args.methods
                .iter()
                .map(|m| match m {
                    MethodArg::Minmax => Method::MinMax,
                    MethodArg::Percentile => Method::Percentile,
                    MethodArg::Entropy => Method::Entropy,
                })
                .collect()
        },
        keep_float: args.keep_float.clone(),
        ..Options::default()
    };
    options.validate()?;
    if args.out.join("model.json").exists() {
        anyhow::bail!(
            "{} already holds a model; give a new folder",
            args.out.display()
        );
    }
    let model = match &args.model {
        Some(p) => {
            Model::load(p).with_context(|| format!("cannot load the model `{}`", p.display()))?
        }
        None => Model::bundled(),
    };
    let mut calibration = read_inputs(&model, &args.calibration)?;
    let holdout = if args.holdout.is_empty() {
        let mut held = Vec::new();
        let mut kept = Vec::new();
        for (i, input) in calibration.into_iter().enumerate() {
            if i % 2 == 1 {
                held.push(input);
            } else {
                kept.push(input);
            }
        }
        calibration = kept;
        held
    } else {
        read_inputs(&model, &args.holdout)?
    };
    if let Some(note) = singlepoint_runtime::ensure_onnxruntime(!args.no_fetch)? {
        eprintln!("note: {note}");
    }
    let progress = |line: &str| eprintln!("{line}");
    let base = Arc::new(model);
    let mut outcome =
        singlepoint_quantize::quantize(base.clone(), calibration, holdout, &options, &progress)?;
    singlepoint_quantize::write(&base, &mut outcome, &args.out)?;
    report(&outcome, &args.out);
    Ok(ExitCode::SUCCESS)
}

fn report(o: &Outcome, dir: &std::path::Path) {
    let r = &o.report;
    println!(
        "int8 version of {} written to {} ({} calibration, {} held-out inputs)",
        r.base,
        dir.display(),
        r.calibration_inputs,
        r.holdout_inputs
    );
    println!(
        "  {} agreement with float: {:.4} (floor {}), calibration {}",
        r.measure,
        r.agreement,
        r.min_agreement,
        serde_json::to_value(r.method).map_or(String::new(), |v| v.as_str().unwrap_or("").into())
    );
    println!(
        "  layers: {} in int8, {} kept in float{}",
        r.quantized_layers,
        r.float_layers.len(),
        if r.float_layers.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.float_layers.join(", "))
        }
    );
    println!(
        "  size: {:.1} MB → {:.1} MB",
        r.float_bytes as f64 / 1e6,
        r.int8_bytes as f64 / 1e6
    );
    let t = &r.throughput;
    println!(
        "  throughput at batch {}, {} thread{}: float {:.1}/s, int8 {:.1}/s ({:.2}×)",
        t.batch,
        t.threads,
        if t.threads == 1 { "" } else { "s" },
        t.float_per_s,
        t.int8_per_s,
        t.ratio
    );
    if t.ratio < 1.0 {
        eprintln!(
            "warning: the int8 version ran at {:.2}× the float model's throughput here (batch {}, {} thread{}): it is smaller but slower on this machine; `tune --int8` measures both and keeps float where it is cheaper",
            t.ratio,
            t.batch,
            t.threads,
            if t.threads == 1 { "" } else { "s" },
        );
    }
    println!("  digest {}", r.digest);
}
