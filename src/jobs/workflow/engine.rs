//! Moving workflows on, inside the transaction that records a step's outcome.
//!
//! [`advance`] takes the outcomes just recorded for step jobs (the worker's completer passes
//! those of its batch; cancelling or discarding a waiting step passes one) and works through
//! their consequences level by level, each level a few batched statements:
//!
//! 1. record each outcome on its node, fenced by `state = 'running'` (a node of a cancelled
//!    workflow, or one already recorded, is left alone);
//! 2. a chain's child that completed starts the next child (the node after the child's
//!    subtree) with its result as input, or, if it was the last, completes the chain; one that
//!    failed marks the rest of the chain `not_run` with the reason and fails the chain;
//! 3. a group's members are counted down on the group's row, in one
//!    `UPDATE ... SET remaining = remaining - k ... RETURNING remaining` per group. The row
//!    lock serialises the transactions of every instance that finish members of the group at
//!    the same moment, so exactly one of them sees 0. That one completes or fails the group.
//!    A group followed by a step (a chord's header) completes without reading its members'
//!    results: the step reads them itself when it starts (`input_group`), so the transaction
//!    that records the last member does the same work whatever the group's size. Otherwise
//!    the results are read in a new statement (its snapshot is taken after the lock was
//!    granted, so every member counted by an earlier transaction is visible);
//! 4. a root node that finished finishes the workflow and sends `workflow.finished` to the
//!    channel-layer group `workflow.<id>` (which wakes [`wait`](super::WorkflowHandle::wait)).
//!
//! Completing a chain or a group is an outcome of the level above, handled in the next round.
//! Starting nodes ([`start`]) descends the other way: a chain starts its first child, a group
//! all of its members, and the jobs of the leaves reached are inserted in one statement.
//!
//! Everything happens in the caller's transaction: if it rolls back (a deadlock between two
//! completers, a lost connection), the job outcomes roll back with it and are recorded again.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use serde_json::{Value, json};
use sqlx::{PgConnection, Row};

use super::spec::{self, Spec, StepOptions};
use crate::jobs::wake;

/// Inputs larger than this are stored once on a node, and the jobs' args point there, instead
/// of being copied into the args of every job they start (a chord callback over 100,000
/// results; a group of 1,000 members each started with the same large input).
const INLINE_INPUT_BYTES: usize = 16 * 1024;

/// How a node ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Completed,
    Failed,
    Cancelled,
}

impl Ended {
    fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// A job's final state (`completed`, `discarded`, `cancelled`) as a step's.
    pub(crate) fn from_job_state(state: &str) -> Self {
        match state {
            "completed" => Self::Completed,
            "cancelled" => Self::Cancelled,
            _ => Self::Failed,
        }
    }
}

/// A node's outcome, to record.
#[derive(Debug)]
pub(crate) struct Event {
    pub workflow: i64,
    pub node: i32,
    pub ended: Ended,
    pub result: Option<Value>,
    pub error: Option<String>,
    /// A group that completed with its members' results not built: the step after it reads
    /// them when it starts ([`group_results`]). Only for a group followed by a step in a chain
    /// (a chord's header), so that the transaction recording the last member does not read
    /// and copy every member's result.
    pub lazy: bool,
}

/// A finished group's result: its members' outcomes in order, as the consuming step gets
/// them (the results; with `on_failure = 'collect'`, `{"Ok": result}` or `{"Err": reason}`
/// for each).
///
/// Read from `workflow_results`, where each transaction that recorded members of the group
/// left one chunk of `[position, result, null]` (`[position, null, reason]` for a failure): a
/// group of 10,000 members recorded in ten batches is ten rows to read, not 10,000 (reading
/// and aggregating the members' own rows took 15-40 ms for 10,000, most of a chord's latency).
pub(crate) async fn group_results<'c, E>(
    db: E,
    workflow: i64,
    group: i32,
) -> Result<Value, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let (collect, chunks): (bool, Vec<String>) = sqlx::query_as(
        "SELECT coalesce((SELECT on_failure = 'collect' FROM workflow_nodes WHERE workflow_id = $1 AND node = $2), false),
                ARRAY(SELECT chunk FROM workflow_results WHERE workflow_id = $1 AND group_node = $2)",
    )
    .bind(workflow)
    .bind(group)
    .fetch_one(db)
    .await?;
    let decode = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
    let mut members: Vec<Option<Value>> = Vec::new();
    for chunk in chunks {
        let entries: Vec<(usize, Value, Option<String>)> =
            serde_json::from_str(&chunk).map_err(decode)?;
        for (position, result, error) in entries {
            if position >= members.len() {
                members.resize(position + 1, None);
            }
            members[position] = Some(match (collect, error) {
                (false, _) => result,
                (true, None) => json!({ "Ok": result }),
                (true, Some(error)) => json!({ "Err": error }),
            });
        }
    }
    Ok(Value::Array(
        members.into_iter().map(Option::unwrap_or_default).collect(),
    ))
}

