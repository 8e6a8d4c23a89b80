//! The cost meter: what a run cost in time and resources, in the design's terms, and the one
//! number the tuner minimises, f = w_t·t + w_r·r.
//!
//! Terms (docs/cost-model.md says how each is measured):
//! - n items, N workers (engine instances), p the cache hit rate, q the parallel efficiency
//!   X(N) / (N·X(1)) with X the throughput;
//! - t = t0 + n·c / (q·N): t0 the fixed time (model load, sessions), c the CPU-seconds per item,
//!   c = p·c_hit + u·c_reuse + (1 − p − u)·c_miss, with u the fraction of video frames answered
//!   by reuse across near-identical frames (their cost is the difference check);
//! - r = r0 + n·c: CPU-seconds, r0 the fixed part; memory is charged as mean RSS × t;
//! - money = r / 3600 · price per core-hour + GiB(mean RSS) · t / 3600 · price per GiB-hour;
//! - f = w_t·t + w_r·money.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

/// Prices of resources, in money units (say US dollars) per hour.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Prices {
    pub core_hour: f64,
    pub gib_hour: f64,
}

impl Default for Prices {
    /// Roughly an on-demand cloud vCPU and GiB of memory (2026).
    fn default() -> Self {
        Prices {
            core_hour: 0.04,
            gib_hour: 0.005,
        }
    }
}

/// Weights of f = w_t·t + w_r·money: `time_per_hour` is what an hour of waiting is worth in
/// money units, `resources` multiplies the money spent.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Weights {
    pub time_per_hour: f64,
    pub resources: f64,
}

impl Default for Weights {
    /// An hour of wall time weighs as much as a core-hour: a run that finishes sooner on the
    /// same CPU-seconds is cheaper, and CPU-seconds still dominate when they grow.
    fn default() -> Self {
        Weights {
            time_per_hour: Prices::default().core_hour,
            resources: 1.0,
        }
    }
}

/// The design's model of a run: fixed costs and per-item costs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CostModel {
    /// Fixed wall time, seconds.
    pub t0: f64,
    /// Fixed CPU, core-seconds.
    pub r0: f64,
    /// CPU per computed item, core-seconds.
    pub c_miss: f64,
    /// CPU per item answered by the cache, core-seconds.
    pub c_hit: f64,
    /// CPU per video frame answered by reuse (decoding it and the difference check).
    pub c_reuse: f64,
}

/// A prediction (or measurement) of one run's time and resources.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RunCost {
    /// Wall time, seconds.
    pub t: f64,
    /// CPU, core-seconds.
    pub r: f64,
    pub money: f64,
    pub f: f64,
}

/// Money and f for a run of `t` seconds, `r` core-seconds and `mean_rss_gib` of memory.
pub fn price(t: f64, r: f64, mean_rss_gib: f64, prices: &Prices, weights: &Weights) -> RunCost {
    let money = r / 3600.0 * prices.core_hour + mean_rss_gib * t / 3600.0 * prices.gib_hour;
    let f = weights.time_per_hour * t / 3600.0 + weights.resources * money;
    RunCost { t, r, money, f }
}

impl CostModel {
    /// CPU-seconds per item at hit rate `p` and reuse rate `u` (the three cases: an exact
    /// hit, a reused frame, a computed item).
    pub fn per_item(&self, p: f64, u: f64) -> f64 {
        (1.0 - p - u) * self.c_miss + p * self.c_hit + u * self.c_reuse
    }

    /// t and r for `n` items on `workers` workers at hit rate `p`, reuse rate `u` and parallel
    /// efficiency `q`.
    pub fn predict(&self, n: f64, workers: f64, p: f64, u: f64, q: f64) -> (f64, f64) {
        let c = self.per_item(p, u);
        let t = self.t0 + n * c / (q * workers);
        let r = self.r0 + n * c;
        (t, r)
    }
}

