//! Metrics of this process: the HTTP counters this module keeps (through [`track`]), and
//! `/metrics`, which adds the job, channel-layer, password hashing, cache and pool figures in
//! the Prometheus text format.
//!
//! `/metrics` answers scrapers that send `Authorization: Bearer <HEARTH_METRICS_TOKEN>` and
//! signed-in administrators; anyone else gets 401 or 403. The live dashboard samples the same
//! counters ([`http`]), so the two never disagree.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    time::Instant,
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

use super::{AppState, WebError, auth::CurrentUser};
use crate::{
    db::replicas::{ReplicaState, ReplicaStatus},
    jobs::metrics as job_metrics,
};

/// Upper bounds of the request-duration buckets, in seconds.
const BUCKETS: [f64; 19] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.003, 0.005, 0.007_5, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

struct Http {
    in_flight: AtomicI64,
    /// Responses by status class: 1xx..5xx at indexes 0..4.
    by_class: [AtomicU64; 5],
    /// Non-cumulative counts per bucket, the last one for "slower than every bound".
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

static HTTP: Http = Http {
    in_flight: AtomicI64::new(0),
    by_class: [const { AtomicU64::new(0) }; 5],
    buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
    sum_us: AtomicU64::new(0),
};

/// Counts a request in flight until dropped: a request whose client went away is dropped
/// mid-way, and must leave the gauge all the same.
struct InFlight;

impl InFlight {
    fn count() -> Self {
        HTTP.in_flight.fetch_add(1, Relaxed);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        HTTP.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Middleware: counts every request, its status class and its duration.
pub async fn track(request: Request, next: Next) -> Response {
    let in_flight = InFlight::count();
    let started = Instant::now();
    let response = next.run(request).await;
    drop(in_flight);
    record(response.status(), started.elapsed());
    response
}

/// Counts one answered request: its status class and how long it took.
pub fn record(status: axum::http::StatusCode, elapsed: std::time::Duration) {
    let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
    HTTP.by_class[class].fetch_add(1, Relaxed);
    let seconds = elapsed.as_secs_f64();
    let bucket = BUCKETS
        .iter()
        .position(|&bound| seconds <= bound)
        .unwrap_or(BUCKETS.len());
    HTTP.buckets[bucket].fetch_add(1, Relaxed);
    HTTP.sum_us
        .fetch_add(elapsed.as_micros().min(u64::MAX as u128) as u64, Relaxed);
}

/// A copy of the HTTP counters.
#[derive(Debug, Clone, Default)]
pub struct HttpCounters {
    pub requests: u64,
    pub server_errors: u64,
    pub in_flight: i64,
    /// Non-cumulative counts per duration bucket (see [`quantile`]).
    pub buckets: Vec<u64>,
}

/// The HTTP counters now.
pub fn http() -> HttpCounters {
    let by_class: Vec<u64> = HTTP.by_class.iter().map(|c| c.load(Relaxed)).collect();
    HttpCounters {
        requests: by_class.iter().sum(),
        server_errors: by_class[4],
        in_flight: HTTP.in_flight.load(Relaxed),
        buckets: HTTP.buckets.iter().map(|c| c.load(Relaxed)).collect(),
    }
}

/// The `q` quantile (0..1) in milliseconds of the requests counted in `buckets` (for example
/// the difference of two snapshots: the requests of one second), as the upper bound of the
/// bucket it falls in (slower than the last bound reads as the last bound, 10 s); `None`
/// without requests.
pub fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let count: u64 = buckets.iter().sum();
    if count == 0 {
        return None;
    }
    let target = (count as f64 * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= target {
            let bound = BUCKETS.get(i).unwrap_or(&BUCKETS[BUCKETS.len() - 1]);
            return Some(bound * 1000.0);
        }
    }
    None
}

/// `GET /metrics`.
pub async fn endpoint(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    authorize(&state, user.as_ref().map(|u| u.is_admin), &headers)?;
    let body = render(&state).await?;
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

fn authorize(
    state: &AppState,
    is_admin: Option<bool>,
    headers: &HeaderMap,
) -> Result<(), WebError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let (Some(given), Some(expected)) = (bearer, &state.config.http.metrics_token) {
        // Compare digests, not the strings: equal-length digests take the same time to
        // compare whatever the token, so timing does not leak how much of it was right.
        if Sha256::digest(given.as_bytes()) == Sha256::digest(expected.as_bytes()) {
            return Ok(());
        }
        return Err(WebError::Unauthorized);
    }
    match is_admin {
        Some(true) => Ok(()),
        Some(false) => Err(WebError::Forbidden(
            "Metrics are for administrators.".into(),
        )),
        None => Err(WebError::Unauthorized),
    }
}

/// One metric family: its `# HELP` and `# TYPE` lines, then its samples.
fn family<L: AsRef<str>>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: &[(L, String)],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let labels = labels.as_ref();
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Every metric of this process, in the Prometheus text format.
pub async fn render(state: &AppState) -> Result<String, WebError> {
    let mut out = String::with_capacity(8192);
    let http = http();
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let by_class: Vec<(String, String)> = classes
        .iter()
        .zip(HTTP.by_class.iter())
        .map(|(c, n)| (format!("class=\"{c}\""), n.load(Relaxed).to_string()))
        .collect();
    family(
        &mut out,
        "hearth_http_requests_total",
        "counter",
        "HTTP responses by status class.",
        &by_class,
    );
    family(
        &mut out,
        "hearth_http_requests_in_flight",
        "gauge",
        "HTTP requests being served.",
        &[("", http.in_flight.to_string())],
    );
    let _ = writeln!(
        out,
        "# HELP hearth_http_request_duration_seconds Time to the response head.\n# TYPE hearth_http_request_duration_seconds histogram"
    );
    let mut cumulative = 0;
    for (i, n) in http.buckets.iter().enumerate() {
        cumulative += n;
        let le = BUCKETS
            .get(i)
            .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
        let _ = writeln!(
            out,
            "hearth_http_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "hearth_http_request_duration_seconds_sum {}\nhearth_http_request_duration_seconds_count {cumulative}",
        HTTP.sum_us.load(Relaxed) as f64 / 1e6
    );

    let jobs = job_metrics::snapshot();
    let events = [
        ("enqueued", jobs.enqueued),
        ("started", jobs.started),
        ("completed", jobs.completed),
        ("retried", jobs.retried),
        ("discarded", jobs.discarded),
        ("cancelled", jobs.cancelled),
        ("snoozed", jobs.snoozed),
        ("rescued", jobs.rescued),
        ("fenced", jobs.fenced),
    ];
    let samples: Vec<(String, String)> = events
        .iter()
        .map(|(e, n)| (format!("event=\"{e}\""), n.to_string()))
        .collect();
    family(
        &mut out,
        "hearth_jobs_total",
        "counter",
        "Job events in this process.",
        &samples,
    );
    let depth = sqlx::query!(
        r#"SELECT queue AS "queue!", state AS "state!", count(*) AS "n!"
             FROM job_statuses WHERE state IN ('available', 'scheduled', 'running')
            GROUP BY 1, 2 ORDER BY 1, 2"#
    )
    .fetch_all(&state.db)
    .await?;
    let samples: Vec<(String, String)> = depth
        .iter()
        .map(|r| {
            let labels = format!("queue=\"{}\",state=\"{}\"", escape(&r.queue), r.state);
            (labels, r.n.to_string())
        })
        .collect();
    family(
        &mut out,
        "hearth_jobs_waiting",
        "gauge",
        "Jobs not finished, by queue and state (all instances).",
        &samples,
    );

    let channels = state.channels.stats().await;
    let ws = super::ws::stats();
    for (name, kind, help, value) in [
        (
            "hearth_ws_open",
            "gauge",
            "Open WebSockets.",
            ws.open.to_string(),
        ),
        (
            "hearth_sse_open",
            "gauge",
            "Open event streams.",
            super::sse::open_streams().to_string(),
        ),
        (
            "hearth_channel_groups",
            "gauge",
            "Groups with a member on this instance.",
            channels.groups.to_string(),
        ),
        (
            "hearth_channel_messages_published_total",
            "counter",
            "Messages this instance wrote to the layer.",
            channels.messages_published.to_string(),
        ),
        (
            "hearth_channel_messages_received_total",
            "counter",
            "Messages read that had a local member.",
            channels.messages_received.to_string(),
        ),
        (
            "hearth_channel_deliveries_total",
            "counter",
            "Copies queued to local connections.",
            channels.deliveries.to_string(),
        ),
        (
            "hearth_channel_slow_consumers_dropped_total",
            "counter",
            "Connections dropped for a full send queue.",
            channels.slow_consumers_dropped.to_string(),
        ),
        (
            "hearth_channel_listener_reconnects_total",
            "counter",
            "Times the LISTEN connection was re-established.",
            channels.listener_reconnects.to_string(),
        ),
        (
            "hearth_channel_notification_queue_usage",
            "gauge",
            "Fraction of the server's NOTIFY queue in use.",
            channels.notification_queue_usage.unwrap_or(0.0).to_string(),
        ),
    ] {
        family(&mut out, name, kind, help, &[("", value)]);
    }

    let hashing = state.hasher.stats();
    for (name, kind, help, value) in [
        (
            "hearth_password_hashes_total",
            "counter",
            "argon2 computations (password hashes and checks) started by this process.",
            hashing.computed,
        ),
        (
            "hearth_password_hashes_running",
            "gauge",
            "argon2 computations running now.",
            hashing.running,
        ),
        (
            "hearth_password_hashes_running_peak",
            "gauge",
            "The most argon2 computations that ran at once since start.",
            hashing.peak,
        ),
        (
            "hearth_password_hash_refused_total",
            "counter",
            "Requests refused with 503 because the password hashing line was full.",
            hashing.refused,
        ),
    ] {
        family(&mut out, name, kind, help, &[("", value.to_string())]);
    }

    let cache = state
        .cache
        .stats()
        .await
        .map_err(|e| WebError::Internal(e.into()))?;
    for (name, kind, help, local, shared) in [
        (
            "hearth_cache_hits_total",
            "counter",
            "Cache hits by tier.",
            cache.local_hits.to_string(),
            cache.shared_hits.to_string(),
        ),
        (
            "hearth_cache_misses_total",
            "counter",
            "Cache misses by tier.",
            cache.local_misses.to_string(),
            cache.shared_misses.to_string(),
        ),
        (
            "hearth_cache_evictions_total",
            "counter",
            "Entries evicted for the size bound, by tier.",
            cache.local_evictions.to_string(),
            cache.shared_evictions.to_string(),
        ),
        (
            "hearth_cache_entries",
            "gauge",
            "Entries held, by tier.",
            cache.local_entries.to_string(),
            cache.shared_entries.to_string(),
        ),
        (
            "hearth_cache_bytes",
            "gauge",
            "Bytes held, by tier.",
            cache.local_bytes.to_string(),
            cache.shared_bytes.to_string(),
        ),
    ] {
        family(
            &mut out,
            name,
            kind,
            help,
            &[("tier=\"local\"", local), ("tier=\"shared\"", shared)],
        );
    }

    let size = state.db.size();
    let idle = state.db.num_idle() as u32;
    family(
        &mut out,
        "hearth_db_pool_connections",
        "gauge",
        "Pool connections by state.",
        &[
            ("state=\"idle\"", idle.to_string()),
            ("state=\"in_use\"", size.saturating_sub(idle).to_string()),
        ],
    );
    family(
        &mut out,
        "hearth_db_pool_max_connections",
        "gauge",
        "The pool's maximum.",
        &[("", state.config.db.db_max_connections.to_string())],
    );
    replicas(&mut out, state);
    Ok(out)
}

/// The read replicas' figures, when any is configured: their state and lag as the last check
/// saw them (`db::replicas`), the reads each took, and the lag-tolerant reads that went to the
/// primary instead, by reason.
fn replicas(out: &mut String, state: &AppState) {
    let statuses = state.replicas.statuses();
    if statuses.is_empty() {
        return;
    }
    let label = |name: &str| format!("replica=\"{}\"", escape(name));
    let per_replica = |value: &dyn Fn(&ReplicaStatus) -> Option<String>| {
        statuses
            .iter()
            .filter_map(|status| Some((label(&status.name), value(status)?)))
            .collect::<Vec<_>>()
    };
    let up = per_replica(&|s| {
        let up = matches!(s.state, ReplicaState::InUse | ReplicaState::Lagging);
        Some(u8::from(up).to_string())
    });
    let in_use = per_replica(&|s| Some(u8::from(s.state.in_use()).to_string()));
    let seconds = per_replica(&|s| s.lag.map(|lag| lag.as_secs_f64().to_string()));
    let bytes = per_replica(&|s| s.lag_bytes.map(|bytes| bytes.to_string()));
    let reads = per_replica(&|s| Some(s.reads.to_string()));
    for (name, kind, help, samples) in [
        (
            "hearth_db_replica_up",
            "gauge",
            "1 when the read replica answers as a standby of the primary's cluster.",
            up,
        ),
        (
            "hearth_db_replica_in_use",
            "gauge",
            "1 when the read replica takes reads (up and within HEARTH_READ_MAX_LAG).",
            in_use,
        ),
        (
            "hearth_db_replica_lag_seconds",
            "gauge",
            "How long ago the primary wrote the oldest WAL the replica has not replayed (0: caught up).",
            seconds,
        ),
        (
            "hearth_db_replica_lag_bytes",
            "gauge",
            "Bytes of WAL the primary has written that the replica has not replayed.",
            bytes,
        ),
        (
            "hearth_db_replica_reads_total",
            "counter",
            "Lag-tolerant reads the replica took.",
            reads,
        ),
    ] {
        family(out, name, kind, help, &samples);
    }
    let primary = state.replicas.primary_reads();
    family(
        out,
        "hearth_db_primary_reads_total",
        "counter",
        "Lag-tolerant reads that went to the primary, by reason.",
        &[
            ("reason=\"own_write\"", primary.own_write.to_string()),
            ("reason=\"cache_fill\"", primary.cache_fill.to_string()),
            ("reason=\"no_replica\"", primary.no_replica.to_string()),
        ],
    );
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_bucket_bounds() {
        let mut buckets = vec![0; BUCKETS.len() + 1];
        buckets[2] = 90; // <= 1 ms
        buckets[9] = 10; // <= 25 ms
        assert_eq!(quantile(&buckets, 0.5), Some(1.0));
        assert_eq!(quantile(&buckets, 0.99), Some(25.0));
        assert_eq!(quantile(&vec![0; BUCKETS.len() + 1], 0.5), None);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
