//! Mail rate limits: budgets per hour-long window, shared by every instance.
//!
//! A budget is a row of `mail_quotas` (scope, window); [`take`] spends one unit with a single
//! `INSERT … ON CONFLICT DO UPDATE … WHERE used < limit`, so two senders can never both spend
//! the last unit (the row lock orders them), and no instance counts before it inserts.
//! Windows are fixed hours: across a window boundary a scope may spend up to twice its limit
//! within one hour, which these limits tolerate.

use sqlx::PgExecutor;

/// Mails one address may receive per hour, whatever sends them.
pub const PER_RECIPIENT_PER_HOUR: i32 = 10;

/// Spends one unit of `scope`'s budget for this hour; `false` when `limit` units are spent.
pub async fn take<'e>(
    db: impl PgExecutor<'e>,
    scope: &str,
    limit: i32,
) -> Result<bool, sqlx::Error> {
    let used = sqlx::query_scalar!(
        "INSERT INTO mail_quotas (scope, window_start, used)
         VALUES ($1, date_trunc('hour', now()), 1)
         ON CONFLICT (scope, window_start)
             DO UPDATE SET used = mail_quotas.used + 1 WHERE mail_quotas.used < $2
         RETURNING used",
        scope,
        limit
    )
    .fetch_optional(db)
    .await?;
    Ok(used.is_some_and(|used| used <= limit))
}

/// Deletes the windows that ended over an hour ago; run periodically by the server.
pub async fn sweep<'e>(db: impl PgExecutor<'e>) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query!("DELETE FROM mail_quotas WHERE window_start < now() - interval '2 hours'")
            .execute(db)
            .await?;
    Ok(done.rows_affected())
}
