//! The pub/sub listener: one task per node that keeps the subscriber connection's subscriptions equal to the
//! hub's topics, and hands what it receives to the hub.
//!
//! Pub/sub is at-most-once: after a reconnect it re-subscribes everything and tells every feed to re-read
//! history, and a lagged reader does the same, since whatever was published meanwhile is gone from pub/sub.

use std::sync::{Arc, Weak};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Value;
use serde_json::value::RawValue;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};

use std::sync::atomic::Ordering;

use super::RedisStore;
use crate::hub::{ListenCommand, Live, Topic};
use crate::model::{now_ms, ChannelName, Epoch, Sender};
use crate::protocol::Message;

pub(super) async fn run(
    store: Weak<RedisStore>,
    subscriber: SubscriberClient,
    mut commands: mpsc::UnboundedReceiver<ListenCommand>,
) {
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    // Topics whose subscription failed: retried every second and after a reconnect.
    let mut pending: Vec<(Topic, watch::Sender<bool>)> = Vec::new();
    // The node's probe: published every second, its return through pub/sub is what "live delivery works" means.
    if let Some(store) = store.upgrade() {
        if let Err(err) = store.subscribe_confirmed(&subscriber, std::slice::from_ref(&store.probe)).await {
            tracing::warn!(%err, "could not subscribe the readiness probe; retrying after the next reconnect");
        }
    }
    let mut probes = tokio::time::interval(Duration::from_secs(1));
    loop {
        let Some(store) = store.upgrade() else { break };
        tokio::select! {
            command = commands.recv() => match command {
                Some(ListenCommand::Listen(topic, ready)) => {
                    // Every listen already queued goes in the same SUBSCRIBE and is confirmed by the same PING:
                    // a reconnect storm's thousands of sessions cost a few round trips, not two each. An unlisten
                    // ends the batch and runs after it, so both keep their order.
                    let mut batch = vec![(topic, ready)];
                    let mut then = None;
                    while batch.len() < MAX_BATCH {
                        match commands.try_recv() {
                            Ok(ListenCommand::Listen(topic, ready)) => batch.push((topic, ready)),
                            Ok(unlisten) => { then = Some(unlisten); break; }
                            Err(_) => break,
                        }
                    }
                    let names: Vec<String> = batch.iter().map(|(topic, _)| store.keys.topic(topic)).collect();
                    match store.subscribe_confirmed(&subscriber, &names).await {
                        Ok(()) => for (_, ready) in batch { let _ = ready.send(true); },
                        Err(err) => {
                            tracing::warn!(%err, topics = names.len(), "could not subscribe; retrying");
                            pending.extend(batch);
                        }
                    }
                    if let Some(ListenCommand::Unlisten(topic)) = then {
                        unlisten(&store, &subscriber, &topic).await;
                    }
                }
                Some(ListenCommand::Unlisten(topic)) => unlisten(&store, &subscriber, &topic).await,
                None => break,
            },
            _ = probes.tick() => {
                store.hub.expire_idle();
                let (client, probe, sharded) = (store.client.clone(), store.probe.clone(), store.sharded);
                // Not awaited here: a stalled Redis must not stall the delivery of what does arrive.
                tokio::spawn(async move {
                    let publish: Result<Value, _> =
                        if sharded { client.spublish(probe, "p").await } else { client.publish(probe, "p").await };
                    if let Err(err) = publish {
                        tracing::debug!(%err, "readiness probe not published");
                    }
                });
            }
            message = messages.recv() => match message {
                Ok(message) => {
                    if *message.channel == *store.probe {
                        store.live_at.store(now_ms(), Ordering::Relaxed);
                        continue;
                    }
                    let Some(topic) = store.keys.topic_of(&message.channel) else { continue };
                    let event = match &topic {
                        Topic::Channel(channel) => {
                            let payload = message.value.as_string().unwrap_or_default();
                            parse_live(channel.clone(), &payload).map_or(Live::Resync, Live::Message)
                        }
                        Topic::Session(_) => Live::SessionChanged,
                    };
                    store.hub.deliver(&topic, event);
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "pub/sub reader lagged; feeds re-read history");
                    store.hub.resync_all();
                }
                Err(RecvError::Closed) => break,
            },
            server = reconnects.recv() => {
                if matches!(server, Err(RecvError::Closed)) {
                    break;
                }
                // Subscribe exactly the hub's topics again (confirmed), then every feed re-reads history.
                tracing::info!("Redis reconnected: re-subscribing and re-reading history");
                let topics = store.hub.topics();
                let mut names: Vec<String> = topics.iter().map(|t| store.keys.topic(t)).collect();
                names.push(store.probe.clone());
                match store.subscribe_confirmed(&subscriber, &names).await {
                    Ok(()) => {
                        for (_, ready) in pending.drain(..) {
                            let _ = ready.send(true);
                        }
                    }
                    Err(err) => tracing::warn!(%err, "re-subscribe failed; retrying"),
                }
                pending.retain(|(topic, _)| topics.contains(topic));
                store.hub.resync_all();
            }
            _ = tokio::time::sleep(Duration::from_secs(1)), if !pending.is_empty() => {
                pending.retain(|(topic, _)| store.hub.topics().contains(topic));
                let names: Vec<String> = pending.iter().map(|(t, _)| store.keys.topic(t)).collect();
                if store.subscribe_confirmed(&subscriber, &names).await.is_ok() {
                    for (_, ready) in pending.drain(..) {
                        let _ = ready.send(true);
                    }
                }
            }
        }
    }
}

