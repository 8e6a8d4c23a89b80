//! The Open Inference Protocol v2 (KServe v2, as Triton speaks it): inference requests in JSON
//! or with the binary tensor data extension, and the responses.
//!
//! Binary framing: the header `Inference-Header-Content-Length: N` says the body's first N bytes
//! are the JSON request; each input with `"parameters": {"binary_data_size": S}` takes the next
//! S bytes, in input order, and the sizes must account for every remaining byte. `BYTES`
//! elements are a 4-byte little-endian length followed by that many bytes.
//!
//! An input may be the model's preprocessed tensor (`FP32`, the model's shape with any batch) or
//! encoded images (`BYTES`, shape `[n]` or `[n, 1]`), which the server decodes and preprocesses
//! with the model's manifest. Outputs are the model's output rows, or with the classification
//! extension (`"parameters": {"classification": k}`) the top k as `"value:index:label"`.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use singlepoint_core::{DType, Dim, TensorSpec};
use singlepoint_model::labels::top_k_indices;
use singlepoint_model::Model;

use crate::ItemInput;

/// The OIP name of a datatype.
pub fn datatype(dtype: DType) -> &'static str {
    match dtype {
        DType::Float32 => "FP32",
        DType::Float16 => "FP16",
        DType::Int64 => "INT64",
        DType::Int32 => "INT32",
        DType::Uint8 => "UINT8",
    }
}

/// A shape for metadata: dynamic dimensions are `-1`.
pub fn shape(dims: &[Dim]) -> Vec<i64> {
    dims.iter()
        .map(|d| d.fixed().map_or(-1, |n| n as i64))
        .collect()
}

#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<RawInput>,
    #[serde(default)]
    outputs: Option<Vec<RawOutput>>,
}

#[derive(Deserialize)]
struct RawInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// What the client wants back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRequest {
    pub name: String,
    /// Top-k classes as strings instead of the raw row.
    pub classification: Option<usize>,
    pub binary: bool,
}

/// A parsed inference request: one item per batch row.
pub struct InferRequest {
    pub id: Option<String>,
    pub items: Vec<ItemInput>,
    pub outputs: Vec<OutputRequest>,
}

/// Parses a request body. `header_len` is `Inference-Header-Content-Length`, when present.
/// Every error is the client's (400) and says what was wrong.
pub fn parse_request(
    body: &Bytes,
    header_len: Option<usize>,
    input: &TensorSpec,
    output: &TensorSpec,
    n_classes: usize,
) -> Result<InferRequest, String> {
    let (json, mut binary) = match header_len {
        None => (body.clone(), Bytes::new()),
        Some(n) if n > body.len() => {
            return Err(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            ))
        }
        Some(n) => (body.slice(..n), body.slice(n..)),
    };
    let raw: RawRequest =
        serde_json::from_slice(&json).map_err(|e| format!("malformed inference request: {e}"))?;
    if raw.inputs.len() != 1 {
        return Err(format!(
            "the model takes exactly one input, `{}`; the request has {}",
            input.name,
            raw.inputs.len()
        ));
    }
    let mut items = Vec::new();
    for raw_input in raw.inputs {
        if raw_input.name != input.name {
            return Err(format!(
                "unknown input `{}`; the model's input is `{}`",
                raw_input.name, input.name
            ));
        }
        let binary_size = match raw_input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
        {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                format!(
                    "input `{}`: binary_data_size must be a non-negative integer",
                    raw_input.name
                )
            })? as usize),
        };
        let data = match binary_size {
            Some(size) => {
                if header_len.is_none() {
                    return Err(format!(
                        "input `{}` has binary_data_size but the request has no Inference-Header-Content-Length header",
                        raw_input.name
                    ));
                }
                if size > binary.len() {
                    return Err(format!(
                        "input `{}` declares {size} bytes of binary data but only {} remain in the body (truncated payload?)",
                        raw_input.name,
                        binary.len()
                    ));
                }
                let taken = binary.slice(..size);
                binary = binary.slice(size..);
                TensorData::Binary(taken)
            }
            None => match raw_input.data {
                Some(v) => TensorData::Json(v),
                None => {
                    return Err(format!(
                        "input `{}` has neither `data` nor binary_data_size",
                        raw_input.name
                    ))
                }
            },
        };
        items = parse_input(
            &raw_input.name,
            &raw_input.datatype,
            &raw_input.shape,
            data,
            input,
        )?;
    }
    if !binary.is_empty() {
        return Err(format!(
            "the binary section has {} bytes beyond the inputs' declared binary_data_size",
            binary.len()
        ));
    }
    let binary_default = raw
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_output"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let outputs = match raw.outputs {
        None => vec![OutputRequest {
            name: output.name.clone(),
            classification: None,
            binary: binary_default,
        }],
        Some(list) => list
            .into_iter()
            .map(|o| parse_output(o, output, n_classes, binary_default))
            .collect::<Result<_, _>>()?,
    };
    Ok(InferRequest {
        id: raw.id,
        items,
        outputs,
    })
}

