//! [`Presence`] on Redis: a sorted set per channel of public session ids scored by expiry.

use fred::interfaces::SortedSetsInterface;
use fred::types::Value;

use super::keys::Part;
use super::{unavailable, RedisStore};
use crate::model::{now_ms, ChannelName};
use crate::store::{Presence, StoreError};

impl Presence for RedisStore {
    async fn presence(&self, channel: &ChannelName) -> Result<Vec<String>, StoreError> {
        let key = self.keys.channel(channel, Part::Presence);
        let now = now_ms() as f64;
        let pipe = self.client.pipeline();
        let _: Value = pipe.zremrangebyscore(&key, f64::NEG_INFINITY, now).await.map_err(unavailable)?;
        let _: Value = pipe.zrangebyscore(&key, now, f64::INFINITY, false, None).await.map_err(unavailable)?;
        let (_, mut pids): (Value, Vec<String>) = pipe.all().await.map_err(unavailable)?;
        pids.sort();
        Ok(pids)
    }
}
