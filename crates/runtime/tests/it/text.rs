//! Text models on the single point: the bundled all-MiniLM-L6-v2 reproduces the reference
//! embeddings (one padded batch of 20, the empty text and the one cut at 256 tokens included)
//! and the Lee document-similarity correlation; an over-long text is cut only when asked and
//! says so; the cache keys on the text and the truncation setting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use singlepoint_backend::{BackendKind, EngineOptions};
use singlepoint_cache::{CacheConfig, ResultCache};
use singlepoint_model::{DecodeLimits, Model};
use singlepoint_runtime::task::{self, embedding, token_counts, Outputs};
use singlepoint_runtime::{
    load_engine, BackendChoice, BatchConfig, ItemError, ItemInput, ModelService, Source,
};

use super::repo;

fn embedder() -> Arc<Model> {
    Arc::new(Model::load(&repo().join("models/all-minilm-l6-v2")).unwrap())
}

fn service(
    model: &Arc<Model>,
    kind: BackendKind,
    max_batch: usize,
    cache: Option<Arc<ResultCache>>,
) -> ModelService {
    let engine = load_engine(
        model,
        BackendChoice::Only(kind),
        EngineOptions::default(),
        true,
    )
    .unwrap_or_else(|e| panic!("{kind}: {e}"))
    .engine;
    ModelService::start(
        model.clone(),
        task::for_model(model.clone(), DecodeLimits::default()),
        engine,
        cache,
        BatchConfig {
            instances: 1,
            max_batch_size: max_batch,
            max_queue_delay: Duration::from_millis(300),
            preferred_batch_sizes: Vec::new(),
            decode_workers: 0,
            max_queue: 256,
            limits: DecodeLimits::default(),
            latency_target: None,
            record_batches: true,
            length_grouping: None,
        },
    )
    .unwrap()
}

fn text(s: &str, truncate: bool) -> ItemInput {
    ItemInput::Text {
        text: Arc::from(s),
        truncate,
    }
}

