//! The single point: one model's path from an item to its answer, driven by every front-end
//! (`classify` over files, `serve` over HTTP, the tuner).
//!
//! ```text
//!  item ─▶ key ─▶ cache? ──hit─────────────────────────────────────────────────────▶ answer
//!                  │miss
//!                  ▼
//!          in flight already? ──yes: wait for that computation────────────────────▶ answer
//!                  │no: lead it
//!                  ▼
//!          admit (bounded; full → Overloaded) ─▶ preprocessing pool ─▶ batch queue
//!                                                  (or, with no pool, the instance
//!                                                   prepares its own batch)  │
//!          instance threads × N: take a batch (max size, max delay, preferred sizes)
//!          ─▶ one engine run ─▶ cache insert ─▶ every waiter of each key ─────────▶ answer
//! ```
//!
//! What is model-specific (how an input becomes the model's inputs, which items may share a
//! batch, which outputs an answer keeps) is the [`Task`]'s. The unit of work is one item (one
//! image, or one row of every input of a tensor model); its answer is the model's outputs for
//! it. Outputs are what the cache stores, so any top-k, output selection or format, from any
//! front-end, is derived from a hit without running the model.
//!
//! A batch taken from the queue runs as one engine run per group of items that can be
//! stacked: items of one shape, or, for inputs with a declared pad value, items of any lengths,
//! padded to the longest; outputs along an axis that shares a dimension name with a padded
//! input axis are cut back to each item's own length. The computation of an
//! admitted item does not depend on the caller that led it: a caller that gives up does not
//! cancel it, and its answer is cached.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use singlepoint_backend::{BackendKind, Engine, Session};
use singlepoint_cache::{CacheKey, ResultCache};
use singlepoint_core::{AnyTensor, TensorSpec};
use singlepoint_model::{DecodeLimits, InputDecl, Model};
use tokio::sync::oneshot;

use crate::adaptive::Adaptive;
use crate::cputime::thread_cpu_time;
use crate::metrics::{ModelMetrics, StageCpu};
use crate::task::{decode_outputs, encode_outputs, Outputs, Prepare, PrepareTimes, Prepared, Task};

pub use singlepoint_protocol::ItemInput;

/// How one model is batched and run.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchConfig {
    /// Engine instances (sessions) running batches in parallel, one thread each.
    pub instances: usize,
    /// Most items in one engine run.
    pub max_batch_size: usize,
    /// How long the oldest item of a forming batch may wait for more.
    pub max_queue_delay: Duration,
    /// Sizes at which a batch goes at once when nothing more is waiting.
    pub preferred_batch_sizes: Vec<usize>,
    /// Threads decoding and preprocessing inputs. With 0, each instance prepares the batch it
    /// takes before running it: on a machine where every core is needed for both stages, N
    /// threads doing both never oversubscribe the cores (what `classify` uses).
    pub decode_workers: usize,
    /// Items admitted and not yet answered; beyond this, items are refused as overloaded.
    pub max_queue: usize,
    pub limits: DecodeLimits,
    /// With a target, batch size (up to `max_batch_size`) and queue delay follow the load
    /// online ([`crate::adaptive`]); without, they are fixed.
    pub latency_target: Option<Duration>,
    /// Keep the wall time and size of every engine batch (the tuner's latency measure); off
    /// for a long-running server, where the list would grow without bound.
    pub record_batches: bool,
    /// For models whose items are padded to share a run (texts): group what an instance
    /// takes by length, within a token budget. `None`: runs of up to `max_batch_size` items
    /// in arrival order, padded to the longest.
    pub length_grouping: Option<LengthGrouping>,
}

/// Batching by length: an instance takes up to `window` waiting items at once, sorts them by
/// length and splits them into runs of neighbouring lengths, each of at most
/// `max_batch_size` items and `max_tokens` padded positions (items × longest), choosing the
/// split that runs the fewest padded positions plus `run_overhead` per run. A long text
/// therefore never makes a batch of short ones pay for its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LengthGrouping {
    pub window: usize,
    pub max_tokens: usize,
    /// What starting one engine run costs, in padded positions (measured:
    /// bench/results/embed-*.md).
    pub run_overhead: usize,
}

impl LengthGrouping {
    /// The defaults `embed` and `serve` use for text models.
    pub const DEFAULT: LengthGrouping = LengthGrouping {
        window: 256,
        max_tokens: 16_384,
        // Served all-MiniLM-L6-v2 at concurrency 16 (2026-12-04, by hand, 10 s each): 8 and 16
        // gave 350-375 req/s, 32 gave 342 and 64 307; offline `embed` was the same at 16 and 32.
        run_overhead: 16,
    };
}

/// Why one item has no answer. Cloned to every caller waiting for the same computation.
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
    #[error("the decoder crashed on this input: {0}")]
    DecoderPanic(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Timeout(String),
}

/// The kinds of failure a front-end tells apart (the server's status codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The input itself is wrong (not an image, too many pixels, ...).
    BadInput,
    /// The queue is full: retry later.
    Overloaded,
    /// The model is shutting down.
    Unavailable,
    /// The deadline passed before the answer.
    Timeout,
    /// The engine failed.
    Internal,
}

