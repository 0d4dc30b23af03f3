//! `storm`: N subscribers connected to one node; a publisher on the other nodes at a fixed rate; after a few
//! seconds this process SIGKILLs the subscribers' node (--kill-pid) and every subscriber reconnects with its
//! session and position to a surviving node (full-jitter backoff). Reports the time until all have resumed,
//! what they lost or saw twice, and the survivors' peak CPU.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{attach_and_warm, log, settle, Attached, Common};
use crate::client::{Reconnects, Spec};
use crate::procstat::{cpu_seconds, ticks_per_second, CpuWindow};
use crate::record::Shared;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 10_000)]
    pub subs: usize,
    /// Where subscribers reconnect (comma-separated base URLs, by turns).
    #[arg(long, value_delimiter = ',', required = true)]
    pub resume_hosts: Vec<String>,
    /// The node to SIGKILL.
    #[arg(long)]
    pub kill_pid: u32,
    /// Publishes per second, throughout.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of publishing before the kill.
    #[arg(long, default_value_t = 3.0)]
    pub before: f64,
    /// At most this long for every subscriber to resume.
    #[arg(long, default_value_t = 60.0)]
    pub max: f64,
}

pub async fn run(args: Args) {
    let c = &args.common;
    let spec = Arc::new(Spec {
        transport: c.transport,
        flavor: c.flavor,
        hosts: c.authorities(),
        resume_hosts: args.resume_hosts.iter().map(|h| crate::http::authority(h)).collect(),
        resume: true,
    });
    let shared = Arc::new(Shared::new());
    let rc = Arc::new(Reconnects::new());
    let Attached { tasks, count: subs, took, warm } = attach_and_warm(c, &spec, &shared, Some(&rc), args.subs, 3).await;

    shared.begin_round(1);
    let stop = Arc::new(AtomicBool::new(false));
    let target = Arc::new(c.publish_target());
    let n = (args.rate * (args.before + args.max + 30.0)) as u64;
    let publisher = tokio::spawn(crate::publisher::fixed_rate(
        target,
        "bench",
        1,
        n,
        args.rate,
        4,
        Duration::from_secs(30),
        Some(stop.clone()),
    ));
    tokio::time::sleep(Duration::from_secs_f64(args.before)).await;

    let cpu = CpuWindow::start(&c.pids);
    rc.killed_at_us.store(crate::clock::now_us(), Relaxed);
    let killed = Instant::now();
    let _ = std::process::Command::new("kill").args(["-KILL", &args.kill_pid.to_string()]).status();
    // Survivors' CPU, sampled every 250 ms: the peak is the storm's cost.
    let hz = ticks_per_second();
    let sample = || c.pids.iter().map(|&p| cpu_seconds(p, hz)).sum::<f64>();
    let (mut peak, mut last, mut last_t) = (0.0f64, sample(), Instant::now());
    while rc.resumed.load(Relaxed) < subs && killed.elapsed().as_secs_f64() < args.max {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (now, t) = (sample(), Instant::now());
        peak = peak.max((now - last) / t.duration_since(last_t).as_secs_f64());
        (last, last_t) = (now, t);
    }
    let resumed = rc.resumed.load(Relaxed);
    let last_resumed = rc.last_resumed_us.load(Relaxed).saturating_sub(rc.killed_at_us.load(Relaxed));
    let storm_cpu = cpu.stop();
    log(format!("storm: {resumed} of {subs} resumed, the last {:.2} s after the kill", last_resumed as f64 / 1e6));
    // Keep publishing a little after the storm, then check that every subscriber has every message.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Relaxed);
    let stats = publisher.await.unwrap_or_default();
    let published = stats.messages.load(Relaxed);
    settle(&shared, published * subs, Duration::from_secs(5), Duration::from_secs(30)).await;
    tasks.iter().for_each(|t| t.abort());
    let counts = shared.counts();
    super::emit(json!({
        "workload": "storm", "label": c.label, "transport": c.transport, "subs": subs, "open_s": took.as_secs_f64(),
        "warm_up_complete": warm, "rate": args.rate,
        "disconnected": rc.disconnected.load(Relaxed), "resumed": resumed,
        "all_resumed_s": if resumed >= subs { Some(last_resumed as f64 / 1e6) } else { None },
        "resume_latency": rc.latency(),
        "attempts": rc.attempts.load(Relaxed), "failed_attempts": rc.failed_attempts.load(Relaxed),
        "new_sessions": rc.new_sessions.load(Relaxed),
        "published": published, "expected": published * subs, "lost": (published * subs).saturating_sub(counts.received),
        "counts": counts, "latency": shared.latency(),
        "survivors_peak_cores": peak, "survivors_cpu": storm_cpu,
        "publisher": stats.report(),
        "first_error": shared.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    }));
}
