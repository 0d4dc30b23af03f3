//! The command line: every [`Settings`] field as a flag, each also settable by a `STICKLESS_*` environment
//! variable. Defaults come from `Settings::default()`; only the demo ticker and the web directory default
//! differently here, because the binary serves the demo and an embedding application does not.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use stickless_transports::Transport;

use crate::settings::Settings;

fn defaults() -> Settings {
    Settings::default()
}

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
    #[arg(long, env = "STICKLESS_REDIS_PREFIX", default_value_t = defaults().redis_prefix)]
    pub redis_prefix: String,

    /// Transports to serve, comma-separated (websocket, sse, long-polling).
    #[arg(long, env = "STICKLESS_TRANSPORTS", default_value_t = TransportList(defaults().transports), value_parser = parse_transports)]
    pub transports: TransportList,

    /// This node's name, shown to clients (default: a random one).
    #[arg(long, env = "STICKLESS_NODE_ID")]
    pub node_id: Option<String>,

    /// Messages each channel keeps for resume.
    #[arg(long, env = "STICKLESS_HISTORY_SIZE", default_value_t = defaults().history_size)]
    pub history_size: usize,

    /// Seconds a message is kept for resume.
    #[arg(long, env = "STICKLESS_HISTORY_TTL", default_value_t = defaults().history_ttl.as_secs())]
    pub history_ttl: u64,

    /// Seconds a session lives without any request or open connection.
    #[arg(long, env = "STICKLESS_SESSION_TTL", default_value_t = defaults().session_ttl.as_secs())]
    pub session_ttl: u64,

    /// Seconds a publish's client id or idempotency key is remembered.
    #[arg(long, env = "STICKLESS_DEDUPE_TTL", default_value_t = defaults().dedupe_ttl.as_secs())]
    pub dedupe_ttl: u64,

    /// Milliseconds a long-poll waits for frames before answering empty.
    #[arg(long, env = "STICKLESS_POLL_TIMEOUT_MS", default_value_t = defaults().poll_timeout.as_millis() as u64)]
    pub poll_timeout_ms: u64,

    /// Milliseconds between heartbeats on WebSocket and SSE.
    #[arg(long, env = "STICKLESS_HEARTBEAT_MS", default_value_t = defaults().heartbeat.as_millis() as u64)]
    pub heartbeat_ms: u64,

    /// Largest frame, message data or request body, in bytes.
    #[arg(long, env = "STICKLESS_MAX_MESSAGE_BYTES", default_value_t = defaults().max_message_bytes)]
    pub max_message_bytes: usize,

    /// Most channels one session subscribes to.
    #[arg(long, env = "STICKLESS_MAX_SUBSCRIPTIONS", default_value_t = defaults().max_subscriptions)]
    pub max_subscriptions: usize,

    /// Most frames in one POST /v1/send.
    #[arg(long, env = "STICKLESS_MAX_FRAMES_PER_SEND", default_value_t = defaults().max_frames_per_send)]
    pub max_frames_per_send: usize,

    /// Most frames in one poll response or history read.
    #[arg(long, env = "STICKLESS_MAX_BATCH", default_value_t = defaults().max_batch)]
    pub max_batch: usize,

    /// Most live connections (WebSocket, SSE, waiting polls) on this node.
    #[arg(long, env = "STICKLESS_MAX_CONNECTIONS", default_value_t = defaults().max_connections)]
    pub max_connections: usize,

    /// Origins allowed to open WebSockets, comma-separated (default: any).
    #[arg(long, env = "STICKLESS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Bearer key required by POST /v1/publish and GET /v1/presence (default: none required).
    #[arg(long, env = "STICKLESS_API_KEY")]
    pub api_key: Option<String>,

    /// Whether clients may list a channel's subscribers with `presence` frames.
    #[arg(long, env = "STICKLESS_CLIENT_PRESENCE", default_value_t = defaults().client_presence, action = clap::ArgAction::Set)]
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

impl std::fmt::Display for TransportList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.0.iter().map(|t| t.name()).collect();
        f.write_str(&names.join(","))
    }
}

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
    /// The settings these flags describe.
    pub fn settings(&self) -> Settings {
        Settings {
            node_id: self.node_id.clone(),
            redis_url: self.redis_url.clone(),
            redis_prefix: self.redis_prefix.clone(),
            transports: self.transports.0.clone(),
            history_size: self.history_size,
            history_ttl: Duration::from_secs(self.history_ttl),
            session_ttl: Duration::from_secs(self.session_ttl),
            dedupe_ttl: Duration::from_secs(self.dedupe_ttl),
            poll_timeout: Duration::from_millis(self.poll_timeout_ms),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            max_message_bytes: self.max_message_bytes,
            max_subscriptions: self.max_subscriptions,
            max_frames_per_send: self.max_frames_per_send,
            max_batch: self.max_batch,
            max_connections: self.max_connections,
            allowed_origins: self.allowed_origins.clone(),
            api_key: self.api_key.clone(),
            client_presence: self.client_presence,
            web_dir: Some(self.web_dir.clone()),
            demo_ticker: (self.demo_ticker_ms > 0).then(|| Duration::from_millis(self.demo_ticker_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_default_to_the_settings_defaults() {
        let settings = Config::parse_from(["stickless"]).settings();
        let defaults = Settings::default();
        assert_eq!(format!("{:?}", Settings { web_dir: None, demo_ticker: None, ..settings }), format!("{defaults:?}"));
    }
}
