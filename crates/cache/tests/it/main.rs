//! The result cache's contract: tiers, persistence, corruption, faults, admission, coalescing
//! and crash safety under SIGKILL.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use singlepoint_cache::coalesce::Role;
use singlepoint_cache::{CacheConfig, CacheKey, Coalescer, ResultCache};
use singlepoint_core::ModelDigest;

const MODEL: ModelDigest = ModelDigest([9; 32]);

fn key(i: u64) -> CacheKey {
    CacheKey::new(&MODEL, b"opts", &i.to_le_bytes())
}

/// The value stored for item `i`: its content can be checked after a crash.
fn value(i: u64) -> Arc<[u8]> {
    format!("answer for input {i} ")
        .repeat(1 + (i % 5) as usize)
        .into_bytes()
        .into()
}

fn config(dir: &Path, memory: u64, disk: u64) -> CacheConfig {
    CacheConfig {
        memory_bytes: memory,
        disk: Some((dir.to_path_buf(), disk)),
        ttl: None,
        disk_page_cache_bytes: singlepoint_cache::DISK_PAGE_CACHE_BYTES,
    }
}

#[test]
fn lookups_go_memory_then_disk_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cache = ResultCache::open(&config(dir.path(), 1 << 20, 1 << 20));
        assert!(cache.get(&key(1)).is_none());
        cache.insert_many(&MODEL, &[(key(1), value(1)), (key(2), value(2))]);
        assert_eq!(cache.get(&key(1)).as_deref(), Some(&value(1)[..]));
        let s = cache.stats();
        assert_eq!((s.memory_hits, s.disk_hits, s.misses), (1, 0, 1));
        assert!(cache.take_warnings().is_empty());
    }
    let cache = ResultCache::open(&config(dir.path(), 1 << 20, 1 << 20));
    assert_eq!(cache.get(&key(2)).as_deref(), Some(&value(2)[..]));
    assert_eq!(
        cache.get(&key(2)).as_deref(),
        Some(&value(2)[..]),
        "promoted"
    );
    let s = cache.stats();
    assert_eq!((s.memory_hits, s.disk_hits, s.misses), (1, 1, 0));
    assert_eq!(cache.disk_totals().unwrap().unwrap().entries, 2);
}

#[test]
fn a_corrupted_disk_entry_is_detected_counted_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 0, 1 << 20);
    let cache = ResultCache::open(&cfg);
    cache.insert_many(
        &MODEL,
        &[(key(1), value(1)), (key(2), value(2)), (key(3), value(3))],
    );
    // A flipped bit in one record, a truncated other.
    let good = singlepoint_cache::record::encode(&key(1), &MODEL, 0, &value(1));
    let mut flipped = good.clone();
    flipped[50] ^= 0x04;
    cache.disk_overwrite_raw(&key(1), &flipped).unwrap();
    let truncated = singlepoint_cache::record::encode(&key(2), &MODEL, 0, &value(2));
    cache
        .disk_overwrite_raw(&key(2), &truncated[..truncated.len() - 7])
        .unwrap();

    assert!(cache.get(&key(1)).is_none());
    assert_eq!(cache.stats().corrupt, 1);
    let report = cache.verify(None).unwrap().unwrap();
    assert_eq!((report.checked, report.corrupt_removed), (2, 1));
    assert!(cache.get(&key(2)).is_none());
    assert_eq!(cache.get(&key(3)).as_deref(), Some(&value(3)[..]));
    assert_eq!(cache.disk_totals().unwrap().unwrap().entries, 1);
}

#[test]
fn an_unusable_cache_folder_warns_once_and_memory_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, b"x").unwrap();
    let cache = ResultCache::open(&config(&file, 1 << 20, 1 << 20));
    let warnings = cache.take_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("not-a-folder") && warnings[0].contains("memory only"));
    cache.insert(&MODEL, key(1), value(1));
    assert_eq!(cache.get(&key(1)).as_deref(), Some(&value(1)[..]));
    assert!(cache.take_warnings().is_empty());
}

#[test]
fn the_disk_tier_is_bounded_in_bytes_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ResultCache::open(&config(dir.path(), 0, 4_000));
    for i in 0..200 {
        cache.insert(&MODEL, key(i), value(i));
    }
    let totals = cache.disk_totals().unwrap().unwrap();
    assert!(totals.bytes <= 4_000, "{totals:?}");
    assert!(totals.entries > 5, "{totals:?}");
    assert!(cache.stats().disk_evictions > 0);
    assert!(cache.get(&key(0)).is_none(), "the oldest went first");
    assert!(cache.get(&key(199)).is_some(), "the newest stays");
}

#[test]
fn clear_removes_one_models_entries_or_all() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ResultCache::open(&config(dir.path(), 1 << 20, 1 << 20));
    let other = ModelDigest([1; 32]);
    cache.insert(&MODEL, key(1), value(1));
    cache.insert(&other, CacheKey::new(&other, b"", b"x"), value(2));
    cache.clear(Some(&other)).unwrap().unwrap();
    assert_eq!(cache.disk_totals().unwrap().unwrap().entries, 1);
    assert!(cache.get(&key(1)).is_some());
    cache.clear(None).unwrap().unwrap();
    assert!(cache.get(&key(1)).is_none());
}

