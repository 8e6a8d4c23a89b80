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
//!
//! A `tensor` model ([`parse_tensor_request`]) takes each of its inputs by name, of any of the
//! seam's types (`FP32`, `FP16`, `INT64`, `INT32`, `INT8`, `UINT8`, `BOOL`), and answers with
//! every output, or those the request names in `outputs`.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use singlepoint_core::{AnyTensor, Buffer, DType, Dim, TensorSpec};
use singlepoint_model::labels::top_k_indices;
use singlepoint_model::{InputDecl, Model};

use crate::ItemInput;

/// The OIP name of a datatype.
pub fn datatype(dtype: DType) -> &'static str {
    match dtype {
        DType::Float32 => "FP32",
        DType::Float16 => "FP16",
        DType::Int64 => "INT64",
        DType::Int32 => "INT32",
        DType::Int8 => "INT8",
        DType::Uint8 => "UINT8",
        DType::Bool => "BOOL",
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

/// A request's JSON with each input's data (JSON, or its slice of the binary section).
struct Framed {
    id: Option<String>,
    inputs: Vec<(RawInput, TensorData)>,
    outputs: Option<Vec<RawOutput>>,
    binary_default: bool,
    parameters: Map<String, Value>,
}

/// The outputs an object detector answers over the inference protocol, in the layout of
/// TensorRT's EfficientNMS (what Triton detection ensembles return): per image the number of
/// detections, then that many boxes (x1, y1, x2, y2 in the image's pixels), scores and class
/// indices, padded with zeros to the most any image of the request has.
pub const DETECT_OUTPUTS: [(&str, DType); 4] = [
    ("num_dets", DType::Int32),
    ("det_boxes", DType::Float32),
    ("det_scores", DType::Float32),
    ("det_classes", DType::Int32),
];

/// A detector's request: its images, the outputs wanted, and the detection options given as
/// request parameters (`score`, `iou`, `max_detections`, `classes` as "car,person").
pub struct DetectRequest {
    pub request: InferRequest,
    pub score: Option<f32>,
    pub iou: Option<f32>,
    pub max_detections: Option<usize>,
    pub classes: Option<Vec<String>>,
}

/// Parses an object detector's request: its one input as encoded images (BYTES) or the
/// preprocessed tensor, outputs among [`DETECT_OUTPUTS`] (all four by default).
pub fn parse_detect_request(
    body: &Bytes,
    header_len: Option<usize>,
    input: &TensorSpec,
) -> Result<DetectRequest, String> {
    let mut framed = frame(body, header_len)?;
    let items = image_items(std::mem::take(&mut framed.inputs), input)?;
    let names = || {
        DETECT_OUTPUTS
            .iter()
            .map(|(n, _)| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let outputs = match framed.outputs {
        None => DETECT_OUTPUTS
            .iter()
            .map(|(name, _)| OutputRequest {
                name: name.to_string(),
                classification: None,
                binary: framed.binary_default,
            })
            .collect(),
        Some(list) => list
            .into_iter()
            .map(|o| {
                if !DETECT_OUTPUTS.iter().any(|(n, _)| *n == o.name) {
                    return Err(format!(
                        "unknown output `{}`; a detector's outputs are {}",
                        o.name,
                        names()
                    ));
                }
                let params = o.parameters.unwrap_or_default();
                Ok(OutputRequest {
                    binary: binary_flag(&params, &o.name, framed.binary_default)?,
                    name: o.name,
                    classification: None,
                })
            })
            .collect::<Result<_, String>>()?,
    };
    let p = &framed.parameters;
    let number = |key: &str| -> Result<Option<f64>, String> {
        match p.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("parameter `{key}` must be a number, not {v}")),
        }
    };
    let max_detections = match number("max_detections")? {
        None => None,
        Some(v) if v >= 1.0 && v.fract() == 0.0 && v <= 1e6 => Some(v as usize),
        Some(v) => {
            return Err(format!(
                "parameter `max_detections` must be a whole number from 1, not {v}"
            ))
        }
    };
    let classes = match p.get("classes") {
        None => None,
        Some(Value::String(list)) => Some(
            list.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        Some(Value::Array(list)) => Some(
            list.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("parameter `classes` holds {v}, not a class name"))
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(v) => return Err(format!("parameter `classes` must be names, not {v}")),
    };
    Ok(DetectRequest {
        request: InferRequest {
            id: framed.id,
            items,
            outputs,
        },
        score: number("score")?.map(|v| v as f32),
        iou: number("iou")?.map(|v| v as f32),
        max_detections,
        classes,
    })
}

/// A text model's one input over the inference protocol: BYTES, one UTF-8 text an element.
pub const TEXT_INPUT: &str = "text";

/// A text model's request: its texts, the outputs wanted, and the `truncate` and `normalize`
/// request parameters.
pub struct TextRequest {
    pub request: InferRequest,
    /// Embeddings: L2-normalise (`None`: as the model says).
    pub normalize: Option<bool>,
}

/// Parses a text model's request: its one input [`TEXT_INPUT`] as BYTES of shape `[n]` or
/// `[n, 1]` (JSON strings, or binary elements), each element one UTF-8 text, named by index
/// when it is not; `outputs` are the names the model answers with (all by default).
pub fn parse_text_request(
    body: &Bytes,
    header_len: Option<usize>,
    outputs: &[&str],
    max_items: usize,
) -> Result<TextRequest, String> {
    let framed = frame(body, header_len)?;
    let [(raw, data)]: [(RawInput, TensorData); 1] =
        framed.inputs.try_into().map_err(|all: Vec<_>| {
            format!(
                "a text model takes exactly one input, `{TEXT_INPUT}`; the request has {}",
                all.len()
            )
        })?;
    if raw.name != TEXT_INPUT {
        return Err(format!(
            "unknown input `{}`; a text model's input is `{TEXT_INPUT}` (BYTES, one UTF-8 text an element)",
            raw.name
        ));
    }
    if raw.datatype != "BYTES" {
        return Err(format!(
            "input `{TEXT_INPUT}`: datatype `{}`; texts are BYTES",
            raw.datatype
        ));
    }
    let n = match raw.shape.as_slice() {
        [n] | [n, 1] if *n >= 0 => *n as usize,
        dims => {
            return Err(format!(
                "input `{TEXT_INPUT}`: BYTES texts must have shape [n] or [n, 1], not {dims:?}"
            ))
        }
    };
    let texts: Vec<Result<String, String>> = match data {
        TensorData::Binary(bytes) => split_bytes_elements(&bytes)
            .map_err(|e| format!("input `{TEXT_INPUT}`: {e}"))?
            .into_iter()
            .map(|b| {
                String::from_utf8(b.to_vec()).map_err(|e| {
                    format!(
                        "is not UTF-8 text (invalid byte at {})",
                        e.utf8_error().valid_up_to()
                    )
                })
            })
            .collect(),
        TensorData::Json(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                Value::Array(inner) if inner.len() == 1 && inner[0].is_string() => {
                    Ok(inner[0].as_str().unwrap_or_default().to_string())
                }
                other => Err(format!("must be a string, not {other}")),
            })
            .collect(),
        TensorData::Json(other) => {
            return Err(format!(
                "input `{TEXT_INPUT}`: `data` must be an array of strings, not {other}"
            ))
        }
    };
    if texts.len() != n {
        return Err(format!(
            "input `{TEXT_INPUT}`: shape {:?} says {n} texts but the data holds {}",
            raw.shape,
            texts.len()
        ));
    }
    if n == 0 {
        return Err(format!("input `{TEXT_INPUT}`: no texts"));
    }
    if n > max_items {
        return Err(format!(
            "input `{TEXT_INPUT}`: {n} texts in one request is more than the limit of {max_items}"
        ));
    }
    let p = &framed.parameters;
    let flag = |key: &str| -> Result<Option<bool>, String> {
        match p.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(format!("parameter `{key}` must be true or false, not {v}")),
        }
    };
    let truncate = flag("truncate")?.unwrap_or(false);
    let normalize = flag("normalize")?;
    let items = texts
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.map(|text| ItemInput::Text {
                text: std::sync::Arc::from(text),
                truncate,
            })
            .map_err(|e| format!("input `{TEXT_INPUT}`, element {i}: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let outputs = match framed.outputs {
        None => outputs
            .iter()
            .map(|name| OutputRequest {
                name: name.to_string(),
                classification: None,
                binary: framed.binary_default,
            })
            .collect(),
        Some(list) => list
            .into_iter()
            .map(|o| {
                if !outputs.contains(&o.name.as_str()) {
                    return Err(format!(
                        "unknown output `{}`; this model's outputs are {}",
                        o.name,
                        outputs
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                let params = o.parameters.unwrap_or_default();
                Ok(OutputRequest {
                    binary: binary_flag(&params, &o.name, framed.binary_default)?,
                    name: o.name,
                    classification: None,
                })
            })
            .collect::<Result<_, String>>()?,
    };
    Ok(TextRequest {
        request: InferRequest {
            id: framed.id,
            items,
            outputs,
        },
        normalize,
    })
}

/// Splits a body into the JSON request and each input's data. `header_len` is
/// `Inference-Header-Content-Length`, when present.
fn frame(body: &Bytes, header_len: Option<usize>) -> Result<Framed, String> {
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
    let mut inputs = Vec::with_capacity(raw.inputs.len());
    for mut raw_input in raw.inputs {
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
            None => match raw_input.data.take() {
                Some(v) => TensorData::Json(v),
                None => {
                    return Err(format!(
                        "input `{}` has neither `data` nor binary_data_size",
                        raw_input.name
                    ))
                }
            },
        };
        inputs.push((raw_input, data));
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
    Ok(Framed {
        id: raw.id,
        inputs,
        outputs: raw.outputs,
        binary_default,
        parameters: raw.parameters.unwrap_or_default(),
    })
}

/// The items of an image model's one input (encoded images or preprocessed rows).
fn image_items(
    inputs: Vec<(RawInput, TensorData)>,
    input: &TensorSpec,
) -> Result<Vec<ItemInput>, String> {
    let [(raw_input, data)]: [(RawInput, TensorData); 1] =
        inputs.try_into().map_err(|all: Vec<_>| {
            format!(
                "the model takes exactly one input, `{}`; the request has {}",
                input.name,
                all.len()
            )
        })?;
    if raw_input.name != input.name {
        return Err(format!(
            "unknown input `{}`; the model's input is `{}`",
            raw_input.name, input.name
        ));
    }
    parse_input(
        &raw_input.name,
        &raw_input.datatype,
        &raw_input.shape,
        data,
        input,
    )
}

/// Parses an image model's request: its one input as the preprocessed tensor or as encoded
/// images. `header_len` is `Inference-Header-Content-Length`, when present. Every error is the
/// client's (400) and says what was wrong.
pub fn parse_request(
    body: &Bytes,
    header_len: Option<usize>,
    input: &TensorSpec,
    output: &TensorSpec,
    n_classes: usize,
) -> Result<InferRequest, String> {
    let mut framed = frame(body, header_len)?;
    let items = image_items(std::mem::take(&mut framed.inputs), input)?;
    let binary_default = framed.binary_default;
    let outputs = match framed.outputs {
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
        id: framed.id,
        items,
        outputs,
    })
}

/// A tensor model's request, checked against its declared inputs: every input once, of its
/// type and rank, fixed sizes as declared, dynamic sizes within `max_length`, axes that share a
/// dimension name of one size, and one batch size across inputs. Items are the batch's rows;
/// a request of more than `max_items` rows is refused before any row is split off (a body of
/// one-byte rows would otherwise become millions of items).
pub fn parse_tensor_request(
    body: &Bytes,
    header_len: Option<usize>,
    inputs: &[InputDecl],
    outputs: &[TensorSpec],
    max_items: usize,
) -> Result<InferRequest, String> {
    let framed = frame(body, header_len)?;
    let items = tensor_items(framed.inputs, inputs, max_items)?;
    let requested = match framed.outputs {
        None => outputs
            .iter()
            .map(|o| OutputRequest {
                name: o.name.clone(),
                classification: None,
                binary: framed.binary_default,
            })
            .collect(),
        Some(list) => {
            let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
            list.into_iter()
                .map(|o| {
                    if !names.contains(&o.name.as_str()) {
                        return Err(format!(
                            "unknown output `{}`; the model's outputs are {}",
                            o.name,
                            quoted(&names)
                        ));
                    }
                    let params = o.parameters.unwrap_or_default();
                    if params.contains_key("classification") {
                        return Err(format!(
                            "output `{}`: classification is for image-classification models",
                            o.name
                        ));
                    }
                    Ok(OutputRequest {
                        binary: binary_flag(&params, &o.name, framed.binary_default)?,
                        name: o.name,
                        classification: None,
                    })
                })
                .collect::<Result<_, _>>()?
        }
    };
    Ok(InferRequest {
        id: framed.id,
        items,
        outputs: requested,
    })
}

/// A tensor model's items from its inputs as a request gives them: every input once, checked
/// against its declaration, one row of each per item.
fn tensor_items(
    given_inputs: Vec<(RawInput, TensorData)>,
    inputs: &[InputDecl],
    max_items: usize,
) -> Result<Vec<ItemInput>, String> {
    let expected: Vec<&str> = inputs.iter().map(|d| d.spec.name.as_str()).collect();
    let mut given: Vec<Option<AnyTensor>> = vec![None; inputs.len()];
    for (raw, data) in given_inputs {
        let Some(k) = inputs.iter().position(|d| d.spec.name == raw.name) else {
            return Err(format!(
                "unknown input `{}`; the model's inputs are {}",
                raw.name,
                quoted(&expected)
            ));
        };
        if given[k].is_some() {
            return Err(format!("input `{}` is given twice", raw.name));
        }
        given[k] = Some(read_tensor(&raw, data, &inputs[k])?);
    }
    if let Some(k) = given.iter().position(Option::is_none) {
        return Err(format!(
            "input `{}` is missing; the model takes {}",
            expected[k],
            quoted(&expected)
        ));
    }
    let given: Vec<AnyTensor> = given.into_iter().flatten().collect();
    let n = given[0].shape()[0];
    if n > max_items {
        return Err(format!(
            "{n} rows in one request is more than the server admits at once ({max_items}, --max-queue)"
        ));
    }
    // Named axes: one size per name across the request's inputs.
    let mut named: Vec<(&str, &str, usize, usize)> = Vec::new();
    for (decl, t) in inputs.iter().zip(&given) {
        if t.shape()[0] != n {
            return Err(format!(
                "input `{}` has {} rows but `{}` has {n}; every input has one row per item",
                decl.spec.name,
                t.shape()[0],
                expected[0]
            ));
        }
        for (axis, &size) in t.shape().iter().enumerate().skip(1) {
            let Some(symbol) = decl.spec.symbol(axis) else {
                continue;
            };
            match named.iter().find(|(s, ..)| *s == symbol) {
                Some(&(_, other, other_axis, other_size)) if other_size != size => {
                    return Err(format!(
                        "input `{}` axis {axis} is {size} but `{other}` axis {other_axis} is {other_size}; axes named `{symbol}` must have one size (a mask has its ids' length)",
                        decl.spec.name
                    ));
                }
                Some(_) => {}
                None => named.push((symbol, decl.spec.name.as_str(), axis, size)),
            }
        }
    }
    Ok((0..n)
        .map(|i| ItemInput::Tensors(given.iter().map(|t| t.item(i)).collect()))
        .collect())
}

/// A tensor handed over in memory (the Python package's numpy arrays) rather than in a request
/// body: its OIP datatype, shape and little-endian elements, checked exactly as a request's
/// binary input is.
pub struct MemoryTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

impl MemoryTensor {
    fn into_raw(self) -> (RawInput, TensorData) {
        let raw = RawInput {
            name: self.name,
            shape: self.shape,
            datatype: self.datatype,
            parameters: None,
            data: None,
        };
        (raw, TensorData::Binary(self.data))
    }
}

/// An image model's items from its preprocessed input tensor (FP32, the model's shape with any
/// batch) or encoded images (BYTES elements), given in memory.
pub fn image_items_from_memory(
    tensor: MemoryTensor,
    input: &TensorSpec,
) -> Result<Vec<ItemInput>, String> {
    image_items(vec![tensor.into_raw()], input)
}

/// A tensor model's items from its inputs given in memory, checked as
/// [`parse_tensor_request`] checks a request's.
pub fn tensor_items_from_memory(
    tensors: Vec<MemoryTensor>,
    inputs: &[InputDecl],
    max_items: usize,
) -> Result<Vec<ItemInput>, String> {
    tensor_items(
        tensors.into_iter().map(MemoryTensor::into_raw).collect(),
        inputs,
        max_items,
    )
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One input of a tensor request, checked against its declaration.
fn read_tensor(raw: &RawInput, data: TensorData, decl: &InputDecl) -> Result<AnyTensor, String> {
    let spec = &decl.spec;
    let name = &raw.name;
    let want = datatype(spec.dtype);
    if raw.datatype != want {
        return Err(format!(
            "input `{name}`: the model takes {want}, not {}",
            raw.datatype
        ));
    }
    if raw.shape.len() != spec.shape.len() {
        return Err(format!(
            "input `{name}`: shape {:?} has {} dimensions; the model takes {} ({})",
            raw.shape,
            raw.shape.len(),
            spec.shape.len(),
            spec.shape_string()
        ));
    }
    if raw.shape.iter().any(|&d| d < 0) {
        return Err(format!(
            "input `{name}`: shape {:?} has a negative dimension",
            raw.shape
        ));
    }
    let dims: Vec<usize> = raw.shape.iter().map(|&d| d as usize).collect();
    if dims[0] == 0 {
        return Err(format!("input `{name}`: the batch is empty"));
    }
    for (axis, (&n, d)) in dims.iter().zip(&spec.shape).enumerate().skip(1) {
        if !d.admits(n) {
            return Err(format!(
                "input `{name}`: axis {axis} is {n}; the model takes {d} ({})",
                spec.shape_string()
            ));
        }
        if n == 0 {
            return Err(format!("input `{name}`: axis {axis} is empty"));
        }
        if let (Dim::Dynamic, Some(max)) = (d, decl.max_length) {
            if n > max {
                return Err(format!(
                    "input `{name}`: axis {axis} is {n}, over the model's max_length of {max}"
                ));
            }
        }
    }
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("input `{name}`: shape {dims:?} is too large"))?;
    let buffer = match data {
        TensorData::Binary(bytes) => {
            let size = spec.dtype.size();
            if count.checked_mul(size) != Some(bytes.len()) {
                return Err(format!(
                    "input `{name}`: binary_data_size is {} bytes but shape {dims:?} of {want} needs {}",
                    bytes.len(),
                    count as u128 * size as u128
                ));
            }
            Buffer::from_le_bytes(spec.dtype, &bytes).map_err(|e| format!("input `{name}`: {e}"))?
        }
        TensorData::Json(value) => {
            let mut leaves = Vec::with_capacity(count.min(1 << 20));
            flatten_leaves(&value, &mut leaves, count)
                .map_err(|e| format!("input `{name}`: {e}"))?;
            if leaves.len() != count {
                return Err(format!(
                    "input `{name}`: shape {dims:?} needs {count} elements but `data` has {}",
                    leaves.len()
                ));
            }
            json_buffer(spec.dtype, &leaves).map_err(|e| format!("input `{name}`: {e}"))?
        }
    };
    let non_finite = match &buffer {
        Buffer::F32(v) => v.iter().position(|x| !x.is_finite()),
        Buffer::F16(v) => v.iter().position(|x| !x.is_finite()),
        _ => None,
    };
    if let Some(pos) = non_finite {
        return Err(format!(
            "input `{name}`: element {pos} is {} (NaN and infinities are refused)",
            buffer.get_f64(pos)
        ));
    }
    AnyTensor::new(dims, buffer).map_err(|e| format!("input `{name}`: {e}"))
}

/// Collects the leaves of nested JSON arrays, row-major, refusing more than `max`.
fn flatten_leaves<'a>(
    value: &'a Value,
    out: &mut Vec<&'a Value>,
    max: usize,
) -> Result<(), String> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|v| flatten_leaves(v, out, max)),
        leaf => {
            if out.len() >= max {
                return Err(format!(
                    "`data` has more than the {max} elements the shape needs"
                ));
            }
            out.push(leaf);
            Ok(())
        }
    }
}

