//! The command line of a composed application: `serve` (the default), `migrate`, `worker`,
//! `createuser`, `jobs ...`, `schedules ...`, `cache ...`, and the commands its apps add
//! (`hearth-bench bench ...`).
//!
//! [`main`] is a program's whole `main`: the `hearth` binary calls it with the bundled apps,
//! a team's binary with its own.

use std::{
    ffi::OsString,
    io::{self, BufRead, IsTerminal},
    process::ExitCode,
};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use super::{Application, Invocation};
use crate::{
    application,
    config::Config,
    db::migrations,
    telemetry,
    web::{
        auth::{self, NewPassword, Username},
        hashing::Hasher,
    },
};

/// Hearth: a web platform in one binary, with PostgreSQL as its only service.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the web app (the default).
    Serve {
        /// Do not apply pending migrations at start.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending migrations.
    Migrate {
        /// List applied and pending migrations instead of applying them.
        #[arg(long)]
        status: bool,
    },
    /// Run job workers without the web server.
    Worker,
    /// Inspect and steer background jobs.
    Jobs {
        #[command(subcommand)]
        action: JobsCommand,
    },
    /// Periodic jobs: list them; add, change, pause, resume, remove and run them at run time.
    Schedules {
        #[command(subcommand)]
        action: SchedulesCommand,
    },
    /// Inspect and clear the cache.
    Cache {
        #[command(subcommand)]
        action: CacheCommand,
    },
    /// Create a user.
    Createuser {
        /// The username (3-32 letters, digits, `_`, `.`, `-`).
        name: String,
        /// Make the user an administrator.
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// The most recent jobs, newest first.
    List {
        /// Only jobs in this state (scheduled, available, running, completed, discarded, cancelled).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Everything about one job, as JSON.
    Show { id: i64 },
    /// Put a discarded or cancelled job back in its queue.
    Retry { id: i64 },
    /// Cancel a waiting or running job.
    Cancel { id: i64 },
    /// Stop all instances from starting jobs of a queue.
    Pause { queue: String },
    /// Let a paused queue run again.
    Resume { queue: String },
    /// Limit a queue on every instance: `--global 5` running at once, `--rate 100/1m` started per
    /// minute. Without either flag, the queue's limits are removed.
    Limit {
        queue: String,
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        global: Option<i32>,
        #[arg(long, value_parser = parse_rate)]
        rate: Option<(i32, std::time::Duration)>,
    },
    /// Limit how many jobs of a kind start, on all instances together: `10/m` (units s, m, h,
    /// d), or `off` to lift the limit. Beside the per-queue limits of `limit`.
    KindLimit {
        kind: String,
        #[arg(value_parser = parse_kind_rate)]
        rate: KindRate,
    },
    /// The rate limits per job kind.
    KindLimits,
    /// Periodic jobs with their last and next run (see also `hearth schedules`).
    Schedules,
}

/// A kind's rate on the command line: a rate, or `off`.
#[derive(Debug, Clone, Copy)]
pub struct KindRate(Option<crate::jobs::kind_limits::Rate>);

/// `10/m` → at most 10 per minute; `off` → no limit.
fn parse_kind_rate(spec: &str) -> Result<KindRate, String> {
    if spec.trim() == "off" {
        return Ok(KindRate(None));
    }
    spec.parse()
        .map(|rate| KindRate(Some(rate)))
        .map_err(|e: crate::jobs::kind_limits::RateError| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Every schedule (declared in code or added at run time) with its last and next run.
    List,
    /// Add a schedule kept in the database; the running instances fire it within a second.
    /// E.g. `hearth schedules add nightly --cron '0 3 * * *' --tz Europe/Paris --kind digest`.
    Add {
        name: String,
        #[command(flatten)]
        def: ScheduleArgs,
    },
    /// Change a schedule added at run time: only what is given changes. A new `--cron` or
    /// `--every` starts counting from now.
    Set {
        name: String,
        #[command(flatten)]
        def: ScheduleArgs,
    },
    /// Stop a schedule from firing (on every instance) until resumed.
    Pause { name: String },
    /// Let a paused schedule fire again; occurrences skipped while paused are not caught up.
    Resume { name: String },
    /// Remove a schedule added at run time (jobs it enqueued stay).
    Remove { name: String },
    /// Enqueue a schedule's job now, outside its timetable.
    Run { name: String },
}

/// A run-time schedule's definition on the command line.
#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    /// A cron expression (5 fields, or 6 with seconds; `@daily` and friends).
    #[arg(long, conflicts_with = "every")]
    cron: Option<String>,
    /// The cron expression's IANA time zone (default UTC).
    #[arg(long, requires = "cron")]
    tz: Option<String>,
    /// A fixed interval instead of a cron expression: `10m`, `1h`, at least `1s`.
    #[arg(long)]
    every: Option<String>,
    /// The job kind to enqueue.
    #[arg(long)]
    kind: Option<String>,
    /// The job's args, as JSON (default `{}`).
    #[arg(long)]
    args: Option<String>,
    /// Options of the enqueued jobs (default: the kind's).
    #[arg(long)]
    queue: Option<String>,
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i16>,
    #[arg(long)]
    max_attempts: Option<i32>,
    /// Occurrences missed while no instance ran: `all` (at most the latest 100), `latest`
    /// (the default) or `none`.
    #[arg(long)]
    catch_up: Option<String>,
}

impl ScheduleArgs {
    /// The changes these flags describe; bad JSON or an unknown catch-up rule is an error.
    pub fn changes(self) -> Result<crate::jobs::schedule_store::Changes, anyhow::Error> {
        use crate::jobs::schedule_store::{Changes, When};
        Ok(Changes {
            when: When::from_parts(
                self.cron.as_deref(),
                self.tz.as_deref(),
                self.every.as_deref(),
            )?,
            kind: self.kind,
            args: self
                .args
                .map(|a| serde_json::from_str(&a))
                .transpose()
                .map_err(|e| crate::jobs::schedule_store::StoreError::ArgsNotJson(e.to_string()))?,
            queue: self.queue,
            priority: self.priority,
            max_attempts: self.max_attempts,
            catch_up: self.catch_up.map(|c| c.parse()).transpose()?,
        })
    }
}

/// `100/1m` → 100 per minute.
fn parse_rate(spec: &str) -> Result<(i32, std::time::Duration), String> {
    let (n, period) = spec
        .split_once('/')
        .ok_or("expected N/PERIOD, e.g. 100/1m")?;
    let n: i32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{n:?} is not a whole number"))?;
    if n < 1 {
        return Err("the rate must allow at least 1 job per period".into());
    }
    let period =
        humantime::parse_duration(period.trim()).map_err(|e| format!("{period:?}: {e}"))?;
    if period.is_zero() {
        return Err("the period must be longer than zero".into());
    }
    Ok((n, period))
}

/// The command line of `application`: the platform's settings and commands, and its apps'.
pub fn command(application: &Application) -> clap::Command {
    application.augment(Cli::command())
}

/// Parses `args` (the program name first) and runs the command; returns the exit code.
pub fn main(application: Application, args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let matches = match command(&application).try_get_matches_from(args) {
        Ok(matches) => matches,
        Err(e) => return exit_code(e.print(), e.exit_code()),
    };
    let parsed = Config::from_arg_matches(&matches)
        .and_then(|config| Ok((config, application.sections(&matches)?)));
    let (config, sections) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return exit_code(e.print(), e.exit_code()),
    };
    telemetry::init(config.http.log_json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let invocation = Invocation {
        config,
        sections,
        application: application.clone(),
    };
    let result = runtime.block_on(async move {
        if let Some(command) = application.run_command(&matches, invocation.clone()) {
            return command.await;
        }
        let command = Command::from_arg_matches(&matches).ok();
        run(
            command.unwrap_or(Command::Serve { no_migrate: false }),
            invocation,
        )
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn exit_code(printed: io::Result<()>, code: i32) -> ExitCode {
    drop(printed);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

async fn run(command: Command, invocation: Invocation) -> anyhow::Result<()> {
    let Invocation {
        config,
        sections,
        application,
    } = invocation.clone();
    match command {
        Command::Serve { no_migrate } => {
            application::serve_command(application, config, sections, !no_migrate).await
        }
        Command::Migrate { status } => migrate(&invocation, status).await,
        Command::Worker => application::worker_command(application, config, sections).await,
        Command::Jobs { action } => {
            let inner = invocation.clone();
            invocation
                .with_database(true, |pool| async move {
                    jobs_action(&inner, &pool, action).await
                })
                .await
        }
        Command::Schedules { action } => {
            let inner = invocation.clone();
            invocation
                .with_database(true, |pool| async move {
                    schedules_action(&inner, &pool, action).await
                })
                .await
        }
        Command::Cache { action } => cache(&invocation, action).await,
        Command::Createuser {
            name,
            admin,
            password_stdin,
        } => createuser(&invocation, &name, admin, password_stdin).await,
    }
}

async fn migrate(invocation: &Invocation, status_only: bool) -> anyhow::Result<()> {
    let plan = invocation
        .application
        .plan(&invocation.config, &invocation.sections)?;
    invocation
        .with_database(!status_only, |pool| async move {
            let status = migrations::status(&pool, &plan.migrations)
                .await
                .context("cannot read the migration table")?;
            for m in &status {
                let name = format!("{}/{:04}", m.app, m.version);
                match (m.applied_at, m.orphan) {
                    (Some(at), false) => println!("applied  {name:<24}  {}  ({at})", m.description),
                    (Some(at), true) => println!(
                        "applied  {name:<24}  {}  ({at}; no app of this program ships it)",
                        m.description
                    ),
                    (None, _) => println!("pending  {name:<24}  {}", m.description),
                }
            }
            let pending = status.iter().filter(|m| m.applied_at.is_none()).count();
            println!("{} applied, {pending} pending", status.len() - pending);
            Ok(())
        })
        .await
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Entries and bytes of the shared tier.
    Stats,
    /// Delete entries, on every instance (their in-process copies too).
    Clear {
        /// Only keys starting with this (the full key: `<prefix>:<version>:<key>`).
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

async fn cache(invocation: &Invocation, action: CacheCommand) -> anyhow::Result<()> {
    use crate::{cache::Cache, web::state};
    let config = &invocation.config;
    invocation
        .with_database(true, |pool| async move {
            let channels =
                crate::channels::ChannelLayer::start(pool.clone(), state::channel_config(config));
            let cache = Cache::start(pool, channels.clone(), state::cache_config(config));
            let outcome = async {
                match action {
                    CacheCommand::Stats => {
                        let stats = cache.stats().await.context("cannot read cache stats")?;
                        println!("{}", serde_json::to_string_pretty(&stats)?);
                    }
                    CacheCommand::Clear { prefix } => {
                        // The invalidation reaches running instances once the layer is listening.
                        channels.ready().await;
                        let n = cache
                            .clear_prefix(&prefix)
                            .await
                            .context("cannot clear the cache")?;
                        println!("{n} entries deleted");
                    }
                }
                anyhow::Ok(())
            }
            .await;
            cache.shutdown();
            channels.shutdown().await;
            outcome
        })
        .await
}

async fn jobs_action(
    invocation: &Invocation,
    pool: &sqlx::PgPool,
    action: JobsCommand,
) -> anyhow::Result<()> {
    use crate::jobs::{QueueName, control};
    match action {
        JobsCommand::List { state, limit } => {
            let jobs = control::list(pool, state.as_deref(), limit).await?;
            println!(
                "{:>10}  {:<10}  {:<20}  {:<10}  {:>7}  created",
                "id", "state", "kind", "queue", "attempt"
            );
            for job in jobs {
                println!(
                    "{:>10}  {:<10}  {:<20}  {:<10}  {:>3}/{:<3}  {}",
                    job.id,
                    job.state,
                    job.kind,
                    job.queue,
                    job.attempt,
                    job.max_attempts,
                    job.created_at
                );
            }
        }
        JobsCommand::Show { id } => match control::status(pool, id).await? {
            Some(job) => println!("{}", serde_json::to_string_pretty(&job)?),
            None => anyhow::bail!("there is no job {id}"),
        },
        JobsCommand::Retry { id } => {
            anyhow::ensure!(
                control::retry(pool, id).await?,
                "job {id} is not a discarded or cancelled job"
            );
            println!("job {id} is back in its queue");
        }
        JobsCommand::Cancel { id } => match control::cancel(pool, id).await? {
            control::Cancelled::Cancelled => println!("job {id} cancelled"),
            control::Cancelled::Requested => {
                println!("job {id} is running; its worker was told to cancel it")
            }
            control::Cancelled::AlreadyFinished => anyhow::bail!("job {id} has already finished"),
            control::Cancelled::NotFound => anyhow::bail!("there is no job {id}"),
        },
        JobsCommand::Pause { queue } => {
            control::pause(pool, &QueueName::parse(&queue)?).await?;
            println!("queue {queue} paused on every instance");
        }
        JobsCommand::Resume { queue } => {
            control::resume(pool, &QueueName::parse(&queue)?).await?;
            println!("queue {queue} resumed");
        }
        JobsCommand::Limit {
            queue,
            global,
            rate,
        } => {
            let limits = control::QueueLimits { global, rate };
            control::set_limits(pool, &QueueName::parse(&queue)?, limits).await?;
            match (global, rate) {
                (None, None) => println!("queue {queue} has no limits now"),
                _ => println!("queue {queue} limited: {limits:?}"),
            }
        }
        JobsCommand::KindLimit { kind, rate } => {
            if rate.0.is_some() {
                let plan = invocation
                    .application
                    .plan(&invocation.config, &invocation.sections)?;
                // A limit on a kind nothing runs is a typo; lifting one is always allowed.
                plan.kinds.require(&kind).map_err(anyhow::Error::msg)?;
            }
            crate::jobs::kind_limits::set(pool, &kind, rate.0).await?;
            match rate.0 {
                Some(rate) => println!("kind {kind} limited to {rate} on all instances"),
                None => println!("kind {kind} has no rate limit now"),
            }
        }
        JobsCommand::KindLimits => {
            let limits = crate::jobs::kind_limits::list(pool).await?;
            if limits.is_empty() {
                println!("no job kind has a rate limit");
            }
            for (kind, rate) in limits {
                println!("{kind:<32}  {rate}");
            }
        }
        JobsCommand::Schedules => {
            schedules_action(invocation, pool, SchedulesCommand::List).await?;
        }
    }
    Ok(())
}

async fn schedules_action(
    invocation: &Invocation,
    pool: &sqlx::PgPool,
    action: SchedulesCommand,
) -> anyhow::Result<()> {
    use crate::jobs::schedule_store;
    let plan = invocation
        .application
        .plan(&invocation.config, &invocation.sections)?;
    let code = &plan.schedules;
    match action {
        SchedulesCommand::List => {
            let schedules = schedule_store::list(pool, code).await?;
            if schedules.is_empty() {
                println!("no schedules");
            }
            let show = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or("-".to_string(), |t| t.to_rfc3339())
            };
            for s in schedules {
                println!(
                    "{:<24}  {:<7}  {:<32}  {:<20}  catch-up {:<6}  {}last {}  next {}",
                    s.name,
                    if s.runtime { "runtime" } else { "code" },
                    s.every,
                    s.kind,
                    s.catch_up,
                    if s.paused { "PAUSED  " } else { "" },
                    show(s.last),
                    show(s.next)
                );
            }
        }
        SchedulesCommand::Add { name, def } => {
            schedule_store::add(pool, &plan.kinds, code, &name, def.changes()?).await?;
            println!("schedule {name} added");
        }
        SchedulesCommand::Set { name, def } => {
            schedule_store::change(pool, &plan.kinds, code, &name, def.changes()?).await?;
            println!("schedule {name} changed");
        }
        SchedulesCommand::Pause { name } => {
            schedule_store::set_paused(pool, code, &name, true).await?;
            println!("schedule {name} paused on every instance");
        }
        SchedulesCommand::Resume { name } => {
            schedule_store::set_paused(pool, code, &name, false).await?;
            println!("schedule {name} resumed");
        }
        SchedulesCommand::Remove { name } => {
            schedule_store::remove(pool, code, &name).await?;
            println!("schedule {name} removed");
        }
        SchedulesCommand::Run { name } => {
            let job = schedule_store::run_now(pool, code, &name).await?;
            println!("schedule {name} enqueued job {}", job.id);
        }
    }
    Ok(())
}

async fn createuser(
    invocation: &Invocation,
    name: &str,
    admin: bool,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let username = Username::parse(name).map_err(anyhow::Error::msg)?;
    let password = read_password(password_stdin)?;
    let hasher = Hasher::from_config(&invocation.config);
    invocation
        .with_database(true, |pool| async move {
            let slot = hasher.enter()?;
            let user = auth::create_user(&pool, &slot, &username, &password, admin).await?;
            println!(
                "created user {} (id {}{})",
                user.username,
                user.id,
                if user.is_admin { ", admin" } else { "" }
            );
            Ok(())
        })
        .await
}

fn read_password(from_stdin: bool) -> anyhow::Result<NewPassword> {
    let raw = if from_stdin || !io::stdin().is_terminal() {
        let mut line = String::new();
        io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let first = rpassword::prompt_password("Password: ").context("cannot read the password")?;
        let again =
            rpassword::prompt_password("Password (again): ").context("cannot read the password")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        first
    };
    NewPassword::parse(&raw).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::{Cli, parse_rate};
    use clap::{CommandFactory, Parser};
    use std::time::Duration;

    /// Clap finds some mistakes only when a command line is parsed, by panicking (a
    /// subcommand's `--bind` beside the global one did once): parse one of each. The bundled
    /// apps' commands and settings are checked the same way in `tests/api/platform.rs`.
    #[test]
    fn every_subcommand_parses() {
        Cli::command().debug_assert();
        for line in [
            "hearth",
            "hearth serve",
            "hearth migrate --status",
            "hearth worker",
            "hearth jobs list",
            "hearth schedules list",
            "hearth jobs kind-limit send_sms 10/m",
            "hearth jobs kind-limit send_sms off",
            "hearth schedules add x --every 10m --kind noop --priority -1",
            "hearth schedules set x --cron @daily --tz UTC --catch-up all",
            "hearth cache stats",
            "hearth createuser alice",
        ] {
            let parsed = Cli::try_parse_from(line.split(' '));
            assert!(parsed.is_ok(), "{line}: {}", parsed.unwrap_err());
        }
    }

    #[test]
    fn kind_rates_parse_or_explain() {
        assert!(super::parse_kind_rate("off").unwrap().0.is_none());
        assert_eq!(super::parse_kind_rate("10/m").unwrap().0.unwrap().limit, 10);
        assert!(
            super::parse_kind_rate("0/s")
                .unwrap_err()
                .contains("never run")
        );
        assert!(
            super::parse_kind_rate("3/fortnight")
                .unwrap_err()
                .contains("not a unit")
        );
    }

    #[test]
    fn rates_parse_or_explain() {
        assert_eq!(
            parse_rate("100/1m").unwrap(),
            (100, Duration::from_secs(60))
        );
        assert!(parse_rate("100").is_err());
        assert!(parse_rate("0/1s").is_err());
        assert!(parse_rate("-3/1s").is_err());
        assert!(parse_rate("5/0s").is_err());
    }
}
