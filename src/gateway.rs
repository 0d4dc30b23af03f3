//! The gateway: the session core behind the transports' [`Port`], and the publish API for backends.
//!
//! Every request loads what it needs from the store and keeps nothing afterwards, so with a shared store any
//! node can serve any request of any session.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use stickless_transports::{Attach, Attached, Port, Refusal, Rejection, Transport};

use std::collections::BTreeMap;

use stickless_transports::Client;

use crate::auth::hooks::{self, Caller, ConnectRequest, HookUnavailable, Hooks};
use crate::auth::token::{TokenError, Verifier};
use crate::auth::{Action, Decision};
use crate::error::Error;
use crate::feed::{self, Feed, Source};
use crate::hub::{Hub, Topic};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::model::{now_ms, now_secs, ChannelName, Cursor, Grant, Position, Sender, SessionId, SessionRecord};
use crate::protocol::{self, AckResult, Downstream, ErrorCode, Negotiation, TransportOffer, Upstream};
use crate::settings::Settings;
use crate::store::{Append, Creator, Store};

struct Core<S> {
    source: Arc<Source<S>>,
    settings: Settings,
    node: String,
    verifier: Option<Verifier>,
    hooks: Option<Hooks>,
    limits: Limits,
    metrics: Metrics,
}

/// The cheap handle the transports and the HTTP API hold.
pub struct Gateway<S>(Arc<Core<S>>);

impl<S> Clone for Gateway<S> {
    fn clone(&self) -> Self {
        Gateway(self.0.clone())
    }
}

impl<S: Store> Gateway<S> {
    /// The gateway for `settings`, within the node's `limits` (shared with its store); fails when a token key
    /// cannot be loaded.
    pub fn new(
        store: Arc<S>,
        hub: Arc<Hub>,
        settings: Settings,
        node: String,
        limits: Limits,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let source = Arc::new(Source { store, hub, max_batch: settings.max_batch, session_ttl: settings.session_ttl });
        let verifier = Verifier::load(&settings.token)?;
        let hooks = Hooks::new(&settings.hooks)?;
        if hooks.is_none() && settings.namespaces.ask_the_hook() {
            return Err("a namespace says `hook`, but no hook URL is set (--hook-url)".into());
        }
        let forwards_cookies = settings.hooks.forward_headers.iter().any(|h| h.eq_ignore_ascii_case("cookie"));
        if settings.hooks.connect && forwards_cookies && settings.allowed_origins.is_empty() {
            // Otherwise any site's page could open a WebSocket with its visitor's cookies and act as them.
            return Err("the connect hook authenticates by cookie: set --allowed-origins to your pages' origins".into());
        }
        Ok(Gateway(Arc::new(Core { source, settings, node, verifier, hooks, limits, metrics })))
    }

    /// `/readyz`: whether this node can serve now (the store answers and live delivery works).
    pub async fn ready(&self) -> Result<(), Error> {
        let checked = self.store().check().await.map_err(Error::from);
        self.0.metrics.set_ready(checked.is_ok());
        checked
    }

    /// `/metrics`, in Prometheus text.
    pub fn metrics(&self, draining: bool) -> String {
        self.0.metrics.set_draining(draining);
        self.0.metrics.encode()
    }

    /// Why this node should take no new clients now, by load: its live connections or TCP connections over
    /// `ready_max_load` of their caps.
    pub fn overloaded(&self) -> Option<String> {
        let (max, limit) = (self.settings().max_connections, self.settings().ready_max_load);
        let load = self.0.metrics.load(max);
        (load >= limit)
            .then(|| format!("over load: {:.0}% of the connection caps (ready_max_load {limit})", load * 100.0))
    }

    /// A delay drawn uniformly over the drain window, so a draining node's clients come back spread out.
    fn drain_delay(&self) -> Duration {
        let window = self.settings().drain_window.as_millis() as u64;
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        Duration::from_millis(u64::from_le_bytes(bytes) % window.max(1))
    }

