//! `idle`: open N connections of one transport in steps (1k, 5k, 15k), wait until all are attached and
//! subscribed, let them sit, and report the servers' RSS at each step: memory per idle connection.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{log, open, Common};
use crate::procstat::rss_kib;
use crate::record::Shared;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Connection counts to stop at and measure (cumulative).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,15000")]
    pub steps: Vec<usize>,
    /// How long connections sit before RSS is read.
    #[arg(long, default_value_t = 2000)]
    pub settle_ms: u64,
    /// Connections opened and closed before the baseline (warms code paths and allocator arenas).
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Each connection subscribes its own channel (`bench-idle-<i>`, a per-user channel), not one shared `bench`.
    #[arg(long)]
    pub own_channels: bool,
}

pub async fn run(args: Args) {
    let c = &args.common;
    let spec = c.spec();
    let shared = Arc::new(Shared::new());
    let minter = c.minter();
    let own = args.own_channels;
    let channel = move |i: usize| if own { format!("bench-idle-{i}") } else { "bench".to_owned() };
    let (warm, _) = open(
        &spec,
        &shared,
        None,
        minter.as_ref(),
        0..args.warmup,
        channel,
        c.open_concurrency,
        Duration::from_secs(30),
    )
    .await;
    warm.iter().for_each(|t| t.abort());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let base: Vec<u64> = c.pids.iter().map(|&p| rss_kib(p)).collect();
    let mut tasks = Vec::new();
    let mut opened = args.warmup;
    let welcomed0 = shared.welcomed.load(std::sync::atomic::Ordering::Relaxed);
    for &step in &args.steps {
        let count = step.saturating_sub(tasks.len());
        let (more, took) = open(
            &spec,
            &shared,
            None,
            minter.as_ref(),
            opened..opened + count,
            channel,
            c.open_concurrency,
            Duration::from_secs(180),
        )
        .await;
        opened += count;
        tasks.extend(more);
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
        let rss: Vec<u64> = c.pids.iter().map(|&p| rss_kib(p)).collect();
        let welcomed = shared.welcomed.load(std::sync::atomic::Ordering::Relaxed) - welcomed0;
        let counts = shared.counts();
        let per_conn: Vec<f64> =
            rss.iter().zip(&base).map(|(a, b)| (*a as f64 - *b as f64) * 1024.0 / tasks.len() as f64).collect();
        log(format!(
            "idle {:?}: {} connections ({welcomed} attached) in {:.1} s; RSS {:?} KiB, {:?} bytes per connection",
            c.transport,
            tasks.len(),
            took.as_secs_f64(),
            rss,
            per_conn
        ));
        super::emit(json!({
            "workload": "idle", "label": c.label, "transport": c.transport, "flavor": c.flavor,
            "connections": tasks.len(), "attached": welcomed, "open_s": took.as_secs_f64(),
            "base_rss_kib": base, "rss_kib": rss, "bytes_per_connection": per_conn,
            "closes": counts.closes, "errors": counts.errors,
            "first_error": shared.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            "polls": counts_polls(&shared),
        }));
    }
}

fn counts_polls(shared: &Shared) -> u64 {
    shared.polls.load(std::sync::atomic::Ordering::Relaxed)
}
