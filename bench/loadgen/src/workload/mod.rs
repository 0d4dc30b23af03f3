//! The workloads, one file each, and what they share: the command-line options every workload takes, opening
//! many subscribers at a bounded rate, and waiting for deliveries to settle.

pub mod fanout;
pub mod idle;
pub mod poll;
pub mod publish;
pub mod storm;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::client::{self, Flavor, Reconnects, Spec, Transport};
use crate::record::Shared;
use crate::token::Minter;

/// Options shared by every workload.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Base URLs subscribers attach to (comma-separated; subscriber i uses the (i mod n)th).
    #[arg(long, value_delimiter = ',', required = true)]
    pub hosts: Vec<String>,
    /// Base URLs the publisher uses (comma-separated; default: --hosts).
    #[arg(long, value_delimiter = ',')]
    pub publish_hosts: Vec<String>,
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
    #[arg(long, value_enum, default_value = "stickless")]
    pub flavor: Flavor,
    /// HS256 secret the gateway was given (--token-secret): every client presents a token minted with it.
    #[arg(long, env = "LOADGEN_TOKEN_SECRET")]
    pub token_secret: Option<String>,
    /// The gateway's --api-key, for the publish API.
    #[arg(long, env = "LOADGEN_API_KEY")]
    pub api_key: Option<String>,
    /// Server processes whose CPU (and, for `idle`, RSS) is measured (comma-separated pids).
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// A Redis (host:port) whose INFO commandstats / stats are read around the measured window.
    #[arg(long)]
    pub redis: Option<String>,
    /// Echoed into every JSON result, so the orchestrator knows which row it is.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Attaches in flight at once while opening subscribers.
    #[arg(long, default_value_t = 256)]
    pub open_concurrency: u64,
}

impl Common {
    pub fn authorities(&self) -> Vec<String> {
        self.hosts.iter().map(|h| crate::http::authority(h)).collect()
    }

    pub fn publish_target(&self) -> crate::publisher::Target {
        let hosts = if self.publish_hosts.is_empty() { &self.hosts } else { &self.publish_hosts };
        crate::publisher::Target {
            hosts: hosts.iter().map(|h| crate::http::authority(h)).collect(),
            flavor: self.flavor,
            api_key: self.api_key.clone(),
        }
    }

    pub fn minter(&self) -> Option<Minter> {
        self.token_secret.as_deref().map(Minter::new)
    }

    pub fn spec(&self) -> Arc<Spec> {
        Arc::new(Spec {
            transport: self.transport,
            flavor: self.flavor,
            hosts: self.authorities(),
            resume_hosts: Vec::new(),
            resume: false,
        })
    }
}

/// Logs progress to stderr (stdout carries only results).
pub fn log(msg: impl AsRef<str>) {
    eprintln!("[loadgen {:.1}] {}", crate::clock::now_us() as f64 / 1e6 % 1000.0, msg.as_ref());
}

/// Prints one result object on stdout.
pub fn emit(value: serde_json::Value) {
    println!("{value}");
}

/// Opens subscribers `from..to` (channel by index), with at most `in_flight` attaches pending at once, and waits
/// (at most `timeout`) until all of them have their welcome. Returns their tasks and how long opening took.
#[allow(clippy::too_many_arguments)]
pub async fn open(
    spec: &Arc<Spec>,
    shared: &Arc<Shared>,
    reconnects: Option<&Arc<Reconnects>>,
    minter: Option<&Minter>,
    range: std::ops::Range<usize>,
    channel_of: impl Fn(usize) -> String,
    in_flight: u64,
    timeout: Duration,
) -> (Vec<JoinHandle<()>>, Duration) {
    let started = Instant::now();
    let deadline = started + timeout;
    let base = shared.welcomed.load(Relaxed) + shared.closes.load(Relaxed);
    let mut tasks = Vec::with_capacity(range.len());
    let target = range.len() as u64;
    for (n, i) in range.enumerate() {
        while (n as u64) >= in_flight + (shared.welcomed.load(Relaxed) + shared.closes.load(Relaxed) - base)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let token = minter.map(|m| m.token(i));
        tasks.push(tokio::spawn(client::run(
            i,
            channel_of(i),
            token,
            spec.clone(),
            shared.clone(),
            reconnects.cloned(),
        )));
    }
    while shared.welcomed.load(Relaxed) + shared.closes.load(Relaxed) - base < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (tasks, started.elapsed())
}

/// Subscribers opened on channel `bench` and warmed up.
pub struct Attached {
    pub tasks: Vec<JoinHandle<()>>,
    /// How many got their welcome.
    pub count: u64,
    pub took: Duration,
    /// Whether the warm-up round reached every attached subscriber.
    pub warm: bool,
}

/// Opens `count` subscribers on channel `bench`, logs how many attached, and runs a warm-up round of `warm`
/// publishes that each must receive.
pub async fn attach_and_warm(
    c: &Common,
    spec: &Arc<Spec>,
    shared: &Arc<Shared>,
    reconnects: Option<&Arc<Reconnects>>,
    count: usize,
    warm: u64,
) -> Attached {
    let minter = c.minter();
    let bench = |_| "bench".to_owned();
    let timeout = Duration::from_secs(180);
    let (tasks, took) =
        open(spec, shared, reconnects, minter.as_ref(), 0..count, bench, c.open_concurrency, timeout).await;
    let attached = shared.welcomed.load(Relaxed);
    log(format!("{:?}: {attached} of {count} attached in {:.1} s", c.transport, took.as_secs_f64()));
    let warm = warm_up(c, shared, attached, "bench", warm).await;
    Attached { tasks, count: attached, took, warm }
}

/// Waits until `shared.received` reaches `expected`, or stops growing for `stall`, or `cap` has passed.
pub async fn settle(shared: &Shared, expected: u64, stall: Duration, cap: Duration) {
    let started = Instant::now();
    let mut last = (shared.received.load(Relaxed), Instant::now());
    loop {
        let got = shared.received.load(Relaxed);
        if got >= expected || started.elapsed() > cap {
            return;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > stall {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A warm-up round 0: `n` publishes at 20/s that every subscriber must receive (proves all are subscribed).
pub async fn warm_up(common: &Common, shared: &Shared, subs: u64, channel: &str, n: u64) -> bool {
    shared.begin_round(0);
    let target = Arc::new(common.publish_target());
    crate::publisher::fixed_rate(target, channel, 0, n, 20.0, 2, Duration::from_secs(30), None).await;
    settle(shared, n * subs, Duration::from_secs(5), Duration::from_secs(30)).await;
    let got = shared.received.load(Relaxed);
    if got < n * subs {
        log(format!("warm-up: {got} of {} deliveries", n * subs));
    }
    got >= n * subs
}

/// Redis counters around a window, when a Redis was named.
pub async fn redis_snapshot(common: &Common) -> Option<crate::redis_info::Snapshot> {
    match &common.redis {
        Some(addr) => crate::redis_info::snapshot(addr).await.ok(),
        None => None,
    }
}

pub async fn redis_diff(
    common: &Common,
    before: Option<crate::redis_info::Snapshot>,
) -> Option<crate::redis_info::Diff> {
    let after = redis_snapshot(common).await?;
    Some(crate::redis_info::diff(&before?, &after))
}
