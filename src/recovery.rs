//! Recovery: the rules that make delivery exactly-once and in order, as plain code with table tests.
//!
//! Two rules live here and nowhere else. [`resume`] decides where a read after a client's cursor starts, and
//! whether the client must be told of a gap; the memory store calls it, and the Redis read script
//! (`store/redis/scripts/resume.lua`) implements the same rule in Lua and must pass the same [`RESUME_CASES`]
//! against a real redis-server. [`Tracker`] is a feed's per-channel cursors: when a live message may be
//! delivered, when history must be read instead, and how a gap moves a cursor. The feed's stream only drives it.

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
///
/// A vector sorted by channel, not a map: most sessions follow a handful of channels, and every connected client
/// holds one (a B-tree's first node is half a kilobyte; one entry here is 48 bytes).
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    channels: Vec<(ChannelName, Tracked)>,
}

impl Tracker {
    fn find(&self, channel: &ChannelName) -> Result<usize, usize> {
        self.channels.binary_search_by(|(name, _)| name.cmp(channel))
    }

    fn get_mut(&mut self, channel: &ChannelName) -> Option<&mut Tracked> {
        let at = self.find(channel).ok()?;
        Some(&mut self.channels[at].1)
    }

    /// Follows `channel` from `cursor`; its history is read before any live message counts.
    pub fn follow(&mut self, channel: ChannelName, cursor: Cursor) {
        if let Err(at) = self.find(&channel) {
            self.channels.insert(at, (channel, Tracked { cursor, dirty: true }));
        }
    }

    pub fn follows(&self, channel: &ChannelName) -> bool {
        self.find(channel).is_ok()
    }

    /// Stops following the channels `keep` says no to.
    pub fn retain(&mut self, mut keep: impl FnMut(&ChannelName) -> bool) {
        self.channels.retain(|(name, _)| keep(name));
    }

