//! [`ChannelLog`] on Redis: one script per operation on the channel's slot.
//!
//! A client's subscribe or publish may create a channel only within the node's channels per second: the script
//! first runs without creating, and only a channel it finds absent is counted and created by a second run.

use std::time::Instant;

use fred::interfaces::{ClientLike, ServerInterface};
use fred::types::scripts::Script;
use fred::types::Value;
use fred::types::{ClusterHash, CustomCommand};
use serde_json::value::RawValue;

use super::keys::Part;
use super::scripts::{append_reply, malformed, top_reply, ReadReply};
use super::RedisStore;
use crate::model::{ChannelName, Cursor, Epoch, Sender};
use crate::protocol::Message;
use crate::store::{append_each, Append, ChannelLog, Creator, History, StoreError};

impl ChannelLog for RedisStore {
    async fn append(&self, channel: &ChannelName, append: Append<'_>) -> Result<Cursor, StoreError> {
        let (keys, args) = self.append_call(channel, &append);
        // The backend creates channels freely; a client within the node's rate.
        let Some(writers) = &self.writers else {
            return append_reply(&self.creating(&self.client, &self.scripts.append, keys, args, append.creator).await?);
        };
        // With min_replicas, the write and its WAIT go on one connection: WAIT counts that connection's writes.
        let writer = writers.next();
        let cursor = append_reply(&self.creating(writer, &self.scripts.append, keys, args, append.creator).await?)?;
        let (wanted, within) = (self.durability.min_replicas, self.durability.replica_timeout);
        let started = Instant::now();
        let confirmed: Result<i64, _> = writer.wait(wanted as i64, within.as_millis().max(1) as i64).await;
        self.metrics.store_round_trip(started.elapsed(), confirmed.is_ok());
        match confirmed.map_err(super::unavailable)? {
            n if n >= wanted as i64 => Ok(cursor),
            n => Err(StoreError::Unavailable(format!(
                "stored on the primary but confirmed by {n} of {wanted} replicas within {within:?}"
            ))),
        }
    }

    /// One pipeline for the whole batch (fred writes it at once; Redis runs the scripts in order), unless a
    /// client may create channels (counted one by one) or publishes wait for replicas (a WAIT per connection).
    async fn append_all<'a>(&'a self, messages: &'a [(ChannelName, Append<'a>)]) -> Vec<Result<Cursor, StoreError>> {
        let per_message = self.writers.is_some()
            || messages.iter().any(|(_, m)| matches!(m.creator, Creator::Client(_)) && self.limits.limits_channels());
        if per_message {
            return append_each(self, messages).await;
        }
        let started = Instant::now();
        let mut replies = self.append_pipeline(messages).await;
        if replies.iter().any(|r| r.as_ref().is_err_and(|e| e.details().starts_with("NOSCRIPT"))) {
            // A Redis that lost its scripts (restarted, flushed) ran none of them: load it and send them again.
            replies = match self.scripts.append.load(&self.client).await {
                Ok(()) => self.append_pipeline(messages).await,
                Err(err) => return messages.iter().map(|_| Err(super::unavailable(err.clone()))).collect(),
            };
        }
        self.metrics.store_round_trip(started.elapsed(), replies.iter().all(|r| r.is_ok()));
        replies.into_iter().map(|reply| append_reply(&reply.map_err(super::unavailable)?)).collect()
    }

    async fn read(&self, channel: &ChannelName, after: &Cursor, limit: usize) -> Result<History, StoreError> {
        let keys = vec![self.keys.channel(channel, Part::Meta), self.keys.channel(channel, Part::History)];
        let args = vec![
            after.epoch.to_string(),
            after.offset.to_string(),
            limit.max(1).to_string(),
            Epoch::random().to_string(),
            self.meta_ttl_ms(self.retention.history_ttl).to_string(),
            self.empty_ttl_ms().to_string(),
        ];
        let reply = ReadReply::try_from(self.eval(&self.client, &self.scripts.read, keys, args).await?)?;
        let gap = reply.gap.map(|reason| (Cursor::new(reply.epoch.clone(), reply.after), reason));
        let messages =
            reply.entries.into_iter().map(|entry| message(channel, &reply.epoch, entry)).collect::<Result<_, _>>()?;
        Ok(History { gap, messages })
    }

    async fn top(&self, channel: &ChannelName, creator: Creator) -> Result<Cursor, StoreError> {
        let keys = vec![self.keys.channel(channel, Part::Meta), self.keys.channel(channel, Part::History)];
        let args = vec![
            Epoch::random().to_string(),
            self.meta_ttl_ms(self.retention.history_ttl).to_string(),
            self.empty_ttl_ms().to_string(),
        ];
        top_reply(self.creating(&self.client, &self.scripts.top, keys, args, creator).await?)
    }
}

