//! `singlepoint detect` as a user runs it: text and JSON output, class filters, cached
//! candidates answering another threshold, and the errors that name what is wrong.

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
    assert_eq!(rows[0], "index,path,class,label,score,x1,y1,x2,y2,error");
    assert!(
        rows[1].starts_with("0,tests/data/detection/opencv_messi5.jpg,32,sports ball,0.79"),
        "{csv}"
    );
    assert_eq!(rows[1].split(',').count(), 10, "{csv}");
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
