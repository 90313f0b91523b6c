//! This instance's connections and the groups they belong to, in memory.
//!
//! Membership lives only where the connection lives: an instance needs to know its own members
//! to fan a message out, and nobody else's. Each connection has a bounded queue; the reader
//! never waits on it. A connection whose queue is full is a slow consumer: it is removed at once
//! (its subscription then ends, and the socket is closed with a clear code), so one stuck client
//! can neither grow memory nor hold back the others.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use tokio::sync::mpsc::{self, error::TrySendError};

use super::{ChannelError, ChannelLayer, ChannelName, Delivery, GroupName, PresenceUser, presence};

/// Message types the layer handles itself: `group_add`/`group_discard` called on another
/// instance for a channel of this one.
pub(super) const CONTROL_JOIN: &str = "hearth.group_add";
pub(super) const CONTROL_LEAVE: &str = "hearth.group_discard";

pub(super) struct Local {
    prefix: String,
    counter: AtomicU64,
    // A std Mutex: held for map operations and non-blocking `try_send`s, never across an await.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    channels: HashMap<String, Member>,
    groups: HashMap<String, HashSet<String>>,
}

struct Member {
    tx: mpsc::Sender<Arc<Delivery>>,
    groups: HashSet<String>,
    slow: Arc<AtomicBool>,
}

/// What one fan-out did.
#[derive(Default)]
pub(super) struct Fanout {
    pub delivered: u64,
    pub dropped_slow: u64,
}

impl State {
    fn remove(&mut self, channel: &str) -> Option<Member> {
        let member = self.channels.remove(channel)?;
        for group in &member.groups {
            if let Some(members) = self.groups.get_mut(group) {
                members.remove(channel);
                if members.is_empty() {
                    self.groups.remove(group);
                }
            }
        }
        Some(member)
    }
}

impl Local {
    pub(super) fn new(instance: &str) -> Self {
        Self {
            prefix: format!("{instance}!"),
            counter: AtomicU64::new(1),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn register(
        &self,
        queue: usize,
    ) -> (ChannelName, mpsc::Receiver<Arc<Delivery>>, Arc<AtomicBool>) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = ChannelName::new_unchecked(format!("{}{n}", self.prefix));
        let (tx, rx) = mpsc::channel(queue);
        let slow = Arc::new(AtomicBool::new(false));
        self.state().channels.insert(
            name.as_str().to_owned(),
            Member {
                tx,
                groups: HashSet::new(),
                slow: slow.clone(),
            },
        );
        (name, rx, slow)
    }

    fn unregister(&self, channel: &str) {
        self.state().remove(channel);
    }

    /// Adds a channel of this instance to a group; `false` if the channel is not here.
    pub(super) fn join(&self, channel: &str, group: &GroupName) -> bool {
        let mut state = self.state();
        let Some(member) = state.channels.get_mut(channel) else {
            return false;
        };
        member.groups.insert(group.as_str().to_owned());
        state
            .groups
            .entry(group.as_str().to_owned())
            .or_default()
            .insert(channel.to_owned());
        true
    }

    /// Removes a channel of this instance from a group; `false` if the channel is not here.
    pub(super) fn leave(&self, channel: &str, group: &GroupName) -> bool {
        let mut state = self.state();
        let Some(member) = state.channels.get_mut(channel) else {
            return false;
        };
        member.groups.remove(group.as_str());
        if let Some(members) = state.groups.get_mut(group.as_str()) {
            members.remove(channel);
            if members.is_empty() {
                state.groups.remove(group.as_str());
            }
        }
        true
    }

    /// Whether a message for `target` has anyone here to go to: the cheap test every message
    /// passes before it is decoded.
    pub(super) fn wants(&self, target: &str, is_group: bool) -> bool {
        let state = self.state();
        if is_group {
            state.groups.contains_key(target)
        } else {
            state.channels.contains_key(target)
        }
    }

    /// Queues `delivery` for every local member of its target, dropping slow consumers.
    pub(super) fn fan_out(&self, delivery: &Arc<Delivery>) -> Fanout {
        let mut state = self.state();
        let mut result = Fanout::default();
        let mut gone = Vec::new();
        let mut offer = |channel: &str, member: &Member| match member.tx.try_send(delivery.clone())
        {
            Ok(()) => result.delivered += 1,
            Err(TrySendError::Full(_)) => {
                member.slow.store(true, Ordering::Relaxed);
                result.dropped_slow += 1;
                gone.push(channel.to_owned());
            }
            Err(TrySendError::Closed(_)) => gone.push(channel.to_owned()),
        };
        if delivery.is_group {
            if let Some(members) = state.groups.get(&delivery.target) {
                for channel in members {
                    if let Some(member) = state.channels.get(channel) {
                        offer(channel, member);
                    }
                }
            }
        } else if let Some(member) = state.channels.get(&delivery.target) {
            offer(&delivery.target, member);
        }
        for channel in gone {
            if state.remove(&channel).is_some() {
                tracing::warn!(%channel, "dropped a slow consumer: its send queue is full");
            }
        }
        result
    }

    /// (connections, groups) of this instance.
    pub(super) fn counts(&self) -> (usize, usize) {
        let state = self.state();
        (state.channels.len(), state.groups.len())
    }

    /// Members of each local group, largest first, for the operations pages.
    pub(super) fn group_sizes(&self) -> Vec<(String, usize)> {
        let state = self.state();
        let mut sizes: Vec<_> = state
            .groups
            .iter()
            .map(|(group, members)| (group.clone(), members.len()))
            .collect();
        sizes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        sizes
    }
}

/// One connection's channel: its unique name, its queue of incoming messages and the groups it
/// joined. Dropping it leaves every group and removes its presence entries.
pub struct Subscription {
    layer: ChannelLayer,
    name: ChannelName,
    rx: mpsc::Receiver<Arc<Delivery>>,
    slow: Arc<AtomicBool>,
    /// Missed messages fetched from history, delivered before the live ones.
    replay: VecDeque<Arc<Delivery>>,
    /// Ids of replayed messages, so that their live copies are not delivered twice.
    replayed: HashSet<i64>,
    presence: Vec<GroupName>,
}

impl Subscription {
    pub(super) fn new(layer: ChannelLayer) -> Self {
        let (name, rx, slow) = layer.inner.local.register(layer.inner.config.send_queue);
        Self {
            layer,
            name,
            rx,
            slow,
            replay: VecDeque::new(),
            replayed: HashSet::new(),
            presence: Vec::new(),
        }
    }

