//! `fanout`: N subscribers on one channel, a publisher at a fixed rate for T seconds over the backend publish
//! API, repeated for a few rounds on the same connections (the figures are the rounds' medians). Reports
//! deliveries/s, latency percentiles, the per-subscriber sequence check, and the servers' CPU per delivery (and,
//! with --redis, Redis commands and round trips per delivery and per poll).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{attach_and_warm, log, redis_diff, redis_snapshot, settle, Attached, Common};
use crate::procstat::{CpuUsed, CpuWindow};
use crate::record::{Counts, Latency, Shared};
use crate::redis_info::Diff;

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
    /// Measured rounds (each `--duration` long); figures are their medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: u64,
    /// Publisher connections.
    #[arg(long, default_value_t = 4)]
    pub slots: usize,
}

pub async fn run(args: Args) {
    let c = &args.common;
    let spec = c.spec();
    let shared = Arc::new(Shared::new());
    let subs = args.subs as u64;
    let Attached { tasks, count: attached, took, warm } = attach_and_warm(c, &spec, &shared, None, args.subs, 5).await;

    let target = Arc::new(c.publish_target());
    let n = (args.rate * args.duration).round() as u64;
    let mut rounds: Vec<Round> = Vec::new();
    for r in 1..=args.rounds.max(1) {
        shared.begin_round(r);
        let cpu = CpuWindow::start(&c.pids);
        let redis0 = redis_snapshot(c).await;
        let stats = crate::publisher::fixed_rate(
            target.clone(),
            "bench",
            r,
            n,
            args.rate,
            args.slots,
            Duration::from_secs(30),
            None,
        )
        .await;
        let published = stats.messages.load(Relaxed);
        settle(&shared, published * attached, Duration::from_secs(3), Duration::from_secs(20)).await;
        let used = cpu.stop();
        let redis = redis_diff(c, redis0).await;
        let counts = shared.counts();
        let first = stats.first_send_us.load(Relaxed);
        let window_s = shared.last_delivery_us.load(Relaxed).saturating_sub(first) as f64 / 1e6;
        let round = Round {
            published,
            polls: shared.polls.load(Relaxed),
            poll_frames: shared.poll_frames.load(Relaxed),
            deliveries_per_s: if window_s > 0.0 { counts.received as f64 / window_s } else { 0.0 },
            latency: shared.latency(),
            cpu_us_per_delivery: used.server_cpu_s * 1e6 / (counts.received.max(1) as f64),
            counts,
            cpu: used,
            redis,
            publish_failed: stats.report().failed,
        };
        log(format!(
            "fanout {:?} {subs} subs at {}/s, round {r}: {} of {} delivered, p50 {:.2} p99 {:.2} p99.9 {:.2} ms, {:.1} us CPU/delivery",
            c.transport,
            args.rate,
            round.counts.received,
            published * subs,
            round.latency.p50_ms,
            round.latency.p99_ms,
            round.latency.p999_ms,
            round.cpu_us_per_delivery
        ));
        rounds.push(round);
    }
    tasks.iter().for_each(|t| t.abort());

    // Each figure is the median over the rounds; counts and Redis work are totals over them.
    let median = |f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let sum = |f: &dyn Fn(&Round) -> u64| rounds.iter().map(f).sum::<u64>();
    let published = sum(&|r| r.published);
    let received = sum(&|r| r.counts.received);
    let polls = sum(&|r| r.polls);
    let server_cpu_s: f64 = rounds.iter().map(|r| r.cpu.server_cpu_s).sum();
    let redis = rounds.iter().all(|r| r.redis.is_some()).then(|| {
        json!({"commands": sum(&|r| r.redis.as_ref().map_or(0, |d| d.commands)), "reads": sum(&|r| r.redis.as_ref().map_or(0, |d| d.reads))})
    });
    super::emit(json!({
        "workload": "fanout", "label": c.label, "transport": c.transport, "flavor": c.flavor,
        "subs": subs, "attached": attached, "open_s": took.as_secs_f64(), "warm_up_complete": warm,
        "rate": args.rate, "duration_s": args.duration, "rounds": rounds.len(), "published": published,
        "expected": published * subs, "lost": (published * subs).saturating_sub(received),
        "deliveries_per_s": median(&|r| r.deliveries_per_s),
        "latency": {
            "p50_ms": median(&|r| r.latency.p50_ms), "p99_ms": median(&|r| r.latency.p99_ms),
            "p999_ms": median(&|r| r.latency.p999_ms), "max_ms": median(&|r| r.latency.max_ms),
        },
        "counts": {
            "received": received, "dups": sum(&|r| r.counts.dups), "reordered": sum(&|r| r.counts.reordered),
            "offset_skips": sum(&|r| r.counts.offset_skips), "gaps": sum(&|r| r.counts.gaps),
            "closes": rounds.last().map_or(0, |r| r.counts.closes), "errors": rounds.last().map_or(0, |r| r.counts.errors),
        },
        "polls": polls,
        "frames_per_poll": if polls > 0 { sum(&|r| r.poll_frames) as f64 / polls as f64 } else { 0.0 },
        "cpu": {"server_cpu_s": server_cpu_s, "loadgen_cpu_s": rounds.iter().map(|r| r.cpu.loadgen_cpu_s).sum::<f64>()},
        "cpu_us_per_delivery": median(&|r| r.cpu_us_per_delivery),
        "redis": redis,
        "publish_failed": sum(&|r| r.publish_failed),
        "per_round": rounds.iter().map(|r| json!({
            "deliveries_per_s": r.deliveries_per_s, "latency": r.latency, "cpu_us_per_delivery": r.cpu_us_per_delivery,
            "received": r.counts.received, "published": r.published,
        })).collect::<Vec<_>>(),
        "first_error": shared.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    }));
}

/// What one measured round gave.
struct Round {
    published: u64,
    polls: u64,
    poll_frames: u64,
    deliveries_per_s: f64,
    latency: Latency,
    cpu_us_per_delivery: f64,
    counts: Counts,
    cpu: CpuUsed,
    redis: Option<Diff>,
    publish_failed: u64,
}
