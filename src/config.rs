//! The command line and the configuration file. Every [`Settings`] field can be set in a TOML file
//! (`--config FILE` or `STICKLESS_CONFIG`; `examples/config.toml` shows and explains every key), and the common
//! ones by a flag, each also settable by a `STICKLESS_*` environment variable. A flag or variable that is given
//! overrides the file; the file overrides the defaults of `Settings::default()`. Only the demo ticker and the web
//! directory default differently here, because the binary serves the demo and an embedding application does not.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;
use stickless_transports::Transport;

use crate::auth::Namespace;
use crate::limits::ProxyRange;
use crate::settings::{Settings, WebFiles};

fn defaults() -> Settings {
    Settings::default()
}

/// stickless: a realtime gateway serving WebSocket, SSE and long-polling over one resumable session model.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Config {
    /// A TOML configuration file (see examples/config.toml); flags and environment variables override it.
    #[arg(long, env = "STICKLESS_CONFIG")]
    pub config: Option<PathBuf>,

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

    /// Acknowledge a publish only once this many Redis replicas confirm it (WAIT); 0: once the primary has it.
    #[arg(long, env = "STICKLESS_REDIS_MIN_REPLICAS", default_value_t = defaults().redis_min_replicas)]
    pub redis_min_replicas: usize,

    /// Milliseconds a publish waits for --redis-min-replicas before answering 503 (outcome unknown).
    #[arg(long, env = "STICKLESS_REDIS_REPLICA_TIMEOUT_MS", default_value_t = defaults().redis_replica_timeout.as_millis() as u64)]
    pub redis_replica_timeout_ms: u64,

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

    /// How deeply message data may nest arrays and objects.
    #[arg(long, env = "STICKLESS_MAX_DATA_DEPTH", default_value_t = defaults().max_data_depth)]
    pub max_data_depth: usize,

    /// Most frames in one POST /v1/send.
    #[arg(long, env = "STICKLESS_MAX_FRAMES_PER_SEND", default_value_t = defaults().max_frames_per_send)]
    pub max_frames_per_send: usize,

    /// Most frames in one poll response or history read.
    #[arg(long, env = "STICKLESS_MAX_BATCH", default_value_t = defaults().max_batch)]
    pub max_batch: usize,

    /// Most live connections (WebSocket, SSE, waiting polls) on this node.
    #[arg(long, env = "STICKLESS_MAX_CONNECTIONS", default_value_t = defaults().max_connections)]
    pub max_connections: usize,

    /// The most bytes a WebSocket may have queued for a client that does not read (pongs included).
    #[arg(long, env = "STICKLESS_SEND_BUFFER_BYTES", default_value_t = defaults().send_buffer_bytes)]
    pub send_buffer_bytes: usize,

    /// Milliseconds one write may wait for a client to read before its connection is cut.
    #[arg(long, env = "STICKLESS_WRITE_TIMEOUT_MS", default_value_t = defaults().write_timeout.as_millis() as u64)]
    pub write_timeout_ms: u64,

    /// Milliseconds a client may take to send a request's headers (also how long a keep-alive connection may
    /// sit idle between requests).
    #[arg(long, env = "STICKLESS_HEADER_TIMEOUT_MS", default_value_t = defaults().header_timeout.as_millis() as u64)]
    pub header_timeout_ms: u64,

    /// Milliseconds a client may take to send a whole request body.
    #[arg(long, env = "STICKLESS_BODY_TIMEOUT_MS", default_value_t = defaults().body_timeout.as_millis() as u64)]
    pub body_timeout_ms: u64,

    /// Milliseconds this node keeps a Redis pub/sub subscription after the last connection that needed it left
    /// (a long-polling client needs it again with its next poll; 0: unsubscribe at once).
    #[arg(long, env = "STICKLESS_TOPIC_LINGER_MS", default_value_t = defaults().topic_linger.as_millis() as u64)]
    pub topic_linger_ms: u64,

    /// TCP_NODELAY on accepted connections (frames go out at once rather than waiting for the client's ACK of
    /// the previous one).
    #[arg(long, env = "STICKLESS_TCP_NODELAY", default_value_t = defaults().tcp_nodelay, action = clap::ArgAction::Set)]
    pub tcp_nodelay: bool,

    /// With Redis: how many of a channel's newest messages, heard live, a node keeps to answer resuming clients
    /// without reading the store (0: always read the store).
    #[arg(long, env = "STICKLESS_LIVE_CACHE_MESSAGES", default_value_t = defaults().live_cache_messages)]
    pub live_cache_messages: usize,

    /// With Redis: the most bytes of message frames that cache keeps per channel.
    #[arg(long, env = "STICKLESS_LIVE_CACHE_BYTES", default_value_t = defaults().live_cache_bytes)]
    pub live_cache_bytes: usize,

    /// How many of a channel's live messages a node holds for its listeners; a listener further behind re-reads
    /// (from the live cache when it reaches back). Each channel with a listener holds this many slots.
    #[arg(long, env = "STICKLESS_LIVE_BUFFER", default_value_t = defaults().live_buffer)]
    pub live_buffer: usize,

    /// With Redis: keep the session a long-poll read, on this node, while the session's pub/sub topic (which
    /// tells every change) lingers, so its next poll here reads no session from Redis.
    #[arg(long, env = "STICKLESS_SESSION_CACHE", default_value_t = defaults().session_cache, action = clap::ArgAction::Set)]
    pub session_cache: bool,

    /// Most TCP connections open at once on this node, idle ones included (default: the open-file limit, raised
    /// to the hard limit, less 128).
    #[arg(long, env = "STICKLESS_MAX_TCP_CONNECTIONS")]
    pub max_tcp_connections: Option<usize>,

    /// Most TCP connections one client address may hold open (0: no cap; trusted proxies are not capped).
    #[arg(long, env = "STICKLESS_CONNECTIONS_PER_IP", default_value_t = defaults().limits.connections_per_ip)]
    pub connections_per_ip: u32,

    /// /readyz answers 503 while live or TCP connections are over this fraction of their caps.
    #[arg(long, env = "STICKLESS_READY_MAX_LOAD", default_value_t = defaults().ready_max_load)]
    pub ready_max_load: f64,

    /// Milliseconds over which a draining node (SIGTERM) spreads its clients' reconnects.
    #[arg(long, env = "STICKLESS_DRAIN_WINDOW_MS", default_value_t = defaults().drain_window.as_millis() as u64)]
    pub drain_window_ms: u64,

    /// Milliseconds within which a draining node exits.
    #[arg(long, env = "STICKLESS_DRAIN_TIMEOUT_MS", default_value_t = defaults().drain_timeout.as_millis() as u64)]
    pub drain_timeout_ms: u64,

    /// Origins allowed to open WebSockets, comma-separated (default: any).
    #[arg(long, env = "STICKLESS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Bearer key required by POST /v1/publish and GET /v1/presence (default: none required).
    #[arg(long, env = "STICKLESS_API_KEY")]
    pub api_key: Option<String>,

    /// Whether clients may list a channel's subscribers with `presence` frames.
    #[arg(long, env = "STICKLESS_CLIENT_PRESENCE", default_value_t = defaults().client_presence, action = clap::ArgAction::Set)]
    pub client_presence: bool,

    /// Directory served at / instead of the demo and client built into the binary.
    #[arg(long, env = "STICKLESS_WEB_DIR")]
    pub web_dir: Option<PathBuf>,

    /// Publish a demo ticker to `demo:ticker` every N milliseconds (0: off). Turn it off in production.
    #[arg(long, env = "STICKLESS_DEMO_TICKER_MS", default_value_t = 1000)]
    pub demo_ticker_ms: u64,

    /// Log format: text or json.
    #[arg(long, env = "STICKLESS_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// HS256 secret connection tokens are signed with (at least 32 bytes).
    #[arg(long, env = "STICKLESS_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// A PEM public key connection tokens are signed for (RSA: RS256; EC P-256: ES256).
    #[arg(long, env = "STICKLESS_TOKEN_PUBLIC_KEY")]
    pub token_public_key: Option<PathBuf>,

    /// A JWKS file of keys connection tokens are signed for (chosen by `kid`).
    #[arg(long, env = "STICKLESS_TOKEN_JWKS")]
    pub token_jwks: Option<PathBuf>,

    /// The `iss` connection tokens must carry.
    #[arg(long, env = "STICKLESS_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,

    /// The `aud` connection tokens must carry.
    #[arg(long, env = "STICKLESS_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,

    /// The application's hook endpoint (connect, subscribe, publish).
    #[arg(long, env = "STICKLESS_HOOK_URL")]
    pub hook_url: Option<String>,

    /// The HMAC-SHA256 key hook requests are signed with.
    #[arg(long, env = "STICKLESS_HOOK_SECRET", hide_env_values = true)]
    pub hook_secret: Option<String>,

    /// Milliseconds a hook may take before the client gets `hook_unavailable`.
    #[arg(long, env = "STICKLESS_HOOK_TIMEOUT_MS", default_value_t = defaults().hooks.timeout.as_millis() as u64)]
    pub hook_timeout_ms: u64,

    /// Send clients that connect without a token to the connect hook.
    #[arg(long, env = "STICKLESS_HOOK_CONNECT", default_value_t = defaults().hooks.connect, action = clap::ArgAction::Set)]
    pub hook_connect: bool,

    /// Proxies whose X-Forwarded-For names the client (comma-separated addresses or ranges, e.g. 10.0.0.0/8).
    #[arg(long, env = "STICKLESS_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<ProxyRange>,

    /// The flags and variables given explicitly (they override the file).
    #[arg(skip)]
    explicit: BTreeSet<String>,
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
    /// The command line of this process.
    pub fn load() -> Config {
        Self::from_matches(Config::command().get_matches()).unwrap_or_else(|e| e.exit())
    }

    /// A command line from `args` (the first is the program's name).
    pub fn try_load_from<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::from_matches(Config::command().try_get_matches_from(args)?)
    }

    fn from_matches(matches: clap::ArgMatches) -> Result<Config, clap::Error> {
        let mut config = Config::from_arg_matches(&matches)?;
        config.explicit = matches
            .ids()
            .filter(|id| {
                matches!(matches.value_source(id.as_str()), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
            })
            .map(|id| id.as_str().to_owned())
            .collect();
        Ok(config)
    }

    fn given(&self, id: &str) -> bool {
        self.explicit.contains(id)
    }

    /// The settings: the defaults, then the configuration file, then the flags and variables given.
    pub fn settings(&self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(path) => File::read(path)?,
            None => File::default(),
        };
        // The binary serves the demo and runs its ticker unless the file or a flag says otherwise.
        let file_sets_ticker = file.demo_ticker_ms.is_some();
        let mut settings = file.apply(Settings { web: WebFiles::Embedded, ..Settings::default() });
        if let Some(dir) = &self.web_dir {
            settings.web = WebFiles::Dir(dir.clone());
        }
        if !file_sets_ticker || self.given("demo_ticker_ms") {
            settings.demo_ticker = (self.demo_ticker_ms > 0).then(|| Duration::from_millis(self.demo_ticker_ms));
        }
        macro_rules! flag {
            ($($id:literal => $apply:expr;)*) => {
                $( if self.given($id) { $apply(&mut settings); } )*
            };
        }
        flag! {
            "node_id" => |s: &mut Settings| s.node_id = self.node_id.clone();
            "redis_url" => |s: &mut Settings| s.redis_url = self.redis_url.clone();
            "redis_prefix" => |s: &mut Settings| s.redis_prefix = self.redis_prefix.clone();
            "redis_min_replicas" => |s: &mut Settings| s.redis_min_replicas = self.redis_min_replicas;
            "redis_replica_timeout_ms" => |s: &mut Settings| s.redis_replica_timeout = Duration::from_millis(self.redis_replica_timeout_ms);
            "transports" => |s: &mut Settings| s.transports = self.transports.0.clone();
            "history_size" => |s: &mut Settings| s.history_size = self.history_size;
            "history_ttl" => |s: &mut Settings| s.history_ttl = Duration::from_secs(self.history_ttl);
            "session_ttl" => |s: &mut Settings| s.session_ttl = Duration::from_secs(self.session_ttl);
            "dedupe_ttl" => |s: &mut Settings| s.dedupe_ttl = Duration::from_secs(self.dedupe_ttl);
            "poll_timeout_ms" => |s: &mut Settings| s.poll_timeout = Duration::from_millis(self.poll_timeout_ms);
            "heartbeat_ms" => |s: &mut Settings| s.heartbeat = Duration::from_millis(self.heartbeat_ms);
            "max_message_bytes" => |s: &mut Settings| s.max_message_bytes = self.max_message_bytes;
            "max_subscriptions" => |s: &mut Settings| s.max_subscriptions = self.max_subscriptions;
            "max_data_depth" => |s: &mut Settings| s.max_data_depth = self.max_data_depth;
            "max_frames_per_send" => |s: &mut Settings| s.max_frames_per_send = self.max_frames_per_send;
            "max_batch" => |s: &mut Settings| s.max_batch = self.max_batch;
            "max_connections" => |s: &mut Settings| s.max_connections = self.max_connections;
            "allowed_origins" => |s: &mut Settings| s.allowed_origins = self.allowed_origins.clone();
            "send_buffer_bytes" => |s: &mut Settings| s.send_buffer_bytes = self.send_buffer_bytes;
            "write_timeout_ms" => |s: &mut Settings| s.write_timeout = Duration::from_millis(self.write_timeout_ms);
            "header_timeout_ms" => |s: &mut Settings| s.header_timeout = Duration::from_millis(self.header_timeout_ms);
            "body_timeout_ms" => |s: &mut Settings| s.body_timeout = Duration::from_millis(self.body_timeout_ms);
            "topic_linger_ms" => |s: &mut Settings| s.topic_linger = Duration::from_millis(self.topic_linger_ms);
            "tcp_nodelay" => |s: &mut Settings| s.tcp_nodelay = self.tcp_nodelay;
            "live_cache_messages" => |s: &mut Settings| s.live_cache_messages = self.live_cache_messages;
            "live_cache_bytes" => |s: &mut Settings| s.live_cache_bytes = self.live_cache_bytes;
            "live_buffer" => |s: &mut Settings| s.live_buffer = self.live_buffer;
            "session_cache" => |s: &mut Settings| s.session_cache = self.session_cache;
            "max_tcp_connections" => |s: &mut Settings| s.max_tcp_connections = self.max_tcp_connections;
            "connections_per_ip" => |s: &mut Settings| s.limits.connections_per_ip = self.connections_per_ip;
            "ready_max_load" => |s: &mut Settings| s.ready_max_load = self.ready_max_load;
            "drain_window_ms" => |s: &mut Settings| s.drain_window = Duration::from_millis(self.drain_window_ms);
            "drain_timeout_ms" => |s: &mut Settings| s.drain_timeout = Duration::from_millis(self.drain_timeout_ms);
            "api_key" => |s: &mut Settings| s.api_key = self.api_key.clone();
            "client_presence" => |s: &mut Settings| s.client_presence = self.client_presence;
            "token_secret" => |s: &mut Settings| s.token.hs256_secret = self.token_secret.clone();
            "token_public_key" => |s: &mut Settings| s.token.public_key = self.token_public_key.clone();
            "token_jwks" => |s: &mut Settings| s.token.jwks = self.token_jwks.clone();
            "token_issuer" => |s: &mut Settings| s.token.issuer = self.token_issuer.clone();
            "token_audience" => |s: &mut Settings| s.token.audience = self.token_audience.clone();
            "hook_url" => |s: &mut Settings| s.hooks.url = self.hook_url.clone();
            "hook_secret" => |s: &mut Settings| s.hooks.secret = self.hook_secret.clone();
            "hook_timeout_ms" => |s: &mut Settings| s.hooks.timeout = Duration::from_millis(self.hook_timeout_ms);
            "hook_connect" => |s: &mut Settings| s.hooks.connect = self.hook_connect;
            "trusted_proxies" => |s: &mut Settings| s.limits.trusted_proxies = self.trusted_proxies.clone();
        }
        Ok(settings)
    }
}

