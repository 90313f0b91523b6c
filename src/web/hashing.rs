//! Password hashing (argon2id) under a process-wide bound.
//!
//! One argon2 computation holds about 19 MiB and tens of milliseconds of CPU, so without a bound
//! anyone can grow the server's memory by sending logins at once (issue #30: 60 concurrent
//! logins took it from 60 MiB to 1 GiB). A [`Hasher`] admits at most `concurrency + queue`
//! requests that need a hash; the first `concurrency` compute, the others wait in line, and one
//! more is refused at once with [`Busy`] (pages answer 503 with `Retry-After`). Every hash —
//! log in, sign up, password change and the dummy check for unknown usernames — goes through
//! one, so memory stays flat under a flood. Its counters are exported at `/metrics`.

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::NewPassword;

/// The bound and its counters; cheap to clone (one per process, in the app state).
#[derive(Clone)]
pub struct Hasher(Arc<Inner>);

struct Inner {
    /// Permits to compute: `concurrency` of them.
    running: Arc<Semaphore>,
    /// Places for requests that need a hash, computing or waiting.
    admitted: Arc<Semaphore>,
    computed: AtomicU64,
    refused: AtomicU64,
    active: AtomicU64,
    peak: AtomicU64,
}

/// Too many requests already need a hash: try again in a moment.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("too many passwords are being checked right now; try again in a moment")]
pub struct Busy;

/// The hasher's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashStats {
    /// argon2 computations finished or under way since start.
    pub computed: u64,
    /// Requests refused with [`Busy`].
    pub refused: u64,
    /// Computations running now.
    pub running: u64,
    /// The most computations that ever ran at once.
    pub peak: u64,
}

impl Hasher {
    /// At most `concurrency` (at least 1) hashes at once, and `queue` more requests waiting.
    pub fn new(concurrency: usize, queue: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self(Arc::new(Inner {
            running: Arc::new(Semaphore::new(concurrency)),
            admitted: Arc::new(Semaphore::new(concurrency + queue)),
            computed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            active: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }))
    }

    /// The bound of the configuration.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self::new(
            config.sessions.password_hash_concurrency as usize,
            config.sessions.password_hash_queue as usize,
        )
    }

    /// A place in line, or [`Busy`] at once when the line is full. Take it before any other
    /// work on a request that will hash, so a refused request costs next to nothing.
    pub fn enter(&self) -> Result<Slot, Busy> {
        match self.0.admitted.clone().try_acquire_owned() {
            Ok(place) => Ok(Slot {
                hasher: self.clone(),
                _place: place,
            }),
            Err(_) => {
                self.0.refused.fetch_add(1, Relaxed);
                Err(Busy)
            }
        }
    }

    /// [`Busy`] when the line is full right now: a cheap early refusal for a request that has
    /// other work to do before it can [`enter`](Self::enter) (which still decides).
    pub fn has_room(&self) -> Result<(), Busy> {
        if self.0.admitted.available_permits() > 0 {
            return Ok(());
        }
        self.0.refused.fetch_add(1, Relaxed);
        Err(Busy)
    }

    pub fn stats(&self) -> HashStats {
        HashStats {
            computed: self.0.computed.load(Relaxed),
            refused: self.0.refused.load(Relaxed),
            running: self.0.active.load(Relaxed),
            peak: self.0.peak.load(Relaxed),
        }
    }
}

/// A request's place in line; its hashes run one after another, each when a permit is free.
pub struct Slot {
    hasher: Hasher,
    _place: OwnedSemaphorePermit,
}

impl Slot {
    /// Hashes a new password (argon2id, PHC string).
    pub async fn hash(&self, password: &NewPassword) -> anyhow::Result<String> {
        let password = password.as_secret().to_owned();
        self.run(move |inner| inner.hash(&password)).await?
    }

    /// Whether `password` matches `phc_hash`. An unparseable stored hash is logged and never
    /// matches.
    pub async fn verify(&self, password: String, phc_hash: String) -> bool {
        let checked = self.run(move |inner| match PasswordHash::new(&phc_hash) {
            Ok(parsed) => inner.verify(&password, &parsed),
            Err(e) => {
                tracing::error!(error = %e, "stored password hash is not a PHC string");
                false
            }
        });
        checked.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "password check failed");
            false
        })
    }

    /// Verifies against a fixed hash, so that a login for an unknown username costs as much
    /// as one for a real account and response times do not reveal which usernames exist.
    pub async fn burn(&self, password: String) {
        static DUMMY: OnceLock<Option<String>> = OnceLock::new();
        let burnt = self.run(move |inner| {
            let dummy = DUMMY.get_or_init(|| {
                let random = hex::encode(rand::random::<[u8; 16]>());
                inner.hash(&random).ok()
            });
            if let Some(parsed) = dummy.as_deref().and_then(|d| PasswordHash::new(d).ok()) {
                inner.verify(&password, &parsed);
            }
        });
        if let Err(e) = burnt.await {
            tracing::error!(error = %e, "dummy password check failed");
        }
    }

    /// Runs `work` on the blocking pool once a permit is free: a hash takes tens of
    /// milliseconds of CPU, which would stall every other task on a runtime worker. The permit
    /// moves into the blocking task, so a request dropped mid-way (its client gone) keeps its
    /// computation counted until the computation really ends.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let permit = self.hasher.0.running.clone().acquire_owned().await?;
        let inner = self.hasher.0.clone();
        let done = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _running = Running::start(&inner);
            work(&inner)
        });
        Ok(done.await?)
    }
}

/// Counts a computation in the running gauge (and its peak) until dropped, panics included.
struct Running<'a>(&'a Inner);

impl<'a> Running<'a> {
    fn start(inner: &'a Inner) -> Self {
        let running = inner.active.fetch_add(1, Relaxed) + 1;
        inner.peak.fetch_max(running, Relaxed);
        Self(inner)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

impl Inner {
    fn hash(&self, password: &str) -> anyhow::Result<String> {
        self.computed.fetch_add(1, Relaxed);
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|e| anyhow::anyhow!("argon2 hashing failed: {e}"))
    }

    fn verify(&self, password: &str, hash: &PasswordHash) -> bool {
        self.computed.fetch_add(1, Relaxed);
        Argon2::default()
            .verify_password(password.as_bytes(), hash)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_are_counted() {
        let hasher = Hasher::new(1, 0);
        let slot = hasher.enter().unwrap();
        let password = NewPassword::parse("correct horse").unwrap();
        let hash = slot.hash(&password).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(slot.verify("correct horse".into(), hash.clone()).await);
        assert!(!slot.verify("wrong horse".into(), hash).await);
        assert!(!slot.verify("x".into(), "not a hash".into()).await);
        slot.burn("whatever".into()).await;
        let stats = hasher.stats();
        // hash, two verifications, and the burn (its dummy hash once per process, then a check).
        assert!((4..=5).contains(&stats.computed), "{stats:?}");
        assert_eq!((stats.running, stats.peak), (0, 1));
    }

    #[tokio::test]
    async fn a_full_line_is_refused_at_once() {
        let hasher = Hasher::new(1, 1);
        let first = hasher.enter().unwrap();
        assert!(hasher.has_room().is_ok());
        let second = hasher.enter().unwrap();
        assert!(hasher.has_room().is_err());
        assert!(hasher.enter().is_err());
        assert_eq!(hasher.stats().refused, 2);
        drop((first, second));
        assert!(hasher.enter().is_ok());
    }
}
