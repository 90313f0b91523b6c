//! WebSocket consumers: what Django Channels' `AsyncJsonWebsocketConsumer` is, on the channel
//! layer.
//!
//! A [`Consumer`] has typed handlers: `connect` (with the route parameters and the session
//! user; returning an error rejects the socket with a close code), `receive` for each JSON
//! frame the client sends (decoded into `Incoming`; malformed JSON gets an error frame, the
//! socket stays open), `receive_binary` for each binary frame (refused with an error frame
//! unless the consumer overrides it to accept binary data), `event` for each channel-layer message (decoded into `Event`, typically
//! an enum tagged by `type`, as `"type": "chat.message"` selects `chat_message` in Channels)
//! and `disconnect`. Serve one with `.route("/ws/chat/{room}", ws::route::<ChatConsumer>())`:
//! the route answers an HTTP/1.1 upgrade (`GET`) and, on HTTP/2, RFC 8441's extended `CONNECT`
//! (`:protocol = websocket`), which browsers send on the HTTP/2 connection they already have
//! when the server announces `SETTINGS_ENABLE_CONNECT_PROTOCOL` (`hearth serve` does).
//!
//! What every socket gets without asking, on either protocol:
//!
//! * the `Origin` checked against the request's host (`Host`, or HTTP/2's `:authority`) and
//!   `HEARTH_ALLOWED_ORIGINS` (403 before the upgrade otherwise; clients that send no `Origin`
//!   are not browsers and carry no ambient credentials of a victim, so they pass);
//! * a maximum message size (close 1009), a ping every `HEARTH_WS_PING_INTERVAL` and an idle
//!   timeout (close 4408);
//! * at most `HEARTH_WS_MAX_PER_USER` open sockets per signed-in user and
//!   `HEARTH_WS_MAX_PER_ADDRESS` per client address on an instance (429 before the upgrade);
//! * a bounded send queue in the channel layer: a client that cannot keep up is closed with
//!   1013 and counted, never buffered without bound;
//! * resumption: a client that reconnects with `?last_id=N` can be given what it missed
//!   ([`Connection::resume_from`] with [`Subscription::join_from`]);
//! * a close with 1001 when the server shuts down;
//! * an outage of the database that refuses a message, not the socket: a handler that fails
//!   with [`ConsumerError::Unavailable`] (what a lost connection or an exhausted pool becomes)
//!   gets an error frame sent, and the socket keeps working once the database is back.

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{
            AtomicBool, AtomicI64, AtomicU64,
            Ordering::{AcqRel, Relaxed, Release},
        },
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use bytes::Bytes;
use futures::{SinkExt, StreamExt, task::AtomicWaker};

use axum::{
    extract::{
        ConnectInfo, FromRequestParts, Path, Query, State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, Uri, header, request::Parts},
    response::Response,
    routing::{MethodRouter, get},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::time::{Instant, timeout};
use tracing::Instrument;

use super::{
    AppState, WebError,
    auth::{CurrentUser, User},
};
use crate::channels::{ChannelError, ChannelLayer, ChannelName, Delivery, Subscription};

/// Close codes Hearth uses, beside the standard ones.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A message over `HEARTH_WS_MAX_MESSAGE`.
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The client did not read its messages fast enough (slow consumer), or the database was
    /// unavailable when the socket opened.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The route needs a signed-in user.
    pub const UNAUTHORIZED: u16 = 4401;
    /// The user may no longer use this route (e.g. their access to a document was removed).
    pub const FORBIDDEN: u16 = 4403;
    pub const NOT_FOUND: u16 = 4404;
    /// Nothing heard from the client within `HEARTH_WS_IDLE_TIMEOUT`.
    pub const IDLE_TIMEOUT: u16 = 4408;
}

