//! `singlepoint adapt` (a head for the user's own classes, trained on a backbone's features,
//! written as a new model version) and `singlepoint versions` (list, roll back).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use singlepoint_adapt::{Destination, Examples, Options, Outcome, Versions};
use singlepoint_backend::EngineOptions;
use singlepoint_model::Model;
use singlepoint_runtime::{load_engine, BackendChoice, Classifier, PipelineConfig};

use crate::cache_args::CacheArgs;

#[derive(Args)]
pub struct AdaptArgs {
    /// Labelled examples: a folder with a subfolder of images for each class, or a TSV file
    /// of `label<TAB>text` lines
    #[arg(
        long,
        value_name = "DIR_OR_TSV",
        required_unless_present = "from_feedback"
    )]
    examples: Option<PathBuf>,

    /// Train the next version of `--repository`/`--name` from the version served and the
    /// corrections posted to POST /v1/models/{name}/feedback since
    #[arg(long, conflicts_with_all = ["examples", "model", "out"], requires = "repository")]
    from_feedback: bool,

    /// The backbone: a model folder or model.json (default: the bundled EfficientNet-Lite0
    /// for images, all-MiniLM-L6-v2 for texts)
    #[arg(long)]
    model: Option<PathBuf>,

    /// Held-out examples (same form as --examples) to measure the new model's accuracy on
    #[arg(long, value_name = "DIR_OR_TSV")]
    holdout: Option<PathBuf>,

    /// Write the new model to this folder
    #[arg(long, value_name = "DIR", conflicts_with = "repository")]
    out: Option<PathBuf>,

    /// Write the new model as the next version of `--name` in this model repository (the one
    /// `serve --model-repository` serves), and serve it
    #[arg(long, value_name = "DIR", requires = "name")]
    repository: Option<PathBuf>,

    /// The new model's name (default: the --out folder's name)
    #[arg(long)]
    name: Option<String>,

    /// Cross-validation folds (fewer when a class has fewer examples)
    #[arg(long, default_value_t = 5)]
    folds: usize,

    /// How many times each correction counts in the training set
    #[arg(long, default_value_t = 3)]
    feedback_weight: usize,

    /// Engine: `ort`, `tract`, or `auto`
    #[arg(long, default_value = "auto", env = "SINGLEPOINT_BACKEND")]
    backend: BackendChoice,

    #[command(flatten)]
    cache: CacheArgs,

    /// Never download ONNX Runtime; fall back to tract when it is not installed
    #[arg(long, env = "SINGLEPOINT_NO_FETCH")]
    no_fetch: bool,
}

#[derive(Args)]
pub struct VersionsArgs {
    /// The model repository
    #[arg(long, value_name = "DIR")]
    repository: PathBuf,

    /// The adapted model
    name: String,

    /// Serve this version (a rollback when it is older); a server polling the repository
    /// loads it while it answers
    #[arg(long = "use", value_name = "N")]
    use_version: Option<u64>,
}

fn read_examples(path: &Path) -> anyhow::Result<Examples> {
    Ok(Examples::read(path)?)
}

pub fn run(args: AdaptArgs) -> anyhow::Result<ExitCode> {
    if args.folds < 2 {
        anyhow::bail!("`--folds` must be at least 2");
    }
    let cache = match args.cache.open()? {
        Some(c) => {
            for warning in c.take_warnings() {
                eprintln!("warning: {warning}");
            }
            Some(Arc::new(c))
        }
        None => None,
    };
    let (backend, no_fetch) = (args.backend, args.no_fetch);
    let make = move |model: Arc<Model>| -> Result<Classifier, String> {
        let loaded = load_engine(&model, backend, EngineOptions::default(), !no_fetch)
            .map_err(|e| format!("cannot start `{}`: {e}", model.manifest.name))?;
        for warning in &loaded.warnings {
            eprintln!("note: {warning}");
        }
        let config = PipelineConfig {
            batch_size: 16,
            instances: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ..PipelineConfig::default()
        };
        let mut classifier =
            Classifier::new(model, loaded.engine, config).map_err(|e| e.to_string())?;
        if let Some(cache) = &cache {
            classifier = classifier.with_cache(cache.clone());
        }
        Ok(classifier)
    };
    let options = Options {
        folds: args.folds,
        feedback_weight: args.feedback_weight,
    };
    let holdout = args.holdout.as_deref().map(read_examples).transpose()?;
    let outcome = if args.from_feedback {
        let repo = args.repository.as_deref().expect("clap requires it");
        let name = args.name.as_deref().expect("clap requires it");
        let versions = Versions::new(repo, name)?;
        singlepoint_adapt::adapt_from_feedback(&versions, holdout.as_ref(), &make, options)?
    } else {
        let path = args.examples.as_deref().expect("clap requires it");
        let examples = read_examples(path)?;
        let base = match &args.model {
            Some(p) => Model::load(p)
                .with_context(|| format!("cannot load the model `{}`", p.display()))?,
            None if examples.is_text() => Model::bundled_embedder(),
            None => Model::bundled(),
        };
        let versions;
        let (name, to) = match (&args.out, &args.repository) {
            (Some(out), _) => {
                let name = match &args.name {
                    Some(n) => n.clone(),
                    None => out
                        .file_name()
                        .and_then(|n| n.to_str())
                        .context("give the model a --name")?
                        .to_string(),
                };
                if out.join("model.json").exists() {
                    anyhow::bail!(
                        "{} already holds a model; give a new folder, or --repository for \
                         versions",
                        out.display()
                    );
                }
                (name, Destination::Folder(out))
            }
            (None, Some(repo)) => {
                let name = args.name.clone().expect("clap requires it");
                versions = Versions::new(repo, &name)?;
                (name, Destination::Repository(&versions))
            }
            (None, None) => anyhow::bail!(
                "say where the new model goes: --out DIR or --repository DIR --name NAME"
            ),
        };
        singlepoint_adapt::adapt(
            Arc::new(base),
            &examples,
            holdout.as_ref(),
            &make,
            options,
            &name,
            to,
        )?
    };
    report(&outcome);
    Ok(ExitCode::SUCCESS)
}

