//! The web shell: error pages, probes, static files, limits, pool exhaustion, migrations.

use std::time::Duration;

use axum::{Router, routing::get};
use hearth::{db::migrations, web::WebError};
use reqwest::StatusCode;

use crate::helpers::{TestApp, migration_sets};

#[tokio::test]
async fn unknown_routes_get_a_404_page_or_json_under_api() {
    let app = TestApp::spawn().await;

    let page = app.get("/no/such/page").await;
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().contains("404 · Not Found"));

    let api = app.get("/api/no-such-thing").await;
    assert_eq!(api.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = api.json().await.unwrap();
    assert_eq!(body["error"]["status"], 404);
}

#[tokio::test]
async fn internal_errors_render_a_500_page_without_internal_detail() {
    let routes = Router::new()
        .route(
            "/boom",
            get(|| async {
                Err::<(), _>(WebError::Internal(anyhow::anyhow!(
                    "password=hunter2 in SQL"
                )))
            }),
        )
        .route(
            "/api/boom",
            get(|| async {
                Err::<(), _>(WebError::Internal(anyhow::anyhow!(
                    "password=hunter2 in SQL"
                )))
            }),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("secret panic detail")
                }
                "unreachable"
            }),
        );
    let app = TestApp::builder().routes(routes).spawn().await;

    let page = app.get("/boom").await;
    assert_eq!(page.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let html = page.text().await.unwrap();
    assert!(html.contains("500 · Internal Server Error"));
    assert!(!html.contains("hunter2"));

    let api = app.get("/api/boom").await;
    assert_eq!(api.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = api.text().await.unwrap();
    assert!(
        text.contains(r#""status":500"#) && !text.contains("hunter2"),
        "{text}"
    );

    let panicked = app.get("/panic").await;
    assert_eq!(panicked.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !panicked
            .text()
            .await
            .unwrap()
            .contains("secret panic detail")
    );
    assert_eq!(
        app.get("/healthz").await.status(),
        StatusCode::OK,
        "the server keeps serving"
    );
}

#[tokio::test]
async fn malformed_forms_get_a_clear_422() {
    let app = TestApp::spawn().await;

    let response = app.post_form("/login", &[("username", "ada")]).await;

    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("The form was sent without “password”.")
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let app = TestApp::builder()
        .config(|c| c.http.body_limit = 1024)
        .spawn()
        .await;
    let token = app.csrf_token().await;
    let big = "x".repeat(4096);

    let response = app
        .client
        .post(app.url("/login"))
        .header("x-csrf-token", token)
        .form(&[("username", big.as_str()), ("password", "x")])
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("larger than this server accepts")
    );
}

#[tokio::test]
async fn wrong_method_is_405() {
    let app = TestApp::spawn().await;

    let response = app.get("/logout").await;

    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(response.text().await.unwrap().contains("405"));
}

#[tokio::test]
async fn slow_requests_time_out_with_408() {
    let routes = Router::new().route("/slow", get(std::future::pending::<()>));
    let app = TestApp::builder()
        .config(|c| c.http.request_timeout = Duration::from_millis(100))
        .routes(routes)
        .spawn()
        .await;

    let response = app.get("/slow").await;

    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
}

#[tokio::test]
async fn probes_report_liveness_and_readiness() {
    let app = TestApp::spawn().await;

    assert_eq!(app.get("/healthz").await.text().await.unwrap(), "ok");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["pending_migrations"], 0);
}

