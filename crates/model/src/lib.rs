//! Everything about a model except running it: the `model.json` manifest ([`manifest`]), its
//! labels and label groups ([`labels`]), decoding image bytes ([`decode`]) and turning them
//! into input tensors ([`preprocess`]), and reading outputs back as ranked classes.
//!
//! [`Model`] is a loaded, validated model folder: manifest, ONNX bytes, labels, and the
//! [`ModelDigest`] that identifies everything that changes its answers. Engines
//! (`singlepoint-backend`) take the ONNX bytes; the pipeline (`singlepoint-runtime`) takes the
//! rest.

pub mod decode;
pub mod init;
pub mod labels;
pub mod manifest;
pub mod onnx;
pub mod preprocess;
pub mod text;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use singlepoint_core::{Dim, ModelDigest, TensorSpec};

pub use decode::{decode_rgb, DecodeError, DecodeInfo, DecodeLimits, RgbImage};
pub use labels::{classify_row, ClassScore, Classification, LabelGroups, Labels};
pub use manifest::{
    Activation, DetectionLayout, DetectionSpec, ImageSpec, InputDecl, Manifest, Pooling,
    Preprocess, Task, TextInput, TextSpec,
};
pub use preprocess::{PreprocessError, Preprocessor};
pub use text::{Encoded, TextEncoder, TextError};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{file}` is not a valid model.json: {reason}")]
    ManifestSyntax { file: PathBuf, reason: String },
    #[error("`{file}`: field `{field}` {reason}")]
    InvalidManifest {
        file: PathBuf,
        field: String,
        reason: String,
    },
    #[error("`{file}` {reason}")]
    InvalidFile { file: PathBuf, reason: String },
    #[error("`{file}` is not an ONNX model: {reason}")]
    NotOnnx { file: PathBuf, reason: String },
    #[error("`{file}`: field `{field}` declares {declared} but the ONNX model has {actual}")]
    ContradictsModel {
        file: PathBuf,
        field: String,
        declared: String,
        actual: String,
    },
}

/// Whether `dir` holds a model: a `model.json`, or an `.onnx` file to serve as a `tensor`
/// model.
pub fn is_model_dir(dir: &Path) -> bool {
    if dir.join("model.json").is_file() {
        return true;
    }
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "onnx") && e.path().is_file())
    })
}

/// A loaded and validated model: what the pipeline needs to prepare inputs and read outputs,
/// and the ONNX bytes an engine compiles.
#[derive(Clone)]
pub struct Model {
    pub manifest: Manifest,
    /// Where the model came from, for messages: its folder, or `bundled:NAME`.
    pub origin: String,
    /// Path of the manifest, for messages.
    pub manifest_path: PathBuf,
    pub onnx: Arc<[u8]>,
    pub labels: Option<Labels>,
    pub groups: Option<LabelGroups>,
    /// A text model's tokenizer (read and checked at load).
    pub text: Option<Arc<TextEncoder>>,
    pub digest: ModelDigest,
    /// The manifest as written, and a text model's tokenizer file, for tools that write a
    /// new model from this one (`adapt`).
    pub manifest_text: Arc<str>,
    pub tokenizer_json: Option<Arc<[u8]>>,
    /// Every file the manifest names besides the ONNX graph (labels, label groups, the
    /// tokenizer), by its path in the folder, as read: what a derived model copies.
    pub files: Vec<(String, Arc<[u8]>)>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.manifest.name)
            .field("origin", &self.origin)
            .field("digest", &self.digest)
            .finish()
    }
}

impl Model {
    /// Loads a model from a folder holding `model.json`, or from the manifest file itself. A
    /// folder with no manifest and one `.onnx` file is a `tensor` model described by its ONNX
    /// signature (what `singlepoint init` would write).
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let manifest_path = if path.is_dir() {
            path.join("model.json")
        } else {
            path.to_path_buf()
        };
        if path.is_dir() && !manifest_path.exists() {
            return Model::load_bare(path);
        }
        let dir = manifest_path
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let text = std::fs::read_to_string(&manifest_path).map_err(|source| ModelError::Io {
            path: manifest_path.clone(),
            source,
        })?;
        let read = |rel: &str| {
            let p = dir.join(rel);
            std::fs::read(&p).map_err(|source| ModelError::Io { path: p, source })
        };
        Model::from_parts(dir.display().to_string(), &manifest_path, &text, read)
    }

    /// A folder with an ONNX file and no manifest: served as a `tensor` model.
    fn load_bare(dir: &Path) -> Result<Model, ModelError> {
        let io = |source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut onnx_files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "onnx") && p.is_file())
            .collect();
        onnx_files.sort();
        let file = match onnx_files.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(ModelError::InvalidFile {
                    file: dir.join("model.json"),
                    reason: "does not exist, and the folder has no .onnx file to describe".into(),
                })
            }
            many => {
                return Err(ModelError::InvalidFile {
                    file: dir.join("model.json"),
                    reason: format!(
                        "does not exist, and the folder has {} .onnx files; write one with `singlepoint init`",
                        many.len()
                    ),
                })
            }
        };
        let bytes = std::fs::read(&file).map_err(|source| ModelError::Io {
            path: file.clone(),
            source,
        })?;
        let rel = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let text =
            init::describe(&file, &bytes, &init::Options::tensor(&name, &rel)).map_err(|e| {
                ModelError::InvalidFile {
                    file: file.clone(),
                    reason: e.to_string(),
                }
            })?;
        let manifest_path = dir.join("model.json");
        let bytes = std::sync::Mutex::new(Some(bytes));
        Model::from_parts(dir.display().to_string(), &manifest_path, &text, |r| {
            if r == rel {
                if let Some(b) = bytes.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    return Ok(b);
                }
            }
            let p = dir.join(r);
            std::fs::read(&p).map_err(|source| ModelError::Io { path: p, source })
        })
    }

    /// Builds a model from a manifest's text and a function that reads the files it names
    /// (relative paths inside the model's folder).
    pub fn from_parts(
        origin: String,
        manifest_path: &Path,
        manifest_text: &str,
        read: impl Fn(&str) -> Result<Vec<u8>, ModelError>,
    ) -> Result<Model, ModelError> {
        let manifest = Manifest::from_json(manifest_path, manifest_text)?;
        let in_dir = |rel: &str| manifest_path.with_file_name(rel);
        let onnx = read(&manifest.onnx)?;
        onnx::signature(&onnx).map_err(|e| ModelError::NotOnnx {
            file: in_dir(&manifest.onnx),
            reason: match e {
                onnx::SignatureError::NotOnnx(r) => r,
                other => other.to_string(),
            },
        })?;
        let mut files: Vec<(String, Arc<[u8]>)> = Vec::new();
        let (labels, labels_text) = match &manifest.labels {
            Some(rel) => {
                let bytes = read(rel)?;
                files.push((rel.clone(), bytes.as_slice().into()));
                let text = String::from_utf8(bytes).map_err(|_| ModelError::InvalidFile {
                    file: in_dir(rel),
                    reason: "is not UTF-8 text".into(),
                })?;
                (Some(Labels::parse(&in_dir(rel), &text)?), text)
            }
            None => (None, String::new()),
        };
        if let (Some(labels), Some(classes)) = (&labels, manifest.classes()) {
            if labels.len() != classes {
                return Err(ModelError::InvalidFile {
                    file: in_dir(manifest.labels.as_deref().unwrap_or_default()),
                    reason: format!(
                        "has {} class names but `outputs[0].shape` declares {classes} classes",
                        labels.len()
                    ),
                });
            }
        }
        let (groups, groups_text) = match (&manifest.label_groups, &labels) {
            (Some(rel), Some(labels)) => {
                let bytes = read(rel)?;
                files.push((rel.clone(), bytes.as_slice().into()));
                let text = String::from_utf8_lossy(&bytes).into_owned();
                (
                    Some(LabelGroups::parse(&in_dir(rel), &text, labels.len())?),
                    text,
                )
            }
            _ => (None, String::new()),
        };
        let (text, tokenizer) = match &manifest.text {
            Some(spec) => {
                let bytes = read(&spec.tokenizer)?;
                files.push((spec.tokenizer.clone(), bytes.as_slice().into()));
                let encoder = TextEncoder::new(&in_dir(&spec.tokenizer), &bytes, spec.max_length)?;
                (Some(Arc::new(encoder)), bytes)
            }
            None => (None, Vec::new()),
        };
        let digest = model_digest(&manifest, &onnx, &labels_text, &groups_text, &tokenizer);
        let tokenizer_json = manifest.text.as_ref().map(|_| tokenizer.into());
        Ok(Model {
            manifest_text: manifest_text.into(),
            tokenizer_json,
            files,
            manifest,
            origin,
            manifest_path: manifest_path.to_path_buf(),
            onnx: onnx.into(),
            labels,
            groups,
            text,
            digest,
        })
    }

    /// The bundled default model, EfficientNet-Lite0 (ImageNet-1k, Apache-2.0), compiled into
    /// the binary so that `singlepoint classify` works from any directory.
    pub fn bundled() -> Model {
        const MANIFEST: &str = include_str!("../../../models/efficientnet-lite0/model.json");
        const ONNX: &[u8] = include_bytes!("../../../models/efficientnet-lite0/model.onnx");
        const LABELS: &[u8] = include_bytes!("../../../models/efficientnet-lite0/labels.txt");
        const GROUPS: &[u8] =
            include_bytes!("../../../models/efficientnet-lite0/label_groups.json");
        let read = |rel: &str| -> Result<Vec<u8>, ModelError> {
            match rel {
                "model.onnx" => Ok(ONNX.to_vec()),
                "labels.txt" => Ok(LABELS.to_vec()),
                "label_groups.json" => Ok(GROUPS.to_vec()),
                other => Err(ModelError::InvalidFile {
                    file: PathBuf::from(other),
                    reason: "is not part of the bundled model".into(),
                }),
            }
        };
        Model::from_parts(
            "bundled:efficientnet-lite0".into(),
            Path::new("bundled:efficientnet-lite0/model.json"),
            MANIFEST,
            read,
        )
        .expect("the bundled model is validated by the test suite")
    }

    /// The bundled detector, YOLOv3-tiny (COCO-80, permissive: `models/yolov3-tiny/README.md`),
    /// compiled into the binary so that `singlepoint detect` works from any directory.
    pub fn bundled_detector() -> Model {
        const MANIFEST: &str = include_str!("../../../models/yolov3-tiny/model.json");
        const ONNX: &[u8] = include_bytes!("../../../models/yolov3-tiny/model.onnx");
        const LABELS: &[u8] = include_bytes!("../../../models/yolov3-tiny/labels.txt");
        let read = |rel: &str| -> Result<Vec<u8>, ModelError> {
            match rel {
                "model.onnx" => Ok(ONNX.to_vec()),
                "labels.txt" => Ok(LABELS.to_vec()),
                other => Err(ModelError::InvalidFile {
                    file: PathBuf::from(other),
                    reason: "is not part of the bundled detector".into(),
                }),
            }
        };
        Model::from_parts(
            "bundled:yolov3-tiny".into(),
            Path::new("bundled:yolov3-tiny/model.json"),
            MANIFEST,
            read,
        )
        .expect("the bundled detector is validated by the test suite")
    }

    /// The bundled text embedder, all-MiniLM-L6-v2 with int8 weights (Apache-2.0:
    /// `models/all-minilm-l6-v2/README.md`), compiled into the binary so that
    /// `singlepoint embed` works from any directory.
    pub fn bundled_embedder() -> Model {
        const MANIFEST: &str = include_str!("../../../models/all-minilm-l6-v2/model.json");
        const ONNX: &[u8] = include_bytes!("../../../models/all-minilm-l6-v2/model.onnx");
        const TOKENIZER: &[u8] = include_bytes!("../../../models/all-minilm-l6-v2/tokenizer.json");
        let read = |rel: &str| -> Result<Vec<u8>, ModelError> {
            match rel {
                "model.onnx" => Ok(ONNX.to_vec()),
                "tokenizer.json" => Ok(TOKENIZER.to_vec()),
                other => Err(ModelError::InvalidFile {
                    file: PathBuf::from(other),
                    reason: "is not part of the bundled embedder".into(),
                }),
            }
        };
        Model::from_parts(
            "bundled:all-minilm-l6-v2".into(),
            Path::new("bundled:all-minilm-l6-v2/model.json"),
            MANIFEST,
            read,
        )
        .expect("the bundled embedder is validated by the test suite")
    }

    /// Checks the engine's view of the model's inputs and outputs against the manifest, so
    /// that a manifest that contradicts its ONNX file fails at load time with both named. An
    /// image model is checked on its one input and first output; a tensor model on all.
    pub fn check_against(
        &self,
        inputs: &[TensorSpec],
        outputs: &[TensorSpec],
    ) -> Result<(), ModelError> {
        let m = &self.manifest;
        let count = |field: &str, declared: usize, actual: usize| ModelError::ContradictsModel {
            file: self.manifest_path.clone(),
            field: field.to_string(),
            declared: format!("{declared} tensor(s)"),
            actual: format!("{actual}"),
        };
        // An image classifier may have outputs it does not read; other models answer with all.
        let all = m.task != Task::ImageClassification;
        if inputs.len() != m.inputs.len() {
            return Err(count("inputs", m.inputs.len(), inputs.len()));
        }
        if all && outputs.len() != m.outputs.len() {
            return Err(count("outputs", m.outputs.len(), outputs.len()));
        }
        let checked_outputs = if all { outputs.len() } else { 1 };
        let pairs: Vec<(String, &TensorSpec, &TensorSpec)> = m
            .inputs
            .iter()
            .map(|d| &d.spec)
            .zip(inputs)
            .enumerate()
            .map(|(i, (d, a))| (format!("inputs[{i}]"), d, a))
            .chain(
                m.outputs
                    .iter()
                    .zip(outputs)
                    .take(checked_outputs)
                    .enumerate()
                    .map(|(i, (d, a))| (format!("outputs[{i}]"), d, a)),
            )
            .collect();
        for (field, declared, actual) in pairs {
            let contradiction = |what: &str, d: String, a: String| ModelError::ContradictsModel {
                file: self.manifest_path.clone(),
                field: format!("{field}.{what}"),
                declared: d,
                actual: a,
            };
            if declared.name != actual.name {
                return Err(contradiction(
                    "name",
                    format!("`{}`", declared.name),
                    format!("`{}`", actual.name),
                ));
            }
            if declared.dtype != actual.dtype {
                return Err(contradiction(
                    "dtype",
                    declared.dtype.to_string(),
                    actual.dtype.to_string(),
                ));
            }
            let same_rank = declared.shape.len() == actual.shape.len();
            let compatible = same_rank
                && declared
                    .shape
                    .iter()
                    .zip(&actual.shape)
                    .all(|(&d, &a)| d.compatible(a));
            // A manifest may not promise a dynamic batch the model does not have.
            let batch_ok = !(same_rank
                && declared.shape[0] == Dim::Dynamic
                && matches!(actual.shape[0], Dim::Fixed(n) if n != 1));
            if !compatible || !batch_ok {
                return Err(contradiction(
                    "shape",
                    declared.shape_string(),
                    actual.shape_string(),
                ));
            }
        }
        Ok(())
    }
}

/// BLAKE3 over a format tag, the ONNX bytes and every manifest field that changes answers.
/// The model's `name` is deliberately left out: renaming a folder does not change answers.
fn model_digest(
    manifest: &Manifest,
    onnx: &[u8],
    labels: &str,
    groups: &str,
    tokenizer: &[u8],
) -> ModelDigest {
    let mut fields = String::new();
    let _ = writeln!(
        fields,
        "version={}\ntask={}",
        manifest.version,
        manifest.task.as_str()
    );
    for d in &manifest.inputs {
        let t = &d.spec;
        let _ = writeln!(
            fields,
            "input={}:{}:{}:{:?}:pad={:?}:max={:?}",
            t.name,
            t.dtype,
            t.shape_string(),
            t.symbols,
            d.pad.map(f64::to_bits),
            d.max_length
        );
    }
    for t in &manifest.outputs {
        let _ = writeln!(
            fields,
            "output={}:{}:{}:{:?}",
            t.name,
            t.dtype,
            t.shape_string(),
            t.symbols
        );
    }
    if let Some(image) = &manifest.image {
        let p = &image.preprocess;
        let _ = write!(
            fields,
            "color={:?}\nresize={:?}\ncrop={:?}\nscale={}\nmean={:?}\nstd={:?}\nlayout={:?}\nactivation={:?}\n",
            p.color,
            p.resize,
            p.crop,
            p.scale.to_bits(),
            p.mean.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            p.std.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            p.layout,
            image.activation,
        );
        if let Some(d) = &image.detection {
            let _ = writeln!(
                fields,
                "detection={:?}:{}:{}:{}:{}",
                d.layout,
                d.score_threshold.to_bits(),
                d.iou_threshold.to_bits(),
                d.max_detections,
                d.min_score.to_bits()
            );
        }
    }
    if let Some(text) = &manifest.text {
        let _ = writeln!(fields, "{}", text::spec_fields(text));
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"singlepoint-model-identity-v1\0");
    for part in [
        onnx,
        fields.as_bytes(),
        labels.as_bytes(),
        groups.as_bytes(),
    ] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    // Only text models have one (so image models keep the digests they always had).
    if manifest.text.is_some() {
        hasher.update(&(tokenizer.len() as u64).to_le_bytes());
        hasher.update(tokenizer);
    }
    ModelDigest(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/digits-cnn")
    }

    #[test]
    fn bundled_model_loads_with_labels_and_groups() {
        let m = Model::bundled();
        assert_eq!(m.labels.as_ref().map(Labels::len), Some(1000));
        assert_eq!(m.groups.as_ref().and_then(|g| g.group(282)), Some("cat"));
    }

    #[test]
    fn folder_and_manifest_path_load_the_same_model() {
        let a = Model::load(&digits_dir()).unwrap();
        let b = Model::load(&digits_dir().join("model.json")).unwrap();
        assert_eq!(a.digest, b.digest);
    }

    /// Every field that changes answers changes the digest; the name does not.
    #[test]
    fn digest_binds_bytes_and_answer_changing_fields() {
        let dir = digits_dir();
        let text = std::fs::read_to_string(dir.join("model.json")).unwrap();
        let onnx = std::fs::read(dir.join("model.onnx")).unwrap();
        let load = |text: &str, onnx: &[u8], labels: &str| {
            let (onnx, labels) = (onnx.to_vec(), labels.as_bytes().to_vec());
            Model::from_parts("t".into(), Path::new("t/model.json"), text, move |rel| {
                Ok(if rel == "model.onnx" {
                    onnx.clone()
                } else {
                    labels.clone()
                })
            })
            .unwrap()
            .digest
        };
        let labels = "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let base = load(&text, &onnx, labels);
        assert_eq!(
            base,
            load(&text.replace("digits-cnn", "renamed"), &onnx, labels)
        );
        let mut flipped = onnx.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let changed = [
            load(&text, &flipped, labels),
            load(
                &text.replace("\"version\": \"1\"", "\"version\": \"2\""),
                &onnx,
                labels,
            ),
            load(&text.replace("[255.0]", "[254.0]"), &onnx, labels),
            load(
                &text.replace("\"mean\": [0.0]", "\"mean\": [0.5]"),
                &onnx,
                labels,
            ),
            load(&text.replace("\"bilinear\"", "\"bicubic\""), &onnx, labels),
            load(&text.replace("\"softmax\"", "\"none\""), &onnx, labels),
            load(&text, &onnx, "zero\n1\n2\n3\n4\n5\n6\n7\n8\n9\n"),
        ];
        for (i, d) in changed.iter().enumerate() {
            assert_ne!(*d, base, "change {i} kept the digest");
        }
    }

    #[test]
    fn model_file_problems_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(digits_dir().join("model.json")).unwrap();
        std::fs::write(dir.path().join("model.json"), &text).unwrap();
        std::fs::write(
            dir.path().join("labels.txt"),
            "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n",
        )
        .unwrap();
        let err = Model::load(dir.path()).unwrap_err();
        assert!(matches!(err, ModelError::Io { .. }), "{err}");
        assert!(err.to_string().contains("model.onnx"), "{err}");

        std::fs::write(
            dir.path().join("model.onnx"),
            b"\xff\xd8\xff\xe0 not a model",
        )
        .unwrap();
        let err = Model::load(dir.path()).unwrap_err();
        assert!(matches!(err, ModelError::NotOnnx { .. }), "{err}");

        std::fs::copy(
            digits_dir().join("model.onnx"),
            dir.path().join("model.onnx"),
        )
        .unwrap();
        std::fs::write(dir.path().join("labels.txt"), "0\n1\n").unwrap();
        let err = Model::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("10 classes"), "{err}");

        let err = Model::load(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
