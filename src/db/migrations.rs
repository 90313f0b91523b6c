//! The SQL migrations in `migrations/`, compiled into the binary.
//!
//! `hearth serve` applies pending ones at start, `hearth migrate` on demand, and
//! `hearth migrate --status` lists them. Migrations are forward-only: a mistake is fixed by a
//! new migration, never by editing one that has shipped (sqlx refuses a changed checksum).

use sqlx::{PgPool, migrate::Migrator};
use time::OffsetDateTime;

/// Every migration in `migrations/`, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// One migration and whether it has been applied to this database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub applied_at: Option<OffsetDateTime>,
}

/// Applies pending migrations. Safe to run from several processes at once: sqlx takes an
/// advisory lock so only one applies them.
pub async fn run(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Every known migration, oldest first, with when it was applied (if it was).
pub async fn status(pool: &PgPool) -> Result<Vec<MigrationStatus>, sqlx::Error> {
    let table_exists =
        sqlx::query_scalar!(r#"SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS "exists!""#)
            .fetch_one(pool)
            .await?;
    let applied = if table_exists {
        sqlx::query!(
            "SELECT version, installed_on FROM _sqlx_migrations WHERE success ORDER BY version"
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| (row.version, row.installed_on))
        .collect()
    } else {
        Vec::new()
    };
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            applied_at: applied
                .iter()
                .find(|(v, _)| *v == m.version)
                .map(|(_, at)| *at),
        })
        .collect())
}

/// How many known migrations this database has not applied.
pub async fn pending(pool: &PgPool) -> Result<usize, sqlx::Error> {
    Ok(status(pool)
        .await?
        .iter()
        .filter(|m| m.applied_at.is_none())
        .count())
}
