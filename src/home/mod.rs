//! Home app: the front page, rendered from the database.
//!
//! It shows what the site has to read and where people talk: the latest posts for everyone,
//! the active public rooms for members. Never what it runs on (the PostgreSQL version is on
//! `/ops/db`), nor who its members are: the member count and the newest usernames are for
//! administrators, whose front page shows them.
//!
//! The latest posts are a cached fragment ([`crate::cache::fragment`]): the same for every
//! visitor, signed in or not, so the page around it stays personal while the query and the
//! rendering behind the list run once per change of the list (publishing drops the
//! [`LIST_TAG`] it is stored with) or per [`LATEST_TTL`]. It is built from the primary:
//! stored in the shared cache, a list read from a replica that had not yet replayed the post
//! whose publication dropped it would stay stale until its TTL. The rooms and the member
//! figures may lag, and come from a read replica when one serves (`LagTolerant`).

use std::time::Duration;

use askama::Template;
use axum::{extract::State, response::IntoResponse, routing::get};

use sqlx::PgPool;

use crate::{
    cache::fragment::Fragment,
    publishing::LIST_TAG,
    web::{AppState, Layout, WebError, render, replicas::LagTolerant},
};

/// How long the latest posts are kept when no publishing drops them first (a bound on how
/// stale they can get if an invalidation is lost).
const LATEST_TTL: Duration = Duration::from_secs(300);

use crate::{App, Routes};

/// The home app.
pub fn app() -> App {
    App::new("home").routes(|_| Ok(routes()))
}

fn routes() -> Routes {
    Routes::new().route("/", get(home))
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    layout: Layout,
    latest: Fragment,
    /// The public rooms with the latest messages (for members: the chat is theirs).
    rooms: Vec<ActiveRoom>,
    /// For administrators only: how many members, and the newest.
    members: Option<Members>,
}

#[derive(sqlx::FromRow)]
struct ActiveRoom {
    slug: String,
    name: String,
    last_message_at: Option<time::OffsetDateTime>,
}

impl ActiveRoom {
    fn active(&self) -> String {
        self.last_message_at
            .map(crate::web::templates::ago)
            .unwrap_or_else(|| "no messages yet".into())
    }
}

struct Members {
    count: i64,
    newest: Vec<String>,
}

/// The latest posts: a fragment shared by every visitor, so nothing of one visitor in it.
#[derive(Template)]
#[template(path = "fragments/latest_posts.html")]
struct LatestPosts {
    posts: Vec<Recent>,
}

/// A recently published post, for the front page.
struct Recent {
    slug: String,
    title: String,
    author: String,
}

#[tracing::instrument(skip_all)]
async fn home(
    State(state): State<AppState>,
    LagTolerant(db): LagTolerant,
    layout: Layout,
) -> Result<impl IntoResponse, WebError> {
    let latest = state
        .cache
        .fragment("home-latest-posts", LATEST_TTL)
        .tags(&[LIST_TAG])
        // From the primary (`state.db`): the fragment is stored in the shared cache.
        .render(|| async {
            let posts = sqlx::query_as!(
                Recent,
                "SELECT p.slug, p.title, u.username AS author
                   FROM posts p JOIN users u ON u.id = p.author_id
                  WHERE p.published_at IS NOT NULL
                  ORDER BY p.published_at DESC LIMIT 5"
            )
            .fetch_all(&state.db)
            .await?;
            Ok(LatestPosts { posts })
        })
        .await
        .map_err(fragment_failed)?;
    let rooms = match &layout.user {
        Some(_) => active_rooms(&db).await?,
        None => Vec::new(),
    };
    let members = match &layout.user {
        Some(user) if user.is_admin => Some(members(&db).await?),
        _ => None,
    };
    render(&HomePage {
        latest,
        layout,
        rooms,
        members,
    })
}

/// A failed fragment as the page's error: the database out of reach (the cache's tier, or the
/// query behind the list) is a 503 like any page's, anything else an internal error.
fn fragment_failed(e: crate::cache::CacheError) -> WebError {
    use crate::cache::CacheError;
    let database = match &e {
        CacheError::Database(db) => Some(&**db),
        CacheError::Compute { source, .. } => source.downcast_ref::<sqlx::Error>(),
        _ => None,
    };
    match database {
        Some(
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_),
        ) => WebError::Unavailable(e.into()),
        _ => WebError::Internal(anyhow::Error::new(e)),
    }
}

/// The five public rooms with the most recent messages.
async fn active_rooms(db: &PgPool) -> Result<Vec<ActiveRoom>, sqlx::Error> {
    sqlx::query_as(
        "SELECT slug, name, last_message_at FROM chat_rooms
          WHERE NOT is_private
          ORDER BY last_message_at DESC NULLS LAST, name LIMIT 5",
    )
    .fetch_all(db)
    .await
}

async fn members(db: &PgPool) -> Result<Members, sqlx::Error> {
    let count = sqlx::query_scalar!(r#"SELECT count(*) AS "members!" FROM users"#)
        .fetch_one(db)
        .await?;
    let newest =
        sqlx::query_scalar!("SELECT username FROM users ORDER BY created_at DESC, id DESC LIMIT 5")
            .fetch_all(db)
            .await?;
    Ok(Members { count, newest })
}
