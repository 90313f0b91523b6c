//! The one configuration type, read from command-line flags and environment variables.
//!
//! Every setting has a flag and an environment variable (`--bind` / `HEARTH_BIND`, ...), so the
//! same binary is configured the same way in a terminal, a systemd unit or a container. The
//! [`Display`](std::fmt::Display) impl prints the effective settings at start-up with secrets
//! masked.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

/// Effective settings of a `hearth` process.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub db: crate::db::DbSettings,

    #[command(flatten)]
    pub http: HttpSettings,

    #[command(flatten)]
    pub sessions: SessionSettings,

    #[command(flatten)]
    pub jobs: JobSettings,

    #[command(flatten)]
    pub channels: ChannelSettings,

    #[command(flatten)]
    pub cache: CacheSettings,
}

/// The HTTP server: address, TLS, timeouts, limits, static files, logs.
#[derive(Debug, Clone, Args)]
pub struct HttpSettings {
    /// Address the web server listens on.
    #[arg(
        long,
        env = "HEARTH_BIND",
        default_value = "127.0.0.1:8000",
        global = true
    )]
    pub bind: SocketAddr,

    /// Longest a request may take before it is answered with 408.
    #[arg(long, env = "HEARTH_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub request_timeout: Duration,

    /// Longest a client may take to send a request's headers, and longest a kept-alive
    /// connection may stay idle between requests, before it is closed; 0 turns it off. Without
    /// it a client sending nothing, or a byte now and then, holds a connection forever.
    #[arg(long, env = "HEARTH_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub header_read_timeout: Duration,

    /// PEM file with the certificate chain to serve HTTPS with (HTTP/2 and HTTP/1.1 through
    /// ALPN); needs `tls_key`. Without both, plain HTTP (HTTP/1.1 and h2c). Read again on SIGHUP.
    #[arg(long, env = "HEARTH_TLS_CERT", requires = "tls_key", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of `tls_cert`.
    #[arg(long, env = "HEARTH_TLS_KEY", requires = "tls_cert", global = true)]
    pub tls_key: Option<PathBuf>,

    /// Largest request body accepted, in bytes (413 above it).
    #[arg(long, env = "HEARTH_BODY_LIMIT", default_value_t = 2 * 1024 * 1024, global = true)]
    pub body_limit: usize,

    /// On SIGINT/SIGTERM, how long in-flight requests get to finish.
    #[arg(long, env = "HEARTH_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_grace: Duration,

    /// Serve `/static` from this folder instead of the files compiled into the binary (to edit
    /// CSS or scripts without rebuilding).
    #[arg(long, env = "HEARTH_STATIC_DIR", global = true)]
    pub static_dir: Option<PathBuf>,

    /// The site's public address (`https://hearth.example.com`), for links in mail. Without
    /// it, `http://<bind address>`.
    #[arg(long, env = "HEARTH_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    /// Bearer token that lets scrapers read `/metrics` (`Authorization: Bearer <token>`);
    /// signed-in administrators can read it without one.
    #[arg(long, env = "HEARTH_METRICS_TOKEN", global = true)]
    pub metrics_token: Option<String>,

    /// Write logs as JSON lines instead of text.
    #[arg(long, env = "HEARTH_LOG_JSON", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue, global = true)]
    pub log_json: bool,
}

/// Signed cookies, sessions and password hashing.
#[derive(Debug, Clone, Args)]
pub struct SessionSettings {
    /// Key that signs cookies. Without it, a random key is generated once and kept in
    /// `<data dir>/secret_key`.
    #[arg(long, env = "HEARTH_SECRET_KEY", global = true, hide_env_values = true)]
    pub secret_key: Option<String>,

    /// How long a login lasts.
    #[arg(long, env = "HEARTH_SESSION_TTL", default_value = "14days", value_parser = humantime::parse_duration, global = true)]
    pub session_ttl: Duration,

