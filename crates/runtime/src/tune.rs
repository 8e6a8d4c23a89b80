//! `singlepoint tune`: search the configuration space by running the real pipeline on a sample
//! of the workload, and pick the configuration with the lowest cost f that meets the
//! constraints.
//!
//! Every candidate is measured by classifying the sample with the cache bypassed: throughput,
//! CPU per item, the p99 of item latency (an item's latency is its batch's wall time), mean RSS,
//! and its fixed cost (engine load and sessions). Its cost is f for the whole workload of n
//! items: t = startup + n/X, r = startup CPU + n·c (see [`crate::cost`]).
//!
//! Searches: `halving` (default) measures every candidate once, then repeatedly re-measures the
//! better half until two remain, so that noise cannot pick a lucky candidate; `exhaustive`
//! measures every candidate `rounds` times; `descent` starts from the default configuration and
//! moves one coordinate at a time while f improves by more than the measured noise margin (for
//! spaces too large to sweep). All stop when the time budget is spent.
//!
//! Precision is a coordinate like the others: given the int8 version of the model (what
//! `singlepoint quantize` writes), each configuration is tried with either graph, and an int8
//! candidate is feasible only when its agreement with fp32 (measured by the caller, by the
//! task's own measure) meets the agreement floor.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use singlepoint_backend::{BackendKind, Engine, EngineOptions};
use singlepoint_model::Model;

use crate::cost::{price, Prices, RssSampler, RunCost, Weights};
use crate::cputime::process_cpu_time;
use crate::{load_engine, BackendChoice, Classifier, InputEntry, PipelineConfig, RuntimeError};

/// Which version of the model's graph runs.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
        }
    }
}

/// One point of the configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Candidate {
    #[serde(with = "backend_name")]
    pub backend: BackendKind,
    /// Configurations written before precision was a coordinate are fp32 ones.
    #[serde(default)]
    pub precision: Precision,
    pub instances: usize,
    pub threads_per_instance: usize,
    pub batch_size: usize,
}

mod backend_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use singlepoint_backend::BackendKind;

    pub fn serialize<S: Serializer>(k: &BackendKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BackendKind, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}x{} batch {}",
            self.backend,
            self.precision.as_str(),
            self.instances,
            self.threads_per_instance,
            self.batch_size
        )
    }
}

/// The values each coordinate may take. Candidates use at most `max_threads` threads in all;
/// int8 ones run on ONNX Runtime only (its integer kernels are what int8 is for).
#[derive(Clone, Debug)]
pub struct Space {
    pub backends: Vec<BackendKind>,
    pub precisions: Vec<Precision>,
    pub instances: Vec<usize>,
    pub threads_per_instance: Vec<usize>,
    pub batch_sizes: Vec<usize>,
    pub max_threads: usize,
}

impl Space {
    /// The one rule on which combinations are tried: threads within the budget, and int8 on
    /// ONNX Runtime only.
    pub fn allows(&self, c: &Candidate) -> bool {
        c.instances * c.threads_per_instance <= self.max_threads
            && (c.precision == Precision::Fp32 || c.backend == BackendKind::Ort)
    }

