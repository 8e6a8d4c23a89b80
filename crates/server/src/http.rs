//! The HTTP surface: routes, handlers, JSON errors, and the metrics exposition.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use singlepoint_protocol::{form, oip};

use crate::metrics::{self, load, render_model_histograms, render_model_values};
use crate::service::{Answer, FailureKind, ItemError, ItemInput, ModelService, Source, Ticket};
use crate::AppState;
use singlepoint_core::{AnyTensor, Buffer, Dim};
use singlepoint_model::Task;
use singlepoint_runtime::detect::DetectOptions;
use singlepoint_runtime::metrics::StageCpu;
use singlepoint_runtime::task::{self, Outputs};

/// An error answered as `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ItemError> for ApiError {
    fn from(f: ItemError) -> ApiError {
        let status = match f.kind() {
            FailureKind::BadInput => StatusCode::BAD_REQUEST,
            FailureKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            FailureKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            FailureKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            FailureKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, f.to_string())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        ApiError::new(r.status(), body_problem(r.status(), &r.body_text()))
    }
}

fn body_problem(status: StatusCode, text: &str) -> String {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("the request body is larger than the server's limit (--max-body): {text}")
    } else {
        format!("cannot read the request body: {text}")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

type ApiResult = Result<Response, ApiError>;

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{name}/classify", post(classify))
        .route("/v1/models/{name}/detect", post(detect))
        .route(
            "/v1/models/{name}/feedback",
            post(crate::feedback::feedback),
        )
        .route(
            "/v1/streams/{id}/detect",
            post(crate::streams::detect_frames),
        )
        .route(
            "/v1/streams/{id}",
            axum::routing::delete(crate::streams::forget),
        )
        .route("/v1/embeddings", post(crate::text::openai_embeddings))
        .route(
            "/v1/audio/transcriptions",
            post(crate::speech::transcriptions),
        )
        .route("/v1/audio/vad", post(crate::speech::vad))
        .route("/embed", post(crate::text::tei_embed))
        .route("/v1/cost", get(cost))
        .route(
            "/v2/repository/index",
            get(repository_index).post(repository_index),
        )
        .route("/v2/repository/models/{name}/load", post(load_model))
        .route("/v2/repository/models/{name}/unload", post(unload_model))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_body_in_time,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_declared_oversize,
        ))
        .with_state(state)
}

/// A body whose Content-Length is over the limit is refused from its headers, before any of it
/// is read (a client sending `Expect: 100-continue` never uploads it). Bodies without a length
/// are cut off by the body limit as they arrive.
async fn refuse_declared_oversize(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = state.config.max_body_bytes;
    match declared {
        Some(n) if n > limit as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than the server's limit (--max-body): {n} bytes declared, {limit} allowed"
            ),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// Reads the whole body before routing, within `--body-timeout` (408 after it: a slow-loris
/// upload holds its connection for that long at most) and `--max-body` (413 past it, for
/// bodies that declared no length or a false one).
async fn read_body_in_time(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    use http_body_util::BodyExt;

    let (parts, body) = request.into_parts();
    let limit = state.config.max_body_bytes;
    let timeout = state.config.body_timeout;
    let read = http_body_util::Limited::new(body, limit).collect();
    let body = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than the server's limit (--max-body): more than {limit} bytes"),
            )
            .into_response()
        }
        Ok(Err(e)) => return ApiError::bad_request(format!("cannot read the request body: {e}")).into_response(),
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within --body-timeout ({timeout:?})"),
            )
            .into_response()
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(body)))
        .await
}

/// Every route, as `openapi.json` must describe it (checked by a test).
pub const ROUTES: &[&str] = &[
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{name}",
    "/v2/models/{name}/versions/{version}",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/versions/{version}/ready",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
    "/v1/models",
    "/v1/models/{name}/classify",
    "/v1/models/{name}/detect",
    "/v1/models/{name}/feedback",
    "/v1/streams/{id}/detect",
    "/v1/streams/{id}",
    "/v1/embeddings",
    "/embed",
    "/v1/cost",
    "/v2/repository/index",
    "/v2/repository/models/{name}/load",
    "/v2/repository/models/{name}/unload",
    "/metrics",
    "/openapi.json",
];

pub const OPENAPI: &str = include_str!("openapi.json");

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no endpoint `{}`; GET /openapi.json lists them", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("`{method}` is not allowed on `{}`", uri.path()),
    )
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI.as_bytes(),
    )
        .into_response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "singlepoint",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "classification"],
    }))
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )
        .into_response();
    }
    Json(json!({ "ready": true })).into_response()
}

/// The model named in the path, at the version named (if any).
pub(crate) fn find_model(
    state: &AppState,
    params: &HashMap<String, String>,
) -> Result<Arc<ModelService>, ApiError> {
    let name = params.get("name").map(String::as_str).unwrap_or_default();
    let service = state.models.get(name).ok_or_else(|| {
        let models = state.models.snapshot();
        let known: Vec<&str> = models.keys().map(String::as_str).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "unknown model `{name}`; this server has {}",
                known.join(", ")
            ),
        )
    })?;
    if let Some(version) = params.get("version") {
        let have = &service.model().manifest.version;
        if version != have {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("model `{name}` has no version `{version}`; it has version `{have}`"),
            ));
        }
    }
    Ok(service)
}

