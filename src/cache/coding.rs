//! Content codings for the page cache: which one a request accepts, and compressing a page
//! into it once, when the page is stored.
//!
//! The platform's compression layer sits outside every route, so without this a cached page
//! was stored as is and brotli-compressed again on every hit for every browser: a cached page
//! asked for with Chrome's `Accept-Encoding` was served at a fifth of the rate of the same page
//! asked for without compression. The page cache instead keeps one stored copy per coding
//! (`br`, `gzip` or none), compressed once when it is stored, at a higher level than a
//! per-request compressor could afford; the compression layer leaves a response that already has
//! a `Content-Encoding` alone. The static files' handler (`web/assets.rs`) negotiates its
//! precompressed copies with the same [`Coding::negotiate`].

use std::io::{self, Write};

use axum::http::{HeaderMap, header};

/// The codings pages are stored in, and the one each request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    Brotli,
    Gzip,
    Identity,
}

/// Bodies shorter than this are stored as they are, as the compression layer leaves them.
const MIN_BODY: usize = 32;

impl Coding {
    /// The best coding the request's `Accept-Encoding` allows: the one with the highest `q`,
    /// brotli before gzip at equal weight, and no compression when neither is acceptable.
    pub(crate) fn negotiate(headers: &HeaderMap) -> Self {
        let (mut brotli, mut gzip, mut any) = (None, None, None);
        for item in headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
        {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let q = parts
                .filter_map(|param| param.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match name.to_ascii_lowercase().as_str() {
                "br" => brotli = Some(q),
                "gzip" | "x-gzip" => gzip = Some(q),
                "*" => any = Some(q),
                _ => {}
            }
        }
        let brotli = brotli.or(any).unwrap_or(0.0);
        let gzip = gzip.or(any).unwrap_or(0.0);
        if brotli > 0.0 && brotli >= gzip {
            Self::Brotli
        } else if gzip > 0.0 {
            Self::Gzip
        } else {
            Self::Identity
        }
    }

    /// The `Content-Encoding` token.
    pub(crate) fn token(self) -> &'static str {
        match self {
            Self::Brotli => "br",
            Self::Gzip => "gzip",
            Self::Identity => "identity",
        }
    }

    /// Whether a response with these headers and a body of `len` bytes is worth storing in
    /// this coding: a coding at all, and a [`compressible`] response.
    pub(super) fn applies_to(self, headers: &HeaderMap, len: usize) -> bool {
        self != Self::Identity && compressible(headers, len)
    }

    /// `body` in this coding. Brotli at quality 9 and gzip at 9: slower than a per-request
    /// compressor's settings, affordable once per stored page, and smaller on every hit.
    pub(super) fn encode(self, body: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Self::Brotli => {
                let params = brotli::enc::BrotliEncoderParams {
                    quality: 9,
                    lgwin: 22,
                    ..Default::default()
                };
                let mut out = Vec::with_capacity(body.len() / 3);
                brotli::BrotliCompress(&mut &body[..], &mut out, &params)?;
                Ok(out)
            }
            Self::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(body.len() / 3),
                    flate2::Compression::new(9),
                );
                encoder.write_all(body)?;
                encoder.finish()
            }
            Self::Identity => Ok(body.to_vec()),
        }
    }
}

/// A header's value in lower case, or "" when it is missing or not text: for matching
/// case-insensitive tokens such as media types and cache directives.
pub(super) fn lowercase(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Whether a response with these headers and a body of `len` bytes is worth compressing:
/// text-like, not tiny, and not already encoded by its handler.
pub(super) fn compressible(headers: &HeaderMap, len: usize) -> bool {
    if len < MIN_BODY || headers.contains_key(header::CONTENT_ENCODING) {
        return false;
    }
    let content_type = lowercase(headers, header::CONTENT_TYPE);
    content_type.starts_with("text/")
        || ["json", "javascript", "xml", "svg"]
            .iter()
            .any(|kind| content_type.contains(kind))
}

/// `etag` marked as the representation in `coding` (`"abc"` → `"abc-br"`): a compressed page is
/// a different representation and needs a different strong validator.
pub(crate) fn etag_for(etag: &str, coding: Coding) -> String {
    match etag.strip_suffix('"') {
        Some(open) if coding != Coding::Identity => format!("{open}-{}\"", coding.token()),
        _ => etag.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use axum::http::HeaderValue;

    use super::*;

    fn accepting(value: &'static str) -> Coding {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
        Coding::negotiate(&headers)
    }

    #[test]
    fn the_best_acceptable_coding_is_chosen() {
        assert_eq!(accepting("gzip, deflate, br, zstd"), Coding::Brotli);
        assert_eq!(accepting("gzip, deflate"), Coding::Gzip);
        assert_eq!(accepting("br;q=0.5, gzip"), Coding::Gzip);
        assert_eq!(accepting("br;q=0, gzip;q=0"), Coding::Identity);
        assert_eq!(accepting("deflate"), Coding::Identity);
        assert_eq!(accepting("*"), Coding::Brotli);
        assert_eq!(accepting("*;q=0.1, gzip;q=0.2"), Coding::Gzip);
        assert_eq!(Coding::negotiate(&HeaderMap::new()), Coding::Identity);
    }

    #[test]
    fn only_text_like_bodies_of_some_size_are_compressed() {
        let mut html = HeaderMap::new();
        html.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        assert!(Coding::Brotli.applies_to(&html, 4096));
        assert!(!Coding::Brotli.applies_to(&html, 10));
        assert!(!Coding::Identity.applies_to(&html, 4096));
        let mut png = HeaderMap::new();
        png.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
        assert!(!Coding::Gzip.applies_to(&png, 4096));
        html.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert!(!Coding::Gzip.applies_to(&html, 4096));
    }

    #[test]
    fn encoded_bodies_decode_to_the_original() {
        let body = "<p>the same paragraph, again and again</p>\n".repeat(50);
        let mut out = String::new();
        let brotli = Coding::Brotli.encode(body.as_bytes()).unwrap();
        brotli::Decompressor::new(&brotli[..], 4096)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, body);
        assert!(brotli.len() < body.len() / 10);
        let gzip = Coding::Gzip.encode(body.as_bytes()).unwrap();
        out.clear();
        flate2::read::GzDecoder::new(&gzip[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, body);
    }

    #[test]
    fn each_coding_gets_its_own_etag() {
        assert_eq!(etag_for("\"abc\"", Coding::Brotli), "\"abc-br\"");
        assert_eq!(etag_for("W/\"abc\"", Coding::Gzip), "W/\"abc-gzip\"");
        assert_eq!(etag_for("\"abc\"", Coding::Identity), "\"abc\"");
    }
}
