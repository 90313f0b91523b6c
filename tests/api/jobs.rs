//! Background jobs against a real PostgreSQL: enqueue, run, fail, retry, cancel, schedule,
//! lose workers, shut down.

use std::time::Duration;

use hearth::jobs::{
    Enqueue, Every, FinishedState, Job, JobContext, Outcome, QueueName, Registry, Schedule, Unique,
    WorkerConfig, Workers,
    builtin::{Noop, Sleep},
    control::{self, Cancelled},
    enqueue_many, maintenance, testing,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::helpers::{self, TestApp};

async fn pool() -> (String, PgPool) {
    let (name, options) = helpers::migrated_database().await;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        "CREATE TABLE job_runs (job_id bigint, attempt int, worker text)",
    ))
    .execute(&pool)
    .await
    .unwrap();
    (name, pool)
}

/// Fails (returns an error) on its first `failures` attempts.
#[derive(Serialize, Deserialize)]
struct Flaky {
    failures: i32,
}

impl Job for Flaky {
    const KIND: &'static str = "test_flaky";
    type Deps = ();

    async fn perform(self, ctx: JobContext) -> anyhow::Result<Outcome> {
        anyhow::ensure!(
            ctx.attempt > self.failures,
            "failure number {}",
            ctx.attempt
        );
        Outcome::with_result(json!({ "succeeded_on": ctx.attempt }))
    }

    fn backoff(_attempt: i32) -> Duration {
        Duration::ZERO
    }
}

#[derive(Serialize, Deserialize)]
struct Panicky {}

impl Job for Panicky {
    const KIND: &'static str = "test_panicky";
    type Deps = ();

    async fn perform(self, _ctx: JobContext) -> anyhow::Result<Outcome> {
        panic!("the job exploded")
    }
}

/// Records each run in `job_runs`, reports progress and snoozes once if asked.
#[derive(Serialize, Deserialize)]
struct Recorded {
    snooze_first: bool,
}

impl Job for Recorded {
    const KIND: &'static str = "test_recorded";
    /// The name of the worker pool that ran it.
    type Deps = String;

    async fn perform(self, ctx: JobContext<String>) -> anyhow::Result<Outcome> {
        let worker = ctx.deps.to_string();
        let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM job_runs WHERE job_id = $1")
            .bind(ctx.id)
            .fetch_one(&ctx.pool)
            .await?;
        sqlx::query("INSERT INTO job_runs VALUES ($1, $2, $3)")
            .bind(ctx.id)
            .bind(ctx.attempt)
            .bind(worker)
            .execute(&ctx.pool)
            .await?;
        if self.snooze_first && runs == 0 {
            return Ok(Outcome::Snooze(Duration::from_secs(3600)));
        }
        ctx.progress(50, "half way").await?;
        Ok(Outcome::done())
    }
}

fn registry() -> Registry {
    registry_of("")
}

/// The test kinds, for a worker pool named `worker` (what `Recorded` writes down).
fn registry_of(worker: &str) -> Registry {
    Registry::new()
        .register::<Flaky>()
        .register::<Panicky>()
        .register_with::<Recorded>(worker.to_owned())
}

fn worker_config(queues: &str, instance: &str) -> WorkerConfig {
    WorkerConfig {
        poll_interval: Duration::from_millis(50),
        lease: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(5),
        instance: instance.into(),
        ..WorkerConfig::new(hearth::jobs::parse_queues(queues).unwrap())
    }
}

/// Polls the job's state until it is `state`, for at most 20 s.
async fn wait_for_state(pool: &PgPool, id: i64, state: &str) -> control::JobStatus {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..1000 {
        tick.tick().await;
        if let Some(status) = control::status(pool, id).await.unwrap()
            && status.state == state
        {
            return status;
        }
    }
    panic!(
        "job {id} never reached {state}: {:?}",
        control::status(pool, id).await.unwrap()
    );
}

async fn status(pool: &PgPool, id: i64) -> control::JobStatus {
    control::status(pool, id)
        .await
        .unwrap()
        .expect("job exists")
}

#[tokio::test]
async fn a_job_enqueued_in_a_rolled_back_transaction_never_exists() {
    let (_, pool) = pool().await;
    let mut tx = pool.begin().await.unwrap();
    let job = Enqueue::new(&Noop {})
        .unwrap()
        .enqueue(&mut *tx)
        .await
        .unwrap();

    tx.rollback().await.unwrap();

    assert!(control::status(&pool, job.id).await.unwrap().is_none());
    assert_eq!(
        testing::drain(&pool, &registry(), "default").await.unwrap(),
        0
    );
}

#[tokio::test]
async fn a_job_enqueued_in_a_committed_transaction_runs() {
    let (_, pool) = pool().await;
    let workers = start_workers(&pool, registry(), worker_config("default:2", "w1"));
    let mut tx = pool.begin().await.unwrap();
    let job = Enqueue::new(&Recorded {
        snooze_first: false,
    })
    .unwrap()
    .enqueue(&mut *tx)
    .await
    .unwrap();

    tx.commit().await.unwrap();

    let done = wait_for_state(&pool, job.id, "completed").await;
    assert_eq!(done.attempt, 1);
    assert_eq!(done.progress_percent, Some(50));
    assert_eq!(done.progress_message.as_deref(), Some("half way"));
    workers.shutdown().await;
}