async fn model_metadata(
    State(state): State<Arc<AppState>>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult {
    let service = find_model(&state, &params)?;
    let manifest = &service.model().manifest;
    let describe = |t: &singlepoint_core::TensorSpec| {
        json!({
            "name": t.name,
            "datatype": oip::datatype(t.dtype),
            "shape": oip::shape(&t.shape),
        })
    };
    let (inputs, outputs): (Vec<Value>, Vec<Value>) = if manifest.image.is_some() {
        let mut input = describe(service.input());
        input["parameters"] =
            json!({ "also_accepts": "BYTES [n] of encoded images (binary data)" });
        let outputs = if manifest.task == Task::ObjectDetection {
            let k = Dim::Dynamic;
            oip::DETECT_OUTPUTS
                .iter()
                .map(|&(name, dtype)| {
                    let shape = match name {
                        "num_dets" => vec![Dim::Dynamic, Dim::Fixed(1)],
                        "det_boxes" => vec![Dim::Dynamic, k, Dim::Fixed(4)],
                        _ => vec![Dim::Dynamic, k],
                    };
                    describe(&singlepoint_core::TensorSpec::new(name, dtype, shape))
                })
                .collect()
        } else {
            vec![describe(service.output())]
        };
        (vec![input], outputs)
    } else if manifest.task.is_text() {
        let text = manifest.text.as_ref();
        let input = json!({
            "name": oip::TEXT_INPUT,
            "datatype": "BYTES",
            "shape": [-1],
            "parameters": {
                "max_tokens": text.map(|t| t.max_length),
                "request_parameters": "truncate (cut texts over max_tokens; default refuse), normalize (embeddings)",
            },
        });
        let outputs = crate::text::oip_outputs(service.model())
            .iter()
            .map(describe)
            .collect();
        (vec![input], outputs)
    } else {
        let inputs = manifest
            .inputs
            .iter()
            .map(|d| {
                let mut v = describe(&d.spec);
                let mut params = serde_json::Map::new();
                if let Some(pad) = d.pad {
                    params.insert("pad".into(), json!(pad));
                }
                if let Some(max) = d.max_length {
                    params.insert("max_length".into(), json!(max));
                }
                if !params.is_empty() {
                    v["parameters"] = Value::Object(params);
                }
                v
            })
            .collect();
        (inputs, manifest.outputs.iter().map(describe).collect())
    };
    Ok(Json(json!({
        "name": service.name(),
        "versions": [manifest.version],
        "platform": match service.engine_kind().as_str() {
            "ort" => "onnxruntime_onnx",
            _ => "tract_onnx",
        },
        "task": manifest.task.as_str(),
        "inputs": inputs,
        "outputs": outputs,
    }))
    .into_response())
}

async fn model_ready(
    State(state): State<Arc<AppState>>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult {
    let service = find_model(&state, &params)?;
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ));
    }
    Ok(Json(json!({ "name": service.name(), "ready": true })).into_response())
}

async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let models: Vec<Value> = state
        .models
        .snapshot()
        .values()
        .map(|s| {
            json!({
                "name": s.name(),
                "version": s.model().manifest.version,
                "digest": s.model().digest.to_hex(),
                "engine": s.engine_kind().as_str(),
                "instances": s.config().instances,
                "max_batch_size": s.config().max_batch_size,
            })
        })
        .collect();
    Json(json!({ "models": models }))
}

/// The label for the `model` metric: a served model's name, or `unknown` (so that clients
/// cannot grow the metrics with made-up names).
pub(crate) fn model_label(state: &AppState, params: &HashMap<String, String>) -> String {
    match params.get("name") {
        Some(name) if state.models.get(name).is_some() => name.clone(),
        _ => "unknown".into(),
    }
}

fn outcome_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        429 => "overloaded",
        503 => "unavailable",
        504 => "timeout",
        413 => "too_large",
        400..=499 => "bad_request",
        _ => "error",
    }
}

pub(crate) fn record(
    state: &AppState,
    model: &str,
    endpoint: &'static str,
    t0: Instant,
    result: ApiResult,
) -> Response {
    let response = result.unwrap_or_else(IntoResponse::into_response);
    let status = response.status();
    state
        .requests
        .record(model, endpoint, outcome_label(status), t0.elapsed());
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        tracing::warn!(model, endpoint, status = status.as_u16(), "request failed");
    } else {
        tracing::debug!(
            model,
            endpoint,
            status = status.as_u16(),
            elapsed_ms = t0.elapsed().as_secs_f64() * 1e3,
            "request"
        );
    }
    response
}

pub(crate) fn deadline(state: &AppState) -> (Instant, tokio::time::Instant) {
    let now = Instant::now();
    (
        now + state.config.request_timeout,
        tokio::time::Instant::now() + state.config.request_timeout,
    )
}

