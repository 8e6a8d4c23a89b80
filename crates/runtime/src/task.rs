//! The task seam: what is model-specific on the single point.
//!
//! The core ([`crate::service`]) keys, caches, coalesces, admits, batches and runs items
//! without knowing what they are. A [`Task`] says the rest: how one request input becomes one
//! item of the model's inputs ([`Prepare`], run on the core's preprocessing threads), how items
//! of different shapes may share a batch (the inputs' declared pad values and dimension
//! names), which outputs an item's answer keeps, and what the cache stores for an input of each
//! kind (bound into its key). Cache entries hold the model's outputs for an input, never a
//! formatted answer, so every front-end and endpoint that derives its answer from the same
//! outputs shares them; the answer itself is the task's function of the outputs and the
//! request's options (for classification, [`answer`]).
//!
//! Four tasks are implemented: [`ImageClassification`] (encoded images in, the score row
//! out), [`ObjectDetection`] (images in, candidate boxes out), [`TextTask`] (texts in through
//! the model's tokenizer, a pooled embedding or a score row out) and [`TensorTask`] (any ONNX
//! model: named tensors in, every output out).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use singlepoint_core::{AnyTensor, Buffer, DType, TensorSpec};
use singlepoint_model::{
    classify_row, decode_rgb, Classification, DecodeLimits, DetectionSpec, ImageSpec, InputDecl,
    Model, Preprocessor, TextEncoder, TextInput, TextSpec,
};
use singlepoint_protocol::ItemInput;

use crate::cputime::thread_cpu_time;
use crate::service::ItemError;

/// An item's answer: the model's outputs for it, each without the batch axis.
pub type Outputs = Arc<[AnyTensor]>;

/// What is model-specific about serving one model.
pub trait Task: Send + Sync {
    /// The task's name, as in `model.json`.
    fn name(&self) -> &'static str;
    /// The encoding of what the cache stores for `input`, bound into its key with the model's
    /// digest and the input's bytes: two kinds of input, or a change of encoding, never share
    /// an entry.
    fn entry_encoding(&self, input: &ItemInput) -> &'static [u8] {
        match input {
            ItemInput::Image(_) => ENTRY_IMAGE,
            ItemInput::Pixels { .. } => ENTRY_PIXELS,
            ItemInput::Tensor(_) => ENTRY_ROW,
            ItemInput::Tensors(_) => ENTRY_TENSORS,
            ItemInput::Text { .. } => ENTRY_TEXT,
        }
    }
    /// The model's inputs in order, with how items of different shapes batch together.
    fn inputs(&self) -> &[InputDecl];
    /// The outputs an answer keeps, in the model's order (a prefix of the model's outputs).
    fn outputs(&self) -> &[TensorSpec];
    /// A preparer for one preprocessing thread (it may keep scratch buffers).
    fn preparer(&self) -> Box<dyn Prepare>;

    /// What the cache keeps of one item's model outputs, given what its preparation noted
    /// (`context`): the outputs as they are, or a task's reduction of them (a detector keeps
    /// its candidate boxes in source pixels).
    fn finish(
        &self,
        outputs: Vec<AnyTensor>,
        _context: &[AnyTensor],
    ) -> Result<Vec<AnyTensor>, ItemError> {
        Ok(outputs)
    }
}

/// One prepared item: the model's inputs, and what the task noted for [`Task::finish`] (an
/// image's size, for a detector).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prepared {
    pub inputs: Vec<AnyTensor>,
    pub context: Vec<AnyTensor>,
}

impl From<Vec<AnyTensor>> for Prepared {
    fn from(inputs: Vec<AnyTensor>) -> Prepared {
        Prepared {
            inputs,
            context: Vec::new(),
        }
    }
}

/// One thread's way of turning inputs into model input.
pub trait Prepare: Send {
    /// One item of the model's inputs for `input` (one tensor per model input, without the
    /// batch axis), adding the CPU time of each stage to `times`.
    fn prepare(
        &mut self,
        input: ItemInput,
        times: &mut PrepareTimes,
    ) -> Result<Prepared, ItemError>;
}

/// CPU time a [`Prepare`] spent, by stage.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrepareTimes {
    pub decode: Duration,
    pub preprocess: Duration,
}

