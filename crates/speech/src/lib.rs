//! The speech tasks on ONNX Runtime: voice activity (`vad`: Silero VAD's chunk probabilities,
//! state and context carried between chunks), Whisper transcription (`whisper`: the encoder
//! batched across requests, greedy decoding with the self-attention cache, decoding steps
//! batched continuously across requests), and the path every front-end enters (`service`:
//! audio bytes → content key → cache → decode → VAD → ≤ 30-s windows → transcript), with the
//! transcript's text, JSON, SRT and WebVTT forms (`format`). Audio decoding, the log-mel front
//! end and VAD segmenting are `singlepoint-audio`'s.

pub mod bundled;
pub mod format;
pub mod service;
pub mod vad;
pub mod whisper;

pub use service::{Speech, SpeechOptions, Transcript, TranscriptSegment, VadAnswer};

use singlepoint_audio::AudioError;
use singlepoint_backend::BackendError;

/// Why a speech request failed. An input's error names what was wrong with it; the caller
/// names the input.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SpeechError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error("the engine: {0}")]
    Engine(String),
    #[error("the model: {0}")]
    Model(String),
    #[error("the transcriber has stopped")]
    Stopped,
}

impl From<BackendError> for SpeechError {
    fn from(e: BackendError) -> Self {
        SpeechError::Engine(e.to_string())
    }
}
