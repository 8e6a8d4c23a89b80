//! `POST /v1/models/{name}/feedback`: a correction (an input and its right label), kept in
//! the model repository's feedback log (`singlepoint_adapt::FeedbackLog`) before it is
//! acknowledged; `singlepoint adapt --from-feedback` trains the next version from it, and the
//! server loads that version through model control while it answers.
//!
//! - Image classifiers: the image's bytes as the body (or a multipart form with one file),
//!   `?label=`.
//! - Text classifiers: `{"text": "...", "label": "..."}`.
//! - Either: `{"key": "...", "label": "..."}`, the `key` an earlier answer carried. While the
//!   server has a repository, classifier answers carry their cache key and the server keeps
//!   the inputs of the latest ones (64 MiB at most, oldest out first) so that a key names an
//!   input; an older or unknown key is refused with what to send instead.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use singlepoint_adapt::{Corrected, FeedbackLog};
use singlepoint_cache::CacheKey;
use singlepoint_model::Task;
use singlepoint_runtime::{ItemInput, ModelService};

use crate::http::{find_model, model_label, read_images, record, ApiError};
use crate::AppState;

#[derive(Deserialize)]
pub(crate) struct FeedbackQuery {
    label: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFeedback {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    text: Option<String>,
    label: String,
}

/// The most input bytes kept for keys.
const RECENT_BYTES: usize = 64 << 20;

/// The inputs of recent classifier answers, by model and key.
#[derive(Default)]
pub struct Recent(Mutex<RecentInner>);

#[derive(Default)]
struct RecentInner {
    inputs: HashMap<(String, [u8; 32]), Corrected>,
    order: VecDeque<(String, [u8; 32])>,
    bytes: usize,
}

fn size(c: &Corrected) -> usize {
    match c {
        Corrected::Image(b) => b.len(),
        Corrected::Text(t) => t.len(),
    }
}

impl Recent {
    fn remember(&self, model: &str, key: CacheKey, input: Corrected) {
        let n = size(&input);
        if n > RECENT_BYTES {
            return;
        }
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let id = (model.to_string(), key.0);
        if r.inputs.contains_key(&id) {
            return;
        }
        while r.bytes + n > RECENT_BYTES {
            let Some(old) = r.order.pop_front() else {
                break;
            };
            if let Some(gone) = r.inputs.remove(&old) {
                r.bytes -= size(&gone);
            }
        }
        r.bytes += n;
        r.order.push_back(id.clone());
        r.inputs.insert(id, input);
    }

    fn recall(&self, model: &str, key: &[u8; 32]) -> Option<Corrected> {
        let r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        r.inputs.get(&(model.to_string(), *key)).cloned()
    }
}

/// For the answers of a classifier on a server with a repository: each item's cache key (hex),
/// its input kept for corrections that name it. `None` otherwise (nothing is kept).
pub(crate) fn keys_for_feedback(
    state: &AppState,
    service: &ModelService,
    items: &[ItemInput],
) -> Option<Vec<String>> {
    state.repository.get()?;
    let model = service.model();
    if !matches!(
        model.manifest.task,
        Task::ImageClassification | Task::TextClassification
    ) {
        return None;
    }
    Some(
        items
            .iter()
            .map(|item| {
                let key = service.key(item);
                let hex = key.to_hex();
                let input = match item {
                    ItemInput::Image(b) => Some(Corrected::Image(b.to_vec())),
                    ItemInput::Text { text, .. } => Some(Corrected::Text(text.to_string())),
                    _ => None,
                };
                if let Some(input) = input {
                    state.recent.remember(&model.manifest.name, key, input);
                }
                hex
            })
            .collect(),
    )
}

fn parse_key(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
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
    let task = model.manifest.task;
    if !matches!(task, Task::ImageClassification | Task::TextClassification) {
        return Err(ApiError::bad_request(format!(
            "`{name}` is a `{}` model; feedback corrects image and text classifiers",
            task.as_str()
        )));
    }
    let json_body = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    let (what, label) =
        if json_body || task == Task::TextClassification {
            let body = Bytes::from_request(request, state).await?;
            let f: JsonFeedback = serde_json::from_slice(&body).map_err(|e| {
                ApiError::bad_request(format!(
                    "expected {{\"key\": \"...\", \"label\": \"...\"}} (the key of an earlier \
                 answer){}: {e}",
                    if task == Task::TextClassification {
                        " or {\"text\": \"...\", \"label\": \"...\"}"
                    } else {
                        ""
                    }
                ))
            })?;
            match (f.key, f.text) {
                (Some(hex), None) => {
                    let key = parse_key(&hex).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "`{hex}` is not a cache key (64 hexadecimal digits, as answers carry)"
                        ))
                    })?;
                    let input = state.recent.recall(&name, &key).ok_or_else(|| {
                        ApiError::new(
                            axum::http::StatusCode::NOT_FOUND,
                            format!(
                                "no recent answer of `{name}` has the key {hex} (the server keeps \
                             the inputs of its latest answers only, and not across restarts); \
                             send the input itself with the label"
                            ),
                        )
                    })?;
                    (input, f.label)
                }
                (None, Some(text)) if task == Task::TextClassification => {
                    (Corrected::Text(text), f.label)
                }
                (None, Some(_)) => {
                    return Err(ApiError::bad_request(format!(
                        "`{name}` classifies images: send the image's bytes with ?label=, or \
                     {{\"key\": ..., \"label\": ...}}"
                    )))
                }
                _ => return Err(ApiError::bad_request(
                    "give either `key` (of an earlier answer) or the input, not both or neither",
                )),
            }
        } else {
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
