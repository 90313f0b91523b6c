//! The `hearth` binary copied to an empty folder outside the source tree serves a working site
//! from the files compiled into it: pages link content-hash URLs cached for a year, brotli and
//! gzip copies decode to the files of `static/`, plain URLs revalidate, and in headless Chromium
//! the pages load their CSS and scripts and the chat works (docs/assets.md).

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::Command,
};

use reqwest::{StatusCode, header};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::binary::{Server, serve_with};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// A `hearth serve` started from a copy of the binary; stopped when dropped, a failed assertion
/// included (see [`Server`]).
struct CopiedServer {
    /// Held for its drop, which stops the server.
    _server: Server,
    address: String,
    _folder: TempDir,
}

/// Copies the binary into a new empty folder outside the source tree and serves from there, on
/// a fresh migrated database, with nothing of the test's environment but that database.
async fn start_copy() -> CopiedServer {
    let folder = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .unwrap();
    let place = folder.path().canonicalize().unwrap();
    assert!(!place.starts_with(&source) && !source.starts_with(&place));
    let binary = place.join("hearth");
    fs::copy(env!("CARGO_BIN_EXE_hearth"), &binary).unwrap();
    let (name, _) = crate::helpers::migrated_database().await;
    let mut command = Command::new(&binary);
    command
        .current_dir(&place)
        .env_clear()
        .env("DATABASE_URL", crate::helpers::database_url(&name))
        .env("HEARTH_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "info");
    let (server, address, _log) = serve_with(command);
    CopiedServer {
        _server: server,
        address,
        _folder: folder,
    }
}

/// Every file of the source tree's `static/`, by its path there (`js/chat.js`).
fn static_files() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
    let mut folders = vec![root.clone()];
    let mut files = Vec::new();
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(folder).unwrap() {
            let path: PathBuf = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                let name = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push((name, fs::read(&path).unwrap()));
            }
        }
    }
    assert!(files.len() >= 8, "static/ has {} files", files.len());
    files
}

/// `/static/js/chat.<first 8 hex digits of the SHA-256 of its content>.js`: what docs/assets.md
/// promises, worked out here independently of the server.
fn hashed_url(path: &str, content: &[u8]) -> String {
    let hash = &hex::encode(Sha256::digest(content))[..8];
    let (stem, extension) = path.rsplit_once('.').unwrap();
    format!("/static/{stem}.{hash}.{extension}")
}

fn media_type(path: &str) -> &'static str {
    match path.rsplit_once('.').unwrap().1 {
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        other => panic!("no media type expected for .{other}: add it to this test"),
    }
}

fn decode(coding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "br" => brotli::Decompressor::new(bytes, 4096)
            .read_to_end(&mut out)
            .unwrap(),
        "gzip" => flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap(),
        other => panic!("unexpected coding {other}"),
    };
    out
}

#[tokio::test]
async fn a_copied_binary_serves_hashed_precompressed_assets_from_an_empty_folder() {
    let server = start_copy().await;
    let client = crate::helpers::client();
    let get = |path: String, accept: &'static str| {
        let request = client.get(format!("{}{path}", server.address));
        request.header(header::ACCEPT_ENCODING, accept).send()
    };
    let files = static_files();

    let home = get("/".into(), "identity")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (_, css) = files.iter().find(|(path, _)| path == "app.css").unwrap();
    let css_url = hashed_url("app.css", css);
    assert!(
        home.contains(&format!("<link rel=\"stylesheet\" href=\"{css_url}\">")),
        "the home page links the stylesheet by {css_url}:\n{home}"
    );

    for (path, content) in &files {
        let url = hashed_url(path, content);
        for (accept, coding) in [
            ("br, gzip", Some("br")),
            ("gzip", Some("gzip")),
            ("identity", None),
        ] {
            let response = get(url.clone(), accept).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{url} ({accept})");
            let headers = response.headers().clone();
            assert_eq!(headers[header::CONTENT_TYPE], media_type(path), "{url}");
            assert_eq!(headers[header::CACHE_CONTROL], IMMUTABLE, "{url}");
            assert_eq!(headers[header::VARY], "accept-encoding", "{url}");
            let body = response.bytes().await.unwrap();
            let encoding = headers.get(header::CONTENT_ENCODING);
            assert_eq!(
                encoding.map(|v| v.to_str().unwrap()),
                coding,
                "{url} ({accept})"
            );
            match coding {
                Some(coding) => {
                    assert!(
                        body.len() < content.len(),
                        "{url} in {coding} is not smaller"
                    );
                    assert!(
                        &decode(coding, &body) == content,
                        "{url} in {coding} decodes to another file"
                    );
                }
                None => assert!(&body[..] == content, "{url} is not {path}"),
            }
        }

        // The plain URL still serves the file, revalidated with its ETag.
        let plain = format!("/static/{path}");
        let response = get(plain.clone(), "br").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{plain}");
        assert_eq!(
            response.headers()[header::CACHE_CONTROL],
            "public, no-cache"
        );
        let etag = response.headers()[header::ETAG].clone();
        let again = client
            .get(format!("{}{plain}", server.address))
            .header(header::ACCEPT_ENCODING, "br")
            .header(header::IF_NONE_MATCH, etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{plain}");
    }
}

#[tokio::test]
async fn a_copied_binary_serves_pages_whose_css_scripts_and_chat_work_in_a_browser() {
    let server = start_copy().await;
    crate::browser::run_script_at(&server.address, "assets.mjs", &[]).await;
}
