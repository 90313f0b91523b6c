//! Handles on enqueued workflows and groups: status, outcome, counts, results, cancel.

use std::{collections::BTreeMap, marker::PhantomData};

use serde::{Serialize, de::DeserializeOwned};
use sqlx::{PgPool, Row};
use time::OffsetDateTime;

use super::wait::{self, WaitError};
use crate::channels::ChannelLayer;

/// How a workflow ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished<O> {
    /// With the last step's output (a group's: every member's, in order).
    Completed(O),
    /// A step failed; the reason names it (`step 2 of the chain (parse) failed: ...`).
    Failed(String),
    Cancelled(String),
}

/// A workflow by id. `O` is its output type (the last step's).
pub struct WorkflowHandle<O> {
    pub id: i64,
    _output: PhantomData<fn() -> O>,
}

impl<O> Clone for WorkflowHandle<O> {
    fn clone(&self) -> Self {
        Self::new(self.id)
    }
}

impl<O> std::fmt::Debug for WorkflowHandle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl<O> WorkflowHandle<O> {
    /// A handle on workflow `id` (say, one whose id was stored by the request that started it).
    pub fn new(id: i64) -> Self {
        Self {
            id,
            _output: PhantomData,
        }
    }

    /// Everything known about the workflow and up to `max_nodes` of its nodes.
    pub async fn status(
        &self,
        pool: &PgPool,
        max_nodes: i64,
    ) -> Result<Option<WorkflowStatus>, sqlx::Error> {
        status(pool, self.id, max_nodes).await
    }

    /// Cancels the workflow: steps not reached are marked not run, waiting step jobs are
    /// cancelled and running ones are told to stop.
    pub async fn cancel(&self, pool: &PgPool) -> Result<WorkflowCancelled, sqlx::Error> {
        cancel(pool, self.id).await
    }
}

impl<O: DeserializeOwned> WorkflowHandle<O> {
    /// The outcome, or `None` while it runs.
    pub async fn outcome(&self, pool: &PgPool) -> Result<Option<Finished<O>>, WaitError> {
        let row = sqlx::query("SELECT state, result, error FROM workflows WHERE id = $1")
            .bind(self.id)
            .fetch_optional(pool)
            .await?
            .ok_or(WaitError::NotFound)?;
        let state: String = row.try_get("state")?;
        let error = || {
            row.try_get::<Option<String>, _>("error")
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        Ok(match state.as_str() {
            "running" => None,
            "completed" => {
                let result: Option<serde_json::Value> = row.try_get("result")?;
                Some(Finished::Completed(
                    serde_json::from_value(result.unwrap_or_default())
                        .map_err(WaitError::Result)?,
                ))
            }
            "cancelled" => Some(Finished::Cancelled(error())),
            _ => Some(Finished::Failed(error())),
        })
    }

    /// Waits up to `timeout` for the workflow to finish: returns its outcome as soon as the
    /// transaction that finishes it commits (woken through the channel layer, not by polling),
    /// or `None` if it still runs when `timeout` is up.
    pub async fn wait(
        &self,
        channels: &ChannelLayer,
        timeout: std::time::Duration,
    ) -> Result<Option<Finished<O>>, WaitError> {
        let pool = channels.pool().clone();
        wait::until(
            channels,
            &format!("workflow.{}", self.id),
            timeout,
            async { Ok(()) },
            || self.outcome(&pool),
        )
        .await
    }
}

/// A group's member, as [`GroupHandle::results`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Member<O> {
    /// Not finished: `pending` (not reached yet) or `running`.
    Unfinished(String),
    Completed(O),
    /// Failed, cancelled or not run, with the reason.
    Failed(String),
}

/// A handle on one group of a workflow (the root group of [`Group::enqueue`](super::Group::enqueue)).
pub struct GroupHandle<O> {
    pub workflow_id: i64,
    pub node: i32,
    _output: PhantomData<fn() -> O>,
}

impl<O> GroupHandle<O> {
    pub fn new(workflow_id: i64, node: i32) -> Self {
        Self {
            workflow_id,
            node,
            _output: PhantomData,
        }
    }

    /// The workflow the group is the root of, to wait on or cancel it.
    pub fn workflow(&self) -> WorkflowHandle<Vec<O>> {
        WorkflowHandle::new(self.workflow_id)
    }

