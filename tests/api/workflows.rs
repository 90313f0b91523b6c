//! Workflows (issue #33) against a real PostgreSQL: chains of typed steps, groups, chords,
//! nesting, failure, cancellation, bad input, and waiting on a job or a workflow (in Rust and
//! over HTTP), woken by the channel layer; a chord over two worker pools, and over a worker
//! process killed mid-chord.

use std::{collections::HashMap, time::Duration};

use hearth::{
    channels::{ChannelConfig, ChannelLayer},
    jobs::{
        Chain, Chord, Enqueue, Finished, Group, JobContext, JobHandle, Member, Registry, Step,
        Task, WorkerConfig, Workers, Workflow, WorkflowError, WorkflowHandle,
        builtin::Sleep,
        control, testing,
        workflow::{
            self, MAX_GROUP, WorkflowCancelled,
            builtin::{Gather, SleepStep},
        },
    },
};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::time::Instant;

use crate::helpers::{self, TestApp};

async fn pool() -> PgPool {
    let (_, options) = helpers::migrated_database().await;
    let pool = PgPoolOptions::new()
        .max_connections(12)
        .connect_with(options)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        "CREATE TABLE step_runs (job_id bigint, kind text, worker text, input jsonb, at timestamptz DEFAULT clock_timestamp())",
    ))
    .execute(&pool)
    .await
    .unwrap();
    pool
}

/// A channel layer on the test's database, ready to deliver.
async fn channels(pool: &PgPool) -> ChannelLayer {
    // Its LISTEN and publisher straight to the database when the suite runs through PgBouncer.
    let config = ChannelConfig {
        session: helpers::session_options(pool),
        ..ChannelConfig::new("wf-test")
    };
    let layer = ChannelLayer::start(pool.clone(), config);
    tokio::time::timeout(Duration::from_secs(10), layer.ready())
        .await
        .expect("the channel layer is ready");
    layer
}

async fn log_run(ctx: &JobContext, kind: &str, input: &impl Serialize) -> anyhow::Result<()> {
    // The worker pool that leased the job (its instance name).
    let worker: Option<String> = sqlx::query_scalar("SELECT locked_by FROM jobs WHERE id = $1")
        .bind(ctx.id)
        .fetch_optional(&ctx.pool)
        .await?
        .flatten();
    sqlx::query("INSERT INTO step_runs (job_id, kind, worker, input) VALUES ($1, $2, $3, $4)")
        .bind(ctx.id)
        .bind(kind)
        .bind(worker)
        .bind(serde_json::to_value(input)?)
        .execute(&ctx.pool)
        .await?;
    Ok(())
}

/// First step of a chain: "fetches" a page (no input).
#[derive(Serialize, Deserialize)]
struct Fetch {
    url: String,
}

impl Step for Fetch {
    const KIND: &'static str = "wf_fetch";
    type Input = ();
    type Output = String;

    async fn run(self, _: (), _ctx: JobContext) -> anyhow::Result<String> {
        Ok(format!(
            "<a href=/1>x</a><a href=/2>y</a> from {}",
            self.url
        ))
    }
}

/// Second step: counts the links of the page it is given.
#[derive(Serialize, Deserialize)]
struct Parse {}

impl Step for Parse {
    const KIND: &'static str = "wf_parse";
    type Input = String;
    type Output = Vec<String>;

    async fn run(self, html: String, ctx: JobContext) -> anyhow::Result<Vec<String>> {
        log_run(&ctx, Self::KIND, &html).await?;
        Ok(html
            .split("href=")
            .skip(1)
            .map(|s| s.split('>').next().unwrap_or_default().to_owned())
            .collect())
    }
}

/// Third step: "stores" the links in a table.
#[derive(Serialize, Deserialize)]
struct Store {
    table: String,
}

impl Step for Store {
    const KIND: &'static str = "wf_store";
    type Input = Vec<String>;
    type Output = String;

    async fn run(self, links: Vec<String>, ctx: JobContext) -> anyhow::Result<String> {
        log_run(&ctx, Self::KIND, &links).await?;
        Ok(format!("{} links into {}", links.len(), self.table))
    }
}

/// Adds `n` to its input.
#[derive(Serialize, Deserialize, Clone)]
struct Add {
    n: i64,
}

impl Step for Add {
    const KIND: &'static str = "wf_add";
    type Input = i64;
    type Output = i64;

    async fn run(self, input: i64, ctx: JobContext) -> anyhow::Result<i64> {
        log_run(&ctx, Self::KIND, &input).await?;
        Ok(input + self.n)
    }
}

/// Sums its input.
#[derive(Serialize, Deserialize)]
struct Sum {}

impl Step for Sum {
    const KIND: &'static str = "wf_sum";
    type Input = Vec<i64>;
    type Output = i64;

    async fn run(self, input: Vec<i64>, ctx: JobContext) -> anyhow::Result<i64> {
        log_run(&ctx, Self::KIND, &input).await?;
        Ok(input.iter().sum())
    }
}

/// Always fails.
#[derive(Serialize, Deserialize)]
struct Boom {}

impl Step for Boom {
    const KIND: &'static str = "wf_boom";
    type Input = i64;
    type Output = i64;

    async fn run(self, _: i64, ctx: JobContext) -> anyhow::Result<i64> {
        log_run(&ctx, Self::KIND, &Value::Null).await?;
        anyhow::bail!("the boom step always fails")
    }

    fn defaults() -> hearth::jobs::Defaults {
        hearth::jobs::Defaults {
            max_attempts: 1,
            ..Default::default()
        }
    }
}

/// A chord member: names itself and its square, with which worker ran it.
#[derive(Serialize, Deserialize, Clone)]
struct Square {
    n: i64,
}

impl Step for Square {
    const KIND: &'static str = "wf_square";
    type Input = ();
    type Output = String;

    async fn run(self, _: (), ctx: JobContext) -> anyhow::Result<String> {
        log_run(&ctx, Self::KIND, &self.n).await?;
        Ok(format!("member-{:04}-{}", self.n, self.n * self.n))
    }
}