/// Samples this process's resident set size in the background: mean and peak.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    sum: Arc<AtomicU64>,
    count: Arc<AtomicU64>,
    peak: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(every: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let sum = Arc::new(AtomicU64::new(0));
        let count = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, su, c, pk) = (stop.clone(), sum.clone(), count.clone(), peak.clone());
        let thread = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || loop {
                let rss = rss_bytes();
                su.fetch_add(rss / 1024, Ordering::Relaxed);
                c.fetch_add(1, Ordering::Relaxed);
                pk.fetch_max(rss, Ordering::Relaxed);
                if s.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::park_timeout(every);
            })
            .ok();
        RssSampler {
            stop,
            sum,
            count,
            peak,
            thread,
        }
    }

    /// Mean and peak RSS in bytes since the start.
    pub fn read(&self) -> (u64, u64) {
        let n = self.count.load(Ordering::Relaxed).max(1);
        (
            self.sum.load(Ordering::Relaxed) / n * 1024,
            self.peak.load(Ordering::Relaxed),
        )
    }

    /// Stops sampling (after one last sample) and returns mean and peak RSS in bytes.
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        self.read()
    }
}

/// Resident set size of this process now, from `/proc/self/statm` (0 where unavailable).
pub fn rss_bytes() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// CPU-seconds per stage, per item.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StageCosts {
    pub key_and_cache: f64,
    pub read: f64,
    pub decode: f64,
    pub preprocess: f64,
    pub inference: f64,
    pub postprocess: f64,
}

/// Everything `classify --report` reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostReport {
    /// n: items.
    pub items: usize,
    /// N: workers (engine instances).
    pub workers: usize,
    pub model_executions: usize,
    /// p: items answered without running the model (cache hits and shared computations).
    pub hit_rate: f64,
    /// u: video frames answered by reuse across near-identical frames (their cost is the
    /// decode and the difference check, not the model).
    pub reuse_rate: f64,
    /// q: X(N) / (N·X(1)), measured on a calibration sample; `None` when not measured.
    pub parallel_efficiency: Option<f64>,
    /// How q was measured.
    pub q_sample: Option<String>,
    /// t0: from process start to the first item (model load, engine, sessions), seconds.
    pub t0: f64,
    /// r0: CPU-seconds spent before the first item.
    pub r0: f64,
    /// The run itself: wall seconds and CPU-seconds.
    pub run_seconds: f64,
    pub run_cpu_seconds: f64,
    /// CPU-seconds per item (the run's CPU over n).
    pub cpu_per_item: f64,
    pub mean_rss_bytes: u64,
    pub peak_rss_bytes: u64,
    /// Per-item CPU-seconds of each stage (worker threads).
    pub stages: StageCosts,
    pub prices: Prices,
    pub weights: Weights,
    /// t = t0 + run, r = r0 + run CPU, money and f.
    pub total: RunCost,
    /// The same for the run alone (what one more run of this size costs, model loaded).
    pub marginal: RunCost,
}

