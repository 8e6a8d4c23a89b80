//! Hit latency of each cache tier, in process: memory, disk (memory off) and Redis (memory and
//! disk off). Each tier holds 2000 answers of 4000 bytes (an output row of 1000 classes); the
//! lookups ask for them in random order. Prints one JSON line per tier.
//!
//! Usage: tier_latency REDIS_URL [LOOKUPS]   (bench/redis.py runs it against a local redis-server)

use std::sync::Arc;
use std::time::{Duration, Instant};

use singlepoint_cache::{CacheConfig, CacheKey, RedisConfig, RedisTier, ResultCache};
use singlepoint_core::ModelDigest;

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .expect("usage: tier_latency REDIS_URL [LOOKUPS]");
    let lookups: usize = args.next().map_or(20_000, |n| n.parse().expect("a count"));
    let dir = std::env::temp_dir().join(format!("sp-tier-latency-{}", std::process::id()));
    let model = ModelDigest([7; 32]);
    let keys: Vec<CacheKey> = (0..2000u32)
        .map(|i| CacheKey::new(&model, b"bench", &i.to_le_bytes()))
        .collect();
    let value: Arc<[u8]> = vec![42u8; 4000].into();
    let items: Vec<(CacheKey, Arc<[u8]>)> = keys.iter().map(|k| (*k, value.clone())).collect();
    for tier in ["memory", "disk", "redis"] {
        let config = CacheConfig {
            memory_bytes: if tier == "memory" { 64 << 20 } else { 0 },
            disk: (tier == "disk").then(|| (dir.join(tier), 1 << 30)),
            ttl: None,
            disk_page_cache_bytes: singlepoint_cache::DISK_PAGE_CACHE_BYTES,
        };
        let mut cache = ResultCache::open(&config);
        if tier == "redis" {
            cache = cache.with_redis(
                RedisTier::open(RedisConfig {
                    url: url.clone(),
                    namespace: "bench".into(),
                    ttl: None,
                    op_timeout: Duration::from_millis(50),
                    pool_size: 4,
                })
                .expect("redis URL"),
            );
        }
        for chunk in items.chunks(100) {
            cache.insert_many(&model, chunk);
        }
        if tier == "redis" {
            // Writes go behind: wait until the last one is there.
            let t0 = Instant::now();
            while cache.get(&keys[keys.len() - 1]).is_none() {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "writes never reached redis"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let mut x: u64 = 12345;
        let mut times = Vec::with_capacity(lookups);
        for _ in 0..lookups {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = &keys[(x >> 33) as usize % keys.len()];
            let t0 = Instant::now();
            let hit = cache.get(key);
            times.push(t0.elapsed().as_secs_f64() * 1e6);
            assert!(hit.is_some(), "{tier}: a stored answer missed");
        }
        times.sort_by(f64::total_cmp);
        let q = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
        println!(
            "{{\"tier\": \"{tier}\", \"lookups\": {lookups}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"mean_us\": {:.1}}}",
            q(0.5),
            q(0.99),
            times.iter().sum::<f64>() / times.len() as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
