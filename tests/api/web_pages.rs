//! The site's pages as a visitor meets them (#32): error pages inside the layout, input the
//! pages cannot read answered in the site's words (never the parser's), forms that say every
//! problem at once, by its field.

use reqwest::StatusCode;

use crate::helpers::TestApp;

/// Texts of axum's extractor rejections and of serde: parser output no page may show.
const PARSER_TEXT: &[&str] = &[
    "Failed to deserialize",
    "invalid digit",
    "missing field `",
    "Cannot parse",
    "Invalid URL",
    "Form requests must have",
];

fn assert_no_parser_text(body: &str, what: &str) {
    for text in PARSER_TEXT {
        assert!(!body.contains(text), "{what} shows {text:?}:\n{body}");
    }
}

#[tokio::test]
async fn error_pages_keep_the_navigation_and_the_signed_in_user() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;

    for (path, status) in [
        ("/no/such/page", StatusCode::NOT_FOUND),
        ("/posts/no-such-post", StatusCode::NOT_FOUND),
        ("/ops", StatusCode::FORBIDDEN),
        ("/notifications?before=abc", StatusCode::BAD_REQUEST),
    ] {
        let response = ada.get(path).await;
        assert_eq!(response.status(), status, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        let body = response.text().await.unwrap();
        assert!(
            body.contains(r#"data-testid="signed-in-user">ada"#),
            "{path}: the error page does not say who is signed in:\n{body}"
        );
        assert!(body.contains(r#"href="/posts""#), "{path}: no navigation");
        assert!(body.contains("Log out"), "{path}: no log-out");
    }

    let anonymous = app.get("/no/such/page").await;
    assert_eq!(anonymous.status(), StatusCode::NOT_FOUND);
    let body = anonymous.text().await.unwrap();
    assert!(
        body.contains(r#"href="/login""#),
        "no navigation for visitors"
    );
    assert!(body.contains("There is no page at this address."));
}

#[tokio::test]
async fn input_a_page_cannot_read_is_answered_in_the_sites_words() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;

    let response = ada.get("/notifications?before=abc").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response.text().await.unwrap();
    assert_no_parser_text(&body, "/notifications?before=abc");
    assert!(
        body.contains("This address has a value for “before” that this page cannot use."),
        "{body}"
    );

    // A form without a field it needs, and one of the wrong type.
    let response = app.post_form("/login", &[("username", "ada")]).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = response.text().await.unwrap();
    assert_no_parser_text(&body, "a form without its password");
    assert!(
        body.contains("The form was sent without “password”."),
        "{body}"
    );

    // A path parameter of the wrong type, and the same under /api/ (JSON, same words).
    let response = ada.get("/docs/not-a-number").await;
    assert!(response.status().is_client_error());
    assert_no_parser_text(&response.text().await.unwrap(), "/docs/not-a-number");
    let response = ada.get("/api/jobs/not-a-number").await;
    assert!(response.status().is_client_error());
    let body = response.text().await.unwrap();
    assert!(body.starts_with(r#"{"error""#), "{body}");
    assert_no_parser_text(&body, "/api/jobs/not-a-number");
}

#[tokio::test]
async fn metrics_asks_for_a_login_in_the_sites_voice() {
    let app = TestApp::spawn().await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = response.text().await.unwrap();
    assert!(body.contains("You need to log in to see this."), "{body}");
}

#[tokio::test]
async fn sign_up_shows_every_problem_at_once_by_its_field() {
    let app = TestApp::spawn().await;
    let response = app
        .post_form(
            "/signup",
            &[
                ("username", "a b"),
                ("email", "not-an-address"),
                ("password", "short"),
                ("password_confirm", "other"),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = response.text().await.unwrap();
    for field in ["username", "email", "password", "password_confirm"] {
        assert!(
            body.contains(&format!(r#"data-testid="error-{field}""#)),
            "no error by {field}:\n{body}"
        );
        assert!(
            body.contains(&format!(r#"aria-describedby="{field}-error""#)),
            "{field} is not marked invalid"
        );
    }
    assert!(body.contains("4 things need fixing below."), "{body}");
    assert!(
        body.contains(r#"value="a b""#),
        "the username typed is lost"
    );
    assert!(
        body.contains(r#"value="not-an-address""#),
        "the address typed is lost"
    );
}

#[tokio::test]
async fn an_unknown_person_is_refused_by_the_form_on_the_same_page() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;

    let created = ada
        .post_form("/chat", &[("name", "Inner circle"), ("private", "on")])
        .await;
    let room = created.headers()["location"].to_str().unwrap().to_owned();
    let response = ada
        .post_form(&format!("{room}/invite"), &[("username", "nobody")])
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = response.text().await.unwrap();
    assert!(body.contains(r#"data-testid="invite-error""#), "{body}");
    assert!(body.contains("There is no user called “nobody”."), "{body}");
    assert!(body.contains(r#"value="nobody""#), "what was typed is lost");
    assert!(body.contains(r#"id="composer""#), "not the room's page");
    assert!(body.contains(r#"data-testid="signed-in-user">ada"#));

    let doc = crate::documents::create_doc(&ada, "Plans").await;
    let response = ada
        .post_form(
            &format!("/docs/{doc}/members"),
            &[("username", "nobody"), ("role", "edit")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = response.text().await.unwrap();
    assert!(body.contains(r#"data-testid="add-error""#), "{body}");
    assert!(body.contains("There is no user called “nobody”."), "{body}");
    assert!(body.contains(r#"value="nobody""#), "what was typed is lost");
    assert!(
        body.contains(r#"id="doc-editor""#),
        "not the document's page"
    );
}

/// How many post titles of `prefix` a page lists.
fn titles(body: &str, prefix: &str) -> usize {
    body.matches(&format!(">{prefix} ")).count()
}

#[tokio::test]
async fn your_posts_and_an_authors_page_are_paged_and_say_when_a_page_is_past_the_end() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    for n in 1..=21 {
        ada.write(&format!("Entry {n:02}"), "text", true).await;
    }

    for base in ["/me/posts", "/authors/ada", "/posts"] {
        let first = ada.get(base).await.text().await.unwrap();
        assert_eq!(titles(&first, "Entry"), 20, "{base}");
        assert!(first.contains("Entry 21"), "{base}: newest first");
        assert!(
            first.contains(&format!(r#"href="{base}?page=2" rel="next""#)),
            "{base}: no link to the next page"
        );
        let second = ada.get(&format!("{base}?page=2")).await;
        assert_eq!(second.status(), StatusCode::OK);
        let second = second.text().await.unwrap();
        assert_eq!(titles(&second, "Entry"), 1, "{base}?page=2");
        assert!(second.contains("Entry 01"), "{base}?page=2");
        assert!(
            second.contains(&format!(r#"href="{base}" rel="prev""#)),
            "{base}?page=2: no link back"
        );
        assert!(
            !second.contains(r#"rel="next""#),
            "{base}?page=2 is the last"
        );

        let past = ada.get(&format!("{base}?page=9999")).await;
        assert_eq!(past.status(), StatusCode::NOT_FOUND, "{base}?page=9999");
        let past = past.text().await.unwrap();
        assert!(
            past.contains("This list has fewer than 9999 pages"),
            "{past}"
        );
        assert!(!past.contains("Nothing published yet"), "{past}");
        assert!(past.contains(r#"data-testid="signed-in-user">ada"#));
    }
    // Anonymous readers get the same pages (and the list stays cacheable for them).
    let past = app.get("/posts?page=9999").await;
    assert_eq!(past.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn someone_signed_in_is_sent_on_from_login_and_sign_up() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    crate::helpers::assert_redirect(&ada.get("/signup").await, "/");
    crate::helpers::assert_redirect(&ada.get("/login").await, "/");
    crate::helpers::assert_redirect(&ada.get("/login?next=/chat").await, "/chat");
    crate::helpers::assert_redirect(&ada.get("/login?next=//evil.example").await, "/");
    assert_eq!(app.get("/login").await.status(), StatusCode::OK);
    assert_eq!(app.get("/signup").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_editor_tells_the_truth_and_a_post_has_one_title_heading() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;

    // A post not yet saved is no draft; its help says what happens to HTML.
    let editor = ada.get("/posts/new").await.text().await.unwrap();
    assert!(
        !editor.contains(r#"class="tag draft""#),
        "an unsaved post shows a draft tag"
    );
    assert!(!editor.contains("HTML is escaped"), "{editor}");
    assert!(editor.contains("scripts, styles and event handlers are removed"));
    let slug = ada
        .write("Sections", "# Intro\n\nText.\n\n## Detail\n\nMore.", false)
        .await;
    let saved = ada
        .get(&format!("/posts/{slug}/edit"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        saved.contains(r#"class="tag draft""#),
        "a saved draft says so"
    );

    // A body starting with `#` does not make a second <h1>.
    let page = ada
        .get(&format!("/posts/{slug}"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(page.matches("<h1").count(), 1, "{page}");
    assert!(page.contains("<h2>Intro</h2>") && page.contains("<h3>Detail</h3>"));
}

#[tokio::test]
async fn two_public_rooms_do_not_share_a_name() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let created = ada.post_form("/chat", &[("name", "Book club")]).await;
    assert!(created.status().is_redirection());

    let again = bob.post_form("/chat", &[("name", "book CLUB")]).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let body = again.text().await.unwrap();
    assert!(
        body.contains("There is already a room called “Book club”"),
        "{body}"
    );
    assert!(
        body.contains(r#"value="book CLUB""#),
        "what was typed is lost"
    );

    // A private room may take any name, and says nothing of other private rooms.
    let private = bob
        .post_form("/chat", &[("name", "Book club"), ("private", "on")])
        .await;
    assert!(private.status().is_redirection());
    let again = ada
        .post_form("/chat", &[("name", "Secret"), ("private", "on")])
        .await;
    assert!(again.status().is_redirection());
    let public = bob.post_form("/chat", &[("name", "Secret")]).await;
    assert!(
        public.status().is_redirection(),
        "a private room's name showed through"
    );
}
