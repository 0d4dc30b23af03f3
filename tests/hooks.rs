//! Backend hooks against a real application: each test starts an HTTP backend that verifies the gateway's
//! HMAC signature itself (401 when it does not verify) and answers by channel name, then drives a gateway over
//! WebSocket, SSE and long-polling. Where a hook refuses or fails, a backend publish to the same channel must
//! then get offset 1: no client message was stored.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use common::{http, publish_ok, Node, Poller, Sse, Ws};

const SECRET: &str = "s3cret";
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hooks.toml");
const HOOK_TIMEOUT_MS: u64 = 300;
/// How long the backend sleeps on `hooked:slow`: far past the gateway's hook timeout.
const SLOW: Duration = Duration::from_secs(3);
/// Sent on every attach and never forwarded: the connect hook sees only `forward_headers`.
const UNFORWARDED: &str = "x-not-forwarded";

// --- the application's backend ----------------------------------------------------------------------------

/// What the backend received: each verified request's raw body, and how many it refused as unsigned.
#[derive(Default)]
struct Seen {
    bodies: Vec<String>,
    unverified: usize,
}

/// The application: `POST /hook` on a free loopback port, on the test's runtime.
struct Backend {
    url: String,
    seen: Arc<Mutex<Seen>>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = Router::new().route("/hook", post(hook)).with_state(seen.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Backend { url, seen }
    }

    /// A backend and a gateway asking it, signing with `secret`.
    async fn start_with_gateway(secret: &str, extra: &[&str]) -> (Backend, Node) {
        let backend = Backend::start().await;
        let timeout = HOOK_TIMEOUT_MS.to_string();
        let mut args = vec!["--config", CONFIG, "--hook-url", &backend.url, "--hook-secret", secret];
        args.extend(["--hook-timeout-ms", &timeout]);
        args.extend(extra);
        let node = Node::start(&args).await;
        (backend, node)
    }

    /// The verified requests of `kind` (`connect`, `subscribe`, `publish`), raw and parsed.
    fn requests(&self, kind: &str) -> Vec<(String, Value)> {
        let seen = self.seen.lock().unwrap();
        let parsed = seen.bodies.iter().map(|b| (b.clone(), serde_json::from_str::<Value>(b).unwrap()));
        parsed.filter(|(_, v)| v["type"] == kind).collect()
    }

    fn unverified(&self) -> usize {
        self.seen.lock().unwrap().unverified
    }
}

async fn hook(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap, body: Bytes) -> Response {
    if !verified(&headers, &body) {
        seen.lock().unwrap().unverified += 1;
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    seen.lock().unwrap().bodies.push(String::from_utf8(body.to_vec()).unwrap());
    let request: Value = serde_json::from_slice(&body).unwrap();
    if request["type"] == "connect" {
        return Json(connect_answer(&request)).into_response();
    }
    // `hooked:<case>/<transport>`: the case decides the answer.
    let channel = request["channel"].as_str().unwrap();
    let case = channel.strip_prefix("hooked:").and_then(|rest| rest.split('/').next()).unwrap_or("");
    let answer = match case {
        "deny" => json!({ "allow": false, "reason": "the backend says no" }),
        "replace" if request["type"] == "publish" => json!({ "allow": true, "data": { "replaced": true } }),
        "slow" => {
            tokio::time::sleep(SLOW).await;
            json!({ "allow": true })
        }
        _ => json!({ "allow": true }),
    };
    Json(answer).into_response()
}

/// What a backend does with the two headers: recompute the HMAC of `"<timestamp>.<raw body>"` with the shared
/// secret, compare in constant time, and refuse a timestamp more than five minutes away.
fn verified(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(timestamp), Some(signature)) = (header("x-stickless-timestamp"), header("x-stickless-signature")) else {
        return false;
    };
    let Some(sent) = signature.strip_prefix("sha256=").and_then(from_hex) else { return false };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    if timestamp.parse::<u64>().map_or(true, |t| t.abs_diff(now) > 300) {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sent).is_ok()
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

/// `Cookie: user=alice` connects as alice with her private channels; anyone else is refused.
fn connect_answer(request: &Value) -> Value {
    match request["client"]["headers"]["cookie"].as_str() {
        Some("user=alice") => {
            let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
            let claims = json!({ "subscribe": ["private:alice*"], "publish": ["private:alice*"] });
            json!({ "allow": true, "user": { "sub": "alice", "exp": exp, "stickless": claims } })
        }
        _ => json!({ "allow": false, "reason": "unknown user" }),
    }
}

// --- one client on each transport -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Kind {
    WebSocket,
    Sse,
    LongPolling,
}

