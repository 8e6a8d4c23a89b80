//! Sample-rate conversion with `rubato`'s synchronous FFT resampler.

use rubato::{FftFixedIn, Resampler};

use crate::AudioError;

const CHUNK: usize = 1024;

/// `samples` at `from` Hz → the same audio at `to` Hz, `round(len · to / from)` samples long,
/// with the resampler's delay removed (in whole output samples) so that sample times line up.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
    if from == to {
        return Ok(samples.to_vec());
    }
    let resample_error = |e: &dyn std::fmt::Display| AudioError::Resample {
        from,
        to,
        reason: e.to_string(),
    };
    let mut resampler = FftFixedIn::<f32>::new(from as usize, to as usize, CHUNK, 2, 1)
        .map_err(|e| resample_error(&e))?;
    let expected = ((samples.len() as u64 * to as u64 + from as u64 / 2) / from as u64) as usize;
    let delay = resampler.output_delay();
    let mut out: Vec<f32> = Vec::with_capacity(expected + delay + CHUNK);
    let mut at = 0;
    while samples.len() - at >= resampler.input_frames_next() {
        let n = resampler.input_frames_next();
        let chunk = resampler
            .process(&[&samples[at..at + n]], None)
            .map_err(|e| resample_error(&e))?;
        out.extend_from_slice(&chunk[0]);
        at += n;
    }
    if at < samples.len() {
        let chunk = resampler
            .process_partial(Some(&[&samples[at..]]), None)
            .map_err(|e| resample_error(&e))?;
        out.extend_from_slice(&chunk[0]);
    }
    while out.len() < expected + delay {
        let chunk = resampler
            .process_partial::<&[f32]>(None, None)
            .map_err(|e| resample_error(&e))?;
        if chunk[0].is_empty() {
            break;
        }
        out.extend_from_slice(&chunk[0]);
    }
    out.drain(..delay.min(out.len()));
    out.truncate(expected);
    out.resize(expected, 0.0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, hz: f32, seconds: f32) -> Vec<f32> {
        (0..(rate as f32 * seconds) as usize)
            .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    #[test]
    fn a_tone_keeps_its_length_phase_and_amplitude() {
        for from in [8_000u32, 22_050, 44_100, 48_000] {
            let x = sine(from, 440.0, 1.3);
            let y = resample(&x, from, 16_000).unwrap();
            let want = sine(16_000, 440.0, 1.3);
            let rounded = (x.len() as f64 * 16_000.0 / from as f64).round() as usize;
            assert_eq!(y.len(), rounded, "{from}");
            // Away from the edges the resampled tone is the tone at the new rate.
            let err = y[800..y.len() - 800]
                .iter()
                .zip(&want[800..])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            // The resampler's delay is removed in whole samples; what is left of it (a third of
            // an output sample, 21 µs, from 48 kHz) is the error allowed here.
            assert!(err < 0.035, "{from} Hz: max error {err}");
        }
    }

    #[test]
    fn the_same_rate_is_a_copy() {
        let x = sine(16_000, 300.0, 0.2);
        assert_eq!(resample(&x, 16_000, 16_000).unwrap(), x);
    }
}
