//! Gateway app: one request fans out to several upstream HTTP services at once.
//!
//! * `GET /api/aggregate` (signed-in users): `GET`s every upstream of `HEARTH_UPSTREAMS`
//!   concurrently and answers `200` with
//!   `{"upstreams":[{"name","ok","status","elapsed_ms","data","error"}...],"elapsed_ms"}` —
//!   each upstream's JSON or why there is none. A slow or failing upstream costs at most its own
//!   timeout and never fails the whole: the answer takes as long as the slowest upstream, not
//!   the sum. With no upstreams configured the list is empty.
//! * W3 of the benchmark protocol, `GET /bench/gather` (with the bench routes): three `GET`s
//!   of `<HEARTH_BENCH_UPSTREAM_URL>/upstream/{1,2,3}`, answered as
//!   `{"count":3,"results":[<the three bodies>]}`, or `502` if one failed.
//!
//! Both go through [`fan_out`] on one shared keep-alive client.

mod fan_out;
mod upstreams;

use std::{fmt, sync::Arc, time::Instant};

use axum::{
    Extension, Json,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use url::Url;

pub use fan_out::{FetchError, Fetched, fan_out};
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

fn shared_client() -> Result<&'static reqwest::Client, WebError> {
    fan_out::client().map_err(|e| {
        WebError::Internal(anyhow::Error::new(e).context("cannot build the HTTP client"))
    })
}

/// The W3 route, for the bench routes: its three upstreams, under `base`, are fixed at
/// start-up.
pub fn bench_routes(base: &Url) -> Routes {
    let upstreams = Arc::new(bench_upstreams(base));
    Routes::new().route("/bench/gather", get(move || gather(Arc::clone(&upstreams))))
}

/// The protocol's `/upstream/1`, `/2` and `/3` under `base`, with the Django peer's 10 s
/// client timeout.
fn bench_upstreams(base: &Url) -> Upstreams {
    let upstreams = ["1", "2", "3"]
        .into_iter()
        .map(|n| {
            let mut url = base.clone();
            url.path_segments_mut()
                .expect("http(s) URLs have a path")
                .pop_if_empty()
                .extend(["upstream", n]);
            Upstream {
                name: n.to_owned(),
                url,
                timeout: std::time::Duration::from_secs(10),
            }
        })
        .collect();
    Upstreams::from_vec(upstreams)
}

#[derive(Serialize)]
struct Gathered {
    count: usize,
    results: Vec<serde_json::Value>,
}

/// W3: the three bodies in order, or `502` naming the first upstream that failed (the peer
/// answers 500 there; either way the load client counts a non-2xx answer).
#[tracing::instrument(skip_all)]
async fn gather(upstreams: Arc<Upstreams>) -> Result<Response, WebError> {
    let client = shared_client()?;
    let mut results = Vec::with_capacity(upstreams.as_slice().len());
    for fetched in fan_out(client, upstreams.as_slice()).await {
        match fetched.outcome {
            Ok(data) => results.push(data),
            Err(e) => {
                let message = format!("upstream {}: {e}", fetched.name);
                let body = serde_json::json!({ "error": { "status": 502, "message": message } });
                return Ok((StatusCode::BAD_GATEWAY, Json(body)).into_response());
            }
        }
    }
    let answer = Gathered {
        count: results.len(),
        results,
    };
    Ok(Json(answer).into_response())
}