/// The cached entries' encoding ([`encode_outputs`]), per kind of input.
const ENTRY_IMAGE: &[u8] = b"outputs-v1;input=encoded-image";
const ENTRY_PIXELS: &[u8] = b"outputs-v1;input=rgb8-pixels";
const ENTRY_ROW: &[u8] = b"outputs-v1;input=tensor-f32le";
const ENTRY_TENSORS: &[u8] = b"outputs-v1;input=tensors";
const ENTRY_TEXT: &[u8] = b"outputs-v1;input=text;answer+tokens";

/// `image-classification`: encoded images decoded and preprocessed as the manifest says; the
/// answer is the top classes of the output row.
pub struct ImageClassification {
    model: Arc<Model>,
    image: ImageSpec,
    limits: DecodeLimits,
}

impl ImageClassification {
    /// `None` when the model is not an image classifier.
    pub fn new(model: Arc<Model>, limits: DecodeLimits) -> Option<ImageClassification> {
        let image = model.manifest.image.clone()?;
        if image.detection.is_some() {
            return None;
        }
        Some(ImageClassification {
            model,
            image,
            limits,
        })
    }
}

/// The score row of an image model's answer (its first output).
pub fn row(outputs: &[AnyTensor]) -> &[f32] {
    outputs.first().and_then(AnyTensor::as_f32).unwrap_or(&[])
}

/// The classification answer for one output row of `model`: the `top_k` classes with
/// probabilities and labels, as every front-end derives it.
pub fn answer(model: &Model, row: &[f32], top_k: usize) -> Classification {
    let activation = match (&model.manifest.image, &model.manifest.text) {
        (Some(image), _) => image.activation,
        (None, Some(text)) => text.activation,
        (None, None) => singlepoint_model::Activation::None,
    };
    classify_row(
        row,
        activation,
        top_k,
        model.labels.as_ref(),
        model.groups.as_ref(),
    )
}

impl Task for ImageClassification {
    fn name(&self) -> &'static str {
        self.model.manifest.task.as_str()
    }

    fn inputs(&self) -> &[InputDecl] {
        &self.model.manifest.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.model.manifest.outputs[..1]
    }

    fn preparer(&self) -> Box<dyn Prepare> {
        Box::new(ImagePreparer::new(&self.image, self.limits))
    }
}

/// Decodes and preprocesses images; notes each one's size as `[width, height]` (int64).
struct ImagePreparer {
    image: ImageSpec,
    limits: DecodeLimits,
    preprocessor: Preprocessor,
}

impl ImagePreparer {
    fn new(image: &ImageSpec, limits: DecodeLimits) -> ImagePreparer {
        ImagePreparer {
            preprocessor: Preprocessor::new(&image.preprocess),
            image: image.clone(),
            limits,
        }
    }
}

impl ImagePreparer {
    /// Preprocesses a decoded image whose upright full-resolution size is `size`.
    fn preprocess(
        &mut self,
        image: &singlepoint_model::RgbImage,
        (width, height): (u32, u32),
        times: &mut PrepareTimes,
    ) -> Result<Prepared, ItemError> {
        let preprocess = &self.image.preprocess;
        let shape = preprocess.item_shape().to_vec();
        let mut out = vec![0.0f32; shape.iter().product()];
        let t0 = thread_cpu_time();
        let prepared =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.preprocessor.run(image, &mut out)));
        times.preprocess += thread_cpu_time().saturating_sub(t0);
        let size = AnyTensor::new(
            vec![2],
            Buffer::I64(vec![i64::from(width), i64::from(height)]),
        )
        .map_err(|e| ItemError::Input(e.to_string()))?;
        match prepared {
            Ok(Ok(())) => Ok(Prepared {
                inputs: vec![AnyTensor::new(shape, Buffer::F32(out))
                    .map_err(|e| ItemError::Input(e.to_string()))?],
                context: vec![size],
            }),
            Ok(Err(e)) => Err(ItemError::Preprocess(e.to_string())),
            Err(panic) => {
                // Its buffers may be half-written; start afresh.
                self.preprocessor = Preprocessor::new(preprocess);
                Err(ItemError::DecoderPanic(panic_message(&panic)))
            }
        }
    }
}