const KINDS: [Kind; 3] = [Kind::WebSocket, Kind::Sse, Kind::LongPolling];

impl Kind {
    /// As the protocol names the transport (`welcome.transport`, the connect hook's `transport`).
    fn name(self) -> &'static str {
        match self {
            Kind::WebSocket => "websocket",
            Kind::Sse => "sse",
            Kind::LongPolling => "long-polling",
        }
    }
}

/// A session on one transport: frames go up (a WebSocket message, or `POST /v1/send` for SSE and polls), their
/// `ack`/`error` replies and the delivered messages come back.
struct Client {
    url: String,
    down: Down,
    /// Frames that arrived while waiting for something else.
    pending: VecDeque<Value>,
    frame_ids: u32,
}

enum Down {
    WebSocket(Box<Ws>),
    Sse(Sse, String),
    LongPolling(Poller),
}

impl Client {
    /// An anonymous session, as the common clients open one.
    async fn open(kind: Kind, node: &Node) -> Client {
        let down = match kind {
            Kind::WebSocket => Down::WebSocket(Box::new(Ws::connect(&node.ws_url(), "").await)),
            Kind::Sse => {
                let sse = Sse::connect(&node.url, "", None).await;
                let session = sse.last_event_id.as_deref().unwrap().split(';').next().unwrap().to_owned();
                Down::Sse(sse, session)
            }
            Kind::LongPolling => Down::LongPolling(Poller::open(&node.url, "").await),
        };
        Client { url: node.url.clone(), down, pending: VecDeque::new(), frame_ids: 0 }
    }

    /// An anonymous session, and the channel `hooked:<case>/<transport>` the backend answers as `case` says.
    async fn open_for(kind: Kind, node: &Node, case: &str) -> (Client, String) {
        (Client::open(kind, node).await, format!("hooked:{case}/{}", kind.name()))
    }

    /// A new session attached with `Cookie: <cookie>` (and a header that must not be forwarded): the client and
    /// its `welcome`, or the HTTP status the attach was refused with.
    async fn attach_with_cookie(kind: Kind, node: &Node, cookie: &str) -> Result<(Client, Value), (u16, Value)> {
        let (down, welcome) = match kind {
            Kind::WebSocket => {
                let mut request = format!("{}/v1/ws", node.ws_url()).into_client_request().unwrap();
                request.headers_mut().insert("cookie", HeaderValue::from_str(cookie).unwrap());
                request.headers_mut().insert(UNFORWARDED, HeaderValue::from_static("1"));
                let stream = match tokio_tungstenite::connect_async(request).await {
                    Ok((stream, _)) => stream,
                    Err(tokio_tungstenite::tungstenite::Error::Http(refused)) => {
                        return Err((refused.status().as_u16(), Value::Null))
                    }
                    Err(err) => panic!("the upgrade is answered: {err}"),
                };
                let mut ws = Ws { stream, session: String::new() };
                let welcome = ws.next().await.expect("welcome");
                ws.session = welcome["session"].as_str().unwrap().into();
                (Down::WebSocket(Box::new(ws)), welcome)
            }
            Kind::Sse | Kind::LongPolling => {
                let path = if matches!(kind, Kind::Sse) { "sse" } else { "poll" };
                let response = http()
                    .get(format!("{}/v1/{path}", node.url))
                    .header("cookie", cookie)
                    .header(UNFORWARDED, "1")
                    .send()
                    .await
                    .unwrap();
                if response.status() != 200 {
                    return Err((response.status().as_u16(), response.json().await.unwrap()));
                }
                if matches!(kind, Kind::Sse) {
                    // Only the welcome is read here; the same session is then followed with the common client.
                    let welcome = first_sse_frame(response).await;
                    let session = welcome["session"].as_str().unwrap().to_owned();
                    let sse = Sse::connect(&node.url, &format!("session={session}"), None).await;
                    (Down::Sse(sse, session), welcome)
                } else {
                    let body: Value = response.json().await.unwrap();
                    let text = |key: &str| body[key].as_str().unwrap().to_owned();
                    let poller =
                        Poller { session: text("session"), position: text("position"), last_node: text("node") };
                    (Down::LongPolling(poller), body["frames"][0].clone())
                }
            }
        };
        assert_eq!(welcome["type"], "welcome");
        Ok((Client { url: node.url.clone(), down, pending: VecDeque::new(), frame_ids: 0 }, welcome))
    }

