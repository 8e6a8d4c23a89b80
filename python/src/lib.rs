//! `singlepoint._native`: the Python package's native module.
//!
//! Everything runs on the runtime's single point (`Classifier` over `ModelService`), as
//! `classify`, `detect` and `embed` do: the same model loading, engine choice, result cache
//! (memory → disk → Redis), coalescing, batching and per-item errors. This module only turns
//! Python values into the runtime's inputs and its answers back into plain tuples, and releases
//! the GIL while the runtime works. `python/singlepoint/__init__.py` builds the documented API
//! (`load_model`, `process_images`, `compute`, result objects) on it.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use singlepoint_backend::EngineOptions;
use singlepoint_cache::{CacheConfig, RedisConfig, RedisTier, ResultCache};
use singlepoint_model::{Classification, DecodeLimits, Model, Task};
use singlepoint_protocol::oip::{self, MemoryTensor};
use singlepoint_runtime::detect::{DetectOptions, Detection};
use singlepoint_runtime::{
    default_batch_size, load_engine, AnswerSource, BackendChoice, Classifier, FrameOptions, Inputs,
    ItemResult, LengthGrouping, MemoryItem, PipelineConfig, RunStats, TextAnswer, TextEntry,
    TextOptions,
};

/// One classified input: (index, path or name, source, label, top classes, error).
type ClassRow = (
    usize,
    String,
    &'static str,
    Option<String>,
    Vec<(String, f32)>,
    Option<String>,
);

/// One tensor model row: (index, source, outputs as (name, OIP datatype, shape, bytes), error).
type TensorRow = (
    usize,
    &'static str,
    Option<Vec<(String, &'static str, Vec<usize>, Py<PyBytes>)>>,
    Option<String>,
);

/// One embedded text: (index, source, little-endian f32 vector, tokens read, tokens of the
/// whole text, error).
type EmbedRow = (
    usize,
    &'static str,
    Option<Py<PyBytes>>,
    usize,
    usize,
    Option<String>,
);

/// One text classified: (index, source, label, top classes, tokens read, whole, error).
type TextClassRow = (
    usize,
    &'static str,
    Option<String>,
    Vec<(String, f32)>,
    usize,
    usize,
    Option<String>,
);

/// One image or frame's detections: (index, path, source, (frame index, time) for a video
/// frame, detections as (label, class, score, [x1, y1, x2, y2]), error).
type DetectRow = (
    usize,
    String,
    &'static str,
    Option<(u64, f64)>,
    Vec<(String, usize, f32, [f32; 4])>,
    Option<String>,
);

fn source_name(source: AnswerSource) -> &'static str {
    source.as_str()
}

fn top(c: &Classification) -> Vec<(String, f32)> {
    c.top
        .iter()
        .map(|s| (s.label.clone(), s.probability))
        .collect()
}

fn class_row(r: ItemResult) -> ClassRow {
    let path = r.path.display().to_string();
    let source = source_name(r.source);
    match r.outcome {
        Ok(c) => (
            r.idx,
            path,
            source,
            Some(c.display_label.clone()),
            top(&c),
            None,
        ),
        Err(e) => (r.idx, path, source, None, Vec::new(), Some(e.to_string())),
    }
}

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn runtime_error(e: impl std::fmt::Display) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

/// The model `spec` names: a manifest, a model folder or a bare ONNX folder, else a bundled
/// model's name; `None` is the bundled image classifier.
fn resolve_model(spec: Option<&str>) -> Result<Model, String> {
    let Some(spec) = spec else {
        return Ok(Model::bundled());
    };
    let path = Path::new(spec);
    if path.exists() {
        return Model::load(path).map_err(|e| format!("cannot load the model `{spec}`: {e}"));
    }
    let bundled: [fn() -> Model; 3] = [
        Model::bundled,
        Model::bundled_detector,
        Model::bundled_embedder,
    ];
    let models: Vec<Model> = bundled.iter().map(|f| f()).collect();
    if let Some(model) = models.iter().position(|m| m.manifest.name == spec) {
        return Ok(models.into_iter().nth(model).expect("found above"));
    }
    let names: Vec<String> = models
        .iter()
        .map(|m| format!("`{}`", m.manifest.name))
        .collect();
    Err(format!(
        "cannot load the model `{spec}`: no such file or folder, and not a bundled model ({})",
        names.join(", ")
    ))
}

