//! The page cache: Django's `cache_page`, `never_cache` and the fragment cache, plus tags.
//!
//! `route.layer(cache_page(&cache, Duration::from_secs(60)).tag("posts"))` caches the
//! responses of a route in the cache's two tiers:
//!
//! * only `GET`/`HEAD` answers `200` with a body of known length, that set no cookie, are not
//!   `private`/`no-store`/`no-cache` and do not `Vary: *`;
//! * the key is the method-independent full URL (host included) plus the values of the request
//!   headers the response names in `Vary` (learned from the first response, as Django does), so
//!   `Vary: Accept-Language` keeps languages apart;
//! * responses get `Cache-Control: max-age`, `Expires`, an `ETag` (a hash of the body, unless
//!   the handler set one) and `X-Cache: HIT|MISS`; hits also get `Age`. A request whose
//!   `If-None-Match` matches is answered `304` without a body;
//! * every page stored through a layer with `.tag("posts")` is dropped, on every instance, by
//!   `cache.invalidate_tag("posts")` — what Django's page cache cannot do. A handler can tag
//!   one response further with the [`TAGS`] header (`x-cache-tags: post-42, author-7`, removed
//!   before the response leaves), so that editing one post drops exactly the pages showing it;
//! * `.bypass(predicate)` serves the requests it selects uncached, neither read nor stored —
//!   for instance signed-in visitors, whose pages show their own name;
//! * the store fails closed: whatever renders something of one visitor's own (who is signed
//!   in, a flash message, a CSRF token) marks the request [`Personal`], and a marked response
//!   is never stored and leaves marked `Cache-Control: private`, whatever the `bypass` said;
//! * a query string is part of the key only for the parameters the route declares with
//!   `.query(&["page"])`, each at most once and in that sorted order; any other query string is
//!   served uncached, so that inventing query strings cannot fill the cache.
//!
//! * a page is kept for its `s-maxage`, else its `max-age` (at most a year), else the layer's
//!   TTL; a zero or malformed one is not stored ([`super::headers`] writes them);
//! * a stored page names its tags in `Surrogate-Key` (space-separated) and `Cache-Tag`
//!   (comma-separated), so that a CDN in front can drop it by tag too, as
//!   `HEARTH_CACHE_PURGE_URL` asks it to on every `invalidate_tag`;
//! * [`CachePage::site_wide`] makes a layer the site-wide cache (`HEARTH_SITE_CACHE_TTL`,
//!   Django's `UpdateCacheMiddleware`/`FetchFromCacheMiddleware`) around the pages router: the
//!   same rules, but it leaves every route with a `cache_page` of its own to that layer.
//!
//! * a request the layer will store the answer of is marked [`Filling`]: it is rendered from
//!   the primary, never from a read replica that may not have replayed the write behind the
//!   latest purge; and a response rendered from a replica is marked [`Personal`], so never stored.
//!
//! [`never_cache`] marks a response as never to be cached, here or by browsers and proxies.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, HttpBody},
    extract::Request,
    http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header},
    middleware::Next,
    response::Response,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tower::{Layer, Service};

use super::{
    Cache, CacheError, Timeout,
    coding::{self, Coding},
    headers::{self as control, directives},
};

/// Largest body the page cache stores.
const MAX_BODY: u64 = 8 << 20;

/// Headers that describe one connection or one response, never stored.
const NOT_STORED: [HeaderName; 5] = [
    header::SET_COOKIE,
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::AGE,
    header::DATE,
];

/// A response header listing more tags for the page being stored, comma-separated.
pub const TAGS: HeaderName = HeaderName::from_static("x-cache-tags");

/// The longest a page is kept, whatever its `max-age`.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The mark of a response a `cache_page` layer answered (from the cache or not), so that the
/// site-wide layer around it neither stores it again nor without its tags.
#[derive(Clone, Copy)]
struct Handled;

/// Caches a route's responses for `ttl`. See the module documentation.
pub fn cache_page(cache: &Cache, ttl: Duration) -> CachePage {
    CachePage {
        config: Arc::new(PageConfig {
            cache: cache.clone(),
            ttl,
            tags: Vec::new(),
            bypass: None,
            query: Vec::new(),
            site: false,
        }),
    }
}

