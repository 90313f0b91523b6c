//! Single-use links sent by mail: "verify this address" and "sign me in".
//!
//! A link carries a random 256-bit token; `email_tokens` stores only its SHA-256 (as sessions
//! do), the user, the address it was sent to and an expiry. [`consume`] spends a token in one
//! `UPDATE … WHERE used_at IS NULL AND expires_at > now() RETURNING`, so of two concurrent
//! clicks exactly one gets through. Following a link never acts on GET (mail scanners open
//! links): the GET page shows a button that POSTs.

use std::time::Duration;

use sqlx::PgPool;

use crate::web::session;

/// What a token is for; a token of one purpose is unknown to the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Verify,
    SignIn,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::SignIn => "sign_in",
        }
    }
}

/// A link that cannot be followed, with the message its follower sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("This link is not valid. Check that you copied all of it.")]
    Unknown,
    #[error("This link has expired. Ask for a new one.")]
    Expired,
    #[error("This link was already used. Ask for a new one.")]
    Used,
}

/// The status a page refusing the link answers with: 404 for a link that never existed, 410
/// for one that did.
impl LinkError {
    pub fn status(self) -> axum::http::StatusCode {
        match self {
            Self::Unknown => axum::http::StatusCode::NOT_FOUND,
            Self::Expired | Self::Used => axum::http::StatusCode::GONE,
        }
    }
}

/// The user and address a spent token was for.
#[derive(Debug)]
pub struct Spent {
    pub user_id: i64,
    pub email: String,
}

/// Stores a new token for `user_id` and `email`, valid for `ttl`, and returns it.
pub async fn create(
    pool: &PgPool,
    purpose: Purpose,
    user_id: i64,
    email: &str,
    ttl: Duration,
) -> Result<String, sqlx::Error> {
    let token = hex::encode(rand::random::<[u8; 32]>());
    sqlx::query!(
        "INSERT INTO email_tokens (token_hash, user_id, purpose, email, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        session::hash(&token),
        user_id,
        purpose.as_str(),
        email,
        ttl.as_secs_f64(),
    )
    .execute(pool)
    .await?;
    Ok(token)
}

/// Whether `token` could be spent now (for the confirmation page; spends nothing).
pub async fn check(
    pool: &PgPool,
    purpose: Purpose,
    token: &str,
) -> Result<Result<(), LinkError>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT used_at IS NOT NULL AS "used!", expires_at <= now() AS "expired!"
             FROM email_tokens WHERE token_hash = $1 AND purpose = $2"#,
        session::hash(token),
        purpose.as_str()
    )
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => Err(LinkError::Unknown),
        Some(row) if row.used => Err(LinkError::Used),
        Some(row) if row.expired => Err(LinkError::Expired),
        Some(_) => Ok(()),
    })
}

/// Spends `token`: at most once, and only before it expires.
pub async fn consume(
    pool: &PgPool,
    purpose: Purpose,
    token: &str,
) -> Result<Result<Spent, LinkError>, sqlx::Error> {
    let spent = sqlx::query_as!(
        Spent,
        "UPDATE email_tokens SET used_at = now()
          WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > now()
          RETURNING user_id, email",
        session::hash(token),
        purpose.as_str()
    )
    .fetch_optional(pool)
    .await?;
    Ok(match spent {
        Some(spent) => Ok(spent),
        // Spent by a concurrent click between the two statements: used.
        None => Err(check(pool, purpose, token)
            .await?
            .err()
            .unwrap_or(LinkError::Used)),
    })
}

/// Deletes tokens that expired over a day ago; run periodically by the server.
pub async fn sweep(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!("DELETE FROM email_tokens WHERE expires_at < now() - interval '1 day'")
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
