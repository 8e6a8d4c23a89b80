//! `singlepoint adapt` and `versions`: heads trained on the bundled backbones' features from
//! real pictures and sentences, written as model folders and versions that `classify` serves.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::serve::Server;
use super::{repo, singlepoint, singlepoint_with_cache, text};

/// The shot boundaries of tests/data/video/bikes.mp4 (its README).
const SHOTS: [u32; 7] = [0, 30, 76, 137, 187, 242, 250];

/// Frames of bikes.mp4 whose index `i` has `i % 4 == phase`, in a folder per shot
/// (`shot-1` … `shot-6`), decoded by ffmpeg.
fn scene_frames(dir: &Path, phase: u32) {
    let all = dir.join(".all");
    std::fs::create_dir_all(&all).unwrap();
    let status = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-i"])
        .arg(repo().join("tests/data/video/bikes.mp4"))
        .args(["-vsync", "0"])
        .arg(all.join("f%03d.png"))
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
    for i in (0..250).filter(|i| i % 4 == phase) {
        let shot = (0..6).find(|&k| SHOTS[k] <= i && i < SHOTS[k + 1]).unwrap() + 1;
        let class = dir.join(format!("shot-{shot}"));
        std::fs::create_dir_all(&class).unwrap();
        std::fs::rename(
            all.join(format!("f{:03}.png", i + 1)),
            class.join(format!("f{i:03}.png")),
        )
        .unwrap();
    }
    std::fs::remove_dir_all(&all).unwrap();
}

/// `label<TAB>text` lines of the UCI sentences from `sources`, the first `per_source` of each.
fn sentences(sources: &[&str], per_source: usize) -> String {
    let all = std::fs::read_to_string(repo().join("tests/data/text/uci_sentiment.tsv")).unwrap();
    let mut out = String::new();
    for source in sources {
        for line in all
            .lines()
            .skip(1)
            .filter(|l| l.starts_with(&format!("{source}\t")))
            .take(per_source)
        {
            let mut cols = line.splitn(3, '\t');
            let (_, label, sentence) = (cols.next(), cols.next().unwrap(), cols.next().unwrap());
            let label = if label == "1" { "positive" } else { "negative" };
            out.push_str(&format!("{label}\t{sentence}\n"));
        }
    }
    out
}

fn line_with<'a>(stdout: &'a str, start: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line `{start}` in {stdout}"))
}

#[test]
fn a_sentiment_head_on_minilm_is_trained_measured_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.tsv");
    let holdout = dir.path().join("imdb.tsv");
    std::fs::write(&train, sentences(&["amazon", "yelp"], 150)).unwrap();
    std::fs::write(&holdout, sentences(&["imdb"], 100)).unwrap();
    let out_dir = dir.path().join("sentiment");
    let (t, h, o) = (
        train.display().to_string(),
        holdout.display().to_string(),
        out_dir.display().to_string(),
    );
    let cache = dir.path().join("cache");
    let args = ["adapt", "--examples", &t, "--holdout", &h, "--out", &o];
    let out = singlepoint_with_cache(&args, None, &cache);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("sentiment version 1: 2 classes from all-minilm-l6-v2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("examples: negative 140, positive 160"),
        "{stdout}"
    );
    let held: f64 = line_with(&stdout, "held-out accuracy ")
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    // Far above chance on another source of reviews (the whole-set figure is in the bench).
    assert!(held > 0.7, "{stdout}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("adapt.json")).unwrap()).unwrap();
    assert_eq!(
        record["classes"],
        serde_json::json!(["negative", "positive"])
    );
    assert_eq!(record["holdout_items"], 100);
    let manifest = std::fs::read_to_string(out_dir.join("model.json")).unwrap();
    assert!(manifest.contains("\"text-classification\""), "{manifest}");

    // The written model, pooling and head in its graph, answers through `classify --text`
    // exactly as the head was measured.
    let texts = dir.path().join("imdb.txt");
    let labels: Vec<String> = sentences(&["imdb"], 100)
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    let body: String = sentences(&["imdb"], 100)
        .lines()
        .map(|l| format!("{}\n", l.split_once('\t').unwrap().1))
        .collect();
    std::fs::write(&texts, body).unwrap();
    let x = texts.display().to_string();
    let args = ["classify", "--model", &o, "--text", &x, "--format", "jsonl"];
    let out = singlepoint(&args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answers: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 100);
    let right = answers
        .iter()
        .zip(&labels)
        .filter(|(a, l)| a["label"] == l.as_str())
        .count();
    assert_eq!(
        right as f64 / 100.0,
        held,
        "served answers differ from the measured head"
    );

    // Again: every feature comes from the cache.
    let again = dir.path().join("again").display().to_string();
    let args = ["adapt", "--examples", &t, "--out", &again];
    let out = singlepoint_with_cache(&args, None, &cache);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("backbone: 300 inputs, 0 computed (0 engine runs), 300 from the cache"),
        "{stdout}"
    );
}

