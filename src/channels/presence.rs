//! Presence, the instance heartbeat and the layer's housekeeping.
//!
//! Presence is a table, `channel_presence`, so that every instance sees every member: joining
//! inserts a row and sends `presence.join` to the group, leaving deletes it and sends
//! `presence.leave` — the `DELETE ... RETURNING` makes sure one leave is sent per entry, even
//! when two instances clean up at once.
//!
//! Each instance heartbeats its row in `channel_instances`. An instance that stops (`kill -9`,
//! a lost machine) stops heartbeating; after three missed heartbeats the housekeeping removes
//! it with its presence entries, sending their leave events. Housekeeping (that and pruning)
//! runs in one instance at a time: whichever takes a transaction-scoped advisory lock.

use serde::Serialize;
use time::OffsetDateTime;

use super::{ChannelError, ChannelLayer, ChannelName, GroupName, history};

/// The signed-in user behind a presence entry.
#[derive(Debug, Clone, Serialize)]
pub struct PresenceUser {
    pub id: i64,
    pub username: String,
}

/// One connection in a group's presence list.
#[derive(Debug, Clone, Serialize)]
pub struct PresenceEntry {
    pub channel: String,
    pub instance: String,
    pub user_id: Option<i64>,
    pub username: Option<String>,
    pub meta: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    pub joined_at: OffsetDateTime,
}

/// An instance of the layer, alive or recently so.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceInfo {
    pub id: String,
    pub host: String,
    pub pid: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub heartbeat_at: OffsetDateTime,
}

#[derive(Serialize)]
struct PresenceEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    group: &'a str,
    channel: &'a str,
    user_id: Option<i64>,
    username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a serde_json::Value>,
}

pub(super) async fn join(
    layer: &ChannelLayer,
    group: &GroupName,
    channel: &ChannelName,
    user: Option<PresenceUser>,
    meta: serde_json::Value,
) -> Result<(), ChannelError> {
    let (user_id, username) = user.map(|u| (u.id, u.username)).unzip();
    sqlx::query!(
        "INSERT INTO channel_presence (group_name, channel, instance, user_id, username, meta)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (group_name, channel) DO UPDATE SET meta = excluded.meta",
        group.as_str(),
        channel.as_str(),
        layer.instance(),
        user_id,
        username,
        meta,
    )
    .execute(&layer.inner.pool)
    .await?;
    let event = PresenceEvent {
        kind: "presence.join",
        group: group.as_str(),
        channel: channel.as_str(),
        user_id,
        username: username.as_deref(),
        meta: Some(&meta),
    };
    layer.group_send(group, &event).await?;
    Ok(())
}

pub(super) async fn leave(
    layer: &ChannelLayer,
    group: &GroupName,
    channel: &ChannelName,
) -> Result<(), ChannelError> {
    let gone = sqlx::query!(
        "DELETE FROM channel_presence WHERE group_name = $1 AND channel = $2
         RETURNING user_id, username",
        group.as_str(),
        channel.as_str(),
    )
    .fetch_optional(&layer.inner.pool)
    .await?;
    if let Some(gone) = gone {
        let event = PresenceEvent {
            kind: "presence.leave",
            group: group.as_str(),
            channel: channel.as_str(),
            user_id: gone.user_id,
            username: gone.username.as_deref(),
            meta: None,
        };
        layer.group_send(group, &event).await?;
    }
    Ok(())
}

impl ChannelLayer {
    /// Who is connected to `group`, on every live instance, oldest first.
    pub async fn presence(&self, group: &GroupName) -> Result<Vec<PresenceEntry>, ChannelError> {
        Ok(sqlx::query_as!(
            PresenceEntry,
            "SELECT p.channel, p.instance, p.user_id, p.username, p.meta, p.joined_at
             FROM channel_presence p
             JOIN channel_instances i ON i.id = p.instance
             WHERE p.group_name = $1 AND i.heartbeat_at > now() - make_interval(secs => $2)
             ORDER BY p.joined_at, p.channel",
            group.as_str(),
            self.dead_after_secs(),
        )
        .fetch_all(&self.inner.pool)
        .await?)
    }

    /// Instances that heartbeat within the last three heartbeats.
    pub async fn instances(&self) -> Result<Vec<InstanceInfo>, ChannelError> {
        Ok(sqlx::query_as!(
            InstanceInfo,
            "SELECT id, host, pid, started_at, heartbeat_at FROM channel_instances
             WHERE heartbeat_at > now() - make_interval(secs => $1)
             ORDER BY started_at, id",
            self.dead_after_secs(),
        )
        .fetch_all(&self.inner.pool)
        .await?)
    }

