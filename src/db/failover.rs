//! Failover: connecting only to the primary, and following it when a standby is promoted.
//!
//! sqlx 0.9 takes one host per URL and has no `target_session_attrs`, so Hearth does what
//! libpq does with `target_session_attrs=read-write` itself:
//!
//! * **A standby is never used for writes.** Every pool that must reach the primary (the app's,
//!   the direct one, the job workers', the channel layer's and the workers' LISTEN pools; not
//!   the read replicas' of [`super::replicas`]) asks each new connection `pg_is_in_recovery()`
//!   ([`primary_only`]): a server in recovery is refused with a log line naming the setting,
//!   the pool retries, requests get 503 and `/readyz` says why.
//!   This covers a DNS name that (still) points at a standby as well as a single-host URL that
//!   names one; once the server is promoted, the next connection is accepted.
//! * **Several hosts.** `DATABASE_URL` (and `HEARTH_DIRECT_DATABASE_URL`) may list hosts as
//!   libpq does, `postgres://u@db1:5432,db2:5432/hearth`. [`split`] turns that into one URL per
//!   host; the pools start on the first, and one watcher per such URL ([`watch`]) keeps a
//!   connection to the current primary and asks it once a second (at once when a lost
//!   connection is noted, see [`super::lost`]) whether it still is one. When it does not answer
//!   or is in recovery, the watcher tries the hosts in order (every 200 ms until one is a
//!   primary) and re-points every pool that
//!   follows the URL at the first read-write one (`Pool::set_connect_options`: connections
//!   opened from then on go there; the old ones are dead with their server, and the pool drops
//!   them on their next use, see [`super::lost`]).
//!
//! Why one watcher that re-points pools, rather than each component finding the primary: the
//! app's pool, the direct pool, the job workers' pool, the channel layer's LISTEN and publisher
//! pools and the workers' LISTEN pool are each built once from options copied at start. Each of
//! them registers with [`follow`] (a no-op without several hosts), so one task and one
//! connection per URL decide where all of them go, and a component that connects later copies
//! options that are already right. Pipelined reads ([`super::Pipeline`]) use tokio-postgres,
//! which takes every host and `target_session_attrs` natively, so they need no watcher.
//!
//! What this cannot do: tell a promoted standby from an old primary that came back (split
//! brain). Keeping the old primary down, or out of the list, is the operator's fencing.

use std::{
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use sqlx::{
    Connection, PgConnection, PgPool, Row,
    pool::PoolConnectionMetadata,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;

/// How often the watcher asks the current primary whether it still is one.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Shortest pause between two scans, however many lost connections are noted meanwhile; and
/// how often the hosts are tried while none is a primary.
const MIN_PAUSE: Duration = Duration::from_millis(200);
/// How long connecting to one host and asking it may take before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the same refusal of a standby is logged again.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a database URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("the host list {0:?} has an empty entry")]
    EmptyHost(String),
    #[error(
        "target_session_attrs={0} is not supported: Hearth writes, so it always connects to the \
         read-write server (leave it out, or use read-write)"
    )]
    SessionAttrs(String),
}

impl From<UrlError> for sqlx::Error {
    fn from(error: UrlError) -> Self {
        sqlx::Error::Configuration(Box::new(error))
    }
}

/// The single-host URLs that a PostgreSQL URL names, in its order: one for a plain URL, one per
/// host for `postgres://user@h1:p1,h2:p2/db?...`. A `target_session_attrs` parameter (libpq's)
/// is checked and removed: `read-write` and `primary` are what Hearth always does.
pub fn split(url: &str) -> Result<Vec<String>, UrlError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(vec![url.to_owned()]);
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    let tail = without_session_attrs(tail)?;
    hosts
        .split(',')
        .map(|host| match host {
            "" if hosts.contains(',') => Err(UrlError::EmptyHost(hosts.to_owned())),
            host => Ok(format!("{scheme}://{userinfo}{host}{tail}")),
        })
        .collect()
}

