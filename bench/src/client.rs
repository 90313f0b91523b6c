//! What the Rust load clients (`hearth bench ws`, `hearth bench sse`) share: their runtime, their
//! CPU accounting and the way they summarise latencies, so that both report figures defined as
//! the protocol's Node clients define them.

use std::future::Future;

use anyhow::Context;

/// Runs a client on a runtime of its own, two threads, on a thread of its own. The command
/// line's runtime is already running (a runtime cannot be entered from inside another), and two
/// threads are enough to read thousands of sockets: more would spend on wake-ups and cross-thread
/// handoffs CPU that the server under test, on the same machine, then has.
pub(super) async fn on_own_runtime<F, Fut>(client: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the client's runtime")?;
        runtime.block_on(client())
    });
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .context("the client thread failed")?
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

/// User + system CPU seconds of this process.
pub(super) fn cpu_time() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF);
    usage.map_or(0.0, |u| {
        let (user, system) = (u.user_time(), u.system_time());
        user.tv_sec() as f64
            + user.tv_usec() as f64 / 1e6
            + system.tv_sec() as f64
            + system.tv_usec() as f64 / 1e6
    })
}

/// CPU time over wall time, in % of one core, to one decimal.
pub(super) fn cpu_pct(cpu_s: f64, wall_s: f64) -> f64 {
    if wall_s > 0.0 {
        (cpu_s / wall_s * 1000.0).round() / 10.0
    } else {
        0.0
    }
}

/// `n` over `span_s` seconds, to one decimal; 0 for an empty span.
pub(super) fn per_s(n: u64, span_s: f64) -> f64 {
    if span_s > 0.0 {
        (n as f64 / span_s * 10.0).round() / 10.0
    } else {
        0.0
    }
}

/// Latencies in µs, sorted once, read as milliseconds to two decimals.
pub(super) struct Latencies(Vec<u64>);

impl Latencies {
    pub(super) fn new(mut us: Vec<u64>) -> Self {
        us.sort_unstable();
        Self(us)
    }

    /// The nearest-rank percentile (as `clients/common.js` computes it); `None` when empty.
    pub(super) fn percentile_ms(&self, p: f64) -> Option<f64> {
        let rank = (p / 100.0 * self.0.len() as f64).ceil() as usize;
        self.0.get(rank.saturating_sub(1)).map(|&us| ms(us))
    }

    pub(super) fn max_ms(&self) -> Option<f64> {
        self.0.last().map(|&us| ms(us))
    }
}

fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_in_milliseconds() {
        let latencies = Latencies::new((1..=100).rev().map(|ms| ms * 1000).collect());
        assert_eq!(latencies.percentile_ms(50.0), Some(50.0));
        assert_eq!(latencies.percentile_ms(99.0), Some(99.0));
        assert_eq!(latencies.max_ms(), Some(100.0));
        assert_eq!(Latencies::new(vec![1_234]).percentile_ms(50.0), Some(1.23));
        assert_eq!(Latencies::new(Vec::new()).percentile_ms(50.0), None);
    }

    #[test]
    fn rates_guard_against_an_empty_span() {
        assert_eq!(per_s(500, 0.25), 2000.0);
        assert_eq!(per_s(500, 0.0), 0.0);
        assert_eq!(cpu_pct(0.5, 2.0), 25.0);
        assert_eq!(cpu_pct(0.5, 0.0), 0.0);
    }
}
