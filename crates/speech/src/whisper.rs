//! Whisper-style encoder–decoder models: the encoder batched across requests, greedy decoding
//! with the self-attention cache, and continuous batching of decoding steps.
//!
//! Threads hold the sessions. Each encoder thread (one by default, `BatchOptions::encoders`,
//! its sessions with an intra-op thread per core, `Threads::encoder`) takes every log-mel
//! waiting on the shared queue (up to the batch cap), runs the encoder and the
//! cross-attention K/V graph once on them, and hands each request's cross K/V to the decoder
//! thread. The decoder thread keeps one running batch:
//! between two steps it lets waiting requests join (their 2-token prompt is run as one batch
//! of its own, then each row is left-padded to the running batch's past length), runs one
//! step for every row, and lets finished rows leave. Rows at different lengths share a step
//! because the decoder graph is given explicit positions and an attention bias
//! (`singlepoint_graph::decoder::explicit_positions`): `-inf` over each row's padding.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use singlepoint_backend::{BackendKind, Engine, EngineOptions, Session};
use singlepoint_core::{AnyTensor, Buffer, Dim, ModelDigest};

use crate::SpeechError;

/// `<|startoftranscript|>`, `<|notimestamps|>` and `<|endoftext|>` of the English-only vocabulary.
pub const SOT: i64 = 50257;
pub const NO_TIMESTAMPS: i64 = 50362;
pub const EOT: usize = 50256;
/// Generated tokens per window at most (the prompt's 2 + 224 stay within the 448 positions).
pub const MAX_NEW: usize = 224;

