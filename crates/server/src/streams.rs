//! Camera streams: `POST /v1/streams/{id}/detect` takes the next frame (or frames, in a
//! multipart form, in order) of one camera, and `DELETE /v1/streams/{id}` forgets it.
//!
//! A stream is what makes reuse across frames possible over HTTP: with `?reuse=T` the
//! server keeps, per stream, the difference detector's state (`singlepoint_runtime::reuse`)
//! and the answer of the last frame the model ran on; a frame within `T` of it gets that
//! answer, marked `"source": "reused"` with the frame it came from and its age, and a scene cut
//! always runs the model. Without `reuse` every frame runs (or is a cache hit) as on the detect
//! endpoint. Frames of one stream are handled one request at a time, in arrival order (a
//! camera's frames are a sequence); different streams run in parallel. A stream is reset when
//! a request names another model or threshold than the one it was started with; streams idle
//! for ten minutes, and the oldest beyond 4096, are dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use singlepoint_model::{decode_rgb, Task};
use singlepoint_runtime::reuse::{Decision, ReuseGate, Thumbnail};
use singlepoint_runtime::task::Outputs;

use crate::http::{
    deadline, detect_options, detection_values, find_model, read_images, record, wrong_endpoint,
    ApiError, DetectQuery,
};
use crate::service::{ItemError, ItemInput};
use crate::AppState;

const MAX_STREAMS: usize = 4096;
const IDLE: Duration = Duration::from_secs(600);

/// The streams a server keeps.
#[derive(Default)]
pub struct Streams {
    map: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Stream>>>>,
}

impl Streams {
    /// The stream `id`, made when new; idle and surplus streams are dropped first.
    fn get(&self, id: &str) -> Arc<tokio::sync::Mutex<Stream>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(id) {
            return s.clone();
        }
        let now = Instant::now();
        map.retain(|_, s| {
            s.try_lock()
                .map_or(true, |s| now.duration_since(s.last_used) < IDLE)
        });
        while map.len() >= MAX_STREAMS {
            let oldest = map
                .iter()
                .filter_map(|(k, s)| s.try_lock().ok().map(|s| (k.clone(), s.last_used)))
                .min_by_key(|(_, t)| *t)
                .map(|(k, _)| k);
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        let stream = Arc::new(tokio::sync::Mutex::new(Stream::new(String::new(), None)));
        map.insert(id.to_string(), stream.clone());
        stream
    }

    fn remove(&self, id: &str) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id).is_some()
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One camera's state.
struct Stream {
    /// The model and threshold it was started with.
    model: String,
    threshold: Option<f32>,
    gate: Option<ReuseGate>,
    /// Frames received so far (the next frame's number).
    frames: u64,
    /// The last frame the model ran on: its number, when it came, and its answer.
    reference: Option<(u64, Instant, Outputs)>,
    last_used: Instant,
}

impl Stream {
    fn new(model: String, threshold: Option<f32>) -> Stream {
        Stream {
            model,
            threshold,
            gate: threshold.map(ReuseGate::new),
            frames: 0,
            reference: None,
            last_used: Instant::now(),
        }
    }
}

#[derive(Deserialize)]
pub struct StreamQuery {
    /// The detector (default: the only one served).
    model: Option<String>,
    /// Reuse the last computed answer while a frame differs from its frame by less than this
    /// (mean absolute luma difference of 64×64 thumbnails, 0–255).
    reuse: Option<f32>,
    score: Option<f32>,
    iou: Option<f32>,
    max_detections: Option<usize>,
    classes: Option<String>,
}

pub async fn detect_frames(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    request: Request,
) -> Response {
    let t0 = Instant::now();
    let result = detect_inner(&state, &id, query, request).await;
    record(&state, "stream", "stream_detect", t0, result)
}

pub async fn forget(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if state.streams.remove(&id) {
        Json(json!({ "stream": id, "forgotten": true })).into_response()
    } else {
        ApiError::new(StatusCode::NOT_FOUND, format!("no stream `{id}`")).into_response()
    }
}

