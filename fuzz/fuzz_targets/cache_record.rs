//! The cache's on-disk record: any bytes under a key decode only if they are exactly a record
//! written for that key (re-encoding gives the same bytes); a record written for one key never
//! decodes under another, and no single flipped byte passes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use singlepoint_cache::record::{decode, encode};
use singlepoint_cache::CacheKey;
use singlepoint_core::ModelDigest;

fuzz_target!(|data: &[u8]| {
    let key = CacheKey([7; 32]);
    if let Ok(r) = decode(&key, data) {
        assert_eq!(
            encode(&key, &r.model, r.created_unix_secs, &r.payload),
            data
        );
    }
    // The data as a payload: it round-trips, and is bound to its key and its bytes.
    let model = ModelDigest([3; 32]);
    let mut bytes = encode(&key, &model, 1_700_000_000, data);
    assert_eq!(decode(&key, &bytes).expect("own record").payload, data);
    assert!(decode(&CacheKey([8; 32]), &bytes).is_err());
    let at = data.first().map_or(0, |&b| usize::from(b)) % bytes.len();
    bytes[at] ^= data.get(1).copied().unwrap_or(1).max(1);
    assert!(
        decode(&key, &bytes).is_err(),
        "a flipped byte at {at} passed"
    );
});
