//! Home app: the front page, rendered from the database.
//!
//! It shows what the site is (members, posts), never what it runs on: the PostgreSQL version
//! and other server internals help an attacker pick exploits and are for administrators
//! (`/ops/db`).

use askama::Template;
use axum::{Router, extract::State, response::IntoResponse, routing::get};

use crate::web::{AppState, Layout, WebError, render};

pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(home))
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    layout: Layout,
    members: i64,
    newest: Vec<String>,
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
    let posts = sqlx::query_as!(
        Recent,
        "SELECT p.slug, p.title, u.username AS author
           FROM posts p JOIN users u ON u.id = p.author_id
          WHERE p.published_at IS NOT NULL
          ORDER BY p.published_at DESC LIMIT 5"
    )
    .fetch_all(&state.db)
    .await?;
    render(&HomePage {
        posts,
        layout,
        members,
        newest,
    })
}
