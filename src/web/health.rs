//! Liveness and readiness probes.
//!
//! `/healthz` answers as long as the process serves HTTP. `/readyz` also checks that the
//! database answers and that every migration is applied, so a load balancer sends traffic only
//! to instances that can serve it.

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::{Value, json};

use super::AppState;
use crate::db::{failover, lost, migrations};

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
    let mut checked = migrations::pending(&state.db, &state.composed.migrations).await;
    if let Err(e) = &checked
        && lost::connection_lost(e)
    {
        // The connection this check was lent had been cut (a restart, a failover, terminated
        // backends). Noting it made the pool ping the other idle ones before lending them, so
        // a second try answers for the database rather than for one dead connection.
        tracing::info!(error = %e, "readiness check: a pooled connection was lost; checking again");
        checked = migrations::pending(&state.db, &state.composed.migrations).await;
    }
    match checked {
        Ok(0) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "database": "ok", "pending_migrations": 0 })),
        ),
        Ok(pending) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "database": "ok", "pending_migrations": pending })),
        ),
        // The pool refused a server in recovery: say so, not just "unavailable".
        Err(e) => match failover::standby_refused() {
            Some(reason) => {
                tracing::warn!(error = %e, %reason, "readiness check: only a standby answers");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({ "status": "not ready", "database": "standby", "reason": reason })),
                )
            }
            None => {
                tracing::warn!(error = %e, "readiness check: database unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({ "status": "not ready", "database": "unavailable" })),
                )
            }
        },
    }
}
