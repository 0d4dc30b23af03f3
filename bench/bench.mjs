// The benchmark orchestrator (run it through bench/run.sh, which installs and builds first).
//
// Starts every server on free loopback ports, drives subscriber workers (lib/sub-worker.mjs) and a publisher in
// this process, and prints markdown tables to stdout (progress goes to stderr). Every phase is bounded in count
// and time. Processes are started and stopped by the tests' launcher (tests/js/harness.mjs): every one is stopped
// at the end, on error and on SIGINT/SIGTERM.
//
// Environment: STICKLESS_BIN, RAW_AXUM_BIN (release binaries), BENCH_TMP (logs), BENCH_QUICK=1 (a small smoke
// run), BENCH_ONLY=throughput,commands,memory (a subset).

import { fork, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createClient } from 'redis';
import {
  freePort, portOpen, startGateway, startProcess, startRedis as startRedisServer, stopAll, track, trackedPids, waitFor,
} from '../tests/js/harness.mjs';
import { Histogram, now, sleep } from './lib/common.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..');
const QUICK = process.env.BENCH_QUICK === '1';
const ONLY = (process.env.BENCH_ONLY || 'throughput,commands,memory').split(',');
const TMP = process.env.BENCH_TMP || fs.mkdtempSync(path.join(os.tmpdir(), 'stickless-bench-'));
const STICKLESS = process.env.STICKLESS_BIN || path.join(ROOT, 'target/release/stickless');
const RAW_AXUM = process.env.RAW_AXUM_BIN || path.join(ROOT, 'target/release/examples/raw_axum');

const num = (name, dflt) => (process.env[name] ? Number(process.env[name]) : dflt);
const C = {
  subs: num('BENCH_SUBS', QUICK ? 20 : 200), // WebSocket subscribers on channel `bench`
  n: num('BENCH_N', QUICK ? 500 : 5000), // publishes in the max-rate round
  fixedN: num('BENCH_FIXED_N', QUICK ? 100 : 300), // publishes in the fixed-rate round
  rate: num('BENCH_RATE', 50), // offered rate of the fixed-rate round, publishes/s (under every system's capacity)
  window: 64, // publishes in flight in the max-rate round
  warm: 200, // warm-up publishes before measuring (discarded)
  workers: 2, // subscriber processes
  cmdN: QUICK ? 200 : 500, // publishes per Redis command count
  cmdRate: 100,
  cmdSubs: [1, QUICK ? 30 : 300],
  idle: num('BENCH_IDLE', QUICK ? 500 : 5000), // idle WebSockets for the memory test
  deliverTimeoutMs: 30_000, // after the last ack, how long delivery may take before a round is cut
};

const log = (...a) => console.error(`[${((now() - T0) / 1000).toFixed(1).padStart(5)}s]`, ...a);
const T0 = now();

/** Where a started server writes its output: `<name>.log` in TMP. */
const logFile = (name) => path.join(TMP, `${name}.log`);

function httpGet(url) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.setTimeout(2000, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

/** Kernel slab memory in KiB, machine-wide (/proc/meminfo): sockets' kernel structures live there. */
function slabKiB() {
  return Number(/^Slab:\s+(\d+)/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1] || 0);
}

function rssKiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
}

// ------------------------------------------------------------------------------------------------ servers --
/** A redis-server with a client of ours connected, for INFO and PUBSUB. */
async function startRedis() {
  const port = await freePort();
  const server = await startRedisServer({ port, logFile: logFile(`redis-${port}`) });
  const client = createClient({ url: server.url });
  client.on('error', () => {});
  await client.connect();
  return { proc: server.proc, url: server.url, client, async stop() { await client.disconnect().catch(() => {}); await server.stop(); } };
}

async function startStickless(i, redisUrl) {
  const port = await freePort();
  const args = ['--node-id', `n${i + 1}`, '--demo-ticker-ms', '0',
    // Above the messages of one round, so a subscriber that falls behind at max rate catches up from history
    // instead of getting a `gap` (the default is 1000); the bench counts every message end to end.
    '--history-size', '10000', '--web-dir', path.join(ROOT, 'web')];
  if (redisUrl) args.push('--redis-url', redisUrl);
  const node = await startGateway({ bin: STICKLESS, port, args, env: { STICKLESS_LOG: 'warn' }, logFile: logFile(`stickless-n${i + 1}-${port}`) });
  return { ...node, base: node.url, ws: `ws://127.0.0.1:${port}/v1/ws?channels=bench`, publishPath: '/v1/publish' };
}

