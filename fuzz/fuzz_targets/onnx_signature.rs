//! ONNX files: any bytes give a signature (inputs and outputs with names, types, shapes) or an
//! error, and a signature is what `init` writes a manifest that parses from.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use singlepoint_model::init::{describe, Options};
use singlepoint_model::onnx::signature;
use singlepoint_model::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(sig) = signature(data) else {
        return;
    };
    assert!(!sig.inputs.is_empty() && !sig.outputs.is_empty());
    for t in sig.inputs.iter().chain(&sig.outputs) {
        assert_eq!(t.shape.len(), t.symbols.len());
    }
    if let Ok(text) = describe(Path::new("m/model.onnx"), data, &Options::tensor("m", "model.onnx")) {
        // Names an ONNX file may hold that a manifest refuses (empty, duplicated) are errors,
        // never panics.
        let _ = Manifest::from_json(Path::new("m/model.json"), &text);
    }
});
