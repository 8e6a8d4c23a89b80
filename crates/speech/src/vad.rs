//! Silero VAD on ONNX Runtime: one speech probability per 512-sample chunk of 16-kHz audio,
//! the recurrent state and the 64-sample context carried from chunk to chunk (the package's
//! `OnnxWrapper`). Segmenting the probabilities is `singlepoint_audio::vad`'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use singlepoint_audio::vad::{CHUNK, CONTEXT};
use singlepoint_backend::{BackendKind, Engine, EngineOptions, Session};
use singlepoint_core::{AnyTensor, Buffer, ModelDigest};

use crate::SpeechError;

/// The rate the model is run at.
pub const RATE: u32 = 16_000;

fn model_error(what: impl std::fmt::Display) -> SpeechError {
    SpeechError::Model(what.to_string())
}

/// A loaded Silero VAD with a pool of sessions (one per concurrent stream).
pub struct SileroVad {
    engine: Arc<dyn Engine>,
    sessions: Mutex<Vec<Box<dyn Session>>>,
    slots: [usize; 3],
    state_len: usize,
    pub digest: ModelDigest,
    runs: AtomicU64,
}

impl SileroVad {
    pub fn load(onnx: &[u8]) -> Result<SileroVad, SpeechError> {
        let digest = ModelDigest(*blake3::hash(onnx).as_bytes());
        let engine =
            singlepoint_backend::load(BackendKind::Ort, Arc::from(onnx), EngineOptions::default())?;
        let slot = |name: &str| {
            engine
                .inputs()
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| model_error(format!("the VAD model has no input `{name}`")))
        };
        let slots = [slot("input")?, slot("state")?, slot("sr")?];
        if engine.inputs().len() != 3 {
            return Err(model_error(
                "the VAD model takes more than input, state and sr",
            ));
        }
        // state: [2, batch, 128].
        let state_len = match engine.inputs()[slots[1]].shape.get(2) {
            Some(singlepoint_core::Dim::Fixed(n)) => 2 * n,
            _ => 2 * 128,
        };
        Ok(SileroVad {
            engine,
            sessions: Mutex::new(Vec::new()),
            slots,
            state_len,
            digest,
            runs: AtomicU64::new(0),
        })
    }

    /// Engine runs so far (one per chunk).
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// The speech probability of each 512-sample chunk of `samples` (16 kHz mono; the last
    /// chunk zero-padded).
    pub fn probabilities(&self, samples: &[f32]) -> Result<Vec<f32>, SpeechError> {
        let taken = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let mut session = match taken {
            Some(s) => s,
            None => self.engine.session()?,
        };
        let result = self.run(session.as_mut(), samples);
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(session);
        result
    }

    fn run(&self, session: &mut dyn Session, samples: &[f32]) -> Result<Vec<f32>, SpeechError> {
        let tensor = |shape: Vec<usize>, data: Buffer| {
            AnyTensor::new(shape, data).map_err(|e| model_error(e.to_string()))
        };
        let chunks = samples.len().div_ceil(CHUNK);
        let mut probs = Vec::with_capacity(chunks);
        let mut inputs: Vec<AnyTensor> = Vec::with_capacity(3);
        let mut state = vec![0f32; self.state_len];
        let mut window = vec![0f32; CONTEXT + CHUNK];
        for k in 0..chunks {
            // The context is the last 64 samples fed; the chunk follows it.
            window.copy_within(CHUNK.., 0);
            let chunk = &samples[k * CHUNK..((k + 1) * CHUNK).min(samples.len())];
            window[CONTEXT..CONTEXT + chunk.len()].copy_from_slice(chunk);
            window[CONTEXT + chunk.len()..].fill(0.0);
            inputs.clear();
            let mut slots: [Option<AnyTensor>; 3] = [
                Some(tensor(
                    vec![1, CONTEXT + CHUNK],
                    Buffer::F32(window.clone()),
                )?),
                Some(tensor(vec![2, 1, self.state_len / 2], Buffer::F32(state))?),
                Some(tensor(Vec::new(), Buffer::I64(vec![RATE as i64]))?),
            ];
            let mut ordered: Vec<Option<AnyTensor>> = vec![None, None, None];
            for (what, &slot) in self.slots.iter().enumerate() {
                ordered[slot] = slots[what].take();
            }
            inputs.extend(ordered.into_iter().flatten());
            let outputs = session.run_all(&inputs)?;
            self.runs.fetch_add(1, Ordering::Relaxed);
            let mut outputs = outputs.into_iter();
            let (Some(p), Some(next)) = (outputs.next(), outputs.next()) else {
                return Err(model_error("the VAD model gave fewer than two outputs"));
            };
            let (Buffer::F32(p), Buffer::F32(next)) = (p.into_data(), next.into_data()) else {
                return Err(model_error("the VAD model's outputs are not float32"));
            };
            probs.push(
                *p.first()
                    .ok_or_else(|| model_error("an empty probability"))?,
            );
            if next.len() != self.state_len {
                return Err(model_error("the VAD state changed size"));
            }
            state = next;
        }
        Ok(probs)
    }
}
