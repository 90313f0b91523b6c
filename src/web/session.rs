//! Server-side sessions stored in Postgres.
//!
//! The browser holds a random 256-bit token in an HttpOnly, SameSite=Lax cookie; the database
//! holds only its SHA-256, the user and an expiry. Logging out or changing a password deletes
//! rows, so a session ends everywhere at once — something a signed-cookie session cannot do.

use std::time::Duration;

use axum_extra::extract::cookie::{Cookie, SameSite};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// Name of the session cookie.
pub const COOKIE: &str = "hearth_session";

/// Starts a session for `user_id` and returns the token to put in the cookie.
pub async fn create(
    pool: &PgPool,
    user_id: i64,
    ttl: Duration,
    user_agent: Option<&str>,
) -> Result<String, sqlx::Error> {
    let token = hex::encode(rand::random::<[u8; 32]>());
    sqlx::query!(
        "INSERT INTO sessions (token_hash, user_id, expires_at, user_agent)
         VALUES ($1, $2, now() + make_interval(secs => $3), $4)",
        hash(&token),
        user_id,
        ttl.as_secs_f64(),
        user_agent,
    )
    .execute(pool)
    .await?;
    Ok(token)
}

/// Ends the session with this token (no error if it does not exist).
pub async fn delete(pool: &PgPool, token: &str) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM sessions WHERE token_hash = $1", hash(token))
        .execute(pool)
        .await?;
    Ok(())
}

/// Ends every session of `user_id` except the one with token `keep`.
pub async fn delete_others(pool: &PgPool, user_id: i64, keep: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "DELETE FROM sessions WHERE user_id = $1 AND token_hash <> $2",
        user_id,
        hash(keep)
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes expired sessions; run periodically by the server.
pub async fn sweep_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!("DELETE FROM sessions WHERE expires_at < now()")
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// The SHA-256 of a token, the form in which it is stored.
pub(crate) fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The cookie carrying `token` for `ttl`.
pub fn cookie(token: String, ttl: Duration, secure: bool) -> Cookie<'static> {
    Cookie::build((COOKIE, token))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .max_age(time::Duration::seconds(ttl.as_secs() as i64))
        .build()
}

/// A cookie that removes the session cookie from the browser.
pub fn removal_cookie() -> Cookie<'static> {
    Cookie::build((COOKIE, ""))
        .path("/")
        .max_age(time::Duration::ZERO)
        .build()
}
