//! Chat app: rooms, their members and messages, and the room page's WebSocket consumer.
//!
//! * `pages`: the room list (create a room, public or private), the room page and
//!   invitations to private rooms.
//! * `consumer`: `/ws/rooms/{slug}` — messages persisted and broadcast to the room's group in
//!   one transaction, the last 50 on join and older ones on request, presence, typing, edits,
//!   deletes and moderation, `@name` mentions as notifications, and resumption after a drop.
//! * [`room`]: who may open a room, and the message rows every part shows.

pub mod consumer;
mod pages;
pub mod room;

use axum::routing::{get, post};

use crate::web::ws;

use crate::{
    App, Routes,
    web::templates::{NavLink, Show},
};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/chat");

/// The chat app.
pub fn app() -> App {
    App::new("chat")
        .migrations(&MIGRATIONS)
        .routes(|_| Ok(routes()))
        .nav(|_| Ok(NavLink::new("Chat", "/chat", Show::SignedIn)))
}

fn routes() -> Routes {
    Routes::new()
        .route("/chat", get(pages::rooms).post(pages::create))
        .route("/chat/{slug}", get(pages::room))
        .route("/chat/{slug}/invite", post(pages::invite))
        .route("/ws/rooms/{slug}", ws::route::<consumer::ChatConsumer>())
}