/// `tail` (path, query, fragment) without `target_session_attrs`, once it is one Hearth obeys.
fn without_session_attrs(tail: &str) -> Result<String, UrlError> {
    let Some((path, rest)) = tail.split_once('?') else {
        return Ok(tail.to_owned());
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((query, fragment)) => (query, format!("#{fragment}")),
        None => (rest, String::new()),
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("target_session_attrs", "read-write" | "primary")) => {}
            Some(("target_session_attrs", other)) => {
                return Err(UrlError::SessionAttrs(other.to_owned()));
            }
            _ => kept.push(pair),
        }
    }
    Ok(match kept.is_empty() {
        true => format!("{path}{fragment}"),
        false => format!("{path}?{}{fragment}", kept.join("&")),
    })
}

/// `host:port` of options that connect over TCP; `None` for a Unix socket (the embedded
/// cluster, which has no standby).
fn address(options: &PgConnectOptions) -> Option<String> {
    match options.get_socket() {
        Some(_) => None,
        None => Some(format!("{}:{}", options.get_host(), options.get_port())),
    }
}

/// `pool`'s options with `to`'s host, port and TLS mode: everything else (user, database,
/// application name, session options such as the publisher's `synchronous_commit`) is kept.
fn repoint(pool: &PgPool, to: &PgConnectOptions) {
    let options = (*pool.connect_options())
        .clone()
        .host(to.get_host())
        .port(to.get_port())
        .ssl_mode(to.get_ssl_mode());
    pool.set_connect_options(options);
}

/// Pool options that refuse a server in recovery (see the module documentation), named by
/// `setting` in the log line.
pub fn primary_only(options: PgPoolOptions, setting: &'static str) -> PgPoolOptions {
    options.after_connect(move |conn, _meta: PoolConnectionMetadata| {
        Box::pin(refuse_standby(conn, setting))
    })
}

async fn refuse_standby(conn: &mut PgConnection, setting: &'static str) -> Result<(), sqlx::Error> {
    // A simple query, not a prepared one: it takes no name in the connection's statement cache
    // (nor, through a transaction pooler, on a server connection that others share).
    let row =
        sqlx::raw_sql("SELECT pg_is_in_recovery(), host(inet_server_addr()), inet_server_port()")
            .fetch_one(&mut *conn)
            .await?;
    if !row.try_get::<bool, _>(0)? {
        return Ok(());
    }
    let host: Option<String> = row.try_get(1)?;
    let port: Option<i32> = row.try_get(2)?;
    let server = match (host, port) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        _ => "the local socket".to_owned(),
    };
    let reason = format!(
        "the PostgreSQL server at {server} is in recovery (a read-only standby): {setting} must \
         lead to the primary. List the standby after the primary in {setting} \
         (postgres://user@primary:5432,standby:5432/db) to follow a failover; retrying"
    );
    note_refusal(&reason);
    WAKE.notify_waiters();
    Err(sqlx::Error::Configuration(reason.into()))
}

/// The last refusal of a standby: when, and the log line.
static REFUSED: Mutex<Option<(Instant, String)>> = Mutex::new(None);

/// Logs `reason` unless the same line was logged within [`LOG_EVERY`] (the pool retries many
/// times a second), and keeps it for [`standby_refused`].
fn note_refusal(reason: &str) {
    let mut last = REFUSED.lock().unwrap_or_else(|e| e.into_inner());
    let repeated = last
        .as_ref()
        .is_some_and(|(at, line)| line == reason && at.elapsed() < LOG_EVERY);
    if !repeated {
        tracing::error!("{reason}");
        *last = Some((Instant::now(), reason.to_owned()));
    }
}

/// Why connections were last refused, if within the last few seconds: `/readyz` shows it.
pub fn standby_refused() -> Option<String> {
    let last = REFUSED.lock().unwrap_or_else(|e| e.into_inner());
    last.as_ref()
        .filter(|(at, _)| at.elapsed() < LOG_EVERY * 2)
        .map(|(_, line)| line.clone())
}

/// Wakes the watchers: a lost connection or a refused standby was just seen.
static WAKE: LazyLock<tokio::sync::Notify> = LazyLock::new(tokio::sync::Notify::new);

