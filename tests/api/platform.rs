//! The application API: composing apps, checking their declarations against each other, and
//! migrations per app (a database from before the split adopts them; apps come and go).

use std::time::Duration;

use axum::routing::get;
use hearth::{
    App, Application, Routes,
    application::{ComposeError, cli},
    config::Config,
    db::migrations::{self, MigrateError},
    jobs::{Enqueue, Every, Job, JobContext, Outcome, Schedule},
    web::assets::{Dir, include_dir},
};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::helpers::{application, empty_database, migration_sets, test_config, test_sections};

async fn pool_on_empty_database() -> PgPool {
    let (_, options) = empty_database().await;
    PgPool::connect_with(options).await.unwrap()
}

fn compose_error(application: &Application) -> ComposeError {
    let Err(error) = application.plan(&test_config(), &test_sections()) else {
        panic!("the composition is refused")
    };
    error
        .downcast::<ComposeError>()
        .expect("a composition error")
}

#[derive(Serialize, Deserialize)]
struct Ping {}

impl Job for Ping {
    const KIND: &'static str = "test.ping";
    type Deps = ();

    async fn perform(self, _ctx: JobContext) -> anyhow::Result<Outcome> {
        Ok(Outcome::done())
    }
}

#[test]
fn two_apps_with_one_job_kind_are_refused_naming_both() {
    let app = Application::new()
        .app(App::new("first").job::<Ping>())
        .app(App::new("second").job::<Ping>());

    assert_eq!(
        compose_error(&app),
        ComposeError::DuplicateKind {
            kind: "test.ping",
            first: "first",
            second: "second"
        }
    );
}

#[test]
fn two_apps_with_one_name_or_a_bad_name_are_refused() {
    let twice = Application::new()
        .app(App::new("shop"))
        .app(App::new("shop"));
    assert_eq!(compose_error(&twice), ComposeError::DuplicateApp("shop"));

    let platform = Application::new().app(App::new("platform"));
    assert_eq!(
        compose_error(&platform),
        ComposeError::DuplicateApp("platform")
    );

    let bad = Application::new().app(App::new("My Shop"));
    assert_eq!(compose_error(&bad), ComposeError::BadName("My Shop"));
}

fn every_hour(name: &str) -> anyhow::Result<Schedule> {
    Ok(Schedule::new(
        name,
        Every::interval(Duration::from_secs(3600))?,
        Enqueue::new(&Ping {})?,
    )?)
}

#[test]
fn schedules_are_checked_against_the_composed_registry() {
    let unknown =
        Application::new().app(App::new("clock").schedules(|_| Ok(vec![every_hour("tick")?])));
    assert_eq!(
        compose_error(&unknown),
        ComposeError::UnknownKind {
            name: "tick".into(),
            kind: "test.ping".into(),
            owner: "the app \"clock\"".into()
        }
    );

    let twice = Application::new()
        .app(
            App::new("clock")
                .job::<Ping>()
                .schedules(|_| Ok(vec![every_hour("tick")?])),
        )
        .app(App::new("alarm").schedules(|_| Ok(vec![every_hour("tick")?])));
    assert_eq!(
        compose_error(&twice),
        ComposeError::DuplicateSchedule {
            name: "tick".into(),
            first: "the app \"clock\"".into(),
            second: "the app \"alarm\"".into()
        }
    );

    // HEARTH_SCHEDULES may name any kind of the composition, a user's app's included.
    let mut config = test_config();
    config.jobs.schedules = Some("nightly|every:1h||test.ping|{}".into());
    let known = Application::new().app(App::new("clock").job::<Ping>());
    let plan = known.plan(&config, &test_sections()).unwrap();
    assert_eq!(plan.schedules[0].name, "nightly");
}

