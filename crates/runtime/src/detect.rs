//! Object detection on the single point: what the core keeps for a detector's image, and how
//! a request's detections are derived from it.
//!
//! After the engine run, an item's raw outputs (for YOLOv3-tiny, 2535 boxes × 80 class
//! scores, 850 KB) are reduced to its candidates: every row whose best class score is above
//! the manifest's `min_score`, as `[x1, y1, x2, y2, score, class]` in the source image's pixels
//! (the letterbox or stretch undone, clipped to the image). That is what the cache stores (a
//! few KB), so any score threshold from `min_score` up, any IoU, class filter or cap is
//! answered from one entry: [`detections`] applies them, with per-class greedy
//! non-maximum suppression, exactly as the reference recipe does.

use singlepoint_core::{AnyTensor, Buffer};
use singlepoint_model::manifest::{DetectionLayout, DetectionSpec, ResizePolicy};
use singlepoint_model::Model;

/// Values per candidate row: x1, y1, x2, y2, score, class.
pub const CANDIDATE: usize = 6;

/// How the input tensor relates to the source image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Geometry {
    pub width: u32,
    pub height: u32,
    /// input = source · scale + offset, per axis.
    pub scale_x: f64,
    pub scale_y: f64,
    pub dx: f64,
    pub dy: f64,
}

impl Geometry {
    /// The geometry `resize` gives an image of `width` × `height`.
    pub fn of(resize: ResizePolicy, width: u32, height: u32) -> Geometry {
        let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
        match resize {
            ResizePolicy::Letterbox { .. } => {
                let lb = resize.letterbox(width, height).expect("a letterbox");
                Geometry {
                    width,
                    height,
                    scale_x: lb.r,
                    scale_y: lb.r,
                    dx: f64::from(lb.dx),
                    dy: f64::from(lb.dy),
                }
            }
            other => {
                let (tw, th) = other.target_size(width, height);
                Geometry {
                    width,
                    height,
                    scale_x: f64::from(tw) / w,
                    scale_y: f64::from(th) / h,
                    dx: 0.0,
                    dy: 0.0,
                }
            }
        }
    }
}

/// One item's raw detector outputs → its candidates above `min_score`, as an `[K, 6]` f32
/// tensor in source pixels.
pub fn candidates(
    spec: &DetectionSpec,
    outputs: &[AnyTensor],
    geometry: Geometry,
) -> Result<AnyTensor, String> {
    let f32s = |i: usize| {
        outputs
            .get(i)
            .and_then(AnyTensor::as_f32)
            .ok_or_else(|| format!("the detector's output {i} is missing or not float32"))
    };
    // (row count, classes, box of row n, score of class c in row n)
    let rows: Vec<([f32; 4], f32, usize)> = match spec.layout {
        DetectionLayout::BoxesScores => {
            let (boxes, scores) = (f32s(0)?, f32s(1)?);
            let n = boxes.len() / 4;
            if n == 0 || scores.len() % n != 0 {
                return Err(format!(
                    "boxes hold {} values and scores {}: not N × 4 and N × classes",
                    boxes.len(),
                    scores.len()
                ));
            }
            let classes = scores.len() / n;
            (0..n)
                .filter_map(|r| {
                    let row = &scores[r * classes..(r + 1) * classes];
                    let (c, &s) = argmax(row)?;
                    let b = &boxes[r * 4..r * 4 + 4];
                    (s > spec.min_score).then_some(([b[0], b[1], b[2], b[3]], s, c))
                })
                .collect()
        }
        DetectionLayout::Yolov8 => {
            let data = f32s(0)?;
            let shape = outputs[0].shape();
            let [features, n] = shape else {
                return Err(format!("expected [4 + classes, N], found {shape:?}"));
            };
            let (features, n) = (*features, *n);
            if features <= 4 {
                return Err(format!("{features} rows cannot hold a box and classes"));
            }
            let at = |f: usize, r: usize| data[f * n + r];
            (0..n)
                .filter_map(|r| {
                    let (c, s) = (4..features).map(|f| at(f, r)).enumerate().fold(
                        None,
                        |best: Option<(usize, f32)>, (c, s)| match best {
                            Some((_, b)) if b >= s => best,
                            _ => Some((c, s)),
                        },
                    )?;
                    (s > spec.min_score).then_some(([at(0, r), at(1, r), at(2, r), at(3, r)], s, c))
                })
                .collect()
        }
    };
    let (w, h) = (f64::from(geometry.width), f64::from(geometry.height));
    let mut data = Vec::with_capacity(rows.len() * CANDIDATE);
    for ([cx, cy, bw, bh], score, class) in rows {
        let (cx, cy, bw, bh) = (f64::from(cx), f64::from(cy), f64::from(bw), f64::from(bh));
        let x = |v: f64| ((v - geometry.dx) / geometry.scale_x).clamp(0.0, w) as f32;
        let y = |v: f64| ((v - geometry.dy) / geometry.scale_y).clamp(0.0, h) as f32;
        data.extend_from_slice(&[
            x(cx - bw / 2.0),
            y(cy - bh / 2.0),
            x(cx + bw / 2.0),
            y(cy + bh / 2.0),
            score,
            class as f32,
        ]);
    }
    let k = data.len() / CANDIDATE;
    AnyTensor::new(vec![k, CANDIDATE], Buffer::F32(data)).map_err(|e| e.to_string())
}

