//! The worker runtime that every `hearth serve` and `hearth worker` process runs.
//!
//! Tasks, and how they cooperate:
//!
//! * one **runner** per configured queue fetches as many jobs as it has free slots
//!   (`FOR UPDATE SKIP LOCKED` over the partial index of available jobs) and spawns one task per
//!   job; it sleeps until woken in-process, by NOTIFY, by a finished job or by the poll timer;
//! * the **listener** turns NOTIFY messages into wake-ups, cancellations and pause/resume;
//! * the **completer** writes finished jobs in batches: whatever finished while the previous
//!   batch was being written goes in the next statement;
//! * the **heartbeat** extends the leases of this process's running jobs (and learns of
//!   cancellations and lost leases on the way);
//! * the **notifier** sends the trailing NOTIFY for queues whose enqueue NOTIFY was debounced;
//! * **maintenance** (rescue of expired leases, pruning, schedules) runs every second in the
//!   one instance that wins a transaction-scoped advisory lock.
//!
//! Every write of an outcome is fenced by the lease: `(id, attempt, attempted_at, state =
//! 'running')`. A worker whose lease ran out and whose job was handed to another cannot
//! overwrite the newer attempt. The attempt number alone is not enough after a failover: a
//! lease taken on the old primary and not replicated leaves the job `available` with its old
//! attempt number on the new one, and the next lease there takes the *same* attempt number
//! (possibly in this very process). `attempted_at`, the lease's `now()`, tells the two leases
//! apart, so the first one's heartbeat and outcome are refused and it stops, and the job runs
//! once more and is recorded once. A lease that did reach the new primary matches there and is
//! completed by the worker that holds it.

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::FutureExt;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::{
    enqueue::QueueName,
    job::{JobContext, Outcome},
    kind_limits, maintenance,
    metrics::METRICS,
    registry::{Registry, RunError},
    schedule::Schedule,
    wake,
    workflow::engine::{self, Ended, Event},
};

/// Most jobs fetched in one statement.
const MAX_BATCH: usize = 100;
/// Finished jobs waiting for the completer past which runners stop fetching. A job frees its
/// slot when it finishes, before its outcome is written; without this bound, short jobs let
/// the runners outrun the completer, and thousands of rows that look `running` pile up, each
/// rewritten by every heartbeat and holding back the next batch (seen in `hearth bench jobs`:
/// 17,000 finished jobs still unwritten 5 s after the last one started).
const MAX_UNRECORDED: usize = 2_000;

/// How the worker runtime runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Queues to work and how many jobs of each run at once in this process.
    pub queues: Vec<(QueueName, usize)>,
    /// How often idle runners look for work without being woken (the fallback for missed
    /// notifications and for jobs whose `run_at` arrives).
    pub poll_interval: Duration,
    /// How long a fetched job is leased; heartbeats extend it every third of this.
    pub lease: Duration,
    /// On shutdown, how long running jobs get to finish before they are handed back.
    pub shutdown_grace: Duration,
    /// Finished jobs older than this are pruned.
    pub retention: Duration,
    /// Whether completed jobs are kept in `jobs_done` (for status queries and results) or
    /// deleted outright. Discarded and cancelled jobs are always kept: they are the ones
    /// someone looks into. Not keeping them saves a row and two index entries per job.
    pub keep_completed: bool,
    /// Identifies this process in leases and error histories.
    pub instance: String,
    /// Periodic jobs; every instance declares the same ones, each occurrence is enqueued once.
    pub schedules: Vec<Schedule>,
    /// Where the LISTEN connection and vacuum's advisory lock connect
    /// (`HEARTH_DIRECT_DATABASE_URL`): they need a session. `None`: where the pool connects.
    pub session: Option<PgConnectOptions>,
}

impl WorkerConfig {
    pub fn new(queues: Vec<(QueueName, usize)>) -> Self {
        Self {
            queues,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 86_400),
            keep_completed: true,
            instance: default_instance(),
            schedules: Vec::new(),
            session: None,
        }
    }
}

/// `<hostname>-<pid>-<random>`: unique per process even across container restarts.
pub fn default_instance() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// A job as fetched.
#[derive(Debug)]
struct Fetched {
    id: i64,
    kind: String,
    queue: String,
    args: serde_json::Value,
    attempt: i32,
    max_attempts: i32,
    timeout_ms: Option<i32>,
    expires_at: Option<OffsetDateTime>,
    waited_s: f64,
    /// A workflow step: its outcome moves the workflow on (see [`record_batch`]).
    step: bool,
    /// When the lease was taken (`attempted_at`): with the attempt, what tells this lease from
    /// any other of the job (see the module documentation).
    leased_at: OffsetDateTime,
}

/// A final outcome waiting to be written by the completer.
struct Finish {
    id: i64,
    kind: String,
    attempt: i32,
    state: &'static str,
    result: Option<serde_json::Value>,
    error: Option<String>,
    step: bool,
    leased_at: OffsetDateTime,
}

/// The lease a worker holds on a job: its attempt and when it was taken.
type Lease = (i32, OffsetDateTime);

#[derive(Clone)]
struct RunningJob {
    attempt: i32,
    leased_at: OffsetDateTime,
    cancel: CancellationToken,
    /// Set when the lease was lost: stop without writing anything.
    lease_lost: CancellationToken,
}

/// State shared by the runtime's tasks.
struct Shared {
    pool: PgPool,
    /// `config.session`'s pool (the LISTEN connection, vacuum), or `pool` itself.
    session: PgPool,
    registry: Registry,
    config: WorkerConfig,
    /// Stop fetching (shutdown has begun).
    stop: CancellationToken,
    /// Hand back what still runs (the grace period is over).
    abort: CancellationToken,
    jobs: TaskTracker,
    // A std Mutex: held for map operations only, never across an await.
    running: Mutex<HashMap<i64, RunningJob>>,
    /// Jobs whose final outcome waits for the completer (id → lease). Their leases are still
    /// renewed: a completer slowed by load must not let the rescuer hand them out again.
    finishing: Arc<Mutex<HashMap<i64, Lease>>>,
    finished: mpsc::UnboundedSender<Finish>,
    /// Signalled by the completer after each batch it writes (runners held back by
    /// [`MAX_UNRECORDED`] wait for it).
    recorded: Arc<Notify>,
}