/// Tells the watchers to check their primary now (called by [`super::lost`]).
pub(crate) fn wake() {
    WAKE.notify_waiters();
}

/// The watchers of this process, one per URL with several hosts.
static WATCHERS: Mutex<Vec<Arc<Watcher>>> = Mutex::new(Vec::new());

struct Watcher {
    /// The setting the hosts came from, for the log.
    setting: &'static str,
    /// One options per host, in the URL's order.
    hosts: Vec<PgConnectOptions>,
    /// Their `host:port`, to recognise a pool that follows this URL.
    addresses: Vec<String>,
    state: Mutex<State>,
    stop: CancellationToken,
}

struct State {
    /// Index of the host the pools use.
    current: usize,
    /// The pools that follow this URL (see [`follow`]).
    pools: Vec<PgPool>,
}

/// A running watcher; stopped when dropped (with the [`super::Database`] that holds it).
pub struct Watch(Arc<Watcher>);

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("setting", &self.0.setting)
            .field("hosts", &self.0.addresses)
            .finish()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.stop.cancel();
        let mut watchers = WATCHERS.lock().unwrap_or_else(|e| e.into_inner());
        watchers.retain(|w| !Arc::ptr_eq(w, &self.0));
    }
}

/// Starts following the primary among `hosts` (the URL of `setting`, split), if there are
/// several; the pools start on the first host and are moved once the watcher has looked.
pub fn watch(setting: &'static str, hosts: Vec<PgConnectOptions>) -> Option<Watch> {
    let addresses: Option<Vec<String>> = hosts.iter().map(address).collect();
    let addresses = addresses.filter(|a| a.len() > 1)?;
    let watcher = Arc::new(Watcher {
        setting,
        hosts,
        addresses,
        state: Mutex::new(State {
            current: 0,
            pools: Vec::new(),
        }),
        stop: CancellationToken::new(),
    });
    WATCHERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(watcher.clone());
    tokio::spawn(run(watcher.clone()));
    Some(Watch(watcher))
}

/// Makes `pool` follow the primary of the URL whose host it points at, if that URL lists several
/// hosts (otherwise nothing happens). A pool built after a failover from a followed pool's
/// options points at the new primary already; one built from the URL's first host is moved now.
pub fn follow(pool: &PgPool) {
    let Some(at) = address(&pool.connect_options()) else {
        return;
    };
    let watchers = WATCHERS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(watcher) = watchers.iter().find(|w| w.addresses.contains(&at)) else {
        return;
    };
    let mut state = watcher.state.lock().unwrap_or_else(|e| e.into_inner());
    if watcher.addresses[state.current] != at {
        repoint(pool, &watcher.hosts[state.current]);
    }
    state.pools.retain(|p| !p.is_closed());
    state.pools.push(pool.clone());
}

/// Whether the server is a primary: `Ok(true)`, a standby: `Ok(false)`.
async fn is_primary(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let row = sqlx::raw_sql("SELECT pg_is_in_recovery()")
        .fetch_one(conn)
        .await?;
    Ok(!row.try_get::<bool, _>(0)?)
}

