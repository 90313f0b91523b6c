//! The real `hearth` binary: embedded start, serving, admin commands next to a running server,
//! graceful shutdown on SIGTERM with no PostgreSQL left behind.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;

fn hearth(data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hearth"));
    command
        .env_remove("DATABASE_URL")
        .env("HEARTH_DATA_DIR", data_dir)
        .env("HEARTH_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "info");
    command
}

/// Starts `hearth serve` and returns it with the address it announced.
/// A server's log lines: those before it announced its address, and a stream of the rest.
pub(crate) struct Log {
    startup: Vec<String>,
    rest: mpsc::Receiver<String>,
}

impl Log {
    /// Waits up to `within` for a line containing `text` (those logged before included).
    pub(crate) fn find(&mut self, text: &str, within: std::time::Duration) -> Option<String> {
        if let Some(line) = self.startup.iter().find(|l| l.contains(text)) {
            return Some(line.clone());
        }
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            let line = self.rest.recv_timeout(left).ok()?;
            self.startup.push(line.clone());
            if line.contains(text) {
                return Some(line);
            }
        }
    }

    fn all(self) -> Vec<String> {
        // Blocks until the server closed its stderr, so call it after the server exited.
        self.startup.into_iter().chain(self.rest.iter()).collect()
    }
}

fn serve(data_dir: &Path) -> (Server, String, Log) {
    serve_with(hearth(data_dir))
}

/// A running `hearth serve`, stopped when dropped unless it has exited already, so a failing
/// assertion never leaves a server behind (the harness would wait for its output forever):
/// SIGTERM first, so an embedded cluster is stopped with it, then SIGKILL after ten seconds.
pub(crate) struct Server(Child);

