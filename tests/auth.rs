//! Who may read and write what, tried as a hostile client would, on every transport: the secure default,
//! connection tokens and each way one can be wrong, user channels, refresh in place, expiry, origins, and the
//! sender on client messages.

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{http, publish_ok, Node, Poller, Sse, Ws};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "a-test-secret-that-is-long-enough-32";
const EXAMPLE_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config.toml");
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

const TRANSPORTS: [&str; 3] = ["websocket", "sse", "long-polling"];

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn claims(sub: &str, exp_in: i64, subscribe: &[&str], publish: &[&str]) -> Value {
    json!({
        "sub": sub,
        "exp": (now() as i64 + exp_in),
        "stickless": {"subscribe": subscribe, "publish": publish, "presence": subscribe},
    })
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// What an attach answered: a session (with its first frames) or an HTTP-level refusal.
#[derive(Debug)]
enum Attach {
    Ok,
    Refused { status: u16, code: String },
}

/// Attaches over `transport` with `query` (channels, token) and reports how it went.
async fn attach(node: &Node, transport: &str, query: &str) -> Attach {
    match transport {
        "websocket" => match tokio_tungstenite::connect_async(format!("{}/v1/ws?{query}", node.ws_url())).await {
            Ok((mut ws, _)) => match common::next_frame(&mut ws).await {
                Some(f) if f["type"] == "welcome" => Attach::Ok,
                Some(f) => Attach::Refused { status: 0, code: f["code"].as_str().unwrap_or("").into() },
                None => Attach::Refused { status: 0, code: "closed".into() },
            },
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                let body: Value = serde_json::from_slice(r.body().as_deref().unwrap_or(b"{}")).unwrap_or_default();
                Attach::Refused {
                    status: r.status().as_u16(),
                    code: body["error"]["code"].as_str().unwrap_or("").into(),
                }
            }
            Err(e) => panic!("websocket attach failed: {e}"),
        },
        "sse" | "long-polling" => {
            let path = if transport == "sse" { "sse" } else { "poll" };
            let r = http().get(format!("{}/v1/{path}?{query}", node.url)).send().await.unwrap();
            if r.status() == 200 {
                return Attach::Ok;
            }
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            Attach::Refused { status, code: body["error"]["code"].as_str().unwrap_or("").into() }
        }
        _ => unreachable!(),
    }
}

/// A client on one transport: frames go up on the socket (WebSocket) or by POST /v1/send (SSE, long-polling).
enum Client {
    /// A WebSocket, and the frames that arrived while an answer was awaited, not yet received.
    Ws(Box<Ws>, Vec<Value>),
    Sse(Sse, String),
    Poll(Poller),
}

impl Client {
    async fn open(node: &Node, transport: &str, query: &str) -> Client {
        match transport {
            "websocket" => Client::Ws(Box::new(Ws::connect(&node.ws_url(), query).await), Vec::new()),
            "sse" => {
                let sse = Sse::connect(&node.url, query, None).await;
                let session = sse.last_event_id.clone().unwrap().split(';').next().unwrap().to_owned();
                Client::Sse(sse, session)
            }
            _ => {
                let body: Value =
                    http().get(format!("{}/v1/poll?{query}", node.url)).send().await.unwrap().json().await.unwrap();
                assert_eq!(body["frames"][0]["type"], "welcome", "{body}");
                Client::Poll(Poller {
                    session: body["session"].as_str().unwrap().into(),
                    position: body["position"].as_str().unwrap().into(),
                    last_node: body["node"].as_str().unwrap().into(),
                })
            }
        }
    }