    /// This connection's unique channel name.
    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    pub fn layer(&self) -> &ChannelLayer {
        &self.layer
    }

    /// Joins `group`: every message sent to it from now on is delivered here.
    pub fn join(&self, group: &GroupName) {
        self.layer.inner.local.join(self.name.as_str(), group);
    }

    /// Leaves `group`: nothing sent to it afterwards is delivered here.
    pub fn leave(&self, group: &GroupName) {
        self.layer.inner.local.leave(self.name.as_str(), group);
    }

    /// Joins `group` and queues the messages sent to it after message `after` (the last one
    /// the client saw), ahead of the live ones, without duplicates. Returns how many were
    /// missed, or [`ChannelError::GapTooOld`] when some of them are no longer kept (the group
    /// is joined all the same; the client should reload its state).
    pub async fn join_from(
        &mut self,
        group: &GroupName,
        after: i64,
    ) -> Result<usize, ChannelError> {
        self.join(group);
        let missed = self.layer.history(group, after).await?;
        let count = missed.len();
        for delivery in missed {
            self.replayed.insert(delivery.id);
            self.replay.push_back(delivery);
        }
        // Several groups replayed one after another still come out in id order.
        self.replay.make_contiguous().sort_by_key(|d| d.id);
        Ok(count)
    }

    /// Joins `group` and announces this connection in its presence list, on every instance;
    /// members receive a `presence.join` message. Leaving happens when the subscription is
    /// dropped (or its instance dies), with a `presence.leave` message.
    pub async fn join_with_presence(
        &mut self,
        group: &GroupName,
        user: Option<PresenceUser>,
        meta: serde_json::Value,
    ) -> Result<(), ChannelError> {
        self.join(group);
        presence::join(&self.layer, group, &self.name, user, meta).await?;
        self.presence.push(group.clone());
        Ok(())
    }

    /// The next message for this connection; `None` once it was dropped as a slow consumer
    /// (see [`dropped_as_slow`](Self::dropped_as_slow)) or the layer shut down.
    pub async fn recv(&mut self) -> Option<Arc<Delivery>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`recv`](Self::recv) as a poll, for a connection loop that polls its sources by hand.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<Delivery>>> {
        if let Some(delivery) = self.replay.pop_front() {
            return Poll::Ready(Some(delivery));
        }
        loop {
            let Some(delivery) = ready!(self.rx.poll_recv(cx)) else {
                return Poll::Ready(None);
            };
            // The set is empty except just after a resume; skip hashing the id then.
            if !self.replayed.is_empty() && self.replayed.remove(&delivery.id) {
                continue;
            }
            return Poll::Ready(Some(delivery));
        }
    }

    /// Whether this connection fell so far behind that the layer dropped it.
    pub fn dropped_as_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.layer.inner.local.unregister(self.name.as_str());
        if self.presence.is_empty() {
            return;
        }
        let (layer, channel, groups) = (
            self.layer.clone(),
            self.name.clone(),
            std::mem::take(&mut self.presence),
        );
        self.layer.inner.tasks.spawn(async move {
            for group in groups {
                if let Err(e) = presence::leave(&layer, &group, &channel).await {
                    tracing::warn!(error = %e, %group, %channel, "cannot remove a presence entry");
                }
            }
        });
    }
}

/// Applies a control message addressed to a local channel; `true` if it was one.
pub(super) fn apply_control(layer: &ChannelLayer, delivery: &Delivery) -> bool {
    let join = match delivery.kind.as_str() {
        CONTROL_JOIN => true,
        CONTROL_LEAVE => false,
        _ => return false,
    };
    #[derive(serde::Deserialize)]
    struct Control {
        group: String,
    }
    match delivery
        .decode::<Control>()
        .map_err(|e| ChannelError::InvalidMessage(e.to_string()))
        .and_then(|c| GroupName::parse(c.group))
    {
        Ok(group) if join => {
            layer.inner.local.join(&delivery.target, &group);
        }
        Ok(group) => {
            layer.inner.local.leave(&delivery.target, &group);
        }
        Err(e) => tracing::warn!(error = %e, "ignoring a malformed group control message"),
    }
    true
}
