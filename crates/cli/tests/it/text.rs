//! `embed` and `classify --text` end to end: the bundled embedder's vectors match the
//! reference through every output format, bad lines fail alone and are named, a repeated
//! text is a cache hit with no engine run, and the trained sentiment model classifies lines.

use serde_json::Value;

use super::{repo, singlepoint, singlepoint_with_cache, text};

fn reference() -> Value {
    let text =
        std::fs::read_to_string(repo().join("tests/data/text/expected_embeddings.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn embed_reproduces_the_reference_vectors_in_jsonl_csv_and_npy() {
    let reference = reference();
    let sentences: Vec<&Value> = reference["sentences"].as_array().unwrap().iter().collect();
    // One text a line: the reference texts have no newlines.
    let input: String = sentences
        .iter()
        .map(|s| format!("{}\n", s["text"].as_str().unwrap()))
        .collect();
    assert_eq!(input.lines().count(), sentences.len());
    let out = singlepoint(&["embed", "--format", "jsonl"], Some(&input));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), sentences.len());
    for (i, (got, want)) in lines.iter().zip(&sentences).enumerate() {
        assert_eq!(got["index"], i);
        assert_eq!(got["line"], i + 1);
        let c = cosine(&floats(&got["embedding"]), &floats(&want["embedding"]));
        assert!(c >= 0.999, "{}: cosine {c}", want["text"]);
        assert_eq!(got["tokens"], want["tokens_used"]);
        let cut = want["tokens_untruncated"] != want["tokens_used"];
        assert_eq!(got["truncated"], cut, "{}", want["text"]);
    }
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("20 texts, 0 failed, 1 truncated"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("e.npy");
    let out = singlepoint(
        &["embed", "--format", "npy", "-o", npy.to_str().unwrap()],
        Some(&input),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bytes = std::fs::read(&npy).unwrap();
    let header = std::str::from_utf8(&bytes[10..128]).unwrap();
    assert!(header.contains("'shape': (20, 384)"), "{header}");
    assert_eq!(bytes.len(), 128 + 20 * 384 * 4);
    for (i, want) in sentences.iter().enumerate() {
        let row: Vec<f64> = bytes[128 + i * 384 * 4..128 + (i + 1) * 384 * 4]
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
            .collect();
        assert!(cosine(&row, &floats(&want["embedding"])) >= 0.999);
    }

    let out = singlepoint(&["embed", "--format", "csv"], Some(&input));
    let csv = text(&out.stdout);
    let mut rows = csv.lines();
    assert!(rows
        .next()
        .unwrap()
        .starts_with("index,path,line,tokens,truncated,source,error,d0,d1,"));
    assert_eq!(rows.count(), 20);
}

#[test]
fn bad_lines_fail_alone_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    let long = "word ".repeat(400);
    std::fs::write(
        &file,
        [
            b"fine\n".as_slice(),
            b"caf\xe9\n",
            long.as_bytes(),
            b"\nlast",
        ]
        .concat(),
    )
    .unwrap();
    let missing = dir.path().join("missing.txt");
    let out = singlepoint(
        &[
            "embed",
            "--no-truncate",
            file.to_str().unwrap(),
            missing.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let name = file.display().to_string();
    assert!(
        stderr.contains(&format!(
            "`{name}:2`: line 2 is not UTF-8 text (invalid byte at 3)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "`{name}:3`: the text is 402 tokens, over the model's limit of 256"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("missing.txt`: cannot open"), "{stderr}");
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[0]["embedding"].is_array());
    assert!(lines[1]["error"].is_string());
    assert!(lines[2]["error"].is_string());
    assert_eq!(lines[3]["line"], 4);
    assert!(
        lines[3]["embedding"].is_array(),
        "the line after the bad ones"
    );
    assert!(lines[4]["error"].is_string());
}

#[test]
fn a_repeated_text_is_a_cache_hit_and_another_truncation_setting_is_not() {
    let cache = tempfile::tempdir().unwrap();
    let input = format!("{}\nshort one\n", "word ".repeat(300));
    let first = singlepoint_with_cache(&["embed"], Some(&input), cache.path());
    assert!(first.status.success(), "{}", text(&first.stderr));
    let again = singlepoint_with_cache(&["embed"], Some(&input), cache.path());
    let stderr = text(&again.stderr);
    assert!(stderr.contains(": 0 engine runs, 2 cache hits"), "{stderr}");
    assert_eq!(
        text(&first.stdout).replace("\"computed\"", "\"cache\""),
        text(&again.stdout)
    );
    // The long text is refused without truncation (a miss); the short one also misses: its
    // key binds the setting.
    let refused = singlepoint_with_cache(&["embed", "--no-truncate"], Some(&input), cache.path());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("1 failed") && stderr.contains("0 cache hits"),
        "{stderr}"
    );
}

#[test]
fn classify_text_labels_lines_with_a_trained_text_classifier() {
    let held: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/models/sentiment-bow/held_out.json")).unwrap(),
    )
    .unwrap();
    let texts: Vec<&Value> = held["texts"].as_array().unwrap().iter().take(40).collect();
    let input: String = texts
        .iter()
        .map(|t| format!("{}\n", t["text"].as_str().unwrap()))
        .collect();
    let model = repo().join("tests/models/sentiment-bow");
    let out = singlepoint(
        &[
            "classify",
            "--text",
            "--model",
            model.to_str().unwrap(),
            "--format",
            "jsonl",
            "-",
        ],
        Some(&input),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), texts.len());
    for (got, want) in lines.iter().zip(&texts) {
        let top = got["top"].as_array().unwrap();
        let positive = top.iter().find(|c| c["label"] == "positive").unwrap()["probability"]
            .as_f64()
            .unwrap();
        let expected = want["positive"].as_f64().unwrap();
        assert!(
            (positive - expected).abs() < 1e-4,
            "{}: {positive} vs {expected}",
            want["text"]
        );
        let label = if expected > 0.5 {
            "positive"
        } else {
            "negative"
        };
        assert_eq!(got["label"], label);
    }
    let plain = singlepoint(
        &[
            "classify",
            "--text",
            "--model",
            model.to_str().unwrap(),
            "-",
        ],
        Some("I loved it, great value\nterrible, it broke after a day\n"),
    );
    assert_eq!(text(&plain.stdout), "Text 0: positive\nText 1: negative\n");
    // Without --text a text model is refused with the way to use it.
    let refused = singlepoint(
        &["classify", "--model", model.to_str().unwrap(), "x.txt"],
        None,
    );
    assert!(
        text(&refused.stderr).contains("add `--text`"),
        "{}",
        text(&refused.stderr)
    );
}

#[test]
fn served_text_models_answer_tei_oip_and_classify_and_name_bad_texts() {
    use super::serve::Server;
    let server = Server::start(&[
        "--no-cache",
        "--model",
        "models/all-minilm-l6-v2",
        "--model",
        "tests/models/sentiment-bow",
    ]);
    let reference = reference();
    let first = &reference["sentences"][0];
    let json = [("content-type", "application/json")];

    // TEI /embed: an array of vectors; the empty text is embedded; a bad item is named.
    let r = server.send(
        "POST",
        "/embed",
        &json,
        br#"{"inputs": ["A man is playing a guitar.", ""]}"#,
    );
    assert_eq!(r.status, 200, "{}", text(&r.body));
    let vectors = r.json();
    assert_eq!(vectors.as_array().unwrap().len(), 2);
    assert!(cosine(&floats(&vectors[0]), &floats(&first["embedding"])) >= 0.999);
    let long = format!(r#"{{"inputs": ["ok", "{}"]}}"#, "word ".repeat(300));
    let r = server.send("POST", "/embed", &json, long.as_bytes());
    assert_eq!(r.status, 422, "{}", text(&r.body));
    let e = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        e.contains("`inputs[1]`: the text is 302 tokens, over the model's limit of 256"),
        "{e}"
    );
    for (body, want) in [
        (
            r#"{"inputs": "x", "pooling": "cls"}"#,
            "`pooling` is not supported",
        ),
        (
            r#"{"inputs": 5}"#,
            "must be a string or an array of strings",
        ),
        (
            r#"{"inputs": ["a", null]}"#,
            "`inputs[1]` must be a string, not null",
        ),
    ] {
        let r = server.send("POST", "/embed", &json, body.as_bytes());
        assert_eq!(r.status, 422, "{body}");
        assert!(text(&r.body).contains(want), "{body}: {}", text(&r.body));
    }
    let r = server.send("POST", "/embed", &json, &[b'{', 0xff, b'}']);
    assert_eq!(r.status, 422, "{}", text(&r.body));

    // OIP infer with BYTES texts: embedding and tokens, the same vectors.
    let model = r#"model="all-minilm-l6-v2""#;
    let used0 = server.metric("singlepoint_padded_tokens_total", model);
    let slots0 = server.metric("singlepoint_padded_slots_total", model);
    let cpu0 = server.metric("singlepoint_inference_cpu_seconds_total", model);
    let infer = serde_json::json!({
        "inputs": [{ "name": "text", "datatype": "BYTES", "shape": [2],
                     "data": ["A man is playing a guitar.", "hello"] }],
        "parameters": { "normalize": true },
    });
    let r = server.send(
        "POST",
        "/v2/models/all-minilm-l6-v2/infer",
        &json,
        infer.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", text(&r.body));
    let out = r.json();
    let embedding = out["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "embedding")
        .unwrap();
    assert_eq!(embedding["shape"], serde_json::json!([2, 384]));
    let row: Vec<f64> = floats(&embedding["data"])[..384].to_vec();
    assert!(cosine(&row, &floats(&first["embedding"])) >= 0.999);
    let tokens = out["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "tokens")
        .unwrap();
    assert_eq!(tokens["data"], serde_json::json!([9, 9, 3, 3]));
    // /metrics counts the tokens run and the positions padding added: 9 + 3 tokens, in one
    // run of 2 x 9 positions or in two of 9 and 3.
    let used = server.metric("singlepoint_padded_tokens_total", model) - used0;
    let slots = server.metric("singlepoint_padded_slots_total", model) - slots0;
    assert_eq!(used, 12.0);
    assert!(slots == 12.0 || slots == 18.0, "{slots}");
    assert!(server.metric("singlepoint_inference_cpu_seconds_total", model) > cpu0);
    let meta = server
        .send("GET", "/v2/models/all-minilm-l6-v2", &[], b"")
        .json();
    assert_eq!(meta["inputs"][0]["name"], "text");
    assert_eq!(meta["inputs"][0]["datatype"], "BYTES");
    let bad = serde_json::json!({
        "inputs": [{ "name": "text", "datatype": "BYTES", "shape": [2], "data": ["fine", 7] }],
    });
    let r = server.send(
        "POST",
        "/v2/models/all-minilm-l6-v2/infer",
        &json,
        bad.to_string().as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert!(
        text(&r.body).contains("element 1: must be a string"),
        "{}",
        text(&r.body)
    );

    // The classify endpoint of a text classifier: a plain-text body, or JSON with several.
    let r = server.send(
        "POST",
        "/v1/models/sentiment-bow/classify",
        &[("content-type", "text/plain")],
        b"I loved it, great value",
    );
    assert_eq!(r.status, 200, "{}", text(&r.body));
    assert_eq!(r.json()["results"][0]["label"], "positive");
    let r = server.send(
        "POST",
        "/v1/models/sentiment-bow/classify",
        &json,
        br#"{"inputs": ["terrible, it broke after a day", "great"], "top_k": 1}"#,
    );
    let results = r.json()["results"].clone();
    assert_eq!(results[0]["label"], "negative");
    assert_eq!(results[0]["top_k"].as_array().unwrap().len(), 1);
    let r = server.send(
        "POST",
        "/v1/models/sentiment-bow/classify",
        &[("content-type", "text/plain")],
        b"caf\xe9",
    );
    assert_eq!(r.status, 400);
    assert!(
        text(&r.body).contains("not UTF-8 text"),
        "{}",
        text(&r.body)
    );
    // An image model's endpoint refuses texts, naming where they go.
    let r = server.send(
        "POST",
        "/embed?model=sentiment-bow",
        &json,
        br#"{"inputs": "x"}"#,
    );
    assert!(
        r.status >= 400 && text(&r.body).contains("text-classification"),
        "{}",
        text(&r.body)
    );
}
