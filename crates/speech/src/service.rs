//! The speech path every front-end enters: audio bytes → content key → result cache → decode
//! (limits checked) → 16 kHz mono → Silero VAD → windows → log-mel → the transcriber →
//! transcript → cache. A request for a recording already being transcribed waits for that
//! computation instead of starting its own (in-flight coalescing, on the same key).
//!
//! A recording of at most 30 s is transcribed whole when the VAD finds speech in it, and not
//! at all when it finds none (Whisper writes text over silence and noise); a longer one is cut
//! into windows of at most 30 s in the silences between its speech segments, and each window
//! is a segment of the transcript with its times.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use singlepoint_audio::mel::{N_SAMPLES, SAMPLE_RATE};
use singlepoint_audio::vad::{self as segmenting, Segment, VadSettings};
use singlepoint_audio::{AudioLimits, MelFilters};
use singlepoint_cache::coalesce::{Coalescer, Role};
use singlepoint_cache::{CacheKey, ResultCache};
use singlepoint_core::ModelDigest;

use crate::vad::SileroVad;
use crate::whisper::{
    BatchOptions, RunStats, Threads, Transcriber, WhisperFiles, WhisperModel, MAX_NEW,
};
use crate::{bundled, SpeechError};

/// How the speech models run and what they accept; validated once ([`SpeechOptions::validate`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SpeechOptions {
    /// Intra-op threads of the sessions (the encoders' and the decoder's run at once).
    pub threads: Threads,
    pub batch: BatchOptions,
    pub limits: AudioLimits,
    pub vad: VadSettings,
}

impl SpeechOptions {
    pub fn validate(&self) -> Result<(), String> {
        for (what, n) in [
            ("encoder", self.threads.encoder),
            ("decoder", self.threads.decoder),
        ] {
            if n == 0 || n > 256 {
                return Err(format!("{n} threads per {what} session is not 1 to 256"));
            }
        }
        if self.batch.max_encode_batch == 0
            || self.batch.max_decode_batch == 0
            || self.batch.encoders == 0
        {
            return Err("batch sizes must be at least 1".into());
        }
        if self.limits.max_bytes == 0
            || self.limits.max_seconds.is_nan()
            || self.limits.max_seconds <= 0.0
        {
            return Err("the byte and duration limits must be positive".into());
        }
        self.vad.validate()
    }

    /// What of the options changes a transcript: bound into every cache key.
    fn key_bytes(&self) -> Vec<u8> {
        let v = &self.vad;
        format!(
            "speech-v1;vad={},{},{},{};max_new={MAX_NEW};window={N_SAMPLES}",
            v.threshold, v.min_speech_ms, v.min_silence_ms, v.speech_pad_ms
        )
        .into_bytes()
    }
}

/// One stretch of a transcript with its times in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TranscriptSegment {
    pub id: usize,
    pub start: f64,
    pub end: f64,
    pub text: String,
    pub tokens: Vec<u32>,
}

/// A recording's transcript.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    pub text: String,
    /// Seconds of audio.
    pub duration: f64,
    pub language: String,
    pub segments: Vec<TranscriptSegment>,
    /// The VAD's speech segments (seconds), which decided the windows.
    pub speech: Vec<[f64; 2]>,
}

/// The VAD's answer for a recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VadAnswer {
    pub duration: f64,
    /// `[start, end)` in seconds.
    pub segments: Vec<[f64; 2]>,
    /// The same in samples at 16 kHz.
    pub samples: Vec<[usize; 2]>,
    /// Speech probability of each 32-ms chunk, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Vec<f32>>,
}

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Computed,
    Cache,
    /// Computed once for this request and another identical one in flight at the same time.
    Coalesced,
}

/// The speech models behind one path, shared by every front-end.
pub struct Speech {
    transcriber: Transcriber,
    vad: SileroVad,
    filters: MelFilters,
    cache: Option<Arc<ResultCache>>,
    options: SpeechOptions,
    digest: ModelDigest,
    in_flight: Coalescer<CacheKey, Result<Transcript, SpeechError>>,
}

