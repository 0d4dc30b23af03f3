//! The store: what must outlive a request. Three small traits, one per concern, each implemented by both
//! backends: [`ChannelLog`] (offset-numbered history), [`Sessions`] (subscriptions and their cursors) and
//! [`Presence`] (who is subscribed now).
//!
//! [`memory::MemoryStore`] serves a single node; [`redis::RedisStore`] keeps everything in Redis so that any node
//! can serve any request. Both wake this node's [`Hub`](crate::hub::Hub) when a message is stored, and both
//! pass the same named cases (`tests/store_contract.rs`).

pub mod memory;
pub mod redis;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use crate::limits::RetryAfter;
use crate::model::{ChannelName, Cursor, GapReason, Grant, Sender, SessionId, SessionRecord};
use crate::protocol::Message;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("at most {0} subscriptions per session")]
    TooManySubscriptions(usize),
    #[error("{0}")]
    Unavailable(String),
    /// Over this node's channels created per second.
    #[error("too many new channels on this node; retry in {} ms", .0.0.as_millis())]
    RateLimited(RetryAfter),
    /// At a bound of the store (the embedded store's `max_channels`).
    #[error("{0}")]
    Full(&'static str),
}

/// How long things live in the store.
#[derive(Debug, Clone)]
pub struct Retention {
    /// The most messages a channel keeps.
    pub history_size: usize,
    /// How long a message is kept.
    pub history_ttl: Duration,
    /// How long a session lives without any request or open connection.
    pub session_ttl: Duration,
    /// How long a publish's dedupe record (client message id or idempotency key) is kept.
    pub dedupe_ttl: Duration,
}

/// What a channel keeps: its namespace's history size and age (see `Settings::namespaces`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    pub size: usize,
    pub ttl: Duration,
}

/// Who an operation that may create a channel acts for: a client (its session's IP) is within the node's and its
/// IP's channels per second and `max_channels`; the backend API is trusted and never refused for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creator {
    Backend,
    Client(Option<std::net::IpAddr>),
}

/// One message to append.
#[derive(Debug, Clone, Copy)]
pub struct Append<'a> {
    pub data: &'a RawValue,
    /// Publish time, ms since 1970.
    pub ts: u64,
    /// A key seen within `dedupe_ttl` stores nothing and answers the first append's cursor.
    pub dedupe: Option<&'a str>,
    /// Who published it, when a client did.
    pub from: Option<&'a Sender>,
    pub keep: Keep,
    /// Who would create the channel, were it new.
    pub creator: Creator,
}

/// A read from a channel's log.
#[derive(Debug)]
pub struct History {
    /// Set when history does not reach back to the cursor asked for: where delivery resumes, and why.
    pub gap: Option<(Cursor, GapReason)>,
    /// Messages after the cursor (or after the gap's cursor), oldest first.
    pub messages: Vec<Arc<Message>>,
}

/// Channels' logs: append, read after a cursor, and the newest cursor. Appends also wake live listeners.
pub trait ChannelLog: Send + Sync + 'static {
    /// Appends a message and answers only once it is stored, trimming the log to `message.keep`. With a
    /// `dedupe` key seen within `dedupe_ttl`, stores nothing and answers with the first append's cursor.
    fn append(
        &self,
        channel: &ChannelName,
        message: Append<'_>,
    ) -> impl Future<Output = Result<Cursor, StoreError>> + Send;

    /// Appends several messages in order, each as [`ChannelLog::append`] would, and answers each one's outcome. A
    /// store may send them together (Redis: one pipeline, one round trip for the whole batch).
    fn append_all<'a>(
        &'a self,
        messages: &'a [(ChannelName, Append<'a>)],
    ) -> impl Future<Output = Vec<Result<Cursor, StoreError>>> + Send + 'a {
        append_each(self, messages)
    }

    /// The messages after `after`, at most `limit`, where [`crate::recovery::resume`] says they start.
    fn read(
        &self,
        channel: &ChannelName,
        after: &Cursor,
        limit: usize,
    ) -> impl Future<Output = Result<History, StoreError>> + Send;

    /// The cursor of the newest message (offset 0 when there is none), creating the log's epoch if needed. A log
    /// with no message yet lives only as long as a session (`2 × session_ttl`), refreshed by reads: subscribing
    /// to empty channels creates nothing that outlives its subscribers.
    fn top(&self, channel: &ChannelName, creator: Creator) -> impl Future<Output = Result<Cursor, StoreError>> + Send;
}

/// [`ChannelLog::append_all`] one message at a time: the default, and a store's way when each append needs its own
/// step.
pub(crate) async fn append_each<L: ChannelLog + ?Sized>(
    log: &L,
    messages: &[(ChannelName, Append<'_>)],
) -> Vec<Result<Cursor, StoreError>> {
    let mut outcomes = Vec::with_capacity(messages.len());
    for (channel, message) in messages {
        outcomes.push(log.append(channel, *message).await);
    }
    outcomes
}

/// Sessions: their subscriptions (with the cursor each started from), TTLs, and change notifications.
pub trait Sessions: Send + Sync + 'static {
    fn create_session(
        &self,
        id: &SessionId,
        record: &SessionRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Loads a session and refreshes its TTL; `None` when unknown or expired.
    fn load_session(&self, id: &SessionId) -> impl Future<Output = Result<Option<SessionRecord>, StoreError>> + Send;

    /// Refreshes a session's TTL and its presence entries, and records when (`presence_at`); `false` when it
    /// has expired.
    fn touch_session(
        &self,
        id: &SessionId,
        record: &SessionRecord,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Adds a subscription starting after `cursor`, unless there is one: answers with the cursor in force, and
    /// marks the session present on the channel. `None` when the session has expired.
    fn subscribe(
        &self,
        id: &SessionId,
        pid: &str,
        channel: &ChannelName,
        cursor: &Cursor,
        max: usize,
    ) -> impl Future<Output = Result<Option<Cursor>, StoreError>> + Send;

    fn unsubscribe(
        &self,
        id: &SessionId,
        pid: &str,
        channel: &ChannelName,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces the session's grant (a refreshed token); `false` when the session has expired. Tell the
    /// session's feeds with [`Sessions::notify_session`].
    fn set_grant(&self, id: &SessionId, grant: &Grant) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Tells every node's live feeds of this session that its subscriptions changed.
    fn notify_session(&self, id: &SessionId) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Who is subscribed to a channel now, on every node. Entries are written by [`Sessions::subscribe`] and
/// [`Sessions::touch_session`] and expire with the session.
pub trait Presence: Send + Sync + 'static {
    /// The public ids of the sessions subscribed to `channel` now.
    fn presence(&self, channel: &ChannelName) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
}

/// Whether the store serves now: commands answer, and live delivery (pub/sub) works.
pub trait Health: Send + Sync + 'static {
    fn check(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Everything the gateway needs from a backend.
pub trait Store: ChannelLog + Sessions + Presence + Health {}

impl<T: ChannelLog + Sessions + Presence + Health> Store for T {}
