//! Read replicas: hot standbys (`HEARTH_READ_DATABASE_URL`) for the reads that may lag.
//!
//! Each replica gets a small pool, connected lazily, and a monitor checks every replica each
//! `HEARTH_READ_CHECK_INTERVAL` over a connection of its own (so a busy pool never makes a
//! healthy replica look down): whether it is in recovery, how far it has replayed
//! (`pg_last_wal_replay_lsn()`), and, against the primary's `pg_current_wal_lsn()` sampled
//! in the same round, how far behind it is in bytes and in seconds. A replica is used only
//! while it answers, is a standby of the same cluster and lags at most `HEARTH_READ_MAX_LAG`;
//! otherwise it is skipped with one log line per change of state, and its reads go to the
//! primary. Nothing is ever refused for want of a replica.
//!
//! The lag in seconds is how long ago the primary first wrote WAL the replica has not
//! replayed: 0 when the replica has replayed all the primary had written, however long the
//! primary has been idle (`now() - pg_last_xact_replay_timestamp()`, the usual figure, grows
//! without bound on an idle primary and would skip a replica that is fully caught up). The
//! monitor keeps the primary's positions of the last rounds ([`History`]) to tell it, to the
//! check interval.
//!
//! Which reads may lag, read-your-writes and the cache rule are the web layer's
//! (`web::replicas`); this module only says which pool may serve a read that must have seen a
//! given WAL position ([`Replicas::reader`]).

use std::{
    collections::VecDeque,
    fmt,
    str::FromStr,
    sync::{
        Arc, RwLock, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{Connection, PgConnection, PgPool, postgres::PgConnectOptions};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::DbSettings;

/// Why the read replicas could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(
        "HEARTH_READ_DATABASE_URL's URL number {number} is not a valid PostgreSQL URL: {source}"
    )]
    InvalidUrl {
        number: usize,
        #[source]
        source: sqlx::Error,
    },
}

/// A position in the write-ahead log (`pg_lsn`): `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(u64);

