//! `model.json`: any text is a valid manifest or a `ModelError` naming the field; a valid one
//! names only files inside its folder.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use singlepoint_model::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Manifest::from_json(Path::new("models/m/model.json"), text) {
        Ok(m) => {
            let files = [Some(&m.onnx), m.labels.as_ref(), m.label_groups.as_ref()];
            for f in files.into_iter().flatten() {
                let inside = Path::new(f)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
                assert!(inside, "accepted a file outside the model's folder: {f:?}");
            }
            assert!(!m.name.contains(['/', '\\']) && !m.name.starts_with('.'));
            let _ = (m.classes(), m.max_batch());
            if let Some(image) = &m.image {
                let _ = image.preprocess.item_shape();
            }
            assert!(!m.inputs.is_empty() && !m.outputs.is_empty());
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("model.json"), "{message}");
        }
    }
});
