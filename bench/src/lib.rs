//! hearth-bench: the benchmark suite of `bench/PROTOCOL.md`, as an app on Hearth's public API.
//!
//! The `hearth-bench` binary is every bundled app plus this one, so the server it measures is
//! the product's own server, middleware and library; the product binary has none of it.
//!
//! * [`routes`]: the HTTP and WebSocket endpoints the load clients hit (W1 page, W2 cached page,
//!   W3 gather, W5 chat over a WebSocket consumer, W6 server-sent events), and the seed table
//!   they read (`bench_posts`, this app's own migration);
//! * [`jobs`]: `hearth-bench bench jobs`, the job-queue benchmark (W4), and [`workflows`]
//!   (`bench jobs workflows`): chord callback latency, chain steps/s;
//! * [`cache`]: `bench cache`, get/set round trips per cache tier;
//! * [`docs`]: `bench docs`, collaborative editing: update fan-out latency with many editors on
//!   one document, and memory per open document;
//! * [`ws`]: `bench ws`, a W5 load client that does not cap the server it measures;
//! * [`sse`]: the same for W6's event streams ([`client`] holds what the two share);
//! * [`http_floor`] and [`ws_floor`]: `bench http-floor` and `bench ws-floor`, servers that do
//!   only the least a server must for W1-W3 and W5, measured beside Hearth in the same rounds;
//! * [`db_delay`]: `bench db-delay`, a TCP proxy that puts PostgreSQL a network hop away (a
//!   fixed delay each way) and counts round trips, and `bench db-rtt`, which measures the delay;
//! * [`soak`]: `bench soak`, a long run of mixed traffic against a child server that reports its
//!   memory and descriptors over time, errors, losses and latencies.

pub mod cache;
mod client;
pub mod db_delay;
pub mod docs;
pub mod http_floor;
pub mod jobs;
pub mod routes;
pub mod soak;
pub mod sse;
pub mod workflows;
pub mod ws;
pub mod ws_floor;

use std::fmt;

use hearth::{App, application::Invocation};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The bench app: the protocol's routes and their seed table, and `hearth-bench bench ...`.
pub fn app() -> App {
    App::new("bench")
        .migrations(&MIGRATIONS)
        .settings::<BenchSettings>()
        .api_routes(|ctx| {
            let settings = ctx.settings::<BenchSettings>()?;
            Ok(routes::routes(ctx.state(), &settings.bench_upstream_url))
        })
        .on_start("seed the benchmark posts", |state| async move {
            routes::seed(&state.db).await?;
            Ok(())
        })
        .command(
            "bench",
            "Benchmarks (see `hearth-bench bench jobs --help`).",
            run,
        )
}

/// The bench app's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchSettings {
    /// Base URL of the benchmark's upstream stub; `GET /bench/gather` (W3) calls
    /// `<URL>/upstream/1`, `/2` and `/3`.
    #[arg(long, env = "HEARTH_BENCH_UPSTREAM_URL", default_value = "http://127.0.0.1:8081", value_parser = hearth::gateway::http_url, global = true)]
    pub bench_upstream_url: url::Url,
}

impl fmt::Display for BenchSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  bench routes        on (upstream stub {})",
            self.bench_upstream_url
        )
    }
}

/// `hearth-bench bench ...`.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// The job-queue benchmark (PROTOCOL.md W4): `hearth-bench bench jobs both 20000 3`.
    Jobs(jobs::BenchArgs),
    /// The W5 WebSocket load client: `hearth-bench bench ws chat --url ws://127.0.0.1:8000/ws/chat/bench/`.
    Ws(ws::WsArgs),
    /// A W5 server that only writes each message to every socket (no database, no channel
    /// layer), to measure the machine's floor: `hearth-bench bench ws-floor --listen 127.0.0.1:8200`.
    WsFloor(ws_floor::FloorArgs),
    /// A W1, W2 and W3 server that does only the least a server must (one pipelined database
    /// connection, stored bytes, three upstream calls), to measure the machine's floor:
    /// `hearth-bench bench http-floor --listen 127.0.0.1:8200`.
    HttpFloor(http_floor::HttpFloorArgs),
    /// A TCP proxy holding every chunk a fixed time each way, as a network hop to a cloud
    /// database would, and counting round trips: `hearth-bench bench db-delay --delay 1ms`.
    DbDelay(db_delay::DelayArgs),
    /// Sequential `SELECT 1` round trips, to measure a delay: `hearth-bench bench db-rtt --url ...`.
    DbRtt(db_delay::RttArgs),
    /// The W6 event-stream load client: `hearth-bench bench sse --base http://127.0.0.1:8000`.
    Sse(sse::SseArgs),
    /// Cache round trips per tier: `hearth-bench bench cache 10000`.
    Cache(cache::CacheArgs),
    /// Collaborative documents: fan-out latency with 20 editors, memory per open document.
    Docs(docs::DocsArgs),
    /// A soak: pages, chat, event streams and jobs at fixed rates against a child server,
    /// watching its memory and descriptors: `hearth-bench bench soak --duration 10m`.
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
        BenchCommand::WsFloor(args) => ws_floor::run(args).await,
        BenchCommand::HttpFloor(args) => {
            let settings = hearth::application::section::<BenchSettings>(&invocation.sections)?;
            let upstream = settings.bench_upstream_url.clone();
            let database_url = invocation.config.db.database_url.clone();
            // Migrated and seeded as `serve` would, so the floor can run before Hearth in a round.
            invocation
                .with_database(true, |pool| async move {
                    routes::seed(&pool).await?;
                    http_floor::run(args, database_url.as_deref(), &upstream).await
                })
                .await
        }
        BenchCommand::Sse(args) => sse::run(args).await,
        // Blocking threads of its own (see the module's note), never the runtime's workers.
        BenchCommand::DbDelay(args) => {
            tokio::task::spawn_blocking(move || db_delay::run(args)).await?
        }
        BenchCommand::DbRtt(args) => db_delay::rtt(args).await,
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
