//! [`ChannelLog`] on Redis: one script per operation on the channel's slot.

use fred::types::Value;
use serde_json::value::RawValue;

use super::keys::Part;
use super::scripts::{append_reply, malformed, top_reply, ReadReply};
use super::RedisStore;
use crate::model::{ChannelName, Cursor, Epoch};
use crate::protocol::Message;
use crate::store::{ChannelLog, History, StoreError};

impl ChannelLog for RedisStore {
    async fn append(
        &self,
        channel: &ChannelName,
        data: &RawValue,
        ts: u64,
        dedupe: Option<&str>,
    ) -> Result<Cursor, StoreError> {
        let mut keys = vec![self.keys.channel(channel, Part::Meta), self.keys.channel(channel, Part::History)];
        if let Some(key) = dedupe {
            keys.push(self.keys.dedupe(channel, key));
        }
        let args = vec![
            data.get().to_owned(),
            ts.to_string(),
            self.retention.history_size.to_string(),
            Self::ttl_ms(self.retention.history_ttl),
            Self::ttl_ms(self.retention.dedupe_ttl),
            self.keys.channel(channel, Part::Live),
            Epoch::random().to_string(),
            if self.sharded { "1" } else { "0" }.to_owned(),
            self.meta_ttl_ms().to_string(),
        ];
        append_reply(&self.eval(&self.scripts.append, keys, args).await?)
    }

    async fn read(&self, channel: &ChannelName, after: &Cursor, limit: usize) -> Result<History, StoreError> {
        let keys = vec![self.keys.channel(channel, Part::Meta), self.keys.channel(channel, Part::History)];
        let args = vec![
            after.epoch.to_string(),
            after.offset.to_string(),
            limit.max(1).to_string(),
            Epoch::random().to_string(),
            self.meta_ttl_ms().to_string(),
        ];
        let reply = ReadReply::try_from(self.eval(&self.scripts.read, keys, args).await?)?;
        let gap = reply.gap.map(|reason| (Cursor::new(reply.epoch.clone(), reply.after), reason));
        let messages =
            reply.entries.into_iter().map(|entry| message(channel, &reply.epoch, entry)).collect::<Result<_, _>>()?;
        Ok(History { gap, messages })
    }

    async fn top(&self, channel: &ChannelName) -> Result<Cursor, StoreError> {
        let keys = vec![self.keys.channel(channel, Part::Meta), self.keys.channel(channel, Part::History)];
        let args = vec![Epoch::random().to_string(), self.meta_ttl_ms().to_string()];
        top_reply(self.eval(&self.scripts.top, keys, args).await?)
    }
}

/// One stream entry, `[<offset>-0, [t, <ts>, d, <data>]]`, as a message of `channel`.
fn message(channel: &ChannelName, epoch: &Epoch, entry: Value) -> Result<std::sync::Arc<Message>, StoreError> {
    let Value::Array(entry) = entry else { return Err(malformed("stream entry")) };
    let (Some(id), Some(Value::Array(fields))) = (entry.first().and_then(|v| v.as_string()), entry.get(1)) else {
        return Err(malformed("stream entry"));
    };
    let offset = id.split('-').next().and_then(|o| o.parse().ok()).ok_or_else(|| malformed("stream id"))?;
    let mut ts = 0;
    let mut data = None;
    for pair in fields.chunks(2) {
        match (pair[0].as_string().as_deref(), pair.get(1)) {
            (Some("t"), Some(v)) => ts = v.as_u64().unwrap_or(0),
            (Some("d"), Some(v)) => data = v.as_string(),
            _ => {}
        }
    }
    let data = data.and_then(|d| RawValue::from_string(d).ok()).ok_or_else(|| malformed("stream data"))?;
    Ok(Message::new(channel.clone(), epoch.clone(), offset, ts, &data))
}
