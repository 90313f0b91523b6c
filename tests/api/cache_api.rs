//! The rest of the cache API (#34): `incr_version`/`decr_version`, key prefixes, the fragment
//! cache from templates (and on the front page), and binary WebSocket frames.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use askama::Template;
use axum::{Router, body::Bytes};
use hearth::{
    cache::{Cache, CacheError, Timeout},
    web::{
        testing::WsClient,
        ws::{self, Connection, Consumer, ConsumerError, close_code},
    },
};
use serde::Deserialize;
use serde_json::json;

use crate::helpers::TestApp;

/// Waits (yielding, without sleeping) until `done` holds, for at most five seconds: an
/// invalidation reaching another instance's local tier.
async fn until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let waited = tokio::time::timeout(Duration::from_secs(5), async {
        while !done().await {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what} within five seconds");
}

#[tokio::test]
async fn incr_version_moves_a_value_with_its_expiry_and_tags() {
    let app = TestApp::spawn().await;
    let v1 = &app.state.cache;
    v1.set_tagged("menu", "soup", Timeout::Never, &["menus"])
        .await
        .unwrap();

    assert_eq!(v1.incr_version("menu", 1).await.unwrap(), 2);
    let v2 = v1.with_version(2);
    assert_eq!(
        v1.get::<String>("menu").await.unwrap(),
        None,
        "gone from v1"
    );
    assert_eq!(
        v2.get::<String>("menu").await.unwrap().as_deref(),
        Some("soup")
    );

    assert_eq!(v2.decr_version("menu", 1).await.unwrap(), 1);
    assert_eq!(v2.get::<String>("menu").await.unwrap(), None);
    assert_eq!(
        v1.get::<String>("menu").await.unwrap().as_deref(),
        Some("soup")
    );
    assert_eq!(
        v1.incr_version("menu", 0).await.unwrap(),
        1,
        "delta 0 keeps it"
    );

    // It replaces what the new version held, and keeps its tags.
    v1.with_version(5)
        .set("menu", "old", Timeout::Never)
        .await
        .unwrap();
    assert_eq!(v1.incr_version("menu", 4).await.unwrap(), 5);
    let v5 = v1.with_version(5);
    assert_eq!(
        v5.get::<String>("menu").await.unwrap().as_deref(),
        Some("soup")
    );
    assert_eq!(v1.invalidate_tag("menus").await.unwrap(), 1);
    assert_eq!(v5.get::<String>("menu").await.unwrap(), None);

    // And its expiry.
    v1.set("brief", &1, Duration::from_secs(3600))
        .await
        .unwrap();
    v1.incr_version("brief", 1).await.unwrap();
    let left: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - now())::float8 FROM cache_entries WHERE key = ':2:brief'",
    )
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert!((3000.0..=3600.0).contains(&left), "{left}");
}

#[tokio::test]
async fn incr_version_of_a_missing_expired_or_overflowing_key_is_a_clear_error() {
    let app = TestApp::spawn().await;
    let cache = &app.state.cache;
    for delta in [1, 0, -1] {
        assert!(matches!(
            cache.incr_version("nothing", delta).await,
            Err(CacheError::NotFound(key)) if key == "nothing"
        ));
    }
    cache.set("brief", &1, Timeout::Never).await.unwrap();
    sqlx::query("UPDATE cache_entries SET expires_at = now() - interval '1 second'")
        .execute(&app.state.db)
        .await
        .unwrap();
    assert!(matches!(
        cache.incr_version("brief", 1).await,
        Err(CacheError::NotFound(_))
    ));
    let top = cache.with_version(i32::MAX);
    top.set("k", &1, Timeout::Never).await.unwrap();
    assert!(matches!(
        top.incr_version("k", 1).await,
        Err(CacheError::VersionOverflow(_))
    ));
    assert!(matches!(
        cache.decr_version("k", i32::MIN).await,
        Err(CacheError::VersionOverflow(_))
    ));
    assert!(matches!(
        cache.incr_version("bad key", 1).await,
        Err(CacheError::InvalidKey { .. })
    ));
}

