//! Background jobs: a `FOR UPDATE SKIP LOCKED` queue in Postgres, worked by in-process workers.
//!
//! What Celery + a broker + beat give a Django team, in the database the app already has:
//!
//! * [`job`]: the [`Job`] trait (serde args + async `perform`), [`Outcome`] and [`JobContext`];
//! * [`enqueue`]: [`Enqueue`] with its options, on a pool or inside the caller's transaction,
//!   one or thousands per round trip ([`enqueue_many`]), with unique keys and an optional
//!   owner (an opaque user id the status API checks: the platform knows nothing of users);
//! * [`registry`]: the kinds a process can run;
//! * [`worker`]: the runtime every `hearth serve` / `hearth worker` runs ([`Workers`]);
//! * [`maintenance`]: lost-worker rescue, pruning and schedules, one instance at a time;
//! * [`schedule`]: cron and interval schedules, each occurrence enqueued once, with a catch-up
//!   rule for occurrences missed while no instance ran;
//! * [`schedule_store`]: schedules kept in the database, managed at run time (`/ops`, CLI);
//! * [`control`]: status, cancel, retry, pause, resume;
//! * [`kind_limits`]: rate limits per job kind (`10/m`), across instances;
//! * [`metrics`]: in-process counters and latency histograms;
//! * [`testing`]: helpers for tests of code that enqueues jobs;
//! * [`workflow`]: chains, groups and chords of typed steps, moved on by the transaction that
//!   records each step's outcome, and waiting on a job's or a workflow's outcome.
//!
//! Execution is at least once: a worker that dies after finishing the work but before
//! recording it makes the job run again. Jobs make themselves idempotent with a unique key (no
//! second copy while one is pending) and by checking a done flag in their own tables before
//! acting (see the README).

pub mod builtin;
pub mod control;
pub mod enqueue;
pub mod job;
pub mod kind_limits;
pub mod maintenance;
pub mod metrics;
pub mod registry;
pub mod schedule;
pub mod schedule_store;
pub mod testing;
mod wake;
pub mod worker;
pub mod workflow;

pub use enqueue::{
    Enqueue, EnqueueError, Enqueued, FinishedState, QueueName, Unique, enqueue_many,
};
pub use job::{Defaults, Job, JobContext, Outcome};
pub use registry::Registry;
pub use schedule::{CatchUp, Every, Schedule, ScheduleError};
pub use worker::{WorkerConfig, Workers};
pub use workflow::{
    Chain, Chord, Finished, Flow, Group, GroupHandle, JobHandle, Member, Step, StepJob, Task,
    WaitError, Workflow, WorkflowError, WorkflowHandle,
};

/// Parses a queue spec such as `default:10,mail:2` (a queue without `:N` gets 10 slots).
pub fn parse_queues(spec: &str) -> Result<Vec<(QueueName, usize)>, String> {
    let mut queues: Vec<(QueueName, usize)> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, slots) = match part.split_once(':') {
            Some((name, slots)) => {
                let slots: usize = slots.trim().parse().map_err(|_| {
                    format!("{part:?}: the concurrency after `:` must be a whole number")
                })?;
                (name.trim(), slots)
            }
            None => (part, 10),
        };
        if slots == 0 || slots > 10_000 {
            return Err(format!("{part:?}: concurrency must be between 1 and 10000"));
        }
        let queue = QueueName::parse(name).map_err(|e| e.to_string())?;
        if queues.iter().any(|(q, _)| *q == queue) {
            return Err(format!("queue {name:?} is listed twice"));
        }
        queues.push((queue, slots));
    }
    if queues.is_empty() {
        return Err("no queues given (expected e.g. `default:10,mail:2`)".into());
    }
    Ok(queues)
}

#[cfg(test)]
mod tests {
    use super::parse_queues;

    #[test]
    fn queue_specs_parse_or_explain() {
        let queues = parse_queues("default:10, mail:2,reports").unwrap();
        let names: Vec<_> = queues.iter().map(|(q, n)| (q.as_str(), *n)).collect();
        assert_eq!(names, [("default", 10), ("mail", 2), ("reports", 10)]);
        assert!(
            parse_queues("default:x")
                .unwrap_err()
                .contains("whole number")
        );
        assert!(
            parse_queues("Mail:2")
                .unwrap_err()
                .contains("invalid queue name")
        );
        assert!(parse_queues("a:1,a:2").unwrap_err().contains("twice"));
        assert!(parse_queues("a:0").is_err());
        assert!(parse_queues("").is_err());
    }
}
