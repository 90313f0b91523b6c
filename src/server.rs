//! Wires the platform and the apps into one router and one running process.
//!
//! [`app`] is the whole HTTP application for a given state (tests bind it to port 0).
//! [`run`] is `hearth serve`: open the database, migrate, serve until SIGINT/SIGTERM, then shut
//! down in order — stop accepting, let in-flight requests finish within the grace period, stop
//! background tasks, close the pool, stop the embedded PostgreSQL.

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context;
use axum::{Router, middleware};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    accounts,
    cache::{Cache, page::cache_page},
    channels::ChannelLayer,
    chat,
    config::Config,
    dashboard,
    db::{self, Database, migrations},
    documents, home,
    jobs::{Enqueue, Registry, Schedule, WorkerConfig, Workers, schedule::Every},
    mail::{self, Mailer},
    notifications, ops,
    publishing::{
        self,
        jobs::{DailyDigest, DigestZone, NotifySubscribers, PostPublished, SiteUrl},
    },
    web::{self, session},
};

pub use crate::web::AppState;

/// The HTTP application: every app's routes behind the platform middleware.
pub fn app(state: AppState) -> Router {
    app_with(state, Router::new())
}

/// [`app`] with `extra` routes served beside the built-in apps, behind the same middleware
/// (CSRF, flash messages, error pages, timeouts...). For programs that use Hearth as a library.
pub fn app_with(state: AppState, extra: Router<AppState>) -> Router {
    let config = state.config.clone();
    let cache = state.cache.clone();
    // CSRF and flash apply to pages and API routes, not to probes and static files.
    let pages = Router::new()
        .merge(home::routes())
        .merge(accounts::routes())
        .merge(publishing::routes(&state))
        .merge(notifications::routes())
        .merge(chat::routes())
        .merge(documents::routes())
        .merge(dashboard::routes())
        .merge(mail::routes())
        .merge(ops::routes())
        .merge(crate::uploads::routes(&config))
        .merge(crate::gateway::routes())
        .merge(extra);
    // Where a route's own `cache_page` is, inside the CSRF and flash layers: the per-browser
    // cookies they add come after it, and the personal marks they make reach it.
    let pages = if config.site_cache_ttl.is_zero() {
        pages
    } else {
        pages.layer(
            cache_page(&cache, config.site_cache_ttl)
                .site_wide()
                .bypass(web::is_personal),
        )
    };
    let pages = pages
        .layer(middleware::from_fn_with_state(
            state.clone(),
            web::csrf::protect,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            web::flash::middleware,
        ))
        .with_state(state.clone());
    let mut router = Router::new().merge(pages);
    if config.bench_routes {
        router = router.merge(crate::bench::routes::routes(&state).with_state(state.clone()));
    }
    let router = router
        .merge(web::health::routes().with_state(state.clone()))
        .route(
            "/metrics",
            axum::routing::get(web::metrics::endpoint).with_state(state),
        )
        .nest("/static", web::static_files(&config.static_dir))
        .fallback(web::error::not_found)
        // The hard limit below admits an upload; every other route keeps the body limit
        // (an inner DefaultBodyLimit wins: the upload route sets its own).
        .layer(axum::extract::DefaultBodyLimit::max(config.body_limit));
    web::layers(
        router,
        &cache,
        config.request_timeout,
        crate::uploads::body_limit(&config),
    )
}

/// Serves `router` on `listener` until `shutdown` completes, then waits for in-flight requests.
/// Never fails: accept errors are logged and retried.
///
/// HTTP/1.1 and HTTP/2 on one port: hyper-util's auto builder reads the first bytes and serves
/// h2c (prior knowledge, as proxies speak it) when they are the HTTP/2 preface. A client gets
/// `config.header_read_timeout` to send a request's headers, and a kept-alive connection may
/// stay idle that long between requests. Without it (axum sets no timer) a client that sends
/// nothing, or one header byte now and then, holds a connection and a task forever. hyper's
/// header timer is HTTP/1.1 only, so [`Activity`] gives every connection the same bound on
/// idleness whatever the protocol: no request in flight for that long and it is shut down
/// gracefully (on HTTP/2 a GOAWAY; streams already open, such as event streams and WebSockets
/// over HTTP/2, finish). Bodies are bounded by the request timeout and body limit layers, on
/// both protocols; WebSockets (an HTTP/1.1 upgrade, or an RFC 8441 extended CONNECT stream on
/// HTTP/2) by their own ping and idle timeouts.
pub fn serve(
    listener: TcpListener,
    router: Router,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    serve_with(listener, router, config, None, shutdown)
}

