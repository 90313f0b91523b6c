//! Issue #30, hole 3 (mail to any address with text the attacker chooses) and the owner's way
//! in for hole 4 (a sign-in link mailed to the verified address): addresses are verified
//! before Hearth mails them, a post is announced once however often it is republished, mail
//! per recipient and per user is limited atomically, and mail links work once, before they
//! expire, for the address they went to.

use futures::future::join_all;
use hearth::{
    accounts::{LINKS_PER_ACCOUNT_PER_HOUR, VERIFICATIONS_PER_USER_PER_HOUR},
    mail::{Dropped, Mailer, Message, Purpose, Sent, quota::PER_RECIPIENT_PER_HOUR},
};
use reqwest::StatusCode;

use crate::helpers::{TestApp, TestUser, assert_redirect, link_in};

/// Every mail in the outbox, oldest first: (key, to, subject, body).
async fn mails(app: &TestApp) -> Vec<(String, String, String, String)> {
    sqlx::query_as("SELECT idempotency_key, to_address, subject, body FROM outbox ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

/// The mails whose subject contains `text`.
async fn mails_about(app: &TestApp, text: &str) -> Vec<(String, String, String, String)> {
    let mut all = mails(app).await;
    all.retain(|(_, _, subject, _)| subject.contains(text));
    all
}

async fn verified(app: &TestApp, user: &TestUser<'_>) -> bool {
    sqlx::query_scalar("SELECT email_verified_at IS NOT NULL FROM users WHERE id = $1")
        .bind(user.id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn settings(user: &TestUser<'_>) -> String {
    user.get("/account/settings").await.text().await.unwrap()
}

#[tokio::test]
async fn an_unverified_address_gets_no_post_mail_until_its_owner_follows_the_link() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    ada.set_unverified_email("stranger@example.com").await;
    let sent = mails(&app).await;
    assert_eq!(sent.len(), 1, "one verification mail: {sent:?}");
    assert_eq!(sent[0].1, "stranger@example.com");
    assert!(sent[0].2.contains("Confirm your mail address"), "{sent:?}");
    let page = settings(&ada).await;
    assert!(page.contains("Not verified yet"), "{page}");
    assert!(page.contains("Resend verification"), "{page}");

    ada.write("Verify your bank account at evil.example", "x", true)
        .await;
    app.drain("mail").await;
    assert_eq!(mails(&app).await.len(), 1, "no post mail while unverified");

    // A mail scanner opening the link verifies nothing: the page has a button.
    let link = ada.verification_link().await;
    let scanned = app.other_browser().get(&link).await;
    assert_eq!(scanned.status(), StatusCode::OK);
    assert!(scanned.text().await.unwrap().contains("Confirm my address"));
    assert!(!verified(&app, &ada).await);
    assert_redirect(&ada.post_form(&link, &[]).await, "/account/settings");
    assert!(verified(&app, &ada).await);
    assert!(settings(&ada).await.contains("Verified."));

    ada.write("Second post", "y", true).await;
    app.drain("mail").await;
    let announced = mails_about(&app, "Second post").await;
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_eq!(announced[0].1, "stranger@example.com");

    // A new address is unverified again; saving the same one keeps it verified.
    ada.set_unverified_email("other@example.com").await;
    assert!(!verified(&app, &ada).await);
    ada.write("Third post", "z", true).await;
    app.drain("mail").await;
    assert!(mails_about(&app, "Third post").await.is_empty());
}

#[tokio::test]
async fn four_publish_cycles_announce_a_post_once() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    ada.set_email("ada@example.com").await;
    let slug = ada.write("Cycle", "body", true).await;
    app.drain("mail").await;
    for _ in 0..3 {
        ada.post_form(&format!("/posts/{slug}/unpublish"), &[])
            .await;
        ada.post_form(&format!("/posts/{slug}/publish"), &[]).await;
        app.drain("mail").await;
    }
    let announced = mails_about(&app, "Cycle").await;
    assert_eq!(announced.len(), 1, "{announced:?}");
}

#[tokio::test]
async fn many_accounts_naming_one_address_get_it_at_most_the_hourly_limit() {
    let app = TestApp::spawn().await;
    let limit = PER_RECIPIENT_PER_HOUR as usize;
    let mut users = Vec::new();
    for i in 0..limit + 3 {
        users.push(app.user(&format!("user{i}")).await);
    }
    // All at once: each sends one verification mail to the same stranger.
    join_all(
        users
            .iter()
            .map(|u| u.set_unverified_email("victim@example.com")),
    )
    .await;
    let to_victim = mails(&app).await;
    assert_eq!(to_victim.len(), limit, "{to_victim:?}");
}

#[tokio::test]
async fn concurrent_resends_stop_at_the_users_limit_with_a_clear_message() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    // Setting the address sends the first.
    ada.set_unverified_email("ada@example.com").await;
    let responses = join_all((0..8).map(|_| ada.post_form("/account/email/resend", &[]))).await;
    let mut refused = 0;
    for response in responses {
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let page = response.text().await.unwrap();
            assert!(page.contains("verification mails this hour"), "{page}");
            refused += 1;
        } else {
            assert_redirect(&response, "/account/settings");
        }
    }
    let limit = VERIFICATIONS_PER_USER_PER_HOUR as usize;
    assert_eq!(refused, 8 - (limit - 1));
    assert_eq!(mails(&app).await.len(), limit);
}