/// What to do once the transaction has committed: wake this process's runners of the queues
/// that got jobs (other instances hear the transaction's NOTIFY).
#[derive(Debug, Default)]
#[must_use = "wake the queues after the commit"]
pub(crate) struct Effects {
    queues: BTreeSet<String>,
}

impl Effects {
    pub(crate) fn wake(self) {
        for queue in &self.queues {
            wake::wake_local(queue);
        }
    }
}

/// The input a node is started with.
struct Input {
    value: Value,
    /// Where it is stored, when it was too large to copy into args.
    at: Option<(i64, i32)>,
    large: bool,
    /// The input is the results of this group, not built yet (see [`Event::lazy`]).
    group: Option<(i64, i32)>,
}

impl Input {
    fn new(value: Value) -> Arc<Self> {
        // Serialised size, to decide where it travels; computed once however many jobs it starts.
        let large = value.to_string().len() > INLINE_INPUT_BYTES;
        Arc::new(Self {
            value,
            at: None,
            large,
            group: None,
        })
    }

    fn group_results(workflow: i64, group: i32) -> Arc<Self> {
        Arc::new(Self {
            value: Value::Null,
            at: None,
            large: false,
            group: Some((workflow, group)),
        })
    }
}

/// Nodes to start: those numbered `lo..=hi` (with `parent`, if given), each with `input`.
struct Start {
    workflow: i64,
    lo: i32,
    hi: i32,
    parent: Option<i32>,
    input: Arc<Input>,
}

impl Start {
    fn node(workflow: i64, node: i32, input: Arc<Input>) -> Self {
        Self {
            workflow,
            lo: node,
            hi: node,
            parent: None,
            input,
        }
    }
}

/// Stores a new workflow's nodes and starts its root with `input`. Returns its id.
pub(crate) async fn create(
    conn: &mut PgConnection,
    root: &Spec,
    name: &str,
    owner: Option<i64>,
    input: Value,
) -> Result<(i64, Effects), sqlx::Error> {
    let id: i64 =
        sqlx::query_scalar("INSERT INTO workflows (name, owner_id) VALUES ($1, $2) RETURNING id")
            .bind(name)
            .bind(owner)
            .fetch_one(&mut *conn)
            .await?;
    let rows = spec::flatten(root);
    let n = rows.len();
    let mut nodes = Vec::with_capacity(n);
    let mut parents = Vec::with_capacity(n);
    let mut parent_types = Vec::with_capacity(n);
    let mut positions = Vec::with_capacity(n);
    let mut lasts = Vec::with_capacity(n);
    let mut ends = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut params = Vec::with_capacity(n);
    let mut options = Vec::with_capacity(n);
    let mut on_failures = Vec::with_capacity(n);
    let mut remaining = Vec::with_capacity(n);
    for row in rows {
        nodes.push(row.node);
        parents.push(row.parent);
        parent_types.push(row.parent_type);
        positions.push(row.position);
        lasts.push(row.last);
        ends.push(row.subtree_end);
        types.push(row.node_type);
        kinds.push(row.kind);
        params.push(row.params);
        options.push(row.options);
        on_failures.push(row.on_failure);
        remaining.push(row.remaining);
    }
    sqlx::query(
        "INSERT INTO workflow_nodes (workflow_id, node, parent, parent_type, position, last, subtree_end,
                                     type, kind, params, options, on_failure, remaining)
         SELECT $1, * FROM unnest($2::int4[], $3::int4[], $4::text[], $5::int4[], $6::bool[], $7::int4[],
                                  $8::text[], $9::text[], $10::jsonb[], $11::jsonb[], $12::text[], $13::int4[])",
    )
    .bind(id)
    .bind(&nodes)
    .bind(&parents)
    .bind(&parent_types)
    .bind(&positions)
    .bind(&lasts)
    .bind(&ends)
    .bind(&types)
    .bind(&kinds)
    .bind(&params)
    .bind(&options)
    .bind(&on_failures)
    .bind(&remaining)
    .execute(&mut *conn)
    .await?;
    let mut effects = Effects::default();
    start(
        conn,
        vec![Start::node(id, 0, Input::new(input))],
        &mut effects,
    )
    .await?;
    Ok((id, effects))
}

