//! The pipeline end to end, in process: the bundled model reproduces the reference top-5 on the
//! demo photos through both engines; bad inputs fail alone with a reason; results come back in
//! input order; stopping early does not hang.

mod detect;
mod tensor;
mod text;

use std::io::Cursor;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use singlepoint_backend::{BackendKind, EngineOptions};
use singlepoint_cache::{CacheConfig, ResultCache};
use singlepoint_model::{DecodeError, DecodeLimits, Model};
use singlepoint_runtime::{
    load_engine, AnswerSource, BackendChoice, Classifier, Inputs, ItemError, ItemResult,
    PipelineConfig, RunStats,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn classifier(kind: BackendKind, config: PipelineConfig) -> Classifier {
    let model = Arc::new(Model::load(&repo().join("models/efficientnet-lite0")).unwrap());
    let loaded = load_engine(
        &model,
        BackendChoice::Only(kind),
        EngineOptions::default(),
        true,
    )
    .unwrap_or_else(|e| panic!("{kind}: {e}"));
    Classifier::new(model, loaded.engine, config).unwrap()
}

fn run(classifier: &Classifier, args: Vec<String>) -> Vec<ItemResult> {
    let mut results = Vec::new();
    classifier
        .run(Inputs::new(args, None), |r| {
            results.push(r);
            ControlFlow::Continue(())
        })
        .unwrap();
    results
}

/// One line of `tests/data/efficientnet-lite0-expected-top5.txt`:
/// `chelsea.png (451, 300) tiger cat (282) 0.383 | Egyptian cat (285) 0.370 | ...`
fn parse_reference(line: &str) -> (String, Vec<(usize, f32)>) {
    let (file, rest) = line.split_once(' ').unwrap();
    let rest = &rest[rest.find(')').unwrap() + 2..];
    let top = rest
        .split(" | ")
        .map(|entry| {
            let (label, prob) = entry.rsplit_once(' ').unwrap();
            let idx = &label[label.rfind('(').unwrap() + 1..label.len() - 1];
            (idx.parse().unwrap(), prob.parse().unwrap())
        })
        .collect();
    (file.to_string(), top)
}

#[test]
fn bundled_model_reproduces_the_reference_top5_on_every_engine() {
    let reference =
        std::fs::read_to_string(repo().join("tests/data/efficientnet-lite0-expected-top5.txt"))
            .unwrap();
    let reference: Vec<_> = reference.lines().map(parse_reference).collect();
    assert_eq!(reference.len(), 7);
    for kind in [BackendKind::Ort, BackendKind::Tract] {
        let config = PipelineConfig {
            top_k: 1000,
            batch_size: 3,
            instances: 2,
            ..PipelineConfig::default()
        };
        let c = classifier(kind, config);
        let args = reference
            .iter()
            .map(|(f, _)| repo().join("photos").join(f).display().to_string())
            .collect();
        let results = run(&c, args);
        for ((file, top5), result) in reference.iter().zip(&results) {
            let got = result
                .outcome
                .as_ref()
                .unwrap_or_else(|e| panic!("{kind}: {file}: {e}"));
            assert_eq!(got.top[0].class_idx, top5[0].0, "{kind}: {file}: top-1");
            for &(class_idx, expected) in top5 {
                let p = got
                    .top
                    .iter()
                    .find(|s| s.class_idx == class_idx)
                    .unwrap()
                    .probability;
                assert!(
                    (p - expected).abs() <= 0.03,
                    "{kind}: {file}: class {class_idx}: {p} vs reference {expected}"
                );
            }
        }
        let chelsea = results
            .iter()
            .find(|r| r.path.ends_with("chelsea.png"))
            .unwrap();
        assert_eq!(
            chelsea.outcome.as_ref().unwrap().display_label,
            "cat",
            "{kind}"
        );
    }
}

/// A PNG whose header claims `width` × `height` with a valid checksum: a decompression bomb.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut png = Vec::new();
    image::DynamicImage::new_rgb8(1, 1)
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    // IHDR data starts at byte 16: width, height; its CRC covers bytes 12..29.
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn bad_inputs_fail_alone_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let photos = repo().join("photos");
    std::fs::copy(photos.join("chelsea.png"), d.join("a-good.png")).unwrap();
    std::fs::copy(photos.join("chelsea.png"), d.join("b-png-named.jpg")).unwrap();
    std::fs::write(d.join("c-empty.jpg"), b"").unwrap();
    let jpeg = std::fs::read(photos.join("china.jpg")).unwrap();
    std::fs::write(d.join("d-truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    std::fs::write(d.join("e-text.png"), b"this is not an image at all").unwrap();
    std::fs::write(d.join("f-bomb.png"), png_claiming(100_000, 100_000)).unwrap();
    std::fs::create_dir(d.join("g-folder.jpg")).unwrap();
    std::fs::copy(photos.join("coffee.png"), d.join("h-good.png")).unwrap();

    let c = classifier(
        BackendKind::Ort,
        PipelineConfig {
            batch_size: 4,
            instances: 2,
            ..PipelineConfig::default()
        },
    );
    let missing = d.join("z-missing.jpg").display().to_string();
    let results = run(&c, vec![d.display().to_string(), missing]);
    let by_name = |name: &str| {
        results
            .iter()
            .find(|r| r.path.file_name().is_some_and(|f| f == name))
            .unwrap_or_else(|| panic!("{name} not reported: {results:#?}"))
    };
    assert_eq!(
        results.len(),
        8,
        "the folder walk skips g-folder.jpg (a folder)"
    );
    let ok = |name: &str| {
        by_name(name)
            .outcome
            .as_ref()
            .unwrap()
            .display_label
            .clone()
    };
    assert_eq!(ok("a-good.png"), "cat");
    assert_eq!(
        ok("b-png-named.jpg"),
        "cat",
        "formats are recognised by content"
    );
    assert_eq!(ok("h-good.png"), "espresso");
    assert_eq!(
        by_name("c-empty.jpg").outcome,
        Err(ItemError::Decode(DecodeError::Empty))
    );
    assert!(matches!(
        by_name("d-truncated.jpg").outcome,
        Err(ItemError::Decode(DecodeError::Corrupt { .. }))
    ));
    assert_eq!(
        by_name("e-text.png").outcome,
        Err(ItemError::Decode(DecodeError::UnknownFormat))
    );
    assert!(matches!(
        by_name("f-bomb.png").outcome,
        Err(ItemError::Decode(DecodeError::TooManyPixels { .. }))
    ));
    let missing = by_name("z-missing.jpg").outcome.clone().unwrap_err();
    assert!(missing.to_string().contains("no such file"), "{missing}");
    // Indices follow input order.
    let idx: Vec<usize> = results.iter().map(|r| r.idx).collect();
    assert_eq!(idx, (0..8).collect::<Vec<_>>());
}

#[test]
fn a_folder_given_explicitly_as_a_file_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let c = classifier(BackendKind::Ort, PipelineConfig::default());
    // Reaches the reader through stdin, which takes paths as given.
    let stdin = format!("{}\n", dir.path().display());
    let mut results = Vec::new();
    c.run(
        Inputs::new(vec!["-".into()], Some(Box::new(Cursor::new(stdin)))),
        |r| {
            results.push(r);
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert!(matches!(&results[0].outcome, Err(ItemError::Read(r)) if r.contains("folder")));
}

#[test]
fn results_come_back_in_input_order_and_early_stop_returns() {
    let photos = repo().join("photos");
    let names = ["chelsea.png", "coffee.png", "rocket.jpg", "china.jpg"];
    let args: Vec<String> = (0..60)
        .map(|i| photos.join(names[i % names.len()]).display().to_string())
        .collect();
    let c = classifier(
        BackendKind::Ort,
        PipelineConfig {
            batch_size: 3,
            instances: 3,
            batches_in_flight_per_instance: 1,
            ..PipelineConfig::default()
        },
    );
    let results = run(&c, args.clone());
    assert_eq!(results.len(), 60);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.idx, i);
        assert_eq!(r.path, PathBuf::from(&args[i]));
        let expected = ["cat", "espresso", "missile", "palace"][i % 4];
        assert_eq!(
            r.outcome.as_ref().unwrap().display_label,
            expected,
            "item {i}"
        );
    }

    let mut seen = 0;
    let stats = c
        .run(Inputs::new(args, None), |_| {
            seen += 1;
            if seen == 5 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(seen, 5);
    assert!(stats.items < 60, "stopping early must not run everything");
}

#[test]
fn pixel_limit_and_config_are_validated() {
    let model = Arc::new(Model::bundled());
    let loaded = load_engine(
        &model,
        BackendChoice::Only(BackendKind::Ort),
        EngineOptions::default(),
        true,
    )
    .unwrap();
    for bad in [
        PipelineConfig {
            batch_size: 0,
            ..PipelineConfig::default()
        },
        PipelineConfig {
            instances: 0,
            ..PipelineConfig::default()
        },
        PipelineConfig {
            top_k: 0,
            ..PipelineConfig::default()
        },
        PipelineConfig {
            limits: DecodeLimits { max_pixels: 0 },
            ..PipelineConfig::default()
        },
    ] {
        assert!(Classifier::new(model.clone(), loaded.engine.clone(), bad).is_err());
    }
    let strict = PipelineConfig {
        limits: DecodeLimits { max_pixels: 1000 },
        ..PipelineConfig::default()
    };
    let c = Classifier::new(model, loaded.engine, strict).unwrap();
    let results = run(
        &c,
        vec![repo().join("photos/chelsea.png").display().to_string()],
    );
    assert!(matches!(
        results[0].outcome,
        Err(ItemError::Decode(DecodeError::TooManyPixels {
            pixels: 135_300,
            limit: 1000,
            ..
        }))
    ));
}

#[test]
fn a_manifest_that_contradicts_its_model_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let src = repo().join("models/digits-cnn");
    for f in ["model.onnx", "labels.txt"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let manifest = std::fs::read_to_string(src.join("model.json"))
        .unwrap()
        .replace("[-1, 1, 8, 8]", "[-1, 1, 9, 9]")
        .replace("\"exact\": [8, 8]", "\"exact\": [9, 9]");
    std::fs::write(dir.path().join("model.json"), manifest).unwrap();
    let model = Model::load(dir.path()).unwrap();
    for kind in [BackendKind::Ort, BackendKind::Tract] {
        let err = load_engine(
            &model,
            BackendChoice::Only(kind),
            EngineOptions::default(),
            true,
        )
        .err()
        .unwrap_or_else(|| panic!("{kind} accepted a contradicting manifest"));
        let msg = err.to_string();
        assert!(
            msg.contains("inputs[0].shape") && msg.contains("[-1, 1, 9, 9]"),
            "{kind}: {msg}"
        );
        assert!(msg.contains("model.json"), "{kind}: {msg}");
    }
}

fn cached_classifier(dir: &Path, top_k: usize) -> Classifier {
    let cache = Arc::new(ResultCache::open(&CacheConfig {
        memory_bytes: 1 << 20,
        disk: Some((dir.to_path_buf(), 1 << 24)),
        ttl: None,
        disk_page_cache_bytes: singlepoint_cache::DISK_PAGE_CACHE_BYTES,
    }));
    classifier(
        BackendKind::Ort,
        PipelineConfig {
            top_k,
            batch_size: 4,
            instances: 2,
            ..PipelineConfig::default()
        },
    )
    .with_cache(cache)
}

fn run_with_stats(c: &Classifier, args: Vec<String>) -> (Vec<ItemResult>, RunStats) {
    let mut results = Vec::new();
    let stats = c
        .run(Inputs::new(args, None), |r| {
            results.push(r);
            ControlFlow::Continue(())
        })
        .unwrap();
    (results, stats)
}

#[test]
fn repeated_inputs_are_computed_once_and_hits_skip_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let photos = repo().join("photos");
    // 10 copies of each of 4 photos, interleaved: 4 distinct inputs among 40.
    let names = ["chelsea.png", "coffee.png", "rocket.jpg", "china.jpg"];
    let args: Vec<String> = (0..40)
        .map(|i| photos.join(names[i % 4]).display().to_string())
        .collect();
    let c = cached_classifier(dir.path(), 5);
    let (first, stats) = run_with_stats(&c, args.clone());
    assert_eq!(stats.failed, 0);
    let computed = first
        .iter()
        .filter(|r| r.source == AnswerSource::Computed)
        .count();
    assert!(
        (4..=8).contains(&computed),
        "{computed} computed of 40: {stats:?}"
    );
    assert_eq!(
        first
            .iter()
            .filter(|r| r.source != AnswerSource::Computed)
            .count(),
        stats.cache_hits + stats.coalesced
    );
    for (i, r) in first.iter().enumerate() {
        assert_eq!(
            r.outcome,
            first[i % 4].outcome,
            "item {i} differs from its twin"
        );
    }

    // A new process's worth of cache: the disk tier answers everything, the model never runs.
    drop(c);
    let c = cached_classifier(dir.path(), 5);
    let (second, stats) = run_with_stats(&c, args);
    assert_eq!(stats.model_executions, 0, "{stats:?}");
    assert_eq!(stats.cache_hits, 40);
    assert!(second.iter().all(|r| r.source == AnswerSource::Cache));
    let outcomes = |rs: &[ItemResult]| rs.iter().map(|r| r.outcome.clone()).collect::<Vec<_>>();
    assert_eq!(outcomes(&first), outcomes(&second));
    // Each distinct input comes from disk once and is then promoted to memory; two workers
    // asking for the same input at the same moment may both read it from disk.
    let cache = c.cache().unwrap().stats();
    assert_eq!(cache.disk_hits + cache.memory_hits, 40, "{cache:?}");
    assert!((4..=8).contains(&cache.disk_hits), "{cache:?}");
}

/// The cache holds the model's output row for an input, so an answer with other options (a
/// different top-k) is derived from the same entry without running the model; other bytes miss.
#[test]
fn answers_are_derived_from_cached_outputs_and_different_bytes_miss() {
    let dir = tempfile::tempdir().unwrap();
    let photo = repo().join("photos/chelsea.png");
    let c5 = cached_classifier(dir.path(), 5);
    let (five, _) = run_with_stats(&c5, vec![photo.display().to_string()]);
    drop(c5);
    let c2 = cached_classifier(dir.path(), 2);
    let (results, stats) = run_with_stats(&c2, vec![photo.display().to_string()]);
    assert_eq!(stats.cache_hits, 1, "{stats:?}");
    assert_eq!(stats.model_executions, 0, "{stats:?}");
    let two = results[0].outcome.as_ref().unwrap();
    assert_eq!(two.top.len(), 2);
    assert_eq!(two.top[..], five[0].outcome.as_ref().unwrap().top[..2]);

    // The same file with one byte changed (a PNG text chunk) is a different input.
    let mut bytes = std::fs::read(&photo).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 0x01;
    let edited = dir.path().join("edited.png");
    std::fs::write(&edited, &bytes).unwrap();
    let (_, stats) = run_with_stats(&c2, vec![edited.display().to_string()]);
    assert_eq!(stats.cache_hits, 0);
}