/// [`serve`] over TLS: HTTPS with HTTP/2 or HTTP/1.1 as ALPN chooses. Each handshake uses the
/// certificate current when it starts (see [`Tls::reload`](crate::tls::Tls::reload)) and must
/// finish within the header read timeout.
pub fn serve_tls(
    listener: TcpListener,
    router: Router,
    config: &Config,
    tls: crate::tls::Tls,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    serve_with(listener, router, config, Some(tls), shutdown)
}

fn serve_with(
    listener: TcpListener,
    router: Router,
    config: &Config,
    tls: Option<crate::tls::Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    // Zero turns the bounds off (hyper's `None`).
    let idle = Some(config.header_read_timeout).filter(|d| !d.is_zero());
    let http = std::sync::Arc::new(http_builder(idle));
    async move {
        let mut make_service = router.into_make_service_with_connect_info::<SocketAddr>();
        // One token for the accept loop and every connection: a future can only be awaited once.
        let stopping = CancellationToken::new();
        tokio::spawn({
            let stopping = stopping.clone();
            async move {
                shutdown.await;
                stopping.cancel();
            }
        });
        let connections = TaskTracker::new();
        loop {
            let (tcp, remote) = tokio::select! {
                () = stopping.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        backoff_after_accept_error(&e, &stopping).await;
                        continue;
                    }
                },
            };
            // No Nagle delay: WebSocket and event-stream frames are small and must leave at once.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            // Adds `ConnectInfo<SocketAddr>` to every request (the WebSocket per-address limit).
            let Ok(service) = tower::ServiceExt::oneshot(&mut make_service, remote).await;
            let connection = Connection {
                http: http.clone(),
                stopping: stopping.clone(),
                idle,
                remote,
            };
            match &tls {
                None => connections.spawn(connection.serve(tcp, service)),
                Some(tls) => connections.spawn(connection.serve_tls(tls.acceptor(), tcp, service)),
            };
        }
        drop(listener);
        connections.close();
        connections.wait().await;
    }
}

/// HTTP/1.1 with the header timer, and HTTP/2 with bounds on what one connection may ask for.
fn http_builder(
    idle: Option<Duration>,
) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle);
    http.http2()
        .timer(TokioTimer::new())
        // Streams open at once on one connection; more wait for the client's turn (RFC 9113
        // SETTINGS_MAX_CONCURRENT_STREAMS), so one connection is never more than 100 tasks.
        .max_concurrent_streams(H2_MAX_STREAMS)
        // Rapid reset (CVE-2023-44487): a client that opens and cancels streams faster than
        // they are served gets GOAWAY (ENHANCE_YOUR_CALM) past 20 pending ones...
        .max_pending_accept_reset_streams(20)
        // ...and one whose streams keep making the server reset them (bad frames), past 256.
        .max_local_error_reset_streams(256)
        // The HTTP/1.1 parser's limit on a request head is about this size too.
        .max_header_list_size(64 * 1024)
        // WebSockets over HTTP/2 (RFC 8441): SETTINGS_ENABLE_CONNECT_PROTOCOL, so browsers send
        // an extended CONNECT to the socket routes on the connection they already have.
        .enable_connect_protocol()
        // A peer that stops answering pings is dropped; idleness is `Activity`'s.
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    http
}

/// Most HTTP/2 streams one connection may have open at once.
pub const H2_MAX_STREAMS: u32 = 100;

/// One accepted connection, before its protocol is known.
struct Connection {
    http: std::sync::Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    stopping: CancellationToken,
    idle: Option<Duration>,
    remote: SocketAddr,
}

type AppService = axum::middleware::AddExtension<Router, axum::extract::ConnectInfo<SocketAddr>>;

