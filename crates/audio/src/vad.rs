//! Speech segments from per-chunk speech probabilities: silero-vad's `get_speech_timestamps`
//! (6.2.3, `max_speech_duration_s` = inf), and the 30-s windows a long recording is cut into
//! at the silences between them.

/// Samples per chunk at 16 kHz, and the context the model sees before each chunk.
pub const CHUNK: usize = 512;
pub const CONTEXT: usize = 64;

/// The segmenting settings (silero-vad's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VadSettings {
    pub threshold: f32,
    pub min_speech_ms: u32,
    pub min_silence_ms: u32,
    pub speech_pad_ms: u32,
}

impl Default for VadSettings {
    fn default() -> Self {
        VadSettings {
            threshold: 0.5,
            min_speech_ms: 250,
            min_silence_ms: 100,
            speech_pad_ms: 30,
        }
    }
}

impl VadSettings {
    /// Checked once, where the settings come in.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(format!(
                "the speech threshold {} is outside (0, 1)",
                self.threshold
            ));
        }
        for (name, ms) in [
            ("minimum speech", self.min_speech_ms),
            ("minimum silence", self.min_silence_ms),
            ("speech padding", self.speech_pad_ms),
        ] {
            if ms > 60_000 {
                return Err(format!("the {name} of {ms} ms is over a minute"));
            }
        }
        Ok(())
    }
}

/// One stretch of speech, `[start, end)` in samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub start: usize,
    pub end: usize,
}

impl Segment {
    pub fn start_seconds(&self, rate: u32) -> f64 {
        self.start as f64 / rate as f64
    }
    pub fn end_seconds(&self, rate: u32) -> f64 {
        self.end as f64 / rate as f64
    }
}

/// The speech segments of `n_samples` samples at `rate` whose chunk `k` (samples
/// `[512k, 512k + 512)`) has speech probability `probs[k]`.
pub fn segments(probs: &[f32], n_samples: usize, rate: u32, s: &VadSettings) -> Vec<Segment> {
    let per_ms = rate as f64 / 1000.0;
    let neg = (s.threshold - 0.15).max(0.01);
    let min_speech = per_ms * s.min_speech_ms as f64;
    let min_silence = per_ms * s.min_silence_ms as f64;
    let pad = per_ms * s.speech_pad_ms as f64;
    let mut speeches: Vec<Segment> = Vec::new();
    let mut start: Option<usize> = None;
    let mut temp_end = 0usize;
    for (i, &p) in probs.iter().enumerate() {
        let at = CHUNK * i;
        if p >= s.threshold && temp_end != 0 {
            temp_end = 0;
        }
        if p >= s.threshold && start.is_none() {
            start = Some(at);
            continue;
        }
        if let (true, Some(begin)) = (p < neg, start) {
            if temp_end == 0 {
                temp_end = at;
            }
            if ((at - temp_end) as f64) < min_silence {
                continue;
            }
            if (temp_end - begin) as f64 > min_speech {
                speeches.push(Segment {
                    start: begin,
                    end: temp_end,
                });
            }
            start = None;
            temp_end = 0;
        }
    }
    if let Some(begin) = start {
        if n_samples.saturating_sub(begin) as f64 > min_speech {
            speeches.push(Segment {
                start: begin,
                end: n_samples,
            });
        }
    }
    let pad = pad as usize;
    let count = speeches.len();
    for i in 0..count {
        if i == 0 {
            speeches[0].start = speeches[0].start.saturating_sub(pad);
        }
        if i + 1 < count {
            let gap = speeches[i + 1].start.saturating_sub(speeches[i].end);
            if gap < 2 * pad {
                speeches[i].end += gap / 2;
                speeches[i + 1].start = speeches[i + 1].start.saturating_sub(gap / 2);
            } else {
                speeches[i].end = (speeches[i].end + pad).min(n_samples);
                speeches[i + 1].start = speeches[i + 1].start.saturating_sub(pad);
            }
        } else {
            speeches[i].end = (speeches[i].end + pad).min(n_samples);
        }
    }
    speeches
}

/// Cuts `n_samples` of audio into windows of at most `max_len` samples that hold every
/// segment: consecutive segments share a window while they fit, a window starts at its first
/// segment's start and ends at its last one's end, so cuts fall in the silences between
/// segments; a segment longer than `max_len` is cut into pieces of `max_len`.
pub fn windows(segments: &[Segment], max_len: usize) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    let max_len = max_len.max(1);
    for seg in segments {
        match out.last_mut() {
            Some(w) if seg.end - w.start <= max_len && seg.start >= w.start => w.end = seg.end,
            _ => {
                let mut at = seg.start;
                while seg.end - at > max_len {
                    out.push(Segment {
                        start: at,
                        end: at + max_len,
                    });
                    at += max_len;
                }
                out.push(Segment {
                    start: at,
                    end: seg.end,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_blip_is_not_speech_and_a_long_stretch_is() {
        let s = VadSettings::default();
        // 5 chunks (160 ms) of speech: under 250 ms.
        let mut p = vec![0.0; 40];
        p[10..15].fill(0.9);
        assert!(segments(&p, 40 * CHUNK, 16_000, &s).is_empty());
        // 20 chunks (640 ms): one segment, padded by 480 samples on each side.
        p[10..30].fill(0.9);
        assert_eq!(
            segments(&p, 40 * CHUNK, 16_000, &s),
            vec![Segment {
                start: 10 * CHUNK - 480,
                end: 30 * CHUNK + 480
            }]
        );
    }

    #[test]
    fn windows_cut_in_silences_and_never_exceed_the_limit() {
        let seg = |a, b| Segment { start: a, end: b };
        let w = windows(&[seg(0, 10), seg(12, 25), seg(27, 40), seg(41, 95)], 30);
        assert_eq!(w, vec![seg(0, 25), seg(27, 40), seg(41, 71), seg(71, 95)]);
        assert!(w.iter().all(|w| w.end - w.start <= 30));
    }
}
