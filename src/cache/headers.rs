//! Cache headers for views, as Django's `cache_control`, `vary_on_headers`, `vary_on_cookie`
//! and `never_cache` decorators give them, for the caches between Hearth and the browser
//! (browser caches, proxies, CDNs) and for the page cache, which honours them:
//!
//! ```ignore
//! use hearth::cache::headers::{CacheControl, cache_control, vary_on_cookie};
//! let public = CacheControl::new().max_age(60).s_maxage(300).stale_while_revalidate(30);
//! route
//!     .layer(cache_control(public))
//!     .layer(vary_on_cookie())
//!     .layer(cache_page(&cache, Duration::from_secs(60)));
//! // or from a handler: (CacheControl::new().max_age(60), Html(page))
//! ```
//!
//! Put them inside `cache_page` (before it in the `.layer` chain), so that the page cache
//! stores what they say: hits are served as stored, some ahead of every route layer.
//!
//! * the page cache stores a page for its `s-maxage`, else its `max-age`, else its own TTL; a
//!   page with `private`, `no-store`, `no-cache`, a zero or malformed `max-age`/`s-maxage`
//!   or `Vary: *` is never stored ([`super::page`]);
//! * the [`cache_control`] layer never makes a response more shareable than it was: one
//!   already `no-store` (as [`never_cache`] makes it) keeps its header, and one already
//!   `private`, or [`Personal`], gets the directives with `private` and without `s-maxage`;
//! * contradictions have one meaning: `no-store` drops the freshness directives, `private`
//!   drops `s-maxage`; a `CacheControl` with no directive leaves the header alone;
//! * the `Vary` helpers add names to the response's `Vary` (once each, whatever their case),
//!   and the page cache keys the page by those request headers: `vary_on_cookie` makes one
//!   copy per `Cookie` header (personal pages are never stored whatever they vary on).

use std::{
    convert::Infallible,
    fmt::Write as _,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    extract::Request,
    http::{HeaderMap, HeaderName, HeaderValue, header},
    response::{IntoResponseParts, Response, ResponseParts},
};
use tower::{Layer, Service};

use super::page::Personal;
pub use super::page::never_cache;

/// A `Cache-Control` header, built directive by directive (seconds for every duration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    max_age: Option<u32>,
    s_maxage: Option<u32>,
    stale_while_revalidate: Option<u32>,
    stale_if_error: Option<u32>,
    private: bool,
    no_store: bool,
}