/// Submits every item, then waits for all (so they batch together).
pub(crate) async fn run_items(
    state: &AppState,
    service: &ModelService,
    items: Vec<ItemInput>,
) -> Result<Vec<Answer>, ApiError> {
    if items.len() > service.config().max_queue {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} items in one request is more than the queue admits ({}, --max-queue)",
                items.len(),
                service.config().max_queue
            ),
        ));
    }
    // While draining, requests that reached a handler are in flight and are answered: the
    // listener takes no new connections and readiness already says 503.
    let (until, until_tokio) = deadline(state);
    let tickets: Vec<Ticket> = items
        .into_iter()
        .map(|item| service.submit(item, until))
        .collect();
    let mut out = Vec::with_capacity(tickets.len());
    for t in tickets {
        out.push(t.wait(until_tokio).await);
    }
    Ok(out)
}

/// The most serious failure among the outcomes, as the request's status.
fn request_failure(outcomes: &[Answer]) -> Option<ItemError> {
    let rank = |k: FailureKind| match k {
        FailureKind::Unavailable => 0,
        FailureKind::Overloaded => 1,
        FailureKind::Timeout => 2,
        FailureKind::Internal => 3,
        FailureKind::BadInput => 4,
    };
    outcomes
        .iter()
        .filter_map(|o| o.as_ref().err())
        .min_by_key(|f| rank(f.kind()))
        .cloned()
}

async fn infer(
    State(state): State<Arc<AppState>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    let model = model_label(&state, &params);
    let result = infer_inner(&state, &params, &headers, body).await;
    record(&state, &model, "infer", t0, result)
}

async fn infer_inner(
    state: &AppState,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let service = find_model(state, params)?;
    let body = body?;
    let header_len = match headers.get("inference-header-content-length") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "Inference-Header-Content-Length must be a non-negative integer",
                    )
                })?,
        ),
    };
    let manifest = &service.model().manifest;
    if manifest.task == Task::ObjectDetection {
        return infer_detections(state, &service, &body, header_len).await;
    }
    if manifest.task.is_text() {
        let encoded = crate::text::infer_texts(state, &service, &body, header_len).await?;
        return Ok(encoded_response(encoded));
    }
    let image = manifest.image.is_some();
    let request = if image {
        let n_classes = service
            .output()
            .shape
            .last()
            .and_then(|d| d.fixed())
            .unwrap_or(0);
        oip::parse_request(
            &body,
            header_len,
            service.input(),
            service.output(),
            n_classes,
        )
    } else {
        oip::parse_tensor_request(
            &body,
            header_len,
            &manifest.inputs,
            &manifest.outputs,
            service.config().max_queue,
        )
    }
    .map_err(ApiError::bad_request)?;
    let outcomes = run_items(state, &service, request.items).await?;
    if let Some(failure) = request_failure(&outcomes) {
        return Err(failure.into());
    }
    let mut cache_hits = 0;
    let answers: Vec<Outputs> = outcomes
        .into_iter()
        .flatten()
        .map(|(outputs, source)| {
            cache_hits += usize::from(source == Source::Cache);
            outputs
        })
        .collect();
    let encoded = if image {
        let rows: Vec<&[f32]> = answers.iter().map(|a| task::row(a)).collect();
        oip::encode_response(
            service.model(),
            request.id,
            &rows,
            &request.outputs,
            cache_hits,
        )
    } else {
        oip::encode_tensor_response(
            service.model(),
            request.id,
            &answers,
            &request.outputs,
            &manifest.outputs,
            cache_hits,
        )
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?
    };
    Ok(encoded_response(encoded))
}

/// An encoded inference response with its content type (and, binary, its header length).
fn encoded_response(encoded: oip::Encoded) -> Response {
    let mut response = encoded.body.into_response();
    let h = response.headers_mut();
    match encoded.header_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(
                "inference-header-content-length",
                HeaderValue::from(n as u64),
            );
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    response
}

/// Inference-protocol infer on an object detector: encoded images (BYTES) or preprocessed
/// tensors in; `num_dets`, `det_boxes`, `det_scores`, `det_classes` out (the EfficientNMS
/// layout, [`oip::DETECT_OUTPUTS`]), the same detections as `/detect` from the same cache
/// entries, with the request's `score`, `iou`, `max_detections` and `classes` parameters.
async fn infer_detections(
    state: &AppState,
    service: &Arc<ModelService>,
    body: &Bytes,
    header_len: Option<usize>,
) -> ApiResult {
    let model = service.model();
    let spec = model
        .manifest
        .image
        .as_ref()
        .and_then(|i| i.detection)
        .ok_or_else(|| ApiError::bad_request("not an object-detection model"))?;
    let parsed = oip::parse_detect_request(body, header_len, service.input())
        .map_err(ApiError::bad_request)?;
    let options = DetectOptions::from_request(
        model,
        &spec,
        parsed.score,
        parsed.iou,
        parsed.max_detections,
        parsed.classes.as_deref(),
    )
    .map_err(ApiError::bad_request)?;
    let request = parsed.request;
    let outcomes = run_items(state, service, request.items).await?;
    if let Some(failure) = request_failure(&outcomes) {
        return Err(failure.into());
    }
    let mut cache_hits = 0;
    let found: Vec<Vec<singlepoint_runtime::detect::Detection>> = outcomes
        .into_iter()
        .flatten()
        .map(|(outputs, source)| {
            cache_hits += usize::from(source == Source::Cache);
            singlepoint_runtime::detect::detections(model, &outputs, &options)
        })
        .collect();
    let k = found.iter().map(Vec::len).max().unwrap_or(0);
    let answers: Vec<Outputs> = found
        .iter()
        .map(|dets| {
            let mut boxes = vec![0.0f32; k * 4];
            let mut scores = vec![0.0f32; k];
            let mut classes = vec![0i32; k];
            for (i, d) in dets.iter().enumerate() {
                boxes[i * 4..i * 4 + 4].copy_from_slice(&d.bbox);
                scores[i] = d.score;
                classes[i] = d.class as i32;
            }
            let t = |shape: Vec<usize>, data: Buffer| {
                AnyTensor::new(shape, data).expect("shapes match their data")
            };
            vec![
                t(vec![1], Buffer::I32(vec![dets.len() as i32])),
                t(vec![k, 4], Buffer::F32(boxes)),
                t(vec![k], Buffer::F32(scores)),
                t(vec![k], Buffer::I32(classes)),
            ]
            .into()
        })
        .collect();
    let specs: Vec<singlepoint_core::TensorSpec> = oip::DETECT_OUTPUTS
        .iter()
        .map(|&(name, dtype)| singlepoint_core::TensorSpec::new(name, dtype, Vec::new()))
        .collect();
    let encoded = oip::encode_tensor_response(
        model,
        request.id,
        &answers,
        &request.outputs,
        &specs,
        cache_hits,
    )
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(encoded_response(encoded))
}

