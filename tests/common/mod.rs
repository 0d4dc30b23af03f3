//! Test harness: starts gateways (in this process, or as `stickless` processes where a test needs several nodes,
//! a kill or a signal) and real `redis-server` processes on free loopback ports, and speaks each transport the
//! way a client would (a WebSocket, an SSE stream, long-polls, POST /v1/send).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// A child process, killed when dropped: every program a test starts (gateway, redis-server, sentinel, an
/// example) goes through this one launcher.
pub struct Process {
    child: Child,
}

impl Process {
    pub fn spawn(command: &mut Command) -> Process {
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command.spawn().unwrap_or_else(|e| panic!("{program} runs (scripts/test.sh installs it): {e}"));
        Process { child }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Sends `signal` (`TERM`, `INT`, `STOP`, ...).
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status();
    }

    /// SIGTERM, then waits (at most `limit`) for the process to exit; answers whether it exited cleanly.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        self.signal("TERM");
        self.exited_within(limit)
    }

    /// Waits (at most `limit`) for the process to exit; answers whether it exited with status 0.
    pub fn exited_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGKILL: the process dies without any cleanup.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every channel open to anonymous clients: the tests of delivery mechanics run with it; the access rules are
/// tested without it (tests/auth.rs).
pub const OPEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/open.toml");

fn with_open_config(args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if !args.contains(&"--config") && !args.contains(&"--secure-default") {
        all.splice(0..0, ["--config".to_owned(), OPEN.to_owned()]);
    }
    all.retain(|a| a != "--secure-default");
    all
}

/// The path of a built example (`cargo test` builds examples with the tests).
pub fn example(name: &str) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_stickless"));
    bin.parent().unwrap().join("examples").join(name)
}

/// A gateway: in this test process ([`Node::start`]) when one node suffices, or its own process
/// ([`Node::spawn`]) for what needs one: several nodes, a kill, a signal, its memory.
pub struct Node {
    pub url: String,
    pub port: u16,
    runs: Runs,
}

enum Runs {
    InProcess(stickless::Handle),
    Process(Process),
}

impl Node {
    /// A node served in this process from the same flags the binary takes, on its own runtime and threads,
    /// with every channel open to anonymous clients ([`OPEN`]) unless `args` name a `--config` or ask for the
    /// `--secure-default` (a harness word, not a flag: the node then runs with no configuration at all).
    pub async fn start(args: &[&str]) -> Node {
        let args = with_open_config(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let flags = ["stickless", "--listen", &format!("127.0.0.1:{port}"), "--demo-ticker-ms", "0"];
        let settings =
            stickless::Config::try_load_from(flags.iter().chain(args.iter())).expect("valid flags").settings().unwrap();
        let (handles, handle) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let (router, handle) = stickless::Builder::new().settings(settings).build().await.unwrap();
                let _ = handles.send(handle.clone());
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                // As the binary serves it: caps, deadlines, drain (on the handle; the test process's own
                // signals are not this node's, but a test sends none to itself).
                let _ = handle.serve(listener, router).await;
            });
        });
        let handle = handle.recv().expect("the node starts");
        let node = Node { url: format!("http://127.0.0.1:{port}"), port, runs: Runs::InProcess(handle) };
        node.wait_until_up().await;
        node
    }

    /// A node as its own `stickless` process, configured as [`Node::start`] says.
    pub async fn spawn(args: &[&str]) -> Node {
        Node::spawn_logging(args, None).await
    }

    /// [`Node::spawn`], its log (warnings and errors) written to `log` when given.
    pub async fn spawn_logging(args: &[&str], log: Option<&std::path::Path>) -> Node {
        let args = with_open_config(args);
        let port = free_port();
        let output = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::null(),
        };
        let process = Process::spawn(
            Command::new(env!("CARGO_BIN_EXE_stickless"))
                .args(["--listen", &format!("127.0.0.1:{port}"), "--demo-ticker-ms", "0", "--log-format", "json"])
                .args(&args)
                .env("STICKLESS_LOG", "warn")
                .stdout(output),
        );
        let node = Node { url: format!("http://127.0.0.1:{port}"), port, runs: Runs::Process(process) };
        node.wait_until_up().await;
        node
    }

    async fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = http().get(format!("{}/v1/negotiate", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway on port {} did not come up", self.port);
    }

    /// The node's process; only a [`Node::spawn`]ed node has one.
    pub fn process(&mut self) -> &mut Process {
        match &mut self.runs {
            Runs::Process(process) => process,
            Runs::InProcess(_) => panic!("this test needs its node as a process: use Node::spawn"),
        }
    }

    pub fn ws_url(&self) -> String {
        self.url.replace("http://", "ws://")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A process is killed by its own drop; an in-process node ends its connections and its thread.
        if let Runs::InProcess(handle) = &self.runs {
            handle.shutdown();
        }
    }
}

