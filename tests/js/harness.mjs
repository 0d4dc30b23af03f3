// The one process launcher for JavaScript: the Node and browser tests and the benchmark (bench/bench.mjs) start
// the real gateway, redis-server, nginx and other servers through it, on free ports in temp dirs, and it kills
// every process it started when the process using it exits.

import { spawn } from "node:child_process";
import { createServer, connect as tcpConnect } from "node:net";
import { mkdtempSync, readFileSync, writeFileSync, rmSync, mkdirSync, chmodSync, openSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve, isAbsolute } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const DEFAULT_BIN = join(REPO, "target", "debug", "stickless");

const children = new Set();
const tempDirs = new Set();

function killAll() {
  for (const p of children) {
    try {
      // nginx's workers outlive a SIGKILLed master; SIGTERM makes the master take them down.
      p.kill(p.exitSignal || "SIGKILL");
    } catch (_) {
      // already gone
    }
  }
  for (const d of tempDirs) {
    try {
      rmSync(d, { recursive: true, force: true });
    } catch (_) {
      // best effort
    }
  }
}
process.on("exit", killAll);
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.once(sig, () => {
    killAll();
    process.exit(130);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves once pred() returns truthy (may be async); rejects after timeoutMs with `message`. */
export async function waitFor(pred, timeoutMs = 10000, message = "condition", intervalMs = 20) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await pred();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? `: ${last.message}` : "";
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${message}${detail}`);
    }
    await sleep(intervalMs);
  }
}

/** A TCP port free right now on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export function makeTempDir(prefix = "stickless-") {
  const d = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(d);
  return d;
}

/**
 * Registers a child process (from spawn or fork) for stopAll() and the exit cleanup, and gives it `exited`: a
 * promise of {code, signal} (or {error}) once it is gone.
 */
export function track(proc) {
  children.add(proc);
  proc.exited = new Promise((resolve) => {
    proc.once("exit", (code, signal) => {
      children.delete(proc);
      resolve({ code, signal });
    });
    proc.once("error", (err) => {
      children.delete(proc);
      resolve({ code: null, signal: null, error: err });
    });
  });
  return proc;
}

/** The pids of every process started here and still running. */
export function trackedPids() {
  return [...children].map((p) => p.pid);
}

/**
 * Spawns a tracked process. Its output goes to `logFile` (appended) when given - the bench keeps logs and does
 * not spend its CPU reading them - or else is kept in memory (the last lines); output() returns it either way.
 */
function spawnTracked(cmd, args, { logFile, ...opts } = {}) {
  if (logFile) {
    const fd = openSync(logFile, "a");
    const proc = track(spawn(cmd, args, { stdio: ["ignore", fd, fd], ...opts }));
    closeSync(fd);
    proc.output = () => readFileSync(logFile, "utf8").slice(-16000);
    return proc;
  }
  const proc = track(spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...opts }));
  const lines = [];
  const keep = (chunk) => {
    const text = chunk.toString();
    if (process.env.STICKLESS_TEST_LOG) process.stderr.write(`[${cmd.split("/").pop()}] ${text}`);
    lines.push(text);
    if (lines.length > 400) lines.splice(0, lines.length - 400);
  };
  proc.stdout.on("data", keep);
  proc.stderr.on("data", keep);
  proc.output = () => lines.join("");
  return proc;
}

async function stopProc(proc, graceMs = 5000) {
  if (proc.exitCode !== null || proc.signalCode !== null) return proc.exited;
  try {
    proc.kill("SIGTERM");
  } catch (_) {
    // gone
  }
  const t = setTimeout(() => {
    try {
      proc.kill("SIGKILL");
    } catch (_) {
      // gone
    }
  }, graceMs);
  const r = await proc.exited;
  clearTimeout(t);
  return r;
}

/** Stops every process started here (SIGTERM, then SIGKILL after graceMs), all at once. */
export async function stopAll(graceMs) {
  await Promise.all([...children].map((p) => stopProc(p, graceMs)));
}

/** Whether something accepts TCP connections on 127.0.0.1:port. */
export function portOpen(port) {
  return new Promise((resolve) => {
    const s = tcpConnect(port, "127.0.0.1");
    s.on("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.on("error", () => resolve(false));
  });
}

async function untilUp(proc, check, what, timeoutMs) {
  let exited = null;
  proc.exited.then((r) => (exited = r));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited) {
      throw new Error(`${what} exited early (${JSON.stringify(exited)}):\n${proc.output().slice(-4000)}`);
    }
    try {
      if (await check()) return;
    } catch (_) {
      // not up yet
    }
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`${what} did not come up within ${timeoutMs} ms:\n${proc.output().slice(-4000)}`);
    }
    await sleep(50);
  }
}

/** Every channel open to anonymous clients, as the client tests need; the demo needs no configuration. */
export const OPEN_CONFIG = join(REPO, "tests", "fixtures", "open.toml");

/**
 * Starts the gateway binary on a free port (`--listen 127.0.0.1:<port>` plus `args`) and waits until
 * GET /v1/negotiate answers. Unless `secure` is set or `args` name a `--config`, every channel is open to
 * anonymous clients (OPEN_CONFIG); with `secure`, the gateway runs on its secure default, where anonymous
 * clients may use only `demo:` channels. `logFile`: see spawnTracked. Returns {url, port, proc, logs(), stop(),
 * kill(signal)}.
 */
export async function startGateway({ args = [], env = {}, bin = process.env.STICKLESS_BIN || DEFAULT_BIN, port, logFile, timeoutMs = 30000, secure = false, cwd } = {}) {
  port = port || (await freePort());
  const url = `http://127.0.0.1:${port}`;
  const config = secure || args.includes("--config") ? [] : ["--config", OPEN_CONFIG];
  const proc = spawnTracked(bin, ["--listen", `127.0.0.1:${port}`, ...config, ...args], {
    env: { STICKLESS_LOG: "warn", ...process.env, ...env },
    ...(cwd ? { cwd } : {}),
    logFile,
  });
  await untilUp(
    proc,
    async () => {
      const res = await fetch(`${url}/v1/negotiate`);
      await res.arrayBuffer();
      return res.ok;
    },
    `stickless (${bin})`,
    timeoutMs,
  );
  return {
    url,
    port,
    proc,
    logs: () => proc.output(),
    stop: (graceMs) => stopProc(proc, graceMs),
    kill: (signal = "SIGKILL") => {
      proc.kill(signal);
      return proc.exited;
    },
  };
}

function redisPing(port) {
  return new Promise((resolve) => {
    const s = tcpConnect(port, "127.0.0.1");
    let buf = "";
    const done = (ok) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(1000, () => done(false));
    s.on("error", () => done(false));
    s.on("connect", () => s.write("PING\r\n"));
    s.on("data", (d) => {
      buf += d.toString();
      if (buf.includes("\r\n")) done(buf.startsWith("+PONG"));
    });
  });
}

/**
 * Starts redis-server without persistence on a free port in a temp dir. `logFile`: see spawnTracked. Returns
 * {url, port, dir, proc, stop(), kill()}.
 */
export async function startRedis({ args = [], bin = process.env.REDIS_SERVER_BIN || "redis-server", port, logFile, timeoutMs = 15000 } = {}) {
  port = port || (await freePort());
  const dir = makeTempDir("stickless-redis-");
  const proc = spawnTracked(bin, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, ...args], { cwd: dir, logFile });
  await untilUp(proc, () => redisPing(port), "redis-server", timeoutMs);
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    dir,
    proc,
    stop: (graceMs) => stopProc(proc, graceMs),
    kill: (signal = "SIGKILL") => {
      proc.kill(signal);
      return proc.exited;
    },
  };
}

