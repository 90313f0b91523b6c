//! The guestbook against a real PostgreSQL, a real server on a free port, a real HTTP client
//! and a real WebSocket.
//!
//! Each test gets a database of its own from `hearth::application::testing`: on the server of
//! `DATABASE_URL` when it is set, else on an embedded cluster started for this test process.

use guestbook::{GuestbookSettings, PURGE_EVERY, PURGE_SCHEDULE, PurgeRejected};
use hearth::{
    Application,
    application::testing::{self, TestDatabase, TestServer},
    jobs::{Enqueue, Every},
    web::testing::WsClient,
};
use reqwest::{StatusCode, header};
use serde_json::json;

/// The platform and the guestbook alone: what the guestbook needs, quick to migrate.
fn application() -> Application {
    Application::new().app(guestbook::app())
}

/// A server whose banned words are "spam" and "eggs".
async fn server() -> TestServer {
    TestServer::builder(application())
        .settings(|s: &mut GuestbookSettings| {
            s.banned_words = vec!["spam".into(), "eggs".into()];
        })
        .start()
        .await
        .expect("the test server starts")
}

/// A browser: keeps cookies, does not follow redirects (tests look at them).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs the guestbook as a browser does: the form's page first (for its CSRF token), then
/// the form. Returns the answer to the form.
async fn sign(
    server: &TestServer,
    browser: &reqwest::Client,
    name: &str,
    message: &str,
) -> reqwest::Response {
    let form = browser
        .get(server.url("/guestbook/sign"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    let html = form.text().await.unwrap();
    let token = html
        .split(r#"name="csrf_token" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the form carries a CSRF token")
        .to_owned();
    browser
        .post(server.url("/guestbook"))
        .form(&[
            ("csrf_token", token.as_str()),
            ("name", name),
            ("message", message),
        ])
        .send()
        .await
        .unwrap()
}

/// Signs and returns the new entry's id, from the redirect to `/guestbook#pending-<id>`.
async fn signed(server: &TestServer, name: &str, message: &str) -> i64 {
    let answer = sign(server, &browser(), name, message).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let location = answer.headers()[header::LOCATION].to_str().unwrap();
    location
        .strip_prefix("/guestbook#pending-")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("redirected to {location}"))
}

async fn status(server: &TestServer, id: i64) -> String {
    sqlx::query_scalar("SELECT status FROM guestbook_entries WHERE id = $1")
        .bind(id)
        .fetch_one(server.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn signing_stores_the_entry_and_enqueues_its_moderation_in_one_transaction() {
    let server = server().await;
    let id = signed(&server, "Ada", "Lovely site!").await;

    let (name, message, status): (String, String, String) =
        sqlx::query_as("SELECT name, message, status FROM guestbook_entries WHERE id = $1")
            .bind(id)
            .fetch_one(server.pool())
            .await
            .unwrap();
    assert_eq!(
        (name.as_str(), message.as_str(), status.as_str()),
        ("Ada", "Lovely site!", "pending")
    );
    let job = hearth::jobs::testing::assert_enqueued(
        server.pool(),
        "guestbook.moderate",
        json!({ "entry_id": id }),
    )
    .await;
    // A row's xmin is the transaction that inserted it: the same for both rows only if the
    // entry and its job were written, and committed, together.
    let entry_tx: String =
        sqlx::query_scalar("SELECT xmin::text FROM guestbook_entries WHERE id = $1")
            .bind(id)
            .fetch_one(server.pool())
            .await
            .unwrap();
    let job_tx: String = sqlx::query_scalar("SELECT xmin::text FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(server.pool())
        .await
        .unwrap();
    assert_eq!(
        entry_tx, job_tx,
        "the entry and its job come from one transaction"
    );
}

#[tokio::test]
async fn a_form_with_problems_is_shown_again_and_stores_nothing() {
    let server = server().await;
    let browser = browser();
    let answer = sign(&server, &browser, "  ", &"x".repeat(2001)).await;
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = answer.text().await.unwrap();
    assert!(page.contains("Write your name."), "{page}");
    assert!(page.contains("Keep it to 2000 characters"), "{page}");

    // Without the CSRF token, the platform refuses the form before the handler runs.
    let forged = browser
        .post(server.url("/guestbook"))
        .form(&[("name", "Mallory"), ("message", "hi")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    let (entries, jobs): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM guestbook_entries),
                (SELECT count(*) FROM jobs WHERE kind = 'guestbook.moderate')",
    )
    .fetch_one(server.pool())
    .await
    .unwrap();
    assert_eq!((entries, jobs), (0, 0));
}

#[tokio::test]
async fn moderation_approves_or_rejects_by_the_banned_words() {
    let server = server().await;
    let kind = signed(&server, "Ada", "What a lovely guestbook").await;
    let rude = signed(&server, "Bob", "Buy my Eggs!").await;
    let in_name = signed(&server, "spam", "hello").await;
    let near_miss = signed(&server, "Cy", "I am no spammer").await;

    assert_eq!(server.run_jobs("default").await.unwrap(), 4);
    assert_eq!(status(&server, kind).await, "approved");
    assert_eq!(status(&server, rude).await, "rejected");
    assert_eq!(status(&server, in_name).await, "rejected");
    assert_eq!(status(&server, near_miss).await, "approved");

    let page = reqwest::get(server.url("/guestbook"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("What a lovely guestbook"));
    assert!(page.contains("I am no spammer"));
    assert!(!page.contains("Buy my Eggs!"));

    // A second run of a job (at least once) leaves the verdict as it was.
    Enqueue::new(&guestbook::Moderate { entry_id: rude })
        .unwrap()
        .enqueue(server.pool())
        .await
        .unwrap();
    assert_eq!(server.run_jobs("default").await.unwrap(), 1);
    assert_eq!(status(&server, rude).await, "rejected");
}

#[tokio::test]
async fn the_page_hears_each_verdict_live() {
    let server = TestServer::builder(application())
        .with_workers()
        .start()
        .await
        .unwrap();
    let mut page = WsClient::connect(server.ws_url("/ws/guestbook/"))
        .await
        .unwrap();
    // Answered only once the socket has joined the group (connect runs before receive).
    page.send_json(&json!({ "watch": 0 })).await.unwrap();
    assert_eq!(
        page.recv_type("error").await.unwrap()["error"],
        "there is no such entry"
    );

    // The job runs on the server's own workers; the verdict reaches the page by itself.
    let id = signed(&server, "Ada", "Hello from the test").await;
    let frame = page.recv_type("guestbook.moderated").await.unwrap();
    assert_eq!(
        frame,
        json!({
            "type": "guestbook.moderated",
            "id": id,
            "status": "approved",
            "name": "Ada",
            "message": "Hello from the test",
        })
    );
    // A rejected entry's words are not sent to every page (default banned words: "spam").
    let rejected = signed(&server, "Bob", "spam spam spam").await;
    let frame = page.recv_type("guestbook.moderated").await.unwrap();
    assert_eq!(
        frame,
        json!({ "type": "guestbook.moderated", "id": rejected, "status": "rejected" })
    );

    // A page that connects after the verdict asks for its entry, once.
    let mut late = WsClient::connect(server.ws_url("/ws/guestbook/"))
        .await
        .unwrap();
    late.send_json(&json!({ "watch": rejected })).await.unwrap();
    let frame = late.recv_type("guestbook.moderated").await.unwrap();
    assert_eq!(
        (frame["id"].as_i64(), frame["status"].as_str()),
        (Some(rejected), Some("rejected"))
    );
    late.send_json(&json!({ "watch": id })).await.unwrap();
    assert_eq!(
        late.recv_type("error").await.unwrap()["error"],
        "a page watches one entry"
    );
}

#[tokio::test]
async fn the_page_is_served_from_the_cache_until_an_entry_is_approved() {
    let server = server().await;
    // An anonymous visitor; the poster is another browser (whose flash message makes its own
    // next page personal, never shared).
    let visitor = browser();
    let visit = || async {
        let page = visitor.get(server.url("/guestbook")).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let cache = page.headers()["x-cache"].to_str().unwrap().to_owned();
        (cache, page.text().await.unwrap())
    };
    assert_eq!(visit().await.0, "MISS");
    let (cache, page) = visit().await;
    assert_eq!(cache, "HIT");
    assert!(page.contains("Nobody has signed yet."));

    // A rejection changes nothing on the page: it stays cached.
    signed(&server, "Bob", "spam").await;
    server.run_jobs("default").await.unwrap();
    assert_eq!(visit().await.0, "HIT");

    // An approval drops it: the next visit renders it again, with the entry.
    signed(&server, "Ada", "Cache me if you can").await;
    let (cache, page) = visit().await;
    assert_eq!(cache, "HIT", "a pending entry does not drop the page");
    assert!(!page.contains("Cache me if you can"));
    server.run_jobs("default").await.unwrap();
    let (cache, page) = visit().await;
    assert_eq!(cache, "MISS");
    assert!(page.contains("Cache me if you can"));
    assert_eq!(visit().await.0, "HIT");

    // The poster's own next page is not the shared one: it shows their flash message.
    let poster = browser();
    let answer = sign(&server, &poster, "Cy", "Hi").await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let own = poster.get(server.url("/guestbook")).send().await.unwrap();
    assert!(own.headers().get("x-cache").is_none_or(|v| v != "HIT"));
    assert!(own.text().await.unwrap().contains("Thank you!"));
}

#[tokio::test]
async fn the_page_script_is_served_by_the_app() {
    let server = server().await;
    let client = browser();
    let script = client
        .get(server.url("/guestbook/guestbook.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert_eq!(
        script.headers()[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    let etag = script.headers()[header::ETAG].clone();
    assert!(script.text().await.unwrap().contains("/ws/guestbook/"));
    let again = client
        .get(server.url("/guestbook/guestbook.js"))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn the_purge_is_scheduled_hourly_and_deletes_only_old_rejected_entries() {
    // Declared, and checked against the job kinds, in the guestbook's composition and in the
    // binary's (with every bundled app).
    for application in [
        application(),
        hearth::bundled::application().app(guestbook::app()),
    ] {
        let sections = application.sections_from_env().unwrap();
        let plan = application.plan(&testing::config(), &sections).unwrap();
        let purge = plan
            .schedules
            .iter()
            .find(|s| s.name == PURGE_SCHEDULE)
            .expect("the purge is scheduled");
        assert!(matches!(purge.every, Every::Interval(every) if every == PURGE_EVERY));
        assert_eq!(purge.job.kind(), "guestbook.purge_rejected");
    }

    let server = server().await;
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO guestbook_entries (name, message, status, moderated_at)
         VALUES ('old', 'x', 'rejected', now() - interval '25 hours'),
                ('recent', 'x', 'rejected', now() - interval '23 hours'),
                ('kept', 'x', 'approved', now() - interval '30 days')
         RETURNING id",
    )
    .fetch_all(server.pool())
    .await
    .unwrap();
    Enqueue::new(&PurgeRejected {})
        .unwrap()
        .enqueue(server.pool())
        .await
        .unwrap();
    assert_eq!(server.run_jobs("default").await.unwrap(), 1);
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM guestbook_entries ORDER BY id")
        .fetch_all(server.pool())
        .await
        .unwrap();
    assert_eq!(left, ids[1..]);
}

#[tokio::test]
async fn settings_join_the_command_line() {
    let application = application();
    let command = hearth::application::cli::command(&application);
    let matches = command
        .clone()
        .try_get_matches_from([
            "guestbook",
            "--guestbook-banned-words",
            "Spam, EGGS",
            "serve",
        ])
        .unwrap();
    let sections = application.sections(&matches).unwrap();
    let settings = sections.get::<GuestbookSettings>().unwrap();
    assert_eq!(settings.banned_words, ["spam", "eggs"]);
    // A word that could never match is refused at start, naming the flag.
    let refused = command
        .try_get_matches_from(["guestbook", "--guestbook-banned-words", "two words"])
        .unwrap_err()
        .to_string();
    assert!(refused.contains("--guestbook-banned-words"), "{refused}");
}

/// `guestbook migrate` (the binary, as an operator runs it) on an empty database applies the
/// platform's migrations, every bundled app's, then the guestbook's; `migrate --status` lists
/// them in that order.
#[tokio::test]
async fn migrate_applies_the_guestbook_after_the_platform() {
    let database = TestDatabase::empty().await.unwrap();
    let run = |args: &'static [&'static str]| {
        let url = database.url();
        async move {
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_guestbook"))
                .args(args)
                .env("DATABASE_URL", url)
                .env(
                    "HEARTH_DATA_DIR",
                    std::env::temp_dir().join("guestbook-test-unused"),
                )
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                output.status.success(),
                "{args:?}: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            stdout
        }
    };
    let pending = run(&["migrate", "--status"]).await;
    assert!(pending.contains("pending  guestbook/0001"), "{pending}");
    run(&["migrate"]).await;
    let status = run(&["migrate", "--status"]).await;
    let lines: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("applied"))
        .collect();
    assert!(lines.first().unwrap().contains("platform/0001"), "{status}");
    let last = lines
        .iter()
        .rposition(|l| l.contains("guestbook/"))
        .unwrap();
    assert_eq!(
        last,
        lines.len() - 1,
        "the guestbook's migration comes last: {status}"
    );
    assert!(
        lines[last].contains("guestbook/0001") && lines[last].contains("entries"),
        "{status}"
    );
    assert!(status.ends_with("0 pending\n"), "{status}");

    let pool = database.pool().await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM guestbook_entries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    // Nothing to do a second time.
    run(&["migrate"]).await;
}
