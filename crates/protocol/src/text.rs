//! Text requests, parsed without the network: OpenAI's `POST /v1/embeddings`, Hugging Face
//! text-embeddings-inference's `POST /embed`, and the classify endpoint's text bodies.
//!
//! Each parser checks everything it can before a text reaches a model: the JSON types, the
//! fields (a field the endpoint does not support is refused by name, never ignored), the
//! number of texts, and empty texts. A bad text in an array is named by its index. Token
//! limits are checked by the model's tokenizer (`singlepoint-model`), which knows them.

use serde_json::Value;

/// The most texts one request may carry (OpenAI's own limit).
pub const MAX_TEXTS: usize = 2048;

/// Why a text request is refused; the message names the field or the item.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextRequestError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("`{0}` is required")]
    Missing(&'static str),
    #[error("`{field}` {reason}")]
    Invalid { field: String, reason: String },
    #[error("`{field}` is not supported by this server{hint}")]
    Unsupported { field: String, hint: String },
    #[error("{count} texts in one request is more than the limit of {limit}")]
    TooMany { count: usize, limit: usize },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> TextRequestError {
    TextRequestError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn object(body: &[u8]) -> Result<serde_json::Map<String, Value>, TextRequestError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(TextRequestError::NotAnObject),
        Err(e) => Err(TextRequestError::NotJson(e.to_string())),
    }
}

/// A string or an array of strings, as both APIs take `input`/`inputs`; `allow_empty` for
/// the APIs that embed the empty text.
fn texts(field: &str, value: &Value, allow_empty: bool) -> Result<Vec<String>, TextRequestError> {
    let list: Vec<&Value> = match value {
        Value::String(_) => vec![value],
        Value::Array(items) => {
            if items.is_empty() {
                return Err(invalid(field, "is an empty array: nothing to embed"));
            }
            if items.len() > MAX_TEXTS {
                return Err(TextRequestError::TooMany {
                    count: items.len(),
                    limit: MAX_TEXTS,
                });
            }
            items.iter().collect()
        }
        other => {
            return Err(invalid(
                field,
                format!(
                    "must be a string or an array of strings, not {}",
                    kind(other)
                ),
            ))
        }
    };
    let single = !value.is_array();
    list.into_iter()
        .enumerate()
        .map(|(i, v)| {
            let name = if single {
                field.to_string()
            } else {
                format!("{field}[{i}]")
            };
            match v {
                Value::String(s) if s.is_empty() && !allow_empty => {
                    Err(invalid(name, "is an empty string"))
                }
                Value::String(s) => Ok(s.clone()),
                Value::Array(_) => Err(TextRequestError::Unsupported {
                    field: name,
                    hint: " as token ids; send the text".into(),
                }),
                other => Err(invalid(
                    name,
                    format!("must be a string, not {}", kind(other)),
                )),
            }
        })
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn boolean(field: &str, v: &Value) -> Result<bool, TextRequestError> {
    v.as_bool()
        .ok_or_else(|| invalid(field, format!("must be true or false, not {}", kind(v))))
}

/// How OpenAI's embeddings are encoded in the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodingFormat {
    /// A JSON array of numbers.
    Float,
    /// Base64 of the little-endian float32 bytes.
    Base64,
}

/// `POST /v1/embeddings` (OpenAI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenAiEmbeddings {
    pub model: String,
    pub input: Vec<String>,
    pub encoding_format: EncodingFormat,
}

