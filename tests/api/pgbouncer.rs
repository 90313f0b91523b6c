//! Hearth behind a real PgBouncer, started by each test on a free port in front of the tests'
//! server (`DATABASE_URL`'s, or the embedded cluster's socket), in transaction or session mode.
//!
//! The binary: `HEARTH_TEST_PGBOUNCER`, which `scripts/test` sets, else the first `pgbouncer` 1.21
//! or later on PATH, in /usr/sbin or in `target/pgbouncer-*/bin` (where `scripts/test` builds
//! 1.24.1 from Debian trixie's source when the machine's is older). Debian bookworm's PgBouncer
//! is 1.18: in transaction mode it does not keep clients' protocol-level prepared statements
//! apart, so sqlx's queries cannot go through it at all (docs/scaling.md, "Behind a pooler").
//!
//! Any version: the start-up probe tells PostgreSQL from a transaction pooler, Hearth refuses to
//! start on one that shares prepared statements (1.18, or `max_prepared_statements = 0`, as
//! [`PgBouncer::start`] sets from 1.21 on) with the setting to change, and what needs a session
//! goes over `HEARTH_DIRECT_DATABASE_URL`. 1.21 or later: the channel, job and cache scenarios
//! through a transaction pooler that keeps statements apart; without one they fail, saying how
//! to get one, rather than skip. `HEARTH_TEST_VIA_PGBOUNCER` runs whole suites through it
//! (tests/api/helpers.rs).

use std::{
    io::Write as _,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use hearth::db::pooler::{self, PoolerError, Probe};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::helpers::{TestApp, admin_options, database_url, migrated_database};

/// A PgBouncer process; killed when dropped.
pub struct PgBouncer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PgBouncer {
    /// Starts PgBouncer in `pool_mode` (`transaction` or `session`) in front of the tests'
    /// server, every database by its own name, trusting the server's superuser. Clients'
    /// prepared statements are not kept apart (as in 1.18; `max_prepared_statements = 0` from
    /// 1.21 on).
    pub fn start(pool_mode: &str) -> Self {
        let binary = binary().unwrap_or_else(|| panic!("no pgbouncer found: {HOW_TO_GET_ONE}"));
        let setting = if binary.version >= (1, 21) {
            "max_prepared_statements = 0\n"
        } else {
            ""
        };
        Self::start_with(&binary.path, pool_mode, setting)
    }

    /// Like [`PgBouncer::start`], keeping clients' prepared statements apart
    /// (`max_prepared_statements`, PgBouncer 1.21 or later).
    pub fn start_keeping_statements(pool_mode: &str) -> Self {
        let binary = binary().filter(|binary| binary.version >= (1, 21));
        let binary = binary.unwrap_or_else(|| {
            let found = match self::binary() {
                Some(old) => {
                    let (major, minor) = old.version;
                    format!("{} is {major}.{minor}", old.path.display())
                }
                None => "none found".to_owned(),
            };
            panic!("this test needs PgBouncer 1.21 or later ({found}): {HOW_TO_GET_ONE}")
        });
        Self::start_with(&binary.path, pool_mode, "max_prepared_statements = 200\n")
    }

    fn start_with(binary: &Path, pool_mode: &str, extra: &str) -> Self {
        let admin = admin_options();
        let host = match admin.get_socket() {
            Some(dir) => dir.display().to_string(),
            None => admin.get_host().to_owned(),
        };
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users.txt");
        std::fs::write(&users, format!("\"{}\" \"\"\n", admin.get_username())).unwrap();
        let port = free_port();
        let ini = dir.path().join("pgbouncer.ini");
        // Idle server connections close after a second: every test has a database of its own,
        // and PgBouncer's default (10 minutes) would keep each one's open past `max_connections`.
        // Clients: a suite's run through one PgBouncer has several tests' pools open at once,
        // more than the default 100 connections.
        let mut file = std::fs::File::create(&ini).unwrap();
        write!(
            file,
            "[databases]\n\
             * = host={host} port={upstream}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {users}\n\
             pool_mode = {pool_mode}\n\
             default_pool_size = 4\n\
             max_client_conn = 1000\n\
             server_idle_timeout = 1\n\
             ignore_startup_parameters = extra_float_digits\n\
             {extra}",
            upstream = admin.get_port(),
            users = users.display(),
        )
        .unwrap();
        let mut command = Command::new(binary);
        // PgBouncer refuses to run as root; it reads its files first, then switches.
        if nix::unistd::geteuid().is_root() {
            let user = ["postgres", "nobody"]
                .into_iter()
                .find(|name| nix::unistd::User::from_name(name).ok().flatten().is_some())
                .expect("a postgres or nobody user to run PgBouncer as");
            command.args(["-u", user]);
        }
        let child = command
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("{} starts: {error}", binary.display()));
        let bouncer = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pgbouncer listens on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }

    /// A URL for `database` through this PgBouncer.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{database}",
            admin_options().get_username(),
            self.port
        )
    }

    pub fn options(&self, database: &str) -> PgConnectOptions {
        self.url(database).parse().unwrap()
    }
}

