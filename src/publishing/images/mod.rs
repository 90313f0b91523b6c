//! Images in posts, through Hearth: the page's CSP allows images from Hearth alone
//! (`img-src 'self' data:`), so a Markdown image from another site is rewritten, when the post
//! is rendered, to `/img/<signature>/<URL in base64url>` (see [`ImageSigner`]), and this proxy
//! fetches it ([`fetch`]: size-limited, timed, image types only, never from a private or local
//! address unless allowed) and keeps it in the cache for a day.
//!
//! The signature is an HMAC-SHA256 of the URL under a key derived from the server's secret key,
//! so the proxy fetches only what a rendered post names: it is no open proxy. (Rotating the
//! secret key breaks the image URLs of posts saved before; saving a post again re-signs them.)
//!
//! Answers: the image with the type its bytes show, `X-Content-Type-Options: nosniff` and a
//! month of caching; a refusal as the platform's error page with a short reason, or as JSON
//! for `Accept: application/json` (the editor's preview lists them for the author); a bad
//! signature as a 403.

pub mod fetch;

use std::{fmt, sync::Arc, time::Duration};

use axum::{
    Extension,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use axum_extra::extract::cookie::Key;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    cache::CacheError,
    web::{AppState, error::PublicMessage},
};
pub use fetch::{Allowed, Fetcher, Refusal};

/// Where the proxy answers.
pub const PREFIX: &str = "/img/";

/// Bytes of the HMAC kept in a URL: 128 bits.
const SIGNATURE_BYTES: usize = 16;

/// How long a fetched image is kept in the cache.
const KEEP: Duration = Duration::from_secs(24 * 3600);

/// How long a refusal is kept, so that a failing image is not fetched on every view.
const KEEP_REFUSAL: Duration = Duration::from_secs(60);

/// `Cache-Control` of an image: a month (a changed image at the same URL shows within one).
const IMAGE_CACHE: HeaderValue = HeaderValue::from_static("public, max-age=2592000");

/// Signs the external image URLs of rendered posts, and checks the proxy's URLs.
#[derive(Clone)]
pub struct ImageSigner {
    key: [u8; 32],
}

impl fmt::Debug for ImageSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ImageSigner(..)")
    }
}

impl ImageSigner {
    /// A key of its own, derived from the server's: a signature made for images is good for
    /// nothing else, and nothing else's for images.
    pub fn new(cookie_key: &Key) -> Self {
        Self::from_secret(cookie_key.master())
    }

    /// [`new`](Self::new) from the bytes of a secret (the fuzz harness has no cookie key).
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
        mac.update(b"hearth image proxy v1");
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    pub fn from_state(state: &AppState) -> Self {
        Self::new(&state.cookie_key)
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length")
    }

    /// The proxy's URL of the external image at `url`.
    pub fn url(&self, url: &str) -> String {
        let mut mac = self.mac();
        mac.update(url.as_bytes());
        let signature = &mac.finalize().into_bytes()[..SIGNATURE_BYTES];
        format!("{PREFIX}{}/{}", B64.encode(signature), B64.encode(url))
    }

    /// The external URL a proxy URL's two parts name, if the signature is this server's.
    pub fn verify(&self, signature: &str, encoded: &str) -> Option<String> {
        let signature = B64.decode(signature).ok()?;
        if signature.len() != SIGNATURE_BYTES {
            return None;
        }
        let url = String::from_utf8(B64.decode(encoded).ok()?).ok()?;
        let mut mac = self.mac();
        mac.update(url.as_bytes());
        // Constant time: a guessed signature learns nothing from how long a refusal took.
        mac.verify_truncated_left(&signature).ok()?;
        Some(url)
    }

    /// What an `<img src>` of a post becomes: an `http(s)` URL (or a scheme-relative `//host`
    /// one, read as `https`) goes through the proxy; anything else (a path on this site) stays.
    pub fn rewrite(&self, src: &str) -> Option<String> {
        let lower = src.trim_start().get(..8).unwrap_or("").to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            Some(self.url(src.trim()))
        } else if src.starts_with("//") {
            Some(self.url(&format!("https:{src}")))
        } else {
            None
        }
    }
}

/// The proxy: its signer and its client.
#[derive(Clone)]
pub struct ImageProxy {
    pub signer: ImageSigner,
    pub fetcher: Fetcher,
}

/// What the cache keeps for an image URL.
#[derive(Serialize, Deserialize)]
struct Stored {
    content_type: String,
    /// The image, base64 (the cache keeps JSON).
    data: String,
}

/// The cache key of `url`: its SHA-256 (a URL may be longer than a key, and holds spaces).
fn cache_key(kind: &str, url: &str) -> String {
    format!(
        "img:{kind}:{}",
        hex::encode(&Sha256::digest(url.as_bytes())[..16])
    )
}

