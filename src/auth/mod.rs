//! Who may do what: namespaces with their access rules ([`Namespaces`]), connection tokens ([`token`]) and the
//! application's backend hooks ([`hooks`]). The gateway asks; this module decides from configuration, the
//! session's [`Grant`] and, where a namespace says so, the hook.
//!
//! A channel's namespace is the part of its name before the first `:` (`chat:42` is in `chat`); a name without
//! `:` is in the default namespace. Secure by default: with no configuration, anonymous clients may use only the
//! `demo` namespace; everything else needs a token whose claims name the channel.

pub mod hooks;
pub mod token;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::model::{ChannelName, Grant};

/// Who may subscribe, publish or see presence in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Any session, with or without a token.
    Anonymous,
    /// A session whose token claims name the channel (`stickless.subscribe`, `.publish`, `.presence`).
    Token,
    /// The application's hook decides, per request.
    Hook,
    /// No client; only the backend API (`/v1/publish`, `/v1/presence`).
    #[serde(alias = "backend")]
    Nobody,
}

/// One namespace's rules. Unset history and size fields take the server's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    #[serde(default = "Namespace::token")]
    pub subscribe: Access,
    #[serde(default = "Namespace::token")]
    pub publish: Access,
    #[serde(default = "Namespace::token")]
    pub presence: Access,
    /// `<namespace>:<sub>` (and `<namespace>:<sub>/...`) is readable only by the user `sub`, whatever
    /// `subscribe` says.
    #[serde(default)]
    pub user_channels: bool,
    pub history_size: Option<usize>,
    #[serde(default, rename = "history_ttl_s", with = "seconds")]
    pub history_ttl: Option<Duration>,
    pub max_message_bytes: Option<usize>,
}

mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_secs))
    }
}

impl Namespace {
    fn token() -> Access {
        Access::Token
    }

    /// Only token holders, as far as their claims go: the default namespace's rules.
    pub fn by_token() -> Self {
        Namespace {
            subscribe: Access::Token,
            publish: Access::Token,
            presence: Access::Token,
            user_channels: false,
            history_size: None,
            history_ttl: None,
            max_message_bytes: None,
        }
    }

    /// Anyone: the demo namespace's rules.
    pub fn open() -> Self {
        Namespace {
            subscribe: Access::Anonymous,
            publish: Access::Anonymous,
            presence: Access::Anonymous,
            ..Self::by_token()
        }
    }
}

/// Every namespace's rules, and the default namespace's for names without `:` or in unnamed namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces {
    pub default: Namespace,
    pub named: BTreeMap<String, Namespace>,
}

impl Default for Namespaces {
    /// The secure default: tokens only, except the demo's channels (`demo:*`), open to anyone.
    fn default() -> Self {
        Namespaces { default: Namespace::by_token(), named: BTreeMap::from([("demo".to_owned(), Namespace::open())]) }
    }
}

/// What a client asks to do on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Subscribe,
    Publish,
    Presence,
}

/// What the rules say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// Ask the hook.
    AskHook,
}

impl Namespaces {
    /// The namespace of `channel`: its prefix before the first `:` if configured, else the default.
    pub fn of(&self, channel: &ChannelName) -> &Namespace {
        channel.as_str().split_once(':').and_then(|(ns, _)| self.named.get(ns)).unwrap_or(&self.default)
    }

    /// Whether a session with `grant` (`None`: anonymous) may do `action` on `channel`.
    pub fn decide(&self, action: Action, channel: &ChannelName, grant: Option<&Grant>) -> Decision {
        let namespace = self.of(channel);
        // A user channel is its user's alone, to read and to see who else is on it.
        if matches!(action, Action::Subscribe | Action::Presence) && namespace.user_channels {
            let owner = channel.as_str().split_once(':').map(|(_, rest)| rest.split('/').next().unwrap_or(rest));
            return match (grant, owner) {
                (Some(grant), Some(owner)) if grant.sub == owner => Decision::Allow,
                _ => Decision::Deny,
            };
        }
        let access = match action {
            Action::Subscribe => namespace.subscribe,
            Action::Publish => namespace.publish,
            Action::Presence => namespace.presence,
        };
        let claimed = grant.is_some_and(|g| match action {
            Action::Subscribe => g.may_subscribe(channel),
            Action::Publish => g.may_publish(channel),
            Action::Presence => g.may_see_presence(channel),
        });
        match access {
            Access::Anonymous => Decision::Allow,
            Access::Token if claimed => Decision::Allow,
            Access::Token | Access::Nobody => Decision::Deny,
            Access::Hook => Decision::AskHook,
        }
    }

