//! `singlepoint init model.onnx`: writes the model.json beside a bare ONNX file, from what the
//! file says (inputs, outputs, types, shapes, dimension names) and what the flags add.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use singlepoint_model::init::{describe, ImageOptions, Options};
use singlepoint_model::manifest::{Activation, ColorOrder, CropRounding, ResizeFilter};
use singlepoint_model::{Model, Task};

#[derive(Args)]
pub struct InitArgs {
    /// The ONNX file; model.json is written in its folder
    onnx: PathBuf,

    /// `tensor` (any model: tensors in, tensors out) or `image-classification` (needs the
    /// preprocessing flags below)
    #[arg(long, default_value = "tensor", value_parser = parse_task)]
    task: Task,

    /// The model's name (default: its folder's name)
    #[arg(long)]
    name: Option<String>,

    /// Class names, one per line (image-classification); copied into the model's folder
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,

    /// Pad shorter items of input NAME with VALUE so items of different lengths batch
    /// together (only where the model masks padded positions); repeat per input
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_pad)]
    pad: Vec<(String, f64)>,

    /// The largest size of every dynamic axis besides the batch
    #[arg(long, value_name = "N")]
    max_length: Option<usize>,

    /// Per-channel mean subtracted after scaling (image-classification), e.g. 127,127,127
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    mean: Option<Vec<f32>>,

    /// Per-channel divisor after subtracting the mean (image-classification)
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    std: Option<Vec<f32>>,

    /// Pixels (0..255) are multiplied by this before the mean (default 1)
    #[arg(long)]
    scale: Option<f32>,

    /// Resize the shorter side to N pixels, then centre-crop to the model's input size
    #[arg(long, value_name = "N", conflicts_with = "resize_exact")]
    resize_shorter: Option<u32>,

    /// Stretch images to the model's input size
    #[arg(long)]
    resize_exact: bool,

    /// Resampling filter: nearest, bilinear, bicubic or lanczos3
    #[arg(long, value_parser = parse_filter)]
    filter: Option<ResizeFilter>,

    /// How the centre crop's offset is rounded: `floor` (PIL/TF-slim) or `half_even`
    /// (torchvision)
    #[arg(long, value_parser = parse_rounding)]
    crop_rounding: Option<CropRounding>,

    /// Channel order of a 3-channel model: rgb or bgr (default rgb)
    #[arg(long, value_parser = parse_color)]
    color: Option<ColorOrder>,

    /// `softmax` when the output holds logits, `none` when it holds probabilities
    #[arg(long, value_parser = parse_activation)]
    activation: Option<Activation>,

    /// Replace an existing model.json
    #[arg(long)]
    force: bool,
}

fn parse_task(s: &str) -> Result<Task, String> {
    Task::parse(s).ok_or_else(|| format!("expected {}", Task::NAMES))
}

fn parse_pad(s: &str) -> Result<(String, f64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=VALUE"))?;
    let value: f64 = value
        .parse()
        .map_err(|_| format!("`{value}` is not a number"))?;
    Ok((name.to_string(), value))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}

fn parse_filter(s: &str) -> Result<ResizeFilter, String> {
    from_json(s)
}

fn parse_rounding(s: &str) -> Result<CropRounding, String> {
    from_json(s)
}

fn parse_color(s: &str) -> Result<ColorOrder, String> {
    from_json(s)
}

fn parse_activation(s: &str) -> Result<Activation, String> {
    from_json(s)
}

/// A model name from a folder or file name: what the manifest allows.
fn name_from(path: &Path) -> Option<String> {
    let name: String = path
        .file_stem()?
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_start_matches('.').to_string();
    (!name.is_empty()).then_some(name)
}

pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let onnx = &args.onnx;
    let bytes = std::fs::read(onnx).with_context(|| format!("cannot read `{}`", onnx.display()))?;
    let dir = onnx
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let manifest_path = dir.join("model.json");
    if manifest_path.exists() && !args.force {
        anyhow::bail!(
            "`{}` exists; pass --force to replace it",
            manifest_path.display()
        );
    }
    let absolute = dir.canonicalize().unwrap_or_else(|_| dir.clone());
    let name = args
        .name
        .clone()
        .or_else(|| name_from(&absolute))
        .or_else(|| name_from(onnx))
        .unwrap_or_else(|| "model".into());
    let file_name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let labels = match &args.labels {
        None => None,
        Some(path) => {
            let target = dir.join(file_name(path));
            let same = path.canonicalize().ok() == target.canonicalize().ok();
            if !same {
                std::fs::copy(path, &target).with_context(|| {
                    format!("cannot copy `{}` to `{}`", path.display(), target.display())
                })?;
            }
            Some(file_name(path))
        }
    };
    let options = Options {
        name,
        onnx: file_name(onnx),
        task: Some(args.task),
        labels,
        pads: args.pad.clone(),
        max_length: args.max_length,
        image: ImageOptions {
            mean: args.mean.clone(),
            std: args.std.clone(),
            scale: args.scale,
            shorter_side: args.resize_shorter,
            exact: args.resize_exact,
            filter: args.filter,
            crop_rounding: args.crop_rounding,
            color: args.color,
            activation: args.activation,
        },
    };
    let text = describe(onnx, &bytes, &options)?;
    // Written, then loaded as `serve` will load it; removed again if it does not load.
    std::fs::write(&manifest_path, &text)
        .with_context(|| format!("cannot write `{}`", manifest_path.display()))?;
    match Model::load(&dir) {
        Ok(model) => {
            println!(
                "wrote {} ({} model `{}`, digest {})",
                manifest_path.display(),
                model.manifest.task.as_str(),
                model.manifest.name,
                model.digest.short()
            );
            for d in &model.manifest.inputs {
                if d.pad.is_none() && d.spec.shape[1..].contains(&singlepoint_core::Dim::Dynamic) {
                    println!(
                        "note: input `{}` has dynamic axes and no pad value: only items of one shape batch together (--pad {}=VALUE)",
                        d.spec.name, d.spec.name
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&manifest_path);
            Err(anyhow::Error::new(e)
                .context("the manifest init wrote does not load; nothing was kept"))
        }
    }
}
