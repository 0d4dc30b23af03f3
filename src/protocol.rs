//! The wire protocol (docs/PROTOCOL.md) as types: every frame a client sends ([`Upstream`]) or receives
//! ([`Downstream`]), every error code ([`ErrorCode`]) with its HTTP status and WebSocket close code, and the
//! bodies around frames (the long-poll envelope, `/v1/negotiate`, HTTP error bodies).
//!
//! Nothing else in stickless writes JSON for a client: the transports receive bytes encoded here (through the
//! gateway, which implements their port), so a change to the protocol is a change to this file and the doc.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::model::{ChannelName, Cursor, Epoch, GapReason, ModelError, Sender};

/// The longest client message id.
pub const MAX_ID_LEN: usize = 64;

/// A frame a client sends, validated. Serializes back to the wire form (what a client library sends).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Upstream {
    Subscribe {
        id: String,
        channel: ChannelName,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<Cursor>,
    },
    Unsubscribe {
        id: String,
        channel: ChannelName,
    },
    Publish {
        id: String,
        channel: ChannelName,
        data: Box<RawValue>,
    },
    Presence {
        id: String,
        channel: ChannelName,
    },
    Ping {
        id: String,
    },
    /// A new connection token for the same user, before (or after) the current one expires.
    Refresh {
        id: String,
        token: String,
    },
}

/// Why an upstream frame or body is not acceptable, before any session is looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the body or frame is not JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidFrame(Cow<'static, str>),
    #[error("unknown frame type `{0}`")]
    UnknownType(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl ProtocolError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::MalformedJson(_) => ErrorCode::MalformedJson,
            ProtocolError::InvalidFrame(_) => ErrorCode::InvalidFrame,
            ProtocolError::UnknownType(_) => ErrorCode::UnknownType,
            ProtocolError::Model(ModelError::InvalidChannel) => ErrorCode::InvalidChannel,
            ProtocolError::Model(ModelError::InvalidPosition(_)) => ErrorCode::InvalidPosition,
            ProtocolError::Model(ModelError::InvalidSessionId) => ErrorCode::SessionUnknown,
        }
    }
}

/// A frame that could not be parsed: the error, and the frame's `id` when it could be read (for the answer).
#[derive(Debug)]
pub struct Refused {
    pub id: Option<String>,
    pub error: ProtocolError,
}

/// The fields of an upstream frame, read leniently so that a bad field still leaves the `id` to answer with.
/// (serde's internally tagged enums buffer their content and cannot hold a `RawValue`, so [`Upstream`] is built
/// from this rather than deserialized directly.)
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    /// `Some` whenever the field is present, `"data": null` included: null is data like any other value.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn text(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|v| serde_json::from_str::<String>(v.get()).ok())
}

impl Upstream {
    /// Parses one frame from bytes.
    pub fn parse(bytes: &[u8]) -> Result<Upstream, Refused> {
        let value: Box<RawValue> = serde_json::from_slice(bytes)
            .map_err(|e| Refused { id: None, error: ProtocolError::MalformedJson(e.to_string()) })?;
        Self::parse_value(&value)
    }

    /// Parses one frame that is already known to be JSON (an element of a `/v1/send` array).
    pub fn parse_value(value: &RawValue) -> Result<Upstream, Refused> {
        let shape = || ProtocolError::InvalidFrame("a frame is a JSON object with a string `type`".into());
        let fields: Fields = serde_json::from_str(value.get()).map_err(|_| Refused { id: None, error: shape() })?;
        let id = match text(fields.id) {
            Some(id) if !id.is_empty() && id.len() <= MAX_ID_LEN => id,
            _ => {
                let message = format!("`id` must be a string of 1..{MAX_ID_LEN} chars");
                return Err(Refused { id: None, error: ProtocolError::InvalidFrame(message.into()) });
            }
        };
        match Self::build(id.clone(), &fields) {
            Ok(frame) => Ok(frame),
            Err(error) => Err(Refused { id: Some(id), error }),
        }
    }

