//! Redis round trips and commands per long-poll and per publish, counted on a real redis-server, so a change that
//! adds one fails here. A poll that finds a message waiting costs two round trips (load the session, read the
//! history; its pub/sub topics stay subscribed between polls), a publish one, whatever the number of subscribers.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_with_data_waiting_costs_two_round_trips_and_a_publish_one() {
    let redis = Redis::start(&[]).await;
    let (polls, publishes) = (Turns::start(redis.port).await, Turns::start(redis.port).await);
    let poll_node = Node::start(&["--redis-url", &polls.url()]).await;
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

    let mut poll_turns = Vec::new();
    let mut publish_turns = Vec::new();
    let mut poll_commands = Vec::new();
    let mut publish_commands = Vec::new();
    for i in 0..10 {
        let (turns, stats) = (publishes.count(), commandstats(&redis));
        // Acknowledged once stored: the next poll finds it in history.
        publish_ok(&publish_node.url, "rt", json!(i)).await;
        publish_turns.push(publishes.count() - turns);
        publish_commands.push(commands_between(&stats, &commandstats(&redis)));

        let (turns, stats) = (polls.count(), commandstats(&redis));
        let frames = client.poll(&poll_node.url).await;
        poll_turns.push(polls.count() - turns);
        poll_commands.push(commands_between(&stats, &commandstats(&redis)));
        let data: Vec<_> = frames.iter().filter(|f| f["type"] == "message").map(|f| f["data"].clone()).collect();
        assert_eq!(data, vec![json!(i)], "poll {i} answers the message waiting: {frames:?}");
    }
    eprintln!("round trips per poll {poll_turns:?}, per publish {publish_turns:?}");
    eprintln!("commands of one poll {:?}", poll_commands[0]);
    eprintln!("commands of one publish {:?}", publish_commands[0]);
    assert!(poll_turns.iter().all(|&t| t <= 2), "a poll with data waiting: at most 2 round trips, {poll_turns:?}");
    assert!(publish_turns.iter().all(|&t| t == 1), "a publish: one round trip, {publish_turns:?}");
    let total = |c: &BTreeMap<String, u64>| c.values().sum::<u64>();
    assert!(
        poll_commands.iter().all(|c| !c.contains_key("subscribe") && !c.contains_key("unsubscribe")),
        "no pub/sub churn per poll: {poll_commands:?}"
    );
    assert!(poll_commands.iter().all(|c| total(c) <= 10), "commands per poll: {poll_commands:?}");
    assert!(
        publish_commands.iter().all(|c| c.get("evalsha") == Some(&1)),
        "one script per publish: {publish_commands:?}"
    );
    assert!(publish_commands.iter().all(|c| total(c) <= 12), "commands per publish: {publish_commands:?}");
    drop(others);
}
