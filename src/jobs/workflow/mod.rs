//! Workflows: chains, groups and chords of typed steps, moved on by the transaction that records
//! each step's outcome, and handles to wait on them.
//!
//! ```text
//! // A step takes the previous step's result as its input: fetch's output is parse's input.
//! let flow = Chain::new(Fetch { url }).then(Parse {}).then(Store { table: "pages".into() });
//! let handle = Workflow::new(flow, ()).owner(user.id).enqueue(&pool).await?;
//! match handle.wait(&channels, Duration::from_secs(10)).await? {
//!     Some(Finished::Completed(stored)) => ...,      // Store's output, typed
//!     Some(Finished::Failed(why)) => ...,
//!     Some(Finished::Cancelled(why)) => ...,
//!     None => ...,                                   // still running after 10 s
//! }
//!
//! // A chord: every resize runs at once; summarise runs once, after the last, with all results.
//! let resizes = Group::of(images.iter().map(|i| Resize { image: i.id }));
//! Workflow::new(Chord::new(resizes, Summarise {}), ()).enqueue(&pool).await?;
//! ```
//!
//! How it holds (see `migrations/0021_workflows.sql`): a workflow is stored as a tree of nodes
//! when it is enqueued, in the caller's transaction, with its first jobs. From then on the
//! worker's completer, in the transaction that records a step job's outcome, records it on the
//! node and moves the workflow on ([`engine`]): the next step of a chain is enqueued, a group's
//! counter row is counted down under its lock, and the one transaction that takes it to zero
//! starts what follows (a chord's callback) with every member's result. A step is never lost
//! between "done" and "next enqueued" and a callback never starts twice or not at all, because
//! both happen in one transaction, fenced like every outcome by `(id, attempt, state)`.
//!
//! * [`Step`]: a job with a typed input (the previous step's output) and a typed output;
//!   register it with [`Registry::register_step`](super::Registry::register_step);
//! * [`Task`]: a step with enqueue options (queue, priority, attempts, timeout);
//! * [`Chain`], [`Group`], [`Chord`]: the building blocks, nestable ([`Flow`]);
//! * [`Workflow`]: a flow with its first input, an owner and a name, ready to enqueue;
//! * [`WorkflowHandle`], [`GroupHandle`], [`JobHandle`]: outcome, counts, results, cancel and
//!   [`wait`](WorkflowHandle::wait), woken by the channel layer rather than by polling.

pub mod builtin;
pub(crate) mod engine;
mod handle;
mod spec;
mod step;
pub mod wait;

use std::marker::PhantomData;

use serde::{Serialize, de::DeserializeOwned};
use sqlx::{Acquire, PgConnection, Postgres};

pub use handle::{
    Finished, GroupHandle, Member, NodeStatus, WorkflowCancelled, WorkflowHandle, WorkflowStatus,
    cancel, prune, status,
};
pub use spec::{MAX_GROUP, MAX_NODES, Spec};
pub(crate) use step::Permanent;
pub use step::{Step, StepJob};
pub use wait::{JobHandle, MAX_WAIT, WaitError};

use super::{EnqueueError, QueueName, enqueue::MAX_ARGS_BYTES};
use spec::{Node, OnFailure, StepOptions};

/// Why a workflow could not be enqueued. Nothing of it is enqueued then.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("a group (or a chord's header) needs at least one member")]
    EmptyGroup,
    #[error("a group (or a chord's header) has {0} members, more than the {MAX_GROUP} allowed")]
    GroupTooLarge(usize),
    #[error("the workflow has {0} steps, more than the {MAX_NODES} allowed")]
    TooManySteps(usize),
    #[error("the {what} of step `{kind}` do not serialize: {source}")]
    Serialize {
        kind: String,
        what: &'static str,
        source: serde_json::Error,
    },
    #[error(
        "the args of step `{kind}` are {bytes} bytes, more than the {MAX_ARGS_BYTES} allowed; store big payloads in a table and pass its key"
    )]
    ArgsTooLarge { kind: String, bytes: usize },
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Something a workflow can be made of: a [`Step`], a [`Task`], a [`Chain`], a [`Group`] or a
/// [`Chord`]. `Input` is what it is started with, `Output` what the next one gets.
pub trait Flow: Send + 'static {
    type Input: Serialize + DeserializeOwned + Send + 'static;
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// The untyped tree (an error found while building it surfaces at enqueue).
    #[doc(hidden)]
    fn into_spec(self) -> Result<Spec, WorkflowError>;
}

/// A step with its enqueue options. A bare step uses its kind's [`Step::defaults`].
pub struct Task<S: Step> {
    step: S,
    options: StepOptions,
}

impl<S: Step> Task<S> {
    pub fn new(step: S) -> Self {
        let defaults = S::defaults();
        Self {
            step,
            options: StepOptions {
                queue: defaults.queue.to_owned(),
                priority: defaults.priority,
                max_attempts: defaults.max_attempts,
                timeout_ms: defaults
                    .timeout
                    .map(|t| t.as_millis().min(i32::MAX as u128) as i32),
            },
        }
    }

