//! The room list, room creation, the room page and invitations.

use askama::Template;
use axum::{
    Form,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use axum_extra::extract::SignedCookieJar;
use serde::Deserialize;

use super::{
    consumer::MAX_MESSAGE,
    room::{self, Room},
};
use crate::{
    notifications::{self, Kind, NewNotification},
    text::{Slug, Title},
    web::{AppState, Layout, WebError, auth::RequireLogin, flash, render},
};

struct RoomRow {
    slug: String,
    name: String,
    is_private: bool,
    members: i64,
    last_message_at: Option<time::OffsetDateTime>,
}

impl RoomRow {
    fn active(&self) -> String {
        self.last_message_at
            .map(crate::web::templates::ago)
            .unwrap_or_else(|| "no messages yet".into())
    }
}

#[derive(Template)]
#[template(path = "chat/rooms.html")]
struct RoomsPage {
    layout: Layout,
    rooms: Vec<RoomRow>,
    name: String,
    error: Option<String>,
}

async fn visible_rooms(state: &AppState, user_id: i64) -> Result<Vec<RoomRow>, sqlx::Error> {
    sqlx::query_as!(
        RoomRow,
        r#"SELECT r.slug, r.name, r.is_private, r.last_message_at,
                  (SELECT count(*) FROM chat_members m WHERE m.room_id = r.id) AS "members!"
             FROM chat_rooms r
            WHERE NOT r.is_private
               OR EXISTS (SELECT 1 FROM chat_members m WHERE m.room_id = r.id AND m.user_id = $1)
            ORDER BY r.last_message_at DESC NULLS LAST, r.name
            LIMIT 200"#,
        user_id
    )
    .fetch_all(&state.db)
    .await
}

/// Public rooms and the private rooms the user belongs to.
pub(super) async fn rooms(
    State(state): State<AppState>,
    login: RequireLogin,
    layout: Layout,
) -> Result<Response, WebError> {
    let rooms = visible_rooms(&state, login.user.id).await?;
    Ok(render(&RoomsPage {
        layout,
        rooms,
        name: String::new(),
        error: None,
    })?
    .into_response())
}

#[derive(Deserialize)]
pub(super) struct NewRoom {
    name: String,
    #[serde(default)]
    private: Option<String>,
}

/// Creates a room; its creator is its first member.
#[tracing::instrument(skip_all, fields(user_id = login.user.id))]
pub(super) async fn create(
    State(state): State<AppState>,
    login: RequireLogin,
    layout: Layout,
    jar: SignedCookieJar,
    Form(form): Form<NewRoom>,
) -> Result<Response, WebError> {
    let name = form.name.trim();
    let parsed = match name.chars().count() {
        n if n > 80 => Err(format!("The name is {n} characters long; the limit is 80.")),
        _ => Title::parse(name).map_err(|_| "A room needs a name.".to_owned()),
    };
    let title = match parsed {
        Ok(title) => title,
        Err(error) => {
            let rooms = visible_rooms(&state, login.user.id).await?;
            let page = RoomsPage {
                layout,
                rooms,
                name: form.name,
                error: Some(error),
            };
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)?).into_response());
        }
    };
    let private = form.private.is_some();
    // Two public rooms of one name would be told apart by their addresses alone. (A private
    // room's name is its members' business: it is neither checked nor revealed here.)
    if !private && let Some(existing) = public_room_named(&state, name).await? {
        let rooms = visible_rooms(&state, login.user.id).await?;
        let page = RoomsPage {
            layout,
            rooms,
            error: Some(format!(
                "There is already a room called “{}”: open it from the list, or choose another \
                 name.",
                existing
            )),
            name: form.name,
        };
        return Ok((StatusCode::CONFLICT, render(&page)?).into_response());
    }
    let mut tx = state.db.begin().await?;
    let mut created = None;
    for n in 1..=50 {
        let slug = room_slug(&title, private, n);
        created = sqlx::query_scalar!(
            "INSERT INTO chat_rooms (slug, name, is_private, created_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (slug) DO NOTHING RETURNING id",
            slug,
            name,
            private,
            login.user.id
        )
        .fetch_optional(&mut *tx)
        .await?
        .map(|id| (id, slug));
        if created.is_some() {
            break;
        }
    }
    let Some((room_id, slug)) = created else {
        return Err(WebError::Conflict(
            "Too many rooms have this name; choose another one.".into(),
        ));
    };
    sqlx::query!(
        "INSERT INTO chat_members (room_id, user_id) VALUES ($1, $2)",
        room_id,
        login.user.id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(room_id, "room created");
    Ok((
        flash::set(jar, "Room created."),
        Redirect::to(&format!("/chat/{slug}")),
    )
        .into_response())
}

