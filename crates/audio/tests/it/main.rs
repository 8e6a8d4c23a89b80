//! The audio front end on the shipped speech clips: decoding every container, Whisper's
//! log-mel features against the numpy reference, silero-vad's segmenting against the
//! package's own segments, and bad input.

use std::path::PathBuf;

use singlepoint_audio::vad::{segments, VadSettings};
use singlepoint_audio::{decode, decode_pcm_s16le, log_mel, AudioError, AudioLimits, MelFilters};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn speech(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/data/speech").join(name)).unwrap()
}

/// The PCM of a canonical 44-byte-header s16 WAV, as the reference reads it (x / 32768).
fn wav_samples(bytes: &[u8]) -> Vec<f32> {
    bytes[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
        .collect()
}

fn filters() -> MelFilters {
    let bytes =
        std::fs::read(repo().join("models/whisper-tiny-en/mel_filters_80x201.f32le")).unwrap();
    MelFilters::from_f32le(&bytes, 80).unwrap()
}

#[test]
fn a_16k_mono_wav_decodes_to_its_samples_exactly() {
    let bytes = speech("jfk.wav");
    let audio = decode(&bytes, Some("wav"), 16_000, &AudioLimits::default()).unwrap();
    assert_eq!(audio.source_rate, 16_000);
    assert_eq!(audio.source_channels, 1);
    assert_eq!(audio.samples, wav_samples(&bytes));
}

#[test]
fn flac_mp3_ogg_and_stereo_44k_decode_to_the_same_speech() {
    let reference = wav_samples(&speech("jfk.wav"));
    let limits = AudioLimits::default();
    for (name, ext, tolerance) in [
        ("formats/jfk.flac", "flac", 1e-6),
        ("formats/jfk.ogg", "ogg", 0.2),
        ("formats/jfk.mp3", "mp3", 0.2),
        ("formats/jfk_44k_stereo.wav", "wav", 0.2),
    ] {
        // No hint: the probe finds the container from the bytes.
        let audio =
            decode(&speech(name), None, 16_000, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(audio.rate, 16_000);
        let len_diff = audio.samples.len().abs_diff(reference.len());
        assert!(
            len_diff <= 1200,
            "{name}: {} samples vs {}",
            audio.samples.len(),
            reference.len()
        );
        // Lossy codecs shift and colour the signal; their energy per 100 ms follows the
        // reference's (a correlation of the envelopes), and lossless FLAC is exact.
        let env = |x: &[f32]| -> Vec<f64> {
            x.chunks(1600)
                .map(|c| c.iter().map(|v| (*v as f64).powi(2)).sum::<f64>())
                .collect()
        };
        let (a, b) = (env(&audio.samples), env(&reference));
        let n = a.len().min(b.len());
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (ma, mb) = (mean(&a[..n]), mean(&b[..n]));
        let cov: f64 = (0..n).map(|i| (a[i] - ma) * (b[i] - mb)).sum();
        let va: f64 = (0..n).map(|i| (a[i] - ma).powi(2)).sum();
        let vb: f64 = (0..n).map(|i| (b[i] - mb).powi(2)).sum();
        let r = cov / (va * vb).sqrt();
        assert!(r > 0.98, "{name} ({ext}): envelope correlation {r}");
        if tolerance < 1e-3 {
            assert_eq!(audio.samples.len(), reference.len());
            let err = audio
                .samples
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err <= tolerance, "{name}: {err}");
        }
    }
}

#[test]
fn raw_pcm_with_a_declared_rate_is_read_like_the_wav() {
    let bytes = speech("cards_001.wav");
    let audio = decode_pcm_s16le(&bytes[44..], 16_000, 1, 16_000, &AudioLimits::default()).unwrap();
    assert_eq!(audio.samples, wav_samples(&bytes));
    assert_eq!(
        decode_pcm_s16le(&bytes[44..45], 16_000, 1, 16_000, &AudioLimits::default())
            .unwrap_err()
            .to_string(),
        "malformed audio: 1 bytes is not a whole number of 1-channel 16-bit frames"
    );
    assert_eq!(
        decode_pcm_s16le(&bytes[44..], 3, 1, 16_000, &AudioLimits::default()).unwrap_err(),
        AudioError::Rate(3)
    );
}

#[test]
fn log_mel_matches_the_numpy_reference_within_1e_4() {
    let filters = filters();
    for clip in ["jfk", "cards_001"] {
        let audio = wav_samples(&speech(&format!("{clip}.wav")));
        let ours = log_mel(&audio, &filters);
        let reference: Vec<f32> = speech(&format!("mel/{clip}.f32le"))
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(ours.len(), 80 * 3000);
        let err = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("log-mel {clip}: max |ours - numpy| {err:.2e}");
        assert!(err < 1e-4, "{clip}: max |diff| {err}");
    }
}

#[test]
fn segments_from_the_packages_probabilities_are_the_packages_segments() {
    let expected: serde_json::Value =
        serde_json::from_slice(&speech("expected_segments.json")).unwrap();
    for clip in expected["clips"].as_array().unwrap() {
        let probs: Vec<f32> = clip["chunk_probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap() as f32)
            .collect();
        let n = clip["n_samples"].as_u64().unwrap() as usize;
        let ours: Vec<[usize; 2]> = segments(&probs, n, 16_000, &VadSettings::default())
            .iter()
            .map(|s| [s.start, s.end])
            .collect();
        let want: Vec<[usize; 2]> = clip["segments_samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                [
                    s[0].as_u64().unwrap() as usize,
                    s[1].as_u64().unwrap() as usize,
                ]
            })
            .collect();
        // The probabilities are rounded to 5 decimals; segments within 50 ms (800 samples).
        assert_eq!(
            ours.len(),
            want.len(),
            "{}: {ours:?} vs {want:?}",
            clip["file"]
        );
        for (o, w) in ours.iter().zip(&want) {
            assert!(
                o[0].abs_diff(w[0]) <= 800 && o[1].abs_diff(w[1]) <= 800,
                "{}: {ours:?} vs {want:?}",
                clip["file"]
            );
        }
    }
}