async function startSio(i, redisUrl) {
  const port = await freePort();
  const args = ['--expose-gc', path.join(HERE, 'lib/sio-server.mjs'), String(port)];
  if (redisUrl) args.push(redisUrl);
  const base = `http://127.0.0.1:${port}`;
  const node = await startProcess({
    cmd: process.execPath,
    args,
    what: `socket.io n${i + 1}`,
    ready: async () => (await httpGet(`${base}/health`)).body === 'ready',
    logFile: logFile(`sio-n${i + 1}-${port}`),
  });
  return {
    ...node,
    base,
    ws: `ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket&channels=bench`,
    publishPath: '/publish',
  };
}

async function startAxum(nodelay = false) {
  const port = await freePort();
  const node = await startProcess({
    cmd: RAW_AXUM,
    args: ['--listen', `127.0.0.1:${port}`, ...(nodelay ? ['--nodelay'] : [])],
    what: 'raw axum',
    ready: () => portOpen(port),
    logFile: logFile(`raw-axum-${port}`),
  });
  return { ...node, base: `http://127.0.0.1:${port}`, ws: `ws://127.0.0.1:${port}/ws`, publishPath: '/publish' };
}

/** Waits until `count` Socket.IO redis adapters have subscribed (each subscribes its request channel). */
async function waitAdapters(redis, count) {
  await waitFor(async () => {
    const reply = await redis.client.sendCommand(['PUBSUB', 'NUMSUB', 'socket.io-request#/#']);
    return Number(reply[1]) >= count;
  }, 15_000, 'socket.io redis adapters to subscribe', 50);
}

// ------------------------------------------------------------------------------------------- CPU accounting --
const HZ = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

function jiffies(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]); // utime + stime
  } catch {
    return 0;
  }
}

/** TCP segments sent, machine-wide (/proc/net/snmp OutSegs): loopback traffic is almost all ours. */
function tcpOutSegs() {
  const lines = fs.readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Tcp:'));
  const names = lines[0].split(/\s+/);
  return Number(lines[1].split(/\s+/)[names.indexOf('OutSegs')]);
}

/** CPU jiffies and start time of every process on the machine that is not ours, by pid. */
function foreignJiffies() {
  const ours = new Set([process.pid, ...trackedPids()]);
  const out = new Map();
  out.uptime = Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * HZ;
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid) || ours.has(Number(pid))) continue;
    try {
      const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const name = s.slice(s.indexOf('(') + 1, s.lastIndexOf(')'));
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      out.set(pid, { name, j: Number(f[11]) + Number(f[12]), start: Number(f[19]) });
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/**
 * Cores used by processes that are not ours between two foreignJiffies() snapshots (a process started meanwhile
 * counts whole; ksoftirqd is left out: it mostly carries our own loopback traffic), and the busiest of them.
 */
function foreignLoad(a, b, secs) {
  const rows = [];
  for (const [pid, p] of b) {
    const before = a.get(pid);
    let d = 0;
    if (before && before.start === p.start) d = p.j - before.j;
    else if (p.start >= a.uptime) d = p.j; // started in between
    if (d > 0 && !p.name.startsWith('ksoftirqd')) rows.push([p.name, d / HZ / secs]);
  }
  rows.sort((x, y) => y[1] - x[1]);
  return {
    cores: rows.reduce((s, r) => s + r[1], 0),
    top: rows.slice(0, 3).map(([c, cores]) => `${c} ${cores.toFixed(2)}`).join(', '),
  };
}

/** Machine-wide busy time, ours (this process and everything it started) and the servers'. */
function cpuSample(serverPids = []) {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const irq = f[5] + f[6]; // irq + softirq: network processing, not charged to any process
  const ours = [process.pid, ...trackedPids()].reduce((s, pid) => s + jiffies(pid), 0);
  const servers = serverPids.reduce((s, pid) => s + jiffies(pid), 0);
  return { t: now(), irq, ours, servers, segs: tcpOutSegs(), foreign: foreignJiffies() };
}

/** Where the CPU went between two samples: servers, our clients, interrupts, other processes. */
function cpuDelta(a, b) {
  const secs = (b.t - a.t) / 1000;
  const foreign = foreignLoad(a.foreign, b.foreign, secs);
  return {
    secs,
    segs: b.segs - a.segs,
    foreignTop: foreign.top,
    otherCores: foreign.cores,
    irqCores: (b.irq - a.irq) / HZ / secs,
    serverCores: (b.servers - a.servers) / HZ / secs,
    clientCores: (b.ours - a.ours - (b.servers - a.servers)) / HZ / secs,
    serverCpuS: (b.servers - a.servers) / HZ,
  };
}

// --------------------------------------------------------------------------------------------- subscribers --
class Worker {
  constructor(name) {
    this.child = track(fork(path.join(HERE, 'lib/sub-worker.mjs'), [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    }));
    this.child.name = name;
    this.waiters = [];
    this.child.on('message', (m) => {
      if (m.ev === 'error') log(`worker ${name}: ${m.message}`);
      const i = this.waiters.findIndex((w) => w.match(m));
      if (i >= 0) this.waiters.splice(i, 1)[0].resolve(m);
    });
  }

  request(msg, match, ms = 60_000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`worker ${this.child.name}: no answer to ${msg.cmd}`)), ms);
      this.waiters.push({ match, resolve: (m) => (clearTimeout(timer), resolve(m)) });
      this.child.send(msg);
    });
  }

  async connect(opts) {
    const m = await this.request({ cmd: 'connect', ...opts }, (m) => m.ev === 'connected' || m.ev === 'error');
    if (m.ev === 'error') throw new Error(`subscribers could not connect: ${m.message}`);
    return m;
  }

  /** Clock offset of the worker vs this process, from the fastest of a few IPC round trips. */
  async clockOffset() {
    let best = { rtt: Infinity, offset: 0 };
    for (let id = 0; id < 7; id++) {
      const t0 = now();
      const m = await this.request({ cmd: 'clock', id }, (m) => m.ev === 'clock' && m.id === id);
      const t1 = now();
      if (t1 - t0 < best.rtt) best = { rtt: t1 - t0, offset: m.t - (t0 + t1) / 2 };
    }
    return best;
  }

  arm(r, n) {
    return this.request({ cmd: 'round', r, n }, (m) => m.ev === 'armed' && m.r === r);
  }

  result(r, ms) {
    return this.request({ cmd: 'noop' }, (m) => m.ev === 'round' && m.r === r, ms);
  }

  async close() {
    if (this.child.exitCode !== null) return;
    this.child.send({ cmd: 'close' });
    const done = await Promise.race([this.child.exited.then(() => true), sleep(3000).then(() => false)]);
    if (!done) this.child.kill('SIGKILL');
  }
}

