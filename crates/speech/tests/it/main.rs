//! The speech tasks against the references in tests/data/speech: Silero VAD's probabilities
//! and segments (silero-vad 6.2.3), Whisper's transcripts and token ids (whisper_onnx.py on
//! the same graphs), alone, concurrently and joining a running decode batch; cache hits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use singlepoint_speech::service::{Source, Transcript};
use singlepoint_speech::vad::SileroVad;
use singlepoint_speech::whisper::{BatchOptions, Threads, Transcriber, WhisperModel};
use singlepoint_speech::{bundled, Speech, SpeechOptions};

/// ONNX Runtime's library, fetched once if this machine has none (as `transcribe` does).
fn ort() {
    static FETCH: std::sync::Once = std::sync::Once::new();
    FETCH.call_once(|| {
        if singlepoint_backend::ort_runtime::locate()
            .ok()
            .flatten()
            .is_none()
        {
            singlepoint_backend::ort_runtime::fetch().expect("fetching ONNX Runtime for the tests");
        }
    });
}

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/speech")
        .join(rel)
}

fn json(rel: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(data(rel)).unwrap()).unwrap()
}

/// `data/speech/x.wav` in the references is `x.wav` here.
fn clip(file: &serde_json::Value) -> PathBuf {
    data(file.as_str().unwrap().trim_start_matches("data/speech/"))
}

fn samples(path: &PathBuf) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    singlepoint_audio::decode(&bytes, Some("wav"), 16_000, &Default::default())
        .unwrap()
        .samples
}

