//! Server-Sent Events: `GET /v1/sse` streams frames as `text/event-stream`; upstream goes by `POST /v1/send`.
//!
//! Every `message` and `gap` event carries `id: <session>;<position>`, so a browser EventSource that reconnects
//! on its own sends `Last-Event-ID` and resumes the same session even when its URL names none.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;

use crate::{AttachParams, Port, Shared, Transport};

/// The padding comment that opens every stream (`:`, 2048 spaces, a blank line), so buffering proxies flush it at
/// once: one static copy, not 2 KiB allocated per stream.
static PADDING: [u8; 2051] = padding();

pub(crate) async fn attach<P: Port>(
    State(shared): State<Shared<P>>,
    params: AttachParams,
    headers: HeaderMap,
) -> Response {
    let permit = match shared.admit() {
        Ok(permit) => permit,
        Err(rejection) => return rejection.into_response(),
    };
    // The query wins over Last-Event-ID: a client that re-creates its EventSource knows better.
    let mut session_from_header = false;
    let mut attach = params.into_attach(Transport::Sse, true);
    if let Some((session, position)) =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.split_once(';'))
    {
        if attach.session.is_none() {
            attach.session = Some(session.to_owned()).filter(|s| !s.is_empty());
            session_from_header = attach.session.is_some();
        }
        if attach.position.is_none() {
            attach.position = Some(position.to_owned()).filter(|p| !p.is_empty());
        }
    }
    let mut attached = shared.port.attach(attach.clone()).await;
    if session_from_header && matches!(&attached, Err(r) if r.status == StatusCode::NOT_FOUND) {
        // A browser's own reconnect after its session expired: a 404 would end the EventSource for good, so start
        // a new session; its `channels` resume from the position in Last-Event-ID, or get a gap.
        attach.session = None;
        attached = shared.port.attach(attach).await;
    }
    let attached = match attached {
        Ok(attached) => attached,
        Err(rejection) => return rejection.into_response(),
    };
    let heartbeat = shared.config.heartbeat;
    let shutdown = shared.shutdown.clone();
    let (drain, port) = (shared.drain.clone(), shared.port.clone());
    let session = attached.session;
    let mut feed = attached.feed;
    // The welcome carries an id too, so a reconnect before the first message still resumes this session.
    let welcome = event(Some(&format!("{session};{}", attached.position)), &attached.welcome);
    let body = async_stream::stream! {
        let _permit = permit;
        yield Ok::<Bytes, std::convert::Infallible>(Bytes::from_static(&PADDING));
        yield Ok(Bytes::from_static(b"retry: 1000\n\n"));
        yield Ok(welcome);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        // Made once, not per event: each one made and dropped per turn takes the token's lock twice.
        let (drained, shut) = (drain.cancelled(), shutdown.cancelled());
        tokio::pin!(drained, shut);
        loop {
            tokio::select! {
                item = feed.next() => match item {
                    Some(out) => {
                        let id = out.position.map(|p| format!("{session};{p}"));
                        yield Ok(event(id.as_deref(), &out.frame));
                        if out.end.is_some() {
                            break;
                        }
                    }
                    None => break,
                },
                _ = ticks.tick() => yield Ok(Bytes::from_static(b": hb\n\n")),
                _ = &mut drained => {
                    // `retry:` makes a browser's own EventSource wait the drawn delay; the frame tells our client.
                    let (frame, after) = port.reconnect();
                    yield Ok(Bytes::from(format!("retry: {}\n\n", after.as_millis())));
                    yield Ok(event(None, &frame));
                    break;
                }
                _ = &mut shut => break,
            }
        }
    };
    let mut response = (StatusCode::OK, Body::from_stream(body)).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// One event: an optional `id:` line and the frame as `data:` lines. The core sends compact JSON (one line),
/// but a line break would end the field early, so any is split into further `data:` lines, which EventSource
/// joins back with `\n`.
fn event(id: Option<&str>, frame: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(frame.len() + id.map_or(0, |i| i.len() + 5) + 8);
    if let Some(id) = id.filter(|id| !id.contains(['\r', '\n', '\0'])) {
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    for line in frame.split(|b| *b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

const fn padding<const N: usize>() -> [u8; N] {
    let mut out = [b' '; N];
    out[0] = b':';
    out[N - 2] = b'\n';
    out[N - 1] = b'\n';
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_has_id_and_one_data_line() {
        let e = event(Some("s;c@e@3"), br#"{"type":"message"}"#);
        assert_eq!(&e[..], b"id: s;c@e@3\ndata: {\"type\":\"message\"}\n\n");
        assert_eq!(&event(None, b"{}")[..], b"data: {}\n\n");
        assert_eq!(&event(None, b"{\n\"a\":1\r\n}")[..], b"data: {\ndata: \"a\":1\ndata: }\n\n");
        assert_eq!(&PADDING[..2], b": ");
        assert!(PADDING[1..2049].iter().all(|b| *b == b' ') && PADDING.ends_with(b" \n\n"));
    }
}
