//! The cache framework: what Django's cache API is, on Postgres with an in-process tier.
//!
//! * the **shared tier** is the UNLOGGED table `cache_entries`: shared by every instance,
//!   survives process restarts, costs no WAL;
//! * the **local tier** is a size-bounded in-process cache (moka) with a short TTL in front of
//!   it, so hot keys are served without a round trip;
//! * a write, delete or invalidation on one instance drops the other instances' local copies
//!   through the channel layer (group `hearth.cache`); should that message be lost, a local
//!   copy is stale for at most the local TTL (`HEARTH_CACHE_LOCAL_TTL`);
//! * [`Cache::get_or_set`] computes a missing value once per instance however many requests
//!   miss at the same moment (stampede protection), never get-then-set;
//! * [`sweep`]: expired entries are deleted periodically, and past `HEARTH_CACHE_MAX_BYTES`
//!   the least recently written go first, by one instance at a time;
//! * [`page`]: `cache_page(ttl)` for routes, ETags and 304s, tags, one stored copy per
//!   content coding (`coding`); [`fragment`]: rendered template fragments for parent templates;
//! * [`headers`]: `Cache-Control` and `Vary` helpers for views; `purge`: a tag invalidation
//!   also tells a CDN (`HEARTH_CACHE_PURGE_URL`).
//!
//! Keys are validated ([`CacheKey`]): 1 to 250 bytes without spaces or control characters.
//! Every key is stored as `<prefix>:<version>:<key>`, as Django does, so a version bump or a
//! prefix separates whole sets of keys.

pub(crate) mod coding;
pub mod fragment;
pub mod headers;
mod key;
pub mod page;
mod purge;
mod stats;
mod sweep;

use std::{
    any::Any,
    collections::HashMap,
    future::Future,
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use moka::{Expiry, future::Cache as Moka};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::channels::{ChannelLayer, GroupName};

pub use key::CacheKey;
pub use stats::CacheStats;
use stats::Stats;

/// The channel-layer group that carries invalidations between instances.
const INVALIDATIONS: &str = "hearth.cache";

/// What a cache call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid cache key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("cannot encode the value for {key:?}")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the value cached under {key:?} is not of the requested type")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no value cached under {0:?}")]
    NotFound(String),
    #[error("the value cached under {0:?} is not an integer, or the result would overflow")]
    NotAnInteger(String),
    #[error("the version of {0:?} would overflow")]
    VersionOverflow(String),
    #[error("computing the value for {key:?} failed")]
    Compute {
        key: String,
        #[source]
        source: Arc<anyhow::Error>,
    },
    #[error("cache database error")]
    Database(#[source] Arc<sqlx::Error>),
}

impl From<sqlx::Error> for CacheError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(Arc::new(e))
    }
}

/// How long a value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// The configured default (`HEARTH_CACHE_TIMEOUT`).
    Default,
    /// Until deleted or evicted.
    Never,
    /// This long from now; zero means "do not keep" (as in Django).
    After(Duration),
}

impl From<Duration> for Timeout {
    fn from(d: Duration) -> Self {
        Self::After(d)
    }
}

/// How the cache runs.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Prepended to every key (`<prefix>:<version>:<key>`).
    pub prefix: String,
    /// Timeout of `set` calls that pass [`Timeout::Default`].
    pub default_timeout: Duration,
    /// How long a value stays in the in-process tier before it is read from Postgres again.
    pub local_ttl: Duration,
    /// Size bound of the in-process tier, in bytes.
    pub local_max_bytes: u64,
    /// Size bound of the shared tier, in bytes of keys and values.
    pub max_bytes: u64,
    /// How often expired and excess entries are swept.
    pub sweep_interval: Duration,
    /// Where tag invalidations are sent for a CDN to purge (`HEARTH_CACHE_PURGE_URL`).
    pub purge_url: Option<url::Url>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            default_timeout: Duration::from_secs(300),
            local_ttl: Duration::from_secs(5),
            local_max_bytes: 64 << 20,
            max_bytes: 256 << 20,
            sweep_interval: Duration::from_secs(30),
            purge_url: None,
        }
    }
}

/// A value in the in-process tier.
#[derive(Clone)]
struct Local {
    value: Bytes,
    expires_at: Option<SystemTime>,
    tags: Arc<[String]>,
    /// The value decoded by its reader, kept with the entry so that a hot entry is decoded
    /// once, not on every hit (the page cache keeps its parsed response here). It goes away
    /// with the entry, so invalidation needs nothing more.
    decoded: Arc<OnceLock<Arc<dyn Any + Send + Sync>>>,
}

