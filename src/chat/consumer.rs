//! The room socket, `/ws/rooms/{slug}`.
//!
//! On connect the consumer joins the room's group (with presence) *before* reading the last
//! messages from the database, so nothing sent in between is lost; a message that shows up
//! both ways is sent once (`shown_through`). A client that reconnects with `?last_id=N` gets
//! what it missed after message N as well as the last 50 in their current state (edits and
//! deletes included); clients merge by message id, so nothing is doubled.
//!
//! A sent message is written and broadcast in one transaction: the room's row lock orders
//! the room's messages (ids grow in commit order), and the broadcast happens only if the
//! message was stored. The same transaction first takes an advisory lock on the sender, so the
//! per-user rate limit counts and inserts without a race, whatever socket or instance sends.
//!
//! Every client field that reaches other members has a bound: the body (`MAX_MESSAGE`
//! characters) and the `nonce` echoed in the broadcast (`MAX_NONCE` printable ASCII
//! characters); typing notices carry nothing from the client.
//!
//! While the database cannot be reached, a message is refused with an error frame (`code`
//! `unavailable`) on a socket that stays open, as a too-fast one is; it can be sent again once
//! the database is back.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use tokio::time::Instant;

use super::room::{self, ChatMessage, Room};
use crate::{
    channels::{ChannelLayer, Delivery, PresenceUser},
    notifications::{self, Kind, NewNotification, NotifyError},
    web::{
        auth::User,
        ws::{Connection, Consumer, ConsumerError, close_code},
    },
};

/// Messages shown on join, and per "older" request.
const PAGE: i64 = 50;
/// Messages a reconnecting client is sent after the one it saw last, at most.
const RESUME_LIMIT: i64 = 500;
/// Longest message, in characters.
pub const MAX_MESSAGE: usize = 2000;
/// Longest `nonce`, in characters (a browser sends a 36-character UUID).
pub const MAX_NONCE: usize = 64;
/// Per user, across instances: at most this many messages...
const RATE_LIMIT: i64 = 10;
/// ...in this window.
const RATE_WINDOW_SECS: f64 = 10.0;
/// A client's typing notices are passed on at most this often.
const TYPING_EVERY: Duration = Duration::from_secs(2);

pub struct ChatConsumer {
    room: Room,
    user: User,
    /// The newest message sent to this client from the database on connect; live copies of
    /// it and older ones are skipped.
    shown_through: i64,
    last_typing: Option<Instant>,
}

#[derive(Deserialize)]
pub struct Params {
    slug: String,
}

/// Frames from the client.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Incoming {
    Send {
        body: String,
        /// Echoed back in the broadcast so the sender can match its own message.
        #[serde(default)]
        nonce: Option<String>,
    },
    Typing,
    Edit {
        id: i64,
        body: String,
    },
    Delete {
        id: i64,
    },
    /// Older messages than `before`, for scrolling back.
    History {
        before: i64,
    },
}

/// Channel-layer messages to the room's group.
#[derive(Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    #[serde(rename = "chat.message")]
    Message { message: MessageId },
    #[serde(rename = "chat.update")]
    Update {},
    #[serde(rename = "chat.typing")]
    Typing { user_id: i64 },
    #[serde(rename = "presence.join")]
    PresenceJoin {},
    #[serde(rename = "presence.leave")]
    PresenceLeave {},
}

#[derive(Deserialize)]
pub struct MessageId {
    id: i64,
}

/// Frames to the client besides forwarded events.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Outgoing<'a> {
    Hello {
        room: &'a str,
        you: Me<'a>,
        messages: Vec<ChatMessage>,
        /// Whether older messages than the first one exist.
        more: bool,
        /// The client missed too much to resume: it drops what it shows and starts over.
        gap: bool,
        presence: Vec<Present>,
    },
    History {
        messages: Vec<ChatMessage>,
        more: bool,
    },
    Error {
        code: &'a str,
        message: String,
    },
}

#[derive(Serialize)]
struct Me<'a> {
    id: i64,
    username: &'a str,
    is_admin: bool,
}

#[derive(Serialize)]
struct Present {
    channel: String,
    user_id: Option<i64>,
    username: Option<String>,
}

