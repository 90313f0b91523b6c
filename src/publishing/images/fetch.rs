//! Fetching one image for the proxy, so that a signed URL cannot turn the server against the
//! network it runs in, nor make it read without end:
//!
//! * only `http` and `https`, at most three redirects, each checked like the first URL;
//! * never a private, loopback, link-local, unique-local, unspecified, multicast or otherwise
//!   special address, unless the URL's host is in `HEARTH_IMAGE_PROXY_ALLOW_HOSTS`. The check is
//!   made on the addresses the client connects to: the client's resolver ([`Guard`]) drops the
//!   refused ones from what DNS answers, so a name that answers a public address to a first
//!   lookup and a private one to the next (DNS rebinding) still never reaches the private one.
//!   A host written as an address skips the resolver, so it is checked before the request and
//!   on every redirect. System proxies are ignored (a proxy would resolve the name itself);
//! * a total time limit, and at most `HEARTH_IMAGE_PROXY_MAX_BYTES` read (by `Content-Length`
//!   before the body, by counting while reading it);
//! * an image content type (SVG refused: it can carry script), and bytes that are one
//!   ([`sniff`]): the type served is the one the bytes show.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use reqwest::{
    dns::{Addrs, Name, Resolve, Resolving},
    header,
    redirect::Policy,
};
use url::{Host, Url};

/// At most this many redirects are followed.
const MAX_REDIRECTS: usize = 3;

/// Why an image cannot be shown: said to the author in the editor's preview.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Refusal {
    #[error("only http and https images can be shown")]
    Scheme,
    #[error("the image's address is on a private or local network")]
    PrivateAddress,
    #[error("the image's host name does not resolve")]
    Unresolved,
    #[error("the image's server did not answer within {0} s")]
    Timeout(u64),
    #[error("the image's server cannot be reached")]
    Unreachable,
    #[error("the image's server answered {0}")]
    Status(u16),
    #[error("the image is larger than {0} bytes")]
    TooLarge(usize),
    #[error("SVG images are not shown (they can carry script)")]
    Svg,
    #[error("the address is not an image (it is {0})")]
    NotAnImage(String),
}

impl Refusal {
    /// The proxy's status for it: the request is fine, the image is what cannot be had.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Unreachable | Self::Unresolved | Self::Status(_) => StatusCode::BAD_GATEWAY,
            Self::Scheme | Self::PrivateAddress => StatusCode::FORBIDDEN,
            Self::TooLarge(_) | Self::Svg | Self::NotAnImage(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// Which hosts may be fetched although they are on a private network.
#[derive(Debug, Clone, Default)]
pub struct Allowed(Arc<Vec<String>>);

impl Allowed {
    /// From `HEARTH_IMAGE_PROXY_ALLOW_HOSTS`: host names or addresses, comma-separated, as they
    /// are written in URLs (an IPv6 address without brackets).
    pub fn parse(list: &str) -> Self {
        Self(Arc::new(
            list.split(',')
                .map(|h| h.trim().trim_start_matches('[').trim_end_matches(']'))
                .filter(|h| !h.is_empty())
                .map(str::to_ascii_lowercase)
                .collect(),
        ))
    }

    fn contains(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.0.iter().any(|h| h.eq_ignore_ascii_case(host))
    }
}

/// Whether `ip` is an address anyone on the internet could reach: not private, loopback,
/// link-local, unique-local, unspecified, multicast, shared (CGNAT), documentation, benchmark
/// or reserved, nor one of these inside an IPv6 form (mapped, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address that may be private.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        return is_public_v4(embedded(segments[1], segments[2]));
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || segments[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated), ::, ::1
}

/// Checks a URL before it is requested (the first one and every redirect): its scheme, and
/// its host when it is written as an address (the resolver never sees those).
fn check_url(url: &Url, allowed: &Allowed) -> Result<(), Refusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal::Scheme);
    }
    let ip = match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(Host::Domain(_)) => return Ok(()),
        None => return Err(Refusal::Scheme),
    };
    if is_public(ip) || allowed.contains(&ip.to_string()) {
        Ok(())
    } else {
        Err(Refusal::PrivateAddress)
    }
}

/// The client's resolver: the system's, with the refused addresses taken out of its answer.
struct Guard {
    allowed: Allowed,
}

/// The error a lookup fails with when only refused addresses were found; [`Fetcher::fetch`]
/// finds it in the request error's sources.
#[derive(Debug, thiserror::Error)]
#[error("every address of the host is on a private or local network")]
struct OnlyPrivate;

/// The error a lookup fails with when the name does not resolve.
#[derive(Debug, thiserror::Error)]
#[error("the host name does not resolve")]
struct Unresolvable;

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.allowed.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|_| Box::new(Unresolvable) as Box<dyn std::error::Error + Send + Sync>)?
                .collect();
            if allowed.contains(&host) {
                return Ok(Box::new(found.into_iter()) as Addrs);
            }
            let public: Vec<SocketAddr> = found.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(OnlyPrivate) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// An image as fetched: its type (from its bytes) and its bytes.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub content_type: &'static str,
    pub bytes: Bytes,
}

