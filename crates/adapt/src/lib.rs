//! The feedback loop: a model adapted to the user's own classes.
//!
//! `adapt` runs a backbone over labelled examples ([`examples`]) through the single point, so
//! features are cached and computed once ([`backbone`]); trains a multinomial logistic-
//! regression head with L2 chosen by k-fold cross-validation ([`train`]); and writes a new model
//! version whose ONNX graph carries the head ([`version`], through `singlepoint-graph`).
//! Corrections posted to a server are kept durably ([`feedback`]) and train the next version,
//! which the server loads while it answers.

pub mod backbone;
pub mod examples;
pub mod feedback;
pub mod train;
pub mod version;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use singlepoint_model::Model;
use singlepoint_runtime::{Classifier, RunStats};

pub use backbone::Backbone;
pub use examples::{Example, Examples};
pub use feedback::{Corrected, FeedbackLog};
pub use train::Trained;
pub use version::{Record, TrainingSet, VersionInfo, Versions};

#[derive(Debug, thiserror::Error)]
pub enum AdaptError {
    #[error("{path}: {reason}")]
    Examples { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{0}")]
    Model(String),
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    Invalid(String),
    #[error("running the backbone: {0}")]
    Run(String),
    #[error("training the head: {0}")]
    Training(String),
}

/// Builds the classifier that runs a features model (the caller's engine, settings and cache).
pub type MakeClassifier<'a> = &'a dyn Fn(Arc<Model>) -> Result<Classifier, String>;

/// How `adapt` trains.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Cross-validation folds (fewer when the smallest class has fewer examples).
    pub folds: usize,
    /// How many times each correction counts in the training set.
    pub feedback_weight: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            folds: 5,
            feedback_weight: 3,
        }
    }
}

