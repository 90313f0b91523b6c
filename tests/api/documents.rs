//! Collaborative documents: the sync protocol, convergence under random concurrent edits
//! with disconnects across two instances, rights, compaction, versions.
//!
//! The editors here are real WebSocket clients holding a yrs document each — the same CRDT
//! the browser runs as Yjs — speaking the protocol `static/js/docs.js` speaks.

use std::{collections::BTreeSet, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hearth::{
    documents::{compact, crdt::State, document},
    web::testing::{WsClient, WsTestError},
};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, assert_redirect};

/// How many update rows are stored, across every document.
async fn stored_updates(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM document_updates")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Creates a document owned by `owner` and returns its id.
pub(crate) async fn create_doc(owner: &TestUser<'_>, title: &str) -> i64 {
    let response = owner.post_form("/docs", &[("title", title)]).await;
    assert!(response.status().is_redirection(), "{}", response.status());
    let location = response.headers()["location"].to_str().unwrap();
    location.trim_start_matches("/docs/").parse().unwrap()
}

pub(crate) async fn share(owner: &TestUser<'_>, doc: i64, username: &str, role: &str) {
    let response = owner
        .post_form(
            &format!("/docs/{doc}/members"),
            &[("username", username), ("role", role)],
        )
        .await;
    assert_redirect(&response, &format!("/docs/{doc}"));
}

/// One editor: a CRDT replica, a socket when connected, and every update it made.
struct Editor {
    name: String,
    cookie: String,
    replica: State,
    socket: Option<WsClient>,
    /// The sync answer arrived on the current socket: local edits are sent as they happen.
    synced: bool,
    seq: u64,
    unacked: BTreeSet<u64>,
    made: Vec<Vec<u8>>,
}

impl Editor {
    fn new(name: &str, user: &TestUser<'_>) -> Self {
        Self {
            name: name.to_owned(),
            cookie: user.cookie.clone(),
            replica: State::from_updates([]).unwrap(),
            socket: None,
            synced: false,
            seq: 0,
            unacked: BTreeSet::new(),
            made: Vec::new(),
        }
    }

    fn text(&self) -> String {
        self.replica.text()
    }

    /// Opens a socket to `app` and starts the sync handshake.
    async fn connect(&mut self, app: &TestApp, doc: i64) {
        let mut socket = WsClient::build(app.ws_url(&format!("/ws/docs/{doc}")))
            .cookie(self.cookie.clone())
            .connect()
            .await
            .expect("connect");
        let hello = socket.recv_json().await.unwrap();
        assert_eq!(hello["type"], "hello", "{hello}");
        let sv = BASE64.encode(self.replica.vector());
        socket
            .send_json(&json!({"type": "sync", "sv": sv}))
            .await
            .unwrap();
        self.socket = Some(socket);
        self.synced = false;
        // Updates sent on the old socket and never acknowledged may or may not be stored:
        // the handshake sends whatever the server lacks either way.
        self.unacked.clear();
    }

    /// Drops the connection, politely or not.
    async fn disconnect(&mut self, graceful: bool) {
        // Dropping the socket without a close frame is the abrupt case.
        if let Some(socket) = self.socket.take()
            && graceful
        {
            let _ = socket.close().await;
        }
        self.synced = false;
    }

    async fn send_update(&mut self, update: &[u8]) {
        self.seq += 1;
        let frame = json!({"type": "update", "update": BASE64.encode(update), "seq": self.seq});
        let socket = self.socket.as_mut().expect("connected");
        if socket.send_json(&frame).await.is_ok() {
            self.unacked.insert(self.seq);
        } else {
            self.socket = None;
            self.synced = false;
        }
    }

    /// A random local edit: insert a token at a random place or delete a short range.
    async fn edit(&mut self, rng: &mut StdRng) {
        let text = self.text();
        let chars: Vec<char> = text.chars().collect();
        let target: String = if chars.is_empty() || rng.random_bool(0.7) {
            let at = rng.random_range(0..=chars.len());
            // Multi-byte characters now and then: offsets must never split one.
            let token = match rng.random_range(0..4) {
                0 => format!("[{}é{}]", self.name, self.made.len()),
                1 => format!("[{}🙂{}]", self.name, self.made.len()),
                _ => format!("[{}{}]", self.name, self.made.len()),
            };
            chars[..at]
                .iter()
                .copied()
                .chain(token.chars())
                .chain(chars[at..].iter().copied())
                .collect()
        } else {
            let at = rng.random_range(0..chars.len());
            let len = rng.random_range(1..=5).min(chars.len() - at);
            chars[..at].iter().chain(&chars[at + len..]).collect()
        };
        let update = self.replica.replace_text(&target);
        self.made.push(update.clone());
        if self.synced {
            self.send_update(&update).await;
        }
    }

    /// Handles every frame already waiting (or waits up to `wait` for the first one).
    async fn pump(&mut self, wait: Duration) {
        let mut wait = wait;
        loop {
            let Some(socket) = self.socket.as_mut() else {
                return;
            };
            let frame = match socket.recv_json_within(wait).await {
                Ok(frame) => frame,
                Err(WsTestError::Timeout(_)) => return,
                Err(_) => {
                    self.socket = None;
                    self.synced = false;
                    return;
                }
            };
            wait = Duration::ZERO;
            self.handle(frame).await;
        }
    }

    async fn handle(&mut self, frame: Value) {
        match frame["type"].as_str().unwrap() {
            "sync" => {
                let update = BASE64.decode(frame["update"].as_str().unwrap()).unwrap();
                self.replica.apply(&update).unwrap();
                let server = BASE64.decode(frame["sv"].as_str().unwrap()).unwrap();
                let missing = self.replica.diff(&server).unwrap();
                self.synced = true;
                // An empty update is two zero bytes.
                if missing.len() > 2 {
                    self.send_update(&missing).await;
                }
            }
            "doc.update" => {
                let update = BASE64.decode(frame["update"].as_str().unwrap()).unwrap();
                self.replica.apply(&update).unwrap();
            }
            "ack" => {
                self.unacked.remove(&frame["seq"].as_u64().unwrap());
            }
            "error" => panic!("{} got an error frame: {frame}", self.name),
            _ => {}
        }
    }

    fn settled(&self) -> bool {
        self.socket.is_some() && self.synced && self.unacked.is_empty()
    }
}

/// Random concurrent edit streams from three editors spread over two instances, with random
/// disconnects (clean and abrupt) and edits made while offline, converge: every editor ends
/// with the same text, that text is the reference merge of every update any editor made, and
/// the database (before and after compaction) holds it too.
#[tokio::test]
async fn random_concurrent_edits_on_two_instances_with_disconnects_converge() {
    let a = TestApp::builder().with_workers().spawn().await;
    let b = TestApp::builder()
        .database(a.db_options.clone())
        .spawn()
        .await;
    let ada = a.user("ada").await;
    let bob = a.user("bob").await;
    let cyd = a.user("cyd").await;
    let doc = create_doc(&ada, "Converge").await;
    share(&ada, doc, "bob", "edit").await;
    share(&ada, doc, "cyd", "edit").await;
    let instances = [&a, &b];

    let seeds: u64 = std::env::var("HEARTH_CONVERGE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // A failure names its seed; HEARTH_CONVERGE_SEED replays it.
    let first_seed: u64 = std::env::var("HEARTH_CONVERGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut editors = vec![
        Editor::new("a", &ada),
        Editor::new("b", &bob),
        Editor::new("c", &cyd),
    ];
    for round in 0..seeds {
        let seed = first_seed.wrapping_add(round);
        eprintln!("round {round}: seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        for editor in &mut editors {
            if editor.socket.is_none() {
                let app = instances[rng.random_range(0..2)];
                editor.connect(app, doc).await;
            }
        }
        // Act: 150 random steps, interleaved across editors.
        for _ in 0..150 {
            let editor = &mut editors[rng.random_range(0..3)];
            if editor.socket.is_some() {
                match rng.random_range(0..100) {
                    0..8 => editor.disconnect(rng.random_bool(0.5)).await,
                    8..75 => editor.edit(&mut rng).await,
                    _ => editor.pump(Duration::from_millis(2)).await,
                }
            } else if rng.random_bool(0.3) {
                let app = instances[rng.random_range(0..2)];
                editor.connect(app, doc).await;
            } else {
                editor.edit(&mut rng).await;
            }
            for editor in &mut editors {
                editor.pump(Duration::ZERO).await;
            }
        }
        // Everyone reconnects and waits until all their edits are stored...
        for editor in &mut editors {
            if editor.socket.is_none() {
                let app = instances[rng.random_range(0..2)];
                editor.connect(app, doc).await;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !editors.iter().all(Editor::settled) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "seed {seed}: editors did not settle"
            );
            for editor in &mut editors {
                editor.pump(Duration::from_millis(5)).await;
                if editor.socket.is_none() {
                    let app = instances[rng.random_range(0..2)];
                    editor.connect(app, doc).await;
                }
            }
        }
        // ...then syncs once more: what it gets is everything anyone stored.
        for editor in &mut editors {
            editor.synced = false;
            let sv = BASE64.encode(editor.replica.vector());
            let socket = editor.socket.as_mut().unwrap();
            socket
                .send_json(&json!({"type": "sync", "sv": sv}))
                .await
                .unwrap();
            while !editor.synced {
                let frame = editor.socket.as_mut().unwrap().recv_json().await.unwrap();
                editor.handle(frame).await;
            }
        }

        // Assert: one text everywhere, equal to the reference merge.
        let reference = State::from_updates(
            editors
                .iter()
                .flat_map(|e| e.made.iter().map(Vec::as_slice)),
        )
        .unwrap()
        .text();
        for editor in &editors {
            assert_eq!(
                editor.text(),
                reference,
                "seed {seed}: editor {} diverged",
                editor.name
            );
        }
        let stored = document::load(&a.pool, doc).await.unwrap().text();
        assert_eq!(stored, reference, "seed {seed}: the database lost an edit");
        compact::compact(&a.pool, doc).await.unwrap();
        let compacted = document::load(&a.pool, doc).await.unwrap().text();
        assert_eq!(compacted, reference, "seed {seed}: compaction lost an edit");
        let exported = ada
            .get(&format!("/docs/{doc}/text"))
            .await
            .text()
            .await
            .unwrap();
        assert_eq!(exported, reference);
    }
    assert!(
        editors.iter().all(|e| e.made.len() > 20),
        "every editor made edits"
    );
}

#[tokio::test]
async fn readers_cannot_edit_and_outsiders_cannot_open() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let eve = app.user("eve").await;
    let doc = create_doc(&ada, "Private plans").await;
    share(&ada, doc, "bob", "read").await;

    // A reader syncs and watches, but an update is refused and nothing is stored.
    let mut reader = bob.socket(&format!("/ws/docs/{doc}")).await;
    let hello = reader.recv_json().await.unwrap();
    assert_eq!(hello["you"]["can_edit"], false);
    let edit = State::from_updates([]).unwrap().replace_text("sneaky");
    reader
        .send_json(&json!({"type": "update", "update": BASE64.encode(&edit), "seq": 1}))
        .await
        .unwrap();
    let refused = reader.recv_type("error").await.unwrap();
    assert_eq!(refused["code"], "read_only", "{refused}");
    let rows = stored_updates(&app).await;
    assert_eq!(rows, 0);
    assert_eq!(
        bob.post_form(&format!("/docs/{doc}/versions"), &[("name", "mine")])
            .await
            .status(),
        403
    );
    assert_eq!(
        bob.post_form(&format!("/docs/{doc}/title"), &[("title", "x")])
            .await
            .status(),
        403
    );

    // An outsider is told nothing: no page, no text, no socket.
    assert_eq!(eve.get(&format!("/docs/{doc}")).await.status(), 404);
    assert_eq!(eve.get(&format!("/docs/{doc}/text")).await.status(), 404);
    let mut outsider = eve.socket(&format!("/ws/docs/{doc}")).await;
    assert_eq!(outsider.expect_close().await.unwrap().0, 4404);
    assert!(
        !eve.get("/docs")
            .await
            .text()
            .await
            .unwrap()
            .contains("Private plans")
    );
    // Only the owner manages members.
    assert_eq!(
        bob.post_form(
            &format!("/docs/{doc}/members"),
            &[("username", "eve"), ("role", "edit")]
        )
        .await
        .status(),
        403
    );
    // Nobody signed in: 4401.
    let mut anonymous = WsClient::connect(app.ws_url(&format!("/ws/docs/{doc}")))
        .await
        .unwrap();
    assert_eq!(anonymous.expect_close().await.unwrap().0, 4401);
}

#[tokio::test]
async fn changed_rights_apply_to_open_sockets() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let doc = create_doc(&ada, "Rights").await;
    share(&ada, doc, "bob", "edit").await;
    let mut socket = bob.socket(&format!("/ws/docs/{doc}")).await;
    assert_eq!(socket.recv_json().await.unwrap()["you"]["can_edit"], true);

    share(&ada, doc, "bob", "read").await;
    let frame = socket.recv_type("access").await.unwrap();
    assert_eq!(frame["can_edit"], false);
    let edit = State::from_updates([]).unwrap().replace_text("late");
    socket
        .send_json(&json!({"type": "update", "update": BASE64.encode(&edit), "seq": 1}))
        .await
        .unwrap();
    assert_eq!(
        socket.recv_type("error").await.unwrap()["code"],
        "read_only"
    );

    let response = ada
        .post_form(&format!("/docs/{doc}/members/{}/remove", bob.id), &[])
        .await;
    assert_redirect(&response, &format!("/docs/{doc}"));
    assert_eq!(socket.expect_close().await.unwrap().0, 4403);
    assert_eq!(bob.get(&format!("/docs/{doc}")).await.status(), 404);
}

