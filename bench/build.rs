//! Rebuild when the bench's migration changes: `sqlx::migrate!` embeds `migrations/` at compile
//! time, and cargo does not know that on its own.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
