//! Hostile input against a running server: every case ends in a 4xx or an error frame with a
//! reason, nothing is written half-way, and the server keeps serving.

use std::time::Duration;

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::TestApp;

/// Sends `request` as raw bytes and returns the status line of the answer.
async fn raw(app: &TestApp, request: &[u8]) -> String {
    let address = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_and_the_server_keeps_serving() {
    let app = TestApp::spawn().await;

    // Path traversal out of /static, plain and encoded: never a file from outside.
    for path in [
        "/static/../Cargo.toml",
        "/static/..%2f..%2fCargo.toml",
        "/static/%2e%2e/%2e%2e/Cargo.toml",
        "/static/..%5c..%5cCargo.toml",
    ] {
        let status = raw(
            &app,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            status.contains(" 404 ") || status.contains(" 400 "),
            "{path}: {status}"
        );
    }
    // Invalid UTF-8 in the path, a header line without a colon, a bad method, garbage.
    for request in [
        &b"GET /posts/%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nthis is not a header\r\nConnection: close\r\n\r\n",
        b"GE(T / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\nConnection: close\r\n\r\n",
    ] {
        let status = raw(&app, request).await;
        assert!(
            status.starts_with("HTTP/1.1 4"),
            "{:?}: {status}",
            String::from_utf8_lossy(request)
        );
    }
    // A body over the limit is refused before it is read, and nothing is created.
    let huge = "x".repeat(3 * 1024 * 1024);
    let response = app
        .client
        .post(app.url("/signup"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("username=huge&password={huge}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(users, 0);

    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/").await.status(), 200);
}

#[tokio::test]
async fn hostile_socket_frames_get_error_frames_and_the_socket_stays_usable() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let mut socket = ada.socket("/ws/rooms/lobby").await;
    assert_eq!(socket.recv_json().await.unwrap()["type"], "hello");

    // 10,000 levels of nesting (serde_json stops at 128), invalid UTF-8 as binary, an unknown
    // type, a field of the wrong type.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    socket.send_text(deep).await.unwrap();
    socket.send_binary(vec![0xff, 0xfe, 0x00]).await.unwrap();
    socket
        .send_json(&json!({"type": "launch_missiles"}))
        .await
        .unwrap();
    socket
        .send_json(&json!({"type": "send", "body": 42}))
        .await
        .unwrap();
    let mut errors = 0;
    while errors < 4 {
        let frame = socket.recv_json().await.unwrap();
        if frame["type"] == "presence.join" {
            continue;
        }
        assert_eq!(frame["type"], "error", "{frame}");
        let reason = frame["error"].as_str().or(frame["message"].as_str());
        assert!(reason.is_some_and(|e| !e.is_empty()), "{frame}");
        errors += 1;
    }

    // Still a working socket: a real message goes through, and nothing else was stored.
    socket
        .send_json(&json!({"type": "send", "body": "still here"}))
        .await
        .unwrap();
    let frame = socket.recv_type("chat.message").await.unwrap();
    assert_eq!(frame["message"]["body"], "still here");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_messages")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
}
