//! Counters of one channel layer, read by the operations pages and `/api` endpoints.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

#[derive(Default)]
pub(super) struct Stats {
    published: AtomicU64,
    received: AtomicU64,
    delivered: AtomicU64,
    dropped_slow: AtomicU64,
    listener_reconnects: AtomicU64,
    gaps_abandoned: AtomicU64,
}

/// A point-in-time copy of the layer's counters.
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    /// Open subscriptions (WebSocket connections and SSE streams) on this instance.
    pub connections: usize,
    /// Groups with at least one member on this instance.
    pub groups: usize,
    /// Messages this instance wrote to the layer.
    pub messages_published: u64,
    /// Messages this instance read from the layer that had a local member.
    pub messages_received: u64,
    /// Copies queued to local connections (one message to a group of 100 counts 100).
    pub deliveries: u64,
    /// Connections dropped because their send queue was full.
    pub slow_consumers_dropped: u64,
    /// Times the LISTEN connection was lost and re-established.
    pub listener_reconnects: u64,
    /// Missing message ids given up on (their transactions rolled back).
    pub gaps_abandoned: u64,
    /// `pg_notification_queue_usage()`: the fraction of the server's NOTIFY queue in use.
    pub notification_queue_usage: Option<f64>,
}

impl Stats {
    pub(super) fn published(&self, n: u64) {
        self.published.fetch_add(n, Relaxed);
    }
    pub(super) fn received(&self, delivered: u64, dropped_slow: u64) {
        self.received.fetch_add(1, Relaxed);
        self.delivered.fetch_add(delivered, Relaxed);
        self.dropped_slow.fetch_add(dropped_slow, Relaxed);
    }
    pub(super) fn reconnected(&self) {
        self.listener_reconnects.fetch_add(1, Relaxed);
    }
    pub(super) fn gaps_abandoned(&self, n: u64) {
        self.gaps_abandoned.fetch_add(n, Relaxed);
    }

    pub(super) fn snapshot(
        &self,
        (connections, groups): (usize, usize),
        usage: Option<f64>,
    ) -> StatsSnapshot {
        StatsSnapshot {
            connections,
            groups,
            messages_published: self.published.load(Relaxed),
            messages_received: self.received.load(Relaxed),
            deliveries: self.delivered.load(Relaxed),
            slow_consumers_dropped: self.dropped_slow.load(Relaxed),
            listener_reconnects: self.listener_reconnects.load(Relaxed),
            gaps_abandoned: self.gaps_abandoned.load(Relaxed),
            notification_queue_usage: usage,
        }
    }
}
