//! Activation ranges from calibration runs, three ways: the observed minimum and maximum, a
//! percentile of the observed values, and the threshold that keeps the int8 distribution
//! closest to the float one (KL divergence, as TensorRT's entropy calibration).
//!
//! Two passes over the calibration set: the first finds each tensor's minimum and maximum, the
//! second fills histograms over those bounds.

use serde::Serialize;
use singlepoint_graph::quant::Range;

/// How activation ranges are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    MinMax,
    Percentile,
    Entropy,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::MinMax, Method::Percentile, Method::Entropy];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::Percentile => "percentile",
            Method::Entropy => "entropy",
        }
    }
}

const BINS: usize = 2048;
const QUANT_BINS: usize = 128;
/// The share of values the percentile range keeps (ONNX Runtime's default, 99.999 %).
const PERCENTILE: f64 = 0.99999;

/// One tensor's statistics.
#[derive(Clone, Debug)]
pub struct Stats {
    pub min: f32,
    pub max: f32,
    /// Values over `[min, max]`.
    hist: Vec<u64>,
    /// Magnitudes over `[0, max(|min|, |max|)]`.
    abs_hist: Vec<u64>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            hist: vec![0; BINS],
            abs_hist: vec![0; BINS],
        }
    }
}

impl Stats {
    /// First pass: the bounds.
    pub fn observe_bounds(&mut self, values: &[f32]) {
        for &v in values.iter().filter(|v| v.is_finite()) {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
    }

    fn bounds(&self) -> (f32, f32) {
        if self.min <= self.max {
            (self.min, self.max)
        } else {
            (0.0, 0.0)
        }
    }

    /// Second pass: the histograms over the first pass's bounds.
    pub fn observe_values(&mut self, values: &[f32]) {
        let (lo, hi) = self.bounds();
        let span = hi - lo;
        let amax = lo.abs().max(hi.abs());
        for &v in values.iter().filter(|v| v.is_finite()) {
            if span > 0.0 {
                let b = (((v - lo) / span) * BINS as f32) as usize;
                self.hist[b.min(BINS - 1)] += 1;
            }
            // Exact zeros (a ReLU's) are exact at any threshold: leaving them out keeps
            // their spike from pulling the entropy threshold down.
            if amax > 0.0 && v != 0.0 {
                let b = ((v.abs() / amax) * BINS as f32) as usize;
                self.abs_hist[b.min(BINS - 1)] += 1;
            }
        }
    }

    /// The range by `method`.
    pub fn range(&self, method: Method) -> Range {
        let (lo, hi) = self.bounds();
        match method {
            Method::MinMax => Range { min: lo, max: hi },
            Method::Percentile => {
                let total: u64 = self.hist.iter().sum();
                if total == 0 || hi <= lo {
                    return Range { min: lo, max: hi };
                }
                let width = (hi - lo) / BINS as f32;
                let cut = ((1.0 - PERCENTILE) * total as f64).floor() as u64;
                let mut below = 0u64;
                let mut first = 0;
                for (i, &c) in self.hist.iter().enumerate() {
                    if below + c > cut {
                        first = i;
                        break;
                    }
                    below += c;
                }
                let mut above = 0u64;
                let mut last = BINS - 1;
                for (i, &c) in self.hist.iter().enumerate().rev() {
                    if above + c > cut {
                        last = i;
                        break;
                    }
                    above += c;
                }
                Range {
                    min: if first == 0 {
                        lo
                    } else {
                        lo + width * first as f32
                    },
                    max: if last == BINS - 1 {
                        hi
                    } else {
                        lo + width * (last + 1) as f32
                    },
                }
            }
            Method::Entropy => {
                let amax = lo.abs().max(hi.abs());
                if amax <= 0.0 {
                    return Range { min: lo, max: hi };
                }
                let t = amax * kl_threshold(&self.abs_hist) as f32 / BINS as f32;
                Range {
                    min: lo.max(-t),
                    max: hi.min(t),
                }
            }
        }
    }
}

/// The number of histogram bins (of [`BINS`]) whose edge is the threshold with the least KL
/// divergence between the clipped float distribution and its [`QUANT_BINS`]-level
/// quantisation.
fn kl_threshold(hist: &[u64]) -> usize {
    let n = hist.len();
    let mut best = (f64::INFINITY, n);
    let mut i = QUANT_BINS;
    while i <= n {
        let mut p: Vec<f64> = hist[..i].iter().map(|&c| c as f64).collect();
        let outliers: u64 = hist[i..].iter().sum();
        p[i - 1] += outliers as f64;
        let total: f64 = p.iter().sum();
        if total == 0.0 {
            i += 8;
            continue;
        }
        // The distribution the int8 codes can represent: each of QUANT_BINS groups spread
        // evenly over its non-empty bins.
        let mut q = vec![0f64; i];
        for j in 0..QUANT_BINS {
            let start = j * i / QUANT_BINS;
            let end = ((j + 1) * i / QUANT_BINS).max(start + 1).min(i);
            let slice = &hist[start..end];
            let nonzero = slice.iter().filter(|&&c| c > 0).count();
            if nonzero == 0 {
                continue;
            }
            // Without the outliers: what clipping loses shows as divergence in the last bin.
            let sum: f64 = slice.iter().map(|&c| c as f64).sum::<f64>();
            for (k, &c) in slice.iter().enumerate() {
                if c > 0 {
                    q[start + k] = sum / nonzero as f64;
                }
            }
        }
        let qtotal: f64 = q.iter().sum();
        let mut kl = 0.0;
        for (pv, qv) in p.iter().zip(&q) {
            if *pv > 0.0 {
                let pn = pv / total;
                let qn = (qv / qtotal).max(1e-12);
                kl += pn * (pn / qn).ln();
            }
        }
        if kl < best.0 {
            best = (kl, i);
        }
        i += 8;
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(values: &[f32]) -> Stats {
        let mut s = Stats::default();
        s.observe_bounds(values);
        s.observe_values(values);
        s
    }

    #[test]
    fn minmax_is_the_observed_bounds() {
        let s = stats(&[-1.0, 0.5, 3.0]);
        assert_eq!(
            s.range(Method::MinMax),
            Range {
                min: -1.0,
                max: 3.0
            }
        );
    }

    #[test]
    fn percentile_and_entropy_cut_a_lone_outlier() {
        // 100,000 values in [0, 1) and one at 10 (the entropy search starts at 128 of 2048
        // bins, so an outlier far beyond 16× the bulk cannot be cut below 1/16 of it).
        let mut v: Vec<f32> = (0..100_000).map(|i| (i % 1000) as f32 / 1000.0).collect();
        v.push(10.0);
        let s = stats(&v);
        let p = s.range(Method::Percentile);
        assert!(p.max < 2.0 && p.max >= 0.95, "{p:?}");
        let e = s.range(Method::Entropy);
        assert!(e.max < 2.0 && e.max >= 0.9, "{e:?}");
        assert_eq!(s.range(Method::MinMax).max, 10.0);
    }

    #[test]
    fn empty_or_constant_tensors_have_a_range() {
        let s = Stats::default();
        assert_eq!(s.range(Method::Entropy), Range { min: 0.0, max: 0.0 });
        let c = stats(&[2.0; 10]);
        assert_eq!(c.range(Method::Percentile), Range { min: 2.0, max: 2.0 });
    }
}