/** Opens `count` subscribers over `workers` processes; subscriber i connects to urls[i % urls.length]. */
async function openSubscribers({ kind, urls, count, workers = C.workers, firstKind }) {
  workers = Math.min(workers, count);
  const ws = Array.from({ length: workers }, (_, i) => new Worker(`sub${i}`));
  let offset = 0;
  await Promise.all(
    ws.map((w, i) => {
      const share = Math.floor(count / workers) + (i < count % workers ? 1 : 0);
      const opts = { kind, urls, count: share, offset, firstKind: i === 0 ? firstKind : undefined };
      offset += share;
      return w.connect(opts);
    }),
  );
  return ws;
}

// ---------------------------------------------------------------------------------------------- publisher --
/** A publish function over HTTP keep-alive to `targets` (round-robin by sequence number). */
function httpPublisher(targets) {
  const agents = targets.map(() => new http.Agent({ keepAlive: true, maxSockets: C.window }));
  const publish = (seq, data) =>
    new Promise((resolve) => {
      const i = seq % targets.length;
      const body = JSON.stringify({ channel: 'bench', data });
      const req = http.request(
        `${targets[i].base}${targets[i].publishPath}`,
        { method: 'POST', agent: agents[i], headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode === 200 || `HTTP ${res.statusCode} from ${targets[i].base}`));
        },
      );
      req.on('error', (e) => resolve(`${e.code || e.message} from ${targets[i].base}`));
      req.end(body);
    });
  publish.close = () => agents.forEach((a) => a.destroy());
  return publish;
}

function redisPublisher(client) {
  const publish = (seq, data) => client.publish('bench', JSON.stringify(data)).then(() => true, (e) => e.message);
  publish.close = () => {};
  return publish;
}

/** Sends `n` publishes of round `r`: at `rate` per second, or (rate 0) as fast as `window` in flight allows. */
async function publishRound(publish, r, n, { rate = 0, window = C.window }) {
  let sent = 0;
  let acked = 0;
  let failed = 0;
  let lastAck = 0;
  const firstSend = now();
  const deadline = firstSend + (rate ? (n / rate) * 1000 * 3 + 10_000 : 60_000);
  await new Promise((resolve) => {
    const issue = () => {
      const seq = sent++;
      // Key order matters: the workers look for `{"r":` in what they receive.
      publish(seq, { r, seq, ts: now() }).then((ok) => {
        acked++;
        if (ok !== true) {
          failed++;
          if (failed <= 3) log(`  publish ${seq} of round ${r} failed: ${ok}`);
        }
        lastAck = now();
        if (acked === n) resolve();
        else if (!rate) pump();
      });
    };
    const pump = () => {
      while (sent < n && sent - acked < window && now() < deadline) issue();
    };
    if (rate) {
      const tick = () => {
        const due = Math.min(n, Math.floor(((now() - firstSend) * rate) / 1000) + 1);
        while (sent < due) issue();
        if (sent < n && now() < deadline) setTimeout(tick, 1);
      };
      tick();
    } else {
      pump();
    }
    setTimeout(resolve, deadline - now()).unref();
  });
  return { firstSend, lastAck, sent, acked, failed };
}

