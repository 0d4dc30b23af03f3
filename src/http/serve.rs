//! Serving a node on a TCP listener as an internet-facing server must: a cap on open TCP connections per node
//! and per client address (idle keep-alive sockets included), a deadline for each request's headers, a cut for
//! a client that stops reading, and the drain on SIGTERM.
//!
//! `axum::serve` has none of the caps or deadlines (hyper's header timeout needs a timer it does not give), so
//! this is its accept loop with them added; requests then go through the same [`Router`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use bytes::BytesMut;
use hyper_util::rt::{TokioIo, TokioTimer};
use stickless_transports::Lifecycle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::events;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::protocol::{error_body, ErrorCode};
use crate::settings::Settings;

/// What [`serve`] needs besides the router: its deadlines and caps, and where refusals are counted.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// How long a client may take to send a request's headers, counted from when the server waits for them:
    /// so also how long a keep-alive connection may sit idle between requests.
    pub header_timeout: Duration,
    /// How long one write may wait for the client to read; past it the connection is cut.
    pub write_timeout: Duration,
    /// The most bytes hyper queues for one connection's response (an SSE stream to a client that reads slowly).
    pub send_buffer: usize,
    /// The most TCP connections open at once on this node.
    pub max_tcp_connections: usize,
    /// Each client is told to reconnect after a random delay over this window.
    pub drain_window: Duration,
    /// The process returns within this of the signal.
    pub drain_timeout: Duration,
    /// TCP_NODELAY on accepted connections.
    pub tcp_nodelay: bool,
}

impl ServeSettings {
    /// The node's settings for serving it.
    pub fn of(settings: &Settings) -> ServeSettings {
        ServeSettings {
            header_timeout: settings.header_timeout,
            write_timeout: settings.write_timeout,
            send_buffer: settings.send_buffer_bytes,
            max_tcp_connections: settings.max_tcp_connections.unwrap_or_else(descriptor_budget),
            drain_window: settings.drain_window,
            drain_timeout: settings.drain_timeout,
            tcp_nodelay: settings.tcp_nodelay,
        }
    }
}

/// Serves `app` until `lifecycle.drain` (the binary cancels it on SIGINT/SIGTERM), then drains: `/readyz` turns 503, new attaches are
/// refused, every connection is told when to reconnect and ends; then the server stops accepting, lets in-flight
/// requests finish, and this returns within `drain_timeout` of the signal.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    lifecycle: Lifecycle,
    settings: ServeSettings,
    (limits, metrics): (Limits, Metrics),
) -> io::Result<()> {
    let (drain_window, drain_timeout) = (settings.drain_window, settings.drain_timeout);
    let window = drain_window.min(drain_timeout / 2);
    spawn_drain(lifecycle.clone(), window, drain_timeout);
    let gate = Gate::new(settings.max_tcp_connections, limits, metrics);
    let mut http = hyper::server::conn::http1::Builder::new();
    // The write queue may hold `send_buffer` for a slow reader, but a request head never more than 64 KiB (nginx
    // accepts 32 KiB by default): a client sending huge headers slowly costs little while it lasts.
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(settings.send_buffer.max(8192))
        .max_header_size(64 * 1024);
    let connections = TaskTracker::new();
    let shutdown = lifecycle.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors (or a connection reset before it was accepted): wait, do not spin.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let ticket = match gate.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                refuse(stream, refusal);
                continue;
            }
        };
        if settings.tcp_nodelay {
            let _ = stream.set_nodelay(true);
        }
        // Boxed apart from the task: once read, the first request's room is freed, and an idle event stream's task
        // holds only its own state (see events.rs).
        let first = Box::pin(events::first_request(
            Conn::new(stream, settings.write_timeout, ticket),
            peer,
            app.clone(),
            http.clone(),
            settings.header_timeout,
            shutdown.clone(),
        ));
        connections.spawn(async move {
            if let Some(next) = first.await {
                next.await;
            }
        });
    }
    drop(listener);
    connections.close();
    // The drain's timeout counts from the signal: what the window took is not given again.
    let left = drain_timeout.saturating_sub(window);
    if tokio::time::timeout(left, connections.wait()).await.is_err() {
        tracing::warn!("drain timeout: exiting with requests still in flight");
    }
    lifecycle.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5).min(drain_timeout), lifecycle.tasks.wait()).await;
    Ok(())
}

