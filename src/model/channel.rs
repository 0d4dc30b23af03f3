//! Channels: validated names, epochs, cursors, and why a cursor can jump (a gap).

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::ModelError;

/// A channel name matching `[A-Za-z0-9_.:/-]{1,128}`; once built it cannot be invalid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    pub const MAX_LEN: usize = 128;

    pub fn parse(name: &str) -> Result<Self, ModelError> {
        let valid = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'));
        if valid {
            Ok(ChannelName(name.into()))
        } else {
            Err(ModelError::InvalidChannel)
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
        Epoch(super::random_hex(8).into())
    }

    /// An epoch as read back from a client or a store: short, and free of the position separators.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        if !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(Epoch(text.into()))
        } else {
            Err(ModelError::InvalidPosition("bad epoch"))
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

/// Why delivery on a channel jumped past messages a client has not seen (a `gap` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GapReason {
    /// History no longer reaches back to the client's cursor.
    Trimmed,
    /// The log was reset: a new epoch.
    Epoch,
}

impl GapReason {
    /// As the `gap` frame's `reason` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::Trimmed => "trimmed",
            GapReason::Epoch => "epoch",
        }
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
    fn epochs_are_short_alphanumeric() {
        assert_eq!(Epoch::random().as_str().len(), 16);
        for bad in ["", "a-b", "a@b", &"e".repeat(65)] {
            assert!(Epoch::parse(bad).is_err(), "{bad}");
        }
    }
}