    /// Sends `{"type":"subscribe",...}`; answers its reply.
    async fn subscribe(&mut self, channel: &str) -> Value {
        let id = self.next_id();
        self.request(&id, format!(r#"{{"type":"subscribe","id":"{id}","channel":"{channel}"}}"#)).await
    }

    /// Sends a publish whose `data` is the JSON text `data`, exactly as written; answers its reply.
    async fn publish(&mut self, channel: &str, data: &str) -> Value {
        let id = self.next_id();
        self.request(&id, format!(r#"{{"type":"publish","id":"{id}","channel":"{channel}","data":{data}}}"#)).await
    }

    fn next_id(&mut self) -> String {
        self.frame_ids += 1;
        format!("f{}", self.frame_ids)
    }

    async fn request(&mut self, id: &str, frame: String) -> Value {
        let session = match &mut self.down {
            Down::WebSocket(ws) => {
                ws.stream.send(WsMessage::text(frame)).await.unwrap();
                loop {
                    let reply = ws.next().await.expect("a reply");
                    if reply["id"] == id && (reply["type"] == "ack" || reply["type"] == "error") {
                        return reply;
                    }
                    self.pending.push_back(reply);
                }
            }
            Down::Sse(_, session) => session.clone(),
            Down::LongPolling(poller) => poller.session.clone(),
        };
        let r = http().post(format!("{}/v1/send?session={session}", self.url)).body(frame).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let replies: Value = r.json().await.unwrap();
        replies[0].clone()
    }

    /// The next delivered `message` frame.
    async fn message(&mut self) -> Value {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                if frame["type"] == "message" {
                    return frame;
                }
                continue;
            }
            match &mut self.down {
                Down::WebSocket(ws) => self.pending.push_back(ws.next().await.expect("a frame")),
                Down::Sse(sse, _) => self.pending.push_back(sse.next().await.expect("a frame")),
                Down::LongPolling(poller) => self.pending.extend(poller.poll(&self.url).await),
            }
        }
    }
}

/// The first `data:` line of an SSE body (after the padding comment and `retry:`), as JSON.
async fn first_sse_frame(response: reqwest::Response) -> Value {
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if let Some(start) = text.find("\ndata: ").map(|i| i + "\ndata: ".len()) {
            if let Some(len) = text[start..].find('\n') {
                return serde_json::from_str(&text[start..start + len]).unwrap();
            }
        }
    }
    panic!("the SSE stream ended before its first frame");
}

fn assert_ack(reply: &Value, kind: Kind) {
    assert_eq!(reply["type"], "ack", "{kind:?}: {reply}");
}

fn assert_error(reply: &Value, code: &str, kind: Kind) {
    assert_eq!(reply["type"], "error", "{kind:?}: {reply}");
    assert_eq!(reply["code"], code, "{kind:?}: {reply}");
}

/// Proves no client message took an offset in `channel`: the backend's own first publish gets offset 1.
async fn assert_nothing_stored(node: &Node, channel: &str, kind: Kind) {
    let stored = publish_ok(&node.url, channel, json!({ "from": "the backend" })).await;
    assert_eq!(stored["offset"], 1, "{kind:?}: {channel} holds no client message: {stored}");
}

// --- the cases --------------------------------------------------------------------------------------------

#[tokio::test]
async fn what_the_hook_allows_is_acked_and_delivered_with_the_sender_and_the_data_as_sent() {
    let (backend, node) = Backend::start_with_gateway(SECRET, &[]).await;
    for kind in KINDS {
        let (mut client, channel) = Client::open_for(kind, &node, "allow").await;
        assert_ack(&client.subscribe(&channel).await, kind);
        let stored = client.publish(&channel, r#"{"text": "hi",  "n": [1, 2]}"#).await;
        assert_ack(&stored, kind);
        assert_eq!(stored["result"]["offset"], 1);

        let message = client.message().await;
        assert_eq!(message["channel"], channel.as_str());
        assert_eq!(message["data"], json!({ "text": "hi", "n": [1, 2] }));
        assert_eq!(message["from"]["sub"], Value::Null, "{kind:?}: an anonymous sender: {message}");

        // The backend was asked about both, saw the sender's public id and the client's data byte for byte.
        let subscribes = backend.requests("subscribe");
        let asked = subscribes.iter().find(|(_, r)| r["channel"] == channel.as_str()).expect("subscribe asked");
        assert_eq!(asked.1["session"], message["from"], "{kind:?}");
        let publishes = backend.requests("publish");
        let (raw, asked) = publishes.iter().find(|(_, r)| r["channel"] == channel.as_str()).expect("publish asked");
        assert_eq!(asked["session"], message["from"], "{kind:?}");
        assert!(raw.contains(r#""data":{"text": "hi",  "n": [1, 2]}"#), "{kind:?}: {raw}");
    }
}

#[tokio::test]
async fn what_the_hook_denies_is_forbidden_with_the_backends_reason_and_stores_nothing() {
    let (_backend, node) = Backend::start_with_gateway(SECRET, &[]).await;
    for kind in KINDS {
        let (mut client, channel) = Client::open_for(kind, &node, "deny").await;
        for reply in [client.subscribe(&channel).await, client.publish(&channel, r#"{"text":"no"}"#).await] {
            assert_error(&reply, "forbidden", kind);
            assert_eq!(reply["message"], "the backend says no", "{kind:?}");
        }
        assert_nothing_stored(&node, &channel, kind).await;
    }
}

#[tokio::test]
async fn data_the_hook_replaces_is_what_subscribers_receive() {
    let (_backend, node) = Backend::start_with_gateway(SECRET, &[]).await;
    for kind in KINDS {
        let (mut client, channel) = Client::open_for(kind, &node, "replace").await;
        assert_ack(&client.subscribe(&channel).await, kind);
        assert_ack(&client.publish(&channel, r#"{"text":"original"}"#).await, kind);
        let message = client.message().await;
        assert_eq!(message["data"], json!({ "replaced": true }), "{kind:?}");
        assert_eq!(message["offset"], 1);
        assert!(message["from"]["pid"].is_string(), "{kind:?}: still from the client: {message}");
    }
}

#[tokio::test]
async fn a_hook_past_its_timeout_is_hook_unavailable_within_the_timeout_and_stores_nothing() {
    let (_backend, node) = Backend::start_with_gateway(SECRET, &[]).await;
    for kind in KINDS {
        let (mut client, channel) = Client::open_for(kind, &node, "slow").await;
        let started = Instant::now();
        let subscribe = client.subscribe(&channel).await;
        let waited = started.elapsed();
        let publish = client.publish(&channel, r#"{"text":"late"}"#).await;
        for reply in [subscribe, publish] {
            assert_error(&reply, "hook_unavailable", kind);
            assert!(reply["message"].as_str().unwrap().contains("300 ms"), "{kind:?}: {reply}");
        }
        // Refused at the gateway's timeout, long before the backend would have answered.
        assert!(waited >= Duration::from_millis(HOOK_TIMEOUT_MS) && waited < SLOW / 2, "{kind:?}: {waited:?}");
        assert_nothing_stored(&node, &channel, kind).await;
    }
}

#[tokio::test]
async fn a_hook_signed_with_the_wrong_secret_is_refused_by_the_backend_so_hook_unavailable_and_nothing_stored() {
    let (backend, node) = Backend::start_with_gateway("not-the-shared-secret", &[]).await;
    for kind in KINDS {
        let (mut client, channel) = Client::open_for(kind, &node, "allow").await;
        for reply in [client.subscribe(&channel).await, client.publish(&channel, r#"{"text":"forged"}"#).await] {
            assert_error(&reply, "hook_unavailable", kind);
            assert!(reply["message"].as_str().unwrap().contains("HTTP 401"), "{kind:?}: {reply}");
        }
        assert_nothing_stored(&node, &channel, kind).await;
    }
    assert_eq!(backend.unverified(), 6, "every request reached the backend and failed its check");
    assert!(backend.requests("subscribe").is_empty() && backend.requests("publish").is_empty());
}

#[tokio::test]
async fn the_connect_hook_turns_a_forwarded_cookie_into_a_user_with_claims() {
    let (backend, node) =
        Backend::start_with_gateway(SECRET, &["--hook-connect", "true", "--allowed-origins", "https://app.example"])
            .await;
    for kind in KINDS {
        let (mut alice, welcome) = Client::attach_with_cookie(kind, &node, "user=alice").await.expect("alice connects");
        let asked = backend.requests("connect").pop().expect("the connect hook was asked").1;
        assert_eq!(asked["transport"], kind.name());
        assert_eq!(asked["client"]["ip"], "127.0.0.1");
        assert_eq!(asked["client"]["headers"]["cookie"], "user=alice");
        assert!(asked["client"]["headers"].get(UNFORWARDED).is_none(), "only forward_headers: {asked}");

        assert_ack(&alice.subscribe("private:alice").await, kind);
        let refused = alice.subscribe("private:bob").await;
        assert_error(&refused, "forbidden", kind);
        assert_ack(&alice.publish("private:alice", r#"{"text":"hello"}"#).await, kind);
        let message = alice.message().await;
        assert_eq!(message["from"], json!({ "sub": "alice", "pid": welcome["pid"] }), "{kind:?}");
    }
}

#[tokio::test]
async fn a_client_the_connect_hook_refuses_gets_403_forbidden_on_attach() {
    let (backend, node) =
        Backend::start_with_gateway(SECRET, &["--hook-connect", "true", "--allowed-origins", "https://app.example"])
            .await;
    for kind in KINDS {
        let Err((status, body)) = Client::attach_with_cookie(kind, &node, "user=mallory").await else {
            panic!("{kind:?}: mallory is refused");
        };
        assert_eq!(status, 403, "{kind:?}");
        // A refused WebSocket upgrade has no body a browser could read; the others carry the JSON error.
        if !matches!(kind, Kind::WebSocket) {
            assert_eq!(body["error"]["code"], "forbidden", "{kind:?}");
            assert_eq!(body["error"]["message"], "unknown user", "{kind:?}");
        }
    }
    assert_eq!(backend.requests("connect").len(), 3);
}

#[tokio::test]
async fn a_cookie_connect_hook_without_allowed_origins_refuses_to_start() {
    // Any site's page could otherwise open a WebSocket with its visitor's cookies and act as them.
    let flags = ["stickless", "--hook-url", "http://127.0.0.1:9/hook", "--hook-connect", "true"];
    let settings = stickless::Config::try_load_from(flags).unwrap().settings().unwrap();
    let built = stickless::Builder::new().settings(settings).build().await;
    let err = built.err().expect("refused").to_string();
    assert!(err.contains("--allowed-origins"), "{err}");
}