fn parse_output(
    o: RawOutput,
    output: &TensorSpec,
    n_classes: usize,
    binary_default: bool,
) -> Result<OutputRequest, String> {
    if o.name != output.name {
        return Err(format!(
            "unknown output `{}`; the model's output is `{}`",
            o.name, output.name
        ));
    }
    let params = o.parameters.unwrap_or_default();
    let binary = match params.get("binary_data") {
        None => binary_default,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("output `{}`: binary_data must be true or false", o.name))?,
    };
    let classification = match params.get("classification") {
        None => None,
        Some(v) => {
            let k = v
                .as_u64()
                .filter(|&k| k >= 1 && k as usize <= n_classes)
                .ok_or_else(|| {
                    format!(
                        "output `{}`: classification must be an integer from 1 to {n_classes}",
                        o.name
                    )
                })?;
            Some(k as usize)
        }
    };
    Ok(OutputRequest {
        name: o.name,
        classification,
        binary,
    })
}

enum TensorData {
    Json(Value),
    Binary(Bytes),
}

fn parse_input(
    name: &str,
    datatype: &str,
    dims: &[i64],
    data: TensorData,
    spec: &TensorSpec,
) -> Result<Vec<ItemInput>, String> {
    if dims.iter().any(|&d| d < 0) {
        return Err(format!(
            "input `{name}`: shape {dims:?} has a negative dimension"
        ));
    }
    let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("input `{name}`: shape {dims:?} is too large"))?;
    match datatype {
        "BYTES" => {
            let n = match dims.as_slice() {
                [n] | [n, 1] => *n,
                _ => {
                    return Err(format!(
                        "input `{name}`: BYTES (encoded images) must have shape [n] or [n, 1], not {dims:?}"
                    ))
                }
            };
            let TensorData::Binary(bytes) = data else {
                return Err(format!(
                    "input `{name}`: send encoded images as binary data (tritonclient: binary_data=True), or POST them to /v1/models/{{name}}/classify"
                ));
            };
            let images = split_bytes_elements(&bytes)
                .map_err(|e| format!("input `{name}`: {e}"))?;
            if images.len() != n {
                return Err(format!(
                    "input `{name}`: shape {dims:?} says {n} images but the data holds {}",
                    images.len()
                ));
            }
            if n == 0 {
                return Err(format!("input `{name}`: no images"));
            }
            Ok(images.into_iter().map(ItemInput::Image).collect())
        }
        "FP32" => {
            if spec.dtype != DType::Float32 {
                return Err(format!(
                    "input `{name}`: the model takes {}, not FP32",
                    self::datatype(spec.dtype)
                ));
            }
            let fits = dims.len() == spec.shape.len()
                && dims.iter().zip(&spec.shape).all(|(&n, d)| d.admits(n));
            if !fits {
                return Err(format!(
                    "input `{name}`: shape {dims:?} does not fit the model's {}",
                    spec.shape_string()
                ));
            }
            let n = dims[0];
            if n == 0 {
                return Err(format!("input `{name}`: the batch is empty"));
            }
            let values = match data {
                TensorData::Binary(bytes) => {
                    if count.checked_mul(4) != Some(bytes.len()) {
                        return Err(format!(
                            "input `{name}`: binary_data_size is {} bytes but shape {dims:?} of FP32 needs {}",
                            bytes.len(),
                            count as u128 * 4
                        ));
                    }
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect::<Vec<f32>>()
                }
                TensorData::Json(value) => {
                    // The shape is the client's word; reserve only what the data can hold.
                    let mut values = Vec::with_capacity(count.min(1 << 20));
                    flatten_numbers(&value, &mut values, count)
                        .map_err(|e| format!("input `{name}`: {e}"))?;
                    if values.len() != count {
                        return Err(format!(
                            "input `{name}`: shape {dims:?} needs {count} elements but `data` has {}",
                            values.len()
                        ));
                    }
                    values
                }
            };
            if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
                return Err(format!(
                    "input `{name}`: element {pos} is {} (NaN and infinities are refused)",
                    values[pos]
                ));
            }
            let item_len = count / n;
            Ok(values
                .chunks_exact(item_len)
                .map(|c| ItemInput::Tensor(c.to_vec()))
                .collect())
        }
        other => Err(format!(
            "input `{name}`: datatype `{other}` is not accepted; use {} (the preprocessed tensor) or BYTES (encoded images)",
            self::datatype(spec.dtype)
        )),
    }
}