    /// Counts a refusal on its way to the client; a server-side failure is also logged (bounded) with the
    /// session it hit.
    pub(crate) fn refused(&self, session: Option<&str>, err: Error) -> Error {
        let code = err.code();
        self.0.metrics.refused(code.as_str());
        if matches!(code, ErrorCode::StoreUnavailable | ErrorCode::HookUnavailable | ErrorCode::Internal) {
            self.0.metrics.failure(code.as_str(), session, &err.message());
        }
        err
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
        let dedupe = idempotency_dedupe(idempotency_key)?;
        let cursor = self.append(&channel, data, dedupe.as_deref(), None, Creator::Backend).await?;
        Ok((channel, cursor))
    }

    /// Publishes a backend's batch in order; answers each message's outcome. The valid ones go to the store
    /// together (on Redis one pipeline: one round trip for the batch, not one per message).
    pub async fn publish_all(
        &self,
        batch: &[(&str, &RawValue, Option<&str>)],
    ) -> Vec<Result<(ChannelName, Cursor), Error>> {
        struct Checked<'a> {
            channel: ChannelName,
            data: std::borrow::Cow<'a, RawValue>,
            dedupe: Option<String>,
        }
        let checked: Vec<Result<Checked, Error>> = batch
            .iter()
            .map(|&(channel, data, key)| {
                let channel = ChannelName::parse(channel)?;
                let dedupe = idempotency_dedupe(key)?;
                let data = self.checked_data(&channel, data)?;
                Ok(Checked { channel, data, dedupe })
            })
            .collect();
        let ts = now_ms();
        let appends: Vec<(ChannelName, Append)> = checked
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .map(|c| {
                let keep = self.settings().keep(&c.channel);
                let append = Append {
                    data: &c.data,
                    ts,
                    dedupe: c.dedupe.as_deref(),
                    from: None,
                    keep,
                    creator: Creator::Backend,
                };
                (c.channel.clone(), append)
            })
            .collect();
        let mut stored = self.store().append_all(&appends).await.into_iter();
        checked
            .into_iter()
            .map(|c| {
                let c = c?;
                let cursor =
                    stored.next().unwrap_or_else(|| Err(crate::store::StoreError::Unavailable("no outcome".into())))?;
                self.0.metrics.published(false);
                Ok((c.channel, cursor))
            })
            .collect()
    }

    /// The public ids subscribed to `channel` on every node.
    pub async fn presence(&self, channel: &str) -> Result<(ChannelName, Vec<String>), Error> {
        let channel = ChannelName::parse(channel)?;
        let pids = self.store().presence(&channel).await?;
        Ok((channel, pids))
    }

    async fn append(
        &self,
        channel: &ChannelName,
        data: &RawValue,
        dedupe: Option<&str>,
        from: Option<&Sender>,
        creator: Creator,
    ) -> Result<Cursor, Error> {
        let data = self.checked_data(channel, data)?;
        let keep = self.settings().keep(channel);
        let cursor =
            self.store().append(channel, Append { data: &data, ts: now_ms(), dedupe, from, keep, creator }).await?;
        self.0.metrics.published(from.is_some());
        Ok(cursor)
    }

    /// Message data as stored: within the channel's size and depth limits, compacted.
    fn checked_data<'a>(
        &self,
        channel: &ChannelName,
        data: &'a RawValue,
    ) -> Result<std::borrow::Cow<'a, RawValue>, Error> {
        let max = self.settings().max_message_bytes(channel);
        if data.get().len() > max {
            return Err(Error::PayloadTooLarge(max));
        }
        // Subscribers must be able to parse what they are sent: serde_json, for one, stops at 128 levels.
        let deepest = self.settings().max_data_depth;
        if protocol::json_depth(data) > deepest {
            return Err(Error::invalid(format!("data nests deeper than max_data_depth ({deepest}) levels")));
        }
        Ok(protocol::compact(data))
    }

    /// The grant `token` gives, when this server accepts tokens.
    fn verify(&self, token: &str) -> Result<Grant, Error> {
        let verifier =
            self.0.verifier.as_ref().ok_or_else(|| {
                TokenError::Invalid("this server accepts no tokens (no token key is configured)".into())
            })?;
        Ok(verifier.verify(token)?)
    }

    /// What a new session may do: its token's grant, or the connect hook's answer, or nothing (anonymous).
    async fn connect(
        &self,
        client: &Client,
        transport: &str,
        ip: Option<std::net::IpAddr>,
    ) -> Result<Option<Grant>, Error> {
        if let Some(token) = &client.token {
            return Ok(Some(self.verify(token)?));
        }
        let Some(hooks) = self.0.hooks.as_ref().filter(|h| h.asks_on_connect()) else {
            return Ok(None);
        };
        let headers: BTreeMap<String, String> = client.headers.iter().cloned().collect();
        match hooks.connect(ConnectRequest { ip, transport, headers: &headers }).await? {
            hooks::Connect::Allow(grant) => Ok(Some(grant)),
            hooks::Connect::Deny(reason) => Err(Error::with(ErrorCode::Forbidden, reason)),
        }
    }

    /// Whether the session may do `action` on `channel`, by its namespace's rules, its grant, or the hook.
    async fn authorize(&self, action: Action, channel: &ChannelName, record: &SessionRecord) -> Result<(), Error> {
        match self.settings().namespaces.decide(action, channel, record.grant.as_ref()) {
            Decision::Allow => Ok(()),
            Decision::Deny => Err(forbidden(action, channel)),
            Decision::AskHook => {
                let hooks = self.hooks()?;
                let caller = caller(record);
                let answer = match action {
                    Action::Subscribe => hooks.subscribe(caller, channel).await?,
                    // Presence and publish never ask here: presence has no hook, publish asks with its data.
                    Action::Presence | Action::Publish => return Err(forbidden(action, channel)),
                };
                match answer {
                    hooks::Subscribe::Allow => Ok(()),
                    hooks::Subscribe::Deny(reason) => Err(Error::with(ErrorCode::Forbidden, reason)),
                }
            }
        }
    }

    fn hooks(&self) -> Result<&Hooks, Error> {
        self.0
            .hooks
            .as_ref()
            .ok_or_else(|| HookUnavailable("a namespace asks the hook, but no hook URL is set".into()).into())
    }

    async fn load(&self, id: &SessionId) -> Result<SessionRecord, Error> {
        let Some(mut record) = self.store().load_session(id).await? else {
            return Err(Error::plain(ErrorCode::SessionUnknown));
        };
        // Loading refreshed the session's TTL; presence entries are refreshed now and then, not per request.
        if self.presence_due(&record) {
            self.store().touch_session(id, &record).await?;
            record.presence_at = now_ms();
        }
        Ok(record)
    }

    /// Whether `record`'s presence entries are due for a refresh (every third of the session TTL).
    fn presence_due(&self, record: &SessionRecord) -> bool {
        let ttl_ms = self.settings().session_ttl.as_millis() as u64;
        now_ms().saturating_sub(record.presence_at) > ttl_ms / 3 && !record.subscriptions.is_empty()
    }

    /// The session a connection attaches to. A long-poll's comes from what this node kept of it when its control
    /// topic was live since and said nothing (`Settings::session_cache`): the session's polls here read no
    /// session from the store. A change the topic has not told yet reaches `control`, listening already, and the
    /// feed reloads.
    async fn load_attaching(&self, id: &SessionId, transport: &str) -> Result<SessionRecord, Error> {
        let hub = &self.0.source.hub;
        if transport != Transport::LongPolling.name() {
            return self.load(id).await;
        }
        if let Some(record) = hub.kept_session(id).filter(|r| !self.presence_due(r)) {
            return Ok(record);
        }
        let mark = hub.session_mark(id);
        let record = self.load(id).await?;
        if let Some(mark) = mark {
            hub.keep_session(id, &record, mark);
        }
        Ok(record)
    }

    /// Tells every node that session `id` changed (this one first, which may keep the session's record).
    async fn changed(&self, id: &SessionId) -> Result<(), Error> {
        self.0.source.hub.forget_session(id);
        Ok(self.store().notify_session(id).await?)
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
        let forwarded_for =
            request.client.headers.iter().find(|(name, _)| name == "x-forwarded-for").map(|(_, v)| v.as_str());
        let ip = self.0.limits.client_ip(request.client.peer, forwarded_for);
        let id = match &request.session {
            Some(session) => SessionId::parse(session)?,
            // Refused before anything is done for it (listening below is a Redis SUBSCRIBE), so a flood is cheap.
            None => self.0.limits.new_session(ip).map(|()| SessionId::random()).map_err(Error::RateLimited)?,
        };
        // Listen to the session's control topic before reading the session: a change made after the read (a
        // subscribe sent right after `welcome`, on this or another node) then reaches the feed.
        let mut control = self.0.source.hub.listen(Topic::Session(id.clone()));
        control.ready(feed::READY_WAIT).await;
        let (mut record, created) = match &request.session {
            Some(_) => {
                let mut record = self.load_attaching(&id, request.transport).await?;
                if let Some(token) = &request.client.token {
                    // A client reconnecting with a fresh token: the same user's session takes it (once: a client
                    // that sends its token with every poll costs no write when it is the one the session holds).
                    let grant = self.verify(token)?;
                    if record.grant.as_ref() != Some(&grant) {
                        self.replace_grant(&id, &record, &grant).await?;
                        record.grant = Some(grant);
                    }
                }
                live_grant(&record)?;
                (record, false)
            }
            None => {
                let mut record = SessionRecord::new();
                record.grant = self.connect(&request.client, request.transport, ip).await?;
                record.ip = ip;
                self.store().create_session(&id, &record).await?;
                self.0.metrics.session_created();
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
            self.changed(&id).await?;
        }
        let connection = self.0.metrics.connection(request.transport);
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
            feed: feed::open(self.0.source.clone(), id, record, start, request.track_position, control, connection),
        })
    }

    async fn subscribe(
        &self,
        id: &SessionId,
        record: &SessionRecord,
        channel: &ChannelName,
        since: Option<Cursor>,
    ) -> Result<Cursor, Error> {
        self.authorize(Action::Subscribe, channel, record).await?;
        let max = self.settings().max_subscriptions;
        // Refused before `top`, which creates the channel's log, so a client over its cap creates nothing.
        if !record.subscriptions.contains_key(channel) && record.subscriptions.len() >= max {
            return Err(crate::store::StoreError::TooManySubscriptions(max).into());
        }
        let start = match since {
            Some(cursor) => cursor,
            None => self.store().top(channel, Creator::Client(record.ip)).await?,
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
            Err(err) => self.refused(Some(id.as_str()), err).frame(Some(frame.id())),
        }
    }

    async fn command(&self, id: &SessionId, record: &SessionRecord, frame: &Upstream) -> Result<Bytes, Error> {
        let ack = |result| Downstream::Ack { id: frame.id(), result }.encode();
        if let Upstream::Refresh { token, .. } = frame {
            let grant = self.verify(token)?;
            self.replace_grant(id, record, &grant).await?;
            return Ok(ack(AckResult::Refreshed { exp: grant.exp }));
        }
        live_grant(record)?;
        Ok(match frame {
            Upstream::Subscribe { channel, since, .. } => {
                let cursor = self.subscribe(id, record, channel, since.clone()).await?;
                self.changed(id).await?;
                ack(AckResult::cursor(channel, &cursor))
            }
            Upstream::Unsubscribe { channel, .. } => {
                self.store().unsubscribe(id, &record.pid, channel).await?;
                self.changed(id).await?;
                ack(AckResult::Channel { channel })
            }
            Upstream::Publish { channel, data, id: frame_id } => {
                let replaced = self.authorize_publish(channel, record, data).await?;
                let data = replaced.as_deref().unwrap_or(data);
                let sender = Sender { sub: record.grant.as_ref().map(|g| g.sub.clone()), pid: record.pid.clone() };
                // Scoped to the session, so one client's ids never collide with another's.
                let dedupe = format!("c:{}:{frame_id}", id.as_str());
                let creator = Creator::Client(record.ip);
                let cursor = self.append(channel, data, Some(&dedupe), Some(&sender), creator).await?;
                ack(AckResult::cursor(channel, &cursor))
            }
            Upstream::Presence { channel, .. } => {
                if !self.settings().client_presence {
                    return Err(Error::with(ErrorCode::Forbidden, "client presence is turned off on this server"));
                }
                self.authorize(Action::Presence, channel, record).await?;
                let pids = self.store().presence(channel).await?;
                ack(AckResult::Presence { channel, pids: &pids })
            }
            Upstream::Ping { .. } => ack(AckResult::Empty {}),
            Upstream::Refresh { .. } => unreachable!("answered above"),
        })
    }

    /// Whether the session may publish `data` to `channel`; `Some` when the hook replaced the data.
    async fn authorize_publish(
        &self,
        channel: &ChannelName,
        record: &SessionRecord,
        data: &RawValue,
    ) -> Result<Option<Box<RawValue>>, Error> {
        match self.settings().namespaces.decide(Action::Publish, channel, record.grant.as_ref()) {
            Decision::Allow => Ok(None),
            Decision::Deny => Err(forbidden(Action::Publish, channel)),
            Decision::AskHook => match self.hooks()?.publish(caller(record), channel, data).await? {
                hooks::Publish::Allow => Ok(None),
                hooks::Publish::Replace(data) => Ok(Some(data)),
                hooks::Publish::Deny(reason) => Err(Error::with(ErrorCode::Forbidden, reason)),
            },
        }
    }

    /// Takes a refreshed grant for the session's own user, and tells the session's feeds on every node.
    async fn replace_grant(&self, id: &SessionId, record: &SessionRecord, grant: &Grant) -> Result<(), Error> {
        match &record.grant {
            Some(current) if current.sub == grant.sub => {}
            Some(_) => return Err(Error::with(ErrorCode::Forbidden, "the new token is for another user")),
            None => return Err(Error::with(ErrorCode::Forbidden, "an anonymous session cannot take a token")),
        }
        if !self.store().set_grant(id, grant).await? {
            return Err(Error::plain(ErrorCode::SessionUnknown));
        }
        // The new claims are all the session may read now: subscriptions they no longer allow end here, and the
        // notification makes every feed of the session (on any node) drop them.
        for channel in record.subscriptions.keys() {
            if self.settings().namespaces.decide(Action::Subscribe, channel, Some(grant)) == Decision::Deny {
                self.store().unsubscribe(id, &record.pid, channel).await?;
            }
        }
        self.changed(id).await?;
        Ok(())
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
        // Limited before the session is loaded, so a refused flood costs the store nothing.
        let id = SessionId::parse(session)?;
        self.0.limits.upstream(&id, frames.len() as u32, body.len()).map_err(Error::RateLimited)?;
        let record = self.load(&id).await?;
        let mut replies = Vec::with_capacity(frames.len());
        for raw in frames {
            replies.push(match Upstream::parse_value(raw) {
                Ok(upstream) => self.apply(&id, &record, upstream).await,
                Err(refused) => self.refused(Some(session), Error::from(refused.error)).frame(refused.id.as_deref()),
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
            limits: protocol::Limits {
                max_message_bytes: s.max_message_bytes,
                max_subscriptions: s.max_subscriptions,
                max_frames_per_send: s.max_frames_per_send,
                max_batch: s.max_batch,
            },
        }
        .encode()
    }

    async fn attach(&self, request: Attach) -> Result<Attached<Feed>, Rejection> {
        let session = request.session.clone();
        self.open(request).await.map_err(|err| self.refused(session.as_deref(), err).rejection())
    }

    async fn upstream(&self, session: &str, bytes: &[u8]) -> Bytes {
        // Counted before anything else, malformed frames included, so a refused flood costs nothing more.
        let id = SessionId::parse(session).map_err(Error::from);
        let limited = id.as_ref().map(|id| self.0.limits.upstream(id, 1, bytes.len()));
        let upstream = match Upstream::parse(bytes) {
            Ok(upstream) => upstream,
            Err(refused) => {
                return self.refused(Some(session), Error::from(refused.error)).frame(refused.id.as_deref())
            }
        };
        if let Ok(Err(wait)) = limited {
            return self.refused(Some(session), Error::RateLimited(wait)).frame(Some(upstream.id()));
        }
        let loaded = match id {
            Ok(id) => self.load(&id).await.map(|record| (id, record)),
            Err(err) => Err(err),
        };
        match loaded {
            Ok((id, record)) => self.apply(&id, &record, upstream).await,
            Err(err) => self.refused(Some(session), err).frame(Some(upstream.id())),
        }
    }

    async fn send(&self, session: &str, body: &[u8]) -> Result<Bytes, Rejection> {
        self.send_frames(session, body).await.map_err(|err| self.refused(Some(session), err).rejection())
    }

    fn poll_response(&self, session: &str, position: &str, frames: &[Bytes]) -> Bytes {
        protocol::poll_response(&self.0.node, session, position, frames)
    }

    fn heartbeat(&self) -> Bytes {
        Downstream::Heartbeat.encode()
    }

    fn refuse(&self, refusal: Refusal) -> Rejection {
        let err = match refusal {
            Refusal::Draining => Error::Draining(self.drain_delay()),
            other => Error::from(other),
        };
        self.refused(None, err).rejection()
    }

    fn poll_answered(&self, waited: Duration, frames: usize) {
        self.0.metrics.poll_answered(waited, frames);
    }

    fn slow_consumer_cut(&self) {
        self.0.metrics.slow_consumer_cut();
    }

    fn reconnect(&self) -> (Bytes, Duration) {
        let after = self.drain_delay();
        (Downstream::Reconnect { after_ms: after.as_millis() as u64 }.encode(), after)
    }
}

/// A backend's idempotency key as the store's dedupe key (`k:<key>`), when it is 1..128 chars.
fn idempotency_dedupe(key: Option<&str>) -> Result<Option<String>, Error> {
    if key.is_some_and(|key| key.is_empty() || key.len() > 128) {
        return Err(Error::invalid("`idempotency_key` must be 1..128 chars"));
    }
    Ok(key.map(|k| format!("k:{k}")))
}

/// Refuses everything but a refresh once the session's grant has expired.
fn live_grant(record: &SessionRecord) -> Result<(), Error> {
    match &record.grant {
        Some(grant) if grant.expired(now_secs()) => Err(TokenError::Expired.into()),
        _ => Ok(()),
    }
}

fn caller(record: &SessionRecord) -> Caller<'_> {
    Caller { pid: &record.pid, sub: record.grant.as_ref().map(|g| g.sub.as_str()) }
}

fn forbidden(action: Action, channel: &ChannelName) -> Error {
    let what = match action {
        Action::Subscribe => "subscribe to",
        Action::Publish => "publish to",
        Action::Presence => "see the presence of",
    };
    Error::with(ErrorCode::Forbidden, format!("this session may not {what} `{channel}`"))
}
