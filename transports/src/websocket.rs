//! WebSocket: `GET /v1/ws`, both directions on one connection, one frame per text message.
//!
//! One task per socket selects over the client's messages, the session feed and the heartbeat. Sending waits
//! for the socket, so a slow reader slows only its own feed, which falls back to history when it lags.

use std::future::Future;

use axum::extract::ws::{close_code as close, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::OwnedSemaphorePermit;

use crate::{AttachParams, Attached, Port, Refusal, Rejection, Shared, Transport};

/// What each socket keeps for reading frames (tungstenite's `read_buffer_size`): most client frames fit.
const READ_BUFFER: usize = 256;

pub(crate) async fn attach<P: Port>(
    State(shared): State<Shared<P>>,
    params: AttachParams,
    upgrade: WebSocketUpgrade,
) -> Response {
    let permit = match shared.admit() {
        Ok(permit) => permit,
        Err(rejection) => return rejection.into_response(),
    };
    // A browser cannot read the body of a refused upgrade, so a session fault is told inside the socket.
    let attached = match shared.port.attach(params.into_attach(Transport::WebSocket, false)).await {
        Ok(attached) => Ok(attached),
        Err(rejection) if rejection.status == StatusCode::NOT_FOUND => Err(rejection),
        Err(rejection) => return rejection.into_response(),
    };
    let config = &shared.config;
    let upgrade = upgrade
        // tungstenite's 128 KiB default per socket would dominate idle memory, and even 4 KiB held by every idle
        // socket is most of what one costs: the server's connection reads ahead for a frame larger than this
        // (holding that only while bytes wait), so a small buffer costs no extra reads.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        // Every send is awaited, but pongs to a client's pings are queued as they are read: a client that pings
        // and never reads would grow this without a cap. Over it, the read fails and the socket is cut.
        .max_write_buffer_size(config.send_buffer.max(2 * config.max_message_bytes + 64 * 1024))
        .max_message_size(config.max_message_bytes)
        .max_frame_size(config.max_message_bytes);
    let tasks = shared.tasks.clone();
    // The socket runs in a task of its own, made here: axum's upgrade task (which holds its own copy of the socket
    // and of everything moved into it) then ends, and so does every layer of async code around this one, each of
    // which would keep its own copy of what it moves on in every idle socket's task.
    upgrade.on_upgrade(move |socket| {
        match attached {
            Ok(Attached { session, welcome, feed, .. }) => {
                let future = run(shared, socket, session, welcome, feed, permit);
                tasks.spawn(future);
            }
            Err(rejection) => {
                tasks.spawn(refuse(socket, rejection));
            }
        }
        std::future::ready(())
    })
}

/// The socket's loop. Not an `async fn`: one keeps a second copy of every argument (the socket is 368 bytes) in
/// its state, for the connection's life; an `async move` block uses what it captured in place.
// The point is the state's size, which `async fn` would double.
#[allow(clippy::manual_async_fn)]
fn run<P: Port>(
    shared: Shared<P>,
    mut socket: WebSocket,
    session: String,
    welcome: Bytes,
    mut feed: P::Feed,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    async move {
        let _permit = permit;
        let limit = shared.config.write_timeout;
        if send(&mut socket, text(welcome), limit).await.is_err() {
            return;
        }
        let heartbeat = shared.config.heartbeat;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        // Made once, not per frame: each one made and dropped per turn takes the token's lock twice.
        let (drained, shut) = (shared.drain.cancelled(), shared.shutdown.cancelled());
        tokio::pin!(drained, shut);
        let closing = loop {
            let sent = tokio::select! {
                item = feed.next() => match item {
                    Some(out) => match (send(&mut socket, text(out.frame), limit).await, out.end) {
                        // The feed's last frame said why it ends (the session is gone, its token expired).
                        (Ok(()), Some(end)) => break Some((end.close_code, end.reason)),
                        (sent, _) => sent,
                    },
                    None => break Some((close::POLICY, "the session's feed ended")),
                },
                received = socket.recv() => match received {
                    Some(Ok(Message::Text(frame))) => {
                        // Boxed: held inline, the core's future would stay in every idle socket's task.
                        let reply = Box::pin(shared.port.upstream(&session, frame.as_bytes())).await;
                        send(&mut socket, text(reply), limit).await
                    }
                    Some(Ok(Message::Binary(_))) => send(&mut socket, text(shared.port.refuse(Refusal::BinaryMessage).frame), limit).await,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                    Some(Ok(Message::Close(_))) => {
                        // The close handshake: tungstenite has queued its answer (the client's code echoed, or 1002
                        // for a code no endpoint may send); send it before the socket is dropped.
                        let _ = tokio::time::timeout(limit, futures_util::SinkExt::flush(&mut socket)).await;
                        break None;
                    }
                    None => break None,
                    Some(Err(err)) => match close_for(err) {
                        Ok(closing) => break closing,
                        // Pongs to a client's pings that it does not read: over the send buffer.
                        Err(cut) => Err(cut),
                    },
                },
                _ = ticks.tick() => match send(&mut socket, Message::Ping(Bytes::new()), limit).await {
                    // Browsers cannot see pings from JavaScript, so a frame tells the client's silence timer too.
                    Ok(()) => send(&mut socket, text(shared.port.heartbeat()), limit).await,
                    Err(cut) => Err(cut),
                },
                _ = &mut drained => {
                    // 1012 "service restart": the final frame says when to come back.
                    let (frame, _) = shared.port.reconnect();
                    let _ = send(&mut socket, text(frame), limit).await;
                    break Some((close::RESTART, "draining"));
                }
                _ = &mut shut => break Some((close::AWAY, "server shutting down")),
            };
            if let Err(cut) = sent {
                if cut == Cut::Slow {
                    shared.port.slow_consumer_cut();
                }
                break None;
            }
        };
        if let Some((code, reason)) = closing {
            let _ = send(&mut socket, Message::Close(Some(CloseFrame { code, reason: reason.into() })), limit).await;
        }
    }
}

/// Why a write did not go through: the client is gone, or it does not read (its send buffer is full, or one
/// write waited `write_timeout`). Either way the socket is dropped: no close frame can be written to a client
/// that does not read. It resumes from its cursor when it reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The connection failed or was closed (by the client, or by the server's own connection deadline, which
    /// counts its cut itself).
    Gone,
    /// The client does not read: one write waited `write_timeout`, or the send buffer is over its cap.
    Slow,
}

