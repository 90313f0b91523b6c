//! Operations: `/metrics` for scrapers and admins, the live dashboard's event stream, and
//! the operations console under `/ops`.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, TestUser, read_events};

async fn admin<'a>(app: &'a TestApp, name: &str) -> TestUser<'a> {
    let user = app.user(name).await;
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(user.id)
        .execute(&app.pool)
        .await
        .unwrap();
    user
}

/// Checks the Prometheus text format line by line; returns the sample names.
fn parse_prometheus(text: &str) -> HashSet<String> {
    let mut typed = HashSet::new();
    let mut names = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "bad value in {line:?}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (key, value) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(!value.trim_end_matches('"').contains('\n'), "{line}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(
            typed.contains(family),
            "{name} has no # TYPE line before it"
        );
        names.insert(name.to_owned());
    }
    names
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_for_admins_and_token_holders_only() {
    let app = TestApp::builder()
        .config(|c| c.http.metrics_token = Some("scrape-me-please-0123456789".into()))
        .spawn()
        .await;
    let ada = app.user("ada").await;
    let root = admin(&app, "root").await;
    app.get("/").await;

    assert_eq!(app.get("/metrics").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(ada.get("/metrics").await.status(), StatusCode::FORBIDDEN);
    let wrong = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let scraped = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-me-please-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    assert!(
        scraped.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = scraped.text().await.unwrap();
    let names = parse_prometheus(&text);
    for expected in [
        "hearth_http_requests_total",
        "hearth_http_request_duration_seconds_bucket",
        "hearth_jobs_total",
        "hearth_ws_open",
        "hearth_channel_messages_published_total",
        "hearth_cache_hits_total",
        "hearth_db_pool_connections",
    ] {
        assert!(names.contains(expected), "{expected} missing from:\n{text}");
    }
    let requests: f64 = text
        .lines()
        .find(|l| l.starts_with("hearth_http_requests_total{class=\"2xx\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(requests >= 1.0, "the home page was counted");
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("hearth_http_request_duration_seconds_bucket"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "cumulative buckets"
    );

    assert_eq!(root.get("/metrics").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_dashboard_streams_its_history_then_a_sample_a_second() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(ada.id)
        .execute(&app.pool)
        .await
        .unwrap();
    assert!(app.get("/dashboard").await.status().is_redirection());
    // The server's internals are for administrators.
    assert_eq!(bob.get("/dashboard").await.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        bob.get("/dashboard/stream").await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(ada.get("/dashboard").await.status(), StatusCode::OK);

    let mut stream = ada
        .browser
        .client
        .get(app.url("/dashboard/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();
    let events = read_events(&mut stream, &mut buffer, 3).await;
    assert_eq!(events[0].kind.as_deref(), Some("history"));
    assert!(
        serde_json::from_str::<Value>(&events[0].data)
            .unwrap()
            .is_array()
    );
    for event in &events[1..] {
        assert_eq!(event.kind.as_deref(), Some("sample"));
        let sample: Value = serde_json::from_str(&event.data).unwrap();
        for field in [
            "t",
            "requests_per_s",
            "websockets",
            "event_streams",
            "jobs_completed_per_s",
        ] {
            assert!(sample[field].is_number(), "{field} in {sample}");
        }
        assert!(
            sample["event_streams"].as_i64().unwrap() >= 1,
            "this stream is open"
        );
    }
}

/// A job of a kind nobody runs, waiting until next year: it stays where the test puts it.
async fn parked_job(app: &TestApp, kind: &str) -> i64 {
    use hearth::jobs::{Defaults, Enqueue};
    Enqueue::raw(kind, serde_json::json!({"n": 1}), Defaults::default())
        .unwrap()
        .delay(std::time::Duration::from_secs(365 * 86_400))
        .tags(["ops-test"])
        .enqueue(&app.pool)
        .await
        .unwrap()
        .id
}

async fn job_state(app: &TestApp, id: i64) -> String {
    hearth::jobs::control::status(&app.pool, id)
        .await
        .unwrap()
        .unwrap()
        .state
}

#[tokio::test]
async fn every_console_page_and_action_is_for_admins_only() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let id = parked_job(&app, "ops.kept").await;
    let pages = [
        "/ops".to_owned(),
        "/ops/api/counts".to_owned(),
        "/ops/jobs".to_owned(),
        format!("/ops/jobs/{id}"),
        "/ops/realtime".to_owned(),
        "/ops/cache".to_owned(),
        "/ops/db".to_owned(),
        "/ops/audit".to_owned(),
    ];
    for page in &pages {
        assert_eq!(
            ada.get(page).await.status(),
            StatusCode::FORBIDDEN,
            "{page}"
        );
        assert!(app.get(page).await.status().is_redirection(), "{page}");
    }
    let actions = [
        format!("/ops/jobs/{id}/discard"),
        "/ops/jobs/bulk".to_owned(),
        "/ops/queues/default/pause".to_owned(),
        "/ops/schedules/daily-digest/run".to_owned(),
        "/ops/cache".to_owned(),
    ];
    for action in &actions {
        let response = ada
            .post_form(action, &[("action", "discard"), ("value", "x")])
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{action}");
    }
    assert_eq!(job_state(&app, id).await, "scheduled", "nothing was done");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM ops_audit")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(audited, 0);
}

#[tokio::test]
async fn an_admin_discards_retries_runs_and_cancels_jobs_and_each_action_is_audited() {
    let app = TestApp::spawn().await;
    let root = admin(&app, "root").await;
    let id = parked_job(&app, "ops.kept").await;

    let page = root
        .get(&format!("/ops/jobs/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("ops.kept") && page.contains("scheduled"),
        "{page}"
    );

    let response = root
        .post_form(&format!("/ops/jobs/{id}/discard"), &[])
        .await;
    assert_eq!(response.headers()["location"], format!("/ops/jobs/{id}"));
    assert_eq!(job_state(&app, id).await, "discarded");

    root.post_form(&format!("/ops/jobs/{id}/retry"), &[]).await;
    assert_eq!(job_state(&app, id).await, "available");

    let later = parked_job(&app, "ops.kept").await;
    root.post_form(&format!("/ops/jobs/{later}/run-now"), &[])
        .await;
    assert_eq!(job_state(&app, later).await, "available", "due now");

    root.post_form(&format!("/ops/jobs/{later}/cancel"), &[])
        .await;
    assert_eq!(job_state(&app, later).await, "cancelled");

    let response = root
        .post_form(&format!("/ops/jobs/{id}/explode"), &[])
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let log = root.get("/ops/audit").await.text().await.unwrap();
    for action in ["job.discard", "job.retry", "job.run-now", "job.cancel"] {
        assert!(log.contains(action), "{action} missing from the audit log");
    }
    let who: Vec<String> = sqlx::query_scalar("SELECT DISTINCT username FROM ops_audit")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(who, ["root"]);
}

#[tokio::test]
async fn bulk_actions_apply_to_the_filtered_jobs_only() {
    let app = TestApp::spawn().await;
    let root = admin(&app, "root").await;
    let mut ours = Vec::new();
    for _ in 0..3 {
        ours.push(parked_job(&app, "ops.bulk").await);
    }
    let other = parked_job(&app, "ops.other").await;

    let list = root
        .get("/ops/jobs?kind=ops.bulk")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(list.matches("<code>ops.bulk</code>").count(), 3);
    assert!(!list.contains("ops.other"));

    let response = root
        .post_form(
            "/ops/jobs/bulk",
            &[
                ("kind", "ops.bulk"),
                ("state", ""),
                ("queue", ""),
                ("tag", ""),
                ("id", ""),
                ("action", "discard"),
            ],
        )
        .await;
    assert!(response.status().is_redirection());
    for id in &ours {
        assert_eq!(job_state(&app, *id).await, "discarded");
    }
    assert_eq!(job_state(&app, other).await, "scheduled");

    root.post_form(
        "/ops/jobs/bulk",
        &[
            ("kind", "ops.bulk"),
            ("state", "discarded"),
            ("queue", ""),
            ("tag", "ops-test"),
            ("id", ""),
            ("action", "retry"),
        ],
    )
    .await;
    for id in &ours {
        assert_eq!(job_state(&app, *id).await, "available");
    }
    let response = root.get("/ops/jobs?id=abc").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_bulk_action_without_a_filter_needs_all_jobs_confirmed() {
    let app = TestApp::spawn().await;
    let root = admin(&app, "root").await;
    let ids = [
        parked_job(&app, "ops.one").await,
        parked_job(&app, "ops.two").await,
    ];
    let empty = [
        ("state", ""),
        ("queue", ""),
        ("kind", ""),
        ("tag", ""),
        ("id", ""),
    ];

    // The list without a filter asks for the box, with the count.
    let list = root.get("/ops/jobs").await.text().await.unwrap();
    assert!(list.contains(r#"data-testid="bulk-all""#), "{list}");
    assert!(
        list.contains("All jobs, no filter being set (2 jobs)"),
        "{list}"
    );
    let filtered = root
        .get("/ops/jobs?kind=ops.one")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !filtered.contains(r#"data-testid="bulk-all""#),
        "{filtered}"
    );
    assert!(
        filtered.contains("Every job matching this filter (1 job)"),
        "{filtered}"
    );

    // Unconfirmed: refused by the form, nothing done.
    let mut form = empty.to_vec();
    form.push(("action", "discard"));
    let response = root.post_form("/ops/jobs/bulk", &form).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = response.text().await.unwrap();
    assert!(page.contains(r#"data-testid="bulk-error""#), "{page}");
    assert!(
        page.contains("No filter is set, so discard would act on every job"),
        "{page}"
    );
    for id in ids {
        assert_eq!(job_state(&app, id).await, "scheduled");
    }

    // Confirmed: every job.
    form.push(("all", "yes"));
    let response = root.post_form("/ops/jobs/bulk", &form).await;
    assert!(response.status().is_redirection(), "{}", response.status());
    for id in ids {
        assert_eq!(job_state(&app, id).await, "discarded");
    }
}

#[tokio::test]
async fn an_unknown_state_filter_is_a_400_naming_the_states() {
    let app = TestApp::spawn().await;
    let root = admin(&app, "root").await;
    for path in ["/ops/jobs?state=bogus", "/ops/jobs?state=Completed&kind=x"] {
        let response = root.get(path).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let page = response.text().await.unwrap();
        assert!(page.contains("There is no job state called"), "{page}");
        assert!(
            page.contains(
                "The states are scheduled, available, running, completed, discarded, cancelled."
            ),
            "{page}"
        );
        // An error page of the site, with its navigation.
        assert!(page.contains(r#"data-testid="signed-in-user""#), "{page}");
    }
    let response = root
        .post_form("/ops/jobs/bulk", &[("state", "bogus"), ("action", "retry")])
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        root.get("/ops/jobs?state=completed").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn queues_pause_and_resume_and_schedules_run_now() {
    let app = TestApp::spawn().await;
    let root = admin(&app, "root").await;

    root.post_form("/ops/queues/mail/pause", &[]).await;
    let paused: Vec<String> = sqlx::query_scalar("SELECT queue FROM job_queues_paused")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(paused, ["mail"]);
    let overview = root.get("/ops").await.text().await.unwrap();
    assert!(
        overview.contains("paused") && overview.contains("daily-digest"),
        "{overview}"
    );
    root.post_form("/ops/queues/mail/resume", &[]).await;
    let paused: i64 = sqlx::query_scalar("SELECT count(*) FROM job_queues_paused")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(paused, 0);

    let response = root.post_form("/ops/schedules/daily-digest/run", &[]).await;
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let id: i64 = location.trim_start_matches("/ops/jobs/").parse().unwrap();
    let job = hearth::jobs::control::status(&app.pool, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.kind, "publishing.daily_digest");
    assert_eq!(
        root.post_form("/ops/schedules/nope/run", &[])
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let counts: Value = root.get("/ops/api/counts").await.json().await.unwrap();
    assert!(
        counts
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["queue"] == "mail" && c["jobs"] == 1)
    );
}

#[tokio::test]
async fn kind_rate_limits_are_set_and_lifted_from_ops_and_the_cli() {
    use hearth::jobs::kind_limits;
    let app = TestApp::spawn().await;
    let root = admin(&app, "root").await;
    let limits = || async { kind_limits::list(&app.pool).await.unwrap() };

    for (fields, expected) in [
        (vec![("kind", "noop"), ("rate", "0/s")], "would never run"),
        (
            vec![("kind", "noop"), ("rate", "3/fortnight")],
            "not a unit of rate",
        ),
        (
            vec![("kind", "noop"), ("rate", "ten a minute")],
            "is not a rate",
        ),
        (
            vec![("kind", "no_such_kind"), ("rate", "10/m")],
            "unknown job kind",
        ),
    ] {
        let response = root.post_form("/ops/kind-limits", &fields).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{fields:?}");
        let body = response.text().await.unwrap();
        assert!(body.contains(expected), "{fields:?}: {body}");
    }
    assert!(limits().await.is_empty(), "nothing was written");

    let response = root
        .post_form("/ops/kind-limits", &[("kind", "noop"), ("rate", "10/m")])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(limits().await[0].1.to_string(), "10/m");
    let overview = root.get("/ops").await.text().await.unwrap();
    assert!(overview.contains("10/m"), "{overview}");
    root.post_form("/ops/kind-limits", &[("kind", "noop"), ("rate", "off")])
        .await;
    assert!(limits().await.is_empty());

    let database = app.db_options.get_database().unwrap().to_owned();
    let hearth = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(args)
            .env("DATABASE_URL", crate::helpers::database_url(&database))
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    for (args, expected) in [
        (["jobs", "kind-limit", "noop", "0/s"], "would never run"),
        (
            ["jobs", "kind-limit", "noop", "5/week"],
            "not a unit of rate",
        ),
        (["jobs", "kind-limit", "nope", "5/s"], "unknown job kind"),
    ] {
        let (ok, text) = hearth(&args);
        assert!(!ok && text.contains(expected), "{args:?}: {text}");
    }
    assert!(limits().await.is_empty());
    let (ok, text) = hearth(&["jobs", "kind-limit", "sleep", "100/h"]);
    assert!(ok, "{text}");
    let (ok, text) = hearth(&["jobs", "kind-limits"]);
    assert!(
        ok && text.contains("sleep") && text.contains("100/h"),
        "{text}"
    );
    let (ok, text) = hearth(&["jobs", "kind-limit", "sleep", "off"]);
    assert!(ok, "{text}");
    assert!(limits().await.is_empty());
}

#[tokio::test]
async fn the_cache_page_shows_stats_and_clears_by_prefix_or_tag() {
    use hearth::cache::Timeout;
    let app = TestApp::spawn().await;
    let root = admin(&app, "root").await;
    let cache = &app.state.cache;
    cache.set("report:1", &1, Timeout::Never).await.unwrap();
    cache.set("report:2", &2, Timeout::Never).await.unwrap();
    cache
        .set_tagged("sidebar", &3, Timeout::Never, &["layout"])
        .await
        .unwrap();
    cache.set("keep", &4, Timeout::Never).await.unwrap();

    let page = root.get("/ops/cache").await.text().await.unwrap();
    assert!(page.contains("Shared (Postgres)"));

    // Keys are stored as <prefix>:<version>:<key>; the console clears by stored key.
    let stored: String =
        sqlx::query_scalar("SELECT key FROM cache_entries WHERE key LIKE '%report:1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let prefix = stored.trim_end_matches('1');
    root.post_form(
        "/ops/cache",
        &[("action", "clear_prefix"), ("value", prefix)],
    )
    .await;
    root.post_form(
        "/ops/cache",
        &[("action", "invalidate_tag"), ("value", "layout")],
    )
    .await;
    assert_eq!(cache.get::<i32>("report:1").await.unwrap(), None);
    assert_eq!(cache.get::<i32>("sidebar").await.unwrap(), None);
    assert_eq!(cache.get::<i32>("keep").await.unwrap(), Some(4));
    let response = root
        .post_form("/ops/cache", &[("action", "clear_prefix"), ("value", " ")])
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn the_realtime_and_database_pages_show_instances_tables_and_open_transactions() {
    let app = TestApp::spawn().await;
    let root = admin(&app, "root").await;
    let mut chat = root.socket("/ws/rooms/lobby").await;
    chat.recv_json().await.unwrap();

    let page = root.get("/ops/realtime").await.text().await.unwrap();
    assert!(page.contains(app.state.channels.instance()), "{page}");
    assert!(page.contains("chat.room.1"), "the lobby's presence: {page}");

    // An idle transaction elsewhere: the page names it.
    let mut open = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *open).await.unwrap();
    let page = root.get("/ops/db").await.text().await.unwrap();
    assert!(page.contains("idle in transaction"), "{page}");
    assert!(page.contains("<code>jobs</code>") && page.contains("<code>channel_messages</code>"));
    open.rollback().await.unwrap();
}
