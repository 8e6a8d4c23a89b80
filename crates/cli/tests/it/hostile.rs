//! The hostile-input corpus (tests/hostile/, written by tests/hostile/generate.py) driven through
//! `classify` and through the server: every case gets a clear error naming the problem (a 4xx
//! over HTTP) or, for the valid oddities, an answer; nothing panics, memory stays bounded, and
//! the server answers normally afterwards.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::serve::{photo, Server};
use super::{repo, singlepoint, text};

fn cases() -> Vec<Value> {
    let path = repo().join("tests/hostile/cases.json");
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    doc.as_array().unwrap().clone()
}

pub fn of_kind(kind: &str) -> Vec<Value> {
    cases().into_iter().filter(|c| c["kind"] == kind).collect()
}

fn s<'a>(case: &'a Value, field: &str) -> &'a str {
    case[field].as_str().unwrap_or_default()
}

fn hostile(rel: &str) -> String {
    format!("tests/hostile/{rel}")
}

fn peak_rss_mib(stderr: &str) -> u64 {
    let at = stderr
        .find("peak RSS ")
        .expect("the summary gives the peak RSS")
        + 9;
    stderr[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A process that panicked says so on stderr; none of ours may.
fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
}

#[test]
fn every_hostile_image_gets_a_named_error_or_an_answer_from_classify() {
    let images = of_kind("image");
    assert!(images.len() >= 25, "the corpus lost cases");
    let out = singlepoint(
        &["classify", "tests/hostile/images", "--format", "jsonl"],
        None,
    );
    let stderr = text(&out.stderr);
    assert_no_panic(&stderr);
    assert_eq!(out.status.code(), Some(1), "some inputs fail: {stderr}");
    let results: HashMap<String, Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["path"].as_str().unwrap().to_string(), v))
        .collect();
    assert_eq!(results.len(), images.len(), "one line per file");
    // The plain format names each bad file and its problem on stderr.
    let plain = text(&singlepoint(&["classify", "tests/hostile/images"], None).stderr);
    assert_no_panic(&plain);
    for case in &images {
        let file = hostile(s(case, "file"));
        let r = &results[&file];
        if case["expect"] == "ok" {
            assert!(r["label"].is_string(), "{}: {r}", s(case, "name"));
            if let Some(same) = case["same_as"].as_str() {
                let control = &results[&hostile(same)];
                assert_eq!(
                    r["top_k"],
                    control["top_k"],
                    "{} vs {same}",
                    s(case, "name")
                );
            }
        } else {
            let error = r["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no error: {r}", s(case, "name")));
            assert!(
                error
                    .to_lowercase()
                    .contains(&s(case, "error").to_lowercase()),
                "{}: `{error}` does not say `{}`",
                s(case, "name"),
                s(case, "error")
            );
            let name = file.rsplit('/').next().unwrap();
            assert!(
                plain.lines().any(|l| l.contains(name) && l.contains(error)),
                "stderr names {name} and its problem: {plain}"
            );
        }
    }
    // Bombs are refused from their headers: nothing near their claimed size is allocated.
    let peak = peak_rss_mib(&stderr);
    assert!(peak < 1024, "peak RSS {peak} MiB");
}

