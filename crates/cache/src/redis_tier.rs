//! The shared tier: answers kept in Redis (or Redis Cluster), so that an answer computed by one
//! replica is a hit on every other.
//!
//! - Keys: `{namespace}:{<hex key>}`; the hash tag is the key itself, so a cluster spreads
//!   entries over its slots by the content key.
//! - Values: the same checksummed, versioned records as the disk tier ([`crate::record`]); a
//!   value that fails its checks is garbage: counted, deleted, a miss.
//! - Reads go through a bounded pool of connections with a per-operation timeout of a few
//!   milliseconds; writes are queued to a background thread (write-behind) and never hold up
//!   the caller; a full queue drops the write (counted).
//! - Failure: any error or timeout marks the tier down (one warning per change of state); while
//!   down, lookups skip Redis at once and the background thread pings every 500 ms until it
//!   answers, then marks it up again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use singlepoint_core::ModelDigest;

use crate::key::CacheKey;
use crate::record;

/// Settings of the Redis tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, `rediss://` for TLS; several comma-separated
    /// URLs, or `redis+cluster://`, mean a Redis Cluster.
    pub url: String,
    /// Prefix of every key: one per deployment.
    pub namespace: String,
    /// Entries expire after this.
    pub ttl: Option<Duration>,
    /// Budget of one read or write.
    pub op_timeout: Duration,
    /// Connections kept open for lookups.
    pub pool_size: usize,
}

/// Counters of the Redis tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisStats {
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub garbage: u64,
    pub writes: u64,
    pub dropped_writes: u64,
    pub up: bool,
}

enum Conn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Conn {
    fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query(c),
            Conn::Cluster(c) => cmd.query(c.as_mut()),
        }
    }

    fn pipe(&mut self, p: &redis::Pipeline) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => p.query(c),
            Conn::Cluster(c) => p.query(c.as_mut()),
        }
    }
}

enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

struct Shared {
    config: RedisConfig,
    client: Client,
    idle: Mutex<Vec<Conn>>,
    up: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    garbage: AtomicU64,
    writes: AtomicU64,
    dropped_writes: AtomicU64,
    /// Write batches queued, and those the writer has finished with (written or dropped):
    /// what [`RedisTier::flush`] waits on.
    queued: AtomicU64,
    settled: AtomicU64,
    events: Mutex<Vec<String>>,
}

/// Encoded records on their way to Redis.
type WriteBatch = Vec<(CacheKey, Vec<u8>)>;

pub struct RedisTier {
    shared: Arc<Shared>,
    writes: Option<Sender<WriteBatch>>,
    thread: Option<JoinHandle<()>>,
}

impl Shared {
    fn connect(&self) -> redis::RedisResult<Conn> {
        let t = self.config.op_timeout;
        // Connecting may take a round trip more than one operation.
        let connect = (t * 4).max(Duration::from_millis(20));
        match &self.client {
            Client::Single(c) => {
                let conn = c.get_connection_with_timeout(connect)?;
                conn.set_read_timeout(Some(t))?;
                conn.set_write_timeout(Some(t))?;
                Ok(Conn::Single(conn))
            }
            Client::Cluster(c) => {
                let conn = c.get_connection()?;
                conn.set_read_timeout(Some(t))?;
                conn.set_write_timeout(Some(t))?;
                Ok(Conn::Cluster(Box::new(conn)))
            }
        }
    }

    fn key(&self, key: &CacheKey) -> String {
        format!("{}:{{{}}}", self.config.namespace, key.to_hex())
    }

