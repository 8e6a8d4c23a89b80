//! Whisper's log-mel front end, as `whisper_onnx.log_mel` in the model's folder computes it:
//! 30 s of 16 kHz audio (zero-padded or cut), reflect-padded by n_fft/2, framed by a periodic
//! Hann window of 400 samples every 160, power spectrum (201 bins), the last frame dropped,
//! the model's mel filter bank, `log10(max(·, 1e-10))` floored at the maximum minus 8, and
//! `(l + 4) / 4`. The spectrum is computed in f64 as numpy does.

use std::sync::Arc;

use realfft::RealFftPlanner;

use crate::AudioError;

pub const SAMPLE_RATE: u32 = 16_000;
pub const N_FFT: usize = 400;
pub const HOP: usize = 160;
/// Samples in one 30-s window.
pub const N_SAMPLES: usize = 480_000;
/// Frames in one window (3001 computed, the last dropped).
pub const N_FRAMES: usize = 3_000;

/// A mel filter bank: `n_mels` rows of `N_FFT / 2 + 1` weights.
#[derive(Clone, Debug)]
pub struct MelFilters {
    n_mels: usize,
    weights: Arc<[f64]>,
}

impl MelFilters {
    /// Reads raw little-endian f32, row-major (row = mel bin), `n_mels × 201`.
    pub fn from_f32le(bytes: &[u8], n_mels: usize) -> Result<MelFilters, AudioError> {
        let bins = N_FFT / 2 + 1;
        if n_mels == 0 || bytes.len() != n_mels * bins * 4 {
            return Err(AudioError::Filters(format!(
                "{} bytes is not {n_mels} × {bins} little-endian f32",
                bytes.len()
            )));
        }
        let weights: Vec<f64> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            .collect();
        if weights.iter().any(|w| !w.is_finite()) {
            return Err(AudioError::Filters("a weight is not finite".into()));
        }
        Ok(MelFilters {
            n_mels,
            weights: weights.into(),
        })
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }
}

/// The log-mel features of one 30-s window: `n_mels × 3000`, row-major.
pub fn log_mel(audio: &[f32], filters: &MelFilters) -> Vec<f32> {
    let bins = N_FFT / 2 + 1;
    let pad = N_FFT / 2;
    // Zero-pad or cut to 30 s, then reflect `pad` samples on each side (the edge sample is
    // not repeated, numpy's "reflect").
    let mut x = vec![0.0f32; N_SAMPLES + 2 * pad];
    let n = audio.len().min(N_SAMPLES);
    x[pad..pad + n].copy_from_slice(&audio[..n]);
    for i in 0..pad {
        x[pad - 1 - i] = x[pad + 1 + i];
        x[pad + N_SAMPLES + i] = x[pad + N_SAMPLES - 2 - i];
    }
    let window: Vec<f32> = (0..N_FFT)
        .map(|k| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * k as f64 / N_FFT as f64).cos()) as f32)
        .collect();
    let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
    let mut frame = fft.make_input_vec();
    let mut spectrum = fft.make_output_vec();
    let mut scratch = fft.make_scratch_vec();
    let mut power = vec![0.0f64; bins];
    let mut mel = vec![0.0f64; filters.n_mels * N_FRAMES];
    for t in 0..N_FRAMES {
        let start = t * HOP;
        for (k, v) in frame.iter_mut().enumerate() {
            // The product in f32, as numpy multiplies the f32 frame by the f32 window.
            *v = (x[start + k] * window[k]) as f64;
        }
        fft.process_with_scratch(&mut frame, &mut spectrum, &mut scratch)
            .expect("buffers are the planner's own");
        for (p, c) in power.iter_mut().zip(&spectrum) {
            *p = c.re * c.re + c.im * c.im;
        }
        for m in 0..filters.n_mels {
            let row = &filters.weights[m * bins..(m + 1) * bins];
            mel[m * N_FRAMES + t] = row.iter().zip(&power).map(|(w, p)| w * p).sum();
        }
    }
    let mut max = f64::NEG_INFINITY;
    for v in mel.iter_mut() {
        *v = v.max(1e-10).log10();
        max = max.max(*v);
    }
    mel.iter()
        .map(|&l| ((l.max(max - 8.0) + 4.0) / 4.0) as f32)
        .collect()
}
