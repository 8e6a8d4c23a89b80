//! `singlepoint serve` as a client sees it: the real binary on a real loopback socket.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use singlepoint_model::{decode_rgb, DecodeLimits, Model, Preprocessor};

use super::{repo, text};

/// A running server, killed when dropped.
pub struct Server {
    child: Child,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
    _cache: tempfile::TempDir,
}

impl Server {
    /// Starts `serve` on a free port with a fresh cache folder and waits until it listens.
    pub fn start(extra: &[&str]) -> Server {
        let cache = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_singlepoint"))
            .args(["serve", "--port", "0"])
            .args(extra)
            .current_dir(repo())
            .env_remove("SINGLEPOINT_MODEL")
            .env_remove("SINGLEPOINT_BACKEND")
            .env_remove("SINGLEPOINT_PORT")
            .env("SINGLEPOINT_CACHE_DIR", cache.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("listening on http://") {
                    let url: String = line[at + "listening on ".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .to_string();
                    let _ = tx.send(url);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start: {:?}", log.lock().unwrap());
            }
        };
        Server {
            child,
            url,
            log,
            _cache: cache,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no flush, no destructors.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `host:port`, for raw sockets.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Sends a request; returns status, headers of interest and the body.
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut req = ureq::request(method, &self.url(path)).timeout(Duration::from_secs(120));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let response = match if method == "GET" {
            req.call()
        } else {
            req.send_bytes(body)
        } {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = response.status();
        let retry_after = response.header("retry-after").map(str::to_string);
        let header_len = response
            .header("inference-header-content-length")
            .map(|v| v.parse::<usize>().unwrap());
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut body).unwrap();
        Reply {
            status,
            retry_after,
            header_len,
            body,
        }
    }

    /// POSTs a binary-framed inference request (`len` is its JSON header's length).
    pub fn infer_binary(&self, len: &str, body: &[u8]) -> Reply {
        self.send(
            "POST",
            &format!("/v2/models/{MODEL}/infer"),
            &[("Inference-Header-Content-Length", len)],
            body,
        )
    }

    fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.send("GET", path, &[], &[]);
        (r.status, r.json())
    }

    fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.send(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// One metric's value (the sum over label sets matching `labels`).
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        let r = self.send("GET", "/metrics", &[], &[]);
        assert_eq!(r.status, 200);
        text(&r.body)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                let (key, _) = l.rsplit_once(' ').unwrap();
                key == name || (key.starts_with(&format!("{name}{{")) && key.contains(labels))
            })
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Reply {
    pub status: u16,
    retry_after: Option<String>,
    header_len: Option<usize>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&self.body)))
    }

    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", text(&self.body)))
            .to_string()
    }
}

pub const MODEL: &str = "efficientnet-lite0";
const PHOTOS: &[&str] = &[
    "astronaut.png",
    "chelsea.png",
    "china.jpg",
    "coffee.png",
    "flower.jpg",
    "grace_hopper.jpg",
    "rocket.jpg",
];

pub fn photo(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("photos").join(name)).unwrap()
}

