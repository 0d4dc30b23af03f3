//! Failover-safe epochs: a Redis failover that loses writes the old primary acknowledged never makes a client
//! silently skip, or take a different message under an offset it already passed (every reader crossing into
//! the new primary's epoch is told with an `epoch` gap); and with `--redis-min-replicas 1` no acknowledged write
//! is lost at all.
//!
//! The loss is made for real (FIELD-NOTES): the replica's link is cut with `REPLICAOF` to a dead port, so it
//! keeps its data but misses what the primary acknowledges next; then the primary dies and the replica is
//! promoted. The gateway reaches Redis through a TCP proxy that is switched to the new primary, as a managed
//! Redis's failover moves its address.

mod common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, http, publish, Node, Poller, Redis};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TCP proxy to the Redis on `target`; [`Proxy::switch`] sends new connections elsewhere and cuts the old ones.
struct Proxy {
    port: u16,
    target: Arc<AtomicU16>,
    generation: Arc<std::sync::Mutex<CancellationToken>>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(target));
        let generation = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let (to, cut) = (target.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (port, cut) = (to.load(Ordering::SeqCst), cut.lock().unwrap().clone());
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", port)).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        Proxy { port, target, generation }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn switch(&self, target: u16) {
        self.target.store(target, Ordering::SeqCst);
        let mut generation = self.generation.lock().unwrap();
        generation.cancel();
        *generation = CancellationToken::new();
    }
}

