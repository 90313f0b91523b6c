//! Conditional requests (RFC 9110 §13): Django's `@condition` and `ConditionalGetMiddleware`.
//!
//! * [`Conditional`] is for a view that can tell its version cheaply (a timestamp, a count)
//!   before its expensive part runs, as `@condition(etag_func, last_modified_func)` does:
//!
//!   ```ignore
//!   async fn show(conditional: Conditional, ...) -> Result<Response, WebError> {
//!       let stamp = cheap_version(...).await?;
//!       let conditional = conditional.etag(&stamp).last_modified(stamp.updated_at);
//!       if let Some(answer) = conditional.precondition() {
//!           return Ok(answer); // 304 or 412: the view's expensive part never runs
//!       }
//!       ...
//!       Ok(conditional.stamp(page.into_response()))
//!   }
//!   ```
//!
//! * [`conditional_get`] is middleware for any view: a `GET`/`HEAD` response `200` with an
//!   `ETag` or `Last-Modified` becomes a `304` for a request whose validators match, after the
//!   view ran (it saves the bytes, not the work); a response without an `ETag` gets a weak one
//!   hashed from its body.
//!
//! Both evaluate preconditions in RFC 9110's order (§13.2.2): a failed `If-Match` (strong
//! comparison; `*` matches any current version) or `If-Unmodified-Since` is a `412`; then a
//! matching `If-None-Match` (weak comparison, `*` matches) is a `304` on `GET`/`HEAD` and a `412`
//! otherwise; only without `If-None-Match` does `If-Modified-Since` give a `304`, on `GET`/`HEAD`.
//! Bad input has one behaviour each: a malformed `If-None-Match` matches nothing (and still takes
//! precedence over `If-Modified-Since`, so the answer is the full page); a malformed `If-Match`
//! matches nothing (a `412`: an unsafe request is not run on a guess); a date that is not an
//! HTTP-date, or a list of dates, is ignored.
//!
//! Personal pages: a signed-in visitor's validators are theirs alone. [`Conditional`] mixes who
//! they are and their CSRF token into the `ETag`, gives them no `Last-Modified` (a date cannot
//! tell visitors apart), and marks its answers `Cache-Control: private` with `Vary: Cookie`, so
//! that no shared cache stores a `304` it could hand to someone else. A request carrying a flash
//! message gets the full page, without validators: the message must be shown once, not
//! revalidated. [`conditional_get`] marks its answers `private` when the view marked the request
//! [`Personal`].

use std::fmt::Display;

use axum::{
    body::{Body, HttpBody},
    extract::{FromRequestParts, Request},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{AppState, WebError, auth::CurrentUser, csrf::CsrfToken, flash::Flash};
use crate::cache::page::{Personal, mark_private};

/// Largest body [`conditional_get`] hashes for an `ETag`; a larger one is passed through as is.
const MAX_HASHED: u64 = 8 << 20;

/// The request headers a precondition reads.
const PRECONDITIONS: [HeaderName; 4] = [
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
];

/// The response headers a `304` keeps (RFC 9110 §15.4.5), and the cookies a layer sets.
const KEPT_BY_304: [HeaderName; 7] = [
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::VARY,
    header::CONTENT_LOCATION,
    header::SET_COOKIE,
];

/// A view's validators and the request's preconditions. See the module documentation.
pub struct Conditional {
    method: Method,
    /// The request's precondition headers, nothing else.
    request: HeaderMap,
    /// Who the page is rendered for, when signed in: mixed into the `ETag`.
    viewer: Option<String>,
    /// The request carries a flash message: no validators, no `304`.
    flash: bool,
    personal: Personal,
    etag: Option<String>,
    last_modified: Option<OffsetDateTime>,
}

impl FromRequestParts<AppState> for Conditional {
    type Rejection = WebError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let CurrentUser(user) = CurrentUser::from_request_parts(parts, state).await?;
        let viewer = user.map(|user| {
            let token = parts.extensions.get::<CsrfToken>().map_or("", |t| &t.0);
            format!("{} {} {token}", user.id, user.is_admin)
        });
        let mut request = HeaderMap::new();
        for name in PRECONDITIONS {
            for value in parts.headers.get_all(&name) {
                request.append(name.clone(), value.clone());
            }
        }
        Ok(Self {
            method: parts.method.clone(),
            request,
            viewer,
            flash: parts
                .extensions
                .get::<Flash>()
                .is_some_and(|f| f.0.is_some()),
            personal: Personal::of(&mut parts.extensions),
            etag: None,
            last_modified: None,
        })
    }
}

