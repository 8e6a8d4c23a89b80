//! `model.json`: what a model is, what it takes, how its inputs are prepared and how its
//! outputs are read. Parsed in two stages (ripgrep style): serde reads the raw JSON
//! (`RawManifest`), then [`Manifest::from_json`] validates it once into plain typed values that
//! the rest of the system trusts without checking again.

use std::path::{Component, Path};

use serde::Deserialize;
use singlepoint_core::{DType, Dim, TensorSpec};

use crate::ModelError;

/// What a model does: image classification (encoded images in, ranked classes out), object
/// detection (images in, boxes out), text embedding and text classification (texts in,
/// through the model's tokenizer; a vector or ranked classes out), or `tensor` (any ONNX
/// model: named tensors in, named tensors out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    ImageClassification,
    ObjectDetection,
    TextEmbedding,
    TextClassification,
    Tensor,
}

impl Task {
    pub const NAMES: &'static str = "`image-classification`, `object-detection`, `text-embedding`, `text-classification` or `tensor`";

    pub fn as_str(self) -> &'static str {
        match self {
            Task::ImageClassification => "image-classification",
            Task::ObjectDetection => "object-detection",
            Task::TextEmbedding => "text-embedding",
            Task::TextClassification => "text-classification",
            Task::Tensor => "tensor",
        }
    }

    pub fn parse(name: &str) -> Option<Task> {
        match name {
            "image-classification" => Some(Task::ImageClassification),
            "object-detection" => Some(Task::ObjectDetection),
            "text-embedding" => Some(Task::TextEmbedding),
            "text-classification" => Some(Task::TextClassification),
            "tensor" => Some(Task::Tensor),
            _ => None,
        }
    }

    /// Texts in, through a tokenizer.
    pub fn is_text(self) -> bool {
        matches!(self, Task::TextEmbedding | Task::TextClassification)
    }
}

/// How a text embedder's token vectors become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The mean over the tokens the attention mask keeps (special tokens included).
    Mean,
    /// The first token's vector (`[CLS]`).
    Cls,
    /// The largest value of each dimension over the kept tokens.
    Max,
}

/// What a text model's input is to the tokenizer's encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TextInput {
    /// `input_ids`: the token ids (padded with the tokenizer's pad id).
    Ids,
    /// `attention_mask`: 1 for a token, 0 for padding.
    Mask,
    /// `token_type_ids`: the segment of each token (0 for a single text).
    TypeIds,
}

impl TextInput {
    pub const NAMES: &'static str = "`input_ids`, `attention_mask` or `token_type_ids`";

    pub fn of_name(name: &str) -> Option<TextInput> {
        match name {
            "input_ids" => Some(TextInput::Ids),
            "attention_mask" => Some(TextInput::Mask),
            "token_type_ids" => Some(TextInput::TypeIds),
            _ => None,
        }
    }
}

/// What a text task adds to the manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct TextSpec {
    /// The tokenizer file (Hugging Face `tokenizer.json`), relative to the model's folder.
    /// Its own truncation and padding settings are ignored: texts are cut at `max_length`
    /// (when the request allows it) and batches are padded to their longest item.
    pub tokenizer: String,
    /// The most tokens the model takes, special tokens included.
    pub max_length: usize,
    /// What each model input is, in the model's order.
    pub roles: Vec<TextInput>,
    /// Embeddings: how token vectors become one (`None` when the model's output is already
    /// one vector per text).
    pub pooling: Option<Pooling>,
    /// Embeddings: L2-normalise unless a request says otherwise.
    pub normalize: bool,
    /// Classification: how the output row becomes probabilities.
    pub activation: Activation,
}

/// How a detector's outputs hold its candidate boxes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DetectionLayout {
    /// Two outputs: `boxes` [batch, N, 4] (cx, cy, w, h in input pixels) and `scores`
    /// [batch, N, classes] (each class's final score), as the bundled YOLOv3-tiny gives them.
    BoxesScores,
    /// One output [batch, 4 + classes, N]: rows cx, cy, w, h, then each class's score, as
    /// YOLOv5/v8 exports give it.
    Yolov8,
}

/// What an object-detection model's manifest adds: how its outputs are read and the default
/// thresholds a request may override.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectionSpec {
    pub layout: DetectionLayout,
    /// Keep a candidate whose best class score is above this (requests may ask for another).
    pub score_threshold: f32,
    /// Per-class non-maximum suppression drops a box whose IoU with a kept box of its class is
    /// above this.
    pub iou_threshold: f32,
    /// At most this many detections per image.
    pub max_detections: usize,
    /// The lowest score a request may ask for: the cache keeps every candidate above it, so
    /// that any threshold from here up is answered from one entry.
    pub min_score: f32,
}

/// A declared model input and how items of different lengths batch together.
#[derive(Clone, Debug, PartialEq)]
pub struct InputDecl {
    pub spec: TensorSpec,
    /// The value shorter items are padded with along their dynamic axes, so that items of
    /// different lengths share a batch. Without it, only items of one shape batch together.
    /// Declare it only where the model ignores padded positions (through a mask input that is
    /// padded as well, typically with 0).
    pub pad: Option<f64>,
    /// The largest size any dynamic axis (other than the batch) may have.
    pub max_length: Option<usize>,
}

/// Channel order the model expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    Rgb,
    Bgr,
    Gray,
}

impl ColorOrder {
    pub fn channels(self) -> usize {
        match self {
            ColorOrder::Rgb | ColorOrder::Bgr => 3,
            ColorOrder::Gray => 1,
        }
    }
}

