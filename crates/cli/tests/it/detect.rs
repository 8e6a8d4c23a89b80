//! `singlepoint detect` as a user runs it: text and JSON output, class filters, cached
//! candidates answering another threshold, videos frame by frame with reuse, and the errors
//! that name what is wrong.

use serde_json::Value;

use super::{singlepoint, singlepoint_with_cache, text};

const MESSI: &str = "tests/data/detection/opencv_messi5.jpg";

#[test]
fn detect_prints_boxes_per_image_and_a_bad_file_fails_alone() {
    let out = singlepoint(
        &["detect", MESSI, "no-such.jpg", "photos/chelsea.png"],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("Image 0: sports ball 0.79 [344,302,378,325], person 0.46"),
        "{stdout}"
    );
    assert_eq!(lines[1], "Image 1: error");
    assert!(
        text(&out.stderr).contains("no-such.jpg"),
        "{}",
        text(&out.stderr)
    );
    assert!(lines[2].starts_with("Image 2: "), "{stdout}");
}

#[test]
fn classes_and_thresholds_filter_what_the_cache_keeps() {
    let cache = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["detect", MESSI, "--format", "json"];
        args.extend_from_slice(extra);
        let out = singlepoint_with_cache(&args, None, cache.path());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["results"][0].clone()
    };
    let all = run(&[]);
    assert_eq!(all["source"], "computed");
    let labels = |r: &Value| -> Vec<String> {
        r["detections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["label"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        labels(&all),
        ["sports ball", "person", "person", "chair", "chair"]
    );
    // Another threshold and a class filter: answered from the same cached candidates.
    let people = run(&["--classes", "person", "--score", "0.4"]);
    assert_eq!(people["source"], "cache");
    assert_eq!(labels(&people), ["person"]);
    let lower = run(&["--score", "0.1"]);
    assert!(labels(&lower).len() > labels(&all).len(), "{lower}");
}

#[test]
fn detect_and_classify_refuse_each_others_models_and_absurd_thresholds() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["detect", "--model", "models/digits-cnn", MESSI],
            "detect runs object-detection models",
        ),
        (
            &["classify", "--model", "models/yolov3-tiny", MESSI],
            "classify runs image-classification models",
        ),
        (&["detect", "--score", "2", MESSI], "score 2 must be from"),
        (&["detect", "--score", "0.01", MESSI], "min_score 0.05"),
        (&["detect", "--iou", "0", MESSI], "iou 0"),
        (
            &["detect", "--classes", "unicorn", MESSI],
            "`unicorn` is not one of",
        ),
        (
            &["detect", "--fps", "0", MESSI],
            "`--fps` must be a positive",
        ),
        (
            &["detect", "--reuse-threshold=-1", MESSI],
            "`--reuse-threshold` must be a luma difference",
        ),
    ];
    for (args, expected) in cases {
        let out = singlepoint(args, None);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(expected),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn csv_and_coco_results_carry_the_same_boxes() {
    let out = singlepoint(
        &["detect", MESSI, "photos/coffee.png", "--format", "csv"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let csv = text(&out.stdout);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "index,path,frame,time,class,label,score,x1,y1,x2,y2,source,error"
    );
    assert!(
        rows[1].starts_with("0,tests/data/detection/opencv_messi5.jpg,,,32,sports ball,0.79"),
        "{csv}"
    );
    assert_eq!(rows[1].split(',').count(), 13, "{csv}");
    assert!(rows[1].ends_with(",computed,"), "{csv}");
    assert!(
        rows.last().unwrap().starts_with("1,photos/coffee.png,"),
        "{csv}"
    );
    assert_eq!(rows.iter().filter(|r| r.starts_with("0,")).count(), 5);
    let out = singlepoint(&["detect", MESSI, "--format", "coco"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let coco: Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &coco[0];
    // COCO's id for sports ball (class 32 of the 80) is 37; bbox is x, y, width, height.
    assert_eq!(first["category_id"], 37);
    assert_eq!(first["image_id"], 0);
    let bbox: Vec<f64> = first["bbox"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        (bbox[0] - 344.07).abs() < 0.5 && (bbox[2] - 34.24).abs() < 0.5,
        "{bbox:?}"
    );
    assert_eq!(coco.as_array().unwrap().len(), 5);
}

const BIKES: &str = "tests/data/video/bikes.mp4";

/// Videos are read frame by frame (sampled with `--fps`, each frame with its time); a file
/// that is not a video, a truncated video, a file without a video stream and a video stream
/// without frames each fail alone
/// with what is wrong, after whatever frames they gave, and the inputs after them go on.
#[test]
fn detect_reads_videos_frame_by_frame_and_bad_videos_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let not_video = dir.path().join("notes.mp4");
    std::fs::write(&not_video, "these are my notes, not a video\n").unwrap();
    // A 40-frame AVI cut to 60 % of its bytes: its header still declares 40 frames.
    let clip = dir.path().join("clip.avi");
    let made = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-i",
            BIKES,
            "-frames:v",
            "40",
            "-c:v",
            "mpeg4",
            "-q:v",
            "4",
        ])
        .arg(&clip)
        .current_dir(super::repo())
        .status()
        .unwrap();
    assert!(made.success());
    let bytes = std::fs::read(&clip).unwrap();
    let truncated = dir.path().join("truncated.avi");
    std::fs::write(&truncated, &bytes[..bytes.len() * 6 / 10]).unwrap();
    // A video stream with no frames in it.
    let empty = dir.path().join("empty.avi");
    let made = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=s=64x48:d=1",
            "-frames:v",
            "0",
        ])
        .args(["-c:v", "mpeg4"])
        .arg(&empty)
        .status()
        .unwrap();
    assert!(made.success());
    let args = [
        "detect",
        "--fps",
        "5",
        "--format",
        "jsonl",
        BIKES,
        not_video.to_str().unwrap(),
        truncated.to_str().unwrap(),
        "tests/data/video/audio-only.mp4",
        empty.to_str().unwrap(),
        MESSI,
    ];
    let out = singlepoint(&args, None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |idx: u64| lines.iter().filter(move |l| l["index"] == idx);
    let bikes: Vec<&Value> = of(0).collect();
    assert_eq!(bikes.len(), 50, "5 a second of 10 s");
    assert_eq!(
        (bikes[1]["frame"].as_u64(), bikes[1]["time"].as_f64()),
        (Some(5), Some(0.2))
    );
    assert!(bikes
        .iter()
        .all(|b| b["detections"].is_array() && b["source"] == "computed"));
    let error_of = |idx: u64| {
        of(idx)
            .find_map(|l| l["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no error for input {idx}: {lines:?}"))
    };
    assert!(
        error_of(1).contains("not a video ffmpeg can read"),
        "{}",
        error_of(1)
    );
    let cut_frames = of(2).filter(|l| l["frame"].is_u64()).count();
    assert!(
        (1..40).contains(&cut_frames),
        "{cut_frames} frames of the truncated video"
    );
    assert!(
        error_of(2).contains("truncated or damaged"),
        "{}",
        error_of(2)
    );
    assert!(
        error_of(2).contains("of 40 frames decoded"),
        "{}",
        error_of(2)
    );
    assert!(error_of(3).contains("no video stream"), "{}", error_of(3));
    assert!(
        error_of(4).contains("the video has no frames"),
        "{}",
        error_of(4)
    );
    let messi: Vec<&Value> = of(5).collect();
    assert_eq!(messi.len(), 1);
    assert!(messi[0]["detections"].as_array().unwrap().len() >= 3);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("4 failed"), "{stderr}");
}

