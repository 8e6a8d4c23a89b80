//! Replicas sharing a real Redis (Debian's `redis-server`, which scripts/test installs): the
//! shared tier over real sockets, Redis stopping under load, and garbage under a key.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use singlepoint_cache::CacheKey;
use singlepoint_model::Model;

use super::serve::{photo, random_tensor_body, Server, MODEL};
use super::text;

/// A redis-server on a free loopback port, stopped when dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Redis { child: None, port };
        redis.restart();
        redis
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server is not installed: `apt-get install redis-server` (scripts/test does)",
            );
        self.child = Some(child);
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one command in RESP and returns the raw reply.
    fn command(&self, args: &[&[u8]]) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        s.write_all(&req).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        buf.truncate(n);
        buf
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn replica(redis: &Redis) -> Server {
    let url = redis.url();
    Server::start(&[
        "--cache-disk",
        "0",
        "--cache-redis",
        &url,
        "--cache-redis-namespace",
        "test",
    ])
}

fn classify(server: &Server, name: &str) -> serde_json::Value {
    let reply = server.send(
        "POST",
        &format!("/v1/models/{MODEL}/classify?top_k=1"),
        &[],
        &photo(name),
    );
    assert_eq!(reply.status, 200, "{}", text(&reply.body));
    reply.json()["results"][0].clone()
}