/// JSON leaves as elements of `dtype`: numbers in the type's range (integers for integer
/// types), `true`/`false` (or 0/1) for booleans.
fn json_buffer(dtype: DType, leaves: &[&Value]) -> Result<Buffer, String> {
    let bad = |i: usize, v: &Value, what: &str| format!("element {i} is {v}, not {what}");
    let int = |i: usize, v: &Value, lo: i64, hi: i64| -> Result<i64, String> {
        v.as_i64()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| bad(i, v, &format!("an integer from {lo} to {hi}")))
    };
    let float = |i: usize, v: &Value| -> Result<f64, String> {
        v.as_f64().ok_or_else(|| bad(i, v, "a number"))
    };
    let e = leaves.iter().copied().enumerate();
    Ok(match dtype {
        DType::Float32 => Buffer::F32(
            e.map(|(i, v)| float(i, v).map(|x| x as f32))
                .collect::<Result<_, _>>()?,
        ),
        DType::Float16 => Buffer::F16(
            e.map(|(i, v)| float(i, v).map(singlepoint_core::f16::from_f64))
                .collect::<Result<_, _>>()?,
        ),
        DType::Int64 => Buffer::I64(
            e.map(|(i, v)| int(i, v, i64::MIN, i64::MAX))
                .collect::<Result<_, _>>()?,
        ),
        DType::Int32 => Buffer::I32(
            e.map(|(i, v)| int(i, v, i32::MIN.into(), i32::MAX.into()).map(|x| x as i32))
                .collect::<Result<_, _>>()?,
        ),
        DType::Int8 => Buffer::I8(
            e.map(|(i, v)| int(i, v, -128, 127).map(|x| x as i8))
                .collect::<Result<_, _>>()?,
        ),
        DType::Uint8 => Buffer::U8(
            e.map(|(i, v)| int(i, v, 0, 255).map(|x| x as u8))
                .collect::<Result<_, _>>()?,
        ),
        DType::Bool => Buffer::Bool(
            e.map(|(i, v)| match v {
                Value::Bool(b) => Ok(*b),
                other => int(i, other, 0, 1).map(|x| x == 1),
            })
            .collect::<Result<_, _>>()?,
        ),
    })
}