    /// Sends one upstream frame and returns its answer (`ack` or `error`).
    async fn send(&mut self, node: &Node, frame: Value) -> Value {
        match self {
            Client::Ws(ws, early) => {
                let id = frame["id"].clone();
                ws.send(frame).await;
                loop {
                    let f = ws.next().await.expect("an answer");
                    if f["id"] == id && matches!(f["type"].as_str(), Some("ack" | "error")) {
                        return f;
                    }
                    early.push(f);
                }
            }
            Client::Sse(_, session) => {
                let r =
                    http().post(format!("{}/v1/send?session={session}", node.url)).json(&frame).send().await.unwrap();
                r.json::<Value>().await.unwrap()[0].clone()
            }
            Client::Poll(p) => p.send(&node.url, frame).await[0].clone(),
        }
    }

    /// The next downstream frames (a poll's batch, or one frame); empty when the connection ended or fell silent.
    async fn receive(&mut self, node: &Node) -> Vec<Value> {
        match self {
            Client::Ws(ws, early) if early.is_empty() => ws.next().await.into_iter().collect(),
            Client::Ws(_, early) => std::mem::take(early),
            Client::Sse(sse, _) => sse.next().await.into_iter().collect(),
            Client::Poll(p) => {
                let r = http()
                    .get(format!("{}/v1/poll", node.url))
                    .query(&[("session", &p.session), ("position", &p.position)])
                    .send()
                    .await
                    .unwrap();
                let body: Value = r.json().await.unwrap();
                if let Some(position) = body["position"].as_str() {
                    p.position = position.into();
                    body["frames"].as_array().unwrap().clone()
                } else {
                    // A refused poll: its error body, as a frame, for the caller to see.
                    vec![json!({"type": "error", "code": body["error"]["code"]})]
                }
            }
        }
    }
}

#[tokio::test]
async fn by_default_anonymous_clients_may_use_only_the_demo_namespace() {
    let node = Node::start(&["--secure-default"]).await;
    for transport in TRANSPORTS {
        // Refused at attach, with a JSON body (HTTP) or before the upgrade (WebSocket).
        match attach(&node, transport, "channels=secret:x").await {
            Attach::Refused { status, code } => assert_eq!((status, code.as_str()), (403, "forbidden"), "{transport}"),
            Attach::Ok => panic!("{transport}: an anonymous attach to secret:x was accepted"),
        }
        let mut client = Client::open(&node, transport, "channels=demo:chat").await;
        for (i, frame) in [
            json!({"type": "subscribe", "channel": "secret:x"}),
            json!({"type": "publish", "channel": "secret:x", "data": "fake"}),
            json!({"type": "publish", "channel": "plain", "data": "fake"}),
            json!({"type": "presence", "channel": "secret:x"}),
        ]
        .into_iter()
        .enumerate()
        {
            let mut frame = frame;
            frame["id"] = json!(format!("f{i}"));
            let answer = client.send(&node, frame.clone()).await;
            assert_eq!(answer["code"], "forbidden", "{transport}: {frame} -> {answer}");
        }
        // The demo's channels work, and a client's message says who sent it.
        let ack = client.send(&node, json!({"type": "publish", "id": "p", "channel": "demo:chat", "data": "hi"})).await;
        assert_eq!(ack["type"], "ack", "{transport}: {ack}");
        let presence = client.send(&node, json!({"type": "presence", "id": "w", "channel": "demo:chat"})).await;
        assert_eq!(presence["type"], "ack", "{transport}: {presence}");
        let message = receive_message(&mut client, &node).await;
        assert_eq!(message["data"], "hi");
        assert!(message["from"]["pid"].is_string() && message["from"]["sub"].is_null(), "{message}");
    }
    // With no key configured, no token is accepted.
    let token = hs256(&claims("u1", 600, &["*"], &["*"]));
    let refused = attach(&node, "long-polling", &format!("channels=demo:chat&token={token}")).await;
    assert!(matches!(&refused, Attach::Refused { status: 401, code } if code == "token_invalid"), "{refused:?}");
    // Nothing the refused publishes asked for was stored: the backend's first message takes offset 1.
    assert_eq!(publish_ok(&node.url, "secret:x", json!(1)).await["offset"], 1);
}

