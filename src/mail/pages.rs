//! The dev mailbox: every message in the outbox, for administrators.

use askama::Template;
use axum::{
    extract::{Path, Query, State},
    response::IntoResponse,
};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::web::{AppState, Layout, WebError, auth::RequireAdmin, render};

const PAGE: i64 = 50;

struct Row {
    id: i64,
    to_address: String,
    subject: String,
    body: String,
    created_at: OffsetDateTime,
    sent_at: Option<OffsetDateTime>,
    claimed_at: Option<OffsetDateTime>,
    transport: Option<String>,
    last_error: Option<String>,
}

impl Row {
    fn when(&self) -> String {
        crate::web::templates::ago(self.created_at)
    }

    /// Sent (by which transport), failing, in doubt or waiting.
    fn status(&self) -> String {
        match (&self.sent_at, &self.claimed_at, &self.transport) {
            (Some(_), _, Some(transport)) => format!("sent ({transport})"),
            (Some(_), _, None) => "sent".into(),
            (None, Some(_), _) => "in doubt".into(),
            (None, None, _) if self.last_error.is_some() => "retrying".into(),
            (None, None, _) => "waiting".into(),
        }
    }
}

#[derive(Template)]
#[template(path = "mail/list.html")]
struct ListPage {
    layout: Layout,
    rows: Vec<Row>,
    older: Option<i64>,
}

#[derive(Template)]
#[template(path = "mail/show.html")]
struct ShowPage {
    layout: Layout,
    mail: Row,
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    before: Option<i64>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    _admin: RequireAdmin,
    layout: Layout,
    Query(query): Query<ListQuery>,
) -> Result<impl IntoResponse, WebError> {
    let mut rows = sqlx::query_as!(
        Row,
        "SELECT id, to_address, subject, body, created_at, sent_at, claimed_at, transport, last_error
           FROM outbox WHERE id < coalesce($1, 9223372036854775807)
          ORDER BY id DESC LIMIT $2",
        query.before,
        PAGE + 1
    )
    .fetch_all(&state.db)
    .await?;
    let older = if rows.len() as i64 > PAGE {
        rows.truncate(PAGE as usize);
        rows.last().map(|r| r.id)
    } else {
        None
    };
    render(&ListPage {
        layout,
        rows,
        older,
    })
}

pub(super) async fn show(
    State(state): State<AppState>,
    _admin: RequireAdmin,
    layout: Layout,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, WebError> {
    let mail = sqlx::query_as!(
        Row,
        "SELECT id, to_address, subject, body, created_at, sent_at, claimed_at, transport, last_error
           FROM outbox WHERE id = $1",
        id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or(WebError::NotFound)?;
    render(&ShowPage { layout, mail })
}