/// A `redis-server` process with its own directory; killed when dropped.
pub struct Redis {
    pub port: u16,
    pub dir: PathBuf,
    args: Vec<String>,
    process: Option<Process>,
}

impl Redis {
    pub async fn start(extra: &[&str]) -> Redis {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("stickless-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis { port, dir, args: extra.iter().map(|s| s.to_string()).collect(), process: None };
        redis.spawn().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        self.process = Some(Process::spawn(
            Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                .arg("--dir")
                .arg(&self.dir)
                .args(&self.args)
                .stdout(Stdio::null()),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).map(|o| o.contains("PONG")).unwrap_or(false) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on {} did not come up", self.port);
    }

    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Starts the server again on the same port and directory (so an append-only file is read back).
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn publish(url: &str, channel: &str, data: Value) -> reqwest::Response {
    http().post(format!("{url}/v1/publish")).json(&json!({ "channel": channel, "data": data })).send().await.unwrap()
}

pub async fn publish_ok(url: &str, channel: &str, data: Value) -> Value {
    let r = publish(url, channel, data).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// What a client has received on one channel, checked for exactly-once, in-order delivery.
#[derive(Debug, Default)]
pub struct Received {
    pub offsets: Vec<u64>,
    pub data: Vec<Value>,
    pub gaps: Vec<Value>,
}

impl Received {
    /// Takes a downstream frame; answers whether it was a message.
    pub fn take(&mut self, frame: &Value) -> bool {
        match frame["type"].as_str() {
            Some("message") => {
                self.offsets.push(frame["offset"].as_u64().unwrap());
                self.data.push(frame["data"].clone());
                true
            }
            Some("gap") => {
                self.gaps.push(frame.clone());
                false
            }
            _ => false,
        }
    }

    pub fn assert_exactly(&self, from: u64, to: u64) {
        let expected: Vec<u64> = (from..=to).collect();
        assert_eq!(self.offsets.len(), expected.len(), "count (gaps: {:?})", self.gaps);
        assert_eq!(self.offsets, expected, "every offset once, in order");
    }
}

/// A long-polling client: it keeps its own position, as the protocol asks.
pub struct Poller {
    pub session: String,
    pub position: String,
    pub last_node: String,
}

impl Poller {
    pub async fn open(url: &str, channels: &str) -> Poller {
        let body: Value =
            http().get(format!("{url}/v1/poll?channels={channels}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["frames"][0]["type"], "welcome");
        Poller {
            session: body["session"].as_str().unwrap().into(),
            position: body["position"].as_str().unwrap().into(),
            last_node: body["node"].as_str().unwrap().into(),
        }
    }

    /// One poll against `url`; returns its frames.
    pub async fn poll(&mut self, url: &str) -> Vec<Value> {
        let r = http()
            .get(format!("{url}/v1/poll"))
            .query(&[("session", &self.session), ("position", &self.position)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        self.position = body["position"].as_str().unwrap().into();
        self.last_node = body["node"].as_str().unwrap().into();
        body["frames"].as_array().unwrap().clone()
    }

    pub async fn send(&self, url: &str, frames: Value) -> Value {
        let r = http().post(format!("{url}/v1/send?session={}", self.session)).json(&frames).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

/// An SSE client reading a real `text/event-stream` body.
pub struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
    pub last_event_id: Option<String>,
    pub node: String,
}

impl Sse {
    pub async fn connect(url: &str, query: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = http().get(format!("{url}/v1/sse?{query}"));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        assert_eq!(r.headers()["x-accel-buffering"], "no");
        let mut sse =
            Sse { body: Box::pin(r.bytes_stream()), buf: Vec::new(), last_event_id: None, node: String::new() };
        let welcome = sse.next().await.expect("welcome");
        assert_eq!(welcome["type"], "welcome");
        sse.node = welcome["node"].as_str().unwrap().into();
        sse
    }

    /// The next event's frame (comments and `retry:` are skipped); `None` when the stream ends or stays silent.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(event).unwrap();
                let mut data = None;
                for line in text.lines() {
                    if let Some(id) = line.strip_prefix("id: ") {
                        self.last_event_id = Some(id.to_owned());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(d).unwrap());
                    }
                }
                if data.is_some() {
                    return data;
                }
                continue;
            }
            match tokio::time::timeout(Duration::from_secs(20), self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }
}

pub type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client.
pub struct Ws {
    pub stream: WsStream,
    pub session: String,
}

impl Ws {
    pub async fn connect(ws_url: &str, query: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(format!("{ws_url}/v1/ws?{query}")).await.unwrap();
        let mut ws = Ws { stream, session: String::new() };
        let welcome = ws.next().await.expect("welcome");
        assert_eq!(welcome["type"], "welcome");
        ws.session = welcome["session"].as_str().unwrap().into();
        ws
    }

    pub async fn send(&mut self, frame: Value) {
        self.stream.send(WsMessage::text(frame.to_string())).await.unwrap();
    }

    /// The next non-heartbeat frame; `None` on close or 20 s of silence.
    pub async fn next(&mut self) -> Option<Value> {
        next_frame(&mut self.stream).await
    }
}

/// The next non-heartbeat frame of a WebSocket; `None` on close or 20 s of silence.
pub async fn next_frame(stream: &mut WsStream) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] != "heartbeat" {
                    return Some(v);
                }
            }
            Ok(Some(Ok(WsMessage::Close(_)))) | Ok(None) | Err(_) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// A free port whose cluster-bus port (port + 10000) is free too.
pub fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A real 3-master Redis Cluster: three `redis-server --cluster-enabled yes` joined by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_cluster_port();
            let dir = std::env::temp_dir().join(format!("stickless-cluster-{port}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--appendonly", "no"];
            let mut redis = Redis { port, dir, args: args.iter().map(|s| s.to_string()).collect(), process: None };
            redis.spawn().await;
            nodes.push(redis);
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if nodes.iter().all(|n| n.cli(&["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))) {
                return RedisCluster { nodes };
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the cluster did not reach cluster_state:ok");
    }

    pub fn url(&self) -> String {
        let first = self.nodes[0].port;
        let rest: Vec<String> = self.nodes[1..].iter().map(|n| format!("node=127.0.0.1:{}", n.port)).collect();
        format!("redis-cluster://127.0.0.1:{first}?{}", rest.join("&"))
    }
}

/// A Redis Sentinel watching one master as `mymaster`, with quick failover for tests.
pub struct Sentinel {
    pub port: u16,
    dir: PathBuf,
    _process: Process,
}

impl Sentinel {
    pub async fn start(master_port: u16) -> Sentinel {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("stickless-sentinel-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
                dir.display()
            ),
        )
        .unwrap();
        let process = Process::spawn(Command::new("redis-server").arg(&conf).arg("--sentinel").stdout(Stdio::null()));
        let sentinel = Sentinel { port, dir, _process: process };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if sentinel.master_port().is_some() {
                return sentinel;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("sentinel on {port} did not come up");
    }

    /// The port of the master the sentinel currently names.
    pub fn master_port(&self) -> Option<u16> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "SENTINEL", "get-master-addr-by-name", "mymaster"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().nth(1)?.trim().parse().ok()
    }

    pub fn url(&self) -> String {
        format!("redis-sentinel://127.0.0.1:{}?sentinelServiceName=mymaster", self.port)
    }

    /// `SENTINEL FAILOVER mymaster`, asked again until it answers OK (at most 30 s): a sentinel that has not
    /// yet learned of the replica from the master's INFO answers `NOGOODSLAVE`.
    pub async fn failover(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "SENTINEL", "FAILOVER", "mymaster"])
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&answer.stdout).trim().to_owned();
            if said == "OK" {
                return;
            }
            assert!(Instant::now() < deadline, "SENTINEL FAILOVER answered {said:?} for 30 s");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