/// The proxy's HTTP client and limits.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    allowed: Allowed,
    max_bytes: usize,
    timeout: Duration,
}

impl Fetcher {
    pub fn new(allowed: Allowed, max_bytes: usize, timeout: Duration) -> anyhow::Result<Self> {
        let redirects = allowed.clone();
        let client = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(Guard {
                allowed: allowed.clone(),
            }))
            .redirect(Policy::custom(move |attempt| {
                if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if let Err(refusal) = check_url(attempt.url(), &redirects) {
                    attempt.error(refusal)
                } else {
                    attempt.follow()
                }
            }))
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("Hearth image proxy/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            allowed,
            max_bytes,
            timeout,
        })
    }

    /// Fetches `url` within the limits, or says why not.
    pub async fn fetch(&self, url: &str) -> Result<Fetched, Refusal> {
        let url = Url::parse(url).map_err(|_| Refusal::Scheme)?;
        check_url(&url, &self.allowed)?;
        let mut response = self
            .client
            .get(url)
            .header(
                header::ACCEPT,
                "image/avif,image/webp,image/png,image/jpeg,image/gif,image/*;q=0.8",
            )
            .send()
            .await
            .map_err(|e| self.refusal(&e))?;
        if !response.status().is_success() {
            return Err(Refusal::Status(response.status().as_u16()));
        }
        let declared = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if declared.starts_with("image/svg") {
            return Err(Refusal::Svg);
        }
        if !declared.starts_with("image/") {
            return Err(Refusal::NotAnImage(if declared.is_empty() {
                "of no stated type".to_owned()
            } else {
                declared
            }));
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(Refusal::TooLarge(self.max_bytes));
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.refusal(&e))? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(Refusal::TooLarge(self.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        let bytes = body.freeze();
        match sniff(&bytes) {
            Some(content_type) => Ok(Fetched {
                content_type,
                bytes,
            }),
            None => Err(Refusal::NotAnImage(format!(
                "{declared} by its header, but not by its bytes"
            ))),
        }
    }

    /// What a failed request means for the author.
    fn refusal(&self, e: &reqwest::Error) -> Refusal {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(cause) = source {
            if cause.is::<OnlyPrivate>() {
                return Refusal::PrivateAddress;
            }
            if cause.is::<Unresolvable>() {
                return Refusal::Unresolved;
            }
            if let Some(refusal) = cause.downcast_ref::<Refusal>() {
                return refusal.clone();
            }
            source = cause.source();
        }
        if e.is_timeout() {
            Refusal::Timeout(self.timeout.as_secs().max(1))
        } else {
            Refusal::Unreachable
        }
    }
}

/// The image type `bytes` start with, among those browsers show: PNG, JPEG, GIF, WebP, AVIF,
/// ICO and BMP. SVG is text, and is never one.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if starts(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if starts(b"\xff\xd8\xff") {
        Some("image/jpeg")
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else if bytes.len() >= 12
        && &bytes[4..8] == b"ftyp"
        && matches!(&bytes[8..12], b"avif" | b"avis")
    {
        Some("image/avif")
    } else if starts(b"\x00\x00\x01\x00") {
        Some("image/x-icon")
    } else if starts(b"BM") && bytes.len() > 14 {
        Some("image/bmp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
        ] {
            assert!(!is_public(refused.parse().unwrap()), "{refused}");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_with_private_address_hosts_are_refused_unless_allowed() {
        let none = Allowed::default();
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            check_url(&url("http://127.0.0.1:8080/a.png"), &none),
            Err(Refusal::PrivateAddress)
        );
        assert_eq!(
            check_url(&url("http://[::1]/a.png"), &none),
            Err(Refusal::PrivateAddress)
        );
        // The URL parser reads these spellings as addresses too.
        assert_eq!(
            check_url(&url("http://2130706433/a.png"), &none),
            Err(Refusal::PrivateAddress)
        );
        assert_eq!(
            check_url(&url("http://0x7f.1/a.png"), &none),
            Err(Refusal::PrivateAddress)
        );
        assert_eq!(
            check_url(&url("ftp://example.com/a.png"), &none),
            Err(Refusal::Scheme)
        );
        assert_eq!(check_url(&url("https://example.com/a.png"), &none), Ok(()));
        let allowed = Allowed::parse(" 127.0.0.1 , [::1]");
        assert_eq!(
            check_url(&url("http://127.0.0.1:8080/a.png"), &allowed),
            Ok(())
        );
        assert_eq!(check_url(&url("http://[::1]/a.png"), &allowed), Ok(()));
    }

    #[test]
    fn sniffing_knows_images_and_nothing_else() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0"), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a..."), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"\0\0\0\x1cftypavif"), Some("image/avif"));
        assert_eq!(sniff(b"<svg xmlns=\"http://www.w3.org/2000/svg\">"), None);
        assert_eq!(sniff(b"<html><script>alert(1)</script>"), None);
        assert_eq!(sniff(b""), None);
    }
}
