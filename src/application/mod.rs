//! The public application API: an [`Application`] is the platform plus a list of [`App`]s.
//!
//! This is the one composition root. A program (the `hearth` binary, a team's own binary, a
//! test) composes its application, and this module builds the platform from it once: the
//! database and its migrations, the channel layer, the cache, the job registry and schedules,
//! the router behind the platform's middleware, the periodic tasks and the command line.
//!
//! ```text
//! fn main() -> std::process::ExitCode {
//!     hearth::Application::new()
//!         .app(hearth::accounts::app())
//!         .app(my_shop::app())
//!         .main()
//! }
//! ```
//!
//! Every declaration is checked against the others before anything starts: two apps with one
//! name, route path, job kind or schedule name, or a schedule of a kind no app registers, stop
//! the start with an error naming both sides (see [`ComposeError`]).

mod app;
pub mod cli;
mod routes;
mod run;
pub mod testing;

pub use app::App;
pub use routes::Routes;
pub use run::{Invocation, job_pool, serve_command, worker_command, worker_config};

use std::collections::HashMap;

use axum::Router;
use sqlx::PgPool;

use crate::{
    config::{Config, Sections},
    db::migrations::{self, MigrationSet},
    jobs::{Registry, Schedule, registry::Kinds},
    web::{
        self, AppState,
        assets::{Assets, Dir, DuplicateAsset},
        templates::NavLink,
    },
};

/// The platform and its apps, in the order their migrations run and their routes are listed.
#[derive(Clone, Debug, Default)]
pub struct Application {
    apps: Vec<App>,
    /// The composition's own static files (its stylesheet, say), beside the apps'.
    assets: Vec<&'static Dir<'static>>,
}

/// What an app's builders see at start: the platform's services and every settings section.
pub struct Context<'a> {
    state: &'a AppState,
}

impl<'a> Context<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// The platform: database, channel layer, cache, configuration.
    pub fn state(&self) -> &'a AppState {
        self.state
    }

    /// A settings section some app of the application declared with [`App::settings`].
    pub fn settings<S: Send + Sync + 'static>(&self) -> anyhow::Result<&'a S> {
        section(&self.state.sections)
    }
}

/// A settings section, or an error saying no app declares it.
pub fn section<S: Send + Sync + 'static>(sections: &Sections) -> anyhow::Result<&S> {
    sections.get::<S>().ok_or_else(|| {
        anyhow::anyhow!(
            "the settings section {} is not declared by any app of this application \
             (App::settings::<{0}>())",
            std::any::type_name::<S>()
        )
    })
}

