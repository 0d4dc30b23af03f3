//! Settings: everything an operator (through flags, see `config.rs`) or an embedding application can set, with
//! every default written once, here.

use std::path::PathBuf;
use std::time::Duration;

use stickless_transports::{Transport, TransportConfig};

use crate::auth::hooks::HookSettings;
use crate::auth::token::TokenSettings;
use crate::auth::{Namespace, Namespaces};
use crate::limits::LimitSettings;
use crate::model::ChannelName;
use crate::store::redis::Durability;
use crate::store::{Keep, Retention};

/// The files a node serves at `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebFiles {
    /// None: the router answers only the API (an embedding application serves its own pages).
    Off,
    /// The demo and the client as built into the binary (`web/`).
    Embedded,
    /// A directory's files.
    Dir(PathBuf),
}

/// The largest `live_buffer` taken (65,536 slots, about 2.5 MiB per channel with a listener).
pub const MAX_LIVE_BUFFER: usize = 1 << 16;

/// How one stickless node behaves. `Settings::default()` is a complete, safe configuration for a single node
/// on the embedded store.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name, shown to clients (`None`: a random one).
    pub node_id: Option<String>,
    /// Redis (redis://, rediss://, redis-cluster://, redis-sentinel://); `None`: the embedded in-memory store.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and pub/sub channel.
    pub redis_prefix: String,
    /// Acknowledge a publish only once this many Redis replicas have it (`WAIT`); 0: once the primary has it.
    pub redis_min_replicas: usize,
    /// How long a publish waits for those replicas before answering 503 (outcome unknown).
    pub redis_replica_timeout: Duration,
    /// The transports served.
    pub transports: Vec<Transport>,
    /// Messages each channel keeps for resume.
    pub history_size: usize,
    /// How long a message is kept for resume.
    pub history_ttl: Duration,
    /// How long a session lives without any request or open connection.
    pub session_ttl: Duration,
    /// How long a publish's client id or idempotency key is remembered.
    pub dedupe_ttl: Duration,
    /// How long a long-poll waits for frames before answering empty.
    pub poll_timeout: Duration,
    /// Time between heartbeats on WebSocket and SSE.
    pub heartbeat: Duration,
    /// Largest frame, message data or request body, in bytes.
    pub max_message_bytes: usize,
    /// How deeply message data may nest arrays and objects.
    pub max_data_depth: usize,
    /// Most channels one session subscribes to.
    pub max_subscriptions: usize,
    /// Most frames in one `POST /v1/send` (and messages in one batch publish).
    pub max_frames_per_send: usize,
    /// Most frames in one poll response or history read.
    pub max_batch: usize,
    /// Most live connections (WebSocket, SSE, waiting polls) on this node.
    pub max_connections: usize,
    /// The most bytes a WebSocket may have queued for a client that does not read (pongs included); at least
    /// twice `max_message_bytes`.
    pub send_buffer_bytes: usize,
    /// How long one write may wait for a client to read before its connection is cut (WebSocket, SSE, any
    /// response).
    pub write_timeout: Duration,
    /// How long a client may take to send a request's headers, counted from when the server waits for them (so
    /// also how long a keep-alive connection may sit idle between requests).
    pub header_timeout: Duration,
    /// How long a client may take to send a whole request body.
    pub body_timeout: Duration,
    /// How long this node keeps a Redis pub/sub subscription (a channel's, a session's) after the last connection
    /// that needed it left: a long-polling client needs it again with its next poll (0: unsubscribe at once).
    pub topic_linger: Duration,
    /// TCP_NODELAY on accepted connections: a frame goes out at once, not held by Nagle's algorithm until the
    /// client acknowledges the previous one (which a client's delayed ACK can make 40 ms). Off by default: under
    /// load Nagle coalesces frames into fewer packets, measured 1.7x less CPU per delivery in bursts.
    pub tcp_nodelay: bool,
    /// With Redis: how many of a channel's newest messages, heard live, a node keeps to answer resuming clients
    /// (a long-poll resumes every poll) without reading the store (0: always read the store), and in how many
    /// bytes at most per channel.
    pub live_cache_messages: usize,
    pub live_cache_bytes: usize,
    /// How many of a channel's live messages a node holds for its listeners there: a listener further behind
    /// (a slow client) re-reads what it missed, from the live cache when it reaches back, else from the store.
    /// Every channel with a listener on a node holds this many slots from the start (about 40 bytes each), so
    /// it is the cost of a per-user channel; the live cache (with Redis), which grows only with traffic, covers
    /// the rest. tokio rounds it up to a power of two; at most [`MAX_LIVE_BUFFER`].
    pub live_buffer: usize,
    /// With Redis: a node keeps the session record a long-poll read while it holds the session's control
    /// subscription (which tells every change), so the session's next poll here reads nothing from the store;
    /// a kept record is read again after a third of `session_ttl` (which also refreshes the session's TTL).
    pub session_cache: bool,
    /// The most TCP connections open at once on this node, idle keep-alive ones included (`None`: the process's
    /// open-file limit, raised to its hard limit, less 128 kept for Redis, hooks and files).
    pub max_tcp_connections: Option<usize>,
    /// `/readyz` answers 503 while the live connections or the TCP connections are over this fraction of their
    /// caps (`max_connections`, `max_tcp_connections`), so a balancer sends new clients elsewhere.
    pub ready_max_load: f64,
    /// Draining (SIGTERM): each client is told to reconnect after a delay drawn at random over this window.
    pub drain_window: Duration,
    /// Draining: the process exits within this, in-flight requests finished or not.
    pub drain_timeout: Duration,
    /// Origins allowed to open WebSockets (empty: any).
    pub allowed_origins: Vec<String>,
    /// Bearer key required by `/v1/publish` and `/v1/presence` (`None`: none required).
    pub api_key: Option<String>,
    /// Whether clients may list a channel's subscribers with `presence` frames.
    pub client_presence: bool,
    /// The files served at `/` (the demo and the client), if any.
    pub web: WebFiles,
    /// Publish a demo ticker to `demo:ticker` this often (`None`: off).
    pub demo_ticker: Option<Duration>,
    /// Who may do what, per namespace. The default lets anonymous clients use only `demo:` channels.
    pub namespaces: Namespaces,
    /// How connection tokens are verified (none configured: no token is accepted).
    pub token: TokenSettings,
    /// The application's backend hooks.
    pub hooks: HookSettings,
    /// Rate limits and quotas.
    pub limits: LimitSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node_id: None,
            redis_url: None,
            redis_prefix: "sl".into(),
            redis_min_replicas: 0,
            redis_replica_timeout: Duration::from_secs(1),
            transports: Transport::ALL.to_vec(),
            history_size: 1000,
            history_ttl: Duration::from_secs(3600),
            session_ttl: Duration::from_secs(60),
            dedupe_ttl: Duration::from_secs(300),
            poll_timeout: Duration::from_secs(25),
            heartbeat: Duration::from_secs(15),
            max_message_bytes: 64 * 1024,
            max_data_depth: 32,
            max_subscriptions: 64,
            max_frames_per_send: 100,
            max_batch: 100,
            max_connections: 100_000,
            send_buffer_bytes: 1 << 20,
            write_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(30),
            topic_linger: Duration::from_secs(30),
            tcp_nodelay: false,
            live_cache_messages: 512,
            live_cache_bytes: 256 * 1024,
            live_buffer: crate::hub::LIVE_BUFFER,
            session_cache: true,
            max_tcp_connections: None,
            ready_max_load: 0.9,
            drain_window: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            allowed_origins: Vec::new(),
            api_key: None,
            client_presence: true,
            web: WebFiles::Off,
            demo_ticker: None,
            namespaces: Namespaces::default(),
            token: TokenSettings::default(),
            hooks: HookSettings::default(),
            limits: LimitSettings::default(),
        }
    }
}