#[tokio::test]
async fn a_user_added_to_a_document_is_told_once_per_membership() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let doc = create_doc(&ada, "Minutes").await;
    let told = || {
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT kind, title, url FROM notifications WHERE user_id = $1 ORDER BY id",
        )
        .bind(bob.id)
        .fetch_all(&app.pool)
    };

    share(&ada, doc, "bob", "read").await;
    // New rights for a member: not a new membership, nothing to tell.
    share(&ada, doc, "bob", "edit").await;
    let expected = (
        "invitation".to_owned(),
        "ada added you to the document “Minutes”".to_owned(),
        format!("/docs/{doc}"),
    );
    assert_eq!(told().await.unwrap(), std::slice::from_ref(&expected));
    let unread: Value = bob
        .get("/api/notifications/unread")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unread["unread"], 1, "the bell shows it");

    // Removed, then added again: told again.
    ada.post_form(&format!("/docs/{doc}/members/{}/remove", bob.id), &[])
        .await;
    share(&ada, doc, "bob", "read").await;
    assert_eq!(told().await.unwrap(), [expected.clone(), expected]);
}

/// Connects, syncs, and returns the socket with the replica brought up to date.
async fn synced_editor(cookie: &str, app: &TestApp, doc: i64) -> (WsClient, State) {
    let replica = State::from_updates([]).unwrap();
    let mut socket = WsClient::build(app.ws_url(&format!("/ws/docs/{doc}")))
        .cookie(cookie)
        .connect()
        .await
        .unwrap();
    socket.recv_type("hello").await.unwrap();
    socket
        .send_json(&json!({"type": "sync", "sv": BASE64.encode(replica.vector())}))
        .await
        .unwrap();
    let sync = socket.recv_type("sync").await.unwrap();
    replica
        .apply(&BASE64.decode(sync["update"].as_str().unwrap()).unwrap())
        .unwrap();
    (socket, replica)
}

