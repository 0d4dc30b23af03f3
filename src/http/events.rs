//! An SSE attach that opens a connection is served on the bare socket, not through hyper, so an idle event
//! stream holds no HTTP/1 machinery: hyper keeps an 8 KiB write buffer, an 8 KiB read buffer (to notice the
//! client leaving) and its dispatcher for as long as a response streams, over half of what an idle SSE stream
//! cost (docs/ARCHITECTURE.md, "Memory per connection").
//!
//! The request still goes through the one [`Router`] (every layer, the same handler); only the response is
//! written here: its head, then the body in chunks as the stream yields them, each written whole before the
//! next is asked for (the connection's write deadline cuts a client that stops reading), and a read of a few
//! bytes that notices the client leaving. Anything else (another path, a request with a body, a head that is
//! not plain HTTP/1.1, a later request on a kept-alive connection) goes to hyper with the bytes read so far.

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use axum::Router;
use bytes::BytesMut;
use futures_util::StreamExt;
use hyper::server::conn::http1::Builder;
use stickless_transports::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::serve::{serve_http, Conn};

/// The longest request head read here; a longer one goes to hyper, which answers 431.
const MAX_HEAD: usize = 64 * 1024;
/// The largest non-stream answer written here (a refusal's JSON).
const MAX_ANSWER: usize = 1 << 20;

/// What a connection does after its first request was read: stream events, or be served by hyper. Boxed on its
/// own, so the task of an idle stream holds only what streaming needs, not the room the first request took.
pub(super) type Next = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Reads the connection's first request head and serves it here when it is a plain `GET` of the SSE path; `None`
/// when the connection is done, else what to run next.
pub(super) async fn first_request(
    mut conn: Conn,
    peer: SocketAddr,
    app: Router,
    http: Builder,
    header_timeout: Duration,
    shutdown: CancellationToken,
) -> Option<Next> {
    let request = tokio::select! {
        read = tokio::time::timeout(header_timeout, read_head(&mut conn)) => match read {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) => return Some(Box::pin(serve_http(conn, peer, app, http, shutdown))),
            // The client left, or sent no head in time (hyper would close it the same way).
            Ok(Err(_)) | Err(_) => return None,
        },
        _ = shutdown.cancelled() => return None,
    };
    let mut request = request.map(|()| Body::empty());
    request.extensions_mut().insert(ConnectInfo(peer));
    let Ok(response) = app.oneshot(request).await;
    let streams = response.status() == StatusCode::OK
        && response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streams {
        let _ = answer(conn, response).await;
        return None;
    }
    let (parts, body) = response.into_parts();
    let head = response_head(&Response::from_parts(parts, ()), "transfer-encoding: chunked\r\n");
    conn.write_all(&head).await.ok()?;
    Some(Box::pin(stream(conn, body)))
}

/// Reads the head into the connection's read-ahead: `Some` when it is a plain HTTP/1.1 `GET` of the SSE path
/// without a body, `None` (the bytes left for hyper) as soon as it cannot be.
async fn read_head(conn: &mut Conn) -> io::Result<Option<Request<()>>> {
    let prefix = format!("GET {}", Transport::Sse.path());
    let mut head = BytesMut::with_capacity(super::serve::READ_AHEAD);
    loop {
        if head.len() >= MAX_HEAD {
            break;
        }
        if head.capacity() == head.len() {
            head.reserve(head.len());
        }
        if conn.stream.read_buf(&mut head).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let seen = &head[..head.len().min(prefix.len() + 1)];
        let matches = match seen.split_last() {
            Some((last, start)) if seen.len() > prefix.len() => start == prefix.as_bytes() && b"? ".contains(last),
            _ => prefix.as_bytes().starts_with(seen),
        };
        if !matches {
            break;
        }
        if let Some(end) = end_of_head(&head) {
            let parsed = parse(&head[..end]);
            // Served here, the head is done with (and nothing may follow it on an event stream); else hyper reads
            // it again.
            if parsed.is_none() {
                conn.ahead = Some(head);
            }
            return Ok(parsed);
        }
    }
    conn.ahead = Some(head);
    Ok(None)
}