impl Conditional {
    /// A strong `ETag` for this `version` of the page (anything that changes when the page
    /// does: ids, timestamps, counts), hashed so that none of it shows.
    pub fn etag(mut self, version: impl Display) -> Self {
        let mut hash = Sha256::new();
        hash.update(version.to_string());
        if let Some(viewer) = &self.viewer {
            hash.update(b"\nviewer ");
            hash.update(viewer);
        }
        self.etag = Some(format!("\"{}\"", &hex::encode(hash.finalize())[..32]));
        self
    }

    /// The time the page last changed. Not sent to a signed-in visitor (see the module doc).
    pub fn last_modified(mut self, at: OffsetDateTime) -> Self {
        if self.viewer.is_none() {
            self.last_modified = Some(at);
        }
        self
    }

    /// The `304` or `412` to answer instead of running the view, or `None` to run it.
    pub fn precondition(&self) -> Option<Response> {
        if self.flash || (self.etag.is_none() && self.last_modified.is_none()) {
            return None;
        }
        let outcome = evaluate(
            &self.method,
            &self.request,
            self.etag.as_deref(),
            self.last_modified,
        );
        match outcome {
            Outcome::Proceed => None,
            Outcome::PreconditionFailed => Some(precondition_failed()),
            Outcome::NotModified => {
                let mut headers = HeaderMap::new();
                self.add_validators(&mut headers);
                Some(not_modified(headers))
            }
        }
    }

    /// The view's response with the validators, when it is a success; a page that turned out
    /// personal for an anonymous visitor (it rendered their CSRF token) gets none.
    pub fn stamp(&self, mut response: Response) -> Response {
        let anonymous_but_personal = self.viewer.is_none() && self.personal.is_marked();
        if response.status().is_success() && !self.flash && !anonymous_but_personal {
            self.add_validators(response.headers_mut());
        }
        response
    }

    fn add_validators(&self, headers: &mut HeaderMap) {
        if let Some(etag) = self
            .etag
            .as_deref()
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            headers.entry(header::ETAG).or_insert(etag);
        }
        if let Some(at) = self.last_modified.and_then(|at| http_date(at).ok()) {
            headers.entry(header::LAST_MODIFIED).or_insert(at);
        }
        if self.viewer.is_some() {
            mark_private(headers);
            headers.append(header::VARY, HeaderValue::from_static("cookie"));
        }
    }
}

/// What the preconditions of a request say.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Proceed,
    NotModified,
    PreconditionFailed,
}

/// RFC 9110 §13.2.2's evaluation, for a resource with these validators.
fn evaluate(
    method: &Method,
    request: &HeaderMap,
    etag: Option<&str>,
    last_modified: Option<OffsetDateTime>,
) -> Outcome {
    let safe = method == Method::GET || method == Method::HEAD;
    if request.contains_key(header::IF_MATCH) {
        if !tags_match(request, header::IF_MATCH, etag, Comparison::Strong) {
            return Outcome::PreconditionFailed;
        }
    } else if let (Some(since), Some(modified)) =
        (date(request, header::IF_UNMODIFIED_SINCE), last_modified)
        && modified.unix_timestamp() > since.unix_timestamp()
    {
        return Outcome::PreconditionFailed;
    }
    if request.contains_key(header::IF_NONE_MATCH) {
        if tags_match(request, header::IF_NONE_MATCH, etag, Comparison::Weak) {
            return if safe {
                Outcome::NotModified
            } else {
                Outcome::PreconditionFailed
            };
        }
    } else if let (true, Some(since), Some(modified)) = (
        safe,
        date(request, header::IF_MODIFIED_SINCE),
        last_modified,
    ) && modified.unix_timestamp() <= since.unix_timestamp()
    {
        return Outcome::NotModified;
    }
    Outcome::Proceed
}

#[derive(Clone, Copy)]
enum Comparison {
    /// Both tags strong and equal (`If-Match`).
    Strong,
    /// Equal once `W/` is dropped (`If-None-Match`); a tag the page cache gave one content
    /// coding of the page (`"abc-br"`) matches its identity tag (`"abc"`) too.
    Weak,
}