/// The files of a Whisper model.
pub struct WhisperFiles {
    pub encoder: Arc<[u8]>,
    pub cross_kv: Arc<[u8]>,
    pub decoder: Arc<[u8]>,
    pub tokenizer: Vec<u8>,
    /// The package's `config.json`: `suppress_ids`, `suppress_ids_begin`.
    pub config: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct Config {
    suppress_ids: Vec<usize>,
    suppress_ids_begin: Vec<usize>,
}

/// A loaded Whisper model: three engines, the tokenizer and the suppression rules.
pub struct WhisperModel {
    encoder: Arc<dyn Engine>,
    cross: Arc<dyn Engine>,
    decoder: Arc<dyn Engine>,
    tokenizer: tokenizers::Tokenizer,
    suppress: Vec<usize>,
    suppress_begin: Vec<usize>,
    heads: usize,
    head_dim: usize,
    /// BLAKE3 over every file: what cache keys bind.
    pub digest: ModelDigest,
}

fn model_error(what: impl std::fmt::Display) -> SpeechError {
    SpeechError::Model(what.to_string())
}

impl WhisperModel {
    /// Loads the three graphs on ONNX Runtime (the decoder with explicit positions): the
    /// encoder's and cross K/V's sessions with `threads.encoder` intra-op threads each, the
    /// decoder's with `threads.decoder`.
    pub fn load(files: &WhisperFiles, threads: Threads) -> Result<WhisperModel, SpeechError> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"singlepoint-whisper-v1\0");
        for part in [
            &files.encoder[..],
            &files.cross_kv[..],
            &files.decoder[..],
            &files.tokenizer[..],
            &files.config[..],
        ] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let digest = ModelDigest(*hasher.finalize().as_bytes());
        let config: Config = serde_json::from_slice(&files.config)
            .map_err(|e| model_error(format!("config.json: {e}")))?;
        let tokenizer = tokenizers::Tokenizer::from_bytes(&files.tokenizer)
            .map_err(|e| model_error(format!("tokenizer.json: {e}")))?;
        let graph = singlepoint_graph::decode(&files.decoder)
            .map_err(|e| model_error(format!("the decoder: {e}")))?;
        let graph = singlepoint_graph::decoder::explicit_positions(&graph)
            .map_err(|e| model_error(format!("the decoder cannot batch across lengths: {e}")))?;
        let decoder_bytes: Arc<[u8]> = singlepoint_graph::encode(&graph).into();
        let load = |bytes: &Arc<[u8]>, threads: usize| {
            let options = EngineOptions {
                threads_per_session: threads.max(1),
                spin_wait: false,
            };
            singlepoint_backend::load(BackendKind::Ort, bytes.clone(), options)
        };
        let encoder = load(&files.encoder, threads.encoder)?;
        let cross = load(&files.cross_kv, threads.encoder)?;
        let decoder = load(&decoder_bytes, threads.decoder)?;
        let past = decoder
            .inputs()
            .iter()
            .find(|s| s.name == "past_self_k_0")
            .ok_or_else(|| model_error("the decoder has no input `past_self_k_0`"))?;
        let (heads, head_dim) = match past.shape[..] {
            [_, Dim::Fixed(h), _, Dim::Fixed(d)] => (h, d),
            _ => {
                return Err(model_error(format!(
                    "`past_self_k_0` is {}, not [batch, heads, past, head_dim]",
                    past.shape_string()
                )))
            }
        };
        for c in cross.outputs() {
            if !decoder.inputs().iter().any(|s| s.name == c.name) {
                return Err(model_error(format!(
                    "the decoder takes no `{}`, which the cross K/V graph makes",
                    c.name
                )));
            }
        }
        Ok(WhisperModel {
            encoder,
            cross,
            decoder,
            tokenizer,
            suppress: config.suppress_ids,
            suppress_begin: config.suppress_ids_begin,
            heads,
            head_dim,
            digest,
        })
    }

    /// The text of generated token ids (special tokens skipped, trimmed).
    pub fn text(&self, ids: &[u32]) -> Result<String, SpeechError> {
        let text = self
            .tokenizer
            .decode(ids, true)
            .map_err(|e| model_error(format!("detokenising: {e}")))?;
        Ok(text.trim().to_string())
    }

    /// The greedy choice at generated position `step` (Whisper's suppression rules; the first
    /// index wins a tie).
    fn pick(&self, logits: &mut [f32], step: usize) -> usize {
        for &i in &self.suppress {
            if let Some(l) = logits.get_mut(i) {
                *l = f32::NEG_INFINITY;
            }
        }
        if logits.len() > EOT + 1 {
            logits[EOT + 1..].fill(f32::NEG_INFINITY);
        }
        if step == 0 {
            for &i in &self.suppress_begin {
                if let Some(l) = logits.get_mut(i) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        best
    }
}

/// Intra-op threads of the sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threads {
    /// Of each encoder thread's encoder and cross K/V sessions.
    pub encoder: usize,
    /// Of the decoder's session.
    pub decoder: usize,
}

/// One encoder thread whose sessions use every core, and a one-thread decoder: on 2 cores it
/// gave 1.05x the throughput of an encoder thread per core with one intra-op thread each
/// (8 files at once, 6 % fewer CPU-seconds; bench/transcribe_layouts.py) and a lower
/// single-file latency, since one window's encoder run uses every core.
impl Default for Threads {
    fn default() -> Self {
        Threads {
            encoder: std::thread::available_parallelism().map_or(1, |n| n.get()),
            decoder: 1,
        }
    }
}

/// How the transcriber batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOptions {
    /// Log-mels encoded in one run at most.
    pub max_encode_batch: usize,
    /// Encoder threads, each with its own sessions, taking log-mels from one queue (one by
    /// default, its sessions using every core: see [`Threads`]).
    pub encoders: usize,
    /// Rows of the running decode batch at most.
    pub max_decode_batch: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_encode_batch: 4,
            encoders: 1,
            max_decode_batch: 16,
        }
    }
}

