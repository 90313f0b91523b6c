//! The guestbook's pages: the list of approved entries (page-cached), the form, the posting of
//! an entry, and the page's script.

use std::time::Duration;

use askama::Template;
use axum::{
    Form,
    extract::State,
    handler::Handler,
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use axum_extra::extract::cookie::SignedCookieJar;
use hearth::{
    AppState, Routes,
    cache::{
        headers::{CacheControl, cache_control},
        page::cache_page,
    },
    jobs::Enqueue,
    web::{
        self, Layout, WebError, conditional::conditional_get, flash, render, templates::ago, ws,
    },
};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::{
    Moderate, PAGE_TAG,
    entry::{MESSAGE_MAX, NAME_MAX, NewEntry, Problems},
    live::Live,
};

/// How long the shared page cache keeps the list. An approval drops it at once (by tag), so
/// this only bounds how stale it gets if an invalidation is lost.
const PAGE_TTL: Duration = Duration::from_secs(300);

/// Entries the page shows: the newest.
const SHOWN: i64 = 50;

/// The page's script, compiled into the binary (a file of the app, served by the app).
const SCRIPT: &str = include_str!("../static/guestbook.js");

pub(crate) fn routes(state: &AppState) -> Routes {
    // Anonymous visitors share one stored page; a signed-in visitor, or one with a flash
    // message, gets a page of their own.
    let cached = cache_page(&state.cache, PAGE_TTL)
        .bypass(web::is_personal)
        .tag(PAGE_TAG);
    // Shared caches keep it; browsers ask again each time (and get a 304 from the cache when
    // nothing changed), so a reload shows new entries.
    let revalidate = cache_control(
        CacheControl::new()
            .max_age(0)
            .s_maxage(PAGE_TTL.as_secs() as u32),
    );
    Routes::new()
        // The page cache passes the POST through untouched.
        .route(
            "/guestbook",
            get(list.layer(revalidate)).post(sign).layer(cached),
        )
        .route("/guestbook/sign", get(sign_form))
        .route(
            "/guestbook/guestbook.js",
            get(script).layer(axum::middleware::from_fn(conditional_get)),
        )
        .route("/ws/guestbook/", ws::route::<Live>())
}

/// An approved entry as the page shows it.
struct EntryView {
    id: i64,
    name: String,
    message: String,
    created_at: OffsetDateTime,
}

impl EntryView {
    fn when(&self) -> String {
        ago(self.created_at)
    }
}

#[derive(Template)]
#[template(path = "guestbook/list.html")]
struct ListPage {
    layout: Layout,
    entries: Vec<EntryView>,
}

/// `GET /guestbook`: the newest approved entries.
async fn list(State(state): State<AppState>, layout: Layout) -> Result<Response, WebError> {
    let rows: Vec<(i64, String, String, OffsetDateTime)> = sqlx::query_as(
        "SELECT id, name, message, created_at FROM guestbook_entries
          WHERE status = 'approved' ORDER BY id DESC LIMIT $1",
    )
    .bind(SHOWN)
    .fetch_all(&state.db)
    .await?;
    let entries = rows
        .into_iter()
        .map(|(id, name, message, created_at)| EntryView {
            id,
            name,
            message,
            created_at,
        })
        .collect();
    // The page has no form, so nothing in it is the visitor's own unless they are signed in
    // or have a flash message (the layout marks the request personal then, and the page
    // cache does not share it).
    let layout = if layout.user.is_none() {
        layout.for_shared_cache()
    } else {
        layout
    };
    Ok(render(&ListPage { layout, entries })?.into_response())
}

#[derive(Template)]
#[template(path = "guestbook/sign.html")]
struct SignPage {
    layout: Layout,
    name: String,
    message: String,
    problems: Problems,
}

impl SignPage {
    fn name_max(&self) -> usize {
        NAME_MAX
    }

    fn message_max(&self) -> usize {
        MESSAGE_MAX
    }
}

/// `GET /guestbook/sign`: the form. Never cached: it carries the visitor's CSRF token.
async fn sign_form(layout: Layout) -> Result<Response, WebError> {
    let page = SignPage {
        layout,
        name: String::new(),
        message: String::new(),
        problems: Problems::default(),
    };
    Ok(render(&page)?.into_response())
}

/// The form as sent. Both fields are bounded by the body limit here, and by [`NewEntry::parse`].
#[derive(Deserialize)]
struct SignForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    message: String,
}

/// `POST /guestbook`: stores the entry and enqueues its moderation in one transaction, so that
/// an entry never waits for a job that does not exist, nor a job for an entry that does not.
async fn sign(
    State(state): State<AppState>,
    layout: Layout,
    jar: SignedCookieJar,
    Form(form): Form<SignForm>,
) -> Result<Response, WebError> {
    let entry = match NewEntry::parse(&form.name, &form.message) {
        Ok(entry) => entry,
        Err(problems) => {
            let page = SignPage {
                layout,
                name: form.name,
                message: form.message,
                problems,
            };
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)?).into_response());
        }
    };
    let mut tx = state.db.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO guestbook_entries (name, message) VALUES ($1, $2) RETURNING id",
    )
    .bind(&entry.name)
    .bind(&entry.message)
    .fetch_one(&mut *tx)
    .await?;
    Enqueue::new(&Moderate { entry_id: id })
        .map_err(internal)?
        .enqueue_on(&mut tx)
        .await
        .map_err(internal)?;
    tx.commit().await?;
    tracing::info!(entry_id = id, "guestbook entry stored, moderation enqueued");
    // The page's script follows the entry named after `#`, and says what became of it.
    let jar = flash::set(
        jar,
        "Thank you! Your entry appears once it has been checked.",
    );
    Ok((jar, Redirect::to(&format!("/guestbook#pending-{id}"))).into_response())
}

fn internal(e: impl std::error::Error + Send + Sync + 'static) -> WebError {
    WebError::Internal(anyhow::Error::new(e))
}

/// `GET /guestbook/guestbook.js`. Browsers revalidate it (`no-cache`) and get a 304 while it
/// is unchanged.
async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
        .into_response()
}
