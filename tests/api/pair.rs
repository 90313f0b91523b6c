//! A primary and its streaming standby, for the replica and failover tests.
//!
//! [`Pair::start`] starts a private primary (the embedded cluster, on a free TCP port of
//! 127.0.0.1), applies every migration to a database in it, copies it with `pg_basebackup -R`
//! and starts the copy as a hot standby that streams from the primary. Both listen on TCP so
//! that a URL can name them side by side (`postgres://127.0.0.1:p1,127.0.0.1:p2/db`), as a
//! managed database's primary and replica are named. Everything is removed when the pair is
//! dropped.
//!
//! The tests' shared cluster is not used: a failover test stops its primary, and a base backup
//! of a server holding every other test's databases would be slow.

use std::{
    net::TcpListener,
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use hearth::db::{
    self,
    embedded::{self, EmbeddedOptions, EmbeddedPostgres},
    migrations,
};
use sqlx::{
    Connection, PgConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// The database the pair's tests use, with every migration applied.
pub const DATABASE: &str = "hearth";

/// A running primary and standby.
pub struct Pair {
    root: PathBuf,
    primary: Option<EmbeddedPostgres>,
    standby: Option<EmbeddedPostgres>,
    pub primary_port: u16,
    pub standby_port: u16,
}

impl Pair {
    /// Starts the primary, migrates [`DATABASE`] and starts a standby streaming from it.
    pub async fn start() -> Self {
        let root = tempfile::Builder::new()
            .prefix("hearth-pair-")
            .tempdir()
            .expect("temp dir")
            .keep();
        // The servers run as `postgres` when the tests run as root: it must reach both folders.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let primary_port = free_port();
        let standby_port = free_port();

        let primary = start_server(root.join("primary"), primary_port).await;
        let admin = tcp_options(primary_port);
        db::create_database_if_missing(&admin, DATABASE)
            .await
            .expect("the pair's database");
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(admin.database(DATABASE))
            .await
            .expect("connect to the primary");
        migrations::run(&pool, &crate::helpers::migration_sets())
            .await
            .expect("migrations apply on the primary");
        pool.close().await;

        let standby_dir = root.join("standby");
        let owner = std::fs::metadata(primary.pgdata()).unwrap();
        base_backup(primary_port, &standby_dir, owner.uid(), owner.gid()).await;
        let standby = start_server(standby_dir, standby_port).await;
        let pair = Self {
            root,
            primary: Some(primary),
            standby: Some(standby),
            primary_port,
            standby_port,
        };
        pair.wait_for_standby().await;
        pair
    }

    /// Superuser options for [`DATABASE`] on the primary, over TCP.
    pub fn primary_options(&self) -> PgConnectOptions {
        tcp_options(self.primary_port).database(DATABASE)
    }

    /// Superuser options for [`DATABASE`] on the standby, over TCP.
    pub fn standby_options(&self) -> PgConnectOptions {
        tcp_options(self.standby_port).database(DATABASE)
    }

    /// `postgres://hearth@127.0.0.1:<port>/hearth` for the primary.
    pub fn primary_url(&self) -> String {
        url(&[self.primary_port])
    }

    /// `postgres://hearth@127.0.0.1:<port>/hearth` for the standby.
    pub fn standby_url(&self) -> String {
        url(&[self.standby_port])
    }

    /// One URL naming both servers, primary first, as a client configured for failover does.
    pub fn multi_host_url(&self) -> String {
        url(&[self.primary_port, self.standby_port])
    }

    /// Waits until the standby has replayed everything the primary has written so far.
    pub async fn wait_replayed(&self) {
        let mut primary = PgConnection::connect_with(&self.primary_options())
            .await
            .expect("connect to the primary");
        let (lsn,): (String,) = sqlx::query_as("SELECT pg_current_wal_insert_lsn()::text")
            .fetch_one(&mut primary)
            .await
            .unwrap();
        let mut standby = PgConnection::connect_with(&self.standby_options())
            .await
            .expect("connect to the standby");
        for _ in 0..3000 {
            let (caught_up,): (bool,) = sqlx::query_as(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
            )
            .bind(&lsn)
            .fetch_one(&mut standby)
            .await
            .unwrap();
            if caught_up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the standby did not replay up to {lsn} within 30 s");
    }

    /// Stops the primary the way a crash does: SIGKILL, nothing flushed or handed over.
    pub async fn kill_primary(&mut self) {
        let primary = self.primary.take().expect("the primary is running");
        let pid = nix::unistd::Pid::from_raw(primary.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        // Its children notice the postmaster is gone and exit; dropping the handle reaps it.
        tokio::task::spawn_blocking(move || drop(primary))
            .await
            .unwrap();
    }

    /// Stops the standby (a fast shutdown).
    pub async fn stop_standby(&mut self) {
        let standby = self.standby.take().expect("the standby is running");
        tokio::task::spawn_blocking(move || standby.stop())
            .await
            .unwrap()
            .expect("the standby stops");
    }

    /// Promotes the standby to a primary and waits until it accepts writes.
    pub async fn promote_standby(&self) {
        let mut standby = PgConnection::connect_with(&self.standby_options())
            .await
            .expect("connect to the standby");
        let (promoted,): (bool,) = sqlx::query_as("SELECT pg_promote(wait => true)")
            .fetch_one(&mut standby)
            .await
            .unwrap();
        assert!(promoted, "pg_promote did not finish within its minute");
    }

    async fn wait_for_standby(&self) {
        let mut standby = PgConnection::connect_with(&self.standby_options())
            .await
            .expect("connect to the standby");
        let (in_recovery,): (bool,) = sqlx::query_as("SELECT pg_is_in_recovery()")
            .fetch_one(&mut standby)
            .await
            .unwrap();
        assert!(in_recovery, "the copy should be a standby");
        for _ in 0..3000 {
            let streaming: Option<(String,)> =
                sqlx::query_as("SELECT status FROM pg_stat_wal_receiver")
                    .fetch_optional(&mut standby)
                    .await
                    .unwrap();
            if streaming.is_some_and(|(status,)| status == "streaming") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the standby did not start streaming within 30 s");
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        drop(self.standby.take());
        drop(self.primary.take());
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn tcp_options(port: u16) -> PgConnectOptions {
    PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username(embedded::SUPERUSER)
        .database("postgres")
}

fn url(ports: &[u16]) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!(
        "postgres://{}@{}/{DATABASE}",
        embedded::SUPERUSER,
        hosts.join(",")
    )
}

/// A TCP port nobody listens on at the moment (the kernel's choice for port 0).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_server(dir: PathBuf, port: u16) -> EmbeddedPostgres {
    let options = EmbeddedOptions {
        durable: false,
        port: Some(port),
        ..Default::default()
    };
    tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir, &options))
        .await
        .unwrap()
        .expect("a server of the pair starts")
}

/// `pg_basebackup -R` of the primary into `<dir>/postgres`, as the user the servers run as.
async fn base_backup(primary_port: u16, dir: &Path, uid: u32, gid: u32) {
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(
        dir,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap();
    let program = embedded::server_program("pg_basebackup").expect("pg_basebackup");
    let mut command = Command::new(program);
    command
        .args(["--host", "127.0.0.1", "--port", &primary_port.to_string()])
        .args(["--username", embedded::SUPERUSER])
        .arg("--pgdata")
        .arg(dir.join("postgres"))
        // -R writes standby.signal and primary_conninfo; fast checkpoint: no wait for one.
        .args(["--write-recovery-conf", "--checkpoint=fast", "--no-sync"])
        .current_dir(dir)
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGDATABASE");
    if nix::unistd::Uid::effective().is_root() {
        command.uid(uid).gid(gid);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run pg_basebackup");
    assert!(
        output.status.success(),
        "pg_basebackup failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_standby_streams_from_the_primary_and_takes_writes_once_promoted() {
    // Arrange
    let mut pair = Pair::start().await;
    let mut primary = PgConnection::connect(&pair.primary_url()).await.unwrap();
    sqlx::query("CREATE TABLE pair_probe (v int)")
        .execute(&mut primary)
        .await
        .unwrap();
    sqlx::query("INSERT INTO pair_probe VALUES (1)")
        .execute(&mut primary)
        .await
        .unwrap();
    drop(primary);

    // Act
    pair.wait_replayed().await;
    let mut standby = PgConnection::connect(&pair.standby_url()).await.unwrap();
    let (seen,): (i64,) = sqlx::query_as("SELECT count(*) FROM pair_probe")
        .fetch_one(&mut standby)
        .await
        .unwrap();
    let refused = sqlx::query("INSERT INTO pair_probe VALUES (2)")
        .execute(&mut standby)
        .await
        .unwrap_err();
    pair.kill_primary().await;
    pair.promote_standby().await;
    sqlx::query("INSERT INTO pair_probe VALUES (3)")
        .execute(&mut standby)
        .await
        .unwrap();

    // Assert
    assert_eq!(seen, 1, "the row written on the primary is on the standby");
    assert!(
        refused.to_string().contains("read-only transaction"),
        "{refused}"
    );
    let (after,): (i64,) = sqlx::query_as("SELECT count(*) FROM pair_probe")
        .fetch_one(&mut standby)
        .await
        .unwrap();
    assert_eq!(after, 2, "the promoted standby takes writes");
    // A libpq-style client given both hosts now lands on the promoted one.
    let (client, connection) = tokio_postgres::connect(
        &format!("{}?target_session_attrs=read-write", pair.multi_host_url()),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), i32::from(pair.standby_port));
    assert!(!row.get::<_, bool>(1));
    pair.stop_standby().await;
}