#[tokio::test]
async fn two_apps_routing_one_path_are_refused_naming_both() {
    let app = crate::helpers::TestApp::spawn().await;
    let clash = application().app(
        App::new("shop").routes(|_| Ok(Routes::new().route("/posts", get(|| async { "mine" })))),
    );

    let Err(error) = clash.router(&app.state) else {
        panic!("the clash is refused")
    };

    assert_eq!(
        error.downcast::<ComposeError>().unwrap(),
        ComposeError::DuplicateRoute {
            path: "/posts".into(),
            first: "publishing",
            second: "shop"
        }
    );
    let platform = Application::new().app(
        App::new("probe").routes(|_| Ok(Routes::new().route("/healthz", get(|| async { "" })))),
    );
    assert!(platform.router(&app.state).is_err());
}

#[test]
fn the_command_line_has_every_bundled_command_and_setting() {
    let command = cli::command(&application());
    command.clone().debug_assert();
    let plain = <cli::Cli as clap::CommandFactory>::command();
    assert_eq!(
        command.get_about().map(ToString::to_string),
        plain.get_about().map(ToString::to_string),
        "the apps' settings sections leave the program's description alone"
    );
    for line in [
        "hearth worker",
        "hearth jobs list",
        "hearth --smtp-url smtp://mail:25 --digest-hour 6 serve",
        "hearth serve --upload-max-bytes 1000 --login-limit-per-account 3",
        "hearth migrate --status",
    ] {
        let parsed = command.clone().try_get_matches_from(line.split(' '));
        assert!(parsed.is_ok(), "{line}: {}", parsed.unwrap_err());
    }
    // The benchmark is hearth-bench's (bench/): the product has neither its commands nor flags.
    for line in [
        "hearth bench jobs",
        "hearth --bench-upstream-url http://x serve",
    ] {
        let parsed = command.clone().try_get_matches_from(line.split(' '));
        assert!(parsed.is_err(), "{line} is not the product's");
    }
    let variables: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    assert!(!variables.is_empty() && !variables.iter().any(|v| v.starts_with("HEARTH_BENCH")));
    let matches = command
        .try_get_matches_from(["hearth", "--digest-hour", "6", "--upload-max-bytes", "1000"])
        .unwrap();
    let sections = application().sections(&matches).unwrap();
    let digest = sections
        .get::<hearth::publishing::PublishingSettings>()
        .unwrap();
    assert_eq!(digest.digest_hour, 6);
    let uploads = sections.get::<hearth::uploads::UploadSettings>().unwrap();
    assert_eq!(uploads.upload_max_bytes, 1000);
    assert!(Config::from_env().is_ok());
}

/// The migrations a database at the last commit before the split had, applied the way that
/// commit applied them: sqlx's migrator over one numbered folder (version 18 was one file).
async fn migrate_as_before_the_split(pool: &PgPool) {
    let legacy = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    // Versions 9 and 18 were one file each; their parts are now in two apps' folders.
    let mut joined: std::collections::BTreeMap<String, String> = Default::default();
    for set in migration_sets() {
        let folder = root.join(set.app);
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            // Files added since the split (version 21 on) are the new runner's to apply.
            if name[..4].parse::<u32>().unwrap() > 20 {
                continue;
            }
            let sql = std::fs::read_to_string(&path).unwrap();
            if name.starts_with("0009_") || name.starts_with("0018_") {
                let part = joined.entry(name[..4].to_owned()).or_default();
                part.push_str(&sql);
                part.push('\n');
            } else {
                std::fs::write(legacy.path().join(&name), sql).unwrap();
            }
        }
    }
    for (version, sql) in joined {
        std::fs::write(legacy.path().join(format!("{version}_joined.sql")), sql).unwrap();
    }
    let migrator = sqlx::migrate::Migrator::new(legacy.path()).await.unwrap();
    // Version 19 was never used; version 8 (the benchmark's table) is hearth-bench's now.
    assert_eq!(migrator.iter().count(), 18, "versions 1 to 20 but 8 and 19");
    migrator.run(pool).await.unwrap();
}