    /// Mark cookies `Secure` (set this when Hearth is served over https).
    #[arg(long, env = "HEARTH_SECURE_COOKIES", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue, global = true)]
    pub secure_cookies: bool,

    /// Password hashes (argon2, about 19 MiB of memory each) this process computes at once, for
    /// logins, sign-ups and password changes together.
    #[arg(long, env = "HEARTH_PASSWORD_HASH_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024), global = true)]
    pub password_hash_concurrency: u32,

    /// Requests that may wait for a password hash beyond those computing; one more is refused
    /// at once with 503 and `Retry-After`.
    #[arg(long, env = "HEARTH_PASSWORD_HASH_QUEUE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(0..=65536), global = true)]
    pub password_hash_queue: u32,
}

/// The job workers of this process.
#[derive(Debug, Clone, Args)]
pub struct JobSettings {
    /// Job queues this process works, with how many jobs of each run at once.
    #[arg(long, env = "HEARTH_QUEUES", default_value = "default:10,mail:2", value_parser = parse_queue_spec, global = true)]
    pub queues: QueueSpec,

    /// How often idle job workers look for due jobs without being notified.
    #[arg(long, env = "HEARTH_JOB_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration, global = true)]
    pub job_poll_interval: Duration,

    /// Database connections of the job workers in `serve`, apart from the requests' pool: a
    /// burst of requests never stops the queue, and a burst of jobs never makes requests wait.
    #[arg(
        long,
        env = "HEARTH_JOB_DB_CONNECTIONS",
        default_value_t = 10,
        global = true
    )]
    pub job_db_connections: u32,

    /// How long a running job's lease lasts without a heartbeat; a job of a dead worker runs
    /// again after this.
    #[arg(long, env = "HEARTH_JOB_LEASE", default_value = "15s", value_parser = humantime::parse_duration, global = true)]
    pub job_lease: Duration,

    /// How long finished jobs are kept for status queries before they are pruned.
    #[arg(long, env = "HEARTH_JOB_RETENTION", default_value = "7days", value_parser = humantime::parse_duration, global = true)]
    pub job_retention: Duration,

    /// Keep completed jobs for status queries and results (`false`: delete them on completion,
    /// as Celery without a result backend and graphile-worker do; failures are still kept).
    #[arg(long, env = "HEARTH_JOB_KEEP_COMPLETED", default_value_t = true, value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set, global = true)]
    pub job_keep_completed: bool,

    /// Periodic jobs: `name|cron:EXPR|TIME ZONE|kind|JSON args` or `name|every:DURATION||kind|JSON
    /// args`, separated by `;` (in addition to those declared in code).
    #[arg(long, env = "HEARTH_SCHEDULES", global = true)]
    pub schedules: Option<String>,
}

/// The channel layer and the WebSockets on it.
#[derive(Debug, Clone, Args)]
pub struct ChannelSettings {
    /// How long channel-layer messages are kept, for listeners catching up after a lost
    /// connection and clients resuming from their last message (groups may keep their own).
    #[arg(long, env = "HEARTH_CHANNEL_RETENTION", default_value = "5m", value_parser = humantime::parse_duration, global = true)]
    pub channel_retention: Duration,

    /// Messages queued for one WebSocket or SSE connection before it is dropped as a slow
    /// consumer.
    #[arg(long, env = "HEARTH_WS_SEND_QUEUE", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub ws_send_queue: u32,

    /// Largest WebSocket message a client may send, and largest channel message, in bytes.
    #[arg(long, env = "HEARTH_WS_MAX_MESSAGE", default_value_t = 1 << 20, global = true)]
    pub ws_max_message: usize,

    /// How often the server pings each WebSocket client.
    #[arg(long, env = "HEARTH_WS_PING_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration, global = true)]
    pub ws_ping_interval: Duration,

    /// A WebSocket that sends nothing (not even a pong) for this long is closed.
    #[arg(long, env = "HEARTH_WS_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub ws_idle_timeout: Duration,

