//! The smallest fan-out on our HTTP stack: the ceiling `bench/run.sh` compares stickless against.
//!
//! `GET /ws` upgrades and follows one `tokio::sync::broadcast`; `GET /sse` streams the same frames as
//! `text/event-stream` events (`data: <frame>`); `POST /publish {"channel","data"}` sends
//! `{"type":"message","channel":..,"data":..}` to every socket and stream. No sessions, no history, no resume, no
//! channels (every client gets every message): only axum + tungstenite + a broadcast, with the same WebSocket
//! buffer settings as stickless (4 KiB read buffer, no write buffering), so the difference is stickless' own work.
//! `GET /hello` answers `hello world`: the cheapest request-response, the bench's ceiling for a long-poll.
//! `--nodelay` sets TCP_NODELAY on accepted sockets (axum::serve does not by default, and neither does stickless),
//! so the bench can show what Nagle's algorithm costs a stream of small WebSocket frames.
//!
//! ```sh
//! cargo run --release --example raw_axum -- --listen 127.0.0.1:9000 [--nodelay]
//! websocat ws://127.0.0.1:9000/ws        # first frame: {"type":"welcome"}
//! curl -N 127.0.0.1:9000/sse               # data: {"type":"welcome"}, then data: <frame> per publish
//! curl -XPOST 127.0.0.1:9000/publish -d '{"channel":"bench","data":{"n":1}}'
//! ```

use axum::body::Bytes;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::serve::ListenerExt;
use axum::Router;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

/// Larger than any burst the bench sends, so a slow socket is never dropped behind (it would lose messages).
const CAPACITY: usize = 16_384;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:9000".to_owned();
    let mut nodelay = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            "--nodelay" => nodelay = true,
            other => panic!("unknown argument {other} (usage: raw_axum [--listen ADDR] [--nodelay])"),
        }
    }
    let (tx, _) = broadcast::channel::<Utf8Bytes>(CAPACITY);
    let app = Router::new()
        .route("/ws", any(ws))
        .route("/sse", get(sse))
        .route("/hello", get(|| async { "hello world" }))
        .route("/publish", post(publish))
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("raw_axum listening on {} (TCP_NODELAY {})", listener.local_addr()?, if nodelay { "on" } else { "off" });
    if nodelay {
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await
    } else {
        axum::serve(listener, app).await
    }
}

async fn ws(State(tx): State<broadcast::Sender<Utf8Bytes>>, upgrade: WebSocketUpgrade) -> Response {
    // Subscribe before the upgrade completes: the welcome frame then means "live from here".
    let rx = tx.subscribe();
    upgrade.read_buffer_size(4096).write_buffer_size(0).on_upgrade(move |socket| follow(socket, rx))
}

async fn follow(mut socket: WebSocket, mut rx: broadcast::Receiver<Utf8Bytes>) {
    if socket.send(Message::Text(Utf8Bytes::from_static(r#"{"type":"welcome"}"#))).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                Ok(frame) => {
                    if socket.send(Message::Text(frame)).await.is_err() {
                        return;
                    }
                }
                // A lagged socket loses messages here (no history): the bench counts what arrives.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            received = socket.recv() => match received {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn sse(State(tx): State<broadcast::Sender<Utf8Bytes>>) -> Response {
    let welcome = futures_util::stream::once(async {
        Ok::<_, std::convert::Infallible>(Bytes::from_static(b"data: {\"type\":\"welcome\"}\n\n"))
    });
    // A lagged stream skips what it missed (no history), as a lagged socket does.
    let frames = BroadcastStream::new(tx.subscribe()).filter_map(|message| async move {
        match message {
            Ok(frame) => Some(Ok(Bytes::from(format!("data: {}\n\n", frame.as_str())))),
            Err(BroadcastStreamRecvError::Lagged(_)) => None,
        }
    });
    let headers = [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")];
    (headers, axum::body::Body::from_stream(welcome.chain(frames))).into_response()
}

async fn publish(State(tx): State<broadcast::Sender<Utf8Bytes>>, body: Bytes) -> Response {
    let parsed: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(err) => return (StatusCode::BAD_REQUEST, err.to_string()).into_response(),
    };
    let (Some(channel), Some(data)) = (parsed.get("channel"), parsed.get("data")) else {
        return (StatusCode::BAD_REQUEST, "expected {channel, data}").into_response();
    };
    let frame = serde_json::json!({ "type": "message", "channel": channel, "data": data }).to_string();
    // Encoded once, shared by every socket (Utf8Bytes is reference-counted).
    let receivers = tx.send(Utf8Bytes::from(frame)).unwrap_or(0);
    ([(header::CONTENT_TYPE, "application/json")], format!(r#"{{"receivers":{receivers}}}"#)).into_response()
}
