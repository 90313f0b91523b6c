//! Schedules kept in the database and managed at run time, as django-celery-beat does: added,
//! changed, paused, resumed and removed from `/ops` and `hearth schedules ...` while instances
//! run, beside the schedules declared in code (`App::schedules`, `HEARTH_SCHEDULES`).
//!
//! A run-time schedule is a row of `job_schedules` with its definition (migration 0022); the
//! maintenance leader reads those rows on every tick, in the transaction that holds its lock,
//! and enqueues each due occurrence under the row's lock exactly as for a code schedule, so one
//! instance fires each occurrence. Everything is checked before anything is written: the cron
//! expression or interval, the time zone, the kind (against the application's [`Kinds`]), the
//! args (against the kind's type), the queue, the attempts and the catch-up rule.
//!
//! Code schedules can be paused and resumed too (the flag lives in the same row), but not
//! changed or removed at run time: their definition is the code's.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row, postgres::PgRow};

use super::{
    enqueue::{Enqueue, EnqueueError, Enqueued},
    maintenance::to_chrono,
    registry::Kinds,
    schedule::{CatchUp, Every, Schedule, ScheduleError},
};

/// Why a change to the schedules was refused; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Invalid(#[from] ScheduleError),
    #[error("{0}")]
    Args(String),
    #[error("the args must be a JSON value: {0}")]
    ArgsNotJson(String),
    #[error("a schedule named {0:?} already exists")]
    Exists(String),
    #[error("there is no schedule named {0:?}")]
    NotFound(String),
    #[error(
        "the schedule {0:?} is declared in code (an app or HEARTH_SCHEDULES): change or remove it there"
    )]
    DeclaredInCode(String),
    #[error("give exactly one of a cron expression and an interval")]
    When,
    #[error(transparent)]
    Enqueue(EnqueueError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<EnqueueError> for StoreError {
    fn from(e: EnqueueError) -> Self {
        match e {
            EnqueueError::Database(e) => Self::Database(e),
            other => Self::Enqueue(other),
        }
    }
}

impl StoreError {
    /// Whether the caller's input is at fault (a 4xx), not the database.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Database(_) | Self::NotFound(_))
    }
}

/// When a run-time schedule fires, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// A cron expression in an IANA time zone.
    Cron {
        expr: String,
        tz: String,
    },
    Every(Duration),
}

impl When {
    /// `--cron`/`--every` as given (with `tz` defaulting to UTC); exactly one of the two.
    pub fn from_parts(
        cron: Option<&str>,
        tz: Option<&str>,
        every: Option<&str>,
    ) -> Result<Option<Self>, StoreError> {
        fn given(s: Option<&str>) -> Option<&str> {
            s.map(str::trim).filter(|s| !s.is_empty())
        }
        match (given(cron), given(every)) {
            (Some(_), Some(_)) => Err(StoreError::When),
            (Some(expr), None) => Ok(Some(Self::Cron {
                expr: expr.to_owned(),
                tz: given(tz).unwrap_or("UTC").to_owned(),
            })),
            (None, Some(every)) => {
                let every =
                    humantime::parse_duration(every).map_err(|e| ScheduleError::InvalidEntry {
                        entry: every.to_owned(),
                        reason: format!("not a duration such as 10m or 1h: {e}"),
                    })?;
                Ok(Some(Self::Every(every)))
            }
            (None, None) => Ok(None),
        }
    }

    fn every(&self) -> Result<Every, ScheduleError> {
        match self {
            Self::Cron { expr, tz } => Every::cron(expr, tz),
            Self::Every(every) => Every::interval(*every),
        }
    }
}

/// A run-time schedule's definition. Options left `None` take the kind's defaults when the
/// schedule is added (and are stored, so a later change of the kind's code does not move them).
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub when: Option<When>,
    pub kind: Option<String>,
    pub args: Option<serde_json::Value>,
    pub queue: Option<String>,
    pub priority: Option<i16>,
    pub max_attempts: Option<i32>,
    pub catch_up: Option<CatchUp>,
}

/// A stored definition, whole.
#[derive(Debug, Clone)]
struct Stored {
    when: When,
    kind: String,
    args: serde_json::Value,
    queue: String,
    priority: i16,
    max_attempts: i32,
    timeout_ms: Option<i32>,
    catch_up: CatchUp,
}

