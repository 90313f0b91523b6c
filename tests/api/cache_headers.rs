//! Cache headers for the layers above Hearth (#34): the `Cache-Control` and `Vary` helpers and
//! how the page cache honours them, `Surrogate-Key`/`Cache-Tag`, the CDN purge hook (against a
//! small purge receiver) and the site-wide cache.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::Request,
    http::{HeaderMap, header},
    response::Html,
    routing::{any, get},
};
use hearth::{
    AppState,
    cache::{
        headers::{CacheControl, cache_control, never_cache, vary_on_cookie, vary_on_headers},
        page::{Personal, cache_page},
    },
};
use tokio::sync::mpsc;

use crate::helpers::TestApp;

/// A handler that counts its renders and answers `body` with `headers`.
fn counted(
    renders: &Arc<AtomicUsize>,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
) -> axum::routing::MethodRouter<AppState> {
    let renders = renders.clone();
    get(move || async move {
        renders.fetch_add(1, Ordering::SeqCst);
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, value.parse().unwrap());
        }
        (map, Html(body))
    })
}

fn routes(state: &AppState, renders: &Arc<AtomicUsize>) -> Router<AppState> {
    let page = || cache_page(&state.cache, Duration::from_secs(60));
    let public = CacheControl::new()
        .max_age(10)
        .s_maxage(300)
        .stale_while_revalidate(30)
        .stale_if_error(600);
    Router::new()
        .route(
            "/shared",
            counted(renders, &[], "<p>shared</p>")
                .layer(cache_control(public.clone()))
                .layer(page()),
        )
        .route(
            "/fresh-now",
            get(|| async { (CacheControl::new().max_age(0), Html("<p>now</p>")) }).layer(page()),
        )
        .route(
            "/malformed",
            counted(renders, &[("cache-control", "max-age=soon")], "<p>?</p>").layer(page()),
        )
        .route(
            "/private",
            counted(renders, &[], "<p>mine</p>")
                .layer(cache_control(CacheControl::new().max_age(60).private()))
                .layer(page()),
        )
        .route(
            "/never",
            get(|| async { Html("<p>never</p>") })
                .layer(axum::middleware::from_fn(never_cache))
                .layer(cache_control(public.clone())),
        )
        .route(
            "/personal",
            get(|mut request: Request| async move {
                Personal::of(request.extensions_mut()).mark();
                Html("<p>hello, you</p>")
            })
            .layer(cache_control(public))
            .layer(page()),
        )
        .route(
            "/by-language",
            counted(renders, &[], "<p>hi</p>")
                .layer(vary_on_headers(&[header::ACCEPT_LANGUAGE]))
                .layer(page()),
        )
        .route(
            "/by-cookie",
            counted(renders, &[], "<p>hi</p>")
                .layer(vary_on_cookie())
                .layer(page()),
        )
        .route(
            "/vary-star",
            counted(renders, &[("vary", "*")], "<p>*</p>")
                .layer(vary_on_cookie())
                .layer(page()),
        )
        .route(
            "/tagged",
            counted(renders, &[("x-cache-tags", "post-42")], "<p>42</p>")
                .layer(page().tag("posts")),
        )
        .route(
            "/fresh-on-demand",
            counted(renders, &[], "<p>fresh?</p>")
                .layer(page().bypass(|headers| headers.contains_key("x-fresh"))),
        )
        .route(
            "/badly-tagged",
            counted(renders, &[], "<p>?</p>").layer(page().tag("two words")),
        )
}

async fn app() -> (TestApp, Arc<AtomicUsize>) {
    let renders = Arc::new(AtomicUsize::new(0));
    let counter = renders.clone();
    let app = TestApp::builder()
        .routes_with(move |state| routes(state, &counter))
        .spawn()
        .await;
    (app, renders)
}

/// Seconds left to the stored page entries, in the shared tier.
async fn stored_ttls(app: &TestApp) -> Vec<f64> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - now())::float8 FROM cache_entries
         WHERE key LIKE '%:page:%' ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn cache_control_sets_its_directives_and_the_page_cache_keeps_pages_for_s_maxage() {
    let (app, renders) = app().await;
    let first = app.get("/shared").await;
    assert_eq!(
        header(&first, "cache-control"),
        Some("max-age=10, s-maxage=300, stale-while-revalidate=30, stale-if-error=600")
    );
    assert_eq!(header(&first, "x-cache"), Some("MISS"));
    let second = app.get("/shared").await;
    assert_eq!(header(&second, "x-cache"), Some("HIT"));
    assert_eq!(renders.load(Ordering::SeqCst), 1);
    // Kept for s-maxage (300 s), not the layer's 60 s nor max-age's 10 s.
    let ttls = stored_ttls(&app).await;
    assert!(
        !ttls.is_empty() && ttls.iter().all(|ttl| (250.0..=300.0).contains(ttl)),
        "{ttls:?}"
    );

    // A zero or malformed freshness is not stored.
    for path in ["/fresh-now", "/malformed"] {
        for _ in 0..2 {
            let response = app.get(path).await;
            assert_eq!(response.status(), 200);
            assert_eq!(header(&response, "x-cache"), None, "{path}");
        }
    }
    assert_eq!(stored_ttls(&app).await.len(), ttls.len());
}

