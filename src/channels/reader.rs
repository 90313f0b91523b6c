//! The reader: one LISTEN connection per instance, reading new messages and fanning them out.
//!
//! A notification carries nothing; it only says "read". The reader reads the rows after its
//! cursor, on the LISTEN connection itself (a pool of one of its own, so an exhausted app pool
//! does not stop delivery), and hands each one with a local member to [`Local::fan_out`]. A message with
//! no member here is skipped before it is decoded.
//!
//! **No skipped ids.** Ids are drawn from a sequence when a message is inserted, but
//! transactions commit in any order: the reader may see id 12 before id 11 commits. Moving the
//! cursor to 12 would lose 11. So every id below the cursor that has not been seen is kept as a
//! *gap* and read again (`id = ANY(gaps)`) until it arrives — it is then delivered, late but
//! not lost — or is known never to arrive. The migration makes each transaction take its xid
//! before its message id, so the transaction that holds a gap got its xid before the reader
//! saw the gap. Right after seeing new gaps the reader takes an xid of its own (`horizon`),
//! which is therefore newer than every such transaction's; once a later snapshot's `xmin`
//! reaches it, all of them have ended, and a gap still missing was rolled back. A long
//! transaction elsewhere only delays forgetting gaps, never delivery.
//!
//! (Not the snapshot's `xmax`: since PostgreSQL 14 it is one past the latest *completed*
//! transaction, and a transaction that took its xid earlier can still be running at or above
//! it — a gap given up on that bound was a message lost under concurrent writers.)
//!
//! **History that changed under the reader.** With asynchronous replication a failover loses
//! the primary's last commits, and so does a crash under `synchronous_commit = off` (the
//! publisher's): messages this reader has read may not exist on the server it reconnects to,
//! and the sequence then hands their ids out again, to new messages. Left alone, those would
//! sit at or below the cursor and be skipped as delivered: lost. So the reader remembers the
//! `(id, created_at)` of the last [`RECENT`] rows it read, and after every reconnect (seen as
//! a new server session in the read's answer: sqlx reconnects a listener by itself) asks the
//! server which of them it still has, unchanged ([`resync`]). If some after the newest kept one
//! are gone, the cursor goes back to that one and reads on from there: every message the
//! server has above it was never delivered here (a reused id comes with a later `created_at`),
//! and nothing delivered is delivered again. Gap horizons are xids of the lost history, so the
//! gaps kept are given new ones. (A row a sequence gave out after the last one the new server
//! has replayed has a higher id than every row it has replayed, which is why going back to the
//! newest kept row is enough.)
//!
//! [`Local::fan_out`]: super::local::Local::fan_out

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use sqlx::{
    PgPool,
    postgres::{PgListener, PgPoolOptions},
};
use time::OffsetDateTime;

use super::{ChannelLayer, Delivery, NOTIFY_CHANNEL, TypeOnly, local};
use crate::db::failover::primary_only;

