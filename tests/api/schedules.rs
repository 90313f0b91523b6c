//! Schedules managed at run time (issue #33): kept in the database, added, changed, paused,
//! resumed and removed from Rust, the CLI and `/ops`, fired once per occurrence across
//! instances, with a catch-up rule per schedule.

use std::time::Duration;

use hearth::jobs::{
    CatchUp, Enqueue, Every, Registry, Schedule,
    builtin::Noop,
    maintenance,
    registry::Kinds,
    schedule_store::{self, Changes, StoreError, When},
};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::helpers::{self, TestApp};

async fn pool() -> (String, PgPool) {
    let (name, options) = helpers::migrated_database().await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    (name, pool)
}

fn kinds() -> Kinds {
    Registry::new().catalog()
}

fn every(minutes: u64, kind: &str, args: serde_json::Value) -> Changes {
    Changes {
        when: Some(When::Every(Duration::from_secs(minutes * 60))),
        kind: Some(kind.into()),
        args: Some(args),
        ..Changes::default()
    }
}

async fn tick(pool: &PgPool, code: &[Schedule]) {
    assert!(
        maintenance::tick(pool, Duration::from_secs(86_400), code, false)
            .await
            .unwrap()
    );
}

async fn jobs_of(pool: &PgPool, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = $1")
        .bind(kind)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM job_schedules")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Moves a schedule's clock back, as if no instance had run for `ago`.
async fn down_for(pool: &PgPool, name: &str, ago: &str) {
    sqlx::query("UPDATE job_schedules SET last_occurrence = now() - $2::interval WHERE name = $1")
        .bind(name)
        .bind(ago)
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_schedules_are_refused_with_a_reason_and_nothing_written() {
    let (_, pool) = pool().await;
    let kinds = kinds();
    let code = [Schedule::new(
        "in-code",
        Every::interval(Duration::from_secs(60)).unwrap(),
        Enqueue::new(&Noop {}).unwrap(),
    )
    .unwrap()];
    let cron = |expr: &str| Changes {
        when: Some(When::Cron {
            expr: expr.into(),
            tz: "UTC".into(),
        }),
        kind: Some("noop".into()),
        ..Changes::default()
    };
    let cases: Vec<(&str, Changes, &str)> = vec![
        ("a", cron("61 * * * *"), "invalid cron expression"),
        ("a", cron("0 0 30 2 *"), "it never fires"),
        (
            "a",
            Changes {
                when: Some(When::Cron {
                    expr: "@daily".into(),
                    tz: "Mars/Olympus".into(),
                }),
                ..cron("@daily")
            },
            "unknown time zone",
        ),
        ("a", every(1, "no_such_kind", json!({})), "unknown job kind"),
        (
            "a",
            every(1, "sleep", json!({ "ms": "long" })),
            "do not fit kind `sleep`",
        ),
        (
            "a",
            every(1, "sleep", json!([1, 2])),
            "do not fit kind `sleep`",
        ),
        (
            "Bad Name",
            every(1, "noop", json!({})),
            "invalid schedule name",
        ),
        ("in-code", every(1, "noop", json!({})), "already exists"),
        (
            "a",
            Changes {
                when: Some(When::Every(Duration::from_millis(200))),
                ..every(1, "noop", json!({}))
            },
            "at least one second",
        ),
        (
            "a",
            Changes {
                queue: Some("No Queue".into()),
                ..every(1, "noop", json!({}))
            },
            "invalid queue name",
        ),
        (
            "a",
            Changes {
                max_attempts: Some(0),
                ..every(1, "noop", json!({}))
            },
            "max attempts",
        ),
        (
            "a",
            Changes {
                when: None,
                ..every(1, "noop", json!({}))
            },
            "exactly one of a cron expression and an interval",
        ),
    ];
    for (name, changes, expected) in cases {
        let refused = schedule_store::add(&pool, &kinds, &code, name, changes)
            .await
            .unwrap_err();
        assert!(refused.is_bad_input(), "{refused:?}");
        assert!(refused.to_string().contains(expected), "{name}: {refused}");
    }
    assert!(matches!(
        "sometimes".parse::<CatchUp>(),
        Err(e) if e.to_string().contains("not a catch-up rule")
    ));
    assert!(matches!(
        When::from_parts(Some("@daily"), None, Some("10m")),
        Err(StoreError::When)
    ));
    assert_eq!(rows(&pool).await, 0, "nothing was written");

    // A change that does not hold leaves the schedule as it was.
    schedule_store::add(&pool, &kinds, &code, "a", every(1, "noop", json!({})))
        .await
        .unwrap();
    let refused = schedule_store::change(
        &pool,
        &kinds,
        &code,
        "a",
        Changes {
            kind: Some("sleep".into()),
            ..Changes::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("missing field `ms`"),
        "{refused}"
    );
    let status = schedule_store::list(&pool, &code).await.unwrap();
    assert_eq!(status[1].kind, "noop");
    for refused in [
        schedule_store::change(&pool, &kinds, &code, "in-code", Changes::default()).await,
        schedule_store::remove(&pool, &code, "in-code").await,
    ] {
        assert!(matches!(refused, Err(StoreError::DeclaredInCode(_))));
    }
    assert!(matches!(
        schedule_store::remove(&pool, &code, "nope").await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_runtime_schedule_fires_once_per_occurrence_across_instances_and_obeys_pause() {
    let (_, pool) = pool().await;
    let second = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let kinds = kinds();
    schedule_store::add(
        &pool,
        &kinds,
        &[],
        "tidy",
        every(10, "sleep", json!({ "ms": 1 })),
    )
    .await
    .unwrap();
    tick(&pool, &[]).await;
    assert_eq!(
        jobs_of(&pool, "sleep").await,
        0,
        "it counts from when it was added"
    );

    down_for(&pool, "tidy", "15 minutes").await;
    let (a, b) = tokio::join!(
        maintenance::tick(&pool, Duration::from_secs(86_400), &[], false),
        maintenance::tick(&second, Duration::from_secs(86_400), &[], false),
    );
    a.unwrap();
    b.unwrap();
    tick(&second, &[]).await;
    assert_eq!(
        jobs_of(&pool, "sleep").await,
        1,
        "one instance fired it, once"
    );
    let status = schedule_store::list(&pool, &[]).await.unwrap();
    let fired: i64 = sqlx::query_scalar("SELECT id FROM jobs WHERE kind = 'sleep'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status[0].last_job_id, Some(fired));
    assert!(status[0].last.is_some() && status[0].next.unwrap() > chrono::Utc::now());

    // Paused: nothing fires, whatever is due.
    schedule_store::set_paused(&pool, &[], "tidy", true)
        .await
        .unwrap();
    down_for(&pool, "tidy", "15 minutes").await;
    tick(&pool, &[]).await;
    assert_eq!(jobs_of(&pool, "sleep").await, 1);
    assert_eq!(
        schedule_store::list(&pool, &[]).await.unwrap()[0].next,
        None
    );
    // Resumed: counting starts again now, what was skipped while paused is not caught up.
    schedule_store::set_paused(&pool, &[], "tidy", false)
        .await
        .unwrap();
    tick(&pool, &[]).await;
    assert_eq!(jobs_of(&pool, "sleep").await, 1);

    // Changed: another kind and args; the next occurrence enqueues the new job.
    schedule_store::change(
        &pool,
        &kinds,
        &[],
        "tidy",
        Changes {
            kind: Some("noop".into()),
            args: Some(json!({})),
            ..Changes::default()
        },
    )
    .await
    .unwrap();
    down_for(&pool, "tidy", "11 minutes").await;
    tick(&pool, &[]).await;
    assert_eq!(jobs_of(&pool, "noop").await, 1);

    schedule_store::remove(&pool, &[], "tidy").await.unwrap();
    assert_eq!(rows(&pool).await, 0);
    tick(&pool, &[]).await;
    assert_eq!(jobs_of(&pool, "noop").await, 1);
}

#[tokio::test]
async fn each_schedule_catches_up_missed_occurrences_as_its_rule_says() {
    let (_, pool) = pool().await;
    let kinds = kinds();
    for (name, rule) in [("all", "all"), ("latest", "latest"), ("none", "none")] {
        let changes = Changes {
            catch_up: Some(rule.parse().unwrap()),
            ..every(10, "sleep", json!({ "ms": 1, "rule": name }))
        };
        // `sleep` ignores the extra field; it tells the schedules' jobs apart here.
        schedule_store::add(&pool, &kinds, &[], name, changes)
            .await
            .unwrap();
    }
    // Code schedules take a rule too.
    let code = [Schedule::new(
        "code-all",
        Every::interval(Duration::from_secs(600)).unwrap(),
        Enqueue::new(&Noop {}).unwrap(),
    )
    .unwrap()
    .catch_up(CatchUp::All)];
    tick(&pool, &code).await;
    for name in ["all", "latest", "none", "code-all"] {
        // Down for an hour and five minutes: six occurrences missed.
        down_for(&pool, name, "65 minutes").await;
    }
    tick(&pool, &code).await;
    tick(&pool, &code).await;

    let count = |rule: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs WHERE args->>'rule' = $1")
                .bind(rule)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("all").await, 6);
    assert_eq!(count("latest").await, 1);
    assert_eq!(count("none").await, 0);
    assert_eq!(jobs_of(&pool, "noop").await, 6);
    let next = schedule_store::list(&pool, &code).await.unwrap();
    assert!(next.iter().all(|s| s.next.unwrap() > chrono::Utc::now()));

    // `all` is bounded: a schedule every second down for a day runs the latest 100.
    schedule_store::add(
        &pool,
        &kinds,
        &[],
        "often",
        Changes {
            when: Some(When::Every(Duration::from_secs(1))),
            catch_up: Some(CatchUp::All),
            ..every(1, "sleep", json!({ "ms": 1, "rule": "often" }))
        },
    )
    .await
    .unwrap();
    tick(&pool, &code).await;
    down_for(&pool, "often", "1 day").await;
    tick(&pool, &code).await;
    let often = count("often").await;
    assert!((100..=101).contains(&often), "{often}");
}

#[tokio::test]
async fn the_cli_manages_schedules_and_explains_bad_input() {
    let (name, pool) = pool().await;
    let hearth = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(args)
            .env("DATABASE_URL", helpers::database_url(&name))
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    for (args, expected) in [
        (
            vec![
                "schedules",
                "add",
                "x",
                "--cron",
                "61 * * * *",
                "--kind",
                "noop",
            ],
            "invalid cron expression",
        ),
        (
            vec!["schedules", "add", "x", "--every", "10m", "--kind", "nope"],
            "unknown job kind",
        ),
        (
            vec![
                "schedules",
                "add",
                "x",
                "--every",
                "10m",
                "--kind",
                "sleep",
                "--args",
                "{}",
            ],
            "missing field `ms`",
        ),
        (
            vec![
                "schedules",
                "add",
                "x",
                "--every",
                "10m",
                "--kind",
                "noop",
                "--args",
                "{",
            ],
            "the args must be a JSON value",
        ),
        (
            vec![
                "schedules",
                "add",
                "x",
                "--every",
                "10m",
                "--kind",
                "noop",
                "--catch-up",
                "some",
            ],
            "not a catch-up rule",
        ),
        (vec!["schedules", "remove", "x"], "there is no schedule"),
    ] {
        let (ok, text) = hearth(&args);
        assert!(!ok && text.contains(expected), "{args:?}: {text}");
    }
    assert_eq!(rows(&pool).await, 0, "nothing was written");

    let (ok, text) = hearth(&[
        "schedules",
        "add",
        "nightly",
        "--cron",
        "0 3 * * *",
        "--tz",
        "Europe/Paris",
        "--kind",
        "sleep",
        "--args",
        r#"{"ms": 5}"#,
        "--catch-up",
        "none",
    ]);
    assert!(ok, "{text}");
    let (ok, text) = hearth(&["schedules", "set", "nightly", "--every", "1h"]);
    assert!(ok, "{text}");
    let (ok, text) = hearth(&["schedules", "pause", "nightly"]);
    assert!(ok, "{text}");
    let (ok, text) = hearth(&["schedules", "list"]);
    assert!(
        ok && text.contains("nightly") && text.contains("every 1h") && text.contains("PAUSED"),
        "{text}"
    );
    let (ok, text) = hearth(&["schedules", "run", "nightly"]);
    assert!(ok && text.contains("enqueued job"), "{text}");
    assert_eq!(jobs_of(&pool, "sleep").await, 1);
    let (ok, text) = hearth(&["schedules", "remove", "nightly"]);
    assert!(ok, "{text}");
    assert_eq!(rows(&pool).await, 0);
}

#[tokio::test]
async fn ops_pages_add_change_pause_and_remove_schedules_and_show_the_real_last_run() {
    let app = TestApp::spawn().await;
    let root = app.user("root").await;
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(root.id)
        .execute(&app.pool)
        .await
        .unwrap();

    // The code schedule's row exists once a tick saw it; that first sight is not a run.
    tick(&app.pool, &app.state.composed.schedules).await;
    let page = root.get("/ops/schedules").await.text().await.unwrap();
    assert!(page.contains("daily-digest"), "{page}");
    let row = page.split("data-schedule=\"daily-digest\"").nth(1).unwrap();
    assert!(row.contains("never"), "{row}");
    let response = root.post_form("/ops/schedules/daily-digest/run", &[]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let page = root.get("/ops/schedules").await.text().await.unwrap();
    let row = page.split("data-schedule=\"daily-digest\"").nth(1).unwrap();
    let row = &row[..row.find("</tr>").unwrap()];
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(row.contains(&today) && row.contains("job "), "{row}");

    for (fields, expected) in [
        (
            vec![("name", "x"), ("cron", "61 * * * *"), ("kind", "noop")],
            "invalid cron expression",
        ),
        (
            vec![("name", "x"), ("every", "10m"), ("kind", "nope")],
            "unknown job kind",
        ),
        (
            vec![
                ("name", "x"),
                ("every", "10m"),
                ("kind", "sleep"),
                ("args", "{}"),
            ],
            "missing field",
        ),
        (
            vec![
                ("name", "x"),
                ("every", "10m"),
                ("kind", "noop"),
                ("catch_up", "some"),
            ],
            "not a catch-up rule",
        ),
        (
            vec![
                ("name", "x"),
                ("every", "10m"),
                ("kind", "noop"),
                ("priority", "high"),
            ],
            "whole number",
        ),
        (
            vec![("name", "daily-digest"), ("every", "10m"), ("kind", "noop")],
            "already exists",
        ),
    ] {
        let response = root.post_form("/ops/schedules", &fields).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{fields:?}");
        let body = response.text().await.unwrap();
        assert!(body.contains(expected), "{fields:?}: {body}");
    }
    let runtime: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_schedules WHERE kind IS NOT NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(runtime, 0, "nothing was written");

    let response = root
        .post_form(
            "/ops/schedules",
            &[
                ("name", "tidy"),
                ("every", "10m"),
                ("kind", "sleep"),
                ("args", r#"{"ms": 1}"#),
                ("catch_up", "all"),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let page = root.get("/ops/schedules/tidy").await.text().await.unwrap();
    assert!(
        page.contains("every 10m") && page.contains("change-schedule"),
        "{page}"
    );
    let response = root
        .post_form(
            "/ops/schedules/tidy",
            &[
                ("every", "1h"),
                ("kind", "sleep"),
                ("args", r#"{"ms": 2}"#),
                ("catch_up", "none"),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let response = root
        .post_form("/ops/schedules/tidy", &[("cron", "nope")])
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let tidy = schedule_store::list(&app.pool, &[]).await.unwrap();
    assert_eq!(
        (tidy[0].every.as_str(), tidy[0].args.as_str()),
        ("every 1h", r#"{"ms":2}"#)
    );
    assert_eq!(tidy[0].catch_up, CatchUp::None);

    root.post_form("/ops/schedules/tidy/pause", &[]).await;
    assert!(schedule_store::list(&app.pool, &[]).await.unwrap()[0].paused);
    root.post_form("/ops/schedules/tidy/resume", &[]).await;
    assert!(!schedule_store::list(&app.pool, &[]).await.unwrap()[0].paused);
    let response = root.post_form("/ops/schedules/tidy/explode", &[]).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = root
        .post_form("/ops/schedules/daily-digest/remove", &[])
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    root.post_form("/ops/schedules/tidy/remove", &[]).await;
    assert_eq!(
        root.get("/ops/schedules/tidy").await.status(),
        StatusCode::NOT_FOUND
    );
}
