// The benchmark orchestrator (run it through bench/run.sh, which installs and builds first).
//
// Starts every server itself (tests/js/harness.mjs: redis-server, gateway nodes, nginx, Socket.IO, raw axum) on
// free loopback ports, drives the Rust load generator (bench/loadgen, one process per measurement, JSON results
// on its stdout) and, for Socket.IO only, the Node subscriber processes (lib/node-clients.mjs). Each workload of
// issue 11 is one section below; results become tables, ratios and PNG charts in docs/benchmarks.md (a QUICK run
// writes its report to BENCH_TMP only). Everything it started is stopped at the end, on error and on signals.
//
// Environment: STICKLESS_BIN, RAW_AXUM_BIN, LOADGEN_BIN (release binaries), BENCH_TMP (logs), BENCH_QUICK=1 (a
// small smoke run), BENCH_ONLY=idle,fanout,longpoll,publish,storm (a subset), BENCH_OUT (the report's path).

import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, portOpen, startBalancer, startGateway, startProcess, startRedis, stopAll, track, trackedPids } from '../tests/js/harness.mjs';
import { barChart, lineChart, render } from './lib/charts.mjs';
import { now, sleep } from './lib/common.mjs';
import { httpPublisher, openSubscribers, round } from './lib/node-clients.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..');
const QUICK = process.env.BENCH_QUICK === '1';
const ALL = ['idle', 'fanout', 'longpoll', 'publish', 'storm'];
const ONLY = (process.env.BENCH_ONLY || ALL.join(',')).split(',');
const TMP = process.env.BENCH_TMP || fs.mkdtempSync(path.join(os.tmpdir(), 'stickless-bench-'));
const STICKLESS = process.env.STICKLESS_BIN || path.join(ROOT, 'target/release/stickless');
const RAW_AXUM = process.env.RAW_AXUM_BIN || path.join(ROOT, 'target/release/examples/raw_axum');
const LOADGEN = process.env.LOADGEN_BIN || path.join(ROOT, 'target/release/loadgen');
const OUT = process.env.BENCH_OUT || (QUICK ? path.join(TMP, 'benchmarks.md') : path.join(ROOT, 'docs/benchmarks.md'));
const CHART_DIR = path.join(path.dirname(OUT), 'benchmarks');
// Auth on, as users run the gateway: every client presents an HS256 token minted by the load generator.
const SECRET = crypto.randomBytes(32).toString('hex');
const API_KEY = crypto.randomBytes(16).toString('hex');

/** Sizes. QUICK is a smoke run of every path; its numbers are not results. */
const C = QUICK
  ? {
      idleSteps: [200, 500, 1000],
      fanout: [{ subs: 100, rate: 10 }, { subs: 1000, rate: 1 }],
      fanoutSeconds: 3,
      rounds: 1,
      pollSeconds: 3,
      liveSubs: 100,
      publishSeconds: 2,
      publishSubs: 100,
      channels: 1000,
      storm: 1000,
    }
  : {
      idleSteps: [1000, 5000, 15000],
      // The same 10,000 deliveries/s at both sizes, so latency against subscribers is at one delivery rate.
      fanout: [{ subs: 1000, rate: 10 }, { subs: 10000, rate: 1 }],
      fanoutSeconds: 6,
      rounds: 3,
      pollSeconds: 10,
      liveSubs: 1000,
      publishSeconds: 5,
      publishSubs: 1000,
      channels: 10000,
      storm: 10000,
    };

const T0 = now();
const log = (...a) => console.error(`[${((now() - T0) / 1000).toFixed(1).padStart(6)}s]`, ...a);
const logFile = (name) => path.join(TMP, `${name}.log`);

// ------------------------------------------------------------------------------------------------ helpers --
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

const HZ = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
function cpuSeconds(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / HZ;
  } catch {
    return 0;
  }
}
/**
 * Machine-wide CPU busy time and ours (this process, every process it started, and those of them that have
 * exited and been reaped: cutime/cstime), in seconds: the difference is other processes' load.
 */
function cpuSnapshot() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const all = (pid) => {
    try {
      const x = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const g = x.slice(x.lastIndexOf(')') + 2).split(' ');
      return (Number(g[11]) + Number(g[12]) + Number(g[13]) + Number(g[14])) / HZ;
    } catch {
      return 0;
    }
  };
  return { t: now(), busy: (f[0] + f[1] + f[2] + f[7]) / HZ, irq: (f[5] + f[6]) / HZ, ours: [process.pid, ...trackedPids()].reduce((a, p) => a + all(p), 0) };
}
const otherCores = (a, b) => Math.max(0, (b.busy - a.busy - (b.ours - a.ours)) / ((b.t - a.t) / 1000));

const rssKiB = (pid) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] || 0);

/** A process and its children (nginx's master and its worker). */
function withChildren(pid) {
  const out = [pid];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const s = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
      if (Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(p));
    } catch {
      // gone
    }
  }
  return out;
}

/** Runs the load generator; resolves with the JSON objects it printed (its progress goes to our stderr). */
function loadgen(args, timeoutMs = 300_000) {
  return new Promise((resolve) => {
    const child = track(spawn(LOADGEN, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, LOADGEN_TOKEN_SECRET: SECRET, LOADGEN_API_KEY: API_KEY },
    }));
    const results = [];
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      for (let i; (i = out.indexOf('\n')) >= 0; out = out.slice(i + 1)) {
        const line = out.slice(0, i).trim();
        if (!line) continue;
        try {
          results.push(JSON.parse(line));
        } catch {
          log(`loadgen printed: ${line}`);
        }
      }
    });
    child.stderr.on('data', (d) => {
      process.stderr.write(d);
      fs.appendFileSync(logFile('loadgen'), d);
    });
    const timer = setTimeout(() => {
      log(`loadgen ${args[0]} ran over ${timeoutMs / 1000} s; killed`);
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (code !== 0) log(`loadgen ${args.join(' ').slice(0, 200)} exited with ${code ?? signal}`);
      resolve(results);
    });
  });
}

