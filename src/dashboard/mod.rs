//! Dashboard app: `/dashboard`, live charts of this instance — requests per second, latency
//! p50/p99, open WebSockets and event streams, jobs completed and failed per second, queue
//! depth, cache hit ratio. For administrators only: it shows the server's internals (load,
//! latency, queues), which tell an attacker when and how hard to push.
//!
//! A sampler task reads the counters once a second (the same ones `/metrics` exports; no
//! query but the queue depth) and keeps the last 15 minutes in memory. It starts with the
//! first dashboard visit and lives as long as the process. Pages get the history, then one
//! sample a second, over a server-sent event stream that ends when the server shuts down.

mod sampler;

use std::{convert::Infallible, time::Duration};

use askama::Template;
use axum::{
    extract::State,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures::{StreamExt, stream};
use tokio::sync::broadcast::error::RecvError;

use crate::web::{AppState, Layout, WebError, auth::RequireAdmin, render, sse::StreamSlot};

pub use sampler::Sample;

use crate::{
    App, Routes,
    web::templates::{NavLink, Show},
};

/// The dashboard app.
pub fn app() -> App {
    App::new("dashboard")
        .routes(|_| Ok(routes()))
        .nav(|_| Ok(NavLink::new("Dashboard", "/dashboard", Show::Admins).tool()))
}

fn routes() -> Routes {
    Routes::new()
        .route("/dashboard", get(page))
        .route("/dashboard/stream", get(events))
}

#[derive(Template)]
#[template(path = "dashboard/page.html")]
struct Page {
    layout: Layout,
    instance: String,
}

async fn page(
    State(state): State<AppState>,
    _admin: RequireAdmin,
    layout: Layout,
) -> Result<Response, WebError> {
    sampler::get_or_start(&state);
    Ok(render(&Page {
        layout,
        instance: state.channels.instance().to_owned(),
    })?
    .into_response())
}

/// `history` (the samples kept so far) first, then a `sample` event every second.
async fn events(State(state): State<AppState>, _admin: RequireAdmin, slot: StreamSlot) -> Response {
    let sampler = sampler::get_or_start(&state);
    let (history, live) = sampler.subscribe();
    let first = Event::default()
        .event("history")
        .json_data(&history)
        .unwrap_or_else(|_| Event::default().comment("history unavailable"));
    // A page that falls behind skips samples (the channel reports a lag) rather than
    // holding the server back.
    let live = stream::unfold(live, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(sample) => return Some((sample, rx)),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    })
    .filter_map(|sample| async move { Event::default().event("sample").json_data(&*sample).ok() });
    let closing = state.channels.closing();
    let stream = stream::once(async { first })
        .chain(live)
        .map(move |event| {
            // Moved in: the stream holds its slot until it is dropped.
            let _held = &slot;
            Ok::<_, Infallible>(event)
        })
        .take_until(async move { closing.cancelled_owned().await });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
