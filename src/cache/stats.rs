//! Cache counters of one instance, per tier.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

#[derive(Default)]
pub(super) struct Stats {
    local_hits: AtomicU64,
    local_misses: AtomicU64,
    local_evictions: AtomicU64,
    shared_hits: AtomicU64,
    shared_misses: AtomicU64,
    shared_evictions: AtomicU64,
    sets: AtomicU64,
}

/// Hits, misses and evictions per tier, and what each tier holds.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    pub local_hits: u64,
    pub local_misses: u64,
    /// Entries the in-process tier dropped for its size bound.
    pub local_evictions: u64,
    pub local_entries: u64,
    pub local_bytes: u64,
    pub shared_hits: u64,
    pub shared_misses: u64,
    /// Entries this instance's sweeper deleted for the size bound (expired ones not counted).
    pub shared_evictions: u64,
    pub shared_entries: i64,
    pub shared_bytes: i64,
    pub sets: u64,
}

impl Stats {
    pub(super) fn local_hit(&self) {
        self.local_hits.fetch_add(1, Relaxed);
    }
    pub(super) fn local_miss(&self) {
        self.local_misses.fetch_add(1, Relaxed);
    }
    pub(super) fn local_evicted(&self) {
        self.local_evictions.fetch_add(1, Relaxed);
    }
    pub(super) fn shared_hit(&self) {
        self.shared_hits.fetch_add(1, Relaxed);
    }
    pub(super) fn shared_miss(&self) {
        self.shared_misses.fetch_add(1, Relaxed);
    }
    pub(super) fn shared_evicted(&self, n: u64) {
        self.shared_evictions.fetch_add(n, Relaxed);
    }
    pub(super) fn set(&self) {
        self.sets.fetch_add(1, Relaxed);
    }

    /// Lookups answered by either tier, and lookups that found nothing in either.
    pub(super) fn lookups(&self) -> (u64, u64) {
        (
            self.local_hits.load(Relaxed) + self.shared_hits.load(Relaxed),
            self.shared_misses.load(Relaxed),
        )
    }

    pub(super) fn snapshot(&self, local: (u64, u64), shared: (i64, i64)) -> CacheStats {
        CacheStats {
            local_hits: self.local_hits.load(Relaxed),
            local_misses: self.local_misses.load(Relaxed),
            local_evictions: self.local_evictions.load(Relaxed),
            local_entries: local.0,
            local_bytes: local.1,
            shared_hits: self.shared_hits.load(Relaxed),
            shared_misses: self.shared_misses.load(Relaxed),
            shared_evictions: self.shared_evictions.load(Relaxed),
            shared_entries: shared.0,
            shared_bytes: shared.1,
            sets: self.sets.load(Relaxed),
        }
    }
}