impl Local {
    fn new(value: Bytes, expires_at: Option<SystemTime>, tags: Arc<[String]>) -> Self {
        Self {
            value,
            expires_at,
            tags,
            decoded: Arc::default(),
        }
    }

    /// The value as `decode` reads it, decoded at most once per entry; `None` if `decode`
    /// fails (or an earlier reader decoded it as another type).
    fn decoded<T: Any + Send + Sync>(
        &self,
        decode: impl FnOnce(&Bytes) -> Option<T>,
    ) -> Option<Arc<T>> {
        let any = self.decoded.get_or_init(|| match decode(&self.value) {
            Some(value) => Arc::new(value),
            None => Arc::new(()),
        });
        any.clone().downcast::<T>().ok()
    }
}

/// Local entries live for the local TTL, or until the value expires if that is sooner.
struct LocalExpiry {
    ttl: Duration,
}

impl Expiry<String, Local> for LocalExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Local,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let left = value
            .expires_at
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default());
        Some(left.map_or(self.ttl, |left| left.min(self.ttl)))
    }
}

/// Why a refill of the local tier from the shared one stored nothing.
enum Refill {
    Absent,
    Failed(CacheError),
}

/// A handle to the cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
    version: i32,
}

struct Inner {
    pool: PgPool,
    channels: ChannelLayer,
    config: CacheConfig,
    local: Moka<String, Local>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    /// Hashes of the URLs this process has seen a front-door page for (see
    /// [`page::front_hit`]): every other request skips the front door without a lookup.
    front_urls: std::sync::RwLock<std::collections::HashSet<u64>>,
    /// Sends invalidated tags to `config.purge_url`, if set.
    purger: Option<purge::Purger>,
}

#[derive(Serialize, Deserialize)]
struct Invalidation {
    #[serde(rename = "type")]
    kind: String,
    from: String,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    all: bool,
}

