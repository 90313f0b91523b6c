//! The publishing app: posts, the page cache on public pages, mail through the outbox, the
//! subscribers' live notifications and the daily digest — against a real PostgreSQL.

use hearth::{
    jobs::{Enqueue, testing},
    publishing::jobs::{DIGEST_POSTS, DailyDigest, PostPublished},
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    helpers::{TestApp, assert_redirect, read_events},
    uploads::{accepted, run_imports},
};

/// The outbox but the verification mails (`TestUser::set_email` verifies the address).
async fn outbox(app: &TestApp) -> Vec<(String, String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT to_address, subject, body, transport FROM outbox
          WHERE idempotency_key NOT LIKE 'verify-email:%' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn drafts_are_private_until_published_and_publishing_enqueues_mail_and_notifications() {
    // Arrange
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;

    // Act
    let slug = ada.write("Hello, World!", "First *post*.", false).await;

    // Assert: a draft is the author's alone.
    assert_eq!(slug, "hello-world");
    assert_eq!(ada.get("/posts/hello-world").await.status(), StatusCode::OK);
    assert_eq!(
        bob.get("/posts/hello-world").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/posts/hello-world").await.status(),
        StatusCode::NOT_FOUND
    );
    assert!(
        !app.get("/posts")
            .await
            .text()
            .await
            .unwrap()
            .contains("Hello, World!")
    );
    assert!(
        testing::enqueued(&app.pool, "publishing.post_published", json!({}))
            .await
            .unwrap()
            .is_empty()
    );

    // Act: publish.
    let response = ada.post_form("/posts/hello-world/publish", &[]).await;

    // Assert: public, and the jobs were enqueued with the publication.
    assert_redirect(&response, "/posts/hello-world");
    let page = app.get("/posts/hello-world").await.text().await.unwrap();
    assert!(page.contains("First <em>post</em>."), "{page}");
    assert!(
        app.get("/posts")
            .await
            .text()
            .await
            .unwrap()
            .contains("Hello, World!")
    );
    let post_id: i64 = sqlx::query_scalar("SELECT id FROM posts WHERE slug = 'hello-world'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    testing::assert_enqueued(
        &app.pool,
        "publishing.post_published",
        json!({ "post_id": post_id }),
    )
    .await;
    testing::assert_enqueued(
        &app.pool,
        "publishing.notify_subscribers",
        json!({ "post_id": post_id }),
    )
    .await;
}

#[tokio::test]
async fn only_the_author_edits_and_bad_input_gets_a_clear_error() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let eve = app.user("eve").await;
    let slug = ada.write("Mine", "text", true).await;

    let response = eve
        .post_form(
            &format!("/posts/{slug}/edit"),
            &[("title", "Hacked"), ("body", "x")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        eve.post_form(&format!("/posts/{slug}/unpublish"), &[])
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        eve.get(&format!("/posts/{slug}/edit")).await.status(),
        StatusCode::FORBIDDEN
    );

    let long = "t".repeat(201);
    let response = ada
        .post_form("/posts", &[("title", &long), ("body", "x")])
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(response.text().await.unwrap().contains("the limit is 200"));
    let huge = "b".repeat(100_001);
    let response = ada
        .post_form("/posts", &[("title", "Big"), ("body", &huge)])
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let title: String = sqlx::query_scalar("SELECT title FROM posts WHERE slug = $1")
        .bind(&slug)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(title, "Mine");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM posts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 1, "nothing half-written");
}

