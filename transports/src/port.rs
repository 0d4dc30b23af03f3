//! The port: the small trait this crate needs from the session core.
//!
//! Transports frame bytes; the core decides what a session sees. Everything crossing this boundary is either a
//! plain string the client sent (session id, position, channel list) or an already-encoded JSON frame (`Bytes`),
//! so a transport never parses or builds protocol frames and the core never sees HTTP.

use std::future::Future;

use bytes::Bytes;
use futures_util::Stream;

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
}

/// Why the core refused a request; transports turn it into an HTTP status or a WebSocket close code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: Fault,
    /// A stable, documented code (`session_unknown`, `invalid_position`, ...).
    pub code: &'static str,
    pub message: String,
}

/// The class of a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    TooLarge,
    Unavailable,
}

impl Rejection {
    pub fn new(kind: Fault, code: &'static str, message: impl Into<String>) -> Self {
        Rejection { kind, code, message: message.into() }
    }
}

/// The session core as the transports see it.
pub trait Port: Clone + Send + Sync + 'static {
    /// Frames for one attached connection: catch-up from history, then live messages.
    type Feed: Stream<Item = Outbound> + Send + Unpin + 'static;

    /// The node's name, shown to clients so they can see which node served them.
    fn node(&self) -> &str;

    /// Session parameters for `/v1/negotiate` (heartbeat, TTL, limits), as a JSON object.
    fn describe(&self) -> serde_json::Map<String, serde_json::Value>;

    /// Attaches a connection to a session (creating one when none is named).
    fn attach(&self, request: Attach) -> impl Future<Output = Result<Attached<Self::Feed>, Rejection>> + Send;

    /// Applies one upstream frame from an attached connection; answers with its `ack` or `error` frame.
    fn upstream(&self, session: &str, frame: &[u8]) -> impl Future<Output = Bytes> + Send;

    /// Applies a `POST /v1/send` body (one frame or an array); answers with the JSON array of replies.
    fn send(&self, session: &str, body: &[u8]) -> impl Future<Output = Result<Bytes, Rejection>> + Send;
}
