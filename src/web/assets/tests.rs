//! Unit tests of the static files: hashed paths, the URL templates get, which representation a
//! request gets and how long it may be kept, and the build's precompressed copies.

use std::io::Read;

use ::include_dir::{DirEntry, File as DirFile};

use super::*;

static SITE: Dir = include_dir!("$CARGO_MANIFEST_DIR/static");
static SCRIPTS: Dir = include_dir!("$CARGO_MANIFEST_DIR/static/js");

/// An app's folder that `build.rs` never saw: its text is compressed when composed.
static APP: Dir = Dir::new(
    "",
    &[
        DirEntry::File(DirFile::new("shop.css", SHOP_CSS.as_bytes())),
        DirEntry::File(DirFile::new("tiny.css", b"p { color: red }")),
        DirEntry::File(DirFile::new("logo.png", &[0x89; 4096])),
    ],
);

const SHOP_CSS: &str = concat!(
    ".shop { display: grid; grid-template-columns: repeat(3, 1fr); gap: 1rem; }\n",
    ".shop .item { border: 1px solid #ddd; padding: 1rem; border-radius: 4px; }\n",
    ".shop .item .price { font-weight: bold; color: #333; }\n",
    ".shop .item .name { font-size: 1.2rem; margin-bottom: .5rem; }\n",
    ".shop .item:hover { border-color: #999; box-shadow: 0 1px 3px rgba(0,0,0,.1); }\n",
);

fn app() -> Assets {
    Assets::embedded(&[("the app \"shop\"".into(), &APP)]).unwrap()
}

fn accepting(coding: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(coding));
    headers
}

async fn body(response: Response) -> Vec<u8> {
    axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec()
}