/// The mark of a request whose response shows something of one visitor's own: who is signed
/// in, their flash message, their CSRF token. Whatever renders such a thing marks the request
/// ([`Personal::of`] then [`Personal::mark`]): the platform's session lookup, flash middleware
/// and page layout do. The page cache never stores a marked response, so a page is shared
/// only when the code that rendered it says it showed nothing personal, rather than when the
/// request looked anonymous (a guess a crafted cookie header can fool).
#[derive(Debug, Clone, Default)]
pub struct Personal(Arc<AtomicBool>);

impl Personal {
    /// The mark of the request with these extensions (created on first use, then shared by
    /// every layer and extractor of the request).
    pub fn of(extensions: &mut Extensions) -> Self {
        extensions.get_or_insert_default::<Self>().clone()
    }

    /// Marks the request's response as personal.
    pub fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_marked(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The mark of a request a page cache layer missed and will store the answer of if it can:
/// what renders it must read data at least as new as the latest purge, from the primary and
/// never from a read replica that may lag (one that had not yet replayed a write would have its
/// old page stored, after the purge that write made, until the page's TTL). The web layer's
/// lag-tolerant reads go to the primary for a request so marked; a layer that serves a request
/// uncached takes the mark off.
#[derive(Debug, Clone, Copy)]
pub struct Filling;

/// The [`cache_page`] layer.
#[derive(Clone)]
pub struct CachePage {
    config: Arc<PageConfig>,
}

#[derive(Clone)]
struct PageConfig {
    cache: Cache,
    ttl: Duration,
    tags: Vec<String>,
    bypass: Option<fn(&HeaderMap) -> bool>,
    /// The query parameters that are part of the key, sorted.
    query: Vec<String>,
    /// Whether this is the site-wide layer ([`CachePage::site_wide`]).
    site: bool,
}

impl CachePage {
    /// Tags every page this layer stores, for [`Cache::invalidate_tag`].
    pub fn tag(self, tag: &str) -> Self {
        let mut config = PageConfig::clone(&self.config);
        config.tags.push(tag.to_owned());
        Self {
            config: Arc::new(config),
        }
    }

    /// Serves the requests `predicate` selects (by their headers) without the cache.
    pub fn bypass(self, predicate: fn(&HeaderMap) -> bool) -> Self {
        let mut config = PageConfig::clone(&self.config);
        config.bypass = Some(predicate);
        Self {
            config: Arc::new(config),
        }
    }

    /// Makes this layer the site-wide cache around a router: routes with a `cache_page` of
    /// their own are left to it (their answers are not stored again, and the pages such a layer
    /// stored with a `bypass` are left for it to serve or not); the others are cached here.
    pub fn site_wide(self) -> Self {
        let mut config = PageConfig::clone(&self.config);
        config.site = true;
        Self {
            config: Arc::new(config),
        }
    }

    /// Caches the URLs whose query string has only these parameters (`?page=2`), each at most
    /// once and in sorted order; requests with any other query string are served uncached.
    /// Without it, only URLs without a query string are cached. The handler should answer a
    /// non-canonical value (`page=02`) with an error or a redirect, never a `200`.
    pub fn query(self, names: &[&str]) -> Self {
        let mut config = PageConfig::clone(&self.config);
        config.query = names.iter().map(|name| (*name).to_owned()).collect();
        config.query.sort();
        config.query.dedup();
        Self {
            config: Arc::new(config),
        }
    }
}

/// Whether a URL with this query string may be cached: no query string, or one made of
/// `name=value` pairs whose names are in `allowed` (sorted), strictly increasing.
fn query_cacheable(query: Option<&str>, allowed: &[String]) -> bool {
    let Some(query) = query else {
        return true;
    };
    let mut last: Option<&str> = None;
    for pair in query.split('&') {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        if last.is_some_and(|last| name <= last)
            || allowed.binary_search_by(|a| a.as_str().cmp(name)).is_err()
        {
            return false;
        }
        last = Some(name);
    }
    true
}

/// Adds `private` to a personal response's `Cache-Control` (unless it says `private` or
/// `no-store` already), so that no cache downstream (a proxy, a CDN) shares it either.
pub fn mark_private(headers: &mut HeaderMap) {
    if ["private", "no-store"]
        .iter()
        .any(|d| coding::lowercase(headers, header::CACHE_CONTROL).contains(d))
    {
        return;
    }
    let value = match headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
    {
        Some(control) if !control.is_empty() => format!("private, {control}"),
        _ => "private".to_owned(),
    };
    set(headers, header::CACHE_CONTROL, &value);
}

impl<S> Layer<S> for CachePage {
    type Service = CachePageService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CachePageService {
            inner,
            config: self.config.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CachePageService<S> {
    inner: S,
    config: Arc<PageConfig>,
}

impl<S> Service<Request> for CachePageService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The clone that was polled ready serves this call; the fresh clone waits for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            let mut response = serve(config, inner, request).await;
            response.extensions_mut().insert(Handled);
            Ok(response)
        })
    }
}