/// The result cache the options describe, as the CLI's cache flags open it.
#[allow(clippy::too_many_arguments)]
fn open_cache(
    dir: Option<PathBuf>,
    memory: &str,
    disk: &str,
    ttl: Option<f64>,
    redis: Option<String>,
    namespace: String,
    redis_timeout_ms: u64,
    redis_pool: usize,
) -> Result<ResultCache, String> {
    let size = |name: &str, text: &str| {
        singlepoint_cache::parse_size(text).map_err(|e| format!("`{name}`: {e}"))
    };
    let ttl = match ttl {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => {
            return Err(format!(
                "`cache_ttl` must be a positive number of seconds, not {s}"
            ))
        }
    };
    let disk_bytes = size("cache_disk", disk)?;
    let config = CacheConfig {
        memory_bytes: size("cache_mem", memory)?,
        disk: (disk_bytes > 0).then(|| {
            (
                dir.unwrap_or_else(singlepoint_cache::default_dir),
                disk_bytes,
            )
        }),
        ttl,
        disk_page_cache_bytes: singlepoint_cache::DISK_PAGE_CACHE_BYTES,
    };
    let mut cache = ResultCache::open(&config);
    if let Some(url) = redis {
        if redis_pool == 0 {
            return Err("`cache_redis_pool` must be at least 1".into());
        }
        if redis_timeout_ms == 0 {
            return Err("`cache_redis_timeout_ms` must be at least 1".into());
        }
        let tier = RedisTier::open(RedisConfig {
            url,
            namespace,
            ttl,
            op_timeout: Duration::from_millis(redis_timeout_ms),
            pool_size: redis_pool,
        })?;
        cache = cache.with_redis(tier);
    }
    Ok(cache)
}

/// A loaded model on its engine, with its cache: what `singlepoint.load_model` returns wraps
/// one of these.
#[pyclass(module = "singlepoint._native", frozen)]
struct NativeModel {
    classifier: Classifier,
    engine: &'static str,
    warnings: Vec<String>,
    last: Mutex<Option<RunStats>>,
}

impl NativeModel {
    fn model(&self) -> &Model {
        self.classifier.model()
    }

    fn record(&self, stats: RunStats) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }

    fn require(&self, task: Task, what: &str) -> PyResult<()> {
        let model = self.model();
        if model.manifest.task == task {
            return Ok(());
        }
        Err(value_error(format!(
            "`{}` is a `{}` model; {what}",
            model.manifest.name,
            model.manifest.task.as_str()
        )))
    }
}