/// The model's input for a photo, preprocessed as the server and `classify` do.
fn tensor_of(model: &Model, bytes: &[u8]) -> Vec<f32> {
    let pre = &model.manifest.image.as_ref().unwrap().preprocess;
    let (image, _) = decode_rgb(
        bytes,
        &DecodeLimits::default(),
        Some(pre.min_source_short_side()),
    )
    .unwrap();
    let mut p = Preprocessor::new(pre);
    let mut out = vec![0.0; p.item_len()];
    p.run(&image, &mut out).unwrap();
    out
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// `classify --format json` over the bundled photos: per photo, the top-5 (class, probability).
fn classify_answers() -> Vec<Vec<(u64, f64)>> {
    let out = super::singlepoint(
        &["classify", "photos/", "--format", "json", "--no-cache"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), PHOTOS.len());
    results.iter().map(|r| top_k_of(&r["top_k"])).collect()
}

/// `[{"class": c, "probability": p}, ...]` as (class, probability) pairs.
fn top_k_of(top: &Value) -> Vec<(u64, f64)> {
    top.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["class"].as_u64().unwrap(),
                t["probability"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn assert_same_top5(rows: &[Vec<f32>], expected: &[Vec<(u64, f64)>], how: &str) {
    assert_eq!(rows.len(), expected.len(), "{how}");
    for (i, (row, want)) in rows.iter().zip(expected).enumerate() {
        let p = softmax(row);
        for &(class, prob) in want {
            let got = f64::from(p[class as usize]);
            assert!(
                (got - prob).abs() < 1e-4,
                "{how}: {} class {class}: {got} vs classify's {prob}",
                PHOTOS[i]
            );
        }
        let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        assert_eq!(best as u64, want[0].0, "{how}: {} top-1", PHOTOS[i]);
    }
}

/// Splits a binary infer response into its JSON header and its outputs' bytes.
fn binary_outputs(reply: &Reply) -> (Value, Vec<u8>) {
    let n = reply.header_len.expect("Inference-Header-Content-Length");
    let header: Value = serde_json::from_slice(&reply.body[..n]).unwrap();
    (header, reply.body[n..].to_vec())
}

fn rows_from_f32_bytes(bytes: &[u8], width: usize) -> Vec<Vec<f32>> {
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    values.chunks(width).map(<[f32]>::to_vec).collect()
}

#[test]
fn infer_with_json_and_binary_tensors_matches_classify() {
    let expected = classify_answers();
    let server = Server::start(&["--no-cache"]);
    let model = Model::bundled();
    let tensors: Vec<Vec<f32>> = PHOTOS
        .iter()
        .map(|p| tensor_of(&model, &photo(p)))
        .collect();
    let n = PHOTOS.len();
    let flat: Vec<f32> = tensors.concat();

    // JSON tensors in, JSON out.
    let body = json!({
        "id": "json-1",
        "inputs": [{ "name": "input", "shape": [n, 3, 224, 224], "datatype": "FP32", "data": flat }],
    });
    let reply = server.post_json(&format!("/v2/models/{MODEL}/infer"), &body);
    assert_eq!(reply.status, 200, "{}", text(&reply.body));
    let doc = reply.json();
    assert_eq!(doc["id"], "json-1");
    assert_eq!(doc["model_name"], MODEL);
    let out = &doc["outputs"][0];
    assert_eq!(out["name"], "logits");
    assert_eq!(out["datatype"], "FP32");
    assert_eq!(out["shape"], json!([n, 1000]));
    let values: Vec<f32> = out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let json_rows: Vec<Vec<f32>> = values.chunks(1000).map(<[f32]>::to_vec).collect();
    assert_same_top5(&json_rows, &expected, "JSON tensors");

    // Binary tensors in and out (the extension tritonclient uses), on the versioned path.
    let header = json!({
        "inputs": [{ "name": "input", "shape": [n, 3, 224, 224], "datatype": "FP32",
                     "parameters": { "binary_data_size": flat.len() * 4 } }],
        "outputs": [{ "name": "logits", "parameters": { "binary_data": true } }],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&f32_bytes(&flat));
    let len = header.len().to_string();
    let reply = server.send(
        "POST",
        &format!("/v2/models/{MODEL}/versions/1/infer"),
        &[
            ("Inference-Header-Content-Length", &len),
            ("Content-Type", "application/octet-stream"),
        ],
        &body,
    );
    assert_eq!(reply.status, 200, "{}", text(&reply.body));
    let (head, bin) = binary_outputs(&reply);
    assert_eq!(
        head["outputs"][0]["parameters"]["binary_data_size"],
        json!(n * 4000)
    );
    let bin_rows = rows_from_f32_bytes(&bin, 1000);
    assert_same_top5(&bin_rows, &expected, "binary tensors");
    for (a, b) in bin_rows.iter().zip(&json_rows) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{x} vs {y}");
        }
    }

    // Encoded images as BYTES, with the classification extension.
    let mut images = Vec::new();
    for p in PHOTOS {
        let bytes = photo(p);
        images.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        images.extend_from_slice(&bytes);
    }
    let header = json!({
        "inputs": [{ "name": "input", "shape": [n], "datatype": "BYTES",
                     "parameters": { "binary_data_size": images.len() } }],
        "outputs": [{ "name": "logits", "parameters": { "classification": 1 } }],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&images);
    let len = header.len().to_string();
    let reply = server.infer_binary(&len, &body);
    assert_eq!(reply.status, 200, "{}", text(&reply.body));
    let doc = reply.json();
    let out = &doc["outputs"][0];
    assert_eq!(out["datatype"], "BYTES");
    assert_eq!(out["shape"], json!([n, 1]));
    for (i, s) in out["data"].as_array().unwrap().iter().enumerate() {
        let class: u64 = s
            .as_str()
            .unwrap()
            .split(':')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(class, expected[i][0].0, "{}: {s}", PHOTOS[i]);
    }
}

#[test]
fn the_classify_endpoint_takes_raw_bytes_and_multipart_forms() {
    let expected = classify_answers();
    let server = Server::start(&["--cache-disk", "0"]);
    let path = format!("/v1/models/{MODEL}/classify?top_k=3");
    let reply = server.send(
        "POST",
        &path,
        &[("Content-Type", "image/png")],
        &photo("chelsea.png"),
    );
    assert_eq!(reply.status, 200, "{}", text(&reply.body));
    let doc = reply.json();
    let r = &doc["results"][0];
    assert_eq!(r["label"], "cat");
    assert_eq!(r["cached"], false);
    assert_eq!(r["top_k"].as_array().unwrap().len(), 3);
    assert_eq!(r["top_k"][0]["class"].as_u64(), Some(expected[1][0].0));
    let p = r["top_k"][0]["probability"].as_f64().unwrap();
    assert!((p - expected[1][0].1).abs() < 1e-4, "{p}");

    // A form of three files, one of them not an image: the others are answered in order, the
    // bad one is named, and the one sent before comes from the cache.
    let boundary = "singlepoint-test-boundary";
    let mut form = Vec::new();
    for (name, bytes) in [
        ("coffee.png", photo("coffee.png")),
        ("notes.txt", b"not an image at all".to_vec()),
        ("chelsea.png", photo("chelsea.png")),
    ] {
        form.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        form.extend_from_slice(&bytes);
        form.extend_from_slice(b"\r\n");
    }
    form.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let reply = server.send("POST", &path, &[("Content-Type", &content_type)], &form);
    assert_eq!(reply.status, 200, "{}", text(&reply.body));
    let doc = reply.json();
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["name"], "coffee.png");
    assert_eq!(results[0]["label"], "espresso");
    assert_eq!(results[0]["cached"], false);
    assert_eq!(results[1]["name"], "notes.txt");
    assert!(
        results[1]["error"]
            .as_str()
            .unwrap()
            .contains("not an image"),
        "{}",
        results[1]
    );
    assert_eq!(results[2]["label"], "cat");
    assert_eq!(results[2]["cached"], true, "{}", results[2]);
    assert!(server.metric("singlepoint_cache_hits_total", "memory") >= 1.0);
}

/// Distinct random inputs of the model's shape, as binary infer bodies.
pub fn random_tensor_body(seed: u64) -> (String, Vec<u8>) {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..3 * 224 * 224)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let header = json!({
        "inputs": [{ "name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                     "parameters": { "binary_data_size": values.len() * 4 } }],
        "outputs": [{ "name": "logits", "parameters": { "classification": 1 } }],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&f32_bytes(&values));
    (header.len().to_string(), body)
}

/// Sends `bodies` all at once from one thread each; returns the statuses.
fn concurrently(server: &Server, bodies: Vec<(String, Vec<u8>)>) -> Vec<Reply> {
    let barrier = Arc::new(Barrier::new(bodies.len()));
    std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .into_iter()
            .map(|(len, body)| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    barrier.wait();
                    server.infer_binary(&len, &body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn concurrent_requests_are_batched_and_identical_ones_run_once() {
    let server = Server::start(&[
        "--cache-disk",
        "0",
        "--instances",
        "1",
        "--max-batch-size",
        "8",
        "--max-queue-delay",
        "20ms",
    ]);
    // 64 distinct requests at once: the batcher puts several into one engine run.
    let replies = concurrently(&server, (0..64).map(random_tensor_body).collect());
    for r in &replies {
        assert_eq!(r.status, 200, "{}", text(&r.body));
    }
    let executions = server.metric("singlepoint_model_executions_total", MODEL);
    let singles = server.metric("singlepoint_batch_size_bucket", "le=\"1\"");
    let batches = server.metric("singlepoint_batch_size_count", MODEL);
    assert_eq!(batches, executions);
    assert!(batches > singles, "some batch held more than one item");
    assert!(
        executions < 64.0,
        "{executions} engine runs for 64 requests"
    );
    assert_eq!(
        server.metric("singlepoint_items_computed_total", MODEL),
        64.0
    );

    // 32 identical requests for an input nobody asked for yet: the model runs once.
    let before = server.metric("singlepoint_items_computed_total", MODEL);
    let same = random_tensor_body(1000);
    let replies = concurrently(&server, vec![same; 32]);
    let answers: Vec<Value> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", text(&r.body));
            r.json()["outputs"][0]["data"].clone()
        })
        .collect();
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "one answer for all"
    );
    let computed = server.metric("singlepoint_items_computed_total", MODEL) - before;
    assert_eq!(
        computed, 1.0,
        "32 identical requests ran the model {computed} times"
    );
    let shared = server.metric("singlepoint_coalesced_total", MODEL)
        + server.metric("singlepoint_model_cache_hits_total", MODEL);
    assert_eq!(shared, 31.0);
}

#[test]
fn bad_requests_get_a_clear_4xx_and_the_server_keeps_serving() {
    let server = Server::start(&["--no-cache", "--max-body", "1MiB"]);
    let infer = format!("/v2/models/{MODEL}/infer");
    let tensor = |name: &str, datatype: &str, shape: Value, data: Value| json!({ "inputs": [{ "name": name, "shape": shape, "datatype": datatype, "data": data }] });
    let zeros = |n: usize| Value::from(vec![0.0f32; n]);
    let full = 3 * 224 * 224;
    let binary_header = |size: usize| {
        json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                           "parameters": {"binary_data_size": size}}]})
        .to_string()
        .into_bytes()
    };
    let mut nan = vec![0.0f32; full];
    nan[17] = f32::NAN;
    let classify = format!("/v1/models/{MODEL}/classify");
    // (what, path, JSON part, binary part sent with Inference-Header-Content-Length, status,
    // what the error must say)
    type Case<'a> = (&'a str, &'a str, Vec<u8>, Option<Vec<u8>>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            &infer,
            b"{\"inputs\": [".to_vec(),
            None,
            400,
            "malformed",
        ),
        (
            "unknown model",
            "/v2/models/resnet/infer",
            tensor("input", "FP32", json!([1, 3, 224, 224]), zeros(full))
                .to_string()
                .into_bytes(),
            None,
            404,
            "unknown model `resnet`",
        ),
        (
            "unknown version",
            "/v2/models/efficientnet-lite0/versions/7/infer",
            tensor("input", "FP32", json!([1, 3, 224, 224]), zeros(full))
                .to_string()
                .into_bytes(),
            None,
            404,
            "no version `7`",
        ),
        (
            "wrong input name",
            &infer,
            tensor("pixels", "FP32", json!([1, 3, 224, 224]), zeros(full))
                .to_string()
                .into_bytes(),
            None,
            400,
            "unknown input `pixels`",
        ),
        (
            "wrong datatype",
            &infer,
            tensor("input", "INT64", json!([1, 3, 224, 224]), zeros(full))
                .to_string()
                .into_bytes(),
            None,
            400,
            "datatype `INT64`",
        ),
        (
            "wrong shape",
            &infer,
            tensor("input", "FP32", json!([1, 3, 32, 32]), zeros(3 * 32 * 32))
                .to_string()
                .into_bytes(),
            None,
            400,
            "does not fit",
        ),
        (
            "element count",
            &infer,
            tensor("input", "FP32", json!([1, 3, 224, 224]), zeros(10))
                .to_string()
                .into_bytes(),
            None,
            400,
            "needs 150528 elements",
        ),
        (
            "binary size without the header",
            &infer,
            binary_header(full * 4),
            None,
            400,
            "no Inference-Header-Content-Length",
        ),
        (
            "truncated binary",
            &infer,
            binary_header(full * 4),
            Some(vec![0u8; 1000]),
            400,
            "truncated",
        ),
        (
            "NaN in a tensor",
            &infer,
            binary_header(full * 4),
            Some(f32_bytes(&nan)),
            400,
            "element 17 is NaN",
        ),
        (
            "non-image bytes",
            &classify,
            b"hello, not an image".to_vec(),
            None,
            400,
            "not an image",
        ),
        (
            "decompression bomb",
            &classify,
            b"GIF89a but not really".to_vec(),
            None,
            400,
            "decompression bomb",
        ),
        ("empty body", &classify, Vec::new(), None, 400, "empty"),
        (
            "bad top_k",
            "/v1/models/efficientnet-lite0/classify?top_k=0",
            photo("chelsea.png"),
            None,
            400,
            "top_k",
        ),
        (
            "no such endpoint",
            "/v3/whatever",
            Vec::new(),
            None,
            404,
            "no endpoint",
        ),
    ];
    for (what, path, json_part, binary, status, needle) in cases {
        let len = json_part.len().to_string();
        let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
        let mut body = json_part;
        if let Some(binary) = binary {
            headers.push(("Inference-Header-Content-Length", &len));
            body.extend_from_slice(&binary);
        }
        let reply = server.send("POST", path, &headers, &body);
        assert_eq!(reply.status, status, "{what}: {}", text(&reply.body));
        let error = reply.error();
        assert!(error.contains(needle), "{what}: {error}");
    }
    // An oversized body is refused from its Content-Length, before it is sent: the server
    // answers 413 to the headers alone (a raw socket, so the client is not mid-upload).
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    let head = format!(
        "POST /v1/models/{MODEL}/classify HTTP/1.1\r\nHost: {addr}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        2 << 20
    );
    std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut response = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut response);
    let response = text(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains("larger than the server's limit"),
        "{response}"
    );

    // A GET on the infer endpoint is a JSON 405, not an empty body.
    let reply = server.send("GET", &infer, &[], &[]);
    assert_eq!(reply.status, 405);
    assert!(reply.error().contains("GET"));
    let (status, ready) = server.get_json("/v2/health/ready");
    assert_eq!((status, ready["ready"].clone()), (200, json!(true)));
    assert!(server.metric("singlepoint_requests_total", "outcome=\"bad_request\"") >= 10.0);
    // Unknown model names do not grow the metrics.
    assert!(!text(&server.send("GET", "/metrics", &[], &[]).body).contains("resnet"));
}

