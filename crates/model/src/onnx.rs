//! Reads an ONNX file's signature (its graph's inputs and outputs: names, element types,
//! shapes and dimension names) straight from the protobuf, without an engine. `init` writes
//! manifests from it, a model folder without a manifest is served with it, and a file that is
//! not an ONNX model is refused with what was wrong.
//!
//! Only the fields needed are decoded; everything else (weights included) is skipped by its
//! length, so reading a signature costs a pass over the file's field headers. Every read is
//! bounds-checked: a truncated or hostile file is an error, never a panic.

use singlepoint_core::{DType, Dim, TensorSpec};

/// What an ONNX file says about its graph's interface.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    pub ir_version: u64,
    /// The default-domain opset, when declared.
    pub opset: Option<u64>,
    pub producer: String,
    /// Graph inputs that are not initializers (weights), in order.
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// Why a file's signature could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("it is not an ONNX model: {0}")]
    NotOnnx(String),
    #[error("{name} has element type {ty} ({what}), which singlepoint does not run")]
    Unsupported {
        name: String,
        ty: i64,
        what: &'static str,
    },
    #[error("{0} is not a tensor (sequences and maps are not supported)")]
    NotTensor(String),
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn malformed(what: impl Into<String>) -> SignatureError {
    SignatureError::NotOnnx(what.into())
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, at: 0 }
    }

    fn varint(&mut self) -> Result<u64, SignatureError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .buf
                .get(self.at)
                .ok_or_else(|| malformed("the protobuf is cut short inside a number"))?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("a protobuf number is longer than 10 bytes"))
    }

    /// The next field, or `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, SignatureError> {
        if self.at >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (number, wire) = (key >> 3, key & 7);
        if number == 0 {
            return Err(malformed("a protobuf field has number 0"));
        }
        let field = match wire {
            0 => Field::Varint(self.varint()?),
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if self.buf.len() - self.at < n {
                    return Err(malformed("the protobuf is cut short"));
                }
                self.at += n;
                Field::Fixed
            }
            2 => {
                let len = self.varint()?;
                let left = (self.buf.len() - self.at) as u64;
                if len > left {
                    return Err(malformed(format!(
                        "a protobuf field declares {len} bytes where {left} remain (truncated file?)"
                    )));
                }
                let bytes = &self.buf[self.at..self.at + len as usize];
                self.at += len as usize;
                Field::Bytes(bytes)
            }
            other => {
                return Err(malformed(format!(
                    "protobuf wire type {other} is not valid"
                )))
            }
        };
        Ok(Some((number, field)))
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Reads the signature of the ONNX model in `bytes`.
pub fn signature(bytes: &[u8]) -> Result<Signature, SignatureError> {
    if bytes.first() != Some(&0x08) {
        return Err(malformed(if bytes.is_empty() {
            "the file is empty".to_string()
        } else {
            "it does not start with an ONNX ModelProto header (ir_version)".to_string()
        }));
    }
    let mut r = Reader::new(bytes);
    let (mut ir_version, mut opset, mut producer, mut graph) = (0, None, String::new(), None);
    while let Some((number, field)) = r.next()? {
        match (number, field) {
            (1, Field::Varint(v)) => ir_version = v,
            (2, Field::Bytes(b)) => producer = text(b),
            (7, Field::Bytes(b)) => graph = Some(b),
            (8, Field::Bytes(b)) => {
                let (mut domain, mut version) = (String::new(), None);
                let mut o = Reader::new(b);
                while let Some((n, f)) = o.next()? {
                    match (n, f) {
                        (1, Field::Bytes(d)) => domain = text(d),
                        (2, Field::Varint(v)) => version = Some(v),
                        _ => {}
                    }
                }
                if domain.is_empty() || domain == "ai.onnx" {
                    opset = version.or(opset);
                }
            }
            _ => {}
        }
    }
    let graph = graph.ok_or_else(|| malformed("the model has no graph"))?;
    let mut initializers = std::collections::HashSet::new();
    let (mut raw_inputs, mut raw_outputs) = (Vec::new(), Vec::new());
    let mut g = Reader::new(graph);
    while let Some((number, field)) = g.next()? {
        match (number, field) {
            (5, Field::Bytes(t)) => {
                let mut t = Reader::new(t);
                while let Some((n, f)) = t.next()? {
                    if let (8, Field::Bytes(name)) = (n, f) {
                        initializers.insert(text(name));
                    }
                }
            }
            (11, Field::Bytes(v)) => raw_inputs.push(v),
            (12, Field::Bytes(v)) => raw_outputs.push(v),
            _ => {}
        }
    }
    let mut inputs = Vec::new();
    for v in raw_inputs {
        let spec = value_info(v, "input")?;
        if !initializers.contains(&spec.name) {
            inputs.push(spec);
        }
    }
    let outputs = raw_outputs
        .into_iter()
        .map(|v| value_info(v, "output"))
        .collect::<Result<Vec<_>, _>>()?;
    if inputs.is_empty() {
        return Err(malformed("the graph has no inputs"));
    }
    if outputs.is_empty() {
        return Err(malformed("the graph has no outputs"));
    }
    Ok(Signature {
        ir_version,
        opset,
        producer,
        inputs,
        outputs,
    })
}

