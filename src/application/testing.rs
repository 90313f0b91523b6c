//! Test support for applications built on Hearth: a PostgreSQL for the test process, a fresh
//! database per test with the application's migrations applied, and the composed application
//! served on a free port — what Django's test runner and `LiveServerTestCase` give, for a
//! team's integration tests of its own apps.
//!
//! ```text
//! #[tokio::test]
//! async fn the_guestbook_page_answers() {
//!     let application = Application::new().app(guestbook::app());
//!     let server = TestServer::builder(application)
//!         .settings(|s: &mut GuestbookSettings| s.banned_words = vec!["spam".into()])
//!         .start()
//!         .await
//!         .unwrap();
//!     let page = reqwest::get(server.url("/guestbook")).await.unwrap();
//!     assert_eq!(page.status(), 200);
//!     server.run_jobs("default").await.unwrap(); // run what the page enqueued, inline
//! }
//! ```
//!
//! With `DATABASE_URL` set, each test's database is created on that server (its role needs
//! `CREATEDB`). Without it, the first test starts an embedded cluster in a temporary folder
//! (the machine needs PostgreSQL's server binaries, as `hearth serve` does), and the cluster is
//! stopped and removed when the test process exits. Each composition's migrations run once per
//! test process, into a template database; every test database is a copy of it.