/// What to do when no PgBouncer fit for a test is found.
const HOW_TO_GET_ONE: &str = "run the tests with scripts/test, which builds PgBouncer 1.24.1 \
     into target/pgbouncer-1.24.1/bin when the machine's is older than 1.21, or set \
     HEARTH_TEST_PGBOUNCER to a PgBouncer 1.21 or later (Debian trixie's `pgbouncer` package is \
     1.24.1; bookworm's is 1.18)";

/// A PgBouncer binary and its version.
#[derive(Clone, Debug)]
struct Binary {
    path: PathBuf,
    version: (u32, u32),
}

/// `HEARTH_TEST_PGBOUNCER`; else the first `pgbouncer` 1.21 or later on PATH, in /usr/sbin or
/// in `target/pgbouncer-*/bin`, or failing that the first of any version (enough for the tests
/// that need statements shared). Looked up once per run.
fn binary() -> Option<Binary> {
    static FOUND: OnceLock<Option<Binary>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("HEARTH_TEST_PGBOUNCER") {
                let path = PathBuf::from(path);
                let version = version(&path).unwrap_or_else(|| {
                    panic!(
                        "HEARTH_TEST_PGBOUNCER={} does not run as PgBouncer",
                        path.display()
                    )
                });
                return Some(Binary { path, version });
            }
            let found: Vec<Binary> = candidates()
                .into_iter()
                .filter(|path| path.is_file())
                .filter_map(|path| {
                    Some(Binary {
                        version: version(&path)?,
                        path,
                    })
                })
                .collect();
            let recent = found.iter().find(|binary| binary.version >= (1, 21));
            recent.or(found.first()).cloned()
        })
        .clone()
}

/// Where a `pgbouncer` may be, in order: PATH, /usr/sbin, then `scripts/test`'s builds.
fn candidates() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.push(PathBuf::from("/usr/sbin"));
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    if let Ok(entries) = std::fs::read_dir(target) {
        let mut builds: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("pgbouncer-")
            })
            .map(|entry| entry.path().join("bin"))
            .collect();
        // The newest version first.
        builds.sort();
        builds.reverse();
        dirs.extend(builds);
    }
    dirs.into_iter().map(|dir| dir.join("pgbouncer")).collect()
}

