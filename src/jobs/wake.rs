//! Telling workers that there is work: in-process at once, across instances by NOTIFY.
//!
//! A job enqueued by this process wakes this process's workers for its queue directly. Other
//! instances hear of it through `NOTIFY hearth_jobs, '<queue>'`, debounced to at most one per
//! queue per [`DEBOUNCE`] from this process: a transaction that notifies takes a cluster-wide
//! lock at commit, so one NOTIFY per job is what makes naive LISTEN/NOTIFY queues collapse at
//! high insert rates. An enqueue that skipped its NOTIFY leaves the queue marked pending; the
//! worker runtime sends one trailing NOTIFY for it after the window, and workers also poll.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

/// Channel carrying queue names with new jobs.
pub(crate) const CHANNEL: &str = "hearth_jobs";
/// Channel carrying control messages: `cancel:<id>`, `pause:<queue>`, `resume:<queue>`.
pub(crate) const CONTROL: &str = "hearth_jobs_control";
/// At most one NOTIFY per queue per this long from one process.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(5);

#[derive(Default)]
struct QueueWake {
    local: Arc<Notify>,
    last_notify: Option<Instant>,
    pending: bool,
}

// A std Mutex: it is held for a few map operations and never across an await.
static QUEUES: LazyLock<Mutex<HashMap<String, QueueWake>>> = LazyLock::new(Default::default);

fn with_queue<T>(queue: &str, f: impl FnOnce(&mut QueueWake) -> T) -> T {
    let mut queues = QUEUES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    f(queues.entry(queue.to_owned()).or_default())
}

/// The in-process signal of a queue, for its runners.
pub(crate) fn local(queue: &str) -> Arc<Notify> {
    with_queue(queue, |q| q.local.clone())
}

/// Wakes this process's runners of `queue`.
pub(crate) fn wake_local(queue: &str) {
    with_queue(queue, |q| q.local.notify_waiters());
}

/// Whether an enqueue into `queue` should NOTIFY now; if not, the queue is marked pending.
pub(crate) fn should_notify(queue: &str) -> bool {
    with_queue(queue, |q| {
        let now = Instant::now();
        if q.last_notify
            .is_some_and(|at| now.duration_since(at) < DEBOUNCE)
        {
            q.pending = true;
            false
        } else {
            q.last_notify = Some(now);
            true
        }
    })
}

/// Queues whose NOTIFY was skipped and whose window has passed; clears their pending mark.
pub(crate) fn take_pending() -> Vec<String> {
    let mut queues = QUEUES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let now = Instant::now();
    queues
        .iter_mut()
        .filter(|(_, q)| {
            q.pending
                && q.last_notify
                    .is_none_or(|at| now.duration_since(at) >= DEBOUNCE)
        })
        .map(|(name, q)| {
            q.pending = false;
            q.last_notify = Some(now);
            name.clone()
        })
        .collect()
}
