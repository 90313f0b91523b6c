//! Static files under `/static`, compiled into the binary (docs/assets.md).
//!
//! A composition and its apps hand over folders embedded with [`include_dir!`]
//! (`Application::assets`, `App::assets`); their files are served under `/static/<path in the
//! folder>`, so the binary alone, copied anywhere, serves its CSS and scripts.
//!
//! Every file is served at two URLs. `/static/js/chat.3f9a1c2e.js` carries a hash of the
//! file's content and is cached for a year (`immutable`): templates ask for it with
//! `{{ layout.asset("js/chat.js") }}` ([`Assets::url`]), and a changed file gets a new URL.
//! `/static/js/chat.js` keeps working with `no-cache` and an `ETag`, for whatever names a file
//! by its path (a script's import, an old page); so does a hashed URL whose hash is not the
//! current file's (a page rendered before a deploy), which gets the current file.
//!
//! Text-like files have brotli and gzip copies, served by `Accept-Encoding`: Hearth's own
//! `static/` folder is compressed by `build.rs` and matched to its files by content, an app's
//! files that were not are compressed once when the application is composed. Responses carry
//! [`Encoded`], which the platform's compression layer reads as "leave this alone".
//!
//! `HEARTH_STATIC_DIR` serves a folder from disk instead, to edit assets without rebuilding:
//! plain URLs, `no-cache` with `Last-Modified`, compressed per request by the compression layer.

mod encode;