/// `GET /img/{signature}/{url}`.
pub async fn serve(
    State(state): State<AppState>,
    Extension(proxy): Extension<Arc<ImageProxy>>,
    Path((signature, encoded)): Path<(String, String)>,
) -> Response {
    let Some(url) = proxy.signer.verify(&signature, &encoded) else {
        return refused(
            StatusCode::FORBIDDEN,
            "This image address is not signed by this site.",
        );
    };
    match image(&state, &proxy, &url).await {
        Ok(stored) => match B64.decode(&stored.data) {
            Ok(bytes) => (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_str(&stored.content_type)
                            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
                    ),
                    (header::CACHE_CONTROL, IMAGE_CACHE),
                    (
                        header::X_CONTENT_TYPE_OPTIONS,
                        HeaderValue::from_static("nosniff"),
                    ),
                    (
                        header::CONTENT_DISPOSITION,
                        HeaderValue::from_static("inline"),
                    ),
                ],
                bytes,
            )
                .into_response(),
            Err(_) => refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The kept copy of this image is damaged.",
            ),
        },
        Err(Failure::Refused(refusal)) => refused(
            refusal.status(),
            &format!("{}.", capitalised(&refusal.to_string())),
        ),
        Err(Failure::Cache(e)) => {
            tracing::warn!(error = %e, "the image proxy cannot use the cache");
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "Images cannot be shown right now; try again shortly.",
            )
        }
    }
}

enum Failure {
    Refused(Refusal),
    Cache(CacheError),
}

/// The image at `url`: from the cache, else fetched once (concurrent requests for one URL
/// share the fetch) and kept. A refusal is kept a minute.
async fn image(state: &AppState, proxy: &ImageProxy, url: &str) -> Result<Stored, Failure> {
    let refused_key = cache_key("refused", url);
    if let Some(refusal) = state
        .cache
        .get::<Refusal>(&refused_key)
        .await
        .map_err(Failure::Cache)?
    {
        return Err(Failure::Refused(refusal));
    }
    let fetched = state
        .cache
        .get_or_set(&cache_key("ok", url), KEEP, || async {
            let image = proxy.fetcher.fetch(url).await?;
            Ok(Stored {
                content_type: image.content_type.to_owned(),
                data: B64.encode(&image.bytes),
            })
        })
        .await;
    match fetched {
        Ok(stored) => Ok(stored),
        Err(CacheError::Compute { source, .. }) => {
            let Some(refusal) = source.downcast_ref::<Refusal>().cloned() else {
                return Err(Failure::Refused(Refusal::Unreachable));
            };
            if let Err(e) = state.cache.set(&refused_key, &refusal, KEEP_REFUSAL).await {
                tracing::debug!(error = %e, "cannot keep an image refusal");
            }
            Err(Failure::Refused(refusal))
        }
        Err(e) => Err(Failure::Cache(e)),
    }
}

fn capitalised(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// A refusal: the platform's error page (or JSON, for `Accept: application/json`, which the
/// editor asks for) with `message` as its text.
fn refused(status: StatusCode, message: &str) -> Response {
    let mut response = (
        status,
        [
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=60"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
    )
        .into_response();
    response
        .extensions_mut()
        .insert(PublicMessage(message.to_owned()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> ImageSigner {
        ImageSigner::new(&Key::from(&[7u8; 64]))
    }

    #[test]
    fn a_signed_url_verifies_and_a_changed_one_does_not() {
        let s = signer();
        let url = s.url("https://example.com/a b.png?x=1");
        let rest = url.strip_prefix(PREFIX).unwrap();
        let (sig, encoded) = rest.split_once('/').unwrap();
        assert_eq!(
            s.verify(sig, encoded).as_deref(),
            Some("https://example.com/a b.png?x=1")
        );
        let other = B64.encode("https://example.com/other.png");
        assert_eq!(s.verify(sig, &other), None);
        assert_eq!(s.verify("AAAAAAAAAAAAAAAAAAAAAA", encoded), None);
        // A truncated signature is no shortcut.
        assert_eq!(s.verify(&sig[..4], encoded), None);
        let foreign = ImageSigner::new(&Key::from(&[8u8; 64]));
        assert_eq!(foreign.verify(sig, encoded), None);
    }

    #[test]
    fn only_external_images_are_rewritten() {
        let s = signer();
        assert!(
            s.rewrite("https://example.com/a.png")
                .unwrap()
                .starts_with(PREFIX)
        );
        assert!(
            s.rewrite("HTTP://example.com/a.png")
                .unwrap()
                .starts_with(PREFIX)
        );
        assert_eq!(
            s.rewrite("//example.com/a.png"),
            Some(s.url("https://example.com/a.png"))
        );
        assert_eq!(s.rewrite("/static/favicon.svg"), None);
        assert_eq!(s.rewrite("a.png"), None);
    }
}