#[tokio::test]
async fn private_no_store_and_personal_responses_are_never_stored_nor_made_shareable() {
    let (app, renders) = app().await;
    for _ in 0..2 {
        let private = app.get("/private").await;
        assert_eq!(
            header(&private, "cache-control"),
            Some("private, max-age=60")
        );
        assert_eq!(header(&private, "x-cache"), None);
    }
    assert_eq!(renders.load(Ordering::SeqCst), 2);

    let never = app.get("/never").await;
    let control = header(&never, "cache-control").unwrap();
    assert!(
        control.contains("no-store") && !control.contains("s-maxage"),
        "{control}"
    );

    for _ in 0..2 {
        let personal = app.get("/personal").await;
        assert_eq!(
            header(&personal, "cache-control"),
            Some("private, max-age=10, stale-while-revalidate=30, stale-if-error=600"),
            "a personal page never tells a CDN to keep it"
        );
        assert_eq!(header(&personal, "x-cache"), None);
    }
}

#[tokio::test]
async fn the_vary_helpers_key_the_page_by_those_request_headers() {
    let (app, renders) = app().await;
    let get = |path: &'static str, name: &'static str, value: &'static str| {
        app.client.get(app.url(path)).header(name, value).send()
    };
    let fr = get("/by-language", "accept-language", "fr").await.unwrap();
    assert_eq!(header(&fr, "vary"), Some("accept-language"));
    get("/by-language", "accept-language", "de").await.unwrap();
    let again = get("/by-language", "accept-language", "fr").await.unwrap();
    assert_eq!(header(&again, "x-cache"), Some("HIT"));
    assert_eq!(renders.load(Ordering::SeqCst), 2);

    let a = get("/by-cookie", "cookie", "theme=a").await.unwrap();
    assert_eq!(header(&a, "vary"), Some("cookie"));
    assert_eq!(header(&a, "x-cache"), Some("MISS"));
    let b = get("/by-cookie", "cookie", "theme=b").await.unwrap();
    assert_eq!(
        header(&b, "x-cache"),
        Some("MISS"),
        "another cookie, another copy"
    );
    let a = get("/by-cookie", "cookie", "theme=a").await.unwrap();
    assert_eq!(header(&a, "x-cache"), Some("HIT"));
    assert_eq!(renders.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_vary_star_response_is_never_stored() {
    let (app, renders) = app().await;
    for _ in 0..3 {
        let response = app.get("/vary-star").await;
        assert_eq!(response.status(), 200);
        let vary: Vec<_> = response.headers().get_all("vary").iter().collect();
        assert_eq!(vary, ["*"], "vary_on_cookie leaves a Vary: * as it is");
        assert_eq!(header(&response, "x-cache"), None);
    }
    assert_eq!(renders.load(Ordering::SeqCst), 3);
    assert!(stored_ttls(&app).await.is_empty());
}

#[tokio::test]
async fn stored_pages_name_their_tags_for_a_cdn() {
    let (app, _) = app().await;
    for expected in ["MISS", "HIT"] {
        let response = app.get("/tagged").await;
        assert_eq!(header(&response, "x-cache"), Some(expected));
        assert_eq!(header(&response, "surrogate-key"), Some("posts post-42"));
        assert_eq!(header(&response, "cache-tag"), Some("posts,post-42"));
        assert_eq!(header(&response, "x-cache-tags"), None);
    }
    // A tag a CDN would split is named nowhere, and the page is still cached here.
    for expected in ["MISS", "HIT"] {
        let response = app.get("/badly-tagged").await;
        assert_eq!(header(&response, "x-cache"), Some(expected));
        assert_eq!(header(&response, "surrogate-key"), None);
        assert_eq!(header(&response, "cache-tag"), None);
    }
    // Uncached responses name no tags.
    assert_eq!(header(&app.get("/personal").await, "surrogate-key"), None);
}

/// What the purge receiver saw of one request.
#[derive(Debug)]
struct Purge {
    method: String,
    surrogate_key: Option<String>,
    body: serde_json::Value,
}

/// A purge receiver on port 0: records every request, answers `status`.
async fn purge_receiver(status: u16) -> (url::Url, mpsc::UnboundedReceiver<Purge>) {
    let (sent, received) = mpsc::unbounded_channel();
    let router = Router::new().route(
        "/purge",
        any(move |headers: HeaderMap, request: Request| {
            let sent = sent.clone();
            async move {
                let method = request.method().to_string();
                let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let _ = sent.send(Purge {
                    method,
                    surrogate_key: headers
                        .get("surrogate-key")
                        .map(|v| v.to_str().unwrap().to_owned()),
                    body: serde_json::from_slice(&body).unwrap(),
                });
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/purge", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url.parse().unwrap(), received)
}

async fn next_purge(received: &mut mpsc::UnboundedReceiver<Purge>) -> Purge {
    tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("a purge request")
        .expect("the receiver runs")
}

#[tokio::test]
async fn invalidating_a_tag_sends_it_to_the_purge_url() {
    let (url, mut received) = purge_receiver(500).await;
    let app = TestApp::builder()
        .config(|config| config.cache.cache_purge_url = Some(url))
        .spawn()
        .await;
    let cache = &app.state.cache;

    cache.invalidate_tag("posts").await.unwrap();
    let purge = next_purge(&mut received).await;
    assert_eq!(purge.method, "POST");
    assert_eq!(purge.surrogate_key.as_deref(), Some("posts"));
    assert_eq!(purge.body, serde_json::json!({ "tags": ["posts"] }));

    // The receiver answered 500: logged, and the next invalidation is sent all the same.
    cache.invalidate_tag("post-7").await.unwrap();
    let purge = next_purge(&mut received).await;
    assert_eq!(purge.body, serde_json::json!({ "tags": ["post-7"] }));
}

#[tokio::test]
async fn an_unreachable_purge_url_never_fails_an_invalidation() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/purge", closed.local_addr().unwrap());
    drop(closed);
    let renders = Arc::new(AtomicUsize::new(0));
    let counter = renders.clone();
    let app = TestApp::builder()
        .config(|config| config.cache.cache_purge_url = Some(url.parse().unwrap()))
        .routes_with(move |state| routes(state, &counter))
        .spawn()
        .await;
    app.get("/tagged").await;
    for _ in 0..3 {
        app.state.cache.invalidate_tag("posts").await.unwrap();
    }
    assert_eq!(header(&app.get("/tagged").await, "x-cache"), Some("MISS"));
}

async fn site_app() -> (TestApp, Arc<AtomicUsize>) {
    let renders = Arc::new(AtomicUsize::new(0));
    let counter = renders.clone();
    let app = TestApp::builder()
        .config(|config| config.cache.site_cache_ttl = Duration::from_secs(60))
        .routes_with(move |state| {
            routes(state, &counter).route("/plain", counted(&counter, &[], "<p>plain</p>"))
        })
        .spawn()
        .await;
    (app, renders)
}

#[tokio::test]
async fn the_site_cache_stores_anonymous_gets_of_every_page() {
    let (app, renders) = site_app().await;
    let first = app.get("/plain").await;
    assert_eq!(header(&first, "x-cache"), Some("MISS"));
    assert_eq!(header(&first, "cache-control"), Some("max-age=60"));
    assert_eq!(header(&app.get("/plain").await, "x-cache"), Some("HIT"));
    assert_eq!(renders.load(Ordering::SeqCst), 1);

    // A query string nobody declared, a signed-in visitor: served uncached.
    assert_eq!(header(&app.get("/plain?x=1").await, "x-cache"), None);
    let ann = app.user("ann").await;
    assert_eq!(header(&ann.get("/plain").await, "x-cache"), None);
    assert_eq!(renders.load(Ordering::SeqCst), 3);

    // Pages that show a CSRF token or a personal mark are never stored.
    for path in ["/login", "/personal"] {
        for _ in 0..2 {
            let response = app.get(path).await;
            assert_eq!(response.status(), 200, "{path}");
            assert_eq!(header(&response, "x-cache"), None, "{path}");
        }
    }
}

#[tokio::test]
async fn the_site_cache_leaves_routes_with_a_page_cache_of_their_own_to_it() {
    let (app, renders) = site_app().await;
    assert_eq!(header(&app.get("/tagged").await, "x-cache"), Some("MISS"));
    assert_eq!(header(&app.get("/tagged").await, "x-cache"), Some("HIT"));
    // The route's own layer kept it for its tag: no untagged copy outlives the invalidation.
    app.state.cache.invalidate_tag("posts").await.unwrap();
    assert_eq!(header(&app.get("/tagged").await, "x-cache"), Some("MISS"));
    assert_eq!(renders.load(Ordering::SeqCst), 2);
    // Its own rules hold too: a private page stays unstored.
    assert_eq!(header(&app.get("/private").await, "x-cache"), None);
    assert_eq!(header(&app.get("/private").await, "x-cache"), None);
}

#[tokio::test]
async fn the_site_cache_never_serves_a_page_past_its_own_layers_bypass() {
    let (app, renders) = site_app().await;
    assert_eq!(
        header(&app.get("/fresh-on-demand").await, "x-cache"),
        Some("MISS")
    );
    assert_eq!(
        header(&app.get("/fresh-on-demand").await, "x-cache"),
        Some("HIT")
    );
    // The page is stored, but the route's own layer sends these to the handler.
    for _ in 0..2 {
        let fresh = app
            .client
            .get(app.url("/fresh-on-demand"))
            .header("x-fresh", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&fresh, "x-cache"), None);
    }
    assert_eq!(renders.load(Ordering::SeqCst), 3);
}