/// A send to the client that takes longer than this means the client is gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How a consumer handler fails.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// Close the socket with this code and reason (shown to the client).
    #[error("closing with {code}: {reason}")]
    Close { code: u16, reason: String },
    #[error(transparent)]
    Channel(ChannelError),
    /// The database cannot be reached right now (a lost connection, an exhausted pool). From
    /// `receive` or `event`: what the client asked is refused with an error frame and the
    /// socket stays open, to work again once the database is back (a consumer may catch it
    /// first to refuse in its own protocol's words, as the chat does). From `connect`: the
    /// socket is closed with 1013, "try again later".
    #[error("the database is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Anything else: logged, and the socket is closed with 1011 and no detail.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ConsumerError {
    pub fn close(code: u16, reason: impl Into<String>) -> Self {
        Self::Close {
            code,
            reason: reason.into(),
        }
    }

    pub fn unauthorized() -> Self {
        Self::close(close_code::UNAUTHORIZED, "sign in to use this socket")
    }

    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::close(close_code::FORBIDDEN, reason)
    }

    fn frame(&self) -> CloseFrame {
        match self {
            Self::Close { code, reason } => close_frame(*code, reason),
            Self::Unavailable(_) => {
                close_frame(close_code::TRY_AGAIN_LATER, "the database is unavailable")
            }
            Self::Channel(_) | Self::Internal(_) => {
                close_frame(close_code::INTERNAL_ERROR, "internal error")
            }
        }
    }
}

impl From<sqlx::Error> for ConsumerError {
    fn from(e: sqlx::Error) -> Self {
        if crate::db::lost::unavailable(&e) {
            Self::Unavailable(e.into())
        } else {
            Self::Internal(e.into())
        }
    }
}

impl From<ChannelError> for ConsumerError {
    fn from(e: ChannelError) -> Self {
        match &e {
            ChannelError::Database(db) if crate::db::lost::unavailable(db) => {
                Self::Unavailable(e.into())
            }
            ChannelError::Publish(db) if crate::db::lost::unavailable(db) => {
                Self::Unavailable(e.into())
            }
            _ => Self::Channel(e),
        }
    }
}

/// A WebSocket consumer. See the module documentation.
pub trait Consumer: Sized + Send + 'static {
    /// The route parameters, e.g. `struct Params { room: String }` for `/ws/chat/{room}`.
    type Params: DeserializeOwned + Send + 'static;
    /// A JSON frame from the client.
    type Incoming: DeserializeOwned + Send;
    /// A channel-layer message for this connection, selected by its `type`.
    type Event: DeserializeOwned + Send;

    /// The socket is open: check the user, join groups. An error closes it with its code.
    fn connect(
        ctx: &mut Connection,
        params: Self::Params,
    ) -> impl Future<Output = Result<Self, ConsumerError>> + Send;

    /// The client sent a frame.
    fn receive(
        &mut self,
        ctx: &mut Connection,
        message: Self::Incoming,
    ) -> impl Future<Output = Result<(), ConsumerError>> + Send;

    /// The client sent a binary frame, bounded by `HEARTH_WS_MAX_MESSAGE` as text frames are.
    /// Consumers that take binary data override this; by default binary is refused with an
    /// error frame, and the socket stays open (as for malformed JSON).
    fn receive_binary(
        &mut self,
        ctx: &mut Connection,
        bytes: Bytes,
    ) -> impl Future<Output = Result<(), ConsumerError>> + Send {
        let _ = bytes;
        ctx.send_json(&ErrorFrame {
            kind: "error",
            error: "binary frames are not supported here; send JSON text",
        });
        async { Ok(()) }
    }

    /// A message arrived through the channel layer. By default it is forwarded as sent.
    fn event(
        &mut self,
        ctx: &mut Connection,
        event: Self::Event,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<(), ConsumerError>> + Send {
        let _ = event;
        ctx.forward(delivery);
        async { Ok(()) }
    }

    /// The socket is closing, for whatever reason. Groups are left afterwards by themselves.
    fn disconnect(&mut self, ctx: &mut Connection) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }
}