async fn type_text(socket: &mut WsClient, replica: &State, text: &str, seq: u64) {
    let update = replica.replace_text(text);
    socket
        .send_json(&json!({"type": "update", "update": BASE64.encode(&update), "seq": seq}))
        .await
        .unwrap();
    assert_eq!(socket.recv_type("ack").await.unwrap()["seq"], seq);
}

#[tokio::test]
async fn a_document_reopened_after_everyone_left_and_a_restart_has_every_edit() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let doc = create_doc(&ada, "Notes").await;
    let (mut socket, replica) = synced_editor(&ada.cookie, &app, doc).await;
    for (seq, text) in ["one", "one two", "one two three", "one, two, three"]
        .into_iter()
        .enumerate()
    {
        type_text(&mut socket, &replica, text, seq as u64 + 1).await;
    }
    socket.close().await.unwrap();

    // Leaving asked for a compaction, once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let queued = loop {
        let queued: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE kind = 'documents.compact' AND args->>'document_id' = $1",
        )
        .bind(doc.to_string())
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if queued > 0 || tokio::time::Instant::now() > deadline {
            break queued;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(queued, 1);
    let folded = compact::compact(&app.pool, doc).await.unwrap();
    assert_eq!(folded.updates, 4);
    let left = stored_updates(&app).await;
    assert_eq!(left, 0, "compaction removes the rows it folded in");
    assert!(
        ada.get("/docs")
            .await
            .text()
            .await
            .unwrap()
            .contains("one, two, three"),
        "the list previews the compacted text"
    );

    // A restarted server (a new instance on the same database) serves the same text.
    let (cookie, options) = (ada.cookie.clone(), app.db_options.clone());
    drop(ada);
    drop(app);
    let restarted = TestApp::builder().database(options).spawn().await;
    let (_socket, reopened) = synced_editor(&cookie, &restarted, doc).await;
    assert_eq!(reopened.text(), "one, two, three");
}

