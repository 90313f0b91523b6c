//! Server-sent events on the channel layer: `text/event-stream` responses subscribed to groups.
//!
//! Every event carries `id:` (the message id) and `event:` (the message's `type`), so a browser's
//! `EventSource` that reconnects sends `Last-Event-ID` and [`stream`] replays exactly what it
//! missed — or, when that is no longer kept, sends one `hearth.gap` event so the page reloads
//! its state. A comment goes out as soon as the stream is subscribed, and every
//! [`KEEP_ALIVE`] after, so proxies keep the connection open and dead clients are noticed.
//! Each event's bytes are built once per instance and shared by every stream.
//!
//! Authorisation is the route's: check the user, then choose the groups. Every stream holds a
//! [`StreamSlot`], so that event streams count against the same per-user and per-address limits
//! as WebSockets: both hold a connection (and a file descriptor) for as long as the page is open.

use std::{
    convert::Infallible,
    sync::atomic::{AtomicI64, Ordering::Relaxed},
    time::Duration,
};

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::{
    body::Body,
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderValue, header, request::Parts},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures::stream;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{AppState, WebError, auth::CurrentUser, ws::SocketSlot};
use crate::channels::{ChannelError, ChannelLayer, GroupName, Subscription};

/// How often an idle stream gets a comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

static OPEN: AtomicI64 = AtomicI64::new(0);

/// Event streams open in this process.
pub fn open_streams() -> i64 {
    OPEN.load(Relaxed)
}

/// The `Last-Event-ID` header of a reconnecting `EventSource` (or `?last_event_id=` for clients
/// that cannot set headers). A value that is not a message id is a 400.
#[derive(Debug, Clone, Copy)]
pub struct LastEventId(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let from_query = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "last_event_id")
            .map(|(_, v)| v.into_owned());
        let raw = match parts.headers.get("last-event-id") {
            Some(value) => Some(value.to_str().unwrap_or("?").to_owned()),
            None => from_query,
        };
        match raw.as_deref().map(str::trim) {
            None | Some("") => Ok(Self(None)),
            Some(raw) => raw.parse().map(|id| Self(Some(id))).map_err(|_| {
                WebError::BadRequest(format!("Last-Event-ID {raw:?} is not a message id"))
            }),
        }
    }
}

/// An event stream of every message sent to `groups` from now on — after `last_event_id`'s
/// message first, when given.
pub async fn stream(
    layer: &ChannelLayer,
    slot: StreamSlot,
    groups: &[GroupName],
    last_event_id: LastEventId,
) -> Result<Response, WebError> {
    stream_with_prelude(layer, slot, groups, last_event_id, "").await
}

/// [`stream`], starting with `prelude`: events in the wire format (`event: x\ndata: {...}\n\n`)
/// that describe the state the live messages then update, such as a current count.
pub async fn stream_with_prelude(
    layer: &ChannelLayer,
    slot: StreamSlot,
    groups: &[GroupName],
    LastEventId(last_event_id): LastEventId,
    prelude: &str,
) -> Result<Response, WebError> {
    let mut subscription = layer.subscribe();
    let mut first = String::from(": connected\n\n");
    first.push_str(prelude);
    for group in groups {
        match last_event_id {
            None => subscription.join(group),
            Some(after) => match subscription.join_from(group, after).await {
                Ok(_) => {}
                Err(ChannelError::GapTooOld { pruned_through, .. }) => {
                    first.push_str(&format!(
                        "event: hearth.gap\ndata: {{\"group\":\"{group}\",\"pruned_through\":{pruned_through}}}\n\n"
                    ));
                }
                Err(e) => return Err(WebError::Internal(e.into())),
            },
        }
    }
    let mut keep_alive = tokio::time::interval_at(Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = State {
        subscription,
        first: Some(Bytes::from(first)),
        closing: Box::pin(layer.closing().cancelled_owned()),
        keep_alive,
        ended: false,
        _slot: slot,
    };
    let body = Body::from_stream(stream::unfold(state, next_chunk));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Ask nginx and the like not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Everything a stream waits on, built once: a fan-out wakes every stream at once, and a new
/// timer and cancellation waiter per event (as a fresh `sleep` in each turn would make) is
/// work done a thousand times per message. The keep-alive therefore ticks on a fixed period
/// rather than after each silence; a comment during a busy spell costs nothing.
struct State {
    subscription: Subscription,
    first: Option<Bytes>,
    closing: std::pin::Pin<Box<WaitForCancellationFutureOwned>>,
    keep_alive: Interval,
    ended: bool,
    _slot: StreamSlot,
}

/// An event stream's place among the long-lived connections its user and its address may hold
/// on this instance (`HEARTH_WS_MAX_PER_USER` and `HEARTH_WS_MAX_PER_ADDRESS`, shared with
/// WebSockets): the extractor answers 429 when either is full. The stream counts as open, here
/// and in [`open_streams`], until the slot is dropped, so keep it in the stream's state —
/// [`stream`] does; a stream served another way (axum's `Sse`) moves it into its stream.
pub struct StreamSlot {
    _slot: SocketSlot,
}

impl FromRequestParts<AppState> for StreamSlot {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, WebError> {
        let CurrentUser(user) = CurrentUser::from_request_parts(parts, state).await?;
        // Served without connect info (a router driven in memory), every client is one address.
        let address = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        let slot = state.sockets.acquire(
            user.map(|u| u.id),
            address,
            state.config.channels.ws_max_per_user,
            state.config.channels.ws_max_per_address,
        )?;
        OPEN.fetch_add(1, Relaxed);
        Ok(Self { _slot: slot })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Relaxed);
    }
}

async fn next_chunk(mut state: State) -> Option<(Result<Bytes, Infallible>, State)> {
    if state.ended {
        return None;
    }
    if let Some(first) = state.first.take() {
        return Some((Ok(first), state));
    }
    let chunk = tokio::select! {
        () = &mut state.closing => return None,
        _ = state.keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
        delivery = state.subscription.recv() => match delivery {
            Some(delivery) => delivery.event_stream_frame(),
            None if state.subscription.dropped_as_slow() => {
                // Said once; the stream then ends and the browser reconnects with its
                // Last-Event-ID, which replays what it missed.
                state.ended = true;
                Bytes::from_static(b"event: hearth.closed\ndata: {\"reason\":\"slow consumer\"}\n\n")
            }
            None => return None,
        },
    };
    Some((Ok(chunk), state))
}
