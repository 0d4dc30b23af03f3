//! `fanout`: N subscribers on one channel, a publisher at a fixed rate for T seconds over the backend publish
//! API. Reports deliveries/s, latency percentiles, the per-subscriber sequence check, and the servers' CPU per
//! delivery (and, with --redis, Redis commands and round trips per delivery and per poll).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{log, open, redis_diff, redis_snapshot, settle, warm_up, Common};
use crate::procstat::CpuWindow;
use crate::record::Shared;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    pub subs: usize,
    /// Publishes per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Publisher connections.
    #[arg(long, default_value_t = 4)]
    pub slots: usize,
}

pub async fn run(args: Args) {
    let c = &args.common;
    let spec = c.spec();
    let shared = Arc::new(Shared::new());
    let minter = c.minter();
    let subs = args.subs as u64;
    let (tasks, took) = open(
        &spec,
        &shared,
        None,
        minter.as_ref(),
        0..args.subs,
        |_| "bench".to_owned(),
        c.open_concurrency,
        Duration::from_secs(180),
    )
    .await;
    let attached = shared.welcomed.load(Relaxed);
    log(format!("fanout {:?}: {attached} of {subs} attached in {:.1} s", c.transport, took.as_secs_f64()));
    let warm = warm_up(c, &shared, attached, "bench", 5).await;

    shared.begin_round(1);
    let n = (args.rate * args.duration).round() as u64;
    let cpu = CpuWindow::start(&c.pids);
    let redis0 = redis_snapshot(c).await;
    let target = Arc::new(c.publish_target());
    let stats =
        crate::publisher::fixed_rate(target, "bench", 1, n, args.rate, args.slots, Duration::from_secs(30), None).await;
    let published = stats.messages.load(Relaxed);
    settle(&shared, published * attached, Duration::from_secs(3), Duration::from_secs(20)).await;
    let used = cpu.stop();
    let redis = redis_diff(c, redis0).await;
    tasks.iter().for_each(|t| t.abort());

    let counts = shared.counts();
    let first = stats.first_send_us.load(Relaxed);
    let last = shared.last_delivery_us.load(Relaxed);
    let window_s = (last.saturating_sub(first)) as f64 / 1e6;
    let polls = shared.polls.load(Relaxed);
    let latency = shared.latency();
    log(format!(
        "fanout {:?} {subs} subs at {}/s: {} of {} delivered, p50 {:.2} p99 {:.2} p99.9 {:.2} ms, server CPU {:.2} s",
        c.transport,
        args.rate,
        counts.received,
        published * subs,
        latency.p50_ms,
        latency.p99_ms,
        latency.p999_ms,
        used.server_cpu_s
    ));
    super::emit(json!({
        "workload": "fanout", "label": c.label, "transport": c.transport, "flavor": c.flavor,
        "subs": subs, "attached": attached, "open_s": took.as_secs_f64(), "warm_up_complete": warm,
        "rate": args.rate, "duration_s": args.duration, "published": published,
        "expected": published * subs, "lost": (published * subs).saturating_sub(counts.received),
        "deliveries_per_s": if window_s > 0.0 { counts.received as f64 / window_s } else { 0.0 },
        "latency": latency, "counts": counts, "polls": polls,
        "frames_per_poll": if polls > 0 { shared.poll_frames.load(Relaxed) as f64 / polls as f64 } else { 0.0 },
        "cpu": used,
        "cpu_us_per_delivery": used.server_cpu_s * 1e6 / (counts.received.max(1) as f64),
        "cpu_us_per_poll": if polls > 0 { used.server_cpu_s * 1e6 / polls as f64 } else { 0.0 },
        "redis": redis,
        "publisher": stats.report(),
        "first_error": shared.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    }));
}
