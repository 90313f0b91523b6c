//! Typed steps: a job whose input is the previous step's output.
//!
//! A step job's args are `{"params": <the step's fields>, "input": <its input>}`; an input too
//! large to travel in args is stored on a node of the workflow instead, and the args say which
//! (`"input_at": [workflow, node]`). A chord's callback gets `"input_group": [workflow, node]`:
//! it reads its group's results itself when it starts. An input that
//! does not deserialize into the step's `Input` (the code changed under a running workflow)
//! can never succeed: the job is discarded at once with the reason, not retried, and the
//! workflow treats it as a failed step.

use std::{future::Future, time::Duration};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::super::{
    Job, JobContext, Outcome, Registry,
    job::{Defaults, exponential_backoff},
};

/// A workflow step: a job with a typed input and output.
///
/// ```text
/// #[derive(Serialize, Deserialize)]
/// struct Parse {}
///
/// impl Step for Parse {
///     const KIND: &'static str = "parse";
///     type Input = String;          // what `Fetch` returned
///     type Output = Vec<Link>;      // what the next step gets
///     async fn run(self, html: String, _ctx: JobContext) -> anyhow::Result<Vec<Link>> {
///         Ok(links(&html))
///     }
/// }
/// ```
pub trait Step: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The job kind (see [`Job::KIND`]).
    const KIND: &'static str;
    type Input: Serialize + DeserializeOwned + Send + 'static;
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Does the work. An `Err` fails the attempt; once attempts are used up the step fails and
    /// its chain stops.
    fn run(
        self,
        input: Self::Input,
        ctx: JobContext,
    ) -> impl Future<Output = anyhow::Result<Self::Output>> + Send;

    /// Default enqueue options of this kind (a [`Task`](super::Task) can override them).
    fn defaults() -> Defaults {
        Defaults::default()
    }

    /// How long to wait before attempt `failed_attempt + 1`.
    fn backoff(failed_attempt: i32) -> Duration {
        exponential_backoff(failed_attempt)
    }
}

/// The job that runs a [`Step`]: its fields and its input. Workflows enqueue these; enqueue one
/// yourself ([`Enqueue::new`](super::super::Enqueue::new)) to run a step alone.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct StepJob<S: Step> {
    pub params: S,
    #[serde(default)]
    pub input: serde_json::Value,
    /// Where a large input is stored: `(workflow, node)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_at: Option<(i64, i32)>,
    /// The input is the results of this group, `(workflow, node)`, read at the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_group: Option<(i64, i32)>,
}

impl<S: Step> StepJob<S> {
    /// A step with its input, to enqueue on its own.
    pub fn new(params: S, input: &S::Input) -> Result<Self, serde_json::Error> {
        Ok(Self {
            params,
            input: serde_json::to_value(input)?,
            input_at: None,
            input_group: None,
        })
    }
}

/// A failure that retrying cannot cure; the registry discards the job at once.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Permanent(pub String);

impl<S: Step> Job for StepJob<S> {
    const KIND: &'static str = S::KIND;
    /// Steps take what they need from their input and the context; none has dependencies of
    /// its own yet.
    type Deps = ();

    async fn perform(self, ctx: JobContext) -> anyhow::Result<Outcome> {
        let unfit = |e: serde_json::Error| {
            Permanent(format!(
                "the input of step `{}` does not deserialize into its input type: {e}",
                S::KIND
            ))
        };
        let input: S::Input = match (self.input_group, self.input_at) {
            // A chord callback: its group's results, read here rather than in the
            // transaction that recorded the last member.
            (Some((workflow, group)), _) => {
                let results = super::engine::group_results(&ctx.pool, workflow, group).await?;
                serde_json::from_value(results).map_err(unfit)?
            }
            (None, Some((workflow, node))) => {
                let stored = sqlx::query_scalar::<_, Option<String>>(
                    "SELECT input::text FROM workflow_nodes WHERE workflow_id = $1 AND node = $2",
                )
                .bind(workflow)
                .bind(node)
                .fetch_optional(&ctx.pool)
                .await?
                .flatten()
                .ok_or_else(|| {
                    Permanent(format!(
                        "the input of step `{}` is gone (workflow {workflow}, node {node})",
                        S::KIND
                    ))
                })?;
                serde_json::from_str(&stored).map_err(unfit)?
            }
            (None, None) => serde_json::from_value(self.input).map_err(unfit)?,
        };
        let output = self.params.run(input, ctx).await?;
        Outcome::with_result(output)
    }

    fn defaults() -> Defaults {
        S::defaults()
    }

    fn backoff(failed_attempt: i32) -> Duration {
        S::backoff(failed_attempt)
    }
}

impl Registry {
    /// Adds a workflow step kind (its job is a [`StepJob`]).
    pub fn register_step<S: Step>(self) -> Self {
        self.register::<StepJob<S>>()
    }
}
