//! Texts → token inputs, through the model's `tokenizer.json` (the `tokenizers` crate), and
//! token vectors → one embedding.
//!
//! The file's own truncation and padding settings are replaced: a text is cut at the
//! manifest's `max_length` only when the request allows it (and the answer says so), and
//! nothing is padded here; the core pads a batch to its longest item ([`TextEncoder::pad_id`]
//! for the ids, 0 for the mask and segment ids).

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use crate::manifest::{Pooling, TextInput, TextSpec};
use crate::ModelError;

/// Why a text has no token inputs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("is {tokens} tokens, over the model's limit of {limit}; ask for truncation to cut it")]
    TooLong { tokens: usize, limit: usize },
    #[error("cannot be tokenised: {0}")]
    Tokenizer(String),
}

/// One text's tokens, unpadded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// How many tokens the whole text is, special tokens included (more than `ids.len()` when
    /// it was cut).
    pub original: usize,
}

impl Encoded {
    pub fn truncated(&self) -> bool {
        self.original > self.ids.len()
    }
}

/// A text model's tokenizer with the manifest's limit.
pub struct TextEncoder {
    whole: Tokenizer,
    cut: Tokenizer,
    max_length: usize,
    pad_id: u32,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("max_length", &self.max_length)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

impl TextEncoder {
    /// Reads `bytes` (the tokenizer file `file`, named in errors).
    pub fn new(file: &Path, bytes: &[u8], max_length: usize) -> Result<TextEncoder, ModelError> {
        let invalid = |reason: String| ModelError::InvalidFile {
            file: file.to_path_buf(),
            reason,
        };
        let mut whole = Tokenizer::from_bytes(bytes).map_err(|e| {
            invalid(format!(
                "is not a tokenizer.json the tokenizers crate reads: {e}"
            ))
        })?;
        let pad_id = whole
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| whole.token_to_id("[PAD]"))
            .or_else(|| whole.token_to_id("<pad>"))
            .unwrap_or(0);
        whole.with_padding(None);
        let mut cut = whole.clone();
        whole
            .with_truncation(None)
            .map_err(|e| invalid(e.to_string()))?;
        cut.with_truncation(Some(TruncationParams {
            max_length,
            ..TruncationParams::default()
        }))
        .map_err(|e| invalid(format!("cannot truncate at {max_length} tokens: {e}")))?;
        Ok(TextEncoder {
            whole,
            cut,
            max_length,
            pad_id,
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The id shorter texts' `input_ids` are padded with in a batch.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Tokenises `text` with the model's special tokens; over the limit, cuts it when
    /// `truncate`, else refuses it.
    pub fn encode(&self, text: &str, truncate: bool) -> Result<Encoded, TextError> {
        let whole = self
            .whole
            .encode(text, true)
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        let original = whole.len();
        if original <= self.max_length {
            return Ok(Encoded {
                ids: whole.get_ids().to_vec(),
                type_ids: whole.get_type_ids().to_vec(),
                original,
            });
        }
        if !truncate {
            return Err(TextError::TooLong {
                tokens: original,
                limit: self.max_length,
            });
        }
        // The tokenizer cuts, so that its post-processor places the special tokens.
        let cut = self
            .cut
            .encode(text, true)
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        Ok(Encoded {
            ids: cut.get_ids().to_vec(),
            type_ids: cut.get_type_ids().to_vec(),
            original,
        })
    }
}

/// The model input of `role` for one encoded text, as i64 values (the caller converts to the
/// declared type).
pub fn input_values(encoded: &Encoded, role: TextInput) -> Vec<i64> {
    match role {
        TextInput::Ids => encoded.ids.iter().map(|&v| i64::from(v)).collect(),
        TextInput::Mask => vec![1; encoded.ids.len()],
        TextInput::TypeIds => encoded.type_ids.iter().map(|&v| i64::from(v)).collect(),
    }
}

/// The value `role`'s input is padded with in a batch.
pub fn pad_value(encoder: &TextEncoder, role: TextInput) -> f64 {
    match role {
        TextInput::Ids => f64::from(encoder.pad_id()),
        TextInput::Mask | TextInput::TypeIds => 0.0,
    }
}

/// One text's token vectors (`tokens` × `dim`, every one kept by the mask: padding is cut
/// off before this) pooled into one vector.
pub fn pool(hidden: &[f32], dim: usize, pooling: Pooling) -> Vec<f32> {
    let tokens = hidden.len().checked_div(dim).unwrap_or(0);
    let rows = hidden.chunks_exact(dim.max(1)).take(tokens);
    match pooling {
        Pooling::Cls => hidden
            .get(..dim)
            .map_or_else(|| vec![0.0; dim], <[f32]>::to_vec),
        Pooling::Mean => {
            let mut sum = vec![0.0f64; dim];
            for row in rows {
                for (s, &v) in sum.iter_mut().zip(row) {
                    *s += f64::from(v);
                }
            }
            let n = (tokens as f64).max(1e-9);
            sum.into_iter().map(|s| (s / n) as f32).collect()
        }
        Pooling::Max => {
            let mut max = vec![f32::NEG_INFINITY; dim];
            for row in rows {
                for (m, &v) in max.iter_mut().zip(row) {
                    *m = m.max(v);
                }
            }
            if tokens == 0 {
                max.fill(0.0);
            }
            max
        }
    }
}

/// `v / max(‖v‖₂, 1e-12)`, as sentence-transformers' `Normalize`.
pub fn normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    for x in v {
        *x = (f64::from(*x) / norm) as f32;
    }
}

/// What identifies a text task's preparation and reading of outputs, for the model's digest.
pub fn spec_fields(spec: &TextSpec) -> String {
    format!(
        "text:max_length={}:roles={:?}:pooling={:?}:normalize={}:activation={:?}",
        spec.max_length, spec.roles, spec.pooling, spec.normalize, spec.activation
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_reads_the_kept_tokens() {
        let hidden = [1.0, 2.0, 3.0, -4.0, 5.0, 0.0];
        assert_eq!(pool(&hidden, 2, Pooling::Mean), vec![3.0, -2.0 / 3.0]);
        assert_eq!(pool(&hidden, 2, Pooling::Cls), vec![1.0, 2.0]);
        assert_eq!(pool(&hidden, 2, Pooling::Max), vec![5.0, 2.0]);
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut zero = vec![0.0, 0.0];
        normalize(&mut zero);
        assert_eq!(zero, vec![0.0, 0.0]);
    }
}
