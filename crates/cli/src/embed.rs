//! `singlepoint embed`: one vector per line of text files (or standard input), on the single
//! point with the bundled all-MiniLM-L6-v2 or any `text-embedding` model. Texts are
//! tokenised in Rust and batched by length (`singlepoint_runtime::service`); the cache keeps
//! each text's vector before normalisation, so `--no-normalize` is answered from the same
//! entries.

use std::io::{Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;
use singlepoint_backend::EngineOptions;
use singlepoint_model::Model;
use singlepoint_runtime::cputime::process_cpu_time;
use singlepoint_runtime::{
    load_engine, AnswerSource, BackendChoice, Classifier, ItemResult, LengthGrouping,
    PipelineConfig, RunStats, TextAnswer, TextLines, TextOptions,
};

use crate::cache_args::CacheArgs;
use crate::output::csv_field;

#[derive(Args)]
pub struct EmbedArgs {
    /// Text files, one text a line (`-` or nothing: standard input)
    inputs: Vec<String>,

    /// Model folder or model.json of a text-embedding model (default: the bundled
    /// all-MiniLM-L6-v2, 384 dimensions)
    #[arg(long, env = "SINGLEPOINT_EMBED_MODEL")]
    model: Option<PathBuf>,

    /// Output format: jsonl (a line per text), csv (a row per text), npy (a float32
    /// [texts, dimensions] array; a failed line's row is NaN)
    #[arg(long, value_enum, default_value_t = EmbedFormat::Jsonl)]
    format: EmbedFormat,

    /// Write to this file instead of standard output
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Refuse a text over the model's token limit instead of cutting it (a cut text is marked
    /// `truncated` and counted in the summary)
    #[arg(long)]
    no_truncate: bool,

    /// Give the pooled vectors as they are, not L2-normalised
    #[arg(long)]
    no_normalize: bool,

    /// Engine: `ort`, `tract`, or `auto`
    #[arg(long, default_value = "auto", env = "SINGLEPOINT_BACKEND")]
    backend: BackendChoice,

    /// Model instances running in parallel (default: one per core)
    #[arg(long)]
    instances: Option<usize>,

    /// Most texts per engine run
    #[arg(long, default_value_t = 32)]
    batch_size: usize,

    /// Run texts in input order, batch_size at a time, padded to the longest, instead of
    /// grouping each worker's next 256 texts by length within a token budget
    #[arg(long)]
    no_length_grouping: bool,

    /// Most padded tokens (texts × longest) in one engine run when grouping by length
    #[arg(long, default_value_t = LengthGrouping::DEFAULT.max_tokens)]
    max_batch_tokens: usize,

    #[command(flatten)]
    cache: CacheArgs,

    /// Never download ONNX Runtime; fall back to tract when it is not installed
    #[arg(long, env = "SINGLEPOINT_NO_FETCH")]
    no_fetch: bool,

    /// No progress bar and no summary line on stderr
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EmbedFormat {
    Jsonl,
    Csv,
    Npy,
}

/// The text model at `path` (default: `bundled`), refused unless its task is `task`.
pub fn load_text_model(
    path: Option<&std::path::Path>,
    bundled: impl FnOnce() -> Model,
    task: singlepoint_model::Task,
    command: &str,
) -> anyhow::Result<Arc<Model>> {
    let model = match path {
        Some(path) => Model::load(path)
            .with_context(|| format!("cannot load the model `{}`", path.display()))?,
        None => bundled(),
    };
    if model.manifest.task != task {
        anyhow::bail!(
            "`{}` is a `{}` model; {command} runs {} models",
            model.manifest.name,
            model.manifest.task.as_str(),
            task.as_str()
        );
    }
    Ok(Arc::new(model))
}

pub(crate) fn source_name(source: AnswerSource) -> &'static str {
    source.as_str()
}

/// Where a text came from, for messages: `notes.txt:12`.
pub(crate) fn place<T>(result: &ItemResult<T>) -> String {
    match result.line {
        Some(line) if line > 0 => format!("{}:{line}", result.path.display()),
        _ => result.path.display().to_string(),
    }
}

/// The npy header for a float32 `[rows, dim]` array, padded to a fixed 128 bytes so that the
/// row count can be written over once it is known.
fn npy_header(rows: usize, dim: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    let len = 128 - 10;
    let mut text = dict.into_bytes();
    text.resize(len - 1, b' ');
    text.push(b'\n');
    header.extend_from_slice(&(len as u16).to_le_bytes());
    header.extend_from_slice(&text);
    header
}

enum Sink {
    Stdout(std::io::BufWriter<std::io::StdoutLock<'static>>),
    File(std::io::BufWriter<std::fs::File>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stdout(w) => w.write(buf),
            Sink::File(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(w) => w.flush(),
            Sink::File(w) => w.flush(),
        }
    }
}

/// Writes each text's answer in the chosen format.
struct Writer {
    sink: Sink,
    format: EmbedFormat,
    dim: usize,
    rows: usize,
    /// npy to standard output (not seekable): rows held until the count is known.
    held: Option<Vec<u8>>,
}

impl Writer {
    fn new(
        output: Option<&std::path::Path>,
        format: EmbedFormat,
        dim: usize,
    ) -> anyhow::Result<Writer> {
        let sink = match output {
            Some(path) => Sink::File(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create `{}`", path.display()))?,
            )),
            None => Sink::Stdout(std::io::BufWriter::new(std::io::stdout().lock())),
        };
        let mut w = Writer {
            held: (format == EmbedFormat::Npy && matches!(sink, Sink::Stdout(_))).then(Vec::new),
            sink,
            format,
            dim,
            rows: 0,
        };
        match format {
            EmbedFormat::Csv => {
                let dims: Vec<String> = (0..dim).map(|i| format!("d{i}")).collect();
                writeln!(
                    w.sink,
                    "index,path,line,tokens,truncated,source,error,{}",
                    dims.join(",")
                )?;
            }
            EmbedFormat::Npy if w.held.is_none() => w.sink.write_all(&npy_header(0, dim))?,
            _ => {}
        }
        Ok(w)
    }

    fn item(&mut self, result: &ItemResult<TextAnswer<Vec<f32>>>) -> std::io::Result<()> {
        self.rows += 1;
        let path = result.path.display().to_string();
        let line = result.line.unwrap_or(0);
        match self.format {
            EmbedFormat::Jsonl => {
                let v = match &result.outcome {
                    Ok(a) => json!({
                        "index": result.idx,
                        "path": path,
                        "line": line,
                        "embedding": a.answer,
                        "tokens": a.tokens,
                        "truncated": a.truncated(),
                        "source": source_name(result.source),
                    }),
                    Err(e) => json!({
                        "index": result.idx,
                        "path": path,
                        "line": line,
                        "error": e.to_string(),
                    }),
                };
                writeln!(self.sink, "{v}")
            }
            EmbedFormat::Csv => {
                let head = format!("{},{},{line}", result.idx, csv_field(&path));
                match &result.outcome {
                    Ok(a) => {
                        let values: Vec<String> = a.answer.iter().map(|v| v.to_string()).collect();
                        writeln!(
                            self.sink,
                            "{head},{},{},{},,{}",
                            a.tokens,
                            a.truncated(),
                            source_name(result.source),
                            values.join(",")
                        )
                    }
                    Err(e) => writeln!(
                        self.sink,
                        "{head},,,failed,{}{}",
                        csv_field(&e.to_string()),
                        ",".repeat(self.dim)
                    ),
                }
            }
            EmbedFormat::Npy => {
                let nan = vec![f32::NAN; self.dim];
                let row = match &result.outcome {
                    Ok(a) if a.answer.len() == self.dim => &a.answer,
                    _ => &nan,
                };
                let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
                match &mut self.held {
                    Some(held) => {
                        held.extend_from_slice(&bytes);
                        Ok(())
                    }
                    None => self.sink.write_all(&bytes),
                }
            }
        }
    }

    fn finish(mut self) -> std::io::Result<()> {
        if self.format == EmbedFormat::Npy {
            let header = npy_header(self.rows, self.dim);
            match (self.held.take(), &mut self.sink) {
                (Some(held), sink) => {
                    sink.write_all(&header)?;
                    sink.write_all(&held)?;
                }
                (None, Sink::File(w)) => {
                    w.flush()?;
                    let file = w.get_mut();
                    file.seek(SeekFrom::Start(0))?;
                    file.write_all(&header)?;
                }
                (None, Sink::Stdout(_)) => {}
            }
        }
        self.sink.flush()
    }
}

pub(crate) fn per_item(cpu: std::time::Duration, items: usize) -> f64 {
    cpu.as_secs_f64() * 1000.0 / items.max(1) as f64
}

/// `3000 texts, 0 failed, 2 truncated, in 4.10 s on ort: ...`
pub(crate) fn summary(
    stats: &RunStats,
    truncated: usize,
    cpu: std::time::Duration,
    engine: &str,
) -> String {
    let padding = if stats.token_slots > 0 {
        format!(
            "; {} tokens in {} padded slots ({:.1}% padding)",
            stats.tokens,
            stats.token_slots,
            100.0 * (1.0 - stats.tokens as f64 / stats.token_slots as f64)
        )
    } else {
        String::new()
    };
    format!(
        "{} texts, {} failed, {truncated} truncated, in {:.2} s on {engine}: {} engine runs, {} cache hits{padding}; core-ms per text: tokenise {:.3}, inference {:.2}, postprocess {:.3}; {:.2} core-s in all",
        stats.items,
        stats.failed,
        stats.wall.as_secs_f64(),
        stats.model_executions,
        stats.cache_hits,
        per_item(stats.preprocess, stats.items),
        per_item(stats.inference, stats.items),
        per_item(stats.postprocess, stats.items),
        cpu.as_secs_f64(),
    )
}

/// The run's engine, cache and pipeline for a text command.
pub(crate) struct TextRun {
    pub classifier: Classifier,
    pub engine: &'static str,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn start(
    model: Arc<Model>,
    backend: BackendChoice,
    no_fetch: bool,
    instances: Option<usize>,
    batch_size: usize,
    top_k: usize,
    length_grouping: Option<LengthGrouping>,
    cache: &CacheArgs,
) -> anyhow::Result<TextRun> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let instances = instances.unwrap_or(cores);
    let loaded = load_engine(&model, backend, EngineOptions::default(), !no_fetch)
        .with_context(|| format!("cannot start the model `{}`", model.manifest.name))?;
    for warning in &loaded.warnings {
        eprintln!("note: {warning}");
    }
    let engine = loaded.engine.kind().as_str();
    let config = PipelineConfig {
        batch_size,
        instances,
        top_k,
        length_grouping,
        ..PipelineConfig::default()
    };
    let mut classifier = Classifier::new(model, loaded.engine, config)?;
    if let Some(cache) = cache.open()? {
        let cache = Arc::new(cache);
        for warning in cache.take_warnings() {
            eprintln!("warning: {warning}");
        }
        classifier = classifier.with_cache(cache);
    }
    Ok(TextRun { classifier, engine })
}

