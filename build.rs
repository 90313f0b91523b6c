//! Build-time work the compiler does not do on its own.
//!
//! Rebuild when a migration or a static file changes: `sqlx::migrate!` embeds `migrations/`
//! and `include_dir!` embeds `static/` at compile time, and cargo does not know that on its own.
//!
//! Precompress `static/`: every text-like file gets a brotli and a gzip copy in `OUT_DIR`, and
//! `$OUT_DIR/precompressed.rs` lists them by the SHA-256 of the file they compress;
//! `src/web/assets.rs` includes that list and serves a copy when a request accepts its coding
//! (docs/assets.md). Done here rather than at start so that brotli's best quality, which costs
//! about a second for the whole folder, is paid once per build and not by every start.
//!
//! Hearth's `sqlx::query!` macros are checked against the query cache committed in `.sqlx/`.
//! In this repository `.cargo/config.toml` says so (`SQLX_OFFLINE=true`), but cargo reads that
//! file only for builds started here: a program that depends on Hearth would otherwise have
//! Hearth's macros connect to whatever `DATABASE_URL` its own environment names (its database,
//! without Hearth's tables) and fail to compile. So unless `SQLX_OFFLINE` is set either way
//! (`false` is how the README regenerates the cache), Hearth's own crate is compiled offline.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

#[path = "src/web/assets/encode.rs"]
mod encode;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=static");
    println!("cargo:rerun-if-changed=src/web/assets/encode.rs");
    println!("cargo:rerun-if-env-changed=SQLX_OFFLINE");
    if std::env::var_os("SQLX_OFFLINE").is_none() {
        println!("cargo:rustc-env=SQLX_OFFLINE=true");
    }
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    precompress(&manifest.join("static"), &out);
}

/// Writes the compressed copies of `folder`'s files into `out/precompressed/` and the list of
/// them, as a Rust expression, into `out/precompressed.rs`.
fn precompress(folder: &Path, out: &Path) {
    let copies = out.join("precompressed");
    fs::create_dir_all(&copies).expect("create OUT_DIR/precompressed");
    let mut files = Vec::new();
    walk(folder, &mut files);
    files.sort();
    let mut list = String::from("&[\n");
    for file in files {
        let bytes = fs::read(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let path = file.strip_prefix(folder).expect("under the folder");
        if !encode::compressible(&path.to_string_lossy(), bytes.len()) {
            continue;
        }
        let digest = encode::digest(&bytes);
        let brotli = encode::brotli(&bytes, encode::BUILD_QUALITY).expect("brotli into memory");
        let gzip = encode::gzip(&bytes).expect("gzip into memory");
        let copy = |extension: &str, compressed: Vec<u8>| {
            if !encode::worth_keeping(&compressed, &bytes) {
                return "None".to_owned();
            }
            let name = copies.join(format!("{digest}.{extension}"));
            fs::write(&name, compressed).expect("write into OUT_DIR");
            format!("Some(include_bytes!({:?}))", name.display().to_string())
        };
        let (brotli, gzip) = (copy("br", brotli), copy("gz", gzip));
        writeln!(
            list,
            "    Precompressed {{ digest: {digest:?}, brotli: {brotli}, gzip: {gzip} }}, // {}",
            path.display()
        )
        .expect("write into a String");
    }
    list.push(']');
    fs::write(out.join("precompressed.rs"), list).expect("write OUT_DIR/precompressed.rs");
}

/// Every file under `dir`, at any depth.
fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}
