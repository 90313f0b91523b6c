//! The HTTP shell every app is served through.
//!
//! * [`state`]: the one `Clone` [`AppState`] handed to handlers through axum's `State`.
//! * [`error`]: [`WebError`], and the middleware that turns every error status into an HTML
//!   page (or a JSON body under `/api/`) without ever showing internal detail.
//! * [`templates`]: the base layout context ([`Layout`]) and template rendering.
//! * [`session`], [`auth`]: server-side sessions in Postgres, users, password hashing and the
//!   "login required" / "admin required" extractors.
//! * [`csrf`], [`flash`]: the CSRF check on state-changing requests, one-shot flash messages.
//! * [`conditional`]: conditional requests (`304`, `412`) for any view.
//! * [`health`]: `/healthz` and `/readyz`; [`metrics`]: HTTP counters and `/metrics`.
//! * [`replicas`]: reads that may lag on the read replicas ([`replicas::LagTolerant`]), with
//!   read-your-writes for a client after it writes.
//! * [`ws`]: WebSocket consumers on the channel layer; [`sse`]: server-sent event streams;
//!   [`testing`]: a WebSocket test client for consumer tests.
//!
//! [`layers`] stacks the cross-cutting middleware (request ids, tracing, compression, timeouts,
//! body limits, panics) around a router.

pub mod assets;
pub mod auth;
pub mod conditional;
pub mod csrf;
pub mod error;
pub mod flash;
pub mod hashing;
pub mod health;
pub mod metrics;
pub mod replicas;
pub mod session;
pub mod sse;
pub mod state;
pub mod templates;
pub mod testing;
pub mod ws;

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    http::{HeaderName, HeaderValue, StatusCode, header},
    middleware,
    response::Response,
};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    compression::{
        CompressionLayer,
        predicate::{DefaultPredicate, Predicate},
    },
    limit::RequestBodyLimitLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};

use crate::cache::{Cache, page};

pub use error::WebError;
pub use state::AppState;
pub use templates::{Layout, render};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The Content-Security-Policy of every response. Pages load scripts and styles only from
/// `/static` (no inline script, handler or style anywhere: the browser tests fail on any
/// violation), talk only to their own origin (fetch, event streams, WebSockets: CSP 3's
/// `'self'` covers `ws:`/`wss:` to the same host), and may not be framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

/// The paths the platform itself serves, beside every app's.
pub const PLATFORM_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/static"];

/// The whole site around `pages` (every app's routes): the site-wide cache when configured,
/// CSRF and flash messages on pages, then `api` (routes for programs, without those two), the
/// platform's own routes (probes, metrics, static files, the 404 page) and the middleware of
/// [`layers`].
pub fn site(state: &AppState, pages: Router<AppState>, api: Router<AppState>) -> Router {
    let config = &state.config;
    // Where a route's own `cache_page` is, inside the CSRF and flash layers: the per-browser
    // cookies they add come after it, and the personal marks they make reach it.
    let pages = if config.cache.site_cache_ttl.is_zero() {
        pages
    } else {
        pages.layer(
            page::cache_page(&state.cache, config.cache.site_cache_ttl)
                .site_wide()
                .bypass(is_personal),
        )
    };
    let pages = pages
        .layer(middleware::from_fn_with_state(state.clone(), csrf::protect))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            flash::middleware,
        ))
        .with_state(state.clone());
    let mut routes = Router::new()
        .merge(pages)
        .merge(api.with_state(state.clone()));
    if state.replicas.is_configured() {
        routes = routes.layer(middleware::from_fn_with_state(
            state.clone(),
            replicas::remember_writes,
        ));
    }
    let router = routes
        .merge(health::routes().with_state(state.clone()))
        .route(
            "/metrics",
            axum::routing::get(metrics::endpoint).with_state(state.clone()),
        )
        .nest("/static", state.composed.assets.router())
        .fallback(error::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            error::site_error_pages,
        ))
        // The hard limit below admits an app's larger bodies (an upload); every other route
        // keeps the body limit (an inner DefaultBodyLimit wins: such a route sets its own).
        .layer(DefaultBodyLimit::max(config.http.body_limit));
    layers(
        router,
        &state.cache,
        config.http.request_timeout,
        state.composed.body_limit,
    )
}