#[tokio::test]
async fn failures_retry_with_backoff_then_succeed_with_a_result() {
    let (_, pool) = pool().await;
    let job = Enqueue::new(&Flaky { failures: 2 })
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();

    assert_eq!(
        testing::drain(&pool, &registry(), "default").await.unwrap(),
        3
    );

    let done = status(&pool, job.id).await;
    assert_eq!(done.state, "completed");
    assert_eq!(done.result, Some(json!({ "succeeded_on": 3 })));
    let errors = done.errors.as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["attempt"], 1);
    assert_eq!(errors[0]["error"], "failure number 1");
    assert_eq!(errors[1]["attempt"], 2);
    assert!(errors[0]["at"].is_string() && errors[0]["instance"].is_string());
}

#[tokio::test]
async fn default_backoff_schedules_the_retry_in_the_future() {
    #[derive(Serialize, Deserialize)]
    struct Fails {}
    impl Job for Fails {
        const KIND: &'static str = "test_fails";
        type Deps = ();
        async fn perform(self, _ctx: JobContext) -> anyhow::Result<Outcome> {
            anyhow::bail!("always")
        }
    }
    let (_, pool) = pool().await;
    let job = Enqueue::new(&Fails {})
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();

    testing::run_one(&pool, &Registry::new().register::<Fails>(), "default")
        .await
        .unwrap();

    let waiting = status(&pool, job.id).await;
    assert_eq!(waiting.state, "scheduled");
    let delay: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM run_at - now())::float8 FROM jobs WHERE id = $1",
    )
    .bind(job.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        (1.0..=2.3).contains(&delay),
        "first retry after about 2 s, got {delay}"
    );
}