    pub fn candidates(&self) -> Vec<Candidate> {
        let mut out = Vec::new();
        for &backend in &self.backends {
            for &precision in &self.precisions {
                for &instances in &self.instances {
                    for &threads_per_instance in &self.threads_per_instance {
                        for &batch_size in &self.batch_sizes {
                            out.push(Candidate {
                                backend,
                                precision,
                                instances,
                                threads_per_instance,
                                batch_size,
                            });
                        }
                    }
                }
            }
        }
        out.retain(|c| self.allows(c));
        out
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Constraints {
    /// p99 item latency at most this, seconds.
    pub slo_p99: Option<f64>,
    /// Throughput at least this, items per second.
    pub min_throughput: Option<f64>,
    /// Mean RSS at most this, bytes.
    pub max_rss: Option<u64>,
    /// Agreement with the fp32 model at least this (0 to 1).
    pub min_agreement: Option<f64>,
}

/// One version of the model the tuner may run, with its agreement with the fp32 version
/// (1 for the fp32 version itself).
#[derive(Clone)]
pub struct Variant {
    pub precision: Precision,
    pub model: Arc<Model>,
    pub agreement: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    Halving,
    Exhaustive { rounds: usize },
    Descent,
}

/// One measurement of one candidate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    pub throughput: f64,
    pub p99_latency: f64,
    pub cpu_per_item: f64,
    pub mean_rss: u64,
}

/// Everything known about one candidate.
#[derive(Clone, Debug, Serialize)]
pub struct Trial {
    pub candidate: Candidate,
    /// Its precision's agreement with fp32.
    pub agreement: f64,
    pub samples: Vec<Sample>,
    /// Engine load and session creation: seconds and CPU-seconds.
    pub startup: (f64, f64),
    /// Medians over the samples.
    pub throughput: f64,
    pub p99_latency: f64,
    pub cpu_per_item: f64,
    pub mean_rss: u64,
    /// The whole workload's cost at the medians.
    pub cost: RunCost,
    /// Why it breaks a constraint, if it does.
    pub infeasible: Option<String>,
}

pub struct TuneSettings {
    pub space: Space,
    pub default: Candidate,
    pub search: Search,
    pub constraints: Constraints,
    /// Items in the workload f is computed for.
    pub workload_items: usize,
    pub prices: Prices,
    pub weights: Weights,
    pub budget: Duration,
    pub allow_fetch: bool,
}

pub struct TuneResult {
    pub trials: Vec<Trial>,
    pub best: Option<Candidate>,
    pub elapsed: Duration,
    /// The relative spread of f between repeated measurements of one candidate.
    pub noise: Option<f64>,
    pub budget_spent: bool,
}

impl TuneResult {
    pub fn trial(&self, c: &Candidate) -> Option<&Trial> {
        self.trials.iter().find(|t| t.candidate == *c)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The p99 of item latency from (batch wall, items in the batch).
pub fn p99_item_latency(batches: &[(Duration, usize)]) -> f64 {
    let mut b: Vec<(f64, usize)> = batches.iter().map(|(d, n)| (d.as_secs_f64(), *n)).collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total: usize = b.iter().map(|x| x.1).sum();
    let threshold = (total as f64 * 0.99).ceil() as usize;
    let mut seen = 0;
    for (wall, n) in &b {
        seen += n;
        if seen >= threshold.max(1) {
            return *wall;
        }
    }
    b.last().map_or(0.0, |x| x.0)
}

/// An engine with what loading it cost: seconds and CPU-seconds.
type LoadedWithCost = (Arc<dyn Engine>, (f64, f64));

struct Tuner<'a> {
    variants: &'a [Variant],
    sample: &'a [InputEntry],
    settings: &'a TuneSettings,
    /// The one engine kept loaded, by backend, precision and threads per session.
    engine: Option<((BackendKind, Precision, usize), LoadedWithCost)>,
    trials: BTreeMap<Candidate, Trial>,
    started: Instant,
}

impl Tuner<'_> {
    fn out_of_time(&self) -> bool {
        self.started.elapsed() >= self.settings.budget
    }

    /// The version of a precision (`tune` checked that the space has only these).
    fn variant(&self, p: Precision) -> &Variant {
        self.variants
            .iter()
            .find(|v| v.precision == p)
            .expect("tune checks each precision has a version")
    }

    /// The engine for a backend, precision and thread count, loading it (and dropping the
    /// last) if needed.
    fn engine(&mut self, c: &Candidate) -> Result<LoadedWithCost, RuntimeError> {
        let key = (c.backend, c.precision, c.threads_per_instance);
        if let Some((k, (e, cost))) = &self.engine {
            if *k == key {
                return Ok((e.clone(), *cost));
            }
        }
        self.engine = None;
        let t0 = Instant::now();
        let cpu0 = process_cpu_time();
        let model = self.variant(c.precision).model.clone();
        let loaded = load_engine(
            &model,
            BackendChoice::Only(c.backend),
            EngineOptions {
                threads_per_session: c.threads_per_instance,
                ..EngineOptions::default()
            },
            self.settings.allow_fetch,
        )?;
        let cost = (
            t0.elapsed().as_secs_f64(),
            process_cpu_time().saturating_sub(cpu0).as_secs_f64(),
        );
        self.engine = Some((key, (loaded.engine.clone(), cost)));
        Ok((loaded.engine, cost))
    }

