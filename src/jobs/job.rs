//! What a job is: a serde type with an async `perform`, and what it can tell the worker.

use std::{future::Future, sync::Arc, time::Duration};

use serde::{Serialize, de::DeserializeOwned};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// A background job. Its fields are the arguments, stored as JSON; what it needs besides
/// them (a mailer, an HTTP client) is its [`Deps`](Job::Deps), built once when the kind is
/// registered and handed to every run as `ctx.deps`.
///
/// ```text
/// #[derive(Serialize, Deserialize)]
/// struct SendWelcome { user_id: i64 }
///
/// impl Job for SendWelcome {
///     const KIND: &'static str = "send_welcome";
///     type Deps = Mailer;
///     async fn perform(self, ctx: JobContext<Mailer>) -> anyhow::Result<Outcome> {
///         ctx.deps.send(self.user_id).await?;
///         Ok(Outcome::done())
///     }
/// }
/// ```
///
/// Registered with `App::job_with::<SendWelcome>(|ctx| Ok(Mailer::new(...)))`: a kind whose
/// dependencies are not given does not compile (`App::job` takes only `Deps = ()`).
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable name stored with each job. Renaming the Rust type is harmless; renaming
    /// the kind orphans jobs already enqueued under the old name.
    const KIND: &'static str;

    /// What every run needs besides its arguments; `()` for nothing.
    type Deps: Send + Sync + 'static;

    /// Does the work. An `Err` (or a panic) fails the attempt; it is retried with
    /// [`backoff`](Job::backoff) until the job's max attempts are used up.
    fn perform(
        self,
        ctx: JobContext<Self::Deps>,
    ) -> impl Future<Output = anyhow::Result<Outcome>> + Send;

    /// Default enqueue options of this kind (each enqueue can override them).
    fn defaults() -> Defaults {
        Defaults::default()
    }

    /// How long to wait before attempt `failed_attempt + 1`.
    fn backoff(failed_attempt: i32) -> Duration {
        exponential_backoff(failed_attempt)
    }
}

/// Per-kind defaults for enqueue options.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub queue: &'static str,
    pub priority: i16,
    pub max_attempts: i32,
    /// The hard limit: an attempt running longer fails (and is retried if attempts are left).
    pub timeout: Option<Duration>,
    /// The soft limit, below the hard one: when an attempt has run this long, the job is told
    /// ([`JobContext::soft_limit`]) and has until the hard limit to clean up and return. A
    /// soft limit at or above the hard one is refused when the kind is registered
    /// (and by `Enqueue::timeout`).
    pub soft_timeout: Option<Duration>,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            queue: "default",
            priority: 0,
            max_attempts: 20,
            timeout: None,
            soft_timeout: None,
        }
    }
}

impl Defaults {
    /// `Err` with a message when the soft limit is zero or not below the hard limit.
    pub fn check_limits(&self, kind: &str) -> Result<(), String> {
        match (self.soft_timeout, self.timeout) {
            (Some(soft), _) if soft.is_zero() => Err(format!(
                "the soft time limit of `{kind}` must be longer than zero"
            )),
            (Some(soft), Some(hard)) if soft >= hard => Err(format!(
                "the soft time limit of `{kind}` ({soft:?}) must be below its hard limit ({hard:?})"
            )),
            _ => Ok(()),
        }
    }
}

/// `2^attempt` seconds plus up to 10% jitter, capped at one day: 2 s, 4 s, 8 s, ... The jitter
/// spreads retries of jobs that failed together (say, while a mail server was down).
pub fn exponential_backoff(failed_attempt: i32) -> Duration {
    let base = 2f64.powi(failed_attempt.clamp(1, 16)).min(86_400.0);
    let jitter = base * 0.1 * rand::random::<f64>();
    Duration::from_secs_f64(base + jitter)
}

/// How an attempt ended, besides failing.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done, with an optional JSON result readable through the status API.
    Complete(Option<serde_json::Value>),
    /// Run again after this long without using up an attempt (waiting on something external).
    Snooze(Duration),
    /// Stop for good: the job is recorded as cancelled with this reason.
    Cancel(String),
}

impl Outcome {
    pub fn done() -> Self {
        Self::Complete(None)
    }

    /// Done, with a result serialized to JSON.
    pub fn with_result(result: impl Serialize) -> anyhow::Result<Self> {
        Ok(Self::Complete(Some(serde_json::to_value(result)?)))
    }
}

/// What a running job knows about itself and can use.
pub struct JobContext<D = ()> {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    /// 1 on the first attempt.
    pub attempt: i32,
    pub max_attempts: i32,
    pub pool: PgPool,
    /// The kind's dependencies, given when it was registered.
    pub deps: Arc<D>,
    pub(crate) cancel: CancellationToken,
    pub(crate) soft: CancellationToken,
    pub(crate) soft_deadline: Option<tokio::time::Instant>,
}

impl<D> Clone for JobContext<D> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            kind: self.kind.clone(),
            queue: self.queue.clone(),
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            pool: self.pool.clone(),
            deps: self.deps.clone(),
            cancel: self.cancel.clone(),
            soft: self.soft.clone(),
            soft_deadline: self.soft_deadline,
        }
    }
}

impl JobContext {
    /// The same job's context with its kind's dependencies.
    pub(crate) fn with_deps<D>(self, deps: Arc<D>) -> JobContext<D> {
        JobContext {
            id: self.id,
            kind: self.kind,
            queue: self.queue,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            pool: self.pool,
            deps,
            cancel: self.cancel,
            soft: self.soft,
            soft_deadline: self.soft_deadline,
        }
    }
}

impl<D> JobContext<D> {
    /// Fires when the job is cancelled while running. The worker also drops `perform` then, so
    /// jobs only need this to stop early between steps of their own.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Fires when this attempt reaches its kind's soft time limit ([`Defaults::soft_timeout`]);
    /// never without one. The attempt then has until its hard limit to clean up and return:
    ///
    /// ```text
    /// tokio::select! {
    ///     done = work() => done,
    ///     () = ctx.soft_limit().cancelled() => { save_checkpoint().await?; Ok(Outcome::Snooze(..)) }
    /// }
    /// ```
    pub fn soft_limit(&self) -> &CancellationToken {
        &self.soft
    }

    /// When the soft limit is reached, if this attempt has one.
    pub fn soft_deadline(&self) -> Option<tokio::time::Instant> {
        self.soft_deadline
    }

    /// Records progress, readable through `GET /api/jobs/{id}` and `hearth jobs show`.
    pub async fn progress(&self, percent: u8, message: &str) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "UPDATE jobs SET progress_percent = $3, progress_message = $4
              WHERE id = $1 AND attempt = $2 AND state = 'running'",
            self.id,
            self.attempt,
            i16::from(percent.min(100)),
            message
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter() {
        for (attempt, base) in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 1024.0)] {
            let wait = exponential_backoff(attempt).as_secs_f64();
            assert!(
                wait >= base && wait <= base * 1.1,
                "attempt {attempt}: {wait}"
            );
        }
        assert!(exponential_backoff(40).as_secs_f64() <= 86_400.0 * 1.1);
    }
}