impl Connection {
    /// The TLS handshake gets the same bound as a request's headers.
    async fn serve_tls(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
        tcp: tokio::net::TcpStream,
        service: AppService,
    ) {
        let handshake = acceptor.accept(tcp);
        let stream = match self.idle {
            Some(limit) => match tokio::time::timeout(limit, handshake).await {
                Ok(stream) => stream,
                Err(_) => {
                    return tracing::debug!(remote = %self.remote, "TLS handshake timed out");
                }
            },
            None => handshake.await,
        };
        match stream {
            Ok(stream) => self.serve(stream, service).await,
            Err(e) => tracing::debug!(error = %e, remote = %self.remote, "TLS handshake failed"),
        }
    }

    async fn serve<I>(self, io: I, service: AppService)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let activity = std::sync::Arc::new(Activity::default());
        let service = hyper::service::service_fn({
            let activity = activity.clone();
            move |request| {
                let (service, busy) = (service.clone(), activity.start());
                async move {
                    let response = tower::ServiceExt::oneshot(service, request).await;
                    drop(busy);
                    response
                }
            }
        });
        let connection = self
            .http
            .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = self.stopping.cancelled() => {
                // Finishes the requests in flight, if any, then closes.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
            () = activity.idle_for(self.idle) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, remote = %self.remote, "connection ended with an error");
        }
    }
}

/// Requests in flight on one connection, to close it once it has been idle too long on any
/// protocol (hyper's own timer covers only HTTP/1.1 heads): an HTTP/2 client that opens a
/// connection, or half a preface, and then sends nothing would hold it forever.
#[derive(Default)]
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

/// Held while a request is being answered.
struct Busy(std::sync::Arc<Activity>);

impl Activity {
    fn start(self: &std::sync::Arc<Self>) -> Busy {
        // Only a change between idle and busy matters to `idle_for`.
        if self
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            == 0
        {
            self.changed.notify_waiters();
        }
        Busy(self.clone())
    }

    /// Completes once no request has been in flight for `limit`; never without a limit.
    async fn idle_for(&self, limit: Option<Duration>) {
        let Some(limit) = limit else {
            return std::future::pending().await;
        };
        loop {
            // Created before the check, so a change between the two is not missed.
            let changed = self.changed.notified();
            if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                changed.await;
            } else if tokio::time::timeout(limit, changed).await.is_err() {
                return;
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self
            .0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.changed.notify_waiters();
        }
    }
}

/// After a failed `accept`: a client that gave up before it was accepted is nothing; anything
/// else (EMFILE: out of file descriptors) is logged and retried after a pause, as `axum::serve`
/// does, rather than ending the server or spinning.
async fn backoff_after_accept_error(e: &std::io::Error, stopping: &CancellationToken) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept a connection; retrying in 1s");
    tokio::select! {
        () = stopping.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

/// `hearth serve`.
pub async fn run(config: Config, migrate: bool) -> anyhow::Result<()> {
    tracing::info!("starting hearth {}\n{config}", env!("CARGO_PKG_VERSION"));
    let db = Database::open(&config, false)
        .await
        .context("cannot open the database")?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    if migrate {
        apply_migrations(&db, &tasks, &shutdown).await?;
    }

    if config.bench_routes {
        crate::bench::routes::seed(&db.pool)
            .await
            .context("cannot seed the benchmark posts")?;
    }
    let state = AppState::new(config.clone(), db.pool.clone())?;
    // A bad certificate stops the start, before the port is taken.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::Tls::load(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("listening on {scheme}://{}", listener.local_addr()?);

    tasks.spawn(sweep_periodically(state.db.clone(), shutdown.clone()));
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    // Imports publish posts, so jobs drop cached pages too.
    let registry = job_registry(&config, &state.channels, &state.cache)?;
    let workers = Workers::start(
        job_pool(&config, &db.pool),
        registry,
        worker_config(&config)?,
    );

    let channels = state.channels.clone();
    let cache = state.cache.clone();
    let reads = state.reads.clone();
    // Accept sockets once the channel layer reads, unless the database is down (then serve
    // anyway, as for migrations: /readyz says 503 until it answers).
    if tokio::time::timeout(Duration::from_secs(10), channels.ready())
        .await
        .is_err()
    {
        tracing::warn!("the channel layer is not listening yet; serving anyway");
    }
    // WebSockets and event streams are closed at the signal, not after the grace period:
    // they never finish by themselves, and the HTTP server waits for event streams.
    tokio::spawn({
        let (shutdown, channels) = (shutdown.clone(), channels.clone());
        async move {
            shutdown.cancelled().await;
            channels.close_connections();
        }
    });
    let stop = shutdown.clone().cancelled_owned();
    let server: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match tls {
        Some(tls) => {
            tokio::spawn(tls.clone().reload_on_sighup(shutdown.clone()));
            Box::pin(serve_tls(listener, app(state), &config, tls, stop))
        }
        None => Box::pin(serve(listener, app(state), &config, stop)),
    };
    let grace = config.shutdown_grace;
    tokio::select! {
        () = server => {}
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "requests still running after the grace period; dropping them");
        }
    }
    tracing::info!("HTTP server stopped; stopping job workers and background tasks");
    shutdown.cancel();
    workers.shutdown().await;
    cache.shutdown();
    channels.shutdown().await;
    reads.close();
    tasks.close();
    tasks.wait().await;
    db.close()
        .await
        .context("cannot stop the database cleanly")?;
    tracing::info!("bye");
    Ok(())
}