/** One measured round: arm the workers, publish, wait for every subscriber to have every message (bounded). */
async function round(workers, publish, r, n, opts, serverPids = []) {
  await Promise.all(workers.map((w) => w.arm(r, n)));
  // Bounded: the publish phase ends by its own deadline, then delivery gets deliverTimeoutMs, then a report.
  const bound = (opts.rate ? (n / opts.rate) * 3000 : 60_000) + 10_000 + C.deliverTimeoutMs + 10_000;
  const results = workers.map((w) => w.result(r, bound));
  const cpu0 = cpuSample(serverPids);
  const pub = await publishRound(publish, r, n, opts);
  const cut = setTimeout(() => workers.forEach((w) => w.child.send({ cmd: 'report' })), Math.max(0, pub.lastAck + C.deliverTimeoutMs - now()));
  const reports = await Promise.all(results);
  clearTimeout(cut);
  const cpu = cpuDelta(cpu0, cpuSample(serverPids));
  if (cpu.otherCores > 0.25) log(`  busy machine during round ${r}: ${fmt(cpu.otherCores, 2)} cores not ours (top: ${cpu.foreignTop})`);
  if (reports.some((x) => x.short.length)) log(`  round ${r} incomplete: ${reports.flatMap((x) => x.short).join('; ')}${reports.some((x) => x.closes) ? `; ${reports.reduce((s, x) => s + x.closes, 0)} sockets closed` : ''}`);
  const hist = new Histogram();
  const sum = (k) => reports.reduce((s, x) => s + x[k], 0);
  for (const rep of reports) hist.merge(rep.hist);
  const lastDeliver = Math.max(...reports.map((x) => x.last));
  const complete = sum('complete') === sum('subs') && pub.acked === n && pub.failed === 0;
  return {
    n,
    subs: sum('subs'),
    got: sum('got'),
    expected: sum('expected'),
    complete,
    failed: pub.failed + (n - pub.acked),
    dups: sum('dups'),
    gaps: sum('gaps'),
    closes: sum('closes'),
    pubPerSec: (pub.acked / (pub.lastAck - pub.firstSend)) * 1000,
    deliveredPerSec: (n / (lastDeliver - pub.firstSend)) * 1000,
    seconds: (lastDeliver - pub.firstSend) / 1000,
    p50: hist.percentile(50),
    p99: hist.percentile(99),
    max: hist.max,
    negative: hist.negative,
    otherCores: cpu.otherCores,
    foreignTop: cpu.foreignTop,
    irqCores: cpu.irqCores,
    segsPerDelivery: cpu.segs / Math.max(1, sum('got')),
    serverCores: cpu.serverCores,
    clientCores: cpu.clientCores,
    serverCpuMsPerPublish: (cpu.serverCpuS * 1000) / n,
  };
}

async function commandStats(redis) {
  const text = await redis.client.info('commandstats');
  const calls = {};
  for (const m of text.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) calls[m[1]] = Number(m[2]);
  return calls;
}

/** Redis commands between two INFO snapshots, without INFO itself (our probe) and CLIENT/HELLO of new clients. */
function commandDiff(before, after) {
  const diff = {};
  let total = 0;
  for (const [k, v] of Object.entries(after)) {
    if (k === 'info') continue;
    const d = v - (before[k] || 0);
    if (d > 0) {
      diff[k] = d;
      total += d;
    }
  }
  return { total, diff };
}

// ------------------------------------------------------------------------------------------------ scenarios --
/** Each setup returns { targets (publish), urls (subscribe), kind, firstKind?, redis?, publish?, pids, stop() }. */
const pidsOf = (nodes, redis) => [...nodes.map((s) => s.proc.pid), ...(redis ? [redis.proc.pid] : [])];

async function cluster(start, count, redis) {
  const nodes = [];
  for (let i = 0; i < count; i++) nodes.push(await start(i, redis?.url));
  return nodes;
}

function env(nodes, redis, extra) {
  return {
    targets: nodes,
    urls: nodes.map((s) => s.ws),
    redis,
    pids: pidsOf(nodes, redis),
    stop: async () => {
      await Promise.all(nodes.map((s) => s.stop()));
      await redis?.stop();
    },
    ...extra,
  };
}

