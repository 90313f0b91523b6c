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

/// What a member of the test group on the instance received, by token.
struct Member(Arc<Mutex<HashMap<String, u32>>>);

impl Member {
    fn join(instance: &Instance, group: &GroupName) -> Self {
        let received: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let mut member = instance.state.channels.subscribe();
        member.join(group);
        let counts = received.clone();
        tokio::spawn(async move {
            while let Some(delivery) = member.recv().await {
                let message: serde_json::Value = delivery.decode().unwrap();
                let token = message["token"].as_str().unwrap_or_default().to_owned();
                *counts.lock().unwrap().entry(token).or_default() += 1;
            }
        });
        Self(received)
    }

    fn count(&self, token: &str) -> u32 {
        self.0.lock().unwrap().get(token).copied().unwrap_or(0)
    }

    fn all_once(&self, tokens: &[String]) -> bool {
        tokens.iter().all(|t| self.count(t) == 1)
    }

    fn doubled(&self) -> Vec<String> {
        let received = self.0.lock().unwrap();
        let doubled = received.iter().filter(|(_, n)| **n > 1);
        doubled.map(|(t, n)| format!("{t}×{n}")).collect()
    }
}

/// HTTP traffic all along: `/readyz` every 50 ms, with when it answered, what, and how long
/// it took.
struct Readiness {
    answers: Arc<Mutex<Vec<(Duration, u16, Duration)>>>,
    probing: CancellationToken,
}

impl Readiness {
    fn probe(address: &str, started: Instant) -> Self {
        let answers: Arc<Mutex<Vec<(Duration, u16, Duration)>>> = Arc::default();
        let probing = CancellationToken::new();
        let (log, stop, client) = (answers.clone(), probing.clone(), helpers::client());
        let url = format!("{address}/readyz");
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let sent = Instant::now();
                let status = match client.get(&url).send().await {
                    Ok(response) => response.status().as_u16(),
                    Err(_) => 0,
                };
                let answer = (started.elapsed(), status, sent.elapsed());
                log.lock().unwrap().push(answer);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self { answers, probing }
    }

    /// Stops probing; `/readyz` must be ready at the end, within 30 s of the kill. How it
    /// went is logged.
    fn report(self, killed: Duration) {
        self.probing.cancel();
        let answers = self.answers.lock().unwrap().clone();
        let (last_at, last_status, _) = *answers.last().unwrap();
        assert_eq!(last_status, 200, "/readyz is ready at the end");
        let failed: Vec<_> = answers.iter().filter(|r| r.1 != 200).collect();
        let recovered = answers
            .iter()
            .rev()
            .take_while(|r| r.1 == 200)
            .last()
            .map_or(last_at, |r| r.0 - r.2);
        let slowest = answers.iter().map(|r| r.2).max().unwrap_or_default();
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
            answers.len(),
            failed.len(),
        );
        assert!(recovered.saturating_sub(killed) < Duration::from_secs(30));
    }
}

/// The jobs and messages of each phase, by token.
struct Tokens {
    /// Jobs done before the cut.
    before: Vec<String>,
    /// Jobs running at the cut, their leases replicated.
    held: Vec<String>,
    /// Jobs enqueued before the cut and leased after it (their leases are lost).
    unreplicated_lease: Vec<String>,
    /// Jobs enqueued after the cut (lost), running at the kill.
    during: Vec<String>,
    /// Jobs enqueued on the new primary.
    after: Vec<String>,
    sent_before: Vec<String>,
    sent_during: Vec<String>,
    sent_after: Vec<String>,
}

impl Tokens {
    fn new() -> Self {
        let tokens = |prefix: &str, n: usize| (0..n).map(|i| format!("{prefix}-{i}")).collect();
        Self {
            before: tokens("before", 20),
            held: tokens("held", 3),
            unreplicated_lease: tokens("unreplicated-lease", 3),
            // More than the 32 values a sequence logs ahead, so the new primary hands their
            // ids out again.
            during: tokens("during", 40),
            after: tokens("after", 20),
            sent_before: tokens("m-before", 50),
            sent_during: tokens("m-during", 200),
            sent_after: tokens("m-after", 50),
        }
    }

    /// Every job the new primary has.
    fn kept_jobs(&self) -> Vec<String> {
        [
            &self.before,
            &self.held,
            &self.unreplicated_lease,
            &self.after,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }
}

/// The instance, its group member, the group and the tokens.
struct Scene {
    instance: Instance,
    member: Member,
    group: GroupName,
    tokens: Tokens,
}

impl Scene {
    async fn send(&self, token: &str) -> Result<i64, String> {
        send(&self.instance.state, &self.group, token).await
    }