/// The configuration file: every key optional, durations in seconds (`_s`) or milliseconds (`_ms`) as named.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    node_id: Option<String>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    redis_min_replicas: Option<usize>,
    redis_replica_timeout_ms: Option<u64>,
    transports: Option<Vec<String>>,
    history_size: Option<usize>,
    history_ttl_s: Option<u64>,
    session_ttl_s: Option<u64>,
    dedupe_ttl_s: Option<u64>,
    poll_timeout_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
    max_message_bytes: Option<usize>,
    max_subscriptions: Option<usize>,
    max_data_depth: Option<usize>,
    max_frames_per_send: Option<usize>,
    max_batch: Option<usize>,
    max_connections: Option<usize>,
    allowed_origins: Option<Vec<String>>,
    send_buffer_bytes: Option<usize>,
    write_timeout_ms: Option<u64>,
    header_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
    topic_linger_ms: Option<u64>,
    tcp_nodelay: Option<bool>,
    live_cache_messages: Option<usize>,
    live_cache_bytes: Option<usize>,
    live_buffer: Option<usize>,
    session_cache: Option<bool>,
    max_tcp_connections: Option<usize>,
    ready_max_load: Option<f64>,
    drain_window_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    api_key: Option<String>,
    web_dir: Option<PathBuf>,
    demo_ticker_ms: Option<u64>,
    #[serde(default)]
    token: FileToken,
    #[serde(default)]
    hooks: FileHooks,
    #[serde(default)]
    limits: FileLimits,
    /// `[namespaces.default]` for channels without a configured namespace, `[namespaces.NAME]` for `NAME:*`.
    /// When the file has a `namespaces` table, only what it lists exists (the built-in `demo` is not added).
    namespaces: Option<BTreeMap<String, Namespace>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    hs256_secret: Option<String>,
    public_key: Option<PathBuf>,
    jwks: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHooks {
    url: Option<String>,
    secret: Option<String>,
    timeout_ms: Option<u64>,
    connect: Option<bool>,
    forward_headers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    frames_per_second: Option<u32>,
    bytes_per_second: Option<u32>,
    sessions_per_ip_per_second: Option<u32>,
    channels_per_second: Option<u32>,
    channels_per_ip_per_second: Option<u32>,
    connections_per_ip: Option<u32>,
    trusted_proxies: Option<Vec<ProxyRange>>,
    max_channels: Option<usize>,
    max_bytes: Option<usize>,
}

