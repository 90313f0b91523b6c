//! Rate limits per job kind (`10/m`), across every instance, beside the per-queue limits of
//! [`control::set_limits`](super::control::set_limits).
//!
//! A limit is a fixed window, as the per-queue rate: at most `limit` jobs of the kind start per
//! `period`, the window starting with the first job after the previous one ended. Runners that
//! see any kind limit (re-read once per poll interval) take a serialised fetch: jobs of the
//! unlimited kinds are leased as usual, then, for each limited kind in name order, under a
//! transaction-scoped advisory lock of its own, at most what is left of its window. The lock
//! and the fresh read make the limit exact however many instances fetch at once. Without any
//! kind limit the fetch is the plain one, so unlimited deployments pay nothing.
//!
//! Within one fetch, jobs of limited kinds are taken after those of unlimited kinds, so a
//! limited kind's priority only orders it among its own jobs.

use std::{fmt, str::FromStr, time::Duration};

use sqlx::{PgPool, Row};

/// A rate: at most `limit` jobs per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: i32,
    pub period: Duration,
}

/// Why a rate or a kind was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RateError {
    #[error("{0:?} is not a rate: write it as <count>/<unit>, such as 10/m (units s, m, h, d)")]
    Format(String),
    #[error("a rate of 0 would never run the kind; pause its queue or remove its jobs instead")]
    Zero,
    #[error("{0:?} is not a unit of rate: use s, m, h or d")]
    UnknownUnit(String),
    #[error("at most 1,000,000 jobs per period")]
    TooLarge,
    #[error("a job kind is 1 to 200 characters, without control characters")]
    InvalidKind,
}

impl FromStr for Rate {
    type Err = RateError;

    /// `10/m`, `5/s`, `100/h`, `1000/d` (also `10/min`, `5/second`...).
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let format = || RateError::Format(spec.chars().take(40).collect());
        let (count, unit) = spec.trim().split_once('/').ok_or_else(format)?;
        let limit: u64 = count.trim().parse().map_err(|_| format())?;
        if limit == 0 {
            return Err(RateError::Zero);
        }
        if limit > 1_000_000 {
            return Err(RateError::TooLarge);
        }
        let seconds = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3_600,
            "d" | "day" => 86_400,
            other => return Err(RateError::UnknownUnit(other.chars().take(20).collect())),
        };
        Ok(Self {
            limit: limit as i32,
            period: Duration::from_secs(seconds),
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s".to_owned(),
            60 => "m".to_owned(),
            3_600 => "h".to_owned(),
            86_400 => "d".to_owned(),
            _ => format!("{}", humantime::format_duration(self.period)),
        };
        write!(f, "{}/{unit}", self.limit)
    }
}

fn check_kind(kind: &str) -> Result<(), RateError> {
    if kind.is_empty() || kind.len() > 200 || kind.chars().any(char::is_control) {
        return Err(RateError::InvalidKind);
    }
    Ok(())
}

/// Why setting a kind's limit failed.
#[derive(Debug, thiserror::Error)]
pub enum KindLimitError {
    #[error(transparent)]
    Invalid(#[from] RateError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Sets (or with `None` removes) the rate limit of `kind`; every instance obeys it within a
/// poll interval. Setting a limit starts a new window.
pub async fn set(pool: &PgPool, kind: &str, rate: Option<Rate>) -> Result<(), KindLimitError> {
    check_kind(kind)?;
    match rate {
        None => {
            sqlx::query("DELETE FROM job_kind_limits WHERE kind = $1")
                .bind(kind)
                .execute(pool)
                .await?;
        }
        Some(rate) => {
            sqlx::query(
                "INSERT INTO job_kind_limits (kind, rate_limit, rate_period_s) VALUES ($1, $2, $3)
                 ON CONFLICT (kind) DO UPDATE
                    SET rate_limit = EXCLUDED.rate_limit, rate_period_s = EXCLUDED.rate_period_s,
                        window_start = now(), window_count = 0",
            )
            .bind(kind)
            .bind(rate.limit)
            .bind(rate.period.as_secs_f64())
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

/// Every kind limit, by kind.
pub async fn list(pool: &PgPool) -> Result<Vec<(String, Rate)>, sqlx::Error> {
    sqlx::query("SELECT kind, rate_limit, rate_period_s FROM job_kind_limits ORDER BY kind")
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| {
            let period: f64 = row.try_get("rate_period_s")?;
            Ok((
                row.try_get("kind")?,
                Rate {
                    limit: row.try_get("rate_limit")?,
                    period: Duration::from_secs_f64(period),
                },
            ))
        })
        .collect()
}

/// In the fetch's transaction: waits for `kind`'s lock, then returns how many of its jobs may
/// start now (0 when its window is used up).
pub(crate) async fn allowance(
    conn: &mut sqlx::PgConnection,
    kind: &str,
) -> Result<i64, sqlx::Error> {
    // Its own statement: the count below must be read after the lock is held (a statement's
    // snapshot is taken when it starts).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('hearth_kind:' || $1))")
        .bind(kind)
        .execute(&mut *conn)
        .await?;
    let allowed: Option<i64> = sqlx::query_scalar(
        "SELECT (CASE WHEN window_start + make_interval(secs => rate_period_s) <= now() THEN rate_limit
                      ELSE rate_limit - window_count END)::int8
           FROM job_kind_limits WHERE kind = $1",
    )
    .bind(kind)
    .fetch_optional(&mut *conn)
    .await?;
    // Removed meanwhile: no limit.
    Ok(allowed.unwrap_or(i64::MAX).max(0))
}

/// In the fetch's transaction: counts `started` jobs of `kind` in its window.
pub(crate) async fn took(
    conn: &mut sqlx::PgConnection,
    kind: &str,
    started: usize,
) -> Result<(), sqlx::Error> {
    if started == 0 {
        return Ok(());
    }
    sqlx::query(
        "UPDATE job_kind_limits
            SET window_start = CASE WHEN window_start + make_interval(secs => rate_period_s) <= now() THEN now() ELSE window_start END,
                window_count = CASE WHEN window_start + make_interval(secs => rate_period_s) <= now() THEN $2 ELSE window_count + $2 END
          WHERE kind = $1",
    )
    .bind(kind)
    .bind(started as i32)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_or_explain() {
        let ten = "10/m".parse::<Rate>().unwrap();
        assert_eq!(ten.limit, 10);
        assert_eq!(ten.period, Duration::from_secs(60));
        assert_eq!(ten.to_string(), "10/m");
        assert_eq!(
            " 5 / s ".parse::<Rate>().unwrap().period,
            Duration::from_secs(1)
        );
        assert_eq!(
            "100/hour".parse::<Rate>().unwrap().period,
            Duration::from_secs(3_600)
        );
        assert_eq!("0/s".parse::<Rate>(), Err(RateError::Zero));
        assert_eq!(
            "3/fortnight".parse::<Rate>(),
            Err(RateError::UnknownUnit("fortnight".into()))
        );
        assert!(matches!("ten/m".parse::<Rate>(), Err(RateError::Format(_))));
        assert!(matches!("10".parse::<Rate>(), Err(RateError::Format(_))));
        assert!(matches!("-1/s".parse::<Rate>(), Err(RateError::Format(_))));
        assert_eq!("2000000/s".parse::<Rate>(), Err(RateError::TooLarge));
        assert_eq!(check_kind(""), Err(RateError::InvalidKind));
        assert_eq!(check_kind("a\nb"), Err(RateError::InvalidKind));
    }
}
