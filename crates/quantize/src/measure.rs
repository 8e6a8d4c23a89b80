//! Running a model over prepared inputs, and how far two models' answers agree by the task's
//! own measure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use singlepoint_backend::{Engine, EngineOptions};
use singlepoint_core::AnyTensor;
use singlepoint_graph::ModelProto;
use singlepoint_model::{DecodeLimits, Model, Task as TaskKind};
use singlepoint_runtime::detect::{self, DetectOptions, Detection};
use singlepoint_runtime::task::{self, PrepareTimes, Task};

use crate::calibrate::Stats;
use crate::{Input, QuantizeError, Throughput};

/// How agreement with the float model is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// Share of inputs whose top class is the same (classifiers).
    Top1,
    /// Matched detections (same class, IoU ≥ 0.5) over the larger of the two counts, summed
    /// over inputs (detectors, at the manifest's default thresholds).
    Detections,
    /// Mean cosine of the answers (embedders and tensor models).
    Cosine,
}

/// IoU at which two detections are the same object.
pub const MATCH_IOU: f32 = 0.5;

impl Measure {
    pub fn of(model: &Model) -> Measure {
        match model.manifest.task {
            TaskKind::ImageClassification | TaskKind::TextClassification => Measure::Top1,
            TaskKind::ObjectDetection => Measure::Detections,
            _ => Measure::Cosine,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Top1 => "top-1",
            Measure::Detections => "matched-detection",
            Measure::Cosine => "cosine",
        }
    }

