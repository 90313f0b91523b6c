//! `hearth bench cache`: round-trip times of the cache per tier.
//!
//! Against the configured database (embedded by default): `N` sets, then `N` gets of 100 hot
//! keys served by the in-process tier, then `N` gets with the in-process tier bypassed (the
//! shared tier, one query each). Prints one JSON line per operation with p50/p99/max in milliseconds.

use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use sqlx::PgPool;

use hearth::{
    cache::{Cache, CacheConfig, Timeout},
    channels::ChannelLayer,
    config::Config,
    web::state,
};

#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    /// Operations per measurement.
    #[arg(default_value_t = 10_000)]
    pub n: usize,
}

/// Runs on `pool` (opened and migrated by the command line).
pub async fn run(config: &Config, pool: PgPool, args: CacheArgs) -> anyhow::Result<()> {
    let channels = ChannelLayer::start(pool.clone(), state::channel_config(config));
    channels.ready().await;
    let two_tiers = Cache::start(pool.clone(), channels.clone(), state::cache_config(config));
    let shared_only = Cache::start(
        pool,
        channels.clone(),
        CacheConfig {
            local_ttl: Duration::ZERO,
            ..state::cache_config(config)
        },
    );
    let value = "x".repeat(100);
    let n = args.n.max(1);
    let result = async {
        let keys: Vec<String> = (0..n).map(|i| format!("bench:{i}")).collect();
        report(
            "set",
            n,
            time(n, |i| two_tiers.set(&keys[i], &value, Timeout::Never)).await?,
        );
        // Hot keys: read once to load them locally, then within the local TTL.
        let hot = &keys[..keys.len().min(100)];
        for key in hot {
            two_tiers.get::<String>(key).await?;
        }
        report(
            "get_local",
            n,
            time(n, |i| two_tiers.get::<String>(&hot[i % hot.len()])).await?,
        );
        report(
            "get_shared",
            n,
            time(n, |i| shared_only.get::<String>(&keys[i])).await?,
        );
        two_tiers.clear_prefix(":1:bench:").await?;
        anyhow::Ok(())
    }
    .await;
    two_tiers.shutdown();
    shared_only.shutdown();
    channels.shutdown().await;
    result
}

async fn time<T, E, F, Fut>(n: usize, mut op: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let bar = ProgressBar::new(n as u64);
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        op(i).await?;
        times.push(started.elapsed());
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(times)
}

fn report(op: &str, n: usize, mut times: Vec<Duration>) {
    times.sort_unstable();
    let ms = |p: f64| {
        let i = ((p / 100.0 * times.len() as f64).ceil() as usize).saturating_sub(1);
        (times[i].as_secs_f64() * 1e6).round() / 1e3
    };
    println!(
        "{}",
        serde_json::json!({
            "op": op, "n": n, "p50_ms": ms(50.0), "p99_ms": ms(99.0), "max_ms": ms(100.0),
        })
    );
}
