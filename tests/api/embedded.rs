//! The embedded cluster: restart on the same data dir, recovery after a crash, exclusivity.

use std::{fs, path::Path, process::Command};

use hearth::db::embedded::{EmbeddedError, EmbeddedOptions, EmbeddedPostgres};
use nix::{
    sys::signal::{Signal, kill},
    unistd::{Pid, Uid},
};
use sqlx::{Connection, PgConnection};

fn options() -> EmbeddedOptions {
    EmbeddedOptions {
        durable: false,
        ..Default::default()
    }
}

/// Runs async database work from a blocking test (the cluster API itself is blocking).
fn with_db<T>(pg: &EmbeddedPostgres, sql: &'static str) -> T
where
    T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let options = pg.connect_options();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let mut conn = PgConnection::connect_with(&options).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(
                "CREATE TABLE IF NOT EXISTS marks (n int)",
            ))
            .execute(&mut conn)
            .await
            .unwrap();
            sqlx::query_scalar::<_, T>(sql)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        })
}

fn postgres_processes_in(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|e| fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&dir)))
        .count()
}

#[test]
fn start_stop_start_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();

    let pg = EmbeddedPostgres::start(dir.path(), &options()).unwrap();
    let inserted: i32 = with_db(&pg, "INSERT INTO marks VALUES (42) RETURNING n");
    pg.stop().unwrap();
    assert_eq!(
        postgres_processes_in(dir.path()),
        0,
        "stop leaves no server process"
    );

    let pg = EmbeddedPostgres::start(dir.path(), &options()).unwrap();
    let read: i32 = with_db(&pg, "SELECT n FROM marks");
    assert_eq!((inserted, read), (42, 42));
    assert!(dir.path().join("postgres.log").exists());
}

#[test]
fn a_second_process_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _pg = EmbeddedPostgres::start(dir.path(), &options()).unwrap();

    let err = EmbeddedPostgres::start(dir.path(), &options()).unwrap_err();

    assert!(matches!(err, EmbeddedError::Locked(_)), "{err}");
    assert!(err.to_string().contains("in use by another hearth process"));
    assert!(
        hearth::db::embedded::attach(dir.path()).is_some(),
        "admin commands can attach instead"
    );
}

#[test]
fn starts_after_the_server_was_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pg = EmbeddedPostgres::start(dir.path(), &options()).unwrap();
    let _: i32 = with_db(&pg, "INSERT INTO marks VALUES (7) RETURNING n");

    // A crash: the postmaster dies without cleaning up (its pid file and its backends remain).
    kill(Pid::from_raw(pg.pid() as i32), Signal::SIGKILL).unwrap();
    drop(pg);
    assert!(
        dir.path().join("postgres/postmaster.pid").exists(),
        "the crash left a pid file"
    );

    let pg = EmbeddedPostgres::start(dir.path(), &options()).unwrap();
    let read: i32 = with_db(&pg, "SELECT n FROM marks");
    assert_eq!(read, 7);
}

#[test]
fn a_stale_pid_file_naming_another_live_process_is_cleared() {
    let dir = tempfile::tempdir().unwrap();
    EmbeddedPostgres::start(dir.path(), &options())
        .unwrap()
        .stop()
        .unwrap();
    // In a container the old pid is often reused by an unrelated program.
    let mut unrelated = Command::new("sleep").arg("600").spawn().unwrap();
    let pidfile = dir.path().join("postgres/postmaster.pid");
    fs::write(
        &pidfile,
        format!(
            "{}\n{}\n",
            unrelated.id(),
            dir.path().join("postgres").display()
        ),
    )
    .unwrap();

    let pg = EmbeddedPostgres::start(dir.path(), &options());

    let still_running = unrelated.try_wait().unwrap().is_none();
    unrelated.kill().unwrap();
    unrelated.wait().unwrap();
    let pg = pg.unwrap();
    assert!(still_running, "the unrelated process is left alone");
    let one: i32 = with_db(&pg, "SELECT 1");
    assert_eq!(one, 1);
}

#[test]
fn a_cluster_owned_by_someone_else_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("postgres");
    fs::create_dir(&pgdata).unwrap();
    fs::write(pgdata.join("PG_VERSION"), "15\n").unwrap();
    if !Uid::effective().is_root() {
        eprintln!("skipped: only root can give a folder to another user");
        return;
    }
    nix::unistd::chown(&pgdata, Some(Uid::from_raw(54321)), None).unwrap();

    let err = EmbeddedPostgres::start(dir.path(), &options()).unwrap_err();

    assert!(
        matches!(err, EmbeddedError::WrongOwner { owner: 54321, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("is owned by uid 54321"));
}
