//! One suite, two stores: every case runs as its own named test against the in-memory store and against the
//! Redis store on a real redis-server, so one failure does not hide the others. The resume rule's table
//! (`recovery::RESUME_CASES`) runs here against the Redis read script; the memory store calls the rule itself.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::value::RawValue;
use stickless::hub::{Hub, Live, Topic};
use stickless::model::{
    now_ms, ChannelName, Cursor, Epoch, GapReason, Grant, Pattern, Sender, SessionId, SessionRecord,
};
use stickless::recovery::RESUME_CASES;
use stickless::store::redis::RedisStore;
use stickless::store::{Append, ChannelLog, Creator, Keep, Retention, Store, StoreError};

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

fn keep() -> Keep {
    Keep { size: 5, ttl: Duration::from_millis(1500) }
}

/// One message of `data`, from the backend, kept as `retention()` says.
fn message<'a>(data: &'a RawValue, dedupe: Option<&'a str>) -> Append<'a> {
    Append { data, ts: now_ms(), dedupe, from: None, keep: keep(), creator: Creator::Backend }
}

async fn append<S: Store>(store: &S, channel: &ChannelName, i: u64) -> Cursor {
    store.append(channel, message(&data(i), None)).await.unwrap()
}

async fn offsets_after<S: Store>(
    store: &S,
    channel: &ChannelName,
    after: &Cursor,
) -> (Option<(Cursor, GapReason)>, Vec<u64>) {
    let h = store.read(channel, after, 100).await.unwrap();
    (h.gap, h.messages.iter().map(|m| m.offset).collect())
}

