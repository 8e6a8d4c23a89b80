//! The task seam: what is model-specific on the single point.
//!
//! The core ([`crate::service`]) keys, caches, coalesces, admits, batches and runs items
//! without knowing what they are. A [`Task`] says the rest: how one request input becomes one
//! item of the model's input tensor ([`Prepare`], run on the core's preprocessing threads), and
//! what the cache stores for an input of each kind (bound into its key). Cache entries hold the
//! model's output row for an input, never a formatted answer, so every front-end and endpoint
//! that derives its answer from the same outputs shares them; the answer itself is the task's
//! function of the row and the request's options (for classification, [`answer`]).
//!
//! Image classification is the task implemented here; an input that is already a preprocessed
//! tensor row skips [`Prepare`] altogether.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use singlepoint_model::{
    classify_row, decode_rgb, Classification, DecodeLimits, Model, Preprocessor,
};
use singlepoint_protocol::ItemInput;

use crate::cputime::thread_cpu_time;
use crate::service::ItemError;

/// What is model-specific about serving one model.
pub trait Task: Send + Sync {
    /// The task's name, as in `model.json`.
    fn name(&self) -> &'static str;
    /// The encoding of what the cache stores for `input`, bound into its key with the model's
    /// digest and the input's bytes: two kinds of input, or a change of encoding, never share
    /// an entry.
    fn entry_encoding(&self, input: &ItemInput) -> &'static [u8];
    /// The shape of one prepared item: the model's input without its batch axis.
    fn item_shape(&self) -> Vec<usize>;
    /// A preparer for one preprocessing thread (it may keep scratch buffers).
    fn preparer(&self) -> Box<dyn Prepare>;
}

/// One thread's way of turning inputs into model input.
pub trait Prepare: Send {
    /// Writes one item of the model's input for `input` into `out` (exactly one item long),
    /// adding the CPU time of each stage to `times`.
    fn prepare(
        &mut self,
        input: &ItemInput,
        out: &mut [f32],
        times: &mut PrepareTimes,
    ) -> Result<(), ItemError>;
}

/// CPU time a [`Prepare`] spent, by stage.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrepareTimes {
    pub decode: Duration,
    pub preprocess: Duration,
}

/// The cached entries' encoding: the output row as little-endian f32, per kind of input.
const ROW_IMAGE: &[u8] = b"output-row-f32le-v1;input=encoded-image";
const ROW_TENSOR: &[u8] = b"output-row-f32le-v1;input=tensor-f32le";

/// `image-classification`: encoded images decoded and preprocessed as the manifest says; the
/// answer is the top classes of the output row.
pub struct ImageClassification {
    model: Arc<Model>,
    limits: DecodeLimits,
}

impl ImageClassification {
    pub fn new(model: Arc<Model>, limits: DecodeLimits) -> ImageClassification {
        ImageClassification { model, limits }
    }
}

/// The classification answer for one output row of `model`: the `top_k` classes with
/// probabilities and labels, as every front-end derives it.
pub fn answer(model: &Model, row: &[f32], top_k: usize) -> Classification {
    classify_row(
        row,
        model.manifest.activation,
        top_k,
        model.labels.as_ref(),
        model.groups.as_ref(),
    )
}

impl Task for ImageClassification {
    fn name(&self) -> &'static str {
        self.model.manifest.task.as_str()
    }

    fn entry_encoding(&self, input: &ItemInput) -> &'static [u8] {
        match input {
            ItemInput::Image(_) => ROW_IMAGE,
            ItemInput::Tensor(_) => ROW_TENSOR,
        }
    }

    fn item_shape(&self) -> Vec<usize> {
        self.model.manifest.preprocess.item_shape().to_vec()
    }

    fn preparer(&self) -> Box<dyn Prepare> {
        Box::new(ImagePreparer {
            model: self.model.clone(),
            limits: self.limits,
            preprocessor: Preprocessor::new(&self.model.manifest.preprocess),
        })
    }
}

struct ImagePreparer {
    model: Arc<Model>,
    limits: DecodeLimits,
    preprocessor: Preprocessor,
}

impl Prepare for ImagePreparer {
    fn prepare(
        &mut self,
        input: &ItemInput,
        out: &mut [f32],
        times: &mut PrepareTimes,
    ) -> Result<(), ItemError> {
        let bytes = match input {
            ItemInput::Image(bytes) => bytes,
            ItemInput::Tensor(row) => {
                if row.len() != out.len() {
                    return Err(ItemError::Input(format!(
                        "a tensor row of {} values, the model takes {}",
                        row.len(),
                        out.len()
                    )));
                }
                out.copy_from_slice(row);
                return Ok(());
            }
        };
        let preprocess = &self.model.manifest.preprocess;
        let t0 = thread_cpu_time();
        let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
            decode_rgb(
                bytes,
                &self.limits,
                Some(preprocess.min_source_short_side()),
            )
        }));
        let t1 = thread_cpu_time();
        times.decode += t1.saturating_sub(t0);
        let (image, _) =
            decoded.map_err(|panic| ItemError::DecoderPanic(panic_message(&panic)))??;
        let prepared =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.preprocessor.run(&image, out)));
        times.preprocess += thread_cpu_time().saturating_sub(t1);
        match prepared {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ItemError::Preprocess(e.to_string())),
            Err(panic) => {
                // Its buffers may be half-written; start afresh.
                self.preprocessor = Preprocessor::new(preprocess);
                Err(ItemError::DecoderPanic(panic_message(&panic)))
            }
        }
    }
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
