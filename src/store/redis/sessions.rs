//! [`Sessions`] on Redis: one hash per session (`pid`, `pa`, `g` the grant as JSON, and `c:<channel>` -> the
//! cursor a subscription started at), with the session's TTL; changes are told on the session's control topic.

use std::collections::BTreeMap;

use fred::clients::{Client, Pipeline};
use fred::interfaces::{HashesInterface, KeysInterface, PubsubInterface, SortedSetsInterface};
use fred::types::Value;

use super::keys::Part;
use super::scripts::{format_cursor, malformed, parse_cursor, SubscribeReply};
use super::{unavailable, RedisStore};
use crate::hub::Topic;
use crate::model::{now_ms, ChannelName, Cursor, Grant, SessionId, SessionRecord};
use crate::store::{Sessions, StoreError};

impl RedisStore {
    /// Marks `pid` present on `channel` until the session would expire.
    async fn mark_present(&self, pid: &str, channel: &ChannelName) -> Result<(), StoreError> {
        let pipe = self.client.pipeline();
        self.mark_present_in(&pipe, pid, channel).await?;
        let _: Vec<Value> = pipe.all().await.map_err(unavailable)?;
        Ok(())
    }

    /// Queues [`Self::mark_present`]'s commands on `pipe`.
    async fn mark_present_in(
        &self,
        pipe: &Pipeline<Client>,
        pid: &str,
        channel: &ChannelName,
    ) -> Result<(), StoreError> {
        let key = self.keys.channel(channel, Part::Presence);
        let expires = now_ms() + self.retention.session_ttl.as_millis() as u64;
        let _: Value = pipe.zadd(&key, None, None, false, false, (expires as f64, pid)).await.map_err(unavailable)?;
        let _: Value =
            pipe.pexpire(&key, (self.retention.session_ttl * 2).as_millis() as i64, None).await.map_err(unavailable)?;
        Ok(())
    }

    fn session_ttl_ms(&self) -> i64 {
        self.retention.session_ttl.as_millis() as i64
    }
}

impl Sessions for RedisStore {
    async fn create_session(&self, id: &SessionId, record: &SessionRecord) -> Result<(), StoreError> {
        let key = self.keys.session(id);
        let pipe = self.client.pipeline();
        let _: Value = pipe.hset(&key, ("pid", record.pid.as_str())).await.map_err(unavailable)?;
        if let Some(grant) = &record.grant {
            let _: Value = pipe.hset(&key, ("g", grant_json(grant))).await.map_err(unavailable)?;
        }
        if let Some(ip) = record.ip {
            let _: Value = pipe.hset(&key, ("ip", ip.to_string())).await.map_err(unavailable)?;
        }
        let _: Value = pipe.pexpire(&key, self.session_ttl_ms(), None).await.map_err(unavailable)?;
        let _: Vec<Value> = pipe.all().await.map_err(unavailable)?;
        Ok(())
    }

    async fn load_session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let (keys, args) = (vec![self.keys.session(id)], vec![self.session_ttl_ms().to_string()]);
        let reply = self.eval(&self.client, &self.scripts.load_session, keys, args).await?;
        let fields: BTreeMap<String, String> = reply.convert().map_err(|_| malformed("session"))?;
        let Some(pid) = fields.get("pid") else {
            return Ok(None);
        };
        let subscriptions = fields
            .iter()
            .filter_map(|(k, v)| Some((ChannelName::parse(k.strip_prefix("c:")?).ok()?, parse_cursor(v)?)))
            .collect();
        let presence_at = fields.get("pa").and_then(|t| t.parse().ok()).unwrap_or(0);
        let grant = match fields.get("g") {
            Some(json) => Some(serde_json::from_str(json).map_err(|_| malformed("session grant"))?),
            None => None,
        };
        let ip = fields.get("ip").and_then(|ip| ip.parse().ok());
        Ok(Some(SessionRecord { pid: pid.clone(), subscriptions, presence_at, grant, ip }))
    }

    async fn touch_session(&self, id: &SessionId, record: &SessionRecord) -> Result<bool, StoreError> {
        let key = self.keys.session(id);
        let alive: bool = self.client.pexpire(&key, self.session_ttl_ms(), None).await.map_err(unavailable)?;
        if alive {
            // One pipeline: the session's presence time and its entry in each channel's presence set.
            let pipe = self.client.pipeline();
            let _: Value = pipe.hset(&key, ("pa", now_ms())).await.map_err(unavailable)?;
            for channel in record.subscriptions.keys() {
                self.mark_present_in(&pipe, &record.pid, channel).await?;
            }
            let _: Vec<Value> = pipe.all().await.map_err(unavailable)?;
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
        let keys = vec![self.keys.session(id)];
        let args = vec![
            format!("c:{channel}"),
            format_cursor(cursor),
            max.to_string(),
            Self::ttl_ms(self.retention.session_ttl),
        ];
        let in_force =
            match SubscribeReply::try_from(self.eval(&self.client, &self.scripts.subscribe, keys, args).await?)? {
                SubscribeReply::Gone => return Ok(None),
                SubscribeReply::Full => return Err(StoreError::TooManySubscriptions(max)),
                SubscribeReply::InForce(cursor) => cursor,
            };
        self.mark_present(pid, channel).await?;
        Ok(Some(in_force))
    }

    async fn unsubscribe(&self, id: &SessionId, pid: &str, channel: &ChannelName) -> Result<(), StoreError> {
        let _: Value = self.client.hdel(self.keys.session(id), format!("c:{channel}")).await.map_err(unavailable)?;
        let _: Value = self.client.zrem(self.keys.channel(channel, Part::Presence), pid).await.map_err(unavailable)?;
        Ok(())
    }

    async fn set_grant(&self, id: &SessionId, grant: &Grant) -> Result<bool, StoreError> {
        let reply = self
            .eval(&self.client, &self.scripts.set_grant, vec![self.keys.session(id)], vec![grant_json(grant)])
            .await?;
        Ok(reply.as_u64() == Some(1))
    }

    async fn notify_session(&self, id: &SessionId) -> Result<(), StoreError> {
        let topic = self.keys.topic(&Topic::Session(id.clone()));
        let result: Result<Value, _> =
            if self.sharded { self.client.spublish(topic, "1").await } else { self.client.publish(topic, "1").await };
        result.map(|_| ()).map_err(unavailable)
    }
}

fn grant_json(grant: &Grant) -> String {
    serde_json::to_string(grant).unwrap_or_default()
}
