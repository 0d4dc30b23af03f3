//! Channels: validated names, epochs, cursors and the messages of a channel's log.
//!
//! A message is encoded into its `message` frame once, when it enters this node, and the bytes are shared by
//! every connection that delivers it.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::CoreError;

/// A channel name matching `[A-Za-z0-9_.:/-]{1,128}`; once built it cannot be invalid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    pub const MAX_LEN: usize = 128;

    pub fn parse(name: &str) -> Result<Self, CoreError> {
        let valid = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'));
        if valid {
            Ok(ChannelName(name.into()))
        } else {
            Err(CoreError::InvalidChannel)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One generation of a channel's log; it changes whenever history was lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// A fresh random epoch (64 bits, hex).
    pub fn random() -> Self {
        Epoch(crate::random_hex(8).into())
    }

    /// An epoch as read back from a client or a store: short, and free of the position separators.
    pub fn parse(text: &str) -> Result<Self, CoreError> {
        if !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(Epoch(text.into()))
        } else {
            Err(CoreError::InvalidPosition("bad epoch"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a client is in a channel: the last offset it has seen in an epoch (0: nothing yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cursor {
    pub epoch: Epoch,
    pub offset: u64,
}

impl Cursor {
    pub fn new(epoch: Epoch, offset: u64) -> Self {
        Cursor { epoch, offset }
    }
}

/// A stored message with its encoded `message` frame.
#[derive(Debug)]
pub struct Message {
    pub channel: ChannelName,
    pub epoch: Epoch,
    pub offset: u64,
    pub frame: Bytes,
}

impl Message {
    /// Builds the message and encodes its frame.
    pub fn new(channel: ChannelName, epoch: Epoch, offset: u64, ts: u64, data: &RawValue) -> Arc<Self> {
        #[derive(Serialize)]
        struct Frame<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            channel: &'a ChannelName,
            epoch: &'a Epoch,
            offset: u64,
            ts: u64,
            data: &'a RawValue,
        }
        let frame = serde_json::to_vec(&Frame { kind: "message", channel: &channel, epoch: &epoch, offset, ts, data })
            .expect("a message frame always serializes");
        Arc::new(Message { channel, epoch, offset, frame: frame.into() })
    }

    pub fn cursor(&self) -> Cursor {
        Cursor::new(self.epoch.clone(), self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_follow_the_pattern() {
        for ok in ["chat", "a", "news:sports", "room/42", "x.y_z-1"] {
            assert!(ChannelName::parse(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(129);
        for bad in ["", "a b", "a@b", "a,b", "a;b", "{a}", "é", long.as_str()] {
            assert!(ChannelName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn message_frame_is_encoded_once_with_raw_data() {
        let data = RawValue::from_string(r#"{"text":"hi\nthere"}"#.into()).unwrap();
        let m = Message::new(ChannelName::parse("chat").unwrap(), Epoch::parse("e1").unwrap(), 7, 5, &data);
        assert_eq!(
            std::str::from_utf8(&m.frame).unwrap(),
            r#"{"type":"message","channel":"chat","epoch":"e1","offset":7,"ts":5,"data":{"text":"hi\nthere"}}"#
        );
    }
}
