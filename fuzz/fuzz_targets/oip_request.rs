//! Open Inference Protocol requests, JSON and binary framing: any body is parsed into items
//! that fit the model's input, or refused with a message.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use singlepoint_core::{DType, Dim, TensorSpec};
use singlepoint_protocol::{oip, ItemInput};

fuzz_target!(|data: &[u8]| {
    // First two bytes: the Inference-Header-Content-Length, if the top bit says there is one.
    let Some((head, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let n = u16::from_le_bytes(*head);
    let header_len = (n & 0x8000 != 0).then_some(usize::from(n & 0x7fff));
    let input = TensorSpec {
        name: "input".into(),
        dtype: DType::Float32,
        shape: vec![Dim::Dynamic, Dim::Fixed(3), Dim::Fixed(4), Dim::Fixed(4)],
    };
    let output = TensorSpec {
        name: "logits".into(),
        dtype: DType::Float32,
        shape: vec![Dim::Dynamic, Dim::Fixed(10)],
    };
    let body = Bytes::copy_from_slice(body);
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
