//! stickless: a realtime gateway serving WebSocket, Server-Sent Events and long-polling over one session model.
//!
//! The layers, each depending only on those before it (docs/ARCHITECTURE.md has the picture):
//! [`model`] (names, cursors, ids, positions) -> [`protocol`] (frames and error codes) and [`recovery`] (the
//! resume and delivery rules) -> [`hub`] (this node's live fan-out) -> [`store`] (memory, or Redis so that nodes
//! keep nothing) -> `feed` (what one connection delivers) -> `error` (failures as clients see them) ->
//! `gateway` (the transports' port) -> `http` (routes and layers) -> [`Builder`] and [`config`] (the CLI).
//!
//! To embed stickless in an axum application, build a router with [`Builder`] and merge it into yours
//! (`examples/embed.rs`).

pub mod auth;
pub mod config;
pub mod hub;
pub mod model;
pub mod protocol;
pub mod recovery;
pub mod store;

mod builder;
mod demo;
mod error;
mod feed;
mod gateway;
mod http;
mod limits;
mod metrics;
mod settings;

pub use builder::{BuildError, Builder, Handle};
pub use config::Config;
pub use limits::LimitSettings;
pub use settings::{Settings, WebFiles};

/// Runs a node with the command line's `config` on `listener` until SIGINT/SIGTERM.
pub async fn run(config: Config, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let settings = config.settings().map_err(anyhow::Error::msg)?;
    let (router, handle) = Builder::new().settings(settings).build().await?;
    let store = if config.redis_url.is_some() { "Redis" } else { "the embedded in-memory store" };
    tracing::info!(node = handle.node(), addr = %listener.local_addr()?, "serving on {store}");
    let draining = handle.clone();
    tokio::spawn(async move {
        http::shutdown_signal().await;
        draining.drain();
    });
    handle.serve(listener, router).await?;
    Ok(())
}
