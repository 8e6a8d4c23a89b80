//! A `classify` run: a stream of inputs → ordered [`ItemResult`]s, on the single point.
//!
//! ```text
//!  producer thread                 the single point (crate::service)          caller's thread
//!  Inputs → read → submit ──▶ key → cache? → in flight? → admit → batch queue ──▶ wait, in order
//!         (window of tickets)      instance threads × N: prepare the batch they    → answer
//!                                  took, one engine run, cache insert, publish     → on_result
//! ```
//!
//! The producer reads each file and submits it; the caller waits for the tickets in input
//! order and turns each output row into a classification. The core runs with no separate
//! preprocessing pool: each instance prepares (decodes, preprocesses) the batch it takes and
//! then runs it, so that with the default of one instance per core and one intra-op thread
//! per instance a machine with N cores runs N busy threads and nothing competes for them. A
//! window of tickets bounds everything in flight, including answers waiting to be printed in
//! order, so memory stays flat however many inputs there are, and the core's admission bound
//! is never reached.
//!
//! A hit is the answer and the input is never decoded; an input whose key is being computed
//! shares that computation. Cache entries are the model's output rows, the same entries
//! `serve` reads and writes. A bad input fails alone: it is reported in its place.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use singlepoint_backend::Engine;
use singlepoint_cache::ResultCache;
use singlepoint_model::{Classification, DecodeLimits, Model};

use crate::cputime::thread_cpu_time;
use crate::detect::{DetectOptions, Detection};
use crate::inputs::{has_video_extension, InputEntry};
use crate::metrics::StageCpu;
use crate::reuse::{Decision, ReuseGate, Thumbnail};
use crate::service::{
    BatchConfig, ItemError, ItemInput, LengthGrouping, ModelService, Source, Ticket,
};
use crate::task::Outputs;
use crate::task::{self, ImageClassification, ObjectDetection, Task, TextTask};
use crate::text_inputs::TextEntry;
use crate::video::{FrameReader, VideoOptions};
use crate::RuntimeError;

/// How the pipeline runs. Validated by [`PipelineConfig::validate`] before use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Items per engine run.
    pub batch_size: usize,
    /// Worker threads, each with its own engine session.
    pub instances: usize,
    /// Classes reported per input.
    pub top_k: usize,
    pub limits: DecodeLimits,
    /// Batches in flight per worker (queued, running or waiting to be emitted in order).
    pub batches_in_flight_per_instance: usize,
    /// Texts: group what each worker takes by length (`crate::service::LengthGrouping`).
    pub length_grouping: Option<LengthGrouping>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_size: 4,
            instances: 1,
            top_k: 5,
            limits: DecodeLimits::default(),
            batches_in_flight_per_instance: 3,
            length_grouping: None,
        }
    }
}

