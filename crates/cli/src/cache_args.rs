//! Flags shared by `classify`, `serve` and `tune`: the result cache, prices and weights, sizes
//! and durations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use singlepoint_cache::{CacheConfig, RedisConfig, RedisTier, ResultCache};
use singlepoint_runtime::cost::{Prices, Weights};

/// What resources cost and how f = w_t·t + w_r·money weighs time against money
/// (docs/cost-model.md).
#[derive(Args, Clone, Debug)]
pub struct CostArgs {
    /// Price of one core for one hour, in your money unit
    #[arg(long, default_value_t = Prices::default().core_hour, value_name = "PRICE")]
    pub price_core_hour: f64,

    /// Price of one GiB of memory for one hour
    #[arg(long, default_value_t = Prices::default().gib_hour, value_name = "PRICE")]
    pub price_gib_hour: f64,

    /// w_t: what one hour of wall time is worth, in money (default: one core-hour's price)
    #[arg(long, value_name = "MONEY")]
    pub weight_time_per_hour: Option<f64>,

    /// w_r: the weight of money spent on resources
    #[arg(long, default_value_t = 1.0, value_name = "W")]
    pub weight_resources: f64,
}

impl CostArgs {
    /// Validated prices and weights.
    pub fn resolve(&self) -> anyhow::Result<(Prices, Weights)> {
        let prices = Prices {
            core_hour: self.price_core_hour,
            gib_hour: self.price_gib_hour,
        };
        let weights = Weights {
            time_per_hour: self.weight_time_per_hour.unwrap_or(prices.core_hour),
            resources: self.weight_resources,
        };
        for (flag, v) in [
            ("--price-core-hour", prices.core_hour),
            ("--price-gib-hour", prices.gib_hour),
            ("--weight-time-per-hour", weights.time_per_hour),
            ("--weight-resources", weights.resources),
        ] {
            if !v.is_finite() || v < 0.0 {
                anyhow::bail!("`{flag}` must be a finite number, 0 or more (got {v})");
            }
        }
        Ok((prices, weights))
    }
}

#[derive(Args, Clone, Debug)]
pub struct CacheArgs {
    /// Result cache folder (default: the per-user cache, ~/.cache/singlepoint/results)
    #[arg(long, env = "SINGLEPOINT_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Do not consult or fill the result cache
    #[arg(long)]
    pub no_cache: bool,

    /// Memory the in-process cache tier may use (0 turns it off)
    #[arg(long, default_value = "256MiB", value_parser = parse_size, value_name = "SIZE")]
    pub cache_mem: u64,

    /// Disk the on-disk cache tier may use (0 turns it off)
    #[arg(long, default_value = "2GiB", value_parser = parse_size, value_name = "SIZE")]
    pub cache_disk: u64,

    /// Memory the disk tier's page cache may use
    #[arg(long, default_value = "16MiB", value_parser = parse_size, value_name = "SIZE")]
    pub cache_disk_memory: u64,

    /// Cached answers older than this are recomputed: `90s`, `30m`, `12h`, `7d` (default: no
    /// expiry; answers do not go stale, since keys bind the model and the input bytes)
    #[arg(long, value_parser = parse_duration, value_name = "AGE")]
    pub cache_ttl: Option<Duration>,

    /// A Redis shared by replicas, after memory and disk: `redis://[user:pass@]host:6379`,
    /// `rediss://` for TLS, several comma-separated URLs or `redis+cluster://` for a cluster
    #[arg(long, env = "SINGLEPOINT_CACHE_REDIS", value_name = "URL")]
    pub cache_redis: Option<String>,

    /// Prefix of every Redis key (one per deployment)
    #[arg(long, default_value = "singlepoint", value_name = "NAME")]
    pub cache_redis_namespace: String,

    /// Budget of one Redis read or write; a slower Redis counts as down
    #[arg(long, default_value = "5ms", value_parser = parse_duration, value_name = "TIME")]
    pub cache_redis_timeout: Duration,

    /// Redis connections kept open
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub cache_redis_pool: usize,
}

impl CacheArgs {
    /// The cache settings, or `None` with `--no-cache`.
    pub fn config(&self) -> Option<CacheConfig> {
        (!self.no_cache).then(|| CacheConfig {
            memory_bytes: self.cache_mem,
            disk: (self.cache_disk > 0)
                .then(|| (cache_dir(self.cache_dir.as_deref()), self.cache_disk)),
            ttl: self.cache_ttl,
            disk_page_cache_bytes: self.cache_disk_memory,
        })
    }
}

impl CacheArgs {
    /// Opens the cache the flags describe (`None` with `--no-cache`).
    pub fn open(&self) -> anyhow::Result<Option<ResultCache>> {
        let Some(config) = self.config() else {
            return Ok(None);
        };
        let mut cache = ResultCache::open(&config);
        if let Some(url) = &self.cache_redis {
            if self.cache_redis_pool == 0 {
                anyhow::bail!("`--cache-redis-pool` must be at least 1");
            }
            let tier = RedisTier::open(RedisConfig {
                url: url.clone(),
                namespace: self.cache_redis_namespace.clone(),
                ttl: self.cache_ttl,
                op_timeout: self.cache_redis_timeout,
                pool_size: self.cache_redis_pool,
            })
            .map_err(anyhow::Error::msg)?;
            cache = cache.with_redis(tier);
        }
        Ok(Some(cache))
    }
}

/// `--cache-dir`, or the per-user default.
pub fn cache_dir(flag: Option<&Path>) -> PathBuf {
    match flag {
        Some(dir) => dir.to_path_buf(),
        None => singlepoint_cache::default_dir(),
    }
}

/// A positive duration: `250ms`, `90s` (or `90`), `30m`, `12h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 250ms, 90s, 30m, 12h or 7d"))?;
    let millis = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}`; use ms, s, m, h or d"
            ))
        }
    };
    if n == 0 {
        return Err("must be positive".into());
    }
    Ok(Duration::from_millis(n.saturating_mul(millis)))
}

/// A duration that may be zero, in milliseconds or with a unit.
pub fn parse_delay(text: &str) -> Result<Duration, String> {
    if text.trim().trim_end_matches("ms").trim_end_matches('s') == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(text)
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    singlepoint_cache::parse_size(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_delay("0"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("3ms"), Ok(Duration::from_millis(3)));
    }
}
