//! The status API of jobs and workflows, with long polling: `GET /api/jobs/{id}?wait=10s`
//! answers as soon as the job finishes (or when the wait is up, with its state then), woken by
//! the channel layer rather than by polling the database.
//!
//! A job or workflow is shown to its owner and to administrators; anyone else gets the 404 of
//! one that does not exist, so ids cannot be probed. The wait is bounded (at most
//! [`MAX_WAIT`], and always shorter than the request timeout), and so is the number of
//! requests waiting at once on this instance: past [`MAX_WAITERS`] a request is answered at
//! once with the current state, as without `wait`.

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use axum::{
    Json,
    extract::{Path, Query, State},
};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::{
    jobs::{
        control::{self, JobStatus},
        workflow::{self, JobHandle, MAX_WAIT, WorkflowHandle, WorkflowStatus},
    },
    web::{AppState, WebError, auth::RequireLogin},
};

/// Most long polls waiting at once on one instance. Each holds a channel-layer subscription
/// (a small queue) and a task, no database connection.
pub const MAX_WAITERS: usize = 10_000;

static WAITERS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(MAX_WAITERS)));

/// Most nodes a workflow's status lists.
const MAX_NODES: i64 = 1_000;

#[derive(Debug, Deserialize)]
pub(super) struct WaitQuery {
    /// `10s`, `500ms`, `1m`, or bare seconds; at most 30 s.
    wait: Option<String>,
}

impl WaitQuery {
    /// The wait asked for, bounded by [`MAX_WAIT`] and by the request timeout (less a second
    /// to answer in). A duration that does not parse, or is over the bound, is a 400.
    fn duration(&self, request_timeout: Duration) -> Result<Option<Duration>, WebError> {
        let Some(raw) = self
            .wait
            .as_deref()
            .map(str::trim)
            .filter(|w| !w.is_empty())
        else {
            return Ok(None);
        };
        let bad = || {
            WebError::BadRequest(format!(
                "wait must be a duration such as 10s or 500ms, at most {}s",
                MAX_WAIT.as_secs()
            ))
        };
        if raw.len() > 32 {
            return Err(bad());
        }
        let wait = match raw.parse::<u64>() {
            Ok(seconds) => Duration::from_secs(seconds.min(u64::from(u32::MAX))),
            Err(_) => humantime::parse_duration(raw).map_err(|_| bad())?,
        };
        if wait > MAX_WAIT {
            return Err(bad());
        }
        Ok(Some(wait.min(
            request_timeout.saturating_sub(Duration::from_secs(1)),
        )))
    }
}

/// `GET /api/jobs/{id}[?wait=10s]`: state, attempts, progress and result of a job, for the user
/// it was enqueued for and for administrators. Anyone else gets the same 404 as for a job that
/// does not exist, so that ids cannot be probed for other people's jobs (their kinds, their
/// results); system jobs (no owner) are for administrators only. Args and error messages can
/// quote other people's data (a mail address a server refused), so only administrators see
/// them, even on their own jobs.
///
/// With `wait`, a job that has not finished is answered when it finishes or when the wait is
/// up, whichever comes first.
#[tracing::instrument(skip(state, login, query), fields(user_id = login.user.id))]
pub(super) async fn job_status(
    State(state): State<AppState>,
    login: RequireLogin,
    Path(id): Path<i64>,
    Query(query): Query<WaitQuery>,
) -> Result<Json<JobStatus>, WebError> {
    let wait = query.duration(state.config.http.request_timeout)?;
    let readable = |job: &JobStatus| login.user.is_admin || job.owner_id == Some(login.user.id);
    let mut status = control::status(&state.db, id)
        .await?
        .filter(readable)
        .ok_or(WebError::NotFound)?;
    if let Some(wait) = wait
        && !workflow::wait::is_finished(&status.state)
        && let Ok(_permit) = WAITERS.clone().try_acquire_owned()
    {
        match JobHandle::new(id).wait(&state.channels, wait).await {
            Ok(Some(done)) => status = done,
            Ok(None) => {
                if let Some(now) = control::status(&state.db, id).await? {
                    status = now;
                }
            }
            // Gone meanwhile (pruned, or deleted when completed jobs are not kept): answer
            // with what was read before.
            Err(workflow::WaitError::NotFound) => {}
            Err(e) => return Err(WebError::Internal(e.into())),
        }
    }
    if !login.user.is_admin {
        status.args = serde_json::Value::Null;
        status.errors = serde_json::json!([]);
    }
    Ok(Json(status))
}

/// `GET /api/workflows/{id}[?wait=10s]`: a workflow's state, result and nodes (the first
/// [`MAX_NODES`]), for its owner and administrators, with the same rules and long poll as a
/// job's.
#[tracing::instrument(skip(state, login, query), fields(user_id = login.user.id))]
pub(super) async fn workflow_status(
    State(state): State<AppState>,
    login: RequireLogin,
    Path(id): Path<i64>,
    Query(query): Query<WaitQuery>,
) -> Result<Json<WorkflowStatus>, WebError> {
    let wait = query.duration(state.config.http.request_timeout)?;
    let readable = |w: &WorkflowStatus| login.user.is_admin || w.owner_id == Some(login.user.id);
    let mut status = workflow::status(&state.db, id, MAX_NODES)
        .await?
        .filter(readable)
        .ok_or(WebError::NotFound)?;
    if let Some(wait) = wait.filter(|_| status.state == "running")
        && let Ok(_permit) = WAITERS.clone().try_acquire_owned()
    {
        match WorkflowHandle::<serde_json::Value>::new(id)
            .wait(&state.channels, wait)
            .await
        {
            Ok(_) | Err(workflow::WaitError::Result(_)) => {}
            Err(e) => return Err(WebError::Internal(e.into())),
        }
        if let Some(now) = workflow::status(&state.db, id, MAX_NODES).await? {
            status = now;
        }
    }
    // As for a job: error messages can quote other people's data, so only administrators
    // read them; the owner sees which steps failed, by their states.
    if !login.user.is_admin {
        status.error = None;
        for node in &mut status.nodes {
            node.error = None;
        }
    }
    Ok(Json(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(wait: &str) -> Result<Option<Duration>, WebError> {
        WaitQuery {
            wait: Some(wait.into()),
        }
        .duration(Duration::from_secs(60))
    }

    #[test]
    fn waits_parse_within_bounds() {
        assert_eq!(parse("10s").unwrap(), Some(Duration::from_secs(10)));
        assert_eq!(parse("250ms").unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(parse("7").unwrap(), Some(Duration::from_secs(7)));
        assert_eq!(parse("30s").unwrap(), Some(MAX_WAIT));
        assert_eq!(parse("").unwrap(), None);
        for bad in ["31s", "1h", "soon", "-1s", "10 parsecs", &"9".repeat(40)] {
            assert!(
                matches!(parse(bad), Err(WebError::BadRequest(_))),
                "{bad:?} is refused"
            );
        }
        let short = WaitQuery {
            wait: Some("30s".into()),
        };
        assert_eq!(
            short.duration(Duration::from_secs(10)).unwrap(),
            Some(Duration::from_secs(9)),
            "the wait ends before the request timeout"
        );
    }
}
