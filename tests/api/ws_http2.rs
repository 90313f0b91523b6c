//! WebSockets over HTTP/2 (RFC 8441): every socket route answers an extended `CONNECT`
//! (`:protocol = websocket`) as it answers an HTTP/1.1 upgrade, on h2c with prior knowledge and
//! on TLS with ALPN `h2`, with the same checks and limits: the `Origin` check (the host is
//! `:authority` there), the per-user and per-address socket limits, the message size limit, the
//! idle timeout, and CSRF, which lets the WebSocket's `CONNECT` through and nothing else.
//!
//! The clients are real: `WsClient` with `.http2()` (a connection of its own) or
//! `Http2Connection` (several sockets and page loads on one connection, over TCP or TLS),
//! against a server on a real socket; the other side of a conversation is an HTTP/1.1 socket.

use std::time::Duration;

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
};
use futures::{SinkExt, StreamExt};
use hearth::{
    tls::Tls,
    web::{
        testing::{Http2Connection, WsClient, WsTestError},
        ws::close_code,
    },
};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    chat::{next, say},
    helpers::{TestApp, TestUser},
    http2::{BOUND, port, tls_app, tls_connect, valid_certificate, write_pair},
};

const LOBBY: &str = "/ws/rooms/lobby";

/// An h2c connection (prior knowledge) to `app`, as a proxy speaking HTTP/2 to it opens one.
async fn h2c(app: &TestApp) -> Http2Connection {
    let tcp = TcpStream::connect(("127.0.0.1", port(app))).await.unwrap();
    Http2Connection::handshake(tcp, "http", &format!("127.0.0.1:{}", port(app)))
        .await
        .expect("the server announces SETTINGS_ENABLE_CONNECT_PROTOCOL")
}

/// `user`'s socket to the lobby over HTTP/2, from the app's own origin.
async fn lobby_over_h2(app: &TestApp, user: &TestUser<'_>) -> Result<WsClient, WsTestError> {
    WsClient::build(app.ws_url(LOBBY))
        .cookie(user.cookie.clone())
        .origin(app.address.clone())
        .http2()
        .connect()
        .await
}

#[tokio::test]
async fn a_chat_message_sent_over_http2_reaches_a_socket_on_http1_and_back() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;

    // Ada's browser speaks HTTP/2 (and sends its Origin, checked against `:authority`: our
    // client sends no Host header); bob's opens an HTTP/1.1 upgrade.
    let mut a = lobby_over_h2(&app, &ada)
        .await
        .expect("an extended CONNECT opens the socket");
    assert_eq!(next(&mut a, "hello").await["you"]["username"], "ada");
    let mut b = bob.socket(LOBBY).await;
    next(&mut b, "hello").await;
    while next(&mut a, "presence.join").await["username"] != "bob" {}

    say(&mut a, "sent over HTTP/2").await;
    for client in [&mut a, &mut b] {
        let frame = next(client, "chat.message").await;
        assert_eq!(frame["message"]["body"], "sent over HTTP/2");
        assert_eq!(frame["message"]["author"], "ada");
    }
    say(&mut b, "sent over HTTP/1.1").await;
    for client in [&mut a, &mut b] {
        let frame = next(client, "chat.message").await;
        assert_eq!(frame["message"]["body"], "sent over HTTP/1.1");
        assert_eq!(frame["message"]["author"], "bob");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_messages")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 2);
}

#[tokio::test]
async fn sockets_and_page_loads_share_one_http2_connection() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let connection = h2c(&app).await;
    let open = || {
        WsClient::build(app.ws_url(LOBBY))
            .cookie(ada.cookie.clone())
            .connect_on(&connection)
    };
    // Two tabs of one browser: two streams of one connection, and a page load beside them.
    let mut first = open().await.unwrap();
    next(&mut first, "hello").await;
    let mut second = open().await.unwrap();
    next(&mut second, "hello").await;
    let page = connection
        .send(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.version(), axum::http::Version::HTTP_2);
    assert_eq!(app.state.sockets.of_user(ada.id), 2);

    say(&mut second, "to both tabs").await;
    for tab in [&mut first, &mut second] {
        let frame = next(tab, "chat.message").await;
        assert_eq!(frame["message"]["body"], "to both tabs");
    }
}