    fn measure(&mut self, c: Candidate) -> Result<&Trial, RuntimeError> {
        let (engine, load) = self.engine(&c)?;
        let variant = self.variant(c.precision);
        let (model, agreement) = (variant.model.clone(), variant.agreement);
        let classifier = Classifier::new(
            model,
            engine,
            PipelineConfig {
                batch_size: c.batch_size,
                instances: c.instances,
                top_k: 1,
                ..PipelineConfig::default()
            },
        )?;
        let rss = RssSampler::start(Duration::from_millis(20));
        let cpu0 = process_cpu_time();
        let t0 = Instant::now();
        let stats = classifier.run(self.sample.iter().cloned(), |_| ControlFlow::Continue(()))?;
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = process_cpu_time().saturating_sub(cpu0).as_secs_f64();
        let (mean_rss, _) = rss.finish();
        let wall = stats.wall.as_secs_f64().max(1e-9);
        let items = stats.items.max(1) as f64;
        let sessions = elapsed - wall;
        let sample = Sample {
            throughput: items / wall,
            p99_latency: p99_item_latency(&stats.batch_walls),
            cpu_per_item: cpu / items,
            mean_rss,
        };
        let s = self.settings;
        let trial = self.trials.entry(c).or_insert_with(|| Trial {
            candidate: c,
            agreement,
            samples: Vec::new(),
            startup: (load.0 + sessions, load.1),
            throughput: 0.0,
            p99_latency: 0.0,
            cpu_per_item: 0.0,
            mean_rss: 0,
            cost: price(0.0, 0.0, 0.0, &s.prices, &s.weights),
            infeasible: None,
        });
        trial.samples.push(sample);
        trial.throughput = median(trial.samples.iter().map(|x| x.throughput).collect());
        trial.p99_latency = median(trial.samples.iter().map(|x| x.p99_latency).collect());
        trial.cpu_per_item = median(trial.samples.iter().map(|x| x.cpu_per_item).collect());
        trial.mean_rss = median(trial.samples.iter().map(|x| x.mean_rss as f64).collect()) as u64;
        let n = s.workload_items as f64;
        let t = trial.startup.0 + n / trial.throughput;
        let r = trial.startup.1 + n * trial.cpu_per_item;
        let gib = trial.mean_rss as f64 / (1u64 << 30) as f64;
        trial.cost = price(t, r, gib, &s.prices, &s.weights);
        let k = &s.constraints;
        trial.infeasible = if let Some(floor) = k.min_agreement.filter(|&f| agreement < f) {
            Some(format!("agreement {agreement:.4} under the floor {floor}"))
        } else if k.slo_p99.is_some_and(|slo| trial.p99_latency > slo) {
            Some(format!(
                "p99 {:.0} ms over the SLO",
                trial.p99_latency * 1e3
            ))
        } else if k.min_throughput.is_some_and(|x| trial.throughput < x) {
            Some(format!("{:.1}/s under the floor", trial.throughput))
        } else if k.max_rss.is_some_and(|m| trial.mean_rss > m) {
            Some(format!("RSS {} MiB over the cap", trial.mean_rss >> 20))
        } else {
            None
        };
        Ok(trial)
    }

    /// Candidates ordered by f, feasible ones first.
    fn ranked(&self, among: &[Candidate]) -> Vec<Candidate> {
        let mut v: Vec<&Trial> = among.iter().filter_map(|c| self.trials.get(c)).collect();
        v.sort_by(|a, b| {
            a.infeasible
                .is_some()
                .cmp(&b.infeasible.is_some())
                .then(a.cost.f.total_cmp(&b.cost.f))
        });
        v.into_iter().map(|t| t.candidate).collect()
    }

    /// Measures each candidate once more, in an order that reuses loaded engines.
    fn sweep(&mut self, mut list: Vec<Candidate>) -> Result<(), RuntimeError> {
        list.sort_by_key(|c| {
            (
                c.backend.as_str(),
                c.precision,
                c.threads_per_instance,
                c.instances,
                c.batch_size,
            )
        });
        for c in list {
            if self.out_of_time() {
                break;
            }
            self.measure(c)?;
        }
        Ok(())
    }

    fn halving(&mut self, all: Vec<Candidate>) -> Result<(), RuntimeError> {
        self.sweep(all.clone())?;
        let mut survivors = self.ranked(&all);
        while survivors.len() > 2 && !self.out_of_time() {
            survivors.truncate(survivors.len().div_ceil(2).max(2));
            self.sweep(survivors.clone())?;
            survivors = self.ranked(&survivors);
        }
        // The last two: a third look each, so the winner is a median of three.
        if !self.out_of_time() {
            self.sweep(survivors.clone())?;
        }
        Ok(())
    }

