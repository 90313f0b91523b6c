//! The channel layer: messages between connections, across every `hearth` instance, through
//! Postgres (what Django Channels needs Redis for).
//!
//! The API is Channels': every connection gets a unique [`ChannelName`]; [`ChannelLayer::send`]
//! sends to one channel, [`ChannelLayer::group_send`] to every member of a [`GroupName`], and
//! a [`Subscription`] joins and leaves groups. Messages are JSON objects whose `type` selects the
//! consumer's handler. `group_send` works from a view, a job or a consumer, and inside the
//! caller's transaction ([`ChannelLayer::group_send_in`]), delivered only if it commits.
//!
//! How it works:
//!
//! * [`publisher`]: sends from this process go to one task that writes them in batches — one
//!   `INSERT` and one `NOTIFY` per batch, so few transactions take NOTIFY's cluster-wide commit
//!   lock however many messages are sent;
//! * the `channel_messages` table is the source of truth: one row per message, not per member;
//! * [`reader`]: one dedicated LISTEN connection per instance; a notification only wakes the
//!   reader, which reads the rows after its cursor (with a rule that never skips an id whose
//!   transaction commits late) and fans each out to this instance's members, decoding it once;
//!   after a lost connection it reconnects with backoff and catches up from the cursor;
//! * [`local`]: group membership of this instance's connections, in memory; each connection has a
//!   bounded queue and is dropped as a slow consumer when it fills, never growing memory;
//! * [`history`]: per-group retention and recovery of missed messages after a reconnect;
//! * [`presence`]: who is connected to a group across instances, with join and leave events;
//!   the instance heartbeat and the housekeeping (pruning, dead instances) one instance runs.

mod history;
mod local;
mod names;
mod presence;
mod publisher;
mod reader;
mod stats;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sqlx::{PgPool, Postgres, Transaction, postgres::PgConnectOptions};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use history::History;
pub use local::Subscription;
pub use names::{ChannelName, GroupName};
pub use presence::{InstanceInfo, PresenceEntry, PresenceUser};
pub use stats::StatsSnapshot;

use local::Local;
use publisher::Publish;
use stats::Stats;

/// The NOTIFY channel that wakes readers. Its payload is empty: the rows carry the messages.
const NOTIFY_CHANNEL: &str = "hearth_channels";

/// What a call to the channel layer can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("invalid {kind} name {name:?}: use 1 to 100 ASCII letters, digits, '-', '_' or '.'")]
    InvalidName { kind: &'static str, name: String },
    #[error("a channel message must be a JSON object with a string \"type\": {0}")]
    InvalidMessage(String),
    #[error("the message is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error(
        "the messages after {after} in group {group} are no longer kept (pruned through {pruned_through})"
    )]
    GapTooOld {
        group: String,
        after: i64,
        pruned_through: i64,
    },
    #[error("cannot write the message to the database")]
    Publish(#[source] Arc<sqlx::Error>),
    #[error("the channel layer is shut down")]
    Closed,
    #[error("database error in the channel layer")]
    Database(#[from] sqlx::Error),
}

/// How the channel layer runs.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Identifies this instance in channel names, presence and the instances table.
    pub instance: String,
    /// How long messages of groups without their own [`History`] are kept (for catch-up after
    /// a lost listener connection and for resumption by reconnecting clients).
    pub retention: Duration,
    /// Messages waiting for one connection before it is dropped as a slow consumer.
    pub send_queue: usize,
    /// Largest message accepted by `send`/`group_send`, in bytes of JSON.
    pub max_message: usize,
    /// How often the reader reads without being notified (the fallback for lost notifications,
    /// and for closing gaps left by rolled-back transactions).
    pub poll_interval: Duration,
    /// How often this instance heartbeats; presence of an instance silent for three heartbeats
    /// is removed.
    pub heartbeat: Duration,
    /// Where the LISTEN and publisher connections connect (`HEARTH_DIRECT_DATABASE_URL`): they
    /// need a session of their own. `None`: where the pool connects.
    pub session: Option<PgConnectOptions>,
}

impl ChannelConfig {
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            instance: instance.into(),
            retention: Duration::from_secs(300),
            send_queue: 256,
            max_message: 1 << 20,
            poll_interval: Duration::from_secs(1),
            heartbeat: Duration::from_secs(5),
            session: None,
        }
    }
}

/// One message as delivered to this instance's connections: shared by all of them, decoded
/// at most once per instance.
#[derive(Debug)]
pub struct Delivery {
    /// The message id: increasing, unique across instances; the offset clients resume from.
    pub id: i64,
    /// The group or channel it was sent to.
    pub target: String,
    pub is_group: bool,
    /// The message's `type`, e.g. `chat.message`.
    pub kind: String,
    payload: Box<str>,
    frame: OnceLock<Bytes>,
    event: OnceLock<Bytes>,
}

impl Delivery {
    /// The message as it was sent, as JSON text.
    pub fn payload(&self) -> &str {
        &self.payload
    }