async fn receive_message(client: &mut Client, node: &Node) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(m) = client.receive(node).await.into_iter().find(|f| f["type"] == "message") {
            return m;
        }
    }
    panic!("no message arrived");
}

/// A node on the example configuration (namespaces `default` (token), `demo`, `user`, `chat`) with `extra` flags,
/// less its limit on new sessions per IP: these tests open dozens of sessions from 127.0.0.1 in a burst, which the
/// limit rightly refuses (tests/quotas.rs tests it).
async fn token_node(extra: &[&str]) -> Node {
    let example = std::fs::read_to_string(EXAMPLE_CONFIG).unwrap();
    let config = example.replace("sessions_per_ip_per_second = 20", "sessions_per_ip_per_second = 0");
    assert_ne!(config, example, "the example sets sessions_per_ip_per_second = 20");
    let path = std::env::temp_dir().join(format!("stickless-auth-{}-{}.toml", std::process::id(), common::free_port()));
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap().to_owned();
    let mut args = vec!["--config", &path, "--token-secret", SECRET];
    args.extend_from_slice(extra);
    Node::start(&args).await
}

#[tokio::test]
async fn each_bad_token_gets_its_documented_error_on_every_transport() {
    let node = token_node(&["--token-audience", "stickless"]).await;
    let good = |c: Value| {
        let mut c = c;
        c["aud"] = json!("stickless");
        c
    };
    let alg_none = {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(good(claims("mallory", 600, &["*"], &["*"])).to_string());
        format!("{header}.{body}.")
    };
    let wrong_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good(claims("mallory", 600, &["*"], &["*"])),
        &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!"),
    )
    .unwrap();
    let mut not_yet = good(claims("u1", 600, &["secret:*"], &[]));
    not_yet["nbf"] = json!(now() + 300);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("expired", hs256(&good(claims("u1", -60, &["secret:*"], &[]))), 401, "token_expired"),
        ("not yet valid", hs256(&not_yet), 401, "token_invalid"),
        ("wrong signature", wrong_key, 401, "token_invalid"),
        ("alg none", alg_none, 401, "token_invalid"),
        ("no audience", hs256(&claims("u1", 600, &["secret:*"], &[])), 401, "token_invalid"),
        (
            "wrong audience",
            hs256(&{
                let mut c = claims("u1", 600, &["secret:*"], &[]);
                c["aud"] = json!("someone-else");
                c
            }),
            401,
            "token_invalid",
        ),
        ("no sub", hs256(&json!({"exp": now() + 600, "aud": "stickless"})), 401, "token_invalid"),
        ("outside the claims", hs256(&good(claims("u1", 600, &["secret:other"], &[]))), 403, "forbidden"),
        ("missing (anonymous)", String::new(), 403, "forbidden"),
        ("garbage", "not.a.jwt".into(), 401, "token_invalid"),
    ];
    for transport in TRANSPORTS {
        for (name, token, status, code) in &cases {
            let query = format!("channels=secret:x&token={token}");
            match attach(&node, transport, &query).await {
                Attach::Refused { status: got, code: got_code } => {
                    // A WebSocket refused before the upgrade shows its status; after it, the error frame's code.
                    if got != 0 {
                        assert_eq!(got, *status, "{transport}, {name}");
                    }
                    assert_eq!(got_code, *code, "{transport}, {name}");
                }
                Attach::Ok => panic!("{transport}, {name}: accepted"),
            }
        }
        let valid = hs256(&good(claims("u1", 600, &["secret:*"], &["secret:x"])));
        assert!(matches!(attach(&node, transport, &format!("channels=secret:x&token={valid}")).await, Attach::Ok));
    }
    // The header form works too (a client that can set headers).
    let valid = hs256(&good(claims("u1", 600, &["secret:*"], &[])));
    let r = http().get(format!("{}/v1/poll?channels=secret:x", node.url)).bearer_auth(valid).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_user_channel_is_readable_only_by_its_user() {
    let node = token_node(&[]).await;
    let alice = hs256(&claims("alice", 600, &[], &[]));
    for transport in TRANSPORTS {
        assert!(matches!(attach(&node, transport, &format!("channels=user:alice&token={alice}")).await, Attach::Ok));
        assert!(matches!(
            attach(&node, transport, &format!("channels=user:alice/inbox&token={alice}")).await,
            Attach::Ok
        ));
        let refused = attach(&node, transport, &format!("channels=user:bob&token={alice}")).await;
        assert!(matches!(&refused, Attach::Refused { code, .. } if code == "forbidden"), "{transport}: {refused:?}");
        let anonymous = attach(&node, transport, "channels=user:alice").await;
        assert!(matches!(&anonymous, Attach::Refused { code, .. } if code == "forbidden"), "{transport}");
        // Only the backend writes there.
        let mut client = Client::open(&node, transport, &format!("channels=user:alice&token={alice}")).await;
        let answer =
            client.send(&node, json!({"type": "publish", "id": "p", "channel": "user:alice", "data": 1})).await;
        assert_eq!(answer["code"], "forbidden", "{transport}");
    }
}