    fn build(id: String, fields: &Fields) -> Result<Upstream, ProtocolError> {
        let kind = text(fields.kind).ok_or(ProtocolError::InvalidFrame("`type` must be a string".into()))?;
        let channel = || match text(fields.channel) {
            Some(name) => Ok(ChannelName::parse(&name)?),
            None => Err(ProtocolError::InvalidFrame("`channel` must be a string".into())),
        };
        Ok(match kind.as_str() {
            "subscribe" => Upstream::Subscribe { channel: channel()?, since: since(fields.since)?, id },
            "unsubscribe" => Upstream::Unsubscribe { channel: channel()?, id },
            "publish" => {
                let channel = channel()?;
                let data = fields.data.ok_or(ProtocolError::InvalidFrame("`data` is required".into()))?;
                Upstream::Publish { channel, data: data.to_owned(), id }
            }
            "presence" => Upstream::Presence { channel: channel()?, id },
            "ping" => Upstream::Ping { id },
            "refresh" => match text(fields.token).filter(|t| !t.is_empty()) {
                Some(token) => Upstream::Refresh { token, id },
                None => return Err(ProtocolError::InvalidFrame("`token` must be a non-empty string".into())),
            },
            other => return Err(ProtocolError::UnknownType(other.chars().take(64).collect())),
        })
    }

    /// The client's id for this frame, echoed in its `ack` or `error`.
    pub fn id(&self) -> &str {
        match self {
            Upstream::Subscribe { id, .. }
            | Upstream::Unsubscribe { id, .. }
            | Upstream::Publish { id, .. }
            | Upstream::Presence { id, .. }
            | Upstream::Ping { id }
            | Upstream::Refresh { id, .. } => id,
        }
    }
}

/// `since: {epoch, offset}` of a subscribe; absent or null means "from the channel's current top".
fn since(raw: Option<&RawValue>) -> Result<Option<Cursor>, ProtocolError> {
    #[derive(Deserialize)]
    struct Since {
        epoch: String,
        offset: u64,
    }
    let Some(raw) = raw.filter(|v| v.get() != "null") else {
        return Ok(None);
    };
    let since: Since = serde_json::from_str(raw.get())
        .map_err(|_| ProtocolError::InvalidFrame("`since` is {epoch, offset}".into()))?;
    Ok(Some(Cursor::new(Epoch::parse(&since.epoch)?, since.offset)))
}

/// A frame the server sends. Encode it with [`Downstream::encode`].
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Downstream<'a> {
    /// The first frame of every attach that creates or joins a session.
    Welcome {
        heartbeat_ms: u64,
        node: &'a str,
        pid: &'a str,
        session: &'a str,
        transport: &'a str,
    },
    Message {
        channel: &'a ChannelName,
        epoch: &'a Epoch,
        offset: u64,
        ts: u64,
        data: &'a RawValue,
        /// Set when a client published it: who. Messages from the backend API have none.
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<&'a Sender>,
    },
    Gap {
        channel: &'a ChannelName,
        epoch: &'a Epoch,
        offset: u64,
        previous: &'a Cursor,
        reason: GapReason,
    },
    Ack {
        id: &'a str,
        result: AckResult<'a>,
    },
    Error {
        code: ErrorCode,
        id: Option<&'a str>,
        message: &'a str,
        /// With `rate_limited`: how long to wait before retrying.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    Heartbeat,
    /// This node is draining (shutting down): reconnect after `after_ms`, drawn at random over the drain window so
    /// that a fleet losing a node does not send all its clients to the survivors at once.
    Reconnect {
        after_ms: u64,
    },
}

/// What an `ack` says, by the frame it answers.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum AckResult<'a> {
    /// `subscribe` (where delivery starts after) and `publish` (where it was stored).
    Cursor { channel: &'a ChannelName, epoch: &'a Epoch, offset: u64 },
    /// `unsubscribe`.
    Channel { channel: &'a ChannelName },
    /// `presence`: the public ids subscribed now.
    Presence { channel: &'a ChannelName, pids: &'a [String] },
    /// `refresh`: until when the new token holds (seconds since 1970).
    Refreshed { exp: u64 },
    /// `ping`.
    Empty {},
}

impl<'a> AckResult<'a> {
    pub fn cursor(channel: &'a ChannelName, cursor: &'a Cursor) -> Self {
        AckResult::Cursor { channel, epoch: &cursor.epoch, offset: cursor.offset }
    }
}

impl Downstream<'_> {
    pub fn encode(&self) -> Bytes {
        encode(self)
    }

    /// The `error` frame for `code`.
    pub fn error(id: Option<&str>, code: ErrorCode, message: &str) -> Bytes {
        Downstream::Error { code, id, message, retry_after_ms: None }.encode()
    }
}