#[tokio::test]
async fn a_job_out_of_attempts_is_discarded_with_its_error_history() {
    let (_, pool) = pool().await;
    let job = Enqueue::new(&Flaky { failures: 10 })
        .unwrap()
        .max_attempts(3)
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();

    testing::drain(&pool, &registry(), "default").await.unwrap();

    let dead = status(&pool, job.id).await;
    assert_eq!(dead.state, "discarded");
    assert_eq!(dead.attempt, 3);
    assert_eq!(dead.errors.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_panic_fails_the_attempt_and_is_recorded() {
    let (_, pool) = pool().await;
    let job = Enqueue::new(&Panicky {})
        .unwrap()
        .max_attempts(1)
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();

    testing::drain(&pool, &registry(), "default").await.unwrap();

    let dead = status(&pool, job.id).await;
    assert_eq!(dead.state, "discarded");
    assert_eq!(dead.errors[0]["error"], "panicked: the job exploded");
}

#[tokio::test]
async fn an_attempt_over_its_timeout_fails() {
    let (_, pool) = pool().await;
    let job = Enqueue::new(&Sleep { ms: 10_000 })
        .unwrap()
        .timeout(Duration::from_millis(50))
        .unwrap()
        .max_attempts(1)
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();

    testing::drain(&pool, &registry(), "default").await.unwrap();

    let dead = status(&pool, job.id).await;
    assert_eq!(dead.state, "discarded");
    assert_eq!(dead.errors[0]["error"], "timed out after 50ms");
}

/// Works until told its soft time limit is reached, then cleans up and says so.
#[derive(Serialize, Deserialize)]
struct Tidy {}

impl Job for Tidy {
    const KIND: &'static str = "test_tidy";
    type Deps = ();

    async fn perform(self, ctx: JobContext) -> anyhow::Result<Outcome> {
        assert!(ctx.soft_deadline().is_some());
        tokio::select! {
            // Longer than any test: only the soft limit ends this.
            () = tokio::time::sleep(Duration::from_secs(600)) => Outcome::with_result("finished"),
            () = ctx.soft_limit().cancelled() => {
                sqlx::query("INSERT INTO job_runs (job_id, attempt, worker) VALUES ($1, $2, 'cleaned up')")
                    .bind(ctx.id)
                    .bind(ctx.attempt)
                    .execute(&ctx.pool)
                    .await?;
                Outcome::with_result("stopped at the soft limit")
            }
        }
    }

    fn defaults() -> hearth::jobs::Defaults {
        hearth::jobs::Defaults {
            timeout: Some(Duration::from_secs(300)),
            soft_timeout: Some(Duration::from_millis(100)),
            ..Default::default()
        }
    }
}

/// Ignores its soft limit: the hard one ends it.
#[derive(Serialize, Deserialize)]
struct Stubborn {}

impl Job for Stubborn {
    const KIND: &'static str = "test_stubborn";
    type Deps = ();

    async fn perform(self, _ctx: JobContext) -> anyhow::Result<Outcome> {
        tokio::time::sleep(Duration::from_secs(600)).await;
        Ok(Outcome::done())
    }

    fn defaults() -> hearth::jobs::Defaults {
        hearth::jobs::Defaults {
            max_attempts: 1,
            timeout: Some(Duration::from_millis(300)),
            soft_timeout: Some(Duration::from_millis(50)),
            ..Default::default()
        }
    }
}

/// A soft limit above its hard one: refused.
#[derive(Serialize, Deserialize)]
struct Backwards {}

impl Job for Backwards {
    const KIND: &'static str = "test_backwards";
    type Deps = ();

    async fn perform(self, _ctx: JobContext) -> anyhow::Result<Outcome> {
        Ok(Outcome::done())
    }

    fn defaults() -> hearth::jobs::Defaults {
        hearth::jobs::Defaults {
            timeout: Some(Duration::from_secs(1)),
            soft_timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        }
    }
}

#[tokio::test]
async fn a_job_is_told_at_its_soft_limit_and_cleans_up_before_the_hard_one() {
    let (_, pool) = pool().await;
    let registry = registry().register::<Tidy>().register::<Stubborn>();
    let tidy = Enqueue::new(&Tidy {})
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();
    let stubborn = Enqueue::new(&Stubborn {})
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();

    testing::drain(&pool, &registry, "default").await.unwrap();

    let done = status(&pool, tidy.id).await;
    assert_eq!(done.state, "completed");
    assert_eq!(done.result, Some(json!("stopped at the soft limit")));
    let cleaned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_runs WHERE job_id = $1 AND worker = 'cleaned up'",
    )
    .bind(tidy.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(cleaned, 1);
    let dead = status(&pool, stubborn.id).await;
    assert_eq!(dead.state, "discarded");
    assert_eq!(dead.errors[0]["error"], "timed out after 300ms");
}

#[test]
fn a_soft_limit_not_below_the_hard_one_is_refused() {
    let enqueued = Enqueue::new(&Backwards {}).unwrap_err().to_string();
    assert!(
        enqueued
            .contains("soft time limit of `test_backwards` (2s) must be below its hard limit (1s)"),
        "{enqueued}"
    );
    let shortened = Enqueue::new(&Tidy {})
        .unwrap()
        .timeout(Duration::from_millis(100))
        .unwrap_err()
        .to_string();
    assert!(
        shortened.contains("not above its kind's soft limit"),
        "{shortened}"
    );
    let registered = std::panic::catch_unwind(|| Registry::new().register::<Backwards>());
    assert!(registered.is_err());
    let composed = hearth::Application::new()
        .app(hearth::App::new("tidy").job::<Backwards>())
        .plan(&helpers::test_config(), &helpers::test_sections());
    let composed = composed.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        composed.contains("must be below its hard limit"),
        "{composed}"
    );
}

#[tokio::test]
async fn unknown_kinds_and_bad_args_are_discarded_not_retried() {
    let (_, pool) = pool().await;
    let unknown = Enqueue::raw("no_such_kind", json!({}), Default::default())
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();
    let bad_args = Enqueue::raw(
        "test_flaky",
        json!({ "failures": "many" }),
        Default::default(),
    )
    .unwrap()
    .enqueue(&pool)
    .await
    .unwrap();

    assert_eq!(
        testing::drain(&pool, &registry(), "default").await.unwrap(),
        2
    );

    let unknown = status(&pool, unknown.id).await;
    assert_eq!(unknown.state, "discarded");
    assert!(
        unknown.errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("unknown job kind `no_such_kind`")
    );
    let bad_args = status(&pool, bad_args.id).await;
    assert_eq!(bad_args.state, "discarded");
    assert_eq!(bad_args.attempt, 1, "not retried");
    assert!(
        bad_args.errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("the args do not fit kind `test_flaky`")
    );
}

#[tokio::test]
async fn unique_keys_dedupe_single_and_bulk_enqueues() {
    let (_, pool) = pool().await;
    let unique = || {
        Enqueue::new(&Noop {})
            .unwrap()
            .unique(Unique::key("digest:ada"))
    };

    let first = unique().enqueue(&pool).await.unwrap();
    let second = unique().enqueue(&pool).await.unwrap();
    let bulk = enqueue_many(
        &pool,
        vec![unique(), Enqueue::new(&Noop {}).unwrap(), unique()],
    )
    .await
    .unwrap();

    assert!(!first.duplicate);
    assert_eq!(
        second,
        hearth::jobs::Enqueued {
            id: first.id,
            duplicate: true
        }
    );
    assert_eq!(bulk[0], second);
    assert!(!bulk[1].duplicate);
    assert_eq!(bulk[2], second);
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(waiting, 2);

    // Once the job completes, the key is free again (completed is not in its states)...
    testing::drain(&pool, &registry(), "default").await.unwrap();
    assert!(!unique().enqueue(&pool).await.unwrap().duplicate);
    // ...unless the key also holds for completed jobs.
    let held = || {
        Enqueue::new(&Noop {})
            .unwrap()
            .unique(Unique::key("once").also_when(&[FinishedState::Completed]))
    };
    held().enqueue(&pool).await.unwrap();
    testing::drain(&pool, &registry(), "default").await.unwrap();
    assert!(held().enqueue(&pool).await.unwrap().duplicate);
}

#[tokio::test]
async fn bulk_enqueue_inserts_thousands_in_one_call() {
    let (_, pool) = pool().await;
    // Each job's options differ, so a returned id matched to the wrong job shows.
    let jobs: Vec<Enqueue> = (0..5000)
        .map(|i: i16| {
            let job = Enqueue::new(&Noop {}).unwrap().priority(i % 7);
            if i % 3 == 0 {
                job.tags([format!("t{i}"), "bulk".to_owned()])
            } else {
                job
            }
        })
        .collect();

    let enqueued = enqueue_many(&pool, jobs).await.unwrap();

    assert_eq!(enqueued.len(), 5000);
    let rows: std::collections::HashMap<i64, (i16, Vec<String>)> =
        sqlx::query_as::<_, (i64, i16, Vec<String>)>("SELECT id, priority, tags FROM jobs")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, priority, tags)| (id, (priority, tags)))
            .collect();
    assert_eq!(rows.len(), 5000);
    for (i, job) in enqueued.iter().enumerate() {
        let i = i as i16;
        let (priority, tags) = &rows[&job.id];
        assert!(!job.duplicate);
        assert_eq!(*priority, i % 7, "job {i}");
        let expected: Vec<String> = if i % 3 == 0 {
            vec![format!("t{i}"), "bulk".to_owned()]
        } else {
            vec![]
        };
        assert_eq!(*tags, expected, "job {i}");
    }
}

