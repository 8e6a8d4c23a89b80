//! Writing an adapted model folder, and the versions of an adapted model in a model
//! repository.
//!
//! In a repository `REPO`, the versions of model `NAME` are folders `REPO/.versions/NAME/1`,
//! `2`, …, each a whole model folder with its `adapt.json` (how it was trained, its accuracy).
//! `REPO/NAME` is a symbolic link to the version served: installing or rolling back replaces
//! the link in one `rename`, so a server polling the repository never sees a half-written
//! folder or none at all, and loads the new version while the old one answers.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;
use singlepoint_graph::Linear;
use singlepoint_model::{Model, Task};

use crate::backbone::{manifest_json, Backbone};
use crate::AdaptError;

/// What `adapt` records in each version it writes (`adapt.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub version: u64,
    /// The model the features came from: its name, origin and digest.
    pub base: String,
    pub base_origin: String,
    pub base_digest: String,
    /// The tensor the head reads, and its width.
    pub features: String,
    pub width: usize,
    pub classes: Vec<String>,
    /// Training examples per class (corrections included).
    pub examples: Vec<usize>,
    /// Corrections from the feedback log in the training set, and how many log entries this
    /// version has consumed.
    pub corrections: usize,
    pub feedback_used: usize,
    pub folds: usize,
    pub alpha: f64,
    /// Mean k-fold accuracy at each alpha tried.
    pub cv: Vec<(f64, f64)>,
    pub cv_accuracy: f64,
    /// `confusion[true][predicted]`, out of fold.
    pub confusion: Vec<Vec<usize>>,
    /// Accuracy on held-out examples, when given.
    pub holdout_accuracy: Option<f64>,
    pub holdout_items: usize,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The new model's digest (hex).
    pub digest: String,
}

impl Record {
    pub fn read(dir: &Path) -> Result<Record, AdaptError> {
        let path = dir.join("adapt.json");
        let text = std::fs::read_to_string(&path).map_err(|e| AdaptError::Io {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| AdaptError::Io {
            path,
            reason: format!("is not an adapt record: {e}"),
        })
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> AdaptError + '_ {
    move |e| AdaptError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), AdaptError> {
    std::fs::write(path, bytes).map_err(io(path))
}

/// The training set a version was made from, kept beside it so that the next version (from
/// feedback) adds to it without the original examples: `training.json` (labels, sources,
/// width) and `training.f32` (the feature rows, little-endian).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingSet {
    pub width: usize,
    pub labels: Vec<usize>,
    pub sources: Vec<String>,
    #[serde(skip)]
    pub features: Vec<Vec<f32>>,
}

impl TrainingSet {
    pub fn write(&self, dir: &Path) -> Result<(), AdaptError> {
        let meta = serde_json::to_vec(self).expect("serialises");
        write_file(&dir.join("training.json"), &meta)?;
        let bytes: Vec<u8> = self
            .features
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        write_file(&dir.join("training.f32"), &bytes)
    }