    /// Whether some namespace leaves a decision to the hook.
    pub fn ask_the_hook(&self) -> bool {
        std::iter::once(&self.default)
            .chain(self.named.values())
            .any(|ns| [ns.subscribe, ns.publish, ns.presence].contains(&Access::Hook))
    }

    /// One line per namespace saying what anonymous clients may do there, for the start-up log.
    pub fn describe_anonymous(&self) -> Vec<String> {
        let line = |name: &str, ns: &Namespace| {
            let user = ns.user_channels;
            let rules = [
                ("subscribe", ns.subscribe, user),
                ("publish", ns.publish, false),
                ("see presence", ns.presence, user),
            ];
            let open: Vec<&str> = rules
                .iter()
                .filter(|(_, access, _)| *access == Access::Anonymous)
                .filter(|r| !r.2)
                .map(|r| r.0)
                .collect();
            let asked: Vec<&str> =
                rules.iter().filter(|(_, access, _)| *access == Access::Hook).filter(|r| !r.2).map(|r| r.0).collect();
            let mut what = if open.is_empty() { "nothing".to_owned() } else { open.join(", ") };
            if !asked.is_empty() {
                what += &format!(" (the hook decides: {})", asked.join(", "));
            }
            if user {
                what += " (user channels: readable by their own user only)";
            }
            format!("{name}: anonymous clients may {what}")
        };
        let mut lines = vec![line("default namespace", &self.default)];
        lines.extend(self.named.iter().map(|(name, ns)| line(&format!("namespace `{name}:`"), ns)));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Pattern;

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    fn grant(sub: &str, subscribe: &[&str]) -> Grant {
        Grant {
            sub: sub.into(),
            exp: u64::MAX,
            subscribe: subscribe.iter().map(|p| Pattern::new(*p)).collect(),
            publish: vec![],
            presence: vec![],
        }
    }

    #[test]
    fn the_default_opens_only_the_demo_namespace_to_anonymous_clients() {
        let ns = Namespaces::default();
        for action in [Action::Subscribe, Action::Publish, Action::Presence] {
            assert_eq!(ns.decide(action, &ch("demo:chat"), None), Decision::Allow);
            assert_eq!(ns.decide(action, &ch("secret:x"), None), Decision::Deny);
            assert_eq!(ns.decide(action, &ch("plain"), None), Decision::Deny);
        }
        let g = grant("u1", &["secret:*"]);
        assert_eq!(ns.decide(Action::Subscribe, &ch("secret:x"), Some(&g)), Decision::Allow);
        assert_eq!(ns.decide(Action::Publish, &ch("secret:x"), Some(&g)), Decision::Deny, "claims are per action");
        assert_eq!(ns.decide(Action::Subscribe, &ch("other:x"), Some(&g)), Decision::Deny);
    }

    #[test]
    fn user_channels_are_readable_only_by_their_user() {
        let mut ns = Namespaces::default();
        ns.named.insert("user".into(), Namespace { user_channels: true, ..Namespace::open() });
        let alice = grant("alice", &[]);
        assert_eq!(ns.decide(Action::Subscribe, &ch("user:alice"), Some(&alice)), Decision::Allow);
        assert_eq!(ns.decide(Action::Subscribe, &ch("user:alice/inbox"), Some(&alice)), Decision::Allow);
        assert_eq!(ns.decide(Action::Subscribe, &ch("user:bob"), Some(&alice)), Decision::Deny);
        assert_eq!(ns.decide(Action::Subscribe, &ch("user:alice"), None), Decision::Deny);
        assert_eq!(ns.decide(Action::Presence, &ch("user:alice"), None), Decision::Deny, "presence too");
        assert_eq!(ns.decide(Action::Presence, &ch("user:alice"), Some(&alice)), Decision::Allow);
        let alice2 = grant("alice2", &[]);
        assert_eq!(ns.decide(Action::Subscribe, &ch("user:alice"), Some(&alice2)), Decision::Deny);
    }
}
