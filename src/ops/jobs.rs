//! The console's job pages and actions.

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use axum::{
    Form, Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use axum_extra::extract::SignedCookieJar;
use serde::Deserialize;
use serde_json::json;

use super::audit;
use crate::{
    jobs::{
        QueueName,
        control::{self, Cancelled, Count, Filter, JobStatus},
        kind_limits::{self, Rate},
        schedule_store::{self, ScheduleStatus},
    },
    web::{AppState, Layout, WebError, auth::RequireAdmin, flash, render, replicas::LagTolerant},
};

const PAGE: i64 = 50;
/// The most jobs one bulk action touches.
const BULK_LIMIT: i64 = 1000;
const STATES: [&str; 6] = [
    "scheduled",
    "available",
    "running",
    "completed",
    "discarded",
    "cancelled",
];

/// Counts by queue, one row per queue with a column per state.
struct CountTable {
    states: Vec<&'static str>,
    rows: Vec<(String, Vec<i64>)>,
}

fn count_table(counts: &[Count]) -> CountTable {
    let mut by_queue: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
    for c in counts {
        by_queue
            .entry(&c.queue)
            .or_default()
            .insert(&c.state, c.jobs);
    }
    CountTable {
        states: STATES.to_vec(),
        rows: by_queue
            .into_iter()
            .map(|(queue, states)| {
                let cells = STATES
                    .iter()
                    .map(|s| states.get(s).copied().unwrap_or(0))
                    .collect();
                (queue.to_owned(), cells)
            })
            .collect(),
    }
}

#[derive(Template)]
#[template(path = "ops/overview.html")]
struct OverviewPage {
    layout: Layout,
    health: Vec<control::QueueHealth>,
    timings: crate::jobs::metrics::MetricsSnapshot,
    counts: CountTable,
    queues: Vec<(String, bool)>,
    schedules: Vec<ScheduleStatus>,
    /// Rate limits per job kind, and the kinds a limit can be set on.
    kind_limits: Vec<(String, String)>,
    kinds: Vec<&'static str>,
    audit: Vec<audit::Entry>,
}

impl OverviewPage {
    /// Seconds as a short duration: `45 s`, `12 min`, `3.0 h`.
    fn age(&self, seconds: &Option<f64>) -> String {
        match *seconds {
            None => "–".into(),
            Some(s) if s < 120.0 => format!("{s:.0} s"),
            Some(s) if s < 7200.0 => format!("{:.0} min", s / 60.0),
            Some(s) => format!("{:.1} h", s / 3600.0),
        }
    }

    /// A histogram bound in microseconds, as milliseconds.
    fn ms(&self, us: &Option<u64>) -> String {
        us.map_or_else(
            || "–".into(),
            |us| format!("≤ {:.1} ms", us as f64 / 1000.0),
        )
    }
}

/// `/ops`: counts by queue and state, queues, schedules, the latest actions. A report: read
/// from a replica when one serves (after the administrator's own action, one that has
/// replayed it).
pub(super) async fn overview(
    State(state): State<AppState>,
    LagTolerant(db): LagTolerant,
    _admin: RequireAdmin,
    layout: Layout,
) -> Result<Response, WebError> {
    let counts = control::counts(&db).await?;
    let paused: BTreeSet<String> = control::paused(&db).await?.into_iter().collect();
    let mut queues: BTreeSet<String> = counts.iter().map(|c| c.queue.clone()).collect();
    queues.extend(
        state
            .config
            .jobs
            .queues
            .0
            .iter()
            .map(|(q, _)| q.to_string()),
    );
    queues.extend(paused.iter().cloned());
    let queues = queues
        .into_iter()
        .map(|q| {
            let is_paused = paused.contains(&q);
            (q, is_paused)
        })
        .collect();
    let schedules = schedule_store::list(&db, &state.composed.schedules).await?;
    let audit = audit::recent(&db, 10).await?;
    let kind_limits = kind_limits::list(&db)
        .await?
        .into_iter()
        .map(|(kind, rate)| (kind, rate.to_string()))
        .collect();
    Ok(render(&OverviewPage {
        layout,
        health: control::health(&db).await?,
        timings: crate::jobs::metrics::snapshot(),
        counts: count_table(&counts),
        queues,
        schedules,
        kind_limits,
        kinds: state.composed.kinds.names().collect(),
        audit,
    })?
    .into_response())
}

/// `/ops/api/counts`: what the overview's table shows, for its live refresh.
pub(super) async fn counts(
    LagTolerant(db): LagTolerant,
    _admin: RequireAdmin,
) -> Result<Json<Vec<Count>>, WebError> {
    Ok(Json(control::counts(&db).await?))
}

#[derive(Deserialize, Default)]
pub(super) struct ListQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    id: String,
    page: Option<i64>,
}