#[derive(Deserialize)]
struct ClassifyQuery {
    top_k: Option<usize>,
}

async fn classify(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    query: Result<Query<ClassifyQuery>, QueryRejection>,
    request: Request,
) -> Response {
    let t0 = Instant::now();
    let params = HashMap::from([("name".to_string(), name)]);
    let model = model_label(&state, &params);
    let result = classify_inner(&state, &params, query, request).await;
    record(&state, &model, "classify", t0, result)
}

/// The images of a classify or detect request: raw bytes, or a multipart form of files (with
/// whether it was a form). The body is read before the request is judged, so that a client
/// uploading a large body gets the answer rather than a connection closed under it.
pub(crate) async fn read_images(
    state: &Arc<AppState>,
    request: Request,
) -> Result<(bool, Vec<(String, Bytes)>), ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let multipart = form::is_form(&content_type);
    let body = Bytes::from_request(request, state).await?;
    let files: Vec<(String, Bytes)> = if multipart {
        form::parse(&content_type, body)
            .map_err(|e| ApiError::bad_request(e.to_string()))?
            .into_iter()
            .map(|f| (f.name, f.bytes))
            .collect()
    } else {
        if body.is_empty() {
            return Err(ApiError::bad_request(
                "the body is empty; send an image's bytes, or a multipart form of files",
            ));
        }
        vec![("body".to_string(), body)]
    };
    Ok((multipart, files))
}

/// Only a bad file is reported in its place in a form; anything else fails the request, and a
/// request of one raw image fails with its image.
pub(crate) fn image_request_failure(outcomes: &[Answer], multipart: bool) -> Result<(), ApiError> {
    if let Some(f) = request_failure(outcomes).filter(|f| f.kind() != FailureKind::BadInput) {
        return Err(f.into());
    }
    if !multipart {
        if let Some(Err(f)) = outcomes.first() {
            return Err(f.clone().into());
        }
    }
    Ok(())
}

/// The endpoint a model's task is served at, for refusals.
pub(crate) fn wrong_endpoint(service: &ModelService, wanted: Task) -> ApiError {
    let m = &service.model().manifest;
    let serves = match m.task {
        Task::ImageClassification => "POST /v1/models/{name}/classify",
        Task::ObjectDetection => "POST /v1/models/{name}/detect",
        Task::TextEmbedding => "POST /v1/embeddings (OpenAI) and POST /embed (TEI)",
        Task::TextClassification => "POST /v1/models/{name}/classify with a text body",
        Task::Tensor => "POST /v2/models/{name}/infer with its tensors",
    };
    ApiError::bad_request(format!(
        "`{}` is a `{}` model, not `{}`; it is served by {serves}",
        m.name,
        m.task.as_str(),
        wanted.as_str()
    ))
}

