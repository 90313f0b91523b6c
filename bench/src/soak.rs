//! `hearth bench soak`: a long run of mixed traffic against a `hearth serve` child process,
//! watching the server's memory and file descriptors for growth.
//!
//! The server runs as a child (`<binary> serve` with the benchmark routes, on a free port, on
//! the configured database or the embedded one), so the memory and descriptors sampled from
//! `/proc/<pid>` are the server's alone. Everything is driven open-loop, at fixed rates
//! whatever the answers take:
//!
//! * **pages**: `--rate` views per second, in turn anonymous (home, post list and post page,
//!   page-cached), signed-in (the same pages uncached, notifications, chat rooms, uploads) and
//!   the benchmark pages (`/bench/page`, one query; `/bench/cached`, the page cache);
//! * **chat**: `--rooms` rooms of the chat app, `--chatters` signed-in members each on the room
//!   socket, each sending `--chat-rate` messages per second; every member (the sender too) must
//!   receive every message of its room;
//! * **event streams**: `--sse-clients` listeners on `/bench/events`, a publisher at
//!   `--event-rate`; every listener must receive every event. Listeners reconnect every
//!   `--reconnect-every` with `Last-Event-ID`, so the replay path is soaked too;
//! * **jobs**: `--job-rate` CSV imports per second (`POST /uploads`, one published post each):
//!   every import job must complete, and its "import" notification must reach the importer's
//!   open notification stream;
//! * **socket churn**: `--ws-churn` short-lived WebSockets per second to a benchmark chat room
//!   (connect, one message there and back, close), so connection set-up and tear-down is
//!   soaked as well as long-lived sockets.
//!
//! After `--duration` the load stops; messages, events and jobs in flight get `--drain` to
//! arrive, then whatever has not is counted lost. The report (JSON, and an SVG chart of RSS and
//! descriptors over time) goes to `--out`: errors by kind, lost messages/events/jobs,
//! latency percentiles per kind, and RSS and descriptors over the steady state (from
//! `--warmup` on) with a growth verdict comparing its second half with its first. The command
//! fails when anything erred or was lost.
//!
//! Run it on a scratch database: it creates throwaway users (deleted at the end, with their
//! posts and uploads), chat rooms and messages.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    future::Future,
    io::{BufRead, BufReader, IsTerminal},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{StatusCode, header};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{
    Message, client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig,
};
use tokio_util::sync::CancellationToken;

use hearth::{
    config::Config,
    db::Database,
    jobs::control,
    text::{Slug, Title},
    web::csrf,
};

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// How long to drive load (`10m`, `90s`).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Page views per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Chat rooms.
    #[arg(long, default_value_t = 3)]
    pub rooms: usize,
    /// Members of each room on its socket (one user each).
    #[arg(long, default_value_t = 4)]
    pub chatters: usize,
    /// Messages per second each member sends (the app allows 10 per 10 s per user).
    #[arg(long = "chat-rate", default_value_t = 0.5)]
    pub chat_rate: f64,
    /// Listeners on the benchmark event stream.
    #[arg(long = "sse-clients", default_value_t = 10)]
    pub sse_clients: usize,
    /// Events per second published to the stream.
    #[arg(long = "event-rate", default_value_t = 5.0)]
    pub event_rate: f64,
    /// CSV imports (one job each) per second.
    #[arg(long = "job-rate", default_value_t = 1.0)]
    pub job_rate: f64,
    /// Short-lived WebSockets per second.
    #[arg(long = "ws-churn", default_value_t = 1.0)]
    pub ws_churn: f64,
    /// Event-stream listeners reconnect (with `Last-Event-ID`) this often.
    #[arg(long = "reconnect-every", default_value = "60s", value_parser = humantime::parse_duration)]
    pub reconnect_every: Duration,
    /// The server's memory and descriptors are sampled this often.
    #[arg(long = "sample-every", default_value = "5s", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,
    /// The steady state starts this long after the load does.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// How long messages, events and jobs still in flight get to arrive after the load.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// The `hearth` binary to serve with (default: this one).
    #[arg(long)]
    pub server: Option<PathBuf>,
    /// Folder the JSON report and the SVG chart are written to.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

/// `hearth bench soak`: runs, writes the report and the chart, and fails if anything erred or
/// was lost.
pub async fn run(config: Config, args: SoakArgs) -> anyhow::Result<()> {
    let report = soak(&config, &args).await?;
    let (json_path, svg_path) = write(&report, &args.out)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("{}", report.summary());
    eprintln!(
        "report: {}\nchart:  {}",
        json_path.display(),
        svg_path.display()
    );
    anyhow::ensure!(
        report.error_count == 0 && report.lost() == 0,
        "the soak saw {} errors and lost {} messages, events or jobs",
        report.error_count,
        report.lost()
    );
    Ok(())
}

/// Writes `soak-<UTC time>.json` and `.svg` into `out`; returns their paths.
pub fn write(report: &Report, out: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let stem = format!("soak-{}", report.started_at);
    let json_path = out.join(format!("{stem}.json"));
    let svg_path = out.join(format!("{stem}.svg"));
    std::fs::write(&json_path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    std::fs::write(&svg_path, chart(report))
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    Ok((json_path, svg_path))
}

/// Runs the soak and returns its report (the caller decides what failing means).
pub async fn soak(config: &Config, args: &SoakArgs) -> anyhow::Result<Report> {
    let binary = match &args.server {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find this program's path")?,
    };
    let started_at = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let mut server = Server::start(config, &binary).await?;
    // Opened after the server: with the embedded cluster, the server runs it and this attaches.
    let db = Database::open(&config.db, true)
        .await
        .context("cannot open the database")?;
    let prefix = format!("sk{}", hex::encode(rand::random::<[u8; 3]>()));
    let outcome = drive(&server, &db.pool, &prefix, args).await;
    let cleanup = sqlx::query("DELETE FROM users WHERE username LIKE $1 || '%'")
        .bind(&prefix)
        .execute(&db.pool)
        .await
        .context("cannot delete the soak's users");
    db.close().await?;
    let exit = server.stop().await;
    let (run, samples) = outcome?;
    cleanup?;
    Ok(Report::new(started_at, args, &server, exit, run, samples))
}

// ---------------------------------------------------------------------------------------------
// The server under test.

struct Server {
    child: Option<Child>,
    pid: u32,
    binary: PathBuf,
    /// `127.0.0.1:<port>`.
    address: String,
    log: Arc<Mutex<ServerLog>>,
}

/// The server's warnings and errors, counted from its log.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ServerLog {
    pub warnings: u64,
    pub errors: u64,
    /// The first few of them.
    pub samples: Vec<String>,
}

