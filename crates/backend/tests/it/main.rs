//! The engine conformance suite: `tests/conformance.json` holds cases (a model, a recipe for its
//! input, and the outputs onnxruntime-Python gives), and every engine compiled in must
//! reproduce them within each case's tolerance. Plus the digits CNN's accuracy on its held-out
//! test set through each engine.
//!
//! ONNX Runtime is fetched into the per-user cache when it is missing, as `singlepoint` itself
//! does, so these tests exercise the real library.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use serde::Deserialize;
use singlepoint_backend::{load, ort_runtime, BackendError, BackendKind, EngineOptions};
use singlepoint_core::Tensor;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn engines() -> Vec<BackendKind> {
    static FETCH: Once = Once::new();
    FETCH.call_once(|| {
        if ort_runtime::locate().ok().flatten().is_none() {
            ort_runtime::fetch().expect("fetching ONNX Runtime for the tests");
        }
    });
    vec![BackendKind::Ort, BackendKind::Tract]
}

fn onnx(model_dir: &str) -> Arc<[u8]> {
    std::fs::read(repo().join(model_dir).join("model.onnx"))
        .expect("model file")
        .into()
}

#[derive(Deserialize)]
struct Suite {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    model: String,
    input: Recipe,
    input_shape: Vec<usize>,
    tolerance: f32,
    output_shape: Vec<usize>,
    output: Vec<f32>,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Recipe {
    DigitsTestSet { offset: usize },
    Sine { seed: f64 },
}

fn digits_test_set() -> (Vec<f32>, Vec<u8>) {
    let dir = repo().join("models/digits-cnn");
    let bytes = std::fs::read(dir.join("test_f32.bin")).unwrap();
    let data = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let labels = std::fs::read(dir.join("test_labels_u8.bin")).unwrap();
    (data, labels)
}

fn build_input(recipe: &Recipe, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data = match recipe {
        Recipe::DigitsTestSet { offset } => {
            let (all, _) = digits_test_set();
            all[offset * 64..offset * 64 + n].to_vec()
        }
        Recipe::Sine { seed } => (0..n)
            .map(|i| (i as f64 * 0.0137 + seed).sin() as f32)
            .collect(),
    };
    Tensor::new(shape.to_vec(), data).unwrap()
}

#[test]
fn every_engine_reproduces_the_conformance_suite() {
    let suite: Suite =
        serde_json::from_str(include_str!("../conformance.json")).expect("conformance.json");
    assert!(suite.cases.len() >= 5);
    for kind in engines() {
        for case in &suite.cases {
            let engine = load(kind, onnx(&case.model), EngineOptions::default())
                .unwrap_or_else(|e| panic!("{kind}: {}: {e}", case.name));
            let mut session = engine.session().unwrap();
            let input = build_input(&case.input, &case.input_shape);
            let output = session.run(&input).unwrap();
            assert_eq!(
                output.shape(),
                case.output_shape.as_slice(),
                "{kind}: {}",
                case.name
            );
            let worst = output
                .data()
                .iter()
                .zip(&case.output)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst <= case.tolerance,
                "{kind}: {}: largest difference {worst} > {}",
                case.name,
                case.tolerance
            );
        }
    }
}

#[test]
fn digits_cnn_scores_at_least_98_percent_on_every_engine() {
    let (data, labels) = digits_test_set();
    assert_eq!(labels.len(), 450);
    for kind in engines() {
        let engine = load(kind, onnx("models/digits-cnn"), EngineOptions::default()).unwrap();
        let mut session = engine.session().unwrap();
        let mut correct = 0;
        // Uneven batches exercise more than one plan per engine.
        let mut start = 0;
        for batch in [1usize, 7, 64].iter().cycle() {
            if start >= labels.len() {
                break;
            }
            let b = (*batch).min(labels.len() - start);
            let input = Tensor::new(
                vec![b, 1, 8, 8],
                data[start * 64..(start + b) * 64].to_vec(),
            )
            .unwrap();
            let output = session.run(&input).unwrap();
            for i in 0..b {
                let row = output.item(i);
                let best = (0..10).max_by(|&a, &c| row[a].total_cmp(&row[c])).unwrap();
                correct += usize::from(best == usize::from(labels[start + i]));
            }
            start += b;
        }
        let accuracy = correct as f64 / labels.len() as f64;
        assert!(accuracy >= 0.98, "{kind}: accuracy {accuracy:.4}");
    }
}

#[test]
fn engines_report_the_models_tensors() {
    for kind in engines() {
        let engine = load(
            kind,
            onnx("models/efficientnet-lite0"),
            EngineOptions::default(),
        )
        .unwrap();
        assert_eq!(engine.input().name, "input", "{kind}");
        assert_eq!(engine.input().shape_string(), "[-1, 3, 224, 224]", "{kind}");
        assert_eq!(engine.output().name, "logits", "{kind}");
        assert_eq!(engine.output().shape_string(), "[-1, 1000]", "{kind}");
    }
}

#[test]
fn wrong_shapes_and_bad_models_are_errors() {
    for kind in engines() {
        let engine = load(kind, onnx("models/digits-cnn"), EngineOptions::default()).unwrap();
        let mut session = engine.session().unwrap();
        let wrong = Tensor::zeros(vec![2, 1, 9, 8]);
        assert!(
            matches!(session.run(&wrong), Err(BackendError::InputShape { .. })),
            "{kind}"
        );
        let empty = Tensor::zeros(vec![0, 1, 8, 8]);
        assert!(session.run(&empty).is_err(), "{kind}: an empty batch");
        let garbage: Arc<[u8]> = b"\x08\x07definitely not a protobuf model".to_vec().into();
        assert!(
            matches!(
                load(kind, garbage, EngineOptions::default()),
                Err(BackendError::Load { .. })
            ),
            "{kind}"
        );
    }
}