/// The binary's version, from `pgbouncer --version` ("PgBouncer 1.18.0"); `None` when it does
/// not run or says something else.
fn version(binary: &Path) -> Option<(u32, u32)> {
    let output = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let number = text.strip_prefix("PgBouncer ")?.split_whitespace().next()?;
    let mut parts = number.split('.').map(|part| part.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn lazy(options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(options)
}

#[tokio::test]
async fn the_probe_tells_postgres_from_a_transaction_pooler() {
    let (name, direct) = migrated_database().await;
    let transaction = PgBouncer::start("transaction");
    let session = PgBouncer::start("session");

    let both = Probe {
        session: true,
        statements_apart: true,
    };
    assert_eq!(pooler::probe(&direct).await.unwrap(), both);
    assert_eq!(pooler::probe(&session.options(&name)).await.unwrap(), both);
    // PgBouncer sharing statements (1.18, or `max_prepared_statements = 0`) in transaction
    // mode: neither a session nor statements kept apart.
    assert_eq!(
        pooler::probe(&transaction.options(&name)).await.unwrap(),
        Probe {
            session: false,
            statements_apart: false,
        }
    );
}

#[tokio::test]
async fn a_transaction_pooler_is_refused_where_a_session_or_statements_are_needed() {
    let (name, direct) = migrated_database().await;
    let bouncer = PgBouncer::start("transaction");
    let pooled = || lazy(bouncer.options(&name));

    let alone = pooler::check(&pooled(), None).await.unwrap_err();
    assert!(
        matches!(
            alone,
            PoolerError::NoDirectUrl {
                statements_shared: true
            }
        ),
        "{alone:?}"
    );
    assert!(
        alone.to_string().contains("Set HEARTH_DIRECT_DATABASE_URL"),
        "{alone}"
    );

    let direct_pooled = pooler::check(&lazy(direct.clone()), Some(&pooled()))
        .await
        .unwrap_err();
    assert!(
        matches!(direct_pooled, PoolerError::DirectIsPooled),
        "{direct_pooled:?}"
    );

    // With a direct URL, a transaction pooler sharing statements (1.18, or
    // `max_prepared_statements = 0`) is still refused for the pool: sqlx's statements would meet
    // other connections'.
    let shared = pooler::check(&pooled(), Some(&lazy(direct.clone())))
        .await
        .unwrap_err();
    assert!(
        matches!(shared, PoolerError::SharedStatements),
        "{shared:?}"
    );
    assert!(
        shared.to_string().contains("max_prepared_statements"),
        "{shared}"
    );

    // PostgreSQL itself, alone or as both URLs, passes; so does a session-mode pool.
    pooler::check(&lazy(direct.clone()), None).await.unwrap();
    pooler::check(&lazy(direct.clone()), Some(&lazy(direct.clone())))
        .await
        .unwrap();
    let session = PgBouncer::start("session");
    pooler::check(&lazy(session.options(&name)), Some(&lazy(direct)))
        .await
        .unwrap();
}

/// `hearth serve` with these environment variables: its exit status and log if it exits
/// within a minute (it should, refusing to start), or a failure if it starts serving.
fn serve_expecting_refusal(data_dir: &Path, env: &[(&str, &str)]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hearth"));
    command
        .env_remove("DATABASE_URL")
        .env_remove("HEARTH_DIRECT_DATABASE_URL")
        .env("HEARTH_DATA_DIR", data_dir)
        .env("HEARTH_BIND", "127.0.0.1:0")
        .env("HEARTH_SECRET_KEY", "a test secret key that is long enough")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            let log = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(!status.success(), "hearth serve exited 0:\n{log}");
            assert!(!log.contains("listening on"), "it served:\n{log}");
            return log;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "hearth serve did not refuse to start:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn serve_refuses_database_url_through_pgbouncer_without_a_direct_url() {
    let (name, _) = migrated_database().await;
    let bouncer = PgBouncer::start("transaction");
    let dir = tempfile::tempdir().unwrap();
    let url = bouncer.url(&name);
    let log = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || serve_expecting_refusal(&dir, &[("DATABASE_URL", &url)])
    })
    .await
    .unwrap();
    assert!(log.contains("Set HEARTH_DIRECT_DATABASE_URL"), "{log}");
}