impl Prepare for ImagePreparer {
    fn prepare(
        &mut self,
        input: ItemInput,
        times: &mut PrepareTimes,
    ) -> Result<Prepared, ItemError> {
        let preprocess = &self.image.preprocess;
        let shape = preprocess.item_shape().to_vec();
        let len: usize = shape.iter().product();
        let bytes = match input {
            ItemInput::Image(bytes) => bytes,
            ItemInput::Pixels { width, height, rgb } => {
                if rgb.len() != width as usize * height as usize * 3 {
                    return Err(ItemError::Input(format!(
                        "{} bytes of pixels for a {width}×{height} RGB image",
                        rgb.len()
                    )));
                }
                if u64::from(width) * u64::from(height) > self.limits.max_pixels {
                    return Err(ItemError::Input(format!(
                        "{width}×{height} is more pixels than the limit ({})",
                        self.limits.max_pixels
                    )));
                }
                let image = singlepoint_model::RgbImage {
                    width,
                    height,
                    pixels: Vec::from(rgb),
                };
                return self.preprocess(&image, (width, height), times);
            }
            ItemInput::Tensor(row) => {
                if row.len() != len {
                    return Err(ItemError::Input(format!(
                        "a tensor row of {} values, the model takes {len}",
                        row.len(),
                    )));
                }
                let tensor = AnyTensor::new(shape, Buffer::F32(row))
                    .map_err(|e| ItemError::Input(e.to_string()))?;
                return Ok(vec![tensor].into());
            }
            ItemInput::Tensors(_) | ItemInput::Text { .. } => {
                return Err(ItemError::Input(
                    "an image model takes encoded images or its preprocessed input row".into(),
                ))
            }
        };
        let t0 = thread_cpu_time();
        let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
            decode_rgb(
                &bytes,
                &self.limits,
                Some(preprocess.min_source_short_side()),
            )
        }));
        times.decode += thread_cpu_time().saturating_sub(t0);
        let (image, info) =
            decoded.map_err(|panic| ItemError::DecoderPanic(panic_message(&panic)))??;
        let size = full_size(&image, &info);
        self.preprocess(&image, size, times)
    }
}

/// The upright image's size at full resolution: a JPEG decoded at 1/k scale in the DCT domain
/// is k times larger on each side, and EXIF rotation may have swapped the stored sides.
fn full_size(
    image: &singlepoint_model::RgbImage,
    info: &singlepoint_model::DecodeInfo,
) -> (u32, u32) {
    let k = info.dct_scale.max(1);
    if k == 1 {
        return (image.width, image.height);
    }
    let (sw, sh) = info.source_size;
    if sw.div_ceil(k) == image.width && sh.div_ceil(k) == image.height {
        (sw, sh)
    } else {
        (sh, sw)
    }
}

/// `tensor`: any ONNX model. An item is one row of every input, as the request gave it
/// (checked against the manifest by the protocol layer); its answer is every output.
pub struct TensorTask {
    model: Arc<Model>,
}

impl TensorTask {
    pub fn new(model: Arc<Model>) -> TensorTask {
        TensorTask { model }
    }
}

impl Task for TensorTask {
    fn name(&self) -> &'static str {
        "tensor"
    }

    fn inputs(&self) -> &[InputDecl] {
        &self.model.manifest.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.model.manifest.outputs
    }

    fn preparer(&self) -> Box<dyn Prepare> {
        Box::new(TensorPreparer)
    }
}

struct TensorPreparer;

impl Prepare for TensorPreparer {
    fn prepare(
        &mut self,
        input: ItemInput,
        _times: &mut PrepareTimes,
    ) -> Result<Prepared, ItemError> {
        match input {
            ItemInput::Tensors(tensors) => Ok(tensors.into()),
            ItemInput::Image(_)
            | ItemInput::Pixels { .. }
            | ItemInput::Tensor(_)
            | ItemInput::Text { .. } => Err(ItemError::Input(
                "a tensor model takes its inputs as tensors, not images or texts".into(),
            )),
        }
    }
}

/// `object-detection`: images letterboxed (or stretched) as the manifest says; the cache keeps
/// each image's candidate boxes in its own pixels ([`crate::detect`]), from which every
/// request's thresholds, class filter and cap are answered.
pub struct ObjectDetection {
    model: Arc<Model>,
    image: ImageSpec,
    spec: DetectionSpec,
    limits: DecodeLimits,
}

impl ObjectDetection {
    /// `None` when the model is not a detector.
    pub fn new(model: Arc<Model>, limits: DecodeLimits) -> Option<ObjectDetection> {
        let image = model.manifest.image.clone()?;
        let spec = image.detection?;
        Some(ObjectDetection {
            model,
            image,
            spec,
            limits,
        })
    }
}

