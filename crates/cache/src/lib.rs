//! The single-point result cache: a hit returns the stored answer without decoding the input or
//! running the model.
//!
//! - [`CacheKey`]: BLAKE3 of the model digest, the answer-changing request options and the
//!   input bytes ([`key`]).
//! - Memory tier: `moka`, bounded by bytes, with TinyLFU admission so that a stream of unique
//!   inputs cannot evict the hot set, optional TTL.
//! - Disk tier: `redb`, bounded by bytes, crash-safe, checksummed versioned records
//!   ([`record`], [`disk`]). Lookups go memory → disk; a disk hit is promoted to memory.
//! - Redis tier (optional, [`redis_tier`]): shared by replicas, read-through after disk,
//!   written behind; a failing Redis only costs misses.
//! - [`Coalescer`]: concurrent callers of the same key share one computation ([`coalesce`]).
//!
//! The cache never turns a success into a failure: a disk tier that cannot be opened or written
//! is switched off with one warning and the memory tier carries on. Values are opaque bytes;
//! the runtime encodes answers. Errors are never cached: callers insert only successes.

pub mod coalesce;
pub mod disk;
pub mod key;
pub mod record;
pub mod redis_tier;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use coalesce::Coalescer;
pub use disk::{DiskError, DiskTotals, VerifyReport};
pub use key::CacheKey;
pub use redis_tier::{RedisConfig, RedisStats, RedisTier};
use singlepoint_core::ModelDigest;

/// Cache settings, validated by the caller's flag parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bytes the memory tier may hold (0: no memory tier).
    pub memory_bytes: u64,
    /// Folder of the disk tier and the bytes it may hold; `None`: no disk tier.
    pub disk: Option<(PathBuf, u64)>,
    /// Entries older than this are misses.
    pub ttl: Option<Duration>,
    /// Memory the disk tier's page cache may use (redb's own default is 1 GiB).
    pub disk_page_cache_bytes: u64,
}

/// Where the disk tier lives unless told otherwise: the per-user `results` folder.
pub fn default_dir() -> PathBuf {
    singlepoint_core::user_dir().join("results")
}

/// The default of [`CacheConfig::disk_page_cache_bytes`]: hot entries also sit in the memory
/// tier and the operating system's page cache, so the disk tier needs little of its own.
pub const DISK_PAGE_CACHE_BYTES: u64 = 16 << 20;

/// Counters since the cache was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub memory_hits: u64,
    pub disk_hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub memory_evictions: u64,
    pub disk_evictions: u64,
    /// Disk records that failed their checksum or format checks (removed, counted as misses).
    pub corrupt: u64,
    /// Callers that waited for another's computation instead of running the model.
    pub coalesced: u64,
    /// Hits answered by the Redis tier (counted in [`CacheStats::hits`]).
    pub redis_hits: u64,
    pub memory_entries: u64,
    pub memory_bytes: u64,
}

impl CacheStats {
    pub fn hits(&self) -> u64 {
        self.memory_hits + self.disk_hits + self.redis_hits
    }

    /// Hit rate p over lookups (0 when there were none).
    pub fn hit_rate(&self) -> f64 {
        let lookups = self.hits() + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits() as f64 / lookups as f64
        }
    }
}

#[derive(Default)]
struct Counters {
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    memory_evictions: Arc<AtomicU64>,
    disk_evictions: AtomicU64,
    corrupt: AtomicU64,
    coalesced: AtomicU64,
    redis_hits: AtomicU64,
}

pub struct ResultCache {
    memory: Option<moka::sync::Cache<CacheKey, Arc<[u8]>>>,
    disk: Option<disk::DiskTier>,
    disk_off: AtomicBool,
    redis: Option<RedisTier>,
    ttl: Option<Duration>,
    counters: Counters,
    warnings: Mutex<Vec<String>>,
}

