//! The hub: this node's live fan-out, one broadcast per topic with listeners here.
//!
//! The store wakes the hub (in-process for memory, from Redis pub/sub otherwise) and the hub hands the shared
//! message to every local feed. The hub is a wake-up, never the truth: a feed that lags, or that is told to
//! `Resync` after a store reconnect, re-reads history from its cursor.
//!
//! Topics are listened to in the store only while this node has listeners: the first listener asks the store's
//! listener task to subscribe (and waits until it has, so nothing published after its history read is missed);
//! the last one leaving asks it to unsubscribe, after a linger: a long-polling client is a listener for the time
//! of one poll, and its next poll (here or on any node) comes back within moments, so a topic stays subscribed
//! for `linger` after its last listener left instead of costing two SUBSCRIBE round trips per poll. Both go
//! through one queue, so they reach the store in order.
//!
//! While a session's control topic lingers, the hub may also keep the session's record as a long-poll read it
//! (`Keeping::sessions`): the topic tells every change, so the next poll here needs no store read until the
//! topic says something, the store reconnects, the record grows old or the topic is dropped.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use crate::model::{ChannelName, Cursor, SessionId, SessionRecord};
use crate::protocol::Message;
use crate::recovery::Recent;

/// What a feed can listen to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Channel(ChannelName),
    /// A session's control topic: its subscriptions changed.
    Session(SessionId),
}

/// An event for live listeners.
#[derive(Debug, Clone)]
pub enum Live {
    Message(Arc<Message>),
    SessionChanged,
    /// Live delivery may have missed something (a store reconnect): re-read history.
    Resync,
    /// This listener fell behind the topic's live buffer and events were dropped: re-read this topic. Only a
    /// [`Listener`] yields it; it is never delivered.
    Lagged,
}

/// A request to the store's listener task.
#[derive(Debug)]
pub enum ListenCommand {
    Listen(Topic, watch::Sender<bool>),
    Unlisten(Topic),
}

/// Messages a channel listener may fall behind by before it is told to re-read history instead, unless
/// configured (`Keeping::live_buffer`). tokio preallocates every slot of a topic's broadcast (about 40 bytes
/// each) for as long as the topic has listeners here: with 512, a connection on a channel of its own (a per-user
/// channel) cost 28 KiB of RSS instead of 9. A listener further behind catches up from the channel's live cache
/// (512 messages by default, grown only by traffic) before it asks the store.
pub const LIVE_BUFFER: usize = 32;
/// A session's control topic only says "reload"; a lagged listener reloads all the same. tokio preallocates
/// every slot, and there is one such topic per connected session, so keep it small.
const SESSION_CAPACITY: usize = 4;

struct Entry {
    sender: broadcast::Sender<Live>,
    ready: watch::Receiver<bool>,
    listeners: usize,
    /// Since when the topic has had no listener (it lingers, still subscribed).
    idle_since: Option<Instant>,
    /// A channel's newest messages heard live (with a store that needs subscriptions, when enabled).
    recent: Option<Mutex<Recent<Arc<Message>>>>,
    /// A session's record as last read, for a session topic (with a store that needs subscriptions, when
    /// enabled).
    kept: Option<Mutex<Kept>>,
}

/// A session record kept under its control topic, and how many times the topic said "changed" (a read that
/// started before the last change must not be kept).
#[derive(Default)]
struct Kept {
    changes: u64,
    record: Option<Box<(SessionRecord, Instant)>>,
}

impl Entry {
    /// The session changed (or may have): a kept record is stale, and so is a read still in flight.
    fn session_changed(&self) {
        if let Some(kept) = &self.kept {
            let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
            kept.changes += 1;
            kept.record = None;
        }
    }
}