#[pymethods]
impl NativeModel {
    #[new]
    #[pyo3(signature = (
        model = None, *, backend = "auto", threads = None, instances = None, batch_size = None,
        top_k = 5, max_pixels = None, cache = true, cache_dir = None, cache_mem = "256MiB",
        cache_disk = "2GiB", cache_ttl = None, cache_redis = None,
        cache_redis_namespace = "singlepoint", cache_redis_timeout_ms = 5, cache_redis_pool = 8,
        fetch = true
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: Option<PathBuf>,
        backend: &str,
        threads: Option<usize>,
        instances: Option<usize>,
        batch_size: Option<usize>,
        top_k: usize,
        max_pixels: Option<u64>,
        cache: bool,
        cache_dir: Option<PathBuf>,
        cache_mem: &str,
        cache_disk: &str,
        cache_ttl: Option<f64>,
        cache_redis: Option<String>,
        cache_redis_namespace: &str,
        cache_redis_timeout_ms: u64,
        cache_redis_pool: usize,
        fetch: bool,
    ) -> PyResult<NativeModel> {
        let cache_redis_namespace = cache_redis_namespace.to_string();
        let choice: BackendChoice = backend.parse().map_err(value_error)?;
        let spec = model.map(|p| p.to_string_lossy().into_owned());
        let (cache_mem, cache_disk) = (cache_mem.to_string(), cache_disk.to_string());
        py.detach(move || {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let threads = threads.unwrap_or(cores);
            if threads == 0 {
                return Err(value_error("`threads` must be at least 1"));
            }
            let instances = instances.unwrap_or(threads);
            if instances == 0 || instances > threads {
                return Err(value_error(format!(
                    "`instances` must be from 1 to `threads` ({threads}), not {instances}"
                )));
            }
            if batch_size == Some(0) {
                return Err(value_error("`batch_size` must be at least 1"));
            }
            let model = Arc::new(resolve_model(spec.as_deref()).map_err(value_error)?);
            let options = EngineOptions {
                threads_per_session: (threads / instances).max(1),
                ..EngineOptions::default()
            };
            let loaded = load_engine(&model, choice, options, fetch).map_err(|e| {
                runtime_error(format!(
                    "cannot start the model `{}`: {e}",
                    model.manifest.name
                ))
            })?;
            let kind = loaded.engine.kind();
            let task = model.manifest.task;
            let text = matches!(task, Task::TextEmbedding | Task::TextClassification);
            let config = PipelineConfig {
                batch_size: batch_size.unwrap_or(match task {
                    Task::ObjectDetection => 1,
                    Task::TextEmbedding | Task::TextClassification => 32,
                    Task::ImageClassification | Task::Tensor => default_batch_size(kind),
                }),
                instances,
                top_k,
                limits: DecodeLimits {
                    max_pixels: max_pixels.unwrap_or(DecodeLimits::DEFAULT_MAX_PIXELS),
                },
                length_grouping: text.then_some(LengthGrouping::DEFAULT),
                ..PipelineConfig::default()
            };
            let mut classifier =
                Classifier::new(model, loaded.engine, config).map_err(value_error)?;
            let mut warnings = loaded.warnings;
            if cache {
                let cache = open_cache(
                    cache_dir,
                    &cache_mem,
                    &cache_disk,
                    cache_ttl,
                    cache_redis,
                    cache_redis_namespace,
                    cache_redis_timeout_ms,
                    cache_redis_pool,
                )
                .map_err(value_error)?;
                warnings.extend(cache.take_warnings());
                classifier = classifier.with_cache(Arc::new(cache));
            }
            Ok(NativeModel {
                classifier,
                engine: kind.as_str(),
                warnings,
                last: Mutex::new(None),
            })
        })
    }

    /// What was said while loading (a fetched runtime, a fallback engine, a cache problem).
    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    /// The model's identity and signature.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let model = self.model();
        let d = PyDict::new(py);
        d.set_item("name", &model.manifest.name)?;
        d.set_item("version", &model.manifest.version)?;
        d.set_item("task", model.manifest.task.as_str())?;
        d.set_item("origin", &model.origin)?;
        d.set_item("digest", model.digest.to_string())?;
        d.set_item("engine", self.engine)?;
        let specs =
            |specs: &[singlepoint_core::TensorSpec]| -> Vec<(String, &'static str, Vec<i64>)> {
                specs
                    .iter()
                    .map(|s| (s.name.clone(), oip::datatype(s.dtype), oip::shape(&s.shape)))
                    .collect()
            };
        d.set_item("inputs", specs(self.classifier.engine().inputs()))?;
        d.set_item("outputs", specs(self.classifier.engine().outputs()))?;
        let config = self.classifier.config();
        d.set_item("batch_size", config.batch_size)?;
        d.set_item("instances", config.instances)?;
        d.set_item("top_k", config.top_k)?;
        d.set_item("cache", self.classifier.cache().is_some())?;
        Ok(d)
    }

    /// Classifies images named by paths, folders (recursive) or glob patterns, in order.
    fn classify_paths(&self, py: Python<'_>, inputs: Vec<String>) -> PyResult<Vec<ClassRow>> {
        self.require(
            Task::ImageClassification,
            "classify takes image-classification models",
        )?;
        self.gather(py, class_row, |c, push| {
            c.run(Inputs::new(inputs, None), push)
        })
    }

    /// Classifies encoded images given as (name, bytes), in order.
    fn classify_bytes(
        &self,
        py: Python<'_>,
        items: Vec<(String, Bound<'_, PyBytes>)>,
    ) -> PyResult<Vec<ClassRow>> {
        self.require(
            Task::ImageClassification,
            "classify takes image-classification models",
        )?;
        let items: Vec<MemoryItem> = items
            .into_iter()
            .map(|(name, data)| MemoryItem {
                name: name.into(),
                input: Ok(singlepoint_protocol::ItemInput::Image(
                    Bytes::copy_from_slice(data.as_bytes()),
                )),
            })
            .collect();
        self.classify_memory(py, items)
    }

    /// Classifies rows of the model's preprocessed input: `datatype` (FP32), `shape` (the
    /// model's, with any batch) and little-endian elements.
    fn classify_tensor(
        &self,
        py: Python<'_>,
        datatype: String,
        shape: Vec<i64>,
        data: Bound<'_, PyBytes>,
    ) -> PyResult<Vec<ClassRow>> {
        self.require(
            Task::ImageClassification,
            "classify takes image-classification models",
        )?;
        let input = &self.classifier.engine().inputs()[0];
        let tensor = MemoryTensor {
            name: input.name.clone(),
            datatype,
            shape,
            data: Bytes::copy_from_slice(data.as_bytes()),
        };
        let items = oip::image_items_from_memory(tensor, input).map_err(value_error)?;
        self.classify_memory(py, rows(items))
    }

    /// Runs a `tensor` model on its inputs, each (name, OIP datatype, shape, little-endian
    /// bytes) with the batch first: one answer per row, every output without the batch axis.
    fn run_tensors(
        &self,
        py: Python<'_>,
        tensors: Vec<(String, String, Vec<i64>, Bound<'_, PyBytes>)>,
    ) -> PyResult<Vec<TensorRow>> {
        self.require(
            Task::Tensor,
            "run takes `tensor` models (tensors in, tensors out)",
        )?;
        let given = tensors
            .into_iter()
            .map(|(name, datatype, shape, data)| MemoryTensor {
                name,
                datatype,
                shape,
                data: Bytes::copy_from_slice(data.as_bytes()),
            })
            .collect();
        let items = oip::tensor_items_from_memory(given, &self.model().manifest.inputs, usize::MAX)
            .map_err(value_error)?;
        let items = rows(items);
        let names: Vec<String> = self
            .model()
            .manifest
            .outputs
            .iter()
            .map(|o| o.name.clone())
            .collect();
        let raw = self.gather(
            py,
            |r| {
                (
                    r.idx,
                    source_name(r.source),
                    r.outcome.map_err(|e| e.to_string()),
                )
            },
            |c, push| c.run_tensors(items.into_iter(), push),
        )?;
        Ok(raw
            .into_iter()
            .map(|(idx, source, outcome)| match outcome {
                Ok(outputs) => {
                    let outputs = outputs
                        .iter()
                        .zip(&names)
                        .map(|(t, name)| {
                            (
                                name.clone(),
                                oip::datatype(t.dtype()),
                                t.shape().to_vec(),
                                PyBytes::new(py, &t.to_le_bytes()).unbind(),
                            )
                        })
                        .collect();
                    (idx, source, Some(outputs), None)
                }
                Err(e) => (idx, source, None, Some(e)),
            })
            .collect())
    }

    /// Embeds texts with a `text-embedding` model, in order.
    #[pyo3(signature = (texts, truncate = true, normalize = None))]
    fn embed(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        truncate: bool,
        normalize: Option<bool>,
    ) -> PyResult<Vec<EmbedRow>> {
        self.require(Task::TextEmbedding, "embed takes text-embedding models")?;
        let options = TextOptions {
            truncate,
            normalize,
        };
        let raw = self.gather(
            py,
            |r: ItemResult<TextAnswer<Vec<f32>>>| {
                (
                    r.idx,
                    source_name(r.source),
                    r.outcome.map_err(|e| e.to_string()),
                )
            },
            |c, push| c.embed(text_entries(texts), options, push),
        )?;
        Ok(raw
            .into_iter()
            .map(|(idx, source, outcome)| match outcome {
                Ok(a) => {
                    let bytes: Vec<u8> = a.answer.iter().flat_map(|x| x.to_le_bytes()).collect();
                    let vector = PyBytes::new(py, &bytes).unbind();
                    (idx, source, Some(vector), a.tokens, a.whole, None)
                }
                Err(e) => (idx, source, None, 0, 0, Some(e)),
            })
            .collect())
    }

    /// Classifies texts with a `text-classification` model, in order.
    #[pyo3(signature = (texts, truncate = true))]
    fn classify_texts(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        truncate: bool,
    ) -> PyResult<Vec<TextClassRow>> {
        self.require(
            Task::TextClassification,
            "classify_texts takes text-classification models",
        )?;
        let options = TextOptions {
            truncate,
            normalize: None,
        };
        let row = |r: ItemResult<TextAnswer<Classification>>| -> TextClassRow {
            let source = source_name(r.source);
            match r.outcome {
                Ok(a) => (
                    r.idx,
                    source,
                    Some(a.answer.display_label.clone()),
                    top(&a.answer),
                    a.tokens,
                    a.whole,
                    None,
                ),
                Err(e) => (r.idx, source, None, Vec::new(), 0, 0, Some(e.to_string())),
            }
        };
        self.gather(py, row, |c, push| {
            c.classify_texts(text_entries(texts), options, push)
        })
    }

    /// Detects objects in images and videos named by paths, folders or glob patterns.
    #[pyo3(signature = (inputs, score = None, iou = None, max_detections = None, classes = None, fps = None))]
    #[allow(clippy::too_many_arguments)]
    fn detect_paths(
        &self,
        py: Python<'_>,
        inputs: Vec<String>,
        score: Option<f32>,
        iou: Option<f32>,
        max_detections: Option<usize>,
        classes: Option<Vec<String>>,
        fps: Option<f64>,
    ) -> PyResult<Vec<DetectRow>> {
        self.require(
            Task::ObjectDetection,
            "detect takes object-detection models",
        )?;
        let model = self.model();
        let spec = model
            .manifest
            .image
            .as_ref()
            .and_then(|i| i.detection)
            .ok_or_else(|| value_error("the model has no detection section"))?;
        let options = DetectOptions::from_request(
            model,
            &spec,
            score,
            iou,
            max_detections,
            classes.as_deref(),
        )
        .map_err(value_error)?;
        let frames = FrameOptions {
            fps,
            ..FrameOptions::default()
        };
        let row = |r: ItemResult<Vec<Detection>>| -> DetectRow {
            let path = r.path.display().to_string();
            let source = source_name(r.source);
            let frame = r.frame.map(|f| (f.index, f.time));
            match r.outcome {
                Ok(found) => (r.idx, path, source, frame, detections(found), None),
                Err(e) => (r.idx, path, source, frame, Vec::new(), Some(e.to_string())),
            }
        };
        self.gather(py, row, |c, push| {
            c.detect(
                Inputs::new(inputs, None).with_videos(),
                options,
                frames,
                push,
            )
        })
    }

    /// What the last call counted: items, failures, engine runs, cache hits, seconds.
    fn last_run<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = last.as_ref() else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("items", s.items)?;
        d.set_item("failed", s.failed)?;
        d.set_item("model_executions", s.model_executions)?;
        d.set_item("cache_hits", s.cache_hits)?;
        d.set_item("coalesced", s.coalesced)?;
        d.set_item("wall_s", s.wall.as_secs_f64())?;
        Ok(Some(d))
    }

    /// Waits, at most `timeout` seconds, until the answers queued for the Redis tier are
    /// written (Redis writes go behind the answers); whether they all were. True without Redis.
    #[pyo3(signature = (timeout = 10.0))]
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        if !(timeout.is_finite() && timeout >= 0.0) {
            return Err(value_error(format!(
                "`timeout` must be 0 or more seconds, not {timeout}"
            )));
        }
        let Some(redis) = self.classifier.cache().and_then(|c| c.redis()) else {
            return Ok(true);
        };
        Ok(py.detach(|| redis.flush(Duration::from_secs_f64(timeout))))
    }

    /// The result cache's counters since the model was loaded (`None` without a cache).
    fn cache_stats<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(cache) = self.classifier.cache() else {
            return Ok(None);
        };
        let s = cache.stats();
        let d = PyDict::new(py);
        d.set_item("memory_hits", s.memory_hits)?;
        d.set_item("disk_hits", s.disk_hits)?;
        d.set_item("redis_hits", s.redis_hits)?;
        d.set_item("misses", s.misses)?;
        d.set_item("inserts", s.inserts)?;
        d.set_item("corrupt", s.corrupt)?;
        d.set_item("memory_entries", s.memory_entries)?;
        Ok(Some(d))
    }
}