    /// Before: jobs done, long jobs running (their leases replicated), messages delivered;
    /// and jobs for `fo_b`, whose workers start only once replication is cut. All replayed.
    async fn before_the_cut(&self, pair: &Pair) {
        let (pool, t) = (&self.instance.db.pool, &self.tokens);
        for (tokens, queue, hold) in [
            (&t.before, "fo_a", false),
            (&t.held, "fo_a", true),
            (&t.unreplicated_lease, "fo_b", true),
        ] {
            for token in tokens {
                enqueue(pool, queue, token, hold).await.unwrap();
            }
        }
        for token in &t.sent_before {
            self.send(token).await.unwrap();
        }
        eventually(Duration::from_secs(20), "the first jobs run", || async {
            t.before.iter().all(|t| self.instance.runs.of(t).1 == 1)
                && running(pool, &t.held).await == t.held.len() as i64
        })
        .await;
        let delivered = || async { self.member.all_once(&t.sent_before) };
        eventually(
            Duration::from_secs(20),
            "the first messages arrive",
            delivered,
        )
        .await;
        // Recorded outcomes are written with `synchronous_commit = off`: flushed within 200 ms.
        let recorded = || async { self.instance.workers_a.unrecorded() == t.held.len() };
        eventually(
            Duration::from_secs(5),
            "the first outcomes are recorded",
            recorded,
        )
        .await;
        pair.wait_replayed().await;
    }

    /// During: replication is cut, and what the primary commits from now on is lost with it:
    /// `fo_b`'s leases, jobs enqueued and leased, messages sent (and delivered here).
    async fn during_the_cut(&self, pair: &Pair) -> Workers {
        cut_replication(&pair.standby_options()).await;
        let (instance, t) = (&self.instance, &self.tokens);
        let queues = "fo_b:8";
        let workers_b = Instance::workers(
            &instance.config,
            &instance.db,
            &instance.runs,
            queues,
            "instance-b",
        );
        for token in &t.during {
            enqueue(&instance.db.pool, "fo_a", token, true)
                .await
                .unwrap();
        }
        for token in &t.sent_during {
            self.send(token).await.unwrap();
        }
        eventually(
            Duration::from_secs(20),
            "the unreplicated leases are taken",
            || async {
                let pool = &instance.db.pool;
                running(pool, &t.unreplicated_lease).await == t.unreplicated_lease.len() as i64
                    && running(pool, &t.during).await == t.during.len() as i64
                    && self.member.all_once(&t.sent_during)
            },
        )
        .await;
        workers_b
    }

