//! Text endpoints: OpenAI's `POST /v1/embeddings`, text-embeddings-inference's `POST /embed`,
//! and the classify endpoint's text bodies for text classifiers. Each parses with
//! `singlepoint_protocol::text`, submits one item per text to the model's `ModelService` (so
//! texts from every request batch together, by length) and encodes the answer in the shape
//! its clients expect, errors included.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};
use singlepoint_model::Task;
use singlepoint_protocol::oip;
use singlepoint_protocol::text::{self as protocol, EncodingFormat, TextRequestError};
use singlepoint_runtime::task::{self, embedding, token_counts};

use crate::http::{record, run_items, wrong_endpoint, ApiError};
use crate::service::{Answer, FailureKind, ItemInput, ModelService, Source};
use crate::AppState;

/// The header that lists, by index, the texts cut at the model's token limit.
pub const TRUNCATED_HEADER: &str = "x-singlepoint-truncated";

fn items(texts: Vec<String>, truncate: bool) -> Vec<ItemInput> {
    texts
        .into_iter()
        .map(|t| ItemInput::Text {
            text: Arc::from(t),
            truncate,
        })
        .collect()
}

/// The first failed text of a request as the request's error, named by its index (`field[i]`
/// for an array, `field` for a single text).
fn first_failure(answers: &[Answer], field: &str, single: bool) -> Option<ApiError> {
    answers.iter().enumerate().find_map(|(i, a)| {
        let e = a.as_ref().err()?;
        let name = if single {
            format!("`{field}`")
        } else {
            format!("`{field}[{i}]`")
        };
        let mut error = ApiError::from(e.clone());
        if e.kind() == FailureKind::BadInput {
            error.message = format!("{name}: {}", error.message);
        }
        Some(error)
    })
}

fn truncated_indices(answers: &[Answer]) -> Vec<usize> {
    answers
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            let (outputs, _) = a.as_ref().ok()?;
            let (used, whole) = token_counts(outputs);
            (whole > used).then_some(i)
        })
        .collect()
}

fn mark_truncated(response: &mut Response, truncated: &[usize]) {
    if truncated.is_empty() {
        return;
    }
    let list: Vec<String> = truncated.iter().map(usize::to_string).collect();
    if let Ok(v) = HeaderValue::from_str(&list.join(",")) {
        response.headers_mut().insert(TRUNCATED_HEADER, v);
    }
}

/// The text-embedding model a request names, or the only one served.
fn embedder(state: &AppState, name: Option<&str>) -> Result<Arc<ModelService>, ApiError> {
    let models = state.models.snapshot();
    let embedders: Vec<&String> = models
        .iter()
        .filter(|(_, s)| s.model().manifest.task == Task::TextEmbedding)
        .map(|(n, _)| n)
        .collect();
    let service = match name {
        Some(name) => models.get(name).cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown model `{name}`; this server's text-embedding models are {}",
                    list(&embedders)
                ),
            )
        })?,
        None => match embedders.as_slice() {
            [one] => models[one.as_str()].clone(),
            [] => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "this server has no text-embedding model (serve one with --model)",
                ))
            }
            many => {
                return Err(ApiError::bad_request(format!(
                    "this server has several text-embedding models ({}); name one with `?model=`",
                    list(many)
                )))
            }
        },
    };
    if service.model().manifest.task != Task::TextEmbedding {
        return Err(wrong_endpoint(&service, Task::TextEmbedding));
    }
    Ok(service)
}

