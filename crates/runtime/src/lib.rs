//! The single point and what runs on it.
//!
//! - [`service`]: one model's path from an item to its answer — key → result cache →
//!   in-flight coalescing → admission → preprocessing → dynamic batcher → engine sessions →
//!   cache insert → every waiter. Every front-end drives it: `serve` per request, `classify`
//!   through [`pipeline`], the tuner through `classify`'s path.
//! - [`task`]: the seam between the core and what is model-specific (how an input becomes the
//!   model's input, what the cache stores, how a row becomes an answer).
//! - [`pipeline`]: a bounded, ordered, streaming run over files ([`inputs`]) on the core.
//! - [`adaptive`]: the online batching controller; [`metrics`]: what the core counts.
//! - [`video`]: video files → frames (an ffmpeg child); [`reuse`]: the difference detector
//!   that lets near-identical frames reuse an answer.
//! - [`engine`]: engine choice and fallback; [`cost`]: the cost meter; [`tune`]: the search.

pub mod adaptive;
pub mod cost;
pub mod cputime;
pub mod detect;
pub mod engine;
pub mod inputs;
pub mod metrics;
pub mod pipeline;
pub mod reuse;
pub mod service;
pub mod task;
pub mod text_inputs;
pub mod tune;
pub mod video;

pub use engine::{
    default_batch_size, ensure_onnxruntime, load_engine, BackendChoice, LoadedEngine,
};
pub use inputs::{InputEntry, Inputs};
pub use pipeline::{
    AnswerSource, Classifier, FrameInfo, FrameOptions, ItemResult, MemoryItem, PipelineConfig,
    ReusedFrom, RunStats, TextAnswer, TextOptions,
};
pub use service::{
    Answer, BatchConfig, FailureKind, ItemError, ItemInput, LengthGrouping, ModelService, Source,
    Ticket,
};
pub use task::{ImageClassification, Task, TextTask};
pub use text_inputs::{TextEntry, TextLines};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Model(#[from] singlepoint_model::ModelError),
    #[error(transparent)]
    Backend(#[from] singlepoint_backend::BackendError),
    #[error("`--{field}` {reason}")]
    Config { field: String, reason: String },
}