impl std::ops::Deref for Server {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
        for _ in 0..100 {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command serve` and returns it with the address it announced and its log lines.
pub(crate) fn serve_with(mut command: Command) -> (Server, String, Log) {
    let mut child = Server(command.arg("serve").stderr(Stdio::piped()).spawn().unwrap());
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut startup = Vec::new();
    let address = loop {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("hearth announces its address");
        if let Some(at) = line.find("listening on http://") {
            break line[at + "listening on ".len()..].trim().to_string();
        }
        startup.push(line);
    };
    (
        child,
        address,
        Log {
            startup,
            rest: lines,
        },
    )
}

async fn status_of(client: &reqwest::Client, url: &str) -> StatusCode {
    client.get(url).send().await.expect("GET").status()
}

fn server_processes_in(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&dir)))
        .count()
}

#[tokio::test]
async fn serve_createuser_migrate_status_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, address, lines) = serve(dir.path());
    let client = crate::helpers::client();

    assert_eq!(
        status_of(&client, &format!("{address}/readyz")).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(&client, &format!("{address}/")).await,
        StatusCode::OK
    );

    // Admin commands work next to the running server (they attach to its cluster).
    let mut createuser = hearth(dir.path())
        .args(["createuser", "root_admin", "--admin", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    createuser
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let created = createuser.wait_with_output().unwrap();
    assert!(created.status.success());
    assert!(String::from_utf8_lossy(&created.stdout).contains("created user root_admin"));

    let status = hearth(dir.path())
        .args(["migrate", "--status"])
        .output()
        .unwrap();
    assert!(status.status.success());
    let listing = String::from_utf8_lossy(&status.stdout);
    assert!(
        listing.contains("applied") && listing.contains("0 pending"),
        "{listing}"
    );

    let browser = crate::helpers::client();
    let login_page = browser
        .get(format!("{address}/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = login_page.find(r#"name="csrf-token" content=""#).unwrap() + 27;
    let token = &login_page[at..at + 64];
    let login = browser
        .post(format!("{address}/login"))
        .form(&[
            ("username", "root_admin"),
            ("password", "correct horse"),
            ("csrf_token", token),
        ])
        .send()
        .await
        .unwrap();
    assert!(
        login.status().is_redirection(),
        "the created user can log in: {}",
        login.status()
    );

    kill(Pid::from_raw(server.id() as i32), Signal::SIGTERM).unwrap();
    let exit = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap()
        .unwrap();

    assert!(exit.success(), "exit code 0 after SIGTERM, got {exit}");
    let log = lines.all();
    assert!(
        log.iter()
            .any(|l| l.contains("embedded PostgreSQL stopped")),
        "{log:#?}"
    );
    assert_eq!(
        server_processes_in(&dir.path().join("postgres")),
        0,
        "no PostgreSQL left behind"
    );
}

#[test]
fn version_flag_prints_the_version() {
    let output = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("--version")
        .output()
        .unwrap();

    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("hearth {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn migrate_against_an_unreachable_database_fails_with_a_json_log_line() {
    let dir = tempfile::tempdir().unwrap();

    let output = hearth(dir.path())
        .env(
            "DATABASE_URL",
            "postgres://nobody:hunter2@127.0.0.1:1/nothing",
        )
        .env("HEARTH_DB_ACQUIRE_TIMEOUT", "1s")
        .args(["--log-json", "migrate"])
        .output()
        .unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot apply migrations"), "{stderr}");
    // (A WARN may come first: the start-up pooler check could not connect either.)
    let errors = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|event| event["level"] == "ERROR")
        .count();
    assert!(errors > 0, "an ERROR as a JSON log line: {stderr}");
}

#[tokio::test]
async fn serve_keeps_serving_while_the_database_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = hearth(dir.path());
    command
        .env(
            "DATABASE_URL",
            "postgres://nobody:hunter2@127.0.0.1:1/nothing",
        )
        .env("HEARTH_DB_ACQUIRE_TIMEOUT", "1s");
    let (mut server, address, lines) = serve_with(command);
    let client = crate::helpers::client();

    assert_eq!(
        status_of(&client, &format!("{address}/healthz")).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(&client, &format!("{address}/readyz")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status_of(&client, &format!("{address}/")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    kill(Pid::from_raw(server.id() as i32), Signal::SIGTERM).unwrap();
    let exit = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
    let log = lines.all();
    assert!(log.iter().any(|l| l.contains("serving anyway")), "{log:#?}");
    assert!(
        log.iter().all(|l| !l.contains("hunter2")),
        "the password never reaches the log"
    );
}

#[test]
fn schedules_from_config_are_listed_and_unknown_kinds_refused() {
    let dir = tempfile::tempdir().unwrap();

    let listed = hearth(dir.path())
        .env(
            "HEARTH_SCHEDULES",
            "nightly|cron:0 3 * * *|Europe/Paris|noop|{}",
        )
        .args(["jobs", "schedules"])
        .output()
        .unwrap();
    let refused = hearth(dir.path())
        .env("HEARTH_SCHEDULES", "nightly|every:1h||no_such_kind|{}")
        .args(["jobs", "schedules"])
        .output()
        .unwrap();

    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        out.contains("nightly") && out.contains("Europe/Paris") && out.contains("next 20"),
        "{out}"
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("job kind \"no_such_kind\", which no app registers")
    );
}

#[tokio::test]
async fn two_servers_on_one_database_deliver_each_others_messages() {
    use hearth::web::{
        auth::{NewPassword, Username, create_user},
        hashing::Hasher,
        session,
        testing::WsClient,
    };
    let (name, options) = crate::helpers::migrated_database().await;
    let url = crate::helpers::database_url(&name);
    // Two members of the lobby, signed in (their sessions are rows both servers read).
    let pool = sqlx::PgPool::connect_with(options).await.unwrap();
    let slot = Hasher::new(1, 0).enter().unwrap();
    let password = NewPassword::parse("two servers, one database").unwrap();
    let mut cookies = Vec::new();
    for who in ["ada", "bob"] {
        let user = create_user(
            &pool,
            &slot,
            &Username::parse(who).unwrap(),
            &password,
            false,
        )
        .await
        .unwrap();
        let token = session::create(&pool, user.id, std::time::Duration::from_secs(600), None)
            .await
            .unwrap();
        cookies.push(format!("{}={token}", session::COOKIE));
    }
    let start = |dir: &Path| {
        let mut command = hearth(dir);
        command.env("DATABASE_URL", &url).env(
            "HEARTH_SECRET_KEY",
            "a shared secret key that is long enough",
        );
        serve_with(command)
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, address_a, _log_a) = start(dir_a.path());
    let (mut b, address_b, _log_b) = start(dir_b.path());
    let lobby = |address: &str, cookie: &str| {
        let url = format!(
            "ws://{}/ws/rooms/lobby",
            address.trim_start_matches("http://")
        );
        WsClient::build(url).cookie(cookie.to_owned()).connect()
    };
    let mut on_a = lobby(&address_a, &cookies[0]).await.unwrap();
    let mut on_b = lobby(&address_b, &cookies[1]).await.unwrap();
    on_a.recv_type("hello").await.unwrap();
    on_b.recv_type("hello").await.unwrap();

    let say = |body: &str| serde_json::json!({"type": "send", "body": body});
    on_b.send_json(&say("from B")).await.unwrap();
    for socket in [&mut on_a, &mut on_b] {
        let heard = socket.recv_type("chat.message").await.unwrap();
        assert_eq!(heard["message"]["body"], "from B");
    }
    on_a.send_json(&say("from A")).await.unwrap();
    let heard = on_b.recv_type("chat.message").await.unwrap();
    assert_eq!(heard["message"]["body"], "from A");

    // SIGTERM closes A's sockets with "going away" and A exits cleanly.
    kill(Pid::from_raw(a.id() as i32), Signal::SIGTERM).unwrap();
    let (code, _) = on_a.expect_close().await.unwrap();
    assert_eq!(code, hearth::web::ws::close_code::GOING_AWAY);
    assert!(a.wait().unwrap().success());
    kill(Pid::from_raw(b.id() as i32), Signal::SIGTERM).unwrap();
    assert!(b.wait().unwrap().success());
}

#[tokio::test]
async fn cache_stats_and_clear_on_the_command_line() {
    let app = crate::helpers::TestApp::spawn().await;
    let name = app.db_options.get_database().unwrap().to_owned();
    let url = crate::helpers::database_url(&name);
    let cache = &app.state.cache;
    cache
        .set("kept", &1, hearth::cache::Timeout::Never)
        .await
        .unwrap();
    cache
        .set("other", &2, hearth::cache::Timeout::Never)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = hearth(dir.path())
            .env("DATABASE_URL", &url)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };

    let stats: serde_json::Value = serde_json::from_str(&run(&["cache", "stats"])).unwrap();
    assert_eq!(stats["shared_entries"], 2);
    assert_eq!(
        run(&["cache", "clear", "--prefix", ":1:kept"]).trim(),
        "1 entries deleted"
    );
    assert_eq!(cache.get::<i32>("other").await.unwrap(), Some(2));
    let mut gone = false;
    for _ in 0..50 {
        if cache.get::<i32>("kept").await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone, "the running instance dropped its in-process copy");
    assert_eq!(run(&["cache", "clear"]).trim(), "1 entries deleted");
}

/// `kill -9` of one of two instances under load: the other rescues its running jobs once
/// their lease runs out, drops its presence entries after missed heartbeats, and its socket
/// clients reconnect to the survivor and get what they missed.
#[tokio::test]
async fn a_killed_instance_s_jobs_presence_and_clients_move_to_the_survivor() {
    use hearth::{
        jobs::{Enqueue, control},
        web::{
            auth::{NewPassword, Username, create_user},
            hashing::Hasher,
            session,
            testing::WsClient,
        },
    };
    use std::time::Duration;

    // Arrange: a database with two users and their sessions, two servers on it.
    let (name, options) = crate::helpers::migrated_database().await;
    let url = crate::helpers::database_url(&name);
    let pool = sqlx::PgPool::connect_with(options).await.unwrap();
    let mut cookies = Vec::new();
    let slot = Hasher::new(1, 0).enter().unwrap();
    for username in ["ada", "bob"] {
        let user = create_user(
            &pool,
            &slot,
            &Username::parse(username).unwrap(),
            &NewPassword::parse("correct horse battery").unwrap(),
            false,
        )
        .await
        .unwrap();
        let token = session::create(&pool, user.id, Duration::from_secs(3600), None)
            .await
            .unwrap();
        cookies.push(format!("{}={token}", session::COOKIE));
    }
    let start = |dir: &Path| {
        let mut command = hearth(dir);
        command
            .env("DATABASE_URL", &url)
            .env("HEARTH_QUEUES", "default:2")
            .env("HEARTH_JOB_LEASE", "2s")
            .env("HEARTH_JOB_POLL_INTERVAL", "200ms")
            .env("RUST_LOG", "warn,hearth=info")
            .env(
                "HEARTH_SECRET_KEY",
                "a shared secret key that is long enough",
            );
        serve_with(command)
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, address_a, _log_a) = start(dir_a.path());
    let (mut b, address_b, _log_b) = start(dir_b.path());
    let ws = |address: &str, query: &str, cookie: &str| {
        WsClient::build(format!(
            "ws://{}/ws/rooms/lobby{query}",
            address.trim_start_matches("http://")
        ))
        .cookie(cookie.to_owned())
        .connect()
    };
    // Presence leaves after three missed heartbeats: up to 20 s.
    let next_of_type = async |socket: &mut WsClient, kind: &str| {
        socket
            .recv_type_within(kind, Duration::from_secs(40))
            .await
            .unwrap()
    };
    let mut ada = ws(&address_a, "", &cookies[0]).await.unwrap();
    let hello = next_of_type(&mut ada, "hello").await;
    let last_seen = hello["messages"]
        .as_array()
        .and_then(|m| m.last())
        .map_or(0, |m| m["id"].as_i64().unwrap());
    let mut bob = ws(&address_b, "", &cookies[1]).await.unwrap();
    let hello = next_of_type(&mut bob, "hello").await;
    let ada_channel = hello["presence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["username"] == "ada")
        .expect("bob, on B, sees ada, on A")["channel"]
        .clone();
    // Four 4-second jobs: each instance runs two.
    let mut jobs = Vec::new();
    for _ in 0..4 {
        let job = Enqueue::new(&hearth::jobs::builtin::Sleep { ms: 4000 })
            .unwrap()
            .enqueue(&pool)
            .await
            .unwrap();
        jobs.push(job.id);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let running: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if running == 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the jobs did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Act: A dies without a word.
    kill(Pid::from_raw(a.id() as i32), Signal::SIGKILL).unwrap();
    a.wait().unwrap();
    bob.send_json(&serde_json::json!({"type": "send", "body": "while A was gone"}))
        .await
        .unwrap();
    // Stored once bob sees it broadcast.
    assert_eq!(
        next_of_type(&mut bob, "chat.message").await["message"]["body"],
        "while A was gone"
    );

    // Assert: ada's client reconnects to B and gets what she missed...
    let mut ada = ws(&address_b, &format!("?last_id={last_seen}"), &cookies[0])
        .await
        .unwrap();
    let hello = next_of_type(&mut ada, "hello").await;
    assert!(
        hello["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["body"] == "while A was gone"),
        "{hello}"
    );
    // ...A's presence entry goes (after three missed heartbeats)...
    let left = loop {
        let frame = next_of_type(&mut bob, "presence.leave").await;
        if frame["channel"] == ada_channel {
            break frame;
        }
    };
    assert_eq!(left["username"], "ada");
    // ...and every job completes: A's two after their lease ran out, on B.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    for id in jobs {
        loop {
            let status = control::status(&pool, id).await.unwrap().unwrap();
            if status.state == "completed" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} is {}",
                status.state
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let rescued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs_done WHERE kind = 'sleep' AND attempt > 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rescued, 2, "A's two jobs ran again on B");

    kill(Pid::from_raw(b.id() as i32), Signal::SIGTERM).unwrap();
    assert!(b.wait().unwrap().success());
}

#[test]
fn an_unusable_data_dir_is_one_clear_error_not_a_crash_loop() {
    // A file where the folder should be, and a folder on a read-only file system.
    let file = tempfile::NamedTempFile::new().unwrap();
    for (dir, expected) in [
        (file.path(), "is a file, not a folder"),
        (Path::new("/proc/hearth-data"), "cannot create data dir"),
    ] {
        let output = hearth(dir).arg("serve").output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(stderr.contains("HEARTH_DATA_DIR"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A small tmpfs mounted for one test, unmounted when dropped. Needs root (CI runs as root).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=1777"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Writes zeros until the file system refuses with ENOSPC.
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.path().join("filler")).unwrap();
        let block = vec![0u8; 64 << 10];
        let error = loop {
            if let Err(e) = filler.write_all(&block) {
                break e;
            }
        };
        assert_eq!(error.kind(), std::io::ErrorKind::StorageFull, "{error}");
        // What fits in less than a block.
        let _ = filler.write_all(&block[..4096]);
        let _ = filler.write_all(&block[..512]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// The run of `hearth <args>` on a full disk: exits 1 once, says the disk is full and where.
fn assert_fails_on_a_full_disk(data_dir: &Path, args: &[&str]) {
    let output = hearth(data_dir).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is full"), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(stderr.contains(&*data_dir.to_string_lossy()), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        server_processes_in(data_dir),
        0,
        "no PostgreSQL left behind"
    );
}

#[test]
fn a_full_disk_at_start_is_one_clear_error_and_space_freed_is_enough() {
    let (Some(empty), Some(used)) = (Tmpfs::mount("4m"), Tmpfs::mount("96m")) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };

    // Too small for a new cluster: initdb fails, and its half-written folder is removed.
    let data_dir = empty.path().join("data");
    assert_fails_on_a_full_disk(&data_dir, &["serve"]);
    assert!(!data_dir.join("postgres.initdb").exists());
    assert!(!data_dir.join("postgres").exists());

    // A working cluster whose disk has filled up since.
    let data_dir = used.path().join("data");
    let migrate = hearth(&data_dir).arg("migrate").output().unwrap();
    assert!(migrate.status.success(), "{migrate:?}");
    used.fill();
    assert_fails_on_a_full_disk(&data_dir, &["serve"]);

    // Once space is freed the same data dir serves again, nothing lost.
    std::fs::remove_file(used.path().join("filler")).unwrap();
    let status = hearth(&data_dir)
        .args(["migrate", "--status"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
}

/// Every socket is a descriptor: `serve` raises its soft limit on open files to the hard one
/// and says how many clients fit, so a server started under the usual 1,024 holds more.
#[tokio::test]
async fn serve_raises_its_open_files_limit_to_the_hard_one_and_says_so() {
    use std::os::unix::process::CommandExt;
    let (name, _) = crate::helpers::migrated_database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = hearth(dir.path());
    command.env("DATABASE_URL", crate::helpers::database_url(&name));
    // SAFETY: setrlimit is async-signal-safe, and nothing else runs in the forked child.
    unsafe {
        command.pre_exec(|| {
            use nix::sys::resource::{Resource, getrlimit, setrlimit};
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
            setrlimit(Resource::RLIMIT_NOFILE, 512.min(hard), hard)?;
            Ok(())
        });
    }

    let (server, _address, log) = serve_with(command);

    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.id())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(open_files[3], open_files[4], "soft = hard: {limits}");
    let said = log
        .startup
        .iter()
        .find(|l| l.contains("open files:"))
        .expect("the start says how many files it may open");
    assert!(said.contains("raised from 512"), "{said}");
    assert!(said.contains("client connections"), "{said}");
}