pub fn run(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    let model = load_text_model(
        args.model.as_deref(),
        Model::bundled_embedder,
        singlepoint_model::Task::TextEmbedding,
        "embed",
    )?;
    let dim = model
        .manifest
        .output()
        .shape
        .last()
        .and_then(|d| d.fixed())
        .unwrap_or(0);
    let run = start(
        model,
        args.backend,
        args.no_fetch,
        args.instances,
        args.batch_size,
        1,
        (!args.no_length_grouping).then_some(LengthGrouping {
            max_tokens: args.max_batch_tokens,
            ..LengthGrouping::DEFAULT
        }),
        &args.cache,
    )?;
    let mut writer = Writer::new(args.output.as_deref(), args.format, dim)?;
    let progress = crate::classify::progress_bar(args.quiet, "texts");
    let options = TextOptions {
        truncate: !args.no_truncate,
        normalize: Some(!args.no_normalize),
    };
    let mut truncated = 0usize;
    let mut write_error: Option<std::io::Error> = None;
    let cpu_before = process_cpu_time();
    let stats = run.classifier.embed(
        TextLines::new(args.inputs.clone(), None),
        options,
        |result| {
            if let Some(pb) = &progress {
                pb.inc(1);
            }
            match &result.outcome {
                Ok(a) if a.truncated() => truncated += 1,
                Ok(_) => {}
                Err(e) => {
                    let message = format!("error: `{}`: {e}", place(&result));
                    match &progress {
                        Some(pb) => pb.suspend(|| eprintln!("{message}")),
                        None => eprintln!("{message}"),
                    }
                }
            }
            match writer.item(&result) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    write_error = Some(e);
                    ControlFlow::Break(())
                }
            }
        },
    )?;
    let cpu = process_cpu_time().saturating_sub(cpu_before);
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    if let Some(e) = write_error {
        return Err(e).context("cannot write results");
    }
    writer.finish().context("cannot write results")?;
    if !args.quiet {
        eprintln!("{}", summary(&stats, truncated, cpu, run.engine));
    }
    Ok(if stats.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_npy_header_is_a_fixed_128_bytes_numpy_reads() {
        for rows in [0, 7, 123_456_789] {
            let h = npy_header(rows, 384);
            assert_eq!(h.len(), 128);
            assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
            assert_eq!(u16::from_le_bytes([h[8], h[9]]), 118);
            assert_eq!(h[127], b'\n');
            let text = std::str::from_utf8(&h[10..]).unwrap();
            assert!(text.starts_with(&format!(
                "{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, 384), }}"
            )));
        }
    }
}