/// A stored response.
#[derive(Serialize, Deserialize)]
struct Stored {
    headers: Vec<(String, String)>,
    /// Unix seconds, for `Age`.
    stored_at: i64,
    etag: String,
    /// Whether [`front_hit`] may serve it: stored by a layer without a `bypass`.
    #[serde(default)]
    front: bool,
    /// Stored by the site-wide layer.
    #[serde(default)]
    site: bool,
}

/// Most URLs the front door remembers; past it, it forgets them all and relearns the hot ones.
const FRONT_URLS: usize = 65_536;

/// Whether a request may be a front-door hit: an anonymous `GET`/`HEAD` (no cookie, no
/// credentials) of a URL this process has seen a front-door page for. Cheap, with no lookup, so
/// that every other request passes the front door for nothing.
pub fn front_candidate(cache: &Cache, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && !headers.contains_key(header::COOKIE)
        && !headers.contains_key(header::AUTHORIZATION)
        && cache
            .inner
            .front_urls
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&url_hash(headers, uri))
}

/// The stored page for a [`front_candidate`] from this process's in-process tier alone, or
/// `None`: what the platform serves ahead of its middleware stack ([`crate::web::layers`]), so
/// that a hit on a hot page skips the ten layers a request otherwise passes. Only pages stored by
/// a layer without a `bypass` (whose predicate only the route's own layer can apply), and never
/// a round trip: anything else is left to the route's layer.
pub async fn front_hit(
    cache: &Cache,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<Response> {
    let url = url_of(headers, uri);
    let coding = Coding::negotiate(headers);
    let page = lookup(cache, &url, headers, coding, Tier::Local)
        .await
        .ok()??;
    page.front
        .then(|| respond_hit(&page, headers, method == Method::HEAD))
}

/// Remembers that the page of the URL with this [`url_hash`] may be served by the front door.
fn note_front_url(cache: &Cache, hash: u64) {
    let known = &cache.inner.front_urls;
    if known
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .contains(&hash)
    {
        return;
    }
    let mut known = known
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if known.len() >= FRONT_URLS {
        known.clear();
    }
    known.insert(hash);
}

/// A hash of what [`url_of`] would build, without building it.
fn url_hash(headers: &HeaderMap, uri: &Uri) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    headers
        .get(header::HOST)
        .map(HeaderValue::as_bytes)
        .hash(&mut hasher);
    uri.path_and_query()
        .map_or("/", |p| p.as_str())
        .hash(&mut hasher);
    hasher.finish()
}

/// Serves a request without the cache: neither read nor stored.
async fn uncached<S>(inner: &mut S, mut request: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let personal = Personal::of(request.extensions_mut());
    // Not stored here, nor by a site-wide layer around (it leaves this route's answers alone).
    request.extensions_mut().remove::<Filling>();
    let mut response = call(inner, request).await;
    response.headers_mut().remove(TAGS);
    if personal.is_marked() {
        mark_private(response.headers_mut());
    }
    response
}

