//! Running a composed application: `serve`, `worker`, and the database for one-off commands.
//!
//! [`serve_command`] opens the database, migrates, builds the platform and the apps once, and
//! serves until SIGINT/SIGTERM, then shuts down in order: stop accepting, let in-flight
//! requests finish within the grace period, stop workers and background tasks, close the pool,
//! stop the embedded PostgreSQL.

use std::{future::Future, time::Duration};

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{Application, app::TaskFn};
use crate::{
    config::{Config, Sections},
    db::{Database, migrations},
    jobs::{Schedule, WorkerConfig, Workers},
    server,
    web::{AppState, session},
};

/// What an app's command gets: the settings and the application, to open the database.
#[derive(Clone)]
pub struct Invocation {
    pub config: Config,
    pub sections: Sections,
    pub application: Application,
}

impl Invocation {
    /// Opens the database (attaching to a running server's embedded cluster), applies pending
    /// migrations if `migrate`, runs `work`, and closes the database (stopping an embedded
    /// cluster it started) whatever `work` returned.
    pub async fn with_database<T, F>(
        &self,
        migrate: bool,
        work: impl FnOnce(PgPool) -> F,
    ) -> anyhow::Result<T>
    where
        F: Future<Output = anyhow::Result<T>>,
    {
        let db = Database::open(&self.config.db, true)
            .await
            .context("cannot open the database")?;
        let outcome = async {
            db.check_poolers().await?;
            if migrate {
                let plan = self.application.plan(&self.config, &self.sections)?;
                migrations::run(&db.direct, &plan.migrations)
                    .await
                    .context("cannot apply migrations")?;
            }
            work(db.pool.clone()).await
        }
        .await;
        db.close().await?;
        outcome
    }

    /// The platform's state on `pool`, for commands that need the apps' services.
    pub fn state(&self, pool: PgPool) -> anyhow::Result<AppState> {
        self.application
            .state(self.config.clone(), self.sections.clone(), pool)
    }
}

/// What `serve` and `worker` do first: say what runs with which settings, check the
/// composition, open the database (`attach`: to a running server's embedded cluster).
async fn begin(
    application: &Application,
    config: &Config,
    sections: &Sections,
    role: &str,
    attach: bool,
) -> anyhow::Result<(super::Plan, Database)> {
    tracing::info!(
        "starting hearth {}{role}\n{config}{}",
        env!("CARGO_PKG_VERSION"),
        application.show_settings(sections)
    );
    let plan = application.plan(config, sections)?;
    let db = Database::open(&config.db, attach)
        .await
        .context("cannot open the database")?;
    if let Err(e) = db.check_poolers().await {
        db.close().await?;
        return Err(e.into());
    }
    Ok((plan, db))
}

/// `hearth serve`.
pub async fn serve_command(
    application: Application,
    config: Config,
    sections: Sections,
    migrate: bool,
) -> anyhow::Result<()> {
    raise_open_files_limit(&config);
    let (plan, db) = begin(&application, &config, &sections, "", false).await?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    if migrate {
        apply_migrations(&db, &plan.migrations, &tasks, &shutdown).await?;
    }
    let state = AppState::new(
        config.clone(),
        sections,
        plan.clone().into(),
        db.pool.clone(),
    )?;
    for app in application.apps() {
        for (name, task) in &app.startup {
            task(state.clone())
                .await
                .with_context(|| format!("the app {:?} could not {name}", app.name))?;
        }
    }
    let router = application.router(&state)?;
    let registry = application.registry(&state)?;
    let (listener, tls) = listen(&config).await?;

    spawn_tasks(&application, &state, &tasks, &shutdown);
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let workers = Workers::start(
        job_pool(&config, &db.pool),
        registry,
        worker_config(&config, plan.schedules)?,
    );
    serve_until_shutdown(&state, router, listener, tls, &config, &shutdown).await;
    tracing::info!("HTTP server stopped; stopping job workers and background tasks");
    shutdown.cancel();
    workers.shutdown().await;
    stop_platform(&state, &tasks).await;
    db.close()
        .await
        .context("cannot stop the database cleanly")?;
    tracing::info!("bye");
    Ok(())
}

