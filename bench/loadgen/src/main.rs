//! `loadgen`: the benchmark's load generator (bench/README.md). One process opens thousands of WebSocket, SSE or
//! long-polling clients against a gateway (or the raw axum ceiling), drives a publisher, checks every message per
//! subscriber, reads the servers' CPU and memory from /proc and Redis' counters from INFO, and prints one JSON
//! object per result on stdout (progress on stderr) for the orchestrator, bench/bench.mjs.

mod client;
mod clock;
mod frame;
mod http;
mod procstat;
mod publisher;
mod record;
mod redis_info;
mod token;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Load generator for the stickless benchmark (bench/README.md)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open N connections of a transport in steps; report the servers' RSS per connection.
    Idle(workload::idle::Args),
    /// N subscribers on one channel, a publisher at a fixed rate: deliveries, latency, CPU per delivery.
    Fanout(workload::fanout::Args),
    /// Long-poll request loops with data waiting (or hello world): polls/s, CPU and Redis work per poll.
    Poll(workload::poll::Args),
    /// The publish API as fast as it goes: single or batch, with or without subscribers, over many channels.
    Publish(workload::publish::Args),
    /// N clients lose their node (SIGKILL) and resume on the others: time to resume, losses.
    Storm(workload::storm::Args),
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        match cli.command {
            Command::Idle(args) => workload::idle::run(args).await,
            Command::Fanout(args) => workload::fanout::run(args).await,
            Command::Poll(args) => workload::poll::run(args).await,
            Command::Publish(args) => workload::publish::run(args).await,
            Command::Storm(args) => workload::storm::run(args).await,
        }
    });
    // Open connections are not closed one by one: the process exit does it.
    std::process::exit(0);
}
