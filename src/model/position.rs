//! Positions: a client's cursors for all its channels, as text (`chat@epoch@17,ticker@epoch@402`).
//!
//! The text travels in query strings and SSE event ids (`Last-Event-ID`), so it uses only characters that need no
//! escaping there and can never contain a line break. It is also kept short whatever the channel names, since
//! proxies cap a request line and a header (8 KB in nginx by default): a name longer than [`Position::SPELLED_MAX`]
//! characters is written as its key, `~` and the 16 lowercase hex digits of the 64-bit FNV-1a hash of the name, so
//! an entry takes about 42 bytes (docs/PROTOCOL.md, "Position size"). A key is never parsed back into a name: the
//! server only ever looks a position up by a channel it knows (the session's subscriptions, an attach's
//! `channels`), and [`Position::get`] finds that channel under its key or its full name.

use std::collections::{btree_map, BTreeMap};
use std::fmt::{self, Write};

use super::{ChannelName, Cursor, Epoch, ModelError};

/// A position: cursors by channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position(pub Cursors);

impl Position {
    /// The most channels one position may name.
    pub const MAX_CHANNELS: usize = 1024;
    /// The longest name a position's text spells out; a longer one is written as its key (which is this long).
    pub const SPELLED_MAX: usize = 17;

    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let mut cursors = Cursors::default();
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
            let offset = offset.parse().map_err(|_| ModelError::InvalidPosition("bad offset"))?;
            let cursor = Cursor::new(Epoch::parse(epoch)?, offset);
            match channel.strip_prefix('~') {
                Some(hex) => cursors.by_key.insert(parse_key(hex)?, cursor),
                None => {
                    let name = ChannelName::parse(channel).map_err(|_| ModelError::InvalidPosition("bad channel"))?;
                    cursors.by_name.insert(name, cursor)
                }
            };
        }
        Ok(Position(cursors))
    }

    /// The cursor of `channel`, written under its name or its key.
    pub fn get(&self, channel: &ChannelName) -> Option<&Cursor> {
        self.0.get(channel)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let named = self.0.by_name.iter().map(|(name, cursor)| (Entry::of(name), cursor));
        let keyed = self.0.by_key.iter().map(|(key, cursor)| (Entry::Key(*key), cursor));
        for (i, (entry, cursor)) in named.chain(keyed).enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{entry}@{}@{}", cursor.epoch, cursor.offset)?;
        }
        Ok(())
    }
}

/// A position's cursors. Built from channels (a feed's start, a tracker's state), every entry has its name. Read
/// from text, an entry written as a key has none until [`Cursors::get`] is asked for the channel it stands for;
/// iterating yields the named entries only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursors {
    by_name: BTreeMap<ChannelName, Cursor>,
    by_key: BTreeMap<u64, Cursor>,
}

impl Cursors {
    /// The cursor of `channel`: under its name (as built, or as written by a client that spells long names out),
    /// else under its key.
    pub fn get(&self, channel: &ChannelName) -> Option<&Cursor> {
        self.by_name.get(channel).or_else(|| self.by_key.get(&key(channel)))
    }

    /// How many entries, named or keyed.
    pub fn len(&self) -> usize {
        self.by_name.len() + self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The named entries, by name.
    pub fn iter(&self) -> btree_map::Iter<'_, ChannelName, Cursor> {
        self.by_name.iter()
    }
}

impl FromIterator<(ChannelName, Cursor)> for Cursors {
    fn from_iter<I: IntoIterator<Item = (ChannelName, Cursor)>>(entries: I) -> Self {
        Cursors { by_name: entries.into_iter().collect(), by_key: BTreeMap::new() }
    }
}

impl IntoIterator for Cursors {
    type Item = (ChannelName, Cursor);
    type IntoIter = btree_map::IntoIter<ChannelName, Cursor>;

    fn into_iter(self) -> Self::IntoIter {
        self.by_name.into_iter()
    }
}

/// How a position's text names one channel.
enum Entry<'a> {
    Name(&'a ChannelName),
    Key(u64),
}

impl<'a> Entry<'a> {
    fn of(channel: &'a ChannelName) -> Self {
        if channel.as_str().len() > Position::SPELLED_MAX {
            Entry::Key(key(channel))
        } else {
            Entry::Name(channel)
        }
    }
}

impl fmt::Display for Entry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Name(name) => f.write_str(name.as_str()),
            Entry::Key(key) => write!(f, "~{key:016x}"),
        }
    }
}

/// A channel's key: the 64-bit FNV-1a hash of its name's bytes (web/client/protocol.js computes the same).
fn key(channel: &ChannelName) -> u64 {
    channel
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3))
}

