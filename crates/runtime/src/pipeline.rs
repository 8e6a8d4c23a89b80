//! The classification pipeline: a stream of inputs → ordered [`ItemResult`]s.
//!
//! ```text
//!  producer thread     worker threads (× instances)                        caller's thread
//!  Inputs → batches ──▶ [read → key → cache? → decode → preprocess] × B ──▶ reorder by sequence
//!        (bounded)       → one engine run → postprocess → cache insert     → on_result, in order
//! ```
//!
//! With a [`ResultCache`], a hit is the answer and the input is never decoded; an input whose
//! key an earlier item of the same run is computing shares that item's outcome (filled in on
//! emission, when the earlier item's outcome is already published); successes are stored after
//! postprocessing, errors never.
//!
//! Each worker owns one engine [`Session`] and one [`Preprocessor`] and takes whole batches,
//! so decoding one batch overlaps inference of another on the other cores, and decode threads
//! never compete with a separate inference pool for the same cores (with the default of one
//! intra-op thread per instance, a machine with N cores runs N workers and nothing else).
//! A window of batch tokens bounds everything in flight, including results waiting to be
//! printed in order, so memory stays flat however many inputs there are.
//!
//! A bad input fails alone: it is reported in its place and the rest of its batch runs.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use singlepoint_backend::{Engine, Session};
use singlepoint_cache::{CacheKey, ResultCache};
use singlepoint_core::Tensor;
use singlepoint_model::{
    classify_row, decode_rgb, Classification, DecodeLimits, Model, Preprocessor,
};

use crate::cputime::thread_cpu_time;
use crate::inputs::InputEntry;
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
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_size: 4,
            instances: 1,
            top_k: 5,
            limits: DecodeLimits::default(),
            batches_in_flight_per_instance: 3,
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

/// Why one input failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    #[error("{0}")]
    Input(String),
    #[error("cannot read: {0}")]
    Read(String),
    #[error("{0}")]
    Decode(#[from] singlepoint_model::DecodeError),
    #[error("cannot preprocess: {0}")]
    Preprocess(String),
    #[error("decoder crashed on this input: {0}")]
    DecoderPanic(String),
    #[error("inference failed: {0}")]
    Inference(String),
}

/// The outcome for one input, in input order.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemResult {
    /// Position in the input stream, from 0.
    pub idx: usize,
    pub path: PathBuf,
    pub outcome: Result<Classification, ItemError>,
    /// Where the answer came from.
    pub source: AnswerSource,
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
    /// Never got as far as the model (a read or input error).
    Failed,
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

impl RunStats {
    fn add(&mut self, other: &RunStats) {
        self.items += other.items;
        self.failed += other.failed;
        self.batches += other.batches;
        self.model_executions += other.model_executions;
        self.cache_hits += other.cache_hits;
        self.coalesced += other.coalesced;
        self.cache += other.cache;
        self.read += other.read;
        self.decode += other.decode;
        self.preprocess += other.preprocess;
        self.inference += other.inference;
        self.postprocess += other.postprocess;
        self.batch_walls.extend_from_slice(&other.batch_walls);
    }
}

/// A model on an engine, ready to classify streams of images.
pub struct Classifier {
    model: Arc<Model>,
    engine: Arc<dyn Engine>,
    config: PipelineConfig,
    cache: Option<Arc<ResultCache>>,
    /// The request options that change answers, as bound into cache keys.
    options_key: Vec<u8>,
}

type Outcome = Result<Classification, ItemError>;
/// Where a leader publishes the outcome that its followers in the same run share.
type SharedOutcome = Arc<OnceLock<Outcome>>;

/// A finished item on its way to the caller; a follower's outcome is filled in on emission.
struct Pending {
    result: ItemResult,
    follow: Option<SharedOutcome>,
}

/// Keys being computed in this run: the leader's input index and where it will publish.
/// An item follows a leader only if the leader comes earlier in input order, so that by the
/// time the follower is emitted (in order) the leader's outcome is published.
type InFlight = Mutex<HashMap<CacheKey, (usize, SharedOutcome)>>;

