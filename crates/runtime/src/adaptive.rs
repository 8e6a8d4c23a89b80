//! Online batching control (`serve --latency-target`): the batcher's batch-size cap and queue
//! delay follow the load, holding the p99 item latency under the target while making batches
//! as large as that allows.
//!
//! - A latency model per engine run, compute ≈ a·batch + b, fitted by least squares with
//!   exponential forgetting over the runs as they happen.
//! - The batch cap is the largest batch whose predicted compute fits in half the target (the
//!   other half is for queueing and decoding), shrunk when the observed p99 breaks the target.
//! - The queue delay is tuned by what waiting buys: a batch that waited and gained items lets
//!   the delay grow (up to a quarter of the target); a wait that gained nothing halves it, so a
//!   lone closed-loop client soon stops waiting; when the observed arrival rate λ promises at
//!   least two arrivals within the longest delay, an idle batcher probes with the delay 2/λ,
//!   backing off (0.25 s doubling to 2 s, so a step in load is found within 2 s) after probes
//!   that gain nothing. Any p99 over the target resets the delay to zero.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Latencies kept for the p99.
const WINDOW: usize = 512;
/// How often the cap, the arrival rate and the p99 are recomputed.
const PERIOD: Duration = Duration::from_millis(50);
/// Weight of the past in the latency fit, per engine run.
const FORGET: f64 = 0.97;

pub struct Adaptive {
    target: f64,
    max_batch: usize,
    arrivals: AtomicU64,
    state: Mutex<State>,
}

struct State {
    // Least-squares sums for compute = a·batch + b.
    s0: f64,
    sb: f64,
    sbb: f64,
    sy: f64,
    sby: f64,
    latencies: VecDeque<f64>,
    rate: f64,
    last_update: Instant,
    last_arrivals: u64,
    batch: usize,
    delay: f64,
    p99: f64,
    /// No probing before this; the pause doubles after each probe that gains nothing.
    probe_after: Instant,
    probe_backoff: f64,
}

/// What `/metrics` shows of the controller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Snapshot {
    pub target: f64,
    pub max_batch: usize,
    pub delay: f64,
    /// The fitted model: compute seconds ≈ a·batch + b (`None` before two batch sizes).
    pub fit: Option<(f64, f64)>,
    pub arrival_rate: f64,
    pub p99: f64,
}