#[tokio::test]
async fn run_at_and_delay_are_respected() {
    let (_, pool) = pool().await;
    let later = Enqueue::new(&Noop {})
        .unwrap()
        .delay(Duration::from_secs(3600))
        .enqueue(&pool)
        .await
        .unwrap();
    let at = Enqueue::new(&Noop {})
        .unwrap()
        .run_at(time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .enqueue(&pool)
        .await
        .unwrap();

    assert_eq!(
        testing::drain(&pool, &registry(), "default").await.unwrap(),
        0
    );
    assert_eq!(status(&pool, later.id).await.state, "scheduled");
    assert_eq!(status(&pool, at.id).await.state, "scheduled");
}

#[tokio::test]
async fn an_expired_job_is_discarded_not_run_late() {
    let (_, pool) = pool().await;
    let job = Enqueue::new(&Recorded {
        snooze_first: false,
    })
    .unwrap()
    .expires_at(time::OffsetDateTime::now_utc() - time::Duration::seconds(1))
    .enqueue(&pool)
    .await
    .unwrap();

    testing::drain(&pool, &registry(), "default").await.unwrap();

    let dead = status(&pool, job.id).await;
    assert_eq!(dead.state, "discarded");
    assert_eq!(dead.errors[0]["error"], "expired before it could start");
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM job_runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(runs, 0);
}

#[tokio::test]
async fn snooze_reschedules_without_using_an_attempt() {
    let (_, pool) = pool().await;
    let job = Enqueue::new(&Recorded { snooze_first: true })
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();

    testing::run_one(&pool, &registry(), "default")
        .await
        .unwrap();

    let snoozed = status(&pool, job.id).await;
    assert_eq!(snoozed.state, "scheduled");
    assert_eq!(snoozed.attempt, 0);
    assert!(snoozed.errors.as_array().unwrap().is_empty());
}

#[tokio::test]
async fn cancel_a_queued_job_and_a_running_one() {
    let (_, pool) = pool().await;
    let queued = Enqueue::new(&Noop {})
        .unwrap()
        .queue("idle")
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();
    assert_eq!(
        control::cancel(&pool, queued.id).await.unwrap(),
        Cancelled::Cancelled
    );
    assert_eq!(status(&pool, queued.id).await.state, "cancelled");
    assert_eq!(
        control::cancel(&pool, queued.id).await.unwrap(),
        Cancelled::AlreadyFinished
    );
    assert_eq!(
        control::cancel(&pool, 987_654).await.unwrap(),
        Cancelled::NotFound
    );

    let workers = start_workers(&pool, registry(), worker_config("default:1", "w1"));
    let running = Enqueue::new(&Sleep { ms: 60_000 })
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();
    wait_for_state(&pool, running.id, "running").await;

    assert_eq!(
        control::cancel(&pool, running.id).await.unwrap(),
        Cancelled::Requested
    );

    let cancelled = wait_for_state(&pool, running.id, "cancelled").await;
    assert_eq!(cancelled.errors[0]["error"], "cancelled while running");
    workers.shutdown().await;
}

#[tokio::test]
async fn a_paused_queue_runs_nothing_until_resumed() {
    let (_, pool) = pool().await;
    let queue = QueueName::parse("default").unwrap();
    control::pause(&pool, &queue).await.unwrap();
    let job = Enqueue::new(&Noop {})
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();

    assert_eq!(
        testing::drain(&pool, &registry(), "default").await.unwrap(),
        0
    );
    let workers = start_workers(&pool, registry(), worker_config("default:1", "w1"));
    control::resume(&pool, &queue).await.unwrap();

    wait_for_state(&pool, job.id, "completed").await;
    workers.shutdown().await;
}

#[tokio::test]
async fn discarded_jobs_can_be_retried() {
    let (_, pool) = pool().await;
    let job = Enqueue::new(&Flaky { failures: 1 })
        .unwrap()
        .max_attempts(1)
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();
    testing::drain(&pool, &registry(), "default").await.unwrap();
    assert_eq!(status(&pool, job.id).await.state, "discarded");

    assert!(control::retry(&pool, job.id).await.unwrap());
    testing::drain(&pool, &registry(), "default").await.unwrap();

    let done = status(&pool, job.id).await;
    assert_eq!((done.state.as_str(), done.attempt), ("completed", 2));
    assert!(
        !control::retry(&pool, job.id).await.unwrap(),
        "a completed job is not retried"
    );
}

#[tokio::test]
async fn pruning_deletes_old_finished_jobs_only() {
    let (_, pool) = pool().await;
    let old = Enqueue::new(&Noop {})
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();
    let recent = Enqueue::new(&Noop {})
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();
    let waiting = Enqueue::new(&Noop {})
        .unwrap()
        .delay(Duration::from_secs(3600))
        .enqueue(&pool)
        .await
        .unwrap();
    testing::drain(&pool, &registry(), "default").await.unwrap();
    sqlx::query("UPDATE jobs_done SET finished_at = now() - interval '8 days' WHERE id = $1")
        .bind(old.id)
        .execute(&pool)
        .await
        .unwrap();

    let mut conn = pool.acquire().await.unwrap();
    let pruned = maintenance::prune(&mut conn, Duration::from_secs(7 * 86_400))
        .await
        .unwrap();

    assert_eq!(pruned, 1);
    assert!(control::status(&pool, old.id).await.unwrap().is_none());
    assert!(control::status(&pool, recent.id).await.unwrap().is_some());
    assert!(control::status(&pool, waiting.id).await.unwrap().is_some());
}

#[tokio::test]
async fn completed_jobs_not_kept_are_deleted_but_failures_and_period_keys_stay() {
    let (_, pool) = pool().await;
    let noop = |unique: Option<Unique>| {
        let job = Enqueue::new(&Noop {}).unwrap();
        match unique {
            Some(unique) => job.unique(unique),
            None => job,
        }
    };
    let for_an_hour = || {
        Unique::key("digest:hourly")
            .also_when(&[FinishedState::Completed])
            .for_period(Duration::from_secs(3600))
    };
    let without_period = || Unique::key("digest:once").also_when(&[FinishedState::Completed]);
    let plain = noop(None).enqueue(&pool).await.unwrap();
    let periodic = noop(Some(for_an_hour())).enqueue(&pool).await.unwrap();
    let once = noop(Some(without_period())).enqueue(&pool).await.unwrap();
    let failing = Enqueue::new(&Flaky { failures: 5 })
        .unwrap()
        .max_attempts(1)
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();
    let config = WorkerConfig {
        keep_completed: false,
        ..worker_config("default:4", "w1")
    };

    let workers = start_workers(&pool, registry(), config);
    wait_for_state(&pool, failing.id, "discarded").await;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut drained = false;
    for _ in 0..1000 {
        tick.tick().await;
        let live: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
            .fetch_one(&pool)
            .await
            .unwrap();
        drained = live == 0 && workers.unrecorded() == 0;
        if drained {
            break;
        }
    }
    workers.shutdown().await;
    assert!(drained, "the workers never finished the four jobs");
    let mut conn = pool.acquire().await.unwrap();
    maintenance::prune(&mut conn, Duration::from_secs(7 * 86_400))
        .await
        .unwrap();

    for id in [plain.id, periodic.id, once.id] {
        assert!(
            control::status(&pool, id).await.unwrap().is_none(),
            "completed job {id} was kept"
        );
    }
    assert_eq!(
        status(&pool, failing.id)
            .await
            .errors
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert!(
        noop(Some(for_an_hour()))
            .enqueue(&pool)
            .await
            .unwrap()
            .duplicate,
        "a key held for a period was released with its job"
    );
    assert!(
        !noop(Some(without_period()))
            .enqueue(&pool)
            .await
            .unwrap()
            .duplicate,
        "a key without a period outlived its deleted job"
    );
}

#[tokio::test]
async fn two_worker_pools_drain_the_queue_without_running_an_attempt_twice() {
    let (_, pool) = pool().await;
    let jobs: Vec<Enqueue> = (0..400)
        .map(|_| {
            Enqueue::new(&Recorded {
                snooze_first: false,
            })
            .unwrap()
        })
        .collect();
    enqueue_many(&pool, jobs).await.unwrap();

    let a = start_workers(&pool, registry_of("a"), worker_config("default:4", "a"));
    let b = start_workers(&pool, registry_of("b"), worker_config("default:4", "b"));
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..1500 {
        tick.tick().await;
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs_done WHERE state = 'completed'")
                .fetch_one(&pool)
                .await
                .unwrap();
        if done == 400 {
            break;
        }
    }
    a.shutdown().await;
    b.shutdown().await;

    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs_done WHERE state = 'completed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(done, 400);
    let duplicates: i64 = sqlx::query_scalar("SELECT count(*) FROM (SELECT job_id, attempt FROM job_runs GROUP BY 1, 2 HAVING count(*) > 1) d")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(duplicates, 0);
    let by_worker: Vec<(String, i64)> =
        sqlx::query_as("SELECT worker, count(*) FROM job_runs GROUP BY 1 ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(by_worker.len(), 2, "both pools took part: {by_worker:?}");
}

#[tokio::test]
async fn a_pool_reports_nothing_unrecorded_only_once_every_outcome_is_written() {
    // More short jobs than the completer may lag behind by, so runners are held back too.
    let (_, pool) = pool().await;
    let jobs: Vec<Enqueue> = (0..3000).map(|_| Enqueue::new(&Noop {}).unwrap()).collect();
    enqueue_many(&pool, jobs).await.unwrap();
    let workers = start_workers(&pool, registry(), worker_config("default:50", "w1"));

    // Between two fetches nothing is taken and 0 is right; so wait until every job is taken
    // (none available), then for 0 on two polls in a row (a fetch that took the last ones
    // spawns them at once).
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut seen_busy = false;
    let mut zeros = 0;
    for _ in 0..6000 {
        tick.tick().await;
        let left = workers.unrecorded();
        seen_busy |= left > 0;
        let available: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'available'")
                .fetch_one(&pool)
                .await
                .unwrap();
        zeros = if available == 0 && left == 0 {
            zeros + 1
        } else {
            0
        };
        if zeros == 2 {
            break;
        }
    }
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs_done WHERE state = 'completed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    workers.shutdown().await;

    assert!(seen_busy, "the pool never reported work in progress");
    assert_eq!(
        done, 3000,
        "unrecorded() said 0 before every outcome was written"
    );
}

#[tokio::test]
async fn a_schedule_under_two_instances_enqueues_each_occurrence_once() {
    let (_, pool) = pool().await;
    let (_, second) = {
        let options = pool.connect_options().as_ref().clone();
        (
            (),
            PgPoolOptions::new()
                .max_connections(2)
                .connect_with(options)
                .await
                .unwrap(),
        )
    };
    let schedule = Schedule::new(
        "tidy",
        Every::interval(Duration::from_secs(600)).unwrap(),
        Enqueue::new(&Noop {}).unwrap(),
    )
    .unwrap();
    let schedules = vec![schedule];
    // The first sight of a schedule starts its clock; then the instances were down for an hour.
    maintenance::tick(&pool, Duration::from_secs(86_400), &schedules, false)
        .await
        .unwrap();
    sqlx::query("UPDATE job_schedules SET last_occurrence = now() - interval '1 hour 5 minutes'")
        .execute(&pool)
        .await
        .unwrap();

    let (a, b) = tokio::join!(
        maintenance::tick(&pool, Duration::from_secs(86_400), &schedules, false),
        maintenance::tick(&second, Duration::from_secs(86_400), &schedules, false),
    );
    a.unwrap();
    b.unwrap();
    maintenance::tick(&second, Duration::from_secs(86_400), &schedules, false)
        .await
        .unwrap();

    let enqueued: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'noop'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        enqueued, 1,
        "six missed occurrences run once, by one instance"
    );
    let status = hearth::jobs::schedule_store::list(&pool, &schedules)
        .await
        .unwrap();
    assert!(status[0].next.unwrap() > chrono::Utc::now());
}

#[tokio::test]
async fn graceful_shutdown_hands_back_unfinished_jobs() {
    let (_, pool) = pool().await;
    let config = WorkerConfig {
        shutdown_grace: Duration::from_millis(100),
        ..worker_config("default:1", "w1")
    };
    let workers = start_workers(&pool, registry(), config);
    // An hour: a stalled machine (a CI run once paused for over a minute) must not let the
    // job finish on its own before the shutdown it is waiting for.
    let job = Enqueue::new(&Sleep { ms: 3_600_000 })
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();
    wait_for_state(&pool, job.id, "running").await;

    workers.shutdown().await;

    let back = status(&pool, job.id).await;
    assert_eq!(back.state, "available");
    assert_eq!(back.attempt, 0, "handing back does not use up an attempt");
}

/// A shutdown that begins while a runner's fetch is in flight: the job that fetch leases starts
/// only after shutdown has looked at the running jobs. It still gets the grace period and is
/// handed back after it, and shutdown ends. (Shutdown once found no job running, stopped
/// everything else and then waited for the completer, which waited for that job: an hour.
/// `graceful_shutdown_hands_back_unfinished_jobs` hung so in a full run, when its `running`
/// was seen before the runner had read its fetch's answer.)
#[tokio::test]
async fn a_job_leased_by_a_fetch_in_flight_at_shutdown_is_handed_back() {
    let (_, pool) = pool().await;
    let blocker = hold_fetches(&pool).await;
    let job = Enqueue::new(&Sleep { ms: 3_600_000 })
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();
    let config = WorkerConfig {
        shutdown_grace: Duration::from_millis(100),
        ..worker_config("default:1", "w1")
    };
    let workers = start_workers(&pool, registry(), config);
    wait_for_held_fetch(&pool).await;

    // Shutdown begins (polled once: as far as it goes before it waits), then the fetch returns.
    let shutdown = workers.shutdown();
    tokio::pin!(shutdown);
    assert!(futures::poll!(shutdown.as_mut()).is_pending());
    blocker.commit().await.unwrap();
    // The job sleeps for an hour: only a hang takes this long.
    tokio::time::timeout(Duration::from_secs(60), shutdown)
        .await
        .expect("shutdown ends once the grace period is over");

    let back = status(&pool, job.id).await;
    assert_eq!(back.state, "available");
    assert_eq!(back.attempt, 0, "handing back does not use up an attempt");
}

/// A fetch that waits on the server past the grace period and a lease more is given up, and
/// shutdown ends; a job it leases afterwards is rescued once its lease expires.
#[tokio::test]
async fn a_fetch_stuck_at_shutdown_is_given_up_after_a_lease() {
    let (_, pool) = pool().await;
    let blocker = hold_fetches(&pool).await;
    let job = Enqueue::new(&Sleep { ms: 3_600_000 })
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();
    let config = WorkerConfig {
        shutdown_grace: Duration::from_millis(100),
        ..worker_config("default:1", "w1")
    };
    let workers = start_workers(&pool, registry(), config);
    wait_for_held_fetch(&pool).await;

    // Only a hang takes this long: the fetch waits until the blocker ends, after shutdown.
    tokio::time::timeout(Duration::from_secs(60), workers.shutdown())
        .await
        .expect("shutdown gives the fetch up");
    blocker.commit().await.unwrap();

    // What was given up may still lease the job on the server (if the fetch was past preparing
    // its statement); the job is not lost either way: it is available again, at once or once
    // the lease has expired and maintenance has rescued it.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for _ in 0..400 {
        tick.tick().await;
        maintenance::tick(&pool, Duration::from_secs(60), &[], false)
            .await
            .unwrap();
        let fetching: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                             WHERE datname = current_database() AND state = 'active'
                               AND query LIKE '%job_queues_paused%' AND pid <> pg_backend_pid())",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let now = status(&pool, job.id).await;
        if fetching || now.state != "available" {
            continue;
        }
        let rescued = now.attempt == 1
            && now.errors[0]["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("lease expired"));
        assert!(now.attempt == 0 || rescued, "{now:?}");
        return;
    }
    panic!(
        "the job is not available again: {:?}",
        status(&pool, job.id).await
    );
}

/// Holds `job_queues_paused`, which every fetch reads, until the returned transaction ends:
/// fetches wait on the server meanwhile, in flight.
async fn hold_fetches(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE job_queues_paused IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    blocker
}

/// Waits until a fetch waits for [`hold_fetches`]'s lock.
async fn wait_for_held_fetch(pool: &PgPool) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks
                             WHERE relation = 'job_queues_paused'::regclass AND NOT granted)",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting {
            return;
        }
    }
}

