//! Channels: validated names, epochs, cursors, and why a cursor can jump (a gap).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

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

/// SplitMix64's finalizer: a bijection on 64-bit values that spreads consecutive inputs apart.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Epoch {
    /// A fresh epoch (64 bits, hex): never the same twice in this process, and unlikely to be any other
    /// process's. Every history read offers one (it is used only when the channel needs a new epoch), so it costs
    /// no system call: a bijective mix of a counter and a key drawn once from the OS. An epoch is no secret.
    pub fn random() -> Self {
        static KEY: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let key = *KEY.get_or_init(|| u64::from_str_radix(&super::random_hex(8), 16).unwrap_or(0));
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Epoch(format!("{:016x}", mix(key.wrapping_add(n))).into())
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
        let many: std::collections::HashSet<Epoch> = (0..10_000).map(|_| Epoch::random()).collect();
        assert_eq!(many.len(), 10_000, "never the same twice");
        assert!(many.iter().all(|e| Epoch::parse(e.as_str()).is_ok()));
        for bad in ["", "a-b", "a@b", &"e".repeat(65)] {
            assert!(Epoch::parse(bad).is_err(), "{bad}");
        }
    }
}
