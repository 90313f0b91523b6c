//! SQL migrations per app: the platform's and each app's own ordered files, applied in the
//! order of the composition.
//!
//! An app ships its files in a folder of its own (`migrations/<app>/NNNN_name.sql`) and hands
//! them over as a [`MigrationSet`] built with `sqlx::migrate!("migrations/<app>")`, so they are
//! compiled into the binary. A migration is known by its app and its version: two apps number
//! their files independently, as Django's apps do, so adding an app to a database that has run
//! for years, or taking one out, never disturbs the others. What was applied is recorded in
//! `hearth_migrations` with the file's checksum; a file changed after it was applied stops the
//! run (migrations are forward-only: a mistake is fixed by a new file).
//!
//! Databases migrated before the split (one numbered series in sqlx's `_sqlx_migrations`) are
//! adopted on the first run: every version they applied is recorded against the app that now
//! owns its file (see [`LEGACY`]), and nothing is run twice.

use std::time::Instant;

use sqlx::{Connection, PgConnection, PgPool, migrate::Migrator};
use time::OffsetDateTime;

/// The platform's own migrations (users and sessions, jobs, channels, cache): always first.
pub static PLATFORM: MigrationSet = MigrationSet {
    app: "platform",
    migrator: &PLATFORM_MIGRATOR,
};

static PLATFORM_MIGRATOR: Migrator = sqlx::migrate!("migrations/platform");

/// One app's migrations, embedded at compile time.
#[derive(Debug, Clone, Copy)]
pub struct MigrationSet {
    /// The app they belong to; with a file's version, what `hearth_migrations` records.
    pub app: &'static str,
    /// Built with `sqlx::migrate!("migrations/<app>")`.
    pub migrator: &'static Migrator,
}

/// Where each version of the single series used before issue #29 lives now: the app whose
/// folder holds its file (versions 9 and 18 were split between two apps). Only databases migrated
/// before the split have these; the names are data, not imports of the apps.
const LEGACY: &[(i64, &str)] = &[
    (1, "platform"),
    (2, "platform"),
    (3, "platform"),
    (4, "platform"),
    (5, "platform"),
    (6, "platform"),
    (7, "platform"),
    (8, "bench"),
    (9, "accounts"),
    (9, "publishing"),
    (10, "mail"),
    (11, "notifications"),
    (12, "chat"),
    (13, "uploads"),
    (14, "ops"),
    (15, "documents"),
    (16, "platform"),
    (17, "accounts"),
    (18, "accounts"),
    (18, "mail"),
    (20, "platform"),
];

/// Why migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(
        "migration {app}/{version} ({description}) was changed after it was applied; \
         migrations are forward-only: restore the file and fix it in a new one"
    )]
    Changed {
        app: String,
        version: i64,
        description: String,
    },
    #[error("migration {app}/{version} ({description}) failed: {source}")]
    Failed {
        app: String,
        version: i64,
        description: String,
        #[source]
        source: sqlx::Error,
    },
}

impl MigrateError {
    /// Whether the database could not be reached (as opposed to a migration being wrong).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Database(
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::PoolClosed
            )
        )
    }
}

/// One migration and whether it has been applied to this database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub app: String,
    pub version: i64,
    pub description: String,
    pub applied_at: Option<OffsetDateTime>,
    /// Applied to this database, but no app of this program ships it (an app was taken out).
    pub orphan: bool,
}

/// Any number, as long as no other part of the program takes the same advisory lock.
const LOCK_KEY: i64 = 0x4845_4152_5448_4d47; // "HEARTHMG"

/// Applies the pending migrations of `sets`, in order. Safe to run from several processes at
/// once: one holds an advisory lock while the others wait for it, then find nothing to do.
pub async fn run(pool: &PgPool, sets: &[MigrationSet]) -> Result<(), MigrateError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await?;
    let outcome = run_locked(&mut conn, sets).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await;
    outcome?;
    unlocked?;
    Ok(())
}

async fn run_locked(conn: &mut PgConnection, sets: &[MigrationSet]) -> Result<(), MigrateError> {
    bootstrap(conn).await?;
    for set in sets {
        let applied = applied(conn, set.app).await?;
        for migration in set.migrator.iter() {
            if !migration.migration_type.is_up_migration() {
                continue;
            }
            match applied.iter().find(|a| a.version == migration.version) {
                Some(row) => check_or_record_checksum(conn, set, migration, row).await?,
                None => apply(conn, set, migration).await?,
            }
        }
    }
    Ok(())
}

