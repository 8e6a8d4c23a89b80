//! `singlepoint detect`: objects in images, on the single point (the detector's candidates are
//! what the cache keeps, so thresholds and class filters are answered from one entry).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;
use singlepoint_backend::EngineOptions;
use singlepoint_model::{DecodeLimits, Model};
use singlepoint_runtime::detect::{DetectOptions, Detection};
use singlepoint_runtime::{
    load_engine, BackendChoice, Classifier, InputEntry, Inputs, ItemResult, PipelineConfig,
};

use crate::cache_args::CacheArgs;

#[derive(Args)]
pub struct DetectArgs {
    /// Images: files, folders (recursive), glob patterns, or `-` to read paths from stdin
    #[arg(required = true)]
    inputs: Vec<String>,

    /// Model folder or model.json of an object-detection model (default: the bundled
    /// YOLOv3-tiny, COCO's 80 classes)
    #[arg(long, env = "SINGLEPOINT_DETECT_MODEL")]
    model: Option<PathBuf>,

    /// Keep detections scoring above this (default: the model's, 0.25 for YOLOv3-tiny)
    #[arg(long)]
    score: Option<f32>,

    /// Per-class non-maximum suppression drops a box overlapping a kept one by more than this
    /// IoU (default: the model's, 0.45)
    #[arg(long)]
    iou: Option<f32>,

    /// At most this many detections per image (default: the model's)
    #[arg(long)]
    max_detections: Option<usize>,

    /// Only these classes, by name: `--classes car,person`
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,

    /// Output format
    #[arg(long, value_enum, default_value_t = DetectFormat::Text)]
    format: DetectFormat,

    /// Engine: `ort`, `tract`, or `auto`
    #[arg(long, default_value = "auto", env = "SINGLEPOINT_BACKEND")]
    backend: BackendChoice,

    /// Model instances running in parallel (default: one per core)
    #[arg(long)]
    instances: Option<usize>,

    /// Images per engine run (default 2)
    #[arg(long)]
    batch_size: Option<usize>,

    /// Refuse images with more pixels than this
    #[arg(long, default_value_t = DecodeLimits::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,

    #[command(flatten)]
    cache: CacheArgs,

    /// Never download ONNX Runtime; fall back to tract when it is not installed
    #[arg(long, env = "SINGLEPOINT_NO_FETCH")]
    no_fetch: bool,

    /// No summary line on stderr
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DetectFormat {
    Text,
    Json,
    Jsonl,
}

fn detection_json(d: &Detection) -> serde_json::Value {
    let r = |v: f32| (f64::from(v) * 100.0).round() / 100.0;
    json!({
        "class": d.class,
        "label": d.label,
        "score": (f64::from(d.score) * 1e5).round() / 1e5,
        "box": [r(d.bbox[0]), r(d.bbox[1]), r(d.bbox[2]), r(d.bbox[3])],
    })
}

fn item_json(result: &ItemResult<Vec<Detection>>) -> serde_json::Value {
    match &result.outcome {
        Ok(found) => json!({
            "index": result.idx,
            "path": result.path.display().to_string(),
            "detections": found.iter().map(detection_json).collect::<Vec<_>>(),
            "source": format!("{:?}", result.source).to_lowercase(),
        }),
        Err(e) => json!({
            "index": result.idx,
            "path": result.path.display().to_string(),
            "error": e.to_string(),
        }),
    }
}

/// `car 0.70 [466,71,680,170]`
fn text_line(found: &[Detection]) -> String {
    if found.is_empty() {
        return "nothing".into();
    }
    found
        .iter()
        .map(|d| {
            let name = d.label.clone().unwrap_or_else(|| d.class.to_string());
            let b = d.bbox.map(|v| v.round() as i64);
            format!(
                "{name} {:.2} [{},{},{},{}]",
                d.score, b[0], b[1], b[2], b[3]
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(args: DetectArgs) -> anyhow::Result<ExitCode> {
    let model = Arc::new(match &args.model {
        Some(path) => Model::load(path)
            .with_context(|| format!("cannot load the model `{}`", path.display()))?,
        None => Model::bundled_detector(),
    });
    let Some(spec) = model.manifest.image.as_ref().and_then(|i| i.detection) else {
        anyhow::bail!(
            "`{}` is a `{}` model; detect runs object-detection models",
            model.manifest.name,
            model.manifest.task.as_str()
        );
    };
    let options = DetectOptions::from_request(
        &model,
        &spec,
        args.score,
        args.iou,
        args.max_detections,
        args.classes.as_deref(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let instances = args.instances.unwrap_or(cores);
    if instances == 0 {
        anyhow::bail!("`--instances` must be at least 1");
    }
    let loaded = load_engine(
        &model,
        args.backend,
        EngineOptions::default(),
        !args.no_fetch,
    )
    .with_context(|| format!("cannot start the model `{}`", model.manifest.name))?;
    for warning in &loaded.warnings {
        eprintln!("note: {warning}");
    }
    let engine_kind = loaded.engine.kind();
    let config = PipelineConfig {
        batch_size: args.batch_size.unwrap_or(2),
        instances,
        limits: DecodeLimits {
            max_pixels: args.max_pixels,
        },
        ..PipelineConfig::default()
    };
    let mut detector = Classifier::new(model.clone(), loaded.engine, config)?;
    if let Some(cache) = args.cache.open()? {
        let cache = Arc::new(cache);
        for warning in cache.take_warnings() {
            eprintln!("warning: {warning}");
        }
        detector = detector.with_cache(cache);
    }
    let stdin_used = args.inputs.iter().any(|a| a == "-");
    let stdin: Option<Box<dyn std::io::BufRead + Send>> =
        stdin_used.then(|| Box::new(std::io::BufReader::new(std::io::stdin())) as _);
    let inputs: Box<dyn Iterator<Item = InputEntry> + Send> =
        Box::new(Inputs::new(args.inputs.clone(), stdin));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_error: Option<std::io::Error> = None;
    let mut first = true;
    if args.format == DetectFormat::Json {
        use std::io::Write;
        let head = json!({ "name": model.manifest.name, "digest": model.digest.to_hex() });
        if let Err(e) = write!(out, "{{\"model\": {head}, \"results\": [") {
            write_error = Some(e);
        }
    }
    let stats = detector.detect(inputs, options, |result| {
        use std::io::Write;
        let written = match args.format {
            DetectFormat::Text => match &result.outcome {
                Ok(found) => writeln!(out, "Image {}: {}", result.idx, text_line(found)),
                Err(e) => {
                    eprintln!("error: `{}`: {e}", result.path.display());
                    writeln!(out, "Image {}: error", result.idx)
                }
            },
            DetectFormat::Jsonl => writeln!(out, "{}", item_json(&result)),
            DetectFormat::Json => {
                let sep = if first { "\n  " } else { ",\n  " };
                first = false;
                write!(out, "{sep}{}", item_json(&result))
            }
        };
        match written.and_then(|()| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_error = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    {
        use std::io::Write;
        if args.format == DetectFormat::Json && write_error.is_none() {
            if let Err(e) = writeln!(out, "\n]}}").and_then(|()| out.flush()) {
                write_error = Some(e);
            }
        }
    }
    if let Some(e) = write_error {
        return Err(e).context("cannot write results");
    }
    if !args.quiet {
        eprintln!(
            "{} images ({} failed) in {:.2} s on {}: {} engine runs, {} cache hits",
            stats.items,
            stats.failed,
            stats.wall.as_secs_f64(),
            engine_kind.as_str(),
            stats.model_executions,
            stats.cache_hits
        );
    }
    Ok(if stats.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