/// Most rows read in one statement; more are read at once in the next.
const FETCH_LIMIT: i64 = 2_000;
/// Most gaps tracked at once (below `FETCH_LIMIT`, so gap rows always fit in one read). Past it
/// the oldest are given up and counted.
const MAX_GAPS: usize = 1_000;
/// Rows whose `(id, created_at)` the reader keeps, to check after a reconnect that the server
/// still has them (see the module documentation): more than a failover loses unless the
/// standby was that many messages behind. 16 bytes each.
const RECENT: usize = 10_000;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where a new reader starts: after the newest message. Messages sent before this instance
/// had any member cannot be for its members.
async fn start_cursor(listener: &mut PgListener) -> Result<Cursor, sqlx::Error> {
    let newest: Option<(i64, OffsetDateTime)> =
        sqlx::query_as("SELECT id, created_at FROM channel_messages ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *listener)
            .await?;
    Ok(Cursor {
        after: newest.map_or(0, |(id, _)| id),
        gaps: BTreeMap::new(),
        // The row started after counts as read: if a failover loses it, its id comes again.
        recent: newest.into_iter().collect(),
        session: None,
    })
}

/// The reader's position: every id up to `after` was delivered or is in `gaps`.
struct Cursor {
    after: i64,
    /// Missing id → an xid newer than every transaction that could still write it: once a
    /// snapshot's `xmin` reaches it, the gap was rolled back. [`UNSET`] until the reader
    /// has taken that xid.
    gaps: BTreeMap<i64, i64>,
    /// `(id, created_at)` of the last [`RECENT`] rows read, oldest first.
    recent: VecDeque<(i64, OffsetDateTime)>,
    /// The server session of the last read (backend pid, server start): when it changes, the
    /// listener reconnected, however it did (sqlx reconnects a `PgListener` by itself).
    session: Option<(i32, OffsetDateTime)>,
}

/// The horizon of a gap just seen, before [`Cursor::set_horizon`]: never reached.
const UNSET: i64 = i64::MAX;

struct Row {
    id: i64,
    target: String,
    is_group: bool,
    payload: String,
}

pub(super) async fn run(layer: ChannelLayer) {
    let mut cursor = None;
    let shutdown = layer.inner.shutdown.clone();
    let poll = layer.inner.config.poll_interval;
    let mut backoff = MIN_BACKOFF;
    let mut connected_before = false;
    // A pool of one, apart from the app's: the LISTEN connection never takes a connection
    // requests need, and an exhausted app pool never stops delivery. A session of its own
    // (`HEARTH_DIRECT_DATABASE_URL`): a notification goes to the session that ran LISTEN.
    let options = layer.session_options();
    let own = primary_only(PgPoolOptions::new(), layer.session_setting())
        .max_connections(1)
        .min_connections(0)
        .connect_lazy_with(options);
    crate::db::failover::follow(&own);
    loop {
        let mut listener = match connect(&own, &mut cursor).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "channel layer cannot LISTEN");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let Some(cursor) = cursor.as_mut() else {
            continue;
        };
        if connected_before {
            layer.inner.stats.reconnected();
            tracing::info!("channel layer listening again; catching up from its cursor");
        }
        connected_before = true;
        backoff = MIN_BACKOFF;
        layer.inner.ready.send_replace(true);
        // Read first: whatever was sent while nobody listened is in the table.
        loop {
            if let Err(e) = read_all(&layer, &mut listener, cursor).await {
                tracing::warn!(error = %e, "channel layer lost its connection while reading");
                break;
            }
            let woken = tokio::select! {
                () = shutdown.cancelled() => return,
                woken = tokio::time::timeout(poll, listener.try_recv()) => woken,
            };
            match woken {
                // Notifications that arrived meanwhile are covered by the read that follows.
                Ok(Ok(Some(_))) => while listener.next_buffered().is_some() {},
                // Polling: a lost notification or a gap to settle.
                Err(_elapsed) => {}
                // The connection dropped; sqlx re-established it before returning.
                Ok(Ok(None)) => {
                    layer.inner.stats.reconnected();
                    tracing::info!("channel layer listening again; catching up from its cursor");
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "channel layer lost its LISTEN connection");
                    break;
                }
            }
        }
    }
}

/// A LISTEN connection; on the first one, also the starting cursor.
async fn connect(pool: &PgPool, cursor: &mut Option<Cursor>) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    if cursor.is_none() {
        *cursor = Some(start_cursor(&mut listener).await?);
    }
    Ok(listener)
}