impl Cache {
    /// Builds the cache and starts its tasks: the invalidation listener and the sweeper.
    pub fn start(pool: PgPool, channels: ChannelLayer, config: CacheConfig) -> Self {
        let stats = Arc::new(Stats::default());
        let evictions = stats.clone();
        let local = Moka::builder()
            .weigher(|key: &String, value: &Local| {
                u32::try_from(key.len() + value.value.len() + 64).unwrap_or(u32::MAX)
            })
            .max_capacity(config.local_max_bytes)
            .expire_after(LocalExpiry {
                ttl: config.local_ttl,
            })
            .support_invalidation_closures()
            .eviction_listener(move |_key, _value, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.local_evicted();
                }
            })
            .build();
        let tracker = channels.tracker();
        let shutdown = CancellationToken::new();
        let purger = config
            .purge_url
            .clone()
            .map(|url| purge::Purger::start(url, &tracker, shutdown.clone()));
        let cache = Self {
            inner: Arc::new(Inner {
                pool,
                channels,
                config,
                purger,
                local,
                stats,
                shutdown,
                front_urls: Default::default(),
            }),
            version: 1,
        };
        tracker.spawn(listen(cache.clone()));
        tracker.spawn(sweep::periodically(cache.clone()));
        cache
    }

    /// Stops the listener and the sweeper.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// A handle whose keys carry `version` instead of 1 (Django's `version=`).
    pub fn with_version(&self, version: i32) -> Self {
        Self {
            inner: self.inner.clone(),
            version,
        }
    }

    fn full_key(&self, key: &str) -> Result<String, CacheError> {
        let key = CacheKey::parse(key)?;
        Ok(format!(
            "{}:{}:{}",
            self.inner.config.prefix,
            self.version,
            key.as_str()
        ))
    }

    fn expires_at(&self, timeout: Timeout) -> Option<Option<OffsetDateTime>> {
        match timeout {
            Timeout::Never => Some(None),
            Timeout::Default => Some(Some(
                OffsetDateTime::now_utc() + self.inner.config.default_timeout,
            )),
            Timeout::After(d) if d.is_zero() => None,
            Timeout::After(d) => Some(Some(OffsetDateTime::now_utc() + d)),
        }
    }

    /// The value under `key`, if present and not expired.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CacheError> {
        let full = self.full_key(key)?;
        match self.get_raw(&full).await? {
            Some(bytes) => decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Bytes under a full key: the local tier, else the shared tier (then kept locally).
    async fn get_raw(&self, full: &str) -> Result<Option<Bytes>, CacheError> {
        Ok(self.get_entry(full).await?.map(|local| local.value))
    }

    /// The entry in this process's tier alone, never a round trip: the page cache's front door
    /// asks this for every anonymous `GET`, and a miss there must cost nothing.
    async fn get_local(&self, full: &str) -> Option<Local> {
        let local = self.inner.local.get(full).await?;
        self.inner.stats.local_hit();
        Some(local)
    }

    async fn get_entry(&self, full: &str) -> Result<Option<Local>, CacheError> {
        if let Some(local) = self.inner.local.get(full).await {
            self.inner.stats.local_hit();
            return Ok(Some(local));
        }
        // Concurrent misses for one key (every request in flight when a hot entry's local
        // lifetime lapses) wait for one read of the shared tier instead of each running it.
        let refill = self
            .inner
            .local
            .entry_by_ref(full)
            .or_try_insert_with(async {
                match self.fetch_shared(full).await {
                    Ok(Some(local)) => Ok(local),
                    Ok(None) => Err(Refill::Absent),
                    Err(e) => Err(Refill::Failed(e)),
                }
            })
            .await;
        match refill {
            Ok(entry) => {
                if entry.is_fresh() {
                    self.inner.stats.local_miss();
                } else {
                    self.inner.stats.local_hit();
                }
                Ok(Some(entry.into_value()))
            }
            Err(refill) => {
                self.inner.stats.local_miss();
                match &*refill {
                    Refill::Absent => Ok(None),
                    Refill::Failed(e) => Err(clone_error(e)),
                }
            }
        }
    }

    async fn fetch_shared(&self, full: &str) -> Result<Option<Local>, CacheError> {
        let row = sqlx::query!(
            "SELECT value, expires_at, tags FROM cache_entries
             WHERE key = $1 AND (expires_at IS NULL OR expires_at > now())",
            full
        )
        .fetch_optional(&self.inner.pool)
        .await?;
        match row {
            Some(row) => {
                self.inner.stats.shared_hit();
                Ok(Some(Local::new(
                    Bytes::from(row.value),
                    row.expires_at.map(SystemTime::from),
                    row.tags.into(),
                )))
            }
            None => {
                self.inner.stats.shared_miss();
                Ok(None)
            }
        }
    }

    /// Stores `value` under `key`.
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        timeout: impl Into<Timeout>,
    ) -> Result<(), CacheError> {
        self.set_tagged(key, value, timeout, &[]).await
    }

    /// [`set`](Self::set) with tags, for [`invalidate_tag`](Self::invalidate_tag).
    pub async fn set_tagged<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        timeout: impl Into<Timeout>,
        tags: &[&str],
    ) -> Result<(), CacheError> {
        let full = self.full_key(key)?;
        let bytes = encode(key, value)?;
        self.set_raw(full, bytes, timeout.into(), tags).await
    }

    async fn set_raw(
        &self,
        full: String,
        bytes: Bytes,
        timeout: Timeout,
        tags: &[&str],
    ) -> Result<(), CacheError> {
        let Some(expires_at) = self.expires_at(timeout) else {
            self.delete_full(vec![full]).await?;
            return Ok(());
        };
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        sqlx::query!(
            "INSERT INTO cache_entries (key, value, expires_at, tags) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                 expires_at = excluded.expires_at, tags = excluded.tags, updated_at = now()",
            &full,
            bytes.as_ref(),
            expires_at,
            &tags,
        )
        .execute(&self.inner.pool)
        .await?;
        self.inner.stats.set();
        let local = Local::new(bytes, expires_at.map(SystemTime::from), tags.into());
        self.inner.local.insert(full.clone(), local).await;
        self.broadcast(vec![full], Vec::new(), false);
        Ok(())
    }

    /// Stores `value` only if `key` holds nothing (or something expired); `true` if it did.
    pub async fn add<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        timeout: impl Into<Timeout>,
    ) -> Result<bool, CacheError> {
        let full = self.full_key(key)?;
        let bytes = encode(key, value)?;
        let Some(expires_at) = self.expires_at(timeout.into()) else {
            return Ok(false);
        };
        let added = sqlx::query_scalar!(
            r#"INSERT INTO cache_entries (key, value, expires_at) VALUES ($1, $2, $3)
               ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                   expires_at = excluded.expires_at, tags = '{}', updated_at = now()
               WHERE cache_entries.expires_at IS NOT NULL AND cache_entries.expires_at <= now()
               RETURNING true AS "added!""#,
            &full,
            bytes.as_ref(),
            expires_at,
        )
        .fetch_optional(&self.inner.pool)
        .await?
        .is_some();
        if added {
            self.inner.stats.set();
            self.inner.local.invalidate(&full).await;
            self.broadcast(vec![full], Vec::new(), false);
        }
        Ok(added)
    }

    /// The value under `key`; on a miss, `compute`s it, stores it and returns it. Concurrent
    /// misses for one key on this instance run `compute` once and share its result.
    pub async fn get_or_set<T, F, Fut>(
        &self,
        key: &str,
        timeout: impl Into<Timeout>,
        compute: F,
    ) -> Result<T, CacheError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        self.get_or_set_tagged(key, timeout.into(), &[], compute)
            .await
    }

    /// [`get_or_set`](Self::get_or_set) storing a computed value with `tags`: the local copy
    /// carries them too, so that [`invalidate_tag`](Self::invalidate_tag) drops it here.
    async fn get_or_set_tagged<T, F, Fut>(
        &self,
        key: &str,
        timeout: Timeout,
        tags: &[&str],
        compute: F,
    ) -> Result<T, CacheError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let full = self.full_key(key)?;
        let init = async {
            if let Some(found) = self.fetch_shared(&full).await? {
                return Ok(found);
            }
            let value = compute().await.map_err(|e| CacheError::Compute {
                key: key.to_owned(),
                source: Arc::new(e),
            })?;
            let bytes = encode(key, &value)?;
            self.set_raw(full.clone(), bytes.clone(), timeout, tags)
                .await?;
            let expires_at = match self.expires_at(timeout) {
                // A zero timeout keeps nothing, locally either.
                None => Some(SystemTime::now()),
                Some(at) => at.map(SystemTime::from),
            };
            let tags: Arc<[String]> = tags.iter().map(|t| (*t).to_owned()).collect();
            Ok::<_, CacheError>(Local::new(bytes, expires_at, tags))
        };
        let entry = self
            .inner
            .local
            .entry(full.clone())
            .or_try_insert_with(init)
            .await
            .map_err(|e: Arc<CacheError>| clone_error(&e))?;
        if entry.is_fresh() {
            self.inner.stats.local_miss();
        } else {
            self.inner.stats.local_hit();
        }
        decode(key, &entry.into_value().value)
    }

    /// The values present under `keys` (absent ones are left out).
    pub async fn get_many<T: DeserializeOwned>(
        &self,
        keys: &[&str],
    ) -> Result<HashMap<String, T>, CacheError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for key in keys {
            let full = self.full_key(key)?;
            match self.inner.local.get(&full).await {
                Some(local) => {
                    self.inner.stats.local_hit();
                    found.insert((*key).to_owned(), decode(key, &local.value)?);
                }
                None => {
                    self.inner.stats.local_miss();
                    missing.push(((*key).to_owned(), full));
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let fulls: Vec<String> = missing.iter().map(|(_, f)| f.clone()).collect();
        let rows = sqlx::query!(
            "SELECT key, value, expires_at, tags FROM cache_entries
             WHERE key = ANY($1) AND (expires_at IS NULL OR expires_at > now())",
            &fulls
        )
        .fetch_all(&self.inner.pool)
        .await?;
        let by_full: HashMap<&str, &str> = missing
            .iter()
            .map(|(k, f)| (f.as_str(), k.as_str()))
            .collect();
        for row in rows {
            let Some(key) = by_full.get(row.key.as_str()) else {
                continue;
            };
            self.inner.stats.shared_hit();
            found.insert((*key).to_owned(), decode(key, &row.value)?);
            let local = Local::new(
                Bytes::from(row.value),
                row.expires_at.map(SystemTime::from),
                row.tags.into(),
            );
            self.inner.local.insert(row.key, local).await;
        }
        Ok(found)
    }

    /// Stores every `(key, value)` in one statement.
    pub async fn set_many<T: Serialize>(
        &self,
        entries: &[(&str, T)],
        timeout: impl Into<Timeout>,
    ) -> Result<(), CacheError> {
        let mut fulls = Vec::with_capacity(entries.len());
        let mut values = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            fulls.push(self.full_key(key)?);
            values.push(encode(key, value)?.to_vec());
        }
        let Some(expires_at) = self.expires_at(timeout.into()) else {
            self.delete_full(fulls).await?;
            return Ok(());
        };
        sqlx::query!(
            "INSERT INTO cache_entries (key, value, expires_at)
             SELECT k, v, $3 FROM unnest($1::text[], $2::bytea[]) AS e(k, v)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                 expires_at = excluded.expires_at, tags = '{}', updated_at = now()",
            &fulls,
            &values,
            expires_at,
        )
        .execute(&self.inner.pool)
        .await?;
        for full in &fulls {
            self.inner.stats.set();
            self.inner.local.invalidate(full).await;
        }
        self.broadcast(fulls, Vec::new(), false);
        Ok(())
    }

    /// Deletes `key`; `true` if it held a value.
    pub async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let full = self.full_key(key)?;
        Ok(self.delete_full(vec![full]).await? > 0)
    }

    /// Deletes every key of `keys`; returns how many held a value.
    pub async fn delete_many(&self, keys: &[&str]) -> Result<u64, CacheError> {
        let fulls = keys
            .iter()
            .map(|k| self.full_key(k))
            .collect::<Result<Vec<_>, _>>()?;
        self.delete_full(fulls).await
    }

    async fn delete_full(&self, fulls: Vec<String>) -> Result<u64, CacheError> {
        let deleted = sqlx::query!("DELETE FROM cache_entries WHERE key = ANY($1)", &fulls)
            .execute(&self.inner.pool)
            .await?
            .rows_affected();
        for full in &fulls {
            self.inner.local.invalidate(full).await;
        }
        self.broadcast(fulls, Vec::new(), false);
        Ok(deleted)
    }

    /// Whether `key` holds a value that has not expired.
    pub async fn has_key(&self, key: &str) -> Result<bool, CacheError> {
        let full = self.full_key(key)?;
        Ok(self.get_raw(&full).await?.is_some())
    }

    /// Adds `delta` to the integer under `key`, atomically across instances; returns the new
    /// value. A missing key is [`CacheError::NotFound`], as in Django.
    pub async fn incr(&self, key: &str, delta: i64) -> Result<i64, CacheError> {
        let full = self.full_key(key)?;
        let result = sqlx::query_scalar!(
            r#"UPDATE cache_entries
               SET value = convert_to((convert_from(value, 'UTF8')::bigint + $2)::text, 'UTF8'),
                   updated_at = now()
               WHERE key = $1 AND (expires_at IS NULL OR expires_at > now())
               RETURNING convert_from(value, 'UTF8')::bigint AS "value!""#,
            &full,
            delta,
        )
        .fetch_optional(&self.inner.pool)
        .await;
        let value = match result {
            Ok(Some(value)) => value,
            Ok(None) => return Err(CacheError::NotFound(key.to_owned())),
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("22P02" | "22003" | "22021")) =>
            {
                return Err(CacheError::NotAnInteger(key.to_owned()));
            }
            Err(e) => return Err(e.into()),
        };
        self.inner.local.invalidate(&full).await;
        self.broadcast(vec![full], Vec::new(), false);
        Ok(value)
    }

    /// Subtracts `delta`; see [`incr`](Self::incr).
    pub async fn decr(&self, key: &str, delta: i64) -> Result<i64, CacheError> {
        let delta = delta
            .checked_neg()
            .ok_or_else(|| CacheError::NotAnInteger(key.to_owned()))?;
        self.incr(key, delta).await
    }

    /// Moves the value under `key` from this handle's version to that version plus `delta`
    /// (Django's `incr_version`) and returns the new version. One statement moves it, with its
    /// expiry and tags, replacing whatever the new version held: of two concurrent moves of
    /// one key, one wins and the other finds nothing. A missing key is
    /// [`CacheError::NotFound`].
    pub async fn incr_version(&self, key: &str, delta: i32) -> Result<i32, CacheError> {
        let to = self
            .version
            .checked_add(delta)
            .ok_or_else(|| CacheError::VersionOverflow(key.to_owned()))?;
        let from = self.full_key(key)?;
        if delta == 0 {
            return match self.get_raw(&from).await? {
                Some(_) => Ok(to),
                None => Err(CacheError::NotFound(key.to_owned())),
            };
        }
        let dest = self.with_version(to).full_key(key)?;
        let moved = sqlx::query_scalar!(
            "WITH old AS (
                 DELETE FROM cache_entries
                  WHERE key = $1 AND (expires_at IS NULL OR expires_at > now())
              RETURNING value, expires_at, tags)
             INSERT INTO cache_entries (key, value, expires_at, tags)
             SELECT $2, value, expires_at, tags FROM old
             ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                 expires_at = excluded.expires_at, tags = excluded.tags, updated_at = now()
             RETURNING key",
            &from,
            &dest,
        )
        .fetch_optional(&self.inner.pool)
        .await?;
        if moved.is_none() {
            return Err(CacheError::NotFound(key.to_owned()));
        }
        self.inner.stats.set();
        let keys = vec![from, dest];
        for full in &keys {
            self.inner.local.invalidate(full).await;
        }
        self.broadcast(keys, Vec::new(), false);
        Ok(to)
    }

    /// Moves the value to this version minus `delta`; see [`incr_version`](Self::incr_version).
    pub async fn decr_version(&self, key: &str, delta: i32) -> Result<i32, CacheError> {
        let delta = delta
            .checked_neg()
            .ok_or_else(|| CacheError::VersionOverflow(key.to_owned()))?;
        self.incr_version(key, delta).await
    }

    /// Gives `key` a new timeout; `true` if it held a value.
    pub async fn touch(&self, key: &str, timeout: impl Into<Timeout>) -> Result<bool, CacheError> {
        let full = self.full_key(key)?;
        let Some(expires_at) = self.expires_at(timeout.into()) else {
            return Ok(self.delete_full(vec![full]).await? > 0);
        };
        let touched = sqlx::query!(
            "UPDATE cache_entries SET expires_at = $2
             WHERE key = $1 AND (expires_at IS NULL OR expires_at > now())",
            &full,
            expires_at,
        )
        .execute(&self.inner.pool)
        .await?
        .rows_affected()
            > 0;
        self.inner.local.invalidate(&full).await;
        self.broadcast(vec![full], Vec::new(), false);
        Ok(touched)
    }

    /// Deletes every entry whose full key starts with `prefix` (all of them for `""`), on
    /// every instance; returns how many.
    pub async fn clear_prefix(&self, prefix: &str) -> Result<u64, CacheError> {
        let pattern = format!("{}%", like_escape(prefix));
        let deleted = sqlx::query!(
            r"DELETE FROM cache_entries WHERE key LIKE $1 ESCAPE '\'",
            pattern
        )
        .execute(&self.inner.pool)
        .await?
        .rows_affected();
        self.inner.local.invalidate_all();
        self.broadcast_now(Vec::new(), Vec::new(), true).await;
        Ok(deleted)
    }

    /// Deletes everything in the cache, on every instance.
    pub async fn clear(&self) -> Result<u64, CacheError> {
        self.clear_prefix("").await
    }

    /// Deletes every entry stored with `tag` (pages, fragments, values), on every instance.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64, CacheError> {
        let deleted = sqlx::query!(
            "DELETE FROM cache_entries WHERE tags @> ARRAY[$1::text]",
            tag
        )
        .execute(&self.inner.pool)
        .await?
        .rows_affected();
        drop_tag_locally(&self.inner.local, tag);
        self.broadcast_now(Vec::new(), vec![tag.to_owned()], false)
            .await;
        if let Some(purger) = &self.inner.purger {
            purger.purge(tag);
        }
        Ok(deleted)
    }

    /// `(hits, misses)` of this instance's lookups since it started, both tiers together: a
    /// cheap read (no query) for samplers that poll every second.
    pub fn lookups(&self) -> (u64, u64) {
        self.inner.stats.lookups()
    }

    /// Counters of this instance and the size of the shared tier.
    pub async fn stats(&self) -> Result<CacheStats, CacheError> {
        let shared = sqlx::query!(
            r#"SELECT count(*) AS "entries!",
                      coalesce(sum(octet_length(key) + octet_length(value)), 0)::bigint AS "bytes!"
               FROM cache_entries"#
        )
        .fetch_one(&self.inner.pool)
        .await?;
        self.inner.local.run_pending_tasks().await;
        Ok(self.inner.stats.snapshot(
            (
                self.inner.local.entry_count(),
                self.inner.local.weighted_size(),
            ),
            (shared.entries, shared.bytes),
        ))
    }

    /// Runs the sweeper now: expired entries, then the oldest past the size bound.
    pub async fn sweep(&self) -> Result<u64, CacheError> {
        sweep::run(self).await
    }

    /// Tells the other instances to drop local copies; in the background, so writes do not wait
    /// for it (a lost message leaves a copy stale for at most the local TTL).
    fn broadcast(&self, keys: Vec<String>, tags: Vec<String>, all: bool) {
        let cache = self.clone();
        self.inner.channels.tracker().spawn(async move {
            cache.broadcast_now(keys, tags, all).await;
        });
    }

    /// [`broadcast`](Self::broadcast), waiting until the message is written: for the rare,
    /// wide invalidations (clear, tags), and for commands that exit right after.
    async fn broadcast_now(&self, keys: Vec<String>, tags: Vec<String>, all: bool) {
        let message = Invalidation {
            kind: "cache.invalidate".into(),
            from: self.inner.channels.instance().to_owned(),
            keys,
            tags,
            all,
        };
        let group = GroupName::parse(INVALIDATIONS).expect("a valid group name");
        if let Err(e) = self.inner.channels.group_send(&group, &message).await {
            tracing::warn!(error = %e, "cannot tell other instances to drop cached copies");
        }
    }
}

