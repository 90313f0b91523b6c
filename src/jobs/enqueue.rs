//! Putting jobs in the queue: one, or thousands in one round trip, on a pool or inside the
//! caller's transaction.
//!
//! ```text
//! let mut tx = pool.begin().await?;
//! let order = insert_order(&mut tx).await?;
//! // The job exists only if the order does: no "task ran before the commit" race.
//! Enqueue::new(&SendReceipt { order })?.queue("mail")?.enqueue_on(&mut tx).await?;
//! tx.commit().await?;
//! ```
//!
//! In a transaction, use [`Enqueue::enqueue_on`]: [`Enqueue::enqueue`] is generic over
//! `Acquire`, and its future is not `Send` when given a transaction's connection, which an axum
//! handler needs.
//!
//! A job with a unique key, alone or in bulk, goes through one `unnest` insert that also claims
//! the keys, so uniqueness holds in bulk too. Jobs without one take cheaper statements: a
//! single-row `INSERT` for one job (the latency-critical path of a request), a plain `unnest`
//! insert for many.

use std::time::Duration;

use sqlx::{Acquire, PgConnection, Postgres};
use time::OffsetDateTime;

use super::{Job, wake};

/// Largest serialized args accepted; big payloads belong in a table the job reads.
pub const MAX_ARGS_BYTES: usize = 256 * 1024;