#[test]
fn vad_probabilities_and_segments_match_the_package() {
    ort();
    let vad = SileroVad::load(bundled::SILERO_VAD).unwrap();
    let expected = json("expected_segments.json");
    for c in expected["clips"].as_array().unwrap() {
        let path = clip(&c["file"]);
        let audio = samples(&path);
        let probs = vad.probabilities(&audio).unwrap();
        let want: Vec<f64> = c["chunk_probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(probs.len(), want.len(), "{}", path.display());
        let worst = probs
            .iter()
            .zip(&want)
            .map(|(&p, &w)| (p as f64 - w).abs())
            .fold(0.0, f64::max);
        // The reference is rounded to 5 decimals.
        assert!(worst <= 1e-4, "{}: max |diff| {worst}", path.display());
        let segments =
            singlepoint_audio::vad::segments(&probs, audio.len(), 16_000, &Default::default());
        let want: Vec<[f64; 2]> = c["segments_seconds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| [s[0].as_f64().unwrap(), s[1].as_f64().unwrap()])
            .collect();
        assert_eq!(
            segments.len(),
            want.len(),
            "{}: {segments:?}",
            path.display()
        );
        for (s, w) in segments.iter().zip(&want) {
            assert!(
                (s.start_seconds(16_000) - w[0]).abs() <= 0.05
                    && (s.end_seconds(16_000) - w[1]).abs() <= 0.05,
                "{}: {s:?} against {w:?}",
                path.display()
            );
        }
    }
}

fn speech() -> Speech {
    ort();
    Speech::bundled(SpeechOptions::default(), None).unwrap()
}

#[test]
fn transcripts_equal_the_reference_on_every_clip_concurrently() {
    let speech = Arc::new(speech());
    let expected = json("expected_transcripts.json");
    let clips = expected["clips"].as_array().unwrap().clone();
    let handles: Vec<_> = clips
        .iter()
        .map(|c| {
            let (speech, path) = (speech.clone(), clip(&c["file"]));
            std::thread::spawn(move || {
                let bytes = std::fs::read(&path).unwrap();
                speech.transcribe(&bytes, Some("wav")).unwrap().0
            })
        })
        .collect();
    for (c, h) in clips.iter().zip(handles) {
        let t = h.join().unwrap();
        let file = c["file"].as_str().unwrap();
        if file.ends_with("nonspeech_telephone_noise.wav") {
            // The VAD finds no speech: no text (the model alone would write "you").
            assert_eq!(t.text, "", "{file}");
            assert!(t.segments.is_empty() && t.speech.is_empty(), "{file}");
            continue;
        }
        assert_eq!(t.text, c["transcript"].as_str().unwrap(), "{file}");
        let ids: Vec<u32> = c["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(t.segments.len(), 1, "{file}");
        assert_eq!(t.segments[0].tokens, ids, "{file}");
        assert_eq!(t.segments[0].start, 0.0);
        assert!((t.segments[0].end - c["seconds"].as_f64().unwrap()).abs() < 1e-3);
    }
    let (stats, _) = speech.stats();
    assert_eq!(
        stats.encoded, 16,
        "every clip with speech encoded once: {stats:?}"
    );
    assert!(
        stats.decoder_rows > stats.decoder_runs,
        "decoding steps shared across requests: {stats:?}"
    );
}

#[test]
fn a_request_joins_a_running_decode_batch_and_both_match() {
    ort();
    let model = Arc::new(WhisperModel::load(&bundled::whisper(), Threads::default()).unwrap());
    let filters = singlepoint_audio::MelFilters::from_f32le(bundled::MEL_FILTERS, 80).unwrap();
    let transcriber = Transcriber::start(model.clone(), BatchOptions::default()).unwrap();
    let expected = json("expected_transcripts.json");
    let find = |name: &str| {
        expected["clips"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["file"].as_str().unwrap().ends_with(name))
            .unwrap()
            .clone()
    };
    let (long, short) = (find("jfk.wav"), find("cards_001.wav"));
    let mel =
        |c: &serde_json::Value| singlepoint_audio::log_mel(&samples(&clip(&c["file"])), &filters);
    // The short one encoded beforehand, so that it reaches the decoder while the long one
    // is still decoding: it joins the running batch between two steps.
    let encoded = transcriber.encode(mel(&short)).recv().unwrap().unwrap();
    let first = transcriber.submit(mel(&long));
    let start = Instant::now();
    while transcriber.stats().decoder_runs < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "decoding never started"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let second = transcriber.decode(encoded);
    let second = second.recv().unwrap().unwrap();
    let first = first.recv().unwrap().unwrap();
    let stats = transcriber.stats();
    assert_eq!(stats.joined_running, 1, "{stats:?}");
    assert_eq!(stats.max_decode_rows, 2, "{stats:?}");
    assert_eq!(
        model.text(&first).unwrap(),
        long["transcript"].as_str().unwrap()
    );
    assert_eq!(
        model.text(&second).unwrap(),
        short["transcript"].as_str().unwrap()
    );
}

#[test]
fn a_repeated_file_is_a_cache_hit_with_no_engine_run() {
    ort();
    let cache = Arc::new(singlepoint_cache::ResultCache::open(
        &singlepoint_cache::CacheConfig {
            memory_bytes: 64 << 20,
            disk: None,
            ttl: None,
            disk_page_cache_bytes: 0,
        },
    ));
    let speech = Speech::bundled(SpeechOptions::default(), Some(cache)).unwrap();
    let bytes = std::fs::read(data("cards_001.wav")).unwrap();
    let (first, source) = speech.transcribe(&bytes, Some("wav")).unwrap();
    assert_eq!(source, Source::Computed);
    let before = speech.stats();
    let (again, source) = speech.transcribe(&bytes, None).unwrap();
    assert_eq!(source, Source::Cache);
    assert_eq!(again, first);
    assert_eq!(speech.stats(), before, "no engine ran for the hit");
    // Other VAD settings are another key.
    let mut options = SpeechOptions::default();
    options.vad.threshold = 0.6;
    let other = Speech::bundled(options, speech.cache().cloned()).unwrap();
    assert_eq!(other.transcribe(&bytes, None).unwrap().1, Source::Computed);
}

#[test]
fn bad_audio_is_an_error_and_the_service_goes_on() {
    let speech = speech();
    for (bytes, want) in [
        (Vec::new(), "empty"),
        (b"not audio at all, just text".to_vec(), "not an audio file"),
    ] {
        let e = speech.transcribe(&bytes, None).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    let wav = std::fs::read(data("jfk.wav")).unwrap();
    let e = speech
        .transcribe(&wav[..wav.len() / 3], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated"), "{e}");
    let bytes = std::fs::read(data("cards_001.wav")).unwrap();
    assert_eq!(
        speech.transcribe(&bytes, None).unwrap().0.text,
        "10 of clubs."
    );
}

#[test]
fn a_long_recording_is_cut_at_silences_into_timed_windows() {
    // 41 s: three clips with silences between them.
    let mut audio = Vec::new();
    let gap = vec![0f32; 16_000];
    for name in [
        "jfk.wav",
        "librivox_0870.wav",
        "jfk.wav",
        "cards_005.wav",
        "jfk.wav",
    ] {
        audio.extend(samples(&data(name)));
        audio.extend(&gap);
    }
    let speech = speech();
    let t = speech.transcribe_samples(&audio).unwrap();
    assert!(t.duration > 30.0);
    assert!(t.segments.len() >= 2, "{t:?}");
    for s in &t.segments {
        assert!(s.end - s.start <= 30.0 + 1e-9, "{s:?}");
    }
    for w in t.segments.windows(2) {
        assert!(w[0].end <= w[1].start, "{t:?}");
    }
    assert!(
        t.text.contains("ask not what your country can do for you"),
        "{}",
        t.text
    );
    assert!(t.text.contains("Dashwood"), "{}", t.text);
}

/// Identical recordings in flight at once are transcribed once: the others wait for that
/// computation and get its answer, marked coalesced (no cache here, so nothing else can
/// answer them).
#[test]
fn identical_requests_in_flight_are_computed_once() {
    let speech = Arc::new(speech());
    let bytes = Arc::new(std::fs::read(clip(&serde_json::json!("jfk.wav"))).unwrap());
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (speech, bytes, barrier) = (speech.clone(), bytes.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                speech.transcribe(&bytes, Some("wav")).unwrap()
            })
        })
        .collect();
    let answers: Vec<(Transcript, Source)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let (stats, _) = speech.stats();
    assert_eq!(stats.encoded, 1, "{stats:?}");
    let computed = answers
        .iter()
        .filter(|(_, s)| *s == Source::Computed)
        .count();
    assert_eq!(
        computed,
        1,
        "{:?}",
        answers.iter().map(|a| a.1).collect::<Vec<_>>()
    );
    assert!(answers.iter().all(|(t, _)| *t == answers[0].0));
    // Once done, nothing is left in flight: the same bytes are computed again (no cache).
    assert_eq!(speech.transcribe(&bytes, None).unwrap().1, Source::Computed);
}
