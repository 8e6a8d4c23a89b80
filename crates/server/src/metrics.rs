//! The server's own metrics (requests by model, endpoint and outcome; open descriptors) beside
//! the single point's, which live in `singlepoint_runtime::metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

pub use singlepoint_runtime::metrics::*;

/// Request counts and durations by model, endpoint and outcome.
#[derive(Default)]
pub struct RequestMetrics {
    counts: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
    durations: Mutex<BTreeMap<(String, &'static str), Histogram>>,
}

impl RequestMetrics {
    pub fn record(&self, model: &str, endpoint: &'static str, outcome: &'static str, d: Duration) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((model.to_string(), endpoint, outcome))
            .or_default() += 1;
        self.durations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((model.to_string(), endpoint))
            .or_insert_with(|| Histogram::new(SECONDS_BUCKETS))
            .observe(d.as_secs_f64());
    }

    pub fn render(&self, out: &mut String) {
        header(
            out,
            "singlepoint_requests_total",
            "counter",
            "Requests by model, endpoint and outcome",
        );
        for ((model, endpoint, outcome), n) in
            self.counts.lock().unwrap_or_else(|p| p.into_inner()).iter()
        {
            let _ = writeln!(
                out,
                "singlepoint_requests_total{{model=\"{}\",endpoint=\"{endpoint}\",outcome=\"{outcome}\"}} {n}",
                escape(model)
            );
        }
        header(
            out,
            "singlepoint_request_duration_seconds",
            "histogram",
            "Time from receiving a request to its response",
        );
        for ((model, endpoint), h) in self
            .durations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let labels = format!("model=\"{}\",endpoint=\"{endpoint}\"", escape(model));
            h.render("singlepoint_request_duration_seconds", &labels, out);
        }
    }
}

/// Open file descriptors of this process (0 where unavailable).
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}
