//! `singlepoint tune --reuse VIDEO…`: the reuse threshold for a camera. The detector runs on
//! every frame of the sample (the exact answers); the difference detector is replayed at each
//! threshold over the same frames (`singlepoint_runtime::reuse::curve`), and the threshold
//! with the fewest model runs whose answers agree with the exact ones at least
//! `--min-agreement` is chosen. The cost of a frame follows: a run costs the measured
//! preprocess + inference + postprocess CPU, every frame its decode and its difference check.

use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use singlepoint_backend::EngineOptions;
use singlepoint_runtime::cputime::thread_cpu_time;
use singlepoint_runtime::detect::{DetectOptions, Detection};
use singlepoint_runtime::reuse::{choose, curve, curve_svg, ReusePoint, Thumbnail};
use singlepoint_runtime::video::{FrameReader, VideoOptions};
use singlepoint_runtime::{
    load_engine, BackendChoice, Classifier, FrameOptions, Inputs, PipelineConfig,
};

use crate::tune::TuneArgs;

/// The thresholds tried: fine where codec noise sits (under 2 levels), coarser above.
fn thresholds() -> Vec<f32> {
    let mut t: Vec<f32> = (0..=16).map(|i| i as f32 * 0.125).collect();
    t.extend((5..=16).map(|i| i as f32 * 0.5));
    t.extend([10.0, 12.0, 15.0]);
    t
}

/// What one video gave: the exact answers and each frame's thumbnail.
struct Sample {
    path: String,
    exact: Vec<Vec<Detection>>,
    thumbs: Vec<Thumbnail>,
}

