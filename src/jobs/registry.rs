//! Job kinds known to this process, and the data handed to them.
//!
//! Jobs are stored as `(kind, JSON args)`; the registry turns that back into a typed job and
//! runs it. A kind this process does not know, or args that no longer deserialize (the type
//! changed under enqueued jobs), end the job as discarded with a clear error: retrying could
//! not help, and a crash loop would stall the queue.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::future::BoxFuture;

use super::{
    builtin,
    job::{Defaults, Job, JobContext, Outcome},
};

/// How a run of `perform` ended, as the worker sees it.
pub(crate) enum RunError {
    /// Failed this attempt; retry if attempts are left.
    Failed(anyhow::Error),
    /// Can never succeed (bad args); discard now.
    Permanent(String),
}

type Handler = Arc<
    dyn Fn(serde_json::Value, JobContext) -> BoxFuture<'static, Result<Outcome, RunError>>
        + Send
        + Sync,
>;

#[derive(Clone)]
pub(crate) struct Entry {
    pub handler: Handler,
    pub backoff: fn(i32) -> Duration,
    pub info: KindInfo,
    /// The kind's soft time limit (`Defaults::soft_timeout`), read once at registration.
    pub soft_timeout: Option<Duration>,
}

/// What is known of a kind without running it: whether JSON args fit its type, and its
/// default enqueue options. A schedule added at run time is checked and completed with it.
#[derive(Clone, Copy)]
pub struct KindInfo {
    pub check: fn(&serde_json::Value) -> Result<(), String>,
    pub defaults: fn() -> Defaults,
}

/// The [`KindInfo`] of kind `J`.
pub fn kind_info<J: Job>() -> KindInfo {
    KindInfo {
        check: |args| {
            serde_json::from_value::<J>(args.clone())
                .map(drop)
                .map_err(|e| format!("the args do not fit kind `{}`: {e}", J::KIND))
        },
        defaults: J::defaults,
    }
}

/// The job kinds an application registers, by name, with their [`KindInfo`]: known before any
/// service starts (the CLI and `/ops` check run-time schedules against it).
#[derive(Clone, Default)]
pub struct Kinds(std::collections::BTreeMap<&'static str, KindInfo>);

impl std::fmt::Debug for Kinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Kinds {
    pub fn insert(&mut self, kind: &'static str, info: KindInfo) {
        self.0.insert(kind, info);
    }

    /// Kind names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.keys().copied()
    }

    /// `Err` naming the first kind whose soft time limit is not below its hard limit.
    pub fn check_limits(&self) -> Result<(), String> {
        self.0
            .iter()
            .try_for_each(|(kind, info)| (info.defaults)().check_limits(kind))
    }

    /// `Err` with a message naming the known kinds when `kind` is not one of them.
    pub fn require(&self, kind: &str) -> Result<&KindInfo, String> {
        self.0.get(kind).ok_or_else(|| {
            format!(
                "unknown job kind {:?}; the kinds are: {}",
                kind.chars().take(80).collect::<String>(),
                self.names().collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// `kind`'s defaults, after checking that `args` fit it: `Err` with a message when
    /// `kind` is unknown or its args do not fit.
    pub fn check(&self, kind: &str, args: &serde_json::Value) -> Result<Defaults, String> {
        let info = self.require(kind)?;
        (info.check)(args)?;
        Ok((info.defaults)())
    }
}

/// The job kinds a worker can run. `Registry::new()` includes the built-in `noop` and `sleep`
/// jobs and the `step_sleep` and `step_gather` workflow steps.
#[derive(Clone)]
pub struct Registry {
    kinds: HashMap<&'static str, Entry>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self {
            kinds: HashMap::new(),
        }
        .register::<builtin::Noop>()
        .register::<builtin::Sleep>()
        .register_step::<super::workflow::builtin::SleepStep>()
        .register_step::<super::workflow::builtin::Gather>()
    }

    /// Adds a job kind that needs nothing but its arguments.
    pub fn register<J: Job<Deps = ()>>(self) -> Self {
        self.register_with::<J>(())
    }

    /// Adds a job kind with what its runs need. Registering the same kind twice, or a kind
    /// whose soft time limit is not below its hard one, is a programming error and panics at
    /// start-up rather than silently running the wrong code (an application checks its apps'
    /// kinds before it gets here, and names the apps).
    pub fn register_with<J: Job>(mut self, deps: J::Deps) -> Self {
        let defaults = J::defaults();
        if let Err(e) = defaults.check_limits(J::KIND) {
            panic!("{e}");
        }
        let deps = Arc::new(deps);
        let handler: Handler = Arc::new(move |args, ctx| {
            let deps = deps.clone();
            Box::pin(async move {
                let job: J = serde_json::from_value(args).map_err(|e| {
                    RunError::Permanent(format!("the args do not fit kind `{}`: {e}", J::KIND))
                })?;
                job.perform(ctx.with_deps(deps)).await.map_err(|e| {
                    // A step whose input cannot fit its type: retrying cannot help.
                    match e.downcast::<super::workflow::Permanent>() {
                        Ok(permanent) => RunError::Permanent(permanent.0),
                        Err(e) => RunError::Failed(e),
                    }
                })
            })
        });
        let previous = self.kinds.insert(
            J::KIND,
            Entry {
                handler,
                backoff: J::backoff,
                info: kind_info::<J>(),
                soft_timeout: defaults.soft_timeout,
            },
        );
        assert!(
            previous.is_none(),
            "job kind `{}` registered twice",
            J::KIND
        );
        self
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Entry> {
        self.kinds.get(kind)
    }

    /// Whether this registry runs `kind`.
    pub fn knows(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// Registered kinds with their args checks.
    pub fn catalog(&self) -> Kinds {
        let mut kinds = Kinds::default();
        for (kind, entry) in &self.kinds {
            kinds.insert(kind, entry.info);
        }
        kinds
    }

    /// Registered kinds, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds: Vec<_> = self.kinds.keys().copied().collect();
        kinds.sort_unstable();
        kinds
    }
}