async fn offsets_count_from_one_and_reads_resume_after_a_cursor<S: Store>(store: Arc<S>, _: Arc<Hub>) {
    let c = ch("contract.log");
    let start = store.top(&c, Creator::Backend).await.unwrap();
    assert_eq!(start.offset, 0);
    for i in 1..=3 {
        assert_eq!(append(&*store, &c, i).await, Cursor::new(start.epoch.clone(), i));
    }
    assert_eq!(store.top(&c, Creator::Backend).await.unwrap(), Cursor::new(start.epoch.clone(), 3));
    assert_eq!(offsets_after(&*store, &c, &start).await, (None, vec![1, 2, 3]));
    assert_eq!(offsets_after(&*store, &c, &Cursor::new(start.epoch.clone(), 2)).await, (None, vec![3]));
    let h = store.read(&c, &start, 2).await.unwrap();
    assert_eq!(h.messages.len(), 2, "limit holds");
    assert!(std::str::from_utf8(&h.messages[0].frame).unwrap().contains(r#""data":{"i":1}"#));
}

async fn history_keeps_history_size_and_tells_a_trimmed_gap<S: Store>(store: Arc<S>, _: Arc<Hub>) {
    let c = ch("contract.size");
    let start = store.top(&c, Creator::Backend).await.unwrap();
    for i in 1..=8 {
        append(&*store, &c, i).await;
    }
    let (gap, offsets) = offsets_after(&*store, &c, &start).await;
    assert_eq!(gap, Some((Cursor::new(start.epoch.clone(), 3), GapReason::Trimmed)));
    assert_eq!(offsets, vec![4, 5, 6, 7, 8]);
}

async fn another_epoch_or_a_cursor_ahead_gets_an_epoch_gap<S: Store>(store: Arc<S>, _: Arc<Hub>) {
    let c = ch("contract.epoch");
    let start = store.top(&c, Creator::Backend).await.unwrap();
    for i in 1..=8 {
        append(&*store, &c, i).await;
    }
    let (gap, offsets) = offsets_after(&*store, &c, &Cursor::new(Epoch::parse("elsewhere").unwrap(), 4)).await;
    assert_eq!(gap, Some((Cursor::new(start.epoch.clone(), 3), GapReason::Epoch)));
    assert_eq!(offsets, vec![4, 5, 6, 7, 8]);
    let (gap, _) = offsets_after(&*store, &c, &Cursor::new(start.epoch.clone(), 99)).await;
    assert_eq!(gap.map(|g| g.1), Some(GapReason::Epoch));
}

async fn a_dedupe_key_stores_once<S: Store>(store: Arc<S>, _: Arc<Hub>) {
    let d = ch("contract.dedupe");
    let first = store.append(&d, message(&data(1), Some("k1"))).await.unwrap();
    let again = store.append(&d, message(&data(1), Some("k1"))).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(store.top(&d, Creator::Backend).await.unwrap().offset, 1);
    let other = store.append(&d, message(&data(2), Some("k2"))).await.unwrap();
    assert_eq!(other.offset, 2);
}

async fn messages_older_than_history_ttl_are_trimmed<S: Store>(store: Arc<S>, _: Arc<Hub>) {
    let a = ch("contract.age");
    let a0 = store.top(&a, Creator::Backend).await.unwrap();
    append(&*store, &a, 1).await;
    tokio::time::sleep(Duration::from_millis(1700)).await;
    append(&*store, &a, 2).await;
    let (gap, offsets) = offsets_after(&*store, &a, &a0).await;
    assert_eq!(gap.map(|g| g.1), Some(GapReason::Trimmed));
    assert_eq!(offsets, vec![2]);
}

async fn live_listeners_hear_appends_in_order<S: Store>(store: Arc<S>, hub: Arc<Hub>) {
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
}

async fn subscriptions_are_idempotent_and_bounded<S: Store>(store: Arc<S>, _: Arc<Hub>) {
    let id = SessionId::random();
    let record = SessionRecord::new();
    store.create_session(&id, &record).await.unwrap();
    let s = ch("contract.room");
    let at = Cursor::new(Epoch::parse("e1").unwrap(), 7);
    assert_eq!(store.subscribe(&id, &record.pid, &s, &at, 2).await.unwrap(), Some(at.clone()));
    let later = Cursor::new(at.epoch.clone(), 9);
    assert_eq!(store.subscribe(&id, &record.pid, &s, &later, 2).await.unwrap(), Some(at.clone()), "kept");
    store.subscribe(&id, &record.pid, &ch("contract.two"), &at, 2).await.unwrap();
    let err = store.subscribe(&id, &record.pid, &ch("contract.three"), &at, 2).await.unwrap_err();
    assert!(matches!(err, StoreError::TooManySubscriptions(2)));
    let loaded = store.load_session(&id).await.unwrap().expect("session exists");
    assert_eq!(loaded.pid, record.pid);
    assert_eq!(loaded.subscriptions.get(&s), Some(&at));
    store.unsubscribe(&id, &record.pid, &s).await.unwrap();
    assert!(!store.load_session(&id).await.unwrap().unwrap().subscriptions.contains_key(&s));
    store.subscribe(&id, &record.pid, &ch("contract.three"), &at, 2).await.expect("room under the cap again");
}

async fn presence_lists_public_ids<S: Store>(store: Arc<S>, _: Arc<Hub>) {
    let id = SessionId::random();
    let record = SessionRecord::new();
    store.create_session(&id, &record).await.unwrap();
    let s = ch("contract.present");
    assert!(store.presence(&s).await.unwrap().is_empty());
    let at = store.top(&s, Creator::Backend).await.unwrap();
    store.subscribe(&id, &record.pid, &s, &at, 8).await.unwrap();
    assert_eq!(store.presence(&s).await.unwrap(), vec![record.pid.clone()]);
    store.unsubscribe(&id, &record.pid, &s).await.unwrap();
    assert!(store.presence(&s).await.unwrap().is_empty());
}

async fn sessions_expire_after_their_ttl<S: Store>(store: Arc<S>, _: Arc<Hub>) {
    let id = SessionId::random();
    let record = SessionRecord::new();
    store.create_session(&id, &record).await.unwrap();
    assert!(store.touch_session(&id, &record).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(store.load_session(&id).await.unwrap(), None, "expired after its TTL");
    assert!(!store.touch_session(&id, &record).await.unwrap());
    let at = Cursor::new(Epoch::parse("e1").unwrap(), 0);
    assert_eq!(store.subscribe(&id, &record.pid, &ch("contract.late"), &at, 2).await.unwrap(), None);
}

async fn a_client_message_keeps_its_sender_in_history_and_live<S: Store>(store: Arc<S>, hub: Arc<Hub>) {
    let c = ch("contract.from");
    let start = store.top(&c, Creator::Backend).await.unwrap();
    let mut listener = hub.listen(Topic::Channel(c.clone()));
    assert!(listener.ready(Duration::from_secs(5)).await);
    let sender = Sender { sub: Some("alice".into()), pid: "p1".into() };
    let d = data(1);
    store.append(&c, Append { from: Some(&sender), ..message(&d, None) }).await.unwrap();
    append(&*store, &c, 2).await;
    let expected = r#""from":{"sub":"alice","pid":"p1"}"#;
    let h = store.read(&c, &start, 10).await.unwrap();
    assert!(std::str::from_utf8(&h.messages[0].frame).unwrap().contains(expected));
    assert!(!std::str::from_utf8(&h.messages[1].frame).unwrap().contains("\"from\":"), "the backend's has none");
    match tokio::time::timeout(Duration::from_secs(5), listener.next()).await {
        Ok(Some(Live::Message(m))) => assert!(std::str::from_utf8(&m.frame).unwrap().contains(expected)),
        other => panic!("expected the live message, got {other:?}"),
    }
}

async fn a_session_keeps_its_grant_and_takes_a_refreshed_one<S: Store>(store: Arc<S>, _: Arc<Hub>) {
    let id = SessionId::random();
    let grant = Grant {
        sub: "alice".into(),
        exp: 100,
        subscribe: vec![Pattern::new("a:*")],
        publish: vec![],
        presence: vec![],
    };
    let record = SessionRecord { grant: Some(grant.clone()), ..SessionRecord::new() };
    store.create_session(&id, &record).await.unwrap();
    assert_eq!(store.load_session(&id).await.unwrap().unwrap().grant, Some(grant.clone()));
    let later = Grant { exp: 200, ..grant };
    assert!(store.set_grant(&id, &later).await.unwrap());
    assert_eq!(store.load_session(&id).await.unwrap().unwrap().grant, Some(later.clone()));
    assert!(!store.set_grant(&SessionId::random(), &later).await.unwrap(), "no session is created by a refresh");
}

/// Runs each case as `memory::<case>` and `redis::<case>`.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    let hub = stickless::hub::Hub::local();
                    super::$case(stickless::store::memory::MemoryStore::new(super::retention(), hub.clone()), hub).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    let redis = crate::common::Redis::start(&[]).await;
                    let (store, hub) = super::redis_store(&redis, "contract").await;
                    super::$case(store, hub).await;
                }
            )*
        }
    };
}