#[test]
fn bad_audio_gets_a_clear_error() {
    let limits = AudioLimits::default();
    let wav = speech("jfk.wav");
    let err = |bytes: &[u8], limits: &AudioLimits| decode(bytes, None, 16_000, limits).unwrap_err();
    assert_eq!(err(b"", &limits), AudioError::Empty);
    assert_eq!(
        err(b"this is a text file, not audio at all....", &limits),
        AudioError::NotAudio
    );
    let png = std::fs::read(repo().join("photos/chelsea.png")).unwrap();
    assert_eq!(err(&png, &limits), AudioError::NotAudio);
    // Cut off after a quarter of its samples.
    assert!(
        matches!(
            err(&wav[..wav.len() / 4], &limits),
            AudioError::Truncated { .. }
        ),
        "{}",
        err(&wav[..wav.len() / 4], &limits)
    );
    // A header with no samples.
    let mut empty = wav[..44].to_vec();
    empty[40..44].copy_from_slice(&0u32.to_le_bytes());
    empty[4..8].copy_from_slice(&36u32.to_le_bytes());
    assert_eq!(err(&empty, &limits), AudioError::NoSamples);
    // A rate of 3 Hz.
    let mut slow = wav.clone();
    slow[24..28].copy_from_slice(&3u32.to_le_bytes());
    slow[28..32].copy_from_slice(&6u32.to_le_bytes());
    assert_eq!(err(&slow, &limits), AudioError::Rate(3));
    // Over the limits.
    let small = AudioLimits {
        max_bytes: 1000,
        max_seconds: 3600.0,
    };
    assert!(matches!(
        err(&wav, &small),
        AudioError::TooLarge {
            bytes: 352044,
            limit: 1000
        }
    ));
    let short = AudioLimits {
        max_bytes: 1 << 30,
        max_seconds: 5.0,
    };
    assert_eq!(
        err(&wav, &short).to_string(),
        "11 s of audio is over the limit of 5 s"
    );
    assert!(matches!(
        err(&speech("formats/jfk.mp3"), &short),
        AudioError::TooLong { .. }
    ));
}
