//! The engine seam. An [`Engine`] is a model compiled by one inference engine; it hands out
//! [`Session`]s, each owned by one worker thread (ONNX Runtime's `Session::run` takes
//! `&mut self`). Two engines implement it, each behind a cargo feature:
//!
//! - `ort`: ONNX Runtime, loaded at run time from a pinned release (see [`ort_runtime`]), the
//!   fast engine;
//! - `tract`: Sonos' pure-Rust engine, one fixed-shape plan per batch size, used when ONNX
//!   Runtime is unavailable.
//!
//! Both take ONNX bytes and tensors of any of the seam's element types ([`AnyTensor`]) from
//! `singlepoint-core`, for models with any number of inputs and outputs; neither knows about
//! images, labels or files other than the ONNX Runtime library itself.

#[cfg(feature = "ort")]
mod onnxruntime;
#[cfg(feature = "ort")]
pub mod ort_runtime;
#[cfg(feature = "tract")]
mod tract;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use singlepoint_core::{AnyTensor, Tensor, TensorSpec};

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
    #[error("input `{name}` has shape {shape:?}, the model takes {expected}")]
    InputShape {
        name: String,
        shape: Vec<usize>,
        expected: String,
    },
    #[error("input `{name}` is {actual}, the model takes {expected}")]
    InputType {
        name: String,
        actual: singlepoint_core::DType,
        expected: singlepoint_core::DType,
    },
    #[error("the model takes {expected} inputs, {actual} were given")]
    InputCount { expected: usize, actual: usize },
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
    /// The model's inputs as the engine sees them, in the model's order.
    fn inputs(&self) -> &[TensorSpec];
    /// The model's outputs as the engine sees them, in the model's order.
    fn outputs(&self) -> &[TensorSpec];
    fn session(&self) -> Result<Box<dyn Session>, BackendError>;

    /// The first input (an image model's only one).
    fn input(&self) -> &TensorSpec {
        &self.inputs()[0]
    }

    /// The first output (an image classifier's scores).
    fn output(&self) -> &TensorSpec {
        &self.outputs()[0]
    }
}

/// One worker's handle on a compiled model.
pub trait Session: Send {
    /// Runs a batch (the first axis of every input), one tensor per model input in the
    /// model's order, and returns every output in the model's order.
    fn run_all(&mut self, inputs: &[AnyTensor]) -> Result<Vec<AnyTensor>, BackendError>;

    /// The engine running this session.
    fn kind(&self) -> BackendKind;

    /// Runs a single-input `f32` model and returns its first output as `f32`.
    fn run(&mut self, input: &Tensor) -> Result<Tensor, BackendError> {
        let engine = self.kind();
        let outputs = self.run_all(&[AnyTensor::from(input.clone())])?;
        let first = outputs
            .into_iter()
            .next()
            .ok_or_else(|| BackendError::Run {
                engine,
                reason: "the model produced no output".into(),
            })?;
        let shape = first.shape().to_vec();
        match first.into_data() {
            singlepoint_core::Buffer::F32(data) => {
                Tensor::new(shape, data).map_err(|e| BackendError::Run {
                    engine,
                    reason: e.to_string(),
                })
            }
            other => Err(BackendError::Run {
                engine,
                reason: format!("the first output is {}, not float32", other.dtype()),
            }),
        }
    }
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

/// Checks input tensors against the engine's declared inputs before running them, so that a
/// wrong count, type or shape is our error message rather than an engine's.
pub fn check_inputs(specs: &[TensorSpec], inputs: &[AnyTensor]) -> Result<(), BackendError> {
    if specs.len() != inputs.len() {
        return Err(BackendError::InputCount {
            expected: specs.len(),
            actual: inputs.len(),
        });
    }
    for (spec, input) in specs.iter().zip(inputs) {
        if input.dtype() != spec.dtype {
            return Err(BackendError::InputType {
                name: spec.name.clone(),
                actual: input.dtype(),
                expected: spec.dtype,
            });
        }
        let shape = input.shape();
        let fits = shape.len() == spec.shape.len()
            && shape.iter().zip(&spec.shape).all(|(&n, d)| d.admits(n))
            // A scalar input (a sample rate) has no batch axis.
            && (spec.shape.is_empty() || shape.first().is_some_and(|&b| b > 0));
        if !fits {
            return Err(BackendError::InputShape {
                name: spec.name.clone(),
                shape: shape.to_vec(),
                expected: spec.shape_string(),
            });
        }
    }
    Ok(())
}
