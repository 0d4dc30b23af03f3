//! stickless: a realtime gateway serving WebSocket, Server-Sent Events and long-polling over one session model.
//!
//! This crate is the session core: channels with offset-numbered history ([`channel`]), client positions
//! ([`position`]), sessions ([`session`]), the frames clients exchange ([`frame`]), the [`store`] (in memory, or
//! Redis so that nodes keep nothing), this node's live fan-out ([`hub`]) and each connection's [`feed`]. The
//! [`gateway`] puts them behind the port that `stickless-transports` frames over HTTP; [`server`] wires it up.

pub mod channel;
pub mod config;
pub mod demo;
pub mod error;
pub mod feed;
pub mod frame;
pub mod gateway;
pub mod hub;
pub mod position;
pub mod server;
pub mod session;
pub mod store;

use std::time::Duration;

use stickless_transports::Lifecycle;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::hub::Hub;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::Store;

/// `bytes` random bytes from the OS, as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random source is available");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a node with `config` on `listener` until shutdown.
pub async fn run(config: Config, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let node = config.node();
    let lifecycle = Lifecycle::default();
    match &config.redis_url {
        None => {
            let hub = Hub::local();
            let store = MemoryStore::new(config.retention(), hub.clone());
            store.spawn_sweeper(Duration::from_secs(5));
            tracing::info!(%node, addr = %listener.local_addr()?, "serving on the embedded in-memory store");
            serve(Gateway::new(store, hub, config.core(node)), &config, listener, lifecycle).await
        }
        Some(url) => {
            let (hub, commands) = Hub::with_listener();
            let store = RedisStore::connect(url, &config.redis_prefix, config.retention(), hub.clone(), commands)
                .await
                .map_err(|e| anyhow::anyhow!("cannot reach Redis at {url}: {e}"))?;
            tracing::info!(%node, addr = %listener.local_addr()?, "serving on Redis");
            serve(Gateway::new(store, hub, config.core(node)), &config, listener, lifecycle).await
        }
    }
}

async fn serve<S: Store>(
    gateway: Gateway<S>,
    config: &Config,
    listener: tokio::net::TcpListener,
    lifecycle: Lifecycle,
) -> anyhow::Result<()> {
    if config.demo_ticker_ms > 0 {
        demo::spawn_ticker(gateway.clone(), Duration::from_millis(config.demo_ticker_ms), lifecycle.shutdown.clone());
    }
    let app = server::router(gateway, config, lifecycle.clone());
    server::serve(listener, app, lifecycle).await?;
    Ok(())
}
