//! Login throttling: too many failed logins for one account, or from one client address,
//! within a sliding window and further attempts are refused with 429 until old failures age out.
//!
//! Counting per account stops password guessing against one user from many addresses; counting
//! per address stops one client from spraying guesses across many accounts. Failures are rows
//! in `login_failures`, so every instance sharing the database sees the same counts.

use std::{net::IpAddr, time::Duration};

use sqlx::PgPool;

/// The limits in force (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_account: i64,
    pub per_address: i64,
    pub window: Duration,
}

/// Whether another attempt is allowed; `Some(wait)` says how long until one is.
pub async fn check(
    pool: &PgPool,
    limits: Limits,
    username: &str,
    addr: IpAddr,
) -> Result<Option<Duration>, sqlx::Error> {
    let window = limits.window.as_secs_f64();
    let row = sqlx::query!(
        r#"
        WITH recent AS (
            SELECT username, client_addr, failed_at FROM login_failures
             WHERE failed_at > now() - make_interval(secs => $3)
               AND (username = lower($1) OR client_addr = $2)
        )
        SELECT
            (SELECT count(*) FROM recent WHERE username = lower($1)) AS "by_account!",
            (SELECT count(*) FROM recent WHERE client_addr = $2) AS "by_address!",
            -- Seconds until the oldest counted failure leaves the window.
            (SELECT extract(epoch FROM min(failed_at) + make_interval(secs => $3) - now())::float8 FROM recent) AS retry_after
        "#,
        username,
        sqlx::types::ipnetwork::IpNetwork::from(addr),
        window,
    )
    .fetch_one(pool)
    .await?;
    let blocked = row.by_account >= limits.per_account || row.by_address >= limits.per_address;
    Ok(blocked.then(|| {
        Duration::from_secs_f64(
            row.retry_after
                .unwrap_or(window)
                .clamp(1.0, window.max(1.0)),
        )
    }))
}

/// Records a failed attempt.
pub async fn record_failure(
    pool: &PgPool,
    username: &str,
    addr: IpAddr,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO login_failures (username, client_addr) VALUES (lower($1), $2)",
        username,
        sqlx::types::ipnetwork::IpNetwork::from(addr),
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets an account's failures after a successful login.
pub async fn clear_account(pool: &PgPool, username: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM login_failures WHERE username = lower($1)",
        username
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes failures older than a day; run periodically by the server.
pub async fn sweep(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query!("DELETE FROM login_failures WHERE failed_at < now() - interval '1 day'")
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}
