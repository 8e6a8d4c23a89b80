//! `singlepoint detect`: objects in images and video frames, on the single point (the
//! detector's candidates are what the cache keeps, so thresholds and class filters are
//! answered from one entry). Videos are decoded by an ffmpeg child
//! (`singlepoint_runtime::video`); `--reuse` lets near-identical frames share an answer
//! (`singlepoint_runtime::reuse`).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;
use singlepoint_backend::EngineOptions;
use singlepoint_model::{DecodeLimits, DetectionSpec, Model};
use singlepoint_runtime::cost::RssSampler;
use singlepoint_runtime::cputime::{children_cpu_time, process_cpu_time};
use singlepoint_runtime::detect::{DetectOptions, Detection};
use singlepoint_runtime::inputs::has_video_extension;
use singlepoint_runtime::{
    load_engine, BackendChoice, Classifier, FrameInfo, FrameOptions, InputEntry, Inputs,
    ItemResult, PipelineConfig,
};

use crate::cache_args::{CacheArgs, CostArgs};
use crate::draw::{Drawer, VideoDrawing};
use crate::embed::source_name;

#[derive(Args)]
pub struct DetectArgs {
    /// Images and videos (mp4, avi, mkv, webm, mov, m4v; decoded by `ffmpeg`): files, folders
    /// (recursive), glob patterns, or `-` to read paths from stdin
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

    /// Also write every input with its boxes and labels drawn into this folder: images as
    /// PNG, videos as H.264 MP4 (the frames detected, at `--fps` or the video's rate)
    #[arg(long, value_name = "DIR")]
    draw: Option<PathBuf>,

    /// Videos: keep about this many frames a second (the first frame at or after each step;
    /// default: every frame)
    #[arg(long)]
    fps: Option<f64>,

    /// Videos: reuse the answer of the last frame the model ran on while a frame differs from
    /// it by less than `--reuse-threshold` (answers marked `reused`; a scene cut always runs
    /// the model). `singlepoint tune --reuse VIDEO` picks the threshold for a camera
    #[arg(long)]
    reuse: bool,

    /// Videos: fail a video when ffmpeg delivers no frame for this long (`90s`, `5m`; time
    /// spent waiting on the model does not count)
    #[arg(long, value_parser = crate::cache_args::parse_duration, default_value = "60s")]
    decode_timeout: std::time::Duration,

    /// The difference under which `--reuse` reuses: mean absolute luma difference of 64×64
    /// thumbnails, 0–255 (implies `--reuse`)
    #[arg(long)]
    reuse_threshold: Option<f32>,

    /// Engine: `ort`, `tract`, or `auto`
    #[arg(long, default_value = "auto", env = "SINGLEPOINT_BACKEND")]
    backend: BackendChoice,

    /// Model instances running in parallel (default: one per core)
    #[arg(long)]
    instances: Option<usize>,

    /// Images per engine run (default 1: on YOLOv3-tiny larger batches are no faster and hold
    /// more memory, bench/results/detect-*.md)
    #[arg(long)]
    batch_size: Option<usize>,

    /// Refuse images with more pixels than this
    #[arg(long, default_value_t = DecodeLimits::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,

    #[command(flatten)]
    cache: CacheArgs,

    /// Print the run's cost report on stderr: t0, r0, n, N, p (cache hits), u (reused frames),
    /// CPU by stage, memory, money and f (q is not measured here; `classify --report` does)
    #[arg(long)]
    report: bool,

    /// Write the cost report as JSON to this file
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,

    #[command(flatten)]
    cost: CostArgs,

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
    /// One row per detection: index, path, class, label, score, x1, y1, x2, y2, error
    Csv,
    /// COCO results JSON: `[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]`
    Coco,
}

/// COCO's category ids (1..90 with gaps) for the 80 classes COCO-trained detectors number
/// 0..79 in their order.
const COCO_80_TO_91: [usize; 80] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
];