fn encode(value: &impl Serialize) -> Bytes {
    serde_json::to_vec(value).expect("protocol types always serialize").into()
}

/// A stored message with its `message` frame, encoded once when it enters this node and shared by every
/// connection that delivers it.
#[derive(Debug)]
pub struct Message {
    pub channel: ChannelName,
    pub epoch: Epoch,
    pub offset: u64,
    pub frame: Bytes,
}

impl Message {
    pub fn new(
        channel: ChannelName,
        epoch: Epoch,
        offset: u64,
        ts: u64,
        data: &RawValue,
        from: Option<&Sender>,
    ) -> Arc<Self> {
        let frame = Downstream::Message { channel: &channel, epoch: &epoch, offset, ts, data, from }.encode();
        Arc::new(Message { channel, epoch, offset, frame })
    }

    pub fn cursor(&self) -> Cursor {
        Cursor::new(self.epoch.clone(), self.offset)
    }
}

/// Every error code a client can see. Each is answered with an HTTP status on HTTP, and with an `error` frame
/// on an open connection; when the error ends a WebSocket, it closes with [`ErrorCode::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedJson,
    InvalidFrame,
    UnknownType,
    InvalidChannel,
    InvalidPosition,
    TooManyFrames,
    TooManySubscriptions,
    BinaryUnsupported,
    Unauthorized,
    TokenInvalid,
    TokenExpired,
    Forbidden,
    SessionUnknown,
    TransportDisabled,
    PayloadTooLarge,
    RequestTimeout,
    RateLimited,
    OverCapacity,
    Draining,
    StoreUnavailable,
    HookUnavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 22] = [
        ErrorCode::MalformedJson,
        ErrorCode::InvalidFrame,
        ErrorCode::UnknownType,
        ErrorCode::InvalidChannel,
        ErrorCode::InvalidPosition,
        ErrorCode::TooManyFrames,
        ErrorCode::TooManySubscriptions,
        ErrorCode::BinaryUnsupported,
        ErrorCode::Unauthorized,
        ErrorCode::TokenInvalid,
        ErrorCode::TokenExpired,
        ErrorCode::Forbidden,
        ErrorCode::SessionUnknown,
        ErrorCode::TransportDisabled,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RequestTimeout,
        ErrorCode::RateLimited,
        ErrorCode::OverCapacity,
        ErrorCode::Draining,
        ErrorCode::StoreUnavailable,
        ErrorCode::HookUnavailable,
        ErrorCode::Internal,
    ];

    /// The code as clients see it (`session_unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::InvalidPosition => "invalid_position",
            ErrorCode::TooManyFrames => "too_many_frames",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::BinaryUnsupported => "binary_unsupported",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::SessionUnknown => "session_unknown",
            ErrorCode::TransportDisabled => "transport_disabled",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::HookUnavailable => "hook_unavailable",
            ErrorCode::OverCapacity => "over_capacity",
            ErrorCode::Draining => "draining",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The message sent with this code where nothing more specific is known.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "the body or frame is not JSON",
            ErrorCode::InvalidFrame => "JSON of the wrong shape, or a missing or bad field",
            ErrorCode::UnknownType => "a frame type this server does not know",
            ErrorCode::InvalidChannel => "channel names match [A-Za-z0-9_.:/-]{1,128}",
            ErrorCode::InvalidPosition => "the position does not parse",
            ErrorCode::TooManyFrames => "too many frames in one send",
            ErrorCode::TooManySubscriptions => "too many subscriptions in one session",
            ErrorCode::BinaryUnsupported => "send frames as text messages",
            ErrorCode::Unauthorized => "a valid API key is required (Authorization: Bearer <key>)",
            ErrorCode::TokenInvalid => "the connection token is not valid here",
            ErrorCode::TokenExpired => "the connection token has expired; refresh it or reconnect with a new one",
            ErrorCode::Forbidden => "not allowed",
            ErrorCode::SessionUnknown => "unknown or expired session; create a new one and re-subscribe with `since`",
            ErrorCode::TransportDisabled => "this transport is turned off on this server",
            ErrorCode::PayloadTooLarge => "the request body is over max_message_bytes",
            ErrorCode::RequestTimeout => "the request body did not arrive within body_timeout",
            ErrorCode::RateLimited => "too many requests; retry after the time given",
            ErrorCode::HookUnavailable => "the application's hook did not answer; nothing was done",
            ErrorCode::OverCapacity => "this node's connection limit is reached; retry later",
            ErrorCode::Draining => "this node is shutting down; reconnect after the time given (to another node)",
            ErrorCode::StoreUnavailable => {
                "the store did not answer in time: the outcome is unknown (it may be stored); retry with the same id \
                 or idempotency_key, which stores it once"
            }
            ErrorCode::Internal => "the server failed on this request",
        }
    }

    /// The HTTP status of a request refused with this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::MalformedJson
            | ErrorCode::InvalidFrame
            | ErrorCode::UnknownType
            | ErrorCode::InvalidChannel
            | ErrorCode::InvalidPosition
            | ErrorCode::TooManyFrames
            | ErrorCode::TooManySubscriptions
            | ErrorCode::BinaryUnsupported => 400,
            ErrorCode::Unauthorized | ErrorCode::TokenInvalid | ErrorCode::TokenExpired => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::SessionUnknown | ErrorCode::TransportDisabled => 404,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::OverCapacity
            | ErrorCode::Draining
            | ErrorCode::StoreUnavailable
            | ErrorCode::HookUnavailable => 503,
        }
    }

    /// The WebSocket close code (RFC 6455 section 7.4) when this error ends a connection.
    pub fn close_code(self) -> u16 {
        match self {
            ErrorCode::MalformedJson => 1007,
            ErrorCode::BinaryUnsupported => 1003,
            ErrorCode::PayloadTooLarge => 1009,
            ErrorCode::Internal => 1011,
            ErrorCode::Draining => 1012,
            ErrorCode::RateLimited
            | ErrorCode::OverCapacity
            | ErrorCode::StoreUnavailable
            | ErrorCode::HookUnavailable => 1013,
            ErrorCode::InvalidFrame
            | ErrorCode::UnknownType
            | ErrorCode::InvalidChannel
            | ErrorCode::InvalidPosition
            | ErrorCode::TooManyFrames
            | ErrorCode::TooManySubscriptions
            | ErrorCode::Unauthorized
            | ErrorCode::TokenInvalid
            | ErrorCode::TokenExpired
            | ErrorCode::Forbidden
            | ErrorCode::SessionUnknown
            | ErrorCode::TransportDisabled
            | ErrorCode::RequestTimeout => 1008,
        }
    }
}

