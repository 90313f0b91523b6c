//! The benchmark protocol's endpoints, on the same platform pieces the apps use.
//!
//! * W1, `GET /bench/page`: the 20 latest posts, one query, an askama page extending a layout;
//! * W2, `GET /bench/cached`: the same page behind `cache_page(60s)` (the two-tier cache);
//! * W3, `GET /bench/gather`: three concurrent calls to the upstream stub, served by the
//!   gateway app's fan-out (`crate::gateway::bench_routes`);
//! * W5, `GET /ws/chat/{room}/`: a WebSocket consumer; on connect the socket joins the room's
//!   group, and every `{"message": "..."}` a member sends is `group_send` to the room and
//!   forwarded to every member (the sender included) as `{"type":"chat.message","message":...}`.
//! * W6, `GET /bench/events`: an event stream of the `bench.events` group;
//!   `POST /bench/publish` with `{"message": "..."}` sends to it and answers 204.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use serde::{Deserialize, Serialize};

use std::time::Duration;

use askama::Template;

use crate::{
    cache::page::cache_page,
    channels::GroupName,
    web::{
        AppState, WebError, render,
        sse::{self, LastEventId, StreamSlot},
        ws::{self, Connection, Consumer, ConsumerError, close_code},
    },
};

/// The routes, served outside the CSRF layer (the load clients have no session).
pub fn routes(state: &AppState) -> crate::Routes {
    crate::Routes::new()
        .route("/bench/page", get(page))
        .route(
            "/bench/cached",
            get(page).layer(cache_page(&state.cache, Duration::from_secs(60))),
        )
        .route("/ws/chat/{room}/", ws::route::<ChatRoom>())
        .route("/bench/events", get(events))
        .route("/bench/publish", post(publish))
}

/// A W5 client's frame (also read by the floor server, [`super::floor`]).
#[derive(Deserialize)]
pub(super) struct Message {
    pub(super) message: String,
}

/// What W5 forwards to every member of the room.
#[derive(Serialize)]
pub(super) struct ChatMessage<'a> {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) message: &'a str,
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
    slot: StreamSlot,
    last_event_id: LastEventId,
) -> Result<axum::response::Response, WebError> {
    sse::stream(&state.channels, slot, &[events_group()], last_event_id).await
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

#[derive(Template)]
#[template(path = "bench/page.html")]
struct Page {
    posts: Vec<PostView>,
}

struct PostView {
    id: i32,
    title: String,
    author_name: String,
    excerpt: String,
    iso: String,
    date: String,
}

/// W1: one query, one template. The query goes through the pipelined read connections: 64
/// concurrent pages share one connection instead of taking turns on the pool's.
async fn page(State(state): State<AppState>) -> Result<axum::response::Html<String>, WebError> {
    let rows = state
        .reads
        .query(
            "SELECT id, title, author_name, body, published_at FROM bench_posts
             ORDER BY published_at DESC LIMIT 20",
            &[],
        )
        .await?;
    let iso = time::format_description::well_known::Rfc3339;
    let date = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    let posts = rows
        .iter()
        .map(|row| {
            let published_at: time::OffsetDateTime = row.try_get("published_at")?;
            Ok(PostView {
                id: row.try_get("id")?,
                title: row.try_get("title")?,
                author_name: row.try_get("author_name")?,
                excerpt: first_chars(row.try_get("body")?, 100),
                iso: published_at.format(&iso).unwrap_or_default(),
                date: published_at.format(&date).unwrap_or_default(),
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(|e| WebError::Internal(e.into()))?;
    render(&Page { posts })
}

/// The first `n` characters of `text`, cut in place (collecting `chars()` into a new String was
/// 3 % of the page's cost in the W1 profile).
fn first_chars(mut text: String, n: usize) -> String {
    if let Some((end, _)) = text.char_indices().nth(n) {
        text.truncate(end);
    }
    text
}

/// Fills `bench_posts` with the protocol's 10,000 deterministic posts unless they are there.
/// Every value is a function of the row id, as in the peers' `seed.sql`, so both sides serve
/// byte-identical data.
pub async fn seed(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    let count = sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM bench_posts"#)
        .fetch_one(pool)
        .await?;
    if count == 10_000 {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query!("DELETE FROM bench_posts")
        .execute(&mut *tx)
        .await?;
    sqlx::query!(
        r#"WITH w AS (
             SELECT ARRAY['async','buffer','cache','daemon','engine','fiber','graph','heap','index','journal',
                          'kernel','lambda','mutex','node','object','packet','queue','router','socket','thread',
                          'vector','worker','yield','zero','batch','commit','driver','event','frame','gateway',
                          'header','latency','module','network','parser','runtime','schema','stream','token','upstream'] AS a,
                    ARRAY['Ada Lovelace','Alan Turing','Grace Hopper','Edsger Dijkstra','Barbara Liskov',
                          'Donald Knuth','Margaret Hamilton','Ken Thompson','Dennis Ritchie','Frances Allen',
                          'John McCarthy','Leslie Lamport','Radia Perlman','Tony Hoare','Niklaus Wirth',
                          'Adele Goldberg','Butler Lampson','Shafi Goldwasser','Robin Milner','Sophie Wilson'] AS authors
           )
           INSERT INTO bench_posts (id, title, author_name, body, published_at)
           SELECT i,
                  initcap(a[1 + (i * 7) % 40]) || ' ' || a[1 + (i * 13) % 40] || ' and the ' || a[1 + (i * 31) % 40] || ' #' || i,
                  authors[1 + (i * 17) % 20],
                  left((SELECT string_agg(a[1 + ((i * 31 + j * 17 + j * j) % 40)], ' ' ORDER BY j)
                          FROM generate_series(0, 99) AS j), 500),
                  timestamptz '2024-01-01 00:00:00+00' + i * interval '53 minutes' + ((i * 7919) % 1800) * interval '1 second'
           FROM generate_series(1, 10000) AS i, w"#
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::query!("ANALYZE bench_posts").execute(pool).await?;
    tracing::info!("seeded bench_posts with 10,000 posts");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::first_chars;

    #[test]
    fn first_chars_counts_characters_not_bytes() {
        assert_eq!(first_chars("héllo wörld".into(), 7), "héllo w");
        assert_eq!(first_chars("short".into(), 100), "short");
        assert_eq!(first_chars("ééé".into(), 3), "ééé");
        assert_eq!(first_chars(String::new(), 3), "");
    }
}
