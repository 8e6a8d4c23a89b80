//! `tensor` models on the single point: items of different lengths share a batch (padded to
//! the longest, outputs cut back to each item's own length) and each answer equals the item
//! run alone; every element type passes through both engines; an item the engine refuses
//! fails alone; tensor inputs key the cache by type, shape and values.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use singlepoint_backend::{BackendKind, EngineOptions};
use singlepoint_cache::{CacheConfig, ResultCache};
use singlepoint_core::{f16, AnyTensor, Buffer};
use singlepoint_model::init::{describe, Options};
use singlepoint_model::{DecodeLimits, Model};
use singlepoint_runtime::task::{self, Outputs};
use singlepoint_runtime::{
    load_engine, BackendChoice, BatchConfig, ItemError, ItemInput, LengthGrouping, ModelService,
    Source,
};

use super::repo;

/// A tensor model folder for `tests/models/NAME`, its manifest written by `init` with `pads`.
fn tensor_model(dir: &Path, name: &str, pads: &[(&str, f64)]) -> Arc<Model> {
    let onnx = repo().join("tests/models").join(name).join("model.onnx");
    let bytes = std::fs::read(&onnx).unwrap();
    std::fs::write(dir.join("model.onnx"), &bytes).unwrap();
    let mut options = Options::tensor(name, "model.onnx");
    options.pads = pads.iter().map(|(n, v)| (n.to_string(), *v)).collect();
    options.max_length = (!pads.is_empty()).then_some(64);
    let text = describe(&onnx, &bytes, &options).unwrap();
    std::fs::write(dir.join("model.json"), text).unwrap();
    Arc::new(Model::load(dir).unwrap())
}

/// The token model with its two inputs padded with 0: length-grouped.
fn padded_token_model(dir: &Path) -> Arc<Model> {
    tensor_model(
        dir,
        "token-pool",
        &[("input_ids", 0.0), ("attention_mask", 0.0)],
    )
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
            max_queue_delay: Duration::from_millis(200),
            preferred_batch_sizes: Vec::new(),
            decode_workers: 0,
            max_queue: 64,
            limits: DecodeLimits::default(),
            latency_target: None,
            record_batches: true,
            length_grouping: None,
        },
    )
    .unwrap()
}

fn ids(values: &[i64]) -> AnyTensor {
    AnyTensor::new(vec![values.len()], Buffer::I64(values.to_vec())).unwrap()
}

/// One token-pool item: `ids`, with a mask of ones.
fn tokens(values: &[i64]) -> ItemInput {
    ItemInput::Tensors(vec![ids(values), ids(&vec![1; values.len()])])
}

fn answers(
    service: &ModelService,
    items: Vec<ItemInput>,
) -> Vec<Result<(Outputs, Source), ItemError>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let tickets: Vec<_> = items
        .into_iter()
        .map(|i| service.submit(i, deadline))
        .collect();
    tickets.into_iter().map(|t| t.wait_blocking()).collect()
}

fn close(a: &AnyTensor, b: &AnyTensor) -> bool {
    match (a.data(), b.data()) {
        (Buffer::F32(x), Buffer::F32(y)) => {
            a.shape() == b.shape() && x.iter().zip(y).all(|(p, q)| (p - q).abs() <= 1e-5)
        }
        _ => a == b,
    }
}

#[test]
fn items_of_different_lengths_batch_together_and_each_equals_its_run_alone() {
    for kind in [BackendKind::Ort, BackendKind::Tract] {
        let dir = tempfile::tempdir().unwrap();
        let model = tensor_model(
            dir.path(),
            "token-pool",
            &[("input_ids", 0.0), ("attention_mask", 0.0)],
        );
        let items: Vec<Vec<i64>> = (1..=12)
            .map(|n| (0..n).map(|i| (i * 7 + n) % 32).collect())
            .collect();
        let batched = service(&model, kind, 8, None);
        let together = answers(&batched, items.iter().map(|v| tokens(v)).collect());
        let sizes: Vec<usize> = batched.batches().iter().map(|(_, n)| *n).collect();
        assert!(
            sizes.iter().any(|&n| n > 1),
            "{kind}: no batch held more than one item: {sizes:?}"
        );
        batched.shutdown();
        let alone = service(&model, kind, 1, None);
        for (item, got) in items.iter().zip(together) {
            let (got, _) = got.unwrap_or_else(|e| panic!("{kind}: {e}"));
            let want = answers(&alone, vec![tokens(item)]).remove(0).unwrap().0;
            assert_eq!(got.len(), 3);
            // token_scores is cut back to the item's own length.
            assert_eq!(got[1].shape(), &[item.len()], "{kind}");
            assert_eq!(
                got[2].data(),
                &Buffer::I64(vec![item.len() as i64]),
                "{kind}"
            );
            for (g, w) in got.iter().zip(want.iter()) {
                assert!(close(g, w), "{kind}: length {}: {g:?} != {w:?}", item.len());
            }
        }
        alone.shutdown();
    }
}