impl NativeModel {
    fn classify_memory(&self, py: Python<'_>, items: Vec<MemoryItem>) -> PyResult<Vec<ClassRow>> {
        self.gather(py, class_row, |c, push| {
            c.run_memory(items.into_iter(), push)
        })
    }

    /// Runs `run` on the classifier with the GIL released, turning each result into a row with
    /// `row` as it comes; keeps the run's counts for `last_run`.
    fn gather<T, R: Send>(
        &self,
        py: Python<'_>,
        row: impl Fn(ItemResult<T>) -> R + Send,
        run: impl FnOnce(
                &Classifier,
                &mut dyn FnMut(ItemResult<T>) -> ControlFlow<()>,
            ) -> Result<RunStats, singlepoint_runtime::RuntimeError>
            + Send,
    ) -> PyResult<Vec<R>> {
        let classifier = &self.classifier;
        let (rows, stats) = py
            .detach(move || {
                let mut rows = Vec::new();
                let mut push = |r: ItemResult<T>| {
                    rows.push(row(r));
                    ControlFlow::Continue(())
                };
                run(classifier, &mut push).map(|stats| (rows, stats))
            })
            .map_err(runtime_error)?;
        self.record(stats);
        Ok(rows)
    }
}

/// A tensor's rows as items named `row N`, the names their answers are reported under.
fn rows(items: Vec<singlepoint_protocol::ItemInput>) -> Vec<MemoryItem> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, input)| MemoryItem {
            name: format!("row {i}").into(),
            input: Ok(input),
        })
        .collect()
}