#[tokio::test]
async fn a_database_migrated_before_the_split_adopts_the_apps_migrations_and_keeps_its_data() {
    let pool = pool_on_empty_database().await;
    migrate_as_before_the_split(&pool).await;
    sqlx::raw_sql(
        "INSERT INTO users (username, password_hash) VALUES ('ada', 'x');
         INSERT INTO posts (author_id, slug, title, body, body_html)
              SELECT id, 'kept', 'Kept', 'body', '<p>body</p>' FROM users;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let sets = migration_sets();

    migrations::run(&pool, &sets).await.unwrap();
    migrations::run(&pool, &sets).await.unwrap();

    let status = migrations::status(&pool, &sets).await.unwrap();
    assert!(
        status.iter().all(|m| m.applied_at.is_some() && !m.orphan),
        "{status:#?}"
    );
    let unrecorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM hearth_migrations WHERE checksum IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(unrecorded, 0, "every adopted file's checksum is recorded");
    let title: String = sqlx::query_scalar("SELECT title FROM posts WHERE slug = 'kept'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(title, "Kept");
}

#[tokio::test]
async fn apps_can_join_and_leave_a_database_and_a_changed_file_is_refused() {
    let pool = pool_on_empty_database().await;
    let all = migration_sets();
    let without_chat: Vec<_> = all.iter().copied().filter(|s| s.app != "chat").collect();

    migrations::run(&pool, &without_chat).await.unwrap();
    let chat_tables: Option<String> = sqlx::query_scalar("SELECT to_regclass('chat_rooms')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(chat_tables, None);

    // The chat app joins: its files run, nobody else's again.
    migrations::run(&pool, &all).await.unwrap();
    assert_eq!(migrations::pending(&pool, &all).await.unwrap(), 0);

    // It leaves: migrate still works, and the status names what no app ships any more.
    migrations::run(&pool, &without_chat).await.unwrap();
    let status = migrations::status(&pool, &without_chat).await.unwrap();
    let orphans: Vec<_> = status.iter().filter(|m| m.orphan).map(|m| &m.app).collect();
    assert_eq!(orphans, ["chat"]);

    // A file changed after it was applied stops the run, naming it.
    sqlx::query(
        "UPDATE hearth_migrations SET checksum = '\\x00' WHERE app = 'mail' AND version = 10",
    )
    .execute(&pool)
    .await
    .unwrap();
    let error = migrations::run(&pool, &all).await.unwrap_err();
    assert!(
        matches!(&error, MigrateError::Changed { app, version: 10, .. } if app == "mail"),
        "{error}"
    );
}

static SCRIPTS: Dir = include_dir!("$CARGO_MANIFEST_DIR/static/js");

#[tokio::test]
async fn static_files_are_compiled_into_the_binary_and_one_path_has_one_owner() {
    assert_eq!(Config::from_env().unwrap().http.static_dir, None);
    let app = crate::helpers::TestApp::spawn().await;

    let css = app.get("/static/app.css").await;

    assert_eq!(css.status(), 200);
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    let expected: &[u8] = include_bytes!("../../static/app.css");
    assert_eq!(&css.bytes().await.unwrap()[..], expected);
    assert_eq!(app.get("/static/nothing.css").await.status(), 404);
    let twice = Application::new()
        .assets(&SCRIPTS)
        .app(App::new("chat").assets(&SCRIPTS));
    assert!(matches!(
        compose_error(&twice),
        ComposeError::DuplicateAsset(e) if e.second == "the app \"chat\""
    ));
}

/// `hearth::application::testing` stops before touching a database when a test changes a
/// settings section that no app of its application declares, and names the section.
#[tokio::test]
async fn a_test_server_refuses_settings_no_app_declares() {
    #[derive(Clone)]
    struct Undeclared;
    let refused = hearth::application::testing::TestServer::builder(Application::new())
        .settings(|_: &mut Undeclared| {})
        .start()
        .await
        .err()
        .expect("an undeclared section is refused");
    assert!(refused.to_string().contains("Undeclared"), "{refused}");
}
