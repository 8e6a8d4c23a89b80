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

use singlepoint_core::{DType, Dim, Tensor, TensorSpec};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::{
    tvec, DatumExt, DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt,
    IntoRunnable, TypedFact, TypedModel, TypedRunnableModel,
};

use crate::{BackendError, BackendKind, Engine, EngineOptions, Session};

type Plan = Arc<TypedRunnableModel>;

pub struct TractEngine {
    shared: Arc<Shared>,
}

struct Shared {
    model: InferenceModel,
    options: EngineOptions,
    input: TensorSpec,
    output: TensorSpec,
    plans: Mutex<HashMap<usize, Plan>>,
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
        let model = tract_onnx::onnx()
            .model_for_read(&mut Cursor::new(onnx))
            .map_err(load_error)?;
        if model.inputs.len() != 1 {
            return Err(load_error(format!(
                "the model has {} inputs; singlepoint runs single-input models",
                model.inputs.len()
            )));
        }
        if model.outputs.is_empty() {
            return Err(load_error("the model has no outputs"));
        }
        // Type the model once with its declared (possibly symbolic) shapes to learn them.
        let typed: TypedModel = model.clone().into_typed().map_err(load_error)?;
        let input_outlet = typed.input_outlets().map_err(load_error)?[0];
        let output_outlet = typed.output_outlets().map_err(load_error)?[0];
        let input_name = typed.node(input_outlet.node).name.clone();
        let output_name = typed
            .outlet_label(output_outlet)
            .map(str::to_string)
            .unwrap_or_else(|| typed.node(output_outlet.node).name.clone());
        let input = spec(
            input_name,
            typed.outlet_fact(input_outlet).map_err(load_error)?,
        )?;
        let output = spec(
            output_name,
            typed.outlet_fact(output_outlet).map_err(load_error)?,
        )?;
        Ok(TractEngine {
            shared: Arc::new(Shared {
                model,
                options,
                input,
                output,
                plans: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Shared {
    /// The plan for a batch of `batch` items, compiled on first use.
    fn plan(&self, shape: &[usize]) -> Result<Plan, BackendError> {
        let batch = shape[0];
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(plan) = plans.get(&batch) {
            return Ok(plan.clone());
        }
        let fact: InferenceFact = f32::fact(shape).into();
        let plan = self
            .model
            .clone()
            .with_input_fact(0, fact)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(load_error)?;
        plans.insert(batch, plan.clone());
        Ok(plan)
    }
}

fn spec(name: String, fact: &TypedFact) -> Result<TensorSpec, BackendError> {
    let dtype = match fact.datum_type {
        DatumType::F32 => DType::Float32,
        DatumType::F16 => DType::Float16,
        DatumType::I64 => DType::Int64,
        DatumType::I32 => DType::Int32,
        DatumType::U8 => DType::Uint8,
        other => {
            return Err(load_error(format!(
                "`{name}` has unsupported type {other:?}"
            )))
        }
    };
    let shape = fact
        .shape
        .iter()
        .map(|d| match d.to_i64() {
            Ok(n) if n > 0 => Dim::Fixed(n as usize),
            _ => Dim::Dynamic,
        })
        .collect();
    Ok(TensorSpec { name, dtype, shape })
}

impl Engine for TractEngine {
    fn kind(&self) -> BackendKind {
        BackendKind::Tract
    }
    fn input(&self) -> &TensorSpec {
        &self.shared.input
    }
    fn output(&self) -> &TensorSpec {
        &self.shared.output
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

impl Session for TractSession {
    fn run(&mut self, input: &Tensor) -> Result<Tensor, BackendError> {
        crate::check_input(&self.engine.input, input)?;
        let plan = self.engine.plan(input.shape())?;
        let tensor = tract_onnx::prelude::Tensor::from_shape(input.shape(), input.data())
            .map_err(run_error)?;
        let outputs =
            multithread_tract_scope(self.executor.clone(), || plan.run(tvec!(tensor.into())))
                .map_err(run_error)?;
        let output = outputs
            .first()
            .ok_or_else(|| run_error("the model produced no output"))?;
        let view = output.to_plain_array_view::<f32>().map_err(run_error)?;
        let shape = view.shape().to_vec();
        let data: Vec<f32> = view.iter().copied().collect();
        Tensor::new(shape, data).map_err(run_error)
    }
}
