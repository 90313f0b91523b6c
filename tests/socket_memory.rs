//! What an idle WebSocket costs the server in memory (issue #36: at most 4 KiB of resident
//! memory per socket), counted in bytes allocated, so that a change which makes every open
//! socket larger fails here rather than in a benchmark run weeks later.
//!
//! A test binary of its own: it replaces the global allocator with one that counts the bytes
//! live in this process, and the clients run in a child process (this binary started again,
//! `hold_sockets`), so that what is counted is the server's alone. The server is the platform
//! with one consumer that does what W5's chat room does on connect (join one group) and then
//! waits; each client sends a ping and waits for the pong, which the server answers from its
//! connection loop, so every socket has been accepted, upgraded, connected and parked in its
//! loop before the count is read.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::{Read, Write},
    process::{Command, Stdio},
    sync::atomic::{AtomicIsize, Ordering::Relaxed},
};

use futures::{SinkExt, StreamExt};
use hearth::{
    Application, Routes,
    application::{App, testing::TestServer},
    channels::GroupName,
    web::ws::{self, Connection, Consumer, ConsumerError},
};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

/// Bytes allocated and not yet freed, by anything in this process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed to the system allocator unchanged; the counter only watches.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The budget of one idle socket in bytes the server allocates. Resident memory adds the
/// allocator's rounding and the kernel's page granularity to it: bench/sockets.sh measured
/// 3.6 KiB of RSS per socket with about 2.9 KiB allocated (docs/scaling.md). Before #36's
/// changes a socket held about 7.8 KiB here.
const BUDGET: isize = 3 * 1024;

/// Sockets opened to warm the server up (its maps, its allocator), then the sockets counted.
const WARM: usize = 50;
const COUNTED: usize = 400;

/// W5's room, as far as an idle socket goes: it joins its room's group on connect.
struct Room;

#[derive(Deserialize)]
struct Params {
    room: String,
}

impl Consumer for Room {
    type Params = Params;
    type Incoming = serde_json::Value;
    type Event = serde::de::IgnoredAny;

    async fn connect(ctx: &mut Connection, params: Params) -> Result<Self, ConsumerError> {
        let group = GroupName::parse(format!("memory.{}", params.room))?;
        ctx.subscription().join(&group);
        Ok(Self)
    }

    async fn receive(
        &mut self,
        _: &mut Connection,
        _: serde_json::Value,
    ) -> Result<(), ConsumerError> {
        Ok(())
    }
}

fn application() -> Application {
    Application::new().app(
        App::new("memory")
            .api_routes(|_| Ok(Routes::new().route("/ws/memory/{room}", ws::route::<Room>()))),
    )
}

/// A child process of this binary holding `count` sockets to `url` until its stdin closes.
struct Clients {
    child: std::process::Child,
    /// Kept open until the child ends (its test harness prints its result there).
    _stdout: std::process::ChildStdout,
}

impl Clients {
    /// Returns once every socket has had its pong.
    fn open(url: &str, count: usize) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["hold_sockets", "--exact", "--ignored", "--nocapture"])
            .env("SOCKET_MEMORY_URL", url)
            .env("SOCKET_MEMORY_COUNT", count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the client process");
        // Read a byte at a time, unbuffered: a reader's buffer would be counted as the server's.
        let mut stdout = child.stdout.take().expect("piped");
        let mut last = [0u8; 6];
        let mut byte = [0u8; 1];
        while &last != b"ready\n" {
            let read = stdout.read(&mut byte).expect("the client process's output");
            assert!(
                read == 1,
                "the client process ended before its sockets were open"
            );
            last.rotate_left(1);
            last[5] = byte[0];
        }
        Self {
            child,
            _stdout: stdout,
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_costs_the_server_at_most_its_budget() {
    let server = TestServer::start(application()).await.unwrap();
    let url = server.ws_url("/ws/memory/lobby");
    let warm = tokio::task::spawn_blocking({
        let url = url.clone();
        move || Clients::open(&url, WARM)
    })
    .await
    .unwrap();
    let before = LIVE.load(Relaxed);
    let counted = tokio::task::spawn_blocking(move || Clients::open(&url, COUNTED))
        .await
        .unwrap();
    let after = LIVE.load(Relaxed);
    let per_socket = (after - before) / COUNTED as isize;
    eprintln!("{per_socket} bytes allocated per idle socket ({COUNTED} sockets)");
    assert!(
        per_socket <= BUDGET,
        "an idle socket holds {per_socket} bytes of the server's memory (budget {BUDGET})"
    );
    tokio::task::spawn_blocking(move || drop((counted, warm)))
        .await
        .unwrap();
}

/// The client side, run in a child process by [`Clients::open`]; does nothing when run as a
/// test of its own.
#[test]
#[ignore = "the client process of an_idle_websocket_costs_the_server_at_most_its_budget"]
fn hold_sockets() {
    let (Ok(url), Ok(count)) = (
        std::env::var("SOCKET_MEMORY_URL"),
        std::env::var("SOCKET_MEMORY_COUNT"),
    ) else {
        return;
    };
    let count: usize = count.parse().expect("a count");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut sockets = Vec::with_capacity(count);
        for _ in 0..count {
            let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .expect("a socket");
            socket
                .send(Message::Ping(Default::default()))
                .await
                .unwrap();
            loop {
                match socket.next().await {
                    Some(Ok(Message::Pong(_))) => break,
                    Some(Ok(_)) => {}
                    other => panic!("no pong: {other:?}"),
                }
            }
            sockets.push(socket);
        }
        println!("ready");
        std::io::stdout().flush().unwrap();
        // Held until the test closes this process's stdin.
        tokio::task::spawn_blocking(|| std::io::stdin().lines().count())
            .await
            .unwrap();
        drop(sockets);
    });
}
