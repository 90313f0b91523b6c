//! What a static file's URL hash and compressed copies are made of, shared by `build.rs` (which
//! precompresses Hearth's own `static/` folder when the crate is built) and by
//! [`super::Assets`] (which matches each served file to its precompressed copies by content,
//! and compresses an app's files that were not precompressed once when the application is
//! composed). One module for both, so the two cannot disagree on which files get compressed
//! copies or how their hashes are spelled.
//!
//! `build.rs` includes this file with `#[path]`: it may use the standard library, `brotli`,
//! `flate2` and `sha2` (the build-dependencies) and nothing of Hearth's.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

/// Brotli's best quality: affordable once per file at build time, and smallest on every
/// request after.
#[allow(dead_code)] // build.rs's: the server compresses at START_QUALITY
pub const BUILD_QUALITY: i32 = 11;

/// The quality for files compressed when the application is composed: several times faster
/// than 11 for a few percent more bytes, so that an app with a large bundle still starts fast.
#[allow(dead_code)] // the server's: build.rs compresses at BUILD_QUALITY
pub const START_QUALITY: i32 = 9;

/// Files smaller than this are served as they are: their compressed copy would save less than
/// the headers a response carries.
pub const MIN_LEN: usize = 256;

/// Whether a file is worth compressed copies: a text-like type (by its extension) of at least
/// [`MIN_LEN`] bytes. Images other than SVG, fonts and archives are compressed already.
pub fn compressible(path: &str, len: usize) -> bool {
    let extension = path.rsplit_once('.').map_or("", |(_, e)| e);
    len >= MIN_LEN
        && matches!(
            extension.to_ascii_lowercase().as_str(),
            "css" | "js" | "mjs" | "json" | "map" | "svg" | "txt" | "html" | "xml" | "wasm" | "ico"
        )
}

/// `bytes` compressed with brotli at `quality`.
pub fn brotli(bytes: &[u8], quality: i32) -> io::Result<Vec<u8>> {
    let params = brotli::enc::BrotliEncoderParams {
        quality,
        lgwin: 22,
        size_hint: bytes.len(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(bytes.len() / 3);
    brotli::BrotliCompress(&mut &bytes[..], &mut out, &params)?;
    Ok(out)
}

/// `bytes` compressed with gzip at its best level.
pub fn gzip(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 3),
        flate2::Compression::best(),
    );
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// A compressed copy is kept only when it is smaller than the file.
pub fn worth_keeping(compressed: &[u8], original: &[u8]) -> bool {
    compressed.len() < original.len()
}

/// The SHA-256 of a file's content in lower-case hex: the key of its precompressed copies,
/// and the source of its URL hash and ETag.
pub fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