/// Not an `async fn`, for the same reason as [`run`]: its state is part of every socket's.
fn send(
    socket: &mut WebSocket,
    message: Message,
    limit: std::time::Duration,
) -> impl Future<Output = Result<(), Cut>> + Send + '_ {
    tokio::time::timeout(limit, socket.send(message)).map(|sent| match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(cut_by(err)),
        Err(_) => Err(Cut::Slow),
    })
}

fn cut_by(err: axum::Error) -> Cut {
    match err.into_inner().downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::WriteBufferFull(_)) => Cut::Slow,
        _ => Cut::Gone,
    }
}

/// Tells the client why its session cannot be served, then closes with the refusal's close code.
async fn refuse(mut socket: WebSocket, rejection: Rejection) {
    let _ = socket.send(text(rejection.frame)).await;
    let close = CloseFrame { code: rejection.close_code, reason: Utf8Bytes::from_static(rejection.code) };
    let _ = socket.send(Message::Close(Some(close))).await;
}

/// Maps a read error to the close code the client should see (`None`: just drop the socket), or to a cut when
/// the client's unread pongs filled the send buffer.
fn close_for(err: axum::Error) -> Result<Option<(u16, &'static str)>, Cut> {
    Ok(match err.into_inner().downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Some((close::SIZE, "message over max_message_bytes")),
        Some(tungstenite::Error::Utf8(_)) => Some((close::INVALID, "text message is not valid UTF-8")),
        // Bad framing: unmasked, reserved bits or opcodes, broken fragmentation, an oversized or fragmented
        // control frame, a malformed close frame.
        Some(tungstenite::Error::Protocol(_)) => Some((close::PROTOCOL, "protocol violation")),
        Some(tungstenite::Error::WriteBufferFull(_)) => return Err(Cut::Slow),
        _ => None,
    })
}

fn text(frame: Bytes) -> Message {
    // Frames come from the core's protocol module, which only writes UTF-8 (serde_json); the check is a scan,
    // not a copy, and a frame that failed it would be a bug there: the connection ends rather than send it.
    match Utf8Bytes::try_from(frame) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Close(Some(CloseFrame { code: close::ERROR, reason: "frame was not UTF-8".into() })),
    }
}
