//! The `hearth` command line: `serve` (the default), `migrate`, `createuser`.

use std::{
    io::{self, BufRead, IsTerminal},
    process::ExitCode,
};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{
    config::Config,
    db::{Database, migrations},
    server, telemetry,
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
    /// Inspect and clear the cache.
    Cache {
        #[command(subcommand)]
        action: CacheCommand,
    },
    /// Benchmarks (see `hearth bench jobs --help`).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
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
pub enum BenchCommand {
    /// The job-queue benchmark (PROTOCOL.md W4): `hearth bench jobs both 20000 3`.
    Jobs(crate::bench::jobs::BenchArgs),
    /// The W5 WebSocket load client: `hearth bench ws chat --url ws://127.0.0.1:8000/ws/chat/bench/`.
    Ws(crate::bench::ws::WsArgs),
    /// A W5 server that only writes each message to every socket (no database, no channel
    /// layer), to measure the machine's floor: `hearth bench ws-floor --listen 127.0.0.1:8200`.
    WsFloor(crate::bench::floor::FloorArgs),
    /// The W6 event-stream load client: `hearth bench sse --base http://127.0.0.1:8000`.
    Sse(crate::bench::sse::SseArgs),
    /// Cache round trips per tier: `hearth bench cache 10000`.
    Cache(crate::bench::cache::CacheArgs),
    /// Collaborative documents: fan-out latency with 20 editors, memory per open document.
    Docs(crate::bench::docs::DocsArgs),
    /// A soak: pages, chat, event streams and jobs at fixed rates against a child server,
    /// watching its memory and descriptors: `hearth bench soak --duration 10m`.
    Soak(crate::bench::soak::SoakArgs),
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
    /// Periodic jobs with their last and next run.
    Schedules,
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

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    telemetry::init(cli.config.log_json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve { no_migrate: false }) {
            Command::Serve { no_migrate } => server::run(cli.config, !no_migrate).await,
            Command::Migrate { status } => migrate(&cli.config, status).await,
            Command::Worker => server::run_worker(cli.config).await,
            Command::Bench {
                what: BenchCommand::Jobs(args),
            } => crate::bench::jobs::run(cli.config, args).await,
            Command::Bench {
                what: BenchCommand::Ws(args),
            } => crate::bench::ws::run(args).await,
            Command::Bench {
                what: BenchCommand::WsFloor(args),
            } => crate::bench::floor::run(args).await,
            Command::Bench {
                what: BenchCommand::Sse(args),
            } => crate::bench::sse::run(args).await,
            Command::Bench {
                what: BenchCommand::Cache(args),
            } => {
                let config = &cli.config;
                with_database(config, true, |pool| {
                    crate::bench::cache::run(config, pool, args)
                })
                .await
            }
            Command::Bench {
                what: BenchCommand::Docs(args),
            } => {
                let config = &cli.config;
                with_database(config, true, |pool| {
                    crate::bench::docs::run(config, pool, args)
                })
                .await
            }
            Command::Bench {
                what: BenchCommand::Soak(args),
            } => crate::bench::soak::run(cli.config, args).await,
            Command::Jobs { action } => jobs(&cli.config, action).await,
            Command::Cache { action } => cache(&cli.config, action).await,
            Command::Createuser {
                name,
                admin,
                password_stdin,
            } => createuser(&cli.config, &name, admin, password_stdin).await,
        }
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

/// Opens the database for an admin command (attaching to a running server's embedded
/// cluster), applies pending migrations if `migrate`, runs `work`, and closes the database
/// (stopping an embedded cluster it started) whatever `work` returned.
async fn with_database<T, F>(
    config: &Config,
    migrate: bool,
    work: impl FnOnce(sqlx::PgPool) -> F,
) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let db = Database::open(config, true)
        .await
        .context("cannot open the database")?;
    let outcome = async {
        if migrate {
            migrations::run(&db.pool)
                .await
                .context("cannot apply migrations")?;
        }
        work(db.pool.clone()).await
    }
    .await;
    db.close().await?;
    outcome
}

async fn migrate(config: &Config, status_only: bool) -> anyhow::Result<()> {
    with_database(config, !status_only, |pool| async move {
        let status = migrations::status(&pool)
            .await
            .context("cannot read the migration table")?;
        for m in &status {
            match m.applied_at {
                Some(at) => println!("applied  {:>14}  {}  ({at})", m.version, m.description),
                None => println!("pending  {:>14}  {}", m.version, m.description),
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

async fn cache(config: &Config, action: CacheCommand) -> anyhow::Result<()> {
    use crate::{cache::Cache, web::state};
    with_database(config, true, |pool| async move {
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

async fn jobs(config: &Config, action: JobsCommand) -> anyhow::Result<()> {
    with_database(config, true, |pool| async move {
        jobs_action(config, &pool, action).await
    })
    .await
}

async fn jobs_action(
    config: &Config,
    pool: &sqlx::PgPool,
    action: JobsCommand,
) -> anyhow::Result<()> {
    use crate::jobs::{QueueName, control, maintenance};
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
        JobsCommand::Schedules => {
            let schedules =
                maintenance::schedule_status(pool, &server::job_schedules(config)?).await?;
            if schedules.is_empty() {
                println!("no schedules are declared");
            }
            for s in schedules {
                let show = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map_or("-".to_string(), |t| t.to_rfc3339())
                };
                println!(
                    "{:<24}  {:<32}  last {}  next {}",
                    s.name,
                    s.every,
                    show(s.last),
                    show(s.next)
                );
            }
        }
    }
    Ok(())
}

async fn createuser(
    config: &Config,
    name: &str,
    admin: bool,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let username = Username::parse(name).map_err(anyhow::Error::msg)?;
    let password = read_password(password_stdin)?;
    let hasher = Hasher::from_config(config);
    with_database(config, true, |pool| async move {
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
    /// subcommand's `--bind` beside the global one did once): parse one of each.
    #[test]
    fn every_subcommand_parses() {
        Cli::command().debug_assert();
        for line in [
            "hearth",
            "hearth serve",
            "hearth migrate --status",
            "hearth worker",
            "hearth bench jobs",
            "hearth bench ws chat",
            "hearth bench ws-floor --listen 127.0.0.1:0",
            "hearth bench sse",
            "hearth bench cache",
            "hearth bench docs",
            "hearth bench soak",
            "hearth jobs list",
            "hearth cache stats",
            "hearth createuser alice",
        ] {
            let parsed = Cli::try_parse_from(line.split(' '));
            assert!(parsed.is_ok(), "{line}: {}", parsed.unwrap_err());
        }
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
