//! Open Inference Protocol requests, JSON and binary framing: any body is parsed into items
//! that fit the model's input, or refused with a message; the same body against a tensor
//! model's two variable-length inputs gives items whose named axes agree, within the maximum;
//! to a detector, items and only the detection outputs; to a text model and the OpenAI, TEI and
//! text classify parsers, texts within the limits.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use singlepoint_core::{DType, Dim, TensorSpec};
use singlepoint_model::InputDecl;
use singlepoint_protocol::{oip, ItemInput};

fuzz_target!(|data: &[u8]| {
    // First two bytes: the Inference-Header-Content-Length, if the top bit says there is one.
    let Some((head, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let n = u16::from_le_bytes(*head);
    let header_len = (n & 0x8000 != 0).then_some(usize::from(n & 0x7fff));
    let input = TensorSpec::new(
        "input",
        DType::Float32,
        vec![Dim::Dynamic, Dim::Fixed(3), Dim::Fixed(4), Dim::Fixed(4)],
    );
    let output = TensorSpec::new("logits", DType::Float32, vec![Dim::Dynamic, Dim::Fixed(10)]);
    let body = Bytes::copy_from_slice(body);
    tensor_model(&body, header_len);
    text_model(&body, header_len);
    // The same body to a detector: images or rows in, only the detection outputs, and
    // parameters that are numbers and names.
    if let Ok(detect) = oip::parse_detect_request(&body, header_len, &input) {
        assert!(!detect.request.items.is_empty());
        assert!(detect
            .request
            .outputs
            .iter()
            .all(|o| oip::DETECT_OUTPUTS.iter().any(|(n, _)| *n == o.name)));
        assert!(detect.max_detections.is_none_or(|m| m >= 1));
    }
    let Ok(request) = oip::parse_request(&body, header_len, &input, &output, 10) else {
        return;
    };
    assert!(!request.items.is_empty());
    for item in &request.items {
        if let ItemInput::Tensor(row) = item {
            assert_eq!(row.len(), 48);
            assert!(row.iter().all(|v| v.is_finite()));
        }
    }
    for o in &request.outputs {
        assert!(o.classification.is_none_or(|k| (1..=10).contains(&k)));
    }
});

/// A token model: `input_ids` int64 and `attention_mask` bool, both `[batch, sequence]`, at
/// most 16 long; outputs `pooled`.
fn tensor_model(body: &Bytes, header_len: Option<usize>) {
    let decl = |name: &str, dtype| {
        let mut spec = TensorSpec::new(name, dtype, vec![Dim::Dynamic, Dim::Dynamic]);
        spec.symbols[1] = Some("sequence".into());
        InputDecl {
            spec,
            pad: Some(0.0),
            max_length: Some(16),
        }
    };
    let inputs = [decl("input_ids", DType::Int64), decl("attention_mask", DType::Bool)];
    let outputs = [TensorSpec::new("pooled", DType::Float32, vec![Dim::Dynamic, Dim::Fixed(4)])];
    let Ok(request) = oip::parse_tensor_request(body, header_len, &inputs, &outputs, 64) else {
        return;
    };
    assert!((1..=64).contains(&request.items.len()));
    for item in &request.items {
        let ItemInput::Tensors(tensors) = item else {
            panic!("a tensor model's item is not tensors");
        };
        assert_eq!(tensors.len(), 2);
        let len = tensors[0].shape()[0];
        assert!((1..=16).contains(&len));
        assert_eq!(tensors[1].shape(), &[len]);
        assert_eq!(tensors[0].dtype(), DType::Int64);
        assert_eq!(tensors[1].dtype(), DType::Bool);
    }
}

/// The same body to a text model (BYTES texts over OIP) and to the OpenAI, TEI and text
/// classify parsers: texts in, at most the limit, only the text outputs; or a refusal.
fn text_model(body: &Bytes, header_len: Option<usize>) {
    use singlepoint_protocol::text;
    let outputs = ["embedding", "tokens"];
    if let Ok(r) = oip::parse_text_request(body, header_len, &outputs, 8) {
        assert!(!r.request.items.is_empty() && r.request.items.len() <= 8);
        assert!(r
            .request
            .items
            .iter()
            .all(|i| matches!(i, ItemInput::Text { .. })));
        assert!(r.request.outputs.iter().all(|o| outputs.contains(&o.name.as_str())));
    }
    if let Ok(r) = text::parse_openai_embeddings(body) {
        assert!(!r.input.is_empty() && r.input.len() <= text::MAX_TEXTS);
        assert!(r.input.iter().all(|t| !t.is_empty()));
    }
    if let Ok(r) = text::parse_tei_embed(body) {
        assert!(!r.inputs.is_empty() && r.inputs.len() <= text::MAX_TEXTS);
    }
    for plain in [false, true] {
        if let Ok(r) = text::parse_text_classify(body, plain) {
            assert!(!r.inputs.is_empty());
            assert!(r.top_k.is_none_or(|k| k >= 1));
        }
    }
}