#[tokio::test]
async fn concurrent_moves_of_one_key_move_it_once() {
    let app = TestApp::spawn().await;
    let cache = app.state.cache.clone();
    cache.set("token", "t", Timeout::Never).await.unwrap();

    let moves = (0..20).map(|_| {
        let cache = cache.clone();
        tokio::spawn(async move { cache.incr_version("token", 1).await })
    });
    let results = futures::future::join_all(moves).await;
    let moved = results
        .iter()
        .filter(|r| matches!(r.as_ref().unwrap(), Ok(2)))
        .count();
    let missing = results
        .iter()
        .filter(|r| matches!(r.as_ref().unwrap(), Err(CacheError::NotFound(_))))
        .count();
    assert_eq!((moved, missing), (1, 19), "{results:?}");
    let v2 = cache.with_version(2);
    assert_eq!(
        v2.get::<String>("token").await.unwrap().as_deref(),
        Some("t")
    );
}

#[tokio::test]
async fn incr_version_drops_the_local_copies_of_other_instances() {
    let a = TestApp::spawn().await;
    // A local copy on B lives for ten minutes unless the invalidation drops it.
    let b = TestApp::builder()
        .database(a.db_options.clone())
        .config(|c| c.cache.cache_local_ttl = Duration::from_secs(600))
        .spawn()
        .await;
    // Written by B, so that no invalidation from A is on its way to B yet.
    let on_b = b.state.cache.clone();
    on_b.set("doc", "v1", Timeout::Never).await.unwrap();
    assert_eq!(
        on_b.get::<String>("doc").await.unwrap().as_deref(),
        Some("v1")
    );
    let on_b_v2 = on_b.with_version(2);
    assert_eq!(on_b_v2.get::<String>("doc").await.unwrap(), None);

    a.state.cache.incr_version("doc", 1).await.unwrap();

    until("B drops its copy of version 1", || async {
        on_b.get::<String>("doc").await.unwrap().is_none()
    })
    .await;
    assert_eq!(
        on_b_v2.get::<String>("doc").await.unwrap().as_deref(),
        Some("v1"),
        "B sees version 2 (its local tier held no copy of it, the shared tier has it)"
    );
}

/// A second instance on `of`'s database whose keys carry `prefix`.
async fn with_prefix(of: &TestApp, prefix: &str) -> TestApp {
    let prefix = prefix.to_owned();
    TestApp::builder()
        .database(of.db_options.clone())
        .config(move |c| {
            c.cache.cache_prefix = prefix;
            c.cache.cache_local_ttl = Duration::from_secs(600);
        })
        .spawn()
        .await
}

#[tokio::test]
async fn caches_with_different_prefixes_on_one_database_keep_apart() {
    let first = TestApp::spawn().await;
    let a = with_prefix(&first, "site-a").await;
    let b = with_prefix(&first, "site-b").await;
    let (a, b): (&Cache, &Cache) = (&a.state.cache, &b.state.cache);

    a.set("home", "A", Timeout::Never).await.unwrap();
    b.set("home", "B", Timeout::Never).await.unwrap();
    assert_eq!(a.get::<String>("home").await.unwrap().as_deref(), Some("A"));
    assert_eq!(b.get::<String>("home").await.unwrap().as_deref(), Some("B"));
    a.set("only-a", &1, Timeout::Never).await.unwrap();
    assert!(!b.has_key("only-a").await.unwrap());
    assert!(
        !b.delete("only-a").await.unwrap(),
        "B cannot delete A's key"
    );
    assert_eq!(b.incr("only-a", 1).await.ok(), None);
    assert!(a.has_key("only-a").await.unwrap());

    // `clear_prefix` takes a stored key's beginning, prefix included.
    assert_eq!(a.clear_prefix("site-a:").await.unwrap(), 2);
    assert_eq!(a.get::<String>("home").await.unwrap(), None);
    assert_eq!(b.get::<String>("home").await.unwrap().as_deref(), Some("B"));

    // `clear` empties the whole table, every prefix's keys (as Django's `clear` does).
    a.set("home", "A", Timeout::Never).await.unwrap();
    assert_eq!(a.clear().await.unwrap(), 2);
    until("B drops its local copy after a clear elsewhere", || async {
        b.get::<String>("home").await.unwrap().is_none()
    })
    .await;
}