contract!(
    offsets_count_from_one_and_reads_resume_after_a_cursor,
    history_keeps_history_size_and_tells_a_trimmed_gap,
    another_epoch_or_a_cursor_ahead_gets_an_epoch_gap,
    a_dedupe_key_stores_once,
    messages_older_than_history_ttl_are_trimmed,
    live_listeners_hear_appends_in_order,
    subscriptions_are_idempotent_and_bounded,
    presence_lists_public_ids,
    sessions_expire_after_their_ttl,
    a_client_message_keeps_its_sender_in_history_and_live,
    a_session_keeps_its_grant_and_takes_a_refreshed_one,
);

async fn redis_store(redis: &common::Redis, prefix: &str) -> (Arc<RedisStore>, Arc<Hub>) {
    let (hub, commands) = Hub::with_listener();
    let store = RedisStore::connect(&redis.url(), prefix, retention(), hub.clone(), commands).await.unwrap();
    (store, hub)
}

/// Every case of the resume rule, against `read.lua` on a real redis-server: the log is written straight into
/// Redis (meta hash and stream, as docs/ARCHITECTURE.md lays them out), then read through the store.
#[tokio::test]
async fn redis_read_script_passes_the_resume_table() {
    let redis = common::Redis::start(&[]).await;
    let (store, _hub) = redis_store(&redis, "resume").await;
    let ts = now_ms().to_string();
    for (i, case) in RESUME_CASES.iter().enumerate() {
        let channel = ch(&format!("resume.{i}"));
        let top = case.top.to_string();
        redis.cli(&["HSET", &format!("resume:{{{channel}}}:m"), "e", case.log_epoch, "t", &top]).unwrap();
        if !case.lineage.is_empty() {
            let lineage: Vec<String> = case.lineage.iter().map(|(epoch, kept)| format!("{epoch} {kept}")).collect();
            redis.cli(&["HSET", &format!("resume:{{{channel}}}:m"), "l", &lineage.join(" ")]).unwrap();
        }
        for offset in case.first..=case.top {
            let id = format!("{offset}-0");
            redis.cli(&["XADD", &format!("resume:{{{channel}}}:h"), &id, "t", &ts, "d", &offset.to_string()]).unwrap();
        }
        let after = Cursor::new(Epoch::parse(case.after_epoch).unwrap(), case.after);
        let history = store.read(&channel, &after, 100).await.unwrap();
        let log_epoch = Epoch::parse(case.log_epoch).unwrap();
        // A cursor ahead of the log in its own epoch proves messages were lost: the script starts a new epoch.
        let ahead = case.after_epoch == case.log_epoch && case.after > case.top;
        let gap = history.gap.as_ref().map(|(cursor, reason)| (cursor.offset, *reason, cursor.epoch == log_epoch));
        let expected_gap = case.expected.gap.map(|reason| (case.expected.after, reason, !ahead));
        assert_eq!(gap, expected_gap, "{}: gap (offset, reason, in the log's epoch)", case.name);
        let offsets: Vec<u64> = history.messages.iter().map(|m| m.offset).collect();
        let expected: Vec<u64> = (case.expected.after + 1..=case.top).collect();
        assert_eq!(offsets, expected, "{}: messages", case.name);
    }
}

