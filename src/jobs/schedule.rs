//! Periodic jobs (the beat replacement, built in).
//!
//! A schedule names a job to enqueue on a cron expression (in a time zone, UTC by default) or
//! at a fixed interval. Every instance declares the same schedules; the maintenance leader
//! enqueues each due occurrence inside a transaction that locks the schedule's row and records
//! the occurrence, and the job carries a unique key per occurrence besides. What runs of the
//! occurrences missed while no instance ran is each schedule's [`CatchUp`] rule (by default the
//! latest one only, once). Schedules can also be kept in the database and managed at run time:
//! see [`schedule_store`](super::schedule_store).

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
    #[error("{0:?} is not a catch-up rule: use all, latest or none")]
    InvalidCatchUp(String),
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

    /// The occurrences after `last` and at or before `now`, oldest first: the latest `max`
    /// of them, so a long downtime costs at most `max` steps of the search.
    pub fn missed(
        &self,
        last: DateTime<Utc>,
        now: DateTime<Utc>,
        max: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut found = Vec::new();
        match self {
            Self::Cron { cron, tz, .. } => {
                let mut from = now.with_timezone(tz);
                let mut inclusive = true;
                while found.len() < max {
                    let Ok(at) = cron.find_previous_occurrence(&from, inclusive) else {
                        break;
                    };
                    if at.with_timezone(&Utc) <= last {
                        break;
                    }
                    found.push(at.with_timezone(&Utc));
                    from = at;
                    inclusive = false;
                }
            }
            Self::Interval(every) => {
                let Some(mut at) = self.due(last, now) else {
                    return found;
                };
                let Ok(every) = chrono::Duration::from_std(*every) else {
                    return found;
                };
                while at > last && found.len() < max {
                    found.push(at);
                    at -= every;
                }
            }
        }
        found.reverse();
        found
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

/// At most this many missed occurrences run under [`CatchUp::All`]: the latest ones; older
/// ones are skipped with a warning (a schedule every second down for a day would otherwise
/// enqueue 86,400 jobs at once).
pub const CATCH_UP_ALL_LIMIT: usize = 100;

/// Under [`CatchUp::None`], an occurrence found due at most this late still runs: the
/// maintenance tick that finds it may come a few seconds after it (a slow transaction, a busy
/// machine); an occurrence found later than this was missed while no instance ran.
pub const ON_TIME: Duration = Duration::from_secs(60);

/// What runs of the occurrences a schedule missed while no instance ran (or while the
/// maintenance leader could not reach the database).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Every missed occurrence, oldest first, at most the latest [`CATCH_UP_ALL_LIMIT`].
    All,
    /// The latest missed occurrence only, once (the default).
    #[default]
    Latest,
    /// None of them: the schedule waits for its next occurrence. An occurrence found due
    /// within [`ON_TIME`] still runs.
    None,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Latest => "latest",
            Self::None => "none",
        }
    }
}

impl FromStr for CatchUp {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "all" => Ok(Self::All),
            "latest" => Ok(Self::Latest),
            "none" => Ok(Self::None),
            other => Err(ScheduleError::InvalidCatchUp(
                other.chars().take(40).collect(),
            )),
        }
    }
}

impl std::fmt::Display for CatchUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A periodic job.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub every: Every,
    pub job: Enqueue,
    pub catch_up: CatchUp,
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
            catch_up: CatchUp::default(),
        })
    }

    /// What runs of the occurrences missed while no instance ran (see [`CatchUp`]).
    pub fn catch_up(mut self, rule: CatchUp) -> Self {
        self.catch_up = rule;
        self
    }

    /// The occurrences to enqueue now, oldest first, given the last one enqueued: the last of
    /// them becomes the schedule's last occurrence. Under [`CatchUp::None`] a late occurrence
    /// is returned as skipped (`Due::skip_to`) so that the clock moves past it.
    pub(crate) fn due(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Due {
        let on_time = |at: DateTime<Utc>| {
            now.signed_duration_since(at)
                .to_std()
                .map_or(true, |late| late <= ON_TIME)
        };
        match self.catch_up {
            CatchUp::Latest => Due {
                run: self.every.due(last, now).into_iter().collect(),
                skip_to: None,
            },
            CatchUp::None => match self.every.due(last, now) {
                Some(at) if on_time(at) => Due {
                    run: vec![at],
                    skip_to: None,
                },
                latest => Due {
                    run: Vec::new(),
                    skip_to: latest,
                },
            },
            CatchUp::All => {
                let run = self.every.missed(last, now, CATCH_UP_ALL_LIMIT + 1);
                let skipped = run.len() > CATCH_UP_ALL_LIMIT;
                Due {
                    run: run[usize::from(skipped)..].to_vec(),
                    skip_to: None,
                }
            }
        }
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

/// What a schedule enqueues on one maintenance tick.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Due {
    /// Occurrences to enqueue, oldest first.
    pub run: Vec<DateTime<Utc>>,
    /// An occurrence not run that the schedule's clock moves to.
    pub skip_to: Option<DateTime<Utc>>,
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
    fn catch_up_rules_choose_the_missed_occurrences() {
        let hourly = Every::cron("0 * * * *", "UTC").unwrap();
        let (last, now) = (utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 5, 30));
        let hours = |hs: &[u32]| {
            hs.iter()
                .map(|&h| utc(2026, 1, 1, h, 0))
                .collect::<Vec<_>>()
        };
        assert_eq!(hourly.missed(last, now, 100), hours(&[1, 2, 3, 4, 5]));
        assert_eq!(hourly.missed(last, now, 3), hours(&[3, 4, 5]));
        let every = Every::interval(Duration::from_secs(3_600)).unwrap();
        assert_eq!(every.missed(last, now, 2), hours(&[4, 5]));

        let schedule = |rule| {
            Schedule::new(
                "s",
                hourly.clone(),
                Enqueue::raw("noop", serde_json::json!({}), Default::default()).unwrap(),
            )
            .unwrap()
            .catch_up(rule)
        };
        assert_eq!(
            schedule(CatchUp::All).due(last, now).run,
            hours(&[1, 2, 3, 4, 5])
        );
        assert_eq!(schedule(CatchUp::Latest).due(last, now).run, hours(&[5]));
        let none = schedule(CatchUp::None).due(last, now);
        assert_eq!(
            (none.run, none.skip_to),
            (vec![], Some(utc(2026, 1, 1, 5, 0)))
        );
        // Found on time (within ON_TIME), `none` still runs it.
        let on_time =
            schedule(CatchUp::None).due(last, utc(2026, 1, 1, 5, 0) + chrono::Duration::seconds(3));
        assert_eq!(on_time.run, hours(&[5]));
        // A day of a schedule every second: the latest CATCH_UP_ALL_LIMIT.
        let often = Schedule::new(
            "o",
            Every::interval(Duration::from_secs(1)).unwrap(),
            schedule(CatchUp::All).job,
        )
        .unwrap()
        .catch_up(CatchUp::All);
        let due = often.due(utc(2026, 1, 1, 0, 0), utc(2026, 1, 2, 0, 0));
        assert_eq!(due.run.len(), CATCH_UP_ALL_LIMIT);
        assert_eq!(due.run.last(), Some(&utc(2026, 1, 2, 0, 0)));
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
