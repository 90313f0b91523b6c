//! The document pages: the list, creating, the editor page, its plain-text export, renaming,
//! members and their rights, named versions and restoring one, deleting.
//!
//! Changes other editors must see at once go to the document's group: a new title, a restore
//! (as a CRDT update, so concurrent edits elsewhere in the text survive), and changed rights
//! (whose sockets re-read them).

use askama::Template;
use axum::{
    Form,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use axum_extra::extract::SignedCookieJar;
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde::Deserialize;

use super::{
    consumer::Broadcast,
    crdt::State as CrdtState,
    document::{self, Access, Document},
};
use crate::{
    notifications::{self, Kind, NewNotification},
    web::{
        AppState, Layout, WebError, auth::RequireLogin, flash, render, replicas::LagTolerant,
        templates::ago,
    },
};

/// A document title or version name: trimmed, 1 to `max` characters.
fn parse_name(raw: &str, what: &str, max: usize) -> Result<String, WebError> {
    let name = raw.trim();
    match name.chars().count() {
        0 => Err(WebError::Unprocessable(format!(
            "The {what} cannot be empty."
        ))),
        n if n > max => Err(WebError::Unprocessable(format!(
            "The {what} is {n} characters long; the limit is {max}."
        ))),
        _ => Ok(name.to_owned()),
    }
}

/// The document and the user's rights, or 404 for a document they may not see.
async fn open(
    state: &AppState,
    id: i64,
    login: &RequireLogin,
) -> Result<(Document, Access), WebError> {
    document::open(&state.db, id, &login.user)
        .await?
        .ok_or(WebError::NotFound)
}

/// The document if the user's rights pass `allowed`; 403 with `refusal` otherwise.
async fn open_for(
    state: &AppState,
    id: i64,
    login: &RequireLogin,
    allowed: fn(Access) -> bool,
    refusal: &str,
) -> Result<Document, WebError> {
    match open(state, id, login).await? {
        (document, access) if allowed(access) => Ok(document),
        _ => Err(WebError::Forbidden(refusal.into())),
    }
}

async fn open_to_edit(
    state: &AppState,
    id: i64,
    login: &RequireLogin,
) -> Result<Document, WebError> {
    let refusal = "You can read this document but not change it.";
    open_for(state, id, login, Access::can_edit, refusal).await
}

async fn open_as_owner(
    state: &AppState,
    id: i64,
    login: &RequireLogin,
) -> Result<Document, WebError> {
    let refusal = "Only the document's owner can do this.";
    open_for(state, id, login, Access::is_owner, refusal).await
}

/// Sends `message` to the document's open sockets when `tx` commits.
async fn broadcast(
    state: &AppState,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    document_id: i64,
    message: &Broadcast<'_>,
) -> Result<(), WebError> {
    state
        .channels
        .group_send_in(tx, &document::group(document_id), message)
        .await
        .map(drop)
        .map_err(|e| WebError::Internal(e.into()))
}

fn load_failed(e: document::LoadError) -> WebError {
    WebError::Internal(e.into())
}

fn back(jar: SignedCookieJar, id: i64, message: impl Into<String>) -> Response {
    (
        flash::set(jar, message),
        Redirect::to(&format!("/docs/{id}")),
    )
        .into_response()
}

struct DocRow {
    id: i64,
    title: String,
    owner: String,
    role: String,
    body_text: String,
    updated_at: time::OffsetDateTime,
}

impl DocRow {
    fn edited(&self) -> String {
        ago(self.updated_at)
    }

    /// The start of the text as of the last compaction.
    fn preview(&self) -> String {
        let mut preview: String = self.body_text.chars().take(120).collect();
        if self.body_text.chars().nth(120).is_some() {
            preview.push('…');
        }
        preview
    }
}

#[derive(Template)]
#[template(path = "docs/list.html")]
struct ListPage {
    layout: Layout,
    docs: Vec<DocRow>,
    title: String,
    error: Option<String>,
}

async fn visible(db: &sqlx::PgPool, user_id: i64) -> Result<Vec<DocRow>, sqlx::Error> {
    sqlx::query_as!(
        DocRow,
        r#"SELECT d.id, d.title, u.username AS owner, d.body_text,
                  CASE WHEN d.owner_id = $1 THEN 'owner'
                       WHEN m.can_edit THEN 'editor' ELSE 'reader' END AS "role!",
                  greatest(d.updated_at,
                           (SELECT max(created_at) FROM document_updates du
                             WHERE du.document_id = d.id)) AS "updated_at!"
             FROM documents d
             JOIN users u ON u.id = d.owner_id
             LEFT JOIN document_members m ON m.document_id = d.id AND m.user_id = $1
            WHERE d.owner_id = $1 OR m.user_id IS NOT NULL
            ORDER BY 6 DESC
            LIMIT 200"#,
        user_id
    )
    .fetch_all(db)
    .await
}

/// The documents a user owns or was added to, from a read replica when one serves
/// (`LagTolerant`; after the user's own change, only one that has replayed it). A list only:
/// opening a document checks membership on the primary.
pub(super) async fn list(
    LagTolerant(db): LagTolerant,
    login: RequireLogin,
    layout: Layout,
) -> Result<Response, WebError> {
    let docs = visible(&db, login.user.id).await?;
    Ok(render(&ListPage {
        layout,
        docs,
        title: String::new(),
        error: None,
    })?
    .into_response())
}

#[derive(Deserialize)]
pub(super) struct TitleForm {
    title: String,
}

/// Creates an empty document owned by the user.
#[tracing::instrument(skip_all, fields(user_id = login.user.id))]
pub(super) async fn create(
    State(state): State<AppState>,
    login: RequireLogin,
    layout: Layout,
    jar: SignedCookieJar,
    Form(form): Form<TitleForm>,
) -> Result<Response, WebError> {
    let title = match parse_name(&form.title, "title", 200) {
        Ok(title) => title,
        Err(WebError::Unprocessable(error)) => {
            let docs = visible(&state.db, login.user.id).await?;
            let page = ListPage {
                layout,
                docs,
                title: form.title,
                error: Some(error),
            };
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)?).into_response());
        }
        Err(e) => return Err(e),
    };
    let id = sqlx::query_scalar!(
        "INSERT INTO documents (title, owner_id) VALUES ($1, $2) RETURNING id",
        title,
        login.user.id
    )
    .fetch_one(&state.db)
    .await?;
    tracing::info!(document_id = id, "document created");
    Ok(back(jar, id, "Document created."))
}

