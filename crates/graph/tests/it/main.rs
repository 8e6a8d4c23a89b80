//! The graph edits on the bundled models' real files.

use singlepoint_graph::{
    append_head, classifier_features, decode, encode, expose, Features, GraphError, HeadInput,
    Linear,
};

const EFFICIENTNET: &[u8] = include_bytes!("../../../../models/efficientnet-lite0/model.onnx");
const MINILM: &[u8] = include_bytes!("../../../../models/all-minilm-l6-v2/model.onnx");
const DIGITS: &[u8] = include_bytes!("../../../../models/digits-cnn/model.onnx");
const YOLO: &[u8] = include_bytes!("../../../../models/yolov3-tiny/model.onnx");

#[test]
fn every_bundled_model_survives_the_round_trip_byte_for_byte() {
    for (name, bytes) in [
        ("efficientnet", EFFICIENTNET),
        ("minilm", MINILM),
        ("digits", DIGITS),
        ("yolo", YOLO),
    ] {
        let model = decode(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(encode(&model) == bytes, "{name} re-encodes to other bytes");
    }
}

#[test]
fn efficientnet_features_are_the_input_of_its_classifier() {
    let model = decode(EFFICIENTNET).unwrap();
    let features = classifier_features(&model, "logits").unwrap();
    assert_eq!(features.width, 1280);
    let exposed = expose(&model, &features).unwrap();
    let g = exposed.graph.as_ref().unwrap();
    assert_eq!(g.output.len(), 1);
    assert_eq!(g.output[0].name.as_deref(), Some(features.tensor.as_str()));
    // The old head (a Gemm and its 1000 x 1280 weights) is gone.
    assert!(!g.node.iter().any(|n| n.op_type.as_deref() == Some("Gemm")));
    assert!(!g.initializer.iter().any(|t| t.dims == [1000, 1280]));
    assert!(encode(&exposed).len() < EFFICIENTNET.len() - 1000 * 1280 * 4);
}

#[test]
fn a_head_replaces_the_old_output() {
    let model = decode(EFFICIENTNET).unwrap();
    let features = classifier_features(&model, "logits").unwrap();
    let head = Linear {
        inputs: 1280,
        outputs: 3,
        weights: vec![0.5; 1280 * 3],
        bias: vec![0.0, 1.0, 2.0],
    };
    let input = HeadInput::Vector(features.tensor.clone());
    let adapted = append_head(&model, &input, false, &head, "scores").unwrap();
    let g = adapted.graph.as_ref().unwrap();
    assert_eq!(g.output.len(), 1);
    assert_eq!(g.output[0].name.as_deref(), Some("scores"));
    let last = g.node.last().unwrap();
    assert_eq!(last.op_type.as_deref(), Some("Gemm"));
    assert_eq!(last.input[0], features.tensor);
    // What it writes decodes again, whole.
    let again = decode(&encode(&adapted)).unwrap();
    assert_eq!(again, adapted);
    // A head whose weights do not match its shape, or on a tensor the graph lacks.
    let bad = Linear {
        weights: vec![0.0; 5],
        ..head.clone()
    };
    assert!(append_head(&model, &input, false, &bad, "scores").is_err());
    let missing = HeadInput::Vector("nowhere".into());
    assert_eq!(
        append_head(&model, &missing, false, &head, "scores"),
        Err(GraphError::NoTensor("nowhere".into()))
    );
    // The output name must be new.
    assert!(append_head(&model, &input, false, &head, features.tensor.as_str()).is_err());
}

#[test]
fn a_text_encoder_gets_pooling_normalisation_and_a_head() {
    let model = decode(MINILM).unwrap();
    let head = Linear {
        inputs: 384,
        outputs: 2,
        weights: vec![0.1; 768],
        bias: vec![0.0; 2],
    };
    let input = HeadInput::MeanPool {
        hidden: "last_hidden_state".into(),
        mask: "attention_mask".into(),
    };
    let adapted = append_head(&model, &input, true, &head, "logits").unwrap();
    let g = adapted.graph.as_ref().unwrap();
    let ops: Vec<_> = g.node[g.node.len() - 9..]
        .iter()
        .map(|n| n.op_type.clone().unwrap())
        .collect();
    assert_eq!(
        ops,
        [
            "Cast",
            "Unsqueeze",
            "Mul",
            "ReduceSum",
            "ReduceSum",
            "Max",
            "Div",
            "LpNormalization",
            "Gemm"
        ]
    );
    // Its three inputs stay: the tokenizer feeds them all.
    assert_eq!(g.input.len(), 3);
}

#[test]
fn what_is_not_a_model_or_not_a_classifier_is_refused() {
    assert!(matches!(decode(b"not a model"), Err(GraphError::Decode(_))));
    assert!(decode(&EFFICIENTNET[..EFFICIENTNET.len() / 2]).is_err());
    let minilm = decode(MINILM).unwrap();
    // Its output is made by a LayerNormalization, not a linear layer.
    let e = classifier_features(&minilm, "last_hidden_state").unwrap_err();
    assert!(e.to_string().contains("LayerNormalization"), "{e}");
    assert!(classifier_features(&minilm, "nothing").is_err());
    let missing = Features {
        tensor: "nothing".into(),
        width: 4,
    };
    assert!(expose(&minilm, &missing).is_err());
}

mod quant {
    use std::collections::{HashMap, HashSet};

    use singlepoint_graph::pb::data_type;
    use singlepoint_graph::quant::{self, Range, Role};
    use singlepoint_graph::{decode, encode};

    use super::{EFFICIENTNET, MINILM};

    /// Every calibration tensor given the range a ReLU6 output has.
    fn ranges(model: &singlepoint_graph::ModelProto) -> HashMap<String, Range> {
        quant::calibration_tensors(model)
            .into_iter()
            .map(|t| {
                (
                    t,
                    Range {
                        min: -1.0,
                        max: 6.0,
                    },
                )
            })
            .collect()
    }

    fn ops(model: &singlepoint_graph::ModelProto, op: &str) -> usize {
        let g = model.graph.as_ref().unwrap();
        g.node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some(op))
            .count()
    }

    #[test]
    fn efficientnet_quantises_every_conv_with_int8_weights_and_folds_its_clips() {
        let model = decode(EFFICIENTNET).unwrap();
        let nodes = quant::quantizable(&model);
        let weighted = nodes.iter().filter(|n| n.role == Role::Weighted).count();
        assert_eq!(weighted, 50, "49 Conv and the Gemm");
        // Clip outputs lie in [0, 6]: the quantised range [0, 6] makes every Clip after a
        // quantised Conv redundant.
        let ranges: HashMap<String, Range> = quant::calibration_tensors(&model)
            .into_iter()
            .map(|t| (t, Range { min: 0.0, max: 6.0 }))
            .collect();
        let (q, summary) = quant::quantize(&model, &ranges, &HashSet::new()).unwrap();
        assert_eq!(summary.folded, 33);
        assert_eq!(ops(&q, "Clip"), 0);
        assert_eq!(summary.float, Vec::<String>::new());
        let g = q.graph.as_ref().unwrap();
        // Every Conv reads a dequantised int8 weight with one scale per output channel.
        let producers: HashMap<&str, &singlepoint_graph::pb::NodeProto> = g
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
            .collect();
        let inits: HashMap<&str, &singlepoint_graph::pb::TensorProto> = g
            .initializer
            .iter()
            .map(|t| (t.name.as_deref().unwrap(), t))
            .collect();
        for conv in g
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("Conv"))
        {
            let dq = producers[conv.input[1].as_str()];
            assert_eq!(dq.op_type.as_deref(), Some("DequantizeLinear"));
            let w = inits[dq.input[0].as_str()];
            assert_eq!(w.data_type, Some(data_type::INT8));
            assert_eq!(inits[dq.input[1].as_str()].dims, [w.dims[0]]);
            let x = producers[conv.input[0].as_str()];
            assert_eq!(x.op_type.as_deref(), Some("DequantizeLinear"));
        }
        // No float weight is left: the file is about a quarter of the float one.
        assert!(!g
            .initializer
            .iter()
            .any(|t| t.data_type == Some(data_type::FLOAT) && t.dims.len() >= 2));
        assert!(encode(&q).len() < EFFICIENTNET.len() / 3);
        assert!(quant::is_quantized(&q));
        // A re-encoded quantised graph decodes again (nothing lossy written).
        decode(&encode(&q)).unwrap();
    }

    #[test]
    fn layers_kept_in_float_keep_their_float_weights() {
        let model = decode(EFFICIENTNET).unwrap();
        let keep: HashSet<String> =
            ["/_conv_stem/Conv".to_string(), "/_fc/Gemm".to_string()].into();
        let (q, summary) = quant::quantize(&model, &ranges(&model), &keep).unwrap();
        assert_eq!(summary.float.len(), 2);
        let g = q.graph.as_ref().unwrap();
        let stem = g
            .node
            .iter()
            .find(|n| n.name.as_deref() == Some("/_conv_stem/Conv"))
            .unwrap();
        assert_eq!(
            stem.input[1], "onnx::Conv_911",
            "the stem reads its float weights"
        );
        // With range [-1, 6] the Clips cannot fold (the codes reach below 0).
        assert_eq!(summary.folded, 0);
        assert_eq!(ops(&q, "Clip"), 33);
    }

    #[test]
    fn quantised_models_and_missing_ranges_are_refused() {
        // The bundled MiniLM is int8 already.
        let minilm = decode(MINILM).unwrap();
        assert!(quant::is_quantized(&minilm));
        let err = quant::quantize(&minilm, &HashMap::new(), &HashSet::new()).unwrap_err();
        assert!(err.to_string().contains("already quantised"), "{err}");
        let model = decode(EFFICIENTNET).unwrap();
        assert!(!quant::is_quantized(&model));
        let err = quant::quantize(&model, &HashMap::new(), &HashSet::new()).unwrap_err();
        assert!(err.to_string().contains("no calibrated range"), "{err}");
    }

    #[test]
    fn affine_parameters_hold_zero_exactly() {
        let a = Range { min: 0.0, max: 6.0 }.affine();
        assert_eq!(a.zero_point, 0);
        let (lo, hi) = a.representable();
        assert_eq!(lo, 0.0);
        assert!((hi - 6.0).abs() < 1e-5, "{hi}");
        let b = Range {
            min: -2.0,
            max: 2.0,
        }
        .affine();
        assert!(matches!(b.zero_point, 127 | 128), "{b:?}");
        // A constant tensor still has a usable scale.
        assert_eq!(Range { min: 0.0, max: 0.0 }.affine().scale, 1.0);
    }
}

