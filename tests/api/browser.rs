//! End-to-end tests in a real headless Chromium: each test serves the app on an ephemeral port
//! and runs a script from `tests/browser/` against it (Node driving the system Chromium through
//! playwright-core). `scripts/test` installs Chromium and the npm package, then runs
//! `cargo test`; when either is missing these tests fail and say so, they never skip.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    process::Command,
    sync::Semaphore,
    task::JoinHandle,
};

use crate::helpers::TestApp;

/// How long one script may run (once it has the browser), Chromium's start included.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The script's own time limit: shorter, so that it reports the step and screenshots first.
const SCRIPT_OWN_TIMEOUT: Duration = Duration::from_secs(100);

/// One Chromium at a time: a browser beside the rest of the suite is enough on a small machine,
/// and the scripts' 10 s waits stay far from their limits.
static ONE_BROWSER: Semaphore = Semaphore::const_new(1);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `$CHROMIUM`, else Debian's `/usr/bin/chromium` (what the scripts launch).
fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// `<target dir>/browser-shots`: the test binary is `<target dir>/<profile>/deps/api-<hash>`.
fn shots_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| manifest_dir().join("target"))
        .join("browser-shots")
}

/// Fails (never skips) when what the scripts need is not installed.
fn check_prerequisites() {
    let mut missing = Vec::new();
    let chromium = chromium();
    if !chromium.is_file() {
        missing.push(format!(
            "no Chromium at {} (Debian package `chromium`, or set CHROMIUM)",
            chromium.display()
        ));
    }
    let playwright = manifest_dir().join("tests/browser/node_modules/playwright-core/package.json");
    if !playwright.is_file() {
        missing.push(
            "no tests/browser/node_modules/playwright-core (`npm ci --prefix tests/browser`)"
                .to_owned(),
        );
    }
    assert!(
        missing.is_empty(),
        "the browser tests cannot run: {}.\nRun `scripts/test` (it installs them, then runs cargo test).",
        missing.join("; ")
    );
}

fn collect(mut pipe: impl AsyncRead + Unpin + Send + 'static) -> JoinHandle<String> {
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes).await;
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `node tests/browser/<script>` against `app` (`HEARTH_URL`), with screenshots in
/// `<target dir>/browser-shots/<script name>/` and `env` added to its environment; panics with
/// the script's output unless it exits 0 within [`SCRIPT_TIMEOUT`].
pub(crate) async fn run_script(app: &TestApp, script: &str, env: &[(&str, &str)]) {
    run_script_at(app.url("").trim_end_matches('/'), script, env).await;
}

/// [`run_script`] against the server at `base` (`http://127.0.0.1:1234`): a `hearth` process.
pub(crate) async fn run_script_at(base: &str, script: &str, env: &[(&str, &str)]) {
    check_prerequisites();
    let _browser = ONE_BROWSER
        .acquire()
        .await
        .expect("the semaphore is never closed");

    let node = std::env::var("NODE").unwrap_or_else(|_| "node".to_owned());
    let shots = shots_dir();
    let mut command = Command::new(&node);
    command
        .arg(Path::new("tests/browser").join(script))
        .current_dir(manifest_dir())
        .env("HEARTH_URL", base)
        .env("SHOTS", &shots)
        .env("CHROMIUM", chromium())
        .env(
            "BROWSER_TIMEOUT_MS",
            SCRIPT_OWN_TIMEOUT.as_millis().to_string(),
        )
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap_or_else(|err| {
        panic!(
            "cannot run `{node}` ({err}): the browser tests need Node.js 20 or newer on PATH \
             (or NODE=/path/to/node); then run `scripts/test`"
        )
    });
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());

    let status = match tokio::time::timeout(SCRIPT_TIMEOUT, child.wait()).await {
        Ok(status) => Some(status.expect("wait for node")),
        Err(_) => {
            // SIGTERM first: playwright closes Chromium on it; then make sure.
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
            None
        }
    };
    let stdout = stdout.await.unwrap_or_default();
    let stderr = stderr.await.unwrap_or_default();
    let outcome = match status {
        Some(status) if status.success() => {
            print!("{stdout}");
            eprint!("{stderr}");
            return;
        }
        Some(status) => format!("failed ({status})"),
        None => format!("did not finish within {SCRIPT_TIMEOUT:?} and was stopped"),
    };
    panic!(
        "browser script tests/browser/{script} {outcome}\n\
         --- stdout\n{stdout}\n--- stderr\n{stderr}\n\
         --- screenshots: {}",
        shots
            .join(Path::new(script).file_stem().unwrap_or_default())
            .display()
    );
}