    /// The relative spread of f over three measurements of `c`.
    fn noise(&mut self, c: Candidate) -> Result<f64, RuntimeError> {
        while self.trials.get(&c).map_or(0, |t| t.samples.len()) < 3 && !self.out_of_time() {
            self.measure(c)?;
        }
        let t = &self.trials[&c];
        let n = self.settings.workload_items as f64;
        let fs: Vec<f64> = t.samples.iter().map(|s| n / s.throughput).collect();
        let lo = fs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = fs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Ok(if lo > 0.0 { (hi - lo) / lo } else { 0.0 })
    }

    fn neighbours(&self, c: Candidate) -> Vec<Candidate> {
        let sp = &self.settings.space;
        let mut out = Vec::new();
        let step = |values: &[usize], v: usize| -> Vec<usize> {
            let i = values.iter().position(|&x| x == v);
            let mut n = Vec::new();
            if let Some(i) = i {
                if i > 0 {
                    n.push(values[i - 1]);
                }
                if i + 1 < values.len() {
                    n.push(values[i + 1]);
                }
            }
            n
        };
        for b in step(&sp.batch_sizes, c.batch_size) {
            out.push(Candidate { batch_size: b, ..c });
        }
        for i in step(&sp.instances, c.instances) {
            out.push(Candidate { instances: i, ..c });
        }
        for t in step(&sp.threads_per_instance, c.threads_per_instance) {
            out.push(Candidate {
                threads_per_instance: t,
                ..c
            });
        }
        for &b in &sp.backends {
            if b != c.backend {
                out.push(Candidate { backend: b, ..c });
            }
        }
        for &p in &sp.precisions {
            if p != c.precision {
                out.push(Candidate { precision: p, ..c });
            }
        }
        out.retain(|n| sp.allows(n));
        out
    }

    fn descent(&mut self, start: Candidate) -> Result<f64, RuntimeError> {
        let margin = self.noise(start)?;
        let mut best = start;
        loop {
            let mut moved = false;
            for n in self.neighbours(best) {
                if self.out_of_time() {
                    return Ok(margin);
                }
                if !self.trials.contains_key(&n) {
                    self.measure(n)?;
                }
                let better = {
                    let (a, b) = (&self.trials[&n], &self.trials[&best]);
                    let feasible_gain = a.infeasible.is_none() && b.infeasible.is_some();
                    feasible_gain
                        || (a.infeasible.is_none() == b.infeasible.is_none()
                            && a.cost.f < b.cost.f * (1.0 - margin))
                };
                if better {
                    best = n;
                    moved = true;
                }
            }
            if !moved {
                return Ok(margin);
            }
        }
    }
}

/// Runs the search on `sample` and returns every trial with the best feasible candidate.
/// `variants` holds the model's version for each precision in the space.
pub fn tune(
    variants: &[Variant],
    sample: &[InputEntry],
    settings: &TuneSettings,
) -> Result<TuneResult, RuntimeError> {
    for p in settings
        .space
        .precisions
        .iter()
        .chain([&settings.default.precision])
    {
        if !variants.iter().any(|v| v.precision == *p) {
            return Err(RuntimeError::Config {
                field: p.as_str().into(),
                reason: "is in the search space, but no version of that precision was given".into(),
            });
        }
    }
    let mut tuner = Tuner {
        variants,
        sample,
        settings,
        engine: None,
        trials: BTreeMap::new(),
        started: Instant::now(),
    };
    let all = settings.space.candidates();
    let mut noise = None;
    match settings.search {
        Search::Halving => tuner.halving(all)?,
        Search::Exhaustive { rounds } => {
            for _ in 0..rounds.max(1) {
                tuner.sweep(all.clone())?;
            }
        }
        Search::Descent => noise = Some(tuner.descent(settings.default)?),
    }
    // The default is always measured, so the report can compare against it.
    if !tuner.trials.contains_key(&settings.default) {
        tuner.measure(settings.default)?;
    }
    let measured: Vec<Candidate> = tuner.trials.keys().copied().collect();
    let best = tuner
        .ranked(&measured)
        .into_iter()
        .find(|c| tuner.trials[c].infeasible.is_none());
    Ok(TuneResult {
        elapsed: tuner.started.elapsed(),
        budget_spent: tuner.out_of_time(),
        trials: tuner.trials.into_values().collect(),
        best,
        noise,
    })
}

/// What `tune` writes and `classify --config` / `serve --config` read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(flatten)]
    pub candidate: Candidate,
    /// The model folder of the chosen precision, where it is not the model tuned for (the
    /// int8 version); `classify` and `serve` run it unless told another model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<std::path::PathBuf>,
    /// How it was chosen (free-form, for people).
    #[serde(default)]
    pub chosen_by: serde_json::Value,
}