#[tokio::test]
async fn rs256_es256_and_jwks_tokens_verify_and_algorithm_confusion_is_refused() {
    let read = |name: &str| std::fs::read(format!("{KEYS}/{name}")).unwrap();
    let grant = claims("u1", 600, &["secret:*"], &[]);
    let rs = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &grant,
        &EncodingKey::from_rsa_pem(&read("rsa-private.pem")).unwrap(),
    )
    .unwrap();
    let es = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &grant,
        &EncodingKey::from_ec_pem(&read("ec-private.pem")).unwrap(),
    )
    .unwrap();
    // An HS256 token whose "secret" is the RSA public key: accepted only by a server that confuses algorithms.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &grant,
        &EncodingKey::from_secret(&read("rsa-public.pem")),
    )
    .unwrap();

    let rsa = Node::start(&["--config", EXAMPLE_CONFIG, "--token-public-key", &format!("{KEYS}/rsa-public.pem")]).await;
    let ec = Node::start(&["--config", EXAMPLE_CONFIG, "--token-public-key", &format!("{KEYS}/ec-public.pem")]).await;
    let jwks = Node::start(&["--config", EXAMPLE_CONFIG, "--token-jwks", &format!("{KEYS}/jwks.json")]).await;
    let mut with_kid = Header::new(Algorithm::RS256);
    with_kid.kid = Some("test-rsa".into());
    let rs_kid =
        jsonwebtoken::encode(&with_kid, &grant, &EncodingKey::from_rsa_pem(&read("rsa-private.pem")).unwrap()).unwrap();
    for (node, token, accepted) in [
        (&rsa, &rs, true),
        (&rsa, &es, false),
        (&rsa, &confused, false),
        (&ec, &es, true),
        (&ec, &rs, false),
        (&jwks, &rs_kid, true),
        (&jwks, &confused, false),
    ] {
        let got = attach(node, "long-polling", &format!("channels=secret:x&token={token}")).await;
        assert_eq!(matches!(got, Attach::Ok), accepted, "{got:?}");
        if !accepted {
            assert!(matches!(&got, Attach::Refused { code, .. } if code == "token_invalid"), "{got:?}");
        }
    }
}

