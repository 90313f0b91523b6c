//! The sweeper: keeps the shared tier bounded.
//!
//! Every `sweep_interval`, the instance that takes a transaction-scoped advisory lock deletes
//! expired entries (in batches) and then, while the table is over `max_bytes`, the entries
//! written longest ago — keeping the newest that fit. Other instances are told to drop their
//! local copies of what was evicted.

use super::{Cache, CacheError};

/// Expired entries deleted per statement.
const BATCH: i64 = 10_000;

pub(super) async fn periodically(cache: Cache) {
    let mut every = tokio::time::interval(cache.inner.config.sweep_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cache.inner.shutdown.cancelled() => return,
            () = cache.inner.channels.closing().cancelled_owned() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = run(&cache).await {
            tracing::warn!(error = %e, "cache sweep failed");
        }
    }
}

/// One sweep; returns how many entries were deleted (0 when another instance holds the lock).
#[tracing::instrument(skip_all)]
pub(super) async fn run(cache: &Cache) -> Result<u64, CacheError> {
    let mut tx = cache.inner.pool.begin().await?;
    let leader = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock(hashtext('hearth_cache_sweep')) AS "leader!""#
    )
    .fetch_one(&mut *tx)
    .await?;
    if !leader {
        return Ok(0);
    }
    let mut deleted = 0;
    loop {
        let n = sqlx::query!(
            "DELETE FROM cache_entries WHERE key IN (
                 SELECT key FROM cache_entries WHERE expires_at <= now() LIMIT $1)",
            BATCH
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        deleted += n;
        if n < BATCH as u64 {
            break;
        }
    }
    // Keep the newest entries whose sizes add up to the bound; delete the rest.
    let evicted = sqlx::query_scalar!(
        "WITH ordered AS (
             SELECT key, sum(octet_length(key) + octet_length(value))
                        OVER (ORDER BY updated_at DESC, key) AS running
             FROM cache_entries
         )
         DELETE FROM cache_entries WHERE key IN (SELECT key FROM ordered WHERE running > $1)
         RETURNING key",
        cache.inner.config.max_bytes as i64,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    if !evicted.is_empty() {
        cache.inner.stats.shared_evicted(evicted.len() as u64);
        tracing::info!(
            evicted = evicted.len(),
            "cache over its size bound; oldest entries evicted"
        );
        for key in &evicted {
            cache.inner.local.invalidate(key).await;
        }
        // A huge eviction is cheaper to announce as "drop everything local".
        if evicted.len() > 1_000 {
            cache.broadcast(Vec::new(), Vec::new(), true);
        } else {
            cache.broadcast(evicted.clone(), Vec::new(), false);
        }
    }
    Ok(deleted + evicted.len() as u64)
}
