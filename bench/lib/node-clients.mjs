// The Node side of the benchmark, kept for Socket.IO only: subscriber processes (sub-worker.mjs) that speak
// Engine.IO v4 over the `ws` package (and one real socket.io-client), and an HTTP publisher at a fixed rate. The
// Rust load generator (bench/loadgen) drives stickless and raw axum; porting Engine.IO to it would have taken
// longer than the bench's other work, so Socket.IO keeps these clients (bench/README.md, "Fairness").

import { fork } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { track } from '../../tests/js/harness.mjs';
import { Histogram, now, sleep } from './common.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** One subscriber process (lib/sub-worker.mjs), driven over IPC. */
export class Worker {
  constructor(name, log) {
    this.child = track(fork(path.join(HERE, 'sub-worker.mjs'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
    this.child.name = name;
    this.waiters = [];
    this.child.on('message', (m) => {
      if (m.ev === 'error') log(`worker ${name}: ${m.message}`);
      const i = this.waiters.findIndex((w) => w.match(m));
      if (i >= 0) this.waiters.splice(i, 1)[0].resolve(m);
    });
  }

  request(msg, match, ms = 120_000) {
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

/** Opens `count` more subscribers over `workers` (created when not given); subscriber i uses urls[i % n]. */
export async function openSubscribers({ kind, urls, count, workers, firstKind, log }) {
  const ws = workers || Array.from({ length: 2 }, (_, i) => new Worker(`sub${i}`, log));
  let offset = 0;
  await Promise.all(
    ws.map((w, i) => {
      const share = Math.floor(count / ws.length) + (i < count % ws.length ? 1 : 0);
      const opts = { kind, urls, count: share, offset, firstKind: i === 0 ? firstKind : undefined };
      offset += share;
      return share ? w.connect(opts) : null;
    }),
  );
  return ws;
}

/** A publish function over HTTP keep-alive to `targets` ({base, publishPath}), round-robin by sequence number. */
export function httpPublisher(targets, window = 64) {
  const agents = targets.map(() => new http.Agent({ keepAlive: true, maxSockets: window }));
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

/** Sends `n` publishes of round `r` at `rate` per second. */
async function publishRound(publish, r, n, rate, log) {
  let sent = 0;
  let acked = 0;
  let failed = 0;
  const firstSend = now();
  const deadline = firstSend + (n / rate) * 1000 * 3 + 10_000;
  await new Promise((resolve) => {
    const issue = () => {
      const seq = sent++;
      // Key order matters: the workers look for `{"r":` in what they receive. ts in ms (lib/common.mjs).
      publish(seq, { r, seq, ts: now() }).then((ok) => {
        acked++;
        if (ok !== true && ++failed <= 3) log(`  publish ${seq} of round ${r} failed: ${ok}`);
        if (acked === n) resolve();
      });
    };
    const tick = () => {
      const due = Math.min(n, Math.floor(((now() - firstSend) * rate) / 1000) + 1);
      while (sent < due) issue();
      if (sent < n && now() < deadline) setTimeout(tick, 1);
    };
    tick();
    setTimeout(resolve, deadline - now()).unref();
  });
  return { firstSend, acked, failed };
}

/**
 * One round at a fixed rate: arm the workers, publish, wait for every subscriber to have every message (at most
 * 20 s after the last publish). Returns the same fields the Rust load generator reports for a fan-out.
 */
export async function round(workers, publish, r, n, rate, cpu, log) {
  await Promise.all(workers.map((w) => w.arm(r, n)));
  const results = workers.map((w) => w.result(r, (n / rate) * 3000 + 60_000));
  const cpu0 = cpu();
  const pub = await publishRound(publish, r, n, rate, log);
  const cut = setTimeout(() => workers.forEach((w) => w.child.send({ cmd: 'report' })), 20_000);
  const reports = await Promise.all(results);
  clearTimeout(cut);
  const serverCpuS = cpu() - cpu0;
  const hist = new Histogram();
  const sum = (k) => reports.reduce((s, x) => s + x[k], 0);
  for (const rep of reports) hist.merge(rep.hist);
  const last = Math.max(...reports.map((x) => x.last));
  const received = sum('got');
  return {
    published: pub.acked - pub.failed,
    expected: n * sum('subs'),
    lost: n * sum('subs') - received,
    failed: pub.failed,
    counts: { received, dups: sum('dups'), gaps: sum('gaps'), closes: sum('closes'), reordered: 0 },
    deliveries_per_s: received / ((last - pub.firstSend) / 1000),
    latency: { p50_ms: hist.percentile(50), p99_ms: hist.percentile(99), p999_ms: hist.percentile(99.9), max_ms: hist.max, samples: hist.n },
    cpu: { server_cpu_s: serverCpuS },
    cpu_us_per_delivery: (serverCpuS * 1e6) / Math.max(1, received),
  };
}
