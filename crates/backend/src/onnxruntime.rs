//! The ONNX Runtime engine, through the `ort` crate with `load-dynamic`.
//!
//! The library is loaded once per process from the path [`crate::ort_runtime::locate`] finds;
//! loading checks its version, so a wrong library is an error, not a crash. Each [`Session`]
//! is a separate `ort::Session` with its own intra-op thread pool of
//! [`EngineOptions::threads_per_session`] threads; spinning is off unless
//! [`EngineOptions::spin_wait`] asks for it, so idle pools do not burn the cores that decoding
//! needs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session as OrtSession;
use ort::value::{TensorElementType, TensorRef, ValueType};
use singlepoint_core::{DType, Dim, Tensor, TensorSpec};

use crate::{ort_runtime, BackendError, BackendKind, Engine, EngineOptions, Session};

static ENVIRONMENT: OnceLock<Result<(ort::environment::Environment, PathBuf), String>> =
    OnceLock::new();

/// Loads the ONNX Runtime library (once per process) and returns its environment.
fn environment() -> Result<&'static ort::environment::Environment, BackendError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let located = ort_runtime::locate()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "no library in `{}` and ORT_DYLIB_PATH is not set; run `singlepoint runtime fetch`",
                    ort_runtime::runtime_dir().display()
                )
            })?;
        let path = located.path().to_path_buf();
        let env = ort::init_from(&path)
            .map_err(|e| format!("cannot load `{}`: {e}", path.display()))?
            .with_name("singlepoint")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from `{}`: {e}", path.display()))?;
        Ok((env, path))
    });
    match result {
        Ok((env, _)) => Ok(env),
        Err(reason) => Err(BackendError::RuntimeUnavailable(reason.clone())),
    }
}

pub struct OrtEngine {
    onnx: Arc<[u8]>,
    options: EngineOptions,
    input: TensorSpec,
    output: TensorSpec,
    /// The session built while loading, handed to the first worker.
    first: Mutex<Option<OrtSession>>,
}

fn load_error(reason: impl ToString) -> BackendError {
    BackendError::Load {
        engine: BackendKind::Ort,
        reason: reason.to_string(),
    }
}

impl OrtEngine {
    pub fn load(onnx: Arc<[u8]>, options: EngineOptions) -> Result<OrtEngine, BackendError> {
        let session = build_session(&onnx, options)?;
        let [input] = session.inputs() else {
            return Err(load_error(format!(
                "the model has {} inputs; singlepoint runs single-input models",
                session.inputs().len()
            )));
        };
        let Some(output) = session.outputs().first() else {
            return Err(load_error("the model has no outputs"));
        };
        let input = spec(input.name(), input.dtype())?;
        let output = spec(output.name(), output.dtype())?;
        Ok(OrtEngine {
            onnx,
            options,
            input,
            output,
            first: Mutex::new(Some(session)),
        })
    }
}

fn build_session(onnx: &[u8], options: EngineOptions) -> Result<OrtSession, BackendError> {
    let env = environment()?;
    let mut builder = OrtSession::builder(env)
        .map_err(load_error)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(load_error)?
        .with_intra_threads(options.threads_per_session.max(1))
        .map_err(load_error)?
        .with_inter_threads(1)
        .map_err(load_error)?
        .with_intra_op_spinning(options.spin_wait)
        .map_err(load_error)?
        .with_inter_op_spinning(options.spin_wait)
        .map_err(load_error)?;
    builder.commit_from_memory(onnx).map_err(load_error)
}

fn spec(name: &str, value: &ValueType) -> Result<TensorSpec, BackendError> {
    let ValueType::Tensor { ty, shape, .. } = value else {
        return Err(load_error(format!("`{name}` is not a tensor ({value:?})")));
    };
    let dtype = match ty {
        TensorElementType::Float32 => DType::Float32,
        TensorElementType::Float16 => DType::Float16,
        TensorElementType::Int64 => DType::Int64,
        TensorElementType::Int32 => DType::Int32,
        TensorElementType::Uint8 => DType::Uint8,
        other => {
            return Err(load_error(format!(
                "`{name}` has unsupported type {other:?}"
            )))
        }
    };
    let shape = shape
        .iter()
        .map(|&d| {
            if d > 0 {
                Dim::Fixed(d as usize)
            } else {
                Dim::Dynamic
            }
        })
        .collect();
    Ok(TensorSpec {
        name: name.to_string(),
        dtype,
        shape,
    })
}

impl Engine for OrtEngine {
    fn kind(&self) -> BackendKind {
        BackendKind::Ort
    }

    fn input(&self) -> &TensorSpec {
        &self.input
    }

    fn output(&self) -> &TensorSpec {
        &self.output
    }

    fn session(&self) -> Result<Box<dyn Session>, BackendError> {
        let first = self.first.lock().unwrap_or_else(|p| p.into_inner()).take();
        let session = match first {
            Some(s) => s,
            None => build_session(&self.onnx, self.options)?,
        };
        Ok(Box::new(OrtWorkerSession {
            session,
            input: self.input.clone(),
            output_name: self.output.name.clone(),
        }))
    }
}

struct OrtWorkerSession {
    session: OrtSession,
    input: TensorSpec,
    output_name: String,
}

fn run_error(reason: impl ToString) -> BackendError {
    BackendError::Run {
        engine: BackendKind::Ort,
        reason: reason.to_string(),
    }
}

impl Session for OrtWorkerSession {
    fn run(&mut self, input: &Tensor) -> Result<Tensor, BackendError> {
        crate::check_input(&self.input, input)?;
        let shape: Vec<i64> = input.shape().iter().map(|&d| d as i64).collect();
        let value = TensorRef::from_array_view((shape, input.data())).map_err(run_error)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.name.as_str() => value])
            .map_err(run_error)?;
        let output = outputs
            .get(&self.output_name)
            .ok_or_else(|| run_error(format!("no output named `{}`", self.output_name)))?;
        let (shape, data) = output.try_extract_tensor::<f32>().map_err(run_error)?;
        let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        Tensor::new(shape, data.to_vec()).map_err(run_error)
    }
}