/// The most topics one SUBSCRIBE takes.
const MAX_BATCH: usize = 1024;

async fn unlisten(store: &RedisStore, subscriber: &SubscriberClient, topic: &Topic) {
    let name = store.keys.topic(topic);
    let _: Result<(), _> =
        if store.sharded { subscriber.sunsubscribe(name).await } else { subscriber.unsubscribe(name).await };
}

impl RedisStore {
    /// Subscribes and returns only once Redis has processed the subscriptions. fred resolves SUBSCRIBE when it
    /// is written (its replies are out-of-band), so a PING on the same connection, answered in order after the
    /// SUBSCRIBE, is what confirms it. SSUBSCRIBE already waits for its reply, one slot at a time.
    async fn subscribe_confirmed(
        &self,
        subscriber: &SubscriberClient,
        names: &[String],
    ) -> Result<(), fred::error::Error> {
        if names.is_empty() {
            return Ok(());
        }
        if self.sharded {
            for name in names {
                subscriber.ssubscribe(name.clone()).await?;
            }
            return Ok(());
        }
        subscriber.subscribe(names.to_vec()).await?;
        subscriber.ping::<Value>(None).await.map(|_| ())
    }
}

/// The live message a PUBLISH carried: `epoch offset ts\n<sender JSON or nothing>\n<data>` (see `append.lua`;
/// JSON from serde holds no raw line break).
fn parse_live(channel: ChannelName, payload: &str) -> Option<Arc<Message>> {
    let (head, rest) = payload.split_once('\n')?;
    let (from, data) = rest.split_once('\n')?;
    let from: Option<Sender> = if from.is_empty() { None } else { Some(serde_json::from_str(from).ok()?) };
    let mut parts = head.split(' ');
    let epoch = Epoch::parse(parts.next()?).ok()?;
    let offset = parts.next()?.parse().ok()?;
    let ts = parts.next()?.parse().ok()?;
    let data = RawValue::from_string(data.to_owned()).ok()?;
    Some(Message::new(channel, epoch, offset, ts, &data, from.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_payloads_parse_into_message_frames() {
        let chat = ChannelName::parse("chat").unwrap();
        let m = parse_live(chat.clone(), "e1 7 5\n\n{\"a\":1}").unwrap();
        assert_eq!((m.epoch.as_str(), m.offset), ("e1", 7));
        assert!(!std::str::from_utf8(&m.frame).unwrap().contains("from"));
        let m = parse_live(chat.clone(), "e1 8 5\n{\"sub\":\"u1\",\"pid\":\"p\"}\n2").unwrap();
        assert!(std::str::from_utf8(&m.frame).unwrap().ends_with(r#""data":2,"from":{"sub":"u1","pid":"p"}}"#));
        assert!(parse_live(chat.clone(), "e1 7\n\n1").is_none());
        assert!(parse_live(chat, "e-1 7 5\n\n1").is_none());
    }
}
