//! The upstream services of `HEARTH_UPSTREAMS`, parsed once at start-up into a typed list.
//!
//! The syntax is `name=URL[@timeout]`, entries separated by commas:
//! `weather=http://127.0.0.1:9001/now@2s,stocks=http://host/q@500ms`. A URL that needs a comma
//! writes it `%2C`. Without `@timeout` an upstream gets [`DEFAULT_TIMEOUT`].

use std::{collections::HashSet, fmt, time::Duration};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::{
    Request, Uri,
    header::{self, HeaderValue},
};
use url::Url;

/// The timeout of an upstream whose entry names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// One upstream service: a name for the response, a URL to `GET`, how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub(super) name: String,
    pub(super) url: Url,
    pub(super) timeout: Duration,
    /// `url` as a request target, without its user and password, made once at start-up rather
    /// than on every call (#36).
    uri: Uri,
    /// Basic credentials from `url`'s user and password, if it has any.
    authorization: Option<HeaderValue>,
}

impl Upstream {
    /// 1 to 32 of `a-z`, `0-9`, `_` and `-`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Covers the whole exchange: connecting, the answer's head and its body.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A `GET` of this upstream, asking for JSON.
    pub(super) fn request(&self) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("hearth/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(authorization) = &self.authorization {
            headers.insert(header::AUTHORIZATION, authorization.clone());
        }
        request
    }

    fn new(name: String, url: Url, timeout: Duration) -> Result<Self, UrlError> {
        let mut target = url.clone();
        let authorization = basic_credentials(&mut target);
        let uri = target
            .as_str()
            .parse::<Uri>()
            .map_err(|e| UrlError::Target(e.to_string()))?;
        Ok(Self {
            name,
            url,
            timeout,
            uri,
            authorization,
        })
    }
}

/// Takes the user and password out of `url` as an `Authorization: Basic` value, as browsers
/// and reqwest send them (percent-decoded; a password alone has an empty user).
fn basic_credentials(url: &mut Url) -> Option<HeaderValue> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let credentials = format!(
        "{}:{}",
        decode(url.username()),
        url.password().map(decode).unwrap_or_default()
    );
    // Both succeed on an http(s) URL, which has a host.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    let mut value = HeaderValue::try_from(format!("Basic {encoded}")).ok()?;
    // Kept out of debug output and HTTP/2 header compression tables.
    value.set_sensitive(true);
    Some(value)
}

/// The upstream services `GET /api/aggregate` fans out to, in configuration order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstreams(Vec<Upstream>);

/// Why a `HEARTH_UPSTREAMS` value was refused. Each message names the entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamsError {
    #[error("empty entry in the upstream list (a stray comma?)")]
    EmptyEntry,
    #[error("upstream entry {0:?} is not name=URL or name=URL@timeout")]
    Entry(String),
    #[error("upstream name {0:?} is not 1 to 32 of a-z, 0-9, '_' and '-'")]
    Name(String),
    #[error("upstream {0:?} is named twice")]
    Duplicate(String),
    #[error("upstream {name:?}: {source}")]
    Url { name: String, source: UrlError },
    #[error("upstream {name:?}: timeout {value:?} is not a duration such as 500ms or 2s")]
    Timeout { name: String, value: String },
    #[error("upstream {0:?}: the timeout must be more than zero")]
    ZeroTimeout(String),
}

/// Why a string is not an `http(s)` URL.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("not a URL ({0})")]
    Parse(#[from] url::ParseError),
    #[error("the URL must start with http:// or https://")]
    Scheme,
    #[error("the URL cannot be requested ({0})")]
    Target(String),
}

/// Parses an absolute `http://` or `https://` URL (clap's parser for the W3 upstream base).
pub fn http_url(s: &str) -> Result<Url, UrlError> {
    let url = Url::parse(s.trim())?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        _ => Err(UrlError::Scheme),
    }
}