    /// Decodes the message into a handler's type (typically an enum tagged by `type`).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.payload)
    }

    /// The frame sent to clients for this message, built by the first connection that asks and
    /// shared by the others: with a thousand members, the message is encoded once, not a
    /// thousand times. Every caller must pass an equivalent `encode`.
    pub fn shared_frame(&self, encode: impl FnOnce(&Self) -> String) -> Bytes {
        self.frame.get_or_init(|| Bytes::from(encode(self))).clone()
    }
}

impl Delivery {
    fn new(id: i64, target: String, is_group: bool, kind: String, payload: String) -> Self {
        Self {
            id,
            target,
            is_group,
            kind,
            payload: payload.into_boxed_str(),
            frame: OnceLock::new(),
            event: OnceLock::new(),
        }
    }

    /// The message as a server-sent event (`id`, `event` = its type, `data` = the JSON), built
    /// once per instance. The JSON was written by serde_json, so it holds no raw newline that
    /// would end the `data:` line early.
    pub fn event_stream_frame(&self) -> Bytes {
        self.event
            .get_or_init(|| {
                Bytes::from(format!(
                    "id: {}\nevent: {}\ndata: {}\n\n",
                    self.id, self.kind, self.payload
                ))
            })
            .clone()
    }
}

/// Only the `type` of a message, to validate and route it without decoding the rest.
#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: String,
}

/// A handle to this instance's channel layer. Cheap to clone.
#[derive(Clone)]
pub struct ChannelLayer {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    config: ChannelConfig,
    local: Local,
    stats: Stats,
    publish: mpsc::Sender<Publish>,
    /// Set once the reader knows where to start reading: messages written before that could
    /// be missed by members of this instance, so the publisher waits for it.
    ready: watch::Sender<bool>,
    shutdown: CancellationToken,
    /// Cancelled before `shutdown`: connections close (WebSocket 1001, event streams end).
    connections_closing: CancellationToken,
    tasks: TaskTracker,
}

impl ChannelLayer {
    /// Options for the layer's own connections (LISTEN, publisher), which need a session.
    fn session_options(&self) -> PgConnectOptions {
        match &self.inner.config.session {
            Some(options) => options.clone(),
            None => (*self.inner.pool.connect_options()).clone(),
        }
    }