impl PipelineConfig {
    pub fn validate(&self, model: &Model) -> Result<(), RuntimeError> {
        let invalid = |field: &str, reason: String| RuntimeError::Config {
            field: field.to_string(),
            reason,
        };
        if self.batch_size == 0 {
            return Err(invalid("batch-size", "must be at least 1".into()));
        }
        if let Some(max) = model.manifest.max_batch() {
            if self.batch_size > max {
                return Err(invalid(
                    "batch-size",
                    format!(
                        "{} is larger than the model's fixed batch of {max}",
                        self.batch_size
                    ),
                ));
            }
        }
        if self.instances == 0 {
            return Err(invalid("instances", "must be at least 1".into()));
        }
        if self.top_k == 0 {
            return Err(invalid("top-k", "must be at least 1".into()));
        }
        if self.limits.max_pixels == 0 {
            return Err(invalid("max-pixels", "must be at least 1".into()));
        }
        if self.batches_in_flight_per_instance == 0 {
            return Err(invalid("batches in flight", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// The outcome for one input, in input order.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemResult<T = Classification> {
    /// Position in the input stream, from 0.
    pub idx: usize,
    pub path: PathBuf,
    pub outcome: Result<T, ItemError>,
    /// Where the answer came from.
    pub source: AnswerSource,
    /// For a frame of a video: which one, and where its answer came from.
    pub frame: Option<FrameInfo>,
    /// For a line of a text file: its number, from 1.
    pub line: Option<usize>,
}

/// A text model's answer for one text, with its tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct TextAnswer<T> {
    pub answer: T,
    /// Tokens the model read, special tokens included.
    pub tokens: usize,
    /// Tokens of the whole text: more than `tokens` when it was cut at the model's limit.
    pub whole: usize,
}

impl<T> TextAnswer<T> {
    pub fn truncated(&self) -> bool {
        self.whole > self.tokens
    }
}

/// How a run reads texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextOptions {
    /// Cut a text over the model's token limit (and say so in its answer) rather than fail it.
    pub truncate: bool,
    /// Embeddings: L2-normalise (`None`: as the model's manifest says).
    pub normalize: Option<bool>,
}

/// An input held in memory rather than in a file (the Python package's bytes and arrays): the
/// name it is reported under, and what the core takes or why the input cannot be taken.
#[derive(Clone, Debug)]
pub struct MemoryItem {
    pub name: PathBuf,
    pub input: Result<ItemInput, String>,
}

/// What a run's producer submits: files (images, videos), texts, or inputs in memory.
enum RunInput {
    File(InputEntry),
    Text(TextEntry, bool),
    Memory(MemoryItem),
}

/// A video frame's place in its video.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrameInfo {
    /// Among the video's decoded frames, from 0.
    pub index: u64,
    /// Presentation time, seconds.
    pub time: f64,
    /// When the answer is an earlier frame's (reuse across near-identical frames).
    pub reused: Option<ReusedFrom>,
}

/// The frame whose answer a reused frame carries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReusedFrom {
    pub index: u64,
    pub time: f64,
    /// How far apart the two frames' thumbnails are (mean absolute luma difference, 0–255).
    pub difference: f32,
}

/// How a run takes video files: decoded into frames, sampled, and (opt-in) with reuse.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FrameOptions {
    /// Keep about this many frames a second (`None`: every frame).
    pub fps: Option<f64>,
    /// Reuse the last computed answer while a frame differs from its frame by less than this
    /// ([`crate::reuse`]); `None` runs the model on every frame.
    pub reuse_threshold: Option<f32>,
    /// How long ffmpeg may keep the run waiting for a frame before the video fails
    /// (`None`: [`VideoOptions::DEFAULT_STALL`]).
    pub decode_timeout: Option<Duration>,
}

/// How an answer was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerSource {
    /// Decoded and run through the model.
    Computed,
    /// Returned by the result cache without decoding or running the model.
    Cache,
    /// The same input was being computed for an earlier item; this one shared its outcome.
    Coalesced,
    /// A video frame close enough to the last frame the model ran on in its video that that
    /// frame's answer was reused ([`crate::reuse`], opt-in).
    Reused,
    /// Never got as far as the model (a read or input error).
    Failed,
}

impl AnswerSource {
    /// The name output formats and the Python package give it.
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerSource::Computed => "computed",
            AnswerSource::Cache => "cache",
            AnswerSource::Coalesced => "coalesced",
            AnswerSource::Reused => "reused",
            AnswerSource::Failed => "failed",
        }
    }
}

/// Where the time went. Stage times are CPU time of the worker threads, in the stage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunStats {
    pub items: usize,
    pub failed: usize,
    pub batches: usize,
    /// Engine runs: what the cache saves.
    pub model_executions: usize,
    /// Items answered by the result cache.
    pub cache_hits: usize,
    /// Items that shared the computation of an identical earlier item.
    pub coalesced: usize,
    /// Video frames among the items, and those answered by reuse.
    pub frames: usize,
    pub reused: usize,
    /// Padded inputs (text models' tokens): positions holding the items' own values, and
    /// positions run, padding included.
    pub tokens: usize,
    pub token_slots: usize,
    /// CPU time of the difference detector (thumbnails and comparisons).
    pub difference: Duration,
    /// CPU time computing content keys and consulting the cache.
    pub cache: Duration,
    pub read: Duration,
    pub decode: Duration,
    pub preprocess: Duration,
    pub inference: Duration,
    pub postprocess: Duration,
    /// From the first input to the last result, engine sessions already created.
    pub wall: Duration,
    /// Wall time of each batch on its worker, with its size: an item's latency in the
    /// pipeline is its batch's (the tuner's latency measure).
    pub batch_walls: Vec<(Duration, usize)>,
}

