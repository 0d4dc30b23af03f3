//! Stateless nodes on Redis: any request of any session on any node, with real redis-server processes.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn nodes(redis_url: &str, n: usize, extra: &[&str]) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let id = format!("node-{}", (b'a' + i as u8) as char);
        let mut args = vec!["--redis-url", redis_url, "--node-id", &id];
        args.extend_from_slice(extra);
        nodes.push(Node::spawn(&args).await);
    }
    nodes
}

/// Polls and sends alternate between nodes, as behind a round-robin balancer with no stickiness.
async fn non_sticky_long_polling(nodes: &[Node]) {
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let mut poller = Poller::open(&urls[0], "rr").await;
    let publisher = {
        let urls = urls.clone();
        tokio::spawn(async move {
            for i in 1..=900u64 {
                publish_ok(&urls[i as usize % urls.len()], "rr", json!({"from": "backend", "i": i})).await;
            }
        })
    };
    let mut got = Received::default();
    let mut served_by = std::collections::BTreeSet::new();
    let mut sent = 0;
    let mut turn = 0usize;
    while got.offsets.len() < 1000 {
        turn += 1;
        assert!(turn < 5000, "stuck after {} messages", got.offsets.len());
        let url = &urls[turn % urls.len()];
        if sent < 100 {
            sent += 1;
            let url = &urls[(turn + 1) % urls.len()];
            let reply = poller
                .send(url, json!({"type": "publish", "id": format!("m{sent}"), "channel": "rr", "data": sent}))
                .await;
            assert_eq!(reply[0]["type"], "ack", "{reply}");
        }
        for frame in poller.poll(url).await {
            got.take(&frame);
        }
        served_by.insert(poller.last_node.clone());
    }
    publisher.await.unwrap();
    got.assert_exactly(1, 1000);
    assert!(got.gaps.is_empty());
    assert_eq!(served_by.len(), urls.len(), "every node served polls");
}

async fn non_sticky_sse(nodes: &[Node]) {
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let publisher = {
        let urls = urls.clone();
        tokio::spawn(async move {
            // Give the first stream a moment so the test covers live delivery as well as catch-up.
            tokio::time::sleep(Duration::from_millis(300)).await;
            for i in 1..=1000u64 {
                publish_ok(&urls[i as usize % urls.len()], "sse-rr", json!(i)).await;
            }
        })
    };
    let mut got = Received::default();
    let mut last_id: Option<String> = None;
    let mut turn = 0;
    while got.offsets.len() < 1000 {
        turn += 1;
        assert!(turn < 500, "stuck after {} messages", got.offsets.len());
        // A fresh connection to the next node each time, resuming by Last-Event-ID alone.
        let mut sse = Sse::connect(&urls[turn % urls.len()], "channels=sse-rr", last_id.as_deref()).await;
        for _ in 0..37 {
            match tokio::time::timeout(Duration::from_secs(5), sse.next()).await {
                Ok(Some(frame)) => {
                    got.take(&frame);
                }
                _ => break,
            }
        }
        last_id = sse.last_event_id.clone();
    }
    publisher.await.unwrap();
    got.assert_exactly(1, 1000);
}

/// Clients of every transport spread over the nodes all get a message published on any node.
async fn cross_node_fan_out(nodes: &[Node]) {
    let mut ws = Vec::new();
    let mut sse = Vec::new();
    let mut polls = Vec::new();
    for node in nodes {
        ws.push(Ws::connect(&node.ws_url(), "channels=fan").await);
        sse.push(Sse::connect(&node.url, "channels=fan", None).await);
        polls.push(Poller::open(&node.url, "fan").await);
    }
    for (i, node) in nodes.iter().enumerate() {
        publish_ok(&node.url, "fan", json!({"from": i})).await;
    }
    let n = nodes.len() as u64;
    for (i, node) in nodes.iter().enumerate() {
        let mut got = Received::default();
        while got.offsets.len() < nodes.len() {
            got.take(&ws[i].next().await.expect("websocket delivery"));
        }
        got.assert_exactly(1, n);
        let mut got = Received::default();
        while got.offsets.len() < nodes.len() {
            got.take(&sse[i].next().await.expect("sse delivery"));
        }
        got.assert_exactly(1, n);
        let mut got = Received::default();
        while got.offsets.len() < nodes.len() {
            for f in polls[i].poll(&node.url).await {
                got.take(&f);
            }
        }
        got.assert_exactly(1, n);
    }
}

#[tokio::test]
async fn long_polling_alternating_between_nodes_loses_and_repeats_nothing() {
    let redis = Redis::start(&[]).await;
    let nodes = nodes(&redis.url(), 2, &["--history-size", "2000"]).await;
    non_sticky_long_polling(&nodes).await;
}