#[tokio::test]
async fn restoring_a_version_reaches_every_editor_and_keeps_the_history() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let doc = create_doc(&ada, "Story").await;
    share(&ada, doc, "bob", "edit").await;
    let (mut writer, replica) = synced_editor(&ada.cookie, &app, doc).await;
    type_text(&mut writer, &replica, "Once upon a time.", 1).await;
    let response = ada
        .post_form(&format!("/docs/{doc}/versions"), &[("name", "First draft")])
        .await;
    assert_redirect(&response, &format!("/docs/{doc}"));
    type_text(
        &mut writer,
        &replica,
        "Once upon a time, a dragon ate it all.",
        2,
    )
    .await;

    let (mut reader, bob_replica) = synced_editor(&bob.cookie, &app, doc).await;
    assert_eq!(bob_replica.text(), "Once upon a time, a dragon ate it all.");
    let page = ada.get(&format!("/docs/{doc}")).await.text().await.unwrap();
    assert!(page.contains("First draft"));
    let version: i64 =
        sqlx::query_scalar("SELECT id FROM document_versions WHERE document_id = $1")
            .bind(doc)
            .fetch_one(&app.pool)
            .await
            .unwrap();

    let response = bob
        .post_form(&format!("/docs/{doc}/versions/{version}/restore"), &[])
        .await;
    assert_redirect(&response, &format!("/docs/{doc}"));
    let update = reader.recv_type("doc.update").await.unwrap();
    bob_replica
        .apply(&BASE64.decode(update["update"].as_str().unwrap()).unwrap())
        .unwrap();
    assert_eq!(bob_replica.text(), "Once upon a time.");
    assert_eq!(reader.recv_type("doc.restored").await.unwrap()["by"], "bob");
    let update = writer.recv_type("doc.update").await.unwrap();
    replica
        .apply(&BASE64.decode(update["update"].as_str().unwrap()).unwrap())
        .unwrap();
    assert_eq!(replica.text(), "Once upon a time.");
    // The version is still there to restore again; the restore is an edit like any other.
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM document_versions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(versions, 1);
    // Restoring what the text already is stores nothing.
    let before = stored_updates(&app).await;
    let response = bob
        .post_form(&format!("/docs/{doc}/versions/{version}/restore"), &[])
        .await;
    assert_redirect(&response, &format!("/docs/{doc}"));
    assert_eq!(stored_updates(&app).await, before);
}