/// The detector a stream request names, or the only one served.
fn detector_name(state: &AppState, named: Option<&str>) -> Result<String, ApiError> {
    if let Some(name) = named {
        return Ok(name.to_string());
    }
    let models = state.models.snapshot();
    let detectors: Vec<&String> = models
        .iter()
        .filter(|(_, s)| s.model().manifest.task == Task::ObjectDetection)
        .map(|(k, _)| k)
        .collect();
    match detectors.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(ApiError::bad_request(
            "this server has no object-detection model for streams",
        )),
        many => Err(ApiError::bad_request(format!(
            "name the detector with ?model= (this server has {})",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

async fn detect_inner(
    state: &Arc<AppState>,
    id: &str,
    query: Result<Query<StreamQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "a stream id is 1 to 128 characters, none of them control characters",
        ));
    }
    let query = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (multipart, files) = read_images(state, request).await?;
    let name = detector_name(state, query.model.as_deref())?;
    let params = HashMap::from([("name".to_string(), name.clone())]);
    let service = find_model(state, &params)?;
    let model = service.model().clone();
    let Some(spec) = model.manifest.image.as_ref().and_then(|i| i.detection) else {
        return Err(wrong_endpoint(&service, Task::ObjectDetection));
    };
    let options = detect_options(
        &model,
        &spec,
        &DetectQuery {
            score: query.score,
            iou: query.iou,
            max_detections: query.max_detections,
            classes: query.classes.clone(),
        },
    )?;
    if let Some(t) = query.reuse {
        if !(t.is_finite() && (0.0..=255.0).contains(&t)) {
            return Err(ApiError::bad_request(format!(
                "reuse {t} must be a luma difference from 0 to 255"
            )));
        }
    }
    let limits = service.config().limits;
    let stream = state.streams.get(id);
    let mut stream = stream.lock().await;
    if stream.model != name || stream.threshold != query.reuse {
        *stream = Stream::new(name.clone(), query.reuse);
    }
    let mut results = Vec::with_capacity(files.len());
    let mut failures = Vec::new();
    for (file, bytes) in files {
        let frame = stream.frames;
        stream.frames += 1;
        stream.last_used = Instant::now();
        let with_thumb = stream.gate.is_some();
        let decoded = tokio::task::spawn_blocking(move || {
            let decoded = std::panic::catch_unwind(|| decode_rgb(&bytes, &limits, None))
                .map_err(|_| ItemError::DecoderPanic("the image decoder panicked".into()))?;
            let (image, _) = decoded?;
            let thumb = with_thumb
                .then(|| Thumbnail::of(&image.pixels, image.width as usize, image.height as usize));
            Ok::<_, ItemError>((image, thumb))
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let (image, thumb) = match decoded {
            Ok(d) => d,
            Err(e) => {
                results.push(json!({ "name": file, "frame": frame, "error": e.to_string() }));
                failures.push(e);
                continue;
            }
        };
        let decision = match (stream.gate.as_mut(), thumb) {
            (Some(gate), Some(thumb)) => Some(gate.decide(thumb)),
            _ => None,
        };
        if let (Some(Decision::Reuse { difference, .. }), Some((from, at, outputs))) =
            (decision, stream.reference.as_ref())
        {
            results.push(json!({
                "name": file,
                "frame": frame,
                "detections": detection_values(&model, outputs, &options),
                "source": "reused",
                "reused_from": {
                    "frame": from,
                    "age_frames": frame - from,
                    "age_ms": at.elapsed().as_secs_f64() * 1000.0,
                    "difference": (f64::from(difference) * 100.0).round() / 100.0,
                },
            }));
            continue;
        }
        let (until, until_tokio) = deadline(state);
        let input = ItemInput::Pixels {
            width: image.width,
            height: image.height,
            rgb: image.pixels.into(),
        };
        match service.submit(input, until).wait(until_tokio).await {
            Ok((outputs, source)) => {
                results.push(json!({
                    "name": file,
                    "frame": frame,
                    "detections": detection_values(&model, &outputs, &options),
                    "source": source.as_str(),
                }));
                stream.reference = Some((frame, Instant::now(), outputs));
            }
            Err(e) => {
                // Nothing to reuse until a frame is answered again.
                if let Some(gate) = stream.gate.as_mut() {
                    gate.reset();
                }
                stream.reference = None;
                results.push(json!({ "name": file, "frame": frame, "error": e.to_string() }));
                failures.push(e);
            }
        }
    }
    // As on the detect endpoint: a form reports its bad files in place; a lone raw frame
    // that fails fails the request; overload, timeouts and internal errors always do.
    let answers: Vec<crate::service::Answer> = failures.into_iter().map(Err).collect();
    crate::http::image_request_failure(&answers, multipart)?;
    Ok(Json(json!({
        "model": model.manifest.name,
        "stream": id,
        "reuse": query.reuse,
        "results": results,
    }))
    .into_response())
}
