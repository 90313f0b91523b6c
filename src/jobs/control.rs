//! Inspecting and steering jobs: status, listing, cancel, retry, pause and resume.
//!
//! Used by `GET /api/jobs/{id}`, the `hearth jobs` subcommands and the operations pages.
//! Pause, resume and running-job cancellation reach every instance: pause through the
//! `job_queues_paused` table every fetch checks, cancellation through NOTIFY (and the
//! `cancel_requested` flag the heartbeat reads, in case a notification is missed).

use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::enqueue::QueueName;

/// Everything known about one job.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    pub args: serde_json::Value,
    /// `scheduled`, `available`, `running`, `completed`, `discarded` or `cancelled`.
    pub state: String,
    pub attempt: i32,
    pub max_attempts: i32,
    /// One entry per failed attempt: `{attempt, error, at, instance}`.
    pub errors: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub progress_percent: Option<i16>,
    pub progress_message: Option<String>,
    pub tags: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub run_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// The user it was enqueued for ([`Enqueue::owner`](super::Enqueue::owner)); `None` for a
    /// system job.
    pub owner_id: Option<i64>,
}

pub async fn status(pool: &PgPool, id: i64) -> Result<Option<JobStatus>, sqlx::Error> {
    sqlx::query_as!(
        JobStatus,
        r#"
        SELECT id AS "id!", kind AS "kind!", queue AS "queue!", args AS "args!", state AS "state!",
               attempt AS "attempt!", max_attempts AS "max_attempts!", errors AS "errors!", result,
               progress_percent, progress_message, tags AS "tags!", created_at AS "created_at!", run_at, finished_at,
               owner_id
          FROM job_statuses
         WHERE id = $1
        "#,
        id
    )
    .fetch_optional(pool)
    .await
}

