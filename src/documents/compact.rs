//! Compaction: folding a document's stored updates into its snapshot, as a job.
//!
//! Every keystroke a client sends is a row in `document_updates`; a document edited for an
//! hour would otherwise be rebuilt from thousands of rows on every open. The socket enqueues
//! this job after every [`COMPACT_EVERY`] updates it stores and when it closes, under a unique
//! key, so a document has at most one compaction waiting however many editors it has. A
//! socket whose instance died (`kill -9`) never closes: the `documents-compact` schedule runs
//! [`CompactIdle`] every ten minutes to catch the documents it left behind.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::crdt::State;
use crate::jobs::{Defaults, Enqueue, EnqueueError, Enqueued, Job, JobContext, Outcome, Unique};

/// Updates a socket stores before it asks for a compaction.
pub const COMPACT_EVERY: u32 = 200;

/// Folds a document's updates into its snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct CompactDocument {
    pub document_id: i64,
}

impl CompactDocument {
    /// Enqueues a compaction of `document_id` unless one is already waiting. The short delay
    /// lets a burst of edits (or every editor leaving at once) end in one compaction.
    pub async fn request(db: &PgPool, document_id: i64) -> Result<Enqueued, EnqueueError> {
        Enqueue::new(&Self { document_id })?
            .unique(Unique::key(format!("documents.compact:{document_id}")))
            .delay(Duration::from_secs(2))
            .enqueue(db)
            .await
    }
}

/// What one compaction did.
#[derive(Debug, Serialize)]
pub struct Compacted {
    pub updates: usize,
    pub snapshot_bytes: usize,
}

impl Job for CompactDocument {
    const KIND: &'static str = "documents.compact";
    type Deps = ();

    fn defaults() -> Defaults {
        Defaults {
            max_attempts: 5,
            ..Defaults::default()
        }
    }

    #[tracing::instrument(skip_all, fields(document_id = self.document_id))]
    async fn perform(self, ctx: JobContext) -> anyhow::Result<Outcome> {
        let compacted = compact(&ctx.pool, self.document_id).await?;
        Outcome::with_result(compacted)
    }
}

/// Folds every update stored for `document_id` into its snapshot. Safe beside live editors:
/// updates stored meanwhile are not among the rows read, so they stay; a reader sees either
/// the old snapshot with the old rows or the new snapshot without them.
pub async fn compact(db: &PgPool, document_id: i64) -> anyhow::Result<Compacted> {
    let mut tx = db.begin().await?;
    // The row lock keeps two compactions of one document from interleaving.
    let Some(snapshot) = sqlx::query_scalar!(
        "SELECT snapshot FROM documents WHERE id = $1 FOR UPDATE",
        document_id
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(Compacted {
            updates: 0,
            snapshot_bytes: 0,
        });
    };
    let updates = sqlx::query!(
        "SELECT id, data FROM document_updates WHERE document_id = $1 ORDER BY id",
        document_id
    )
    .fetch_all(&mut *tx)
    .await?;
    if updates.is_empty() {
        return Ok(Compacted {
            updates: 0,
            snapshot_bytes: snapshot.len(),
        });
    }
    let state = State::from_updates(
        std::iter::once(snapshot.as_slice()).chain(updates.iter().map(|u| u.data.as_slice())),
    )?;
    let encoded = state.encode();
    sqlx::query!(
        "UPDATE documents SET snapshot = $2, body_text = $3, compacted_at = now(), updated_at = now()
          WHERE id = $1",
        document_id,
        encoded,
        state.text()
    )
    .execute(&mut *tx)
    .await?;
    // Exactly the rows folded in: an update whose transaction commits after our read may have
    // a smaller id than the largest we saw, so "id <= max" could delete one never folded.
    let ids: Vec<i64> = updates.iter().map(|u| u.id).collect();
    sqlx::query!("DELETE FROM document_updates WHERE id = ANY($1)", &ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::debug!(
        updates = ids.len(),
        bytes = encoded.len(),
        "document compacted"
    );
    Ok(Compacted {
        updates: ids.len(),
        snapshot_bytes: encoded.len(),
    })
}

/// Requests a compaction of every document with updates older than a minute (the ones no
/// socket asked for, because the instance holding it died).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CompactIdle {}

impl Job for CompactIdle {
    const KIND: &'static str = "documents.compact_idle";
    type Deps = ();

    #[tracing::instrument(skip_all)]
    async fn perform(self, ctx: JobContext) -> anyhow::Result<Outcome> {
        let documents = sqlx::query_scalar!(
            "SELECT document_id FROM document_updates
              GROUP BY document_id HAVING min(created_at) < now() - interval '1 minute'
              LIMIT 1000"
        )
        .fetch_all(&ctx.pool)
        .await?;
        for &document_id in &documents {
            CompactDocument::request(&ctx.pool, document_id).await?;
        }
        Outcome::with_result(serde_json::json!({ "requested": documents.len() }))
    }
}
