//! The Lua scripts (`scripts/*.lua`, embedded at build time) and their replies as types.
//!
//! A script that needs a shared piece (`ensure_epoch`, `resume`) gets it prepended here, since Redis scripts
//! cannot include one another.

use fred::types::scripts::Script;
use fred::types::Value;

use super::StoreError;
use crate::model::{Cursor, Epoch, GapReason};

const ENSURE_EPOCH: &str = include_str!("scripts/ensure_epoch.lua");
const RESUME: &str = include_str!("scripts/resume.lua");

pub(super) struct Scripts {
    pub append: Script,
    pub read: Script,
    pub top: Script,
    pub subscribe: Script,
    pub set_grant: Script,
    pub load_session: Script,
}

impl Scripts {
    pub fn load() -> Self {
        let with = |parts: &[&str]| Script::from_lua(parts.concat());
        Scripts {
            append: with(&[ENSURE_EPOCH, include_str!("scripts/append.lua")]),
            read: with(&[ENSURE_EPOCH, RESUME, include_str!("scripts/read.lua")]),
            top: with(&[ENSURE_EPOCH, include_str!("scripts/top.lua")]),
            subscribe: with(&[include_str!("scripts/subscribe.lua")]),
            set_grant: with(&[include_str!("scripts/set_grant.lua")]),
            load_session: with(&[include_str!("scripts/load_session.lua")]),
        }
    }
}

pub(super) fn malformed(what: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected reply from Redis for {what}"))
}

fn text(value: &Value) -> Option<String> {
    value.as_string()
}

/// `epoch@offset`, as sessions and dedupe records keep cursors.
pub(super) fn parse_cursor(text: &str) -> Option<Cursor> {
    let (epoch, offset) = text.rsplit_once('@')?;
    Some(Cursor::new(Epoch::parse(epoch).ok()?, offset.parse().ok()?))
}

pub(super) fn format_cursor(cursor: &Cursor) -> String {
    format!("{}@{}", cursor.epoch, cursor.offset)
}

/// `append.lua`: the stored cursor.
pub(super) fn append_reply(value: &Value) -> Result<Cursor, StoreError> {
    text(value).as_deref().and_then(parse_cursor).ok_or_else(|| malformed("append"))
}

/// `read.lua`: where the read started, and the raw stream entries after it.
pub(super) struct ReadReply {
    pub epoch: Epoch,
    pub gap: Option<GapReason>,
    pub after: u64,
    pub entries: Vec<Value>,
}

impl TryFrom<Value> for ReadReply {
    type Error = StoreError;

    fn try_from(value: Value) -> Result<Self, StoreError> {
        let Value::Array(parts) = value else { return Err(malformed("read")) };
        let Ok([epoch, gap, after, Value::Array(entries)]) = <[Value; 4]>::try_from(parts) else {
            return Err(malformed("read"));
        };
        let epoch = text(&epoch).and_then(|e| Epoch::parse(&e).ok()).ok_or_else(|| malformed("read epoch"))?;
        let gap = match text(&gap).as_deref() {
            Some("") => None,
            Some("epoch") => Some(GapReason::Epoch),
            Some("trimmed") => Some(GapReason::Trimmed),
            _ => return Err(malformed("read gap")),
        };
        let after = after.as_u64().ok_or_else(|| malformed("read cursor"))?;
        Ok(ReadReply { epoch, gap, after, entries })
    }
}

/// `top.lua`: the newest cursor.
pub(super) fn top_reply(value: Value) -> Result<Cursor, StoreError> {
    let Value::Array(parts) = value else { return Err(malformed("top")) };
    let epoch = parts.first().and_then(text).and_then(|e| Epoch::parse(&e).ok()).ok_or_else(|| malformed("top"))?;
    let top = parts.get(1).and_then(|t| t.as_u64()).ok_or_else(|| malformed("top"))?;
    Ok(Cursor::new(epoch, top))
}

/// `subscribe.lua`'s answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SubscribeReply {
    /// The session has expired.
    Gone,
    /// The session is at its subscription cap.
    Full,
    /// Subscribed; the cursor in force (an existing subscription keeps its own).
    InForce(Cursor),
}

impl TryFrom<Value> for SubscribeReply {
    type Error = StoreError;

    fn try_from(value: Value) -> Result<Self, StoreError> {
        let Value::Array(parts) = value else { return Err(malformed("subscribe")) };
        match (parts.first().and_then(text).as_deref(), parts.get(1).and_then(text)) {
            (Some("gone"), None) => Ok(SubscribeReply::Gone),
            (Some("full"), None) => Ok(SubscribeReply::Full),
            (Some("ok"), Some(cursor)) => {
                parse_cursor(&cursor).map(SubscribeReply::InForce).ok_or_else(|| malformed("subscribe cursor"))
            }
            _ => Err(malformed("subscribe")),
        }
    }
}
