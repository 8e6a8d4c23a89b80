//! The engine seam. An [`Engine`] is a model compiled by one inference engine; it hands out
//! [`Session`]s, each owned by one worker thread (ONNX Runtime's `Session::run` takes
//! `&mut self`). Two engines implement it, each behind a cargo feature:
//!
//! - `ort`: ONNX Runtime, loaded at run time from a pinned release (see [`ort_runtime`]), the
//!   fast engine;
//! - `tract`: Sonos' pure-Rust engine, one fixed-shape plan per batch size, used when ONNX
//!   Runtime is unavailable.
//!
//! Both take ONNX bytes and `f32` tensors from `singlepoint-core`; neither knows about images,
//! labels or files other than the ONNX Runtime library itself.

#[cfg(feature = "ort")]
mod onnxruntime;
#[cfg(feature = "ort")]
pub mod ort_runtime;
#[cfg(feature = "tract")]
mod tract;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use singlepoint_core::{Tensor, TensorSpec};

/// Which engine runs a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendKind {
    Ort,
    Tract,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Ort => "ort",
            BackendKind::Tract => "tract",
        }
    }

    /// Whether this binary was built with the engine.
    pub fn compiled_in(self) -> bool {
        match self {
            BackendKind::Ort => cfg!(feature = "ort"),
            BackendKind::Tract => cfg!(feature = "tract"),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ort" | "onnxruntime" => Ok(BackendKind::Ort),
            "tract" => Ok(BackendKind::Tract),
            other => Err(format!(
                "unknown backend `{other}`; expected `ort` or `tract`"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the `{0}` engine is not compiled into this binary")]
    NotCompiled(BackendKind),
    #[error("ONNX Runtime is not available: {0}")]
    RuntimeUnavailable(String),
    #[error("{engine} cannot load the model: {reason}")]
    Load { engine: BackendKind, reason: String },
    #[error("{engine} failed to run the model: {reason}")]
    Run { engine: BackendKind, reason: String },
    #[error("input tensor has shape {shape:?}, the model takes {expected}")]
    InputShape { shape: Vec<usize>, expected: String },
}

/// How an engine should run sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// Threads each session may use for one run (intra-op parallelism).
    pub threads_per_session: usize,
    /// Let a session's idle pool threads spin between operators (ONNX Runtime's default).
    /// Faster at batch 1 on several threads, but spinning threads burn the cores that decoding
    /// and other instances need, and bill idle time; off unless asked for.
    pub spin_wait: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads_per_session: 1,
            spin_wait: false,
        }
    }
}

/// A model compiled by one engine. Cheap to share; hands out one [`Session`] per worker.
pub trait Engine: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// The model's single input as the engine sees it.
    fn input(&self) -> &TensorSpec;
    /// The model's first output as the engine sees it; sessions return this one.
    fn output(&self) -> &TensorSpec;
    fn session(&self) -> Result<Box<dyn Session>, BackendError>;
}

/// One worker's handle on a compiled model.
pub trait Session: Send {
    /// Runs a batch (the first axis of `input`) and returns the engine's first output.
    fn run(&mut self, input: &Tensor) -> Result<Tensor, BackendError>;
}

/// Compiles `onnx` with the engine `kind`.
pub fn load(
    kind: BackendKind,
    onnx: Arc<[u8]>,
    options: EngineOptions,
) -> Result<Arc<dyn Engine>, BackendError> {
    match kind {
        #[cfg(feature = "ort")]
        BackendKind::Ort => Ok(Arc::new(onnxruntime::OrtEngine::load(onnx, options)?)),
        #[cfg(feature = "tract")]
        BackendKind::Tract => Ok(Arc::new(tract::TractEngine::load(&onnx, options)?)),
        #[allow(unreachable_patterns)]
        other => {
            let _ = (onnx, options);
            Err(BackendError::NotCompiled(other))
        }
    }
}

/// Checks an input tensor against the engine's declared input before running it, so that a
/// wrong shape is our error message rather than an engine's.
pub fn check_input(spec: &TensorSpec, input: &Tensor) -> Result<(), BackendError> {
    let shape = input.shape();
    let fits = shape.len() == spec.shape.len()
        && shape.iter().zip(&spec.shape).all(|(&n, d)| d.admits(n))
        && shape.first().is_some_and(|&b| b > 0);
    if fits {
        Ok(())
    } else {
        Err(BackendError::InputShape {
            shape: shape.to_vec(),
            expected: spec.shape_string(),
        })
    }
}
