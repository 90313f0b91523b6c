//! Concurrent `GET`s to several upstreams, each bounded by its own timeout and a body limit.
//!
//! [`fan_out`] polls every request in the caller's task: the whole takes as long as the slowest
//! upstream (at most its timeout), and if the caller goes away (the client disconnected) every
//! request still in flight is dropped with it. A failure is a value in the result, never an
//! error of the whole: callers decide what a failed upstream means for their answer.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::value::RawValue;

use super::upstreams::Upstream;

/// The largest upstream body read. A larger one is an error, not a growing buffer.
pub const MAX_BODY: usize = 1 << 20;

/// The process's one HTTP client: its pool keeps connections to upstreams alive between
/// requests, so a busy gateway does not pay a TCP (and TLS) handshake per upstream call.
static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();

/// The shared client, built on first use.
pub fn client() -> Result<&'static reqwest::Client, reqwest::Error> {
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    let client = reqwest::Client::builder()
        .user_agent(concat!("hearth/", env!("CARGO_PKG_VERSION")))
        // The configured URL is the contract: a redirect is reported, not followed to a
        // host nobody configured.
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    // Two first requests may race to build one; either copy is as good as the other.
    Ok(CLIENT.get_or_init(|| client))
}

/// Why one upstream gave no data. The messages are shown to clients as they are, so they
/// say what happened without internal detail (that goes to the log).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("timeout after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("connection refused")]
    Refused,
    #[error("cannot connect")]
    Connect,
    #[error("request failed")]
    Request,
    #[error("upstream answered {0}")]
    Status(u16),
    #[error("body larger than 1 MiB")]
    TooLarge,
    #[error("not JSON")]
    NotJson,
}

/// What one upstream gave.
#[derive(Debug)]
pub struct Fetched<'a> {
    pub name: &'a str,
    /// The HTTP status, when an answer's head arrived.
    pub status: Option<u16>,
    /// From the start of the fan-out to this upstream's outcome.
    pub elapsed: Duration,
    /// The body as the upstream wrote it, checked to be one JSON value: callers put it in their
    /// answer verbatim, without parsing it into a tree and encoding it again (#36).
    pub outcome: Result<Box<RawValue>, FetchError>,
}

/// `GET`s every upstream at once and waits for all of them; results in `upstreams`' order.
pub async fn fan_out<'a>(client: &reqwest::Client, upstreams: &'a [Upstream]) -> Vec<Fetched<'a>> {
    let started = Instant::now();
    futures::future::join_all(
        upstreams
            .iter()
            .map(|upstream| fetch_within(client, upstream, started)),
    )
    .await
}

async fn fetch_within<'a>(
    client: &reqwest::Client,
    upstream: &'a Upstream,
    started: Instant,
) -> Fetched<'a> {
    let mut status = None;
    let outcome = tokio::time::timeout(upstream.timeout(), fetch(client, upstream, &mut status))
        .await
        .unwrap_or(Err(FetchError::Timeout(upstream.timeout())));
    Fetched {
        name: upstream.name(),
        status,
        elapsed: started.elapsed(),
        outcome,
    }
}

/// One exchange. `status` is written as soon as the head arrives, so that it survives a
/// timeout while the body is read.
async fn fetch(
    client: &reqwest::Client,
    upstream: &Upstream,
    status: &mut Option<u16>,
) -> Result<Box<RawValue>, FetchError> {
    let mut response = client
        .get(upstream.url().clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| transport_error(upstream, e))?;
    *status = Some(response.status().as_u16());
    if !response.status().is_success() {
        return Err(FetchError::Status(response.status().as_u16()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY as u64)
    {
        return Err(FetchError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(upstream, e))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|_| FetchError::NotJson)
}

/// Sorts a client error into what the caller may see, logging the detail (without the URL,
/// which may hold a password).
fn transport_error(upstream: &Upstream, e: reqwest::Error) -> FetchError {
    let e = e.without_url();
    tracing::warn!(upstream = upstream.name(), error = ?e, "upstream request failed");
    if !e.is_connect() {
        return FetchError::Request;
    }
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return FetchError::Refused;
        }
        source = cause.source();
    }
    FetchError::Connect
}

/// One upstream's entry in a JSON answer: `ok`, with `data` or with `error`.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub name: &'a str,
    pub ok: bool,
    pub status: Option<u16>,
    pub elapsed_ms: u64,
    pub data: Option<Box<RawValue>>,
    pub error: Option<String>,
}

impl<'a> From<Fetched<'a>> for Report<'a> {
    fn from(fetched: Fetched<'a>) -> Self {
        let (data, error) = match fetched.outcome {
            Ok(data) => (Some(data), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Self {
            name: fetched.name,
            ok: error.is_none(),
            status: fetched.status,
            elapsed_ms: millis(fetched.elapsed),
            data,
            error,
        }
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
