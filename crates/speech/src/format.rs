//! A transcript as the formats people and players read: plain text, JSON, SubRip and WebVTT.

use crate::Transcript;

/// `HH:MM:SS` then `sep` then milliseconds.
fn clock(seconds: f64, sep: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    format!("{h:02}:{m:02}:{s:02}{sep}{ms:03}")
}

/// SubRip: numbered cues from 1, `00:00:01,500 --> 00:00:04,000`.
pub fn srt(t: &Transcript) -> String {
    let mut out = String::new();
    for (i, s) in t.segments.iter().enumerate() {
        out.push_str(&format!(
            "{}\n{} --> {}\n{}\n\n",
            i + 1,
            clock(s.start, ','),
            clock(s.end, ','),
            s.text
        ));
    }
    out
}

/// WebVTT: the header, then `00:00:01.500 --> 00:00:04.000` cues.
pub fn vtt(t: &Transcript) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for s in &t.segments {
        out.push_str(&format!(
            "{} --> {}\n{}\n\n",
            clock(s.start, '.'),
            clock(s.end, '.'),
            s.text
        ));
    }
    out
}

/// OpenAI's `verbose_json`: the task, language, duration, text and segments (the fields this
/// decoder computes; no log-probabilities or compression ratios).
pub fn verbose_json(t: &Transcript) -> serde_json::Value {
    serde_json::json!({
        "task": "transcribe",
        "language": "english",
        "duration": t.duration,
        "text": t.text,
        "segments": t.segments.iter().map(|s| serde_json::json!({
            "id": s.id,
            "seek": 0,
            "start": s.start,
            "end": s.end,
            "text": s.text,
            "tokens": s.tokens,
            "temperature": 0.0,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TranscriptSegment;

    fn two() -> Transcript {
        let seg = |id, start, end, text: &str| TranscriptSegment {
            id,
            start,
            end,
            text: text.into(),
            tokens: vec![1],
        };
        Transcript {
            text: "a b".into(),
            duration: 3725.5,
            language: "en".into(),
            segments: vec![seg(0, 0.0, 1.5, "a"), seg(1, 3661.0405, 3725.5, "b")],
            speech: Vec::new(),
        }
    }

    #[test]
    fn subrip_and_webvtt_cues() {
        assert_eq!(
            srt(&two()),
            "1\n00:00:00,000 --> 00:00:01,500\na\n\n2\n01:01:01,041 --> 01:02:05,500\nb\n\n"
        );
        assert_eq!(
            vtt(&two()),
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\na\n\n01:01:01.041 --> 01:02:05.500\nb\n\n"
        );
        let v = verbose_json(&two());
        assert_eq!(v["segments"][1]["start"], 3661.0405);
        assert_eq!(v["text"], "a b");
    }
}