/// `{"error":{"code":..,"message":..}}`: the body of every HTTP error, and of a failed item in a batch publish.
pub fn error_body(code: ErrorCode, message: &str) -> Bytes {
    encode(&ErrorBody::new(code, message))
}

/// A long-poll answer, `{"node","session","position","frames":[..]}`, spliced from the frames' shared bytes
/// rather than re-serialized.
pub fn poll_response(node: &str, session: &str, position: &str, frames: &[Bytes]) -> Bytes {
    #[derive(Serialize)]
    struct Head<'a> {
        node: &'a str,
        session: &'a str,
        position: &'a str,
    }
    let head = encode(&Head { node, session, position });
    let mut out = BytesMut::with_capacity(head.len() + 12 + spliced_len(frames));
    out.put_slice(&head[..head.len() - 1]);
    out.put_slice(b",\"frames\":");
    splice(&mut out, frames);
    out.put_u8(b'}');
    out.freeze()
}

/// Splices answers to the frames of one `/v1/send` into a JSON array.
pub fn array(items: &[Bytes]) -> Bytes {
    let mut out = BytesMut::with_capacity(spliced_len(items));
    splice(&mut out, items);
    out.freeze()
}

fn spliced_len(items: &[Bytes]) -> usize {
    items.iter().map(|i| i.len() + 1).sum::<usize>() + 2
}

/// Writes already-encoded JSON values as one array.
fn splice(out: &mut BytesMut, items: &[Bytes]) {
    out.put_u8(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(item);
    }
    out.put_u8(b']');
}

/// A `/v1/publish` answer: where each message was stored, or why not.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Published<'a> {
    /// `{channel, epoch, offset}` of one stored message.
    Stored { channel: &'a ChannelName, epoch: &'a Epoch, offset: u64 },
    /// `{"error":{..}}`: one message of a batch that was not stored.
    Failed(ErrorBody<'a>),
    /// `{"results": [..]}` of a batch: one `Stored` or `Failed` per message, in order.
    Batch { results: Vec<Published<'a>> },
}

/// The `{"error":{"code","message"}}` object, as a value.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorInner<'a> {
    code: ErrorCode,
    message: Cow<'a, str>,
}