impl Stored {
    /// The schedule this definition describes, checked whole.
    fn schedule(&self, name: &str) -> Result<Schedule, StoreError> {
        let mut job = Enqueue::raw(&self.kind, self.args.clone(), Default::default())?
            .queue(&self.queue)?
            .priority(self.priority)
            .max_attempts(self.max_attempts)?;
        if let Some(ms) = self.timeout_ms {
            job = job.timeout(Duration::from_millis(ms.unsigned_abs().into()))?;
        }
        Ok(Schedule::new(name, self.when.every()?, job)?.catch_up(self.catch_up))
    }

    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        let cron: Option<String> = row.try_get("cron")?;
        let interval_ms: Option<i64> = row.try_get("interval_ms")?;
        let when = match (cron, interval_ms) {
            (Some(expr), _) => When::Cron {
                expr,
                tz: row.try_get("time_zone")?,
            },
            (None, ms) => When::Every(Duration::from_millis(ms.unwrap_or(0).unsigned_abs())),
        };
        let catch_up: String = row.try_get("catch_up")?;
        Ok(Self {
            when,
            kind: row.try_get("kind")?,
            args: row.try_get("args")?,
            queue: row.try_get("queue")?,
            priority: row.try_get("priority")?,
            max_attempts: row.try_get("max_attempts")?,
            timeout_ms: row.try_get("timeout_ms")?,
            catch_up: catch_up.parse().unwrap_or_default(),
        })
    }
}

fn check_name(name: &str, code: &[Schedule]) -> Result<(), StoreError> {
    if code.iter().any(|s| s.name == name) {
        return Err(StoreError::DeclaredInCode(name.to_owned()));
    }
    Ok(())
}

/// Adds a run-time schedule. It starts counting now: it does not fire for occurrences before
/// it existed.
pub async fn add(
    pool: &PgPool,
    kinds: &Kinds,
    code: &[Schedule],
    name: &str,
    def: Changes,
) -> Result<(), StoreError> {
    if code.iter().any(|s| s.name == name) {
        return Err(StoreError::Exists(name.to_owned()));
    }
    let when = def.when.ok_or(StoreError::When)?;
    let kind = def
        .kind
        .ok_or_else(|| StoreError::Args("a schedule needs a job kind".into()))?;
    let args = def.args.unwrap_or_else(|| serde_json::json!({}));
    let defaults = kinds.check(&kind, &args).map_err(StoreError::Args)?;
    let stored = Stored {
        when,
        kind,
        args,
        queue: def.queue.unwrap_or_else(|| defaults.queue.to_owned()),
        priority: def.priority.unwrap_or(defaults.priority),
        max_attempts: def.max_attempts.unwrap_or(defaults.max_attempts),
        timeout_ms: defaults.timeout.map(|t| t.as_millis() as i32),
        catch_up: def.catch_up.unwrap_or_default(),
    };
    stored.schedule(name)?;
    // A row without a kind is the state of a code schedule no longer declared: taken over.
    let written = write(pool, name, &stored, true).await?;
    if !written {
        return Err(StoreError::Exists(name.to_owned()));
    }
    Ok(())
}

/// Inserts (`new`) or updates the definition; whether a row was written.
async fn write<'c, E: sqlx::PgExecutor<'c>>(
    conn: E,
    name: &str,
    s: &Stored,
    new: bool,
) -> Result<bool, sqlx::Error> {
    let (cron, tz, interval_ms) = match &s.when {
        When::Cron { expr, tz } => (Some(expr.as_str()), Some(tz.as_str()), None),
        When::Every(every) => (None, None, Some(every.as_millis() as i64)),
    };
    let query = if new {
        sqlx::query(
            "INSERT INTO job_schedules (name, last_occurrence, kind, cron, time_zone, interval_ms, args,
                                    queue, priority, max_attempts, timeout_ms, catch_up, updated_at)
         VALUES ($1, now(), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now())
         ON CONFLICT (name) DO UPDATE
            SET last_occurrence = now(), paused = false, kind = $2, cron = $3, time_zone = $4,
                interval_ms = $5, args = $6, queue = $7, priority = $8, max_attempts = $9,
                timeout_ms = $10, catch_up = $11, updated_at = now()
          WHERE job_schedules.kind IS NULL",
        )
    } else {
        // A new timetable starts counting now, not from an occurrence of the old one.
        sqlx::query(
            "UPDATE job_schedules
            SET last_occurrence = CASE WHEN cron IS NOT DISTINCT FROM $3 AND time_zone IS NOT DISTINCT FROM $4
                                        AND interval_ms IS NOT DISTINCT FROM $5
                                       THEN last_occurrence ELSE now() END,
                kind = $2, cron = $3, time_zone = $4, interval_ms = $5, args = $6, queue = $7,
                priority = $8, max_attempts = $9, timeout_ms = $10, catch_up = $11, updated_at = now()
          WHERE name = $1 AND kind IS NOT NULL",
        )
    };
    let done = query
        .bind(name)
        .bind(&s.kind)
        .bind(cron)
        .bind(tz)
        .bind(interval_ms)
        .bind(&s.args)
        .bind(&s.queue)
        .bind(s.priority)
        .bind(s.max_attempts)
        .bind(s.timeout_ms)
        .bind(s.catch_up.as_str())
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Changes what `changes` gives of a run-time schedule, the rest kept. A new cron expression
/// or interval starts counting now.
pub async fn change(
    pool: &PgPool,
    kinds: &Kinds,
    code: &[Schedule],
    name: &str,
    changes: Changes,
) -> Result<(), StoreError> {
    check_name(name, code)?;
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT name, kind, cron, time_zone, interval_ms, args, queue, priority, max_attempts, timeout_ms, catch_up
           FROM job_schedules WHERE name = $1 AND kind IS NOT NULL FOR UPDATE",
    )
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
    let mut stored = Stored::from_row(&row)?;
    let kind_changed = changes.kind.as_ref().is_some_and(|k| *k != stored.kind);
    if let Some(when) = changes.when {
        stored.when = when;
    }
    if let Some(kind) = changes.kind {
        stored.kind = kind;
    }
    if let Some(args) = changes.args {
        stored.args = args;
    }
    let defaults = kinds
        .check(&stored.kind, &stored.args)
        .map_err(StoreError::Args)?;
    if kind_changed {
        // Another kind's options, unless given with it.
        stored.queue = defaults.queue.to_owned();
        stored.priority = defaults.priority;
        stored.max_attempts = defaults.max_attempts;
        stored.timeout_ms = defaults.timeout.map(|t| t.as_millis() as i32);
    }
    stored.queue = changes.queue.unwrap_or(stored.queue);
    stored.priority = changes.priority.unwrap_or(stored.priority);
    stored.max_attempts = changes.max_attempts.unwrap_or(stored.max_attempts);
    stored.catch_up = changes.catch_up.unwrap_or(stored.catch_up);
    stored.schedule(name)?;
    write(&mut *tx, name, &stored, false).await?;
    tx.commit().await?;
    Ok(())
}

