//! Frames: parsing what clients send upstream and encoding what the server sends down (docs/PROTOCOL.md).

use std::collections::HashMap;

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

/// Parses one frame that is already known to be JSON. Fields are read one by one, so a bad field still leaves
/// the `id` to answer with, and `"data": null` is data like any other value.
pub fn parse_value(value: &RawValue) -> Result<Upstream, (Option<String>, CoreError)> {
    let fields: HashMap<String, &RawValue> = serde_json::from_str(value.get())
        .map_err(|_| (None, CoreError::InvalidFrame("a frame is a JSON object with a string `type`".into())))?;
    let text = |name: &str| fields.get(name).and_then(|v| serde_json::from_str::<String>(v.get()).ok());
    let id = match text("id") {
        Some(id) if !id.is_empty() && id.len() <= MAX_ID_LEN => id,
        _ => return Err((None, CoreError::InvalidFrame(format!("`id` must be a string of 1..{MAX_ID_LEN} chars")))),
    };
    let fail = |err| Err((Some(id.clone()), err));
    let Some(kind) = text("type") else { return fail(CoreError::InvalidFrame("`type` must be a string".into())) };
    let channel = match kind.as_str() {
        "ping" => None,
        "subscribe" | "unsubscribe" | "publish" | "presence" => {
            match text("channel").as_deref().map(ChannelName::parse) {
                Some(Ok(channel)) => Some(channel),
                Some(Err(err)) => return fail(err),
                None => return fail(CoreError::InvalidFrame("`channel` must be a string".into())),
            }
        }
        other => return fail(CoreError::UnknownType(other.chars().take(64).collect())),
    };
    let command = match (kind.as_str(), channel) {
        ("subscribe", Some(channel)) => {
            let since = match fields.get("since").filter(|v| v.get() != "null") {
                None => None,
                Some(raw) => match serde_json::from_str::<RawCursor>(raw.get()) {
                    Ok(c) => match Epoch::parse(&c.epoch) {
                        Ok(epoch) => Some(Cursor::new(epoch, c.offset)),
                        Err(err) => return fail(err),
                    },
                    Err(_) => return fail(CoreError::InvalidFrame("`since` is {epoch, offset}".into())),
                },
            };
            Command::Subscribe { channel, since }
        }
        ("unsubscribe", Some(channel)) => Command::Unsubscribe { channel },
        ("publish", Some(channel)) => match fields.get("data") {
            Some(data) => Command::Publish { channel, data: (*data).to_owned() },
            None => return fail(CoreError::InvalidFrame("`data` is required".into())),
        },
        ("presence", Some(channel)) => Command::Presence { channel },
        _ => Command::Ping,
    };
    Ok(Upstream { id, command })
}

/// `data` without the whitespace between its tokens. Strings and numbers stay byte for byte as sent (no
/// re-serialization), and the result holds no line break, so every frame fits one SSE `data:` line.
pub fn compact(data: &RawValue) -> std::borrow::Cow<'_, RawValue> {
    let text = data.get();
    if !text.bytes().any(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        return std::borrow::Cow::Borrowed(data);
    }
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    // Removing insignificant whitespace from valid JSON leaves valid JSON.
    match RawValue::from_string(out) {
        Ok(compacted) => std::borrow::Cow::Owned(compacted),
        Err(_) => std::borrow::Cow::Borrowed(data),
    }
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
        let f = parse(br#"{"type":"publish","id":"n","channel":"c","data":null}"#).unwrap();
        assert!(matches!(f.command, Command::Publish { ref data, .. } if data.get() == "null"));
    }

    #[test]
    fn compact_drops_whitespace_between_tokens_only() {
        let raw = RawValue::from_string("{\n  \"a b\" : [1, 2.50e3,\t\"x\\\" y\"],\r\n \"n\": null }".into()).unwrap();
        assert_eq!(compact(&raw).get(), r#"{"a b":[1,2.50e3,"x\" y"],"n":null}"#);
        let tight = RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
        assert!(matches!(compact(&tight), std::borrow::Cow::Borrowed(_)));
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
        let (id, err) =
            parse(br#"{"type":"subscribe","id":"s7","channel":"c","since":{"epoch":"e","offset":-1}}"#).unwrap_err();
        assert_eq!((id.as_deref(), err.code()), (Some("s7"), "invalid_frame"));
        let (id, err) = parse(br#"{"type":"publish","id":"s8","channel":5,"data":1}"#).unwrap_err();
        assert_eq!((id.as_deref(), err.code()), (Some("s8"), "invalid_frame"));
    }
}