impl CostReport {
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let q = match (self.parallel_efficiency, &self.q_sample) {
            (Some(q), Some(how)) => format!("{q:.3} ({how})"),
            (Some(q), None) => format!("{q:.3}"),
            _ => "not measured".into(),
        };
        s.push_str(&format!(
            "cost: n = {} items, N = {} workers, p = {:.3}, u = {:.3} (reused frames), q = {q}\n",
            self.items, self.workers, self.hit_rate, self.reuse_rate
        ));
        s.push_str(&format!(
            "  t = t0 + run = {:.3} + {:.3} = {:.3} s; r = r0 + run = {:.3} + {:.3} = {:.3} core-s; {:.2} core-ms per item\n",
            self.t0,
            self.run_seconds,
            self.total.t,
            self.r0,
            self.run_cpu_seconds,
            self.total.r,
            self.cpu_per_item * 1e3,
        ));
        let st = &self.stages;
        s.push_str(&format!(
            "  per item (core-ms): key+cache {:.2}, read {:.2}, decode {:.2}, preprocess {:.2}, inference {:.2}, postprocess {:.2}\n",
            st.key_and_cache * 1e3,
            st.read * 1e3,
            st.decode * 1e3,
            st.preprocess * 1e3,
            st.inference * 1e3,
            st.postprocess * 1e3
        ));
        s.push_str(&format!(
            "  memory: mean {:.0} MiB, peak {:.0} MiB; {} model executions\n",
            self.mean_rss_bytes as f64 / 1048576.0,
            self.peak_rss_bytes as f64 / 1048576.0,
            self.model_executions
        ));
        s.push_str(&format!(
            "  money at {}/core-hour and {}/GiB-hour: {:.8} in all, {:.8} for the run; f = w_t·t + w_r·money = {:.8} (w_t = {}/hour, w_r = {})",
            self.prices.core_hour,
            self.prices.gib_hour,
            self.total.money,
            self.marginal.money,
            self.total.f,
            self.weights.time_per_hour,
            self.weights.resources
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
    }

    /// The design's worked case: t0, p, q, n, N in; t, r, f out.
    #[test]
    fn the_worked_case() {
        let model = CostModel {
            t0: 0.5,
            r0: 0.6,
            c_miss: 0.015,
            c_hit: 0.0005,
            c_reuse: 0.002,
        };
        let (n, workers, p, q) = (1000.0, 2.0, 0.9, 0.8);
        // c = 0.1·0.015 + 0.9·0.0005 = 0.00195 core-s per item
        assert!(close(model.per_item(p, 0.0), 0.00195));
        // Half the misses reused instead: c = 0.05·0.015 + 0.9·0.0005 + 0.05·0.002
        assert!(close(model.per_item(p, 0.05), 0.0013));
        let (t, r) = model.predict(n, workers, p, 0.0, q);
        // t = 0.5 + 1000·0.00195 / (0.8·2) = 0.5 + 1.21875
        assert!(close(t, 1.71875), "{t}");
        // r = 0.6 + 1000·0.00195
        assert!(close(r, 2.55), "{r}");
        let prices = Prices {
            core_hour: 0.036,
            gib_hour: 0.0036,
        };
        let weights = Weights {
            time_per_hour: 0.036,
            resources: 1.0,
        };
        let cost = price(t, r, 0.5, &prices, &weights);
        // money = 2.55/3600·0.036 + 0.5·1.71875/3600·0.0036 = 2.55e-5 + 8.59375e-7
        assert!(close(cost.money, 2.55e-5 + 8.59375e-7), "{}", cost.money);
        // f = 0.036·1.71875/3600 + money = 1.71875e-5 + money
        assert!(close(cost.f, 1.71875e-5 + cost.money), "{}", cost.f);
    }

    #[test]
    fn hits_reuse_and_parallelism_lower_time_and_only_hits_and_reuse_lower_resources() {
        let m = CostModel {
            t0: 1.0,
            r0: 1.0,
            c_miss: 0.01,
            c_hit: 0.0001,
            c_reuse: 0.001,
        };
        let (t1, r1) = m.predict(100.0, 1.0, 0.0, 0.0, 1.0);
        let (t2, r2) = m.predict(100.0, 2.0, 0.0, 0.0, 1.0);
        let (t3, r3) = m.predict(100.0, 2.0, 0.0, 0.0, 0.5);
        let (t4, r4) = m.predict(100.0, 1.0, 0.9, 0.0, 1.0);
        let (t5, r5) = m.predict(100.0, 1.0, 0.0, 0.9, 1.0);
        assert!(t2 < t1 && close(r1, r2));
        assert!(close(t3, t1), "q = 0.5 on 2 workers is no faster than 1");
        assert!(close(r3, r1), "parallelism never saves resources");
        assert!(t4 < t1 && r4 < r1);
        assert!(
            t5 < t1 && r5 < r1 && r4 < r5,
            "reuse saves, a hit saves more"
        );
    }

    #[test]
    fn the_sampler_sees_memory() {
        let s = RssSampler::start(Duration::from_millis(1));
        let block = vec![1u8; 32 << 20];
        std::thread::sleep(Duration::from_millis(20));
        let (mean, peak) = s.finish();
        assert!(peak >= 32 << 20, "{peak}");
        assert!(mean > 0 && mean <= peak);
        drop(block);
    }
}
