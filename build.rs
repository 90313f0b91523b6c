//! Rebuild when a migration or a static file changes: `sqlx::migrate!` embeds `migrations/`
//! and `include_dir!` embeds `static/` at compile time, and cargo does not know that on its own.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=static");
}