async fn classify_inner(
    state: &Arc<AppState>,
    params: &HashMap<String, String>,
    query: Result<Query<ClassifyQuery>, QueryRejection>,
    request: Request,
) -> ApiResult {
    if let Ok(service) = find_model(state, params) {
        if service.model().manifest.task == Task::TextClassification {
            let json = request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.starts_with("application/json"));
            let body = Bytes::from_request(request, state).await?;
            return crate::text::classify_texts(state, service, !json, body).await;
        }
    }
    let (multipart, files) = read_images(state, request).await?;
    let service = find_model(state, params)?;
    if service.model().manifest.task != Task::ImageClassification {
        return Err(wrong_endpoint(&service, Task::ImageClassification));
    }
    let query = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let n_classes = service
        .output()
        .shape
        .last()
        .and_then(|d| d.fixed())
        .unwrap_or(usize::MAX);
    let top_k = query.top_k.unwrap_or(5);
    if top_k == 0 || top_k > n_classes {
        return Err(ApiError::bad_request(format!(
            "top_k must be from 1 to {n_classes}"
        )));
    }
    let (names, items): (Vec<String>, Vec<ItemInput>) = files
        .into_iter()
        .map(|(n, b)| (n, ItemInput::Image(b)))
        .unzip();
    let keys = crate::feedback::keys_for_feedback(state, &service, &items);
    let outcomes = run_items(state, &service, items).await?;
    image_request_failure(&outcomes, multipart)?;
    let model = service.model();
    let results: Vec<Value> = names
        .into_iter()
        .zip(outcomes)
        .enumerate()
        .map(|(i, (name, outcome))| match outcome {
            Ok((outputs, source)) => {
                let c = task::answer(model, task::row(&outputs), top_k);
                // The same shape as `classify --format json`.
                let top: Vec<Value> = c
                    .top
                    .iter()
                    .map(|t| json!({ "class": t.class_idx, "label": t.label, "probability": t.probability }))
                    .collect();
                let mut answer = json!({
                    "name": name,
                    "label": c.display_label,
                    "top_k": top,
                    "cached": source == Source::Cache,
                    "source": source.as_str(),
                });
                if let Some(keys) = &keys {
                    answer["key"] = json!(keys[i]);
                }
                answer
            }
            Err(f) => json!({ "name": name, "error": f.to_string() }),
        })
        .collect();
    Ok(results_response(model, results))
}

#[derive(Deserialize)]
pub(crate) struct DetectQuery {
    pub(crate) score: Option<f32>,
    pub(crate) iou: Option<f32>,
    pub(crate) max_detections: Option<usize>,
    /// Class names, comma-separated.
    pub(crate) classes: Option<String>,
}

/// The classify and detect endpoints' answer: the model and one result per image.
fn results_response(model: &singlepoint_model::Model, results: Vec<Value>) -> Response {
    Json(json!({
        "model": model.manifest.name,
        "model_version": model.manifest.version,
        "results": results,
    }))
    .into_response()
}

/// A detect request's options, validated against the model.
pub(crate) fn detect_options(
    model: &singlepoint_model::Model,
    spec: &singlepoint_model::DetectionSpec,
    query: &DetectQuery,
) -> Result<DetectOptions, ApiError> {
    let classes: Option<Vec<String>> = query.classes.as_ref().map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect()
    });
    DetectOptions::from_request(
        model,
        spec,
        query.score,
        query.iou,
        query.max_detections,
        classes.as_deref(),
    )
    .map_err(ApiError::bad_request)
}

/// One image's detections as the detect endpoints answer them (scores to 5 places, boxes to
/// 2).
pub(crate) fn detection_values(
    model: &singlepoint_model::Model,
    outputs: &Outputs,
    options: &DetectOptions,
) -> Vec<Value> {
    let round = |v: f32, scale: f64| (f64::from(v) * scale).round() / scale;
    singlepoint_runtime::detect::detections(model, outputs, options)
        .iter()
        .map(|d| {
            json!({
                "class": d.class,
                "label": d.label,
                "score": round(d.score, 1e5),
                "box": d.bbox.map(|v| round(v, 100.0)),
            })
        })
        .collect()
}

async fn detect(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    query: Result<Query<DetectQuery>, QueryRejection>,
    request: Request,
) -> Response {
    let t0 = Instant::now();
    let params = HashMap::from([("name".to_string(), name)]);
    let model = model_label(&state, &params);
    let result = detect_inner(&state, &params, query, request).await;
    record(&state, &model, "detect", t0, result)
}

/// `POST /v1/models/{name}/detect`: each image's detections, from its cached candidates when
/// the same bytes were seen (by this endpoint or `singlepoint detect` on the same cache).
async fn detect_inner(
    state: &Arc<AppState>,
    params: &HashMap<String, String>,
    query: Result<Query<DetectQuery>, QueryRejection>,
    request: Request,
) -> ApiResult {
    let (multipart, files) = read_images(state, request).await?;
    let service = find_model(state, params)?;
    let model = service.model();
    let Some(spec) = model.manifest.image.as_ref().and_then(|i| i.detection) else {
        return Err(wrong_endpoint(&service, Task::ObjectDetection));
    };
    let query = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let options = detect_options(model, &spec, &query)?;
    let (names, items): (Vec<String>, Vec<ItemInput>) = files
        .into_iter()
        .map(|(n, b)| (n, ItemInput::Image(b)))
        .unzip();
    let outcomes = run_items(state, &service, items).await?;
    image_request_failure(&outcomes, multipart)?;
    let results: Vec<Value> = names
        .into_iter()
        .zip(outcomes)
        .map(|(name, outcome)| match outcome {
            Ok((outputs, source)) => {
                json!({
                    "name": name,
                    "detections": detection_values(model, &outputs, &options),
                    "cached": source == Source::Cache,
                    "source": source.as_str(),
                })
            }
            Err(f) => json!({ "name": name, "error": f.to_string() }),
        })
        .collect();
    Ok(results_response(model, results))
}