/// Serves a connection through hyper (every request but an SSE attach that opens a connection) until it closes.
pub(super) async fn serve_http(
    conn: Conn,
    peer: SocketAddr,
    app: Router,
    http: hyper::server::conn::http1::Builder,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request.map(axum::body::Body::new))
    });
    let connection = http.serve_connection(TokioIo::new(conn), service).with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = shutdown.cancelled() => {}
    }
    // Finish the request in flight, then close; an idle keep-alive connection closes at once.
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// On `lifecycle.drain`: keeps answering for the window, then shuts down.
fn spawn_drain(lifecycle: Lifecycle, window: Duration, drain_timeout: Duration) {
    let (drain, shutdown) = (lifecycle.drain, lifecycle.shutdown);
    tokio::spawn(async move {
        tokio::select! {
            _ = drain.cancelled() => {}
            _ = shutdown.cancelled() => return,
        }
        tracing::info!("draining: every client is told when to reconnect; exiting within {drain_timeout:?}");
        // Told connections end at once. The node keeps answering for the drain window (at most half the drain
        // timeout): load balancers see /readyz 503 and clients that still arrive get 503 `draining` with when to
        // come back, rather than a refused connection. Then it stops accepting and finishes what is in flight.
        tokio::time::sleep(window).await;
        shutdown.cancel();
    });
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Counts open TCP connections, per node and per client address, and admits a new one only under both caps.
/// Trusted proxies are not capped per address: their connections carry many clients (counted, each by its own
/// address, by the per-IP session limits).
#[derive(Clone)]
struct Gate(Arc<GateInner>);

struct GateInner {
    max: usize,
    per_ip: usize,
    open: Mutex<Open>,
    limits: Limits,
    metrics: Metrics,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

impl Gate {
    fn new(max: usize, limits: Limits, metrics: Metrics) -> Gate {
        let per_ip = limits.settings().connections_per_ip as usize;
        metrics.set_tcp_connections_max(max);
        Gate(Arc::new(GateInner { max, per_ip, open: Mutex::default(), limits, metrics }))
    }

    fn admit(&self, ip: IpAddr) -> Result<Ticket, TcpRefusal> {
        let ip = ip.to_canonical();
        let capped = self.0.per_ip > 0 && !self.0.limits.is_trusted_proxy(ip);
        let mut open = self.0.open.lock().unwrap_or_else(|e| e.into_inner());
        let refusal = if open.total >= self.0.max {
            Some(TcpRefusal::Node)
        } else if capped && open.by_ip.get(&ip).copied().unwrap_or(0) >= self.0.per_ip {
            Some(TcpRefusal::PerIp)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            drop(open);
            self.0.limits.refused_connection(refusal == TcpRefusal::PerIp);
            self.0.metrics.refused(refusal.code().as_str());
            return Err(refusal);
        }
        open.total += 1;
        self.0.metrics.tcp_connection(true);
        if capped {
            *open.by_ip.entry(ip).or_default() += 1;
        }
        Ok(Ticket { gate: self.clone(), ip: capped.then_some(ip) })
    }
}

/// Why a TCP connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcpRefusal {
    /// The node holds `max_tcp_connections`.
    Node,
    /// The client's address holds `connections_per_ip`.
    PerIp,
}

impl TcpRefusal {
    fn code(self) -> ErrorCode {
        match self {
            TcpRefusal::Node => ErrorCode::OverCapacity,
            TcpRefusal::PerIp => ErrorCode::RateLimited,
        }
    }

    fn message(self) -> &'static str {
        match self {
            TcpRefusal::Node => "this node holds as many connections as it may (max_tcp_connections)",
            TcpRefusal::PerIp => "too many connections from this address (limits.connections_per_ip)",
        }
    }
}

/// One admitted connection's place under the caps, given back when the connection (or the WebSocket it was
/// upgraded to) is dropped.
struct Ticket {
    gate: Gate,
    ip: Option<IpAddr>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self.gate.0.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        self.gate.0.metrics.tcp_connection(false);
        if let Some(ip) = self.ip {
            if let Some(n) = open.by_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.by_ip.remove(&ip);
                }
            }
        }
    }
}