/// Broadcasts to the room's group.
#[derive(Serialize)]
#[serde(tag = "type")]
enum Broadcast<'a> {
    #[serde(rename = "chat.message")]
    Message {
        message: &'a ChatMessage,
        nonce: Option<&'a str>,
    },
    #[serde(rename = "chat.update")]
    Update { message: &'a ChatMessage },
    #[serde(rename = "chat.typing")]
    Typing { user_id: i64, username: &'a str },
}

fn error(ctx: &mut Connection, code: &str, message: impl Into<String>) {
    ctx.send_json(&Outgoing::Error {
        code,
        message: message.into(),
    });
}

fn too_fast(ctx: &mut Connection) {
    error(
        ctx,
        "rate_limited",
        "You are sending messages too fast; wait a few seconds.",
    );
}

/// A send's `nonce`, if any: 1 to [`MAX_NONCE`] printable ASCII characters, as it is echoed to
/// every member of the room.
fn check_nonce(nonce: Option<&str>) -> Result<(), String> {
    match nonce {
        Some(n)
            if n.is_empty() || n.len() > MAX_NONCE || !n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Err(format!(
                "A nonce is 1 to {MAX_NONCE} printable ASCII characters without spaces."
            ))
        }
        _ => Ok(()),
    }
}

/// A message body: trimmed, 1 to 2,000 characters.
pub fn parse_body(raw: &str) -> Result<&str, String> {
    let body = raw.trim();
    match body.chars().count() {
        0 => Err("A message cannot be empty.".into()),
        n if n > MAX_MESSAGE => Err(format!(
            "The message is {n} characters long; the limit is {MAX_MESSAGE}."
        )),
        _ => Ok(body),
    }
}

impl Consumer for ChatConsumer {
    type Params = Params;
    type Incoming = Incoming;
    type Event = Event;

    #[tracing::instrument(skip_all, fields(room = %params.slug))]
    async fn connect(ctx: &mut Connection, params: Params) -> Result<Self, ConsumerError> {
        let user = ctx
            .user()
            .cloned()
            .ok_or_else(ConsumerError::unauthorized)?;
        let db = ctx.state().db.clone();
        // A private room of others closes like a missing one (`room::open`).
        let room = room::open(&db, &params.slug, &user)
            .await?
            .ok_or_else(|| ConsumerError::close(close_code::NOT_FOUND, "no such room"))?;
        if !room.is_private {
            sqlx::query!(
                "INSERT INTO chat_members (room_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                room.id,
                user.id
            )
            .execute(&db)
            .await?;
        }
        let group = room.group();
        let me = PresenceUser {
            id: user.id,
            username: user.username.clone(),
        };
        ctx.subscription()
            .join_with_presence(&group, Some(me), serde_json::json!({}))
            .await?;

        // Joined first, read second: a message committed in between arrives live too, and
        // `shown_through` drops that copy.
        let mut messages = room::before(&db, room.id, None, PAGE + 1).await?;
        let more = messages.len() as i64 > PAGE;
        if more {
            messages.remove(0);
        }
        // Resuming: what the client missed after its last message, unless that is more than
        // RESUME_LIMIT; then it starts over from the latest 50 (`gap`) rather than be shown a
        // hole it cannot see.
        let mut gap = false;
        if let Some(last_seen) = ctx.resume_from() {
            let oldest_shown = messages.first().map_or(i64::MAX, |m| m.id);
            if last_seen < oldest_shown {
                let missed = room::after(&db, room.id, last_seen, RESUME_LIMIT).await?;
                if missed.len() as i64 == RESUME_LIMIT {
                    gap = true;
                } else {
                    messages.retain(|m| m.id > missed.last().map_or(0, |l| l.id));
                    messages.splice(0..0, missed);
                }
            }
        }
        let shown_through = messages.last().map_or(0, |m| m.id);
        let presence = ctx
            .channels()
            .presence(&group)
            .await?
            .into_iter()
            .map(|p| Present {
                channel: p.channel,
                user_id: p.user_id,
                username: p.username,
            })
            .collect();
        ctx.send_json(&Outgoing::Hello {
            room: &room.name,
            you: Me {
                id: user.id,
                username: &user.username,
                is_admin: user.is_admin,
            },
            messages,
            more,
            gap,
            presence,
        });
        Ok(Self {
            room,
            user,
            shown_through,
            last_typing: None,
        })
    }

    #[tracing::instrument(skip_all, fields(room = %self.room.slug, user_id = self.user.id))]
    async fn receive(
        &mut self,
        ctx: &mut Connection,
        message: Incoming,
    ) -> Result<(), ConsumerError> {
        match self.handle(ctx, message).await {
            // The database is down or unreachable: this message is refused as a too-fast one
            // is, in the chat's own words (static/js/chat.js shows them and keeps the text to
            // send again), and the socket stays open for when it is back. Closing it instead
            // (1011) sent every client into a reconnect loop through the whole outage.
            Err(ConsumerError::Unavailable(e)) => {
                tracing::warn!(error = %e, "database unavailable; chat message refused");
                error(
                    ctx,
                    "unavailable",
                    "The chat cannot reach its database right now; try again in a moment.",
                );
                Ok(())
            }
            handled => handled,
        }
    }