/// What a consumer handler can do with its connection. Frames it sends are queued and written
/// when the handler returns.
pub struct Connection {
    state: AppState,
    user: Option<User>,
    subscription: Subscription,
    resume_from: Option<i64>,
    outbox: Vec<Message>,
    close: Option<CloseFrame>,
}

impl Connection {
    /// The signed-in user who opened the socket, if any.
    pub fn user(&self) -> Option<&User> {
        self.user.as_ref()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn channels(&self) -> &ChannelLayer {
        &self.state.channels
    }

    /// This connection's unique channel name, for `send` from anywhere.
    pub fn channel_name(&self) -> &ChannelName {
        self.subscription.name()
    }

    /// Join and leave groups, with history or presence.
    pub fn subscription(&mut self) -> &mut Subscription {
        &mut self.subscription
    }

    /// The id of the last message the client saw, from `?last_id=`, when it reconnects.
    pub fn resume_from(&self) -> Option<i64> {
        self.resume_from
    }

    /// Sends `value` as a JSON text frame.
    pub fn send_json<T: Serialize + ?Sized>(&mut self, value: &T) {
        match serde_json::to_string(value) {
            Ok(text) => self.outbox.push(Message::Text(text.into())),
            Err(e) => tracing::error!(error = %e, "cannot encode a WebSocket frame"),
        }
    }

    /// Sends `bytes` as a binary frame.
    pub fn send_binary(&mut self, bytes: impl Into<Bytes>) {
        self.outbox.push(Message::Binary(bytes.into()));
    }

    /// Sends a channel-layer message to the client as it was sent, encoded once for every
    /// connection of this instance that forwards it.
    pub fn forward(&mut self, delivery: &Delivery) {
        self.send_shared(delivery, |d| d.payload().to_owned());
    }

    /// Sends the frame `encode` builds for `delivery`, built once per instance and shared by
    /// every connection that sends it (`encode` must not depend on the connection).
    pub fn send_shared(&mut self, delivery: &Delivery, encode: impl FnOnce(&Delivery) -> String) {
        let bytes = delivery.shared_frame(encode);
        match Utf8Bytes::try_from(bytes) {
            Ok(text) => self.outbox.push(Message::Text(text)),
            Err(e) => tracing::error!(error = %e, "a shared frame is not UTF-8"),
        }
    }

    /// Closes the socket after the frames queued so far.
    pub fn close(&mut self, code: u16, reason: &str) {
        self.close = Some(close_frame(code, reason));
    }
}

fn close_frame(code: u16, reason: &str) -> CloseFrame {
    // A close reason is limited to 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }
}

/// The error frame a client gets for a frame it should not have sent.
#[derive(Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: &'a str,
}

/// WebSocket gauges and counters of this process, for the dashboard and the operations pages.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WsStats {
    pub open: i64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub rejected: u64,
}

static OPEN: AtomicI64 = AtomicI64::new(0);
static FRAMES_IN: AtomicU64 = AtomicU64::new(0);
static FRAMES_OUT: AtomicU64 = AtomicU64::new(0);
static REJECTED: AtomicU64 = AtomicU64::new(0);

pub fn stats() -> WsStats {
    WsStats {
        open: OPEN.load(Relaxed),
        frames_in: FRAMES_IN.load(Relaxed),
        frames_out: FRAMES_OUT.load(Relaxed),
        rejected: REJECTED.load(Relaxed),
    }
}

/// Open WebSockets of this instance per signed-in user and per client address, so that one
/// user or one address cannot hold every socket (and file descriptor) the server has.
#[derive(Debug, Default)]
pub struct SocketLimits {
    // A std mutex: held for a map update, never across an await.
    open: Mutex<OpenSockets>,
}

#[derive(Debug, Default)]
struct OpenSockets {
    users: HashMap<i64, u32>,
    addresses: HashMap<IpAddr, u32>,
}

/// One long-lived connection's place in [`SocketLimits`] (a WebSocket's, or an event stream's
/// through [`super::sse::StreamSlot`]), given back when dropped.
pub(super) struct SocketSlot {
    limits: Arc<SocketLimits>,
    user: Option<i64>,
    address: IpAddr,
}

