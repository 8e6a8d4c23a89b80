//! Speech endpoints: OpenAI's `POST /v1/audio/transcriptions` (multipart `file`, `model`,
//! `response_format` json|text|srt|verbose_json|vtt, `language`) and `POST /v1/audio/vad`
//! (an encoded file or raw s16le PCM with `?rate=`, answered with speech segments). Both
//! enter `singlepoint_speech::Speech`, the path `singlepoint transcribe` drives, loaded on the
//! first speech request; concurrent requests share its encoder runs and decoding batch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::json;
use singlepoint_audio::AudioError;
use singlepoint_speech::service::Source;
use singlepoint_speech::{bundled, format, Speech, SpeechError, SpeechOptions};

use crate::http::{record, ApiError};
use crate::AppState;

/// The header that says whether a transcript came from the cache or was computed.
pub const SOURCE_HEADER: &str = "x-singlepoint-source";

/// Names a transcription request may give for the bundled model.
const MODEL_NAMES: [&str; 2] = [bundled::WHISPER_NAME, "whisper-1"];

/// Speech requests being answered at most; more get 429.
const MAX_IN_FLIGHT: usize = 256;

/// The speech models, loaded on first use.
#[derive(Default)]
pub struct SpeechSlot {
    loaded: OnceLock<Result<Arc<Speech>, String>>,
    in_flight: AtomicUsize,
}

impl SpeechSlot {
    fn get(
        &self,
        options: SpeechOptions,
        cache: Option<Arc<singlepoint_cache::ResultCache>>,
    ) -> Result<Arc<Speech>, ApiError> {
        self.loaded
            .get_or_init(|| {
                Speech::bundled(options, cache)
                    .map(Arc::new)
                    .map_err(|e| format!("cannot load the speech models: {e}"))
            })
            .clone()
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))
    }
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn admit(slot: &SpeechSlot) -> Result<InFlight<'_>, ApiError> {
    if slot.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
        slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_IN_FLIGHT} speech requests are already being answered; retry later"),
        ));
    }
    Ok(InFlight(&slot.in_flight))
}

/// Admits a speech request and runs `f` on the speech models (loaded on first use) on a
/// blocking thread: decoding and transcription are CPU-bound.
async fn on_speech<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&Speech) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let _admitted = admit(&state.speech)?;
    let st = state.clone();
    tokio::task::spawn_blocking(move || f(&*st.speech.get(st.config.speech, st.cache.clone())?))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

fn speech_error(what: &str, e: SpeechError) -> ApiError {
    let status = match &e {
        SpeechError::Audio(AudioError::TooLarge { .. } | AudioError::TooLong { .. }) => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        SpeechError::Audio(_) => StatusCode::BAD_REQUEST,
        SpeechError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        SpeechError::Engine(_) | SpeechError::Model(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, format!("{what}: {e}"))
}

/// An error in OpenAI's shape, which its client raises as the matching exception.
fn openai_error(e: ApiError) -> Response {
    let kind = match e.status.as_u16() {
        400 | 404 | 413 | 422 => "invalid_request_error",
        429 => "rate_limit_exceeded",
        _ => "server_error",
    };
    let status = e.status;
    let mut response = (
        status,
        Json(
            json!({ "error": { "message": e.message, "type": kind, "param": null, "code": null } }),
        ),
    )
        .into_response();
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResponseFormat {
    Json,
    Text,
    Srt,
    VerboseJson,
    Vtt,
}

/// What a transcription form asks for.
struct TranscriptionRequest {
    file: Bytes,
    file_name: Option<String>,
    model: String,
    format: ResponseFormat,
}

fn parse_form(content_type: &str, body: Bytes) -> Result<TranscriptionRequest, ApiError> {
    if !singlepoint_protocol::form::is_form(content_type) {
        return Err(ApiError::bad_request(format!(
            "the body must be a multipart/form-data form with a `file` part (Content-Type was `{content_type}`)"
        )));
    }
    let fields = singlepoint_protocol::form::parse_fields(content_type, body)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut file = None;
    let (mut model, mut format) = (None, ResponseFormat::Json);
    for f in fields {
        let name = f.name.clone().unwrap_or_default();
        let text = || {
            f.text().map(str::trim).map(str::to_string).ok_or_else(|| {
                ApiError::bad_request(format!("the form field `{name}` is not UTF-8 text"))
            })
        };
        match name.as_str() {
            "file" => file = Some((f.bytes.clone(), f.file_name.clone())),
            "model" => model = Some(text()?),
            "response_format" => {
                format = match text()?.as_str() {
                    "json" => ResponseFormat::Json,
                    "text" => ResponseFormat::Text,
                    "srt" => ResponseFormat::Srt,
                    "verbose_json" => ResponseFormat::VerboseJson,
                    "vtt" => ResponseFormat::Vtt,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "`response_format` `{other}` is not one of json, text, srt, verbose_json, vtt"
                        )))
                    }
                }
            }
            "language" => {
                let lang = text()?.to_ascii_lowercase();
                if !lang.is_empty() && lang != "en" && lang != "english" {
                    return Err(ApiError::bad_request(format!(
                        "`language` `{lang}`: {} is English-only (give `en` or leave it out)",
                        bundled::WHISPER_NAME
                    )));
                }
            }
            "temperature" => {
                let t = text()?;
                if t.parse::<f64>() != Ok(0.0) {
                    return Err(ApiError::bad_request(format!(
                        "`temperature` {t}: decoding is greedy; only 0 is supported"
                    )));
                }
            }
            "prompt" => {
                if !text()?.is_empty() {
                    return Err(ApiError::bad_request(
                        "`prompt` is not supported: the decoder starts from Whisper's own prompt",
                    ));
                }
            }
            "timestamp_granularities[]" | "timestamp_granularities" => {
                let g = text()?;
                if g != "segment" {
                    return Err(ApiError::bad_request(format!(
                        "`timestamp_granularities` `{g}`: only `segment` timestamps are given"
                    )));
                }
            }
            // Fields other clients send that change nothing here.
            "stream" | "chunking_strategy" | "include[]" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown form field `{other}`; the fields are file, model, response_format, language, temperature, prompt, timestamp_granularities[]"
                )))
            }
        }
    }
    let (file, file_name) =
        file.ok_or_else(|| ApiError::bad_request("the form has no `file` part"))?;
    let model = model.ok_or_else(|| ApiError::bad_request("the form has no `model` field"))?;
    Ok(TranscriptionRequest {
        file,
        file_name,
        model,
        format,
    })
}