/// What one `adapt` run did.
#[derive(Debug)]
pub struct Outcome {
    pub record: Record,
    /// Where the version was written.
    pub dir: PathBuf,
    /// Examples (or corrections) whose features could not be had: `source: reason`.
    pub failed: Vec<String>,
    /// The backbone run over the training examples (cache hits, engine runs).
    pub stats: RunStats,
    /// Held-out: `confusion[true][predicted]` over the training classes.
    pub holdout_confusion: Option<Vec<Vec<usize>>>,
    /// From feedback: the corrections the new head answers with their label, of those used.
    pub corrections_now_right: Option<(usize, usize)>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Classes with at least two examples, two classes at least, after failures.
fn check_counts(classes: &[String], labels: &[usize], failed: &[String]) -> Result<(), AdaptError> {
    for (c, name) in classes.iter().enumerate() {
        let n = labels.iter().filter(|&&l| l == c).count();
        if n < 2 {
            return Err(AdaptError::Invalid(format!(
                "class `{name}` has {n} usable example{} (each class needs two at least){}",
                if n == 1 { "" } else { "s" },
                if failed.is_empty() {
                    String::new()
                } else {
                    format!("; {} failed: {}", failed.len(), failed.join("; "))
                }
            )));
        }
    }
    Ok(())
}

/// Held-out accuracy, items, `confusion[true][predicted]`, and the inputs that failed.
type Evaluation = (f64, usize, Vec<Vec<usize>>, Vec<String>);

/// Accuracy and confusion of `head` on held-out examples labelled by the training classes.
fn evaluate(
    backbone: &Backbone,
    classifier: &Classifier,
    head: &singlepoint_graph::Linear,
    classes: &[String],
    holdout: &Examples,
) -> Result<Evaluation, AdaptError> {
    let mut map = Vec::new();
    for name in &holdout.classes {
        map.push(classes.iter().position(|c| c == name).ok_or_else(|| {
            AdaptError::Invalid(format!(
                "the held-out examples have a class `{name}` the training examples lack \
                 (classes: {})",
                classes.join(", ")
            ))
        })?);
    }
    let lf = backbone.labelled(classifier, holdout)?;
    let predicted = train::predict(head, &lf.features);
    let mut confusion = vec![vec![0; classes.len()]; classes.len()];
    let mut right = 0;
    for (&l, &p) in lf.labels.iter().zip(&predicted) {
        let t = map[l];
        confusion[t][p] += 1;
        right += usize::from(t == p);
    }
    let n = lf.labels.len();
    Ok((right as f64 / n.max(1) as f64, n, confusion, lf.failed))
}

/// Where a new version goes: a plain folder, or the next version in a repository.
pub enum Destination<'a> {
    Folder(&'a Path),
    Repository(&'a Versions),
}

/// Adapts `base` to the classes of `examples`: features, head, held-out accuracy, a new model
/// written to `to` under `name`.
pub fn adapt(
    base: Arc<Model>,
    examples: &Examples,
    holdout: Option<&Examples>,
    make: MakeClassifier<'_>,
    options: Options,
    name: &str,
    to: Destination<'_>,
) -> Result<Outcome, AdaptError> {
    let backbone = Backbone::of(base.clone())?;
    let classifier = make(backbone.features_model.clone()).map_err(AdaptError::Run)?;
    let lf = backbone.labelled(&classifier, examples)?;
    check_counts(&examples.classes, &lf.labels, &lf.failed)?;
    let set = TrainingSet {
        width: backbone.width,
        labels: lf.labels.clone(),
        sources: lf.sources.clone(),
        features: lf.features.clone(),
    };
    finish(
        &backbone,
        &classifier,
        set,
        &examples.classes,
        holdout,
        options,
        name,
        to,
        Provenance {
            base: (
                base.manifest.name.clone(),
                base.origin.clone(),
                base.digest.to_string(),
            ),
            corrections: 0,
            feedback_used: 0,
        },
        lf.failed,
        lf.stats,
        None,
    )
}

/// What a version grew from: the original base model (name, origin, digest).
struct Provenance {
    base: (String, String, String),
    corrections: usize,
    feedback_used: usize,
}

#[allow(clippy::too_many_arguments)]
fn finish(
    backbone: &Backbone,
    classifier: &Classifier,
    set: TrainingSet,
    classes: &[String],
    holdout: Option<&Examples>,
    options: Options,
    name: &str,
    to: Destination<'_>,
    provenance: Provenance,
    mut failed: Vec<String>,
    stats: RunStats,
    corrections: Option<(&[Vec<f32>], &[usize])>,
) -> Result<Outcome, AdaptError> {
    let smallest = (0..classes.len())
        .map(|c| set.labels.iter().filter(|&&l| l == c).count())
        .min()
        .unwrap_or(0);
    let folds = options.folds.clamp(2, smallest.max(2));
    let trained = train::train(&set.features, &set.labels, classes.len(), folds)?;
    let (holdout_accuracy, holdout_items, holdout_confusion) = match holdout {
        Some(h) => {
            let (acc, n, confusion, bad) =
                evaluate(backbone, classifier, &trained.head, classes, h)?;
            failed.extend(bad);
            (Some(acc), n, Some(confusion))
        }
        None => (None, 0, None),
    };
    let corrections_now_right = corrections.map(|(f, l)| {
        let p = train::predict(&trained.head, f);
        (p.iter().zip(l).filter(|(a, b)| a == b).count(), l.len())
    });
    // A repository's version is written to a staging folder and renamed into place.
    let (version, dir) = match &to {
        Destination::Folder(dir) => (1, dir.to_path_buf()),
        Destination::Repository(v) => v.stage()?,
    };
    let (base, base_origin, base_digest) = provenance.base;
    let record = Record {
        name: name.to_string(),
        version,
        base,
        base_origin,
        base_digest,
        features: match &backbone.head_input {
            singlepoint_graph::HeadInput::Vector(t) => t.clone(),
            singlepoint_graph::HeadInput::MeanPool { hidden, .. } => {
                format!("mean of {hidden}")
            }
        },
        width: backbone.width,
        classes: classes.to_vec(),
        examples: (0..classes.len())
            .map(|c| set.labels.iter().filter(|&&l| l == c).count())
            .collect(),
        corrections: provenance.corrections,
        feedback_used: provenance.feedback_used,
        folds: trained.folds,
        alpha: trained.alpha,
        cv: trained.cv.clone(),
        cv_accuracy: trained.accuracy,
        confusion: trained.confusion.clone(),
        holdout_accuracy,
        holdout_items,
        created: now(),
        digest: String::new(),
    };
    let record = version::write_model(&dir, backbone, &trained.head, classes, &set, record)?;
    let dir = match &to {
        Destination::Repository(v) => {
            v.install(version, &dir)?;
            v.version_dir(version)
        }
        Destination::Folder(_) => dir,
    };
    Ok(Outcome {
        record,
        dir,
        failed,
        stats,
        holdout_confusion,
        corrections_now_right,
    })
}

/// Trains the next version of the repository's model from the version served and the
/// corrections logged since it was made, and serves it.
pub fn adapt_from_feedback(
    versions: &Versions,
    holdout: Option<&Examples>,
    make: MakeClassifier<'_>,
    options: Options,
) -> Result<Outcome, AdaptError> {
    let current = versions.current().ok_or_else(|| {
        AdaptError::Invalid(format!(
            "{} has no version yet: run `singlepoint adapt --examples` first",
            versions.link().display()
        ))
    })?;
    let dir = versions.version_dir(current);
    let model = Arc::new(Model::load(&dir).map_err(|e| AdaptError::Model(e.to_string()))?);
    let record = Record::read(&dir)?;
    let mut set = TrainingSet::read(&dir)?;
    let log = FeedbackLog::new(&versions.repo, &versions.name);
    let (entries, _torn) = log.entries()?;
    let new = entries.get(record.feedback_used..).unwrap_or_default();
    if new.is_empty() {
        return Err(AdaptError::Invalid(format!(
            "no corrections for {} since version {current} (the log {} has {} in all)",
            versions.name,
            log.dir().join("log.jsonl").display(),
            entries.len()
        )));
    }
    let mut items = Examples {
        classes: record.classes.clone(),
        ..Examples::default()
    };
    for (i, e) in new.iter().enumerate() {
        let label = record
            .classes
            .iter()
            .position(|c| *c == e.label)
            .ok_or_else(|| {
                AdaptError::Invalid(format!(
                    "correction {} labels an input `{}`, which {} does not have (classes: {})",
                    record.feedback_used + i + 1,
                    e.label,
                    versions.name,
                    record.classes.join(", ")
                ))
            })?;
        items.labels.push(label);
        items.items.push(match (&e.image, &e.text) {
            (Some(hash), _) => Example::Image(log.image_path(hash)),
            (None, Some(text)) => Example::Text {
                text: text.clone(),
                from: format!("correction {}", record.feedback_used + i + 1),
            },
            (None, None) => {
                return Err(AdaptError::Invalid(format!(
                    "correction {} has neither an image nor a text",
                    record.feedback_used + i + 1
                )))
            }
        });
    }
    let backbone = Backbone::of(model.clone())?;
    let classifier = make(backbone.features_model.clone()).map_err(AdaptError::Run)?;
    let lf = backbone.labelled(&classifier, &items)?;
    for (f, (&l, s)) in lf.features.iter().zip(lf.labels.iter().zip(&lf.sources)) {
        for _ in 0..options.feedback_weight.max(1) {
            set.features.push(f.clone());
            set.labels.push(l);
            set.sources.push(s.clone());
        }
    }
    let base = Provenance {
        base: (
            record.base.clone(),
            record.base_origin.clone(),
            record.base_digest.clone(),
        ),
        corrections: record.corrections + lf.labels.len(),
        feedback_used: entries.len(),
    };
    finish(
        &backbone,
        &classifier,
        set,
        &record.classes,
        holdout,
        options,
        &versions.name,
        Destination::Repository(versions),
        base,
        lf.failed.clone(),
        lf.stats.clone(),
        Some((&lf.features, &lf.labels)),
    )
}