    /// How many members are in each state: `pending` (not reached), `available`,
    /// `scheduled` (waiting to retry) and `running` (their jobs' states), `completed`,
    /// `failed`, `cancelled`, `not_run`.
    pub async fn counts(&self, pool: &PgPool) -> Result<BTreeMap<String, i64>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT s.state, count(*) AS members
               FROM (SELECT CASE WHEN n.state = 'running' AND n.job_id IS NOT NULL THEN
                                coalesce((SELECT CASE WHEN j.state = 'available' AND j.run_at > now() THEN 'scheduled'
                                                      ELSE j.state END
                                            FROM jobs j WHERE j.id = n.job_id), 'running')
                            ELSE n.state END AS state
                       FROM workflow_nodes g
                       JOIN workflow_nodes n ON n.workflow_id = g.workflow_id AND n.node > g.node
                                            AND n.node <= g.subtree_end AND n.parent = g.node
                      WHERE g.workflow_id = $1 AND g.node = $2) s
              GROUP BY s.state",
        )
        .bind(self.workflow_id)
        .bind(self.node)
        .fetch_all(pool)
        .await?;
        rows.into_iter()
            .map(|row| Ok((row.try_get("state")?, row.try_get("members")?)))
            .collect()
    }
}

impl<O: DeserializeOwned> GroupHandle<O> {
    /// Every member's result so far, in the group's order.
    pub async fn results(&self, pool: &PgPool) -> Result<Vec<Member<O>>, WaitError> {
        let rows = sqlx::query(
            "SELECT n.state, n.result, n.error
               FROM workflow_nodes g
               JOIN workflow_nodes n ON n.workflow_id = g.workflow_id AND n.node > g.node
                                    AND n.node <= g.subtree_end AND n.parent = g.node
              WHERE g.workflow_id = $1 AND g.node = $2
              ORDER BY n.position",
        )
        .bind(self.workflow_id)
        .bind(self.node)
        .fetch_all(pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                Ok(match state.as_str() {
                    "pending" | "running" => Member::Unfinished(state),
                    "completed" => {
                        let result: Option<serde_json::Value> = row.try_get("result")?;
                        Member::Completed(
                            serde_json::from_value(result.unwrap_or_default())
                                .map_err(WaitError::Result)?,
                        )
                    }
                    _ => {
                        let error: Option<String> = row.try_get("error")?;
                        Member::Failed(error.unwrap_or(state))
                    }
                })
            })
            .collect()
    }
}

/// One node of a workflow, for status pages.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: i32,
    pub parent: Option<i32>,
    pub position: i32,
    /// `job`, `chain` or `group`.
    #[serde(rename = "type")]
    pub node_type: String,
    pub kind: Option<String>,
    /// `pending`, `running`, `completed`, `failed`, `cancelled` or `not_run`.
    pub state: String,
    pub job_id: Option<i64>,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// Everything known about a workflow.
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowStatus {
    pub id: i64,
    pub name: String,
    /// `running`, `completed`, `failed` or `cancelled`.
    pub state: String,
    pub owner_id: Option<i64>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// Nodes by state, all of them.
    pub counts: BTreeMap<String, i64>,
    /// The first nodes in preorder (up to the limit asked for).
    pub nodes: Vec<NodeStatus>,
    pub total_nodes: i64,
}

/// Workflow `id` with up to `max_nodes` of its nodes, or `None` if there is no such workflow.
pub async fn status(
    pool: &PgPool,
    id: i64,
    max_nodes: i64,
) -> Result<Option<WorkflowStatus>, sqlx::Error> {
    let Some(row) = sqlx::query(
        "SELECT id, name, state, owner_id, result, error, created_at, finished_at FROM workflows WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let counts: BTreeMap<String, i64> = sqlx::query(
        "SELECT state, count(*) AS nodes FROM workflow_nodes WHERE workflow_id = $1 GROUP BY state",
    )
    .bind(id)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| Ok((r.try_get("state")?, r.try_get("nodes")?)))
    .collect::<Result<_, sqlx::Error>>()?;
    let nodes = sqlx::query(
        "SELECT node, parent, position, type, kind, state, job_id, error, started_at, finished_at
           FROM workflow_nodes WHERE workflow_id = $1 ORDER BY node LIMIT $2",
    )
    .bind(id)
    .bind(max_nodes.max(0))
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        Ok(NodeStatus {
            node: r.try_get("node")?,
            parent: r.try_get("parent")?,
            position: r.try_get("position")?,
            node_type: r.try_get("type")?,
            kind: r.try_get("kind")?,
            state: r.try_get("state")?,
            job_id: r.try_get("job_id")?,
            error: r.try_get("error")?,
            started_at: r.try_get("started_at")?,
            finished_at: r.try_get("finished_at")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(WorkflowStatus {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        state: row.try_get("state")?,
        owner_id: row.try_get("owner_id")?,
        result: row.try_get("result")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
        total_nodes: counts.values().sum(),
        counts,
        nodes,
    }))
}

/// What cancelling a workflow did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowCancelled {
    /// Cancelled: `waiting` step jobs were cancelled, `running` ones were told to stop.
    Cancelled {
        waiting: i64,
        running: i64,
    },
    AlreadyFinished,
    NotFound,
}

