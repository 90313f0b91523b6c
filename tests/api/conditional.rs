//! Conditional requests against a real server: the `Conditional` extractor on the publishing
//! pages and on a test route with an unsafe method, `conditional_get` middleware, and what
//! malformed precondition headers get.

use axum::{
    Router,
    http::{HeaderValue, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use hearth::web::{
    AppState,
    conditional::{Conditional, conditional_get},
};
use reqwest::header::HeaderMap;

use crate::helpers::{Browser, TestApp};

const OLD_DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// GET `path` in `browser` with these request headers.
async fn get_with(
    browser: &Browser<'_>,
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = browser.client.get(app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("GET")
}

fn header_of(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_post_page_answers_304_to_its_validators_before_reading_the_post() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let slug = ada.write("Validators", "body", true).await;
    let bob = app.user("bob").await;
    bob.get("/").await; // shows (and clears) the welcome message
    let path = format!("/posts/{slug}");

    let first = bob.get(&path).await;
    assert_eq!(first.status(), StatusCode::OK);
    let etag = header_of(first.headers(), "etag");
    // A signed-in reader's page is theirs: no date, never stored by a shared cache.
    assert!(first.headers().get("last-modified").is_none());
    assert!(header_of(first.headers(), "cache-control").contains("private"));

    // The view records a signed-in reader's visit; a 304 must come before it runs.
    sqlx::query("DELETE FROM post_reads WHERE user_id = $1")
        .bind(bob.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let again = get_with(&bob.browser, &app, &path, &[("if-none-match", &etag)]).await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header_of(again.headers(), "etag"), etag);
    assert!(header_of(again.headers(), "cache-control").contains("private"));
    let vary = again
        .headers()
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(",");
    assert!(vary.contains("cookie"), "{vary}");
    assert!(again.bytes().await.unwrap().is_empty());
    let reads: i64 = sqlx::query_scalar("SELECT count(*) FROM post_reads WHERE user_id = $1")
        .bind(bob.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(reads, 0, "the view ran for a 304");

    // Another reader's browser with bob's tag gets the page rendered for them.
    let cyd = app.user("cyd").await;
    let theirs = get_with(&cyd.browser, &app, &path, &[("if-none-match", &etag)]).await;
    assert_eq!(theirs.status(), StatusCode::OK);

    // An edit is a new version.
    let edit = format!("{path}/edit");
    ada.post_form(
        &edit,
        &[
            ("title", "Validators"),
            ("body", "new body"),
            ("action", "save"),
        ],
    )
    .await;
    let edited = get_with(&bob.browser, &app, &path, &[("if-none-match", &etag)]).await;
    assert_eq!(edited.status(), StatusCode::OK);
    assert_ne!(header_of(edited.headers(), "etag"), etag);
}

#[tokio::test]
async fn anonymous_revalidation_uses_etag_or_last_modified_and_ignores_bad_input() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let slug = ada.write("Dates", "body", true).await;
    let anon = app.other_browser();
    // An undeclared query string is served past the page cache: the view answers.
    let path = format!("/posts/{slug}?uncached=1");
    let first = anon.get(&path).await;
    assert_eq!(first.status(), StatusCode::OK);
    let etag = header_of(first.headers(), "etag");
    let modified = header_of(first.headers(), "last-modified");

    let cases: [(&[(&str, &str)], StatusCode); 9] = [
        (&[("if-none-match", &etag)], StatusCode::NOT_MODIFIED),
        (
            &[("if-none-match", &format!("W/{etag}"))],
            StatusCode::NOT_MODIFIED,
        ),
        (
            &[("if-none-match", &format!("\"other\", {etag}"))],
            StatusCode::NOT_MODIFIED,
        ),
        (&[("if-none-match", "*")], StatusCode::NOT_MODIFIED),
        (
            &[("if-modified-since", &modified)],
            StatusCode::NOT_MODIFIED,
        ),
        (&[("if-modified-since", OLD_DATE)], StatusCode::OK),
        // Not an HTTP-date: ignored.
        (&[("if-modified-since", "yesterday")], StatusCode::OK),
        // A malformed tag list matches nothing and still takes precedence over the date.
        (
            &[
                ("if-none-match", "not-a-tag"),
                ("if-modified-since", &modified),
            ],
            StatusCode::OK,
        ),
        // A stale tag wins over a date that alone would match.
        (
            &[
                ("if-none-match", "\"stale\""),
                ("if-modified-since", &modified),
            ],
            StatusCode::OK,
        ),
    ];
    for (headers, expected) in cases {
        let response = get_with(&anon, &app, &path, headers).await;
        assert_eq!(response.status(), expected, "{headers:?}");
        if expected == StatusCode::NOT_MODIFIED {
            assert_eq!(header_of(response.headers(), "etag"), etag);
            assert_eq!(header_of(response.headers(), "last-modified"), modified);
        }
    }
}

#[tokio::test]
async fn lists_and_author_pages_revalidate_until_a_post_or_a_subscription_changes_them() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    ada.write("First", "body", true).await;
    let anon = app.other_browser();
    for path in ["/posts?page=1&x=1", "/authors/ada?x=1"] {
        let etag = header_of(anon.get(path).await.headers(), "etag");
        let again = get_with(&anon, &app, path, &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
    }
    // Preconditions never hide a missing page.
    let past = get_with(&anon, &app, "/posts?page=9&x=1", &[("if-none-match", "*")]).await;
    assert_eq!(past.status(), StatusCode::NOT_FOUND);
    let list_tag = header_of(anon.get("/posts?x=1").await.headers(), "etag");
    let author_tag = header_of(anon.get("/authors/ada?x=1").await.headers(), "etag");

    // A subscription changes the author page (its count), not the list.
    let bob = app.user("bob").await;
    bob.post_form("/authors/ada/subscribe", &[]).await;
    let author = get_with(
        &anon,
        &app,
        "/authors/ada?x=1",
        &[("if-none-match", &author_tag)],
    )
    .await;
    assert_eq!(author.status(), StatusCode::OK);
    let list = get_with(&anon, &app, "/posts?x=1", &[("if-none-match", &list_tag)]).await;
    assert_eq!(list.status(), StatusCode::NOT_MODIFIED);

    // A new post changes the list.
    ada.write("Second", "body", true).await;
    let list = get_with(&anon, &app, "/posts?x=1", &[("if-none-match", &list_tag)]).await;
    assert_eq!(list.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_page_shown_with_a_flash_message_is_never_revalidated() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let slug = ada.write("Flash", "body", true).await;
    let path = format!("/posts/{slug}");
    ada.get(&path).await; // shows (and clears) "Your post is published."
    let etag = header_of(ada.get(&path).await.headers(), "etag");
    // Publishing again changes nothing but leaves a message for the next page.
    ada.post_form(&format!("{path}/publish"), &[]).await;
    let shown = get_with(&ada.browser, &app, &path, &[("if-none-match", &etag)]).await;
    assert_eq!(shown.status(), StatusCode::OK);
    assert!(shown.headers().get("etag").is_none());
    assert!(
        shown
            .text()
            .await
            .unwrap()
            .contains("That post was already published.")
    );
    let after = get_with(&ada.browser, &app, &path, &[("if-none-match", &etag)]).await;
    assert_eq!(after.status(), StatusCode::NOT_MODIFIED);
}

/// A resource whose version is the value of the `version` query parameter, for the unsafe
/// methods: `Conditional` answers before the handler's own work.
async fn versioned(conditional: Conditional, uri: axum::http::Uri) -> Response {
    let version = uri.query().unwrap_or("v1").to_owned();
    let date = time::OffsetDateTime::from_unix_timestamp(784_111_777).unwrap();
    let conditional = conditional.etag(&version).last_modified(date);
    if let Some(answer) = conditional.precondition() {
        return answer;
    }
    conditional.stamp("done".into_response())
}

fn test_routes() -> Router<AppState> {
    Router::new()
        .route("/t/versioned", get(versioned).put(versioned))
        .route(
            "/t/plain",
            get(|| async { "the same body every time" })
                .layer(middleware::from_fn(conditional_get)),
        )
        .route(
            "/t/dated",
            get(|| async {
                let mut response = "dated".into_response();
                response
                    .headers_mut()
                    .insert(header::LAST_MODIFIED, HeaderValue::from_static(OLD_DATE));
                response
            })
            .layer(middleware::from_fn(conditional_get)),
        )
}

#[tokio::test]
async fn failed_if_match_and_if_unmodified_since_refuse_unsafe_requests_with_412() {
    let app = TestApp::builder().routes(test_routes()).spawn().await;
    let etag = header_of(app.get("/t/versioned").await.headers(), "etag");
    let token = app.csrf_token().await;
    let put = |headers: Vec<(&'static str, String)>| {
        let mut request = app
            .browser()
            .client
            .put(app.url("/t/versioned"))
            .header("x-csrf-token", token.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move { request.send().await.expect("PUT") }
    };
    let cases = [
        (vec![("if-match", etag.clone())], StatusCode::OK),
        (vec![("if-match", "*".to_owned())], StatusCode::OK),
        (
            vec![("if-match", "\"stale\"".to_owned())],
            StatusCode::PRECONDITION_FAILED,
        ),
        // Strong comparison: a weak tag never matches.
        (
            vec![("if-match", format!("W/{etag}"))],
            StatusCode::PRECONDITION_FAILED,
        ),
        // Malformed: matches nothing, so the request is not run.
        (
            vec![("if-match", "garbage".to_owned())],
            StatusCode::PRECONDITION_FAILED,
        ),
        (
            vec![("if-unmodified-since", OLD_DATE.to_owned())],
            StatusCode::OK,
        ),
        (
            vec![(
                "if-unmodified-since",
                "Sat, 05 Nov 1994 08:49:37 GMT".to_owned(),
            )],
            StatusCode::PRECONDITION_FAILED,
        ),
        (
            vec![("if-unmodified-since", "not a date".to_owned())],
            StatusCode::OK,
        ),
        // If-None-Match on an unsafe method: a match is a 412, not a 304.
        (
            vec![("if-none-match", etag.clone())],
            StatusCode::PRECONDITION_FAILED,
        ),
    ];
    for (headers, expected) in cases {
        let shown = format!("{headers:?}");
        let response = put(headers).await;
        assert_eq!(response.status(), expected, "{shown}");
        if expected == StatusCode::PRECONDITION_FAILED {
            let page = response.text().await.unwrap();
            assert!(page.contains("has changed since you loaded it"), "{page}");
        }
    }
}

#[tokio::test]
async fn conditional_get_middleware_answers_304_for_any_view() {
    let app = TestApp::builder().routes(test_routes()).spawn().await;
    let first = app.get("/t/plain").await;
    let etag = header_of(first.headers(), "etag");
    assert!(etag.starts_with("W/\""), "a weak tag from the body: {etag}");
    let again = get_with(
        &app.browser(),
        &app,
        "/t/plain",
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let stale = get_with(
        &app.browser(),
        &app,
        "/t/plain",
        &[("if-none-match", "W/\"x\"")],
    )
    .await;
    assert_eq!(stale.status(), StatusCode::OK);

    let dated = get_with(
        &app.browser(),
        &app,
        "/t/dated",
        &[("if-modified-since", OLD_DATE)],
    )
    .await;
    assert_eq!(dated.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header_of(dated.headers(), "last-modified"), OLD_DATE);
    let bad = get_with(
        &app.browser(),
        &app,
        "/t/dated",
        &[("if-modified-since", "32 Nov")],
    )
    .await;
    assert_eq!(bad.status(), StatusCode::OK);

    // A personal page (the signed-in author's own list): its 304 is private as its 200 is.
    let ada = app.user("ada").await;
    ada.get("/").await; // shows (and clears) the welcome message
    let mine = ada.get("/me/posts").await;
    assert!(header_of(mine.headers(), "cache-control").contains("private"));
    let etag = header_of(mine.headers(), "etag");
    let again = get_with(&ada.browser, &app, "/me/posts", &[("if-none-match", &etag)]).await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(header_of(again.headers(), "cache-control").contains("private"));
}

#[tokio::test]
async fn a_reloaded_post_page_is_revalidated_with_304_in_a_real_browser() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let slug = ada
        .write("Reload me", "Still here after a reload.", true)
        .await;
    crate::browser::run_script(&app, "conditional.mjs", &[("POST_SLUG", &slug)]).await;
}