    /// After: jobs enqueued and messages sent, each retried until it is acknowledged. Returns
    /// when the first write was.
    async fn after_the_failover(&self, started: Instant) -> Duration {
        let mut first_write = None;
        for token in &self.tokens.after {
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Err(e) = enqueue(&self.instance.db.pool, "fo_a", token, false).await {
                assert!(Instant::now() < deadline, "enqueue after the failover: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            first_write.get_or_insert(started.elapsed());
        }
        for token in &self.tokens.sent_after {
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Err(e) = self.send(token).await {
                assert!(Instant::now() < deadline, "send after the failover: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        first_write.unwrap()
    }

    /// Every job the new primary has ends completed, recorded once, by its own run, which ran
    /// to its end once; held leases were honoured, lost ones started once more.
    async fn check_jobs(&self, new_primary: &PgPool, workers_b: &Workers) {
        let (runs, t) = (&self.instance.runs, &self.tokens);
        let kept = t.kept_jobs();
        eventually(Duration::from_secs(60), "every job is done", || async {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs_done WHERE state = 'completed' AND args->>'token' = ANY($1)",
            )
            .bind(&kept)
            .fetch_one(new_primary)
            .await
            .unwrap_or(0);
            done == kept.len() as i64
        })
        .await;
        // Until every run this process started has ended (a stale one would finish late).
        eventually(Duration::from_secs(30), "every run ends", || async {
            self.instance.workers_a.unrecorded() == 0 && workers_b.unrecorded() == 0
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
        .fetch_all(new_primary)
        .await
        .unwrap();
        let mut seen = HashMap::new();
        for (token, state, attempt, result, errors) in &rows {
            assert_eq!(state, "completed", "{token}: {errors}");
            let recorded = result.as_ref().and_then(|r| r["token"].as_str());
            assert_eq!(
                recorded,
                Some(token.as_str()),
                "{token}'s outcome is its own run's"
            );
            assert_eq!(runs.of(token).1, 1, "{token} ran to its end once");
            *seen.entry(token.clone()).or_insert(0) += 1;
            if t.held.contains(token) {
                let honoured = (*attempt, runs.of(token).0);
                assert_eq!(
                    honoured,
                    (1, 1),
                    "{token}: its lease reached the new primary and was honoured"
                );
            }
            if t.unreplicated_lease.contains(token) {
                let again = (*attempt, runs.of(token).0);
                assert_eq!(
                    again,
                    (1, 2),
                    "{token}: its lease was lost, so it started once more"
                );
            }
        }
        for token in &kept {
            assert_eq!(seen.get(token), Some(&1), "{token} is recorded once");
        }
        let lost = t.during.iter().all(|t| !seen.contains_key(t));
        assert!(
            lost,
            "jobs enqueued after the cut are not on the new primary"
        );
    }

    /// Every message the new primary has is delivered once, and none twice.
    async fn check_messages(&self, new_primary: &PgPool) {
        // A last message: delivered after any duplicate of the earlier ones would have been.
        self.send("last").await.unwrap();
        let last = || async { self.member.count("last") == 1 };
        eventually(Duration::from_secs(30), "the last message arrives", last).await;
        let kept: Vec<String> = sqlx::query_scalar(
            "SELECT payload::json->>'token' FROM channel_messages WHERE target = 'failover'",
        )
        .fetch_all(new_primary)
        .await
        .unwrap();
        for token in self
            .tokens
            .sent_before
            .iter()
            .chain(&self.tokens.sent_after)
        {
            assert!(kept.contains(token), "{token} is on the new primary");
        }
        for token in &kept {
            let count = self.member.count(token);
            assert_eq!(count, 1, "{token} (on the new primary) is delivered once");
        }
        let doubled = self.member.doubled();
        assert!(doubled.is_empty(), "delivered twice: {doubled:?}");
    }
}

#[tokio::test]
async fn a_promoted_standby_takes_over_and_no_job_or_message_it_has_is_lost_or_doubled() {
    let _log = logs();
    let mut pair = Pair::start().await;
    let instance = Instance::open(pair.multi_host_url()).await;
    let group = GroupName::parse("failover").unwrap();
    let member = Member::join(&instance, &group);
    let started = Instant::now();
    let readiness = Readiness::probe(&instance.address, started);
    let scene = Scene {
        instance,
        member,
        group,
        tokens: Tokens::new(),
    };
    scene.before_the_cut(&pair).await;
    let workers_b = scene.during_the_cut(&pair).await;

    // The primary dies; the standby is promoted; writes go on.
    let killed = started.elapsed();
    pair.kill_primary().await;
    pair.promote_standby().await;
    let promoted = started.elapsed();
    let first_write = scene.after_the_failover(started).await;
    eprintln!(
        "failover: primary killed at {killed:?}, standby promoted at {promoted:?}, first write \
         acknowledged at {first_write:?} ({:?} after the kill)",
        first_write - killed
    );

    // The leases lost with the old primary are taken again on the new one (their old runs,
    // still held here, must stop); then the held jobs may finish.
    let new_primary = PgPool::connect_with(pair.standby_options()).await.unwrap();
    let lost_leases = &scene.tokens.unreplicated_lease;
    eventually(
        Duration::from_secs(30),
        "the lost leases are taken again",
        || async { running(&new_primary, lost_leases).await == lost_leases.len() as i64 },
    )
    .await;
    scene.instance.runs.release();

    scene.check_jobs(&new_primary, &workers_b).await;
    scene.check_messages(&new_primary).await;
    readiness.report(killed);

    let instance = scene.instance;
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

/// Workers given a pool that leads to a standby (a pool of the caller's, without the
/// platform's refusal of standbys): the standby refuses LISTEN every time, and the workers still
/// stop when asked. (The listener once tried again at once, for ever, without looking at the
/// stop signal: shutdown never ended.)
#[tokio::test]
async fn workers_whose_listen_is_refused_still_stop() {
    let logs = helpers::Logs::default();
    let _capture = logs.capture();
    let pair = Pair::start().await;
    let standby = PgPool::connect_with(pair.standby_options()).await.unwrap();
    let config = WorkerConfig {
        shutdown_grace: Duration::from_millis(100),
        ..WorkerConfig::new(hearth::jobs::parse_queues("fo_a:1").unwrap())
    };
    let workers = Workers::start(standby.clone(), Registry::new(), config);
    eventually(Duration::from_secs(30), "LISTEN is refused", || async {
        logs.text().contains("cannot LISTEN")
    })
    .await;

    // Only a hang takes this long.
    tokio::time::timeout(Duration::from_secs(60), workers.shutdown())
        .await
        .expect("the workers stop");
    standby.close().await;
}

fn host_port(options: &sqlx::postgres::PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}
