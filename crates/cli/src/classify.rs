//! `singlepoint classify`: flags → validated pipeline config → a run → formatted results.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use singlepoint_backend::EngineOptions;
use singlepoint_cache::CacheStats;
use singlepoint_model::{DecodeLimits, Model};
use singlepoint_runtime::cost::{price, CostReport, Prices, RssSampler, StageCosts, Weights};
use singlepoint_runtime::cputime::{peak_rss_bytes, process_cpu_time};
use singlepoint_runtime::tune::RunConfig;
use singlepoint_runtime::{
    default_batch_size, load_engine, BackendChoice, Classifier, InputEntry, Inputs, PipelineConfig,
    RunStats,
};

use crate::cache_args::{CacheArgs, CostArgs};
use crate::output::{Format, Writer};

#[derive(Args)]
pub struct ClassifyArgs {
    /// Images: files, folders (recursive), glob patterns such as 'more/*.jpg', or `-` to read
    /// paths from stdin, one per line. With --text: text files, one text a line (`-`: stdin)
    #[arg(required = true)]
    inputs: Vec<String>,

    /// The inputs are text files, one text a line, for a text-classification `--model`
    #[arg(long)]
    text: bool,

    /// With --text: refuse a text over the model's token limit instead of cutting it
    #[arg(long, requires = "text")]
    no_truncate: bool,

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

    /// Print the run's cost report on stderr: t0, r0, n, N, p, q (measured on the first 32
    /// inputs with 1 and N workers after a warm-up pass, cache bypassed), time per stage,
    /// memory, money and f
    #[arg(long)]
    report: bool,

    /// Write the cost report as JSON to this file
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,

    #[command(flatten)]
    cost: CostArgs,