impl RunConfig {
    pub fn load(path: &Path) -> Result<RunConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config `{}`: {e}", path.display()))?;
        let config: RunConfig = serde_json::from_str(&text)
            .map_err(|e| format!("the config `{}` is not valid: {e}", path.display()))?;
        let c = &config.candidate;
        if c.instances == 0 || c.threads_per_instance == 0 || c.batch_size == 0 {
            return Err(format!(
                "the config `{}`: instances, threads_per_instance and batch_size must be at least 1",
                path.display()
            ));
        }
        Ok(config)
    }
}

/// Trials not dominated in (p99 latency lower, throughput higher, f lower).
pub fn pareto_front(trials: &[Trial]) -> Vec<Candidate> {
    trials
        .iter()
        .filter(|a| {
            !trials.iter().any(|b| {
                b.p99_latency <= a.p99_latency
                    && b.throughput >= a.throughput
                    && b.cost.f <= a.cost.f
                    && (b.p99_latency < a.p99_latency
                        || b.throughput > a.throughput
                        || b.cost.f < a.cost.f)
            })
        })
        .map(|t| t.candidate)
        .collect()
}

/// An SVG document's opening, white, with the x and y axes of a plot `w` × `h` with margin `m`
/// (the caller closes it with `</svg>`).
pub fn svg_axes(w: f64, h: f64, m: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<line x1=\"{m}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/><line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{0}\" stroke=\"black\"/>\n",
        h - m,
        w - m
    )
}