impl Shared {
    /// The state of a new runtime, and the receiving end of its completions channel.
    fn new(
        pool: PgPool,
        registry: Registry,
        config: WorkerConfig,
    ) -> (Self, mpsc::UnboundedReceiver<Finish>) {
        let (finished, finished_rx) = mpsc::unbounded_channel();
        let session = match &config.session {
            Some(options) => {
                let session = crate::db::failover::primary_only(
                    PgPoolOptions::new(),
                    "HEARTH_DIRECT_DATABASE_URL",
                )
                .max_connections(2)
                .min_connections(0)
                .connect_lazy_with(options.clone());
                crate::db::failover::follow(&session);
                session
            }
            None => pool.clone(),
        };
        let shared = Self {
            pool,
            session,
            registry,
            config,
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            jobs: TaskTracker::new(),
            running: Mutex::new(HashMap::new()),
            finishing: Arc::new(Mutex::new(HashMap::new())),
            finished,
            recorded: Arc::new(Notify::new()),
        };
        (shared, finished_rx)
    }
}

/// A running worker runtime. Call [`Workers::shutdown`] to stop it gracefully.
pub struct Workers {
    shared: Arc<Shared>,
    /// The runners, apart from the other tasks: they alone spawn jobs, so the jobs to wait for
    /// are all known only once every runner has returned (see [`Workers::shutdown`]).
    runners: TaskTracker,
    /// To stop a runner whose fetch outlives the shutdown's bounds.
    runner_handles: Vec<tokio::task::AbortHandle>,
    services: TaskTracker,
    service_stop: CancellationToken,
}

impl Workers {
    /// Starts runners for the configured queues and the supporting tasks.
    pub fn start(pool: PgPool, registry: Registry, config: WorkerConfig) -> Self {
        let (shared, finished_rx) = Shared::new(pool, registry, config);
        let shared = Arc::new(shared);
        let runners = TaskTracker::new();
        let runner_handles = shared
            .config
            .queues
            .clone()
            .into_iter()
            .map(|(queue, concurrency)| {
                runners
                    .spawn(run_queue(shared.clone(), queue, concurrency))
                    .abort_handle()
            })
            .collect();
        let services = TaskTracker::new();
        let service_stop = CancellationToken::new();
        services.spawn(listen(shared.clone(), service_stop.clone()));
        services.spawn(complete(
            shared.finishing.clone(),
            shared.recorded.clone(),
            shared.pool.clone(),
            shared.config.instance.clone(),
            shared.config.keep_completed,
            finished_rx,
        ));
        services.spawn(heartbeat(shared.clone(), service_stop.clone()));
        services.spawn(flush_notifications(
            shared.pool.clone(),
            service_stop.clone(),
        ));
        services.spawn(maintenance::run(
            shared.pool.clone(),
            shared.session.clone(),
            shared.config.retention,
            shared.config.schedules.clone(),
            service_stop.clone(),
        ));
        tracing::info!(instance = %shared.config.instance, queues = ?shared.config.queues, "job workers started");
        Self {
            shared,
            runners,
            runner_handles,
            services,
            service_stop,
        }
    }

