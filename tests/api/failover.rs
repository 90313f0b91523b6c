//! Failover: a primary killed while traffic flows and its standby promoted (issue #35).
//!
//! An instance opened on a URL listing both servers (`Database::open`, as `serve` does, with
//! the platform's state, HTTP and two job worker runtimes) lives through the failover. The
//! standby stops receiving WAL a moment before the primary is killed, so what the primary
//! commits in that moment is lost exactly as asynchronous replication loses it, and the checks
//! below are about that history: every job and message the new primary has is done or
//! delivered exactly once, leases that reached it are honoured, leases that did not are
//! rescued. A URL whose only host is a standby is refused with a log line naming the setting
//! until it is promoted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use hearth::{
    channels::GroupName,
    db::Database,
    jobs::{Enqueue, Job, JobContext, Outcome, Registry, WorkerConfig, Workers},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{helpers, pair::Pair};

/// Runs of [`Counted`] seen in this process, by token: started and finished (the body
/// reached its end, so its effect happened); and the gate that holds jobs running.
#[derive(Clone)]
struct Runs {
    counts: Arc<Mutex<HashMap<String, (u32, u32)>>>,
    release: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Runs {
    fn new() -> Self {
        Self {
            counts: Arc::default(),
            release: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }
    fn started(&self, token: &str) {
        self.counts
            .lock()
            .unwrap()
            .entry(token.into())
            .or_default()
            .0 += 1;
    }
    fn finished(&self, token: &str) {
        self.counts
            .lock()
            .unwrap()
            .entry(token.into())
            .or_default()
            .1 += 1;
    }
    fn of(&self, token: &str) -> (u32, u32) {
        let counts = self.counts.lock().unwrap();
        counts.get(token).copied().unwrap_or_default()
    }
    /// Lets every held job (and every one started later) finish.
    fn release(&self) {
        self.release.send_replace(true);
    }
}

/// Counts its run, waits for [`Runs::release`] if it is to `hold`, and returns its token as
/// its result: a job's recorded result says which run recorded it.
#[derive(Serialize, Deserialize)]
struct Counted {
    token: String,
    hold: bool,
}

impl Job for Counted {
    const KIND: &'static str = "test_failover_counted";
    type Deps = Runs;

    async fn perform(self, ctx: JobContext<Runs>) -> anyhow::Result<Outcome> {
        ctx.deps.started(&self.token);
        if self.hold {
            let mut released = ctx.deps.release.subscribe();
            released.wait_for(|r| *r).await?;
        }
        ctx.deps.finished(&self.token);
        Outcome::with_result(json!({ "token": self.token }))
    }
}

/// The log of this test's thread (every task a `#[tokio::test]` spawns runs on it), shown
/// when it fails.
fn logs() -> tracing::subscriber::DefaultGuard {
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_test_writer()
        .finish();
    tracing::subscriber::set_default(subscriber)
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

async fn enqueue(pool: &PgPool, queue: &str, token: &str, hold: bool) -> Result<i64, String> {
    Enqueue::new(&Counted {
        token: token.into(),
        hold,
    })
    .and_then(|e| e.queue(queue))
    .map_err(|e| e.to_string())?
    .enqueue(pool)
    .await
    .map(|done| done.id)
    .map_err(|e| e.to_string())
}

/// The jobs of `tokens` in state `running` on `pool`'s server.
async fn running(pool: &PgPool, tokens: &[String]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE state = 'running' AND args->>'token' = ANY($1)",
    )
    .bind(tokens)
    .fetch_one(pool)
    .await
    .unwrap_or(0)
}

/// Stops the standby's WAL receiver: from now on the primary's commits are not replicated.
async fn cut_replication(standby: &sqlx::postgres::PgConnectOptions) {
    let mut conn = PgConnection::connect_with(standby).await.unwrap();
    for statement in [
        "ALTER SYSTEM SET primary_conninfo = ''",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::raw_sql(statement).execute(&mut conn).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let receiving: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_wal_receiver")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if receiving == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the WAL receiver did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conn.close().await.unwrap();
}

fn tokens(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// What the instance under test runs: the state (channel layer, pipelined reads), HTTP, and
/// two worker runtimes (`fo_b` starts only when asked).
struct Instance {
    db: Database,
    state: hearth::web::AppState,
    address: String,
    runs: Runs,
    workers_a: Workers,
    config: hearth::config::Config,
    shutdown: CancellationToken,
}

impl Instance {
    async fn open(url: String) -> Self {
        let mut config = helpers::test_config();
        config.db.database_url = Some(url);
        config.db.db_acquire_timeout = Duration::from_secs(1);
        config.channels.ws_send_queue = 10_000;
        let db = Database::open(&config.db, false).await.expect("open");
        let application = helpers::application();
        let state = application
            .state(config.clone(), helpers::test_sections(), db.pool.clone())
            .expect("state");
        tokio::time::timeout(Duration::from_secs(20), state.channels.ready())
            .await
            .expect("the channel layer is ready");
        let router = application.router(&state).expect("router");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(hearth::server::serve(
            listener,
            router,
            &config,
            shutdown.clone().cancelled_owned(),
        ));
        let runs = Runs::new();
        let workers_a = Self::workers(&config, &db, &runs, "fo_a:64", "instance-a");
        Self {
            db,
            state,
            address,
            runs,
            workers_a,
            config,
            shutdown,
        }
    }

    fn workers(
        config: &hearth::config::Config,
        db: &Database,
        runs: &Runs,
        queues: &str,
        instance: &str,
    ) -> Workers {
        let worker_config = WorkerConfig {
            poll_interval: Duration::from_millis(100),
            // Long enough that no lease expires during the outage: a lease that reached the
            // new primary is honoured by its holder, not rescued.
            lease: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(1),
            instance: instance.into(),
            ..WorkerConfig::new(hearth::jobs::parse_queues(queues).unwrap())
        };
        let registry = Registry::new().register_with::<Counted>(runs.clone());
        Workers::start(
            hearth::application::job_pool(config, &db.pool),
            registry,
            worker_config,
        )
    }
}

/// Sends `token` to the test group; the id, or why not.
async fn send(
    state: &hearth::web::AppState,
    group: &GroupName,
    token: &str,
) -> Result<i64, String> {
    state
        .channels
        .group_send(group, &json!({ "type": "test.failover", "token": token }))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_promoted_standby_takes_over_and_no_job_or_message_it_has_is_lost_or_doubled() {
    let _log = logs();
    let mut pair = Pair::start().await;
    let instance = Instance::open(pair.multi_host_url()).await;
    let client = helpers::client();
    let pool = instance.db.pool.clone();

    // Delivered messages by token, as a member of the group on this instance sees them.
    let group = GroupName::parse("failover").unwrap();
    let received: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut member = instance.state.channels.subscribe();
    member.join(&group);
    tokio::spawn({
        let received = received.clone();
        async move {
            while let Some(delivery) = member.recv().await {
                let message: serde_json::Value = delivery.decode().unwrap();
                let token = message["token"].as_str().unwrap_or_default().to_owned();
                *received.lock().unwrap().entry(token).or_default() += 1;
            }
        }
    });
    let count_of = |token: &str| received.lock().unwrap().get(token).copied().unwrap_or(0);

    // HTTP traffic all along: `/readyz` every 50 ms, with when it answered what.
    let started = Instant::now();
    // (answered at, status, took)
    let readiness: Arc<Mutex<Vec<(Duration, u16, Duration)>>> = Arc::default();
    let probing = CancellationToken::new();
    tokio::spawn({
        let (readiness, probing, client) = (readiness.clone(), probing.clone(), client.clone());
        let url = format!("{}/readyz", instance.address);
        async move {
            while !probing.is_cancelled() {
                let sent = Instant::now();
                let status = match client.get(&url).send().await {
                    Ok(response) => response.status().as_u16(),
                    Err(_) => 0,
                };
                readiness
                    .lock()
                    .unwrap()
                    .push((started.elapsed(), status, sent.elapsed()));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    // Before: jobs done, long jobs running (their leases replicated), messages delivered;
    // and long jobs for `fo_b`, whose workers start only once replication is cut.
    let before = tokens("before", 20);
    let held = tokens("held", 3);
    let unreplicated_lease = tokens("unreplicated-lease", 3);
    for token in &before {
        enqueue(&pool, "fo_a", token, false).await.unwrap();
    }
    for token in &held {
        enqueue(&pool, "fo_a", token, true).await.unwrap();
    }
    for token in &unreplicated_lease {
        enqueue(&pool, "fo_b", token, true).await.unwrap();
    }
    let sent_before = tokens("m-before", 50);
    for token in &sent_before {
        send(&instance.state, &group, token).await.unwrap();
    }
    eventually(Duration::from_secs(20), "the first jobs run", || async {
        before.iter().all(|t| instance.runs.of(t).1 == 1)
            && running(&pool, &held).await == held.len() as i64
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "the first messages arrive",
        || async { sent_before.iter().all(|t| count_of(t) == 1) },
    )
    .await;
    // Recorded outcomes are written with `synchronous_commit = off`: flushed within 200 ms.
    eventually(
        Duration::from_secs(5),
        "the first outcomes are recorded",
        || async { instance.workers_a.unrecorded() == held.len() },
    )
    .await;
    pair.wait_replayed().await;

    // During: replication is cut; what the primary commits from now on is lost with it.
    cut_replication(&pair.standby_options()).await;
    let workers_b = Instance::workers(
        &instance.config,
        &instance.db,
        &instance.runs,
        "fo_b:8",
        "instance-b",
    );
    // More than the 32 values a sequence logs ahead, so the new primary hands out ids again.
    let during = tokens("during", 40);
    for token in &during {
        enqueue(&pool, "fo_a", token, true).await.unwrap();
    }
    let sent_during = tokens("m-during", 200);
    for token in &sent_during {
        send(&instance.state, &group, token).await.unwrap();
    }
    eventually(
        Duration::from_secs(20),
        "the unreplicated leases are taken",
        || async {
            running(&pool, &unreplicated_lease).await == unreplicated_lease.len() as i64
                && running(&pool, &during).await == during.len() as i64
                && sent_during.iter().all(|t| count_of(t) == 1)
        },
    )
    .await;

    // The primary dies; the standby is promoted.
    let killed = started.elapsed();
    pair.kill_primary().await;
    pair.promote_standby().await;
    let promoted = started.elapsed();

    // After: writes go on, each retried until it is acknowledged.
    let after = tokens("after", 20);
    let mut first_write = None;
    for token in &after {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = enqueue(&pool, "fo_a", token, false).await {
            assert!(Instant::now() < deadline, "enqueue after the failover: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        first_write.get_or_insert(started.elapsed());
    }
    let sent_after = tokens("m-after", 50);
    for token in &sent_after {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = send(&instance.state, &group, token).await {
            assert!(Instant::now() < deadline, "send after the failover: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let first_write = first_write.unwrap();
    eprintln!(
        "failover: primary killed at {killed:?}, standby promoted at {promoted:?}, first write \
         acknowledged at {first_write:?} ({:?} after the kill)",
        first_write - killed
    );

    // The leases lost with the old primary are taken again on the new one (their old runs,
    // still held here, must stop); then the held jobs may finish.
    let new_primary = PgPool::connect_with(pair.standby_options()).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the lost leases are taken again",
        || async {
            running(&new_primary, &unreplicated_lease).await == unreplicated_lease.len() as i64
        },
    )
    .await;
    instance.runs.release();

    // Every job the new primary has ends done, once; every message it has arrives, once.
    let expected_jobs: Vec<String> = [&before, &held, &unreplicated_lease, &after]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    eventually(Duration::from_secs(60), "every job is done", || async {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs_done WHERE state = 'completed' AND args->>'token' = ANY($1)",
        )
        .bind(&expected_jobs)
        .fetch_one(&new_primary)
        .await
        .unwrap_or(0);
        done == expected_jobs.len() as i64
    })
    .await;
    // Until every run this process started has ended (a stale one would finish late).
    eventually(Duration::from_secs(30), "every run ends", || async {
        instance.workers_a.unrecorded() == 0 && workers_b.unrecorded() == 0
    })
    .await;
    let rows: Vec<(
        String,
        String,
        i32,
        Option<serde_json::Value>,
        serde_json::Value,
    )> = sqlx::query_as(
        "SELECT args->>'token', state, attempt, result, errors FROM jobs_done
              WHERE kind = 'test_failover_counted'
             UNION ALL
             SELECT args->>'token', state, attempt, NULL, errors FROM jobs
              WHERE kind = 'test_failover_counted'",
    )
    .fetch_all(&new_primary)
    .await
    .unwrap();
    let mut seen = HashMap::new();
    for (token, state, attempt, result, errors) in &rows {
        assert_eq!(state, "completed", "{token}: {errors}");
        assert_eq!(
            result.as_ref().and_then(|r| r["token"].as_str()),
            Some(token.as_str()),
            "{token}'s recorded outcome is its own run's"
        );
        assert_eq!(instance.runs.of(token).1, 1, "{token} ran to its end once");
        *seen.entry(token.clone()).or_insert(0) += 1;
        if held.contains(token) {
            assert_eq!(
                (*attempt, instance.runs.of(token).0),
                (1, 1),
                "{token}: its lease reached the new primary and was honoured"
            );
        }
        if unreplicated_lease.contains(token) {
            assert_eq!(
                (*attempt, instance.runs.of(token).0),
                (1, 2),
                "{token}: its lease was lost, so it started again on the new primary"
            );
        }
    }
    for token in &expected_jobs {
        assert_eq!(seen.get(token), Some(&1), "{token} is recorded once");
    }
    assert!(
        during.iter().all(|t| !seen.contains_key(t)),
        "jobs enqueued after the cut are not on the new primary"
    );

    // A last message: delivered after any duplicate of the earlier ones would have been.
    send(&instance.state, &group, "last").await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the last message arrives",
        || async { count_of("last") == 1 },
    )
    .await;
    let kept: Vec<String> = sqlx::query_scalar(
        "SELECT payload::json->>'token' FROM channel_messages WHERE target = 'failover'",
    )
    .fetch_all(&new_primary)
    .await
    .unwrap();
    for token in sent_before.iter().chain(&sent_after) {
        assert!(kept.contains(token), "{token} is on the new primary");
    }
    for token in &kept {
        assert_eq!(
            count_of(token),
            1,
            "{token} (on the new primary) is delivered once"
        );
    }
    let doubled: Vec<_> = received
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(t, n)| format!("{t}×{n}"))
        .collect();
    assert!(doubled.is_empty(), "delivered twice: {doubled:?}");

    // HTTP: `/readyz` answered all along (a request may wait for the pool) and is ready at the
    // end; how it went is logged.
    probing.cancel();
    let readiness = readiness.lock().unwrap().clone();
    let (last_at, last_status, _) = *readiness.last().unwrap();
    assert_eq!(last_status, 200, "/readyz is ready at the end");
    let failed: Vec<_> = readiness.iter().filter(|r| r.1 != 200).collect();
    let recovered = readiness
        .iter()
        .rev()
        .take_while(|r| r.1 == 200)
        .last()
        .map_or(last_at, |r| r.0 - r.2);
    let slowest = readiness.iter().map(|r| r.2).max().unwrap_or_default();
    let last_failed = match failed.last() {
        Some(r) => format!(
            "the last sent {:?} after the kill",
            (r.0 - r.2).saturating_sub(killed)
        ),
        None => "none".to_owned(),
    };
    eprintln!(
        "failover: /readyz, asked every 50 ms: {} answers, {} not 200 ({last_failed}); the \
         slowest took {slowest:?}",
        readiness.len(),
        failed.len(),
    );
    assert!(recovered.saturating_sub(killed) < Duration::from_secs(30));

    workers_b.shutdown().await;
    instance.workers_a.shutdown().await;
    instance.state.channels.shutdown().await;
    instance.shutdown.cancel();
    instance.db.close().await.unwrap();
}

#[tokio::test]
async fn a_standby_listed_first_is_passed_over() {
    let _log = logs();
    let pair = Pair::start().await;
    // libpq's order: the first read-write host.
    let listed = Instance::open(format!(
        "postgres://hearth@{},{}/hearth",
        host_port(&pair.standby_options()),
        host_port(&pair.primary_options()),
    ))
    .await;
    let on_primary: bool = sqlx::query_scalar("SELECT NOT pg_is_in_recovery()")
        .fetch_one(&listed.db.pool)
        .await
        .unwrap();
    assert!(on_primary, "a standby listed first is passed over");
    enqueue(&listed.db.pool, "fo_a", "listed", false)
        .await
        .unwrap();
    listed.workers_a.shutdown().await;
    listed.state.channels.shutdown().await;
    listed.shutdown.cancel();
    listed.db.close().await.unwrap();
}

#[tokio::test]
async fn a_url_that_leads_only_to_a_standby_is_refused_until_it_is_promoted() {
    let _log = logs();
    let mut pair = Pair::start().await;
    // `hearth serve` on the standby alone.
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"));
    command
        .env("DATABASE_URL", pair.standby_url())
        .env_remove("HEARTH_DIRECT_DATABASE_URL")
        .env("HEARTH_DATA_DIR", dir.path())
        .env("HEARTH_BIND", "127.0.0.1:0")
        .env("HEARTH_DB_ACQUIRE_TIMEOUT", "1s")
        .env("RUST_LOG", "info");
    let (_server, address, mut log) = crate::binary::serve_with(command);
    // Not ready: a standby cannot take writes.
    let client = helpers::client();
    let readyz = format!("{address}/readyz");
    let response = client.get(&readyz).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["database"], "standby", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("DATABASE_URL")),
        "{body}"
    );
    let standby = host_port(&pair.standby_options());
    let line = log
        .find("is in recovery", Duration::from_secs(30))
        .expect("a log line says the server is a standby");
    assert!(
        line.contains(&standby) && line.contains("DATABASE_URL"),
        "the line names the server and the setting: {line}"
    );

    // Promoted: the same process carries on, without a restart.
    pair.kill_primary().await;
    let promoted = Instant::now();
    pair.promote_standby().await;
    eventually(Duration::from_secs(30), "/readyz answers 200", || async {
        client
            .get(&readyz)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    eprintln!(
        "standby only: ready {:?} after the promotion began",
        promoted.elapsed()
    );
}

fn host_port(options: &sqlx::postgres::PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}