/// `hearth worker`: job workers without the HTTP server, to scale job processing apart from
/// web traffic. Shuts down like `serve`: running jobs get the grace period, then are handed back.
pub async fn run_worker(config: Config) -> anyhow::Result<()> {
    tracing::info!(
        "starting hearth {} (worker)\n{config}",
        env!("CARGO_PKG_VERSION")
    );
    // Beside a `hearth serve` on the same data dir, share its embedded cluster.
    let db = Database::open(&config, true)
        .await
        .context("cannot open the database")?;
    migrations::run(&db.pool)
        .await
        .context("cannot apply migrations")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    // Jobs send to groups (notifications, progress), so a worker has a channel layer too.
    let channels = ChannelLayer::start(db.pool.clone(), web::state::channel_config(&config));
    // Imports publish posts, so jobs drop cached pages: a worker has the cache too.
    let cache = Cache::start(
        db.pool.clone(),
        channels.clone(),
        web::state::cache_config(&config),
    );
    let registry = job_registry(&config, &channels, &cache)?;
    let workers = Workers::start(db.pool.clone(), registry, worker_config(&config)?);
    shutdown.cancelled().await;
    workers.shutdown().await;
    cache.shutdown();
    channels.shutdown().await;
    db.close()
        .await
        .context("cannot stop the database cleanly")?;
    Ok(())
}

/// The job workers' own pool in `serve` (`HEARTH_JOB_DB_CONNECTIONS`), on the same database
/// as `app_pool`. Jobs run their queries on it too, so requests and jobs never starve each
/// other of connections.
pub fn job_pool(config: &Config, app_pool: &sqlx::PgPool) -> sqlx::PgPool {
    db::pool_options(config)
        .max_connections(config.job_db_connections.max(1))
        .min_connections(0)
        .connect_lazy_with((*app_pool.connect_options()).clone())
}

/// Every job kind this program runs. Apps add theirs here.
fn job_kinds() -> Registry {
    Registry::new()
        .register::<PostPublished>()
        .register::<accounts::SignInLink>()
        .register::<NotifySubscribers>()
        .register::<DailyDigest>()
        .register::<crate::uploads::ImportCsv>()
        .register::<crate::documents::CompactDocument>()
        .register::<crate::documents::CompactIdle>()
}

/// The job kinds with what they need at run time: the mailer, the channel layer (live
/// notifications, progress), the cache (an import that publishes drops cached pages), the
/// site's address and the digest's time zone.
pub fn job_registry(
    config: &Config,
    channels: &ChannelLayer,
    cache: &Cache,
) -> anyhow::Result<Registry> {
    let mailer = Mailer::new(config.smtp_url.as_deref(), &config.mail_from)?;
    Ok(job_kinds()
        .with_data(mailer)
        .with_data(channels.clone())
        .with_data(cache.clone())
        .with_data(SiteUrl(config.site_url()))
        .with_data(DigestZone(digest_zone(config)?)))
}

