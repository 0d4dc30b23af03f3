//! The gateway: the session core behind the transports' [`Port`], and the publish API for backends.
//!
//! Every request loads what it needs from the store and keeps nothing afterwards, so with a shared store any
//! node can serve any request of any session.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use stickless_transports::{Attach, Attached, Port, Refusal, Rejection, Transport};

use crate::error::Error;
use crate::feed::{self, Feed, Source};
use crate::hub::{Hub, Topic};
use crate::model::{now_ms, ChannelName, Cursor, Position, SessionId, SessionRecord};
use crate::protocol::{self, AckResult, Downstream, ErrorCode, Limits, Negotiation, TransportOffer, Upstream};
use crate::settings::Settings;
use crate::store::Store;

struct Core<S> {
    source: Arc<Source<S>>,
    settings: Settings,
    node: String,
}

/// The cheap handle the transports and the HTTP API hold.
pub struct Gateway<S>(Arc<Core<S>>);

impl<S> Clone for Gateway<S> {
    fn clone(&self) -> Self {
        Gateway(self.0.clone())
    }
}

impl<S: Store> Gateway<S> {
    pub fn new(store: Arc<S>, hub: Arc<Hub>, settings: Settings, node: String) -> Self {
        let source = Arc::new(Source { store, hub, max_batch: settings.max_batch, session_ttl: settings.session_ttl });
        Gateway(Arc::new(Core { source, settings, node }))
    }

    fn store(&self) -> &S {
        &self.0.source.store
    }

    fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// Publishes for a backend; answers once stored. A repeated `idempotency_key` returns the first cursor.
    pub async fn publish(
        &self,
        channel: &str,
        data: &RawValue,
        idempotency_key: Option<&str>,
    ) -> Result<(ChannelName, Cursor), Error> {
        let channel = ChannelName::parse(channel)?;
        if idempotency_key.is_some_and(|key| key.is_empty() || key.len() > 128) {
            return Err(Error::invalid("`idempotency_key` must be 1..128 chars"));
        }
        let dedupe = idempotency_key.map(|k| format!("k:{k}"));
        let cursor = self.append(&channel, data, dedupe.as_deref()).await?;
        Ok((channel, cursor))
    }

    /// The public ids subscribed to `channel` on every node.
    pub async fn presence(&self, channel: &str) -> Result<(ChannelName, Vec<String>), Error> {
        let channel = ChannelName::parse(channel)?;
        let pids = self.store().presence(&channel).await?;
        Ok((channel, pids))
    }

    async fn append(&self, channel: &ChannelName, data: &RawValue, dedupe: Option<&str>) -> Result<Cursor, Error> {
        let max = self.settings().max_message_bytes;
        if data.get().len() > max {
            return Err(Error::PayloadTooLarge(max));
        }
        Ok(self.store().append(channel, &protocol::compact(data), now_ms(), dedupe).await?)
    }

    async fn load(&self, session: &str) -> Result<(SessionId, SessionRecord), Error> {
        let id = SessionId::parse(session)?;
        let Some(record) = self.store().load_session(&id).await? else {
            return Err(Error::plain(ErrorCode::SessionUnknown));
        };
        // Loading refreshed the session's TTL; presence entries are refreshed now and then, not per request.
        let ttl_ms = self.settings().session_ttl.as_millis() as u64;
        if now_ms().saturating_sub(record.presence_at) > ttl_ms / 3 && !record.subscriptions.is_empty() {
            self.store().touch_session(&id, &record).await?;
        }
        Ok((id, record))
    }

