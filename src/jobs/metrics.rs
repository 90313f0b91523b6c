//! In-process job counters and latency histograms, for the operations pages and benchmarks.
//!
//! Plain atomics: recording is a few relaxed increments on the hot path, and a snapshot is
//! consistent enough for dashboards (each number is exact; they are not taken at one instant).

use std::{
    sync::{
        LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;

pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the histogram buckets, in microseconds (the last bucket is open).
const BUCKETS_US: [u64; 16] = [
    250,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    5_000_000,
    30_000_000,
    300_000_000,
    u64::MAX,
];

pub(crate) struct Histogram {
    buckets: [AtomicU64; 16],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, value: Duration) {
        let us = value.as_micros().min(u64::MAX as u128) as u64;
        let bucket = BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BUCKETS_US.len() - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let quantile = |q: f64| -> Option<u64> {
            let target = (count as f64 * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            counts.iter().zip(BUCKETS_US).find_map(|(n, bound)| {
                seen += n;
                (seen >= target).then_some(bound)
            })
        };
        HistogramSnapshot {
            count,
            mean_us: self
                .sum_us
                .load(Ordering::Relaxed)
                .checked_div(count)
                .unwrap_or(0),
            p50_le_us: if count > 0 { quantile(0.5) } else { None },
            p99_le_us: if count > 0 { quantile(0.99) } else { None },
        }
    }
}

#[derive(Default)]
pub(crate) struct Metrics {
    pub enqueued: Counter,
    pub started: Counter,
    pub completed: Counter,
    pub retried: Counter,
    pub discarded: Counter,
    pub cancelled: Counter,
    pub snoozed: Counter,
    pub rescued: Counter,
    /// Outcomes this process reached but could not write: the job's lease was lost (this
    /// worker stalled past it), and the job was rescued or taken by another worker.
    pub fenced: Counter,
    pub queue_wait: Histogram,
    pub run_time: Histogram,
}

/// A histogram read out: count, mean and the bucket bounds the median and p99 fall under.
#[derive(Debug, Clone, Serialize)]
pub struct HistogramSnapshot {
    pub count: u64,
    pub mean_us: u64,
    pub p50_le_us: Option<u64>,
    pub p99_le_us: Option<u64>,
}

/// The job counters of this process since it started.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsSnapshot {
    pub enqueued: u64,
    pub started: u64,
    pub completed: u64,
    pub retried: u64,
    pub discarded: u64,
    pub cancelled: u64,
    pub snoozed: u64,
    pub rescued: u64,
    /// Outcomes refused because this worker had lost the job's lease (see `docs/jobs.md`).
    pub fenced: u64,
    pub queue_wait: HistogramSnapshot,
    pub run_time: HistogramSnapshot,
}

/// Reads this process's job metrics.
pub fn snapshot() -> MetricsSnapshot {
    let m = &*METRICS;
    MetricsSnapshot {
        enqueued: m.enqueued.get(),
        started: m.started.get(),
        completed: m.completed.get(),
        retried: m.retried.get(),
        discarded: m.discarded.get(),
        cancelled: m.cancelled.get(),
        snoozed: m.snoozed.get(),
        rescued: m.rescued.get(),
        fenced: m.fenced.get(),
        queue_wait: m.queue_wait.snapshot(),
        run_time: m.run_time.snapshot(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_fall_in_the_right_buckets() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(800));
        }
        h.record(Duration::from_millis(40));
        h.record(Duration::from_millis(40));
        let s = h.snapshot();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_le_us, Some(1_000));
        assert_eq!(s.p99_le_us, Some(50_000));
    }
}