    /// This instance's groups and their local member counts, largest first.
    /// Groups with presence entries on live instances: `(group, connections, distinct users)`.
    pub async fn presence_counts(&self) -> Result<Vec<(String, i64, i64)>, ChannelError> {
        let rows = sqlx::query!(
            r#"SELECT p.group_name, count(*) AS "connections!", count(DISTINCT p.user_id) AS "users!"
                 FROM channel_presence p
                 JOIN channel_instances i ON i.id = p.instance
                WHERE i.heartbeat_at > now() - make_interval(secs => $1)
                GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 200"#,
            self.dead_after_secs(),
        )
        .fetch_all(&self.inner.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.group_name, r.connections, r.users))
            .collect())
    }

    pub fn local_groups(&self) -> Vec<(String, usize)> {
        self.inner.local.group_sizes()
    }

    fn dead_after_secs(&self) -> f64 {
        3.0 * self.inner.config.heartbeat.as_secs_f64()
    }
}

async fn register_instance(layer: &ChannelLayer) -> Result<(), ChannelError> {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    sqlx::query!(
        "INSERT INTO channel_instances (id, host, pid) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
        layer.instance(),
        host,
        std::process::id() as i32,
    )
    .execute(&layer.inner.pool)
    .await?;
    Ok(())
}

/// Removes this instance and its presence entries, sending their leave events.
pub(super) async fn unregister_instance(layer: &ChannelLayer) -> Result<(), ChannelError> {
    let mut tx = layer.inner.pool.begin().await?;
    remove_instances(layer, &mut tx, Some(layer.instance())).await?;
    tx.commit().await?;
    Ok(())
}

/// Registers and heartbeats this instance and, when it leads, runs the housekeeping; until
/// shutdown.
pub(super) async fn heartbeat(layer: ChannelLayer) {
    let mut every = tokio::time::interval(layer.inner.config.heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = layer.inner.shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        // Re-registering also brings back a row removed while this instance was stalled.
        if let Err(e) = register_instance(&layer).await {
            tracing::warn!(error = %e, "channel layer heartbeat failed");
            continue;
        }
        if let Err(e) = housekeeping(&layer).await {
            tracing::warn!(error = %e, "channel layer housekeeping failed");
        }
    }
}

#[tracing::instrument(skip_all)]
async fn housekeeping(layer: &ChannelLayer) -> Result<(), ChannelError> {
    let mut tx = layer.inner.pool.begin().await?;
    let leader = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock(hashtext('hearth_channels_housekeeping')) AS "leader!""#
    )
    .fetch_one(&mut *tx)
    .await?;
    if !leader {
        return Ok(());
    }
    remove_instances(layer, &mut tx, None).await?;
    tx.commit().await?;
    history::prune(&layer.inner.pool, layer.inner.config.retention).await?;
    Ok(())
}

/// Deletes one instance (`Some`) or every instance that stopped heartbeating (`None`), with
/// their presence entries; members of the groups receive `presence.leave` for each.
async fn remove_instances(
    layer: &ChannelLayer,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    only: Option<&str>,
) -> Result<(), ChannelError> {
    let gone = sqlx::query!(
        r#"WITH dead AS (
               DELETE FROM channel_instances
               WHERE CASE WHEN $1::text IS NULL
                          THEN heartbeat_at < now() - make_interval(secs => $2)
                          ELSE id = $1 END
               RETURNING id
           )
           DELETE FROM channel_presence p
           WHERE p.instance IN (SELECT id FROM dead)
              OR ($1::text IS NULL AND NOT EXISTS (
                     SELECT 1 FROM channel_instances i WHERE i.id = p.instance))
              OR p.instance = $1
           RETURNING p.group_name, p.channel, p.user_id, p.username"#,
        only,
        layer.dead_after_secs(),
    )
    .fetch_all(&mut **tx)
    .await?;
    for entry in gone {
        let Ok(group) = GroupName::parse(entry.group_name.clone()) else {
            continue;
        };
        let event = PresenceEvent {
            kind: "presence.leave",
            group: &entry.group_name,
            channel: &entry.channel,
            user_id: entry.user_id,
            username: entry.username.as_deref(),
            meta: None,
        };
        layer.group_send_in(tx, &group, &event).await?;
    }
    Ok(())
}