/// What the transcriber has run.
#[derive(Default)]
pub struct Counters {
    pub encoder_runs: AtomicU64,
    pub encoded: AtomicU64,
    pub decoder_runs: AtomicU64,
    /// Rows summed over decoder runs (mean batch = rows / runs).
    pub decoder_rows: AtomicU64,
    /// Requests that joined a batch that was already decoding.
    pub joined_running: AtomicU64,
    pub max_decode_rows: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunStats {
    pub encoder_runs: u64,
    pub encoded: u64,
    pub decoder_runs: u64,
    pub decoder_rows: u64,
    pub joined_running: u64,
    pub max_decode_rows: u64,
}

impl Counters {
    pub fn snapshot(&self) -> RunStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RunStats {
            encoder_runs: g(&self.encoder_runs),
            encoded: g(&self.encoded),
            decoder_runs: g(&self.decoder_runs),
            decoder_rows: g(&self.decoder_rows),
            joined_running: g(&self.joined_running),
            max_decode_rows: g(&self.max_decode_rows),
        }
    }
}

type Reply = Sender<Result<Vec<u32>, SpeechError>>;

/// A log-mel's cross-attention K/V, ready to decode ([`Transcriber::decode`]).
pub struct Encoded {
    cross: Vec<Vec<f32>>,
}

/// What the encoder thread does with a request's cross K/V.
enum Then {
    Decode(Reply),
    Return(Sender<Result<Encoded, SpeechError>>),
}

impl Then {
    fn fail(self, e: SpeechError) {
        match self {
            Then::Decode(r) => {
                let _ = r.send(Err(e));
            }
            Then::Return(r) => {
                let _ = r.send(Err(e));
            }
        }
    }
}

struct EncodeJob {
    mel: Vec<f32>,
    then: Then,
}

struct DecodeJob {
    /// One row of each cross K/V tensor, in the decoder's cross-input order.
    cross: Vec<Vec<f32>>,
    reply: Reply,
}

/// The running transcriber: an encoder thread and a decoder thread over one model.
pub struct Transcriber {
    model: Arc<WhisperModel>,
    jobs: Option<Sender<EncodeJob>>,
    decodes: Option<Sender<DecodeJob>>,
    threads: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Transcriber {
    pub fn start(
        model: Arc<WhisperModel>,
        options: BatchOptions,
    ) -> Result<Transcriber, SpeechError> {
        let counters = Arc::new(Counters::default());
        let (jobs, encode_rx) = crossbeam_channel::unbounded::<EncodeJob>();
        let (decode_tx, decode_rx) = crossbeam_channel::unbounded::<DecodeJob>();
        let decoder = model.decoder.session()?;
        let mut threads = Vec::new();
        for i in 0..options.encoders.max(1) {
            let encoder = model.encoder.session()?;
            let cross = model.cross.session()?;
            let (counters, encode_rx, decode_tx) =
                (counters.clone(), encode_rx.clone(), decode_tx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("whisper-encoder-{i}"))
                    .spawn(move || {
                        encode_loop(encoder, cross, &encode_rx, &decode_tx, options, &counters)
                    })
                    .map_err(|e| model_error(format!("cannot start a thread: {e}")))?,
            );
        }
        drop(encode_rx);
        {
            let (model, counters) = (model.clone(), counters.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("whisper-decoder".into())
                    .spawn(move || {
                        let mut d = Decoder::new(&model, decoder, &counters);
                        d.run(&decode_rx, options.max_decode_batch.max(1));
                    })
                    .map_err(|e| model_error(format!("cannot start a thread: {e}")))?,
            );
        }
        Ok(Transcriber {
            model,
            jobs: Some(jobs),
            decodes: Some(decode_tx),
            threads,
            counters,
        })
    }

    pub fn model(&self) -> &Arc<WhisperModel> {
        &self.model
    }

