//! The Redis store: sessions, channel history, dedupe records and presence live in Redis, so a node keeps
//! nothing another node needs. Redis pub/sub only wakes nodes; history is the truth.
//!
//! Every key of a channel shares the hash tag `{channel}`, so a publish is one script on one slot: dedupe check,
//! append to the stream, trim by size and age, dedupe record, and one PUBLISH (SPUBLISH on a cluster) whatever
//! the number of subscribers. docs/ARCHITECTURE.md lists the keys, their TTLs and the commands per operation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::interfaces::{
    ClientLike, EventInterface, HashesInterface, KeysInterface, PubsubInterface, SortedSetsInterface,
};
use fred::prelude::{Client, Config, ReconnectPolicy};
use fred::types::scripts::Script;
use fred::types::{Builder, Value};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::{History, Retention, Store, StoreError};
use crate::channel::{ChannelName, Cursor, Epoch, Message};
use crate::frame::GapReason;
use crate::hub::{Hub, ListenCommand, Live, Topic};
use crate::session::{SessionId, SessionRecord};

/// The Lua that reads a channel's epoch (`KEYS[1]` meta, `KEYS[2]` stream), creating a fresh one from the
/// candidate argument when the meta is gone; any orphaned stream goes with it, so offsets never restart silently.
macro_rules! ensure_epoch {
    ($candidate:literal) => {
        concat!(
            "local epoch = redis.call('HGET', KEYS[1], 'e')\n",
            "if not epoch then\n",
            "  epoch = ",
            $candidate,
            "\n",
            "  redis.call('DEL', KEYS[2])\n",
            "  redis.call('HSET', KEYS[1], 'e', epoch, 't', 0)\n",
            "end\n"
        )
    };
}

const APPEND: &str = concat!(
    r#"
if #KEYS == 3 then
  local seen = redis.call('GET', KEYS[3])
  if seen then return seen end
end
"#,
    ensure_epoch!("ARGV[7]"),
    r#"
local off = redis.call('HINCRBY', KEYS[1], 't', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], off .. '-0', 't', ARGV[2], 'd', ARGV[1])
local cutoff = tonumber(ARGV[2]) - tonumber(ARGV[4])
local keep, last = nil, nil
for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 64)) do
  if tonumber(e[2][2]) >= cutoff then keep = e[1] break end
  last = e[1]
end
if keep == nil and last ~= nil then keep = (tonumber(string.match(last, '^(%d+)')) + 1) .. '-0' end
if keep ~= nil then redis.call('XTRIM', KEYS[2], 'MINID', keep) end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[9])
local cursor = epoch .. '@' .. off
if #KEYS == 3 then redis.call('SET', KEYS[3], cursor, 'PX', ARGV[5]) end
local live = epoch .. ' ' .. off .. ' ' .. ARGV[2] .. '\n' .. ARGV[1]
if ARGV[8] == '1' then redis.call('SPUBLISH', ARGV[6], live) else redis.call('PUBLISH', ARGV[6], live) end
return cursor
"#
);

const READ: &str = concat!(
    r#"
"#,
    ensure_epoch!("ARGV[4]"),
    r#"
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local top = tonumber(redis.call('HGET', KEYS[1], 't'))
local limit = tonumber(ARGV[3])
if limit == 0 then return {epoch, top} end
local first = top + 1
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if head[1] then first = tonumber(string.match(head[1][1], '^(%d+)')) end
local after = tonumber(ARGV[2])
local reason = ''
if ARGV[1] ~= epoch or after > top then
  reason = 'epoch'
  after = first - 1
elseif after + 1 < first then
  reason = 'trimmed'
  after = first - 1
end
local entries = redis.call('XRANGE', KEYS[2], (after + 1) .. '-0', '+', 'COUNT', limit)
return {epoch, top, reason, after, entries}
"#
);

const SUBSCRIBE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return existing end
local n = redis.call('HLEN', KEYS[1]) - 1
if redis.call('HEXISTS', KEYS[1], 'pa') == 1 then n = n - 1 end
if n >= tonumber(ARGV[3]) then return '!max' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ARGV[2]
"#;

pub struct RedisStore {
    client: Client,
    hub: Arc<Hub>,
    retention: Retention,
    prefix: String,
    /// A cluster: live delivery uses sharded pub/sub (SPUBLISH/SSUBSCRIBE).
    sharded: bool,
    append: Script,
    read: Script,
    subscribe: Script,
}