impl Task for ObjectDetection {
    fn name(&self) -> &'static str {
        "object-detection"
    }

    fn inputs(&self) -> &[InputDecl] {
        &self.model.manifest.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.model.manifest.outputs
    }

    fn preparer(&self) -> Box<dyn Prepare> {
        Box::new(ImagePreparer::new(&self.image, self.limits))
    }

    fn finish(
        &self,
        outputs: Vec<AnyTensor>,
        context: &[AnyTensor],
    ) -> Result<Vec<AnyTensor>, ItemError> {
        let resize = self.image.preprocess.resize;
        let geometry = match context.first().map(AnyTensor::data) {
            Some(Buffer::I64(size)) if size.len() == 2 => {
                crate::detect::Geometry::of(resize, size[0] as u32, size[1] as u32)
            }
            // A preprocessed tensor has no source image: boxes stay in input pixels.
            _ => {
                let (h, w) = self.image.preprocess.output_size();
                crate::detect::Geometry::of(
                    singlepoint_model::manifest::ResizePolicy::Exact {
                        width: w,
                        height: h,
                        filter: resize.filter(),
                    },
                    w,
                    h,
                )
            }
        };
        crate::detect::candidates(&self.spec, &outputs, geometry)
            .map(|c| vec![c])
            .map_err(ItemError::Inference)
    }
}

/// `text-embedding` and `text-classification`: texts tokenised with the model's tokenizer
/// (never padded alone: the core pads a batch to its longest text); the cache keeps an
/// embedder's pooled vector before normalisation (each request chooses that) or a
/// classifier's score row, and the text's token counts, `[used, whole]`.
pub struct TextTask {
    model: Arc<Model>,
    spec: TextSpec,
    encoder: Arc<TextEncoder>,
    inputs: Vec<InputDecl>,
}

impl TextTask {
    /// `None` when the model is not a text model.
    pub fn new(model: Arc<Model>) -> Option<TextTask> {
        let spec = model.manifest.text.clone()?;
        let encoder = model.text.clone()?;
        let inputs = model
            .manifest
            .inputs
            .iter()
            .zip(&spec.roles)
            .map(|(d, &role)| InputDecl {
                spec: d.spec.clone(),
                pad: Some(singlepoint_model::text::pad_value(&encoder, role)),
                max_length: Some(spec.max_length),
            })
            .collect();
        Some(TextTask {
            model,
            spec,
            encoder,
            inputs,
        })
    }
}

impl Task for TextTask {
    fn name(&self) -> &'static str {
        self.model.manifest.task.as_str()
    }

    fn inputs(&self) -> &[InputDecl] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.model.manifest.outputs[..1]
    }

    fn preparer(&self) -> Box<dyn Prepare> {
        Box::new(TextPreparer {
            encoder: self.encoder.clone(),
            roles: self.spec.roles.clone(),
            dtypes: self.inputs.iter().map(|d| d.spec.dtype).collect(),
        })
    }

    fn finish(
        &self,
        outputs: Vec<AnyTensor>,
        context: &[AnyTensor],
    ) -> Result<Vec<AnyTensor>, ItemError> {
        let tokens = context
            .first()
            .cloned()
            .ok_or_else(|| ItemError::Inference("the text's token counts are missing".into()))?;
        let first = outputs
            .into_iter()
            .next()
            .ok_or_else(|| ItemError::Inference("the model gave no output".into()))?;
        let row = match (self.spec.pooling, first.as_f32()) {
            (Some(pooling), Some(hidden)) => {
                let dim = first.shape().last().copied().unwrap_or(0);
                let v = singlepoint_model::text::pool(hidden, dim, pooling);
                AnyTensor::new(vec![dim], Buffer::F32(v))
                    .map_err(|e| ItemError::Inference(e.to_string()))?
            }
            (None, Some(_)) => first,
            (_, None) => {
                return Err(ItemError::Inference(format!(
                    "the model's output is {}, not float32",
                    first.dtype()
                )))
            }
        };
        Ok(vec![row, tokens])
    }
}

/// Tokenises texts into the model's inputs; notes `[used, whole]` token counts.
struct TextPreparer {
    encoder: Arc<TextEncoder>,
    roles: Vec<TextInput>,
    dtypes: Vec<DType>,
}

