//! The port: the small trait this crate needs from the session core.
//!
//! Transports frame bytes; the core decides what a session sees. Everything crossing this boundary is either a
//! plain string the client sent (session id, position, channel list) or an already-encoded JSON frame (`Bytes`),
//! so a transport never parses or builds protocol frames and the core never sees HTTP.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::Stream;

use crate::Transport;

/// What a client asks for when it attaches over any transport.
#[derive(Debug, Clone, Default)]
pub struct Attach {
    /// The transport's name as shown to clients (`websocket`, `sse`, `long-polling`).
    pub transport: &'static str,
    /// The session to resume; `None` creates a new one.
    pub session: Option<String>,
    /// The client's position (see docs/PROTOCOL.md), as sent.
    pub position: Option<String>,
    /// Comma-separated channels to subscribe at attach.
    pub channels: Option<String>,
    /// Whether each delivered frame should carry the position after it (SSE ids, poll responses).
    pub track_position: bool,
    /// The client as the connection shows it: address, token, headers.
    pub client: Client,
}

/// Who is attaching, as far as HTTP tells: the core decides what it may do.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// The TCP peer's address (a proxy's, behind one).
    pub peer: Option<IpAddr>,
    /// A connection token, from `Authorization: Bearer` or the `token` query parameter.
    pub token: Option<String>,
    /// The request's headers, lowercase names (`x-forwarded-for`, `cookie`, ...).
    pub headers: Vec<(String, String)>,
}

/// A successful attach: the session, its `welcome` frame and the feed of frames to deliver.
pub struct Attached<F> {
    pub session: String,
    /// True when this attach created the session.
    pub created: bool,
    /// The encoded `welcome` frame.
    pub welcome: Bytes,
    /// The position the feed starts from.
    pub position: String,
    pub feed: F,
}

/// One frame to deliver downstream.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The encoded JSON frame, shared between every connection that delivers it.
    pub frame: Bytes,
    /// The position after this frame, when the attach asked for it and the frame moved it.
    pub position: Option<String>,
    /// Set on a feed's last frame: it ends the connection (a WebSocket closes with this).
    pub end: Option<Ending>,
}

/// Why a feed ended: the close code and reason a WebSocket closes with (the frame said it to every transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    pub close_code: u16,
    pub reason: &'static str,
}

/// A refused request, already worded and encoded by the core; a transport only picks how to tell it.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The stable code (`session_unknown`), used as a WebSocket close reason.
    pub code: &'static str,
    /// The HTTP status of a refused request.
    pub status: StatusCode,
    /// The close code when the refusal ends a WebSocket.
    pub close_code: u16,
    /// The HTTP body, `{"error":{"code","message"}}`.
    pub body: Bytes,
    /// The `error` frame, for a connection that is already open.
    pub frame: Bytes,
    /// Over a rate limit: when to retry (`Retry-After`).
    pub retry_after: Option<Duration>,
}

/// What the transports refuse on their own, before the core is asked; the core words it ([`Port::refuse`]).
#[derive(Debug, Clone)]
pub enum Refusal {
    TransportDisabled(Transport),
    /// This node's live-connection limit is reached.
    OverCapacity,
    /// This node is draining: attach elsewhere.
    Draining,
    /// The query string does not parse.
    BadQuery(String),
    /// A body that could not be read.
    BadBody(String),
    /// A body over `max_message_bytes`.
    BodyTooLarge,
    /// A request that needs `session` came without it.
    MissingSession,
    /// A request from an Origin not in `allowed_origins`.
    ForbiddenOrigin,
    /// A binary WebSocket message: frames are text.
    BinaryMessage,
    /// The server failed on this request (a caught panic).
    Internal,
}

/// The session core as the transports see it.
pub trait Port: Clone + Send + Sync + 'static {
    /// Frames for one attached connection: catch-up from history, then live messages.
    type Feed: Stream<Item = Outbound> + Send + Unpin + 'static;

    /// The node's name, shown to clients so they can see which node served them.
    fn node(&self) -> &str;

    /// The `/v1/negotiate` body: the `enabled` transports, the poll timeout, and the core's session parameters.
    fn negotiate(&self, enabled: &[Transport], poll_timeout: Duration) -> Bytes;

    /// Attaches a connection to a session (creating one when none is named).
    fn attach(&self, request: Attach) -> impl Future<Output = Result<Attached<Self::Feed>, Rejection>> + Send;

    /// Applies one upstream frame from an attached connection; answers with its `ack` or `error` frame.
    fn upstream(&self, session: &str, frame: &[u8]) -> impl Future<Output = Bytes> + Send;

    /// Applies a `POST /v1/send` body (one frame or an array); answers with the JSON array of replies.
    fn send(&self, session: &str, body: &[u8]) -> impl Future<Output = Result<Bytes, Rejection>> + Send;

    /// A long-poll answer carrying `frames`, after which the client resumes from `position`.
    fn poll_response(&self, session: &str, position: &str, frames: &[Bytes]) -> Bytes;

    /// The `heartbeat` frame (WebSocket; browsers cannot see pings).
    fn heartbeat(&self) -> Bytes;

    /// Words a refusal of the transports' own.
    fn refuse(&self, refusal: Refusal) -> Rejection;

    /// The `reconnect` frame a draining node sends each connection, with the delay (random over the drain
    /// window) it names.
    fn reconnect(&self) -> (Bytes, Duration);

    /// A long-poll was answered after waiting `waited` for its first frame, with `frames` frames.
    fn poll_answered(&self, waited: Duration, frames: usize);

    /// A connection was cut because one write waited `write_timeout` for a client that does not read.
    fn slow_consumer_cut(&self);
}