async fn synced(replica: &Redis) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !replica.cli(&["INFO", "replication"]).is_some_and(|i| i.contains("master_link_status:up")) {
        assert!(Instant::now() < deadline, "the replica did not sync within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `data` until it is answered (the gateway reconnects after a failover), retrying with the same
/// idempotency key as a real backend does, so a 503 (outcome unknown) is never stored twice; the stored answer.
async fn publish_until_stored(url: &str, channel: &str, data: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let key = format!("{channel}-{data}");
    loop {
        let sent = http()
            .post(format!("{url}/v1/publish"))
            .json(&json!({ "channel": channel, "data": data, "idempotency_key": key }))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == 200 => return r.json().await.unwrap(),
            Ok(r) => eprintln!("publish: {} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => eprintln!("publish: {e}"),
        }
        assert!(Instant::now() < deadline, "no publish went through within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls until `n` message frames came (gaps and messages returned in order).
async fn poll_messages(poller: &mut Poller, url: &str, n: usize) -> Vec<Value> {
    let mut frames = Vec::new();
    for _ in 0..30 {
        frames.extend(poller.poll(url).await);
        if frames.iter().filter(|f| f["type"] == "message").count() >= n {
            return frames;
        }
    }
    panic!("{n} messages did not come: {frames:?}");
}

/// Primary and replica in sync, the gateway through the proxy, and the primary's address.
async fn primary_and_replica() -> (Redis, Redis, Proxy) {
    let primary = Redis::start(&[]).await;
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]).await;
    synced(&replica).await;
    let proxy = Proxy::start(primary.port).await;
    (primary, replica, proxy)
}

/// The replica stops taking the primary's writes but keeps what it has.
fn cut_the_link(replica: &Redis) {
    replica.cli(&["REPLICAOF", "127.0.0.1", &free_port().to_string()]).unwrap();
}

/// The primary dies and the replica takes over at the proxy's address.
fn fail_over(primary: &mut Redis, replica: &Redis, proxy: &Proxy) {
    primary.stop();
    assert!(replica.cli(&["REPLICAOF", "NO", "ONE"]).unwrap().contains("OK"));
    proxy.switch(replica.port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_lost_acknowledged_writes_gives_their_readers_a_gap_never_another_message() {
    let (mut primary, replica, proxy) = primary_and_replica().await;
    let node = Node::start(&["--redis-url", &proxy.url()]).await;
    let mut seen_all = Poller::open(&node.url, "fo").await;
    let mut seen_kept = Poller::open(&node.url, "fo").await;
    for i in 1..=10 {
        publish_until_stored(&node.url, "fo", json!(i)).await;
    }
    assert_eq!(primary.cli(&["WAIT", "1", "5000"]).unwrap().trim(), "1", "1..10 are on the replica");
    // One reader takes 1..10 now, while they are all the replica has too.
    let kept = poll_messages(&mut seen_kept, &node.url, 10).await;
    let epoch = kept[0]["epoch"].as_str().unwrap().to_owned();
    cut_the_link(&replica);
    for i in 11..=15 {
        let stored = publish_until_stored(&node.url, "fo", json!(i)).await;
        assert_eq!(stored["offset"], i, "acknowledged by the primary alone");
    }
    // The other reader takes all 15, 11..15 included: writes the failover is about to lose.
    let before = poll_messages(&mut seen_all, &node.url, 15).await;
    assert_eq!(before.last().unwrap()["offset"], 15);

    fail_over(&mut primary, &replica, &proxy);
    let mut after_failover = Vec::new();
    for i in 1..=3 {
        after_failover.push(publish_until_stored(&node.url, "fo", json!(format!("new {i}"))).await);
    }
    let new_epoch = after_failover[0]["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, epoch, "the first publish under the new primary starts a new epoch");
    assert_eq!(after_failover[0]["offset"], 11, "offsets go on from what the new primary kept");

    // The reader that saw the lost 11..15 is told, and gets the new messages under the new epoch.
    let frames = poll_messages(&mut seen_all, &node.url, 3).await;
    assert_eq!(frames[0]["type"], "gap", "an explicit gap first: {frames:?}");
    assert_eq!(frames[0]["reason"], "epoch", "{frames:?}");
    let messages: Vec<(&str, u64, &Value)> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| (f["epoch"].as_str().unwrap(), f["offset"].as_u64().unwrap(), &f["data"]))
        .collect();
    for (e, offset, data) in &messages {
        assert!(*e != epoch || *offset > 15, "never another message under an epoch@offset it passed: {e}@{offset}");
        assert!(data.as_str().is_some_and(|d| d.starts_with("new")), "only new messages: {data}");
    }
    // The reader that never went past what survived is told too (it may have missed what the old primary
    // acknowledged after that), by a gap that skips nothing it can still get; then 11, 12, 13 are the new ones.
    let frames = poll_messages(&mut seen_kept, &node.url, 3).await;
    assert_eq!((frames[0]["type"].as_str(), frames[0]["reason"].as_str()), (Some("gap"), Some("epoch")), "{frames:?}");
    assert_eq!((frames[0]["offset"].as_u64(), frames[0]["previous"]["offset"].as_u64()), (Some(10), Some(10)));
    let data: Vec<&Value> = frames[1..].iter().map(|f| &f["data"]).collect();
    assert_eq!(data, [&json!("new 1"), &json!("new 2"), &json!("new 3")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_min_replicas_1_a_failover_loses_no_acknowledged_write() {
    let (mut primary, replica, proxy) = primary_and_replica().await;
    let node =
        Node::start(&["--redis-url", &proxy.url(), "--redis-min-replicas", "1", "--redis-replica-timeout-ms", "1000"])
            .await;
    let mut reader = Poller::open(&node.url, "mr").await;
    let mut acked = Vec::new();
    for i in 1..=10 {
        acked.push(publish_until_stored(&node.url, "mr", json!(i)).await["offset"].as_u64().unwrap());
    }
    cut_the_link(&replica);
    // Without a replica to confirm them, publishes are not acknowledged: 503, outcome unknown.
    for i in 11..=15 {
        let r = publish(&node.url, "mr", json!(i)).await;
        assert_eq!(r.status(), 503, "not acknowledged without a replica");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    }
    fail_over(&mut primary, &replica, &proxy);
    // The new primary gets a replica of its own, so publishes are acknowledged again.
    let second = Redis::start(&["--replicaof", "127.0.0.1", &replica.port.to_string()]).await;
    synced(&second).await;
    for i in 16..=20 {
        let stored = publish_until_stored(&node.url, "mr", json!(i)).await;
        acked.push(stored["offset"].as_u64().unwrap());
    }
    // Every acknowledged publish reaches the reader, in order.
    let frames = poll_messages(&mut reader, &node.url, 15).await;
    // Crossing into the new primary's epoch is told by a gap that skips nothing.
    for gap in frames.iter().filter(|f| f["type"] == "gap") {
        assert_eq!(gap["offset"], gap["previous"]["offset"], "a gap that skips nothing: {gap}");
    }
    let data: Vec<i64> = frames.iter().filter(|f| f["type"] == "message").filter_map(|f| f["data"].as_i64()).collect();
    let acknowledged: Vec<i64> = (1..=10).chain(16..=20).collect();
    for d in &acknowledged {
        assert!(data.contains(d), "acknowledged {d} was delivered: {data:?}");
    }
    let in_order: Vec<i64> = data.iter().copied().filter(|d| acknowledged.contains(d)).collect();
    assert_eq!(in_order, acknowledged, "in order, once each");
}
