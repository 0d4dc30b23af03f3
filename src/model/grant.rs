//! What a session may do, as its connection token (or the connect hook) granted it, and who sent a message.

use serde::{Deserialize, Serialize};

use super::ChannelName;

/// A channel pattern from a token's claims: an exact channel name, or a prefix ending in `*` (`chat:*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pattern(String);

impl Pattern {
    pub fn new(text: impl Into<String>) -> Self {
        Pattern(text.into())
    }

    pub fn matches(&self, channel: &ChannelName) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => channel.as_str().starts_with(prefix),
            None => channel.as_str() == self.0,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What an authenticated session may do; kept with the session, so every node enforces the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The user, as the token's `sub` names it.
    pub sub: String,
    /// When the grant ends (seconds since 1970); past it the session receives nothing until refreshed.
    pub exp: u64,
    #[serde(default)]
    pub subscribe: Vec<Pattern>,
    #[serde(default)]
    pub publish: Vec<Pattern>,
    #[serde(default)]
    pub presence: Vec<Pattern>,
}

impl Grant {
    pub fn may_subscribe(&self, channel: &ChannelName) -> bool {
        self.subscribe.iter().any(|p| p.matches(channel))
    }

    pub fn may_publish(&self, channel: &ChannelName) -> bool {
        self.publish.iter().any(|p| p.matches(channel))
    }

    pub fn may_see_presence(&self, channel: &ChannelName) -> bool {
        self.presence.iter().any(|p| p.matches(channel))
    }

    /// Whether the grant has ended at `now_secs`.
    pub fn expired(&self, now_secs: u64) -> bool {
        now_secs >= self.exp
    }
}

/// Who published a message from a client: the user and the session's public id. Backend messages have none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    /// The user's id, or `None` for an anonymous session.
    pub sub: Option<String>,
    pub pid: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_names_or_prefixes() {
        let chat = ChannelName::parse("chat:42").unwrap();
        for (pattern, matches) in
            [("chat:42", true), ("chat:*", true), ("*", true), ("chat:4", false), ("news:*", false)]
        {
            assert_eq!(Pattern::new(pattern).matches(&chat), matches, "{pattern}");
        }
    }
}
