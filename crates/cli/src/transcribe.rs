//! `singlepoint transcribe`: speech to text with the bundled Whisper tiny.en, gated and cut
//! into ≤ 30-s windows by the bundled Silero VAD (`singlepoint_speech::Speech`, the path the
//! server's transcription endpoint enters too). Several files are in flight at once, so their
//! encoder runs batch and their decoding steps share the running batch; answers are written
//! in input order.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;
use singlepoint_audio::AudioLimits;
use singlepoint_runtime::cputime::process_cpu_time;
use singlepoint_runtime::Inputs;
use singlepoint_speech::service::Source;
use singlepoint_speech::whisper::{BatchOptions, Threads};
use singlepoint_speech::{format, Speech, SpeechOptions, Transcript};

use crate::cache_args::{parse_size, CacheArgs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TranscriptFormat {
    /// `Audio 0 (path): text`, a line per file
    Text,
    /// One JSON document: every file's text, duration, segments and speech
    Json,
    /// SubRip subtitles
    Srt,
    /// WebVTT subtitles
    Vtt,
}

#[derive(Args)]
pub struct TranscribeArgs {
    /// Audio files (WAV, FLAC, MP3, Ogg Vorbis), folders (walked for .wav, .flac, .mp3,
    /// .ogg, .oga) and globs
    #[arg(required = true)]
    inputs: Vec<String>,

    /// Output format
    #[arg(long, value_enum, default_value_t = TranscriptFormat::Text)]
    format: TranscriptFormat,

    /// Write each file's transcript to DIR/<name>.<format> instead of standard output (needed
    /// for srt and vtt with several files)
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,

    /// Files in flight at once (their encoder runs batch, their decoding steps share a batch)
    #[arg(long, default_value_t = 8)]
    concurrency: usize,

    /// Encoder threads, each with its own sessions, taking windows from one queue
    #[arg(long, default_value_t = BatchOptions::default().encoders)]
    encoders: usize,

    /// Intra-op threads of each encoder thread's sessions
    #[arg(long, default_value_t = Threads::default().encoder)]
    encoder_threads: usize,

    /// Intra-op threads of the decoder's session
    #[arg(long, default_value_t = Threads::default().decoder)]
    decoder_threads: usize,

    /// Most rows of the running decode batch
    #[arg(long, default_value_t = BatchOptions::default().max_decode_batch)]
    max_decode_batch: usize,

    /// Refuse a file larger than this
    #[arg(long, default_value = "100MiB", value_parser = parse_size, value_name = "SIZE")]
    max_bytes: u64,

    /// Refuse audio longer than this many seconds
    #[arg(long, default_value_t = 3.0 * 3600.0, value_name = "SECONDS")]
    max_seconds: f64,

    /// Speech probability at which the VAD starts a segment
    #[arg(long, default_value_t = 0.5)]
    vad_threshold: f32,

    #[command(flatten)]
    cache: CacheArgs,

    /// Never download ONNX Runtime (speech runs on it only)
    #[arg(long, env = "SINGLEPOINT_NO_FETCH")]
    no_fetch: bool,

    /// No summary on standard error
    #[arg(long, short)]
    quiet: bool,
}

struct Done {
    path: PathBuf,
    result: Result<(Transcript, Source), String>,
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

pub fn run(args: TranscribeArgs) -> anyhow::Result<ExitCode> {
    let mut options = SpeechOptions {
        threads: Threads {
            encoder: args.encoder_threads,
            decoder: args.decoder_threads,
        },
        ..SpeechOptions::default()
    };
    options.batch.encoders = args.encoders;
    options.batch.max_decode_batch = args.max_decode_batch;
    options.limits = AudioLimits {
        max_bytes: usize::try_from(args.max_bytes).unwrap_or(usize::MAX),
        max_seconds: args.max_seconds,
    };
    options.vad.threshold = args.vad_threshold;
    options.validate().map_err(anyhow::Error::msg)?;
    if args.concurrency == 0 {
        anyhow::bail!("`--concurrency` must be at least 1");
    }
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
    }
    if let Some(note) = singlepoint_runtime::ensure_onnxruntime(!args.no_fetch)? {
        eprintln!("note: {note}");
    }
    let cache = args.cache.open()?.map(Arc::new);
    if let Some(c) = &cache {
        for w in c.take_warnings() {
            eprintln!("warning: {w}");
        }
    }
    let started = Instant::now();
    let cpu_before = process_cpu_time();
    let speech =
        Arc::new(Speech::bundled(options, cache).context("cannot load the speech models")?);
    let loaded = started.elapsed();

    let entries: Vec<_> = Inputs::new(args.inputs.clone(), None).audio().collect();
    let subtitles = matches!(args.format, TranscriptFormat::Srt | TranscriptFormat::Vtt);
    if subtitles && args.output_dir.is_none() && entries.len() > 1 {
        anyhow::bail!(
            "{} files as {}: give `--output-dir DIR` for a subtitle file each",
            entries.len(),
            if args.format == TranscriptFormat::Srt {
                "srt"
            } else {
                "vtt"
            }
        );
    }

    // Workers take the next file; answers come back tagged and are written in input order.
    let run_started = Instant::now();
    let (todo_tx, todo_rx) = crossbeam_channel::unbounded::<(usize, PathBuf, Option<String>)>();
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<(usize, Done)>();
    for (i, e) in entries.iter().enumerate() {
        let problem = e.problem.as_ref().map(|p| p.reason.clone());
        let _ = todo_tx.send((i, e.path.clone(), problem));
    }
    drop(todo_tx);
    let workers: Vec<_> = (0..args.concurrency.min(entries.len().max(1)))
        .map(|_| {
            let (todo, done, speech) = (todo_rx.clone(), done_tx.clone(), speech.clone());
            std::thread::spawn(move || {
                while let Ok((i, path, problem)) = todo.recv() {
                    let result = match problem {
                        Some(p) => Err(p),
                        None => std::fs::read(&path)
                            .map_err(|e| format!("cannot read: {e}"))
                            .and_then(|bytes| {
                                speech
                                    .transcribe(&bytes, extension(&path).as_deref())
                                    .map_err(|e| e.to_string())
                            }),
                    };
                    if done.send((i, Done { path, result })).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(done_tx);

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut pending = BTreeMap::new();
    let mut next = 0;
    let (mut failed, mut hits, mut coalesced, mut audio_seconds) = (0usize, 0usize, 0usize, 0f64);
    let mut json_items = Vec::new();
    for (i, done) in done_rx.iter() {
        pending.insert(i, done);
        while let Some(done) = pending.remove(&next) {
            match &done.result {
                Ok((t, source)) => {
                    audio_seconds += t.duration;
                    hits += usize::from(*source == Source::Cache);
                    coalesced += usize::from(*source == Source::Coalesced);
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("error: {}: {e}", done.path.display());
                }
            }
            emit(&args, next, &done, &mut out, &mut json_items)?;
            next += 1;
        }
    }
    for w in workers {
        let _ = w.join();
    }
    if args.format == TranscriptFormat::Json && args.output_dir.is_none() {
        let doc = json!({
            "model": singlepoint_speech::bundled::WHISPER_NAME,
            "digest": speech.digest().to_hex(),
            "results": json_items,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?).context("cannot write results")?;
    }
    out.flush().context("cannot write results")?;
    let wall = run_started.elapsed().as_secs_f64();
    let cpu = process_cpu_time().saturating_sub(cpu_before).as_secs_f64();
    if !args.quiet {
        let (stats, vad_runs) = speech.stats();
        let speed = if wall > 0.0 {
            audio_seconds / wall
        } else {
            0.0
        };
        eprintln!(
            "{} files, {failed} failed, {audio_seconds:.1} s of audio in {wall:.2} s ({speed:.1} audio seconds per second, real-time factor {:.4}; models loaded in {:.2} s); {} cache hits, {coalesced} coalesced; {} encoder runs for {} windows, {} decoder runs averaging {:.2} rows ({} joined a running batch), {vad_runs} VAD chunks; {cpu:.2} CPU-seconds",
            entries.len(),
            if audio_seconds > 0.0 { wall / audio_seconds } else { 0.0 },
            loaded.as_secs_f64(),
            hits,
            stats.encoder_runs,
            stats.encoded,
            stats.decoder_runs,
            if stats.decoder_runs > 0 { stats.decoder_rows as f64 / stats.decoder_runs as f64 } else { 0.0 },
            stats.joined_running,
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn item_json(index: usize, done: &Done) -> serde_json::Value {
    match &done.result {
        Ok((t, source)) => json!({
            "index": index,
            "path": done.path.display().to_string(),
            "cached": *source == Source::Cache,
            "text": t.text,
            "duration": t.duration,
            "segments": t.segments,
            "speech": t.speech,
        }),
        Err(e) => json!({
            "index": index,
            "path": done.path.display().to_string(),
            "error": e,
        }),
    }
}

fn emit(
    args: &TranscribeArgs,
    index: usize,
    done: &Done,
    out: &mut impl Write,
    json_items: &mut Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    let rendered = match (&done.result, args.format) {
        (Err(_), TranscriptFormat::Json) => None,
        (Err(_), _) => return Ok(()),
        (Ok((t, _)), TranscriptFormat::Text) => Some(if args.output_dir.is_some() {
            format!("{}\n", t.text)
        } else {
            format!("Audio {index} ({}): {}\n", done.path.display(), t.text)
        }),
        (Ok((t, _)), TranscriptFormat::Srt) => Some(format::srt(t)),
        (Ok((t, _)), TranscriptFormat::Vtt) => Some(format::vtt(t)),
        (Ok(_), TranscriptFormat::Json) => None,
    };
    match &args.output_dir {
        Some(dir) => {
            let ext = match args.format {
                TranscriptFormat::Text => "txt",
                TranscriptFormat::Json => "json",
                TranscriptFormat::Srt => "srt",
                TranscriptFormat::Vtt => "vtt",
            };
            if done.result.is_err() {
                return Ok(());
            }
            let stem = done.path.file_stem().map_or_else(
                || format!("audio-{index}"),
                |s| s.to_string_lossy().into_owned(),
            );
            let file = dir.join(format!("{stem}.{ext}"));
            let body = match rendered {
                Some(r) => r,
                None => serde_json::to_string_pretty(&item_json(index, done))? + "\n",
            };
            std::fs::write(&file, body)
                .with_context(|| format!("cannot write `{}`", file.display()))?;
        }
        None => match rendered {
            Some(r) => {
                out.write_all(r.as_bytes())
                    .context("cannot write results")?;
                out.flush().context("cannot write results")?;
            }
            None => json_items.push(item_json(index, done)),
        },
    }
    Ok(())
}
