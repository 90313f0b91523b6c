//! The benchmark protocol's endpoints, on the same platform pieces the apps use.
//!
//! * W1, `GET /bench/page`: the 20 latest posts, one query, an askama page extending a layout;
//!   the query goes through the pool, as the product's own pages read ([`page`] says why);
//!   `GET /bench/page-pipelined` is the same page read through `db::Pipeline`, for comparison;
//! * W2, `GET /bench/cached`: the same page behind `cache_page(60s)` (the two-tier cache);
//! * W3, `GET /bench/gather`: three concurrent calls to the upstream stub, through the gateway
//!   app's fan-out and shared client, as `/api/aggregate` makes them;
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

use std::{sync::Arc, time::Duration};

use axum::response::{IntoResponse, Response};
use hearth::gateway::{self, Upstreams, fan_out};
use url::Url;

use askama::Template;

use hearth::{
    cache::page::cache_page,
    channels::GroupName,
    web::{
        AppState, WebError, render,
        sse::{self, LastEventId, StreamSlot},
        ws::{self, Connection, Consumer, ConsumerError, close_code},
    },
};

/// The routes, served outside the CSRF layer (the load clients have no session).
pub fn routes(state: &AppState, upstream: &Url) -> hearth::Routes {
    let upstreams = Arc::new(w3_upstreams(upstream));
    hearth::Routes::new()
        .route("/bench/page", get(page))
        .route("/bench/page-pipelined", get(page_pipelined))
        .route("/bench/gather", get(move || gather(Arc::clone(&upstreams))))
        .route(
            "/bench/cached",
            get(page).layer(cache_page(&state.cache, Duration::from_secs(60))),
        )
        .route("/ws/chat/{room}/", ws::route::<ChatRoom>())
        .route("/bench/events", get(events))
        .route("/bench/publish", post(publish))
}

/// The protocol's `/upstream/1`, `/2` and `/3` under `base`, with the Django peer's 10 s client
/// timeout, in the gateway's own `HEARTH_UPSTREAMS` syntax.
fn w3_upstreams(base: &Url) -> Upstreams {
    let base = base.as_str().trim_end_matches('/');
    let spec = format!("1={base}/upstream/1@10s,2={base}/upstream/2@10s,3={base}/upstream/3@10s");
    Upstreams::parse(&spec).expect("an http(s) base URL makes three valid upstreams")
}

#[derive(Serialize)]
struct Gathered {
    count: usize,
    /// The upstream bodies as they came (checked JSON, not re-encoded).
    results: Vec<Box<serde_json::value::RawValue>>,
}

/// W3: the three bodies in order, or `502` naming the first upstream that failed (the peer
/// answers 500 there; either way the load client counts a non-2xx answer).
#[tracing::instrument(skip_all)]
async fn gather(upstreams: Arc<Upstreams>) -> Result<Response, WebError> {
    let client = gateway::client().map_err(|e| WebError::Internal(e.into()))?;
    let mut results = Vec::with_capacity(upstreams.as_slice().len());
    for fetched in fan_out(client, upstreams.as_slice()).await {
        match fetched.outcome {
            Ok(data) => results.push(data),
            Err(e) => {
                let message = format!("upstream {}: {e}", fetched.name);
                let body = serde_json::json!({ "error": { "status": 502, "message": message } });
                return Ok((StatusCode::BAD_GATEWAY, Json(body)).into_response());
            }
        }
    }
    let answer = Gathered {
        count: results.len(),
        results,
    };
    Ok(Json(answer).into_response())
}

/// A W5 client's frame (also read by the floor server, [`crate::ws_floor`]).
#[derive(Deserialize)]
pub(crate) struct Message {
    pub(crate) message: String,
}

/// What W5 forwards to every member of the room.
#[derive(Serialize)]
pub(crate) struct ChatMessage<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) message: &'a str,
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
struct Page<'a> {
    posts: &'a [PostView],
}

/// One post of the page, as it is shown.
pub struct PostView {
    id: i32,
    title: String,
    author_name: String,
    excerpt: String,
    iso: String,
    date: String,
}

impl PostView {
    /// A row of [`PAGE_QUERY`]: the excerpt is the body's first 100 characters.
    pub fn new(
        id: i32,
        title: String,
        author_name: String,
        body: String,
        published_at: time::OffsetDateTime,
    ) -> Self {
        let iso = time::format_description::well_known::Rfc3339;
        let date = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
        Self {
            id,
            title,
            author_name,
            excerpt: first_chars(body, 100),
            iso: published_at.format(&iso).unwrap_or_default(),
            date: published_at.format(&date).unwrap_or_default(),
        }
    }
}

impl PostView {
    /// A row of [`PAGE_QUERY`] read by tokio-postgres (the pipelined path and the floor).
    pub fn from_row(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self::new(
            row.try_get("id")?,
            row.try_get("title")?,
            row.try_get("author_name")?,
            row.try_get("body")?,
            row.try_get("published_at")?,
        ))
    }
}

/// W1's one query: the 20 latest posts.
pub const PAGE_QUERY: &str = "SELECT id, title, author_name, body, published_at FROM bench_posts
     ORDER BY published_at DESC LIMIT 20";

/// The page of `posts` (the floor server renders it once, from the same rows).
pub fn render_page(posts: &[PostView]) -> Result<String, askama::Error> {
    Page { posts }.render()
}

/// W1: one query, one template. The query goes through the pool, as the product's pages read
/// (`/posts`, a post, the home page); `db::Pipeline`, which shares one connection between
/// concurrent reads, is the platform's faster path for short reads, but no page of the product
/// takes it, and W1 measures what the product does.
async fn page(State(state): State<AppState>) -> Result<axum::response::Html<String>, WebError> {
    let rows: Vec<(i32, String, String, String, time::OffsetDateTime)> =
        sqlx::query_as(PAGE_QUERY).fetch_all(&state.db).await?;
    let posts: Vec<PostView> = rows
        .into_iter()
        .map(|(id, title, author, body, at)| PostView::new(id, title, author, body, at))
        .collect();
    render(&Page { posts: &posts })
}

/// W1's page read through `db::Pipeline` instead of the pool: not a protocol workload, but the
/// figure beside W1 that says what the product's pages would gain on the pipelined path.
async fn page_pipelined(
    State(state): State<AppState>,
) -> Result<axum::response::Html<String>, WebError> {
    let rows = state.reads.query(PAGE_QUERY, &[]).await?;
    let posts = rows
        .iter()
        .map(PostView::from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebError::Internal(e.into()))?;
    render(&Page { posts: &posts })
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
/// byte-identical data. Several instances started at once on a fresh database (bench/sockets.sh
/// starts six) take turns: the first seeds, the others find the posts there.
pub async fn seed(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('hearth-bench seed bench_posts'))")
        .execute(&mut *tx)
        .await?;
    let count = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM bench_posts")
        .fetch_one(&mut *tx)
        .await?;
    if count == 10_000 {
        return Ok(());
    }
    sqlx::query("DELETE FROM bench_posts")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
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
    sqlx::query("ANALYZE bench_posts").execute(pool).await?;
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
