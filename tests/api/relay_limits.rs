//! Limits on what one client can make the server relay to others (issue #30, hole 5): the
//! chat send rate limit under concurrent sockets on two instances, the bound on a chat frame's
//! `nonce`, and document carets (`awareness`) that are typed, bounded and from editors only.

use hearth::web::testing::WsClient;
use serde_json::{Value, json};

use crate::{
    documents::{create_doc, share},
    helpers::TestApp,
};

/// The chat limit: at most this many messages per user in any 10 seconds.
const RATE_LIMIT: i64 = 10;
/// Sends per socket in the flood: together well past the limit.
const SENDS: usize = 8;

async fn joined(app: &TestApp, cookie: &str, path: &str) -> WsClient {
    let mut socket = WsClient::build(app.ws_url(path))
        .cookie(cookie)
        .connect()
        .await
        .unwrap();
    socket.recv_type("hello").await.unwrap();
    socket
}

/// Sends `SENDS` messages at once, then waits for the answer to each: the message coming
/// back with this socket's nonce (stored), or a `rate_limited` error (refused).
async fn flood(mut socket: WsClient, index: usize) -> (usize, usize) {
    let mine = format!("s{index}-");
    for k in 0..SENDS {
        let frame = json!({"type": "send", "body": format!("flood {index}.{k}"), "nonce": format!("{mine}{k}")});
        socket.send_json(&frame).await.unwrap();
    }
    let (mut stored, mut refused) = (0, 0);
    while stored + refused < SENDS {
        let frame = socket.recv_json().await.unwrap();
        match frame["type"].as_str() {
            Some("chat.message") if frame["nonce"].as_str().unwrap().starts_with(&mine) => {
                stored += 1
            }
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited", "{frame}");
                refused += 1;
            }
            _ => {}
        }
    }
    (stored, refused)
}

#[tokio::test]
async fn five_sockets_of_one_user_on_two_instances_get_at_most_the_limit_through() {
    let a = TestApp::spawn().await;
    let b = TestApp::builder()
        .database(a.db_options.clone())
        .spawn()
        .await;
    let ada = a.user("ada").await;
    let mut sockets = Vec::new();
    for i in 0..5 {
        let app = if i % 2 == 0 { &a } else { &b };
        sockets.push(joined(app, &ada.cookie, "/ws/rooms/lobby").await);
    }

    let outcomes = futures::future::join_all(
        sockets
            .into_iter()
            .enumerate()
            .map(|(i, socket)| flood(socket, i)),
    )
    .await;

    let answered_stored: usize = outcomes.iter().map(|(stored, _)| stored).sum();
    let refused: usize = outcomes.iter().map(|(_, refused)| refused).sum();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_messages")
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(
        stored as usize, answered_stored,
        "every stored send was told"
    );
    assert!(refused > 0, "the flood reached the limit: {outcomes:?}");
    // The contract is a sliding window: no 10 seconds hold more than the limit, however long
    // the flood took on a loaded machine.
    let busiest: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(n), 0) FROM (
             SELECT count(*) OVER (ORDER BY created_at
                                   RANGE BETWEEN CURRENT ROW AND interval '9.999999 seconds' FOLLOWING) AS n
               FROM chat_messages) w",
    )
    .fetch_one(&a.pool)
    .await
    .unwrap();
    assert!(
        busiest <= RATE_LIMIT,
        "{busiest} messages in 10 s got through (limit {RATE_LIMIT}); per socket {outcomes:?}"
    );
}

#[tokio::test]
async fn an_oversized_or_unprintable_nonce_is_refused_and_nothing_is_relayed() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let mut a = joined(&app, &ada.cookie, "/ws/rooms/lobby").await;
    let mut b = joined(&app, &bob.cookie, "/ws/rooms/lobby").await;

    let longest = "n".repeat(hearth::chat::consumer::MAX_NONCE);
    for nonce in [
        "n".repeat(500_000),
        format!("{longest}n"),
        String::new(),
        "two words".into(),
        "tab\there".into(),
        "café".into(),
    ] {
        a.send_json(&json!({"type": "send", "body": "x", "nonce": nonce}))
            .await
            .unwrap();
        let error = a.recv_type("error").await.unwrap();
        assert_eq!(error["code"], "invalid", "{error}");
        assert!(error["message"].as_str().unwrap().contains("64"), "{error}");
    }
    // What the browser sends (a UUID) and the longest nonce pass; bob's first message is the
    // first of these, so none of the refused sends reached him.
    let uuid = "0b7f6a52-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
    for nonce in [uuid, &longest] {
        a.send_json(&json!({"type": "send", "body": "x", "nonce": nonce}))
            .await
            .unwrap();
        let relayed = b.recv_type("chat.message").await.unwrap();
        assert_eq!(relayed["nonce"], nonce);
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_messages")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 2);
}

/// A caret as `static/js/docs.js` sends it: two Yjs relative positions.
fn browser_caret() -> Value {
    json!({
        "anchor": {"type": null, "tname": "body", "item": {"client": 3_123_456_789u64, "clock": 41}, "assoc": -1},
        "head": {"type": null, "tname": "body", "item": null, "assoc": -1},
    })
}

async fn caret(socket: &mut WsClient, cursor: Value) {
    socket
        .send_json(&json!({"type": "awareness", "cursor": cursor}))
        .await
        .unwrap();
}

#[tokio::test]
async fn carets_are_bounded_typed_and_from_editors_only() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let cyd = app.user("cyd").await;
    let doc = create_doc(&ada, "Carets").await;
    share(&ada, doc, "bob", "edit").await;
    share(&ada, doc, "cyd", "read").await;
    let path = format!("/ws/docs/{doc}");
    let mut watcher = joined(&app, &ada.cookie, &path).await;
    let mut editor = joined(&app, &bob.cookie, &path).await;
    let mut reader = joined(&app, &cyd.cookie, &path).await;

    let big = "x".repeat(200_000);
    for bad in [
        json!({"anchor": {"tname": big}, "head": null}),
        json!({"anchor": null, "head": null, "state": {"junk": big}}),
        json!(big),
        json!({"anchor": {"item": {"client": "1", "clock": 0}}}),
        json!({"anchor": {"item": {"client": 1, "clock": 0.5}}}),
        json!([browser_caret(), browser_caret()]),
    ] {
        caret(&mut editor, bad).await;
        let error = editor.recv_type("error").await.unwrap();
        assert_eq!(error["code"], "invalid_awareness", "{error}");
        assert!(error["message"].as_str().unwrap().len() < 300, "{error}");
    }
    caret(&mut reader, browser_caret()).await;
    let error = reader.recv_type("error").await.unwrap();
    assert_eq!(error["code"], "read_only", "{error}");

    // The first caret the watcher sees is the editor's valid one, as sent.
    caret(&mut editor, browser_caret()).await;
    let seen = watcher.recv_type("doc.awareness").await.unwrap();
    assert_eq!(seen["username"], "bob");
    assert_eq!(seen["cursor"], browser_caret());

    // Demoted to reader: the others drop bob's caret, and he can send no other.
    share(&ada, doc, "bob", "read").await;
    let cleared = watcher.recv_type("doc.awareness").await.unwrap();
    assert_eq!(cleared["username"], "bob");
    assert_eq!(cleared["cursor"], Value::Null);
    editor.recv_type("access").await.unwrap();
    caret(&mut editor, browser_caret()).await;
    assert_eq!(
        editor.recv_type("error").await.unwrap()["code"],
        "read_only"
    );
}