impl SocketLimits {
    /// Takes a place for a socket of `user` from `address`, or says which limit is reached
    /// (`0` means no limit).
    pub(super) fn acquire(
        self: &Arc<Self>,
        user: Option<i64>,
        address: IpAddr,
        per_user: u32,
        per_address: u32,
    ) -> Result<SocketSlot, WebError> {
        let mut open = self
            .open
            .lock()
            .expect("socket counts are never left half-updated");
        let by_user = user.map_or(0, |id| open.users.get(&id).copied().unwrap_or(0));
        if user.is_some() && per_user > 0 && by_user >= per_user {
            return Err(WebError::TooManyRequests(format!(
                "You have {by_user} live connections open already (the limit is {per_user}); close a tab and try again."
            )));
        }
        let by_address = open.addresses.get(&address).copied().unwrap_or(0);
        if per_address > 0 && by_address >= per_address {
            return Err(WebError::TooManyRequests(format!(
                "Too many live connections from your address (the limit is {per_address})."
            )));
        }
        if let Some(id) = user {
            *open.users.entry(id).or_default() += 1;
        }
        *open.addresses.entry(address).or_default() += 1;
        Ok(SocketSlot {
            limits: self.clone(),
            user,
            address,
        })
    }

    /// Open sockets of `user` on this instance.
    pub fn of_user(&self, user: i64) -> u32 {
        let open = self
            .open
            .lock()
            .expect("socket counts are never left half-updated");
        open.users.get(&user).copied().unwrap_or(0)
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .expect("socket counts are never left half-updated");
        let release = |count: Option<&mut u32>| {
            count.map(|c| {
                *c -= 1;
                *c == 0
            })
        };
        if let Some(id) = self.user
            && release(open.users.get_mut(&id)) == Some(true)
        {
            open.users.remove(&id);
        }
        if release(open.addresses.get_mut(&self.address)) == Some(true) {
            open.addresses.remove(&self.address);
        }
    }
}

/// The route that serves consumer `C`: `GET` for an HTTP/1.1 upgrade, `CONNECT` for an HTTP/2
/// extended CONNECT (RFC 8441). Both go through the same checks and limits; any other method
/// is 405.
pub fn route<C: Consumer>() -> MethodRouter<AppState> {
    get(upgrade::<C>).connect(upgrade::<C>)
}

#[derive(Deserialize)]
struct Resume {
    last_id: Option<i64>,
}

/// A request whose `Origin` [`check_origin`] allows (403 otherwise). Extracted before the session
/// is looked up, so a foreign page's attempt costs no query.
struct AllowedOrigin;

impl FromRequestParts<AppState> for AllowedOrigin {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, WebError> {
        check_origin(
            &parts.headers,
            &parts.uri,
            &state.config.channels.allowed_origins,
        )?;
        Ok(Self)
    }
}

async fn upgrade<C: Consumer>(
    State(state): State<AppState>,
    _origin: AllowedOrigin,
    params: Option<Path<HashMap<String, String>>>,
    Query(resume): Query<Resume>,
    CurrentUser(user): CurrentUser,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Result<Response, WebError> {
    let slot = state.sockets.acquire(
        user.as_ref().map(|u| u.id),
        peer.ip(),
        state.config.channels.ws_max_per_user,
        state.config.channels.ws_max_per_address,
    )?;
    let params = params.map(|Path(p)| p).unwrap_or_default();
    let params = serde_json::Map::from_iter(
        params
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v))),
    );
    let params: C::Params = serde_json::from_value(params.into())
        .map_err(|e| WebError::BadRequest(format!("invalid route parameters: {e}")))?;
    let config = &state.config;
    let (max, ping, idle) = (
        config.channels.ws_max_message,
        config.channels.ws_ping_interval,
        config.channels.ws_idle_timeout,
    );
    // Boxed until the upgrade: axum's upgrade task keeps its callback's captures for the
    // socket's whole life (what a future captures is never overlapped with what it awaits
    // later), so the callback holds one pointer and the connection's own future the rest.
    let opening = Box::new(Opening {
        state,
        user,
        resume_from: resume.last_id,
        params,
        ping,
        idle,
        slot,
    });
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        // Small buffers: most sockets are idle, and every one keeps its read buffer for its
        // whole life (4 KiB cost a socket about 10 KiB in all, 1 KiB 7 KiB; #36 took it to
        // 512 bytes). A larger message is read whole all the same, 512 bytes per read.
        .read_buffer_size(512)
        .write_buffer_size(0)
        .on_upgrade(move |socket| opening.open::<C>(socket)))
}

