//! The image proxy (`/img/<signature>/<URL>`, src/publishing/images): a post's external image
//! is rewritten to it and served from it; what it refuses.
//!
//! The "other site" is a local image server on 127.0.0.1 ([`ImageServer`]), which the proxy
//! may reach only with `HEARTH_IMAGE_PROXY_ALLOW_HOSTS=127.0.0.1`: without it, the loopback
//! address is refused before any connection (the server counts its requests to prove it).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hearth::publishing::{PublishingSettings, images::ImageSigner};

use crate::helpers::TestApp;

/// A 48×32 orange PNG (the screenshots show it).
pub const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x30, 0x00, 0x00, 0x00, 0x20, 0x08, 0x02, 0x00, 0x00, 0x00, 0xdb, 0xb6, 0x6c,
    0x4b, 0x00, 0x00, 0x00, 0x31, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0xed, 0xce, 0x41, 0x0d, 0x00,
    0x00, 0x08, 0x04, 0xa0, 0x0b, 0x60, 0x29, 0xab, 0x9b, 0xcc, 0x16, 0xce, 0x07, 0x1b, 0x01, 0xc8,
    0x74, 0xbd, 0x12, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21,
    0x21, 0x21, 0x21, 0xa1, 0x4b, 0x0b, 0x55, 0xf9, 0x5a, 0x5b, 0x4e, 0xb4, 0xf3, 0x7d, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// The limit the tests set (`HEARTH_IMAGE_PROXY_MAX_BYTES`): the big images are twice that.
const LIMIT: usize = 256 * 1024;

/// Another site's images, on 127.0.0.1: `/pic.png`, `/big.png` (over [`LIMIT`], with its
/// length), `/big-stream.png` (over it, without), `/page.html`, `/fake.png` (HTML said to be a
/// PNG), `/logo.svg`, `/slow.png` (answers after 3 s), `/redirect-private` (to 169.254.169.254).
pub struct ImageServer {
    pub address: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

impl ImageServer {
    pub async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let big = || {
            let mut body = PNG.to_vec();
            body.resize(LIMIT * 2, 0);
            body
        };
        let app = Router::new()
            .route(
                "/pic.png",
                get(|| async { ([(header::CONTENT_TYPE, "image/png")], PNG) }),
            )
            .route(
                "/big.png",
                get(move || async move { ([(header::CONTENT_TYPE, "image/png")], big()) }),
            )
            .route(
                "/big-stream.png",
                get(move || async move {
                    let chunks = big()
                        .chunks(16 * 1024)
                        .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                        .collect::<Vec<_>>();
                    let mut response =
                        Body::from_stream(futures::stream::iter(chunks)).into_response();
                    response
                        .headers_mut()
                        .insert(header::CONTENT_TYPE, "image/png".parse().unwrap());
                    response
                }),
            )
            .route(
                "/page.html",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "text/html")],
                        "<h1>not an image</h1>",
                    )
                }),
            )
            .route(
                "/fake.png",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "image/png")],
                        "<script>alert(1)</script>",
                    )
                }),
            )
            .route(
                "/logo.svg",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "image/svg+xml")],
                        "<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>",
                    )
                }),
            )
            .route(
                "/slow.png",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    ([(header::CONTENT_TYPE, "image/png")], PNG)
                }),
            )
            .route(
                "/redirect-private",
                get(|| async {
                    Response::builder()
                        .status(StatusCode::FOUND)
                        .header(header::LOCATION, "http://169.254.169.254/latest/meta-data/")
                        .body(Body::empty())
                        .unwrap()
                }),
            )
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    next.run(request)
                },
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { address, hits }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// An app whose image proxy may fetch from 127.0.0.1, with a small size limit and timeout.
pub async fn app_allowing_loopback() -> TestApp {
    TestApp::builder()
        .settings(|s: &mut PublishingSettings| {
            s.image_proxy_allow_hosts = "127.0.0.1".into();
            s.image_proxy_max_bytes = LIMIT;
            s.image_proxy_timeout = Duration::from_secs(1);
        })
        .spawn()
        .await
}

/// The proxy's URL of `url` on `app`.
fn proxied(app: &TestApp, url: &str) -> String {
    ImageSigner::from_state(&app.state).url(url)
}

/// The `src` of every image of `html`.
fn image_sources(html: &str) -> Vec<String> {
    html.split("<img ")
        .skip(1)
        .filter_map(|tag| {
            let start = tag.find("src=\"")? + 5;
            let len = tag[start..].find('"')?;
            Some(tag[start..start + len].replace("&amp;", "&"))
        })
        .collect()
}