#[test]
fn overload_is_refused_with_429_and_the_server_survives() {
    // The queue admits 4 items; 40 clients at once (ten times that) send distinct work.
    let server = Server::start(&[
        "--no-cache",
        "--instances",
        "1",
        "--max-batch-size",
        "1",
        "--max-queue",
        "4",
    ]);
    let replies = concurrently(
        &server,
        (0..40).map(|i| random_tensor_body(5000 + i)).collect(),
    );
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + refused.len(), 40, "only 200 or 429");
    assert!(ok >= 4, "{ok} answered");
    assert!(!refused.is_empty(), "nobody was refused");
    for r in &refused {
        assert_eq!(r.retry_after.as_deref(), Some("1"));
        assert!(r.error().contains("queue is full"), "{}", r.error());
    }
    assert_eq!(
        server.metric("singlepoint_rejected_total", MODEL),
        refused.len() as f64
    );
    let rss = server.metric("process_resident_memory_bytes", "");
    assert!(rss < 1.5e9, "RSS {rss}");
    let (status, _) = server.get_json("/v2/health/ready");
    assert_eq!(status, 200);
    let reply = server.send(
        "POST",
        &format!("/v1/models/{MODEL}/classify"),
        &[],
        &photo("coffee.png"),
    );
    assert_eq!(reply.json()["results"][0]["label"], "espresso");
}

