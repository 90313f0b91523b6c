//! `hearth bench jobs`: the job-queue benchmark of `PROTOCOL.md` (W4), runnable by anyone who
//! cloned the repo.
//!
//! `hearth bench jobs both <N> <REPEATS>` follows the peers' contract: workers run in this
//! process; the job appends `"%017.6f %017.6f\n" % (t_start, t_enqueued)` to a record file and
//! completion is observed by polling the file's size every 5 ms; one JSON object per
//! measurement goes to stdout. Modes:
//!
//! * `throughput`: N no-op jobs through [`enqueue_many`] (5,000 per statement); jobs/s =
//!   N / (t_start of the last job − t0), enqueue time included; `recorded_jobs_per_s` is the
//!   same up to the moment this process's completer has written the last outcome;
//! * `latency`: `LATENCY_N` (200) jobs enqueued one at a time `LATENCY_GAP_MS` (20) apart;
//!   t_start − t_enqueued, p50/p99 by nearest rank;
//! * `sustained`: jobs inserted one per transaction at `--rate` per second for `--seconds`,
//!   while workers drain; p50/p99 of the wait;
//! * `churn`: N jobs pushed through, with `EXPLAIN (ANALYZE, BUFFERS)` of the fetch query
//!   before and after, to show the hot path does not bloat;
//! * `workflows`: chords of N members and chains (issue #33, see [`super::workflows`]).
//!
//! The workers run on a pool of their own (`HEARTH_JOB_DB_CONNECTIONS`), as in `hearth serve`.
//! `JOBS_RUNNERS=N` splits the slots over N runners of the one queue (an experiment of #36:
//! more fetches in flight at once).
//!
//! Run it against a scratch database (`HEARTH_DATA_DIR=/tmp/bench hearth bench jobs ...`):
//! it deletes the `bench` queue's jobs between runs.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;

use hearth::{
    application::{Invocation, job_pool},
    jobs::{
        Enqueue, Job, JobContext, Outcome, QueueName, Registry, WorkerConfig, Workers, enqueue_many,
    },
};

const QUEUE: &str = "bench";

/// Which measurements to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Both,
    Throughput,
    Latency,
    Sustained,
    Churn,
    /// Workflows (#33): chord callback latency and chain steps/s (see `bench::workflows`).
    Workflows,
}

/// Benchmark settings from the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to measure (`both` = throughput and latency, as run.sh asks).
    #[arg(default_value = "both")]
    pub mode: Mode,
    /// Jobs per throughput (or churn) run.
    #[arg(default_value_t = 20_000)]
    pub n: usize,
    /// Repeats of each measurement.
    #[arg(default_value_t = 1)]
    pub repeats: usize,
    /// Jobs run at once by this process's workers.
    /// (No-op jobs finish at once, so this mostly sets how many are fetched per statement.)
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Sustained mode: jobs inserted per second, one per transaction.
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    /// Sustained mode: how long to insert.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Sustained mode: tasks inserting at once (each waits for its commit before the next).
    #[arg(long, default_value_t = 8)]
    pub producers: usize,
    /// Sustained mode: the wait's percentiles are also reported per window of this many
    /// seconds of enqueue time, to show whether they stay flat as the jobs go through.
    #[arg(long, default_value_t = 10)]
    pub window: u64,
}

/// The benchmark job: records when it started and when it was enqueued.
#[derive(Serialize, Deserialize)]
struct Record {
    t_enq: f64,
}

/// The record file jobs append to.
struct RecordFile(fs::File);

impl Job for Record {
    const KIND: &'static str = "bench_record";
    type Deps = RecordFile;

