//! The Redis store: sessions, channel history, dedupe records and presence live in Redis, so a node keeps
//! nothing another node needs. Redis pub/sub only wakes nodes; history is the truth.
//!
//! [`keys`] names everything, [`scripts`] holds the Lua (one script per channel operation, on the channel's
//! slot) and its typed replies, [`listener`] keeps this node's pub/sub subscriptions in line with its hub, and
//! one file per store trait implements it. docs/ARCHITECTURE.md lists the keys, their TTLs and the commands per
//! operation.

mod channel_log;
mod keys;
mod listener;
mod presence;
mod scripts;
mod sentinel;
mod sessions;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use fred::prelude::{Client, Config, ReconnectPolicy};
use fred::types::config::TcpConfig;
use fred::types::scripts::Script;
use fred::types::{Builder, Value};
use tokio::sync::mpsc;

use super::{Health, Retention, StoreError};
use crate::hub::{Hub, ListenCommand};
use crate::limits::{LimitSettings, Limits};
use crate::metrics::Metrics;
use crate::model::now_ms;
use keys::Keys;
use scripts::Scripts;

/// How Redis acknowledges a publish (docs/ARCHITECTURE.md, "Guarantees").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    /// Acknowledge a publish only once this many replicas have it (`WAIT`); 0: once the primary has it.
    pub min_replicas: usize,
    /// How long to wait for them; past it the publish answers 503 `store_unavailable` (outcome unknown).
    pub replica_timeout: Duration,
}

impl Default for Durability {
    fn default() -> Self {
        Durability { min_replicas: 0, replica_timeout: Duration::from_secs(1) }
    }
}

pub struct RedisStore {
    client: Client,
    /// With `min_replicas`: connections for publishes, each write followed by its `WAIT` on the same one.
    writers: Option<fred::clients::Pool>,
    durability: Durability,
    hub: Arc<Hub>,
    retention: Retention,
    keys: Keys,
    /// A cluster: live delivery uses sharded pub/sub (SPUBLISH/SSUBSCRIBE).
    sharded: bool,
    scripts: Scripts,
    /// The node's limits; a client's new channel counts against its channels per second.
    limits: Limits,
    metrics: Metrics,
    /// This node's own pub/sub topic, on which the listener sends itself a probe every second.
    probe: String,
    /// When a probe last came back through pub/sub (ms since 1970): live delivery works.
    live_at: AtomicU64,
}

fn unavailable(err: fred::error::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
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
        let (limits, metrics) = (Limits::new(&LimitSettings::off()), Metrics::new());
        Self::connect_limited(url, prefix, retention, hub, commands, limits, metrics, Durability::default()).await
    }

    /// [`RedisStore::connect`] within the node's `limits`, counting its round trips in `metrics`, acknowledging
    /// publishes as `durability` says.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn connect_limited(
        url: &str,
        prefix: &str,
        retention: Retention,
        hub: Arc<Hub>,
        commands: mpsc::UnboundedReceiver<ListenCommand>,
        limits: Limits,
        metrics: Metrics,
        durability: Durability,
    ) -> Result<Arc<Self>, StoreError> {
        let config = Config::from_url(url).map_err(unavailable)?;
        let sharded = config.server.is_clustered();
        if sharded && durability.min_replicas > 0 {
            // WAIT has no key: it would go to any shard, not the one that took the write.
            return Err(StoreError::Unavailable("--redis-min-replicas is not supported on Redis Cluster".into()));
        }
        let mut builder = Builder::from_config(config.clone());
        builder
            // Without a policy fred never reconnects; retry forever, backing off to 2 s.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .with_performance_config(|p| {
                // A publish answers 503 within this when Redis is gone, rather than hanging.
                p.default_command_timeout = Duration::from_secs(3);
                // A slow reader of pub/sub gets Lagged (handled by the listener) only after this many messages.
                p.broadcast_channel_capacity = 65_536;
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(3);
                // fred leaves Nagle's algorithm on: a small command written while an earlier one is unacknowledged
                // would wait for that ACK (Redis, and every Redis client of note, set TCP_NODELAY).
                c.tcp = TcpConfig { nodelay: Some(true), ..TcpConfig::default() };
                // A command cut off in flight fails (the caller retries with its id) rather than being re-sent.
                c.max_command_attempts = 1;
            });
        let client = builder.build().map_err(unavailable)?;
        let subscriber = builder.build_subscriber_client().map_err(unavailable)?;
        client.init().await.map_err(unavailable)?;
        subscriber.init().await.map_err(unavailable)?;
        let writers = match durability.min_replicas {
            0 => None,
            _ => {
                let pool = builder.build_pool(4).map_err(unavailable)?;
                pool.init().await.map_err(unavailable)?;
                Some(pool)
            }
        };
        let followers =
            sentinel::Followers { client: client.clone(), subscriber: subscriber.clone(), writers: writers.clone() };
        sentinel::follow(&config, followers);
        let scripts = Scripts::load();
        let keys = Keys::new(prefix);
        let probe = keys.probe(&crate::model::random_hex(8));
        let live_at = AtomicU64::new(now_ms());
        let store = Arc::new(RedisStore {
            client,
            writers,
            durability,
            hub,
            retention,
            keys,
            sharded,
            scripts,
            limits,
            metrics,
            probe,
            live_at,
        });
        tokio::spawn(listener::run(Arc::downgrade(&store), subscriber, commands));
        Ok(store)
    }

    /// A channel's meta outlives its history (`history_ttl`), so offsets keep counting while clients may hold
    /// cursors; refreshed by every read.
    fn meta_ttl_ms(&self, history_ttl: Duration) -> u64 {
        (history_ttl * 2 + self.retention.session_ttl).as_millis() as u64
    }

    /// The meta of a channel that never had a message lives as long as a session, refreshed by reads.
    fn empty_ttl_ms(&self) -> u64 {
        (self.retention.session_ttl * 2).as_millis() as u64
    }

    fn ttl_ms(d: Duration) -> String {
        d.as_millis().max(1).to_string()
    }

    async fn eval(
        &self,
        client: &Client,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, StoreError> {
        let started = Instant::now();
        let result = script.evalsha_with_reload(client, keys, args).await;
        self.metrics.store_round_trip(started.elapsed(), result.is_ok());
        result.map_err(unavailable)
    }
}

/// How long a health check's PING may take.
const PING_WITHIN: Duration = Duration::from_secs(1);

/// How long live delivery may go without a probe coming back before the store counts as unhealthy.
const LIVE_WITHIN: Duration = Duration::from_millis(2500);

impl Health for RedisStore {
    /// Commands answer (a PING), and a probe published by this node came back through pub/sub recently.
    async fn check(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        // Bounded well below the command timeout: a probe must answer quickly to be worth anything.
        let ping = match tokio::time::timeout(PING_WITHIN, self.client.ping::<Value>(None)).await {
            Ok(answered) => answered.map_err(unavailable),
            Err(_) => Err(StoreError::Unavailable(format!("Redis did not answer PING within {PING_WITHIN:?}"))),
        };
        self.metrics.store_round_trip(started.elapsed(), ping.is_ok());
        ping?;
        let silent = now_ms().saturating_sub(self.live_at.load(Ordering::Relaxed));
        if silent > LIVE_WITHIN.as_millis() as u64 {
            return Err(StoreError::Unavailable(format!("live delivery (pub/sub) has not answered for {silent} ms")));
        }
        Ok(())
    }
}