struct MemberRow {
    user_id: i64,
    username: String,
    can_edit: bool,
}

struct VersionRow {
    id: i64,
    name: String,
    author: Option<String>,
    created_at: time::OffsetDateTime,
    chars: i32,
}

impl VersionRow {
    fn saved(&self) -> String {
        ago(self.created_at)
    }
}

#[derive(Template)]
#[template(path = "docs/edit.html")]
struct EditPage {
    layout: Layout,
    doc: Document,
    owner: String,
    access: Access,
    members: Vec<MemberRow>,
    versions: Vec<VersionRow>,
    /// The "add a person" form again, with what was typed and why it was refused.
    adding: String,
    add_error: Option<String>,
}

/// The editor; the text, carets and editors come over the document's socket.
pub(super) async fn edit(
    State(state): State<AppState>,
    login: RequireLogin,
    layout: Layout,
    Path(id): Path<i64>,
) -> Result<Response, WebError> {
    let page = edit_page(&state, &login, layout, id).await?;
    Ok(render(&page)?.into_response())
}

/// The editor page of document `id` for `login`, its forms empty.
async fn edit_page(
    state: &AppState,
    login: &RequireLogin,
    layout: Layout,
    id: i64,
) -> Result<EditPage, WebError> {
    let (doc, access) = open(state, id, login).await?;
    let owner = sqlx::query_scalar!("SELECT username FROM users WHERE id = $1", doc.owner_id)
        .fetch_one(&state.db)
        .await?;
    let members = sqlx::query_as!(
        MemberRow,
        "SELECT m.user_id, u.username, m.can_edit
           FROM document_members m JOIN users u ON u.id = m.user_id
          WHERE m.document_id = $1 ORDER BY lower(u.username)",
        id
    )
    .fetch_all(&state.db)
    .await?;
    let versions = sqlx::query_as!(
        VersionRow,
        r#"SELECT v.id, v.name, u.username AS "author?", v.created_at,
                  length(v.body_text) AS "chars!"
             FROM document_versions v LEFT JOIN users u ON u.id = v.created_by
            WHERE v.document_id = $1 ORDER BY v.id DESC LIMIT 100"#,
        id
    )
    .fetch_all(&state.db)
    .await?;
    Ok(EditPage {
        layout,
        doc,
        owner,
        access,
        members,
        versions,
        adding: String::new(),
        add_error: None,
    })
}

