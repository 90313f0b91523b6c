//! The notifications page, its "mark read" actions, the live stream and the unread count API.

use askama::Template;
use axum::{
    Form, Json,
    extract::{Path, Query, State},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use time::OffsetDateTime;

use super::{Live, unread, user_group};
use crate::web::{
    AppState, Layout, WebError,
    auth::RequireLogin,
    render,
    sse::{self, LastEventId, StreamSlot},
};

const PAGE: i64 = 50;

struct Row {
    id: i64,
    kind: String,
    title: String,
    created_at: OffsetDateTime,
    read_at: Option<OffsetDateTime>,
}

impl Row {
    fn when(&self) -> String {
        crate::web::templates::ago(self.created_at)
    }
}

#[derive(Template)]
#[template(path = "notifications/list.html")]
struct ListPage {
    layout: Layout,
    rows: Vec<Row>,
    unread: i64,
    older: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    before: Option<i64>,
}

#[tracing::instrument(skip_all, fields(user_id = login.user.id))]
pub(super) async fn list(
    State(state): State<AppState>,
    login: RequireLogin,
    layout: Layout,
    Query(query): Query<ListQuery>,
) -> Result<impl IntoResponse, WebError> {
    let user_id = login.user.id;
    let rows = sqlx::query_as!(
        Row,
        "SELECT id, kind, title, created_at, read_at FROM notifications
          WHERE user_id = $1 AND id < coalesce($2, 9223372036854775807)
          ORDER BY id DESC LIMIT $3",
        user_id,
        query.before,
        PAGE + 1
    )
    .fetch_all(&state.db)
    .await?;
    let (rows, older) = paginate(rows);
    let unread = unread(&state.db, user_id).await?;
    render(&ListPage {
        layout,
        rows,
        unread,
        older,
    })
}

/// The first page's rows and the cursor of the next, if there is one.
fn paginate(mut rows: Vec<Row>) -> (Vec<Row>, Option<i64>) {
    if rows.len() as i64 > PAGE {
        rows.truncate(PAGE as usize);
        let older = rows.last().map(|r| r.id);
        (rows, older)
    } else {
        (rows, None)
    }
}

#[derive(Deserialize)]
pub(super) struct ReadForm {
    /// Where to go afterwards: the notification's own link ("open"), or back to the list.
    #[serde(default)]
    open: bool,
}

/// Marks one of the user's notifications read; someone else's is a 404, as if it did not exist.
#[tracing::instrument(skip_all, fields(user_id = login.user.id, notification_id = id))]
pub(super) async fn mark_read(
    State(state): State<AppState>,
    login: RequireLogin,
    Path(id): Path<i64>,
    Form(form): Form<ReadForm>,
) -> Result<Response, WebError> {
    let user_id = login.user.id;
    let mut tx = state.db.begin().await?;
    super::lock_user(&mut tx, user_id).await?;
    let url = sqlx::query_scalar!(
        "UPDATE notifications SET read_at = coalesce(read_at, now())
          WHERE id = $1 AND user_id = $2 RETURNING url",
        id,
        user_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(WebError::NotFound)?;
    send_read(&state, &mut tx, user_id).await?;
    tx.commit().await?;
    // The stored link is the server's own, but a redirect never leaves the site, whatever
    // a row holds (the table only checks that it starts with `/`, which `//host` does).
    let to = if form.open {
        crate::web::safe_next(Some(&url))
    } else {
        "/notifications".into()
    };
    Ok(Redirect::to(&to).into_response())
}

#[tracing::instrument(skip_all, fields(user_id = login.user.id))]
pub(super) async fn mark_all_read(
    State(state): State<AppState>,
    login: RequireLogin,
) -> Result<Response, WebError> {
    let user_id = login.user.id;
    let mut tx = state.db.begin().await?;
    super::lock_user(&mut tx, user_id).await?;
    sqlx::query!(
        "UPDATE notifications SET read_at = now() WHERE user_id = $1 AND read_at IS NULL",
        user_id
    )
    .execute(&mut *tx)
    .await?;
    send_read(&state, &mut tx, user_id).await?;
    tx.commit().await?;
    Ok(Redirect::to("/notifications").into_response())
}

/// Tells the user's other open pages the new unread count.
async fn send_read(
    state: &AppState,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    user_id: i64,
) -> Result<(), WebError> {
    let unread = unread(&mut **tx, user_id).await?;
    state
        .channels
        .group_send_in(tx, &user_group(user_id), &Live::Read { unread })
        .await
        .map_err(|e| WebError::Internal(e.into()))?;
    Ok(())
}

/// The signed-in user's live notifications as server-sent events, starting with a
/// `notification.count` event that carries the current unread count.
#[tracing::instrument(skip_all, fields(user_id = login.user.id))]
pub(super) async fn stream(
    State(state): State<AppState>,
    login: RequireLogin,
    slot: StreamSlot,
    last_event_id: LastEventId,
) -> Result<Response, WebError> {
    let user_id = login.user.id;
    let unread = unread(&state.db, user_id).await?;
    let prelude = format!(
        "event: notification.count\ndata: {{\"type\":\"notification.count\",\"unread\":{unread}}}\n\n"
    );
    sse::stream_with_prelude(
        &state.channels,
        slot,
        &[user_group(user_id)],
        last_event_id,
        &prelude,
    )
    .await
}

#[derive(serde::Serialize)]
pub(super) struct Unread {
    unread: i64,
}

/// `GET /api/notifications/unread`: `{"unread": N}`.
pub(super) async fn unread_count(
    State(state): State<AppState>,
    login: RequireLogin,
) -> Result<Json<Unread>, WebError> {
    Ok(Json(Unread {
        unread: unread(&state.db, login.user.id).await?,
    }))
}