async fn serve<S>(config: Arc<PageConfig>, mut inner: S, mut request: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let method = request.method().clone();
    let bypassed = config
        .bypass
        .is_some_and(|bypass| bypass(request.headers()));
    if (method != Method::GET && method != Method::HEAD)
        || bypassed
        || !query_cacheable(request.uri().query(), &config.query)
    {
        return uncached(&mut inner, request).await;
    }
    let cache = &config.cache;
    let url = full_url(&request);
    let coding = Coding::negotiate(request.headers());
    match lookup(cache, &url, request.headers(), coding, Tier::Both).await {
        // The site-wide layer serves its own pages and those any request may get; the others
        // are their route's layer's to serve.
        Ok(Some(page)) if !config.site || page.site || page.front => {
            if page.front {
                note_front_url(cache, url_hash(request.headers(), request.uri()));
            }
            return respond_hit(&page, request.headers(), method == Method::HEAD);
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, %url, "page cache lookup failed; serving uncached"),
    }
    // Copied only on a miss: the request moves into the handler, and storing needs its headers.
    let request_headers = request.headers().clone();
    let front_url = url_hash(request.headers(), request.uri());
    let personal = Personal::of(request.extensions_mut());
    request.extensions_mut().insert(Filling);

    let mut response = call(&mut inner, request).await;
    if config.site && response.extensions().get::<Handled>().is_some() {
        return response;
    }
    let page_tags = response_tags(response.headers_mut());
    if personal.is_marked() {
        mark_private(response.headers_mut());
        return response;
    }
    let (Some(vary), Some(ttl)) = (
        cacheable(&response),
        shared_ttl(response.headers(), config.ttl),
    ) else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY as usize).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, %url, "cannot read a response body for the page cache");
            parts.status = StatusCode::INTERNAL_SERVER_ERROR;
            return Response::from_parts(parts, Body::empty());
        }
    };
    let (bytes, coded) = encode(coding, &mut parts.headers, bytes, &url).await;
    let etag = match parts
        .headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
    {
        Some(etag) => coding::etag_for(etag, coded),
        None => format!("\"{}\"", &digest(&bytes)[..32]),
    };
    let now = OffsetDateTime::now_utc();
    set(&mut parts.headers, header::ETAG, &etag);
    let max_age = client_max_age(&mut parts.headers, config.ttl);
    set(
        &mut parts.headers,
        header::EXPIRES,
        &http_date(now + max_age),
    );
    let tags: Vec<String> = config.tags.iter().chain(&page_tags).cloned().collect();
    surrogate_keys(&mut parts.headers, &tags, &url);
    let stored = Stored {
        headers: parts
            .headers
            .iter()
            .filter(|(name, _)| !NOT_STORED.contains(name))
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect(),
        stored_at: now.unix_timestamp(),
        etag: etag.clone(),
        front: config.bypass.is_none(),
        site: config.site,
    };
    if let Err(e) = store(
        cache,
        (&url, &vary),
        (&request_headers, coding),
        (&stored, &bytes),
        ttl,
        &tags,
    )
    .await
    {
        tracing::warn!(error = %e, %url, "cannot store a page in the cache");
    } else if stored.front {
        note_front_url(cache, front_url);
    }
    set(
        &mut parts.headers,
        HeaderName::from_static("x-cache"),
        "MISS",
    );
    if matches_etag(&request_headers, &etag) {
        return not_modified(parts.headers);
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    Response::from_parts(parts, body)
}

/// The body to store for a request that accepts `coding`, and the coding it is in: compressed
/// once here (off the runtime's threads: a large page takes a while at these levels), with the
/// headers to match. A compressible page varies by `Accept-Encoding` whatever this request took.
async fn encode(
    coding: Coding,
    headers: &mut HeaderMap,
    body: Bytes,
    url: &str,
) -> (Bytes, Coding) {
    if coding::compressible(headers, body.len()) {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if !coding.applies_to(headers, body.len()) {
        return (body, Coding::Identity);
    }
    let plain = body.clone();
    match tokio::task::spawn_blocking(move || coding.encode(&plain)).await {
        Ok(Ok(encoded)) => {
            set(headers, header::CONTENT_ENCODING, coding.token());
            headers.remove(header::CONTENT_LENGTH);
            (Bytes::from(encoded), coding)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, %url, coding = coding.token(), "cannot compress a page; storing it uncompressed");
            (body, Coding::Identity)
        }
        Err(e) => {
            tracing::error!(error = %e, %url, coding = coding.token(), "page compression failed; storing it uncompressed");
            (body, Coding::Identity)
        }
    }
}

