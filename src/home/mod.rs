//! Home app: the front page, rendered from the database.
//!
//! It shows what the site is (members, posts), never what it runs on: the PostgreSQL version
//! and other server internals help an attacker pick exploits and are for administrators
//! (`/ops/db`).
//!
//! The latest posts are a cached fragment ([`crate::cache::fragment`]): the same for every
//! visitor, signed in or not, so the page around it stays personal while the query and the
//! rendering behind the list run once per change of the list (publishing drops the
//! [`LIST_TAG`] it is stored with) or per [`LATEST_TTL`].

use std::time::Duration;

use askama::Template;
use axum::{extract::State, response::IntoResponse, routing::get};

use crate::{
    cache::fragment::Fragment,
    publishing::LIST_TAG,
    web::{AppState, Layout, WebError, render},
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
    members: i64,
    newest: Vec<String>,
    latest: Fragment,
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
    layout: Layout,
) -> Result<impl IntoResponse, WebError> {
    let members = sqlx::query_scalar!(r#"SELECT count(*) AS "members!" FROM users"#)
        .fetch_one(&state.db)
        .await?;
    let newest =
        sqlx::query_scalar!("SELECT username FROM users ORDER BY created_at DESC, id DESC LIMIT 5")
            .fetch_all(&state.db)
            .await?;
    let latest = state
        .cache
        .fragment("home-latest-posts", LATEST_TTL)
        .tags(&[LIST_TAG])
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
        .map_err(anyhow::Error::new)?;
    render(&HomePage {
        latest,
        layout,
        members,
        newest,
    })
}