    async fn open(&self, request: Attach) -> Result<Attached<Feed>, Error> {
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
        let mut control = self.0.source.hub.listen(Topic::Session(id.clone()));
        control.ready(feed::READY_WAIT).await;
        let (mut record, created) = match &request.session {
            Some(session) => (self.load(session).await?.1, false),
            None => {
                let record = SessionRecord::new();
                self.store().create_session(&id, &record).await?;
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
            self.store().notify_session(&id).await?;
        }
        let welcome = Downstream::Welcome {
            heartbeat_ms: self.settings().heartbeat.as_millis() as u64,
            node: &self.0.node,
            pid: &record.pid,
            session: id.as_str(),
            transport: request.transport,
        }
        .encode();
        let start = feed::start_position(&record, &position);
        Ok(Attached {
            session: id.as_str().to_owned(),
            created,
            welcome,
            position: start.to_string(),
            feed: feed::open(self.0.source.clone(), id, record, start, request.track_position, control),
        })
    }

    async fn subscribe(
        &self,
        id: &SessionId,
        record: &SessionRecord,
        channel: &ChannelName,
        since: Option<Cursor>,
    ) -> Result<Cursor, Error> {
        let max = self.settings().max_subscriptions;
        // Refused before `top`, which creates the channel's log, so a client over its cap creates nothing.
        if !record.subscriptions.contains_key(channel) && record.subscriptions.len() >= max {
            return Err(crate::store::StoreError::TooManySubscriptions(max).into());
        }
        let start = match since {
            Some(cursor) => cursor,
            None => self.store().top(channel).await?,
        };
        self.store()
            .subscribe(id, &record.pid, channel, &start, max)
            .await?
            .ok_or(Error::plain(ErrorCode::SessionUnknown))
    }

    /// Applies one upstream frame; answers with its `ack` or `error` frame.
    async fn apply(&self, id: &SessionId, record: &SessionRecord, frame: Upstream) -> Bytes {
        match self.command(id, record, &frame).await {
            Ok(ack) => ack,
            Err(err) => err.frame(Some(frame.id())),
        }
    }

    async fn command(&self, id: &SessionId, record: &SessionRecord, frame: &Upstream) -> Result<Bytes, Error> {
        let ack = |result| Downstream::Ack { id: frame.id(), result }.encode();
        Ok(match frame {
            Upstream::Subscribe { channel, since, .. } => {
                let cursor = self.subscribe(id, record, channel, since.clone()).await?;
                self.store().notify_session(id).await?;
                ack(AckResult::cursor(channel, &cursor))
            }
            Upstream::Unsubscribe { channel, .. } => {
                self.store().unsubscribe(id, &record.pid, channel).await?;
                self.store().notify_session(id).await?;
                ack(AckResult::Channel { channel })
            }
            Upstream::Publish { channel, data, id: frame_id } => {
                // Scoped to the session, so one client's ids never collide with another's.
                let dedupe = format!("c:{}:{frame_id}", id.as_str());
                let cursor = self.append(channel, data, Some(&dedupe)).await?;
                ack(AckResult::cursor(channel, &cursor))
            }
            Upstream::Presence { channel, .. } => {
                if !self.settings().client_presence {
                    return Err(Error::with(ErrorCode::Forbidden, "client presence is turned off on this server"));
                }
                let pids = self.store().presence(channel).await?;
                ack(AckResult::Presence { channel, pids: &pids })
            }
            Upstream::Ping { .. } => ack(AckResult::Empty {}),
        })
    }

    async fn send_frames(&self, session: &str, body: &[u8]) -> Result<Bytes, Error> {
        let value: Box<RawValue> = serde_json::from_slice(body)
            .map_err(|e| Error::Protocol(protocol::ProtocolError::MalformedJson(e.to_string())))?;
        let frames: Vec<&RawValue> = if value.get().trim_start().starts_with('[') {
            serde_json::from_str(value.get()).map_err(|e| Error::invalid(e.to_string()))?
        } else {
            vec![&value]
        };
        let max = self.settings().max_frames_per_send;
        if frames.len() > max {
            return Err(Error::TooManyFrames(max));
        }
        let (id, record) = self.load(session).await?;
        let mut replies = Vec::with_capacity(frames.len());
        for raw in frames {
            replies.push(match Upstream::parse_value(raw) {
                Ok(upstream) => self.apply(&id, &record, upstream).await,
                Err(refused) => Error::from(refused.error).frame(refused.id.as_deref()),
            });
        }
        Ok(protocol::array(&replies))
    }
}

impl<S: Store> Port for Gateway<S> {
    type Feed = Feed;

    fn node(&self) -> &str {
        &self.0.node
    }

    fn negotiate(&self, enabled: &[Transport], poll_timeout: Duration) -> Bytes {
        let s = self.settings();
        Negotiation {
            version: 1,
            node: &self.0.node,
            transports: enabled.iter().map(|t| TransportOffer { name: t.name(), path: t.path() }).collect(),
            heartbeat_ms: s.heartbeat.as_millis() as u64,
            poll_timeout_ms: poll_timeout.as_millis() as u64,
            session_ttl_ms: s.session_ttl.as_millis() as u64,
            limits: Limits {
                max_message_bytes: s.max_message_bytes,
                max_subscriptions: s.max_subscriptions,
                max_frames_per_send: s.max_frames_per_send,
                max_batch: s.max_batch,
            },
        }
        .encode()
    }

    async fn attach(&self, request: Attach) -> Result<Attached<Feed>, Rejection> {
        self.open(request).await.map_err(Rejection::from)
    }

    async fn upstream(&self, session: &str, bytes: &[u8]) -> Bytes {
        let upstream = match Upstream::parse(bytes) {
            Ok(upstream) => upstream,
            Err(refused) => return Error::from(refused.error).frame(refused.id.as_deref()),
        };
        match self.load(session).await {
            Ok((id, record)) => self.apply(&id, &record, upstream).await,
            Err(err) => err.frame(Some(upstream.id())),
        }
    }

    async fn send(&self, session: &str, body: &[u8]) -> Result<Bytes, Rejection> {
        self.send_frames(session, body).await.map_err(Rejection::from)
    }

    fn poll_response(&self, session: &str, position: &str, frames: &[Bytes]) -> Bytes {
        protocol::poll_response(&self.0.node, session, position, frames)
    }

    fn heartbeat(&self) -> Bytes {
        Downstream::Heartbeat.encode()
    }

    fn refuse(&self, refusal: Refusal) -> Rejection {
        Error::from(refusal).rejection()
    }
}