/// A chord callback: records every input it got.
#[derive(Serialize, Deserialize)]
struct Collect {}

impl Step for Collect {
    const KIND: &'static str = "wf_collect";
    type Input = Vec<String>;
    type Output = usize;

    async fn run(self, input: Vec<String>, ctx: JobContext) -> anyhow::Result<usize> {
        log_run(&ctx, Self::KIND, &input).await?;
        Ok(input.len())
    }
}

/// A chord callback that gets failures too.
#[derive(Serialize, Deserialize)]
struct Tally {}

impl Step for Tally {
    const KIND: &'static str = "wf_tally";
    type Input = Vec<Result<i64, String>>;
    type Output = (usize, usize);

    async fn run(
        self,
        input: Vec<Result<i64, String>>,
        ctx: JobContext,
    ) -> anyhow::Result<(usize, usize)> {
        log_run(&ctx, Self::KIND, &input).await?;
        let ok = input.iter().filter(|r| r.is_ok()).count();
        Ok((ok, input.len() - ok))
    }
}

/// Sleeps (cancellable), for cancellation tests.
#[derive(Serialize, Deserialize)]
struct Nap {
    ms: u64,
}

impl Step for Nap {
    const KIND: &'static str = "wf_nap";
    type Input = ();
    type Output = i64;

    async fn run(self, _: (), ctx: JobContext) -> anyhow::Result<i64> {
        log_run(&ctx, Self::KIND, &self.ms).await?;
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(1)
    }
}

fn registry(_worker: &str) -> Registry {
    Registry::new()
        .register_step::<Fetch>()
        .register_step::<Parse>()
        .register_step::<Store>()
        .register_step::<Add>()
        .register_step::<Sum>()
        .register_step::<Boom>()
        .register_step::<Square>()
        .register_step::<Collect>()
        .register_step::<Tally>()
        .register_step::<Nap>()
}

fn workers(pool: &PgPool, instance: &str, concurrency: usize) -> Workers {
    let config = WorkerConfig {
        poll_interval: Duration::from_millis(200),
        lease: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        instance: instance.into(),
        ..WorkerConfig::new(hearth::jobs::parse_queues(&format!("default:{concurrency}")).unwrap())
    };
    start_workers(pool, registry(instance), config)
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Node states of a workflow in preorder.
async fn node_states(pool: &PgPool, id: i64) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT state, error FROM workflow_nodes WHERE workflow_id = $1 ORDER BY node")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
}

const WAIT: Duration = Duration::from_secs(30);

/// Returns once a waiter has armed job `id` (set its `notify_done`), so that the test runs the
/// job after the waiter is listening and proves the wake-up rather than the first read.
async fn armed(pool: &PgPool, id: i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let flag: Option<bool> = sqlx::query_scalar("SELECT notify_done FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
        if flag == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} was never waited on");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_chain_of_three_typed_steps_passes_each_result_to_the_next() {
    let pool = pool().await;
    let layer = channels(&pool).await;
    let flow = Chain::new(Fetch {
        url: "https://example.com".into(),
    })
    .then(Parse {})
    .then(Store {
        table: "links".into(),
    });
    let handle: WorkflowHandle<String> = Workflow::new(flow, ()).enqueue(&pool).await.unwrap();
    // Only the first step exists until it completes.
    assert_eq!(count(&pool, "SELECT count(*) FROM jobs").await, 1);
    let status = workflow::status(&pool, handle.id, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.name, "chain(wf_fetch → wf_parse → wf_store)");

    let pool_workers = workers(&pool, "w1", 4);
    let outcome = handle.wait(&layer, WAIT).await.unwrap();
    pool_workers.shutdown().await;

    assert_eq!(
        outcome,
        Some(Finished::Completed("2 links into links".to_owned()))
    );
    let inputs: Vec<(String, Value)> =
        sqlx::query_as("SELECT kind, input FROM step_runs ORDER BY at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        inputs,
        [
            (
                "wf_parse".to_owned(),
                Value::from("<a href=/1>x</a><a href=/2>y</a> from https://example.com")
            ),
            ("wf_store".to_owned(), serde_json::json!(["/1", "/2"])),
        ]
    );
    // Each step's result is kept with its job and on its node.
    let results: Vec<Option<Value>> = sqlx::query_scalar(
        "SELECT result FROM jobs_done WHERE workflow_id = $1 ORDER BY workflow_node",
    )
    .bind(handle.id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[2], Some(Value::from("2 links into links")));
    assert!(
        node_states(&pool, handle.id)
            .await
            .iter()
            .all(|(state, _)| state == "completed")
    );
}

#[tokio::test]
async fn a_failed_chain_step_stops_the_chain_and_marks_the_rest_not_run() {
    let pool = pool().await;
    let layer = channels(&pool).await;
    let flow = Chain::new(Add { n: 1 })
        .then(Boom {})
        .then(Add { n: 10 })
        .then(Add { n: 100 });
    let handle = Workflow::new(flow, 5).enqueue(&pool).await.unwrap();
    let pool_workers = workers(&pool, "w1", 4);
    let outcome = handle.wait(&layer, WAIT).await.unwrap();
    pool_workers.shutdown().await;

    let Some(Finished::Failed(reason)) = outcome else {
        panic!("the workflow fails: {outcome:?}");
    };
    assert_eq!(
        reason,
        "step 2 of the chain (wf_boom) failed: the boom step always fails"
    );
    let states = node_states(&pool, handle.id).await;
    assert_eq!(states[0].0, "failed", "the chain");
    assert_eq!(states[1].0, "completed");
    assert_eq!(states[2].0, "failed");
    for (state, error) in &states[3..] {
        assert_eq!(state, "not_run");
        assert_eq!(
            error.as_deref(),
            Some(format!("not run: {reason}").as_str())
        );
    }
    // The steps after the failure were never enqueued, let alone run.
    assert_eq!(count(&pool, "SELECT count(*) FROM step_runs").await, 2);
    assert_eq!(count(&pool, "SELECT count(*) FROM job_statuses").await, 2);
}

