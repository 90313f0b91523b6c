//! The guestbook's jobs: moderating one entry, and purging old rejected ones.
//!
//! Jobs run at least once, so both are idempotent: moderation decides only an entry that is
//! still pending (under its row lock), and the purge deletes what is old enough whenever it runs.

use hearth::{
    cache::Cache,
    channels::ChannelLayer,
    jobs::{Job, JobContext, Outcome},
};
use serde::{Deserialize, Serialize};

use crate::{
    PAGE_TAG,
    entry::{NewEntry, Status, verdict},
    group,
    live::Moderated,
};

/// Approves or rejects entry `entry_id`. Enqueued with the entry, in its transaction.
#[derive(Debug, Serialize, Deserialize)]
pub struct Moderate {
    pub entry_id: i64,
}

/// What moderation needs, built once at start from the settings and the platform.
#[derive(Clone)]
pub struct Moderation {
    /// From `--guestbook-banned-words`, in lower case.
    pub banned_words: Vec<String>,
    /// To push the verdict to open pages.
    pub channels: ChannelLayer,
    /// To drop the cached page once an entry is approved.
    pub cache: Cache,
}

/// What the job's status (`hearth jobs show <id>`) says it did.
#[derive(Debug, Serialize)]
struct Verdict {
    entry_id: i64,
    status: Status,
}

impl Job for Moderate {
    const KIND: &'static str = "guestbook.moderate";
    type Deps = Moderation;

    async fn perform(self, ctx: JobContext<Moderation>) -> anyhow::Result<Outcome> {
        let deps = &ctx.deps;
        let mut tx = ctx.pool.begin().await?;
        // Locked, so that a second run (after a worker lost its lease) waits for the first
        // and then finds the entry decided.
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT name, message, status FROM guestbook_entries WHERE id = $1 FOR UPDATE",
        )
        .bind(self.entry_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((name, message, stored)) = row else {
            return Outcome::with_result("the entry was deleted");
        };
        let mut status = Status::parse(&stored)
            .ok_or_else(|| anyhow::anyhow!("entry {} has status {stored:?}", self.entry_id))?;
        if status == Status::Pending {
            let entry = NewEntry { name, message };
            status = verdict(&entry, &deps.banned_words);
            sqlx::query(
                "UPDATE guestbook_entries SET status = $2, moderated_at = now() WHERE id = $1",
            )
            .bind(self.entry_id)
            .bind(status.as_str())
            .execute(&mut *tx)
            .await?;
            // In the transaction: the pages hear of the verdict only if it is stored.
            let live = Moderated::new(self.entry_id, status, &entry);
            deps.channels
                .group_send_in(&mut tx, &group(), &live)
                .await?;
            tx.commit().await?;
            tracing::info!(
                entry_id = self.entry_id,
                status = status.as_str(),
                "entry moderated"
            );
        }
        // After the commit, so that no request stores the old page again; and on a retry too,
        // so that an attempt that failed here finishes the job.
        if status == Status::Approved {
            deps.cache.invalidate_tag(PAGE_TAG).await?;
        }
        Outcome::with_result(Verdict {
            entry_id: self.entry_id,
            status,
        })
    }
}

/// Deletes the entries rejected more than a day ago (the `guestbook-purge` schedule).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PurgeRejected {}

impl Job for PurgeRejected {
    const KIND: &'static str = "guestbook.purge_rejected";
    type Deps = ();

    async fn perform(self, ctx: JobContext) -> anyhow::Result<Outcome> {
        let deleted = sqlx::query(
            "DELETE FROM guestbook_entries
              WHERE status = 'rejected' AND moderated_at < now() - interval '1 day'",
        )
        .execute(&ctx.pool)
        .await?
        .rows_affected();
        if deleted > 0 {
            tracing::info!(deleted, "old rejected entries purged");
        }
        Outcome::with_result(Purged { deleted })
    }
}

/// What the purge's status says it did.
#[derive(Debug, Serialize)]
struct Purged {
    deleted: u64,
}