/// The body as plain text, for export.
pub(super) async fn text(
    State(state): State<AppState>,
    login: RequireLogin,
    Path(id): Path<i64>,
) -> Result<Response, WebError> {
    open(&state, id, &login).await?;
    let body = document::load(&state.db, id)
        .await
        .map_err(load_failed)?
        .text();
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "private, no-store"),
        ],
        body,
    )
        .into_response())
}

/// Renames a document; open editors see the new title at once.
#[tracing::instrument(skip_all, fields(user_id = login.user.id, document_id = id))]
pub(super) async fn rename(
    State(state): State<AppState>,
    login: RequireLogin,
    jar: SignedCookieJar,
    Path(id): Path<i64>,
    Form(form): Form<TitleForm>,
) -> Result<Response, WebError> {
    open_to_edit(&state, id, &login).await?;
    let title = parse_name(&form.title, "title", 200)?;
    let mut tx = state.db.begin().await?;
    sqlx::query!(
        "UPDATE documents SET title = $2, updated_at = now() WHERE id = $1",
        id,
        title
    )
    .execute(&mut *tx)
    .await?;
    broadcast(&state, &mut tx, id, &Broadcast::Title { title: &title }).await?;
    tx.commit().await?;
    Ok(back(jar, id, "Renamed."))
}

#[derive(Deserialize)]
pub(super) struct MemberForm {
    username: String,
    role: String,
}

/// Tells `user_id`, just added to `doc` by its owner, with a notification (the bell) that
/// leads to the document. It commits with the membership or not at all; one per membership
/// (its `added_at` is in the key), so someone removed and added again is told again.
async fn tell_added(
    state: &AppState,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    doc: &Document,
    user_id: i64,
    login: &RequireLogin,
    added_at: time::OffsetDateTime,
) -> Result<(), WebError> {
    let title = format!(
        "{} added you to the document “{}”",
        login.user.username, doc.title
    );
    let url = format!("/docs/{}", doc.id);
    let key = format!(
        "document-member:{}:{}",
        doc.id,
        added_at.unix_timestamp_nanos() / 1000
    );
    let notification = NewNotification {
        user_id,
        kind: Kind::Invitation,
        title: &title,
        url: &url,
        dedupe_key: &key,
    };
    notifications::notify(tx, &state.channels, &notification)
        .await
        .map_err(|e| WebError::Internal(e.into()))?;
    Ok(())
}

/// Adds a member and tells them, or changes a member's rights (owner only).
#[tracing::instrument(skip_all, fields(user_id = login.user.id, document_id = id))]
pub(super) async fn add_member(
    State(state): State<AppState>,
    login: RequireLogin,
    layout: Layout,
    jar: SignedCookieJar,
    Path(id): Path<i64>,
    Form(form): Form<MemberForm>,
) -> Result<Response, WebError> {
    let doc = open_as_owner(&state, id, &login).await?;
    let username = form.username.trim();
    // A refusal is said on the document's page, by the form, with what was typed kept.
    let refuse = |error: String| async {
        let page = EditPage {
            adding: username.to_owned(),
            add_error: Some(error),
            ..edit_page(&state, &login, layout, id).await?
        };
        Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)?).into_response())
    };
    let can_edit = match form.role.as_str() {
        "edit" => true,
        "read" => false,
        other => {
            return refuse(format!(
                "The rights must be “edit” or “read”, not “{other}”."
            ))
            .await;
        }
    };
    let member = sqlx::query_scalar!(
        "SELECT id FROM users WHERE lower(username) = lower($1)",
        username
    )
    .fetch_optional(&state.db)
    .await?;
    let Some(member_id) = member else {
        return refuse(format!(
            "There is no user called “{username}”. Check the spelling."
        ))
        .await;
    };
    if member_id == doc.owner_id {
        return refuse("The owner can always edit their document.".into()).await;
    }
    let mut tx = state.db.begin().await?;
    // `xmax = 0`: the row is new (a member whose rights change is not told again).
    let added = sqlx::query!(
        r#"INSERT INTO document_members (document_id, user_id, can_edit, added_by)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (document_id, user_id) DO UPDATE SET can_edit = EXCLUDED.can_edit
           RETURNING xmax = 0 AS "new!", added_at"#,
        id,
        member_id,
        can_edit,
        login.user.id
    )
    .fetch_one(&mut *tx)
    .await?;
    if added.new {
        tell_added(&state, &mut tx, &doc, member_id, &login, added.added_at).await?;
    }
    let access = Broadcast::Access {
        user_id: Some(member_id),
    };
    broadcast(&state, &mut tx, id, &access).await?;
    tx.commit().await?;
    let rights = if can_edit { "edit" } else { "read" };
    Ok(back(
        jar,
        id,
        format!("{username} can now {rights} this document."),
    ))
}