impl Server {
    async fn start(config: &Config, binary: &Path) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .env("HEARTH_BIND", "127.0.0.1:0")
            .env("HEARTH_DATA_DIR", &config.db.data_dir)
            .env("RUST_LOG", "warn,hearth=info")
            .env_remove("HEARTH_LOG_JSON")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match &config.db.database_url {
            Some(url) => command.env("DATABASE_URL", url),
            None => command.env_remove("DATABASE_URL"),
        };
        if let Some(key) = &config.sessions.secret_key {
            command.env("HEARTH_SECRET_KEY", key);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id();
        let stderr = child.stderr.take().context("the server has no stderr")?;
        let log = Arc::new(Mutex::new(ServerLog::default()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let counts = log.clone();
        std::thread::spawn(move || {
            let mut address_tx = Some(address_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on http://") {
                    if let Some(tx) = address_tx.take() {
                        let _ =
                            tx.send(line[at + "listening on http://".len()..].trim().to_owned());
                    }
                    continue;
                }
                let mut log = counts.lock().expect("not poisoned");
                if line.contains(" ERROR ") {
                    log.errors += 1;
                } else if line.contains(" WARN ") {
                    log.warnings += 1;
                } else {
                    continue;
                }
                if log.samples.len() < 10 {
                    log.samples.push(line);
                }
            }
        });
        let mut server = Self {
            child: Some(child),
            pid,
            binary: binary.to_owned(),
            address: String::new(),
            log,
        };
        let announced =
            tokio::task::spawn_blocking(move || address_rx.recv_timeout(Duration::from_secs(120)))
                .await?;
        server.address = announced.map_err(|_| {
            let log = server.log.lock().expect("not poisoned").samples.join("\n");
            anyhow::anyhow!("the server did not announce its address within 120 s\n{log}")
        })?;
        Ok(server)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.address)
    }

    /// SIGTERM, then waits up to a minute for the exit; returns how it ended.
    async fn stop(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return "not running".into();
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let waited = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => return status.to_string(),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Ok(None) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return "killed: no exit within 60 s of SIGTERM".into();
                    }
                    Err(e) => return format!("cannot wait for the server: {e}"),
                }
            }
        })
        .await;
        waited.unwrap_or_else(|e| format!("cannot wait for the server: {e}"))
    }
}

impl Drop for Server {
    /// A soak that failed half-way leaves no server behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `/proc/<pid>`: resident memory (KiB), open descriptors and threads.
fn probe(pid: u32) -> (u64, u64, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (crate::ws::rss_kib(pid), fds, threads)
}

// ---------------------------------------------------------------------------------------------
// What the load saw.

/// Operations, errors by kind and latencies by kind, shared by every load task.
#[derive(Default)]
struct Stats {
    ops: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    error_samples: Mutex<Vec<String>>,
    latencies: Mutex<HashMap<&'static str, Vec<Duration>>>,
}

impl Stats {
    fn ok(&self, kind: &'static str, took: Duration) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.latencies
            .lock()
            .expect("not poisoned")
            .entry(kind)
            .or_default()
            .push(took);
    }

    /// Counts an error under `kind`; `detail` is kept for the first few.
    fn error(&self, kind: impl Into<String>, detail: impl std::fmt::Display) {
        let kind = kind.into();
        let mut samples = self.error_samples.lock().expect("not poisoned");
        if samples.len() < 20 {
            samples.push(format!("{kind}: {detail}"));
        }
        *self
            .errors
            .lock()
            .expect("not poisoned")
            .entry(kind)
            .or_default() += 1;
    }

    fn error_count(&self) -> u64 {
        self.errors.lock().expect("not poisoned").values().sum()
    }

    /// A reqwest failure, by what went wrong rather than its full text.
    fn http_error(&self, kind: &str, e: &reqwest::Error) {
        let what = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect"
        } else if e.is_body() || e.is_decode() {
            "body"
        } else {
            "request"
        };
        self.error(format!("{kind}: {what}"), e);
    }
}

/// Messages (or events) that each of several receivers must get: how many were sent, how many
/// deliveries that makes, and how many distinct ones arrived.
#[derive(Default)]
struct Fanout {
    sent: AtomicU64,
    expected: AtomicU64,
    received: AtomicU64,
    duplicates: AtomicU64,
}

impl Fanout {
    fn missing(&self) -> u64 {
        let expected = self.expected.load(Ordering::Relaxed);
        expected.saturating_sub(self.received.load(Ordering::Relaxed))
    }

    fn totals(&self) -> Delivery {
        let expected = self.expected.load(Ordering::Relaxed);
        let received = self.received.load(Ordering::Relaxed);
        Delivery {
            sent: self.sent.load(Ordering::Relaxed),
            expected,
            received,
            lost: expected.saturating_sub(received),
            duplicates: self.duplicates.load(Ordering::Relaxed),
        }
    }
}

/// One signed-in user: the session and CSRF cookies, and the CSRF token for headers.
#[derive(Clone)]
struct Visitor {
    cookie: String,
    csrf: String,
}

/// What every load task shares.
struct Ctx {
    stats: Stats,
    http: reqwest::Client,
    /// Without a total timeout: event streams never end by themselves.
    streaming: reqwest::Client,
    base: String,
    ws_base: String,
    /// The load generators stop at this.
    load_stop: CancellationToken,
    /// Receivers (sockets, streams, the job checker) stop at this, after the drain.
    drain_stop: CancellationToken,
    chat: Fanout,
    events: Fanout,
    notifications: Fanout,
    jobs: Jobs,
}

#[derive(Default)]
struct Jobs {
    enqueued: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    /// Job ids not yet finished, with the index of the user who enqueued them.
    outstanding: Mutex<Vec<(i64, usize)>>,
    /// Completed imports per job user: the notifications each user's stream must receive.
    completed_by: Mutex<Vec<u64>>,
}

// ---------------------------------------------------------------------------------------------
// The run.

/// What [`drive`] measured, besides the samples.
struct Run {
    load_s: f64,
    stats: Stats,
    chat: Delivery,
    events: Delivery,
    notifications: Delivery,
    jobs: JobTotals,
}

/// One reading of the server's process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    /// Operations and errors so far.
    pub ops: u64,
    pub errors: u64,
}

