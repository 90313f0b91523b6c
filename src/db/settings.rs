//! The database's own settings section: where the data lives and the pool. `db` reads only
//! these (the house rules), so a program can open the database without the rest of the
//! configuration.

use std::{path::PathBuf, time::Duration};

use clap::Args;

/// Where the data lives and the connection pool.
#[derive(Debug, Clone, Args)]
pub struct DbSettings {
    /// PostgreSQL server to use. Without it, Hearth runs a private embedded cluster in
    /// `<data dir>/postgres`.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// PostgreSQL itself (or a session-mode pool), for what needs a session of its own: the
    /// channel layer's and the job workers' LISTEN connections, migrations, vacuum's advisory
    /// lock and pipelined reads. Set it when `DATABASE_URL` goes through a transaction pooler;
    /// without it, those use `DATABASE_URL` too.
    #[arg(
        long,
        env = "HEARTH_DIRECT_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub direct_database_url: Option<String>,

    /// PostgreSQL hot standbys for reads that may lag (public pages and lists, `/ops`
    /// reports), separated by whitespace (a URL may hold commas: several hosts). Each one in
    /// recovery and within `read_max_lag` of the primary takes such reads; one that is down,
    /// behind or not a standby is skipped, and the reads go to `DATABASE_URL`.
    #[arg(
        long,
        env = "HEARTH_READ_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub read_database_url: Option<String>,

    /// Most a read replica may lag behind the primary and still take reads.
    #[arg(long, env = "HEARTH_READ_MAX_LAG", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub read_max_lag: Duration,

    /// How often each read replica's state and lag are checked.
    #[arg(long, env = "HEARTH_READ_CHECK_INTERVAL", default_value = "1s", value_parser = parse_interval, global = true)]
    pub read_check_interval: Duration,

    /// Folder for Hearth's own files: the embedded cluster, its log, the generated secret key.
    #[arg(
        long,
        env = "HEARTH_DATA_DIR",
        default_value = "hearth-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Most database connections this process opens.
    #[arg(
        long,
        env = "HEARTH_DB_MAX_CONNECTIONS",
        default_value_t = 10,
        global = true
    )]
    pub db_max_connections: u32,

    /// Connections kept open even when idle, so the first requests after a quiet spell are fast.
    #[arg(
        long,
        env = "HEARTH_DB_MIN_CONNECTIONS",
        default_value_t = 1,
        global = true
    )]
    pub db_min_connections: u32,

    /// How long a request waits for a free connection before it fails with 503.
    #[arg(long, env = "HEARTH_DB_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration, global = true)]
    pub db_acquire_timeout: Duration,

    /// How long an idle connection above the minimum is kept before it is closed.
    #[arg(long, env = "HEARTH_DB_IDLE_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration, global = true)]
    pub db_idle_timeout: Duration,

    /// Connections shared by pipelined reads (`db::Pipeline`), on top of the pool's. Every
    /// pipelined query waits behind the ones written before it on its connection, so a second
    /// one spreads the queue when some reads are slow.
    #[arg(
        long,
        env = "HEARTH_DB_PIPELINES",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=64),
        global = true
    )]
    pub db_pipelines: u32,
}

impl DbSettings {
    /// The URLs of `HEARTH_READ_DATABASE_URL`, split at whitespace.
    pub fn read_urls(&self) -> Vec<&str> {
        self.read_database_url
            .as_deref()
            .map(|urls| urls.split_whitespace().collect())
            .unwrap_or_default()
    }
}

/// A check interval: a duration of at least 10 ms (zero would spin).
fn parse_interval(value: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if interval < Duration::from_millis(10) {
        return Err("the check interval must be at least 10ms".into());
    }
    Ok(interval)
}
