//! Work one instance does at a time: rescuing jobs of lost workers, pruning finished jobs,
//! freeing expired unique keys and enqueuing due schedule occurrences (of the schedules declared
//! in code and of those kept in the database, see [`schedule_store`](super::schedule_store)).
//!
//! Every second each instance opens a transaction and tries `pg_try_advisory_xact_lock`; the
//! one that gets it does the work and the lock ends with its transaction. No leader election
//! to get wrong: if the leader dies, the next tick of another instance takes over.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{
    metrics::METRICS,
    schedule::{CATCH_UP_ALL_LIMIT, CatchUp, Schedule},
};

/// Prune every this many ticks (a minute).
const PRUNE_EVERY: u64 = 60;

/// Vacuum `jobs` once this many dead rows have piled up (see [`vacuum_if_churned`]).
const VACUUM_AFTER_DEAD_ROWS: i64 = 10_000;

/// `session` is for vacuum's session advisory lock (`HEARTH_DIRECT_DATABASE_URL`).
pub(crate) async fn run(
    pool: PgPool,
    session: PgPool,
    retention: Duration,
    schedules: Vec<Schedule>,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match tick(
            &pool,
            retention,
            &schedules,
            ticks.is_multiple_of(PRUNE_EVERY),
        )
        .await
        {
            Ok(true) => {
                if let Err(e) = vacuum_if_churned(&session, VACUUM_AFTER_DEAD_ROWS).await {
                    tracing::warn!(error = %e, "cannot vacuum the jobs table");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "job maintenance failed; trying again next tick"),
        }
        ticks += 1;
    }
}

/// One maintenance pass; returns whether this instance was the one to do it.
pub async fn tick(
    pool: &PgPool,
    retention: Duration,
    schedules: &[Schedule],
    prune_now: bool,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let leader = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock(hashtext('hearth_jobs_maintenance')) AS "leader!""#
    )
    .fetch_one(&mut *tx)
    .await?;
    if !leader {
        return Ok(false);
    }
    let rescued = rescue(&mut tx).await?;
    if rescued > 0 {
        METRICS.rescued.add(rescued);
        tracing::warn!(rescued, "jobs of lost workers returned to the queue");
    }
    if prune_now {
        let pruned = prune(&mut tx, retention).await?;
        if pruned > 0 {
            tracing::info!(pruned, "finished jobs pruned");
        }
        let workflows = super::workflow::prune(&mut tx, retention).await?;
        if workflows > 0 {
            tracing::info!(workflows, "finished workflows pruned");
        }
    }
    let stored = super::schedule_store::active(&mut tx, schedules).await?;
    for schedule in schedules.iter().chain(&stored) {
        enqueue_due(&mut tx, schedule).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Vacuums the `jobs` table when many dead rows have piled up.
///
/// Every job leaves dead entries in the fetch index (its row is updated when leased, then
/// deleted), and a fetch must step over them until vacuum removes them. Autovacuum looks at
/// each table at most once a minute (`autovacuum_naptime`), in which a busy queue leaves
/// hundreds of thousands; so the maintenance leader vacuums as soon as the statistics show
/// `threshold` dead rows. A session advisory lock keeps two instances from doing it at once;
/// VACUUM does not block inserts, fetches or updates.
pub async fn vacuum_if_churned(pool: &PgPool, threshold: i64) -> Result<bool, sqlx::Error> {
    let dead = sqlx::query_scalar!(
        "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass"
    )
    .fetch_optional(pool)
    .await?
    .flatten()
    .unwrap_or(0);
    if dead < threshold {
        return Ok(false);
    }
    let mut conn = pool.acquire().await?;
    let locked = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_lock(hashtext('hearth_jobs_vacuum')) AS "locked!""#
    )
    .fetch_one(&mut *conn)
    .await?;
    if !locked {
        return Ok(false);
    }
    let started = std::time::Instant::now();
    let vacuumed = sqlx::raw_sql(sqlx::AssertSqlSafe("VACUUM jobs"))
        .execute(&mut *conn)
        .await;
    sqlx::query_scalar!("SELECT pg_advisory_unlock(hashtext('hearth_jobs_vacuum'))")
        .fetch_one(&mut *conn)
        .await?;
    vacuumed?;
    tracing::info!(dead_rows = dead, took = ?started.elapsed(), "vacuumed the jobs table");
    Ok(true)
}

