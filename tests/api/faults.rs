//! Faults: what a serving instance does when its database goes away and comes back.

use std::time::Duration;

use hearth::{
    db::embedded::{EmbeddedOptions, EmbeddedPostgres},
    jobs::{Enqueue, Job, JobContext, Outcome, Registry, WorkerConfig, Workers, control},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use hearth::web::testing::WsClient;

use crate::helpers::TestApp;

/// A job that takes a moment and records each run, so that a restart lands in the middle of
/// some of them.
#[derive(Serialize, Deserialize)]
struct Slow {
    n: i32,
}

impl Job for Slow {
    const KIND: &'static str = "test_fault_slow";
    type Deps = ();

    async fn perform(self, ctx: JobContext) -> anyhow::Result<Outcome> {
        tokio::time::sleep(Duration::from_millis(30)).await;
        sqlx::query("INSERT INTO fault_runs (job_id, n) VALUES ($1, $2)")
            .bind(ctx.id)
            .bind(self.n)
            .execute(&ctx.pool)
            .await?;
        Ok(Outcome::done())
    }
}

/// Polls `check` every 50 ms until it holds, for at most `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_database_restart_under_load_answers_503_then_heals_and_loses_no_job() {
    // Arrange: a cluster of this test's own, an instance with workers on it, jobs running.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let options = EmbeddedOptions {
        durable: false,
        ..Default::default()
    };
    let start = move || EmbeddedPostgres::start(&path, &options).expect("embedded PostgreSQL");
    let pg = tokio::task::spawn_blocking(start.clone()).await.unwrap();
    let setup = sqlx::PgPool::connect_with(pg.connect_options())
        .await
        .unwrap();
    hearth::db::migrations::run(&setup, &crate::helpers::migration_sets())
        .await
        .unwrap();
    sqlx::query("CREATE TABLE fault_runs (job_id bigint NOT NULL, n int NOT NULL)")
        .execute(&setup)
        .await
        .unwrap();
    setup.close().await;
    let app = TestApp::builder()
        .database(pg.connect_options())
        .config(|c| c.db.db_acquire_timeout = Duration::from_secs(1))
        .spawn()
        .await;
    let workers = Workers::start(
        app.pool.clone(),
        Registry::new().register::<Slow>(),
        WorkerConfig {
            poll_interval: Duration::from_millis(100),
            lease: Duration::from_secs(2),
            ..WorkerConfig::new(hearth::jobs::parse_queues("default:4").unwrap())
        },
    );
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let mut ids = Vec::new();
    for n in 0..150 {
        let job = Enqueue::new(&Slow { n })
            .unwrap()
            .enqueue(&app.pool)
            .await
            .unwrap();
        ids.push(job.id);
    }
    let pool = app.pool.clone();
    eventually(Duration::from_secs(20), "jobs start running", || async {
        let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM fault_runs")
            .fetch_one(&pool)
            .await
            .unwrap();
        runs >= 10
    })
    .await;

    // A chat client that has seen one message.
    let mut early = ada.socket("/ws/rooms/lobby").await;
    early.recv_type("hello").await.unwrap();
    let mut sender = bob.socket("/ws/rooms/lobby").await;
    sender.recv_type("hello").await.unwrap();
    say(&mut sender, "before the outage").await;
    let seen = early.recv_type("chat.message").await.unwrap()["message"]["id"]
        .as_i64()
        .unwrap();

    // Act: the database stops while jobs run and pages are served, and the chat client loses
    // its connection meanwhile.
    tokio::task::spawn_blocking(move || pg.stop().unwrap())
        .await
        .unwrap();
    drop(early);

    // While it is down, a page that needs it answers 503 with a clear message, promptly.
    let asked = Instant::now();
    let response = ada.get("/docs").await;
    assert_eq!(response.status(), 503);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the 503 took {:?}",
        asked.elapsed()
    );
    let body = response.text().await.unwrap();
    assert!(body.contains("database is unavailable"), "{body}");
    assert_eq!(app.get("/readyz").await.status(), 503);
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "the process itself is alive"
    );

    let pg = tokio::task::spawn_blocking(start).await.unwrap();

    // Assert: everything heals without a restart of the instance...
    eventually(
        Duration::from_secs(30),
        "pages are served again",
        || async { ada.get("/docs").await.status() == 200 },
    )
    .await;
    // ...every job completes, exactly one record each, none lost...
    eventually(Duration::from_secs(60), "every job completes", || async {
        let mut done = 0;
        for id in &ids {
            if let Some(status) = control::status(&app.pool, *id).await.unwrap() {
                done += usize::from(status.state == "completed");
            }
        }
        done == ids.len()
    })
    .await;
    let (ran, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT job_id) FROM fault_runs")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(distinct, ids.len() as i64, "every job ran");
    // At least once: a job whose work committed just before the database went away, but whose
    // completion did not, runs again. That is the documented contract; it stays rare.
    assert!(ran - distinct <= 4, "{ran} runs for {distinct} jobs");

    // ...the chat client reconnects and gets exactly what was said while it was away...
    let mut sender = bob.socket("/ws/rooms/lobby").await;
    sender.recv_type("hello").await.unwrap();
    for body in ["missed 1", "missed 2"] {
        say(&mut sender, body).await;
    }
    let mut back = ada.socket(&format!("/ws/rooms/lobby?last_id={seen}")).await;
    let hello = back.recv_type("hello").await.unwrap();
    let missed: Vec<&str> = hello["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["id"].as_i64().unwrap() > seen)
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(missed, ["missed 1", "missed 2"]);

    // ...and the channel layer's listener is back: a message sent now reaches it live.
    say(&mut sender, "after the restart").await;
    let frame = back.recv_type("chat.message").await.unwrap();
    assert_eq!(frame["message"]["body"], "after the restart");

    workers.shutdown().await;
    drop(app);
    tokio::task::spawn_blocking(move || pg.stop().unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_exhausted_request_pool_answers_503_while_jobs_and_messages_keep_flowing() {
    use hearth::documents::CompactDocument;
    use sqlx::Connection;

    let app = TestApp::builder()
        .config(|c| {
            c.db.db_max_connections = 2;
            c.db.db_acquire_timeout = Duration::from_millis(500);
        })
        .with_workers()
        .spawn()
        .await;
    let ada = app.user("ada").await;
    let mut socket = ada.socket("/ws/rooms/lobby").await;
    let hello = socket.recv_json().await.unwrap();
    assert_eq!(hello["type"], "hello");
    let mut direct = sqlx::PgConnection::connect_with(&app.db_options)
        .await
        .unwrap();

    // Act: long queries hold every connection of the requests' pool.
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let pool = app.pool.clone();
            tokio::spawn(async move {
                let _ = sqlx::query("SELECT pg_sleep(20)").execute(&pool).await;
            })
        })
        .collect();
    let pool = app.pool.clone();
    eventually(Duration::from_secs(5), "the pool is exhausted", || async {
        pool.size() == 2 && pool.num_idle() == 0
    })
    .await;

    // Assert: a request fails with 503 within the acquire timeout, not a hang...
    let asked = Instant::now();
    let response = ada.get("/docs").await;
    assert_eq!(response.status(), 503);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("database is unavailable")
    );
    // ...a job enqueued meanwhile runs on the workers' own connections...
    let job = Enqueue::new(&CompactDocument { document_id: 0 })
        .unwrap()
        .enqueue(&mut direct)
        .await
        .unwrap();
    let mut done = false;
    for _ in 0..200 {
        let state: String =
            sqlx::query_scalar("SELECT state::text FROM job_statuses WHERE id = $1")
                .bind(job.id)
                .fetch_one(&mut direct)
                .await
                .unwrap();
        if state == "completed" {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done, "the job did not complete while requests were starved");
    // ...and the channel layer still delivers (its listener and publisher have their own).
    let room: i64 = sqlx::query_scalar("SELECT id FROM chat_rooms WHERE slug = 'lobby'")
        .fetch_one(&mut direct)
        .await
        .unwrap();
    let group = hearth::channels::GroupName::parse(format!("chat.room.{room}")).unwrap();
    app.state
        .channels
        .group_send(
            &group,
            &json!({"type": "chat.typing", "user_id": 0, "username": "ghost"}),
        )
        .await
        .unwrap();
    let frame = socket.recv_type("chat.typing").await.unwrap();
    assert_eq!(frame["username"], "ghost");

    // Once the long queries end, requests are served again.
    sqlx::query(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND query = 'SELECT pg_sleep(20)'",
    )
    .execute(&mut direct)
    .await
    .unwrap();
    for holder in holders {
        holder.await.unwrap();
    }
    assert_eq!(ada.get("/docs").await.status(), 200);
}

/// Sends a chat message and waits for the sender's own copy, so that it is stored before the
/// next step.
async fn say(socket: &mut WsClient, body: &str) {
    socket
        .send_json(&json!({"type": "send", "body": body}))
        .await
        .unwrap();
    let echo = socket.recv_type("chat.message").await.unwrap();
    assert_eq!(echo["message"]["body"], body);
}