fn list(names: &[&String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn request_error(e: TextRequestError) -> ApiError {
    match e {
        TextRequestError::TooMany { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        _ => ApiError::bad_request(e.to_string()),
    }
}

/// An error in OpenAI's shape, which its client reads into the exception it raises.
fn openai_error(e: ApiError) -> Response {
    let kind = match e.status.as_u16() {
        400 | 404 | 413 | 422 => "invalid_request_error",
        429 => "rate_limit_exceeded",
        _ => "server_error",
    };
    let body =
        json!({ "error": { "message": e.message, "type": kind, "param": null, "code": null } });
    retry_later((e.status, Json(body)).into_response())
}

/// Tells a client refused for load when to retry, as every endpoint does.
fn retry_later(mut response: Response) -> Response {
    if matches!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

pub(crate) async fn openai_embeddings(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    let mut model = "unknown".to_string();
    let result = async {
        let body = body?;
        let request = protocol::parse_openai_embeddings(&body).map_err(request_error)?;
        let service = embedder(&state, Some(&request.model))?;
        model = request.model.clone();
        let normalize = service
            .model()
            .manifest
            .text
            .as_ref()
            .is_some_and(|t| t.normalize);
        let answers = run_items(&state, &service, items(request.input, false)).await?;
        if let Some(e) = first_failure(&answers, "input", answers.len() == 1) {
            return Err(e);
        }
        let mut tokens = 0usize;
        let data: Vec<Value> = answers
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                let (outputs, _) = a.as_ref().ok()?;
                tokens += token_counts(outputs).0;
                let v = embedding(outputs, normalize);
                let encoded = match request.encoding_format {
                    EncodingFormat::Float => json!(v),
                    EncodingFormat::Base64 => json!(protocol::base64_f32(&v)),
                };
                Some(json!({ "object": "embedding", "index": i, "embedding": encoded }))
            })
            .collect();
        Ok(Json(json!({
            "object": "list",
            "data": data,
            "model": service.model().manifest.name,
            "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
        }))
        .into_response())
    }
    .await;
    let result = Ok(result.unwrap_or_else(openai_error));
    record(&state, &model, "embeddings", t0, result)
}

#[derive(serde::Deserialize)]
pub(crate) struct ModelQuery {
    model: Option<String>,
}

/// An error in text-embeddings-inference's shape: `{"error", "error_type"}`, 422 for a text
/// it refuses, 413 for too many.
fn tei_error(e: ApiError) -> Response {
    let (status, kind) = match e.status.as_u16() {
        400 => (StatusCode::UNPROCESSABLE_ENTITY, "Validation"),
        404 => (StatusCode::NOT_FOUND, "Validation"),
        413 => (StatusCode::PAYLOAD_TOO_LARGE, "Validation"),
        429 => (StatusCode::TOO_MANY_REQUESTS, "Overloaded"),
        _ => (e.status, "Backend"),
    };
    retry_later(
        (
            status,
            Json(json!({ "error": e.message, "error_type": kind })),
        )
            .into_response(),
    )
}

pub(crate) async fn tei_embed(
    State(state): State<Arc<AppState>>,
    query: axum::extract::Query<ModelQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    let mut model = "unknown".to_string();
    let result = async {
        let body = body?;
        let request = protocol::parse_tei_embed(&body).map_err(request_error)?;
        let service = embedder(&state, query.model.as_deref())?;
        model = service.model().manifest.name.clone();
        let normalize = request.normalize.unwrap_or_else(|| {
            service
                .model()
                .manifest
                .text
                .as_ref()
                .is_some_and(|t| t.normalize)
        });
        let answers = run_items(&state, &service, items(request.inputs, request.truncate)).await?;
        if let Some(e) = first_failure(&answers, "inputs", false) {
            return Err(e);
        }
        let vectors: Vec<Vec<f32>> = answers
            .iter()
            .filter_map(|a| a.as_ref().ok().map(|(o, _)| embedding(o, normalize)))
            .collect();
        let mut response = Json(json!(vectors)).into_response();
        mark_truncated(&mut response, &truncated_indices(&answers));
        Ok(response)
    }
    .await;
    let result = Ok(result.unwrap_or_else(tei_error));
    record(&state, &model, "embed", t0, result)
}

/// The classify endpoint of a text classifier: a text body, or JSON with several.
pub(crate) async fn classify_texts(
    state: &Arc<AppState>,
    service: Arc<ModelService>,
    plain: bool,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = protocol::parse_text_classify(&body, plain).map_err(request_error)?;
    let model = service.model();
    let classes = model.manifest.classes().unwrap_or(usize::MAX);
    let top_k = request.top_k.unwrap_or(classes.min(5));
    if top_k > classes {
        return Err(ApiError::bad_request(format!(
            "top_k must be from 1 to {classes}"
        )));
    }
    let inputs = items(request.inputs, request.truncate);
    let keys = crate::feedback::keys_for_feedback(state, &service, &inputs);
    let answers = run_items(state, &service, inputs).await?;
    let single = plain;
    if answers.len() == 1 {
        if let Some(e) = first_failure(&answers, if single { "body" } else { "inputs" }, true) {
            return Err(e);
        }
    }
    let truncated = truncated_indices(&answers);
    let results: Vec<Value> = answers
        .iter()
        .enumerate()
        .map(|(i, a)| match a {
            Ok((outputs, source)) => {
                let c = task::answer(model, task::row(outputs), top_k);
                let (used, whole) = token_counts(outputs);
let mut answer =                 json!({
                    "index": i,
                    "label": c.display_label,
                    "top_k": c.top.iter().map(|t| json!({ "class": t.class_idx, "label": t.label, "probability": t.probability })).collect::<Vec<_>>(),
                    "tokens": used,
                    "truncated": whole > used,
                    "cached": *source == Source::Cache,
                    "source": source.as_str(),
                });
                if let Some(keys) = &keys {
                    answer["key"] = json!(keys[i]);
                }
                answer
            }
            Err(e) => json!({ "index": i, "error": e.to_string() }),
        })
        .collect();
    let mut response = Json(json!({
        "model": model.manifest.name,
        "model_version": model.manifest.version,
        "results": results,
    }))
    .into_response();
    mark_truncated(&mut response, &truncated);
    Ok(response)
}

/// What a text model answers over the inference protocol: `embedding` FP32 [n, D] (an
/// embedder) or `probabilities` FP32 [n, classes] (a classifier), and `tokens` INT64 [n, 2]
/// (tokens read, tokens of the whole text: more when it was cut).
pub(crate) fn oip_outputs(model: &singlepoint_model::Model) -> Vec<singlepoint_core::TensorSpec> {
    use singlepoint_core::{DType, Dim, TensorSpec};
    let width = model
        .manifest
        .output()
        .shape
        .last()
        .copied()
        .unwrap_or(Dim::Dynamic);
    let first = if model.manifest.task == Task::TextEmbedding {
        "embedding"
    } else {
        "probabilities"
    };
    vec![
        TensorSpec::new(first, DType::Float32, vec![Dim::Dynamic, width]),
        TensorSpec::new("tokens", DType::Int64, vec![Dim::Dynamic, Dim::Fixed(2)]),
    ]
}

/// The inference protocol's infer on a text model: BYTES texts in ([`oip::TEXT_INPUT`]),
/// [`oip_outputs`] out, from the same cache entries as the other text endpoints.
pub(crate) async fn infer_texts(
    state: &AppState,
    service: &Arc<ModelService>,
    body: &Bytes,
    header_len: Option<usize>,
) -> Result<oip::Encoded, ApiError> {
    let model = service.model();
    let specs = oip_outputs(model);
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let parsed = oip::parse_text_request(body, header_len, &names, protocol::MAX_TEXTS)
        .map_err(ApiError::bad_request)?;
    let normalize = parsed
        .normalize
        .unwrap_or_else(|| model.manifest.text.as_ref().is_some_and(|t| t.normalize));
    let request = parsed.request;
    let answers = run_items(state, service, request.items).await?;
    if let Some(e) = first_failure(&answers, "text", false) {
        return Err(e);
    }
    let classes = model.manifest.classes().unwrap_or(0);
    let mut cache_hits = 0;
    let rows: Vec<task::Outputs> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .map(|(outputs, source)| {
            cache_hits += usize::from(*source == Source::Cache);
            let row = if model.manifest.task == Task::TextEmbedding {
                embedding(outputs, normalize)
            } else {
                let c = task::answer(model, task::row(outputs), classes.max(1));
                let mut p = vec![0.0f32; c.top.len()];
                for t in &c.top {
                    if let Some(slot) = p.get_mut(t.class_idx) {
                        *slot = t.probability;
                    }
                }
                p
            };
            let (used, whole) = token_counts(outputs);
            let t = |shape: Vec<usize>, data: singlepoint_core::Buffer| {
                singlepoint_core::AnyTensor::new(shape, data).expect("shapes match their data")
            };
            vec![
                t(vec![row.len()], singlepoint_core::Buffer::F32(row)),
                t(
                    vec![2],
                    singlepoint_core::Buffer::I64(vec![used as i64, whole as i64]),
                ),
            ]
            .into()
        })
        .collect();
    oip::encode_tensor_response(
        model,
        request.id,
        &rows,
        &request.outputs,
        &specs,
        cache_hits,
    )
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))
}