impl Prepare for TextPreparer {
    fn prepare(
        &mut self,
        input: ItemInput,
        times: &mut PrepareTimes,
    ) -> Result<Prepared, ItemError> {
        let ItemInput::Text { text, truncate } = input else {
            return Err(ItemError::Input(
                "a text model takes texts, not images or tensors".into(),
            ));
        };
        let t0 = thread_cpu_time();
        let encoded =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.encoder.encode(&text, truncate)));
        times.preprocess += thread_cpu_time().saturating_sub(t0);
        let encoded = encoded
            .map_err(|panic| ItemError::DecoderPanic(panic_message(&panic)))?
            .map_err(|e| ItemError::Input(format!("the text {e}")))?;
        let n = encoded.ids.len();
        let inputs = self
            .roles
            .iter()
            .zip(&self.dtypes)
            .map(|(&role, &dtype)| {
                let values = singlepoint_model::text::input_values(&encoded, role);
                let data = match dtype {
                    DType::Int32 => Buffer::I32(values.iter().map(|&v| v as i32).collect()),
                    _ => Buffer::I64(values),
                };
                AnyTensor::new(vec![n], data).map_err(|e| ItemError::Input(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tokens = AnyTensor::new(
            vec![2],
            Buffer::I64(vec![n as i64, encoded.original as i64]),
        )
        .map_err(|e| ItemError::Input(e.to_string()))?;
        Ok(Prepared {
            inputs,
            context: vec![tokens],
        })
    }
}

/// An embedder's answer as a request wants it: the stored vector, L2-normalised or not.
pub fn embedding(outputs: &[AnyTensor], normalize: bool) -> Vec<f32> {
    let mut v = row(outputs).to_vec();
    if normalize {
        singlepoint_model::text::normalize(&mut v);
    }
    v
}

/// A text answer's token counts: `(used, whole)`; `whole > used` when the text was cut.
pub fn token_counts(outputs: &[AnyTensor]) -> (usize, usize) {
    match outputs.get(1).map(AnyTensor::data) {
        Some(Buffer::I64(t)) if t.len() == 2 => (t[0].max(0) as usize, t[1].max(0) as usize),
        _ => (0, 0),
    }
}

/// The task a model's manifest names.
pub fn for_model(model: Arc<Model>, limits: DecodeLimits) -> Arc<dyn Task> {
    if let Some(text) = TextTask::new(model.clone()) {
        return Arc::new(text);
    }
    if let Some(detector) = ObjectDetection::new(model.clone(), limits) {
        return Arc::new(detector);
    }
    match ImageClassification::new(model.clone(), limits) {
        Some(image) => Arc::new(image),
        None => Arc::new(TensorTask::new(model)),
    }
}

fn dtype_code(dtype: DType) -> u8 {
    DType::ALL.iter().position(|&d| d == dtype).unwrap_or(0) as u8
}

/// Appends a self-describing form of `tensors` to `out`: count, then for each its type, rank,
/// dimensions and little-endian elements. Used for cache keys of tensor inputs and for cache
/// entries.
pub fn write_tensors(tensors: &[AnyTensor], out: &mut Vec<u8>) {
    out.extend_from_slice(&(tensors.len() as u32).to_le_bytes());
    for t in tensors {
        out.push(dtype_code(t.dtype()));
        out.push(t.shape().len() as u8);
        for &d in t.shape() {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        t.data().write_le_bytes(out);
    }
}

/// A cache entry for an item's outputs.
pub fn encode_outputs(outputs: &[AnyTensor]) -> Vec<u8> {
    let mut out = Vec::new();
    write_tensors(outputs, &mut out);
    out
}

/// Reads a cache entry back; `None` for anything malformed (a corrupt entry is a miss).
pub fn decode_outputs(bytes: &[u8]) -> Option<Outputs> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = bytes.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let mut tensors = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let dtype = *DType::ALL.get(usize::from(take(1)?[0]))?;
        let rank = usize::from(take(1)?[0]);
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            shape.push(usize::try_from(u64::from_le_bytes(take(8)?.try_into().ok()?)).ok()?);
        }
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))?
            .checked_mul(dtype.size())?;
        let data = Buffer::from_le_bytes(dtype, take(n)?).ok()?;
        tensors.push(AnyTensor::new(shape, data).ok()?);
    }
    if at != bytes.len() {
        return None;
    }
    Some(tensors.into())
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_round_trip_through_cache_entries() {
        let outputs = vec![
            AnyTensor::new(vec![3], Buffer::F32(vec![1.5, -0.0, f32::MAX])).unwrap(),
            AnyTensor::new(vec![2, 1], Buffer::I64(vec![7, -9])).unwrap(),
            AnyTensor::new(vec![0], Buffer::Bool(vec![])).unwrap(),
        ];
        let bytes = encode_outputs(&outputs);
        assert_eq!(&*decode_outputs(&bytes).unwrap(), outputs.as_slice());
        for cut in 0..bytes.len() {
            assert!(decode_outputs(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_outputs(&longer).is_none());
    }
}
