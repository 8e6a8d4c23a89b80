//! `POST /v1/models/{name}/feedback`: a correction (an input and its right label), kept in
//! the model repository's feedback log (`singlepoint_adapt::FeedbackLog`) before it is
//! acknowledged; `singlepoint adapt --from-feedback` trains the next version from it, and the
//! server loads that version through model control while it answers.
//!
//! - Image classifiers: the image's bytes as the body (or a multipart form with one file),
//!   `?label=`.
//! - Text classifiers: `{"text": "...", "label": "..."}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use singlepoint_adapt::{Corrected, FeedbackLog};
use singlepoint_model::Task;

use crate::http::{find_model, model_label, read_images, record, ApiError};
use crate::AppState;

#[derive(Deserialize)]
pub(crate) struct FeedbackQuery {
    label: Option<String>,
}

#[derive(Deserialize)]
struct TextFeedback {
    text: String,
    label: String,
}

pub(crate) async fn feedback(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    query: Result<Query<FeedbackQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Response {
    let t0 = std::time::Instant::now();
    let params = HashMap::from([("name".to_string(), name)]);
    let model = model_label(&state, &params);
    let result = feedback_inner(&state, &params, query.ok().map(|q| q.0), request).await;
    record(&state, &model, "feedback", t0, result)
}

async fn feedback_inner(
    state: &Arc<AppState>,
    params: &HashMap<String, String>,
    query: Option<FeedbackQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let service = find_model(state, params)?;
    let model = service.model().clone();
    let name = model.manifest.name.clone();
    let Some(repository) = state.repository.get() else {
        return Err(ApiError::bad_request(
            "feedback is kept in the model repository: start the server with \
             --model-repository DIR",
        ));
    };
    let (what, label) = match model.manifest.task {
        Task::TextClassification => {
            let body = Bytes::from_request(request, state).await?;
            let f: TextFeedback = serde_json::from_slice(&body).map_err(|e| {
                ApiError::bad_request(format!(
                    "expected {{\"text\": \"...\", \"label\": \"...\"}}: {e}"
                ))
            })?;
            (Corrected::Text(f.text), f.label)
        }
        Task::ImageClassification => {
            let label = query
                .and_then(|q| q.label)
                .ok_or_else(|| ApiError::bad_request("say the right label: ?label=NAME"))?;
            let (_, mut files) = read_images(state, request).await?;
            if files.len() != 1 {
                return Err(ApiError::bad_request(format!(
                    "one image a correction; the form holds {}",
                    files.len()
                )));
            }
            let (_, bytes) = files.pop().expect("one file");
            (Corrected::Image(bytes.to_vec()), label)
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "`{name}` is a `{}` model; feedback corrects image and text classifiers",
                other.as_str()
            )))
        }
    };
    let labels: Vec<String> = model
        .labels
        .as_ref()
        .map(|l| {
            (0..l.len())
                .filter_map(|i| l.name(i).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if !labels.contains(&label) {
        return Err(ApiError::bad_request(format!(
            "`{label}` is not a class of `{name}` (its classes: {})",
            labels.join(", ")
        )));
    }
    let dir = repository.dir.clone();
    let digest = model.digest.to_string();
    let log_name = name.clone();
    let label_kept = label.clone();
    let recorded = tokio::task::spawn_blocking(move || {
        FeedbackLog::new(&dir, &log_name).record(&what, &label_kept, Some(digest))
    })
    .await
    .map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the log crashed",
        )
    })?
    .map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot keep the correction: {e}"),
        )
    })?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Json(json!({
            "model": name,
            "version": model.manifest.version,
            "label": label,
            "recorded": recorded,
        })),
    )
        .into_response())
}