#[tokio::test]
async fn readyz_is_503_until_migrations_are_applied() {
    let app = TestApp::builder().unmigrated().spawn().await;

    let before = app.get("/readyz").await;
    assert_eq!(before.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = before.json().await.unwrap();
    let sets = migration_sets();
    let files: usize = sets.iter().map(|set| set.migrator.iter().count()).sum();
    assert_eq!(body["pending_migrations"], files);

    let status = migrations::status(&app.pool, &sets).await.unwrap();
    assert!(status.iter().all(|m| m.applied_at.is_none()));
    migrations::run(&app.pool, &sets).await.unwrap();
    let status = migrations::status(&app.pool, &sets).await.unwrap();
    assert!(!status.is_empty() && status.iter().all(|m| m.applied_at.is_some()));
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn readyz_is_503_when_the_database_is_gone() {
    let app = TestApp::spawn().await;

    app.pool.close().await;

    assert_eq!(
        app.get("/readyz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_exhausted_pool_fails_fast_with_503() {
    let app = TestApp::builder()
        .config(|c| {
            c.db.db_max_connections = 1;
            c.db.db_acquire_timeout = Duration::from_millis(200);
        })
        .spawn()
        .await;
    let held = app.pool.acquire().await.unwrap();

    let response = app.get("/").await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("database is unavailable")
    );
    drop(held);
    assert_eq!(app.get("/").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn static_files_are_cached_and_compressed() {
    let app = TestApp::spawn().await;
    let home = app.get("/").await.text().await.unwrap();
    let css = app.state.composed.assets.url("app.css");
    assert!(
        home.contains(&css),
        "pages link assets by their content-hash URLs"
    );

    let response = app
        .client
        .get(app.url(&css))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(response.headers()["content-encoding"], "gzip");
}

/// `HEARTH_STATIC_DIR` serves the folder on disk: pages link plain URLs, each load revalidates,
/// and the compression layer compresses per request (docs/assets.md).
#[tokio::test]
async fn a_static_folder_on_disk_is_served_by_plain_urls_revalidated() {
    let folder = tempfile::tempdir().unwrap();
    let css = "body { color: rebeccapurple }\n".repeat(20);
    std::fs::write(folder.path().join("app.css"), &css).unwrap();
    let app = TestApp::builder()
        .config(|config| config.http.static_dir = Some(folder.path().to_owned()))
        .spawn()
        .await;

    let home = app.get("/").await.text().await.unwrap();
    assert!(home.contains("href=\"/static/app.css\""), "{home}");
    let plain = app.get("/static/app.css").await;
    assert_eq!(plain.headers()["cache-control"], "public, no-cache");
    assert!(plain.headers().contains_key("last-modified"));
    assert_eq!(plain.text().await.unwrap(), css);
    let compressed = app
        .client
        .get(app.url("/static/app.css"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(compressed.headers()["content-encoding"], "gzip");
    // The embedded files are not served beside the folder.
    assert_eq!(app.get("/static/js/chat.js").await.status(), 404);
}

/// A static file served as it is (a tiny one, or for a client accepting neither of its copies)
/// carries `assets::Encoded`: the compression layer must not compress it per request under the
/// file's one `ETag`.
#[tokio::test]
async fn the_compression_layer_leaves_a_response_marked_encoded_alone() {
    use axum::{http::header, response::IntoResponse};
    let css = "p { color: red }\n".repeat(64);
    let body = css.clone();
    let marked = move || {
        let body = body.clone();
        async move {
            let mut response = ([(header::CONTENT_TYPE, "text/css")], body).into_response();
            response
                .extensions_mut()
                .insert(hearth::web::assets::Encoded);
            response
        }
    };
    let app = TestApp::builder()
        .routes(Router::new().route("/marked.css", get(marked)))
        .spawn()
        .await;

    let response = app
        .client
        .get(app.url("/marked.css"))
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().contains_key("content-encoding"));
    assert_eq!(response.text().await.unwrap(), css);
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = TestApp::spawn().await;

    let first = app.get("/healthz").await;
    let second = app.get("/healthz").await;

    let id = |r: &reqwest::Response| r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(id(&first), id(&second));
    let echoed = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(id(&echoed), "abc-123");
}

#[tokio::test]
async fn the_home_page_shows_what_there_is_to_read_and_members_only_to_admins() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let grace = app.user("grace").await;
    ada.write("Notes from the hearth", "Warm.", true).await;
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(ada.id)
        .execute(&app.pool)
        .await
        .unwrap();

    // Anonymous visitors: the latest posts, nothing about who the members are.
    let home = app.other_browser().home().await;
    assert!(home.contains("Notes from the hearth"), "{home}");
    assert!(!home.contains("member-count"), "{home}");
    assert!(
        !home.contains("grace"),
        "a username on the anonymous home page"
    );
    assert!(!home.contains("PostgreSQL"), "{home}");

    // Members: the active public rooms too; still no member list.
    let home = grace.get("/").await.text().await.unwrap();
    assert!(home.contains(r#"href="/chat/lobby""#), "{home}");
    assert!(!home.contains("member-count"), "{home}");

    // Administrators: the member count and the newest members, newest first.
    let home = ada.get("/").await.text().await.unwrap();
    assert!(home.contains(r#"data-testid="member-count">2<"#), "{home}");
    let newest = &home[home.find("Newest members").unwrap()..];
    assert!(
        newest.find("grace").unwrap() < newest.find("ada").unwrap(),
        "newest first"
    );
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let app = TestApp::spawn().await;
    // A page, an error page, a static file and a JSON answer alike.
    for path in ["/", "/no/such/page", "/static/app.css", "/api/me"] {
        let response = app.get(path).await;
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ] {
            assert!(
                csp.contains(directive),
                "{path}: {directive} missing from {csp}"
            );
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["referrer-policy"], "same-origin", "{path}");
        assert_eq!(
            headers["cross-origin-opener-policy"], "same-origin",
            "{path}"
        );
    }
}