/// Encodes a tensor model's answers: each requested output, the items' rows stacked along
/// the batch axis, as JSON numbers or binary little-endian elements. An error means the items'
/// outputs could not be stacked (the server's fault, not the client's).
pub fn encode_tensor_response(
    model: &Model,
    id: Option<String>,
    answers: &[Arc<[AnyTensor]>],
    requested: &[OutputRequest],
    outputs: &[TensorSpec],
    cache_hits: usize,
) -> Result<Encoded, String> {
    let mut binary = Vec::new();
    let mut encoded = Vec::with_capacity(requested.len());
    for o in requested {
        let k = outputs
            .iter()
            .position(|s| s.name == o.name)
            .ok_or_else(|| format!("no output `{}`", o.name))?;
        let rows: Vec<&AnyTensor> = answers
            .iter()
            .map(|a| {
                a.get(k)
                    .ok_or_else(|| format!("an answer lacks output `{}`", o.name))
            })
            .collect::<Result<_, _>>()?;
        let stacked =
            AnyTensor::stack(&rows, None).map_err(|e| format!("output `{}`: {e}", o.name))?;
        let (parameters, data) = if o.binary {
            let before = binary.len();
            stacked.data().write_le_bytes(&mut binary);
            (
                Some(serde_json::json!({ "binary_data_size": binary.len() - before })),
                None,
            )
        } else {
            (None, Some(json_values(stacked.data())))
        };
        encoded.push(ResponseOutput {
            name: o.name.clone(),
            datatype: datatype(stacked.dtype()),
            shape: stacked.shape().to_vec(),
            parameters,
            data,
        });
    }
    Ok(finish_response(
        model, id, encoded, binary, requested, cache_hits,
    ))
}