fn seconds(samples: usize) -> f64 {
    samples as f64 / SAMPLE_RATE as f64
}

impl Speech {
    /// The bundled Whisper tiny.en and Silero VAD.
    pub fn bundled(
        options: SpeechOptions,
        cache: Option<Arc<ResultCache>>,
    ) -> Result<Speech, SpeechError> {
        Speech::load(
            &bundled::whisper(),
            bundled::SILERO_VAD,
            bundled::MEL_FILTERS,
            options,
            cache,
        )
    }

    pub fn load(
        whisper: &WhisperFiles,
        vad: &[u8],
        mel_filters: &[u8],
        options: SpeechOptions,
        cache: Option<Arc<ResultCache>>,
    ) -> Result<Speech, SpeechError> {
        options.validate().map_err(SpeechError::Model)?;
        let filters = MelFilters::from_f32le(mel_filters, 80)?;
        let model = Arc::new(WhisperModel::load(whisper, options.threads)?);
        let vad = SileroVad::load(vad)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&model.digest.0);
        hasher.update(&vad.digest.0);
        hasher.update(&blake3::hash(mel_filters).as_bytes()[..]);
        let digest = ModelDigest(*hasher.finalize().as_bytes());
        let transcriber = Transcriber::start(model, options.batch)?;
        Ok(Speech {
            transcriber,
            vad,
            filters,
            cache,
            options,
            digest,
            in_flight: Coalescer::new(),
        })
    }

    /// The digest cache keys bind: Whisper's files, the VAD's and the mel filters.
    pub fn digest(&self) -> &ModelDigest {
        &self.digest
    }

    pub fn options(&self) -> &SpeechOptions {
        &self.options
    }

    /// Engine runs so far: the transcriber's, and the VAD's chunk runs.
    pub fn stats(&self) -> (RunStats, u64) {
        (self.transcriber.stats(), self.vad.runs())
    }

    pub fn cache(&self) -> Option<&Arc<ResultCache>> {
        self.cache.as_ref()
    }

    fn decode(&self, bytes: &[u8], extension: Option<&str>) -> Result<Vec<f32>, SpeechError> {
        Ok(singlepoint_audio::decode(bytes, extension, SAMPLE_RATE, &self.options.limits)?.samples)
    }

    fn decode_pcm(
        &self,
        bytes: &[u8],
        rate: u32,
        channels: usize,
    ) -> Result<Vec<f32>, SpeechError> {
        let limits = &self.options.limits;
        Ok(
            singlepoint_audio::decode_pcm_s16le(bytes, rate, channels, SAMPLE_RATE, limits)?
                .samples,
        )
    }

    /// The transcript of an encoded recording (WAV, FLAC, MP3, Ogg Vorbis).
    pub fn transcribe(
        &self,
        bytes: &[u8],
        extension: Option<&str>,
    ) -> Result<(Transcript, Source), SpeechError> {
        self.answer(&[b"file\0", bytes], || {
            let samples = self.decode(bytes, extension)?;
            self.transcribe_samples(&samples)
        })
    }

    /// The transcript of raw little-endian s16 PCM at `rate` with `channels` channels.
    pub fn transcribe_pcm(
        &self,
        bytes: &[u8],
        rate: u32,
        channels: usize,
    ) -> Result<(Transcript, Source), SpeechError> {
        let tag = format!("pcm_s16le\0{rate}\0{channels}\0");
        self.answer(&[tag.as_bytes(), bytes], || {
            let samples = self.decode_pcm(bytes, rate, channels)?;
            self.transcribe_samples(&samples)
        })
    }

    /// The answer for the input `parts` name: from the cache, from an identical computation
    /// already in flight, or computed and stored (errors are neither stored nor kept).
    fn answer(
        &self,
        parts: &[&[u8]],
        compute: impl FnOnce() -> Result<Transcript, SpeechError>,
    ) -> Result<(Transcript, Source), SpeechError> {
        let key = CacheKey::from_parts(&self.digest, &self.options.key_bytes(), parts);
        if let Some(t) = self.cached(&key) {
            return Ok((t, Source::Cache));
        }
        let (answer, role) = self.in_flight.run(key, || {
            let answer = compute();
            if let Ok(t) = &answer {
                self.store(key, t);
            }
            answer
        });
        let source = match role {
            Role::Leader => Source::Computed,
            Role::Follower => Source::Coalesced,
        };
        answer.map(|t| (t, source))
    }

    fn cached(&self, key: &CacheKey) -> Option<Transcript> {
        let bytes = self.cache.as_ref()?.get(key)?;
        serde_json::from_slice(&bytes).ok()
    }

    fn store(&self, key: CacheKey, transcript: &Transcript) {
        if let (Some(cache), Ok(bytes)) = (&self.cache, serde_json::to_vec(transcript)) {
            cache.insert(&self.digest, key, bytes.into());
        }
    }

    /// The transcript of 16-kHz mono samples.
    pub fn transcribe_samples(&self, samples: &[f32]) -> Result<Transcript, SpeechError> {
        let probs = self.vad.probabilities(samples)?;
        let speech = segmenting::segments(&probs, samples.len(), SAMPLE_RATE, &self.options.vad);
        let windows = if samples.len() <= N_SAMPLES {
            if speech.is_empty() {
                Vec::new()
            } else {
                vec![Segment {
                    start: 0,
                    end: samples.len(),
                }]
            }
        } else {
            segmenting::windows(&speech, N_SAMPLES)
        };
        // Every window is queued before any is awaited, so that they batch.
        let pending: Vec<_> = windows
            .iter()
            .map(|w| {
                let mel = singlepoint_audio::log_mel(&samples[w.start..w.end], &self.filters);
                self.transcriber.submit(mel)
            })
            .collect();
        let model = self.transcriber.model();
        let mut segments = Vec::with_capacity(windows.len());
        for (id, (w, rx)) in windows.iter().zip(pending).enumerate() {
            let tokens = rx.recv().map_err(|_| SpeechError::Stopped)??;
            let text = model.text(&tokens)?;
            if text.is_empty() {
                continue;
            }
            segments.push(TranscriptSegment {
                id,
                start: seconds(w.start),
                end: seconds(w.end),
                text,
                tokens,
            });
        }
        for (i, s) in segments.iter_mut().enumerate() {
            s.id = i;
        }
        let text = segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Transcript {
            text,
            duration: seconds(samples.len()),
            language: "en".into(),
            segments,
            speech: speech
                .iter()
                .map(|s| [seconds(s.start), seconds(s.end)])
                .collect(),
        })
    }

    /// The VAD's speech segments of an encoded recording.
    pub fn detect_speech(
        &self,
        bytes: &[u8],
        extension: Option<&str>,
        probabilities: bool,
    ) -> Result<VadAnswer, SpeechError> {
        let samples = self.decode(bytes, extension)?;
        self.vad_answer(&samples, probabilities)
    }

    /// The VAD's speech segments of raw little-endian s16 PCM at `rate`.
    pub fn detect_speech_pcm(
        &self,
        bytes: &[u8],
        rate: u32,
        channels: usize,
        probabilities: bool,
    ) -> Result<VadAnswer, SpeechError> {
        let samples = self.decode_pcm(bytes, rate, channels)?;
        self.vad_answer(&samples, probabilities)
    }

    fn vad_answer(&self, samples: &[f32], probabilities: bool) -> Result<VadAnswer, SpeechError> {
        let probs = self.vad.probabilities(samples)?;
        let speech = segmenting::segments(&probs, samples.len(), SAMPLE_RATE, &self.options.vad);
        Ok(VadAnswer {
            duration: seconds(samples.len()),
            segments: speech
                .iter()
                .map(|s| [seconds(s.start), seconds(s.end)])
                .collect(),
            samples: speech.iter().map(|s| [s.start, s.end]).collect(),
            probabilities: probabilities.then_some(probs),
        })
    }
}
