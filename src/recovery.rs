//! Recovery: the rules that make delivery exactly-once and in order, as plain code with table tests.
//!
//! Two rules live here and nowhere else. [`resume`] decides where a read after a client's cursor starts, and
//! whether the client must be told of a gap; the memory store calls it, and the Redis read script
//! (`store/redis/scripts/resume.lua`) implements the same rule in Lua and must pass the same [`RESUME_CASES`]
//! against a real redis-server. [`Tracker`] is a feed's per-channel cursors: when a live message may be
//! delivered, when history must be read instead, and how a gap moves a cursor. The feed's stream only drives it.

use std::collections::BTreeMap;

use crate::model::{ChannelName, Cursor, Epoch, GapReason, Position};

/// What a channel's log holds now.
#[derive(Debug, Clone, Copy)]
pub struct LogBounds<'a> {
    pub epoch: &'a Epoch,
    /// The oldest offset still kept; `top + 1` when nothing is.
    pub first: u64,
    /// The newest offset ever written in this epoch (0: none).
    pub top: u64,
    /// The epochs changes of Redis primary replaced, newest first, each with the top the next primary kept of
    /// it: offsets up to that top are the same messages in both epochs.
    pub lineage: &'a [(Epoch, u64)],
}

/// Where a read after a cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Deliver the messages after this offset of the log's epoch.
    pub after: u64,
    /// Set when the client's cursor cannot be resumed as it is: messages are missing in between.
    pub gap: Option<GapReason>,
}

/// Where a read after `after` starts in a log with `bounds`.
///
/// A cursor of another epoch, or ahead of the log (it was written in a log that has since been lost), resumes
/// from the oldest kept message with an `epoch` gap; a cursor older than the oldest kept message resumes there
/// with a `trimmed` gap; anything else resumes where it is. A cursor of an epoch in the log's lineage (replaced by
/// a new primary, which may have lost messages acknowledged after the top it kept) crosses into the log's epoch
/// with an `epoch` gap either way: where it is, skipping nothing, when at or before the lowest top kept since;
/// from that top when past it (it saw messages that were lost). A cursor ahead of the log in its own epoch
/// resumes after the top with an `epoch` gap (the Redis read script starts a new epoch first, so that gap moves
/// the client on).
pub fn resume(after: &Cursor, bounds: LogBounds) -> Resume {
    let oldest = bounds.first.saturating_sub(1);
    if after.epoch != *bounds.epoch {
        let Some(crossed) = bounds.lineage.iter().position(|(epoch, _)| *epoch == after.epoch) else {
            return Resume { after: oldest, gap: Some(GapReason::Epoch) };
        };
        // Only what every change of primary since the client's epoch kept is the same.
        let kept = bounds.lineage[..=crossed].iter().map(|&(_, kept)| kept).min().unwrap_or(0);
        return if after.offset > kept {
            Resume { after: kept.max(oldest), gap: Some(GapReason::Epoch) }
        } else if after.offset < oldest {
            Resume { after: oldest, gap: Some(GapReason::Trimmed) }
        } else {
            Resume { after: after.offset, gap: Some(GapReason::Epoch) }
        };
    }
    if after.offset > bounds.top {
        Resume { after: bounds.top.max(oldest), gap: Some(GapReason::Epoch) }
    } else if after.offset < oldest {
        Resume { after: oldest, gap: Some(GapReason::Trimmed) }
    } else {
        Resume { after: after.offset, gap: None }
    }
}

/// One case of the resume rule: a log's epoch and bounds, a client's cursor, and the expected answer.
#[derive(Debug, Clone, Copy)]
pub struct ResumeCase {
    pub name: &'static str,
    pub log_epoch: &'static str,
    pub first: u64,
    pub top: u64,
    pub after_epoch: &'static str,
    pub after: u64,
    /// The epochs changes of primary replaced, newest first, and the top each next primary kept.
    pub lineage: &'static [(&'static str, u64)],
    pub expected: Resume,
}