/// A session whose token expires in a few seconds refreshes in place on `transport` while 1,000 messages flow:
/// every one arrives once, in order, and the session never sees `token_expired`.
async fn refresh_keeps_the_stream(transport: &str) {
    let node = token_node(&["--heartbeat-ms", "500"]).await;
    let channel = format!("secret:refresh-{transport}");
    // Refreshed 1.5 s in, well before this token's exp even on a loaded machine; publishing goes on past it.
    let first = hs256(&claims("u1", 5, &["secret:*"], &[]));
    let mut client = Client::open(&node, transport, &format!("channels={channel}&token={first}")).await;
    let url = node.url.clone();
    let publishing = {
        let channel = channel.clone();
        tokio::spawn(async move {
            for i in 1..=1000u64 {
                publish_ok(&url, &channel, json!(i)).await;
                if i % 200 == 0 {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
            }
        })
    };
    let mut received = Vec::new();
    let mut refreshed = false;
    let started = Instant::now();
    while received.len() < 1000 {
        assert!(started.elapsed() < Duration::from_secs(60), "{transport}: only {} arrived", received.len());
        if !refreshed && started.elapsed() > Duration::from_millis(1500) {
            let fresh = hs256(&claims("u1", 600, &["secret:*"], &[]));
            let ack = client.send(&node, json!({"type": "refresh", "id": "r1", "token": fresh})).await;
            assert_eq!(ack["type"], "ack", "{transport}: {ack}");
            assert!(ack["result"]["exp"].as_u64().unwrap() > now() + 500);
            refreshed = true;
        }
        for frame in client.receive(&node).await {
            assert_ne!(frame["type"], "error", "{transport}: {frame}");
            if frame["type"] == "message" {
                received.push(frame["offset"].as_u64().unwrap());
            }
        }
    }
    publishing.await.unwrap();
    assert!(refreshed);
    assert!(started.elapsed() > Duration::from_secs(6), "the stream outlived the first token's exp");
    assert_eq!(received, (1..=1000).collect::<Vec<_>>(), "{transport}: every message once, in order");
}

#[tokio::test]
async fn refreshed_in_place_a_websocket_session_loses_and_repeats_nothing() {
    refresh_keeps_the_stream("websocket").await;
}

#[tokio::test]
async fn refreshed_in_place_an_sse_session_loses_and_repeats_nothing() {
    refresh_keeps_the_stream("sse").await;
}

#[tokio::test]
async fn refreshed_in_place_a_polling_session_loses_and_repeats_nothing() {
    refresh_keeps_the_stream("long-polling").await;
}

#[tokio::test]
async fn an_unrefreshed_session_gets_token_expired_at_exp_and_stops_receiving() {
    let node = token_node(&["--heartbeat-ms", "500"]).await;
    for transport in TRANSPORTS {
        let channel = format!("secret:expiry-{transport}");
        let token = hs256(&claims("u1", 2, &["secret:*"], &[]));
        let exp = now() + 2;
        let mut client = Client::open(&node, transport, &format!("channels={channel}&token={token}")).await;
        publish_ok(&node.url, &channel, json!("before")).await;
        assert_eq!(receive_message(&mut client, &node).await["data"], "before");
        // Wait for the expiry to be told.
        let told = loop {
            let frames = client.receive(&node).await;
            if let Some(error) = frames.iter().find(|f| f["type"] == "error") {
                break error.clone();
            }
            assert!(now() <= exp + 3, "{transport}: nothing told by exp + 3 s");
        };
        assert_eq!(told["code"], "token_expired", "{transport}: {told}");
        assert!(now() >= exp.saturating_sub(1) && now() <= exp + 2, "{transport}: told at exp, within a heartbeat");
        // Nothing more arrives: the connection ended, and a new attach of the session is refused.
        publish_ok(&node.url, &channel, json!("after")).await;
        let after = client.receive(&node).await;
        assert!(after.iter().all(|f| f["type"] != "message"), "{transport}: {after:?}");
    }
}

#[tokio::test]
async fn a_refresh_must_be_for_the_same_user_and_valid() {
    let node = token_node(&[]).await;
    let token = hs256(&claims("u1", 600, &["secret:*"], &[]));
    for transport in TRANSPORTS {
        let mut client = Client::open(&node, transport, &format!("channels=secret:x&token={token}")).await;
        let other = hs256(&claims("u2", 600, &["secret:*"], &[]));
        let answer = client.send(&node, json!({"type": "refresh", "id": "r", "token": other})).await;
        assert_eq!(answer["code"], "forbidden", "{transport}: {answer}");
        let expired = hs256(&claims("u1", -5, &["secret:*"], &[]));
        let answer = client.send(&node, json!({"type": "refresh", "id": "r2", "token": expired})).await;
        assert_eq!(answer["code"], "token_expired", "{transport}: {answer}");
        let mut anonymous = Client::open(&node, transport, "channels=demo:chat").await;
        let answer = anonymous.send(&node, json!({"type": "refresh", "id": "r3", "token": token})).await;
        assert_eq!(answer["code"], "forbidden", "{transport}: an anonymous session cannot become a user's");
    }
}

#[tokio::test]
async fn allowed_origins_govern_every_transport_and_the_backend_api_has_no_cors() {
    let node = Node::start(&["--allowed-origins", "https://a.example"]).await;
    let acao =
        |r: &reqwest::Response| r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned());
    for path in ["/v1/sse?channels=c", "/v1/poll?channels=c"] {
        let good =
            http().get(format!("{}{path}", node.url)).header("origin", "https://a.example").send().await.unwrap();
        assert_eq!(acao(&good).as_deref(), Some("https://a.example"), "{path}");
        let evil =
            http().get(format!("{}{path}", node.url)).header("origin", "https://evil.example").send().await.unwrap();
        assert_eq!(acao(&evil), None, "{path}");
        assert_eq!(evil.status(), 403, "{path}: refused outright, not just unreadable");
    }
    let poller = Poller::open(&node.url, "c").await;
    let send = format!("{}/v1/send?session={}", node.url, poller.session);
    let evil = http()
        .post(&send)
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body(r#"{"type":"publish","id":"x","channel":"c","data":"forged"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!((acao(&evil), evil.status().as_u16()), (None, 403), "a no-preflight POST from another site");
    let ws = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "{}/v1/ws",
        node.ws_url()
    ));
    let mut request = ws.unwrap();
    request.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    for origin in ["https://a.example", "https://evil.example"] {
        let publish = http()
            .post(format!("{}/v1/publish", node.url))
            .header("origin", origin)
            .json(&json!({"channel": "c", "data": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(acao(&publish), None, "/v1/publish sends no CORS headers");
        let preflight = http()
            .request(reqwest::Method::OPTIONS, format!("{}/v1/publish", node.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert_eq!(acao(&preflight), None, "no preflight is granted for the backend API");
    }
}

#[tokio::test]
async fn a_refresh_to_narrower_claims_ends_the_subscriptions_they_no_longer_allow() {
    let node = token_node(&[]).await;
    for transport in TRANSPORTS {
        let (kept, dropped) = (format!("secret:kept-{transport}"), format!("secret:dropped-{transport}"));
        let broad = hs256(&claims("u1", 600, &["secret:*"], &[]));
        let mut client = Client::open(&node, transport, &format!("channels={kept},{dropped}&token={broad}")).await;
        let narrow = hs256(&claims("u1", 600, &[kept.as_str()], &[]));
        let ack = client.send(&node, json!({"type": "refresh", "id": "r", "token": narrow})).await;
        assert_eq!(ack["type"], "ack", "{transport}: {ack}");
        // Give the session's feed its notification, then publish to both.
        tokio::time::sleep(Duration::from_millis(300)).await;
        publish_ok(&node.url, &dropped, json!("must not arrive")).await;
        publish_ok(&node.url, &kept, json!("arrives")).await;
        let message = receive_message(&mut client, &node).await;
        assert_eq!(
            (message["channel"].as_str(), &message["data"]),
            (Some(kept.as_str()), &json!("arrives")),
            "{transport}"
        );
        publish_ok(&node.url, &kept, json!("second")).await;
        let next = receive_message(&mut client, &node).await;
        assert_eq!(next["data"], "second", "{transport}: nothing from {dropped} in between");
    }
}