/// Flattens nested JSON arrays of numbers, row-major, refusing more than `max` elements.
fn flatten_numbers(value: &Value, out: &mut Vec<f32>, max: usize) -> Result<(), String> {
    match value {
        Value::Number(n) => {
            if out.len() >= max {
                return Err(format!(
                    "`data` has more than the {max} elements the shape needs"
                ));
            }
            let v = n
                .as_f64()
                .ok_or_else(|| format!("`{n}` is not a number this server reads"))?;
            out.push(v as f32);
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|v| flatten_numbers(v, out, max)),
        other => Err(format!(
            "`data` must hold only numbers; found {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::String(_) => "a string",
                _ => "an object",
            }
        )),
    }
}

/// Splits a BYTES tensor's binary form into its elements.
pub fn split_bytes_elements(data: &Bytes) -> Result<Vec<Bytes>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        if data.len() - at < 4 {
            return Err(format!(
                "element {} is cut short: {} bytes left where a 4-byte length is needed",
                out.len(),
                data.len() - at
            ));
        }
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        at += 4;
        if len > data.len() - at {
            return Err(format!(
                "element {} declares {len} bytes but only {} remain (truncated payload?)",
                out.len(),
                data.len() - at
            ));
        }
        out.push(data.slice(at..at + len));
        at += len;
    }
    Ok(out)
}

#[derive(Serialize)]
struct ResponseOutput {
    name: String,
    datatype: &'static str,
    shape: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
}

#[derive(Serialize)]
struct Response {
    model_name: String,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    parameters: Value,
    outputs: Vec<ResponseOutput>,
}

/// An encoded response: the body, and the JSON header's length when it has a binary section.
pub struct Encoded {
    pub body: Vec<u8>,
    pub header_len: Option<usize>,
}