fn report(o: &Outcome) {
    let r = &o.record;
    for f in &o.failed {
        eprintln!("warning: left out {f}");
    }
    println!(
        "{} version {}: {} classes from {} ({} features of `{}`)",
        r.name,
        r.version,
        r.classes.len(),
        r.base,
        r.width,
        r.features
    );
    let counts: Vec<String> = r
        .classes
        .iter()
        .zip(&r.examples)
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    println!("examples: {}", counts.join(", "));
    if r.corrections > 0 {
        println!("corrections from feedback: {}", r.corrections);
    }
    let s = &o.stats;
    println!(
        "backbone: {} inputs, {} computed ({} engine runs), {} from the cache",
        s.items,
        s.items.saturating_sub(s.cache_hits + s.failed),
        s.model_executions,
        s.cache_hits
    );
    println!(
        "{}-fold accuracy {:.4} (L2 alpha {:.3e} chosen from {})",
        r.folds,
        r.cv_accuracy,
        r.alpha,
        r.cv.len()
    );
    print_confusion(
        "confusion (rows: true, columns: predicted), out of fold:",
        &r.classes,
        &r.confusion,
    );
    if let (Some(acc), Some(confusion)) = (r.holdout_accuracy, &o.holdout_confusion) {
        println!("held-out accuracy {acc:.4} on {} examples", r.holdout_items);
        print_confusion("held-out confusion:", &r.classes, confusion);
    }
    if let Some((right, n)) = o.corrections_now_right {
        println!("corrections the new version answers with their label: {right} of {n}");
    }
    println!("written to {} (digest {})", o.dir.display(), r.digest);
}

fn print_confusion(title: &str, classes: &[String], m: &[Vec<usize>]) {
    println!("{title}");
    let w = classes.iter().map(|c| c.len()).max().unwrap_or(1).max(5);
    print!("  {:w$}", "");
    for c in classes {
        print!(" {c:>w$}");
    }
    println!();
    for (c, row) in classes.iter().zip(m) {
        print!("  {c:w$}");
        for n in row {
            print!(" {n:>w$}");
        }
        println!();
    }
}

pub fn versions(args: VersionsArgs) -> anyhow::Result<ExitCode> {
    let versions = Versions::new(&args.repository, &args.name)?;
    if let Some(n) = args.use_version {
        versions.point(n)?;
        println!("{} now serves version {n}", versions.link().display());
        return Ok(ExitCode::SUCCESS);
    }
    let list = versions.list();
    if list.is_empty() {
        anyhow::bail!(
            "{} has no versions in {}",
            args.name,
            versions.dir().display()
        );
    }
    println!("version  served  created(unix)  examples  corrections  k-fold  held-out  digest");
    for v in list {
        match v.record {
            Ok(r) => println!(
                "{:>7}  {:>6}  {:>13}  {:>8}  {:>11}  {:>6.4}  {:>8}  {}",
                v.version,
                if v.current { "*" } else { "" },
                r.created,
                r.examples.iter().sum::<usize>(),
                r.corrections,
                r.cv_accuracy,
                r.holdout_accuracy
                    .map_or("-".to_string(), |a| format!("{a:.4}")),
                r.digest
            ),
            Err(e) => println!("{:>7}  unreadable: {e}", v.version),
        }
    }
    Ok(ExitCode::SUCCESS)
}
