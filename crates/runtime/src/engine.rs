//! Choosing and loading the engine for a model: `--backend auto|ort|tract`.
//!
//! `auto` prefers ONNX Runtime. When its library is not installed it is fetched once into the
//! per-user cache (unless fetching is off); when that fails too, tract runs the model and one
//! warning line says how to get the fast engine.

use std::sync::Arc;

use singlepoint_backend::{BackendError, BackendKind, Engine, EngineOptions};
use singlepoint_model::Model;

use crate::RuntimeError;

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Only(BackendKind),
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            other => other
                .parse::<BackendKind>()
                .map(BackendChoice::Only)
                .map_err(|_| {
                    format!("unknown backend `{other}`; expected `auto`, `ort` or `tract`")
                }),
        }
    }
}

/// The batch each engine runs images cheapest per item at on one single-threaded instance per
/// core (measured on EfficientNet-Lite0; see bench/results/): what `classify` and the Python
/// package use when no batch size is given.
pub fn default_batch_size(kind: BackendKind) -> usize {
    match kind {
        BackendKind::Ort => 4,
        BackendKind::Tract => 1,
    }
}

/// A loaded engine, and what the user should be told about how it was chosen.
pub struct LoadedEngine {
    pub engine: Arc<dyn Engine>,
    pub warnings: Vec<String>,
}

/// Makes sure ONNX Runtime's library is present, fetching it when `allow_fetch` is set.
/// Returns a note for the user when it fetched.
pub fn ensure_onnxruntime(allow_fetch: bool) -> Result<Option<String>, BackendError> {
    use singlepoint_backend::ort_runtime;
    if ort_runtime::locate()?.is_some() {
        return Ok(None);
    }
    if !allow_fetch {
        return Err(BackendError::RuntimeUnavailable(format!(
            "no library in `{}` and ORT_DYLIB_PATH is not set; run `singlepoint runtime fetch`",
            ort_runtime::runtime_dir().display()
        )));
    }
    let path = ort_runtime::fetch()?;
    Ok(Some(format!(
        "fetched ONNX Runtime {} into `{}`",
        ort_runtime::ORT_VERSION,
        path.display()
    )))
}

/// Loads `model` on the chosen engine and checks the manifest against what the engine sees.
pub fn load_engine(
    model: &Model,
    choice: BackendChoice,
    options: EngineOptions,
    allow_fetch: bool,
) -> Result<LoadedEngine, RuntimeError> {
    let mut warnings = Vec::new();
    let engine = match choice {
        BackendChoice::Only(BackendKind::Ort) => {
            if let Some(note) = ensure_onnxruntime(allow_fetch)? {
                warnings.push(note);
            }
            singlepoint_backend::load(BackendKind::Ort, model.onnx.clone(), options)?
        }
        BackendChoice::Only(kind) => singlepoint_backend::load(kind, model.onnx.clone(), options)?,
        BackendChoice::Auto => {
            let ort = ensure_onnxruntime(allow_fetch).and_then(|note| {
                let engine =
                    singlepoint_backend::load(BackendKind::Ort, model.onnx.clone(), options)?;
                Ok((engine, note))
            });
            match ort {
                Ok((engine, note)) => {
                    warnings.extend(note);
                    engine
                }
                // A model ONNX Runtime rejects is the model's problem, not the engine's.
                Err(e @ BackendError::Load { .. }) => return Err(e.into()),
                Err(e) => {
                    warnings.push(format!(
                        "using the slower tract engine: {e}. For the fast engine run `singlepoint runtime fetch` (needs python3 with pip) or set ORT_DYLIB_PATH to libonnxruntime {}",
                        singlepoint_backend::ort_runtime::ORT_VERSION
                    ));
                    singlepoint_backend::load(BackendKind::Tract, model.onnx.clone(), options)?
                }
            }
        }
    };
    model.check_against(engine.inputs(), engine.outputs())?;
    Ok(LoadedEngine { engine, warnings })
}
