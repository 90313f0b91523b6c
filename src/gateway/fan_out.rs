//! Concurrent `GET`s to several upstreams, each bounded by its own timeout and a body limit.
//!
//! [`fan_out`] polls every request in the caller's task: the whole takes as long as the slowest
//! upstream (at most its timeout), and if the caller goes away (the client disconnected) every
//! request still in flight is dropped with it. A failure is a value in the result, never an
//! error of the whole: callers decide what a failed upstream means for their answer.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{self, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use rustls_platform_verifier::BuilderVerifierExt;
use serde::Serialize;
use serde_json::value::RawValue;

use super::upstreams::Upstream;

/// The largest upstream body read. A larger one is an error, not a growing buffer.
pub const MAX_BODY: usize = 1 << 20;

/// The process's one HTTP client: its pool keeps connections to upstreams alive between
/// requests, so a busy gateway does not pay a TCP (and TLS) handshake per upstream call.
static CLIENT: OnceLock<Client> = OnceLock::new();

/// The shared client, built on first use.
pub fn client() -> Result<&'static Client, ClientError> {
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    let client = Client::new()?;
    // Two first requests may race to build one; either copy is as good as the other.
    Ok(CLIENT.get_or_init(|| client))
}

/// A keep-alive HTTP/1.1 client for upstream `GET`s, over TCP or TLS.
///
/// hyper-util's pooled client, driven directly rather than through reqwest: each upstream's
/// request is prebuilt at start-up ([`Upstream`] holds its `Uri` and headers), and a call goes
/// straight to the pool. reqwest would re-convert the URL, clone the headers three times (its
/// redirect and retry layers keep copies) and box two more futures on every call (#36).
/// Nothing here follows a redirect (the configured URL is the contract: a 3xx is reported) or
/// reads a proxy from the environment (upstreams are called where they are configured).
/// Certificates are checked against the system's roots, as reqwest's rustls client does.
pub struct Client(legacy::Client<HttpsConnector<HttpConnector>, Empty<Bytes>>);

/// Why the client could not be built: the system's certificate roots did not load.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS for upstream calls: {0}")]
pub struct ClientError(#[from] rustls::Error);

impl Client {
    fn new() -> Result<Self, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_platform_verifier()?
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        // The TLS connector above it takes https:// URLs; this one only opens the socket.
        tcp.enforce_http(false);
        // A request goes out in one write; no Nagle delay waiting for more.
        tcp.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = legacy::Client::builder(TokioExecutor::new())
            // Reaps connections idle past the pool's timeout (90 s) rather than on next use.
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Self(client))
    }
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
pub async fn fan_out<'a>(client: &Client, upstreams: &'a [Upstream]) -> Vec<Fetched<'a>> {
    let started = Instant::now();
    futures::future::join_all(
        upstreams
            .iter()
            .map(|upstream| fetch_within(client, upstream, started)),
    )
    .await
}

async fn fetch_within<'a>(
    client: &Client,
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
    client: &Client,
    upstream: &Upstream,
    status: &mut Option<u16>,
) -> Result<Box<RawValue>, FetchError> {
    let response = client
        .0
        .request(upstream.request())
        .await
        .map_err(|e| transport_error(upstream, &e))?;
    *status = Some(response.status().as_u16());
    if !response.status().is_success() {
        return Err(FetchError::Status(response.status().as_u16()));
    }
    // The `Content-Length`, when the upstream sent one.
    if response
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n > MAX_BODY as u64)
    {
        return Err(FetchError::TooLarge);
    }
    let mut body = response.into_body();
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            tracing::warn!(upstream = upstream.name(), error = ?e, "upstream body failed");
            FetchError::Request
        })?;
        // Trailers, if any, are no part of the JSON.
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if read.len() + chunk.len() > MAX_BODY {
            return Err(FetchError::TooLarge);
        }
        read.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&read).map_err(|_| FetchError::NotJson)
}

/// Sorts a client error into what the caller may see, logging the detail (which names no URL:
/// one may hold a password).
fn transport_error(upstream: &Upstream, e: &legacy::Error) -> FetchError {
    tracing::warn!(upstream = upstream.name(), error = ?e, "upstream request failed");
    if !e.is_connect() {
        return FetchError::Request;
    }
    let mut source = std::error::Error::source(e);
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