#[tokio::test]
async fn titles_carets_and_presence_reach_the_other_editors() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let doc = create_doc(&ada, "Plan").await;
    share(&ada, doc, "bob", "edit").await;
    let (mut first, _) = synced_editor(&ada.cookie, &app, doc).await;
    let (mut second, _) = synced_editor(&bob.cookie, &app, doc).await;
    // Ada may first hear of her own arrival; bob's comes next.
    let joined = loop {
        let joined = first.recv_type("presence.join").await.unwrap();
        if joined["username"] != "ada" {
            break joined;
        }
    };
    assert_eq!(joined["username"], "bob");
    assert!(joined["meta"]["color"].as_str().unwrap().starts_with('#'));

    let caret =
        json!({"anchor": {"type": null, "tname": "body", "item": null, "assoc": 0}, "head": null});
    second
        .send_json(&json!({"type": "awareness", "cursor": caret}))
        .await
        .unwrap();
    let seen = first.recv_type("doc.awareness").await.unwrap();
    assert_eq!(seen["username"], "bob");
    assert_eq!(seen["cursor"], caret);

    let response = bob
        .post_form(&format!("/docs/{doc}/title"), &[("title", "The plan")])
        .await;
    assert_redirect(&response, &format!("/docs/{doc}"));
    assert_eq!(
        first.recv_type("doc.title").await.unwrap()["title"],
        "The plan"
    );

    second.close().await.unwrap();
    assert_eq!(
        first.recv_type("presence.leave").await.unwrap()["username"],
        "bob"
    );
}