const fn case(
    name: &'static str,
    (log_epoch, first, top): (&'static str, u64, u64),
    (after_epoch, after): (&'static str, u64),
    (resume_after, gap): (u64, Option<GapReason>),
) -> ResumeCase {
    let expected = Resume { after: resume_after, gap };
    ResumeCase { name, log_epoch, first, top, after_epoch, after, lineage: &[], expected }
}

/// A case in a log whose epoch came after changes of primary (`lineage`, newest first: each replaced epoch and
/// the top the next primary kept of it).
const fn after_failover(
    name: &'static str,
    log: (&'static str, u64, u64),
    lineage: &'static [(&'static str, u64)],
    after: (&'static str, u64),
    expected: (u64, Option<GapReason>),
) -> ResumeCase {
    ResumeCase { lineage, ..case(name, log, after, expected) }
}

/// The table every implementation of [`resume`] passes (the memory store through the function itself, the Redis
/// read script in `tests/store_contract.rs`).
pub const RESUME_CASES: &[ResumeCase] = &[
    case("empty log, nothing seen", ("e1", 1, 0), ("e1", 0), (0, None)),
    case("caught up", ("e1", 1, 5), ("e1", 5), (5, None)),
    case("behind, within history", ("e1", 1, 5), ("e1", 2), (2, None)),
    case("just before the oldest kept", ("e1", 4, 8), ("e1", 3), (3, None)),
    case("older than the oldest kept", ("e1", 4, 8), ("e1", 2), (3, Some(GapReason::Trimmed))),
    case("nothing seen, history trimmed", ("e1", 4, 8), ("e1", 0), (3, Some(GapReason::Trimmed))),
    case("everything expired, behind", ("e1", 9, 8), ("e1", 5), (8, Some(GapReason::Trimmed))),
    case("everything expired, caught up", ("e1", 9, 8), ("e1", 8), (8, None)),
    case("another epoch", ("e1", 4, 8), ("e2", 4), (3, Some(GapReason::Epoch))),
    case("another epoch, new empty log", ("e1", 1, 0), ("e2", 7), (0, Some(GapReason::Epoch))),
    case("ahead of the log", ("e1", 1, 5), ("e1", 9), (5, Some(GapReason::Epoch))),
    case("ahead of an empty log", ("e1", 1, 0), ("e1", 1), (0, Some(GapReason::Epoch))),
    after_failover(
        "new primary, within what it kept",
        ("e2", 1, 12),
        &[("e1", 10)],
        ("e1", 8),
        (8, Some(GapReason::Epoch)),
    ),
    after_failover(
        "new primary, at the top it kept",
        ("e2", 1, 12),
        &[("e1", 10)],
        ("e1", 10),
        (10, Some(GapReason::Epoch)),
    ),
    after_failover(
        "new primary, past what it kept",
        ("e2", 1, 12),
        &[("e1", 10)],
        ("e1", 13),
        (10, Some(GapReason::Epoch)),
    ),
    after_failover(
        "new primary, trimmed since",
        ("e2", 6, 12),
        &[("e1", 10)],
        ("e1", 3),
        (5, Some(GapReason::Trimmed)),
    ),
    after_failover(
        "new primary, past it and trimmed",
        ("e2", 12, 12),
        &[("e1", 10)],
        ("e1", 11),
        (11, Some(GapReason::Epoch)),
    ),
    after_failover("new primary, already in its epoch", ("e2", 1, 12), &[("e1", 10)], ("e2", 11), (11, None)),
    after_failover(
        "an epoch before the previous one",
        ("e2", 1, 12),
        &[("e1", 10)],
        ("e0", 4),
        (0, Some(GapReason::Epoch)),
    ),
    // A restarted primary changes its replication id twice (at boot, then when its first replica attaches).
    after_failover(
        "two changes, within what both kept",
        ("e3", 1, 14),
        &[("e2", 12), ("e1", 10)],
        ("e1", 9),
        (9, Some(GapReason::Epoch)),
    ),
    after_failover(
        "two changes, past what the first kept",
        ("e3", 1, 14),
        &[("e2", 12), ("e1", 10)],
        ("e1", 11),
        (10, Some(GapReason::Epoch)),
    ),
    after_failover(
        "two changes, the second kept less",
        ("e3", 1, 14),
        &[("e2", 7), ("e1", 10)],
        ("e1", 9),
        (7, Some(GapReason::Epoch)),
    ),
    after_failover(
        "two changes, from the middle epoch",
        ("e3", 1, 14),
        &[("e2", 12), ("e1", 10)],
        ("e2", 11),
        (11, Some(GapReason::Epoch)),
    ),
    after_failover(
        "two changes, trimmed since",
        ("e3", 6, 14),
        &[("e2", 12), ("e1", 10)],
        ("e1", 2),
        (5, Some(GapReason::Trimmed)),
    ),
];

/// What a feed does with a live message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The next offset of its channel: deliver it (the cursor has moved).
    Deliver,
    /// Already delivered, or of a channel the feed does not follow: drop it.
    Drop,
    /// Something was missed live (a skipped offset, another epoch): drop it and read history.
    ReadHistory,
}

#[derive(Debug, Clone)]
struct Tracked {
    cursor: Cursor,
    /// History must be read from `cursor` before live messages can be trusted.
    dirty: bool,
}

/// A feed's cursors, one per channel. Each cursor only moves forward, so nothing is delivered twice or out of
/// order, and it jumps only through [`Tracker::apply_gap`], which the feed tells the client about.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    channels: BTreeMap<ChannelName, Tracked>,
}