impl Settings {
    /// The settings with values that would break the server raised to their floor (a zero TTL, a batch of 0).
    pub(crate) fn sane(mut self) -> Self {
        let floor = |d: Duration, min: Duration| d.max(min);
        self.history_size = self.history_size.max(1);
        self.history_ttl = floor(self.history_ttl, Duration::from_secs(1));
        self.session_ttl = floor(self.session_ttl, Duration::from_secs(1));
        self.dedupe_ttl = floor(self.dedupe_ttl, Duration::from_secs(1));
        self.heartbeat = floor(self.heartbeat, Duration::from_millis(100));
        self.max_batch = self.max_batch.max(1);
        self.max_frames_per_send = self.max_frames_per_send.max(1);
        // tokio allocates every slot up front (rounded up to a power of two) and panics past usize::MAX / 2.
        self.live_buffer = self.live_buffer.clamp(1, MAX_LIVE_BUFFER);
        self.header_timeout = floor(self.header_timeout, Duration::from_millis(100));
        self.body_timeout = floor(self.body_timeout, Duration::from_millis(100));
        self.write_timeout = floor(self.write_timeout, Duration::from_millis(100));
        // A fraction of the caps; anything else (0, negative, NaN) would make the node never ready.
        self.ready_max_load = if self.ready_max_load > 0.0 { self.ready_max_load.min(1.0) } else { 1.0 };
        if self.write_timeout >= self.session_ttl / 2 {
            // An open connection keeps its session alive (its feed touches it every third of the TTL), so one
            // whose client stopped reading must be cut well before the session could expire under it.
            let lowered = self.session_ttl / 2;
            tracing::info!("write_timeout {:?} lowered to {lowered:?}, half of session_ttl", self.write_timeout);
            self.write_timeout = lowered;
        }
        // Browsers send `scheme://host[:port]`, never a trailing slash.
        for origin in &mut self.allowed_origins {
            *origin = origin.trim().trim_end_matches('/').to_owned();
        }
        self
    }