/// `classify` and `serve` drive the same single point and share its cache entries: photos that
/// `classify` computed are cache hits for the server, and the model never runs.
#[test]
fn photos_classify_computed_are_served_from_the_cache_without_running_the_model() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().display().to_string();
    let out = super::singlepoint_with_cache(
        &[
            "classify",
            "--format",
            "jsonl",
            "--cache-dir",
            &dir,
            "photos/",
        ],
        None,
        cache.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let computed: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(computed.len(), 7);
    let server = Server::start(&["--cache-dir", &dir]);
    let mut names: Vec<_> = std::fs::read_dir(repo().join("photos"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".png") || n.ends_with(".jpg"))
        .collect();
    names.sort();
    assert_eq!(names.len(), computed.len());
    for (name, classified) in names.iter().zip(&computed) {
        let reply = server.send(
            "POST",
            &format!("/v1/models/{MODEL}/classify?top_k=5"),
            &[],
            &photo(name),
        );
        assert_eq!(reply.status, 200, "{name}: {}", text(&reply.body));
        let result = &reply.json()["results"][0];
        assert_eq!(result["cached"], json!(true), "{name}: {result}");
        assert_eq!(result["label"], classified["label"], "{name}");
        let served: Vec<&Value> = result["top_k"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| &t["class"])
            .collect();
        let offline: Vec<&Value> = classified["top_k"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| &t["class"])
            .collect();
        assert_eq!(served, offline, "{name}");
    }
    assert_eq!(
        server.metric("singlepoint_model_executions_total", MODEL),
        0.0
    );
}

/// A client that shuts down its write side once the request is sent (`nc -N`, some proxies)
/// still gets its answer: the read EOF does not close the connection.
#[test]
fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    use std::io::{Read, Write};
    let server = Server::start(&["--no-cache"]);
    let addr = server.addr();
    let body = photo("coffee.png");
    for (what, path) in [
        ("classify", format!("/v1/models/{MODEL}/classify?top_k=1")),
        ("health", "/v2/health/ready".to_string()),
    ] {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        let payload: &[u8] = if what == "classify" { &body } else { &[] };
        let method = if what == "classify" { "POST" } else { "GET" };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
            payload.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(payload).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let response = text(&response);
        assert!(response.starts_with("HTTP/1.1 200"), "{what}: {response:?}");
        if what == "classify" {
            assert!(response.contains("espresso"), "{response}");
        }
    }
}

#[test]
fn a_request_past_its_deadline_gets_504() {
    let server = Server::start(&["--no-cache", "--request-timeout", "1ms"]);
    let (len, body) = random_tensor_body(77);
    let reply = server.infer_binary(&len, &body);
    assert_eq!(reply.status, 504, "{}", text(&reply.body));
    assert!(reply.error().contains("deadline"));
}

#[test]
fn sigterm_finishes_the_requests_in_flight() {
    let mut server = Server::start(&["--no-cache", "--instances", "1", "--max-batch-size", "1"]);
    let bodies: Vec<(String, Vec<u8>)> = (0..12).map(|i| random_tensor_body(9000 + i)).collect();
    let pid = server.child.id().to_string();
    let replies = std::thread::scope(|s| {
        let srv = &server;
        let handle = s.spawn(move || concurrently(srv, bodies));
        // Wait until every request has reached the queue (one instance runs them one by one,
        // so most are still waiting), then ask the server to stop.
        let t0 = Instant::now();
        loop {
            let queued = srv.metric("singlepoint_queue_depth", MODEL);
            let done = srv.metric("singlepoint_items_computed_total", MODEL);
            if queued + done >= 12.0 {
                assert!(
                    queued >= 1.0,
                    "all 12 finished before SIGTERM; nothing was in flight"
                );
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the requests never arrived"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        handle.join().unwrap()
    });
    for r in &replies {
        assert_eq!(r.status, 200, "{}", text(&r.body));
    }
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}\n{}", server.log());
    let log = server.log();
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
}

#[test]
fn metadata_health_and_openapi_describe_the_server() {
    let server = Server::start(&["--no-cache", "--instances", "2"]);
    let (status, live) = server.get_json("/v2/health/live");
    assert_eq!((status, live["live"].clone()), (200, json!(true)));
    let (status, meta) = server.get_json("/v2");
    assert_eq!(status, 200);
    assert!(meta["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));
    for path in [
        format!("/v2/models/{MODEL}"),
        format!("/v2/models/{MODEL}/versions/1"),
    ] {
        let (status, m) = server.get_json(&path);
        assert_eq!(status, 200, "{path}");
        assert_eq!(m["name"], MODEL);
        assert_eq!(m["inputs"][0]["name"], "input");
        assert_eq!(m["inputs"][0]["datatype"], "FP32");
        assert_eq!(m["inputs"][0]["shape"], json!([-1, 3, 224, 224]));
        assert_eq!(m["outputs"][0]["shape"], json!([-1, 1000]));
    }
    let (status, _) = server.get_json(&format!("/v2/models/{MODEL}/ready"));
    assert_eq!(status, 200);
    let (status, _) = server.get_json("/v2/models/nope/ready");
    assert_eq!(status, 404);
    let (status, doc) = server.get_json("/openapi.json");
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    let (status, models) = server.get_json("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(models["models"][0]["name"], MODEL);
    let reply = server.send(
        "POST",
        &format!("/v1/models/{MODEL}/classify"),
        &[],
        &photo("china.jpg"),
    );
    assert_eq!(reply.status, 200);
    let (status, cost) = server.get_json("/v1/cost");
    assert_eq!(status, 200);
    assert_eq!(cost["n"], 1);
    assert_eq!(cost["N"], 2);
    assert_eq!(cost["models"][MODEL]["computed"], 1);
    assert!(cost["money"].as_f64().unwrap() > 0.0);
    assert!(cost["t0"].as_f64().unwrap() > 0.0);
    let metrics = text(&server.send("GET", "/metrics", &[], &[]).body);
    for family in [
        "singlepoint_cost_money_total",
        "singlepoint_hit_rate",
        "singlepoint_requests_total",
        "singlepoint_request_duration_seconds",
        "singlepoint_queue_seconds",
        "singlepoint_compute_seconds",
        "singlepoint_batch_size",
        "singlepoint_coalesced_total",
        "singlepoint_instances_busy",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(&format!("# TYPE {family} ")), "{family}");
    }
}

#[test]
fn serve_takes_its_batching_from_a_tuned_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tuned.json");
    std::fs::write(
        &config,
        r#"{"backend":"ort","instances":1,"threads_per_instance":2,"batch_size":3}"#,
    )
    .unwrap();
    let path = config.display().to_string();
    let server = Server::start(&["--no-cache", "--config", &path]);
    let (_, models) = server.get_json("/v1/models");
    assert_eq!(models["models"][0]["instances"], 1);
    assert_eq!(models["models"][0]["max_batch_size"], 3);
    drop(server);
    // A flag beats the file.
    let server = Server::start(&["--no-cache", "--config", &path, "--max-batch-size", "5"]);
    let (_, models) = server.get_json("/v1/models");
    assert_eq!(models["models"][0]["max_batch_size"], 5);
}

#[test]
fn a_model_repository_serves_each_model_and_refuses_a_bad_one() {
    let repo_dir = tempfile::tempdir().unwrap();
    let digits = repo_dir.path().join("digits");
    std::fs::create_dir(&digits).unwrap();
    for entry in std::fs::read_dir(repo().join("models/digits-cnn")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), digits.join(entry.file_name())).unwrap();
    }
    let dir = repo_dir.path().display().to_string();
    let server = Server::start(&["--no-cache", "--model-repository", &dir]);
    let (status, models) = server.get_json("/v1/models");
    assert_eq!(status, 200);
    let name = models["models"][0]["name"].as_str().unwrap().to_string();
    let (status, meta) = server.get_json(&format!("/v2/models/{name}"));
    assert_eq!(status, 200, "{meta}");
    drop(server);

    std::fs::write(digits.join("model.json"), "{\"name\": ").unwrap();
    let out = super::singlepoint(&["serve", "--port", "0", "--model-repository", &dir], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("model.json"), "{stderr}");
}

