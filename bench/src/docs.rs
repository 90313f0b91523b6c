//! `hearth bench docs`: collaborative documents under load, in one process.
//!
//! Starts the app on an ephemeral port against the configured database (embedded by default),
//! creates throwaway users and documents, and measures two things:
//!
//! * **fan-out**: `--editors` editors share one document over real WebSockets; each sends
//!   `--edits` edits at `--rate` per second (a random insert, made on its own yrs replica, which
//!   also applies everyone else's edits). Latency is from an editor's send to another editor's
//!   receipt, on this process's clock, for every (edit, other editor) pair; lost = pairs never
//!   received within `--drain-s`.
//! * **memory**: `--documents` documents each opened (connected and synced) by one editor;
//!   the process's RSS before and after, per open document. The client sockets live in this
//!   process too, so the figure is an upper bound for the server's share.
//!
//! The throwaway users (and with them their documents) are deleted at the end.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use futures::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use rand::RngExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{
        Message, client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig,
    },
};
use tokio_util::sync::CancellationToken;

use hearth::{
    application::Invocation,
    documents::crdt::State,
    server,
    web::{
        auth::{NewPassword, Username, create_user},
        hashing::Hasher,
        session,
    },
};

#[derive(Debug, Clone, clap::Args)]
pub struct DocsArgs {
    /// Editors on the one document of the fan-out measurement.
    #[arg(long, default_value_t = 20)]
    pub editors: usize,
    /// Edits each editor sends.
    #[arg(long, default_value_t = 50)]
    pub edits: usize,
    /// Edits per second per editor.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    #[arg(long = "drain-s", default_value_t = 10.0)]
    pub drain_s: f64,
    /// Documents opened at once for the memory measurement (0 skips it).
    #[arg(long, default_value_t = 500)]
    pub documents: usize,
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Runs on `pool` (opened and migrated by the command line).
pub async fn run(invocation: &Invocation, pool: PgPool, args: DocsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.editors >= 2, "--editors must be at least 2");
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    // A throwaway server of its own: one benchmark user opens hundreds of sockets.
    let mut config = invocation.config.clone();
    config.channels.ws_max_per_user = 0;
    config.channels.ws_max_per_address = 0;
    let application = &invocation.application;
    let state = application
        .state(config.clone(), invocation.sections.clone(), pool.clone())
        .context("cannot build the app")?;
    state.channels.ready().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        listener,
        application.router(&state)?,
        &config,
        stop.clone().cancelled_owned(),
    ));
    let prefix = format!("bd{}", hex::encode(rand::random::<[u8; 3]>()));
    let result = async {
        let cookies = users(&pool, &prefix, args.editors).await?;
        let doc = document(&pool, &cookies, "fan-out").await?;
        fan_out(&address.to_string(), doc, &cookies, &args).await?;
        // Where lost deliveries went, if any: edits not stored, or messages not delivered.
        let stored = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM document_updates WHERE document_id = $1")
            .bind(doc)
        .fetch_one(&pool)
        .await?;
        let layer = state.channels.stats().await;
        println!(
            "{}",
            json!({
                "measure": "fan_out_accounting", "edits_sent": args.editors * args.edits,
                "edits_stored": stored, "slow_consumers_dropped": layer.slow_consumers_dropped,
                "gaps_abandoned": layer.gaps_abandoned, "listener_reconnects": layer.listener_reconnects,
            })
        );
        if args.documents > 0 {
            memory(&pool, &address.to_string(), &cookies[0], args.documents).await?;
        }
        anyhow::Ok(())
    }
    .await;
    sqlx::query("DELETE FROM users WHERE username LIKE $1 || '%'")
        .bind(&prefix)
        .execute(&pool)
        .await
        .context("cannot delete the benchmark's users")?;
    stop.cancel();
    let _ = server.await;
    state.channels.shutdown().await;
    result
}

