//! The account pages and their form handlers.

use std::net::SocketAddr;

use askama::Template;
use axum::{
    Form, Json,
    extract::{ConnectInfo, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use axum_extra::extract::{CookieJar, SignedCookieJar};
use serde::Deserialize;

use super::{
    Email,
    email::save as save_email,
    throttle::{self, Limits},
};
use crate::web::{
    AppState, Layout, WebError,
    auth::{self, CreateUserError, NewPassword, RequireLogin, User, Username},
    csrf, flash, render, safe_next, session,
};

#[derive(Template)]
#[template(path = "accounts/signup.html")]
struct SignupPage {
    layout: Layout,
    username: String,
    email: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "accounts/login.html")]
struct LoginPage {
    layout: Layout,
    username: String,
    next: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "accounts/password.html")]
struct PasswordPage {
    layout: Layout,
    error: Option<String>,
}

/// Renders a form page again with an error, under the given status.
fn form_error(status: StatusCode, page: &impl Template) -> Response {
    match render(page) {
        Ok(html) => (status, html).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub(super) struct SignupForm {
    username: String,
    /// Optional: without an address, notifications stay in the app.
    #[serde(default)]
    email: String,
    password: String,
    password_confirm: String,
}

pub(super) async fn signup_form(layout: Layout) -> Result<impl IntoResponse, WebError> {
    render(&SignupPage {
        layout,
        username: String::new(),
        email: String::new(),
        error: None,
    })
}

#[tracing::instrument(skip_all, fields(username = %form.username))]
pub(super) async fn signup(
    State(state): State<AppState>,
    layout: Layout,
    cookies: CookieJar,
    signed: SignedCookieJar,
    headers: HeaderMap,
    Form(form): Form<SignupForm>,
) -> Result<Response, WebError> {
    let invalid = |status, error: String, layout| {
        form_error(
            status,
            &SignupPage {
                layout,
                username: form.username.clone(),
                email: form.email.clone(),
                error: Some(error),
            },
        )
    };
    let username = match Username::parse(&form.username) {
        Ok(username) => username,
        Err(e) => return Ok(invalid(StatusCode::UNPROCESSABLE_ENTITY, e, layout)),
    };
    let password = match NewPassword::parse(&form.password) {
        Ok(password) => password,
        Err(e) => return Ok(invalid(StatusCode::UNPROCESSABLE_ENTITY, e, layout)),
    };
    let email = match Email::parse_optional(&form.email) {
        Ok(email) => email,
        Err(e) => return Ok(invalid(StatusCode::UNPROCESSABLE_ENTITY, e, layout)),
    };
    if form.password != form.password_confirm {
        return Ok(invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The two passwords differ.".into(),
            layout,
        ));
    }
    let user = match auth::create_user(&state.db, &username, &password, false).await {
        Ok(user) => user,
        Err(CreateUserError::UsernameTaken(_)) => {
            return Ok(invalid(
                StatusCode::CONFLICT,
                "That username is taken.".into(),
                layout,
            ));
        }
        Err(CreateUserError::Database(e)) => return Err(e.into()),
        Err(CreateUserError::Hash(e)) => return Err(e.into()),
    };
    let mut message = format!("Welcome to Hearth, {}!", user.username);
    if let Some(email) = &email
        && let Some(notice) = save_email(&state, user.id, Some(email), None).await?
    {
        message = format!("{message} {notice}");
    }
    tracing::info!(user_id = user.id, "signed up");
    start_session(&state, &user, cookies, signed, &headers, message, "/").await
}

/// Creates the session, rotates the CSRF token (so a token seen before login is worthless
/// after it) and redirects with a flash message. A session this browser already held (an
/// earlier login, or one an attacker planted) is ended, not just replaced in the cookie: its
/// token may be known to someone else.
pub(super) async fn start_session(
    state: &AppState,
    user: &User,
    cookies: CookieJar,
    signed: SignedCookieJar,
    headers: &HeaderMap,
    message: String,
    to: &str,
) -> Result<Response, WebError> {
    if let Some(previous) = cookies.get(session::COOKIE) {
        session::delete(&state.db, previous.value()).await?;
    }
    let ttl = state.config.session_ttl;
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let token = session::create(&state.db, user.id, ttl, agent).await?;
    let secure = state.config.secure_cookies;
    let cookies = cookies.add(session::cookie(token, ttl, secure));
    let signed = flash::set(signed.add(csrf::cookie(csrf::new_token(), secure)), message);
    Ok((cookies, signed, Redirect::to(to)).into_response())
}

#[derive(Deserialize)]
pub(super) struct NextParam {
    next: Option<String>,
}

pub(super) async fn login_form(
    layout: Layout,
    Query(query): Query<NextParam>,
) -> Result<impl IntoResponse, WebError> {
    render(&LoginPage {
        layout,
        username: String::new(),
        next: safe_next(query.next.as_deref()),
        error: None,
    })
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

#[tracing::instrument(skip_all, fields(username = %form.username, client = %addr.ip()))]
pub(super) async fn login(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    layout: Layout,
    cookies: CookieJar,
    signed: SignedCookieJar,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, WebError> {
    let next = safe_next(form.next.as_deref());
    let username = form.username.trim();
    let page = |error: &str, layout| LoginPage {
        layout,
        username: username.to_string(),
        next: next.clone(),
        error: Some(error.to_string()),
    };
    let config = &state.config;
    let limits = Limits {
        per_account: config.login_limit_per_account,
        per_address: config.login_limit_per_address,
        window: config.login_limit_window,
    };
    if let Some(wait) = throttle::check(&state.db, limits, username, addr.ip()).await? {
        tracing::warn!(?wait, "login throttled");
        let minutes = wait.as_secs().div_ceil(60);
        let mut response = form_error(
            StatusCode::TOO_MANY_REQUESTS,
            &page(
                &format!("Too many failed attempts. Try again in {minutes} minute(s)."),
                layout,
            ),
        );
        if let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Ok(response);
    }

    let found = auth::find_credentials(&state.db, username).await?;
    let user = match found {
        Some((user, hash)) => auth::verify_password(form.password.clone(), hash)
            .await
            .then_some(user),
        None => {
            auth::burn_password_check(form.password.clone()).await;
            None
        }
    };
    let Some(user) = user else {
        throttle::record_failure(&state.db, username, addr.ip()).await?;
        tracing::info!("login failed");
        return Ok(form_error(
            StatusCode::UNAUTHORIZED,
            &page("Wrong username or password.", layout),
        ));
    };
    throttle::clear_account(&state.db, username).await?;
    tracing::info!(user_id = user.id, "logged in");
    let message = format!("Welcome back, {}.", user.username);
    start_session(&state, &user, cookies, signed, &headers, message, &next).await
}

pub(super) async fn logout(
    State(state): State<AppState>,
    cookies: CookieJar,
    signed: SignedCookieJar,
) -> Result<Response, WebError> {
    if let Some(token) = cookies.get(session::COOKIE).map(|c| c.value().to_owned()) {
        session::delete(&state.db, &token).await?;
    }
    let cookies = cookies.add(session::removal_cookie());
    Ok((
        cookies,
        flash::set(signed, "You are signed out."),
        Redirect::to("/"),
    )
        .into_response())
}

pub(super) async fn password_form(
    _login: RequireLogin,
    layout: Layout,
) -> Result<impl IntoResponse, WebError> {
    render(&PasswordPage {
        layout,
        error: None,
    })
}

#[derive(Deserialize)]
pub(super) struct PasswordForm {
    current_password: String,
    new_password: String,
    new_password_confirm: String,
}

#[tracing::instrument(skip_all, fields(user_id = login.user.id))]
pub(super) async fn change_password(
    State(state): State<AppState>,
    login: RequireLogin,
    layout: Layout,
    signed: SignedCookieJar,
    Form(form): Form<PasswordForm>,
) -> Result<Response, WebError> {
    let invalid = |error: String, layout| {
        form_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &PasswordPage {
                layout,
                error: Some(error),
            },
        )
    };
    let stored = auth::password_hash(&state.db, login.user.id).await?;
    if !auth::verify_password(form.current_password, stored).await {
        return Ok(invalid(
            "Your current password is not right.".into(),
            layout,
        ));
    }
    let new_password = match NewPassword::parse(&form.new_password) {
        Ok(p) => p,
        Err(e) => return Ok(invalid(e, layout)),
    };
    if form.new_password != form.new_password_confirm {
        return Ok(invalid("The two new passwords differ.".into(), layout));
    }
    auth::set_password(&state.db, login.user.id, &new_password).await?;
    // Anyone else signed in as this user (a stolen session, a forgotten laptop) is signed out.
    let ended = session::delete_others(&state.db, login.user.id, &login.token).await?;
    tracing::info!(other_sessions_ended = ended, "password changed");
    Ok((
        flash::set(
            signed,
            "Your password was changed; other sessions were signed out.",
        ),
        Redirect::to("/"),
    )
        .into_response())
}

/// The signed-in user as JSON.
pub(super) async fn me(login: RequireLogin) -> Json<User> {
    Json(login.user)
}

#[derive(Template)]
#[template(path = "accounts/settings.html")]
struct SettingsPage {
    layout: Layout,
    email: String,
    /// Whether `email` is the stored address, verified.
    verified: bool,
    digest_by_mail: bool,
    error: Option<String>,
}

pub(super) async fn settings_form(
    State(state): State<AppState>,
    login: RequireLogin,
    layout: Layout,
) -> Result<Response, WebError> {
    let row = sqlx::query!(
        r#"SELECT email, digest_by_mail, email_verified_at IS NOT NULL AS "verified!"
             FROM users WHERE id = $1"#,
        login.user.id
    )
    .fetch_one(&state.db)
    .await?;
    Ok(render(&SettingsPage {
        layout,
        email: row.email.unwrap_or_default(),
        verified: row.verified,
        digest_by_mail: row.digest_by_mail,
        error: None,
    })?
    .into_response())
}

#[derive(Deserialize)]
pub(super) struct SettingsForm {
    #[serde(default)]
    email: String,
    /// A checkbox: present when ticked.
    digest_by_mail: Option<String>,
}

/// Saves the mail address (a new one unverified, with a verification mail: see `email.rs`)
/// and the notification preference: in-app only, or also the daily digest by mail.
#[tracing::instrument(skip_all, fields(user_id = login.user.id))]
pub(super) async fn settings(
    State(state): State<AppState>,
    login: RequireLogin,
    layout: Layout,
    signed: SignedCookieJar,
    Form(form): Form<SettingsForm>,
) -> Result<Response, WebError> {
    let email = match Email::parse_optional(&form.email) {
        Ok(email) => email,
        Err(error) => {
            let page = SettingsPage {
                layout,
                email: form.email,
                verified: false,
                digest_by_mail: form.digest_by_mail.is_some(),
                error: Some(error),
            };
            return Ok(form_error(StatusCode::UNPROCESSABLE_ENTITY, &page));
        }
    };
    let notice = save_email(
        &state,
        login.user.id,
        email.as_ref(),
        Some(form.digest_by_mail.is_some()),
    )
    .await?;
    let message = match notice {
        Some(notice) => format!("Settings saved. {notice}"),
        None => "Settings saved.".to_owned(),
    };
    Ok((
        flash::set(signed, message),
        Redirect::to("/account/settings"),
    )
        .into_response())
}
