//! The console's pages for the channel layer, the cache, the database, and the audit log.

use askama::Template;
use axum::{
    Form,
    extract::State,
    response::{IntoResponse, Redirect, Response},
};
use axum_extra::extract::SignedCookieJar;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::audit;
use crate::{
    cache::CacheStats,
    channels::{InstanceInfo, StatsSnapshot},
    db::replicas::{PrimaryReads, ReplicaStatus},
    web::{
        AppState, Layout, WebError, auth::RequireAdmin, flash, render, replicas::LagTolerant, sse,
        ws,
    },
};

#[derive(Template)]
#[template(path = "ops/realtime.html")]
struct RealtimePage {
    layout: Layout,
    this_instance: String,
    instances: Vec<InstanceInfo>,
    stats: StatsSnapshot,
    websockets: i64,
    event_streams: i64,
    local_groups: Vec<(String, usize)>,
    presence: Vec<(String, i64, i64)>,
}

impl RealtimePage {
    fn heartbeat(&self, instance: &InstanceInfo) -> String {
        crate::web::templates::ago(instance.heartbeat_at)
    }

    fn started(&self, instance: &InstanceInfo) -> String {
        crate::web::templates::ago(instance.started_at)
    }

    fn queue_usage(&self) -> String {
        self.stats
            .notification_queue_usage
            .map_or_else(|| "unknown".into(), |u| format!("{:.4} %", u * 100.0))
    }
}

fn internal(e: impl Into<anyhow::Error>) -> WebError {
    WebError::Internal(e.into())
}

/// `/ops/realtime`: instances alive, this instance's connections and groups, presence across
/// instances, the layer's counters.
pub(super) async fn realtime(
    State(state): State<AppState>,
    _admin: RequireAdmin,
    layout: Layout,
) -> Result<Response, WebError> {
    let channels = &state.channels;
    let mut local_groups = channels.local_groups();
    local_groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    local_groups.truncate(200);
    Ok(render(&RealtimePage {
        layout,
        this_instance: channels.instance().to_owned(),
        instances: channels.instances().await.map_err(internal)?,
        stats: channels.stats().await,
        websockets: ws::stats().open,
        event_streams: sse::open_streams(),
        local_groups,
        presence: channels.presence_counts().await.map_err(internal)?,
    })?
    .into_response())
}

#[derive(Template)]
#[template(path = "ops/cache.html")]
struct CachePage {
    layout: Layout,
    stats: CacheStats,
}

impl CachePage {
    fn ratio(hits: &u64, misses: &u64) -> String {
        let (hits, misses) = (*hits, *misses);
        if hits + misses == 0 {
            "–".into()
        } else {
            format!("{:.1} %", hits as f64 * 100.0 / (hits + misses) as f64)
        }
    }
}

/// `/ops/cache`: hits, misses and evictions per tier; what each tier holds.
pub(super) async fn cache(
    State(state): State<AppState>,
    _admin: RequireAdmin,
    layout: Layout,
) -> Result<Response, WebError> {
    let stats = state.cache.stats().await.map_err(internal)?;
    Ok(render(&CachePage { layout, stats })?.into_response())
}

#[derive(Deserialize)]
pub(super) struct CacheForm {
    /// `clear_prefix`, `invalidate_tag` or `clear`.
    action: String,
    #[serde(default)]
    value: String,
}

/// `POST /ops/cache`: clear by key prefix, drop a tag, or clear everything.
#[tracing::instrument(skip_all, fields(action = %form.action))]
pub(super) async fn cache_action(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    jar: SignedCookieJar,
    Form(form): Form<CacheForm>,
) -> Result<Response, WebError> {
    let value = form.value.trim();
    let needs_value = || {
        if value.is_empty() {
            Err(WebError::Unprocessable("Give a prefix or a tag.".into()))
        } else {
            Ok(value)
        }
    };
    let (message, target) = match form.action.as_str() {
        "clear_prefix" => {
            let prefix = needs_value()?;
            let n = state.cache.clear_prefix(prefix).await.map_err(internal)?;
            (
                format!("Deleted {n} entries starting with {prefix:?}."),
                prefix,
            )
        }
        "invalidate_tag" => {
            let tag = needs_value()?;
            let n = state.cache.invalidate_tag(tag).await.map_err(internal)?;
            (format!("Dropped {n} entries tagged {tag:?}."), tag)
        }
        "clear" => {
            state.cache.clear().await.map_err(internal)?;
            ("The whole cache is cleared.".to_owned(), "*")
        }
        other => {
            return Err(WebError::BadRequest(format!(
                "{other:?} is not a cache action (clear_prefix, invalidate_tag, clear)"
            )));
        }
    };
    audit::record(
        &state.db,
        &admin,
        &format!("cache.{}", form.action),
        target,
        json!({ "outcome": message }),
    )
    .await?;
    Ok((flash::set(jar, message), Redirect::to("/ops/cache")).into_response())
}

struct TableHealth {
    name: String,
    live: i64,
    dead: i64,
    bytes: i64,
    last_vacuum: Option<OffsetDateTime>,
}

impl TableHealth {
    fn size(&self) -> String {
        human_bytes(self.bytes)
    }