impl ItemError {
    pub fn kind(&self) -> FailureKind {
        match self {
            ItemError::Input(_)
            | ItemError::Read(_)
            | ItemError::Decode(_)
            | ItemError::Preprocess(_)
            | ItemError::DecoderPanic(_) => FailureKind::BadInput,
            ItemError::Inference(_) => FailureKind::Internal,
            ItemError::Overloaded(_) => FailureKind::Overloaded,
            ItemError::Unavailable(_) => FailureKind::Unavailable,
            ItemError::Timeout(_) => FailureKind::Timeout,
        }
    }
}

pub type Outcome = Result<Outputs, ItemError>;
/// An answered item: its outputs and where they came from.
pub type Answer = Result<(Outputs, Source), ItemError>;

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Computed,
    Cache,
    /// An identical item was being computed; this one shared its answer.
    Coalesced,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Computed => "computed",
            Source::Cache => "cache",
            Source::Coalesced => "coalesced",
        }
    }
}

/// An item on its way: its answer, or a receiver for it.
pub enum Ticket {
    Ready(Answer),
    Waiting(oneshot::Receiver<Outcome>, Source),
}

fn abandoned() -> ItemError {
    ItemError::Inference("the computation was abandoned".into())
}

impl Ticket {
    /// Waits for the answer until `deadline` (from async code).
    pub async fn wait(self, deadline: tokio::time::Instant) -> Answer {
        match self {
            Ticket::Ready(r) => r,
            Ticket::Waiting(rx, source) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(outcome)) => outcome.map(|row| (row, source)),
                Ok(Err(_)) => Err(abandoned()),
                Err(_) => Err(ItemError::Timeout(
                    "the request deadline passed before the answer was ready".into(),
                )),
            },
        }
    }

    /// Blocks the calling thread until the answer is there (never from async code).
    pub fn wait_blocking(self) -> Answer {
        match self {
            Ticket::Ready(r) => r,
            Ticket::Waiting(rx, source) => match rx.blocking_recv() {
                Ok(outcome) => outcome.map(|row| (row, source)),
                Err(_) => Err(abandoned()),
            },
        }
    }
}

/// An admitted item on its way to an engine run.
struct Job {
    key: CacheKey,
    admitted: Instant,
    /// When it entered the batch queue.
    queued: Instant,
    deadline: Instant,
    work: Work,
}

enum Work {
    /// Still to be prepared by the task.
    Raw(ItemInput),
    /// One item of the model's inputs, with what its preparation noted.
    Ready(Prepared),
}

type Waiters = Mutex<HashMap<CacheKey, Vec<oneshot::Sender<Outcome>>>>;

/// State shared by the callers' side and the worker threads.
struct Shared {
    model: Arc<Model>,
    task: Arc<dyn Task>,
    cache: Option<Arc<ResultCache>>,
    in_flight: Waiters,
    admitted: AtomicUsize,
    busy: AtomicI64,
    metrics: ModelMetrics,
    config: BatchConfig,
    adaptive: Option<Adaptive>,
    batches: Mutex<Vec<(Duration, usize)>>,
    /// Length-grouped models: prepared items every instance chooses its next run from, so
    /// that runs are cut from everything waiting rather than from what one instance took.
    held: Mutex<Vec<Job>>,
    /// A token sent when an instance leaves items in `held`, so that an instance waiting on
    /// an empty queue wakes to take a run of them.
    wake: (Sender<()>, Receiver<()>),
}