    pub fn read(dir: &Path) -> Result<TrainingSet, AdaptError> {
        let path = dir.join("training.json");
        let text = std::fs::read(&path).map_err(io(&path))?;
        let mut set: TrainingSet = serde_json::from_slice(&text).map_err(|e| AdaptError::Io {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let path = dir.join("training.f32");
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        if set.width == 0 || bytes.len() != set.labels.len() * set.width * 4 {
            return Err(AdaptError::Io {
                path,
                reason: format!(
                    "holds {} bytes, not {} rows of {} features",
                    bytes.len(),
                    set.labels.len(),
                    set.width
                ),
            });
        }
        set.features = bytes
            .chunks_exact(set.width * 4)
            .map(|row| {
                row.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            })
            .collect();
        Ok(set)
    }
}

/// Writes the adapted model to `dir` (created): the backbone's graph with `head` appended,
/// the base manifest made a classifier of `classes`, labels, the base's tokenizer, the
/// training set and `record` (its digest filled in from the model as loaded back).
pub fn write_model(
    dir: &Path,
    backbone: &Backbone,
    head: &Linear,
    classes: &[String],
    training: &TrainingSet,
    mut record: Record,
) -> Result<Record, AdaptError> {
    let base: &Model = &backbone.base;
    let graph = singlepoint_graph::append_head(
        &backbone.graph,
        &backbone.head_input,
        backbone.normalize_in_head,
        head,
        "logits",
    )
    .map_err(|e| AdaptError::Model(format!("{}: {e}", base.origin)))?;
    let mut manifest = manifest_json(base)?;
    let obj = manifest.as_object_mut().expect("a manifest is an object");
    obj.insert("name".into(), json!(record.name));
    obj.insert("version".into(), json!(record.version.to_string()));
    obj.insert("onnx".into(), json!("model.onnx"));
    obj.insert(
        "outputs".into(),
        json!([{ "name": "logits", "dtype": "float32", "shape": [-1, classes.len()] }]),
    );
    obj.insert("labels".into(), json!("labels.txt"));
    obj.remove("label_groups");
    obj.insert("postprocess".into(), json!({ "activation": "softmax" }));
    if base.manifest.task.is_text() {
        obj.insert("task".into(), json!(Task::TextClassification.as_str()));
        if let Some(t) = obj.get_mut("text").and_then(|t| t.as_object_mut()) {
            t.remove("pooling");
            t.remove("normalize");
            t.insert("tokenizer".into(), json!("tokenizer.json"));
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_file(&dir.join("model.onnx"), &singlepoint_graph::encode(&graph))?;
    let mut labels = classes.join("\n");
    labels.push('\n');
    write_file(&dir.join("labels.txt"), labels.as_bytes())?;
    if let Some(tokenizer) = &base.tokenizer_json {
        write_file(&dir.join("tokenizer.json"), tokenizer)?;
    }
    let text = serde_json::to_string_pretty(&manifest).expect("serialises");
    write_file(&dir.join("model.json"), format!("{text}\n").as_bytes())?;
    training.write(dir)?;
    let model = Model::load(dir).map_err(|e| AdaptError::Model(e.to_string()))?;
    record.digest = model.digest.to_string();
    let json = serde_json::to_string_pretty(&record).expect("serialises");
    write_file(&dir.join("adapt.json"), format!("{json}\n").as_bytes())?;
    Ok(record)
}

/// An adapted model's versions in a model repository.
#[derive(Clone, Debug)]
pub struct Versions {
    pub repo: PathBuf,
    pub name: String,
}

/// One version, as `versions` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionInfo {
    pub version: u64,
    pub record: Result<Record, String>,
    pub current: bool,
}

impl Versions {
    pub fn new(repo: &Path, name: &str) -> Result<Versions, AdaptError> {
        let ok = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            return Err(AdaptError::Invalid(format!(
                "`{name}` is not a model name (letters, digits, `-`, `_` and `.`, not first)"
            )));
        }
        if !repo.is_dir() {
            return Err(AdaptError::Io {
                path: repo.to_path_buf(),
                reason: "is not a folder (the model repository)".into(),
            });
        }
        Ok(Versions {
            repo: repo.to_path_buf(),
            name: name.to_string(),
        })
    }

    /// Where the versions are kept.
    pub fn dir(&self) -> PathBuf {
        self.repo.join(".versions").join(&self.name)
    }

    /// The served folder: a link to the current version.
    pub fn link(&self) -> PathBuf {
        self.repo.join(&self.name)
    }

    /// The version numbers written, ascending.
    pub fn numbers(&self) -> Vec<u64> {
        let mut v: Vec<u64> = std::fs::read_dir(self.dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        v.sort_unstable();
        v
    }

    /// The version the link points at.
    pub fn current(&self) -> Option<u64> {
        let target = std::fs::read_link(self.link()).ok()?;
        target.file_name()?.to_str()?.parse().ok()
    }

    /// The folder of version `n`.
    pub fn version_dir(&self, n: u64) -> PathBuf {
        self.dir().join(n.to_string())
    }

    /// A new folder for the next version (`.tmp-N`, renamed by [`Versions::install`]).
    pub fn stage(&self) -> Result<(u64, PathBuf), AdaptError> {
        self.check_link()?;
        let next = self.numbers().last().map_or(1, |n| n + 1);
        let dir = self.dir().join(format!(".tmp-{next}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok((next, dir))
    }

    /// Makes the staged folder version `n` and serves it.
    pub fn install(&self, n: u64, staged: &Path) -> Result<(), AdaptError> {
        let dir = self.version_dir(n);
        std::fs::rename(staged, &dir).map_err(io(&dir))?;
        self.point(n)
    }

    /// Serves version `n` (a rollback when it is older).
    pub fn point(&self, n: u64) -> Result<(), AdaptError> {
        self.check_link()?;
        let dir = self.version_dir(n);
        if !dir.join("model.json").is_file() {
            let have: Vec<String> = self.numbers().iter().map(u64::to_string).collect();
            return Err(AdaptError::Invalid(format!(
                "{} has no version {n} (it has {})",
                self.name,
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            )));
        }
        Model::load(&dir).map_err(|e| AdaptError::Model(e.to_string()))?;
        let target = Path::new(".versions").join(&self.name).join(n.to_string());
        let tmp = self
            .repo
            .join(format!(".{}.link-{}", self.name, std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        symlink(&target, &tmp).map_err(io(&tmp))?;
        std::fs::rename(&tmp, self.link()).map_err(io(&self.link()))
    }

    /// `REPO/NAME` is either absent or the link adapt made: never a folder of the user's.
    fn check_link(&self) -> Result<(), AdaptError> {
        let link = self.link();
        match std::fs::symlink_metadata(&link) {
            Ok(m) if !m.file_type().is_symlink() => Err(AdaptError::Invalid(format!(
                "{} is a model folder adapt did not write; give the new model another --name",
                link.display()
            ))),
            _ => Ok(()),
        }
    }

    /// Every version, with its record and whether it is served.
    pub fn list(&self) -> Vec<VersionInfo> {
        let current = self.current();
        self.numbers()
            .into_iter()
            .map(|n| VersionInfo {
                version: n,
                record: Record::read(&self.version_dir(n)).map_err(|e| e.to_string()),
                current: current == Some(n),
            })
            .collect()
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "model versions need symbolic links (Unix)",
    ))
}