fn extension(name: Option<&str>) -> Option<String> {
    let name = name?;
    let (_, ext) = name.rsplit_once('.')?;
    Some(ext.to_ascii_lowercase())
}

fn source_header(response: &mut Response, source: Source) {
    let value = match source {
        Source::Cache => "cache",
        Source::Computed => "computed",
        Source::Coalesced => "coalesced",
    };
    response
        .headers_mut()
        .insert(SOURCE_HEADER, HeaderValue::from_static(value));
}

pub(crate) async fn transcriptions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    let result = async {
        let body = body?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let request = parse_form(content_type, body)?;
        if !MODEL_NAMES.contains(&request.model.as_str()) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown model `{}`; this server transcribes with `{}` (also called `whisper-1`)",
                    request.model,
                    bundled::WHISPER_NAME
                ),
            ));
        }
        let name = request.file_name.clone();
        let (transcript, source) = on_speech(&state, move |speech| {
            let what = match &name {
                Some(n) => format!("`file` ({n})"),
                None => "`file`".to_string(),
            };
            speech
                .transcribe(&request.file, extension(name.as_deref()).as_deref())
                .map_err(|e| speech_error(&what, e))
        })
        .await?;
        let text_plain = |body: String| {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
        };
        let mut response = match request.format {
            ResponseFormat::Json => Json(json!({ "text": transcript.text })).into_response(),
            ResponseFormat::VerboseJson => Json(format::verbose_json(&transcript)).into_response(),
            ResponseFormat::Text => text_plain(format!("{}\n", transcript.text)),
            ResponseFormat::Srt => text_plain(format::srt(&transcript)),
            ResponseFormat::Vtt => text_plain(format::vtt(&transcript)),
        };
        source_header(&mut response, source);
        Ok(response)
    }
    .await;
    let result = result.map_err(openai_error);
    let response = match result {
        Ok(r) => r,
        Err(r) => r,
    };
    record(
        &state,
        bundled::WHISPER_NAME,
        "transcriptions",
        t0,
        Ok(response),
    )
}

#[derive(serde::Deserialize)]
pub(crate) struct VadQuery {
    /// Raw s16le PCM at this rate (no container).
    rate: Option<u32>,
    channels: Option<usize>,
    #[serde(default)]
    probabilities: bool,
}

pub(crate) async fn vad(
    State(state): State<Arc<AppState>>,
    Query(query): Query<VadQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    let result = async {
        let body = body?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let (bytes, name) = if singlepoint_protocol::form::is_form(&content_type) {
            let fields = singlepoint_protocol::form::parse_fields(&content_type, body)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let f = fields
                .into_iter()
                .find(|f| f.name.as_deref() == Some("file"))
                .ok_or_else(|| ApiError::bad_request("the form has no `file` part"))?;
            (f.bytes, f.file_name)
        } else {
            (body, None)
        };
        let answer = on_speech(&state, move |speech| {
            let what = name
                .as_deref()
                .map_or("the audio".to_string(), |n| format!("`{n}`"));
            match query.rate {
                Some(rate) => speech.detect_speech_pcm(
                    &bytes,
                    rate,
                    query.channels.unwrap_or(1),
                    query.probabilities,
                ),
                None => speech.detect_speech(
                    &bytes,
                    extension(name.as_deref()).as_deref(),
                    query.probabilities,
                ),
            }
            .map_err(|e| speech_error(&what, e))
        })
        .await?;
        Ok(Json(json!({
            "model": bundled::VAD_NAME,
            "duration": answer.duration,
            "segments": answer.segments.iter().zip(&answer.samples).map(|(s, n)| json!({
                "start": s[0], "end": s[1], "start_sample": n[0], "end_sample": n[1],
            })).collect::<Vec<_>>(),
            "probabilities": answer.probabilities,
        }))
        .into_response())
    }
    .await;
    record(&state, bundled::VAD_NAME, "vad", t0, result)
}