// ------------------------------------------------------------------------------------------------ servers --
async function redisServer() {
  const port = await freePort();
  const r = await startRedis({ port, logFile: logFile(`redis-${port}`) });
  return { ...r, addr: `127.0.0.1:${port}`, pid: r.proc.pid };
}

async function gatewayNode(id, redis) {
  const port = await freePort();
  const args = ['--config', path.join(HERE, 'gateway.toml'), '--node-id', id, '--demo-ticker-ms', '0', '--token-secret', SECRET, '--api-key', API_KEY];
  if (redis) args.push('--redis-url', redis.url);
  const node = await startGateway({ bin: STICKLESS, port, args, env: { STICKLESS_LOG: 'warn' }, logFile: logFile(`stickless-${id}-${port}`) });
  return { ...node, pid: node.proc.pid };
}

/** Redis and `count` gateway nodes on it. */
async function stickless(count = 1) {
  const redis = await redisServer();
  const nodes = [];
  for (let i = 0; i < count; i++) nodes.push(await gatewayNode(`n${i + 1}`, redis));
  return {
    redis,
    nodes,
    pids: [...nodes.map((n) => n.pid), redis.pid],
    async stop() {
      for (const n of nodes) await n.stop(2000);
      await redis.stop();
    },
  };
}

async function rawAxum() {
  const port = await freePort();
  const node = await startProcess({ cmd: RAW_AXUM, args: ['--listen', `127.0.0.1:${port}`], what: 'raw axum', ready: () => portOpen(port), logFile: logFile(`raw-axum-${port}`) });
  return { ...node, port, url: `http://127.0.0.1:${port}`, pid: node.proc.pid };
}

async function socketIo(redis) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const args = ['--expose-gc', path.join(HERE, 'lib/sio-server.mjs'), String(port)];
  if (redis) args.push(redis.url);
  const node = await startProcess({
    cmd: process.execPath, args, what: 'socket.io', logFile: logFile(`sio-${port}`),
    ready: async () => (await httpGet(`${base}/health`)).body === 'ready',
  });
  return { ...node, base, pid: node.proc.pid, publishPath: '/publish', ws: `ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket&channels=bench` };
}

const TRANSPORTS = ['ws', 'sse', 'poll'];
const TNAME = { ws: 'WebSocket', sse: 'SSE', poll: 'long-polling' };
const SHORT = { stickless: 'stickless', axum: 'raw axum', sio: 'Socket.IO' };
const COLOR = { 'stickless-ws': '#1f77b4', 'stickless-sse': '#2ca02c', 'stickless-poll': '#d62728', 'axum-ws': '#9ecae1', 'axum-sse': '#a1d99b', 'sio-ws': '#8c564b', 'stickless-own-ws': '#17becf' };

// -------------------------------------------------------------------------------------------------- idle --
async function idle() {
  const rows = [];
  const steps = C.idleSteps.join(',');
  // Every transport on one shared channel, then WebSockets on a channel each (a per-user channel, the common case).
  const runs = [...TRANSPORTS.map((t) => ({ t, system: 'stickless', key: 'stickless', extra: [] })), { t: 'ws', system: 'stickless, a channel each', key: 'stickless-own', extra: ['--own-channels'] }];
  for (const { t, system, key, extra } of runs) {
    log(`idle: ${system} ${TNAME[t]}, ${steps} connections`);
    const env = await stickless(1);
    try {
      const res = await loadgen(['idle', '--hosts', env.nodes[0].url, '--transport', t, '--steps', steps, '--pids', `${env.nodes[0].pid},${env.redis.pid}`, ...extra]);
      rows.push({ system, key, transport: t, steps: res.map((r) => ({ conns: r.connections, attached: r.attached, rss: r.rss_kib[0], base: r.base_rss_kib[0], redis: r.rss_kib[1] - r.base_rss_kib[1], errors: r.errors, openS: r.open_s })) });
    } finally {
      await env.stop();
    }
  }
  for (const t of ['ws', 'sse']) {
    log(`idle: raw axum ${TNAME[t]}`);
    const ax = await rawAxum();
    try {
      const res = await loadgen(['idle', '--flavor', 'axum', '--hosts', ax.url, '--transport', t, '--steps', steps, '--pids', String(ax.pid)]);
      rows.push({ system: 'raw axum', key: 'axum', transport: t, steps: res.map((r) => ({ conns: r.connections, attached: r.attached, rss: r.rss_kib[0], base: r.base_rss_kib[0], errors: r.errors, openS: r.open_s })) });
    } finally {
      await ax.stop();
    }
  }
  log('idle: Socket.IO 4 WebSocket (Node clients)');
  const sio = await socketIo(null);
  let workers;
  try {
    // Warm-up connections opened and closed, then the baseline after a forced GC, as for the others.
    const warm = await openSubscribers({ kind: 'sio-raw', urls: [sio.ws], count: 100, log });
    await Promise.all(warm.map((w) => w.close()));
    await sleep(1500);
    await httpGet(`${sio.base}/gc`);
    const base = rssKiB(sio.pid);
    const steps = [];
    let have = 0;
    for (const n of C.idleSteps) {
      const t = now();
      workers = await openSubscribers({ kind: 'sio-raw', urls: [sio.ws], count: n - have, workers, log });
      have = n;
      await sleep(2000);
      await httpGet(`${sio.base}/gc`);
      await sleep(300);
      steps.push({ conns: n, attached: n, rss: rssKiB(sio.pid), base, errors: 0, openS: (now() - t) / 1000 });
      log(`  ${n}: RSS ${rssKiB(sio.pid)} KiB`);
    }
    rows.push({ system: 'Socket.IO 4', key: 'sio', transport: 'ws', steps });
  } finally {
    await Promise.all((workers || []).map((w) => w.close()));
    await sio.stop();
  }
  return rows;
}

