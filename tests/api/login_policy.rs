//! The failed-login policy (issue #30, holes 2 and 4): attempts counted before the password is
//! hashed, hashing under a bound, a growing delay instead of a lockout, and device cookies that
//! keep strangers' failures from locking the owner out.
//!
//! Clients at other addresses are browsers bound to other loopback addresses
//! ([`TestApp::browser_from`]). Hash counts come from `/metrics`, as the benchmark reads them.

use std::net::IpAddr;

use reqwest::{Response, StatusCode};

use crate::helpers::{Browser, TestApp, assert_redirect};

const METRICS_TOKEN: &str = "login-policy-metrics-token-0123";
const HASHES: &str = "hearth_password_hashes_total";

fn ip(addr: &str) -> IpAddr {
    addr.parse().unwrap()
}

/// A metric's value from `/metrics`, or `None` when the server does not export it.
async fn metric(app: &TestApp, name: &str) -> Option<u64> {
    let text = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Posts all these logins (username, password) from `browser` at once, with its CSRF token.
async fn at_once(app: &TestApp, browser: &Browser<'_>, logins: &[(&str, &str)]) -> Vec<Response> {
    let token = browser.csrf_token().await;
    let mut requests = tokio::task::JoinSet::new();
    for (username, password) in logins {
        let form = [
            ("username", *username),
            ("password", *password),
            ("csrf_token", token.as_str()),
        ];
        let request = browser.client.post(app.url("/login")).form(&form);
        requests.spawn(async move { request.send().await.expect("POST /login") });
    }
    requests.join_all().await
}

fn retry_after(response: &Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn concurrent_wrong_passwords_for_one_account_are_checked_at_most_the_limit() {
    let app = TestApp::builder()
        .config(|c| c.http.metrics_token = Some(METRICS_TOKEN.into()))
        .spawn()
        .await;
    app.signup("ada", "correct horse").await;
    let limit = app
        .state
        .sections
        .get::<hearth::accounts::AccountsSettings>()
        .unwrap()
        .login_limit_per_account as usize;
    let attacker = app.other_browser();
    let hashed_before = metric(&app, HASHES).await;

    let responses = at_once(&app, &attacker, &[("ada", "wrong horse"); 30]).await;

    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        (1..=limit).contains(&checked),
        "{checked} of 30 guesses were checked against a limit of {limit}: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| matches!(s, 401 | 429 | 503)),
        "{statuses:?}"
    );
    let slowed = responses.iter().find(|r| r.status() == 429).expect("a 429");
    assert!(retry_after(slowed) > 0);
    let hashed = metric(&app, HASHES).await.zip(hashed_before);
    assert_eq!(
        hashed.map(|(after, before)| after - before),
        Some(checked as u64),
        "one hash per checked guess, none for the refused ones"
    );
}

#[tokio::test]
async fn a_login_flood_beyond_the_hashing_bound_is_refused_at_once() {
    let app = TestApp::builder()
        .config(|c| {
            c.http.metrics_token = Some(METRICS_TOKEN.into());
            c.sessions.password_hash_concurrency = 2;
            c.sessions.password_hash_queue = 2;
        })
        .settings(|c: &mut hearth::accounts::AccountsSettings| c.login_limit_per_address = 1_000)
        .spawn()
        .await;
    let flooder = app.other_browser();

    // While the line is full, a login is refused before any work, with a way to retry.
    let line: Vec<_> = (0..4).map(|_| app.state.hasher.enter().unwrap()).collect();
    let refused = at_once(&app, &flooder, &[("nobody", "guess12345")]).await;
    assert_eq!(refused[0].status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry_after(&refused[0]) > 0);
    drop(line);
    let page = refused.into_iter().next().unwrap().text().await.unwrap();
    assert!(page.contains("busy checking passwords"), "{page}");

    // A flood: 40 logins at once for as many accounts.
    let names: Vec<String> = (0..40).map(|i| format!("user{i}")).collect();
    let logins: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "guess12345")).collect();
    let responses = at_once(&app, &flooder, &logins).await;

    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert!(
        statuses.iter().all(|s| matches!(s, 401 | 503)),
        "{statuses:?}"
    );
    let busy = statuses.iter().filter(|s| **s == 503).count() as u64;
    assert!(busy > 0, "a flood past the line is refused: {statuses:?}");
    let peak = metric(&app, "hearth_password_hashes_running_peak").await;
    assert!(
        peak.is_some_and(|peak| (1..=2).contains(&peak)),
        "at most 2 hashes at once, saw {peak:?}"
    );
    let refused_total = metric(&app, "hearth_password_hash_refused_total").await;
    assert_eq!(refused_total, Some(1 + busy));
    assert_eq!(
        metric(&app, "hearth_password_hashes_running").await,
        Some(0)
    );
}

