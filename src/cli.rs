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
    web::auth::{self, NewPassword, Username},
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

async fn migrate(config: &Config, status_only: bool) -> anyhow::Result<()> {
    let db = Database::open(config, true)
        .await
        .context("cannot open the database")?;
    let outcome = async {
        if !status_only {
            migrations::run(&db.pool)
                .await
                .context("cannot apply migrations")?;
        }
        let status = migrations::status(&db.pool)
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
        anyhow::Ok(())
    }
    .await;
    db.close().await?;
    outcome
}

async fn createuser(
    config: &Config,
    name: &str,
    admin: bool,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let username = Username::parse(name).map_err(anyhow::Error::msg)?;
    let password = read_password(password_stdin)?;
    let db = Database::open(config, true)
        .await
        .context("cannot open the database")?;
    let outcome = async {
        migrations::run(&db.pool)
            .await
            .context("cannot apply migrations")?;
        let user = auth::create_user(&db.pool, &username, &password, admin).await?;
        println!(
            "created user {} (id {}{})",
            user.username,
            user.id,
            if user.is_admin { ", admin" } else { "" }
        );
        anyhow::Ok(())
    }
    .await;
    db.close().await?;
    outcome
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
