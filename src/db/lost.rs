//! Lost connections: telling them from a query's own failure, and clearing the dead ones a
//! database cut leaves in the pool.
//!
//! When PostgreSQL ends every session (a restart, a failover, `pg_terminate_backend`), each
//! idle pooled connection is dead, but the pool cannot know before it uses one: Hearth does not
//! ping before every acquire (a round trip on every query, see [`super::pool_options`]). So each
//! dead connection used to fail a request of its own, up to the pool's size per cut (3–5
//! `/readyz` 503s in the fault tests). Now the first error that shows a lost connection is
//! noted ([`connection_lost`]), and from then on every connection that was already idle at that
//! moment is pinged once before it is lent again ([`check_idle`], the pool's `before_acquire`):
//! the dead ones are dropped and replaced by fresh ones, and a cut costs the queries that were
//! in flight and the one that found it. The check costs one atomic read per acquire otherwise.

use std::{
    sync::{
        LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use futures::future::BoxFuture;
use sqlx::{Connection, PgConnection, pool::PoolConnectionMetadata, postgres::PgDatabaseError};

/// The process's reference point for [`LOST_AT`].
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// When a lost connection was last seen, in microseconds since [`EPOCH`] plus one (zero: never).
/// One for the process, not per pool: a cut ends every session at once, and a needless ping of
/// a live connection after a false alarm costs a round trip, once.
static LOST_AT: AtomicU64 = AtomicU64::new(0);

fn now_us() -> u64 {
    EPOCH.elapsed().as_micros().min(u128::from(u64::MAX - 1)) as u64 + 1
}

/// Whether `error` says the connection is gone (a broken socket, a session the server ended:
/// SQLSTATE class 08, `57P0x` or a `FATAL`), as opposed to the statement's own failure. If it
/// is, the pool's idle connections are checked before they are lent again (see the module
/// documentation).
pub fn connection_lost(error: &sqlx::Error) -> bool {
    let lost = match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or_default();
            code.starts_with("08")
                || code.starts_with("57P")
                || db.try_downcast_ref::<PgDatabaseError>().is_some_and(|pg| {
                    matches!(
                        pg.severity(),
                        sqlx::postgres::PgSeverity::Fatal | sqlx::postgres::PgSeverity::Panic
                    )
                })
        }
        _ => false,
    };
    if lost {
        note();
        // With several hosts in the URL, the cut may be a failover: look for the primary now.
        super::failover::wake();
    }
    lost
}

/// Notes a loss without an error to show for it (the failover watcher moved the pools, so
/// their idle connections lead to the old primary).
pub(crate) fn note() {
    LOST_AT.fetch_max(now_us(), Ordering::Relaxed);
}

/// Whether `error` means the database cannot be reached right now (a lost connection, or no
/// connection to be had within the acquire timeout): a reason to answer "try again shortly",
/// not a bug. Notes lost connections as [`connection_lost`] does.
pub fn unavailable(error: &sqlx::Error) -> bool {
    connection_lost(error) || matches!(error, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
}

/// The pool's `before_acquire`: a connection idle since before the last lost connection was
/// seen may have been cut with it, so it is pinged; if the ping fails, the pool drops it and
/// opens another. Any other connection is lent without a round trip.
pub fn check_idle(
    conn: &mut PgConnection,
    meta: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if idle_since_loss(meta.idle_for.as_micros()) {
            conn.ping().await?;
        }
        Ok(true)
    })
}

/// Whether a connection idle for `idle_for_us` went idle at or before the last noted loss.
fn idle_since_loss(idle_for_us: u128) -> bool {
    let lost = LOST_AT.load(Ordering::Relaxed);
    lost != 0 && now_us().saturating_sub(idle_for_us.min(u128::from(u64::MAX)) as u64) <= lost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_idle_before_the_loss_are_checked() {
        connection_lost(&sqlx::Error::Io(std::io::ErrorKind::BrokenPipe.into()));
        std::thread::sleep(std::time::Duration::from_millis(5));
        // Idle for an hour: it was idle when the loss was seen.
        assert!(idle_since_loss(3_600_000_000));
        // Just released: it was in use (and pinged on release) after the loss.
        assert!(!idle_since_loss(0));
        assert!(!connection_lost(&sqlx::Error::RowNotFound));
        assert!(unavailable(&sqlx::Error::PoolTimedOut));
    }
}