async fn call<S>(inner: &mut S, request: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    match inner.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Takes the [`TAGS`] header off a response, returning its tags.
fn response_tags(headers: &mut HeaderMap) -> Vec<String> {
    let Some(value) = headers.remove(TAGS) else {
        return Vec::new();
    };
    value
        .to_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|tag| !tag.is_empty())
        .map(str::to_owned)
        .collect()
}

/// How long the page cache keeps a response: its `s-maxage`, else its `max-age` (shared caches
/// read them in that order), else the layer's `ttl`, at most [`MAX_TTL`]; `None` (not stored)
/// for a zero or malformed value.
fn shared_ttl(headers: &HeaderMap, ttl: Duration) -> Option<Duration> {
    let control = headers.get(header::CACHE_CONTROL);
    let seconds = |name: &str| {
        directives(control)
            .find(|(directive, _)| directive == name)
            .map(|(_, value)| value.parse::<u64>().ok())
    };
    match seconds("s-maxage").or_else(|| seconds("max-age")) {
        None => Some(ttl.min(MAX_TTL)),
        Some(None | Some(0)) => None,
        Some(Some(seconds)) => Some(Duration::from_secs(seconds).min(MAX_TTL)),
    }
}

/// The `max-age` browsers get (at most [`MAX_TTL`]), for `Expires`: the response's own, or
/// `ttl` added to its other directives.
fn client_max_age(headers: &mut HeaderMap, ttl: Duration) -> Duration {
    let control = headers.get(header::CACHE_CONTROL);
    let own = directives(control)
        .find(|(directive, _)| directive == "max-age")
        .and_then(|(_, value)| value.parse::<u64>().ok());
    if let Some(seconds) = own {
        return Duration::from_secs(seconds).min(MAX_TTL);
    }
    let ttl = ttl.min(MAX_TTL);
    let value = match control.and_then(|v| v.to_str().ok()) {
        Some(other) if !other.trim().is_empty() => format!("{other}, max-age={}", ttl.as_secs()),
        _ => format!("max-age={}", ttl.as_secs()),
    };
    set(headers, header::CACHE_CONTROL, &value);
    ttl
}

/// Names a stored page's tags for CDNs: `Surrogate-Key` (Fastly, Varnish) and `Cache-Tag`
/// (Cloudflare). When a tag cannot be named there (see [`control::surrogate_keys`]), neither
/// is set, with a warning.
fn surrogate_keys(headers: &mut HeaderMap, tags: &[String], url: &str) {
    if tags.is_empty() {
        return;
    }
    let Some(keys) = control::surrogate_keys(tags) else {
        tracing::warn!(%url, ?tags, "a page's tags cannot all be named in Surrogate-Key (a space, comma or control character, or 8 KiB in all): a CDN cannot purge it by tag");
        return;
    };
    set(
        headers,
        HeaderName::from_static("cache-tag"),
        &keys.replace(' ', ","),
    );
    set(headers, HeaderName::from_static("surrogate-key"), &keys);
}

/// The `Vary` header names of a cacheable response, or `None` if it must not be cached.
fn cacheable(response: &Response) -> Option<Vec<String>> {
    let headers = response.headers();
    if response.status() != StatusCode::OK || headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    let control = coding::lowercase(headers, header::CACHE_CONTROL);
    if ["private", "no-store", "no-cache"]
        .iter()
        .any(|d| control.contains(d))
    {
        return None;
    }
    // A stream (no known length) or a huge body is passed through.
    if response
        .body()
        .size_hint()
        .exact()
        .is_none_or(|n| n > MAX_BODY)
    {
        return None;
    }
    let mut vary = Vec::new();
    for value in headers.get_all(header::VARY) {
        for name in value.to_str().ok()?.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name == "*" {
                return None;
            }
            if !name.is_empty() {
                vary.push(name);
            }
        }
    }
    vary.sort();
    vary.dedup();
    Some(vary)
}

/// The key of the `Vary` header names learned for `url`.
fn vary_key(url: &str) -> String {
    format!("page.vary:{}", digest(url.as_bytes()))
}