    /// The setting [`session_options`](Self::session_options) come from, for log lines.
    fn session_setting(&self) -> &'static str {
        match &self.inner.config.session {
            Some(_) => "HEARTH_DIRECT_DATABASE_URL",
            None => "DATABASE_URL",
        }
    }

    /// Starts the layer's tasks (publisher, reader, heartbeat and housekeeping) on `pool`.
    /// Nothing here waits for the database: if it does not answer yet, the tasks retry with
    /// backoff, and sends fail with a clear error meanwhile.
    pub fn start(pool: PgPool, config: ChannelConfig) -> Self {
        let (publish, requests) = mpsc::channel(publisher::QUEUE);
        let inner = Arc::new(Inner {
            pool,
            local: Local::new(&config.instance),
            config,
            stats: Stats::default(),
            publish,
            ready: watch::Sender::new(false),
            shutdown: CancellationToken::new(),
            connections_closing: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let layer = Self { inner };
        let tasks = &layer.inner.tasks;
        tasks.spawn(publisher::run(layer.clone(), requests));
        tasks.spawn(reader::run(layer.clone()));
        tasks.spawn(presence::heartbeat(layer.clone()));
        layer
    }

    /// Stops the tasks and removes this instance's presence (with leave events).
    pub async fn shutdown(&self) {
        self.inner.connections_closing.cancel();
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        if let Err(e) = presence::unregister_instance(self).await {
            tracing::warn!(error = %e, "cannot remove this instance's presence entries");
        }
    }

    /// Waits until the reader is listening and knows its starting point (the first time the
    /// database answers). Serve connections only after it: a member that joins earlier could
    /// miss messages sent meanwhile.
    pub async fn ready(&self) {
        let mut ready = self.inner.ready.subscribe();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// Fires when connections should close (the server is shutting down).
    pub fn closing(&self) -> CancellationToken {
        self.inner.connections_closing.child_token()
    }

    /// [`closing`](Self::closing) without a child token of its own: a child is a node of
    /// about 120 bytes in the token's tree for as long as it lives, which every open socket
    /// would keep (#36). For the platform's connection loops, which never cancel it.
    pub(crate) fn closing_shared(&self) -> CancellationToken {
        self.inner.connections_closing.clone()
    }

    /// Closes every WebSocket (1001) and event stream of this instance; the layer itself keeps
    /// running until [`shutdown`](Self::shutdown), so jobs can still send.
    pub fn close_connections(&self) {
        self.inner.connections_closing.cancel();
    }

    /// Tracks connection tasks, so that [`shutdown`](Self::shutdown) waits for them to close.
    pub fn tracker(&self) -> TaskTracker {
        self.inner.tasks.clone()
    }

    pub fn instance(&self) -> &str {
        &self.inner.config.instance
    }

    pub fn config(&self) -> &ChannelConfig {
        &self.inner.config
    }

    /// The pool the layer runs on (the app's), for code that waits on the layer and reads
    /// what it was woken for (`jobs::workflow::wait`).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// A new channel for one connection, registered in this instance. Dropping the
    /// subscription leaves every group it joined.
    pub fn subscribe(&self) -> Subscription {
        Subscription::new(self.clone())
    }

    /// Sends `message` to one channel, wherever its connection is. Returns the message id.
    #[tracing::instrument(skip(self, message), fields(channel = %channel))]
    pub async fn send<M: Serialize + ?Sized>(
        &self,
        channel: &ChannelName,
        message: &M,
    ) -> Result<i64, ChannelError> {
        let payload = self.encode(message)?;
        self.publish(channel.as_str().to_owned(), false, payload)
            .await
    }

    /// Sends `message` to every member of `group`, on every instance. Returns the message id.
    #[tracing::instrument(skip(self, message), fields(group = %group))]
    pub async fn group_send<M: Serialize + ?Sized>(
        &self,
        group: &GroupName,
        message: &M,
    ) -> Result<i64, ChannelError> {
        let payload = self.encode(message)?;
        self.publish(group.as_str().to_owned(), true, payload).await
    }

    /// [`group_send`](Self::group_send) inside the caller's transaction: the message exists,
    /// and is delivered, only if the transaction commits. The transaction sends its own NOTIFY
    /// (Postgres folds repeats within one transaction into one).
    pub async fn group_send_in<M: Serialize + ?Sized>(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        group: &GroupName,
        message: &M,
    ) -> Result<i64, ChannelError> {
        let payload = self.encode(message)?;
        let id = sqlx::query_scalar!(
            r#"WITH sent AS (
                   INSERT INTO channel_messages (target, is_group, payload)
                   VALUES ($1, true, $2) RETURNING id
               )
               SELECT sent.id AS "id!" FROM sent, pg_notify('hearth_channels', '')"#,
            group.as_str(),
            payload,
        )
        .fetch_one(&mut **tx)
        .await?;
        self.inner.stats.published(1);
        Ok(id)
    }

    /// Adds `channel` to `group`. A channel of another instance is told to join through the
    /// layer itself, as Channels allows `group_add` from anywhere.
    pub async fn group_add(
        &self,
        group: &GroupName,
        channel: &ChannelName,
    ) -> Result<(), ChannelError> {
        if self.inner.local.join(channel.as_str(), group) {
            return Ok(());
        }
        let control = serde_json::json!({"type": local::CONTROL_JOIN, "group": group.as_str()});
        self.send(channel, &control).await.map(drop)
    }

    /// Removes `channel` from `group`; nothing sent to the group afterwards reaches it.
    pub async fn group_discard(
        &self,
        group: &GroupName,
        channel: &ChannelName,
    ) -> Result<(), ChannelError> {
        if self.inner.local.leave(channel.as_str(), group) {
            return Ok(());
        }
        let control = serde_json::json!({"type": local::CONTROL_LEAVE, "group": group.as_str()});
        self.send(channel, &control).await.map(drop)
    }

    /// Deletes messages past their retention now (housekeeping does it every heartbeat).
    pub async fn prune(&self) -> Result<u64, ChannelError> {
        Ok(history::prune(&self.inner.pool, self.inner.config.retention).await?)
    }

    /// `(messages published, deliveries)` of this instance so far: a cheap read (no query)
    /// for samplers that poll every second.
    pub fn message_counts(&self) -> (u64, u64) {
        let snapshot = self.inner.stats.snapshot((0, 0), None);
        (snapshot.messages_published, snapshot.deliveries)
    }

    /// Counters and gauges of this instance's layer, plus the server's notification queue use.
    pub async fn stats(&self) -> StatsSnapshot {
        let usage = sqlx::query_scalar!(r#"SELECT pg_notification_queue_usage() AS "u!""#)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| tracing::warn!(error = %e, "cannot read the notification queue usage"))
            .ok();
        self.inner.stats.snapshot(self.inner.local.counts(), usage)
    }

    fn encode<M: Serialize + ?Sized>(&self, message: &M) -> Result<String, ChannelError> {
        let payload = serde_json::to_string(message)
            .map_err(|e| ChannelError::InvalidMessage(e.to_string()))?;
        let limit = self.inner.config.max_message;
        if payload.len() > limit {
            return Err(ChannelError::TooLarge {
                size: payload.len(),
                limit,
            });
        }
        let TypeOnly { kind } = serde_json::from_str(&payload)
            .map_err(|e| ChannelError::InvalidMessage(e.to_string()))?;
        if kind.is_empty() || kind.len() > 100 || kind.chars().any(char::is_control) {
            return Err(ChannelError::InvalidMessage(
                "the type must be 1 to 100 characters without control characters".into(),
            ));
        }
        Ok(payload)
    }

    async fn publish(
        &self,
        target: String,
        is_group: bool,
        payload: String,
    ) -> Result<i64, ChannelError> {
        let (done, result) = oneshot::channel();
        self.inner
            .publish
            .send(Publish {
                target,
                is_group,
                payload,
                done,
            })
            .await
            .map_err(|_| ChannelError::Closed)?;
        result.await.map_err(|_| ChannelError::Closed)?
    }
}