#[tokio::test]
async fn strangers_failures_do_not_lock_out_the_owner_on_a_known_device() {
    let app = TestApp::builder()
        .settings(|c: &mut hearth::accounts::AccountsSettings| c.login_limit_per_account = 3)
        .spawn()
        .await;
    let owner = app.browser_from(ip("127.0.0.2"));
    assert_redirect(&owner.signup("ada", "correct horse").await, "/");
    owner.post_form("/logout", &[]).await;

    // Strangers at ten addresses guess until each is told to wait.
    for i in 1..=10 {
        let stranger = app.browser_from(ip(&format!("127.0.1.{i}")));
        let mut guesses = 0;
        let slowed = loop {
            let response = stranger.login("ada", "wrong horse").await;
            if response.status() != StatusCode::UNAUTHORIZED {
                break response;
            }
            guesses += 1;
            assert!(guesses <= 3, "a stranger gets 3 guesses at most");
        };
        assert_eq!(slowed.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(retry_after(&slowed) > 0);
        assert!(
            slowed
                .text()
                .await
                .unwrap()
                .contains("Too many failed attempts")
        );
    }
    // Past the strangers' allowance for the account, a new device waits even with the right
    // password (the owner there signs in another way, such as an emailed link)...
    let new_device = app.browser_from(ip("127.0.2.1"));
    let waits = new_device.login("ada", "correct horse").await;
    assert_eq!(waits.status(), StatusCode::TOO_MANY_REQUESTS);

    // ...but the owner's own browser, which signed in before, is judged by its own failures.
    assert_redirect(&owner.login("ada", "correct horse").await, "/");
    assert_eq!(owner.signed_in_as().await.as_deref(), Some("ada"));
}

#[tokio::test]
async fn a_known_device_is_slowed_by_its_own_failures_and_names_one_account() {
    let app = TestApp::builder()
        .settings(|c: &mut hearth::accounts::AccountsSettings| c.login_limit_per_account = 3)
        .spawn()
        .await;
    let owner = app.other_browser();
    let signup = owner.signup("ada", "correct horse").await;
    let cookie = signup
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("hearth_device="))
        .expect("a device cookie")
        .to_owned();
    for attribute in ["HttpOnly", "Path=/login", "SameSite=Lax"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    owner.post_form("/logout", &[]).await;
    for _ in 0..3 {
        assert_eq!(
            owner.login("ada", "wrong horse").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        owner.login("ada", "correct horse").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // A device of one account is a stranger to another: it gets a stranger's guesses there.
    let eve = app.browser_from(ip("127.0.3.1"));
    assert_redirect(&eve.signup("eve", "eve's password").await, "/");
    for _ in 0..3 {
        assert_eq!(
            eve.login("ada", "wrong horse").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        eve.login("ada", "wrong horse").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn the_wait_doubles_with_each_further_failure() {
    let app = TestApp::builder()
        .settings(|c: &mut hearth::accounts::AccountsSettings| {
            c.login_limit_per_account = 2;
            c.login_backoff = std::time::Duration::from_secs(60);
        })
        .spawn()
        .await;
    app.signup("ada", "correct horse").await;
    let stranger = app.other_browser();
    for _ in 0..2 {
        stranger.login("ada", "wrong horse").await;
    }

    let mut waits = Vec::new();
    for _ in 0..3 {
        let slowed = stranger.login("ada", "wrong horse").await;
        assert_eq!(slowed.status(), StatusCode::TOO_MANY_REQUESTS);
        waits.push(retry_after(&slowed));
        // The wait passes, and the next guess is checked (and fails).
        sqlx::query("UPDATE login_throttle SET blocked_until = now()")
            .execute(&app.pool)
            .await
            .unwrap();
        assert_eq!(
            stranger.login("ada", "wrong horse").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }

    // Each Retry-After is rounded up from what is left of the wait: a few seconds of slack.
    for (wait, full) in waits.iter().zip([60, 120, 240]) {
        assert!(
            (full - 5..=full).contains(wait),
            "waits of about 1, 2 and 4 minutes: {waits:?}"
        );
    }
}

#[tokio::test]
async fn forgiving_an_account_lets_the_owner_in_from_a_new_device() {
    let app = TestApp::builder()
        .settings(|c: &mut hearth::accounts::AccountsSettings| {
            c.login_limit_per_account = 2;
            c.login_limit_per_account_strangers = 4;
        })
        .spawn()
        .await;
    app.signup("ada", "correct horse").await;
    for i in 1..=3 {
        let stranger = app.browser_from(ip(&format!("127.0.4.{i}")));
        stranger.login("ada", "wrong horse").await;
        stranger.login("ada", "wrong horse").await;
    }
    let new_device = app.browser_from(ip("127.0.5.1"));
    assert_eq!(
        new_device.login("ada", "correct horse").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // What an emailed sign-in link does once it has proved the owner.
    hearth::accounts::throttle::forgive_account(&app.pool, "Ada")
        .await
        .unwrap();

    assert_redirect(&new_device.login("ada", "correct horse").await, "/");
}
