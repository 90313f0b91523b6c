//! The application state shared by every handler.

use std::{fs, io, sync::Arc};

use anyhow::Context;
use axum::extract::FromRef;
use axum_extra::extract::cookie::Key;
use sha2::{Digest, Sha512};
use sqlx::PgPool;

use crate::{
    cache::{Cache, CacheConfig},
    channels::{ChannelConfig, ChannelLayer},
    config::{Config, Sections},
    db::{Pipeline, Replicas, migrations::MigrationSet},
    jobs::Schedule,
    web::{hashing::Hasher, templates::NavLink, ws::SocketLimits},
};

/// Cheap to clone: a pool handle and a few `Arc`s.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    /// Connections shared by short reads, with their queries pipelined (see `db::pipeline`).
    pub reads: Pipeline,
    /// The read replicas, for reads that may lag (`web::replicas::LagTolerant`); without
    /// `HEARTH_READ_DATABASE_URL`, the primary alone.
    pub replicas: Replicas,
    pub config: Arc<Config>,
    /// Signs the CSRF and flash cookies.
    pub cookie_key: Key,
    /// This instance's channel layer (WebSockets, server-sent events, presence).
    pub channels: ChannelLayer,
    /// The cache (Postgres shared tier, in-process tier).
    pub cache: Cache,
    /// Open WebSockets per user and per client address, for their limits.
    pub sockets: Arc<SocketLimits>,
    /// Password hashing under this process's bound.
    pub hasher: Hasher,
    /// The apps' settings sections.
    pub sections: Arc<Sections>,
    /// What the application's apps declared (see `application::Plan`).
    pub composed: Arc<Composed>,
}

/// What the state needs of the composed application: worked out once at start.
#[derive(Debug, Clone, Default)]
pub struct Composed {
    /// The platform's and every app's migrations, in order (`/readyz` counts pending ones).
    pub migrations: Vec<MigrationSet>,
    /// Every periodic job, parsed and checked once (`/ops` lists them).
    pub schedules: Vec<Schedule>,
    /// Every job kind, with its args check (schedules added at run time are checked with it).
    pub kinds: crate::jobs::registry::Kinds,
    /// The links of the site's navigation.
    pub nav: Vec<NavLink>,
    /// The hard limit on request bodies.
    pub body_limit: usize,
    /// The static files of the composition and its apps.
    pub assets: super::assets::Assets,
}

impl AppState {
    /// Builds the state, resolving the secret key (see [`secret_key`]) and starting the
    /// channel layer (stop it with `state.channels.shutdown()`) and the read replicas' monitor
    /// (`state.replicas.close()`).
    pub fn new(
        config: Config,
        sections: Sections,
        composed: Composed,
        db: PgPool,
    ) -> anyhow::Result<Self> {
        let secret = secret_key(&config)?;
        let channels = ChannelLayer::start(db.clone(), channel_config(&config));
        let cache = Cache::start(db.clone(), channels.clone(), cache_config(&config));
        // `Key::from` needs 64 bytes; SHA-512 stretches any accepted secret to exactly that.
        let cookie_key = Key::from(&Sha512::digest(secret.as_bytes()));
        // Statements prepared once per connection: a session of its own.
        let reads = match direct_options(&config) {
            Some(direct) => Pipeline::new(
                &direct,
                config.db.direct_database_url.as_deref(),
                config.db.db_pipelines as usize,
                config.db.db_acquire_timeout,
            ),
            None => Pipeline::new(
                &db.connect_options(),
                config.db.database_url.as_deref(),
                config.db.db_pipelines as usize,
                config.db.db_acquire_timeout,
            ),
        };
        let replicas = Replicas::start(&config.db, db.clone())?;
        let hasher = Hasher::from_config(&config);
        // `HEARTH_STATIC_DIR` changes how assets are served and the URLs pages get for them.
        let composed = Composed {
            assets: composed.assets.from_disk(config.http.static_dir.clone()),
            ..composed
        };
        Ok(Self {
            db,
            reads,
            replicas,
            config: Arc::new(config),
            cookie_key,
            channels,
            cache,
            sockets: Arc::default(),
            hasher,
            sections: Arc::new(sections),
            composed: Arc::new(composed),
        })
    }
}

/// The cache's settings from the configuration.
pub fn cache_config(config: &Config) -> CacheConfig {
    CacheConfig {
        prefix: config.cache.cache_prefix.clone(),
        default_timeout: config.cache.cache_timeout,
        local_ttl: config.cache.cache_local_ttl,
        local_max_bytes: config.cache.cache_local_max_bytes,
        max_bytes: config.cache.cache_max_bytes,
        purge_url: config.cache.cache_purge_url.clone(),
        ..CacheConfig::default()
    }
}

/// `HEARTH_DIRECT_DATABASE_URL`'s options, when it is set. `Database::open` has refused an
/// unparseable one already.
pub fn direct_options(config: &Config) -> Option<sqlx::postgres::PgConnectOptions> {
    crate::db::direct_options(&config.db).ok().flatten()
}

/// The channel layer's settings from the configuration.
///
/// The instance's name is random and says nothing of the machine: it starts every channel
/// name, and channel names reach clients (chat and document presence key people by them), so
/// a `<hostname>-<pid>` name would tell every signed-in user the server's host name and
/// process id. Administrators find both beside the name under `/ops/realtime`.
pub fn channel_config(config: &Config) -> ChannelConfig {
    ChannelConfig {
        retention: config.channels.channel_retention,
        send_queue: config.channels.ws_send_queue as usize,
        max_message: config.channels.ws_max_message,
        session: direct_options(config),
        ..ChannelConfig::new(format!("i{:016x}", rand::random::<u64>()))
    }
}

impl FromRef<AppState> for Key {
    fn from_ref(state: &AppState) -> Self {
        state.cookie_key.clone()
    }
}

/// `HEARTH_SECRET_KEY`, or a random key generated once and kept in `<data dir>/secret_key`
/// (mode 0600) so that cookies survive restarts.
pub fn secret_key(config: &Config) -> anyhow::Result<String> {
    if let Some(key) = &config.sessions.secret_key {
        anyhow::ensure!(
            key.len() >= 32,
            "HEARTH_SECRET_KEY must be at least 32 characters long"
        );
        return Ok(key.clone());
    }
    let path = config.db.data_dir.join("secret_key");
    match fs::read_to_string(&path) {
        Ok(key) if key.trim().len() >= 32 => return Ok(key.trim().to_string()),
        Ok(_) => anyhow::bail!(
            "{} holds a key shorter than 32 characters; delete it to generate a new one",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    fs::create_dir_all(&config.db.data_dir)
        .with_context(|| format!("cannot create {}", config.db.data_dir.display()))?;
    let key = hex::encode(rand::random::<[u8; 32]>());
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    io::Write::write_all(&mut file, key.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a new secret key");
    Ok(key)
}