    /// Live connections (WebSockets and event streams together) one signed-in user may hold on
    /// this instance (0: no limit); one more is refused with 429.
    #[arg(
        long,
        env = "HEARTH_WS_MAX_PER_USER",
        default_value_t = 50,
        global = true
    )]
    pub ws_max_per_user: u32,

    /// Live connections (WebSockets and event streams) one client address may hold on this
    /// instance (0: no limit). Behind a proxy every client has the proxy's address: raise it.
    #[arg(
        long,
        env = "HEARTH_WS_MAX_PER_ADDRESS",
        default_value_t = 5000,
        global = true
    )]
    pub ws_max_per_address: u32,

    /// Origins (`https://example.com`) allowed to open WebSockets, besides the server's own
    /// host, separated by commas.
    #[arg(
        long,
        env = "HEARTH_ALLOWED_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub allowed_origins: Vec<String>,
}

/// The cache and the page caches.
#[derive(Debug, Clone, Args)]
pub struct CacheSettings {
    /// Prepended to every cache key (`<prefix>:<version>:<key>`), to share one database
    /// between applications.
    #[arg(long, env = "HEARTH_CACHE_PREFIX", default_value = "", global = true)]
    pub cache_prefix: String,

    /// How long cached values live when the caller does not say.
    #[arg(long, env = "HEARTH_CACHE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration, global = true)]
    pub cache_timeout: Duration,

    /// How long a value stays in the in-process tier before it is read from Postgres again
    /// (the bound on staleness should an invalidation message be lost).
    #[arg(long, env = "HEARTH_CACHE_LOCAL_TTL", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub cache_local_ttl: Duration,

    /// Size bound of the in-process tier, in bytes.
    #[arg(long, env = "HEARTH_CACHE_LOCAL_MAX_BYTES", default_value_t = 64 << 20, global = true)]
    pub cache_local_max_bytes: u64,

    /// Size bound of the shared tier (keys and values), in bytes; past it the least recently
    /// written entries are evicted.
    #[arg(long, env = "HEARTH_CACHE_MAX_BYTES", default_value_t = 256 << 20, global = true)]
    pub cache_max_bytes: u64,

    /// Where to send the tags of every tag invalidation (`http(s)://…`), so that a CDN or a
    /// proxy in front drops the pages it keeps under those tags (their `Surrogate-Key` and
    /// `Cache-Tag` headers): a `POST` of `{"tags": [...]}`, with the tags in `Surrogate-Key` too.
    #[arg(long, env = "HEARTH_CACHE_PURGE_URL", value_parser = parse_purge_url, global = true)]
    pub cache_purge_url: Option<url::Url>,

    /// Caches every anonymous `GET` of the pages for this long, with the page cache's rules
    /// (Django's site-wide cache); 0 turns it off.
    #[arg(long, env = "HEARTH_SITE_CACHE_TTL", default_value = "0s", value_parser = humantime::parse_duration, global = true)]
    pub site_cache_ttl: Duration,
}

impl Config {
    /// The site's address for links that leave the site (mail): `HEARTH_PUBLIC_URL`, or the
    /// bind address.
    pub fn site_url(&self) -> String {
        match &self.http.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.http.bind),
        }
    }

    /// The settings a bare `hearth` would run with: defaults plus the `HEARTH_*` and
    /// `DATABASE_URL` environment variables, no flags. Tests and tools start here and set fields.
    pub fn from_env() -> Result<Self, clap::Error> {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        <Wrapper as clap::Parser>::try_parse_from(["hearth"]).map(|w| w.config)
    }
}

/// The queues a process works: `default:10,mail:2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec(pub Vec<(crate::jobs::QueueName, usize)>);

fn parse_queue_spec(spec: &str) -> Result<QueueSpec, String> {
    crate::jobs::parse_queues(spec).map(QueueSpec)
}