async fn drive(
    server: &Server,
    pool: &PgPool,
    prefix: &str,
    args: &SoakArgs,
) -> anyhow::Result<(Run, Vec<Sample>)> {
    anyhow::ensure!(
        args.rooms == 0 || args.chatters >= 1,
        "--chatters must be at least 1"
    );
    // Idle connections are dropped before the server's keep-alive limit
    // (`HEARTH_HEADER_READ_TIMEOUT`, 10 s by default) closes them under a reused request.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let streaming = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let ctx = Arc::new(Ctx {
        stats: Stats::default(),
        http,
        streaming,
        base: server.url(""),
        ws_base: server.ws_url(""),
        load_stop: CancellationToken::new(),
        drain_stop: CancellationToken::new(),
        chat: Fanout::default(),
        events: Fanout::default(),
        notifications: Fanout::default(),
        jobs: Jobs::default(),
    });

    // Users: one for signed-in pages (it also creates the rooms), two importers, the chatters.
    const JOB_USERS: usize = 2;
    let chatters = args.rooms * args.chatters;
    let sessions = crate::docs::users(pool, prefix, 1 + JOB_USERS + chatters).await?;
    let mut visitors = Vec::with_capacity(sessions.len());
    for (_, session) in &sessions {
        visitors.push(sign_in(&ctx, session).await?);
    }
    let reader = visitors[0].clone();
    let importers: Vec<Visitor> = visitors[1..=JOB_USERS].to_vec();
    let members = &visitors[1 + JOB_USERS..];
    *ctx.jobs.completed_by.lock().expect("not poisoned") = vec![0; JOB_USERS];

    // A published post to view, through the import path the load uses.
    let title = format!("Soak {prefix} first post");
    let slug = Slug::from_title(&Title::parse(&title).map_err(anyhow::Error::msg)?);
    let job = import(&ctx, &importers[0], &title).await?;
    wait_for_job(pool, job).await?;
    let post = format!("/posts/{}", slug.as_str());

    let mut rooms = Vec::with_capacity(args.rooms);
    for i in 0..args.rooms {
        rooms.push(create_room(&ctx, &reader, &format!("Soak {prefix} room {i}")).await?);
    }

    let mut receivers = JoinSet::new();
    let mut generators = JoinSet::new();

    // Chat: every member of every room joins before anyone sends, so each must receive every
    // message of its room. The writers stop sending with the load but keep their socket open
    // until the drain is over.
    let mut sockets = Vec::with_capacity(chatters);
    for (r, slug) in rooms.iter().enumerate() {
        for m in 0..args.chatters {
            let member = &members[r * args.chatters + m];
            sockets.push((r, m, join_room(&ctx, slug, &member.cookie).await?));
        }
    }
    let rooms: Vec<Arc<Room>> = (0..args.rooms)
        .map(|_| {
            Arc::new(Room {
                members: args.chatters as u64,
                ..Room::default()
            })
        })
        .collect();
    for (i, (r, m, socket)) in sockets.into_iter().enumerate() {
        let (sink, stream) = socket.split();
        receivers.spawn(chat_reader(ctx.clone(), rooms[r].clone(), stream));
        // Senders start spread over one period, not all at once.
        let offset = i as f64 / (chatters as f64 * args.chat_rate);
        receivers.spawn(chat_writer(
            ctx.clone(),
            rooms[r].clone(),
            sink,
            format!("{r}.{m}"),
            args.chat_rate,
            offset,
        ));
    }

    // Event streams: the listeners, then the importers' notification streams.
    let sent_events: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let mut connected = Vec::new();
    for _ in 0..args.sse_clients {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        connected.push(ready);
        let sent = sent_events.clone();
        let mut seen = HashSet::new();
        let events_ctx = ctx.clone();
        receivers.spawn(listen(
            ctx.clone(),
            "/bench/events",
            None,
            "sse.bench_events",
            args.reconnect_every,
            ready_tx,
            move |_, event, data| {
                if event != "bench.message" {
                    return;
                }
                let seq = serde_json::from_str::<Value>(data)
                    .ok()
                    .and_then(|v| v["message"].as_str()?.parse::<u64>().ok());
                let Some(seq) = seq else {
                    events_ctx.stats.error("sse.malformed", data);
                    return;
                };
                let at = sent.lock().expect("not poisoned").get(&seq).copied();
                if let Some(at) = at {
                    if seen.insert(seq) {
                        events_ctx.stats.ok("sse.event_delivery", at.elapsed());
                        events_ctx.events.received.fetch_add(1, Ordering::Relaxed);
                    } else {
                        events_ctx.events.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                }
            },
        ));
    }
    for importer in &importers {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        connected.push(ready);
        let mut seen = HashSet::new();
        let notes_ctx = ctx.clone();
        receivers.spawn(listen(
            ctx.clone(),
            "/notifications/stream",
            Some(importer.cookie.clone()),
            "sse.notifications",
            args.reconnect_every,
            ready_tx,
            move |id, event, _| {
                if event != "notification.new" {
                    return;
                }
                if seen.insert(id.to_owned()) {
                    notes_ctx
                        .notifications
                        .received
                        .fetch_add(1, Ordering::Relaxed);
                } else {
                    notes_ctx
                        .notifications
                        .duplicates
                        .fetch_add(1, Ordering::Relaxed);
                }
            },
        ));
    }
    for ready in connected {
        ready
            .await
            .context("an event stream could not connect at the start")?;
    }
    receivers.spawn(check_jobs(ctx.clone(), pool.clone()));

    // The load, open-loop.
    let pages = page_mix(&post);
    let started = Instant::now();
    {
        let ctx = ctx.clone();
        generators.spawn(at_rate(ctx.clone(), args.rate, move |k| {
            let (kind, path, signed_in) = &pages[k as usize % pages.len()];
            let cookie = signed_in.then(|| reader.cookie.clone());
            view(ctx.clone(), kind, path.clone(), cookie)
        }));
    }
    {
        let ctx = ctx.clone();
        let sent = sent_events.clone();
        let listeners = args.sse_clients as u64;
        generators.spawn(at_rate(ctx.clone(), args.event_rate, move |seq| {
            publish(ctx.clone(), sent.clone(), seq, listeners)
        }));
    }
    {
        let ctx = ctx.clone();
        let prefix = prefix.to_owned();
        generators.spawn(at_rate(ctx.clone(), args.job_rate, move |k| {
            let user = k as usize % importers.len();
            let (ctx, importer) = (ctx.clone(), importers[user].clone());
            let title = format!("Soak {prefix} import {k}");
            async move {
                if let Ok(job) = import(&ctx, &importer, &title).await {
                    ctx.jobs.enqueued.fetch_add(1, Ordering::Relaxed);
                    ctx.jobs
                        .outstanding
                        .lock()
                        .expect("not poisoned")
                        .push((job, user));
                }
            }
        }));
    }
    {
        let ctx = ctx.clone();
        generators.spawn(at_rate(ctx.clone(), args.ws_churn, move |k| {
            churn(ctx.clone(), k)
        }));
    }

    let mut samples = Vec::new();
    watch(&ctx, server.pid, started, args, &mut samples).await;
    ctx.load_stop.cancel();
    while let Some(done) = generators.join_next().await {
        if let Err(e) = done {
            ctx.stats.error("soak.task", e);
        }
    }
    let load_s = started.elapsed().as_secs_f64();

    // The drain: what is still in flight gets `--drain` to arrive.
    let drain_until = Instant::now() + args.drain;
    loop {
        let notifications_due: u64 = ctx
            .jobs
            .completed_by
            .lock()
            .expect("not poisoned")
            .iter()
            .sum();
        // Each completed import's notification is due on its importer's stream.
        ctx.notifications
            .sent
            .store(notifications_due, Ordering::Relaxed);
        ctx.notifications
            .expected
            .store(notifications_due, Ordering::Relaxed);
        let pending = ctx.chat.missing()
            + ctx.events.missing()
            + ctx.notifications.missing()
            + ctx.jobs.outstanding.lock().expect("not poisoned").len() as u64;
        if pending == 0 || Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    samples.push(sample(&ctx, server.pid, started));
    ctx.drain_stop.cancel();
    while let Some(done) = receivers.join_next().await {
        if let Err(e) = done {
            ctx.stats.error("soak.task", e);
        }
    }
    let ctx = Arc::try_unwrap(ctx).map_err(|_| anyhow::anyhow!("a load task outlived the soak"))?;
    let jobs = JobTotals {
        enqueued: ctx.jobs.enqueued.load(Ordering::Relaxed),
        completed: ctx.jobs.completed.load(Ordering::Relaxed),
        failed: ctx.jobs.failed.load(Ordering::Relaxed),
        lost: ctx.jobs.outstanding.lock().expect("not poisoned").len() as u64,
    };
    Ok((
        Run {
            load_s,
            chat: ctx.chat.totals(),
            events: ctx.events.totals(),
            notifications: ctx.notifications.totals(),
            jobs,
            stats: ctx.stats,
        },
        samples,
    ))
}

fn sample(ctx: &Ctx, pid: u32, started: Instant) -> Sample {
    let (rss_kib, fds, threads) = probe(pid);
    Sample {
        t_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        rss_kib,
        fds,
        threads,
        ops: ctx.stats.ops.load(Ordering::Relaxed),
        errors: ctx.stats.error_count(),
    }
}

/// Samples the server every `--sample-every` until `--duration` is over, with a progress line
/// every second (every 30 s as a plain line when stderr is not a terminal).
async fn watch(ctx: &Ctx, pid: u32, started: Instant, args: &SoakArgs, samples: &mut Vec<Sample>) {
    let total = args.duration.as_secs().max(1);
    let terminal = std::io::stderr().is_terminal();
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("soak {bar:30} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut next_sample = started;
    let mut next_line = started + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    samples.push(sample(ctx, pid, started));
    next_sample += args.sample_every;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let done = now >= started + args.duration;
        if now >= next_sample || done {
            samples.push(sample(ctx, pid, started));
            next_sample += args.sample_every;
        }
        let last = samples.last().copied().unwrap_or(Sample {
            t_s: 0.0,
            rss_kib: 0,
            fds: 0,
            threads: 0,
            ops: 0,
            errors: 0,
        });
        let elapsed = started.elapsed();
        let line = format!(
            "{}/{} · {} ops · {} errors · RSS {:.1} MiB · {} fds · {} threads · jobs {}/{}",
            clock(elapsed),
            clock(args.duration),
            ctx.stats.ops.load(Ordering::Relaxed),
            ctx.stats.error_count(),
            last.rss_kib as f64 / 1024.0,
            last.fds,
            last.threads,
            ctx.jobs.completed.load(Ordering::Relaxed),
            ctx.jobs.enqueued.load(Ordering::Relaxed),
        );
        if terminal {
            bar.set_position(elapsed.as_secs().min(total));
            bar.set_message(line);
        } else if now >= next_line {
            eprintln!("soak {line}");
            next_line += Duration::from_secs(30);
        }
        if done {
            break;
        }
    }
    bar.finish_and_clear();
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// Calls `make(k)` for k = 0, 1, ... at `rate` per second on an absolute schedule, each on a
/// task of its own (open loop: a slow answer delays nothing), until the load stops; then waits
/// for those in flight.
async fn at_rate<F, Fut>(ctx: Arc<Ctx>, rate: f64, mut make: F)
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    if rate <= 0.0 {
        return;
    }
    let start = tokio::time::Instant::now();
    let mut in_flight = JoinSet::new();
    for k in 0u64.. {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::select! {
            () = ctx.load_stop.cancelled() => break,
            () = tokio::time::sleep_until(due) => {}
        }
        in_flight.spawn(make(k));
        while let Some(done) = in_flight.try_join_next() {
            if let Err(e) = done {
                ctx.stats.error("soak.task", e);
            }
        }
    }
    while let Some(done) = in_flight.join_next().await {
        if let Err(e) = done {
            ctx.stats.error("soak.task", e);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pages.

/// Gets the CSRF cookie and token a signed-in visitor's forms and scripts send.
async fn sign_in(ctx: &Ctx, session: &str) -> anyhow::Result<Visitor> {
    let response = ctx
        .http
        .get(format!("{}/", ctx.base))
        .header(header::COOKIE, session)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == StatusCode::OK,
        "GET / answered {}",
        response.status()
    );
    let csrf_cookie = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{}=", csrf::COOKIE)))
        .and_then(|v| v.split(';').next())
        .context("GET / set no CSRF cookie")?
        .to_owned();
    let page = response.text().await?;
    let marker = r#"name="csrf-token" content=""#;
    let at = page.find(marker).context("the page has no CSRF token")? + marker.len();
    let token = page[at..].split('"').next().unwrap_or_default().to_owned();
    Ok(Visitor {
        cookie: format!("{session}; {csrf_cookie}"),
        csrf: token,
    })
}

/// The page views in turn: (latency kind, path, signed in).
fn page_mix(post: &str) -> Vec<(&'static str, String, bool)> {
    let anonymous = ["/", "/posts", post];
    let signed_in = ["/posts", post, "/notifications", "/chat", "/uploads"];
    let mut mix: Vec<(&'static str, String, bool)> = Vec::new();
    mix.extend(
        anonymous
            .iter()
            .map(|p| ("page.anonymous", (*p).to_owned(), false)),
    );
    mix.push(("page.bench_uncached", "/bench/page".into(), false));
    mix.extend(
        signed_in
            .iter()
            .map(|p| ("page.signed_in", (*p).to_owned(), true)),
    );
    mix.push(("page.bench_cached", "/bench/cached".into(), false));
    mix
}

async fn view(ctx: Arc<Ctx>, kind: &'static str, path: String, cookie: Option<String>) {
    let started = Instant::now();
    let mut request = ctx.http.get(format!("{}{path}", ctx.base));
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return ctx.stats.http_error(kind, &e),
    };
    let status = response.status();
    match response.bytes().await {
        Ok(_) if status == StatusCode::OK => ctx.stats.ok(kind, started.elapsed()),
        Ok(_) => ctx.stats.error(format!("{kind}: {status}"), &path),
        Err(e) => ctx.stats.http_error(kind, &e),
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs.

const BOUNDARY: &str = "hearth-soak-boundary-5e2a";

/// Uploads a one-post CSV (published) and returns the import's job id.
async fn import(ctx: &Ctx, visitor: &Visitor, title: &str) -> anyhow::Result<i64> {
    let csv = format!("title,body,publish\n{title},Imported by the soak.,true\n");
    let body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"soak.csv\"\r\n\
         Content-Type: text/csv\r\n\r\n{csv}\r\n--{BOUNDARY}--\r\n"
    );
    let started = Instant::now();
    let sent = ctx
        .http
        .post(format!("{}/uploads", ctx.base))
        .header(header::COOKIE, &visitor.cookie)
        .header(csrf::HEADER, &visitor.csrf)
        .header(header::ACCEPT, "application/json")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => {
            ctx.stats.http_error("job.upload", &e);
            return Err(e.into());
        }
    };
    let status = response.status();
    let text = match response.text().await {
        Ok(text) => text,
        Err(e) => {
            ctx.stats.http_error("job.upload", &e);
            return Err(e.into());
        }
    };
    let job = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["job_id"].as_i64());
    match job {
        Some(job) if status == StatusCode::ACCEPTED => {
            ctx.stats.ok("job.upload", started.elapsed());
            Ok(job)
        }
        _ => {
            ctx.stats.error(format!("job.upload: {status}"), &text);
            anyhow::bail!("POST /uploads answered {status}: {text}")
        }
    }
}

async fn wait_for_job(pool: &PgPool, job: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = control::status(pool, job).await?.map(|s| s.state);
        match state.as_deref() {
            Some("completed") => return Ok(()),
            Some("discarded" | "cancelled") => anyhow::bail!("the first import job failed"),
            _ if Instant::now() > deadline => {
                anyhow::bail!("the first import job did not complete within 60 s")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Follows the enqueued jobs in the database until the drain ends: a completed one counts
/// its enqueue-to-finish time, a discarded or cancelled one an error.
async fn check_jobs(ctx: Arc<Ctx>, pool: PgPool) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = ctx.drain_stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let jobs = ctx.jobs.outstanding.lock().expect("not poisoned").clone();
        let mut finished = Vec::new();
        for (job, user) in jobs {
            let status = match control::status(&pool, job).await {
                Ok(status) => status,
                Err(e) => {
                    ctx.stats.error("job.status_query", e);
                    continue;
                }
            };
            let Some(status) = status else {
                ctx.stats.error("job.vanished", job);
                finished.push(job);
                continue;
            };
            match status.state.as_str() {
                "completed" => {
                    let took = status
                        .finished_at
                        .map(|done| (done - status.created_at).unsigned_abs())
                        .unwrap_or_default();
                    ctx.stats.ok("job.enqueue_to_done", took);
                    ctx.jobs.completed.fetch_add(1, Ordering::Relaxed);
                    ctx.jobs.completed_by.lock().expect("not poisoned")[user] += 1;
                    finished.push(job);
                }
                "discarded" | "cancelled" => {
                    ctx.stats
                        .error(format!("job.{}", status.state), status.errors);
                    ctx.jobs.failed.fetch_add(1, Ordering::Relaxed);
                    finished.push(job);
                }
                _ => {}
            }
        }
        ctx.jobs
            .outstanding
            .lock()
            .expect("not poisoned")
            .retain(|(job, _)| !finished.contains(job));
    }
}

// ---------------------------------------------------------------------------------------------
// Chat.

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One room's sent messages (by nonce, with their send time) and its member count.
#[derive(Default)]
struct Room {
    sent: Mutex<HashMap<String, Instant>>,
    members: u64,
}

/// Creates a public room through the chat app's form; returns its slug.
async fn create_room(ctx: &Ctx, visitor: &Visitor, name: &str) -> anyhow::Result<String> {
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("name", name)
        .append_pair(csrf::FIELD, &visitor.csrf)
        .finish();
    let response = ctx
        .http
        .post(format!("{}/chat", ctx.base))
        .header(header::COOKIE, &visitor.cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await?;
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| l.strip_prefix("/chat/"))
        .map(str::to_owned);
    location.with_context(|| format!("creating a room answered {}", response.status()))
}

/// Opens the room socket and waits for its `hello`.
async fn join_room(ctx: &Ctx, slug: &str, cookie: &str) -> anyhow::Result<Socket> {
    let mut request = format!("{}/ws/rooms/{slug}", ctx.ws_base).into_client_request()?;
    request
        .headers_mut()
        .insert("cookie", HeaderValue::from_str(cookie)?);
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
    let hello = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = socket.next().await {
            if let Message::Text(text) = frame?
                && serde_json::from_str::<Value>(&text)?["type"] == "hello"
            {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("the room socket closed before its hello")
    })
    .await;
    hello.context("no hello within 10 s")??;
    Ok(socket)
}

async fn chat_writer(
    ctx: Arc<Ctx>,
    room: Arc<Room>,
    mut sink: futures::stream::SplitSink<Socket, Message>,
    member: String,
    rate: f64,
    offset: f64,
) {
    if rate > 0.0 {
        let start = tokio::time::Instant::now() + Duration::from_secs_f64(offset);
        for k in 0u64.. {
            let due = start + Duration::from_secs_f64(k as f64 / rate);
            tokio::select! {
                () = ctx.load_stop.cancelled() => break,
                () = tokio::time::sleep_until(due) => {}
            }
            let nonce = format!("{member}:{k}");
            room.sent
                .lock()
                .expect("not poisoned")
                .insert(nonce.clone(), Instant::now());
            let frame =
                json!({"type": "send", "body": format!("soak message {k}"), "nonce": nonce});
            if let Err(e) = sink.send(Message::text(frame.to_string())).await {
                room.sent.lock().expect("not poisoned").remove(&nonce);
                ctx.stats.error("chat.send", e);
                break;
            }
            ctx.chat.sent.fetch_add(1, Ordering::Relaxed);
            ctx.chat.expected.fetch_add(room.members, Ordering::Relaxed);
        }
    }
    // The socket stays open until the drain is over: its reader still counts deliveries.
    ctx.drain_stop.cancelled().await;
    let _ = sink.close().await;
}

async fn chat_reader(
    ctx: Arc<Ctx>,
    room: Arc<Room>,
    mut stream: futures::stream::SplitStream<Socket>,
) {
    let mut seen = HashSet::new();
    loop {
        // Biased: once the drain is over, the closing handshake's frames are not counted.
        let frame = tokio::select! {
            biased;
            () = ctx.drain_stop.cancelled() => return,
            frame = stream.next() => frame,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(close))) => {
                return ctx
                    .stats
                    .error("chat.closed_by_server", format!("{close:?}"));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return ctx.stats.error("chat.socket", e),
            None => return ctx.stats.error("chat.socket", "ended"),
        };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            ctx.stats.error("chat.malformed", &*text);
            continue;
        };
        match frame["type"].as_str() {
            Some("chat.message") => {
                let Some(nonce) = frame["nonce"].as_str() else {
                    continue;
                };
                let at = room.sent.lock().expect("not poisoned").get(nonce).copied();
                let Some(at) = at else { continue };
                if seen.insert(nonce.to_owned()) {
                    ctx.stats.ok("chat.delivery", at.elapsed());
                    ctx.chat.received.fetch_add(1, Ordering::Relaxed);
                } else {
                    ctx.chat.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some("error") => ctx.stats.error(
                format!(
                    "chat.error_frame: {}",
                    frame["code"].as_str().unwrap_or("?")
                ),
                &frame["message"],
            ),
            _ => {}
        }
    }
}

/// A short-lived socket on a benchmark chat room: connect, send, get it back, close.
async fn churn(ctx: Arc<Ctx>, k: u64) {
    let started = Instant::now();
    let url = format!("{}/ws/chat/soak-churn/", ctx.ws_base);
    let round_trip = tokio::time::timeout(Duration::from_secs(10), async {
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (mut socket, _) =
            tokio_tungstenite::connect_async_with_config(&url, Some(config), true).await?;
        let mine = format!("churn-{k}");
        socket
            .send(Message::text(json!({"message": mine}).to_string()))
            .await?;
        while let Some(frame) = socket.next().await {
            if let Message::Text(text) = frame?
                && serde_json::from_str::<Value>(&text)?["message"] == mine.as_str()
            {
                let _ = socket.close(None).await;
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("the socket closed before the message came back")
    })
    .await;
    match round_trip {
        Ok(Ok(())) => ctx.stats.ok("ws.churn_round_trip", started.elapsed()),
        Ok(Err(e)) => ctx.stats.error("ws.churn", format!("{e:#}")),
        Err(_) => ctx.stats.error("ws.churn: timeout", "no echo within 10 s"),
    }
}

// ---------------------------------------------------------------------------------------------
// Event streams.

/// Publishes event `seq` to the benchmark stream, which `listeners` must each receive.
async fn publish(ctx: Arc<Ctx>, sent: Arc<Mutex<HashMap<u64, Instant>>>, seq: u64, listeners: u64) {
    let started = Instant::now();
    sent.lock().expect("not poisoned").insert(seq, started);
    let response = ctx
        .http
        .post(format!("{}/bench/publish", ctx.base))
        .header(header::CONTENT_TYPE, "application/json")
        .body(json!({"message": seq.to_string()}).to_string())
        .send()
        .await;
    match response {
        Ok(response) if response.status() == StatusCode::NO_CONTENT => {
            ctx.stats.ok("sse.publish", started.elapsed());
            ctx.events.sent.fetch_add(1, Ordering::Relaxed);
            ctx.events.expected.fetch_add(listeners, Ordering::Relaxed);
        }
        Ok(response) => {
            sent.lock().expect("not poisoned").remove(&seq);
            ctx.stats
                .error(format!("sse.publish: {}", response.status()), seq);
        }
        Err(e) => {
            sent.lock().expect("not poisoned").remove(&seq);
            ctx.stats.http_error("sse.publish", &e);
        }
    }
}

/// Listens to an event stream until the drain is over, handing each event (id, type, data) to
/// `on_event`; reconnects every `reconnect_every` with `Last-Event-ID`. `ready` is told once
/// the first connection is open.
async fn listen(
    ctx: Arc<Ctx>,
    path: &'static str,
    cookie: Option<String>,
    kind: &'static str,
    reconnect_every: Duration,
    ready: tokio::sync::oneshot::Sender<()>,
    mut on_event: impl FnMut(&str, &str, &str) + Send,
) {
    let mut ready = Some(ready);
    let mut last_id: Option<String> = None;
    let mut buffer: Vec<u8> = Vec::new();
    while !ctx.drain_stop.is_cancelled() {
        let mut request = ctx.streaming.get(format!("{}{path}", ctx.base));
        if let Some(cookie) = &cookie {
            request = request.header(header::COOKIE, cookie);
        }
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let started = Instant::now();
        let sent = tokio::select! {
            () = ctx.drain_stop.cancelled() => return,
            sent = request.send() => sent,
        };
        let mut response = match sent {
            Ok(response) if response.status() == StatusCode::OK => response,
            Ok(response) => {
                ctx.stats
                    .error(format!("{kind}: {}", response.status()), path);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                ctx.stats.http_error(kind, &e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        ctx.stats.ok("sse.connect", started.elapsed());
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        buffer.clear();
        let until = tokio::time::Instant::now() + reconnect_every;
        loop {
            let chunk = tokio::select! {
                biased;
                () = ctx.drain_stop.cancelled() => return,
                () = tokio::time::sleep_until(until) => break,
                chunk = response.chunk() => chunk,
            };
            match chunk {
                Ok(Some(bytes)) => buffer.extend_from_slice(&bytes),
                Ok(None) => {
                    ctx.stats
                        .error(format!("{kind}: ended by the server"), path);
                    break;
                }
                Err(e) => {
                    ctx.stats.http_error(kind, &e);
                    break;
                }
            }
            while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = buffer.drain(..end + 2).collect();
                let frame = String::from_utf8_lossy(&frame);
                let (mut id, mut event, mut data) = ("", "message", "");
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v;
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = v;
                    }
                }
                if !id.is_empty() {
                    last_id = Some(id.to_owned());
                }
                if event.starts_with("hearth.") {
                    ctx.stats.error(format!("{kind}: {event}"), data);
                }
                if !data.is_empty() {
                    on_event(id, event, data);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The report.

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Delivery {
    pub sent: u64,
    /// Deliveries due: each sent message times its receivers.
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct JobTotals {
    pub enqueued: u64,
    pub completed: u64,
    /// Discarded or cancelled.
    pub failed: u64,
    /// Still not finished at the end of the drain.
    pub lost: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub n: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    fn of(mut times: Vec<Duration>) -> Self {
        times.sort_unstable();
        let ms = |p: f64| {
            let rank =
                ((p / 100.0 * times.len() as f64).ceil() as usize).clamp(1, times.len().max(1));
            times
                .get(rank - 1)
                .map_or(f64::NAN, |d| (d.as_secs_f64() * 1e5).round() / 1e2)
        };
        Self {
            n: times.len(),
            p50_ms: ms(50.0),
            p95_ms: ms(95.0),
            p99_ms: ms(99.0),
            max_ms: ms(100.0),
        }
    }
}

/// Memory and descriptors over the steady state, and whether they grew.
#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    /// Seconds after the load started when the steady state begins.
    pub steady_from_s: f64,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    pub fds_start: u64,
    pub fds_end: u64,
    pub threads_start: u64,
    pub threads_end: u64,
    pub rss_first_half_median_kib: u64,
    pub rss_second_half_median_kib: u64,
    pub rss_first_half_max_kib: u64,
    pub rss_second_half_max_kib: u64,
    /// Least-squares slope of RSS over the second half.
    pub rss_second_half_slope_kib_per_min: f64,
    pub fds_first_half_median: u64,
    pub fds_second_half_median: u64,
    pub fds_first_half_max: u64,
    pub fds_second_half_max: u64,
    /// `no growth`, `growth` or `too short to judge`.
    pub verdict: String,
    pub rule: &'static str,
}

/// Medians, not peaks: a burst of requests in flight raises descriptors (and the pools'
/// connections) for a few samples without anything leaking; a leak moves the median.
const GROWTH_RULE: &str = "no growth when the median RSS of the second half of the steady state \
    is at most 5% (and at least 2 MiB allowed) above the first half's, and its median descriptor \
    count at most 4 above the first half's";

impl Growth {
    fn of(samples: &[Sample], warmup: Duration, load_s: f64) -> Self {
        let from = warmup.as_secs_f64();
        let steady: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.t_s >= from && s.t_s <= load_s + 0.5)
            .collect();
        let middle = from + (load_s - from) / 2.0;
        let (first, second): (Vec<&Sample>, Vec<&Sample>) =
            steady.iter().copied().partition(|s| s.t_s < middle);
        let median = |half: &[&Sample], f: fn(&Sample) -> u64| {
            let mut values: Vec<u64> = half.iter().map(|s| f(s)).collect();
            values.sort_unstable();
            values.get(values.len() / 2).copied().unwrap_or(0)
        };
        let (rss_first, rss_second) = (
            median(&first, |s| s.rss_kib),
            median(&second, |s| s.rss_kib),
        );
        let (fds_first, fds_second) = (median(&first, |s| s.fds), median(&second, |s| s.fds));
        let max =
            |half: &[&Sample], f: fn(&Sample) -> u64| half.iter().map(|s| f(s)).max().unwrap_or(0);
        let (rss_first_max, rss_second_max) =
            (max(&first, |s| s.rss_kib), max(&second, |s| s.rss_kib));
        let (fds_first_max, fds_second_max) = (max(&first, |s| s.fds), max(&second, |s| s.fds));
        let verdict = if first.len() < 3 || second.len() < 3 {
            "too short to judge".to_owned()
        } else {
            let rss_allowed = rss_first + (rss_first / 20).max(2048);
            if rss_second <= rss_allowed && fds_second <= fds_first + 4 {
                "no growth".to_owned()
            } else {
                "growth".to_owned()
            }
        };
        let first_sample = steady.first();
        let last_sample = steady.last();
        Self {
            steady_from_s: from,
            rss_start_kib: first_sample.map_or(0, |s| s.rss_kib),
            rss_end_kib: last_sample.map_or(0, |s| s.rss_kib),
            fds_start: first_sample.map_or(0, |s| s.fds),
            fds_end: last_sample.map_or(0, |s| s.fds),
            threads_start: first_sample.map_or(0, |s| s.threads),
            threads_end: last_sample.map_or(0, |s| s.threads),
            rss_first_half_median_kib: rss_first,
            rss_second_half_median_kib: rss_second,
            rss_first_half_max_kib: rss_first_max,
            rss_second_half_max_kib: rss_second_max,
            rss_second_half_slope_kib_per_min: (slope(&second) * 60.0 * 10.0).round() / 10.0,
            fds_first_half_median: fds_first,
            fds_second_half_median: fds_second,
            fds_first_half_max: fds_first_max,
            fds_second_half_max: fds_second_max,
            verdict,
            rule: GROWTH_RULE,
        }
    }
}

/// Least-squares slope of RSS (KiB) against time (s).
fn slope(samples: &[&Sample]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (
        samples.iter().map(|s| s.t_s).sum::<f64>() / n,
        samples.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n,
    );
    let sxy: f64 = samples
        .iter()
        .map(|s| (s.t_s - mx) * (s.rss_kib as f64 - my))
        .sum();
    let sxx: f64 = samples.iter().map(|s| (s.t_s - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub benchmark: &'static str,
    /// UTC, `20261130T101500Z`; also the files' name.
    pub started_at: String,
    pub settings: Value,
    pub load_s: f64,
    pub server: ServerReport,
    /// Operations that succeeded: requests, deliveries, connections, job completions.
    pub ops: u64,
    pub error_count: u64,
    /// Errors ÷ (operations + errors).
    pub error_rate: f64,
    pub errors: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
    pub chat: Delivery,
    pub events: Delivery,
    pub notifications: Delivery,
    pub jobs: JobTotals,
    pub latency: BTreeMap<String, Percentiles>,
    pub memory: Growth,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    pub binary: String,
    pub pid: u32,
    pub exit: String,
    pub log: ServerLog,
}

impl Report {
    fn new(
        started_at: String,
        args: &SoakArgs,
        server: &Server,
        exit: String,
        run: Run,
        samples: Vec<Sample>,
    ) -> Self {
        let log = server.log.lock().expect("not poisoned").clone();
        let mut errors = run.stats.errors.into_inner().expect("not poisoned");
        // The server's own error lines count as errors of the run.
        if log.errors > 0 {
            errors.insert("server.log_error".into(), log.errors);
        }
        let error_count: u64 = errors.values().sum();
        let ops = run.stats.ops.into_inner();
        let latency = run
            .stats
            .latencies
            .into_inner()
            .expect("not poisoned")
            .into_iter()
            .map(|(kind, times)| (kind.to_owned(), Percentiles::of(times)))
            .collect();
        let d = |d: Duration| humantime::format_duration(d).to_string();
        Self {
            benchmark: "hearth bench soak",
            started_at,
            settings: json!({
                "duration": d(args.duration), "page_views_per_s": args.rate,
                "rooms": args.rooms, "chatters_per_room": args.chatters,
                "chat_messages_per_s_per_member": args.chat_rate,
                "sse_clients": args.sse_clients, "events_per_s": args.event_rate,
                "imports_per_s": args.job_rate, "ws_churn_per_s": args.ws_churn,
                "reconnect_every": d(args.reconnect_every), "sample_every": d(args.sample_every),
                "warmup": d(args.warmup), "drain": d(args.drain),
            }),
            load_s: (run.load_s * 10.0).round() / 10.0,
            server: ServerReport {
                binary: server.binary.display().to_string(),
                pid: server.pid,
                exit,
                log,
            },
            ops,
            error_count,
            error_rate: error_count as f64 / (ops + error_count).max(1) as f64,
            errors,
            error_samples: run.stats.error_samples.into_inner().expect("not poisoned"),
            chat: run.chat,
            events: run.events,
            notifications: run.notifications,
            jobs: run.jobs,
            latency,
            memory: Growth::of(&samples, args.warmup, run.load_s),
            samples,
        }
    }

    /// Messages, events, notifications and jobs that never arrived (or jobs that failed).
    pub fn lost(&self) -> u64 {
        self.chat.lost
            + self.events.lost
            + self.notifications.lost
            + self.jobs.lost
            + self.jobs.failed
    }

    /// A few human lines.
    pub fn summary(&self) -> String {
        let m = &self.memory;
        let mib = |kib: u64| kib as f64 / 1024.0;
        let mut s = format!(
            "soak: {:.0} s of load, {} operations, {} errors (rate {:.2e}), lost: chat {}/{}, events {}/{}, notifications {}/{}, jobs {} of {} (failed {})\n",
            self.load_s,
            self.ops,
            self.error_count,
            self.error_rate,
            self.chat.lost,
            self.chat.expected,
            self.events.lost,
            self.events.expected,
            self.notifications.lost,
            self.notifications.expected,
            self.jobs.lost,
            self.jobs.enqueued,
            self.jobs.failed,
        );
        let _ = writeln!(
            s,
            "server RSS {:.1} → {:.1} MiB, fds {} → {}, threads {} → {} over the steady state (from {} s); second-half slope {:+.1} KiB/min: {}",
            mib(m.rss_start_kib),
            mib(m.rss_end_kib),
            m.fds_start,
            m.fds_end,
            m.threads_start,
            m.threads_end,
            m.steady_from_s,
            m.rss_second_half_slope_kib_per_min,
            m.verdict
        );
        for (kind, p) in &self.latency {
            let _ = writeln!(
                s,
                "  {kind:<22} n {:>7}  p50 {:>8.2} ms  p95 {:>8.2} ms  p99 {:>8.2} ms",
                p.n, p.p50_ms, p.p95_ms, p.p99_ms
            );
        }
        s
    }
}

/// RSS (left axis) and descriptors (right axis) over time, hand-written SVG.
fn chart(report: &Report) -> String {
    let (w, h) = (760.0, 320.0);
    let (left, right, top, bottom) = (70.0, 60.0, 50.0, 40.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let samples = &report.samples;
    let t_max = samples.iter().map(|s| s.t_s).fold(1.0, f64::max);
    let rss_max = axis_top(samples.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0);
    let fds_max = axis_top(samples.iter().map(|s| s.fds).max().unwrap_or(0) as f64);
    let x = |t: f64| left + t / t_max * pw;
    let y = |v: f64, max: f64| top + ph - v / max * ph;
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="system-ui, sans-serif" font-size="12">
<rect width="{w}" height="{h}" fill="#fff"/>
<text x="{left}" y="20" font-size="15" font-weight="600">hearth bench soak: server RSS and open descriptors ({load:.0} s, {errors} errors, {lost} lost)</text>
<text x="{left}" y="38" fill="#555">steady state from {from:.0} s (dashed): {verdict}; RSS {rss0:.1} → {rss1:.1} MiB, fds {fd0} → {fd1}</text>
"##,
        load = report.load_s,
        errors = report.error_count,
        lost = report.lost(),
        from = report.memory.steady_from_s,
        verdict = report.memory.verdict,
        rss0 = report.memory.rss_start_kib as f64 / 1024.0,
        rss1 = report.memory.rss_end_kib as f64 / 1024.0,
        fd0 = report.memory.fds_start,
        fd1 = report.memory.fds_end,
    );
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let yy = top + ph - f * ph;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#2563eb">{:.0} MiB</text><text x="{:.1}" y="{:.1}" fill="#c2410c">{:.0}</text>"##,
            left + pw,
            left - 6.0,
            yy + 4.0,
            f * rss_max,
            left + pw + 6.0,
            yy + 4.0,
            f * fds_max
        );
        let t = f * t_max;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
            x(t),
            top + ph + 18.0,
            clock(Duration::from_secs_f64(t))
        );
    }
    let steady = x(report.memory.steady_from_s.min(t_max));
    let _ = writeln!(
        s,
        r##"<line x1="{steady:.1}" y1="{top}" x2="{steady:.1}" y2="{:.1}" stroke="#888" stroke-dasharray="4 4"/>"##,
        top + ph
    );
    let line = |f: &dyn Fn(&Sample) -> f64, max: f64| {
        samples
            .iter()
            .map(|smp| format!("{:.1},{:.1}", x(smp.t_s), y(f(smp), max)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{}"/>"##,
        line(&|smp| smp.rss_kib as f64 / 1024.0, rss_max)
    );
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#c2410c" stroke-width="2" points="{}"/>"##,
        line(&|smp| smp.fds as f64, fds_max)
    );
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="{:.1}" fill="#2563eb">RSS (MiB, left)</text><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#c2410c">open descriptors (right)</text>"##,
        h - 6.0,
        left + pw,
        h - 6.0
    );
    s.push_str("</svg>\n");
    s
}

/// The top of an axis of four round steps (1, 2 or 5 times a power of ten) above `max`.
fn axis_top(max: f64) -> f64 {
    let quarter = (max * 1.1).max(1.0) / 4.0;
    let power = 10f64.powf(quarter.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&step| step >= quarter)
        .unwrap_or(10.0 * power);
    4.0 * step
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t_s: f64, rss_kib: u64, fds: u64) -> Sample {
        Sample {
            t_s,
            rss_kib,
            fds,
            threads: 4,
            ops: 0,
            errors: 0,
        }
    }

    #[test]
    fn flat_memory_is_no_growth_and_a_climb_is_growth() {
        let flat: Vec<Sample> = (0..=60)
            .map(|i| at(f64::from(i) * 10.0, 50_000 + (i % 3) as u64 * 100, 40))
            .collect();
        let growth = Growth::of(&flat, Duration::from_secs(60), 600.0);
        assert_eq!(growth.verdict, "no growth");
        assert!(growth.rss_second_half_slope_kib_per_min.abs() < 100.0);

        let leaking: Vec<Sample> = (0..=60)
            .map(|i| at(f64::from(i) * 10.0, 50_000 + i as u64 * 500, 40))
            .collect();
        let growth = Growth::of(&leaking, Duration::from_secs(60), 600.0);
        assert_eq!(growth.verdict, "growth");
        assert!((growth.rss_second_half_slope_kib_per_min - 3000.0).abs() < 1.0);

        let fd_leak: Vec<Sample> = (0..=60)
            .map(|i| at(f64::from(i) * 10.0, 50_000, 40 + i as u64))
            .collect();
        assert_eq!(
            Growth::of(&fd_leak, Duration::from_secs(60), 600.0).verdict,
            "growth"
        );

        // A burst of connections late in the run is not growth.
        let burst: Vec<Sample> = (0..=60)
            .map(|i| at(f64::from(i) * 10.0, 50_000, if i == 50 { 70 } else { 40 }))
            .collect();
        let growth = Growth::of(&burst, Duration::from_secs(60), 600.0);
        assert_eq!(growth.verdict, "no growth");
        assert_eq!(growth.fds_second_half_max, 70);
        assert_eq!(
            Growth::of(&flat[..3], Duration::from_secs(0), 20.0).verdict,
            "too short to judge"
        );
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let times: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        let p = Percentiles::of(times);
        assert_eq!(
            (p.n, p.p50_ms, p.p99_ms, p.max_ms),
            (200, 100.0, 198.0, 200.0)
        );
    }

    #[test]
    fn axes_end_on_round_steps_above_the_data() {
        assert_eq!(axis_top(31.0), 40.0);
        assert_eq!(axis_top(41.0), 80.0);
        assert_eq!(axis_top(180.0), 200.0);
        assert_eq!(axis_top(0.0), 2.0);
    }
}
