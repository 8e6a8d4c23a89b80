//! Encoded audio → mono f32 samples at the model's rate.
//!
//! `symphonia` reads the container and codec (WAV with PCM or ADPCM, FLAC, MP3, Ogg Vorbis),
//! the channels are averaged into one, and `rubato` resamples to the rate asked for. Limits on
//! bytes and duration are checked before anything large is allocated: the byte limit before
//! probing, the duration from the header when it has one and again while decoding, so an
//! hours-long upload stops at its limit instead of filling memory.

use std::io::Cursor;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::resample::resample;
use crate::AudioError;

/// The rates a file may declare: below 1 kHz or above 384 kHz is no real recording.
pub const MIN_RATE: u32 = 1_000;
pub const MAX_RATE: u32 = 384_000;

/// Samples in one MPEG-1 Layer III frame.
const MP3_FRAME: usize = 1152;

/// What one input may cost before decoding starts or while it runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AudioLimits {
    /// Encoded bytes.
    pub max_bytes: usize,
    /// Seconds of audio.
    pub max_seconds: f64,
}

impl AudioLimits {
    /// An empty input, or one over the byte limit, is refused before anything is decoded.
    fn check_bytes(&self, bytes: &[u8]) -> Result<(), AudioError> {
        if bytes.is_empty() {
            return Err(AudioError::Empty);
        }
        if bytes.len() > self.max_bytes {
            return Err(AudioError::TooLarge {
                bytes: bytes.len(),
                limit: self.max_bytes,
            });
        }
        Ok(())
    }
}

impl Default for AudioLimits {
    fn default() -> Self {
        AudioLimits {
            max_bytes: 100 << 20,
            max_seconds: 3.0 * 3600.0,
        }
    }
}

/// Decoded mono audio at [`Audio::rate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    pub samples: Vec<f32>,
    pub rate: u32,
    /// The file's own rate and channel count, before downmixing and resampling.
    pub source_rate: u32,
    pub source_channels: usize,
}

impl Audio {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.rate as f64
    }
}