/// Reads and delivers until a read returns fewer rows than the limit.
async fn read_all(
    layer: &ChannelLayer,
    listener: &mut PgListener,
    cursor: &mut Cursor,
) -> Result<(), sqlx::Error> {
    loop {
        let gaps: Vec<i64> = cursor.gaps.keys().copied().collect();
        let rows = sqlx::query!(
            r#"SELECT s.xmin AS "xmin!", s.pid AS "pid!", s.started AS "started!",
                      m.id AS "id?", m.target AS "target?", m.is_group AS "is_group?",
                      m.payload AS "payload?", m.created_at AS "created_at?"
               FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin,
                            pg_backend_pid() AS pid, pg_postmaster_start_time() AS started) s
               -- Two index range reads, not `id > $1 OR id = ANY($2)`: under a generic plan
               -- that `OR` walked the primary key from its first entry, every message kept.
               LEFT JOIN LATERAL (
                   (SELECT id, target, is_group, payload, created_at FROM channel_messages
                     WHERE id > $1 ORDER BY id LIMIT $3)
                   UNION ALL
                   (SELECT id, target, is_group, payload, created_at FROM channel_messages
                     WHERE id = ANY($2) AND id <= $1)
                   ORDER BY id LIMIT $3
               ) m ON true"#,
            cursor.after,
            &gaps,
            FETCH_LIMIT,
        )
        .fetch_all(&mut *listener)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let xmin = first.xmin;
        let session = (first.pid, first.started);
        if cursor
            .session
            .replace(session)
            .is_some_and(|last| last != session)
        {
            // Another session than the last read's: the listener reconnected, perhaps to
            // another server. Check the cursor against it before reading on.
            resync(listener, cursor).await?;
            continue;
        }
        let mut read = 0;
        let mut found = Vec::new();
        for row in rows {
            // All NULL on the row that says only the snapshot (no message read); all set on
            // the others (the columns are NOT NULL).
            let (Some(id), Some(target), Some(is_group), Some(payload), Some(created_at)) = (
                row.id,
                row.target,
                row.is_group,
                row.payload,
                row.created_at,
            ) else {
                continue;
            };
            read += 1;
            cursor.remember(id, created_at);
            found.push(Row {
                id,
                target,
                is_group,
                payload,
            });
        }
        let abandoned = cursor.advance(found.iter().map(|r| r.id), xmin);
        if abandoned > 0 {
            layer.inner.stats.gaps_abandoned(abandoned);
        }
        if cursor.gaps.values().any(|&h| h == UNSET) {
            // An xid of the reader's own, assigned now: newer than the xid of any transaction
            // that holds one of the new gaps (those took theirs before their message ids).
            let horizon =
                sqlx::query_scalar!(r#"SELECT pg_current_xact_id()::text::bigint AS "xid!""#)
                    .fetch_one(&mut *listener)
                    .await?;
            cursor.set_horizon(horizon);
        }
        for row in found {
            deliver(layer, row);
        }
        if read < FETCH_LIMIT as usize {
            return Ok(());
        }
    }
}

impl Cursor {
    /// Moves past the ids just read (in ascending order), records the ids skipped over as gaps
    /// (with an [`UNSET`] horizon) and forgets gaps known to be rolled back: those whose
    /// horizon the snapshot's `xmin` has reached. Returns how many gaps were given up.
    fn advance(&mut self, ids: impl Iterator<Item = i64>, xmin: i64) -> u64 {
        let mut abandoned = 0;
        // Gaps not read this time and whose possible writers have all ended.
        let mut seen = Vec::new();
        for id in ids {
            if id <= self.after {
                seen.push(id);
                continue;
            }
            let skipped = id - self.after - 1;
            if skipped > MAX_GAPS as i64 {
                abandoned += (skipped - MAX_GAPS as i64) as u64;
            }
            for missing in (id - skipped.min(MAX_GAPS as i64))..id {
                self.gaps.insert(missing, UNSET);
            }
            self.after = id;
        }
        for id in seen {
            self.gaps.remove(&id);
        }
        let before = self.gaps.len();
        self.gaps.retain(|_, horizon| xmin < *horizon);
        abandoned += (before - self.gaps.len()) as u64;
        while self.gaps.len() > MAX_GAPS {
            self.gaps.pop_first();
            abandoned += 1;
        }
        abandoned
    }
}

