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