/// Wraps `router` in the platform middleware, outermost first: the page cache's front door,
/// request id, tracing span, security headers, compression, error pages, panic catching, timeout
/// and body limit.
pub fn layers(
    router: Router,
    cache: &Cache,
    request_timeout: Duration,
    body_limit: usize,
) -> Router {
    let stack = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let request_id = request
                    .extensions()
                    .get::<RequestId>()
                    .and_then(|id| id.header_value().to_str().ok())
                    .unwrap_or_default();
                let path = loggable_path(request.uri().path());
                tracing::info_span!("request", method = %request.method(), %path, %request_id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .map_response(security_headers)
        .layer(middleware::from_fn(metrics::track))
        .layer(CompressionLayer::new().compress_when(DefaultPredicate::new().and(not_encoded)))
        .layer(middleware::from_fn(error::error_pages))
        .layer(CatchPanicLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(DefaultBodyLimit::max(body_limit));
    let cache = cache.clone();
    router
        .layer(stack)
        .layer(tower::layer::layer_fn(move |inner| PageFront {
            inner,
            cache: cache.clone(),
        }))
}

/// Serves an anonymous hit on a cached page ahead of the rest of the stack
/// ([`crate::cache::page::front_hit`]), with what the stack would have added: a request id, the
/// security headers, the HTTP counters. Measured on two cores (`wrk -t2 -c64`, the README's
/// "Cache"), a cached page cost 16.4 µs of server CPU through the whole stack and 12.3 µs here.
/// Such a hit gets no tracing span: at the default level the stack logs nothing for it either.
/// A hand-written service rather than `from_fn`: every request passes it, and all but the
/// candidates go straight on without a boxed future.
#[derive(Clone)]
struct PageFront<S> {
    inner: S,
    cache: Cache,
}

impl<S> tower::Service<Request> for PageFront<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = futures::future::Either<
        S::Future,
        Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let candidate = page::front_candidate(
            &self.cache,
            request.method(),
            request.uri(),
            request.headers(),
        );
        if !candidate {
            return futures::future::Either::Left(self.inner.call(request));
        }
        // The clone that was polled ready serves this call; the fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cache = self.cache.clone();
        futures::future::Either::Right(Box::pin(async move {
            let started = Instant::now();
            let hit =
                page::front_hit(&cache, request.method(), request.uri(), request.headers()).await;
            let Some(response) = hit else {
                return inner.call(request).await;
            };
            let mut response = security_headers(response);
            let mut id = uuid::Uuid::encode_buffer();
            let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
            if let Ok(value) = HeaderValue::from_str(id) {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            metrics::record(response.status(), started.elapsed());
            Ok(response)
        }))
    }
}

/// A request's path as the log shows it: a segment that looks like a secret (32 or more hex
/// digits, as the tokens of mailed sign-in and verification links are) is `{secret}`, so that a
/// link still unused cannot be read back from the logs.
fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    let secret =
        |segment: &str| segment.len() >= 32 && segment.bytes().all(|b| b.is_ascii_hexdigit());
    if !path.split('/').any(secret) {
        return path.into();
    }
    path.split('/')
        .map(|segment| if secret(segment) { "{secret}" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
        .into()
}

/// The compression layer's test beside its defaults: a static file's response is final as it is
/// (its precompressed copy, or a file not worth compressing; see `web::assets`).
fn not_encoded(
    _: StatusCode,
    _: axum::http::Version,
    _: &axum::http::HeaderMap,
    extensions: &axum::http::Extensions,
) -> bool {
    extensions.get::<assets::Encoded>().is_none()
}

/// Adds the security headers a handler did not set itself. One plain function rather than a
/// `SetResponseHeaderLayer` per header, which would wrap every response in five nested
/// futures for the same five lookups.
fn security_headers<B>(mut response: axum::http::Response<B>) -> axum::http::Response<B> {
    const HEADERS: [(HeaderName, &str); 5] = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    let headers = response.headers_mut();
    for (name, value) in HEADERS {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}

/// Whether a request is personal: it carries a session (its page shows who is signed in) or
/// a flash message. The page cache's `bypass` for pages shared by anonymous visitors, so that
/// they get their own page rather than the shared one. It reads cookies with the parser that
/// signs a request in (names trimmed and percent-decoded: `hearth%5Fsession` is the session);
/// what keeps a personal page out of the cache is [`crate::cache::page::Personal`], not this.
pub fn is_personal(headers: &axum::http::HeaderMap) -> bool {
    let jar = axum_extra::extract::CookieJar::from_headers(headers);
    jar.get(session::COOKIE).is_some() || jar.get(flash::COOKIE).is_some()
}

/// Where to go after a form: only same-site paths are followed, `/x` yes, `//evil.example` or
/// `https://…` no (anything else is `/`). Whitespace and control characters are refused too:
/// browsers drop a tab from a URL, so `/\t/evil.example` would become `//evil.example`.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            path.to_string()
        }
        _ => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{loggable_path, safe_next};

    #[test]
    fn secret_looking_path_segments_are_not_logged() {
        let token = "0123456789abcdef".repeat(4);
        assert_eq!(
            loggable_path(&format!("/login/link/{token}")),
            "/login/link/{secret}"
        );
        assert_eq!(loggable_path(&format!("/a/{token}/b")), "/a/{secret}/b");
        assert_eq!(loggable_path("/posts/hello-world"), "/posts/hello-world");
        assert_eq!(loggable_path("/docs/42"), "/docs/42");
    }

    #[test]
    fn only_same_site_paths_are_followed() {
        assert_eq!(safe_next(Some("/posts?page=2")), "/posts?page=2");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\t/evil.example",
            "/\\evil",
            "/ /x",
            "/\n/x",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