    /// Queues one 30-s log-mel (`[80, 3000]`); the receiver gets its generated token ids.
    pub fn submit(&self, mel: Vec<f32>) -> Receiver<Result<Vec<u32>, SpeechError>> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.encode_job(mel, Then::Decode(reply));
        rx
    }

    /// Runs only the encoder and the cross K/V graph on a log-mel (batched with whatever else
    /// is waiting); [`Transcriber::decode`] decodes the result later.
    pub fn encode(&self, mel: Vec<f32>) -> Receiver<Result<Encoded, SpeechError>> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.encode_job(mel, Then::Return(reply));
        rx
    }

    /// Decodes encoded audio: it joins the running decode batch at the next step.
    pub fn decode(&self, encoded: Encoded) -> Receiver<Result<Vec<u32>, SpeechError>> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        let job = DecodeJob {
            cross: encoded.cross,
            reply,
        };
        match &self.decodes {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    let _ = e.0.reply.send(Err(SpeechError::Stopped));
                }
            }
            None => {
                let _ = job.reply.send(Err(SpeechError::Stopped));
            }
        }
        rx
    }

    fn encode_job(&self, mel: Vec<f32>, then: Then) {
        let job = EncodeJob { mel, then };
        match &self.jobs {
            Some(jobs) => {
                if let Err(e) = jobs.send(job) {
                    e.0.then.fail(SpeechError::Stopped);
                }
            }
            None => job.then.fail(SpeechError::Stopped),
        }
    }

    pub fn stats(&self) -> RunStats {
        self.counters.snapshot()
    }
}