    /// Jobs running in this process right now.
    pub fn running(&self) -> usize {
        self.shared.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Jobs of this process not yet written to their outcome: running, or finished and waiting
    /// for the completer. Zero means every job this process took has its outcome recorded.
    pub fn unrecorded(&self) -> usize {
        self.shared.jobs.len() + lock(&self.shared.finishing).len()
    }

    /// Stops fetching, lets running jobs finish within the grace period, hands back (returns to
    /// the queue without using an attempt) whatever is still running, writes the last
    /// completions and stops the supporting tasks.
    pub async fn shutdown(self) {
        let Self {
            shared,
            runners,
            runner_handles,
            services,
            service_stop,
        } = self;
        shared.stop.cancel();
        runners.close();
        // The runners first: one whose fetch is in flight starts the jobs it leased once the
        // fetch returns. Until every runner has returned, no job running can mean one about to
        // start, which neither the grace period nor the hand-back would then reach, and whose
        // hold on `shared` would keep the completer (and this) waiting for as long as it runs.
        let grace = shared.config.shutdown_grace;
        let settled = async {
            runners.wait().await;
            shared.jobs.close();
            shared.jobs.wait().await;
        };
        if tokio::time::timeout(grace, settled).await.is_err() {
            tracing::warn!(
                still_running = lock(&shared.running).len(),
                ?grace,
                "grace period over; handing back unfinished jobs"
            );
            shared.abort.cancel();
            // A fetch still in flight waits on the server; the jobs it leases see the abort as
            // they start and are handed back. It gets at most a lease: past that, what it leased
            // would be rescued anyway.
            let lease = shared.config.lease;
            if tokio::time::timeout(lease, runners.wait()).await.is_err() {
                tracing::warn!(
                    ?lease,
                    "a fetch is still running after the lease; stopping it (any job it leases is rescued when the lease expires)"
                );
                for runner in &runner_handles {
                    runner.abort();
                }
                runners.wait().await;
            }
            shared.jobs.close();
            shared.jobs.wait().await;
        }
        service_stop.cancel();
        // The completer stops once every sender is gone; the last one lives in `shared`.
        drop(shared);
        services.close();
        services.wait().await;
        tracing::info!("job workers stopped");
    }
}

#[tracing::instrument(skip(shared, concurrency), fields(queue = %queue))]
async fn run_queue(shared: Arc<Shared>, queue: QueueName, concurrency: usize) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let local = wake::local(queue.as_str());
    let mut limits = Limits::default();
    let mut limits_checked: Option<std::time::Instant> = None;
    loop {
        // Registered before fetching, so a wake-up that arrives during the fetch is not lost.
        let woken = local.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if shared.stop.is_cancelled() {
            return;
        }
        if lock(&shared.finishing).len() >= MAX_UNRECORDED {
            let recorded = shared.recorded.notified();
            tokio::pin!(recorded);
            recorded.as_mut().enable();
            // Checked again once registered: the batch may have been written meanwhile.
            if lock(&shared.finishing).len() >= MAX_UNRECORDED {
                tokio::select! {
                    () = recorded => {}
                    () = tokio::time::sleep(shared.config.poll_interval) => {}
                    () = shared.stop.cancelled() => return,
                }
            }
            continue;
        }
        // Limits change rarely; re-read whether there are any at most once per poll interval.
        if limits_checked.is_none_or(|at| at.elapsed() >= shared.config.poll_interval) {
            match Limits::read(&shared.pool, &queue).await {
                Ok(found) => limits = found,
                Err(e) => tracing::warn!(error = %e, "cannot read queue and kind limits"),
            }
            limits_checked = Some(std::time::Instant::now());
        }
        let free = slots.available_permits().min(MAX_BATCH);
        let mut more = false;
        if free > 0 {
            match fetch(&shared, &queue, free, &limits).await {
                Ok(jobs) => {
                    more = jobs.len() == free;
                    for job in jobs {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        let shared_for_job = shared.clone();
                        shared.jobs.spawn(async move {
                            let queue = job.queue.clone();
                            execute(&shared_for_job, job).await;
                            drop(permit);
                            wake::wake_local(&queue);
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot fetch jobs; retrying after the poll interval");
                }
            }
        }
        if more {
            continue;
        }
        tokio::select! {
            () = &mut woken => {}
            () = tokio::time::sleep(shared.config.poll_interval) => {}
            () = shared.stop.cancelled() => return,
        }
    }
}

/// The limits a runner obeys, re-read once per poll interval.
#[derive(Debug, Default)]
struct Limits {
    /// The queue has a global or rate limit (`job_queue_limits`).
    queue: bool,
    /// Kinds with a rate limit (`job_kind_limits`, see [`kind_limits`]), by name.
    kinds: Vec<String>,
}

impl Limits {
    async fn read(pool: &PgPool, queue: &QueueName) -> Result<Self, sqlx::Error> {
        Ok(Self {
            queue: has_limits(pool, queue).await?,
            kinds: sqlx::query_scalar("SELECT kind FROM job_kind_limits ORDER BY kind")
                .fetch_all(pool)
                .await?,
        })
    }
}

/// Leases up to `limit` due jobs of `queue`. A queue with limits (global concurrency or rate,
/// see `job_queue_limits`), or any kind with a rate limit, takes the serialised path so the
/// limits hold exactly.
async fn fetch(
    shared: &Shared,
    queue: &QueueName,
    limit: usize,
    limits: &Limits,
) -> Result<Vec<Fetched>, sqlx::Error> {
    if !limits.queue && limits.kinds.is_empty() {
        let mut conn = shared.pool.acquire().await?;
        return lease(&mut conn, shared, queue, limit as i64, None, None).await;
    }
    let mut tx = shared.pool.begin().await?;
    let jobs = if limits.queue {
        fetch_queue_limited(&mut tx, shared, queue, limit, &limits.kinds).await?
    } else {
        take(&mut tx, shared, queue, limit as i64, &limits.kinds).await?
    };
    tx.commit().await?;
    Ok(jobs)
}

/// Leases up to `allowed` jobs, at most what each limited kind's window has left: the other
/// kinds first, then each limited kind in name order under its own lock.
async fn take(
    tx: &mut sqlx::PgConnection,
    shared: &Shared,
    queue: &QueueName,
    allowed: i64,
    kinds: &[String],
) -> Result<Vec<Fetched>, sqlx::Error> {
    if kinds.is_empty() {
        return lease(tx, shared, queue, allowed, None, None).await;
    }
    let mut jobs = lease(tx, shared, queue, allowed, Some(kinds), None).await?;
    for kind in kinds {
        let left = allowed - jobs.len() as i64;
        if left <= 0 {
            break;
        }
        let room = kind_limits::allowance(tx, kind).await?.min(left);
        if room > 0 {
            let taken = lease(tx, shared, queue, room, None, Some(kind)).await?;
            kind_limits::took(tx, kind, taken.len()).await?;
            jobs.extend(taken);
        }
    }
    Ok(jobs)
}

/// The queue-limited fetch (global concurrency and rate of `job_queue_limits`), in `tx`.
async fn fetch_queue_limited(
    tx: &mut sqlx::PgConnection,
    shared: &Shared,
    queue: &QueueName,
    limit: usize,
    kinds: &[String],
) -> Result<Vec<Fetched>, sqlx::Error> {
    // Taken in its own statement: the counts below must be read after the lock is held,
    // and a statement's snapshot is taken when it starts.
    sqlx::query_scalar!(
        r#"SELECT pg_advisory_xact_lock(hashtext('hearth_queue:' || $1)) IS NULL AS "locked!""#,
        queue.as_str()
    )
    .fetch_one(&mut *tx)
    .await?;
    let allowed = sqlx::query_scalar!(
        r#"
        SELECT least(
                 $2::bigint,
                 coalesce(l.global_limit - (SELECT count(*) FROM jobs WHERE queue = $1 AND state = 'running'), $2),
                 coalesce(CASE WHEN l.window_start + make_interval(secs => l.rate_period_s) <= now() THEN l.rate_limit
                               ELSE l.rate_limit - l.window_count END, $2)
               ) AS "allowed!"
          FROM job_queue_limits l
         WHERE l.queue = $1
        "#,
        queue.as_str(),
        limit as i64
    )
    .fetch_optional(&mut *tx)
    .await?
    .unwrap_or(limit as i64);
    let jobs = if allowed > 0 {
        take(&mut *tx, shared, queue, allowed, kinds).await?
    } else {
        Vec::new()
    };
    sqlx::query!(
        "UPDATE job_queue_limits
            SET window_start = CASE WHEN window_start + make_interval(secs => rate_period_s) <= now() THEN now() ELSE window_start END,
                window_count = CASE WHEN window_start + make_interval(secs => rate_period_s) <= now() THEN $2 ELSE window_count + $2 END
          WHERE queue = $1 AND rate_limit IS NOT NULL AND $2 > 0",
        queue.as_str(),
        jobs.len() as i32
    )
    .execute(&mut *tx)
    .await?;
    Ok(jobs)
}

/// Whether `queue` has limits in force (re-read by runners once per poll interval).
async fn has_limits(pool: &PgPool, queue: &QueueName) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM job_queue_limits WHERE queue = $1) AS "limited!""#,
        queue.as_str()
    )
    .fetch_one(pool)
    .await
}