    pub(crate) fn durability(&self) -> Durability {
        Durability { min_replicas: self.redis_min_replicas, replica_timeout: self.redis_replica_timeout }
    }

    pub(crate) fn retention(&self) -> Retention {
        Retention {
            history_size: self.history_size,
            history_ttl: self.history_ttl,
            session_ttl: self.session_ttl,
            dedupe_ttl: self.dedupe_ttl,
        }
    }

    /// What `channel` keeps: its namespace's history size and age, or the server's.
    pub(crate) fn keep(&self, channel: &ChannelName) -> Keep {
        let ns: &Namespace = self.namespaces.of(channel);
        Keep {
            size: ns.history_size.unwrap_or(self.history_size).max(1),
            ttl: ns.history_ttl.unwrap_or(self.history_ttl),
        }
    }

    /// The largest message data `channel` accepts.
    pub(crate) fn max_message_bytes(&self, channel: &ChannelName) -> usize {
        self.namespaces.of(channel).max_message_bytes.unwrap_or(self.max_message_bytes).min(self.max_message_bytes)
    }

    pub(crate) fn transport(&self) -> TransportConfig {
        TransportConfig {
            enabled: self.transports.clone(),
            heartbeat: self.heartbeat,
            poll_timeout: self.poll_timeout,
            max_message_bytes: self.max_message_bytes,
            max_batch: self.max_batch,
            max_connections: self.max_connections,
            allowed_origins: self.allowed_origins.clone(),
            send_buffer: self.send_buffer_bytes,
            write_timeout: self.write_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tokio's broadcast needs at least one slot and allocates them all up front: the live buffer is held to
    /// 1..=MAX_LIVE_BUFFER, as the README says.
    #[test]
    fn the_live_buffer_is_held_between_one_slot_and_the_cap() {
        let with = |live_buffer| Settings { live_buffer, ..Settings::default() }.sane().live_buffer;
        assert_eq!(with(0), 1);
        assert_eq!(with(32), 32);
        assert_eq!(with(usize::MAX), MAX_LIVE_BUFFER);
    }
}