#[tokio::test]
async fn a_killed_worker_process_loses_its_job_to_another_after_the_lease() {
    let (name, pool) = pool().await;
    let job = Enqueue::new(&Sleep { ms: 1500 })
        .unwrap()
        .queue("slow")
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("worker")
        .env("DATABASE_URL", helpers::database_url(&name))
        .env("HEARTH_DATA_DIR", dir.path())
        .env("HEARTH_QUEUES", "slow:1")
        .env("HEARTH_JOB_LEASE", "1s")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    wait_for_state(&pool, job.id, "running").await;

    child.kill().unwrap(); // SIGKILL mid-job
    child.wait().unwrap();
    let config = WorkerConfig {
        lease: Duration::from_secs(1),
        ..worker_config("slow:1", "survivor")
    };
    let workers = start_workers(&pool, registry(), config);

    let done = wait_for_state(&pool, job.id, "completed").await;
    workers.shutdown().await;
    assert_eq!(done.attempt, 2);
    assert!(
        done.errors[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("lease expired"),
        "{:?}",
        done.errors
    );
    let completions: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs_done WHERE id = $1")
        .bind(job.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(completions, 1);
}

#[tokio::test]
async fn testing_helpers_find_enqueued_jobs() {
    let (_, pool) = pool().await;
    Enqueue::new(&Sleep { ms: 1 })
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();

    let id = testing::assert_enqueued(&pool, "sleep", json!({ "ms": 1 })).await;

    assert!(
        testing::enqueued(&pool, "sleep", json!({ "ms": 2 }))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        testing::run_one(&pool, &registry(), "default")
            .await
            .unwrap(),
        Some(id)
    );
    assert_eq!(status(&pool, id).await.state, "completed");
}

#[tokio::test]
async fn bad_enqueue_input_is_a_clear_error() {
    let too_big = Enqueue::raw(
        "noop",
        json!({ "blob": "x".repeat(300_000) }),
        Default::default(),
    )
    .unwrap_err();
    assert!(too_big.to_string().contains("more than the 262144 allowed"));
    assert!(Enqueue::new(&Noop {}).unwrap().queue("Bad Queue").is_err());
    assert!(Enqueue::new(&Noop {}).unwrap().max_attempts(0).is_err());
    assert!(
        Enqueue::new(&Noop {})
            .unwrap()
            .timeout(Duration::ZERO)
            .is_err()
    );
}

#[tokio::test]
async fn job_status_api_reports_state_progress_and_result() {
    let app = TestApp::spawn().await;
    let job = Enqueue::new(&Flaky { failures: 0 })
        .unwrap()
        .enqueue(&app.pool)
        .await
        .unwrap();
    testing::drain(&app.pool, &registry(), "default")
        .await
        .unwrap();

    assert_eq!(
        app.get(&format!("/api/jobs/{}", job.id)).await.status(),
        401
    );
    // A system job (no owner): administrators only (see leaks.rs for owners).
    app.signup("ada", "correct horse").await;
    sqlx::query("UPDATE users SET is_admin = true WHERE username = 'ada'")
        .execute(&app.pool)
        .await
        .unwrap();
    let body: serde_json::Value = app
        .get(&format!("/api/jobs/{}", job.id))
        .await
        .json()
        .await
        .unwrap();

    assert_eq!(body["state"], "completed");
    assert_eq!(body["result"]["succeeded_on"], 1);
    assert_eq!(app.get("/api/jobs/999999").await.status(), 404);
}

/// Records when it started and ended, to measure overlap.
#[derive(Serialize, Deserialize)]
struct Span {
    ms: u64,
}

impl Job for Span {
    const KIND: &'static str = "test_span";
    type Deps = ();

    async fn perform(self, ctx: JobContext) -> anyhow::Result<Outcome> {
        sqlx::query("INSERT INTO spans (job_id, started) VALUES ($1, clock_timestamp())")
            .bind(ctx.id)
            .execute(&ctx.pool)
            .await?;
        Sleep { ms: self.ms }.perform(ctx.clone()).await?;
        sqlx::query("UPDATE spans SET ended = clock_timestamp() WHERE job_id = $1")
            .bind(ctx.id)
            .execute(&ctx.pool)
            .await?;
        Ok(Outcome::done())
    }
}

#[tokio::test]
async fn a_global_limit_holds_across_worker_pools() {
    let (_, pool) = pool().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        "CREATE TABLE spans (job_id bigint, started timestamptz, ended timestamptz)",
    ))
    .execute(&pool)
    .await
    .unwrap();
    let queue = QueueName::parse("limited").unwrap();
    control::set_limits(
        &pool,
        &queue,
        control::QueueLimits {
            global: Some(2),
            rate: None,
        },
    )
    .await
    .unwrap();
    let jobs: Vec<Enqueue> = (0..8)
        .map(|_| {
            Enqueue::new(&Span { ms: 150 })
                .unwrap()
                .queue("limited")
                .unwrap()
        })
        .collect();
    let ids = enqueue_many(&pool, jobs).await.unwrap();
    let registry = || registry().register::<Span>();

    let a = start_workers(&pool, registry(), worker_config("limited:4", "a"));
    let b = start_workers(&pool, registry(), worker_config("limited:4", "b"));
    for job in &ids {
        wait_for_state(&pool, job.id, "completed").await;
    }
    a.shutdown().await;
    b.shutdown().await;

    let most_at_once: i64 = sqlx::query_scalar(
        "SELECT max(c) FROM (SELECT (SELECT count(*) FROM spans o WHERE o.started <= s.started AND o.ended > s.started) AS c FROM spans s) x",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        most_at_once <= 2,
        "at most 2 ran at once, saw {most_at_once}"
    );
    assert_eq!(most_at_once, 2, "the limit is used, not undershot");
}