/// How a hub keeps what it heard (all but `live_buffer` only with a store that needs subscriptions).
#[derive(Debug, Clone, Copy)]
pub struct Keeping {
    /// How long a topic stays subscribed after its last listener left.
    pub linger: Duration,
    /// How many of a channel's newest messages, and how many bytes of them, it keeps for resuming readers.
    pub recent_messages: usize,
    pub recent_bytes: usize,
    /// How long a session record read while its control topic was live may be used again (`None`: never).
    pub sessions: Option<Duration>,
    /// How many events each channel topic buffers for its listeners (at least 1).
    pub live_buffer: usize,
}

impl Default for Keeping {
    fn default() -> Self {
        Keeping {
            linger: Duration::ZERO,
            recent_messages: 0,
            recent_bytes: 0,
            sessions: None,
            live_buffer: LIVE_BUFFER,
        }
    }
}

pub struct Hub {
    topics: RwLock<HashMap<Topic, Entry>>,
    /// For a store that needs no subscriptions: one `ready` shared by every topic (a clone is a reference count,
    /// not a channel per session).
    always_ready: watch::Receiver<bool>,
    /// `None` for a store that needs no subscriptions (memory): topics are ready at once.
    // Unbounded: one command per topic created or dropped on this node, never one per message.
    commands: Option<mpsc::UnboundedSender<ListenCommand>>,
    keeping: Keeping,
}

impl Hub {
    /// A hub whose topics need no store subscription.
    pub fn local() -> Arc<Hub> {
        Self::local_keeping(Keeping::default())
    }

    /// The same, with channel topics buffering `keeping.live_buffer` events (the rest of `keeping` needs a store
    /// with subscriptions).
    pub fn local_keeping(keeping: Keeping) -> Arc<Hub> {
        Arc::new(Hub { topics: RwLock::default(), always_ready: watch::channel(true).1, commands: None, keeping })
    }

    /// A hub that asks a store's listener task to subscribe topics; the task reads the returned queue. Topics
    /// are unsubscribed as soon as their last listener leaves.
    pub fn with_listener() -> (Arc<Hub>, mpsc::UnboundedReceiver<ListenCommand>) {
        Self::with_listener_keeping(Keeping::default())
    }