fn decoded(coding: &str, bytes: &[u8]) -> Vec<u8> {
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

#[test]
fn two_folders_with_one_path_are_refused_naming_both() {
    let error = Assets::embedded(&[("a".into(), &SCRIPTS), ("b".into(), &SCRIPTS)]).unwrap_err();
    assert_eq!((error.first.as_str(), error.second.as_str()), ("a", "b"));
    assert_eq!(error.path, "chat.js");
    let one = Assets::embedded(&[("a".into(), &SCRIPTS)]).unwrap();
    assert!(one.get("chat.js").is_some_and(|b| !b.is_empty()));
}

#[test]
fn a_hash_goes_before_the_extension_and_comes_back_out() {
    for (plain, hashed) in [
        ("app.css", "app.0123abcd.css"),
        ("js/chat.js", "js/chat.0123abcd.js"),
        ("vendor/yjs.LICENSE.txt", "vendor/yjs.LICENSE.0123abcd.txt"),
        ("LICENSE", "LICENSE.0123abcd"),
        ("fonts/.hidden", "fonts/.hidden.0123abcd"),
    ] {
        assert_eq!(hashed_path(plain, "0123abcd"), hashed);
        assert_eq!(without_hash(hashed).as_deref(), Some(plain), "{hashed}");
    }
    for no_hash in [
        "app.css",
        "vendor/yjs.LICENSE.txt",
        "js/chat.0123ABCD.js",
        "a.0123abc.js",
    ] {
        assert_eq!(without_hash(no_hash), None, "{no_hash}");
    }
}

#[test]
fn pages_get_the_hashed_url_and_it_follows_the_content() {
    let site = Assets::embedded(&[("the application".into(), &SITE)]).unwrap();
    let url = site.url("app.css");
    let hash = &encode::digest(include_bytes!("../../../static/app.css"))[..URL_HASH_LEN];
    assert_eq!(url, format!("/static/app.{hash}.css"));
    static CHANGED: Dir = Dir::new("", &[DirEntry::File(DirFile::new("app.css", b"p {}"))]);
    let changed = Assets::embedded(&[("x".into(), &CHANGED)]).unwrap();
    assert_ne!(changed.url("app.css"), url);
    // An unknown file and files from disk get the plain URL.
    assert_eq!(site.url("nope.css"), "/static/nope.css");
    let disk = site.from_disk(Some(PathBuf::from("static")));
    assert_eq!(disk.url("app.css"), "/static/app.css");
}

#[tokio::test]
async fn the_hashed_url_is_immutable_and_the_plain_one_revalidates() {
    let app = app();
    let hashed = app.url("shop.css");
    let hashed = hashed.strip_prefix("/static/").unwrap();
    let stale = hashed_path("shop.css", "00000000");
    for (path, cache) in [
        (hashed, "public, max-age=31536000, immutable"),
        ("shop.css", "public, no-cache"),
        (stale.as_str(), "public, no-cache"),
    ] {
        let response = app.serve(path, &HeaderMap::new());
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()[header::CACHE_CONTROL], cache, "{path}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/css; charset=utf-8"
        );
        assert!(response.extensions().get::<Encoded>().is_some());
        assert_eq!(body(response).await, SHOP_CSS.as_bytes(), "{path}");
    }
    for missing in ["nope.css", "shop.0123abcd.js", "shop.css/x"] {
        assert_eq!(
            app.serve(missing, &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test]
async fn each_request_gets_the_best_copy_it_accepts() {
    let app = app();
    for (accept, coding) in [
        ("gzip, deflate, br, zstd", Some("br")),
        ("gzip, deflate", Some("gzip")),
        ("br;q=0.5, gzip", Some("gzip")),
        ("deflate", None),
        ("br;q=0, gzip;q=0", None),
    ] {
        let response = app.serve("shop.css", &accepting(accept));
        let headers = response.headers().clone();
        assert_eq!(headers[header::VARY], "accept-encoding", "{accept}");
        let etag = headers[header::ETAG].to_str().unwrap().to_owned();
        let bytes = body(response).await;
        match coding {
            Some(coding) => {
                assert_eq!(headers[header::CONTENT_ENCODING], coding, "{accept}");
                assert!(etag.ends_with(&format!("-{coding}\"")), "{etag}");
                assert!(bytes.len() < SHOP_CSS.len());
                assert_eq!(decoded(coding, &bytes), SHOP_CSS.as_bytes(), "{accept}");
            }
            None => {
                assert!(!headers.contains_key(header::CONTENT_ENCODING), "{accept}");
                assert!(!etag.contains('-'), "{etag}");
                assert_eq!(bytes, SHOP_CSS.as_bytes());
            }
        }
    }
}

#[tokio::test]
async fn tiny_and_compressed_types_are_served_as_they_are() {
    let app = app();
    for (path, content_type) in [
        ("tiny.css", "text/css; charset=utf-8"),
        ("logo.png", "image/png"),
    ] {
        let response = app.serve(path, &accepting("br, gzip"));
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], content_type);
        assert!(!headers.contains_key(header::CONTENT_ENCODING), "{path}");
        assert!(!headers.contains_key(header::VARY), "{path}");
        // Marked, so that the compression layer does not compress it per request either.
        assert!(response.extensions().get::<Encoded>().is_some());
        assert_eq!(
            &body(response).await[..],
            APP.get_file(path).unwrap().contents()
        );
    }
}

#[test]
fn the_build_precompressed_every_text_file_of_hearths_static_folder() {
    let site = Assets::embedded(&[("the application".into(), &SITE)]).unwrap();
    let mut checked = 0;
    for file in all_files(&SITE) {
        let path = file.path().to_string_lossy();
        if !encode::compressible(&path, file.contents().len()) {
            continue;
        }
        let digest = encode::digest(file.contents());
        let made = PRECOMPRESSED
            .iter()
            .find(|p| p.digest == digest)
            .unwrap_or_else(|| panic!("build.rs made no copies of {path}"));
        let brotli = made.brotli.expect("a brotli copy");
        assert_eq!(decoded("br", brotli), file.contents(), "{path}");
        assert_eq!(decoded("gzip", made.gzip.unwrap()), file.contents());
        // The served copy is the build's (quality 11), not one made at start.
        let served = &site.files.by_path[&*path];
        assert_eq!(served.brotli.as_deref(), Some(brotli), "{path}");
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} files checked");
}

/// Every `layout.asset("…")` in a template names a file of `static/`, and no template links a
/// static file without it (but the error page, which has no layout).
#[test]
fn templates_name_existing_assets_through_the_helper() {
    let site = Assets::embedded(&[("the application".into(), &SITE)]).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let mut templates = vec![root.clone()];
    let mut named = 0;
    while let Some(path) = templates.pop() {
        if path.is_dir() {
            templates.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for call in text.split("asset(\"").skip(1) {
            let asset = &call[..call.find('"').unwrap()];
            assert!(site.get(asset).is_some(), "{}: no {asset}", path.display());
            named += 1;
        }
        if !path.ends_with("error.html") {
            assert!(
                !text.contains("\"/static/"),
                "{} links /static/ without layout.asset",
                path.display()
            );
        }
    }
    assert!(named >= 8, "only {named} asset URLs in the templates");
}
