//! Minutes-long checks, `#[ignore]`d so that they run alone after the rest (scripts/test runs
//! them with `--ignored --test-threads 1`): a soak at several times the server's capacity mixed
//! with hostile inputs, and SIGKILLs under load with the disk cache on.
//!
//! `SINGLEPOINT_SOAK_SECONDS` sets the soak's length (default 90) and
//! `SINGLEPOINT_CRASH_ROUNDS` the number of kills (default 6).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::hostile::{of_kind, send_case, stall};
use super::serve::{photo, Server, MODEL};
use super::text;

const JPEGS: &[&str] = &["china.jpg", "flower.jpg", "grace_hopper.jpg", "rocket.jpg"];

/// A photo with a comment segment after its SOI marker: new bytes (a new cache key), the same
/// pixels (the same answer).
fn with_nonce(jpeg: &[u8], nonce: u64) -> Vec<u8> {
    let comment = format!("nonce {nonce}");
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&((comment.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(comment.as_bytes());
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A small deterministic generator (the tests must replay).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn classify(server: &Server, bytes: &[u8]) -> (u16, Value) {
    let reply = server.send("POST", &format!("/v1/models/{MODEL}/classify"), &[], bytes);
    let json = if reply.status == 200 || reply.body.starts_with(b"{") {
        reply.json()
    } else {
        Value::Null
    };
    (reply.status, json)
}

/// Top-5 classes and probabilities.
fn top5(answer: &Value) -> Vec<(u64, f64)> {
    answer["results"][0]["top_k"]
        .as_array()
        .unwrap_or_else(|| panic!("no top_k: {answer}"))
        .iter()
        .map(|t| {
            (
                t["class"].as_u64().unwrap(),
                t["probability"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The largest probability difference, or `None` when the classes differ.
fn difference(a: &[(u64, f64)], b: &[(u64, f64)]) -> Option<f64> {
    (a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0)).then(|| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x.1 - y.1).abs())
            .fold(0.0, f64::max)
    })
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Tally {
    statuses: Mutex<HashMap<u16, u64>>,
    wrong: Mutex<Vec<String>>,
    max_difference: Mutex<f64>,
}

impl Tally {
    fn count(&self, status: u16) {
        *self.statuses.lock().unwrap().entry(status).or_default() += 1;
    }

    fn check(&self, what: &str, got: &[(u64, f64)], want: &[(u64, f64)]) {
        match difference(got, want) {
            Some(d) if d <= 1e-5 => {
                let mut max = self.max_difference.lock().unwrap();
                *max = max.max(d);
            }
            _ => self
                .wrong
                .lock()
                .unwrap()
                .push(format!("{what}: {got:?} vs {want:?}")),
        }
    }

    fn statuses(&self) -> HashMap<u16, u64> {
        self.statuses.lock().unwrap().clone()
    }
}

/// What the soak sends: reference answers to check against, and what came back.
struct Soak {
    server: Arc<Server>,
    photos: Vec<Vec<u8>>,
    reference: Vec<Vec<(u64, f64)>>,
    hostile: Vec<Value>,
    tally: Arc<Tally>,
    nonce: Arc<AtomicU64>,
    hostile_sent: Arc<AtomicU64>,
    stalls: Arc<AtomicU64>,
}

impl Soak {
    /// Runs the whole mix for `duration`: 24 closed-loop clients sending photos (four in five
    /// with a fresh nonce, so computed; one in five repeated exactly), two clients sending the
    /// hostile corpus round and round, and a slow-loris opening a stalled upload every 100 ms
    /// (40 held at a time). Returns the peak RSS and a sample every tenth of the time.
    fn traffic(&self, duration: Duration) -> (f64, Vec<u64>) {
        let deadline = Instant::now() + duration;
        let mut handles = Vec::new();
        for c in 0..24u64 {
            let (server, photos, reference, tally, nonce) = (
                self.server.clone(),
                self.photos.clone(),
                self.reference.clone(),
                self.tally.clone(),
                self.nonce.clone(),
            );
            handles.push(std::thread::spawn(move || {
                let mut rng = Lcg(c + 1 + nonce.load(Ordering::Relaxed));
                while Instant::now() < deadline {
                    let i = rng.next() as usize % photos.len();
                    let bytes = if rng.next().is_multiple_of(5) {
                        photos[i].clone()
                    } else {
                        with_nonce(&photos[i], nonce.fetch_add(1, Ordering::Relaxed))
                    };
                    let (status, json) = classify(&server, &bytes);
                    tally.count(status);
                    match status {
                        200 => tally.check(JPEGS[i], &top5(&json), &reference[i]),
                        // Refused at once: come back soon, still far over capacity.
                        429 => std::thread::sleep(Duration::from_millis(10)),
                        _ => {}
                    }
                }
            }));
        }
        for k in 0..2 {
            let (server, hostile, sent, tally) = (
                self.server.clone(),
                self.hostile.clone(),
                self.hostile_sent.clone(),
                self.tally.clone(),
            );
            handles.push(std::thread::spawn(move || {
                let mut i = k;
                while Instant::now() < deadline {
                    let case = &hostile[i % hostile.len()];
                    i += 2;
                    if case["status"] == 413 {
                        continue; // sent whole, ureq sees the refusal as a broken pipe
                    }
                    let reply = send_case(&server, case);
                    sent.fetch_add(1, Ordering::Relaxed);
                    let fine = if case["expect"] == "ok" {
                        matches!(reply.status, 200 | 429 | 504)
                    } else {
                        (400..500).contains(&reply.status)
                    };
                    if !fine {
                        tally.wrong.lock().unwrap().push(format!(
                            "{}: {} {}",
                            case["name"],
                            reply.status,
                            text(&reply.body)
                        ));
                    }
                }
            }));
        }
        let (addr, stalls) = (self.server.addr(), self.stalls.clone());
        handles.push(std::thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            while Instant::now() < deadline {
                let head = "POST /v1/models/efficientnet-lite0/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 9999\r\n\r\nabc";
                held.push_back(stall(&addr, head));
                stalls.fetch_add(1, Ordering::Relaxed);
                if held.len() > 40 {
                    held.pop_front();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
        let pid = self.server.pid();
        let every = duration / 10;
        let (mut peak, mut timeline) = (0f64, Vec::new());
        let mut next = Instant::now() + every;
        while Instant::now() < deadline {
            let rss = rss_mib(pid);
            peak = peak.max(rss);
            if Instant::now() >= next {
                timeline.push(rss.round() as u64);
                next += every;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for h in handles {
            h.join().unwrap();
        }
        (peak, timeline)
    }
}

#[test]
#[ignore = "minutes long: scripts/test runs it after the other tests"]
fn soak_at_several_times_capacity_with_hostile_inputs_leaves_the_server_as_it_was() {
    let seconds = env_or("SINGLEPOINT_SOAK_SECONDS", 90);
    let server = Arc::new(Server::start(&[
        "--instances",
        "1",
        "--max-queue",
        "16",
        "--request-timeout",
        "3s",
        "--header-timeout",
        "2s",
        "--body-timeout",
        "2s",
        "--max-body",
        "1MiB",
        "--max-connections",
        "256",
        // Small, so that what the caches hold is not mistaken for growth.
        "--cache-mem",
        "8MiB",
        "--cache-disk-memory",
        "4MiB",
    ]));
    let pid = server.pid();
    let photos: Vec<Vec<u8>> = JPEGS.iter().map(|p| photo(p)).collect();
    // The reference answers, one request at a time on an idle server.
    let reference = photos
        .iter()
        .map(|p| {
            let (status, json) = classify(&server, p);
            assert_eq!(status, 200, "{json}");
            top5(&json)
        })
        .collect();
    let soak = Soak {
        server: server.clone(),
        photos,
        reference,
        hostile: of_kind("image")
            .into_iter()
            .chain(of_kind("http"))
            .collect(),
        tally: Arc::new(Tally::default()),
        nonce: Arc::new(AtomicU64::new(1)),
        hostile_sent: Arc::new(AtomicU64::new(0)),
        stalls: Arc::new(AtomicU64::new(0)),
    };
    let rest = || std::thread::sleep(Duration::from_secs(5)); // past every timeout (≤ 3 s)

    // Warm up with the same mix, then rest: the baseline is the server at working size.
    soak.traffic(Duration::from_secs(20));
    rest();
    let (rss_base, fds_base) = (rss_mib(pid), open_fds(pid));
    let before = soak.tally.statuses();
    let t0 = Instant::now();
    let (peak, timeline) = soak.traffic(Duration::from_secs(seconds));
    let elapsed = t0.elapsed().as_secs_f64();
    rest();
    let (rss_end, fds_end) = (rss_mib(pid), open_fds(pid));

    let after = soak.tally.statuses();
    let during =
        |s: u16| after.get(&s).copied().unwrap_or(0) - before.get(&s).copied().unwrap_or(0);
    let ok = during(200);
    eprintln!(
        "soak {elapsed:.0} s: {ok} answered ({:.1}/s), {} refused 429, {} timed out 504; \
         {} hostile requests, {} stalled connections; RSS at rest {rss_base:.0} MiB before, \
         {rss_end:.0} after, peak {peak:.0} (every tenth of the run: {timeline:?}); \
         fds {fds_base} → {fds_end}; largest difference from the reference {:.2e}",
        ok as f64 / elapsed,
        during(429),
        during(504),
        soak.hostile_sent.load(Ordering::Relaxed),
        soak.stalls.load(Ordering::Relaxed),
        *soak.tally.max_difference.lock().unwrap(),
    );
    let wrong = soak.tally.wrong.lock().unwrap();
    assert!(
        wrong.is_empty(),
        "{} wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let unexpected: Vec<_> = after
        .keys()
        .filter(|s| !matches!(s, 200 | 429 | 504))
        .collect();
    assert!(unexpected.is_empty(), "good requests got {after:?}");
    assert!(during(429) > 0, "the load was over capacity: {after:?}");
    assert!(ok as f64 > 10.0 * elapsed, "it kept answering: {ok}");
    assert!(peak < 2048.0, "bounded memory: peak {peak} MiB");
    assert!(
        rss_end < rss_base * 1.15 + 32.0,
        "RSS {rss_base:.0} MiB → {rss_end:.0} MiB"
    );
    assert!(fds_end <= fds_base + 2, "fds {fds_base} → {fds_end}");
    let (status, json) = classify(&server, &soak.photos[0]);
    assert_eq!(status, 200);
    assert_eq!(top5(&json), soak.reference[0]);
    assert_eq!(server.send("GET", "/v2/health/ready", &[], &[]).status, 200);
    assert!(!server.log().contains("panicked"));
}

#[test]
#[ignore = "minutes long: scripts/test runs it after the other tests"]
fn sigkill_under_load_leaves_a_cache_that_verifies_and_answers_as_a_cache_off_run() {
    let rounds = env_or("SINGLEPOINT_CRASH_ROUNDS", 6);
    let inputs: Arc<Vec<Vec<u8>>> = Arc::new(
        JPEGS
            .iter()
            .flat_map(|p| {
                let bytes = photo(p);
                (0..36).map(move |n| with_nonce(&bytes, n))
            })
            .collect(),
    );
    assert!(inputs.len() >= 40);
    // The cache-off run: every input once.
    let reference: Arc<Vec<Vec<(u64, f64)>>> = {
        let server = Server::start(&["--no-cache"]);
        Arc::new(
            inputs
                .iter()
                .map(|b| {
                    let (status, json) = classify(&server, b);
                    assert_eq!(status, 200, "{json}");
                    top5(&json)
                })
                .collect(),
        )
    };
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().display().to_string();
    let start = || {
        // Memory tier off: every hit is read back from the file the kills interrupt.
        Server::start(&["--cache-dir", &dir, "--cache-mem", "0", "--max-queue", "64"])
    };
    let verify = || {
        let out = super::singlepoint(&["cache", "verify", "--cache-dir", &dir], None);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(" 0 corrupt"),
            "{stdout}{}",
            text(&out.stderr)
        );
        stdout
    };
    let tally = Arc::new(Tally::default());
    let mut rng = Lcg(7);
    for round in 0..rounds {
        let server = Arc::new(Mutex::new(start()));
        let handle = server.lock().unwrap().addr();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..6)
            .map(|c| {
                let (inputs, reference, tally, stop, url) = (
                    inputs.clone(),
                    reference.clone(),
                    tally.clone(),
                    stop.clone(),
                    format!("http://{handle}/v1/models/{MODEL}/classify"),
                );
                std::thread::spawn(move || {
                    let mut rng = Lcg(round * 100 + c);
                    // Each round: 20 inputs answered before, 20 new ones to compute and store.
                    let window = (round as usize * 20) % (inputs.len() - 40);
                    while !stop.load(Ordering::Relaxed) {
                        let i = window + rng.next() as usize % 40;
                        // The server dies under these: a failed connection is expected.
                        let Ok(r) = ureq::post(&url)
                            .timeout(Duration::from_secs(10))
                            .send_bytes(&inputs[i])
                        else {
                            continue;
                        };
                        let mut body = Vec::new();
                        if std::io::Read::read_to_end(&mut r.into_reader(), &mut body).is_err() {
                            continue;
                        }
                        tally.count(200);
                        let json: Value = serde_json::from_slice(&body).unwrap();
                        tally.check(&format!("input {i}"), &top5(&json), &reference[i]);
                    }
                })
            })
            .collect();
        // Before and after the disk tier's first durable commit (2 s after an insert).
        let after = Duration::from_millis(500 + rng.next() % 4000);
        std::thread::sleep(after);
        server.lock().unwrap().kill();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let report = verify();
        eprintln!("round {round}: SIGKILL after {after:?}; {}", report.trim());
    }
    // A last start: the cache opens, and every input is answered as the cache-off run did.
    let server = start();
    let mut cached = 0;
    for (i, bytes) in inputs.iter().enumerate() {
        let (status, json) = classify(&server, bytes);
        assert_eq!(status, 200, "{json}");
        cached += usize::from(json["results"][0]["cached"] == true);
        tally.check(
            &format!("input {i} after the kills"),
            &top5(&json),
            &reference[i],
        );
    }
    drop(server);
    eprintln!(
        "{rounds} kills: {} answers under load, {cached} of {} inputs answered from the cache \
         afterwards, largest difference from the cache-off run {:.2e}",
        tally.statuses().get(&200).copied().unwrap_or(0),
        inputs.len(),
        *tally.max_difference.lock().unwrap()
    );
    let wrong = tally.wrong.lock().unwrap();
    assert!(
        wrong.is_empty(),
        "{} wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(cached > 0, "the cache survived the kills");
    verify();
}
