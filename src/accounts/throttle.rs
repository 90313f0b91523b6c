//! Login throttling: a growing delay after failed logins, counted before the password is
//! checked, that slows a guesser without letting strangers lock the owner out.
//!
//! Each attempt is counted against several counters (rows of `login_throttle`, so every
//! instance sharing the database sees the same counts), under their row locks and *before* the
//! password is hashed: concurrent guesses cannot all slip past one check. [`check`] locks and
//! checks; [`Pending::count`] counts, once the caller knows it can check the password (a
//! request refused for a full hashing line is not counted). A counter past its
//! allowance makes the next attempt wait — the backoff, doubling with each failure up to the
//! window — instead of locking the account. Which counters an attempt meets depends on who
//! makes it (OWASP's "device cookies", see [`super::device`]):
//! * a browser holding a device cookie for the account (it signed in before) is judged by that
//!   device's own failures only, so strangers' guesses never keep the owner out;
//! * anyone else is judged per account and address, per address (one client spraying many
//!   accounts), and per account over all strangers (many addresses guessing one account). An
//!   owner on a new device whom strangers have slowed signs in another way (an emailed link),
//!   and [`forgive_account`] clears the strangers' count.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use sqlx::PgPool;

use super::device::DeviceId;

/// The limits in force (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failures one client (an address, or a known device) may make against one account.
    pub per_client: i64,
    /// Failures against one account from all strangers together.
    pub per_account: i64,
    /// Failures from one address on any accounts.
    pub per_address: i64,
    /// The first wait past an allowance.
    pub backoff: Duration,
    /// The longest wait, and the quiet time after it that forgets a counter.
    pub window: Duration,
}

impl Policy {
    pub fn from_settings(settings: &super::AccountsSettings) -> Self {
        Self {
            per_client: settings.login_limit_per_account,
            per_account: settings.login_limit_per_account_strangers,
            per_address: settings.login_limit_per_address,
            backoff: settings.login_backoff,
            window: settings.login_limit_window,
        }
    }

    /// How long to wait after `failures` counted against an allowance of `allowed`.
    fn delay(&self, failures: i64, allowed: i64) -> Duration {
        let past = failures - allowed;
        if past < 0 {
            return Duration::ZERO;
        }
        let doubled = self.backoff.saturating_mul(1 << past.min(30) as u32);
        doubled.min(self.window.max(self.backoff))
    }
}

/// Who is trying to log in.
#[derive(Debug, Clone)]
pub enum Client {
    /// A browser with a valid device cookie for the account.
    Device(DeviceId),
    /// Anyone else, by address.
    Stranger(IpAddr),
}

/// An attempt whose counters are locked and allow it, not counted yet: [`Pending::count`]
/// counts it; dropping it counts nothing (the caller could not check the password after all).
#[must_use = "an attempt is counted only by `count`"]
pub struct Pending {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    policy: Policy,
    /// Each counter with the failures it allows and its count with this attempt.
    counted: Vec<(Counter, i64)>,
    own: String,
    shared: Vec<String>,
}

/// An attempt that was counted (as a failure until [`Attempt::succeeded`] says otherwise).
#[must_use = "a successful login must take its attempt back"]
#[derive(Debug)]
pub struct Attempt {
    /// The counter of the client itself (cleared when it proves the password).
    own: String,
    /// Counters shared with others (this attempt is taken off them).
    shared: Vec<String>,
}

/// A counter's key and the failures it allows.
type Counter = (String, i64);

/// The counters an attempt meets: the client's own, and those it shares with others.
fn counters(policy: &Policy, username: &str, client: &Client) -> (Counter, Vec<Counter>) {
    let name = username.to_lowercase();
    match client {
        Client::Device(device) => (
            (format!("device:{}", device.as_str()), policy.per_client),
            Vec::new(),
        ),
        Client::Stranger(addr) => {
            let addr = address_key(*addr);
            (
                (format!("client:{name}@{addr}"), policy.per_client),
                vec![
                    (format!("account:{name}"), policy.per_account),
                    (format!("address:{addr}"), policy.per_address),
                ],
            )
        }
    }
}