impl Tracker {
    /// Follows `channel` from `cursor`; its history is read before any live message counts.
    pub fn follow(&mut self, channel: ChannelName, cursor: Cursor) {
        self.channels.entry(channel).or_insert(Tracked { cursor, dirty: true });
    }

    pub fn follows(&self, channel: &ChannelName) -> bool {
        self.channels.contains_key(channel)
    }

    /// Stops following the channels `keep` says no to.
    pub fn retain(&mut self, mut keep: impl FnMut(&ChannelName) -> bool) {
        self.channels.retain(|name, _| keep(name));
    }

    /// Takes a live message of `channel` at `epoch`/`offset`.
    pub fn accept_live(&mut self, channel: &ChannelName, epoch: &Epoch, offset: u64) -> Verdict {
        let Some(tracked) = self.channels.get_mut(channel) else {
            return Verdict::Drop;
        };
        let cursor = &mut tracked.cursor;
        if tracked.dirty || *epoch != cursor.epoch {
            tracked.dirty = true;
            return Verdict::ReadHistory;
        }
        if Some(offset) == cursor.offset.checked_add(1) {
            cursor.offset = offset;
            Verdict::Deliver
        } else if offset > cursor.offset {
            tracked.dirty = true;
            Verdict::ReadHistory
        } else {
            Verdict::Drop
        }
    }

    /// Takes a message read from history; `true` when it is new to the client (the cursor has moved).
    pub fn accept_history(&mut self, channel: &ChannelName, epoch: &Epoch, offset: u64) -> bool {
        match self.channels.get_mut(channel) {
            Some(t) if *epoch == t.cursor.epoch && offset > t.cursor.offset => {
                t.cursor.offset = offset;
                true
            }
            _ => false,
        }
    }

    /// Moves `channel`'s cursor to where history resumes after a gap; answers the cursor it had, for the `gap`
    /// frame's `previous`.
    pub fn apply_gap(&mut self, channel: &ChannelName, resume: Cursor) -> Option<Cursor> {
        self.channels.get_mut(channel).map(|t| std::mem::replace(&mut t.cursor, resume))
    }

    /// After a history read: a full batch leaves more to read; a short one means live messages count again.
    pub fn finish_read(&mut self, channel: &ChannelName, full: bool) {
        if let Some(t) = self.channels.get_mut(channel) {
            t.dirty = full;
        }
    }

    /// Live delivery cannot be trusted for `channel` (its subscription is not confirmed yet).
    pub fn mark_dirty(&mut self, channel: &ChannelName) {
        if let Some(t) = self.channels.get_mut(channel) {
            t.dirty = true;
        }
    }

    /// Live delivery may have missed something on every channel (a lagged listener, a store reconnect).
    pub fn mark_all_dirty(&mut self) {
        for t in self.channels.values_mut() {
            t.dirty = true;
        }
    }

    /// The next channel to read from history, with the cursor to read after.
    pub fn next_dirty(&self) -> Option<(ChannelName, Cursor)> {
        self.channels.iter().find(|(_, t)| t.dirty).map(|(n, t)| (n.clone(), t.cursor.clone()))
    }