impl Drop for Transcriber {
    fn drop(&mut self) {
        self.jobs = None;
        self.decodes = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn f32_tensor(shape: Vec<usize>, data: Vec<f32>) -> Result<AnyTensor, SpeechError> {
    AnyTensor::new(shape, Buffer::F32(data)).map_err(|e| model_error(e.to_string()))
}

fn i64_tensor(shape: Vec<usize>, data: Vec<i64>) -> Result<AnyTensor, SpeechError> {
    AnyTensor::new(shape, Buffer::I64(data)).map_err(|e| model_error(e.to_string()))
}

fn into_f32(t: AnyTensor) -> Result<(Vec<usize>, Vec<f32>), SpeechError> {
    let shape = t.shape().to_vec();
    match t.into_data() {
        Buffer::F32(v) => Ok((shape, v)),
        other => Err(model_error(format!(
            "an output is {}, not float32",
            other.dtype()
        ))),
    }
}

fn encode_loop(
    mut encoder: Box<dyn Session>,
    mut cross: Box<dyn Session>,
    jobs: &Receiver<EncodeJob>,
    decode: &Sender<DecodeJob>,
    options: BatchOptions,
    counters: &Counters,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < options.max_encode_batch.max(1) {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let n = batch.len();
        let mut run = |batch: &mut Vec<EncodeJob>| -> Result<Vec<Vec<f32>>, SpeechError> {
            let per = batch[0].mel.len();
            if batch.iter().any(|j| j.mel.len() != per) || !per.is_multiple_of(3000) {
                return Err(model_error("log-mels of different sizes in one batch"));
            }
            let mut mels = Vec::with_capacity(per * batch.len());
            for j in batch.iter_mut() {
                mels.append(&mut j.mel);
            }
            let mel = f32_tensor(vec![batch.len(), per / 3000, 3000], mels)?;
            let features = encoder.run_all(&[mel])?;
            counters.encoder_runs.fetch_add(1, Ordering::Relaxed);
            counters
                .encoded
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let features = features
                .into_iter()
                .next()
                .ok_or_else(|| model_error("the encoder gave no output"))?;
            let outs = cross.run_all(&[features])?;
            outs.into_iter()
                .map(|t| into_f32(t).map(|(_, v)| v))
                .collect()
        };
        match run(&mut batch) {
            Ok(outs) => {
                // Rows of each cross output, reordered into the decoder's input order later
                // by name: keep the cross graph's order, which `Decoder` maps.
                let per_row: Vec<usize> = outs.iter().map(|v| v.len() / n).collect();
                for (b, job) in batch.into_iter().enumerate() {
                    let rows = outs
                        .iter()
                        .zip(&per_row)
                        .map(|(v, &len)| v[b * len..(b + 1) * len].to_vec())
                        .collect();
                    match job.then {
                        Then::Decode(reply) => {
                            let _ = decode.send(DecodeJob { cross: rows, reply });
                        }
                        Then::Return(reply) => {
                            let _ = reply.send(Ok(Encoded { cross: rows }));
                        }
                    }
                }
            }
            Err(e) => {
                for job in batch {
                    job.then.fail(e.clone());
                }
            }
        }
    }
}

/// One sequence being decoded.
struct Row {
    generated: Vec<u32>,
    /// Positions in its self-attention cache.
    len: usize,
    reply: Reply,
    done: bool,
}

/// The decoder thread's state: the running batch's rows and tensors, in the decoder's input
/// order (`slots`), so that a step moves only the tensors that change.
struct Decoder<'m> {
    model: &'m WhisperModel,
    session: Box<dyn Session>,
    counters: &'m Counters,
    rows: Vec<Row>,
    /// The batch's past length (rows shorter than it are left-padded).
    past: usize,
    /// Input slots: tokens, positions, bias, the past K/V (per layer) and the cross K/V.
    tokens: usize,
    positions: usize,
    bias: usize,
    past_slots: Vec<usize>,
    /// Decoder slot of each cross K/V graph output, in that graph's order.
    cross_slots: Vec<usize>,
    /// Decoder output index of each past slot's `present_*`.
    present_out: Vec<usize>,
    logits_out: usize,
    inputs: Vec<AnyTensor>,
}

impl<'m> Decoder<'m> {
    fn new(model: &'m WhisperModel, session: Box<dyn Session>, counters: &'m Counters) -> Self {
        let specs = model.decoder.inputs();
        let slot = |name: &str| specs.iter().position(|s| s.name == name);
        let outs = model.decoder.outputs();
        let past_slots: Vec<usize> = (0..specs.len())
            .filter(|&i| specs[i].name.starts_with("past_"))
            .collect();
        let present_out = past_slots
            .iter()
            .map(|&i| {
                let name = specs[i].name.replacen("past_", "present_", 1);
                outs.iter()
                    .position(|o| o.name == name)
                    .unwrap_or(usize::MAX)
            })
            .collect();
        let cross_slots = model
            .cross
            .outputs()
            .iter()
            .map(|o| slot(&o.name).unwrap_or(usize::MAX))
            .collect();
        Decoder {
            model,
            session,
            counters,
            rows: Vec::new(),
            past: 0,
            tokens: slot("tokens").unwrap_or(usize::MAX),
            positions: slot(singlepoint_graph::decoder::POSITIONS).unwrap_or(usize::MAX),
            bias: slot(singlepoint_graph::decoder::SELF_BIAS).unwrap_or(usize::MAX),
            past_slots,
            cross_slots,
            present_out,
            logits_out: outs.iter().position(|o| o.name == "logits").unwrap_or(0),
            inputs: (0..specs.len()).map(|_| empty_f32()).collect(),
        }
    }

    fn slots_known(&self) -> Result<(), SpeechError> {
        let all = [self.tokens, self.positions, self.bias]
            .into_iter()
            .chain(self.cross_slots.iter().copied())
            .chain(self.present_out.iter().copied());
        if all.into_iter().any(|s| s == usize::MAX) {
            return Err(model_error(
                "the decoder's inputs and outputs are not tokens, positions, self_bias, past_*/present_* and the cross K/V",
            ));
        }
        Ok(())
    }

