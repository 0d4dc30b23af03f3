//! The model: the nouns of the protocol (channel names, epochs, cursors, positions, session ids, gap reasons)
//! as types that cannot hold an invalid value. Everything else builds on it; it depends on nothing in the crate.
//!
//! Parsing untrusted text into these types fails with a [`ModelError`]; turning that into what a client sees
//! (an HTTP status, an `error` frame) is done once, in `error.rs`.

mod channel;
mod grant;
mod position;
mod session;

pub use channel::{ChannelName, Cursor, Epoch, GapReason};
pub use grant::{Grant, Pattern, Sender};
pub use position::Position;
pub use session::{SessionId, SessionRecord};

/// Why untrusted text is not a valid model value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("channel names match [A-Za-z0-9_.:/-]{{1,128}}")]
    InvalidChannel,
    #[error("invalid position: {0}")]
    InvalidPosition(&'static str),
    /// Not a well-formed session id, so no such session can exist.
    #[error("not a session id")]
    InvalidSessionId,
}

/// `bytes` random bytes from the OS, as lowercase hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random source is available");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Seconds since 1970: a token's `exp`.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Milliseconds since 1970: a message's `ts`, a presence entry's expiry.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
