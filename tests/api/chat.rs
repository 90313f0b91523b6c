//! The chat app over real WebSockets: rooms and their access rules, messages persisted and
//! broadcast, history, resumption, edits, moderation, mentions and limits.

use std::time::Duration;

use hearth::web::testing::{WsClient, WsTestError};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, assert_redirect};

/// The next frame of `kind`, skipping others (presence, typing...).
pub(crate) async fn next(client: &mut WsClient, kind: &str) -> Value {
    client
        .recv_type(kind)
        .await
        .unwrap_or_else(|e| panic!("waiting for {kind}: {e:?}"))
}

pub(crate) async fn say(client: &mut WsClient, body: &str) {
    client
        .send_json(&json!({"type": "send", "body": body}))
        .await
        .unwrap();
}

async fn create_room(user: &TestUser<'_>, name: &str, private: bool) -> String {
    let mut form = vec![("name", name)];
    if private {
        form.push(("private", "on"));
    }
    let response = user.post_form("/chat", &form).await;
    assert!(response.status().is_redirection(), "{}", response.status());
    response.headers()["location"]
        .to_str()
        .unwrap()
        .trim_start_matches("/chat/")
        .to_owned()
}

#[tokio::test]
async fn a_message_is_stored_and_reaches_everyone_in_the_room_with_presence() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let mut a = ada.socket("/ws/rooms/lobby").await;
    let hello = next(&mut a, "hello").await;
    assert_eq!(hello["room"], "Lobby");
    assert_eq!(hello["you"]["username"], "ada");

    let mut b = bob.socket("/ws/rooms/lobby").await;
    let hello = next(&mut b, "hello").await;
    let present: Vec<&str> = hello["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["username"].as_str().unwrap())
        .collect();
    assert!(
        present.contains(&"ada") && present.contains(&"bob"),
        "{present:?}"
    );
    // Ada hears her own join first, then bob's.
    while next(&mut a, "presence.join").await["username"] != "bob" {}

    say(&mut b, "hello <b>ada</b>").await;
    for client in [&mut a, &mut b] {
        let frame = next(client, "chat.message").await;
        assert_eq!(
            frame["message"]["body"], "hello <b>ada</b>",
            "text travels as text"
        );
        assert_eq!(frame["message"]["author"], "bob");
    }
    let stored: String = sqlx::query_scalar("SELECT body FROM chat_messages")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, "hello <b>ada</b>");

    b.send_json(&json!({"type": "typing"})).await.unwrap();
    let typing = next(&mut a, "chat.typing").await;
    assert_eq!(typing["username"], "bob");

    b.close().await.unwrap();
    let left = next(&mut a, "presence.leave").await;
    assert_eq!(left["username"], "bob");
}

#[tokio::test]
async fn the_last_50_come_on_join_and_older_ones_on_request() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    sqlx::query(
        "INSERT INTO chat_messages (room_id, author_id, body)
         SELECT 1, $1, 'message ' || n FROM generate_series(1, 60) AS n",
    )
    .bind(ada.id)
    .execute(&app.pool)
    .await
    .unwrap();

    let mut a = ada.socket("/ws/rooms/lobby").await;
    let hello = next(&mut a, "hello").await;
    let messages = hello["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 50);
    assert_eq!(messages[0]["body"], "message 11");
    assert_eq!(messages[49]["body"], "message 60");
    assert_eq!(hello["more"], true);

    a.send_json(&json!({"type": "history", "before": messages[0]["id"]}))
        .await
        .unwrap();
    let history = next(&mut a, "history").await;
    let older = history["messages"].as_array().unwrap();
    assert_eq!(older.len(), 10);
    assert_eq!(older[0]["body"], "message 1");
    assert_eq!(history["more"], false);
}

#[tokio::test]
async fn a_client_that_reconnects_gets_what_it_missed_without_duplicates() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let mut a = ada.socket("/ws/rooms/lobby").await;
    next(&mut a, "hello").await;
    let mut b = bob.socket("/ws/rooms/lobby").await;
    next(&mut b, "hello").await;
    say(&mut b, "before the drop").await;
    let seen = next(&mut a, "chat.message").await["message"]["id"]
        .as_i64()
        .unwrap();
    // Bob's own copy too, so that each `next` below waits for the message just sent.
    next(&mut b, "chat.message").await;
    drop(a);

    for n in 0..3 {
        say(&mut b, &format!("missed {n}")).await;
        next(&mut b, "chat.message").await;
    }

    let mut a = WsClient::build(app.ws_url(&format!("/ws/rooms/lobby?last_id={seen}")))
        .cookie(ada.cookie.clone())
        .connect()
        .await
        .unwrap();
    let hello = next(&mut a, "hello").await;
    let bodies: Vec<&str> = hello["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        ["before the drop", "missed 0", "missed 1", "missed 2"]
    );
    say(&mut b, "live again").await;
    let live = next(&mut a, "chat.message").await;
    assert_eq!(live["message"]["body"], "live again");
    // No message twice. (Presence frames may still come: the dropped socket's leave is seen
    // when the server notices the drop.)
    let duplicate = a
        .recv_type_within("chat.message", Duration::from_millis(300))
        .await;
    assert!(
        matches!(duplicate, Err(WsTestError::Timeout(_))),
        "{duplicate:?}"
    );
}