/// A node's outcome as recorded, with what its parent needs to know.
struct Recorded {
    workflow: i64,
    node: i32,
    parent: Option<i32>,
    parent_type: Option<String>,
    position: i32,
    last: bool,
    subtree_end: i32,
    label: String,
    ended: Ended,
    result: Option<Value>,
    error: Option<String>,
    lazy: bool,
}

impl Recorded {
    /// `failed: <error>` / `was cancelled: <error>`.
    fn how(&self) -> String {
        let verb = if self.ended == Ended::Cancelled {
            "was cancelled"
        } else {
            "failed"
        };
        match &self.error {
            Some(error) => format!("{verb}: {error}"),
            None => verb.to_owned(),
        }
    }
}

/// Records `events` and everything they lead to, in the caller's transaction.
pub(crate) async fn advance(
    conn: &mut PgConnection,
    mut events: Vec<Event>,
) -> Result<Effects, sqlx::Error> {
    let mut effects = Effects::default();
    while !events.is_empty() {
        // Rows are locked in one order by every transaction, which keeps two completers that
        // finish members of the same groups from deadlocking in the common case.
        events.sort_by_key(|e| (e.workflow, e.node));
        let recorded = record(conn, events).await?;
        let mut next = Vec::new();
        let mut starts = Vec::new();
        let mut roots = Vec::new();
        let mut stopped = Vec::new();
        let mut counts: BTreeMap<(i64, i32), (i32, i32)> = BTreeMap::new();
        for r in recorded {
            match (r.parent, r.parent_type.as_deref()) {
                (None, _) => roots.push(r),
                (Some(parent), Some("group")) => {
                    let count = counts.entry((r.workflow, parent)).or_default();
                    count.0 += 1;
                    if r.ended != Ended::Completed {
                        count.1 += 1;
                    }
                }
                (Some(parent), _) => {
                    if r.ended == Ended::Completed {
                        let result = r.result.unwrap_or(Value::Null);
                        if r.lazy {
                            // Only a group that is not its chain's last child is lazy.
                            starts.push(Start::node(
                                r.workflow,
                                r.subtree_end + 1,
                                Input::group_results(r.workflow, r.node),
                            ));
                        } else if r.last {
                            next.push(Event {
                                workflow: r.workflow,
                                node: parent,
                                ended: Ended::Completed,
                                result: Some(result),
                                error: None,
                                lazy: false,
                            });
                        } else {
                            starts.push(Start::node(
                                r.workflow,
                                r.subtree_end + 1,
                                Input::new(result),
                            ));
                        }
                    } else {
                        let why = format!(
                            "step {} of the chain ({}) {}",
                            r.position + 1,
                            r.label,
                            r.how()
                        );
                        if !r.last {
                            stopped.push((
                                r.workflow,
                                r.subtree_end,
                                parent,
                                format!("not run: {why}"),
                            ));
                        }
                        next.push(Event {
                            workflow: r.workflow,
                            node: parent,
                            ended: r.ended,
                            result: None,
                            error: Some(why),
                            lazy: false,
                        });
                    }
                }
            }
        }
        mark_not_run(conn, &stopped).await?;
        next.extend(count_down(conn, &counts).await?);
        finish_workflows(conn, &roots).await?;
        start(conn, starts, &mut effects).await?;
        events = next;
    }
    Ok(effects)
}

