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
    task::{Context, Poll, Waker, ready},
};

use super::{ChannelError, ChannelLayer, ChannelName, Delivery, GroupName, PresenceUser, presence};

/// Message types the layer handles itself: `group_add`/`group_discard` called on another
/// instance for a channel of this one.
pub(super) const CONTROL_JOIN: &str = "hearth.group_add";
pub(super) const CONTROL_LEAVE: &str = "hearth.group_discard";

pub(super) struct Local {
    /// `<instance>!`: a channel of this instance is named this prefix and its number.
    prefix: String,
    counter: AtomicU64,
    // A std Mutex: held for map operations and non-blocking offers, never across an await.
    state: Mutex<State>,
}

/// This instance's connections by number (their names' suffix) and its groups' members. Keyed
/// by number rather than by name: every open socket has an entry, and a name would be two more
/// copies of a 40-byte string per socket (#36).
#[derive(Default)]
struct State {
    channels: HashMap<u64, Member>,
    groups: HashMap<String, HashSet<u64>>,
}

struct Member {
    queue: Arc<Queue>,
    /// The groups it joined: one or two for most connections, so a list, not a set.
    groups: Vec<String>,
}

impl Drop for Member {
    /// Ends the subscription once it has taken what is queued (removed as a slow consumer, or
    /// the layer is gone), as the last sender of a channel does.
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// One connection's bounded queue of deliveries: the reader's fan-out offers to it (never
/// waiting), the connection's [`Subscription`] takes from it.
///
/// Not tokio's bounded mpsc channel (#36): that one allocates about 800 bytes when it is made
/// (two cache-padded halves and a first block of 32 slots), for every open socket, idle or not.
/// This is one allocation of about 100 bytes; its buffer is allocated when messages arrive and
/// given back when a backlog has drained.
struct Queue {
    capacity: usize,
    /// Set when the connection was dropped as a slow consumer.
    slow: AtomicBool,
    // A std Mutex: held to push or pop one item, never across an await.
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Arc<Delivery>>,
    /// The task waiting for the next item, woken when one arrives or the queue closes.
    waker: Option<Waker>,
    /// No more items will come: the subscription ends after the queued ones.
    closed: bool,
}

/// A drained queue whose buffer grew past this many items gives the buffer back.
const KEEP_BUFFER: usize = 16;

impl Queue {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            slow: AtomicBool::new(false),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `delivery`; `false` if the queue is full.
    fn offer(&self, delivery: &Arc<Delivery>) -> bool {
        let mut state = self.state();
        if state.items.len() >= self.capacity {
            return false;
        }
        state.items.push_back(delivery.clone());
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<Arc<Delivery>>> {
        let mut state = self.state();
        if let Some(delivery) = state.items.pop_front() {
            if state.items.is_empty() && state.items.capacity() > KEEP_BUFFER {
                state.items = VecDeque::new();
            }
            return Poll::Ready(Some(delivery));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// What one fan-out did.
#[derive(Default)]
pub(super) struct Fanout {
    pub delivered: u64,
    pub dropped_slow: u64,
}

impl State {
    fn remove(&mut self, id: u64) -> Option<Member> {
        let member = self.channels.remove(&id)?;
        for group in &member.groups {
            if let Some(members) = self.groups.get_mut(group) {
                members.remove(&id);
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

    /// The number of a channel of this instance, from its name; `None` for another instance's
    /// (or a name that is no channel's).
    fn id(&self, channel: &str) -> Option<u64> {
        channel.strip_prefix(&self.prefix)?.parse().ok()
    }

    fn register(&self, capacity: usize) -> (ChannelName, Arc<Queue>) {
        let id = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = ChannelName::new_unchecked(format!("{}{id}", self.prefix));
        let queue = Arc::new(Queue::new(capacity));
        self.state().channels.insert(
            id,
            Member {
                queue: queue.clone(),
                groups: Vec::new(),
            },
        );
        (name, queue)
    }

    fn unregister(&self, channel: &str) {
        if let Some(id) = self.id(channel) {
            self.state().remove(id);
        }
    }

    /// Adds a channel of this instance to a group; `false` if the channel is not here.
    pub(super) fn join(&self, channel: &str, group: &GroupName) -> bool {
        let Some(id) = self.id(channel) else {
            return false;
        };
        let mut state = self.state();
        let Some(member) = state.channels.get_mut(&id) else {
            return false;
        };
        if !member.groups.iter().any(|g| g == group.as_str()) {
            // One at a time: a list grown by `push` has room for four.
            member.groups.reserve_exact(1);
            member.groups.push(group.as_str().to_owned());
        }
        state
            .groups
            .entry(group.as_str().to_owned())
            .or_default()
            .insert(id);
        true
    }

    /// Removes a channel of this instance from a group; `false` if the channel is not here.
    pub(super) fn leave(&self, channel: &str, group: &GroupName) -> bool {
        let Some(id) = self.id(channel) else {
            return false;
        };
        let mut state = self.state();
        let Some(member) = state.channels.get_mut(&id) else {
            return false;
        };
        member.groups.retain(|g| g != group.as_str());
        if let Some(members) = state.groups.get_mut(group.as_str()) {
            members.remove(&id);
            if members.is_empty() {
                state.groups.remove(group.as_str());
            }
        }
        true
    }

    /// Whether a message for `target` has anyone here to go to: the cheap test every message
    /// passes before it is decoded.
    pub(super) fn wants(&self, target: &str, is_group: bool) -> bool {
        if is_group {
            self.state().groups.contains_key(target)
        } else {
            self.id(target)
                .is_some_and(|id| self.state().channels.contains_key(&id))
        }
    }

    /// Queues `delivery` for every local member of its target, dropping slow consumers.
    pub(super) fn fan_out(&self, delivery: &Arc<Delivery>) -> Fanout {
        let direct = if delivery.is_group {
            None
        } else {
            match self.id(&delivery.target) {
                Some(id) => Some(id),
                None => return Fanout::default(),
            }
        };
        let mut state = self.state();
        let mut result = Fanout::default();
        let mut slow = Vec::new();
        let mut offer = |id: u64, member: &Member| {
            if member.queue.offer(delivery) {
                result.delivered += 1;
            } else {
                member.queue.slow.store(true, Ordering::Relaxed);
                result.dropped_slow += 1;
                slow.push(id);
            }
        };
        match direct {
            None => {
                if let Some(members) = state.groups.get(&delivery.target) {
                    for id in members {
                        if let Some(member) = state.channels.get(id) {
                            offer(*id, member);
                        }
                    }
                }
            }
            Some(id) => {
                if let Some(member) = state.channels.get(&id) {
                    offer(id, member);
                }
            }
        }
        for id in slow {
            if state.remove(id).is_some() {
                let channel = format!("{}{id}", self.prefix);
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
    queue: Arc<Queue>,
    /// Only after a resume ([`join_from`](Self::join_from)); boxed, as most connections never
    /// resume and every open one would carry the empty collections (#36).
    resumed: Option<Box<Resumed>>,
    presence: Vec<GroupName>,
}

#[derive(Default)]
struct Resumed {
    /// Missed messages fetched from history, delivered before the live ones.
    replay: VecDeque<Arc<Delivery>>,
    /// Ids of replayed messages, so that their live copies are not delivered twice.
    replayed: HashSet<i64>,
}

impl Subscription {
    pub(super) fn new(layer: ChannelLayer) -> Self {
        let (name, queue) = layer.inner.local.register(layer.inner.config.send_queue);
        Self {
            layer,
            name,
            queue,
            resumed: None,
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
        let resumed = self.resumed.get_or_insert_default();
        for delivery in missed {
            resumed.replayed.insert(delivery.id);
            resumed.replay.push_back(delivery);
        }
        // Several groups replayed one after another still come out in id order.
        resumed.replay.make_contiguous().sort_by_key(|d| d.id);
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
        if let Some(delivery) = self.resumed.as_mut().and_then(|r| r.replay.pop_front()) {
            return Poll::Ready(Some(delivery));
        }
        loop {
            let Some(delivery) = ready!(self.queue.poll_take(cx)) else {
                return Poll::Ready(None);
            };
            if let Some(resumed) = &mut self.resumed
                && resumed.replayed.remove(&delivery.id)
            {
                continue;
            }
            return Poll::Ready(Some(delivery));
        }
    }

    /// Whether this connection fell so far behind that the layer dropped it.
    pub fn dropped_as_slow(&self) -> bool {
        self.queue.slow.load(Ordering::Relaxed)
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