/// After a reconnect: checks that the server still has the rows read last, and if some after
/// the newest one it kept are gone (a failover or crash lost them), rewinds the cursor to that
/// one (see the module documentation).
async fn resync(listener: &mut PgListener, cursor: &mut Cursor) -> Result<(), sqlx::Error> {
    if cursor.recent.is_empty() {
        return Ok(());
    }
    let (ids, ats): (Vec<i64>, Vec<OffsetDateTime>) = cursor.recent.iter().copied().unzip();
    let kept: Option<i64> = sqlx::query_scalar(
        "SELECT max(r.id) FROM unnest($1::bigint[], $2::timestamptz[]) AS r(id, at)
          WHERE EXISTS (SELECT 1 FROM channel_messages m WHERE m.id = r.id AND m.created_at = r.at)",
    )
    .bind(&ids)
    .bind(&ats)
    .fetch_one(&mut *listener)
    .await?;
    let Some(rewound) = cursor.rewind(kept) else {
        return Ok(());
    };
    tracing::warn!(
        gone = rewound.gone,
        after = rewound.after,
        "{} channel messages this instance read are no longer in the database (a failover to a \
         standby that had not received them, a crash that lost commits, or pruning); reading \
         again after id {}, so messages that now have their ids are delivered",
        rewound.gone,
        rewound.after,
    );
    if rewound.unknown_before {
        tracing::error!(
            "none of the last {RECENT} channel messages read is in the database any more: \
             messages with lower ids sent since may not be delivered to this instance"
        );
    }
    Ok(())
}

/// What [`Cursor::rewind`] did.
struct Rewound {
    /// Rows read that the server no longer has (after the newest one it kept).
    gone: usize,
    /// The cursor's new position.
    after: i64,
    /// The server kept none of the rows remembered: what lies below them is not known.
    unknown_before: bool,
}

impl Cursor {
    /// Notes a row read, forgetting the oldest beyond [`RECENT`].
    fn remember(&mut self, id: i64, created_at: OffsetDateTime) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((id, created_at));
    }

    /// Moves the cursor back to `kept`, the newest remembered row the server still has, if any
    /// remembered row after it is gone; `None` if nothing is gone.
    fn rewind(&mut self, kept: Option<i64>) -> Option<Rewound> {
        let oldest = self.recent.iter().map(|&(id, _)| id).min()?;
        let after = kept.unwrap_or(oldest - 1);
        let gone = self.recent.iter().filter(|&&(id, _)| id > after).count();
        if gone == 0 {
            return None;
        }
        self.recent.retain(|&(id, _)| id <= after);
        self.after = self.after.min(after);
        // Gaps above are read again with everything else; those below wait for a horizon
        // taken on this server (the old ones are xids of the lost history).
        self.gaps.retain(|&id, _| id <= after);
        self.gaps.values_mut().for_each(|h| *h = UNSET);
        Some(Rewound {
            gone,
            after: self.after,
            unknown_before: kept.is_none(),
        })
    }

    /// Gives the gaps just seen their horizon.
    fn set_horizon(&mut self, horizon: i64) {
        for h in self.gaps.values_mut().filter(|h| **h == UNSET) {
            *h = horizon;
        }
    }
}

