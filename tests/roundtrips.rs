//! Redis round trips and commands per long-poll and per publish, counted on a real redis-server, so a change that
//! adds one fails here. A poll that finds a message waiting costs two round trips (load the session, read the
//! history; its pub/sub topics stay subscribed between polls), one when the node heard the message live and
//! answers from its live cache, and none when the node also kept the session from its last poll here (the
//! session cache); a publish costs one, whatever the number of subscribers.
//!
//! Round trips are counted by a TCP proxy between a node and Redis: a turn is a command sent on a connection with
//! no reply outstanding, so a pipeline is one turn however many commands it carries.
//! Commands are counted by Redis itself (`INFO commandstats`, which also counts those a script runs).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{publish_ok, Node, Poller, Redis};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to a Redis that counts the turns the node takes: a command sent while no reply is outstanding on
/// its connection starts one. Commands and replies are told apart by parsing RESP as it passes.
struct Turns {
    port: u16,
    turns: Arc<AtomicU64>,
}

/// One connection's requests in flight.
#[derive(Default)]
struct Flight {
    outstanding: u64,
}

impl Turns {
    async fn start(target: u16) -> Turns {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let turns = Arc::new(AtomicU64::new(0));
        let counted = turns.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { continue };
                // As Redis does: without it, Nagle's algorithm holds a small push behind an unacknowledged write.
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (mut from_node, mut to_node) = client.into_split();
                let (mut from_redis, mut to_redis) = server.into_split();
                let flight = Arc::new(Mutex::new(Flight::default()));
                let (requests, counted) = (flight.clone(), counted.clone());
                tokio::spawn(async move {
                    let (mut buf, mut pending) = (vec![0u8; 64 * 1024], Vec::new());
                    while let Ok(n @ 1..) = from_node.read(&mut buf).await {
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(len) = value_len(&pending) {
                            let command: Vec<u8> = pending.drain(..len).collect();
                            let mut flight = requests.lock().unwrap();
                            if flight.outstanding == 0 && !background(&command) {
                                counted.fetch_add(1, Ordering::SeqCst);
                            }
                            flight.outstanding += 1;
                        }
                        if to_redis.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let (mut buf, mut pending) = (vec![0u8; 64 * 1024], Vec::new());
                    while let Ok(n @ 1..) = from_redis.read(&mut buf).await {
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(len) = value_len(&pending) {
                            pending.drain(..len);
                            // A pub/sub push answers nothing; it only ever arrives with nothing outstanding here.
                            let mut flight = flight.lock().unwrap();
                            flight.outstanding = flight.outstanding.saturating_sub(1);
                        }
                        if to_node.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Turns { port, turns }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn count(&self) -> u64 {
        self.turns.load(Ordering::SeqCst)
    }
}

/// The length of the RESP value at the start of `bytes` (RESP2 and RESP3), or `None` while it is incomplete.
fn value_len(bytes: &[u8]) -> Option<usize> {
    let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
    let head = std::str::from_utf8(&bytes[1..line_end]).ok()?;
    let after_line = line_end + 2;
    let elements = |n: i64, per: i64| -> Option<usize> {
        let mut at = after_line;
        for _ in 0..(n.max(0) * per) {
            at += value_len(&bytes[at..])?;
        }
        Some(at)
    };
    match bytes[0] {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(after_line),
        b'$' | b'=' | b'!' => match head.parse::<i64>().ok()? {
            -1 => Some(after_line),
            len => (bytes.len() >= after_line + len as usize + 2).then_some(after_line + len as usize + 2),
        },
        b'*' | b'~' | b'>' => elements(head.parse().ok()?, 1),
        b'%' => elements(head.parse().ok()?, 2),
        other => panic!("not RESP: {:?}", other as char),
    }
}

/// A command that is a node's own background work, not a request's: the liveness probe it publishes to itself
/// every second, or a lone PING.
fn background(command: &[u8]) -> bool {
    let text = String::from_utf8_lossy(command);
    text.contains("\r\nPING\r\n") || (text.contains("\r\nPUBLISH\r\n") && text.contains(":probe:"))
}

/// Redis' command counts (`INFO commandstats`), by command.
fn commandstats(redis: &Redis) -> BTreeMap<String, u64> {
    let info = redis.cli(&["INFO", "commandstats"]).unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// The commands run between two snapshots, without the test's own INFO and the nodes' probes and pings.
fn commands_between(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(name, _)| !["info", "publish", "ping"].contains(&name.as_str()))
        .map(|(name, calls)| (name.clone(), calls - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Round trips and commands of ten polls that each find a message waiting, and of the ten publishes.
struct Costs {
    poll_turns: Vec<u64>,
    publish_turns: Vec<u64>,
    poll_commands: Vec<BTreeMap<String, u64>>,
    publish_commands: Vec<BTreeMap<String, u64>>,
}

/// A client long-polls one node; another node publishes; both reach Redis through their own counting proxy.
async fn measure(node_args: &[&str]) -> Costs {
    let redis = Redis::start(&[]).await;
    let (polls, publishes) = (Turns::start(redis.port).await, Turns::start(redis.port).await);
    let poll_url = polls.url();
    let poll_node = Node::start(&[&["--redis-url", poll_url.as_str()], node_args].concat()).await;
    let publish_node = Node::start(&["--redis-url", &publishes.url()]).await;
    let mut client = Poller::open(&poll_node.url, "rt").await;
    // Other sessions subscribed to the channel: a publish costs the same for them.
    let mut others = Vec::new();
    for _ in 0..20 {
        others.push(Poller::open(&poll_node.url, "rt").await);
    }
    // The first polls subscribe the session's and the channel's topics, which then stay subscribed (linger).
    publish_ok(&publish_node.url, "rt", json!("warm-up")).await;
    let frames = client.poll(&poll_node.url).await;
    assert!(frames.iter().any(|f| f["data"] == "warm-up"), "{frames:?}");

    let mut costs =
        Costs { poll_turns: vec![], publish_turns: vec![], poll_commands: vec![], publish_commands: vec![] };
    for i in 0..10 {
        let (turns, stats) = (publishes.count(), commandstats(&redis));
        // Acknowledged once stored: the next poll finds it in history (or hears it live).
        publish_ok(&publish_node.url, "rt", json!(i)).await;
        costs.publish_turns.push(publishes.count() - turns);
        costs.publish_commands.push(commands_between(&stats, &commandstats(&redis)));

        let (turns, stats) = (polls.count(), commandstats(&redis));
        let frames = client.poll(&poll_node.url).await;
        costs.poll_turns.push(polls.count() - turns);
        costs.poll_commands.push(commands_between(&stats, &commandstats(&redis)));
        let data: Vec<_> = frames.iter().filter(|f| f["type"] == "message").map(|f| f["data"].clone()).collect();
        assert_eq!(data, vec![json!(i)], "poll {i} answers the message waiting: {frames:?}");
    }
    eprintln!("{node_args:?}: round trips per poll {:?}, per publish {:?}", costs.poll_turns, costs.publish_turns);
    eprintln!("commands of one poll {:?}", costs.poll_commands[5]);
    eprintln!("commands of one publish {:?}", costs.publish_commands[5]);
    drop(others);
    costs
}

fn total(commands: &BTreeMap<String, u64>) -> u64 {
    commands.values().sum()
}

/// Without the live cache every poll reads the channel's history: two round trips, the session load and the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_with_data_waiting_costs_two_round_trips_and_a_publish_one() {
    let costs = measure(&["--live-cache-messages", "0", "--session-cache", "false"]).await;
    assert!(
        costs.poll_turns.iter().all(|&t| t == 2),
        "a poll with data waiting: 2 round trips, {:?}",
        costs.poll_turns
    );
    assert!(costs.publish_turns.iter().all(|&t| t == 1), "a publish: one round trip, {:?}", costs.publish_turns);
    let polls = &costs.poll_commands;
    assert!(
        polls.iter().all(|c| !c.contains_key("subscribe") && !c.contains_key("unsubscribe")),
        "no pub/sub churn per poll: {polls:?}"
    );
    assert!(polls.iter().all(|c| c.get("evalsha") == Some(&2) && total(c) <= 10), "commands per poll: {polls:?}");
    let publishes = &costs.publish_commands;
    assert!(publishes.iter().all(|c| c.get("evalsha") == Some(&1)), "one script per publish: {publishes:?}");
    assert!(publishes.iter().all(|c| total(c) <= 12), "commands per publish: {publishes:?}");
}

/// With the live cache (a default) a node that heard the messages since the client's cursor answers from it:
/// one round trip, the session load. The first poll may come before the node heard anything it could answer from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_the_live_cache_a_poll_costs_one_round_trip() {
    let costs = measure(&["--session-cache", "false"]).await;
    assert!(costs.poll_turns.iter().all(|&t| t <= 2), "{:?}", costs.poll_turns);
    assert!(costs.poll_turns[1..].iter().all(|&t| t == 1), "after the first, 1 round trip: {:?}", costs.poll_turns);
    let later = &costs.poll_commands[1..];
    assert!(later.iter().all(|c| c.get("evalsha") == Some(&1) && total(c) <= 3), "the session load only: {later:?}");
    assert!(costs.publish_turns.iter().all(|&t| t == 1), "{:?}", costs.publish_turns);
}

/// With the session cache too (the defaults), a node that kept the session from its last poll and heard the
/// messages live answers a poll without Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_caches_a_poll_costs_no_round_trip() {
    let costs = measure(&[]).await;
    assert!(costs.poll_turns.iter().all(|&t| t == 0), "no round trip: {:?}", costs.poll_turns);
    assert!(costs.poll_commands.iter().all(|c| total(c) == 0), "no command: {:?}", costs.poll_commands);
    assert!(costs.publish_turns.iter().all(|&t| t == 1), "{:?}", costs.publish_turns);
}

/// A node that keeps a session from its polls forgets it when another node changes the session: a channel
/// subscribed through node A is delivered by the very next poll on node B, which had read nothing from Redis
/// for its polls before. And a session polled only where it is kept stays alive past its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_session_is_forgotten_when_another_node_changes_it_and_never_outlives_its_ttl() {
    let redis = Redis::start(&[]).await;
    let turns = Turns::start(redis.port).await;
    let b = Node::start(&["--redis-url", &turns.url(), "--session-ttl", "6", "--poll-timeout-ms", "300"]).await;
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let a = Node::start(&["--redis-url", &redis_url, "--session-ttl", "6"]).await;
    let mut client = Poller::open(&a.url, "kept.x").await;
    // B's first poll reads the session (and keeps it) and subscribes the topics; a message B hears live then
    // starts its live cache of the channel.
    client.poll(&b.url).await;
    publish_ok(&a.url, "kept.x", json!("on x")).await;
    let mut frames = Vec::new();
    while !frames.iter().any(|f: &serde_json::Value| f["data"] == "on x") {
        frames.extend(client.poll(&b.url).await);
    }
    let before = turns.count();
    for _ in 0..3 {
        client.poll(&b.url).await;
    }
    assert_eq!(turns.count() - before, 0, "node B answers from the session it kept");

    let acks = client.send(&a.url, json!([{"type": "subscribe", "id": "s", "channel": "kept.y"}])).await;
    assert_eq!(acks[0]["type"], "ack", "{acks}");
    publish_ok(&a.url, "kept.y", json!("on y")).await;
    // The very next poll: B forgot the kept session when the topic told it, or, told during the poll, reloads.
    let frames = client.poll(&b.url).await;
    assert!(frames.iter().any(|f| f["data"] == "on y"), "B delivers the channel A subscribed: {frames:?}");

    // 3 polls a second for 9 s (1.5 TTLs), all on B: the kept session is read again every TTL / 3, which
    // refreshes its TTL, so it never expires under the client.
    for _ in 0..30 {
        client.poll(&b.url).await;
        assert!(!client.position.is_empty());
    }
    let acks = client.send(&a.url, json!([{"type": "subscribe", "id": "s2", "channel": "kept.z"}])).await;
    assert_eq!(acks[0]["type"], "ack", "the session is alive after 9 s of polls on B: {acks}");
}

/// A backend's batch goes to Redis as one pipeline: about one round trip for 99 messages over two channels, each stored
/// in its batch order, with a bad message in the middle refused alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_publish_is_one_round_trip_in_order() {
    let redis = Redis::start(&[]).await;
    let turns = Turns::start(redis.port).await;
    let node = Node::start(&["--redis-url", &turns.url()]).await;
    publish_ok(&node.url, "batch.a", json!("first")).await;
    publish_ok(&node.url, "batch.b", json!("first")).await;
    let mut messages: Vec<serde_json::Value> =
        (0..99).map(|i| json!({"channel": if i % 2 == 0 { "batch.a" } else { "batch.b" }, "data": i})).collect();
    messages.insert(50, json!({"channel": "not a channel!", "data": 0}));
    let (before, stats) = (turns.count(), commandstats(&redis));
    let r = common::http().post(format!("{}/v1/publish", node.url)).json(&json!({ "messages": messages })).send();
    let body: serde_json::Value = r.await.unwrap().json().await.unwrap();
    let (trips, commands) = (turns.count() - before, commands_between(&stats, &commandstats(&redis)));
    eprintln!("a batch of 99: {trips} round trips, {commands:?}");
    // One pipeline, which fred writes in pieces: on a busy machine Redis may answer a piece before the next one
    // arrives, and the proxy then counts a turn (1 or 2 on a quiet one). One round trip per message would be 99.
    assert!(trips <= 10, "one pipeline: {trips} turns");
    assert_eq!(commands.get("evalsha"), Some(&99));
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 100);
    assert!(results[50]["error"]["code"].is_string(), "the bad one is refused alone: {}", results[50]);
    let offsets = |channel: &str| -> Vec<u64> {
        results.iter().filter(|r| r["channel"] == channel).map(|r| r["offset"].as_u64().unwrap()).collect()
    };
    assert_eq!(offsets("batch.a"), (2..=51).collect::<Vec<_>>(), "in batch order");
    assert_eq!(offsets("batch.b"), (2..=50).collect::<Vec<_>>(), "in batch order");
}