    fn run(&mut self, jobs: &Receiver<DecodeJob>, max_rows: usize) {
        if let Err(e) = self.slots_known() {
            while let Ok(j) = jobs.recv() {
                let _ = j.reply.send(Err(e.clone()));
            }
            return;
        }
        loop {
            let mut joiners = Vec::new();
            if self.rows.is_empty() {
                match jobs.recv() {
                    Ok(j) => joiners.push(j),
                    Err(_) => return,
                }
            }
            while self.rows.len() + joiners.len() < max_rows {
                match jobs.try_recv() {
                    Ok(j) => joiners.push(j),
                    Err(_) => break,
                }
            }
            if !joiners.is_empty() {
                if !self.rows.is_empty() {
                    self.counters
                        .joined_running
                        .fetch_add(joiners.len() as u64, Ordering::Relaxed);
                }
                if let Err(e) = self.join(joiners) {
                    self.fail_all(e);
                    continue;
                }
                self.leave();
            }
            if !self.rows.is_empty() {
                if let Err(e) = self.step() {
                    self.fail_all(e);
                    continue;
                }
            }
            self.leave();
        }
    }

    fn fail_all(&mut self, e: SpeechError) {
        for r in self.rows.drain(..) {
            let _ = r.reply.send(Err(e.clone()));
        }
        self.past = 0;
    }

    fn row_block(&self, past: usize) -> usize {
        self.model.heads * past * self.model.head_dim
    }

    /// Runs the joiners' prompt as one batch, then appends them to the running batch.
    fn join(&mut self, joiners: Vec<DecodeJob>) -> Result<(), SpeechError> {
        let k = joiners.len();
        let (h, d) = (self.model.heads, self.model.head_dim);
        // The prompt run's inputs, in the decoder's slot order.
        let mut crosses: Vec<Vec<f32>> = vec![Vec::new(); self.cross_slots.len()];
        let mut replies = Vec::with_capacity(k);
        for j in joiners {
            if j.cross.len() != crosses.len() {
                let _ = j
                    .reply
                    .send(Err(model_error("cross K/V of the wrong arity")));
                continue;
            }
            for (c, row) in crosses.iter_mut().zip(j.cross) {
                c.extend_from_slice(&row);
            }
            replies.push(j.reply);
        }
        let k = replies.len();
        if k == 0 {
            return Ok(());
        }
        let prompt = [SOT, NO_TIMESTAMPS];
        let t = prompt.len();
        let specs = self.model.decoder.inputs();
        let mut inputs: Vec<AnyTensor> = Vec::with_capacity(specs.len());
        let mut cross_tensors: Vec<Option<Vec<f32>>> = vec![None; specs.len()];
        for (c, &s) in crosses.into_iter().zip(&self.cross_slots) {
            cross_tensors[s] = Some(c);
        }
        for (i, spec) in specs.iter().enumerate() {
            let tensor = if i == self.tokens {
                i64_tensor(vec![k, t], prompt.repeat(k))?
            } else if i == self.positions {
                i64_tensor(vec![k, t], (0..k).flat_map(|_| 0..t as i64).collect())?
            } else if i == self.bias {
                let mut bias = Vec::with_capacity(k * t * t);
                for _ in 0..k {
                    for q in 0..t {
                        bias.extend((0..t).map(|p| if p <= q { 0.0 } else { f32::NEG_INFINITY }));
                    }
                }
                f32_tensor(vec![k, 1, t, t], bias)?
            } else if let Some(c) = cross_tensors[i].take() {
                let per = c.len() / k;
                f32_tensor(vec![k, h, per / (h * d), d], c)?
            } else if spec.name.starts_with("past_") {
                f32_tensor(vec![k, h, 0, d], Vec::new())?
            } else {
                return Err(model_error(format!(
                    "no value for decoder input `{}`",
                    spec.name
                )));
            };
            inputs.push(tensor);
        }
        let outputs = self.session.run_all(&inputs)?;
        self.counters.decoder_runs.fetch_add(1, Ordering::Relaxed);
        self.counters
            .decoder_rows
            .fetch_add(k as u64, Ordering::Relaxed);
        let mut outputs: Vec<Option<AnyTensor>> = outputs.into_iter().map(Some).collect();
        let (lshape, mut logits) = into_f32(
            outputs[self.logits_out]
                .take()
                .ok_or_else(|| model_error("no logits"))?,
        )?;
        let vocab = *lshape.last().unwrap_or(&0);
        let mut new_rows = Vec::with_capacity(k);
        for (b, reply) in replies.into_iter().enumerate() {
            let at = (b * t + t - 1) * vocab;
            let next = self.model.pick(&mut logits[at..at + vocab], 0);
            let mut row = Row {
                generated: Vec::new(),
                len: t,
                reply,
                done: false,
            };
            row.push(next);
            new_rows.push(row);
        }
        // Append the joiners' caches, left-padded to the batch's past length.
        let past = self.past.max(t);
        if past > self.past && !self.rows.is_empty() {
            self.repad(past)?;
        }
        let was = self.rows.len();
        for (n, &slot) in self.past_slots.clone().iter().enumerate() {
            let (_, present) = into_f32(
                outputs[self.present_out[n]]
                    .take()
                    .ok_or_else(|| model_error("a present K/V output is missing"))?,
            )?;
            let mut data = if was == 0 {
                Vec::new()
            } else {
                into_f32(std::mem::replace(&mut self.inputs[slot], empty_f32()))?.1
            };
            data.reserve(k * h * past * d);
            for b in 0..k {
                for head in 0..h {
                    data.resize(data.len() + (past - t) * d, 0.0);
                    let at = (b * h + head) * t * d;
                    data.extend_from_slice(&present[at..at + t * d]);
                }
            }
            self.inputs[slot] = f32_tensor(vec![was + k, h, past, d], data)?;
        }
        for &slot in &self.cross_slots.clone() {
            let (jshape, jdata) = into_f32(std::mem::replace(&mut inputs[slot], empty_f32()))?;
            let mut data = if was == 0 {
                Vec::new()
            } else {
                into_f32(std::mem::replace(&mut self.inputs[slot], empty_f32()))?.1
            };
            data.extend_from_slice(&jdata);
            let mut shape = jshape;
            shape[0] = was + k;
            self.inputs[slot] = f32_tensor(shape, data)?;
        }
        self.past = past;
        self.rows.extend(new_rows);
        let rows = self.rows.len() as u64;
        self.counters
            .max_decode_rows
            .fetch_max(rows, Ordering::Relaxed);
        Ok(())
    }