impl fmt::Display for QueueSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(q, n)| format!("{q}:{n}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// `postgres://user:secret@host/db` becomes `postgres://user:***@host/db`.
/// `HEARTH_CACHE_PURGE_URL`: an absolute `http` or `https` URL.
fn parse_purge_url(value: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(value).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("the purge URL must be http or https, not {other}")),
    }
}

pub fn mask_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Setting a password only fails for URLs that cannot have one, and this one has.
                let _ = parsed.set_password(Some("***"));
            }
            // Passwords may also hide in the query string (`?password=`).
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k.eq_ignore_ascii_case("password") {
                        "***".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable URL>".to_string(),
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let database = match &self.db.database_url {
            Some(url) => mask_url(url),
            None => format!("embedded ({})", self.db.data_dir.join("postgres").display()),
        };
        let secret = match &self.sessions.secret_key {
            Some(_) => "*** (from HEARTH_SECRET_KEY)".to_string(),
            None => format!(
                "*** (from {})",
                self.db.data_dir.join("secret_key").display()
            ),
        };
        let d = humantime::format_duration;
        writeln!(f, "  database            {database}")?;
        if let Some(direct) = &self.db.direct_database_url {
            writeln!(f, "  direct database     {}", mask_url(direct))?;
        }
        let replicas = self.db.read_urls();
        if !replicas.is_empty() {
            let urls: Vec<String> = replicas.iter().map(|url| mask_url(url)).collect();
            writeln!(
                f,
                "  read replicas       {} / max lag {} / checked every {}",
                urls.join(" "),
                d(self.db.read_max_lag),
                d(self.db.read_check_interval)
            )?;
        }
        writeln!(f, "  data dir            {}", self.db.data_dir.display())?;
        writeln!(f, "  bind                {}", self.http.bind)?;
        writeln!(f, "  secret key          {secret}")?;
        writeln!(
            f,
            "  db pool             max {} / min {} / acquire timeout {} / idle timeout {}",
            self.db.db_max_connections,
            self.db.db_min_connections,
            d(self.db.db_acquire_timeout),
            d(self.db.db_idle_timeout)
        )?;
        writeln!(f, "  db pipelines        {}", self.db.db_pipelines)?;
        writeln!(
            f,
            "  request timeout     {} / headers and idle connections {}",
            d(self.http.request_timeout),
            d(self.http.header_read_timeout)
        )?;
        match (&self.http.tls_cert, &self.http.tls_key) {
            (Some(cert), Some(key)) => writeln!(
                f,
                "  tls                 certificate {} / key {}",
                cert.display(),
                key.display()
            )?,
            _ => writeln!(f, "  tls                 off (plain HTTP/1.1 and h2c)")?,
        }
        writeln!(f, "  body limit          {} bytes", self.http.body_limit)?;
        writeln!(f, "  shutdown grace      {}", d(self.http.shutdown_grace))?;
        writeln!(f, "  session ttl         {}", d(self.sessions.session_ttl))?;
        writeln!(f, "  secure cookies      {}", self.sessions.secure_cookies)?;
        writeln!(
            f,
            "  password hashing    {} at once / {} waiting",
            self.sessions.password_hash_concurrency, self.sessions.password_hash_queue
        )?;
        match &self.http.static_dir {
            Some(dir) => writeln!(f, "  static files        {}", dir.display())?,
            None => writeln!(f, "  static files        compiled into the binary")?,
        }
        writeln!(
            f,
            "  job queues          {} / {} connections / poll {} / lease {} / keep {}{}",
            self.jobs.queues,
            self.jobs.job_db_connections,
            d(self.jobs.job_poll_interval),
            d(self.jobs.job_lease),
            d(self.jobs.job_retention),
            if self.jobs.job_keep_completed {
                ""
            } else {
                " (failures only)"
            }
        )?;
        writeln!(
            f,
            "  channels            keep {} / send queue {} / max message {} bytes / ping {} / idle {}",
            d(self.channels.channel_retention),
            self.channels.ws_send_queue,
            self.channels.ws_max_message,
            d(self.channels.ws_ping_interval),
            d(self.channels.ws_idle_timeout)
        )?;
        writeln!(
            f,
            "  websocket limits    {} per user / {} per address (0: none)",
            self.channels.ws_max_per_user, self.channels.ws_max_per_address
        )?;
        writeln!(
            f,
            "  cache               prefix {:?} / timeout {} / local ttl {} / local max {} bytes / max {} bytes",
            self.cache.cache_prefix,
            d(self.cache.cache_timeout),
            d(self.cache.cache_local_ttl),
            self.cache.cache_local_max_bytes,
            self.cache.cache_max_bytes
        )?;
        writeln!(
            f,
            "  page caches         site-wide {} / purge {}",
            if self.cache.site_cache_ttl.is_zero() {
                "off".to_owned()
            } else {
                d(self.cache.site_cache_ttl).to_string()
            },
            self.cache
                .cache_purge_url
                .as_ref()
                .map_or_else(|| "none".to_owned(), |url| mask_url(url.as_str()))
        )?;
        writeln!(f, "  public url          {}", self.site_url())?;
        if !self.channels.allowed_origins.is_empty() {
            writeln!(
                f,
                "  allowed origins     {}",
                self.channels.allowed_origins.join(", ")
            )?;
        }
        write!(
            f,
            "  log format          {}",
            if self.http.log_json { "json" } else { "text" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_url_must_be_an_absolute_http_url() {
        assert!(parse_purge_url("https://cdn.example/purge").is_ok());
        for bad in [
            "cdn.example/purge",
            "ftp://cdn.example/",
            "file:///tmp/x",
            "",
        ] {
            assert!(parse_purge_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn masks_password_in_authority_and_query() {
        assert_eq!(
            mask_url("postgres://ada:hunter2@db:5432/app"),
            "postgres://ada:***@db:5432/app"
        );
        let masked = mask_url("postgres://db/app?user=ada&password=hunter2");
        assert!(!masked.contains("hunter2"), "{masked}");
        assert!(masked.contains("user=ada"), "{masked}");
    }

    #[test]
    fn display_never_prints_secrets() {
        let mut config = Config::from_env().expect("defaults parse");
        config.db.database_url = Some("postgres://ada:hunter2@db/app".into());
        config.db.direct_database_url = Some("postgres://ada:hunter3@db-direct/app".into());
        config.sessions.secret_key = Some("very-secret-key".into());
        let shown = config.to_string();
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains("hunter3"));
        assert!(shown.contains("db-direct"), "{shown}");
        assert!(!shown.contains("very-secret-key"));
        assert!(shown.contains(&config.http.bind.to_string()));
    }
}

/// The apps' own settings sections, one value per type: each app declares its section with
/// `App::settings::<S>()`, the command line fills it from flags and environment variables, and
/// the app's builders read it back by type at start.
#[derive(Clone, Default)]
pub struct Sections(
    std::collections::HashMap<std::any::TypeId, std::sync::Arc<dyn std::any::Any + Send + Sync>>,
);

impl Sections {
    pub fn insert<S: Send + Sync + 'static>(&mut self, section: S) {
        self.0
            .insert(std::any::TypeId::of::<S>(), std::sync::Arc::new(section));
    }

    pub fn get<S: Send + Sync + 'static>(&self) -> Option<&S> {
        self.0
            .get(&std::any::TypeId::of::<S>())
            .and_then(|s| s.downcast_ref())
    }

    /// Changes a section in place (tests adjust one setting of an app this way).
    pub fn update<S: Clone + Send + Sync + 'static>(&mut self, change: impl FnOnce(&mut S)) {
        if let Some(mut section) = self.get::<S>().cloned() {
            change(&mut section);
            self.insert(section);
        }
    }
}

impl fmt::Debug for Sections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sections({} sections)", self.0.len())
    }
}
