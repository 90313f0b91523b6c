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
    render(&HomePage {
        layout,
        members: stats.members,
        newest,
        server_version: stats.server_version,
    })
}