/// Resampling filter, with Pillow's semantics: when shrinking, the filter's support grows with
/// the scale factor (antialiasing), as `PIL.Image.resize` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    Nearest,
    Bilinear,
    Bicubic,
    Lanczos3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResizePolicy {
    /// Scale so the shorter side is `size`, keeping the aspect ratio (the longer side is
    /// `round(size × long / short)`, rounding half to even as Python does).
    ShorterSide { size: u32, filter: ResizeFilter },
    /// Scale by `r = min(width / w, height / h)` to `round(w·r)` × `round(h·r)` (Python's
    /// rounding) and centre it on a `width` × `height` canvas of grey `pad`, at offsets
    /// `(width − nw) // 2`, `(height − nh) // 2`: the YOLO letterbox.
    Letterbox {
        width: u32,
        height: u32,
        filter: ResizeFilter,
        pad: u8,
    },
    /// Stretch to exactly `width` × `height`.
    Exact {
        width: u32,
        height: u32,
        filter: ResizeFilter,
    },
}

impl ResizePolicy {
    pub fn filter(self) -> ResizeFilter {
        match self {
            ResizePolicy::ShorterSide { filter, .. }
            | ResizePolicy::Exact { filter, .. }
            | ResizePolicy::Letterbox { filter, .. } => filter,
        }
    }

    /// The size an image of `width` × `height` is resized to.
    pub fn target_size(self, width: u32, height: u32) -> (u32, u32) {
        match self {
            ResizePolicy::Exact { width, height, .. } => (width, height),
            ResizePolicy::Letterbox { .. } => {
                let g = self.letterbox(width, height).expect("a letterbox policy");
                (g.width, g.height)
            }
            ResizePolicy::ShorterSide { size, .. } => {
                let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
                let s = f64::from(size);
                // `round(size * long / short)` with Python's rounding: what produced the
                // bundled model's reference outputs.
                let long = |l: f64, short: f64| {
                    round_half_even(s * l / short).clamp(1.0, f64::from(u32::MAX)) as u32
                };
                if w <= h {
                    (size, long(h, w))
                } else {
                    (long(w, h), size)
                }
            }
        }
    }
}

/// Where a letterboxed image lands on the canvas: scale `r`, offsets, and its size there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Letterbox {
    pub r: f64,
    pub dx: u32,
    pub dy: u32,
    pub width: u32,
    pub height: u32,
}

impl ResizePolicy {
    /// The letterbox of a `width` × `height` image, for a letterbox policy.
    pub fn letterbox(self, width: u32, height: u32) -> Option<Letterbox> {
        let ResizePolicy::Letterbox {
            width: cw,
            height: ch,
            ..
        } = self
        else {
            return None;
        };
        let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
        let r = (f64::from(cw) / w).min(f64::from(ch) / h);
        let nw = (round_half_even(w * r) as u32).clamp(1, cw);
        let nh = (round_half_even(h * r) as u32).clamp(1, ch);
        Some(Letterbox {
            r,
            dx: (cw - nw) / 2,
            dy: (ch - nh) / 2,
            width: nw,
            height: nh,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// A centre crop of the resized image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Crop {
    pub height: u32,
    pub width: u32,
    /// How the offset `(size - crop) / 2` is rounded when it is not whole.
    pub rounding: CropRounding,
}

/// The convention a reference pipeline used for the centre crop's offset. The two differ by one
/// pixel whenever `size - crop` is odd, which moves probabilities by several points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CropRounding {
    /// `(size - crop) // 2`, as PIL-based and TF-slim scripts compute it.
    Floor,
    /// `int(round((size - crop) / 2))` with Python's rounding, as torchvision's `CenterCrop`.
    HalfEven,
}

impl CropRounding {
    /// The offset of a crop of `crop` pixels centred in `size` pixels.
    pub fn offset(self, size: u32, crop: u32) -> u32 {
        let gap = size.saturating_sub(crop);
        match self {
            CropRounding::Floor => gap / 2,
            CropRounding::HalfEven => round_half_even(f64::from(gap) / 2.0) as u32,
        }
    }
}

/// How a decoded image becomes the model's input tensor:
/// colour conversion → resize → centre crop → `(pixel · scale − mean) / std` → layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    pub color: ColorOrder,
    pub resize: ResizePolicy,
    /// Centre crop after resizing; `None` keeps the resized image.
    pub crop: Option<Crop>,
    pub scale: f32,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub layout: Layout,
}

impl Preprocess {
    /// `(height, width)` of the tensor one image becomes.
    pub fn output_size(&self) -> (u32, u32) {
        match (self.crop, self.resize) {
            (Some(crop), _) => (crop.height, crop.width),
            (None, ResizePolicy::Exact { width, height, .. })
            | (None, ResizePolicy::Letterbox { width, height, .. }) => (height, width),
            // Without a crop the size depends on the image: validation rejects this for models
            // with a fixed spatial input, which is all of them today.
            (None, ResizePolicy::ShorterSide { size, .. }) => (size, size),
        }
    }

