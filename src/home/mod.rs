//! Home app: the front page, rendered from the database.

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
    server_version: String,
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
    let stats = sqlx::query!(
        r#"SELECT (SELECT count(*) FROM users) AS "members!",
                  split_part(current_setting('server_version'), ' ', 1) AS "server_version!""#
    )
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
        members: stats.members,
        newest,
        server_version: stats.server_version,
    })
}