/// Declarations that contradict each other. Each names both sides.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ComposeError {
    #[error("two apps are named {0:?}; app names must be unique")]
    DuplicateApp(&'static str),
    #[error("app name {0:?} is not lower-case letters, digits and `_`")]
    BadName(&'static str),
    #[error("the apps {first:?} and {second:?} both route {path}")]
    DuplicateRoute {
        path: String,
        first: &'static str,
        second: &'static str,
    },
    #[error("the apps {first:?} and {second:?} both register the job kind {kind:?}")]
    DuplicateKind {
        kind: &'static str,
        first: &'static str,
        second: &'static str,
    },
    #[error("{0}")]
    SoftTimeLimit(String),
    #[error("{first} and {second} both declare the schedule {name:?}")]
    DuplicateSchedule {
        name: String,
        first: String,
        second: String,
    },
    #[error("{owner} declares the schedule {name:?} of job kind {kind:?}, which no app registers")]
    UnknownKind {
        name: String,
        kind: String,
        owner: String,
    },
    #[error(transparent)]
    DuplicateAsset(#[from] DuplicateAsset),
    #[error("the apps {first:?} and {second:?} both add the command `{name}`")]
    DuplicateCommand {
        name: &'static str,
        first: &'static str,
        second: &'static str,
    },
}

/// What the application declares, worked out from the settings before any service starts.
#[derive(Clone)]
pub struct Plan {
    /// The platform's migrations, then each app's, in order.
    pub migrations: Vec<MigrationSet>,
    /// Every app's schedules and `HEARTH_SCHEDULES`, checked against the registered kinds.
    pub schedules: Vec<Schedule>,
    /// Every job kind of the application (schedules added at run time are checked with it).
    pub kinds: Kinds,
    pub nav: Vec<NavLink>,
    /// The hard limit on request bodies: the body limit or an app's larger one.
    pub body_limit: usize,
    pub assets: Assets,
}

/// The built-in kinds of every registry ([`Registry::new`]).
const PLATFORM: &str = "platform";

impl Application {
    /// The platform alone: health checks, metrics, static files, jobs, channels, cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an app. Its migrations run after those of the apps added before it.
    pub fn app(mut self, app: App) -> Self {
        self.apps.push(app);
        self
    }

    /// The composition's own static files (the site's stylesheet and layout scripts, as
    /// Django's `STATICFILES_DIRS`), served under `/static/` beside the apps' own, as
    /// [`App::assets`] says.
    pub fn assets(mut self, folder: &'static Dir<'static>) -> Self {
        self.assets.push(folder);
        self
    }

    pub fn apps(&self) -> &[App] {
        &self.apps
    }

    /// Runs the command line (`hearth serve`, `migrate`, `worker`, ...) for this application
    /// and returns the exit code: a program's whole `main`.
    pub fn main(self) -> std::process::ExitCode {
        cli::main(self, std::env::args_os())
    }

    /// Adds the apps' settings (flags and environment variables) and commands to a command
    /// line.
    pub fn augment(&self, mut command: clap::Command) -> clap::Command {
        // A section's doc comment would become the command's description: keep the program's.
        let (about, long_about) = (
            command.get_about().cloned(),
            command.get_long_about().cloned(),
        );
        for section in self.settings_sections() {
            command = (section.augment)(command);
        }
        let keep = |text: Option<clap::builder::StyledStr>| {
            text.map_or(
                clap::builder::Resettable::Reset,
                clap::builder::Resettable::Value,
            )
        };
        command = command.about(keep(about)).long_about(keep(long_about));
        for sub in self.apps.iter().flat_map(|app| &app.commands) {
            command = command.subcommand((sub.command)().name(sub.name).about(sub.about));
        }
        command
    }

    /// Every settings section once, though two apps may declare the same one (an app that
    /// needs another's settings may say so by declaring them too).
    fn settings_sections(&self) -> impl Iterator<Item = &app::SettingsSection> {
        let mut seen = std::collections::HashSet::new();
        self.apps
            .iter()
            .flat_map(|app| &app.settings)
            .filter(move |section| seen.insert(section.type_name))
    }

    /// The apps' settings sections read from a parsed command line.
    pub fn sections(&self, matches: &clap::ArgMatches) -> Result<Sections, clap::Error> {
        let mut sections = Sections::default();
        for section in self.settings_sections() {
            (section.extract)(matches, &mut sections)?;
        }
        Ok(sections)
    }

    /// The settings sections a bare command line would give: defaults and environment
    /// variables (tests and tools start here and change what they need).
    pub fn sections_from_env(&self) -> Result<Sections, clap::Error> {
        let command = self.augment(clap::Command::new("hearth").no_binary_name(true));
        self.sections(&command.try_get_matches_from(Vec::<String>::new())?)
    }

    /// Runs the app command `matches` names, if an app declared it.
    pub fn run_command(
        &self,
        matches: &clap::ArgMatches,
        invocation: Invocation,
    ) -> Option<futures::future::BoxFuture<'static, anyhow::Result<()>>> {
        let (name, sub) = matches.subcommand()?;
        let command = self
            .apps
            .iter()
            .flat_map(|app| &app.commands)
            .find(|c| c.name == name)?;
        Some((command.run)(sub, invocation))
    }

    /// The apps' settings sections, as the start-up banner prints them.
    pub fn show_settings(&self, sections: &Sections) -> String {
        self.settings_sections()
            .map(|section| format!("\n{}", (section.show)(sections)))
            .collect()
    }

    /// Checks the declarations against each other and works out what does not need the
    /// running platform: migrations, schedules, navigation, body limit.
    pub fn plan(&self, config: &Config, sections: &Sections) -> anyhow::Result<Plan> {
        self.check_names()?;
        let kinds = self.kinds()?;
        let mut migrations = vec![migrations::PLATFORM];
        let mut body_limit = config.http.body_limit;
        let mut nav = Vec::new();
        let mut schedules: Vec<(String, Schedule)> = Vec::new();
        for app in &self.apps {
            if let Some(migrator) = app.migrations {
                migrations.push(MigrationSet {
                    app: app.name,
                    migrator,
                });
            }
            if let Some(limit) = &app.body_limit {
                body_limit = body_limit.max(limit(sections)?);
            }
            for link in &app.nav {
                nav.push(link(sections)?);
            }
            for plan in &app.schedules {
                for schedule in plan(sections)? {
                    schedules.push((format!("the app {:?}", app.name), schedule));
                }
            }
        }
        if let Some(spec) = &config.jobs.schedules {
            for schedule in crate::jobs::schedule::parse_config(spec)? {
                schedules.push(("HEARTH_SCHEDULES".into(), schedule));
            }
        }
        let catalog = self.catalog();
        catalog
            .check_limits()
            .map_err(ComposeError::SoftTimeLimit)?;
        Ok(Plan {
            migrations,
            schedules: check_schedules(schedules, &kinds)?,
            kinds: catalog,
            nav,
            body_limit,
            assets: self.static_files()?,
        })
    }

    /// The composition's and the apps' static files in one namespace.
    fn static_files(&self) -> Result<Assets, ComposeError> {
        let own = self
            .assets
            .iter()
            .map(|f| ("the application".to_owned(), *f));
        let apps = self
            .apps
            .iter()
            .filter_map(|app| Some((format!("the app {:?}", app.name), app.assets?)));
        Ok(Assets::embedded(&own.chain(apps).collect::<Vec<_>>())?)
    }

    fn check_names(&self) -> Result<(), ComposeError> {
        for (i, app) in self.apps.iter().enumerate() {
            let valid = !app.name.is_empty()
                && app
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(ComposeError::BadName(app.name));
            }
            if app.name == PLATFORM || self.apps[..i].iter().any(|a| a.name == app.name) {
                return Err(ComposeError::DuplicateApp(app.name));
            }
        }
        let mut commands: HashMap<&str, &'static str> = HashMap::new();
        for app in &self.apps {
            for command in &app.commands {
                if let Some(first) = commands.insert(command.name, app.name) {
                    return Err(ComposeError::DuplicateCommand {
                        name: command.name,
                        first,
                        second: app.name,
                    });
                }
            }
        }
        Ok(())
    }

    /// Every job kind with the app that registers it.
    fn kinds(&self) -> Result<HashMap<&'static str, &'static str>, ComposeError> {
        let mut kinds: HashMap<&'static str, &'static str> = Registry::new()
            .kinds()
            .into_iter()
            .map(|kind| (kind, PLATFORM))
            .collect();
        for app in &self.apps {
            for kind in app.job_kinds() {
                if let Some(first) = kinds.insert(kind, app.name) {
                    return Err(ComposeError::DuplicateKind {
                        kind,
                        first,
                        second: app.name,
                    });
                }
            }
        }
        Ok(kinds)
    }

    /// Every job kind with its args check and defaults (names are checked unique by [`Self::kinds`]).
    fn catalog(&self) -> Kinds {
        let mut catalog = Registry::new().catalog();
        for kind in self.apps.iter().flat_map(|app| &app.jobs) {
            catalog.insert(kind.kind, kind.info);
        }
        catalog
    }

    /// The platform's state for this application: services started, plan applied.
    pub fn state(
        &self,
        config: Config,
        sections: Sections,
        pool: PgPool,
    ) -> anyhow::Result<AppState> {
        let plan = self.plan(&config, &sections)?;
        AppState::new(config, sections, plan.into(), pool)
    }

    /// Every job kind of the application, with what each needs.
    pub fn registry(&self, state: &AppState) -> anyhow::Result<Registry> {
        let context = Context::new(state);
        let mut registry = Registry::new();
        for app in &self.apps {
            for kind in &app.jobs {
                registry = (kind.register)(registry, &context)?;
            }
        }
        Ok(registry)
    }

    /// The whole HTTP application: every app's routes behind the platform's middleware.
    pub fn router(&self, state: &AppState) -> anyhow::Result<Router> {
        self.router_with(state, Router::new())
    }

    /// [`router`](Self::router) with `extra` routes beside the apps' (tests use it to reach
    /// extractors and error paths), behind the same middleware.
    pub fn router_with(&self, state: &AppState, extra: Router<AppState>) -> anyhow::Result<Router> {
        let context = Context::new(state);
        let mut claimed: HashMap<String, &'static str> = web::PLATFORM_PATHS
            .iter()
            .map(|path| (path.to_string(), PLATFORM))
            .collect();
        let mut pages = Router::new();
        let mut api = Router::new();
        for app in &self.apps {
            for (build, api_only) in app
                .routes
                .iter()
                .map(|b| (b, false))
                .chain(app.api_routes.iter().map(|b| (b, true)))
            {
                let routes = build(&context)?;
                claim(&mut claimed, app.name, &routes)?;
                if api_only {
                    api = api.merge(routes.router);
                } else {
                    pages = pages.merge(routes.router);
                }
            }
        }
        let pages = pages.merge(extra);
        Ok(web::site(state, pages, api))
    }
}

