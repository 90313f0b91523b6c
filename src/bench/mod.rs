//! The benchmark suite's side in the binary: the workloads of the benchmark protocol.
//!
//! * [`jobs`]: `hearth bench jobs`, the job-queue benchmark (W4), and
//!   [`workflows`] (`hearth bench jobs workflows`): chord callback latency, chain steps/s;
//! * [`cache`]: `hearth bench cache`, get/set round trips per cache tier;
//! * [`docs`]: `hearth bench docs`, collaborative editing: update fan-out latency with many
//!   editors on one document, and memory per open document;
//! * [`ws`]: `hearth bench ws`, a W5 load client that does not cap the server it measures;
//! * [`floor`]: `hearth bench ws-floor`, a W5 server that does only the kernel's part of a
//!   fan-out, so that W5's floor on a machine can be measured beside Hearth;
//! * [`sse`]: `hearth bench sse`, the same for W6's event streams ([`client`] holds what the
//!   two share);
//! * [`soak`]: `hearth bench soak`, a long run of mixed traffic against a child server that
//!   reports its memory and descriptors over time, errors, losses and latencies;
//! * [`routes`]: the HTTP and WebSocket endpoints the load clients hit (W5 chat over a
//!   WebSocket consumer, W6 server-sent events), served only with `HEARTH_BENCH_ROUTES=1` so
//!   production routes stay clean.

pub mod cache;
mod client;
pub mod docs;
pub mod floor;
pub mod jobs;
pub mod routes;
pub mod soak;
pub mod sse;
pub mod workflows;
pub mod ws;

use std::fmt;

use crate::{App, application::Invocation};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/bench");

/// The benchmark app: `hearth bench ...`, and the protocol's routes when
/// `HEARTH_BENCH_ROUTES` is on.
pub fn app() -> App {
    App::new("bench")
        .migrations(&MIGRATIONS)
        .settings::<BenchSettings>()
        .api_routes(|ctx| {
            let settings = ctx.settings::<BenchSettings>()?;
            Ok(if settings.bench_routes {
                routes::routes(ctx.state())
                    .merge(crate::gateway::bench_routes(&settings.bench_upstream_url))
            } else {
                crate::Routes::new()
            })
        })
        .on_start("seed the benchmark posts", |state| async move {
            let settings = crate::application::section::<BenchSettings>(&state.sections)?;
            if settings.bench_routes {
                routes::seed(&state.db).await?;
            }
            Ok(())
        })
        .command("bench", "Benchmarks (see `hearth bench jobs --help`).", run)
}

/// The benchmark app's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchSettings {
    /// Serve the benchmark routes of `bench/PROTOCOL` (`/bench/...`, `/ws/chat/{room}/`).
    /// Off in production.
    #[arg(long, env = "HEARTH_BENCH_ROUTES", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue, global = true)]
    pub bench_routes: bool,

    /// Base URL of the benchmark's upstream stub; `GET /bench/gather` (W3) calls
    /// `<URL>/upstream/1`, `/2` and `/3`.
    #[arg(long, env = "HEARTH_BENCH_UPSTREAM_URL", default_value = "http://127.0.0.1:8081", value_parser = crate::gateway::http_url, global = true)]
    pub bench_upstream_url: url::Url,
}

impl fmt::Display for BenchSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bench_routes {
            write!(
                f,
                "  bench routes        on (upstream stub {})",
                self.bench_upstream_url
            )
        } else {
            write!(f, "  bench routes        off")
        }
    }
}

/// `hearth bench ...`.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// The job-queue benchmark (PROTOCOL.md W4): `hearth bench jobs both 20000 3`.
    Jobs(jobs::BenchArgs),
    /// The W5 WebSocket load client: `hearth bench ws chat --url ws://127.0.0.1:8000/ws/chat/bench/`.
    Ws(ws::WsArgs),
    /// A W5 server that only writes each message to every socket (no database, no channel
    /// layer), to measure the machine's floor: `hearth bench ws-floor --listen 127.0.0.1:8200`.
    WsFloor(floor::FloorArgs),
    /// The W6 event-stream load client: `hearth bench sse --base http://127.0.0.1:8000`.
    Sse(sse::SseArgs),
    /// Cache round trips per tier: `hearth bench cache 10000`.
    Cache(cache::CacheArgs),
    /// Collaborative documents: fan-out latency with 20 editors, memory per open document.
    Docs(docs::DocsArgs),
    /// A soak: pages, chat, event streams and jobs at fixed rates against a child server,
    /// watching its memory and descriptors: `hearth bench soak --duration 10m`.
    Soak(soak::SoakArgs),
}

async fn run(command: BenchCommand, invocation: Invocation) -> anyhow::Result<()> {
    match command {
        // On a runtime of its own: the workflow benchmark's future is not `Send` for every
        // lifetime the command's signature asks for, and it measures this process alone anyway.
        BenchCommand::Jobs(args) => {
            tokio::task::spawn_blocking(move || {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?
                    .block_on(jobs::run(&invocation, args))
            })
            .await?
        }
        BenchCommand::Ws(args) => ws::run(args).await,
        BenchCommand::WsFloor(args) => floor::run(args).await,
        BenchCommand::Sse(args) => sse::run(args).await,
        BenchCommand::Cache(args) => {
            let config = invocation.config.clone();
            invocation
                .with_database(
                    true,
                    |pool| async move { cache::run(&config, pool, args).await },
                )
                .await
        }
        BenchCommand::Docs(args) => {
            let inner = invocation.clone();
            invocation
                .with_database(
                    true,
                    |pool| async move { docs::run(&inner, pool, args).await },
                )
                .await
        }
        BenchCommand::Soak(args) => soak::run(invocation.config, args).await,
    }
}