impl Upstreams {
    /// Parses `name=URL[@timeout],...`; blank means no upstreams.
    pub fn parse(spec: &str) -> Result<Self, UpstreamsError> {
        if spec.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut seen = HashSet::new();
        let mut upstreams = Vec::new();
        for entry in spec.split(',').map(str::trim) {
            if entry.is_empty() {
                return Err(UpstreamsError::EmptyEntry);
            }
            let upstream = parse_entry(entry)?;
            if !seen.insert(upstream.name.clone()) {
                return Err(UpstreamsError::Duplicate(upstream.name));
            }
            upstreams.push(upstream);
        }
        Ok(Self(upstreams))
    }

    pub fn as_slice(&self) -> &[Upstream] {
        &self.0
    }
}

fn parse_entry(entry: &str) -> Result<Upstream, UpstreamsError> {
    let (name, rest) = entry
        .split_once('=')
        .ok_or_else(|| UpstreamsError::Entry(entry.to_owned()))?;
    let name = name.trim();
    if !valid_name(name) {
        return Err(UpstreamsError::Name(name.to_owned()));
    }
    let (url, timeout) = match rest.rsplit_once('@') {
        // A URL may hold an `@` itself (`http://user@host/`), so the tail is a timeout only
        // if it looks like one: a digit first, then letters, digits and spaces (`1m 30s`).
        Some((url, tail)) if looks_like_duration(tail) => {
            let timeout =
                humantime::parse_duration(tail.trim()).map_err(|_| UpstreamsError::Timeout {
                    name: name.to_owned(),
                    value: tail.trim().to_owned(),
                })?;
            (url, timeout)
        }
        _ => (rest, DEFAULT_TIMEOUT),
    };
    if timeout.is_zero() {
        return Err(UpstreamsError::ZeroTimeout(name.to_owned()));
    }
    let url_error = |source| UpstreamsError::Url {
        name: name.to_owned(),
        source,
    };
    let url = http_url(url).map_err(url_error)?;
    Upstream::new(name.to_owned(), url, timeout).map_err(url_error)
}

fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn looks_like_duration(tail: &str) -> bool {
    let tail = tail.trim();
    tail.starts_with(|c: char| c.is_ascii_digit())
        && tail.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ')
}

/// `name=URL@timeout,...` with passwords in URLs masked: the configuration is logged.
impl fmt::Display for Upstreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|u| {
                // A host may hold a comma (`%2C` in the entry, decoded by the URL parser);
                // written back as `%2C`, the list reads the same.
                format!(
                    "{}={}@{}",
                    u.name,
                    crate::config::mask_url(u.url.as_str()).replace(',', "%2C"),
                    humantime::format_duration(u.timeout)
                )
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(spec: &str) -> String {
        Upstreams::parse(spec)
            .expect_err("the spec is refused")
            .to_string()
    }

    #[test]
    fn parses_names_urls_and_timeouts_in_order() {
        let upstreams = Upstreams::parse(
            "weather=http://127.0.0.1:9001/now@2s, stocks=https://host/q?a=1@500ms",
        )
        .unwrap();
        let [weather, stocks] = upstreams.as_slice() else {
            panic!("two upstreams: {upstreams:?}");
        };
        assert_eq!(weather.name(), "weather");
        assert_eq!(weather.url().as_str(), "http://127.0.0.1:9001/now");
        assert_eq!(weather.timeout(), Duration::from_secs(2));
        assert_eq!(stocks.name(), "stocks");
        assert_eq!(stocks.url().as_str(), "https://host/q?a=1");
        assert_eq!(stocks.timeout(), Duration::from_millis(500));
    }

    #[test]
    fn the_timeout_defaults_and_an_at_sign_in_the_url_is_kept() {
        let upstreams = Upstreams::parse(
            "a=http://127.0.0.1/x,b=http://user:pw@10.0.0.1:8080/y,c=http://u@h/z@1m 30s",
        )
        .unwrap();
        let timeouts: Vec<_> = upstreams.as_slice().iter().map(|u| u.timeout()).collect();
        assert_eq!(
            timeouts,
            [DEFAULT_TIMEOUT, DEFAULT_TIMEOUT, Duration::from_secs(90)]
        );
        assert_eq!(upstreams.as_slice()[1].url().username(), "user");
        assert_eq!(upstreams.as_slice()[2].url().host_str(), Some("h"));
    }

