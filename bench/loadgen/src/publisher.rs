//! The backend publisher: `POST /v1/publish` (raw axum: `POST /publish`) over a few keep-alive connections,
//! either at a fixed rate (fan-out, storm) or as fast as its connections allow (the publish API workload, one
//! message or a batch per request). Every message's data is `{"r":round,"seq":n,"ts":us}` (frame::payload_json).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use serde::Serialize;

use crate::client::Flavor;
use crate::frame::payload_json;
use crate::http::Conn;
use crate::record::Latency;

pub struct Target {
    pub hosts: Vec<String>,
    pub flavor: Flavor,
    pub api_key: Option<String>,
}

impl Target {
    fn path(&self) -> &'static str {
        match self.flavor {
            Flavor::Stickless => "/v1/publish",
            Flavor::Axum => "/publish",
        }
    }
}

/// What a publisher did.
#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub messages: AtomicU64,
    pub failed: AtomicU64,
    pub first_send_us: AtomicU64,
    pub last_ack_us: AtomicU64,
    hist: Mutex<Option<Histogram<u64>>>,
    first_error: Mutex<Option<String>>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub requests: u64,
    pub messages: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// Request round trip (send to answer) percentiles.
    pub request_latency: Latency,
}

impl Stats {
    fn record(&self, started: Instant, messages: u64, ok: Result<(), String>) {
        self.requests.fetch_add(1, Relaxed);
        match ok {
            Ok(()) => {
                self.messages.fetch_add(messages, Relaxed);
            }
            Err(err) => {
                self.failed.fetch_add(messages, Relaxed);
                let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
                if first.is_none() {
                    *first = Some(err);
                }
            }
        }
        self.last_ack_us.fetch_max(crate::clock::now_us(), Relaxed);
        let mut h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        let h = h.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")
        });
        let _ = h.record((started.elapsed().as_micros() as u64).max(1));
    }

    pub fn report(&self) -> Report {
        let h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        let empty = Histogram::new(3).expect("static histogram precision is valid");
        Report {
            requests: self.requests.load(Relaxed),
            messages: self.messages.load(Relaxed),
            failed: self.failed.load(Relaxed),
            first_error: self.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            request_latency: Latency::of(h.as_ref().unwrap_or(&empty)),
        }
    }
}

/// Sends one request of `bodies` messages (a single publish, or a batch) and checks the answer.
async fn send(conn: &mut Option<Conn>, host: &str, target: &Target, body: String, messages: u64) -> Result<(), String> {
    if conn.is_none() {
        *conn = Some(Conn::open(host).await.map_err(|e| format!("connect {host}: {e}"))?);
    }
    let c = conn.as_mut().expect("opened above");
    match c.call(Method::POST, target.path(), target.api_key.as_deref(), Bytes::from(body)).await {
        Ok((200, answer)) => {
            // A batch answers per message; a failed one is {"error":{...}}.
            if messages > 1 && answer.windows(8).any(|w| w == b"\"error\":") {
                return Err(format!(
                    "a batch item failed: {}",
                    String::from_utf8_lossy(&answer[..answer.len().min(300)])
                ));
            }
            Ok(())
        }
        Ok((status, answer)) => {
            Err(format!("HTTP {status} from {host}: {}", String::from_utf8_lossy(&answer[..answer.len().min(300)])))
        }
        Err(err) => {
            *conn = None;
            Err(format!("{host}: {err}"))
        }
    }
}

fn single_body(channel: &str, r: u64, seq: u64) -> String {
    format!(r#"{{"channel":"{channel}","data":{}}}"#, payload_json(r, seq))
}

/// Publishes `n` messages of round `r` to `channel` at `rate` per second, spread over `slots` connections (and
/// over the target's hosts, by turns). Returns once every publish is answered (or `deadline` passed); `stop` ends
/// the sending early.
#[allow(clippy::too_many_arguments)]
pub async fn fixed_rate(
    target: Arc<Target>,
    channel: &str,
    r: u64,
    n: u64,
    rate: f64,
    slots: usize,
    deadline: Duration,
    stop: Option<Arc<AtomicBool>>,
) -> Arc<Stats> {
    let stats = Arc::new(Stats::default());
    let (tx, rx) = tokio::sync::mpsc::channel::<u64>(slots * 4);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut tasks = Vec::new();
    for slot in 0..slots {
        let (rx, stats, target, channel) = (rx.clone(), stats.clone(), target.clone(), channel.to_owned());
        let host = target.hosts[slot % target.hosts.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            loop {
                let Some(seq) = rx.lock().await.recv().await else { return };
                let started = Instant::now();
                let ok = send(&mut conn, &host, &target, single_body(&channel, r, seq), 1).await;
                stats.record(started, 1, ok);
            }
        }));
    }
    let start = tokio::time::Instant::now();
    stats.first_send_us.store(crate::clock::now_us(), Relaxed);
    for seq in 0..n {
        tokio::time::sleep_until(start + Duration::from_secs_f64(seq as f64 / rate)).await;
        if stop.as_ref().is_some_and(|s| s.load(Relaxed)) || tx.send(seq).await.is_err() {
            break;
        }
    }
    drop(tx);
    let all = futures_util::future::join_all(tasks);
    let _ = tokio::time::timeout(deadline, all).await;
    stats
}

/// How the publish API workload sends: one message per request, or `batch` messages per request.
pub struct MaxRate {
    pub concurrency: usize,
    pub batch: u64,
    /// Messages go to `bench:<g % channels>` (or `bench` when 1), with `seq` = g / channels per channel.
    pub channels: u64,
    pub duration: Duration,
}

pub fn channel_name(channels: u64, g: u64) -> String {
    if channels == 1 {
        "bench".to_owned()
    } else {
        format!("bench:{}", g % channels)
    }
}

/// Publishes as fast as `concurrency` requests in flight allow, until `duration` has passed. Returns the stats and
/// how many messages were claimed (every claimed message was sent and answered, or counted as failed).
pub async fn max_rate(target: Arc<Target>, r: u64, how: MaxRate) -> (Arc<Stats>, u64) {
    let stats = Arc::new(Stats::default());
    let next = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + how.duration;
    stats.first_send_us.store(crate::clock::now_us(), Relaxed);
    let how = Arc::new(how);
    let mut tasks = Vec::new();
    for slot in 0..how.concurrency {
        let (stats, target, next, how) = (stats.clone(), target.clone(), next.clone(), how.clone());
        let host = target.hosts[slot % target.hosts.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            while Instant::now() < stop {
                let first = next.fetch_add(how.batch, Relaxed);
                let body = if how.batch == 1 {
                    single_body(&channel_name(how.channels, first), r, first / how.channels)
                } else {
                    let items: Vec<String> = (first..first + how.batch)
                        .map(|g| {
                            format!(
                                r#"{{"channel":"{}","data":{}}}"#,
                                channel_name(how.channels, g),
                                payload_json(r, g / how.channels)
                            )
                        })
                        .collect();
                    format!(r#"{{"messages":[{}]}}"#, items.join(","))
                };
                let started = Instant::now();
                let ok = send(&mut conn, &host, &target, body, how.batch).await;
                stats.record(started, how.batch, ok);
            }
        }));
    }
    futures_util::future::join_all(tasks).await;
    let claimed = next.load(Relaxed);
    (stats, claimed)
}