pub fn parse_openai_embeddings(body: &[u8]) -> Result<OpenAiEmbeddings, TextRequestError> {
    let map = object(body)?;
    let mut model = None;
    let mut input = None;
    let mut encoding_format = EncodingFormat::Float;
    for (key, value) in &map {
        match key.as_str() {
            "model" => {
                model = Some(
                    value
                        .as_str()
                        .ok_or_else(|| {
                            invalid("model", format!("must be a string, not {}", kind(value)))
                        })?
                        .to_string(),
                )
            }
            "input" => input = Some(texts("input", value, false)?),
            "encoding_format" => {
                encoding_format = match value.as_str() {
                    Some("float") => EncodingFormat::Float,
                    Some("base64") => EncodingFormat::Base64,
                    _ => return Err(invalid("encoding_format", "must be `float` or `base64`")),
                }
            }
            // Metadata about the caller: it does not change the answer.
            "user" => {
                if !value.is_string() {
                    return Err(invalid("user", "must be a string"));
                }
            }
            "dimensions" => {
                return Err(TextRequestError::Unsupported {
                    field: key.clone(),
                    hint: ": the model's vectors have one size".into(),
                })
            }
            other => {
                return Err(TextRequestError::Unsupported {
                    field: other.to_string(),
                    hint: " (it takes `input`, `model`, `encoding_format` and `user`)".into(),
                })
            }
        }
    }
    Ok(OpenAiEmbeddings {
        model: model.ok_or(TextRequestError::Missing("model"))?,
        input: input.ok_or(TextRequestError::Missing("input"))?,
        encoding_format,
    })
}

/// `POST /embed` (text-embeddings-inference).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeiEmbed {
    pub inputs: Vec<String>,
    /// `None`: as the model says (normalised, for the bundled model, as TEI's default).
    pub normalize: Option<bool>,
    /// Cut texts over the model's limit (TEI's default: refuse them).
    pub truncate: bool,
}

pub fn parse_tei_embed(body: &[u8]) -> Result<TeiEmbed, TextRequestError> {
    let map = object(body)?;
    let mut inputs = None;
    let mut normalize = None;
    let mut truncate = false;
    for (key, value) in &map {
        match key.as_str() {
            "inputs" => inputs = Some(texts("inputs", value, true)?),
            "normalize" => normalize = Some(boolean("normalize", value)?),
            "truncate" => truncate = boolean("truncate", value)?,
            "truncation_direction" => match value.as_str() {
                Some("Right" | "right") => {}
                Some("Left" | "left") => {
                    return Err(TextRequestError::Unsupported {
                        field: "truncation_direction".into(),
                        hint: " as `Left`; texts are cut on the right".into(),
                    })
                }
                _ => return Err(invalid("truncation_direction", "must be `Right` or `Left`")),
            },
            other => {
                return Err(TextRequestError::Unsupported {
                    field: other.to_string(),
                    hint:
                        " (it takes `inputs`, `normalize`, `truncate` and `truncation_direction`)"
                            .into(),
                })
            }
        }
    }
    Ok(TeiEmbed {
        inputs: inputs.ok_or(TextRequestError::Missing("inputs"))?,
        normalize,
        truncate,
    })
}

/// A text classifier's classify request: a JSON object `{"inputs": string | [string],
/// "truncate": bool, "top_k": n}`, or (`plain`) the body itself as one UTF-8 text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextClassify {
    pub inputs: Vec<String>,
    pub truncate: bool,
    pub top_k: Option<usize>,
}

pub fn parse_text_classify(body: &[u8], plain: bool) -> Result<TextClassify, TextRequestError> {
    if plain {
        let text = std::str::from_utf8(body).map_err(|e| {
            invalid(
                "body",
                format!("is not UTF-8 text (invalid byte at {})", e.valid_up_to()),
            )
        })?;
        return Ok(TextClassify {
            inputs: vec![text.to_string()],
            truncate: false,
            top_k: None,
        });
    }
    let map = object(body)?;
    let mut inputs = None;
    let mut truncate = false;
    let mut top_k = None;
    for (key, value) in &map {
        match key.as_str() {
            "inputs" => inputs = Some(texts("inputs", value, true)?),
            "truncate" => truncate = boolean("truncate", value)?,
            "top_k" => {
                top_k = Some(
                    value
                        .as_u64()
                        .filter(|&k| k > 0)
                        .ok_or_else(|| invalid("top_k", "must be a positive integer"))?
                        as usize,
                )
            }
            other => {
                return Err(TextRequestError::Unsupported {
                    field: other.to_string(),
                    hint: " (it takes `inputs`, `truncate` and `top_k`)".into(),
                })
            }
        }
    }
    Ok(TextClassify {
        inputs: inputs.ok_or(TextRequestError::Missing("inputs"))?,
        truncate,
        top_k,
    })
}