/**
 * Starts any other server process (`cmd args`), tracked like the gateway (killed when the test process exits),
 * and waits until `ready()` (may be async) returns truthy. `what` names it in errors; `logFile`: see
 * spawnTracked. Returns {proc, logs(), stop(), kill(signal)}.
 */
export async function startProcess({ cmd, args = [], env = {}, cwd, ready, what = cmd, logFile, timeoutMs = 30000 }) {
  const proc = spawnTracked(cmd, args, { env: { ...process.env, ...env }, ...(cwd ? { cwd } : {}), logFile });
  await untilUp(proc, ready, what, timeoutMs);
  return {
    proc,
    logs: () => proc.output(),
    stop: (graceMs) => stopProc(proc, graceMs),
    kill: (signal = "SIGKILL") => {
      proc.kill(signal);
      return proc.exited;
    },
  };
}

/** Renders `{{NAME}}` placeholders; an unknown placeholder is an error (a template typo should not pass silently). */
export function renderTemplate(text, vars) {
  return text.replace(/\{\{\s*([A-Za-z0-9_]+)\s*\}\}/g, (_, name) => {
    if (!(name in vars)) throw new Error(`template placeholder {{${name}}} has no value`);
    return String(vars[name]);
  });
}

/**
 * Renders an nginx config template into a temp dir and runs nginx from there (`-p DIR -c DIR/nginx.conf`).
 * Always-provided vars: DIR (the temp dir), PORT (a free port nginx listens on); `vars` adds or overrides
 * (e.g. UPSTREAM: "127.0.0.1:8080"). Returns {url, port, dir, proc, stop()}.
 */
