//! Operations app: the console under `/ops` (administrators only) and the job status API.
//!
//! * `jobs`: counts by state and queue (updated live), the searchable job list with bulk
//!   actions, a job's page with its errors and the actions retry, cancel, discard and run
//!   now; queues (pause, resume); rate limits per job kind (set, lift).
//! * `schedules`: every schedule with its last and next run; add, change, pause, resume,
//!   remove and run now (schedules kept in the database, managed at run time).
//! * `workflows`: the latest workflows, a workflow's steps drawn as a graph (inline SVG) and
//!   as an outline of its chains and groups, with their states (updated live), cancel.
//! * `system`: the channel layer (instances, connections, groups, presence, counters), the
//!   cache (stats, clear by prefix or tag) and the database health these depend on (table
//!   sizes, dead tuples, the oldest open transaction).
//! * [`audit`]: every action is recorded with who took it; the console shows the log.
//!
//! Every action is a CSRF-protected POST that the page asks to confirm first.
//! `GET /api/jobs/{id}` and `GET /api/workflows/{id}` ([`job_api`]) are for a signed-in client
//! that follows a job or workflow it started (and for administrators), with `?wait=10s` to
//! long-poll for its end.

pub mod audit;
mod job_api;
mod jobs;
mod schedules;
mod system;
mod workflow_graph;
mod workflows;

use axum::routing::{get, post};

use crate::{
    App, Routes,
    web::templates::{NavLink, Show},
};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/ops");

/// The ops app.
pub fn app() -> App {
    App::new("ops")
        .migrations(&MIGRATIONS)
        .routes(|_| Ok(routes()))
        .nav(|_| Ok(NavLink::new("Ops", "/ops", Show::Admins).tool()))
}

fn routes() -> Routes {
    Routes::new()
        .route("/api/jobs/{id}", get(job_api::job_status))
        .route("/api/workflows/{id}", get(job_api::workflow_status))
        .route("/ops", get(jobs::overview))
        .route("/ops/api/counts", get(jobs::counts))
        .route("/ops/jobs", get(jobs::list))
        .route("/ops/jobs/bulk", post(jobs::bulk))
        .route("/ops/jobs/{id}", get(jobs::show))
        .route("/ops/jobs/{id}/{action}", post(jobs::act))
        .route("/ops/queues/{queue}/{action}", post(jobs::queue))
        .route("/ops/kind-limits", post(jobs::kind_limit))
        .route("/ops/schedules", get(schedules::list).post(schedules::add))
        .route(
            "/ops/schedules/{name}",
            get(schedules::show).post(schedules::change),
        )
        .route("/ops/schedules/{name}/{action}", post(schedules::act))
        .route("/ops/workflows", get(workflows::list))
        .route("/ops/workflows/{id}", get(workflows::show))
        .route("/ops/workflows/{id}/cancel", post(workflows::cancel))
        .route("/ops/realtime", get(system::realtime))
        .route("/ops/cache", get(system::cache).post(system::cache_action))
        .route("/ops/db", get(system::database))
        .route("/ops/audit", get(system::audit_log))
}
