//! The pure-Rust engine: Sonos' tract. Slower than ONNX Runtime but needs no native library,
//! so it is the fallback when ONNX Runtime cannot be had.
//!
//! tract optimises a model for concrete shapes: a symbolic batch axis runs several times
//! slower than a fixed one. The engine therefore compiles one plan per batch size on first
//! use and shares the plans between all sessions (`SimplePlan::run` takes `&self`).
//! Sessions with more than one thread run matrix products on their own rayon pool
//! (`tract-linalg`'s `multithread-mm`).

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use singlepoint_core::{f16, AnyTensor, Buffer, DType, Dim, TensorSpec};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoRunnable, TVec,
    TypedFact, TypedModel, TypedRunnableModel,
};

use crate::{BackendError, BackendKind, Engine, EngineOptions, Session};

type Plan = Arc<TypedRunnableModel>;

pub struct TractEngine {
    shared: Arc<Shared>,
}

struct Shared {
    model: InferenceModel,
    options: EngineOptions,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// One plan per set of concrete input shapes.
    plans: Mutex<HashMap<Vec<Vec<usize>>, Plan>>,
}

fn load_error(reason: impl std::fmt::Display) -> BackendError {
    BackendError::Load {
        engine: BackendKind::Tract,
        reason: format!("{reason:#}"),
    }
}

fn run_error(reason: impl std::fmt::Display) -> BackendError {
    BackendError::Run {
        engine: BackendKind::Tract,
        reason: format!("{reason:#}"),
    }
}