    /// Left-pads every row's cache to `past` positions.
    fn repad(&mut self, past: usize) -> Result<(), SpeechError> {
        let (h, d, b) = (self.model.heads, self.model.head_dim, self.rows.len());
        let old = self.past;
        for &slot in &self.past_slots.clone() {
            let (_, data) = into_f32(std::mem::replace(&mut self.inputs[slot], empty_f32()))?;
            let mut out = Vec::with_capacity(b * h * past * d);
            for bh in 0..b * h {
                out.resize(out.len() + (past - old) * d, 0.0);
                out.extend_from_slice(&data[bh * old * d..(bh + 1) * old * d]);
            }
            self.inputs[slot] = f32_tensor(vec![b, h, past, d], out)?;
        }
        self.past = past;
        Ok(())
    }

    /// One decoding step for every row (finished rows, which are about to leave, are not in
    /// the batch: `leave` runs before the next step).
    fn step(&mut self) -> Result<(), SpeechError> {
        let b = self.rows.len();
        let p = self.past;
        let tokens = self
            .rows
            .iter()
            .map(|r| *r.generated.last().expect("a row has a token") as i64)
            .collect();
        self.inputs[self.tokens] = i64_tensor(vec![b, 1], tokens)?;
        self.inputs[self.positions] =
            i64_tensor(vec![b, 1], self.rows.iter().map(|r| r.len as i64).collect())?;
        let mut bias = Vec::with_capacity(b * (p + 1));
        for r in &self.rows {
            let pad = p - r.len;
            bias.extend((0..=p).map(|i| if i < pad { f32::NEG_INFINITY } else { 0.0 }));
        }
        self.inputs[self.bias] = f32_tensor(vec![b, 1, 1, p + 1], bias)?;
        let outputs = self.session.run_all(&self.inputs)?;
        self.counters.decoder_runs.fetch_add(1, Ordering::Relaxed);
        self.counters
            .decoder_rows
            .fetch_add(b as u64, Ordering::Relaxed);
        let mut outputs: Vec<Option<AnyTensor>> = outputs.into_iter().map(Some).collect();
        for (n, &slot) in self.past_slots.clone().iter().enumerate() {
            self.inputs[slot] = outputs[self.present_out[n]]
                .take()
                .ok_or_else(|| model_error("a present K/V output is missing"))?;
        }
        self.past = p + 1;
        let (lshape, mut logits) = into_f32(
            outputs[self.logits_out]
                .take()
                .ok_or_else(|| model_error("no logits"))?,
        )?;
        let vocab = *lshape.last().unwrap_or(&0);
        for (i, row) in self.rows.iter_mut().enumerate() {
            row.len += 1;
            let step = row.generated.len();
            let next = self
                .model
                .pick(&mut logits[i * vocab..(i + 1) * vocab], step);
            row.push(next);
        }
        Ok(())
    }