fn unavailable(err: fred::error::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn malformed(what: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected reply from Redis for {what}"))
}

impl RedisStore {
    /// Connects (commands and a subscriber connection) and starts the task that keeps this node's pub/sub
    /// subscriptions in line with the hub's topics.
    pub async fn connect(
        url: &str,
        prefix: &str,
        retention: Retention,
        hub: Arc<Hub>,
        commands: mpsc::UnboundedReceiver<ListenCommand>,
    ) -> Result<Arc<Self>, StoreError> {
        let config = Config::from_url(url).map_err(unavailable)?;
        let sharded = config.server.is_clustered();
        let mut builder = Builder::from_config(config);
        builder
            // Without a policy fred never reconnects; retry forever, backing off to 2 s.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .with_performance_config(|p| {
                // A publish answers 503 within this when Redis is gone, rather than hanging.
                p.default_command_timeout = Duration::from_secs(3);
                // A slow reader of pub/sub gets Lagged (handled below) only after this many messages.
                p.broadcast_channel_capacity = 65_536;
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(3);
                // A command cut off in flight fails (the caller retries with its id) rather than being re-sent.
                c.max_command_attempts = 1;
            });
        let client = builder.build().map_err(unavailable)?;
        let subscriber = builder.build_subscriber_client().map_err(unavailable)?;
        client.init().await.map_err(unavailable)?;
        subscriber.init().await.map_err(unavailable)?;
        let store = Arc::new(RedisStore {
            client,
            hub,
            retention,
            prefix: prefix.to_owned(),
            sharded,
            append: Script::from_lua(APPEND),
            read: Script::from_lua(READ),
            subscribe: Script::from_lua(SUBSCRIBE),
        });
        tokio::spawn(listen(Arc::downgrade(&store), subscriber, commands));
        Ok(store)
    }

    fn channel_key(&self, channel: &ChannelName, suffix: &str) -> String {
        format!("{}:{{{}}}:{suffix}", self.prefix, channel)
    }

    fn session_key(&self, id: &SessionId) -> String {
        format!("{}:s:{{{}}}", self.prefix, id.as_str())
    }

    fn topic_name(&self, topic: &Topic) -> String {
        match topic {
            Topic::Channel(channel) => self.channel_key(channel, "live"),
            Topic::Session(id) => format!("{}:ctl", self.session_key(id)),
        }
    }

    fn topic_of(&self, name: &str) -> Option<Topic> {
        let rest = name.strip_prefix(&self.prefix)?.strip_prefix(':')?;
        if let Some(id) = rest.strip_prefix("s:{").and_then(|r| r.strip_suffix("}:ctl")) {
            return SessionId::parse(id).ok().map(Topic::Session);
        }
        let channel = rest.strip_prefix('{')?.strip_suffix("}:live")?;
        ChannelName::parse(channel).ok().map(Topic::Channel)
    }

    /// Outlives history, so offsets keep counting while clients may hold cursors; refreshed by every read.
    fn meta_ttl_ms(&self) -> u64 {
        (self.retention.history_ttl * 2 + self.retention.session_ttl).as_millis() as u64
    }

    fn ttl_ms(d: Duration) -> String {
        d.as_millis().max(1).to_string()
    }

    async fn eval(&self, script: &Script, keys: Vec<String>, args: Vec<String>) -> Result<Value, StoreError> {
        script.evalsha_with_reload(&self.client, keys, args).await.map_err(unavailable)
    }

    async fn mark_present(&self, pid: &str, channel: &ChannelName) -> Result<(), StoreError> {
        let key = self.channel_key(channel, "p");
        let expires = super::now_ms() + self.retention.session_ttl.as_millis() as u64;
        let pipe = self.client.pipeline();
        let _: Value = pipe.zadd(&key, None, None, false, false, (expires as f64, pid)).await.map_err(unavailable)?;
        let _: Value =
            pipe.pexpire(&key, (self.retention.session_ttl * 2).as_millis() as i64, None).await.map_err(unavailable)?;
        let _: Vec<Value> = pipe.all().await.map_err(unavailable)?;
        Ok(())
    }

    /// Subscribes and returns only once Redis has processed the subscriptions. fred resolves SUBSCRIBE when it
    /// is written (its replies are out-of-band), so a PING on the same connection, answered in order after the
    /// SUBSCRIBE, is what confirms it. SSUBSCRIBE already waits for its reply, one slot at a time.
    async fn subscribe_confirmed(
        &self,
        subscriber: &SubscriberClient,
        names: &[String],
    ) -> Result<(), fred::error::Error> {
        if names.is_empty() {
            return Ok(());
        }
        if self.sharded {
            for name in names {
                subscriber.ssubscribe(name.clone()).await?;
            }
            return Ok(());
        }
        subscriber.subscribe(names.to_vec()).await?;
        subscriber.ping::<Value>(None).await.map(|_| ())
    }

    /// The live message a PUBLISH carried: `epoch offset ts\n<data>`.
    fn parse_live(channel: ChannelName, payload: &str) -> Option<Arc<Message>> {
        let (head, data) = payload.split_once('\n')?;
        let mut parts = head.split(' ');
        let epoch = Epoch::parse(parts.next()?).ok()?;
        let offset = parts.next()?.parse().ok()?;
        let ts = parts.next()?.parse().ok()?;
        let data = RawValue::from_string(data.to_owned()).ok()?;
        Some(Message::new(channel, epoch, offset, ts, &data))
    }
}

