//! The security matrix: who may use every route, socket and stream, proven against a running
//! server, and the checks that keep it whole.
//!
//! * [`every_route_answers_each_kind_of_user_as_the_matrix_says`]: one table, [`cases`], holds
//!   every route the router serves with real ids filled in, and what an anonymous visitor, a
//!   signed-in stranger, a document reader, a member (of the private room, editor of the
//!   documents), an administrator and the owner of the thing get. Owners go last, so that what
//!   they change (a removal, a deletion) does not change the others' answers. Every socket row
//!   is checked twice: with an HTTP/1.1 upgrade and with an HTTP/2 extended CONNECT (RFC 8441).
//! * [`the_matrix_covers_every_route_in_the_source`]: the table's routes equal the routes
//!   `src/` declares (`.route("…", …)` and `.nest("…")` read from the source), so a route added
//!   without a row fails here.
//! * CSRF on every state-changing route, with nothing written; foreign `Origin`s refused on
//!   every socket route, on both protocols.
//! * Session fixation: a session the browser held before login does not survive it.
//! * Cookies: with `HEARTH_SECURE_COOKIES`, every cookie set is `Secure`, `HttpOnly`, `SameSite`.
//! * Secrets never reach the log, with the real binary at `RUST_LOG=trace`.
//! * SQL: every runtime statement is a literal (a lint over `src/`).
//!
//! Login throttling, chat flood limits and socket limits per user and per address are proven
//! where those features live (`accounts.rs`, `chat.rs`; over HTTP/2 in `ws_http2.rs`); security
//! headers in `shell.rs`; that
//! a password change ends the user's other sessions in `accounts.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use hearth::web::testing::{WsClient, WsTestError};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use reqwest::{StatusCode, cookie::CookieStore};
use serde_json::Value;

use crate::helpers::{Browser, TestApp, TestUser, assert_redirect};

/// The password every user of these tests has (`TestApp::user`).
const PASSWORD: &str = "correct horse battery";

/// What a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 200.
    Ok,
    /// What the action does when allowed: 2xx, or a redirect anywhere but the login page.
    Done,
    /// A redirect to `/login?next=…`.
    Login,
    /// Exactly this status.
    Code(u16),
    /// A socket that opens and says `hello`.
    Open,
    /// A socket that opens, then closes with this code.
    Close(u16),
    /// A socket refused before the upgrade with this status.
    Refused(u16),
}

use Outcome::{Close, Code, Done, Login, Ok, Open, Refused};

const UNAUTHORIZED: Outcome = Code(401);
const FORBIDDEN: Outcome = Code(403);
const NOT_FOUND: Outcome = Code(404);
const UNPROCESSABLE: Outcome = Code(422);

/// Who asks, in the order the matrix asks them: the owner last.
const ACTORS: [&str; 6] = [
    "anonymous",
    "stranger",
    "reader",
    "member",
    "admin",
    "owner",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    /// A urlencoded form, with the page's CSRF token.
    Post,
    /// A multipart file upload, with the CSRF header.
    Upload,
    /// A WebSocket.
    Ws,
}

impl Method {
    /// The label the source scan gives the route's handler.
    fn label(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post | Method::Upload => "POST",
            Method::Ws => "WS",
        }
    }

    fn changes_state(self) -> bool {
        matches!(self, Method::Post | Method::Upload)
    }
}