use std::{
    collections::HashMap,
    path::PathBuf,
    str::FromStr,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use anyhow::Context as _;
use sqlx::{
    Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;

use super::Application;
use crate::{
    config::{Config, Sections},
    db::{
        self,
        embedded::{EmbeddedOptions, EmbeddedPostgres},
        migrations::{self, MigrationSet},
    },
    jobs::{Registry, WorkerConfig, Workers},
    web::AppState,
};

/// The PostgreSQL server of this test process.
struct Cluster {
    /// The maintenance database, where test databases are created.
    admin: PgConnectOptions,
    /// `DATABASE_URL`, when the tests run on a server of their own.
    url: Option<String>,
    /// The embedded cluster and its temporary folder, removed at exit.
    embedded: Mutex<Option<(EmbeddedPostgres, PathBuf)>>,
    /// The embedded cluster's socket folder.
    socket_dir: Option<PathBuf>,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// Template databases, one per set of migrations (the text of every applied file).
static TEMPLATES: tokio::sync::Mutex<Option<HashMap<String, String>>> =
    tokio::sync::Mutex::const_new(None);

extern "C" fn stop_cluster_at_exit() {
    if let Some(Ok(cluster)) = CLUSTER.get()
        && let Ok(mut embedded) = cluster.embedded.lock()
        && let Some((pg, dir)) = embedded.take()
    {
        let _ = pg.stop();
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn cluster() -> anyhow::Result<&'static Cluster> {
    // Started on a thread of its own: it blocks (initdb, waiting for the server), and the
    // caller is usually on an async test's only thread.
    let cluster = CLUSTER.get_or_init(|| {
        std::thread::spawn(start_cluster)
            .join()
            .unwrap_or_else(|_| Err("the test cluster's start panicked".into()))
    });
    cluster.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

fn start_cluster() -> Result<Cluster, String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        let admin = PgConnectOptions::from_str(&url)
            .map_err(|e| format!("DATABASE_URL is not a PostgreSQL URL: {e}"))?;
        return Ok(Cluster {
            admin,
            url: Some(url),
            embedded: Mutex::new(None),
            socket_dir: None,
        });
    }
    let dir = std::env::temp_dir().join(format!(
        "hearth-test-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    // Throw-away data: no fsync.
    let options = EmbeddedOptions {
        durable: false,
        ..EmbeddedOptions::default()
    };
    let pg = EmbeddedPostgres::start(&dir, &options).map_err(|e| {
        format!("cannot start an embedded PostgreSQL for the tests (or set DATABASE_URL): {e}")
    })?;
    // SAFETY: registering a plain `extern "C" fn` with atexit has no preconditions.
    unsafe { nix::libc::atexit(stop_cluster_at_exit) };
    Ok(Cluster {
        admin: pg.connect_options(),
        url: None,
        socket_dir: Some(pg.data_dir().join("postgres")),
        embedded: Mutex::new(Some((pg, dir))),
    })
}

/// A database of its own for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub name: String,
    pub options: PgConnectOptions,
}

impl TestDatabase {
    /// A new database with nothing in it.
    pub async fn empty() -> anyhow::Result<Self> {
        let cluster = cluster()?;
        let name = new_name();
        db::create_database_if_missing(&cluster.admin, &name)
            .await
            .with_context(|| format!("cannot create the test database {name}"))?;
        Ok(Self {
            options: cluster.admin.clone().database(&name),
            name,
        })
    }

    /// A new database with `sets` applied (a copy of a template made once per process).
    pub async fn migrated(sets: &[MigrationSet]) -> anyhow::Result<Self> {
        let cluster = cluster()?;
        let template = template(cluster, sets).await?;
        let name = new_name();
        let mut conn = PgConnection::connect_with(&cluster.admin).await?;
        // Identifiers cannot be bound; both names are made here: a prefix and hex digits.
        let create = format!("CREATE DATABASE {name} TEMPLATE {template}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot copy the template database {template}"))?;
        conn.close().await?;
        Ok(Self {
            options: cluster.admin.clone().database(&name),
            name,
        })
    }

    /// Its URL, for a child process (`DATABASE_URL=... my-app migrate`).
    pub fn url(&self) -> String {
        let Ok(cluster) = cluster() else {
            return String::new();
        };
        match (&cluster.url, &cluster.socket_dir) {
            (Some(url), _) => match url::Url::parse(url) {
                Ok(mut url) => {
                    url.set_path(&self.name);
                    url.to_string()
                }
                Err(_) => url.clone(),
            },
            (None, Some(dir)) => format!(
                "postgres://{}@localhost/{}?host={}",
                db::embedded::SUPERUSER,
                self.name,
                dir.display()
            ),
            (None, None) => String::new(),
        }
    }

    /// A pool on it, sized for a test.
    pub async fn pool(&self) -> Result<PgPool, sqlx::Error> {
        PgPoolOptions::new()
            .max_connections(5)
            .connect_with(self.options.clone())
            .await
    }
}

fn new_name() -> String {
    format!("hearth_test_{}", uuid::Uuid::new_v4().simple())
}

/// The template database with `sets` applied, made on first use.
async fn template(cluster: &Cluster, sets: &[MigrationSet]) -> anyhow::Result<String> {
    let key: String = sets
        .iter()
        .flat_map(|set| {
            set.migrator
                .iter()
                .map(move |m| format!("{}/{}/{};", set.app, m.version, hex::encode(&m.checksum)))
        })
        .collect();
    // Held while a template is made, so that concurrent tests wait for it rather than make
    // it twice.
    let mut templates = TEMPLATES.lock().await;
    let templates = templates.get_or_insert_with(HashMap::new);
    if let Some(name) = templates.get(&key) {
        return Ok(name.clone());
    }
    let name = format!("hearth_tpl_{}", uuid::Uuid::new_v4().simple());
    db::create_database_if_missing(&cluster.admin, &name).await?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(cluster.admin.clone().database(&name))
        .await?;
    let migrated = migrations::run(&pool, sets).await;
    // Closed before it is copied: PostgreSQL copies only a database nobody is connected to.
    pool.close().await;
    migrated.context("the application's migrations do not apply")?;
    templates.insert(key, name.clone());
    Ok(name)
}

/// The configuration of a test: a free port, a fixed secret key, small pools, a data dir that
/// is never used (the database is the test's own).
pub fn config() -> Config {
    let mut config = Config::from_env()
        .unwrap_or_else(|e| panic!("the configuration from the environment does not parse: {e}"));
    config.http.bind = ([127, 0, 0, 1], 0).into();
    config.sessions.secret_key = Some("a test secret key that is long enough to use".into());
    config.db.data_dir = std::env::temp_dir().join("hearth-test-unused");
    config.db.db_max_connections = 5;
    config.db.db_min_connections = 0;
    config
}

/// An application served on 127.0.0.1 on a database of its own, until it is dropped.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The platform's services: `state.db`, `state.cache`, `state.channels`, ...
    pub state: AppState,
    /// Every job kind of the application, for [`run_jobs`](Self::run_jobs).
    pub registry: Registry,
    pub database: TestDatabase,
    shutdown: CancellationToken,
    _workers: Option<Workers>,
}

/// How a [`TestServer`] is set up: settings, configuration, workers.
pub struct TestServerBuilder {
    application: Application,
    config: Config,
    sections: Result<Sections, String>,
    workers: bool,
}

impl TestServer {
    pub fn builder(application: Application) -> TestServerBuilder {
        let sections = application.sections_from_env().map_err(|e| e.to_string());
        TestServerBuilder {
            application,
            config: config(),
            sections,
            workers: false,
        }
    }

    /// Serves `application` with its default settings.
    pub async fn start(application: Application) -> anyhow::Result<Self> {
        Self::builder(application).start().await
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// The `ws://` URL of `path` on this server.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws{}{path}", self.address.trim_start_matches("http"))
    }

    pub fn pool(&self) -> &PgPool {
        &self.state.db
    }

    /// Runs the due jobs of `queue` inline until none is due, as a worker would (retries wait
    /// for their backoff and are not run again here); returns how many ran.
    pub async fn run_jobs(&self, queue: &str) -> Result<usize, sqlx::Error> {
        crate::jobs::testing::drain(&self.state.db, &self.registry, queue).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestServerBuilder {
    /// Changes a settings section some app declares (`|s: &mut MySettings| ...`).
    pub fn settings<S: Clone + Send + Sync + 'static>(
        mut self,
        change: impl FnOnce(&mut S),
    ) -> Self {
        if let Ok(sections) = &mut self.sections {
            if sections.get::<S>().is_none() {
                self.sections = Err(format!(
                    "no app of this application declares the settings section {}",
                    std::any::type_name::<S>()
                ));
            } else {
                sections.update(change);
            }
        }
        self
    }

    /// Changes the platform's configuration.
    pub fn config(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// Runs job workers beside the server, as `serve` does (every queue of the configuration,
    /// polling every 100 ms, without the schedules): jobs run by themselves rather than
    /// through [`TestServer::run_jobs`].
    pub fn with_workers(mut self) -> Self {
        self.workers = true;
        self
    }

    /// Makes the database, applies the migrations, builds the platform and the apps as `serve`
    /// does, and serves them on a free port.
    pub async fn start(self) -> anyhow::Result<TestServer> {
        let Self {
            application,
            config,
            sections,
            workers,
        } = self;
        let sections = sections.map_err(anyhow::Error::msg)?;
        let plan = application.plan(&config, &sections)?;
        let database = TestDatabase::migrated(&plan.migrations).await?;
        let pool = db::pool_options(&config.db)
            .connect_with(database.options.clone())
            .await
            .context("cannot connect to the test database")?;
        let state = application.state(config.clone(), sections, pool.clone())?;
        tokio::time::timeout(Duration::from_secs(10), state.channels.ready())
            .await
            .context("the channel layer is not listening after 10 s")?;
        let registry = application.registry(&state)?;
        let workers = workers.then(|| {
            let worker_config = WorkerConfig {
                poll_interval: Duration::from_millis(100),
                session: crate::web::state::direct_options(&config),
                ..WorkerConfig::new(config.jobs.queues.0.clone())
            };
            Workers::start(
                super::job_pool(&config, &pool),
                registry.clone(),
                worker_config,
            )
        });
        let router = application.router(&state)?;
        let listener = tokio::net::TcpListener::bind(config.http.bind).await?;
        let address = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        tokio::spawn(crate::server::serve(
            listener,
            router,
            &config,
            shutdown.clone().cancelled_owned(),
        ));
        Ok(TestServer {
            address,
            state,
            registry,
            database,
            shutdown,
            _workers: workers,
        })
    }
}
