//! Sessions: unguessable ids, public ids for presence, and the subscriptions a session holds.

use std::collections::BTreeMap;

use super::{ChannelName, Cursor, Grant, ModelError};

/// A session's secret id: 128 random bits as 32 hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    pub fn random() -> Self {
        SessionId(super::random_hex(16))
    }

    /// Accepts only well-formed ids, so a client cannot smuggle key syntax into the store.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        if text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            Ok(SessionId(text.to_owned()))
        } else {
            Err(ModelError::InvalidSessionId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the store keeps for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The public id that presence shows instead of the secret one.
    pub pid: String,
    /// Each subscription with the cursor it started from.
    pub subscriptions: BTreeMap<ChannelName, Cursor>,
    /// When presence entries were last refreshed (ms since 1970), so requests refresh them only now and then.
    pub presence_at: u64,
    /// What the session's token or connect hook granted; `None` for an anonymous session.
    pub grant: Option<Grant>,
    /// The client address the session was created from: its channel creations count against that address.
    pub ip: Option<std::net::IpAddr>,
}

impl SessionRecord {
    pub fn new() -> Self {
        SessionRecord {
            pid: super::random_hex(8),
            subscriptions: BTreeMap::new(),
            presence_at: super::now_ms(),
            grant: None,
            ip: None,
        }
    }
}

impl Default for SessionRecord {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_128_bit_hex_and_parse_back() {
        let id = SessionId::random();
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(SessionId::parse(id.as_str()).unwrap(), id);
        assert_ne!(SessionId::random(), id);
        for bad in ["", "abc", "sl:s:{x}", &"G".repeat(32), &"A".repeat(32)] {
            assert!(SessionId::parse(bad).is_err());
        }
    }
}
