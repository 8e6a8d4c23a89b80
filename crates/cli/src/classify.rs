//! `singlepoint classify`: flags → validated pipeline config → a run → formatted results.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use singlepoint_backend::{BackendKind, EngineOptions};
use singlepoint_cache::{CacheConfig, CacheStats, ResultCache};
use singlepoint_model::{DecodeLimits, Model};
use singlepoint_runtime::cputime::{peak_rss_bytes, process_cpu_time};
use singlepoint_runtime::{
    load_engine, BackendChoice, Classifier, Inputs, PipelineConfig, RunStats,
};

use crate::cache_args::CacheArgs;
use crate::output::{Format, Writer};

#[derive(Args)]
pub struct ClassifyArgs {
    /// Images: files, folders (recursive), glob patterns such as 'more/*.jpg', or `-` to read
    /// paths from stdin, one per line
    #[arg(required = true)]
    inputs: Vec<String>,

    /// Model folder or model.json (default: the bundled EfficientNet-Lite0)
    #[arg(long, env = "SINGLEPOINT_MODEL")]
    model: Option<PathBuf>,

    /// Engine: `ort` (ONNX Runtime, fastest), `tract` (pure Rust), or `auto` (ONNX Runtime,
    /// fetched on first use, else tract)
    #[arg(long, default_value = "auto", env = "SINGLEPOINT_BACKEND")]
    backend: BackendChoice,

    /// CPU threads to use in all (default: every core)
    #[arg(long)]
    threads: Option<usize>,

    /// Model instances running in parallel, each on threads/instances threads (default: one
    /// per thread)
    #[arg(long)]
    instances: Option<usize>,

    /// Images per engine run (default: 4 on ONNX Runtime, 1 on tract). Small batches keep each
    /// instance's activations in cache: on EfficientNet-Lite0, ONNX Runtime costs the fewest
    /// core-ms per image at batch 4, tract at batch 1 (half its cost at batch 4)
    #[arg(long)]
    batch_size: Option<usize>,

    /// Show the K most likely classes with their probabilities (text output shows only the
    /// label unless this is given; structured formats default to 5)
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,

    /// Output format
    #[arg(long, value_enum, default_value_t = FormatArg::Text)]
    format: FormatArg,

    /// Refuse images with more pixels than this (decompression bombs)
    #[arg(long, default_value_t = DecodeLimits::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,

    #[command(flatten)]
    cache: CacheArgs,

    /// Never download ONNX Runtime; fall back to tract when it is not installed
    #[arg(long, env = "SINGLEPOINT_NO_FETCH")]
    no_fetch: bool,

    /// No progress bar and no summary line on stderr
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Text,
    Json,
    Jsonl,
    Csv,
}

/// The batch each engine runs cheapest per image on one single-threaded instance per core
/// (measured on EfficientNet-Lite0; see bench/results/).
fn default_batch_size(kind: BackendKind) -> usize {
    match kind {
        BackendKind::Ort => 4,
        BackendKind::Tract => 1,
    }
}

/// Loads `--model`, or the bundled model.
pub fn load_model(path: Option<&Path>) -> anyhow::Result<Model> {
    match path {
        Some(path) => {
            Model::load(path).with_context(|| format!("cannot load the model `{}`", path.display()))
        }
        None => Ok(Model::bundled()),
    }
}

/// The validated settings of one run.
struct Settings {
    config: PipelineConfig,
    cache: Option<CacheConfig>,
    engine: EngineOptions,
    format: Format,
    show_top_k: bool,
}

fn validate(args: &ClassifyArgs) -> anyhow::Result<Settings> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores);
    if threads == 0 {
        anyhow::bail!("`--threads` must be at least 1");
    }
    let instances = args.instances.unwrap_or(threads);
    if instances == 0 {
        anyhow::bail!("`--instances` must be at least 1");
    }
    if instances > threads {
        anyhow::bail!("`--instances {instances}` is more than `--threads {threads}`: each instance needs a thread");
    }
    let format = match args.format {
        FormatArg::Text => Format::Text,
        FormatArg::Json => Format::Json,
        FormatArg::Jsonl => Format::Jsonl,
        FormatArg::Csv => Format::Csv,
    };
    let top_k = args.top_k.unwrap_or(match format {
        Format::Text => 1,
        _ => 5,
    });
    let cache = args.cache.config();
    Ok(Settings {
        cache,
        config: PipelineConfig {
            // Settled once the engine is known; see `default_batch_size`.
            batch_size: args.batch_size.unwrap_or(1),
            instances,
            top_k,
            limits: DecodeLimits {
                max_pixels: args.max_pixels,
            },
            ..PipelineConfig::default()
        },
        engine: EngineOptions {
            threads_per_session: (threads / instances).max(1),
            ..EngineOptions::default()
        },
        format,
        show_top_k: args.top_k.is_some(),
    })
}