/// Removes a member (owner only); their open sockets close.
#[tracing::instrument(skip_all, fields(user_id = login.user.id, document_id = id))]
pub(super) async fn remove_member(
    State(state): State<AppState>,
    login: RequireLogin,
    jar: SignedCookieJar,
    Path((id, member_id)): Path<(i64, i64)>,
) -> Result<Response, WebError> {
    open_as_owner(&state, id, &login).await?;
    let mut tx = state.db.begin().await?;
    let removed = sqlx::query_scalar!(
        "DELETE FROM document_members WHERE document_id = $1 AND user_id = $2 RETURNING user_id",
        id,
        member_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    if removed.is_none() {
        return Err(WebError::NotFound);
    }
    let access = Broadcast::Access {
        user_id: Some(member_id),
    };
    broadcast(&state, &mut tx, id, &access).await?;
    tx.commit().await?;
    Ok(back(jar, id, "Member removed."))
}

#[derive(Deserialize)]
pub(super) struct VersionForm {
    name: String,
}

/// Saves the current state under a name.
#[tracing::instrument(skip_all, fields(user_id = login.user.id, document_id = id))]
pub(super) async fn save_version(
    State(state): State<AppState>,
    login: RequireLogin,
    jar: SignedCookieJar,
    Path(id): Path<i64>,
    Form(form): Form<VersionForm>,
) -> Result<Response, WebError> {
    open_to_edit(&state, id, &login).await?;
    let name = parse_name(&form.name, "version name", 100)?;
    let current = document::load(&state.db, id).await.map_err(load_failed)?;
    sqlx::query!(
        "INSERT INTO document_versions (document_id, name, state, body_text, created_by)
         VALUES ($1, $2, $3, $4, $5)",
        id,
        name,
        current.encode(),
        current.text(),
        login.user.id
    )
    .execute(&state.db)
    .await?;
    Ok(back(jar, id, format!("Version “{name}” saved.")))
}

/// Makes the text what it was in a version, as a new edit everyone receives: text that
/// differs is replaced, so edits made meanwhile elsewhere in the text are kept.
#[tracing::instrument(skip_all, fields(user_id = login.user.id, document_id = id))]
pub(super) async fn restore_version(
    State(state): State<AppState>,
    login: RequireLogin,
    jar: SignedCookieJar,
    Path((id, version_id)): Path<(i64, i64)>,
) -> Result<Response, WebError> {
    open_to_edit(&state, id, &login).await?;
    let version = sqlx::query!(
        "SELECT name, state FROM document_versions WHERE id = $1 AND document_id = $2",
        version_id,
        id
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or(WebError::NotFound)?;
    let target = CrdtState::from_updates([version.state.as_slice()])
        .map_err(|e| WebError::Internal(anyhow::Error::new(e).context("a stored version")))?
        .text();
    let current = document::load(&state.db, id).await.map_err(load_failed)?;
    if current.text() == target {
        let unchanged = format!("The text is already that of “{}”.", version.name);
        return Ok(back(jar, id, unchanged));
    }
    let update = current.replace_text(&target);
    let encoded = BASE64.encode(&update);
    let mut tx = state.db.begin().await?;
    document::append(&mut tx, id, login.user.id, &update).await?;
    for message in [
        Broadcast::Update {
            update: &encoded,
            from: "",
        },
        Broadcast::Restored {
            version: &version.name,
            by: &login.user.username,
        },
    ] {
        broadcast(&state, &mut tx, id, &message).await?;
    }
    tx.commit().await?;
    Ok(back(jar, id, format!("Restored “{}”.", version.name)))
}

/// Deletes a document with its updates and versions (owner only); open sockets close.
#[tracing::instrument(skip_all, fields(user_id = login.user.id, document_id = id))]
pub(super) async fn delete(
    State(state): State<AppState>,
    login: RequireLogin,
    jar: SignedCookieJar,
    Path(id): Path<i64>,
) -> Result<Response, WebError> {
    let doc = open_as_owner(&state, id, &login).await?;
    let mut tx = state.db.begin().await?;
    sqlx::query!("DELETE FROM documents WHERE id = $1", id)
        .execute(&mut *tx)
        .await?;
    broadcast(&state, &mut tx, id, &Broadcast::Access { user_id: None }).await?;
    tx.commit().await?;
    Ok((
        flash::set(jar, format!("“{}” deleted.", doc.title)),
        Redirect::to("/docs"),
    )
        .into_response())
}
