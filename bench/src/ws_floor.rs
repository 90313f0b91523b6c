//! `hearth bench ws-floor`: the least a W5 server can do, to measure what the machine allows.
//!
//! W5's latency on one small machine is mostly not the server's own work: every delivery is a
//! TCP send over loopback, and the kernel runs the receiving socket's side of it (and wakes the
//! load client) inside that send, on the same two cores the client needs to read the frames.
//! This server speaks just enough of W5 to be measured by the same client — it accepts
//! WebSockets on any path, and each `{"message": ...}` a client sends is written as
//! `{"type":"chat.message","message":...}` to every open socket — and does nothing else: no
//! database, no channel layer, no task per socket; one nonblocking write per socket, straight
//! from the task that read the message. Its latency is what the kernel and the client alone cost
//! on that machine; `bench/run.sh` measures it as a third side of the `w5rust` workload, beside
//! Hearth and the peer.
//!
//! A socket whose kernel buffer is full is not waited for: that delivery is counted as dropped
//! (and a socket that took part of a frame gets nothing more), printed at the end, so a run with
//! drops says it measured less than the whole fan-out.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use tokio::{
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
    sync::watch,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{
            Role,
            frame::{
                Frame,
                coding::{Data, OpCode},
            },
        },
    },
};

use crate::routes::{ChatMessage, Message as Sent};

#[derive(Debug, Clone, clap::Args)]
pub struct FloorArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8200")]
    pub listen: String,
}

/// Serves until Ctrl-C or SIGTERM, then prints what it delivered.
pub async fn run(args: FloorArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("ws-floor listening on ws://{}/", listener.local_addr()?);
    let floor = Floor::default();
    // bench/run.sh stops its servers with SIGTERM, a terminal with Ctrl-C: both print the counts.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot wait for SIGTERM")?;
    tokio::select! {
        result = floor.serve(listener) => result?,
        signal = tokio::signal::ctrl_c() => signal.context("cannot wait for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    let (delivered, dropped) = floor.counts();
    println!(r#"{{"server":"ws-floor","delivered":{delivered},"dropped":{dropped}}}"#);
    Ok(())
}

/// The open sockets' write halves, and what was written to them.
#[derive(Clone, Default)]
pub struct Floor {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    // A std mutex: held to insert, remove or clone the list, never across an await.
    sockets: Mutex<HashMap<u64, Arc<OwnedWriteHalf>>>,
    /// How many sockets are listed, sent on every change while the list is locked.
    open: watch::Sender<usize>,
    next_id: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

impl Floor {
    /// Accepts sockets from `listener` until it fails.
    pub async fn serve(&self, listener: TcpListener) -> anyhow::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await.context("accept failed")?;
            let floor = self.clone();
            tokio::spawn(async move {
                if let Err(e) = floor.connection(stream).await {
                    tracing::debug!(%peer, error = %e, "ws-floor connection ended");
                }
            });
        }
    }

    /// Deliveries written whole, and deliveries dropped because a socket's buffer was full.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.inner.delivered.load(Relaxed),
            self.inner.dropped.load(Relaxed),
        )
    }

    /// Waits until exactly `n` sockets are open (accepted and not yet closed).
    pub async fn until_open(&self, n: usize) {
        let mut open = self.inner.open.subscribe();
        // The sender lives as long as `self`, so the wait cannot fail.
        let _ = open.wait_for(|&open| open == n).await;
    }

    async fn connection(&self, mut stream: TcpStream) -> anyhow::Result<()> {
        stream.set_nodelay(true)?;
        // The handshake borrows the stream; nothing else is read before the client has the 101.
        drop(tokio_tungstenite::accept_async(&mut stream).await?);
        let (read, write) = stream.into_split();
        let id = self.inner.next_id.fetch_add(1, Relaxed);
        self.update(|sockets| {
            sockets.insert(id, Arc::new(write));
        });
        // Frames are read through tungstenite; what it would write (pongs, close replies) goes
        // nowhere, which the load client does not mind.
        let mut frames = WebSocketStream::from_raw_socket(
            tokio::io::join(read, tokio::io::sink()),
            Role::Server,
            None,
        )
        .await;
        let result = async {
            while let Some(message) = frames.next().await {
                match message? {
                    Message::Text(text) => {
                        if let Ok(sent) = serde_json::from_str::<Sent>(&text) {
                            self.fan_out(&sent.message)?;
                        }
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            anyhow::Ok(())
        }
        .await;
        self.update(|sockets| {
            sockets.remove(&id);
        });
        result
    }

    /// Writes one text frame to every open socket, without waiting for any.
    fn fan_out(&self, message: &str) -> anyhow::Result<()> {
        let json = serde_json::to_string(&ChatMessage {
            kind: "chat.message",
            message,
        })?;
        let mut frame = Vec::with_capacity(json.len() + 10);
        Frame::message(Bytes::from(json), OpCode::Data(Data::Text), true).format(&mut frame)?;
        let sockets: Vec<_> = self
            .lock()
            .iter()
            .map(|(id, socket)| (*id, Arc::clone(socket)))
            .collect();
        let (mut delivered, mut cut) = (0, Vec::new());
        for (id, socket) in sockets {
            match socket.try_write(&frame) {
                Ok(n) if n == frame.len() => delivered += 1,
                // Part of a frame went out: whatever followed would be misread, so the socket
                // gets nothing more.
                Ok(_) => cut.push(id),
                Err(_) => {
                    self.inner.dropped.fetch_add(1, Relaxed);
                }
            }
        }
        self.inner.delivered.fetch_add(delivered, Relaxed);
        if !cut.is_empty() {
            self.inner.dropped.fetch_add(cut.len() as u64, Relaxed);
            self.update(|sockets| {
                for id in cut {
                    sockets.remove(&id);
                }
            });
        }
        Ok(())
    }

    /// Changes the socket list and publishes its new length.
    fn update(&self, change: impl FnOnce(&mut HashMap<u64, Arc<OwnedWriteHalf>>)) {
        let mut sockets = self.lock();
        change(&mut sockets);
        self.inner.open.send_replace(sockets.len());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<OwnedWriteHalf>>> {
        self.inner
            .sockets
            .lock()
            .expect("the socket list is never left half-updated")
    }
}