fn deliver(layer: &ChannelLayer, row: Row) {
    if !layer.inner.local.wants(&row.target, row.is_group) {
        return;
    }
    let kind = match serde_json::from_str::<TypeOnly>(&row.payload) {
        Ok(t) => t.kind,
        Err(e) => {
            return tracing::warn!(id = row.id, error = %e, "skipping a channel message without a type");
        }
    };
    let delivery = Arc::new(Delivery::new(
        row.id,
        row.target,
        row.is_group,
        kind,
        row.payload,
    ));
    if !delivery.is_group && local::apply_control(layer, &delivery) {
        return;
    }
    let fanout = layer.inner.local.fan_out(&delivery);
    layer
        .inner
        .stats
        .received(fanout.delivered, fanout.dropped_slow);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(after: i64) -> Cursor {
        Cursor {
            after,
            gaps: BTreeMap::new(),
            recent: VecDeque::new(),
            session: None,
        }
    }

    #[test]
    fn ids_skipped_over_become_gaps_until_they_arrive() {
        let mut c = cursor(10);
        assert_eq!(c.advance([11, 14].into_iter(), 100), 0);
        c.set_horizon(107);
        assert_eq!(c.after, 14);
        assert_eq!(c.gaps.keys().copied().collect::<Vec<_>>(), vec![12, 13]);
        // 13 commits late: read through the gap list, no longer missing.
        assert_eq!(c.advance([13].into_iter(), 101), 0);
        assert_eq!(c.gaps.keys().copied().collect::<Vec<_>>(), vec![12]);
    }

    #[test]
    fn a_gap_is_given_up_only_once_every_writer_that_could_fill_it_has_ended() {
        let mut c = cursor(0);
        c.advance([2].into_iter(), 100);
        // Before the reader took its xid, nothing is given up, whatever xmin says.
        assert_eq!(c.advance(std::iter::empty(), 1_000), 0);
        c.set_horizon(105);
        // xmin still below the horizon: id 1's transaction may be running.
        assert_eq!(c.advance(std::iter::empty(), 104), 0);
        assert!(c.gaps.contains_key(&1));
        // Every transaction older than 105 has ended and id 1 never appeared: rolled back.
        assert_eq!(c.advance(std::iter::empty(), 105), 1);
        assert!(c.gaps.is_empty());
    }

    #[test]
    fn a_later_gap_gets_its_own_horizon() {
        let mut c = cursor(0);
        c.advance([2].into_iter(), 100);
        c.set_horizon(105);
        c.advance([4].into_iter(), 103);
        c.set_horizon(110);
        assert_eq!(c.gaps.get(&1), Some(&105));
        assert_eq!(c.gaps.get(&3), Some(&110));
        assert_eq!(c.advance(std::iter::empty(), 106), 1);
        assert_eq!(c.gaps.keys().copied().collect::<Vec<_>>(), vec![3]);
    }

    fn at(second: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000 + second).unwrap()
    }

    #[test]
    fn a_cursor_whose_last_rows_are_gone_goes_back_to_the_newest_kept_one() {
        let mut c = cursor(10);
        c.advance([11, 12, 14, 15, 16].into_iter(), 100);
        c.set_horizon(110);
        for id in [11, 12, 14, 15, 16] {
            c.remember(id, at(id));
        }
        // The server has everything: nothing to do.
        assert!(c.rewind(Some(16)).is_none());
        // It kept up to 12: 14, 15 and 16 were lost, and their ids may come again.
        let rewound = c.rewind(Some(12)).unwrap();
        assert_eq!((rewound.gone, rewound.after, c.after), (3, 12, 12));
        // Gap 13 is read again as part of `id > 12`; the horizon of any older gap is retaken.
        assert!(c.gaps.is_empty());
        assert_eq!(
            c.recent.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![11, 12]
        );
        // Kept nothing that was remembered: back to before the oldest, and say so.
        let rewound = c.rewind(None).unwrap();
        assert_eq!((rewound.after, rewound.unknown_before), (10, true));
    }

    #[test]
    fn gaps_below_a_rewind_are_kept_and_wait_for_a_new_horizon() {
        let mut c = cursor(0);
        c.advance([2, 5].into_iter(), 100);
        c.set_horizon(105);
        c.remember(2, at(2));
        c.remember(5, at(5));
        c.rewind(Some(2)).unwrap();
        assert_eq!(c.gaps.get(&1), Some(&UNSET));
        assert!(!c.gaps.contains_key(&3));
        // The old server's xids say nothing here: no xmin gives the gap up before a new horizon.
        assert_eq!(c.advance(std::iter::empty(), 1_000_000), 0);
    }

    #[test]
    fn only_the_last_rows_read_are_remembered() {
        let mut c = cursor(0);
        for id in 1..=(RECENT as i64 + 5) {
            c.remember(id, at(0));
        }
        assert_eq!(c.recent.len(), RECENT);
        assert_eq!(c.recent.front().map(|r| r.0), Some(6));
    }

    #[test]
    fn huge_jumps_keep_a_bounded_number_of_gaps() {
        let mut c = cursor(0);
        let abandoned = c.advance([5_000].into_iter(), 1);
        assert_eq!(c.gaps.len(), MAX_GAPS);
        assert_eq!(abandoned, 4_999 - MAX_GAPS as u64);
        assert_eq!(c.gaps.keys().next(), Some(&(5_000 - MAX_GAPS as i64)));
    }
}