/// What an accepted socket's connection is made of, from the upgrade request.
struct Opening<P> {
    state: AppState,
    user: Option<User>,
    resume_from: Option<i64>,
    params: P,
    ping: Duration,
    idle: Duration,
    slot: SocketSlot,
}

impl<P> Opening<P> {
    /// The connection's future, tracked by the channel layer so that shutdown waits for its
    /// close frame; the slot is given back when it ends.
    #[allow(
        clippy::boxed_local,
        reason = "boxed by the upgrade handler, so that axum's callback captures one pointer"
    )]
    fn open<C: Consumer<Params = P>>(
        self: Box<Self>,
        socket: WebSocket,
    ) -> impl Future<Output = ()> + Send + 'static {
        let Self {
            state,
            user,
            resume_from,
            params,
            ping,
            idle,
            slot,
        } = *self;
        let tracker = state.channels.tracker();
        let ctx = Connection {
            subscription: state.channels.subscribe(),
            state,
            user,
            resume_from,
            outbox: Vec::new(),
            close: None,
        };
        tracker.track_future(run::<C>(socket, ctx, params, ping, idle, slot))
    }
}

/// Allows a request without `Origin`, or whose `Origin` names the host it was sent to or one
/// of `allowed`. The host is the `Host` header, or on HTTP/2, where clients send
/// `:authority` instead (hyper puts it in the URI), the URI's authority.
fn check_origin(headers: &HeaderMap, uri: &Uri, allowed: &[String]) -> Result<(), WebError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    if allowed.iter().any(|a| a.trim_end_matches('/') == origin) {
        return Ok(());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let same_host = url::Url::parse(origin).is_ok_and(|url| {
        let origin_host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => return false,
        };
        !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
    });
    if same_host {
        Ok(())
    } else {
        REJECTED.fetch_add(1, Relaxed);
        tracing::warn!(%origin, %host, "WebSocket from a foreign origin refused");
        Err(WebError::Forbidden(format!(
            "origin {origin} is not allowed to open WebSockets here"
        )))
    }
}

