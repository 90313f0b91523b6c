//! Email verification, as django-allauth does it: a new address is stored unverified and gets
//! one mail with a single-use link valid for a day; following the link (a page with a button,
//! so that mail scanners opening links verify nothing) marks it verified. Until then Hearth
//! mails it nothing else — enforced where all mail goes out, `mail::Mailer::send_once`.
//!
//! Verification mail is limited per user ([`VERIFICATIONS_PER_USER_PER_HOUR`]) and, like all
//! mail, per recipient; a user over their limit is told so.

use std::{sync::Arc, time::Duration};

use askama::Template;
use axum::{
    Extension,
    extract::{Path, State},
    response::{IntoResponse, Redirect, Response},
};
use axum_extra::extract::SignedCookieJar;

use super::{
    Email,
    tokens::{self, LinkError, Purpose},
};
use crate::{
    mail::{self, Dropped, Mailer, Message, Sent, quota},
    web::{AppState, Layout, WebError, auth::RequireLogin, flash, render, session},
};

/// How long a verification link works.
const VERIFY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Verification mails one user may ask for per hour (signing up and changing the address
/// count too).
pub const VERIFICATIONS_PER_USER_PER_HOUR: i32 = 3;

/// A page that follows a mail link: a button that acts, or why the link cannot be used.
#[derive(Template)]
#[template(path = "accounts/link.html")]
pub(super) struct LinkPage {
    pub layout: Layout,
    pub title: &'static str,
    pub text: String,
    pub action: String,
    pub button: &'static str,
    pub error: Option<String>,
    /// Where to ask for a new link.
    pub again: &'static str,
}

impl LinkPage {
    /// The page refusing a link, under the status that fits.
    pub fn refused(self, error: LinkError) -> Result<Response, WebError> {
        let page = Self {
            error: Some(error.to_string()),
            ..self
        };
        Ok((error.status(), render(&page)?).into_response())
    }
}

/// Saves the user's mail address (and, when given, the digest preference). A new address is
/// stored unverified and sent a verification link; the returned sentence tells the user what
/// happened to that mail. Saving the same address again keeps its verification.
pub(super) async fn save(
    state: &AppState,
    mailer: &Mailer,
    user_id: i64,
    email: Option<&Email>,
    digest_by_mail: Option<bool>,
) -> Result<Option<String>, WebError> {
    let email = email.map(Email::as_str);
    let mut tx = state.db.begin().await?;
    let before = sqlx::query_scalar!("SELECT email FROM users WHERE id = $1 FOR UPDATE", user_id)
        .fetch_one(&mut *tx)
        .await?;
    let changed = before.as_deref() != email;
    sqlx::query!(
        "UPDATE users SET email = $2, digest_by_mail = coalesce($4, digest_by_mail),
                email_verified_at = CASE WHEN $3 THEN NULL ELSE email_verified_at END
          WHERE id = $1",
        user_id,
        email,
        changed,
        digest_by_mail
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    match email {
        Some(email) if changed => Ok(Some(
            send_verification(state, mailer, user_id, email).await?.text,
        )),
        _ => Ok(None),
    }
}

/// What happened to a verification mail, in a sentence for the user.
struct Notice {
    text: String,
    /// Not sent: the user asked for too many.
    refused: bool,
}

/// Mails `email`, the user's current address, a verification link, within the user's and the
/// address's hourly limits.
async fn send_verification(
    state: &AppState,
    mailer: &Mailer,
    user_id: i64,
    email: &str,
) -> Result<Notice, WebError> {
    let scope = format!("verify:{user_id}");
    if !quota::take(&state.db, &scope, VERIFICATIONS_PER_USER_PER_HOUR).await? {
        tracing::warn!(
            user_id,
            "verification mail not sent: the user's hourly limit"
        );
        return Ok(Notice {
            text: format!(
                "You asked for {VERIFICATIONS_PER_USER_PER_HOUR} verification mails this hour; \
                 ask again in an hour. Until {email} is verified, Hearth mails it nothing."
            ),
            refused: true,
        });
    }
    let token = tokens::create(&state.db, Purpose::Verify, user_id, email, VERIFY_TTL).await?;
    let message = Message {
        key: format!("verify-email:{}", hex::encode(&session::hash(&token)[..12])),
        user_id,
        to: email.to_owned(),
        purpose: mail::Purpose::Verification,
        subject: "Confirm your mail address for Hearth".into(),
        body: format!(
            "Hello,\n\nsomeone (we hope you) gave this address to their Hearth account. To \
             confirm that it is yours, open this link within 24 hours:\n{}/account/email/verify/{token}\n\n\
             If it was not you, ignore this mail: Hearth sends nothing else to an address \
             nobody confirmed.\n\n— Hearth\n",
            state.config.site_url()
        ),
    };
    let sent = mailer
        .send_once(&state.db, &message)
        .await
        .map_err(anyhow::Error::new)?;
    let text = match sent {
        Sent::Dropped(Dropped::OverLimit) => format!(
            "{email} received too much mail this hour; ask for a new verification link later."
        ),
        Sent::Dropped(Dropped::Unverified) => "Your address changed meanwhile.".into(),
        _ => format!("We sent a link to {email}: follow it to get mail from Hearth."),
    };
    Ok(Notice {
        text,
        refused: false,
    })
}

/// "Resend verification" on the settings page.
#[tracing::instrument(skip_all, fields(user_id = login.user.id))]
pub(super) async fn resend(
    State(state): State<AppState>,
    Extension(deps): Extension<Arc<super::Deps>>,
    login: RequireLogin,
    signed: SignedCookieJar,
) -> Result<Response, WebError> {
    let row = sqlx::query!(
        r#"SELECT email, email_verified_at IS NOT NULL AS "verified!" FROM users WHERE id = $1"#,
        login.user.id
    )
    .fetch_one(&state.db)
    .await?;
    let message = match row.email {
        None => "Add a mail address first.".to_owned(),
        Some(email) if row.verified => format!("{email} is already verified."),
        Some(email) => {
            let notice = send_verification(&state, &deps.mailer, login.user.id, &email).await?;
            if notice.refused {
                return Err(WebError::TooManyRequests(notice.text));
            }
            notice.text
        }
    };
    Ok((
        flash::set(signed, message),
        Redirect::to("/account/settings"),
    )
        .into_response())
}

fn verify_page(layout: Layout, token: &str) -> LinkPage {
    LinkPage {
        layout,
        title: "Confirm your mail address",
        text: "Confirm that this mail address is yours: Hearth will then send it the mail you \
               asked for."
            .into(),
        action: format!("/account/email/verify/{token}"),
        button: "Confirm my address",
        error: None,
        again: "/account/settings",
    }
}

/// The page a verification link opens: a button, or why the link cannot be used.
#[tracing::instrument(skip_all)]
pub(super) async fn verify_form(
    State(state): State<AppState>,
    layout: Layout,
    Path(token): Path<String>,
) -> Result<Response, WebError> {
    let page = verify_page(layout, &token);
    match tokens::check(&state.db, Purpose::Verify, &token).await? {
        Ok(()) => Ok(render(&page)?.into_response()),
        Err(error) => page.refused(error),
    }
}

/// The button: spends the link and verifies the address it was sent to, if the account still
/// has that address.
#[tracing::instrument(skip_all)]
pub(super) async fn verify(
    State(state): State<AppState>,
    layout: Layout,
    signed: SignedCookieJar,
    Path(token): Path<String>,
) -> Result<Response, WebError> {
    let spent = match tokens::consume(&state.db, Purpose::Verify, &token).await? {
        Ok(spent) => spent,
        Err(error) => return verify_page(layout, &token).refused(error),
    };
    let verified = sqlx::query_scalar!(
        "UPDATE users SET email_verified_at = coalesce(email_verified_at, now())
          WHERE id = $1 AND email = $2 RETURNING id",
        spent.user_id,
        spent.email
    )
    .fetch_optional(&state.db)
    .await?;
    if verified.is_none() {
        tracing::info!(
            user_id = spent.user_id,
            "verification link for a replaced address"
        );
        return Err(WebError::Conflict(
            "This link verifies an address the account no longer uses.".into(),
        ));
    }
    tracing::info!(user_id = spent.user_id, "mail address verified");
    let message = format!("{} is verified.", spent.email);
    Ok((
        flash::set(signed, message),
        Redirect::to("/account/settings"),
    )
        .into_response())
}