const SCENARIOS = [
  {
    key: 'sl-mem', system: 'stickless', nodes: 1, store: 'memory',
    setup: async () => env(await cluster(startStickless, 1), null, { kind: 'ws-json' }),
  },
  {
    key: 'sl-redis1', system: 'stickless', nodes: 1, store: 'Redis',
    async setup() {
      const redis = await startRedis();
      return env(await cluster(startStickless, 1, redis), redis, { kind: 'ws-json' });
    },
  },
  {
    key: 'sl-redis3', system: 'stickless', nodes: 3, store: 'Redis',
    async setup() {
      const redis = await startRedis();
      return env(await cluster(startStickless, 3, redis), redis, { kind: 'ws-json' });
    },
  },
  {
    key: 'sio1', system: 'Socket.IO 4', nodes: 1, store: 'memory',
    setup: async () => env(await cluster(startSio, 1), null, { kind: 'sio-raw', firstKind: 'sio-client' }),
  },
  {
    key: 'sio3', system: 'Socket.IO 4', nodes: 3, store: 'Redis adapter',
    async setup() {
      const redis = await startRedis();
      const nodes = await cluster(startSio, 3, redis);
      await waitAdapters(redis, 3);
      return env(nodes, redis, { kind: 'sio-raw', firstKind: 'sio-client' });
    },
  },
  {
    key: 'axum', system: 'raw axum broadcast (axum defaults)', nodes: 1, store: '-',
    setup: async () => env([await startAxum(false)], null, { kind: 'ws-json' }),
  },
  {
    key: 'axum-nd', system: 'raw axum broadcast + TCP_NODELAY', nodes: 1, store: '-',
    setup: async () => env([await startAxum(true)], null, { kind: 'ws-json' }),
  },
  {
    key: 'redis', system: 'raw Redis PUBLISH -> 1 SUBSCRIBE conn', nodes: '-', store: 'Redis', subsOverride: 1,
    async setup() {
      const redis = await startRedis();
      const pubClient = redis.client.duplicate();
      await pubClient.connect();
      return {
        publish: redisPublisher(pubClient), urls: [redis.url], kind: 'redis', redis, pids: [redis.proc.pid],
        stop: async () => { await pubClient.disconnect().catch(() => {}); await redis.stop(); },
      };
    },
  },
];

async function throughput() {
  const rows = [];
  let clockSkew = 0;
  for (const sc of SCENARIOS) {
    const subs = sc.subsOverride || C.subs;
    log(`throughput: ${sc.system}, ${sc.nodes} node(s), ${sc.store}: ${subs} subscriber(s)`);
    const env = await sc.setup();
    const workers = await openSubscribers({ kind: env.kind, urls: env.urls, count: subs, firstKind: env.firstKind, workers: Math.min(C.workers, subs) });
    for (const w of workers) clockSkew = Math.max(clockSkew, Math.abs((await w.clockOffset()).offset));
    const publish = env.publish || httpPublisher(env.targets);
    const row = { ...sc, subs };
    try {
      const warm = await round(workers, publish, 0, C.warm, { rate: 0, window: 16 });
      if (!warm.complete) log(`  warm-up incomplete: ${warm.got}/${warm.expected}`);
      row.fixed = await round(workers, publish, 1, C.fixedN, { rate: C.rate }, env.pids);
      log(`  fixed ${C.rate}/s: p50 ${fmt(row.fixed.p50, 2)} ms, p99 ${fmt(row.fixed.p99, 2)} ms, ${row.fixed.got}/${row.fixed.expected} delivered, server CPU ${fmt(row.fixed.serverCpuMsPerPublish, 3)} ms/publish, other load ${fmt(row.fixed.otherCores, 2)} cores`);
      const before = env.redis && (await commandStats(env.redis));
      row.max = await round(workers, publish, 2, C.n, { rate: 0 }, env.pids);
      if (env.redis) row.cmds = commandDiff(before, await commandStats(env.redis));
      log(`  max rate: ${fmt(row.max.deliveredPerSec)} msgs/s delivered, ${fmt(row.max.pubPerSec)} acked/s, p50 ${fmt(row.max.p50, 1)} ms, p99 ${fmt(row.max.p99, 1)} ms, ${row.max.got}/${row.max.expected}, cores servers ${fmt(row.max.serverCores, 2)} clients ${fmt(row.max.clientCores, 2)}` +
        `, server CPU ${fmt(row.max.serverCpuMsPerPublish, 3)} ms/publish, other load ${fmt(row.max.otherCores, 2)} cores` +
        (row.cmds ? `, ${fmt(row.cmds.total / C.n, 2)} redis cmds/publish` : ''));
    } finally {
      publish.close();
      await Promise.all(workers.map((w) => w.close()));
      await env.stop();
    }
    rows.push(row);
  }
  return { rows, clockSkew };
}

