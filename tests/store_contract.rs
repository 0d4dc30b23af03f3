//! One suite, two stores: the in-memory store and the Redis store must behave the same.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::value::RawValue;
use stickless::channel::{ChannelName, Cursor, Epoch};
use stickless::frame::GapReason;
use stickless::hub::{Hub, Live, Topic};
use stickless::session::{SessionId, SessionRecord};
use stickless::store::memory::MemoryStore;
use stickless::store::redis::RedisStore;
use stickless::store::{now_ms, Retention, Store, StoreError};

fn retention() -> Retention {
    Retention {
        history_size: 5,
        history_ttl: Duration::from_millis(1500),
        session_ttl: Duration::from_secs(1),
        dedupe_ttl: Duration::from_secs(60),
    }
}

fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap()
}

fn data(i: u64) -> Box<RawValue> {
    RawValue::from_string(format!("{{\"i\":{i}}}")).unwrap()
}

async fn append<S: Store>(store: &S, channel: &ChannelName, i: u64) -> Cursor {
    store.append(channel, &data(i), now_ms(), None).await.unwrap()
}

async fn offsets_after<S: Store>(
    store: &S,
    channel: &ChannelName,
    after: &Cursor,
) -> (Option<(Cursor, GapReason)>, Vec<u64>) {
    let h = store.read(channel, after, 100).await.unwrap();
    (h.gap, h.messages.iter().map(|m| m.offset).collect())
}

async fn contract<S: Store>(store: Arc<S>, hub: Arc<Hub>) {
    // Offsets count from 1 within one epoch; reads resume after a cursor.
    let c = ch("contract.log");
    let start = store.top(&c).await.unwrap();
    assert_eq!(start.offset, 0);
    for i in 1..=3 {
        assert_eq!(append(&*store, &c, i).await, Cursor::new(start.epoch.clone(), i));
    }
    assert_eq!(offsets_after(&*store, &c, &start).await, (None, vec![1, 2, 3]));
    assert_eq!(offsets_after(&*store, &c, &Cursor::new(start.epoch.clone(), 2)).await, (None, vec![3]));
    let h = store.read(&c, &start, 2).await.unwrap();
    assert_eq!(h.messages.len(), 2, "limit holds");
    assert!(std::str::from_utf8(&h.messages[0].frame).unwrap().contains(r#""data":{"i":1}"#));

    // Size bound: history keeps 5; an older cursor gets a `trimmed` gap, then what is kept.
    for i in 4..=8 {
        append(&*store, &c, i).await;
    }
    let (gap, offsets) = offsets_after(&*store, &c, &start).await;
    assert_eq!(gap, Some((Cursor::new(start.epoch.clone(), 3), GapReason::Trimmed)));
    assert_eq!(offsets, vec![4, 5, 6, 7, 8]);

    // Another epoch, or a cursor ahead of the log: an `epoch` gap from the oldest kept message.
    let (gap, _) = offsets_after(&*store, &c, &Cursor::new(Epoch::parse("elsewhere").unwrap(), 4)).await;
    assert_eq!(gap, Some((Cursor::new(start.epoch.clone(), 3), GapReason::Epoch)));
    let (gap, _) = offsets_after(&*store, &c, &Cursor::new(start.epoch.clone(), 99)).await;
    assert_eq!(gap.map(|g| g.1), Some(GapReason::Epoch));

    // Dedupe: the same key stores once and answers the first cursor.
    let d = ch("contract.dedupe");
    let first = store.append(&d, &data(1), now_ms(), Some("k1")).await.unwrap();
    let again = store.append(&d, &data(1), now_ms(), Some("k1")).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(store.top(&d).await.unwrap().offset, 1);

    // Age bound: a message older than history_ttl is gone once the log is trimmed.
    let a = ch("contract.age");
    let a0 = store.top(&a).await.unwrap();
    append(&*store, &a, 1).await;
    tokio::time::sleep(Duration::from_millis(1700)).await;
    append(&*store, &a, 2).await;
    let (gap, offsets) = offsets_after(&*store, &a, &a0).await;
    assert_eq!(gap.map(|g| g.1), Some(GapReason::Trimmed));
    assert_eq!(offsets, vec![2]);

    // Live: a listener hears appends, in order.
    let l = ch("contract.live");
    let mut listener = hub.listen(Topic::Channel(l.clone()));
    assert!(listener.ready(Duration::from_secs(5)).await);
    append(&*store, &l, 1).await;
    append(&*store, &l, 2).await;
    for expected in 1..=2 {
        match tokio::time::timeout(Duration::from_secs(5), listener.next()).await {
            Ok(Some(Live::Message(m))) => assert_eq!(m.offset, expected, "{:?}", std::str::from_utf8(&m.frame)),
            Ok(Some(other)) => panic!("expected live message {expected}, got {other:?}"),
            Ok(None) | Err(_) => panic!("expected live message {expected}, got nothing"),
        }
    }

    // Sessions: subscriptions are idempotent and bounded; presence lists public ids; sessions expire.
    let id = SessionId::random();
    let record = SessionRecord::new();
    store.create_session(&id, &record).await.unwrap();
    let s = ch("contract.room");
    let at = Cursor::new(start.epoch.clone(), 7);
    assert_eq!(store.subscribe(&id, &record.pid, &s, &at, 2).await.unwrap(), Some(at.clone()));
    let later = Cursor::new(start.epoch.clone(), 9);
    assert_eq!(store.subscribe(&id, &record.pid, &s, &later, 2).await.unwrap(), Some(at.clone()), "kept");
    store.subscribe(&id, &record.pid, &ch("contract.two"), &at, 2).await.unwrap();
    let err = store.subscribe(&id, &record.pid, &ch("contract.three"), &at, 2).await.unwrap_err();
    assert!(matches!(err, StoreError::TooManySubscriptions(2)));
    let loaded = store.load_session(&id).await.unwrap().expect("session exists");
    assert_eq!(loaded.pid, record.pid);
    assert_eq!(loaded.subscriptions.get(&s), Some(&at));
    assert_eq!(store.presence(&s).await.unwrap(), vec![record.pid.clone()]);
    store.unsubscribe(&id, &record.pid, &s).await.unwrap();
    assert!(store.presence(&s).await.unwrap().is_empty());
    assert!(!store.load_session(&id).await.unwrap().unwrap().subscriptions.contains_key(&s));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(store.load_session(&id).await.unwrap(), None, "expired after its TTL");
    assert!(!store.touch_session(&id, &record).await.unwrap());
    assert_eq!(store.subscribe(&id, &record.pid, &s, &at, 2).await.unwrap(), None);
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    let hub = Hub::local();
    let store = MemoryStore::new(retention(), hub.clone());
    contract(store, hub).await;
}

#[tokio::test]
async fn redis_store_keeps_the_contract() {
    let redis = common::Redis::start(&[]).await;
    let (hub, commands) = Hub::with_listener();
    let store = RedisStore::connect(&redis.url(), "contract", retention(), hub.clone(), commands).await.unwrap();
    contract(store, hub).await;
}