impl ListQuery {
    /// The filter the form describes; empty fields do not filter. A non-numeric id, or a state
    /// that is none of [`STATES`], is a 400 (rather than a list that is silently empty).
    fn filter(&self) -> Result<Filter, WebError> {
        let given = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let id = match given(&self.id) {
            Some(id) => Some(
                id.parse::<i64>()
                    .map_err(|_| WebError::BadRequest(format!("{id:?} is not a job id")))?,
            ),
            None => None,
        };
        let state = given(&self.state);
        if let Some(state) = &state
            && !STATES.contains(&state.as_str())
        {
            let state: String = state.chars().take(40).collect();
            return Err(WebError::BadRequest(format!(
                "There is no job state called “{state}”. The states are {}.",
                STATES.join(", ")
            )));
        }
        Ok(Filter {
            state,
            queue: given(&self.queue),
            kind: given(&self.kind),
            tag: given(&self.tag),
            id,
        })
    }

    /// The query string of this filter, for pagination links.
    fn query_string(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("state", &self.state)
            .append_pair("queue", &self.queue)
            .append_pair("kind", &self.kind)
            .append_pair("tag", &self.tag)
            .append_pair("id", &self.id)
            .finish()
    }
}

struct JobRow {
    job: JobStatus,
}

impl JobRow {
    fn created(&self) -> String {
        crate::web::templates::ago(self.job.created_at)
    }

    fn last_error(&self) -> String {
        self.job
            .errors
            .as_array()
            .and_then(|errors| errors.last())
            .and_then(|e| e["error"].as_str())
            .map(|e| e.chars().take(120).collect())
            .unwrap_or_default()
    }
}

#[derive(Template)]
#[template(path = "ops/jobs.html")]
struct ListPage {
    layout: Layout,
    query: ListQuery,
    states: Vec<&'static str>,
    jobs: Vec<JobRow>,
    page: i64,
    more: bool,
    query_string: String,
    /// No filter is set: a bulk action needs the "All jobs" box ticked.
    unfiltered: bool,
    /// How many jobs a bulk action would act on, in words.
    matching: String,
    /// Why a bulk action was refused, said by its form.
    bulk_error: Option<String>,
}

/// `/ops/jobs`: jobs matching a filter, newest first, 50 to a page (from a replica when one
/// serves).
pub(super) async fn list(
    LagTolerant(db): LagTolerant,
    _admin: RequireAdmin,
    layout: Layout,
    Query(query): Query<ListQuery>,
) -> Result<Response, WebError> {
    Ok(render(&list_page(&db, layout, query, None).await?)?.into_response())
}

async fn list_page(
    db: &sqlx::PgPool,
    layout: Layout,
    query: ListQuery,
    bulk_error: Option<String>,
) -> Result<ListPage, WebError> {
    let filter = query.filter()?;
    let page = query.page.unwrap_or(1).clamp(1, 10_000);
    let mut jobs = control::search(db, &filter, PAGE + 1, (page - 1) * PAGE).await?;
    let more = jobs.len() as i64 > PAGE;
    jobs.truncate(PAGE as usize);
    let matching = match control::count_matching(db, &filter, BULK_LIMIT + 1).await? {
        n if n > BULK_LIMIT => "more than 1,000 jobs: the newest 1,000".to_owned(),
        1 => "1 job".to_owned(),
        n => format!("{n} jobs"),
    };
    let query_string = query.query_string();
    Ok(ListPage {
        layout,
        states: STATES.to_vec(),
        jobs: jobs.into_iter().map(|job| JobRow { job }).collect(),
        page,
        more,
        query,
        query_string,
        unfiltered: filter.is_empty(),
        matching,
        bulk_error,
    })
}

