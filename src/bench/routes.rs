//! The benchmark protocol's endpoints, on the same platform pieces the apps use.
//!
//! * W5, `GET /ws/chat/{room}/`: a WebSocket consumer; on connect the socket joins the room's
//!   group, and every `{"message": "..."}` a member sends is `group_send` to the room and
//!   forwarded to every member (the sender included) as `{"type":"chat.message","message":...}`.
//! * W6, `GET /bench/events`: an event stream of the `bench.events` group;
//!   `POST /bench/publish` with `{"message": "..."}` sends to it and answers 204.

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use serde::{Deserialize, Serialize};

use crate::{
    channels::GroupName,
    web::{
        AppState, WebError,
        sse::{self, LastEventId},
        ws::{self, Connection, Consumer, ConsumerError, close_code},
    },
};

/// The routes, to be served outside the CSRF layer (the load clients have no session).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ws/chat/{room}/", ws::route::<ChatRoom>())
        .route("/bench/events", get(events))
        .route("/bench/publish", post(publish))
}

#[derive(Deserialize)]
struct Message {
    message: String,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

/// W5's chat room consumer.
struct ChatRoom {
    group: GroupName,
}

#[derive(Deserialize)]
struct RoomParams {
    room: String,
}

impl Consumer for ChatRoom {
    type Params = RoomParams;
    type Incoming = Message;
    /// Every message of the room is forwarded as it was sent.
    type Event = serde::de::IgnoredAny;

    async fn connect(ctx: &mut Connection, params: RoomParams) -> Result<Self, ConsumerError> {
        let valid = (1..=64).contains(&params.room.len())
            && params
                .room
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(ConsumerError::close(
                close_code::NOT_FOUND,
                "a room name is 1 to 64 letters, digits, '_' or '-'",
            ));
        }
        let group = GroupName::parse(format!("bench.chat.{}", params.room))?;
        ctx.subscription().join(&group);
        Ok(Self { group })
    }

    async fn receive(
        &mut self,
        ctx: &mut Connection,
        message: Message,
    ) -> Result<(), ConsumerError> {
        let out = ChatMessage {
            kind: "chat.message",
            message: &message.message,
        };
        ctx.channels().group_send(&self.group, &out).await?;
        Ok(())
    }
}

fn events_group() -> GroupName {
    GroupName::parse("bench.events").expect("a valid group name")
}

async fn events(
    State(state): State<AppState>,
    last_event_id: LastEventId,
) -> Result<axum::response::Response, WebError> {
    sse::stream(&state.channels, &[events_group()], last_event_id).await
}

async fn publish(
    State(state): State<AppState>,
    Json(message): Json<Message>,
) -> Result<StatusCode, WebError> {
    let out = ChatMessage {
        kind: "bench.message",
        message: &message.message,
    };
    state
        .channels
        .group_send(&events_group(), &out)
        .await
        .map_err(|e| WebError::Internal(e.into()))?;
    Ok(StatusCode::NO_CONTENT)
}