    /// Takes a live message of `channel` at `epoch`/`offset`.
    pub fn accept_live(&mut self, channel: &ChannelName, epoch: &Epoch, offset: u64) -> Verdict {
        let Some(tracked) = self.get_mut(channel) else {
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
        match self.get_mut(channel) {
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
        self.get_mut(channel).map(|t| std::mem::replace(&mut t.cursor, resume))
    }

    /// After a history read: a full batch leaves more to read; a short one means live messages count again.
    pub fn finish_read(&mut self, channel: &ChannelName, full: bool) {
        if let Some(t) = self.get_mut(channel) {
            t.dirty = full;
        }
    }

    /// Live delivery cannot be trusted for `channel` (its subscription is not confirmed yet, or its listener fell
    /// behind the live buffer).
    pub fn mark_dirty(&mut self, channel: &ChannelName) {
        if let Some(t) = self.get_mut(channel) {
            t.dirty = true;
        }
    }

    /// Live delivery may have missed something on every channel (a store reconnect, a lagged control topic).
    pub fn mark_all_dirty(&mut self) {
        for (_, t) in &mut self.channels {
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

/// A channel's newest messages as this node heard them live, kept so that a resuming client (above all a
/// long-poll, which resumes every poll) reads from here instead of the store.
///
/// It holds a contiguous run of offsets in one epoch, ending at the newest message heard. Whoever feeds it must
/// hear every live message of the channel in order, and [`Recent::clear`] it whenever live delivery may have
/// missed one (a store reconnect, a lagged pub/sub reader): a break in the run (a skipped offset, another
/// epoch) starts it over. So a cursor within the run can be answered completely from it, and every message after
/// its newest will still arrive live. Bounded by a count and a size in bytes.
#[derive(Debug)]
pub struct Recent<T> {
    entries: std::collections::VecDeque<(Epoch, u64, usize, T)>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl<T: Clone> Recent<T> {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Recent { entries: Default::default(), bytes: 0, max_entries, max_bytes }
    }

    /// Takes the next message heard live (`size` bytes).
    pub fn push(&mut self, epoch: &Epoch, offset: u64, size: usize, item: T) {
        let follows = self.entries.back().is_some_and(|(e, o, _, _)| e == epoch && o.checked_add(1) == Some(offset));
        // The run must end at the newest message heard: one that cannot be kept ends it.
        if !follows || self.max_entries == 0 || size > self.max_bytes {
            self.clear();
        }
        if self.max_entries == 0 || size > self.max_bytes {
            return;
        }
        self.entries.push_back((epoch.clone(), offset, size, item));
        self.bytes += size;
        while self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
            if let Some((_, _, size, _)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Everything after `cursor`, when the run answers it completely: the cursor is in the run's epoch, no older
    /// than the message before its first and no newer than its last. `None`: ask the store.
    pub fn after(&self, cursor: &Cursor) -> Option<Vec<T>> {
        let (epoch, first, _, _) = self.entries.front()?;
        let (_, last, _, _) = self.entries.back()?;
        if *epoch != cursor.epoch || cursor.offset.saturating_add(1) < *first || cursor.offset > *last {
            return None;
        }
        Some(self.entries.iter().filter(|(_, o, _, _)| *o > cursor.offset).map(|(_, _, _, t)| t.clone()).collect())
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

    #[test]
    fn recent_answers_only_cursors_within_its_run() {
        let (e1, e2) = (epoch("e1"), epoch("e2"));
        let mut recent = Recent::new(3, 1000);
        assert_eq!(recent.after(&Cursor::new(e1.clone(), 0)), None, "empty: ask the store");
        for offset in 4..=7 {
            recent.push(&e1, offset, 10, offset);
        }
        // Offsets 5..=7 kept (3 entries).
        let after = |recent: &Recent<u64>, e: &Epoch, o: u64| recent.after(&Cursor::new(e.clone(), o));
        assert_eq!(after(&recent, &e1, 4), Some(vec![5, 6, 7]), "just before the run");
        assert_eq!(after(&recent, &e1, 6), Some(vec![7]));
        assert_eq!(after(&recent, &e1, 7), Some(vec![]), "caught up: wait for live");
        assert_eq!(after(&recent, &e1, 3), None, "older than the run");
        assert_eq!(after(&recent, &e1, 8), None, "ahead of what this node heard");
        assert_eq!(after(&recent, &e2, 6), None, "another epoch");
        recent.push(&e1, 9, 10, 9);
        assert_eq!(after(&recent, &e1, 8), Some(vec![9]), "a skipped offset starts the run over");
        assert_eq!(after(&recent, &e1, 7), None);
        recent.push(&e2, 10, 10, 10);
        assert_eq!(after(&recent, &e1, 9), None, "a new epoch starts it over");
        assert_eq!(after(&recent, &e2, 9), Some(vec![10]));
        recent.clear();
        assert_eq!(after(&recent, &e2, 10), None, "cleared: ask the store");
        let mut small = Recent::new(10, 25);
        for offset in 1..=3 {
            small.push(&e1, offset, 10, offset);
        }
        assert_eq!(after(&small, &e1, 1), Some(vec![2, 3]), "bounded by bytes too");
        small.push(&e1, 4, 30, 4);
        assert_eq!(after(&small, &e1, 3), None, "a message over the byte bound empties it");
    }

    proptest::proptest! {
        /// Whatever it hears, in whatever bounds, the run answers a cursor with exactly what was heard after it
        /// since the last break (a clear, a skipped offset, another epoch), or not at all.
        #[test]
        fn recent_answers_completely_or_not_at_all(
            heard in proptest::collection::vec((0usize..2, 0u64..4, 1usize..60), 1..200),
            (cursor_epoch, cursor_offset) in (0usize..2, 0u64..500),
            (max_entries, max_bytes) in (0usize..20, 0usize..300),
        ) {
            let epochs = [epoch("e0"), epoch("e1")];
            let mut recent = Recent::new(max_entries, max_bytes);
            // The model: every message heard since the last break, unbounded.
            let mut run: Vec<(usize, u64)> = Vec::new();
            let mut offset = 0;
            for (e, step, size) in heard {
                if step == 0 {
                    recent.clear();
                    run.clear();
                    continue;
                }
                offset += step;
                if run.last().is_some_and(|&(last_e, last)| last_e != e || last + 1 != offset) {
                    run.clear();
                }
                run.push((e, offset));
                recent.push(&epochs[e], offset, size, offset);
            }
            if let Some(got) = recent.after(&Cursor::new(epochs[cursor_epoch].clone(), cursor_offset)) {
                let &(run_epoch, newest) = run.last().expect("an answer only after something was heard");
                proptest::prop_assert_eq!(run_epoch, cursor_epoch);
                proptest::prop_assert!(cursor_offset <= newest);
                let expected: Vec<u64> = run.iter().map(|&(_, o)| o).filter(|&o| o > cursor_offset).collect();
                proptest::prop_assert_eq!(got, expected);
            }
        }
    }
}