    /// `given`'s agreement with `exact` (0 to 1).
    pub fn agreement(self, exact: &[Answer], given: &[Answer]) -> f64 {
        let n = exact.len().max(1) as f64;
        match self {
            Measure::Top1 => {
                exact
                    .iter()
                    .zip(given)
                    .filter(|(a, b)| matches!((a, b), (Answer::Top1(x), Answer::Top1(y)) if x == y))
                    .count() as f64
                    / n
            }
            Measure::Cosine => {
                exact
                    .iter()
                    .zip(given)
                    .map(|(a, b)| match (a, b) {
                        (Answer::Vector(x), Answer::Vector(y)) => cosine(x, y),
                        _ => 0.0,
                    })
                    .sum::<f64>()
                    / n
            }
            Measure::Detections => {
                let (mut matched, mut total) = (0usize, 0usize);
                for (a, b) in exact.iter().zip(given) {
                    if let (Answer::Boxes(x), Answer::Boxes(y)) = (a, b) {
                        matched += detect::matched(x, y, MATCH_IOU);
                        total += x.len().max(y.len());
                    }
                }
                if total == 0 {
                    1.0
                } else {
                    matched as f64 / total as f64
                }
            }
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 && bb == 0.0 {
        1.0
    } else if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

/// One input's answer, in the form its measure compares.
#[derive(Clone, Debug)]
pub enum Answer {
    Top1(usize),
    Vector(Vec<f32>),
    Boxes(Vec<Detection>),
}

/// Squared error of `given` against `exact` over the energy of `exact`, every output of every
/// input together.
pub fn relative_error(exact: &[Vec<AnyTensor>], given: &[Vec<AnyTensor>]) -> f64 {
    let (mut err, mut energy) = (0f64, 0f64);
    for (a, b) in exact.iter().zip(given) {
        for (x, y) in a.iter().zip(b) {
            if let (Some(x), Some(y)) = (x.as_f32(), y.as_f32()) {
                for (p, q) in x.iter().zip(y) {
                    let (p, q) = (f64::from(*p), f64::from(*q));
                    err += (p - q) * (p - q);
                    energy += p * p;
                }
            }
        }
    }
    if energy == 0.0 {
        err
    } else {
        err / energy
    }
}

/// Prepared inputs: each one's model inputs (without the batch axis) and what its preparation
/// noted for the task's `finish`.
pub struct Items {
    items: Vec<task::Prepared>,
}

impl Items {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The first `n` items.
    pub fn first(&self, n: usize) -> Items {
        Items {
            items: self.items[..n.min(self.items.len())].to_vec(),
        }
    }

    /// Runs of consecutive items whose inputs have the same shapes, at most `batch` long.
    fn batches(&self, batch: usize) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut start = 0;
        for i in 1..=self.items.len() {
            let split = i == self.items.len()
                || i - start == batch
                || self.items[i]
                    .inputs
                    .iter()
                    .zip(&self.items[start].inputs)
                    .any(|(a, b)| a.shape() != b.shape());
            if split {
                out.push(start..i);
                start = i;
            }
        }
        out
    }
}

/// Runs models of one task over prepared items.
pub struct Runner {
    model: Arc<Model>,
    task: Arc<dyn Task>,
    options: EngineOptions,
    batch: usize,
}

fn engine_error(e: impl std::fmt::Display) -> QuantizeError {
    QuantizeError::Engine(e.to_string())
}

impl Runner {
    pub fn new(model: Arc<Model>, options: EngineOptions, batch: usize) -> Runner {
        Runner {
            task: task::for_model(model.clone(), DecodeLimits::default()),
            model,
            options,
            batch,
        }
    }

    /// Every input through the model's own preparation; the first that fails is the error.
    pub fn prepare(&self, inputs: Vec<Input>) -> Result<Items, QuantizeError> {
        let mut preparer = self.task.preparer();
        let mut times = PrepareTimes::default();
        let mut items = Vec::with_capacity(inputs.len());
        for input in inputs {
            let prepared =
                preparer
                    .prepare(input.item, &mut times)
                    .map_err(|e| QuantizeError::Input {
                        input: input.source.clone(),
                        reason: e.to_string(),
                    })?;
            items.push(prepared);
        }
        Ok(Items { items })
    }

    pub fn engine(&self, onnx: Vec<u8>) -> Result<Arc<dyn Engine>, QuantizeError> {
        singlepoint_backend::load(crate::ENGINE, onnx.into(), self.options).map_err(engine_error)
    }

    /// Every output of every item (each without the batch axis), in item order.
    fn run(
        &self,
        engine: &Arc<dyn Engine>,
        items: &Items,
        batch: usize,
        mut each: impl FnMut(usize, Vec<AnyTensor>) -> Result<(), QuantizeError>,
    ) -> Result<(), QuantizeError> {
        let mut session = engine.session().map_err(engine_error)?;
        let pads: Vec<Option<f64>> = self.task.inputs().iter().map(|d| d.pad).collect();
        for range in items.batches(batch) {
            let slice = &items.items[range.clone()];
            let inputs: Vec<AnyTensor> = (0..slice[0].inputs.len())
                .map(|j| {
                    let column: Vec<&AnyTensor> = slice.iter().map(|p| &p.inputs[j]).collect();
                    AnyTensor::stack(&column, pads.get(j).copied().flatten())
                })
                .collect::<Result<_, _>>()
                .map_err(engine_error)?;
            let outputs = session.run_all(&inputs).map_err(engine_error)?;
            for (k, i) in range.enumerate() {
                each(i, outputs.iter().map(|o| o.item(k)).collect())?;
            }
        }
        Ok(())
    }

    /// The raw outputs of every item.
    pub fn outputs(
        &self,
        engine: &Arc<dyn Engine>,
        items: &Items,
    ) -> Result<Vec<Vec<AnyTensor>>, QuantizeError> {
        let mut out = Vec::with_capacity(items.len());
        self.run(engine, items, self.batch, |_, o| {
            out.push(o);
            Ok(())
        })?;
        Ok(out)
    }

    /// Every item's answer as the task gives it, in its measure's form.
    pub fn answers(
        &self,
        engine: &Arc<dyn Engine>,
        items: &Items,
    ) -> Result<Vec<Answer>, QuantizeError> {
        let keep = self.task.outputs().len();
        let detect = self
            .model
            .manifest
            .image
            .as_ref()
            .and_then(|i| i.detection.as_ref())
            .map(DetectOptions::defaults);
        let measure = Measure::of(&self.model);
        let mut out = Vec::with_capacity(items.len());
        self.run(engine, items, self.batch, |i, mut outputs| {
            outputs.truncate(keep);
            let finished = self
                .task
                .finish(outputs, &items.items[i].context)
                .map_err(|e| QuantizeError::Engine(e.to_string()))?;
            out.push(match measure {
                Measure::Top1 => {
                    let row = task::row(&finished);
                    Answer::Top1(
                        row.iter()
                            .enumerate()
                            .max_by(|a, b| a.1.total_cmp(b.1))
                            .map_or(0, |(k, _)| k),
                    )
                }
                Measure::Detections => Answer::Boxes(detect::detections(
                    &self.model,
                    &finished,
                    detect.as_ref().expect("a detector has detection options"),
                )),
                Measure::Cosine => Answer::Vector(
                    finished
                        .iter()
                        .filter_map(AnyTensor::as_f32)
                        .flatten()
                        .copied()
                        .collect(),
                ),
            });
            Ok(())
        })?;
        Ok(out)
    }

    /// Each of `tensors`' statistics over the calibration items: the graph with them as
    /// outputs, run twice (bounds, then histograms).
    pub fn calibrate(
        &self,
        graph: &ModelProto,
        tensors: &[String],
        items: &Items,
    ) -> Result<HashMap<String, Stats>, QuantizeError> {
        let exposed = singlepoint_graph::quant::with_outputs(graph, tensors)
            .map_err(|e| QuantizeError::Engine(e.to_string()))?;
        let engine = self.engine(singlepoint_graph::encode(&exposed))?;
        let index: HashMap<&str, usize> = engine
            .outputs()
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let positions: Vec<(String, usize)> = tensors
            .iter()
            .filter_map(|t| Some((t.clone(), *index.get(t.as_str())?)))
            .collect();
        let mut stats: HashMap<String, Stats> = positions
            .iter()
            .map(|(t, _)| (t.clone(), Stats::default()))
            .collect();
        // Small batches: every activation of the graph is an output here.
        let batch = self.batch.min(4);
        for pass in 0..2 {
            self.run(&engine, items, batch, |_, outputs| {
                for (t, i) in &positions {
                    if let Some(values) = outputs[*i].as_f32() {
                        let s = stats.get_mut(t).expect("every position has stats");
                        if pass == 0 {
                            s.observe_bounds(values);
                        } else {
                            s.observe_values(values);
                        }
                    }
                }
                Ok(())
            })?;
        }
        Ok(stats)
    }

    /// Items a second of `engine` on `items`, batches of [`Runner`]'s size, best of three.
    fn rate(&self, engine: &Arc<dyn Engine>, items: &Items) -> Result<f64, QuantizeError> {
        let start = Instant::now();
        self.run(engine, items, self.batch, |_, _| Ok(()))?;
        Ok(items.len() as f64 / start.elapsed().as_secs_f64().max(1e-9))
    }

    /// Float and int8 throughput on (up to 128 of) `items`, alternating three times; the best
    /// of each.
    pub fn throughput(
        &self,
        float: &Arc<dyn Engine>,
        int8: &Arc<dyn Engine>,
        items: &Items,
    ) -> Result<Throughput, QuantizeError> {
        let sample = items.first(128);
        // One warm-up run each.
        self.rate(float, &sample.first(self.batch))?;
        self.rate(int8, &sample.first(self.batch))?;
        let (mut f, mut q) = (0f64, 0f64);
        for _ in 0..3 {
            f = f.max(self.rate(float, &sample)?);
            q = q.max(self.rate(int8, &sample)?);
        }
        Ok(Throughput {
            batch: self.batch,
            threads: self.options.threads_per_session,
            items: sample.len(),
            float_per_s: f,
            int8_per_s: q,
            ratio: q / f.max(1e-9),
        })
    }
}