/// Each change of primary links the epoch it replaced into the channel's lineage, so a reader asleep through
/// several changes (a restarted primary changes its replication id twice) crosses all of them skipping nothing the
/// log still has. A cursor ahead of the log starts a new epoch the same way a new primary does; the lineage keeps
/// the newest eight links, and a cursor older than those resumes from the oldest kept message.
#[tokio::test]
async fn redis_lineage_chains_changes_of_epoch_and_keeps_eight() {
    let redis = common::Redis::start(&[]).await;
    let (store, _hub) = redis_store(&redis, "lineage").await;
    let c = ch("lineage");
    let first = append(&*store, &c, 1).await;
    for i in 2..=3 {
        append(&*store, &c, i).await;
    }
    let mut epochs = vec![first.epoch.clone()];
    for _ in 0..9 {
        // As after a change of primary: the meta was last written under another replication id.
        redis.cli(&["HSET", &format!("lineage:{{{c}}}:m"), "r", "0"]).unwrap();
        let newest = epochs.last().unwrap().clone();
        let (gap, _) = offsets_after(&*store, &c, &Cursor::new(newest, 7)).await;
        let (resumed, reason) = gap.expect("a cursor ahead of the log gets a gap");
        assert_eq!((reason, resumed.offset), (GapReason::Epoch, 3));
        epochs.push(resumed.epoch);
    }
    let lineage = redis.cli(&["HGET", &format!("lineage:{{{c}}}:m"), "l"]).unwrap().trim().to_string();
    assert_eq!(lineage.split(' ').count(), 16, "eight links: {lineage}");
    let newest = epochs.last().unwrap();
    for (age, epoch) in epochs.iter().rev().enumerate().skip(1) {
        let (gap, offsets) = offsets_after(&*store, &c, &Cursor::new(epoch.clone(), 2)).await;
        let (resumed, reason) = gap.expect("crossing epochs is told");
        assert_eq!((&resumed.epoch, reason), (newest, GapReason::Epoch), "{age} changes back");
        let expected: Vec<u64> = if age <= 8 { vec![3] } else { vec![1, 2, 3] };
        assert_eq!(
            offsets,
            expected,
            "{age} changes back: {}",
            if age <= 8 { "skips nothing" } else { "from the oldest" }
        );
    }
}

/// A cursor ahead of the log under the primary that wrote it was made up (nothing was lost): its client gets a
/// gap back to the top in the same epoch, and the channel keeps its epoch, so one client cannot make every
/// subscriber cross a change of epoch.
#[tokio::test]
async fn redis_a_made_up_cursor_ahead_of_the_log_changes_nothing_for_others() {
    let redis = common::Redis::start(&[]).await;
    let (store, _hub) = redis_store(&redis, "madeup").await;
    let c = ch("madeup");
    let first = append(&*store, &c, 1).await;
    append(&*store, &c, 2).await;
    let (gap, offsets) = offsets_after(&*store, &c, &Cursor::new(first.epoch.clone(), 1_000)).await;
    assert_eq!(gap, Some((Cursor::new(first.epoch.clone(), 2), GapReason::Epoch)), "back to the top, same epoch");
    assert!(offsets.is_empty());
    assert_eq!(append(&*store, &c, 3).await, Cursor::new(first.epoch, 3), "the channel keeps its epoch");
}