#[derive(Template)]
#[template(source = "<aside>{{ name }}</aside>", ext = "html")]
struct Aside {
    name: String,
}

#[derive(Template)]
#[template(source = "<main>{{ aside }}</main>", ext = "html")]
struct Parent {
    aside: hearth::cache::fragment::Fragment,
}

#[tokio::test]
async fn fragments_render_once_per_name_and_vary_values_and_embed_unescaped_once() {
    let app = TestApp::spawn().await;
    let cache = &app.state.cache;
    let renders = Arc::new(AtomicUsize::new(0));
    let fragment = |name: &'static str, vary: &'static [&'static str], shown: &'static str| {
        let renders = renders.clone();
        let mut spec = cache.fragment(name, Duration::from_secs(60));
        for v in vary {
            spec = spec.vary_on(v);
        }
        spec.render(move || async move {
            renders.fetch_add(1, Ordering::SeqCst);
            Ok(Aside { name: shown.into() })
        })
    };

    let one = fragment("sidebar", &["ada"], "<ada>").await.unwrap();
    let again = fragment("sidebar", &["ada"], "x").await.unwrap();
    let other = fragment("sidebar", &["bob"], "bob").await.unwrap();
    let split = fragment("sidebar", &["ad", "a"], "split").await.unwrap();
    let renamed = fragment("footer", &["ada"], "footer").await.unwrap();
    assert_eq!(one, again);
    assert_eq!(one.as_str(), "<aside>&#60;ada&#62;</aside>");
    assert_eq!(other.as_str(), "<aside>bob</aside>");
    assert_eq!(
        split.as_str(),
        "<aside>split</aside>",
        "values do not run together"
    );
    assert_eq!(renamed.as_str(), "<aside>footer</aside>");
    assert_eq!(renders.load(Ordering::SeqCst), 4);

    let page = Parent { aside: one }.render().unwrap();
    assert_eq!(
        page, "<main><aside>&#60;ada&#62;</aside></main>",
        "escaped once"
    );
}

#[tokio::test]
async fn a_tag_drops_a_fragment_from_this_instances_local_tier() {
    let app = TestApp::spawn().await;
    let cache = &app.state.cache;
    let render = |shown: &'static str| {
        cache
            .fragment("tagged", Timeout::Never)
            .tags(&["people"])
            .render(move || async move { Ok(Aside { name: shown.into() }) })
    };
    assert_eq!(render("v1").await.unwrap().as_str(), "<aside>v1</aside>");
    assert_eq!(render("v2").await.unwrap().as_str(), "<aside>v1</aside>");
    assert_eq!(cache.invalidate_tag("people").await.unwrap(), 1);
    assert_eq!(render("v2").await.unwrap().as_str(), "<aside>v2</aside>");
}

#[tokio::test]
async fn the_front_page_keeps_its_latest_posts_until_publishing_drops_them() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    ada.write("First light", "Hello.", true).await;
    let page = app.get("/").await.text().await.unwrap();
    assert!(page.contains("First light"), "{page}");

    // A change behind the cache's back is not seen: the list is the cached fragment.
    sqlx::query("UPDATE posts SET title = 'Renamed quietly'")
        .execute(&app.state.db)
        .await
        .unwrap();
    let signed_in = ada.get("/").await.text().await.unwrap();
    assert!(signed_in.contains("First light"), "{signed_in}");

    // Publishing drops it, on every page that shows it.
    ada.write("Second light", "Again.", true).await;
    let page = app.get("/").await.text().await.unwrap();
    assert!(
        page.contains("Second light") && page.contains("Renamed quietly"),
        "{page}"
    );
    assert!(!page.contains("First light"), "{page}");
    assert!(
        !page.contains("/logout"),
        "nothing of ada's session: {page}"
    );
}

