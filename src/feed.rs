//! The feed: what one attached connection delivers, the same for every transport.
//!
//! A feed listens live first, then reads each channel's history from the client's cursor, then follows live
//! messages. Which message may be delivered is decided by [`Tracker`] (pure, tested in `recovery.rs`); this
//! module only drives it: it reads history for the channels the tracker says, hands it live events, and keeps
//! the session's subscriptions, TTL and live subscriptions in step.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use stickless_transports::{Ending, Outbound};
use tokio::time::Instant;
use tokio_stream::StreamMap;

use crate::hub::{Hub, Listener, Live, Topic};
use crate::metrics::Connection;
use crate::model::{now_ms, ChannelName, Position, SessionId, SessionRecord};
use crate::protocol::{Downstream, ErrorCode};
use crate::recovery::{Tracker, Verdict};
use crate::store::{ChannelLog, Sessions, StoreError};

/// The boxed stream a transport drives.
pub type Feed = Pin<Box<dyn Stream<Item = Outbound> + Send>>;

/// How long a new listener waits for the store to confirm its live subscription before reading history anyway.
pub(crate) const READY_WAIT: Duration = Duration::from_secs(5);
/// How long a feed waits before reading history again after the store failed.
const RETRY: Duration = Duration::from_secs(1);

/// What feeds read from: the store's logs and sessions, this node's hub, and two settings.
pub struct Source<S> {
    pub store: Arc<S>,
    pub hub: Arc<Hub>,
    /// The most messages one history read returns.
    pub max_batch: usize,
    /// Open feeds refresh their session every third of it.
    pub session_ttl: Duration,
}

/// A feed's state: its cursors and whether frames carry the position after them.
struct State {
    tracker: Tracker,
    track: bool,
}

impl State {
    fn outbound(&self, frame: Bytes) -> Outbound {
        let position = self.track.then(|| self.tracker.position().to_string());
        Outbound { frame, position, end: None }
    }

    /// The feed's last frame: an `error` with `code`, which ends the connection.
    fn last(&self, code: ErrorCode, message: &str) -> Outbound {
        let end = Ending { close_code: code.close_code(), reason: code.as_str() };
        Outbound { end: Some(end), ..self.outbound(Downstream::error(None, code, message)) }
    }
}

/// How long until `record`'s grant expires, to the millisecond; `None` for an anonymous session.
fn until_expiry(record: &SessionRecord) -> Option<Duration> {
    record.grant.as_ref().map(|g| Duration::from_millis(g.exp.saturating_mul(1000).saturating_sub(now_ms())))
}

/// When `record`'s grant expires on this runtime's clock; `None` for an anonymous session.
fn expiry_at(record: &SessionRecord) -> Option<Instant> {
    until_expiry(record).map(|left| Instant::now() + left)
}

/// The cursor each subscription resumes from: the client's position where it names the channel, else the
/// cursor the subscription started at.
pub fn start_position(record: &SessionRecord, position: &Position) -> Position {
    Position(
        record
            .subscriptions
            .iter()
            .map(|(name, started)| (name.clone(), position.get(name).unwrap_or(started).clone()))
            .collect(),
    )
}

fn store_failed(err: &StoreError) -> Bytes {
    let message = format!("{}: {err}", ErrorCode::StoreUnavailable.describe());
    Downstream::error(None, ErrorCode::StoreUnavailable, &message)
}

