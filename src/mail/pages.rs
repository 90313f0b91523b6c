//! The mailbox: the outbox as pages. Administrators read every message; while mail goes to
//! the dev mailbox (no `HEARTH_SMTP_URL`), every user also reads the messages sent to them —
//! what a new user needs to see their "post published" mail without a mail server.

use askama::Template;
use axum::{
    Extension,
    extract::{Path, Query, State},
    response::IntoResponse,
};
use serde::Deserialize;
use time::OffsetDateTime;

use super::DevMailbox;
use crate::web::{
    AppState, Layout, WebError,
    auth::{RequireLogin, User},
    render,
};

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

    /// The body escaped, with its web addresses as links, as the mail's HTML part has them.
    fn linked_body(&self) -> String {
        super::html::linked(&self.body)
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
    dev_mailbox: bool,
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

/// Whose mail `user` may read: everyone's (`None`) for admins, their own in dev mode.
fn readable_by(dev: DevMailbox, user: &User) -> Result<Option<i64>, WebError> {
    if user.is_admin {
        Ok(None)
    } else if dev.0 {
        Ok(Some(user.id))
    } else {
        Err(WebError::Forbidden(
            "Mail is delivered by SMTP; the mailbox is for administrators.".into(),
        ))
    }
}

pub(super) async fn list(
    State(state): State<AppState>,
    Extension(dev): Extension<DevMailbox>,
    login: RequireLogin,
    layout: Layout,
    Query(query): Query<ListQuery>,
) -> Result<impl IntoResponse, WebError> {
    let only = readable_by(dev, &login.user)?;
    let mut rows = sqlx::query_as!(
        Row,
        "SELECT id, to_address, subject, body, created_at, sent_at, claimed_at, transport, last_error
           FROM outbox
          WHERE id < coalesce($1, 9223372036854775807) AND ($3::bigint IS NULL OR user_id = $3)
          ORDER BY id DESC LIMIT $2",
        query.before,
        PAGE + 1,
        only
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
        dev_mailbox: dev.0,
        rows,
        older,
    })
}

/// One message; someone else's is a 404, as if it did not exist.
pub(super) async fn show(
    State(state): State<AppState>,
    Extension(dev): Extension<DevMailbox>,
    login: RequireLogin,
    layout: Layout,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, WebError> {
    let only = readable_by(dev, &login.user)?;
    let mail = sqlx::query_as!(
        Row,
        "SELECT id, to_address, subject, body, created_at, sent_at, claimed_at, transport, last_error
           FROM outbox WHERE id = $1 AND ($2::bigint IS NULL OR user_id = $2)",
        id,
        only
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or(WebError::NotFound)?;
    render(&ShowPage { layout, mail })
}
