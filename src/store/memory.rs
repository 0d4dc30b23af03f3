//! The embedded store: everything in this process, for a single node without Redis.
//!
//! Each channel's log sits behind its own lock, so publishes to different channels never contend; sessions sit
//! behind one map that a sweeper expires. Memory is bounded by `history_size` per channel, by the session TTL
//! and by the dedupe TTL (plus a cap on dedupe records per channel), and for the whole store by the limits'
//! `max_channels` (a new channel beyond it is refused) and `max_bytes` of kept messages (beyond it the oldest
//! messages of all channels go first, as a cache would: live delivery goes on, and a client resuming from
//! before them is told a `trimmed` gap). A client creates channels within the node's channels per second.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use super::{Append, ChannelLog, Creator, Health, History, Keep, Presence, Retention, Sessions, StoreError};
use crate::hub::{Hub, Live, Topic};
use crate::limits::{LimitSettings, Limits};
use crate::model::{now_ms, ChannelName, Cursor, Epoch, Grant, SessionId, SessionRecord};
use crate::protocol::Message;
use crate::recovery::{resume, LogBounds};

/// The most dedupe records a channel keeps, whatever their age, so a flood of unique ids stays bounded.
const MAX_DEDUPE_PER_CHANNEL: usize = 100_000;
/// Roughly what a kept message costs besides its frame (the `Message`, its `Arc` and its slot in the log).
const MESSAGE_OVERHEAD: usize = 128;

pub struct MemoryStore {
    channels: RwLock<HashMap<ChannelName, Arc<Mutex<Log>>>>,
    sessions: Mutex<HashMap<SessionId, (SessionRecord, Instant)>>,
    retention: Retention,
    hub: Arc<Hub>,
    /// The node's limits: channels created per second, `max_channels`, `max_bytes`.
    limits: Limits,
    /// Bytes of the messages all logs keep (frames plus [`MESSAGE_OVERHEAD`]).
    bytes: AtomicUsize,
    /// Held by the one append that evicts the oldest messages when over `max_bytes`.
    evicting: Mutex<()>,
}

/// Whether an operation may create a channel's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Create {
    /// A client's subscribe or publish: within the node's and the client IP's channels per second, and
    /// `max_channels`.
    Limited(Option<IpAddr>),
    /// The backend's publish, a read or presence of a subscribed channel: never refused.
    Trusted,
}

struct Log {
    epoch: Epoch,
    top: u64,
    /// What the log keeps, as the last append asked (its namespace's history size and age).
    keep: Keep,
    entries: VecDeque<(Instant, Arc<Message>)>,
    /// What `entries` cost, as [`message_bytes`] counts.
    bytes: usize,
    dedupe: HashMap<String, Cursor>,
    dedupe_order: VecDeque<(Instant, String)>,
    /// Public session ids subscribed here, with when their session expires unless refreshed.
    presence: HashMap<String, Instant>,
    last_used: Instant,
}

impl Log {
    fn new(keep: Keep) -> Self {
        Log {
            epoch: Epoch::random(),
            top: 0,
            keep,
            entries: VecDeque::new(),
            bytes: 0,
            dedupe: HashMap::new(),
            dedupe_order: VecDeque::new(),
            presence: HashMap::new(),
            last_used: Instant::now(),
        }
    }

    fn push(&mut self, at: Instant, message: Arc<Message>) {
        self.bytes += message_bytes(&message);
        self.entries.push_back((at, message));
    }

    fn pop_front(&mut self) {
        if let Some((_, message)) = self.entries.pop_front() {
            self.bytes -= message_bytes(&message);
        }
    }

    fn trim(&mut self, retention: &Retention, now: Instant) {
        while self.entries.len() > self.keep.size {
            self.pop_front();
        }
        while self.entries.front().is_some_and(|(at, _)| now.duration_since(*at) > self.keep.ttl) {
            self.pop_front();
        }
        while let Some((at, key)) = self.dedupe_order.front() {
            if now.duration_since(*at) <= retention.dedupe_ttl && self.dedupe_order.len() <= MAX_DEDUPE_PER_CHANNEL {
                break;
            }
            self.dedupe.remove(key);
            self.dedupe_order.pop_front();
        }
    }