/// A connection to `host` if it is a primary, or why not (for the log).
async fn open_primary(host: &PgConnectOptions) -> Result<PgConnection, String> {
    let attempt = async {
        let mut conn = PgConnection::connect_with(host).await?;
        Ok::<_, sqlx::Error>((is_primary(&mut conn).await?, conn))
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(Ok((true, conn))) => Ok(conn),
        Ok(Ok((false, _))) => Err("in recovery".to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

async fn run(watcher: Arc<Watcher>) {
    let mut probe: Option<PgConnection> = None;
    // Since when no primary has been found, and when that was last logged.
    let mut lost_since: Option<Instant> = None;
    let mut reported: Option<Instant> = None;
    loop {
        let alive = match probe.as_mut() {
            Some(conn) => matches!(
                tokio::time::timeout(PROBE_TIMEOUT, is_primary(conn)).await,
                Ok(Ok(true))
            ),
            None => false,
        };
        if !alive {
            probe = None;
            let since = *lost_since.get_or_insert_with(Instant::now);
            match scan(&watcher).await {
                Ok((index, conn)) => {
                    probe = Some(conn);
                    (lost_since, reported) = (None, None);
                    watcher.settle(index, since);
                }
                Err(why) if reported.is_none_or(|at| at.elapsed() >= LOG_EVERY) => {
                    reported = Some(Instant::now());
                    watcher.report(&why, since);
                }
                Err(_) => {}
            }
        }
        // While no primary answers, look again soon: a promotion is a matter of seconds.
        let every = if lost_since.is_some() {
            MIN_PAUSE
        } else {
            PROBE_EVERY
        };
        let pause = tokio::time::sleep(MIN_PAUSE);
        tokio::select! {
            () = watcher.stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
            () = async { pause.await; WAKE.notified().await } => {}
        }
    }
}

/// The first host, in the URL's order, that is a primary; the current one first, so that a
/// primary that answers is kept (libpq's order applies when the current one is gone).
async fn scan(watcher: &Watcher) -> Result<(usize, PgConnection), Vec<String>> {
    let current = watcher.current();
    let order = std::iter::once(current).chain((0..watcher.hosts.len()).filter(|&i| i != current));
    let mut why = Vec::new();
    for index in order {
        match open_primary(&watcher.hosts[index]).await {
            Ok(conn) => return Ok((index, conn)),
            Err(e) => why.push(format!("{}: {e}", watcher.addresses[index])),
        }
    }
    Err(why)
}

impl Watcher {
    fn current(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).current
    }

    /// Points the pools at host `index`, the primary found after looking since `since`.
    fn settle(&self, index: usize, since: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let was = std::mem::replace(&mut state.current, index);
        state.pools.retain(|p| !p.is_closed());
        if was == index {
            return;
        }
        for pool in &state.pools {
            repoint(pool, &self.hosts[index]);
        }
        // Connections idle in the pools lead to the old primary: have them checked before use.
        super::lost::note();
        tracing::warn!(
            setting = self.setting,
            primary = %self.addresses[index],
            was = %self.addresses[was],
            pools = state.pools.len(),
            searched_for = ?since.elapsed(),
            "{}: the primary is now {} (was {}); following it",
            self.setting,
            self.addresses[index],
            self.addresses[was],
        );
    }

    /// Logs that no host is a primary (the caller logs it once every [`LOG_EVERY`]).
    fn report(&self, why: &[String], since: Instant) {
        tracing::error!(
            setting = self.setting,
            searching_for = ?since.elapsed(),
            "{}: none of its {} hosts is a read-write primary ({}); trying again",
            self.setting,
            self.hosts.len(),
            why.join("; "),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_list_becomes_one_url_per_host() {
        assert_eq!(
            split("postgres://u:p%40w@a:5432,b:5433,[::1]:5434/db?sslmode=disable").unwrap(),
            vec![
                "postgres://u:p%40w@a:5432/db?sslmode=disable",
                "postgres://u:p%40w@b:5433/db?sslmode=disable",
                "postgres://u:p%40w@[::1]:5434/db?sslmode=disable",
            ]
        );
        assert_eq!(
            split("postgres://u@db/hearth").unwrap(),
            vec!["postgres://u@db/hearth"]
        );
        assert_eq!(
            split("postgres://a,b").unwrap(),
            vec!["postgres://a", "postgres://b"]
        );
    }

    #[test]
    fn target_session_attrs_is_checked_and_removed() {
        assert_eq!(
            split("postgres://u@a,b/db?target_session_attrs=read-write&sslmode=require").unwrap(),
            vec![
                "postgres://u@a/db?sslmode=require",
                "postgres://u@b/db?sslmode=require"
            ]
        );
        assert_eq!(
            split("postgres://u@a/db?target_session_attrs=primary").unwrap(),
            vec!["postgres://u@a/db"]
        );
        let refused = split("postgres://u@a,b/db?target_session_attrs=any").unwrap_err();
        assert!(refused.to_string().contains("read-write"), "{refused}");
        assert!(matches!(
            split("postgres://u@a,,b/db"),
            Err(UrlError::EmptyHost(_))
        ));
    }
}
