//! The disk tier: a `redb` database (`results.redb` in the cache folder). redb commits are
//! atomic and copy-on-write with checksummed pages, so a process killed mid-write leaves the
//! last committed state; our own record checksum ([`crate::record`]) catches anything else.
//!
//! Inserts are atomic but fsynced only every few commits (and on drop): a crash may forget
//! the last moments' answers, never corrupt the file.
//!
//! Size is bounded in bytes with first-in-first-out eviction: every insert gets a sequence
//! number, and commits that push the total over the bound remove the oldest entries first.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use singlepoint_core::ModelDigest;

use crate::record::{self, Record};
use crate::CacheKey;

/// key → record
const ENTRIES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("entries");
/// insertion sequence → key (eviction order)
const ORDER: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("order");
/// "bytes", "next_seq"
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub const FILE_NAME: &str = "results.redb";

#[derive(Debug, thiserror::Error)]
#[error("disk cache `{path}`: {reason}")]
pub struct DiskError {
    pub path: PathBuf,
    pub reason: String,
}

pub struct DiskTier {
    db: Arc<Database>,
    path: PathBuf,
    max_bytes: u64,
    /// Inserts since the last durable (fsynced) commit, and when that was.
    since_durable: Arc<Mutex<(u32, Instant)>>,
    /// Dropped to stop the flusher, which is then joined.
    stop_flusher: Option<crossbeam_channel::Sender<()>>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

/// Inserts commit without fsync (`Durability::None`: atomic, and a crash rolls back to the last
/// durable commit, so nothing is ever half-written), and every this many commits or this often
/// one commit is made durable; a flusher thread makes the last inserts durable this long after
/// them when no further insert comes, so a crash forgets at most the last few seconds. A fsync
/// per batch cost 5 % of a run that never hits.
const DURABLE_EVERY_COMMITS: u32 = 32;
const DURABLE_EVERY: Duration = Duration::from_secs(2);

/// What a lookup found.
pub enum Lookup {
    Hit(Record),
    Miss,
    /// A record that failed its checks; it has been removed.
    Corrupt,
}

/// Totals over the whole disk tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskTotals {
    pub entries: u64,
    pub bytes: u64,
}

/// What `verify` found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub checked: u64,
    pub corrupt_removed: u64,
    /// Intact entries of the model asked about (all intact entries without a model).
    pub matched: u64,
    /// Entries removed on request (`clear`).
    pub removed: u64,
}

