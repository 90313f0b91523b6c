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
//! * `idle`: connect N sockets, wait, report the RSS of `--rss-pid` and its descendants before and
//!   after, and KiB per connection.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
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
    /// Messages per second from the sender.
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    #[arg(long = "drain-s", default_value_t = 15.0)]
    pub drain_s: f64,
    /// Process whose tree's RSS is reported in idle mode.
    #[arg(long = "rss-pid")]
    pub rss_pid: Option<u32>,
    #[arg(long = "connect-concurrency", default_value_t = 100)]
    pub connect_concurrency: usize,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> anyhow::Result<Socket> {
    // tungstenite zeroes its read buffer on every read: its 128 KiB default made that memset
    // most of this client's CPU time.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    Ok(socket)
}

/// Connects `n` sockets, `concurrency` at a time, with a progress bar.
async fn connect_many(url: &str, n: usize, concurrency: usize) -> (Vec<Socket>, Vec<String>) {
    let bar = ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template("connecting {bar:40} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let urls: Vec<&str> = url.split(',').map(str::trim).collect();
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let bar = bar.clone();
            let url = urls[i % urls.len()];
            async move {
                let result = connect(url).await;
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

/// What one receiver saw: the latency (µs) of each distinct message, plus oddities.
#[derive(Default)]
struct Received {
    latencies: Vec<u64>,
    duplicates: u64,
    malformed: u64,
    last_at_us: u64,
}

async fn chat(args: WsArgs) -> anyhow::Result<serde_json::Value> {
    let m = args.messages;
    let started = Instant::now();
    let (sockets, errors) = connect_many(&args.url, args.clients, args.connect_concurrency).await;
    let connect_s = started.elapsed().as_secs_f64();
    let connected = sockets.len();
    let first = args.url.split(',').next().unwrap_or_default().trim();
    let mut sender = connect(first).await.context("the sender cannot connect")?;

    let clock = Instant::now();
    let now_us = move || clock.elapsed().as_micros() as u64;
    // Send time of each seq, in µs on `clock`; 0 until sent.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..m).map(|_| AtomicU64::new(0)).collect());
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut receivers = Vec::with_capacity(connected);
    for mut socket in sockets {
        let (sent, delivered, stop) = (sent.clone(), delivered.clone(), stop.clone());
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
                let at = now_us();
                let seq = serde_json::from_str::<Frame>(&text)
                    .ok()
                    .and_then(|f| f.message.parse::<usize>().ok())
                    .filter(|&s| s < m);
                let Some(seq) = seq else {
                    got.malformed += 1;
                    continue;
                };
                if std::mem::replace(&mut seen[seq], true) {
                    got.duplicates += 1;
                    continue;
                }
                let sent_at = sent[seq].load(Ordering::Acquire);
                got.latencies.push(at.saturating_sub(sent_at));
                got.last_at_us = at;
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            got
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;

    let bar = ProgressBar::new(m as u64).with_style(
        ProgressStyle::with_template("sending {bar:40} {pos}/{len} ({msg} delivered)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let cpu0 = crate::client::cpu_time();
    let wall0 = Instant::now();
    let first_send = now_us();
    for seq in 0..m {
        let due = Duration::from_micros(first_send)
            + Duration::from_secs_f64(seq as f64 / f64::from(args.rate));
        let wait = due.saturating_sub(Duration::from_micros(now_us()));
        tokio::time::sleep(wait).await;
        sent[seq].store(now_us(), Ordering::Release);
        sender
            .send(Message::text(format!(r#"{{"message":"{seq}"}}"#)))
            .await
            .context("the sender's socket failed")?;
        bar.inc(1);
        bar.set_message(delivered.load(Ordering::Relaxed).to_string());
    }
    bar.finish_and_clear();
    let expected = (connected * m) as u64;
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain_s);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = crate::client::cpu_time() - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    stop.cancel();
    let mut latencies = Vec::with_capacity(expected as usize);
    let (mut duplicates, mut malformed, mut last) = (0, 0, first_send);
    for receiver in receivers {
        let got = receiver.await.context("a receiver task failed")?;
        latencies.extend(got.latencies);
        duplicates += got.duplicates;
        malformed += got.malformed;
        last = last.max(got.last_at_us);
    }
    let got = latencies.len() as u64;
    let summary = crate::client::Latencies::new(latencies);
    let span_s = (last.saturating_sub(first_send)) as f64 / 1e6;
    Ok(serde_json::json!({
        "workload": "ws_chat", "client": "hearth bench ws",
        "clients": args.clients, "connected": connected,
        "connect_failed": errors.len(), "connect_errors": errors.iter().take(3).collect::<Vec<_>>(),
        "connect_s": (connect_s * 100.0).round() / 100.0,
        "messages": m, "rate": args.rate, "expected": expected, "delivered": got,
        "lost": expected - got, "duplicates": duplicates, "malformed": malformed,
        "deliveries_per_s": crate::client::per_s(got, span_s),
        "offered_per_s": connected as u64 * u64::from(args.rate),
        "p50_ms": summary.percentile_ms(50.0), "p99_ms": summary.percentile_ms(99.0), "max_ms": summary.max_ms(),
        "client_cpu_pct": crate::client::cpu_pct(cpu, wall),
    }))
}

async fn idle(args: WsArgs) -> anyhow::Result<serde_json::Value> {
    let before = args.rss_pid.map(rss_tree_kib);
    let started = Instant::now();
    let (sockets, errors) = connect_many(&args.url, args.clients, args.connect_concurrency).await;
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.settle.max(3.0))).await;
    let after = args.rss_pid.map(rss_tree_kib);
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
    }))
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
    let mut total = 0;
    let mut pending = vec![pid];
    while let Some(pid) = pending.pop() {
        total += rss_kib(pid);
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        pending.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    total
}
