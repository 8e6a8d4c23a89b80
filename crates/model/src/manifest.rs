//! `model.json`: what a model is, what it takes, how its inputs are prepared and how its
//! outputs are read. Parsed in two stages (ripgrep style): serde reads the raw JSON
//! (`RawManifest`), then [`Manifest::from_json`] validates it once into plain typed values that
//! the rest of the system trusts without checking again.

use std::path::{Component, Path};

use serde::Deserialize;
use singlepoint_core::{DType, Dim, TensorSpec};

use crate::ModelError;

/// What a model does. Only image classification is served today; text and audio tasks will
/// add variants with their own preprocessing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    ImageClassification,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::ImageClassification => "image-classification",
        }
    }
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
            ResizePolicy::ShorterSide { filter, .. } | ResizePolicy::Exact { filter, .. } => filter,
        }
    }

    /// The size an image of `width` × `height` is resized to.
    pub fn target_size(self, width: u32, height: u32) -> (u32, u32) {
        match self {
            ResizePolicy::Exact { width, height, .. } => (width, height),
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
            (None, ResizePolicy::Exact { width, height, .. }) => (height, width),
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
    /// The output already holds probabilities.
    None,
}

/// A validated `model.json`. File references are relative paths inside the model's folder.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub task: Task,
    pub onnx: String,
    pub input: TensorSpec,
    pub output: TensorSpec,
    pub preprocess: Preprocess,
    pub activation: Activation,
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
    preprocess: RawPreprocess,
    #[serde(default)]
    postprocess: RawPostprocess,
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
    shape: Vec<i64>,
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
    filter: ResizeFilter,
}

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

impl Default for RawPostprocess {
    fn default() -> Self {
        RawPostprocess {
            activation: Activation::Softmax,
        }
    }
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
        let task = match raw.task.as_str() {
            "image-classification" => Task::ImageClassification,
            other => {
                return Err(invalid(
                    "task",
                    format!("`{other}` is not supported; expected `image-classification`"),
                ))
            }
        };
        check_relative_path(&raw.onnx).map_err(|r| invalid("onnx", r))?;
        for (field, value) in [("labels", &raw.labels), ("label_groups", &raw.label_groups)] {
            if let Some(path) = value {
                check_relative_path(path).map_err(|r| invalid(field, r))?;
            }
        }
        if raw.label_groups.is_some() && raw.labels.is_none() {
            return Err(invalid("label_groups", "needs `labels` as well".into()));
        }

        let input = single_tensor(&raw.inputs, "inputs").map_err(|r| invalid("inputs", r))?;
        let output = single_tensor(&raw.outputs, "outputs").map_err(|r| invalid("outputs", r))?;

        let p = raw.preprocess;
        let resize = match (p.resize.shorter_side, p.resize.exact) {
            (Some(size), None) => ResizePolicy::ShorterSide {
                size,
                filter: p.resize.filter,
            },
            (None, Some([height, width])) => ResizePolicy::Exact {
                width,
                height,
                filter: p.resize.filter,
            },
            _ => {
                return Err(invalid(
                    "preprocess.resize",
                    "needs exactly one of `shorter_side` or `exact`".into(),
                ))
            }
        };
        let sides = match resize {
            ResizePolicy::ShorterSide { size, .. } => vec![size],
            ResizePolicy::Exact { width, height, .. } => vec![width, height],
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
        if output.shape.len() != 2 {
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
            input,
            output,
            preprocess,
            activation: raw.postprocess.activation,
            labels: raw.labels,
            label_groups: raw.label_groups,
        })
    }

    /// Number of classes, when the manifest fixes it.
    pub fn classes(&self) -> Option<usize> {
        self.output.shape.get(1).and_then(|d| d.fixed())
    }

    /// The largest batch the model's input admits (`None`: any).
    pub fn max_batch(&self) -> Option<usize> {
        self.input.shape.first().and_then(|d| d.fixed())
    }
}

fn single_tensor(raw: &[RawTensor], what: &str) -> Result<TensorSpec, String> {
    let [t] = raw else {
        return Err(format!(
            "image classification takes exactly one tensor in `{what}`, found {}",
            raw.len()
        ));
    };
    if t.name.is_empty() {
        return Err("tensor name must not be empty".into());
    }
    let shape = t
        .shape
        .iter()
        .map(|&d| match d {
            -1 => Ok(Dim::Dynamic),
            d if d > 0 => Ok(Dim::Fixed(d as usize)),
            d => Err(format!(
                "dimension {d} of `{}`: expected -1 or a positive size",
                t.name
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TensorSpec {
        name: t.name.clone(),
        dtype: t.dtype,
        shape,
    })
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
        assert_eq!(m.preprocess.item_shape(), [3, 224, 224]);
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
}
