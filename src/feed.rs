//! The feed: what one attached connection delivers, the same for every transport.
//!
//! A feed listens live first, then reads each channel's history from the client's cursor, then follows live
//! messages. A live message is delivered only when it is the very next offset; anything else (a skipped
//! offset, another epoch, a lagged listener, a store reconnect) sends the feed back to history, which is the
//! truth. Each channel's cursor only moves forward, so nothing is delivered twice or out of order, and a gap in
//! history is told with a `gap` frame, never skipped silently.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use stickless_transports::Outbound;
use tokio_stream::StreamMap;

use crate::channel::{ChannelName, Cursor, Message};
use crate::error::CoreError;
use crate::frame;
use crate::gateway::Core;
use crate::hub::{Listener, Live, Topic};
use crate::position::Position;
use crate::session::{SessionId, SessionRecord};
use crate::store::Store;

/// The boxed stream a transport drives.
pub type Feed = Pin<Box<dyn Stream<Item = Outbound> + Send>>;

/// How long a new listener waits for the store to confirm its live subscription before reading history anyway.
pub(crate) const READY_WAIT: Duration = Duration::from_secs(5);
/// How long a feed waits before reading history again after the store failed.
const RETRY: Duration = Duration::from_secs(1);

struct Channel {
    cursor: Cursor,
    /// History must be read from `cursor` before live messages can be trusted.
    dirty: bool,
}

struct State {
    channels: BTreeMap<ChannelName, Channel>,
    track: bool,
}

impl State {
    fn position(&self) -> Position {
        Position(self.channels.iter().map(|(n, c)| (n.clone(), c.cursor.clone())).collect())
    }

    fn outbound(&self, frame: bytes::Bytes) -> Outbound {
        let position = self.track.then(|| self.position().to_string());
        Outbound { frame, position }
    }

    fn next_dirty(&self) -> Option<(ChannelName, Cursor)> {
        self.channels.iter().find(|(_, c)| c.dirty).map(|(n, c)| (n.clone(), c.cursor.clone()))
    }

    /// Whether some channel's live subscription is not confirmed by the store yet.
    fn unconfirmed(&self, live: &StreamMap<ChannelName, Listener>) -> bool {
        live.iter().any(|(_, listener)| !listener.is_ready())
    }

    /// Takes a live message: `Some` when it is the next one to deliver.
    fn accept(&mut self, message: &Message) -> bool {
        let Some(channel) = self.channels.get_mut(&message.channel) else {
            return false;
        };
        let cursor = &mut channel.cursor;
        if channel.dirty || message.epoch != cursor.epoch {
            channel.dirty = true;
            return false;
        }
        if Some(message.offset) == cursor.offset.checked_add(1) {
            cursor.offset = message.offset;
            true
        } else {
            // Behind the cursor: a duplicate. Ahead of it: something was missed live, so read history.
            channel.dirty |= message.offset > cursor.offset;
            false
        }
    }
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

/// Opens the feed of session `id` from `position`. `control` listens to the session's control topic and was
/// started before `record` was read, so no change to the session falls between the two.
pub fn open<S: Store>(
    core: Arc<Core<S>>,
    id: SessionId,
    record: SessionRecord,
    position: Position,
    track: bool,
    mut control: Listener,
) -> Feed {
    Box::pin(async_stream::stream! {
        let mut live = StreamMap::new();
        let mut state = State { channels: BTreeMap::new(), track };
        sync(&core, &mut state, &mut live, &record, &position).await;
        let mut record = record;
        // Unconfirmed, the control topic may have missed a change: read the session again until it is confirmed.
        let mut reload = !control.is_ready();
        let mut touch = tokio::time::interval(core.config.session_ttl / 3);
        touch.tick().await;
        let mut failing = false;
        loop {
            if reload {
                match core.store.load_session(&id).await {
                    Ok(Some(latest)) => {
                        reload = false;
                        record = latest;
                    }
                    Ok(None) => {
                        yield state.outbound(frame::error(None, &CoreError::SessionUnknown));
                        break;
                    }
                    // Serve what is known and try again on the retry timer.
                    Err(_) => {}
                }
                sync(&core, &mut state, &mut live, &record, &Position::default()).await;
            }
            // Catch up every channel whose live delivery cannot be trusted, from history.
            while let Some((name, after)) = state.next_dirty() {
                match core.store.read(&name, &after, core.config.max_batch).await {
                    Ok(history) => {
                        failing = false;
                        let full = history.messages.len() >= core.config.max_batch;
                        let Some(channel) = state.channels.get_mut(&name) else { continue };
                        if let Some((resume, reason)) = history.gap {
                            let frame = frame::gap(&name, &resume, reason, &channel.cursor);
                            channel.cursor = resume;
                            yield state.outbound(frame);
                        }
                        for message in history.messages {
                            let Some(channel) = state.channels.get_mut(&name) else { break };
                            if message.epoch == channel.cursor.epoch && message.offset > channel.cursor.offset {
                                channel.cursor.offset = message.offset;
                                yield state.outbound(message.frame.clone());
                            }
                        }
                        if let Some(channel) = state.channels.get_mut(&name) {
                            channel.dirty = full;
                        }
                    }
                    Err(err) => {
                        if !failing {
                            failing = true;
                            yield state.outbound(frame::error(None, &CoreError::from(err)));
                        }
                        break;
                    }
                }
            }
            tokio::select! {
                Some((_, event)) = live.next() => match event {
                    Live::Message(message) => {
                        if state.accept(&message) {
                            yield state.outbound(message.frame.clone());
                        }
                    }
                    Live::Resync | Live::SessionChanged => {
                        for channel in state.channels.values_mut() {
                            channel.dirty = true;
                        }
                    }
                },
                Some(event) = control.next() => {
                    if matches!(event, Live::Resync) {
                        for channel in state.channels.values_mut() {
                            channel.dirty = true;
                        }
                    }
                    reload = true;
                },
                _ = touch.tick() => {
                    // A store error here is told by the next failing read; only a gone session ends the feed.
                    if let Ok(false) = core.store.touch_session(&id, &record).await {
                        yield state.outbound(frame::error(None, &CoreError::SessionUnknown));
                        break;
                    }
                },
                // Until the store confirms a live subscription, history is re-read on this timer instead.
                _ = tokio::time::sleep(RETRY), if failing || reload || !control.is_ready() || state.unconfirmed(&live) => {
                    reload |= !control.is_ready();
                    for (name, listener) in live.iter() {
                        if !listener.is_ready() {
                            if let Some(channel) = state.channels.get_mut(name) {
                                channel.dirty = true;
                            }
                        }
                    }
                }
            }
        }
    })
}

/// Brings the feed's channels in line with the session's subscriptions: listens to new ones (live first, then
/// marked for a history read) and drops removed ones.
async fn sync<S: Store>(
    core: &Arc<Core<S>>,
    state: &mut State,
    live: &mut StreamMap<ChannelName, Listener>,
    record: &SessionRecord,
    position: &Position,
) {
    state.channels.retain(|name, _| record.subscriptions.contains_key(name));
    let gone: Vec<_> = live.keys().filter(|n| !record.subscriptions.contains_key(*n)).cloned().collect();
    for name in gone {
        live.remove(&name);
    }
    for (name, cursor) in start_position(record, position).0 {
        if state.channels.contains_key(&name) {
            continue;
        }
        let mut listener = core.hub.listen(Topic::Channel(name.clone()));
        listener.ready(READY_WAIT).await;
        live.insert(name.clone(), listener);
        state.channels.insert(name, Channel { cursor, dirty: true });
    }
}