/// Waits until `server` has written `n` answers to Redis (writes go behind the response).
fn await_writes(server: &Server, n: f64) {
    let t0 = Instant::now();
    while server.metric("singlepoint_redis_writes_total", "") < n {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the answer never reached Redis"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_answer_computed_by_one_replica_is_a_hit_on_the_other() {
    let redis = Redis::start();
    let a = replica(&redis);
    let b = replica(&redis);
    let first = classify(&a, "chelsea.png");
    assert_eq!(first["cached"], false);
    await_writes(&a, 1.0);
    let second = classify(&b, "chelsea.png");
    assert_eq!(second["cached"], true, "{second}");
    assert_eq!(second["label"], first["label"]);
    assert_eq!(second["top_k"], first["top_k"]);
    assert_eq!(
        b.metric("singlepoint_cache_hits_total", "tier=\"redis\""),
        1.0
    );
    assert_eq!(b.metric("singlepoint_model_executions_total", MODEL), 0.0);
    // B promoted the answer to its memory: the next ask does not go to Redis.
    classify(&b, "chelsea.png");
    assert_eq!(
        b.metric("singlepoint_cache_hits_total", "tier=\"memory\""),
        1.0
    );
}

#[test]
fn redis_stopping_under_load_fails_no_request_and_hits_resume_when_it_returns() {
    let mut redis = Redis::start();
    let a = replica(&redis);
    let b = replica(&redis);
    let stop = Instant::now() + Duration::from_secs(3);
    let served = std::thread::scope(|s| {
        // Distinct inputs, so every request looks in Redis (memory cannot answer it).
        let load = s.spawn(|| {
            let mut n = 0;
            while Instant::now() < stop {
                let (len, body) = random_tensor_body(70_000 + n);
                let r = a.infer_binary(&len, &body);
                assert_eq!(r.status, 200, "request {n} failed: {}", text(&r.body));
                n += 1;
            }
            n
        });
        std::thread::sleep(Duration::from_millis(700));
        redis.stop();
        std::thread::sleep(Duration::from_millis(1000));
        redis.restart();
        load.join().unwrap()
    });
    assert!(served > 14, "{served} requests");
    assert!(
        a.metric("singlepoint_redis_errors_total", "") >= 1.0,
        "the outage was noticed"
    );
    // Back: A reconnects, and what A computes now is a hit on B.
    let t0 = Instant::now();
    while a.metric("singlepoint_redis_up", "") < 1.0 || b.metric("singlepoint_redis_up", "") < 1.0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "never reconnected");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = a.metric("singlepoint_redis_writes_total", "");
    let gray = std::fs::read(super::repo().join("tests/data/gray-200.jpg")).unwrap();
    let reply = a.send("POST", &format!("/v1/models/{MODEL}/classify"), &[], &gray);
    assert_eq!(reply.status, 200);
    await_writes(&a, before + 1.0);
    let reply = b.send("POST", &format!("/v1/models/{MODEL}/classify"), &[], &gray);
    assert_eq!(reply.json()["results"][0]["cached"], true);
    // One log line for each change of state (logged within a quarter second).
    let t0 = Instant::now();
    let log = loop {
        let log = a.log();
        if log.contains("reachable again") || t0.elapsed() > Duration::from_secs(5) {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(log.matches("is unavailable").count(), 1, "{log}");
    assert_eq!(log.matches("reachable again").count(), 1, "{log}");
}

#[test]
fn garbage_under_a_key_is_detected_and_treated_as_a_miss() {
    let redis = Redis::start();
    let server = replica(&redis);
    let bytes = photo("coffee.png");
    let key = CacheKey::new(
        &Model::bundled().digest,
        b"outputs-v1;input=encoded-image",
        &bytes,
    );
    let name = format!("test:{{{}}}", key.to_hex());
    assert_eq!(
        redis.command(&[b"SET", name.as_bytes(), b"not a record at all"]),
        b"+OK\r\n"
    );
    let r = classify(&server, "coffee.png");
    assert_eq!(r["cached"], false, "garbage must not be served");
    assert_eq!(r["label"], "espresso");
    assert_eq!(server.metric("singlepoint_redis_garbage_total", ""), 1.0);
    // The garbage was deleted and the real answer written in its place.
    await_writes(&server, 1.0);
    let stored = redis.command(&[b"GET", name.as_bytes()]);
    assert!(
        stored.starts_with(b"$") && !stored.starts_with(b"$19"),
        "{}",
        text(&stored)
    );
}

#[test]
fn a_redis_that_never_answers_costs_only_its_timeout() {
    // A "Redis" that accepts connections and reads, but never replies.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let url = format!("redis://127.0.0.1:{port}");
    let server = Server::start(&[
        "--cache-disk",
        "0",
        "--cache-redis",
        &url,
        "--cache-redis-timeout",
        "5ms",
    ]);
    for (i, name) in ["chelsea.png", "coffee.png", "china.jpg"]
        .iter()
        .enumerate()
    {
        let t0 = Instant::now();
        let r = classify(&server, name);
        assert!(r["label"].is_string(), "{r}");
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "request {i} took {:?}",
            t0.elapsed()
        );
    }
    assert_eq!(server.metric("singlepoint_redis_up", ""), 0.0);
    assert!(server.metric("singlepoint_redis_errors_total", "") >= 1.0);
}

#[test]
fn flush_returns_once_every_queued_write_is_in_redis() {
    use singlepoint_cache::{RedisConfig, RedisTier};
    use std::sync::Arc;
    let redis = Redis::start();
    let config = RedisConfig {
        url: redis.url(),
        namespace: "flush".into(),
        ttl: None,
        op_timeout: Duration::from_secs(1),
        pool_size: 2,
    };
    let digest = singlepoint_core::ModelDigest([7; 32]);
    let tier = RedisTier::open(config.clone()).unwrap();
    let items: Vec<(CacheKey, Arc<[u8]>)> = (0..400u32)
        .map(|i| {
            let key = CacheKey::new(&digest, b"", &i.to_le_bytes());
            (key, Arc::from(vec![(i % 251) as u8; 4096]))
        })
        .collect();
    // Queued in 40 batches behind the caller; flush waits for the writer to finish them all.
    for chunk in items.chunks(10) {
        tier.insert_many(&digest, chunk, 0);
    }
    assert!(tier.flush(Duration::from_secs(10)));
    assert_eq!(tier.stats().writes, 400);
    assert_eq!(tier.stats().dropped_writes, 0);
    // Another replica reads every one of them at once.
    let other = RedisTier::open(config).unwrap();
    for (key, value) in &items {
        assert_eq!(other.get(key).as_deref(), Some(&value[..]));
    }
    // Nothing queued: nothing to wait for.
    assert!(tier.flush(Duration::ZERO));
}