/// Opens the feed of session `id` from `position`. `control` listens to the session's control topic and was
/// started before `record` was read, so no change to the session falls between the two.
pub fn open<S: ChannelLog + Sessions>(
    source: Arc<Source<S>>,
    id: SessionId,
    mut record: SessionRecord,
    position: Position,
    track: bool,
    mut control: Listener,
    mut connection: Connection,
) -> Feed {
    let feed = Box::pin(async_stream::stream! {
        let mut live = StreamMap::with_capacity(record.subscriptions.len());
        let mut state = State { tracker: Tracker::default(), track };
        // Futures that run now and then (store calls, a sync) are boxed: held inline, the largest of them would
        // stay in every idle feed's state for the connection's life.
        Box::pin(sync(&source.hub, &mut state.tracker, &mut live, &record, &position)).await;
        // The tracker holds the cursors now.
        drop(position);
        // Unconfirmed, the control topic may have missed a change: read the session again until it is confirmed.
        let mut reload = !control.is_ready();
        let touch_every = source.session_ttl / 3;
        let mut next_touch = Instant::now() + touch_every;
        let mut failing = false;
        // One timer for the three deadlines an idle feed waits on (refreshing the session, the token's `exp`,
        // re-reading what is unconfirmed): every timer is 112 bytes more in every idle connection. It lives across
        // deliveries and is reset only when the next deadline moves: a timer made and dropped per message would
        // take the runtime's timer lock twice for every delivery on every connection.
        let mut expiry = expiry_at(&record);
        let mut retry: Option<Instant> = None;
        let mut confirmed = false;
        let timer = tokio::time::sleep_until(next_touch);
        tokio::pin!(timer);
        // Why the feed ends, told once after the loop (each `yield` is a future with the frame in it, in the feed's
        // state).
        let ended = loop {
            if reload {
                match Box::pin(source.store.load_session(&id)).await {
                    Ok(Some(latest)) => {
                        reload = false;
                        record = latest;
                        expiry = expiry_at(&record);
                    }
                    Ok(None) => {
                        break ErrorCode::SessionUnknown;
                    }
                    // Serve what is known and try again on the retry timer.
                    Err(_) => {}
                }
                Box::pin(sync(&source.hub, &mut state.tracker, &mut live, &record, &Position::default())).await;
                confirmed = false;
            }
            // Catch up every channel whose live delivery cannot be trusted, from history.
            while let Some((name, after)) = state.tracker.next_dirty() {
                // What this node heard live since the cursor, when it heard all of it: no store read (the feed
                // listens already, so everything after reaches it live).
                if let Some(messages) = source.hub.recent(&name, &after) {
                    for message in messages {
                        if state.tracker.accept_history(&name, &message.epoch, message.offset) {
                            connection.delivered();
                            yield state.outbound(message.frame.clone());
                        }
                    }
                    state.tracker.finish_read(&name, false);
                    continue;
                }
                match Box::pin(source.store.read(&name, &after, source.max_batch)).await {
                    Ok(history) => {
                        failing = false;
                        let full = history.messages.len() >= source.max_batch;
                        if let Some((resume, reason)) = history.gap {
                            let Some(previous) = state.tracker.apply_gap(&name, resume.clone()) else { continue };
                            connection.gap(reason.as_str());
                            let gap = Downstream::Gap {
                                channel: &name, epoch: &resume.epoch, offset: resume.offset, previous: &previous, reason,
                            };
                            yield state.outbound(gap.encode());
                        }
                        for message in history.messages {
                            if state.tracker.accept_history(&name, &message.epoch, message.offset) {
                                connection.delivered();
                                yield state.outbound(message.frame.clone());
                            }
                        }
                        state.tracker.finish_read(&name, full);
                    }
                    Err(err) => {
                        if !failing {
                            failing = true;
                            connection.failure("store_unavailable", id.as_str(), &err.to_string());
                            yield state.outbound(store_failed(&err));
                        }
                        break;
                    }
                }
            }
            // A topic once confirmed stays confirmed (after a store reconnect it is resubscribed and resynced), so
            // the listeners are asked only until they all are, and again after a sync added some.
            confirmed = confirmed || (control.is_ready() && !unconfirmed(&live));
            let retrying = failing || reload || !confirmed;
            retry = retrying.then(|| retry.unwrap_or_else(|| Instant::now() + RETRY));
            let wake = [expiry, retry].into_iter().flatten().fold(next_touch, Instant::min);
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                Some((channel, event)) = live.next() => match event {
                    Live::Message(message) => {
                        if state.tracker.accept_live(&message.channel, &message.epoch, message.offset) == Verdict::Deliver {
                            connection.delivered();
                            yield state.outbound(message.frame.clone());
                        }
                    }
                    Live::Lagged => {
                        connection.lagged();
                        state.tracker.mark_dirty(&channel);
                    }
                    Live::Resync | Live::SessionChanged => state.tracker.mark_all_dirty(),
                },
                Some(event) = control.next() => {
                    if matches!(event, Live::Resync | Live::Lagged) {
                        state.tracker.mark_all_dirty();
                    }
                    reload = true;
                },
                _ = &mut timer => {
                    let now = Instant::now();
                    retry = None;
                    if now >= next_touch {
                        next_touch = now + touch_every;
                        // A store error here is told by the next failing read; only a gone session ends the feed.
                        if let Ok(false) = Box::pin(source.store.touch_session(&id, &record)).await {
                            break ErrorCode::SessionUnknown;
                        }
                    } else if expiry.is_some_and(|at| now >= at) {
                        // The token's `exp`: unless a refresh arrived (on any node), the session stops receiving.
                        match Box::pin(source.store.load_session(&id)).await {
                            Ok(Some(latest)) if until_expiry(&latest).is_some_and(|left| !left.is_zero()) => {
                                record = latest;
                                expiry = expiry_at(&record);
                            }
                            Ok(Some(_)) => {
                                break ErrorCode::TokenExpired;
                            }
                            Ok(None) => {
                                break ErrorCode::SessionUnknown;
                            }
                            // Asked again on the retry timer, not at once: the store is failing.
                            Err(_) => {
                                reload = true;
                                expiry = Some(now + RETRY);
                            }
                        }
                    } else {
                        // Until the store confirms a live subscription, history is re-read on this timer instead.
                        reload |= !control.is_ready();
                        for (name, listener) in live.iter() {
                            if !listener.is_ready() {
                                state.tracker.mark_dirty(name);
                            }
                        }
                    }
                }
            }
        };
        connection.ended(ended.as_str());
        yield state.last(ended, ended.describe());
    });
    feed
}

/// Whether some channel's live subscription is not confirmed by the store yet.
fn unconfirmed(live: &StreamMap<ChannelName, Listener>) -> bool {
    live.iter().any(|(_, listener)| !listener.is_ready())
}

/// Brings the feed's channels in line with the session's subscriptions: listens to new ones (live first, then
/// followed from their cursor, which reads history) and drops removed ones.
async fn sync(
    hub: &Arc<Hub>,
    tracker: &mut Tracker,
    live: &mut StreamMap<ChannelName, Listener>,
    record: &SessionRecord,
    position: &Position,
) {
    tracker.retain(|name| record.subscriptions.contains_key(name));
    let gone: Vec<_> = live.keys().filter(|n| !record.subscriptions.contains_key(*n)).cloned().collect();
    for name in gone {
        live.remove(&name);
    }
    for (name, cursor) in start_position(record, position).0 {
        if tracker.follows(&name) {
            continue;
        }
        let mut listener = hub.listen(Topic::Channel(name.clone()));
        listener.ready(READY_WAIT).await;
        live.insert(name.clone(), listener);
        tracker.follow(name, cursor);
    }
}