/// Where the head's last line ends: the `\n` before an empty line (`\r\n` or a bare `\n`, which [`parse`] leaves
/// to hyper).
fn end_of_head(head: &[u8]) -> Option<usize> {
    (0..head.len()).find(|&i| head[i] == b'\n' && matches!(&head[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

/// The request a head describes, when it is simple enough to serve here: `GET <target> HTTP/1.1`, header lines
/// that are `name: value`, and nothing that would make hyper's answer differ (a body, an upgrade, an expectation).
fn parse(head: &[u8]) -> Option<Request<()>> {
    let mut lines = head.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r"));
    let line = lines.next()??;
    let line = std::str::from_utf8(line).ok()?;
    let target = line.strip_prefix("GET ")?.strip_suffix(" HTTP/1.1")?;
    let uri: Uri = target.parse().ok()?;
    let mut request = Request::builder().method(Method::GET).uri(uri).version(Version::HTTP_11).body(()).ok()?;
    for line in lines {
        // A bare `\n` or a folded line: hyper's parser decides what it means.
        let line = line?;
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return None;
        }
        let colon = line.iter().position(|b| *b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
        if [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::UPGRADE, header::EXPECT].contains(&name) {
            return None;
        }
        request.headers_mut().append(name, value);
    }
    Some(request)
}

/// The status line, the response's headers, a `date`, and `extra` (the framing), then the blank line.
fn response_head<B>(response: &Response<B>, extra: &str) -> Vec<u8> {
    let status = response.status();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        format!("HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or("")).as_bytes(),
    );
    for (name, value) in response.headers() {
        if [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION, header::DATE].contains(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!("date: {}\r\n{extra}connection: close\r\n\r\n", http_date(SystemTime::now())).as_bytes(),
    );
    out
}

/// A refusal (or any other whole answer): written with its length, then the connection closes.
async fn answer(mut conn: Conn, response: Response<Body>) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, MAX_ANSWER).await.map_err(io::Error::other)?;
    let head = response_head(&Response::from_parts(parts, ()), &format!("content-length: {}\r\n", body.len()));
    conn.write_all(&head).await?;
    conn.write_all(&body).await?;
    conn.shutdown().await
}

/// The event stream: chunked, each chunk written whole before the next is asked for, until the stream ends or
/// the client leaves. Not an `async fn`, which would keep a second copy of its arguments in its state.
// The point is the state's size, which `async fn` would double.
#[allow(clippy::manual_async_fn)]
fn stream(mut conn: Conn, body: Body) -> impl Future<Output = ()> + Send {
    async move {
        let mut body = body.into_data_stream();
        // A client sends nothing more on an event stream; a read notices it leaving (0 bytes or an error).
        let mut scratch = [0u8; 16];
        loop {
            tokio::select! {
                item = body.next() => match item {
                    Some(Ok(data)) if data.is_empty() => {}
                    Some(Ok(data)) => {
                        if write_chunk(&mut conn, &data).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(_)) => return,
                    None => break,
                },
                read = conn.read(&mut scratch) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
            }
        }
        if conn.write_all(b"0\r\n\r\n").await.is_ok() {
            let _ = conn.shutdown().await;
        }
    }
}

/// One chunk: its size in hex, the data, CRLF, in one vectored write where the socket takes it.
async fn write_chunk(conn: &mut Conn, data: &[u8]) -> io::Result<()> {
    let size = format!("{:x}\r\n", data.len());
    let mut slices = [IoSlice::new(size.as_bytes()), IoSlice::new(data), IoSlice::new(b"\r\n")];
    let mut left = &mut slices[..];
    while !left.is_empty() {
        let n = conn.write_vectored(left).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, n);
    }
    Ok(())
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110's IMF-fixdate).
fn http_date(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdates() {
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn only_plain_gets_are_served_here() {
        let request = parse(b"GET /v1/sse?channels=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: s;p\r").unwrap();
        assert_eq!(request.uri(), "/v1/sse?channels=a");
        assert_eq!(request.headers()["last-event-id"], "s;p");
        assert!(parse(b"GET /v1/sse HTTP/1.0\r\nHost: x\r").is_none(), "HTTP/1.0");
        assert!(parse(b"GET /v1/sse HTTP/1.1\r\nContent-Length: 3\r").is_none(), "a body");
        assert!(parse(b"GET /v1/sse HTTP/1.1\nHost: x").is_none(), "a bare LF");
        assert!(parse(b"GET /v1/sse HTTP/1.1\r\nA: b\r\n c\r").is_none(), "a folded line");
        assert!(parse(b"GET /v1/sse HTTP/1.1\r\nbad name: x\r").is_none(), "a bad header name");
        assert_eq!(end_of_head(b"GET / HTTP/1.1\r\nA: b\r\n\r\n"), Some(21));
        assert_eq!(end_of_head(b"GET / HTTP/1.1\nA: b\n\n"), Some(19));
        assert_eq!(end_of_head(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }
}