// ------------------------------------------------------------------------------------------------ fan-out --
async function fanout() {
  const rows = [];
  for (const { subs, rate } of C.fanout) {
    const common = ['--subs', String(subs), '--rate', String(rate), '--duration', String(C.fanoutSeconds), '--rounds', String(C.rounds)];
    for (const t of TRANSPORTS) {
      log(`fanout: stickless ${TNAME[t]}, ${subs} subscribers, ${rate}/s`);
      const env = await stickless(1);
      try {
        const [res] = await loadgen(['fanout', '--hosts', env.nodes[0].url, '--transport', t, ...common, '--pids', env.pids.join(','), '--redis', env.redis.addr]);
        if (res) rows.push({ system: 'stickless, 1 node on Redis', key: 'stickless', transport: t, subs, rate, res });
      } finally {
        await env.stop();
      }
    }
    for (const t of ['ws', 'sse']) {
      log(`fanout: raw axum ${TNAME[t]}, ${subs} subscribers`);
      const ax = await rawAxum();
      try {
        const [res] = await loadgen(['fanout', '--flavor', 'axum', '--hosts', ax.url, '--transport', t, ...common, '--pids', String(ax.pid)]);
        if (res) rows.push({ system: 'raw axum broadcast', key: 'axum', transport: t, subs, rate, res });
      } finally {
        await ax.stop();
      }
    }
    log(`fanout: Socket.IO 4 + redis-adapter WebSocket (Node clients), ${subs} subscribers`);
    const redis = await redisServer();
    const sio = await socketIo(redis);
    let workers = [];
    const publish = httpPublisher([sio], 16);
    try {
      workers = await openSubscribers({ kind: 'sio-raw', urls: [sio.ws], count: subs, firstKind: 'sio-client', log });
      const pids = [sio.pid, redis.pid];
      const cpu = () => pids.reduce((s, p) => s + cpuSeconds(p), 0);
      await round(workers, publish, 0, 5, 20, cpu, log);
      const runs = [];
      for (let r = 1; r <= C.rounds; r++) {
        const res = await round(workers, publish, r, Math.round(rate * C.fanoutSeconds), rate, cpu, log);
        log(`  round ${r}: p50 ${res.latency.p50_ms.toFixed(2)} p99 ${res.latency.p99_ms.toFixed(2)} ms, ${res.counts.received}/${res.expected}`);
        runs.push(res);
      }
      const res = medianRound(runs);
      rows.push({ system: 'Socket.IO 4 + redis-adapter, 1 node', key: 'sio', transport: 'ws', subs, rate, res });
    } finally {
      publish.close();
      await Promise.all(workers.map((w) => w.close()));
      await sio.stop();
      await redis.stop();
    }
  }
  return rows;
}

/** The loadgen's way of folding rounds: each figure the median, counts summed. */
function medianRound(runs) {
  const med = (f) => runs.map(f).sort((a, b) => a - b)[Math.floor(runs.length / 2)];
  const sum = (f) => runs.reduce((a, r) => a + f(r), 0);
  return {
    published: sum((r) => r.published),
    expected: sum((r) => r.expected),
    lost: sum((r) => r.lost),
    counts: { received: sum((r) => r.counts.received), dups: sum((r) => r.counts.dups), gaps: sum((r) => r.counts.gaps), closes: runs.at(-1).counts.closes, reordered: 0 },
    deliveries_per_s: med((r) => r.deliveries_per_s),
    latency: { p50_ms: med((r) => r.latency.p50_ms), p99_ms: med((r) => r.latency.p99_ms), p999_ms: med((r) => r.latency.p999_ms), max_ms: med((r) => r.latency.max_ms) },
    cpu_us_per_delivery: med((r) => r.cpu_us_per_delivery),
  };
}

// ----------------------------------------------------------------------------------- long-polling via nginx --
async function longpoll() {
  const out = { live: [] };
  const env = await stickless(3);
  const nginx = await startBalancer({ nodes: env.nodes, balance: 'round-robin' });
  const pids = [...env.pids, ...withChildren(nginx.proc.pid)];
  const hosts = ['--hosts', nginx.url, '--publish-hosts', env.nodes.map((n) => n.url).join(','), '--pids', pids.join(','), '--redis', env.redis.addr];
  try {
    log('long-polling: one loop, polls with data waiting (Redis round trips per poll)');
    [out.probe] = await loadgen(['poll', '--mode', 'waiting', '--concurrency', '1', '--duration', String(C.pollSeconds / 2), ...hosts]);
    log('long-polling: 64 loops, polls with data waiting');
    [out.waiting] = await loadgen(['poll', '--mode', 'waiting', '--concurrency', '64', '--duration', String(C.pollSeconds), ...hosts]);
    for (const t of TRANSPORTS) {
      log(`long-polling: live fan-out through nginx, ${TNAME[t]}, ${C.liveSubs} subscribers at 10/s`);
      const [res] = await loadgen(['fanout', '--transport', t, '--subs', String(C.liveSubs), '--rate', '10', '--duration', String(C.fanoutSeconds), '--rounds', String(C.rounds), ...hosts]);
      if (res) out.live.push({ transport: t, res });
    }
  } finally {
    await nginx.stop();
    await env.stop();
  }
  const ax = await rawAxum();
  const hello = await startBalancer({ nodes: [ax], balance: 'round-robin' });
  try {
    const helloHosts = ['--hosts', hello.url, '--pids', [ax.pid, ...withChildren(hello.proc.pid)].join(',')];
    log('long-polling: hello world through the same nginx, one loop and 64 loops');
    [out.helloProbe] = await loadgen(['poll', '--mode', 'hello', '--concurrency', '1', '--duration', String(C.pollSeconds / 2), ...helloHosts]);
    [out.hello] = await loadgen(['poll', '--mode', 'hello', '--concurrency', '64', '--duration', String(C.pollSeconds), ...helloHosts]);
  } finally {
    await hello.stop();
    await ax.stop();
  }
  return out;
}