#[tokio::test]
async fn a_rate_limit_caps_starts_per_period() {
    let (_, pool) = pool().await;
    let queue = QueueName::parse("metered").unwrap();
    control::set_limits(
        &pool,
        &queue,
        control::QueueLimits {
            global: None,
            rate: Some((3, Duration::from_secs(3600))),
        },
    )
    .await
    .unwrap();
    let jobs: Vec<Enqueue> = (0..5)
        .map(|_| Enqueue::new(&Noop {}).unwrap().queue("metered").unwrap())
        .collect();
    let ids = enqueue_many(&pool, jobs).await.unwrap();

    assert_eq!(
        testing::drain(&pool, &registry(), "metered").await.unwrap(),
        3
    );

    assert_eq!(status(&pool, ids[2].id).await.state, "completed");
    assert_eq!(
        status(&pool, ids[3].id).await.state,
        "available",
        "over the rate, it waits for the next window"
    );
    control::set_limits(&pool, &queue, control::QueueLimits::default())
        .await
        .unwrap();
    assert_eq!(
        testing::drain(&pool, &registry(), "metered").await.unwrap(),
        2
    );
}

/// `Workers::start` on `pool`, with the direct URL for its sessions when the suite runs through
/// PgBouncer (`HEARTH_TEST_VIA_PGBOUNCER`).
fn start_workers(pool: &PgPool, registry: Registry, config: WorkerConfig) -> Workers {
    Workers::start(pool.clone(), registry, helpers::with_session(pool, config))
}
