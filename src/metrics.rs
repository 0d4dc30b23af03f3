//! Metrics: what an operator graphs and alerts on, as Prometheus text at `/metrics`. One registry per node (no
//! global recorder, so an application that embeds stickless keeps its own); every labelled series is created
//! once, up front, so counting on the delivery path is an atomic add, never an allocation. Server-side failures
//! (the store, the hook, a bug) are also logged, at a bounded rate, with the session they hit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The transports, as labels.
const TRANSPORTS: [&str; 3] = ["websocket", "sse", "long-polling"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Label {
    transport: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Source {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

/// Per transport: one series handle each, indexed like [`TRANSPORTS`].
struct ByTransport<M>([M; 3]);

impl<M: Clone> ByTransport<M> {
    fn new<F: Fn() -> M>(family: &Family<Label, M, F>) -> Self {
        ByTransport(TRANSPORTS.map(|t| family.get_or_create(&Label { transport: t.into() }).clone()))
    }

    fn get(&self, transport: &str) -> &M {
        let i = TRANSPORTS.iter().position(|t| *t == transport).unwrap_or(0);
        &self.0[i]
    }
}

struct Inner {
    registry: Registry,
    connections: ByTransport<Gauge>,
    attaches: ByTransport<Counter>,
    delivered: ByTransport<Counter>,
    sessions: Counter,
    published_client: Counter,
    published_backend: Counter,
    gaps: Family<Reason, Counter>,
    disconnects: Family<Reason, Counter>,
    refusals: Family<Reason, Counter>,
    store_latency: Histogram,
    store_errors: Counter,
    slow_consumers: Counter,
    lagged: Counter,
    ready: Gauge,
    draining: Gauge,
    tcp_connections: Gauge,
    tcp_connections_max: Gauge,
    poll_wait: Histogram,
    empty_polls: Counter,
    failures: Mutex<HashMap<&'static str, Logged>>,
}

/// One failure code's log: when its last line was written, and how many failures it has not told since.
struct Logged {
    at: Instant,
    untold: u64,
}

/// Each failure code logs at most one line this often; the line says how many more there were.
pub const FAILURE_LOG_EVERY: Duration = Duration::from_secs(1);

/// This node's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stickless");
        let connections = Family::<Label, Gauge>::default();
        let attaches = Family::<Label, Counter>::default();
        let delivered = Family::<Label, Counter>::default();
        let sessions = Counter::default();
        let published = Family::<Source, Counter>::default();
        let gaps = Family::<Reason, Counter>::default();
        let disconnects = Family::<Reason, Counter>::default();
        let refusals = Family::<Reason, Counter>::default();
        let store_latency = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        let store_errors = Counter::default();
        let ready = Gauge::default();
        registry.register("connections", "Open connections (WebSocket, SSE, waiting polls)", connections.clone());
        registry.register("attaches", "Attaches to a session", attaches.clone());
        registry.register("sessions_created", "Sessions created", sessions.clone());
        registry.register("messages_published", "Messages stored, by who published them", published.clone());
        registry.register("messages_delivered", "Message frames sent to clients", delivered.clone());
        registry.register("gaps", "Gap frames sent: history did not reach back", gaps.clone());
        registry.register("disconnects", "Feeds that ended, by reason", disconnects.clone());
        registry.register("refusals", "Requests and frames refused, by error code", refusals.clone());
        registry.register("store_round_trip_seconds", "Redis round trips (scripts, pipelines)", store_latency.clone());
        registry.register("store_errors", "Redis commands that failed or timed out", store_errors.clone());
        registry.register("ready", "1 when /readyz answers 200", ready.clone());
        let draining = Gauge::default();
        registry.register("draining", "1 from the moment the node drains (SIGTERM)", draining.clone());
        let tcp_connections = Gauge::default();
        registry.register(
            "tcp_connections",
            "Open TCP connections, idle keep-alive ones included",
            tcp_connections.clone(),
        );
        let tcp_connections_max = Gauge::default();
        registry.register("tcp_connections_max", "The node's cap on open TCP connections", tcp_connections_max.clone());
        let poll_wait = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register("poll_wait_seconds", "How long a long-poll waited before it was answered", poll_wait.clone());
        let empty_polls = Counter::default();
        registry.register(
            "empty_polls",
            "Long-polls answered with no frames (the poll timeout passed)",
            empty_polls.clone(),
        );
        let slow_consumers = Counter::default();
        registry.register(
            "slow_consumers_cut",
            "Connections cut because a write waited write_timeout for the client to read",
            slow_consumers.clone(),
        );
        let lagged = Counter::default();
        registry.register(
            "live_lagged",
            "Times a connection fell more than live_buffer messages behind a channel and re-read it (from the live \
             cache when it reached back, else the store)",
            lagged.clone(),
        );
        let published_client = published.get_or_create(&Source { source: "client".into() }).clone();
        let published_backend = published.get_or_create(&Source { source: "backend".into() }).clone();
        Metrics(Arc::new(Inner {
            connections: ByTransport::new(&connections),
            attaches: ByTransport::new(&attaches),
            delivered: ByTransport::new(&delivered),
            registry,
            sessions,
            published_client,
            published_backend,
            gaps,
            disconnects,
            refusals,
            store_latency,
            store_errors,
            slow_consumers,
            lagged,
            ready,
            draining,
            tcp_connections,
            tcp_connections_max,
            poll_wait,
            empty_polls,
            failures: Mutex::default(),
        }))
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.0.registry).expect("writing to a String cannot fail");
        out
    }

    /// Whether the node is draining.
    pub fn set_draining(&self, draining: bool) {
        self.0.draining.set(i64::from(draining));
    }

    /// A TCP connection was admitted (`true`) or closed (`false`).
    pub fn tcp_connection(&self, opened: bool) {
        if opened {
            self.0.tcp_connections.inc();
        } else {
            self.0.tcp_connections.dec();
        }
    }

    /// The node's cap on TCP connections, once it is known (when serving starts).
    pub fn set_tcp_connections_max(&self, max: usize) {
        self.0.tcp_connections_max.set(max as i64);
    }

    /// A long-poll answered after `waited`, with `frames` frames.
    pub fn poll_answered(&self, waited: Duration, frames: usize) {
        self.0.poll_wait.observe(waited.as_secs_f64());
        if frames == 0 {
            self.0.empty_polls.inc();
        }
    }

    /// How loaded the node is: the larger of its live connections over `max_live` and its TCP connections over
    /// their cap (0 while serving has not started).
    pub fn load(&self, max_live: usize) -> f64 {
        let live: i64 = TRANSPORTS.iter().map(|t| self.0.connections.get(t).get()).sum();
        let tcp_max = self.0.tcp_connections_max.get();
        let tcp = if tcp_max > 0 { self.0.tcp_connections.get() as f64 / tcp_max as f64 } else { 0.0 };
        (live as f64 / max_live.max(1) as f64).max(tcp)
    }

    /// A server-side failure (`code`: store_unavailable, hook_unavailable, internal) that a request of `session`
    /// met: logged with the session's id, at most once per [`FAILURE_LOG_EVERY`] per code, with how many more
    /// there were meanwhile. (Clients' own errors are only counted, in `refusals`.)
    pub fn failure(&self, code: &'static str, session: Option<&str>, message: &str) {
        let now = Instant::now();
        let mut failures = self.0.failures.lock().unwrap_or_else(|e| e.into_inner());
        let logged = failures.entry(code).or_insert(Logged { at: now - FAILURE_LOG_EVERY, untold: 0 });
        if now.duration_since(logged.at) < FAILURE_LOG_EVERY {
            logged.untold += 1;
            return;
        }
        let more = std::mem::take(&mut logged.untold);
        logged.at = now;
        drop(failures);
        tracing::warn!(code, session = session.unwrap_or("-"), more_since_last_line = more, "{message}");
    }

    /// A connection cut because the client read nothing while a write waited `write_timeout`.
    pub fn slow_consumer_cut(&self) {
        self.0.slow_consumers.inc();
    }

    /// A connection opened on `transport`; the gauge goes down when the guard drops.
    pub fn connection(&self, transport: &'static str) -> Connection {
        self.0.attaches.get(transport).inc();
        self.0.connections.get(transport).inc();
        Connection { metrics: self.clone(), transport, ended: None }
    }

    pub fn session_created(&self) {
        self.0.sessions.inc();
    }

    pub fn published(&self, by_client: bool) {
        if by_client { &self.0.published_client } else { &self.0.published_backend }.inc();
    }

    pub fn gap(&self, reason: &str) {
        self.0.gaps.get_or_create(&Reason { reason: reason.into() }).inc();
    }

    /// A request or frame refused with `code`.
    pub fn refused(&self, code: &str) {
        self.0.refusals.get_or_create(&Reason { reason: code.into() }).inc();
    }

    /// One round trip to the store.
    pub fn store_round_trip(&self, took: Duration, ok: bool) {
        self.0.store_latency.observe(took.as_secs_f64());
        if !ok {
            self.0.store_errors.inc();
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.0.ready.set(i64::from(ready));
    }
}

/// One open connection: counts what it delivers, and why it ended.
pub struct Connection {
    metrics: Metrics,
    transport: &'static str,
    ended: Option<&'static str>,
}

impl Connection {
    /// A server-side failure this connection's session met (logged at a bounded rate, see [`Metrics::failure`]).
    pub fn failure(&self, code: &'static str, session: &str, message: &str) {
        self.metrics.failure(code, Some(session), message);
    }

    pub fn delivered(&self) {
        self.metrics.0.delivered.get(self.transport).inc();
    }

    pub fn gap(&self, reason: &str) {
        self.metrics.gap(reason);
    }

    /// The connection fell behind a channel's live buffer and re-reads it.
    pub fn lagged(&self) {
        self.metrics.0.lagged.inc();
    }

    /// The feed ended for `reason` (an error code), not because the client went away.
    pub fn ended(&mut self, reason: &'static str) {
        self.ended = Some(reason);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.metrics.0.connections.get(self.transport).dec();
        let reason = self.ended.unwrap_or("closed");
        self.metrics.0.disconnects.get_or_create(&Reason { reason: reason.into() }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_count_up_and_down_and_end_with_a_reason() {
        let metrics = Metrics::new();
        let mut ws = metrics.connection("websocket");
        let _sse = metrics.connection("sse");
        ws.delivered();
        ws.ended("token_expired");
        assert!(metrics.encode().contains(r#"stickless_connections{transport="websocket"} 1"#));
        drop(ws);
        let text = metrics.encode();
        assert!(text.contains(r#"stickless_connections{transport="websocket"} 0"#), "{text}");
        assert!(text.contains(r#"stickless_messages_delivered_total{transport="websocket"} 1"#), "{text}");
        assert!(text.contains(r#"stickless_disconnects_total{reason="token_expired"} 1"#), "{text}");
    }
}
