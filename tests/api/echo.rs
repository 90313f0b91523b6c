//! A room that forwards every message to all its members, for the protocol tests (TLS, HTTP/2,
//! WebSockets over both): an anonymous WebSocket consumer written on the public API, as a
//! user's app would, and mounted by those tests alone (`TestApp::builder().routes(routes())`).
//!
//! A member's `{"message": "..."}` reaches every member, the sender included, as
//! `{"type":"chat.message","message":"..."}`.

use axum::Router;
use hearth::{
    AppState,
    channels::GroupName,
    web::ws::{self, Connection, Consumer, ConsumerError},
};
use serde::{Deserialize, Serialize};

/// The echo room at `/ws/echo/{room}/`.
pub fn routes() -> Router<AppState> {
    Router::new().route("/ws/echo/{room}/", ws::route::<Room>())
}

struct Room {
    group: GroupName,
}

#[derive(Deserialize)]
struct Params {
    room: String,
}

#[derive(Deserialize)]
struct Said {
    message: String,
}

#[derive(Serialize)]
struct Heard<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

impl Consumer for Room {
    type Params = Params;
    type Incoming = Said;
    /// Every message of the room is forwarded as it was sent.
    type Event = serde::de::IgnoredAny;

    async fn connect(ctx: &mut Connection, params: Params) -> Result<Self, ConsumerError> {
        let group = GroupName::parse(format!("test.echo.{}", params.room))?;
        ctx.subscription().join(&group);
        Ok(Self { group })
    }

    async fn receive(&mut self, ctx: &mut Connection, said: Said) -> Result<(), ConsumerError> {
        let heard = Heard {
            kind: "chat.message",
            message: &said.message,
        };
        ctx.channels().group_send(&self.group, &heard).await?;
        Ok(())
    }
}