impl TractEngine {
    pub fn load(onnx: &[u8], options: EngineOptions) -> Result<TractEngine, BackendError> {
        // Intermediate `value_info` shapes name the inputs' symbols (`sequence`) and would
        // contradict the concrete sizes each plan is compiled for; tract infers them instead.
        let model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_read(&mut Cursor::new(onnx))
            .map_err(load_error)?;
        if model.inputs.is_empty() {
            return Err(load_error("the model has no inputs"));
        }
        if model.outputs.is_empty() {
            return Err(load_error("the model has no outputs"));
        }
        // Type the model once with its declared (possibly symbolic) shapes to learn them.
        let typed: TypedModel = model.clone().into_typed().map_err(load_error)?;
        let inputs = typed
            .input_outlets()
            .map_err(load_error)?
            .iter()
            .map(|&outlet| {
                let name = typed.node(outlet.node).name.clone();
                spec(name, typed.outlet_fact(outlet).map_err(load_error)?)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = typed
            .output_outlets()
            .map_err(load_error)?
            .iter()
            .map(|&outlet| {
                let name = typed
                    .outlet_label(outlet)
                    .map(str::to_string)
                    .unwrap_or_else(|| typed.node(outlet.node).name.clone());
                spec(name, typed.outlet_fact(outlet).map_err(load_error)?)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TractEngine {
            shared: Arc::new(Shared {
                model,
                options,
                inputs,
                outputs,
                plans: Mutex::new(HashMap::new()),
            }),
        })
    }
}

fn datum(dtype: DType) -> DatumType {
    match dtype {
        DType::Float32 => DatumType::F32,
        DType::Float16 => DatumType::F16,
        DType::Int64 => DatumType::I64,
        DType::Int32 => DatumType::I32,
        DType::Int8 => DatumType::I8,
        DType::Uint8 => DatumType::U8,
        DType::Bool => DatumType::Bool,
    }
}

impl Shared {
    /// The plan for inputs of these shapes, compiled on first use.
    fn plan(&self, inputs: &[AnyTensor]) -> Result<Plan, BackendError> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(plan) = plans.get(&shapes) {
            return Ok(plan.clone());
        }
        let mut model = self.model.clone();
        for (i, (shape, spec)) in shapes.iter().zip(&self.inputs).enumerate() {
            let fact = InferenceFact::dt_shape(datum(spec.dtype), shape.as_slice());
            model = model.with_input_fact(i, fact).map_err(load_error)?;
        }
        // Declared output shapes name the same symbols as the inputs' (`sequence`); with
        // concrete inputs they would contradict the inferred sizes, so let tract infer them.
        for i in 0..self.outputs.len() {
            model = model
                .with_output_fact(i, InferenceFact::default())
                .map_err(load_error)?;
        }
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(load_error)?;
        plans.insert(shapes, plan.clone());
        Ok(plan)
    }
}

fn spec(name: String, fact: &TypedFact) -> Result<TensorSpec, BackendError> {
    let dtype = match fact.datum_type {
        DatumType::F32 => DType::Float32,
        DatumType::F16 => DType::Float16,
        DatumType::I64 => DType::Int64,
        DatumType::I32 => DType::Int32,
        DatumType::I8 => DType::Int8,
        DatumType::U8 => DType::Uint8,
        DatumType::Bool => DType::Bool,
        other => {
            return Err(load_error(format!(
                "`{name}` has unsupported type {other:?}"
            )))
        }
    };
    let mut shape = Vec::new();
    let mut symbols = Vec::new();
    for d in fact.shape.iter() {
        match d.to_i64() {
            Ok(n) if n > 0 => {
                shape.push(Dim::Fixed(n as usize));
                symbols.push(None);
            }
            _ => {
                shape.push(Dim::Dynamic);
                let name = d.to_string();
                let plain = name.chars().all(|c| c.is_alphanumeric() || c == '_');
                symbols.push((plain && !name.is_empty()).then_some(name));
            }
        }
    }
    Ok(TensorSpec {
        name,
        dtype,
        shape,
        symbols,
    })
}

impl Engine for TractEngine {
    fn kind(&self) -> BackendKind {
        BackendKind::Tract
    }
    fn inputs(&self) -> &[TensorSpec] {
        &self.shared.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.shared.outputs
    }
    fn session(&self) -> Result<Box<dyn Session>, BackendError> {
        let threads = self.shared.options.threads_per_session.max(1);
        let executor = if threads > 1 {
            Executor::multithread(threads)
        } else {
            Executor::SingleThread
        };
        Ok(Box::new(TractSession {
            engine: Arc::clone(&self.shared),
            executor,
        }))
    }
}

struct TractSession {
    engine: Arc<Shared>,
    executor: Executor,
}

fn to_tract(t: &AnyTensor) -> Result<tract_onnx::prelude::Tensor, BackendError> {
    use tract_onnx::prelude::Tensor;
    let shape = t.shape();
    match t.data() {
        Buffer::F32(v) => Tensor::from_shape(shape, v),
        Buffer::F16(v) => Tensor::from_shape(shape, v),
        Buffer::I64(v) => Tensor::from_shape(shape, v),
        Buffer::I32(v) => Tensor::from_shape(shape, v),
        Buffer::I8(v) => Tensor::from_shape(shape, v),
        Buffer::U8(v) => Tensor::from_shape(shape, v),
        Buffer::Bool(v) => Tensor::from_shape(shape, v),
    }
    .map_err(run_error)
}

fn from_tract(t: &tract_onnx::prelude::Tensor) -> Result<AnyTensor, BackendError> {
    macro_rules! read {
        ($t:ty, $variant:ident) => {{
            let view = t.to_plain_array_view::<$t>().map_err(run_error)?;
            let shape = view.shape().to_vec();
            AnyTensor::new(shape, Buffer::$variant(view.iter().copied().collect()))
                .map_err(run_error)
        }};
    }
    match t.datum_type() {
        DatumType::F32 => read!(f32, F32),
        DatumType::F16 => read!(f16, F16),
        DatumType::I64 => read!(i64, I64),
        DatumType::I32 => read!(i32, I32),
        DatumType::I8 => read!(i8, I8),
        DatumType::U8 => read!(u8, U8),
        DatumType::Bool => read!(bool, Bool),
        other => Err(run_error(format!(
            "the model produced an output of type {other:?}"
        ))),
    }
}

impl Session for TractSession {
    fn run_all(&mut self, inputs: &[AnyTensor]) -> Result<Vec<AnyTensor>, BackendError> {
        crate::check_inputs(&self.engine.inputs, inputs)?;
        let plan = self.engine.plan(inputs)?;
        let values: TVec<_> = inputs
            .iter()
            .map(|t| to_tract(t).map(Into::into))
            .collect::<Result<_, _>>()?;
        let outputs = multithread_tract_scope(self.executor.clone(), || plan.run(values))
            .map_err(run_error)?;
        outputs.iter().map(|t| from_tract(t)).collect()
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Tract
    }
}
