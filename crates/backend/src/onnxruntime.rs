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
use ort::session::SessionInputValue;
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use singlepoint_core::{f16, AnyTensor, Buffer, DType, Dim, TensorSpec};

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
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
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
        if session.inputs().is_empty() {
            return Err(load_error("the model has no inputs"));
        }
        if session.outputs().is_empty() {
            return Err(load_error("the model has no outputs"));
        }
        let inputs = session
            .inputs()
            .iter()
            .map(|i| spec(i.name(), i.dtype()))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = session
            .outputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OrtEngine {
            onnx,
            options,
            inputs,
            outputs,
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
    let ValueType::Tensor {
        ty,
        shape,
        dimension_symbols,
    } = value
    else {
        return Err(load_error(format!("`{name}` is not a tensor ({value:?})")));
    };
    let dtype = match ty {
        TensorElementType::Float32 => DType::Float32,
        TensorElementType::Float16 => DType::Float16,
        TensorElementType::Int64 => DType::Int64,
        TensorElementType::Int32 => DType::Int32,
        TensorElementType::Int8 => DType::Int8,
        TensorElementType::Uint8 => DType::Uint8,
        TensorElementType::Bool => DType::Bool,
        other => {
            return Err(load_error(format!(
                "`{name}` has unsupported type {other:?}"
            )))
        }
    };
    let symbols = (0..shape.len())
        .map(|i| {
            dimension_symbols
                .get(i)
                .filter(|s| !s.is_empty() && shape[i] <= 0)
                .cloned()
        })
        .collect();
    Ok(TensorSpec {
        name: name.to_string(),
        dtype,
        shape: shape
            .iter()
            .map(|&d| {
                if d > 0 {
                    Dim::Fixed(d as usize)
                } else {
                    Dim::Dynamic
                }
            })
            .collect(),
        symbols,
    })
}

impl Engine for OrtEngine {
    fn kind(&self) -> BackendKind {
        BackendKind::Ort
    }

    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn session(&self) -> Result<Box<dyn Session>, BackendError> {
        let first = self.first.lock().unwrap_or_else(|p| p.into_inner()).take();
        let session = match first {
            Some(s) => s,
            None => build_session(&self.onnx, self.options)?,
        };
        Ok(Box::new(OrtWorkerSession {
            session,
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
        }))
    }
}

struct OrtWorkerSession {
    session: OrtSession,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

fn run_error(reason: impl ToString) -> BackendError {
    BackendError::Run {
        engine: BackendKind::Ort,
        reason: reason.to_string(),
    }
}

fn input_value(t: &AnyTensor) -> Result<SessionInputValue<'_>, BackendError> {
    let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    macro_rules! view {
        ($v:expr) => {
            TensorRef::from_array_view((shape, &$v[..]))
                .map_err(run_error)?
                .into()
        };
    }
    Ok(match t.data() {
        Buffer::F32(v) => view!(v),
        Buffer::F16(v) => view!(v),
        Buffer::I64(v) => view!(v),
        Buffer::I32(v) => view!(v),
        Buffer::I8(v) => view!(v),
        Buffer::U8(v) => view!(v),
        Buffer::Bool(v) => view!(v),
    })
}

fn output_tensor(name: &str, value: &DynValue, dtype: DType) -> Result<AnyTensor, BackendError> {
    macro_rules! extract {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value
                .try_extract_tensor::<$t>()
                .map_err(|e| run_error(format!("output `{name}`: {e}")))?;
            let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            AnyTensor::new(shape, Buffer::$variant(data.to_vec())).map_err(run_error)?
        }};
    }
    Ok(match dtype {
        DType::Float32 => extract!(f32, F32),
        DType::Float16 => extract!(f16, F16),
        DType::Int64 => extract!(i64, I64),
        DType::Int32 => extract!(i32, I32),
        DType::Int8 => extract!(i8, I8),
        DType::Uint8 => extract!(u8, U8),
        DType::Bool => extract!(bool, Bool),
    })
}

impl Session for OrtWorkerSession {
    fn run_all(&mut self, inputs: &[AnyTensor]) -> Result<Vec<AnyTensor>, BackendError> {
        crate::check_inputs(&self.inputs, inputs)?;
        let values = inputs
            .iter()
            .map(input_value)
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = self.session.run(&values[..]).map_err(run_error)?;
        self.outputs
            .iter()
            .map(|spec| {
                let value = outputs
                    .get(&spec.name)
                    .ok_or_else(|| run_error(format!("no output named `{}`", spec.name)))?;
                output_tensor(&spec.name, value, spec.dtype)
            })
            .collect()
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Ort
    }
}
