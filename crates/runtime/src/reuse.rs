//! Reuse across near-identical frames (opt-in): a cheap difference detector in front of the
//! model, after NoScope (Kang et al., VLDB 2017).
//!
//! Each frame of a stream is reduced to a [`Thumbnail`] (64×64 cells of mean luma, one pass
//! over the pixels). The [`ReuseGate`] compares it with the thumbnail of the last frame the
//! model ran on in the same stream: when the mean absolute difference is under the threshold,
//! that frame's answer is reused (and marked so, with its age); otherwise the model runs and
//! the frame becomes the reference. Comparing with the reference, not with the previous frame,
//! means slow change accumulates until it crosses the threshold, so reuse never drifts
//! unboundedly. A scene cut always runs the model: a frame that differs from the frame just
//! before it by more than [`CUT_MAD`] is a cut whatever the threshold.
//!
//! The threshold is a trade-off between model runs and agreement with running the model on
//! every frame; `singlepoint tune --reuse` measures both on a sample and picks it.

/// Side of the thumbnail grid.
pub const THUMB: usize = 64;

/// Mean absolute luma difference (0–255) between consecutive frames above which the second
/// is a scene cut. Measured on the bundled clips (`python3 bench/frame_differences.py`): in
/// bikes.mp4 (a panning, hand-held camera) consecutive frames differ by 3.5 at the median and
/// 12.9 at the 90th percentile, its five shot boundaries by 48 to 83, and three camera moves
/// (frames 73, 99, 100) by about 20, which count as cuts; on vtest.avi (fixed camera)
/// consecutive frames never differ by more than 3.6.
pub const CUT_MAD: f32 = 16.0;

/// The threshold `--reuse` uses when none is given, a little over the codec noise of a still
/// scene (on vtest.avi's fixed camera consecutive frames differ by 1.1 levels at the median,
/// `bench/frame_differences.py`);
/// `singlepoint tune --reuse` measures the trade-off for a given camera.
pub const DEFAULT_THRESHOLD: f32 = 1.5;

/// The mean-luma grid of a frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Thumbnail(Vec<f32>);

impl Thumbnail {
    /// Of an RGB8 frame of `width` × `height` (`rgb` holds 3 bytes a pixel, row-major). Each
    /// cell averages the BT.601 luma of the pixels it covers; a frame smaller than the grid
    /// gives cells of one pixel, repeated.
    pub fn of(rgb: &[u8], width: usize, height: usize) -> Thumbnail {
        let mut sums = vec![0u32; THUMB * THUMB];
        let mut counts = vec![0u32; THUMB * THUMB];
        if width == 0 || height == 0 || rgb.len() < width * height * 3 {
            return Thumbnail(vec![0.0; THUMB * THUMB]);
        }
        let cols: Vec<usize> = (0..width).map(|x| x * THUMB / width).collect();
        for y in 0..height {
            let cy = y * THUMB / height;
            let row = &rgb[y * width * 3..(y + 1) * width * 3];
            let base = cy * THUMB;
            for (x, px) in row.chunks_exact(3).enumerate() {
                // Integer BT.601: (77 R + 150 G + 29 B) / 256.
                let luma = 77 * u32::from(px[0]) + 150 * u32::from(px[1]) + 29 * u32::from(px[2]);
                let cell = base + cols[x];
                sums[cell] += luma;
                counts[cell] += 1;
            }
        }
        let mut cells: Vec<f32> = sums
            .iter()
            .zip(&counts)
            .map(|(&s, &n)| {
                if n == 0 {
                    f32::NAN
                } else {
                    s as f32 / (256.0 * n as f32)
                }
            })
            .collect();
        // Cells no pixel fell in (a frame narrower or shorter than the grid) copy a neighbour.
        for i in 0..cells.len() {
            if cells[i].is_nan() {
                let (cy, cx) = (i / THUMB, i % THUMB);
                let y = (cy * height / THUMB).min(height - 1) * THUMB / height;
                let x = (cx * width / THUMB).min(width - 1) * THUMB / width;
                cells[i] = cells[y * THUMB + x];
            }
        }
        Thumbnail(cells)
    }

