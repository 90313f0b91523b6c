//! The once-a-second sampler behind the dashboard, and its 15 minutes of history.
//!
//! One per process: the counters it reads (HTTP, WebSockets, event streams, jobs) are the
//! process's own. It reads the queue depth and the cache through the state of the latest page
//! that asked for it — in a server there is one state; a test process builds several.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use serde::Serialize;
use sqlx::PgPool;
use tokio::{sync::broadcast, task::JoinHandle};

use crate::{
    cache::Cache,
    channels::ChannelLayer,
    jobs::metrics as job_metrics,
    web::{AppState, metrics, sse, ws},
};

/// 15 minutes of one-second samples.
const KEEP: usize = 900;

/// One second of this instance.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Unix milliseconds at the end of the second.
    pub t: i64,
    pub requests_per_s: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub websockets: i64,
    pub event_streams: i64,
    pub jobs_completed_per_s: u64,
    /// Attempts that failed (retried or discarded) in the second.
    pub jobs_failed_per_s: u64,
    /// Jobs due and waiting for a worker, all queues and instances.
    pub queue_depth: Option<i64>,
    /// Hits over lookups in the second; `None` when nothing was looked up.
    pub cache_hit_ratio: Option<f64>,
    /// Channel-layer messages this instance published in the second.
    pub messages_published_per_s: u64,
    /// Copies of channel-layer messages queued to this instance's connections in the second.
    pub deliveries_per_s: u64,
}

pub(super) struct Sampler {
    history: Mutex<VecDeque<Arc<Sample>>>,
    live: broadcast::Sender<Arc<Sample>>,
    source: Mutex<(PgPool, Cache, ChannelLayer)>,
    /// The sampling task. Started again if it has ended: a task dies with the runtime that
    /// spawned it, and a test process runs one runtime per test.
    task: Mutex<Option<JoinHandle<()>>>,
}

static SAMPLER: OnceLock<Arc<Sampler>> = OnceLock::new();

/// The process's sampler, started on first use.
pub(super) fn get_or_start(state: &AppState) -> Arc<Sampler> {
    let sampler = SAMPLER.get_or_init(|| {
        Arc::new(Sampler {
            history: Mutex::new(VecDeque::with_capacity(KEEP)),
            live: broadcast::channel(16).0,
            source: Mutex::new(source(state)),
            task: Mutex::new(None),
        })
    });
    *lock(&sampler.source) = source(state);
    let mut task = lock(&sampler.task);
    if task.as_ref().is_none_or(JoinHandle::is_finished) {
        *task = Some(tokio::spawn(run(sampler.clone())));
    }
    sampler.clone()
}

fn source(state: &AppState) -> (PgPool, Cache, ChannelLayer) {
    (
        state.db.clone(),
        state.cache.clone(),
        state.channels.clone(),
    )
}

/// A std `Mutex` is enough: it is held for a copy or a push, never across an `await`.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Sampler {
    /// The history so far, and a receiver of the samples to come.
    pub(super) fn subscribe(&self) -> (Vec<Arc<Sample>>, broadcast::Receiver<Arc<Sample>>) {
        let history = lock(&self.history);
        let receiver = self.live.subscribe();
        (history.iter().cloned().collect(), receiver)
    }
}

/// The counters a sample is the difference of.
struct Totals {
    http: metrics::HttpCounters,
    completed: u64,
    failed: u64,
    lookups: (u64, u64),
    published: u64,
    deliveries: u64,
}

fn totals(cache: &Cache, channels: &ChannelLayer) -> Totals {
    let jobs = job_metrics::snapshot();
    let (published, deliveries) = channels.message_counts();
    Totals {
        http: metrics::http(),
        completed: jobs.completed,
        failed: jobs.retried + jobs.discarded,
        lookups: cache.lookups(),
        published,
        deliveries,
    }
}

async fn run(sampler: Arc<Sampler>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (_, cache, channels) = lock(&sampler.source).clone();
    let mut before = totals(&cache, &channels);
    loop {
        tick.tick().await;
        let (pool, cache, channels) = lock(&sampler.source).clone();
        let now = totals(&cache, &channels);
        // Bounded, so that a slow or unreachable database delays no sample.
        let depth = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM jobs WHERE state = 'available' AND run_at <= now()"#
        )
        .fetch_one(&pool);
        let queue_depth = match tokio::time::timeout(Duration::from_millis(500), depth).await {
            Ok(Ok(n)) => Some(n),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot read the queue depth");
                None
            }
            Err(_) => None,
        };
        let second: Vec<u64> = now
            .http
            .buckets
            .iter()
            .zip(&before.http.buckets)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let hits = now.lookups.0.saturating_sub(before.lookups.0);
        let misses = now.lookups.1.saturating_sub(before.lookups.1);
        let sample = Arc::new(Sample {
            t: time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
            requests_per_s: now.http.requests.saturating_sub(before.http.requests),
            p50_ms: metrics::quantile(&second, 0.5),
            p99_ms: metrics::quantile(&second, 0.99),
            websockets: ws::stats().open,
            event_streams: sse::open_streams(),
            jobs_completed_per_s: now.completed.saturating_sub(before.completed),
            jobs_failed_per_s: now.failed.saturating_sub(before.failed),
            queue_depth,
            cache_hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            messages_published_per_s: now.published.saturating_sub(before.published),
            deliveries_per_s: now.deliveries.saturating_sub(before.deliveries),
        });
        before = now;
        {
            let mut history = lock(&sampler.history);
            if history.len() == KEEP {
                history.pop_front();
            }
            history.push_back(sample.clone());
        }
        // An error only means that nobody is watching.
        let _ = sampler.live.send(sample);
    }
}