/// A model on an engine, ready to classify streams of images.
pub struct Classifier {
    model: Arc<Model>,
    engine: Arc<dyn Engine>,
    config: PipelineConfig,
    cache: Option<Arc<ResultCache>>,
}

/// How long an instance waits for a batch to fill. The producer keeps the queue full, so this
/// only matters for the last batch and for inputs that arrive slowly (paths on stdin).
const FILL_DELAY: Duration = Duration::from_millis(10);

/// One input on its way from the producer to the caller.
struct Submitted {
    idx: usize,
    path: PathBuf,
    pending: Pending,
    frame: Option<FrameInfo>,
    line: Option<usize>,
}

enum Pending {
    /// Submitted to the core (or failed before it).
    Ticket(Result<Ticket, ItemError>),
    /// A frame the model ran on: its answer is the reference for the frames that follow.
    Reference(Result<Ticket, ItemError>),
    /// A frame that reuses the last reference's answer.
    Reuse,
}

/// What the producer measured.
#[derive(Default)]
struct Produced {
    read: Duration,
    /// The video decoders' CPU time (ffmpeg children).
    decode: Duration,
    difference: Duration,
}

impl Classifier {
    pub fn new(
        model: Arc<Model>,
        engine: Arc<dyn Engine>,
        config: PipelineConfig,
    ) -> Result<Classifier, RuntimeError> {
        config.validate(&model)?;
        Ok(Classifier {
            model,
            engine,
            config,
            cache: None,
        })
    }

    /// Puts a result cache on the path: lookups before decoding, inserts after inference.
    pub fn with_cache(mut self, cache: Arc<ResultCache>) -> Classifier {
        self.cache = Some(cache);
        self
    }