/// Encodes the answer rows as the requested outputs.
pub fn encode_response(
    model: &Model,
    id: Option<String>,
    rows: &[Arc<[f32]>],
    outputs: &[OutputRequest],
    cache_hits: usize,
) -> Encoded {
    let mut binary = Vec::new();
    let mut encoded = Vec::with_capacity(outputs.len());
    let width = rows.first().map_or(0, |r| r.len());
    for o in outputs {
        let (datatype, shape, json, bin): (&'static str, Vec<usize>, Value, Vec<u8>) =
            match o.classification {
                None => {
                    let shape = vec![rows.len(), width];
                    if o.binary {
                        let bin = rows
                            .iter()
                            .flat_map(|r| r.iter().flat_map(|v| v.to_le_bytes()))
                            .collect();
                        ("FP32", shape, Value::Null, bin)
                    } else {
                        let data = rows
                            .iter()
                            .flat_map(|r| r.iter().map(|&v| Value::from(v)))
                            .collect();
                        ("FP32", shape, Value::Array(data), Vec::new())
                    }
                }
                Some(k) => {
                    let k = k.min(width);
                    let strings: Vec<String> = rows
                        .iter()
                        .flat_map(|row| {
                            top_k_indices(row, k).into_iter().map(move |i| {
                                let label = model.labels.as_ref().and_then(|l| l.name(i));
                                match label {
                                    Some(label) => format!("{:.6}:{i}:{label}", row[i]),
                                    None => format!("{:.6}:{i}", row[i]),
                                }
                            })
                        })
                        .collect();
                    let shape = vec![rows.len(), k];
                    if o.binary {
                        let mut bin = Vec::new();
                        for s in &strings {
                            bin.extend_from_slice(&(s.len() as u32).to_le_bytes());
                            bin.extend_from_slice(s.as_bytes());
                        }
                        ("BYTES", shape, Value::Null, bin)
                    } else {
                        let data = strings.into_iter().map(Value::from).collect();
                        ("BYTES", shape, Value::Array(data), Vec::new())
                    }
                }
            };
        let (parameters, data) = if o.binary {
            (
                Some(serde_json::json!({ "binary_data_size": bin.len() })),
                None,
            )
        } else {
            (None, Some(json))
        };
        binary.extend_from_slice(&bin);
        encoded.push(ResponseOutput {
            name: o.name.clone(),
            datatype,
            shape,
            parameters,
            data,
        });
    }
    let response = Response {
        model_name: model.manifest.name.clone(),
        model_version: model.manifest.version.clone(),
        id,
        parameters: serde_json::json!({ "cache_hits": cache_hits }),
        outputs: encoded,
    };
    let mut body = serde_json::to_vec(&response).expect("a response always serializes");
    let any_binary = outputs.iter().any(|o| o.binary);
    let header_len = any_binary.then_some(body.len());
    body.extend_from_slice(&binary);
    Encoded { body, header_len }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> (TensorSpec, TensorSpec) {
        (
            TensorSpec {
                name: "input".into(),
                dtype: DType::Float32,
                shape: vec![Dim::Dynamic, Dim::Fixed(2)],
            },
            TensorSpec {
                name: "logits".into(),
                dtype: DType::Float32,
                shape: vec![Dim::Dynamic, Dim::Fixed(3)],
            },
        )
    }

    fn parse(json: &str, binary: &[u8]) -> Result<InferRequest, String> {
        let (i, o) = spec();
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(binary);
        let header = (!binary.is_empty()).then_some(json.len());
        parse_request(&Bytes::from(body), header, &i, &o, 3)
    }

    fn tensors(r: &InferRequest) -> Vec<Vec<f32>> {
        r.items
            .iter()
            .map(|i| match i {
                ItemInput::Tensor(v) => v.clone(),
                ItemInput::Image(_) => panic!("expected a tensor"),
            })
            .collect()
    }

    #[test]
    fn json_tensors_flat_or_nested_split_into_rows() {
        for data in ["[1, 2, 3, 4]", "[[1, 2], [3, 4]]"] {
            let r = parse(
                &format!(r#"{{"inputs":[{{"name":"input","shape":[2,2],"datatype":"FP32","data":{data}}}]}}"#),
                &[],
            )
            .unwrap();
            assert_eq!(tensors(&r), vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
            assert_eq!(r.outputs[0].name, "logits");
            assert!(!r.outputs[0].binary);
        }
    }

    #[test]
    fn binary_tensors_match_json_tensors() {
        let bin: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let json = r#"{"inputs":[{"name":"input","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":16}}],"outputs":[{"name":"logits","parameters":{"binary_data":true}}]}"#;
        let r = parse(json, &bin).unwrap();
        assert_eq!(tensors(&r), vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
        assert!(r.outputs[0].binary);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases: &[(&str, &[u8], &str)] = &[
            ("{not json", &[], "malformed"),
            (
                r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#,
                &[],
                "unknown input `x`",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"INT8","data":[1,2]}]}"#,
                &[],
                "datatype `INT8`",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#,
                &[],
                "does not fit",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[2,2],"datatype":"FP32","data":[1,2,3]}]}"#,
                &[],
                "needs 4 elements",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[1,2,3]}]}"#,
                &[],
                "more than",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[1,"a"]}]}"#,
                &[],
                "a string",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,-2],"datatype":"FP32","data":[]}]}"#,
                &[],
                "negative",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#,
                &[0; 4],
                "truncated",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#,
                &[0; 12],
                "beyond",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}"#,
                &[9, 0, 0, 0, 1, 2],
                "truncated",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1],"datatype":"BYTES","data":["x"]}]}"#,
                &[],
                "binary data",
            ),
            (r#"{"inputs":[]}"#, &[], "exactly one input"),
            (
                r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[1,2]}],"outputs":[{"name":"probs"}]}"#,
                &[],
                "unknown output",
            ),
            (
                r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[1,2]}],"outputs":[{"name":"logits","parameters":{"classification":0}}]}"#,
                &[],
                "classification",
            ),
        ];
        for (json, bin, expected) in cases {
            let err = parse(json, bin)
                .err()
                .unwrap_or_else(|| panic!("{json} parsed"));
            assert!(err.contains(expected), "{json}: {err}");
        }
        let err = parse(
            r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#,
            &[],
        );
        assert!(err.is_ok());
    }

    #[test]
    fn a_header_length_past_the_body_is_refused() {
        let (i, o) = spec();
        let err = parse_request(&Bytes::from_static(b"{}"), Some(10), &i, &o, 3)
            .err()
            .unwrap();
        assert!(
            err.contains("Inference-Header-Content-Length is 10"),
            "{err}"
        );
    }

    #[test]
    fn bytes_elements_split_by_their_lengths() {
        let mut data = Vec::new();
        for s in [&b"abc"[..], b"", b"de"] {
            data.extend_from_slice(&(s.len() as u32).to_le_bytes());
            data.extend_from_slice(s);
        }
        let parts = split_bytes_elements(&Bytes::from(data)).unwrap();
        assert_eq!(parts, vec![&b"abc"[..], b"", b"de"]);
    }

    /// Found by tests/hostile (requests/shape-lies-big.json): a shape of a billion rows with
    /// three numbers of data made the server reserve 600 TB for them, and the failed
    /// allocation aborted the process. Now only what the data can hold is reserved.
    #[test]
    fn regression_shape_lies_big_reserves_nothing_for_the_claimed_shape() {
        let err = parse(
            r#"{"inputs":[{"name":"input","shape":[4611686018427387904,2],"datatype":"FP32","data":[1,2,3]}]}"#,
            &[],
        )
        .err()
        .unwrap();
        assert!(
            err.contains("needs 9223372036854775808 elements but `data` has 3"),
            "{err}"
        );
    }

    /// The binary twin: `count × 4` overflowed for a shape whose element count fits in a
    /// `usize` but whose byte size does not (a panic with overflow checks on, a wrong length
    /// compared without them).
    #[test]
    fn regression_binary_byte_size_overflow_is_refused() {
        let json = r#"{"inputs":[{"name":"input","shape":[4611686018427387904,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let err = parse(json, &[0; 8]).err().unwrap();
        assert!(err.contains("needs 36893488147419103232"), "{err}");
    }
}
