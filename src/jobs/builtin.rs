//! Built-in job kinds for checks and benchmarks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::job::{Job, JobContext, Outcome};

/// Does nothing; measures the queue itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Noop {}

impl Job for Noop {
    const KIND: &'static str = "noop";
    type Deps = ();

    async fn perform(self, _ctx: JobContext) -> anyhow::Result<Outcome> {
        Ok(Outcome::done())
    }
}

/// Sleeps `ms` milliseconds (a stand-in for slow work: timeouts, shutdown, lost workers).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sleep {
    pub ms: u64,
}

impl Job for Sleep {
    const KIND: &'static str = "sleep";
    type Deps = ();

    async fn perform(self, _ctx: JobContext) -> anyhow::Result<Outcome> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(Outcome::done())
    }
}