    pub fn cache(&self) -> Option<&Arc<ResultCache>> {
        self.cache.as_ref()
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Classifies every entry of `inputs`, calling `on_result` once per entry in input order.
    /// Returns when all are done. Fails only when no engine session can be created; every
    /// per-input problem is an [`ItemResult`].
    ///
    /// `on_result` returns [`ControlFlow::Break`] to stop early (say, when stdout is closed):
    /// nothing more is submitted and the call returns once what was admitted finishes.
    pub fn run(
        &self,
        inputs: impl Iterator<Item = InputEntry> + Send,
        on_result: impl FnMut(ItemResult) -> ControlFlow<()>,
    ) -> Result<RunStats, RuntimeError> {
        self.classify_inputs(inputs.map(RunInput::File), on_result)
    }

    /// Classifies inputs held in memory (encoded images, or rows of the model's preprocessed
    /// input), in order, as [`Classifier::run`] classifies files.
    pub fn run_memory(
        &self,
        items: impl Iterator<Item = MemoryItem> + Send,
        on_result: impl FnMut(ItemResult) -> ControlFlow<()>,
    ) -> Result<RunStats, RuntimeError> {
        self.classify_inputs(items.map(RunInput::Memory), on_result)
    }

    /// The run behind [`Classifier::run`] and [`Classifier::run_memory`].
    fn classify_inputs(
        &self,
        inputs: impl Iterator<Item = RunInput> + Send,
        on_result: impl FnMut(ItemResult) -> ControlFlow<()>,
    ) -> Result<RunStats, RuntimeError> {
        let task = ImageClassification::new(self.model.clone(), self.config.limits)
            .ok_or_else(|| self.wrong_task("classify runs image-classification models"))?;
        let top_k = self.config.top_k;
        let model = self.model.clone();
        self.run_task(
            Arc::new(task),
            inputs,
            None,
            move |outputs| Ok(task::answer(&model, task::row(outputs), top_k)),
            on_result,
        )
    }

    /// Runs an image-classification model on every entry of `inputs` and gives each image's
    /// output row as the model computed it (no activation, no ranking): what `adapt` reads
    /// as features from a model whose output is a backbone's penultimate layer.
    pub fn rows(
        &self,
        inputs: impl Iterator<Item = InputEntry> + Send,
        on_result: impl FnMut(ItemResult<Vec<f32>>) -> ControlFlow<()>,
    ) -> Result<RunStats, RuntimeError> {
        let task = ImageClassification::new(self.model.clone(), self.config.limits)
            .ok_or_else(|| self.wrong_task("rows are read from image-classification models"))?;
        self.run_task(
            Arc::new(task),
            inputs.map(RunInput::File),
            None,
            |outputs| Ok(task::row(outputs).to_vec()),
            on_result,
        )
    }

    /// Runs a `tensor` model on rows of its inputs held in memory, in order: each answer is
    /// every output of the model for that row, without the batch axis.
    pub fn run_tensors(
        &self,
        items: impl Iterator<Item = MemoryItem> + Send,
        on_result: impl FnMut(ItemResult<Vec<singlepoint_core::AnyTensor>>) -> ControlFlow<()>,
    ) -> Result<RunStats, RuntimeError> {
        if self.model.manifest.task != singlepoint_model::Task::Tensor {
            return Err(self.wrong_task("tensors in and out are for `tensor` models"));
        }
        self.run_task(
            Arc::new(task::TensorTask::new(self.model.clone())),
            items.map(RunInput::Memory),
            None,
            |outputs| Ok(outputs.to_vec()),
            on_result,
        )
    }

    /// Embeds every text of `texts` with a `text-embedding` model, in order, as
    /// [`Classifier::run`] classifies images.
    pub fn embed(
        &self,
        texts: impl Iterator<Item = TextEntry> + Send,
        options: TextOptions,
        on_result: impl FnMut(ItemResult<TextAnswer<Vec<f32>>>) -> ControlFlow<()>,
    ) -> Result<RunStats, RuntimeError> {
        if self.model.manifest.task != singlepoint_model::Task::TextEmbedding {
            return Err(self.wrong_task("embed runs text-embedding models"));
        }
        let task = TextTask::new(self.model.clone())
            .ok_or_else(|| self.wrong_task("embed runs text-embedding models"))?;
        let normalize = options.normalize.unwrap_or_else(|| {
            self.model
                .manifest
                .text
                .as_ref()
                .is_some_and(|t| t.normalize)
        });
        self.run_task(
            Arc::new(task),
            texts.map(move |t| RunInput::Text(t, options.truncate)),
            None,
            move |outputs| {
                let (tokens, whole) = task::token_counts(outputs);
                Ok(TextAnswer {
                    answer: task::embedding(outputs, normalize),
                    tokens,
                    whole,
                })
            },
            on_result,
        )
    }

    /// Classifies every text of `texts` with a `text-classification` model, in order.
    pub fn classify_texts(
        &self,
        texts: impl Iterator<Item = TextEntry> + Send,
        options: TextOptions,
        on_result: impl FnMut(ItemResult<TextAnswer<Classification>>) -> ControlFlow<()>,
    ) -> Result<RunStats, RuntimeError> {
        if self.model.manifest.task != singlepoint_model::Task::TextClassification {
            return Err(self.wrong_task("classify --text runs text-classification models"));
        }
        let task = TextTask::new(self.model.clone())
            .ok_or_else(|| self.wrong_task("classify --text runs text-classification models"))?;
        let top_k = self.config.top_k;
        let model = self.model.clone();
        self.run_task(
            Arc::new(task),
            texts.map(move |t| RunInput::Text(t, options.truncate)),
            None,
            move |outputs| {
                let (tokens, whole) = task::token_counts(outputs);
                Ok(TextAnswer {
                    answer: task::answer(&model, task::row(outputs), top_k),
                    tokens,
                    whole,
                })
            },
            on_result,
        )
    }

    /// Detects objects in every entry of `inputs` with `options`, as [`Classifier::run`]
    /// classifies them. Video files are decoded into frames ([`crate::video`]) as `frames`
    /// says; each frame is one result, in order.
    pub fn detect(
        &self,
        inputs: impl Iterator<Item = InputEntry> + Send,
        options: DetectOptions,
        frames: FrameOptions,
        on_result: impl FnMut(ItemResult<Vec<Detection>>) -> ControlFlow<()>,
    ) -> Result<RunStats, RuntimeError> {
        let task = ObjectDetection::new(self.model.clone(), self.config.limits)
            .ok_or_else(|| self.wrong_task("detect runs object-detection models"))?;
        let spec = self
            .model
            .manifest
            .image
            .as_ref()
            .and_then(|i| i.detection)
            .expect("a detector has a detection spec");
        options
            .validate(&spec)
            .map_err(|reason| RuntimeError::Config {
                field: "score/iou".into(),
                reason,
            })?;
        if let Some(fps) = frames.fps {
            if !(fps.is_finite() && fps > 0.0) {
                return Err(RuntimeError::Config {
                    field: "fps".into(),
                    reason: format!("must be a positive number of frames a second, not {fps}"),
                });
            }
        }
        if let Some(t) = frames.reuse_threshold {
            if !(t.is_finite() && (0.0..=255.0).contains(&t)) {
                return Err(RuntimeError::Config {
                    field: "reuse-threshold".into(),
                    reason: format!("must be a luma difference from 0 to 255, not {t}"),
                });
            }
        }
        let model = self.model.clone();
        self.run_task(
            Arc::new(task),
            inputs.map(RunInput::File),
            Some(frames),
            move |outputs| Ok(crate::detect::detections(&model, outputs, &options)),
            on_result,
        )
    }

    fn wrong_task(&self, what: &str) -> RuntimeError {
        RuntimeError::Config {
            field: "model".into(),
            reason: format!(
                "`{}` is a `{}` model; {what}",
                self.model.manifest.name,
                self.model.manifest.task.as_str()
            ),
        }
    }

    /// The run behind [`Classifier::run`] and [`Classifier::detect`]: `task` on the core,
    /// each item's outputs turned into its answer by `answer`, in input order.
    fn run_task<T>(
        &self,
        task: Arc<dyn Task>,
        inputs: impl Iterator<Item = RunInput> + Send,
        frames: Option<FrameOptions>,
        to_answer: impl Fn(&[singlepoint_core::AnyTensor]) -> Result<T, ItemError>,
        mut on_result: impl FnMut(ItemResult<T>) -> ControlFlow<()>,
    ) -> Result<RunStats, RuntimeError> {
        let c = &self.config;
        // A worker grouping by length takes a whole window of items at once.
        let take = c
            .length_grouping
            .map_or(c.batch_size, |g| g.window.max(c.batch_size));
        let window = c.instances * take * c.batches_in_flight_per_instance;
        let service = ModelService::start(
            self.model.clone(),
            task,
            self.engine.clone(),
            self.cache.clone(),
            BatchConfig {
                instances: c.instances,
                max_batch_size: c.batch_size,
                max_queue_delay: FILL_DELAY,
                preferred_batch_sizes: Vec::new(),
                decode_workers: 0,
                // The window, the ticket in the producer's hand and the one being awaited.
                max_queue: window + 2,
                limits: c.limits,
                latency_target: None,
                record_batches: true,
                length_grouping: c.length_grouping,
            },
        )?;
        // Steady state: the clock starts once the sessions exist.
        let started = Instant::now();
        let mut stats = RunStats::default();
        let (tx, rx) = bounded::<Submitted>(window);
        let max_pixels = c.limits.max_pixels;
        std::thread::scope(|scope| {
            let service = &service;
            let producer = scope.spawn(move || {
                let mut produced = Produced::default();
                // No deadline: a run waits for every answer.
                let deadline = Instant::now() + Duration::from_secs(365 * 86_400);
                for (idx, input) in inputs.enumerate() {
                    let entry = match input {
                        RunInput::File(entry) => entry,
                        RunInput::Memory(item) => {
                            let ticket = item
                                .input
                                .map_err(ItemError::Input)
                                .map(|input| service.submit(input, deadline));
                            let item = Submitted {
                                idx,
                                path: item.name,
                                pending: Pending::Ticket(ticket),
                                frame: None,
                                line: None,
                            };
                            if tx.send(item).is_err() {
                                break;
                            }
                            continue;
                        }
                        RunInput::Text(entry, truncate) => {
                            let ticket = entry.text.map_err(ItemError::Input).map(|text| {
                                service.submit(ItemInput::Text { text, truncate }, deadline)
                            });
                            let item = Submitted {
                                idx,
                                path: entry.path,
                                pending: Pending::Ticket(ticket),
                                frame: None,
                                line: Some(entry.line),
                            };
                            if tx.send(item).is_err() {
                                break;
                            }
                            continue;
                        }
                    };
                    if let (Some(frames), None) = (frames, &entry.problem) {
                        if has_video_extension(&entry.path) {
                            let sent = submit_video(
                                service,
                                idx,
                                entry.path,
                                frames,
                                max_pixels,
                                deadline,
                                &tx,
                                &mut produced,
                            );
                            if sent.is_break() {
                                break;
                            }
                            continue;
                        }
                    }
                    let ticket = match &entry.problem {
                        Some(problem) => Err(ItemError::Input(problem.reason.clone())),
                        None => {
                            let t0 = thread_cpu_time();
                            let bytes = read_file(&entry.path, max_pixels);
                            produced.read += thread_cpu_time().saturating_sub(t0);
                            bytes.map(|b| service.submit(ItemInput::Image(b.into()), deadline))
                        }
                    };
                    let item = Submitted {
                        idx,
                        path: entry.path,
                        pending: Pending::Ticket(ticket),
                        frame: None,
                        line: None,
                    };
                    if tx.send(item).is_err() {
                        break;
                    }
                }
                produced
            });
            // The answer of the last frame the model ran on, for the frames that reuse it.
            let mut reference: Option<Result<Outputs, ItemError>> = None;
            for Submitted {
                idx,
                path,
                pending,
                frame,
                line,
            } in rx.iter()
            {
                let from_core = |answer: Result<(Outputs, Source), ItemError>| {
                    answer.map(|(outputs, source)| {
                        let source = match source {
                            Source::Computed => AnswerSource::Computed,
                            Source::Cache => AnswerSource::Cache,
                            Source::Coalesced => AnswerSource::Coalesced,
                        };
                        (outputs, source)
                    })
                };
                let answer = match pending {
                    Pending::Ticket(ticket) => from_core(ticket.and_then(Ticket::wait_blocking)),
                    Pending::Reference(ticket) => {
                        let answer = from_core(ticket.and_then(Ticket::wait_blocking));
                        reference = Some(answer.clone().map(|(outputs, _)| outputs));
                        answer
                    }
                    Pending::Reuse => match &reference {
                        Some(Ok(outputs)) => Ok((outputs.clone(), AnswerSource::Reused)),
                        Some(Err(e)) => Err(e.clone()),
                        None => Err(ItemError::Input("no earlier frame to reuse".into())),
                    },
                };
                let t0 = thread_cpu_time();
                let (outcome, source) = match answer {
                    Ok((outputs, source)) => (to_answer(&outputs), source),
                    Err(e) => (Err(e), AnswerSource::Failed),
                };
                stats.postprocess += thread_cpu_time().saturating_sub(t0);
                stats.items += 1;
                stats.failed += usize::from(outcome.is_err());
                stats.frames += usize::from(frame.is_some());
                stats.reused += usize::from(source == AnswerSource::Reused);
                let result = ItemResult {
                    idx,
                    path,
                    outcome,
                    source,
                    frame,
                    line,
                };
                if on_result(result).is_break() {
                    break;
                }
            }
            // Stops the producer whether we finished or stopped early.
            drop(rx);
            let produced = producer.join().unwrap_or_default();
            stats.read = produced.read;
            stats.difference = produced.difference;
            stats.decode += produced.decode;
        });
        service.shutdown();
        stats.wall = started.elapsed();
        let m = service.metrics();
        let load = |c: &std::sync::atomic::AtomicU64| {
            c.load(std::sync::atomic::Ordering::Relaxed) as usize
        };
        stats.model_executions = load(&m.executions);
        stats.batches = stats.model_executions;
        stats.cache_hits = load(&m.cache_hits);
        stats.coalesced = load(&m.coalesced);
        stats.tokens = load(&m.padded_used);
        stats.token_slots = load(&m.padded_slots);
        stats.cache = StageCpu::get(&m.cpu.key_cache);
        stats.decode += StageCpu::get(&m.cpu.decode);
        stats.preprocess = StageCpu::get(&m.cpu.preprocess);
        stats.inference = StageCpu::get(&m.cpu.inference);
        stats.postprocess += StageCpu::get(&m.cpu.postprocess);
        stats.batch_walls = service.batches();
        Ok(stats)
    }
}

/// Decodes the video at `path` into frames and submits each (or, with reuse, decides that it
/// reuses the last computed frame's answer); a video that cannot be read, or stops early, is
/// one failed result after the frames it gave. `Break` when the caller stopped listening.
#[allow(clippy::too_many_arguments)]
fn submit_video(
    service: &ModelService,
    idx: usize,
    path: PathBuf,
    frames: FrameOptions,
    max_pixels: u64,
    deadline: Instant,
    tx: &crossbeam_channel::Sender<Submitted>,
    produced: &mut Produced,
) -> ControlFlow<()> {
    let send = |pending: Pending, frame: Option<FrameInfo>| {
        let item = Submitted {
            idx,
            path: path.clone(),
            pending,
            frame,
            line: None,
        };
        if tx.send(item).is_err() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let options = VideoOptions {
        fps: frames.fps,
        max_pixels,
        stall: frames.decode_timeout.unwrap_or(VideoOptions::DEFAULT_STALL),
    };
    let t0 = thread_cpu_time();
    let reader = FrameReader::open(&path, options);
    produced.read += thread_cpu_time().saturating_sub(t0);
    let mut reader = match reader {
        Ok(reader) => reader,
        Err(e) => return send(Pending::Ticket(Err(ItemError::Input(e.to_string()))), None),
    };
    let mut gate = frames.reuse_threshold.map(ReuseGate::new);
    // (index, time) of each frame the gate has seen, by its count, for naming references.
    let mut seen: Vec<(u64, f64)> = Vec::new();
    loop {
        let t0 = thread_cpu_time();
        let next = reader.next();
        produced.read += thread_cpu_time().saturating_sub(t0);
        let frame = match next {
            None => break,
            Some(Err(e)) => {
                send(Pending::Ticket(Err(ItemError::Input(e.to_string()))), None)?;
                break;
            }
            Some(Ok(frame)) => frame,
        };
        let mut info = FrameInfo {
            index: frame.index,
            time: frame.time,
            reused: None,
        };
        let decision = gate.as_mut().map(|gate| {
            let t0 = thread_cpu_time();
            let (w, h) = (frame.image.width as usize, frame.image.height as usize);
            let decision = gate.decide(Thumbnail::of(&frame.image.pixels, w, h));
            produced.difference += thread_cpu_time().saturating_sub(t0);
            seen.push((frame.index, frame.time));
            decision
        });
        let pending = match decision {
            Some(Decision::Reuse {
                reference,
                difference,
                ..
            }) => {
                let (index, time) = seen[reference as usize];
                info.reused = Some(ReusedFrom {
                    index,
                    time,
                    difference,
                });
                Pending::Reuse
            }
            run => {
                let image = frame.image;
                let ticket = Ok(service.submit(
                    ItemInput::Pixels {
                        width: image.width,
                        height: image.height,
                        rgb: image.pixels.into(),
                    },
                    deadline,
                ));
                if run.is_some() {
                    Pending::Reference(ticket)
                } else {
                    Pending::Ticket(ticket)
                }
            }
        };
        send(pending, Some(info))?;
    }
    produced.decode += reader.child_cpu();
    ControlFlow::Continue(())
}

/// Reads a whole file, refusing files so large that no image within the pixel limit could
/// need them (an uncompressed 16-bit RGBA image of `max_pixels`, plus headers).
fn read_file(path: &std::path::Path, max_pixels: u64) -> Result<Vec<u8>, ItemError> {
    let max_bytes = max_pixels.saturating_mul(8).saturating_add(1 << 20);
    let meta = std::fs::metadata(path).map_err(|e| ItemError::Read(e.to_string()))?;
    if meta.is_dir() {
        return Err(ItemError::Read("is a folder, not a file".into()));
    }
    if meta.len() > max_bytes {
        return Err(ItemError::Read(format!(
            "{} bytes is more than any image within the pixel limit needs ({max_bytes})",
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| ItemError::Read(e.to_string()))
}