/// Pauses (`true`) or resumes a schedule of either source. Resuming starts counting from now:
/// occurrences skipped while paused are not caught up.
pub async fn set_paused(
    pool: &PgPool,
    code: &[Schedule],
    name: &str,
    paused: bool,
) -> Result<(), StoreError> {
    let done = if code.iter().any(|s| s.name == name) {
        // The state row of a code schedule may not exist yet (no tick has seen it).
        sqlx::query(
            "INSERT INTO job_schedules (name, last_occurrence, paused) VALUES ($1, now(), $2)
             ON CONFLICT (name) DO UPDATE
                SET paused = $2,
                    last_occurrence = CASE WHEN job_schedules.paused AND NOT $2 THEN now()
                                           ELSE job_schedules.last_occurrence END",
        )
    } else {
        sqlx::query(
            "UPDATE job_schedules
                SET paused = $2,
                    last_occurrence = CASE WHEN paused AND NOT $2 THEN now() ELSE last_occurrence END
              WHERE name = $1 AND kind IS NOT NULL",
        )
    }
    .bind(name)
    .bind(paused)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(name.to_owned()));
    }
    Ok(())
}

/// Removes a run-time schedule; jobs it already enqueued stay.
pub async fn remove(pool: &PgPool, code: &[Schedule], name: &str) -> Result<(), StoreError> {
    check_name(name, code)?;
    let done = sqlx::query("DELETE FROM job_schedules WHERE name = $1 AND kind IS NOT NULL")
        .bind(name)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(name.to_owned()));
    }
    Ok(())
}

/// The run-time schedule `name`, if there is one.
async fn stored(conn: &mut PgConnection, name: &str) -> Result<Option<Schedule>, StoreError> {
    let row = sqlx::query(
        "SELECT name, kind, cron, time_zone, interval_ms, args, queue, priority, max_attempts, timeout_ms, catch_up
           FROM job_schedules WHERE name = $1 AND kind IS NOT NULL",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| Stored::from_row(&row)?.schedule(name))
        .transpose()
}

/// Enqueues a schedule's job now, outside its timetable, and records it as its last run.
pub async fn run_now(pool: &PgPool, code: &[Schedule], name: &str) -> Result<Enqueued, StoreError> {
    let mut tx = pool.begin().await?;
    let schedule = match code.iter().find(|s| s.name == name) {
        Some(schedule) => schedule.clone(),
        None => stored(&mut tx, name)
            .await?
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))?,
    };
    // `enqueue_on`, not the generic `enqueue`: the future stays `Send` for axum handlers.
    let enqueued = schedule.job.enqueue_on(&mut tx).await?;
    fired(&mut tx, name, enqueued.id).await?;
    tx.commit().await?;
    Ok(enqueued)
}