/// The latency–throughput plane with each trial's f as its colour, the Pareto front joined and
/// the chosen candidate ringed; an SVG document.
pub fn pareto_svg(trials: &[Trial], best: Option<Candidate>, default: Candidate) -> String {
    let (w, h, m) = (760.0, 480.0, 70.0);
    let xs: Vec<f64> = trials.iter().map(|t| t.p99_latency * 1e3).collect();
    let ys: Vec<f64> = trials.iter().map(|t| t.throughput).collect();
    let fs: Vec<f64> = trials.iter().map(|t| t.cost.f).collect();
    let max = |v: &[f64]| v.iter().copied().fold(0.0f64, f64::max) * 1.1 + 1e-9;
    let (xmax, ymax) = (max(&xs), max(&ys));
    let fmin = fs.iter().copied().fold(f64::INFINITY, f64::min);
    let fmax = fs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let px = |x: f64| m + x / xmax * (w - 2.0 * m);
    let py = |y: f64| h - m - y / ymax * (h - 2.0 * m);
    let mut s = svg_axes(w, h, m);
    for i in 0..=4 {
        let x = xmax * i as f64 / 4.0;
        let y = ymax * i as f64 / 4.0;
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{x:.0}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{y:.0}</text>\n",
            px(x),
            h - m + 18.0,
            m - 6.0,
            py(y) + 4.0
        );
    }
    s += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">p99 item latency (ms)</text>\n<text x=\"18\" y=\"{:.1}\" transform=\"rotate(-90 18 {:.1})\" text-anchor=\"middle\">throughput (items/s)</text>\n",
        w / 2.0,
        h - 20.0,
        h / 2.0,
        h / 2.0
    );
    s += &format!(
        "<text x=\"{m}\" y=\"30\" font-size=\"14\">Candidates: colour is cost f (green lowest {fmin:.3e}, red highest {fmax:.3e}); line: Pareto front; ring: chosen; square: default</text>\n"
    );
    let mut front: Vec<&Trial> = {
        let f = pareto_front(trials);
        trials.iter().filter(|t| f.contains(&t.candidate)).collect()
    };
    front.sort_by(|a, b| a.p99_latency.total_cmp(&b.p99_latency));
    let points: Vec<String> = front
        .iter()
        .map(|t| format!("{:.1},{:.1}", px(t.p99_latency * 1e3), py(t.throughput)))
        .collect();
    s += &format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#555\" stroke-dasharray=\"4 3\"/>\n",
        points.join(" ")
    );
    for t in trials {
        let k = if fmax > fmin {
            (t.cost.f - fmin) / (fmax - fmin)
        } else {
            0.0
        };
        let colour = format!(
            "rgb({},{},60)",
            (40.0 + 200.0 * k) as u8,
            (200.0 - 160.0 * k) as u8
        );
        let (x, y) = (px(t.p99_latency * 1e3), py(t.throughput));
        if t.candidate == default {
            s += &format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{colour}\" stroke=\"black\"/>\n",
                x - 5.0,
                y - 5.0
            );
        } else {
            s += &format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"{colour}\"/>\n");
        }
        if Some(t.candidate) == best {
            s += &format!(
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"10\" fill=\"none\" stroke=\"black\" stroke-width=\"2\"/>\n"
            );
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\">{}{}</text>\n",
            x + 8.0,
            y - 6.0,
            t.candidate,
            if t.infeasible.is_some() { " (x)" } else { "" }
        );
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(c: usize, p99: f64, x: f64, f: f64) -> Trial {
        Trial {
            candidate: Candidate {
                backend: BackendKind::Ort,
                precision: Precision::Fp32,
                instances: 1,
                threads_per_instance: 1,
                batch_size: c,
            },
            agreement: 1.0,
            samples: vec![],
            startup: (0.0, 0.0),
            throughput: x,
            p99_latency: p99,
            cpu_per_item: 0.0,
            mean_rss: 0,
            cost: RunCost {
                t: 0.0,
                r: 0.0,
                money: f,
                f,
            },
            infeasible: None,
        }
    }

    #[test]
    fn the_front_keeps_exactly_the_undominated() {
        let trials = vec![
            trial(1, 0.010, 100.0, 3.0),
            trial(2, 0.020, 150.0, 2.0),
            trial(4, 0.030, 140.0, 2.5), // dominated by batch 2
            trial(8, 0.050, 160.0, 2.2),
        ];
        let front: Vec<usize> = pareto_front(&trials).iter().map(|c| c.batch_size).collect();
        assert_eq!(front, vec![1, 2, 8]);
        let svg = pareto_svg(&trials, Some(trials[1].candidate), trials[0].candidate);
        assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("<rect x"));
    }

    #[test]
    fn p99_is_weighted_by_batch_size() {
        let ms = Duration::from_millis;
        // 99 items in fast batches, one slow batch of 1: the p99 item is a fast one.
        let mut b = vec![(ms(10), 9); 11];
        b.push((ms(500), 1));
        assert_eq!(p99_item_latency(&b), 0.010);
        // A slow batch holding 2 % of the items sets the p99.
        b.push((ms(400), 2));
        assert_eq!(p99_item_latency(&b), 0.4);
    }

    #[test]
    fn the_space_respects_the_thread_budget() {
        let space = Space {
            backends: vec![BackendKind::Ort],
            precisions: vec![Precision::Fp32],
            instances: vec![1, 2],
            threads_per_instance: vec![1, 2],
            batch_sizes: vec![1, 4],
            max_threads: 2,
        };
        let c = space.candidates();
        assert_eq!(c.len(), 6, "2x2 threads is over the budget");
        assert!(c.iter().all(|c| c.instances * c.threads_per_instance <= 2));
    }

    #[test]
    fn int8_candidates_run_on_onnx_runtime_only() {
        let space = Space {
            backends: vec![BackendKind::Ort, BackendKind::Tract],
            precisions: vec![Precision::Fp32, Precision::Int8],
            instances: vec![1],
            threads_per_instance: vec![1],
            batch_sizes: vec![4],
            max_threads: 1,
        };
        let c = space.candidates();
        assert_eq!(c.len(), 3, "{c:?}");
        assert!(c
            .iter()
            .all(|c| c.precision == Precision::Fp32 || c.backend == BackendKind::Ort));
    }

    #[test]
    fn configs_round_trip_and_refuse_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(
            &path,
            r#"{"backend":"ort","instances":2,"threads_per_instance":1,"batch_size":4}"#,
        )
        .unwrap();
        let c = RunConfig::load(&path).unwrap();
        assert_eq!(c.candidate.instances, 2);
        // Written before precision was a coordinate: fp32, the model tuned for.
        assert_eq!((c.candidate.precision, c.model), (Precision::Fp32, None));
        std::fs::write(
            &path,
            r#"{"backend":"ort","instances":0,"threads_per_instance":1,"batch_size":4}"#,
        )
        .unwrap();
        assert!(RunConfig::load(&path).unwrap_err().contains("at least 1"));
        std::fs::write(
            &path,
            r#"{"backend":"gpu","instances":1,"threads_per_instance":1,"batch_size":4}"#,
        )
        .unwrap();
        assert!(RunConfig::load(&path).is_err());
    }
}