    #[test]
    fn blank_means_no_upstreams() {
        assert!(Upstreams::parse("").unwrap().as_slice().is_empty());
        assert!(Upstreams::parse("  ").unwrap().as_slice().is_empty());
        assert_eq!(Upstreams::default().to_string(), "none");
    }

    #[test]
    fn the_display_reads_back_when_the_host_has_a_comma() {
        let upstreams = Upstreams::parse("a=http://%2Cth").unwrap();
        assert_eq!(upstreams.to_string(), "a=http://%2Cth/@3s");
        assert_eq!(Upstreams::parse(&upstreams.to_string()).unwrap(), upstreams);
    }

    #[test]
    fn bad_specs_are_refused_with_the_entry_at_fault() {
        assert_eq!(
            error("weather"),
            r#"upstream entry "weather" is not name=URL or name=URL@timeout"#
        );
        assert_eq!(
            error("a=http://x,,b=http://y"),
            "empty entry in the upstream list (a stray comma?)"
        );
        assert_eq!(
            error("Weather=http://x"),
            r#"upstream name "Weather" is not 1 to 32 of a-z, 0-9, '_' and '-'"#
        );
        assert!(error("=http://x").starts_with(r#"upstream name "" is not"#));
        assert!(error(&format!("{}=http://x", "a".repeat(33))).contains("is not 1 to 32"));
        assert!(error("a b=http://x").contains("upstream name \"a b\""));
        assert_eq!(
            error("a=http://x,a=http://y"),
            r#"upstream "a" is named twice"#
        );
        assert_eq!(
            error("a=ftp://x/file"),
            r#"upstream "a": the URL must start with http:// or https://"#
        );
        assert_eq!(
            error("a=not a url"),
            r#"upstream "a": not a URL (relative URL without a base)"#
        );
        assert_eq!(
            error("a=http://x/now@2x"),
            r#"upstream "a": timeout "2x" is not a duration such as 500ms or 2s"#
        );
        assert_eq!(
            error("a=http://x/now@0s"),
            r#"upstream "a": the timeout must be more than zero"#
        );
    }

    #[test]
    fn credentials_in_the_url_become_basic_authorization_and_leave_the_target() {
        let upstreams =
            Upstreams::parse("a=http://ada:p%40ss@host:81/x?q=1,b=http://host/y").unwrap();
        let [a, b] = upstreams.as_slice() else {
            panic!("two upstreams: {upstreams:?}");
        };
        let request = a.request();
        assert_eq!(request.uri(), "http://host:81/x?q=1");
        // "ada:p@ss"
        assert_eq!(
            request.headers()[header::AUTHORIZATION],
            "Basic YWRhOnBAc3M="
        );
        assert!(request.headers()[header::AUTHORIZATION].is_sensitive());
        assert_eq!(request.headers()[header::ACCEPT], "application/json");
        let request = b.request();
        assert_eq!(request.uri(), "http://host/y");
        assert!(!request.headers().contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn a_url_that_cannot_be_a_request_target_is_refused() {
        assert_eq!(
            error("a=https://{{hostname}}/"),
            r#"upstream "a": the URL cannot be requested (invalid uri character)"#
        );
    }

    #[test]
    fn display_masks_passwords() {
        let upstreams = Upstreams::parse("a=http://ada:hunter2@host/x@2s").unwrap();
        let shown = upstreams.to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(shown, "a=http://ada:***@host/x@2s");
    }

    #[test]
    fn http_url_accepts_only_http_and_https() {
        assert!(http_url("http://127.0.0.1:8081").is_ok());
        assert!(http_url("https://example.com/").is_ok());
        assert!(matches!(http_url("ws://x"), Err(UrlError::Scheme)));
        assert!(matches!(http_url("8081"), Err(UrlError::Parse(_))));
    }
}