/// A connection's life: `connect`, then each frame, delivery, ping and timeout, until it
/// closes.
///
/// A function returning an `async move` block rather than an `async fn` (#36): an `async fn`
/// moves its arguments from the future's captures into locals of its own, and a future keeps
/// both (rustc does not overlap captures with locals), so the socket and the connection were
/// stored twice; `#[tracing::instrument]` on an `async fn` wraps the body in one more such
/// block, a third copy. The span is the same one, attached with `Instrument`.
fn run<C: Consumer>(
    mut socket: WebSocket,
    mut ctx: Connection,
    params: C::Params,
    ping_every: Duration,
    idle: Duration,
    slot: SocketSlot,
) -> impl Future<Output = ()> + Send {
    let span = tracing::info_span!(
        "run",
        consumer = std::any::type_name::<C>(),
        channel = %ctx.channel_name()
    );
    async move {
        OPEN.fetch_add(1, Relaxed);
        // The handlers' futures are boxed: awaited inline, the largest of them (a handler running
        // queries holds kilobytes of driver state) would size this task, which every open socket
        // keeps for its whole life, idle or not.
        let mut consumer = match Box::pin(C::connect(&mut ctx, params)).await {
            Ok(consumer) => consumer,
            Err(e) => {
                match &e {
                    ConsumerError::Channel(_) | ConsumerError::Internal(_) => {
                        tracing::error!(error = ?e, "consumer connect failed");
                    }
                    ConsumerError::Unavailable(cause) => {
                        tracing::warn!(error = %cause, "database unavailable; socket closed with 1013");
                    }
                    ConsumerError::Close { .. } => {}
                }
                REJECTED.fetch_add(1, Relaxed);
                ctx.outbox.push(Message::Close(Some(e.frame())));
                let _ = flush(&mut socket, &mut ctx.outbox).await;
                OPEN.fetch_sub(1, Relaxed);
                drop(slot);
                return;
            }
        };
        let close = serve(&mut socket, &mut ctx, &mut consumer, ping_every, idle).await;
        Box::pin(consumer.disconnect(&mut ctx)).await;
        if let Some(frame) = close {
            ctx.outbox.push(Message::Close(Some(frame)));
            let _ = flush(&mut socket, &mut ctx.outbox).await;
        }
        OPEN.fetch_sub(1, Relaxed);
        drop(slot);
    }
    .instrument(span)
}