/// The fetch statement: the next due jobs by priority and time, skipping rows other workers
/// hold, leased to this instance.
///
/// `except` leaves out jobs of these kinds, `only` takes jobs of this kind alone (the kind rate
/// limits of [`take`]); both `None` on the plain path.
async fn lease(
    conn: &mut sqlx::PgConnection,
    shared: &Shared,
    queue: &QueueName,
    limit: i64,
    except: Option<&[String]>,
    only: Option<&str>,
) -> Result<Vec<Fetched>, sqlx::Error> {
    sqlx::query_as!(
        Fetched,
        r#"
        -- Leasing need not wait for the WAL flush: if a crash loses the lease, the job is
        -- simply available again. This saves an fsync on every pickup.
        WITH relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)),
        next AS (
            SELECT id FROM jobs
             WHERE state = 'available' AND queue = $1 AND run_at <= now()
               AND NOT EXISTS (SELECT 1 FROM job_queues_paused p WHERE p.queue = $1)
               AND ($5::text[] IS NULL OR kind <> ALL ($5)) AND ($6::text IS NULL OR kind = $6)
             ORDER BY priority, run_at, id
             LIMIT $2
             FOR UPDATE SKIP LOCKED
        )
        UPDATE jobs j
           SET state = 'running', attempt = j.attempt + 1, attempted_at = now(),
               lease_until = now() + make_interval(secs => $3), locked_by = $4
          FROM relaxed
         -- `= ANY(array)`, not a join with `next`: with stale statistics (the usual state of
         -- a queue table) the planner walked all of `jobs` once per fetched row.
         WHERE j.id = ANY (ARRAY(SELECT id FROM next))
        RETURNING j.id, j.kind, j.queue, j.args, j.attempt, j.max_attempts, j.timeout_ms, j.expires_at,
                  extract(epoch FROM now() - j.run_at)::float8 AS "waited_s!",
                  j.workflow_id IS NOT NULL AS "step!", j.attempted_at AS "leased_at!"
        "#,
        queue.as_str(),
        limit,
        shared.config.lease.as_secs_f64(),
        shared.config.instance,
        except,
        only,
    )
    .fetch_all(&mut *conn)
    .await
}

/// What to do with a job after an attempt.
enum Decision {
    Finish(&'static str, Option<serde_json::Value>, Option<String>),
    Retry(Duration, String),
    Snooze(Duration),
    HandBack,
    /// The lease was lost; another worker owns the job now. Write nothing.
    Abandon,
}

async fn execute(shared: &Shared, job: Fetched) {
    let span = tracing::info_span!("job", id = job.id, kind = %job.kind, queue = %job.queue, attempt = job.attempt);
    async {
        METRICS.started.add(1);
        METRICS
            .queue_wait
            .record(Duration::from_secs_f64(job.waited_s.max(0.0)));
        let started = std::time::Instant::now();
        let decision = decide(shared, &job).await;
        METRICS.run_time.record(started.elapsed());
        record(shared, &job, decision).await;
    }
    .instrument(span)
    .await;
}

async fn decide(shared: &Shared, job: &Fetched) -> Decision {
    let discard = |reason: String| Decision::Finish("discarded", None, Some(reason));
    if job
        .expires_at
        .is_some_and(|at| at < OffsetDateTime::now_utc())
    {
        return discard("expired before it could start".into());
    }
    if job.attempt > job.max_attempts {
        return discard(format!(
            "no attempts left: attempt {} of {} was lost with its worker",
            job.attempt - 1,
            job.max_attempts
        ));
    }
    let Some(entry) = shared.registry.get(&job.kind).cloned() else {
        return discard(format!(
            "unknown job kind `{}`: no worker process registers it",
            job.kind
        ));
    };

    let running = RunningJob {
        attempt: job.attempt,
        leased_at: job.leased_at,
        cancel: CancellationToken::new(),
        lease_lost: CancellationToken::new(),
    };
    track(shared, job.id, &running);
    let timeout = job.timeout_ms.map(|ms| Duration::from_millis(ms as u64));
    let soft = soft_limit(job, entry.soft_timeout, timeout);
    let ctx = JobContext {
        id: job.id,
        kind: job.kind.clone(),
        queue: job.queue.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        pool: shared.pool.clone(),
        deps: NO_DEPS.clone(),
        cancel: running.cancel.clone(),
        soft: soft.token.clone(),
        soft_deadline: soft.deadline,
    };
    let attempt = AssertUnwindSafe((entry.handler)(job.args.clone(), ctx)).catch_unwind();
    let timed = async {
        match timeout {
            Some(limit) => tokio::time::timeout(limit, attempt)
                .await
                .map_err(|_| limit),
            None => Ok(attempt.await),
        }
    };
    let outcome = tokio::select! {
        outcome = timed => Some(outcome),
        () = running.cancel.cancelled() => None,
        () = running.lease_lost.cancelled() => {
            forget(shared, job);
            tracing::warn!("lease lost; another worker has the job now");
            return Decision::Abandon;
        }
        () = shared.abort.cancelled() => {
            forget(shared, job);
            return Decision::HandBack;
        }
    };
    forget(shared, job);

    let failed = |error: String| {
        if job.attempt >= job.max_attempts {
            Decision::Finish("discarded", None, Some(error))
        } else {
            Decision::Retry((entry.backoff)(job.attempt), error)
        }
    };
    match outcome {
        None => Decision::Finish("cancelled", None, Some("cancelled while running".into())),
        Some(Err(limit)) => failed(format!("timed out after {limit:?}")),
        Some(Ok(Err(panic))) => failed(format!("panicked: {}", panic_message(&panic))),
        Some(Ok(Ok(Err(RunError::Permanent(reason))))) => discard(reason),
        Some(Ok(Ok(Err(RunError::Failed(error))))) => failed(format!("{error:#}")),
        Some(Ok(Ok(Ok(Outcome::Complete(result))))) => Decision::Finish("completed", result, None),
        Some(Ok(Ok(Ok(Outcome::Snooze(wait))))) => Decision::Snooze(wait),
        Some(Ok(Ok(Ok(Outcome::Cancel(reason))))) => {
            Decision::Finish("cancelled", None, Some(reason))
        }
    }
}

/// An attempt's soft time limit: the token its job is told by, and the timer that fires it
/// (stopped when the attempt ends, however it ends).
struct SoftLimit {
    token: CancellationToken,
    deadline: Option<tokio::time::Instant>,
    _timer: Option<tokio_util::task::AbortOnDropHandle<()>>,
}

/// Arms the kind's soft limit for this attempt. A hard limit at or below it (a job enqueued
/// by name with a shorter timeout, or a workflow step given one) leaves only the hard limit.
fn soft_limit(job: &Fetched, soft: Option<Duration>, hard: Option<Duration>) -> SoftLimit {
    let token = CancellationToken::new();
    let Some(soft) = soft.filter(|soft| hard.is_none_or(|hard| *soft < hard)) else {
        if soft.is_some() {
            tracing::warn!(job_id = job.id, kind = %job.kind, ?hard, "the job's hard time limit is not above its kind's soft limit; only the hard limit applies");
        }
        return SoftLimit {
            token,
            deadline: None,
            _timer: None,
        };
    };
    let deadline = tokio::time::Instant::now() + soft;
    let fire = token.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        fire.cancel();
    });
    SoftLimit {
        token,
        deadline: Some(deadline),
        _timer: Some(tokio_util::task::AbortOnDropHandle::new(timer)),
    }
}