#[tokio::test]
async fn a_posts_external_image_is_served_through_the_proxy_and_kept() {
    let images = ImageServer::start().await;
    let app = app_allowing_loopback().await;
    let ada = app.user("ada").await;
    let external = images.url("/pic.png");
    let slug = ada
        .write(
            "With a picture",
            &format!("Look: ![a dot]({external})"),
            true,
        )
        .await;

    let page = app
        .get(&format!("/posts/{slug}"))
        .await
        .text()
        .await
        .unwrap();
    let sources = image_sources(&page);
    assert_eq!(sources.len(), 1, "{page}");
    let src = &sources[0];
    assert!(src.starts_with("/img/"), "the image is not proxied: {src}");
    assert!(
        !page.contains(&external),
        "the page names the other site: {page}"
    );

    for _ in 0..2 {
        let response = app.get(src).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        assert_eq!(headers[header::CONTENT_TYPE], "image/png");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let cache = headers[header::CACHE_CONTROL].to_str().unwrap();
        assert!(cache.contains("max-age=2592000"), "{cache}");
        assert_eq!(response.bytes().await.unwrap().as_ref(), PNG);
    }
    // The second answer came from the cache.
    assert_eq!(images.hits(), 1);
}

#[tokio::test]
async fn loopback_and_private_images_are_refused_without_the_allow_list() {
    let images = ImageServer::start().await;
    let app = TestApp::spawn().await;
    let port = images.address.port();
    for url in [
        images.url("/pic.png"),
        // A name that resolves to loopback: refused on the address the resolver found.
        format!("http://localhost:{port}/pic.png"),
        format!("http://[::1]:{port}/pic.png"),
        format!("http://2130706433:{port}/pic.png"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/a.png".to_owned(),
    ] {
        let response = app.get(&proxied(&app, &url)).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{url}");
        let text = response.text().await.unwrap();
        assert!(text.contains("private or local network"), "{url}: {text}");
        assert!(
            !text.contains(&url),
            "the refusal names the address: {text}"
        );
    }
    assert_eq!(
        images.hits(),
        0,
        "the proxy connected to the loopback server"
    );

    // Allowed hosts are allowed by name: a redirect from one to a private address is not.
    let app = app_allowing_loopback().await;
    let response = app
        .get(&proxied(&app, &images.url("/redirect-private")))
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(images.hits(), 1);
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let images = ImageServer::start().await;
    let app = app_allowing_loopback().await;
    let good = proxied(&app, &images.url("/pic.png"));
    let (signature, encoded) = good.trim_start_matches("/img/").split_once('/').unwrap();
    let other = proxied(&app, &images.url("/big.png"));
    let other_encoded = other.rsplit('/').next().unwrap();
    let forged = ImageSigner::new(&axum_extra::extract::cookie::Key::from(&[9u8; 64]))
        .url(&images.url("/pic.png"));
    for bad in [
        format!("/img/{signature}/{other_encoded}"),
        format!("/img/AAAAAAAAAAAAAAAAAAAAAA/{encoded}"),
        format!("/img/{}/{encoded}", &signature[..10]),
        format!("/img/not-base64!/{encoded}"),
        forged,
    ] {
        let response = app.get(&bad).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{bad}");
    }
    assert_eq!(images.hits(), 0);
    assert_eq!(app.get(&good).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn large_slow_and_non_image_answers_are_refused() {
    let images = ImageServer::start().await;
    let app = app_allowing_loopback().await;
    for (path, status, says) in [
        (
            "/big.png",
            StatusCode::UNPROCESSABLE_ENTITY,
            "larger than 262144 bytes",
        ),
        (
            "/big-stream.png",
            StatusCode::UNPROCESSABLE_ENTITY,
            "larger than 262144 bytes",
        ),
        (
            "/page.html",
            StatusCode::UNPROCESSABLE_ENTITY,
            "not an image (it is text/html)",
        ),
        (
            "/fake.png",
            StatusCode::UNPROCESSABLE_ENTITY,
            "not by its bytes",
        ),
        ("/logo.svg", StatusCode::UNPROCESSABLE_ENTITY, "SVG"),
        (
            "/slow.png",
            StatusCode::GATEWAY_TIMEOUT,
            "did not answer within 1 s",
        ),
        ("/missing.png", StatusCode::BAD_GATEWAY, "answered 404"),
    ] {
        // As the editor asks: the reason as JSON.
        let response = app
            .client
            .get(app.url(&proxied(&app, &images.url(path))))
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(
            response.headers()[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff"
        );
        let error: serde_json::Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{path}: {error}");
    }
    // As a browser opens it: the error page, saying the same.
    let page = app.get(&proxied(&app, &images.url("/logo.svg"))).await;
    assert_eq!(page.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("SVG images are not shown")
    );
}
