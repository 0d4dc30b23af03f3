//! Embedding: a node's [`Router`] built from [`Settings`] without the CLI, to mount inside an application's own
//! axum server, with a [`Handle`] to shut it down. The `stickless` binary is this plus flags and a listener.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use stickless_transports::Lifecycle;

use crate::gateway::Gateway;
use crate::http::ServeSettings;
use crate::hub::{Hub, Keeping};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::{Store, StoreError};

/// Builds a node: `Builder::new().settings(settings).build().await?` gives its router and handle.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    settings: Settings,
}

/// Why a node could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot reach Redis at {url}: {source}")]
    Redis { url: String, source: StoreError },
    #[error("{0}")]
    Settings(String),
}

impl Builder {
    /// A builder with [`Settings::default`]: one node on the embedded store.
    pub fn new() -> Self {
        Builder::default()
    }

    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Connects the store (Redis when `redis_url` is set) and returns the router with every stickless route
    /// (`/v1/...`, and `web` as the fallback when set) and the node's handle. Call it inside a tokio runtime.
    pub async fn build(self) -> Result<(Router, Handle), BuildError> {
        let settings = self.settings.sane();
        let node = settings.node_id.clone().unwrap_or_else(|| format!("node-{}", crate::model::random_hex(2)));
        // One set of limiters for the node: the gateway's, and the store's for the channels it creates.
        let limits = Limits::new(&settings.limits);
        let metrics = Metrics::new();
        let handle = Handle {
            lifecycle: Lifecycle::default(),
            node: node.clone(),
            serving: Arc::new((ServeSettings::of(&settings), limits.clone(), metrics.clone())),
        };
        let router = match &settings.redis_url {
            None => {
                let hub = Hub::local_keeping(Keeping { live_buffer: settings.live_buffer, ..Keeping::default() });
                let store = MemoryStore::bounded(settings.retention(), hub.clone(), limits.clone());
                store.spawn_sweeper(Duration::from_secs(5));
                assemble(store, hub, &settings, &handle, limits, metrics)?
            }
            Some(url) => {
                let keeping = Keeping {
                    linger: settings.topic_linger,
                    recent_messages: settings.live_cache_messages,
                    recent_bytes: settings.live_cache_bytes,
                    sessions: settings.session_cache.then_some(settings.session_ttl / 3),
                    live_buffer: settings.live_buffer,
                };
                let (hub, commands) = Hub::with_listener_keeping(keeping);
                let (prefix, retention) = (&settings.redis_prefix, settings.retention());
                let observed = (limits.clone(), metrics.clone());
                let store = RedisStore::connect_limited(
                    url,
                    prefix,
                    retention,
                    hub.clone(),
                    commands,
                    observed.0,
                    observed.1,
                    settings.durability(),
                )
                .await
                .map_err(|source| BuildError::Redis { url: url.clone(), source })?;
                assemble(store, hub, &settings, &handle, limits, metrics)?
            }
        };
        for line in settings.namespaces.describe_anonymous() {
            tracing::info!("{line}");
        }
        Ok((router, handle))
    }
}

fn assemble<S: Store>(
    store: Arc<S>,
    hub: Arc<Hub>,
    settings: &Settings,
    handle: &Handle,
    limits: Limits,
    metrics: Metrics,
) -> Result<Router, BuildError> {
    let gateway = Gateway::new(store, hub, settings.clone(), handle.node.clone(), limits, metrics)
        .map_err(BuildError::Settings)?;
    if let Some(every) = settings.demo_ticker {
        crate::demo::spawn_ticker(gateway.clone(), every, handle.lifecycle.shutdown.clone());
    }
    Ok(crate::http::router(gateway, settings, handle.lifecycle.clone()))
}

/// A built node's controls. Clones control the same node.
#[derive(Clone)]
pub struct Handle {
    lifecycle: Lifecycle,
    node: String,
    serving: Arc<(ServeSettings, Limits, Metrics)>,
}

impl Handle {
    /// The node's name, as clients see it.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Serves `router` (this node's, or an application's that merged it) on `listener` as the `stickless`
    /// binary does: TCP connection caps per node and per client address, header and write deadlines, and the
    /// drain once [`Handle::drain`] is called (the binary calls it on SIGTERM or SIGINT). Returns once drained,
    /// within the drain timeout.
    pub async fn serve(self, listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
        let (settings, limits, metrics) = (*self.serving).clone();
        crate::http::serve(listener, router, self.lifecycle, settings, (limits, metrics)).await
    }

    /// Starts draining: `/readyz` turns 503, new attaches get 503 `draining`, and every connection is told to
    /// reconnect after a random delay over the drain window, and ends. Call [`Handle::shutdown`] after.
    pub fn drain(&self) {
        self.lifecycle.drain.cancel();
    }

    /// Ends the node's live connections: WebSockets close with 1001, SSE streams end, waiting polls answer.
    pub fn shutdown(&self) {
        self.lifecycle.shutdown.cancel();
    }

    /// Resolves once [`Handle::shutdown`] was called: give it to axum's `with_graceful_shutdown`, which waits
    /// for open SSE bodies only once they have ended.
    pub fn shutdown_requested(&self) -> impl Future<Output = ()> + Send + 'static {
        self.lifecycle.shutdown.clone().cancelled_owned()
    }

    /// Waits (at most `limit`) for upgraded WebSocket tasks to finish after shutdown; axum does not wait for them.
    pub async fn finished(&self, limit: Duration) {
        self.lifecycle.tasks.close();
        let _ = tokio::time::timeout(limit, self.lifecycle.tasks.wait()).await;
    }
}