fn answers(
    service: &ModelService,
    items: Vec<ItemInput>,
) -> Vec<Result<(Outputs, Source), ItemError>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let tickets: Vec<_> = items
        .into_iter()
        .map(|i| service.submit(i, deadline))
        .collect();
    tickets.into_iter().map(|t| t.wait_blocking()).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn reference() -> Value {
    let text =
        std::fs::read_to_string(repo().join("tests/data/text/expected_embeddings.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn the_bundled_embedder_reproduces_the_reference_embeddings_in_one_padded_batch() {
    let reference = reference();
    let sentences = reference["sentences"].as_array().unwrap();
    let model = embedder();
    let encoder = model.text.clone().unwrap();
    let s = service(&model, BackendKind::Ort, sentences.len(), None);
    let items = sentences
        .iter()
        .map(|r| text(r["text"].as_str().unwrap(), true))
        .collect();
    let got = answers(&s, items);
    assert_eq!(
        s.batches().iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        vec![sentences.len()],
        "the 20 texts were not one batch"
    );
    for (r, answer) in sentences.iter().zip(got) {
        let name = r["text"].as_str().unwrap();
        let (outputs, _) = answer.unwrap_or_else(|e| panic!("{name:?}: {e}"));
        let want_ids: Vec<u32> = r["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            encoder.encode(name, true).unwrap().ids,
            want_ids,
            "{name:?}"
        );
        let (used, whole) = token_counts(&outputs);
        assert_eq!(used as u64, r["tokens_used"].as_u64().unwrap(), "{name:?}");
        assert_eq!(
            whole as u64,
            r["tokens_untruncated"].as_u64().unwrap(),
            "{name:?}"
        );
        let e = embedding(&outputs, true);
        assert_eq!(e.len(), 384);
        let c = cosine(&e, &floats(&r["embedding"]));
        assert!(c >= 0.999, "{name:?}: cosine {c} with the reference");
        let norm: f64 = e.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>();
        assert!((norm - 1.0).abs() < 1e-5, "{name:?}: |e|² = {norm}");
    }
    s.shutdown();
}

#[test]
fn tract_gives_the_reference_embeddings_too() {
    let reference = reference();
    let sentences = reference["sentences"].as_array().unwrap();
    let model = embedder();
    let s = service(&model, BackendKind::Tract, 4, None);
    let picked: Vec<&Value> = sentences.iter().take(4).collect();
    let got = answers(
        &s,
        picked
            .iter()
            .map(|r| text(r["text"].as_str().unwrap(), true))
            .collect(),
    );
    for (r, answer) in picked.iter().zip(got) {
        let (outputs, _) = answer.unwrap();
        let c = cosine(&embedding(&outputs, true), &floats(&r["embedding"]));
        assert!(c >= 0.999, "{}: cosine {c}", r["text"]);
    }
    s.shutdown();
}

/// Average ranks (ties share the mean of their positions), 1-based.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    ranks
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[test]
fn lee_document_similarity_matches_the_reference_correlation() {
    let reference = reference()["lee_document_similarity"]["spearman"]
        .as_f64()
        .unwrap();
    let docs = std::fs::read_to_string(repo().join("tests/data/text/lee_docs.txt")).unwrap();
    let docs: Vec<&str> = docs.lines().collect();
    assert_eq!(docs.len(), 50);
    let model = embedder();
    let s = service(&model, BackendKind::Ort, 8, None);
    let vectors: Vec<Vec<f32>> = answers(&s, docs.iter().map(|d| text(d, true)).collect())
        .into_iter()
        .map(|a| embedding(&a.unwrap().0, true))
        .collect();
    s.shutdown();
    let pairs = std::fs::read_to_string(repo().join("tests/data/text/lee_pairs.tsv")).unwrap();
    let (mut ours, mut human) = (Vec::new(), Vec::new());
    for line in pairs.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let (i, j): (usize, usize) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        ours.push(cosine(&vectors[i], &vectors[j]));
        human.push(f[2].parse::<f64>().unwrap());
    }
    assert_eq!(ours.len(), 1225);
    let rho = pearson(&ranks(&ours), &ranks(&human));
    assert!(
        (rho - reference).abs() <= 0.01,
        "Spearman {rho:.4}, reference {reference}"
    );
}

#[test]
fn an_over_long_text_is_cut_only_when_asked_and_the_cache_keys_on_that() {
    let model = embedder();
    let cache = Arc::new(ResultCache::open(&CacheConfig {
        memory_bytes: 8 << 20,
        disk: None,
        ttl: None,
        disk_page_cache_bytes: singlepoint_cache::DISK_PAGE_CACHE_BYTES,
    }));
    let s = service(&model, BackendKind::Ort, 4, Some(cache));
    let long = "word ".repeat(300);
    let got = answers(
        &s,
        vec![text(&long, false), text(&long, true), text("", false)],
    );
    match &got[0] {
        Err(ItemError::Input(e)) => assert!(
            e.contains("302 tokens, over the model's limit of 256"),
            "{e}"
        ),
        other => panic!("an over-long text without truncation: {other:?}"),
    }
    let (cut, source) = got[1].clone().unwrap();
    assert_eq!(source, Source::Computed);
    assert_eq!(token_counts(&cut), (256, 302));
    // The empty text is [CLS] [SEP]: a vector, not an error.
    assert_eq!(token_counts(&got[2].clone().unwrap().0), (2, 2));
    let runs = s
        .metrics()
        .executions
        .load(std::sync::atomic::Ordering::Relaxed);
    let again = answers(&s, vec![text(&long, true), text("", false), text("", true)]);
    assert_eq!(again[0].as_ref().unwrap().1, Source::Cache);
    assert_eq!(again[1].as_ref().unwrap().1, Source::Cache);
    assert_eq!(
        again[2].as_ref().unwrap().1,
        Source::Computed,
        "another truncation setting is another entry"
    );
    assert_eq!(
        s.metrics()
            .executions
            .load(std::sync::atomic::Ordering::Relaxed),
        runs + 1
    );
    s.shutdown();
}