    /// The shape of one preprocessed item, without the batch axis.
    pub fn item_shape(&self) -> [usize; 3] {
        let (h, w) = self.output_size();
        let c = self.color.channels();
        match self.layout {
            Layout::Nchw => [c, h as usize, w as usize],
            Layout::Nhwc => [h as usize, w as usize, c],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// The output holds logits: apply softmax to get probabilities.
    Softmax,
    /// Independent classes (multi-label): the logistic function of each logit.
    Sigmoid,
    /// The output already holds probabilities.
    None,
}

/// What an image task adds to the manifest: how images become the input, how the output is
/// read.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSpec {
    pub preprocess: Preprocess,
    pub activation: Activation,
    /// Present exactly for object detection.
    pub detection: Option<DetectionSpec>,
}

/// A validated `model.json`. File references are relative paths inside the model's folder.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub task: Task,
    pub onnx: String,
    /// Every input the model takes, in the model's order (an image model has one).
    pub inputs: Vec<InputDecl>,
    /// Every output the model gives, in the model's order (an image classifier's first is its
    /// scores).
    pub outputs: Vec<TensorSpec>,
    /// Present exactly for image tasks.
    pub image: Option<ImageSpec>,
    /// Present exactly for text tasks.
    pub text: Option<TextSpec>,
    pub labels: Option<String>,
    pub label_groups: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    #[serde(default = "default_version")]
    version: String,
    task: String,
    onnx: String,
    inputs: Vec<RawTensor>,
    outputs: Vec<RawTensor>,
    preprocess: Option<RawPreprocess>,
    postprocess: Option<RawPostprocess>,
    detection: Option<RawDetection>,
    text: Option<RawText>,
    labels: Option<String>,
    label_groups: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

fn default_version() -> String {
    "1".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensor {
    name: String,
    dtype: DType,
    shape: Vec<RawDim>,
    pad: Option<f64>,
    max_length: Option<usize>,
}

/// A dimension as written: a size, `-1` (dynamic), or a name (dynamic; axes that share a name
/// have one size, as ONNX's `dim_param`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawDim {
    Size(i64),
    Name(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreprocess {
    color: ColorOrder,
    resize: RawResize,
    crop: Option<RawCrop>,
    #[serde(default = "one")]
    scale: f32,
    mean: Vec<f32>,
    std: Vec<f32>,
    layout: Layout,
}

fn one() -> f32 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResize {
    shorter_side: Option<u32>,
    /// `[height, width]`
    exact: Option<[u32; 2]>,
    /// `[height, width]`
    letterbox: Option<[u32; 2]>,
    /// The letterbox's grey, 0..255 (required with `letterbox`).
    pad: Option<u8>,
    filter: ResizeFilter,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDetection {
    layout: DetectionLayout,
    score_threshold: f32,
    iou_threshold: f32,
    #[serde(default = "default_max_detections")]
    max_detections: usize,
    #[serde(default = "default_min_score")]
    min_score: f32,
}

fn default_max_detections() -> usize {
    300
}

fn default_min_score() -> f32 {
    0.05
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawText {
    tokenizer: String,
    max_length: usize,
    pooling: Option<Pooling>,
    normalize: Option<bool>,
}

/// The most tokens a text model may declare; beyond it is a typo.
const MAX_TOKENS: usize = 1 << 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrop {
    /// `[height, width]`
    center: [u32; 2],
    /// Required: `floor` or `half_even` (there is no safe default; see [`CropRounding`]).
    rounding: Option<CropRounding>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostprocess {
    activation: Activation,
}

/// Python's `round`: to the nearest integer, ties to even.
pub fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// Largest side a resize or crop may ask for; anything larger is a typo, not a model.
const MAX_SIDE: u32 = 16_384;

impl Manifest {
    /// Parses and validates `text`, read from `file` (used only in error messages).
    pub fn from_json(file: &Path, text: &str) -> Result<Manifest, ModelError> {
        let invalid = |field: &str, reason: String| ModelError::InvalidManifest {
            file: file.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let raw: RawManifest =
            serde_json::from_str(text).map_err(|e| ModelError::ManifestSyntax {
                file: file.to_path_buf(),
                reason: e.to_string(),
            })?;

        if raw.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty".into()));
        }
        if !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || raw.name.starts_with('.')
        {
            return Err(invalid(
                "name",
                format!("`{}` may use only letters, digits, `-`, `_` and `.`, and must not start with `.`", raw.name),
            ));
        }
        let task = Task::parse(&raw.task).ok_or_else(|| {
            invalid(
                "task",
                format!("`{}` is not supported; expected {}", raw.task, Task::NAMES),
            )
        })?;
        check_relative_path(&raw.onnx).map_err(|r| invalid("onnx", r))?;
        for (field, value) in [("labels", &raw.labels), ("label_groups", &raw.label_groups)] {
            if let Some(path) = value {
                check_relative_path(path).map_err(|r| invalid(field, r))?;
            }
        }
        if raw.label_groups.is_some() && raw.labels.is_none() {
            return Err(invalid("label_groups", "needs `labels` as well".into()));
        }

        let inputs = tensors(&raw.inputs, "inputs", &invalid)?;
        let outputs = tensors(&raw.outputs, "outputs", &invalid)?;
        if task == Task::Tensor {
            for (field, present) in [
                ("preprocess", raw.preprocess.is_some()),
                ("postprocess", raw.postprocess.is_some()),
                ("labels", raw.labels.is_some()),
                ("detection", raw.detection.is_some()),
                ("text", raw.text.is_some()),
            ] {
                if present {
                    return Err(invalid(
                        field,
                        "belongs to image and text tasks; a `tensor` model takes and gives tensors as they are"
                            .into(),
                    ));
                }
            }
            return Ok(Manifest {
                name: raw.name,
                version: raw.version,
                task,
                onnx: raw.onnx,
                inputs,
                outputs: outputs.into_iter().map(|d| d.spec).collect(),
                image: None,
                text: None,
                labels: None,
                label_groups: None,
            });
        }
        for (i, t) in raw.inputs.iter().chain(&raw.outputs).enumerate() {
            if t.pad.is_some() || t.max_length.is_some() {
                let field = if i < raw.inputs.len() {
                    format!("inputs[{i}]")
                } else {
                    format!("outputs[{}]", i - raw.inputs.len())
                };
                return Err(invalid(
                    &field,
                    "`pad` and `max_length` belong to `tensor` models".into(),
                ));
            }
        }
        if task.is_text() {
            return text_manifest(raw, task, inputs, outputs, &invalid);
        }
        if raw.text.is_some() {
            return Err(invalid("text", "belongs to text tasks".into()));
        }
        let detection = match (task, raw.detection) {
            (Task::ObjectDetection, Some(d)) => Some(check_detection(d, &outputs, &invalid)?),
            (Task::ObjectDetection, None) => {
                return Err(invalid(
                    "detection",
                    "is missing: how the outputs hold boxes (`layout`) and the thresholds".into(),
                ))
            }
            (_, Some(_)) => {
                return Err(invalid(
                    "detection",
                    "belongs to object-detection models".into(),
                ))
            }
            (_, None) => None,
        };
        let (input, output) = match (inputs.as_slice(), outputs.as_slice()) {
            ([i], [o, ..]) if detection.is_some() => (i.spec.clone(), o.spec.clone()),
            ([i], [o]) => (i.spec.clone(), o.spec.clone()),
            ([_], _) => {
                return Err(invalid(
                    "outputs",
                    format!(
                        "image classification takes exactly one tensor in `outputs`, found {}",
                        outputs.len()
                    ),
                ))
            }
            _ => {
                return Err(invalid(
                    "inputs",
                    format!(
                        "image classification takes exactly one tensor in `inputs`, found {}",
                        inputs.len()
                    ),
                ))
            }
        };
        let p = raw.preprocess.ok_or_else(|| {
            invalid(
                "preprocess",
                "is missing: an image task needs to know how images become its input".into(),
            )
        })?;
        let resize = match (p.resize.shorter_side, p.resize.exact, p.resize.letterbox) {
            (Some(size), None, None) => ResizePolicy::ShorterSide {
                size,
                filter: p.resize.filter,
            },
            (None, Some([height, width]), None) => ResizePolicy::Exact {
                width,
                height,
                filter: p.resize.filter,
            },
            (None, None, Some([height, width])) => ResizePolicy::Letterbox {
                width,
                height,
                filter: p.resize.filter,
                pad: p.resize.pad.ok_or_else(|| {
                    invalid(
                        "preprocess.resize.pad",
                        "is missing: the letterbox's grey (0..255; YOLO uses 114 or 128)".into(),
                    )
                })?,
            },
            _ => {
                return Err(invalid(
                    "preprocess.resize",
                    "needs exactly one of `shorter_side`, `exact` or `letterbox`".into(),
                ))
            }
        };
        if p.resize.pad.is_some() && !matches!(resize, ResizePolicy::Letterbox { .. }) {
            return Err(invalid(
                "preprocess.resize.pad",
                "belongs to `letterbox`".into(),
            ));
        }
        if detection.is_some() && matches!(resize, ResizePolicy::ShorterSide { .. }) {
            return Err(invalid(
                "preprocess.resize",
                "an object detector's boxes map back to the image through `letterbox` or `exact`; a crop would lose what lies outside it".into(),
            ));
        }
        let sides = match resize {
            ResizePolicy::ShorterSide { size, .. } => vec![size],
            ResizePolicy::Exact { width, height, .. }
            | ResizePolicy::Letterbox { width, height, .. } => vec![width, height],
        };
        if sides.iter().any(|&s| s == 0 || s > MAX_SIDE) {
            return Err(invalid(
                "preprocess.resize",
                format!("sizes must be between 1 and {MAX_SIDE}"),
            ));
        }
        let crop = match p.crop {
            None => None,
            Some(RawCrop { rounding: None, .. }) => {
                return Err(invalid(
                    "preprocess.crop.rounding",
                    "is missing: how the reference pipeline rounded the crop's offset \
                     `(size - crop) / 2`, either `floor` (PIL and TF-slim scripts: \
                     `(w - c) // 2`) or `half_even` (torchvision's CenterCrop); they differ \
                     by a pixel and change the answers"
                        .into(),
                ))
            }
            Some(RawCrop {
                center: [height, width],
                rounding: Some(rounding),
            }) => Some(Crop {
                height,
                width,
                rounding,
            }),
        };
        if let Some(Crop {
            height: ch,
            width: cw,
            ..
        }) = crop
        {
            if ch == 0 || cw == 0 {
                return Err(invalid(
                    "preprocess.crop.center",
                    "sizes must be positive".into(),
                ));
            }
            let fits = match resize {
                ResizePolicy::ShorterSide { size, .. } => ch <= size && cw <= size,
                ResizePolicy::Exact { width, height, .. } => ch <= height && cw <= width,
                ResizePolicy::Letterbox { .. } => false,
            };
            if !fits {
                return Err(invalid(
                    "preprocess.crop.center",
                    format!("[{ch}, {cw}] is larger than the resized image"),
                ));
            }
        } else if matches!(resize, ResizePolicy::ShorterSide { .. }) {
            return Err(invalid(
                "preprocess.crop",
                "is required with `shorter_side`, whose output size depends on the image".into(),
            ));
        }
        let channels = p.color.channels();
        for (field, values) in [("preprocess.mean", &p.mean), ("preprocess.std", &p.std)] {
            if values.len() != channels {
                return Err(invalid(
                    field,
                    format!(
                        "expected {channels} value(s), one per channel of `{:?}`, found {}",
                        p.color,
                        values.len()
                    ),
                ));
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Err(invalid(field, "values must be finite".into()));
            }
        }
        if p.std.contains(&0.0) {
            return Err(invalid("preprocess.std", "values must not be 0".into()));
        }
        if !p.scale.is_finite() || p.scale == 0.0 {
            return Err(invalid(
                "preprocess.scale",
                "must be a finite non-zero number".into(),
            ));
        }
        let preprocess = Preprocess {
            color: p.color,
            resize,
            crop,
            scale: p.scale,
            mean: p.mean,
            std: p.std,
            layout: p.layout,
        };

        check_input_shape(&input, &preprocess).map_err(|r| invalid("inputs[0].shape", r))?;
        if input.dtype != DType::Float32 {
            return Err(invalid(
                "inputs[0].dtype",
                format!(
                    "`{}` is not supported for images; expected `float32`",
                    input.dtype
                ),
            ));
        }
        if output.shape.len() != 2 && detection.is_none() {
            return Err(invalid(
                "outputs[0].shape",
                format!("expected [batch, classes], found {}", output.shape_string()),
            ));
        }
        if output.dtype != DType::Float32 {
            return Err(invalid(
                "outputs[0].dtype",
                format!("`{}` is not supported; expected `float32`", output.dtype),
            ));
        }

        Ok(Manifest {
            name: raw.name,
            version: raw.version,
            task,
            onnx: raw.onnx,
            inputs: vec![InputDecl {
                spec: input,
                pad: None,
                max_length: None,
            }],
            outputs: if detection.is_some() {
                outputs.into_iter().map(|d| d.spec).collect()
            } else {
                vec![output]
            },
            image: Some(ImageSpec {
                preprocess,
                activation: match (&detection, raw.postprocess) {
                    (Some(_), _) => Activation::None,
                    (None, p) => p.map_or(Activation::Softmax, |p| p.activation),
                },
                detection,
            }),
            text: None,
            labels: raw.labels,
            label_groups: raw.label_groups,
        })
    }

    /// The first input (an image model's only one).
    pub fn input(&self) -> &TensorSpec {
        &self.inputs[0].spec
    }

    /// The first output (an image classifier's scores).
    pub fn output(&self) -> &TensorSpec {
        &self.outputs[0]
    }

    /// Number of classes, when the manifest fixes it (image and text classifiers, detectors).
    pub fn classes(&self) -> Option<usize> {
        if self.task == Task::TextClassification {
            return self.output().shape.get(1).and_then(|d| d.fixed());
        }
        let image = self.image.as_ref()?;
        match image.detection.map(|d| d.layout) {
            None => self.output().shape.get(1).and_then(|d| d.fixed()),
            Some(DetectionLayout::BoxesScores) => self.outputs.get(1)?.shape.get(2)?.fixed(),
            Some(DetectionLayout::Yolov8) => self.output().shape.get(1)?.fixed()?.checked_sub(4),
        }
    }

    /// The largest batch the model's inputs admit (`None`: any).
    pub fn max_batch(&self) -> Option<usize> {
        self.inputs
            .iter()
            .filter_map(|i| i.spec.shape.first().and_then(|d| d.fixed()))
            .min()
    }
}

/// Validates a text task's manifest: the tokenizer, which input is which, the output's shape
/// for the task.
fn text_manifest(
    raw: RawManifest,
    task: Task,
    inputs: Vec<InputDecl>,
    outputs: Vec<InputDecl>,
    invalid: &dyn Fn(&str, String) -> ModelError,
) -> Result<Manifest, ModelError> {
    for (field, present) in [
        ("preprocess", raw.preprocess.is_some()),
        ("detection", raw.detection.is_some()),
    ] {
        if present {
            return Err(invalid(field, "belongs to image tasks".into()));
        }
    }
    let t = raw.text.ok_or_else(|| {
        invalid(
            "text",
            "is missing: a text task needs its `tokenizer` file and `max_length`".into(),
        )
    })?;
    check_relative_path(&t.tokenizer).map_err(|r| invalid("text.tokenizer", r))?;
    if t.max_length < 2 || t.max_length > MAX_TOKENS {
        return Err(invalid(
            "text.max_length",
            format!("must be between 2 and {MAX_TOKENS} tokens"),
        ));
    }
    let mut roles = Vec::with_capacity(inputs.len());
    let mut sequence: Option<&str> = None;
    for (i, d) in inputs.iter().enumerate() {
        let field = format!("inputs[{i}]");
        if d.pad.is_some() || d.max_length.is_some() {
            return Err(invalid(
                &field,
                "`pad` and `max_length` come from the tokenizer and `text.max_length` in a text task".into(),
            ));
        }
        let role = TextInput::of_name(&d.spec.name).ok_or_else(|| {
            invalid(
                &format!("{field}.name"),
                format!(
                    "`{}` is not an input a tokenizer gives; expected {}",
                    d.spec.name,
                    TextInput::NAMES
                ),
            )
        })?;
        if !matches!(d.spec.dtype, DType::Int64 | DType::Int32) {
            return Err(invalid(
                &format!("{field}.dtype"),
                format!("`{}`: token inputs are `int64` or `int32`", d.spec.dtype),
            ));
        }
        let name = match (d.spec.shape.as_slice(), d.spec.symbol(1)) {
            ([_, Dim::Dynamic], Some(name)) => name,
            _ => {
                return Err(invalid(
                    &format!("{field}.shape"),
                    format!(
                        "expected [batch, sequence] with the sequence axis named (as `[-1, \"sequence\"]`), found {}",
                        d.spec.shape_string()
                    ),
                ))
            }
        };
        match sequence {
            Some(s) if s != name => {
                return Err(invalid(
                    &format!("{field}.shape"),
                    format!(
                        "the sequence axis is `{name}` here and `{s}` before: one text, one length"
                    ),
                ))
            }
            _ => sequence = Some(name),
        }
        roles.push(role);
    }
    if !roles.contains(&TextInput::Ids) {
        return Err(invalid("inputs", "has no `input_ids`".into()));
    }
    let output = &outputs[0].spec;
    if output.dtype != DType::Float32 {
        return Err(invalid(
            "outputs[0].dtype",
            format!("`{}` is not supported; expected `float32`", output.dtype),
        ));
    }
    let per_token = output.shape.len() == 3 && output.symbol(1) == sequence;
    let pooling = match task {
        Task::TextEmbedding => {
            if t.pooling.is_some() && !per_token {
                return Err(invalid(
                    "text.pooling",
                    "the output is one vector per text already; pooling needs [batch, sequence, hidden] named like the inputs' sequence axis".into(),
                ));
            }
            if !per_token && output.shape.len() != 2 {
                return Err(invalid(
                    "outputs[0].shape",
                    format!(
                        "expected [batch, sequence, hidden] (pooled here) or [batch, hidden], found {}",
                        output.shape_string()
                    ),
                ));
            }
            if output.shape.last().and_then(|d| d.fixed()).is_none() {
                return Err(invalid(
                    "outputs[0].shape",
                    "the embedding's size (last axis) must be fixed".into(),
                ));
            }
            if per_token {
                Some(t.pooling.ok_or_else(|| {
                    invalid(
                        "text.pooling",
                        "is missing: `mean`, `cls` or `max` (how token vectors become one)".into(),
                    )
                })?)
            } else {
                None
            }
        }
        _ => {
            if t.pooling.is_some() || t.normalize.is_some() {
                return Err(invalid(
                    "text",
                    "`pooling` and `normalize` belong to text-embedding models".into(),
                ));
            }
            if output.shape.len() != 2 || output.shape[1].fixed().is_none() {
                return Err(invalid(
                    "outputs[0].shape",
                    format!("expected [batch, classes], found {}", output.shape_string()),
                ));
            }
            None
        }
    };
    if task == Task::TextEmbedding && (raw.labels.is_some() || raw.postprocess.is_some()) {
        return Err(invalid(
            if raw.labels.is_some() {
                "labels"
            } else {
                "postprocess"
            },
            "belongs to classifiers".into(),
        ));
    }
    Ok(Manifest {
        name: raw.name,
        version: raw.version,
        task,
        onnx: raw.onnx,
        inputs,
        outputs: outputs.into_iter().map(|d| d.spec).collect(),
        image: None,
        text: Some(TextSpec {
            tokenizer: t.tokenizer,
            max_length: t.max_length,
            roles,
            pooling,
            normalize: t.normalize.unwrap_or(true),
            activation: raw
                .postprocess
                .map_or(Activation::Softmax, |p| p.activation),
        }),
        labels: raw.labels,
        label_groups: raw.label_groups,
    })
}

/// Checks a detector's thresholds and that its outputs have the layout's shapes.
fn check_detection(
    d: RawDetection,
    outputs: &[InputDecl],
    invalid: &dyn Fn(&str, String) -> ModelError,
) -> Result<DetectionSpec, ModelError> {
    for (field, v) in [
        ("detection.score_threshold", d.score_threshold),
        ("detection.iou_threshold", d.iou_threshold),
        ("detection.min_score", d.min_score),
    ] {
        if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
            return Err(invalid(field, format!("{v} is not between 0 and 1")));
        }
    }
    if d.min_score > d.score_threshold {
        return Err(invalid(
            "detection.min_score",
            format!(
                "{} is above the default score_threshold {}",
                d.min_score, d.score_threshold
            ),
        ));
    }
    if d.max_detections == 0 {
        return Err(invalid(
            "detection.max_detections",
            "must be at least 1".into(),
        ));
    }
    let ranks: Vec<usize> = outputs.iter().map(|o| o.spec.shape.len()).collect();
    let fits = match d.layout {
        DetectionLayout::BoxesScores => {
            ranks == [3, 3] && outputs[0].spec.shape[2] == Dim::Fixed(4)
        }
        DetectionLayout::Yolov8 => ranks == [3],
    };
    if !fits {
        let shapes: Vec<String> = outputs.iter().map(|o| o.spec.shape_string()).collect();
        return Err(invalid(
            "outputs",
            match d.layout {
                DetectionLayout::BoxesScores => format!(
                    "layout `boxes-scores` needs boxes [batch, N, 4] and scores [batch, N, classes]; found {}",
                    shapes.join(", ")
                ),
                DetectionLayout::Yolov8 => format!(
                    "layout `yolov8` needs one output [batch, 4 + classes, N]; found {}",
                    shapes.join(", ")
                ),
            },
        ));
    }
    Ok(DetectionSpec {
        layout: d.layout,
        score_threshold: d.score_threshold,
        iou_threshold: d.iou_threshold,
        max_detections: d.max_detections,
        min_score: d.min_score,
    })
}

/// Reads and checks `inputs` or `outputs`: names present and distinct, sizes positive, a batch
/// axis first, `pad` and `max_length` only where an axis can vary.
fn tensors(
    raw: &[RawTensor],
    what: &str,
    invalid: &dyn Fn(&str, String) -> ModelError,
) -> Result<Vec<InputDecl>, ModelError> {
    if raw.is_empty() {
        return Err(invalid(what, "must list at least one tensor".into()));
    }
    let mut out: Vec<InputDecl> = Vec::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
        let field = format!("{what}[{i}]");
        if t.name.is_empty() {
            return Err(invalid(&field, "tensor name must not be empty".into()));
        }
        if out.iter().any(|d| d.spec.name == t.name) {
            return Err(invalid(&field, format!("`{}` is listed twice", t.name)));
        }
        if t.shape.is_empty() {
            return Err(invalid(
                &format!("{field}.shape"),
                "needs at least the batch axis".into(),
            ));
        }
        let mut shape = Vec::with_capacity(t.shape.len());
        let mut symbols = Vec::with_capacity(t.shape.len());
        for d in &t.shape {
            match d {
                RawDim::Size(-1) => {
                    shape.push(Dim::Dynamic);
                    symbols.push(None);
                }
                RawDim::Size(n) if *n > 0 => {
                    shape.push(Dim::Fixed(*n as usize));
                    symbols.push(None);
                }
                RawDim::Size(n) => {
                    return Err(invalid(
                        what,
                        format!(
                            "dimension {n} of `{}`: expected -1, a name or a positive size",
                            t.name
                        ),
                    ))
                }
                RawDim::Name(s) if !s.is_empty() => {
                    shape.push(Dim::Dynamic);
                    symbols.push(Some(s.clone()));
                }
                RawDim::Name(_) => {
                    return Err(invalid(
                        &format!("{field}.shape"),
                        "a dimension name must not be empty".into(),
                    ))
                }
            }
        }
        let varies = shape[1..].contains(&Dim::Dynamic);
        if let Some(pad) = t.pad {
            if !varies {
                return Err(invalid(
                    &format!("{field}.pad"),
                    format!("`{}` has no dynamic axis to pad", t.name),
                ));
            }
            let fits = match t.dtype {
                DType::Float32 | DType::Float16 => pad.is_finite(),
                DType::Bool => pad == 0.0 || pad == 1.0,
                DType::Int64 => pad.fract() == 0.0 && pad.abs() < 9.0e15,
                DType::Int32 => {
                    pad.fract() == 0.0 && (i32::MIN as f64..=i32::MAX as f64).contains(&pad)
                }
                DType::Int8 => pad.fract() == 0.0 && (-128.0..=127.0).contains(&pad),
                DType::Uint8 => pad.fract() == 0.0 && (0.0..=255.0).contains(&pad),
            };
            if !fits {
                return Err(invalid(
                    &format!("{field}.pad"),
                    format!("{pad} is not a {} value", t.dtype),
                ));
            }
        }
        if let Some(max) = t.max_length {
            if max == 0 || !varies {
                return Err(invalid(
                    &format!("{field}.max_length"),
                    format!(
                        "must be positive and needs a dynamic axis; `{}` has shape {}",
                        t.name,
                        singlepoint_core::shape_string(&shape)
                    ),
                ));
            }
        }
        out.push(InputDecl {
            spec: TensorSpec {
                name: t.name.clone(),
                dtype: t.dtype,
                shape,
                symbols,
            },
            pad: t.pad,
            max_length: t.max_length,
        });
    }
    Ok(out)
}

fn check_input_shape(input: &TensorSpec, p: &Preprocess) -> Result<(), String> {
    if input.shape.len() != 4 {
        return Err(format!(
            "expected 4 dimensions for an image batch, found {}",
            input.shape_string()
        ));
    }
    let expected = p.item_shape();
    for (axis, (&declared, &want)) in input.shape[1..].iter().zip(expected.iter()).enumerate() {
        if !declared.admits(want) {
            let layout = match p.layout {
                Layout::Nchw => "NCHW",
                Layout::Nhwc => "NHWC",
            };
            return Err(format!(
                "{} contradicts the preprocessing, which produces [batch, {}, {}, {}] ({layout}); axis {} differs",
                input.shape_string(),
                expected[0],
                expected[1],
                expected[2],
                axis + 1
            ));
        }
    }
    Ok(())
}

/// Model files must stay inside the model's folder: relative, no `..`, no root.
fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    let p = Path::new(path);
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "`{path}` must be a relative path inside the model's folder (no `..`, no leading `/`)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = include_str!("../../../models/efficientnet-lite0/model.json");

    fn parse(text: &str) -> Result<Manifest, ModelError> {
        Manifest::from_json(Path::new("m/model.json"), text)
    }

    #[test]
    fn bundled_manifest_is_valid() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.name, "efficientnet-lite0");
        assert_eq!(m.classes(), Some(1000));
        assert_eq!(
            m.image.as_ref().unwrap().preprocess.item_shape(),
            [3, 224, 224]
        );
        assert_eq!(m.max_batch(), None);
    }

    /// Each case edits the bundled manifest and names the field the error must mention.
    #[test]
    fn invalid_manifests_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "\"onnx\": \"model.onnx\"",
                "\"onnx\": \"../model.onnx\"",
                "onnx",
            ),
            (
                "\"onnx\": \"model.onnx\"",
                "\"onnx\": \"/etc/passwd\"",
                "onnx",
            ),
            (
                "\"labels\": \"labels.txt\"",
                "\"labels\": \"../../x\"",
                "labels",
            ),
            ("[-1, 3, 224, 224]", "[-1, 3, 256, 224]", "inputs[0].shape"),
            ("[-1, 3, 224, 224]", "[-1, 224, 224, 3]", "inputs[0].shape"),
            ("[-1, 3, 224, 224]", "[-1, 3, 224]", "inputs[0].shape"),
            ("[-1, 3, 224, 224]", "[-1, 0, 224, 224]", "inputs"),
            ("[-1, 1000]", "[-1, 1000, 1]", "outputs[0].shape"),
            ("[127.0, 127.0, 127.0]", "[127.0, 127.0]", "preprocess.mean"),
            (
                "[128.0, 128.0, 128.0]",
                "[128.0, 0.0, 128.0]",
                "preprocess.std",
            ),
            (
                "\"crop\": { \"center\": [224, 224], \"rounding\": \"floor\" },",
                "",
                "preprocess.crop",
            ),
            (", \"rounding\": \"floor\"", "", "preprocess.crop.rounding"),
            (
                "\"center\": [224, 224]",
                "\"center\": [300, 224]",
                "preprocess.crop.center",
            ),
            ("\"shorter_side\": 256,", "", "preprocess.resize"),
            ("\"image-classification\"", "\"speech\"", "task"),
            ("\"efficientnet-lite0\"", "\"a/b\"", "name"),
            ("\"scale\": 1.0", "\"scale\": 0.0", "preprocess.scale"),
        ];
        for (from, to, field) in cases {
            assert!(
                GOOD.contains(from),
                "case `{from}` does not edit the manifest"
            );
            let text = GOOD.replacen(from, to, 1);
            match parse(&text) {
                Err(ModelError::InvalidManifest { field: f, file, .. }) => {
                    assert_eq!(&f, field, "editing `{from}` → `{to}`");
                    assert_eq!(file, Path::new("m/model.json"));
                }
                other => panic!(
                    "editing `{from}` → `{to}`: expected an error in `{field}`, got {other:?}"
                ),
            }
        }
    }

    #[test]
    fn syntax_errors_and_unknown_fields_name_the_file() {
        for text in ["{", "[]", &GOOD.replacen("\"task\"", "\"tusk\"", 1)] {
            let err = parse(text).unwrap_err();
            assert!(matches!(err, ModelError::ManifestSyntax { .. }), "{err:?}");
            assert!(err.to_string().contains("m/model.json"), "{err}");
        }
    }

    const TENSOR: &str = r#"{
        "name": "tokens", "task": "tensor", "onnx": "model.onnx",
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": [-1, "sequence"], "pad": 0, "max_length": 64},
            {"name": "attention_mask", "dtype": "int64", "shape": [-1, "sequence"], "pad": 0}
        ],
        "outputs": [{"name": "pooled", "dtype": "float32", "shape": [-1, 8]}]
    }"#;

    #[test]
    fn tensor_manifests_keep_every_tensor_with_its_rules() {
        let m = parse(TENSOR).unwrap();
        assert_eq!(m.task, Task::Tensor);
        assert!(m.image.is_none());
        assert_eq!(m.inputs.len(), 2);
        assert_eq!(m.inputs[0].spec.symbol(1), Some("sequence"));
        assert_eq!(m.inputs[0].pad, Some(0.0));
        assert_eq!(m.inputs[0].max_length, Some(64));
        assert_eq!(m.inputs[1].max_length, None);
        assert_eq!(m.classes(), None);
    }

    /// Each case edits the tensor manifest and names the field the error must mention.
    #[test]
    fn invalid_tensor_manifests_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "\"pad\": 0, \"max_length\": 64",
                "\"pad\": 0.5",
                "inputs[0].pad",
            ),
            (
                "[-1, \"sequence\"], \"pad\": 0, \"max_length\": 64",
                "[-1, 4], \"pad\": 0",
                "inputs[0].pad",
            ),
            (
                "\"max_length\": 64",
                "\"max_length\": 0",
                "inputs[0].max_length",
            ),
            ("\"attention_mask\"", "\"input_ids\"", "inputs[1]"),
            ("[-1, 8]", "[]", "outputs[0].shape"),
            ("[-1, 8]", "[-1, \"\"]", "outputs[0].shape"),
            (
                "\"onnx\": \"model.onnx\",",
                "\"onnx\": \"model.onnx\", \"labels\": \"l.txt\",",
                "labels",
            ),
        ];
        for (from, to, field) in cases {
            assert!(
                TENSOR.contains(from),
                "case `{from}` does not edit the manifest"
            );
            let text = TENSOR.replacen(from, to, 1);
            match parse(&text) {
                Err(ModelError::InvalidManifest { field: f, .. }) => {
                    assert_eq!(&f, field, "editing `{from}` → `{to}`")
                }
                other => panic!("editing `{from}` → `{to}`: expected `{field}`, got {other:?}"),
            }
        }
        // A pad on an image model's fixed-size input has nothing to pad.
        let image = GOOD.replacen("[-1, 3, 224, 224] }", "[-1, 3, 224, 224], \"pad\": 0 }", 1);
        assert_ne!(image, GOOD);
        assert!(
            matches!(parse(&image), Err(ModelError::InvalidManifest { field, .. }) if field == "inputs[0].pad")
        );
    }

    #[test]
    fn shorter_side_resize_rounds_the_longer_side() {
        let r = ResizePolicy::ShorterSide {
            size: 256,
            filter: ResizeFilter::Bilinear,
        };
        assert_eq!(r.target_size(640, 427), (384, 256)); // 383.7
        assert_eq!(r.target_size(451, 300), (385, 256)); // 384.85
        assert_eq!(r.target_size(512, 600), (256, 300));
        assert_eq!(r.target_size(512, 512), (256, 256));
        assert_eq!(r.target_size(1, 100_000), (256, 25_600_000));
    }

    const TEXT: &str = r#"{
        "name": "e", "task": "text-embedding", "onnx": "model.onnx",
        "inputs": [
            { "name": "input_ids", "dtype": "int64", "shape": [-1, "sequence"] },
            { "name": "attention_mask", "dtype": "int64", "shape": [-1, "sequence"] }
        ],
        "outputs": [{ "name": "h", "dtype": "float32", "shape": [-1, "sequence", 8] }],
        "text": { "tokenizer": "tokenizer.json", "max_length": 128, "pooling": "mean" }
    }"#;

    #[test]
    fn text_manifests_say_which_input_is_which_and_how_to_pool() {
        let m = Manifest::from_json(Path::new("m.json"), TEXT).unwrap();
        let t = m.text.unwrap();
        assert_eq!(t.roles, vec![TextInput::Ids, TextInput::Mask]);
        assert_eq!(t.pooling, Some(Pooling::Mean));
        assert!(t.normalize);
        assert_eq!(t.max_length, 128);
    }

    #[test]
    fn invalid_text_manifests_name_the_field() {
        let cases = [
            (r#""input_ids""#, r#""ids""#, "inputs[0].name"),
            (
                r#""pooling": "mean""#,
                r#""pooling": "mean", "x": 1"#,
                "unknown field",
            ),
            (r#", "pooling": "mean""#, "", "text.pooling"),
            (
                r#""max_length": 128"#,
                r#""max_length": 1"#,
                "text.max_length",
            ),
            (
                r#""tokenizer.json""#,
                r#""../tokenizer.json""#,
                "text.tokenizer",
            ),
            (
                r#"[-1, "sequence"] },
            { "name": "attention_mask""#,
                r#"[-1, 16] },
            { "name": "attention_mask""#,
                "inputs[0].shape",
            ),
            (
                r#""int64", "shape": [-1, "sequence"] },
            { "name": "attention_mask", "dtype": "int64""#,
                r#""float32", "shape": [-1, "sequence"] },
            { "name": "attention_mask", "dtype": "int64""#,
                "inputs[0].dtype",
            ),
            (r#""text-embedding""#, r#""text-classification""#, "text"),
        ];
        for (from, to, field) in cases {
            assert!(TEXT.contains(from), "{from}");
            let text = TEXT.replacen(from, to, 1);
            let err = Manifest::from_json(Path::new("m.json"), &text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{from} -> {to}: {err}");
        }
        let no_text = TEXT.replace(
            r#""text": { "tokenizer": "tokenizer.json", "max_length": 128, "pooling": "mean" }"#,
            r#""labels": "l.txt""#,
        );
        let err = Manifest::from_json(Path::new("m.json"), &no_text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("labels") || err.contains("text"), "{err}");
    }
}
