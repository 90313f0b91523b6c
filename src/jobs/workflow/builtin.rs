//! Built-in workflow steps, registered in every [`Registry`](crate::jobs::Registry) like the
//! built-in `noop` and `sleep` jobs: for checks across processes (a `hearth worker` runs them
//! without registering anything) and benchmarks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Step;
use crate::jobs::JobContext;

/// Sleeps `ms` milliseconds, then outputs `value`: a stand-in for a group member's work.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SleepStep {
    pub ms: u64,
    pub value: i64,
}

impl Step for SleepStep {
    const KIND: &'static str = "step_sleep";
    type Input = ();
    type Output = i64;

    async fn run(self, _: (), _ctx: JobContext) -> anyhow::Result<i64> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(self.value)
    }
}

/// Outputs its input: a chord callback whose result is every member's result, to check.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Gather {}

impl Step for Gather {
    const KIND: &'static str = "step_gather";
    type Input = Vec<i64>;
    type Output = Vec<i64>;

    async fn run(self, input: Vec<i64>, _ctx: JobContext) -> anyhow::Result<Vec<i64>> {
        Ok(input)
    }
}
