//! `singlepoint transcribe` as a user runs it: transcripts equal to the reference, input order
//! kept with files in flight at once, every format, bad files named while the others go on,
//! the second run answered from the cache.
//!
//! A test binary of its own (cargo runs test binaries one after another): Whisper keeps every
//! core busy, which would skew the timing-sensitive serve and tune tests of `tests/it`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn singlepoint(args: &[&str], stdin: Option<&str>) -> Output {
    let cache = tempfile::tempdir().unwrap();
    singlepoint_with_cache(args, stdin, cache.path())
}

fn singlepoint_with_cache(args: &[&str], _stdin: Option<&str>, cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_singlepoint"))
        .args(args)
        .current_dir(repo())
        .env("SINGLEPOINT_CACHE_DIR", cache)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn reference(name: &str) -> String {
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join("tests/data/speech/expected_transcripts.json")).unwrap(),
    )
    .unwrap();
    json["clips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["file"].as_str().unwrap().ends_with(name))
        .unwrap()["transcript"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn transcribes_files_in_order_and_names_the_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.wav");
    std::fs::write(&bad, "not audio").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let args = [
        "transcribe",
        "tests/data/speech/jfk.wav",
        bad.to_str().unwrap(),
        "tests/data/speech/cards_001.wav",
        "tests/data/speech/missing.wav",
        "tests/data/speech/nonspeech_telephone_noise.wav",
    ];
    let out = singlepoint_with_cache(&args, None, cache.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "Audio 0 (tests/data/speech/jfk.wav): {}",
                reference("jfk.wav")
            ),
            format!(
                "Audio 2 (tests/data/speech/cards_001.wav): {}",
                reference("cards_001.wav")
            ),
            "Audio 4 (tests/data/speech/nonspeech_telephone_noise.wav): ".to_string(),
        ],
        "{stdout}"
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("notes.wav: not an audio file"), "{stderr}");
    assert!(stderr.contains("missing.wav: no such file"), "{stderr}");
    assert!(stderr.contains("real-time factor"), "{stderr}");

    // The same files again: every transcript from the cache.
    let out = singlepoint_with_cache(&args, None, cache.path());
    assert_eq!(text(&out.stdout), stdout);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("3 cache hits, 0 coalesced; 0 encoder runs"),
        "{stderr}"
    );
}

#[test]
fn json_srt_and_vtt() {
    let out = singlepoint(
        &[
            "transcribe",
            "--format",
            "json",
            "tests/data/speech/formats/jfk.flac",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &json["results"][0];
    assert_eq!(r["text"], reference("jfk.wav"));
    assert_eq!(r["segments"][0]["start"], 0.0);
    assert_eq!(r["speech"].as_array().unwrap().len(), 4, "{r}");

    let out = singlepoint(
        &["transcribe", "--format", "srt", "tests/data/speech/jfk.wav"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "1\n00:00:00,000 --> 00:00:11,000\n{}\n\n",
            reference("jfk.wav")
        )
    );
    // Several files as subtitles need a folder, one file each.
    let out = singlepoint(
        &[
            "transcribe",
            "--format",
            "vtt",
            "tests/data/speech/cards_00*.wav",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--output-dir"),
        "{}",
        text(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let out = singlepoint(
        &[
            "transcribe",
            "--format",
            "vtt",
            "--output-dir",
            dir.path().to_str().unwrap(),
            "tests/data/speech/cards_001.wav",
            "tests/data/speech/cards_003.wav",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let vtt = std::fs::read_to_string(dir.path().join("cards_003.vtt")).unwrap();
    assert!(
        vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:01.538\n7 of clubs."),
        "{vtt}"
    );
}
