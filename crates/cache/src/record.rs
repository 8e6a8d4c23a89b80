//! The on-disk record: a versioned header, the payload, and a checksum that binds the record to
//! its key, so that a flipped bit, a truncated write, or a record stored under the wrong key
//! is detected and never served.
//!
//! ```text
//! "SPC" 0x01 | created: u64 LE (unix seconds) | model digest: 32 bytes | len: u32 LE
//! | payload: len bytes | checksum: first 16 bytes of BLAKE3(key ‖ everything before it)
//! ```

use singlepoint_core::ModelDigest;

use crate::CacheKey;

const MAGIC: [u8; 4] = *b"SPC\x01";
const HEADER: usize = 4 + 8 + 32 + 4;
const CHECKSUM: usize = 16;

/// A record read back from disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub created_unix_secs: u64,
    pub model: ModelDigest,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is {0} bytes, shorter than its header")]
    Short(usize),
    #[error("unknown record format {0:?}")]
    Magic([u8; 4]),
    #[error("record declares {declared} payload bytes but holds {actual}")]
    Length { declared: usize, actual: usize },
    #[error("checksum mismatch")]
    Checksum,
}

fn checksum(key: &CacheKey, body: &[u8]) -> [u8; CHECKSUM] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&key.0);
    hasher.update(body);
    let mut out = [0; CHECKSUM];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..CHECKSUM]);
    out
}

pub fn encode(
    key: &CacheKey,
    model: &ModelDigest,
    created_unix_secs: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len() + CHECKSUM);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&created_unix_secs.to_le_bytes());
    out.extend_from_slice(&model.0);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let sum = checksum(key, &out);
    out.extend_from_slice(&sum);
    out
}

pub fn decode(key: &CacheKey, bytes: &[u8]) -> Result<Record, RecordError> {
    if bytes.len() < HEADER + CHECKSUM {
        return Err(RecordError::Short(bytes.len()));
    }
    let magic: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(RecordError::Magic(magic));
    }
    let declared = u32::from_le_bytes(bytes[44..48].try_into().expect("4 bytes")) as usize;
    let actual = bytes.len() - HEADER - CHECKSUM;
    if declared != actual {
        return Err(RecordError::Length { declared, actual });
    }
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
    if checksum(key, body) != sum {
        return Err(RecordError::Checksum);
    }
    Ok(Record {
        created_unix_secs: u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes")),
        model: ModelDigest(bytes[12..44].try_into().expect("32 bytes")),
        payload: body[HEADER..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> CacheKey {
        CacheKey([b; 32])
    }

    #[test]
    fn records_round_trip() {
        let bytes = encode(&key(1), &ModelDigest([2; 32]), 99, b"payload");
        let r = decode(&key(1), &bytes).unwrap();
        assert_eq!(
            (r.created_unix_secs, r.payload.as_slice()),
            (99, &b"payload"[..])
        );
        assert_eq!(
            decode(&key(3), &bytes),
            Err(RecordError::Checksum),
            "wrong key"
        );
    }

    proptest! {
        /// Any single flipped bit and any truncation is detected.
        #[test]
        fn corruption_is_always_detected(payload in proptest::collection::vec(any::<u8>(), 0..200), bit in any::<usize>(), cut in any::<usize>()) {
            let bytes = encode(&key(5), &ModelDigest([6; 32]), 1_700_000_000, &payload);
            let mut flipped = bytes.clone();
            let i = bit % (bytes.len() * 8);
            flipped[i / 8] ^= 1 << (i % 8);
            prop_assert!(decode(&key(5), &flipped).is_err());
            let cut = cut % bytes.len();
            prop_assert!(decode(&key(5), &bytes[..cut]).is_err());
        }
    }
}
