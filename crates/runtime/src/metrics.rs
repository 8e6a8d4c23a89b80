//! What the single point counts, and the Prometheus text exposition it is read in: a few
//! counters, gauges and fixed-bucket histograms behind mutexes that are held for a few
//! nanoseconds per update. Kept by hand so that label sets stay bounded by construction.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Seconds: from 0.5 ms to 30 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Items per engine run.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0];

#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; the last one is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let idx = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[idx] += 1;
        self.sum += value;
        self.count += 1;
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Writes the histogram in the Prometheus text format, with `labels` on every line.
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[self.bounds.len()];
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// A histogram shared between threads.
pub struct SharedHistogram(Mutex<Histogram>);

impl SharedHistogram {
    pub fn new(bounds: &'static [f64]) -> SharedHistogram {
        SharedHistogram(Mutex::new(Histogram::new(bounds)))
    }

    pub fn observe(&self, value: f64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(value);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn snapshot(&self) -> Histogram {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What one model's serving path counts.
pub struct ModelMetrics {
    /// From entering the batch queue (after decoding) to the start of the engine run.
    pub queue_seconds: SharedHistogram,
    /// Decoding and preprocessing one image.
    pub decode_seconds: SharedHistogram,
    /// One engine run.
    pub compute_seconds: SharedHistogram,
    pub batch_size: SharedHistogram,
    pub executions: AtomicU64,
    pub items_computed: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub coalesced: AtomicU64,
    pub rejected: AtomicU64,
    pub expired: AtomicU64,
    /// Inputs padded to share a run: the positions holding the items' own values (tokens,
    /// for a text model) and the positions run, padding included (of the first padded input).
    pub padded_used: AtomicU64,
    pub padded_slots: AtomicU64,
    /// CPU time of the threads that did each stage, in nanoseconds.
    pub cpu: StageCpu,
}

/// CPU time spent in each stage of the single point, in nanoseconds, summed over threads.
#[derive(Default)]
pub struct StageCpu {
    /// Content keys, cache lookups and inserts, coalescing and admission.
    pub key_cache: AtomicU64,
    pub decode: AtomicU64,
    pub preprocess: AtomicU64,
    pub inference: AtomicU64,
    /// Output tensors split into per-item answers.
    pub postprocess: AtomicU64,
}

impl StageCpu {
    pub fn add(counter: &AtomicU64, d: Duration) {
        counter.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn get(counter: &AtomicU64) -> Duration {
        Duration::from_nanos(counter.load(Ordering::Relaxed))
    }
}

impl Default for ModelMetrics {
    fn default() -> Self {
        ModelMetrics {
            queue_seconds: SharedHistogram::new(SECONDS_BUCKETS),
            decode_seconds: SharedHistogram::new(SECONDS_BUCKETS),
            compute_seconds: SharedHistogram::new(SECONDS_BUCKETS),
            batch_size: SharedHistogram::new(BATCH_BUCKETS),
            executions: AtomicU64::new(0),
            items_computed: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            padded_used: AtomicU64::new(0),
            padded_slots: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            cpu: StageCpu::default(),
        }
    }
}

pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders one histogram family with a `model` label per model.
pub fn render_model_histograms<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    items: impl Iterator<Item = (&'a str, Histogram)>,
) {
    header(out, name, "histogram", help);
    for (model, h) in items {
        h.render(name, &format!("model=\"{}\"", escape(model)), out);
    }
}

/// Renders one counter or gauge family with a `model` label per model.
pub fn render_model_values<'a>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    items: impl Iterator<Item = (&'a str, f64)>,
) {
    header(out, name, kind, help);
    for (model, v) in items {
        let _ = writeln!(out, "{name}{{model=\"{}\"}} {v}", escape(model));
    }
}

pub fn load(counter: &AtomicU64) -> f64 {
    counter.load(Ordering::Relaxed) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_exposition() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render("x", "model=\"m\"", &mut out);
        assert!(out.contains("x_bucket{model=\"m\",le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{model=\"m\",le=\"2\"} 3\n"), "{out}");
        assert!(
            out.contains("x_bucket{model=\"m\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("x_count{model=\"m\"} 4\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