    pub fn position(&self) -> Position {
        Position(self.channels.iter().map(|(n, t)| (n.clone(), t.cursor.clone())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(e: &str) -> Epoch {
        Epoch::parse(e).unwrap()
    }

    #[test]
    fn resume_passes_the_table() {
        for case in RESUME_CASES {
            let log_epoch = epoch(case.log_epoch);
            let lineage: Vec<(Epoch, u64)> = case.lineage.iter().map(|&(e, kept)| (epoch(e), kept)).collect();
            let bounds = LogBounds { epoch: &log_epoch, first: case.first, top: case.top, lineage: &lineage };
            let got = resume(&Cursor::new(epoch(case.after_epoch), case.after), bounds);
            assert_eq!(got, case.expected, "{}", case.name);
        }
    }

    /// One live message against a channel's state: (cursor offset, dirty, message epoch, message offset) ->
    /// (verdict, cursor offset after, dirty after).
    #[test]
    fn live_messages_are_delivered_only_as_the_next_offset() {
        use Verdict::*;
        type Row = (&'static str, u64, bool, &'static str, u64, Verdict, u64, bool);
        let table: &[Row] = &[
            ("the next offset", 4, false, "e1", 5, Deliver, 5, false),
            ("a duplicate", 4, false, "e1", 4, Drop, 4, false),
            ("an old one", 4, false, "e1", 2, Drop, 4, false),
            ("a skipped offset", 4, false, "e1", 6, ReadHistory, 4, true),
            ("another epoch", 4, false, "e2", 5, ReadHistory, 4, true),
            ("while history is due", 4, true, "e1", 5, ReadHistory, 4, true),
            ("the first message", 0, false, "e1", 1, Deliver, 1, false),
        ];
        let chat = ChannelName::parse("chat").unwrap();
        for &(name, offset, dirty, msg_epoch, msg_offset, verdict, after, dirty_after) in table {
            let mut tracker = Tracker::default();
            tracker.follow(chat.clone(), Cursor::new(epoch("e1"), offset));
            tracker.finish_read(&chat, dirty);
            assert_eq!(tracker.accept_live(&chat, &epoch(msg_epoch), msg_offset), verdict, "{name}");
            assert_eq!(tracker.position().get(&chat).unwrap().offset, after, "{name}: cursor");
            assert_eq!(tracker.next_dirty().is_some(), dirty_after, "{name}: dirty");
        }
        let mut tracker = Tracker::default();
        assert_eq!(tracker.accept_live(&chat, &epoch("e1"), 1), Drop, "a channel not followed");
        tracker.follow(chat.clone(), Cursor::new(epoch("e1"), 0));
        assert_eq!(tracker.next_dirty(), Some((chat, Cursor::new(epoch("e1"), 0))), "new channels read history");
    }

    #[test]
    fn history_moves_cursors_forward_and_gaps_jump_them() {
        let chat = ChannelName::parse("chat").unwrap();
        let mut tracker = Tracker::default();
        tracker.follow(chat.clone(), Cursor::new(epoch("e1"), 2));
        assert!(tracker.accept_history(&chat, &epoch("e1"), 3));
        assert!(!tracker.accept_history(&chat, &epoch("e1"), 3), "never twice");
        assert!(!tracker.accept_history(&chat, &epoch("e2"), 4), "never from another epoch");
        let previous = tracker.apply_gap(&chat, Cursor::new(epoch("e2"), 10));
        assert_eq!(previous, Some(Cursor::new(epoch("e1"), 3)));
        assert!(tracker.accept_history(&chat, &epoch("e2"), 11));
        tracker.finish_read(&chat, true);
        assert!(tracker.next_dirty().is_some(), "a full batch reads on");
        tracker.finish_read(&chat, false);
        assert_eq!(tracker.accept_live(&chat, &epoch("e2"), 12), Verdict::Deliver);
        tracker.mark_all_dirty();
        assert_eq!(tracker.accept_live(&chat, &epoch("e2"), 13), Verdict::ReadHistory);
        tracker.retain(|_| false);
        assert!(!tracker.follows(&chat));
        assert_eq!(tracker.position().to_string(), "");
    }
}