    /// The same, with topics kept subscribed for a linger after their last listener left (the store's listener
    /// task calls [`Hub::expire_idle`] now and then), and channels' newest messages kept for [`Hub::recent`].
    pub fn with_listener_keeping(keeping: Keeping) -> (Arc<Hub>, mpsc::UnboundedReceiver<ListenCommand>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Hub {
                topics: RwLock::default(),
                always_ready: watch::channel(true).1,
                commands: Some(tx),
                keeping,
            }),
            rx,
        )
    }

    /// Starts listening to `topic`; live once the returned listener is [`Listener::ready`].
    pub fn listen(self: &Arc<Self>, topic: Topic) -> Listener {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let entry = topics.entry(topic.clone()).or_insert_with(|| {
            let ready = match &self.commands {
                Some(commands) => {
                    let (ready_tx, ready) = watch::channel(false);
                    let _ = commands.send(ListenCommand::Listen(topic.clone(), ready_tx));
                    ready
                }
                None => self.always_ready.clone(),
            };
            let capacity = match topic {
                Topic::Channel(_) => self.keeping.live_buffer.max(1),
                Topic::Session(_) => SESSION_CAPACITY,
            };
            let recent = match topic {
                Topic::Channel(_) if self.commands.is_some() && self.keeping.recent_messages > 0 => {
                    Some(Mutex::new(Recent::new(self.keeping.recent_messages, self.keeping.recent_bytes)))
                }
                _ => None,
            };
            let kept = match topic {
                Topic::Session(_) if self.commands.is_some() && self.keeping.sessions.is_some() => {
                    Some(Mutex::default())
                }
                _ => None,
            };
            Entry { sender: broadcast::channel(capacity).0, ready, listeners: 0, idle_since: None, recent, kept }
        });
        entry.listeners += 1;
        entry.idle_since = None;
        let events = BroadcastStream::new(entry.sender.subscribe());
        Listener { events, ready: entry.ready.clone(), hub: self.clone(), topic }
    }

    /// Hands an event to every local listener of `topic`.
    ///
    /// Under the topics' read lock, as [`Hub::listen`] takes the write lock: a message is either kept in the
    /// channel's recent run before a new listener subscribes, or sent to it after.
    pub fn deliver(&self, topic: &Topic, event: Live) {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = topics.get(topic) {
            if let Some(recent) = &entry.recent {
                let mut recent = recent.lock().unwrap_or_else(|e| e.into_inner());
                match &event {
                    Live::Message(m) => recent.push(&m.epoch, m.offset, m.frame.len(), m.clone()),
                    Live::Resync => recent.clear(),
                    Live::SessionChanged | Live::Lagged => {}
                }
            }
            entry.session_changed();
            let _ = entry.sender.send(event);
        }
    }

    /// Tells every listener to re-read history (after the store reconnected or live delivery lagged), and forgets
    /// every channel's recent run: messages may have been missed.
    pub fn resync_all(&self) {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        for entry in topics.values() {
            if let Some(recent) = &entry.recent {
                recent.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            entry.session_changed();
            let _ = entry.sender.send(Live::Resync);
        }
    }

    /// The messages of `channel` after `cursor`, when this node heard everything since (`None`: read the store).
    /// Every later message reaches a listener of the channel live, so a feed that listens already may take
    /// this as its history read.
    pub fn recent(&self, channel: &ChannelName, cursor: &Cursor) -> Option<Vec<Arc<Message>>> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let recent = topics.get(&Topic::Channel(channel.clone()))?.recent.as_ref()?;
        let answer = recent.lock().unwrap_or_else(|e| e.into_inner()).after(cursor);
        answer
    }

    /// The record of session `id` as this node last read it, when its control topic was live since and said
    /// nothing, and the read is younger than `Keeping::sessions`.
    pub fn kept_session(&self, id: &SessionId) -> Option<SessionRecord> {
        let max_age = self.keeping.sessions?;
        self.with_kept(id, |kept, live| {
            let (record, read_at) = kept.record.as_deref()?;
            (live && read_at.elapsed() < max_age).then(|| record.clone())
        })
    }

    /// A mark to take before reading session `id` from the store, for [`Hub::keep_session`]; `None` when its
    /// control topic is not live here (or records are not kept).
    pub fn session_mark(&self, id: &SessionId) -> Option<u64> {
        self.with_kept(id, |kept, live| live.then_some(kept.changes))
    }

    /// Keeps `record`, read from the store after `mark` was taken, unless the session changed since.
    pub fn keep_session(&self, id: &SessionId, record: &SessionRecord, mark: u64) {
        self.with_kept(id, |kept, live| {
            (kept.changes == mark && live).then(|| kept.record = Some(Box::new((record.clone(), Instant::now()))))
        });
    }

    /// Forgets the kept record of session `id`: this node just changed the session (the control topic says so
    /// to every node, but a moment later).
    pub fn forget_session(&self, id: &SessionId) {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = topics.get(&Topic::Session(id.clone())) {
            entry.session_changed();
        }
    }

    /// `f` on session `id`'s kept record and whether its control topic is live here; `None` when the node keeps
    /// no record for it.
    fn with_kept<T>(&self, id: &SessionId, f: impl FnOnce(&mut Kept, bool) -> Option<T>) -> Option<T> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let entry = topics.get(&Topic::Session(id.clone()))?;
        let live = *entry.ready.borrow();
        let mut kept = entry.kept.as_ref()?.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut kept, live)
    }

    /// The topics with listeners here, for a store that re-subscribes after reconnecting.
    pub fn topics(&self) -> Vec<Topic> {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// Unsubscribes the topics that have had no listener for the linger time.
    pub fn expire_idle(&self) {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let linger = self.keeping.linger;
        topics.retain(|topic, entry| {
            let expired = entry.idle_since.is_some_and(|since| since.elapsed() >= linger);
            if expired {
                self.unlisten(topic);
            }
            !expired
        });
    }

    fn release(&self, topic: &Topic) {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = topics.get_mut(topic) {
            entry.listeners -= 1;
            if entry.listeners > 0 {
                return;
            }
            if self.commands.is_some() && !self.keeping.linger.is_zero() {
                entry.idle_since = Some(Instant::now());
            } else {
                topics.remove(topic);
                self.unlisten(topic);
            }
        }
    }

    fn unlisten(&self, topic: &Topic) {
        if let Some(commands) = &self.commands {
            let _ = commands.send(ListenCommand::Unlisten(topic.clone()));
        }
    }
}

