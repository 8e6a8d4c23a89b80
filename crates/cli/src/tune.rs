//! `singlepoint tune`: flags → search space, constraints and budget → the real pipeline on a
//! sample → a table, a config file for `--config`, and the Pareto front as SVG.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;
use singlepoint_backend::BackendKind;
use singlepoint_model::Model;
use singlepoint_runtime::tune::{
    pareto_front, pareto_svg, tune, Candidate, Constraints, Precision, RunConfig, Search, Space,
    TuneSettings, Variant,
};
use singlepoint_runtime::{InputEntry, Inputs, ItemInput};

use crate::cache_args::{parse_duration, parse_size, CostArgs};
use crate::classify::load_model;
use singlepoint_runtime::default_batch_size;

#[derive(Args)]
pub struct TuneArgs {
    /// The sample workload: images, folders or glob patterns, as `classify` takes them; with
    /// `--reuse`, videos from the camera to tune for
    #[arg(required = true)]
    pub(crate) inputs: Vec<String>,

    /// Tune reuse across frames instead: run the detector (`--model`, default the bundled
    /// YOLOv3-tiny) on every frame of the videos given, replay the difference detector at each
    /// threshold, and choose the one with the fewest model runs whose answers agree with the
    /// every-frame ones at least `--min-agreement`. The engine-search flags (`--int8`,
    /// `--backends`, `--threads`, the search and its constraints) do not apply to it, and
    /// are refused with it rather than ignored.
    #[arg(long, conflicts_with_all = [
        "int8", "backends", "batch_sizes", "threads", "sample", "workload_items", "budget",
        "search", "rounds", "slo_p99", "min_throughput", "max_rss",
    ])]
    pub(crate) reuse: bool,

    /// The agreement floor. With `--int8`: the int8 version's agreement with fp32 by the
    /// task's measure (top-1 for classifiers), both on the sample and in its quantize report
    /// (default 0.99). With `--reuse`: matched detections, same class and IoU ≥ 0.5, over the
    /// larger answer's size, so that misses and stale boxes both count (default 0.95)
    #[arg(long)]
    pub(crate) min_agreement: Option<f64>,

    /// Search precision too: the int8 version of the model (a folder `singlepoint quantize`
    /// wrote from it); each configuration is tried with either graph, and int8 only where it
    /// keeps `--min-agreement`
    #[arg(long, value_name = "DIR")]
    int8: Option<PathBuf>,

    /// With `--reuse`: use at most this many frames of each video (default: all)
    #[arg(long, requires = "reuse")]
    pub(crate) max_frames: Option<usize>,

    /// Model folder or model.json (default: the bundled EfficientNet-Lite0; with `--reuse`,
    /// the bundled YOLOv3-tiny)
    #[arg(long, env = "SINGLEPOINT_MODEL")]
    pub(crate) model: Option<PathBuf>,

    /// Engines to try, comma-separated: ort, tract
    #[arg(long, value_delimiter = ',', default_value = "ort")]
    backends: Vec<BackendKind>,

    /// Batch sizes to try, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    batch_sizes: Vec<usize>,

    /// Threads in all that a configuration may use (default: every core); instances and
    /// threads per instance are tried in every split of it
    #[arg(long)]
    threads: Option<usize>,

    /// Images of the workload each measurement classifies (the first ones)
    #[arg(long, default_value_t = 64)]
    sample: usize,

    /// Items of the workload f is computed for (default: every input given)
    #[arg(long)]
    workload_items: Option<usize>,

    /// Stop searching after this long: `90s`, `5m`
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    budget: Duration,

    /// `halving`: measure all, re-measure the better half until two remain; `exhaustive`:
    /// measure all `--rounds` times; `descent`: from the default, one coordinate at a time
    #[arg(long, value_enum, default_value_t = SearchArg::Halving)]
    search: SearchArg,

    /// Measurements per candidate with `--search exhaustive`
    #[arg(long, default_value_t = 2)]
    rounds: usize,

    /// Constraint: p99 item latency at most this (`250ms`, `2s`)
    #[arg(long, value_parser = parse_duration, value_name = "TIME")]
    slo_p99: Option<Duration>,

    /// Constraint: throughput at least this many items per second
    #[arg(long, value_name = "ITEMS_PER_S")]
    min_throughput: Option<f64>,

    /// Constraint: mean RSS at most this (`1GiB`)
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    max_rss: Option<u64>,

    /// Where to write the chosen configuration (read by `classify --config`, `serve --config`;
    /// with `--reuse`, the chosen threshold and the whole curve)
    #[arg(long, default_value = "singlepoint-tuned.json")]
    pub(crate) out: PathBuf,

    /// Where to draw the latency–throughput–cost Pareto front (with `--reuse`: model runs
    /// against agreement; default: next to --out, .svg)
    #[arg(long)]
    pub(crate) svg: Option<PathBuf>,

    #[command(flatten)]
    cost: CostArgs,

    /// Never download ONNX Runtime
    #[arg(long, env = "SINGLEPOINT_NO_FETCH")]
    pub(crate) no_fetch: bool,
}

