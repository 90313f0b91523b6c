//! Message history: how long messages are kept, recovery of missed ones, and pruning.
//!
//! Every message stays in `channel_messages` for the default retention; a group can keep a
//! longer or shorter log with [`ChannelLayer::set_history`]. A client that reconnects with the
//! id of the last message it saw gets the ones after it from here
//! ([`Subscription::join_from`](super::Subscription::join_from)), or learns that some of them
//! were pruned ([`ChannelError::GapTooOld`]) — each prune records how far it went, so a gap is
//! never silently short.
//!
//! Pruning deletes in batches of [`PRUNE_BATCH`] rows (short transactions, no long locks),
//! driven by the housekeeping of one instance at a time.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;

use super::{ChannelError, ChannelLayer, Delivery, GroupName, TypeOnly};

/// Most missed messages recovered for one group; a client further behind reloads its state.
const RECOVERY_LIMIT: i64 = 1_000;
const PRUNE_BATCH: i64 = 5_000;
/// Batches per housekeeping round, so one round never runs for long.
const PRUNE_ROUNDS: usize = 20;

/// How much of a group's messages to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// Messages older than this are dropped.
    pub max_age: Duration,
    /// At most this many of the newest messages are kept.
    pub max_messages: i32,
}

impl ChannelLayer {
    /// Keeps `group`'s messages as `history` says instead of the default retention.
    pub async fn set_history(
        &self,
        group: &GroupName,
        history: History,
    ) -> Result<(), ChannelError> {
        if history.max_messages < 1 || history.max_age.is_zero() {
            return Err(ChannelError::InvalidMessage(
                "a history keeps at least one message for a non-zero time".into(),
            ));
        }
        sqlx::query!(
            "INSERT INTO channel_group_history (group_name, max_age, max_messages)
             VALUES ($1, make_interval(secs => $2), $3)
             ON CONFLICT (group_name) DO UPDATE
             SET max_age = excluded.max_age, max_messages = excluded.max_messages",
            group.as_str(),
            history.max_age.as_secs_f64(),
            history.max_messages,
        )
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    /// The messages sent to `group` after message `after`, oldest first; or
    /// [`ChannelError::GapTooOld`] if some were pruned or there are more than can be replayed.
    pub async fn history(
        &self,
        group: &GroupName,
        after: i64,
    ) -> Result<Vec<Arc<Delivery>>, ChannelError> {
        // One statement, one snapshot: a prune cannot slip between the mark and the rows.
        let rows = sqlx::query!(
            r#"WITH mark AS (
                   SELECT coalesce(h.pruned_through, p.pruned_through) AS through
                   FROM channel_prune_mark p
                   LEFT JOIN channel_group_history h ON h.group_name = $1
               )
               SELECT mark.through AS "through!", m.id AS "id?", m.payload AS "payload?"
               FROM mark LEFT JOIN LATERAL (
                   SELECT id, payload FROM channel_messages
                   WHERE target = $1 AND is_group AND id > $2
                   ORDER BY id LIMIT $3
               ) m ON true"#,
            group.as_str(),
            after,
            RECOVERY_LIMIT + 1,
        )
        .fetch_all(&self.inner.pool)
        .await?;
        let through = rows.first().map_or(0, |r| r.through);
        if after < through || rows.len() > RECOVERY_LIMIT as usize {
            return Err(ChannelError::GapTooOld {
                group: group.to_string(),
                after,
                pruned_through: through,
            });
        }
        let mut missed = Vec::with_capacity(rows.len());
        for row in rows {
            let (Some(id), Some(payload)) = (row.id, row.payload) else {
                continue;
            };
            let Ok(TypeOnly { kind }) = serde_json::from_str(&payload) else {
                continue;
            };
            missed.push(Arc::new(Delivery::new(
                id,
                group.to_string(),
                true,
                kind,
                payload,
            )));
        }
        Ok(missed)
    }
}

/// Deletes messages past their retention; returns how many.
#[tracing::instrument(skip(pool))]
pub(super) async fn prune(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    for _ in 0..PRUNE_ROUNDS {
        // Groups with their own history: by age and by count, each recording its mark.
        let by_group = sqlx::query_scalar!(
            r#"WITH doomed AS (
                   SELECT m.id FROM channel_group_history h
                   CROSS JOIN LATERAL (
                       SELECT id FROM channel_messages m
                       WHERE m.target = h.group_name AND m.is_group
                         AND (m.created_at < now() - h.max_age
                              OR m.id <= (SELECT x.id FROM channel_messages x
                                          WHERE x.target = h.group_name AND x.is_group
                                          ORDER BY x.id DESC
                                          OFFSET h.max_messages LIMIT 1))
                       LIMIT $1
                   ) m
               ), deleted AS (
                   DELETE FROM channel_messages WHERE id IN (SELECT id FROM doomed)
                   RETURNING id, target
               ), marked AS (
                   UPDATE channel_group_history h
                   SET pruned_through = greatest(h.pruned_through, d.through)
                   FROM (SELECT target, max(id) AS through FROM deleted GROUP BY target) d
                   WHERE h.group_name = d.target
               )
               SELECT count(*) AS "n!" FROM deleted"#,
            PRUNE_BATCH,
        )
        .fetch_one(pool)
        .await?;
        // Everything else: by the default retention, oldest first.
        let by_age = sqlx::query_scalar!(
            r#"WITH deleted AS (
                   DELETE FROM channel_messages WHERE id IN (
                       SELECT id FROM channel_messages m
                       WHERE m.created_at < now() - make_interval(secs => $1)
                         AND NOT (m.is_group AND EXISTS (
                             SELECT 1 FROM channel_group_history h
                             WHERE h.group_name = m.target))
                       ORDER BY m.created_at LIMIT $2)
                   RETURNING id
               ), marked AS (
                   UPDATE channel_prune_mark
                   SET pruned_through = greatest(pruned_through, (SELECT max(id) FROM deleted))
                   WHERE EXISTS (SELECT 1 FROM deleted)
               )
               SELECT count(*) AS "n!" FROM deleted"#,
            retention.as_secs_f64(),
            PRUNE_BATCH,
        )
        .fetch_one(pool)
        .await?;
        let n = (by_group + by_age) as u64;
        total += n;
        if by_group < PRUNE_BATCH && by_age < PRUNE_BATCH {
            break;
        }
    }
    if total > 0 {
        tracing::debug!(deleted = total, "pruned channel messages");
    }
    Ok(total)
}