// ------------------------------------------------------------------------------------------- publish API --
async function publishApi() {
  const rows = [];
  const cases = [
    { name: 'no subscribers', subs: 0, channels: 1 },
    { name: `${C.publishSubs.toLocaleString('en-US')} WebSocket subscribers on one channel`, subs: C.publishSubs, channels: 1 },
    { name: `${C.channels.toLocaleString('en-US')} channels, one WebSocket subscriber each`, subs: C.channels, channels: C.channels },
  ];
  for (const k of cases) {
    for (const batch of [1, 100]) {
      log(`publish API: ${k.name}, ${batch === 1 ? 'single' : `batches of ${batch}`}`);
      const env = await stickless(1);
      try {
        const [res] = await loadgen(['publish', '--hosts', env.nodes[0].url, '--batch', String(batch), '--concurrency', batch === 1 ? '32' : '4',
          '--duration', String(C.publishSeconds), '--channels', String(k.channels), '--subs', String(k.subs), '--pids', env.pids.join(','), '--redis', env.redis.addr]);
        if (res) rows.push({ ...k, batch, res });
      } finally {
        await env.stop();
      }
    }
  }
  log(`publish API: raw axum, ${C.publishSubs} WebSocket subscribers, single (the fan-out ceiling at max rate)`);
  const ax = await rawAxum();
  try {
    const [res] = await loadgen(['publish', '--flavor', 'axum', '--hosts', ax.url, '--batch', '1', '--concurrency', '32', '--duration', String(C.publishSeconds),
      '--subs', String(C.publishSubs), '--pids', String(ax.pid)]);
    if (res) rows.push({ name: `raw axum broadcast: ${C.publishSubs.toLocaleString('en-US')} WebSocket subscribers`, subs: C.publishSubs, channels: 1, batch: 1, axum: true, res });
  } finally {
    await ax.stop();
  }
  return rows;
}

// ------------------------------------------------------------------------------------------ reconnect storm --
async function storm() {
  const rows = [];
  for (const t of TRANSPORTS) {
    const env = await stickless(3);
    try {
      const [n1, n2, n3] = env.nodes;
      log(`storm: ${C.storm} ${TNAME[t]} clients on n1; SIGKILL n1; they resume on n2/n3`);
      const [res] = await loadgen(['storm', '--transport', t, '--hosts', n1.url, '--resume-hosts', `${n2.url},${n3.url}`, '--publish-hosts', `${n2.url},${n3.url}`,
        '--subs', String(C.storm), '--kill-pid', String(n1.pid), '--rate', '20', '--pids', [n2.pid, n3.pid, env.redis.pid].join(',')]);
      if (res) rows.push({ transport: t, res });
    } finally {
      await env.stop();
    }
  }
  return rows;
}

// ------------------------------------------------------------------------------------------------- report --
function fmt(x, digits = 0) {
  if (x === undefined || x === null || Number.isNaN(x) || !Number.isFinite(x)) return 'n/a';
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}
const ratio = (a, b) => (a > 0 && b > 0 ? `${(a / b).toFixed(2)}x` : 'n/a');
const kib = (bytes) => fmt(bytes / 1024, 1);

function machine() {
  const cpu = /model name\s*:\s*(.+)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] || os.cpus()[0]?.model;
  const memKiB = Number(/MemTotal:\s+(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))[1]);
  const v = (cmd, args) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim().split('\n')[0];
    } catch (err) {
      return (err.stderr || '').toString().trim().split('\n')[0] || 'unknown';
    }
  };
  return [
    `- ${v('nproc', [])} cores: ${cpu}; ${(memKiB / 1024 / 1024).toFixed(1)} GiB; Linux ${os.release()}`,
    `- ${v(STICKLESS, ['--version'])} (commit ${v('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'])}${v('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src', 'transports']) ? ', with uncommitted changes in src/ or transports/' : ''}); ${v('redis-server', ['--version']).replace(/ sha=.*/, '')}; ${v('sh', ['-c', 'nginx -v 2>&1'])}; node ${process.version}`,
    `- load average before the run: ${fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}; open-files limit ${v('sh', ['-c', 'ulimit -n'])}`,
  ].join('\n');
}

function delivered(res) {
  const c = res.counts || {};
  const extra = [res.lost > 0 && `${fmt(res.lost)} lost`, c.dups && `${c.dups} dup`, c.reordered && `${c.reordered} reordered`, c.gaps && `${c.gaps} gap`, c.offset_skips && `${c.offset_skips} offset skips`, c.closes && `${c.closes} closed`, c.errors && `${c.errors} errors`].filter(Boolean);
  const pct = res.expected ? (100 * (c.received || 0)) / res.expected : NaN;
  return `${fmt(pct, pct === 100 ? 0 : 2)}%${extra.length ? ` (${extra.join(', ')})` : ''}`;
}

