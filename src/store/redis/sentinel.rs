//! Follows Sentinel's `+switch-master` so a node moves to a new primary within moments of a failover.
//!
//! fred asks Sentinel for the primary only when it (re)connects, and a forced or graceful failover leaves the old
//! primary's connections open until Sentinel reconfigures it, about 10 s later: until then every node goes on
//! writing to the old primary, and those acknowledged writes are lost with it (docs/CHAOS.md measured ~240 per
//! failover). Each Sentinel announces the switch on its `+switch-master` channel; on it this task makes every
//! client of the store reconnect, which asks Sentinel again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::{Client, Pool, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::prelude::{Builder, ReconnectPolicy};
use fred::types::config::{Config, ServerConfig};

const SWITCH: &str = "+switch-master";

/// The store's connections to move on a switch.
pub(super) struct Followers {
    pub client: Client,
    pub subscriber: SubscriberClient,
    pub writers: Option<Pool>,
}

/// Watches every Sentinel of `config` (when it names Sentinels) for a switch of its service's primary.
pub(super) fn follow(config: &Config, followers: Followers) {
    let ServerConfig::Sentinel { hosts, service_name, .. } = &config.server else { return };
    let followers = Arc::new(followers);
    // Every Sentinel announces the same switch: the first one moves the store, the others find it done.
    let last = Arc::new(Mutex::new(String::new()));
    for host in hosts.clone() {
        let (followers, service, last) = (followers.clone(), service_name.clone(), last.clone());
        tokio::spawn(async move {
            let sentinel = Config { server: ServerConfig::Centralized { server: host.clone() }, ..Config::default() };
            let Ok(watcher) = Builder::from_config(sentinel)
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
                .with_connection_config(|c| c.connection_timeout = Duration::from_secs(3))
                .build_subscriber_client()
            else {
                return;
            };
            let mut switches = watcher.message_rx();
            // A Sentinel down now is followed once it is up: fred reconnects and re-subscribes.
            let _ = watcher.init().await;
            if let Err(err) = watcher.subscribe(SWITCH).await {
                tracing::warn!(%err, sentinel = %host, "could not watch Sentinel's +switch-master yet");
            }
            while let Ok(message) = switches.recv().await {
                // `<service> <old ip> <old port> <new ip> <new port>`
                let text = message.value.as_string().unwrap_or_default();
                if text.split(' ').next() != Some(service.as_str()) {
                    continue;
                }
                if std::mem::replace(&mut *last.lock().unwrap_or_else(|e| e.into_inner()), text.clone()) == text {
                    continue;
                }
                tracing::warn!(switch = %text, "Sentinel switched the primary: reconnecting to the new one");
                let _ = followers.client.force_reconnection().await;
                let _ = followers.subscriber.force_reconnection().await;
                if let Some(pool) = &followers.writers {
                    let _ = pool.force_reconnection().await;
                }
            }
        });
    }
}