use std::{collections::HashMap, io, path::PathBuf, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
// The crate and its macro under one name: the macro's expansion names `include_dir::Dir`, so a
// program that imports `hearth::web::assets::include_dir` needs no dependency of its own.
pub extern crate include_dir;
pub use ::include_dir::{Dir, include_dir};
use tower::ServiceBuilder;
use tower_http::{services::ServeDir, set_header::SetResponseHeaderLayer};

use super::conditional::conditional_get;
use crate::cache::coding::{Coding, etag_for};

/// For a URL that names the content: it never changes.
const IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");

/// For a URL that names a path: stored, but revalidated (`ETag`) before every use.
const REVALIDATE: HeaderValue = HeaderValue::from_static("public, no-cache");

/// Hex digits of a file's SHA-256 in its hashed URL: enough to tell one file's versions apart.
const URL_HASH_LEN: usize = 8;

/// Hex digits of a file's SHA-256 in its `ETag`.
const ETAG_HASH_LEN: usize = 20;

/// Marks a response whose body is final (a precompressed copy, or a file not worth
/// compressing): the platform's compression layer leaves it alone (`web::layers`).
#[derive(Debug, Clone, Copy)]
pub struct Encoded;

/// The brotli and gzip copies `build.rs` made of a file of Hearth's `static/`.
struct Precompressed {
    /// The SHA-256 of the file they compress ([`encode::digest`]).
    digest: &'static str,
    brotli: Option<&'static [u8]>,
    gzip: Option<&'static [u8]>,
}

static PRECOMPRESSED: &[Precompressed] = include!(concat!(env!("OUT_DIR"), "/precompressed.rs"));

/// One static file and what it is served as.
#[derive(Debug)]
struct File {
    /// `js/chat.3f9a1c2e.js`.
    hashed: String,
    content_type: HeaderValue,
    /// The identity representation's `ETag` (`"<hash>"`).
    etag: String,
    identity: Bytes,
    brotli: Option<Bytes>,
    gzip: Option<Bytes>,
}

#[derive(Debug, Default)]
struct Files {
    by_path: HashMap<String, File>,
    /// Hashed path → path.
    by_hashed: HashMap<String, String>,
}

/// Every static file of an application, by path.
#[derive(Debug, Clone, Default)]
pub struct Assets {
    files: Arc<Files>,
    /// `HEARTH_STATIC_DIR`: serve this folder instead.
    disk: Option<Arc<PathBuf>>,
}

/// Two folders with a file of the same path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{first} and {second} both have the static file {path}")]
pub struct DuplicateAsset {
    pub path: String,
    pub first: String,
    pub second: String,
}

impl Assets {
    /// The files of `folders`, each with who hands it over (for errors). A text-like file that
    /// `build.rs` did not precompress (an app's) is compressed here, once.
    pub fn embedded(folders: &[(String, &'static Dir<'static>)]) -> Result<Self, DuplicateAsset> {
        let mut files = Files::default();
        let mut owners: HashMap<String, &str> = HashMap::new();
        for (owner, folder) in folders {
            for file in all_files(folder) {
                let path = file.path().to_string_lossy().replace('\\', "/");
                if let Some(first) = owners.insert(path.clone(), owner) {
                    return Err(DuplicateAsset {
                        path,
                        first: first.to_owned(),
                        second: owner.clone(),
                    });
                }
                let file = File::new(&path, file.contents());
                files.by_hashed.insert(file.hashed.clone(), path.clone());
                files.by_path.insert(path, file);
            }
        }
        Ok(Self {
            files: Arc::new(files),
            disk: None,
        })
    }

    /// These files served from `folder` instead, when there is one (`HEARTH_STATIC_DIR`).
    pub fn from_disk(self, folder: Option<PathBuf>) -> Self {
        Self {
            disk: folder.map(Arc::new),
            ..self
        }
    }

    /// The URL to put in a page for the file at `path` (`js/chat.js`): its hashed URL, or its
    /// plain one when files come from disk or there is no such file (which then answers 404).
    pub fn url(&self, path: &str) -> String {
        match self.files.by_path.get(path) {
            Some(file) if self.disk.is_none() => format!("/static/{}", file.hashed),
            _ => format!("/static/{path}"),
        }
    }

    /// The file at `path` (`js/chat.js`), if there is one.
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.by_path.get(path).map(|file| &file.identity[..])
    }

    /// `/static`'s routes: the embedded files, or the folder on disk.
    pub fn router(&self) -> Router {
        if let Some(dir) = &self.disk {
            return Router::new().fallback_service(
                ServiceBuilder::new()
                    .layer(SetResponseHeaderLayer::overriding(
                        header::CACHE_CONTROL,
                        REVALIDATE,
                    ))
                    .service(ServeDir::new(dir.as_ref())),
            );
        }
        let assets = self.clone();
        Router::new()
            .route(
                "/{*path}",
                get(
                    move |Path(path): Path<String>, headers: HeaderMap| async move {
                        assets.serve(&path, &headers)
                    },
                ),
            )
            .layer(middleware::from_fn(conditional_get))
    }

    /// The file at `path` (plain or hashed) in the best coding `headers` accept.
    fn serve(&self, path: &str, headers: &HeaderMap) -> Response {
        let Some((file, cache_control)) = self.find(path) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let (body, coding) = file.body(Coding::negotiate(headers));
        let mut response = Response::new(Body::from(body));
        let out = response.headers_mut();
        out.insert(header::CONTENT_TYPE, file.content_type.clone());
        out.insert(header::CACHE_CONTROL, cache_control);
        if let Ok(etag) = HeaderValue::from_str(&etag_for(&file.etag, coding)) {
            out.insert(header::ETAG, etag);
        }
        if file.brotli.is_some() || file.gzip.is_some() {
            out.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        }
        if coding != Coding::Identity {
            out.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(coding.token()),
            );
        }
        response.extensions_mut().insert(Encoded);
        response
    }

    /// The file a request path names, with how long its answer may be cached: a hashed URL of
    /// the current file for a year, a plain path or a stale hash until revalidated.
    fn find(&self, path: &str) -> Option<(&File, HeaderValue)> {
        if let Some(file) = self.files.by_hashed.get(path).and_then(|p| self.file(p)) {
            return Some((file, IMMUTABLE));
        }
        let file = self
            .file(path)
            .or_else(|| self.file(&without_hash(path)?))?;
        Some((file, REVALIDATE))
    }

    fn file(&self, path: &str) -> Option<&File> {
        self.files.by_path.get(path)
    }
}