fn text_entries(texts: Vec<String>) -> impl Iterator<Item = TextEntry> + Send {
    texts.into_iter().enumerate().map(|(i, text)| TextEntry {
        path: PathBuf::from("text"),
        line: i + 1,
        text: Ok(Arc::from(text)),
    })
}

fn detections(found: Vec<Detection>) -> Vec<(String, usize, f32, [f32; 4])> {
    found
        .into_iter()
        .map(|d| {
            let label = d.label.unwrap_or_else(|| d.class.to_string());
            (label, d.class, d.score, d.bbox)
        })
        .collect()
}

/// The ONNX Runtime release the engine loads, and where from (`None`: not installed yet).
#[pyfunction]
fn onnxruntime() -> PyResult<(String, Option<PathBuf>)> {
    use singlepoint_backend::ort_runtime;
    let located = ort_runtime::locate().map_err(runtime_error)?;
    Ok((
        ort_runtime::ORT_VERSION.to_string(),
        located.map(|l| l.path().to_path_buf()),
    ))
}

/// The image files `patterns` name, as a run takes them: files, folders walked recursively
/// in name order, glob patterns; a name that matches nothing is kept, to fail in its place.
#[pyfunction]
fn expand_inputs(py: Python<'_>, patterns: Vec<String>) -> Vec<String> {
    py.detach(|| {
        Inputs::new(patterns, None)
            .map(|entry| entry.path.display().to_string())
            .collect()
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeModel>()?;
    m.add_function(wrap_pyfunction!(onnxruntime, m)?)?;
    m.add_function(wrap_pyfunction!(expand_inputs, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