/// Creates `n` users and a session for each; returns their session cookies (user id, cookie).
pub(super) async fn users(
    pool: &PgPool,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<(i64, String)>> {
    // A tool's own line, one hash at a time: no request waits behind it.
    let slot = Hasher::new(1, 0).enter()?;
    let password =
        NewPassword::parse("benchmark password, thrown away").map_err(anyhow::Error::msg)?;
    let mut cookies = Vec::with_capacity(n);
    for i in 0..n {
        let name = Username::parse(&format!("{prefix}-{i}")).map_err(anyhow::Error::msg)?;
        let user = create_user(pool, &slot, &name, &password, false).await?;
        let token = session::create(pool, user.id, Duration::from_secs(3600), None).await?;
        cookies.push((user.id, format!("{}={token}", session::COOKIE)));
    }
    Ok(cookies)
}

/// A document owned by the first user, with every other user an editor.
async fn document(pool: &PgPool, users: &[(i64, String)], title: &str) -> anyhow::Result<i64> {
    let owner = users[0].0;
    let id = sqlx::query_scalar::<_, i64>(
        "INSERT INTO documents (title, owner_id) VALUES ($1, $2) RETURNING id",
    )
    .bind(title)
    .bind(owner)
    .fetch_one(pool)
    .await?;
    let others: Vec<i64> = users[1..].iter().map(|(id, _)| *id).collect();
    sqlx::query(
        "INSERT INTO document_members (document_id, user_id, can_edit)
         SELECT $1, unnest($2::bigint[]), true",
    )
    .bind(id)
    .bind(&others)
    .execute(pool)
    .await?;
    Ok(id)
}

/// Connects to the document, does the sync handshake, and returns the socket and the replica.
async fn open(address: &str, doc: i64, cookie: &str) -> anyhow::Result<(Socket, State)> {
    let mut request = format!("ws://{address}/ws/docs/{doc}").into_client_request()?;
    request
        .headers_mut()
        .insert("cookie", HeaderValue::from_str(cookie)?);
    // Small client buffers (tungstenite reads into 128 KiB by default), so that the memory
    // measurement is mostly the server's.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
    let replica = State::from_updates([])?;
    let sv = BASE64.encode(replica.vector());
    socket
        .send(Message::text(json!({"type": "sync", "sv": sv}).to_string()))
        .await?;
    while let Some(frame) = socket.next().await {
        let Message::Text(text) = frame? else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text)?;
        if frame["type"] == "sync" {
            let update = BASE64.decode(frame["update"].as_str().unwrap_or_default())?;
            replica.apply(&update)?;
            return Ok((socket, replica));
        }
    }
    anyhow::bail!("the socket closed before the sync answer")
}

/// Send times of the edits in flight, by their base64 text (unique per edit).
type Sent = Arc<Mutex<HashMap<String, Instant>>>;