fn drop_tag_locally(local: &Moka<String, Local>, tag: &str) {
    let tag = tag.to_owned();
    if let Err(e) = local.invalidate_entries_if(move |_, value| value.tags.contains(&tag)) {
        tracing::warn!(error = %e, "cannot drop tagged entries locally; clearing the local tier");
        local.invalidate_all();
    }
}

/// Drops local copies when another instance writes; until shutdown.
async fn listen(cache: Cache) {
    let mut subscription = cache.inner.channels.subscribe();
    subscription.join(&GroupName::parse(INVALIDATIONS).expect("a valid group name"));
    let me = cache.inner.channels.instance().to_owned();
    // Connections close first at shutdown; this is one of them.
    let closing = cache.inner.channels.closing();
    loop {
        let delivery = tokio::select! {
            () = cache.inner.shutdown.cancelled() => return,
            () = closing.cancelled() => return,
            delivery = subscription.recv() => delivery,
        };
        let Some(delivery) = delivery else {
            // Dropped as a slow consumer (a burst of invalidations): start over with an empty
            // local tier, which cannot be stale.
            cache.inner.local.invalidate_all();
            subscription = cache.inner.channels.subscribe();
            subscription.join(&GroupName::parse(INVALIDATIONS).expect("a valid group name"));
            continue;
        };
        let Ok(message) = delivery.decode::<Invalidation>() else {
            continue;
        };
        if message.from == me {
            continue;
        }
        if message.all {
            cache.inner.local.invalidate_all();
        }
        for key in message.keys {
            cache.inner.local.invalidate(&key).await;
        }
        for tag in message.tags {
            drop_tag_locally(&cache.inner.local, &tag);
        }
    }
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Bytes, CacheError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|source| CacheError::Encode {
            key: key.to_owned(),
            source,
        })
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, CacheError> {
    serde_json::from_slice(bytes).map_err(|source| CacheError::Decode {
        key: key.to_owned(),
        source,
    })
}

/// `CacheError` is not `Clone` (its sources are not); a coalesced `get_or_set` hands each
/// waiter its own copy.
fn clone_error(e: &CacheError) -> CacheError {
    match e {
        CacheError::InvalidKey { key, reason } => CacheError::InvalidKey {
            key: key.clone(),
            reason,
        },
        CacheError::Encode { key, source } | CacheError::Decode { key, source } => {
            CacheError::Compute {
                key: key.clone(),
                source: Arc::new(anyhow::anyhow!(source.to_string())),
            }
        }
        CacheError::NotFound(k) => CacheError::NotFound(k.clone()),
        CacheError::NotAnInteger(k) => CacheError::NotAnInteger(k.clone()),
        CacheError::VersionOverflow(k) => CacheError::VersionOverflow(k.clone()),
        CacheError::Compute { key, source } => CacheError::Compute {
            key: key.clone(),
            source: source.clone(),
        },
        CacheError::Database(e) => CacheError::Database(e.clone()),
    }
}

fn like_escape(raw: &str) -> String {
    raw.replace('\\', r"\\")
        .replace('%', r"\%")
        .replace('_', r"\_")
}