#[derive(Template)]
#[template(path = "ops/job.html")]
struct JobPage {
    layout: Layout,
    job: JobStatus,
    args: String,
    result: String,
    errors: Vec<(i64, String, String, String)>,
}

impl JobPage {
    fn at(&self, at: &time::OffsetDateTime) -> String {
        crate::web::templates::timestamp(*at)
    }

    fn maybe(&self, at: &Option<time::OffsetDateTime>) -> String {
        at.map_or_else(|| "–".into(), crate::web::templates::timestamp)
    }
}

/// `/ops/jobs/{id}`: everything about one job, and what can be done to it.
pub(super) async fn show(
    State(state): State<AppState>,
    _admin: RequireAdmin,
    layout: Layout,
    Path(id): Path<i64>,
) -> Result<Response, WebError> {
    let job = control::status(&state.db, id)
        .await?
        .ok_or(WebError::NotFound)?;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let errors = job
        .errors
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                    (
                        e["attempt"].as_i64().unwrap_or(0),
                        text("at"),
                        text("instance"),
                        text("error"),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(render(&JobPage {
        layout,
        args: pretty(&job.args),
        result: job.result.as_ref().map(pretty).unwrap_or_default(),
        errors,
        job,
    })?
    .into_response())
}

/// What an action on one job did, in words for the flash message.
async fn apply(state: &AppState, id: i64, action: &str) -> Result<String, WebError> {
    let pool = &state.db;
    Ok(match action {
        "retry" => match control::retry(pool, id).await? {
            true => format!("Job {id} is back in its queue."),
            false => format!("Job {id} is not discarded or cancelled; nothing to retry."),
        },
        "cancel" => match control::cancel(pool, id).await? {
            Cancelled::Cancelled => format!("Job {id} is cancelled."),
            Cancelled::Requested => format!("Job {id} is running; its worker was told to stop."),
            Cancelled::AlreadyFinished => format!("Job {id} had already finished."),
            Cancelled::NotFound => return Err(WebError::NotFound),
        },
        "discard" => match control::discard(pool, id).await? {
            true => format!("Job {id} is discarded."),
            false => format!("Job {id} is not waiting; only waiting jobs can be discarded."),
        },
        "run-now" => match control::run_now(pool, id).await? {
            true => format!("Job {id} is due now."),
            false => format!("Job {id} is not waiting; nothing to run."),
        },
        other => {
            return Err(WebError::BadRequest(format!(
                "{other:?} is not a job action (retry, cancel, discard, run-now)"
            )));
        }
    })
}

/// `POST /ops/jobs/{id}/{action}`.
#[tracing::instrument(skip(state, admin, jar))]
pub(super) async fn act(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    jar: SignedCookieJar,
    Path((id, action)): Path<(i64, String)>,
) -> Result<Response, WebError> {
    let outcome = apply(&state, id, &action).await?;
    audit::record(
        &state.db,
        &admin,
        &format!("job.{action}"),
        &id.to_string(),
        json!({ "outcome": outcome }),
    )
    .await?;
    Ok((
        flash::set(jar, outcome),
        Redirect::to(&format!("/ops/jobs/{id}")),
    )
        .into_response())
}

#[derive(Deserialize)]
pub(super) struct BulkForm {
    action: String,
    /// `yes`: act on every job, no filter being set (the "All jobs" box).
    #[serde(default)]
    all: String,
    #[serde(flatten)]
    query: ListQuery,
}

/// `POST /ops/jobs/bulk`: one action on every job the filter matches (at most 1,000). With no
/// filter, only when the form confirms that every job is meant (`all=yes`): as Oban Web and
/// Sidekiq never act on every job of every state unasked, an empty filter is not taken to
/// mean "all".
#[tracing::instrument(skip_all, fields(action = %form.action))]
pub(super) async fn bulk(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    layout: Layout,
    jar: SignedCookieJar,
    Form(form): Form<BulkForm>,
) -> Result<Response, WebError> {
    let filter = form.query.filter()?;
    if !["retry", "cancel", "discard"].contains(&form.action.as_str()) {
        return Err(WebError::BadRequest(format!(
            "{:?} is not a bulk action (retry, cancel, discard)",
            form.action
        )));
    }
    if filter.is_empty() && form.all != "yes" {
        let error = format!(
            "No filter is set, so {} would act on every job. Choose a filter, or tick “All \
             jobs” to confirm.",
            form.action
        );
        let page = list_page(&state.db, layout, form.query, Some(error)).await?;
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)?).into_response());
    }
    let jobs = control::search(&state.db, &filter, BULK_LIMIT, 0).await?;
    let mut changed = 0;
    for job in &jobs {
        let outcome = match form.action.as_str() {
            "retry" => control::retry(&state.db, job.id).await?,
            "cancel" => matches!(
                control::cancel(&state.db, job.id).await?,
                Cancelled::Cancelled | Cancelled::Requested
            ),
            _ => control::discard(&state.db, job.id).await?,
        };
        changed += usize::from(outcome);
    }
    let message = format!(
        "{}: {changed} of {} matching jobs changed.",
        form.action,
        jobs.len()
    );
    audit::record(
        &state.db,
        &admin,
        &format!("jobs.bulk_{}", form.action),
        &form.query.query_string(),
        json!({ "matched": jobs.len(), "changed": changed, "all": filter.is_empty() }),
    )
    .await?;
    let back = format!("/ops/jobs?{}", form.query.query_string());
    Ok((flash::set(jar, message), Redirect::to(&back)).into_response())
}

