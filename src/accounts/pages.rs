//! The account pages and their form handlers.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use askama::Template;
use axum::{
    Extension, Form, Json,
    extract::{ConnectInfo, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use axum_extra::extract::{CookieJar, SignedCookieJar};
use serde::Deserialize;

use super::{
    Deps, Email, device,
    email::save as save_email,
    throttle::{self, Attempt, Client, Policy},
};
use crate::web::{
    AppState, Layout, WebError,
    auth::{self, CreateUserError, NewPassword, RequireLogin, User, Username},
    csrf, flash,
    hashing::Slot,
    render, safe_next, session,
};

#[derive(Template)]
#[template(path = "accounts/signup.html")]
struct SignupPage {
    layout: Layout,
    username: String,
    email: String,
    /// A problem with the whole form (the server is busy).
    error: Option<String>,
    /// What is wrong with each field, all shown at once beside their fields.
    fields: SignupErrors,
}

/// The sign-up form's problems, field by field.
#[derive(Debug, Default)]
struct SignupErrors {
    username: Option<String>,
    email: Option<String>,
    password: Option<String>,
    password_confirm: Option<String>,
}

impl SignupErrors {
    /// Every problem of the form that can be told without the database.
    fn of(form: &SignupForm) -> Self {
        let confirm = (form.password != form.password_confirm)
            .then(|| "The two passwords differ.".to_string());
        Self {
            username: Username::parse(&form.username).err(),
            email: Email::parse_optional(&form.email).err(),
            password: NewPassword::parse(&form.password).err(),
            password_confirm: confirm,
        }
    }

    fn count(&self) -> usize {
        [
            &self.username,
            &self.email,
            &self.password,
            &self.password_confirm,
        ]
        .iter()
        .filter(|e| e.is_some())
        .count()
    }
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

/// A form page again with an error and a `Retry-After` of `wait` (at least a second).
fn retry_later(status: StatusCode, page: &impl Template, wait: Duration) -> Response {
    let mut response = form_error(status, page);
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// What a form says when the password hashing line is full
/// ([`Busy`](crate::web::hashing::Busy)): 503, try again shortly.
const BUSY: &str = "The server is busy checking passwords. Please try again in a few seconds.";
const BUSY_WAIT: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
pub(super) struct SignupForm {
    username: String,
    /// Optional: without an address, notifications stay in the app.
    #[serde(default)]
    email: String,
    password: String,
    password_confirm: String,
}

/// The sign-up form; someone already signed in is sent home (there is nothing to do here).
pub(super) async fn signup_form(layout: Layout) -> Result<Response, WebError> {
    if layout.user.is_some() {
        return Ok(Redirect::to("/").into_response());
    }
    Ok(render(&SignupPage {
        layout,
        username: String::new(),
        email: String::new(),
        error: None,
        fields: SignupErrors::default(),
    })?
    .into_response())
}

#[tracing::instrument(skip_all, fields(username = %form.username))]
pub(super) async fn signup(
    State(state): State<AppState>,
    Extension(deps): Extension<Arc<Deps>>,
    layout: Layout,
    cookies: CookieJar,
    signed: SignedCookieJar,
    headers: HeaderMap,
    Form(form): Form<SignupForm>,
) -> Result<Response, WebError> {
    let page = |layout, error: Option<String>, fields| SignupPage {
        layout,
        username: form.username.clone(),
        email: form.email.clone(),
        error,
        fields,
    };
    let fields = SignupErrors::of(&form);
    let (Ok(username), Ok(password), Ok(email), 0) = (
        Username::parse(&form.username),
        NewPassword::parse(&form.password),
        Email::parse_optional(&form.email),
        fields.count(),
    ) else {
        let page = page(layout, None, fields);
        return Ok(form_error(StatusCode::UNPROCESSABLE_ENTITY, &page));
    };
    let busy = |layout| {
        let page = page(layout, Some(BUSY.into()), SignupErrors::default());
        Ok(retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            &page,
            BUSY_WAIT,
        ))
    };
    let Ok(slot) = state.hasher.enter() else {
        return busy(layout);
    };
    let user = match auth::create_user(&state.db, &slot, &username, &password, false).await {
        Ok(user) => user,
        Err(CreateUserError::UsernameTaken(_)) => {
            let fields = SignupErrors {
                username: Some("That username is taken.".into()),
                ..SignupErrors::default()
            };
            return Ok(form_error(
                StatusCode::CONFLICT,
                &page(layout, None, fields),
            ));
        }
        Err(CreateUserError::Database(e)) => return Err(e.into()),
        Err(CreateUserError::Hash(e)) => return Err(e.into()),
    };
    let mut message = format!("Welcome to Hearth, {}!", user.username);
    if let Some(email) = &email
        && let Some(notice) = save_email(&state, &deps.mailer, user.id, Some(email), None).await?
    {
        message = format!("{message} {notice}");
    }
    tracing::info!(user_id = user.id, "signed up");
    start_session(&state, &user, cookies, signed, &headers, message, "/").await
}

/// Creates the session, rotates the CSRF token (so a token seen before login is worthless
/// after it), remembers the browser as a device of the user (see [`device`]) and redirects
/// with a flash message. A session this browser already held (an earlier login, or one an
/// attacker planted) is ended, not just replaced in the cookie: its token may be known to
/// someone else.
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
    let ttl = state.config.sessions.session_ttl;
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let token = session::create(&state.db, user.id, ttl, agent).await?;
    let secure = state.config.sessions.secure_cookies;
    let cookies = cookies.add(session::cookie(token, ttl, secure));
    let signed = device::remember(signed, user.id, secure);
    let signed = flash::set(signed.add(csrf::cookie(csrf::new_token(), secure)), message);
    Ok((cookies, signed, Redirect::to(to)).into_response())
}

#[derive(Deserialize)]
pub(super) struct NextParam {
    next: Option<String>,
}

/// The login form; someone already signed in goes straight where the login would have led.
pub(super) async fn login_form(
    layout: Layout,
    Query(query): Query<NextParam>,
) -> Result<Response, WebError> {
    let next = safe_next(query.next.as_deref());
    if layout.user.is_some() {
        return Ok(Redirect::to(&next).into_response());
    }
    Ok(render(&LoginPage {
        layout,
        username: String::new(),
        next,
        error: None,
    })?
    .into_response())
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

/// Logs in. The password is checked only once [`admit`] lets the attempt through: 429 with
/// `Retry-After` when the throttle says to wait, 503 when the password hashing line is full.
/// A browser holding a device cookie for the account is judged by its own failures alone.
#[tracing::instrument(skip_all, fields(username = %form.username, client = %addr.ip()))]
// One argument per extractor: the handler reads the form and all that decides its fate.
#[allow(clippy::too_many_arguments)]
pub(super) async fn login(
    State(state): State<AppState>,
    Extension(deps): Extension<Arc<Deps>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    layout: Layout,
    cookies: CookieJar,
    signed: SignedCookieJar,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, WebError> {
    let next = safe_next(form.next.as_deref());
    let page = |error: &str, layout| LoginPage {
        layout,
        username: form.username.trim().to_string(),
        next: next.clone(),
        error: Some(error.to_string()),
    };
    // No account has an invalid name: nothing to check, hash or count.
    let Ok(username) = Username::parse(&form.username) else {
        let wrong = page("Wrong username or password.", layout);
        return Ok(form_error(StatusCode::UNAUTHORIZED, &wrong));
    };
    let found = auth::find_credentials(&state.db, username.as_str()).await?;
    let client = match found
        .as_ref()
        .and_then(|(user, _)| device::known(&signed, user.id))
    {
        Some(device) => Client::Device(device),
        None => Client::Stranger(addr.ip()),
    };
    let known_device = matches!(client, Client::Device(_));
    let (attempt, slot) = match admit(&state, &deps.policy, &username, &client).await? {
        Ok(admitted) => admitted,
        Err(Refused::Wait(wait)) => {
            tracing::warn!(?wait, known_device, "login throttled");
            let message = format!("Too many failed attempts. Try again in {}.", in_words(wait));
            let throttled = page(&message, layout);
            return Ok(retry_later(StatusCode::TOO_MANY_REQUESTS, &throttled, wait));
        }
        Err(Refused::Busy) => {
            // Counted in /metrics (hearth_password_hash_refused_total): a log line each would
            // let a flood fill the log as well.
            tracing::debug!("login refused: the password hashing line is full");
            let busy = page(BUSY, layout);
            return Ok(retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                &busy,
                BUSY_WAIT,
            ));
        }
    };
    let user = match found {
        Some((user, hash)) => slot
            .verify(form.password.clone(), hash)
            .await
            .then_some(user),
        None => {
            slot.burn(form.password.clone()).await;
            None
        }
    };
    drop(slot);
    let Some(user) = user else {
        tracing::info!(known_device, "login failed");
        let wrong = page("Wrong username or password.", layout);
        return Ok(form_error(StatusCode::UNAUTHORIZED, &wrong));
    };
    attempt.succeeded(&state.db).await?;
    tracing::info!(user_id = user.id, "logged in");
    let message = format!("Welcome back, {}.", user.username);
    start_session(&state, &user, cookies, signed, &headers, message, &next).await
}

/// Why a login attempt does not get its password checked.
enum Refused {
    /// The throttle says to wait this long.
    Wait(Duration),
    /// The password hashing line is full.
    Busy,
}

/// Admits a login attempt to a password check: the throttle's check, a place in the hashing
/// line, then the attempt counted, in that order, so a refused attempt costs no hash and is
/// not counted (dropping the pending attempt releases its counters untouched). While the line
/// is full, a flood is refused before the throttle's transaction too.
async fn admit(
    state: &AppState,
    policy: &Policy,
    username: &Username,
    client: &Client,
) -> Result<Result<(Attempt, Slot), Refused>, WebError> {
    // A full line refuses at once, before any database work (`enter` below still decides).
    if state.hasher.has_room().is_err() {
        return Ok(Err(Refused::Busy));
    }
    let pending = match throttle::check(&state.db, policy, username.as_str(), client).await? {
        Ok(pending) => pending,
        Err(wait) => return Ok(Err(Refused::Wait(wait))),
    };
    let Ok(slot) = state.hasher.enter() else {
        return Ok(Err(Refused::Busy));
    };
    Ok(Ok((pending.count().await?, slot)))
}

/// A wait for people: "42 seconds", "3 minutes".
fn in_words(wait: Duration) -> String {
    match wait.as_secs_f64().ceil() as u64 {
        0..=1 => "a second".to_string(),
        s @ 2..=90 => format!("{s} seconds"),
        s => format!("{} minutes", s.div_ceil(60)),
    }
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
    let Ok(slot) = state.hasher.enter() else {
        let page = PasswordPage {
            layout,
            error: Some(BUSY.into()),
        };
        return Ok(retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            &page,
            BUSY_WAIT,
        ));
    };
    let stored = auth::password_hash(&state.db, login.user.id).await?;
    if !slot.verify(form.current_password, stored).await {
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
    auth::set_password(&state.db, &slot, login.user.id, &new_password).await?;
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
    Extension(deps): Extension<Arc<Deps>>,
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
        &deps.mailer,
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