#[test]
fn model_folders_that_lie_stop_classify_and_serve_with_the_field_named() {
    for case in &of_kind("model") {
        let dir = hostile(s(case, "dir"));
        let want = [s(case, "field"), s(case, "error"), "model.json"];
        let out = singlepoint(&["classify", "--model", &dir, "photos/chelsea.png"], None);
        let stderr = text(&out.stderr);
        assert_no_panic(&stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", s(case, "name"));
        for w in want {
            assert!(stderr.contains(w), "{}: `{w}` in {stderr}", s(case, "name"));
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_singlepoint"))
            .args(["serve", "--port", "0", "--model", &dir])
            .current_dir(repo())
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_no_panic(&stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", s(case, "name"));
        for w in want {
            assert!(stderr.contains(w), "{}: `{w}` in {stderr}", s(case, "name"));
        }
    }
}

/// Sends one corpus case as its own request.
pub fn send_case(server: &Server, case: &Value) -> super::serve::Reply {
    let body = std::fs::read(repo().join(hostile(s(case, "file")))).unwrap();
    let mut headers = Vec::new();
    let len = case["header_len"].as_u64().map(|n| n.to_string());
    if let Some(len) = &len {
        headers.push(("Inference-Header-Content-Length", len.as_str()));
    }
    let content_type = match case["content_type"].as_str() {
        Some(ct) => ct,
        None if case["kind"] == "image" => "application/octet-stream",
        None => "application/json",
    };
    headers.push(("Content-Type", content_type));
    let (method, path) = if case["kind"] == "image" {
        (
            "POST",
            format!("/v1/models/{}/classify", super::serve::MODEL),
        )
    } else {
        (s(case, "method"), s(case, "path").to_string())
    };
    server.send(method, &path, &headers, &body)
}

/// Sends a case's headers as a careful client does for a large upload (`Expect:
/// 100-continue`), and returns the server's whole answer: an oversized body is refused before a
/// byte of it is sent.
fn expect_continue(server: &Server, case: &Value) -> String {
    let len = std::fs::metadata(repo().join(hostile(s(case, "file"))))
        .unwrap()
        .len();
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        s(case, "method"),
        s(case, "path")
    );
    read_until_closed(stall(&server.addr(), &head))
}

#[test]
fn every_hostile_request_gets_a_4xx_that_names_the_problem_and_the_server_stays_healthy() {
    let server = Server::start(&["--max-body", "1MiB", "--instances", "1"]);
    let rss_before = server.metric("process_resident_memory_bytes", "");
    let mut answers = HashMap::new();
    for case in of_kind("image").iter().chain(&of_kind("http")) {
        let name = s(case, "name");
        if case["status"] == 413 {
            let answer = expect_continue(&server, case);
            assert!(answer.starts_with("HTTP/1.1 413"), "{name}: {answer}");
            assert!(answer.contains(s(case, "error")), "{name}: {answer}");
            continue;
        }
        let reply = send_case(&server, case);
        let json = reply.json();
        if case["expect"] == "ok" {
            assert_eq!(reply.status, 200, "{name}: {json}");
            let result = &json["results"][0];
            assert!(result["label"].is_string(), "{name}: {json}");
            answers.insert(s(case, "file").to_string(), result["top_k"].clone());
            if let Some(same) = case["same_as"].as_str() {
                assert_eq!(
                    Some(&result["top_k"]),
                    answers.get(same),
                    "{name} vs {same}"
                );
            }
            continue;
        }
        let want = case["status"].as_u64().unwrap_or(400) as u16;
        assert_eq!(reply.status, want, "{name}: {json}");
        let error = json["error"].as_str().unwrap_or_default();
        assert!(
            error
                .to_lowercase()
                .contains(&s(case, "error").to_lowercase()),
            "{name}: `{error}` does not say `{}`",
            s(case, "error")
        );
    }
    // The same images at once as one multipart form: each bad file is reported in its place.
    let images = of_kind("image");
    let mut form = Vec::new();
    for case in &images {
        let file = s(case, "file");
        form.extend_from_slice(
            format!("--B0und\r\nContent-Disposition: form-data; name=\"f\"; filename=\"{file}\"\r\n\r\n")
                .as_bytes(),
        );
        form.extend_from_slice(&std::fs::read(repo().join(hostile(file))).unwrap());
        form.extend_from_slice(b"\r\n");
    }
    form.extend_from_slice(b"--B0und--\r\n");
    let reply = server.send(
        "POST",
        &format!("/v1/models/{}/classify", super::serve::MODEL),
        &[("Content-Type", "multipart/form-data; boundary=B0und")],
        &form,
    );
    assert_eq!(reply.status, 200, "{}", text(&reply.body));
    let results = reply.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), images.len());
    for (case, r) in images.iter().zip(&results) {
        assert_eq!(r["name"], case["file"]);
        assert_eq!(case["expect"] == "ok", r["label"].is_string(), "{r}");
    }

    // Healthy afterwards: ready, answers a real photo, memory near where it was.
    assert_eq!(server.send("GET", "/v2/health/ready", &[], &[]).status, 200);
    let reply = server.send(
        "POST",
        &format!("/v1/models/{}/classify", super::serve::MODEL),
        &[],
        &photo("coffee.png"),
    );
    assert_eq!(reply.json()["results"][0]["label"], "espresso");
    let rss_after = server.metric("process_resident_memory_bytes", "");
    assert!(
        rss_after < rss_before + 512.0 * 1048576.0,
        "RSS {} MiB → {} MiB",
        rss_before / 1048576.0,
        rss_after / 1048576.0
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// Opens a connection and sends `head` (request line and headers, possibly unfinished), then
/// trickles nothing more.
pub fn stall(addr: &str, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Waits until the server closes `stream` (after answering or not); returns what it sent.
fn read_until_closed(mut stream: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    text(&out)
}

#[test]
fn slow_loris_clients_are_cut_off_and_never_block_anyone_else() {
    let server = Server::start(&[
        "--header-timeout",
        "1s",
        "--body-timeout",
        "2s",
        "--max-connections",
        "64",
    ]);
    let addr = server.addr();
    let fds_before = server.metric("process_open_fds", "");
    let t0 = Instant::now();
    // Unfinished headers, a body that never comes, and idle keep-alive connections.
    let mut stalled = Vec::new();
    for i in 0..20 {
        let head = match i % 3 {
            0 => "POST /v1/models/efficientnet-lite0/classify HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_string(),
            1 => "POST /v1/models/efficientnet-lite0/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n\u{89}PNG".to_string(),
            _ => String::new(),
        };
        stalled.push((i % 3, stall(&addr, &head)));
    }
    // Meanwhile everyone else is served promptly.
    for _ in 0..3 {
        let t = Instant::now();
        let reply = server.send(
            "POST",
            &format!("/v1/models/{}/classify", super::serve::MODEL),
            &[],
            &photo("chelsea.png"),
        );
        assert_eq!(reply.status, 200);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    for (kind, stream) in stalled {
        let answer = read_until_closed(stream);
        let waited = t0.elapsed();
        assert!(waited < Duration::from_secs(15), "closed after {waited:?}");
        if kind == 1 {
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            assert!(answer.contains("--body-timeout"), "{answer}");
        }
    }
    // The cut-off connections gave their descriptors back.
    std::thread::sleep(Duration::from_millis(300));
    let fds_after = server.metric("process_open_fds", "");
    assert!(
        fds_after <= fds_before + 2.0,
        "fds {fds_before} → {fds_after}"
    );
    assert_eq!(server.send("GET", "/v2/health/ready", &[], &[]).status, 200);
}
