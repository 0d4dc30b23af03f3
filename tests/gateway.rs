//! The gateway core's promises on the embedded store, each shown against the real binary with real clients.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn published_message_reaches_websocket_sse_and_long_polling_clients() {
    let node = Node::start(&[]).await;
    let mut ws = Ws::connect(&node.ws_url(), "channels=news").await;
    let mut sse = Sse::connect(&node.url, "channels=news", None).await;
    let mut poller = Poller::open(&node.url, "news").await;

    let stored = publish_ok(&node.url, "news", json!({"headline": "hello"})).await;
    assert_eq!(stored["offset"], 1);

    let from_ws = ws.next().await.unwrap();
    let from_sse = sse.next().await.unwrap();
    let from_poll = poller.poll(&node.url).await;
    for frame in [&from_ws, &from_sse, &from_poll[0]] {
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["channel"], "news");
        assert_eq!(frame["offset"], 1);
        assert_eq!(frame["data"]["headline"], "hello");
    }
    assert!(sse.last_event_id.as_deref().unwrap().ends_with(&format!("news@{}@1", stored["epoch"].as_str().unwrap())));
}

/// A client's own record of where it is, as the JS client keeps it.
#[derive(Default)]
struct Tracker {
    received: Received,
    epoch: String,
}

impl Tracker {
    fn take(&mut self, frame: &Value) {
        if frame["type"] == "message" {
            // Drop what was already seen: the client-side half of exactly-once across transports.
            let offset = frame["offset"].as_u64().unwrap();
            if self.received.offsets.last().is_some_and(|last| offset <= *last) {
                return;
            }
            self.epoch = frame["epoch"].as_str().unwrap().into();
        }
        self.received.take(frame);
    }
    fn position(&self, channel: &str) -> String {
        match self.received.offsets.last() {
            Some(last) => format!("{channel}@{}@{last}", self.epoch),
            None => String::new(),
        }
    }
    fn last(&self) -> u64 {
        self.received.offsets.last().copied().unwrap_or(0)
    }
}

