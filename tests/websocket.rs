//! WebSocket edge cases, byte by byte on a raw socket, in the spirit of the Autobahn suite's server-side sections
//! (which need Python 2 and Docker, neither of which these machines have): 2 (pings and pongs), 3 (reserved
//! bits), 4 (opcodes), 5 (fragmentation, control frames between fragments), 6 (UTF-8, including across
//! fragments), 7 (the close handshake and its codes) and 9's limit (a message over the size limit, whole or
//! fragmented). Each case names the close code it expects.

mod common;

use std::time::Duration;

use common::Node;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// One client frame: FIN and opcode, masked (with a zero key, so the payload goes as it is) as a client must.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    [&code.to_be_bytes()[..], reason].concat()
}

/// A server frame as read: opcode and payload.
#[derive(Debug)]
struct Frame {
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_default()
    }
}

struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    async fn open(node: &Node, query: &str) -> RawWs {
        RawWs::open_with(node, query, None).await
    }

    /// With the client's receive buffer set to `recv_buffer` bytes: a client that reads slowly.
    async fn open_with(node: &Node, query: &str, recv_buffer: Option<u32>) -> RawWs {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut stream = socket.connect(([127, 0, 0, 1], node.port).into()).await.unwrap();
        let request = format!(
            "GET /v1/ws?{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut ws = RawWs { stream, buf: Vec::new() };
        let head = loop {
            if let Some(end) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break ws.buf.drain(..end + 4).collect::<Vec<u8>>();
            }
            assert!(ws.fill().await, "the upgrade is answered");
        };
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        let welcome = ws.next().await.expect("welcome");
        assert_eq!(welcome.json()["type"], "welcome");
        ws
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next frame from the server, or `None` when the connection ends (or is silent for 10 s).
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0F;
                let (len, at) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
                    }
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some(Frame { opcode, payload });
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Frames until a close frame: its code (1005 for one without, as browsers report it), or `None` when the
    /// connection ended without one (what browsers report as 1006).
    async fn close_code(&mut self) -> Option<u16> {
        while let Some(frame) = self.next().await {
            if frame.opcode == CLOSE {
                return Some(frame.close_code().unwrap_or(1005));
            }
        }
        None
    }
}

/// A frame with its first byte as given (FIN, reserved bits and opcode), masked with a zero key.
fn raw_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = frame(true, 0, payload);
    out[0] = first;
    out
}