/// Step 1: outcomes on their nodes, only on nodes still running. `events` are sorted by
/// `(workflow, node)`; the results travel to the database once and are not read back.
async fn record(
    conn: &mut PgConnection,
    mut events: Vec<Event>,
) -> Result<Vec<Recorded>, sqlx::Error> {
    let workflows: Vec<i64> = events.iter().map(|e| e.workflow).collect();
    let nodes: Vec<i32> = events.iter().map(|e| e.node).collect();
    let states: Vec<&str> = events.iter().map(|e| e.ended.as_str()).collect();
    let results: Vec<Option<&Value>> = events.iter().map(|e| e.result.as_ref()).collect();
    let errors: Vec<Option<&str>> = events.iter().map(|e| e.error.as_deref()).collect();
    let rows = sqlx::query(
        // `clock_timestamp()`: when the node was recorded, not when the transaction began (a
        // completer's transaction records a whole batch; a group completes at its end).
        "WITH hit AS (
             SELECT e.*, x.tid
               FROM unnest($1::int8[], $2::int4[], $3::text[], $4::jsonb[], $5::text[]) AS e(wf, node, state, result, error),
                    LATERAL (SELECT n.ctid AS tid, n.state AS was FROM workflow_nodes n
                              WHERE n.workflow_id = e.wf AND n.node = e.node OFFSET 0 FOR UPDATE) x
              WHERE x.was = 'running'
         )
         UPDATE workflow_nodes n
            SET state = hit.state, result = hit.result, error = hit.error, finished_at = clock_timestamp()
           FROM hit
          WHERE n.ctid = hit.tid
         RETURNING n.workflow_id, n.node, n.parent, n.parent_type, n.position, n.last, n.subtree_end,
                   coalesce(n.kind, n.type) AS label",
    )
    .bind(&workflows)
    .bind(&nodes)
    .bind(&states)
    .bind(&results)
    .bind(&errors)
    .fetch_all(&mut *conn)
    .await?;
    drop((states, results, errors));
    let mut recorded: Vec<Recorded> = Vec::with_capacity(rows.len());
    for row in rows {
        let key = (
            row.try_get::<i64, _>("workflow_id")?,
            row.try_get::<i32, _>("node")?,
        );
        let Ok(i) = events.binary_search_by_key(&key, |e| (e.workflow, e.node)) else {
            continue;
        };
        let event = &mut events[i];
        recorded.push(Recorded {
            workflow: key.0,
            node: key.1,
            parent: row.try_get("parent")?,
            parent_type: row.try_get("parent_type")?,
            position: row.try_get("position")?,
            last: row.try_get("last")?,
            subtree_end: row.try_get("subtree_end")?,
            label: row.try_get("label")?,
            ended: event.ended,
            result: event.result.take(),
            error: event.error.take(),
            lazy: event.lazy,
        });
    }
    save_chunks(conn, &recorded).await?;
    Ok(recorded)
}