fn digest_zone(config: &Config) -> anyhow::Result<chrono_tz::Tz> {
    config.digest_time_zone.parse().map_err(|_| {
        anyhow::anyhow!(
            "HEARTH_DIGEST_TIME_ZONE {:?} is not a time zone name such as Europe/Paris",
            config.digest_time_zone
        )
    })
}

/// Every periodic job of this program: those apps declare here, plus `HEARTH_SCHEDULES`.
/// A schedule of a kind this program does not run is an error at start-up, not a job that
/// would be discarded every time it fires.
pub fn job_schedules(config: &Config) -> anyhow::Result<Vec<Schedule>> {
    let digest = Every::cron(
        &format!("0 {} * * *", config.digest_hour),
        &config.digest_time_zone,
    )?;
    let mut schedules = vec![
        Schedule::new(
            "daily-digest",
            digest,
            Enqueue::new(&DailyDigest::default())?,
        )?,
        Schedule::new(
            "documents-compact",
            Every::interval(Duration::from_secs(600))?,
            Enqueue::new(&documents::CompactIdle::default())?,
        )?,
    ];
    if let Some(spec) = &config.schedules {
        schedules.extend(crate::jobs::schedule::parse_config(spec)?);
    }
    let registry = job_kinds();
    for schedule in &schedules {
        let kind = schedule.job.kind();
        anyhow::ensure!(
            registry.knows(kind),
            "schedule {:?} names job kind {kind:?}, which is not registered",
            schedule.name
        );
    }
    Ok(schedules)
}

/// The worker runtime's settings from the configuration.
pub fn worker_config(config: &Config) -> anyhow::Result<WorkerConfig> {
    Ok(WorkerConfig {
        poll_interval: config.job_poll_interval,
        lease: config.job_lease,
        shutdown_grace: config.shutdown_grace,
        retention: config.job_retention,
        keep_completed: config.job_keep_completed,
        schedules: job_schedules(config)?,
        ..WorkerConfig::new(config.queues.0.clone())
    })
}

/// Applies pending migrations. If the database does not answer yet, serving goes ahead (with
/// `/readyz` reporting 503) and migrations are retried in the background until it does.
async fn apply_migrations(
    db: &Database,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    match migrations::run(&db.pool).await {
        Ok(()) => Ok(()),
        Err(e) if is_unreachable(&e) => {
            tracing::error!(error = %e, "the database does not answer; serving anyway and retrying migrations every 5s");
            let (pool, shutdown) = (db.pool.clone(), shutdown.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                    match migrations::run(&pool).await {
                        Ok(()) => {
                            return tracing::info!(
                                "the database answers again; migrations applied"
                            );
                        }
                        Err(e) => tracing::warn!(error = %e, "still cannot apply migrations"),
                    }
                }
            });
            Ok(())
        }
        Err(e) => Err(e).context("cannot apply migrations"),
    }
}

fn is_unreachable(e: &sqlx::migrate::MigrateError) -> bool {
    matches!(
        e,
        sqlx::migrate::MigrateError::Execute(
            sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolClosed
        )
    )
}

/// Deletes expired sessions and forgotten login throttle counters every ten minutes.
async fn sweep_periodically(pool: sqlx::PgPool, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        match session::sweep_expired(&pool).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "expired sessions swept"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot sweep expired sessions"),
        }
        if let Err(e) = accounts::throttle::sweep(&pool).await {
            tracing::warn!(error = %e, "cannot sweep forgotten login throttle counters");
        }
        if let Err(e) = accounts::sweep_tokens(&pool).await {
            tracing::warn!(error = %e, "cannot sweep old mail links");
        }
        if let Err(e) = mail::quota::sweep(&pool).await {
            tracing::warn!(error = %e, "cannot sweep past mail quotas");
        }
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop hearth with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
    }
    shutdown.cancel();
}