/// The name of the public room called `name` (whatever the case), if there is one.
async fn public_room_named(state: &AppState, name: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT name FROM chat_rooms WHERE NOT is_private AND lower(name) = lower($1) LIMIT 1",
    )
    .bind(name)
    .fetch_optional(&state.db)
    .await
}

/// The `n`th slug to try for a new room, at most 60 characters: the name's, then `-2`, `-3`…
/// for a public room. A private room's ends in a random part instead, so that it never takes
/// a name's plain slug (or its `-2`): were it to, creating a public room of the same name would
/// get `-2` and so confirm that a private room of that name exists.
fn room_slug(title: &Title, private: bool, n: u32) -> String {
    let keep = if private { 51 } else { 56 };
    let base: String = Slug::from_title(title)
        .as_str()
        .chars()
        .take(keep)
        .collect();
    let base = base.trim_end_matches('-');
    match (private, n) {
        (true, _) => format!("{base}-{:08x}", rand::random::<u32>()),
        (false, 1) => base.to_owned(),
        (false, n) => format!("{base}-{n}"),
    }
}

#[derive(Template)]
#[template(path = "chat/room.html")]
struct RoomPage {
    layout: Layout,
    room: Room,
    max_message: usize,
    /// The invite form again, with what was typed and why it was refused.
    invite: String,
    invite_error: Option<String>,
}

/// The room if the user may open it; otherwise 404, the same for a private room of others as
/// for no room at all ([`room::open`]).
async fn open(state: &AppState, slug: &str, login: &RequireLogin) -> Result<Room, WebError> {
    room::open(&state.db, slug, &login.user)
        .await?
        .ok_or(WebError::NotFound)
}

/// The room page; messages, presence and typing come over the room's socket.
pub(super) async fn room(
    State(state): State<AppState>,
    login: RequireLogin,
    layout: Layout,
    Path(slug): Path<String>,
) -> Result<Response, WebError> {
    let room = open(&state, &slug, &login).await?;
    Ok(render(&RoomPage {
        layout,
        room,
        max_message: MAX_MESSAGE,
        invite: String::new(),
        invite_error: None,
    })?
    .into_response())
}

#[derive(Deserialize)]
pub(super) struct Invite {
    username: String,
}

/// Tells `user_id`, just made a member of `room` by `login`, with a notification (the bell)
/// that leads to the room. It commits with the membership or not at all; an administrator who
/// adds themself is not told what they did.
async fn tell_invited(
    state: &AppState,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    room: &Room,
    user_id: i64,
    login: &RequireLogin,
) -> Result<(), WebError> {
    if user_id == login.user.id {
        return Ok(());
    }
    let title = format!("{} invited you to {}", login.user.username, room.name);
    let url = format!("/chat/{}", room.slug);
    let key = format!("chat-invitation:{}", room.id);
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

/// Adds a user to a private room and tells them; any member may invite.
#[tracing::instrument(skip_all, fields(user_id = login.user.id, room = %slug))]
pub(super) async fn invite(
    State(state): State<AppState>,
    login: RequireLogin,
    layout: Layout,
    jar: SignedCookieJar,
    Path(slug): Path<String>,
    Form(form): Form<Invite>,
) -> Result<Response, WebError> {
    let room = open(&state, &slug, &login).await?;
    if !room.is_private {
        return Err(WebError::Unprocessable(
            "Public rooms need no invitation.".into(),
        ));
    }
    let mut tx = state.db.begin().await?;
    let invited = sqlx::query_scalar!(
        "INSERT INTO chat_members (room_id, user_id, invited_by)
         SELECT $1, id, $3 FROM users WHERE lower(username) = lower($2)
         ON CONFLICT DO NOTHING
         RETURNING user_id",
        room.id,
        form.username.trim(),
        login.user.id
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(user_id) = invited {
        tell_invited(&state, &mut tx, &room, user_id, &login).await?;
    }
    tx.commit().await?;
    let message = match invited {
        Some(_) => format!("{} can now open this room.", form.username.trim()),
        None => {
            let exists = sqlx::query_scalar!(
                r#"SELECT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower($1)) AS "e!""#,
                form.username.trim()
            )
            .fetch_one(&state.db)
            .await?;
            if !exists {
                // Said on the room's page, by the form, with what was typed kept.
                let page = RoomPage {
                    layout,
                    invite_error: Some(format!(
                        "There is no user called “{}”. Check the spelling.",
                        form.username.trim()
                    )),
                    invite: form.username,
                    room,
                    max_message: MAX_MESSAGE,
                };
                return Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)?).into_response());
            }
            format!("{} is already a member.", form.username.trim())
        }
    };
    Ok((
        flash::set(jar, message),
        Redirect::to(&format!("/chat/{slug}")),
    )
        .into_response())
}
