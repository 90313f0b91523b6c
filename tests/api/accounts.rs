//! Sign-up, login, logout, password change, CSRF and login throttling.

use axum::{Router, routing::get};
use hearth::web::{
    auth::{self, RequireAdmin},
    session,
};
use reqwest::StatusCode;

use crate::helpers::{TestApp, assert_redirect};

#[tokio::test]
async fn signup_signs_in_and_the_home_page_shows_the_user() {
    let app = TestApp::spawn().await;

    let response = app.signup("ada", "correct horse").await;

    assert_redirect(&response, "/");
    let home = app.browser().home().await;
    assert!(
        home.contains("Welcome to Hearth, ada!"),
        "flash message shown"
    );
    assert_eq!(app.browser().signed_in_as().await.as_deref(), Some("ada"));
    assert!(
        !app.browser()
            .home()
            .await
            .contains("Welcome to Hearth, ada!"),
        "flash shown once only"
    );
    let members: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(members, 1);
}

#[tokio::test]
async fn session_cookie_is_httponly_and_samesite_lax() {
    let app = TestApp::spawn().await;

    let response = app.signup("ada", "correct horse").await;

    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("hearth_session="))
        .expect("session cookie set");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Lax"), "{cookie}");
    assert!(
        !cookie.contains("Secure"),
        "not Secure unless configured: {cookie}"
    );
}

#[tokio::test]
async fn secure_cookies_when_configured() {
    let app = TestApp::builder()
        .config(|c| c.sessions.secure_cookies = true)
        .spawn()
        .await;

    let response = app.get("/login").await;

    let csrf = response.headers()["set-cookie"].to_str().unwrap();
    assert!(
        csrf.starts_with("hearth_csrf=") && csrf.contains("Secure"),
        "{csrf}"
    );
    let session =
        session::cookie("token".into(), std::time::Duration::from_secs(60), true).to_string();
    assert!(
        session.contains("Secure") && session.contains("HttpOnly"),
        "{session}"
    );
}

