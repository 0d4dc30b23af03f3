//! `publish`: the backend publish API's throughput, one message per request or a batch per request, with no
//! subscribers, with N subscribers on one channel, or over M channels with one subscriber each. Subscribers
//! check every message (per channel and sequence); reports messages/s, request latency, delivery, the servers'
//! CPU per message and, with --redis, Redis commands per message and round trips (reads) per request.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{log, open, redis_diff, redis_snapshot, settle, Common};
use crate::procstat::CpuWindow;
use crate::publisher::{channel_name, max_rate, MaxRate};
use crate::record::Shared;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Messages per request (1: `{"channel","data"}`; more: `{"messages":[...]}`).
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 8.0)]
    pub duration: f64,
    /// Channels published to, by turns (`bench` when 1, else `bench:0`..).
    #[arg(long, default_value_t = 1)]
    pub channels: u64,
    /// WebSocket subscribers; subscriber i follows channel i mod --channels.
    #[arg(long, default_value_t = 0)]
    pub subs: usize,
}

pub async fn run(args: Args) {
    let c = &args.common;
    let spec = c.spec();
    let shared = Arc::new(Shared::new());
    let minter = c.minter();
    let channels = args.channels.max(1);
    let (tasks, took) = open(
        &spec,
        &shared,
        None,
        minter.as_ref(),
        0..args.subs,
        |i| channel_name(channels, i as u64),
        c.open_concurrency,
        Duration::from_secs(180),
    )
    .await;
    let attached = shared.welcomed.load(Relaxed);
    if args.subs > 0 {
        log(format!("publish: {attached} of {} subscribers attached in {:.1} s", args.subs, took.as_secs_f64()));
    }
    let target = Arc::new(c.publish_target());
    // One second of warm-up (round 0), not measured.
    shared.begin_round(0);
    let warm = MaxRate { concurrency: args.concurrency, batch: args.batch, channels, duration: Duration::from_secs(1) };
    max_rate(target.clone(), 0, warm).await;
    settle(&shared, u64::MAX, Duration::from_millis(500), Duration::from_secs(10)).await;

    shared.begin_round(1);
    let cpu = CpuWindow::start(&c.pids);
    let redis0 = redis_snapshot(c).await;
    let how = MaxRate {
        concurrency: args.concurrency,
        batch: args.batch,
        channels,
        duration: Duration::from_secs_f64(args.duration),
    };
    let (stats, claimed) = max_rate(target, 1, how).await;
    let publish_s = (stats.last_ack_us.load(Relaxed).saturating_sub(stats.first_send_us.load(Relaxed))) as f64 / 1e6;
    // Every subscriber expects the messages of its channel: g mod channels == its channel.
    let expected: u64 =
        (0..args.subs as u64).map(|i| claimed / channels + u64::from(i % channels < claimed % channels)).sum();
    settle(&shared, expected, Duration::from_secs(3), Duration::from_secs(30)).await;
    let used = cpu.stop();
    let redis = redis_diff(c, redis0).await;
    tasks.iter().for_each(|t| t.abort());
    let report = stats.report();
    let counts = shared.counts();
    let messages = report.messages.max(1) as f64;
    log(format!(
        "publish batch {} channels {channels} subs {}: {:.0} messages/s, {} failed, {} of {expected} delivered",
        args.batch,
        args.subs,
        report.messages as f64 / publish_s,
        report.failed,
        counts.received
    ));
    super::emit(json!({
        "workload": "publish", "label": c.label, "batch": args.batch, "concurrency": args.concurrency,
        "channels": channels, "subs": args.subs, "attached": attached,
        "messages": report.messages, "requests": report.requests, "failed": report.failed,
        "messages_per_s": report.messages as f64 / publish_s, "requests_per_s": report.requests as f64 / publish_s,
        "request_latency": report.request_latency, "first_error": report.first_error,
        "expected": expected, "lost": expected.saturating_sub(counts.received), "counts": counts,
        "delivery_latency": shared.latency(),
        "cpu": used, "cpu_us_per_message": used.server_cpu_s * 1e6 / messages,
        "redis": redis,
        "redis_commands_per_message": redis.as_ref().map(|r| r.commands as f64 / messages),
        "redis_reads_per_request": redis.as_ref().map(|r| r.reads as f64 / report.requests.max(1) as f64),
    }));
}