#[tokio::test]
async fn authors_edit_and_delete_their_messages_and_admins_moderate() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let root = app.user("root").await;
    sqlx::query("UPDATE users SET is_admin = true WHERE username = 'root'")
        .execute(&app.pool)
        .await
        .unwrap();
    let mut a = ada.socket("/ws/rooms/lobby").await;
    next(&mut a, "hello").await;
    let mut b = bob.socket("/ws/rooms/lobby").await;
    next(&mut b, "hello").await;
    say(&mut a, "tpyo").await;
    let id = next(&mut b, "chat.message").await["message"]["id"]
        .as_i64()
        .unwrap();

    b.send_json(&json!({"type": "edit", "id": id, "body": "bob was here"}))
        .await
        .unwrap();
    assert_eq!(next(&mut b, "error").await["code"], "forbidden");
    b.send_json(&json!({"type": "delete", "id": id}))
        .await
        .unwrap();
    assert_eq!(next(&mut b, "error").await["code"], "forbidden");

    a.send_json(&json!({"type": "edit", "id": id, "body": "typo"}))
        .await
        .unwrap();
    let update = next(&mut b, "chat.update").await;
    assert_eq!(update["message"]["body"], "typo");
    assert_eq!(update["message"]["edited"], true);

    let mut r = root.socket("/ws/rooms/lobby").await;
    next(&mut r, "hello").await;
    r.send_json(&json!({"type": "delete", "id": id}))
        .await
        .unwrap();
    let update = next(&mut b, "chat.update").await;
    assert_eq!(update["message"]["deleted"], true);
    assert_eq!(update["message"]["body"], "");
    let (body, deleted_by): (String, Option<i64>) =
        sqlx::query_as("SELECT body, deleted_by FROM chat_messages WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(body, "");
    assert_eq!(deleted_by, Some(root.id));
}

#[tokio::test]
async fn private_rooms_are_for_members_and_anonymous_sockets_are_refused() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let slug = create_room(&ada, "Secret <plans>", true).await;

    let page = ada
        .get(&format!("/chat/{slug}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Secret &#60;plans&#62;"),
        "the name is escaped: {page}"
    );
    // To others it is no room at all (see leaks.rs).
    assert_eq!(
        bob.get(&format!("/chat/{slug}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert!(
        !bob.get("/chat")
            .await
            .text()
            .await
            .unwrap()
            .contains("Secret")
    );
    let mut b = bob.socket(&format!("/ws/rooms/{slug}")).await;
    assert_eq!(b.expect_close().await.unwrap().0, 4404);
    let mut anonymous = WsClient::connect(app.ws_url("/ws/rooms/lobby"))
        .await
        .unwrap();
    assert_eq!(anonymous.expect_close().await.unwrap().0, 4401);

    // Invited, bob can open it.
    let response = ada
        .post_form(&format!("/chat/{slug}/invite"), &[("username", "bob")])
        .await;
    assert_redirect(&response, &format!("/chat/{slug}"));
    assert_eq!(
        bob.get(&format!("/chat/{slug}")).await.status(),
        StatusCode::OK
    );
    let mut b = bob.socket(&format!("/ws/rooms/{slug}")).await;
    next(&mut b, "hello").await;
    let response = ada
        .post_form(&format!("/chat/{slug}/invite"), &[("username", "nobody")])
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn mentions_notify_those_who_can_read_the_room() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let carl = app.user("carl").await;
    let mut a = ada.socket("/ws/rooms/lobby").await;
    next(&mut a, "hello").await;
    say(&mut a, "hey @Bob and @nobody, and me @ada").await;
    next(&mut a, "chat.message").await;
    let private = create_room(&ada, "Inner", true).await;
    let mut p = ada.socket(&format!("/ws/rooms/{private}")).await;
    next(&mut p, "hello").await;
    say(&mut p, "@carl cannot see this").await;
    next(&mut p, "chat.message").await;

    let titles = |user_id: i64| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT title FROM notifications WHERE user_id = $1")
                .bind(user_id)
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(titles(bob.id).await, ["ada mentioned you in Lobby"]);
    assert!(
        titles(carl.id).await.is_empty(),
        "not a member of the private room"
    );
    assert!(titles(ada.id).await.is_empty(), "no self-mentions");
}

#[tokio::test]
async fn overlong_messages_and_floods_get_clear_errors() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let mut a = ada.socket("/ws/rooms/lobby").await;
    next(&mut a, "hello").await;

    say(&mut a, &"x".repeat(2001)).await;
    let error = next(&mut a, "error").await;
    assert_eq!(error["code"], "invalid");
    assert!(error["message"].as_str().unwrap().contains("2000"));
    say(&mut a, "   ").await;
    assert_eq!(next(&mut a, "error").await["code"], "invalid");

    for n in 0..10 {
        say(&mut a, &format!("flood {n}")).await;
        next(&mut a, "chat.message").await;
    }
    say(&mut a, "one too many").await;
    assert_eq!(next(&mut a, "error").await["code"], "rate_limited");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_messages")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 10);
}