    /// Mean absolute difference of two thumbnails, in luma levels (0–255).
    pub fn mad(&self, other: &Thumbnail) -> f32 {
        let total: f32 = self
            .0
            .iter()
            .zip(&other.0)
            .map(|(a, b)| (a - b).abs())
            .sum();
        total / self.0.len().max(1) as f32
    }
}

/// What the gate decided for one frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// Run the model; the frame becomes the reference. `cut` when it was a scene cut.
    Run { cut: bool },
    /// Reuse the answer of the reference frame, the `reference`-th frame the gate saw
    /// (counted from 0), `age` frames before this one.
    Reuse {
        reference: u64,
        age: u64,
        difference: f32,
    },
}

/// One stream's difference detector.
#[derive(Clone, Debug)]
pub struct ReuseGate {
    threshold: f32,
    reference: Option<(Thumbnail, u64)>,
    previous: Option<Thumbnail>,
    seen: u64,
}

impl ReuseGate {
    /// Reuses while a frame differs from the reference by less than `threshold` luma levels
    /// (0 never reuses).
    pub fn new(threshold: f32) -> ReuseGate {
        ReuseGate {
            threshold,
            reference: None,
            previous: None,
            seen: 0,
        }
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Decides for the next frame of the stream.
    pub fn decide(&mut self, thumb: Thumbnail) -> Decision {
        let n = self.seen;
        self.seen += 1;
        let cut = self
            .previous
            .as_ref()
            .is_some_and(|p| p.mad(&thumb) > CUT_MAD);
        let decision = match &self.reference {
            Some((reference, at)) if !cut => {
                let difference = reference.mad(&thumb);
                if difference < self.threshold {
                    Decision::Reuse {
                        reference: *at,
                        age: n - at,
                        difference,
                    }
                } else {
                    Decision::Run { cut: false }
                }
            }
            _ => Decision::Run { cut },
        };
        if let Decision::Run { .. } = decision {
            self.reference = Some((thumb.clone(), n));
        }
        self.previous = Some(thumb);
        decision
    }

    /// Forgets the reference (its answer failed, say): the next frame runs the model.
    pub fn reset(&mut self) {
        self.reference = None;
    }
}

/// One threshold's outcome on a sample: how often the model ran and how well the answers
/// agreed with running it on every frame.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ReusePoint {
    pub threshold: f32,
    pub frames: usize,
    /// Frames the model ran on.
    pub runs: usize,
    /// Matched detections (same class, IoU ≥ 0.5) over the larger of the two answers' sizes,
    /// summed over frames: a missed box and a stale extra one both count against it. What
    /// `--min-agreement` bounds.
    pub agreement: f64,
    /// Of the every-frame detections, the fraction the given answers match (misses only).
    pub recall: f64,
    /// The counts behind the two: matched detections, every-frame detections, and the sum
    /// over frames of the larger answer's size.
    pub matched: usize,
    pub exact_detections: usize,
    pub larger: usize,
}

impl ReusePoint {
    /// The point of several samples (videos) at one threshold together.
    pub fn merge(points: &[ReusePoint]) -> Option<ReusePoint> {
        let first = *points.first()?;
        let sum = |f: fn(&ReusePoint) -> usize| points.iter().map(f).sum::<usize>();
        let (matched, exact, larger) = (
            sum(|p| p.matched),
            sum(|p| p.exact_detections),
            sum(|p| p.larger),
        );
        Some(ReusePoint {
            threshold: first.threshold,
            frames: sum(|p| p.frames),
            runs: sum(|p| p.runs),
            agreement: ratio(matched, larger),
            recall: ratio(matched, exact),
            matched,
            exact_detections: exact,
            larger,
        })
    }

    /// Frames per model run.
    pub fn reduction(&self) -> f64 {
        self.frames as f64 / self.runs.max(1) as f64
    }
}

/// IoU at which a reused detection counts as the every-frame one.
pub const MATCH_IOU: f32 = 0.5;

