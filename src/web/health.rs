//! Liveness and readiness probes.
//!
//! `/healthz` answers as long as the process serves HTTP. `/readyz` also checks that the
//! database answers and that every migration is applied, so a load balancer sends traffic only
//! to instances that can serve it.

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::{Value, json};

use super::AppState;
use crate::db::migrations;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> &'static str {
    "ok"
}

#[tracing::instrument(skip(state))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match migrations::pending(&state.db, &state.composed.migrations).await {
        Ok(0) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "database": "ok", "pending_migrations": 0 })),
        ),
        Ok(pending) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "database": "ok", "pending_migrations": pending })),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: database unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not ready", "database": "unavailable" })),
            )
        }
    }
}