    /// A configuration written by `singlepoint tune`: its engine, instances, threads and
    /// batch size apply where no flag sets them
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

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
    Ok(Settings {
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

/// Fills the flags a `tune` configuration sets, where the command line left them unset.
fn apply_config(args: &mut ClassifyArgs) -> anyhow::Result<()> {
    let Some(path) = &args.config else {
        return Ok(());
    };
    let config = RunConfig::load(path).map_err(anyhow::Error::msg)?;
    if let Some(chosen) = config.model {
        match &args.model {
            None => {
                eprintln!(
                    "note: running `{}`, the {} version the config `{}` chose",
                    chosen.display(),
                    config.candidate.precision.as_str(),
                    path.display()
                );
                args.model = Some(chosen);
            }
            Some(given) if *given != chosen => eprintln!(
                "note: the config chose the model `{}` ({} precision); running `{}` as told",
                chosen.display(),
                config.candidate.precision.as_str(),
                given.display()
            ),
            Some(_) => {}
        }
    }
    let c = config.candidate;
    if args.backend == BackendChoice::Auto {
        args.backend = BackendChoice::Only(c.backend);
    }
    args.instances.get_or_insert(c.instances);
    args.threads
        .get_or_insert(c.instances * c.threads_per_instance);
    args.batch_size.get_or_insert(c.batch_size);
    Ok(())
}

pub fn run(mut args: ClassifyArgs) -> anyhow::Result<ExitCode> {
    if args.text {
        return run_text(&args);
    }
    apply_config(&mut args)?;
    let mut settings = validate(&args)?;
    let model = Arc::new(load_model(args.model.as_deref())?);
    if model.manifest.task == singlepoint_model::Task::TextClassification {
        anyhow::bail!(
            "`{}` is a text-classification model: add `--text`, and name text files (one text a line)",
            model.manifest.name
        );
    }
    let loaded = load_engine(&model, args.backend, settings.engine, !args.no_fetch)
        .with_context(|| format!("cannot start the model `{}`", model.manifest.name))?;
    for warning in &loaded.warnings {
        eprintln!("note: {warning}");
    }
    let engine_kind = loaded.engine.kind();
    settings.config.batch_size = args.batch_size.unwrap_or(default_batch_size(engine_kind));
    let mut classifier = Classifier::new(model.clone(), loaded.engine, settings.config.clone())?;
    if let Some(cache) = args.cache.open()? {
        let cache = Arc::new(cache);
        for warning in cache.take_warnings() {
            eprintln!("warning: {warning}");
        }
        classifier = classifier.with_cache(cache);
    }

    let stdin_used = args.inputs.iter().any(|a| a == "-");
    let stdin: Option<Box<dyn std::io::BufRead + Send>> =
        stdin_used.then(|| Box::new(std::io::BufReader::new(std::io::stdin())) as _);
    let mut inputs: Box<dyn Iterator<Item = InputEntry> + Send> =
        Box::new(Inputs::new(args.inputs.clone(), stdin));
    let reporting = args.report || args.report_json.is_some();
    let (prices, weights) = args.cost.resolve()?;
    let mut calibration = Calibration::default();
    if reporting {
        let sample: Vec<InputEntry> = inputs.by_ref().take(Q_SAMPLE).collect();
        calibration = calibrate(&classifier, &sample);
        inputs = Box::new(sample.into_iter().chain(inputs));
    }
    let rss = reporting.then(|| RssSampler::start(Duration::from_millis(50)));
    let main_started = Instant::now();

    let progress = progress_bar(args.quiet, "images");
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
    let run_elapsed = main_started.elapsed();
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
    if let Some(rss) = rss {
        let (mean_rss, peak_rss) = rss.finish();
        let report = cost_report(CostInputs {
            stats: &stats,
            workers: settings.config.instances,
            run_cpu: cpu,
            cpu_before_run: cpu_before,
            before_run: main_started.saturating_duration_since(crate::started()),
            sessions: run_elapsed.saturating_sub(stats.wall),
            calibration: &calibration,
            mean_rss,
            peak_rss,
            prices,
            weights,
        });
        emit_report(&report, args.report, args.report_json.as_deref())?;
    }
    Ok(if stats.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `classify --text`: each line of the text files through a text-classification model.
fn run_text(args: &ClassifyArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let Some(path) = args.model.as_deref() else {
        anyhow::bail!(
            "`--text` needs a text-classification `--model` (the bundled model classifies images)"
        );
    };
    let model = crate::embed::load_text_model(
        Some(path),
        || unreachable!("a model path is given"),
        singlepoint_model::Task::TextClassification,
        "classify --text",
    )?;
    let top_k = args.top_k.unwrap_or(match args.format {
        FormatArg::Text => 1,
        _ => 5,
    });
    if top_k == 0 {
        anyhow::bail!("`--top-k` must be at least 1");
    }
    let run = crate::embed::start(
        model,
        args.backend,
        args.no_fetch,
        args.instances,
        args.batch_size.unwrap_or(32),
        top_k,
        Some(singlepoint_runtime::LengthGrouping::DEFAULT),
        &args.cache,
    )?;
    let progress = progress_bar(args.quiet, "texts");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if matches!(args.format, FormatArg::Csv) {
        writeln!(
            out,
            "index,path,line,rank,class,label,probability,tokens,truncated,source,error"
        )?;
    }
    let mut json_items = Vec::new();
    let mut truncated = 0usize;
    let mut write_error: Option<std::io::Error> = None;
    let cpu_before = process_cpu_time();
    let options = singlepoint_runtime::TextOptions {
        truncate: !args.no_truncate,
        normalize: None,
    };
    let stats = run.classifier.classify_texts(
        singlepoint_runtime::TextLines::new(args.inputs.clone(), None),
        options,
        |result| {
            if let Some(pb) = &progress {
                pb.inc(1);
            }
            let place = crate::embed::place(&result);
            let source = crate::embed::source_name(result.source);
            let line = result.line.unwrap_or(0);
            let item = match &result.outcome {
                Ok(a) => {
                    truncated += usize::from(a.truncated());
                    serde_json::json!({
                        "index": result.idx,
                        "path": result.path.display().to_string(),
                        "line": line,
                        "label": a.answer.display_label,
                        "top": a.answer.top.iter().map(|c| serde_json::json!({
                            "class": c.class_idx, "label": c.label, "probability": c.probability,
                        })).collect::<Vec<_>>(),
                        "tokens": a.tokens,
                        "truncated": a.truncated(),
                        "source": source,
                    })
                }
                Err(e) => {
                    let message = format!("error: `{place}`: {e}");
                    match &progress {
                        Some(pb) => pb.suspend(|| eprintln!("{message}")),
                        None => eprintln!("{message}"),
                    }
                    serde_json::json!({
                        "index": result.idx,
                        "path": result.path.display().to_string(),
                        "line": line,
                        "error": e.to_string(),
                    })
                }
            };
            let written = match args.format {
                FormatArg::Text => match &result.outcome {
                    Ok(a) if args.top_k.is_some() => {
                        let top: Vec<String> = a
                            .answer
                            .top
                            .iter()
                            .map(|c| format!("{} {:.3}", c.label, c.probability))
                            .collect();
                        writeln!(out, "Text {}: {}", result.idx, top.join(", "))
                    }
                    Ok(a) => writeln!(out, "Text {}: {}", result.idx, a.answer.display_label),
                    Err(_) => writeln!(out, "Text {}: error", result.idx),
                },
                FormatArg::Jsonl => writeln!(out, "{item}"),
                FormatArg::Json => {
                    json_items.push(item);
                    Ok(())
                }
                FormatArg::Csv => {
                    let head = format!(
                        "{},{},{line}",
                        result.idx,
                        crate::output::csv_field(&result.path.display().to_string())
                    );
                    match &result.outcome {
                        Ok(a) => a.answer.top.iter().enumerate().try_for_each(|(rank, c)| {
                            writeln!(
                                out,
                                "{head},{},{},{},{},{},{},{source},",
                                rank + 1,
                                c.class_idx,
                                crate::output::csv_field(&c.label),
                                c.probability,
                                a.tokens,
                                a.truncated()
                            )
                        }),
                        Err(e) => writeln!(
                            out,
                            "{head},,,,,,,failed,{}",
                            crate::output::csv_field(&e.to_string())
                        ),
                    }
                }
            };
            match written {
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
    if matches!(args.format, FormatArg::Json) {
        writeln!(out, "{}", serde_json::json!({ "results": json_items }))?;
    }
    out.flush().context("cannot write results")?;
    if !args.quiet {
        eprintln!(
            "{}",
            crate::embed::summary(&stats, truncated, cpu, run.engine)
        );
    }
    Ok(if stats.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(crate) fn progress_bar(quiet: bool, noun: &str) -> Option<indicatif::ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {{pos}} {noun}, {{per_sec}}, {{elapsed}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    Some(pb)
}

fn cache_summary(stats: &RunStats, c: &CacheStats) -> String {
    format!(
        "cache: {:.0}% hits ({} memory, {} disk, {}{} misses), {} coalesced, {} model executions, \
         {} stored; memory {} entries / {} KiB, {} evicted; {} corrupt disk entries removed",
        100.0 * c.hit_rate(),
        c.memory_hits,
        c.disk_hits,
        if c.redis_hits > 0 {
            format!("{} redis, ", c.redis_hits)
        } else {
            String::new()
        },
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

/// Inputs of the calibration that measures q.
const Q_SAMPLE: usize = 32;

/// q measured on a sample: throughput with 1 and with N workers, cache bypassed.
#[derive(Default)]
pub(crate) struct Calibration {
    q: Option<f64>,
    how: Option<String>,
    wall: Duration,
    cpu: Duration,
}

fn calibrate(classifier: &Classifier, sample: &[InputEntry]) -> Calibration {
    let t0 = Instant::now();
    let cpu0 = process_cpu_time();
    let config = classifier.config();
    let n = config.instances;
    let throughput = |instances: usize| -> Option<f64> {
        let c = Classifier::new(
            Arc::new(classifier.model().clone()),
            classifier.engine().clone(),
            PipelineConfig {
                instances,
                ..config.clone()
            },
        )
        .ok()?;
        let stats = c
            .run(sample.iter().cloned(), |_| ControlFlow::Continue(()))
            .ok()?;
        Some(sample.len() as f64 / stats.wall.as_secs_f64().max(1e-9))
    };
    let mut calibration = Calibration::default();
    if n == 1 {
        calibration.q = Some(1.0);
        calibration.how = Some("one worker: 1 by definition".into());
    } else if sample.len() >= 2 * n * config.batch_size {
        // A first pass warms page cache, allocator and engine, so X(1) is not measured cold.
        let _ = throughput(n);
        if let (Some(x1), Some(xn)) = (throughput(1), throughput(n)) {
            calibration.q = Some(xn / (n as f64 * x1));
            calibration.how = Some(format!(
                "X(1) = {x1:.1}/s, X({n}) = {xn:.1}/s on the first {} inputs, cache bypassed",
                sample.len()
            ));
        }
    }
    calibration.wall = t0.elapsed();
    calibration.cpu = process_cpu_time().saturating_sub(cpu0);
    calibration
}

pub(crate) struct CostInputs<'a> {
    pub stats: &'a RunStats,
    pub workers: usize,
    pub run_cpu: Duration,
    pub cpu_before_run: Duration,
    /// From process start to the start of the main run.
    pub before_run: Duration,
    /// Creating the engine sessions, inside the main run but before its clock starts.
    pub sessions: Duration,
    pub calibration: &'a Calibration,
    pub mean_rss: u64,
    pub peak_rss: u64,
    pub prices: Prices,
    pub weights: Weights,
}

/// Prints the cost report on stderr (`--report`) and writes it as JSON (`--report-json`).
pub(crate) fn emit_report(
    report: &CostReport,
    print: bool,
    json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if print {
        eprintln!("{}", report.to_text());
    }
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")
            .with_context(|| format!("cannot write the report to `{}`", path.display()))?;
    }
    Ok(())
}

pub(crate) fn cost_report(c: CostInputs) -> CostReport {
    let s = c.stats;
    let n = s.items.max(1) as f64;
    let per = |d: Duration| d.as_secs_f64() / n;
    let t0 = (c.before_run.saturating_sub(c.calibration.wall) + c.sessions).as_secs_f64();
    let r0 = c
        .cpu_before_run
        .saturating_sub(c.calibration.cpu)
        .as_secs_f64();
    let run_seconds = s.wall.as_secs_f64();
    let run_cpu = c.run_cpu.as_secs_f64();
    let gib = c.mean_rss as f64 / (1u64 << 30) as f64;
    CostReport {
        items: s.items,
        workers: c.workers,
        model_executions: s.model_executions,
        hit_rate: (s.cache_hits + s.coalesced) as f64 / n,
        reuse_rate: s.reused as f64 / n,
        parallel_efficiency: c.calibration.q,
        q_sample: c.calibration.how.clone(),
        t0,
        r0,
        run_seconds,
        run_cpu_seconds: run_cpu,
        cpu_per_item: run_cpu / n,
        mean_rss_bytes: c.mean_rss,
        peak_rss_bytes: c.peak_rss,
        stages: StageCosts {
            key_and_cache: per(s.cache),
            read: per(s.read),
            decode: per(s.decode),
            preprocess: per(s.preprocess),
            inference: per(s.inference),
            postprocess: per(s.postprocess),
        },
        prices: c.prices,
        weights: c.weights,
        total: price(t0 + run_seconds, r0 + run_cpu, gib, &c.prices, &c.weights),
        marginal: price(run_seconds, run_cpu, gib, &c.prices, &c.weights),
    }
}