/// Clients sending distinct tensors for `seconds`, each waiting for its answer; with `pace`,
/// each client starts a request every `pace` seconds (open loop, as independent users arrive),
/// else as soon as the last is answered (closed loop). Returns each request's latency.
fn drive(server: &Server, clients: usize, seconds: f64, seed: u64, pace: Option<f64>) -> Vec<f64> {
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(seconds);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients as u64)
            .map(|c| {
                s.spawn(move || {
                    let mut latencies = Vec::new();
                    let mut i = 0;
                    while Instant::now() < stop {
                        if let Some(pace) = pace {
                            // Staggered: client c's k-th request is due at (k + c/clients)·pace.
                            let due = start
                                + Duration::from_secs_f64(
                                    (i as f64 + c as f64 / clients as f64) * pace,
                                );
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                        let (len, body) = random_tensor_body(seed + c * 100_000 + i);
                        i += 1;
                        let t0 = Instant::now();
                        let r = server.infer_binary(&len, &body);
                        assert_eq!(r.status, 200, "{}", text(&r.body));
                        latencies.push(t0.elapsed().as_secs_f64());
                    }
                    latencies
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
}

#[test]
fn the_batcher_adapts_to_a_step_in_load_and_back() {
    // Target 400 ms; the stated margin: each phase's p99 stays under 1.5 x the target.
    let target = 0.4;
    let server = Server::start(&[
        "--no-cache",
        "--instances",
        "1",
        "--max-batch-size",
        "16",
        "--latency-target",
        "400ms",
    ]);
    let delay = || server.metric("singlepoint_adaptive_queue_delay_seconds", MODEL);
    let batches = || {
        (
            server.metric("singlepoint_batch_size_sum", MODEL),
            server.metric("singlepoint_batch_size_count", MODEL),
        )
    };
    // Runs a phase while sampling the controller's delay every 50 ms; returns the latencies,
    // the mean delay and the mean batch size of the phase.
    let phase = |clients: usize, seconds: f64, seed: u64, pace: Option<f64>| {
        let (s0, c0) = batches();
        let done = std::sync::atomic::AtomicBool::new(false);
        let (latencies, delays) = std::thread::scope(|s| {
            let sampler = s.spawn(|| {
                let mut d = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    d.push(delay());
                    std::thread::sleep(Duration::from_millis(50));
                }
                d
            });
            let latencies = drive(&server, clients, seconds, seed, pace);
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            (latencies, sampler.join().unwrap())
        });
        let (s1, c1) = batches();
        let mean_delay = delays.iter().sum::<f64>() / delays.len().max(1) as f64;
        (latencies, mean_delay, (s1 - s0) / (c1 - c0).max(1.0))
    };
    // Low: one closed-loop client. Waiting would gain nothing: batches of one, (almost) no delay.
    let (low, low_delay, low_batch) = phase(1, 2.0, 1, None);
    assert!(
        low_batch < 1.2,
        "mean batch {low_batch} under a lone client"
    );
    // High: 16 independent users arriving at 85 % of what this machine serves one at a time
    // (measured by the lone client, so that a busy or slow machine gets a load it can carry;
    // 85 requests a second where that took 10 ms). Waiting gains
    // items, so the delay grows and batches with it (measured after 2.5 s to follow the step),
    // within what the fitted model (compute = a·batch + b) allows in half the target.
    let alone = low.iter().sum::<f64>() / low.len().max(1) as f64;
    let rate = 0.85 / alone.max(1e-3);
    let (mut high, _, _) = phase(16, 2.5, 2, Some(16.0 / rate));
    let (high_rest, high_delay, high_batch) = phase(16, 3.0, 4, Some(16.0 / rate));
    high.extend(high_rest);
    eprintln!(
        "lone client {:.1} ms per request; high phase {rate:.0} req/s: mean delay {:.1} ms, \
         mean batch {high_batch:.2}",
        alone * 1e3,
        high_delay * 1e3
    );
    // A delay worth a sizeable part of the gap between arrivals.
    assert!(
        high_delay > 0.4 / rate,
        "mean delay {high_delay} s under load"
    );
    assert!(
        high_batch > 1.5 && high_batch > 1.25 * low_batch,
        "mean batch {high_batch} under load, {low_batch} alone"
    );
    assert!(
        high_delay > 4.0 * low_delay,
        "delay {high_delay} under load vs {low_delay} alone"
    );
    let slope = server.metric("singlepoint_latency_model_slope_seconds", MODEL);
    assert!(slope > 0.0, "fitted a = {slope}");
    let cap = server.metric("singlepoint_adaptive_max_batch", MODEL);
    assert!((1.0..=16.0).contains(&cap), "cap {cap}");
    // Low again: waiting gains nothing; delay and batches fall back.
    let (_, _, _) = phase(1, 1.0, 3, None);
    let (low_again, low_again_delay, low_again_batch) = phase(1, 2.0, 5, None);
    assert!(
        low_again_batch < 1.2,
        "mean batch {low_again_batch} after the load left"
    );
    assert!(
        high_delay > 4.0 * low_again_delay,
        "delay {low_again_delay} s after the load left"
    );
    for (phase, latencies) in [("low", low), ("high", high), ("low again", low_again)] {
        let p = p99(latencies);
        assert!(
            p <= 1.5 * target,
            "{phase}: p99 {p} s over 1.5 x the target"
        );
    }
}

/// A repository holding the digits model as version `version`; `std` changes its answers.
fn digits_repository(dir: &std::path::Path, version: &str, std: &str) {
    let folder = dir.join("digits-cnn");
    std::fs::create_dir_all(&folder).unwrap();
    let src = repo().join("models/digits-cnn");
    for f in ["model.onnx", "labels.txt"] {
        std::fs::copy(src.join(f), folder.join(f)).unwrap();
    }
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("model.json")).unwrap()).unwrap();
    let mut manifest = manifest;
    manifest["version"] = json!(version);
    manifest["preprocess"]["std"] = serde_json::from_str(std).unwrap();
    // Written whole and renamed, as a deployment tool would.
    let tmp = folder.join("model.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    std::fs::rename(&tmp, folder.join("model.json")).unwrap();
}

struct Answered {
    status: u16,
    version: String,
    source: String,
    top: Vec<(u64, f64)>,
}

fn ask_digits(server: &Server, photo_bytes: &[u8]) -> Answered {
    let reply = server.send(
        "POST",
        "/v1/models/digits-cnn/classify?top_k=3",
        &[],
        photo_bytes,
    );
    if reply.status != 200 {
        return Answered {
            status: reply.status,
            version: String::new(),
            source: text(&reply.body),
            top: Vec::new(),
        };
    }
    let v = reply.json();
    let r = &v["results"][0];
    Answered {
        status: 200,
        version: v["model_version"].as_str().unwrap_or_default().to_string(),
        source: r["source"].as_str().unwrap_or_default().to_string(),
        top: top_k_of(&r["top_k"]),
    }
}

/// Model control: version 2 loaded under load against version 1 drops no request, its answers
/// differ and none of them comes from version 1's cache entries; unloading lets requests in
/// flight finish; bad loads are named errors and the running models keep serving.
#[test]
fn models_are_loaded_and_unloaded_under_traffic_and_versions_never_share_answers() {
    let dir = tempfile::tempdir().unwrap();
    digits_repository(dir.path(), "1", "[255.0]");
    let repo_dir = dir.path().display().to_string();
    let server = Server::start(&[
        "--model-repository",
        &repo_dir,
        "--model-control",
        "explicit",
    ]);
    let (status, index) = server.get_json("/v2/repository/index");
    assert_eq!(status, 200);
    assert_eq!(
        index,
        json!([{ "name": "digits-cnn", "version": "1", "state": "READY", "reason": "" }])
    );

    let names = [
        "chelsea.png",
        "coffee.png",
        "rocket.jpg",
        "china.jpg",
        "astronaut.png",
    ];
    let photos: Vec<Vec<u8>> = names.iter().map(|n| photo(n)).collect();
    let v1: Vec<Answered> = photos.iter().map(|p| ask_digits(&server, p)).collect();
    assert!(
        v1.iter().all(|a| a.status == 200 && a.version == "1"),
        "{:?}",
        v1.iter().map(|a| &a.source).collect::<Vec<_>>()
    );

    // Traffic from four clients against version 1 while version 2 is loaded.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let answers: Mutex<Vec<(usize, Answered)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for c in 0..4 {
            let (server, photos, stop, answers) = (&server, &photos, &stop, &answers);
            s.spawn(move || {
                let mut i = c;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let k = i % photos.len();
                    let a = ask_digits(server, &photos[k]);
                    answers.lock().unwrap().push((k, a));
                    i += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        digits_repository(dir.path(), "2", "[64.0]");
        let reply = server.send("POST", "/v2/repository/models/digits-cnn/load", &[], b"");
        assert_eq!(reply.status, 200, "{}", text(&reply.body));
        std::thread::sleep(Duration::from_millis(800));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let answers = answers.into_inner().unwrap();
    let failed: Vec<&str> = answers
        .iter()
        .filter(|(_, a)| a.status != 200)
        .map(|(_, a)| a.source.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "failed requests during the load: {failed:?}"
    );
    let v2: Vec<&(usize, Answered)> = answers.iter().filter(|(_, a)| a.version == "2").collect();
    assert!(!v2.is_empty(), "no answer came from version 2");
    assert!(answers
        .iter()
        .all(|(_, a)| a.version == "1" || a.version == "2"));
    // Version 2's answers are its own: every one differs from version 1's for its photo (so none
    // was served from version 1's entries), and each photo was computed under version 2 by
    // one of the requests (its entry did not exist before the load).
    for (k, a) in &v2 {
        assert_ne!(
            a.top, v1[*k].top,
            "{}: version 2 answered as version 1",
            names[*k]
        );
    }
    for (k, name) in names.iter().enumerate() {
        let mine: Vec<&str> = v2
            .iter()
            .filter(|(j, _)| *j == k)
            .map(|(_, a)| a.source.as_str())
            .collect();
        assert!(
            mine.is_empty() || mine.iter().any(|s| *s != "cache"),
            "{name}: every version 2 answer came from the cache: {mine:?}"
        );
    }
    let (_, meta) = server.get_json("/v2/models/digits-cnn");
    assert_eq!(meta["versions"], json!(["2"]));
    let old = server.send("GET", "/v2/models/digits-cnn/versions/1/ready", &[], &[]);
    assert_eq!(old.status, 404, "version 1 is no longer served");

    // Bad loads are named errors; digits keeps serving.
    let missing = server.send("POST", "/v2/repository/models/resnet/load", &[], b"");
    assert_eq!(missing.status, 400);
    assert!(missing.error().contains("resnet"), "{}", missing.error());
    let traversal = server.send("POST", "/v2/repository/models/..%2Fetc/load", &[], b"");
    assert!(
        traversal.status == 400 || traversal.status == 404,
        "{}",
        traversal.status
    );
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("model.json"), "{\"name\": \"broken\"}").unwrap();
    let reply = server.send("POST", "/v2/repository/models/broken/load", &[], b"");
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("model.json"), "{}", reply.error());
    let index = server.post_json("/v2/repository/index", &json!({})).json();
    assert!(
        index
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "broken" && e["state"] == "UNAVAILABLE"),
        "{index}"
    );
    assert_eq!(ask_digits(&server, &photos[0]).status, 200);

    // Unload with requests in flight: each gets its answer or, arriving after, a 404.
    let replies: Vec<Answered> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (server, photos) = (&server, &photos);
                s.spawn(move || ask_digits(server, &photos[i % photos.len()]))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2));
        let reply = server.send("POST", "/v2/repository/models/digits-cnn/unload", &[], b"");
        assert_eq!(reply.status, 200, "{}", text(&reply.body));
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        replies.iter().all(|a| a.status == 200 || a.status == 404),
        "{:?}",
        replies.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert_eq!(
        server
            .send("GET", "/v2/models/digits-cnn/ready", &[], &[])
            .status,
        404
    );
    let index = server
        .post_json("/v2/repository/index", &json!({ "ready": true }))
        .json();
    assert_eq!(index, json!([]));
}

