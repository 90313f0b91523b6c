//! The console's schedule pages: every schedule (declared in code or added at run time) with
//! its last and next run; forms to add, change, pause, resume, remove and run one now.
//!
//! The work is `jobs::schedule_store`; this file turns forms into
//! their calls and their refusals into 400s with the message.

use askama::Template;
use axum::{
    Form,
    extract::{Path, State},
    response::{IntoResponse, Redirect, Response},
};
use axum_extra::extract::SignedCookieJar;
use serde::Deserialize;
use serde_json::json;

use super::audit;
use crate::{
    jobs::schedule_store::{self, Changes, ScheduleStatus, StoreError, When},
    web::{AppState, Layout, WebError, auth::RequireAdmin, flash, render, replicas::LagTolerant},
};

impl From<StoreError> for WebError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::NotFound,
            StoreError::Database(e) => e.into(),
            other => Self::BadRequest(other.to_string()),
        }
    }
}

#[derive(Template)]
#[template(path = "ops/schedules.html")]
struct ListPage {
    layout: Layout,
    schedules: Vec<ScheduleStatus>,
    kinds: Vec<&'static str>,
}

impl ListPage {
    fn at(&self, at: &Option<chrono::DateTime<chrono::Utc>>) -> String {
        at.map_or_else(
            || "never".into(),
            |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
    }
}

/// `GET /ops/schedules` (from a replica when one serves).
pub(super) async fn list(
    State(state): State<AppState>,
    LagTolerant(db): LagTolerant,
    _admin: RequireAdmin,
    layout: Layout,
) -> Result<Response, WebError> {
    let schedules = schedule_store::list(&db, &state.composed.schedules).await?;
    Ok(render(&ListPage {
        layout,
        schedules,
        kinds: state.composed.kinds.names().collect(),
    })?
    .into_response())
}

/// The add and change forms: every field optional, empty meaning "not given".
#[derive(Deserialize, Default)]
pub(super) struct ScheduleForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    cron: String,
    #[serde(default)]
    tz: String,
    #[serde(default)]
    every: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    args: String,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    priority: String,
    #[serde(default)]
    max_attempts: String,
    #[serde(default)]
    catch_up: String,
}

impl ScheduleForm {
    fn changes(&self) -> Result<Changes, WebError> {
        let given = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let number = |field: &str, s: &str| -> Result<Option<i64>, WebError> {
            given(s)
                .map(|v| {
                    v.parse::<i64>().map_err(|_| {
                        WebError::BadRequest(format!("{field} must be a whole number, not {v:?}"))
                    })
                })
                .transpose()
        };
        let small = |field: &str, n: Option<i64>| -> Result<Option<i32>, WebError> {
            n.map(|n| {
                i32::try_from(n).map_err(|_| WebError::BadRequest(format!("{field} is too large")))
            })
            .transpose()
        };
        let priority = small("priority", number("priority", &self.priority)?)?
            .map(|p| {
                i16::try_from(p).map_err(|_| {
                    WebError::BadRequest("priority must be between -32768 and 32767".into())
                })
            })
            .transpose()?;
        Ok(Changes {
            when: When::from_parts(
                given(&self.cron).as_deref(),
                given(&self.tz).as_deref(),
                given(&self.every).as_deref(),
            )?,
            kind: given(&self.kind),
            args: given(&self.args)
                .map(|a| serde_json::from_str(&a))
                .transpose()
                .map_err(|e| StoreError::ArgsNotJson(e.to_string()))?,
            queue: given(&self.queue),
            priority,
            max_attempts: small("max attempts", number("max attempts", &self.max_attempts)?)?,
            catch_up: given(&self.catch_up)
                .map(|c| c.parse())
                .transpose()
                .map_err(|e: crate::jobs::ScheduleError| WebError::BadRequest(e.to_string()))?,
        })
    }
}

/// `POST /ops/schedules`: adds a run-time schedule.
#[tracing::instrument(skip(state, admin, jar, form), fields(name = %form.name))]
pub(super) async fn add(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    jar: SignedCookieJar,
    Form(form): Form<ScheduleForm>,
) -> Result<Response, WebError> {
    let name = form.name.trim().to_owned();
    let changes = form.changes()?;
    let c = &state.composed;
    schedule_store::add(&state.db, &c.kinds, &c.schedules, &name, changes).await?;
    audit::record(&state.db, &admin, "schedule.add", &name, json!({})).await?;
    let message = format!("Schedule {name} added; it fires on every instance's next tick.");
    Ok((flash::set(jar, message), Redirect::to("/ops/schedules")).into_response())
}

#[derive(Template)]
#[template(path = "ops/schedule.html")]
struct EditPage {
    layout: Layout,
    s: ScheduleStatus,
    kinds: Vec<&'static str>,
}

/// `GET /ops/schedules/{name}`: a schedule, with the form that changes it (run-time ones).
pub(super) async fn show(
    State(state): State<AppState>,
    _admin: RequireAdmin,
    layout: Layout,
    Path(name): Path<String>,
) -> Result<Response, WebError> {
    let s = schedule_store::list(&state.db, &state.composed.schedules)
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or(WebError::NotFound)?;
    Ok(render(&EditPage {
        layout,
        s,
        kinds: state.composed.kinds.names().collect(),
    })?
    .into_response())
}

/// `POST /ops/schedules/{name}`: changes a run-time schedule (the fields given).
#[tracing::instrument(skip(state, admin, jar, form))]
pub(super) async fn change(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    jar: SignedCookieJar,
    Path(name): Path<String>,
    Form(form): Form<ScheduleForm>,
) -> Result<Response, WebError> {
    let changes = form.changes()?;
    let c = &state.composed;
    schedule_store::change(&state.db, &c.kinds, &c.schedules, &name, changes).await?;
    audit::record(&state.db, &admin, "schedule.change", &name, json!({})).await?;
    Ok((
        flash::set(jar, format!("Schedule {name} changed.")),
        Redirect::to(&format!("/ops/schedules/{name}")),
    )
        .into_response())
}

/// `POST /ops/schedules/{name}/{run|pause|resume|remove}`.
#[tracing::instrument(skip(state, admin, jar))]
pub(super) async fn act(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    jar: SignedCookieJar,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, WebError> {
    let code = &state.composed.schedules;
    let mut back = "/ops/schedules".to_owned();
    let (message, details) = match action.as_str() {
        "run" => {
            let job = schedule_store::run_now(&state.db, code, &name).await?;
            back = format!("/ops/jobs/{}", job.id);
            (
                format!("Schedule {name} enqueued job {}.", job.id),
                json!({ "job_id": job.id }),
            )
        }
        "pause" | "resume" => {
            let pause = action == "pause";
            schedule_store::set_paused(&state.db, code, &name, pause).await?;
            let message = if pause {
                format!("Schedule {name} is paused on every instance.")
            } else {
                format!("Schedule {name} fires again, from its next occurrence.")
            };
            (message, json!({}))
        }
        "remove" => {
            schedule_store::remove(&state.db, code, &name).await?;
            (format!("Schedule {name} is removed."), json!({}))
        }
        other => {
            return Err(WebError::BadRequest(format!(
                "{other:?} is not a schedule action (run, pause, resume, remove)"
            )));
        }
    };
    audit::record(
        &state.db,
        &admin,
        &format!("schedule.{action}"),
        &name,
        details,
    )
    .await?;
    Ok((flash::set(jar, message), Redirect::to(&back)).into_response())
}
