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
/// HTTP/1.1 only, as `axum::serve` without its `http2` feature, but with a timer: a client gets
/// `config.header_read_timeout` to send a request's headers, and a kept-alive connection may
/// stay idle that long between requests. Without it (axum sets no timer) a client that sends
/// nothing, or one header byte now and then, holds a connection and a task forever. Bodies
/// are bounded by the request timeout layer; upgraded connections (WebSockets) by their own
/// ping and idle timeouts.
pub fn serve(
    listener: TcpListener,
    router: Router,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    use hyper_util::{
        rt::{TokioIo, TokioTimer},
        service::TowerToHyperService,
    };
    use tower::ServiceExt;

    let mut http = hyper::server::conn::http1::Builder::new();
    // Zero turns the bound off (hyper's `None`).
    let header_timeout = Some(config.header_read_timeout).filter(|d| !d.is_zero());
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
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
            let Ok(service) = (&mut make_service).oneshot(remote).await;
            let connection = http
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
                .with_upgrades();
            let stopping = stopping.clone();
            connections.spawn(async move {
                let mut connection = std::pin::pin!(connection);
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    () = stopping.cancelled() => {
                        // Finishes the request in flight, if any, then closes.
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, %remote, "connection ended with an error");
                }
            });
        }
        drop(listener);
        connections.close();
        connections.wait().await;
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
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    tracing::info!("listening on http://{}", listener.local_addr()?);

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
    let server = serve(
        listener,
        app(state),
        &config,
        shutdown.clone().cancelled_owned(),
    );
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