/// The server's cost so far, in the terms of docs/cost-model.md.
pub fn cost_snapshot(state: &AppState) -> Value {
    let (t0, r0) = state.startup;
    let uptime = state.ready_at.elapsed().as_secs_f64();
    let cpu = singlepoint_runtime::cputime::process_cpu_time().as_secs_f64();
    let (mean_rss, peak_rss) = state.rss.read();
    let mut items = 0u64;
    let mut answered_without_model = 0u64;
    let mut busy = 0.0;
    let mut workers = 0;
    let mut models = serde_json::Map::new();
    for (name, s) in &state.models.snapshot() {
        let m = s.metrics();
        let hits = m.cache_hits.load(Ordering::Relaxed);
        let coalesced = m.coalesced.load(Ordering::Relaxed);
        let computed = m.items_computed.load(Ordering::Relaxed);
        let compute = m.compute_seconds.snapshot().sum();
        let decode = m.decode_seconds.snapshot().sum();
        items += hits + coalesced + computed;
        answered_without_model += hits + coalesced;
        busy += compute;
        workers += s.config().instances;
        models.insert(
            name.clone(),
            json!({
                "items": hits + coalesced + computed,
                "cache_hits": hits,
                "coalesced": coalesced,
                "computed": computed,
                "model_executions": m.executions.load(Ordering::Relaxed),
                "decode_seconds_per_computed_item": decode / computed.max(1) as f64,
                "compute_seconds_per_computed_item": compute / computed.max(1) as f64,
            }),
        );
    }
    let gib = mean_rss as f64 / (1u64 << 30) as f64;
    let c = &state.config;
    let total = singlepoint_runtime::cost::price(t0 + uptime, cpu, gib, &c.prices, &c.weights);
    json!({
        "n": items,
        "N": workers,
        "p": answered_without_model as f64 / items.max(1) as f64,
        "q": null,
        "instance_utilization": busy / (workers.max(1) as f64 * uptime.max(1e-9)),
        "t0": t0,
        "r0": r0,
        "uptime_seconds": uptime,
        "cpu_seconds": cpu,
        "cpu_seconds_per_item": (cpu - r0).max(0.0) / items.max(1) as f64,
        "mean_rss_bytes": mean_rss,
        "peak_rss_bytes": peak_rss,
        "prices": c.prices,
        "weights": c.weights,
        "t": total.t,
        "r": total.r,
        "money": total.money,
        "f": total.f,
        "models": models,
    })
}

async fn cost(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(cost_snapshot(&state))
}

