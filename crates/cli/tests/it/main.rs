//! The real `singlepoint` binary, as a user runs it: output on stdout, errors on stderr, exit
//! codes, formats, stdin, and bad models.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod adapt;
mod detect;
mod endurance;
mod hostile;
mod quantize;
mod redis;
mod serve;
mod text;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the binary with a fresh result cache of its own.
fn singlepoint(args: &[&str], stdin: Option<&str>) -> Output {
    let cache = tempfile::tempdir().unwrap();
    singlepoint_with_cache(args, stdin, cache.path())
}

fn singlepoint_with_cache(args: &[&str], stdin: Option<&str>, cache: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_singlepoint"))
        .args(args)
        .current_dir(repo())
        .env_remove("SINGLEPOINT_MODEL")
        .env_remove("SINGLEPOINT_BACKEND")
        .env("SINGLEPOINT_CACHE_DIR", cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn classifies_the_bundled_photos_in_order() {
    let out = singlepoint(&["classify", "photos/"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{stdout}");
    assert!(
        lines[1].starts_with("Image 1: cat ") && lines[1].ends_with("photos/chelsea.png"),
        "{stdout}"
    );
    assert!(lines[3].starts_with("Image 3: espresso "), "{stdout}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("7 images, 0 failed"), "{stderr}");
}

#[test]
fn a_bad_file_among_good_ones_is_named_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("photos/chelsea.png"), dir.path().join("1.png")).unwrap();
    std::fs::write(dir.path().join("2.jpg"), b"\xff\xd8\xff\xe0 truncated").unwrap();
    std::fs::copy(repo().join("photos/coffee.png"), dir.path().join("3.png")).unwrap();
    let folder = dir.path().display().to_string();
    let out = singlepoint(&["classify", &folder], None);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Image 0: cat"), "{stdout}");
    assert!(stdout.contains("Image 2: espresso"), "{stdout}");
    assert!(!stdout.contains("Image 1:"), "{stdout}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("2.jpg") && stderr.contains("JPEG"),
        "{stderr}"
    );
    assert!(stderr.contains("3 images, 1 failed"), "{stderr}");
}

#[test]
fn structured_formats_carry_every_input() {
    let missing = "photos/does-not-exist.png";
    let out = singlepoint(
        &[
            "classify",
            "photos/coffee.png",
            missing,
            "--format",
            "json",
            "-q",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["results"][0]["label"], "espresso");
    assert_eq!(doc["results"][0]["top_k"].as_array().unwrap().len(), 5);
    assert_eq!(doc["results"][1]["path"], missing);
    assert!(doc["results"][1]["error"]
        .as_str()
        .unwrap()
        .contains("no such file"));
    assert_eq!(doc["summary"]["images"], 2);
    assert!(out.stderr.is_empty(), "--quiet: {}", text(&out.stderr));

    let out = singlepoint(
        &[
            "classify",
            "photos/coffee.png",
            "--format",
            "csv",
            "--top-k",
            "2",
        ],
        None,
    );
    let csv = text(&out.stdout);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "index,path,label,error,class_1,label_1,probability_1,class_2,label_2,probability_2"
    );
    assert!(
        rows[1].starts_with("0,photos/coffee.png,espresso,,967,espresso,0.9"),
        "{csv}"
    );

    let out = singlepoint(
        &["classify", "-", "--format", "jsonl"],
        Some("photos/chelsea.png\nphotos/rocket.jpg\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let labels: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["label"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(labels, ["cat", "missile"]);
}

#[test]
fn both_engines_agree_on_the_command_line() {
    for backend in ["ort", "tract"] {
        let out = singlepoint(
            &[
                "classify",
                "photos/chelsea.png",
                "--backend",
                backend,
                "--top-k",
                "1",
            ],
            None,
        );
        assert!(out.status.success(), "{backend}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("Image 0: cat") && stdout.contains("tiger cat 0.3"),
            "{backend}: {stdout}"
        );
        assert!(
            text(&out.stderr).contains(&format!("({backend},")),
            "{backend}"
        );
    }
}

#[test]
fn bad_models_and_flags_stop_before_any_work_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = std::fs::read_to_string(repo().join("models/digits-cnn/model.json")).unwrap();
    std::fs::write(
        dir.path().join("model.json"),
        manifest.replace("[0.0]", "[0.0, 1.0]"),
    )
    .unwrap();
    let model = dir.path().display().to_string();
    let out = singlepoint(&["classify", "photos/", "--model", &model], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("model.json") && stderr.contains("preprocess.mean"),
        "{stderr}"
    );

    std::fs::write(dir.path().join("model.json"), &manifest).unwrap();
    std::fs::write(
        dir.path().join("labels.txt"),
        "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n",
    )
    .unwrap();
    let out = singlepoint(&["classify", "photos/", "--model", &model], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("model.onnx"), "{stderr}");

    let out = singlepoint(&["classify", "photos/", "--batch-size", "0"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--batch-size"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_model_folder_runs_through_the_same_path() {
    // The digits CNN takes 8×8 grayscale: any photo is a valid (meaningless) input.
    let out = singlepoint(
        &[
            "classify",
            "photos/coffee.png",
            "--model",
            "models/digits-cnn",
            "--format",
            "jsonl",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let label: u32 = record["label"].as_str().unwrap().parse().unwrap();
    assert!(label < 10);
    let info = singlepoint(&["model", "info", "--model", "models/digits-cnn"], None);
    assert!(
        text(&info.stdout).contains("digest:"),
        "{}",
        text(&info.stdout)
    );
}

#[test]
fn a_second_run_is_answered_from_the_disk_cache_without_inference() {
    let cache = tempfile::tempdir().unwrap();
    let first =
        singlepoint_with_cache(&["classify", "photos/", "--top-k", "3"], None, cache.path());
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stderr).contains("0% hits"),
        "{}",
        text(&first.stderr)
    );
    let second =
        singlepoint_with_cache(&["classify", "photos/", "--top-k", "3"], None, cache.path());
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(
        text(&first.stdout),
        text(&second.stdout),
        "identical answers"
    );
    let stderr = text(&second.stderr);
    assert!(
        stderr.contains("100% hits (0 memory, 7 disk, 0 misses)"),
        "{stderr}"
    );
    assert!(stderr.contains(" 0 model executions"), "{stderr}");

    // Entries are the model's outputs: another top-k is derived from them, not recomputed.
    let third = singlepoint_with_cache(
        &["classify", "photos/", "--top-k", "2", "--format", "jsonl"],
        None,
        cache.path(),
    );
    let stderr = text(&third.stderr);
    assert!(stderr.contains("100% hits"), "{stderr}");
    assert!(stderr.contains(" 0 model executions"), "{stderr}");
    let first_top2: Vec<usize> = text(&third.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["top_k"]
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(first_top2, vec![2; 7]);

    let dir = cache.path().display().to_string();
    let verify = singlepoint(&["cache", "verify", "--cache-dir", &dir], None);
    assert!(verify.status.success());
    assert!(
        text(&verify.stdout).contains("checked 7 entries: 0 corrupt"),
        "{}",
        text(&verify.stdout)
    );
    let clear = singlepoint(&["cache", "clear", "--cache-dir", &dir], None);
    assert!(
        text(&clear.stdout).contains("removed 7 entries"),
        "{}",
        text(&clear.stdout)
    );
}

#[test]
fn no_cache_and_an_unusable_cache_folder_still_classify() {
    let out = singlepoint(&["classify", "photos/coffee.png", "--no-cache"], None);
    assert!(out.status.success());
    assert!(
        !text(&out.stderr).contains("cache:"),
        "{}",
        text(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = singlepoint_with_cache(&["classify", "photos/coffee.png"], None, &file);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("espresso"));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.matches("memory only").count(), 1, "{stderr}");
}

#[test]
fn the_cost_report_prices_a_run_in_the_models_terms() {
    let cache = tempfile::tempdir().unwrap();
    let report = cache.path().join("report.json");
    let report_arg = report.display().to_string();
    let args = [
        "classify",
        "photos/",
        "--instances",
        "1",
        "--threads",
        "1",
        "--report",
        "--report-json",
        &report_arg,
        "--price-core-hour",
        "3.6",
        "--price-gib-hour",
        "0",
    ];
    let out = singlepoint_with_cache(&args, None, cache.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cost: n = 7 items, N = 1 workers, p = 0.000"),
        "{stderr}"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["items"], 7);
    assert_eq!(r["parallel_efficiency"], 1.0);
    let f = |k: &str| r[k].as_f64().unwrap();
    let total = &r["total"];
    let t = total["t"].as_f64().unwrap();
    assert!((t - (f("t0") + f("run_seconds"))).abs() < 1e-9);
    assert!(f("t0") > 0.0 && f("r0") > 0.0 && f("run_cpu_seconds") > 0.0);
    // At 3.6 per core-hour and nothing for memory, money is a thousandth of the CPU-seconds.
    let money = total["money"].as_f64().unwrap();
    assert!(
        (money - total["r"].as_f64().unwrap() / 1000.0).abs() < 1e-12,
        "{money}"
    );
    // The default w_t is the core-hour price: f adds t / 1000.
    assert!((total["f"].as_f64().unwrap() - money - t / 1000.0).abs() < 1e-12);
    assert!(f("cpu_per_item") > 0.0);
    assert!(r["stages"]["inference"].as_f64().unwrap() > 0.0);

    // Again: every answer from the cache, p = 1, no model runs.
    let out = singlepoint_with_cache(&args, None, cache.path());
    assert!(out.status.success());
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["hit_rate"], 1.0);
    assert_eq!(r["model_executions"], 0);
}

#[test]
fn tune_writes_a_config_that_classify_and_serve_use() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tuned.json");
    let out_arg = out.display().to_string();
    let run = singlepoint(
        &[
            "tune",
            "photos/",
            "--batch-sizes",
            "1,2",
            "--threads",
            "2",
            "--sample",
            "8",
            "--budget",
            "60s",
            "--slo-p99",
            "10s",
            "--out",
            &out_arg,
        ],
        None,
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let table = text(&run.stdout);
    // 3 splits of 2 threads x 2 batch sizes, plus the default (batch 4).
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 7, "{table}");
    assert_eq!(
        rows.iter().filter(|r| r.contains("chosen")).count(),
        1,
        "{table}"
    );
    assert!(rows.iter().any(|r| r.contains("default")), "{table}");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let batch = config["batch_size"].as_u64().unwrap();
    let instances = config["instances"].as_u64().unwrap();
    assert!(config["chosen_by"]["f"].as_f64().unwrap() > 0.0);
    let svg = std::fs::read_to_string(out.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Pareto"));

    // classify --config runs with the chosen batch size and instances.
    let run = singlepoint(
        &["classify", "photos/", "--no-cache", "--config", &out_arg],
        None,
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stderr = text(&run.stderr);
    assert!(
        stderr.contains(&format!("{instances} instance(s)"))
            && stderr.contains(&format!("batch {batch};")),
        "{stderr}"
    );

    // An impossible constraint: nothing is chosen, the exit code says so.
    let run = singlepoint(
        &[
            "tune",
            "photos/",
            "--batch-sizes",
            "1",
            "--sample",
            "4",
            "--min-throughput",
            "1000000",
            "--out",
            &out_arg,
        ],
        None,
    );
    assert_eq!(run.status.code(), Some(1), "{}", text(&run.stderr));
    assert!(text(&run.stdout).contains("under the floor"));
}