fn value_info(bytes: &[u8], role: &str) -> Result<TensorSpec, SignatureError> {
    let (mut name, mut ty) = (String::new(), None);
    let mut r = Reader::new(bytes);
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(b)) => name = text(b),
            (2, Field::Bytes(b)) => ty = Some(b),
            _ => {}
        }
    }
    let label = format!("{role} `{name}`");
    let ty = ty.ok_or_else(|| malformed(format!("{label} has no type")))?;
    let mut tensor = None;
    let mut r = Reader::new(ty);
    while let Some((n, f)) = r.next()? {
        if let (1, Field::Bytes(b)) = (n, f) {
            tensor = Some(b);
        }
    }
    let tensor = tensor.ok_or_else(|| SignatureError::NotTensor(label.clone()))?;
    let (mut elem, mut shape_bytes) = (0i64, None);
    let mut r = Reader::new(tensor);
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Varint(v)) => elem = v as i64,
            (2, Field::Bytes(b)) => shape_bytes = Some(b),
            _ => {}
        }
    }
    let dtype = match elem {
        1 => DType::Float32,
        2 => DType::Uint8,
        3 => DType::Int8,
        6 => DType::Int32,
        7 => DType::Int64,
        9 => DType::Bool,
        10 => DType::Float16,
        other => {
            let what = match other {
                4 => "uint16",
                5 => "int16",
                8 => "string",
                11 => "double",
                12 => "uint32",
                13 => "uint64",
                16 => "bfloat16",
                _ => "unknown",
            };
            return Err(SignatureError::Unsupported {
                name: label,
                ty: other,
                what,
            });
        }
    };
    let (mut shape, mut symbols) = (Vec::new(), Vec::new());
    if let Some(s) = shape_bytes {
        let mut r = Reader::new(s);
        while let Some((n, f)) = r.next()? {
            let (1, Field::Bytes(dim)) = (n, f) else {
                continue;
            };
            let (mut value, mut param) = (None, None);
            let mut d = Reader::new(dim);
            while let Some((n, f)) = d.next()? {
                match (n, f) {
                    (1, Field::Varint(v)) => value = Some(v as i64),
                    (2, Field::Bytes(p)) => param = Some(text(p)),
                    _ => {}
                }
            }
            match value {
                Some(v) if v > 0 => {
                    shape.push(Dim::Fixed(v as usize));
                    symbols.push(None);
                }
                _ => {
                    shape.push(Dim::Dynamic);
                    symbols.push(param.filter(|p| !p.is_empty()));
                }
            }
        }
    }
    Ok(TensorSpec {
        name,
        dtype,
        shape,
        symbols,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits() -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../models/digits-cnn/model.onnx"),
        )
        .unwrap()
    }

    #[test]
    fn reads_the_digits_models_signature() {
        let s = signature(&digits()).unwrap();
        assert_eq!(s.inputs.len(), 1);
        assert_eq!(s.inputs[0].name, "input");
        assert_eq!(s.inputs[0].dtype, DType::Float32);
        assert_eq!(s.inputs[0].shape_string(), "[-1, 1, 8, 8]");
        assert_eq!(s.outputs[0].name, "logits");
        assert_eq!(s.outputs[0].shape_string(), "[-1, 10]");
    }

    #[test]
    fn truncated_and_foreign_files_are_errors_not_panics() {
        let bytes = digits();
        for cut in [0, 1, 2, 7, 100, bytes.len() / 2, bytes.len() - 1] {
            assert!(signature(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(signature(b"\xff\xd8\xff\xe0 a jpeg").is_err());
        assert!(
            signature(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err()
        );
    }
}