/// A model being served: the one path every front-end drives.
pub struct ModelService {
    shared: Arc<Shared>,
    engine_kind: BackendKind,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    decode_tx: Mutex<Option<Sender<Job>>>,
    batch_tx: Mutex<Option<Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl ModelService {
    /// Creates the engine sessions and starts the preprocessing and instance threads.
    pub fn start(
        model: Arc<Model>,
        task: Arc<dyn Task>,
        engine: Arc<dyn Engine>,
        cache: Option<Arc<ResultCache>>,
        config: BatchConfig,
    ) -> Result<ModelService, singlepoint_backend::BackendError> {
        let sessions = (0..config.instances)
            .map(|_| engine.session())
            .collect::<Result<Vec<_>, _>>()?;
        let shared = Arc::new(Shared {
            model: model.clone(),
            task,
            cache,
            in_flight: Mutex::new(HashMap::new()),
            admitted: AtomicUsize::new(0),
            busy: AtomicI64::new(0),
            metrics: ModelMetrics::default(),
            config: config.clone(),
            adaptive: config
                .latency_target
                .map(|t| Adaptive::new(t, config.max_batch_size)),
            batches: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            wake: crossbeam_channel::bounded(1),
        });
        // Admission bounds what is queued; the channels themselves need no bound.
        let (decode_tx, decode_rx) = unbounded::<Job>();
        let (batch_tx, batch_rx) = unbounded::<Job>();
        let mut threads = Vec::new();
        let name = &model.manifest.name;
        for (i, session) in sessions.into_iter().enumerate() {
            let shared = shared.clone();
            let rx = batch_rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-instance-{i}"))
                    .spawn(move || run_instance(&shared, session, &rx))
                    .expect("spawning a thread"),
            );
        }
        for i in 0..config.decode_workers {
            let shared = shared.clone();
            let rx = decode_rx.clone();
            let tx = batch_tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-decode-{i}"))
                    .spawn(move || run_decoder(&shared, &rx, &tx))
                    .expect("spawning a thread"),
            );
        }
        Ok(ModelService {
            shared,
            engine_kind: engine.kind(),
            inputs: engine.inputs().to_vec(),
            outputs: engine.outputs().to_vec(),
            decode_tx: Mutex::new((config.decode_workers > 0).then_some(decode_tx)),
            batch_tx: Mutex::new(Some(batch_tx)),
            threads: Mutex::new(threads),
        })
    }

    pub fn model(&self) -> &Model {
        &self.shared.model
    }

    pub fn task(&self) -> &Arc<dyn Task> {
        &self.shared.task
    }

    pub fn name(&self) -> &str {
        &self.shared.model.manifest.name
    }

    pub fn engine_kind(&self) -> BackendKind {
        self.engine_kind
    }

    /// The model's first input, as the engine sees it.
    pub fn input(&self) -> &TensorSpec {
        &self.inputs[0]
    }

    /// The model's first output, as the engine sees it.
    pub fn output(&self) -> &TensorSpec {
        &self.outputs[0]
    }

    /// Every input, as the engine sees them.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// Every output, as the engine sees them.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    pub fn config(&self) -> &BatchConfig {
        &self.shared.config
    }

    pub fn cache(&self) -> Option<&Arc<ResultCache>> {
        self.shared.cache.as_ref()
    }

    pub fn metrics(&self) -> &ModelMetrics {
        &self.shared.metrics
    }

    /// The wall time and size of every engine batch so far, with `record_batches`.
    pub fn batches(&self) -> Vec<(Duration, usize)> {
        self.shared
            .batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The online batching controller, when a latency target is set.
    pub fn adaptive(&self) -> Option<&Adaptive> {
        self.shared.adaptive.as_ref()
    }

    /// Items admitted and not yet answered.
    pub fn queue_depth(&self) -> usize {
        self.shared.admitted.load(Ordering::Relaxed)
    }

    /// Instances running a batch now.
    pub fn busy_instances(&self) -> i64 {
        self.shared.busy.load(Ordering::Relaxed)
    }

    /// Starts one item: answers it from the cache, joins an identical computation in flight,
    /// or admits it to the queue. Never blocks on the model.
    pub fn submit(&self, input: ItemInput, deadline: Instant) -> Ticket {
        let t0 = thread_cpu_time();
        let ticket = self.submit_inner(input, deadline);
        StageCpu::add(
            &self.shared.metrics.cpu.key_cache,
            thread_cpu_time().saturating_sub(t0),
        );
        ticket
    }

    /// The content key an item's answer is cached under (the model digest, the task's entry
    /// encoding and the input): what answers carry so that a correction can name them.
    pub fn key(&self, input: &ItemInput) -> CacheKey {
        let shared = &self.shared;
        let encoding = shared.task.entry_encoding(input);
        match input {
            ItemInput::Image(bytes) => CacheKey::new(&shared.model.digest, encoding, bytes),
            ItemInput::Pixels { width, height, rgb } => CacheKey::from_parts(
                &shared.model.digest,
                encoding,
                &[&width.to_le_bytes(), &height.to_le_bytes(), rgb],
            ),
            ItemInput::Tensor(data) => {
                let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
                CacheKey::new(&shared.model.digest, encoding, &bytes)
            }
            ItemInput::Tensors(tensors) => {
                let mut bytes = Vec::new();
                crate::task::write_tensors(tensors, &mut bytes);
                CacheKey::new(&shared.model.digest, encoding, &bytes)
            }
            // The tokenizer, its limit and the pooling are the model digest's; what the
            // request decides is whether an over-long text is cut.
            ItemInput::Text { text, truncate } => CacheKey::from_parts(
                &shared.model.digest,
                encoding,
                &[&[u8::from(*truncate)], text.as_bytes()],
            ),
        }
    }

    fn submit_inner(&self, input: ItemInput, deadline: Instant) -> Ticket {
        let shared = &self.shared;
        let key = self.key(&input);
        let lookup = || {
            let cache = shared.cache.as_ref()?;
            cache.get(&key).and_then(|v| decode_outputs(&v))
        };
        if let Some(row) = lookup() {
            shared.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ticket::Ready(Ok((row, Source::Cache)));
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(list) = waiters.get_mut(&key) {
                list.push(tx);
                shared.metrics.coalesced.fetch_add(1, Ordering::Relaxed);
                if let Some(cache) = &shared.cache {
                    cache.record_coalesced();
                }
                return Ticket::Waiting(rx, Source::Coalesced);
            }
            waiters.insert(key, vec![tx]);
        }
        // A computation of this key may have finished between the lookup and the lock; it
        // stored its answer before leaving the in-flight map, so the cache has it now.
        if let Some(row) = lookup() {
            shared.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
            finish(shared, &key, Ok(row), false);
            return Ticket::Waiting(rx, Source::Cache);
        }
        if shared.cache.is_some() {
            shared.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
        }
        // This item leads the computation of its key.
        let max = shared.config.max_queue;
        let admitted = shared
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            shared.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            finish(
                shared,
                &key,
                Err(ItemError::Overloaded(format!(
                    "the queue is full ({max} items waiting); retry later"
                ))),
                false,
            );
            return Ticket::Waiting(rx, Source::Computed);
        }
        if let Some(a) = &shared.adaptive {
            a.arrived();
        }
        let now = Instant::now();
        // Tensors need no decoding: the instance that takes them prepares them in passing.
        let to_pool = matches!(input, ItemInput::Image(_) | ItemInput::Pixels { .. });
        let work = Work::Raw(input);
        let job = Job {
            key,
            admitted: now,
            queued: now,
            deadline,
            work,
        };
        let pool = if to_pool {
            lock_clone(&self.decode_tx)
        } else {
            None
        };
        let sent = match pool {
            Some(tx) => tx.send(job).is_ok(),
            None => lock_clone(&self.batch_tx).is_some_and(|tx| tx.send(job).is_ok()),
        };
        if !sent {
            finish(shared, &key, Err(shutting_down()), true);
        }
        Ticket::Waiting(rx, Source::Computed)
    }

    /// Stops taking work, lets the threads finish what was admitted, and joins them.
    pub fn shutdown(&self) {
        self.decode_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.batch_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn shutting_down() -> ItemError {
    ItemError::Unavailable("the model is shutting down".into())
}

fn lock_clone<T>(slot: &Mutex<Option<Sender<T>>>) -> Option<Sender<T>> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Publishes the outcome of `key` to everyone waiting for it; `release` gives back the
/// admission slot the leader took (first, so that a caller woken by the answer may submit
/// again at once).
fn finish(shared: &Shared, key: &CacheKey, outcome: Outcome, release: bool) {
    if release {
        shared.admitted.fetch_sub(1, Ordering::AcqRel);
    }
    let waiters = shared
        .in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(key)
        .unwrap_or_default();
    for tx in waiters {
        // A waiter that gave up (deadline, caller gone) has dropped its receiver.
        let _ = tx.send(outcome.clone());
    }
}

fn expired() -> ItemError {
    ItemError::Timeout("the request deadline passed while the item was queued".into())
}

/// Prepares one raw job in place; on failure publishes the error and returns false.
fn prepare_job(shared: &Shared, preparer: &mut Box<dyn Prepare>, job: &mut Job) -> bool {
    if matches!(job.work, Work::Ready(_)) {
        return true;
    }
    let Work::Raw(input) = std::mem::replace(&mut job.work, Work::Ready(Prepared::default()))
    else {
        return true;
    };
    let started = Instant::now();
    let mut times = PrepareTimes::default();
    let prepared = preparer.prepare(input, &mut times);
    let cpu = &shared.metrics.cpu;
    StageCpu::add(&cpu.decode, times.decode);
    StageCpu::add(&cpu.preprocess, times.preprocess);
    shared
        .metrics
        .decode_seconds
        .observe_duration(started.elapsed());
    match prepared {
        Ok(data) => {
            job.work = Work::Ready(data);
            true
        }
        Err(e) => {
            finish(shared, &job.key, Err(e), true);
            false
        }
    }
}

fn run_decoder(shared: &Shared, jobs: &Receiver<Job>, batches: &Sender<Job>) {
    let mut preparer = shared.task.preparer();
    for mut job in jobs.iter() {
        if Instant::now() >= job.deadline {
            shared.metrics.expired.fetch_add(1, Ordering::Relaxed);
            finish(shared, &job.key, Err(expired()), true);
            continue;
        }
        if !prepare_job(shared, &mut preparer, &mut job) {
            continue;
        }
        job.queued = Instant::now();
        if let Err(e) = batches.send(job) {
            let job = e.into_inner();
            finish(shared, &job.key, Err(shutting_down()), true);
        }
    }
}

/// A batch as taken from the queue, and how it closed.
struct Taken {
    items: Vec<Job>,
    /// The delay ran out (rather than the batch filling or reaching a preferred size).
    waited_out: bool,
    /// Items that arrived while it waited.
    gained: usize,
}

/// Takes the next batch: blocks for the first item, then gathers more until the batch holds
/// `max` items, the oldest has waited `delay`, or the batch has a preferred size and nothing
/// more is waiting. `None` when the queue is closed and empty.
fn next_batch(
    rx: &Receiver<Job>,
    max: usize,
    delay: Duration,
    preferred: &[usize],
) -> Option<Taken> {
    let first = rx.recv().ok()?;
    Some(gather(first, rx, max, delay, preferred))
}

/// [`next_batch`] once its first item is there.
fn gather(
    first: Job,
    rx: &Receiver<Job>,
    max: usize,
    delay: Duration,
    preferred: &[usize],
) -> Taken {
    // Measured from the oldest item's arrival: one that waited behind busy instances goes now.
    let until = first.queued + delay;
    let mut taken = Taken {
        items: Vec::with_capacity(max),
        waited_out: false,
        gained: 0,
    };
    taken.items.push(first);
    while taken.items.len() < max {
        match rx.try_recv() {
            Ok(item) => {
                taken.items.push(item);
                continue;
            }
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {}
        }
        if preferred.contains(&taken.items.len()) {
            break;
        }
        let now = Instant::now();
        if now >= until {
            taken.waited_out = !delay.is_zero();
            break;
        }
        match rx.recv_timeout(until - now) {
            Ok(item) => {
                taken.items.push(item);
                taken.gained += 1;
            }
            Err(RecvTimeoutError::Timeout) => {
                taken.waited_out = true;
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    taken
}

/// Fails the taken items whose deadline has passed and prepares the others (those that fail
/// preparing are answered here).
fn admit_taken(shared: &Shared, preparer: &mut Box<dyn Prepare>, items: Vec<Job>) -> Vec<Job> {
    let now = Instant::now();
    let (live, late): (Vec<Job>, Vec<Job>) = items.into_iter().partition(|p| p.deadline > now);
    for p in late {
        shared.metrics.expired.fetch_add(1, Ordering::Relaxed);
        finish(shared, &p.key, Err(expired()), true);
    }
    live.into_iter()
        .filter_map(|mut job| prepare_job(shared, preparer, &mut job).then_some(job))
        .collect()
}

fn observe_queue(shared: &Shared, batch: &[Job]) {
    let now = Instant::now();
    for p in batch {
        shared
            .metrics
            .queue_seconds
            .observe_duration(now.saturating_duration_since(p.queued));
    }
}

/// The next run of a length-grouped model: what has arrived joins the shared pool of waiting
/// items (waiting for the first item only when the pool is empty), the pool is cut into runs
/// by length ([`split_by_length`]), and the run holding the oldest item is taken, so that no
/// item waits behind newer ones. The rest stay in the pool, and an instance waiting on an
/// empty queue is woken to take a run of them. `None`
/// when the queue is closed and nothing is left.
#[allow(clippy::too_many_arguments)]
fn take_grouped(
    shared: &Shared,
    preparer: &mut Box<dyn Prepare>,
    rx: &Receiver<Job>,
    window: usize,
    max: usize,
    delay: Duration,
    g: LengthGrouping,
    k: usize,
) -> Option<Vec<Job>> {
    loop {
        let pooled = lock(&shared.held).len();
        let arrived = if pooled == 0 {
            // Wait for a new item, or for another instance to leave some in the pool.
            let (woken, first) = crossbeam_channel::select! {
                recv(rx) -> job => (false, job.ok()),
                recv(shared.wake.1) -> _ => (true, None),
            };
            if woken {
                continue;
            }
            let Some(first) = first else {
                // The queue is closed: finish what another instance left, then stop.
                if lock(&shared.held).is_empty() {
                    return None;
                }
                continue;
            };
            let taken = gather(
                first,
                rx,
                window,
                delay,
                &shared.config.preferred_batch_sizes,
            );
            if let Some(a) = &shared.adaptive {
                a.observe_wait(taken.waited_out, taken.gained);
            }
            taken.items
        } else {
            let mut items = Vec::new();
            while pooled + items.len() < window {
                match rx.try_recv() {
                    Ok(job) => items.push(job),
                    Err(_) => break,
                }
            }
            items
        };
        let arrived = admit_taken(shared, preparer, arrived);
        let mut held = lock(&shared.held);
        held.extend(arrived);
        let now = Instant::now();
        let mut i = 0;
        while i < held.len() {
            if held[i].deadline <= now {
                let p = held.swap_remove(i);
                shared.metrics.expired.fetch_add(1, Ordering::Relaxed);
                finish(shared, &p.key, Err(expired()), true);
            } else {
                i += 1;
            }
        }
        if held.is_empty() {
            continue;
        }
        let queued: Vec<Instant> = held.iter().map(|j| j.queued).collect();
        let lengths: Vec<usize> = held.iter().map(|j| job_length(j, k)).collect();
        let mut run = pick_run(&queued, &lengths, max, g);
        // Highest index first: each swap_remove then moves an item that stays.
        run.sort_unstable_by(|a, b| b.cmp(a));
        let mut jobs: Vec<Job> = run.into_iter().map(|i| held.swap_remove(i)).collect();
        let left = !held.is_empty();
        drop(held);
        if left {
            let _ = shared.wake.0.try_send(());
        }
        jobs.sort_by_key(|j| j.queued);
        observe_queue(shared, &jobs);
        return Some(jobs);
    }
}

/// The run [`split_by_length`] cuts from a pool of items (`queued[i]`, `lengths[i]`) that holds
/// the oldest item, as indices into the pool.
fn pick_run(queued: &[Instant], lengths: &[usize], max: usize, g: LengthGrouping) -> Vec<usize> {
    let Some(oldest) = (0..queued.len()).min_by_key(|&i| queued[i]) else {
        return Vec::new();
    };
    let all: Vec<usize> = (0..queued.len()).collect();
    split_by_length(&all, lengths, max, g)
        .into_iter()
        .find(|r| r.contains(&oldest))
        .unwrap_or_else(|| vec![oldest])
}

fn job_length(job: &Job, k: usize) -> usize {
    match &job.work {
        Work::Ready(p) => p.inputs.get(k).map_or(0, AnyTensor::len),
        Work::Raw(_) => 0,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn run_instance(shared: &Shared, mut session: Box<dyn Session>, rx: &Receiver<Job>) {
    // Only used when there is no preprocessing pool: this instance prepares its own batches.
    let mut preparer = shared.task.preparer();
    let config = &shared.config;
    // Only items that pad to share a run (texts) are grouped by length: an image model keeps
    // batches of `max`, so that every instance has work.
    let grouping = match (config.length_grouping, padded_length(shared.task.inputs())) {
        (Some(g), Some(k)) => Some((g, k)),
        _ => None,
    };
    loop {
        let (max, delay) = match &shared.adaptive {
            Some(a) => a.settings(),
            None => (config.max_batch_size, config.max_queue_delay),
        };
        let (batch, batch_started) = match grouping {
            Some((g, k)) => {
                let Some(run) = take_grouped(
                    shared,
                    &mut preparer,
                    rx,
                    g.window.max(max),
                    max,
                    delay,
                    g,
                    k,
                ) else {
                    break;
                };
                (run, Instant::now())
            }
            None => {
                let Some(taken) = next_batch(rx, max, delay, &config.preferred_batch_sizes) else {
                    break;
                };
                let batch_started = Instant::now();
                if let Some(a) = &shared.adaptive {
                    a.observe_wait(taken.waited_out, taken.gained);
                }
                let batch = admit_taken(shared, &mut preparer, taken.items);
                observe_queue(shared, &batch);
                (batch, batch_started)
            }
        };
        if batch.is_empty() {
            continue;
        }
        shared.busy.fetch_add(1, Ordering::Relaxed);
        let items: Vec<&[AnyTensor]> = batch
            .iter()
            .map(|j| match &j.work {
                Work::Ready(p) => p.inputs.as_slice(),
                Work::Raw(_) => &[],
            })
            .collect();
        let contexts: Vec<&[AnyTensor]> = batch
            .iter()
            .map(|j| match &j.work {
                Work::Ready(p) => p.context.as_slice(),
                Work::Raw(_) => &[],
            })
            .collect();
        let decls = shared.task.inputs();
        let runs = stackable_groups(&items, decls)
            .into_iter()
            .flat_map(
                |group| match (config.length_grouping, padded_length(decls)) {
                    (Some(g), Some(k)) => {
                        let lengths: Vec<usize> = group
                            .iter()
                            .map(|&i| items[i].get(k).map_or(0, AnyTensor::len))
                            .collect();
                        split_by_length(&group, &lengths, max, g)
                    }
                    _ => group.chunks(max.max(1)).map(<[usize]>::to_vec).collect(),
                },
            );
        // Each run's items are answered as soon as it ends, not after the other runs of the
        // batch: a short text grouped away from a long one does not wait for it. The first
        // run's recorded time includes preparing the batch, as the tuner's latency measure.
        let mut run_started = batch_started;
        for group in runs {
            let results = run_group(shared, session.as_mut(), &items, &group);
            let outcomes: Vec<Outcome> = group
                .iter()
                .zip(results)
                .map(|(&i, outcome)| {
                    outcome.and_then(|outputs| {
                        shared
                            .task
                            .finish(outputs.to_vec(), contexts[i])
                            .map(Outputs::from)
                    })
                })
                .collect();
            if config.record_batches {
                shared
                    .batches
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((run_started.elapsed(), group.len()));
            }
            publish(shared, group.iter().map(|&i| &batch[i]), outcomes);
            run_started = Instant::now();
        }
        shared.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Stores the answers of one run in the cache, then hands them to their callers. Storing
/// first means that a caller arriving after the in-flight entry is gone finds the answer in
/// the cache.
fn publish<'a>(
    shared: &Shared,
    jobs: impl Iterator<Item = &'a Job> + Clone,
    outcomes: Vec<Outcome>,
) {
    let cpu0 = thread_cpu_time();
    if let Some(cache) = &shared.cache {
        let inserts: Vec<(CacheKey, Arc<[u8]>)> = jobs
            .clone()
            .zip(&outcomes)
            .filter_map(|(p, o)| {
                o.as_ref()
                    .ok()
                    .map(|outputs| (p.key, Arc::from(encode_outputs(outputs))))
            })
            .collect();
        cache.insert_many(&shared.model.digest, &inserts);
    }
    for (p, outcome) in jobs.zip(outcomes) {
        finish(shared, &p.key, outcome, true);
        if let Some(a) = &shared.adaptive {
            a.observe_latency(p.admitted.elapsed().as_secs_f64());
        }
    }
    StageCpu::add(
        &shared.metrics.cpu.key_cache,
        thread_cpu_time().saturating_sub(cpu0),
    );
}

/// Splits a batch into groups that stack into one engine run, keeping arrival order within
/// each: items whose inputs have one shape, where inputs with a pad value may differ in
/// their dynamic sizes (only their ranks must agree).
fn stackable_groups(items: &[&[AnyTensor]], decls: &[InputDecl]) -> Vec<Vec<usize>> {
    let signature = |item: &[AnyTensor]| -> Vec<Vec<usize>> {
        item.iter()
            .enumerate()
            .map(|(k, t)| {
                if decls.get(k).is_some_and(|d| d.pad.is_some()) {
                    vec![t.shape().len()]
                } else {
                    t.shape().to_vec()
                }
            })
            .collect()
    };
    let mut groups: Vec<(Vec<Vec<usize>>, Vec<usize>)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let sig = signature(item);
        match groups.iter_mut().find(|(s, _)| *s == sig) {
            Some((_, members)) => members.push(i),
            None => groups.push((sig, vec![i])),
        }
    }
    groups.into_iter().map(|(_, members)| members).collect()
}

/// The first input padded to share a run, whose length stands for an item's (a text's tokens).
fn padded_length(decls: &[InputDecl]) -> Option<usize> {
    decls.iter().position(|d| d.pad.is_some())
}

/// Splits `group` (items that stack, `lengths[i]` the length of `group[i]`) into runs by
/// length: sorted, then cut where the padded positions plus `run_overhead` per run are fewest
/// (exact, by dynamic programming over the sorted order), each run at most `max_items` items
/// and `max_tokens` positions (a single item longer than that runs alone).
fn split_by_length(
    group: &[usize],
    lengths: &[usize],
    max_items: usize,
    g: LengthGrouping,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..group.len()).collect();
    // Stable: equal lengths keep arrival order.
    order.sort_by_key(|&p| lengths[p]);
    let n = order.len();
    let max_items = max_items.max(1);
    // best[j]: cheapest split of the first j sorted items; cut[j]: where its last run starts.
    let mut best = vec![usize::MAX; n + 1];
    let mut cut = vec![0usize; n + 1];
    best[0] = 0;
    for j in 1..=n {
        let longest = lengths[order[j - 1]].max(1);
        for i in (j.saturating_sub(max_items)..j).rev() {
            let count = j - i;
            if count > 1 && count * longest > g.max_tokens {
                break;
            }
            let cost = best[i].saturating_add(g.run_overhead + count * longest);
            if cost < best[j] {
                best[j] = cost;
                cut[j] = i;
            }
        }
    }
    let mut runs = Vec::new();
    let mut j = n;
    while j > 0 {
        let i = cut[j];
        runs.push(order[i..j].iter().map(|&p| group[p]).collect());
        j = i;
    }
    runs.reverse();
    runs
}

/// The size each dimension name has in one item (axes of the item's inputs, batch axis left
/// out).
fn named_sizes<'a>(decls: &'a [InputDecl], item: &[AnyTensor]) -> HashMap<&'a str, usize> {
    let mut sizes = HashMap::new();
    for (decl, t) in decls.iter().zip(item) {
        for (axis, &n) in t.shape().iter().enumerate() {
            if let Some(name) = decl.spec.symbol(axis + 1) {
                sizes.insert(name, n);
            }
        }
    }
    sizes
}

/// Stacks the items of `group`, runs them as one batch and splits the outputs per item.
fn run_group(
    shared: &Shared,
    session: &mut dyn Session,
    items: &[&[AnyTensor]],
    group: &[usize],
) -> Vec<Outcome> {
    let n = group.len();
    let decls = shared.task.inputs();
    let fail = |e: String| vec![Err(ItemError::Inference(e)); n];
    let stacked: Result<Vec<AnyTensor>, _> = decls
        .iter()
        .enumerate()
        .map(|(k, decl)| {
            let parts: Vec<&AnyTensor> = group.iter().filter_map(|&i| items[i].get(k)).collect();
            if parts.len() != n {
                return Err(format!("an item lacks input `{}`", decl.spec.name));
            }
            AnyTensor::stack(&parts, decl.pad).map_err(|e| e.to_string())
        })
        .collect();
    let inputs = match stacked {
        Ok(inputs) => inputs,
        Err(e) => return fail(e),
    };
    if let Some(k) = decls.iter().position(|d| d.pad.is_some()) {
        let used: usize = group
            .iter()
            .filter_map(|&i| items[i].get(k))
            .map(AnyTensor::len)
            .sum();
        let slots = inputs.get(k).map_or(0, AnyTensor::len);
        let m = &shared.metrics;
        m.padded_used.fetch_add(used as u64, Ordering::Relaxed);
        m.padded_slots.fetch_add(slots as u64, Ordering::Relaxed);
    }
    let padded = group.iter().any(|&i| {
        items[i]
            .iter()
            .zip(&inputs)
            .any(|(t, s)| t.shape() != &s.shape()[1..])
    });
    let t0 = Instant::now();
    let cpu0 = thread_cpu_time();
    let output = std::panic::catch_unwind(AssertUnwindSafe(|| session.run_all(&inputs)));
    let took = t0.elapsed();
    let cpu1 = thread_cpu_time();
    StageCpu::add(&shared.metrics.cpu.inference, cpu1.saturating_sub(cpu0));
    shared.metrics.compute_seconds.observe_duration(took);
    if let Some(a) = &shared.adaptive {
        a.observe_run(n, took.as_secs_f64());
    }
    shared.metrics.batch_size.observe(n as f64);
    shared.metrics.executions.fetch_add(1, Ordering::Relaxed);
    let kept = shared.task.outputs();
    let outcomes = match output {
        Ok(Ok(outs))
            if outs.len() >= kept.len() && outs.iter().all(|o| o.shape().first() == Some(&n)) =>
        {
            shared
                .metrics
                .items_computed
                .fetch_add(n as u64, Ordering::Relaxed);
            group
                .iter()
                .enumerate()
                .map(|(pos, &i)| {
                    let sizes = padded.then(|| named_sizes(decls, items[i]));
                    outs.iter()
                        .zip(kept)
                        .map(|(out, spec)| {
                            let item = out.item(pos);
                            let Some(sizes) = &sizes else {
                                return Ok(item);
                            };
                            let own: Vec<usize> = item
                                .shape()
                                .iter()
                                .enumerate()
                                .map(|(axis, &d)| {
                                    spec.symbol(axis + 1)
                                        .and_then(|s| sizes.get(s))
                                        .map_or(d, |&s| s.min(d))
                                })
                                .collect();
                            if own == item.shape() {
                                Ok(item)
                            } else {
                                item.crop(&own)
                                    .map_err(|e| ItemError::Inference(e.to_string()))
                            }
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(Outputs::from)
                })
                .collect()
        }
        Ok(Ok(outs)) => fail(format!(
            "the model returned outputs of shapes {:?} for a batch of {n}",
            outs.iter().map(|o| o.shape().to_vec()).collect::<Vec<_>>()
        )),
        // One item the engine refuses (an id outside the vocabulary, say) must not fail the
        // others it was batched with: run each alone, so that only it fails.
        Ok(Err(_)) if n > 1 => group
            .iter()
            .flat_map(|&i| run_group(shared, session, items, &[i]))
            .collect(),
        Ok(Err(e)) => fail(e.to_string()),
        Err(_) => fail("the engine crashed".into()),
    };
    StageCpu::add(
        &shared.metrics.cpu.postprocess,
        thread_cpu_time().saturating_sub(cpu1),
    );
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(queued: Instant) -> Job {
        Job {
            key: CacheKey([0; 32]),
            admitted: queued,
            queued,
            deadline: queued + Duration::from_secs(10),
            work: Work::Ready(Prepared::default()),
        }
    }

    fn take(rx: &Receiver<Job>, c: &BatchConfig) -> Option<Vec<Job>> {
        next_batch(
            rx,
            c.max_batch_size,
            c.max_queue_delay,
            &c.preferred_batch_sizes,
        )
        .map(|t| t.items)
    }

    fn config(max: usize, delay_ms: u64, preferred: Vec<usize>) -> BatchConfig {
        BatchConfig {
            instances: 1,
            max_batch_size: max,
            max_queue_delay: Duration::from_millis(delay_ms),
            preferred_batch_sizes: preferred,
            decode_workers: 1,
            max_queue: 10,
            limits: DecodeLimits::default(),
            latency_target: None,
            record_batches: false,
            length_grouping: None,
        }
    }

    fn grouping(max_tokens: usize, run_overhead: usize) -> LengthGrouping {
        LengthGrouping {
            window: 64,
            max_tokens,
            run_overhead,
        }
    }

    #[test]
    fn length_grouping_keeps_a_long_item_away_from_short_ones() {
        let group: Vec<usize> = (10..16).collect();
        // Five short texts and one long one, the long one arriving second.
        let lengths = [8, 200, 9, 7, 8, 10];
        let runs = split_by_length(&group, &lengths, 32, grouping(4096, 32));
        assert_eq!(runs, vec![vec![13, 10, 14, 12, 15], vec![11]]);
        // With a large run overhead one run is cheaper.
        let runs = split_by_length(&group, &lengths, 32, grouping(4096, 10_000));
        assert_eq!(runs.len(), 1);
        // The token budget caps a run: 4 items of 10 fit in 40 positions, not 5.
        let runs = split_by_length(&group, &[10; 6], 32, grouping(40, 10_000));
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 2]);
        // So does the item cap; and an item over the budget still runs, alone.
        let runs = split_by_length(&group, &[1; 6], 4, grouping(4096, 10_000));
        assert!(runs.iter().all(|r| r.len() <= 4));
        assert_eq!(
            split_by_length(&[0], &[999], 4, grouping(10, 0)),
            vec![vec![0]]
        );
        // Every item is in exactly one run.
        let mut all: Vec<usize> = split_by_length(&group, &lengths, 3, grouping(64, 5)).concat();
        all.sort_unstable();
        assert_eq!(all, group);
    }

    #[test]
    fn the_run_holding_the_oldest_item_is_taken_first() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // A long text arrived first: it goes alone, and the short ones stay in the pool.
        let queued = [at(1), at(0), at(2), at(3)];
        let lengths = [8, 200, 9, 7];
        assert_eq!(pick_run(&queued, &lengths, 32, grouping(4096, 32)), vec![1]);
        // A short text arrived first: the short ones go together, the long one stays.
        let queued = [at(0), at(1), at(2), at(3)];
        let mut run = pick_run(&queued, &lengths, 32, grouping(4096, 32));
        run.sort_unstable();
        assert_eq!(run, vec![0, 2, 3]);
        // The item cap holds, and the oldest item is always in the run.
        let queued: Vec<Instant> = (0..10).rev().map(at).collect();
        let run = pick_run(&queued, &[5; 10], 4, grouping(4096, 32));
        assert!(!run.is_empty() && run.len() <= 4, "{run:?}");
        assert!(run.contains(&9));
        assert!(pick_run(&[], &[], 4, grouping(4096, 32)).is_empty());
    }

    #[test]
    fn a_batch_takes_what_is_waiting_up_to_the_maximum() {
        let (tx, rx) = unbounded();
        for _ in 0..5 {
            tx.send(item(Instant::now())).unwrap();
        }
        let c = config(4, 0, vec![]);
        assert_eq!(take(&rx, &c).unwrap().len(), 4);
        assert_eq!(take(&rx, &c).unwrap().len(), 1);
        drop(tx);
        assert!(take(&rx, &c).is_none());
    }

    #[test]
    fn a_batch_waits_up_to_the_delay_for_more() {
        let (tx, rx) = unbounded();
        tx.send(item(Instant::now())).unwrap();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(item(Instant::now())).unwrap();
            tx
        });
        let t0 = Instant::now();
        let batch = take(&rx, &config(2, 5000, vec![])).unwrap();
        assert_eq!(batch.len(), 2, "the second item arrived within the delay");
        // A full batch goes without waiting out the delay.
        assert!(t0.elapsed() < Duration::from_millis(4000));
        drop(sender.join());
    }

    #[test]
    fn a_preferred_size_goes_at_once_when_nothing_more_waits() {
        let (tx, rx) = unbounded();
        tx.send(item(Instant::now())).unwrap();
        tx.send(item(Instant::now())).unwrap();
        let t0 = Instant::now();
        let batch = take(&rx, &config(8, 2000, vec![2])).unwrap();
        assert_eq!(batch.len(), 2);
        assert!(
            t0.elapsed() < Duration::from_millis(1000),
            "did not wait out the delay"
        );
        drop(tx);
    }
}
