//! The benchmark protocol's routes (W1, W2, W3, W5 and W6) served by `hearth-bench`, the load
//! clients against them, and the floors.

use hearth::{Application, application::testing::TestServer, web::testing::WsClient};
use serde_json::json;

/// What `hearth-bench` serves: every bundled app and the bench app.
fn application() -> Application {
    hearth::bundled::application().app(hearth_bench::app())
}

async fn spawn() -> TestServer {
    let app = TestServer::start(application()).await.unwrap();
    hearth_bench::routes::seed(app.pool()).await.unwrap();
    app
}

async fn get(app: &TestServer, path: &str) -> reqwest::Response {
    reqwest::get(app.url(path)).await.unwrap()
}

/// `bench/sockets.sh` starts six instances at once on a fresh database, and each seeds the
/// posts at start: they take turns, and none fails on another's rows.
#[tokio::test]
async fn instances_seeding_at_once_take_turns() {
    let app = spawn().await;
    sqlx::query("DELETE FROM bench_posts")
        .execute(app.pool())
        .await
        .unwrap();

    let seeds = (0..6).map(|_| hearth_bench::routes::seed(app.pool()));
    let results = futures::future::join_all(seeds).await;

    for result in results {
        result.expect("every instance's seed succeeds");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_posts")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(count, 10_000);
}

#[tokio::test]
async fn the_page_lists_the_20_latest_posts_and_the_cached_page_hits() {
    let app = spawn().await;

    let page = get(&app, "/bench/page").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert_eq!(html.matches("<article").count(), 20);
    assert!(html.contains("id=\"post-10000\""), "newest first");
    assert!(html.contains("<time datetime=\""));

    let pipelined = get(&app, "/bench/page-pipelined")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(pipelined, html, "both read paths render the same page");

    let first = get(&app, "/bench/cached").await;
    assert_eq!(first.headers()["x-cache"], "MISS");
    let second = get(&app, "/bench/cached").await;
    assert_eq!(second.headers()["x-cache"], "HIT");
    assert_eq!(second.text().await.unwrap(), html);
}

#[tokio::test]
async fn the_chat_room_echoes_to_every_member_and_rejects_bad_rooms() {
    let app = spawn().await;
    let mut a = WsClient::connect(app.ws_url("/ws/chat/bench/"))
        .await
        .unwrap();
    let mut b = WsClient::connect(app.ws_url("/ws/chat/bench/"))
        .await
        .unwrap();

    a.send_json(&json!({"message": "7"})).await.unwrap();

    assert_eq!(a.recv_json().await.unwrap()["message"], "7");
    assert_eq!(b.recv_json().await.unwrap()["message"], "7");
    let mut bad = WsClient::connect(app.ws_url("/ws/chat/not%20ok/"))
        .await
        .unwrap();
    let (code, _) = bad.expect_close().await.unwrap();
    assert_eq!(code, hearth::web::ws::close_code::NOT_FOUND);
}

#[tokio::test]
async fn published_messages_reach_the_event_stream() {
    let app = spawn().await;
    let mut stream = get(&app, "/bench/events").await;
    let first = stream.chunk().await.unwrap().unwrap();
    assert!(
        std::str::from_utf8(&first)
            .unwrap()
            .starts_with(": connected")
    );

    let published = reqwest::Client::new()
        .post(app.url("/bench/publish"))
        .json(&json!({"message": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 204);

    let event = stream.chunk().await.unwrap().unwrap();
    let event = std::str::from_utf8(&event).unwrap();
    assert!(
        event.contains("data: {\"type\":\"bench.message\",\"message\":\"hi\"}"),
        "{event}"
    );
}

/// W3 against a stub of `upstream/stub.js`: the three bodies in order, or 502 if one fails.
#[tokio::test]
async fn gather_returns_the_three_upstream_bodies_or_502() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use axum::{
        Json, Router, extract::Path, http::StatusCode, response::IntoResponse,
        routing::get as route_get,
    };

    let failing = Arc::new(AtomicBool::new(false));
    let stub = Router::new().route(
        "/upstream/{n}",
        route_get({
            let failing = failing.clone();
            move |Path(n): Path<String>| async move {
                if n == "2" && failing.load(Ordering::SeqCst) {
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                Json(json!({"source": n, "value": 42, "delay_ms": 0})).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, stub).await.unwrap() });
    let app = TestServer::builder(application())
        .settings(|c: &mut hearth_bench::BenchSettings| {
            c.bench_upstream_url = base.parse().unwrap()
        })
        .start()
        .await
        .unwrap();

    let response = get(&app, "/bench/gather").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let sources: Vec<_> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["source"].as_str().unwrap())
        .collect();
    assert_eq!(body["count"], 3);
    assert_eq!(sources, ["1", "2", "3"]);
    assert_eq!(
        body["results"][0],
        json!({"source": "1", "value": 42, "delay_ms": 0})
    );

    failing.store(true, Ordering::SeqCst);
    let response = get(&app, "/bench/gather").await;
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "upstream 2: upstream answered 500"
    );
}

/// The Rust load clients against the real routes: every message reaches every receiver once,
/// and the figures they report add up.
#[tokio::test]
async fn the_rust_load_clients_count_every_delivery() {
    use hearth_bench::{sse::SseArgs, ws::WsArgs};

    let app = spawn().await;

    let chat = hearth_bench::ws::measure_chat(WsArgs {
        mode: hearth_bench::ws::WsMode::Chat,
        url: app.ws_url("/ws/chat/load/"),
        clients: 20,
        messages: 10,
        rate: 100.0,
        settle: 0.2,
        drain_s: 5.0,
        rss_pid: None,
        connect_concurrency: 10,
        role: hearth_bench::ws::Role::Both,
        sources: Vec::new(),
        wait_s: 10.0,
        send_to_all: false,
        hold_s: 0.0,
    })
    .await
    .unwrap();
    let events = hearth_bench::sse::measure(SseArgs {
        base: app.url(""),
        clients: 20,
        messages: 10,
        rate: 100,
        settle: 0.2,
        drain_s: 5.0,
        connect_concurrency: 10,
    })
    .await
    .unwrap();

    for result in [&chat, &events] {
        assert_eq!(result["connected"], 20, "{result}");
        assert_eq!(result["expected"], 200, "{result}");
        assert_eq!(result["delivered"], 200, "{result}");
        assert_eq!(result["lost"], 0, "{result}");
        assert_eq!(result["duplicates"], 0, "{result}");
        assert_eq!(result["malformed"], 0, "{result}");
        let (p50, p99) = (result["p50_ms"].as_f64(), result["p99_ms"].as_f64());
        assert!(
            p50.is_some_and(|p50| p50 > 0.0 && p50 <= p99.unwrap()),
            "{result}"
        );
    }
    assert_eq!(events["publish_failed"], 0, "{events}");
}

/// The chat workload split over processes, as `bench/sockets.sh` runs it: receivers bound to
/// other loopback addresses in one task, the sender in another, the latency read from the
/// wall-clock stamp each message carries.
#[tokio::test]
async fn split_receivers_count_every_stamped_message_from_another_sender() {
    use hearth_bench::ws::{Role, WsArgs, WsMode};
    let app = spawn().await;
    let args = |role, clients, settle| WsArgs {
        mode: WsMode::Chat,
        url: app.ws_url("/ws/chat/split/"),
        clients,
        messages: 10,
        rate: 100.0,
        settle,
        drain_s: 5.0,
        rss_pid: None,
        connect_concurrency: 10,
        role,
        sources: vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()],
        wait_s: 20.0,
        send_to_all: false,
        hold_s: 0.0,
    };

    // The sender waits two seconds for the receivers to connect, as the script waits for their
    // "ready" line.
    let (received, sent) = tokio::join!(
        hearth_bench::ws::measure_chat(args(Role::Receive, 20, 0.0)),
        hearth_bench::ws::measure_chat(args(Role::Send, 0, 2.0)),
    );
    let (received, sent) = (received.unwrap(), sent.unwrap());

    assert_eq!(sent["messages"], 10, "{sent}");
    assert_eq!(received["connected"], 20, "{received}");
    assert_eq!(received["delivered"], 200, "{received}");
    assert_eq!(received["lost"], 0, "{received}");
    assert_eq!(received["malformed"], 0, "{received}");
    let p50 = received["p50_ms"].as_f64().unwrap();
    assert!(
        p50 > 0.0 && p50 < 5_000.0,
        "a latency from the stamp: {received}"
    );
}

#[tokio::test]
async fn the_floor_server_writes_each_message_to_every_socket_and_forgets_closed_ones() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws/chat/bench/", listener.local_addr().unwrap());
    let floor = hearth_bench::ws_floor::Floor::default();
    let server = tokio::spawn({
        let floor = floor.clone();
        async move { floor.serve(listener).await }
    });
    let mut a = WsClient::connect(&url).await.unwrap();
    let mut b = WsClient::connect(&url).await.unwrap();
    let gone = WsClient::connect(&url).await.unwrap();
    gone.close().await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), floor.until_open(2))
        .await
        .expect("the closed socket stays listed");

    a.send_json(&json!({"message": "7"})).await.unwrap();
    a.send_text("not json").await.unwrap();
    b.send_json(&json!({"message": "8"})).await.unwrap();

    for client in [&mut a, &mut b] {
        assert_eq!(
            client.recv_json().await.unwrap(),
            json!({"type": "chat.message", "message": "7"})
        );
        assert_eq!(client.recv_json().await.unwrap()["message"], "8");
    }
    assert_eq!(floor.counts(), (4, 0), "two messages to two open sockets");
    server.abort();
}