/// The next frame of the echo room whose message is `text` (earlier ones skipped).
async fn heard<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let frame = tokio::time::timeout(BOUND, socket.next())
            .await
            .unwrap_or_else(|_| panic!("{text:?} did not arrive"))
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(frame) = frame {
            let frame: Value = serde_json::from_str(&frame).unwrap();
            if frame["message"] == text {
                return;
            }
        }
    }
}

/// [`heard`] for a `WsClient`.
async fn client_heard(client: &mut WsClient, text: &str) {
    loop {
        let frame = client.recv_json_within(BOUND).await.unwrap();
        if frame["message"] == text {
            return;
        }
    }
}

#[tokio::test]
async fn a_websocket_opens_over_https_with_http2_negotiated_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let pair = valid_certificate();
    let (cert, key) = write_pair(dir.path(), &pair);
    let app = tls_app(Tls::load(&cert, &key).unwrap()).await;
    let authority = format!("localhost:{}", port(&app));
    let room = format!("wss://{authority}/ws/echo/h2-over-tls/");

    let tls = tls_connect(&app, &pair.0, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let connection = Http2Connection::handshake(tls, "https", &authority)
        .await
        .expect("SETTINGS_ENABLE_CONNECT_PROTOCOL over TLS too");

    // A foreign page is refused on this connection too, before any stream is upgraded.
    let foreign = WsClient::build(room.clone())
        .origin("https://evil.example")
        .connect_on(&connection)
        .await
        .err();
    assert!(
        matches!(foreign, Some(WsTestError::Refused(403))),
        "{foreign:?}"
    );

    let mut h2 = WsClient::build(room.clone())
        .origin(format!("https://{authority}"))
        .connect_on(&connection)
        .await
        .expect("the page's own origin opens the socket over h2");
    let h1_stream = tls_connect(&app, &pair.0, &[b"http/1.1"]).await;
    let (mut h1, response) = tokio_tungstenite::client_async(room, h1_stream)
        .await
        .expect("the HTTP/1.1 upgrade still works over TLS");
    assert_eq!(response.status(), 101);

    // Each side hears itself first: then it is in the room.
    h2.send_json(&json!({"message": "h2 joined"}))
        .await
        .unwrap();
    client_heard(&mut h2, "h2 joined").await;
    h1.send(Message::text(r#"{"message":"h1 joined"}"#))
        .await
        .unwrap();
    heard(&mut h1, "h1 joined").await;

    h2.send_json(&json!({"message": "from h2 over TLS"}))
        .await
        .unwrap();
    heard(&mut h1, "from h2 over TLS").await;
    h1.send(Message::text(r#"{"message":"from HTTP/1.1 over TLS"}"#))
        .await
        .unwrap();
    client_heard(&mut h2, "from HTTP/1.1 over TLS").await;
}

#[tokio::test]
async fn a_foreign_origin_is_refused_over_http2_before_the_stream_opens() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let refused = WsClient::build(app.ws_url(LOBBY))
        .cookie(ada.cookie.clone())
        .origin("https://evil.example")
        .http2()
        .connect()
        .await
        .err();
    assert!(
        matches!(refused, Some(WsTestError::Refused(403))),
        "{refused:?}"
    );
    // Refused before the limits count it.
    assert_eq!(app.state.sockets.of_user(ada.id), 0);
    // A page whose origin names another port of the same host is another origin.
    let other_port = WsClient::build(app.ws_url(LOBBY))
        .cookie(ada.cookie.clone())
        .origin("http://127.0.0.1:1")
        .http2()
        .connect()
        .await
        .err();
    assert!(
        matches!(other_port, Some(WsTestError::Refused(403))),
        "{other_port:?}"
    );
    // The page's own origin, and a client that sends none (no browser), are let in.
    let mut own = lobby_over_h2(&app, &ada).await.unwrap();
    next(&mut own, "hello").await;
    let mut no_origin = WsClient::build(app.ws_url(LOBBY))
        .cookie(ada.cookie.clone())
        .http2()
        .connect()
        .await
        .unwrap();
    next(&mut no_origin, "hello").await;
}

#[tokio::test]
async fn the_per_user_and_per_address_limits_count_sockets_on_both_protocols() {
    // Arrange: two sockets per user, three per address.
    let app = TestApp::builder()
        .config(|c| {
            c.channels.ws_max_per_user = 2;
            c.channels.ws_max_per_address = 3;
        })
        .spawn()
        .await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let connection = h2c(&app).await;
    let on_h2 = |user: &TestUser<'_>| {
        WsClient::build(app.ws_url(LOBBY))
            .cookie(user.cookie.clone())
            .connect_on(&connection)
    };

    // Act: ada holds one socket on HTTP/2 and one on HTTP/1.1, then asks for a third.
    let mut first = on_h2(&ada).await.unwrap();
    next(&mut first, "hello").await;
    let _second = ada.socket(LOBBY).await;

    // Assert: refused with 429 whichever protocol asks, on the shared connection or a new one.
    for (how, third) in [
        ("a stream of the same connection", on_h2(&ada).await.err()),
        (
            "a new HTTP/2 connection",
            lobby_over_h2(&app, &ada).await.err(),
        ),
        (
            "an HTTP/1.1 upgrade",
            WsClient::build(app.ws_url(LOBBY))
                .cookie(ada.cookie.clone())
                .connect()
                .await
                .err(),
        ),
    ] {
        assert!(
            matches!(third, Some(WsTestError::Refused(429))),
            "ada's third socket, over {how}: {third:?}"
        );
    }
    assert_eq!(app.state.sockets.of_user(ada.id), 2);
    // Bob gets the address's third place, on the same connection, and no fourth.
    let mut bobs = on_h2(&bob).await.unwrap();
    next(&mut bobs, "hello").await;
    let fourth = on_h2(&bob).await.err();
    assert!(
        matches!(fourth, Some(WsTestError::Refused(429))),
        "{fourth:?}"
    );

    // A socket closed on HTTP/2 gives its place back (the stream ends, the connection stays).
    first.close().await.unwrap();
    let deadline = tokio::time::Instant::now() + BOUND;
    while app.state.sockets.of_user(ada.id) > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed socket's place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut again = on_h2(&ada).await.unwrap();
    next(&mut again, "hello").await;
}

#[tokio::test]
async fn an_oversized_message_over_http2_closes_the_socket_with_1009() {
    let app = TestApp::builder()
        .config(|c| c.channels.ws_max_message = 16 * 1024)
        .spawn()
        .await;
    let ada = app.user("ada").await;
    let mut socket = lobby_over_h2(&app, &ada).await.unwrap();
    next(&mut socket, "hello").await;

    say(&mut socket, &"x".repeat(64 * 1024)).await;

    let (code, _) = socket.expect_close().await.unwrap();
    assert_eq!(code, close_code::TOO_BIG);
}

#[tokio::test]
async fn a_silent_socket_over_http2_is_closed_at_the_idle_timeout() {
    let app = TestApp::builder()
        .config(|c| {
            c.channels.ws_idle_timeout = Duration::from_millis(500);
            // No ping (and so no pong) within the test: only the idle timer can close it.
            c.channels.ws_ping_interval = Duration::from_secs(600);
        })
        .spawn()
        .await;
    let ada = app.user("ada").await;
    let mut socket = lobby_over_h2(&app, &ada).await.unwrap();

    let (code, _) = socket.expect_close_within(BOUND).await.unwrap();
    assert_eq!(code, close_code::IDLE_TIMEOUT);
}

#[tokio::test]
async fn a_socket_outlives_the_idle_close_of_its_http2_connection() {
    // One second without a request in flight closes a connection gracefully (GOAWAY): the
    // streams open then, a WebSocket among them, go on.
    let app = TestApp::builder()
        .config(|c| c.http.header_read_timeout = Duration::from_secs(1))
        .spawn()
        .await;
    let ada = app.user("ada").await;
    let mut socket = lobby_over_h2(&app, &ada).await.unwrap();
    next(&mut socket, "hello").await;

    // No event to wait for: what is tested is that time passes with no request in flight.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    say(&mut socket, "still here").await;
    let frame = next(&mut socket, "chat.message").await;
    assert_eq!(frame["message"]["body"], "still here");
}

/// An extended CONNECT for `protocol` to `path`, as `cookie`'s browser, on `connection`.
async fn extended_connect(
    connection: &Http2Connection,
    path: &str,
    protocol: &'static str,
    cookie: &str,
) -> StatusCode {
    let request = Request::builder()
        .method(Method::CONNECT)
        .version(axum::http::Version::HTTP_2)
        .uri(path)
        .extension(hyper::ext::Protocol::from_static(protocol))
        .header("sec-websocket-version", "13")
        .header("cookie", cookie)
        .body(Body::empty())
        .unwrap();
    connection.send(request).await.unwrap().status()
}

#[tokio::test]
async fn csrf_lets_through_the_websocket_connect_and_nothing_else() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let connection = h2c(&app).await;

    // The WebSocket's CONNECT carries no token, as a browser's does not; the Origin check
    // stands in for it (above). Any other protocol needs the token, like any unsafe method.
    assert_eq!(
        extended_connect(&connection, LOBBY, "websocket", &ada.cookie).await,
        StatusCode::OK
    );
    assert_eq!(
        extended_connect(&connection, LOBBY, "webtransport", &ada.cookie).await,
        StatusCode::FORBIDDEN
    );
    // Let through, a CONNECT reaches no handler but a socket's: not a form's, not logout's.
    assert_eq!(
        extended_connect(&connection, "/posts", "websocket", &ada.cookie).await,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        extended_connect(&connection, "/logout", "websocket", &ada.cookie).await,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        ada.browser.signed_in_as().await.as_deref(),
        Some("ada"),
        "still signed in"
    );
    let posts: i64 = sqlx::query_scalar("SELECT count(*) FROM posts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(posts, 0);
}

#[tokio::test]
async fn binary_frames_travel_over_http2_up_to_the_size_limit() {
    // The consumer of cache_api.rs that answers each binary frame reversed; 4096-byte limit.
    let app = crate::cache_api::socket_app().await;
    let mut socket = WsClient::build(app.ws_url("/ws/test/reverse"))
        .http2()
        .connect()
        .await
        .unwrap();

    let full: Vec<u8> = (0..4096).map(|i| (i % 251) as u8).collect();
    socket.send_binary(full.clone()).await.unwrap();
    let back = socket.recv_binary().await.unwrap();
    assert!(
        back.iter().eq(full.iter().rev()),
        "4096 bytes arrive intact"
    );
    socket.send_binary(vec![0; 4097]).await.unwrap();
    let (code, _) = socket.expect_close().await.unwrap();
    assert_eq!(code, close_code::TOO_BIG);
}

#[tokio::test]
async fn a_message_larger_than_the_http2_flow_control_window_arrives_intact() {
    // 768 KiB each way: many times HTTP/2's initial 64 KiB stream window, so it only gets
    // through if both sides give the window back as the socket's frames are read.
    let app = TestApp::builder()
        .routes(crate::echo::routes())
        .spawn()
        .await;
    let mut socket = WsClient::build(app.ws_url("/ws/echo/window/"))
        .http2()
        .connect()
        .await
        .unwrap();
    let text: String = (0..768 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();

    socket.send_json(&json!({"message": text})).await.unwrap();

    let frame = socket.recv_json_within(BOUND).await.unwrap();
    assert_eq!(frame["message"].as_str().map(str::len), Some(text.len()));
    assert_eq!(frame["message"], text.as_str());
}