/// One feed's subscription to a topic, a stream of its events; dropping it stops listening.
///
/// The stream yields `Live::Lagged` when this listener fell behind and events were dropped.
pub struct Listener {
    events: BroadcastStream<Live>,
    ready: watch::Receiver<bool>,
    hub: Arc<Hub>,
    topic: Topic,
}

impl Listener {
    /// Whether the store delivers this topic live now.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the store delivers this topic live (at most `limit`); `false` if it did not in time.
    pub async fn ready(&mut self, limit: Duration) -> bool {
        matches!(tokio::time::timeout(limit, self.ready.wait_for(|r| *r)).await, Ok(Ok(_)))
    }
}

impl Stream for Listener {
    type Item = Live;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Live>> {
        Pin::new(&mut self.events)
            .poll_next(cx)
            .map(|event| event.map(|e| e.unwrap_or_else(|BroadcastStreamRecvError::Lagged(_)| Live::Lagged)))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.hub.release(&self.topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the feed relies on when a listener falls behind the live buffer: it is told `Lagged` before anything
    /// later, then gets the newest messages still buffered, and a listener of another channel is not disturbed.
    #[tokio::test]
    async fn a_listener_behind_the_live_buffer_is_told_it_lagged_then_gets_the_newest() {
        use futures_util::StreamExt;
        let hub = Hub::local_keeping(Keeping { live_buffer: 2, ..Keeping::default() });
        let (a, b) = (ChannelName::parse("a").unwrap(), ChannelName::parse("b").unwrap());
        let mut slow = hub.listen(Topic::Channel(a.clone()));
        let mut other = hub.listen(Topic::Channel(b.clone()));
        let epoch = crate::model::Epoch::parse("e1").unwrap();
        let data = serde_json::value::RawValue::from_string("1".into()).unwrap();
        for offset in 1..=5 {
            hub.deliver(
                &Topic::Channel(a.clone()),
                Live::Message(Message::new(a.clone(), epoch.clone(), offset, 0, &data, None)),
            );
        }
        hub.deliver(
            &Topic::Channel(b.clone()),
            Live::Message(Message::new(b.clone(), epoch.clone(), 1, 0, &data, None)),
        );
        assert!(matches!(slow.next().await, Some(Live::Lagged)));
        for expected in [4, 5] {
            assert!(matches!(slow.next().await, Some(Live::Message(m)) if m.offset == expected));
        }
        assert!(matches!(other.next().await, Some(Live::Message(m)) if m.offset == 1 && m.channel == b));
    }

    #[tokio::test]
    async fn first_listener_subscribes_and_last_unsubscribes() {
        let (hub, mut commands) = Hub::with_listener();
        let topic = Topic::Channel(ChannelName::parse("a").unwrap());
        let a = hub.listen(topic.clone());
        let b = hub.listen(topic.clone());
        let Some(ListenCommand::Listen(t, ready)) = commands.recv().await else { panic!("no listen") };
        assert_eq!(t, topic);
        ready.send(true).unwrap();
        drop(a);
        assert!(commands.try_recv().is_err(), "one listener remains");
        drop(b);
        assert!(matches!(commands.recv().await, Some(ListenCommand::Unlisten(_))));
        assert!(hub.topics().is_empty());
    }

    #[tokio::test]
    async fn a_topic_lingers_after_its_last_listener_and_a_new_one_finds_it_ready() {
        let (hub, mut commands) =
            Hub::with_listener_keeping(Keeping { linger: Duration::from_millis(50), ..Keeping::default() });
        let topic = Topic::Session(SessionId::random());
        let first = hub.listen(topic.clone());
        let Some(ListenCommand::Listen(_, ready)) = commands.recv().await else { panic!("no listen") };
        ready.send(true).unwrap();
        drop(first);
        hub.expire_idle();
        assert!(commands.try_recv().is_err(), "still lingering");
        let again = hub.listen(topic.clone());
        assert!(again.is_ready(), "the next poll finds the topic subscribed");
        assert!(commands.try_recv().is_err(), "no second SUBSCRIBE");
        drop(again);
        tokio::time::sleep(Duration::from_millis(60)).await;
        hub.expire_idle();
        assert!(matches!(commands.recv().await, Some(ListenCommand::Unlisten(t)) if t == topic));
        assert!(hub.topics().is_empty());
    }

    #[tokio::test]
    async fn a_kept_session_record_lasts_until_its_topic_says_anything() {
        let keeping = Keeping {
            linger: Duration::from_millis(200),
            sessions: Some(Duration::from_secs(60)),
            ..Keeping::default()
        };
        let (hub, mut commands) = Hub::with_listener_keeping(keeping);
        let id = SessionId::random();
        let topic = Topic::Session(id.clone());
        let control = hub.listen(topic.clone());
        assert_eq!(hub.session_mark(&id), None, "not live yet: nothing may be kept");
        let Some(ListenCommand::Listen(_, ready)) = commands.recv().await else { panic!("no listen") };
        ready.send(true).unwrap();
        let record = SessionRecord::new();
        let mark = hub.session_mark(&id).unwrap();
        hub.keep_session(&id, &record, mark);
        drop(control);
        assert_eq!(hub.kept_session(&id).map(|r| r.pid), Some(record.pid.clone()), "kept while the topic lingers");
        // Any word on the topic forgets it, and a read that started before the word is not kept.
        hub.deliver(&topic, Live::SessionChanged);
        assert!(hub.kept_session(&id).is_none());
        hub.keep_session(&id, &record, mark);
        assert!(hub.kept_session(&id).is_none(), "read before the change");
        for forget in [|hub: &Hub, id: &SessionId| hub.forget_session(id), |hub: &Hub, _: &SessionId| hub.resync_all()]
        {
            hub.keep_session(&id, &record, hub.session_mark(&id).unwrap());
            assert!(hub.kept_session(&id).is_some());
            forget(&hub, &id);
            assert!(hub.kept_session(&id).is_none());
        }
        // Dropped with the topic.
        hub.keep_session(&id, &record, hub.session_mark(&id).unwrap());
        tokio::time::sleep(Duration::from_millis(250)).await;
        hub.expire_idle();
        assert!(hub.kept_session(&id).is_none());
    }

    #[tokio::test]
    async fn a_kept_session_record_grows_old() {
        let keeping = Keeping { sessions: Some(Duration::from_millis(30)), ..Keeping::default() };
        let (hub, mut commands) = Hub::with_listener_keeping(keeping);
        let id = SessionId::random();
        let _control = hub.listen(Topic::Session(id.clone()));
        let Some(ListenCommand::Listen(_, ready)) = commands.recv().await else { panic!("no listen") };
        ready.send(true).unwrap();
        hub.keep_session(&id, &SessionRecord::new(), hub.session_mark(&id).unwrap());
        assert!(hub.kept_session(&id).is_some());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(hub.kept_session(&id).is_none(), "older than the max age: read again");
    }
}