#[test]
fn length_grouped_instances_cut_runs_from_one_pool_without_padding_across_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let model = padded_token_model(dir.path());
    let engine = load_engine(
        &model,
        BackendChoice::Only(BackendKind::Ort),
        EngineOptions::default(),
        true,
    )
    .unwrap()
    .engine;
    let s = ModelService::start(
        model.clone(),
        task::for_model(model.clone(), DecodeLimits::default()),
        engine,
        None,
        BatchConfig {
            instances: 2,
            max_batch_size: 8,
            max_queue_delay: Duration::from_millis(5),
            preferred_batch_sizes: Vec::new(),
            decode_workers: 0,
            max_queue: 64,
            limits: DecodeLimits::default(),
            latency_target: None,
            record_batches: true,
            length_grouping: Some(LengthGrouping {
                window: 64,
                max_tokens: 4096,
                run_overhead: 1,
            }),
        },
    )
    .unwrap();
    // Short and long items interleaved, all at once: however the two instances take them,
    // a run never pads a short item to a long one's length.
    let items: Vec<Vec<i64>> = (0..16)
        .map(|i| vec![(i % 30) as i64 + 1; if i % 2 == 0 { 2 } else { 50 }])
        .collect();
    for (item, got) in items
        .iter()
        .zip(answers(&s, items.iter().map(|v| tokens(v)).collect()))
    {
        let (got, _) = got.unwrap();
        assert_eq!(got[1].shape(), &[item.len()]);
    }
    let m = s.metrics();
    let used = m.padded_used.load(std::sync::atomic::Ordering::Relaxed);
    let slots = m.padded_slots.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(used, 8 * 2 + 8 * 50);
    assert_eq!(slots, used, "runs {:?}", s.batches());
    // Every item is answered before the instances stop: shutting down does not hang on the
    // pool.
    s.shutdown();
}

#[test]
fn without_a_pad_value_only_items_of_one_shape_share_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = tensor_model(dir.path(), "token-pool", &[]);
    let s = service(&model, BackendKind::Ort, 8, None);
    let lengths = [3, 5, 3, 5, 3];
    let items = lengths.iter().map(|&n| tokens(&vec![1; n])).collect();
    for a in answers(&s, items) {
        a.unwrap();
    }
    let mut sizes: Vec<usize> = s.batches().iter().map(|(_, n)| *n).collect();
    sizes.sort();
    // One taken batch of 5, run as two engine runs: 3 items of length 3, 2 of length 5.
    let runs = s
        .metrics()
        .executions
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(runs, 2, "batches {sizes:?}");
    s.shutdown();
}

#[test]
fn every_element_type_passes_through_both_engines() {
    for kind in [BackendKind::Ort, BackendKind::Tract] {
        let dir = tempfile::tempdir().unwrap();
        let model = tensor_model(dir.path(), "dtypes", &[]);
        let s = service(&model, kind, 4, None);
        let t = |shape: usize, data: Buffer| AnyTensor::new(vec![shape], data).unwrap();
        let item = vec![
            t(
                3,
                Buffer::F16(vec![
                    f16::from_f32(1.5),
                    f16::from_f32(-2.0),
                    f16::from_f32(0.25),
                ]),
            ),
            t(2, Buffer::I32(vec![7, -100_000])),
            t(2, Buffer::I8(vec![-128 + 1, 5])),
            // 255 + 1 wraps in ONNX Runtime but panics in a debug build of tract.
            t(4, Buffer::U8(vec![0, 1, 253, 254])),
            t(3, Buffer::Bool(vec![true, false, true])),
        ];
        let (out, _) = answers(&s, vec![ItemInput::Tensors(item)])
            .remove(0)
            .unwrap();
        let want = [
            t(
                3,
                Buffer::F16(vec![
                    f16::from_f32(3.0),
                    f16::from_f32(-4.0),
                    f16::from_f32(0.5),
                ]),
            ),
            t(2, Buffer::I32(vec![8, -99_999])),
            t(2, Buffer::I8(vec![127, -5])),
            t(4, Buffer::U8(vec![1, 2, 254, 255])),
            t(3, Buffer::Bool(vec![false, true, false])),
            t(1, Buffer::F32(vec![7.0 - 100_000.0 + 508.0])),
        ];
        assert_eq!(&*out, &want, "{kind}");
        s.shutdown();
    }
}

#[test]
fn an_item_the_engine_refuses_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let model = padded_token_model(dir.path());
    let s = service(&model, BackendKind::Ort, 8, None);
    // Id 99 is outside the 32-entry embedding table: ONNX Runtime's Gather refuses it.
    let results = answers(&s, vec![tokens(&[1, 2]), tokens(&[3, 99, 4]), tokens(&[5])]);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    match &results[1] {
        Err(ItemError::Inference(reason)) => assert!(reason.contains("out of"), "{reason}"),
        other => panic!("expected the engine's refusal, got {other:?}"),
    }
    s.shutdown();
}

#[test]
fn tensor_inputs_key_the_cache_by_type_shape_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let model = padded_token_model(dir.path());
    let cache = Arc::new(ResultCache::open(&CacheConfig {
        memory_bytes: 1 << 20,
        disk: None,
        ttl: None,
        disk_page_cache_bytes: singlepoint_cache::DISK_PAGE_CACHE_BYTES,
    }));
    let s = service(&model, BackendKind::Ort, 8, Some(cache));
    let first = answers(&s, vec![tokens(&[1, 2, 3])]).remove(0).unwrap();
    let again = answers(&s, vec![tokens(&[1, 2, 3])]).remove(0).unwrap();
    assert_eq!((first.1, again.1), (Source::Computed, Source::Cache));
    assert_eq!(first.0, again.0);
    // The same ids with the last one masked out: another input, another answer.
    let masked = ItemInput::Tensors(vec![ids(&[1, 2, 3]), ids(&[1, 1, 0])]);
    let other = answers(&s, vec![masked]).remove(0).unwrap();
    assert_eq!(other.1, Source::Computed);
    assert_ne!(other.0, first.0);
    s.shutdown();
}
