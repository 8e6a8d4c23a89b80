//! The single data path of a `classify` run: inputs ([`inputs`]) → engine choice
//! ([`engine`]) → the bounded parallel pipeline ([`pipeline`]) that reads, decodes,
//! preprocesses, batches, runs the engine and postprocesses, returning results in input order
//! with where the CPU time went.
//!
//! The cost meter ([`cost`]) prices every run in the design's terms.

pub mod cost;
pub mod cputime;
pub mod engine;
pub mod inputs;
pub mod pipeline;
pub mod tune;

pub use engine::{ensure_onnxruntime, load_engine, BackendChoice, LoadedEngine};
pub use inputs::{InputEntry, Inputs};
pub use pipeline::{AnswerSource, Classifier, ItemError, ItemResult, PipelineConfig, RunStats};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Model(#[from] singlepoint_model::ModelError),
    #[error(transparent)]
    Backend(#[from] singlepoint_backend::BackendError),
    #[error("`--{field}` {reason}")]
    Config { field: String, reason: String },
}