/// The first maximum of `row` (the reference's `argmax`), ignoring NaN.
fn argmax(row: &[f32]) -> Option<(usize, &f32)> {
    row.iter()
        .enumerate()
        .fold(None, |best, (i, v)| match best {
            Some((_, b)) if *b >= *v || v.is_nan() => best,
            _ => Some((i, v)),
        })
}

/// What a request asks of a detector.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectOptions {
    pub score: f32,
    pub iou: f32,
    pub max_detections: usize,
    /// Only these classes (indices), when given.
    pub classes: Option<Vec<usize>>,
}

impl DetectOptions {
    /// The manifest's defaults.
    pub fn defaults(spec: &DetectionSpec) -> DetectOptions {
        DetectOptions {
            score: spec.score_threshold,
            iou: spec.iou_threshold,
            max_detections: spec.max_detections,
            classes: None,
        }
    }

    /// A request's options over the manifest's defaults: class names resolved to indices and
    /// every value checked ([`DetectOptions::validate`]); the error names what is wrong.
    pub fn from_request(
        model: &Model,
        spec: &DetectionSpec,
        score: Option<f32>,
        iou: Option<f32>,
        max_detections: Option<usize>,
        classes: Option<&[String]>,
    ) -> Result<DetectOptions, String> {
        let classes = match classes {
            None => None,
            Some(names) => {
                let labels = model
                    .labels
                    .as_ref()
                    .ok_or("classes: the model has no class names")?;
                let ids = names
                    .iter()
                    .map(|name| {
                        (0..labels.len())
                            .find(|&i| labels.name(i) == Some(name.as_str()))
                            .ok_or_else(|| {
                                format!("classes: `{name}` is not one of the model's classes")
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(ids)
            }
        };
        let defaults = DetectOptions::defaults(spec);
        let options = DetectOptions {
            score: score.unwrap_or(defaults.score),
            iou: iou.unwrap_or(defaults.iou),
            max_detections: max_detections.unwrap_or(defaults.max_detections),
            classes,
        };
        options.validate(spec)?;
        Ok(options)
    }

    /// Refuses thresholds the cached candidates cannot answer or that mean nothing.
    pub fn validate(&self, spec: &DetectionSpec) -> Result<(), String> {
        if !(self.score.is_finite() && self.score >= spec.min_score && self.score <= 1.0) {
            return Err(format!(
                "score {} must be from the model's min_score {} to 1",
                self.score, spec.min_score
            ));
        }
        if !(self.iou.is_finite() && self.iou > 0.0 && self.iou <= 1.0) {
            return Err(format!("iou {} must be above 0 and at most 1", self.iou));
        }
        if self.max_detections == 0 {
            return Err("max detections must be at least 1".into());
        }
        Ok(())
    }
}

/// One detected object.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    pub class: usize,
    pub label: Option<String>,
    pub score: f32,
    /// x1, y1, x2, y2 in source pixels.
    pub bbox: [f32; 4],
}

/// How many of `exact`'s detections `given` matches: greedily, by descending score, each to
/// the unmatched detection of `given` of its class with the highest IoU, if that is at least
/// `min_iou`.
pub fn matched(exact: &[Detection], given: &[Detection], min_iou: f32) -> usize {
    let mut order: Vec<&Detection> = exact.iter().collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut used = vec![false; given.len()];
    let mut count = 0;
    for e in order {
        let best = given
            .iter()
            .enumerate()
            .filter(|(j, g)| !used[*j] && g.class == e.class)
            .map(|(j, g)| (j, iou(&e.bbox, &g.bbox)))
            .filter(|&(_, v)| v >= min_iou)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((j, _)) = best {
            used[j] = true;
            count += 1;
        }
    }
    count
}

pub(crate) fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// The detections of one image from its stored candidates: score above `options.score`,
/// only `options.classes`, per-class greedy NMS (sorted by score, stable; a box whose IoU
/// with a kept box of its class is above `options.iou` is dropped), all classes by score,
/// at most `max_detections`.
pub fn detections(model: &Model, stored: &[AnyTensor], options: &DetectOptions) -> Vec<Detection> {
    let data = stored.first().and_then(AnyTensor::as_f32).unwrap_or(&[]);
    let mut kept_rows: Vec<(usize, [f32; 4], f32)> = data
        .chunks_exact(CANDIDATE)
        .filter(|c| c[4] > options.score)
        .map(|c| (c[5] as usize, [c[0], c[1], c[2], c[3]], c[4]))
        .filter(|(class, ..)| options.classes.as_ref().is_none_or(|cs| cs.contains(class)))
        .collect();
    kept_rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    let mut kept: Vec<(usize, [f32; 4], f32)> = Vec::new();
    for (class, bbox, score) in kept_rows {
        let suppressed = kept
            .iter()
            .any(|(c, b, _)| *c == class && iou(b, &bbox) > options.iou);
        if !suppressed {
            kept.push((class, bbox, score));
            if kept.len() == options.max_detections {
                break;
            }
        }
    }
    kept.into_iter()
        .map(|(class, bbox, score)| Detection {
            class,
            label: model
                .labels
                .as_ref()
                .and_then(|l| l.name(class))
                .map(str::to_string),
            score,
            bbox,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(layout: DetectionLayout) -> DetectionSpec {
        DetectionSpec {
            layout,
            score_threshold: 0.25,
            iou_threshold: 0.45,
            max_detections: 10,
            min_score: 0.05,
        }
    }

    #[test]
    fn overlapping_boxes_of_one_class_are_suppressed_and_other_classes_kept() {
        let spec = spec(DetectionLayout::BoxesScores);
        // Four rows, two classes; input = source (no letterbox).
        let boxes = vec![
            50.0, 50.0, 20.0, 20.0, // class 0, 0.9
            52.0, 50.0, 20.0, 20.0, // class 0, 0.8: overlaps the first
            52.0, 50.0, 20.0, 20.0, // class 1, 0.7: same place, another class
            10.0, 10.0, 4.0, 4.0, // class 0, 0.04: under min_score, never stored
        ];
        let scores = vec![0.9, 0.1, 0.8, 0.1, 0.1, 0.7, 0.04, 0.0];
        let outputs = [
            AnyTensor::new(vec![4, 4], Buffer::F32(boxes)).unwrap(),
            AnyTensor::new(vec![4, 2], Buffer::F32(scores)).unwrap(),
        ];
        let g = Geometry {
            width: 100,
            height: 100,
            scale_x: 1.0,
            scale_y: 1.0,
            dx: 0.0,
            dy: 0.0,
        };
        let c = candidates(&spec, &outputs, g).unwrap();
        assert_eq!(c.shape(), &[3, CANDIDATE]);
        let model = Model::bundled();
        let d = detections(
            &model,
            std::slice::from_ref(&c),
            &DetectOptions::defaults(&spec),
        );
        let got: Vec<(usize, f32)> = d.iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(got, [(0, 0.9), (1, 0.7)]);
        assert_eq!(d[0].bbox, [40.0, 40.0, 60.0, 60.0]);
        let only_one = DetectOptions {
            classes: Some(vec![1]),
            ..DetectOptions::defaults(&spec)
        };
        assert_eq!(detections(&model, &[c], &only_one).len(), 1);
    }

    #[test]
    fn letterboxed_boxes_map_back_to_source_pixels_and_clip() {
        let resize = ResizePolicy::Letterbox {
            width: 416,
            height: 416,
            filter: singlepoint_model::manifest::ResizeFilter::Bilinear,
            pad: 128,
        };
        // 640 × 480: r = 0.65, 416 × 312 at dy = 52 (the reference's basketball still).
        let g = Geometry::of(resize, 640, 480);
        assert_eq!((g.scale_x, g.dx, g.dy), (0.65, 0.0, 52.0));
        let spec = spec(DetectionLayout::Yolov8);
        // [4 + 1, 1]: one box at the canvas centre reaching past the image's bottom.
        let out = AnyTensor::new(
            vec![5, 1],
            Buffer::F32(vec![208.0, 208.0, 65.0, 400.0, 0.5]),
        )
        .unwrap();
        let c = candidates(&spec, &[out], g).unwrap();
        let row = c.as_f32().unwrap();
        assert!(
            (row[0] - 270.0).abs() < 1e-3 && row[1] == 0.0 && row[3] == 480.0,
            "{row:?}"
        );
    }

    #[test]
    fn absurd_thresholds_are_refused() {
        let spec = spec(DetectionLayout::BoxesScores);
        let ok = DetectOptions::defaults(&spec);
        assert!(ok.validate(&spec).is_ok());
        for bad in [
            DetectOptions {
                score: 0.01,
                ..ok.clone()
            },
            DetectOptions {
                score: 1.5,
                ..ok.clone()
            },
            DetectOptions {
                score: f32::NAN,
                ..ok.clone()
            },
            DetectOptions {
                iou: 0.0,
                ..ok.clone()
            },
            DetectOptions {
                max_detections: 0,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate(&spec).is_err(), "{bad:?}");
        }
    }
}