/// The loop of an open connection; the close frame to send when it ends, if any.
async fn serve<C: Consumer>(
    socket: &mut WebSocket,
    ctx: &mut Connection,
    consumer: &mut C,
    ping_every: Duration,
    idle: Duration,
) -> Option<CloseFrame> {
    // Built once, not per loop turn: a fan-out wakes a thousand of these loops at once, and
    // re-registering a timer and a cancellation waiter on every turn showed in profiles.
    let closing = ctx.state.channels.closing_shared().cancelled_owned();
    tokio::pin!(closing);
    // One timer for the ping and the idle timeout, set for whichever comes first: a frame from
    // the client moves the idle deadline but not the timer, which finds the new deadline
    // when it fires and is set again (one registration per ping interval, not one per frame).
    // A zero interval sends no pings (rather than one per turn of the loop).
    let mut next_ping = (!ping_every.is_zero()).then(|| Instant::now() + ping_every);
    let mut idle_at = Instant::now() + idle;
    let due = |next_ping: Option<Instant>, idle_at: Instant| {
        next_ping.map_or(idle_at, |p| p.min(idle_at))
    };
    let timer = tokio::time::sleep_until(due(next_ping, idle_at));
    tokio::pin!(timer);
    let quiet = Arc::new(QuietWake::default());
    let quiet_waker = Waker::from(quiet.clone());
    let mut streak = 0;
    loop {
        // Boxed, and only when there is something to send: awaited inline, the flush's state
        // (a send timer and the frame) would be reserved in every idle socket's task.
        if !ctx.outbox.is_empty() && Box::pin(flush(socket, &mut ctx.outbox)).await.is_err() {
            return None;
        }
        if let Some(frame) = ctx.close.take() {
            return Some(frame);
        }
        // Deliveries are polled first while they keep coming, and the quiet sources (the
        // socket, shutdown and the timer) only when one of them has woken the task: a fan-out
        // wakes this loop once per message, and polling all of them again on each of those
        // wakes (a mutex in the socket's readiness, one in the cancellation token, timer
        // registrations) was a tenth of the server's CPU in W5. After FAIR_STREAK deliveries
        // in a row the quiet sources go first once, so a steady stream cannot starve the
        // client's frames, its pings or the idle timeout.
        let deliveries_first = streak < FAIR_STREAK;
        let turn = std::future::poll_fn(|cx| {
            if deliveries_first && let Poll::Ready(delivery) = ctx.subscription.poll_recv(cx) {
                return Poll::Ready(Turn::Delivery(delivery));
            }
            if quiet.should_poll(cx) {
                let mut quiet_cx = Context::from_waker(&quiet_waker);
                let cx = &mut quiet_cx;
                let turn = if let Poll::Ready(frame) = socket.poll_next_unpin(cx) {
                    Some(Turn::Frame(frame))
                } else if closing.as_mut().poll(cx).is_ready() {
                    Some(Turn::Closing)
                } else if timer.as_mut().poll(cx).is_ready() {
                    Some(Turn::Timer)
                } else {
                    None
                };
                if let Some(turn) = turn {
                    // More may be ready (a second buffered frame, a reset timer): poll again.
                    quiet.mark();
                    return Poll::Ready(turn);
                }
            }
            if !deliveries_first && let Poll::Ready(delivery) = ctx.subscription.poll_recv(cx) {
                return Poll::Ready(Turn::Delivery(delivery));
            }
            Poll::Pending
        })
        .await;
        streak = if matches!(turn, Turn::Delivery(_)) {
            streak + 1
        } else {
            0
        };
        let result = match turn {
            Turn::Closing => {
                return Some(close_frame(close_code::GOING_AWAY, "server shutting down"));
            }
            Turn::Timer => {
                let now = Instant::now();
                if now >= idle_at {
                    return Some(close_frame(close_code::IDLE_TIMEOUT, "idle timeout"));
                }
                if next_ping.is_some_and(|at| now >= at) {
                    ctx.outbox.push(Message::Ping(Default::default()));
                    next_ping = Some(now + ping_every);
                }
                timer.as_mut().reset(due(next_ping, idle_at));
                Ok(())
            }
            Turn::Delivery(delivery) => match delivery {
                Some(delivery) => match delivery.decode::<C::Event>() {
                    Ok(event) => Box::pin(consumer.event(ctx, event, &delivery)).await,
                    Err(e) => {
                        tracing::warn!(kind = %delivery.kind, error = %e, "no handler for this message type; ignored");
                        Ok(())
                    }
                },
                None if ctx.subscription.dropped_as_slow() => {
                    return Some(close_frame(
                        close_code::TRY_AGAIN_LATER,
                        "slow consumer: too many messages waiting to be sent",
                    ));
                }
                None => return Some(close_frame(close_code::GOING_AWAY, "server shutting down")),
            },
            Turn::Frame(frame) => {
                idle_at = Instant::now() + idle;
                match frame {
                    None | Some(Ok(Message::Close(_))) => return None,
                    Some(Err(e)) => {
                        return too_big(&e)
                            .then(|| close_frame(close_code::TOO_BIG, "message too big"));
                    }
                    Some(Ok(Message::Text(text))) => {
                        FRAMES_IN.fetch_add(1, Relaxed);
                        match serde_json::from_str::<C::Incoming>(&text) {
                            Ok(message) => Box::pin(consumer.receive(ctx, message)).await,
                            Err(e) => {
                                ctx.send_json(&ErrorFrame {
                                    kind: "error",
                                    error: &format!("malformed message: {e}"),
                                });
                                Ok(())
                            }
                        }
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        FRAMES_IN.fetch_add(1, Relaxed);
                        Box::pin(consumer.receive_binary(ctx, bytes)).await
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                }
            }
        };
        match result {
            Ok(()) => {}
            // Refused, not fatal: the socket outlives the outage (see `ConsumerError`).
            Err(ConsumerError::Unavailable(e)) => {
                tracing::warn!(error = %e, "database unavailable; the client's message was refused");
                ctx.send_json(&ErrorFrame {
                    kind: "error",
                    error: "the database is unavailable; try again shortly",
                });
            }
            Err(e) => {
                if let ConsumerError::Channel(_) | ConsumerError::Internal(_) = &e {
                    tracing::error!(error = ?e, "consumer handler failed");
                }
                return Some(e.frame());
            }
        }
    }
}

/// Deliveries handled in a row before the socket, timers and shutdown are polled first once.
const FAIR_STREAK: u32 = 32;

/// The waker the quiet sources of a connection's loop are polled with: it records that one of
/// them fired, then wakes the task, so a wake by a delivery alone need not poll them.
struct QuietWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Default for QuietWake {
    /// Woken, so the first turn polls every source and registers this waker with them.
    fn default() -> Self {
        Self {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl QuietWake {
    /// Whether the quiet sources need polling; keeps `cx`'s waker to wake when they fire.
    fn should_poll(&self, cx: &Context<'_>) -> bool {
        // Register before reading the flag: a source firing in between sets the flag and
        // wakes this waker, so no wake is lost.
        self.task.register(cx.waker());
        self.woken.swap(false, AcqRel)
    }

    fn mark(&self) {
        self.woken.store(true, Release);
    }
}

impl Wake for QuietWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.mark();
        self.task.wake();
    }
}

/// What woke a connection's loop.
enum Turn {
    Delivery(Option<Arc<Delivery>>),
    Frame(Option<Result<Message, axum::Error>>),
    Closing,
    /// The ping is due, or the idle deadline (which frames move) may have passed.
    Timer,
}

/// Whether a read failed because the client's message was over the limit.
fn too_big(e: &axum::Error) -> bool {
    use std::error::Error;
    use tokio_tungstenite::tungstenite::Error as WsError;
    let mut source = e.source();
    while let Some(inner) = source {
        if let Some(WsError::Capacity(_)) = inner.downcast_ref::<WsError>() {
            return true;
        }
        source = inner.source();
    }
    false
}

/// Writes the queued frames; an error or a client that does not read for [`SEND_TIMEOUT`]
/// ends the connection.
async fn flush(socket: &mut WebSocket, outbox: &mut Vec<Message>) -> Result<(), ()> {
    for message in outbox.drain(..) {
        if matches!(message, Message::Text(_) | Message::Binary(_)) {
            FRAMES_OUT.fetch_add(1, Relaxed);
        }
        // The `Sink`'s send (ready, start, flush), as `WebSocket::send` does, in a future of a
        // few words: that async method's state is hundreds of bytes, which every socket's task
        // would reserve.
        match timeout(SEND_TIMEOUT, SinkExt::send(socket, message)).await {
            Ok(Ok(())) => {}
            _ => return Err(()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A consumer whose handlers hold a large state across an await, as a handler that runs a
    /// query does.
    struct Heavy;

    async fn heavy_work() {
        let state = [7u8; 16 * 1024];
        tokio::task::yield_now().await;
        std::hint::black_box(&state);
    }

    impl Consumer for Heavy {
        type Params = ();
        type Incoming = serde_json::Value;
        type Event = serde_json::Value;

        async fn connect(_: &mut Connection, (): ()) -> Result<Self, ConsumerError> {
            heavy_work().await;
            Ok(Self)
        }

        async fn receive(
            &mut self,
            _: &mut Connection,
            _: serde_json::Value,
        ) -> Result<(), ConsumerError> {
            heavy_work().await;
            Ok(())
        }

        async fn event(
            &mut self,
            _: &mut Connection,
            _: serde_json::Value,
            _: &Delivery,
        ) -> Result<(), ConsumerError> {
            heavy_work().await;
            Ok(())
        }

        async fn disconnect(&mut self, _: &mut Connection) {
            heavy_work().await;
        }
    }

    /// The size of what `f` returns, without calling it.
    fn output_size<A, F>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every open socket keeps its task for its whole life: the task must not be as large as
    /// the largest handler's state, nor hold the socket and the connection more than once
    /// (#36: thousands of idle sockets per instance). 3,088 bytes with `run` an `async fn`
    /// under `#[tracing::instrument]`, 1,776 since.
    #[test]
    fn an_open_socket_s_task_does_not_carry_its_handlers_state() {
        type Args = (WebSocket, Connection, (), Duration, Duration, SocketSlot);
        let size = output_size(|(socket, ctx, params, ping, idle, slot): Args| {
            run::<Heavy>(socket, ctx, params, ping, idle, slot)
        });
        assert!(size <= 2048, "the connection's task is {size} bytes");
    }
}
