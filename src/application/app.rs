//! [`App`]: everything one feature adds to the platform, declared in one place.
//!
//! An app is a value built in its `mod.rs` (`pub fn app() -> App`): its name, migrations,
//! settings section, routes, job kinds, schedules, periodic tasks, commands and navigation
//! links. Nothing of it runs when it is declared: the [`Application`](super::Application)
//! checks the declarations of all its apps against each other at start, then builds them once
//! the platform's services exist.

use std::{any::type_name, fmt, future::Future, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use sqlx::migrate::Migrator;

use super::{Context, Routes};
use crate::{
    config::Sections,
    jobs::{Job, Registry, Schedule},
    web::{AppState, assets::Dir, templates::NavLink},
};

type Build<T> = Arc<dyn Fn(&Context) -> anyhow::Result<T> + Send + Sync>;
type Plan<T> = Arc<dyn Fn(&Sections) -> anyhow::Result<T> + Send + Sync>;
type RegisterFn = Arc<dyn Fn(Registry, &Context) -> anyhow::Result<Registry> + Send + Sync>;
pub(super) type TaskFn =
    Arc<dyn Fn(AppState) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;
pub(super) type CommandFn = Arc<
    dyn Fn(&clap::ArgMatches, super::Invocation) -> BoxFuture<'static, anyhow::Result<()>>
        + Send
        + Sync,
>;

/// One feature of an application. See the [module](self) and `docs/building-an-app.md`.
#[derive(Clone)]
pub struct App {
    pub(super) name: &'static str,
    pub(super) migrations: Option<&'static Migrator>,
    pub(super) settings: Vec<SettingsSection>,
    pub(super) routes: Vec<Build<Routes>>,
    pub(super) api_routes: Vec<Build<Routes>>,
    pub(super) jobs: Vec<JobKind>,
    pub(super) schedules: Vec<Plan<Vec<Schedule>>>,
    pub(super) tasks: Vec<Task>,
    pub(super) startup: Vec<(&'static str, TaskFn)>,
    pub(super) commands: Vec<AppCommand>,
    pub(super) nav: Vec<Plan<NavLink>>,
    pub(super) body_limit: Option<Plan<usize>>,
    pub(super) assets: Option<&'static Dir<'static>>,
}

/// A settings section: a `clap::Args` struct whose flags and environment variables join the
/// command line's.
#[derive(Clone)]
pub(super) struct SettingsSection {
    pub type_name: &'static str,
    pub augment: fn(clap::Command) -> clap::Command,
    pub extract: fn(&clap::ArgMatches, &mut Sections) -> Result<(), clap::Error>,
    pub show: fn(&Sections) -> String,
}

/// A job kind and how to give it what it needs.
#[derive(Clone)]
pub(super) struct JobKind {
    pub kind: &'static str,
    pub info: crate::jobs::registry::KindInfo,
    pub register: RegisterFn,
}

/// Work repeated every `period` on every instance (sweeps of expired rows, say).
#[derive(Clone)]
pub(super) struct Task {
    pub name: &'static str,
    pub period: Duration,
    pub run: TaskFn,
}

/// A subcommand of the command line (`hearth <name> ...`).
#[derive(Clone)]
pub(super) struct AppCommand {
    pub name: &'static str,
    pub about: &'static str,
    pub command: fn() -> clap::Command,
    pub run: CommandFn,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("name", &self.name)
            .field("jobs", &self.job_kinds().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl App {
    /// A new app. `name` is what errors, `hearth migrate --status` and the migration table
    /// call it: lower-case letters, digits and `_`, unique in the application.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            migrations: None,
            settings: Vec::new(),
            routes: Vec::new(),
            api_routes: Vec::new(),
            jobs: Vec::new(),
            schedules: Vec::new(),
            tasks: Vec::new(),
            startup: Vec::new(),
            commands: Vec::new(),
            nav: Vec::new(),
            body_limit: None,
            assets: None,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The app's SQL files: `sqlx::migrate!("migrations/<app>")` in a `static`. They run after
    /// the platform's and those of the apps before this one, in version order.
    pub fn migrations(mut self, migrator: &'static Migrator) -> Self {
        self.migrations = Some(migrator);
        self
    }

    /// The app's settings section: its flags and environment variables join the command line
    /// (with `global = true`, as the platform's do), and its builders read it with
    /// [`Context::settings`]. `Display` prints it in the start-up banner: mask secrets there.
    pub fn settings<S>(mut self) -> Self
    where
        S: clap::Args + Clone + fmt::Display + Send + Sync + 'static,
    {
        self.settings.push(SettingsSection {
            type_name: type_name::<S>(),
            augment: S::augment_args,
            extract: |matches, sections| {
                sections.insert(S::from_arg_matches(matches)?);
                Ok(())
            },
            show: |sections| sections.get::<S>().map(S::to_string).unwrap_or_default(),
        });
        self
    }

    /// The app's routes, behind the platform's middleware (sessions, CSRF, flash messages,
    /// error pages, timeouts, compression). Built once at start.
    pub fn routes(
        mut self,
        build: impl Fn(&Context) -> anyhow::Result<Routes> + Send + Sync + 'static,
    ) -> Self {
        self.routes.push(Arc::new(build));
        self
    }

    /// Routes for programs rather than browsers: behind the platform's middleware but not the
    /// CSRF check or flash messages, so a client without a session cookie can `POST` (the
    /// benchmark's load clients, webhooks). They authenticate requests themselves.
    pub fn api_routes(
        mut self,
        build: impl Fn(&Context) -> anyhow::Result<Routes> + Send + Sync + 'static,
    ) -> Self {
        self.api_routes.push(Arc::new(build));
        self
    }

    /// A job kind that needs nothing but its arguments and the [`JobContext`](crate::jobs::JobContext).
    pub fn job<J: Job<Deps = ()>>(self) -> Self {
        self.job_with::<J>(|_| Ok(()))
    }

    /// A job kind whose [`Deps`](Job::Deps) are built once at start from the platform and the
    /// settings; a job never finds one missing while it runs.
    pub fn job_with<J: Job>(
        mut self,
        deps: impl Fn(&Context) -> anyhow::Result<J::Deps> + Send + Sync + 'static,
    ) -> Self {
        self.jobs.push(JobKind {
            kind: J::KIND,
            info: crate::jobs::registry::kind_info::<J>(),
            register: Arc::new(move |registry, context| {
                Ok(registry.register_with::<J>(deps(context)?))
            }),
        });
        self
    }

    /// Periodic jobs: every instance declares the same ones, and each occurrence is enqueued
    /// once. Their kinds must be registered by some app of the application.
    pub fn schedules(
        mut self,
        plan: impl Fn(&Sections) -> anyhow::Result<Vec<Schedule>> + Send + Sync + 'static,
    ) -> Self {
        self.schedules.push(Arc::new(plan));
        self
    }

    /// Work every instance repeats every `period` while it serves (not a job: nothing is
    /// queued or retried; a failure is logged and the next round tries again).
    pub fn every<F, Fut>(mut self, name: &'static str, period: Duration, task: F) -> Self
    where
        F: Fn(AppState) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.push(Task {
            name,
            period,
            run: Arc::new(move |state| Box::pin(task(state))),
        });
        self
    }

    /// Work done once when `serve` starts, after migrations and before the port opens
    /// (seeding a table, say). A failure stops the start.
    pub fn on_start<F, Fut>(mut self, name: &'static str, task: F) -> Self
    where
        F: Fn(AppState) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.startup
            .push((name, Arc::new(move |state| Box::pin(task(state)))));
        self
    }

    /// A subcommand, `hearth <name> ...`, parsed into `C` and handed to `run`.
    pub fn command<C, F, Fut>(mut self, name: &'static str, about: &'static str, run: F) -> Self
    where
        C: clap::Subcommand + Send + 'static,
        F: Fn(C, super::Invocation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let run = Arc::new(run);
        self.commands.push(AppCommand {
            name,
            about,
            command: || C::augment_subcommands(clap::Command::new("app")),
            run: Arc::new(move |matches, invocation| {
                let parsed = C::from_arg_matches(matches);
                let run = run.clone();
                Box::pin(async move { run(parsed?, invocation).await })
            }),
        });
        self
    }

    /// A link in the site's navigation.
    pub fn nav(
        mut self,
        link: impl Fn(&Sections) -> anyhow::Result<NavLink> + Send + Sync + 'static,
    ) -> Self {
        self.nav.push(Arc::new(link));
        self
    }

    /// The largest request body one of the app's routes accepts, when it is larger than the
    /// platform's body limit (an upload route). Other routes keep the body limit.
    pub fn body_limit(
        mut self,
        limit: impl Fn(&Sections) -> anyhow::Result<usize> + Send + Sync + 'static,
    ) -> Self {
        self.body_limit = Some(Arc::new(limit));
        self
    }

    /// The app's static files, served under `/static/` at their path in the folder:
    /// `static ASSETS: Dir = include_dir!("$CARGO_MANIFEST_DIR/static/shop")`. Pages link them
    /// with `{{ layout.asset("shop/shop.css") }}` (a content-hash URL cached for a year); their
    /// brotli and gzip copies are made once, when the application is composed (docs/assets.md).
    pub fn assets(mut self, folder: &'static Dir<'static>) -> Self {
        self.assets = Some(folder);
        self
    }

    /// The job kinds this app registers.
    pub fn job_kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.jobs.iter().map(|j| j.kind)
    }
}
