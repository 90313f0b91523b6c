//! The database: one connection pool, backed by the embedded cluster or by `DATABASE_URL`.
//!
//! [`Database::open`] decides where the data lives. With a `DATABASE_URL` it connects there;
//! without one it starts the [`embedded`] cluster and creates the `hearth` database in it. The
//! pool is created lazily so that a server that does not answer yet never stops `hearth serve`
//! from starting: requests that need the database fail with 503 until it answers, and
//! `/readyz` says why.
//!
//! What needs a session of its own (LISTEN, session advisory locks, statements prepared once
//! per connection) goes over [`Database::direct`]: `HEARTH_DIRECT_DATABASE_URL` when
//! `DATABASE_URL` goes through a transaction pooler, else the pool itself ([`pooler`]).
//!
//! Either URL may list several hosts (`postgres://u@db1,db2/hearth`): the pools then follow
//! whichever is the read-write primary, and no pool ever uses a standby ([`failover`]).

pub mod embedded;
pub mod failover;
pub mod lost;
pub mod migrations;
pub mod pipeline;
pub mod pooler;
pub mod replicas;
mod settings;

pub use pipeline::{Pipeline, PipelineError};
pub use replicas::{Lsn, Replicas};
pub use settings::DbSettings;

use std::{str::FromStr, time::Duration};

use sqlx::{
    Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions, PgSslMode},
};

use embedded::{EmbeddedOptions, EmbeddedPostgres};