#[test]
fn model_control_is_off_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    digits_repository(dir.path(), "1", "[255.0]");
    let repo_dir = dir.path().display().to_string();
    let server = Server::start(&["--model-repository", &repo_dir]);
    let reply = server.send("POST", "/v2/repository/models/digits-cnn/load", &[], b"");
    assert_eq!(reply.status, 403);
    assert!(
        reply.error().contains("--model-control explicit"),
        "{}",
        reply.error()
    );
    let out = super::singlepoint(
        &["serve", "--port", "0", "--model-control", "explicit"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--model-repository"),
        "{}",
        text(&out.stderr)
    );
}

/// Polls `path` until `done` says so or 30 s pass; returns the last reply.
fn wait_for(server: &Server, path: &str, done: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let t0 = std::time::Instant::now();
    loop {
        let (status, body) = server.get_json(path);
        if done(status, &body) || t0.elapsed() > Duration::from_secs(30) {
            return (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `--model-control poll`: the server follows its repository. A folder that appears (here a
/// bare ONNX file, served as a tensor model) is loaded, a changed one is replaced by its new
/// version, a removed one is unloaded; the HTTP load API is refused, since the folders decide.
#[test]
fn a_polled_repository_is_followed_as_folders_appear_change_and_go() {
    let dir = tempfile::tempdir().unwrap();
    digits_repository(dir.path(), "1", "[255.0]");
    let repo_dir = dir.path().display().to_string();
    let server = Server::start(&[
        "--model-repository",
        &repo_dir,
        "--model-control",
        "poll",
        "--repository-poll-interval",
        "200ms",
        "--instances",
        "1",
    ]);
    let photo = std::fs::read(repo().join("photos/chelsea.png")).unwrap();
    let v1 = ask_digits(&server, &photo);
    assert_eq!((v1.status, v1.version.as_str()), (200, "1"));

    let added = dir.path().join("token-pool");
    std::fs::create_dir(&added).unwrap();
    std::fs::copy(
        repo().join("tests/models/token-pool/model.onnx"),
        added.join("model.onnx"),
    )
    .unwrap();
    let (status, meta) = wait_for(&server, "/v2/models/token-pool", |s, _| s == 200);
    assert_eq!(
        status,
        200,
        "the added folder was not loaded: {}",
        server.log()
    );
    assert_eq!(meta["task"], "tensor");
    assert_eq!(meta["inputs"][1]["name"], "attention_mask");

    digits_repository(dir.path(), "2", "[128.0]");
    let (_, meta) = wait_for(&server, "/v2/models/digits-cnn", |_, m| {
        m["versions"][0] == "2"
    });
    assert_eq!(meta["versions"][0], "2", "{}", server.log());
    let v2 = ask_digits(&server, &photo);
    assert_eq!((v2.status, v2.version.as_str()), (200, "2"));
    assert_ne!(
        v2.source, "cache",
        "version 2 answered from version 1's entry"
    );
    assert_ne!(v1.top, v2.top, "the new preprocessing changes the answer");

    std::fs::remove_dir_all(&added).unwrap();
    let (status, _) = wait_for(&server, "/v2/models/token-pool", |s, _| s == 404);
    assert_eq!(status, 404, "the removed folder is still served");

    let reply = server.send("POST", "/v2/repository/models/digits-cnn/load", &[], b"");
    assert_eq!(reply.status, 403);
    assert!(reply.error().contains("polled"), "{}", reply.error());
}

/// `POST /v1/models/{name}/detect` gives the boxes `singlepoint detect` prints, from the same
/// cache entries; the classify and detect endpoints refuse each other's models.
#[test]
fn the_detect_endpoint_returns_the_clis_boxes_and_endpoints_refuse_other_tasks() {
    let cache = tempfile::tempdir().unwrap();
    let image = "tests/data/detection/opencv_messi5.jpg";
    let cli =
        super::singlepoint_with_cache(&["detect", image, "--format", "json"], None, cache.path());
    assert!(cli.status.success(), "{}", text(&cli.stderr));
    let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
    let cache_dir = cache.path().display().to_string();
    let server = Server::start(&[
        "--model",
        "models/yolov3-tiny",
        "--model",
        "models/digits-cnn",
        "--cache-dir",
        &cache_dir,
    ]);
    let bytes = std::fs::read(repo().join(image)).unwrap();
    let reply = server.send("POST", "/v1/models/yolov3-tiny/detect", &[], &bytes);
    assert_eq!(reply.status, 200, "{}", reply.error());
    let served = &reply.json()["results"][0];
    assert_eq!(served["source"], "cache", "classify's entry was not shared");
    assert_eq!(served["detections"], cli["results"][0]["detections"]);
    let people = server.send(
        "POST",
        "/v1/models/yolov3-tiny/detect?classes=person&score=0.4",
        &[],
        &bytes,
    );
    assert_eq!(
        people.json()["results"][0]["detections"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    for (path, expected) in [
        (
            "/v1/models/yolov3-tiny/classify",
            "is a `object-detection` model",
        ),
        (
            "/v1/models/digits-cnn/detect",
            "is a `image-classification` model",
        ),
        ("/v1/models/yolov3-tiny/detect?score=3", "score 3"),
        ("/v1/models/yolov3-tiny/detect?classes=unicorn", "`unicorn`"),
    ] {
        let reply = server.send("POST", path, &[], &bytes);
        assert_eq!(reply.status, 400, "{path}");
        assert!(
            reply.error().contains(expected),
            "{path}: {}",
            reply.error()
        );
    }
}

/// Inference-protocol infer on a detector takes encoded images as BYTES and answers the
/// `/detect` endpoint's detections in the EfficientNMS layout (`num_dets`, `det_boxes`,
/// `det_scores`, `det_classes`), with the request's parameters as options.
#[test]
fn oip_infer_on_a_detector_answers_the_detect_endpoints_boxes() {
    let server = Server::start(&["--model", "models/yolov3-tiny", "--cache-disk", "0"]);
    let files = [
        "tests/data/detection/opencv_messi5.jpg",
        "tests/data/detection/vtest_f251.png",
    ];
    let mut expected = Vec::new();
    let mut images = Vec::new();
    for f in files {
        let bytes = std::fs::read(repo().join(f)).unwrap();
        let reply = server.send("POST", "/v1/models/yolov3-tiny/detect", &[], &bytes);
        assert_eq!(reply.status, 200, "{}", reply.error());
        expected.push(reply.json()["results"][0]["detections"].clone());
        images.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        images.extend_from_slice(&bytes);
    }
    let infer = |parameters: Value| {
        let header = json!({
            "parameters": parameters,
            "inputs": [{ "name": "images", "shape": [2], "datatype": "BYTES",
                         "parameters": { "binary_data_size": images.len() } }],
        })
        .to_string();
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&images);
        server.send(
            "POST",
            "/v2/models/yolov3-tiny/infer",
            &[("Inference-Header-Content-Length", &header.len().to_string())],
            &body,
        )
    };
    let reply = infer(json!({}));
    assert_eq!(reply.status, 200, "{}", text(&reply.body));
    let doc = reply.json();
    let out = |name: &str| {
        doc["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("no output {name}: {doc}"))
            .clone()
    };
    let counts: Vec<u64> = out("num_dets")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let k = expected
        .iter()
        .map(|e| e.as_array().unwrap().len())
        .max()
        .unwrap();
    assert_eq!(out("det_boxes")["shape"], json!([2, k, 4]));
    assert_eq!(out("det_classes")["datatype"], "INT32");
    let boxes = out("det_boxes")["data"].as_array().unwrap().clone();
    let scores = out("det_scores")["data"].as_array().unwrap().clone();
    let classes = out("det_classes")["data"].as_array().unwrap().clone();
    for (i, e) in expected.iter().enumerate() {
        let e = e.as_array().unwrap();
        assert_eq!(counts[i] as usize, e.len(), "{}", files[i]);
        for (j, d) in e.iter().enumerate() {
            let at = i * k + j;
            assert_eq!(classes[at], d["class"], "{} #{j}", files[i]);
            assert!((scores[at].as_f64().unwrap() - d["score"].as_f64().unwrap()).abs() < 1e-4);
            for c in 0..4 {
                let v = boxes[at * 4 + c].as_f64().unwrap();
                assert!(
                    (v - d["box"][c].as_f64().unwrap()).abs() < 0.01,
                    "{v} vs {d}"
                );
            }
        }
        // Padding past an image's count is zeros.
        if e.len() < k {
            assert_eq!(scores[i * k + e.len()], 0.0);
        }
    }
    let people = infer(json!({ "classes": "person", "score": 0.4 }));
    assert_eq!(people.status, 200, "{}", text(&people.body));
    let n = people.json()["outputs"][0]["data"][0].as_u64().unwrap();
    assert_eq!(n, 1);
    for (parameters, expected) in [
        (json!({ "score": 2 }), "score 2"),
        (json!({ "classes": "unicorn" }), "`unicorn`"),
        (json!({ "max_detections": 0.5 }), "max_detections"),
    ] {
        let reply = infer(parameters.clone());
        assert_eq!(reply.status, 400, "{parameters}");
        assert!(
            reply.error().contains(expected),
            "{parameters}: {}",
            reply.error()
        );
    }
}

/// A stream's consecutive frames: with `?reuse=` a near-identical frame gets the last
/// computed answer marked `reused` with the frame it came from, a different scene runs the
/// model, and a stream can be forgotten.
#[test]
fn streams_reuse_answers_across_near_identical_frames() {
    let server = Server::start(&["--model", "models/yolov3-tiny", "--cache-disk", "0"]);
    let messi = std::fs::read(repo().join("tests/data/detection/opencv_messi5.jpg")).unwrap();
    let street = std::fs::read(repo().join("tests/data/detection/vtest_f251.png")).unwrap();
    let frame = |path: &str, bytes: &[u8]| {
        let reply = server.send("POST", path, &[], bytes);
        assert_eq!(reply.status, 200, "{path}: {}", reply.error());
        reply.json()["results"][0].clone()
    };
    let path = "/v1/streams/cam-1/detect?reuse=3";
    let first = frame(path, &messi);
    assert_eq!(
        (first["frame"].as_u64(), first["source"].as_str()),
        (Some(0), Some("computed"))
    );
    let second = frame(path, &messi);
    assert_eq!(second["source"], "reused", "{second}");
    assert_eq!(second["reused_from"]["frame"], 0);
    assert_eq!(second["reused_from"]["age_frames"], 1);
    assert_eq!(second["detections"], first["detections"]);
    // Another scene is a cut: the model runs.
    let third = frame(path, &street);
    assert_eq!(
        (third["frame"].as_u64(), third["source"].as_str()),
        (Some(2), Some("computed"))
    );
    // Without reuse (a new setting resets the stream) every frame is answered afresh.
    let plain = frame("/v1/streams/cam-1/detect", &street);
    assert_eq!(
        (plain["frame"].as_u64(), plain["source"].as_str()),
        (Some(0), Some("cache"))
    );
    // Streams are separate.
    let other = frame("/v1/streams/cam-2/detect?reuse=3", &messi);
    assert_eq!(
        (other["frame"].as_u64(), other["source"].as_str()),
        (Some(0), Some("cache"))
    );
    let bad = server.send("POST", "/v1/streams/cam-1/detect?reuse=-4", &[], &messi);
    assert_eq!(bad.status, 400);
    assert!(bad.error().contains("reuse -4"), "{}", bad.error());
    let garbage = server.send(
        "POST",
        "/v1/streams/cam-1/detect?reuse=3",
        &[],
        b"not an image",
    );
    assert_eq!(garbage.status, 400, "{}", garbage.error());
    assert_eq!(
        server.send("DELETE", "/v1/streams/cam-1", &[], &[]).status,
        200
    );
    assert_eq!(
        server.send("DELETE", "/v1/streams/cam-1", &[], &[]).status,
        404
    );
}