#[tokio::test]
async fn switching_transports_mid_stream_delivers_every_message_once_in_order() {
    let node = Node::start(&["--history-size", "2000"]).await;
    let poller = Poller::open(&node.url, "stream").await;
    let session = poller.session.clone();
    let url = node.url.clone();
    let publisher = tokio::spawn(async move {
        for i in 1..=1000 {
            publish_ok(&url, "stream", json!(i)).await;
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let mut t = Tracker::default();
    let mut round = 0;
    while t.last() < 1000 {
        round += 1;
        assert!(round < 500, "stuck at offset {}", t.last());
        match round % 3 {
            0 => {
                let mut p =
                    Poller { session: session.clone(), position: t.position("stream"), last_node: String::new() };
                for _ in 0..3 {
                    for f in p.poll(&node.url).await {
                        t.take(&f);
                    }
                }
            }
            1 => {
                let q = format!("session={session}&position={}", t.position("stream"));
                let mut sse = Sse::connect(&node.url, &q, None).await;
                for _ in 0..40 {
                    match tokio::time::timeout(Duration::from_millis(500), sse.next()).await {
                        Ok(Some(f)) => t.take(&f),
                        _ => break,
                    }
                }
            }
            _ => {
                let q = format!("session={session}&position={}", t.position("stream"));
                let mut ws = Ws::connect(&node.ws_url(), &q).await;
                for _ in 0..40 {
                    match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                        Ok(Some(f)) => t.take(&f),
                        _ => break,
                    }
                }
            }
        }
    }
    publisher.await.unwrap();
    assert!(t.received.gaps.is_empty());
    t.received.assert_exactly(1, 1000);
    assert_eq!(t.received.data[999], json!(1000));
}

#[tokio::test]
async fn sse_resumes_with_last_event_id_alone_and_misses_nothing() {
    let node = Node::start(&[]).await;
    let mut sse = Sse::connect(&node.url, "channels=feed", None).await;
    let mut got = Received::default();
    for i in 1..=5 {
        publish_ok(&node.url, "feed", json!(i)).await;
    }
    for _ in 0..5 {
        got.take(&sse.next().await.unwrap());
    }
    let last_id = sse.last_event_id.clone().unwrap();
    drop(sse);
    for i in 6..=10 {
        publish_ok(&node.url, "feed", json!(i)).await;
    }
    // What a browser's EventSource does on its own: the same URL, plus Last-Event-ID.
    let mut sse = Sse::connect(&node.url, "channels=feed", Some(&last_id)).await;
    for _ in 0..5 {
        got.take(&sse.next().await.unwrap());
    }
    got.assert_exactly(1, 10);
}

#[tokio::test]
async fn sse_resume_from_beyond_history_gets_an_explicit_gap() {
    let node = Node::start(&["--history-size", "10"]).await;
    let mut sse = Sse::connect(&node.url, "channels=feed", None).await;
    publish_ok(&node.url, "feed", json!(1)).await;
    assert_eq!(sse.next().await.unwrap()["offset"], 1);
    let last_id = sse.last_event_id.clone().unwrap();
    drop(sse);
    for i in 2..=40 {
        publish_ok(&node.url, "feed", json!(i)).await;
    }
    let mut sse = Sse::connect(&node.url, "channels=feed", Some(&last_id)).await;
    let gap = sse.next().await.unwrap();
    assert_eq!(gap["type"], "gap");
    assert_eq!(gap["reason"], "trimmed");
    assert_eq!(gap["previous"]["offset"], 1);
    assert_eq!(gap["offset"], 30);
    let mut got = Received::default();
    for _ in 31..=40 {
        got.take(&sse.next().await.unwrap());
    }
    got.assert_exactly(31, 40);
}

#[tokio::test]
async fn resume_into_another_epoch_gets_a_reset_gap() {
    let node = Node::start(&[]).await;
    publish_ok(&node.url, "feed", json!(1)).await;
    let mut poller = Poller::open(&node.url, "feed").await;
    poller.position = "feed@0badc0ffee@7".into();
    let frames = poller.poll(&node.url).await;
    assert_eq!(frames[0]["type"], "gap");
    assert_eq!(frames[0]["reason"], "epoch");
    assert_eq!(frames[1]["offset"], 1);
}

#[tokio::test]
async fn upstream_publish_retried_with_the_same_id_is_stored_once() {
    let node = Node::start(&[]).await;
    let mut poller = Poller::open(&node.url, "orders").await;
    let frame = json!({"type": "publish", "id": "order-1", "channel": "orders", "data": {"n": 1}});
    // The first answer is "lost"; the client retries the same frame, on its own and in a batch.
    let first = poller.send(&node.url, frame.clone()).await;
    let again = poller.send(&node.url, json!([frame.clone(), frame])).await;
    assert_eq!(first[0]["type"], "ack");
    assert_eq!(again[0]["result"], first[0]["result"]);
    assert_eq!(again[1]["result"], first[0]["result"]);
    // A backend's idempotency key behaves the same.
    let body = json!({"channel": "orders", "data": 2, "idempotency_key": "k-2"});
    let a: Value =
        http().post(format!("{}/v1/publish", node.url)).json(&body).send().await.unwrap().json().await.unwrap();
    let b: Value =
        http().post(format!("{}/v1/publish", node.url)).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(a, b);
    let frames = poller.poll(&node.url).await;
    let offsets: Vec<_> = frames.iter().map(|f| f["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![1, 2], "stored once each");
}

async fn error_code(r: reqwest::Response, status: u16) -> String {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    body["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn bad_http_input_gets_documented_json_errors() {
    let node = Node::start(&["--max-subscriptions", "2", "--max-message-bytes", "4096"]).await;
    let (u, c) = (&node.url, http());
    let poller = Poller::open(u, "a").await;
    let send = |body: &'static str| c.post(format!("{u}/v1/send?session={}", poller.session)).body(body).send();

    assert_eq!(error_code(send("{not json").await.unwrap(), 400).await, "malformed_json");
    assert_eq!(
        error_code(c.get(format!("{u}/v1/poll?session=0123456789abcdef0123456789abcdef")).send().await.unwrap(), 404)
            .await,
        "session_unknown"
    );
    assert_eq!(
        error_code(c.get(format!("{u}/v1/sse?session=nope")).send().await.unwrap(), 404).await,
        "session_unknown"
    );
    assert_eq!(
        error_code(c.post(format!("{u}/v1/send?session=nope")).body("[]").send().await.unwrap(), 404).await,
        "session_unknown"
    );
    assert_eq!(
        error_code(c.get(format!("{u}/v1/poll?channels=a%20b")).send().await.unwrap(), 400).await,
        "invalid_channel"
    );
    assert_eq!(
        error_code(c.get(format!("{u}/v1/poll?session={}&position=a@@x", poller.session)).send().await.unwrap(), 400)
            .await,
        "invalid_position"
    );
    let big = format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(5000));
    assert_eq!(
        error_code(c.post(format!("{u}/v1/publish")).body(big.clone()).send().await.unwrap(), 413).await,
        "payload_too_large"
    );
    assert_eq!(
        error_code(c.post(format!("{u}/v1/send?session={}", poller.session)).body(big).send().await.unwrap(), 413)
            .await,
        "payload_too_large"
    );
    let many: Vec<Value> = (0..101).map(|i| json!({"type": "ping", "id": i.to_string()})).collect();
    let r = c.post(format!("{u}/v1/send?session={}", poller.session)).json(&many).send().await.unwrap();
    assert_eq!(error_code(r, 400).await, "too_many_frames");

    // Per-frame faults come back as error frames; the other frames of the request still apply.
    let replies: Value = send(r#"[{"type":"teleport","id":"1"},{"type":"publish","id":"2","channel":"bad name","data":1},
        {"type":"subscribe","id":"3","channel":"b"},{"type":"subscribe","id":"4","channel":"c"},{"type":"ping","id":"5"},
        {"type":"publish","id":"6","channel":"a"}]"#)
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let codes: Vec<_> =
        replies.as_array().unwrap().iter().map(|r| r["code"].as_str().unwrap_or("ack").to_owned()).collect();
    assert_eq!(codes, ["unknown_type", "invalid_channel", "ack", "too_many_subscriptions", "ack", "invalid_frame"]);
    assert_eq!(replies[0]["id"], "1");

    let ws_off = Node::start(&["--transports", "sse,long-polling"]).await;
    assert_eq!(
        error_code(c.get(format!("{}/v1/ws", ws_off.url)).send().await.unwrap(), 404).await,
        "transport_disabled"
    );
    let negotiate: Value = c.get(format!("{}/v1/negotiate", ws_off.url)).send().await.unwrap().json().await.unwrap();
    let names: Vec<_> = negotiate["transports"].as_array().unwrap().iter().map(|t| t["name"].clone()).collect();
    assert_eq!(names, [json!("sse"), json!("long-polling")]);

    let keyed = Node::start(&["--api-key", "s3cret"]).await;
    assert_eq!(error_code(publish(&keyed.url, "a", json!(1)).await, 401).await, "unauthorized");
    let ok = c
        .post(format!("{}/v1/publish", keyed.url))
        .bearer_auth("s3cret")
        .json(&json!({"channel": "a", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

async fn ws_close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), futures_util::StreamExt::next(&mut ws.stream)).await {
            Ok(Some(Ok(WsMessage::Close(frame)))) => return frame.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn bad_websocket_input_gets_error_frames_or_close_codes() {
    let node = Node::start(&["--max-message-bytes", "1024"]).await;
    let mut ws = Ws::connect(&node.ws_url(), "channels=a").await;
    for (raw, code) in [
        ("{oops", "malformed_json"),
        (r#"{"type":"warp","id":"w"}"#, "unknown_type"),
        (r#"{"type":"subscribe","id":"s","channel":"no spaces"}"#, "invalid_channel"),
        (r#"{"type":"publish","channel":"a","data":1}"#, "invalid_frame"),
    ] {
        ws.stream.send(WsMessage::text(raw)).await.unwrap();
        let reply = ws.next().await.unwrap();
        assert_eq!(reply["type"], "error", "{raw}");
        assert_eq!(reply["code"], code, "{raw}");
    }
    ws.stream.send(WsMessage::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(ws.next().await.unwrap()["code"], "binary_unsupported");
    // One bad frame leaves the session usable.
    ws.send(json!({"type": "publish", "id": "ok", "channel": "a", "data": "still here"})).await;
    let mut seen = [ws.next().await.unwrap(), ws.next().await.unwrap()];
    seen.sort_by_key(|f| f["type"].as_str().unwrap().to_owned());
    assert_eq!(seen[0]["type"], "ack");
    assert_eq!(seen[1]["data"], "still here");

    ws.stream.send(WsMessage::text("x".repeat(4096))).await.unwrap();
    assert_eq!(ws_close_code(&mut ws).await, Some(CloseCode::Size));

    let (mut raw, _) =
        tokio_tungstenite::connect_async(format!("{}/v1/ws?session=00000000000000000000000000000000", node.ws_url()))
            .await
            .unwrap();
    let first = futures_util::StreamExt::next(&mut raw).await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("session_unknown"));
    let mut unknown = Ws { stream: raw, session: String::new() };
    assert_eq!(ws_close_code(&mut unknown).await, Some(CloseCode::Policy));
}

#[tokio::test]
async fn websocket_invalid_utf8_is_closed_with_1007() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = Node::start(&[]).await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
    let handshake = "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    tcp.write_all(handshake.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    // A masked text frame whose payload is not UTF-8.
    let payload = [0xffu8, 0xfe, 0xfd];
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await.unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    // Find the close frame (opcode 0x8) and its code.
    let close = seen.windows(4).find(|w| w[0] == 0x88).expect("a close frame");
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1007);
}

/// xorshift: reproducible junk without a dependency.
struct Junk(u64);

impl Junk {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() as usize) % max;
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[tokio::test]
async fn random_bytes_and_truncated_frames_never_take_the_server_down() {
    let node = Node::start(&[]).await;
    let poller = Poller::open(&node.url, "fuzz").await;
    let valid = [
        r#"{"type":"publish","id":"p1","channel":"fuzz","data":{"k":[1,2,{"z":null}]}}"#,
        r#"{"type":"subscribe","id":"s1","channel":"fuzz","since":{"epoch":"abc","offset":3}}"#,
        r#"[{"type":"ping","id":"x"},{"type":"presence","id":"y","channel":"fuzz"}]"#,
    ];
    let mut junk = Junk(0x9e3779b97f4a7c15);
    let c = http();
    for round in 0..300 {
        let body: Vec<u8> = if round % 2 == 0 {
            let v = valid[round % valid.len()].as_bytes();
            v[..(junk.next() as usize) % v.len()].to_vec()
        } else {
            junk.bytes(512)
        };
        let r =
            c.post(format!("{}/v1/send?session={}", node.url, poller.session)).body(body.clone()).send().await.unwrap();
        assert!(r.status().is_client_error() || r.status() == 200, "send answered {}", r.status());
        let r = c.post(format!("{}/v1/publish", node.url)).body(body.clone()).send().await.unwrap();
        assert!(r.status().is_client_error() || r.status() == 200, "publish answered {}", r.status());
        let q: String = body.iter().map(|b| format!("%{b:02x}")).take(64).collect();
        for path in ["poll", "sse"] {
            let r =
                c.get(format!("{}/v1/{path}?session={q}&position={q}&channels={q}", node.url)).send().await.unwrap();
            // Junk is refused with a 4xx; an empty value just means "new session", which is fine.
            assert!(!r.status().is_server_error(), "{path} answered {}", r.status());
            assert!(r.status().is_client_error() || q.is_empty(), "{path} answered {} to {q}", r.status());
        }
    }
    let mut ws = Ws::connect(&node.ws_url(), "channels=fuzz").await;
    for round in 0..200 {
        let msg = if round % 3 == 0 {
            WsMessage::binary(junk.bytes(256))
        } else {
            let v = valid[round % valid.len()];
            WsMessage::text(&v[..(junk.next() as usize) % v.len()])
        };
        ws.stream.send(msg).await.unwrap();
    }
    ws.send(json!({"type": "ping", "id": "alive"})).await;
    let mut alive = false;
    while let Some(f) = ws.next().await {
        if f["id"] == "alive" {
            alive = f["type"] == "ack";
            break;
        }
    }
    assert!(alive, "the socket still answers after the junk");
    // And the node still serves everyone else.
    let stored = publish_ok(&node.url, "after", json!("fine")).await;
    assert_eq!(stored["offset"], 1);
}

#[tokio::test]
async fn idle_session_expires_after_its_ttl() {
    let node = Node::start(&["--session-ttl", "1"]).await;
    let mut poller = Poller::open(&node.url, "a").await;
    poller.poll(&node.url).await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = http().get(format!("{}/v1/poll?session={}", node.url, poller.session)).send().await.unwrap();
    assert_eq!(error_code(r, 404).await, "session_unknown");
}

#[tokio::test]
async fn eventsource_reconnecting_after_its_session_expired_resumes_in_a_new_session() {
    let node = Node::start(&["--session-ttl", "1"]).await;
    let mut sse = Sse::connect(&node.url, "channels=feed", None).await;
    publish_ok(&node.url, "feed", json!(1)).await;
    assert_eq!(sse.next().await.unwrap()["offset"], 1);
    let last_id = sse.last_event_id.clone().unwrap();
    drop(sse);
    tokio::time::sleep(Duration::from_millis(2500)).await; // the session expires
    publish_ok(&node.url, "feed", json!(2)).await;
    // The browser's own reconnect: same URL, Last-Event-ID naming the dead session.
    let mut sse = Sse::connect(&node.url, "channels=feed", Some(&last_id)).await;
    let frame = sse.next().await.unwrap();
    assert_eq!(frame["offset"], 2, "resumed from the position in Last-Event-ID: {frame}");
    assert!(!sse.last_event_id.unwrap().starts_with(last_id.split(';').next().unwrap()), "a new session");
}

#[tokio::test]
async fn pretty_printed_data_reaches_sse_clients_intact() {
    let node = Node::start(&[]).await;
    let mut sse = Sse::connect(&node.url, "channels=pretty", None).await;
    let body = "{\"channel\": \"pretty\",\n  \"data\": {\n    \"text\": \"two\\nlines\",\n    \"n\": 1.50\n  }\n}";
    let r = http().post(format!("{}/v1/publish", node.url)).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let frame = sse.next().await.unwrap();
    assert_eq!(frame["data"], json!({"text": "two\nlines", "n": 1.5}));
    assert!(sse.last_event_id.unwrap().ends_with("@1"));
}

#[tokio::test]
async fn subscribe_sent_right_after_welcome_is_delivered_on_that_socket() {
    let node = Node::start(&[]).await;
    for round in 0..20 {
        let channel = format!("race{round}");
        let mut ws = Ws::connect(&node.ws_url(), "").await;
        // No `channels=` at attach: the subscription arrives as the very first frame.
        ws.send(json!({"type": "subscribe", "id": "s", "channel": channel})).await;
        assert_eq!(ws.next().await.unwrap()["type"], "ack");
        publish_ok(&node.url, &channel, json!(round)).await;
        let frame = ws.next().await.expect("the message on the socket that subscribed");
        assert_eq!(frame["data"], json!(round), "round {round}");
    }
}

#[tokio::test]
async fn backend_publish_limits_and_null_data() {
    let node = Node::start(&["--max-message-bytes", "1024", "--max-frames-per-send", "3"]).await;
    let c = http();
    let null = c.post(format!("{}/v1/publish", node.url)).body(r#"{"channel":"n","data":null}"#).send().await.unwrap();
    assert_eq!(null.status(), 200, "null is a value");
    let four: Vec<Value> = (0..4).map(|i| json!({"channel": "n", "data": i})).collect();
    let r = c.post(format!("{}/v1/publish", node.url)).json(&json!({ "messages": four })).send().await.unwrap();
    assert_eq!(error_code(r, 400).await, "too_many_frames");
    let huge = format!(r#"{{"channel":"n","data":"{}"}}"#, "x".repeat(5000));
    let r = c.post(format!("{}/v1/publish", node.url)).body(huge).send().await.unwrap();
    assert_eq!(error_code(r, 413).await, "payload_too_large");
}

/// A client that sends its request and then never reads, with a tiny receive window.
async fn stalled_client(port: u16, request: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn clients_that_never_read_do_not_grow_server_memory_under_a_flood() {
    let mut node = Node::spawn(&[]).await;
    let ws = stalled_client(
        node.port,
        "GET /v1/ws?channels=flood HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    let sse = stalled_client(node.port, "GET /v1/sse?channels=flood HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let blob = "x".repeat(2000);
    let batch = |from: usize| {
        let messages: Vec<Value> =
            (from..from + 100).map(|i| json!({"channel": "flood", "data": [i, &blob]})).collect();
        json!({ "messages": messages })
    };
    let c = http();
    // Warm up the allocator and the history (1000 messages kept), then measure.
    for b in 0..20 {
        let r = c.post(format!("{}/v1/publish", node.url)).json(&batch(b * 100)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let before = node.process().rss_kib();
    // 20,000 more messages of ~2 KB: 40 MB that neither stalled client will ever read.
    for b in 20..220 {
        let r = c.post(format!("{}/v1/publish", node.url)).json(&batch(b * 100)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let after = node.process().rss_kib();
    let grown_mib = after.saturating_sub(before) / 1024;
    eprintln!("server RSS {before} KiB -> {after} KiB after 40 MB for stalled clients");
    assert!(
        grown_mib < 16,
        "server memory grew by {grown_mib} MiB ({before} -> {after} KiB) for clients that never read"
    );
    // Others are still served, from the newest history.
    let mut poller = Poller::open(&node.url, "flood").await;
    poller.position = format!("{}@{}", poller.position.rsplit_once('@').unwrap().0, 21_990);
    let frames = poller.poll(&node.url).await;
    assert_eq!(frames.last().unwrap()["offset"], 22_000);
    drop((ws, sse));
}

#[tokio::test]
async fn client_presence_can_be_turned_off() {
    let node = Node::start(&["--client-presence", "false"]).await;
    let poller = Poller::open(&node.url, "room").await;
    let reply = poller.send(&node.url, json!({"type": "presence", "id": "p", "channel": "room"})).await;
    assert_eq!(reply[0]["code"], "forbidden");
    // The backend API still answers.
    let body: Value =
        http().get(format!("{}/v1/presence?channel=room", node.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["pids"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn sigterm_drains_live_connections_and_exits() {
    let mut node = Node::spawn(&["--drain-window-ms", "2000"]).await;
    let mut ws = Ws::connect(&node.ws_url(), "channels=a").await;
    let mut sse = Sse::connect(&node.url, "channels=a", None).await;
    let poller = Poller::open(&node.url, "a").await;
    let url = node.url.clone();
    let session = poller.session.clone();
    let poll = tokio::spawn(async move { http().get(format!("{url}/v1/poll?session={session}")).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exited = tokio::task::spawn_blocking(move || node.process().terminate(Duration::from_secs(10)));
    // WebSocket: a reconnect frame with the delay, then close 1012 (service restart).
    let mut told = None;
    let close = loop {
        match futures_util::StreamExt::next(&mut ws.stream).await {
            Some(Ok(WsMessage::Text(t))) => told = Some(serde_json::from_str::<Value>(&t).unwrap()),
            Some(Ok(WsMessage::Close(frame))) => break frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close, Some(CloseCode::Restart), "WebSockets close with 1012");
    let told = told.expect("a final frame");
    assert_eq!(told["type"], "reconnect");
    assert!(told["after_ms"].as_u64().unwrap() < 2000, "{told}");
    // SSE: the same frame as the last event, then the stream ends.
    assert_eq!(sse.next().await.expect("a reconnect event")["type"], "reconnect");
    assert!(sse.next().await.is_none(), "SSE streams end");
    // The waiting poll answers with it.
    let answered = poll.await.unwrap().expect("the waiting poll is answered");
    assert_eq!(answered.status(), 200);
    let body: Value = answered.json().await.unwrap();
    assert_eq!(body["frames"][0]["type"], "reconnect", "{body}");
    assert!(exited.await.unwrap(), "the process exits cleanly within 10 s");
}

#[tokio::test]
async fn websocket_from_a_disallowed_origin_is_refused_with_403() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let node = Node::start(&["--allowed-origins", "https://good.example"]).await;
    let mut request = format!("{}/v1/ws", node.ws_url()).into_client_request().unwrap();
    request.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected a 403, got {:?}", other.map(|(_, r)| r.status())),
    }
    let mut request = format!("{}/v1/ws", node.ws_url()).into_client_request().unwrap();
    request.headers_mut().insert("origin", "https://good.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok(), "the allowed origin connects");
}

#[tokio::test]
async fn connections_over_the_limit_get_503_over_capacity() {
    let node = Node::start(&["--max-connections", "1"]).await;
    let _held = Sse::connect(&node.url, "channels=a", None).await;
    let r = http().get(format!("{}/v1/poll?channels=a", node.url)).send().await.unwrap();
    assert_eq!(error_code(r, 503).await, "over_capacity");
}

/// Message data may nest arrays and objects `--max-data-depth` (32) levels deep; deeper is refused with
/// `invalid_frame`, on the backend API and upstream alike, and a 30,000-level array costs a scan, not a stack.
#[tokio::test]
async fn message_data_nested_past_max_data_depth_is_refused() {
    let node = Node::start(&[]).await;
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let publish_raw = |data: String| {
        http()
            .post(format!("{}/v1/publish", node.url))
            .header("content-type", "application/json")
            .body(format!(r#"{{"channel":"deep","data":{data}}}"#))
            .send()
    };
    assert_eq!(publish_raw(nested(32)).await.unwrap().status(), 200, "32 levels are fine");
    assert_eq!(
        publish_raw(r#"{"a":[{"b":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}]}"#.into()).await.unwrap().status(),
        200,
        "brackets in strings do not count"
    );
    for depth in [33, 30_000] {
        let r = publish_raw(nested(depth)).await.unwrap();
        assert_eq!(error_code(r, 400).await, "invalid_frame", "{depth} levels");
    }
    let mut ws = Ws::connect(&node.ws_url(), "channels=deep").await;
    let frame = format!(r#"{{"type":"publish","id":"d1","channel":"deep","data":{}}}"#, nested(33));
    ws.stream.send(WsMessage::text(frame)).await.unwrap();
    let answer = loop {
        let f = ws.next().await.expect("an answer");
        if f["type"] != "message" {
            break f;
        }
    };
    assert_eq!((answer["type"].as_str(), answer["code"].as_str()), (Some("error"), Some("invalid_frame")), "{answer}");
}