/// Label-less metrics: (name, type, help, value).
fn render_plain<'a>(
    out: &mut String,
    items: impl IntoIterator<Item = (&'a str, &'a str, &'a str, f64)>,
) {
    for (name, kind, help, v) in items {
        metrics::header(out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::with_capacity(16 * 1024);
    state.requests.render(&mut out);
    let served = state.models.snapshot();
    let models: Vec<(&str, &ModelService)> = served
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_ref()))
        .collect();
    render_model_histograms(
        &mut out,
        "singlepoint_queue_seconds",
        "Time an item waited in the batch queue before its engine run",
        models
            .iter()
            .map(|(n, s)| (*n, s.metrics().queue_seconds.snapshot())),
    );
    render_model_histograms(
        &mut out,
        "singlepoint_decode_seconds",
        "Time decoding and preprocessing one image",
        models
            .iter()
            .map(|(n, s)| (*n, s.metrics().decode_seconds.snapshot())),
    );
    render_model_histograms(
        &mut out,
        "singlepoint_compute_seconds",
        "Time of one engine run (one batch)",
        models
            .iter()
            .map(|(n, s)| (*n, s.metrics().compute_seconds.snapshot())),
    );
    render_model_histograms(
        &mut out,
        "singlepoint_batch_size",
        "Items per engine run",
        models
            .iter()
            .map(|(n, s)| (*n, s.metrics().batch_size.snapshot())),
    );
    type Read = fn(&ModelService) -> f64;
    let counters: [(&str, &str, Read); 12] = [
        ("singlepoint_model_executions_total", "Engine runs", |s| {
            load(&s.metrics().executions)
        }),
        (
            "singlepoint_items_computed_total",
            "Items run through the model",
            |s| load(&s.metrics().items_computed),
        ),
        (
            "singlepoint_model_cache_hits_total",
            "Items answered by the result cache",
            |s| load(&s.metrics().cache_hits),
        ),
        (
            "singlepoint_model_cache_misses_total",
            "Items the result cache did not have",
            |s| load(&s.metrics().cache_misses),
        ),
        (
            "singlepoint_coalesced_total",
            "Items that shared an identical in-flight computation",
            |s| load(&s.metrics().coalesced),
        ),
        (
            "singlepoint_rejected_total",
            "Items refused because the queue was full",
            |s| load(&s.metrics().rejected),
        ),
        (
            "singlepoint_expired_total",
            "Items dropped from the queue after their deadline",
            |s| load(&s.metrics().expired),
        ),
        (
            "singlepoint_padded_tokens_total",
            "Positions of padded inputs (a text's tokens) holding the items' own values",
            |s| load(&s.metrics().padded_used),
        ),
        (
            "singlepoint_padded_slots_total",
            "Positions of padded inputs run, padding included",
            |s| load(&s.metrics().padded_slots),
        ),
        (
            "singlepoint_inference_cpu_seconds_total",
            "CPU time of the threads running the engine",
            |s| StageCpu::get(&s.metrics().cpu.inference).as_secs_f64(),
        ),
        (
            "singlepoint_preprocess_cpu_seconds_total",
            "CPU time decoding and preprocessing inputs (a text's tokenising)",
            |s| {
                let cpu = &s.metrics().cpu;
                (StageCpu::get(&cpu.decode) + StageCpu::get(&cpu.preprocess)).as_secs_f64()
            },
        ),
        ("singlepoint_instances", "Engine instances", |s| {
            s.config().instances as f64
        }),
    ];
    for (name, help, value) in counters {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        render_model_values(
            &mut out,
            name,
            kind,
            help,
            models.iter().map(|(n, s)| (*n, value(s))),
        );
    }
    render_model_values(
        &mut out,
        "singlepoint_instances_busy",
        "gauge",
        "Engine instances running a batch now",
        models.iter().map(|(n, s)| (*n, s.busy_instances() as f64)),
    );
    let adaptive: Vec<(&str, crate::adaptive::Snapshot)> = models
        .iter()
        .filter_map(|(n, s)| s.adaptive().map(|a| (*n, a.snapshot())))
        .collect();
    if !adaptive.is_empty() {
        type Field = fn(&crate::adaptive::Snapshot) -> f64;
        let fields: [(&str, &str, Field); 7] = [
            (
                "singlepoint_adaptive_max_batch",
                "Batch cap the online controller allows now",
                |a| a.max_batch as f64,
            ),
            (
                "singlepoint_adaptive_queue_delay_seconds",
                "Queue delay the online controller allows now",
                |a| a.delay,
            ),
            (
                "singlepoint_latency_target_seconds",
                "The p99 item latency target (--latency-target)",
                |a| a.target,
            ),
            (
                "singlepoint_item_latency_p99_seconds",
                "p99 of admission-to-answer over the last 512 items",
                |a| a.p99,
            ),
            (
                "singlepoint_arrival_rate",
                "Admitted items per second (smoothed)",
                |a| a.arrival_rate,
            ),
            (
                "singlepoint_latency_model_slope_seconds",
                "a in compute = a*batch + b, fitted online",
                |a| a.fit.map_or(f64::NAN, |f| f.0),
            ),
            (
                "singlepoint_latency_model_intercept_seconds",
                "b in compute = a*batch + b, fitted online",
                |a| a.fit.map_or(f64::NAN, |f| f.1),
            ),
        ];
        for (name, help, field) in fields {
            render_model_values(
                &mut out,
                name,
                "gauge",
                help,
                adaptive.iter().map(|(n, a)| (*n, field(a))),
            );
        }
    }
    render_model_values(
        &mut out,
        "singlepoint_queue_depth",
        "gauge",
        "Items admitted and not yet answered",
        models.iter().map(|(n, s)| (*n, s.queue_depth() as f64)),
    );
    if let Some(cache) = &state.cache {
        let c = cache.stats();
        metrics::header(
            &mut out,
            "singlepoint_cache_hits_total",
            "counter",
            "Result cache hits by tier",
        );
        let _ = writeln!(
            out,
            "singlepoint_cache_hits_total{{tier=\"memory\"}} {}",
            c.memory_hits
        );
        let _ = writeln!(
            out,
            "singlepoint_cache_hits_total{{tier=\"disk\"}} {}",
            c.disk_hits
        );
        if let Some(r) = cache.redis() {
            let rs = r.stats();
            let _ = writeln!(
                out,
                "singlepoint_cache_hits_total{{tier=\"redis\"}} {}",
                c.redis_hits
            );
            let redis: [(&str, &str, &str, u64); 6] = [
                (
                    "singlepoint_redis_up",
                    "gauge",
                    "1 while the Redis tier answers",
                    u64::from(rs.up),
                ),
                (
                    "singlepoint_redis_misses_total",
                    "counter",
                    "Redis lookups that found nothing",
                    rs.misses,
                ),
                (
                    "singlepoint_redis_errors_total",
                    "counter",
                    "Redis operations that failed or timed out",
                    rs.errors,
                ),
                (
                    "singlepoint_redis_garbage_total",
                    "counter",
                    "Redis values that failed their checks (deleted, a miss)",
                    rs.garbage,
                ),
                (
                    "singlepoint_redis_writes_total",
                    "counter",
                    "Answers written to Redis (behind the response)",
                    rs.writes,
                ),
                (
                    "singlepoint_redis_dropped_writes_total",
                    "counter",
                    "Answers not written: Redis down or the queue full",
                    rs.dropped_writes,
                ),
            ];
            render_plain(&mut out, redis.map(|(n, k, h, v)| (n, k, h, v as f64)));
        }
        let plain: [(&str, &str, &str, u64); 6] = [
            (
                "singlepoint_cache_misses_total",
                "counter",
                "Lookups no tier answered",
                c.misses,
            ),
            (
                "singlepoint_cache_inserts_total",
                "counter",
                "Answers stored",
                c.inserts,
            ),
            (
                "singlepoint_cache_corrupt_total",
                "counter",
                "Disk records that failed their checks (removed)",
                c.corrupt,
            ),
            (
                "singlepoint_cache_evictions_total",
                "counter",
                "Entries evicted (memory and disk)",
                c.memory_evictions + c.disk_evictions,
            ),
            (
                "singlepoint_cache_memory_entries",
                "gauge",
                "Entries in the memory tier",
                c.memory_entries,
            ),
            (
                "singlepoint_cache_memory_bytes",
                "gauge",
                "Bytes charged to the memory tier",
                c.memory_bytes,
            ),
        ];
        render_plain(&mut out, plain.map(|(n, k, h, v)| (n, k, h, v as f64)));
    }
    let process: [(&str, &str, &str, f64); 3] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the process",
            singlepoint_runtime::cputime::process_cpu_time().as_secs_f64(),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident set size",
            singlepoint_runtime::cost::rss_bytes() as f64,
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors",
            metrics::open_fds() as f64,
        ),
    ];
    let cost = cost_snapshot(&state);
    let num = |k: &str| cost[k].as_f64().unwrap_or(0.0);
    let derived: [(&str, &str, &str, f64); 4] = [
        (
            "singlepoint_cost_money_total",
            "counter",
            "Money spent so far at the configured prices (docs/cost-model.md)",
            num("money"),
        ),
        (
            "singlepoint_cost_f",
            "gauge",
            "f = w_t*t + w_r*money so far",
            num("f"),
        ),
        (
            "singlepoint_hit_rate",
            "gauge",
            "p: items answered without running the model",
            num("p"),
        ),
        (
            "singlepoint_instance_utilization",
            "gauge",
            "Engine-busy seconds over instances x uptime",
            num("instance_utilization"),
        ),
    ];
    render_plain(&mut out, process.into_iter().chain(derived));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// The repository behind model control, or why there is none.
