//! Operations app: job status for clients that poll ("task id, processing" pattern).

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::get,
};

use crate::{
    jobs::control::{self, JobStatus},
    web::{AppState, WebError, auth::RequireLogin},
};

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/jobs/{id}", get(job_status))
}

/// `GET /api/jobs/{id}`: state, attempts, errors, progress and result of a job. Signed-in
/// users only: job args may carry data that is not for the public.
#[tracing::instrument(skip(state, _login))]
async fn job_status(
    State(state): State<AppState>,
    _login: RequireLogin,
    Path(id): Path<i64>,
) -> Result<Json<JobStatus>, WebError> {
    control::status(&state.db, id)
        .await?
        .map(Json)
        .ok_or(WebError::NotFound)
}