/// The most recent jobs (live and finished), newest first, optionally of one state.
pub async fn list(
    pool: &PgPool,
    state: Option<&str>,
    limit: i64,
) -> Result<Vec<JobStatus>, sqlx::Error> {
    let filter = Filter {
        state: state.map(str::to_owned),
        ..Filter::default()
    };
    search(pool, &filter, limit, 0).await
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cancelled {
    /// It had not started; it is now cancelled.
    Cancelled,
    /// It is running; its worker has been told and will record it as cancelled.
    Requested,
    /// It had already finished.
    AlreadyFinished,
    NotFound,
}

pub async fn cancel(pool: &PgPool, id: i64) -> Result<Cancelled, sqlx::Error> {
    if finish_waiting(pool, id, "cancelled").await? {
        return Ok(Cancelled::Cancelled);
    }
    let running = sqlx::query_scalar!(
        r#"
        WITH flagged AS (UPDATE jobs SET cancel_requested = true WHERE id = $1 AND state = 'running' RETURNING id)
        SELECT pg_notify('hearth_jobs_control', 'cancel:' || id) IS NULL AS "sent!" FROM flagged
        "#,
        id
    )
    .fetch_optional(pool)
    .await?;
    if running.is_some() {
        return Ok(Cancelled::Requested);
    }
    let finished = sqlx::query_scalar!("SELECT id FROM jobs_done WHERE id = $1", id)
        .fetch_optional(pool)
        .await?;
    Ok(if finished.is_some() {
        Cancelled::AlreadyFinished
    } else {
        Cancelled::NotFound
    })
}

/// Puts a discarded or cancelled job back in its queue with one more attempt allowed.
/// Returns false if there is no such finished job.
pub async fn retry(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    let row = sqlx::query_scalar!(
        r#"
        WITH back AS (DELETE FROM jobs_done WHERE id = $1 AND state IN ('discarded', 'cancelled') RETURNING *)
        INSERT INTO jobs (id, kind, queue, args, priority, attempt, max_attempts, unique_key, tags, errors, created_at,
                          owner_id)
        SELECT id, kind, queue, args, priority, attempt, greatest(max_attempts, attempt + 1), unique_key, tags, errors, created_at,
               owner_id
          FROM back
        RETURNING queue
        "#,
        id
    )
    .fetch_optional(pool)
    .await?;
    if let Some(queue) = &row {
        sqlx::query!("SELECT pg_notify('hearth_jobs', $1)", queue)
            .execute(pool)
            .await?;
    }
    Ok(row.is_some())
}

/// Stops every instance from starting jobs of `queue` (running ones finish).
pub async fn pause(pool: &PgPool, queue: &QueueName) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "WITH paused AS (INSERT INTO job_queues_paused (queue) VALUES ($1) ON CONFLICT DO NOTHING)
         SELECT pg_notify('hearth_jobs_control', 'pause:' || $1)",
        queue.as_str()
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn resume(pool: &PgPool, queue: &QueueName) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "WITH resumed AS (DELETE FROM job_queues_paused WHERE queue = $1)
         SELECT pg_notify('hearth_jobs_control', 'resume:' || $1)",
        queue.as_str()
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Limits a queue obeys on every instance (within a poll interval of being set).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueLimits {
    /// Most jobs of the queue running at once across all instances.
    pub global: Option<i32>,
    /// Most jobs started per period (a fixed window that starts with the first job after the
    /// previous window ended).
    pub rate: Option<(i32, std::time::Duration)>,
}

/// Sets (or, with both limits `None`, clears) a queue's limits.
pub async fn set_limits(
    pool: &PgPool,
    queue: &QueueName,
    limits: QueueLimits,
) -> Result<(), sqlx::Error> {
    if limits.global.is_none() && limits.rate.is_none() {
        sqlx::query!(
            "DELETE FROM job_queue_limits WHERE queue = $1",
            queue.as_str()
        )
        .execute(pool)
        .await?;
        return Ok(());
    }
    let (rate, period) = match limits.rate {
        Some((n, period)) => (Some(n), Some(period.as_secs_f64())),
        None => (None, None),
    };
    sqlx::query!(
        "INSERT INTO job_queue_limits (queue, global_limit, rate_limit, rate_period_s) VALUES ($1, $2, $3, $4)
         ON CONFLICT (queue) DO UPDATE
            SET global_limit = EXCLUDED.global_limit, rate_limit = EXCLUDED.rate_limit,
                rate_period_s = EXCLUDED.rate_period_s, window_start = now(), window_count = 0",
        queue.as_str(),
        limits.global,
        rate,
        period,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Discards a job that waits (available or scheduled): it will not run, and stays readable
/// as `discarded` (and can be retried). Running jobs are cancelled instead. Returns false if
/// there is no such waiting job.
pub async fn discard(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    finish_waiting(pool, id, "discarded").await
}

/// Moves a waiting job to the finished jobs as `state` (`cancelled` or `discarded`), and
/// releases its unique key unless the key holds in that state. False if it was not waiting.
/// A workflow step moves its workflow on as a failed step would (its chain stops, its group
/// counts it as failed), in the same transaction; someone waiting on the job is woken.
async fn finish_waiting(pool: &PgPool, id: i64, state: &str) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let moved = sqlx::query!(
        r#"
        WITH gone AS (DELETE FROM jobs WHERE id = $1 AND state = 'available' RETURNING *),
        released AS (
            DELETE FROM job_unique_keys k USING gone g WHERE k.job_id = g.id AND NOT ($2::text = ANY (k.holds_in))
        ),
        moved AS (
            INSERT INTO jobs_done (id, kind, queue, args, priority, state, attempt, max_attempts, unique_key, tags,
                                   errors, progress_percent, progress_message, created_at, attempted_at, owner_id,
                                   workflow_id, workflow_node)
            SELECT id, kind, queue, args, priority, $2::text, attempt, max_attempts, unique_key, tags,
                   errors, progress_percent, progress_message, created_at, attempted_at, owner_id,
                   workflow_id, workflow_node
              FROM gone
        ),
        announced AS (
            INSERT INTO channel_messages (target, is_group, payload)
            SELECT 'job.' || id, true, json_build_object('type', 'job.finished', 'id', id, 'state', $2::text)::text
              FROM gone WHERE notify_done
            RETURNING 1
        )
        SELECT g.workflow_id, g.workflow_node,
               (SELECT count(*) FROM (SELECT pg_notify('hearth_channels', '') FROM announced LIMIT 1) n) AS notified
          FROM gone g
        "#,
        id,
        state,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(moved) = moved else {
        return Ok(false);
    };
    let effects = if let (Some(workflow), Some(node)) = (moved.workflow_id, moved.workflow_node) {
        let event = super::workflow::engine::Event {
            workflow,
            node,
            ended: super::workflow::engine::Ended::from_job_state(state),
            result: None,
            error: Some(format!("{state} by an operator before it ran")),
            lazy: false,
        };
        Some(super::workflow::engine::advance(&mut tx, vec![event]).await?)
    } else {
        None
    };
    tx.commit().await?;
    if let Some(effects) = effects {
        effects.wake();
    }
    Ok(true)
}

/// Makes a waiting job (scheduled for later, or backing off before a retry) due now and
/// wakes the workers. Returns false if there is no such waiting job.
pub async fn run_now(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    let queue = sqlx::query_scalar!(
        "WITH due AS (UPDATE jobs SET run_at = now() WHERE id = $1 AND state = 'available' RETURNING queue)
         SELECT queue FROM due, pg_notify('hearth_jobs', (SELECT queue FROM due))",
        id
    )
    .fetch_optional(pool)
    .await?;
    Ok(queue.is_some())
}

/// What to look for among jobs; every field narrows the search.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Filter {
    /// `scheduled`, `available`, `running`, `completed`, `discarded` or `cancelled`.
    pub state: Option<String>,
    pub queue: Option<String>,
    pub kind: Option<String>,
    pub tag: Option<String>,
    pub id: Option<i64>,
}

impl Filter {
    /// Whether nothing narrows the search: every job matches.
    pub fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.queue.is_none()
            && self.kind.is_none()
            && self.tag.is_none()
            && self.id.is_none()
    }
}

/// How many jobs match `filter`, counted up to `cap` (a count of every job can take a while
/// where millions are kept; past the cap, the caller says "more than").
pub async fn count_matching(pool: &PgPool, filter: &Filter, cap: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        SELECT count(*) AS "n!" FROM (
            SELECT 1 FROM job_statuses
             WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR queue = $2)
               AND ($3::text IS NULL OR kind = $3) AND ($4::text IS NULL OR $4 = ANY (tags))
               AND ($5::bigint IS NULL OR id = $5)
             LIMIT $6) matching
        "#,
        filter.state,
        filter.queue,
        filter.kind,
        filter.tag,
        filter.id,
        cap
    )
    .fetch_one(pool)
    .await
}