async fn fan_out(
    address: &str,
    doc: i64,
    users: &[(i64, String)],
    args: &DocsArgs,
) -> anyhow::Result<()> {
    let sent: Sent = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let expected = (args.editors * args.edits * (args.editors - 1)) as u64;
    let bar = ProgressBar::new(expected).with_style(
        ProgressStyle::with_template("fan-out {bar:40} {pos}/{len} deliveries {elapsed}")
            .expect("a valid template"),
    );
    let mut editors = Vec::new();
    for (_, cookie) in users {
        editors.push(open(address, doc, cookie).await?);
    }
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let drain = Duration::from_secs_f64(args.drain_s);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (socket, replica) in editors {
        // One lock for the editor's replica: the reader applies others' edits while the writer
        // makes its own, and an edit's offsets must come from the text it is applied to.
        let replica = Arc::new(Mutex::new(replica));
        let (mut sink, mut stream) = socket.split();
        let (writer_sent, latencies, bar) = (sent.clone(), latencies.clone(), bar.clone());
        let sent = sent.clone();
        let reader_replica = replica.clone();
        let edits = args.edits;
        let reader = tokio::spawn(async move {
            let until = started + period * edits as u32 + drain;
            while let Ok(Some(Ok(frame))) =
                tokio::time::timeout_at(until.into(), stream.next()).await
            {
                let Message::Text(text) = frame else { continue };
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if frame["type"] != "doc.update" {
                    continue;
                }
                let update = frame["update"].as_str().unwrap_or_default();
                if let Some(at) = sent.lock().expect("not poisoned").get(update) {
                    latencies.lock().expect("not poisoned").push(at.elapsed());
                    bar.inc(1);
                }
                if let Ok(bytes) = BASE64.decode(update) {
                    let _ = reader_replica.lock().expect("not poisoned").apply(&bytes);
                }
            }
        });
        let sent = writer_sent;
        let writer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            for seq in 0..edits {
                tick.tick().await;
                let update = {
                    let replica = replica.lock().expect("not poisoned");
                    let text = replica.text();
                    let chars = text.chars().count();
                    let at = rand::rng().random_range(0..=chars);
                    let target: String = text
                        .chars()
                        .take(at)
                        .chain(format!("<{seq}>").chars())
                        .chain(text.chars().skip(at))
                        .collect();
                    BASE64.encode(replica.replace_text(&target))
                };
                sent.lock()
                    .expect("not poisoned")
                    .insert(update.clone(), Instant::now());
                let frame = json!({"type": "update", "update": update, "seq": seq});
                if sink.send(Message::text(frame.to_string())).await.is_err() {
                    break;
                }
            }
            // Kept open until the reader is done, so this editor's socket is not closed early.
            sink
        });
        tasks.push((reader, writer));
    }
    for (reader, writer) in tasks {
        let mut sink = writer.await?;
        reader.await?;
        let _ = sink.close().await;
    }
    bar.finish_and_clear();
    let mut times = std::mem::take(&mut *latencies.lock().expect("not poisoned"));
    times.sort_unstable();
    let received = times.len() as u64;
    let ms = |p: f64| {
        if times.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0 * times.len() as f64).ceil() as usize).saturating_sub(1);
        (times[i].as_secs_f64() * 1e6).round() / 1e3
    };
    println!(
        "{}",
        json!({
            "measure": "fan_out", "editors": args.editors, "edits_per_editor": args.edits,
            "rate_per_editor": args.rate, "deliveries": received, "lost": expected - received.min(expected),
            "p50_ms": ms(50.0), "p95_ms": ms(95.0), "p99_ms": ms(99.0), "max_ms": ms(100.0),
        })
    );
    Ok(())
}

/// RSS per open document: `n` documents, each connected and synced by one editor.
async fn memory(
    pool: &PgPool,
    address: &str,
    owner: &(i64, String),
    n: usize,
) -> anyhow::Result<()> {
    let mut docs = Vec::with_capacity(n);
    for i in 0..n {
        docs.push(document(pool, std::slice::from_ref(owner), &format!("memory {i}")).await?);
    }
    let pid = std::process::id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = crate::ws::rss_kib(pid);
    let bar = ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template("memory  {bar:40} {pos}/{len} documents open")
            .expect("a valid template"),
    );
    let mut open_docs = Vec::with_capacity(n);
    for doc in docs {
        // Each document gets one edit, so a replica holds real state.
        let (mut socket, replica) = open(address, doc, &owner.1).await?;
        let update = BASE64.encode(replica.replace_text("a line of text in this document"));
        socket
            .send(Message::text(
                json!({"type": "update", "update": update, "seq": 1}).to_string(),
            ))
            .await?;
        open_docs.push(socket);
        bar.inc(1);
    }
    bar.finish_and_clear();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = crate::ws::rss_kib(pid);
    println!(
        "{}",
        json!({
            "measure": "memory", "documents": n, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_open_document": (after.saturating_sub(before)) as f64 / n as f64,
        })
    );
    for mut socket in open_docs {
        let _ = socket.close(None).await;
    }
    Ok(())
}