function idleSection(rows, charts) {
  const out = [`## 1. Idle connections: gateway memory per connection`, ''];
  out.push(`One server per row, fresh; ${C.idleSteps.map((n) => n.toLocaleString('en-US')).join(' / ')} connections opened in steps (each subscribed to \`bench\`, or, for "a channel each", to a channel of its own; with a token), left idle 2 s, then the server's RSS (\`VmRSS\`) minus its RSS after 100 warm-up connections were opened and closed, divided by the connections. stickless runs on Redis: the session state is in Redis (its RSS growth is the last column), the gateway holds the connections. A long-poll connection is a client whose poll is waiting (25 s hold, then the next). Socket.IO: after a forced GC, Node subscriber processes.`);
  out.push('');
  out.push(`| server | transport | ${C.idleSteps.map((n) => `KiB/conn at ${fmt(n)}`).join(' | ')} | RSS at ${fmt(C.idleSteps.at(-1))} | attached | Redis KiB/conn (stickless) |`);
  out.push(`|---|---|${C.idleSteps.map(() => '---').join('|')}|---|---|---|`);
  for (const r of rows) {
    const last = r.steps.at(-1) || {};
    out.push(`| ${r.system} | ${TNAME[r.transport]} | ${r.steps.map((s) => `**${kib(((s.rss - s.base) * 1024) / s.conns)}**`).join(' | ')} | ${fmt(last.rss / 1024, 1)} MiB | ${fmt(last.attached)} of ${fmt(last.conns)} | ${last.redis !== undefined ? kib((last.redis * 1024) / last.conns) : '-'} |`);
  }
  const at = (sys, t) => rows.find((r) => r.system === sys && r.transport === t)?.steps.at(-1);
  const per = (s) => (s ? ((s.rss - s.base) * 1024) / s.conns : NaN);
  out.push('');
  out.push(`Ratios at ${fmt(C.idleSteps.at(-1))}: stickless / raw axum, WebSocket ${ratio(per(at('stickless', 'ws')), per(at('raw axum', 'ws')))}, SSE ${ratio(per(at('stickless', 'sse')), per(at('raw axum', 'sse')))}; stickless / Socket.IO 4, WebSocket ${ratio(per(at('stickless', 'ws')), per(at('Socket.IO 4', 'ws')))}.`);
  charts.memory = lineChart({
    title: 'Server memory (RSS) vs idle connections',
    xLabel: 'connections',
    yLabel: 'RSS growth, MiB',
    series: rows.map((r) => ({ name: `${r.system} ${TNAME[r.transport]}`, points: r.steps.map((s) => [s.conns, (s.rss - s.base) / 1024]), color: COLOR[`${r.key}-${r.transport}`] })),
  });
  out.push('', '![memory vs connections](benchmarks/{{memory}})');
  return out.join('\n');
}

function fanoutSection(rows, charts) {
  const out = ['## 2. Fan-out: one channel, fixed publish rate', ''];
  out.push(`A publisher POSTs to the backend publish API at a fixed rate, ${C.rounds} round${C.rounds > 1 ? 's' : ''} of ${C.fanoutSeconds} s on the same connections, each figure the median of the rounds (${C.fanout.map((f) => `${fmt(f.subs)} subscribers at ${f.rate}/s`).join(', ')}: ${fmt(C.fanout[0].subs * C.fanout[0].rate)} deliveries/s at both sizes); every subscriber checks every message (sequence) and its latency (receive time minus the \`ts\` the publisher wrote). Server CPU = the gateway (and Redis, for stickless and Socket.IO) from /proc, per delivered message. stickless: 1 node on Redis, auth on. Socket.IO: 1 node on @socket.io/redis-adapter (Node clients). Raw axum: one broadcast, no Redis.`);
  out.push('');
  out.push('| system | transport | subscribers | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | delivered | server CPU us/delivery | polls/delivery |');
  out.push('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const x = r.res;
    out.push(`| ${r.system} | ${TNAME[r.transport]} | ${fmt(r.subs)} | ${fmt(x.deliveries_per_s)} | ${fmt(x.latency.p50_ms, 2)} | ${fmt(x.latency.p99_ms, 2)} | ${fmt(x.latency.p999_ms, 2)} | ${fmt(x.latency.max_ms, 1)} | ${delivered(x)} | ${fmt(x.cpu_us_per_delivery, 1)} | ${x.polls ? fmt(x.polls / Math.max(1, x.counts.received), 2) : '-'} |`);
  }
  const get = (key, t, subs) => rows.find((r) => r.key === key && r.transport === t && r.subs === subs)?.res;
  out.push('', 'Ratios (same run): CPU per delivery and p99, A / B:', '', '| subscribers | A / B | CPU per delivery | p99 |', '|---|---|---|---|');
  for (const { subs } of C.fanout) {
    const pair = (label, a, b) => a && b && out.push(`| ${fmt(subs)} | ${label} | ${ratio(a.cpu_us_per_delivery, b.cpu_us_per_delivery)} | ${ratio(a.latency.p99_ms, b.latency.p99_ms)} |`);
    pair('stickless WebSocket / raw axum WebSocket', get('stickless', 'ws', subs), get('axum', 'ws', subs));
    pair('stickless SSE / raw axum SSE', get('stickless', 'sse', subs), get('axum', 'sse', subs));
    pair('stickless WebSocket / Socket.IO WebSocket', get('stickless', 'ws', subs), get('sio', 'ws', subs));
    pair('stickless long-polling / stickless WebSocket', get('stickless', 'poll', subs), get('stickless', 'ws', subs));
  }
  const series = [];
  for (const key of ['stickless', 'axum', 'sio']) {
    for (const t of TRANSPORTS) {
      const pts = rows.filter((r) => r.key === key && r.transport === t).map((r) => [r.subs, r.res.latency.p99_ms]);
      if (pts.length) series.push({ name: `${SHORT[key]} ${TNAME[t]}`, points: pts, color: COLOR[`${key}-${t}`] });
    }
  }
  charts.latency = lineChart({ title: `p99 publish-to-deliver latency vs subscribers (${fmt(C.fanout[0].subs * C.fanout[0].rate)} deliveries/s)`, xLabel: 'subscribers on one channel (log scale)', yLabel: 'p99 latency, ms', series, logX: true });
  const k = (n) => (n >= 1000 ? `${n / 1000}k` : String(n));
  charts.cpu = barChart({
    title: 'Server CPU per delivery, by transport and subscribers',
    yLabel: 'CPU microseconds per delivered message',
    items: rows.map((r) => ({ name: `${SHORT[r.key]} ${TNAME[r.transport]} ${k(r.subs)}`, value: r.res.cpu_us_per_delivery, color: COLOR[`${r.key}-${r.transport}`] })),
  });
  out.push('', '![latency vs subscribers](benchmarks/{{latency}})', '', '![CPU per delivery by transport](benchmarks/{{cpu}})');
  return out.join('\n');
}