    async fn perform(self, ctx: JobContext<RecordFile>) -> anyhow::Result<Outcome> {
        let line = format!("{:017.6} {:017.6}\n", now(), self.t_enq);
        let RecordFile(file) = &*ctx.deps;
        // One write of 36 bytes to an O_APPEND file: lines never interleave.
        (&*file).write_all(line.as_bytes())?;
        Ok(Outcome::done())
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `hearth bench jobs`.
pub async fn run(invocation: &Invocation, args: BenchArgs) -> anyhow::Result<()> {
    let keep_completed = invocation.config.jobs.job_keep_completed;
    invocation
        .with_database(true, |pool| async move {
            if args.mode == Mode::Workflows {
                crate::workflows::run_on(&pool, &args).await
            } else {
                // The workers on a pool of their own, as in `hearth serve`: the producers of
                // the sustained mode then wait for connections no more than requests would.
                let jobs_pool = job_pool(&invocation.config, &pool);
                let result = run_on(&pool, &jobs_pool, &args, keep_completed).await;
                jobs_pool.close().await;
                result
            }
        })
        .await
}

async fn run_on(
    pool: &PgPool,
    jobs_pool: &PgPool,
    args: &BenchArgs,
    keep_completed: bool,
) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let record = dir.join("record.txt");
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(&record)?;
    let registry = Registry::new().register_with::<Record>(RecordFile(file));
    let runners = env_usize("JOBS_RUNNERS", 1).max(1);
    let queues = vec![(QueueName::parse(QUEUE)?, args.concurrency / runners); runners];
    let worker_config = WorkerConfig {
        instance: format!("bench-{}", std::process::id()),
        keep_completed,
        ..WorkerConfig::new(queues)
    };
    // Cleared before the workers start, so jobs an interrupted earlier run left are not run.
    clear(pool, &record).await?;
    let workers = Workers::start(jobs_pool.clone(), registry, worker_config);
    let config = format!(
        "hearth: 1 process, {} slots on queue `{QUEUE}`{}, workers on their own pool of {} connections; bulk enqueue_many (5,000 per statement); completed jobs {}",
        args.concurrency,
        if runners > 1 {
            format!(" in {runners} runners")
        } else {
            String::new()
        },
        jobs_pool.options().get_max_connections(),
        if keep_completed {
            "kept"
        } else {
            "deleted (HEARTH_JOB_KEEP_COMPLETED=false)"
        }
    );

    // Warm-up: one job through the single path, then JOBS_WARMUP_N through the bulk path.
    enqueue_one(pool, now()).await?;
    wait_for_lines(&record, 1, None).await?;
    let warmup = env_usize("JOBS_WARMUP_N", 2000);
    enqueue_bulk(pool, warmup).await?;
    wait_for_lines(&record, 1 + warmup, None).await?;

    let result = async {
        for repeat in 1..=args.repeats {
            if matches!(args.mode, Mode::Both | Mode::Throughput) {
                reset(pool, &workers, &record).await?;
                throughput(pool, &workers, &record, args.n, repeat, &config).await?;
            }
            if matches!(args.mode, Mode::Both | Mode::Latency) {
                reset(pool, &workers, &record).await?;
                latency(pool, &record, repeat, &config).await?;
            }
            if args.mode == Mode::Sustained {
                reset(pool, &workers, &record).await?;
                sustained(pool, &record, args, repeat, &config).await?;
            }
            if args.mode == Mode::Churn {
                reset(pool, &workers, &record).await?;
                churn(pool, &record, args.n, &config).await?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    workers.shutdown().await;
    let _ = fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hearth-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Waits until this process has written every outcome of the jobs it took, for at most 240 s:
/// a job is in the record file once it has started, but the completer moves its row to
/// `jobs_done` a moment later.
async fn wait_until_recorded(workers: &Workers) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    loop {
        tick.tick().await;
        let left = workers.unrecorded();
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{left} jobs still unrecorded after 240 s"
        );
    }
}

/// Empties the bench queue and the record file between runs, once the previous run's
/// outcomes are all written (so no run overlaps the completions of the one before).
async fn reset(pool: &PgPool, workers: &Workers, record: &Path) -> anyhow::Result<()> {
    wait_until_recorded(workers).await?;
    clear(pool, record).await
}

/// Deletes the bench queue's jobs and empties the record file.
async fn clear(pool: &PgPool, record: &Path) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM jobs WHERE queue = $1")
        .bind(QUEUE)
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM jobs_done WHERE queue = $1")
        .bind(QUEUE)
        .execute(pool)
        .await?;
    fs::OpenOptions::new()
        .write(true)
        .open(record)?
        .set_len(0)?;
    Ok(())
}

async fn enqueue_one(pool: &PgPool, t_enq: f64) -> anyhow::Result<()> {
    Enqueue::new(&Record { t_enq })?
        .queue(QUEUE)?
        .enqueue(pool)
        .await?;
    Ok(())
}

async fn enqueue_bulk(pool: &PgPool, n: usize) -> anyhow::Result<()> {
    let mut left = n;
    while left > 0 {
        let chunk = left.min(5000);
        let jobs = (0..chunk)
            .map(|_| Enqueue::new(&Record { t_enq: 0.0 })?.queue(QUEUE))
            .collect::<Result<Vec<_>, _>>()?;
        enqueue_many(pool, jobs).await?;
        left -= chunk;
    }
    Ok(())
}

/// Waits until the record file holds `n` lines (polling its size every 5 ms, as the peers'
/// bench does), for at most 240 s.
async fn wait_for_lines(record: &Path, n: usize, bar: Option<&ProgressBar>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    loop {
        tick.tick().await;
        let lines = fs::metadata(record)
            .map(|m| m.len() as usize / 36)
            .unwrap_or(0);
        if let Some(bar) = bar {
            bar.set_position(lines as u64);
        }
        if lines >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {lines} of {n} jobs ran within 240 s"
        );
    }
}

fn read_record(record: &Path) -> anyhow::Result<Vec<(f64, f64)>> {
    Ok(fs::read_to_string(record)?
        .lines()
        .filter_map(|l| {
            let (start, enq) = l.split_once(' ')?;
            Some((start.trim().parse().ok()?, enq.trim().parse().ok()?))
        })
        .collect())
}

fn bar(n: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} jobs ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

async fn throughput(
    pool: &PgPool,
    workers: &Workers,
    record: &Path,
    n: usize,
    repeat: usize,
    config: &str,
) -> anyhow::Result<()> {
    let bar = bar(n, "throughput");
    let t0 = now();
    enqueue_bulk(pool, n).await?;
    let enqueue_s = now() - t0;
    wait_for_lines(record, n, Some(&bar)).await?;
    bar.finish_and_clear();
    wait_until_recorded(workers).await?;
    let recorded_s = now() - t0;
    let last_start = read_record(record)?
        .iter()
        .map(|(start, _)| *start)
        .fold(0.0, f64::max);
    let total_s = last_start - t0;
    println!(
        "{}",
        json!({"tool": "hearth", "mode": "throughput", "repeat": repeat, "n": n, "completed": n, "ok": true,
               "enqueue_s": round(enqueue_s), "total_s": round(total_s), "jobs_per_s": round(n as f64 / total_s),
               "recorded_s": round(recorded_s), "recorded_jobs_per_s": round(n as f64 / recorded_s), "config": config})
    );
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Each recorded job's wait (start - enqueued) in milliseconds, sorted.
fn waits_ms(records: &[(f64, f64)]) -> Vec<f64> {
    let mut waits: Vec<f64> = records
        .iter()
        .map(|(start, enq)| (start - enq) * 1000.0)
        .collect();
    waits.sort_by(f64::total_cmp);
    waits
}

async fn latency(pool: &PgPool, record: &Path, repeat: usize, config: &str) -> anyhow::Result<()> {
    let n = env_usize("LATENCY_N", 200);
    let gap = Duration::from_millis(env_usize("LATENCY_GAP_MS", 20) as u64);
    let bar = bar(n, "latency");
    let mut enqueue_ms = Vec::with_capacity(n);
    for i in 0..n {
        let t = now();
        enqueue_one(pool, t).await?;
        enqueue_ms.push((now() - t) * 1000.0);
        bar.set_position(i as u64 + 1);
        tokio::time::sleep(gap).await;
    }
    // How much of the pickup latency is the enqueue call itself (its INSERT and commit).
    enqueue_ms.sort_by(f64::total_cmp);
    wait_for_lines(record, n, None).await?;
    bar.finish_and_clear();
    let waits = waits_ms(&read_record(record)?);
    println!(
        "{}",
        json!({"tool": "hearth", "mode": "latency", "repeat": repeat, "n": n, "completed": waits.len(), "ok": waits.len() == n,
               "p50_ms": round(percentile(&waits, 50.0)), "p99_ms": round(percentile(&waits, 99.0)),
               "max_ms": round(waits.last().copied().unwrap_or(f64::NAN)),
               "enqueue_call_p50_ms": round(percentile(&enqueue_ms, 50.0)), "config": config})
    );
    Ok(())
}

async fn sustained(
    pool: &PgPool,
    record: &Path,
    args: &BenchArgs,
    repeat: usize,
    config: &str,
) -> anyhow::Result<()> {
    let total = args.rate as usize * args.seconds as usize;
    let bar = bar(total, "sustained");
    let start = Instant::now();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // The producers share the schedule: job k is due at k / rate seconds after the start.
    let producers: Vec<_> = (0..args.producers.max(1))
        .map(|_| {
            let (pool, sent, rate) = (pool.clone(), sent.clone(), args.rate as f64);
            tokio::spawn(async move {
                loop {
                    let k = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if k >= total {
                        return anyhow::Ok(());
                    }
                    let due = start + Duration::from_secs_f64(k as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                    enqueue_one(&pool, now()).await?;
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await??;
    }
    let insert_s = start.elapsed().as_secs_f64();
    wait_for_lines(record, total, Some(&bar)).await?;
    bar.finish_and_clear();
    let records = read_record(record)?;
    let waits = waits_ms(&records);
    println!(
        "{}",
        json!({"tool": "hearth", "mode": "sustained", "repeat": repeat, "n": total, "completed": waits.len(), "ok": waits.len() == total,
               "target_rate": args.rate, "achieved_rate": round(total as f64 / insert_s), "producers": args.producers,
               "p50_ms": round(percentile(&waits, 50.0)), "p99_ms": round(percentile(&waits, 99.0)),
               "max_ms": round(waits.last().copied().unwrap_or(f64::NAN)),
               "windows": windows(&records, args.window.max(1) as f64), "config": config})
    );
    Ok(())
}

/// The wait's percentiles per window of `width` seconds of enqueue time, in order: whether
/// the queue keeps up as it goes, not just on average.
fn windows(records: &[(f64, f64)], width: f64) -> Vec<serde_json::Value> {
    let Some(first) = records.iter().map(|(_, enq)| *enq).reduce(f64::min) else {
        return Vec::new();
    };
    let mut buckets: Vec<Vec<f64>> = Vec::new();
    for (start, enq) in records {
        let i = ((enq - first) / width) as usize;
        if buckets.len() <= i {
            buckets.resize_with(i + 1, Vec::new);
        }
        buckets[i].push((start - enq) * 1000.0);
    }
    buckets
        .into_iter()
        .enumerate()
        .map(|(i, mut waits)| {
            waits.sort_by(f64::total_cmp);
            json!({"from_s": i as f64 * width, "jobs": waits.len(),
                   "p50_ms": round(percentile(&waits, 50.0)), "p99_ms": round(percentile(&waits, 99.0)),
                   "max_ms": round(waits.last().copied().unwrap_or(f64::NAN))})
        })
        .collect()
}

async fn explain_fetch(pool: &PgPool) -> anyhow::Result<String> {
    // The worker's fetch statement, rolled back so nothing is leased.
    let mut tx = pool.begin().await?;
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, BUFFERS)
         WITH next AS (
             SELECT id FROM jobs
              WHERE state = 'available' AND queue = $1 AND run_at <= now()
                AND NOT EXISTS (SELECT 1 FROM job_queues_paused p WHERE p.queue = $1)
              ORDER BY priority, run_at, id LIMIT 32 FOR UPDATE SKIP LOCKED)
         UPDATE jobs j SET state = 'running', attempt = j.attempt + 1 FROM next WHERE j.id = next.id RETURNING j.id",
    )
    .bind(QUEUE)
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    Ok(plan.join("\n"))
}

async fn churn(pool: &PgPool, record: &Path, n: usize, config: &str) -> anyhow::Result<()> {
    // A few waiting jobs in a paused-looking state (far future) give the plan rows to look at.
    println!(
        "fetch plan before {n} jobs:\n{}",
        explain_fetch(pool).await?
    );
    let bar = bar(n, "churn");
    let t0 = now();
    let mut done = 0;
    while done < n {
        let chunk = (n - done).min(50_000);
        enqueue_bulk(pool, chunk).await?;
        done += chunk;
        wait_for_lines(record, done, Some(&bar)).await?;
    }
    bar.finish_and_clear();
    let total_s = now() - t0;
    println!("fetch plan after {n} jobs:\n{}", explain_fetch(pool).await?);
    println!(
        "{}",
        json!({"tool": "hearth", "mode": "churn", "n": n, "completed": n, "ok": true, "total_s": round(total_s),
               "jobs_per_s": round(n as f64 / total_s), "config": config})
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{percentile, windows};

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 100.0);
        assert_eq!(percentile(&values, 99.0), 198.0);
        assert_eq!(percentile(&[5.0], 99.0), 5.0);
    }

    #[test]
    fn waits_are_grouped_by_when_the_job_was_enqueued() {
        // (start, enqueued): two jobs in the first 10 s waiting 1 and 3 ms, one at 25 s waiting 2.
        let records = [(100.001, 100.0), (105.003, 105.0), (125.002, 125.0)];
        let w = windows(&records, 10.0);
        assert_eq!(w.len(), 3);
        assert_eq!(w[0]["jobs"], 2);
        assert_eq!(w[0]["p99_ms"], 3.0);
        assert_eq!(w[1]["jobs"], 0);
        assert_eq!(w[2]["from_s"], 20.0);
        assert_eq!(w[2]["p50_ms"], 2.0);
    }
}
