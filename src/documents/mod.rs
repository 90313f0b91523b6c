//! Collaborative documents: several people edit one text at once, see each other's carets,
//! and never lose an edit, across instances and dropped connections.
//!
//! The text is a CRDT — Yjs in the browser (`static/vendor/yjs.mjs`), its Rust port yrs on
//! the server — so concurrent edits merge without a central order and a client that was
//! offline sends what it did when it is back.
//!
//! * [`crdt`]: rebuilding a document from stored updates, diffs against a client's state
//!   vector, the plain text, and the edit a restore makes.
//! * [`document`]: rights (owner, editor, reader), loading and storing updates.
//! * `consumer`: `/ws/docs/{id}` — the sync handshake, updates stored and broadcast in one
//!   transaction, carets, presence, rights re-read when the owner changes them.
//! * [`awareness`]: the caret shape editors share, typed and bounded.
//! * [`compact`]: the job that folds stored updates into the snapshot, and its periodic sweep.
//! * `pages`: the list, the editor page, members, versions and restore, export, delete.

pub mod awareness;
pub mod compact;
pub mod consumer;
pub mod crdt;
pub mod document;
mod pages;

use axum::routing::{get, post};

pub use compact::{CompactDocument, CompactIdle};
pub use consumer::MAX_UPDATE;

use crate::web::ws;

use std::time::Duration;

use crate::{
    App, Routes,
    jobs::{Enqueue, Every, Schedule},
    web::templates::{NavLink, Show},
};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/documents");

/// The documents app.
pub fn app() -> App {
    App::new("documents")
        .migrations(&MIGRATIONS)
        .routes(|_| Ok(routes()))
        .job::<CompactDocument>()
        .job::<CompactIdle>()
        .schedules(|_| {
            Ok(vec![Schedule::new(
                "documents-compact",
                Every::interval(Duration::from_secs(600))?,
                Enqueue::new(&CompactIdle::default())?,
            )?])
        })
        .nav(|_| Ok(NavLink::new("Docs", "/docs", Show::SignedIn)))
}

fn routes() -> Routes {
    Routes::new()
        .route("/docs", get(pages::list).post(pages::create))
        .route("/docs/{id}", get(pages::edit))
        .route("/docs/{id}/text", get(pages::text))
        .route("/docs/{id}/title", post(pages::rename))
        .route("/docs/{id}/members", post(pages::add_member))
        .route(
            "/docs/{id}/members/{user_id}/remove",
            post(pages::remove_member),
        )
        .route("/docs/{id}/versions", post(pages::save_version))
        .route(
            "/docs/{id}/versions/{version_id}/restore",
            post(pages::restore_version),
        )
        .route("/docs/{id}/delete", post(pages::delete))
        .route("/ws/docs/{id}", ws::route::<consumer::DocConsumer>())
}
