//! The audit log of the operations console: every action, who took it and what came of it.

use serde_json::Value;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::web::auth::User;

/// Records that `user` did `action` to `target`.
pub async fn record(
    pool: &PgPool,
    user: &User,
    action: &str,
    target: &str,
    detail: Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO ops_audit (user_id, username, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        user.id,
        user.username,
        action,
        target,
        detail
    )
    .execute(pool)
    .await?;
    tracing::info!(user_id = user.id, action, target, %detail, "operator action");
    Ok(())
}

pub struct Entry {
    pub at: OffsetDateTime,
    pub username: String,
    pub action: String,
    pub target: String,
    pub detail: Value,
}

impl Entry {
    pub fn when(&self) -> String {
        crate::web::templates::ago(self.at)
    }
}

/// The newest `limit` entries.
pub async fn recent(pool: &PgPool, limit: i64) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as!(
        Entry,
        "SELECT at, username, action, target, detail FROM ops_audit ORDER BY at DESC, id DESC LIMIT $1",
        limit
    )
    .fetch_all(pool)
    .await
}