impl Adaptive {
    pub fn new(target: Duration, max_batch: usize) -> Adaptive {
        Adaptive {
            target: target.as_secs_f64(),
            max_batch: max_batch.max(1),
            arrivals: AtomicU64::new(0),
            state: Mutex::new(State {
                s0: 0.0,
                sb: 0.0,
                sbb: 0.0,
                sy: 0.0,
                sby: 0.0,
                latencies: VecDeque::with_capacity(WINDOW),
                rate: 0.0,
                last_update: Instant::now(),
                last_arrivals: 0,
                batch: max_batch.max(1),
                delay: 0.0,
                p99: 0.0,
                probe_after: Instant::now(),
                probe_backoff: 0.25,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An item was admitted.
    pub fn arrived(&self) {
        self.arrivals.fetch_add(1, Ordering::Relaxed);
    }

    /// An engine run of `batch` items took `seconds`.
    pub fn observe_run(&self, batch: usize, seconds: f64) {
        let mut s = self.lock();
        let b = batch as f64;
        s.s0 = s.s0 * FORGET + 1.0;
        s.sb = s.sb * FORGET + b;
        s.sbb = s.sbb * FORGET + b * b;
        s.sy = s.sy * FORGET + seconds;
        s.sby = s.sby * FORGET + b * seconds;
    }

    /// An item was answered `seconds` after it was admitted.
    pub fn observe_latency(&self, seconds: f64) {
        let mut s = self.lock();
        if s.latencies.len() == WINDOW {
            s.latencies.pop_front();
        }
        s.latencies.push_back(seconds);
    }

    /// A batch was formed: whether it waited for its delay to run out, and how many items
    /// arrived while it waited.
    pub fn observe_wait(&self, waited: bool, gained: usize) {
        let mut s = self.lock();
        let cap = self.target / 4.0;
        let now = Instant::now();
        if waited {
            if gained > 0 {
                s.delay = (s.delay * 1.5 + 0.0005).min(cap);
                s.probe_backoff = 0.25;
            } else {
                s.delay *= 0.5;
                if s.delay < 0.0002 {
                    s.delay = 0.0;
                    // Waiting bought nothing: do not probe again for a while.
                    s.probe_after = now + Duration::from_secs_f64(s.probe_backoff);
                    s.probe_backoff = (s.probe_backoff * 2.0).min(2.0);
                }
            }
        } else if s.delay == 0.0 && now >= s.probe_after && s.rate * cap >= 2.0 {
            // Arrivals are frequent enough that waiting might fill batches: probe with the
            // delay in which the arrival rate brings two more items.
            s.delay = (2.0 / s.rate).min(cap);
        }
    }

    /// The batch cap and queue delay to use now.
    pub fn settings(&self) -> (usize, Duration) {
        let mut s = self.lock();
        if s.last_update.elapsed() >= PERIOD {
            self.recompute(&mut s);
        }
        (s.batch, Duration::from_secs_f64(s.delay.max(0.0)))
    }

    fn fit(s: &State) -> Option<(f64, f64)> {
        let det = s.s0 * s.sbb - s.sb * s.sb;
        if s.s0 < 2.0 || det.abs() < 1e-9 * s.s0 * s.sbb.max(1e-12) {
            return None;
        }
        let a = (s.s0 * s.sby - s.sb * s.sy) / det;
        let b = (s.sy - a * s.sb) / s.s0;
        Some((a, b))
    }

    fn recompute(&self, s: &mut State) {
        let now = Instant::now();
        let dt = now.duration_since(s.last_update).as_secs_f64().max(1e-6);
        let arrivals = self.arrivals.load(Ordering::Relaxed);
        let instant_rate = (arrivals - s.last_arrivals) as f64 / dt;
        s.rate = 0.5 * s.rate + 0.5 * instant_rate;
        s.last_arrivals = arrivals;
        s.last_update = now;
        s.p99 = percentile(&s.latencies, 0.99);
        let budget = self.target / 2.0;
        let mut cap = match Self::fit(s) {
            Some((a, b)) if a > 0.0 => {
                (((budget - b) / a).floor().max(1.0) as usize).min(self.max_batch)
            }
            Some(_) => self.max_batch,
            // Before the model exists: the mean run time per item decides.
            None if s.s0 > 0.0 && s.sy > 0.0 => {
                let per_item = s.sy / s.sb.max(1.0);
                ((budget / per_item).floor().max(1.0) as usize).min(self.max_batch)
            }
            None => self.max_batch,
        };
        if s.latencies.len() >= 20 && s.p99 > self.target {
            // Over the target: smaller batches and no waiting until it recovers.
            cap = cap.min(((s.batch as f64) * 0.7).floor().max(1.0) as usize);
            s.delay = 0.0;
        }
        s.batch = cap.max(1);
    }

    pub fn snapshot(&self) -> Snapshot {
        let s = self.lock();
        Snapshot {
            target: self.target,
            max_batch: s.batch,
            delay: s.delay,
            fit: Self::fit(&s),
            arrival_rate: s.rate,
            p99: s.p99,
        }
    }
}

fn percentile(values: &VecDeque<f64>, q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f64> = values.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    let idx = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refresh(a: &Adaptive) -> (usize, Duration) {
        a.lock().last_update = Instant::now() - PERIOD;
        a.settings()
    }

    #[test]
    fn the_fit_recovers_a_linear_latency_model() {
        let a = Adaptive::new(Duration::from_millis(100), 32);
        for b in [1usize, 2, 4, 8, 3, 6] {
            a.observe_run(b, 0.002 + 0.005 * b as f64);
        }
        let (slope, intercept) = a.snapshot().fit.unwrap();
        assert!((slope - 0.005).abs() < 1e-9 && (intercept - 0.002).abs() < 1e-9);
        // Half of 100 ms fits (50 − 2) / 5 = 9.6 → 9 items.
        assert_eq!(refresh(&a).0, 9);
    }

    #[test]
    fn the_delay_grows_while_waiting_pays_and_vanishes_when_it_does_not() {
        let a = Adaptive::new(Duration::from_millis(200), 16);
        assert_eq!(a.settings().1, Duration::ZERO);
        for _ in 0..20 {
            a.observe_wait(true, 3);
        }
        let grown = a.settings().1;
        assert!(grown > Duration::from_millis(5), "{grown:?}");
        assert!(
            grown <= Duration::from_millis(50),
            "capped at a quarter of the target"
        );
        for _ in 0..20 {
            a.observe_wait(true, 0);
        }
        assert_eq!(a.settings().1, Duration::ZERO);
    }

    #[test]
    fn a_p99_over_the_target_shrinks_batches_and_stops_waiting() {
        let a = Adaptive::new(Duration::from_millis(100), 16);
        for _ in 0..10 {
            a.observe_wait(true, 2);
        }
        assert!(refresh(&a).1 > Duration::ZERO);
        for _ in 0..50 {
            a.observe_latency(0.3);
        }
        let (batch, delay) = refresh(&a);
        assert_eq!(delay, Duration::ZERO);
        assert!(batch < 16, "{batch}");
        let (smaller, _) = refresh(&a);
        assert!(
            smaller < batch,
            "keeps shrinking while over: {smaller} vs {batch}"
        );
    }

    #[test]
    fn frequent_arrivals_start_a_probe_and_fruitless_probes_back_off() {
        let a = Adaptive::new(Duration::from_millis(100), 16);
        for _ in 0..500 {
            a.arrived();
        }
        a.lock().last_update = Instant::now() - Duration::from_secs(1);
        a.settings();
        a.observe_wait(false, 0);
        // About 250 arrivals a second (smoothed): the probe waits for two, 8 ms.
        let probe = a.settings().1;
        assert!(
            probe > Duration::from_millis(4) && probe < Duration::from_millis(20),
            "{probe:?}"
        );
        // The probe gains nothing: the delay falls to zero and no probe follows at once.
        for _ in 0..8 {
            a.observe_wait(true, 0);
        }
        assert_eq!(a.settings().1, Duration::ZERO);
        a.observe_wait(false, 0);
        assert_eq!(a.settings().1, Duration::ZERO, "backing off");
        // After the pause, it probes again.
        a.lock().probe_after = Instant::now();
        a.observe_wait(false, 0);
        assert!(a.settings().1 > Duration::ZERO);
    }
}