/// Answers a connection over a cap with a JSON error and closes it, without reading its request. The answer fits
/// the empty send buffer of a new socket, so the one non-blocking write sends it whole.
fn refuse(stream: TcpStream, refusal: TcpRefusal) {
    let code = refusal.code();
    let body = error_body(code, refusal.message());
    let status = axum::http::StatusCode::from_u16(code.status()).unwrap_or(axum::http::StatusCode::SERVICE_UNAVAILABLE);
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\n\
         connection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let answer = [head.as_bytes(), &body].concat();
    let _ = stream.try_write(&answer);
    // Read what the client already sent, so closing does not reset the connection before it reads the answer.
    let mut discard = [0u8; 4096];
    while matches!(stream.try_read(&mut discard), Ok(n) if n > 0) {}
}

/// A connection's socket, cut when one write waits longer than the write timeout for the client to read. The
/// deadline runs only while a write is pending (the kernel's send buffer full), from the first pending write
/// after the last one that made progress: a client that reads, however slowly, is not cut, one that stopped is.
/// It holds the connection's [`Ticket`], so an upgraded WebSocket keeps counting under the caps.
///
/// A reader with a small buffer (a WebSocket's, which every idle socket holds) gets its bytes through a read-ahead
/// buffer that exists only while bytes wait in it: one read takes what arrived, however small the reader's
/// buffer, and an idle connection holds nothing.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    write_timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    /// Bytes read and not yet taken: read ahead, or a request head read before hyper was given the connection.
    pub(super) ahead: Option<BytesMut>,
    ticket: Ticket,
}

/// Reads into a buffer at least this large go straight to the socket; smaller ones read ahead this much.
pub(super) const READ_AHEAD: usize = 8192;

impl Conn {
    fn new(stream: TcpStream, write_timeout: Duration, ticket: Ticket) -> Conn {
        Conn { stream, write_timeout, stalled: None, ahead: None, ticket }
    }

    /// Hands `buf` what the read-ahead holds, or reads ahead once the socket is readable.
    fn read_ahead(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.ahead.is_none() {
            loop {
                std::task::ready!(self.stream.poll_read_ready(cx))?;
                let mut ahead = BytesMut::with_capacity(READ_AHEAD);
                match self.stream.try_read_buf(&mut ahead) {
                    // End of stream: `buf` stays empty.
                    Ok(0) => return Poll::Ready(Ok(())),
                    Ok(_) => {
                        self.ahead = Some(ahead);
                        break;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(err) => return Poll::Ready(Err(err)),
                }
            }
        }
        if let Some(ahead) = &mut self.ahead {
            let n = ahead.len().min(buf.remaining());
            buf.put_slice(&ahead[..n]);
            bytes::Buf::advance(ahead, n);
            if ahead.is_empty() {
                self.ahead = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// After a write: progress clears the deadline; a pending write starts it or, once it passed, fails.
    fn deadline<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let timeout = self.write_timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err({
                self.ticket.gate.0.metrics.slow_consumer_cut();
                io::Error::new(io::ErrorKind::TimedOut, format!("the client read nothing for {timeout:?}"))
            })),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.ahead.is_none() && buf.remaining() >= READ_AHEAD {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        self.read_ahead(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.deadline(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.deadline(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        self.deadline(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The most TCP connections this process can hold: its open-file limit, raised to the hard limit first (as
/// nginx's `worker_rlimit_nofile` and Go's runtime do), less descriptors kept for Redis, hooks and files.
pub fn descriptor_budget() -> usize {
    const KEPT: u64 = 128;
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft))
        .unwrap_or(1024);
    limit.saturating_sub(KEPT).clamp(64, 1 << 24) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_tcp_cap_is_the_raised_open_file_limit_less_128() {
        let budget = descriptor_budget() as u64;
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        assert_eq!(soft, hard, "the soft limit was raised to the hard one");
        assert_eq!(budget, soft.saturating_sub(128).clamp(64, 1 << 24));
    }
}