#[tokio::test]
async fn html_in_titles_and_bodies_is_escaped_or_removed() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let slug = ada
        .write(
            "<script>alert('t')</script>",
            "<script>alert('b')</script>\n\n<img src=x onerror=alert(1)> [x](javascript:alert(1))",
            true,
        )
        .await;

    for path in [
        format!("/posts/{slug}"),
        "/posts".to_owned(),
        "/authors/ada".to_owned(),
    ] {
        let page = app.get(&path).await.text().await.unwrap();
        assert!(!page.contains("<script>alert"), "{path}: {page}");
        assert!(!page.contains("onerror"), "{path}");
        assert!(!page.contains("javascript:alert"), "{path}");
    }
    let page = app
        .get(&format!("/posts/{slug}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("&lt;script&gt;alert(&#x27;t&#x27;)&lt;/script&gt;")
            || page.contains("&#60;script&#62;"),
        "{page}"
    );
}

#[tokio::test]
async fn public_pages_are_cached_for_visitors_and_an_edit_drops_exactly_what_it_changed() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let first = ada.write("First", "one", true).await;
    let second = ada.write("Second", "two", true).await;
    let x_cache = |r: &reqwest::Response| {
        r.headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    // A visitor without a session; the first visit sets the CSRF cookie, so warm up twice.
    let visitor = app.other_browser();
    for path in [
        "/posts",
        &format!("/posts/{first}"),
        &format!("/posts/{second}"),
    ] {
        visitor.get(path).await;
        visitor.get(path).await;
        let response = visitor.get(path).await;
        assert_eq!(x_cache(&response).as_deref(), Some("HIT"), "{path}");
        assert!(
            response.headers().get("x-cache-tags").is_none(),
            "tags stay internal"
        );
        let page = response.text().await.unwrap();
        assert!(
            page.contains(r#"name="csrf-token" content="">"#),
            "no visitor's token in a shared page"
        );
    }
    // Signed-in readers bypass the cache: their page shows who they are.
    let response = ada.get("/posts").await;
    assert_eq!(x_cache(&response), None);

    // Act: edit the first post.
    let response = ada
        .post_form(
            &format!("/posts/{first}/edit"),
            &[("title", "First, edited"), ("body", "one")],
        )
        .await;
    assert_redirect(&response, &format!("/posts/{first}"));

    // Assert: its page and the list are fresh; the other post's page is still a hit.
    let response = visitor.get(&format!("/posts/{first}")).await;
    assert_eq!(x_cache(&response).as_deref(), Some("MISS"));
    assert!(response.text().await.unwrap().contains("First, edited"));
    let response = visitor.get("/posts").await;
    assert_eq!(x_cache(&response).as_deref(), Some("MISS"));
    assert!(response.text().await.unwrap().contains("First, edited"));
    let response = visitor.get(&format!("/posts/{second}")).await;
    assert_eq!(x_cache(&response).as_deref(), Some("HIT"));

    // Unpublishing removes it from the list at once.
    ada.post_form(&format!("/posts/{second}/unpublish"), &[])
        .await;
    assert!(
        !visitor
            .get("/posts")
            .await
            .text()
            .await
            .unwrap()
            .contains("Second")
    );
    assert_eq!(
        visitor.get(&format!("/posts/{second}")).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_published_mail_is_sent_once_however_often_the_job_runs() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    ada.set_email("ada@example.com").await;
    let slug = ada.write("News", "body", true).await;

    assert_eq!(app.drain("mail").await, 1);
    let post_id: i64 = sqlx::query_scalar("SELECT id FROM posts WHERE slug = $1")
        .bind(&slug)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    // The same job again, as a retry after a crash would run it.
    let job = PostPublished { post_id };
    Enqueue::new(&job)
        .unwrap()
        .enqueue(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.drain("mail").await, 1);

    let mail = outbox(&app).await;
    assert_eq!(mail.len(), 1, "{mail:?}");
    let (to, subject, body, transport) = &mail[0];
    assert_eq!(to, "ada@example.com");
    assert!(subject.contains("News"), "{subject}");
    assert!(body.contains(&format!("/posts/{slug}")), "{body}");
    assert_eq!(transport.as_deref(), Some("dev"));

    // Unpublished before its mail went out: no mail for that publication.
    ada.post_form(&format!("/posts/{slug}/unpublish"), &[])
        .await;
    ada.post_form(&format!("/posts/{slug}/publish"), &[]).await;
    ada.post_form(&format!("/posts/{slug}/unpublish"), &[])
        .await;
    app.drain("mail").await;
    assert_eq!(
        outbox(&app).await.len(),
        1,
        "not announced once unpublished"
    );

    // Republishing does not mail again: a post is announced once (issue #30).
    ada.post_form(&format!("/posts/{slug}/unpublish"), &[])
        .await;
    ada.post_form(&format!("/posts/{slug}/publish"), &[]).await;
    app.drain("mail").await;
    assert_eq!(outbox(&app).await.len(), 1);
}

#[tokio::test]
async fn in_the_dev_mailbox_users_read_their_own_mail_and_admins_read_all() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    ada.set_email("ada@example.com").await;
    let slug = ada.write("Mailed", "body", true).await;
    app.drain("mail").await;
    let root = app.user("root").await;
    sqlx::query("UPDATE users SET is_admin = true WHERE username = 'root'")
        .execute(&app.pool)
        .await
        .unwrap();
    let id: i64 = sqlx::query_scalar("SELECT id FROM outbox WHERE subject LIKE '%Mailed%'")
        .fetch_one(&app.pool)
        .await
        .unwrap();

    for reader in [&ada, &root] {
        let page = reader.get("/mailbox").await.text().await.unwrap();
        assert!(page.contains("Your post “Mailed” is published"), "{page}");
        let page = reader
            .get(&format!("/mailbox/{id}"))
            .await
            .text()
            .await
            .unwrap();
        assert!(page.contains("ada@example.com"));
        // The post's address is a link, as in the mail's HTML part.
        let address = format!("{}/posts/{slug}", app.state.config.site_url());
        assert!(
            page.contains(&format!("<a href=\"{address}\">{address}</a>")),
            "{page}"
        );
    }
    let page = bob.get("/mailbox").await.text().await.unwrap();
    assert!(!page.contains("Mailed"), "bob sees only his own mail");
    assert_eq!(
        bob.get(&format!("/mailbox/{id}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_redirect(&app.get("/mailbox").await, "/login?next=%2Fmailbox");
}

#[tokio::test]
async fn with_smtp_configured_the_mailbox_is_for_admins_only() {
    let app = TestApp::builder()
        .settings(|c: &mut hearth::mail::MailSettings| {
            c.smtp_url = Some("smtp://127.0.0.1:9".into())
        })
        .spawn()
        .await;
    let ada = app.user("ada").await;
    assert_eq!(ada.get("/mailbox").await.status(), StatusCode::FORBIDDEN);
    assert!(
        !ada.get("/")
            .await
            .text()
            .await
            .unwrap()
            .contains(">Mailbox<")
    );
}

#[tokio::test]
async fn subscribers_get_a_live_notification_when_an_author_publishes() {
    let app = TestApp::builder().with_workers().spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let carl = app.user("carl").await;
    let response = bob
        .post_form("/authors/ada/subscribe", &[("next", "/authors/ada")])
        .await;
    assert_redirect(&response, "/authors/ada");
    assert_eq!(
        ada.post_form("/authors/ada/subscribe", &[]).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Bob's open page: the bell's event stream.
    let mut stream = bob
        .browser
        .client
        .get(app.url("/notifications/stream"))
        .send()
        .await
        .unwrap();
    let mut buffer = String::new();
    let first = read_events(&mut stream, &mut buffer, 1).await;
    assert_eq!(first[0].kind.as_deref(), Some("notification.count"));
    assert_eq!(
        serde_json::from_str::<Value>(&first[0].data).unwrap()["unread"],
        0
    );

    // Act
    let slug = ada.write("Fresh", "body", true).await;

    // Assert: the workers ran the job and the stream got the new count.
    let events = read_events(&mut stream, &mut buffer, 1).await;
    assert_eq!(events[0].kind.as_deref(), Some("notification.new"));
    let data: Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(data["unread"], 1);
    assert_eq!(data["url"], format!("/posts/{slug}"));
    let unread: Value = bob
        .get("/api/notifications/unread")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unread["unread"], 1);
    let unread: Value = carl
        .get("/api/notifications/unread")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unread["unread"], 0, "not subscribed, not notified");
}

#[tokio::test]
async fn the_daily_digest_lists_unread_posts_once_per_day() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let dan = app.user("dan").await;
    bob.set_email("bob@example.com").await;
    dan.set_email("dan@example.com").await;
    // Dan wants in-app notifications only.
    dan.post_form("/account/settings", &[("email", "dan@example.com")])
        .await;
    for reader in [&bob, &dan] {
        reader.post_form("/authors/ada/subscribe", &[]).await;
    }
    let read = ada.write("Already read", "a", true).await;
    ada.write("Not read yet", "b", true).await;
    bob.get(&format!("/posts/{read}")).await;

    // Two runs the same day (a retry, or two instances): one digest.
    for _ in 0..2 {
        Enqueue::new(&DailyDigest::default())
            .unwrap()
            .enqueue(&app.pool)
            .await
            .unwrap();
        app.drain("mail").await;
    }

    let digests: Vec<_> = outbox(&app)
        .await
        .into_iter()
        .filter(|(_, subject, _, _)| subject.contains("digest"))
        .collect();
    assert_eq!(digests.len(), 1, "{digests:?}");
    let (to, _, body, _) = &digests[0];
    assert_eq!(to, "bob@example.com");
    assert!(body.contains("Not read yet"), "{body}");
    assert!(!body.contains("Already read"), "{body}");
}

/// Runs the daily digest now and returns the digests' `(to, body)`.
async fn digests(app: &TestApp) -> Vec<(String, String)> {
    Enqueue::new(&DailyDigest::default())
        .unwrap()
        .enqueue(&app.pool)
        .await
        .unwrap();
    app.drain("mail").await;
    outbox(app)
        .await
        .into_iter()
        .filter(|(_, subject, _, _)| subject.contains("digest"))
        .map(|(to, _, body, _)| (to, body))
        .collect()
}

#[tokio::test]
async fn the_daily_digest_leaves_out_what_an_import_published() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    bob.set_email("bob@example.com").await;
    bob.post_form("/authors/ada/subscribe", &[]).await;
    let csv = "title,body,publish\nImported one,a,true\nImported two,b,true\n\
               Imported three,c,true\nImported draft,d,false\nImported again,e,true\n";
    accepted(&app, &ada, "posts.csv", csv.as_bytes()).await;
    assert_eq!(run_imports(&app).await, 1);
    // Published by hand later, a draft the import brought over, or an imported post taken
    // down and put back, is announced as any post is.
    for path in [
        "/posts/imported-draft/publish",
        "/posts/imported-again/unpublish",
        "/posts/imported-again/publish",
    ] {
        let response = ada.post_form(path, &[]).await;
        assert!(
            response.status().is_redirection(),
            "{path}: {}",
            response.status()
        );
    }
    ada.write("Written here", "body", true).await;

    let digests = digests(&app).await;
    assert_eq!(digests.len(), 1, "{digests:?}");
    let body = &digests[0].1;
    assert!(body.contains("Written here"), "{body}");
    assert!(body.contains("Imported draft"), "{body}");
    assert!(body.contains("Imported again"), "{body}");
    for imported in ["Imported one", "Imported two", "Imported three"] {
        assert!(!body.contains(imported), "{body}");
    }
    assert!(!body.contains("more:"), "{body}");
}

#[tokio::test]
async fn a_digest_lists_at_most_its_bound_and_counts_the_rest() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    bob.set_email("bob@example.com").await;
    bob.post_form("/authors/ada/subscribe", &[]).await;
    let total = DIGEST_POSTS + 5;
    sqlx::query(
        "INSERT INTO posts (author_id, slug, title, body, body_html, published_at, publish_count)
         SELECT $1, 'post-' || n, 'Post ' || n, 'b', '<p>b</p>',
                now() - make_interval(mins => ($2 - n)::int), 1
           FROM generate_series(1, $2) n",
    )
    .bind(ada.id)
    .bind(total)
    .execute(&app.pool)
    .await
    .unwrap();

    let digests = digests(&app).await;
    let body = &digests[0].1;
    let listed = body.matches("• Post ").count() as i64;
    assert_eq!(listed, DIGEST_POSTS, "{body}");
    // The newest first: the last five published are in, the first five are not.
    assert!(body.contains(&format!("• Post {total} — by ada")), "{body}");
    assert!(!body.contains("• Post 5 — by ada"), "{body}");
    let all = format!("…and 5 more: {}/posts", app.state.config.site_url());
    assert!(body.contains(&all), "{body}");
}

#[tokio::test]
async fn notifications_are_private_and_marked_read_one_or_all() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    bob.post_form("/authors/ada/subscribe", &[]).await;
    ada.write("One", "1", true).await;
    ada.write("Two", "2", true).await;
    app.drain("default").await;
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM notifications WHERE user_id = $1 ORDER BY id")
            .bind(bob.id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(ids.len(), 2);
    let page = bob.get("/notifications").await.text().await.unwrap();
    assert!(page.contains("ada published “One”") && page.contains("ada published “Two”"));
    assert!(
        !ada.get("/notifications")
            .await
            .text()
            .await
            .unwrap()
            .contains("published “One”")
    );

    // Someone else's notification does not exist for ada.
    let response = ada
        .post_form(&format!("/notifications/{}/read", ids[0]), &[])
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let response = bob
        .post_form(
            &format!("/notifications/{}/read", ids[0]),
            &[("open", "true")],
        )
        .await;
    assert_redirect(&response, "/posts/one");
    let unread: Value = bob
        .get("/api/notifications/unread")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unread["unread"], 1);
    bob.post_form("/notifications/read-all", &[]).await;
    let unread: Value = bob
        .get("/api/notifications/unread")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unread["unread"], 0);
    assert_eq!(
        app.get("/api/notifications/unread").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_bell_that_reconnects_with_last_event_id_gets_what_it_missed() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    bob.post_form("/authors/ada/subscribe", &[]).await;
    ada.write("Seen live", "1", true).await;
    let mut stream = bob
        .browser
        .client
        .get(app.url("/notifications/stream"))
        .send()
        .await
        .unwrap();
    let mut buffer = String::new();
    read_events(&mut stream, &mut buffer, 1).await;
    app.drain("default").await;
    let live = read_events(&mut stream, &mut buffer, 1).await;
    let last_id = live[0].id.expect("an event id");
    drop(stream);

    // Offline: another post.
    ada.write("Missed", "2", true).await;
    app.drain("default").await;

    let mut stream = bob
        .browser
        .client
        .get(app.url("/notifications/stream"))
        .header("last-event-id", last_id.to_string())
        .send()
        .await
        .unwrap();
    let mut buffer = String::new();
    let events = read_events(&mut stream, &mut buffer, 2).await;
    assert_eq!(events[0].kind.as_deref(), Some("notification.count"));
    assert_eq!(events[1].kind.as_deref(), Some("notification.new"));
    let data: Value = serde_json::from_str(&events[1].data).unwrap();
    assert!(data["title"].as_str().unwrap().contains("Missed"));
    assert_eq!(data["unread"], 2);
}