pub fn run(args: ClassifyArgs) -> anyhow::Result<ExitCode> {
    let mut settings = validate(&args)?;
    let model = Arc::new(load_model(args.model.as_deref())?);
    let loaded = load_engine(&model, args.backend, settings.engine, !args.no_fetch)
        .with_context(|| format!("cannot start the model `{}`", model.manifest.name))?;
    for warning in &loaded.warnings {
        eprintln!("note: {warning}");
    }
    let engine_kind = loaded.engine.kind();
    settings.config.batch_size = args.batch_size.unwrap_or(default_batch_size(engine_kind));
    let mut classifier = Classifier::new(model.clone(), loaded.engine, settings.config.clone())?;
    if let Some(config) = &settings.cache {
        let cache = Arc::new(ResultCache::open(config));
        for warning in cache.take_warnings() {
            eprintln!("warning: {warning}");
        }
        classifier = classifier.with_cache(cache);
    }

    let stdin_used = args.inputs.iter().any(|a| a == "-");
    let stdin: Option<Box<dyn std::io::BufRead + Send>> =
        stdin_used.then(|| Box::new(std::io::BufReader::new(std::io::stdin())) as _);
    let inputs = Inputs::new(args.inputs.clone(), stdin);

    let progress = progress_bar(args.quiet);
    let stdout = std::io::stdout();
    let mut writer = Writer::new(
        stdout.lock(),
        settings.format,
        settings.config.top_k,
        settings.show_top_k,
        &model,
    )?;
    let mut write_error: Option<std::io::Error> = None;
    let cpu_before = process_cpu_time();
    let stats = classifier.run(inputs, |result| {
        if let Some(pb) = &progress {
            pb.inc(1);
        }
        if let Err(e) = &result.outcome {
            if matches!(settings.format, Format::Text) {
                if let Some(pb) = &progress {
                    pb.suspend(|| eprintln!("error: `{}`: {e}", result.path.display()));
                } else {
                    eprintln!("error: `{}`: {e}", result.path.display());
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
    })?;
    let cpu = process_cpu_time().saturating_sub(cpu_before);
    if let Some(cache) = classifier.cache() {
        for warning in cache.take_warnings() {
            eprintln!("warning: {warning}");
        }
    }
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    if let Some(e) = write_error {
        return Err(e).context("cannot write results");
    }
    let cache_stats = classifier.cache().map(|c| c.stats());
    writer.finish(&stats, engine_kind.as_str(), cache_stats.as_ref())?;
    if !args.quiet {
        eprintln!("{}", summary(&stats, cpu, engine_kind.as_str(), &settings));
        if let Some(c) = &cache_stats {
            eprintln!("{}", cache_summary(&stats, c));
        }
    }
    Ok(if stats.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn progress_bar(quiet: bool) -> Option<indicatif::ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} images, {per_sec}, {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    Some(pb)
}

fn cache_summary(stats: &RunStats, c: &CacheStats) -> String {
    format!(
        "cache: {:.0}% hits ({} memory, {} disk, {} misses), {} coalesced, {} model executions, \
         {} stored; memory {} entries / {} KiB, {} evicted; {} corrupt disk entries removed",
        100.0 * c.hit_rate(),
        c.memory_hits,
        c.disk_hits,
        c.misses,
        stats.coalesced,
        stats.model_executions,
        c.inserts,
        c.memory_entries,
        c.memory_bytes >> 10,
        c.memory_evictions + c.disk_evictions,
        c.corrupt,
    )
}

fn summary(stats: &RunStats, cpu: Duration, engine: &str, settings: &Settings) -> String {
    let secs = stats.wall.as_secs_f64().max(1e-9);
    let ok = stats.items - stats.failed;
    let per_item = |d: Duration| {
        if ok == 0 {
            0.0
        } else {
            d.as_secs_f64() * 1e3 / ok as f64
        }
    };
    format!(
        "{} images, {} failed, {:.0} images/s ({engine}, {} instance(s) × {} thread(s), batch {}; \
         core-ms per image: key+cache {:.2}, decode {:.1}, preprocess {:.1}, inference {:.1}, total CPU {:.1}; peak RSS {} MiB)",
        stats.items,
        stats.failed,
        stats.items as f64 / secs,
        settings.config.instances,
        settings.engine.threads_per_session,
        settings.config.batch_size,
        per_item(stats.cache),
        per_item(stats.read + stats.decode),
        per_item(stats.preprocess),
        per_item(stats.inference),
        per_item(cpu),
        peak_rss_bytes() >> 20,
    )
}