#[tokio::test]
async fn concurrent_notices_to_one_address_stop_at_the_hourly_limit() {
    let app = TestApp::spawn().await;
    let user_id: i64 = sqlx::query_scalar(
        "INSERT INTO users (username, password_hash, email, email_verified_at)
         VALUES ('ada', 'not a hash', 'ada@example.com', now()) RETURNING id",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let mailer = Mailer::new(None, "hearth@example.com").unwrap();
    let message = |i: usize| Message {
        key: format!("notice:{i}"),
        user_id,
        to: "ada@example.com".into(),
        purpose: Purpose::Notice,
        subject: "Hello".into(),
        body: "Text".into(),
    };
    let limit = PER_RECIPIENT_PER_HOUR as usize;
    let sends = (0..3 * limit).map(|i| {
        let (mailer, pool, message) = (mailer.clone(), app.pool.clone(), message(i));
        tokio::spawn(async move { mailer.send_once(&pool, &message).await.unwrap() })
    });
    let results: Vec<Sent> = join_all(sends)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let now = results.iter().filter(|s| **s == Sent::Now).count();
    let over = results
        .iter()
        .filter(|s| **s == Sent::Dropped(Dropped::OverLimit))
        .count();
    assert_eq!((now, over), (limit, 2 * limit), "{results:?}");
    assert_eq!(mails(&app).await.len(), limit);
    // An address that is not the user's is never mailed.
    let stranger = Message {
        to: "stranger@example.com".into(),
        ..message(99)
    };
    assert_eq!(
        mailer.send_once(&app.pool, &stranger).await.unwrap(),
        Sent::Dropped(Dropped::Unverified)
    );
}

#[tokio::test]
async fn expired_and_reused_links_are_refused_with_a_clear_message() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    ada.set_unverified_email("ada@example.com").await;
    let link = ada.verification_link().await;
    assert_redirect(&ada.post_form(&link, &[]).await, "/account/settings");
    for again in [ada.post_form(&link, &[]).await, ada.get(&link).await] {
        assert_eq!(again.status(), StatusCode::GONE);
        assert!(again.text().await.unwrap().contains("already used"));
    }

    ada.set_unverified_email("ada@elsewhere.example").await;
    let link = ada.verification_link().await;
    sqlx::query("UPDATE email_tokens SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    for late in [ada.get(&link).await, ada.post_form(&link, &[]).await] {
        assert_eq!(late.status(), StatusCode::GONE);
        assert!(late.text().await.unwrap().contains("expired"));
    }
    assert!(!verified(&app, &ada).await);

    let made_up = ada.get("/account/email/verify/0123abcd").await;
    assert_eq!(made_up.status(), StatusCode::NOT_FOUND);
    assert!(made_up.text().await.unwrap().contains("not valid"));
}

#[tokio::test]
async fn a_sign_in_link_works_once_only_for_a_verified_address_and_reveals_no_account() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    ada.set_email("ada@example.com").await;
    let bob = app.user("bob").await;
    bob.set_unverified_email("bob@example.com").await;
    let visitor = app.other_browser();

    // The same page for a verified address, an unverified one and no account at all.
    let mut answers = Vec::new();
    for name in ["ada", "bob", "nobody"] {
        let response = visitor
            .post_form("/login/link", &[("username", name)])
            .await;
        answers.push((response.status(), response.text().await.unwrap()));
    }
    assert_eq!(answers[0].0, StatusCode::OK);
    assert!(
        answers[0]
            .1
            .contains("If that account has a verified mail address")
    );
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "the answers differ"
    );
    app.drain("mail").await;
    let links = mails_about(&app, "sign-in link").await;
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0].1, "ada@example.com");
    let link = link_in(&links[0].3, "/login/link/");

    // Opening the link signs nobody in; the button does, as the login form does: the
    // browser's earlier session ends and the CSRF token changes.
    visitor.login("bob", "correct horse battery").await;
    assert!(
        visitor
            .get(&link)
            .await
            .text()
            .await
            .unwrap()
            .contains("Sign in")
    );
    assert_eq!(visitor.signed_in_as().await.as_deref(), Some("bob"));
    let csrf_before = visitor.csrf_token().await;
    let bob_sessions = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sessions WHERE user_id = $1")
            .bind(bob.id)
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    let bob_before = bob_sessions().await;
    assert_redirect(&visitor.post_form(&link, &[]).await, "/");
    assert_eq!(visitor.signed_in_as().await.as_deref(), Some("ada"));
    assert_ne!(visitor.csrf_token().await, csrf_before);
    assert_eq!(
        bob_sessions().await,
        bob_before - 1,
        "the old session ended"
    );

    // Once only.
    let again = app.other_browser().post_form(&link, &[]).await;
    assert_eq!(again.status(), StatusCode::GONE);
    assert!(again.text().await.unwrap().contains("already used"));

    // At most LINKS_PER_ACCOUNT_PER_HOUR links an hour, the answer unchanged.
    for _ in 0..LINKS_PER_ACCOUNT_PER_HOUR + 2 {
        let response = app
            .other_browser()
            .post_form("/login/link", &[("username", "ada")])
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    app.drain("mail").await;
    let links = mails_about(&app, "sign-in link").await;
    assert_eq!(links.len(), LINKS_PER_ACCOUNT_PER_HOUR as usize);

    // An expired link is refused.
    let last = link_in(&links[links.len() - 1].3, "/login/link/");
    sqlx::query("UPDATE email_tokens SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    let late = app.other_browser().post_form(&last, &[]).await;
    assert_eq!(late.status(), StatusCode::GONE);
    assert!(late.text().await.unwrap().contains("expired"));
}