#[tokio::test]
async fn serve_refuses_a_pgbouncer_sharing_statements_even_with_a_direct_url() {
    let (name, _) = migrated_database().await;
    let bouncer = PgBouncer::start("transaction");
    let dir = tempfile::tempdir().unwrap();
    let (url, direct) = (bouncer.url(&name), database_url(&name));
    let log = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            serve_expecting_refusal(
                &dir,
                &[
                    ("DATABASE_URL", &url),
                    ("HEARTH_DIRECT_DATABASE_URL", &direct),
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(log.contains("max_prepared_statements"), "{log}");
}

/// Every LISTEN of the channel layer and the job workers, and the channel layer's publisher,
/// connect to `HEARTH_DIRECT_DATABASE_URL`; requests' queries to the pool's URL.
#[tokio::test]
async fn session_work_goes_over_the_direct_url() {
    let (name, options) = migrated_database().await;
    let direct = with_query(&database_url(&name), "application_name=hearth-direct");
    let app = TestApp::builder()
        .database(options)
        .config(|c| c.db.direct_database_url = Some(direct))
        .with_workers()
        .spawn()
        .await;
    // A message through the layer: its publisher connects on first use.
    let group = hearth::channels::GroupName::parse("pooler-test").unwrap();
    app.state
        .channels
        .group_send(&group, &serde_json::json!({"type": "pooler.test"}))
        .await
        .unwrap();

    // The reader reads on its LISTEN connection, so only the job workers' shows `LISTEN` as
    // its last statement; the reader and the publisher show their own.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sessions: Vec<(String, String)> = sqlx::query_as(
            "SELECT application_name, query FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        let direct = |what: &str| {
            sessions
                .iter()
                .any(|(app, query)| app == "hearth-direct" && query.contains(what))
        };
        if direct("LISTEN")
            && direct("INSERT INTO channel_messages")
            && direct("pg_current_snapshot")
        {
            assert!(
                sessions
                    .iter()
                    .filter(|(_, query)| query.starts_with("LISTEN"))
                    .all(|(app, _)| app == "hearth-direct"),
                "{sessions:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{sessions:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn with_query(url: &str, pair: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{pair}")
}

/// An instance whose pool goes through `bouncer` and whose sessions go straight to `name`.
async fn pooled_app(bouncer: &PgBouncer, name: &str) -> TestApp {
    let direct = database_url(name);
    TestApp::builder()
        .database(bouncer.options(name))
        .config(|c| c.db.direct_database_url = Some(direct))
        .spawn()
        .await
}

/// A transaction-mode PgBouncer that keeps prepared statements apart, in front of a new
/// database, which the start-up check accepts.
async fn bouncer_and_database() -> (PgBouncer, String, PgConnectOptions) {
    let (name, direct) = migrated_database().await;
    let bouncer = PgBouncer::start_keeping_statements("transaction");
    pooler::check(&lazy(bouncer.options(&name)), Some(&lazy(direct.clone())))
        .await
        .expect("a PgBouncer that keeps prepared statements apart passes the check");
    (bouncer, name, direct)
}

#[tokio::test]
async fn through_pgbouncer_messages_cross_instances() {
    let (bouncer, name, _) = bouncer_and_database().await;
    let a = pooled_app(&bouncer, &name).await;
    let b = pooled_app(&bouncer, &name).await;
    let group = hearth::channels::GroupName::parse("through-pgbouncer").unwrap();
    let mut sub = a.state.channels.subscribe();
    sub.join(&group);

    // One through B's publisher, one in a transaction of B's pool (through PgBouncer).
    let sent = b
        .state
        .channels
        .group_send(&group, &serde_json::json!({"type": "t.one"}))
        .await
        .unwrap();
    let mut tx = b.pool.begin().await.unwrap();
    let sent_in = b
        .state
        .channels
        .group_send_in(&mut tx, &group, &serde_json::json!({"type": "t.two"}))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    for expected in [sent, sent_in] {
        let delivery = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .expect("a delivery within 5 s")
            .expect("the subscription is open");
        assert_eq!(delivery.id, expected);
    }
    // Pages too: sessions, CSRF and the page's queries, all through PgBouncer.
    let user = a.user("ada").await;
    assert!(user.get("/").await.status().is_success());
}

/// Fails its first two attempts.
#[derive(serde::Serialize, serde::Deserialize)]
struct FailsTwice {}

impl hearth::jobs::Job for FailsTwice {
    const KIND: &'static str = "test_pgbouncer_fails_twice";
    type Deps = ();

    async fn perform(self, ctx: hearth::jobs::JobContext) -> anyhow::Result<hearth::jobs::Outcome> {
        anyhow::ensure!(ctx.attempt > 2, "failure number {}", ctx.attempt);
        hearth::jobs::Outcome::with_result(serde_json::json!({ "succeeded_on": ctx.attempt }))
    }

    fn backoff(_attempt: i32) -> Duration {
        Duration::ZERO
    }
}

#[tokio::test]
async fn through_pgbouncer_jobs_retry_and_complete() {
    use hearth::jobs::{Enqueue, Registry, WorkerConfig, Workers, control};
    let (bouncer, name, direct) = bouncer_and_database().await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(bouncer.options(&name))
        .await
        .unwrap();
    let workers = Workers::start(
        pool.clone(),
        Registry::new().register::<FailsTwice>(),
        WorkerConfig {
            poll_interval: Duration::from_millis(50),
            session: Some(direct),
            ..WorkerConfig::new(hearth::jobs::parse_queues("default:2").unwrap())
        },
    );
    let mut ids = Vec::new();
    for _ in 0..5 {
        let job = Enqueue::new(&FailsTwice {}).unwrap();
        ids.push(job.enqueue(&pool).await.unwrap().id);
    }
    for id in ids {
        let deadline = Instant::now() + Duration::from_secs(20);
        let done = loop {
            let status = control::status(&pool, id).await.unwrap().unwrap();
            if status.state == "completed" {
                break status;
            }
            assert!(Instant::now() < deadline, "job {id}: {status:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(done.result, Some(serde_json::json!({ "succeeded_on": 3 })));
        assert_eq!(done.errors.as_array().unwrap().len(), 2);
    }
    workers.shutdown().await;
}

#[tokio::test]
async fn through_pgbouncer_the_cache_is_shared_and_invalidated() {
    use hearth::cache::Timeout;
    let (bouncer, name, _) = bouncer_and_database().await;
    let a = pooled_app(&bouncer, &name).await;
    let b = pooled_app(&bouncer, &name).await;
    let read_on_b = || async { b.state.cache.get::<String>("shared").await.unwrap() };

    a.state
        .cache
        .set("shared", "v1", Timeout::Never)
        .await
        .unwrap();
    assert_eq!(read_on_b().await.as_deref(), Some("v1"));
    // B keeps v1 in its in-process tier: A's change and delete must reach it.
    a.state
        .cache
        .set("shared", "v2", Timeout::Never)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while read_on_b().await.as_deref() != Some("v2") {
        assert!(Instant::now() < deadline, "B dropped its copy of v1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.state.cache.delete("shared").await.unwrap();
    while read_on_b().await.is_some() {
        assert!(Instant::now() < deadline, "a delete on A reaches B");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn serve_through_pgbouncer_with_a_direct_url_starts_and_answers() {
    let (bouncer, name, _) = bouncer_and_database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hearth"));
    command
        .env("HEARTH_DATA_DIR", dir.path())
        .env("HEARTH_BIND", "127.0.0.1:0")
        .env("HEARTH_SECRET_KEY", "a test secret key that is long enough")
        .env("RUST_LOG", "info")
        .env("DATABASE_URL", bouncer.url(&name))
        .env("HEARTH_DIRECT_DATABASE_URL", database_url(&name));
    let (mut child, address, _log) = crate::binary::serve_with(command);
    let client = crate::helpers::client();
    for path in ["/readyz", "/", "/login"] {
        let status = client
            .get(format!("{address}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "{path}: {status}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
