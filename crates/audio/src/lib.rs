//! Audio in for the speech tasks: encoded files or raw PCM → mono f32 at the model's rate
//! (`decode`, `resample`), Whisper's log-mel features (`mel`), and speech segments and 30-s
//! windows from a voice-activity model's chunk probabilities (`vad`). Nothing here runs a
//! model.

pub mod decode;
pub mod mel;
pub mod resample;
pub mod vad;

pub use decode::{decode, decode_pcm_s16le, Audio, AudioLimits};
pub use mel::{log_mel, MelFilters};
pub use vad::{Segment, VadSettings};

/// Why an input is not audio the speech tasks can use. Each names what was wrong; the caller
/// names the input.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum AudioError {
    #[error("the file is empty")]
    Empty,
    #[error("not an audio file (no WAV, FLAC, MP3 or Ogg stream found)")]
    NotAudio,
    #[error("the file holds no audio track")]
    NoAudioTrack,
    #[error("the audio declares no sample rate")]
    NoRate,
    #[error("a sample rate of {0} Hz is not a real recording's (1000 to 384000 Hz are accepted)")]
    Rate(u32),
    #[error("unsupported codec: {0}")]
    Codec(String),
    #[error("malformed audio: {0}")]
    Malformed(String),
    #[error("truncated: the header declares {declared:.2} s, the file ends after {decoded:.2} s")]
    Truncated { declared: f64, decoded: f64 },
    #[error("truncated: the stream breaks off after {decoded:.2} s")]
    TruncatedStream { decoded: f64 },
    #[error("the audio has no samples (zero length)")]
    NoSamples,
    #[error("{bytes} bytes is over the limit of {limit} bytes")]
    TooLarge { bytes: usize, limit: usize },
    #[error("{seconds:.0} s of audio is over the limit of {limit:.0} s")]
    TooLong { seconds: f64, limit: f64 },
    #[error("cannot resample from {from} Hz to {to} Hz: {reason}")]
    Resample { from: u32, to: u32, reason: String },
    #[error("mel filters: {0}")]
    Filters(String),
}