    /// Finished rows answer and leave the batch; the cache is trimmed to the longest row left.
    fn leave(&mut self) {
        if self.rows.iter().all(|r| !r.done) {
            return;
        }
        let keep: Vec<bool> = self.rows.iter().map(|r| !r.done).collect();
        let left = keep.iter().filter(|&&k| k).count();
        let longest = self
            .rows
            .iter()
            .filter(|r| !r.done)
            .map(|r| r.len)
            .max()
            .unwrap_or(0);
        let (h, d, p) = (self.model.heads, self.model.head_dim, self.past);
        let block = self.row_block(p);
        let result = (|| -> Result<(), SpeechError> {
            for &slot in &self.past_slots.clone() {
                let (_, data) = into_f32(std::mem::replace(&mut self.inputs[slot], empty_f32()))?;
                let mut out = Vec::with_capacity(left * h * longest * d);
                for (b, _) in keep.iter().enumerate().filter(|(_, &k)| k) {
                    for head in 0..h {
                        let end = b * block + (head + 1) * p * d;
                        out.extend_from_slice(&data[end - longest * d..end]);
                    }
                }
                self.inputs[slot] = f32_tensor(vec![left, h, longest, d], out)?;
            }
            for &slot in &self.cross_slots.clone() {
                let (mut shape, data) =
                    into_f32(std::mem::replace(&mut self.inputs[slot], empty_f32()))?;
                let per = data.len() / keep.len().max(1);
                let mut out = Vec::with_capacity(left * per);
                for (b, _) in keep.iter().enumerate().filter(|(_, &k)| k) {
                    out.extend_from_slice(&data[b * per..(b + 1) * per]);
                }
                shape[0] = left;
                self.inputs[slot] = f32_tensor(shape, out)?;
            }
            Ok(())
        })();
        let mut rows = Vec::with_capacity(left);
        for r in self.rows.drain(..) {
            if r.done {
                let _ = r.reply.send(Ok(r.generated));
            } else {
                rows.push(r);
            }
        }
        self.rows = rows;
        self.past = if self.rows.is_empty() { 0 } else { longest };
        if let Err(e) = result {
            self.fail_all(e);
        }
    }
}

fn empty_f32() -> AnyTensor {
    AnyTensor::new(vec![0], Buffer::F32(Vec::new())).expect("an empty tensor")
}

impl Row {
    fn push(&mut self, token: usize) {
        if token == EOT {
            self.done = true;
        } else {
            self.generated.push(token as u32);
            if self.generated.len() >= MAX_NEW {
                self.done = true;
            }
        }
    }
}