async function commands() {
  const rows = [];
  for (const [system, start, kind, firstKind] of [
    ['stickless', startStickless, 'ws-json'],
    ['Socket.IO 4 + redis-adapter', startSio, 'sio-raw', 'sio-client'],
  ]) {
    for (const subs of C.cmdSubs) {
      log(`redis commands: ${system}, 3 nodes, ${subs} subscriber(s)`);
      const redis = await startRedis();
      const nodes = [];
      let workers = [];
      let publish;
      try {
        for (let i = 0; i < 3; i++) nodes.push(await start(i, redis.url));
        if (start === startSio) await waitAdapters(redis, 3);
        workers = await openSubscribers({ kind, urls: nodes.map((s) => s.ws), count: subs, firstKind });
        publish = httpPublisher(nodes);
        await round(workers, publish, 0, C.warm, { rate: 0, window: 16 });
        const before = await commandStats(redis);
        const res = await round(workers, publish, 1, C.cmdN, { rate: C.cmdRate });
        const { total, diff } = commandDiff(before, await commandStats(redis));
        rows.push({ system, subs, res, total, diff });
        log(`  ${fmt(total / C.cmdN, 2)} commands/publish, ${res.got}/${res.expected} delivered`);
      } finally {
        publish?.close();
        await Promise.all(workers.map((w) => w.close()));
        await Promise.all(nodes.map((s) => s.stop()));
        await redis.stop();
      }
    }
  }
  return rows;
}

async function memory() {
  const rows = [];
  for (const [system, start, kind, settle] of [
    ['stickless (1 node, memory store)', () => startStickless(0), 'ws-json', async () => {}],
    ['Socket.IO 4 (1 node)', () => startSio(0), 'sio-raw', async (s) => httpGet(`${s.base}/gc`)],
    ['raw axum broadcast', startAxum, 'ws-json', async () => {}],
  ]) {
    log(`memory: ${system}, ${C.idle} idle WebSockets`);
    const s = await start();
    let workers = [];
    try {
      // Warm up code paths and allocator arenas with a few connections, closed before the baseline.
      const warm = await openSubscribers({ kind, urls: [s.ws], count: 100, workers: 1 });
      await Promise.all(warm.map((w) => w.close()));
      await sleep(1000);
      await settle(s);
      await sleep(300);
      const before = rssKiB(s.proc.pid);
      const kernel0 = slabKiB();
      const t = now();
      workers = await openSubscribers({ kind, urls: [s.ws], count: C.idle, workers: 1 });
      const openMs = now() - t;
      await sleep(2000);
      await settle(s);
      await sleep(300);
      const after = rssKiB(s.proc.pid);
      const kernel = ((slabKiB() - kernel0) * 1024) / C.idle;
      rows.push({ system, conns: C.idle, before, after, per: ((after - before) * 1024) / C.idle, openMs, kernel });
      log(`  RSS ${before} KiB -> ${after} KiB: ${fmt(((after - before) * 1024) / C.idle / 1024, 1)} KiB per connection`);
    } finally {
      await Promise.all(workers.map((w) => w.close()));
      await s.stop();
    }
  }
  return rows;
}

// ------------------------------------------------------------------------------------------------- report --
function fmt(x, digits = 0) {
  if (x === undefined || x === null || Number.isNaN(x)) return 'n/a';
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}
// CPU time comes in clock ticks (10 ms): a round that used none shows as under one tick per publish.
const cpuMs = (res) => (res.serverCpuMsPerPublish > 0 ? fmt(res.serverCpuMsPerPublish, 3) : `< ${fmt(1000 / HZ / res.n, 3)}`);
const ratio = (a, b) => (a && b ? `${(a / b).toFixed(2)}x` : 'n/a');

function machine(idleCores) {
  const cpu = /model name\s*:\s*(.+)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] || os.cpus()[0]?.model;
  const memKiB = Number(/MemTotal:\s+(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))[1]);
  const v = (cmd, args) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8' }).trim().split('\n')[0];
    } catch {
      return 'unknown';
    }
  };
  return [
    `- nproc: ${v('nproc', [])}`,
    `- CPU: ${cpu}`,
    `- memory: ${(memKiB / 1024 / 1024).toFixed(1)} GiB`,
    `- kernel: ${os.release()}; node ${process.version}; ${v('redis-server', ['--version']).replace(/ sha=.*/, '')}; ${v(STICKLESS, ['--version'])}`,
    `- load from other processes before the run: ${fmt(idleCores, 2)} cores (0 on a quiet machine; see "other load" per row)`,
  ].join('\n');
}

function delivered(res) {
  const mark = res.complete ? '' : ' **INCOMPLETE**';
  const extra = [res.dups && `${res.dups} dup`, res.gaps && `${res.gaps} gap`, res.failed && `${res.failed} failed publishes`, res.closes && `${res.closes} closed`].filter(Boolean).join(', ');
  return `${fmt((100 * res.got) / res.expected, res.got === res.expected ? 0 : 2)}%${extra ? ` (${extra})` : ''}${mark}`;
}