#[tokio::test]
async fn rooms_with_the_same_long_name_get_numbered_slugs() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    // Names that differ only past the slug's sixty characters.
    let name = "A very long room name that goes on and on past the slug limit of sixty";
    let first = create_room(&ada, &format!("{name}, one"), false).await;
    let second = create_room(&ada, &format!("{name}, two"), false).await;
    assert_ne!(first, second);
    assert!(second.ends_with("-2") && second.len() <= 60, "{second}");
}

#[tokio::test]
async fn sockets_are_limited_per_user_and_per_address() {
    let app = TestApp::builder()
        .config(|c| {
            c.channels.ws_max_per_user = 2;
            c.channels.ws_max_per_address = 3;
        })
        .spawn()
        .await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let connect = |cookie: &str| {
        WsClient::build(app.ws_url("/ws/rooms/lobby"))
            .cookie(cookie.to_owned())
            .connect()
    };

    // Two sockets for ada; a third is refused before the upgrade.
    let first = ada.socket("/ws/rooms/lobby").await;
    let _second = ada.socket("/ws/rooms/lobby").await;
    let refused = connect(&ada.cookie)
        .await
        .err()
        .expect("a third socket is refused");
    assert!(format!("{refused:?}").contains("429"), "{refused:?}");

    // All from 127.0.0.1: bob gets the address's third place, not a fourth.
    let _bob = bob.socket("/ws/rooms/lobby").await;
    let refused = connect(&bob.cookie)
        .await
        .err()
        .expect("a fourth socket from one address");
    assert!(format!("{refused:?}").contains("429"), "{refused:?}");

    // A closed socket gives its places back.
    first.close().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.state.sockets.of_user(ada.id) > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was not released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    connect(&ada.cookie).await.expect("a place is free again");
}

#[tokio::test]
async fn an_invited_user_is_told_with_a_notification_that_leads_to_the_room() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let slug = create_room(&ada, "Plans", true).await;

    let response = ada
        .post_form(&format!("/chat/{slug}/invite"), &[("username", "Bob")])
        .await;
    assert_redirect(&response, &format!("/chat/{slug}"));
    // Invited again: already a member, not told twice.
    ada.post_form(&format!("/chat/{slug}/invite"), &[("username", "bob")])
        .await;

    let unread: Value = bob
        .get("/api/notifications/unread")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unread["unread"], 1, "the bell shows it");
    let page = bob.get("/notifications").await.text().await.unwrap();
    assert!(page.contains("ada invited you to Plans"), "{page}");
    assert!(page.contains(r#"data-kind="invitation""#), "{page}");
    let (id, url): (i64, String) =
        sqlx::query_as("SELECT id, url FROM notifications WHERE user_id = $1")
            .bind(bob.id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(url, format!("/chat/{slug}"));
    // Opening it leads to the room, which bob can now open.
    let response = bob
        .post_form(&format!("/notifications/{id}/read"), &[("open", "true")])
        .await;
    assert_redirect(&response, &format!("/chat/{slug}"));
    assert_eq!(
        bob.get(&format!("/chat/{slug}")).await.status(),
        StatusCode::OK
    );
    // The inviter is told nothing.
    let theirs: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE user_id = $1")
        .bind(ada.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(theirs, 0);
}
