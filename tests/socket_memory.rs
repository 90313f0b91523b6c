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
    sync::{
        Mutex,
        atomic::{AtomicIsize, Ordering::Relaxed},
    },
};

use futures::{SinkExt, StreamExt};
use hearth::{
    Application, Routes,
    application::{App, testing::TestServer},
    channels::GroupName,
    web::ws::{self, Connection, Consumer, ConsumerError},
};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

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

/// The budget of one idle socket in bytes the server allocates (#36: at most 4 KiB of resident
/// memory per socket). Resident memory adds the allocator's rounding to it: bench/sockets.sh
/// measured 3.4 KiB of RSS per socket over 19,000 sockets when this test counted 3,133 bytes
/// (docs/scaling.md), so 3.25 KiB allocated is about 3.65 KiB resident. Before #36's changes
/// an idle socket held 7.8 KiB here.
const BUDGET: isize = 3328;

/// The same for a member of a chat room: a user, a room, a presence entry, and the write
/// buffer that keeps the size of the largest frame the socket was sent, here the hello with
/// the room's presence list (about 70 bytes per member present, so this grows with the room:
/// 11.6–11.8 KiB at the counts below with #36's changes, 16.5 KiB before them).
const CHAT_BUDGET: isize = 13 * 1024;

/// Sockets opened to warm the server up (its maps, its allocator), then the sockets counted.
const WARM: usize = 50;
const COUNTED: usize = 400;
/// Fewer for the chat: every member that joins is announced to every member already there.
const CHAT_WARM: usize = 20;
const CHAT_COUNTED: usize = 200;

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
    fn open(url: &str, count: usize, cookie: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["hold_sockets", "--exact", "--ignored", "--nocapture"])
            .env("SOCKET_MEMORY_URL", url)
            .env("SOCKET_MEMORY_COUNT", count.to_string())
            .env("SOCKET_MEMORY_COOKIE", cookie)
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

/// Bytes the server allocates per socket of `count` more opened to `url` once `warm` are.
async fn bytes_per_socket(url: &str, cookie: &str, warm: usize, count: usize) -> isize {
    let (url, cookie) = (url.to_owned(), cookie.to_owned());
    tokio::task::spawn_blocking(move || {
        let warm = Clients::open(&url, warm, &cookie);
        let before = LIVE.load(Relaxed);
        let counted = Clients::open(&url, count, &cookie);
        let after = LIVE.load(Relaxed);
        drop((counted, warm));
        (after - before) / count as isize
    })
    .await
    .unwrap()
}

/// The tests of this binary one at a time: the count is the whole process's, so one test's
/// server must not run while another counts.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `test` alone, on a runtime of its own that is gone (with its server's tasks) before
/// the next test starts.
fn alone(test: impl Future<Output = ()>) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

#[test]
fn an_idle_websocket_costs_the_server_at_most_its_budget() {
    alone(async {
        let server = TestServer::start(application()).await.unwrap();
        let url = server.ws_url("/ws/memory/lobby");
        let per_socket = bytes_per_socket(&url, "", WARM, COUNTED).await;
        eprintln!("{per_socket} bytes allocated per idle socket ({COUNTED} sockets)");
        assert!(
            per_socket <= BUDGET,
            "an idle socket holds {per_socket} bytes of the server's memory (budget {BUDGET})"
        );
    });
}

/// The chat's room socket (`/ws/rooms/{slug}`), signed in, in the lobby: what an idle member
/// of a room costs, with its user, its room and its presence.
#[test]
fn an_idle_chat_member_costs_the_server_at_most_its_budget() {
    alone(async {
        let server = TestServer::builder(hearth::bundled::application())
            .config(|c| c.channels.ws_max_per_user = 0)
            .start()
            .await
            .unwrap();
        let cookie = signed_up(&server, "ada").await;
        let url = server.ws_url("/ws/rooms/lobby");
        let per_socket = bytes_per_socket(&url, &cookie, CHAT_WARM, CHAT_COUNTED).await;
        eprintln!("{per_socket} bytes allocated per idle chat socket ({CHAT_COUNTED} sockets)");
        assert!(
            per_socket <= CHAT_BUDGET,
            "an idle chat socket holds {per_socket} bytes of the server's memory \
             (budget {CHAT_BUDGET})"
        );
    });
}

/// Signs `username` up as a browser does; the session's `Cookie` header.
async fn signed_up(server: &TestServer, username: &str) -> String {
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client.get(server.url("/login")).send().await.unwrap();
    let page = page.text().await.unwrap();
    let start = page
        .find(r#"name="csrf-token" content=""#)
        .expect("a CSRF meta tag")
        + 27;
    let token = &page[start..start + 64];
    let password = "correct horse battery";
    let form = [
        ("username", username),
        ("password", password),
        ("password_confirm", password),
        ("csrf_token", token),
    ];
    let response = client
        .post(server.url("/signup"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_redirection(), "{}", response.status());
    let url = reqwest::Url::parse(&server.url("/")).unwrap();
    reqwest::cookie::CookieStore::cookies(&*jar, &url)
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_owned()
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
    let cookie = std::env::var("SOCKET_MEMORY_COOKIE").unwrap_or_default();
    let count: usize = count.parse().expect("a count");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut sockets = Vec::with_capacity(count);
        for _ in 0..count {
            let mut request = url.as_str().into_client_request().unwrap();
            if !cookie.is_empty() {
                request
                    .headers_mut()
                    .insert("cookie", cookie.parse().unwrap());
            }
            let (mut socket, _) = tokio_tungstenite::connect_async(request)
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