function longpollSection(lp) {
  const out = ['## 3. Long-polling through nginx round-robin, 3 nodes on one Redis', ''];
  out.push('nginx (`nginx/gateway.conf`, round-robin, no affinity) in front of 3 gateway nodes on one Redis. A **poll with data waiting**: each loop polls its session at a position just behind one stored message, so every poll answers at once with it (the cost of a poll, without the wait); **hello world**: `GET /hello` on raw axum through the same nginx, the cheapest request-response. CPU = gateway nodes + Redis + nginx (hello: axum + nginx). Redis commands are counted by `INFO commandstats` (commands a Lua script runs included), round trips by `INFO stats` `total_reads_processed` (a pipelined batch arrives in one read); with one loop they are per poll exactly, with 64 loops concurrent polls share reads.');
  out.push('');
  out.push('| workload | loops | requests/s | p50 ms | p99 ms | server CPU us/request | Redis commands/request | Redis round trips/request | failed |');
  out.push('|---|---|---|---|---|---|---|---|---|');
  const row = (name, x) => x && out.push(`| ${name} | ${x.concurrency} | ${fmt(x.requests_per_s)} | ${fmt(x.latency.p50_ms, 2)} | ${fmt(x.latency.p99_ms, 2)} | ${fmt(x.cpu_us_per_request, 1)} | ${x.redis_commands_per_request != null ? fmt(x.redis_commands_per_request, 2) : '-'} | ${x.redis_reads_per_request != null ? fmt(x.redis_reads_per_request, 2) : '-'} | ${fmt(x.failed)} |`);
  row('stickless poll, data waiting', lp.probe);
  row('stickless poll, data waiting', lp.waiting);
  row('hello world (raw axum)', lp.helloProbe);
  row('hello world (raw axum)', lp.hello);
  if (lp.waiting && lp.hello) out.push('', `Ratios, poll / hello world (64 loops): throughput ${ratio(lp.waiting.requests_per_s, lp.hello.requests_per_s)}, CPU per request ${ratio(lp.waiting.cpu_us_per_request, lp.hello.cpu_us_per_request)}.`);
  if (lp.probe?.redis) out.push('', `Redis commands of one poll with data waiting: ${Object.entries(lp.probe.redis.by_command).filter(([, v]) => v / Math.max(1, lp.probe.requests) >= 0.005).map(([k, v]) => `${k} ${fmt(v / Math.max(1, lp.probe.requests - lp.probe.failed), 2)}`).join(', ')}.`);
  out.push('', `**Live fan-out through the same nginx**: ${fmt(C.liveSubs)} subscribers per transport spread over the 3 nodes by nginx, 10 publishes/s to the nodes directly, ${C.rounds} round${C.rounds > 1 ? 's' : ''} of ${C.fanoutSeconds} s (medians). Redis per delivery counts every command in the windows (publishes included).`, '');
  out.push('| transport | deliveries/s | p50 ms | p99 ms | p99.9 ms | delivered | server CPU us/delivery | polls/s | frames per poll | Redis commands/delivery | Redis round trips/delivery |');
  out.push('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const { transport, res: x } of lp.live) {
    const d = Math.max(1, x.counts.received);
    out.push(`| ${TNAME[transport]} | ${fmt(x.deliveries_per_s)} | ${fmt(x.latency.p50_ms, 2)} | ${fmt(x.latency.p99_ms, 2)} | ${fmt(x.latency.p999_ms, 2)} | ${delivered(x)} | ${fmt(x.cpu_us_per_delivery, 1)} | ${x.polls ? fmt(x.polls / (C.fanoutSeconds * C.rounds)) : '-'} | ${x.polls ? fmt(x.frames_per_poll, 2) : '-'} | ${x.redis ? fmt(x.redis.commands / d, 2) : '-'} | ${x.redis ? fmt(x.redis.reads / d, 2) : '-'} |`);
  }
  const lv = (t) => lp.live.find((l) => l.transport === t)?.res;
  if (lv('poll') && lv('ws')) out.push('', `Long-polling / WebSocket through nginx: CPU per delivery ${ratio(lv('poll').cpu_us_per_delivery, lv('ws').cpu_us_per_delivery)}, p99 ${ratio(lv('poll').latency.p99_ms, lv('ws').latency.p99_ms)}.`);
  return out.join('\n');
}