/// Jobs matching `filter`, newest first, `limit` from `offset`.
pub async fn search(
    pool: &PgPool,
    filter: &Filter,
    limit: i64,
    offset: i64,
) -> Result<Vec<JobStatus>, sqlx::Error> {
    sqlx::query_as!(
        JobStatus,
        r#"
        SELECT id AS "id!", kind AS "kind!", queue AS "queue!", args AS "args!", state AS "state!",
               attempt AS "attempt!", max_attempts AS "max_attempts!", errors AS "errors!", result,
               progress_percent, progress_message, tags AS "tags!", created_at AS "created_at!", run_at, finished_at,
               owner_id
          FROM job_statuses
         WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR queue = $2)
           AND ($3::text IS NULL OR kind = $3) AND ($4::text IS NULL OR $4 = ANY (tags))
           AND ($5::bigint IS NULL OR id = $5)
         ORDER BY id DESC
         LIMIT $6 OFFSET $7
        "#,
        filter.state,
        filter.queue,
        filter.kind,
        filter.tag,
        filter.id,
        limit,
        offset
    )
    .fetch_all(pool)
    .await
}

/// How many jobs each queue has in each state (finished ones included).
#[derive(Debug, Clone, Serialize)]
pub struct Count {
    pub queue: String,
    pub state: String,
    pub jobs: i64,
}

pub async fn counts(pool: &PgPool) -> Result<Vec<Count>, sqlx::Error> {
    sqlx::query_as!(
        Count,
        r#"SELECT queue AS "queue!", state AS "state!", count(*) AS "jobs!"
             FROM job_statuses GROUP BY 1, 2 ORDER BY 1, 2"#
    )
    .fetch_all(pool)
    .await
}

/// The queues that are paused.
pub async fn paused(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!("SELECT queue FROM job_queues_paused ORDER BY queue")
        .fetch_all(pool)
        .await
}

/// What says a queue is stuck, failing or slow, from the live jobs of every instance.
#[derive(Debug, Clone, Serialize)]
pub struct QueueHealth {
    pub queue: String,
    /// How long the oldest due job has waited for a worker.
    pub oldest_due_s: Option<f64>,
    /// Waiting jobs that failed before and wait for their next attempt.
    pub retrying: i64,
    pub running: i64,
    /// How long the longest-running job has run.
    pub longest_running_s: Option<f64>,
}

pub async fn health(pool: &PgPool) -> Result<Vec<QueueHealth>, sqlx::Error> {
    sqlx::query_as!(
        QueueHealth,
        r#"SELECT queue AS "queue!",
                  extract(epoch FROM now() - min(run_at) FILTER (WHERE state = 'available' AND run_at <= now()))::float8
                      AS oldest_due_s,
                  count(*) FILTER (WHERE state = 'available' AND jsonb_array_length(errors) > 0) AS "retrying!",
                  count(*) FILTER (WHERE state = 'running') AS "running!",
                  extract(epoch FROM now() - min(attempted_at) FILTER (WHERE state = 'running'))::float8
                      AS longest_running_s
             FROM jobs GROUP BY queue ORDER BY queue"#
    )
    .fetch_all(pool)
    .await
}