/// Cancels workflow `id`, in one transaction: the workflow and its unfinished nodes are marked
/// (`not_run` for those not reached, `cancelled` for those started), waiting step jobs move to
/// the finished jobs as cancelled, running ones get their cancellation requested (as
/// [`control::cancel`](crate::jobs::control::cancel) does). Their outcomes, when their
/// workers record them, no longer move anything: their nodes are not running any more.
///
/// Its locks are taken in another order than a completer's (the workflow's row first), so the
/// two can deadlock; PostgreSQL then aborts one, and either retries (a completer its batch,
/// this function itself, up to five times).
pub async fn cancel(pool: &PgPool, id: i64) -> Result<WorkflowCancelled, sqlx::Error> {
    let mut attempt = 1;
    loop {
        match cancel_once(pool, id).await {
            Err(e) if attempt < 5 && is_retryable(&e) => attempt += 1,
            done => return done,
        }
    }
}

/// A deadlock or serialization failure: the transaction can be run again as it is.
fn is_retryable(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

async fn cancel_once(pool: &PgPool, id: i64) -> Result<WorkflowCancelled, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let cancelled = sqlx::query_scalar::<_, i64>(
        "UPDATE workflows SET state = 'cancelled', error = 'the workflow was cancelled', finished_at = now()
          WHERE id = $1 AND state = 'running' RETURNING id",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if cancelled.is_none() {
        let exists = sqlx::query_scalar::<_, i64>("SELECT id FROM workflows WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        return Ok(if exists.is_some() {
            WorkflowCancelled::AlreadyFinished
        } else {
            WorkflowCancelled::NotFound
        });
    }
    let jobs: Vec<i64> = sqlx::query_scalar::<_, Option<i64>>(
        "UPDATE workflow_nodes
            SET state = CASE state WHEN 'pending' THEN 'not_run' ELSE 'cancelled' END,
                error = 'the workflow was cancelled', finished_at = now()
          WHERE workflow_id = $1 AND state IN ('pending', 'running')
         RETURNING job_id",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .flatten()
    .collect();
    let (waiting, _notified): (i64, i64) = sqlx::query_as(
        "WITH gone AS (DELETE FROM jobs WHERE id = ANY ($1) AND state = 'available' RETURNING *),
         moved AS (
             INSERT INTO jobs_done (id, kind, queue, args, priority, state, attempt, max_attempts, unique_key, tags,
                                    errors, progress_percent, progress_message, created_at, attempted_at, owner_id,
                                    workflow_id, workflow_node)
             SELECT id, kind, queue, args, priority, 'cancelled', attempt, max_attempts, unique_key, tags,
                    errors, progress_percent, progress_message, created_at, attempted_at, owner_id,
                    workflow_id, workflow_node
               FROM gone
         ),
         announced AS (
             INSERT INTO channel_messages (target, is_group, payload)
             SELECT 'job.' || id, true, json_build_object('type', 'job.finished', 'id', id)::text
               FROM gone WHERE notify_done
             RETURNING 1
         )
         SELECT (SELECT count(*) FROM gone),
                (SELECT count(*) FROM (SELECT pg_notify('hearth_channels', '') FROM (SELECT 1 FROM announced LIMIT 1) a) n)",
    )
    .bind(&jobs)
    .fetch_one(&mut *tx)
    .await?;
    let running: i64 = sqlx::query_scalar(
        "WITH flagged AS (UPDATE jobs SET cancel_requested = true WHERE id = ANY ($1) AND state = 'running' RETURNING id)
         SELECT count(*) FROM (SELECT pg_notify('hearth_jobs_control', 'cancel:' || id) FROM flagged) sent",
    )
    .bind(&jobs)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "WITH sent AS (
             INSERT INTO channel_messages (target, is_group, payload)
             VALUES ('workflow.' || $1, true,
                     json_build_object('type', 'workflow.finished', 'id', $1::bigint, 'state', 'cancelled')::text)
             RETURNING 1
         )
         SELECT count(*) FROM sent, pg_notify('hearth_channels', '')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(WorkflowCancelled::Cancelled { waiting, running })
}

/// Deletes workflows that finished longer than `retention` ago, with their nodes and results
/// (the maintenance leader calls this with the jobs' retention, when it prunes finished jobs).
pub async fn prune(
    conn: &mut sqlx::PgConnection,
    retention: std::time::Duration,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "WITH old AS (
             DELETE FROM workflows WHERE finished_at < now() - make_interval(secs => $1) RETURNING id
         ),
         nodes AS (DELETE FROM workflow_nodes WHERE workflow_id = ANY (ARRAY(SELECT id FROM old))),
         results AS (DELETE FROM workflow_results WHERE workflow_id = ANY (ARRAY(SELECT id FROM old)))
         SELECT count(*) FROM old",
    )
    .bind(retention.as_secs_f64())
    .fetch_one(conn)
    .await
}