function publishSection(rows) {
  const out = ['## 4. Publish API', ''];
  out.push(`\`POST /v1/publish\` on 1 node on Redis as fast as the requests in flight allow, ${C.publishSeconds} s per row: one message per request (32 in flight) or batches of 100 (\`{"messages":[...]}\`, 4 in flight). Subscribers check every message of their channel. CPU = gateway + Redis per message; Redis round trips = reads Redis processed per request.`);
  out.push('');
  out.push('| subscribers | per request | messages/s | requests/s | request p50 ms | request p99 ms | delivered | delivery p99 ms | server CPU us/message | Redis commands/message | Redis round trips/request | load generator cores |');
  out.push('|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const x = r.res;
    out.push(`| ${r.name} | ${r.batch === 1 ? '1' : `batch of ${r.batch}`} | ${fmt(x.messages_per_s)} | ${fmt(x.requests_per_s)} | ${fmt(x.request_latency.p50_ms, 2)} | ${fmt(x.request_latency.p99_ms, 2)} | ${r.subs ? delivered(x) : '-'}${x.failed ? ` (${fmt(x.failed)} failed publishes)` : ''} | ${r.subs ? fmt(x.delivery_latency.p99_ms, 1) : '-'} | ${fmt(x.cpu_us_per_message, 1)} | ${x.redis_commands_per_message != null ? fmt(x.redis_commands_per_message, 2) : '-'} | ${x.redis_reads_per_request != null ? fmt(x.redis_reads_per_request, 2) : '-'} | ${fmt(x.cpu.loadgen_cpu_s / x.cpu.seconds, 2)} |`);
  }
  const sl = rows.find((r) => !r.axum && r.subs === C.publishSubs && r.channels === 1 && r.batch === 1)?.res;
  const ax = rows.find((r) => r.axum)?.res;
  if (sl && ax) out.push('', `Max-rate fan-out to ${fmt(C.publishSubs)} subscribers, stickless / raw axum: ${ratio(sl.messages_per_s, ax.messages_per_s)} messages/s, ${ratio(sl.cpu_us_per_message, ax.cpu_us_per_message)} server CPU per message (stickless includes Redis; the load generator shares the cores and parses every delivery).`);
  const g = (subs, batch) => rows.find((r) => !r.axum && r.subs === subs && r.batch === batch)?.res;
  if (g(0, 100) && g(0, 1)) out.push('', `Batch / single, no subscribers: ${ratio(g(0, 100).messages_per_s, g(0, 1).messages_per_s)} messages/s.`);
  return out.join('\n');
}

function stormSection(rows) {
  const out = ['## 5. Reconnect storm', ''];
  if (!rows.length) return out.concat(['The storm produced no result (see the log).']).join('\n');
  out.push(`3 nodes on one Redis, per transport. ${fmt(C.storm)} clients attached to n1 (with tokens, subscribed to \`bench\`); a publisher sends 20 messages/s through n2 and n3 throughout. After 3 s n1 is SIGKILLed: every client reconnects with its session and position to n2 or n3 (by turns; a long-poll client sends its next poll there), after a full-jitter backoff (250 ms doubling to 5 s, as web/client does), and must receive every message exactly once.`);
  out.push('');
  out.push('| transport | clients | resumed | all resumed after | resume p50 / p99 ms | attempts (failed) | new sessions | published | delivered | survivors\' peak cores | survivors\' CPU s during the storm | survivors\' CPU ms per resume | load generator CPU s |');
  out.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const { transport, res: s } of rows) out.push(`| ${TNAME[transport]} | ${fmt(s.subs)} | ${fmt(s.resumed)} | ${s.all_resumed_s != null ? `**${fmt(s.all_resumed_s, 2)} s**` : 'not all'} | ${fmt(s.resume_latency.p50_ms, 0)} / ${fmt(s.resume_latency.p99_ms, 0)} | ${fmt(s.attempts)} (${fmt(s.failed_attempts)}) | ${fmt(s.new_sessions)} | ${fmt(s.published)} | ${delivered(s)} | ${fmt(s.survivors_peak_cores, 2)} | ${fmt(s.survivors_cpu.server_cpu_s, 2)} | ${fmt((s.survivors_cpu.server_cpu_s * 1000) / Math.max(1, s.resumed), 2)} | ${fmt(s.survivors_cpu.loadgen_cpu_s, 2)} |`);
  return out.join('\n');
}