fn repository(state: &AppState) -> Result<&crate::Repository, ApiError> {
    state.repository.get().ok_or_else(|| {
        ApiError::bad_request(
            "this server has no model repository; start it with --model-repository DIR",
        )
    })
}

/// The repository for a load or unload, refused unless model control is explicit.
fn controlled(state: &AppState) -> Result<&crate::Repository, ApiError> {
    let repository = repository(state)?;
    match repository.control {
        crate::ModelControl::Explicit => Ok(repository),
        crate::ModelControl::None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "model control is off: start the server with --model-control explicit to load and unload models",
        )),
        crate::ModelControl::Poll(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the repository is polled (--model-control poll): change its folders and the server follows; start it with --model-control explicit to load and unload over HTTP",
        )),
    }
}

/// A repository folder name: what a model name may be (no separators, no `..`).
fn check_model_name(name: &str) -> Result<(), ApiError> {
    let fine = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if fine {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "`{name}` is not a model name (letters, digits, `.`, `_` and `-`, not starting with `.`)"
        )))
    }
}

/// `GET` or `POST /v2/repository/index` (body `{"ready": true}` lists only loaded models):
/// every model folder in the repository and every model served, with its state.
async fn repository_index(State(state): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let repository = repository(&state)?;
    let ready_only = if body.is_empty() {
        false
    } else {
        let request: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("malformed index request: {e}")))?;
        request
            .get("ready")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let served = state.models.snapshot();
    let mut names: std::collections::BTreeSet<String> = served.keys().cloned().collect();
    if let Ok(entries) = std::fs::read_dir(&repository.dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if singlepoint_model::is_model_dir(&path) {
                if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                    names.insert(name.to_string());
                }
            }
        }
    }
    let index: Vec<Value> = names
        .into_iter()
        .filter_map(|name| match served.get(&name) {
            Some(s) => Some(json!({
                "name": name,
                "version": s.model().manifest.version,
                "state": "READY",
                "reason": "",
            })),
            None if ready_only => None,
            None => Some(json!({ "name": name, "state": "UNAVAILABLE", "reason": "unloaded" })),
        })
        .collect();
    Ok(Json(Value::Array(index)).into_response())
}

/// `POST /v2/repository/models/{name}/load`: reads `DIR/{name}` and serves it, replacing the
/// version served now once the requests holding it finish. Nothing is dropped: requests keep
/// the service they started with, and new ones go to the new version, whose digest (version,
/// ONNX bytes, preprocessing) keys its own cache entries.
async fn load_model(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult {
    controlled(&state)?;
    check_model_name(&name)?;
    let shared = state.clone();
    let wanted = name.clone();
    let started =
        tokio::task::spawn_blocking(move || crate::start_from_repository(&shared, &wanted))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("loading the model `{name}` crashed"),
                )
            })?;
    let service = started
        .map_err(|e| ApiError::bad_request(format!("cannot load the model `{name}`: {e}")))?;
    let version = service.model().manifest.version.clone();
    let digest = service.model().digest.short();
    if let Some(old) = state.models.insert(name.clone(), service) {
        crate::retire(old, state.config.shutdown_timeout);
    }
    tracing::info!(model = %name, %version, %digest, "model loaded");
    Ok(Json(json!({ "name": name, "version": version, "state": "READY" })).into_response())
}

/// `POST /v2/repository/models/{name}/unload`: stops serving it; requests already holding it
/// finish first.
async fn unload_model(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult {
    controlled(&state)?;
    let old = state.models.remove(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("the model `{name}` is not loaded"),
        )
    })?;
    crate::retire(old, state.config.shutdown_timeout);
    Ok(Json(json!({ "name": name, "state": "UNAVAILABLE" })).into_response())
}