#[tokio::test]
async fn sse_reconnecting_to_another_node_each_time_loses_and_repeats_nothing() {
    let redis = Redis::start(&[]).await;
    let nodes = nodes(&redis.url(), 2, &["--history-size", "2000"]).await;
    non_sticky_sse(&nodes).await;
}

#[tokio::test]
async fn clients_on_three_nodes_all_receive_a_message_published_on_any_node() {
    let redis = Redis::start(&[]).await;
    let nodes = nodes(&redis.url(), 3, &[]).await;
    cross_node_fan_out(&nodes).await;
}

#[tokio::test]
async fn clients_of_a_killed_node_resume_through_another_without_loss() {
    let redis = Redis::start(&[]).await;
    let mut nodes = nodes(&redis.url(), 2, &["--history-size", "2000"]).await;
    let survivor = nodes[1].url.clone();
    let mut ws = Ws::connect(&nodes[0].ws_url(), "channels=k").await;
    let mut poller = Poller::open(&nodes[0].url, "k").await;
    let publisher = {
        let url = survivor.clone();
        tokio::spawn(async move {
            for i in 1..=600u64 {
                publish_ok(&url, "k", json!(i)).await;
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };
    let mut ws_got = Received::default();
    let mut epoch = String::new();
    while ws_got.offsets.len() < 150 {
        let f = ws.next().await.unwrap();
        if f["type"] == "message" {
            epoch = f["epoch"].as_str().unwrap().into();
        }
        ws_got.take(&f);
    }
    let mut poll_got = Received::default();
    for f in poller.poll(&nodes[0].url).await {
        poll_got.take(&f);
    }
    nodes[0].process().kill(); // SIGKILL, mid-stream
                               // Frames already on the wire still count; then the socket dies with its node.
    while let Some(f) = ws.next().await {
        ws_got.take(&f);
    }
    let position = format!("k@{epoch}@{}", ws_got.offsets.last().unwrap());
    let mut ws = Ws::connect(&nodes[1].ws_url(), &format!("session={}&position={position}", ws.session)).await;
    while ws_got.offsets.len() < 600 {
        ws_got.take(&ws.next().await.unwrap());
    }
    ws_got.assert_exactly(1, 600);
    while poll_got.offsets.len() < 600 {
        for f in poller.poll(&survivor).await {
            poll_got.take(&f);
        }
    }
    poll_got.assert_exactly(1, 600);
    publisher.await.unwrap();
}

/// Publishes 1..=n while Redis is stopped and restarted; answers the offsets that were acknowledged.
async fn publish_through_a_redis_restart(redis: &mut Redis, url: &str, n: u64) -> (Vec<u64>, usize) {
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 1..=n {
        if i == n / 2 {
            redis.stop();
        }
        if i == n / 2 + 10 {
            redis.restart().await;
        }
        let r = publish(url, "r", json!(i)).await;
        match r.status().as_u16() {
            200 => acked.push(r.json::<Value>().await.unwrap()["offset"].as_u64().unwrap()),
            503 => {
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "store_unavailable");
                refused += 1;
            }
            other => panic!("publish answered {other}"),
        }
    }
    (acked, refused)
}

#[tokio::test]
async fn with_persistence_every_acknowledged_publish_survives_a_redis_restart() {
    let mut redis = Redis::start(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let nodes = nodes(&redis.url(), 1, &[]).await;
    let mut ws = Ws::connect(&nodes[0].ws_url(), "channels=r").await;
    let (acked, refused) = publish_through_a_redis_restart(&mut redis, &nodes[0].url, 60).await;
    assert!(refused > 0, "publishes while Redis was down were refused with 503");
    let mut got = Received::default();
    while got.offsets.len() < acked.len() {
        let frame = ws.next().await.expect("the socket stayed open through the outage");
        got.take(&frame);
    }
    // The restarted primary has a new replication id: the client is told it crossed into a new epoch, by a gap
    // that skips nothing (history survived).
    assert!(got.gaps.iter().all(|g| g["offset"] == g["previous"]["offset"]), "history survived: {:?}", got.gaps);
    assert_eq!(got.offsets, acked, "exactly the acknowledged publishes, in order");
}

#[tokio::test]
async fn without_persistence_clients_get_the_reset_signal_after_a_redis_restart() {
    let mut redis = Redis::start(&["--appendonly", "no"]).await;
    let nodes = nodes(&redis.url(), 1, &[]).await;
    let poller = Poller::open(&nodes[0].url, "r").await;
    let (acked, refused) = publish_through_a_redis_restart(&mut redis, &nodes[0].url, 40).await;
    assert!(refused > 0);
    // The session itself was lost with Redis: the client starts a new one from its old cursors.
    let r = http().get(format!("{}/v1/poll?session={}", nodes[0].url, poller.session)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let old = poller.position.clone();
    let mut poller = Poller::open(&nodes[0].url, "r").await;
    poller.position = old;
    let frames = poller.poll(&nodes[0].url).await;
    assert_eq!(frames[0]["type"], "gap", "{frames:?}");
    assert_eq!(frames[0]["reason"], "epoch");
    let after: Vec<u64> = frames[1..].iter().map(|f| f["offset"].as_u64().unwrap()).collect();
    // Offsets start again at 1 in the new epoch.
    let restart = acked.windows(2).position(|w| w[1] <= w[0]).expect("offsets restarted") + 1;
    let after_restart = acked[restart..].to_vec();
    assert_eq!(after, after_restart, "the new epoch's messages follow the gap");
}

#[tokio::test]
async fn on_a_three_master_cluster_polling_is_non_sticky_and_fan_out_reaches_every_node() {
    let cluster = RedisCluster::start().await;
    let nodes = nodes(&cluster.url(), 3, &["--history-size", "2000"]).await;
    non_sticky_long_polling(&nodes).await;
    cross_node_fan_out(&nodes).await;
}

#[tokio::test]
async fn sessions_expire_everywhere_and_presence_spans_nodes() {
    let redis = Redis::start(&[]).await;
    let nodes = nodes(&redis.url(), 2, &["--session-ttl", "2"]).await;
    let mut on_a = Poller::open(&nodes[0].url, "room").await;
    let on_b = Poller::open(&nodes[1].url, "room").await;
    // A send through the other node finds the session too.
    let r = on_a.send(&nodes[1].url, json!({"type": "ping", "id": "x"})).await;
    assert_eq!(r[0]["type"], "ack");
    for node in &nodes {
        let body: Value =
            http().get(format!("{}/v1/presence?channel=room", node.url)).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["pids"].as_array().unwrap().len(), 2, "both sessions, from either node: {body}");
    }
    // on_b keeps polling (short polls via a publish) while on_a goes silent past its TTL.
    for _ in 0..4 {
        publish_ok(&nodes[0].url, "room", json!("tick")).await;
        let mut b = Poller { session: on_b.session.clone(), position: String::new(), last_node: String::new() };
        b.poll(&nodes[1].url).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    for node in &nodes {
        let r = http().get(format!("{}/v1/poll?session={}", node.url, on_a.session)).send().await.unwrap();
        assert_eq!(r.status(), 404, "expired on every node");
        let body: Value =
            http().get(format!("{}/v1/presence?channel=room", node.url)).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["pids"].as_array().unwrap().len(), 1, "only the live session remains: {body}");
    }
    on_a.position.clear();
}

#[tokio::test]
async fn through_sentinel_nodes_follow_a_failover_and_clients_resume_without_loss() {
    let mut master = Redis::start(&[]).await;
    let master_port = master.port.to_string();
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &master_port]).await;
    // The replica's first sync forks the master; under a loaded machine it can take seconds.
    let synced = std::time::Instant::now() + Duration::from_secs(30);
    while !replica.cli(&["INFO", "replication"]).is_some_and(|i| i.contains("master_link_status:up")) {
        assert!(std::time::Instant::now() < synced, "the replica did not sync within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sentinel = Sentinel::start(master.port).await;
    let nodes = nodes(&sentinel.url(), 2, &[]).await;
    let urls = [nodes[0].url.clone(), nodes[1].url.clone()];
    let mut poller = Poller::open(&urls[0], "s").await;
    let mut acked = Vec::new();
    for i in 0..50u64 {
        acked.push(publish_ok(&urls[i as usize % 2], "s", json!(i)).await["offset"].as_u64().unwrap());
    }
    let mut got = Received::default();
    for turn in 0..10 {
        for f in poller.poll(&urls[turn % 2]).await {
            got.take(&f);
        }
        if got.offsets.len() == 50 {
            break;
        }
    }
    got.assert_exactly(1, 50);
    // Everything acknowledged so far is on the replica before the master dies.
    assert!(master.cli(&["WAIT", "1", "15000"]).unwrap().trim() == "1");
    master.stop();

    // Publishes fail (503) until the sentinel has promoted the replica and the nodes have followed it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut i = 50u64;
    while acked.len() < 100 {
        assert!(std::time::Instant::now() < deadline, "no failover within 60 s");
        let r = publish(&urls[i as usize % 2], "s", json!(i)).await;
        match r.status().as_u16() {
            200 => acked.push(r.json::<Value>().await.unwrap()["offset"].as_u64().unwrap()),
            503 => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("publish answered {other}"),
        }
        i += 1;
    }
    assert_eq!(sentinel.master_port(), Some(replica.port), "the replica was promoted");
    // Nothing was lost (WAIT above), so offsets go on; the new primary's first publish starts a new epoch, which
    // clients cross with a gap that skips nothing (tests/failover.rs has the failover that loses writes).
    assert_eq!(acked, (1..=100).collect::<Vec<_>>(), "offsets continue after failover");
    // The session was replicated too: the client goes on polling either node.
    let mut turn = 0;
    while got.offsets.len() < 100 {
        turn += 1;
        assert!(turn < 50, "stuck at {}", got.offsets.len());
        for f in poller.poll(&urls[turn % 2]).await {
            got.take(&f);
        }
    }
    got.assert_exactly(1, 100);
    // Crossing into the new primary's epoch is told (it might have lost something), skipping nothing.
    assert!(got.gaps.iter().all(|g| g["offset"] == g["previous"]["offset"]), "{:?}", got.gaps);
}

#[tokio::test]
async fn a_websocket_whose_session_is_gone_gets_session_unknown_then_close_1008() {
    let redis = Redis::start(&[]).await;
    let nodes = nodes(&redis.url(), 1, &["--session-ttl", "3"]).await;
    let mut ws = Ws::connect(&nodes[0].ws_url(), "channels=a").await;
    // The session vanishes from the store (as after an expiry or a flush); the next refresh finds out.
    redis.cli(&["DEL", &format!("sl:s:{{{}}}", ws.session)]);
    let frame = ws.next().await.expect("an error frame first");
    assert_eq!(frame["code"], "session_unknown");
    let close = loop {
        match futures_util::StreamExt::next(&mut ws.stream).await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1008));
}

fn commands_processed(redis: &Redis) -> u64 {
    let info = redis.cli(&["INFO", "stats"]).unwrap();
    let line = info.lines().find(|l| l.starts_with("total_commands_processed:")).unwrap();
    line.trim().split(':').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn idle_sessions_cost_only_their_ttl_refresh() {
    let redis = Redis::start(&[]).await;
    let nodes = nodes(&redis.url(), 1, &["--session-ttl", "3"]).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(Ws::connect(&nodes[0].ws_url(), &format!("channels=idle{i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = commands_processed(&redis);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spent = commands_processed(&redis) - before - 1; // less our own INFO
                                                         // Each session refreshes every ttl/3 = 1 s: PEXPIRE + HSET on the session, ZADD + PEXPIRE on its channel's
                                                         // presence; 5 sessions x 3 refreshes x 4 commands = 60. Nothing polls.
    assert!(spent <= 5 * 4 * 4, "{spent} Redis commands for 5 idle sessions in 3 s");
    assert!(spent >= 5 * 4, "the TTL refresh happens ({spent} commands)");
}

/// A forced (or graceful) failover leaves the old primary up and its connections open until Sentinel
/// reconfigures it, about 10 s later; a node that waited for that would write to the old primary meanwhile, and
/// lose those acknowledged writes with it. Nodes follow Sentinel's `+switch-master` instead: soon after the
/// switch, what a node acknowledges is on the new primary.
#[tokio::test]
async fn through_sentinel_a_node_moves_on_the_switch_announcement_not_later() {
    let master = Redis::start(&[]).await;
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]).await;
    let synced = std::time::Instant::now() + Duration::from_secs(30);
    while !replica.cli(&["INFO", "replication"]).is_some_and(|i| i.contains("master_link_status:up")) {
        assert!(std::time::Instant::now() < synced, "the replica did not sync within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sentinel = Sentinel::start(master.port).await;
    let node = Node::spawn(&["--redis-url", &sentinel.url()]).await;
    publish_ok(&node.url, "sw", json!("before")).await;
    sentinel.failover().await;
    let switched = std::time::Instant::now() + Duration::from_secs(15);
    while sentinel.master_port() != Some(replica.port) {
        assert!(std::time::Instant::now() < switched, "no switch within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Well under the ~10 s Sentinel takes to reconfigure the old primary.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut on_new = false;
    for i in 0..20 {
        let r = publish(&node.url, "sw", json!(format!("after-{i}"))).await;
        if r.status() == 200 {
            let stream = replica.cli(&["XRANGE", "sl:{sw}:h", "-", "+"]).unwrap_or_default();
            on_new = stream.contains(&format!("after-{i}"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(on_new, "3 s after the switch, an acknowledged publish is on the new primary");
}