/// Replays the gate at each threshold over a sample's thumbnails, with `exact[i]` the
/// model's answer for frame `i` (from running it on every frame): the answer a frame gets is
/// its reference's, exactly as `detect --reuse` gives it.
pub fn curve(
    thumbs: &[Thumbnail],
    exact: &[Vec<crate::detect::Detection>],
    thresholds: &[f32],
) -> Vec<ReusePoint> {
    thresholds
        .iter()
        .map(|&threshold| {
            let mut gate = ReuseGate::new(threshold);
            let (mut runs, mut matched, mut total, mut larger) = (0, 0, 0, 0);
            for (i, thumb) in thumbs.iter().enumerate().take(exact.len()) {
                let reference = match gate.decide(thumb.clone()) {
                    Decision::Run { .. } => {
                        runs += 1;
                        i
                    }
                    Decision::Reuse { reference: r, .. } => r as usize,
                };
                let (e, g) = (&exact[i], &exact[reference]);
                matched += crate::detect::matched(e, g, MATCH_IOU);
                total += e.len();
                larger += e.len().max(g.len());
            }
            ReusePoint {
                threshold,
                frames: thumbs.len().min(exact.len()),
                runs,
                agreement: ratio(matched, larger),
                recall: ratio(matched, total),
                matched,
                exact_detections: total,
                larger,
            }
        })
        .collect()
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

/// The point with the fewest model runs whose agreement is at least `min_agreement` (the
/// lowest threshold among equals); `None` when even running every frame falls short (it
/// cannot: it agrees fully).
pub fn choose(points: &[ReusePoint], min_agreement: f64) -> Option<ReusePoint> {
    points
        .iter()
        .filter(|p| p.agreement >= min_agreement)
        .min_by(|a, b| {
            a.runs
                .cmp(&b.runs)
                .then(a.threshold.total_cmp(&b.threshold))
        })
        .copied()
}

/// Model runs against agreement, one dot a threshold, the chosen one ringed; an SVG document.
pub fn curve_svg(points: &[ReusePoint], chosen: Option<ReusePoint>, title: &str) -> String {
    let (w, h, m) = (760.0, 480.0, 70.0);
    let frames = points.first().map_or(1, |p| p.frames).max(1) as f64;
    let amin = points
        .iter()
        .map(|p| p.agreement)
        .fold(1.0f64, f64::min)
        .min(0.9);
    let px = |runs: f64| m + runs / frames * (w - 2.0 * m);
    let py = |a: f64| h - m - (a - amin) / (1.0 - amin).max(1e-9) * (h - 2.0 * m);
    let mut s = crate::tune::svg_axes(w, h, m);
    for i in 0..=4 {
        let runs = frames * i as f64 / 4.0;
        let a = amin + (1.0 - amin) * i as f64 / 4.0;
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{runs:.0}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{a:.3}</text>\n",
            px(runs),
            h - m + 18.0,
            m - 6.0,
            py(a) + 4.0
        );
    }
    s += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">model runs (of {frames:.0} frames)</text>\n<text x=\"18\" y=\"{:.1}\" transform=\"rotate(-90 18 {:.1})\" text-anchor=\"middle\">agreement with every-frame detections</text>\n<text x=\"{m}\" y=\"30\" font-size=\"14\">{}</text>\n",
        w / 2.0,
        h - 20.0,
        h / 2.0,
        h / 2.0,
        title.replace('&', "&amp;").replace('<', "&lt;")
    );
    let mut sorted: Vec<&ReusePoint> = points.iter().collect();
    sorted.sort_by_key(|p| p.runs);
    let line: Vec<String> = sorted
        .iter()
        .map(|p| format!("{:.1},{:.1}", px(p.runs as f64), py(p.agreement)))
        .collect();
    s += &format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#4477aa\"/>\n",
        line.join(" ")
    );
    for p in &sorted {
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#4477aa\"><title>threshold {:.2}: {} runs, agreement {:.4}</title></circle>\n",
            px(p.runs as f64),
            py(p.agreement),
            p.threshold,
            p.runs,
            p.agreement
        );
    }
    if let Some(c) = chosen {
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"8\" fill=\"none\" stroke=\"#cc3311\" stroke-width=\"2\"/><text x=\"{:.1}\" y=\"{:.1}\">threshold {:.2}</text>\n",
            px(c.runs as f64),
            py(c.agreement),
            px(c.runs as f64) + 10.0,
            py(c.agreement) - 10.0,
            c.threshold
        );
    }
    s + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(width: usize, height: usize, f: impl Fn(usize, usize) -> u8) -> Vec<u8> {
        let mut rgb = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                let v = f(x, y);
                rgb.extend_from_slice(&[v, v, v]);
            }
        }
        rgb
    }

    #[test]
    fn thumbnails_average_luma_per_cell() {
        let flat = Thumbnail::of(&frame(128, 128, |_, _| 100), 128, 128);
        assert!(flat.0.iter().all(|&v| (v - 100.0).abs() < 0.5));
        let half = Thumbnail::of(
            &frame(128, 128, |x, _| if x < 64 { 0 } else { 200 }),
            128,
            128,
        );
        assert!(half.0[0] < 0.5 && (half.0[THUMB - 1] - 199.2).abs() < 1.0);
        assert!((flat.mad(&half) - 99.6).abs() < 1.0, "{}", flat.mad(&half));
        // Smaller than the grid: every cell still has a value.
        let tiny = Thumbnail::of(&frame(5, 3, |x, y| (x * 40 + y) as u8), 5, 3);
        assert!(tiny.0.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn the_gate_reuses_under_the_threshold_and_always_runs_on_a_cut() {
        let t = |v: u8| Thumbnail::of(&frame(64, 64, |_, _| v), 64, 64);
        let mut gate = ReuseGate::new(3.0);
        assert_eq!(gate.decide(t(100)), Decision::Run { cut: false });
        assert!(matches!(
            gate.decide(t(101)),
            Decision::Reuse {
                reference: 0,
                age: 1,
                ..
            }
        ));
        // Drift accumulates against the reference, not the previous frame.
        assert!(matches!(
            gate.decide(t(102)),
            Decision::Reuse { age: 2, .. }
        ));
        assert_eq!(gate.decide(t(104)), Decision::Run { cut: false });
        // A cut runs even under a threshold that would reuse it.
        let mut lax = ReuseGate::new(200.0);
        lax.decide(t(10));
        assert!(matches!(lax.decide(t(12)), Decision::Reuse { .. }));
        assert_eq!(lax.decide(t(200)), Decision::Run { cut: true });
        let mut never = ReuseGate::new(0.0);
        never.decide(t(5));
        assert_eq!(never.decide(t(5)), Decision::Run { cut: false });
    }

    #[test]
    fn the_curve_replays_the_gate_against_every_frame_answers() {
        use crate::detect::Detection;
        let t = |v: u8| Thumbnail::of(&frame(64, 64, |_, _| v), 64, 64);
        let car = |x: f32| Detection {
            class: 2,
            label: None,
            score: 0.9,
            bbox: [x, 0.0, x + 10.0, 10.0],
        };
        // Frames 0–2 nearly identical, the car moving a little; frame 3 differs.
        let thumbs = [t(100), t(101), t(101), t(110)];
        let exact = vec![vec![car(0.0)], vec![car(1.0)], vec![car(8.0)], vec![]];
        let points = curve(&thumbs, &exact, &[0.0, 2.0, 50.0]);
        assert_eq!(points[0].runs, 4);
        assert_eq!(points[0].agreement, 1.0);
        // Frames 1 and 2 reuse frame 0: the box at x=1 matches (IoU 0.82), the one at 8 not.
        assert_eq!((points[1].runs, points[1].agreement), (2, 2.0 / 3.0));
        assert_eq!(points[1].recall, 2.0 / 3.0);
        // At 50, frame 3 reuses too: its answer gains a box the exact one lacks, which
        // agreement counts and recall does not.
        assert_eq!(points[2].runs, 1);
        assert_eq!(
            (points[2].agreement, points[2].recall),
            (2.0 / 4.0, 2.0 / 3.0)
        );
        assert_eq!(choose(&points, 0.6).unwrap().threshold, 2.0);
        assert_eq!(choose(&points, 0.99).unwrap().threshold, 0.0);
        assert!(curve_svg(&points, choose(&points, 0.6), "t").contains("threshold 2.00"));
    }
}
