//! Gateway app: one request fans out to several upstream HTTP services at once.
//!
//! * `GET /api/aggregate` (signed-in users): `GET`s every upstream of `HEARTH_UPSTREAMS`
//!   concurrently and answers `200` with
//!   `{"upstreams":[{"name","ok","status","elapsed_ms","data","error"}...],"elapsed_ms"}` —
//!   each upstream's JSON or why there is none. A slow or failing upstream costs at most its own
//!   timeout and never fails the whole: the answer takes as long as the slowest upstream, not
//!   the sum. With no upstreams configured the list is empty.
//!
//! Other apps fan out the same way: [`fan_out`] over [`client`], one shared keep-alive client
//! (the benchmark's W3 route, in `hearth-bench`, is one of them).

mod fan_out;
mod upstreams;

use std::{fmt, sync::Arc, time::Instant};

use axum::{
    Extension, Json,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;

pub use fan_out::{Client, ClientError, FetchError, Fetched, client, fan_out};
pub use upstreams::{Upstream, Upstreams, UpstreamsError, UrlError, http_url};

use fan_out::Report;

use crate::{
    App, Routes,
    web::{WebError, auth::RequireLogin},
};

/// The gateway app.
pub fn app() -> App {
    App::new("gateway")
        .settings::<GatewaySettings>()
        .routes(|ctx| {
            let upstreams = Arc::new(ctx.settings::<GatewaySettings>()?.upstreams.clone());
            Ok(Routes::new()
                .route("/api/aggregate", get(aggregate))
                .layer(Extension(upstreams)))
        })
}

/// The gateway app's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewaySettings {
    /// Upstream services `GET /api/aggregate` fans out to: `name=URL[@timeout]`, separated by
    /// commas (`weather=http://127.0.0.1:9001/now@2s`); the timeout defaults to 3s.
    #[arg(long, env = "HEARTH_UPSTREAMS", default_value = "", value_parser = Upstreams::parse, global = true)]
    pub upstreams: Upstreams,
}

impl fmt::Display for GatewaySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "  upstreams           {}", self.upstreams)
    }
}

#[derive(Serialize)]
struct Aggregate<'a> {
    upstreams: Vec<Report<'a>>,
    elapsed_ms: u64,
}

/// `GET /api/aggregate`: every configured upstream's result or error, with timings.
/// Signed-in users only: upstreams may be internal services.
#[tracing::instrument(skip_all)]
async fn aggregate(
    Extension(upstreams): Extension<Arc<Upstreams>>,
    _login: RequireLogin,
) -> Result<Response, WebError> {
    let client = shared_client()?;
    let started = Instant::now();
    let fetched = fan_out(client, upstreams.as_slice()).await;
    let answer = Aggregate {
        upstreams: fetched.into_iter().map(Report::from).collect(),
        elapsed_ms: fan_out::millis(started.elapsed()),
    };
    Ok(Json(answer).into_response())
}

fn shared_client() -> Result<&'static Client, WebError> {
    fan_out::client().map_err(|e| {
        WebError::Internal(anyhow::Error::new(e).context("cannot build the HTTP client"))
    })
}