impl File {
    fn read(path: &Path) -> Result<File, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        // The error's own message and line, not its excerpt of the file: that line may hold a secret.
        let file: File = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|span| text[..span.start].lines().count().max(1));
            let at = line.map(|l| format!(", line {l}")).unwrap_or_default();
            format!("{}{at}: {}", path.display(), e.message())
        })?;
        // Relative key paths are relative to the file, so a config works from any directory.
        let base = path.parent().unwrap_or(Path::new("."));
        let relative = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        Ok(File {
            token: FileToken {
                public_key: file.token.public_key.map(relative),
                jwks: file.token.jwks.map(relative),
                ..file.token
            },
            web_dir: file.web_dir.map(relative),
            ..file
        })
    }

    fn apply(self, mut s: Settings) -> Settings {
        fn set<T>(target: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *target = value;
            }
        }
        let secs = |v: Option<u64>| v.map(Duration::from_secs);
        let millis = |v: Option<u64>| v.map(Duration::from_millis);
        set(&mut s.node_id, self.node_id.map(Some));
        set(&mut s.redis_url, self.redis_url.map(Some));
        set(&mut s.redis_prefix, self.redis_prefix);
        set(&mut s.redis_min_replicas, self.redis_min_replicas);
        set(&mut s.redis_replica_timeout, millis(self.redis_replica_timeout_ms));
        set(&mut s.transports, self.transports.map(|list| list.iter().filter_map(|t| Transport::parse(t)).collect()));
        set(&mut s.history_size, self.history_size);
        set(&mut s.history_ttl, secs(self.history_ttl_s));
        set(&mut s.session_ttl, secs(self.session_ttl_s));
        set(&mut s.dedupe_ttl, secs(self.dedupe_ttl_s));
        set(&mut s.poll_timeout, millis(self.poll_timeout_ms));
        set(&mut s.heartbeat, millis(self.heartbeat_ms));
        set(&mut s.max_message_bytes, self.max_message_bytes);
        set(&mut s.max_subscriptions, self.max_subscriptions);
        set(&mut s.max_data_depth, self.max_data_depth);
        set(&mut s.max_frames_per_send, self.max_frames_per_send);
        set(&mut s.max_batch, self.max_batch);
        set(&mut s.max_connections, self.max_connections);
        set(&mut s.allowed_origins, self.allowed_origins);
        set(&mut s.send_buffer_bytes, self.send_buffer_bytes);
        set(&mut s.write_timeout, millis(self.write_timeout_ms));
        set(&mut s.header_timeout, millis(self.header_timeout_ms));
        set(&mut s.body_timeout, millis(self.body_timeout_ms));
        set(&mut s.topic_linger, millis(self.topic_linger_ms));
        set(&mut s.tcp_nodelay, self.tcp_nodelay);
        set(&mut s.live_cache_messages, self.live_cache_messages);
        set(&mut s.live_cache_bytes, self.live_cache_bytes);
        set(&mut s.live_buffer, self.live_buffer);
        set(&mut s.session_cache, self.session_cache);
        set(&mut s.max_tcp_connections, self.max_tcp_connections.map(Some));
        set(&mut s.ready_max_load, self.ready_max_load);
        set(&mut s.drain_window, millis(self.drain_window_ms));
        set(&mut s.drain_timeout, millis(self.drain_timeout_ms));
        set(&mut s.api_key, self.api_key.map(Some));
        set(&mut s.web, self.web_dir.map(WebFiles::Dir));
        set(&mut s.demo_ticker, self.demo_ticker_ms.map(|ms| (ms > 0).then(|| Duration::from_millis(ms))));
        set(&mut s.token.hs256_secret, self.token.hs256_secret.map(Some));
        set(&mut s.token.public_key, self.token.public_key.map(Some));
        set(&mut s.token.jwks, self.token.jwks.map(Some));
        set(&mut s.token.issuer, self.token.issuer.map(Some));
        set(&mut s.token.audience, self.token.audience.map(Some));
        set(&mut s.hooks.url, self.hooks.url.map(Some));
        set(&mut s.hooks.secret, self.hooks.secret.map(Some));
        set(&mut s.hooks.timeout, millis(self.hooks.timeout_ms));
        set(&mut s.hooks.connect, self.hooks.connect);
        set(&mut s.hooks.forward_headers, self.hooks.forward_headers);
        set(&mut s.limits.frames_per_second, self.limits.frames_per_second);
        set(&mut s.limits.bytes_per_second, self.limits.bytes_per_second);
        set(&mut s.limits.sessions_per_ip_per_second, self.limits.sessions_per_ip_per_second);
        set(&mut s.limits.channels_per_second, self.limits.channels_per_second);
        set(&mut s.limits.channels_per_ip_per_second, self.limits.channels_per_ip_per_second);
        set(&mut s.limits.connections_per_ip, self.limits.connections_per_ip);
        set(&mut s.limits.trusted_proxies, self.limits.trusted_proxies);
        set(&mut s.limits.max_channels, self.limits.max_channels);
        set(&mut s.limits.max_bytes, self.limits.max_bytes);
        if let Some(mut namespaces) = self.namespaces {
            s.namespaces.default = namespaces.remove("default").unwrap_or_else(Namespace::by_token);
            s.namespaces.named = namespaces;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_default_to_the_settings_defaults() {
        let settings = Config::try_load_from(["stickless"]).unwrap().settings().unwrap();
        let defaults = Settings::default();
        assert_eq!(settings.web, WebFiles::Embedded, "the binary serves the demo built into it");
        assert_eq!(
            format!("{:?}", Settings { web: WebFiles::Off, demo_ticker: None, ..settings }),
            format!("{defaults:?}")
        );
    }

    #[test]
    fn the_example_file_loads_and_flags_override_it() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config.toml");
        let config = Config::try_load_from(["stickless", "--config", example, "--history-size", "7"]).unwrap();
        let settings = config.settings().unwrap();
        assert_eq!(settings.history_size, 7, "a flag overrides the file");
        assert!(settings.namespaces.named.contains_key("demo"));
        assert!(settings.namespaces.named.values().any(|ns| ns.user_channels));
        let bad = std::env::temp_dir().join(format!("stickless-bad-{}.toml", std::process::id()));
        std::fs::write(&bad, "histroy_size = 3\n").unwrap();
        let err =
            Config::try_load_from(["stickless", "--config", bad.to_str().unwrap()]).unwrap().settings().unwrap_err();
        assert!(err.contains("histroy_size"), "{err}");
    }

    #[test]
    fn the_live_buffer_is_set_by_the_file_or_a_flag() {
        let file = std::env::temp_dir().join(format!("stickless-live-buffer-{}.toml", std::process::id()));
        std::fs::write(&file, "live_buffer = 7\n").unwrap();
        let path = file.to_str().unwrap();
        let from_file = Config::try_load_from(["stickless", "--config", path]).unwrap().settings().unwrap();
        assert_eq!(from_file.live_buffer, 7);
        let flag = Config::try_load_from(["stickless", "--config", path, "--live-buffer", "9"]).unwrap();
        assert_eq!(flag.settings().unwrap().live_buffer, 9, "a flag overrides the file");
        let _ = std::fs::remove_file(&file);
    }
}
