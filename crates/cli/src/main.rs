//! `singlepoint`: the command-line front of the engine. Flags are parsed here, validated into
//! the runtime's config types, and handed to `singlepoint-runtime`; this crate only knows
//! about terminals, flags and output formats.

mod adapt;
mod cache_args;
mod classify;
mod detect;
mod draw;
mod embed;
mod init;
mod output;
mod quantize;
mod serve;
mod transcribe;
mod tune;
mod tune_reuse;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "singlepoint",
    version,
    about = "Fast, cheap inference for deep-learning models",
    long_about = "Fast, cheap inference for deep-learning models.\n\n\
                  `singlepoint classify photos/` labels every photo in a folder with the bundled \
                  ImageNet model (EfficientNet-Lite0)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify images: files, folders (recursive), glob patterns, or `-` for paths on stdin
    Classify(classify::ClassifyArgs),
    /// Detect objects in images (the bundled YOLOv3-tiny, COCO's 80 classes, by default):
    /// `Image 0: car 0.70 [466,71,680,170], ...`
    Detect(detect::DetectArgs),
    /// Embed texts, one a line of each file or stdin (the bundled all-MiniLM-L6-v2, 384
    /// dimensions, by default): jsonl, csv or npy
    Embed(embed::EmbedArgs),
    /// Transcribe speech (the bundled Whisper tiny.en, English; Silero VAD finds the speech
    /// and cuts long recordings into 30-s windows): text, json, srt or vtt
    Transcribe(transcribe::TranscribeArgs),
    /// Serve models over HTTP: Open Inference Protocol v2 (KServe/Triton REST) and
    /// POST /v1/models/{name}/classify for images; GET /openapi.json lists every endpoint
    Serve(serve::ServeArgs),
    /// Find the cheapest configuration (engine, instances, threads, batch size) for a model
    /// and a sample of your workload, under latency, throughput and memory constraints; with
    /// --reuse, the reuse threshold for a camera's videos at an agreement floor
    Tune(tune::TuneArgs),
    /// Write model.json for a bare ONNX file: inputs, outputs, types and shapes from the file;
    /// what it cannot say (an image model's preprocessing, pad values) from flags
    Init(init::InitArgs),
    /// Adapt a model to your own classes: a head trained on its features from labelled
    /// examples (a folder per class, or a TSV of label and text) or from corrections, written
    /// as a new model version
    Adapt(adapt::AdaptArgs),
    /// An int8 version of a model: calibrated on your inputs, compared with the float model
    /// on held-out ones, the most sensitive layers kept in float until --min-agreement holds
    Quantize(quantize::QuantizeArgs),
    /// List an adapted model's versions in a model repository, or serve another (rollback)
    Versions(adapt::VersionsArgs),
    /// Manage the ONNX Runtime library that the fast engine loads
    Runtime {
        #[command(subcommand)]
        action: RuntimeAction,
    },
    /// Show a model's manifest, identity digest and what the engine sees
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Inspect or empty the on-disk result cache
    Cache {
        #[command(subcommand)]
        action: CacheAction,
        /// Result cache folder (default: the per-user cache)
        #[arg(long, global = true, env = "SINGLEPOINT_CACHE_DIR", value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Only this model's entries: a model folder or model.json
        #[arg(long, global = true)]
        model: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Entries and bytes on disk
    Stats,
    /// Remove every entry (or only `--model`'s)
    Clear,
    /// Check every entry's checksum; remove and count the corrupt ones
    Verify,
}

#[derive(Subcommand)]
enum RuntimeAction {
    /// Download the pinned ONNX Runtime release (from PyPI, with pip) into the per-user cache
    Fetch,
    /// Say where ONNX Runtime would be loaded from
    Status,
}

#[derive(Subcommand)]
enum ModelAction {
    /// Print the manifest summary and the model's digest
    Info {
        /// Model folder or model.json (default: the bundled EfficientNet-Lite0)
        #[arg(long, env = "SINGLEPOINT_MODEL")]
        model: Option<PathBuf>,
    },
}

/// When the process started, for the fixed-cost term t0 of the cost report.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn started() -> std::time::Instant {
    *STARTED.get_or_init(std::time::Instant::now)
}

