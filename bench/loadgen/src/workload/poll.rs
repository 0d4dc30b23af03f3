//! `poll`: request-response throughput of long-polling, against a hello world through the same proxy.
//! `--mode waiting`: K loops each poll a session whose position is behind one stored message, so every poll finds
//! data waiting and answers at once (the cost of one poll, with no waiting in it). `--mode hello`: K loops of
//! `GET /hello` (examples/raw_axum.rs), the same request-response with no work behind it. Reports polls/s,
//! request latency, the servers' CPU per poll and, with --redis, Redis commands and round trips per poll.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use serde_json::json;

use super::{log, redis_diff, redis_snapshot, Common};
use crate::http::{authority, Conn};
use crate::procstat::CpuWindow;
use crate::record::Latency;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Waiting,
    Hello,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum, default_value = "waiting")]
    pub mode: Mode,
    /// Request loops (each one keep-alive connection, one request at a time).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds measured (after one second of warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

struct Counters {
    requests: AtomicU64,
    failed: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
}

pub async fn run(args: Args) {
    let c = &args.common;
    let hosts = c.authorities();
    let mut path_of: Vec<String> = Vec::new();
    if args.mode == Mode::Waiting {
        // One stored message; every poll's position is just before it.
        let target = c.publish_target();
        let mut conn = match Conn::open(&target.hosts[0]).await {
            Ok(conn) => conn,
            Err(err) => return log(format!("poll: cannot reach the publisher host: {err}")),
        };
        let body = format!(r#"{{"channel":"bench","data":{}}}"#, crate::frame::payload_json(0, 0));
        let epoch = match conn.call(Method::POST, "/v1/publish", target.api_key.as_deref(), Bytes::from(body)).await {
            Ok((200, answer)) => serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v["epoch"].as_str().map(str::to_owned)),
            other => {
                return log(format!(
                    "poll: the publish failed: {:?}",
                    other.map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
                ))
            }
        };
        let Some(epoch) = epoch else { return log("poll: the publish answer had no epoch") };
        let minter = c.minter();
        for i in 0..args.concurrency {
            // Each loop creates its session with a first poll (channels + token), then polls it from offset 0.
            let host = &hosts[i % hosts.len()];
            let token = minter.as_ref().map(|m| format!("&token={}", m.token(i))).unwrap_or_default();
            let Ok(mut conn) = Conn::open(host).await else { return log("poll: connect failed") };
            let answer = conn.call(Method::GET, &format!("/v1/poll?channels=bench{token}"), None, Bytes::new()).await;
            let session = answer
                .ok()
                .and_then(|(_, b)| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["session"].as_str().map(str::to_owned));
            let Some(session) = session else { return log("poll: the first poll created no session") };
            path_of.push(format!("/v1/poll?session={session}&position=bench@{epoch}@0"));
        }
    } else {
        path_of = vec!["/hello".to_owned(); args.concurrency];
    }

    let counters = Arc::new(Counters {
        requests: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        hist: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")),
        first_error: Mutex::new(None),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, path) in path_of.into_iter().enumerate() {
        let (host, counters, stop) = (hosts[i % hosts.len()].clone(), counters.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<Conn> = None;
            let mut fresh = false;
            while !stop.load(Relaxed) {
                if conn.is_none() {
                    conn = Conn::open(&host).await.ok();
                    fresh = true;
                }
                let Some(c) = conn.as_mut() else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let started = Instant::now();
                let ok = match c.call(Method::GET, &path, None, Bytes::new()).await {
                    Ok((200, _)) => Ok(()),
                    Ok((status, body)) => {
                        Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])))
                    }
                    // A keep-alive connection the proxy closed (nginx: keepalive_requests) is not a failed
                    // request: open another and send it again.
                    Err(_) if !fresh => {
                        conn = None;
                        continue;
                    }
                    Err(err) => {
                        conn = None;
                        Err(err.to_string())
                    }
                };
                fresh = false;
                counters.requests.fetch_add(1, Relaxed);
                match ok {
                    Ok(()) => {
                        let _ = counters
                            .hist
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .record((started.elapsed().as_micros() as u64).max(1));
                    }
                    Err(err) => {
                        counters.failed.fetch_add(1, Relaxed);
                        counters.first_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(err);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = CpuWindow::start(&c.pids);
    let redis0 = redis_snapshot(c).await;
    let (req0, fail0) = (counters.requests.load(Relaxed), counters.failed.load(Relaxed));
    *counters.hist.lock().unwrap_or_else(|e| e.into_inner()) =
        Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid");
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let requests = counters.requests.load(Relaxed) - req0;
    let failed = counters.failed.load(Relaxed) - fail0;
    let used = cpu.stop();
    let redis = redis_diff(c, redis0).await;
    stop.store(true, Relaxed);
    for t in &tasks {
        t.abort();
    }
    let latency = Latency::of(&counters.hist.lock().unwrap_or_else(|e| e.into_inner()));
    let ok = requests.saturating_sub(failed).max(1) as f64;
    log(format!(
        "poll {:?} x{}: {:.0} requests/s, p99 {:.2} ms, {failed} failed",
        args.mode,
        args.concurrency,
        requests as f64 / used.seconds,
        latency.p99_ms
    ));
    super::emit(json!({
        "workload": "poll", "label": c.label, "mode": format!("{:?}", args.mode).to_lowercase(),
        "concurrency": args.concurrency, "hosts": c.hosts.iter().map(|h| authority(h)).collect::<Vec<_>>(),
        "requests": requests, "failed": failed, "requests_per_s": requests as f64 / used.seconds,
        "latency": latency, "cpu": used, "cpu_us_per_request": used.server_cpu_s * 1e6 / ok,
        "redis": redis,
        "redis_commands_per_request": redis.as_ref().map(|r| r.commands as f64 / ok),
        "redis_reads_per_request": redis.as_ref().map(|r| r.reads as f64 / ok),
        "first_error": counters.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    }));
}
