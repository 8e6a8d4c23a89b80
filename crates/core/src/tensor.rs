//! [`AnyTensor`]: a dense, row-major tensor of any element type the seam carries, with the
//! operations batching needs: split along the batch axis, stack items (padding shorter ones
//! with a declared value), crop an output back to one item's own extent, and the
//! little-endian byte form that the wire and the cache use.

use half::f16;

use crate::DType;

/// Typed element storage, one variant per [`DType`].
#[derive(Clone, Debug, PartialEq)]
pub enum Buffer {
    F32(Vec<f32>),
    F16(Vec<f16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

/// Runs `$body` with `$v` bound to the typed vector of any variant.
macro_rules! each {
    ($buf:expr, $v:ident => $body:expr) => {
        match $buf {
            Buffer::F32($v) => $body,
            Buffer::F16($v) => $body,
            Buffer::I64($v) => $body,
            Buffer::I32($v) => $body,
            Buffer::I8($v) => $body,
            Buffer::U8($v) => $body,
            Buffer::Bool($v) => $body,
        }
    };
}

/// Builds a buffer of the same variant as `$like` from an expression generic in `$v`.
macro_rules! same {
    ($like:expr, $v:ident => $body:expr) => {
        match $like {
            Buffer::F32($v) => Buffer::F32($body),
            Buffer::F16($v) => Buffer::F16($body),
            Buffer::I64($v) => Buffer::I64($body),
            Buffer::I32($v) => Buffer::I32($body),
            Buffer::I8($v) => Buffer::I8($body),
            Buffer::U8($v) => Buffer::U8($body),
            Buffer::Bool($v) => Buffer::Bool($body),
        }
    };
}

impl Buffer {
    pub fn dtype(&self) -> DType {
        match self {
            Buffer::F32(_) => DType::Float32,
            Buffer::F16(_) => DType::Float16,
            Buffer::I64(_) => DType::Int64,
            Buffer::I32(_) => DType::Int32,
            Buffer::I8(_) => DType::Int8,
            Buffer::U8(_) => DType::Uint8,
            Buffer::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        each!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` copies of `value`, converted to `dtype` (saturating for integers; non-zero is
    /// `true` for booleans).
    pub fn filled(dtype: DType, value: f64, n: usize) -> Buffer {
        match dtype {
            DType::Float32 => Buffer::F32(vec![value as f32; n]),
            DType::Float16 => Buffer::F16(vec![f16::from_f64(value); n]),
            DType::Int64 => Buffer::I64(vec![value as i64; n]),
            DType::Int32 => Buffer::I32(vec![value as i32; n]),
            DType::Int8 => Buffer::I8(vec![value as i8; n]),
            DType::Uint8 => Buffer::U8(vec![value as u8; n]),
            DType::Bool => Buffer::Bool(vec![value != 0.0; n]),
        }
    }

    /// Elements `range` as a new buffer.
    fn slice(&self, range: std::ops::Range<usize>) -> Buffer {
        same!(self, v => v[range].to_vec())
    }

    /// Appends the little-endian bytes of every element to `out`.
    pub fn write_le_bytes(&self, out: &mut Vec<u8>) {
        out.reserve(self.len() * self.dtype().size());
        match self {
            Buffer::F32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Buffer::F16(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Buffer::I64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Buffer::I32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Buffer::I8(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Buffer::U8(v) => out.extend_from_slice(v),
            Buffer::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        }
    }

    /// Reads `bytes` as little-endian elements of `dtype`. Booleans must be 0 or 1.
    pub fn from_le_bytes(dtype: DType, bytes: &[u8]) -> Result<Buffer, TensorError> {
        let size = dtype.size();
        if !bytes.len().is_multiple_of(size) {
            return Err(TensorError::ByteLength {
                dtype,
                len: bytes.len(),
            });
        }
        macro_rules! read {
            ($t:ty, $n:expr) => {
                bytes
                    .chunks_exact($n)
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk of the type's size")))
                    .collect()
            };
        }
        Ok(match dtype {
            DType::Float32 => Buffer::F32(read!(f32, 4)),
            DType::Float16 => Buffer::F16(read!(f16, 2)),
            DType::Int64 => Buffer::I64(read!(i64, 8)),
            DType::Int32 => Buffer::I32(read!(i32, 4)),
            DType::Int8 => Buffer::I8(read!(i8, 1)),
            DType::Uint8 => Buffer::U8(bytes.to_vec()),
            DType::Bool => {
                if let Some(pos) = bytes.iter().position(|&b| b > 1) {
                    return Err(TensorError::BadBool {
                        index: pos,
                        byte: bytes[pos],
                    });
                }
                Buffer::Bool(bytes.iter().map(|&b| b == 1).collect())
            }
        })
    }

    /// Element `i` as a float, for formats that print every type as a number.
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            Buffer::F32(v) => f64::from(v[i]),
            Buffer::F16(v) => v[i].to_f64(),
            Buffer::I64(v) => v[i] as f64,
            Buffer::I32(v) => f64::from(v[i]),
            Buffer::I8(v) => f64::from(v[i]),
            Buffer::U8(v) => f64::from(v[i]),
            Buffer::Bool(v) => f64::from(u8::from(v[i])),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TensorError {
    #[error("tensor data has {len} elements but shape {shape:?} needs {expected}")]
    Length {
        shape: Vec<usize>,
        len: usize,
        expected: usize,
    },
    #[error("{len} bytes is not a whole number of {dtype} elements")]
    ByteLength { dtype: DType, len: usize },
    #[error("byte {index} is {byte}; a bool element must be 0 or 1")]
    BadBool { index: usize, byte: u8 },
    #[error("cannot batch tensors of {a} and {b}")]
    DTypes { a: DType, b: DType },
    #[error("cannot batch shapes {a:?} and {b:?} without padding")]
    Shapes { a: Vec<usize>, b: Vec<usize> },
    #[error("shape {shape:?} does not fit inside {outer:?}")]
    Crop {
        shape: Vec<usize>,
        outer: Vec<usize>,
    },
}

/// A dense, row-major tensor of any element type.
#[derive(Clone, Debug, PartialEq)]
pub struct AnyTensor {
    shape: Vec<usize>,
    data: Buffer,
}

impl From<crate::Tensor> for AnyTensor {
    fn from(t: crate::Tensor) -> AnyTensor {
        let (shape, data) = t.into_parts();
        AnyTensor {
            shape,
            data: Buffer::F32(data),
        }
    }
}

impl AnyTensor {
    pub fn new(shape: Vec<usize>, data: Buffer) -> Result<AnyTensor, TensorError> {
        let expected = shape.iter().product::<usize>();
        if expected != data.len() {
            return Err(TensorError::Length {
                shape,
                len: data.len(),
                expected,
            });
        }
        Ok(AnyTensor { shape, data })
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &Buffer {
        &self.data
    }

    pub fn into_data(self) -> Buffer {
        self.data
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements as `f32`, when that is the type.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Buffer::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The `idx`-th item along the first (batch) axis, without that axis.
    pub fn item(&self, idx: usize) -> AnyTensor {
        let n: usize = self.shape.iter().skip(1).product();
        AnyTensor {
            shape: self.shape[1..].to_vec(),
            data: self.data.slice(idx * n..(idx + 1) * n),
        }
    }

    /// Stacks items (each without the batch axis, all of one type and rank) into a batch.
    /// Items whose shapes differ are padded to the largest size of each axis with `pad`; with
    /// no pad value they must have the same shape.
    pub fn stack(items: &[&AnyTensor], pad: Option<f64>) -> Result<AnyTensor, TensorError> {
        let first = items.first().expect("a batch has at least one item");
        let rank = first.shape.len();
        let mut outer = first.shape.clone();
        for item in &items[1..] {
            if item.dtype() != first.dtype() {
                return Err(TensorError::DTypes {
                    a: first.dtype(),
                    b: item.dtype(),
                });
            }
            if item.shape.len() != rank || (pad.is_none() && item.shape != first.shape) {
                return Err(TensorError::Shapes {
                    a: first.shape.clone(),
                    b: item.shape.clone(),
                });
            }
            for (o, &n) in outer.iter_mut().zip(&item.shape) {
                *o = (*o).max(n);
            }
        }
        let per_item: usize = outer.iter().product();
        let mut shape = Vec::with_capacity(rank + 1);
        shape.push(items.len());
        shape.extend_from_slice(&outer);
        let all_full = items.iter().all(|t| t.shape == outer);
        let data = if all_full {
            same!(&first.data, _v => {
                let mut out = Vec::with_capacity(per_item * items.len());
                for item in items {
                    each!(&item.data, w => {
                        // Same variant: checked above.
                        out.extend_from_slice(cast(w));
                    });
                }
                out
            })
        } else {
            let mut out = Buffer::filled(first.dtype(), pad.unwrap_or(0.0), per_item * items.len());
            for (i, item) in items.iter().enumerate() {
                copy_block(
                    &item.data,
                    &item.shape,
                    0,
                    &mut out,
                    &outer,
                    i * per_item,
                    &item.shape,
                );
            }
            out
        };
        Ok(AnyTensor { shape, data })
    }

    /// The leading block of `shape` (same rank, each axis no larger): an output computed on a
    /// padded batch cut back to one item's own extent.
    pub fn crop(&self, shape: &[usize]) -> Result<AnyTensor, TensorError> {
        let fits =
            shape.len() == self.shape.len() && shape.iter().zip(&self.shape).all(|(a, b)| a <= b);
        if !fits {
            return Err(TensorError::Crop {
                shape: shape.to_vec(),
                outer: self.shape.clone(),
            });
        }
        if shape == self.shape.as_slice() {
            return Ok(self.clone());
        }
        let n: usize = shape.iter().product();
        let mut out = Buffer::filled(self.dtype(), 0.0, n);
        copy_block(&self.data, &self.shape, 0, &mut out, shape, 0, shape);
        Ok(AnyTensor {
            shape: shape.to_vec(),
            data: out,
        })
    }

    /// The little-endian bytes of the elements.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.data.write_le_bytes(&mut out);
        out
    }
}

/// The same vector seen as another variant's element type: only ever called on two buffers
/// of the same variant, where it is the identity.
fn cast<T: 'static + Copy, U: 'static + Copy>(v: &[T]) -> &[U] {
    assert_eq!(
        std::any::TypeId::of::<T>(),
        std::any::TypeId::of::<U>(),
        "buffers of one batch have one type"
    );
    // SAFETY: T and U are the same type (checked above).
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<U>(), v.len()) }
}

/// Copies the block `block` (a shape no larger than either array on any axis) from the leading
/// corner of `src` (shape `src_shape`, starting at element `src_base`) to the leading corner
/// of `dst` (shape `dst_shape`, starting at element `dst_base`).
fn copy_block(
    src: &Buffer,
    src_shape: &[usize],
    src_base: usize,
    dst: &mut Buffer,
    dst_shape: &[usize],
    dst_base: usize,
    block: &[usize],
) {
    let rank = block.len();
    if block.contains(&0) {
        return;
    }
    let row = block.last().copied().unwrap_or(1);
    let lead = rank.saturating_sub(1);
    let rows: usize = block[..lead].iter().product();
    let strides = |shape: &[usize]| {
        let mut s = vec![1usize; rank];
        for a in (0..lead).rev() {
            s[a] = s[a + 1] * shape[a + 1];
        }
        s
    };
    let (ss, ds) = (strides(src_shape), strides(dst_shape));
    let mut index = vec![0usize; lead];
    for _ in 0..rows {
        let offset = |s: &[usize]| index.iter().zip(s).map(|(i, s)| i * s).sum::<usize>();
        copy_run(
            src,
            src_base + offset(&ss),
            dst,
            dst_base + offset(&ds),
            row,
        );
        for a in (0..lead).rev() {
            index[a] += 1;
            if index[a] < block[a] {
                break;
            }
            index[a] = 0;
        }
    }
}

fn copy_run(src: &Buffer, from: usize, dst: &mut Buffer, to: usize, n: usize) {
    each!(dst, d => each!(src, s => d[to..to + n].copy_from_slice(cast(&s[from..from + n]))));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(shape: &[usize], v: &[i64]) -> AnyTensor {
        AnyTensor::new(shape.to_vec(), Buffer::I64(v.to_vec())).unwrap()
    }

    #[test]
    fn items_of_one_shape_stack_and_split_back() {
        let a = ids(&[2], &[1, 2]);
        let b = ids(&[2], &[3, 4]);
        let batch = AnyTensor::stack(&[&a, &b], None).unwrap();
        assert_eq!(batch.shape(), &[2, 2]);
        assert_eq!(batch.item(1), b);
    }

    #[test]
    fn shorter_items_are_padded_and_crop_recovers_them() {
        let a = ids(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let b = ids(&[1, 2], &[7, 8]);
        let batch = AnyTensor::stack(&[&a, &b], Some(-1.0)).unwrap();
        assert_eq!(batch.shape(), &[2, 2, 3]);
        assert_eq!(
            batch.data(),
            &Buffer::I64(vec![1, 2, 3, 4, 5, 6, 7, 8, -1, -1, -1, -1])
        );
        assert_eq!(batch.item(1).crop(&[1, 2]).unwrap(), b);
        assert_eq!(batch.item(0).crop(&[2, 3]).unwrap(), a);
        assert!(batch.item(1).crop(&[3, 1]).is_err());
    }

    #[test]
    fn without_a_pad_value_shapes_must_agree() {
        let a = ids(&[2], &[1, 2]);
        let b = ids(&[3], &[1, 2, 3]);
        assert!(matches!(
            AnyTensor::stack(&[&a, &b], None),
            Err(TensorError::Shapes { .. })
        ));
        let f = AnyTensor::new(vec![2], Buffer::F32(vec![0.0; 2])).unwrap();
        assert!(matches!(
            AnyTensor::stack(&[&a, &f], Some(0.0)),
            Err(TensorError::DTypes { .. })
        ));
    }

    #[test]
    fn every_type_round_trips_through_little_endian_bytes() {
        for dtype in DType::ALL {
            let buf = Buffer::filled(dtype, 1.0, 3);
            let t = AnyTensor::new(vec![3], buf.clone()).unwrap();
            let bytes = t.to_le_bytes();
            assert_eq!(bytes.len(), 3 * dtype.size(), "{dtype}");
            assert_eq!(
                Buffer::from_le_bytes(dtype, &bytes).unwrap(),
                buf,
                "{dtype}"
            );
        }
        assert!(Buffer::from_le_bytes(DType::Int64, &[0; 7]).is_err());
        assert!(Buffer::from_le_bytes(DType::Bool, &[0, 2]).is_err());
    }
}
