//! "Email me a sign-in link": the owner's way in when a password is forgotten or the account
//! is throttled by someone else's guessing. The link goes to the account's verified address
//! only, works once, within [`SIGN_IN_TTL`], and signs in exactly as the login form does.
//!
//! The form answers the same sentence, with the same status, whether or not the account
//! exists or has a verified address: the mail is written by a job (`SignInLink`), so the
//! request never waits on a mail server. Limits: requests per client address
//! ([`REQUESTS_PER_CLIENT_PER_HOUR`]), links per account ([`LINKS_PER_ACCOUNT_PER_HOUR`]) and,
//! like all mail, per recipient; beyond them nothing is sent and the answer does not change.

use std::{net::SocketAddr, time::Duration};

use askama::Template;
use axum::{
    Form,
    extract::{ConnectInfo, Path, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use axum_extra::extract::{CookieJar, SignedCookieJar};
use serde::{Deserialize, Serialize};

use super::{
    email::LinkPage,
    pages::start_session,
    tokens::{self, Purpose},
};
use crate::{
    jobs::{Defaults, Enqueue, Job, JobContext, Outcome},
    mail::{self, Mailing, Message, quota},
    web::{AppState, Layout, WebError, auth::User, render},
};

/// How long a sign-in link works.
pub const SIGN_IN_TTL: Duration = Duration::from_secs(15 * 60);

/// Sign-in links one account may be sent per hour.
pub const LINKS_PER_ACCOUNT_PER_HOUR: i32 = 3;

/// Link requests one client address may make per hour (whatever the accounts).
pub const REQUESTS_PER_CLIENT_PER_HOUR: i32 = 20;

/// The one answer to every request.
const ANSWER: &str = "If that account has a verified mail address, a sign-in link is on its \
                      way there. It works once, within 15 minutes.";

#[derive(Template)]
#[template(path = "accounts/login_link.html")]
struct RequestPage {
    layout: Layout,
    answer: Option<&'static str>,
}

#[tracing::instrument(skip_all)]
pub(super) async fn request_form(layout: Layout) -> Result<Response, WebError> {
    let page = RequestPage {
        layout,
        answer: None,
    };
    Ok(render(&page)?.into_response())
}

#[derive(Deserialize)]
pub(super) struct RequestForm {
    username: String,
}

/// Queues a sign-in link for the account, if it has a verified address and the client is
/// within its limit; answers [`ANSWER`] in every case.
#[tracing::instrument(skip_all, fields(client = %addr.ip()))]
pub(super) async fn request(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    layout: Layout,
    Form(form): Form<RequestForm>,
) -> Result<Response, WebError> {
    let scope = format!("sign-in-client:{}", addr.ip());
    if quota::take(&state.db, &scope, REQUESTS_PER_CLIENT_PER_HOUR).await? {
        let username = form.username.trim();
        let account = sqlx::query_scalar!(
            "SELECT id FROM users
              WHERE lower(username) = lower($1) AND email_verified_at IS NOT NULL",
            username
        )
        .fetch_optional(&state.db)
        .await?;
        if let Some(user_id) = account {
            Enqueue::new(&SignInLink { user_id })
                .map_err(anyhow::Error::new)?
                .enqueue(&state.db)
                .await
                .map_err(anyhow::Error::new)?;
        }
    } else {
        tracing::warn!("sign-in link request refused: the client's hourly limit");
    }
    let page = RequestPage {
        layout,
        answer: Some(ANSWER),
    };
    Ok(render(&page)?.into_response())
}

/// Mails an account a sign-in link, to its verified address.
#[derive(Debug, Serialize, Deserialize)]
pub struct SignInLink {
    pub user_id: i64,
}

impl Job for SignInLink {
    const KIND: &'static str = "accounts.sign_in_link";
    type Deps = Mailing;

    fn defaults() -> Defaults {
        Defaults {
            queue: "mail",
            max_attempts: 3,
            ..Defaults::default()
        }
    }

    #[tracing::instrument(skip_all, fields(user_id = self.user_id))]
    async fn perform(self, ctx: JobContext<Mailing>) -> anyhow::Result<Outcome> {
        let Mailing { mailer, site } = &*ctx.deps;
        let Some(email) = sqlx::query_scalar!(
            r#"SELECT email AS "email!" FROM users
                WHERE id = $1 AND email IS NOT NULL AND email_verified_at IS NOT NULL"#,
            self.user_id
        )
        .fetch_optional(&ctx.pool)
        .await?
        else {
            return Outcome::with_result("no verified address");
        };
        let scope = format!("sign-in:{}", self.user_id);
        if !quota::take(&ctx.pool, &scope, LINKS_PER_ACCOUNT_PER_HOUR).await? {
            tracing::warn!("sign-in link not sent: the account's hourly limit");
            return Outcome::with_result("over the account's hourly limit");
        }
        let token = tokens::create(
            &ctx.pool,
            Purpose::SignIn,
            self.user_id,
            &email,
            SIGN_IN_TTL,
        )
        .await?;
        let message = Message {
            // A retry sends the mail (and the link) the first attempt stored.
            key: format!("sign-in-link:{}", ctx.id),
            user_id: self.user_id,
            to: email,
            purpose: mail::Purpose::Notice,
            subject: "Your Hearth sign-in link".into(),
            body: format!(
                "Hello,\n\nsomeone (we hope you) asked for a link to sign in to Hearth. It \
                 works once, within 15 minutes:\n{site}/login/link/{token}\n\nIf it was not \
                 you, ignore this mail; your password still works.\n\n— Hearth\n"
            ),
        };
        let sent = mailer.send_once(&ctx.pool, &message).await?;
        Outcome::with_result(format!("{sent:?}"))
    }
}

fn sign_in_page(layout: Layout, token: &str) -> LinkPage {
    LinkPage {
        layout,
        title: "Sign in to Hearth",
        text: "This link signs you in once. Press the button to sign in.".into(),
        action: format!("/login/link/{token}"),
        button: "Sign in",
        error: None,
        again: "/login/link",
    }
}

/// The page a sign-in link opens: a button (mail scanners open links; only a person presses
/// it), or why the link cannot be used.
#[tracing::instrument(skip_all)]
pub(super) async fn confirm_form(
    State(state): State<AppState>,
    layout: Layout,
    Path(token): Path<String>,
) -> Result<Response, WebError> {
    let page = sign_in_page(layout, &token);
    match tokens::check(&state.db, Purpose::SignIn, &token).await? {
        Ok(()) => Ok(render(&page)?.into_response()),
        Err(error) => page.refused(error),
    }
}

/// The button: spends the link and starts a session as the login form does (the browser's
/// earlier session ended, a new CSRF token), if the address it went to is still the account's
/// verified one.
#[tracing::instrument(skip_all)]
pub(super) async fn confirm(
    State(state): State<AppState>,
    layout: Layout,
    cookies: CookieJar,
    signed: SignedCookieJar,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Result<Response, WebError> {
    let spent = match tokens::consume(&state.db, Purpose::SignIn, &token).await? {
        Ok(spent) => spent,
        Err(error) => return sign_in_page(layout, &token).refused(error),
    };
    let user = sqlx::query_as!(
        User,
        "SELECT id, username, is_admin, created_at FROM users
          WHERE id = $1 AND email = $2 AND email_verified_at IS NOT NULL",
        spent.user_id,
        spent.email
    )
    .fetch_optional(&state.db)
    .await?;
    let Some(user) = user else {
        tracing::info!(
            user_id = spent.user_id,
            "sign-in link for a replaced address"
        );
        return Err(WebError::Conflict(
            "This link went to an address the account no longer uses.".into(),
        ));
    };
    tracing::info!(user_id = user.id, "signed in with a mail link");
    let message = format!("Welcome back, {}.", user.username);
    start_session(&state, &user, cookies, signed, &headers, message, "/").await
}