impl File {
    fn new(path: &str, bytes: &'static [u8]) -> Self {
        let digest = encode::digest(bytes);
        let (brotli, gzip) = match PRECOMPRESSED.iter().find(|p| p.digest == digest) {
            Some(made) => (
                made.brotli.map(Bytes::from_static),
                made.gzip.map(Bytes::from_static),
            ),
            None if encode::compressible(path, bytes.len()) => compress_now(path, bytes),
            None => (None, None),
        };
        Self {
            hashed: hashed_path(path, &digest[..URL_HASH_LEN]),
            content_type: content_type(path),
            etag: format!("\"{}\"", &digest[..ETAG_HASH_LEN]),
            identity: Bytes::from_static(bytes),
            brotli,
            gzip,
        }
    }

    /// The body in `coding` when the file has a copy in it, else as it is.
    fn body(&self, coding: Coding) -> (Bytes, Coding) {
        let copy = match coding {
            Coding::Brotli => self.brotli.as_ref(),
            Coding::Gzip => self.gzip.as_ref(),
            Coding::Identity => None,
        };
        match copy {
            Some(bytes) => (bytes.clone(), coding),
            None => (self.identity.clone(), Coding::Identity),
        }
    }
}

/// Brotli and gzip copies of a file `build.rs` did not see (an app's), each kept when smaller.
fn compress_now(path: &str, bytes: &[u8]) -> (Option<Bytes>, Option<Bytes>) {
    let keep = |made: io::Result<Vec<u8>>| match made {
        Ok(copy) => encode::worth_keeping(&copy, bytes).then(|| Bytes::from(copy)),
        Err(error) => {
            // Compressing into memory does not fail; if it ever did, the file is still served.
            tracing::warn!(%path, %error, "a static file is served uncompressed");
            None
        }
    };
    (
        keep(encode::brotli(bytes, encode::START_QUALITY)),
        keep(encode::gzip(bytes)),
    )
}

/// `js/chat.js` with `hash` before its extension: `js/chat.<hash>.js` (`LICENSE.<hash>` when
/// the name has no extension).
fn hashed_path(path: &str, hash: &str) -> String {
    let name_start = path.rfind('/').map_or(0, |slash| slash + 1);
    match path[name_start..].rfind('.') {
        Some(dot) if dot > 0 => {
            let (stem, extension) = path.split_at(name_start + dot);
            format!("{stem}.{hash}{extension}")
        }
        _ => format!("{path}.{hash}"),
    }
}

/// A hashed path back to its plain path (`js/chat.0123abcd.js` → `js/chat.js`), whatever the
/// hash; `None` when `path` has no hash where [`hashed_path`] puts one.
fn without_hash(path: &str) -> Option<String> {
    let is_hash = |s: &str| {
        s.len() == URL_HASH_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let (folder, name) = match path.rsplit_once('/') {
        Some((folder, name)) => (Some(folder), name),
        None => (None, path),
    };
    let (rest, last) = name.rsplit_once('.')?;
    let plain = match rest.rsplit_once('.') {
        Some((stem, hash)) if is_hash(hash) && !stem.is_empty() => format!("{stem}.{last}"),
        _ if is_hash(last) && !rest.is_empty() => rest.to_owned(),
        _ => return None,
    };
    Some(match folder {
        Some(folder) => format!("{folder}/{plain}"),
        None => plain,
    })
}

fn all_files(dir: &'static Dir<'static>) -> Vec<&'static ::include_dir::File<'static>> {
    let mut files: Vec<_> = dir.files().collect();
    for sub in dir.dirs() {
        files.extend(all_files(sub));
    }
    files
}

/// The media type of a file, by its extension.
fn content_type(path: &str) -> HeaderValue {
    let extension = path.rsplit_once('.').map_or("", |(_, e)| e);
    HeaderValue::from_static(match extension {
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" => "text/plain; charset=utf-8",
        "html" => "text/html; charset=utf-8",
        "xml" => "application/xml",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    })
}

#[cfg(test)]
mod tests;