impl CacheControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// How long any cache, the browser's included, may use the response.
    pub fn max_age(mut self, seconds: u32) -> Self {
        self.max_age = Some(seconds);
        self
    }

    /// How long shared caches (proxies, CDNs, the page cache) may use it, instead of `max-age`.
    pub fn s_maxage(mut self, seconds: u32) -> Self {
        self.s_maxage = Some(seconds);
        self
    }

    /// How long past its freshness a cache may serve it while fetching a fresh one.
    pub fn stale_while_revalidate(mut self, seconds: u32) -> Self {
        self.stale_while_revalidate = Some(seconds);
        self
    }

    /// How long past its freshness a cache may serve it when the server answers an error.
    pub fn stale_if_error(mut self, seconds: u32) -> Self {
        self.stale_if_error = Some(seconds);
        self
    }

    /// For the browser's cache alone: no shared cache may keep it (drops `s-maxage`).
    pub fn private(mut self) -> Self {
        self.private = true;
        self
    }

    /// For no cache at all (drops every freshness directive).
    pub fn no_store(mut self) -> Self {
        self.no_store = true;
        self
    }

    /// The header's value, or `None` for no directive at all.
    fn value(&self) -> Option<String> {
        let mut out = String::new();
        let mut push = |directive: &str, seconds: Option<u32>| {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(directive);
            if let Some(seconds) = seconds {
                let _ = write!(out, "={seconds}");
            }
        };
        if self.private {
            push("private", None);
        }
        if self.no_store {
            push("no-store", None);
        } else {
            let shared = self.s_maxage.filter(|_| !self.private);
            for (directive, seconds) in [
                ("max-age", self.max_age),
                ("s-maxage", shared),
                ("stale-while-revalidate", self.stale_while_revalidate),
                ("stale-if-error", self.stale_if_error),
            ] {
                if seconds.is_some() {
                    push(directive, seconds);
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// Writes the header, never loosening what `headers` already say (module documentation).
    fn apply(&self, headers: &mut HeaderMap, personal: bool) {
        let current = headers.get(header::CACHE_CONTROL);
        if has_directive(current, "no-store") {
            return;
        }
        let control = if personal || has_directive(current, "private") {
            self.clone().private()
        } else {
            self.clone()
        };
        if let Some(value) = control.value().and_then(|v| HeaderValue::try_from(v).ok()) {
            headers.insert(header::CACHE_CONTROL, value);
        }
    }
}

/// A handler's `CacheControl` in its response: `(CacheControl::new().max_age(60), page)`. The
/// handler knows whether it rendered anything personal; the [`cache_control`] layer checks.
impl IntoResponseParts for CacheControl {
    type Error = Infallible;

    fn into_response_parts(self, mut parts: ResponseParts) -> Result<ResponseParts, Infallible> {
        self.apply(parts.headers_mut(), false);
        Ok(parts)
    }
}

/// The directives of a `Cache-Control` value: lower-case names, values without quotes.
pub(super) fn directives(value: Option<&HeaderValue>) -> impl Iterator<Item = (String, &str)> {
    value
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(',')
        .map(|directive| {
            let (name, value) = directive.split_once('=').unwrap_or((directive, ""));
            (
                name.trim().to_ascii_lowercase(),
                value.trim().trim_matches('"'),
            )
        })
        .filter(|(name, _)| !name.is_empty())
}

pub(super) fn has_directive(value: Option<&HeaderValue>, name: &str) -> bool {
    directives(value).any(|(n, _)| n == name)
}

/// The tags as a `Surrogate-Key` value (space-separated), or `None` when there are none or one
/// cannot be named there (a space, comma or control character) or they pass 8 KiB together,
/// CDNs' limit on the header.
pub(super) fn surrogate_keys(tags: &[impl AsRef<str>]) -> Option<String> {
    let usable =
        |tag: &str| !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_graphic() && b != b',');
    if tags.is_empty() || !tags.iter().all(|tag| usable(tag.as_ref())) {
        return None;
    }
    let keys = tags.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" ");
    (keys.len() <= 8 << 10).then_some(keys)
}

/// Sets `Cache-Control` on a route's responses. See the module documentation.
pub fn cache_control(control: CacheControl) -> HeadersLayer {
    HeadersLayer(Arc::new(Patch::Control(control)))
}

/// Adds these request headers to the response's `Vary` (Django's `vary_on_headers`).
pub fn vary_on_headers(names: &[HeaderName]) -> HeadersLayer {
    HeadersLayer(Arc::new(Patch::Vary(names.to_vec())))
}

/// `Vary: Cookie` (Django's `vary_on_cookie`).
pub fn vary_on_cookie() -> HeadersLayer {
    vary_on_headers(&[header::COOKIE])
}

/// Adds `names` to `Vary`, once each; a `Vary: *` is left as it is (it already says all).
fn add_vary(headers: &mut HeaderMap, names: &[HeaderName]) {
    let present: Vec<String> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    if present.iter().any(|name| name == "*") {
        return;
    }
    let missing: Vec<&str> = names
        .iter()
        .map(HeaderName::as_str)
        .filter(|name| !present.iter().any(|p| p == name))
        .collect();
    if !missing.is_empty()
        && let Ok(value) = HeaderValue::try_from(missing.join(", "))
    {
        headers.append(header::VARY, value);
    }
}

enum Patch {
    Control(CacheControl),
    Vary(Vec<HeaderName>),
}

/// The layer of [`cache_control`] and the `vary_on_*` helpers.
#[derive(Clone)]
pub struct HeadersLayer(Arc<Patch>);

impl<S> Layer<S> for HeadersLayer {
    type Service = HeadersService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HeadersService {
            inner,
            patch: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct HeadersService<S> {
    inner: S,
    patch: Arc<Patch>,
}

impl<S> Service<Request> for HeadersService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let personal = Personal::of(request.extensions_mut());
        let patch = self.patch.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            match &*patch {
                Patch::Control(control) => {
                    control.apply(response.headers_mut(), personal.is_marked());
                }
                Patch::Vary(names) => add_vary(response.headers_mut(), names),
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_render_in_one_order_and_contradictions_resolve() {
        let all = CacheControl::new()
            .max_age(60)
            .s_maxage(300)
            .stale_while_revalidate(30)
            .stale_if_error(600);
        assert_eq!(
            all.value().unwrap(),
            "max-age=60, s-maxage=300, stale-while-revalidate=30, stale-if-error=600"
        );
        assert_eq!(
            all.clone().private().value().unwrap(),
            "private, max-age=60, stale-while-revalidate=30, stale-if-error=600"
        );
        assert_eq!(all.no_store().value().unwrap(), "no-store");
        assert_eq!(CacheControl::new().value(), None);
    }

    #[test]
    fn the_helper_never_loosens_a_response() {
        let public = CacheControl::new().max_age(60).s_maxage(300);
        let mut headers = HeaderMap::new();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        public.apply(&mut headers, false);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");

        let mut headers = HeaderMap::new();
        public.apply(&mut headers, true);
        assert_eq!(headers[header::CACHE_CONTROL], "private, max-age=60");
    }

    #[test]
    fn vary_names_are_added_once() {
        let mut headers = HeaderMap::new();
        headers.insert(header::VARY, HeaderValue::from_static("Cookie"));
        add_vary(&mut headers, &[header::COOKIE, header::ACCEPT_LANGUAGE]);
        let vary: Vec<_> = headers.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Cookie", "accept-language"]);
    }

    #[test]
    fn surrogate_keys_refuse_what_a_cdn_would_split() {
        assert_eq!(
            surrogate_keys(&["posts", "post-42"]).as_deref(),
            Some("posts post-42")
        );
        assert_eq!(surrogate_keys(&["a tag"]), None);
        assert_eq!(surrogate_keys(&["a,b"]), None);
        let none: [&str; 0] = [];
        assert_eq!(surrogate_keys(&none), None);
        assert_eq!(surrogate_keys(&["x".repeat(9000)]), None);
    }
}