    pub fn queue(mut self, queue: &str) -> Result<Self, EnqueueError> {
        self.options.queue = QueueName::parse(queue)?.as_str().to_owned();
        Ok(self)
    }

    /// Lower runs first.
    pub fn priority(mut self, priority: i16) -> Self {
        self.options.priority = priority;
        self
    }

    /// Attempts before the step fails (and stops its chain).
    pub fn max_attempts(mut self, attempts: i32) -> Result<Self, EnqueueError> {
        if attempts < 1 {
            return Err(EnqueueError::InvalidMaxAttempts(attempts));
        }
        self.options.max_attempts = attempts;
        Ok(self)
    }

    /// An attempt running longer than this fails.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Result<Self, EnqueueError> {
        if timeout.is_zero() || timeout.as_millis() > i32::MAX as u128 {
            return Err(EnqueueError::InvalidTimeout(timeout));
        }
        self.options.timeout_ms = Some(timeout.as_millis() as i32);
        Ok(self)
    }
}

impl<S: Step> Flow for Task<S> {
    type Input = S::Input;
    type Output = S::Output;

    fn into_spec(self) -> Result<Spec, WorkflowError> {
        QueueName::parse(&self.options.queue)?;
        let params =
            serde_json::to_value(&self.step).map_err(|source| WorkflowError::Serialize {
                kind: S::KIND.into(),
                what: "fields",
                source,
            })?;
        let bytes = params.to_string().len();
        if bytes > MAX_ARGS_BYTES {
            return Err(WorkflowError::ArgsTooLarge {
                kind: S::KIND.into(),
                bytes,
            });
        }
        Ok(Spec(Node::Job {
            kind: S::KIND,
            params,
            options: self.options,
        }))
    }
}

impl<S: Step> Flow for S {
    type Input = S::Input;
    type Output = S::Output;

    fn into_spec(self) -> Result<Spec, WorkflowError> {
        Task::new(self).into_spec()
    }
}

/// Steps run one after the other, each started with the previous one's output, by the
/// transaction that records that output. A failed step (out of attempts, cancelled) stops the
/// chain: the steps after it are marked `not_run` with the reason, and the chain fails.
pub struct Chain<I, O> {
    steps: Result<Vec<Spec>, WorkflowError>,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> Chain<I, O> {
    pub fn new<F: Flow<Input = I, Output = O>>(first: F) -> Self {
        Self {
            steps: first.into_spec().map(|s| vec![s]),
            _types: PhantomData,
        }
    }

    /// Appends a step (or any flow) whose input is this chain's output: checked at compile time.
    pub fn then<F: Flow<Input = O>>(self, next: F) -> Chain<I, F::Output> {
        let steps = self.steps.and_then(|mut steps| {
            steps.push(next.into_spec()?);
            Ok(steps)
        });
        Chain {
            steps,
            _types: PhantomData,
        }
    }
}

impl<I, O> Flow for Chain<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    type Input = I;
    type Output = O;

    fn into_spec(self) -> Result<Spec, WorkflowError> {
        Ok(Spec(Node::Chain(self.steps?)))
    }
}

/// Members run at once, each started with the group's input; the group's output is their
/// outputs in order. If a member fails, the group fails once every member has finished (use
/// [`with_failures`](Group::with_failures) to get every outcome instead). All members are
/// enqueued in one statement.
pub struct Group<I, O> {
    members: Result<Vec<Spec>, WorkflowError>,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> Default for Group<I, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I, O> Group<I, O> {
    pub fn new() -> Self {
        Self {
            members: Ok(Vec::new()),
            _types: PhantomData,
        }
    }

    /// A group of these flows (typically `images.iter().map(|i| Resize { .. })`).
    pub fn of<F: Flow<Input = I, Output = O>>(members: impl IntoIterator<Item = F>) -> Self {
        members.into_iter().fold(Self::new(), Self::push)
    }

    pub fn push<F: Flow<Input = I, Output = O>>(self, member: F) -> Self {
        let members = self.members.and_then(|mut members| {
            // Past the bound, stop building specs: the error is reported at enqueue anyway.
            if members.len() <= spec::MAX_GROUP {
                members.push(member.into_spec()?);
            } else {
                return Err(WorkflowError::GroupTooLarge(members.len() + 1));
            }
            Ok(members)
        });
        Self {
            members,
            _types: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.members.as_ref().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The group completes whatever its members do; its output is every member's outcome,
    /// `Err` with the reason for a failed one.
    pub fn with_failures(self) -> WithFailures<I, O> {
        WithFailures(self)
    }

    fn spec(self, on_failure: OnFailure) -> Result<Spec, WorkflowError> {
        Ok(Spec(Node::Group {
            members: self.members?,
            on_failure,
        }))
    }
}

impl<I, O> Group<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    /// Enqueues this group on its own (all members in one statement) and returns a handle on
    /// it: counts by state, results in order.
    pub async fn enqueue<'a, A: Acquire<'a, Database = Postgres>>(
        self,
        db: A,
        input: I,
    ) -> Result<GroupHandle<O>, WorkflowError> {
        let handle = Workflow::new(self, input).enqueue(db).await?;
        Ok(GroupHandle::new(handle.id, 0))
    }
}

impl<I, O> Flow for Group<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    type Input = I;
    type Output = Vec<O>;

    fn into_spec(self) -> Result<Spec, WorkflowError> {
        self.spec(OnFailure::Fail)
    }
}

/// A [`Group`] whose output is every member's outcome, failures included.
pub struct WithFailures<I, O>(Group<I, O>);

impl<I, O> Flow for WithFailures<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    type Input = I;
    type Output = Vec<Result<O, String>>;

