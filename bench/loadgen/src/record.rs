//! What every subscriber saw, checked per message: latency (receive time minus the `ts` the publisher wrote),
//! and a per-subscriber sequence check over the publisher's `seq` numbers (lost, duplicated, reordered) and over
//! the channel's offsets (skipped offsets, `gap` frames). Counters are shared atomics; each subscriber keeps its
//! own `Tracker`; the latency histogram (hdrhistogram, microseconds) is shared behind a mutex.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::frame::Payload;

/// Counters of the round being measured, shared by every subscriber task.
pub struct Shared {
    round: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    /// Distinct (subscriber, seq) deliveries of this round.
    pub received: AtomicU64,
    pub dups: AtomicU64,
    /// Messages whose offset is below the highest the subscriber already had (same epoch; the same offset again
    /// is a duplicate). Raw axum's frames have no
    /// offset, so they are not checked for order (`seq` order is not publish order: publishes run concurrently).
    pub reordered: AtomicU64,
    /// Offsets that did not follow the previous one (same epoch) - what a lost message looks like on the wire.
    pub offset_skips: AtomicU64,
    pub gaps: AtomicU64,
    /// Messages of another round (a late warm-up message) or without a payload.
    pub stray: AtomicU64,
    /// Connections that ended or failed, and errors (HTTP status, error frames, parse failures).
    pub closes: AtomicU64,
    pub errors: AtomicU64,
    /// Subscribers that have their welcome (attached and subscribed).
    pub welcomed: AtomicU64,
    /// Long-poll requests answered, and the frames they carried.
    pub polls: AtomicU64,
    pub poll_frames: AtomicU64,
    /// When the last delivery of the round arrived (us since 1970).
    pub last_delivery_us: AtomicU64,
    /// The first error text seen, for the log.
    pub first_error: Mutex<Option<String>>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            round: AtomicU64::new(0),
            hist: Mutex::new(new_histogram()),
            received: AtomicU64::new(0),
            dups: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            offset_skips: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            stray: AtomicU64::new(0),
            closes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            welcomed: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            poll_frames: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            first_error: Mutex::new(None),
        }
    }

    /// Starts counting round `r` from zero (the warm-up is round 0, the measured round 1).
    pub fn begin_round(&self, r: u64) {
        for c in [
            &self.received,
            &self.dups,
            &self.reordered,
            &self.offset_skips,
            &self.gaps,
            &self.stray,
            &self.polls,
            &self.poll_frames,
        ] {
            c.store(0, Relaxed);
        }
        self.last_delivery_us.store(0, Relaxed);
        *self.hist.lock().unwrap_or_else(|e| e.into_inner()) = new_histogram();
        self.round.store(r, Relaxed);
    }

    pub fn error(&self, what: String) {
        self.errors.fetch_add(1, Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(what);
        }
    }

    pub fn latency(&self) -> Latency {
        let h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        Latency::of(&h)
    }

    pub fn counts(&self) -> Counts {
        Counts {
            received: self.received.load(Relaxed),
            dups: self.dups.load(Relaxed),
            reordered: self.reordered.load(Relaxed),
            offset_skips: self.offset_skips.load(Relaxed),
            gaps: self.gaps.load(Relaxed),
            stray: self.stray.load(Relaxed),
            closes: self.closes.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    pub received: u64,
    pub dups: u64,
    pub reordered: u64,
    pub offset_skips: u64,
    pub gaps: u64,
    pub stray: u64,
    pub closes: u64,
    pub errors: u64,
}

/// One subscriber's view of the round: which `seq`s it has, and its cursor in the channel.
#[derive(Default)]
pub struct Tracker {
    round: u64,
    seen: Vec<u64>,
    /// (epoch, offset) of the last message: the cursor a resume sends back.
    pub cursor: Option<(String, u64)>,
}

impl Tracker {
    /// Records one delivered message (`epoch`/`offset` as the frame gave them; raw axum gives none).
    pub fn message(&mut self, shared: &Shared, epoch: Option<&str>, offset: Option<u64>, data: Option<Payload>) {
        if let (Some(epoch), Some(offset)) = (epoch, offset) {
            match &mut self.cursor {
                Some((e, o)) if e == epoch => {
                    if offset > *o + 1 {
                        shared.offset_skips.fetch_add(1, Relaxed);
                    } else if offset < *o {
                        shared.reordered.fetch_add(1, Relaxed);
                    }
                    *o = (*o).max(offset);
                }
                _ => self.cursor = Some((epoch.to_owned(), offset)),
            }
        }
        let now = crate::clock::now_us();
        let Some(p) = data else {
            shared.stray.fetch_add(1, Relaxed);
            return;
        };
        if p.r != shared.round.load(Relaxed) {
            shared.stray.fetch_add(1, Relaxed);
            return;
        }
        if p.r != self.round {
            self.round = p.r;
            self.seen.clear();
        }
        let (word, bit) = ((p.seq / 64) as usize, 1u64 << (p.seq % 64));
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            shared.dups.fetch_add(1, Relaxed);
            return;
        }
        self.seen[word] |= bit;
        shared.received.fetch_add(1, Relaxed);
        shared.last_delivery_us.fetch_max(now, Relaxed);
        let _ = shared.hist.lock().unwrap_or_else(|e| e.into_inner()).record(now.saturating_sub(p.ts).max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(r: u64, seq: u64) -> Option<Payload> {
        Some(Payload { r, seq, ts: crate::clock::now_us() })
    }

    #[test]
    fn counts_duplicates_skips_reorders_and_stray_messages() {
        let shared = Shared::new();
        shared.begin_round(1);
        let mut t = Tracker::default();
        t.message(&shared, Some("e"), Some(1), payload(1, 0));
        t.message(&shared, Some("e"), Some(2), payload(1, 1));
        t.message(&shared, Some("e"), Some(2), payload(1, 1)); // the same message again
        t.message(&shared, Some("e"), Some(4), payload(1, 3)); // offset 3 never came
        t.message(&shared, Some("e"), Some(3), payload(1, 2)); // ... and came late
        t.message(&shared, Some("e"), Some(5), payload(0, 9)); // a warm-up message
        t.message(&shared, None, None, None); // a message without the bench's payload
        let c = shared.counts();
        assert_eq!((c.received, c.dups, c.offset_skips, c.stray), (4, 1, 1, 2));
        // The late offset 3 went back (the repeated offset 2 is a duplicate, not a reorder).
        assert_eq!(c.reordered, 1);
        assert_eq!(t.cursor, Some(("e".to_owned(), 5)));
        assert_eq!(shared.latency().samples, 4);
    }

    #[test]
    fn a_new_round_starts_every_subscriber_afresh() {
        let shared = Shared::new();
        shared.begin_round(1);
        let mut t = Tracker::default();
        t.message(&shared, None, None, payload(1, 0));
        shared.begin_round(2);
        t.message(&shared, None, None, payload(2, 0));
        let c = shared.counts();
        assert_eq!((c.received, c.dups), (1, 0));
    }
}