    fn set_state(&self, up: bool, why: &str) {
        if self.up.swap(up, Ordering::SeqCst) != up {
            let line = if up {
                format!(
                    "redis `{}` is reachable again; sharing answers",
                    redact(&self.config.url)
                )
            } else {
                format!(
                    "redis `{}` is unavailable ({why}); serving from the local tiers and the model until it returns",
                    redact(&self.config.url)
                )
            };
            self.events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line);
        }
    }

    /// Runs `f` on a pooled connection; an error marks the tier down and drops the connection.
    /// A pooled connection may have gone stale (Redis restarted since): its failure is retried
    /// once on a fresh connection before the tier counts as down.
    fn with_conn<T>(&self, mut f: impl FnMut(&mut Conn) -> redis::RedisResult<T>) -> Option<T> {
        if !self.up.load(Ordering::Relaxed) {
            return None;
        }
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let attempt = match pooled {
            Some(mut c) => match f(&mut c) {
                Ok(v) => Ok((v, c)),
                Err(_) => self.connect().and_then(|mut c| f(&mut c).map(|v| (v, c))),
            },
            None => self.connect().and_then(|mut c| f(&mut c).map(|v| (v, c))),
        };
        match attempt {
            Ok((v, conn)) => {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < self.config.pool_size {
                    idle.push(conn);
                }
                Some(v)
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.set_state(false, &e.to_string());
                None
            }
        }
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

impl RedisTier {
    /// Opens the tier. A Redis that does not answer yet is not an error: the tier starts down
    /// and comes up when it answers. A URL that cannot be parsed is an error.
    pub fn open(config: RedisConfig) -> Result<RedisTier, String> {
        let urls: Vec<String> = config
            .url
            .split(',')
            .map(|u| u.trim().replace("redis+cluster://", "redis://"))
            .collect();
        let cluster = urls.len() > 1 || config.url.starts_with("redis+cluster://");
        let client = if cluster {
            redis::cluster::ClusterClient::builder(urls)
                .connection_timeout((config.op_timeout * 4).max(Duration::from_millis(20)))
                .response_timeout(config.op_timeout)
                .build()
                .map(Client::Cluster)
        } else {
            redis::Client::open(urls[0].as_str()).map(Client::Single)
        }
        .map_err(|e| format!("bad --cache-redis URL `{}`: {e}", redact(&config.url)))?;
        let shared = Arc::new(Shared {
            config,
            client,
            idle: Mutex::new(Vec::new()),
            up: AtomicBool::new(true),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            garbage: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            dropped_writes: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            events: Mutex::new(Vec::new()),
        });
        // Find out now whether it answers, so the first lookups do not each pay a timeout.
        let _ = shared.with_conn(|c| c.query::<String>(&redis::cmd("PING")));
        let (tx, rx) = bounded::<WriteBatch>(256);
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("redis-writer".into())
            .spawn(move || write_behind(&worker, &rx))
            .map_err(|e| e.to_string())?;
        Ok(RedisTier {
            shared,
            writes: Some(tx),
            thread: Some(thread),
        })
    }

    /// Looks `key` up: the record's payload, or `None` (miss, garbage, down or too slow).
    pub fn get(&self, key: &CacheKey) -> Option<Vec<u8>> {
        let s = &self.shared;
        let name = s.key(key);
        let bytes: Option<Vec<u8>> = s.with_conn(|c| c.query(redis::cmd("GET").arg(&name)))?;
        let Some(bytes) = bytes else {
            s.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        match record::decode(key, &bytes) {
            Ok(r) => {
                s.hits.fetch_add(1, Ordering::Relaxed);
                Some(r.payload)
            }
            Err(_) => {
                s.garbage.fetch_add(1, Ordering::Relaxed);
                let _ = s.with_conn(|c| c.query::<()>(redis::cmd("DEL").arg(&name)));
                None
            }
        }
    }

    /// Queues answers for writing; never blocks.
    pub fn insert_many(&self, model: &ModelDigest, items: &[(CacheKey, Arc<[u8]>)], now_secs: u64) {
        let Some(tx) = &self.writes else { return };
        let batch: WriteBatch = items
            .iter()
            .map(|(k, v)| (*k, record::encode(k, model, now_secs, v)))
            .collect();
        let n = batch.len() as u64;
        // Counted before the send, so that the writer never settles more than was queued.
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(batch) {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            self.shared.dropped_writes.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Waits until every write queued before the call has been written or dropped, at most
    /// `timeout`; whether they all were. For a process about to end (a batch job's worker),
    /// whose queued answers would otherwise be lost with it.
    pub fn flush(&self, timeout: Duration) -> bool {
        let target = self.shared.queued.load(Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        while self.shared.settled.load(Ordering::SeqCst) < target {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    pub fn stats(&self) -> RedisStats {
        let s = &self.shared;
        RedisStats {
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            garbage: s.garbage.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            dropped_writes: s.dropped_writes.load(Ordering::Relaxed),
            up: s.up.load(Ordering::Relaxed),
        }
    }

    /// One line per change of state since the last call.
    pub fn take_events(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.events.lock().unwrap_or_else(|p| p.into_inner()))
    }

    #[doc(hidden)]
    pub fn set_raw(&self, key: &CacheKey, bytes: &[u8]) -> bool {
        let name = self.shared.key(key);
        self.shared
            .with_conn(|c| c.query::<()>(redis::cmd("SET").arg(&name).arg(bytes)))
            .is_some()
    }
}

impl Drop for RedisTier {
    fn drop(&mut self) {
        self.writes.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes queued answers; while the tier is down, pings it every 500 ms.
fn write_behind(s: &Shared, rx: &Receiver<WriteBatch>) {
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(batch) => {
                if !s.up.load(Ordering::Relaxed) {
                    s.dropped_writes
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    s.settled.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let mut pipe = redis::pipe();
                for (key, value) in &batch {
                    let cmd = pipe.cmd("SET").arg(s.key(key)).arg(value.as_slice());
                    if let Some(ttl) = s.config.ttl {
                        cmd.arg("PX").arg(ttl.as_millis() as u64);
                    }
                    cmd.ignore();
                }
                if s.with_conn(|c| c.pipe(&pipe)).is_some() {
                    s.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
                } else {
                    s.dropped_writes
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                s.settled.fetch_add(1, Ordering::SeqCst);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if !s.up.load(Ordering::Relaxed) {
            if let Ok(mut c) = s.connect() {
                if c.query::<String>(&redis::cmd("PING")).is_ok() {
                    s.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    s.set_state(true, "");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn a_bad_url_is_an_error_and_an_absent_server_is_down_not_fatal() {
        let config = |url: &str| RedisConfig {
            url: url.into(),
            namespace: "t".into(),
            ttl: None,
            op_timeout: Duration::from_millis(5),
            pool_size: 2,
        };
        assert!(RedisTier::open(config("http://nope")).is_err());
        // Nothing listens on port 1.
        let tier = RedisTier::open(config("redis://127.0.0.1:1")).unwrap();
        assert!(!tier.stats().up);
        assert_eq!(tier.get(&CacheKey([1; 32])), None);
        assert_eq!(
            tier.take_events().len(),
            1,
            "one line for the change of state"
        );
    }
}
