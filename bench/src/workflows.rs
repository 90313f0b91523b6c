//! `hearth bench jobs workflows <N> <REPEATS>`: the workflow figures of issue #33.
//!
//! * **chord**: a chord of `N` no-op members (the figure is for 10,000) and a no-op
//!   callback, `REPEATS` times after one warm-up chord; one JSON line per chord, then one with
//!   p50/p99 by nearest rank. Three spans end at the callback's start (its `run` entered, after
//!   it read the members' results), from:
//!   * `counter_zero`: the moment the group's counter reached zero (the group node's
//!     `finished_at`, `clock_timestamp()` in the transaction that recorded the last member):
//!     the chord's own cost: the callback's enqueue, the commit, the pickup, reading the
//!     results (`counter_zero_to_callback_leased` stops when a worker leased the callback's
//!     job, before it read the results);
//!   * `last_member_recorded`: the start of that transaction (the callback job's
//!     `created_at`), which adds the recording of the whole batch the last member was in
//!     (up to 1,000 outcomes);
//!   * `last_member_run`: the moment the last member's `run` returned, which adds the wait for
//!     the completer to reach that batch behind the batches before it.
//! * **chain** (skipped with `CHAINS=0`): `CHAINS` (100) chains of `CHAIN_STEPS` (50) no-op
//!   steps each, enqueued in one transaction: steps/s = steps / (last chain's end − commit).
//!   Then one chain of `CHAIN_STEPS` alone: the sequential rate, which is one step's full
//!   round trip (recorded, next enqueued in the same transaction, woken, fetched, run).
//!
//! Everything runs in this process on the `bench` queue, with `--concurrency` slots; the
//! workflow tables and the queue are emptied before each run.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;

use crate::jobs::BenchArgs;
use hearth::{
    channels::{ChannelConfig, ChannelLayer},
    jobs::{
        Chain, Chord, Finished, Group, JobContext, QueueName, Registry, Step, WorkerConfig,
        Workers, Workflow, job::Defaults,
    },
};

const QUEUE: &str = "bench";

/// Clock of this run, in nanoseconds since it started: members and callbacks stamp it.
struct Clock {
    start: Instant,
    /// The latest member end of the current chord.
    last_member_end: AtomicU64,
    /// Callback starts, one per chord: on this clock, and as Unix time (to compare with the
    /// database's timestamps, on the same machine's clock).
    callback_starts: Mutex<Vec<(u64, f64)>>,
}

/// The clock of the run in progress: steps have no dependencies of their own, and one
/// benchmark runs at a time in this process.
static CLOCK: std::sync::RwLock<Option<Arc<Clock>>> = std::sync::RwLock::new(None);

fn clock() -> Option<Arc<Clock>> {
    CLOCK.read().ok().and_then(|clock| clock.clone())
}

impl Clock {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// A chord member that does nothing but note when it ended.
#[derive(Serialize, Deserialize)]
struct Member {}

impl Step for Member {
    const KIND: &'static str = "bench_wf_member";
    type Input = ();
    type Output = ();

    async fn run(self, _: (), _ctx: JobContext) -> anyhow::Result<()> {
        if let Some(clock) = clock() {
            clock
                .last_member_end
                .fetch_max(clock.now(), Ordering::Relaxed);
        }
        Ok(())
    }

    fn defaults() -> Defaults {
        Defaults {
            queue: QUEUE,
            ..Defaults::default()
        }
    }
}

/// The chord callback: notes when it started.
#[derive(Serialize, Deserialize)]
struct Callback {}

impl Step for Callback {
    const KIND: &'static str = "bench_wf_callback";
    type Input = Vec<()>;
    type Output = usize;

    async fn run(self, results: Vec<()>, _ctx: JobContext) -> anyhow::Result<usize> {
        if let Some(clock) = clock() {
            let at = clock.now();
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            if let Ok(mut starts) = clock.callback_starts.lock() {
                starts.push((at, unix));
            }
        }
        Ok(results.len())
    }

    fn defaults() -> Defaults {
        Defaults {
            queue: QUEUE,
            ..Defaults::default()
        }
    }
}

/// A chain step: adds one.
#[derive(Serialize, Deserialize)]
struct Increment {}

impl Step for Increment {
    const KIND: &'static str = "bench_wf_increment";
    type Input = u64;
    type Output = u64;