/// The key of one stored page: the URL, the coding the request accepts and the values of the
/// request headers named by `Vary`.
fn page_key(url: &str, vary: &[String], (headers, coding): (&HeaderMap, Coding)) -> String {
    let mut hash = Sha256::new();
    hash.update(url.as_bytes());
    hash.update(b"\ncoding=");
    hash.update(coding.token().as_bytes());
    for name in vary {
        hash.update(b"\n");
        hash.update(name.as_bytes());
        hash.update(b"=");
        for value in headers.get_all(name.as_str()) {
            hash.update(value.as_bytes());
            hash.update(b",");
        }
    }
    format!("page:{}", Hex(&hash.finalize()))
}

/// Where [`lookup`] may look.
#[derive(Clone, Copy)]
enum Tier {
    /// This process's in-process tier alone (the front door: never a round trip).
    Local,
    /// The in-process tier, then the shared one.
    Both,
}

impl Tier {
    async fn get(self, cache: &Cache, full: &str) -> Result<Option<super::Local>, CacheError> {
        match self {
            Self::Local => Ok(cache.get_local(full).await),
            Self::Both => cache.get_entry(full).await,
        }
    }
}

/// The stored page for this request, parsed once per local entry.
async fn lookup(
    cache: &Cache,
    url: &str,
    headers: &HeaderMap,
    coding: Coding,
    tier: Tier,
) -> Result<Option<Arc<Page>>, CacheError> {
    let Some(vary) = tier.get(cache, &cache.full_key(&vary_key(url))?).await? else {
        return Ok(None);
    };
    let Some(vary) = vary.decoded(|bytes| serde_json::from_slice::<Vec<String>>(bytes).ok()) else {
        return Ok(None);
    };
    let key = page_key(url, &vary, (headers, coding));
    let Some(entry) = tier.get(cache, &cache.full_key(&key)?).await? else {
        return Ok(None);
    };
    Ok(entry.decoded(decode_page))
}

async fn store(
    cache: &Cache,
    (url, vary): (&str, &[String]),
    request: (&HeaderMap, Coding),
    (stored, body): (&Stored, &Bytes),
    ttl: Duration,
    tags: &[String],
) -> Result<(), CacheError> {
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let timeout = Timeout::After(ttl);
    cache
        .set_tagged(&vary_key(url), &vary, timeout, &tags)
        .await?;
    let key = page_key(url, vary, request);
    let raw = encode_page(stored, body);
    cache
        .set_raw(cache.full_key(&key)?, raw, timeout, &tags)
        .await
}

/// A stored page: 4 bytes of big-endian length, the JSON of [`Stored`], then the body as is.
fn encode_page(stored: &Stored, body: &Bytes) -> Bytes {
    let meta = serde_json::to_vec(stored).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + meta.len() + body.len());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A stored page, parsed.
struct Page {
    headers: HeaderMap,
    stored_at: i64,
    etag: String,
    body: Bytes,
    front: bool,
    site: bool,
}

fn decode_page(raw: &Bytes) -> Option<Page> {
    let len = u32::from_be_bytes(raw.get(..4)?.try_into().ok()?) as usize;
    let meta = raw.get(4..4 + len)?;
    let stored: Stored = serde_json::from_slice(meta).ok()?;
    let mut headers = HeaderMap::new();
    for (name, value) in &stored.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.append(name, value);
        }
    }
    Some(Page {
        headers,
        stored_at: stored.stored_at,
        etag: stored.etag,
        body: raw.slice(4 + len..),
        front: stored.front,
        site: stored.site,
    })
}

fn respond_hit(page: &Page, request: &HeaderMap, head: bool) -> Response {
    let mut headers = page.headers.clone();
    let age = (OffsetDateTime::now_utc().unix_timestamp() - page.stored_at).max(0);
    set(&mut headers, header::AGE, &age.to_string());
    set(&mut headers, HeaderName::from_static("x-cache"), "HIT");
    if matches_etag(request, &page.etag) {
        return not_modified(headers);
    }
    let body = if head {
        // No body, but the length a GET would get: hyper keeps a HEAD answer's explicit
        // `Content-Length` and would write 0 for the empty body otherwise.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(page.body.len()));
        Body::empty()
    } else {
        Body::from(page.body.clone())
    };
    let mut response = Response::new(body);
    *response.headers_mut() = headers;
    response
}

