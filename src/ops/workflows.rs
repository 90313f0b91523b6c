//! The console's workflow pages: the latest workflows, and one workflow's steps drawn as a
//! graph (an inline SVG laid out in [`super::workflow_graph`]) above an outline of its chains
//! and groups, each step with its state, both updated live, with cancel.

use askama::Template;
use axum::{
    extract::{Path, State},
    response::{IntoResponse, Redirect, Response},
};
use axum_extra::extract::SignedCookieJar;
use serde_json::json;
use sqlx::Row;

use super::audit;
use crate::{
    jobs::workflow::{self, NodeStatus, WorkflowCancelled, WorkflowStatus},
    web::{AppState, Layout, WebError, auth::RequireAdmin, flash, render, replicas::LagTolerant},
};

/// Most nodes a workflow's page draws; the counts cover all of them.
const MAX_NODES: i64 = 1_000;
/// Workflows on the list page.
const PAGE: i64 = 50;

/// A workflow in the list.
struct Summary {
    id: i64,
    name: String,
    state: String,
    created: String,
    finished: String,
}

#[derive(Template)]
#[template(path = "ops/workflows.html")]
struct ListPage {
    layout: Layout,
    workflows: Vec<Summary>,
}

/// `/ops/workflows`: the latest workflows (from a replica when one serves).
pub(super) async fn list(
    LagTolerant(db): LagTolerant,
    _admin: RequireAdmin,
    layout: Layout,
) -> Result<Response, WebError> {
    let rows = sqlx::query(
        "SELECT id, name, state, created_at, finished_at FROM workflows ORDER BY id DESC LIMIT $1",
    )
    .bind(PAGE)
    .fetch_all(&db)
    .await?;
    let workflows = rows
        .into_iter()
        .map(|r| {
            let finished: Option<time::OffsetDateTime> = r.try_get("finished_at")?;
            Ok(Summary {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                state: r.try_get("state")?,
                created: crate::web::templates::ago(r.try_get("created_at")?),
                finished: finished.map_or_else(|| "–".into(), crate::web::templates::ago),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(render(&ListPage { layout, workflows })?.into_response())
}

/// One line of the graph: a node, indented under its parent.
struct Line {
    node: NodeStatus,
    depth: usize,
    /// `step 2` in a chain, `member 3` in a group, `workflow` for the root.
    role: String,
}

#[derive(Template)]
#[template(path = "ops/workflow.html")]
struct WorkflowPage {
    layout: Layout,
    workflow: WorkflowStatus,
    graph: Option<super::workflow_graph::Graph>,
    lines: Vec<Line>,
    counts: Vec<(String, i64)>,
    result: String,
    hidden: i64,
}

impl WorkflowPage {
    fn at(&self, at: &time::OffsetDateTime) -> String {
        crate::web::templates::timestamp(*at)
    }

    fn maybe(&self, at: &Option<time::OffsetDateTime>) -> String {
        at.map_or_else(|| "–".into(), crate::web::templates::timestamp)
    }

    /// A line's indentation class (`wf-depth-N` in app.css; classes, since the CSP allows no
    /// inline style), capped at 8 levels.
    fn depth(&self, depth: &usize) -> usize {
        (*depth).min(8)
    }
}

/// The outline of `nodes` (in preorder, as `status` returns them): each node's depth and role.
fn outline(nodes: Vec<NodeStatus>) -> Vec<Line> {
    let mut depth_of: std::collections::HashMap<i32, (usize, String)> = Default::default();
    nodes
        .into_iter()
        .map(|node| {
            let (depth, role) = match node.parent.and_then(|p| depth_of.get(&p)) {
                None => (0, "workflow".to_owned()),
                Some((depth, parent_type)) => {
                    let role = if parent_type == "group" {
                        "member"
                    } else {
                        "step"
                    };
                    (depth + 1, format!("{role} {}", node.position + 1))
                }
            };
            depth_of.insert(node.node, (depth, node.node_type.clone()));
            Line { node, depth, role }
        })
        .collect()
}

/// `/ops/workflows/{id}`: the workflow's steps and their states.
pub(super) async fn show(
    State(state): State<AppState>,
    _admin: RequireAdmin,
    layout: Layout,
    Path(id): Path<i64>,
) -> Result<Response, WebError> {
    let mut workflow = workflow::status(&state.db, id, MAX_NODES)
        .await?
        .ok_or(WebError::NotFound)?;
    let nodes = std::mem::take(&mut workflow.nodes);
    let hidden = workflow.total_nodes - nodes.len() as i64;
    let counts = workflow
        .counts
        .iter()
        .map(|(state, n)| (state.clone(), *n))
        .collect();
    let result = workflow
        .result
        .as_ref()
        .map(|r| serde_json::to_string_pretty(r).unwrap_or_default())
        .unwrap_or_default();
    // Only a whole tree can be drawn.
    let graph = (hidden == 0)
        .then(|| super::workflow_graph::draw(&nodes))
        .flatten();
    Ok(render(&WorkflowPage {
        layout,
        graph,
        lines: outline(nodes),
        counts,
        result,
        hidden,
        workflow,
    })?
    .into_response())
}

/// `POST /ops/workflows/{id}/cancel`.
#[tracing::instrument(skip(state, admin, jar))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    jar: SignedCookieJar,
    Path(id): Path<i64>,
) -> Result<Response, WebError> {
    let outcome = match workflow::cancel(&state.db, id).await? {
        WorkflowCancelled::Cancelled { waiting, running } => format!(
            "Workflow {id} is cancelled: {waiting} waiting steps cancelled, {running} running told to stop."
        ),
        WorkflowCancelled::AlreadyFinished => format!("Workflow {id} had already finished."),
        WorkflowCancelled::NotFound => return Err(WebError::NotFound),
    };
    audit::record(
        &state.db,
        &admin,
        "workflow.cancel",
        &id.to_string(),
        json!({ "outcome": outcome }),
    )
    .await?;
    Ok((
        flash::set(jar, outcome),
        Redirect::to(&format!("/ops/workflows/{id}")),
    )
        .into_response())
}