#[tokio::test]
async fn a_chord_of_1000_members_worked_by_two_pools_runs_its_callback_once_with_every_result() {
    let pool = pool().await;
    let layer = channels(&pool).await;
    let first = workers(&pool, "pool-a", 8);
    let second = workers(&pool, "pool-b", 8);
    let members = Group::of((0..1000).map(|n| Square { n }));
    let handle = Workflow::new(Chord::new(members, Collect {}), ())
        .enqueue(&pool)
        .await
        .unwrap();

    let outcome = handle.wait(&layer, Duration::from_secs(120)).await.unwrap();
    first.shutdown().await;
    second.shutdown().await;

    assert_eq!(outcome, Some(Finished::Completed(1000)));
    let callbacks: Vec<Value> =
        sqlx::query_scalar("SELECT input FROM step_runs WHERE kind = 'wf_collect'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(callbacks.len(), 1, "the callback ran exactly once");
    let expected: Vec<String> = (0..1000)
        .map(|n: i64| format!("member-{n:04}-{}", n * n))
        .collect();
    assert_eq!(
        callbacks[0],
        serde_json::json!(expected),
        "every result, in order"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM jobs_done WHERE kind = 'wf_collect'"
        )
        .await,
        1,
        "the callback was enqueued exactly once"
    );
    // Both pools did part of the work, so members finished on both at the same time.
    let by_worker: HashMap<String, i64> = sqlx::query_as(
        "SELECT worker, count(*) FROM step_runs WHERE kind = 'wf_square' GROUP BY worker",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(by_worker.values().sum::<i64>(), 1000, "{by_worker:?}");
    assert!(
        by_worker.get("pool-a").is_some_and(|n| *n > 0)
            && by_worker.get("pool-b").is_some_and(|n| *n > 0),
        "{by_worker:?}"
    );
    // The transaction that recorded the last member did not copy the 1,000 results into the
    // callback's args: the callback read them from the members' rows when it started.
    let args: Value = sqlx::query_scalar("SELECT args FROM jobs_done WHERE kind = 'wf_collect'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        args["input_group"],
        serde_json::json!([handle.id, 1]),
        "{args}"
    );
}

#[tokio::test]
async fn a_group_handle_counts_states_and_reads_results_in_order() {
    let pool = pool().await;
    let registry = registry("inline");
    // Typed as a group of `Add` (i64 → i64); one member fails.
    let group = Group::new()
        .push(Add { n: 1 })
        .push(Add { n: 2 })
        .push(Task::new(Boom {}).max_attempts(1).unwrap())
        .push(Add { n: 4 })
        .push(Add { n: 5 });
    let handle = group.enqueue(&pool, 100).await.unwrap();
    let counts = handle.counts(&pool).await.unwrap();
    assert_eq!(counts.get("available"), Some(&5), "{counts:?}");
    assert!(matches!(
        handle.results(&pool).await.unwrap()[0],
        Member::Unfinished(ref state) if state == "running"
    ));

    testing::run_one(&pool, &registry, "default").await.unwrap();
    testing::run_one(&pool, &registry, "default").await.unwrap();
    let counts = handle.counts(&pool).await.unwrap();
    assert_eq!(counts.get("available"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("completed"), Some(&2), "{counts:?}");

    testing::drain(&pool, &registry, "default").await.unwrap();
    let counts = handle.counts(&pool).await.unwrap();
    assert_eq!(counts.get("completed"), Some(&4), "{counts:?}");
    assert_eq!(counts.get("failed"), Some(&1), "{counts:?}");
    assert_eq!(
        handle.results(&pool).await.unwrap(),
        [
            Member::Completed(101),
            Member::Completed(102),
            Member::Failed("the boom step always fails".into()),
            Member::Completed(104),
            Member::Completed(105),
        ]
    );
    let outcome = handle.workflow().outcome(&pool).await.unwrap();
    assert_eq!(
        outcome,
        Some(Finished::Failed(
            "1 of 5 members of the group did not complete; the first: member 3 (wf_boom) failed: the boom step always fails".into()
        ))
    );
}

#[tokio::test]
async fn a_chord_with_failures_runs_its_callback_with_them_and_one_without_does_not_run() {
    let pool = pool().await;
    let registry = registry("inline");
    let members = || {
        Group::new()
            .push(Add { n: 1 })
            .push(Boom {})
            .push(Add { n: 3 })
    };
    let with = Workflow::new(Chord::with_failures(members(), Tally {}), 0)
        .enqueue(&pool)
        .await
        .unwrap();
    let without = Workflow::new(Chord::new(members(), Sum {}), 0)
        .enqueue(&pool)
        .await
        .unwrap();
    testing::drain(&pool, &registry, "default").await.unwrap();

    assert_eq!(
        with.outcome(&pool).await.unwrap(),
        Some(Finished::Completed((2, 1)))
    );
    let tally_input: Value =
        sqlx::query_scalar("SELECT input FROM step_runs WHERE kind = 'wf_tally'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        tally_input,
        serde_json::json!([{"Ok": 1}, {"Err": "the boom step always fails"}, {"Ok": 3}])
    );

    let Some(Finished::Failed(reason)) = without.outcome(&pool).await.unwrap() else {
        panic!("the chord without failures allowed fails");
    };
    assert!(reason.contains("member 2 (wf_boom) failed"), "{reason}");
    let callback = node_states(&pool, without.id).await.pop().unwrap();
    assert_eq!(callback.0, "not_run");
    assert!(
        callback
            .1
            .unwrap()
            .contains("not run: step 1 of the chain (group)")
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM step_runs WHERE kind = 'wf_sum'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn groups_and_chords_nest_in_chains() {
    let pool = pool().await;
    let layer = channels(&pool).await;
    // 2 → [2+1, 2+10] → 15 → chord([15+1, 15+2] → 33) → 33+100
    let flow = Chain::new(Add { n: 0 })
        .then(Group::new().push(Add { n: 1 }).push(Add { n: 10 }))
        .then(Sum {})
        .then(Chord::new(Group::of([Add { n: 1 }, Add { n: 2 }]), Sum {}))
        .then(Add { n: 100 });
    let handle = Workflow::new(flow, 2)
        .owner(7)
        .enqueue(&pool)
        .await
        .unwrap();
    let pool_workers = workers(&pool, "w1", 4);
    let outcome = handle.wait(&layer, WAIT).await.unwrap();
    pool_workers.shutdown().await;

    assert_eq!(outcome, Some(Finished::Completed(133)));
    assert_eq!(
        count(&pool, "SELECT count(*) FROM jobs_done WHERE owner_id = 7").await,
        8,
        "every step job has the workflow's owner"
    );
}

#[tokio::test]
async fn cancelling_a_workflow_cancels_its_waiting_and_running_steps() {
    let pool = pool().await;
    let layer = channels(&pool).await;
    // One slot: the first nap runs, the other two wait; the callback is not reached.
    let header = Group::of([Nap { ms: 60_000 }, Nap { ms: 1 }, Nap { ms: 1 }]);
    let handle = Workflow::new(
        Chain::new(header).then(Chord::new(Group::of([Sum {}]), Sum {})),
        (),
    )
    .enqueue(&pool)
    .await
    .unwrap();
    let pool_workers = workers(&pool, "w1", 1);
    // The first nap has started once its run is logged. The LISTEN is a session's, so it goes
    // straight to the database when the suite runs through PgBouncer.
    let direct = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(helpers::direct_options(&pool));
    let mut listener = sqlx::postgres::PgListener::connect_with(&direct)
        .await
        .unwrap();
    listener.listen("step_started").await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        "CREATE FUNCTION step_started() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_notify('step_started', NEW.kind); RETURN NEW; END $$;
         CREATE TRIGGER step_started AFTER INSERT ON step_runs FOR EACH ROW EXECUTE FUNCTION step_started();",
    ))
    .execute(&pool)
    .await
    .unwrap();
    let started = count(&pool, "SELECT count(*) FROM step_runs").await;
    if started == 0 {
        tokio::time::timeout(WAIT, listener.recv())
            .await
            .unwrap()
            .unwrap();
    }

    let cancelled = handle.cancel(&pool).await.unwrap();
    assert_eq!(
        cancelled,
        WorkflowCancelled::Cancelled {
            waiting: 2,
            running: 1
        }
    );
    assert_eq!(
        handle.wait(&layer, WAIT).await.unwrap(),
        Some(Finished::Cancelled("the workflow was cancelled".into()))
    );
    // The running nap is told and stops; its outcome moves nothing.
    let running: i64 =
        sqlx::query_scalar("SELECT job_id FROM workflow_nodes WHERE workflow_id = $1 AND node = 2")
            .bind(handle.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let stopped = JobHandle::new(running)
        .wait(&layer, WAIT)
        .await
        .unwrap()
        .unwrap();
    pool_workers.shutdown().await;
    assert_eq!(stopped.state, "cancelled");
    let states: Vec<String> = node_states(&pool, handle.id)
        .await
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(
        states,
        [
            "cancelled",
            "cancelled",
            "cancelled",
            "cancelled",
            "cancelled",
            "not_run",
            "not_run",
            "not_run",
            "not_run"
        ]
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM jobs").await,
        0,
        "no step job is left waiting"
    );
    assert_eq!(
        handle.cancel(&pool).await.unwrap(),
        WorkflowCancelled::AlreadyFinished
    );
    assert_eq!(
        WorkflowHandle::<()>::new(999_999)
            .cancel(&pool)
            .await
            .unwrap(),
        WorkflowCancelled::NotFound
    );
}

#[tokio::test]
async fn cancelling_a_waiting_step_stops_its_chain() {
    let pool = pool().await;
    let handle = Workflow::new(Chain::new(Add { n: 1 }).then(Add { n: 2 }), 0)
        .enqueue(&pool)
        .await
        .unwrap();
    let first: i64 = sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        control::cancel(&pool, first).await.unwrap(),
        control::Cancelled::Cancelled
    );
    let outcome = handle.outcome(&pool).await.unwrap();
    assert_eq!(
        outcome,
        Some(Finished::Cancelled(
            "step 1 of the chain (wf_add) was cancelled: cancelled by an operator before it ran"
                .into()
        ))
    );
    assert_eq!(node_states(&pool, handle.id).await[2].0, "not_run");
}

#[tokio::test]
async fn bad_workflows_are_clear_errors_and_enqueue_nothing() {
    let pool = pool().await;
    let empty = Workflow::new(Chord::new(Group::<(), String>::new(), Collect {}), ())
        .enqueue(&pool)
        .await
        .unwrap_err();
    assert!(matches!(empty, WorkflowError::EmptyGroup), "{empty}");

    let huge = Group::of((0..=MAX_GROUP as i64).map(|n| Square { n }));
    let too_big = Workflow::new(Chord::new(huge, Collect {}), ())
        .enqueue(&pool)
        .await
        .unwrap_err();
    assert!(
        matches!(too_big, WorkflowError::GroupTooLarge(_)),
        "{too_big}"
    );
    assert!(too_big.to_string().contains("more than the 100000 allowed"));

    // An input that cannot be serialized (JSON object keys must be strings).
    #[derive(Serialize, Deserialize)]
    struct Pairs {}
    impl Step for Pairs {
        const KIND: &'static str = "wf_pairs";
        type Input = HashMap<(i32, i32), i32>;
        type Output = ();
        async fn run(self, _: Self::Input, _: JobContext) -> anyhow::Result<()> {
            Ok(())
        }
    }
    let unserializable = Workflow::new(
        Chain::new(Pairs {}).then(Fetch { url: "x".into() }),
        HashMap::from([((1, 2), 3)]),
    )
    .enqueue(&pool)
    .await
    .unwrap_err();
    assert!(
        matches!(
            unserializable,
            WorkflowError::Serialize { what: "input", .. }
        ),
        "{unserializable}"
    );

    let bad_queue = Task::new(Add { n: 1 }).queue("Not A Queue");
    assert!(bad_queue.is_err());

    // Inside the caller's transaction too (the enqueue is a savepoint there): the error
    // leaves the transaction usable and nothing of the workflow in it.
    let mut tx = pool.begin().await.unwrap();
    let _ = Workflow::new(Chord::new(Group::<(), String>::new(), Collect {}), ())
        .enqueue(&mut *tx)
        .await
        .unwrap_err();
    tx.commit().await.unwrap();

    assert_eq!(count(&pool, "SELECT count(*) FROM workflows").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM workflow_nodes").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM jobs").await, 0);
}

#[tokio::test]
async fn a_step_whose_stored_input_no_longer_fits_is_discarded_at_once() {
    let pool = pool().await;
    let handle = Workflow::new(Chain::new(Add { n: 1 }).then(Add { n: 1 }), 1)
        .enqueue(&pool)
        .await
        .unwrap();
    // As if the code had changed under an enqueued step: its input is now a string.
    sqlx::query("UPDATE jobs SET args = jsonb_set(args, '{input}', '\"one\"'), max_attempts = 5")
        .execute(&pool)
        .await
        .unwrap();
    testing::drain(&pool, &registry("inline"), "default")
        .await
        .unwrap();
    let status: (String, i32) =
        sqlx::query_as("SELECT state, attempt FROM jobs_done WHERE workflow_id = $1")
            .bind(handle.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, ("discarded".to_owned(), 1), "not retried");
    let Some(Finished::Failed(reason)) = handle.outcome(&pool).await.unwrap() else {
        panic!("the workflow fails");
    };
    assert!(
        reason.contains("the input of step `wf_add` does not deserialize"),
        "{reason}"
    );
}

#[tokio::test]
async fn waiting_on_a_job_returns_when_it_finishes_and_times_out_otherwise() {
    let pool = pool().await;
    let layer = channels(&pool).await;
    let job = Enqueue::new(&Sleep { ms: 1 })
        .unwrap()
        .enqueue(&pool)
        .await
        .unwrap();
    let handle = JobHandle::from(job);

    // Nothing runs it: the wait ends with the timeout, and says so.
    let started = Instant::now();
    assert!(
        handle
            .wait(&layer, Duration::from_millis(300))
            .await
            .unwrap()
            .is_none()
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A waiter, then the job runs: the waiter is woken by its outcome's message, long
    // before its 60 s are up.
    let waiter = {
        let layer = layer.clone();
        tokio::spawn(async move { handle.wait(&layer, Duration::from_secs(60)).await })
    };
    // The waiter has armed the job once its flag is set (an awaited event, not a sleep).
    armed(&pool, job.id).await;
    let ran = Instant::now();
    testing::run_one(&pool, &registry("inline"), "default")
        .await
        .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is woken")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(done.state, "completed");
    assert!(ran.elapsed() < Duration::from_secs(10));

    // Already finished: at once.
    let again = handle.wait(&layer, Duration::from_secs(60)).await.unwrap();
    assert_eq!(again.unwrap().state, "completed");
    assert!(matches!(
        JobHandle::new(987_654)
            .wait(&layer, Duration::from_secs(1))
            .await,
        Err(hearth::jobs::WaitError::NotFound)
    ));
}

#[tokio::test]
async fn waiting_on_a_workflow_returns_when_its_last_step_is_recorded() {
    let pool = pool().await;
    let layer = channels(&pool).await;
    let handle = Workflow::new(Chain::new(Add { n: 1 }).then(Add { n: 2 }), 0)
        .enqueue(&pool)
        .await
        .unwrap();
    assert_eq!(
        handle
            .wait(&layer, Duration::from_millis(200))
            .await
            .unwrap(),
        None
    );
    let waiter = {
        let layer = layer.clone();
        let handle = handle.clone();
        tokio::spawn(async move { handle.wait(&layer, Duration::from_secs(60)).await })
    };
    tokio::task::yield_now().await;
    testing::drain(&pool, &registry("inline"), "default")
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is woken")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Some(Finished::Completed(3)));
}

#[tokio::test]
async fn the_status_api_long_polls_for_the_owner_and_refuses_bad_waits() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let job = Enqueue::new(&Sleep { ms: 1 })
        .unwrap()
        .owner(ada.id)
        .enqueue(&app.pool)
        .await
        .unwrap();
    let path = format!("/api/jobs/{}", job.id);

    for bad in ["soon", "31s", "1h", "-5s"] {
        let response = ada.get(&format!("{path}?wait={bad}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "wait={bad}");
    }
    assert_eq!(
        bob.get(&format!("{path}?wait=1s")).await.status(),
        StatusCode::NOT_FOUND,
        "someone else's job is not found, and not waited on"
    );

    // Not run: the wait is up and the answer says it still waits.
    let started = Instant::now();
    let body: Value = ada
        .get(&format!("{path}?wait=300ms"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["state"], "available");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Run while the owner waits: answered with the outcome.
    let long_poll = format!("{path}?wait=25s");
    let poll = ada.get(&long_poll);
    let run = async {
        armed(&app.pool, job.id).await;
        app.drain("default").await
    };
    let started = Instant::now();
    let (response, ran) = tokio::join!(poll, run);
    assert_eq!(ran, 1);
    assert!(started.elapsed() < Duration::from_secs(20));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["state"], "completed");
}

#[tokio::test]
async fn the_workflow_status_api_is_the_owners() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let handle = Workflow::new(Chain::new(Add { n: 1 }).then(Add { n: 2 }), 0)
        .owner(ada.id)
        .enqueue(&app.pool)
        .await
        .unwrap();
    let path = format!("/api/workflows/{}", handle.id);
    assert_eq!(bob.get(&path).await.status(), StatusCode::NOT_FOUND);
    let body: Value = ada.get(&path).await.json().await.unwrap();
    assert_eq!(body["state"], "running");
    assert_eq!(body["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(body["counts"]["running"], 2, "{body}");
    assert_eq!(body["counts"]["pending"], 1, "{body}");
    assert_eq!(
        ada.get(&format!("{path}?wait=forever")).await.status(),
        StatusCode::BAD_REQUEST
    );

    // A failed workflow: the owner sees which step failed, not its error message (which can
    // quote other people's data), as for a job; an administrator sees both.
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        "CREATE TABLE step_runs (job_id bigint, kind text, worker text, input jsonb, at timestamptz DEFAULT clock_timestamp())",
    ))
    .execute(&app.pool)
    .await
    .unwrap();
    let failing = Workflow::new(Chain::new(Boom {}).then(Add { n: 1 }), 0)
        .owner(ada.id)
        .enqueue(&app.pool)
        .await
        .unwrap();
    testing::drain(&app.pool, &registry("inline"), "default")
        .await
        .unwrap();
    let path = format!("/api/workflows/{}?wait=5s", failing.id);
    let body: Value = ada.get(&path).await.json().await.unwrap();
    assert_eq!(body["state"], "failed");
    assert_eq!(body["error"], Value::Null);
    assert_eq!(body["nodes"][1]["state"], "failed");
    assert_eq!(body["nodes"][1]["error"], Value::Null);
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(bob.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let body: Value = bob.get(&path).await.json().await.unwrap();
    assert_eq!(body["nodes"][1]["error"], "the boom step always fails");
}

/// Outputs a string of `bytes` bytes.
#[derive(Serialize, Deserialize)]
struct Big {
    bytes: usize,
}

impl Step for Big {
    const KIND: &'static str = "wf_big";
    type Input = i64;
    type Output = String;

    async fn run(self, _: i64, _ctx: JobContext) -> anyhow::Result<String> {
        Ok("x".repeat(self.bytes))
    }
}

/// Measures its input.
#[derive(Serialize, Deserialize)]
struct Measure {}

impl Step for Measure {
    const KIND: &'static str = "wf_measure";
    type Input = String;
    type Output = usize;

    async fn run(self, input: String, _ctx: JobContext) -> anyhow::Result<usize> {
        Ok(input.len())
    }
}

#[tokio::test]
async fn a_large_result_is_stored_once_and_the_next_steps_args_point_to_it() {
    let pool = pool().await;
    let registry = registry("inline")
        .register_step::<Big>()
        .register_step::<Measure>();
    let small = Workflow::new(Chain::new(Big { bytes: 10 }).then(Measure {}), 0)
        .enqueue(&pool)
        .await
        .unwrap();
    // 100 kB: over the 16 KiB copied into args; three members each get it.
    let large = Workflow::new(
        Chain::new(Big { bytes: 100_000 }).then(Group::of([Measure {}, Measure {}, Measure {}])),
        0,
    )
    .enqueue(&pool)
    .await
    .unwrap();
    testing::drain(&pool, &registry, "default").await.unwrap();

    assert_eq!(
        small.outcome(&pool).await.unwrap(),
        Some(Finished::Completed(10))
    );
    assert_eq!(
        large.outcome(&pool).await.unwrap(),
        Some(Finished::Completed(vec![100_000, 100_000, 100_000]))
    );
    let args: Vec<Value> = sqlx::query_scalar(
        "SELECT args FROM jobs_done WHERE kind = 'wf_measure' ORDER BY workflow_id, workflow_node",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        args[0]["input"],
        "x".repeat(10),
        "small inputs travel in args"
    );
    for member in &args[1..] {
        // Stored once, on the group the input reached first.
        assert_eq!(
            member["input_at"],
            serde_json::json!([large.id, 2]),
            "{member}"
        );
        assert!(member.get("input").is_none());
    }
}

#[tokio::test]
async fn maintenance_prunes_workflows_finished_before_the_retention_only() {
    let pool = pool().await;
    let registry = registry("inline");
    let old = Workflow::new(Chord::new(Group::of([Add { n: 1 }]), Sum {}), 1)
        .enqueue(&pool)
        .await
        .unwrap();
    let recent = Workflow::new(Chain::new(Add { n: 1 }), 1)
        .enqueue(&pool)
        .await
        .unwrap();
    testing::drain(&pool, &registry, "default").await.unwrap();
    let running = Workflow::new(Chain::new(Add { n: 1 }), 1)
        .enqueue(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE workflows SET finished_at = now() - interval '8 days' WHERE id = $1")
        .bind(old.id)
        .execute(&pool)
        .await
        .unwrap();

    let ran = hearth::jobs::maintenance::tick(&pool, Duration::from_secs(7 * 86_400), &[], true)
        .await
        .unwrap();

    assert!(ran, "this instance was the maintenance leader");
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM workflows ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, [recent.id, running.id]);
    for table in ["workflow_nodes", "workflow_results"] {
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE workflow_id = {}",
            old.id
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(rows, 0, "{table}");
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM workflow_nodes").await,
        4,
        "the other workflows keep their nodes (a chain and its step each)"
    );
}

#[tokio::test]
async fn a_chord_whose_worker_process_is_killed_mid_chord_runs_its_callback_once_with_every_result()
{
    let (name, options) = helpers::migrated_database().await;
    let pool = PgPoolOptions::new()
        .max_connections(12)
        .connect_with(options)
        .await
        .unwrap();
    let layer = channels(&pool).await;
    // A worker process of its own: the built-in steps are registered in every registry.
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("worker")
        .env("DATABASE_URL", helpers::database_url(&name))
        .env("HEARTH_DATA_DIR", dir.path())
        .env("HEARTH_QUEUES", "default:8")
        .env("HEARTH_JOB_LEASE", "1s")
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    let members = Group::of((0..1000).map(|n| SleepStep {
        ms: 10,
        value: n * n,
    }));
    let handle = Workflow::new(Chord::new(members, Gather {}), ())
        .enqueue(&pool)
        .await
        .unwrap();

    // The other process works alone until it has recorded 200 members; then it is killed
    // (SIGKILL) with members running and outcomes not yet written.
    let deadline = Instant::now() + WAIT;
    loop {
        let recorded: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs_done WHERE workflow_id = $1 AND kind = 'step_sleep'",
        )
        .bind(handle.id)
        .fetch_one(&pool)
        .await
        .unwrap();
        if recorded >= 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker process recorded {recorded} members"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // This process takes over: what the killed one held comes back when its leases expire.
    let survivor = start_workers(
        &pool,
        Registry::new(),
        WorkerConfig {
            poll_interval: Duration::from_millis(100),
            lease: Duration::from_secs(1),
            instance: "survivor".into(),
            ..WorkerConfig::new(hearth::jobs::parse_queues("default:8").unwrap())
        },
    );
    let outcome = handle.wait(&layer, Duration::from_secs(120)).await.unwrap();
    survivor.shutdown().await;

    let expected: Vec<i64> = (0..1000).map(|n| n * n).collect();
    assert_eq!(
        outcome,
        Some(Finished::Completed(expected)),
        "every result, in order"
    );
    let callbacks: Vec<i32> = sqlx::query_scalar(
        "SELECT attempt FROM jobs_done WHERE workflow_id = $1 AND kind = 'step_gather'",
    )
    .bind(handle.id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        callbacks,
        [1],
        "the callback was enqueued once and ran once"
    );
    let (members, nodes, rerun): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT workflow_node), count(*) FILTER (WHERE attempt > 1)
           FROM jobs_done WHERE workflow_id = $1 AND kind = 'step_sleep'",
    )
    .bind(handle.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((members, nodes), (1000, 1000), "each member recorded once");
    assert!(
        rerun > 0,
        "members the killed process was running ran again after their leases expired"
    );
}

#[tokio::test]
async fn the_ops_workflow_page_draws_steps_with_states_and_cancels_for_admins_only() {
    let app = TestApp::spawn().await;
    let ada = app.user("ada").await;
    let root = app.user("root").await;
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(root.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let flow =
        Chain::new(Add { n: 1 }).then(Chord::new(Group::of([Add { n: 2 }, Add { n: 3 }]), Sum {}));
    let handle = Workflow::new(flow, 0).enqueue(&app.pool).await.unwrap();
    let page = format!("/ops/workflows/{}", handle.id);
    let cancel = format!("{page}/cancel");

    for path in ["/ops/workflows", page.as_str()] {
        assert_eq!(
            ada.get(path).await.status(),
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    assert_eq!(
        ada.post_form(&cancel, &[]).await.status(),
        StatusCode::FORBIDDEN
    );

    let list = root.get("/ops/workflows").await.text().await.unwrap();
    assert!(list.contains(&page), "{list}");
    let html = root.get(&page).await.text().await.unwrap();
    // chain → [wf_add, chain → [group ⇉ [wf_add, wf_add], wf_sum]]
    for needle in [
        "step 1",
        "step 2",
        "member 1",
        "member 2",
        "wf_add",
        "wf_sum",
        "state-running",
        "state-pending",
    ] {
        assert!(html.contains(needle), "{needle} missing from the page");
    }
    assert_eq!(
        html.matches("<li class=\"wf-node").count(),
        7,
        "every node is outlined"
    );
    // And drawn: a box per step (the running one linked to its job), a frame per group, an
    // arrow between each two steps of a chain (two chains of two: 2 arrows).
    assert!(html.contains("data-testid=\"workflow-svg\""), "no graph");
    assert_eq!(html.matches("<g class=\"wf-box state-").count(), 4);
    assert_eq!(
        html.matches("<rect class=\"wf-frame state-pending\"")
            .count(),
        1
    );
    assert_eq!(html.matches("marker-end=").count(), 2);
    assert!(html.contains("<g class=\"wf-box state-running\""));
    let first: i64 = sqlx::query_scalar("SELECT id FROM jobs WHERE workflow_id = $1")
        .bind(handle.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(html.contains(&format!(
        "<a href=\"/ops/jobs/{first}\"><title>wf_add</title>"
    )));

    let response = root.post_form(&cancel, &[]).await;
    assert_eq!(response.headers()["location"], page);
    assert!(matches!(
        handle.outcome(&app.pool).await.unwrap(),
        Some(Finished::Cancelled(_))
    ));
    let html = root.get(&page).await.text().await.unwrap();
    assert!(html.contains("state-not_run") && html.contains("state-cancelled"));
    assert!(
        html.contains("<g class=\"wf-box state-not_run\""),
        "the graph shows it too"
    );
    let audited: Vec<String> = sqlx::query_scalar("SELECT action FROM ops_audit")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(audited, ["workflow.cancel"]);
    assert_eq!(
        root.get("/ops/workflows/987654").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_kind_rate_limit_holds_across_worker_pools_and_bad_rates_are_refused() {
    use hearth::jobs::{
        builtin::Noop,
        kind_limits::{self, KindLimitError, Rate, RateError},
    };
    let pool = pool().await;
    assert_eq!("0/s".parse::<Rate>(), Err(RateError::Zero));
    assert!(matches!(
        "10/fortnight".parse::<Rate>(),
        Err(RateError::UnknownUnit(_))
    ));
    assert!(matches!(
        kind_limits::set(&pool, "", Some("1/s".parse().unwrap())).await,
        Err(KindLimitError::Invalid(RateError::InvalidKind))
    ));
    let rate: Rate = "3/h".parse().unwrap();
    kind_limits::set(&pool, "noop", Some(rate)).await.unwrap();
    assert_eq!(
        kind_limits::list(&pool).await.unwrap(),
        [("noop".to_owned(), rate)]
    );
    let mut jobs = Vec::new();
    for _ in 0..10 {
        jobs.push(Enqueue::new(&Noop {}).unwrap());
    }
    for _ in 0..5 {
        jobs.push(Enqueue::new(&Sleep { ms: 1 }).unwrap());
    }
    hearth::jobs::enqueue_many(&pool, jobs).await.unwrap();

    // Two pools fetch at once; together they start 3 noops this hour, and every other job.
    let first = workers(&pool, "pool-a", 4);
    let second = workers(&pool, "pool-b", 4);
    let deadline = Instant::now() + WAIT;
    loop {
        let (sleeps, noops): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE kind = 'sleep'), count(*) FILTER (WHERE kind = 'noop')
               FROM jobs_done WHERE state = 'completed'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if sleeps == 5 && noops >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{sleeps} sleeps and {noops} noops ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.shutdown().await;
    second.shutdown().await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM jobs_done WHERE kind = 'noop'").await,
        3
    );
    // The window is used up for every instance: a fetch now starts nothing.
    let registry = registry("inline");
    assert_eq!(
        testing::run_one(&pool, &registry, "default").await.unwrap(),
        None
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM jobs WHERE kind = 'noop' AND state = 'available'"
        )
        .await,
        7
    );
    // Lifted: the rest runs.
    kind_limits::set(&pool, "noop", None).await.unwrap();
    assert_eq!(
        testing::drain(&pool, &registry, "default").await.unwrap(),
        7
    );
}

/// Issue #33's proof that a chain survives a restart of PostgreSQL between two steps. The
/// tests' shared server must not be restarted, so this starts a private cluster from the
/// machine's binaries (as `hearth` does without `DATABASE_URL`), runs the chain's first step
/// with the worker runtime up, stops the cluster with a fast shutdown and starts it again on
/// the same data (what `pg_ctl restart -m fast` does) while the runtime keeps running, and
/// checks that the chain finishes with each step run exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_survives_a_postgres_restart_between_two_steps() {
    use hearth::{
        db::embedded::{EmbeddedOptions, EmbeddedPostgres},
        jobs::QueueName,
    };
    let dir = tempfile::Builder::new()
        .prefix("hearth-restart-")
        .tempdir()
        .unwrap();
    let start = |dir: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            let options = EmbeddedOptions {
                durable: false,
                ..Default::default()
            };
            EmbeddedPostgres::start(&dir, &options).expect("the private cluster starts")
        })
    };
    let pg = start(dir.path().to_owned()).await.unwrap();
    let admin = pg.connect_options();
    hearth::db::create_database_if_missing(&admin, "chain")
        .await
        .unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(admin.clone().database("chain"))
        .await
        .unwrap();
    hearth::db::migrations::run(&pool, &helpers::migration_sets())
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        "CREATE TABLE step_runs (job_id bigint, kind text, worker text, input jsonb, at timestamptz DEFAULT clock_timestamp())",
    ))
    .execute(&pool)
    .await
    .unwrap();

    // The steps after the first wait in a paused queue: the restart falls between two steps.
    let after = QueueName::parse("after").unwrap();
    control::pause(&pool, &after).await.unwrap();
    let flow = Chain::new(Add { n: 1 })
        .then(Task::new(Add { n: 10 }).queue("after").unwrap())
        .then(Task::new(Add { n: 100 }).queue("after").unwrap());
    let handle = Workflow::new(flow, 0).enqueue(&pool).await.unwrap();
    let config = WorkerConfig {
        poll_interval: Duration::from_millis(200),
        lease: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        instance: "restart".into(),
        ..WorkerConfig::new(hearth::jobs::parse_queues("default:2,after:2").unwrap())
    };
    let runtime = start_workers(&pool, registry("restart"), config);
    // The first step's outcome enqueued the second (in the transaction that recorded it).
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let second = loop {
        tick.tick().await;
        let waiting: Option<i64> =
            sqlx::query_scalar("SELECT id FROM jobs WHERE queue = 'after' AND state = 'available'")
                .fetch_optional(&pool)
                .await
                .unwrap();
        if let Some(id) = waiting {
            break id;
        }
    };
    assert_eq!(count(&pool, "SELECT count(*) FROM step_runs").await, 1);

    let before = pg.pid();
    tokio::task::spawn_blocking(move || pg.stop().expect("fast shutdown"))
        .await
        .unwrap();
    let pg = start(dir.path().to_owned()).await.unwrap();
    assert_ne!(pg.pid(), before, "a new server process");

    // The pool reconnects; resuming the queue lets the runtime (which lost every connection)
    // take the second step.
    control::resume(&pool, &after).await.unwrap();
    let layer = channels(&pool).await;
    let outcome = handle.wait(&layer, Duration::from_secs(60)).await.unwrap();
    runtime.shutdown().await;
    layer.shutdown().await;

    assert_eq!(outcome, Some(Finished::Completed(111)));
    let runs: Vec<(i64, Value)> = sqlx::query_as("SELECT job_id, input FROM step_runs ORDER BY at")
        .fetch_all(&pool)
        .await
        .unwrap();
    let inputs: Vec<&Value> = runs.iter().map(|(_, input)| input).collect();
    assert_eq!(
        inputs,
        [&Value::from(0), &Value::from(1), &Value::from(11)],
        "each step ran once"
    );
    assert_eq!(runs[1].0, second);
    let jobs = count(
        &pool,
        "SELECT count(*) FROM job_statuses WHERE state = 'completed'",
    )
    .await;
    assert_eq!(jobs, 3, "one job per step");
    pool.close().await;
    tokio::task::spawn_blocking(move || pg.stop().unwrap())
        .await
        .unwrap();
}

/// `Workers::start` on `pool`, with the direct URL for its sessions when the suite runs through
/// PgBouncer (`HEARTH_TEST_VIA_PGBOUNCER`).
fn start_workers(pool: &PgPool, registry: Registry, config: WorkerConfig) -> Workers {
    Workers::start(pool.clone(), registry, helpers::with_session(pool, config))
}