/// Every way a client can break the protocol, each answered with its close code (RFC 6455 section 7.4.1).
#[tokio::test]
async fn protocol_violations_close_with_the_right_code() {
    let node = Node::start(&[]).await;
    let big = vec![b'a'; 40_000];
    let unmasked = {
        let mut f = vec![0x80 | TEXT, 5];
        f.extend_from_slice(b"hello");
        f
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("9.x a text message over max_message_bytes", frame(true, TEXT, &vec![b'a'; 100_000]), 1009),
        (
            "5.x the same message in fragments",
            [frame(false, TEXT, &big), frame(false, CONTINUATION, &big), frame(true, CONTINUATION, &big)].concat(),
            1009,
        ),
        ("1.x a client frame that is not masked", unmasked, 1002),
        ("3.x a reserved bit set", raw_frame(0x80 | 0x40 | TEXT, b"{}"), 1002),
        ("4.x a reserved data opcode", raw_frame(0x80 | 0x3, b"{}"), 1002),
        ("4.x a reserved control opcode", raw_frame(0x80 | 0xB, b""), 1002),
        ("5.x a continuation with no message started", frame(true, CONTINUATION, b"{}"), 1002),
        (
            "5.x a new message before the fragmented one ends",
            [frame(false, TEXT, b"{"), frame(true, TEXT, b"{}")].concat(),
            1002,
        ),
        ("5.x a fragmented ping", frame(false, PING, b"ping"), 1002),
        ("2.x a ping over 125 bytes", frame(true, PING, &[b'p'; 126]), 1002),
        ("6.x invalid UTF-8 in a text frame", frame(true, TEXT, b"{\"a\":\"\xff\"}"), 1007),
        (
            "6.x invalid UTF-8 across fragments",
            [frame(false, TEXT, b"{\"a\":\"\xce"), frame(true, CONTINUATION, b"\xff\"}")].concat(),
            1007,
        ),
        ("7.x a close frame with a 1-byte payload", frame(true, CLOSE, b"\x03"), 1002),
        ("7.x a close code that may not be sent (1005)", frame(true, CLOSE, &close_payload(1005, b"")), 1002),
        ("7.x a close code that may not be sent (1006)", frame(true, CLOSE, &close_payload(1006, b"")), 1002),
        ("7.x a close code out of range (999)", frame(true, CLOSE, &close_payload(999, b"")), 1002),
        ("7.x a close reason that is not UTF-8", frame(true, CLOSE, &close_payload(1000, b"\xff\xfe")), 1007),
        ("7.x a normal close is answered in kind", frame(true, CLOSE, &close_payload(1000, b"bye")), 1000),
        ("7.x an application's close code is echoed", frame(true, CLOSE, &close_payload(4000, b"")), 4000),
        ("7.x a close without a code is answered without one", frame(true, CLOSE, b""), 1005),
    ];
    let mut wrong = Vec::new();
    for (name, bytes, expected) in cases {
        let mut ws = RawWs::open(&node, "channels=edge").await;
        ws.send(&bytes).await;
        let got = ws.close_code().await;
        eprintln!("{name}: {got:?}");
        if got != Some(expected) {
            wrong.push(format!("{name}: expected {expected}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// What a client may legally do with frames, each answered as it should be and the connection living on: a
/// ping between the fragments of a message (answered at once, the message then applied), a UTF-8 character
/// split across fragments, a binary message (an `error` frame, not a close), and a ping sent while the server's
/// writes wait for a client that reads slowly (answered once it reads, nothing cut, nothing lost).
#[tokio::test]
async fn fragments_pings_and_slow_writes_are_handled_and_the_connection_lives_on() {
    let node = Node::start(&[]).await;
    let mut ws = RawWs::open(&node, "channels=edge").await;
    // 5.x + 2.x: a ping between two fragments of one subscribe frame.
    ws.send(&frame(false, TEXT, br#"{"type":"subscribe","id":"s1","#)).await;
    ws.send(&frame(true, PING, b"between")).await;
    ws.send(&frame(true, CONTINUATION, br#""channel":"edge:two"}"#)).await;
    let pong = ws.next().await.unwrap();
    assert_eq!((pong.opcode, &pong.payload[..]), (PONG, &b"between"[..]), "the ping is answered mid-message");
    let ack = ws.next().await.unwrap().json();
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_str()),
        (Some("ack"), Some("s1")),
        "then the message applies: {ack}"
    );
    // 6.x: "é" (0xC3 0xA9) split across two fragments of a publish.
    ws.send(&frame(false, TEXT, b"{\"type\":\"publish\",\"id\":\"p1\",\"channel\":\"edge\",\"data\":\"caf\xc3")).await;
    ws.send(&frame(true, CONTINUATION, b"\xa9\"}")).await;
    let mut frames = Vec::new();
    while frames.len() < 2 {
        frames.push(ws.next().await.unwrap().json());
    }
    assert!(frames.iter().any(|f| f["type"] == "ack" && f["id"] == "p1"), "{frames:?}");
    assert!(frames.iter().any(|f| f["type"] == "message" && f["data"] == "café"), "{frames:?}");
    // A binary message is refused with an error frame; the connection stays.
    ws.send(&frame(true, BINARY, b"{}")).await;
    assert_eq!(ws.next().await.unwrap().json()["code"], "binary_unsupported");
    ws.send(&frame(true, PING, b"still")).await;
    assert_eq!(ws.next().await.unwrap().payload, b"still");

    // 2.x under load: 800 KB for a client that reads nothing for 3 s (under the write timeout), then a ping.
    let mut slow = RawWs::open_with(&node, "channels=edge:slow", Some(4096)).await;
    let data = "x".repeat(2000);
    for batch in 0..4 {
        let messages: Vec<_> =
            (0..100).map(|i| json!({"channel": "edge:slow", "data": format!("{} {data}", batch * 100 + i)})).collect();
        let r =
            common::http().post(format!("{}/v1/publish", node.url)).json(&json!({ "messages": messages })).send().await;
        assert_eq!(r.unwrap().status(), 200);
    }
    slow.send(&frame(true, PING, b"slow")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut offsets, mut ponged) = (Vec::new(), false);
    while offsets.len() < 400 || !ponged {
        let frame = slow.next().await.expect("the slow client is not cut");
        match frame.opcode {
            PONG => ponged = frame.payload == b"slow",
            TEXT if frame.json()["type"] == "message" => offsets.push(frame.json()["offset"].as_u64().unwrap()),
            _ => {}
        }
    }
    assert_eq!(offsets, (1..=400).collect::<Vec<u64>>(), "every message, once, in order");
}
