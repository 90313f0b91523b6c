//! `hearth bench ws`: the W5 WebSocket load client, in Rust.
//!
//! The protocol's Node client handles every frame on one event loop: with 1,000 receivers at
//! 20 messages/s, its own serial processing of each message's 1,000 copies adds milliseconds to
//! the latency it reports. This client does what `clients/ws_load.js` does — same room, same
//! schedule, same definitions, same JSON line — with receivers spread over the runtime's
//! threads, so that the server, not the client, is measured. Run it against any server that
//! speaks W5 (Hearth or the Django peer).
//!
//! * `chat`: N receivers and one sender join the room; after `--settle` seconds the sender sends
//!   M messages `{"message":"<seq>"}` at a steady R/s (absolute schedule); latency = receive −
//!   send on this process's clock; lost = expected − distinct (receiver, seq) received within
//!   `--drain-s` of the last send.
//!   `--role send` and `--role receive` split it over processes, as a load client can hold no
//!   more sockets than its file limit (20,000 here): receivers in several processes, one sender;
//!   each message then carries its send time on the wall clock (`"<seq>.<µs since 1970>"`),
//!   which every process on the machine shares, and each receiving process reports its own
//!   deliveries, losses and percentiles (`bench/sockets.sh` adds them up).
//! * `idle`: connect N sockets, wait, report the RSS of `--rss-pid` and its descendants before and
//!   after, KiB per connection, and the CPU the tree spent holding them (`--hold-s`): what
//!   heartbeats and idle timers cost.
//!
//! `--sources 127.0.0.2,127.0.0.3` binds the sockets to those local addresses in turn: one
//! address has about 28,000 ephemeral ports to a given server port.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WsMode {
    Chat,
    Idle,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WsArgs {
    #[arg(default_value = "chat")]
    pub mode: WsMode,
    /// The room's URL; several, separated by commas, spread the receivers over several
    /// instances round-robin (the sender uses the first).
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws/chat/bench/")]
    pub url: String,
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// Messages per second from the sender (0.5: one every two seconds).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    #[arg(long = "drain-s", default_value_t = 15.0)]
    pub drain_s: f64,
    /// Process whose tree's RSS is reported in idle mode.
    #[arg(long = "rss-pid")]
    pub rss_pid: Option<u32>,
    #[arg(long = "connect-concurrency", default_value_t = 100)]
    pub connect_concurrency: usize,
    /// Which part of `chat` this process plays (see the module's note).
    #[arg(long, value_enum, default_value = "both")]
    pub role: Role,
    /// Local addresses the sockets are bound to, in turn (none: the kernel's choice).
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<IpAddr>,
    /// `--role receive`: how long to wait for the first message before giving up.
    #[arg(long = "wait-s", default_value_t = 600.0)]
    pub wait_s: f64,
    /// The sender sends each message to every URL of `--url`, not only the first (for a
    /// floor server, which has no channel layer to carry a message to another instance).
    #[arg(long = "send-to-all")]
    pub send_to_all: bool,
    /// `idle`: how long the sockets are held while the server's CPU is measured.
    #[arg(long = "hold-s", default_value_t = 3.0)]
    pub hold_s: f64,
}

/// The part of the chat workload a process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Receivers and the sender in this process; latency on this process's monotonic clock.
    Both,
    /// Only the sender: wall-clock stamped messages, for receivers in other processes.
    Send,
    /// Only receivers, reading the send time from each message; prints `ready` on stderr once
    /// every socket is connected, so a script knows when to start the sender.
    Receive,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, source: Option<IpAddr>) -> anyhow::Result<Socket> {
    // tungstenite zeroes its read buffer on every read: its 128 KiB default made that memset
    // most of this client's CPU time.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Some(source) = source else {
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        return Ok(socket);
    };
    let parsed = url::Url::parse(url).with_context(|| format!("bad URL {url}"))?;
    let server: SocketAddr = tokio::net::lookup_host((
        parsed.host_str().unwrap_or_default(),
        parsed.port_or_known_default().unwrap_or(80),
    ))
    .await?
    .next()
    .with_context(|| format!("{url} resolves to nothing"))?;
    let socket = match server {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("cannot bind to {source}"))?;
    let stream = socket
        .connect(server)
        .await
        .with_context(|| format!("cannot connect to {url} from {source}"))?;
    stream.set_nodelay(true)?;
    let (socket, _) = tokio_tungstenite::client_async_with_config(
        url,
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await
    .with_context(|| format!("cannot upgrade {url}"))?;
    Ok(socket)
}

