//! Rebuild when a migration or a static file changes: `sqlx::migrate!` embeds `migrations/`
//! and `include_dir!` embeds `static/` at compile time, and cargo does not know that on its own.
//!
//! Hearth's `sqlx::query!` macros are checked against the query cache committed in `.sqlx/`.
//! In this repository `.cargo/config.toml` says so (`SQLX_OFFLINE=true`), but cargo reads that
//! file only for builds started here: a program that depends on Hearth would otherwise have
//! Hearth's macros connect to whatever `DATABASE_URL` its own environment names (its database,
//! without Hearth's tables) and fail to compile. So unless `SQLX_OFFLINE` is set either way
//! (`false` is how the README regenerates the cache), Hearth's own crate is compiled offline.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=static");
    println!("cargo:rerun-if-env-changed=SQLX_OFFLINE");
    if std::env::var_os("SQLX_OFFLINE").is_none() {
        println!("cargo:rustc-env=SQLX_OFFLINE=true");
    }
}