impl DiskTier {
    pub fn open(dir: &Path, max_bytes: u64, page_cache_bytes: u64) -> Result<DiskTier, DiskError> {
        let path = dir.join(FILE_NAME);
        let err = |reason: String| DiskError {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create the folder: {e}")))?;
        let db = Database::builder()
            .set_cache_size(usize::try_from(page_cache_bytes).unwrap_or(usize::MAX))
            .create(&path)
            .map_err(|e| err(e.to_string()))?;
        let db = Arc::new(db);
        let since_durable = Arc::new(Mutex::new((0, Instant::now())));
        let (stop_flusher, stopped) = crossbeam_channel::bounded::<()>(0);
        let flusher = {
            let (db, since) = (db.clone(), since_durable.clone());
            std::thread::Builder::new()
                .name("cache-flusher".into())
                .spawn(move || {
                    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(DURABLE_EVERY / 4)
                    {
                        let mut since = since.lock().unwrap_or_else(|p| p.into_inner());
                        if since.0 > 0 && since.1.elapsed() >= DURABLE_EVERY {
                            // A failure here is retried on the next tick or insert.
                            if durable_commit(&db).is_ok() {
                                *since = (0, Instant::now());
                            }
                        }
                    }
                })
                .map_err(|e| err(format!("cannot start the flusher thread: {e}")))?
        };
        let tier = DiskTier {
            db,
            path: path.clone(),
            max_bytes,
            since_durable,
            stop_flusher: Some(stop_flusher),
            flusher: Some(flusher),
        };
        // Create the tables so that readers never see them missing.
        tier.write(true, |_, _, _| Ok(()))?;
        Ok(tier)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, e: impl ToString) -> DiskError {
        DiskError {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    fn write(
        &self,
        durable: bool,
        f: impl FnOnce(
            &mut redb::Table<&[u8; 32], &[u8]>,
            &mut redb::Table<u64, &[u8; 32]>,
            &mut redb::Table<&str, u64>,
        ) -> Result<(), redb::Error>,
    ) -> Result<(), DiskError> {
        let mut txn = self.db.begin_write().map_err(|e| self.error(e))?;
        if !durable {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| self.error(e))?;
        }
        {
            let mut entries = txn.open_table(ENTRIES).map_err(|e| self.error(e))?;
            let mut order = txn.open_table(ORDER).map_err(|e| self.error(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.error(e))?;
            f(&mut entries, &mut order, &mut meta).map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))
    }

    /// Looks `key` up; a record that fails its checks or is older than `max_age_secs` is
    /// removed and reported as such.
    pub fn get(
        &self,
        key: &CacheKey,
        max_age_secs: Option<u64>,
        now: u64,
    ) -> Result<Lookup, DiskError> {
        let bytes = {
            let txn = self.db.begin_read().map_err(|e| self.error(e))?;
            let table = txn.open_table(ENTRIES).map_err(|e| self.error(e))?;
            match table.get(&key.0).map_err(|e| self.error(e))? {
                Some(guard) => guard.value().to_vec(),
                None => return Ok(Lookup::Miss),
            }
        };
        match record::decode(key, &bytes) {
            Ok(r)
                if max_age_secs
                    .is_some_and(|age| now.saturating_sub(r.created_unix_secs) > age) =>
            {
                self.remove(key)?;
                Ok(Lookup::Miss)
            }
            Ok(r) => Ok(Lookup::Hit(r)),
            Err(_) => {
                self.remove(key)?;
                Ok(Lookup::Corrupt)
            }
        }
    }

    fn remove(&self, key: &CacheKey) -> Result<(), DiskError> {
        self.write(true, |entries, _, meta| {
            if let Some(old) = entries.remove(&key.0)? {
                let len = old.value().len() as u64;
                drop(old);
                let bytes = meta.get("bytes")?.map_or(0, |g| g.value());
                meta.insert("bytes", bytes.saturating_sub(len))?;
            }
            Ok(())
        })
    }

    /// Inserts records in one transaction and evicts the oldest entries past the size bound.
    /// Returns the number of entries evicted.
    pub fn insert_many(
        &self,
        items: &[(CacheKey, ModelDigest, &[u8])],
        now: u64,
    ) -> Result<u64, DiskError> {
        let mut evicted = 0;
        let max_bytes = self.max_bytes;
        let durable = {
            let mut since = self.since_durable.lock().unwrap_or_else(|p| p.into_inner());
            since.0 += 1;
            let due = since.0 >= DURABLE_EVERY_COMMITS || since.1.elapsed() >= DURABLE_EVERY;
            if due {
                *since = (0, Instant::now());
            }
            due
        };
        self.write(durable, |entries, order, meta| {
            let mut bytes = meta.get("bytes")?.map_or(0, |g| g.value());
            let mut seq = meta.get("next_seq")?.map_or(0, |g| g.value());
            for (key, model, payload) in items {
                if entries.get(&key.0)?.is_some() {
                    continue;
                }
                let rec = record::encode(key, model, now, payload);
                bytes += rec.len() as u64;
                entries.insert(&key.0, rec.as_slice())?;
                order.insert(seq, &key.0)?;
                seq += 1;
            }
            while bytes > max_bytes {
                let Some((_, key)) = order.pop_first()? else {
                    break;
                };
                let key = *key.value();
                if let Some(old) = entries.remove(&key)? {
                    bytes = bytes.saturating_sub(old.value().len() as u64);
                    evicted += 1;
                }
            }
            meta.insert("bytes", bytes)?;
            meta.insert("next_seq", seq)?;
            Ok(())
        })?;
        Ok(evicted)
    }

    /// Makes every commit so far durable.
    pub fn flush(&self) -> Result<(), DiskError> {
        *self.since_durable.lock().unwrap_or_else(|p| p.into_inner()) = (0, Instant::now());
        self.write(true, |_, _, _| Ok(()))
    }

    pub fn totals(&self) -> Result<DiskTotals, DiskError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let entries = txn.open_table(ENTRIES).map_err(|e| self.error(e))?;
        let meta = txn.open_table(META).map_err(|e| self.error(e))?;
        Ok(DiskTotals {
            entries: entries.len().map_err(|e| self.error(e))?,
            bytes: meta
                .get("bytes")
                .map_err(|e| self.error(e))?
                .map_or(0, |g| g.value()),
        })
    }

    /// Checks every record and removes those that fail; counts the intact entries of `model`
    /// (of every model without one), and removes them too when `remove_model` is set.
    pub fn scan(
        &self,
        model: Option<&ModelDigest>,
        remove_model: bool,
    ) -> Result<VerifyReport, DiskError> {
        let mut report = VerifyReport::default();
        let mut doomed: Vec<[u8; 32]> = Vec::new();
        {
            let txn = self.db.begin_read().map_err(|e| self.error(e))?;
            let table = txn.open_table(ENTRIES).map_err(|e| self.error(e))?;
            for item in table.iter().map_err(|e| self.error(e))? {
                let (k, v) = item.map_err(|e| self.error(e))?;
                let key = CacheKey(*k.value());
                report.checked += 1;
                match record::decode(&key, v.value()) {
                    Err(_) => {
                        report.corrupt_removed += 1;
                        doomed.push(key.0);
                    }
                    Ok(r) if model.is_none_or(|m| *m == r.model) => {
                        report.matched += 1;
                        if remove_model {
                            report.removed += 1;
                            doomed.push(key.0);
                        }
                    }
                    Ok(_) => {}
                }
            }
        }
        self.write(true, |entries, _, meta| {
            let mut bytes = meta.get("bytes")?.map_or(0, |g| g.value());
            for key in &doomed {
                if let Some(old) = entries.remove(key)? {
                    bytes = bytes.saturating_sub(old.value().len() as u64);
                }
            }
            meta.insert("bytes", bytes)?;
            Ok(())
        })?;
        Ok(report)
    }

    /// Overwrites a stored record's bytes: for tests of corruption handling.
    #[doc(hidden)]
    pub fn overwrite_raw(&self, key: &CacheKey, bytes: &[u8]) -> Result<(), DiskError> {
        self.write(true, |entries, _, _| {
            entries.insert(&key.0, bytes)?;
            Ok(())
        })
    }
}

/// An empty commit with full durability: every commit before it reaches the disk.
fn durable_commit(db: &Database) -> Result<(), redb::Error> {
    db.begin_write()?.commit()?;
    Ok(())
}

impl Drop for DiskTier {
    fn drop(&mut self) {
        drop(self.stop_flusher.take());
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        let _ = self.flush();
    }
}
