//! What an operator sees: `/metrics` parses as Prometheus text and moves with traffic, `/healthz` answers while
//! the process serves, and `/readyz` turns 503 within seconds of Redis, or of pub/sub alone, breaking, and back.

mod common;

use std::time::{Duration, Instant};

use common::{http, publish_ok, Node, Poller, Redis, Sse, Ws};
use serde_json::json;

/// `/metrics` parsed; `value(name, label)` sums the samples of `name` whose labels contain `label` (`k=v`).
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    async fn of(node: &Node) -> Scrape {
        let text = http().get(format!("{}/metrics", node.url)).send().await.unwrap().text().await.unwrap();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("/metrics is Prometheus text"))
    }

    fn value(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(ref buckets) => buckets.last().map_or(0.0, |b| b.count),
                _ => 0.0,
            })
            .sum()
    }
}

async fn eventually(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {limit:?}");
}

#[tokio::test]
async fn metrics_parse_and_move_with_connections_messages_and_refusals() {
    let redis = Redis::start(&[]).await;
    let node = Node::start(&["--redis-url", &redis.url()]).await;
    let before = Scrape::of(&node).await;
    assert_eq!(before.value("stickless_connections", Some(("transport", "websocket"))), 0.0);

    let mut ws = Ws::connect(&node.ws_url(), "channels=ops").await;
    let mut sse = Sse::connect(&node.url, "channels=ops", None).await;
    let poller = Poller::open(&node.url, "ops").await;
    for i in 0..3 {
        publish_ok(&node.url, "ops", json!(i)).await;
    }
    for _ in 0..3 {
        assert_eq!(ws.next().await.unwrap()["type"], "message");
        assert_eq!(sse.next().await.unwrap()["type"], "message");
    }
    let reply = poller.send(&node.url, json!({"type": "subscribe", "id": "x", "channel": "bad name"})).await;
    assert_eq!(reply[0]["code"], "invalid_channel");

    let during = Scrape::of(&node).await;
    assert_eq!(during.value("stickless_connections", Some(("transport", "websocket"))), 1.0);
    assert_eq!(during.value("stickless_connections", Some(("transport", "sse"))), 1.0);
    assert!(during.value("stickless_sessions_created_total", None) >= 3.0);
    assert_eq!(during.value("stickless_messages_published_total", Some(("source", "backend"))), 3.0);
    assert!(during.value("stickless_messages_delivered_total", Some(("transport", "websocket"))) >= 3.0);
    assert!(during.value("stickless_messages_delivered_total", Some(("transport", "sse"))) >= 3.0);
    assert_eq!(during.value("stickless_refusals_total", Some(("reason", "invalid_channel"))), 1.0);
    assert!(during.value("stickless_store_round_trip_seconds_count", None) > 0.0, "Redis round trips observed");

    drop(ws);
    eventually("the WebSocket gauge back to 0", Duration::from_secs(5), async || {
        let now = Scrape::of(&node).await;
        now.value("stickless_connections", Some(("transport", "websocket"))) == 0.0
            && now.value("stickless_disconnects_total", Some(("reason", "closed"))) >= 1.0
    })
    .await;
}

async fn ready(node: &Node) -> u16 {
    http().get(format!("{}/readyz", node.url)).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn readyz_turns_503_within_5_s_of_redis_stopping_and_200_after_it_returns() {
    let mut redis = Redis::start(&["--appendonly", "yes"]).await;
    let node = Node::start(&["--redis-url", &redis.url()]).await;
    eventually("ready at start", Duration::from_secs(5), async || ready(&node).await == 200).await;
    redis.stop();
    let took = eventually("503 after Redis stopped", Duration::from_secs(5), async || ready(&node).await == 503).await;
    eprintln!("/readyz went 503 {took:?} after Redis stopped");
    let healthz = http().get(format!("{}/healthz", node.url)).send().await.unwrap();
    assert_eq!(healthz.status(), 200, "the process still serves");
    redis.restart().await;
    eventually("200 after Redis returned", Duration::from_secs(15), async || ready(&node).await == 200).await;
}

#[tokio::test]
async fn readyz_turns_503_when_pub_sub_alone_breaks_and_200_after() {
    let redis = Redis::start(&[]).await;
    let node = Node::start(&["--redis-url", &redis.url()]).await;
    eventually("ready at start", Duration::from_secs(5), async || ready(&node).await == 200).await;
    // Cut the node's subscriber connection again and again (commands still work): live delivery is broken.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // One raw connection sends CLIENT KILL TYPE pubsub every 5 ms, faster than any reconnect.
    let killer = {
        let (stop, port) = (stop.clone(), redis.port);
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            conn.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            let mut replies = [0u8; 4096];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                conn.write_all(b"*4\r\n$6\r\nCLIENT\r\n$4\r\nKILL\r\n$4\r\nTYPE\r\n$6\r\npubsub\r\n").unwrap();
                let _ = conn.read(&mut replies);
            }
        })
    };
    let took = eventually("503 with pub/sub cut", Duration::from_secs(5), async || ready(&node).await == 503).await;
    eprintln!("/readyz went 503 {took:?} after pub/sub was cut");
    let body = http().get(format!("{}/readyz", node.url)).send().await.unwrap().text().await.unwrap();
    assert!(body.contains("pub/sub"), "{body}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    killer.join().unwrap();
    eventually("200 after pub/sub recovered", Duration::from_secs(15), async || ready(&node).await == 200).await;
}