/// Whether the `name` header's list holds a tag matching `etag` (`*` matches any current one).
/// A malformed list matches nothing.
fn tags_match(request: &HeaderMap, name: HeaderName, etag: Option<&str>, how: Comparison) -> bool {
    let Some(etag) = etag else {
        return false;
    };
    let mut values = request.get_all(name).iter();
    let Some(tags) = values.try_fold(Vec::new(), |mut tags, value| {
        tags.extend(parse_tags(value.to_str().ok()?)?);
        Some(tags)
    }) else {
        return false;
    };
    let (ours_weak, ours) = split_weak(etag);
    tags.iter().any(|&tag| {
        if tag == "*" {
            return true;
        }
        let (weak, theirs) = split_weak(tag);
        match how {
            Comparison::Strong => !weak && !ours_weak && theirs == ours,
            Comparison::Weak => theirs == ours || without_coding(theirs).as_deref() == Some(ours),
        }
    })
}

/// `W/"x"` as `(true, "\"x\"")`.
fn split_weak(tag: &str) -> (bool, &str) {
    match tag.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, tag),
    }
}

/// `"abc-br"` as `"abc"`: the tag the page cache gives the coded copy of a page tagged `"abc"`.
fn without_coding(tag: &str) -> Option<String> {
    let open = tag.strip_suffix('"')?;
    ["-br", "-gzip", "-zstd", "-deflate"]
        .iter()
        .find_map(|suffix| open.strip_suffix(suffix))
        .map(|base| format!("{base}\""))
}

/// An `If-Match`/`If-None-Match` value: `*`, or a comma-separated list of entity tags
/// (`"x"`, `W/"x"`); `None` if it is neither.
fn parse_tags(value: &str) -> Option<Vec<&str>> {
    if value.trim() == "*" {
        return Some(vec!["*"]);
    }
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let start = rest;
        let quoted = rest.strip_prefix("W/").unwrap_or(rest).strip_prefix('"')?;
        let close = quoted.find('"')?;
        // etagc: any visible character but DQUOTE, or obs-text.
        if quoted[..close].bytes().any(|b| b < 0x21 || b == 0x7f) {
            return None;
        }
        let len = start.len() - quoted.len() + close + 1;
        tags.push(&start[..len]);
        rest = &start[len..];
        if !(rest.is_empty() || rest.starts_with([' ', '\t', ','])) {
            return None;
        }
    }
    (!tags.is_empty()).then_some(tags)
}

/// The date of a single-valued `If-Modified-Since`/`If-Unmodified-Since`: `None` when absent,
/// repeated, or not an HTTP-date (RFC 9110: such a header is ignored).
fn date(request: &HeaderMap, name: HeaderName) -> Option<OffsetDateTime> {
    let mut values = request.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let at = httpdate::parse_http_date(value.to_str().ok()?).ok()?;
    Some(OffsetDateTime::from(at))
}

fn http_date(at: OffsetDateTime) -> Result<HeaderValue, axum::http::header::InvalidHeaderValue> {
    HeaderValue::from_str(&httpdate::fmt_http_date(at.into()))
}

/// A `304` with what a cache needs from `headers` (those of the `200` it stands for).
fn not_modified(headers: HeaderMap) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    let out = response.headers_mut();
    for name in KEPT_BY_304 {
        for value in headers.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    // The `200` is compressed on its way out, which adds this; an empty `304` is not.
    out.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    response
}

fn precondition_failed() -> Response {
    (
        StatusCode::PRECONDITION_FAILED,
        "The page has changed since you loaded it; reload it and try again.",
    )
        .into_response()
}

/// Django's `ConditionalGetMiddleware`: `route.layer(axum::middleware::from_fn(conditional_get))`.
/// See the module documentation.
pub async fn conditional_get(mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return next.run(request).await;
    }
    let mut preconditions = HeaderMap::new();
    for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
        for value in request.headers().get_all(&name) {
            preconditions.append(name.clone(), value.clone());
        }
    }
    let personal = Personal::of(request.extensions_mut());
    let response = next.run(request).await;
    if response.status() != StatusCode::OK {
        return response;
    }
    let mut response = with_body_etag(response).await;
    if personal.is_marked() {
        mark_private(response.headers_mut());
    }
    let headers = response.headers();
    let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok());
    let last_modified = date(headers, header::LAST_MODIFIED);
    if etag.is_none() && last_modified.is_none() {
        return response;
    }
    match evaluate(&method, &preconditions, etag, last_modified) {
        Outcome::NotModified => not_modified(response.into_parts().0.headers),
        _ => response,
    }
}