/// Records that `name` enqueued job `job_id` now (its row exists or is created).
pub(crate) async fn fired(
    conn: &mut PgConnection,
    name: &str,
    job_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO job_schedules (name, last_occurrence, last_fired_at, last_job_id)
         VALUES ($1, now(), now(), $2)
         ON CONFLICT (name) DO UPDATE SET last_fired_at = now(), last_job_id = $2",
    )
    .bind(name)
    .bind(job_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The run-time schedules to fire, in the maintenance leader's transaction: not paused, not
/// shadowed by a code schedule of the same name. A row that no longer makes a schedule (a
/// time zone gone from the database, say) is skipped with a warning.
pub(crate) async fn active(
    conn: &mut PgConnection,
    code: &[Schedule],
) -> Result<Vec<Schedule>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT name, kind, cron, time_zone, interval_ms, args, queue, priority, max_attempts, timeout_ms, catch_up
           FROM job_schedules WHERE kind IS NOT NULL AND NOT paused ORDER BY name",
    )
    .fetch_all(conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get("name")?;
        if code.iter().any(|s| s.name == name) {
            tracing::warn!(schedule = %name, "a run-time schedule has the name of a code schedule; only the code one fires");
            continue;
        }
        match Stored::from_row(&row)?.schedule(&name) {
            Ok(schedule) => out.push(schedule),
            Err(e) => tracing::warn!(schedule = %name, error = %e, "run-time schedule skipped"),
        }
    }
    Ok(out)
}

/// A schedule with its last and next runs, for `/ops` and `hearth schedules list`.
#[derive(Debug, Clone)]
pub struct ScheduleStatus {
    pub name: String,
    /// Defined at run time (`true`) or in code.
    pub runtime: bool,
    pub every: String,
    pub kind: String,
    pub args: String,
    pub catch_up: CatchUp,
    pub paused: bool,
    /// When it last enqueued a job (an occurrence or "Run now"), and which job.
    pub last: Option<DateTime<Utc>>,
    pub last_job_id: Option<i64>,
    /// The next occurrence, unless paused.
    pub next: Option<DateTime<Utc>>,
    /// For the edit form: the cron expression and time zone, or the interval (`10m`).
    pub cron: String,
    pub time_zone: String,
    pub interval: String,
    pub queue: String,
    pub priority: i16,
    pub max_attempts: i32,
}

/// Every schedule, the code ones first (in their order), then the run-time ones by name.
pub async fn list(pool: &PgPool, code: &[Schedule]) -> Result<Vec<ScheduleStatus>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT name, kind, cron, time_zone, interval_ms, args, queue, priority, max_attempts, timeout_ms, catch_up,
                paused, last_occurrence, last_fired_at, last_job_id, now() AS now
           FROM job_schedules ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for schedule in code {
        let row = rows.iter().find(|r| {
            r.try_get::<String, _>("name")
                .is_ok_and(|n| n == schedule.name)
        });
        out.push(status(schedule, false, row)?);
    }
    for row in &rows {
        let name: String = row.try_get("name")?;
        let kind: Option<String> = row.try_get("kind")?;
        if kind.is_none() || code.iter().any(|s| s.name == name) {
            continue;
        }
        if let Ok(schedule) = Stored::from_row(row)?.schedule(&name) {
            out.push(status(&schedule, true, Some(row))?);
        }
    }
    Ok(out)
}

fn status(
    schedule: &Schedule,
    runtime: bool,
    row: Option<&PgRow>,
) -> Result<ScheduleStatus, sqlx::Error> {
    let get = |column: &str| -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(row
            .map(|r| r.try_get::<Option<time::OffsetDateTime>, _>(column))
            .transpose()?
            .flatten()
            .map(to_chrono))
    };
    let paused = row
        .map(|r| r.try_get("paused"))
        .transpose()?
        .unwrap_or(false);
    let now = get("now")?.unwrap_or_else(Utc::now);
    let counted_from = get("last_occurrence")?.unwrap_or(now).max(now);
    let (cron, time_zone, interval) = match &schedule.every {
        Every::Cron { expr, tz, .. } => (expr.clone(), tz.to_string(), String::new()),
        Every::Interval(every) => (
            String::new(),
            String::new(),
            humantime::format_duration(*every).to_string(),
        ),
    };
    Ok(ScheduleStatus {
        name: schedule.name.clone(),
        runtime,
        every: schedule.every.to_string(),
        kind: schedule.job.kind().to_owned(),
        args: schedule.job.args().to_string(),
        catch_up: schedule.catch_up,
        paused,
        last: get("last_fired_at")?,
        last_job_id: row.map(|r| r.try_get("last_job_id")).transpose()?.flatten(),
        next: if paused {
            None
        } else {
            schedule.every.next_after(counted_from)
        },
        cron,
        time_zone,
        interval,
        queue: schedule.job.queue_name().to_owned(),
        priority: schedule.job.priority_value(),
        max_attempts: schedule.job.max_attempts_value(),
    })
}