/// One chunk per group of the outcomes of its members just recorded (see [`group_results`]).
async fn save_chunks(conn: &mut PgConnection, recorded: &[Recorded]) -> Result<(), sqlx::Error> {
    let mut chunks: BTreeMap<(i64, i32), Vec<Value>> = BTreeMap::new();
    for r in recorded {
        if let (Some(parent), Some("group")) = (r.parent, r.parent_type.as_deref()) {
            let entry = if r.ended == Ended::Completed {
                json!([r.position, r.result, null])
            } else {
                json!([
                    r.position,
                    null,
                    r.error
                        .clone()
                        .unwrap_or_else(|| r.ended.as_str().to_owned())
                ])
            };
            chunks.entry((r.workflow, parent)).or_default().push(entry);
        }
    }
    if chunks.is_empty() {
        return Ok(());
    }
    let workflows: Vec<i64> = chunks.keys().map(|k| k.0).collect();
    let groups: Vec<i32> = chunks.keys().map(|k| k.1).collect();
    let texts: Vec<String> = chunks
        .into_values()
        .map(|entries| Value::Array(entries).to_string())
        .collect();
    sqlx::query(
        "INSERT INTO workflow_results (workflow_id, group_node, chunk)
         SELECT * FROM unnest($1::int8[], $2::int4[], $3::text[])",
    )
    .bind(&workflows)
    .bind(&groups)
    .bind(&texts)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Marks the rest of each stopped chain (the nodes after `after` in the chain's subtree) as
/// not run, with the reason.
async fn mark_not_run(
    conn: &mut PgConnection,
    stopped: &[(i64, i32, i32, String)],
) -> Result<(), sqlx::Error> {
    if stopped.is_empty() {
        return Ok(());
    }
    let workflows: Vec<i64> = stopped.iter().map(|s| s.0).collect();
    let afters: Vec<i32> = stopped.iter().map(|s| s.1).collect();
    let parents: Vec<i32> = stopped.iter().map(|s| s.2).collect();
    let reasons: Vec<&str> = stopped.iter().map(|s| s.3.as_str()).collect();
    sqlx::query(
        "WITH hit AS (
             SELECT s.reason, x.tid
               FROM unnest($1::int8[], $2::int4[], $3::int4[], $4::text[]) AS s(wf, after, parent, reason),
                    LATERAL (SELECT p.subtree_end AS last_node FROM workflow_nodes p
                              WHERE p.workflow_id = s.wf AND p.node = s.parent) p,
                    LATERAL (SELECT n.ctid AS tid, n.state AS was FROM workflow_nodes n
                              WHERE n.workflow_id = s.wf AND n.node > s.after AND n.node <= p.last_node
                             OFFSET 0 FOR UPDATE) x
              WHERE x.was = 'pending'
         )
         UPDATE workflow_nodes n
            SET state = 'not_run', error = hit.reason, finished_at = clock_timestamp()
           FROM hit
          WHERE n.ctid = hit.tid",
    )
    .bind(&workflows)
    .bind(&afters)
    .bind(&parents)
    .bind(&reasons)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Step 3: counts groups down; returns the outcomes of the groups that reached zero.
async fn count_down(
    conn: &mut PgConnection,
    counts: &BTreeMap<(i64, i32), (i32, i32)>,
) -> Result<Vec<Event>, sqlx::Error> {
    if counts.is_empty() {
        return Ok(Vec::new());
    }
    let workflows: Vec<i64> = counts.keys().map(|k| k.0).collect();
    let nodes: Vec<i32> = counts.keys().map(|k| k.1).collect();
    let done: Vec<i32> = counts.values().map(|c| c.0).collect();
    let failed: Vec<i32> = counts.values().map(|c| c.1).collect();
    // The counter: each transaction takes the row lock here and sees the count left by the
    // one before it; only the one that brings it to zero goes on. One statement per group (a
    // batch rarely touches more than one or two), each a primary-key update: a join here could
    // be planned as a scan of the whole table, and the rows must be read under their lock,
    // not through a snapshot, since other instances update them at the same moment.
    let mut zeroed = Vec::new();
    for (((workflow, node), done), failed) in workflows.iter().zip(&nodes).zip(&done).zip(&failed) {
        let row = sqlx::query(
            "UPDATE workflow_nodes
                SET remaining = remaining - $3, failed = failed + $4
              WHERE workflow_id = $1 AND node = $2 AND state = 'running'
             RETURNING workflow_id, node, remaining, failed, on_failure, parent_type, last",
        )
        .bind(workflow)
        .bind(node)
        .bind(done)
        .bind(failed)
        .fetch_optional(&mut *conn)
        .await?;
        zeroed.extend(row);
    }
    let mut events = Vec::new();
    for row in zeroed {
        let remaining: i32 = row.try_get("remaining")?;
        if remaining > 0 {
            continue;
        }
        let workflow: i64 = row.try_get("workflow_id")?;
        let node: i32 = row.try_get("node")?;
        let collect = row.try_get::<Option<&str>, _>("on_failure")? == Some("collect");
        let failed: i32 = row.try_get("failed")?;
        if failed > 0 && !collect {
            events.push(Event {
                workflow,
                node,
                ended: Ended::Failed,
                result: None,
                error: Some(group_failure(conn, workflow, node, failed).await?),
                lazy: false,
            });
            continue;
        }
        // Followed by a step in a chain (a chord's header): that step reads the results when
        // it starts. Otherwise they are built now, for whoever gets them.
        let followed = row.try_get::<Option<&str>, _>("parent_type")? == Some("chain")
            && !row.try_get::<bool, _>("last")?;
        let result = if followed {
            None
        } else {
            // A new statement, so a new snapshot: it sees every member counted before this
            // transaction got the lock (those transactions have committed).
            Some(group_results(&mut *conn, workflow, node).await?)
        };
        events.push(Event {
            workflow,
            node,
            ended: Ended::Completed,
            result,
            error: None,
            lazy: followed,
        });
    }
    Ok(events)
}

/// Why a group failed: how many members did not complete, and the first of them.
async fn group_failure(
    conn: &mut PgConnection,
    workflow: i64,
    group: i32,
    failed: i32,
) -> Result<String, sqlx::Error> {
    let (members, first): (i64, Option<String>) = sqlx::query_as(
        "SELECT count(*),
                (array_agg(format('member %s (%s) %s', n.position + 1, coalesce(n.kind, n.type),
                                  CASE n.state WHEN 'cancelled' THEN 'was cancelled' ELSE 'failed' END)
                           || coalesce(': ' || n.error, '') ORDER BY n.node)
                    FILTER (WHERE n.state <> 'completed'))[1]
           FROM workflow_nodes g
           JOIN workflow_nodes n ON n.workflow_id = g.workflow_id AND n.node > g.node
                                AND n.node <= g.subtree_end AND n.parent = g.node
          WHERE g.workflow_id = $1 AND g.node = $2",
    )
    .bind(workflow)
    .bind(group)
    .fetch_one(&mut *conn)
    .await?;
    Ok(format!(
        "{failed} of {members} members of the group did not complete; the first: {}",
        first.unwrap_or_default()
    ))
}

/// Step 4: workflows whose root finished, and their `workflow.finished` messages.
async fn finish_workflows(conn: &mut PgConnection, roots: &[Recorded]) -> Result<(), sqlx::Error> {
    if roots.is_empty() {
        return Ok(());
    }
    let workflows: Vec<i64> = roots.iter().map(|r| r.workflow).collect();
    let states: Vec<&str> = roots.iter().map(|r| r.ended.as_str()).collect();
    let results: Vec<Option<Value>> = roots.iter().map(|r| r.result.clone()).collect();
    let errors: Vec<Option<String>> = roots.iter().map(|r| r.error.clone()).collect();
    sqlx::query(
        "WITH done AS (
             UPDATE workflows w
                SET state = r.state, result = r.result, error = r.error, finished_at = now()
               FROM unnest($1::int8[], $2::text[], $3::jsonb[], $4::text[]) AS r(wf, state, result, error)
              WHERE w.id = r.wf AND w.state = 'running'
             RETURNING w.id, w.state
         ),
         sent AS (
             INSERT INTO channel_messages (target, is_group, payload)
             SELECT 'workflow.' || id, true,
                    json_build_object('type', 'workflow.finished', 'id', id, 'state', state)::text
               FROM done
             RETURNING 1
         )
         SELECT count(*) FROM (SELECT pg_notify('hearth_channels', '') FROM (SELECT 1 FROM sent LIMIT 1) one) n",
    )
    .bind(&workflows)
    .bind(&states)
    .bind(&results)
    .bind(&errors)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A job to enqueue for a leaf that was reached.
struct Leaf {
    workflow: i64,
    node: i32,
    kind: String,
    options: StepOptions,
    args: Value,
}

/// Starts nodes: containers are marked running and descended into, leaves get their jobs, all
/// inserted in one statement at the end.
///
/// Every mark is conditional on the node still being `pending`: if [`cancel`](super::cancel)
/// got to a node first (it marks it `not_run`), the mark waits for its lock, finds the node no
/// longer pending and nothing below it is started, so a cancelled workflow gets no new jobs.
async fn start(
    conn: &mut PgConnection,
    mut starts: Vec<Start>,
    effects: &mut Effects,
) -> Result<(), sqlx::Error> {
    let mut leaves: Vec<Leaf> = Vec::new();
    // Large inputs to store on the node they were stored at: (workflow, node, input).
    let mut stored: Vec<(i64, i32, Value)> = Vec::new();
    while !starts.is_empty() {
        let workflows: Vec<i64> = starts.iter().map(|s| s.workflow).collect();
        let los: Vec<i32> = starts.iter().map(|s| s.lo).collect();
        let his: Vec<i32> = starts.iter().map(|s| s.hi).collect();
        let parents: Vec<Option<i32>> = starts.iter().map(|s| s.parent).collect();
        // One primary-key range per start: a node, or a group's subtree filtered to its
        // members. `OFFSET 0` keeps each range a lookup of its own (see `finish_batch`).
        let rows = sqlx::query(
            "SELECT r.ord, n.node, n.type, n.kind, n.params, n.options, n.subtree_end
               FROM unnest($1::int8[], $2::int4[], $3::int4[], $4::int4[]) WITH ORDINALITY AS r(wf, lo, hi, parent, ord),
                    LATERAL (SELECT n.node, n.type, n.kind, n.params, n.options, n.subtree_end, n.parent, n.state
                               FROM workflow_nodes n
                              WHERE n.workflow_id = r.wf AND n.node BETWEEN r.lo AND r.hi OFFSET 0) n
              WHERE n.state = 'pending' AND (r.parent IS NULL OR n.parent = r.parent)
              ORDER BY r.ord, n.node",
        )
        .bind(&workflows)
        .bind(&los)
        .bind(&his)
        .bind(&parents)
        .fetch_all(&mut *conn)
        .await?;
        // Containers reached at this level: marked below, descended into if the mark holds.
        let mut containers: Vec<(i64, i32, Start)> = Vec::new();
        for row in rows {
            let ord: i64 = row.try_get("ord")?;
            let Some(from) = starts.get((ord - 1) as usize) else {
                continue;
            };
            let workflow = from.workflow;
            let node: i32 = row.try_get("node")?;
            let node_type: &str = row.try_get("type")?;
            // A large input not stored yet is stored on the first node it reaches; every job
            // below that node points there.
            let mut input = from.input.clone();
            // A group's results not built yet are read by the step itself when it starts; a
            // chain or group after the group gets them built now (each of its members would
            // otherwise build them again).
            if let (Some((wf, group)), false) = (input.group, node_type == "job") {
                input = Input::new(group_results(&mut *conn, wf, group).await?);
            }
            if input.large && input.at.is_none() {
                stored.push((workflow, node, input.value.clone()));
                input = Arc::new(Input {
                    value: Value::Null,
                    at: Some((workflow, node)),
                    large: true,
                    group: None,
                });
            }
            if node_type == "job" {
                let options: Value = row.try_get("options")?;
                let options: StepOptions = serde_json::from_value(options)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                let params: Value = row.try_get("params")?;
                let args = match (input.group, input.at) {
                    (Some(group), _) => json!({ "params": params, "input_group": group }),
                    (None, Some(at)) => json!({ "params": params, "input_at": at }),
                    (None, None) => json!({ "params": params, "input": input.value }),
                };
                leaves.push(Leaf {
                    workflow,
                    node,
                    kind: row.try_get("kind")?,
                    options,
                    args,
                });
                continue;
            }
            let end: i32 = row.try_get("subtree_end")?;
            let below = if node_type == "group" {
                Start {
                    workflow,
                    lo: node + 1,
                    hi: end,
                    parent: Some(node),
                    input,
                }
            } else {
                // A chain's first child is the node right after it.
                Start::node(workflow, node + 1, input)
            };
            containers.push((workflow, node, below));
        }
        starts = mark_running(conn, containers).await?;
    }
    if !stored.is_empty() {
        let workflows: Vec<i64> = stored.iter().map(|u| u.0).collect();
        let nodes: Vec<i32> = stored.iter().map(|u| u.1).collect();
        let inputs: Vec<Value> = stored.into_iter().map(|u| u.2).collect();
        sqlx::query(
            "WITH hit AS (
                 SELECT u.input, x.tid
                   FROM unnest($1::int8[], $2::int4[], $3::jsonb[]) AS u(wf, node, input),
                        LATERAL (SELECT n.ctid AS tid FROM workflow_nodes n
                                  WHERE n.workflow_id = u.wf AND n.node = u.node OFFSET 0 FOR UPDATE) x
             )
             UPDATE workflow_nodes n SET input = hit.input FROM hit WHERE n.ctid = hit.tid",
        )
        .bind(&workflows)
        .bind(&nodes)
        .bind(&inputs)
        .execute(&mut *conn)
        .await?;
    }
    enqueue_leaves(conn, leaves, effects).await
}

/// Marks containers running if they are still pending; returns the starts below those marked.
async fn mark_running(
    conn: &mut PgConnection,
    containers: Vec<(i64, i32, Start)>,
) -> Result<Vec<Start>, sqlx::Error> {
    if containers.is_empty() {
        return Ok(Vec::new());
    }
    let workflows: Vec<i64> = containers.iter().map(|c| c.0).collect();
    let nodes: Vec<i32> = containers.iter().map(|c| c.1).collect();
    let marked: Vec<(i64, i32)> = sqlx::query_as(
        "UPDATE workflow_nodes n SET state = 'running', started_at = now()
          WHERE n.ctid = ANY (ARRAY(
                SELECT x.tid
                  FROM unnest($1::int8[], $2::int4[]) AS u(wf, node),
                       LATERAL (SELECT n.ctid AS tid, n.state AS was FROM workflow_nodes n
                                 WHERE n.workflow_id = u.wf AND n.node = u.node OFFSET 0 FOR UPDATE) x
                 WHERE x.was = 'pending'))
         RETURNING n.workflow_id, n.node",
    )
    .bind(&workflows)
    .bind(&nodes)
    .fetch_all(&mut *conn)
    .await?;
    let marked: BTreeSet<(i64, i32)> = marked.into_iter().collect();
    Ok(containers
        .into_iter()
        .filter(|c| marked.contains(&(c.0, c.1)))
        .map(|c| c.2)
        .collect())
}

/// Inserts the jobs of the leaves reached, marks their nodes running with their job ids, and
/// notifies the queues (debounced, as [`Enqueue`](crate::jobs::Enqueue) does).
async fn enqueue_leaves(
    conn: &mut PgConnection,
    leaves: Vec<Leaf>,
    effects: &mut Effects,
) -> Result<(), sqlx::Error> {
    if leaves.is_empty() {
        return Ok(());
    }
    let n = leaves.len();
    let mut workflows = Vec::with_capacity(n);
    let mut nodes = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut queues = Vec::with_capacity(n);
    let mut args = Vec::with_capacity(n);
    let mut priorities = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut timeouts = Vec::with_capacity(n);
    for leaf in leaves {
        effects.queues.insert(leaf.options.queue.clone());
        workflows.push(leaf.workflow);
        nodes.push(leaf.node);
        kinds.push(leaf.kind);
        queues.push(leaf.options.queue);
        args.push(leaf.args);
        priorities.push(leaf.options.priority);
        attempts.push(leaf.options.max_attempts);
        timeouts.push(leaf.options.timeout_ms);
    }
    let notify: Vec<&str> = effects
        .queues
        .iter()
        .map(String::as_str)
        .filter(|q| wake::should_notify(q))
        .collect();
    crate::jobs::metrics::METRICS.enqueued.add(n as u64);
    // The node is marked first, with its job's id drawn from the sequence, and the job is
    // inserted only for nodes whose mark held (still pending: not cancelled meanwhile).
    sqlx::query(
        "WITH i AS (
             SELECT * FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[], $5::jsonb[], $6::int2[],
                                  $7::int4[], $8::int4[])
                      WITH ORDINALITY AS i(wf, node, kind, queue, args, priority, max_attempts, timeout_ms, ord)
         ),
         hit AS (
             SELECT x.tid
               FROM i, LATERAL (SELECT n.ctid AS tid, n.state AS was FROM workflow_nodes n
                                 WHERE n.workflow_id = i.wf AND n.node = i.node OFFSET 0 FOR UPDATE) x
              WHERE x.was = 'pending'
         ),
         marked AS (
             UPDATE workflow_nodes n
                SET state = 'running', job_id = nextval('jobs_id_seq'), started_at = now()
              WHERE n.ctid = ANY (ARRAY(SELECT tid FROM hit))
             RETURNING n.workflow_id, n.node, n.job_id
         ),
         ins AS (
             INSERT INTO jobs (id, kind, queue, args, priority, max_attempts, timeout_ms, owner_id, workflow_id, workflow_node)
             SELECT m.job_id, i.kind, i.queue, i.args, i.priority, i.max_attempts, i.timeout_ms,
                    (SELECT w.owner_id FROM workflows w WHERE w.id = i.wf), i.wf, i.node
               FROM i JOIN marked m ON m.workflow_id = i.wf AND m.node = i.node
             RETURNING id
         )
         SELECT (SELECT count(*) FROM ins),
                (SELECT count(*) FROM (SELECT pg_notify('hearth_jobs', q) FROM unnest($9::text[]) AS q) AS sent)",
    )
    .bind(&workflows)
    .bind(&nodes)
    .bind(&kinds)
    .bind(&queues)
    .bind(&args)
    .bind(&priorities)
    .bind(&attempts)
    .bind(&timeouts)
    .bind(&notify)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