impl<'a> ErrorBody<'a> {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'a, str>>) -> Self {
        ErrorBody { error: ErrorInner { code, message: message.into() } }
    }
}

impl Published<'_> {
    pub fn encode(&self) -> Bytes {
        encode(self)
    }
}

/// A `/v1/presence` answer.
#[derive(Debug, Serialize)]
pub struct PresenceAnswer<'a> {
    pub channel: &'a ChannelName,
    pub pids: &'a [String],
}

impl PresenceAnswer<'_> {
    pub fn encode(&self) -> Bytes {
        encode(self)
    }
}

/// What `/v1/negotiate` tells a client before it picks a transport.
#[derive(Debug, Serialize)]
pub struct Negotiation<'a> {
    pub version: u32,
    pub node: &'a str,
    pub transports: Vec<TransportOffer>,
    pub heartbeat_ms: u64,
    pub poll_timeout_ms: u64,
    pub session_ttl_ms: u64,
    pub limits: Limits,
}

/// One transport a client may use, and where.
#[derive(Debug, Serialize)]
pub struct TransportOffer {
    pub name: &'static str,
    pub path: &'static str,
}

/// The limits a client should respect.
#[derive(Debug, Serialize)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_subscriptions: usize,
    pub max_frames_per_send: usize,
    pub max_batch: usize,
}

impl Negotiation<'_> {
    pub fn encode(&self) -> Bytes {
        encode(self)
    }
}

/// How deeply `data` (valid JSON) nests arrays and objects: `1` is `1`, `[1]` is 1 deep, `{"a":[1]}` 2 deep. A
/// scan, not a parse, so a deep document costs no stack.
pub fn json_depth(data: &RawValue) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for (b, _) in in_strings(data.get()).filter(|(_, inside)| !inside) {
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The bytes of JSON text, each with whether it lies inside a string (its quotes included): the one place that
/// knows where strings and their escapes start and end, for the scans below.
fn in_strings(text: &str) -> impl Iterator<Item = (u8, bool)> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    text.bytes().map(move |b| {
        let inside = in_string || b == b'"';
        if !in_string {
            in_string = b == b'"';
        } else {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        }
        (b, inside)
    })
}