#[tokio::test]
async fn malformed_updates_and_vectors_get_error_frames_and_store_nothing() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let doc = create_doc(&ada, "Robust").await;
    let mut socket = ada.socket(&format!("/ws/docs/{doc}")).await;
    socket.recv_type("hello").await.unwrap();
    for (frame, code) in [
        (
            json!({"type": "update", "update": "not base64!", "seq": 1}),
            "invalid_update",
        ),
        (
            json!({"type": "update", "update": BASE64.encode(b"\xff\xff\xff\xff"), "seq": 2}),
            "invalid_update",
        ),
        (
            json!({"type": "sync", "sv": BASE64.encode(b"\xff\xff")}),
            "invalid_state_vector",
        ),
        (
            json!({"type": "update", "update": BASE64.encode(vec![0u8; hearth::documents::MAX_UPDATE + 1]), "seq": 3}),
            "too_large",
        ),
    ] {
        socket.send_json(&frame).await.unwrap();
        let error = socket.recv_type("error").await.unwrap();
        assert_eq!(error["code"], code, "{error}");
    }
    socket.send_text("{not json").await.unwrap();
    assert!(socket.recv_type("error").await.unwrap()["error"].is_string());
    let rows = stored_updates(&app).await;
    assert_eq!(rows, 0);
    // Bad form input is a 422 with a message, not a stored row.
    let response = ada.post_form("/docs", &[("title", "   ")]).await;
    assert_eq!(response.status(), 422);
    assert!(response.text().await.unwrap().contains("cannot be empty"));
}

#[tokio::test]
async fn an_update_that_would_break_the_text_it_meets_is_refused() {
    // Arrange: a document holding one line written by Yjs (the fuzz harness's base), and an
    // update found by `fuzz/` that is harmless to an empty document but not to that line.
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let doc = create_doc(&ada, "Guarded").await;
    let base = include_bytes!("../../fuzz/corpus/yrs_update/base-text");
    let breaking = include_bytes!("../../fuzz/corpus/yrs_update/breaks-encoding-after-text");
    hearth::documents::crdt::check_update(breaking).unwrap();
    let mut socket = ada.socket(&format!("/ws/docs/{doc}")).await;
    socket.recv_type("hello").await.unwrap();
    socket
        .send_json(&json!({"type": "update", "update": BASE64.encode(base), "seq": 1}))
        .await
        .unwrap();
    assert_eq!(socket.recv_type("ack").await.unwrap()["seq"], 1);

    // Act
    socket
        .send_json(&json!({"type": "update", "update": BASE64.encode(breaking), "seq": 2}))
        .await
        .unwrap();

    // Assert: refused, nothing stored, and the document still loads and compacts.
    let error = socket.recv_type("error").await.unwrap();
    assert_eq!(error["code"], "invalid_update", "{error}");
    let rows = stored_updates(&app).await;
    assert_eq!(rows, 1);
    let stored = document::load(&app.pool, doc).await.unwrap();
    assert_eq!(stored.text(), "base text");
    let snapshot = stored.encode();
    assert_eq!(
        State::from_updates([snapshot.as_slice()]).unwrap().text(),
        "base text"
    );
}

#[tokio::test]
async fn the_periodic_sweep_compacts_what_a_dead_instance_left_behind() {
    use hearth::jobs::Enqueue;

    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let doc = create_doc(&ada, "Orphaned").await;
    // Updates stored by an instance that died before its sockets could ask for a compaction.
    let update = State::from_updates([]).unwrap().replace_text("left behind");
    sqlx::query(
        "INSERT INTO document_updates (document_id, author_id, data, created_at)
         VALUES ($1, $2, $3, now() - interval '5 minutes')",
    )
    .bind(doc)
    .bind(ada.id)
    .bind(&update)
    .execute(&app.pool)
    .await
    .unwrap();
    let fresh = create_doc(&ada, "Being edited").await;
    let recent = State::from_updates([]).unwrap().replace_text("typing");
    sqlx::query("INSERT INTO document_updates (document_id, author_id, data) VALUES ($1, $2, $3)")
        .bind(fresh)
        .bind(ada.id)
        .bind(&recent)
        .execute(&app.pool)
        .await
        .unwrap();

    Enqueue::new(&hearth::documents::CompactIdle::default())
        .unwrap()
        .enqueue(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.drain("default").await, 1);

    let requested: Vec<String> = sqlx::query_scalar(
        "SELECT args->>'document_id' FROM jobs WHERE kind = 'documents.compact' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(requested, [doc.to_string()], "only the idle document");
}
