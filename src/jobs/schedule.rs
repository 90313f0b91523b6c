//! Periodic jobs (the beat replacement, built in).
//!
//! A schedule names a job to enqueue on a cron expression (in a time zone, UTC by default) or
//! at a fixed interval. Every instance declares the same schedules; the maintenance leader
//! enqueues each due occurrence inside a transaction that locks the schedule's row and records
//! the occurrence, and the job carries a unique key per occurrence besides. After downtime only
//! the latest missed occurrence runs, once.

use std::{str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

use super::enqueue::{Enqueue, EnqueueError, FinishedState, Unique};

/// Why a schedule could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron expression {expr:?}: {reason}")]
    InvalidCron { expr: String, reason: String },
    #[error("unknown time zone {0:?} (use an IANA name such as Europe/Paris)")]
    InvalidTimeZone(String),
    #[error("a schedule interval must be at least one second")]
    IntervalTooShort,
    #[error("invalid schedule name {0:?}: use 1-64 characters of a-z, 0-9, `_`, `-` and `.`")]
    InvalidName(String),
    #[error("schedule entry {entry:?} in HEARTH_SCHEDULES: {reason}")]
    InvalidEntry { entry: String, reason: String },
    #[error(transparent)]
    Job(#[from] EnqueueError),
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Every {
    Cron {
        cron: Box<Cron>,
        expr: String,
        tz: Tz,
    },
    Interval(Duration),
}

impl Every {
    /// A cron expression (5 fields, or 6 with seconds; `@daily` and friends) in `tz`.
    pub fn cron(expr: &str, tz: &str) -> Result<Self, ScheduleError> {
        let cron = Cron::from_str(expr).map_err(|e| ScheduleError::InvalidCron {
            expr: expr.to_owned(),
            reason: e.to_string(),
        })?;
        let tz = Tz::from_str(tz).map_err(|_| ScheduleError::InvalidTimeZone(tz.to_owned()))?;
        let never = || ScheduleError::InvalidCron {
            expr: expr.to_owned(),
            reason: "it never fires".into(),
        };
        // croner accepts a field with no value at all (`, 2 * * *`); the search below would
        // take seconds to find that out, so look first. (Days may be empty when `L`, `W` or
        // `#` choose them.)
        let p = &cron.pattern;
        if [&p.seconds, &p.minutes, &p.hours, &p.months, &p.years]
            .iter()
            .any(|field| field.values().is_empty())
        {
            return Err(never());
        }
        let every = Self::Cron {
            cron: Box::new(cron),
            expr: expr.to_owned(),
            tz,
        };
        // A pattern with no next occurrence (`0 0 30 2 *`, or a year field in the past) would
        // make every check for a due occurrence search to croner's limit, the year 5000, which
        // takes about a second each time (found by `fuzz/`): refuse it once, at start-up.
        if every.next_after(Utc::now()).is_none() {
            return Err(never());
        }
        Ok(every)
    }

    pub fn interval(every: Duration) -> Result<Self, ScheduleError> {
        if every < Duration::from_secs(1) {
            return Err(ScheduleError::IntervalTooShort);
        }
        Ok(Self::Interval(every))
    }

    /// The latest occurrence at or before `now` that is after `last`, if any.
    pub fn due(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let latest = match self {
            Self::Cron { cron, tz, .. } => cron
                .find_previous_occurrence(&now.with_timezone(tz), true)
                .ok()?
                .with_timezone(&Utc),
            Self::Interval(every) => {
                let every = chrono::Duration::from_std(*every).ok()?;
                let elapsed = now.signed_duration_since(last);
                let periods = elapsed
                    .num_milliseconds()
                    .checked_div(every.num_milliseconds())?;
                last + every * i32::try_from(periods).ok()?
            }
        };
        (latest > last).then_some(latest)
    }

    /// The first occurrence after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron { cron, tz, .. } => cron
                .find_next_occurrence(&after.with_timezone(tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Self::Interval(every) => Some(after + chrono::Duration::from_std(*every).ok()?),
        }
    }
}

impl std::fmt::Display for Every {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cron { expr, tz, .. } => write!(f, "cron {expr:?} ({tz})"),
            Self::Interval(every) => write!(f, "every {}", humantime::format_duration(*every)),
        }
    }
}

/// A periodic job.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub every: Every,
    pub job: Enqueue,
}

impl Schedule {
    pub fn new(name: &str, every: Every, job: Enqueue) -> Result<Self, ScheduleError> {
        let valid = (1..=64).contains(&name.len())
            && name.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.')
            });
        if !valid {
            return Err(ScheduleError::InvalidName(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            every,
            job,
        })
    }

    /// The job for one occurrence, unique per (schedule, occurrence) for a day.
    pub(crate) fn occurrence(&self, at: DateTime<Utc>) -> Enqueue {
        let key = format!("schedule:{}:{}", self.name, at.timestamp());
        self.job.clone().unique(
            Unique::key(key)
                .also_when(&[
                    FinishedState::Completed,
                    FinishedState::Discarded,
                    FinishedState::Cancelled,
                ])
                .for_period(Duration::from_secs(86_400)),
        )
    }
}