/// Decodes `bytes` (`extension`, when known, is a hint for the probe) into mono samples at
/// `rate`.
pub fn decode(
    bytes: &[u8],
    extension: Option<&str>,
    rate: u32,
    limits: &AudioLimits,
) -> Result<Audio, AudioError> {
    limits.check_bytes(bytes)?;
    let mut hint = Hint::new();
    if let Some(ext) = extension {
        hint.with_extension(ext);
    }
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            source,
            // Encoder delay and padding (LAME's header in MP3) trimmed, so that sample times
            // are the recording's.
            &FormatOptions {
                enable_gapless: true,
                ..FormatOptions::default()
            },
            &MetadataOptions::default(),
        )
        .map_err(|e| match e {
            SymphoniaError::Unsupported(_) => AudioError::NotAudio,
            SymphoniaError::IoError(_) => AudioError::NotAudio,
            other => AudioError::Malformed(other.to_string()),
        })?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or(AudioError::NoAudioTrack)?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let source_rate = params.sample_rate.ok_or(AudioError::NoRate)?;
    if !(MIN_RATE..=MAX_RATE).contains(&source_rate) {
        return Err(AudioError::Rate(source_rate));
    }
    let declared_frames = params.n_frames;
    if let Some(frames) = declared_frames {
        let seconds = frames as f64 / source_rate as f64;
        if seconds > limits.max_seconds {
            return Err(AudioError::TooLong {
                seconds,
                limit: limits.max_seconds,
            });
        }
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| match e {
            SymphoniaError::Unsupported(what) => AudioError::Codec(what.to_string()),
            other => AudioError::Malformed(other.to_string()),
        })?;
    let max_frames = (limits.max_seconds * source_rate as f64).ceil() as u64;
    let mut mono: Vec<f32> = Vec::new();
    let mut channels = params.channels.map(|c| c.count()).unwrap_or(0);
    let mut buffer: Option<SampleBuffer<f32>> = None;
    let mut bad_packets = 0usize;
    let mut good_packets = 0usize;
    let mut ended_early = false;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break
            }
            Err(SymphoniaError::ResetRequired) => break,
            Err(SymphoniaError::DecodeError(_)) | Err(SymphoniaError::IoError(_)) => {
                ended_early = true;
                break;
            }
            Err(e) => return Err(AudioError::Malformed(e.to_string())),
        };
        if packet.track_id() != track_id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(decoded) => {
                good_packets += 1;
                let spec = *decoded.spec();
                if spec.rate != source_rate {
                    return Err(AudioError::Malformed(format!(
                        "the rate changes from {source_rate} Hz to {} Hz inside the stream",
                        spec.rate
                    )));
                }
                channels = spec.channels.count();
                if channels == 0 {
                    return Err(AudioError::Malformed("a packet has no channels".into()));
                }
                let needed = decoded.capacity() as u64;
                let buf = match &mut buffer {
                    Some(b) if b.capacity() as u64 >= needed * channels as u64 => b,
                    _ => buffer.insert(SampleBuffer::new(needed, spec)),
                };
                buf.copy_interleaved_ref(decoded);
                let scale = 1.0 / channels as f32;
                mono.extend(
                    buf.samples()
                        .chunks_exact(channels)
                        .map(|frame| frame.iter().sum::<f32>() * scale),
                );
                if mono.len() as u64 > max_frames {
                    return Err(AudioError::TooLong {
                        seconds: mono.len() as f64 / source_rate as f64,
                        limit: limits.max_seconds,
                    });
                }
            }
            Err(SymphoniaError::DecodeError(_)) => bad_packets += 1,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                ended_early = true;
                break;
            }
            Err(SymphoniaError::Unsupported(what)) => return Err(AudioError::Codec(what.into())),
            Err(e) => return Err(AudioError::Malformed(e.to_string())),
        }
    }
    if good_packets == 0 && bad_packets > 0 {
        return Err(AudioError::Malformed(format!(
            "none of its {bad_packets} packets decodes"
        )));
    }
    if let Some(frames) = declared_frames {
        // A file that ends before the length its header declares was cut off.
        // Gapless trimming may leave a declared length up to one MP3 frame off.
        if (mono.len() as u64) < frames
            && (ended_early || frames - mono.len() as u64 > MP3_FRAME as u64)
        {
            return Err(AudioError::Truncated {
                declared: frames as f64 / source_rate as f64,
                decoded: mono.len() as f64 / source_rate as f64,
            });
        }
    } else if ended_early {
        return Err(AudioError::TruncatedStream {
            decoded: mono.len() as f64 / source_rate as f64,
        });
    }
    if mono.is_empty() {
        return Err(AudioError::NoSamples);
    }
    let samples = resample(&mono, source_rate, rate)?;
    Ok(Audio {
        samples,
        rate,
        source_rate,
        source_channels: channels,
    })
}

/// Raw little-endian signed 16-bit PCM at a declared rate and channel count (streams, and
/// bodies sent without a container), as mono samples at `rate`.
pub fn decode_pcm_s16le(
    bytes: &[u8],
    declared_rate: u32,
    channels: usize,
    rate: u32,
    limits: &AudioLimits,
) -> Result<Audio, AudioError> {
    if !(MIN_RATE..=MAX_RATE).contains(&declared_rate) {
        return Err(AudioError::Rate(declared_rate));
    }
    if channels == 0 || channels > 32 {
        return Err(AudioError::Malformed(format!(
            "{channels} channels declared; 1 to 32 are accepted"
        )));
    }
    limits.check_bytes(bytes)?;
    let frame = 2 * channels;
    if !bytes.len().is_multiple_of(frame) {
        return Err(AudioError::Malformed(format!(
            "{} bytes is not a whole number of {channels}-channel 16-bit frames",
            bytes.len()
        )));
    }
    let seconds = (bytes.len() / frame) as f64 / declared_rate as f64;
    if seconds > limits.max_seconds {
        return Err(AudioError::TooLong {
            seconds,
            limit: limits.max_seconds,
        });
    }
    let scale = 1.0 / (32768.0 * channels as f32);
    let mono: Vec<f32> = bytes
        .chunks_exact(frame)
        .map(|f| {
            f.chunks_exact(2)
                .map(|s| i16::from_le_bytes([s[0], s[1]]) as f32)
                .sum::<f32>()
                * scale
        })
        .collect();
    Ok(Audio {
        samples: resample(&mono, declared_rate, rate)?,
        rate,
        source_rate: declared_rate,
        source_channels: channels,
    })
}
