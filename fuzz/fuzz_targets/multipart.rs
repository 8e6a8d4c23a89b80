//! Multipart classify bodies: the first line is the boundary, the rest the body. Any body is
//! parsed into files whose bytes lie inside it, or refused with a message.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use singlepoint_protocol::form;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let boundary = String::from_utf8_lossy(&data[..split]);
    let body = Bytes::copy_from_slice(data.get(split + 1..).unwrap_or_default());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    if let Ok(files) = form::parse(&content_type, body.clone()) {
        assert!(!files.is_empty());
        let total: usize = files.iter().map(|f| f.bytes.len()).sum();
        assert!(total <= body.len());
    }
});
