//! Content keys. A key is BLAKE3 over a format tag, the model's digest (ONNX bytes + every
//! manifest field that changes answers), the request options that change answers, and the
//! input's bytes, each length-prefixed so that no two different triples hash the same stream.

use std::fmt;

use singlepoint_core::ModelDigest;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    pub fn new(model: &ModelDigest, options: &[u8], input: &[u8]) -> CacheKey {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"singlepoint-cache-key-v1\0");
        for part in [&model.0[..], options, input] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        CacheKey(*hasher.finalize().as_bytes())
    }

    /// The key of [`CacheKey::new`] with `input` the concatenation of `parts`, without
    /// copying them together.
    pub fn from_parts(model: &ModelDigest, options: &[u8], parts: &[&[u8]]) -> CacheKey {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"singlepoint-cache-key-v1\0");
        for part in [&model.0[..], options] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        hasher.update(&(total as u64).to_le_bytes());
        for part in parts {
            hasher.update(part);
        }
        CacheKey(*hasher.finalize().as_bytes())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", &self.to_hex()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Same triple, same key; changing any part changes it.
        #[test]
        fn keys_bind_model_options_and_input(
            model in any::<[u8; 32]>(),
            options in proptest::collection::vec(any::<u8>(), 0..16),
            input in proptest::collection::vec(any::<u8>(), 0..256),
            flip in any::<usize>(),
        ) {
            let digest = ModelDigest(model);
            let key = CacheKey::new(&digest, &options, &input);
            prop_assert_eq!(key, CacheKey::new(&digest, &options, &input));
            let cut = flip % (input.len() + 1);
            prop_assert_eq!(
                key,
                CacheKey::from_parts(&digest, &options, &[&input[..cut], &[], &input[cut..]])
            );

            let mut other_model = model;
            other_model[flip % 32] ^= 1;
            prop_assert_ne!(key, CacheKey::new(&ModelDigest(other_model), &options, &input));

            let mut other_options = options.clone();
            other_options.push(0);
            prop_assert_ne!(key, CacheKey::new(&digest, &other_options, &input));

            if !input.is_empty() {
                let mut other_input = input.clone();
                other_input[flip % input.len()] ^= 0x80;
                prop_assert_ne!(key, CacheKey::new(&digest, &options, &other_input));
            }
        }

        /// Moving bytes between options and input changes the key (length prefixes).
        #[test]
        fn parts_do_not_run_into_each_other(a in proptest::collection::vec(any::<u8>(), 1..32), b in proptest::collection::vec(any::<u8>(), 1..32)) {
            let d = ModelDigest([7; 32]);
            let mut joined = a.clone();
            joined.extend_from_slice(&b);
            prop_assert_ne!(CacheKey::new(&d, &a, &b), CacheKey::new(&d, &joined, &[]));
        }
    }
}
