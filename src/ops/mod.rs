//! Operations app: the console under `/ops` (administrators only) and the job status API.
//!
//! * `jobs`: counts by state and queue (updated live), the searchable job list with bulk
//!   actions, a job's page with its errors and the actions retry, cancel, discard and run
//!   now; queues (pause, resume) and schedules (run now).
//! * `system`: the channel layer (instances, connections, groups, presence, counters), the
//!   cache (stats, clear by prefix or tag) and the database health these depend on (table
//!   sizes, dead tuples, the oldest open transaction).
//! * [`audit`]: every action is recorded with who took it; the console shows the log.
//!
//! Every action is a CSRF-protected POST that the page asks to confirm first.
//! `GET /api/jobs/{id}` is for a signed-in client that polls a job it started (and for
//! administrators).

pub mod audit;
mod jobs;
mod system;

use axum::{
    Json,
    extract::{Path, State},
    routing::{get, post},
};

use crate::{
    jobs::control::{self, JobStatus},
    web::{AppState, WebError, auth::RequireLogin},
};

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
        .nav(|_| Ok(NavLink::new("Ops", "/ops", Show::Admins)))
}

fn routes() -> Routes {
    Routes::new()
        .route("/api/jobs/{id}", get(job_status))
        .route("/ops", get(jobs::overview))
        .route("/ops/api/counts", get(jobs::counts))
        .route("/ops/jobs", get(jobs::list))
        .route("/ops/jobs/bulk", post(jobs::bulk))
        .route("/ops/jobs/{id}", get(jobs::show))
        .route("/ops/jobs/{id}/{action}", post(jobs::act))
        .route("/ops/queues/{queue}/{action}", post(jobs::queue))
        .route("/ops/schedules/{name}/run", post(jobs::run_schedule))
        .route("/ops/realtime", get(system::realtime))
        .route("/ops/cache", get(system::cache).post(system::cache_action))
        .route("/ops/db", get(system::database))
        .route("/ops/audit", get(system::audit_log))
}

/// `GET /api/jobs/{id}`: state, attempts, progress and result of a job, for the user it was
/// enqueued for and for administrators. Anyone else gets the same 404 as for a job that does
/// not exist, so that ids cannot be probed for other people's jobs (their kinds, their
/// results); system jobs (no owner) are for administrators only. Args and error messages can
/// quote other people's data (a mail address a server refused), so only administrators see
/// them, even on their own jobs.
#[tracing::instrument(skip(state, login), fields(user_id = login.user.id))]
async fn job_status(
    State(state): State<AppState>,
    login: RequireLogin,
    Path(id): Path<i64>,
) -> Result<Json<JobStatus>, WebError> {
    let mut status = control::status(&state.db, id)
        .await?
        .filter(|job| login.user.is_admin || job.owner_id == Some(login.user.id))
        .ok_or(WebError::NotFound)?;
    if !login.user.is_admin {
        status.args = serde_json::Value::Null;
        status.errors = serde_json::json!([]);
    }
    Ok(Json(status))
}