/// Why a job could not be enqueued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error(
        "the args of `{kind}` are {bytes} bytes, more than the {MAX_ARGS_BYTES} allowed; store big payloads in a table and pass its key"
    )]
    ArgsTooLarge { kind: String, bytes: usize },
    #[error("the args of `{kind}` do not serialize: {source}")]
    Serialize {
        kind: String,
        source: serde_json::Error,
    },
    #[error("invalid queue name {0:?}: use 1-64 characters of a-z, 0-9, `_` and `-`")]
    InvalidQueue(String),
    #[error("max attempts must be at least 1, not {0}")]
    InvalidMaxAttempts(i32),
    #[error("the timeout must be between 1 ms and 24 days, not {0:?}")]
    InvalidTimeout(Duration),
    #[error("{0}")]
    SoftLimit(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A validated queue name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueName(String);

impl QueueName {
    pub fn parse(name: &str) -> Result<Self, EnqueueError> {
        let valid = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(EnqueueError::InvalidQueue(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for QueueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which finished states keep a unique key taken (live states always do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishedState {
    Completed,
    Discarded,
    Cancelled,
}

impl FinishedState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Discarded => "discarded",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A unique key: while a job holding it is waiting or running (and, optionally, after it
/// finished in some states, until `period` ends), enqueuing another job with the same key
/// returns the existing job's id instead of inserting.
#[derive(Debug, Clone)]
pub struct Unique {
    key: String,
    also_finished: Vec<FinishedState>,
    period: Option<Duration>,
}

impl Unique {
    pub fn key(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            also_finished: Vec::new(),
            period: None,
        }
    }

    /// Keep the key taken after the job finishes in these states.
    pub fn also_when(mut self, states: &[FinishedState]) -> Self {
        self.also_finished = states.to_vec();
        self
    }

    /// The key frees itself this long after the job was enqueued, whatever its state
    /// (e.g. "at most one digest per user per hour").
    pub fn for_period(mut self, period: Duration) -> Self {
        self.period = Some(period);
        self
    }
}

/// One job to enqueue, with its options.
#[derive(Debug, Clone)]
pub struct Enqueue {
    kind: String,
    args: serde_json::Value,
    queue: QueueName,
    priority: i16,
    run_at: Option<OffsetDateTime>,
    delay: Option<Duration>,
    max_attempts: i32,
    timeout: Option<Duration>,
    /// The kind's soft time limit, known here only to refuse a hard limit below it (the
    /// worker takes the soft limit from the registry).
    soft_timeout: Option<Duration>,
    unique: Option<Unique>,
    tags: Vec<String>,
    expires_at: Option<OffsetDateTime>,
    owner: Option<i64>,
}

/// The id of an enqueued job; `duplicate` when a unique key matched an existing job, whose id
/// this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: i64,
    pub duplicate: bool,
}

impl Enqueue {
    /// The job's kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The job's args.
    pub fn args(&self) -> &serde_json::Value {
        &self.args
    }

    pub(crate) fn queue_name(&self) -> &str {
        self.queue.as_str()
    }

    pub(crate) fn priority_value(&self) -> i16 {
        self.priority
    }

    pub(crate) fn max_attempts_value(&self) -> i32 {
        self.max_attempts
    }

    /// A job with its kind's defaults.
    pub fn new<J: Job>(job: &J) -> Result<Self, EnqueueError> {
        let args = serde_json::to_value(job).map_err(|source| EnqueueError::Serialize {
            kind: J::KIND.into(),
            source,
        })?;
        Self::raw(J::KIND, args, J::defaults())
    }

    /// A job given by kind name and JSON args (the CLI and benchmarks use this).
    pub fn raw(
        kind: &str,
        args: serde_json::Value,
        defaults: super::job::Defaults,
    ) -> Result<Self, EnqueueError> {
        let bytes = args.to_string().len();
        if bytes > MAX_ARGS_BYTES {
            return Err(EnqueueError::ArgsTooLarge {
                kind: kind.into(),
                bytes,
            });
        }
        defaults
            .check_limits(kind)
            .map_err(EnqueueError::SoftLimit)?;
        Ok(Self {
            kind: kind.into(),
            args,
            queue: QueueName::parse(defaults.queue)?,
            priority: defaults.priority,
            run_at: None,
            delay: None,
            max_attempts: defaults.max_attempts,
            timeout: defaults.timeout,
            soft_timeout: defaults.soft_timeout,
            unique: None,
            tags: Vec::new(),
            expires_at: None,
            owner: None,
        })
    }

    pub fn queue(mut self, queue: &str) -> Result<Self, EnqueueError> {
        self.queue = QueueName::parse(queue)?;
        Ok(self)
    }

    /// Lower runs first.
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    pub fn run_at(mut self, at: OffsetDateTime) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Run no sooner than this long from now (database time).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    pub fn max_attempts(mut self, attempts: i32) -> Result<Self, EnqueueError> {
        if attempts < 1 {
            return Err(EnqueueError::InvalidMaxAttempts(attempts));
        }
        self.max_attempts = attempts;
        Ok(self)
    }

    /// An attempt running longer than this fails. It must stay above the kind's soft time
    /// limit, if it has one (`Defaults::soft_timeout`).
    pub fn timeout(mut self, timeout: Duration) -> Result<Self, EnqueueError> {
        if timeout.is_zero() || timeout.as_millis() > i32::MAX as u128 {
            return Err(EnqueueError::InvalidTimeout(timeout));
        }
        if let Some(soft) = self.soft_timeout.filter(|soft| *soft >= timeout) {
            return Err(EnqueueError::SoftLimit(format!(
                "a hard time limit of {timeout:?} for `{}` is not above its kind's soft limit ({soft:?})",
                self.kind
            )));
        }
        self.timeout = Some(timeout);
        Ok(self)
    }

    pub fn unique(mut self, unique: Unique) -> Self {
        self.unique = Some(unique);
        self
    }

    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// If not started by then, the job is discarded instead of run late.
    pub fn expires_at(mut self, at: OffsetDateTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// The user this job works for: its status (`GET /api/jobs/{id}`) is shown to them and to
    /// administrators only. A job without an owner is a system job, for administrators only.
    /// An opaque id to the jobs platform; the app that enqueues knows what it means.
    pub fn owner(mut self, user_id: i64) -> Self {
        self.owner = Some(user_id);
        self
    }

    /// Enqueues on a pool, a connection or (`&mut *tx`) inside a transaction.
    pub async fn enqueue<'a, A: Acquire<'a, Database = Postgres>>(
        self,
        db: A,
    ) -> Result<Enqueued, EnqueueError> {
        let mut conn = db.acquire().await?;
        self.enqueue_on(&mut conn).await
    }

    /// [`enqueue`](Self::enqueue) on one connection, typically a transaction's (`&mut *tx`):
    /// the job exists only if the transaction commits. Not generic, so callers that hold the
    /// transaction behind a reference keep a `Send` future (what axum handlers need).
    pub async fn enqueue_on(self, conn: &mut PgConnection) -> Result<Enqueued, EnqueueError> {
        if self.unique.is_some() {
            let mut done = insert(&mut *conn, vec![self]).await?;
            return done
                .pop()
                .ok_or(EnqueueError::Database(sqlx::Error::RowNotFound));
        }
        // Without a unique key, a plain single-row INSERT: this is the latency-critical path
        // (one job enqueued by a request), and the bulk statement's unnest machinery costs more.
        super::metrics::METRICS.enqueued.add(1);
        let notify = wake::should_notify(self.queue.as_str());
        let id = sqlx::query_scalar!(
            r#"
            WITH inserted AS (
                INSERT INTO jobs (kind, queue, args, priority, run_at, expires_at, max_attempts, timeout_ms, tags,
                                  owner_id)
                VALUES ($1, $2, $3, $4, coalesce($5, now()) + make_interval(secs => $6), $7, $8, $9, $10, $12)
                RETURNING id
            )
            SELECT id AS "id!" FROM inserted
             WHERE NOT $11 OR (SELECT count(*) FROM (SELECT pg_notify('hearth_jobs', $2)) AS sent) = 1
            "#,
            self.kind,
            self.queue.as_str(),
            self.args,
            self.priority,
            self.run_at,
            self.delay.map_or(0.0, |d| d.as_secs_f64()),
            self.expires_at,
            self.max_attempts,
            self.timeout.map(|t| t.as_millis() as i32),
            &self.tags,
            notify,
            self.owner,
        )
        .fetch_one(&mut *conn)
        .await?;
        wake::wake_local(self.queue.as_str());
        Ok(Enqueued {
            id,
            duplicate: false,
        })
    }
}

/// Enqueues all `jobs` in one statement; the result is in the same order.
pub async fn enqueue_many<'a, A: Acquire<'a, Database = Postgres>>(
    db: A,
    jobs: Vec<Enqueue>,
) -> Result<Vec<Enqueued>, EnqueueError> {
    let mut conn = db.acquire().await?;
    insert(&mut conn, jobs).await
}

/// [`enqueue_many`] on a connection. Not generic, so that callers inside spawned tasks avoid
/// the higher-ranked lifetime trouble of `Acquire` in `Send` futures.
pub(crate) async fn insert(
    conn: &mut sqlx::PgConnection,
    jobs: Vec<Enqueue>,
) -> Result<Vec<Enqueued>, EnqueueError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let n = jobs.len();
    let mut kinds = Vec::with_capacity(n);
    let mut queues = Vec::with_capacity(n);
    let mut args = Vec::with_capacity(n);
    let mut priorities = Vec::with_capacity(n);
    let mut run_ats: Vec<Option<OffsetDateTime>> = Vec::with_capacity(n);
    let mut delays = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut timeouts: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut unique_keys: Vec<Option<String>> = Vec::with_capacity(n);
    let mut tags = Vec::with_capacity(n);
    let mut expires: Vec<Option<OffsetDateTime>> = Vec::with_capacity(n);
    let mut owners: Vec<Option<i64>> = Vec::with_capacity(n);
    for job in &jobs {
        kinds.push(job.kind.clone());
        queues.push(job.queue.0.clone());
        args.push(job.args.clone());
        priorities.push(job.priority);
        run_ats.push(job.run_at);
        delays.push(job.delay.map_or(0.0, |d| d.as_secs_f64()));
        max_attempts.push(job.max_attempts);
        timeouts.push(job.timeout.map(|t| t.as_millis() as i32));
        unique_keys.push(job.unique.as_ref().map(|u| u.key.clone()));
        tags.push(serde_json::json!(job.tags));
        expires.push(job.expires_at);
        owners.push(job.owner);
    }
    let mut distinct_queues: Vec<String> = queues.clone();
    distinct_queues.sort_unstable();
    distinct_queues.dedup();
    let notify: Vec<String> = distinct_queues
        .iter()
        .filter(|q| wake::should_notify(q))
        .cloned()
        .collect();

    super::metrics::METRICS.enqueued.add(n as u64);
    if unique_keys.iter().all(Option::is_none) {
        // Without unique keys, a plain insert: no claims to make or join back, ids from the
        // column default. A third cheaper per row than the statement below (measured in psql
        // with 5,000 rows), and bulk enqueue is most of `hearth bench jobs throughput`.
        // `nextval` runs in the order of the rows (`ORDER BY ord`), so the sorted ids line up
        // with the jobs, whatever order RETURNING gives them in.
        let mut ids = sqlx::query_scalar!(
            r#"
            WITH inserted AS (
                INSERT INTO jobs (kind, queue, args, priority, run_at, expires_at, max_attempts, timeout_ms, tags,
                                  owner_id)
                SELECT i.kind, i.queue, i.args, i.priority,
                       coalesce(i.run_at, now()) + make_interval(secs => i.delay_s),
                       i.expires_at, i.max_attempts, i.timeout_ms,
                       CASE WHEN i.tags = '[]' THEN '{}' ELSE ARRAY(SELECT jsonb_array_elements_text(i.tags)) END,
                       i.owner_id
                  FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::int2[], $5::timestamptz[], $6::float8[],
                              $7::int4[], $8::int4[], $9::jsonb[], $10::timestamptz[], $12::int8[])
                       WITH ORDINALITY AS i(kind, queue, args, priority, run_at, delay_s, max_attempts, timeout_ms,
                                            tags, expires_at, owner_id, ord)
                 ORDER BY i.ord
                RETURNING id
            ),
            notified AS (
                SELECT count(*) AS n FROM (SELECT pg_notify('hearth_jobs', q) FROM unnest($11::text[]) AS q) AS sent
            )
            SELECT id AS "id!" FROM inserted, notified
            "#,
            &kinds,
            &queues,
            &args,
            &priorities,
            &run_ats as &[Option<OffsetDateTime>],
            &delays,
            &max_attempts,
            &timeouts as &[Option<i32>],
            &tags,
            &expires as &[Option<OffsetDateTime>],
            &notify,
            &owners as &[Option<i64>],
        )
        .fetch_all(&mut *conn)
        .await?;
        ids.sort_unstable();
        for queue in &distinct_queues {
            wake::wake_local(queue);
        }
        return Ok(ids
            .into_iter()
            .map(|id| Enqueued {
                id,
                duplicate: false,
            })
            .collect());
    }
    // Only the statement that claims keys reads these. Postgres arrays must be rectangular, so
    // the per-job state lists travel as JSON.
    let unique_holds: Vec<serde_json::Value> = jobs
        .iter()
        .map(|job| {
            serde_json::json!(
                job.unique
                    .as_ref()
                    .map(|u| u
                        .also_finished
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>())
                    .unwrap_or_default()
            )
        })
        .collect();
    let unique_periods: Vec<Option<f64>> = jobs
        .iter()
        .map(|job| {
            job.unique
                .as_ref()
                .and_then(|u| u.period)
                .map(|p| p.as_secs_f64())
        })
        .collect();
    let rows = sqlx::query!(
        r#"
        WITH input AS MATERIALIZED (
            SELECT i.*, nextval('jobs_id_seq') AS new_id
              FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::int2[], $5::timestamptz[], $6::float8[],
                          $7::int4[], $8::int4[], $9::text[], $10::jsonb[], $11::float8[], $12::jsonb[],
                          $13::timestamptz[], $15::int8[])
                   WITH ORDINALITY AS i(kind, queue, args, priority, run_at, delay_s, max_attempts, timeout_ms,
                                        unique_key, unique_holds, unique_period_s, tags, expires_at, owner_id, ord)
        ),
        -- The first job of each key in this batch claims it, unless a claim is in force; a
        -- claim whose period is over is taken over.
        claims AS (
            INSERT INTO job_unique_keys (key, job_id, holds_in, until)
            SELECT DISTINCT ON (unique_key) unique_key, new_id,
                   ARRAY(SELECT jsonb_array_elements_text(unique_holds)),
                   now() + make_interval(secs => unique_period_s)
              FROM input
             WHERE unique_key IS NOT NULL
             ORDER BY unique_key, ord
            ON CONFLICT (key) DO UPDATE
               SET job_id = EXCLUDED.job_id, holds_in = EXCLUDED.holds_in, until = EXCLUDED.until
             WHERE job_unique_keys.until IS NOT NULL AND job_unique_keys.until <= now()
            RETURNING key, job_id
        ),
        inserted AS (
            INSERT INTO jobs (id, kind, queue, args, priority, run_at, expires_at, max_attempts, timeout_ms, unique_key, tags,
                              owner_id)
            SELECT i.new_id, i.kind, i.queue, i.args, i.priority,
                   coalesce(i.run_at, now()) + make_interval(secs => i.delay_s),
                   i.expires_at, i.max_attempts, i.timeout_ms, i.unique_key,
                   ARRAY(SELECT jsonb_array_elements_text(i.tags)), i.owner_id
              FROM input i
             WHERE i.unique_key IS NULL OR i.new_id IN (SELECT job_id FROM claims)
            RETURNING id
        ),
        notified AS (
            SELECT count(*) AS n FROM (SELECT pg_notify('hearth_jobs', q) FROM unnest($14::text[]) AS q) AS sent
        )
        SELECT i.ord AS "ord!",
               coalesce(ins.id, claimed.job_id, existing.job_id) AS "id?",
               (ins.id IS NULL) AS "duplicate!",
               (SELECT n FROM notified) AS "notified!"
          FROM input i
          LEFT JOIN inserted ins ON ins.id = i.new_id
          -- A later job of a key claimed earlier in this batch is a duplicate of that one.
          LEFT JOIN claims claimed ON claimed.key = i.unique_key
          LEFT JOIN job_unique_keys existing ON existing.key = i.unique_key
         ORDER BY i.ord
        "#,
        &kinds,
        &queues,
        &args,
        &priorities,
        &run_ats as &[Option<OffsetDateTime>],
        &delays,
        &max_attempts,
        &timeouts as &[Option<i32>],
        &unique_keys as &[Option<String>],
        &unique_holds,
        &unique_periods as &[Option<f64>],
        &tags,
        &expires as &[Option<OffsetDateTime>],
        &notify,
        &owners as &[Option<i64>],
    )
    .fetch_all(&mut *conn)
    .await?;
    for queue in &distinct_queues {
        wake::wake_local(queue);
    }
    let mut enqueued = Vec::with_capacity(rows.len());
    for (row, key) in rows.into_iter().zip(&unique_keys) {
        let id = match (row.id, key) {
            (Some(id), _) => id,
            // The key was claimed by a transaction that committed while this statement waited
            // on it, too late for this statement's snapshot: read the claim afresh.
            (None, Some(key)) => {
                sqlx::query_scalar!("SELECT job_id FROM job_unique_keys WHERE key = $1", key)
                    .fetch_one(&mut *conn)
                    .await?
            }
            // A job without a unique key is always inserted; treat the impossible as an error.
            (None, None) => return Err(sqlx::Error::RowNotFound.into()),
        };
        enqueued.push(Enqueued {
            id,
            duplicate: row.duplicate,
        });
    }
    Ok(enqueued)
}
