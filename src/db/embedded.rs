//! A private PostgreSQL cluster, started from the machine's server binaries.
//!
//! With no `DATABASE_URL`, Hearth runs its own cluster in `<data dir>/postgres` so that a fresh
//! machine needs nothing set up by hand. The cluster listens on a Unix socket inside that folder
//! and on no TCP port (unless [`EmbeddedOptions::port`] asks for one), so it never clashes with a system server or with another test run.
//!
//! Life cycle, and why each step is there:
//!
//! 1. Lock `<data dir>/hearth.lock`: one Hearth process per data dir. Holding the lock also
//!    tells us that any postmaster still running in this data dir was orphaned by a Hearth that
//!    crashed, so it is safe to stop it.
//! 2. `initdb` into a scratch folder renamed into place once complete, so an interrupted first
//!    start never leaves a half-made cluster behind.
//! 3. Recover from a crash: a `postmaster.pid` whose process is gone (or is some other program
//!    that reused the pid, common in containers) is removed; left-over server processes of this
//!    data dir are stopped.
//! 4. Start `postgres` in its own process group, so a Ctrl-C in the terminal reaches Hearth only
//!    and Hearth decides when the database stops (after in-flight requests are done).
//! 5. Wait for `ready` in `postmaster.pid`, the signal `pg_ctl -w` waits for too.
//!
//! When Hearth runs as root (containers, CI), PostgreSQL refuses to, so `initdb` and `postgres`
//! run as the `postgres` user (else `nobody`) and the cluster folder is owned by that user.
//!
//! Everything here is blocking (process spawning and short polls); async callers use
//! `spawn_blocking`.

use std::{
    ffi::OsStr,
    fs,
    io::{self, Read, Seek, SeekFrom},
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::signal::{Signal, kill},
    unistd::{Gid, Pid, Uid, User, chown},
};
use sqlx::postgres::PgConnectOptions;

/// The superuser `initdb` creates; Hearth connects as it over the private socket.
pub const SUPERUSER: &str = "hearth";

/// Unix socket paths are limited to 107 bytes on Linux (`sun_path` is 108 with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How the embedded cluster is started.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// `false` turns off fsync and full-page writes: much faster for throw-away clusters
    /// (tests, benchmarks); a crash of the machine (not of the process) can then lose data.
    pub durable: bool,
    /// Longest wait for the server to accept connections.
    pub startup_timeout: Duration,
    /// Also listen on 127.0.0.1 at this TCP port, and name the socket after it. `None` (the
    /// default): the private Unix socket only. Replication and failover tests need servers
    /// that a URL can name side by side (`postgres://127.0.0.1:p1,127.0.0.1:p2/...`), and a
    /// standby made by `pg_basebackup` connects to its primary over it.
    pub port: Option<u16>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            durable: true,
            startup_timeout: Duration::from_secs(60),
            port: None,
        }
    }
}

/// PostgreSQL's own default port, which also names the socket file when no port is given.
const DEFAULT_PORT: u16 = 5432;

