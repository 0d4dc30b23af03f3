//! The embedded store: everything in this process, for a single node without Redis.
//!
//! Each channel's log sits behind its own lock, so publishes to different channels never contend; sessions sit
//! behind one map that a sweeper expires. Memory is bounded by `history_size` per channel, by the session TTL
//! and by the dedupe TTL (plus a cap on dedupe records per channel).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::{ChannelLog, History, Presence, Retention, Sessions, StoreError};
use crate::hub::{Hub, Live, Topic};
use crate::model::{now_ms, ChannelName, Cursor, Epoch, SessionId, SessionRecord};
use crate::protocol::Message;
use crate::recovery::{resume, LogBounds};

/// The most dedupe records a channel keeps, whatever their age, so a flood of unique ids stays bounded.
const MAX_DEDUPE_PER_CHANNEL: usize = 100_000;

pub struct MemoryStore {
    channels: RwLock<HashMap<ChannelName, Arc<Mutex<Log>>>>,
    sessions: Mutex<HashMap<SessionId, (SessionRecord, Instant)>>,
    retention: Retention,
    hub: Arc<Hub>,
}

struct Log {
    epoch: Epoch,
    top: u64,
    entries: VecDeque<(Instant, Arc<Message>)>,
    dedupe: HashMap<String, Cursor>,
    dedupe_order: VecDeque<(Instant, String)>,
    /// Public session ids subscribed here, with when their session expires unless refreshed.
    presence: HashMap<String, Instant>,
    last_used: Instant,
}

impl Log {
    fn new() -> Self {
        Log {
            epoch: Epoch::random(),
            top: 0,
            entries: VecDeque::new(),
            dedupe: HashMap::new(),
            dedupe_order: VecDeque::new(),
            presence: HashMap::new(),
            last_used: Instant::now(),
        }
    }

    fn trim(&mut self, retention: &Retention, now: Instant) {
        while self.entries.len() > retention.history_size {
            self.entries.pop_front();
        }
        while self.entries.front().is_some_and(|(at, _)| now.duration_since(*at) > retention.history_ttl) {
            self.entries.pop_front();
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

impl MemoryStore {
    pub fn new(retention: Retention, hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(MemoryStore { channels: RwLock::default(), sessions: Mutex::default(), retention, hub })
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
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            log.trim(&self.retention, now);
            log.presence.retain(|_, expires| *expires > now);
            // A log forgotten here comes back with a new epoch: clients holding its cursors get a gap.
            !(log.entries.is_empty()
                && log.presence.is_empty()
                && log.dedupe.is_empty()
                && now.duration_since(log.last_used) > self.retention.history_ttl)
        });
    }

    fn log(&self, channel: &ChannelName) -> Arc<Mutex<Log>> {
        if let Some(log) = self.channels.read().unwrap_or_else(|e| e.into_inner()).get(channel) {
            return log.clone();
        }
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
        channels.entry(channel.clone()).or_insert_with(|| Arc::new(Mutex::new(Log::new()))).clone()
    }

    fn with_log<T>(&self, channel: &ChannelName, f: impl FnOnce(&mut Log) -> T) -> T {
        let log = self.log(channel);
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        log.last_used = Instant::now();
        f(&mut log)
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, (SessionRecord, Instant)>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark_present(&self, pid: &str, channel: &ChannelName, expires: Instant) {
        self.with_log(channel, |log| log.presence.insert(pid.to_owned(), expires));
    }
}

impl ChannelLog for MemoryStore {
    async fn append(
        &self,
        channel: &ChannelName,
        data: &RawValue,
        ts: u64,
        dedupe: Option<&str>,
    ) -> Result<Cursor, StoreError> {
        let message = self.with_log(channel, |log| {
            let now = Instant::now();
            log.trim(&self.retention, now);
            if let Some(cursor) = dedupe.and_then(|key| log.dedupe.get(key)) {
                return Err(cursor.clone());
            }
            log.top += 1;
            let message = Message::new(channel.clone(), log.epoch.clone(), log.top, ts, data);
            log.entries.push_back((now, message.clone()));
            if let Some(key) = dedupe {
                log.dedupe.insert(key.to_owned(), message.cursor());
                log.dedupe_order.push_back((now, key.to_owned()));
            }
            log.trim(&self.retention, now);
            // Delivered under the log's lock, so live listeners see this channel's messages in offset order.
            self.hub.deliver(&Topic::Channel(channel.clone()), Live::Message(message.clone()));
            Ok(message)
        });
        Ok(match message {
            Ok(message) => message.cursor(),
            Err(first) => first,
        })
    }

    async fn read(&self, channel: &ChannelName, after: &Cursor, limit: usize) -> Result<History, StoreError> {
        Ok(self.with_log(channel, |log| {
            log.trim(&self.retention, Instant::now());
            let first = log.first();
            let from = resume(after, LogBounds { epoch: &log.epoch, first, top: log.top });
            let gap = from.gap.map(|reason| (Cursor::new(log.epoch.clone(), from.after), reason));
            let skip = (from.after + 1 - first) as usize;
            let messages = log.entries.iter().skip(skip).take(limit).map(|(_, m)| m.clone()).collect();
            History { gap, messages }
        }))
    }

    async fn top(&self, channel: &ChannelName) -> Result<Cursor, StoreError> {
        Ok(self.with_log(channel, |log| Cursor::new(log.epoch.clone(), log.top)))
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
            self.mark_present(&record.pid, channel, expires);
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
        self.mark_present(pid, channel, expires);
        Ok(Some(in_force))
    }

    async fn unsubscribe(&self, id: &SessionId, pid: &str, channel: &ChannelName) -> Result<(), StoreError> {
        if let Some((record, _)) = self.lock_sessions().get_mut(id) {
            record.subscriptions.remove(channel);
        }
        self.with_log(channel, |log| log.presence.remove(pid));
        Ok(())
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
        if !self.channels.read().unwrap_or_else(|e| e.into_inner()).contains_key(channel) {
            return Ok(Vec::new());
        }
        Ok(self.with_log(channel, |log| {
            let mut pids: Vec<_> = log.presence.iter().filter(|(_, e)| **e > now).map(|(p, _)| p.clone()).collect();
            pids.sort();
            pids
        }))
    }
}