/// Base64 (standard alphabet, padded) of `values` as little-endian float32: OpenAI's
/// `encoding_format: base64`.
pub fn base64_f32(values: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai(body: &str) -> Result<OpenAiEmbeddings, String> {
        parse_openai_embeddings(body.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn openai_requests_take_a_string_or_strings_and_refuse_the_rest_by_name() {
        let one = openai(r#"{"model": "m", "input": "hi"}"#).unwrap();
        assert_eq!(one.input, vec!["hi"]);
        assert_eq!(one.encoding_format, EncodingFormat::Float);
        let many = openai(
            r#"{"model": "m", "input": ["a", "b"], "encoding_format": "base64", "user": "u"}"#,
        )
        .unwrap();
        assert_eq!(many.input, vec!["a", "b"]);
        assert_eq!(many.encoding_format, EncodingFormat::Base64);
        for (body, want) in [
            (r#"{"input": "x"}"#, "`model` is required"),
            (r#"{"model": "m"}"#, "`input` is required"),
            (
                r#"{"model": "m", "input": 3}"#,
                "`input` must be a string or an array of strings, not a number",
            ),
            (
                r#"{"model": "m", "input": ["a", 7]}"#,
                "`input[1]` must be a string, not a number",
            ),
            (
                r#"{"model": "m", "input": ["a", ""]}"#,
                "`input[1]` is an empty string",
            ),
            (
                r#"{"model": "m", "input": [[1, 2]]}"#,
                "`input[0]` is not supported by this server as token ids",
            ),
            (
                r#"{"model": "m", "input": []}"#,
                "`input` is an empty array",
            ),
            (
                r#"{"model": "m", "input": "x", "dimensions": 8}"#,
                "`dimensions` is not supported",
            ),
            (
                r#"{"model": "m", "input": "x", "temperature": 1}"#,
                "`temperature` is not supported",
            ),
            (
                r#"{"model": "m", "input": "x", "encoding_format": "int8"}"#,
                "`encoding_format` must be",
            ),
            (r#"["x"]"#, "must be a JSON object"),
            ("{", "not JSON"),
        ] {
            let err = openai(body).unwrap_err();
            assert!(err.contains(want), "{body}: {err}");
        }
        let too_many = format!(
            r#"{{"model": "m", "input": [{}]}}"#,
            vec!["\"a\""; MAX_TEXTS + 1].join(",")
        );
        assert!(openai(&too_many)
            .unwrap_err()
            .contains("more than the limit of 2048"));
    }

    #[test]
    fn tei_requests_keep_the_empty_text_and_their_options() {
        let r = parse_tei_embed(br#"{"inputs": ["", "x"], "normalize": false, "truncate": true}"#)
            .unwrap();
        assert_eq!(r.inputs, vec!["", "x"]);
        assert_eq!(r.normalize, Some(false));
        assert!(r.truncate);
        for (body, want) in [
            (
                r#"{"inputs": "x", "truncate": "yes"}"#,
                "`truncate` must be true or false",
            ),
            (
                r#"{"inputs": "x", "truncation_direction": "Left"}"#,
                "as `Left`",
            ),
            (
                r#"{"inputs": "x", "prompt_name": "q"}"#,
                "`prompt_name` is not supported",
            ),
            (r#"{"normalize": true}"#, "`inputs` is required"),
        ] {
            let err = parse_tei_embed(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn classify_bodies_are_plain_text_or_json() {
        let plain = parse_text_classify("great value".as_bytes(), true).unwrap();
        assert_eq!(plain.inputs, vec!["great value"]);
        let err = parse_text_classify(b"caf\xe9", true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not UTF-8 text (invalid byte at 3)"), "{err}");
        let json = parse_text_classify(
            br#"{"inputs": ["a", "b"], "top_k": 2, "truncate": true}"#,
            false,
        )
        .unwrap();
        assert_eq!(
            (json.inputs.len(), json.top_k, json.truncate),
            (2, Some(2), true)
        );
    }

    #[test]
    fn base64_matches_the_standard_encoding() {
        // 1.0f32 = 00 00 80 3f; 2.0 = 00 00 00 40
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, 2.0]), "AACAPwAAAEA=");
        assert_eq!(base64_f32(&[]), "");
    }
}
