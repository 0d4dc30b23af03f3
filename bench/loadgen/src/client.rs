//! One simulated subscriber per task, on any of the three transports: it attaches (with a connection token),
//! follows its channel and hands every frame to its `Tracker`. With `resume`, a subscriber whose connection ends
//! reconnects with its session and position (full-jitter backoff, as web/client does) to the next host: that is
//! the reconnect storm. The stickless paths are those of docs/PROTOCOL.md; raw axum serves `/ws` and `/sse`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use hyper::Method;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::frame::{Frame, PollAnswer};
use crate::http::{Conn, Result};
use crate::record::{Latency, Shared, Tracker};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Ws,
    Sse,
    Poll,
}

/// Which server's paths to speak: the gateway, or the raw axum ceiling (examples/raw_axum.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    Stickless,
    Axum,
}

/// What every subscriber of a workload shares.
pub struct Spec {
    pub transport: Transport,
    pub flavor: Flavor,
    /// Subscriber i attaches to `hosts[i % len]`.
    pub hosts: Vec<String>,
    /// With `resume`: where a subscriber reconnects, by turns (the surviving nodes).
    pub resume_hosts: Vec<String>,
    pub resume: bool,
}

/// Reconnect-storm bookkeeping, shared by the subscribers.
pub struct Reconnects {
    /// When the node was killed (us since 1970); resume times are measured from it.
    pub killed_at_us: AtomicU64,
    pub disconnected: AtomicU64,
    pub resumed: AtomicU64,
    pub attempts: AtomicU64,
    pub failed_attempts: AtomicU64,
    /// Resumes that came back with another session (the session was not found).
    pub new_sessions: AtomicU64,
    pub last_resumed_us: AtomicU64,
    hist: Mutex<Histogram<u64>>,
}

impl Reconnects {
    pub fn new() -> Reconnects {
        Reconnects {
            killed_at_us: AtomicU64::new(0),
            disconnected: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            new_sessions: AtomicU64::new(0),
            last_resumed_us: AtomicU64::new(0),
            hist: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")),
        }
    }