/// `--reuse` marks reused frames in text output, in the summary and in the cost report.
#[test]
fn reuse_is_marked_in_every_format() {
    let out = singlepoint(
        &["detect", BIKES, "--reuse-threshold", "12", "--report"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 250);
    assert!(stdout.starts_with("Video 0 frame 0 0.000s: "), "{stdout}");
    let reused = stdout
        .lines()
        .filter(|l| l.contains("(reused from frame "))
        .count();
    assert!(reused > 25, "{reused} reused");
    assert!(
        text(&out.stderr).contains(&format!("{reused} reused")),
        "{}",
        text(&out.stderr)
    );
    // The cost report's third case: u, the frames answered by reuse.
    let u = format!("u = {:.3} (reused frames)", reused as f64 / 250.0);
    assert!(text(&out.stderr).contains(&u), "{u}: {}", text(&out.stderr));
    let out = singlepoint(
        &[
            "detect",
            BIKES,
            "--reuse-threshold",
            "12",
            "--format",
            "jsonl",
            "--fps",
            "25",
        ],
        None,
    );
    let json: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let marked: Vec<&Value> = json.iter().filter(|l| l["source"] == "reused").collect();
    assert_eq!(marked.len(), reused);
    let from = &marked[0]["reused_from"];
    assert!(
        from["frame"].as_u64() < marked[0]["frame"].as_u64(),
        "{from}"
    );
    assert!(from["age_frames"].as_u64() >= Some(1) && from["age_s"].as_f64() > Some(0.0));
}

/// `tune --reuse` runs the detector on every frame, replays the gate at each threshold and
/// chooses the one with the fewest runs at the agreement floor; the curve is written as JSON
/// and SVG.
#[test]
fn tune_reuse_chooses_a_threshold_at_the_agreement_floor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reuse.json");
    let run = singlepoint(
        &[
            "tune",
            "--reuse",
            BIKES,
            "--max-frames",
            "30",
            "--min-agreement",
            "0.9",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let report: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let curve = report["curve"].as_array().unwrap();
    assert_eq!(curve[0]["threshold"], 0.0);
    assert_eq!(
        (curve[0]["runs"].as_u64(), curve[0]["frames"].as_u64()),
        (Some(30), Some(30))
    );
    assert_eq!(curve[0]["agreement"], 1.0);
    let chosen = &report["chosen"];
    assert!(chosen["agreement"].as_f64().unwrap() >= 0.9);
    assert_eq!(report["reuse_threshold"], chosen["threshold"]);
    // Fewest runs at the floor: no point with fewer runs reaches it.
    let runs = chosen["runs"].as_u64().unwrap();
    assert!(curve
        .iter()
        .filter(|p| p["runs"].as_u64().unwrap() < runs)
        .all(|p| p["agreement"].as_f64().unwrap() < 0.9));
    assert!(text(&run.stderr).contains("chosen: --reuse-threshold"));
    let svg = std::fs::read_to_string(out.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("model runs"));
    let refused = singlepoint(&["tune", "--reuse", "--min-agreement", "2", BIKES], None);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    // Flags of the engine search are refused with --reuse, not silently ignored.
    for flag in [
        &["--int8", "q8"][..],
        &["--threads", "1"],
        &["--search", "descent"],
    ] {
        let mut argv = vec!["tune", "--reuse", BIKES];
        argv.extend_from_slice(flag);
        let refused = singlepoint(&argv, None);
        let stderr = text(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{flag:?}: {stderr}");
        assert!(
            stderr.contains("cannot be used with") && stderr.contains(flag[0]),
            "{stderr}"
        );
    }
}

/// `--draw DIR` writes each image with its boxes (PNG, same size, untouched away from the
/// boxes, each box's edge in its class's colour) and each video as an annotated MP4 of the
/// frames detected.
#[test]
fn draw_writes_pictures_with_the_boxes_where_the_detections_are() {
    let dir = tempfile::tempdir().unwrap();
    let drawn = dir.path().join("drawn");
    let out = singlepoint(
        &[
            "detect",
            MESSI,
            BIKES,
            "--fps",
            "2",
            "--format",
            "jsonl",
            "--draw",
            drawn.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first: Value = serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    let picture = image::open(drawn.join("opencv_messi5.png"))
        .unwrap()
        .to_rgb8();
    let source = image::open(super::repo().join(MESSI)).unwrap().to_rgb8();
    assert_eq!(picture.dimensions(), source.dimensions());
    // The strongest box is drawn last: its left edge is its colour (sports ball, class 32,
    // the palette's third colour, #228833).
    let best = &first["detections"][0];
    assert_eq!(best["label"], "sports ball");
    let b: Vec<f64> = best["box"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let (x, y) = (b[0].round() as u32, ((b[1] + b[3]) / 2.0) as u32);
    assert_eq!(
        picture.get_pixel(x, y).0,
        [0x22, 0x88, 0x33],
        "left edge at ({x}, {y})"
    );
    // Inside the ball's box, and far from every box, the photo is as it was.
    let inside = (((b[0] + b[2]) / 2.0) as u32, ((b[1] + b[3]) / 2.0) as u32);
    assert_eq!(
        picture.get_pixel(inside.0, inside.1),
        source.get_pixel(inside.0, inside.1)
    );
    assert_eq!(picture.get_pixel(5, 335), source.get_pixel(5, 335));
    let changed = picture
        .pixels()
        .zip(source.pixels())
        .filter(|(a, b)| a != b)
        .count();
    let total = (picture.width() * picture.height()) as usize;
    assert!(
        changed > 500 && changed < total / 4,
        "{changed} of {total} pixels changed"
    );
    let probe = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames,width,height",
        ])
        .args(["-of", "csv=p=0"])
        .arg(drawn.join("bikes.mp4"))
        .output()
        .unwrap();
    assert_eq!(text(&probe.stdout).trim(), "640,272,20");
    assert!(text(&out.stderr).contains("drew 2 pictures and videos"));
}

/// A decoder that hangs (here a stand-in `ffmpeg` that never writes) fails its video after
/// `--decode-timeout`; the inputs after it go on.
#[test]
fn a_hung_decoder_fails_its_video_and_the_run_goes_on() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let tools = [
        (
            "ffprobe",
            "#!/bin/sh\necho '{\"streams\": [{\"codec_name\": \"h264\", \"width\": 8, \"height\": 8, \"avg_frame_rate\": \"25/1\", \"nb_frames\": \"3\"}]}'\n",
        ),
        ("ffmpeg", "#!/bin/sh\nexec sleep 60\n"),
    ];
    for (name, script) in tools {
        let path = bin.join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let video = dir.path().join("stuck.mp4");
    std::fs::write(&video, b"whatever").unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_singlepoint"))
        .args([
            "detect",
            "--no-cache",
            "--decode-timeout",
            "1s",
            "--format",
            "jsonl",
        ])
        .arg(&video)
        .arg(MESSI)
        .current_dir(super::repo())
        .env("PATH", path)
        .env_remove("SINGLEPOINT_BACKEND")
        .output()
        .unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let error = lines[0]["error"].as_str().unwrap();
    assert!(
        error.contains("no frame for 1 s and was stopped"),
        "{error}"
    );
    assert!(lines[1]["detections"].as_array().unwrap().len() >= 3);
}