#[tokio::test]
async fn signup_rejects_bad_input_and_keeps_what_was_typed() {
    let app = TestApp::spawn().await;

    let short = app.signup("ada", "short").await;
    assert_eq!(short.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = short.text().await.unwrap();
    assert!(page.contains("at least 8 characters"));
    assert!(
        page.contains(r#"value="ada""#),
        "the username stays in the form"
    );

    let bad_name = app.signup("a b", "correct horse").await;
    assert_eq!(bad_name.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let mismatch = app
        .post_form(
            "/signup",
            &[
                ("username", "ada"),
                ("password", "correct horse"),
                ("password_confirm", "other horse"),
            ],
        )
        .await;
    assert_eq!(mismatch.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(mismatch.text().await.unwrap().contains("differ"));

    let members: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(members, 0);
}

#[tokio::test]
async fn usernames_are_unique_regardless_of_case() {
    let app = TestApp::spawn().await;
    app.signup("ada", "correct horse").await;

    let response = app.other_browser().signup("ADA", "correct horse").await;

    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert!(response.text().await.unwrap().contains("taken"));
}

#[tokio::test]
async fn logout_then_login_again() {
    let app = TestApp::spawn().await;
    app.signup("ada", "correct horse").await;

    let out = app.post_form("/logout", &[]).await;
    assert_redirect(&out, "/");
    assert_eq!(app.browser().signed_in_as().await, None);
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 0, "logout deletes the session row");

    let login = app.login("Ada", "correct horse").await;
    assert_redirect(&login, "/");
    assert_eq!(app.browser().signed_in_as().await.as_deref(), Some("ada"));
}

#[tokio::test]
async fn login_follows_next_but_only_to_local_paths() {
    let app = TestApp::spawn().await;
    app.signup("ada", "correct horse").await;
    app.post_form("/logout", &[]).await;

    let local = app
        .post_form(
            "/login",
            &[
                ("username", "ada"),
                ("password", "correct horse"),
                ("next", "/account/password"),
            ],
        )
        .await;
    assert_redirect(&local, "/account/password");

    let browser = app.other_browser();
    let evil = browser
        .post_form(
            "/login",
            &[
                ("username", "ada"),
                ("password", "correct horse"),
                ("next", "//evil.example/"),
            ],
        )
        .await;
    assert_redirect(&evil, "/");
}

#[tokio::test]
async fn wrong_password_is_refused() {
    let app = TestApp::spawn().await;
    app.signup("ada", "correct horse").await;
    let browser = app.other_browser();

    let response = browser.login("ada", "wrong horse").await;

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("Wrong username or password")
    );
    assert_eq!(browser.signed_in_as().await, None);
    let unknown = browser.login("nobody", "whatever123").await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account() {
    let app = TestApp::builder()
        .settings(|c: &mut hearth::accounts::AccountsSettings| c.login_limit_per_account = 3)
        .spawn()
        .await;
    app.signup("ada", "correct horse").await;
    let attacker = app.other_browser();
    for _ in 0..3 {
        assert_eq!(
            attacker.login("ada", "wrong horse").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }

    let blocked = attacker.login("ada", "correct horse").await;

    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = blocked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0 && retry_after <= 15 * 60);
    assert!(
        blocked
            .text()
            .await
            .unwrap()
            .contains("Too many failed attempts")
    );
    assert_eq!(
        attacker.signed_in_as().await,
        None,
        "even the right password is refused while throttled"
    );
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address() {
    let app = TestApp::builder()
        .settings(|c: &mut hearth::accounts::AccountsSettings| c.login_limit_per_address = 4)
        .spawn()
        .await;
    let browser = app.other_browser();
    // Valid usernames: a name no account can have ("u1" is too short) is refused without a
    // password check, so there is nothing to count.
    for name in ["user1", "user2", "user3", "user4"] {
        assert_eq!(
            browser.login(name, "guess12345").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }

    let blocked = browser.login("user5", "guess12345").await;

    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// A successful login forgets the failures of its client (its address, for a browser that had
/// not signed in before), so a mistyped password or two do not shorten the next try. (Before
/// issue #30 it forgot every failure against the account, strangers' included.)
#[tokio::test]
async fn a_successful_login_clears_the_clients_failures() {
    let app = TestApp::builder()
        .settings(|c: &mut hearth::accounts::AccountsSettings| c.login_limit_per_account = 3)
        .spawn()
        .await;
    app.signup("ada", "correct horse").await;
    let browser = app.other_browser();
    browser.login("ada", "wrong horse").await;
    browser.login("ada", "wrong horse").await;

    assert_redirect(&browser.login("ada", "correct horse").await, "/");

    // Another browser at the same address (no device cookie) has all three guesses again.
    let other = app.other_browser();
    for _ in 0..3 {
        assert_eq!(
            other.login("ada", "wrong horse").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        other.login("ada", "wrong horse").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn state_changing_requests_without_a_csrf_token_are_forbidden() {
    let app = TestApp::spawn().await;
    app.get("/login").await; // the browser now has a CSRF cookie

    let missing = app
        .client
        .post(app.url("/login"))
        .form(&[("username", "ada"), ("password", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::FORBIDDEN);
    assert!(missing.text().await.unwrap().contains("security token"));

    let wrong = app
        .client
        .post(app.url("/signup"))
        .form(&[
            ("username", "ada"),
            ("password", "correct horse"),
            ("password_confirm", "correct horse"),
            ("csrf_token", "forged"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);

    let no_cookie = crate::helpers::client()
        .post(app.url("/logout"))
        .header("x-csrf-token", app.csrf_token().await)
        .send()
        .await
        .unwrap();
    assert_eq!(
        no_cookie.status(),
        StatusCode::FORBIDDEN,
        "a token without its cookie is not enough"
    );

    let members: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(members, 0);
}

#[tokio::test]
async fn the_csrf_header_works_for_scripts() {
    let app = TestApp::spawn().await;
    let token = app.csrf_token().await;

    let response = app
        .client
        .post(app.url("/signup"))
        .header("x-csrf-token", token)
        .form(&[
            ("username", "ada"),
            ("password", "correct horse"),
            ("password_confirm", "correct horse"),
        ])
        .send()
        .await
        .unwrap();

    assert_redirect(&response, "/");
}

#[tokio::test]
async fn login_rotates_the_csrf_token() {
    let app = TestApp::spawn().await;
    let before = app.csrf_token().await;

    app.signup("ada", "correct horse").await;

    assert_ne!(app.csrf_token().await, before);
}

#[tokio::test]
async fn login_required_pages_redirect_and_api_answers_401() {
    let app = TestApp::spawn().await;

    assert_redirect(
        &app.get("/account/password").await,
        "/login?next=%2Faccount%2Fpassword",
    );
    let api = app.get("/api/me").await;
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = api.json().await.unwrap();
    assert_eq!(body["error"]["status"], 401);

    app.signup("ada", "correct horse").await;
    let me: serde_json::Value = app.get("/api/me").await.json().await.unwrap();
    assert_eq!(me["username"], "ada");
    assert_eq!(me["is_admin"], false);
}

#[tokio::test]
async fn admin_required_refuses_other_users() {
    let routes = Router::new().route(
        "/admin-only",
        get(|RequireAdmin(user): RequireAdmin| async move { user.username }),
    );
    let app = TestApp::builder().routes(routes).spawn().await;
    app.signup("ada", "correct horse").await;

    assert_eq!(app.get("/admin-only").await.status(), StatusCode::FORBIDDEN);

    sqlx::query("UPDATE users SET is_admin = true WHERE username = 'ada'")
        .execute(&app.pool)
        .await
        .unwrap();
    let response = app.get("/admin-only").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "ada");
}

#[tokio::test]
async fn changing_the_password_signs_out_other_sessions() {
    let app = TestApp::spawn().await;
    app.signup("ada", "correct horse").await;
    let laptop = app.other_browser();
    laptop.login("ada", "correct horse").await;
    assert_eq!(laptop.signed_in_as().await.as_deref(), Some("ada"));

    let wrong = app
        .post_form(
            "/account/password",
            &[
                ("current_password", "nope"),
                ("new_password", "battery staple"),
                ("new_password_confirm", "battery staple"),
            ],
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let changed = app
        .post_form(
            "/account/password",
            &[
                ("current_password", "correct horse"),
                ("new_password", "battery staple"),
                ("new_password_confirm", "battery staple"),
            ],
        )
        .await;
    assert_redirect(&changed, "/");

    assert_eq!(
        app.browser().signed_in_as().await.as_deref(),
        Some("ada"),
        "this session stays"
    );
    assert_eq!(laptop.signed_in_as().await, None, "the other session ended");
    let fresh = app.other_browser();
    assert_eq!(
        fresh.login("ada", "correct horse").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_redirect(&fresh.login("ada", "battery staple").await, "/");
}

#[tokio::test]
async fn a_forged_or_garbage_session_cookie_is_just_anonymous() {
    let app = TestApp::spawn().await;

    let response = crate::helpers::client()
        .get(app.url("/"))
        .header("cookie", "hearth_session=%%%not-a-token")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("Log in"));
}

#[tokio::test]
async fn expired_sessions_are_ignored_and_swept() {
    let app = TestApp::spawn().await;
    let slot = app.state.hasher.enter().unwrap();
    let user = auth::create_user(
        &app.pool,
        &slot,
        &auth::Username::parse("ada").unwrap(),
        &auth::NewPassword::parse("correct horse").unwrap(),
        false,
    )
    .await
    .unwrap();
    let live = session::create(&app.pool, user.id, std::time::Duration::from_secs(60), None)
        .await
        .unwrap();
    let old = session::create(&app.pool, user.id, std::time::Duration::from_secs(60), None)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE token_hash = $1",
    )
    .bind(sha_of(&old))
    .execute(&app.pool)
    .await
    .unwrap();

    assert!(
        auth::user_for_session(&app.pool, &live)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        auth::user_for_session(&app.pool, &old)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(session::sweep_expired(&app.pool).await.unwrap(), 1);
    assert_eq!(
        hearth::accounts::throttle::sweep(&app.pool).await.unwrap(),
        0
    );
}

fn sha_of(token: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}