/// Connects `n` sockets, `concurrency` at a time, with a progress bar; the `i`th from
/// `sources[i % len]` when there are sources.
async fn connect_many(
    url: &str,
    n: usize,
    concurrency: usize,
    sources: &[IpAddr],
) -> (Vec<Socket>, Vec<String>) {
    let bar = ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template("connecting {bar:40} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let urls: Vec<&str> = url.split(',').map(str::trim).collect();
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let bar = bar.clone();
            let url = urls[i % urls.len()];
            let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
            async move {
                let result = connect(url, source).await;
                bar.inc(1);
                result
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let mut sockets = Vec::new();
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok(socket) => sockets.push(socket),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    (sockets, errors)
}

/// Runs the client on a runtime of its own and prints its JSON line.
pub async fn run(args: WsArgs) -> anyhow::Result<()> {
    crate::client::on_own_runtime(move || async move {
        let result = match args.mode {
            WsMode::Chat => chat(args).await?,
            WsMode::Idle => idle(args).await?,
        };
        println!("{result}");
        Ok(())
    })
    .await
}

/// Runs the chat workload on the caller's runtime and returns the JSON line's object.
pub async fn measure_chat(args: WsArgs) -> anyhow::Result<serde_json::Value> {
    chat(args).await
}

#[derive(Deserialize)]
struct Frame {
    message: String,
}

/// A message's sequence number and, when stamped, its send time (µs since 1970); `None` for
/// anything else.
fn parse(text: &str, m: usize) -> Option<(usize, Option<u64>)> {
    let frame: Frame = serde_json::from_str(text).ok()?;
    let (seq, stamp) = match frame.message.split_once('.') {
        Some((seq, stamp)) => (seq, Some(stamp.parse().ok()?)),
        None => (frame.message.as_str(), None),
    };
    Some((seq.parse::<usize>().ok().filter(|&s| s < m)?, stamp))
}

/// Now on the wall clock, in µs since 1970: the clock every process on the machine shares.
fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What one receiver saw: the latency (µs) of each distinct message, plus oddities.
#[derive(Default)]
struct Received {
    latencies: Vec<u64>,
    duplicates: u64,
    malformed: u64,
    last_at_us: u64,
}

/// What the receivers and the sender of one process share.
struct Shared {
    clock: Instant,
    /// Send time of each seq, in µs on `clock`; 0 until sent (unstamped messages only).
    sent: Vec<AtomicU64>,
    delivered: AtomicU64,
    /// Wall-clock µs of the first delivery; 0 before it.
    first_at: AtomicU64,
}

impl Shared {
    fn new(m: usize) -> Self {
        Self {
            clock: Instant::now(),
            sent: (0..m).map(|_| AtomicU64::new(0)).collect(),
            delivered: AtomicU64::new(0),
            first_at: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }
}

/// One task per socket, reading until `stop`; each returns what it saw.
fn receive(
    sockets: Vec<Socket>,
    m: usize,
    shared: &Arc<Shared>,
    stop: &tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<Received>> {
    let mut receivers = Vec::with_capacity(sockets.len());
    for mut socket in sockets {
        let (shared, stop) = (shared.clone(), stop.clone());
        receivers.push(tokio::spawn(async move {
            let mut seen = vec![false; m];
            let mut got = Received::default();
            loop {
                let frame = tokio::select! {
                    () = stop.cancelled() => break,
                    frame = socket.next() => frame,
                };
                let Some(Ok(Message::Text(text))) = frame else {
                    if matches!(frame, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                        break;
                    }
                    continue;
                };
                let (at, wall) = (shared.now_us(), wall_us());
                let Some((seq, stamp)) = parse(&text, m) else {
                    got.malformed += 1;
                    continue;
                };
                if std::mem::replace(&mut seen[seq], true) {
                    got.duplicates += 1;
                    continue;
                }
                let latency = match stamp {
                    Some(sent_at) => wall.saturating_sub(sent_at),
                    None => at.saturating_sub(shared.sent[seq].load(Ordering::Acquire)),
                };
                got.latencies.push(latency);
                got.last_at_us = wall;
                let _ =
                    shared
                        .first_at
                        .compare_exchange(0, wall, Ordering::Relaxed, Ordering::Relaxed);
                shared.delivered.fetch_add(1, Ordering::Relaxed);
            }
            got
        }));
    }
    receivers
}

/// Sends the `messages` at a steady `rate` (an absolute schedule), stamped with the wall clock
/// when receivers are elsewhere; returns the first send's wall-clock time.
async fn send(
    senders: &mut [Socket],
    args: &WsArgs,
    stamped: bool,
    shared: &Shared,
) -> anyhow::Result<u64> {
    let bar = ProgressBar::new(args.messages as u64).with_style(
        ProgressStyle::with_template("sending {bar:40} {pos}/{len} ({msg} delivered)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (first_send, first_wall) = (shared.now_us(), wall_us());
    for seq in 0..args.messages {
        let due =
            Duration::from_micros(first_send) + Duration::from_secs_f64(seq as f64 / args.rate);
        tokio::time::sleep(due.saturating_sub(Duration::from_micros(shared.now_us()))).await;
        shared.sent[seq].store(shared.now_us(), Ordering::Release);
        let message = if stamped {
            format!(r#"{{"message":"{seq}.{}"}}"#, wall_us())
        } else {
            format!(r#"{{"message":"{seq}"}}"#)
        };
        for sender in senders.iter_mut() {
            sender
                .send(Message::text(message.clone()))
                .await
                .context("the sender's socket failed")?;
        }
        bar.inc(1);
        bar.set_message(shared.delivered.load(Ordering::Relaxed).to_string());
    }
    bar.finish_and_clear();
    Ok(first_wall)
}

/// The sender's sockets: to the first URL of `--url`, or to every one with `--send-to-all`.
async fn connect_senders(args: &WsArgs) -> anyhow::Result<Vec<Socket>> {
    let urls = args.url.split(',').map(str::trim);
    let take = if args.send_to_all { usize::MAX } else { 1 };
    let mut senders = Vec::new();
    for url in urls.take(take) {
        senders.push(
            connect(url, None)
                .await
                .context("the sender cannot connect")?,
        );
    }
    Ok(senders)
}

/// `--role send`: the sender alone, its messages stamped for receivers in other processes.
async fn send_only(args: WsArgs) -> anyhow::Result<serde_json::Value> {
    let mut senders = connect_senders(&args).await?;
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let shared = Shared::new(args.messages);
    let started = Instant::now();
    send(&mut senders, &args, true, &shared).await?;
    // Closing at once could drop the last frames before the server has read them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(serde_json::json!({
        "workload": "ws_chat", "role": "send", "client": "hearth bench ws",
        "messages": args.messages, "rate": args.rate,
        "send_s": (started.elapsed().as_secs_f64() * 100.0).round() / 100.0,
    }))
}

/// `--role receive`: waits until every socket has every message, or the messages stop coming
/// (`drain_s` after the schedule the first one implies), or none came in `wait_s`.
async fn until_received(shared: &Shared, expected: u64, args: &WsArgs) {
    let ready = Instant::now();
    let schedule = args.messages as f64 / args.rate + args.drain_s;
    loop {
        if shared.delivered.load(Ordering::Relaxed) >= expected {
            return;
        }
        let first = shared.first_at.load(Ordering::Relaxed);
        if first == 0 && ready.elapsed().as_secs_f64() > args.wait_s {
            return;
        }
        if first != 0 && wall_us().saturating_sub(first) as f64 / 1e6 > schedule {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every socket has every message, for at most `drain_s`.
async fn drain(shared: &Shared, expected: u64, drain_s: f64) {
    let until = Instant::now() + Duration::from_secs_f64(drain_s);
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn chat(args: WsArgs) -> anyhow::Result<serde_json::Value> {
    if args.role == Role::Send {
        return send_only(args).await;
    }
    let m = args.messages;
    let started = Instant::now();
    let (sockets, errors) = connect_many(
        &args.url,
        args.clients,
        args.connect_concurrency,
        &args.sources,
    )
    .await;
    let connect_s = started.elapsed().as_secs_f64();
    let connected = sockets.len();
    let expected = (connected * m) as u64;
    let shared = Arc::new(Shared::new(m));
    let stop = tokio_util::sync::CancellationToken::new();
    let receivers = receive(sockets, m, &shared, &stop);

    let (cpu0, wall0) = if args.role == Role::Both {
        let mut senders = connect_senders(&args).await?;
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        let (cpu0, wall0) = (crate::client::cpu_time(), Instant::now());
        send(&mut senders, &args, false, &shared).await?;
        drain(&shared, expected, args.drain_s).await;
        (cpu0, wall0)
    } else {
        eprintln!("ready: {connected} connected");
        let (cpu0, wall0) = (crate::client::cpu_time(), Instant::now());
        until_received(&shared, expected, &args).await;
        (cpu0, wall0)
    };
    let cpu = crate::client::cpu_time() - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    stop.cancel();
    let mut latencies = Vec::with_capacity(expected as usize);
    let (mut duplicates, mut malformed, mut last) = (0, 0, 0);
    for receiver in receivers {
        let got = receiver.await.context("a receiver task failed")?;
        latencies.extend(got.latencies);
        duplicates += got.duplicates;
        malformed += got.malformed;
        last = last.max(got.last_at_us);
    }
    let got = latencies.len() as u64;
    let summary = crate::client::Latencies::new(latencies);
    let first = shared.first_at.load(Ordering::Relaxed);
    let span_s = last.saturating_sub(first) as f64 / 1e6;
    Ok(serde_json::json!({
        "workload": "ws_chat", "client": "hearth bench ws",
        "role": if args.role == Role::Both { "both" } else { "receive" },
        "clients": args.clients, "connected": connected,
        "connect_failed": errors.len(), "connect_errors": errors.iter().take(3).collect::<Vec<_>>(),
        "connect_s": (connect_s * 100.0).round() / 100.0,
        "messages": m, "rate": args.rate, "expected": expected, "delivered": got,
        "lost": expected - got, "duplicates": duplicates, "malformed": malformed,
        "deliveries_per_s": crate::client::per_s(got, span_s),
        "offered_per_s": (connected as f64 * args.rate).round(),
        "p50_ms": summary.percentile_ms(50.0), "p99_ms": summary.percentile_ms(99.0), "max_ms": summary.max_ms(),
        "client_cpu_pct": crate::client::cpu_pct(cpu, wall),
    }))
}

async fn idle(args: WsArgs) -> anyhow::Result<serde_json::Value> {
    let before = args.rss_pid.map(rss_tree_kib);
    let started = Instant::now();
    let (sockets, errors) = connect_many(
        &args.url,
        args.clients,
        args.connect_concurrency,
        &args.sources,
    )
    .await;
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.settle.max(3.0))).await;
    let after = args.rss_pid.map(rss_tree_kib);
    // What holding them costs: the server's CPU while nothing but heartbeats and timers run.
    let cpu0 = args.rss_pid.map(cpu_tree_s);
    tokio::time::sleep(Duration::from_secs_f64(args.hold_s)).await;
    let held_cpu_pct = args
        .rss_pid
        .zip(cpu0)
        .map(|(pid, cpu0)| crate::client::cpu_pct(cpu_tree_s(pid) - cpu0, args.hold_s));
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if !sockets.is_empty() => {
            Some(((a as f64 - b as f64) / sockets.len() as f64 * 10.0).round() / 10.0)
        }
        _ => None,
    };
    let mib = |kib: Option<u64>| kib.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0);
    Ok(serde_json::json!({
        "workload": "ws_idle", "client": "hearth bench ws",
        "clients": args.clients, "connected": sockets.len(),
        "connect_failed": errors.len(), "connect_errors": errors.iter().take(3).collect::<Vec<_>>(),
        "connect_s": (connect_s * 100.0).round() / 100.0,
        "server_rss_before_mb": mib(before), "server_rss_mb": mib(after),
        "kb_per_conn": per_conn,
        "hold_s": args.hold_s, "server_cpu_pct_held": held_cpu_pct,
    }))
}

/// User + system CPU seconds of `pid` and its descendants (from `/proc`, in clock ticks of
/// 1/100 s, the kernel's `USER_HZ` on Linux).
fn cpu_tree_s(pid: u32) -> f64 {
    tree(pid)
        .into_iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command's closing parenthesis: utime and stime are the 12th and
            // 13th of them.
            let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            (ticks(11) + ticks(12)) as f64 / 100.0
        })
        .sum()
}

/// `pid` and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut pending = vec![pid];
    while let Some(pid) = pending.pop() {
        all.push(pid);
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        pending.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    all
}

/// VmRSS of `pid`, in KiB (0 when it cannot be read).
pub(super) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// VmRSS of `pid` and all its descendants, in KiB.
fn rss_tree_kib(pid: u32) -> u64 {
    tree(pid).into_iter().map(rss_kib).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_with_and_without_a_stamp() {
        let frame = |message: &str| serde_json::json!({ "message": message }).to_string();
        assert_eq!(parse(&frame("7"), 10), Some((7, None)));
        assert_eq!(
            parse(&frame("7.1700000000000000"), 10),
            Some((7, Some(1_700_000_000_000_000)))
        );
        assert_eq!(parse(&frame("12"), 10), None, "past the last seq");
        assert_eq!(parse(&frame("7.x"), 10), None);
        assert_eq!(parse("not json", 10), None);
    }

    #[tokio::test]
    async fn a_socket_is_bound_to_its_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.unwrap();
            let _socket = tokio_tungstenite::accept_async(stream).await.unwrap();
            peer
        });

        let _client = connect(&url, Some("127.0.0.3".parse().unwrap()))
            .await
            .unwrap();

        assert_eq!(server.await.unwrap().ip().to_string(), "127.0.0.3");
    }
}