/// Why the embedded cluster could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH, via `pg_config --bindir` \
         or in /usr/lib/postgresql/*/bin. Install them (Debian/Ubuntu: `apt-get install postgresql`) \
         or set DATABASE_URL to use a running server."
    )]
    BinariesNotFound,
    #[error(
        "data dir {0} is in use by another hearth process. Run one process per data dir, or point \
         several at one server with DATABASE_URL."
    )]
    Locked(PathBuf),
    #[error(
        "{path} is owned by uid {owner}, but the embedded server runs as uid {expected} ({user}); \
         use a data dir of your own (HEARTH_DATA_DIR) or fix its ownership"
    )]
    WrongOwner {
        path: PathBuf,
        owner: u32,
        expected: u32,
        user: String,
    },
    #[error(
        "the database socket path {0} is longer than Unix sockets allow (107 bytes); use a shorter HEARTH_DATA_DIR"
    )]
    SocketPathTooLong(PathBuf),
    #[error(
        "user {user} cannot enter {path}, which holds the data dir; give it search permission (chmod o+x) or use another HEARTH_DATA_DIR"
    )]
    NotTraversable { user: String, path: PathBuf },
    #[error("`{command}` failed ({status}):\n{output}")]
    CommandFailed {
        command: String,
        status: String,
        output: String,
    },
    #[error("PostgreSQL exited during start-up ({status}); its log {log} ends with:\n{tail}")]
    Exited {
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "PostgreSQL did not accept connections within {timeout:?}; its log {log} ends with:\n{tail}"
    )]
    StartTimeout {
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "the disk holding {path} is full: {detail}. Free some space, or set HEARTH_DATA_DIR to a folder on another disk"
    )]
    DiskFull { path: PathBuf, detail: String },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

/// What PostgreSQL and initdb print (through strerror) when a write meets a full disk.
const NO_SPACE: &str = "No space left on device";

/// The message of the line of `output` that reports a full disk, if one does, without the
/// timestamp and pid that PostgreSQL puts before its severity.
fn disk_full_line(output: &str) -> Option<String> {
    let line = output.lines().find(|line| line.contains(NO_SPACE))?;
    let message = ["FATAL:", "PANIC:", "ERROR:"]
        .iter()
        .find_map(|severity| line.find(severity).map(|at| &line[at..]))
        .unwrap_or(line);
    Some(message.trim().to_owned())
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}

/// The OS user the server processes run as.
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: Uid,
    gid: Gid,
    /// Set when we are root and must switch to `uid`/`gid` for the server processes.
    switch: bool,
}

impl RunAs {
    fn detect() -> Result<Self, EmbeddedError> {
        let euid = Uid::effective();
        if !euid.is_root() {
            let name = User::from_uid(euid)
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| euid.to_string());
            return Ok(Self {
                name,
                uid: euid,
                gid: Gid::effective(),
                switch: false,
            });
        }
        for candidate in ["postgres", "nobody"] {
            if let Ok(Some(user)) = User::from_name(candidate) {
                return Ok(Self {
                    name: user.name,
                    uid: user.uid,
                    gid: user.gid,
                    switch: true,
                });
            }
        }
        Err(EmbeddedError::Io {
            context: "running as root, but neither a `postgres` nor a `nobody` user exists to run PostgreSQL as".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        })
    }

    fn apply(&self, command: &mut Command) {
        if self.switch {
            command.uid(self.uid.as_raw()).gid(self.gid.as_raw());
        }
    }

    /// Whether this user may enter (search) a directory with the given metadata.
    fn can_enter(&self, meta: &fs::Metadata) -> bool {
        let mode = meta.mode();
        if meta.uid() == self.uid.as_raw() {
            mode & 0o100 != 0
        } else if meta.gid() == self.gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
    }
}

/// A running embedded cluster. Dropping it stops the server.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    pgdata: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    port: u16,
    // Held for as long as the cluster runs; the OS releases it if the process dies.
    _lock: fs::File,
}

impl EmbeddedPostgres {
    /// Starts (creating on first use) the cluster in `<data_dir>/postgres`.
    #[tracing::instrument(skip(options), fields(data_dir = %data_dir.display()))]
    pub fn start(data_dir: &Path, options: &EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let bin_dir = find_bin_dir(
            std::env::var_os("PATH").as_deref(),
            Path::new("/usr/lib/postgresql"),
        )?;
        let run_as = RunAs::detect()?;

        if data_dir.exists() && !data_dir.is_dir() {
            return Err(EmbeddedError::Io {
                context: format!(
                    "the data dir {} is a file, not a folder: set HEARTH_DATA_DIR to a folder",
                    data_dir.display()
                ),
                source: io::Error::from(io::ErrorKind::NotADirectory),
            });
        }
        fs::create_dir_all(data_dir).map_err(io_err(format!(
            "cannot create data dir {} (set HEARTH_DATA_DIR to a writable folder)",
            data_dir.display()
        )))?;
        let data_dir = data_dir.canonicalize().map_err(io_err(format!(
            "cannot resolve data dir {}",
            data_dir.display()
        )))?;
        let lock = lock_data_dir(&data_dir)?;

        let pgdata = data_dir.join("postgres");
        let port = options.port.unwrap_or(DEFAULT_PORT);
        let socket = pgdata.join(format!(".s.PGSQL.{port}"));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(EmbeddedError::SocketPathTooLong(socket));
        }
        if run_as.switch {
            make_reachable(&data_dir, &run_as)?;
        }

        if !pgdata.join("PG_VERSION").exists() {
            init_cluster(&bin_dir, &data_dir, &pgdata, &run_as, options)?;
        }
        check_owner(&pgdata, &run_as)?;
        recover_from_crash(&pgdata)?;

        let log = data_dir.join("postgres.log");
        let child = spawn_postgres(&bin_dir, &data_dir, &pgdata, &log, &run_as, options)?;
        let mut cluster = Self {
            data_dir,
            pgdata,
            log,
            child: Some(child),
            port,
            _lock: lock,
        };
        cluster.wait_until_ready(options.startup_timeout)?;
        tracing::info!(pid = cluster.pid(), socket_dir = %cluster.pgdata.display(), "embedded PostgreSQL is ready");
        Ok(cluster)
    }

    /// Connection options for the `postgres` maintenance database over the private socket.
    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.pgdata)
            .port(self.port)
            .username(SUPERUSER)
            .database("postgres")
    }

    /// The folder holding the cluster's files (`PGDATA`).
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// The folder holding the cluster, its log and lock.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Process id of the postmaster.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Stops the server with a fast shutdown (active sessions are ended, data is flushed) and
    /// waits for it to exit.
    pub fn stop(mut self) -> Result<(), EmbeddedError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), EmbeddedError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(child.id() as i32);
        // SIGINT is PostgreSQL's "fast" shutdown; SIGQUIT its "immediate" one, kept as a fallback.
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child
                .try_wait()
                .map_err(io_err("cannot wait for PostgreSQL"))?
            {
                Some(status) => {
                    tracing::info!(%status, "embedded PostgreSQL stopped");
                    return Ok(());
                }
                None if Instant::now() > deadline => {
                    tracing::warn!("embedded PostgreSQL ignored fast shutdown; sending SIGQUIT");
                    let _ = kill(pid, Signal::SIGQUIT);
                    child.wait().map_err(io_err("cannot wait for PostgreSQL"))?;
                    return Ok(());
                }
                None => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn wait_until_ready(&mut self, timeout: Duration) -> Result<(), EmbeddedError> {
        let deadline = Instant::now() + timeout;
        let pidfile = self.pgdata.join("postmaster.pid");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child
                    .try_wait()
                    .map_err(io_err("cannot wait for PostgreSQL"))?
            {
                self.child = None;
                let tail = log_tail(&self.log);
                if let Some(detail) = disk_full_line(&tail) {
                    return Err(EmbeddedError::DiskFull {
                        path: self.data_dir.clone(),
                        detail,
                    });
                }
                return Err(EmbeddedError::Exited {
                    status: status.to_string(),
                    log: self.log.clone(),
                    tail,
                });
            }
            if let Ok(text) = fs::read_to_string(&pidfile)
                && accepts_connections(&text)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let tail = log_tail(&self.log);
                let _ = self.shutdown();
                return Err(EmbeddedError::StartTimeout {
                    timeout,
                    log: self.log.clone(),
                    tail,
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "could not stop embedded PostgreSQL");
        }
    }
}

/// Connection options for a cluster that another Hearth process in `data_dir` is running, if
/// it is up. Lets `hearth migrate` and `hearth createuser` work next to a running server.
pub fn attach(data_dir: &Path) -> Option<PgConnectOptions> {
    let pgdata = data_dir.canonicalize().ok()?.join("postgres");
    let status = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    accepts_connections(&status).then(|| {
        PgConnectOptions::new()
            .socket(&pgdata)
            .username(SUPERUSER)
            .database("postgres")
    })
}

/// A PostgreSQL program of the same installation as the server binaries the embedded cluster
/// uses (`pg_basebackup`, `pg_ctl`, ...): found beside the real `postgres`, after following
/// symlinks, since a `postgres` on `PATH` may be a link into a versioned folder.
pub fn server_program(name: &str) -> Result<PathBuf, EmbeddedError> {
    let bin_dir = find_bin_dir(
        std::env::var_os("PATH").as_deref(),
        Path::new("/usr/lib/postgresql"),
    )?;
    let beside = |dir: &Path| Some(dir.join(name)).filter(|path| path.is_file());
    beside(&bin_dir)
        .or_else(|| {
            let real = bin_dir.join("postgres").canonicalize().ok()?;
            beside(real.parent()?)
        })
        .ok_or(EmbeddedError::BinariesNotFound)
}

/// Whether a `postmaster.pid`'s text says the server accepts connections: its 8th line is the
/// status, "ready" for a primary and "standby" for a hot standby (one made by `pg_basebackup`).
fn accepts_connections(postmaster_pid: &str) -> bool {
    matches!(
        postmaster_pid.lines().nth(7).map(str::trim),
        Some("ready" | "standby")
    )
}

/// Finds the folder holding `initdb` and `postgres`: on `PATH`, then `pg_config --bindir`, then
/// the newest `<lib_root>/<major>/bin` (Debian's layout).
fn find_bin_dir(path: Option<&OsStr>, lib_root: &Path) -> Result<PathBuf, EmbeddedError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let on_path = path
        .into_iter()
        .flat_map(std::env::split_paths)
        .find(|dir| has_server(dir));
    if let Some(dir) = on_path {
        return Ok(dir);
    }
    let pg_config = path
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("pg_config"))
        .find(|p| p.is_file())
        .and_then(|pg_config| Command::new(pg_config).arg("--bindir").output().ok())
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    if let Some(dir) = pg_config.filter(|dir| has_server(dir)) {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(lib_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_server(bin))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(EmbeddedError::BinariesNotFound)
}

fn lock_data_dir(data_dir: &Path) -> Result<fs::File, EmbeddedError> {
    let path = data_dir.join("hearth.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("cannot open {}", path.display())))?;
    // A lock can outlive its holder by a moment: a child forked by any thread of the
    // process that held it shares the open file until that child execs. So a busy lock is
    // tried again for a little while before it counts as held by another process.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(EmbeddedError::Locked(data_dir.to_path_buf()));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(io_err(format!("cannot lock {}", path.display()))(e));
            }
        }
    }
}

/// As root, the server user must be able to walk down to the cluster folder.
fn make_reachable(data_dir: &Path, run_as: &RunAs) -> Result<(), EmbeddedError> {
    // The data dir is ours: let others search it (not list it) so the server user can enter.
    let meta =
        fs::metadata(data_dir).map_err(io_err(format!("cannot read {}", data_dir.display())))?;
    if !run_as.can_enter(&meta) {
        let mut perms = meta.permissions();
        perms.set_mode(perms.mode() | 0o001);
        fs::set_permissions(data_dir, perms)
            .map_err(io_err(format!("cannot chmod {}", data_dir.display())))?;
    }
    for ancestor in data_dir.ancestors().skip(1) {
        let meta = fs::metadata(ancestor)
            .map_err(io_err(format!("cannot read {}", ancestor.display())))?;
        if !run_as.can_enter(&meta) {
            return Err(EmbeddedError::NotTraversable {
                user: run_as.name.clone(),
                path: ancestor.to_path_buf(),
            });
        }
    }
    Ok(())
}

fn check_owner(pgdata: &Path, run_as: &RunAs) -> Result<(), EmbeddedError> {
    let meta = fs::metadata(pgdata).map_err(io_err(format!("cannot read {}", pgdata.display())))?;
    if meta.uid() != run_as.uid.as_raw() {
        return Err(EmbeddedError::WrongOwner {
            path: pgdata.to_path_buf(),
            owner: meta.uid(),
            expected: run_as.uid.as_raw(),
            user: run_as.name.clone(),
        });
    }
    Ok(())
}

fn init_cluster(
    bin_dir: &Path,
    data_dir: &Path,
    pgdata: &Path,
    run_as: &RunAs,
    options: &EmbeddedOptions,
) -> Result<(), EmbeddedError> {
    if pgdata.exists() {
        let empty = fs::read_dir(pgdata)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(EmbeddedError::Io {
                context: format!(
                    "{} exists but holds no PostgreSQL cluster (no PG_VERSION); move it away so a new one can be created",
                    pgdata.display()
                ),
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        }
        fs::remove_dir(pgdata)
            .map_err(io_err(format!("cannot remove empty {}", pgdata.display())))?;
    }
    let scratch = data_dir.join("postgres.initdb");
    if scratch.exists() {
        fs::remove_dir_all(&scratch).map_err(io_err(format!(
            "cannot remove leftover {}",
            scratch.display()
        )))?;
    }
    fs::create_dir(&scratch).map_err(io_err(format!("cannot create {}", scratch.display())))?;
    fs::set_permissions(&scratch, fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("cannot chmod {}", scratch.display())))?;
    if run_as.switch {
        chown(&scratch, Some(run_as.uid), Some(run_as.gid)).map_err(|e| {
            io_err(format!(
                "cannot give {} to {}",
                scratch.display(),
                run_as.name
            ))(e.into())
        })?;
    }

    tracing::info!(pgdata = %pgdata.display(), user = %run_as.name, "creating embedded PostgreSQL cluster");
    let mut initdb = Command::new(bin_dir.join("initdb"));
    initdb
        .arg("--pgdata")
        .arg(&scratch)
        .args([
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
        ])
        .current_dir(data_dir);
    if !options.durable {
        initdb.arg("--no-sync");
    }
    clean_env(&mut initdb);
    run_as.apply(&mut initdb);
    let output = initdb.output().map_err(io_err("cannot run initdb"))?;
    if !output.status.success() {
        let status = output.status.to_string();
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // A half-written cluster is of no use, and on a full disk it holds the space that the
        // next start needs.
        if let Err(e) = fs::remove_dir_all(&scratch) {
            tracing::warn!(error = %e, path = %scratch.display(), "cannot remove the failed initdb's folder");
        }
        if let Some(detail) = disk_full_line(&output) {
            return Err(EmbeddedError::DiskFull {
                path: data_dir.to_owned(),
                detail,
            });
        }
        return Err(EmbeddedError::CommandFailed {
            command: "initdb".into(),
            status,
            output,
        });
    }
    fs::rename(&scratch, pgdata).map_err(io_err(format!(
        "cannot move the new cluster to {}",
        pgdata.display()
    )))
}

/// PG* variables of the caller's shell (PGDATA, PGPORT, ...) must not steer our private server.
fn clean_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            command.env_remove(key);
        }
    }
}

/// Clears what a crashed run left: a stale `postmaster.pid`, or server processes still running
/// in this data dir (we hold the data dir lock, so no live Hearth owns them).
fn recover_from_crash(pgdata: &Path) -> Result<(), EmbeddedError> {
    let pidfile = pgdata.join("postmaster.pid");
    let Ok(text) = fs::read_to_string(&pidfile) else {
        return Ok(());
    };
    let recorded = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok());
    match recorded {
        Some(pid) if process_cwd(pid).as_deref() == Some(pgdata) => {
            tracing::warn!(
                pid,
                "an orphaned PostgreSQL from an earlier run is still running in this data dir; stopping it"
            );
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
            if !wait_gone(&[pid], Duration::from_secs(30)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
                wait_gone(&[pid], Duration::from_secs(5));
            }
        }
        _ => {
            tracing::warn!(?recorded, "removing stale postmaster.pid left by a crash");
            fs::remove_file(&pidfile)
                .map_err(io_err(format!("cannot remove {}", pidfile.display())))?;
        }
    }
    // Backends of a killed postmaster exit on their own once they notice; give them a moment,
    // then make sure, because they keep the old shared memory block that blocks a new server.
    let leftovers = processes_in(pgdata);
    if !leftovers.is_empty() && !wait_gone(&leftovers, Duration::from_secs(5)) {
        for pid in processes_in(pgdata) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
        }
        wait_gone(&leftovers, Duration::from_secs(10));
    }
    Ok(())
}

fn process_cwd(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// Every process whose working directory is `dir` (PostgreSQL processes chdir to their PGDATA).
fn processes_in(dir: &Path) -> Vec<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| process_cwd(pid).as_deref() == Some(dir))
        .collect()
}

fn wait_gone(pids: &[i32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let alive = pids
            .iter()
            .any(|&pid| !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH)));
        if !alive {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_postgres(
    bin_dir: &Path,
    data_dir: &Path,
    pgdata: &Path,
    log: &Path,
    run_as: &RunAs,
    options: &EmbeddedOptions,
) -> Result<Child, EmbeddedError> {
    let log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(format!("cannot open {}", log.display())))?;
    let log_err = log_file
        .try_clone()
        .map_err(io_err("cannot duplicate the log handle"))?;

    let mut postgres = Command::new(bin_dir.join("postgres"));
    postgres
        .arg("-D")
        .arg(pgdata)
        .arg("-c")
        .arg(match options.port {
            Some(_) => "listen_addresses=127.0.0.1",
            None => "listen_addresses=",
        })
        .arg("-c")
        .arg(format!("port={}", options.port.unwrap_or(DEFAULT_PORT)))
        .arg("-c")
        .arg(format!("unix_socket_directories={}", pgdata.display()))
        .args(["-c", "unix_socket_permissions=0700"])
        .current_dir(data_dir)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        // Own process group: a terminal's Ctrl-C goes to Hearth, which stops the server last.
        .process_group(0);
    if !options.durable {
        // Commits still reach the OS before they return, so a killed server loses nothing;
        // only a crash of the whole machine could.
        postgres.args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
    }
    clean_env(&mut postgres);
    run_as.apply(&mut postgres);
    postgres.spawn().map_err(io_err(format!(
        "cannot start {}",
        bin_dir.join("postgres").display()
    )))
}

/// The last few lines of the server log, for error messages.
fn log_tail(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(log) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(2000)));
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_recognised_in_initdb_and_server_output() {
        let initdb = "running bootstrap script ... 2026-11-29 20:50:04.815 UTC [3556] FATAL:  could not write to file \"pg_wal/xlogtemp.3556\": No space left on device\nchild process exited with exit code 1";
        assert_eq!(
            disk_full_line(initdb).as_deref(),
            Some(
                "FATAL:  could not write to file \"pg_wal/xlogtemp.3556\": No space left on device"
            )
        );
        assert_eq!(
            disk_full_line("could not create directory \"x\": No space left on device\n")
                .as_deref(),
            Some("could not create directory \"x\": No space left on device")
        );
        assert_eq!(
            disk_full_line("FATAL:  lock file \"postmaster.pid\" already exists"),
            None
        );
    }

    #[test]
    fn a_hot_standby_accepts_connections_as_a_primary_does() {
        let pidfile = |status: &str| format!("123\n/data\n1\n5432\n/data\n\n1 2\n{status}\n");
        assert!(accepts_connections(&pidfile("ready   ")));
        assert!(accepts_connections(&pidfile("standby ")));
        assert!(!accepts_connections(&pidfile("starting")));
        assert!(!accepts_connections(&pidfile("stopping")));
        assert!(!accepts_connections("123\n/data\n"));
    }

    #[test]
    fn missing_binaries_is_a_clear_error() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_bin_dir(Some(empty.path().as_os_str()), empty.path()).unwrap_err();
        assert!(matches!(err, EmbeddedError::BinariesNotFound));
        assert!(err.to_string().contains("DATABASE_URL"));
    }

    #[test]
    fn picks_the_newest_versioned_bin_dir() {
        let root = tempfile::tempdir().unwrap();
        for major in ["9", "15", "13"] {
            let bin = root.path().join(major).join("bin");
            fs::create_dir_all(&bin).unwrap();
            fs::write(bin.join("initdb"), "").unwrap();
            fs::write(bin.join("postgres"), "").unwrap();
        }
        let found = find_bin_dir(Some(OsStr::new("")), root.path()).unwrap();
        assert_eq!(found, root.path().join("15").join("bin"));
    }
}
