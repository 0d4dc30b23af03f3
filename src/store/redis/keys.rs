//! Key and pub/sub topic names. Every key of a channel shares the hash tag `{channel}`, so each channel
//! operation is one script on one slot (and runs on a Redis Cluster); docs/ARCHITECTURE.md lists them all.

use crate::hub::Topic;
use crate::model::{ChannelName, SessionId};

/// The parts of a channel kept in Redis.
#[derive(Debug, Clone, Copy)]
pub(super) enum Part {
    /// Hash: `e` epoch, `t` top offset.
    Meta,
    /// Stream: the history, entry ids `<offset>-0`.
    History,
    /// Sorted set: public session ids by expiry.
    Presence,
    /// Pub/sub topic: `epoch offset ts\n<data>` per message.
    Live,
}

#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys { prefix: prefix.to_owned() }
    }

    pub fn channel(&self, channel: &ChannelName, part: Part) -> String {
        let suffix = match part {
            Part::Meta => "m",
            Part::History => "h",
            Part::Presence => "p",
            Part::Live => "live",
        };
        format!("{}:{{{channel}}}:{suffix}", self.prefix)
    }

    /// The record of a publish's dedupe key (a client message id or an idempotency key).
    pub fn dedupe(&self, channel: &ChannelName, key: &str) -> String {
        format!("{}:{{{channel}}}:d:{key}", self.prefix)
    }

    pub fn session(&self, id: &SessionId) -> String {
        format!("{}:s:{{{}}}", self.prefix, id.as_str())
    }

    /// A node's own probe topic (`nonce`: random per node), which no channel name can produce.
    pub fn probe(&self, nonce: &str) -> String {
        format!("{}:probe:{nonce}", self.prefix)
    }

    /// The pub/sub topic a hub topic is delivered on.
    pub fn topic(&self, topic: &Topic) -> String {
        match topic {
            Topic::Channel(channel) => self.channel(channel, Part::Live),
            Topic::Session(id) => format!("{}:ctl", self.session(id)),
        }
    }

    /// The hub topic of a pub/sub topic this node received; `None` for names it never subscribes.
    pub fn topic_of(&self, name: &str) -> Option<Topic> {
        let rest = name.strip_prefix(&self.prefix)?.strip_prefix(':')?;
        if let Some(id) = rest.strip_prefix("s:{").and_then(|r| r.strip_suffix("}:ctl")) {
            return SessionId::parse(id).ok().map(Topic::Session);
        }
        let channel = rest.strip_prefix('{')?.strip_suffix("}:live")?;
        ChannelName::parse(channel).ok().map(Topic::Channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_through_their_names() {
        let keys = Keys::new("sl");
        let chat = Topic::Channel(ChannelName::parse("chat:42").unwrap());
        let session = Topic::Session(SessionId::random());
        for topic in [chat, session] {
            assert_eq!(keys.topic_of(&keys.topic(&topic)), Some(topic));
        }
        assert_eq!(keys.channel(&ChannelName::parse("c").unwrap(), Part::Meta), "sl:{c}:m");
        assert_eq!(keys.topic_of("other:{c}:live"), None);
    }
}