/// A WebSocket client that sends pings as fast as it can and never reads: every ping asks for a pong the server
/// cannot deliver. The server caps what it queues (`--send-buffer-bytes`) and cuts the connection.
#[tokio::test]
async fn a_client_that_pings_and_never_reads_is_cut_and_server_memory_stays_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut node = Node::spawn(&["--send-buffer-bytes", "262144", "--write-timeout-ms", "2000"]).await;
    let before = node.process().rss_kib();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(([127, 0, 0, 1], node.port).into()).await.unwrap();
    stream
        .write_all(
            b"GET /v1/ws?channels=flood HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = [0u8; 256];
    let n = stream.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"), "upgraded");
    // A masked ping with a 125-byte payload: FIN + opcode 9, MASK + length 125, a zero mask key.
    let mut ping = vec![0x89, 0x80 | 125, 0, 0, 0, 0];
    ping.extend_from_slice(&[b'p'; 125]);
    let pings: Vec<u8> = ping.repeat(64);
    let started = Instant::now();
    let mut sent = 0usize;
    let cut = loop {
        if started.elapsed() > Duration::from_secs(30) {
            break false;
        }
        match tokio::time::timeout(Duration::from_secs(5), stream.write_all(&pings)).await {
            Ok(Ok(())) => sent += pings.len(),
            // The server closed the connection (reset or broken pipe), or stopped reading it.
            Ok(Err(_)) | Err(_) => break true,
        }
    };
    let after = node.process().rss_kib();
    eprintln!("sent {} KiB of pings in {:?}; server RSS {before} -> {after} KiB", sent / 1024, started.elapsed());
    assert!(cut, "the connection was cut");
    assert!(after.saturating_sub(before) < 32 * 1024, "server memory grew by {} KiB", after - before);
}

/// Draining spreads a node's clients over the drain window instead of sending them all back at once, refuses new
/// attaches with when to retry, and is not ready from the first moment.
#[tokio::test]
async fn a_draining_node_spreads_its_clients_reconnects_over_the_window() {
    let mut node = Node::spawn(&["--drain-window-ms", "5000", "--drain-timeout-ms", "8000"]).await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(Ws::connect(&node.ws_url(), "channels=drain").await);
    }
    node.process().signal("TERM");
    let mut delays = Vec::new();
    for ws in &mut clients {
        let frame = ws.next().await.expect("a reconnect frame");
        assert_eq!(frame["type"], "reconnect", "{frame}");
        delays.push(frame["after_ms"].as_u64().unwrap());
    }
    // The node still answers during the window: not ready, and a new attach is told when to come back.
    let ready = http().get(format!("{}/readyz", node.url)).send().await.expect("still answering");
    assert_eq!(ready.status(), 503, "not ready while draining");
    let refused = http().get(format!("{}/v1/poll?channels=drain", node.url)).send().await.expect("still answering");
    assert_eq!(refused.status(), 503);
    let retry: u64 = refused
        .headers()
        .get("retry-after")
        .unwrap_or_else(|| panic!("{:?}", refused.headers()))
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry <= 5, "Retry-After within the window: {retry}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "draining");
    // Spread: ten 500 ms buckets over the 5 s window; none may hold more than a quarter of the clients.
    let mut buckets = [0usize; 10];
    for d in &delays {
        assert!(*d < 5000, "within the window: {d}");
        buckets[(*d / 500) as usize] += 1;
    }
    eprintln!("reconnect delays per 500 ms: {buckets:?}");
    assert!(buckets.iter().all(|&n| n <= 25), "spread over the window: {buckets:?}");
    assert!(node.process().exited_within(Duration::from_secs(10)), "exits cleanly within the drain timeout");
}
