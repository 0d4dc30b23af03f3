//! Properties of every parser of untrusted input, over generated inputs (proptest): upstream frames, positions
//! and `Last-Event-ID`, tokens' claims, the configuration file, and the depth of message data. Each parser
//! answers a value or an error for anything it is given - never a panic - and what a well-formed input says is
//! what it parses to. (The attach query string's property is in `transports/src/lib.rs`; `fuzz/` runs the same
//! parsers under cargo-fuzz for longer.)

use std::time::{SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use serde_json::{json, Value};
use stickless::auth::token::{TokenSettings, Verifier};
use stickless::model::{ChannelName, Cursor, Epoch, Position, SessionId};
use stickless::protocol::{compact, json_depth, Upstream};
use stickless::Config;

fn channel_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:/-]{1,128}"
}

fn epoch() -> impl Strategy<Value = String> {
    "[a-f0-9]{1,16}"
}

/// Any JSON value, nested up to a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

const SECRET: &str = "a shared secret of at least thirty-two bytes!";

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_as_an_upstream_frame_parse_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Upstream::parse(&bytes);
    }

    #[test]
    fn frames_with_any_field_values_parse_or_are_refused(
        kind in "(subscribe|unsubscribe|publish|presence|ping|refresh|[a-z]{0,9})",
        id in prop_oneof![any::<String>().prop_map(Value::from), json_value()],
        channel in prop_oneof![any::<String>().prop_map(Value::from), json_value()],
        data in json_value(),
        since in json_value(),
    ) {
        let frame = json!({"type": kind, "id": id, "channel": channel, "data": data, "since": since, "token": data});
        let _ = Upstream::parse(frame.to_string().as_bytes());
    }

    #[test]
    fn a_well_formed_publish_parses_to_what_was_sent(id in "[A-Za-z0-9-]{1,32}", channel in channel_name(), data in json_value()) {
        let frame = json!({"type": "publish", "id": id, "channel": channel, "data": data});
        match Upstream::parse(frame.to_string().as_bytes()) {
            Ok(Upstream::Publish { id: got_id, channel: got_channel, data: got_data }) => {
                prop_assert_eq!(got_id, id);
                prop_assert_eq!(got_channel.as_str(), channel.as_str());
                // Byte for byte: data is kept as sent, never re-serialized.
                prop_assert_eq!(got_data.get(), data.to_string());
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn positions_round_trip(entries in prop::collection::btree_map(channel_name(), (epoch(), any::<u64>()), 0..64)) {
        let cursor = |(e, o): &(String, u64)| Cursor::new(Epoch::parse(e).unwrap(), *o);
        let position = Position(entries.iter().map(|(n, c)| (ChannelName::parse(n).unwrap(), cursor(c))).collect());
        let text = position.to_string();
        prop_assert!(text.len() <= entries.len() * 56, "at most ~56 bytes a channel: {} for {}", text.len(), entries.len());
        let parsed = Position::parse(&text).unwrap();
        for (name, c) in &entries {
            prop_assert_eq!(parsed.get(&ChannelName::parse(name).unwrap()), Some(&cursor(c)));
        }
    }

    #[test]
    fn any_text_as_a_position_or_last_event_id_parses_or_is_refused(text in any::<String>()) {
        let _ = Position::parse(&text);
        if let Some((session, position)) = text.split_once(';') {
            let _ = SessionId::parse(session);
            let _ = Position::parse(position);
        }
    }

    #[test]
    fn compacting_drops_only_the_whitespace_between_tokens(value in json_value()) {
        let pretty = serde_json::value::RawValue::from_string(serde_json::to_string_pretty(&value).unwrap()).unwrap();
        let compacted = compact(&pretty);
        prop_assert_eq!(compacted.get(), value.to_string());
    }

    #[test]
    fn json_depth_is_the_nesting_depth(value in json_value()) {
        let raw = serde_json::value::RawValue::from_string(value.to_string()).unwrap();
        prop_assert_eq!(json_depth(&raw), depth(&value));
    }

    #[test]
    fn tokens_with_any_claims_verify_only_as_they_say(
        sub in prop_oneof![Just(Value::Null), any::<String>().prop_map(Value::from), json_value()],
        exp_offset in prop_oneof![Just(None), (-100_000i64..100_000).prop_map(Some)],
        nbf_offset in prop_oneof![Just(None), (-100_000i64..100_000).prop_map(Some)],
        grants in json_value(),
    ) {
        let verifier = Verifier::load(&TokenSettings { hs256_secret: Some(SECRET.into()), ..TokenSettings::default() })
            .unwrap()
            .unwrap();
        let mut claims = json!({"sub": sub, "stickless": grants});
        let at = |offset: i64| (now() as i64 + offset).max(0);
        if let Some(offset) = exp_offset { claims["exp"] = json!(at(offset)); }
        if let Some(offset) = nbf_offset { claims["nbf"] = json!(at(offset)); }
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
        if let Ok(grant) = verifier.verify(&token) {
            prop_assert!(!grant.sub.is_empty() && Some(grant.sub.as_str()) == sub.as_str(), "the token's own user");
            prop_assert!(exp_offset.is_some_and(|o| o > 0) && grant.exp > now() - 1, "only an unexpired token");
            prop_assert!(nbf_offset.is_none_or(|o| o <= 0), "never before nbf");
            let named = |list: &str| grants[list].as_array().map_or(0, Vec::len);
            prop_assert!(grant.subscribe.len() <= named("subscribe") && grant.publish.len() <= named("publish"));
        }
        // The same token under another key never verifies.
        let forged = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"another secret of at least thirty-two bytes")).unwrap();
        prop_assert!(verifier.verify(&forged).is_err());
    }

    #[test]
    fn any_configuration_file_loads_or_says_why(
        lines in prop::collection::vec(prop_oneof![
            "[a-z_]{1,24} = [0-9]{1,12}",
            "[a-z_]{1,24} = \"[ -~]{0,24}\"",
            "\\[(limits|token|hooks|namespaces\\.[a-z]{1,8})\\]",
            "(history_size|session_ttl_s|max_batch|poll_timeout_ms|ready_max_load|max_data_depth) = -?[0-9]{1,20}",
            "[ -~]{0,40}",
        ], 0..12),
    ) {
        let path = std::env::temp_dir().join(format!("stickless-prop-{}-{:?}.toml", std::process::id(), std::thread::current().id()));
        std::fs::write(&path, lines.join("\n")).unwrap();
        if let Ok(config) = Config::try_load_from(["stickless", "--config", path.to_str().unwrap()]) {
            match config.settings() {
                Ok(settings) => prop_assert!(settings.history_size < usize::MAX),
                Err(why) => prop_assert!(!why.is_empty()),
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}
