//! The publisher: one task per instance that writes this process's sends in batches.
//!
//! A transaction that issues NOTIFY takes a cluster-wide lock at commit. One NOTIFY per message
//! is what makes naive LISTEN/NOTIFY layers collapse at high rates; here every send waiting when
//! the task comes round goes into one `INSERT ... SELECT FROM unnest(...)` statement with one
//! `pg_notify` — so the busier the layer, the larger the batches and the fewer the commits.

use std::sync::Arc;

use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::sync::{mpsc, oneshot};

use super::{ChannelError, ChannelLayer};
use crate::db::failover::primary_only;

/// Sends waiting for the publisher before `send` callers wait for room (backpressure).
pub(super) const QUEUE: usize = 10_000;
/// Most messages in one statement.
const MAX_BATCH: usize = 1_000;

pub(super) struct Publish {
    pub target: String,
    pub is_group: bool,
    pub payload: String,
    pub done: oneshot::Sender<Result<i64, ChannelError>>,
}

pub(super) async fn run(layer: ChannelLayer, mut requests: mpsc::Receiver<Publish>) {
    tokio::select! {
        () = layer.ready() => {}
        () = layer.inner.shutdown.cancelled() => return,
    }
    // A connection of its own, committing without waiting for the WAL flush: a channel
    // layer delivers at most once (Channels over Redis does not fsync either), and the flush
    // is most of a publish's latency. A Postgres crash can lose the last moments of messages;
    // it cannot reorder or corrupt them. Sends inside the caller's transaction keep its
    // durability. A setting of the session, so over the direct URL: PgBouncer refuses (or,
    // told to ignore it, drops) the `options` startup parameter.
    let options = layer
        .session_options()
        .options([("synchronous_commit", "off")]);
    let pool = primary_only(PgPoolOptions::new(), layer.session_setting())
        .max_connections(1)
        .min_connections(0)
        .connect_lazy_with(options);
    crate::db::failover::follow(&pool);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            n = requests.recv_many(&mut batch, MAX_BATCH) => if n == 0 { return },
            () = layer.inner.shutdown.cancelled() => {
                // Write what was already accepted, then refuse new sends.
                requests.close();
                while requests.recv_many(&mut batch, MAX_BATCH).await > 0 {
                    write(&layer, &pool, &mut batch).await;
                }
                return;
            }
        }
        write(&layer, &pool, &mut batch).await;
    }
}

#[tracing::instrument(skip_all, fields(messages = batch.len()))]
async fn write(layer: &ChannelLayer, pool: &PgPool, batch: &mut Vec<Publish>) {
    let (mut targets, mut groups, mut payloads) = (
        Vec::with_capacity(batch.len()),
        Vec::with_capacity(batch.len()),
        Vec::with_capacity(batch.len()),
    );
    for publish in batch.iter_mut() {
        targets.push(std::mem::take(&mut publish.target));
        groups.push(publish.is_group);
        payloads.push(std::mem::take(&mut publish.payload));
    }
    // Ids are drawn in the order of the rows (`ORDER BY n`), so the sorted ids line up with
    // the batch.
    let result = sqlx::query_scalar!(
        r#"WITH sent AS (
               INSERT INTO channel_messages (target, is_group, payload)
               SELECT target, is_group, payload
               FROM unnest($1::text[], $2::bool[], $3::text[]) WITH ORDINALITY
                    AS m(target, is_group, payload, n)
               ORDER BY n
               RETURNING id
           )
           SELECT sent.id AS "id!" FROM sent, pg_notify('hearth_channels', '')"#,
        &targets,
        &groups,
        &payloads,
    )
    .fetch_all(pool)
    .await;
    match result {
        Ok(mut ids) => {
            ids.sort_unstable();
            layer.inner.stats.published(ids.len() as u64);
            for (publish, id) in batch.drain(..).zip(ids) {
                let _ = publish.done.send(Ok(id));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot write channel messages");
            let e = Arc::new(e);
            for publish in batch.drain(..) {
                let _ = publish.done.send(Err(ChannelError::Publish(e.clone())));
            }
        }
    }
}