mod decoder {
    use singlepoint_graph::decoder::{explicit_positions, POSITIONS, SELF_BIAS};
    use singlepoint_graph::{decode, encode, GraphError};

    fn whisper_decoder() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/whisper-tiny-en/decoder_kv.onnx"
        );
        std::fs::read(path).unwrap()
    }

    #[test]
    fn the_whisper_decoder_takes_positions_and_a_bias_instead_of_its_own() {
        let bytes = whisper_decoder();
        let model = decode(&bytes).unwrap();
        assert!(
            encode(&model) == bytes,
            "the decoder re-encodes byte for byte"
        );
        let edited = explicit_positions(&model).unwrap();
        let g = edited.graph.as_ref().unwrap();
        let inputs: Vec<&str> = g.input.iter().filter_map(|i| i.name.as_deref()).collect();
        assert!(inputs.ends_with(&[POSITIONS, SELF_BIAS]), "{inputs:?}");
        assert_eq!(inputs.len(), 1 + 8 + 8 + 2);
        // The mask and the slice by the past length are gone, with what only they needed.
        for op in ["Where", "Range", "Greater", "ConstantOfShape"] {
            assert!(
                !g.node.iter().any(|n| n.op_type.as_deref() == Some(op)),
                "a `{op}` is left"
            );
        }
        let softmax_adds = g
            .node
            .iter()
            .filter(|n| {
                n.op_type.as_deref() == Some("Add") && n.input.iter().any(|i| i == SELF_BIAS)
            })
            .count();
        assert_eq!(softmax_adds, 4, "one biased self-attention per layer");
        // Twice is refused, as is a graph without a cached decoder's pattern.
        assert!(matches!(
            explicit_positions(&edited),
            Err(GraphError::Unsupported(_))
        ));
        let yolo = decode(super::YOLO).unwrap();
        let e = explicit_positions(&yolo).unwrap_err().to_string();
        assert!(e.contains("position table"), "{e}");
    }
}