fn not_modified(headers: HeaderMap) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    for name in [
        header::ETAG,
        header::CACHE_CONTROL,
        header::EXPIRES,
        header::VARY,
        header::AGE,
        HeaderName::from_static("x-cache"),
    ] {
        // Every value: a page can vary by its handler's headers and by `Accept-Encoding`.
        for value in headers.get_all(&name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
}

fn matches_etag(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == etag.trim_start_matches("W/"))
}

fn full_url(request: &Request) -> String {
    url_of(request.headers(), request.uri())
}

fn url_of(headers: &HeaderMap, uri: &Uri) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{host}{path}")
}

fn digest(bytes: &[u8]) -> String {
    Hex(&Sha256::digest(bytes)).to_string()
}

/// Bytes (a SHA-256 digest) as lower-case hex digits. `hex::encode` builds its string one `char`
/// at a time; with two page keys hashed per page-cache hit that was 2 % of a W2 profile.
struct Hex<'a>(&'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for chunk in self.0.chunks(32) {
            let mut buffer = [0u8; 64];
            let digits = &mut buffer[..chunk.len() * 2];
            hex::encode_to_slice(chunk, digits).map_err(|_| std::fmt::Error)?;
            f.write_str(std::str::from_utf8(digits).map_err(|_| std::fmt::Error)?)?;
        }
        Ok(())
    }
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// An HTTP date: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(at: OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    at.format(&format).unwrap_or_default()
}

/// Middleware marking responses as never cacheable (Django's `never_cache`): by the page
/// cache, browsers and proxies. `route.layer(axum::middleware::from_fn(never_cache))`.
pub async fn never_cache(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    set(
        headers,
        header::CACHE_CONTROL,
        "max-age=0, no-cache, no-store, must-revalidate, private",
    );
    set(
        headers,
        header::EXPIRES,
        &http_date(OffsetDateTime::now_utc()),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_match_the_hex_crate() {
        for bytes in [&[][..], &[0x00, 0xff, 0x1a], &[0xab; 32], &[0x5c; 70]] {
            assert_eq!(Hex(bytes).to_string(), hex::encode(bytes));
        }
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        let at = OffsetDateTime::from_unix_timestamp(784_111_777).unwrap();
        assert_eq!(http_date(at), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn etags_match_weakly_and_by_list() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"a\", W/\"b\""),
        );
        assert!(matches_etag(&headers, "\"b\""));
        assert!(!matches_etag(&headers, "\"c\""));
    }

    #[test]
    fn only_declared_query_parameters_in_sorted_order_are_cacheable() {
        let allowed = vec!["page".to_owned(), "tag".to_owned()];
        for good in [None, Some("page=2"), Some("page=2&tag=rust"), Some("tag=")] {
            assert!(query_cacheable(good, &allowed), "{good:?}");
        }
        for bad in [
            Some(""),
            Some("x=1"),
            Some("page=1&page=2"),
            Some("tag=a&page=1"),
            Some("page=1&"),
            Some("page=1&x=1"),
        ] {
            assert!(!query_cacheable(bad, &allowed), "{bad:?}");
        }
        assert!(!query_cacheable(Some("page=1"), &[]));
    }

    #[test]
    fn personal_responses_become_private_once() {
        let mut headers = HeaderMap::new();
        mark_private(&mut headers);
        assert_eq!(headers[header::CACHE_CONTROL], "private");
        let mut headers = HeaderMap::new();
        set(&mut headers, header::CACHE_CONTROL, "max-age=60");
        mark_private(&mut headers);
        mark_private(&mut headers);
        assert_eq!(headers[header::CACHE_CONTROL], "private, max-age=60");
    }

    #[test]
    fn stored_pages_round_trip() {
        let stored = Stored {
            headers: vec![("content-type".into(), "text/html".into())],
            stored_at: 7,
            etag: "\"x\"".into(),
            front: true,
            site: false,
        };
        let raw = encode_page(&stored, &Bytes::from_static(b"<p>hi</p>"));
        let page = decode_page(&raw).unwrap();
        assert_eq!((page.stored_at, page.etag.as_str()), (7, "\"x\""));
        assert_eq!(&page.body[..], b"<p>hi</p>");
        assert_eq!(page.headers["content-type"], "text/html");
    }
}