fn parse_cursor(text: &str) -> Option<Cursor> {
    let (epoch, offset) = text.rsplit_once('@')?;
    Some(Cursor::new(Epoch::parse(epoch).ok()?, offset.parse().ok()?))
}

fn as_text(value: &Value) -> Option<String> {
    value.as_string()
}

/// Keeps the subscriber connection's subscriptions equal to the hub's topics, and hands what it receives to the
/// hub. After a reconnect it re-subscribes everything and tells every feed to re-read history, since pub/sub
/// drops whatever was published while the connection was down.
async fn listen(
    store: std::sync::Weak<RedisStore>,
    subscriber: SubscriberClient,
    mut commands: mpsc::UnboundedReceiver<ListenCommand>,
) {
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    // Topics whose subscription failed: retried every second and after a reconnect.
    let mut pending: Vec<(Topic, tokio::sync::watch::Sender<bool>)> = Vec::new();
    loop {
        let Some(store) = store.upgrade() else { break };
        tokio::select! {
            command = commands.recv() => match command {
                Some(ListenCommand::Listen(topic, ready)) => {
                    let name = store.topic_name(&topic);
                    match store.subscribe_confirmed(&subscriber, std::slice::from_ref(&name)).await {
                        Ok(()) => { let _ = ready.send(true); }
                        Err(err) => {
                            tracing::warn!(%err, topic = %name, "could not subscribe; retrying");
                            pending.push((topic, ready));
                        }
                    }
                }
                Some(ListenCommand::Unlisten(topic)) => {
                    let name = store.topic_name(&topic);
                    let _ = if store.sharded { subscriber.sunsubscribe(name).await } else { subscriber.unsubscribe(name).await };
                }
                None => break,
            },
            message = messages.recv() => match message {
                Ok(message) => {
                    let Some(topic) = store.topic_of(&message.channel) else { continue };
                    match &topic {
                        Topic::Channel(channel) => {
                            let payload = message.value.as_string().unwrap_or_default();
                            match RedisStore::parse_live(channel.clone(), &payload) {
                                Some(live) => store.hub.deliver(&topic, Live::Message(live)),
                                None => store.hub.deliver(&topic, Live::Resync),
                            }
                        }
                        Topic::Session(_) => store.hub.deliver(&topic, Live::SessionChanged),
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "pub/sub reader lagged; feeds re-read history");
                    store.hub.resync_all();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            server = reconnects.recv() => {
                if matches!(server, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    break;
                }
                // Pub/sub dropped whatever was published while the connection was down. Subscribe exactly the
                // hub's topics again (confirmed), then every feed re-reads history from its cursor.
                tracing::info!("Redis reconnected: re-subscribing and re-reading history");
                let topics = store.hub.topics();
                let names: Vec<String> = topics.iter().map(|t| store.topic_name(t)).collect();
                match store.subscribe_confirmed(&subscriber, &names).await {
                    Ok(()) => {
                        for (_, ready) in pending.drain(..) {
                            let _ = ready.send(true);
                        }
                    }
                    Err(err) => tracing::warn!(%err, "re-subscribe failed; retrying"),
                }
                pending.retain(|(topic, _)| topics.contains(topic));
                store.hub.resync_all();
            }
            _ = tokio::time::sleep(Duration::from_secs(1)), if !pending.is_empty() => {
                pending.retain(|(topic, _)| store.hub.topics().contains(topic));
                let names: Vec<String> = pending.iter().map(|(t, _)| store.topic_name(t)).collect();
                if store.subscribe_confirmed(&subscriber, &names).await.is_ok() {
                    for (_, ready) in pending.drain(..) {
                        let _ = ready.send(true);
                    }
                }
            }
        }
    }
}

impl Store for RedisStore {
    async fn append(
        &self,
        channel: &ChannelName,
        data: &RawValue,
        ts: u64,
        dedupe: Option<&str>,
    ) -> Result<Cursor, StoreError> {
        let mut keys = vec![self.channel_key(channel, "m"), self.channel_key(channel, "h")];
        if let Some(key) = dedupe {
            keys.push(self.channel_key(channel, &format!("d:{key}")));
        }
        let args = vec![
            data.get().to_owned(),
            ts.to_string(),
            self.retention.history_size.to_string(),
            Self::ttl_ms(self.retention.history_ttl),
            Self::ttl_ms(self.retention.dedupe_ttl),
            self.channel_key(channel, "live"),
            Epoch::random().to_string(),
            if self.sharded { "1" } else { "0" }.to_owned(),
            self.meta_ttl_ms().to_string(),
        ];
        let reply = self.eval(&self.append, keys, args).await?;
        as_text(&reply).as_deref().and_then(parse_cursor).ok_or_else(|| malformed("append"))
    }

    async fn read(&self, channel: &ChannelName, after: &Cursor, limit: usize) -> Result<History, StoreError> {
        let keys = vec![self.channel_key(channel, "m"), self.channel_key(channel, "h")];
        let args = vec![
            after.epoch.to_string(),
            after.offset.to_string(),
            limit.max(1).to_string(),
            Epoch::random().to_string(),
            self.meta_ttl_ms().to_string(),
        ];
        let reply = self.eval(&self.read, keys, args).await?;
        let Value::Array(parts) = reply else {
            return Err(malformed("read"));
        };
        let [epoch, _top, reason, resume, entries] = &parts[..] else {
            return Err(malformed("read"));
        };
        let epoch = as_text(epoch).and_then(|e| Epoch::parse(&e).ok()).ok_or_else(|| malformed("read epoch"))?;
        let resume = resume.as_u64().ok_or_else(|| malformed("read cursor"))?;
        let gap = match as_text(reason).as_deref() {
            Some("epoch") => Some((Cursor::new(epoch.clone(), resume), GapReason::Epoch)),
            Some("trimmed") => Some((Cursor::new(epoch.clone(), resume), GapReason::Trimmed)),
            _ => None,
        };
        let Value::Array(entries) = entries else {
            return Err(malformed("read entries"));
        };
        let mut messages = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(entry) = entry else {
                return Err(malformed("stream entry"));
            };
            let (Some(id), Some(Value::Array(fields))) = (entry.first().and_then(as_text), entry.get(1)) else {
                return Err(malformed("stream entry"));
            };
            let offset = id.split('-').next().and_then(|o| o.parse().ok()).ok_or_else(|| malformed("stream id"))?;
            let mut ts = 0;
            let mut data = None;
            for pair in fields.chunks(2) {
                match (as_text(&pair[0]).as_deref(), pair.get(1)) {
                    (Some("t"), Some(v)) => ts = v.as_u64().unwrap_or(0),
                    (Some("d"), Some(v)) => data = as_text(v),
                    _ => {}
                }
            }
            let data = data.and_then(|d| RawValue::from_string(d).ok()).ok_or_else(|| malformed("stream data"))?;
            messages.push(Message::new(channel.clone(), epoch.clone(), offset, ts, &data));
        }
        Ok(History { gap, messages })
    }

    async fn top(&self, channel: &ChannelName) -> Result<Cursor, StoreError> {
        let keys = vec![self.channel_key(channel, "m"), self.channel_key(channel, "h")];
        let args = vec!["".into(), "0".into(), "0".into(), Epoch::random().to_string(), self.meta_ttl_ms().to_string()];
        let reply = self.eval(&self.read, keys, args).await?;
        let Value::Array(parts) = reply else {
            return Err(malformed("top"));
        };
        let epoch =
            parts.first().and_then(as_text).and_then(|e| Epoch::parse(&e).ok()).ok_or_else(|| malformed("top"))?;
        let top = parts.get(1).and_then(|t| t.as_u64()).ok_or_else(|| malformed("top"))?;
        Ok(Cursor::new(epoch, top))
    }

    async fn create_session(&self, id: &SessionId, record: &SessionRecord) -> Result<(), StoreError> {
        let key = self.session_key(id);
        let pipe = self.client.pipeline();
        let _: Value = pipe.hset(&key, ("pid", record.pid.as_str())).await.map_err(unavailable)?;
        let _: Value =
            pipe.pexpire(&key, self.retention.session_ttl.as_millis() as i64, None).await.map_err(unavailable)?;
        let _: Vec<Value> = pipe.all().await.map_err(unavailable)?;
        Ok(())
    }

    async fn load_session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let key = self.session_key(id);
        let pipe = self.client.pipeline();
        let _: Value = pipe.hgetall(&key).await.map_err(unavailable)?;
        let _: Value =
            pipe.pexpire(&key, self.retention.session_ttl.as_millis() as i64, None).await.map_err(unavailable)?;
        let (fields, _): (BTreeMap<String, String>, Value) = pipe.all().await.map_err(unavailable)?;
        let Some(pid) = fields.get("pid") else {
            return Ok(None);
        };
        let subscriptions = fields
            .iter()
            .filter_map(|(k, v)| Some((ChannelName::parse(k.strip_prefix("c:")?).ok()?, parse_cursor(v)?)))
            .collect();
        let presence_at = fields.get("pa").and_then(|t| t.parse().ok()).unwrap_or(0);
        Ok(Some(SessionRecord { pid: pid.clone(), subscriptions, presence_at }))
    }

    async fn touch_session(&self, id: &SessionId, record: &SessionRecord) -> Result<bool, StoreError> {
        let alive: bool = self
            .client
            .pexpire(self.session_key(id), self.retention.session_ttl.as_millis() as i64, None)
            .await
            .map_err(unavailable)?;
        if alive {
            let _: Value =
                self.client.hset(self.session_key(id), ("pa", super::now_ms())).await.map_err(unavailable)?;
        }
        if alive {
            for channel in record.subscriptions.keys() {
                self.mark_present(&record.pid, channel).await?;
            }
        }
        Ok(alive)
    }

    async fn subscribe(
        &self,
        id: &SessionId,
        pid: &str,
        channel: &ChannelName,
        cursor: &Cursor,
        max: usize,
    ) -> Result<Option<Cursor>, StoreError> {
        let keys = vec![self.session_key(id)];
        let args = vec![
            format!("c:{channel}"),
            format!("{}@{}", cursor.epoch, cursor.offset),
            max.to_string(),
            Self::ttl_ms(self.retention.session_ttl),
        ];
        let reply = self.eval(&self.subscribe, keys, args).await?;
        let in_force = match as_text(&reply).as_deref() {
            None => return Ok(None),
            Some("!max") => return Err(StoreError::TooManySubscriptions(max)),
            Some(text) => parse_cursor(text).ok_or_else(|| malformed("subscribe"))?,
        };
        self.mark_present(pid, channel).await?;
        Ok(Some(in_force))
    }

    async fn unsubscribe(&self, id: &SessionId, pid: &str, channel: &ChannelName) -> Result<(), StoreError> {
        let _: Value = self.client.hdel(self.session_key(id), format!("c:{channel}")).await.map_err(unavailable)?;
        let _: Value = self.client.zrem(self.channel_key(channel, "p"), pid).await.map_err(unavailable)?;
        Ok(())
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<String>, StoreError> {
        let key = self.channel_key(channel, "p");
        let now = super::now_ms() as f64;
        let pipe = self.client.pipeline();
        let _: Value = pipe.zremrangebyscore(&key, f64::NEG_INFINITY, now).await.map_err(unavailable)?;
        let _: Value = pipe.zrangebyscore(&key, now, f64::INFINITY, false, None).await.map_err(unavailable)?;
        let (_, mut pids): (Value, Vec<String>) = pipe.all().await.map_err(unavailable)?;
        pids.sort();
        Ok(pids)
    }

    async fn notify_session(&self, id: &SessionId) -> Result<(), StoreError> {
        let topic = self.topic_name(&Topic::Session(id.clone()));
        let result: Result<Value, _> =
            if self.sharded { self.client.spublish(topic, "1").await } else { self.client.publish(topic, "1").await };
        result.map(|_| ()).map_err(unavailable)
    }
}