/// `data` without the whitespace between its tokens. Strings and numbers stay byte for byte as sent (no
/// re-serialization), and the result holds no line break, so every frame fits one SSE `data:` line.
pub fn compact(data: &RawValue) -> Cow<'_, RawValue> {
    let text = data.get();
    if !text.bytes().any(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        return Cow::Borrowed(data);
    }
    let kept: Vec<u8> = in_strings(text)
        .filter(|(b, inside)| *inside || !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .map(|(b, _)| b)
        .collect();
    // Only ASCII whitespace was dropped, so the bytes are still UTF-8.
    let out = String::from_utf8(kept).unwrap_or_else(|_| text.to_owned());
    // Removing insignificant whitespace from valid JSON leaves valid JSON.
    match RawValue::from_string(out) {
        Ok(compacted) => Cow::Owned(compacted),
        Err(_) => Cow::Borrowed(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(bytes: &[u8]) -> ErrorCode {
        Upstream::parse(bytes).unwrap_err().error.code()
    }

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[test]
    fn parses_each_upstream_frame() {
        let f = Upstream::parse(br#"{"type":"publish","id":"c1","channel":"chat","data":{"a":[1,2]}}"#).unwrap();
        assert!(matches!(f, Upstream::Publish { ref data, .. } if data.get() == r#"{"a":[1,2]}"#));
        let f =
            Upstream::parse(br#"{"type":"subscribe","id":"c2","channel":"chat","since":{"epoch":"e1","offset":4}}"#)
                .unwrap();
        assert!(matches!(f, Upstream::Subscribe { since: Some(Cursor { offset: 4, .. }), .. }));
        assert!(matches!(Upstream::parse(br#"{"type":"ping","id":"p"}"#).unwrap(), Upstream::Ping { .. }));
        let f = Upstream::parse(br#"{"type":"publish","id":"n","channel":"c","data":null}"#).unwrap();
        assert!(matches!(f, Upstream::Publish { ref data, .. } if data.get() == "null"));
        assert_eq!(f.id(), "n");
    }

    #[test]
    fn bad_frames_get_their_documented_codes() {
        assert_eq!(code(b"{not json"), ErrorCode::MalformedJson);
        assert_eq!(code(b"[]"), ErrorCode::InvalidFrame);
        assert_eq!(code(br#"{"type":"publish","channel":"chat","data":1}"#), ErrorCode::InvalidFrame);
        assert_eq!(code(br#"{"type":"teleport","id":"x"}"#), ErrorCode::UnknownType);
        assert_eq!(code(br#"{"type":"publish","id":"x","channel":"a b","data":1}"#), ErrorCode::InvalidChannel);
        assert_eq!(code(br#"{"type":"publish","id":"x","channel":"a"}"#), ErrorCode::InvalidFrame);
        assert_eq!(code(br#"{"type":"subscribe","id":"x","channel":"a","since":{"epoch":"-","offset":1}}"#), {
            ErrorCode::InvalidPosition
        });
        let refused = Upstream::parse(br#"{"type":"teleport","id":"x9"}"#).unwrap_err();
        assert_eq!(refused.id.as_deref(), Some("x9"));
        let refused =
            Upstream::parse(br#"{"type":"subscribe","id":"s7","channel":"c","since":{"epoch":"e","offset":-1}}"#)
                .unwrap_err();
        assert_eq!((refused.id.as_deref(), refused.error.code()), (Some("s7"), ErrorCode::InvalidFrame));
        let refused = Upstream::parse(br#"{"type":"publish","id":"s8","channel":5,"data":1}"#).unwrap_err();
        assert_eq!((refused.id.as_deref(), refused.error.code()), (Some("s8"), ErrorCode::InvalidFrame));
    }

    #[test]
    fn upstream_frames_serialize_to_what_they_parse_from() {
        for text in [
            r#"{"type":"subscribe","id":"c1","channel":"chat"}"#,
            r#"{"type":"subscribe","id":"c2","channel":"chat","since":{"epoch":"5f2a","offset":17}}"#,
            r#"{"type":"unsubscribe","id":"c3","channel":"chat"}"#,
            r#"{"type":"publish","id":"c4","channel":"chat","data":{"text":"hi"}}"#,
            r#"{"type":"presence","id":"c5","channel":"chat"}"#,
            r#"{"type":"ping","id":"c6"}"#,
            r#"{"type":"refresh","id":"c7","token":"eyJ.x.y"}"#,
        ] {
            let frame = Upstream::parse(text.as_bytes()).unwrap();
            assert_eq!(serde_json::to_string(&frame).unwrap(), text);
        }
    }

    /// Frames as the gateway encoded them before this module existed (serde_json's `json!`, which orders keys
    /// alphabetically). The same JSON documents must come out; `message` frames, the bulk of the traffic, byte
    /// for byte.
    #[test]
    fn downstream_frames_match_the_recorded_ones() {
        let e1 = Epoch::parse("e1").unwrap();
        let chat = ch("chat");
        let data = RawValue::from_string(r#"{"text":"hi\nthere"}"#.into()).unwrap();
        let message = Message::new(chat.clone(), e1.clone(), 7, 5, &data, None);
        assert_eq!(
            &message.frame[..],
            br#"{"type":"message","channel":"chat","epoch":"e1","offset":7,"ts":5,"data":{"text":"hi\nthere"}}"#
        );
        let pids = vec!["a3f0".to_owned()];
        let cursor = Cursor::new(e1.clone(), 19);
        let previous = Cursor::new(e1.clone(), 17);
        let recorded: [(Bytes, &str); 10] = [
            (
                Downstream::Welcome { heartbeat_ms: 15000, node: "n1", pid: "a3f0", session: "9d1c", transport: "sse" }
                    .encode(),
                r#"{"heartbeat_ms":15000,"node":"n1","pid":"a3f0","session":"9d1c","transport":"sse","type":"welcome"}"#,
            ),
            (
                Downstream::Gap {
                    channel: &chat,
                    epoch: &e1,
                    offset: 240,
                    previous: &previous,
                    reason: GapReason::Trimmed,
                }
                .encode(),
                r#"{"channel":"chat","epoch":"e1","offset":240,"previous":{"epoch":"e1","offset":17},"reason":"trimmed","type":"gap"}"#,
            ),
            (
                Downstream::Ack { id: "c3", result: AckResult::cursor(&chat, &cursor) }.encode(),
                r#"{"id":"c3","result":{"channel":"chat","epoch":"e1","offset":19},"type":"ack"}"#,
            ),
            (
                Downstream::Ack { id: "u", result: AckResult::Channel { channel: &chat } }.encode(),
                r#"{"id":"u","result":{"channel":"chat"},"type":"ack"}"#,
            ),
            (
                Downstream::Ack { id: "p", result: AckResult::Presence { channel: &chat, pids: &pids } }.encode(),
                r#"{"id":"p","result":{"channel":"chat","pids":["a3f0"]},"type":"ack"}"#,
            ),
            (
                Downstream::Ack { id: "g", result: AckResult::Empty {} }.encode(),
                r#"{"id":"g","result":{},"type":"ack"}"#,
            ),
            (
                Downstream::error(Some("c4"), ErrorCode::InvalidChannel, "bad"),
                r#"{"code":"invalid_channel","id":"c4","message":"bad","type":"error"}"#,
            ),
            (
                Downstream::error(None, ErrorCode::SessionUnknown, "gone"),
                r#"{"code":"session_unknown","id":null,"message":"gone","type":"error"}"#,
            ),
            (Downstream::Heartbeat.encode(), r#"{"type":"heartbeat"}"#),
            (Downstream::Reconnect { after_ms: 1500 }.encode(), r#"{"after_ms":1500,"type":"reconnect"}"#),
        ];
        for (encoded, old) in recorded {
            let new: serde_json::Value = serde_json::from_slice(&encoded).unwrap();
            let old: serde_json::Value = serde_json::from_str(old).unwrap();
            assert_eq!(new, old);
            // The one difference: serde's tag comes first, where `json!` sorted it last.
            assert!(encoded.starts_with(b"{\"type\":"), "{encoded:?}");
        }
        assert_eq!(&error_body(ErrorCode::Forbidden, "no")[..], br#"{"error":{"code":"forbidden","message":"no"}}"#);
    }

    #[test]
    fn poll_response_splices_frames_into_valid_json() {
        let frames = [Downstream::Heartbeat.encode(), Bytes::from_static(br#"{"a":1}"#)];
        let body = poll_response("n1", "s", "c@e@1", &frames);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["frames"].as_array().unwrap().len(), 2);
        assert_eq!(v["position"], "c@e@1");
        let empty: serde_json::Value = serde_json::from_slice(&poll_response("n1", "s", "", &[])).unwrap();
        assert_eq!(empty["frames"], serde_json::json!([]));
        assert_eq!(&array(&frames)[..], br#"[{"type":"heartbeat"},{"a":1}]"#);
    }

    #[test]
    fn compact_drops_whitespace_between_tokens_only() {
        let raw = RawValue::from_string("{\n  \"a b\" : [1, 2.50e3,\t\"x\\\" y\"],\r\n \"n\": null }".into()).unwrap();
        assert_eq!(compact(&raw).get(), r#"{"a b":[1,2.50e3,"x\" y"],"n":null}"#);
        let tight = RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
        assert!(matches!(compact(&tight), Cow::Borrowed(_)));
    }

    /// docs/PROTOCOL.md's error table and [`ErrorCode`] list the same codes, statuses and close codes, both ways.
    #[test]
    fn error_codes_match_the_protocol_doc() {
        let doc = include_str!("../docs/PROTOCOL.md");
        let section = doc.split("## Errors").nth(1).expect("docs/PROTOCOL.md has an `## Errors` section");
        let mut documented = std::collections::BTreeMap::new();
        for line in section.lines().take_while(|l| !l.starts_with("## ")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if let [_, code, status, close, ..] = cells[..] {
                if let Some(code) = code.strip_prefix('`').and_then(|c| c.strip_suffix('`')) {
                    documented.insert(code.to_owned(), (status.parse::<u16>().ok(), close.parse::<u16>().ok()));
                }
            }
        }
        let coded: std::collections::BTreeMap<String, (Option<u16>, Option<u16>)> =
            ErrorCode::ALL.iter().map(|c| (c.as_str().to_owned(), (Some(c.status()), Some(c.close_code())))).collect();
        assert_eq!(documented, coded, "docs/PROTOCOL.md `## Errors` table vs ErrorCode");
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