/// Records the paths `routes` claims for `app`; a path another app claimed is an error.
fn claim(
    claimed: &mut HashMap<String, &'static str>,
    app: &'static str,
    routes: &Routes,
) -> Result<(), ComposeError> {
    for path in routes.paths() {
        if let Some(first) = claimed.insert(path.clone(), app) {
            return Err(ComposeError::DuplicateRoute {
                path: path.clone(),
                first,
                second: app,
            });
        }
    }
    Ok(())
}

/// Schedule names are unique and every schedule's kind is registered.
fn check_schedules(
    schedules: Vec<(String, Schedule)>,
    kinds: &HashMap<&'static str, &'static str>,
) -> Result<Vec<Schedule>, ComposeError> {
    let mut seen: HashMap<String, String> = HashMap::new();
    for (owner, schedule) in &schedules {
        if let Some(first) = seen.insert(schedule.name.clone(), owner.clone()) {
            return Err(ComposeError::DuplicateSchedule {
                name: schedule.name.clone(),
                first,
                second: owner.clone(),
            });
        }
        if !kinds.contains_key(schedule.job.kind()) {
            return Err(ComposeError::UnknownKind {
                name: schedule.name.clone(),
                kind: schedule.job.kind().to_string(),
                owner: owner.clone(),
            });
        }
    }
    Ok(schedules.into_iter().map(|(_, s)| s).collect())
}

impl From<Plan> for web::state::Composed {
    fn from(plan: Plan) -> Self {
        Self {
            migrations: plan.migrations,
            schedules: plan.schedules,
            kinds: plan.kinds,
            nav: plan.nav,
            body_limit: plan.body_limit,
            assets: plan.assets,
        }
    }
}