/// The HTTP floor serves what Hearth serves for W1 and W2 (the same bytes), and W3's three
/// upstream bodies in order.
#[tokio::test]
async fn the_http_floor_serves_the_same_page_and_gathers_the_three_upstreams() {
    use std::sync::Arc;

    use axum::{Json, Router, extract::Path, routing::get as route_get};

    let stub = Router::new().route(
        "/upstream/{n}",
        route_get(|Path(n): Path<String>| async move { Json(json!({"source": n})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream: url::Url = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, stub).await.unwrap() });
    let app = spawn().await;
    let floor = hearth_bench::http_floor::HttpFloor::connect(&app.database.url(), &upstream)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(Arc::new(floor).serve(listener));

    let hearth = get(&app, "/bench/page").await.text().await.unwrap();
    for path in ["/bench/page", "/bench/cached"] {
        let floor = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(floor.status(), 200);
        assert_eq!(floor.text().await.unwrap(), hearth, "{path}");
    }
    let gathered: serde_json::Value = reqwest::get(format!("{base}/bench/gather"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        gathered,
        json!({"count": 3, "results": [{"source": "1"}, {"source": "2"}, {"source": "3"}]})
    );
    let missing = reqwest::get(format!("{base}/elsewhere")).await.unwrap();
    assert_eq!(missing.status(), 404);
    server.abort();
}
