//! The shared page cache never serves one visitor's page to another (issue #30, hole 1).
//!
//! * A signed-in request is recognised with the parser that signs it in, so a session or flash
//!   cookie with a trimmed or percent-encoded name (`hearth%5Fsession`) is as personal as the
//!   plain one.
//! * Whatever the request looked like, a page that rendered a user, a flash message or a CSRF
//!   token is marked personal and never stored (`Personal`): the cache fails closed.
//! * Query strings the route did not declare, and non-canonical page numbers, write nothing.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, response::Html, routing::get};
use hearth::{AppState, cache::page::cache_page, web::Layout};
use reqwest::StatusCode;

use crate::helpers::{TestApp, client};

/// The value of cookie `name` in a `Cookie` header.
fn cookie_value<'a>(header: &'a str, name: &str) -> &'a str {
    header
        .split("; ")
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name} in {header:?}"))
}

/// A GET with exactly this `Cookie` header (no jar).
async fn get_with_cookie(app: &TestApp, path: &str, cookie: &str) -> reqwest::Response {
    client()
        .get(app.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_session_cookie_under_another_spelling_of_its_name_is_never_shared() {
    let app = TestApp::spawn().await;
    let mallory = app.user("mallory").await;
    let token = cookie_value(&mallory.cookie, "hearth_session").to_owned();

    for spelling in [
        format!("hearth%5Fsession={token}"),
        format!("hearth_session ={token}"),
        format!("hearth%5fsession={token}"),
    ] {
        for path in ["/posts", "/authors/mallory"] {
            // Act: the attacker's page is rendered for them, signed in...
            let page = get_with_cookie(&app, path, &spelling).await;
            assert_eq!(page.status(), StatusCode::OK, "{spelling} {path}");
            let control = page.headers().get("cache-control").cloned();
            assert!(page.text().await.unwrap().contains("mallory"), "signed in");

            // ...and an anonymous visitor never gets it.
            let anonymous = client().get(app.url(path)).send().await.unwrap();
            let body = anonymous.text().await.unwrap();
            assert!(
                !body.contains(r#"data-testid="signed-in-user""#),
                "{spelling}: {path} served the attacker's page to everyone"
            );
            assert!(
                control.is_some_and(|c| c.to_str().unwrap().contains("private")),
                "{spelling}: a signed-in page is private for caches downstream too"
            );
        }
    }
}

#[tokio::test]
async fn a_flash_message_under_another_spelling_of_its_name_is_never_shared() {
    let app = TestApp::spawn().await;
    // A real, signed flash cookie that names its user: sign-up leaves "Welcome, …" for the
    // next page, and the attacker chose the name.
    let mallory = app.user("mallory").await;
    let flash = cookie_value(&mallory.cookie, "hearth_flash").to_owned();

    // Act: the first visit to the list, which a publish can always make a miss, is theirs.
    let page = get_with_cookie(&app, "/posts", &format!("hearth%5Fflash={flash}")).await;
    assert!(
        page.text().await.unwrap().contains("mallory"),
        "shown to its owner"
    );

    let anonymous = client().get(app.url("/posts")).send().await.unwrap();
    assert!(
        !anonymous.text().await.unwrap().contains("mallory"),
        "the banner of everyone's page is not the attacker's"
    );
}

/// A route behind `cache_page` with no bypass at all, whose page renders the visitor's CSRF
/// token when `csrf` is set, and counts its renders.
fn layout_routes(renders: Arc<AtomicUsize>) -> impl FnOnce(&AppState) -> Router<AppState> {
    move |state| {
        let counted = |renders: Arc<AtomicUsize>, csrf: bool| {
            move |layout: Layout| async move {
                renders.fetch_add(1, Ordering::SeqCst);
                let token = if csrf { layout.csrf_token() } else { "" };
                Html(format!("<p>form {token}</p>"))
            }
        };
        let cached = cache_page(&state.cache, Duration::from_secs(60));
        Router::new()
            .route(
                "/with-token",
                get(counted(renders.clone(), true)).layer(cached.clone()),
            )
            .route("/without-token", get(counted(renders, false)).layer(cached))
    }
}

#[tokio::test]
async fn a_page_that_rendered_a_csrf_token_is_not_stored_even_without_a_bypass() {
    let renders = Arc::new(AtomicUsize::new(0));
    let app = TestApp::builder()
        .routes_with(layout_routes(renders.clone()))
        .spawn()
        .await;

    let first = client().get(app.url("/with-token")).send().await.unwrap();
    assert!(
        first.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("private")
    );
    let mine = first.text().await.unwrap();
    let second = client().get(app.url("/with-token")).send().await.unwrap();
    assert_ne!(
        second.text().await.unwrap(),
        mine,
        "each browser its own token"
    );
    assert_eq!(
        renders.load(Ordering::SeqCst),
        2,
        "rendered for each visitor"
    );

    // The same page without the token is shared as before.
    client()
        .get(app.url("/without-token"))
        .send()
        .await
        .unwrap();
    let hit = client()
        .get(app.url("/without-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(hit.headers()["x-cache"], "HIT");
    assert_eq!(renders.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn query_strings_the_route_does_not_declare_write_nothing_to_the_cache() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    ada.write("Hello", "First post.", true).await;
    let entries = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cache_entries")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    app.get("/posts").await;
    let before = entries().await;

    for path in ["/posts?x=1", "/posts?x=2", "/posts?page=1&x=1", "/posts?"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(!response.headers().contains_key("x-cache"), "{path}");
    }
    for path in [
        "/posts?page=01",
        "/posts?page=+1",
        "/posts?page=abc",
        "/posts?page=2",
    ] {
        assert_eq!(
            app.get(path).await.status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    assert_eq!(entries().await, before, "no new cache entries");

    // Declared parameters still cache, and an author has one URL.
    app.get("/posts?page=1").await;
    assert_eq!(app.get("/posts?page=1").await.headers()["x-cache"], "HIT");
    let shouted = app.get("/authors/ADA").await;
    assert_eq!(shouted.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(shouted.headers()["location"], "/authors/ada");
}

#[tokio::test]
async fn a_browser_revalidates_a_shared_page_and_gets_its_own_after_signing_in() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let slug = ada.write("Hello", "First post.", true).await;
    let path = format!("/posts/{slug}");

    // Before signing in, the browser gets the shared page...
    let anonymous = client().get(app.url(&path)).send().await.unwrap();
    let control = anonymous.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_owned();
    let etag = anonymous.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        control.contains("max-age=0") && control.contains("s-maxage=300"),
        "browsers must ask again, shared caches may keep it: {control}"
    );

    // ...and once signed in, its revalidation of that copy gets the signed-in page.
    let signed_in = get_with_cookie(&app, &path, &ada.cookie).await;
    let again = client()
        .get(app.url(&path))
        .header("cookie", &ada.cookie)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "not the anonymous copy's 304"
    );
    assert!(
        again
            .text()
            .await
            .unwrap()
            .contains(r#"data-testid="signed-in-user""#)
    );
    assert_eq!(signed_in.status(), StatusCode::OK);
}