export async function startNginx({ template, vars = {}, bin = process.env.NGINX_BIN || "nginx", timeoutMs = 15000 } = {}) {
  const templatePath = isAbsolute(template) ? template : join(REPO, template);
  const dir = makeTempDir("stickless-nginx-");
  // Workers may run as an unprivileged user when we are root: let them reach the temp paths.
  chmodSync(dir, 0o755);
  for (const sub of ["client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"]) mkdirSync(join(dir, sub), { recursive: true });
  const port = vars.PORT || (await freePort());
  const conf = renderTemplate(readFileSync(templatePath, "utf8"), { DIR: dir, PORT: port, ...vars });
  writeFileSync(join(dir, "nginx.conf"), conf);
  const proc = spawnTracked(bin, ["-p", dir + "/", "-c", join(dir, "nginx.conf"), "-e", join(dir, "error.log"), "-g", "daemon off;"]);
  proc.exitSignal = "SIGTERM";
  const url = `http://127.0.0.1:${port}`;
  await untilUp(proc, () => portOpen(port), "nginx", timeoutMs);
  return {
    url,
    port,
    dir,
    proc,
    errorLog: () => {
      try {
        return readFileSync(join(dir, "error.log"), "utf8");
      } catch (_) {
        return "";
      }
    },
    stop: (graceMs) => stopProc(proc, graceMs),
  };
}

/** The BALANCE values of nginx/gateway.conf: how nginx picks a node for each request. */
export const BALANCE = Object.freeze({
  // nginx's default: every request to the next node, no affinity.
  "round-robin": "",
  // A consistent hash of ?session= (a request without one: of its $request_id): a session stays on one node.
  sticky: "hash $stickless_affinity consistent;",
});

/**
 * nginx (nginx/gateway.conf) in front of gateway nodes (anything with a `port`), balancing "round-robin" or
 * "sticky" (see BALANCE). `port`: nginx's listen port (default: a free one). Returns startNginx()'s object plus
 * `balance`.
 */