/// Descriptors kept for what is not a client: the database's connections are counted apart,
/// this is the rest (the embedded cluster's pipes, log and data files, the listener, timers).
const OWN_DESCRIPTORS: u64 = 64;

/// Raises the soft limit on open files to the hard one, and says how many client connections
/// fit. Every socket is a descriptor, and the usual soft default (1,024) would refuse clients
/// long before memory or CPU run out; the hard limit is the most an unprivileged process may
/// have. A refusal is logged and the server runs with the soft limit it has.
fn raise_open_files_limit(config: &Config) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => return tracing::warn!("cannot read the open-files limit: {e}"),
    };
    let limit = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("cannot raise the open-files limit from {soft} to {hard}: {e}");
                soft
            }
        }
    } else {
        soft
    };
    let database = u64::from(config.db.db_max_connections + config.db.db_pipelines + 2);
    let clients = limit.saturating_sub(database + OWN_DESCRIPTORS);
    let raised = if limit > soft {
        format!(", raised from {soft}")
    } else {
        String::new()
    };
    tracing::info!(
        "open files: {limit} (hard limit {hard}{raised}): room for about {clients} client \
         connections (WebSockets, event streams, HTTP) beside {database} to the database"
    );
}

/// Takes the port, with the certificate when one is configured: a bad certificate stops the
/// start before the port is taken.
async fn listen(config: &Config) -> anyhow::Result<(TcpListener, Option<crate::tls::Tls>)> {
    let tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::Tls::load(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(config.http.bind)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.bind))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("listening on {scheme}://{}", listener.local_addr()?);
    Ok((listener, tls))
}

/// Serves until `shutdown`, then gives in-flight requests the grace period.
async fn serve_until_shutdown(
    state: &AppState,
    router: axum::Router,
    listener: TcpListener,
    tls: Option<crate::tls::Tls>,
    config: &Config,
    shutdown: &CancellationToken,
) {
    // Accept sockets once the channel layer reads, unless the database is down (then serve
    // anyway, as for migrations: /readyz says 503 until it answers).
    if tokio::time::timeout(Duration::from_secs(10), state.channels.ready())
        .await
        .is_err()
    {
        tracing::warn!("the channel layer is not listening yet; serving anyway");
    }
    // WebSockets and event streams are closed at the signal, not after the grace period:
    // they never finish by themselves, and the HTTP server waits for event streams.
    tokio::spawn({
        let (shutdown, channels) = (shutdown.clone(), state.channels.clone());
        async move {
            shutdown.cancelled().await;
            channels.close_connections();
        }
    });
    let stop = shutdown.clone().cancelled_owned();
    let served: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match tls {
        Some(tls) => {
            tokio::spawn(tls.clone().reload_on_sighup(shutdown.clone()));
            Box::pin(server::serve_tls(listener, router, config, tls, stop))
        }
        None => Box::pin(server::serve(listener, router, config, stop)),
    };
    let grace = config.http.shutdown_grace;
    tokio::select! {
        () = served => {}
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "requests still running after the grace period; dropping them");
        }
    }
}

/// Stops what [`AppState::new`] started, and the tasks.
async fn stop_platform(state: &AppState, tasks: &TaskTracker) {
    state.cache.shutdown();
    state.channels.shutdown().await;
    state.reads.close();
    state.replicas.close().await;
    tasks.close();
    tasks.wait().await;
}