    async fn run(self, n: u64, _ctx: JobContext) -> anyhow::Result<u64> {
        Ok(n + 1)
    }

    fn defaults() -> Defaults {
        Defaults {
            queue: QUEUE,
            ..Defaults::default()
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn clear(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM jobs WHERE queue = $1")
        .bind(QUEUE)
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM jobs_done WHERE queue = $1")
        .bind(QUEUE)
        .execute(pool)
        .await?;
    sqlx::query("TRUNCATE workflows, workflow_nodes")
        .execute(pool)
        .await?;
    Ok(())
}

/// `hearth bench jobs workflows`.
pub(crate) async fn run_on(pool: &PgPool, args: &BenchArgs) -> anyhow::Result<()> {
    clear(pool).await?;
    let clock = Arc::new(Clock {
        start: Instant::now(),
        last_member_end: AtomicU64::new(0),
        callback_starts: Mutex::new(Vec::new()),
    });
    let registry = Registry::new()
        .register_step::<Member>()
        .register_step::<Callback>()
        .register_step::<Increment>();
    if let Ok(mut current) = CLOCK.write() {
        *current = Some(clock.clone());
    }
    let instance = format!("bench-wf-{}", std::process::id());
    let channels = ChannelLayer::start(pool.clone(), ChannelConfig::new(instance.clone()));
    channels.ready().await;
    let workers = Workers::start(
        pool.clone(),
        registry,
        WorkerConfig {
            instance,
            ..WorkerConfig::new(vec![(QueueName::parse(QUEUE)?, args.concurrency)])
        },
    );
    let config = format!(
        "hearth: 1 process, {} slots on queue `{QUEUE}`",
        args.concurrency
    );
    let result = async {
        chords(pool, &channels, &clock, args, &config).await?;
        chains(pool, &channels, &config).await
    }
    .await;
    workers.shutdown().await;
    channels.shutdown().await;
    result
}

async fn chords(
    pool: &PgPool,
    channels: &ChannelLayer,
    clock: &Clock,
    args: &BenchArgs,
    config: &str,
) -> anyhow::Result<()> {
    let n = args.n;
    let mut samples = Vec::new();
    // One chord to warm up (statement caches, plans), not counted.
    for repeat in 0..=args.repeats {
        clear(pool).await?;
        clock.last_member_end.store(0, Ordering::Relaxed);
        let before = clock.callback_starts.lock().map(|s| s.len()).unwrap_or(0);
        let t0 = Instant::now();
        let members = Group::of((0..n).map(|_| Member {}));
        let handle = Workflow::new(Chord::new(members, Callback {}), ())
            .enqueue(pool)
            .await?;
        let enqueue_s = t0.elapsed().as_secs_f64();
        let outcome = handle.wait(channels, Duration::from_secs(600)).await?;
        let total_s = t0.elapsed().as_secs_f64();
        anyhow::ensure!(
            outcome == Some(Finished::Completed(n)),
            "the chord ended with {outcome:?}"
        );
        let starts = clock
            .callback_starts
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        anyhow::ensure!(
            starts.len() == before + 1,
            "the callback started {} times",
            starts.len() - before
        );
        let (start, start_unix) = starts[before];
        let last = clock.last_member_end.load(Ordering::Relaxed);
        let ran_ms = start.saturating_sub(last) as f64 / 1e6;
        // The callback's job was inserted by the transaction that recorded the last member's
        // outcome: its `created_at` is that transaction's start. The group's node was recorded
        // as completed in it, right after its counter reached zero (`clock_timestamp()`).
        let (recorded, zeroed, leased_ms): (f64, f64, f64) = sqlx::query_as(
            "SELECT extract(epoch FROM j.created_at)::float8, extract(epoch FROM g.finished_at)::float8,
                    extract(epoch FROM j.attempted_at - g.finished_at)::float8 * 1000
               FROM jobs_done j, workflow_nodes g
              WHERE j.workflow_id = $1 AND j.kind = $2 AND g.workflow_id = $1 AND g.node = 1",
        )
        .bind(handle.id)
        .bind(Callback::KIND)
        .fetch_one(pool)
        .await?;
        let recorded_ms = (start_unix - recorded) * 1000.0;
        let zeroed_ms = (start_unix - zeroed) * 1000.0;
        if repeat > 0 {
            samples.push((recorded_ms, ran_ms, zeroed_ms, leased_ms));
        }
        println!(
            "{}",
            json!({"tool": "hearth", "mode": "chord", "repeat": repeat, "warmup": repeat == 0, "members": n,
                   "enqueue_s": round(enqueue_s), "total_s": round(total_s),
                   "members_per_s": round(n as f64 / total_s),
                   "counter_zero_to_callback_ms": round(zeroed_ms),
                   "counter_zero_to_callback_leased_ms": round(leased_ms),
                   "last_member_recorded_to_callback_ms": round(recorded_ms),
                   "last_member_run_to_callback_ms": round(ran_ms), "config": config})
        );
    }
    let mut recorded: Vec<f64> = samples.iter().map(|s| s.0).collect();
    let mut ran: Vec<f64> = samples.iter().map(|s| s.1).collect();
    let mut zeroed: Vec<f64> = samples.iter().map(|s| s.2).collect();
    let mut leased: Vec<f64> = samples.iter().map(|s| s.3).collect();
    leased.sort_by(f64::total_cmp);
    recorded.sort_by(f64::total_cmp);
    ran.sort_by(f64::total_cmp);
    zeroed.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({"tool": "hearth", "mode": "chord_summary", "members": n, "chords": samples.len(),
               "counter_zero_to_callback_p50_ms": round(percentile(&zeroed, 50.0)),
               "counter_zero_to_callback_p99_ms": round(percentile(&zeroed, 99.0)),
               "counter_zero_to_callback_leased_p50_ms": round(percentile(&leased, 50.0)),
               "counter_zero_to_callback_leased_p99_ms": round(percentile(&leased, 99.0)),
               "last_member_recorded_to_callback_p50_ms": round(percentile(&recorded, 50.0)),
               "last_member_recorded_to_callback_p99_ms": round(percentile(&recorded, 99.0)),
               "last_member_run_to_callback_p50_ms": round(percentile(&ran, 50.0)),
               "last_member_run_to_callback_p99_ms": round(percentile(&ran, 99.0)), "config": config})
    );
    Ok(())
}

fn chain_of(steps: usize) -> Chain<u64, u64> {
    (1..steps).fold(Chain::new(Increment {}), |chain, _| {
        chain.then(Increment {})
    })
}

async fn chains(pool: &PgPool, channels: &ChannelLayer, config: &str) -> anyhow::Result<()> {
    let chains = env_usize("CHAINS", 100);
    let steps = env_usize("CHAIN_STEPS", 50);
    if chains == 0 || steps == 0 {
        return Ok(());
    }
    for (mode, count) in [("chains", chains), ("chain_alone", 1)] {
        clear(pool).await?;
        // Every chain in one transaction, so that all start together when it commits: the
        // rate is that of the steps, not of enqueuing chains one by one.
        let enqueue = Instant::now();
        let mut tx = pool.begin().await?;
        let mut handles = Vec::with_capacity(count);
        for _ in 0..count {
            handles.push(Workflow::new(chain_of(steps), 0).enqueue(&mut *tx).await?);
        }
        let enqueue_s = enqueue.elapsed().as_secs_f64();
        let t0 = Instant::now();
        tx.commit().await?;
        for handle in handles {
            let outcome = handle.wait(channels, Duration::from_secs(600)).await?;
            anyhow::ensure!(
                outcome == Some(Finished::Completed(steps as u64)),
                "a chain ended with {outcome:?}"
            );
        }
        let total_s = t0.elapsed().as_secs_f64();
        let total_steps = count * steps;
        println!(
            "{}",
            json!({"tool": "hearth", "mode": mode, "chains": count, "steps_per_chain": steps,
                   "steps": total_steps, "enqueue_s": round(enqueue_s), "total_s": round(total_s),
                   "steps_per_s": round(total_steps as f64 / total_s),
                   "ms_per_step_per_chain": round(total_s * 1000.0 / steps as f64), "config": config})
        );
    }
    Ok(())
}