/** Issue 11's targets against this run's figures: met or missed, with the measured value. */
function targetsSection(R) {
  const out = ['## Issue 11 targets, as measured in this run', '', '| target | measured | |', '|---|---|---|'];
  const row = (target, value, met, shown) => out.push(`| ${target} | ${Number.isFinite(value) ? shown : 'not measured'} | ${Number.isFinite(value) ? (met ? 'met' : '**missed**') : ''} |`);
  const lv = (t) => R.longpoll?.live.find((l) => l.transport === t)?.res;
  const cpuRatio = lv('poll') && lv('ws') ? lv('poll').cpu_us_per_delivery / lv('ws').cpu_us_per_delivery : NaN;
  row('long-polling CPU per delivery within 3x of WebSocket (3 nodes behind nginx)', cpuRatio, cpuRatio <= 3, `${fmt(cpuRatio, 2)}x (${fmt(lv('poll')?.cpu_us_per_delivery, 1)} vs ${fmt(lv('ws')?.cpu_us_per_delivery, 1)} us)`);
  const p99Ratio = lv('poll') && lv('ws') ? lv('poll').latency.p99_ms / lv('ws').latency.p99_ms : NaN;
  row('long-polling p99 within 2x of WebSocket (same)', p99Ratio, p99Ratio <= 2, `${fmt(p99Ratio, 2)}x (${fmt(lv('poll')?.latency.p99_ms, 1)} vs ${fmt(lv('ws')?.latency.p99_ms, 1)} ms)`);
  const rt = R.longpoll?.probe?.redis_reads_per_request ?? NaN;
  row('a poll with data waiting in at most 2 Redis round trips', rt, rt <= 2.05, `${fmt(rt, 2)} round trips, ${fmt(R.longpoll?.probe?.redis_commands_per_request, 2)} commands`);
  for (const t of ['ws', 'sse']) {
    const st = R.idle?.find((r) => r.key === 'stickless' && r.transport === t)?.steps.at(-1);
    const per = st ? (st.rss - st.base) / st.conns : NaN;
    const ax = R.idle?.find((r) => r.key === 'axum' && r.transport === t)?.steps.at(-1);
    row(`at most 6 KiB gateway RSS per idle ${TNAME[t]}`, per, per <= 6, `${fmt(per, 1)} KiB at ${fmt(st?.conns)} (raw axum: ${ax ? fmt((ax.rss - ax.base) / ax.conns, 1) : 'n/a'} KiB)`);
  }
  const fan = (key, t, subs) => R.fanout?.find((r) => r.key === key && r.transport === t && r.subs === subs)?.res;
  for (const { subs } of C.fanout) {
    const a = fan('stickless', 'ws', subs);
    const b = fan('axum', 'ws', subs);
    const cpu = a && b ? a.cpu_us_per_delivery / b.cpu_us_per_delivery : NaN;
    row(`fan-out at ${fmt(subs)} subscribers: at most 1.1x raw axum's CPU per delivery (WebSocket)`, cpu, cpu <= 1.1, `${fmt(cpu, 2)}x`);
  }
  const pub = R.publish?.find((r) => !r.axum && r.subs === C.publishSubs && r.channels === 1 && r.batch === 1)?.res;
  const ax = R.publish?.find((r) => r.axum)?.res;
  const thr = pub && ax ? pub.messages_per_s / ax.messages_per_s : NaN;
  row(`fan-out: at least 0.95x raw axum's throughput (max rate, ${fmt(C.publishSubs)} subscribers; the load generator shares the 2 cores)`, thr, thr >= 0.95, `${fmt(thr, 2)}x`);
  const big = fan('stickless', 'ws', C.fanout.at(-1).subs);
  const bigAxum = fan('axum', 'ws', C.fanout.at(-1).subs);
  row(`p99 publish-to-deliver under 50 ms at ${fmt(C.fanout.at(-1).subs)} subscribers and ${fmt(C.fanout.at(-1).subs * C.fanout.at(-1).rate)} deliveries/s (WebSocket)`, big?.latency.p99_ms ?? NaN, big?.latency.p99_ms < 50, `${fmt(big?.latency.p99_ms, 1)} ms (raw axum, same load generator: ${fmt(bigAxum?.latency.p99_ms, 1)} ms)`);
  const st = R.storm?.find((r) => r.transport === 'ws')?.res;
  row(`a ${fmt(C.storm)}-client reconnect storm (WebSocket) resumed in under 10 s with nothing lost`, st ? 1 : NaN, st && st.all_resumed_s < 10 && st.lost === 0 && !st.counts.dups, st ? `${st.all_resumed_s != null ? `${fmt(st.all_resumed_s, 2)} s` : 'not all resumed'}, ${fmt(st.lost)} lost, ${fmt(st.counts.dups)} duplicated` : '');
  out.push('', 'At a fixed rate every system delivers everything, so fan-out throughput is compared at max rate (section 4). Sizes were cut to this machine where noted in bench/README.md.');
  return out.join('\n');
}

// --------------------------------------------------------------------------------------------------- main --
async function main() {
  setTimeout(async () => {
    log('watchdog: the bench ran over 25 minutes; stopping');
    await stopAll(2000);
    process.exit(2);
  }, 25 * 60_000).unref();
  const started = new Date();
  const head = machine();
  const sections = [];
  const charts = {};
  const timing = [];
  const results = {};
  const run = async (name, fn, section) => {
    if (!ONLY.includes(name)) return;
    const t = now();
    const cpu0 = cpuSnapshot();
    try {
      results[name] = await fn();
      sections.push(section(results[name], charts));
    } catch (err) {
      log(`${name} failed: ${err.stack || err}`);
      sections.push(`## ${name}\n\nThis section failed: ${String(err.message || err).split('\n')[0]}`);
    }
    timing.push(`${name} ${((now() - t) / 1000).toFixed(0)} s, other processes ${otherCores(cpu0, cpuSnapshot()).toFixed(2)} cores`);
    log(`${name} done in ${((now() - t) / 1000).toFixed(0)} s`);
  };
  await run('idle', idle, idleSection);
  await run('fanout', fanout, fanoutSection);
  await run('longpoll', longpoll, longpollSection);
  await run('publish', publishApi, publishSection);
  await run('storm', storm, stormSection);
  const files = await render(charts, CHART_DIR, log);
  const total = (now() - T0) / 1000;
  let report = [
    `# stickless benchmarks${QUICK ? ' (QUICK smoke run: small sizes, not results)' : ''}`,
    '',
    `Measured ${started.toISOString().replace('T', ' ').slice(0, 16)} UTC with \`${QUICK ? 'BENCH_QUICK=1 ' : ''}bash bench/run.sh\` (written by it; bench/README.md says what each column measures). One run, not a median: numbers on a shared 2-core machine vary by tens of percent between runs; read the ratios. Every process (servers, Redis, nginx, the load generator) shares the same cores.`,
    '',
    head,
    `- measuring took ${fmt(total / 60, 1)} min; per section, the time and the cores used by processes that are not the bench's (other work on a shared machine; 0 when quiet): ${timing.join('; ')}`,
    '',
    targetsSection(results),
    '',
    ...sections.flatMap((s) => [s, '']),
  ].join('\n');
  report = report.replace(/\{\{(\w+)\}\}/g, (_, name) => files[name] || `${name}.missing`);
  fs.writeFileSync(OUT, report);
  fs.writeFileSync(path.join(TMP, 'report.md'), report);
  console.log(report);
  log(`report written to ${OUT}`);
}

main()
  .catch((err) => {
    console.error(err.stack || err);
    process.exitCode = 1;
  })
  .finally(async () => {
    await stopAll(2000);
    process.exit();
  });