/// The database the application uses inside the embedded cluster.
pub const EMBEDDED_DATABASE: &str = "hearth";

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("HEARTH_DIRECT_DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    InvalidDirectUrl(#[source] sqlx::Error),
    #[error(transparent)]
    Embedded(#[from] embedded::EmbeddedError),
    #[error("cannot prepare the `{EMBEDDED_DATABASE}` database in the embedded cluster: {0}")]
    Prepare(#[source] sqlx::Error),
    #[error("the embedded cluster's start-up task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The settings whose URLs are parsed here, for messages.
const DATABASE_URL: &str = "DATABASE_URL";
const DIRECT_URL: &str = "HEARTH_DIRECT_DATABASE_URL";

/// The pool, and the embedded cluster behind it when there is one.
#[derive(Debug)]
pub struct Database {
    pub pool: PgPool,
    /// For work that needs a session (migrations): a small pool on
    /// `HEARTH_DIRECT_DATABASE_URL`, or `pool` itself when that is not set.
    pub direct: PgPool,
    /// Whether `DATABASE_URL` was given (with the embedded cluster nothing stands between).
    external: bool,
    /// Whether `direct` is a pool of its own (`HEARTH_DIRECT_DATABASE_URL` is set).
    separate_direct: bool,
    embedded: Option<EmbeddedPostgres>,
    /// The watchers of URLs with several hosts (stopped with the database).
    failover: Vec<failover::Watch>,
}

impl Database {
    /// Opens the database the configuration names, starting the embedded cluster if needed.
    ///
    /// With `attach`, an embedded cluster already run by another Hearth process in the same
    /// data dir is used instead of failing (for admin commands next to a running server).
    pub async fn open(config: &DbSettings, attach: bool) -> Result<Self, OpenError> {
        let mut watches = Vec::new();
        let (options, embedded) = match &config.database_url {
            Some(url) => {
                let hosts = url_hosts(url)?;
                let first = hosts[0].clone();
                watches.extend(failover::watch(DATABASE_URL, hosts));
                (first, None)
            }
            None => {
                let data_dir = config.data_dir.clone();
                let started = tokio::task::spawn_blocking(move || {
                    EmbeddedPostgres::start(&data_dir, &EmbeddedOptions::default())
                })
                .await?;
                let (options, cluster) = match started {
                    Ok(cluster) => (cluster.connect_options(), Some(cluster)),
                    Err(embedded::EmbeddedError::Locked(dir)) if attach => {
                        match embedded::attach(&dir) {
                            Some(options) => {
                                tracing::info!(data_dir = %dir.display(), "using the embedded cluster of the running hearth server");
                                (options, None)
                            }
                            None => return Err(embedded::EmbeddedError::Locked(dir).into()),
                        }
                    }
                    Err(e) => return Err(e.into()),
                };
                create_database_if_missing(&options, EMBEDDED_DATABASE)
                    .await
                    .map_err(OpenError::Prepare)?;
                (options.database(EMBEDDED_DATABASE), cluster)
            }
        };
        let pool = failover::primary_only(pool_options(config), DATABASE_URL)
            .connect_lazy_with(options.application_name("hearth"));
        failover::follow(&pool);
        let direct_hosts = direct_hosts(config)?;
        let separate_direct = direct_hosts.is_some();
        let direct = match direct_hosts {
            // Migrations and the odd vacuum: one connection at a time, two at most.
            Some(hosts) => {
                let direct = failover::primary_only(pool_options(config), DIRECT_URL)
                    .max_connections(2)
                    .min_connections(0)
                    .connect_lazy_with(hosts[0].clone());
                watches.extend(failover::watch(DIRECT_URL, hosts));
                failover::follow(&direct);
                direct
            }
            None => pool.clone(),
        };
        Ok(Self {
            pool,
            direct,
            external: config.database_url.is_some(),
            separate_direct,
            embedded,
            failover: watches,
        })
    }

    /// Refuses a transaction pooler where Hearth needs a session, or one that would mix up
    /// its prepared statements ([`pooler::check`]). A database that does not answer yet
    /// passes: `serve` starts anyway, as it does for migrations.
    pub async fn check_poolers(&self) -> Result<(), pooler::PoolerError> {
        if !self.external {
            return Ok(());
        }
        pooler::check(&self.pool, self.separate_direct.then_some(&self.direct)).await
    }

    /// Closes the pool, then stops the embedded cluster (if any) and waits for it to exit.
    pub async fn close(mut self) -> Result<(), embedded::EmbeddedError> {
        self.failover.clear();
        self.pool.close().await;
        self.direct.close().await;
        match self.embedded {
            Some(cluster) => tokio::task::spawn_blocking(move || cluster.stop())
                .await
                .unwrap_or_else(|join| {
                    Err(embedded::EmbeddedError::Io {
                        context: "the shutdown task of embedded PostgreSQL failed".into(),
                        source: std::io::Error::other(join),
                    })
                }),
            None => Ok(()),
        }
    }
}

/// Connection options for `DATABASE_URL`. A server on this machine's loopback address gets no
/// TLS unless the URL (or `PGSSLMODE`) asks for it: encrypting traffic that never leaves the
/// host protects nothing, and under libpq's and sqlx's default (`prefer`) rustls sat under 29 %
/// of the server's samples in the W1 profile (`bench/profiles/README.md`). Any other host keeps
/// sqlx's default.
fn url_options(url: &str) -> Result<PgConnectOptions, OpenError> {
    let options = PgConnectOptions::from_str(url).map_err(OpenError::InvalidUrl)?;
    let chosen = std::env::var_os("PGSSLMODE").is_some()
        || url::Url::parse(url).is_ok_and(|parsed| {
            parsed
                .query_pairs()
                .any(|(key, _)| key == "sslmode" || key == "ssl-mode")
        });
    let loopback = matches!(
        options.get_host(),
        "localhost" | "127.0.0.1" | "::1" | "[::1]"
    );
    Ok(if loopback && !chosen {
        options.ssl_mode(PgSslMode::Disable)
    } else {
        options
    })
}

/// Connection options for each host a URL lists, in its order (one for a plain URL).
fn url_hosts(url: &str) -> Result<Vec<PgConnectOptions>, OpenError> {
    failover::split(url)
        .map_err(|e| OpenError::InvalidUrl(e.into()))?
        .iter()
        .map(|url| url_options(url))
        .collect()
}

/// Connection options for `HEARTH_DIRECT_DATABASE_URL`, when it is set (its first host, when
/// it lists several: pools built from them follow the primary, see [`failover::follow`]).
pub fn direct_options(config: &DbSettings) -> Result<Option<PgConnectOptions>, OpenError> {
    Ok(direct_hosts(config)?.map(|mut hosts| hosts.swap_remove(0)))
}

/// [`direct_options`] for every host of the URL.
fn direct_hosts(config: &DbSettings) -> Result<Option<Vec<PgConnectOptions>>, OpenError> {
    let Some(url) = &config.direct_database_url else {
        return Ok(None);
    };
    let hosts = url_hosts(url).map_err(|e| match e {
        OpenError::InvalidUrl(e) => OpenError::InvalidDirectUrl(e),
        other => other,
    })?;
    // The pool's connections are all "hearth"; a direct URL may name its own (to tell the
    // sessions apart in `pg_stat_activity`).
    let named = |options: PgConnectOptions| match options.get_application_name() {
        Some(_) => options,
        None => options.application_name("hearth"),
    };
    Ok(Some(hosts.into_iter().map(named).collect()))
}

/// Pool settings from the configuration: a maximum, a warm minimum, an acquire timeout (a
/// request that cannot get a connection fails fast) and an idle lifetime. Pools that must reach
/// the primary add [`failover::primary_only`] (read replicas' pools must not).
pub fn pool_options(config: &DbSettings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        .min_connections(config.db_min_connections.min(config.db_max_connections))
        .acquire_timeout(config.db_acquire_timeout)
        .idle_timeout(config.db_idle_timeout)
        // Recycle connections now and then so server-side memory does not creep.
        .max_lifetime(Duration::from_secs(30 * 60))
        // No ping before every acquire: it costs a round trip on every query (two on a job's
        // path from enqueue to pickup). A connection broken by a server restart is found on
        // its next use instead: that query fails (a 503, or a job attempt that retries), and
        // the error makes the pool ping the connections that were idle at that moment before
        // lending them (`lost::check_idle`), so the other dead ones are replaced without
        // failing a request each.
        .test_before_acquire(false)
        .before_acquire(lost::check_idle)
}

/// `CREATE DATABASE name` unless it exists; `name` must be a plain identifier (`[A-Za-z0-9_]+`).
pub async fn create_database_if_missing(
    maintenance: &PgConnectOptions,
    name: &str,
) -> Result<(), sqlx::Error> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(sqlx::Error::Configuration(
            format!("{name:?} is not a plain database name").into(),
        ));
    }
    let mut conn = PgConnection::connect_with(maintenance).await?;
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS "exists!""#,
        name
    )
    .fetch_one(&mut conn)
    .await?;
    if !exists {
        // Identifiers cannot be bound as parameters; `name` is a checked plain identifier.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_skip_tls_unless_they_ask_for_it() {
        let mode = |url: &str| url_options(url).unwrap().get_ssl_mode();
        if std::env::var_os("PGSSLMODE").is_some() {
            return;
        }
        for url in [
            "postgres://u@127.0.0.1:5432/db",
            "postgres://u@localhost/db",
            "postgres://u@[::1]/db",
        ] {
            assert!(matches!(mode(url), PgSslMode::Disable), "{url}");
        }
        assert!(matches!(
            mode("postgres://u@127.0.0.1/db?sslmode=require"),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgres://u@db.internal/db"),
            PgSslMode::Prefer
        ));
    }
}