function throughputTable({ rows, clockSkew }) {
  const by = Object.fromEntries(rows.map((r) => [r.key, r]));
  const out = [];
  out.push(`### 1. Fan-out to ${C.subs} WebSocket subscribers on one channel`);
  out.push('');
  out.push(`- **fixed**: ${C.fixedN.toLocaleString('en-US')} publishes at ${C.rate} publishes/s offered (${fmt(C.rate * C.subs)} deliveries/s), under every system's capacity: latency at light load.`);
  out.push(`- **max**: ${C.n.toLocaleString('en-US')} publishes, as fast as ${C.window} in flight allow (HTTP/1.1 keep-alive, one publish per request). msgs/s = publishes / (last delivery to the last subscriber - first publish sent); deliveries/s = msgs/s x subscribers. Latency here is mostly queueing behind the backlog.`);
  out.push(`- Latency = subscriber's receive time - \`ts\` the publisher wrote into the payload just before sending (one machine, one clock; worst offset between our processes measured at ${fmt(clockSkew * 1000, 0)} us). "delivered" = share of (publishes x subscribers) received, checked per subscriber and sequence number.`);
  out.push('- CPU: servers\' CPU time (all nodes + Redis) per publish, and during the max round the cores used by servers, by our clients (publisher + subscriber processes) and by the kernel\'s interrupt/softirq work (loopback networking, charged to no process): they share the same 2 cores. "other load" = cores used by processes that are not ours (a busy machine makes a row noisy).');
  out.push('');
  out.push('| system | nodes | store | subs | fixed: p50 ms | fixed: p99 ms | fixed: delivered | max: msgs/s | max: deliveries/s | max: p50 ms | max: p99 ms | max: delivered | server CPU ms/publish (fixed / max) | max: cores servers / clients / softirq | Redis cmds/publish (max) | other load (cores) |');
  out.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const f = r.fixed;
    const m = r.max;
    const other = Math.max(f.otherCores, m.otherCores);
    out.push(`| ${r.system} | ${r.nodes} | ${r.store} | ${r.subs} | ${fmt(f.p50, 2)} | ${fmt(f.p99, 2)} | ${delivered(f)} | ${fmt(m.deliveredPerSec)} | ${fmt(m.deliveredPerSec * r.subs)} | ${fmt(m.p50, 1)} | ${fmt(m.p99, 1)} | ${delivered(m)} | ${cpuMs(f)} / ${cpuMs(m)} | ${fmt(m.serverCores, 2)} / ${fmt(m.clientCores, 2)} / ${fmt(m.irqCores, 2)} | ${r.cmds ? fmt(r.cmds.total / C.n, 2) : '-'} | ${fmt(other, 2)}${other > 0.25 ? ' (busy machine)' : ''} |`);
  }
  out.push('');
  out.push('Ratios, A / B (same run; throughput = max msgs/s, higher is better; CPU = server CPU per publish in the max round, latency = fixed p50 / p99, lower is better):');
  out.push('');
  out.push('| A / B | throughput | server CPU per publish | fixed p50 | fixed p99 |');
  out.push('|---|---|---|---|---|');
  const cmp = (label, a, b) => {
    if (!by[a] || !by[b]) return;
    const x = by[a];
    const y = by[b];
    out.push(`| ${label} | ${ratio(x.max.deliveredPerSec, y.max.deliveredPerSec)} | ${ratio(x.max.serverCpuMsPerPublish, y.max.serverCpuMsPerPublish)} | ${ratio(x.fixed.p50, y.fixed.p50)} | ${ratio(x.fixed.p99, y.fixed.p99)} |`);
  };
  cmp('stickless 1 node (memory) / Socket.IO 1 node', 'sl-mem', 'sio1');
  cmp('stickless 3 nodes (Redis) / Socket.IO 3 nodes (redis-adapter)', 'sl-redis3', 'sio3');
  cmp('stickless 1 node (memory) / raw axum, axum defaults (same stack)', 'sl-mem', 'axum');
  cmp('stickless 1 node (memory) / raw axum + TCP_NODELAY (ceiling)', 'sl-mem', 'axum-nd');
  cmp('raw axum + TCP_NODELAY / raw axum, axum defaults', 'axum-nd', 'axum');
  cmp('stickless 1 node (Redis) / stickless 1 node (memory)', 'sl-redis1', 'sl-mem');
  cmp('stickless 3 nodes (Redis) / stickless 1 node (Redis)', 'sl-redis3', 'sl-redis1');
  cmp('Socket.IO 1 node / raw axum + TCP_NODELAY', 'sio1', 'axum-nd');
  out.push('');
  out.push('TCP segments sent per delivery in the max round (machine-wide `OutSegs` / deliveries; includes ACKs and the publishes\' HTTP traffic): ' +
    rows.filter((r) => r.subs > 1).map((r) => `${r.system} (${r.nodes} node${r.nodes === 1 ? '' : 's'}${r.store === '-' ? '' : `, ${r.store}`}): ${fmt(r.max.segsPerDelivery, 2)}`).join('; ') + '.');
  return out.join('\n');
}