#[tokio::test]
async fn smoke_signup_login_logout_in_a_real_browser() {
    let app = TestApp::spawn().await;
    run_script(&app, "smoke.mjs", &[]).await;
}

#[tokio::test]
async fn two_users_chat_in_a_room_and_see_each_other_online() {
    let app = TestApp::spawn().await;
    run_script(&app, "chat.mjs", &[]).await;
}

#[tokio::test]
async fn publishing_a_post_raises_the_subscribers_bell_without_a_reload() {
    // The subscribers' notifications are a job: the app runs its workers, as `serve` does.
    let app = TestApp::builder().with_workers().spawn().await;
    run_script(&app, "bell.mjs", &[]).await;
}

#[tokio::test]
async fn the_daily_digest_lands_once_in_the_dev_mailbox() {
    use hearth::{jobs::Enqueue, publishing::jobs::DailyDigest};

    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let root = app.user("root").await;
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(root.id)
        .execute(&app.pool)
        .await
        .unwrap();
    ada.set_email("ada@example.com").await;
    bob.set_email("bob@example.com").await;
    bob.post_form("/authors/ada/subscribe", &[]).await;
    ada.write("A day in the life", "text", true).await;
    app.drain("mail").await;
    // The schedule firing on two instances, or a retry: the digest still goes out once.
    for _ in 0..2 {
        Enqueue::new(&DailyDigest::default())
            .unwrap()
            .enqueue(&app.pool)
            .await
            .unwrap();
        app.drain("mail").await;
    }

    run_script(
        &app,
        "mailbox.mjs",
        &[
            ("ADMIN_USER", "root"),
            ("ADMIN_PASSWORD", "correct horse battery"),
            ("DIGEST_TO", "bob@example.com"),
            ("DIGEST_POST", "A day in the life"),
        ],
    )
    .await;
}

#[tokio::test]
async fn an_admin_retries_a_discarded_job_and_sees_it_complete_live() {
    use hearth::{
        jobs::{Enqueue, control},
        publishing::jobs::NotifySubscribers,
    };

    let app = TestApp::builder().with_workers().spawn().await;
    let root = app.user("root").await;
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(root.id)
        .execute(&app.pool)
        .await
        .unwrap();
    // A job that would succeed (there is no such post: nothing to announce), parked until
    // next year and discarded, as an operator would find a job that gave up.
    let id = Enqueue::new(&NotifySubscribers { post_id: 0 })
        .unwrap()
        .delay(Duration::from_secs(365 * 86_400))
        .enqueue(&app.pool)
        .await
        .unwrap()
        .id;
    assert!(control::discard(&app.pool, id).await.unwrap());

    run_script(
        &app,
        "ops.mjs",
        &[
            ("ADMIN_USER", "root"),
            ("ADMIN_PASSWORD", "correct horse battery"),
            ("JOB_ID", &id.to_string()),
        ],
    )
    .await;
}

#[tokio::test]
async fn an_admin_watches_a_workflow_graph_turn_completed_live() {
    use hearth::jobs::{
        Chord, Group, QueueName, Workflow, control,
        workflow::builtin::{Gather, SleepStep},
    };

    let app = TestApp::builder().with_workers().spawn().await;
    let root = app.user("root").await;
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(root.id)
        .execute(&app.pool)
        .await
        .unwrap();
    // The steps wait in a paused queue until the script resumes it from /ops.
    control::pause(&app.pool, &QueueName::parse("default").unwrap())
        .await
        .unwrap();
    let members = Group::of((1..=3).map(|value| SleepStep { ms: 0, value }));
    let handle = Workflow::new(Chord::new(members, Gather {}), ())
        .enqueue(&app.pool)
        .await
        .unwrap();

    run_script(
        &app,
        "workflow.mjs",
        &[
            ("ADMIN_USER", "root"),
            ("ADMIN_PASSWORD", "correct horse battery"),
            ("WORKFLOW_ID", &handle.id.to_string()),
        ],
    )
    .await;
}

