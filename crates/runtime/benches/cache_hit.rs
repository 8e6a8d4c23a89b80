//! In-process latency of a result-cache hit on the classify path: content key over the file's
//! bytes, memory-tier lookup, and decoding the stored answer — everything a hit costs after the
//! file is read. Also the key alone and the lookup alone, to show where the time goes.
//!
//! `cargo bench -p singlepoint-runtime --bench cache_hit`

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use singlepoint_cache::{CacheConfig, CacheKey, ResultCache};
use singlepoint_model::{ClassScore, Classification, Model};

fn bench(c: &mut Criterion) {
    let model = Model::bundled();
    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../photos/china.jpg");
    let bytes = std::fs::read(photo).expect("photo");
    let options = b"classification-json-v1;top_k=5;labels=grouped";
    let answer = Classification {
        display_label: "palace".into(),
        top: (0..5)
            .map(|i| ClassScore {
                class_idx: 698 + i,
                label: format!("class {i}"),
                probability: 0.1,
            })
            .collect(),
    };
    let cache = ResultCache::open(&CacheConfig {
        memory_bytes: 64 << 20,
        disk: None,
        ttl: None,
        disk_page_cache_bytes: singlepoint_cache::DISK_PAGE_CACHE_BYTES,
    });
    let key = CacheKey::new(&model.digest, options, &bytes);
    cache.insert(
        &model.digest,
        key,
        Arc::from(serde_json::to_vec(&answer).unwrap()),
    );

    let mut group = c.benchmark_group(format!("cache hit ({} KiB JPEG)", bytes.len() >> 10));
    group.bench_function("key + lookup + decode", |b| {
        b.iter(|| {
            let key = CacheKey::new(&model.digest, options, &bytes);
            let value = cache.get(&key).expect("hit");
            serde_json::from_slice::<Classification>(&value).expect("answer")
        })
    });
    group.bench_function("key only", |b| {
        b.iter(|| CacheKey::new(&model.digest, options, &bytes))
    });
    group.bench_function("lookup only", |b| b.iter(|| cache.get(&key).expect("hit")));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