export async function startBalancer({ nodes, balance = "round-robin", port, ...opts }) {
  if (!Object.hasOwn(BALANCE, balance)) throw new Error(`unknown balance ${JSON.stringify(balance)} (one of ${Object.keys(BALANCE).join(", ")})`);
  const vars = {
    UPSTREAMS: nodes.map((n) => `server 127.0.0.1:${n.port} max_fails=0;`).join(" "),
    BALANCE: BALANCE[balance],
  };
  if (port) vars.PORT = port;
  return { ...(await startNginx({ template: "nginx/gateway.conf", vars, ...opts })), balance };
}

/**
 * One redis-server and gateway nodes sharing it. `nodes` maps each node id to extra gateway args (`--node-id` and
 * `--redis-url` are added). Returns {redis, nodes: {id: gateway}, add(p), stop()}: add() puts another started
 * process (an nginx in front) on the list stop() takes down, last started first. If something does not come up,
 * stops what it had started and throws.
 */
export async function startRedisNodes(nodes = { n1: [], n2: [] }, { secure = false } = {}) {
  const started = [];
  const stop = async () => {
    for (const p of started.splice(0).reverse()) await p.stop();
  };
  const add = (p) => {
    started.push(p);
    return p;
  };
  try {
    const redis = add(await startRedis());
    const gateways = {};
    for (const [id, args] of Object.entries(nodes)) {
      gateways[id] = add(await startGateway({ args: ["--node-id", id, "--redis-url", redis.url, ...args], secure }));
    }
    return { redis, nodes: gateways, add, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * A TCP proxy to host:port on a free port, for network faults: blackhole() makes every open connection swallow
 * data both ways without closing (a dead link, as after a NAT timeout); cut() resets them all; new connections
 * pass normally. Returns {url, port, connections(), blackhole(), cut(), stop()}.
 */
export async function startTcpProxy({ host = "127.0.0.1", port: targetPort }) {
  const pairs = new Set();
  const server = createServer((client) => {
    const upstream = tcpConnect(targetPort, host);
    const pair = { client, upstream, dead: false };
    pairs.add(pair);
    client.on("data", (d) => pair.dead || upstream.write(d));
    upstream.on("data", (d) => pair.dead || client.write(d));
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end);
    upstream.on("close", end);
    client.on("error", end);
    upstream.on("error", end);
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    connections: () => pairs.size,
    blackhole: () => {
      for (const p of pairs) p.dead = true;
    },
    cut: () => {
      for (const p of pairs) {
        p.client.resetAndDestroy ? p.client.resetAndDestroy() : p.client.destroy();
        p.upstream.destroy();
      }
    },
    stop: () =>
      new Promise((resolve) => {
        for (const p of pairs) {
          p.client.destroy();
          p.upstream.destroy();
        }
        server.close(() => resolve());
      }),
  };
}

/** POST /v1/publish as a backend would; resolves with the stored {channel, epoch, offset}. */
export async function publish(url, channel, data, { apiKey, idempotencyKey, fetch: f = fetch } = {}) {
  const body = { channel, data };
  if (idempotencyKey) body.idempotency_key = idempotencyKey;
  const headers = { "content-type": "application/json" };
  if (apiKey) headers.authorization = `Bearer ${apiKey}`;
  const res = await f(`${url}/v1/publish`, { method: "POST", headers, body: JSON.stringify(body) });
  const text = await res.text();
  if (!res.ok) throw new Error(`POST /v1/publish ${res.status}: ${text}`);
  return JSON.parse(text);
}

/** GET a JSON endpoint; resolves with {status, body, headers}. */
export async function getJson(url, init) {
  const res = await fetch(url, init);
  const text = await res.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch (_) {
    // not JSON: keep the text
  }
  return { status: res.status, body, headers: res.headers };
}

/** POST JSON; resolves with {status, body}. */
export async function postJson(url, payload, headers = {}) {
  return getJson(url, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(payload) });
}

/** A name no other test run uses: `prefix-<time>-<random>`. */
export function uniq(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/** How many times each value occurs: {node: count}. */
export function tally(values) {
  const t = {};
  for (const v of values) t[v] = (t[v] || 0) + 1;
  return t;
}