/// Schedules declared in configuration (`HEARTH_SCHEDULES`): entries separated by `;`, each
/// `name|cron:EXPR|TIME ZONE|kind|JSON args` or `name|every:DURATION||kind|JSON args`, e.g.
/// `nightly|cron:0 3 * * *|Europe/Paris|digest|{}`. Whether the kind exists is checked at
/// start-up against the registry.
pub fn parse_config(spec: &str) -> Result<Vec<Schedule>, ScheduleError> {
    let mut schedules: Vec<Schedule> = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let invalid = |reason: String| ScheduleError::InvalidEntry {
            entry: entry.to_owned(),
            reason,
        };
        let fields: Vec<&str> = entry.splitn(5, '|').map(str::trim).collect();
        let [name, when, tz, kind, args] = fields[..] else {
            return Err(invalid(
                "expected name|cron:EXPR or every:DURATION|time zone|kind|JSON args".into(),
            ));
        };
        let every = match when.split_once(':') {
            Some(("cron", expr)) => {
                Every::cron(expr.trim(), if tz.is_empty() { "UTC" } else { tz })?
            }
            Some(("every", duration)) => {
                let every = humantime::parse_duration(duration.trim())
                    .map_err(|e| invalid(format!("{duration:?}: {e}")))?;
                Every::interval(every)?
            }
            _ => {
                return Err(invalid(format!(
                    "{when:?} must start with `cron:` or `every:`"
                )));
            }
        };
        let args: serde_json::Value = serde_json::from_str(args)
            .map_err(|e| invalid(format!("the args are not JSON: {e}")))?;
        let schedule = Schedule::new(name, every, Enqueue::raw(kind, args, Default::default())?)?;
        if schedules.iter().any(|s| s.name == schedule.name) {
            return Err(invalid(format!("the name {name:?} is used twice")));
        }
        schedules.push(schedule);
    }
    Ok(schedules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn schedules_parse_from_config() {
        let parsed = parse_config(
            "nightly|cron:0 3 * * *|Europe/Paris|noop|{}; tidy|every:10m||sleep|{\"ms\": 5}",
        )
        .unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            parsed[0].every.to_string(),
            "cron \"0 3 * * *\" (Europe/Paris)"
        );
        assert_eq!(parsed[1].every.to_string(), "every 10m");
        assert!(matches!(
            parse_config("x|cron:nope|UTC|noop|{}"),
            Err(ScheduleError::InvalidCron { .. })
        ));
        assert!(matches!(
            parse_config("x|hourly|UTC|noop|{}"),
            Err(ScheduleError::InvalidEntry { .. })
        ));
        assert!(matches!(
            parse_config("x|every:1h|UTC|noop|not json"),
            Err(ScheduleError::InvalidEntry { .. })
        ));
        assert!(matches!(
            parse_config("x|every:1h||noop|{};x|every:2h||noop|{}"),
            Err(ScheduleError::InvalidEntry { .. })
        ));
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(matches!(
            Every::cron("61 * * * *", "UTC"),
            Err(ScheduleError::InvalidCron { .. })
        ));
        assert!(matches!(
            Every::cron("0 0 30 2 *", "UTC"),
            Err(ScheduleError::InvalidCron { reason, .. }) if reason == "it never fires"
        ));
        assert!(matches!(
            Every::cron(", 2 * * *", "UTC"),
            Err(ScheduleError::InvalidCron { reason, .. }) if reason == "it never fires"
        ));
        assert!(matches!(
            Every::cron("0 3 * * *", "Mars/Olympus"),
            Err(ScheduleError::InvalidTimeZone(_))
        ));
        assert!(matches!(
            Every::interval(Duration::from_millis(10)),
            Err(ScheduleError::IntervalTooShort)
        ));
    }

    #[test]
    fn after_downtime_only_the_latest_missed_occurrence_is_due() {
        let daily = Every::cron("0 3 * * *", "UTC").unwrap();
        let last = utc(2026, 1, 1, 3, 0);
        assert_eq!(daily.due(last, utc(2026, 1, 1, 12, 0)), None);
        assert_eq!(
            daily.due(last, utc(2026, 1, 5, 12, 0)),
            Some(utc(2026, 1, 5, 3, 0))
        );
    }

    #[test]
    fn cron_follows_the_time_zone() {
        let paris = Every::cron("0 3 * * *", "Europe/Paris").unwrap();
        // 03:00 in Paris in winter is 02:00 UTC.
        assert_eq!(
            paris.next_after(utc(2026, 1, 1, 0, 0)),
            Some(utc(2026, 1, 1, 2, 0))
        );
    }

    #[test]
    fn intervals_align_to_the_last_occurrence() {
        let every = Every::interval(Duration::from_secs(600)).unwrap();
        let last = utc(2026, 1, 1, 0, 0);
        assert_eq!(every.due(last, utc(2026, 1, 1, 0, 5)), None);
        assert_eq!(
            every.due(last, utc(2026, 1, 1, 0, 35)),
            Some(utc(2026, 1, 1, 0, 30))
        );
    }
}
