//! What clients send the server, parsed without the network: Open Inference Protocol v2
//! requests with JSON or binary framing ([`oip`]) and the multipart forms of the classify
//! endpoint ([`form`]).
//!
//! These are the parsers that take bytes straight from the wire, so they live apart from the
//! server (no engine, no sockets) where `fuzz/` can drive them: every input is either parsed or
//! refused with a message that says what was wrong; none panics or allocates more than the
//! input justifies.

pub mod form;
pub mod oip;
pub mod text;

use bytes::Bytes;

/// What a request asks to be computed for one item.
#[derive(Clone, Debug, PartialEq)]
pub enum ItemInput {
    /// Encoded image bytes: decoded and preprocessed with the model's manifest.
    Image(Bytes),
    /// Decoded RGB8 pixels (a video frame), 3 bytes a pixel, row-major: preprocessed as an
    /// image is, without decoding.
    Pixels { width: u32, height: u32, rgb: Bytes },
    /// A preprocessed row of an image model's input, row-major, already checked for length.
    Tensor(Vec<f32>),
    /// One row of each of a tensor model's inputs, in the model's order, each without the
    /// batch axis; already checked against the manifest (types, ranks, sizes, shared lengths).
    Tensors(Vec<singlepoint_core::AnyTensor>),
    /// A text for a text model, tokenised with the model's tokenizer; over the model's token
    /// limit it is cut when `truncate`, else refused.
    Text {
        text: std::sync::Arc<str>,
        truncate: bool,
    },
}