/// An address as one client: IPv6 by its /64, since one host commonly holds a whole /64.
fn address_key(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{}/64", Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

/// Locks the counters an attempt meets (in key order, so concurrent attempts cannot deadlock)
/// and checks them: `Ok(pending)` when none says to wait, `Err(wait)` otherwise. The locks are
/// held until the pending attempt is counted or dropped, so concurrent attempts are judged
/// one after another, each seeing the counts before it.
pub async fn check(
    pool: &PgPool,
    policy: &Policy,
    username: &str,
    client: &Client,
) -> Result<Result<Pending, Duration>, sqlx::Error> {
    let (own, shared) = counters(policy, username, client);
    let mut all: Vec<&Counter> = std::iter::once(&own).chain(&shared).collect();
    all.sort();
    let keys: Vec<&str> = all.iter().map(|(key, _)| key.as_str()).collect();
    let mut tx = pool.begin().await?;
    let rows = sqlx::query!(
        r#"
        INSERT INTO login_throttle (key) SELECT * FROM unnest($1::text[])
            ON CONFLICT (key) DO UPDATE SET key = excluded.key
        RETURNING key,
            -- The clock, not now(): that is when the transaction began, maybe before a
            -- concurrent attempt it waited for committed.
            -- A forgotten counter starts again from zero.
            CASE WHEN forget_at <= clock_timestamp() THEN 0 ELSE failures END AS "failures!",
            extract(epoch FROM blocked_until - clock_timestamp())::float8 AS "wait!"
        "#,
        &keys as &[&str],
    )
    .fetch_all(&mut *tx)
    .await?;
    let wait = rows.iter().map(|row| row.wait).fold(0.0, f64::max);
    if wait > 0.0 {
        return Ok(Err(Duration::from_secs_f64(wait)));
    }
    let counted = rows
        .iter()
        .filter_map(|row| {
            let counter = all.iter().find(|(key, _)| *key == row.key)?;
            Some(((*counter).clone(), i64::from(row.failures) + 1))
        })
        .collect();
    Ok(Ok(Pending {
        tx,
        policy: *policy,
        counted,
        own: own.0,
        shared: shared.into_iter().map(|(key, _)| key).collect(),
    }))
}

impl Pending {
    /// Counts the attempt (as a failure, before its password is checked) and releases the
    /// counters.
    pub async fn count(mut self) -> Result<Attempt, sqlx::Error> {
        record(&mut self.tx, &self.policy, &self.counted).await?;
        self.tx.commit().await?;
        Ok(Attempt {
            own: self.own,
            shared: self.shared,
        })
    }
}

/// Stores the new counts and the wait each one sets.
async fn record(
    tx: &mut sqlx::PgConnection,
    policy: &Policy,
    counted: &[(Counter, i64)],
) -> Result<(), sqlx::Error> {
    let keys: Vec<&str> = counted.iter().map(|((key, _), _)| key.as_str()).collect();
    let failures: Vec<i32> = counted
        .iter()
        .map(|(_, n)| i32::try_from(*n).unwrap_or(i32::MAX))
        .collect();
    let delays: Vec<f64> = counted
        .iter()
        .map(|((_, allowed), n)| policy.delay(*n, *allowed).as_secs_f64())
        .collect();
    sqlx::query!(
        r#"
        UPDATE login_throttle t
           SET failures = v.failures,
               blocked_until = clock_timestamp() + make_interval(secs => v.delay),
               forget_at = clock_timestamp() + make_interval(secs => v.delay + $4)
          FROM unnest($1::text[], $2::int4[], $3::float8[]) AS v (key, failures, delay)
         WHERE t.key = v.key
        "#,
        &keys as &[&str],
        &failures,
        &delays,
        policy.window.as_secs_f64(),
    )
    .execute(tx)
    .await?;
    Ok(())
}

impl Attempt {
    /// The password was right: the client's own failures are forgotten, and this attempt is
    /// taken off the shared counters (a wait it started there stays: it fails closed).
    pub async fn succeeded(self, pool: &PgPool) -> Result<(), sqlx::Error> {
        sqlx::query!(
            r#"
            WITH own AS (DELETE FROM login_throttle WHERE key = $1)
            UPDATE login_throttle SET failures = greatest(failures - 1, 0) WHERE key = ANY($2)
            "#,
            self.own,
            &self.shared,
        )
        .execute(pool)
        .await?;
        Ok(())
    }
}

/// Forgets every failed login against an account: for a sign-in that proved the owner some
/// other way (an emailed link), after which strangers start counting again from zero.
pub async fn forgive_account(pool: &PgPool, username: &str) -> Result<(), sqlx::Error> {
    let name = username.to_lowercase();
    sqlx::query!(
        "DELETE FROM login_throttle WHERE key = 'account:' || $1 OR starts_with(key, 'client:' || $1 || '@')",
        name,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes forgotten counters; run periodically by the server.
pub async fn sweep(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!("DELETE FROM login_throttle WHERE forget_at < now()")
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            per_client: 5,
            per_account: 20,
            per_address: 50,
            backoff: Duration::from_secs(60),
            window: Duration::from_secs(15 * 60),
        }
    }

    #[test]
    fn the_delay_doubles_past_the_allowance_up_to_the_window() {
        let p = policy();
        let waits: Vec<u64> = (4..=11).map(|n| p.delay(n, 5).as_secs()).collect();
        assert_eq!(waits, [0, 60, 120, 240, 480, 900, 900, 900]);
        assert_eq!(p.delay(i64::MAX, 5).as_secs(), 900);
    }

    #[test]
    fn strangers_meet_three_counters_and_devices_one() {
        let addr: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let (own, shared) = counters(&policy(), "Ada", &Client::Stranger(addr));
        assert_eq!(own, ("client:ada@2001:db8:1:2::/64".to_string(), 5));
        assert_eq!(
            shared,
            [
                ("account:ada".to_string(), 20),
                ("address:2001:db8:1:2::/64".to_string(), 50)
            ]
        );
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1");
        let device = DeviceId::new();
        let (own, shared) = counters(&policy(), "ada", &Client::Device(device.clone()));
        assert_eq!(own, (format!("device:{}", device.as_str()), 5));
        assert!(shared.is_empty());
    }
}