struct Case {
    method: Method,
    /// The route as declared in `src/`.
    route: &'static str,
    /// The route with real ids.
    path: String,
    form: Vec<(&'static str, String)>,
    /// One outcome per entry of [`ACTORS`].
    expect: [Outcome; 6],
}

fn case(
    method: Method,
    route: &'static str,
    path: impl Into<String>,
    expect: [Outcome; 6],
) -> Case {
    Case {
        method,
        route,
        path: path.into(),
        form: Vec::new(),
        expect,
    }
}

fn get(route: &'static str, path: impl Into<String>, expect: [Outcome; 6]) -> Case {
    case(Method::Get, route, path, expect)
}

fn post(
    route: &'static str,
    path: impl Into<String>,
    form: &[(&'static str, &str)],
    expect: [Outcome; 6],
) -> Case {
    Case {
        form: form.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        ..case(Method::Post, route, path, expect)
    }
}

/// The same for everyone.
fn anyone(outcome: Outcome) -> [Outcome; 6] {
    [outcome; 6]
}

/// Any signed-in user gets `outcome`; anonymous visitors the login page.
fn signed_in(outcome: Outcome) -> [Outcome; 6] {
    [Login, outcome, outcome, outcome, outcome, outcome]
}

/// The same under `/api/`, where anonymous requests get 401.
fn api(outcome: Outcome) -> [Outcome; 6] {
    [UNAUTHORIZED, outcome, outcome, outcome, outcome, outcome]
}

/// Administrators get `outcome`; other users 403.
fn admins(outcome: Outcome) -> [Outcome; 6] {
    [Login, FORBIDDEN, FORBIDDEN, FORBIDDEN, outcome, FORBIDDEN]
}

/// The owner gets `outcome`; other signed-in users `others`.
fn owner(outcome: Outcome, others: Outcome) -> [Outcome; 6] {
    [Login, others, others, others, others, outcome]
}

/// The thing's id numbers and names, made by real requests.
struct Fixture<'a> {
    app: &'a TestApp,
    /// In [`ACTORS`] order; `None` is the anonymous visitor.
    users: Vec<Option<TestUser<'a>>>,
    anonymous: Browser<'a>,
    published: String,
    draft: String,
    private_room: String,
    /// The main document, and two more for the member removal and the deletion.
    doc: i64,
    doc_removal: i64,
    doc_deleted: i64,
    version: i64,
    upload: i64,
    job: i64,
    /// A workflow the owner enqueued (not run: no workers here).
    workflow: i64,
    notification: i64,
    mail: i64,
    member_id: i64,
}

impl<'a> Fixture<'a> {
    async fn new(app: &'a TestApp) -> Self {
        let stranger = app.user("sam").await;
        let reader = app.user("rhea").await;
        let member = app.user("mia").await;
        let admin = app.user("ada").await;
        let owner = app.user("olivia").await;
        sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
            .bind(admin.id)
            .execute(&app.pool)
            .await
            .unwrap();

        let published = owner.write("Public post", "Hello.", true).await;
        let draft = owner.write("Secret draft", "Not yet.", false).await;

        let created = owner
            .post_form("/chat", &[("name", "Inner circle"), ("private", "on")])
            .await;
        let private_room = location(&created).trim_start_matches("/chat/").to_owned();
        let invited = owner
            .post_form(
                &format!("/chat/{private_room}/invite"),
                &[("username", "mia")],
            )
            .await;
        assert!(invited.status().is_redirection(), "{}", invited.status());

        let mut docs = Vec::new();
        for title in ["Plans", "Plans to leave", "Plans to drop"] {
            let created = owner.post_form("/docs", &[("title", title)]).await;
            let doc: i64 = location(&created)
                .trim_start_matches("/docs/")
                .parse()
                .unwrap();
            for (name, role) in [("mia", "edit"), ("rhea", "read")] {
                let shared = owner
                    .post_form(
                        &format!("/docs/{doc}/members"),
                        &[("username", name), ("role", role)],
                    )
                    .await;
                assert_redirect(&shared, &format!("/docs/{doc}"));
            }
            docs.push(doc);
        }
        let saved = owner
            .post_form(&format!("/docs/{}/versions", docs[0]), &[("name", "v1")])
            .await;
        assert!(saved.status().is_redirection(), "{}", saved.status());
        let version: i64 =
            sqlx::query_scalar("SELECT id FROM document_versions WHERE document_id = $1")
                .bind(docs[0])
                .fetch_one(&app.pool)
                .await
                .unwrap();

        let uploaded = upload(app, &owner.browser, UploadToken::Page).await;
        assert_eq!(uploaded.status(), StatusCode::ACCEPTED);
        let body: Value = uploaded.json().await.unwrap();
        let (upload, job) = (
            body["upload_id"].as_i64().unwrap(),
            body["job_id"].as_i64().unwrap(),
        );

        let sleep = hearth::jobs::workflow::builtin::SleepStep { ms: 0, value: 1 };
        let workflow = hearth::jobs::Workflow::new(hearth::jobs::Chain::new(sleep), ())
            .owner(owner.id)
            .enqueue(&app.pool)
            .await
            .unwrap()
            .id;

        let notification: i64 = sqlx::query_scalar(
            "INSERT INTO notifications (user_id, kind, title, url, dedupe_key)
             VALUES ($1, 'mention', 'You were mentioned', '/chat/lobby', 'security-test')
             RETURNING id",
        )
        .bind(owner.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let mail: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (idempotency_key, user_id, to_address, subject, body)
             VALUES ('security-test', $1, 'olivia@example.com', 'Private', 'For Olivia only')
             RETURNING id",
        )
        .bind(owner.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();

        let member_id = member.id;
        Fixture {
            app,
            users: vec![
                None,
                Some(stranger),
                Some(reader),
                Some(member),
                Some(admin),
                Some(owner),
            ],
            anonymous: app.other_browser(),
            published,
            draft,
            private_room,
            doc: docs[0],
            doc_removal: docs[1],
            doc_deleted: docs[2],
            version,
            upload,
            job,
            workflow,
            notification,
            mail,
            member_id,
        }
    }

    fn browser(&self, actor: usize) -> &Browser<'a> {
        match &self.users[actor] {
            Some(user) => &user.browser,
            None => &self.anonymous,
        }
    }

    fn cookie(&self, actor: usize) -> Option<&str> {
        self.users[actor].as_ref().map(|u| u.cookie.as_str())
    }
}

/// Every route the app serves, in an order where what one row changes does not change the
/// answers of a later one; `/logout` last.
fn cases(f: &Fixture<'_>) -> Vec<Case> {
    let (post_slug, draft, room) = (&f.published, &f.draft, &f.private_room);
    let (doc, upload, job, workflow) = (f.doc, f.upload, f.job, f.workflow);
    let doc_rights = |outcome| [Login, NOT_FOUND, outcome, outcome, NOT_FOUND, outcome];
    let doc_edit = |outcome| [Login, NOT_FOUND, FORBIDDEN, outcome, NOT_FOUND, outcome];
    let doc_owner = |outcome| [Login, NOT_FOUND, FORBIDDEN, FORBIDDEN, NOT_FOUND, outcome];
    let post_form = [
        ("title", "Edited title"),
        ("body", "Edited."),
        ("action", "save"),
    ];
    vec![
        // Probes, metrics and static files: outside the app routers.
        get("/healthz", "/healthz", anyone(Ok)),
        get("/readyz", "/readyz", anyone(Ok)),
        get(
            "/metrics",
            "/metrics",
            [UNAUTHORIZED, FORBIDDEN, FORBIDDEN, FORBIDDEN, Ok, FORBIDDEN],
        ),
        get("/static", "/static/app.css", anyone(Ok)),
        // The compiled-in files' route, nested under /static (web/assets.rs).
        get("/{*path}", "/static/js/chat.js", anyone(Ok)),
        // Home and accounts.
        get("/", "/", anyone(Ok)),
        // Someone signed in is sent on: home, or where the login would have led.
        get("/signup", "/signup", [Ok, Done, Done, Done, Done, Done]),
        get("/login", "/login", [Ok, Done, Done, Done, Done, Done]),
        get("/login/link", "/login/link", anyone(Ok)),
        // Mail links: a made-up token is no link, whoever follows it.
        get(
            "/login/link/{token}",
            "/login/link/0123abcd",
            anyone(NOT_FOUND),
        ),
        get(
            "/account/email/verify/{token}",
            "/account/email/verify/0123abcd",
            anyone(NOT_FOUND),
        ),
        get("/account/password", "/account/password", signed_in(Ok)),
        get("/account/settings", "/account/settings", signed_in(Ok)),
        get("/api/me", "/api/me", api(Ok)),
        // Publishing.
        get("/posts", "/posts", anyone(Ok)),
        get("/posts/{slug}", format!("/posts/{post_slug}"), anyone(Ok)),
        get(
            "/posts/{slug}",
            format!("/posts/{draft}"),
            [NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, Ok],
        ),
        get("/authors/{username}", "/authors/olivia", anyone(Ok)),
        // The image proxy fetches only what a post names: an unsigned address, for anyone.
        get(
            "/img/{signature}/{url}",
            "/img/AAAAAAAAAAAAAAAAAAAAAA/aHR0cDovLzEyNy4wLjAuMS9hLnBuZw",
            anyone(FORBIDDEN),
        ),
        get("/posts/new", "/posts/new", signed_in(Ok)),
        get(
            "/posts/{slug}/edit",
            format!("/posts/{post_slug}/edit"),
            owner(Ok, FORBIDDEN),
        ),
        get(
            "/posts/{slug}/edit",
            format!("/posts/{draft}/edit"),
            owner(Ok, NOT_FOUND),
        ),
        get("/me/posts", "/me/posts", signed_in(Ok)),
        // Notifications: the page, the stream and the count are the user's own.
        get("/notifications", "/notifications", signed_in(Ok)),
        get(
            "/notifications/stream",
            "/notifications/stream",
            signed_in(Ok),
        ),
        get(
            "/api/notifications/unread",
            "/api/notifications/unread",
            api(Ok),
        ),
        // Chat.
        get("/chat", "/chat", signed_in(Ok)),
        get("/chat/{slug}", "/chat/lobby", signed_in(Ok)),
        // A private room is no room at all to others (404, as for a missing one).
        get(
            "/chat/{slug}",
            format!("/chat/{room}"),
            [Login, NOT_FOUND, NOT_FOUND, Ok, Ok, Ok],
        ),
        case(
            Method::Ws,
            "/ws/rooms/{slug}",
            "/ws/rooms/lobby",
            [Close(4401), Open, Open, Open, Open, Open],
        ),
        case(
            Method::Ws,
            "/ws/rooms/{slug}",
            format!("/ws/rooms/{room}"),
            [Close(4401), Close(4404), Close(4404), Open, Open, Open],
        ),
        // Documents: administrators are outsiders too.
        get("/docs", "/docs", signed_in(Ok)),
        get("/docs/{id}", format!("/docs/{doc}"), doc_rights(Ok)),
        get(
            "/docs/{id}/text",
            format!("/docs/{doc}/text"),
            doc_rights(Ok),
        ),
        case(
            Method::Ws,
            "/ws/docs/{id}",
            format!("/ws/docs/{doc}"),
            [Close(4401), Close(4404), Open, Open, Close(4404), Open],
        ),
        // The dashboard (the server's internals: administrators only) and the gateway.
        get("/dashboard", "/dashboard", admins(Ok)),
        get("/dashboard/stream", "/dashboard/stream", admins(Ok)),
        get("/api/aggregate", "/api/aggregate", api(Ok)),
        // The mailbox (no SMTP server here: everyone reads their own).
        get("/mailbox", "/mailbox", signed_in(Ok)),
        get(
            "/mailbox/{id}",
            format!("/mailbox/{}", f.mail),
            [Login, NOT_FOUND, NOT_FOUND, NOT_FOUND, Ok, Ok],
        ),
        // Imports: an upload is its owner's only.
        get("/uploads", "/uploads", signed_in(Ok)),
        get(
            "/uploads/{id}",
            format!("/uploads/{upload}"),
            owner(Ok, NOT_FOUND),
        ),
        get(
            "/uploads/{id}/events",
            format!("/uploads/{upload}/events"),
            owner(Ok, NOT_FOUND),
        ),
        get(
            "/api/uploads/{id}",
            format!("/api/uploads/{upload}"),
            [UNAUTHORIZED, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, Ok],
        ),
        // Jobs: the owner (here the uploader) and admins may poll a job, others get the 404
        // of a missing one; args and errors are for admins.
        get(
            "/api/jobs/{id}",
            format!("/api/jobs/{job}"),
            [UNAUTHORIZED, NOT_FOUND, NOT_FOUND, NOT_FOUND, Ok, Ok],
        ),
        get(
            "/api/workflows/{id}",
            format!("/api/workflows/{workflow}"),
            [UNAUTHORIZED, NOT_FOUND, NOT_FOUND, NOT_FOUND, Ok, Ok],
        ),
        // The operations console.
        get("/ops", "/ops", admins(Ok)),
        get("/ops/api/counts", "/ops/api/counts", admins(Ok)),
        get("/ops/jobs", "/ops/jobs", admins(Ok)),
        get("/ops/jobs/{id}", format!("/ops/jobs/{job}"), admins(Ok)),
        get("/ops/workflows", "/ops/workflows", admins(Ok)),
        get(
            "/ops/workflows/{id}",
            format!("/ops/workflows/{workflow}"),
            admins(Ok),
        ),
        get("/ops/schedules", "/ops/schedules", admins(Ok)),
        get(
            "/ops/schedules/{name}",
            "/ops/schedules/daily-digest",
            admins(Ok),
        ),
        get("/ops/realtime", "/ops/realtime", admins(Ok)),
        get("/ops/cache", "/ops/cache", admins(Ok)),
        get("/ops/db", "/ops/db", admins(Ok)),
        get("/ops/audit", "/ops/audit", admins(Ok)),
        // State-changing requests, with a valid CSRF token.
        post(
            "/signup",
            "/signup",
            &[("username", "x"), ("password", "short")],
            anyone(UNPROCESSABLE),
        ),
        post(
            "/login",
            "/login",
            &[("username", "nobody"), ("password", "wrong password")],
            anyone(UNAUTHORIZED),
        ),
        // The same answer whether or not the account exists.
        post(
            "/login/link",
            "/login/link",
            &[("username", "nobody")],
            anyone(Ok),
        ),
        post(
            "/login/link/{token}",
            "/login/link/0123abcd",
            &[],
            anyone(NOT_FOUND),
        ),
        post(
            "/account/email/verify/{token}",
            "/account/email/verify/0123abcd",
            &[],
            anyone(NOT_FOUND),
        ),
        // Nobody here has an address to verify: a message, back to the settings.
        post(
            "/account/email/resend",
            "/account/email/resend",
            &[],
            signed_in(Done),
        ),
        post(
            "/account/password",
            "/account/password",
            &[
                ("current_password", PASSWORD),
                ("new_password", PASSWORD),
                ("new_password_confirm", PASSWORD),
            ],
            signed_in(Done),
        ),
        post(
            "/account/settings",
            "/account/settings",
            &[("email", "")],
            signed_in(Done),
        ),
        post("/posts", "/posts", &post_form, signed_in(Done)),
        post(
            "/posts/preview",
            "/posts/preview",
            &[("body", "*hi*")],
            signed_in(Ok),
        ),
        post(
            "/posts/{slug}/edit",
            format!("/posts/{post_slug}/edit"),
            &post_form,
            owner(Done, FORBIDDEN),
        ),
        post(
            "/posts/{slug}/edit",
            format!("/posts/{draft}/edit"),
            &post_form,
            owner(Done, NOT_FOUND),
        ),
        post(
            "/posts/{slug}/publish",
            format!("/posts/{post_slug}/publish"),
            &[],
            owner(Done, FORBIDDEN),
        ),
        post(
            "/posts/{slug}/unpublish",
            format!("/posts/{post_slug}/unpublish"),
            &[],
            owner(Done, FORBIDDEN),
        ),
        post(
            "/authors/{username}/subscribe",
            "/authors/olivia/subscribe",
            &[],
            owner(UNPROCESSABLE, Done),
        ),
        post(
            "/authors/{username}/unsubscribe",
            "/authors/olivia/unsubscribe",
            &[],
            signed_in(Done),
        ),
        post(
            "/notifications/{id}/read",
            format!("/notifications/{}/read", f.notification),
            &[("open", "true")],
            owner(Done, NOT_FOUND),
        ),
        post(
            "/notifications/read-all",
            "/notifications/read-all",
            &[],
            signed_in(Done),
        ),
        // Private: every actor sends the same name, and a public room's name is taken once.
        post(
            "/chat",
            "/chat",
            &[("name", "Open room"), ("private", "on")],
            signed_in(Done),
        ),
        post(
            "/chat/{slug}/invite",
            format!("/chat/{room}/invite"),
            &[("username", "mia")],
            [Login, NOT_FOUND, NOT_FOUND, Done, Done, Done],
        ),
        post("/docs", "/docs", &[("title", "Mine")], signed_in(Done)),
        post(
            "/docs/{id}/title",
            format!("/docs/{doc}/title"),
            &[("title", "Renamed")],
            doc_edit(Done),
        ),
        post(
            "/docs/{id}/versions",
            format!("/docs/{doc}/versions"),
            &[("name", "v2")],
            doc_edit(Done),
        ),
        post(
            "/docs/{id}/versions/{version_id}/restore",
            format!("/docs/{doc}/versions/{}/restore", f.version),
            &[],
            doc_edit(Done),
        ),
        post(
            "/docs/{id}/members",
            format!("/docs/{doc}/members"),
            &[("username", "mia"), ("role", "edit")],
            doc_owner(Done),
        ),
        post(
            "/docs/{id}/members/{user_id}/remove",
            format!("/docs/{}/members/{}/remove", f.doc_removal, f.member_id),
            &[],
            doc_owner(Done),
        ),
        post(
            "/docs/{id}/delete",
            format!("/docs/{}/delete", f.doc_deleted),
            &[],
            doc_owner(Done),
        ),
        case(Method::Upload, "/uploads", "/uploads", signed_in(Done)),
        post(
            "/ops/jobs/bulk",
            "/ops/jobs/bulk",
            &[("action", "cancel"), ("kind", "no.such.kind")],
            admins(Done),
        ),
        post(
            "/ops/jobs/{id}/{action}",
            format!("/ops/jobs/{job}/run-now"),
            &[],
            admins(Done),
        ),
        post(
            "/ops/workflows/{id}/cancel",
            format!("/ops/workflows/{workflow}/cancel"),
            &[],
            admins(Done),
        ),
        post(
            "/ops/queues/{queue}/{action}",
            "/ops/queues/default/pause",
            &[],
            admins(Done),
        ),
        post(
            "/ops/kind-limits",
            "/ops/kind-limits",
            &[("kind", "noop"), ("rate", "10/m")],
            admins(Done),
        ),
        post(
            "/ops/schedules/{name}/{action}",
            "/ops/schedules/daily-digest/run",
            &[],
            admins(Done),
        ),
        post(
            "/ops/schedules",
            "/ops/schedules",
            &[("name", "matrix"), ("every", "1h"), ("kind", "noop")],
            admins(Done),
        ),
        post(
            "/ops/schedules/{name}",
            "/ops/schedules/matrix",
            &[("every", "2h")],
            admins(Done),
        ),
        post(
            "/ops/cache",
            "/ops/cache",
            &[("action", "clear")],
            admins(Done),
        ),
        post("/logout", "/logout", &[], anyone(Done)),
    ]
}

const BOUNDARY: &str = "hearth-security-boundary";

/// How an upload carries its CSRF token.
enum UploadToken {
    /// The page's token in `X-CSRF-Token`, as `upload.js` sends it.
    Page,
    None,
    Wrong,
}

/// Uploads a small CSV file as the browser's user, asking for JSON.
async fn upload(app: &TestApp, browser: &Browser<'_>, token: UploadToken) -> reqwest::Response {
    let body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"posts.csv\"\r\n\
         Content-Type: text/csv\r\n\r\ntitle,body\nImported,Text\r\n--{BOUNDARY}--\r\n"
    );
    let mut request = browser
        .client
        .post(app.url("/uploads"))
        .header("accept", "application/json")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body);
    match token {
        UploadToken::Page => request = request.header("x-csrf-token", browser.csrf_token().await),
        UploadToken::Wrong => request = request.header("x-csrf-token", "0".repeat(64)),
        UploadToken::None => {}
    }
    request.send().await.expect("POST /uploads")
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Whether `response` is `expected`; the reason when not.
fn check(response: &reqwest::Response, expected: Outcome) -> Result<(), String> {
    let status = response.status();
    let to = location(response);
    let good = match expected {
        Ok => status == StatusCode::OK,
        Done => status.is_success() || (status.is_redirection() && !to.starts_with("/login")),
        Login => status.is_redirection() && to.starts_with("/login?next="),
        Code(code) => status.as_u16() == code,
        Open | Close(_) | Refused(_) => false,
    };
    if good {
        return Result::Ok(());
    }
    Err(format!("got {status} (location {to:?})"))
}

/// Opens the socket as `cookie`'s user, with an HTTP/1.1 upgrade or over HTTP/2 (RFC 8441),
/// and checks what happens.
async fn check_socket(
    url: String,
    cookie: Option<&str>,
    expected: Outcome,
    http2: bool,
) -> Result<(), String> {
    let mut builder = WsClient::build(url);
    if let Some(cookie) = cookie {
        builder = builder.cookie(cookie);
    }
    if http2 {
        builder = builder.http2();
    }
    let got = match builder.connect().await {
        Err(WsTestError::Refused(status)) => Refused(status),
        Err(e) => return Err(format!("cannot connect: {e}")),
        Result::Ok(mut socket) => match socket.recv_type("hello").await {
            Result::Ok(_) => Open,
            Err(WsTestError::Closed {
                code: Some(code), ..
            }) => Close(code),
            Err(e) => return Err(format!("{e}")),
        },
    };
    if got == expected {
        Result::Ok(())
    } else {
        Err(format!("got {got:?}"))
    }
}

/// Sends the case's request as one actor.
async fn send(f: &Fixture<'_>, case: &Case, actor: usize) -> Result<(), String> {
    let browser = f.browser(actor);
    let expected = case.expect[actor];
    match case.method {
        // Every socket row holds on both protocols: an HTTP/1.1 upgrade and an HTTP/2
        // extended CONNECT go through the same route and the same checks.
        Method::Ws => {
            let url = f.app.ws_url(&case.path);
            check_socket(url.clone(), f.cookie(actor), expected, false).await?;
            check_socket(url, f.cookie(actor), expected, true)
                .await
                .map_err(|e| format!("{e} over HTTP/2"))
        }
        Method::Get => check(&browser.get(&case.path).await, expected),
        Method::Upload => check(&upload(f.app, browser, UploadToken::Page).await, expected),
        Method::Post => {
            let form: Vec<(&str, &str)> = case.form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            check(&browser.post_form(&case.path, &form).await, expected)
        }
    }
}

#[tokio::test]
async fn every_route_answers_each_kind_of_user_as_the_matrix_says() {
    let app = TestApp::builder()
        // Each actor tries a wrong login; the throttle is not what this test is about.
        .settings(|c: &mut hearth::accounts::AccountsSettings| c.login_limit_per_account = 1_000)
        .spawn()
        .await;
    let f = Fixture::new(&app).await;

    let mut failures = Vec::new();
    for case in cases(&f) {
        for (actor, name) in ACTORS.iter().enumerate() {
            if let Err(why) = send(&f, &case, actor).await {
                failures.push(format!(
                    "{} {} as {name}: expected {:?}, {why}",
                    case.method.label(),
                    case.path,
                    case.expect[actor]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The owners' actions took effect (the denied attempts before them did not).
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE id = $1")
        .bind(f.doc_deleted)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the owner deleted the document");
    let title: String = sqlx::query_scalar("SELECT title FROM documents WHERE id = $1")
        .bind(f.doc)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(title, "Renamed");
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 0, "everyone logged out last");
}

/// `(method, route)` of every `.route("…", …)` and `.nest("…", …)` in `src/` outside unit
/// tests: `GET`, `POST`, `PUT`, `PATCH`, `DELETE` for the method routers it chains, `WS` for
/// `ws::route`.
fn declared_routes() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (_, source) in rust_sources() {
        let mut rest = source.as_str();
        while let Some(at) = [rest.find(".route("), rest.find(".nest(")]
            .into_iter()
            .flatten()
            .min()
        {
            let nest = rest[at..].starts_with(".nest(");
            let after = &rest[at..];
            let open = after.find('(').unwrap();
            let arguments = call_arguments(&after[open..]);
            rest = &after[open + 1..];
            let Some(path) = string_literal(arguments) else {
                continue;
            };
            if nest {
                routes.insert(("GET".to_owned(), path));
                continue;
            }
            let handler = &arguments[arguments.find(',').unwrap_or(0)..];
            if handler.contains("ws::route") {
                routes.insert(("WS".to_owned(), path.clone()));
            }
            for method in ["get", "post", "put", "patch", "delete"] {
                let call = format!("{method}(");
                let called = handler.match_indices(&call).any(|(i, _)| {
                    !handler[..i]
                        .chars()
                        .last()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if called {
                    routes.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
    }
    routes
}

/// Every `.rs` file under `src/`, without comment lines and without its `#[cfg(test)]` part.
fn rust_sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let code: Vec<&str> = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            (relative, code.join("\n"))
        })
        .collect()
}

/// The text between `(` (the first character of `from`) and its matching `)`, skipping
/// parentheses inside string literals.
fn call_arguments(from: &str) -> &str {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in from.char_indices() {
        match (in_string, c) {
            (true, '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (true, '"') if !escaped => in_string = false,
            (false, '"') => in_string = true,
            (false, '(') => depth += 1,
            (false, ')') => {
                depth -= 1;
                if depth == 0 {
                    return &from[1..i];
                }
            }
            _ => {}
        }
        escaped = false;
    }
    &from[1..]
}

/// The string literal the arguments start with, if they do.
fn string_literal(arguments: &str) -> Option<String> {
    let body = arguments.trim_start().strip_prefix('"')?;
    Some(body[..body.find('"')?].to_owned())
}

#[tokio::test]
async fn the_matrix_covers_every_route_in_the_source() {
    let app = TestApp::spawn().await;
    let f = Fixture::new(&app).await;
    let in_table: BTreeSet<(String, String)> = cases(&f)
        .iter()
        .map(|c| (c.method.label().to_owned(), c.route.to_owned()))
        .collect();
    let declared = declared_routes();
    assert!(
        declared.len() > 60,
        "the scan finds the routes: {declared:?}"
    );

    let unclassified: Vec<_> = declared.difference(&in_table).collect();
    let stale: Vec<_> = in_table.difference(&declared).collect();
    assert!(
        unclassified.is_empty() && stale.is_empty(),
        "routes without a row in the security matrix: {unclassified:?}\n\
         rows for routes no longer served: {stale:?}"
    );
}

/// A digest of every table the app writes, by table; caches and the channel layer's own
/// bookkeeping (written by background tasks) left out.
async fn fingerprint(app: &TestApp) -> BTreeMap<String, String> {
    sqlx::query_as::<_, (String, String)>(
        "SELECT table_name::text,
                (xpath('/row/f/text()', query_to_xml(
                    format('SELECT md5(coalesce(string_agg(t::text, %L ORDER BY t::text), %L)) AS f FROM %I.%I t',
                           '|', '', table_schema, table_name),
                    false, true, '')))[1]::text
           FROM information_schema.tables
          WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
            AND table_name NOT LIKE 'channel\\_%' AND table_name NOT LIKE 'cache\\_%'
          ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

#[tokio::test]
async fn every_state_changing_route_refuses_a_missing_or_wrong_csrf_token_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let f = Fixture::new(&app).await;
    let cases: Vec<Case> = cases(&f)
        .into_iter()
        .filter(|c| c.method.changes_state())
        .collect();
    // Each browser has its CSRF cookie, so only the submitted token is missing or wrong.
    for actor in 0..ACTORS.len() {
        f.browser(actor).csrf_token().await;
    }
    let before = fingerprint(&app).await;
    assert!(before.contains_key("users") && before.contains_key("documents"));

    let mut failures = Vec::new();
    for case in &cases {
        // As someone the request would succeed for: the owner, else whoever may.
        let actor = (0..ACTORS.len())
            .rev()
            .find(|&a| matches!(case.expect[a], Done | Ok))
            .unwrap_or(ACTORS.len() - 1);
        let browser = f.browser(actor);
        let attempts: Vec<(&str, reqwest::Response)> = match case.method {
            Method::Upload => vec![
                ("no token", upload(&app, browser, UploadToken::None).await),
                (
                    "wrong header",
                    upload(&app, browser, UploadToken::Wrong).await,
                ),
            ],
            _ => {
                let url = app.url(&case.path);
                let mut wrong = case.form.clone();
                wrong.push(("csrf_token", "f".repeat(64)));
                vec![
                    (
                        "no token",
                        browser
                            .client
                            .post(&url)
                            .form(&case.form)
                            .send()
                            .await
                            .unwrap(),
                    ),
                    (
                        "wrong field",
                        browser.client.post(&url).form(&wrong).send().await.unwrap(),
                    ),
                    (
                        "wrong header",
                        browser
                            .client
                            .post(&url)
                            .header("x-csrf-token", "0".repeat(64))
                            .form(&case.form)
                            .send()
                            .await
                            .unwrap(),
                    ),
                ]
            }
        };
        for (how, response) in attempts {
            if response.status() != StatusCode::FORBIDDEN {
                failures.push(format!(
                    "POST {} as {} with {how}: {}",
                    case.path,
                    ACTORS[actor],
                    response.status()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(cases.len() > 25, "every state-changing route was tried");

    let after = fingerprint(&app).await;
    let changed: Vec<&String> = before
        .keys()
        .filter(|table| before.get(*table) != after.get(*table))
        .collect();
    assert!(changed.is_empty(), "refused requests changed {changed:?}");

    // The fingerprint does see a write: the same request with the token goes through.
    let owner = f.browser(ACTORS.len() - 1);
    let renamed = owner
        .post_form(&format!("/docs/{}/title", f.doc), &[("title", "Renamed")])
        .await;
    assert_redirect(&renamed, &format!("/docs/{}", f.doc));
    assert_ne!(
        fingerprint(&app).await.get("documents"),
        after.get("documents")
    );
}

#[tokio::test]
async fn every_socket_route_refuses_a_foreign_origin_before_the_upgrade() {
    let app = TestApp::spawn().await;
    let f = Fixture::new(&app).await;
    let owner = f.cookie(ACTORS.len() - 1).unwrap().to_owned();
    let mut sockets: Vec<String> = cases(&f)
        .into_iter()
        .filter(|c| c.method == Method::Ws)
        .map(|c| c.path)
        .collect();
    sockets.dedup();
    let declared = declared_routes()
        .into_iter()
        .filter(|(method, _)| method == "WS")
        .count();
    assert!(declared >= 2 && sockets.len() >= declared);

    // On HTTP/2 the host the origin must name is `:authority` (the client sends no Host).
    for (path, http2) in sockets.iter().flat_map(|p| [(p, false), (p, true)]) {
        let build = || {
            let builder = WsClient::build(app.ws_url(path)).cookie(owner.clone());
            if http2 { builder.http2() } else { builder }
        };
        let refused = build().origin("https://evil.example").connect().await.err();
        assert!(
            matches!(refused, Some(WsTestError::Refused(403))),
            "{path} (HTTP/2: {http2}): {refused:?}"
        );
        // The same socket from the page's own origin opens.
        let own = app.address.clone();
        let mut socket = build()
            .origin(own)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{path} (HTTP/2: {http2}) from its own origin: {e}"));
        socket.recv_type("hello").await.unwrap();
    }
}

/// The `hearth_session` cookie a jar holds for `app`.
fn session_in(jar: &reqwest::cookie::Jar, app: &TestApp) -> Option<String> {
    let url = reqwest::Url::parse(&app.address).unwrap();
    let header = jar.cookies(&url)?;
    header
        .to_str()
        .unwrap()
        .split("; ")
        .find_map(|pair| pair.strip_prefix("hearth_session="))
        .map(str::to_owned)
}

/// Who the session `token` is, per `/api/me` (`None`: anonymous).
async fn who_is(app: &TestApp, token: &str) -> Option<String> {
    let response = crate::helpers::client()
        .get(app.url("/api/me"))
        .header("cookie", format!("hearth_session={token}"))
        .send()
        .await
        .unwrap();
    match response.status() {
        StatusCode::OK => Some(
            response.json::<Value>().await.unwrap()["username"]
                .as_str()
                .unwrap()
                .to_owned(),
        ),
        StatusCode::UNAUTHORIZED => None,
        other => panic!("/api/me answered {other}"),
    }
}

/// Logs in through a client that uses `jar`, as a browser does.
async fn login_in(app: &TestApp, jar: &Arc<reqwest::cookie::Jar>, username: &str) {
    let client = reqwest::Client::builder()
        .cookie_provider(Arc::clone(jar))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // A browser holding a (planted) session is sent on from the login page: the form's token
    // is on any page it opens, its settings for one.
    let mut page = client.get(app.url("/login")).send().await.unwrap();
    if page.status().is_redirection() {
        page = client
            .get(app.url("/account/settings"))
            .send()
            .await
            .unwrap();
    }
    let page = page.text().await.unwrap();
    let at = page.find(r#"name="csrf-token" content=""#).unwrap() + 27;
    let token = &page[at..at + 64];
    let response = client
        .post(app.url("/login"))
        .form(&[
            ("username", username),
            ("password", PASSWORD),
            ("csrf_token", token),
        ])
        .send()
        .await
        .unwrap();
    assert_redirect(&response, "/");
}

#[tokio::test]
async fn a_session_held_before_login_does_not_survive_it_and_logout_ends_the_new_one() {
    let app = TestApp::spawn().await;
    let victim = app.user("victim").await;
    victim.post_form("/logout", &[]).await;
    // The attacker's own valid session, planted in the victim's browser (a sibling subdomain
    // can set cookies), and a token the attacker made up.
    let attacker = app.user("attacker").await;
    let planted = session_in_header(&attacker.cookie);
    let made_up = "a".repeat(64);

    for before in [planted.clone(), made_up] {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let url = reqwest::Url::parse(&app.address).unwrap();
        jar.add_cookie_str(&format!("hearth_session={before}; Path=/"), &url);

        login_in(&app, &jar, "victim").await;

        let after = session_in(&jar, &app).expect("a session cookie");
        assert_ne!(after, before, "login issues a new session id");
        assert_eq!(who_is(&app, &after).await.as_deref(), Some("victim"));
        assert_eq!(
            who_is(&app, &before).await,
            None,
            "the id held before login is no longer valid"
        );

        // Logging out ends the new id server-side, whatever the browser keeps.
        let client = reqwest::Client::builder()
            .cookie_provider(Arc::clone(&jar))
            .build()
            .unwrap();
        let page = client.get(app.url("/login")).send().await.unwrap();
        let page = page.text().await.unwrap();
        let at = page.find(r#"name="csrf-token" content=""#).unwrap() + 27;
        let out = client
            .post(app.url("/logout"))
            .header("x-csrf-token", &page[at..at + 64])
            .send()
            .await
            .unwrap();
        assert!(out.status().is_success(), "{}", out.status());
        assert_eq!(
            who_is(&app, &after).await,
            None,
            "replaying it is anonymous"
        );
    }
}

/// The session token in a `Cookie` header.
fn session_in_header(cookie: &str) -> String {
    cookie
        .split("; ")
        .find_map(|pair| pair.strip_prefix("hearth_session="))
        .expect("a session cookie")
        .to_owned()
}

/// A cookie jar by hand: reqwest's will not send `Secure` cookies over plain HTTP.
#[derive(Default)]
struct Cookies {
    values: BTreeMap<String, String>,
    /// Every `Set-Cookie` that set a value (removals left out).
    set: Vec<String>,
}

impl Cookies {
    fn header(&self) -> String {
        let pairs: Vec<String> = self
            .values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        pairs.join("; ")
    }

    fn take(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all("set-cookie") {
            let text = value.to_str().unwrap().to_owned();
            let (name, rest) = text.split_once('=').unwrap();
            let value = rest.split(';').next().unwrap().to_owned();
            if text.contains("Max-Age=0") {
                self.values.remove(name);
            } else {
                self.values.insert(name.to_owned(), value);
                self.set.push(text);
            }
        }
    }
}

#[tokio::test]
async fn with_secure_cookies_every_cookie_the_app_sets_is_secure_httponly_and_samesite() {
    let app = TestApp::builder()
        .config(|c| c.sessions.secure_cookies = true)
        .spawn()
        .await;
    let client = crate::helpers::client();
    let mut cookies = Cookies::default();
    let get = async |cookies: &mut Cookies, path: &str| {
        let response = client
            .get(app.url(path))
            .header("cookie", cookies.header())
            .send()
            .await
            .unwrap();
        cookies.take(&response);
        response.text().await.unwrap()
    };
    let token = |page: &str| {
        let at = page.find(r#"name="csrf-token" content=""#).unwrap() + 27;
        page[at..at + 64].to_owned()
    };

    let page = get(&mut cookies, "/signup").await;
    let signup = client
        .post(app.url("/signup"))
        .header("cookie", cookies.header())
        .form(&[
            ("username", "ada"),
            ("password", PASSWORD),
            ("password_confirm", PASSWORD),
            ("csrf_token", &token(&page)),
        ])
        .send()
        .await
        .unwrap();
    assert_redirect(&signup, "/");
    cookies.take(&signup);
    let page = get(&mut cookies, "/").await;
    assert!(page.contains("Welcome to Hearth"), "signed in, flash shown");
    let logout = client
        .post(app.url("/logout"))
        .header("cookie", cookies.header())
        .header("x-csrf-token", token(&page))
        .send()
        .await
        .unwrap();
    assert_redirect(&logout, "/");
    cookies.take(&logout);

    let names: BTreeSet<&str> = cookies
        .set
        .iter()
        .map(|c| c.split('=').next().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "hearth_csrf",
            "hearth_device",
            "hearth_flash",
            "hearth_session"
        ])
    );
    for cookie in &cookies.set {
        for flag in ["; Secure", "; HttpOnly", "; SameSite=Lax"] {
            assert!(cookie.contains(flag), "{flag} missing: {cookie}");
        }
    }
}

/// `hearth serve` on the test cluster with `database_url`, logging at `trace`; returns the
/// child, its address and a channel of its stdout and stderr lines.
fn serve_binary(
    data_dir: &Path,
    database_url: &str,
    metrics_token: &str,
    secret_key: &str,
) -> (
    std::process::Child,
    String,
    std::sync::mpsc::Receiver<String>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .env("DATABASE_URL", database_url)
        .env("HEARTH_DATA_DIR", data_dir)
        .env("HEARTH_BIND", "127.0.0.1:0")
        .env("HEARTH_METRICS_TOKEN", metrics_token)
        .env("HEARTH_SECRET_KEY", secret_key)
        .env("RUST_LOG", "trace")
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = crate::helpers::output_lines(&mut child);
    let address = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(120))
            .expect("hearth announces its address");
        if let Some(at) = line.find("listening on http://") {
            let rest = &line[at + "listening on ".len()..];
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    (child, address, lines)
}

#[tokio::test]
async fn no_password_session_id_token_or_key_reaches_the_log_even_at_trace() {
    let (name, _) = crate::helpers::migrated_database().await;
    let mut url = url::Url::parse(&crate::helpers::database_url(&name)).unwrap();
    // The test server trusts local connections, so any password is accepted.
    let db_password = "Db-Pa55word-9f3c1e";
    url.set_password(Some(db_password)).unwrap();
    let metrics_token = "metrics-token-5b7a2d9e41c8";
    let secret_key = "secret-key-0c4f8e2a7d6b1935-long-enough-to-use";
    let password = "Zebra-Lantern-7731";
    let wrong_password = "Wrong-Quokka-4410";
    let dir = tempfile::tempdir().unwrap();
    let (mut server, address, lines) =
        serve_binary(dir.path(), url.as_str(), metrics_token, secret_key);

    let jar = Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .cookie_provider(Arc::clone(&jar))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let csrf = |page: String| {
        let at = page.find(r#"name="csrf-token" content=""#).unwrap() + 27;
        page[at..at + 64].to_owned()
    };
    let page = |path: &str| {
        let (client, address) = (client.clone(), address.clone());
        let path = path.to_owned();
        async move {
            let response = client.get(format!("{address}{path}")).send().await.unwrap();
            response.text().await.unwrap()
        }
    };
    let token = csrf(page("/signup").await);
    let signup = client
        .post(format!("{address}/signup"))
        .form(&[
            ("username", "keeper"),
            ("password", password),
            ("password_confirm", password),
            ("csrf_token", &token),
        ])
        .send()
        .await
        .unwrap();
    assert!(signup.status().is_redirection(), "{}", signup.status());
    let token = csrf(page("/").await);
    client
        .post(format!("{address}/logout"))
        .header("x-csrf-token", &token)
        .send()
        .await
        .unwrap();
    let token = csrf(page("/login").await);
    let failed = client
        .post(format!("{address}/login"))
        .form(&[
            ("username", "keeper"),
            ("password", wrong_password),
            ("csrf_token", &token),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);
    let login = client
        .post(format!("{address}/login"))
        .form(&[
            ("username", "keeper"),
            ("password", password),
            ("csrf_token", &token),
        ])
        .send()
        .await
        .unwrap();
    assert!(login.status().is_redirection(), "{}", login.status());
    let cookies = jar
        .cookies(&reqwest::Url::parse(&address).unwrap())
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let session = session_in_header(&cookies);
    assert_eq!(session.len(), 64, "{cookies}");
    let csrf_token = csrf(page("/posts/new").await);
    assert_eq!(csrf_token.len(), 64);
    let written = client
        .post(format!("{address}/posts"))
        .header("x-csrf-token", &csrf_token)
        .form(&[("title", "Logged"), ("body", "text"), ("action", "publish")])
        .send()
        .await
        .unwrap();
    assert!(written.status().is_redirection(), "{}", written.status());
    let metrics = reqwest::Client::new()
        .get(format!("{address}/metrics"))
        .bearer_auth(metrics_token)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let ws = format!("ws{}/ws/rooms/lobby", address.trim_start_matches("http"));
    let mut socket = WsClient::build(ws)
        .cookie(cookies.clone())
        .connect()
        .await
        .unwrap();
    socket.recv_type("hello").await.unwrap();
    socket
        .send_json(&serde_json::json!({"type": "send", "body": "hello"}))
        .await
        .unwrap();
    socket.close().await.unwrap();
    // Mailed links carry their token in the path; one that exists is logged as one that does not.
    let link_token = "5e1f0a9c".repeat(8);
    let verify_token = "a7c3d2e1".repeat(8);
    for path in [
        format!("/login/link/{link_token}"),
        format!("/account/email/verify/{verify_token}"),
    ] {
        page(&path).await;
    }

    kill(Pid::from_raw(server.id() as i32), Signal::SIGTERM).unwrap();
    let exit = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
    let log: Vec<String> = lines.iter().collect();
    let text = log.join("\n");

    // The log is there and detailed: the requests above are in it at trace level.
    assert!(
        text.contains("logged in") && text.contains("login failed"),
        "{text}"
    );
    assert!(text.contains("TRACE"), "trace-level lines are written");
    for (what, secret) in [
        ("the password", password),
        ("the wrong password", wrong_password),
        ("the session id", session.as_str()),
        ("the CSRF token", csrf_token.as_str()),
        ("the metrics token", metrics_token),
        ("the secret key", secret_key),
        ("the database password", db_password),
        ("a sign-in link's token", link_token.as_str()),
        ("a verification link's token", verify_token.as_str()),
    ] {
        let leaks: Vec<&String> = log.iter().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "{what} is in the log: {leaks:#?}");
    }
}

/// Where SQL is built at run time, and why each is safe. Everything else is a literal
/// (`sqlx::query!` and friends, or `sqlx::query("…")`): sqlx 0.9 takes only `&'static str`
/// unless wrapped in `AssertSqlSafe`.
const DYNAMIC_SQL: &[(&str, &str)] = &[
    // An identifier cannot be bound; `name` is checked to be `[A-Za-z0-9_]+` just above.
    (
        "src/db/mod.rs",
        "AssertSqlSafe(format!(\"CREATE DATABASE {name}\"))",
    ),
    // A literal: VACUUM cannot run in the transaction a prepared statement would open.
    ("src/jobs/maintenance.rs", "AssertSqlSafe(\"VACUUM jobs\")"),
    // A test database copied from its template: both names are `hearth_test_`/`hearth_tpl_`
    // and a UUID's hex digits, made just above (`CREATE DATABASE {name} TEMPLATE {template}`).
    ("src/application/testing.rs", "AssertSqlSafe(create)"),
];

/// Statements whose SQL is not a literal in the code but is compiled into the binary all the
/// same: the migration runner executes the files `sqlx::migrate!` embedded.
const COMPILED_SQL: &[(&str, &str)] = &[("src/db/migrations.rs", "migration.sql.clone()")];

#[test]
fn sql_is_only_built_from_literals_and_bound_parameters() {
    let mut found = Vec::new();
    for (path, source) in rust_sources() {
        let path = path.to_string_lossy().into_owned();
        for builder in ["QueryBuilder", "push_bind", "push_values"] {
            if source.contains(builder) {
                found.push(format!("{path}: {builder} builds SQL at run time"));
            }
        }
        for (at, _) in source.match_indices("AssertSqlSafe(") {
            let call = call_arguments(&source[at + "AssertSqlSafe".len()..]);
            let call = format!("AssertSqlSafe({call})");
            if !DYNAMIC_SQL.contains(&(path.as_str(), call.as_str())) {
                found.push(format!("{path}: unreviewed {call}"));
            }
        }
        // Every runtime statement's SQL is a string literal, never a value made by code
        // (`sqlx::query!` and friends are literals by construction).
        for (at, _) in source
            .match_indices("sqlx::query")
            .chain(source.match_indices("sqlx::raw_sql"))
        {
            let call = &source[at..];
            let name_end = call[6..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .map_or(call.len(), |i| i + 6);
            let mut after = &call[name_end..];
            if after.starts_with('!') {
                continue;
            }
            if let Some(turbofish) = after.strip_prefix("::<") {
                after = &turbofish[turbofish.find(">(").map_or(0, |i| i + 1)..];
            }
            if !after.starts_with('(') {
                continue;
            }
            let first = call_arguments(after).trim_start();
            let literal = ["\"", "r\"", "r#\"", "sqlx::AssertSqlSafe("]
                .iter()
                .any(|start| first.starts_with(start));
            let compiled = COMPILED_SQL.contains(&(path.as_str(), first));
            if !literal && !compiled {
                let name = &call[..name_end];
                found.push(format!("{path}: {name}({first}) is not a literal"));
            }
        }
        // Executing or fetching a formatted string.
        for method in [
            ".execute(",
            ".fetch_one(",
            ".fetch_all(",
            ".fetch_optional(",
            ".fetch(",
        ] {
            for (at, _) in source.match_indices(method) {
                let arguments = call_arguments(&source[at + method.len() - 1..]);
                if arguments.contains("format!") || arguments.contains("concat!") {
                    found.push(format!("{path}: {method}{arguments}) formats SQL"));
                }
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
    // The scan sees what it should: both reviewed exceptions are where the list says.
    for (path, call) in DYNAMIC_SQL.iter().chain(COMPILED_SQL) {
        let source =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
        assert!(
            source.contains(call),
            "{path} no longer has {call}: update the list"
        );
    }
}

#[tokio::test]
async fn event_streams_share_the_per_user_and_per_address_limits_with_sockets() {
    // Arrange: two live connections per user, three per address.
    let app = TestApp::builder()
        .config(|c| {
            c.channels.ws_max_per_user = 2;
            c.channels.ws_max_per_address = 3;
        })
        .spawn()
        .await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;

    // Act: ada holds a socket and an event stream, then asks for two more streams.
    let _socket = ada.socket("/ws/rooms/lobby").await;
    let stream = ada.get("/notifications/stream").await;
    assert_eq!(stream.status(), 200);
    let refused = ada.get("/notifications/stream").await;

    // Assert: her third connection is refused, whichever kind it is; bob gets the address's
    // third place and no fourth.
    assert_eq!(refused.status(), 429);
    assert!(refused.text().await.unwrap().contains("live connections"));
    assert_eq!(app.state.sockets.of_user(ada.id), 2);
    let bobs = bob.get("/notifications/stream").await;
    assert_eq!(bobs.status(), 200);
    assert_eq!(bob.get("/notifications/stream").await.status(), 429);

    // A stream that ends gives its place back.
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.state.sockets.of_user(ada.id) > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream's place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ada.get("/notifications/stream").await.status(), 200);
}