/// `response` with a weak `ETag` hashed from its body, unless it has one, may not be stored
/// (`no-store`), or has no known length or a large one.
async fn with_body_etag(response: Response) -> Response {
    let no_store = response
        .headers()
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("no-store"));
    let hashable = response
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n <= MAX_HASHED);
    if no_store || !hashable || response.headers().contains_key(header::ETAG) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_HASHED as usize).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "cannot read a response body to hash its ETag");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let etag = format!("W/\"{}\"", &hex::encode(Sha256::digest(&bytes))[..32]);
    if let Ok(value) = HeaderValue::from_str(&etag) {
        parts.headers.insert(header::ETAG, value);
    }
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(HeaderName, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(name.clone(), HeaderValue::from_static(value));
        }
        headers
    }

    const TAG: Option<&str> = Some("\"v1\"");

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(seconds).unwrap()
    }

    #[test]
    fn entity_tag_lists_parse_or_are_malformed() {
        assert_eq!(parse_tags("*"), Some(vec!["*"]));
        assert_eq!(
            parse_tags(" \"a\", W/\"b\",\"c,d\""),
            Some(vec!["\"a\"", "W/\"b\"", "\"c,d\""])
        );
        for bad in [
            "", "abc", "\"open", "W/abc", "\"a\"b", "\"a b\"", "*, \"a\"",
        ] {
            assert_eq!(parse_tags(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn if_none_match_compares_weakly_and_wins_over_if_modified_since() {
        let get = Method::GET;
        let weak = request(&[(header::IF_NONE_MATCH, "W/\"v1\"")]);
        assert_eq!(evaluate(&get, &weak, TAG, None), Outcome::NotModified);
        let coded = request(&[(header::IF_NONE_MATCH, "\"x\", \"v1-br\"")]);
        assert_eq!(evaluate(&get, &coded, TAG, None), Outcome::NotModified);
        let star = request(&[(header::IF_NONE_MATCH, "*")]);
        assert_eq!(evaluate(&get, &star, TAG, None), Outcome::NotModified);
        assert_eq!(
            evaluate(&Method::POST, &star, TAG, None),
            Outcome::PreconditionFailed
        );
        // A stale tag with a date that alone would match: the tag decides.
        let both = request(&[
            (header::IF_NONE_MATCH, "\"v0\""),
            (header::IF_MODIFIED_SINCE, "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert_eq!(evaluate(&get, &both, TAG, Some(at(0))), Outcome::Proceed);
        let malformed = request(&[
            (header::IF_NONE_MATCH, "v1"),
            (header::IF_MODIFIED_SINCE, "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert_eq!(
            evaluate(&get, &malformed, TAG, Some(at(0))),
            Outcome::Proceed
        );
    }

    #[test]
    fn if_modified_since_compares_whole_seconds_and_ignores_bad_dates() {
        let get = Method::GET;
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT; the page changed 0.5 s later.
        let changed = at(784_111_777) + time::Duration::milliseconds(500);
        for same in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            let since = request(&[(header::IF_MODIFIED_SINCE, same)]);
            assert_eq!(
                evaluate(&get, &since, None, Some(changed)),
                Outcome::NotModified
            );
        }
        let later = at(784_111_778);
        for ignored in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
            "",
        ] {
            let since = request(&[(header::IF_MODIFIED_SINCE, ignored)]);
            assert_eq!(evaluate(&get, &since, None, Some(later)), Outcome::Proceed);
        }
        let since = request(&[(header::IF_MODIFIED_SINCE, "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert_eq!(
            evaluate(&Method::POST, &since, None, Some(changed)),
            Outcome::Proceed
        );
    }

    #[test]
    fn if_match_compares_strongly_and_fails_closed() {
        let post = Method::POST;
        let same = request(&[(header::IF_MATCH, "\"v1\"")]);
        assert_eq!(evaluate(&post, &same, TAG, None), Outcome::Proceed);
        for failing in ["W/\"v1\"", "\"v0\"", "v1", "\"v1-br\""] {
            let headers = request(&[(header::IF_MATCH, failing)]);
            assert_eq!(
                evaluate(&post, &headers, TAG, None),
                Outcome::PreconditionFailed,
                "{failing}"
            );
        }
        let star = request(&[(header::IF_MATCH, "*")]);
        assert_eq!(evaluate(&post, &star, TAG, None), Outcome::Proceed);
        let unmodified = request(&[(header::IF_UNMODIFIED_SINCE, "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert_eq!(
            evaluate(&post, &unmodified, None, Some(at(784_111_778))),
            Outcome::PreconditionFailed
        );
        assert_eq!(
            evaluate(&post, &unmodified, None, Some(at(784_111_777))),
            Outcome::Proceed
        );
        let garbage = request(&[(header::IF_UNMODIFIED_SINCE, "soon")]);
        assert_eq!(
            evaluate(&post, &garbage, None, Some(at(784_111_778))),
            Outcome::Proceed
        );
    }
}