fn main() -> ExitCode {
    started();
    limit_malloc_arenas();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Classify(args) => classify::run(args),
        Command::Detect(args) => detect::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Transcribe(args) => transcribe::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Tune(args) => tune::run(args),
        Command::Init(args) => init::run(args),
        Command::Adapt(args) => adapt::run(args),
        Command::Versions(args) => adapt::versions(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Runtime { action } => runtime(action).map(|()| ExitCode::SUCCESS),
        Command::Model { action } => model(action).map(|()| ExitCode::SUCCESS),
        Command::Cache {
            action,
            cache_dir,
            model,
        } => cache(action, cache_dir, model),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn runtime(action: RuntimeAction) -> anyhow::Result<()> {
    use singlepoint_backend::ort_runtime;
    let mut out = std::io::stdout().lock();
    match action {
        RuntimeAction::Fetch => {
            let path = ort_runtime::fetch().context("cannot fetch ONNX Runtime")?;
            writeln!(
                out,
                "ONNX Runtime {} is at {}",
                ort_runtime::ORT_VERSION,
                path.display()
            )?;
        }
        RuntimeAction::Status => match ort_runtime::locate()? {
            Some(located) => writeln!(out, "{}", located.path().display())?,
            None => {
                writeln!(
                    out,
                    "not installed (looked in {}); run `singlepoint runtime fetch`",
                    ort_runtime::runtime_dir().display()
                )?;
            }
        },
    }
    Ok(())
}

/// glibc's malloc keeps up to 8 arenas per core, and a server's threads spread mixed-size
/// allocations (bodies, decode buffers, tensors) over them until each holds its own free
/// memory: under the soak test's traffic with glibc's default, RSS at rest went 353 → 382 MiB
/// in 120 s and was still climbing; with one arena per core it stayed at 298 MiB through 300 s
/// (bench/results/hardening-2026-11-29.md). The price
/// is about 4 % of cache-off throughput (bench/results/arenas-2026-11-29.md);
/// `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a malloc parameter; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

fn disk<T>(result: Option<Result<T, singlepoint_cache::DiskError>>) -> anyhow::Result<T> {
    Ok(result.context("the disk cache is off")??)
}

fn cache(
    action: CacheAction,
    dir: Option<PathBuf>,
    model: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use singlepoint_cache::{CacheConfig, ResultCache};
    let dir = cache_args::cache_dir(dir.as_deref());
    let digest = match &model {
        Some(path) => Some(classify::load_model(Some(path))?.digest),
        None => None,
    };
    if !dir.join(singlepoint_cache::disk::FILE_NAME).exists() {
        println!("no result cache in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let cache = ResultCache::open(&CacheConfig {
        memory_bytes: 0,
        disk: Some((dir.clone(), u64::MAX)),
        ttl: None,
        disk_page_cache_bytes: singlepoint_cache::DISK_PAGE_CACHE_BYTES,
    });
    if let Some(warning) = cache.take_warnings().into_iter().next() {
        anyhow::bail!("{warning}");
    }
    let which = if model.is_some() {
        "this model's"
    } else {
        "all"
    };
    let mut out = std::io::stdout().lock();
    match action {
        CacheAction::Stats => {
            let totals = disk(cache.disk_totals())?;
            writeln!(out, "cache:   {}", dir.display())?;
            writeln!(out, "entries: {} ({} bytes)", totals.entries, totals.bytes)?;
            if digest.is_some() {
                let report = disk(cache.verify(digest.as_ref()))?;
                writeln!(out, "model:   {} entries", report.matched)?;
            }
        }
        CacheAction::Clear => {
            let report = disk(cache.clear(digest.as_ref()))?;
            writeln!(
                out,
                "removed {} entries ({which}) and {} corrupt",
                report.removed, report.corrupt_removed
            )?;
        }
        CacheAction::Verify => {
            let report = disk(cache.verify(digest.as_ref()))?;
            writeln!(
                out,
                "checked {} entries: {} corrupt (removed), {} intact ({which})",
                report.checked, report.corrupt_removed, report.matched
            )?;
            if report.corrupt_removed > 0 {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `[-1, sequence, 8]`: a shape with the model's dimension names.
fn shape_with_names(t: &singlepoint_core::TensorSpec) -> String {
    let dims: Vec<String> = t
        .shape
        .iter()
        .enumerate()
        .map(|(i, d)| t.symbol(i).map_or_else(|| d.to_string(), str::to_string))
        .collect();
    format!("[{}]", dims.join(", "))
}

fn model(action: ModelAction) -> anyhow::Result<()> {
    let ModelAction::Info { model } = action;
    let model = classify::load_model(model.as_deref())?;
    let m = &model.manifest;
    let mut out = std::io::stdout().lock();
    writeln!(out, "name:     {} (version {})", m.name, m.version)?;
    writeln!(out, "origin:   {}", model.origin)?;
    writeln!(out, "task:     {}", m.task.as_str())?;
    writeln!(out, "digest:   {}", model.digest)?;
    for d in &m.inputs {
        let t = &d.spec;
        let mut rules = String::new();
        if let Some(pad) = d.pad {
            rules.push_str(&format!(" pad={pad}"));
        }
        if let Some(max) = d.max_length {
            rules.push_str(&format!(" max_length={max}"));
        }
        writeln!(
            out,
            "input:    {} {} {}{rules}",
            t.name,
            t.dtype,
            shape_with_names(t)
        )?;
    }
    for t in &m.outputs {
        writeln!(
            out,
            "output:   {} {} {}",
            t.name,
            t.dtype,
            shape_with_names(t)
        )?;
    }
    writeln!(
        out,
        "classes:  {}",
        model.labels.as_ref().map_or(0, |l| l.len())
    )?;
    writeln!(out, "onnx:     {} bytes", model.onnx.len())?;
    Ok(())
}