fn json_values(data: &Buffer) -> Value {
    let values: Vec<Value> = match data {
        Buffer::F32(v) => v.iter().map(|&x| Value::from(x)).collect(),
        Buffer::F16(v) => v.iter().map(|x| Value::from(x.to_f32())).collect(),
        Buffer::I64(v) => v.iter().map(|&x| Value::from(x)).collect(),
        Buffer::I32(v) => v.iter().map(|&x| Value::from(x)).collect(),
        Buffer::I8(v) => v.iter().map(|&x| Value::from(x)).collect(),
        Buffer::U8(v) => v.iter().map(|&x| Value::from(x)).collect(),
        Buffer::Bool(v) => v.iter().map(|&x| Value::from(x)).collect(),
    };
    Value::Array(values)
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
    let binary = binary_flag(&params, &o.name, binary_default)?;
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

fn binary_flag(params: &Map<String, Value>, name: &str, default: bool) -> Result<bool, String> {
    match params.get("binary_data") {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("output `{name}`: binary_data must be true or false")),
    }
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

/// Encodes an image model's answer rows as the requested outputs.
pub fn encode_response(
    model: &Model,
    id: Option<String>,
    rows: &[&[f32]],
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
    finish_response(model, id, encoded, binary, outputs, cache_hits)
}

fn finish_response(
    model: &Model,
    id: Option<String>,
    encoded: Vec<ResponseOutput>,
    binary: Vec<u8>,
    outputs: &[OutputRequest],
    cache_hits: usize,
) -> Encoded {
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
            TensorSpec::new("input", DType::Float32, vec![Dim::Dynamic, Dim::Fixed(2)]),
            TensorSpec::new("logits", DType::Float32, vec![Dim::Dynamic, Dim::Fixed(3)]),
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
                _ => panic!("expected a tensor row"),
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

    fn token_model() -> (Vec<InputDecl>, Vec<TensorSpec>) {
        let decl = |name: &str| {
            let mut spec = TensorSpec::new(name, DType::Int64, vec![Dim::Dynamic, Dim::Dynamic]);
            spec.symbols[1] = Some("sequence".into());
            InputDecl {
                spec,
                pad: Some(0.0),
                max_length: Some(4),
            }
        };
        let out =
            |name: &str, dtype| TensorSpec::new(name, dtype, vec![Dim::Dynamic, Dim::Fixed(1)]);
        (
            vec![decl("ids"), decl("mask")],
            vec![out("score", DType::Float32), out("n", DType::Int64)],
        )
    }

    fn parse_tokens(json: &str) -> Result<InferRequest, String> {
        let (i, o) = token_model();
        parse_tensor_request(&Bytes::from(json.to_string()), None, &i, &o, 3)
    }

    #[test]
    fn tensor_requests_split_into_rows_of_every_input() {
        let r = parse_tokens(
            r#"{"inputs":[{"name":"mask","shape":[2,2],"datatype":"INT64","data":[1,1,1,0]},{"name":"ids","shape":[2,2],"datatype":"INT64","data":[[5,6],[7,8]]}],"outputs":[{"name":"n"}]}"#,
        )
        .unwrap();
        let ItemInput::Tensors(second) = &r.items[1] else {
            panic!("not tensors");
        };
        // In the model's order (ids, mask), whatever the request's.
        assert_eq!(second[0].data(), &Buffer::I64(vec![7, 8]));
        assert_eq!(second[1].data(), &Buffer::I64(vec![1, 0]));
        assert_eq!(r.outputs.len(), 1);
        assert_eq!(r.outputs[0].name, "n");
        let all = parse_tokens(
            r#"{"inputs":[{"name":"ids","shape":[1,1],"datatype":"INT64","data":[1]},{"name":"mask","shape":[1,1],"datatype":"INT64","data":[1]}]}"#,
        )
        .unwrap();
        assert_eq!(all.outputs.len(), 2, "no `outputs`: every output");
    }

    #[test]
    fn bad_tensor_requests_say_what_is_wrong() {
        let ok_mask = r#"{"name":"mask","shape":[1,2],"datatype":"INT64","data":[1,1]}"#;
        let with = |ids: &str| format!(r#"{{"inputs":[{ids},{ok_mask}]}}"#);
        let cases: Vec<(String, &str)> = vec![
            (with(r#"{"name":"ids","shape":[1,2],"datatype":"INT32","data":[1,2]}"#), "takes INT64, not INT32"),
            (with(r#"{"name":"ids","shape":[2],"datatype":"INT64","data":[1,2]}"#), "has 1 dimensions"),
            (with(r#"{"name":"ids","shape":[1,3],"datatype":"INT64","data":[1,2,3]}"#), "axes named `sequence`"),
            (with(r#"{"name":"ids","shape":[1,5],"datatype":"INT64","data":[1,2,3,4,5]}"#), "max_length of 4"),
            (with(r#"{"name":"ids","shape":[1,2],"datatype":"INT64","data":[1,2.5]}"#), "not an integer"),
            (with(r#"{"name":"ids","shape":[2,2],"datatype":"INT64","data":[1,2,3,4]}"#), "rows"),
            (with(r#"{"name":"ids","shape":[1,0],"datatype":"INT64","data":[]}"#), "empty"),
            (with(r#"{"name":"x","shape":[1,2],"datatype":"INT64","data":[1,2]}"#), "unknown input `x`"),
            (format!(r#"{{"inputs":[{ok_mask}]}}"#), "`ids` is missing"),
            (format!(r#"{{"inputs":[{ok_mask},{ok_mask}]}}"#), "given twice"),
            (
                r#"{"inputs":[{"name":"ids","shape":[4,1],"datatype":"INT64","data":[1,2,3,4]},{"name":"mask","shape":[4,1],"datatype":"INT64","data":[1,1,1,1]}]}"#.into(),
                "more than the server admits",
            ),
            (
                format!(r#"{{"inputs":[{ok_mask},{}],"outputs":[{{"name":"logits"}}]}}"#, ok_mask.replace("mask", "ids")),
                "unknown output `logits`",
            ),
        ];
        for (json, expected) in &cases {
            let err = parse_tokens(json)
                .err()
                .unwrap_or_else(|| panic!("{json} parsed"));
            assert!(err.contains(expected), "{json}: {err}");
        }
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