function commandsTable(rows) {
  const out = [];
  out.push(`### 2. Redis commands per publish, 3 nodes on one Redis (${C.cmdN.toLocaleString('en-US')} publishes at ${C.cmdRate}/s, round-robin over the nodes)`);
  out.push('');
  out.push('Counted with `INFO commandstats` before/after (commands run inside Lua scripts are counted too; INFO itself is not).');
  out.push('');
  out.push('| system | subscribers | delivered | Redis commands | per publish | ratio vs 1 subscriber | commands (per publish) |');
  out.push('|---|---|---|---|---|---|---|');
  const base = {};
  for (const r of rows) {
    const per = r.total / C.cmdN;
    base[r.system] ??= per;
    const detail = Object.entries(r.diff).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${fmt(v / C.cmdN, 2)}`).join(', ');
    out.push(`| ${r.system} | ${r.subs} | ${delivered(r.res)} | ${fmt(r.total)} | ${fmt(per, 2)} | ${ratio(per, base[r.system])} | ${detail} |`);
  }
  return out.join('\n');
}

function memoryTable(rows) {
  const out = [];
  out.push(`### 3. Memory per idle WebSocket (${C.idle.toLocaleString('en-US')} connections subscribed to one channel, 1 node)`);
  out.push('');
  out.push('Server RSS (`VmRSS`) after opening them and waiting 2 s, minus before (measured after 100 warm-up connections were opened and closed; Socket.IO after a forced GC both times), divided by the connections. The kernel share is not in RSS: the last column is the machine-wide change of `Slab` in /proc/meminfo over the same interval (client and server ends of each loopback connection together; other activity on the machine adds noise). Idle sockets hold no buffered data.');
  out.push('');
  out.push('| server | connections | RSS before | RSS after | RSS per connection | vs raw axum | kernel slab per connection (both ends; machine-wide, approximate) |');
  out.push('|---|---|---|---|---|---|---|');
  const axum = rows.find((r) => r.system.startsWith('raw axum'));
  for (const r of rows) {
    out.push(`| ${r.system} | ${fmt(r.conns)} | ${fmt(r.before / 1024, 1)} MiB | ${fmt(r.after / 1024, 1)} MiB | **${fmt(r.per / 1024, 1)} KiB** | ${ratio(r.per, axum?.per)} | ${fmt(r.kernel / 1024, 1)} KiB |`);
  }
  return out.join('\n');
}

// --------------------------------------------------------------------------------------------------- main --
/** Waits (at most 45 s) for the machine to be quiet, and returns the cores other processes were using. */
async function background() {
  let other = 0;
  for (let i = 0; i < 15; i++) {
    const a = cpuSample();
    await sleep(3000);
    const d = cpuDelta(a, cpuSample());
    other = d.otherCores;
    if (other < 0.2) break;
    log(`machine busy: other processes use ${fmt(other, 2)} cores (${d.foreignTop}); waiting for it to settle (at most 45 s)`);
  }
  return other;
}

async function main() {
  // Whatever happens, the bench ends: a watchdog stops every process it started.
  setTimeout(async () => {
    log('watchdog: the bench ran over 9 minutes; stopping');
    await stopAll(2000);
    process.exit(2);
  }, 9 * 60_000).unref();
  const idle = await background();
  const sections = [`## stickless benchmark${QUICK ? ' (QUICK smoke run: smaller numbers, not results)' : ''}`, '', machine(idle), ''];
  if (ONLY.includes('throughput')) sections.push(throughputTable(await throughput()), '');
  if (ONLY.includes('commands')) sections.push(commandsTable(await commands()), '');
  if (ONLY.includes('memory')) sections.push(memoryTable(await memory()), '');
  sections.push(`_bench time ${((now() - T0) / 1000).toFixed(0)} s; logs in ${TMP}_`);
  const report = sections.join('\n');
  fs.writeFileSync(path.join(TMP, 'report.md'), report + '\n');
  console.log(report);
}

main()
  .catch(async (err) => {
    console.error(err.stack || err);
    process.exitCode = 1;
  })
  .finally(async () => {
    await stopAll(2000);
    process.exit();
  });