/// Answers each binary frame with its bytes reversed, and `{"type": "pong"}` to JSON (also used
/// over HTTP/2 by `ws_http2.rs`).
struct Reverser;

/// Takes JSON only.
struct TextOnly;

#[derive(Deserialize)]
struct Ping {}

impl Consumer for Reverser {
    type Params = serde_json::Value;
    type Incoming = Ping;
    type Event = serde_json::Value;

    async fn connect(_: &mut Connection, _: serde_json::Value) -> Result<Self, ConsumerError> {
        Ok(Self)
    }

    async fn receive(&mut self, ctx: &mut Connection, _: Ping) -> Result<(), ConsumerError> {
        ctx.send_json(&json!({"type": "pong"}));
        Ok(())
    }

    async fn receive_binary(
        &mut self,
        ctx: &mut Connection,
        bytes: Bytes,
    ) -> Result<(), ConsumerError> {
        let mut reversed = bytes.to_vec();
        reversed.reverse();
        ctx.send_binary(reversed);
        Ok(())
    }
}

impl Consumer for TextOnly {
    type Params = serde_json::Value;
    type Incoming = Ping;
    type Event = serde_json::Value;

    async fn connect(_: &mut Connection, _: serde_json::Value) -> Result<Self, ConsumerError> {
        Ok(Self)
    }

    async fn receive(&mut self, ctx: &mut Connection, _: Ping) -> Result<(), ConsumerError> {
        ctx.send_json(&json!({"type": "pong"}));
        Ok(())
    }
}

pub(crate) async fn socket_app() -> TestApp {
    TestApp::builder()
        .config(|c| c.channels.ws_max_message = 4096)
        .routes(
            Router::new()
                .route("/ws/test/reverse", ws::route::<Reverser>())
                .route("/ws/test/text", ws::route::<TextOnly>()),
        )
        .spawn()
        .await
}

#[tokio::test]
async fn binary_frames_reach_a_consumer_that_accepts_them_up_to_the_size_limit() {
    let app = socket_app().await;
    let mut socket = WsClient::connect(app.ws_url("/ws/test/reverse"))
        .await
        .unwrap();

    socket.send_binary(vec![0, 1, 2, 0xff]).await.unwrap();
    assert_eq!(socket.recv_binary().await.unwrap(), [0xff, 2, 1, 0]);
    let full: Vec<u8> = (0..4096).map(|i| (i % 251) as u8).collect();
    socket.send_binary(full.clone()).await.unwrap();
    let back = socket.recv_binary().await.unwrap();
    assert!(
        back.iter().eq(full.iter().rev()),
        "4096 bytes arrive intact"
    );
    socket.send_json(&json!({})).await.unwrap();
    assert_eq!(socket.recv_json().await.unwrap()["type"], "pong");

    socket.send_binary(vec![7; 4097]).await.unwrap();
    let (code, _) = socket.expect_close().await.unwrap();
    assert_eq!(code, close_code::TOO_BIG);
}

#[tokio::test]
async fn text_only_consumers_refuse_binary_frames_and_keep_the_socket() {
    let app = socket_app().await;
    let mut socket = WsClient::connect(app.ws_url("/ws/test/text"))
        .await
        .unwrap();

    socket.send_binary(vec![1, 2, 3]).await.unwrap();
    let error = socket.recv_json().await.unwrap();
    assert_eq!(error["type"], "error");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("binary frames are not supported"),
        "{error}"
    );
    socket.send_json(&json!({})).await.unwrap();
    assert_eq!(socket.recv_json().await.unwrap()["type"], "pong");
}
