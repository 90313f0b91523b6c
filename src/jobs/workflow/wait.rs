//! Waiting on a job or a workflow, woken by the channel layer rather than by polling.
//!
//! The waiter joins a channel-layer group (`job.<id>`, `workflow.<id>`) first, then reads the
//! state; if it is not final it sleeps until a message arrives in the group or the timeout is
//! up, and reads the state again. The message is sent by the transaction that records the
//! outcome, so it exists exactly when the outcome does; joining before reading means one sent
//! between the read and the sleep is not missed.
//!
//! A workflow always announces its end (once per workflow, cheap). A single job announces its
//! own only when someone waits on it: the waiter sets `jobs.notify_done`, and the statement
//! that records the outcome sends the message for rows with the flag. Setting the flag takes
//! the row's lock, so either the recording statement sees the flag (it locks the row after the
//! flag's update committed) or the update finds no live row (the outcome is already recorded,
//! and the read that follows sees it).

use std::{future::Future, time::Duration};

use sqlx::PgPool;
use tokio::time::Instant;

use crate::{
    channels::{ChannelError, ChannelLayer, GroupName},
    jobs::control::{self, JobStatus},
};

/// The longest wait the HTTP API grants (`GET /api/jobs/{id}?wait=`).
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Why waiting failed (a timeout is not an error: the wait returns `None`).
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("no such job or workflow")]
    NotFound,
    #[error("the result does not deserialize into the expected type: {0}")]
    Result(#[source] serde_json::Error),
    #[error("the channel layer stopped while waiting")]
    Closed,
    #[error(transparent)]
    Channels(#[from] ChannelError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Joins `group`, runs `arm` once, then runs `check` until it returns `Some` or `timeout` is
/// up, sleeping between checks until a message arrives in the group.
pub(crate) async fn until<T, Arm, Check, Fut>(
    channels: &ChannelLayer,
    group: &str,
    timeout: Duration,
    arm: Arm,
    mut check: Check,
) -> Result<Option<T>, WaitError>
where
    Arm: Future<Output = Result<(), WaitError>>,
    Check: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, WaitError>>,
{
    let deadline = Instant::now() + timeout;
    let group = GroupName::parse(group)?;
    // Until the reader knows where to start, a message could be sent before its starting point
    // and never delivered; after it, every message for a member of this instance arrives.
    if tokio::time::timeout_at(deadline, channels.ready())
        .await
        .is_err()
    {
        return check().await;
    }
    let mut subscription = channels.subscribe();
    subscription.join(&group);
    arm.await?;
    loop {
        if let Some(done) = check().await? {
            return Ok(Some(done));
        }
        tokio::select! {
            delivery = subscription.recv() => {
                if delivery.is_none() {
                    // Shut down (or dropped as slow, which a group of one message cannot be).
                    return check().await?.map_or(Err(WaitError::Closed), |done| Ok(Some(done)));
                }
            }
            () = tokio::time::sleep_until(deadline) => return Ok(None),
        }
    }
}

/// A job by id, to wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobHandle {
    pub id: i64,
}

impl From<crate::jobs::Enqueued> for JobHandle {
    fn from(enqueued: crate::jobs::Enqueued) -> Self {
        Self { id: enqueued.id }
    }
}

/// Whether a job state is final.
pub fn is_finished(state: &str) -> bool {
    matches!(state, "completed" | "discarded" | "cancelled")
}

impl JobHandle {
    pub fn new(id: i64) -> Self {
        Self { id }
    }

    pub async fn status(&self, pool: &PgPool) -> Result<Option<JobStatus>, sqlx::Error> {
        control::status(pool, self.id).await
    }

    /// Waits up to `timeout` for the job to finish (completed, discarded or cancelled): returns
    /// its status as soon as the outcome is recorded, or `None` if it has not finished when
    /// `timeout` is up. [`WaitError::NotFound`] if there is no such job (a completed job is
    /// not kept when `keep_completed` is off).
    pub async fn wait(
        &self,
        channels: &ChannelLayer,
        timeout: Duration,
    ) -> Result<Option<JobStatus>, WaitError> {
        let pool = channels.pool().clone();
        let id = self.id;
        let arm = async {
            sqlx::query(
                "UPDATE jobs SET notify_done = true WHERE id = $1 AND notify_done IS NOT TRUE",
            )
            .bind(id)
            .execute(&pool)
            .await?;
            Ok(())
        };
        until(channels, &format!("job.{id}"), timeout, arm, || async {
            let status = control::status(&pool, id)
                .await?
                .ok_or(WaitError::NotFound)?;
            Ok(is_finished(&status.state).then_some(status))
        })
        .await
    }
}