/// Bytes a memory entry is charged: the value plus the key and bookkeeping.
fn weight(_key: &CacheKey, value: &Arc<[u8]>) -> u32 {
    (value.len() + 32 + 64).min(u32::MAX as usize) as u32
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ResultCache {
    /// Opens the cache. A disk tier that cannot be opened is left off with a warning (see
    /// [`ResultCache::take_warnings`]); opening never fails.
    pub fn open(config: &CacheConfig) -> ResultCache {
        let counters = Counters::default();
        let memory = (config.memory_bytes > 0).then(|| {
            let evictions = counters.memory_evictions.clone();
            let mut builder = moka::sync::Cache::builder()
                .max_capacity(config.memory_bytes)
                .weigher(weight)
                .eviction_listener(move |_, _, cause| {
                    if cause.was_evicted() {
                        evictions.fetch_add(1, Ordering::Relaxed);
                    }
                });
            if let Some(ttl) = config.ttl {
                builder = builder.time_to_live(ttl);
            }
            builder.build()
        });
        let mut warnings = Vec::new();
        let disk = config.disk.as_ref().and_then(|(dir, max_bytes)| {
            match disk::DiskTier::open(dir, *max_bytes, config.disk_page_cache_bytes) {
                Ok(tier) => Some(tier),
                Err(e) => {
                    warnings.push(format!("{e}; caching in memory only"));
                    None
                }
            }
        });
        ResultCache {
            memory,
            disk,
            disk_off: AtomicBool::new(false),
            redis: None,
            ttl: config.ttl,
            counters,
            warnings: Mutex::new(warnings),
        }
    }

    /// Adds the shared Redis tier after memory and disk.
    pub fn with_redis(mut self, tier: RedisTier) -> ResultCache {
        self.redis = Some(tier);
        self
    }

    pub fn redis(&self) -> Option<&RedisTier> {
        self.redis.as_ref()
    }

    /// Where the disk tier lives, when it is on.
    pub fn disk_path(&self) -> Option<&Path> {
        self.disk_tier().map(|d| d.path())
    }

    fn disk_tier(&self) -> Option<&disk::DiskTier> {
        if self.disk_off.load(Ordering::Relaxed) {
            None
        } else {
            self.disk.as_ref()
        }
    }

    /// Switches the disk tier off after an error, warning once.
    fn disk_failed(&self, e: DiskError) {
        if !self.disk_off.swap(true, Ordering::Relaxed) {
            self.warn(format!("{e}; caching in memory only from now on"));
        }
    }

    fn warn(&self, message: String) {
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }

    /// Warnings raised since the last call (each at most once), and the Redis tier's changes
    /// of state.
    pub fn take_warnings(&self) -> Vec<String> {
        let mut out = std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(r) = &self.redis {
            out.extend(r.take_events());
        }
        out
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<[u8]>> {
        if let Some(value) = self.memory.as_ref().and_then(|m| m.get(key)) {
            self.counters.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Some(value);
        }
        if let Some(tier) = self.disk_tier() {
            let max_age = self.ttl.map(|t| t.as_secs());
            match tier.get(key, max_age, now_secs()) {
                Ok(disk::Lookup::Hit(record)) => {
                    let value: Arc<[u8]> = record.payload.into();
                    if let Some(m) = &self.memory {
                        m.insert(*key, value.clone());
                    }
                    self.counters.disk_hits.fetch_add(1, Ordering::Relaxed);
                    return Some(value);
                }
                Ok(disk::Lookup::Corrupt) => {
                    self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                }
                Ok(disk::Lookup::Miss) => {}
                Err(e) => self.disk_failed(e),
            }
        }
        if let Some(value) = self.redis.as_ref().and_then(|r| r.get(key)) {
            let value: Arc<[u8]> = value.into();
            if let Some(m) = &self.memory {
                m.insert(*key, value.clone());
            }
            self.counters.redis_hits.fetch_add(1, Ordering::Relaxed);
            return Some(value);
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Stores answers for `model` (in memory, and on disk in one transaction).
    pub fn insert_many(&self, model: &ModelDigest, items: &[(CacheKey, Arc<[u8]>)]) {
        if items.is_empty() {
            return;
        }
        self.counters
            .inserts
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        if let Some(m) = &self.memory {
            for (key, value) in items {
                m.insert(*key, value.clone());
            }
        }
        if let Some(tier) = self.disk_tier() {
            let rows: Vec<(CacheKey, ModelDigest, &[u8])> =
                items.iter().map(|(k, v)| (*k, *model, &v[..])).collect();
            match tier.insert_many(&rows, now_secs()) {
                Ok(evicted) => {
                    self.counters
                        .disk_evictions
                        .fetch_add(evicted, Ordering::Relaxed);
                }
                Err(e) => self.disk_failed(e),
            }
        }
        if let Some(r) = &self.redis {
            r.insert_many(model, items, now_secs());
        }
    }

    pub fn insert(&self, model: &ModelDigest, key: CacheKey, value: Arc<[u8]>) {
        self.insert_many(model, &[(key, value)]);
    }

    /// Counts a caller that waited on another's computation.
    pub fn record_coalesced(&self) {
        self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let (memory_entries, memory_bytes) = match &self.memory {
            Some(m) => {
                m.run_pending_tasks();
                (m.entry_count(), m.weighted_size())
            }
            None => (0, 0),
        };
        CacheStats {
            memory_hits: c.memory_hits.load(Ordering::Relaxed),
            disk_hits: c.disk_hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            inserts: c.inserts.load(Ordering::Relaxed),
            memory_evictions: c.memory_evictions.load(Ordering::Relaxed),
            disk_evictions: c.disk_evictions.load(Ordering::Relaxed),
            corrupt: c.corrupt.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            redis_hits: c.redis_hits.load(Ordering::Relaxed),
            memory_entries,
            memory_bytes,
        }
    }

    pub fn disk_totals(&self) -> Option<Result<DiskTotals, DiskError>> {
        self.disk_tier().map(|d| d.totals())
    }

    /// Checks every disk record and removes the bad ones; counts the entries of `model`.
    pub fn verify(&self, model: Option<&ModelDigest>) -> Option<Result<VerifyReport, DiskError>> {
        self.disk_tier().map(|d| d.scan(model, false))
    }

    /// Removes every entry, or only those of `model`.
    pub fn clear(&self, model: Option<&ModelDigest>) -> Option<Result<VerifyReport, DiskError>> {
        if let Some(m) = &self.memory {
            m.invalidate_all();
        }
        self.disk_tier().map(|d| d.scan(model, true))
    }

    #[doc(hidden)]
    pub fn disk_overwrite_raw(&self, key: &CacheKey, bytes: &[u8]) -> Result<(), DiskError> {
        match self.disk_tier() {
            Some(d) => d.overwrite_raw(key, bytes),
            None => Ok(()),
        }
    }
}

/// Parses a size such as `256MiB`, `2GiB`, `100MB`, `64k` or `1000` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 256MiB or 2GiB"))?;
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024f64.powi(4),
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}`; use B, KB, KiB, MB, MiB, GB, GiB"
            ))
        }
    };
    let bytes = number * multiplier;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1.5k"), Ok(1500));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
