//! Frames: parsing what clients send upstream and encoding what the server sends down (docs/PROTOCOL.md).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::channel::{ChannelName, Cursor, Epoch};
use crate::error::CoreError;

/// The longest client message id.
pub const MAX_ID_LEN: usize = 64;

/// An upstream frame, validated.
#[derive(Debug)]
pub struct Upstream {
    pub id: String,
    pub command: Command,
}

#[derive(Debug)]
pub enum Command {
    Subscribe { channel: ChannelName, since: Option<Cursor> },
    Unsubscribe { channel: ChannelName },
    Publish { channel: ChannelName, data: Box<RawValue> },
    Presence { channel: ChannelName },
    Ping,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    id: Option<serde_json::Value>,
    channel: Option<String>,
    since: Option<RawCursor>,
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct RawCursor {
    epoch: String,
    offset: u64,
}

/// Parses one frame. On failure, also returns the frame's `id` when it could be read, for the error frame.
pub fn parse(bytes: &[u8]) -> Result<Upstream, (Option<String>, CoreError)> {
    let value: Box<RawValue> =
        serde_json::from_slice(bytes).map_err(|e| (None, CoreError::MalformedJson(e.to_string())))?;
    parse_value(&value)
}

/// Parses one frame that is already known to be JSON.
pub fn parse_value(value: &RawValue) -> Result<Upstream, (Option<String>, CoreError)> {
    let raw: Raw = serde_json::from_str(value.get())
        .map_err(|e| (None, CoreError::InvalidFrame(format!("a frame is an object with a string `type`: {e}"))))?;
    let id = match raw.id {
        Some(serde_json::Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID_LEN => id,
        _ => {
            return Err((None, CoreError::InvalidFrame(format!("`id` must be a string of 1..{MAX_ID_LEN} chars"))));
        }
    };
    let fail = |err| Err((Some(id.clone()), err));
    let channel = match raw.kind.as_str() {
        "ping" => None,
        "subscribe" | "unsubscribe" | "publish" | "presence" => match raw.channel.as_deref().map(ChannelName::parse) {
            Some(Ok(channel)) => Some(channel),
            Some(Err(err)) => return fail(err),
            None => return fail(CoreError::InvalidFrame("`channel` is required".into())),
        },
        other => return fail(CoreError::UnknownType(other.chars().take(64).collect())),
    };
    let command = match (raw.kind.as_str(), channel) {
        ("subscribe", Some(channel)) => {
            let since = match raw.since {
                Some(c) => match Epoch::parse(&c.epoch) {
                    Ok(epoch) => Some(Cursor::new(epoch, c.offset)),
                    Err(err) => return fail(err),
                },
                None => None,
            };
            Command::Subscribe { channel, since }
        }
        ("unsubscribe", Some(channel)) => Command::Unsubscribe { channel },
        ("publish", Some(channel)) => match raw.data {
            Some(data) => Command::Publish { channel, data },
            None => return fail(CoreError::InvalidFrame("`data` is required".into())),
        },
        ("presence", Some(channel)) => Command::Presence { channel },
        _ => Command::Ping,
    };
    Ok(Upstream { id, command })
}

/// Encodes a downstream frame of any shape.
pub fn encode(frame: &impl Serialize) -> Bytes {
    serde_json::to_vec(frame).expect("downstream frames always serialize").into()
}

pub fn ack(id: &str, result: impl Serialize) -> Bytes {
    encode(&serde_json::json!({ "type": "ack", "id": id, "result": result }))
}

pub fn error(id: Option<&str>, err: &CoreError) -> Bytes {
    encode(&serde_json::json!({ "type": "error", "id": id, "code": err.code(), "message": err.to_string() }))
}

/// Why a `gap` frame was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GapReason {
    /// History no longer reaches back to the client's cursor.
    Trimmed,
    /// The log was reset: a new epoch.
    Epoch,
}

pub fn gap(channel: &ChannelName, now: &Cursor, reason: GapReason, previous: &Cursor) -> Bytes {
    encode(&serde_json::json!({
        "type": "gap", "channel": channel, "epoch": now.epoch, "offset": now.offset,
        "reason": reason, "previous": previous,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(bytes: &[u8]) -> &'static str {
        parse(bytes).unwrap_err().1.code()
    }

    #[test]
    fn parses_each_command() {
        let f = parse(br#"{"type":"publish","id":"c1","channel":"chat","data":{"a":[1,2]}}"#).unwrap();
        assert!(matches!(f.command, Command::Publish { ref data, .. } if data.get() == r#"{"a":[1,2]}"#));
        let f = parse(br#"{"type":"subscribe","id":"c2","channel":"chat","since":{"epoch":"e1","offset":4}}"#).unwrap();
        assert!(matches!(f.command, Command::Subscribe { since: Some(Cursor { offset: 4, .. }), .. }));
        assert!(matches!(parse(br#"{"type":"ping","id":"p"}"#).unwrap().command, Command::Ping));
    }

    #[test]
    fn bad_frames_get_their_documented_codes() {
        assert_eq!(code(b"{not json"), "malformed_json");
        assert_eq!(code(b"[]"), "invalid_frame");
        assert_eq!(code(br#"{"type":"publish","channel":"chat","data":1}"#), "invalid_frame");
        assert_eq!(code(br#"{"type":"teleport","id":"x"}"#), "unknown_type");
        assert_eq!(code(br#"{"type":"publish","id":"x","channel":"a b","data":1}"#), "invalid_channel");
        assert_eq!(code(br#"{"type":"publish","id":"x","channel":"a"}"#), "invalid_frame");
        let (id, _) = parse(br#"{"type":"teleport","id":"x9"}"#).unwrap_err();
        assert_eq!(id.as_deref(), Some("x9"));
    }
}