    async fn event(
        &mut self,
        ctx: &mut Connection,
        event: Event,
        delivery: &Delivery,
    ) -> Result<(), ConsumerError> {
        match event {
            Event::Message { message } if message.id <= self.shown_through => {}
            Event::Typing { user_id } if user_id == self.user.id => {}
            _ => ctx.forward(delivery),
        }
        Ok(())
    }
}

impl ChatConsumer {
    /// One frame from the client ([`Consumer::receive`] turns an outage into a refusal).
    async fn handle(
        &mut self,
        ctx: &mut Connection,
        message: Incoming,
    ) -> Result<(), ConsumerError> {
        match message {
            Incoming::Send { body, nonce } => self.send(ctx, &body, nonce.as_deref()).await,
            Incoming::Typing => {
                if self
                    .last_typing
                    .is_some_and(|at| at.elapsed() < TYPING_EVERY)
                {
                    return Ok(());
                }
                self.last_typing = Some(Instant::now());
                let typing = Broadcast::Typing {
                    user_id: self.user.id,
                    username: &self.user.username,
                };
                if let Err(e) = ctx.channels().group_send(&self.room.group(), &typing).await {
                    tracing::warn!(error = %e, "cannot send a typing notice");
                }
                Ok(())
            }
            Incoming::Edit { id, body } => self.edit(ctx, id, &body).await,
            Incoming::Delete { id } => self.delete(ctx, id).await,
            Incoming::History { before } => {
                let db = ctx.state().db.clone();
                let mut messages = room::before(&db, self.room.id, Some(before), PAGE + 1).await?;
                let more = messages.len() as i64 > PAGE;
                if more {
                    messages.remove(0);
                }
                ctx.send_json(&Outgoing::History { messages, more });
                Ok(())
            }
        }
    }
}

/// How many messages `user_id` stored in the last `RATE_WINDOW_SECS`.
async fn recent_sends<'e>(db: impl PgExecutor<'e>, user_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM chat_messages
            WHERE author_id = $1 AND created_at > now() - make_interval(secs => $2)"#,
        user_id,
        RATE_WINDOW_SECS
    )
    .fetch_one(db)
    .await
}

/// Takes the sender's send lock until `tx` ends and returns their recent sends, counted under
/// it: a concurrent send by the same user (any socket, any instance) waits here until this one
/// has committed its message or rolled back, so it counts that message too. An advisory lock
/// rather than a counter table: the limit stays the sliding window over the stored messages
/// themselves (no second record to drift from them or to clean up), and the lock is per user,
/// so different users never wait for each other.
async fn lock_sender(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    user_id: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended('hearth.chat.send', $1))",
        user_id
    )
    .execute(&mut **tx)
    .await?;
    recent_sends(&mut **tx, user_id).await
}

