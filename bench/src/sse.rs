//! `hearth bench sse`: the W6 server-sent events load client, in Rust.
//!
//! The protocol's Node client (`clients/sse_load.js`) reads all 500 streams on one event loop, so
//! the last stream to get a message waits for the client to have parsed the 499 copies before it:
//! that serial cost is in the latency it reports. This client does what the Node one does — same
//! URLs, same schedule, same definitions, same JSON line — with the streams spread over two
//! threads, so that the server, not the client, is measured. Run it against any server that
//! speaks W6 (Hearth or the Django peer).
//!
//! N streams hold `GET /bench/events` open; once every stream has had its first event (the
//! server's "subscribed" comment) and `--settle` seconds have passed, a publisher POSTs
//! `{"message":"<seq>"}` to `/bench/publish` M times at a steady R/s (absolute schedule, each
//! POST on its own task so a slow answer does not delay the next); latency = arrival of the
//! `data:` line − start of its POST, on this process's clock; lost = expected − distinct
//! (stream, seq) received within `--drain-s` of the last POST.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::client::{Latencies, cpu_pct, cpu_time, on_own_runtime, per_s};

#[derive(Debug, Clone, clap::Args)]
pub struct SseArgs {
    /// The server's base URL; the streams open `<base>/bench/events`, the publisher POSTs to
    /// `<base>/bench/publish`.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub base: String,
    #[arg(long, default_value_t = 500)]
    pub clients: usize,
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    /// Messages per second from the publisher.
    #[arg(long, default_value_t = 10)]
    pub rate: u32,
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    #[arg(long = "drain-s", default_value_t = 10.0)]
    pub drain_s: f64,
    #[arg(long = "connect-concurrency", default_value_t = 100)]
    pub connect_concurrency: usize,
}

/// Runs the client on a runtime of its own and prints its JSON line.
pub async fn run(args: SseArgs) -> anyhow::Result<()> {
    on_own_runtime(move || async move {
        println!("{}", measure(args).await?);
        Ok(())
    })
    .await
}

#[derive(Deserialize)]
struct Data {
    message: String,
}

/// What one stream saw: the latency (µs) of each distinct message, plus oddities.
#[derive(Default)]
struct Received {
    latencies: Vec<u64>,
    duplicates: u64,
    malformed: u64,
    last_at_us: u64,
}

/// The clock, the send times and the delivery counter every stream shares.
struct Shared {
    clock: Instant,
    /// Start of each seq's POST, in µs on `clock`.
    sent: Vec<AtomicU64>,
    delivered: AtomicU64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }
}

/// An open event stream whose first event has arrived: the server has subscribed it.
struct Stream {
    response: reqwest::Response,
    /// Bytes after the first event, not yet split into events.
    pending: Vec<u8>,
}

async fn open(http: &reqwest::Client, url: &str) -> anyhow::Result<Stream> {
    let mut response = http
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .with_context(|| format!("cannot open {url}"))?;
    anyhow::ensure!(
        response.status() == reqwest::StatusCode::OK,
        "status {}",
        response.status()
    );
    let mut pending = Vec::new();
    loop {
        let chunk = response
            .chunk()
            .await
            .context("the stream failed before its first event")?
            .context("the stream ended before its first event")?;
        pending.extend_from_slice(&chunk);
        if let Some(end) = find_event_end(&pending) {
            pending.drain(..end);
            return Ok(Stream { response, pending });
        }
    }
}

/// The index just past the first event's blank line (`\n\n`), if a whole event is buffered.
fn find_event_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// The seq of each `data:` line of one event that carries a valid one; `Err(())` for each that
/// does not.
fn seqs(event: &[u8], m: usize) -> impl Iterator<Item = Result<usize, ()>> + '_ {
    event
        .split(|&b| b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .map(move |data| {
            serde_json::from_slice::<Data>(data)
                .ok()
                .and_then(|d| d.message.parse::<usize>().ok())
                .filter(|&seq| seq < m)
                .ok_or(())
        })
}