    fn into_spec(self) -> Result<Spec, WorkflowError> {
        self.0.spec(OnFailure::Collect)
    }
}

/// A group and a callback that runs exactly once, after the last member finishes, with every
/// member's result in order. Enqueued by the transaction that records the last member's
/// outcome, whichever instance that is.
///
/// What failed members do is the caller's choice: [`Chord::new`] does not run the callback if
/// any member failed (it is marked `not_run` with the reason, and the chord fails);
/// [`Chord::with_failures`] runs it with every outcome, `Err(reason)` for failed members.
pub struct Chord<I, O> {
    spec: Result<Spec, WorkflowError>,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> Chord<I, O> {
    pub fn new<M, C>(group: Group<I, M>, callback: C) -> Self
    where
        C: Flow<Input = Vec<M>, Output = O>,
    {
        Self::build(group.spec(OnFailure::Fail), callback)
    }

    pub fn with_failures<M, C>(group: Group<I, M>, callback: C) -> Self
    where
        C: Flow<Input = Vec<Result<M, String>>, Output = O>,
    {
        Self::build(group.spec(OnFailure::Collect), callback)
    }

    fn build<C: Flow>(header: Result<Spec, WorkflowError>, callback: C) -> Self {
        let spec =
            header.and_then(|header| Ok(Spec(Node::Chain(vec![header, callback.into_spec()?]))));
        Self {
            spec,
            _types: PhantomData,
        }
    }
}

impl<I, O> Flow for Chord<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    type Input = I;
    type Output = O;

    fn into_spec(self) -> Result<Spec, WorkflowError> {
        self.spec
    }
}

/// A flow with its first input, ready to enqueue.
pub struct Workflow<O> {
    spec: Result<Spec, WorkflowError>,
    input: Result<serde_json::Value, WorkflowError>,
    name: Option<String>,
    owner: Option<i64>,
    _output: PhantomData<fn() -> O>,
}

impl<O> Workflow<O> {
    pub fn new<F: Flow<Output = O>>(flow: F, input: F::Input) -> Self {
        let spec = flow.into_spec();
        let input = serde_json::to_value(&input).map_err(|source| WorkflowError::Serialize {
            kind: spec
                .as_ref()
                .map(Spec::describe)
                .unwrap_or_else(|_| "workflow".into()),
            what: "input",
            source,
        });
        Self {
            spec,
            input,
            name: None,
            owner: None,
            _output: PhantomData,
        }
    }

    /// A name for the operations pages (default: a description of the shape, such as
    /// `chain(fetch → parse → store)`). At most 200 characters are kept.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into().chars().take(200).collect());
        self
    }

    /// The user the workflow runs for: it and every step job are shown to them (and to
    /// administrators), as [`Enqueue::owner`](super::Enqueue::owner) does for one job.
    pub fn owner(mut self, user_id: i64) -> Self {
        self.owner = Some(user_id);
        self
    }

    /// Enqueues the workflow and its first jobs in one transaction (a savepoint inside the
    /// caller's, given `&mut *tx`): on any error nothing of it exists.
    pub async fn enqueue<'a, A: Acquire<'a, Database = Postgres>>(
        self,
        db: A,
    ) -> Result<WorkflowHandle<O>, WorkflowError> {
        let mut conn = db.acquire().await?;
        self.enqueue_on(&mut conn).await
    }

    /// [`enqueue`](Self::enqueue) on one connection (not generic, for `Send` futures in
    /// handlers that hold a transaction).
    pub async fn enqueue_on(
        self,
        conn: &mut PgConnection,
    ) -> Result<WorkflowHandle<O>, WorkflowError> {
        let spec = self.spec?;
        let input = self.input?;
        spec.validate()?;
        let name = self.name.unwrap_or_else(|| spec.describe());
        let mut tx = conn.begin().await?;
        let (id, effects) = engine::create(&mut tx, &spec, &name, self.owner, input).await?;
        tx.commit().await?;
        effects.wake();
        Ok(WorkflowHandle::new(id))
    }
}