/// The hex of a key as written: exactly 16 lowercase hex digits, so each key has one spelling.
fn parse_key(hex: &str) -> Result<u64, ModelError> {
    let valid = hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let key = if valid { u64::from_str_radix(hex, 16).ok() } else { None };
    key.ok_or(ModelError::InvalidPosition("bad channel key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    fn cursor(epoch: &str, offset: u64) -> Cursor {
        Cursor::new(Epoch::parse(epoch).unwrap(), offset)
    }

    /// The key cases the JS client passes too (tests/js/long-positions.test.mjs): one table, two implementations.
    #[test]
    fn keys_match_the_shared_table() {
        let table: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/position-keys.json")).unwrap();
        let cases = table["cases"].as_array().unwrap();
        assert!(cases.len() >= 5);
        assert_eq!(key(&channel("foobar")), 0x8594_4171_f739_67e8, "FNV-1a's published vector");
        for case in cases {
            let name = channel(case["channel"].as_str().unwrap());
            let built = Position([(name.clone(), cursor("e1", 7))].into_iter().collect());
            let written = format!("{}@e1@7", case["written"].as_str().unwrap());
            assert_eq!(built.to_string(), written, "{name}");
            assert_eq!(Position::parse(&written).unwrap().get(&name), Some(&cursor("e1", 7)), "{name}");
        }
    }

    #[test]
    fn round_trips() {
        let text = "chat@e1@17,news:sports@ab12@0";
        let p = Position::parse(text).unwrap();
        assert_eq!(p.0.len(), 2);
        assert_eq!(p.to_string(), text);
        assert_eq!(Position::parse("").unwrap(), Position::default());
        let keyed = "chat@e1@17,~0123456789abcdef@e2@3";
        assert_eq!(Position::parse(keyed).unwrap().to_string(), keyed);
    }

    #[test]
    fn names_up_to_17_characters_are_spelled_out_and_longer_ones_keyed() {
        let (short, long) = ("a".repeat(Position::SPELLED_MAX), "a".repeat(Position::SPELLED_MAX + 1));
        let p = Position([(channel(&short), cursor("e", 1)), (channel(&long), cursor("e", 2))].into_iter().collect());
        let text = p.to_string();
        let (first, second) = text.split_once(',').unwrap();
        assert_eq!(first, format!("{short}@e@1"));
        assert!(second.starts_with('~') && second.ends_with("@e@2") && second.len() == 17 + 4, "{second}");
    }

    #[test]
    fn get_finds_a_channel_by_key_or_by_full_name() {
        let long = channel(&"long/".repeat(25));
        let keyed = Position([(long.clone(), cursor("e1", 5))].into_iter().collect()).to_string();
        let by_key = Position::parse(&format!("chat@e0@1,{keyed}")).unwrap();
        assert_eq!(by_key.get(&long), Some(&cursor("e1", 5)));
        assert_eq!(by_key.get(&channel("chat")), Some(&cursor("e0", 1)));
        assert_eq!(by_key.get(&channel(&"long/".repeat(24))), None);
        // A client that writes long names in full (older ones did) still resumes.
        let spelled = Position::parse(&format!("{long}@e1@6")).unwrap();
        assert_eq!(spelled.get(&long), Some(&cursor("e1", 6)));
        assert_eq!(spelled.to_string(), keyed.replace("@5", "@6"), "and is answered with keys");
    }

    #[test]
    fn a_full_session_stays_far_under_a_proxys_8_kb() {
        // 64 channels (the default max_subscriptions) with 128-character names: 8.3 KB spelled out.
        let p = Position(
            (0..64)
                .map(|i| (channel(&format!("{i:02}{}", "x".repeat(126))), cursor("0123456789abcdef", 123_456)))
                .collect(),
        );
        let text = p.to_string();
        assert_eq!(text.len(), 64 * 42 - 1, "42 bytes per channel");
        let parsed = Position::parse(&text).unwrap();
        for (name, c) in p.0.iter() {
            assert_eq!(parsed.get(name), Some(c));
        }
    }

    #[test]
    fn rejects_malformed_entries() {
        let bad_keys = ["~@e1@1", "~0123456789abcde@e1@1", "~0123456789ABCDEF@e1@1", "~0123456789abcdef0@e1@1"];
        let odd_keys = ["~+123456789abcdef@e1@1", "~0123456789abcdeg@e1@1", "~~123456789abcdef@e1@1"];
        for bad in ["chat", "chat@e1", "chat@e1@x", "chat@e1@1@2", "ch at@e@1", "chat@e-1@1", "chat@e1@-1"] {
            assert!(Position::parse(bad).is_err(), "{bad}");
        }
        for bad in bad_keys.into_iter().chain(odd_keys) {
            assert_eq!(Position::parse(bad), Err(ModelError::InvalidPosition("bad channel key")), "{bad}");
        }
    }
}