impl Lsn {
    /// Past every real position: a read that must have seen it goes to the primary.
    pub const MAX: Self = Self(u64::MAX);

    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// What is not a WAL position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a WAL position (two groups of 1 to 8 hex digits around a `/`)")]
pub struct LsnError;

impl FromStr for Lsn {
    type Err = LsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (high, low) = s.split_once('/').ok_or(LsnError)?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(LsnError);
            }
            u32::from_str_radix(part, 16).map_err(|_| LsnError)
        };
        Ok(Self(u64::from(half(high)?) << 32 | u64::from(half(low)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The primary's WAL insert position now: every transaction committed before this call is at
/// or before it, so a replica that has replayed it shows their writes. One query.
pub async fn write_position(primary: &PgPool) -> Result<Lsn, sqlx::Error> {
    let text: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(primary)
        .await?;
    text.parse()
        .map_err(|e: LsnError| sqlx::Error::Decode(Box::new(e)))
}

/// Where a replica stands, as the last check saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaState {
    /// Not checked yet: skipped until it is.
    Unchecked,
    /// Takes reads.
    InUse,
    /// Skipped: further behind the primary than the bound, or nothing replayed yet.
    Lagging,
    /// Skipped: not in recovery, so a primary (a URL naming the primary, or a promoted
    /// standby), whose data may not be the primary's.
    NotAStandby,
    /// Skipped: a standby of another cluster (its system identifier is not the primary's).
    OtherCluster,
    /// Skipped: no connection, or no answer in time.
    Down(String),
}

impl ReplicaState {
    pub fn in_use(&self) -> bool {
        matches!(self, Self::InUse)
    }

    /// Whether `other` is the same state, whatever the detail (an error's wording).
    fn same_kind(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// One replica as the last check saw it: what `/metrics` and `/ops` show.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    /// `host:port` of its URL.
    pub name: String,
    pub state: ReplicaState,
    /// How far it has replayed.
    pub replayed: Option<Lsn>,
    /// Bytes of WAL the primary has written that it has not replayed.
    pub lag_bytes: Option<u64>,
    /// How long ago the primary wrote the oldest WAL it has not replayed (0: caught up).
    pub lag: Option<Duration>,
    /// Reads it took since start.
    pub reads: u64,
}

impl ReplicaStatus {
    /// The state in words, for `/ops`: "in use", or "skipped: why".
    pub fn describe(&self, max_lag: Duration) -> String {
        match &self.state {
            ReplicaState::Unchecked => "skipped: not checked yet".into(),
            ReplicaState::InUse => "in use".into(),
            ReplicaState::Lagging => match self.lag {
                Some(lag) => format!(
                    "skipped: {:.1} s behind (bound {:.1} s)",
                    lag.as_secs_f64(),
                    max_lag.as_secs_f64()
                ),
                None => {
                    "skipped: its lag is unknown (nothing replayed, or the primary never answered)"
                        .into()
                }
            },
            ReplicaState::NotAStandby => {
                "skipped: not in recovery (a primary, not a standby)".into()
            }
            ReplicaState::OtherCluster => "skipped: a standby of another cluster".into(),
            ReplicaState::Down(why) => format!("skipped: down ({why})"),
        }
    }
}

/// What the last check found, kept per replica.
#[derive(Debug, Clone)]
struct Seen {
    state: ReplicaState,
    replayed: Option<Lsn>,
    lag_bytes: Option<u64>,
    lag: Option<Duration>,
}

struct Replica {
    name: String,
    options: PgConnectOptions,
    pool: PgPool,
    seen: RwLock<Seen>,
    reads: AtomicU64,
}

impl Replica {
    fn seen(&self) -> Seen {
        self.seen
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Reads that went to the primary although replicas are configured, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrimaryReads {
    /// The client wrote, and no replica in use had replayed its write yet.
    pub own_write: u64,
    /// The response may be stored in a shared cache: rendered from the primary.
    pub cache_fill: u64,
    /// No replica was in use.
    pub no_replica: u64,
}

struct Inner {
    replicas: Vec<Replica>,
    max_lag: Duration,
    /// Round-robin start among the replicas.
    next: AtomicUsize,
    own_write: AtomicU64,
    cache_fill: AtomicU64,
    no_replica: AtomicU64,
    /// Rounds of checks completed, for [`Replicas::checked`].
    rounds: watch::Sender<u64>,
    stop: CancellationToken,
    /// Stops the monitor when the last handle goes.
    _stop_on_drop: DropGuard,
}

/// The read replicas and the primary: cheap to clone. Without `HEARTH_READ_DATABASE_URL`,
/// every read is the primary's and nothing runs.
#[derive(Clone)]
pub struct Replicas {
    primary: PgPool,
    inner: Option<Arc<Inner>>,
}

/// A pool chosen for a read, and whether it is a replica's.
#[derive(Debug, Clone)]
pub struct Reader {
    pub pool: PgPool,
    pub replica: bool,
}

impl Replicas {
    /// No replicas: every read goes to `primary`.
    pub fn none(primary: PgPool) -> Self {
        Self {
            primary,
            inner: None,
        }
    }

    /// The replicas `settings` name, with their monitor started (in the current Tokio
    /// runtime); nothing is connected until the first check. A URL that does not parse is an
    /// error, so that `serve` refuses to start rather than run without the replica meant.
    pub fn start(settings: &DbSettings, primary: PgPool) -> Result<Self, ReplicaError> {
        let urls = settings.read_urls();
        if urls.is_empty() {
            return Ok(Self::none(primary));
        }
        let mut replicas: Vec<Replica> = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            let options = super::url_options(url)
                .map_err(|e| match e {
                    super::OpenError::InvalidUrl(source) => ReplicaError::InvalidUrl {
                        number: i + 1,
                        source,
                    },
                    other => ReplicaError::InvalidUrl {
                        number: i + 1,
                        source: sqlx::Error::Configuration(other.to_string().into()),
                    },
                })?
                .application_name("hearth");
            let mut name = format!("{}:{}", options.get_host(), options.get_port());
            if replicas.iter().any(|r| r.name == name) {
                name = format!("{name}/{}", options.get_database().unwrap_or_default());
            }
            let pool = super::pool_options(settings)
                .min_connections(0)
                .connect_lazy_with(options.clone());
            replicas.push(Replica {
                name,
                options,
                pool,
                seen: RwLock::new(Seen {
                    state: ReplicaState::Unchecked,
                    replayed: None,
                    lag_bytes: None,
                    lag: None,
                }),
                reads: AtomicU64::new(0),
            });
        }
        let stop = CancellationToken::new();
        let inner = Arc::new(Inner {
            replicas,
            max_lag: settings.read_max_lag,
            next: AtomicUsize::new(0),
            own_write: AtomicU64::new(0),
            cache_fill: AtomicU64::new(0),
            no_replica: AtomicU64::new(0),
            rounds: watch::Sender::new(0),
            stop: stop.clone(),
            _stop_on_drop: stop.clone().drop_guard(),
        });
        let monitor = Monitor {
            inner: Arc::downgrade(&inner),
            primary: primary.clone(),
            history: History::new(history_window(settings.read_max_lag)),
            connections: (0..inner.replicas.len()).map(|_| None).collect(),
            primary_system: None,
            primary_failing: false,
            timeout: check_timeout(settings),
        };
        tokio::spawn(monitor.run(stop, settings.read_check_interval));
        Ok(Self {
            primary,
            inner: Some(inner),
        })
    }

    /// Whether any replica is configured.
    pub fn is_configured(&self) -> bool {
        self.inner.is_some()
    }

    /// The primary's pool.
    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// The pool for a read that may lag: a replica in use, in turn, that has replayed
    /// `replayed` when given (the client's last write: read-your-writes), else the primary.
    /// A replica's position is the one its last check saw, so a write is read from the
    /// primary until a check has seen a replica past it. Costs a lock read per replica.
    pub fn reader(&self, replayed: Option<Lsn>) -> Reader {
        let Some(inner) = &self.inner else {
            return self.primary_reader();
        };
        let n = inner.replicas.len();
        let start = inner.next.fetch_add(1, Ordering::Relaxed);
        let mut any_in_use = false;
        for i in 0..n {
            let replica = &inner.replicas[(start + i) % n];
            let seen = replica
                .seen
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !seen.state.in_use() {
                continue;
            }
            any_in_use = true;
            if replayed.is_none_or(|lsn| seen.replayed.is_some_and(|r| r >= lsn)) {
                replica.reads.fetch_add(1, Ordering::Relaxed);
                return Reader {
                    pool: replica.pool.clone(),
                    replica: true,
                };
            }
        }
        let reason = if any_in_use {
            &inner.own_write
        } else {
            &inner.no_replica
        };
        reason.fetch_add(1, Ordering::Relaxed);
        self.primary_reader()
    }

    /// The primary, for a read whose answer may be stored in a shared cache (counted).
    pub fn cache_fill(&self) -> Reader {
        if let Some(inner) = &self.inner {
            inner.cache_fill.fetch_add(1, Ordering::Relaxed);
        }
        self.primary_reader()
    }

    fn primary_reader(&self) -> Reader {
        Reader {
            pool: self.primary.clone(),
            replica: false,
        }
    }

    /// Every replica as the last check saw it, in the order of `HEARTH_READ_DATABASE_URL`.
    pub fn statuses(&self) -> Vec<ReplicaStatus> {
        let Some(inner) = &self.inner else {
            return Vec::new();
        };
        inner
            .replicas
            .iter()
            .map(|replica| {
                let seen = replica.seen();
                ReplicaStatus {
                    name: replica.name.clone(),
                    state: seen.state,
                    replayed: seen.replayed,
                    lag_bytes: seen.lag_bytes,
                    lag: seen.lag,
                    reads: replica.reads.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Reads that went to the primary although replicas are configured.
    pub fn primary_reads(&self) -> PrimaryReads {
        let Some(inner) = &self.inner else {
            return PrimaryReads::default();
        };
        PrimaryReads {
            own_write: inner.own_write.load(Ordering::Relaxed),
            cache_fill: inner.cache_fill.load(Ordering::Relaxed),
            no_replica: inner.no_replica.load(Ordering::Relaxed),
        }
    }

    /// `HEARTH_READ_MAX_LAG`.
    pub fn max_lag(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(Duration::ZERO, |inner| inner.max_lag)
    }

    /// Waits until the monitor completes its next round of checks (at once without replicas).
    pub async fn checked(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        let mut rounds = inner.rounds.subscribe();
        let _ = rounds.changed().await;
    }

    /// Stops the monitor and closes the replicas' pools.
    pub async fn close(&self) {
        if let Some(inner) = &self.inner {
            inner.stop.cancel();
            for replica in &inner.replicas {
                replica.pool.close().await;
            }
        }
    }
}

/// Longest a check may take before the replica counts as down: as long as a request waits for
/// a connection (`HEARTH_DB_ACQUIRE_TIMEOUT`, a replica slower than that fails requests anyway),
/// at least the check interval and 2 s, so that a busy machine does not mark a live replica
/// down.
fn check_timeout(settings: &DbSettings) -> Duration {
    settings
        .db_acquire_timeout
        .max(settings.read_check_interval)
        .max(Duration::from_secs(2))
}

/// How far back the monitor keeps the primary's positions: a replica behind all of them is
/// reported as far behind as the oldest, which is past the bound.
fn history_window(max_lag: Duration) -> Duration {
    (max_lag * 3).max(Duration::from_secs(30))
}

/// The primary's WAL positions of the last rounds, oldest first.
struct History {
    window: Duration,
    samples: VecDeque<(Instant, Lsn)>,
}

impl History {
    fn new(window: Duration) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
        }
    }

    fn push(&mut self, at: Instant, lsn: Lsn) {
        self.samples.push_back((at, lsn));
        while self.samples.len() > 1
            && self
                .samples
                .front()
                .is_some_and(|(then, _)| at.duration_since(*then) > self.window)
        {
            self.samples.pop_front();
        }
    }

    /// The primary's latest known position.
    fn latest(&self) -> Option<Lsn> {
        self.samples.back().map(|(_, lsn)| *lsn)
    }

    /// How long ago the primary first held WAL past `replayed`: zero when `replayed` is at or
    /// past its latest position, else the age of the oldest sample past it (a lower bound, to
    /// the check interval). `None` before the primary's first sample.
    fn lag(&self, replayed: Lsn, now: Instant) -> Option<Duration> {
        let latest = self.latest()?;
        if replayed >= latest {
            return Some(Duration::ZERO);
        }
        self.samples
            .iter()
            .find(|(_, lsn)| *lsn > replayed)
            .map(|(at, _)| now.saturating_duration_since(*at))
    }
}

/// What one check of a replica read.
struct Probe {
    in_recovery: bool,
    replayed: Option<Lsn>,
    /// Its cluster's system identifier, when this role may read it.
    system: Option<i64>,
}

/// The monitor's own state, owned by its task.
struct Monitor {
    inner: Weak<Inner>,
    primary: PgPool,
    history: History,
    /// One connection per replica (with its system identifier), made again after an error.
    connections: Vec<Option<(PgConnection, Option<i64>)>>,
    /// The primary's system identifier, once read.
    primary_system: Option<i64>,
    /// Whether the last sample of the primary failed (logged once per failure spell).
    primary_failing: bool,
    /// Longest a check may take.
    timeout: Duration,
}

impl Monitor {
    async fn run(mut self, stop: CancellationToken, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let Some(inner) = self.inner.upgrade() else {
                break;
            };
            self.round(&inner).await;
            inner.rounds.send_modify(|n| *n += 1);
        }
        for (connection, _) in self.connections.into_iter().flatten() {
            let _ = connection.close().await;
        }
    }

    /// One round: the primary's position, then every replica at once, then their states.
    async fn round(&mut self, inner: &Inner) {
        self.sample_primary().await;
        let timeout = self.timeout;
        let probes = inner
            .replicas
            .iter()
            .zip(self.connections.iter_mut())
            .map(|(replica, connection)| probe(&replica.options, connection, timeout));
        let probes = futures::future::join_all(probes).await;
        let now = Instant::now();
        for (replica, probe) in inner.replicas.iter().zip(probes) {
            let before = replica.seen();
            let seen = self.judge(probe, &before, inner.max_lag, now);
            if !seen.state.same_kind(&before.state) {
                log_change(&replica.name, &seen, inner.max_lag);
            }
            *replica
                .seen
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = seen;
        }
    }

    /// Records the primary's WAL position (and, once, its system identifier).
    async fn sample_primary(&mut self) {
        let sampled = async {
            let text: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
                .fetch_one(&self.primary)
                .await?;
            text.parse::<Lsn>()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))
        };
        match tokio::time::timeout(self.timeout, sampled).await {
            Ok(Ok(lsn)) => {
                self.history.push(Instant::now(), lsn);
                if self.primary_failing {
                    tracing::info!("the primary answers the replica monitor again");
                }
                self.primary_failing = false;
            }
            failed => {
                if !self.primary_failing {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no answer in time".to_owned(),
                    };
                    tracing::warn!(%error, "the replica monitor cannot read the primary's WAL position: replicas' lag is measured against its last known position");
                }
                self.primary_failing = true;
            }
        }
        if self.primary_system.is_none() {
            self.primary_system = system_identifier(&self.primary).await;
        }
    }

    /// A replica's state from its probe. A lagging replica takes reads again only once its
    /// lag is back under half the bound, so that one hovering at the bound does not flap.
    fn judge(
        &self,
        probe: Result<Probe, String>,
        before: &Seen,
        max_lag: Duration,
        now: Instant,
    ) -> Seen {
        let probe = match probe {
            Ok(probe) => probe,
            Err(why) => {
                return Seen {
                    state: ReplicaState::Down(why),
                    replayed: before.replayed,
                    lag_bytes: None,
                    lag: None,
                };
            }
        };
        let mut seen = Seen {
            state: ReplicaState::Lagging,
            replayed: probe.replayed,
            lag_bytes: None,
            lag: None,
        };
        if !probe.in_recovery {
            seen.state = ReplicaState::NotAStandby;
            return seen;
        }
        if let (Some(ours), Some(theirs)) = (self.primary_system, probe.system)
            && ours != theirs
        {
            seen.state = ReplicaState::OtherCluster;
            return seen;
        }
        let (Some(replayed), Some(primary)) = (probe.replayed, self.history.latest()) else {
            return seen;
        };
        seen.lag_bytes = Some(primary.as_u64().saturating_sub(replayed.as_u64()));
        seen.lag = self.history.lag(replayed, now);
        let bound = if before.state == ReplicaState::Lagging {
            max_lag / 2
        } else {
            max_lag
        };
        if seen.lag.is_some_and(|lag| lag <= bound) {
            seen.state = ReplicaState::InUse;
        }
        seen
    }
}

/// Checks one replica over the monitor's connection to it (connecting first if needed); an
/// error drops the connection, to be made again next round.
async fn probe(
    options: &PgConnectOptions,
    connection: &mut Option<(PgConnection, Option<i64>)>,
    timeout: Duration,
) -> Result<Probe, String> {
    let checked = async {
        let (conn, system) = match connection {
            Some(open) => open,
            None => {
                let options = options.clone().application_name("hearth-replica-monitor");
                let mut conn = PgConnection::connect_with(&options).await?;
                let system = system_identifier(&mut conn).await;
                connection.insert((conn, system))
            }
        };
        let (in_recovery, replayed): (bool, Option<String>) =
            sqlx::query_as("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text")
                .fetch_one(&mut *conn)
                .await?;
        Ok::<_, sqlx::Error>(Probe {
            in_recovery,
            replayed: replayed.and_then(|text| text.parse().ok()),
            system: *system,
        })
    };
    let outcome = match tokio::time::timeout(timeout, checked).await {
        Ok(Ok(probe)) => return Ok(probe),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {:.1} s", timeout.as_secs_f64()),
    };
    *connection = None;
    Err(outcome)
}

/// The cluster's system identifier, or `None` when this role may not read it (it is then not
/// compared).
async fn system_identifier<'c, E>(executor: E) -> Option<i64>
where
    E: sqlx::PgExecutor<'c>,
{
    sqlx::query_scalar("SELECT system_identifier FROM pg_control_system()")
        .fetch_one(executor)
        .await
        .ok()
}

/// One log line for a replica's new state.
fn log_change(name: &str, seen: &Seen, max_lag: Duration) {
    let lag = seen.lag.map_or(-1.0, |lag| lag.as_secs_f64());
    match &seen.state {
        ReplicaState::Unchecked => {}
        ReplicaState::InUse => tracing::info!(
            replica = name,
            lag_seconds = lag,
            "read replica in use: reads that may lag go to it"
        ),
        ReplicaState::Lagging => tracing::warn!(
            replica = name,
            lag_seconds = lag,
            max_lag_seconds = max_lag.as_secs_f64(),
            "read replica skipped: it lags past HEARTH_READ_MAX_LAG (or its lag is unknown); its reads go to the primary"
        ),
        ReplicaState::NotAStandby => tracing::error!(
            replica = name,
            "read replica skipped: it is not in recovery, so HEARTH_READ_DATABASE_URL names a primary (or a promoted standby), not a standby of DATABASE_URL; its reads go to the primary"
        ),
        ReplicaState::OtherCluster => tracing::error!(
            replica = name,
            "read replica skipped: it is a standby of another cluster than DATABASE_URL's (their system identifiers differ); its reads go to the primary"
        ),
        ReplicaState::Down(why) => tracing::warn!(
            replica = name,
            error = %why,
            "read replica skipped: it is down; its reads go to the primary"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_print_and_order() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.as_u64(), 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!("0/0".parse::<Lsn>().unwrap() < lsn);
        assert!(lsn < Lsn::MAX);
        assert_eq!(Lsn::MAX.to_string(), "FFFFFFFF/FFFFFFFF");
        for bad in [
            "",
            "/",
            "1/",
            "/1",
            "1",
            "123456789/0",
            "g/0",
            "1/2/3",
            "+1/0",
            " 1/0",
        ] {
            assert_eq!(bad.parse::<Lsn>(), Err(LsnError), "{bad:?}");
        }
    }

    #[test]
    fn lag_is_zero_when_caught_up_however_idle_the_primary() {
        let start = Instant::now();
        let mut history = History::new(Duration::from_secs(30));
        history.push(start, Lsn(100));
        // The primary wrote nothing for a minute: a replica at 100 is not behind.
        let later = start + Duration::from_secs(60);
        history.push(later, Lsn(100));
        assert_eq!(history.lag(Lsn(100), later), Some(Duration::ZERO));
        assert_eq!(history.lag(Lsn(150), later), Some(Duration::ZERO));
    }

    #[test]
    fn lag_counts_from_the_first_sample_past_the_replica() {
        let start = Instant::now();
        let mut history = History::new(Duration::from_secs(30));
        for (second, lsn) in [(0, 100), (1, 100), (2, 200), (3, 300)] {
            history.push(start + Duration::from_secs(second), Lsn(lsn));
        }
        let now = start + Duration::from_secs(4);
        assert_eq!(history.lag(Lsn(100), now), Some(Duration::from_secs(2)));
        assert_eq!(history.lag(Lsn(250), now), Some(Duration::from_secs(1)));
        assert_eq!(History::new(Duration::from_secs(1)).lag(Lsn(1), now), None);
    }

    #[test]
    fn history_keeps_its_window_and_its_latest_sample() {
        let start = Instant::now();
        let mut history = History::new(Duration::from_secs(10));
        for second in 0..100 {
            history.push(start + Duration::from_secs(second), Lsn(second));
        }
        assert!(history.samples.len() <= 12, "{}", history.samples.len());
        // A replica behind everything kept reads as at least the window behind.
        let now = start + Duration::from_secs(99);
        assert!(history.lag(Lsn(0), now).unwrap() >= Duration::from_secs(10));
    }
}
