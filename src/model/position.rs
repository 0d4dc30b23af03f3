//! Positions: a client's cursors for all its channels, as text (`chat@epoch@17,ticker@epoch@402`).
//!
//! The text travels in query strings and SSE event ids, so it uses only characters that need no escaping there
//! and can never contain a line break.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{ChannelName, Cursor, Epoch, ModelError};

/// Cursors by channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position(pub BTreeMap<ChannelName, Cursor>);

impl Position {
    /// The most channels one position may name.
    pub const MAX_CHANNELS: usize = 1024;

    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let mut cursors = BTreeMap::new();
        for entry in text.split(',').filter(|e| !e.is_empty()) {
            if cursors.len() >= Self::MAX_CHANNELS {
                return Err(ModelError::InvalidPosition("too many channels"));
            }
            let mut parts = entry.split('@');
            let (Some(channel), Some(epoch), Some(offset), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(ModelError::InvalidPosition("entries are channel@epoch@offset"));
            };
            let channel = ChannelName::parse(channel).map_err(|_| ModelError::InvalidPosition("bad channel"))?;
            let offset = offset.parse().map_err(|_| ModelError::InvalidPosition("bad offset"))?;
            cursors.insert(channel, Cursor::new(Epoch::parse(epoch)?, offset));
        }
        Ok(Position(cursors))
    }

    pub fn get(&self, channel: &ChannelName) -> Option<&Cursor> {
        self.0.get(channel)
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (channel, cursor)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{channel}@{}@{}", cursor.epoch, cursor.offset)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let text = "chat@e1@17,news:sports@ab12@0";
        let p = Position::parse(text).unwrap();
        assert_eq!(p.0.len(), 2);
        assert_eq!(p.to_string(), text);
        assert_eq!(Position::parse("").unwrap(), Position::default());
    }

    #[test]
    fn rejects_malformed_entries() {
        for bad in ["chat", "chat@e1", "chat@e1@x", "chat@e1@1@2", "ch at@e@1", "chat@e-1@1", "chat@e1@-1"] {
            assert!(Position::parse(bad).is_err(), "{bad}");
        }
    }
}
