//! Telling PostgreSQL from a transaction pooler in front of it, at start.
//!
//! A transaction pooler (PgBouncer's `pool_mode = transaction`, Supavisor's transaction port)
//! lends a server connection to a client for one transaction, then to another client. What
//! lives in a *session* is then lost or, worse, shared: a `LISTEN` hears nothing, a session
//! advisory lock stays held on a server connection nobody owns, and statements prepared at the
//! protocol level meet other clients' statements of the same name. sqlx sends each query with
//! parameters as Parse+Describe+Sync, then Bind+Execute+Sync: through PgBouncer 1.18 (Debian
//! bookworm's) the Bind may reach another server connection and run *that* connection's
//! statement with this query's parameters (docs/scaling.md, "Behind a pooler", has the trace).
//!
//! So at start [`check`] probes the URLs ([`probe`]): the one that must give a session
//! (`HEARTH_DIRECT_DATABASE_URL`, else `DATABASE_URL`) must keep a session setting while
//! another client holds the server connection it was set on, and `DATABASE_URL` must keep
//! connections' prepared statements apart. Either failure refuses to start with the setting
//! to change.

use std::time::Duration;

use sqlx::{
    Connection, PgConnection, PgPool, Row,
    postgres::{PgConnectOptions, PgQueryResult},
};

/// How long the probe may take before it is given up (the database may not answer yet).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections that hold a transaction while the probe looks for its first one's server
/// process (PgBouncer lends it to the first or, in a race with its release, the second).
const HOLDERS: usize = 3;

/// A URL that cannot serve as Hearth needs it.
#[derive(Debug, thiserror::Error)]
pub enum PoolerError {
    #[error(
        "DATABASE_URL goes through a transaction pooler (a session does not last from one \
         transaction to the next), and HEARTH_DIRECT_DATABASE_URL is not set: the channel \
         layer's and the job workers' LISTEN, migrations, vacuum's advisory lock and pipelined \
         reads need a session. Set HEARTH_DIRECT_DATABASE_URL to PostgreSQL itself (or to a \
         session-mode pool){}",
        statements_note(.statements_shared)
    )]
    NoDirectUrl { statements_shared: bool },
    #[error(
        "HEARTH_DIRECT_DATABASE_URL goes through a transaction pooler (a session does not last \
         from one transaction to the next): point it at PostgreSQL itself or at a session-mode pool"
    )]
    DirectIsPooled,
    #[error(
        "DATABASE_URL goes through a transaction pooler that does not keep clients' prepared \
         statements apart (PgBouncer before 1.21, or max_prepared_statements = 0): Hearth's \
         queries would meet other connections' statements. Use PgBouncer 1.21 or later with \
         max_prepared_statements = 200 (or more), or a session-mode pool, or PostgreSQL itself"
    )]
    SharedStatements,
}

fn statements_note(shared: &bool) -> &'static str {
    if *shared {
        "; and this pooler does not keep clients' prepared statements apart either, so \
         DATABASE_URL needs PgBouncer 1.21 or later with max_prepared_statements"
    } else {
        ""
    }
}

/// What the probe of one URL found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// A session setting lasted while another connection held a transaction.
    pub session: bool,
    /// Two connections could prepare a statement of the same name.
    pub statements_apart: bool,
}

/// Checks `pool`'s URL, and `direct`'s when it is a pool of its own; without `direct`, the
/// pool's URL must give a session. A probe that cannot connect is logged and passes.
pub async fn check(pool: &PgPool, direct: Option<&PgPool>) -> Result<(), PoolerError> {
    let Some(direct) = direct else {
        return match probe_logged(pool, "DATABASE_URL").await {
            Some(found) if !found.session => Err(PoolerError::NoDirectUrl {
                statements_shared: !found.statements_apart,
            }),
            _ => Ok(()),
        };
    };
    if probe_logged(direct, "HEARTH_DIRECT_DATABASE_URL")
        .await
        .is_some_and(|found| !found.session)
    {
        return Err(PoolerError::DirectIsPooled);
    }
    match probe_logged(pool, "DATABASE_URL").await {
        Some(found) if !found.statements_apart => Err(PoolerError::SharedStatements),
        Some(found) if !found.session => {
            tracing::info!(
                "DATABASE_URL goes through a transaction pooler; sessions use HEARTH_DIRECT_DATABASE_URL"
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn probe_logged(pool: &PgPool, setting: &str) -> Option<Probe> {
    let options = pool.connect_options();
    match tokio::time::timeout(PROBE_TIMEOUT, probe(&options)).await {
        Ok(Ok(found)) => Some(found),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot check whether {setting} goes through a pooler; going on");
            None
        }
        Err(_) => {
            tracing::warn!(
                "checking whether {setting} goes through a pooler took over {PROBE_TIMEOUT:?}; going on"
            );
            None
        }
    }
}

/// Probes one URL:
///
/// 1. `first` sets a session setting and notes its server process (a plain query: no
///    prepared statement), then prepares a statement under sqlx's first name, `sqlx_s_1`.
/// 2. Other connections open a transaction each and keep it open, until one of them is on
///    `first`'s server process: a transaction pooler lends `first`'s idle server connection to
///    another client (PgBouncer the most recently released one, so the first or second
///    holder). Directly on PostgreSQL, or through a session-mode pool, none is: after
///    [`HOLDERS`] they stop.
/// 3. Each holder prepares its first statement, also `sqlx_s_1`. On `first`'s server
///    connection the name is taken (42P05): the pooler does not keep clients' statements
///    apart. (So is `first`'s, in step 1, on a server connection where an earlier client left
///    one.)
/// 4. `first` reads its setting back. Through a transaction pooler its server connection is
///    held by another client now, so it gets another one, without the setting.
pub async fn probe(options: &PgConnectOptions) -> Result<Probe, sqlx::Error> {
    let mut first = PgConnection::connect_with(options).await?;
    let process: i32 = sqlx::raw_sql(
        "SELECT pg_backend_pid() FROM (SELECT set_config('hearth.pooler_probe', 'on', false)) s",
    )
    .fetch_one(&mut first)
    .await?
    .try_get(0)?;
    let mut collided = collides(
        sqlx::query("SELECT $1::int4")
            .bind(1)
            .execute(&mut first)
            .await,
    )?;
    let mut holders = Vec::with_capacity(HOLDERS);
    while holders.len() < HOLDERS {
        let mut holder = PgConnection::connect_with(options).await?;
        let held: i32 = sqlx::raw_sql("BEGIN; SELECT pg_backend_pid()")
            .fetch_one(&mut holder)
            .await?
            .try_get(0)?;
        collided |= collides(
            sqlx::query("SELECT $1::int4")
                .bind(1)
                .execute(&mut holder)
                .await,
        )?;
        holders.push(holder);
        if held == process {
            break;
        }
    }
    let setting: Option<String> =
        sqlx::raw_sql("SELECT current_setting('hearth.pooler_probe', true)")
            .fetch_one(&mut first)
            .await?
            .try_get(0)?;
    for mut holder in holders {
        sqlx::raw_sql("ROLLBACK").execute(&mut holder).await?;
        holder.close().await?;
    }
    first.close().await?;
    Ok(Probe {
        session: setting.as_deref() == Some("on"),
        statements_apart: !collided,
    })
}

/// Whether a statement failed because its name was taken (42P05 `duplicate_prepared_statement`).
fn collides(result: Result<PgQueryResult, sqlx::Error>) -> Result<bool, sqlx::Error> {
    match result {
        Ok(_) => Ok(false),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P05") => Ok(true),
        Err(e) => Err(e),
    }
}