    fn vacuumed(&self) -> String {
        self.last_vacuum
            .map_or_else(|| "never".into(), crate::web::templates::ago)
    }

    /// Dead rows as a share of all rows: high values mean vacuum falls behind.
    fn dead_share(&self) -> String {
        let total = self.live + self.dead;
        if total == 0 {
            "–".into()
        } else {
            format!("{:.0} %", self.dead as f64 * 100.0 / total as f64)
        }
    }
}

fn human_bytes(bytes: i64) -> String {
    let mut value = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if value < 1024.0 {
            return format!("{value:.0} {unit}");
        }
        value /= 1024.0;
    }
    format!("{value:.1} TiB")
}

struct OldestTransaction {
    age_seconds: f64,
    state: String,
    application: String,
    query: String,
}

/// A read replica as `/ops/db` shows it.
struct ReplicaRow {
    name: String,
    state: String,
    in_use: bool,
    lag: String,
    lag_bytes: String,
    replayed: String,
    reads: u64,
}

impl ReplicaRow {
    fn of(status: ReplicaStatus, max_lag: std::time::Duration) -> Self {
        Self {
            state: status.describe(max_lag),
            in_use: status.state.in_use(),
            lag: status
                .lag
                .map_or_else(|| "–".into(), |lag| format!("{:.1} s", lag.as_secs_f64())),
            lag_bytes: status.lag_bytes.map_or_else(
                || "–".into(),
                |bytes| human_bytes(bytes.min(i64::MAX as u64) as i64),
            ),
            replayed: status
                .replayed
                .map_or_else(|| "–".into(), |lsn| lsn.to_string()),
            reads: status.reads,
            name: status.name,
        }
    }
}

#[derive(Template)]
#[template(path = "ops/db.html")]
struct DatabasePage {
    layout: Layout,
    /// The PostgreSQL version: for administrators only, never on public pages.
    server_version: String,
    tables: Vec<TableHealth>,
    oldest: Option<OldestTransaction>,
    /// The read replicas (none without `HEARTH_READ_DATABASE_URL`), and their lag bound.
    replicas: Vec<ReplicaRow>,
    max_lag: String,
    /// Lag-tolerant reads the primary took although replicas are configured.
    primary_reads: PrimaryReads,
}

/// `/ops/db`: the server version, the health of the tables jobs, messages and the cache live
/// in, and the oldest open transaction — it holds back vacuum, which slows `SKIP LOCKED`
/// fetches and bloats the message table — all read on the primary (a standby's statistics are
/// its own); then the read replicas, as their monitor last saw them.
pub(super) async fn database(
    State(state): State<AppState>,
    _admin: RequireAdmin,
    layout: Layout,
) -> Result<Response, WebError> {
    let tables = sqlx::query_as!(
        TableHealth,
        r#"SELECT relname AS "name!", n_live_tup AS "live!", n_dead_tup AS "dead!",
                  pg_total_relation_size(relid) AS "bytes!",
                  greatest(last_vacuum, last_autovacuum) AS last_vacuum
             FROM pg_stat_user_tables
            WHERE relname IN ('jobs', 'jobs_done', 'job_unique_keys', 'channel_messages',
                              'channel_presence', 'cache_entries', 'sessions', 'outbox',
                              'notifications', 'chat_messages', 'posts', 'uploads')
            ORDER BY pg_total_relation_size(relid) DESC"#
    )
    .fetch_all(&state.db)
    .await?;
    let oldest = sqlx::query_as!(
        OldestTransaction,
        r#"SELECT extract(epoch FROM now() - xact_start)::float8 AS "age_seconds!",
                  coalesce(state, '') AS "state!", coalesce(application_name, '') AS "application!",
                  left(coalesce(query, ''), 300) AS "query!"
             FROM pg_stat_activity
            WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND datname = current_database()
            ORDER BY xact_start LIMIT 1"#
    )
    .fetch_optional(&state.db)
    .await?;
    let server_version =
        sqlx::query_scalar!(r#"SELECT current_setting('server_version') AS "version!""#)
            .fetch_one(&state.db)
            .await?;
    let max_lag = state.replicas.max_lag();
    let replicas = state
        .replicas
        .statuses()
        .into_iter()
        .map(|status| ReplicaRow::of(status, max_lag))
        .collect();
    Ok(render(&DatabasePage {
        layout,
        server_version,
        tables,
        oldest,
        replicas,
        max_lag: format!("{:.1} s", max_lag.as_secs_f64()),
        primary_reads: state.replicas.primary_reads(),
    })?
    .into_response())
}

#[derive(Template)]
#[template(path = "ops/audit.html")]
struct AuditPage {
    layout: Layout,
    entries: Vec<audit::Entry>,
}

/// `/ops/audit`: the last 200 actions (from a replica when one serves).
pub(super) async fn audit_log(
    LagTolerant(db): LagTolerant,
    _admin: RequireAdmin,
    layout: Layout,
) -> Result<Response, WebError> {
    let entries = audit::recent(&db, 200).await?;
    Ok(render(&AuditPage { layout, entries })?.into_response())
}
