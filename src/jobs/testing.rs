//! Helpers for tests of code that enqueues jobs — what Celery's eager mode and Oban's testing
//! module give: check what was enqueued, run a job inline, drain a queue.
//!
//! ```text
//! signup(&app, "ada").await;
//! let id = testing::assert_enqueued(&pool, "send_welcome", json!({"user": "ada"})).await;
//! testing::drain(&pool, &registry, "mail").await?;
//! assert_eq!(control::status(&pool, id).await?.unwrap().state, "completed");
//! ```

use sqlx::PgPool;

use super::{QueueName, Registry, worker};

/// Ids of waiting jobs of `kind` whose args contain `args` (JSON containment: `{}` matches all).
pub async fn enqueued(
    pool: &PgPool,
    kind: &str,
    args: serde_json::Value,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT id FROM jobs WHERE kind = $1 AND args @> $2 AND state = 'available' ORDER BY id",
        kind,
        args
    )
    .fetch_all(pool)
    .await
}

/// Panics (failing the test) unless exactly one such job waits; returns its id.
pub async fn assert_enqueued(pool: &PgPool, kind: &str, args: serde_json::Value) -> i64 {
    let ids = enqueued(pool, kind, args.clone())
        .await
        .expect("query enqueued jobs");
    assert_eq!(
        ids.len(),
        1,
        "expected one waiting `{kind}` job with args containing {args}, found {}",
        ids.len()
    );
    ids[0]
}

/// Runs the next due job of `queue` inline; `None` if nothing is due.
pub async fn run_one(
    pool: &PgPool,
    registry: &Registry,
    queue: &str,
) -> Result<Option<i64>, sqlx::Error> {
    let queue = QueueName::parse(queue).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    worker::run_one(pool, registry, &queue).await
}

/// Runs due jobs of `queue` inline until none is due; returns how many ran. Retries wait for
/// their backoff, so they are not run again here.
pub async fn drain(pool: &PgPool, registry: &Registry, queue: &str) -> Result<usize, sqlx::Error> {
    let mut ran = 0;
    while run_one(pool, registry, queue).await?.is_some() {
        ran += 1;
    }
    Ok(ran)
}