/// Adds a job to the running ones. If this process still runs an older lease of it, the
/// database forgot that lease (a failover lost it, or the job's id was given anew): that attempt
/// stops, unrecorded.
fn track(shared: &Shared, id: i64, running: &RunningJob) {
    if let Some(older) = lock(&shared.running).insert(id, running.clone()) {
        tracing::warn!(
            older_attempt = older.attempt,
            "the job was leased again while an older lease of it still runs here; stopping that one"
        );
        older.lease_lost.cancel();
    }
}

/// Removes `job`'s entry from the running jobs, unless a newer lease of it replaced it.
fn forget(shared: &Shared, job: &Fetched) {
    let mut running = lock(&shared.running);
    if running
        .get(&job.id)
        .is_some_and(|r| (r.attempt, r.leased_at) == (job.attempt, job.leased_at))
    {
        running.remove(&job.id);
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn record(shared: &Shared, job: &Fetched, decision: Decision) {
    let (written, counter) = match decision {
        Decision::Finish(state, result, error) => {
            // Counted by the completer once written: a write the fence refuses is no outcome.
            if let Some(error) = &error {
                tracing::warn!(%state, %error, "job finished");
            }
            let finish = Finish {
                id: job.id,
                kind: job.kind.clone(),
                attempt: job.attempt,
                state,
                result,
                error,
                step: job.step,
                leased_at: job.leased_at,
            };
            lock(&shared.finishing).insert(job.id, (job.attempt, job.leased_at));
            // The completer outlives every job task, so the channel is open.
            let _ = shared.finished.send(finish);
            return;
        }
        Decision::Retry(wait, error) => {
            tracing::warn!(%error, retry_in = ?wait, "attempt failed");
            let written = sqlx::query!(
                "UPDATE jobs
                    SET state = 'available', run_at = now() + make_interval(secs => $3),
                        lease_until = NULL, locked_by = NULL,
                        errors = errors || jsonb_build_object('attempt', attempt, 'error', $4::text, 'at', now(), 'instance', $5::text)
                  WHERE id = $1 AND attempt = $2 AND attempted_at = $6 AND state = 'running'",
                job.id,
                job.attempt,
                wait.as_secs_f64(),
                error,
                shared.config.instance,
                job.leased_at,
            )
            .execute(&shared.pool)
            .await;
            (written, Some(&METRICS.retried))
        }
        Decision::Snooze(wait) => {
            let written = sqlx::query!(
                "UPDATE jobs
                    SET state = 'available', run_at = now() + make_interval(secs => $3),
                        attempt = attempt - 1, lease_until = NULL, locked_by = NULL
                  WHERE id = $1 AND attempt = $2 AND attempted_at = $4 AND state = 'running'",
                job.id,
                job.attempt,
                wait.as_secs_f64(),
                job.leased_at,
            )
            .execute(&shared.pool)
            .await;
            (written, Some(&METRICS.snoozed))
        }
        Decision::HandBack => (hand_back(&shared.pool, job).await, None),
        Decision::Abandon => {
            // The heartbeat found the lease lost before the job ended; nothing is written.
            METRICS.fenced.add(1);
            return;
        }
    };
    match written {
        Ok(done) if done.rows_affected() == 0 => {
            let lost = [Lost {
                id: job.id,
                kind: &job.kind,
                attempt: job.attempt,
            }];
            fenced(&shared.pool, &lost).await;
        }
        Ok(_) => {
            if let Some(counter) = counter {
                counter.add(1);
            }
        }
        Err(e) => {
            crate::db::lost::connection_lost(&e);
            tracing::error!(error = %e, "cannot record the job's outcome; its lease will expire and it will run again");
        }
    }
}

/// A job whose outcome this worker could not write: its lease was lost.
struct Lost<'a> {
    id: i64,
    kind: &'a str,
    attempt: i32,
}

/// Reports outcomes the fence refused: the worker lost the job's lease (it stalled past it, or
/// the database was out for longer), and the job was rescued, or taken and perhaps finished by
/// another worker. Counted as `fenced`, not as the outcome this worker reached, and each
/// logged with why, as far as the job's row still tells (looked up only on this rare path).
async fn fenced(pool: &PgPool, jobs: &[Lost<'_>]) {
    METRICS.fenced.add(jobs.len() as u64);
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    let now = sqlx::query!(
        r#"SELECT i.id AS "id!", j.state AS "running_state?", j.attempt AS "running_attempt?",
                  j.locked_by AS "locked_by?", d.state AS "done_state?", d.attempt AS "done_attempt?"
             FROM unnest($1::bigint[]) AS i(id)
             -- Primary-key lookups, never a join the planner picks (see `finish_batch`).
             LEFT JOIN LATERAL (SELECT state, attempt, locked_by FROM jobs
                                 WHERE id = i.id OFFSET 0) j ON true
             LEFT JOIN LATERAL (SELECT state, attempt FROM jobs_done
                                 WHERE id = i.id OFFSET 0) d ON true"#,
        &ids
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    for job in jobs {
        let row = now.iter().find(|r| r.id == job.id);
        let why = match row {
            Some(r) if r.done_state.is_some() => format!(
                "attempt {} already finished it as {}",
                r.done_attempt.unwrap_or_default(),
                r.done_state.as_deref().unwrap_or_default()
            ),
            Some(r) if r.running_state.as_deref() == Some("running") => format!(
                "attempt {} runs it now, on {}",
                r.running_attempt.unwrap_or_default(),
                r.locked_by.as_deref().unwrap_or("another worker")
            ),
            Some(r) if r.running_state.is_some() => {
                "it was rescued and waits in the queue to run again".to_owned()
            }
            Some(_) => "it no longer exists".to_owned(),
            None => "its current state could not be read".to_owned(),
        };
        tracing::warn!(
            job_id = job.id,
            kind = job.kind,
            attempt = job.attempt,
            %why,
            "lease lost: this worker's outcome for the job was refused"
        );
    }
}

/// Returns a running job to the queue without using up its attempt. It keeps its `run_at`,
/// as a rescued job does (`maintenance::rescue`): it was due before the jobs enqueued since.
async fn hand_back(
    pool: &PgPool,
    job: &Fetched,
) -> Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
    tracing::info!("handing the job back to the queue");
    sqlx::query!(
        "UPDATE jobs
            SET state = 'available', attempt = attempt - 1, lease_until = NULL, locked_by = NULL
          WHERE id = $1 AND attempt = $2 AND attempted_at = $3 AND state = 'running'",
        job.id,
        job.attempt,
        job.leased_at,
    )
    .execute(pool)
    .await
}

/// Writes final outcomes, batching whatever finished while the previous write ran. A failed
/// write (a deadlock, a dropped connection) is retried with backoff before giving up; given up
/// jobs run again once their leases expire.
async fn complete(
    finishing: Arc<Mutex<HashMap<i64, Lease>>>,
    recorded: Arc<Notify>,
    pool: PgPool,
    instance: String,
    keep_completed: bool,
    mut finished: mpsc::UnboundedReceiver<Finish>,
) {
    let mut batch = Vec::new();
    while finished.recv_many(&mut batch, 1000).await > 0 {
        // `finish_batch` locks rows in the batch's order; by id, as the heartbeat does.
        batch.sort_unstable_by_key(|f: &Finish| f.id);
        let mut wait = Duration::from_millis(20);
        for attempt in 1..=6 {
            match record_batch(&pool, &instance, keep_completed, &batch).await {
                Ok(refused) => {
                    tally(&pool, &batch, &refused).await;
                    break;
                }
                Err(e) if attempt < 6 => {
                    crate::db::lost::connection_lost(&e);
                    tracing::warn!(error = %e, jobs = batch.len(), "cannot record finished jobs yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => {
                    tracing::error!(error = %e, jobs = batch.len(), "cannot record finished jobs; their leases will expire and they will run again");
                }
            }
        }
        let mut pending = lock(&finishing);
        for finish in &batch {
            pending.remove(&finish.id);
        }
        drop(pending);
        recorded.notify_waiters();
        batch.clear();
    }
}

/// Counts a written batch's outcomes, those the fence `refused` apart (see [`fenced`]).
async fn tally(pool: &PgPool, batch: &[Finish], refused: &[i64]) {
    let mut lost = Vec::new();
    for finish in batch {
        if refused.contains(&finish.id) {
            lost.push(Lost {
                id: finish.id,
                kind: &finish.kind,
                attempt: finish.attempt,
            });
            continue;
        }
        match finish.state {
            "completed" => METRICS.completed.add(1),
            "cancelled" => METRICS.cancelled.add(1),
            _ => METRICS.discarded.add(1),
        }
    }
    if !lost.is_empty() {
        fenced(pool, &lost).await;
    }
}

/// Records a batch of outcomes; returns the ids whose write the fence refused (their lease
/// was lost). A batch without workflow steps is one statement on its own
/// ([`finish_batch`]); one with steps runs that statement and the workflows' moves
/// ([`engine::advance`]) in one transaction, so a step's outcome and what follows from it (the
/// next step enqueued, a group counted down, a chord's callback enqueued) commit together or
/// not at all. Single jobs thus pay nothing for workflows.
async fn record_batch(
    pool: &PgPool,
    instance: &str,
    keep_completed: bool,
    batch: &[Finish],
) -> Result<Vec<i64>, sqlx::Error> {
    if !batch.iter().any(|f| f.step) {
        let mut conn = pool.acquire().await?;
        let (_, refused) = finish_batch(&mut conn, instance, keep_completed, batch).await?;
        return Ok(refused);
    }
    let mut tx = pool.begin().await?;
    let (steps, refused) = finish_batch(&mut tx, instance, keep_completed, batch).await?;
    let effects = engine::advance(&mut tx, steps).await?;
    tx.commit().await?;
    effects.wake();
    Ok(refused)
}

/// Moves finished jobs from `jobs` to `jobs_done` in one statement, fenced by attempt, and
/// releases their unique keys unless the key holds in the final state. With `keep_completed`
/// off, completed jobs are deleted instead of moved, and a key held in `completed` lasts only
/// for its period: without one, nothing would be left to say when it was taken. Workflow steps
/// and jobs someone waits on are always kept (their results are read afterwards).
///
/// Returns the outcomes of the workflow steps it recorded, for [`engine::advance`], and the
/// ids the fence refused (not `running` in the batch's attempt any more); and sends
/// `job.finished` to the channel-layer group `job.<id>` of each job someone waits on
/// (`notify_done`, see `workflow::wait`).
async fn finish_batch(
    conn: &mut sqlx::PgConnection,
    instance: &str,
    keep_completed: bool,
    batch: &[Finish],
) -> Result<(Vec<Event>, Vec<i64>), sqlx::Error> {
    let ids: Vec<i64> = batch.iter().map(|f| f.id).collect();
    let attempts: Vec<i32> = batch.iter().map(|f| f.attempt).collect();
    let leased: Vec<OffsetDateTime> = batch.iter().map(|f| f.leased_at).collect();
    let states: Vec<String> = batch.iter().map(|f| f.state.to_owned()).collect();
    let results: Vec<Option<serde_json::Value>> = batch.iter().map(|f| f.result.clone()).collect();
    let errors: Vec<Option<String>> = batch.iter().map(|f| f.error.clone()).collect();
    let rows = sqlx::query!(
        r#"
        -- Recording need not wait for the WAL flush either: an outcome a crash loses leaves
        -- the job `running` under a lease that expires, and it runs again (at-least-once, as
        -- after any lost worker). This saves an fsync on every batch.
        WITH relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)),
        -- Every table is reached through an index lookup per job or `= ANY(array)`, never
        -- through a join the planner picks: `jobs` churns so fast that its statistics are
        -- always wrong (it believed a few rows while thousands were running), and the joins
        -- it chose then compared every job with every input row, quadratic in the batch.
        --
        -- Each job is locked on its own through the primary key, in the batch's order (by id,
        -- as the heartbeat locks, so the two never deadlock). `OFFSET 0` keeps the attempt and
        -- state checks outside the lookup; pushed into it, they made a partial index of the
        -- running jobs look cheaper than the primary key, and it was walked for every job.
        locked AS (
            SELECT j.*, i.final_state, i.final_result, i.final_error
              FROM relaxed,
                   unnest($1::bigint[], $2::int4[], $3::text[], $4::jsonb[], $5::text[],
                          $8::timestamptz[])
                       AS i(id, attempt, final_state, final_result, final_error, leased_at),
                   LATERAL (SELECT j.id, j.kind, j.queue, j.args, j.priority, j.state, j.attempt,
                                   j.max_attempts, j.unique_key, j.tags, j.errors,
                                   j.progress_percent, j.progress_message, j.created_at,
                                   j.attempted_at, j.owner_id, j.workflow_id, j.workflow_node,
                                   j.notify_done
                              FROM jobs j WHERE j.id = i.id OFFSET 0 FOR UPDATE) j
             WHERE j.attempt = i.attempt AND j.attempted_at = i.leased_at AND j.state = 'running'
        ),
        gone AS (
            DELETE FROM jobs WHERE id = ANY (ARRAY(SELECT id FROM locked))
        ),
        released AS (
            DELETE FROM job_unique_keys
             WHERE key = ANY (ARRAY(
                 SELECT k.key
                   FROM locked l,
                        LATERAL (SELECT key, holds_in, until FROM job_unique_keys
                                  WHERE job_id = l.id OFFSET 0) k
                  WHERE l.unique_key IS NOT NULL
                    AND (NOT (l.final_state = ANY (k.holds_in))
                         OR (l.final_state = 'completed' AND NOT $7 AND k.until IS NULL))
             ))
        ),
        kept AS (
            INSERT INTO jobs_done (id, kind, queue, args, priority, state, attempt, max_attempts, unique_key, tags,
                                   errors, result, progress_percent, progress_message, created_at, attempted_at,
                                   owner_id, workflow_id, workflow_node)
            SELECT id, kind, queue, args, priority, final_state, attempt, max_attempts, unique_key, tags,
                   CASE WHEN final_error IS NULL THEN errors
                        ELSE errors || jsonb_build_object('attempt', attempt, 'error', final_error, 'at', now(), 'instance', $6::text)
                   END,
                   final_result, progress_percent, progress_message, created_at, attempted_at, owner_id,
                   workflow_id, workflow_node
              FROM locked
             WHERE $7 OR final_state <> 'completed' OR workflow_id IS NOT NULL OR notify_done
        ),
        -- Wakes whoever waits on these jobs (only jobs with a waiter pay for this).
        announced AS (
            INSERT INTO channel_messages (target, is_group, payload)
            SELECT 'job.' || id, true,
                   json_build_object('type', 'job.finished', 'id', id, 'state', final_state)::text
              FROM locked WHERE notify_done
            RETURNING 1
        )
        SELECT id, workflow_id, workflow_node, final_state, final_result, final_error,
               NULL::bigint[] AS refused
          FROM locked WHERE workflow_id IS NOT NULL
        UNION ALL
        -- One NOTIFY for the readers if any message was written; a row of NULLs, skipped.
        SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL
          FROM (SELECT pg_notify('hearth_channels', '') FROM announced LIMIT 1) AS notified
        UNION ALL
        -- The jobs the fence refused (a lost lease), in one row and only when there are any:
        -- they are counted and reported apart, not as the outcome this worker reached.
        SELECT NULL, NULL, NULL, NULL, NULL, NULL, refused
          FROM (SELECT ARRAY(SELECT unnest($1::bigint[]) EXCEPT SELECT id FROM locked) AS refused) r
         WHERE cardinality(refused) > 0
        "#,
        &ids,
        &attempts,
        &states,
        &results as &[Option<serde_json::Value>],
        &errors as &[Option<String>],
        instance,
        keep_completed,
        &leased,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut steps = Vec::new();
    let mut refused = Vec::new();
    for row in rows {
        if let Some(ids) = row.refused {
            refused = ids;
            continue;
        }
        // A step's row always has its state: it is the batch's own, never NULL.
        let (Some(workflow), Some(node), Some(state)) =
            (row.workflow_id, row.workflow_node, row.final_state)
        else {
            continue;
        };
        steps.push(Event {
            workflow,
            node,
            ended: Ended::from_job_state(&state),
            result: row.final_result,
            error: row.final_error,
            lazy: false,
        });
    }
    Ok((steps, refused))
}

/// Extends the leases of running jobs; cancels those whose cancellation was requested and
/// abandons those whose lease was lost.
async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let mut every = tokio::time::interval(shared.config.lease / 3);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let running: Vec<(i64, RunningJob)> = lock(&shared.running)
            .iter()
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        let finishing: Vec<(i64, Lease)> = lock(&shared.finishing)
            .iter()
            .map(|(id, lease)| (*id, *lease))
            .collect();
        if running.is_empty() && finishing.is_empty() {
            continue;
        }
        let mut leases: Vec<(i64, Lease)> = running
            .iter()
            .map(|(id, r)| (*id, (r.attempt, r.leased_at)))
            .chain(finishing)
            .collect();
        // Locked in id order, as the completer does.
        leases.sort_unstable();
        let (ids, leases): (Vec<i64>, Vec<Lease>) = leases.into_iter().unzip();
        let (attempts, leased): (Vec<i32>, Vec<OffsetDateTime>) = leases.into_iter().unzip();
        let extended = sqlx::query!(
            "WITH mine AS (
                 -- One primary-key lookup per job, in id order (see `finish_batch`).
                 SELECT j.id FROM unnest($1::bigint[], $2::int4[], $4::timestamptz[])
                                  AS r(id, attempt, leased_at),
                      LATERAL (SELECT j.id, j.attempt, j.attempted_at, j.state FROM jobs j
                                WHERE j.id = r.id OFFSET 0 FOR UPDATE) j
                  WHERE j.attempt = r.attempt AND j.attempted_at = r.leased_at
                    AND j.state = 'running'
             )
             UPDATE jobs j SET lease_until = now() + make_interval(secs => $3)
              WHERE j.id = ANY (ARRAY(SELECT id FROM mine))
             RETURNING j.id, j.cancel_requested",
            &ids,
            &attempts,
            shared.config.lease.as_secs_f64(),
            &leased,
        )
        .fetch_all(&shared.pool)
        .await;
        match extended {
            Ok(rows) => {
                let extended: HashMap<i64, bool> = rows
                    .into_iter()
                    .map(|r| (r.id, r.cancel_requested))
                    .collect();
                for (id, job) in &running {
                    match extended.get(id) {
                        Some(true) => job.cancel.cancel(),
                        Some(false) => {}
                        None => job.lease_lost.cancel(),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot extend job leases"),
        }
    }
}

/// Wake-ups and control messages from other instances (and from this one's control calls).
async fn listen(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        // Shutdown waits for this task, and connecting can wait out the pool's acquire timeout.
        let subscribed = tokio::select! {
            () = stop.cancelled() => return,
            subscribed = subscribe(&shared.session) => subscribed,
        };
        let mut listener = match subscribed {
            Ok(listener) => listener,
            Err(e) => {
                // A server that refuses LISTEN (a standby) refuses it again at once: without the
                // pause this loop spun, and without the stop it never ended.
                tracing::warn!(error = %e, "cannot LISTEN for job notifications; polling meanwhile");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = listener.recv() => message,
            };
            match message {
                Ok(n) if n.channel() == wake::CHANNEL => wake::wake_local(n.payload()),
                Ok(n) => control(&shared, n.payload()),
                Err(e) => {
                    tracing::warn!(error = %e, "job notification connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}

/// A connection of `session` that listens on the job channels.
async fn subscribe(session: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(session).await?;
    listener.listen_all([wake::CHANNEL, wake::CONTROL]).await?;
    Ok(listener)
}

fn control(shared: &Shared, message: &str) {
    match message.split_once(':') {
        Some(("cancel", id)) => {
            if let Ok(id) = id.parse::<i64>()
                && let Some(job) = lock(&shared.running).get(&id)
            {
                tracing::info!(job_id = id, "cancelling running job");
                job.cancel.cancel();
            }
        }
        Some(("resume", queue)) => wake::wake_local(queue),
        Some(("pause", _)) => {}
        _ => tracing::warn!(%message, "unknown job control message"),
    }
}

/// Sends the trailing NOTIFY for queues whose enqueue-time NOTIFY was debounced.
async fn flush_notifications(pool: PgPool, stop: CancellationToken) {
    let mut every = tokio::time::interval(wake::DEBOUNCE);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let pending = wake::take_pending();
        if pending.is_empty() {
            continue;
        }
        if let Err(e) = sqlx::query!(
            "SELECT pg_notify('hearth_jobs', q) FROM unnest($1::text[]) AS q",
            &pending
        )
        .execute(&pool)
        .await
        {
            tracing::warn!(error = %e, "cannot send job notifications");
        }
    }
}

/// Fetches one available job of `queue` and runs it to its recorded outcome in this task.
/// Returns its id, or `None` if nothing was due. (The building block of [`super::testing`].)
pub async fn run_one(
    pool: &PgPool,
    registry: &Registry,
    queue: &QueueName,
) -> Result<Option<i64>, sqlx::Error> {
    let config = WorkerConfig {
        instance: format!("inline-{}", std::process::id()),
        ..WorkerConfig::new(Vec::new())
    };
    let (shared, mut finished_rx) = Shared::new(pool.clone(), registry.clone(), config);
    let limits = Limits::read(pool, queue).await?;
    let Some(job) = fetch(&shared, queue, 1, &limits).await?.pop() else {
        return Ok(None);
    };
    let id = job.id;
    execute(&shared, job).await;
    drop(shared);
    let mut batch = Vec::new();
    finished_rx.recv_many(&mut batch, 10).await;
    if !batch.is_empty() {
        let refused = record_batch(pool, "inline", true, &batch).await?;
        tally(pool, &batch, &refused).await;
    }
    Ok(Some(id))
}

/// The context every run starts from; the registry swaps in its kind's dependencies. One
/// shared `()` rather than an allocation per run.
static NO_DEPS: std::sync::LazyLock<Arc<()>> = std::sync::LazyLock::new(|| Arc::new(()));