#[tokio::test]
async fn an_upload_shows_its_progress_bar_moving_to_done() {
    use hearth::jobs::{QueueName, control};

    let app = TestApp::builder().with_workers().spawn().await;
    // The import waits until its page listens: a 2,000-row import takes well under a second,
    // and the page must see it move rather than only its end.
    let queue = QueueName::parse("default").unwrap();
    control::pause(&app.pool, &queue).await.unwrap();
    let release = tokio::spawn({
        let (pool, channels) = (app.pool.clone(), app.state.channels.clone());
        async move {
            let listening = || {
                channels
                    .local_groups()
                    .iter()
                    .any(|(group, _)| group.starts_with("upload."))
            };
            while !listening() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            control::resume(&pool, &queue).await.unwrap();
        }
    });
    run_script(&app, "upload.mjs", &[]).await;
    release.await.unwrap();
}

#[tokio::test]
async fn two_people_type_in_one_document_and_converge_even_after_going_offline() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    app.user("bob").await;
    let response = ada.post_form("/docs", &[("title", "Shared notes")]).await;
    let doc = response.headers()["location"].to_str().unwrap().to_owned();
    let response = ada
        .post_form(
            &format!("{doc}/members"),
            &[("username", "bob"), ("role", "edit")],
        )
        .await;
    assert!(response.status().is_redirection(), "{}", response.status());

    run_script(
        &app,
        "docs.mjs",
        &[
            ("DOC_URL", &doc),
            ("USER_A", "ada"),
            ("USER_B", "bob"),
            ("PASSWORD", "correct horse battery"),
        ],
    )
    .await;
}

#[tokio::test]
async fn the_layout_fits_a_phone_and_a_laptop_with_menus_apart() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let root = app.user("root").await;
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(root.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let long = "Supercalifragilisticexpialidocious".repeat(4);
    let slug = ada.write(&long, &format!("{long} {long}"), true).await;
    ada.write("A short one", "With a body.", true).await;
    crate::documents::create_doc(&ada, &long).await;
    crate::documents::create_doc(&ada, "Meeting notes").await;
    sqlx::query(
        "INSERT INTO notifications (user_id, kind, title, url, dedupe_key)
         SELECT $1, 'mention', 'Mentioned ' || n, '/chat/lobby', 'test:' || n
           FROM generate_series(1, 12) n",
    )
    .bind(ada.id)
    .execute(&app.pool)
    .await
    .unwrap();

    run_script(
        &app,
        "layout.mjs",
        &[
            ("MEMBER_USER", "ada"),
            ("ADMIN_USER", "root"),
            ("PASSWORD", "correct horse battery"),
            ("LONG_SLUG", &slug),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_new_room_says_it_is_empty_and_a_refused_message_keeps_its_text() {
    let app = TestApp::spawn().await;
    run_script(&app, "chat_refused.mjs", &[]).await;
}

#[tokio::test]
async fn the_dashboard_draws_real_charts_with_axes_legends_and_hover_values() {
    let app = TestApp::spawn().await;
    let root = app.user("root").await;
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(root.id)
        .execute(&app.pool)
        .await
        .unwrap();
    run_script(
        &app,
        "dashboard.mjs",
        &[
            ("ADMIN_USER", "root"),
            ("PASSWORD", "correct horse battery"),
        ],
    )
    .await;
}

#[tokio::test]
async fn the_editor_names_the_images_that_cannot_be_shown_and_the_post_shows_the_rest() {
    let images = crate::images::ImageServer::start().await;
    let app = crate::images::app_allowing_loopback().await;
    app.user("ada").await;
    let port = images.address.port();
    run_script(
        &app,
        "images.mjs",
        &[
            ("AUTHOR", "ada"),
            ("PASSWORD", "correct horse battery"),
            ("ALLOWED_IMAGE", &images.url("/pic.png")),
            // Loopback too, by a name the allow-list does not hold.
            ("REFUSED_IMAGE", &format!("http://localhost:{port}/pic.png")),
            ("NOT_IMAGE", &images.url("/page.html")),
        ],
    )
    .await;
}