#[test]
fn scenes_of_a_video_become_classes_with_versions_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let (train, holdout) = (dir.path().join("train"), dir.path().join("holdout"));
    scene_frames(&train, 0);
    scene_frames(&holdout, 2);
    // An unreadable file among the examples is left out with its name; the rest train.
    std::fs::write(train.join("shot-3/broken.png"), b"\x89PNG not really").unwrap();
    let repo_dir = dir.path().join("repo");
    std::fs::create_dir(&repo_dir).unwrap();
    let (t, h, r) = (
        train.display().to_string(),
        holdout.display().to_string(),
        repo_dir.display().to_string(),
    );
    let args = [
        "adapt",
        "--examples",
        &t,
        "--holdout",
        &h,
        "--repository",
        &r,
        "--name",
        "scenes",
    ];
    let out = singlepoint(&args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("left out") && stderr.contains("broken.png"),
        "{stderr}"
    );
    assert!(
        stdout.starts_with("scenes version 1: 6 classes from efficientnet-lite0 (1280 features"),
        "{stdout}"
    );
    assert!(
        line_with(&stdout, "held-out accuracy").contains(" on 62 examples"),
        "{stdout}"
    );
    let served = repo_dir.join("scenes");
    assert!(std::fs::symlink_metadata(&served)
        .unwrap()
        .file_type()
        .is_symlink());

    // The served folder classifies the held-out frames by shot.
    let s = served.display().to_string();
    let out = singlepoint(&["classify", "--model", &s, &h, "--format", "jsonl"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answers: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let right = answers
        .iter()
        .filter(|a| {
            let path = a["path"].as_str().unwrap();
            path.contains(&format!("/{}/", a["label"].as_str().unwrap()))
        })
        .count();
    assert!(right >= 56, "{right} of {} frames by shot", answers.len());

    // A second version, then a rollback to the first.
    let out = singlepoint(&args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("scenes version 2:"));
    let out = singlepoint(&["versions", "--repository", &r, "scenes"], None);
    let listing = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<&str> = listing.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{listing}");
    assert!(rows[1].split_whitespace().nth(1) == Some("*"), "{listing}");
    let out = singlepoint(
        &["versions", "--repository", &r, "scenes", "--use", "1"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read_link(&served)
        .unwrap()
        .ends_with(".versions/scenes/1"));
    let out = singlepoint(
        &["versions", "--repository", &r, "scenes", "--use", "7"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("scenes has no version 7 (it has 1, 2)"));
}

#[test]
fn bad_examples_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).display().to_string();
    let run = |examples: &str, extra: &[&str]| {
        let out_dir = d("out");
        let mut args = vec!["adapt", "--examples", examples, "--out", &out_dir];
        args.extend_from_slice(extra);
        let out = singlepoint(&args, None);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
        text(&out.stderr)
    };
    // A folder with one class.
    let one = dir.path().join("one/cats");
    std::fs::create_dir_all(&one).unwrap();
    for f in ["chelsea.png", "coffee.png"] {
        std::fs::copy(repo().join("photos").join(f), one.join(f)).unwrap();
    }
    let e = run(&d("one"), &[]);
    assert!(e.contains("has one class, `cats`"), "{e}");
    // A class with one example.
    let dogs = dir.path().join("one/dogs");
    std::fs::create_dir_all(&dogs).unwrap();
    std::fs::copy(repo().join("photos/chelsea.png"), dogs.join("a.png")).unwrap();
    let e = run(&d("one"), &[]);
    assert!(e.contains("class `dogs` has 1 example"), "{e}");
    // Two examples, one of them unreadable: one usable is too few.
    std::fs::write(dogs.join("b.png"), b"not an image").unwrap();
    let e = run(&d("one"), &[]);
    assert!(
        e.contains("class `dogs` has 1 usable example") && e.contains("b.png"),
        "{e}"
    );
    // A TSV without tabs; texts for an image model; a missing path.
    std::fs::write(dir.path().join("bad.tsv"), "positive great\n").unwrap();
    let e = run(&d("bad.tsv"), &[]);
    assert!(e.contains("bad.tsv: line 1 has no tab"), "{e}");
    std::fs::write(dir.path().join("ok.tsv"), "a\tx\na\ty\nb\tz\nb\tw\n").unwrap();
    let e = run(&d("ok.tsv"), &["--model", "models/efficientnet-lite0"]);
    assert!(e.contains("reads images"), "{e}");
    let e = run(&d("nowhere"), &[]);
    assert!(e.contains("nowhere"), "{e}");
    // A held-out class the examples lack.
    std::fs::write(dir.path().join("other.tsv"), "c\tx\nc\ty\nb\tz\nb\tw\n").unwrap();
    let e = run(&d("ok.tsv"), &["--holdout", &d("other.tsv")]);
    assert!(e.contains("a class `c` the training examples lack"), "{e}");
    // A detector is no backbone.
    let e = run(&d("one"), &["--model", "models/yolov3-tiny"]);
    assert!(e.contains("not object-detection"), "{e}");
}

/// Keeps the first `n` frames of each shot folder.
fn keep_first(dir: &Path, n: usize) {
    for class in std::fs::read_dir(dir).unwrap().flatten() {
        let mut files: Vec<_> = std::fs::read_dir(class.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files.into_iter().skip(n) {
            std::fs::remove_file(f).unwrap();
        }
    }
}

/// Every frame under `dir` with its shot (the folder), sorted.
fn frames(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for class in std::fs::read_dir(dir).unwrap().flatten() {
        let shot = class.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(class.path()).unwrap().flatten() {
            out.push((shot.clone(), std::fs::read(f.path()).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn corrections_posted_under_load_train_a_version_served_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let (few, candidates) = (dir.path().join("few"), dir.path().join("candidates"));
    scene_frames(&few, 0);
    keep_first(&few, 2);
    scene_frames(&candidates, 2);
    let repo_dir = dir.path().join("repo");
    std::fs::create_dir(&repo_dir).unwrap();
    let (f, r) = (few.display().to_string(), repo_dir.display().to_string());
    let cache = dir.path().join("adapt-cache");
    let args = [
        "adapt",
        "--examples",
        &f,
        "--repository",
        &r,
        "--name",
        "scenes",
    ];
    let out = singlepoint_with_cache(&args, None, &cache);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let server = Arc::new(Server::start(&[
        "--model-repository",
        &r,
        "--model-control",
        "poll",
        "--repository-poll-interval",
        "200ms",
    ]));
    let ask = |server: &Server, bytes: &[u8]| -> Value {
        let reply = server.send("POST", "/v1/models/scenes/classify", &[], bytes);
        assert_eq!(reply.status, 200, "{}", text(&reply.body));
        reply.json()
    };
    // Version 1 (two frames a shot) gets some frames wrong: those are corrected first, then
    // others up to 20.
    let candidates = frames(&candidates);
    let mut wrong = Vec::new();
    let mut right = Vec::new();
    for (i, (shot, bytes)) in candidates.iter().enumerate() {
        let answer = ask(&server, bytes);
        assert_eq!(answer["model_version"], "1");
        if answer["results"][0]["label"] == shot.as_str() {
            right.push(i);
        } else {
            wrong.push(i);
        }
    }
    assert!(
        !wrong.is_empty(),
        "version 1 is right on every frame: nothing to correct"
    );
    let corrected: Vec<usize> = wrong.iter().chain(&right).copied().take(20).collect();

    // Load: clients asking for every candidate frame until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|c| {
            let (server, stop, frames) = (server.clone(), stop.clone(), candidates.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed, mut versions) = (0, 0, std::collections::BTreeSet::new());
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let reply = server.send(
                        "POST",
                        "/v1/models/scenes/classify",
                        &[],
                        &frames[i % frames.len()].1,
                    );
                    if reply.status == 200 {
                        ok += 1;
                        versions
                            .insert(reply.json()["model_version"].as_str().unwrap().to_string());
                    } else {
                        failed += 1;
                    }
                    i += 1;
                }
                (ok, failed, versions)
            })
        })
        .collect();

    for (n, &i) in corrected.iter().enumerate() {
        let (shot, bytes) = &candidates[i];
        let reply = server.send(
            "POST",
            &format!("/v1/models/scenes/feedback?label={shot}"),
            &[],
            bytes,
        );
        assert_eq!(reply.status, 200, "{}", text(&reply.body));
        assert_eq!(reply.json()["recorded"], n + 1);
    }
    let args = [
        "adapt",
        "--from-feedback",
        "--repository",
        &r,
        "--name",
        "scenes",
    ];
    let out = singlepoint_with_cache(&args, None, &cache);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("scenes version 2:"), "{stdout}");
    assert!(stdout.contains("corrections from feedback: 20"), "{stdout}");

    // The server loads version 2 while the clients keep asking.
    let t0 = Instant::now();
    loop {
        let meta = server.send("GET", "/v2/models/scenes", &[], &[]).json();
        if meta["versions"] == serde_json::json!(["2"]) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "version 2 never served: {meta}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut versions = std::collections::BTreeSet::new();
    for handle in load {
        let (ok, failed, seen) = handle.join().unwrap();
        assert_eq!(failed, 0, "requests failed during the swap");
        assert!(ok > 0);
        versions.extend(seen);
    }
    assert!(
        versions.contains("1") && versions.contains("2"),
        "{versions:?}"
    );

    // Every corrected frame now gets its label from version 2; a frame version 1 answered
    // (and cached) wrongly is computed afresh, never served version 1's answer.
    for &i in &corrected {
        let (shot, bytes) = &candidates[i];
        let answer = ask(&server, bytes);
        assert_eq!(answer["model_version"], "2");
        assert_eq!(answer["results"][0]["label"], shot.as_str(), "frame {i}");
    }

    // A correction may name an earlier answer by the key it carried.
    let answer = ask(&server, &candidates[1].1);
    let key = answer["results"][0]["key"]
        .as_str()
        .unwrap_or_else(|| panic!("no key in {answer}"))
        .to_string();
    assert_eq!(key.len(), 64);
    let correct = |body: Value| {
        server.send(
            "POST",
            "/v1/models/scenes/feedback",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    };
    let reply = correct(serde_json::json!({ "key": key, "label": candidates[1].0 }));
    assert_eq!(reply.status, 200, "{}", text(&reply.body));
    assert_eq!(reply.json()["recorded"], 21);
    // An unknown key, and one that is not a key.
    let reply = correct(serde_json::json!({ "key": "ab".repeat(32), "label": "shot-1" }));
    assert_eq!(reply.status, 404);
    assert!(text(&reply.body).contains("no recent answer of `scenes` has the key abab"));
    let reply = correct(serde_json::json!({ "key": "xyz", "label": "shot-1" }));
    assert_eq!(reply.status, 400);
    assert!(text(&reply.body).contains("`xyz` is not a cache key"));

    // Bad feedback: a label the model lacks, none at all, an unknown model.
    let bytes = &candidates[0].1;
    let reply = server.send("POST", "/v1/models/scenes/feedback?label=cat", &[], bytes);
    assert_eq!(reply.status, 400);
    assert!(text(&reply.body).contains("`cat` is not a class of `scenes`"));
    let reply = server.send("POST", "/v1/models/scenes/feedback", &[], bytes);
    assert_eq!(reply.status, 400);
    assert!(text(&reply.body).contains("?label="));
    let reply = server.send("POST", "/v1/models/nothing/feedback?label=a", &[], bytes);
    assert_eq!(reply.status, 404);
    // The correction by key makes version 3; then there is nothing new to train on.
    let out = singlepoint_with_cache(&args, None, &cache);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("corrections from feedback: 21"));
    let out = singlepoint_with_cache(&args, None, &cache);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no corrections for scenes since version 3"));
}