/// Returns running jobs whose lease expired (their worker died or hung) to the queue.
///
/// A rescued job keeps its `run_at`: it was due before whatever was enqueued while it ran, and
/// the fetch orders by `(priority, run_at, id)`, so it is taken again first rather than behind
/// that backlog (with `run_at = now()` a job returned 3 s after its worker was killed started
/// again 15 s later, in the fault tests).
pub async fn rescue(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "UPDATE jobs
            SET state = 'available', lease_until = NULL, locked_by = NULL,
                errors = errors || jsonb_build_object(
                    'attempt', attempt,
                    'error', 'lease expired: worker ' || coalesce(locked_by, '?') || ' stopped heartbeating',
                    'at', now(), 'instance', locked_by)
          -- `= ANY(ARRAY(...))` runs the inner query once. As `IN (...)`, with the stale
          -- statistics a queue table always has, it became a semi-join that ran the inner
          -- query once per row of `jobs`: 9 s with 20,000 jobs waiting.
          WHERE id = ANY (ARRAY(
                -- SKIP LOCKED: a row locked right now is being completed or renewed.
                SELECT id FROM jobs WHERE state = 'running' AND lease_until < now() FOR UPDATE SKIP LOCKED
          ))"
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes finished jobs older than `retention` and unique keys whose period is over. A key
/// with a period holds until it ends even if its job is gone (pruned, or a completed job that
/// was not kept); a key without one is released once its job is gone.
pub async fn prune(conn: &mut PgConnection, retention: Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "DELETE FROM jobs_done WHERE finished_at < now() - make_interval(secs => $1)",
        retention.as_secs_f64()
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "DELETE FROM job_unique_keys k
          WHERE (k.until IS NOT NULL AND k.until <= now())
             OR k.until IS NULL
            AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = k.job_id)
            AND NOT EXISTS (SELECT 1 FROM jobs_done d WHERE d.id = k.job_id)"
    )
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

pub(crate) fn to_chrono(at: OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(at.unix_timestamp(), at.nanosecond()).unwrap_or_default()
}

fn to_time(at: DateTime<Utc>) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(
        at.timestamp_nanos_opt().unwrap_or_default(),
    ))
    .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Enqueues the schedule's due occurrences (as its catch-up rule says) under a lock on its
/// row, unless it is paused.
async fn enqueue_due(tx: &mut PgConnection, schedule: &Schedule) -> Result<(), sqlx::Error> {
    // A new schedule starts counting now: it does not fire for occurrences before it existed.
    sqlx::query!(
        "INSERT INTO job_schedules (name, last_occurrence) VALUES ($1, now()) ON CONFLICT (name) DO NOTHING",
        schedule.name
    )
    .execute(&mut *tx)
    .await?;
    let (last, paused, now): (OffsetDateTime, bool, OffsetDateTime) = sqlx::query_as(
        "SELECT last_occurrence, paused, now() FROM job_schedules WHERE name = $1 FOR UPDATE",
    )
    .bind(&schedule.name)
    .fetch_one(&mut *tx)
    .await?;
    if paused {
        return Ok(());
    }
    let last = to_chrono(last);
    let due = schedule.due(last, to_chrono(now));
    if let Some(first) = due
        .run
        .first()
        .filter(|_| schedule.catch_up == CatchUp::All)
    {
        // More missed than the bound: say how far back the catch-up went.
        if schedule
            .every
            .due(last, *first - chrono::Duration::seconds(1))
            .is_some()
        {
            tracing::warn!(schedule = %schedule.name, from = %first, "more than {CATCH_UP_ALL_LIMIT} occurrences were missed; only the latest {CATCH_UP_ALL_LIMIT} run");
        }
    }
    for at in &due.run {
        let enqueued = super::enqueue::insert(&mut *tx, vec![schedule.occurrence(*at)])
            .await
            .map_err(|e| match e {
                super::EnqueueError::Database(e) => e,
                other => sqlx::Error::Protocol(other.to_string()),
            })?;
        let enqueued = enqueued.first().copied().ok_or(sqlx::Error::RowNotFound)?;
        super::schedule_store::fired(tx, &schedule.name, enqueued.id).await?;
        tracing::info!(schedule = %schedule.name, occurrence = %at, job_id = enqueued.id, duplicate = enqueued.duplicate, "schedule fired");
    }
    if let Some(skipped) = due.skip_to {
        tracing::info!(schedule = %schedule.name, occurrence = %skipped, "missed occurrence not run (catch-up: none)");
    }
    if let Some(latest) = due.run.last().copied().or(due.skip_to) {
        sqlx::query!(
            "UPDATE job_schedules SET last_occurrence = $2 WHERE name = $1",
            schedule.name,
            to_time(latest)
        )
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
