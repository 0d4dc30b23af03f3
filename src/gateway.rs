//! The gateway: the session core behind the transports' [`Port`], and the publish API for backends.
//!
//! Every request loads what it needs from the store and keeps nothing afterwards, so with a shared store any
//! node can serve any request of any session.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde_json::value::RawValue;
use stickless_transports::{Attach, Attached, Port, Rejection};

use crate::channel::{ChannelName, Cursor};
use crate::error::CoreError;
use crate::feed::{self, Feed};
use crate::frame::{self, Command, Upstream};
use crate::hub::{Hub, Topic};
use crate::position::Position;
use crate::session::{SessionId, SessionRecord};
use crate::store::{now_ms, Store};

/// What the core enforces and announces.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This node's name, shown to clients.
    pub node: String,
    pub heartbeat: Duration,
    pub session_ttl: Duration,
    pub max_message_bytes: usize,
    pub max_subscriptions: usize,
    pub max_frames_per_send: usize,
    /// The most messages one history read (and so one poll) returns.
    pub max_batch: usize,
    /// Whether clients may list a channel's subscribers (`presence` frames).
    pub client_presence: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            node: "n1".into(),
            heartbeat: Duration::from_secs(15),
            session_ttl: Duration::from_secs(60),
            max_message_bytes: 64 * 1024,
            max_subscriptions: 64,
            max_frames_per_send: 100,
            max_batch: 100,
            client_presence: true,
        }
    }
}

/// The state every request shares: the store, this node's hub and the configuration.
pub struct Core<S> {
    pub store: Arc<S>,
    pub hub: Arc<Hub>,
    pub config: CoreConfig,
}

/// The cheap handle the transports and the HTTP API hold.
pub struct Gateway<S>(Arc<Core<S>>);

impl<S> Clone for Gateway<S> {
    fn clone(&self) -> Self {
        Gateway(self.0.clone())
    }
}

#[derive(Serialize)]
struct Stored<'a> {
    channel: &'a ChannelName,
    #[serde(flatten)]
    cursor: Cursor,
}

impl<S: Store> Gateway<S> {
    pub fn new(store: Arc<S>, hub: Arc<Hub>, config: CoreConfig) -> Self {
        Gateway(Arc::new(Core { store, hub, config }))
    }

    pub fn store(&self) -> &Arc<S> {
        &self.0.store
    }

    /// Publishes for a backend; answers once stored. A repeated `idempotency_key` returns the first result.
    pub async fn publish(
        &self,
        channel: &str,
        data: &RawValue,
        idempotency_key: Option<&str>,
    ) -> Result<serde_json::Value, CoreError> {
        let channel = ChannelName::parse(channel)?;
        if let Some(key) = idempotency_key {
            if key.is_empty() || key.len() > 128 {
                return Err(CoreError::InvalidFrame("`idempotency_key` must be 1..128 chars".into()));
            }
        }
        let dedupe = idempotency_key.map(|k| format!("k:{k}"));
        let cursor = self.append(&channel, data, dedupe.as_deref()).await?;
        Ok(serde_json::to_value(Stored { channel: &channel, cursor }).unwrap_or_default())
    }

    /// The public ids subscribed to `channel` on every node.
    pub async fn presence(&self, channel: &str) -> Result<Vec<String>, CoreError> {
        let channel = ChannelName::parse(channel)?;
        Ok(self.0.store.presence(&channel).await?)
    }

    async fn append(&self, channel: &ChannelName, data: &RawValue, dedupe: Option<&str>) -> Result<Cursor, CoreError> {
        if data.get().len() > self.0.config.max_message_bytes {
            return Err(CoreError::PayloadTooLarge(self.0.config.max_message_bytes));
        }
        Ok(self.0.store.append(channel, &frame::compact(data), now_ms(), dedupe).await?)
    }

    async fn load(&self, session: &str) -> Result<(SessionId, SessionRecord), CoreError> {
        let id = SessionId::parse(session)?;
        let Some(record) = self.0.store.load_session(&id).await? else {
            return Err(CoreError::SessionUnknown);
        };
        // Loading refreshed the session's TTL; presence entries are refreshed now and then, not per request.
        let ttl_ms = self.0.config.session_ttl.as_millis() as u64;
        if now_ms().saturating_sub(record.presence_at) > ttl_ms / 3 && !record.subscriptions.is_empty() {
            self.0.store.touch_session(&id, &record).await?;
        }
        Ok((id, record))
    }

    async fn open(&self, request: Attach) -> Result<Attached<Feed>, CoreError> {
        let position = match &request.position {
            Some(text) => Position::parse(text)?,
            None => Position::default(),
        };
        let channels = match &request.channels {
            Some(list) => {
                list.split(',').filter(|c| !c.is_empty()).map(ChannelName::parse).collect::<Result<Vec<_>, _>>()?
            }
            None => Vec::new(),
        };
        let id = match &request.session {
            Some(session) => SessionId::parse(session)?,
            None => SessionId::random(),
        };
        // Listen to the session's control topic before reading the session: a change made after the read (a
        // subscribe sent right after `welcome`, on this or another node) then reaches the feed.
        let mut control = self.0.hub.listen(Topic::Session(id.clone()));
        control.ready(feed::READY_WAIT).await;
        let (mut record, created) = match &request.session {
            Some(session) => (self.load(session).await?.1, false),
            None => {
                let record = SessionRecord::new();
                self.0.store.create_session(&id, &record).await?;
                (record, true)
            }
        };
        let mut changed = false;
        for channel in channels {
            if record.subscriptions.contains_key(&channel) {
                continue;
            }
            let since = position.get(&channel).cloned();
            let cursor = self.subscribe(&id, &record, &channel, since).await?;
            record.subscriptions.insert(channel, cursor);
            changed = true;
        }
        if changed && !created {
            self.0.store.notify_session(&id).await?;
        }
        let welcome = frame::encode(&serde_json::json!({
            "type": "welcome",
            "session": id.as_str(),
            "pid": record.pid,
            "node": self.0.config.node,
            "transport": request.transport,
            "heartbeat_ms": self.0.config.heartbeat.as_millis() as u64,
        }));
        let start = feed::start_position(&record, &position);
        Ok(Attached {
            session: id.as_str().to_owned(),
            created,
            welcome,
            position: start.to_string(),
            feed: feed::open(self.0.clone(), id, record, start, request.track_position, control),
        })
    }