impl ChatConsumer {
    async fn send(
        &mut self,
        ctx: &mut Connection,
        raw: &str,
        nonce: Option<&str>,
    ) -> Result<(), ConsumerError> {
        let body = match check_nonce(nonce).and_then(|()| parse_body(raw)) {
            Ok(body) => body,
            Err(e) => {
                error(ctx, "invalid", e);
                return Ok(());
            }
        };
        let state = ctx.state().clone();
        // A flood past the limit is refused on a plain read, without queueing on the sender's
        // lock; the count that lets a message in is the one taken under the lock.
        if recent_sends(&state.db, self.user.id).await? >= RATE_LIMIT {
            too_fast(ctx);
            return Ok(());
        }
        let mut tx = state.db.begin().await?;
        if lock_sender(&mut tx, self.user.id).await? >= RATE_LIMIT {
            tx.rollback().await?;
            too_fast(ctx);
            return Ok(());
        }
        // The room's row lock: this room's messages commit in id order.
        sqlx::query!(
            "UPDATE chat_rooms SET last_message_at = now() WHERE id = $1",
            self.room.id
        )
        .execute(&mut *tx)
        .await?;
        let message = sqlx::query_as!(
            ChatMessage,
            r#"INSERT INTO chat_messages (room_id, author_id, body) VALUES ($1, $2, $3)
               RETURNING id, author_id, $4::text AS "author?", body, created_at,
                         false AS "edited!", false AS "deleted!""#,
            self.room.id,
            self.user.id,
            body,
            self.user.username
        )
        .fetch_one(&mut *tx)
        .await?;
        self.notify_mentions(&mut tx, &state.channels, &message)
            .await?;
        let broadcast = Broadcast::Message {
            message: &message,
            nonce,
        };
        state
            .channels
            .group_send_in(&mut tx, &self.room.group(), &broadcast)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A notification for each user named with `@` who may read the room (not the author).
    /// (Called with the sender's lock held: it takes notification locks after it, never before.)
    async fn notify_mentions(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        channels: &ChannelLayer,
        message: &ChatMessage,
    ) -> Result<(), ConsumerError> {
        let names = room::mentions(&message.body);
        if names.is_empty() {
            return Ok(());
        }
        let mentioned = sqlx::query_scalar!(
            "SELECT u.id FROM users u
              WHERE lower(u.username) = ANY($1) AND u.id <> $2
                AND (NOT $3 OR EXISTS (SELECT 1 FROM chat_members m
                                        WHERE m.room_id = $4 AND m.user_id = u.id))
              ORDER BY u.id",
            &names,
            self.user.id,
            self.room.is_private,
            self.room.id
        )
        .fetch_all(&mut **tx)
        .await?;
        let title = format!("{} mentioned you in {}", self.user.username, self.room.name);
        let url = format!("/chat/{}#m{}", self.room.slug, message.id);
        let key = format!("mention:{}", message.id);
        for user_id in mentioned {
            let notification = NewNotification {
                user_id,
                kind: Kind::Mention,
                title: &title,
                url: &url,
                dedupe_key: &key,
            };
            notifications::notify(tx, channels, &notification)
                .await
                .map_err(|e| match e {
                    NotifyError::Database(e) => ConsumerError::from(e),
                    NotifyError::Channel(e) => ConsumerError::from(e),
                })?;
        }
        Ok(())
    }

    /// Edits the user's own message.
    async fn edit(
        &mut self,
        ctx: &mut Connection,
        id: i64,
        raw: &str,
    ) -> Result<(), ConsumerError> {
        let body = match parse_body(raw) {
            Ok(body) => body,
            Err(e) => {
                error(ctx, "invalid", e);
                return Ok(());
            }
        };
        let state = ctx.state().clone();
        let mut tx = state.db.begin().await?;
        let edited = sqlx::query_as!(
            ChatMessage,
            r#"UPDATE chat_messages SET body = $4, edited_at = now()
                WHERE id = $1 AND room_id = $2 AND author_id = $3 AND deleted_at IS NULL
               RETURNING id, author_id, $5::text AS "author?", body, created_at,
                         true AS "edited!", false AS "deleted!""#,
            id,
            self.room.id,
            self.user.id,
            body,
            self.user.username
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(message) = edited else {
            error(ctx, "forbidden", "You can only edit your own messages.");
            return Ok(());
        };
        self.broadcast_update(&state.channels, &mut tx, &message)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a message: the author's own, or any as an administrator (moderation).
    async fn delete(&mut self, ctx: &mut Connection, id: i64) -> Result<(), ConsumerError> {
        let state = ctx.state().clone();
        let mut tx = state.db.begin().await?;
        let deleted = sqlx::query_as!(
            ChatMessage,
            r#"UPDATE chat_messages m SET body = '', deleted_at = now(), deleted_by = $3
                WHERE m.id = $1 AND m.room_id = $2 AND m.deleted_at IS NULL
                  AND (m.author_id = $3 OR $4)
               RETURNING m.id, m.author_id,
                         (SELECT username FROM users WHERE id = m.author_id) AS "author?",
                         m.body, m.created_at, m.edited_at IS NOT NULL AS "edited!",
                         true AS "deleted!""#,
            id,
            self.room.id,
            self.user.id,
            self.user.is_admin
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(message) = deleted else {
            error(ctx, "forbidden", "You can only delete your own messages.");
            return Ok(());
        };
        if message.author_id != Some(self.user.id) {
            tracing::info!(message_id = id, "message removed by a moderator");
        }
        self.broadcast_update(&state.channels, &mut tx, &message)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn broadcast_update(
        &self,
        channels: &ChannelLayer,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        message: &ChatMessage,
    ) -> Result<(), ConsumerError> {
        channels
            .group_send_in(tx, &self.room.group(), &Broadcast::Update { message })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_short_printable_ascii() {
        assert!(check_nonce(None).is_ok());
        // What static/js/chat.js sends: a UUID, or a random number where there is none.
        assert!(check_nonce(Some("0b7f6a52-3c4d-4e5f-8a9b-0c1d2e3f4a5b")).is_ok());
        assert!(check_nonce(Some("0.9130837298121")).is_ok());
        assert!(check_nonce(Some(&"n".repeat(MAX_NONCE))).is_ok());
        let long = "n".repeat(MAX_NONCE + 1);
        for bad in ["", "two words", "tab\there", "café", &long] {
            assert!(check_nonce(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