pub fn run(args: &TuneArgs) -> anyhow::Result<ExitCode> {
    let min_agreement = args.min_agreement(0.95)?;
    let (model, spec) = crate::detect::load_detector(args.model.as_deref(), "tune --reuse")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let loaded = load_engine(
        &model,
        BackendChoice::Auto,
        EngineOptions::default(),
        !args.no_fetch,
    )
    .with_context(|| format!("cannot start the model `{}`", model.manifest.name))?;
    let detector = Classifier::new(
        model.clone(),
        loaded.engine,
        PipelineConfig {
            batch_size: 2,
            instances: cores,
            ..PipelineConfig::default()
        },
    )?;
    let limit = args.max_frames.unwrap_or(usize::MAX);
    let mut samples = Vec::new();
    let (mut run_cpu, mut runs_measured) = (Duration::ZERO, 0usize);
    let (mut decode_cpu, mut difference_cpu, mut frames_seen) = (Duration::ZERO, Duration::ZERO, 0);
    for video in &args.inputs {
        let mut exact = Vec::new();
        let mut failure = None;
        let stats = detector.detect(
            Inputs::new(vec![video.clone()], None),
            DetectOptions::defaults(&spec),
            FrameOptions::default(),
            |r| match r.outcome {
                Ok(found) if r.frame.is_some() => {
                    exact.push(found);
                    if exact.len() >= limit {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                }
                Ok(_) => {
                    failure = Some("is not a video".to_string());
                    ControlFlow::Break(())
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    ControlFlow::Break(())
                }
            },
        )?;
        if let Some(why) = failure {
            anyhow::bail!("`{video}`: {why}");
        }
        run_cpu += stats.preprocess + stats.inference + stats.postprocess;
        runs_measured += stats.items - stats.cache_hits - stats.coalesced;
        decode_cpu += stats.decode + stats.read;
        let options = VideoOptions {
            fps: None,
            max_pixels: u64::MAX,
            stall: VideoOptions::DEFAULT_STALL,
        };
        let mut thumbs = Vec::with_capacity(exact.len());
        for frame in FrameReader::open(std::path::Path::new(video), options)
            .map_err(|e| anyhow::anyhow!("`{video}`: {e}"))?
            .take(exact.len())
        {
            let frame = frame.map_err(|e| anyhow::anyhow!("`{video}`: {e}"))?;
            let t0 = thread_cpu_time();
            let (w, h) = (frame.image.width as usize, frame.image.height as usize);
            thumbs.push(Thumbnail::of(&frame.image.pixels, w, h));
            difference_cpu += thread_cpu_time().saturating_sub(t0);
        }
        frames_seen += thumbs.len();
        eprintln!(
            "{video}: {} frames, every one through the model",
            thumbs.len()
        );
        samples.push(Sample {
            path: video.clone(),
            exact,
            thumbs,
        });
    }
    let ms = |d: Duration, n: usize| d.as_secs_f64() * 1000.0 / n.max(1) as f64;
    let (c_run, c_decode, c_diff) = (
        ms(run_cpu, runs_measured),
        ms(decode_cpu, frames_seen),
        ms(difference_cpu, frames_seen),
    );
    let per_video: Vec<Vec<ReusePoint>> = samples
        .iter()
        .map(|s| curve(&s.thumbs, &s.exact, &thresholds()))
        .collect();
    let points: Vec<ReusePoint> = (0..thresholds().len())
        .filter_map(|i| ReusePoint::merge(&per_video.iter().map(|c| c[i]).collect::<Vec<_>>()))
        .collect();
    // Core-ms per frame: every frame is decoded; with reuse on, every frame is also compared.
    let cost = |p: &ReusePoint| {
        let diff = if p.threshold > 0.0 { c_diff } else { 0.0 };
        (p.runs as f64 * c_run) / p.frames.max(1) as f64 + c_decode + diff
    };
    let chosen = choose(&points, min_agreement);
    // The detector's own frame-to-frame consistency: how well each frame's answer agrees with
    // the frame just before it, over all frames. Reusing every other frame's answer blindly
    // would agree about this much on the reused frames; the difference detector does better
    // by reusing only where frames barely changed.
    let (mut near, mut near_larger) = (0usize, 0usize);
    for s in &samples {
        for pair in s.exact.windows(2) {
            near += singlepoint_runtime::detect::matched(&pair[1], &pair[0], 0.5);
            near_larger += pair[0].len().max(pair[1].len());
        }
    }
    let neighbour = near as f64 / near_larger.max(1) as f64;
    eprintln!(
        "the detector's answer for a frame agrees {neighbour:.4} on average with its answer for the frame before (what blind reuse at age 1 would give)"
    );
    println!("threshold  model runs  frames/run  agreement  recall  core-ms/frame");
    for p in &points {
        let mark = if chosen == Some(*p) {
            "  <- chosen"
        } else {
            ""
        };
        println!(
            "{:>9.3}  {:>10}  {:>10.2}  {:>9.4}  {:>6.4}  {:>13.2}{mark}",
            p.threshold,
            p.runs,
            p.reduction(),
            p.agreement,
            p.recall,
            cost(p)
        );
    }
    let every = points.first().copied();
    let svg_path = args
        .svg
        .clone()
        .unwrap_or_else(|| args.out.with_extension("svg"));
    let title = format!(
        "Reuse on {}: model runs against agreement (floor {})",
        samples
            .iter()
            .map(|s| s.path.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        min_agreement
    );
    std::fs::write(&svg_path, curve_svg(&points, chosen, &title))
        .with_context(|| format!("cannot write `{}`", svg_path.display()))?;
    let report = json!({
        "reuse_threshold": chosen.map(|c| c.threshold),
        "min_agreement": min_agreement,
        "model": { "name": model.manifest.name, "digest": model.digest.to_hex() },
        "videos": samples.iter().map(|s| json!({"path": s.path, "frames": s.thumbs.len()})).collect::<Vec<_>>(),
        "core_ms": { "per_model_run": c_run, "decode_per_frame": c_decode, "difference_per_frame": c_diff },
        "chosen": chosen,
        "neighbour_agreement": neighbour,
        "curve": points,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write `{}`", args.out.display()))?;
    match (chosen, every) {
        (Some(c), Some(every)) => {
            eprintln!(
                "chosen: --reuse-threshold {} ({} of {} frames through the model, {:.2}× fewer; agreement {:.4}, recall {:.4}; {:.1} core-ms a frame against {:.1} without reuse). Curve: {}, {}",
                c.threshold,
                c.runs,
                c.frames,
                c.reduction(),
                c.agreement,
                c.recall,
                cost(&c),
                cost(&every),
                args.out.display(),
                svg_path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("no threshold reaches agreement {}", min_agreement);
            Ok(ExitCode::from(1))
        }
    }
}