type Batch = (usize, Vec<(usize, InputEntry)>);
type BatchResults = (usize, Vec<Pending>, RunStats);

/// The encoding of cached answers. Part of every key, so a change of encoding misses.
const ANSWER_FORMAT: &str = "classification-json-v1";

impl Classifier {
    pub fn new(
        model: Arc<Model>,
        engine: Arc<dyn Engine>,
        config: PipelineConfig,
    ) -> Result<Classifier, RuntimeError> {
        config.validate(&model)?;
        let options_key = format!(
            "{ANSWER_FORMAT};top_k={};labels={}",
            config.top_k,
            if model.groups.is_some() {
                "grouped"
            } else {
                "fine"
            }
        )
        .into_bytes();
        Ok(Classifier {
            model,
            engine,
            config,
            cache: None,
            options_key,
        })
    }

    /// Puts a result cache on the path: lookups before decoding, inserts after postprocessing.
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
    /// no new batches start and the call returns once the running ones finish.
    pub fn run(
        &self,
        inputs: impl Iterator<Item = InputEntry> + Send,
        mut on_result: impl FnMut(ItemResult) -> ControlFlow<()>,
    ) -> Result<RunStats, RuntimeError> {
        let sessions = (0..self.config.instances)
            .map(|_| self.engine.session())
            .collect::<Result<Vec<_>, _>>()?;
        // Steady state: the clock starts once the sessions exist.
        let started = Instant::now();
        let window = self.config.instances * self.config.batches_in_flight_per_instance;
        let (batch_tx, batch_rx) = bounded::<Batch>(window);
        let (result_tx, result_rx) = bounded::<BatchResults>(window);
        let (token_tx, token_rx) = bounded::<()>(window);
        for _ in 0..window {
            let _ = token_tx.send(());
        }
        let mut stats = RunStats::default();
        let in_flight: InFlight = Mutex::new(HashMap::new());
        std::thread::scope(|scope| {
            let batch_size = self.config.batch_size;
            scope.spawn(move || produce(inputs, batch_size, batch_tx, token_rx));
            for session in sessions {
                let rx = batch_rx.clone();
                let tx = result_tx.clone();
                let in_flight = &in_flight;
                scope.spawn(move || self.work(session, rx, tx, in_flight));
            }
            drop((batch_rx, result_tx));

            let mut pending = std::collections::BTreeMap::new();
            let mut next_seq = 0;
            'receive: for (seq, results, batch_stats) in result_rx.iter() {
                stats.add(&batch_stats);
                pending.insert(seq, results);
                while let Some(results) = pending.remove(&next_seq) {
                    for Pending { mut result, follow } in results {
                        // The leader came earlier in input order, so it was emitted already
                        // and its outcome is published.
                        if let Some(shared) = follow {
                            result.outcome = shared.get().cloned().unwrap_or_else(|| {
                                Err(ItemError::Inference(
                                    "the shared computation did not finish".into(),
                                ))
                            });
                            stats.failed += usize::from(result.outcome.is_err());
                        }
                        if on_result(result).is_break() {
                            break 'receive;
                        }
                    }
                    next_seq += 1;
                    // The producer may have finished already; a closed channel is fine.
                    let _ = token_tx.send(());
                }
            }
            // Unblock the producer and the workers whether we finished or stopped early.
            drop(token_tx);
            drop(result_rx);
        });
        stats.wall = started.elapsed();
        Ok(stats)
    }

    fn work(
        &self,
        mut session: Box<dyn Session>,
        batches: Receiver<Batch>,
        results: Sender<BatchResults>,
        in_flight: &InFlight,
    ) {
        let mut preprocessor = Preprocessor::new(&self.model.manifest.preprocess);
        let item_len = preprocessor.item_len();
        let item_shape = self.model.manifest.preprocess.item_shape();
        let mut buffer: Vec<f32> = Vec::new();
        for (seq, batch) in batches.iter() {
            let batch_started = Instant::now();
            let mut stats = RunStats {
                items: batch.len(),
                batches: 1,
                ..RunStats::default()
            };
            let n = batch.len();
            let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
            let mut sources = vec![AnswerSource::Failed; n];
            let mut follows: Vec<Option<SharedOutcome>> = vec![None; n];
            let mut leads: Vec<Option<(CacheKey, SharedOutcome)>> = vec![None; n];
            let mut ready: Vec<usize> = Vec::with_capacity(n);
            buffer.clear();
            for (slot, (idx, entry)) in batch.iter().enumerate() {
                let bytes = match self.read(entry, &mut stats) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        outcomes[slot] = Some(Err(e));
                        continue;
                    }
                };
                if let Some(cache) = &self.cache {
                    let t0 = thread_cpu_time();
                    let key = CacheKey::new(&self.model.digest, &self.options_key, &bytes);
                    let hit = cache
                        .get(&key)
                        .and_then(|v| serde_json::from_slice::<Classification>(&v).ok());
                    let looked_up = match hit {
                        Some(answer) => {
                            outcomes[slot] = Some(Ok(answer));
                            sources[slot] = AnswerSource::Cache;
                            stats.cache_hits += 1;
                            true
                        }
                        None => {
                            let mut map = in_flight.lock().unwrap_or_else(|p| p.into_inner());
                            match map.get(&key) {
                                Some((leader, shared)) if leader < idx => {
                                    follows[slot] = Some(shared.clone());
                                    sources[slot] = AnswerSource::Coalesced;
                                    stats.coalesced += 1;
                                    cache.record_coalesced();
                                    true
                                }
                                // A later item is computing it: computing it again here is
                                // cheaper than waiting out of order.
                                Some(_) => false,
                                None => {
                                    let shared = SharedOutcome::default();
                                    map.insert(key, (*idx, shared.clone()));
                                    leads[slot] = Some((key, shared));
                                    false
                                }
                            }
                        }
                    };
                    stats.cache += thread_cpu_time().saturating_sub(t0);
                    if looked_up {
                        continue;
                    }
                }
                buffer.resize((ready.len() + 1) * item_len, 0.0);
                let out = &mut buffer[ready.len() * item_len..];
                match self.prepare(&bytes, &mut preprocessor, out, &mut stats) {
                    Ok(()) => ready.push(slot),
                    Err(e) => {
                        buffer.truncate(ready.len() * item_len);
                        outcomes[slot] = Some(Err(e));
                    }
                }
            }
            if !ready.is_empty() {
                let mut shape = vec![ready.len()];
                shape.extend_from_slice(&item_shape);
                let input = Tensor::new(shape, std::mem::take(&mut buffer))
                    .expect("the buffer holds one item per ready slot");
                let t0 = thread_cpu_time();
                let output = session.run(&input);
                stats.inference += thread_cpu_time().saturating_sub(t0);
                stats.model_executions += 1;
                buffer = input.into_parts().1;
                let t0 = thread_cpu_time();
                match output {
                    Ok(output) if output.shape().first() == Some(&ready.len()) => {
                        for (row, &slot) in ready.iter().enumerate() {
                            outcomes[slot] = Some(Ok(classify_row(
                                output.item(row),
                                self.model.manifest.activation,
                                self.config.top_k,
                                self.model.labels.as_ref(),
                                self.model.groups.as_ref(),
                            )));
                            sources[slot] = AnswerSource::Computed;
                        }
                    }
                    Ok(output) => {
                        let e = ItemError::Inference(format!(
                            "the model returned shape {:?} for a batch of {}",
                            output.shape(),
                            ready.len()
                        ));
                        for &slot in &ready {
                            outcomes[slot] = Some(Err(e.clone()));
                        }
                    }
                    Err(e) => {
                        for &slot in &ready {
                            outcomes[slot] = Some(Err(ItemError::Inference(e.to_string())));
                        }
                    }
                }
                stats.postprocess += thread_cpu_time().saturating_sub(t0);
            }
            self.publish(&mut outcomes, &mut leads, in_flight, &mut stats);
            let items: Vec<Pending> = batch
                .into_iter()
                .zip(outcomes)
                .zip(sources.into_iter().zip(follows))
                .map(|(((idx, entry), outcome), (source, follow))| Pending {
                    result: ItemResult {
                        idx,
                        path: entry.path,
                        outcome: outcome
                            .unwrap_or_else(|| Err(ItemError::Inference("not run".into()))),
                        source,
                    },
                    follow,
                })
                .collect();
            stats.failed = items
                .iter()
                .filter(|p| p.follow.is_none() && p.result.outcome.is_err())
                .count();
            stats
                .batch_walls
                .push((batch_started.elapsed(), items.len()));
            if results.send((seq, items, stats)).is_err() {
                return;
            }
        }
    }

    /// Shares each leader's outcome with its followers and stores the successes in the cache
    /// (errors are never cached).
    fn publish(
        &self,
        outcomes: &mut [Option<Outcome>],
        leads: &mut [Option<(CacheKey, SharedOutcome)>],
        in_flight: &InFlight,
        stats: &mut RunStats,
    ) {
        let Some(cache) = &self.cache else { return };
        let t0 = thread_cpu_time();
        let mut inserts = Vec::new();
        for (outcome, lead) in outcomes.iter().zip(leads.iter_mut()) {
            let Some((key, shared)) = lead.take() else {
                continue;
            };
            let outcome = outcome
                .clone()
                .unwrap_or_else(|| Err(ItemError::Inference("not run".into())));
            if let Ok(answer) = &outcome {
                if let Ok(bytes) = serde_json::to_vec(answer) {
                    inserts.push((key, Arc::<[u8]>::from(bytes)));
                }
            }
            let _ = shared.set(outcome);
            let mut map = in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&key).is_some_and(|(_, s)| Arc::ptr_eq(s, &shared)) {
                map.remove(&key);
            }
        }
        cache.insert_many(&self.model.digest, &inserts);
        stats.cache += thread_cpu_time().saturating_sub(t0);
    }

    fn read(&self, entry: &InputEntry, stats: &mut RunStats) -> Result<Vec<u8>, ItemError> {
        if let Some(problem) = &entry.problem {
            return Err(ItemError::Input(problem.reason.clone()));
        }
        let t0 = thread_cpu_time();
        let bytes = read_file(&entry.path, self.config.limits.max_pixels);
        stats.read += thread_cpu_time().saturating_sub(t0);
        bytes
    }

    /// Decodes and preprocesses one input's bytes into `out`.
    fn prepare(
        &self,
        bytes: &[u8],
        preprocessor: &mut Preprocessor,
        out: &mut [f32],
        stats: &mut RunStats,
    ) -> Result<(), ItemError> {
        let t1 = thread_cpu_time();
        let min_side = self.model.manifest.preprocess.min_source_short_side();
        let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
            decode_rgb(bytes, &self.config.limits, Some(min_side))
        }))
        .map_err(|panic| ItemError::DecoderPanic(panic_message(&panic)))?;
        let (image, _) = decoded?;
        let t2 = thread_cpu_time();
        stats.decode += t2.saturating_sub(t1);
        preprocessor
            .run(&image, &mut out[..preprocessor.item_len()])
            .map_err(|e| ItemError::Preprocess(e.to_string()))?;
        stats.preprocess += thread_cpu_time().saturating_sub(t2);
        Ok(())
    }
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

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn produce(
    inputs: impl Iterator<Item = InputEntry>,
    batch_size: usize,
    batches: Sender<Batch>,
    tokens: Receiver<()>,
) {
    let mut seq = 0;
    let mut batch = Vec::with_capacity(batch_size);
    let send = |batch: Vec<(usize, InputEntry)>, seq: &mut usize| -> bool {
        if tokens.recv().is_err() || batches.send((*seq, batch)).is_err() {
            return false;
        }
        *seq += 1;
        true
    };
    for (idx, entry) in inputs.enumerate() {
        batch.push((idx, entry));
        if batch.len() == batch_size {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
            if !send(full, &mut seq) {
                return;
            }
        }
    }
    if !batch.is_empty() {
        send(batch, &mut seq);
    }
}