/// `POST /ops/queues/{queue}/{pause|resume}`.
#[tracing::instrument(skip(state, admin, jar))]
pub(super) async fn queue(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    jar: SignedCookieJar,
    Path((queue, action)): Path<(String, String)>,
) -> Result<Response, WebError> {
    let name = QueueName::parse(&queue).map_err(|e| WebError::BadRequest(e.to_string()))?;
    let message = match action.as_str() {
        "pause" => {
            control::pause(&state.db, &name).await?;
            format!("Queue {queue} is paused on every instance.")
        }
        "resume" => {
            control::resume(&state.db, &name).await?;
            format!("Queue {queue} runs again.")
        }
        other => {
            return Err(WebError::BadRequest(format!(
                "{other:?} is not a queue action (pause, resume)"
            )));
        }
    };
    audit::record(
        &state.db,
        &admin,
        &format!("queue.{action}"),
        &queue,
        json!({}),
    )
    .await?;
    Ok((flash::set(jar, message), Redirect::to("/ops")).into_response())
}

#[derive(Deserialize)]
pub(super) struct KindLimitForm {
    kind: String,
    /// `10/m`, or `off` (or empty) to lift the limit.
    #[serde(default)]
    rate: String,
}

/// `POST /ops/kind-limits`: sets or lifts the rate limit of a job kind, on every instance.
#[tracing::instrument(skip(state, admin, jar, form), fields(kind = %form.kind, rate = %form.rate))]
pub(super) async fn kind_limit(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    jar: SignedCookieJar,
    Form(form): Form<KindLimitForm>,
) -> Result<Response, WebError> {
    let kind = form.kind.trim();
    let rate = match form.rate.trim() {
        "" | "off" => None,
        spec => {
            // A limit on a kind nothing runs is a typo; lifting one is always allowed.
            state
                .composed
                .kinds
                .require(kind)
                .map_err(WebError::BadRequest)?;
            Some(
                spec.parse::<Rate>()
                    .map_err(|e| WebError::BadRequest(e.to_string()))?,
            )
        }
    };
    kind_limits::set(&state.db, kind, rate)
        .await
        .map_err(|e| match e {
            kind_limits::KindLimitError::Invalid(e) => WebError::BadRequest(e.to_string()),
            kind_limits::KindLimitError::Database(e) => e.into(),
        })?;
    let message = match rate {
        Some(rate) => format!("Kind {kind} starts at most {rate} on all instances together."),
        None => format!("Kind {kind} has no rate limit now."),
    };
    audit::record(
        &state.db,
        &admin,
        "kind.limit",
        kind,
        json!({ "rate": rate.map(|r| r.to_string()) }),
    )
    .await?;
    Ok((flash::set(jar, message), Redirect::to("/ops")).into_response())
}
