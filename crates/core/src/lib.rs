//! Types every singlepoint crate shares: dense `f32` tensors with their shapes, the declared
//! shape of a model's input or output (`TensorSpec`), and the content digest that identifies a
//! model (`ModelDigest`).
//!
//! This crate has no knowledge of files, images, engines or HTTP; everything above it speaks
//! in these types.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// singlepoint's per-user folder for things it keeps between runs (the ONNX Runtime library,
/// the result cache): `$SINGLEPOINT_HOME`, else `$XDG_CACHE_HOME/singlepoint`, else
/// `~/.cache/singlepoint`.
pub fn user_dir() -> PathBuf {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(dir) = env("SINGLEPOINT_HOME") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = env("XDG_CACHE_HOME") {
        return Path::new(&dir).join("singlepoint");
    }
    match env("HOME").or_else(|| env("USERPROFILE")) {
        Some(home) => Path::new(&home).join(".cache").join("singlepoint"),
        None => std::env::temp_dir().join("singlepoint"),
    }
}

mod tensor;

pub use half::f16;
pub use tensor::{AnyTensor, Buffer, TensorError};

/// Element type of a tensor: what images (`float32`), token ids and masks (`int64`, `int32`),
/// quantised and boolean inputs flow through the seam as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Float32,
    Float16,
    Int64,
    Int32,
    Int8,
    Uint8,
    Bool,
}

impl DType {
    pub const ALL: [DType; 7] = [
        DType::Float32,
        DType::Float16,
        DType::Int64,
        DType::Int32,
        DType::Int8,
        DType::Uint8,
        DType::Bool,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Float16 => "float16",
            DType::Int64 => "int64",
            DType::Int32 => "int32",
            DType::Int8 => "int8",
            DType::Uint8 => "uint8",
            DType::Bool => "bool",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Float32 | DType::Int32 => 4,
            DType::Float16 => 2,
            DType::Int64 => 8,
            DType::Int8 | DType::Uint8 | DType::Bool => 1,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One dimension of a declared shape: a fixed size, or dynamic (`-1` in JSON, a symbol such as
/// `batch` in ONNX).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Fixed(usize),
    Dynamic,
}

impl Dim {
    pub fn fixed(self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(n),
            Dim::Dynamic => None,
        }
    }

    /// Whether a concrete size fits this dimension.
    pub fn admits(self, n: usize) -> bool {
        match self {
            Dim::Fixed(m) => m == n,
            Dim::Dynamic => true,
        }
    }

    /// Whether two declarations can describe the same tensor: equal, or one is dynamic.
    pub fn compatible(self, other: Dim) -> bool {
        match (self, other) {
            (Dim::Fixed(a), Dim::Fixed(b)) => a == b,
            _ => true,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Dynamic => f.write_str("-1"),
        }
    }
}

/// The declared name, element type and shape of a model input or output.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
    /// The name of each dynamic dimension, where the model gives one (ONNX's `dim_param`,
    /// such as `batch` or `sequence`); axes that share a name have the same size.
    pub symbols: Vec<Option<String>>,
}

impl TensorSpec {
    /// A spec without dimension names.
    pub fn new(name: impl Into<String>, dtype: DType, shape: Vec<Dim>) -> TensorSpec {
        let symbols = vec![None; shape.len()];
        TensorSpec {
            name: name.into(),
            dtype,
            shape,
            symbols,
        }
    }

    /// The name of axis `axis`, if it has one.
    pub fn symbol(&self, axis: usize) -> Option<&str> {
        self.symbols.get(axis).and_then(|s| s.as_deref())
    }

    /// `[-1, 3, 224, 224]`, as a person would write it in model.json.
    pub fn shape_string(&self) -> String {
        shape_string(&self.shape)
    }
}

pub fn shape_string(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// A dense, row-major `f32` tensor: the image path's input and output. [`AnyTensor`] carries
/// the other element types.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("tensor data has {len} elements but shape {shape:?} needs {expected}")]
pub struct ShapeMismatch {
    pub shape: Vec<usize>,
    pub len: usize,
    pub expected: usize,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor, ShapeMismatch> {
        let expected = shape.iter().product::<usize>();
        if expected != data.len() {
            return Err(ShapeMismatch {
                shape,
                len: data.len(),
                expected,
            });
        }
        Ok(Tensor { shape, data })
    }

    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_parts(self) -> (Vec<usize>, Vec<f32>) {
        (self.shape, self.data)
    }

    /// Number of elements in one item along the first (batch) axis.
    pub fn item_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// The `idx`-th item along the batch axis.
    pub fn item(&self, idx: usize) -> &[f32] {
        let n = self.item_len();
        &self.data[idx * n..(idx + 1) * n]
    }
}

/// BLAKE3 digest of everything that determines a model's answers: the ONNX bytes plus the
/// manifest fields that change outputs (preprocessing, labels, tensor names, version).
/// Two models with the same digest give the same answer to the same input; the result cache
/// keys on it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelDigest(pub [u8; 32]);

impl ModelDigest {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first 12 hex digits: enough to tell models apart in logs and reports.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Debug for ModelDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelDigest({})", self.to_hex())
    }
}

impl fmt::Display for ModelDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_rejects_data_that_does_not_fill_its_shape() {
        let err = Tensor::new(vec![2, 3], vec![0.0; 5]).unwrap_err();
        assert_eq!(err.expected, 6);
        assert!(Tensor::new(vec![2, 3], vec![0.0; 6]).is_ok());
    }

    #[test]
    fn tensor_items_split_the_batch_axis() {
        let t = Tensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(t.item(1), &[3.0, 4.0]);
    }

    #[test]
    fn dims_compare_with_dynamic_as_wildcard() {
        assert!(Dim::Dynamic.compatible(Dim::Fixed(3)));
        assert!(!Dim::Fixed(4).compatible(Dim::Fixed(3)));
        assert!(Dim::Dynamic.admits(17));
        assert!(!Dim::Fixed(1).admits(2));
    }
}
