//! Users, their passwords and the extractors that say who is asking (the hashing itself, under
//! its bound, is [`super::hashing`]).
//!
//! Identity is platform: every app needs "who is signed in", so it lives here rather than in
//! the accounts app (which owns the sign-up / login pages built on it).
//!
//! * [`CurrentUser`]: the signed-in user, if any (looked up once per request, then cached).
//! * [`RequireLogin`]: rejects anonymous requests — a redirect to `/login?next=...` for pages,
//!   401 JSON under `/api/`.
//! * [`RequireAdmin`]: additionally rejects non-admins with 403.

use axum::{
    extract::FromRequestParts,
    http::request::Parts,
    response::{IntoResponse, Redirect, Response},
};
use axum_extra::extract::CookieJar;
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::{AppState, WebError, hashing::Slot, session};
use crate::cache::page::Personal;

/// A signed-up user.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub is_admin: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A username: 3 to 32 letters, digits, `_`, `.` or `-` (the same rule the table checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let name = raw.trim();
        if !(3..=32).contains(&name.chars().count()) {
            return Err("A username is 3 to 32 characters long.".into());
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err("A username may use letters, digits, '_', '.' and '-' only.".into());
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password acceptable for a new account: 8 to 1024 characters (the upper bound keeps a
/// hostile request from making argon2 hash megabytes).
#[derive(Clone)]
pub struct NewPassword(String);

impl NewPassword {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let len = raw.chars().count();
        if len < 8 {
            return Err("A password needs at least 8 characters.".into());
        }
        if len > 1024 {
            return Err("A password may have at most 1024 characters.".into());
        }
        Ok(Self(raw.to_string()))
    }

    /// The password itself, for the hasher only.
    pub(super) fn as_secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewPassword(***)")
    }
}

/// Why a user could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("the username {0} is taken")]
    UsernameTaken(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Hash(#[from] anyhow::Error),
}

/// Creates a user, hashing the password in `slot` (see [`super::hashing::Hasher::enter`]).
pub async fn create_user(
    pool: &PgPool,
    slot: &Slot,
    username: &Username,
    password: &NewPassword,
    is_admin: bool,
) -> Result<User, CreateUserError> {
    let hash = slot.hash(password).await?;
    sqlx::query_as!(
        User,
        "INSERT INTO users (username, password_hash, is_admin) VALUES ($1, $2, $3)
         RETURNING id, username, is_admin, created_at",
        username.as_str(),
        hash,
        is_admin
    )
    .fetch_one(pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            CreateUserError::UsernameTaken(username.0.clone())
        }
        _ => CreateUserError::Database(e),
    })
}

/// The user with this username (case-insensitive) and their password hash.
pub async fn find_credentials(
    pool: &PgPool,
    username: &str,
) -> Result<Option<(User, String)>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT id, username, is_admin, created_at, password_hash FROM users WHERE lower(username) = lower($1)",
        username
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| {
        (
            User {
                id: r.id,
                username: r.username,
                is_admin: r.is_admin,
                created_at: r.created_at,
            },
            r.password_hash,
        )
    }))
}

/// The stored password hash of a user.
pub async fn password_hash(pool: &PgPool, user_id: i64) -> Result<String, sqlx::Error> {
    sqlx::query_scalar!("SELECT password_hash FROM users WHERE id = $1", user_id)
        .fetch_one(pool)
        .await
}

pub async fn set_password(
    pool: &PgPool,
    slot: &Slot,
    user_id: i64,
    password: &NewPassword,
) -> Result<(), WebError> {
    let hash = slot.hash(password).await?;
    sqlx::query!(
        "UPDATE users SET password_hash = $2 WHERE id = $1",
        user_id,
        hash
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The user of an unexpired session.
pub async fn user_for_session(pool: &PgPool, token: &str) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as!(
        User,
        "SELECT u.id, u.username, u.is_admin, u.created_at
           FROM sessions s JOIN users u ON u.id = s.user_id
          WHERE s.token_hash = $1 AND s.expires_at > now()",
        session::hash(token)
    )
    .fetch_optional(pool)
    .await
}

/// A signed-in user and the token of their session.
#[derive(Debug, Clone)]
struct SignedIn {
    user: User,
    token: String,
}

/// Looks the session up once per request and caches the answer in the request's extensions.
async fn signed_in(parts: &mut Parts, state: &AppState) -> Result<Option<SignedIn>, WebError> {
    if let Some(cached) = parts.extensions.get::<Option<SignedIn>>() {
        return Ok(cached.clone());
    }
    let jar = CookieJar::from_headers(&parts.headers);
    let found = match jar.get(session::COOKIE).map(|c| c.value().to_owned()) {
        // A malformed or unknown cookie is simply "not signed in".
        Some(token) => user_for_session(&state.db, &token)
            .await?
            .map(|user| SignedIn { user, token }),
        None => None,
    };
    if found.is_some() {
        // Whatever a handler renders for a signed-in visitor may show who they are.
        Personal::of(&mut parts.extensions).mark();
    }
    parts.extensions.insert(found.clone());
    Ok(found)
}

/// The signed-in user, or `None` for anonymous requests.
#[derive(Debug, Clone)]
pub struct CurrentUser(pub Option<User>);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = WebError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(signed_in(parts, state).await?.map(|s| s.user)))
    }
}

/// A signed-in user; anonymous requests are sent to the login page (401 under `/api/`).
#[derive(Debug, Clone)]
pub struct RequireLogin {
    pub user: User,
    /// The session token, for actions such as "log out my other sessions".
    pub token: String,
}

fn login_rejection(parts: &Parts) -> Response {
    if parts.uri.path().starts_with("/api/") {
        return WebError::Unauthorized.into_response();
    }
    let here = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let next: String = form_urlencoded::byte_serialize(here.as_bytes()).collect();
    Redirect::to(&format!("/login?next={next}")).into_response()
}

impl FromRequestParts<AppState> for RequireLogin {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match signed_in(parts, state)
            .await
            .map_err(IntoResponse::into_response)?
        {
            Some(SignedIn { user, token }) => Ok(Self { user, token }),
            None => Err(login_rejection(parts)),
        }
    }
}

/// A signed-in administrator; other users get 403.
#[derive(Debug, Clone)]
pub struct RequireAdmin(pub User);

impl FromRequestParts<AppState> for RequireAdmin {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let RequireLogin { user, .. } = RequireLogin::from_request_parts(parts, state).await?;
        if user.is_admin {
            Ok(Self(user))
        } else {
            Err(WebError::Forbidden("This page is for administrators.".into()).into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_parsed() {
        assert_eq!(Username::parse("  ada.l-1_ ").unwrap().as_str(), "ada.l-1_");
        assert!(Username::parse("ab").is_err());
        assert!(Username::parse("ada lovelace").is_err());
        assert!(Username::parse("ädä").is_err());
        assert!(Username::parse(&"a".repeat(33)).is_err());
    }

    #[test]
    fn passwords_have_bounds() {
        assert!(NewPassword::parse("short").is_err());
        assert!(NewPassword::parse("long enough").is_ok());
        assert!(NewPassword::parse(&"x".repeat(1025)).is_err());
        assert_eq!(
            format!("{:?}", NewPassword::parse("long enough").unwrap()),
            "NewPassword(***)"
        );
    }
}