/// Creates the table on first use and, on a database migrated before the split, records what
/// its `_sqlx_migrations` says was applied. Both in one transaction, so a crash in between
/// leaves nothing half-adopted.
async fn bootstrap(conn: &mut PgConnection) -> Result<(), MigrateError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('hearth_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if exists {
        return Ok(());
    }
    let mut tx = conn.begin().await?;
    sqlx::raw_sql(
        "CREATE TABLE hearth_migrations (
            app          text        NOT NULL,
            version      bigint      NOT NULL,
            description  text        NOT NULL,
            -- SHA-384 of the file as applied; NULL for a version adopted from
            -- _sqlx_migrations, until a run with its app present records it.
            checksum     bytea,
            installed_on timestamptz NOT NULL DEFAULT now(),
            execution_ms bigint      NOT NULL DEFAULT 0,
            PRIMARY KEY (app, version)
        )",
    )
    .execute(&mut *tx)
    .await?;
    let legacy: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *tx)
        .await?;
    if legacy {
        let (versions, apps): (Vec<i64>, Vec<&str>) = LEGACY.iter().copied().unzip();
        let adopted = sqlx::query(
            "INSERT INTO hearth_migrations (app, version, description, installed_on)
             SELECT owner.app, m.version, m.description, m.installed_on
               FROM _sqlx_migrations m
               JOIN unnest($1::bigint[], $2::text[]) AS owner (version, app)
                 ON owner.version = m.version
              WHERE m.success",
        )
        .bind(&versions)
        .bind(&apps)
        .execute(&mut *tx)
        .await?;
        tracing::info!(
            migrations = adopted.rows_affected(),
            "adopted the migrations recorded by sqlx before they were split per app"
        );
    }
    tx.commit().await?;
    Ok(())
}

struct Applied {
    version: i64,
    checksum: Option<Vec<u8>>,
}

async fn applied(conn: &mut PgConnection, app: &str) -> Result<Vec<Applied>, sqlx::Error> {
    let rows: Vec<(i64, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT version, checksum FROM hearth_migrations WHERE app = $1")
            .bind(app)
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(version, checksum)| Applied { version, checksum })
        .collect())
}

async fn check_or_record_checksum(
    conn: &mut PgConnection,
    set: &MigrationSet,
    migration: &sqlx::migrate::Migration,
    row: &Applied,
) -> Result<(), MigrateError> {
    match &row.checksum {
        Some(checksum) if checksum.as_slice() == &*migration.checksum => Ok(()),
        Some(_) => Err(MigrateError::Changed {
            app: set.app.into(),
            version: migration.version,
            description: migration.description.to_string(),
        }),
        None => {
            sqlx::query(
                "UPDATE hearth_migrations SET checksum = $3, description = $4
                  WHERE app = $1 AND version = $2 AND checksum IS NULL",
            )
            .bind(set.app)
            .bind(migration.version)
            .bind(&*migration.checksum)
            .bind(&*migration.description)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
    }
}

/// Runs one file and records it, in one transaction unless the file asks for none
/// (`-- no-transaction`, for `CREATE INDEX CONCURRENTLY`).
async fn apply(
    conn: &mut PgConnection,
    set: &MigrationSet,
    migration: &sqlx::migrate::Migration,
) -> Result<(), MigrateError> {
    let failed = |source| MigrateError::Failed {
        app: set.app.into(),
        version: migration.version,
        description: migration.description.to_string(),
        source,
    };
    let started = Instant::now();
    let record = sqlx::query(
        "INSERT INTO hearth_migrations (app, version, description, checksum, execution_ms)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(set.app)
    .bind(migration.version)
    .bind(&*migration.description);
    if migration.no_tx {
        sqlx::raw_sql(migration.sql.clone())
            .execute(&mut *conn)
            .await
            .map_err(failed)?;
        record
            .bind(&*migration.checksum)
            .bind(elapsed_ms(started))
            .execute(&mut *conn)
            .await?;
    } else {
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(migration.sql.clone())
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        record
            .bind(&*migration.checksum)
            .bind(elapsed_ms(started))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    tracing::info!(app = set.app, version = migration.version, description = %migration.description, "migration applied");
    Ok(())
}

fn elapsed_ms(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// Every migration of `sets` in the order they run, with when it was applied, followed by
/// those this database applied for apps (or files) the program no longer has.
pub async fn status(
    pool: &PgPool,
    sets: &[MigrationSet],
) -> Result<Vec<MigrationStatus>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('hearth_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let mut applied: Vec<(String, i64, String, OffsetDateTime)> = if exists {
        sqlx::query_as(
            "SELECT app, version, description, installed_on FROM hearth_migrations
              ORDER BY installed_on, app, version",
        )
        .fetch_all(pool)
        .await?
    } else {
        Vec::new()
    };
    let mut status = Vec::new();
    for set in sets {
        for m in set.migrator.iter() {
            if !m.migration_type.is_up_migration() {
                continue;
            }
            let at = applied
                .iter()
                .position(|(app, version, ..)| app == set.app && *version == m.version)
                .map(|i| applied.remove(i).3);
            status.push(MigrationStatus {
                app: set.app.into(),
                version: m.version,
                description: m.description.to_string(),
                applied_at: at,
                orphan: false,
            });
        }
    }
    status.extend(
        applied
            .into_iter()
            .map(|(app, version, description, at)| MigrationStatus {
                app,
                version,
                description,
                applied_at: Some(at),
                orphan: true,
            }),
    );
    Ok(status)
}

/// How many migrations of `sets` this database has not applied.
pub async fn pending(pool: &PgPool, sets: &[MigrationSet]) -> Result<usize, sqlx::Error> {
    Ok(status(pool, sets)
        .await?
        .iter()
        .filter(|m| m.applied_at.is_none())
        .count())
}