    /// The oldest offset still kept (top + 1 when none is).
    fn first(&self) -> u64 {
        self.entries.front().map_or(self.top + 1, |(_, m)| m.offset)
    }
}

fn message_bytes(message: &Message) -> usize {
    message.frame.len() + MESSAGE_OVERHEAD
}

fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryStore {
    /// A store with no limits of its own (bounded per channel by `retention` only).
    pub fn new(retention: Retention, hub: Arc<Hub>) -> Arc<Self> {
        Self::bounded(retention, hub, Limits::new(&LimitSettings::off()))
    }

    /// A store within the node's `limits` (channels per second, `max_channels`, `max_bytes`).
    pub(crate) fn bounded(retention: Retention, hub: Arc<Hub>, limits: Limits) -> Arc<Self> {
        Arc::new(MemoryStore {
            channels: RwLock::default(),
            sessions: Mutex::default(),
            retention,
            hub,
            limits,
            bytes: AtomicUsize::new(0),
            evicting: Mutex::new(()),
        })
    }

    /// Expires sessions, and forgets channels with nothing kept and nobody present, every `every`.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                let Some(store) = store.upgrade() else { break };
                store.sweep(Instant::now());
            }
        });
    }

    fn sweep(&self, now: Instant) {
        self.lock_sessions().retain(|_, (_, expires)| *expires > now);
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
        channels.retain(|_, log| {
            let mut log = lock(log);
            let before = log.bytes;
            log.trim(&self.retention, now);
            self.account(before, log.bytes);
            log.presence.retain(|_, expires| *expires > now);
            // A log forgotten here comes back with a new epoch: clients holding its cursors get a gap. One that
            // never had a message goes as soon as nobody uses it, like its Redis meta.
            let idle = if log.top == 0 { self.retention.session_ttl * 2 } else { log.keep.ttl };
            !(log.entries.is_empty()
                && log.presence.is_empty()
                && log.dedupe.is_empty()
                && now.duration_since(log.last_used) > idle)
        });
    }

    fn existing(&self, channel: &ChannelName) -> Option<Arc<Mutex<Log>>> {
        self.channels.read().unwrap_or_else(|e| e.into_inner()).get(channel).cloned()
    }

    /// The channel's log, created if `create` allows it now.
    fn log(&self, channel: &ChannelName, create: Create) -> Result<Arc<Mutex<Log>>, StoreError> {
        if let Some(log) = self.existing(channel) {
            return Ok(log);
        }
        // Before the map's write lock; two racing creators of one channel may both spend a second's share.
        if let Create::Limited(ip) = create {
            self.limits.new_channel(ip).map_err(StoreError::RateLimited)?;
        }
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
        if let Some(log) = channels.get(channel) {
            return Ok(log.clone());
        }
        let max = self.limits.settings().max_channels;
        if matches!(create, Create::Limited(_)) && max > 0 && channels.len() >= max {
            self.limits.refused_full();
            return Err(StoreError::Full("this node holds its most channels (max_channels); retry later"));
        }
        let keep = Keep { size: self.retention.history_size, ttl: self.retention.history_ttl };
        let log = Arc::new(Mutex::new(Log::new(keep)));
        channels.insert(channel.clone(), log.clone());
        Ok(log)
    }

    /// Runs `f` on the channel's log (created if `create` allows it), keeping the store's byte count.
    fn with_log<T>(
        &self,
        channel: &ChannelName,
        create: Create,
        f: impl FnOnce(&mut Log) -> T,
    ) -> Result<T, StoreError> {
        let log = self.log(channel, create)?;
        Ok(self.on(&log, f))
    }

    fn on<T>(&self, log: &Mutex<Log>, f: impl FnOnce(&mut Log) -> T) -> T {
        let mut log = lock(log);
        log.last_used = Instant::now();
        let before = log.bytes;
        let out = f(&mut log);
        self.account(before, log.bytes);
        out
    }

    fn account(&self, before: usize, after: usize) {
        if after > before {
            self.bytes.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Over `max_bytes`: drops the oldest messages of all channels until 7/8 of it is kept. One append does it
    /// while the others go on (locking one log at a time, never two).
    fn evict(&self) {
        let max = self.limits.settings().max_bytes;
        if max == 0 || self.bytes.load(Ordering::Relaxed) <= max {
            return;
        }
        let Ok(_evicting) = self.evicting.try_lock() else { return };
        let target = max - max / 8;
        let logs: Vec<_> = self.channels.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let mut oldest: BinaryHeap<_> = logs
            .iter()
            .enumerate()
            .filter_map(|(i, log)| lock(log).entries.front().map(|(at, _)| Reverse((*at, i))))
            .collect();
        while self.bytes.load(Ordering::Relaxed) > target {
            let Some(Reverse((_, i))) = oldest.pop() else { break };
            let mut log = lock(&logs[i]);
            let before = log.bytes;
            log.pop_front();
            self.account(before, log.bytes);
            if let Some((at, _)) = log.entries.front() {
                oldest.push(Reverse((*at, i)));
            }
        }
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, (SessionRecord, Instant)>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ChannelLog for MemoryStore {
    async fn append(&self, channel: &ChannelName, append: Append<'_>) -> Result<Cursor, StoreError> {
        // A client's publish creates a channel within the node's rate; the backend's only within the bound.
        let create = match append.creator {
            Creator::Client(ip) => Create::Limited(ip),
            Creator::Backend => Create::Trusted,
        };
        let message = self.with_log(channel, create, |log| {
            let now = Instant::now();
            log.keep = append.keep;
            log.trim(&self.retention, now);
            if let Some(cursor) = append.dedupe.and_then(|key| log.dedupe.get(key)) {
                return Err(cursor.clone());
            }
            log.top += 1;
            let message =
                Message::new(channel.clone(), log.epoch.clone(), log.top, append.ts, append.data, append.from);
            log.push(now, message.clone());
            if let Some(key) = append.dedupe {
                log.dedupe.insert(key.to_owned(), message.cursor());
                log.dedupe_order.push_back((now, key.to_owned()));
            }
            log.trim(&self.retention, now);
            // Delivered under the log's lock, so live listeners see this channel's messages in offset order.
            self.hub.deliver(&Topic::Channel(channel.clone()), Live::Message(message.clone()));
            Ok(message)
        })?;
        self.evict();
        Ok(match message {
            Ok(message) => message.cursor(),
            Err(first) => first,
        })
    }

    async fn read(&self, channel: &ChannelName, after: &Cursor, limit: usize) -> Result<History, StoreError> {
        self.with_log(channel, Create::Trusted, |log| {
            log.trim(&self.retention, Instant::now());
            let first = log.first();
            let from = resume(after, LogBounds { epoch: &log.epoch, first, top: log.top, lineage: &[] });
            let gap = from.gap.map(|reason| (Cursor::new(log.epoch.clone(), from.after), reason));
            let skip = (from.after + 1 - first) as usize;
            let messages = log.entries.iter().skip(skip).take(limit).map(|(_, m)| m.clone()).collect();
            History { gap, messages }
        })
    }

    async fn top(&self, channel: &ChannelName, creator: Creator) -> Result<Cursor, StoreError> {
        let create = match creator {
            Creator::Client(ip) => Create::Limited(ip),
            Creator::Backend => Create::Trusted,
        };
        self.with_log(channel, create, |log| Cursor::new(log.epoch.clone(), log.top))
    }
}

impl Sessions for MemoryStore {
    async fn create_session(&self, id: &SessionId, record: &SessionRecord) -> Result<(), StoreError> {
        let expires = Instant::now() + self.retention.session_ttl;
        self.lock_sessions().insert(id.clone(), (record.clone(), expires));
        Ok(())
    }

    async fn load_session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let now = Instant::now();
        let mut sessions = self.lock_sessions();
        match sessions.get_mut(id) {
            Some((record, expires)) if *expires > now => {
                *expires = now + self.retention.session_ttl;
                Ok(Some(record.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn touch_session(&self, id: &SessionId, record: &SessionRecord) -> Result<bool, StoreError> {
        let expires = Instant::now() + self.retention.session_ttl;
        match self.lock_sessions().get_mut(id) {
            Some((stored, at)) if *at > Instant::now() => {
                *at = expires;
                stored.presence_at = now_ms();
            }
            _ => return Ok(false),
        }
        for channel in record.subscriptions.keys() {
            // A channel the store is too full to take back keeps its subscriber, without presence until read.
            let _ = self.with_log(channel, Create::Trusted, |log| log.presence.insert(record.pid.clone(), expires));
        }
        Ok(true)
    }

    async fn subscribe(
        &self,
        id: &SessionId,
        pid: &str,
        channel: &ChannelName,
        cursor: &Cursor,
        max: usize,
    ) -> Result<Option<Cursor>, StoreError> {
        // A subscribe with a cursor (no `top` before it) creates the channel here, within the same limits.
        let ip = self.lock_sessions().get(id).and_then(|(record, _)| record.ip);
        let log = self.log(channel, Create::Limited(ip))?;
        let expires = Instant::now() + self.retention.session_ttl;
        let in_force = {
            let mut sessions = self.lock_sessions();
            // An expired session the sweeper has not reached yet is gone all the same.
            let Some((record, at)) = sessions.get_mut(id).filter(|(_, at)| *at > Instant::now()) else {
                return Ok(None);
            };
            *at = expires;
            if let Some(existing) = record.subscriptions.get(channel) {
                existing.clone()
            } else if record.subscriptions.len() >= max {
                return Err(StoreError::TooManySubscriptions(max));
            } else {
                record.subscriptions.insert(channel.clone(), cursor.clone());
                cursor.clone()
            }
        };
        self.on(&log, |log| log.presence.insert(pid.to_owned(), expires));
        Ok(Some(in_force))
    }

    async fn unsubscribe(&self, id: &SessionId, pid: &str, channel: &ChannelName) -> Result<(), StoreError> {
        if let Some((record, _)) = self.lock_sessions().get_mut(id) {
            record.subscriptions.remove(channel);
        }
        // Never creates a log: unsubscribing from channels nobody uses must cost nothing.
        if let Some(log) = self.existing(channel) {
            self.on(&log, |log| log.presence.remove(pid));
        }
        Ok(())
    }

    async fn set_grant(&self, id: &SessionId, grant: &Grant) -> Result<bool, StoreError> {
        match self.lock_sessions().get_mut(id) {
            Some((record, at)) if *at > Instant::now() => {
                record.grant = Some(grant.clone());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn notify_session(&self, id: &SessionId) -> Result<(), StoreError> {
        self.hub.deliver(&Topic::Session(id.clone()), Live::SessionChanged);
        Ok(())
    }
}

impl Presence for MemoryStore {
    async fn presence(&self, channel: &ChannelName) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        // Read-only: asking about a channel nobody uses must not create it.
        let Some(log) = self.existing(channel) else { return Ok(Vec::new()) };
        Ok(self.on(&log, |log| {
            let mut pids: Vec<_> = log.presence.iter().filter(|(_, e)| **e > now).map(|(p, _)| p.clone()).collect();
            pids.sort();
            pids
        }))
    }
}

impl Health for MemoryStore {
    /// In this process: serving at all is being healthy.
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::model::{GapReason, Sender};

    const TTL: Duration = Duration::from_secs(60);

    fn store(limits: LimitSettings) -> Arc<MemoryStore> {
        let retention = Retention {
            history_size: 1000,
            history_ttl: TTL * 60,
            session_ttl: TTL,
            dedupe_ttl: Duration::from_secs(1),
        };
        MemoryStore::bounded(retention, Hub::local(), Limits::new(&limits))
    }

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    fn channels(store: &MemoryStore) -> usize {
        store.channels.read().unwrap().len()
    }

    async fn publish(
        store: &MemoryStore,
        channel: &str,
        bytes: usize,
        from: Option<&Sender>,
    ) -> Result<Cursor, StoreError> {
        let data = RawValue::from_string(format!("\"{}\"", "x".repeat(bytes))).unwrap();
        let keep = Keep { size: 1000, ttl: TTL * 60 };
        let creator = if from.is_some() { Creator::Client(None) } else { Creator::Backend };
        store.append(&ch(channel), Append { data: &data, ts: now_ms(), dedupe: None, from, keep, creator }).await
    }

    #[tokio::test]
    async fn a_subscribe_to_an_empty_channel_is_forgotten_once_its_session_is_gone() {
        let store = store(LimitSettings::default());
        let (id, record) = (SessionId::random(), SessionRecord::new());
        store.create_session(&id, &record).await.unwrap();
        for name in ["empty", "kept"] {
            let top = store.top(&ch(name), Creator::Client(None)).await.unwrap();
            store.subscribe(&id, &record.pid, &ch(name), &top, 64).await.unwrap().unwrap();
        }
        publish(&store, "kept", 10, None).await.unwrap();
        store.sweep(Instant::now() + TTL);
        assert_eq!(channels(&store), 2, "idle for less than 2 × session_ttl");
        store.sweep(Instant::now() + TTL * 3);
        assert_eq!(channels(&store), 1, "only the channel with a message outlives the session");
        assert!(store.existing(&ch("kept")).is_some());
    }

    #[tokio::test]
    async fn clients_create_channels_within_the_rate_and_everyone_within_max_channels() {
        let store = store(LimitSettings { channels_per_second: 3, max_channels: 5, ..Default::default() });
        let client = Sender { sub: None, pid: "p".into() };
        for i in 0..3 {
            store.top(&ch(&format!("c{i}")), Creator::Client(None)).await.unwrap();
        }
        assert!(matches!(store.top(&ch("c3"), Creator::Client(None)).await, Err(StoreError::RateLimited(_))));
        assert!(matches!(publish(&store, "c3", 1, Some(&client)).await, Err(StoreError::RateLimited(_))));
        let id = SessionId::random();
        store.create_session(&id, &SessionRecord::new()).await.unwrap();
        let cursor = Cursor::new(Epoch::random(), 0);
        assert!(matches!(store.subscribe(&id, "p", &ch("c3"), &cursor, 64).await, Err(StoreError::RateLimited(_))));
        assert!(store.lock_sessions()[&id].0.subscriptions.is_empty(), "a refused subscribe is not recorded");
        store.unsubscribe(&id, "p", &ch("c4")).await.unwrap();
        assert_eq!(store.presence(&ch("c5")).await.unwrap(), Vec::<String>::new());
        assert_eq!(channels(&store), 3, "neither an unsubscribe nor a presence query creates a channel");
        // The backend is trusted: held neither to the clients' rate nor to max_channels, which bound clients.
        for name in ["b0", "b1", "b2"] {
            publish(&store, name, 1, None).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let over = store.top(&ch("c4"), Creator::Client(None)).await;
        assert!(matches!(over, Err(StoreError::Full(_))), "6 channels, max 5");
        let refused = store.limits.refusals();
        assert_eq!((refused.channels, refused.max_channels), (3, 1));
    }

    #[tokio::test]
    async fn over_max_bytes_the_oldest_messages_of_all_channels_go_first() {
        let store = store(LimitSettings { max_bytes: 1 << 20, ..Default::default() });
        let (mut first, mut last) = (None, None);
        for i in 0..64 {
            let cursor = publish(&store, &format!("c{}", i % 4), 60_000, None).await.unwrap();
            first.get_or_insert(cursor.clone());
            last = Some(cursor);
        }
        let kept = store.bytes.load(Ordering::Relaxed);
        assert!(kept <= 1 << 20, "{kept} bytes kept");
        let counted: usize = store.channels.read().unwrap().values().map(|log| lock(log).bytes).sum();
        assert_eq!(kept, counted, "the store's count is the sum of its logs'");
        // The first message (on c0) is gone: a client resuming before it is told so.
        let before_first = Cursor { offset: 0, ..first.unwrap() };
        let history = store.read(&ch("c0"), &before_first, 100).await.unwrap();
        assert_eq!(history.gap.map(|(_, reason)| reason), Some(GapReason::Trimmed));
        // The newest (on c3) is kept.
        let last = last.unwrap();
        let history = store.read(&ch("c3"), &Cursor { offset: last.offset - 1, ..last.clone() }, 100).await.unwrap();
        assert_eq!(history.messages.last().map(|m| m.offset), Some(last.offset));
    }
}
