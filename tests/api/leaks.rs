//! Information leaks (issue #30, hole 6): what one user must not learn about another's
//! things, or about the server, by asking.
//!
//! * A job's status is its owner's and the administrators': anyone else gets exactly the
//!   answer for a job that does not exist, so ids cannot be probed; system jobs (no owner) are
//!   for administrators only.
//! * A private room answers a non-member exactly as a missing room does, on its page, its
//!   invitation form and its socket, and its slug does not take its name's, so its name cannot
//!   be confirmed by asking for it or by creating a room of the same name.
//! * Pages anyone can reach do not show the PostgreSQL version (administrators see it under
//!   `/ops/db`), and nothing a signed-in user gets names the server's host or process id.

use hearth::jobs::Enqueue;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, assert_redirect};

const BOUNDARY: &str = "hearth-leaks-boundary";

/// A signed-up user made an administrator.
async fn admin<'a>(app: &'a TestApp, name: &str) -> TestUser<'a> {
    let user = app.user(name).await;
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(user.id)
        .execute(&app.pool)
        .await
        .unwrap();
    user
}

/// Status, content type and body: everything a response tells its reader.
async fn answer(response: Response) -> (StatusCode, String, String) {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// Uploads a one-post CSV file as `user`, the way a script does; returns the import's job id.
async fn import_job(app: &TestApp, user: &TestUser<'_>) -> i64 {
    let body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"posts.csv\"\r\n\
         Content-Type: text/csv\r\n\r\ntitle,body\nImported,Text\r\n--{BOUNDARY}--\r\n"
    );
    let response = user
        .browser
        .client
        .post(app.url("/uploads"))
        .header("x-csrf-token", user.browser.csrf_token().await)
        .header("accept", "application/json")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    body["job_id"].as_i64().expect("a job id")
}

#[tokio::test]
async fn a_users_jobs_are_shown_to_them_and_administrators_only() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let root = admin(&app, "root").await;

    let import = import_job(&app, &ada).await;
    ada.write("Hello", "World.", true).await;
    let published: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE kind IN ('publishing.post_published', 'publishing.notify_subscribers')",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        published.len(),
        2,
        "the author's mail and the subscribers' notices"
    );
    app.drain("default").await;

    let missing = answer(bob.get("/api/jobs/987654321").await).await;
    assert_eq!(missing.0, StatusCode::NOT_FOUND);
    for job in published.into_iter().chain([import]) {
        let path = format!("/api/jobs/{job}");
        assert_eq!(
            answer(bob.get(&path).await).await,
            missing,
            "another user's job {job} answers as a missing one"
        );
        for reader in [&ada, &root] {
            let response = reader.get(&path).await;
            assert_eq!(response.status(), StatusCode::OK, "job {job}");
            let status: Value = response.json().await.unwrap();
            assert_eq!(status["id"], job);
            assert_eq!(status["owner_id"], ada.id);
        }
    }
    let status: Value = ada
        .get(&format!("/api/jobs/{import}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "completed");
    assert_eq!(
        status["result"]["imported"], 1,
        "the owner reads the result"
    );
}

#[tokio::test]
async fn system_jobs_are_for_administrators_only() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let root = admin(&app, "root").await;
    let job = Enqueue::raw("leaks.system", json!({}), Default::default())
        .unwrap()
        .enqueue(&app.pool)
        .await
        .unwrap();

    let path = format!("/api/jobs/{}", job.id);
    assert_eq!(
        answer(ada.get(&path).await).await,
        answer(ada.get("/api/jobs/987654321").await).await
    );
    let response = root.get(&path).await;
    assert_eq!(response.status(), StatusCode::OK);
    let status: Value = response.json().await.unwrap();
    assert_eq!(status["kind"], "leaks.system");
    assert_eq!(status["owner_id"], Value::Null);
}

/// `user` invites themself to the room at `slug`, as a stranger probing it would.
async fn invite_self(user: &TestUser<'_>, name: &str, slug: &str) -> (StatusCode, String, String) {
    let path = format!("/chat/{slug}/invite");
    answer(user.post_form(&path, &[("username", name)]).await).await
}

#[tokio::test]
async fn a_private_room_answers_non_members_as_a_missing_room_does() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let created = ada
        .post_form("/chat", &[("name", "Secret plans"), ("private", "on")])
        .await;
    let location = created.headers()["location"].to_str().unwrap();
    let private = location.trim_start_matches("/chat/").to_owned();
    assert!(private.starts_with("secret-plans-"), "{private}");
    assert_eq!(ada.get(location).await.status(), StatusCode::OK);
    let missing = "no-such-room";

    let page = answer(bob.get(&format!("/chat/{private}")).await).await;
    assert_eq!(page.0, StatusCode::NOT_FOUND);
    let page_missing = answer(bob.get(&format!("/chat/{missing}")).await).await;
    assert_eq!(page, page_missing, "GET /chat/{{slug}}");
    let invited = invite_self(&bob, "bob", &private).await;
    assert_eq!(invited.0, StatusCode::NOT_FOUND);
    let invited_missing = invite_self(&bob, "bob", missing).await;
    assert_eq!(invited, invited_missing, "POST /chat/{{slug}}/invite");
    let mut closes = Vec::new();
    for slug in [private.as_str(), missing] {
        let mut socket = bob.socket(&format!("/ws/rooms/{slug}")).await;
        closes.push(socket.expect_close().await.unwrap());
    }
    assert_eq!(closes[0].0, 4404);
    assert_eq!(closes[0], closes[1], "WS /ws/rooms/{{slug}}");
    let rooms: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_members WHERE user_id = $1")
        .bind(bob.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rooms, 0, "bob did not get in");

    // Nor does creating a room of the same name tell: the private room left its slug free.
    let public = bob.post_form("/chat", &[("name", "Secret plans")]).await;
    assert_redirect(&public, "/chat/secret-plans");
}

#[tokio::test]
async fn public_pages_show_no_server_internals() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let root = admin(&app, "root").await;
    let version: String = sqlx::query_scalar("SELECT current_setting('server_version')")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let number = version.split(' ').next().unwrap();

    let anonymous = app.other_browser().home().await;
    let signed_in = ada.get("/").await.text().await.unwrap();
    for page in [anonymous, signed_in] {
        assert!(!page.contains(number), "the version {number} is shown");
        assert!(!page.contains("PostgreSQL <strong>"));
    }
    let ops = root.get("/ops/db").await.text().await.unwrap();
    assert!(ops.contains(&version), "administrators see {version}");

    // Nor the host name and process id, which every channel name (keys of the presence lists
    // chat members get) and the dashboard's instance name used to start with.
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let machine = format!("{}-{}", host.trim(), std::process::id());
    let mut socket = ada.socket("/ws/rooms/lobby").await;
    let hello = socket.recv_type("hello").await.unwrap();
    assert_eq!(hello["presence"][0]["username"], "ada");
    assert!(!hello.to_string().contains(&machine), "{hello}");
    let dashboard = ada.get("/dashboard").await.text().await.unwrap();
    assert!(!dashboard.contains(&machine), "{machine} on the dashboard");
}