#[test]
fn a_stream_of_unique_inputs_does_not_evict_the_hot_set() {
    // Room for about 100 entries of ~150 bytes.
    let cache = ResultCache::open(&CacheConfig {
        memory_bytes: 15_000,
        disk: None,
        ttl: None,
        disk_page_cache_bytes: singlepoint_cache::DISK_PAGE_CACHE_BYTES,
    });
    // Each of 40 hot keys is asked for once per 200 unique inputs: more uniques between two
    // requests than the cache holds, so plain LRU would have evicted it every time.
    let (mut hot_requests, mut hot_hits) = (0, 0);
    let mut unique = 1_000_000u64;
    for round in 0..60 {
        for h in 0..40u64 {
            for _ in 0..5 {
                unique += 1;
                if cache.get(&key(unique)).is_none() {
                    cache.insert(&MODEL, key(unique), value(unique));
                }
            }
            let hit = cache.get(&key(h)).is_some();
            if !hit {
                cache.insert(&MODEL, key(h), value(h));
            }
            if round >= 30 {
                hot_requests += 1;
                hot_hits += usize::from(hit);
            }
        }
    }
    let rate = hot_hits as f64 / hot_requests as f64;
    assert!(
        rate >= 0.8,
        "hot-set hit rate {rate:.2}: unique inputs evicted it"
    );
}

#[test]
fn thirty_two_concurrent_callers_run_the_computation_once() {
    type Answer = Result<Arc<[u8]>, String>;
    let coalescer: Arc<Coalescer<CacheKey, Answer>> = Arc::new(Coalescer::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(32));
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let (coalescer, runs, barrier) = (coalescer.clone(), runs.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                coalescer.run(key(7), || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(200));
                    Ok(value(7))
                })
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(results
        .iter()
        .all(|(v, _)| v.as_deref() == Ok(&value(7)[..])));
    assert_eq!(
        results.iter().filter(|(_, r)| *r == Role::Leader).count(),
        1
    );
    assert_eq!(coalescer.in_flight(), 0);

    // Errors are shared the same way, and not remembered afterwards.
    let (err, _) = coalescer.run(key(8), || {
        Err::<Arc<[u8]>, _>("decoder said no".to_string())
    });
    assert_eq!(err, Err("decoder said no".into()));
    let (again, role) = coalescer.run(key(8), || Ok(value(8)));
    assert_eq!((again.is_ok(), role), (true, Role::Leader));
}

#[test]
fn a_panicking_leader_releases_its_followers() {
    let coalescer: Arc<Coalescer<u32, u32>> = Arc::new(Coalescer::new());
    let started = Arc::new(Barrier::new(2));
    let leader = {
        let (c, started) = (coalescer.clone(), started.clone());
        std::thread::spawn(move || {
            c.run(1, || {
                started.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!("model crashed")
            })
        })
    };
    started.wait();
    let (v, role) = coalescer.run(1, || 42);
    assert!(leader.join().is_err());
    assert_eq!((v, role), (42, Role::Leader));
}

/// Not a test: the child process of `sigkill_during_writes_leaves_only_intact_entries`, which
/// runs it with `--ignored`. Writes batches to the disk cache in `SP_CACHE_WRITER_DIR` until
/// killed.
#[test]
#[ignore = "helper process for the SIGKILL test"]
fn cache_writer_child() {
    let Ok(dir) = std::env::var("SP_CACHE_WRITER_DIR") else {
        return;
    };
    let cache = ResultCache::open(&config(Path::new(&dir), 0, 1 << 30));
    std::fs::write(Path::new(&dir).join("started"), b"").unwrap();
    for batch in 0u64.. {
        let items: Vec<_> = (0..16)
            .map(|j| batch * 16 + j)
            .map(|i| (key(i), value(i)))
            .collect();
        cache.insert_many(&MODEL, &items);
    }
}

#[test]
fn sigkill_during_writes_leaves_only_intact_entries() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "cache_writer_child",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("SP_CACHE_WRITER_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = dir.path().join("started");
        for _ in 0..500 {
            if started.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(150 + 70 * round));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        std::fs::remove_file(&started).unwrap();

        let cache = ResultCache::open(&config(dir.path(), 0, 1 << 30));
        assert!(
            cache.take_warnings().is_empty(),
            "round {round}: the database must reopen"
        );
        let report = cache.verify(None).unwrap().unwrap();
        assert_eq!(report.corrupt_removed, 0, "round {round}: {report:?}");
        assert!(
            report.checked > 0,
            "round {round}: nothing was committed before the kill"
        );
        // Every entry present holds exactly what was written for its key.
        for i in 0..report.checked + 64 {
            if let Some(v) = cache.get(&key(i)) {
                assert_eq!(&v[..], &value(i)[..], "round {round}: entry {i}");
            }
        }
    }
}

#[test]
fn entries_past_their_ttl_are_misses_in_both_tiers() {
    let dir = tempfile::tempdir().unwrap();
    for (memory, disk) in [(1 << 20, 0), (0, 1 << 20)] {
        let cache = ResultCache::open(&CacheConfig {
            memory_bytes: memory,
            disk: (disk > 0).then(|| (dir.path().to_path_buf(), disk)),
            ttl: Some(Duration::from_secs(1)),
            disk_page_cache_bytes: singlepoint_cache::DISK_PAGE_CACHE_BYTES,
        });
        cache.insert(&MODEL, key(1), value(1));
        assert!(cache.get(&key(1)).is_some());
        std::thread::sleep(Duration::from_millis(2_100));
        assert!(cache.get(&key(1)).is_none(), "memory {memory}, disk {disk}");
    }
}