/// `hearth worker`: job workers without the HTTP server, to scale job processing apart from
/// web traffic. Shuts down like `serve`: running jobs get the grace period, then are handed back.
pub async fn worker_command(
    application: Application,
    config: Config,
    sections: Sections,
) -> anyhow::Result<()> {
    // Beside a `hearth serve` on the same data dir, share its embedded cluster.
    let (plan, db) = begin(&application, &config, &sections, " (worker)", true).await?;
    migrations::run(&db.direct, &plan.migrations)
        .await
        .context("cannot apply migrations")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    // Jobs send to groups and drop cached pages: a worker has the whole platform but HTTP.
    let state = AppState::new(
        config.clone(),
        sections,
        plan.clone().into(),
        db.pool.clone(),
    )?;
    let registry = application.registry(&state)?;
    let workers = Workers::start(
        db.pool.clone(),
        registry,
        worker_config(&config, plan.schedules)?,
    );
    shutdown.cancelled().await;
    workers.shutdown().await;
    stop_platform(&state, &TaskTracker::new()).await;
    db.close()
        .await
        .context("cannot stop the database cleanly")?;
    Ok(())
}

/// The job workers' own pool in `serve` (`HEARTH_JOB_DB_CONNECTIONS`), on the same database
/// as `app_pool`. Jobs run their queries on it too, so requests and jobs never starve each
/// other of connections.
pub fn job_pool(config: &Config, app_pool: &PgPool) -> PgPool {
    let options = crate::db::pool_options(&config.db);
    let pool = crate::db::failover::primary_only(options, "DATABASE_URL")
        .max_connections(config.jobs.job_db_connections.max(1))
        .min_connections(0)
        .connect_lazy_with((*app_pool.connect_options()).clone());
    // Where the app's pool goes after a failover, this one goes too.
    crate::db::failover::follow(&pool);
    pool
}

/// The worker runtime's settings from the configuration and the application's schedules.
pub fn worker_config(config: &Config, schedules: Vec<Schedule>) -> anyhow::Result<WorkerConfig> {
    Ok(WorkerConfig {
        poll_interval: config.jobs.job_poll_interval,
        lease: config.jobs.job_lease,
        shutdown_grace: config.http.shutdown_grace,
        retention: config.jobs.job_retention,
        keep_completed: config.jobs.job_keep_completed,
        schedules,
        session: crate::web::state::direct_options(config),
        ..WorkerConfig::new(config.jobs.queues.0.clone())
    })
}

/// Applies pending migrations. If the database does not answer yet, serving goes ahead (with
/// `/readyz` reporting 503) and migrations are retried in the background until it does.
async fn apply_migrations(
    db: &Database,
    sets: &[migrations::MigrationSet],
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    match migrations::run(&db.direct, sets).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_unreachable() => {
            tracing::error!(error = %e, "the database does not answer; serving anyway and retrying migrations every 5s");
            let (pool, shutdown, sets) = (db.direct.clone(), shutdown.clone(), sets.to_vec());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                    match migrations::run(&pool, &sets).await {
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

/// The platform's sweep of expired sessions, and every app's periodic tasks, each on its
/// own timer until shutdown.
fn spawn_tasks(
    application: &Application,
    state: &AppState,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let sessions: TaskFn = std::sync::Arc::new(|state: AppState| {
        Box::pin(async move {
            let n = session::sweep_expired(&state.db).await?;
            if n > 0 {
                tracing::info!(deleted = n, "expired sessions swept");
            }
            Ok(())
        })
    });
    let every = std::iter::once((
        "platform",
        "expired sessions",
        Duration::from_secs(600),
        sessions,
    ));
    let apps = application.apps().iter().flat_map(|app| {
        app.tasks
            .iter()
            .map(move |t| (app.name, t.name, t.period, t.run.clone()))
    });
    for (app, name, period, run) in every.chain(apps) {
        let (state, shutdown) = (state.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut timer = tokio::time::interval(period);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = timer.tick() => {}
                }
                if let Err(e) = run(state.clone()).await {
                    tracing::warn!(app, task = name, error = %e, "a periodic task failed");
                }
            }
        });
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
