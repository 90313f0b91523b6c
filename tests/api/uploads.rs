//! The uploads app: CSV files imported as posts by a job, all or nothing, with live progress
//! and a summary — against a real PostgreSQL.

use std::time::Duration;

use hearth::{
    jobs::{Enqueue, testing},
    uploads::{ImportCsv, group},
};
use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::helpers::{TestApp, TestUser, assert_redirect, read_events};

const BOUNDARY: &str = "hearth-test-boundary-7d1f";

/// A `multipart/form-data` body with one file part, as a browser sends it.
fn multipart(filename: &str, content: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: text/csv\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Uploads `content` as `user`, the way a script does: CSRF header, `Accept: application/json`.
async fn upload(app: &TestApp, user: &TestUser<'_>, filename: &str, content: &[u8]) -> Response {
    post_upload(app, user, "application/json", multipart(filename, content)).await
}

async fn post_upload(app: &TestApp, user: &TestUser<'_>, accept: &str, body: Vec<u8>) -> Response {
    let token = user.browser.csrf_token().await;
    user.browser
        .client
        .post(app.url("/uploads"))
        .header("x-csrf-token", token)
        .header("accept", accept)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .expect("POST /uploads")
}

/// Uploads a file that must be accepted; returns `(upload_id, job_id)`.
pub(crate) async fn accepted(
    app: &TestApp,
    user: &TestUser<'_>,
    filename: &str,
    content: &[u8],
) -> (i64, i64) {
    let response = upload(app, user, filename, content).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    let upload_id = body["upload_id"].as_i64().expect("an upload id");
    assert_eq!(body["url"], format!("/uploads/{upload_id}"));
    (upload_id, body["job_id"].as_i64().expect("a job id"))
}

/// Runs the waiting imports now, with what `serve` gives jobs (the cache included).
pub(crate) async fn run_imports(app: &TestApp) -> usize {
    let registry = app.registry();
    testing::drain(&app.pool, &registry, "default")
        .await
        .expect("drain")
}

/// `GET /api/uploads/{id}` as `user`.
async fn state(user: &TestUser<'_>, upload_id: i64) -> Value {
    let response = user.get(&format!("/api/uploads/{upload_id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn posts_of(app: &TestApp, user: &TestUser<'_>) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(published_at) FROM posts WHERE author_id = $1")
        .bind(user.id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn notifications_of(app: &TestApp, user: &TestUser<'_>) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT kind, title, url FROM notifications WHERE user_id = $1 ORDER BY id")
        .bind(user.id)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_good_file_is_imported_whole_with_progress_a_summary_and_a_notification() {
    // Arrange: an anonymous reader has the public list cached.
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    app.get("/posts").await;
    assert_eq!(app.get("/posts").await.headers()["x-cache"], "HIT");
    let mut csv = String::from("title,body,publish\n");
    for i in 1..=250 {
        csv.push_str(&format!(
            "Post {i},\"The *body* of post {i}, with a comma\",{}\n",
            i <= 10
        ));
    }

    // Act: upload, then run the job while following the upload's group as its page does.
    let (upload_id, job_id) = accepted(&app, &ada, "posts.csv", csv.as_bytes()).await;
    let before = state(&ada, upload_id).await;
    let mut page = app.state.channels.subscribe();
    page.join(&group(upload_id));
    assert_eq!(run_imports(&app).await, 1);

    // Assert: the upload waited for its job, which reported progress batch by batch.
    assert_eq!(before["status"], "pending");
    assert_eq!(before["job_id"], job_id);
    let mut updates = Vec::new();
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(5), page.recv())
            .await
            .expect("a message within 5 s")
            .expect("the subscription is open");
        let update: Value = delivery.decode().unwrap();
        let done = update["type"] == "import.done";
        updates.push(update);
        if done {
            break;
        }
    }
    let steps: Vec<(&str, i64)> = updates
        .iter()
        .map(|u| (u["type"].as_str().unwrap(), u["percent"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("import.progress", 0),
            ("import.progress", 40),
            ("import.progress", 80),
            ("import.progress", 99),
            ("import.done", 100)
        ]
    );
    assert_eq!(updates[2]["message"], "Importing… 200 of 250 rows");
    let headline = "Imported 250 posts: 10 published, 240 drafts.";
    assert_eq!(updates[4]["status"], "imported");
    assert_eq!(updates[4]["summary"]["headline"], headline);

    // Assert: every row is a post, the job says 100 % with the summary as its result.
    assert_eq!(posts_of(&app, &ada).await, (250, 10));
    let job: Value = ada
        .get(&format!("/api/jobs/{job_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["state"], "completed");
    assert_eq!(job["progress_percent"], 100);
    assert_eq!(job["result"]["status"], "imported");
    assert_eq!(job["result"]["imported"], 250);
    assert_eq!(job["result"]["published"], 10);

    // Assert: the summary on the page and in the API, the file dropped, one notification.
    let after = state(&ada, upload_id).await;
    assert_eq!(after["status"], "imported");
    assert_eq!(after["percent"], 100);
    assert_eq!(after["message"], headline);
    assert_eq!(after["summary"]["error_count"], 0);
    let page_html = ada
        .get(&format!("/uploads/{upload_id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page_html.contains(headline), "{page_html}");
    assert!(
        ada.get("/uploads")
            .await
            .text()
            .await
            .unwrap()
            .contains("posts.csv")
    );
    let content: Option<Vec<u8>> = sqlx::query_scalar("SELECT content FROM uploads WHERE id = $1")
        .bind(upload_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(content.is_none(), "the file is dropped once imported");
    assert_eq!(
        notifications_of(&app, &ada).await,
        [(
            "import".to_owned(),
            "Imported 250 posts from “posts.csv”".to_owned(),
            format!("/uploads/{upload_id}")
        )]
    );

    // Assert: the published posts are public at once (the cached list was dropped).
    let list = app.get("/posts").await;
    assert_eq!(list.headers()["x-cache"], "MISS");
    assert!(list.text().await.unwrap().contains("Post 10"));
    assert_eq!(app.get("/posts/post-1").await.status(), StatusCode::OK);
    assert_eq!(
        app.get("/posts/post-11").await.status(),
        StatusCode::NOT_FOUND
    );

    // Assert: a page opened now starts from the finished state.
    let mut events = ada.get(&format!("/uploads/{upload_id}/events")).await;
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let first = read_events(&mut events, &mut String::new(), 1).await;
    assert_eq!(first[0].kind.as_deref(), Some("import.state"));
    let prelude: Value = serde_json::from_str(&first[0].data).unwrap();
    assert_eq!(prelude["status"], "imported");
    assert_eq!(prelude["summary"]["headline"], headline);
}

#[tokio::test]
async fn running_an_import_again_imports_nothing_twice() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let (upload_id, _) = accepted(&app, &ada, "two.csv", b"title,body\nOne,a\nTwo,b\n").await;
    run_imports(&app).await;

    // A duplicate of the job, as a retry after a lost lease would be.
    Enqueue::new(&ImportCsv { upload_id })
        .unwrap()
        .enqueue(&app.pool)
        .await
        .unwrap();
    assert_eq!(run_imports(&app).await, 1);

    assert_eq!(posts_of(&app, &ada).await, (2, 0));
    assert_eq!(notifications_of(&app, &ada).await.len(), 1);
}

#[tokio::test]
async fn a_file_that_is_not_utf8_is_rejected_with_where_and_nothing_is_imported() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;

    let (upload_id, job_id) = accepted(
        &app,
        &ada,
        "latin1.csv",
        b"title,body\nCaf\xe9,written in Latin-1\n",
    )
    .await;
    run_imports(&app).await;

    let after = state(&ada, upload_id).await;
    assert_eq!(after["status"], "rejected");
    let message = after["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "Nothing was imported. The file is not UTF-8 text: byte 0xE9 at offset 14 (line 2)"
        ),
        "{message}"
    );
    assert_eq!(posts_of(&app, &ada).await, (0, 0));
    let job: Value = ada
        .get(&format!("/api/jobs/{job_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["state"], "completed");
    // Counts only: what the messages quote from the file is for the upload's owner.
    assert_eq!(job["result"]["status"], "rejected");
    assert_eq!(job["result"]["imported"], 0);
    assert!(!job.to_string().contains("0xE9"), "{job}");
    assert_eq!(
        notifications_of(&app, &ada).await,
        [(
            "import".to_owned(),
            "“latin1.csv” was not imported: see what to fix".to_owned(),
            format!("/uploads/{upload_id}")
        )]
    );
}

#[tokio::test]
async fn rows_with_problems_are_listed_by_row_and_nothing_is_imported() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let file = "title,body,publish\n\
                Fine,a good row,true\n\
                Too,many,fields,here\n\
                ,an empty title,false\n\
                Maybe,b,perhaps\n\
                \"Quoted, with a comma\",\"and a\nline break\",no\n";

    let (upload_id, _) = accepted(&app, &ada, "bad-rows.csv", file.as_bytes()).await;
    run_imports(&app).await;

    let after = state(&ada, upload_id).await;
    assert_eq!(after["status"], "rejected");
    assert_eq!(
        after["message"],
        "Nothing was imported: 3 of 5 rows have problems. Fix them and upload the whole file again."
    );
    let errors: Vec<(i64, i64, String)> = after["summary"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["row"].as_i64().unwrap(),
                e["line"].as_i64().unwrap(),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(errors.len(), 3);
    assert_eq!((errors[0].0, errors[0].1), (3, 3));
    assert!(
        errors[0]
            .2
            .starts_with("The row has 4 fields where the header has 3.")
    );
    assert_eq!(errors[1], (4, 4, "A post needs a title.".to_owned()));
    assert_eq!(
        errors[2],
        (
            5,
            5,
            "publish is “perhaps”; write true or false.".to_owned()
        )
    );
    assert_eq!(posts_of(&app, &ada).await, (0, 0));
    // The page lists them too.
    let page = ada
        .get(&format!("/uploads/{upload_id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("Rows to fix"), "{page}");
    assert!(page.contains("publish is “perhaps”; write true or false."));
}

#[tokio::test]
async fn an_unclosed_quote_or_a_missing_header_rejects_the_file_with_a_clear_message() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;

    let (quote, _) = accepted(
        &app,
        &ada,
        "quote.csv",
        b"title,body\nOne,\"fine\"\nTwo,\"never closed\nThree,c\n",
    )
    .await;
    let (header, _) = accepted(&app, &ada, "no-header.csv", b"Hello,World\nSecond,row\n").await;
    run_imports(&app).await;

    let quote = state(&ada, quote).await;
    assert_eq!(quote["status"], "rejected");
    let message = quote["message"].as_str().unwrap();
    assert!(
        message.contains("A quoted field that starts on line 3 is never closed"),
        "{message}"
    );
    let header = state(&ada, header).await;
    let message = header["message"].as_str().unwrap();
    assert!(
        message.contains(
            "The first row must name the columns — title, body and optionally publish — but it reads “Hello”, “World”."
        ),
        "{message}"
    );
    assert_eq!(posts_of(&app, &ada).await, (0, 0));
}

#[tokio::test]
async fn a_title_whose_slugs_are_all_taken_rolls_back_the_whole_file() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let mut file = String::from("title,body\nAnother title,first\n");
    for i in 0..51 {
        file.push_str(&format!("Same title,copy {i}\n"));
    }

    let (upload_id, _) = accepted(&app, &ada, "same.csv", file.as_bytes()).await;
    run_imports(&app).await;

    let after = state(&ada, upload_id).await;
    assert_eq!(after["status"], "rejected");
    let errors = after["summary"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["row"], 53);
    assert_eq!(
        errors[0]["message"],
        "Too many posts have this title already; change it."
    );
    assert_eq!(posts_of(&app, &ada).await, (0, 0));
}

#[tokio::test]
async fn a_file_over_the_limit_is_413_and_nothing_is_stored() {
    let app = TestApp::builder()
        .settings(|c: &mut hearth::uploads::UploadSettings| c.upload_max_bytes = 1000)
        .spawn()
        .await;
    let ada = app.user("ada").await;
    let mut file = String::from("title,body\n");
    while file.len() <= 1000 {
        file.push_str("A title,a body\n");
    }

    let script = upload(&app, &ada, "big.csv", file.as_bytes()).await;
    let form = post_upload(
        &app,
        &ada,
        "text/html",
        multipart("big.csv", file.as_bytes()),
    )
    .await;
    let at_limit = upload(&app, &ada, "fits.csv", &file.as_bytes()[..1000]).await;

    assert_eq!(script.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = script.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "The file is larger than 1,000 bytes, the most an import takes."
    );
    assert_eq!(form.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        form.text()
            .await
            .unwrap()
            .contains("The file is larger than 1,000 bytes")
    );
    assert_eq!(at_limit.status(), StatusCode::ACCEPTED);
    let stored: Vec<String> = sqlx::query_scalar("SELECT filename FROM uploads")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, ["fits.csv"]);
}

#[tokio::test]
async fn a_file_past_the_body_limit_is_refused_before_it_is_read() {
    // Default limits: 5 MiB files, 2 MiB bodies elsewhere.
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let three_mib = format!("title,body\nBig,{}\n", "x".repeat(3 << 20));
    let seven_mib = "x".repeat(7 << 20);

    // Past the body limit, within the upload's: accepted (and rejected by the job).
    let (upload_id, _) = accepted(&app, &ada, "three.csv", three_mib.as_bytes()).await;
    // Past the upload's limit: 413 from the length alone.
    let too_big = upload(&app, &ada, "seven.csv", seven_mib.as_bytes()).await;
    // Other routes keep the body limit.
    let token = ada.browser.csrf_token().await;
    let form = ada
        .browser
        .client
        .post(app.url("/posts/preview"))
        .header("x-csrf-token", token)
        .form(&[("body", "y".repeat(3 << 20))])
        .send()
        .await
        .unwrap();

    assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(form.status(), StatusCode::PAYLOAD_TOO_LARGE);
    run_imports(&app).await;
    let after = state(&ada, upload_id).await;
    assert_eq!(after["status"], "rejected");
    assert_eq!(
        after["summary"]["errors"][0]["message"],
        "The post is 3145728 characters long; the limit is 100000."
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM uploads")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn a_form_without_a_file_says_so_and_a_browser_form_is_redirected() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let no_file = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--{BOUNDARY}--\r\n"
    );

    let missing = post_upload(&app, &ada, "application/json", no_file.into_bytes()).await;
    let empty = upload(&app, &ada, "empty.csv", b"").await;
    let browser = post_upload(
        &app,
        &ada,
        "text/html",
        multipart("posts.csv", b"title,body\na,b\n"),
    )
    .await;

    assert_eq!(missing.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Choose a CSV file to import.");
    assert_eq!(empty.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let id: i64 = sqlx::query_scalar("SELECT id FROM uploads")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_redirect(&browser, &format!("/uploads/{id}"));
}

#[tokio::test]
async fn an_upload_is_its_owners_only() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let (upload_id, _) = accepted(&app, &ada, "private.csv", b"title,body\na,b\n").await;

    for path in [
        format!("/uploads/{upload_id}"),
        format!("/uploads/{upload_id}/events"),
        format!("/api/uploads/{upload_id}"),
    ] {
        assert_eq!(
            bob.get(&path).await.status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let theirs = bob.get("/uploads").await.text().await.unwrap();
    assert!(!theirs.contains("private.csv"));
    assert_eq!(
        ada.get(&format!("/uploads/{upload_id}")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_job_of_an_import_links_to_its_console_page_for_admins_only() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let root = app.user("root").await;
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(root.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let (theirs, job_id) = accepted(&app, &ada, "a.csv", b"title,body\na,b\n").await;
    let (ours, root_job) = accepted(&app, &root, "b.csv", b"title,body\na,b\n").await;

    // A member reads the number; the console is not theirs, nor is raw JSON a page.
    let page = ada
        .get(&format!("/uploads/{theirs}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!(
            r#"<span data-testid="upload-job">#{job_id}</span>"#
        )),
        "{page}"
    );
    assert!(!page.contains("/api/jobs/"), "{page}");
    // An administrator follows it to the job's page, which is HTML.
    let page = root
        .get(&format!("/uploads/{ours}"))
        .await
        .text()
        .await
        .unwrap();
    let link =
        format!(r#"<a href="/ops/jobs/{root_job}" data-testid="upload-job">#{root_job}</a>"#);
    assert!(page.contains(&link), "{page}");
    let job_page = root.get(&format!("/ops/jobs/{root_job}")).await;
    assert_eq!(job_page.status(), StatusCode::OK);
    assert!(
        job_page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
}

#[tokio::test]
async fn anonymous_visitors_are_sent_to_log_in() {
    let app = TestApp::spawn().await;
    let token = app.csrf_token().await;

    let page = app.get("/uploads").await;
    let api = app.get("/api/uploads/1").await;
    let post = app
        .client
        .post(app.url("/uploads"))
        .header("x-csrf-token", token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(multipart("a.csv", b"title,body\na,b\n"))
        .send()
        .await
        .unwrap();

    assert_redirect(&page, "/login?next=%2Fuploads");
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
    assert_redirect(&post, "/login?next=%2Fuploads");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM uploads")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn an_import_that_fails_on_our_side_imports_nothing_and_the_page_is_told() {
    // Every insert into `posts` fails on the database's side, as a full disk or a lost
    // connection would make it: the attempt fails, nothing is written.
    let app = TestApp::spawn().await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'the disk is full'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON posts FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let ada = app.user("ada").await;
    let (upload_id, job_id) = accepted(
        &app,
        &ada,
        "publish.csv",
        b"title,body,publish\nNews,text,true\n",
    )
    .await;
    sqlx::query("UPDATE jobs SET max_attempts = 1 WHERE id = $1")
        .bind(job_id)
        .execute(&app.pool)
        .await
        .unwrap();
    let mut page = app.state.channels.subscribe();
    page.join(&group(upload_id));

    let ran = hearth::jobs::testing::drain(&app.pool, &app.registry(), "default")
        .await
        .unwrap();
    assert_eq!(ran, 1);

    let mut last = Value::Null;
    while last["type"] != "import.done" {
        let delivery = tokio::time::timeout(Duration::from_secs(5), page.recv())
            .await
            .expect("a message within 5 s")
            .expect("the subscription is open");
        last = delivery.decode().unwrap();
    }
    assert_eq!(last["status"], "failed");
    let after = state(&ada, upload_id).await;
    assert_eq!(after["status"], "failed");
    assert_eq!(
        after["message"],
        "The import failed on our side, and nothing was imported. Upload the file again later."
    );
    let job: Value = ada
        .get(&format!("/api/jobs/{job_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["state"], "discarded");
    assert_eq!(posts_of(&app, &ada).await, (0, 0));
    // The file is kept, so that the job can be retried once the cause is fixed.
    let kept: Option<i64> =
        sqlx::query_scalar("SELECT octet_length(content)::bigint FROM uploads WHERE id = $1")
            .bind(upload_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(kept.is_some());
}