impl TuneArgs {
    /// `--min-agreement`, or `default`; from 0 to 1.
    pub(crate) fn min_agreement(&self, default: f64) -> anyhow::Result<f64> {
        let floor = self.min_agreement.unwrap_or(default);
        if !(0.0..=1.0).contains(&floor) {
            anyhow::bail!("`--min-agreement` must be from 0 to 1, not {floor}");
        }
        Ok(floor)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum SearchArg {
    Halving,
    Exhaustive,
    Descent,
}

pub fn run(args: TuneArgs) -> anyhow::Result<ExitCode> {
    if args.reuse {
        return crate::tune_reuse::run(&args);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores);
    if threads == 0 || args.sample == 0 || args.backends.is_empty() {
        anyhow::bail!("`--threads`, `--sample` and `--backends` must not be zero or empty");
    }
    if let Some(&b) = args.batch_sizes.iter().find(|&&b| b == 0) {
        anyhow::bail!("`--batch-sizes` must be at least 1 (got {b})");
    }
    let (prices, weights) = args.cost.resolve()?;
    let model = Arc::new(load_model(args.model.as_deref())?);
    let entries: Vec<InputEntry> = Inputs::new(args.inputs.clone(), None).collect();
    let sample: Vec<InputEntry> = entries
        .iter()
        .filter(|e| e.problem.is_none())
        .take(args.sample)
        .cloned()
        .collect();
    if sample.is_empty() {
        anyhow::bail!("no readable inputs among {}", args.inputs.join(", "));
    }
    let mut batch_sizes = args.batch_sizes.clone();
    if let Some(max) = model.manifest.max_batch() {
        batch_sizes.retain(|&b| b <= max);
    }
    batch_sizes.sort_unstable();
    batch_sizes.dedup();
    let (variants, floor) = variants(&args, &model, &sample, threads)?;
    let default = Candidate {
        backend: args.backends[0],
        precision: Precision::Fp32,
        instances: threads,
        threads_per_instance: 1,
        batch_size: default_batch_size(args.backends[0]),
    };
    let settings = TuneSettings {
        space: Space {
            backends: args.backends.clone(),
            precisions: variants.iter().map(|v| v.precision).collect(),
            instances: (1..=threads).collect(),
            threads_per_instance: (1..=threads).collect(),
            batch_sizes,
            max_threads: threads,
        },
        default,
        search: match args.search {
            SearchArg::Halving => Search::Halving,
            SearchArg::Exhaustive => Search::Exhaustive {
                rounds: args.rounds,
            },
            SearchArg::Descent => Search::Descent,
        },
        constraints: Constraints {
            slo_p99: args.slo_p99.map(|d| d.as_secs_f64()),
            min_throughput: args.min_throughput,
            max_rss: args.max_rss,
            min_agreement: floor,
        },
        workload_items: args.workload_items.unwrap_or(entries.len()),
        prices,
        weights,
        budget: args.budget,
        allow_fetch: !args.no_fetch,
    };
    eprintln!(
        "tuning {} on {} sample images for a workload of {} items: {} candidates, budget {:?}",
        model.manifest.name,
        sample.len(),
        settings.workload_items,
        settings.space.candidates().len(),
        args.budget
    );
    let result = tune(&variants, &sample, &settings)?;
    let mut trials: Vec<_> = result.trials.iter().collect();
    trials.sort_by(|a, b| {
        a.infeasible
            .is_some()
            .cmp(&b.infeasible.is_some())
            .then(a.cost.f.total_cmp(&b.cost.f))
    });
    let front = pareto_front(&result.trials);
    println!(
        "{:<29} {:>8} {:>8} {:>10} {:>8} {:>12} {:>6} {:>5}  note",
        "candidate", "items/s", "p99 ms", "core-ms/it", "RSS MiB", "f", "agree", "runs"
    );
    for t in &trials {
        let mut notes = Vec::new();
        if Some(t.candidate) == result.best {
            notes.push("chosen".to_string());
        }
        if t.candidate == default {
            notes.push("default".into());
        }
        if front.contains(&t.candidate) {
            notes.push("pareto".into());
        }
        if let Some(why) = &t.infeasible {
            notes.push(why.clone());
        }
        println!(
            "{:<29} {:>8.1} {:>8.1} {:>10.2} {:>8} {:>12.4e} {:>6.4} {:>5}  {}",
            t.candidate.to_string(),
            t.throughput,
            t.p99_latency * 1e3,
            t.cpu_per_item * 1e3,
            t.mean_rss >> 20,
            t.cost.f,
            t.agreement,
            t.samples.len(),
            notes.join(", ")
        );
    }
    let svg_path = args
        .svg
        .clone()
        .unwrap_or_else(|| args.out.with_extension("svg"));
    std::fs::write(&svg_path, pareto_svg(&result.trials, result.best, default))
        .with_context(|| format!("cannot write `{}`", svg_path.display()))?;
    let default_trial = result.trial(&default);
    let Some(best) = result.best else {
        eprintln!(
            "no candidate met the constraints in {:.0} s; the table says why (Pareto front drawn in `{}`)",
            result.elapsed.as_secs_f64(),
            svg_path.display()
        );
        return Ok(ExitCode::from(1));
    };
    let best_trial = result.trial(&best).expect("the best was measured");
    let versus = default_trial.map(|d| {
        let gain = 1.0 - best_trial.cost.f / d.cost.f;
        format!(
            "default {default}: f = {:.4e}; the chosen one is {:.1} % lower{}",
            d.cost.f,
            gain * 100.0,
            match &d.infeasible {
                Some(why) => format!(" (the default breaks a constraint: {why})"),
                None => String::new(),
            }
        )
    });
    let chosen_model = match best.precision {
        Precision::Fp32 => None,
        Precision::Int8 => args
            .int8
            .as_ref()
            .map(|dir| std::path::absolute(dir).unwrap_or_else(|_| dir.clone())),
    };
    let config = RunConfig {
        candidate: best,
        model: chosen_model,
        chosen_by: json!({
            "agreement": best_trial.agreement,
            "min_agreement": floor,
            "f": best_trial.cost.f,
            "money": best_trial.cost.money,
            "throughput": best_trial.throughput,
            "p99_latency_seconds": best_trial.p99_latency,
            "cpu_seconds_per_item": best_trial.cpu_per_item,
            "workload_items": settings.workload_items,
            "sample_items": sample.len(),
            "constraints": settings.constraints,
            "prices": prices,
            "weights": weights,
            "default_f": default_trial.map(|d| d.cost.f),
            "model_digest": model.digest.to_hex(),
        }),
    };
    std::fs::write(&args.out, serde_json::to_string_pretty(&config)? + "\n")
        .with_context(|| format!("cannot write `{}`", args.out.display()))?;
    eprintln!(
        "chose {best}: f = {:.4e}, {:.1} items/s, p99 {:.0} ms; {}",
        best_trial.cost.f,
        best_trial.throughput,
        best_trial.p99_latency * 1e3,
        versus.unwrap_or_default()
    );
    eprintln!(
        "{} trials in {:.0} s{}; wrote `{}` (use with --config{}) and `{}`",
        result.trials.iter().map(|t| t.samples.len()).sum::<usize>(),
        result.elapsed.as_secs_f64(),
        if result.budget_spent {
            " (budget spent)"
        } else {
            ""
        },
        args.out.display(),
        match &config.model {
            Some(m) => format!("; it runs the model `{}`", m.display()),
            None => String::new(),
        },
        svg_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The versions to tune: the fp32 model, and with `--int8` its int8 version with its
/// agreement (the lesser of its quantize report's, on held-out inputs, and the sample's, by
/// the task's measure), and the agreement floor.
fn variants(
    args: &TuneArgs,
    model: &Arc<Model>,
    sample: &[InputEntry],
    threads: usize,
) -> anyhow::Result<(Vec<Variant>, Option<f64>)> {
    let fp32 = Variant {
        precision: Precision::Fp32,
        model: model.clone(),
        agreement: 1.0,
    };
    let Some(dir) = &args.int8 else {
        if args.min_agreement.is_some() {
            anyhow::bail!("`--min-agreement` bounds the int8 version (`--int8 DIR`) or reuse (`--reuse`): give one of them");
        }
        return Ok((vec![fp32], None));
    };
    let floor = args.min_agreement(0.99)?;
    let report = singlepoint_quantize::read_report(dir)?;
    if report.base_digest != model.digest.to_string() {
        anyhow::bail!(
            "{} was quantised from another model (digest {}), not from `{}` ({}): give the int8 version of the model tuned",
            dir.display(),
            report.base_digest,
            model.manifest.name,
            model.digest
        );
    }
    let int8 = Model::load(dir)
        .with_context(|| format!("cannot load the int8 version `{}`", dir.display()))?;
    if let Some(note) = singlepoint_runtime::ensure_onnxruntime(!args.no_fetch)? {
        eprintln!("note: {note}");
    }
    let inputs = sample
        .iter()
        .map(|e| {
            let bytes = std::fs::read(&e.path)
                .with_context(|| format!("cannot read {}", e.path.display()))?;
            Ok(singlepoint_quantize::Input {
                source: e.path.display().to_string(),
                item: ItemInput::Image(bytes.into()),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let on_sample = singlepoint_quantize::agreement(model.clone(), &int8, inputs, threads)?;
    eprintln!(
        "int8 version `{}`: {} agreement with fp32 {on_sample:.4} on the {} sample inputs, {:.4} on its quantize report's held-out inputs; floor {floor}",
        dir.display(),
        report.measure,
        sample.len(),
        report.agreement
    );
    let int8 = Variant {
        precision: Precision::Int8,
        model: Arc::new(int8),
        agreement: on_sample.min(report.agreement),
    };
    Ok((vec![fp32, int8], Some(floor)))
}