/// Whether the model numbers its classes as COCO-80 does (80 names, starting person, bicycle,
/// car): then COCO output uses COCO's category ids, else the class index.
fn is_coco_80(model: &Model) -> bool {
    model.labels.as_ref().is_some_and(|l| {
        l.len() == 80
            && [l.name(0), l.name(1), l.name(2)] == [Some("person"), Some("bicycle"), Some("car")]
    })
}

/// A COCO image id: the file name's number (`000000397133.jpg` → 397133), else the index.
fn coco_image_id(result: &ItemResult<Vec<Detection>>) -> u64 {
    result
        .path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or(result.idx as u64)
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The CSV rows of one image: one per detection, or one with empty detection fields (none
/// found, or the error).
fn csv_rows(result: &ItemResult<Vec<Detection>>) -> String {
    let path = csv_field(&result.path.display().to_string());
    let (frame, time) = match &result.frame {
        Some(f) => (f.index.to_string(), format!("{:.3}", f.time)),
        None => (String::new(), String::new()),
    };
    let head = format!("{},{path},{frame},{time}", result.idx);
    let source = source_name(result.source);
    match &result.outcome {
        Err(e) => format!("{head},,,,,,,,{source},{}\n", csv_field(&e.to_string())),
        Ok(found) if found.is_empty() => format!("{head},,,,,,,,{source},\n"),
        Ok(found) => found
            .iter()
            .map(|d| {
                let label = csv_field(d.label.as_deref().unwrap_or_default());
                let [x1, y1, x2, y2] = d.bbox;
                format!(
                    "{head},{},{label},{:.5},{x1:.2},{y1:.2},{x2:.2},{y2:.2},{source},\n",
                    d.class, d.score
                )
            })
            .collect(),
    }
}

/// A frame's place in its video, and for a reused answer the frame it came from.
fn frame_json(frame: &FrameInfo) -> serde_json::Value {
    let ms = |t: f64| (t * 1000.0).round() / 1000.0;
    let mut v = json!({ "frame": frame.index, "time": ms(frame.time) });
    if let Some(from) = &frame.reused {
        v["reused_from"] = json!({
            "frame": from.index,
            "time": ms(from.time),
            "age_frames": frame.index - from.index,
            "age_s": ms(frame.time - from.time),
            "difference": (f64::from(from.difference) * 100.0).round() / 100.0,
        });
    }
    v
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
    let mut v = match &result.outcome {
        Ok(found) => json!({
            "index": result.idx,
            "path": result.path.display().to_string(),
            "detections": found.iter().map(detection_json).collect::<Vec<_>>(),
            "source": source_name(result.source),
        }),
        Err(e) => json!({
            "index": result.idx,
            "path": result.path.display().to_string(),
            "error": e.to_string(),
        }),
    };
    if let (Some(frame), Some(map)) = (&result.frame, v.as_object_mut()) {
        if let Some(extra) = frame_json(frame).as_object() {
            map.extend(extra.clone());
        }
    }
    v
}

/// `Image 3` or `Video 3 frame 12 1.200s`.
fn item_name(result: &ItemResult<Vec<Detection>>) -> String {
    match &result.frame {
        Some(f) => format!("Video {} frame {} {:.3}s", result.idx, f.index, f.time),
        None if has_video_extension(&result.path) => format!("Video {}", result.idx),
        None => format!("Image {}", result.idx),
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

fn finish_video(video: Option<VideoDrawing>, drawn: &mut usize) {
    if let Some(v) = video {
        let input = v.input.clone();
        match v.finish() {
            Ok(_) => *drawn += 1,
            Err(e) => eprintln!("warning: cannot draw `{}`: {e}", input.display()),
        }
    }
}

fn per_item(cpu: std::time::Duration, items: usize) -> f64 {
    cpu.as_secs_f64() * 1000.0 / items.max(1) as f64
}

/// The detector at `path` (default: the bundled YOLOv3-tiny) and its detection section;
/// `command` names what refuses another kind of model.
pub fn load_detector(
    path: Option<&std::path::Path>,
    command: &str,
) -> anyhow::Result<(Arc<Model>, DetectionSpec)> {
    let model = Arc::new(match path {
        Some(path) => Model::load(path)
            .with_context(|| format!("cannot load the model `{}`", path.display()))?,
        None => Model::bundled_detector(),
    });
    let Some(spec) = model.manifest.image.as_ref().and_then(|i| i.detection) else {
        anyhow::bail!(
            "`{}` is a `{}` model; {command} runs object-detection models",
            model.manifest.name,
            model.manifest.task.as_str()
        );
    };
    Ok((model, spec))
}

pub fn run(args: DetectArgs) -> anyhow::Result<ExitCode> {
    let (model, spec) = load_detector(args.model.as_deref(), "detect")?;
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
        batch_size: args.batch_size.unwrap_or(1),
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
        Box::new(Inputs::new(args.inputs.clone(), stdin).with_videos());
    let frames = FrameOptions {
        fps: args.fps,
        reuse_threshold: match (args.reuse, args.reuse_threshold) {
            (_, Some(t)) => Some(t),
            (true, None) => Some(singlepoint_runtime::reuse::DEFAULT_THRESHOLD),
            (false, None) => None,
        },
        decode_timeout: Some(args.decode_timeout),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_error: Option<std::io::Error> = None;
    let mut first = true;
    {
        use std::io::Write;
        let head = json!({ "name": model.manifest.name, "digest": model.digest.to_hex() });
        let opened = match args.format {
            DetectFormat::Json => write!(out, "{{\"model\": {head}, \"results\": ["),
            DetectFormat::Coco => write!(out, "["),
            DetectFormat::Csv => {
                writeln!(
                    out,
                    "index,path,frame,time,class,label,score,x1,y1,x2,y2,source,error"
                )
            }
            DetectFormat::Text | DetectFormat::Jsonl => Ok(()),
        };
        if let Err(e) = opened {
            write_error = Some(e);
        }
    }
    let coco_ids = is_coco_80(&model);
    let reporting = args.report || args.report_json.is_some();
    let (prices, weights) = args.cost.resolve()?;
    let rss = reporting.then(|| RssSampler::start(std::time::Duration::from_millis(50)));
    let main_started = std::time::Instant::now();
    let all_cpu = || process_cpu_time() + children_cpu_time();
    let cpu_before = all_cpu();
    let mut drawer = args.draw.as_deref().map(Drawer::new).transpose()?;
    let mut video_drawing: Option<VideoDrawing> = None;
    let mut drawn = 0usize;
    let limits = DecodeLimits {
        max_pixels: args.max_pixels,
    };
    let stats = detector.detect(inputs, options, frames, |result| {
        use std::io::Write;
        if let (Some(drawer), Ok(found)) = (drawer.as_mut(), &result.outcome) {
            // A video's annotated copy closes when its last frame has been drawn.
            if video_drawing.as_ref().is_some_and(|v| v.idx != result.idx) {
                finish_video(video_drawing.take(), &mut drawn);
            }
            match &result.frame {
                None => match drawer.image(&result.path, result.idx, found, &limits) {
                    Ok(_) => drawn += 1,
                    Err(e) => eprintln!("warning: cannot draw `{}`: {e}", result.path.display()),
                },
                Some(frame) => {
                    if video_drawing.is_none() {
                        let target = drawer.target(&result.path, result.idx, "mp4");
                        match VideoDrawing::start(&result.path, result.idx, target, args.fps, args.max_pixels) {
                            Ok(v) => video_drawing = Some(v),
                            Err(e) => eprintln!("warning: cannot draw `{}`: {e}", result.path.display()),
                        }
                    }
                    if let Some(v) = video_drawing.as_mut() {
                        if let Err(e) = v.frame(frame.index, found) {
                            eprintln!("warning: cannot draw `{}`: {e}", result.path.display());
                            video_drawing = None;
                        }
                    }
                }
            }
        }
        let written = match args.format {
            DetectFormat::Text => match &result.outcome {
                Ok(found) => {
                    let reused = match result.frame.and_then(|f| f.reused) {
                        Some(from) => format!(" (reused from frame {})", from.index),
                        None => String::new(),
                    };
                    writeln!(out, "{}: {}{reused}", item_name(&result), text_line(found))
                }
                Err(e) => {
                    eprintln!("error: `{}`: {e}", result.path.display());
                    writeln!(out, "{}: error", item_name(&result))
                }
            },
            DetectFormat::Jsonl => writeln!(out, "{}", item_json(&result)),
            DetectFormat::Json => {
                let sep = if first { "\n  " } else { ",\n  " };
                first = false;
                write!(out, "{sep}{}", item_json(&result))
            }
            DetectFormat::Csv => {
                if let Err(e) = &result.outcome {
                    eprintln!("error: `{}`: {e}", result.path.display());
                }
                write!(out, "{}", csv_rows(&result))
            }
            DetectFormat::Coco => match &result.outcome {
                Err(e) => {
                    eprintln!("error: `{}`: {e}", result.path.display());
                    Ok(())
                }
                Ok(found) => found.iter().try_for_each(|d| {
                    let sep = if first { "\n  " } else { ",\n  " };
                    first = false;
                    let [x1, y1, x2, y2] = d.bbox.map(|v| (f64::from(v) * 100.0).round() / 100.0);
                    let category = if coco_ids {
                        COCO_80_TO_91.get(d.class).copied().unwrap_or(d.class)
                    } else {
                        d.class
                    };
                    let image_id = match &result.frame {
                        Some(f) => f.index,
                        None => coco_image_id(&result),
                    };
                    let entry = json!({
                        "image_id": image_id,
                        "category_id": category,
                        "bbox": [x1, y1, ((x2 - x1) * 100.0).round() / 100.0, ((y2 - y1) * 100.0).round() / 100.0],
                        "score": (f64::from(d.score) * 1e5).round() / 1e5,
                    });
                    write!(out, "{sep}{entry}")
                }),
            },
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
        let closing = match args.format {
            DetectFormat::Json => "\n]}",
            DetectFormat::Coco => "\n]",
            _ => "",
        };
        if !closing.is_empty() && write_error.is_none() {
            if let Err(e) = writeln!(out, "{closing}").and_then(|()| out.flush()) {
                write_error = Some(e);
            }
        }
    }
    finish_video(video_drawing.take(), &mut drawn);
    let run_cpu = all_cpu().saturating_sub(cpu_before);
    let run_elapsed = main_started.elapsed();
    if let Some(rss) = rss {
        let (mean_rss, peak_rss) = rss.finish();
        let report = crate::classify::cost_report(crate::classify::CostInputs {
            stats: &stats,
            workers: instances,
            run_cpu,
            cpu_before_run: cpu_before,
            before_run: main_started.saturating_duration_since(crate::started()),
            sessions: run_elapsed.saturating_sub(stats.wall),
            calibration: &Default::default(),
            mean_rss,
            peak_rss,
            prices,
            weights,
        });
        crate::classify::emit_report(&report, args.report, args.report_json.as_deref())?;
    }
    if let Some(e) = write_error {
        return Err(e).context("cannot write results");
    }
    if let (Some(dir), false) = (&args.draw, args.quiet) {
        eprintln!("drew {drawn} pictures and videos into {}", dir.display());
    }
    if !args.quiet {
        let what = if stats.frames > 0 {
            format!(
                "{} images and video frames ({} frames",
                stats.items, stats.frames
            ) + &if frames.reuse_threshold.is_some() {
                format!(", {} reused", stats.reused)
            } else {
                String::new()
            } + ")"
        } else {
            format!("{} images", stats.items)
        };
        eprintln!(
            "{what}, {} failed, in {:.2} s on {}: {} engine runs, {} cache hits; core-ms per item: read {:.2}, decode {:.2}, difference {:.2}, preprocess {:.2}, inference {:.2}, postprocess {:.2}",
            stats.failed,
            stats.wall.as_secs_f64(),
            engine_kind.as_str(),
            stats.model_executions,
            stats.cache_hits,
            per_item(stats.read, stats.items),
            per_item(stats.decode, stats.items),
            per_item(stats.difference, stats.items),
            per_item(stats.preprocess, stats.items),
            per_item(stats.inference, stats.items),
            per_item(stats.postprocess, stats.items),
        );
    }
    Ok(if stats.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