impl RedisStore {
    /// The append script's keys and arguments (without the last: whether it may create the channel).
    fn append_call(&self, channel: &ChannelName, append: &Append<'_>) -> (Vec<String>, Vec<String>) {
        let mut keys = vec![self.keys.channel(channel, Part::Meta), self.keys.channel(channel, Part::History)];
        if let Some(key) = append.dedupe {
            keys.push(self.keys.dedupe(channel, key));
        }
        let from = match append.from {
            Some(sender) => serde_json::to_string(sender).unwrap_or_default(),
            None => String::new(),
        };
        let args = vec![
            append.data.get().to_owned(),
            append.ts.to_string(),
            append.keep.size.to_string(),
            Self::ttl_ms(append.keep.ttl),
            Self::ttl_ms(self.retention.dedupe_ttl),
            self.keys.channel(channel, Part::Live),
            Epoch::random().to_string(),
            if self.sharded { "1" } else { "0" }.to_owned(),
            self.meta_ttl_ms(append.keep.ttl).to_string(),
            from,
        ];
        (keys, args)
    }

    /// Every append of `messages` in one pipeline, each allowed to create its channel.
    async fn append_pipeline(&self, messages: &[(ChannelName, Append<'_>)]) -> Vec<Result<Value, fred::error::Error>> {
        let pipe = self.client.pipeline();
        for (channel, message) in messages {
            let (keys, mut args) = self.append_call(channel, message);
            args.push("1".into());
            // EVALSHA by hand: fred's pipelines have no script interface. All keys share the channel's slot.
            let slot = fred::util::redis_keyslot(keys[0].as_bytes());
            let command = CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false);
            let mut call: Vec<Value> = vec![self.scripts.append.sha1().clone().into(), (keys.len() as i64).into()];
            call.extend(keys.into_iter().chain(args).map(Value::from));
            let queued: Result<(), _> = pipe.custom(command, call).await;
            if let Err(err) = queued {
                return messages.iter().map(|_| Err(err.clone())).collect();
            }
        }
        pipe.try_all::<Value>().await
    }

    /// Runs a script that creates the channel when absent (its last argument says whether it may). When
    /// `limited`, it first may not; a channel found absent then counts against the node's channels per second
    /// before the second run creates it.
    async fn creating(
        &self,
        client: &fred::clients::Client,
        script: &Script,
        keys: Vec<String>,
        mut args: Vec<String>,
        creator: Creator,
    ) -> Result<Value, StoreError> {
        let Creator::Client(ip) = creator else {
            args.push("1".into());
            return self.eval(client, script, keys, args).await;
        };
        if !self.limits.limits_channels() {
            args.push("1".into());
            return self.eval(client, script, keys, args).await;
        }
        args.push("0".into());
        let reply = self.eval(client, script, keys.clone(), args.clone()).await?;
        if !absent(&reply) {
            return Ok(reply);
        }
        self.limits.new_channel(ip).map_err(StoreError::RateLimited)?;
        args.pop();
        args.push("1".into());
        self.eval(client, script, keys, args).await
    }
}

/// A script's answer for a channel it was not allowed to create: `absent` or `{absent}`.
fn absent(reply: &Value) -> bool {
    let text = match reply {
        Value::Array(parts) if parts.len() == 1 => parts[0].as_string(),
        other => other.as_string(),
    };
    text.as_deref() == Some("absent")
}

/// One stream entry, `[<offset>-0, [t, <ts>, d, <data>, (f, <sender>)]]`, as a message of `channel`.
fn message(channel: &ChannelName, epoch: &Epoch, entry: Value) -> Result<std::sync::Arc<Message>, StoreError> {
    let Value::Array(entry) = entry else { return Err(malformed("stream entry")) };
    let (Some(id), Some(Value::Array(fields))) = (entry.first().and_then(|v| v.as_string()), entry.get(1)) else {
        return Err(malformed("stream entry"));
    };
    let offset = id.split('-').next().and_then(|o| o.parse().ok()).ok_or_else(|| malformed("stream id"))?;
    let mut ts = 0;
    let mut data = None;
    let mut from = None;
    for pair in fields.chunks(2) {
        match (pair[0].as_string().as_deref(), pair.get(1)) {
            (Some("t"), Some(v)) => ts = v.as_u64().unwrap_or(0),
            (Some("d"), Some(v)) => data = v.as_string(),
            (Some("f"), Some(v)) => from = v.as_string().and_then(|f| serde_json::from_str::<Sender>(&f).ok()),
            _ => {}
        }
    }
    let data = data.and_then(|d| RawValue::from_string(d).ok()).ok_or_else(|| malformed("stream data"))?;
    Ok(Message::new(channel.clone(), epoch.clone(), offset, ts, &data, from.as_ref()))
}
