//! Configuration: command-line flags, each also settable by a `STICKLESS_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use stickless_transports::{Transport, TransportConfig};

use crate::gateway::CoreConfig;
use crate::store::Retention;

/// stickless: a realtime gateway serving WebSocket, SSE and long-polling over one resumable session model.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "STICKLESS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Redis URL (redis://, rediss://, redis-cluster://host:port,host:port, redis-sentinel://...); without it
    /// this node runs on an embedded in-memory store.
    #[arg(long, env = "STICKLESS_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and pub/sub channel.
    #[arg(long, env = "STICKLESS_REDIS_PREFIX", default_value = "sl")]
    pub redis_prefix: String,

    /// Transports to serve, comma-separated (websocket, sse, long-polling).
    #[arg(long, env = "STICKLESS_TRANSPORTS", default_value = "websocket,sse,long-polling", value_parser = parse_transports)]
    pub transports: TransportList,

    /// This node's name, shown to clients (default: a random one).
    #[arg(long, env = "STICKLESS_NODE_ID")]
    pub node_id: Option<String>,

    /// Messages each channel keeps for resume.
    #[arg(long, env = "STICKLESS_HISTORY_SIZE", default_value_t = 1000)]
    pub history_size: usize,

    /// Seconds a message is kept for resume.
    #[arg(long, env = "STICKLESS_HISTORY_TTL", default_value_t = 3600)]
    pub history_ttl: u64,

    /// Seconds a session lives without any request or open connection.
    #[arg(long, env = "STICKLESS_SESSION_TTL", default_value_t = 60)]
    pub session_ttl: u64,

    /// Seconds a publish's client id or idempotency key is remembered.
    #[arg(long, env = "STICKLESS_DEDUPE_TTL", default_value_t = 300)]
    pub dedupe_ttl: u64,

    /// Milliseconds a long-poll waits for frames before answering empty.
    #[arg(long, env = "STICKLESS_POLL_TIMEOUT_MS", default_value_t = 25_000)]
    pub poll_timeout_ms: u64,

    /// Milliseconds between heartbeats on WebSocket and SSE.
    #[arg(long, env = "STICKLESS_HEARTBEAT_MS", default_value_t = 15_000)]
    pub heartbeat_ms: u64,

    /// Largest frame, message data or request body, in bytes.
    #[arg(long, env = "STICKLESS_MAX_MESSAGE_BYTES", default_value_t = 65_536)]
    pub max_message_bytes: usize,

    /// Most channels one session subscribes to.
    #[arg(long, env = "STICKLESS_MAX_SUBSCRIPTIONS", default_value_t = 64)]
    pub max_subscriptions: usize,

    /// Most frames in one POST /v1/send.
    #[arg(long, env = "STICKLESS_MAX_FRAMES_PER_SEND", default_value_t = 100)]
    pub max_frames_per_send: usize,

    /// Most frames in one poll response or history read.
    #[arg(long, env = "STICKLESS_MAX_BATCH", default_value_t = 100)]
    pub max_batch: usize,

    /// Most live connections (WebSocket, SSE, waiting polls) on this node.
    #[arg(long, env = "STICKLESS_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Origins allowed to open WebSockets, comma-separated (default: any).
    #[arg(long, env = "STICKLESS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Bearer key required by POST /v1/publish and GET /v1/presence (default: none required).
    #[arg(long, env = "STICKLESS_API_KEY")]
    pub api_key: Option<String>,

    /// Whether clients may list a channel's subscribers with `presence` frames.
    #[arg(long, env = "STICKLESS_CLIENT_PRESENCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub client_presence: bool,

    /// Directory served at / (the demo).
    #[arg(long, env = "STICKLESS_WEB_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/web"))]
    pub web_dir: PathBuf,

    /// Publish a demo ticker to `demo.ticker` every N milliseconds (0: off). Turn it off in production.
    #[arg(long, env = "STICKLESS_DEMO_TICKER_MS", default_value_t = 1000)]
    pub demo_ticker_ms: u64,

    /// Log format: text or json.
    #[arg(long, env = "STICKLESS_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// The transports to serve.
#[derive(Debug, Clone)]
pub struct TransportList(pub Vec<Transport>);

fn parse_transports(text: &str) -> Result<TransportList, String> {
    let list: Vec<_> = text
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| Transport::parse(t).ok_or_else(|| format!("unknown transport `{t}`")))
        .collect::<Result<_, _>>()?;
    if list.is_empty() {
        return Err("at least one transport is required".into());
    }
    Ok(TransportList(list))
}

impl Config {
    pub fn node(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| format!("node-{}", &crate::random_hex(2)))
    }

    pub fn retention(&self) -> Retention {
        Retention {
            history_size: self.history_size.max(1),
            history_ttl: Duration::from_secs(self.history_ttl.max(1)),
            session_ttl: Duration::from_secs(self.session_ttl.max(1)),
            dedupe_ttl: Duration::from_secs(self.dedupe_ttl.max(1)),
        }
    }

    pub fn core(&self, node: String) -> CoreConfig {
        CoreConfig {
            node,
            heartbeat: Duration::from_millis(self.heartbeat_ms.max(100)),
            session_ttl: Duration::from_secs(self.session_ttl.max(1)),
            max_message_bytes: self.max_message_bytes,
            max_subscriptions: self.max_subscriptions,
            max_frames_per_send: self.max_frames_per_send,
            max_batch: self.max_batch.max(1),
            client_presence: self.client_presence,
        }
    }

    pub fn transport(&self) -> TransportConfig {
        TransportConfig {
            enabled: self.transports.0.clone(),
            heartbeat: Duration::from_millis(self.heartbeat_ms.max(100)),
            poll_timeout: Duration::from_millis(self.poll_timeout_ms),
            max_message_bytes: self.max_message_bytes,
            max_batch: self.max_batch.max(1),
            max_connections: self.max_connections,
            allowed_origins: self.allowed_origins.clone(),
            ..TransportConfig::default()
        }
    }
}
