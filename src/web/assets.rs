//! Static files under `/static`, compiled into the binary.
//!
//! A composition and its apps hand over folders embedded with [`include_dir!`]
//! (`Application::assets`, `App::assets`); their files are served under `/static/<path in the
//! folder>`, so the binary alone, copied anywhere, serves its CSS and scripts. Templates add
//! `?v=<version>` to every asset URL (a hash of every file), so responses are cached for a year
//! and a changed file gets a new URL. `HEARTH_STATIC_DIR` serves a folder from disk instead,
//! to edit assets without rebuilding.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use axum::{
    Router,
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
// The crate and its macro under one name: the macro's expansion names `include_dir::Dir`, so a
// program that imports `hearth::web::assets::include_dir` needs no dependency of its own.
pub extern crate include_dir;
pub use ::include_dir::{Dir, include_dir};
use sha2::{Digest, Sha256};
use tower::ServiceBuilder;
use tower_http::{services::ServeDir, set_header::SetResponseHeaderLayer};

const IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");

/// Every static file of an application, by path.
#[derive(Debug, Clone, Default)]
pub struct Assets {
    files: Arc<HashMap<String, &'static [u8]>>,
    version: Arc<str>,
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
    /// The files of `folders`, each with who hands it over (for errors).
    pub fn embedded(folders: &[(String, &'static Dir<'static>)]) -> Result<Self, DuplicateAsset> {
        let mut files: HashMap<String, &'static [u8]> = HashMap::new();
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
                files.insert(path, file.contents());
            }
        }
        let mut paths: Vec<_> = files.keys().collect();
        paths.sort();
        let mut hash = Sha256::new();
        for path in paths {
            hash.update(path.as_bytes());
            hash.update(files[path]);
        }
        Ok(Self {
            version: hex::encode(&hash.finalize()[..5]).into(),
            files: Arc::new(files),
        })
    }

    /// A short hash of every file, for cache-busting URLs.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The file at `path` (`js/chat.js`), if there is one.
    pub fn get(&self, path: &str) -> Option<&'static [u8]> {
        self.files.get(path).copied()
    }

    /// `/static`'s routes: the embedded files, or `disk` when given.
    pub fn router(&self, disk: Option<&PathBuf>) -> Router {
        if let Some(dir) = disk {
            return Router::new().fallback_service(
                ServiceBuilder::new()
                    .layer(SetResponseHeaderLayer::overriding(
                        header::CACHE_CONTROL,
                        IMMUTABLE,
                    ))
                    .service(ServeDir::new(dir)),
            );
        }
        let assets = self.clone();
        Router::new().route(
            "/{*path}",
            get(move |Path(path): Path<String>| async move { assets.serve(&path) }),
        )
    }

    fn serve(&self, path: &str) -> Response {
        match self.get(path) {
            Some(bytes) => (
                [
                    (header::CONTENT_TYPE, content_type(path)),
                    (header::CACHE_CONTROL, IMMUTABLE),
                ],
                bytes,
            )
                .into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }
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
        _ => "application/octet-stream",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    static ONE: Dir = include_dir!("$CARGO_MANIFEST_DIR/static/js");

    #[test]
    fn two_folders_with_one_path_are_refused_naming_both() {
        let error = Assets::embedded(&[("a".into(), &ONE), ("b".into(), &ONE)]).unwrap_err();
        assert_eq!((error.first.as_str(), error.second.as_str()), ("a", "b"));
        assert_eq!(error.path, "chat.js");
        let one = Assets::embedded(&[("a".into(), &ONE)]).unwrap();
        assert_eq!(one.version().len(), 10);
        assert!(one.get("chat.js").is_some_and(|b| !b.is_empty()));
    }

    #[test]
    fn media_types_come_from_extensions() {
        assert_eq!(content_type("app.css"), "text/css; charset=utf-8");
        assert_eq!(
            content_type("vendor/yjs.mjs"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("x"), "application/octet-stream");
    }
}
