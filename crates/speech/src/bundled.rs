//! The bundled speech models, compiled into the binary (`models/whisper-tiny-en`,
//! `models/silero-vad`; provenance and licences in their READMEs).

use std::sync::Arc;

use crate::whisper::WhisperFiles;

const ENCODER: &[u8] = include_bytes!("../../../models/whisper-tiny-en/encoder.onnx");
const CROSS_KV: &[u8] = include_bytes!("../../../models/whisper-tiny-en/cross_kv.onnx");
const DECODER: &[u8] = include_bytes!("../../../models/whisper-tiny-en/decoder_kv.onnx");
const TOKENIZER: &[u8] = include_bytes!("../../../models/whisper-tiny-en/tokenizer.json");
const CONFIG: &[u8] = include_bytes!("../../../models/whisper-tiny-en/config.json");
/// Whisper's 80×201 mel filter bank, little-endian f32.
pub const MEL_FILTERS: &[u8] =
    include_bytes!("../../../models/whisper-tiny-en/mel_filters_80x201.f32le");
/// Silero VAD v6 (16 and 8 kHz).
pub const SILERO_VAD: &[u8] = include_bytes!("../../../models/silero-vad/silero_vad.onnx");

/// The bundled transcription model's name.
pub const WHISPER_NAME: &str = "whisper-tiny.en";
/// The bundled voice-activity model's name.
pub const VAD_NAME: &str = "silero-vad";

/// Whisper tiny.en: the encoder, the cross-attention K/V graph and the cached decoder.
pub fn whisper() -> WhisperFiles {
    WhisperFiles {
        encoder: Arc::from(ENCODER),
        cross_kv: Arc::from(CROSS_KV),
        decoder: Arc::from(DECODER),
        tokenizer: TOKENIZER.to_vec(),
        config: CONFIG.to_vec(),
    }
}