async fn read(
    mut stream: Stream,
    m: usize,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Received {
    let mut seen = vec![false; m];
    let mut got = Received::default();
    loop {
        while let Some(end) = find_event_end(&stream.pending) {
            let at = shared.now_us();
            for seq in seqs(&stream.pending[..end], m) {
                let Ok(seq) = seq else {
                    got.malformed += 1;
                    continue;
                };
                if std::mem::replace(&mut seen[seq], true) {
                    got.duplicates += 1;
                    continue;
                }
                let sent_at = shared.sent[seq].load(Ordering::Acquire);
                got.latencies.push(at.saturating_sub(sent_at));
                got.last_at_us = at;
                shared.delivered.fetch_add(1, Ordering::Relaxed);
            }
            stream.pending.drain(..end);
        }
        let chunk = tokio::select! {
            () = stop.cancelled() => return got,
            chunk = stream.response.chunk() => chunk,
        };
        match chunk {
            Ok(Some(chunk)) => stream.pending.extend_from_slice(&chunk),
            Ok(None) | Err(_) => return got,
        }
    }
}

/// Runs the workload on the caller's runtime and returns the JSON line's object.
pub async fn measure(args: SseArgs) -> anyhow::Result<serde_json::Value> {
    let m = args.messages;
    let base = args.base.trim_end_matches('/');
    let (events_url, publish_url) = (
        format!("{base}/bench/events"),
        format!("{base}/bench/publish"),
    );
    // Each open stream holds a connection of its own, as the Node client's do; the POSTs reuse
    // a few idle ones.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()
        .context("cannot build the HTTP client")?;

    let started = Instant::now();
    let bar = ProgressBar::new(args.clients as u64).with_style(
        ProgressStyle::with_template("opening streams {bar:40} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let results: Vec<_> = futures::stream::iter(0..args.clients)
        .map(|_| {
            let (http, url, bar) = (http.clone(), events_url.clone(), bar.clone());
            async move {
                let result = open(&http, &url).await;
                bar.inc(1);
                result
            }
        })
        .buffer_unordered(args.connect_concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let connect_s = started.elapsed().as_secs_f64();
    let (mut streams, mut errors) = (Vec::new(), Vec::new());
    for result in results {
        match result {
            Ok(stream) => streams.push(stream),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    let connected = streams.len();

    let shared = Arc::new(Shared {
        clock: Instant::now(),
        sent: (0..m).map(|_| AtomicU64::new(0)).collect(),
        delivered: AtomicU64::new(0),
    });
    let stop = CancellationToken::new();
    let readers: Vec<_> = streams
        .into_iter()
        .map(|stream| tokio::spawn(read(stream, m, shared.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;

    let bar = ProgressBar::new(m as u64).with_style(
        ProgressStyle::with_template("publishing {bar:40} {pos}/{len} ({msg} delivered)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let cpu0 = cpu_time();
    let wall0 = Instant::now();
    let first_send = shared.now_us();
    let mut posts = Vec::with_capacity(m);
    for seq in 0..m {
        let due = Duration::from_micros(first_send)
            + Duration::from_secs_f64(seq as f64 / f64::from(args.rate));
        tokio::time::sleep(due.saturating_sub(Duration::from_micros(shared.now_us()))).await;
        shared.sent[seq].store(shared.now_us(), Ordering::Release);
        let request = http
            .post(&publish_url)
            .header("content-type", "application/json")
            .body(format!(r#"{{"message":"{seq}"}}"#));
        posts.push(tokio::spawn(async move {
            request.send().await.is_ok_and(|r| r.status().is_success())
        }));
        bar.inc(1);
        bar.set_message(shared.delivered.load(Ordering::Relaxed).to_string());
    }
    bar.finish_and_clear();
    let mut publish_failed = 0;
    for post in posts {
        if !post.await.unwrap_or(false) {
            publish_failed += 1;
        }
    }
    let expected = (connected * m) as u64;
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain_s);
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu_time() - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    stop.cancel();

    let mut latencies = Vec::with_capacity(expected as usize);
    let (mut duplicates, mut malformed, mut last) = (0, 0, first_send);
    for reader in readers {
        let got = reader.await.context("a stream's reader failed")?;
        latencies.extend(got.latencies);
        duplicates += got.duplicates;
        malformed += got.malformed;
        last = last.max(got.last_at_us);
    }
    let got = latencies.len() as u64;
    let summary = Latencies::new(latencies);
    let span_s = last.saturating_sub(first_send) as f64 / 1e6;
    Ok(serde_json::json!({
        "workload": "sse", "client": "hearth bench sse",
        "clients": args.clients, "connected": connected,
        "connect_failed": errors.len(), "connect_errors": errors.iter().take(3).collect::<Vec<_>>(),
        "connect_s": (connect_s * 100.0).round() / 100.0,
        "messages": m, "rate": args.rate, "publish_failed": publish_failed,
        "expected": expected, "delivered": got, "lost": expected - got,
        "duplicates": duplicates, "malformed": malformed,
        "deliveries_per_s": per_s(got, span_s),
        "p50_ms": summary.percentile_ms(50.0), "p99_ms": summary.percentile_ms(99.0), "max_ms": summary.max_ms(),
        "client_cpu_pct": cpu_pct(cpu, wall),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_at_their_blank_line() {
        assert_eq!(find_event_end(b": connected\n\ndata: x"), Some(13));
        assert_eq!(find_event_end(b"data: {\"message\":\"1\"}\n"), None);
    }

    #[test]
    fn an_event_yields_the_seq_of_each_data_line() {
        let event = b"id: 7\nevent: bench.message\ndata: {\"message\":\"3\"}\n\n";
        assert_eq!(seqs(event, 10).collect::<Vec<_>>(), vec![Ok(3)]);
        assert_eq!(
            seqs(b"data: {\"message\":\"12\"}\ndata: nope\n\n", 10).collect::<Vec<_>>(),
            vec![Err(()), Err(())]
        );
        assert_eq!(seqs(b": keep-alive\n\n", 10).count(), 0);
    }
}