    pub fn latency(&self) -> Latency {
        Latency::of(&self.hist.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A subscriber's state across connections.
struct Sub {
    index: usize,
    channel: String,
    token: Option<String>,
    session: Option<String>,
    /// The long-poll position the server last answered.
    position: Option<String>,
    tracker: Tracker,
    welcomed: bool,
    /// Whether the current connection got its welcome (it was attached when it ended).
    attached: bool,
    /// Set when a connection ended after the welcome: the next welcome is a resume.
    lost: bool,
}

/// Runs subscriber `index` until its task is aborted (or, without `resume`, until its connection ends).
pub async fn run(
    index: usize,
    channel: String,
    token: Option<String>,
    spec: Arc<Spec>,
    shared: Arc<Shared>,
    reconnects: Option<Arc<Reconnects>>,
) {
    let mut sub = Sub {
        index,
        channel,
        token,
        session: None,
        position: None,
        tracker: Tracker::default(),
        welcomed: false,
        attached: false,
        lost: false,
    };
    let mut host = spec.hosts[index % spec.hosts.len()].clone();
    let mut failures: u32 = 0;
    let mut seed = (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ crate::clock::now_us();
    loop {
        sub.attached = false;
        let result = match spec.transport {
            Transport::Ws => ws(&spec, &host, &mut sub, &shared, reconnects.as_deref()).await,
            Transport::Sse => sse(&spec, &host, &mut sub, &shared, reconnects.as_deref()).await,
            Transport::Poll => poll(&spec, &host, &mut sub, &shared, reconnects.as_deref()).await,
        };
        shared.closes.fetch_add(1, Relaxed);
        if let Err(err) = &result {
            if !spec.resume {
                shared.error(format!("subscriber {index} on {host}: {err}"));
            }
        }
        if !spec.resume {
            return;
        }
        let Some(rc) = reconnects.as_deref() else { return };
        if sub.attached {
            rc.disconnected.fetch_add(1, Relaxed);
            sub.lost = true;
            failures = 0;
        } else if sub.lost {
            rc.failed_attempts.fetch_add(1, Relaxed);
            failures += 1;
        }
        // Full jitter over an exponential window, as web/client/session.js: 250 ms doubling, at most 5 s.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let window = (250.0 * 2f64.powi(failures.min(5) as i32)).min(5000.0);
        tokio::time::sleep(Duration::from_micros((((seed % 10_000) as f64 / 10_000.0) * window * 1000.0) as u64)).await;
        if !spec.resume_hosts.is_empty() {
            host = spec.resume_hosts[(index + failures as usize) % spec.resume_hosts.len()].clone();
        }
        rc.attempts.fetch_add(1, Relaxed);
    }
}

/// The attach query: channels and token, plus session and position when resuming.
fn attach_query(sub: &Sub, with_position: bool) -> String {
    let mut q = format!("channels={}", sub.channel);
    if let Some(token) = &sub.token {
        q.push_str("&token=");
        q.push_str(token);
    }
    if let Some(session) = &sub.session {
        q.push_str("&session=");
        q.push_str(session);
        if with_position {
            if let Some((epoch, offset)) = &sub.tracker.cursor {
                q.push_str(&format!("&position={}@{epoch}@{offset}", sub.channel));
            }
        }
    }
    q
}

/// Handles one downstream frame; `Err` ends the connection (an error frame that closes, a `reconnect`).
fn on_frame(text: &[u8], sub: &mut Sub, shared: &Shared, rc: Option<&Reconnects>) -> Result<()> {
    let frame: Frame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(err) => {
            shared
                .error(format!("unparsable frame ({err}): {}", String::from_utf8_lossy(&text[..text.len().min(200)])));
            return Ok(());
        }
    };
    match frame.kind {
        "message" => sub.tracker.message(shared, frame.epoch, frame.offset, frame.data),
        "welcome" => on_welcome(frame.session, sub, shared, rc),
        "gap" => {
            shared.gaps.fetch_add(1, Relaxed);
            if let (Some(epoch), Some(offset)) = (frame.epoch, frame.offset) {
                sub.tracker.cursor = Some((epoch.to_owned(), offset));
            }
        }
        "error" => {
            let code = frame.code.unwrap_or_default();
            shared.error(format!("error frame {code} for subscriber {}", sub.index));
            if code == "session_unknown" {
                sub.session = None;
                return Err("session_unknown".into());
            }
        }
        "reconnect" => return Err("the node asked to reconnect".into()),
        _ => {}
    }
    Ok(())
}

fn on_welcome(session: Option<String>, sub: &mut Sub, shared: &Shared, rc: Option<&Reconnects>) {
    sub.attached = true;
    if !sub.welcomed {
        sub.welcomed = true;
        shared.welcomed.fetch_add(1, Relaxed);
    } else if sub.lost {
        sub.lost = false;
        if let Some(rc) = rc {
            let now = crate::clock::now_us();
            rc.resumed.fetch_add(1, Relaxed);
            rc.last_resumed_us.fetch_max(now, Relaxed);
            let killed = rc.killed_at_us.load(Relaxed);
            let _ = rc.hist.lock().unwrap_or_else(|e| e.into_inner()).record(now.saturating_sub(killed).max(1));
            if session.is_some() && session != sub.session {
                rc.new_sessions.fetch_add(1, Relaxed);
            }
        }
    }
    if session.is_some() {
        sub.session = session;
    }
}

async fn ws(spec: &Spec, host: &str, sub: &mut Sub, shared: &Shared, rc: Option<&Reconnects>) -> Result<()> {
    let url = match spec.flavor {
        Flavor::Axum => format!("ws://{host}/ws"),
        Flavor::Stickless => format!("ws://{host}/v1/ws?{}", attach_query(sub, true)),
    };
    // A small read buffer (tungstenite's default is 128 KiB per socket): one process holds 15,000 of these.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
    while let Some(message) = socket.next().await {
        match message? {
            Message::Text(text) => on_frame(text.as_bytes(), sub, shared, rc)?,
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}

async fn sse(spec: &Spec, host: &str, sub: &mut Sub, shared: &Shared, rc: Option<&Reconnects>) -> Result<()> {
    let path = match spec.flavor {
        Flavor::Axum => "/sse".to_owned(),
        Flavor::Stickless => format!("/v1/sse?{}", attach_query(sub, true)),
    };
    let mut conn = Conn::open(host).await?;
    let res = conn.send(Method::GET, &path, None, Bytes::new()).await?;
    if res.status() != 200 {
        let status = res.status();
        let body = res.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(format!("SSE attach answered {status}: {}", String::from_utf8_lossy(&body)).into());
    }
    let mut body = res.into_body();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        buf.extend_from_slice(&data);
        // Events end with a blank line; each of ours has one `data:` line (comments and `id:`/`retry:` skipped).
        let mut start = 0;
        while let Some(end) = find_blank_line(&buf[start..]) {
            let event = &buf[start..start + end];
            for line in event.split(|&b| b == b'\n') {
                if let Some(rest) = line.strip_prefix(b"data:") {
                    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                    on_frame(rest, sub, shared, rc)?;
                }
            }
            start += end + 2;
        }
        buf.drain(..start);
    }
    Ok(())
}

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n")
}

async fn poll(spec: &Spec, host: &str, sub: &mut Sub, shared: &Shared, rc: Option<&Reconnects>) -> Result<()> {
    if spec.flavor == Flavor::Axum {
        return Err("raw axum has no long-polling".into());
    }
    let mut conn = Conn::open(host).await?;
    let mut reopened = false;
    loop {
        // The poll that creates the session carries channels and token; later ones its session and position.
        let path = match (&sub.session, &sub.position) {
            (Some(session), Some(position)) => format!("/v1/poll?session={session}&position={position}"),
            _ => format!("/v1/poll?{}", attach_query(sub, true)),
        };
        let (status, body) = match conn.call(Method::GET, &path, None, Bytes::new()).await {
            Ok(answer) => answer,
            // A keep-alive connection the server (or nginx) closed between polls: open another, once.
            Err(_) if !reopened => {
                reopened = true;
                conn = Conn::open(host).await?;
                continue;
            }
            Err(err) => return Err(err),
        };
        reopened = false;
        if status != 200 {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            if text.contains("session_unknown") {
                sub.session = None;
                sub.position = None;
            }
            return Err(format!("poll answered {status}: {text}").into());
        }
        let answer: PollAnswer = serde_json::from_slice(&body)?;
        shared.polls.fetch_add(1, Relaxed);
        shared.poll_frames.fetch_add(answer.frames.len() as u64, Relaxed);
        if answer.session.is_some() && sub.session.is_none() {
            sub.session = answer.session.clone();
        }
        let welcome = answer.frames.iter().any(|f| f.kind == "welcome");
        if !welcome && sub.lost {
            // A poll attached to the session again on another node: that is the resume.
            on_welcome(answer.session.clone(), sub, shared, rc);
        }
        for frame in answer.frames {
            match frame.kind {
                "message" => sub.tracker.message(shared, frame.epoch, frame.offset, frame.data),
                "welcome" => on_welcome(frame.session, sub, shared, rc),
                "gap" => {
                    shared.gaps.fetch_add(1, Relaxed);
                }
                "error" => shared.error(format!("error frame {} in a poll", frame.code.unwrap_or_default())),
                _ => {}
            }
        }
        if answer.position.is_some() {
            sub.position = answer.position;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::find_blank_line;

    #[test]
    fn an_sse_event_ends_at_the_first_blank_line() {
        assert_eq!(find_blank_line(b": pad\n\nretry: 1000\n\n"), Some(5));
        assert_eq!(find_blank_line(b"data: {\"type\":\"message\"}\n"), None);
    }
}