    async fn subscribe(
        &self,
        id: &SessionId,
        record: &SessionRecord,
        channel: &ChannelName,
        since: Option<Cursor>,
    ) -> Result<Cursor, CoreError> {
        let max = self.0.config.max_subscriptions;
        // Refused before `top`, which creates the channel's log, so a client over its cap creates nothing.
        if !record.subscriptions.contains_key(channel) && record.subscriptions.len() >= max {
            return Err(CoreError::TooManySubscriptions(max));
        }
        let start = match since {
            Some(cursor) => cursor,
            None => self.0.store.top(channel).await?,
        };
        self.0.store.subscribe(id, &record.pid, channel, &start, max).await?.ok_or(CoreError::SessionUnknown)
    }

    /// Applies one upstream frame; answers with its `ack` or `error` frame.
    async fn apply(&self, id: &SessionId, record: &SessionRecord, frame: Upstream) -> Bytes {
        match self.command(id, record, &frame).await {
            Ok(result) => frame::ack(&frame.id, result),
            Err(err) => frame::error(Some(&frame.id), &err),
        }
    }

    async fn command(
        &self,
        id: &SessionId,
        record: &SessionRecord,
        frame: &Upstream,
    ) -> Result<serde_json::Value, CoreError> {
        Ok(match &frame.command {
            Command::Subscribe { channel, since } => {
                let cursor = self.subscribe(id, record, channel, since.clone()).await?;
                self.0.store.notify_session(id).await?;
                serde_json::to_value(Stored { channel, cursor }).unwrap_or_default()
            }
            Command::Unsubscribe { channel } => {
                self.0.store.unsubscribe(id, &record.pid, channel).await?;
                self.0.store.notify_session(id).await?;
                serde_json::json!({ "channel": channel })
            }
            Command::Publish { channel, data } => {
                // Scoped to the session, so one client's ids never collide with another's.
                let dedupe = format!("c:{}:{}", id.as_str(), frame.id);
                let cursor = self.append(channel, data, Some(&dedupe)).await?;
                serde_json::to_value(Stored { channel, cursor }).unwrap_or_default()
            }
            Command::Presence { channel } => {
                if !self.0.config.client_presence {
                    return Err(CoreError::Forbidden("client presence is turned off on this server"));
                }
                serde_json::json!({ "channel": channel, "pids": self.0.store.presence(channel).await? })
            }
            Command::Ping => serde_json::json!({}),
        })
    }
}

impl<S: Store> Port for Gateway<S> {
    type Feed = Feed;

    fn node(&self) -> &str {
        &self.0.config.node
    }

    fn describe(&self) -> serde_json::Map<String, serde_json::Value> {
        let c = &self.0.config;
        let value = serde_json::json!({
            "session_ttl_ms": c.session_ttl.as_millis() as u64,
            "limits": {
                "max_message_bytes": c.max_message_bytes,
                "max_subscriptions": c.max_subscriptions,
                "max_frames_per_send": c.max_frames_per_send,
                "max_batch": c.max_batch,
            },
        });
        match value {
            serde_json::Value::Object(map) => map,
            _ => Default::default(),
        }
    }

    async fn attach(&self, request: Attach) -> Result<Attached<Feed>, Rejection> {
        self.open(request).await.map_err(Rejection::from)
    }

    async fn upstream(&self, session: &str, bytes: &[u8]) -> Bytes {
        let upstream = match frame::parse(bytes) {
            Ok(upstream) => upstream,
            Err((id, err)) => return frame::error(id.as_deref(), &err),
        };
        match self.load(session).await {
            Ok((id, record)) => self.apply(&id, &record, upstream).await,
            Err(err) => frame::error(Some(&upstream.id), &err),
        }
    }

    async fn send(&self, session: &str, body: &[u8]) -> Result<Bytes, Rejection> {
        let value: Box<RawValue> = serde_json::from_slice(body).map_err(|e| CoreError::MalformedJson(e.to_string()))?;
        let frames: Vec<&RawValue> = if value.get().trim_start().starts_with('[') {
            serde_json::from_str(value.get()).map_err(|e| CoreError::InvalidFrame(e.to_string()))?
        } else {
            vec![&value]
        };
        if frames.len() > self.0.config.max_frames_per_send {
            return Err(CoreError::TooManyFrames(self.0.config.max_frames_per_send).into());
        }
        let (id, record) = self.load(session).await?;
        let mut out = BytesMut::new();
        out.put_u8(b'[');
        for (i, raw) in frames.into_iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            let reply = match frame::parse_value(raw) {
                Ok(upstream) => self.apply(&id, &record, upstream).await,
                Err((frame_id, err)) => frame::error(frame_id.as_deref(), &err),
            };
            out.put_slice(&reply);
        }
        out.put_u8(b']');
        Ok(out.freeze())
    }
}
