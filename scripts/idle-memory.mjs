// Gateway RSS per idle WebSocket and per idle SSE stream (issue 11, "memory"): starts `target/release/stickless`
// on the embedded store with one anonymous namespace and no per-IP limits, opens N connections of one transport,
// each subscribed to one channel and waiting for its `welcome`, and reads the gateway's VmRSS (and the kernel's
// slab and TCP socket memory, machine-wide) before and after.
//
//   ulimit -n 20000   # the hard limit here: one descriptor per connection on each side
//   node scripts/idle-memory.mjs --transport ws --counts 5000,10000 [--bin target/release/stickless]
//   node scripts/idle-memory.mjs --transport sse --counts 5000,10000 [--env MALLOC_ARENA_MAX=2] [-- <gateway args>]
//   node scripts/idle-memory.mjs --transport ws --counts 5000 --publish-bytes 16384   # then one message each
//   node scripts/idle-memory.mjs --transport ws --counts 5000 --wrap heaptrack        # heap by allocation site
//
// Counts are cumulative: `5000,10000` opens 5,000, measures, opens 5,000 more and measures again. Each line is
// the delta from the baseline (taken after 100 connections were opened and closed, to warm code paths and the
// allocator) divided by the connections open. Slab and TCP memory are machine-wide, so they include the client's
// side of each loopback pair and anything else the machine does meanwhile: read them as an upper bound.

import { spawn } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync, realpathSync, writeFileSync, mkdtempSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const argv = process.argv.slice(2);
const extra = argv.includes('--') ? argv.splice(argv.indexOf('--')).slice(1) : [];
const opt = (name, fallback) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : fallback);
const transport = opt('--transport', 'ws');
const counts = opt('--counts', '5000,10000').split(',').map(Number);
const bin = opt('--bin', path.join(ROOT, 'target/release/stickless'));
const channel = opt('--channel', 'idle:one');
const settleMs = Number(opt('--settle-ms', '3000'));
const env = Object.fromEntries(
  argv.flatMap((a, i) => (a === '--env' ? [argv[i + 1].split(/=(.*)/s).slice(0, 2)] : [])),
);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rssKiB = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
const slabKiB = () => Number(/Slab:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))[1]);
// TCP socket buffer memory, machine-wide, in pages.
const tcpKiB = () => (Number(/TCP:.* mem (\d+)/.exec(readFileSync('/proc/net/sockstat', 'utf8'))[1]) * 4096) / 1024;

const dir = mkdtempSync(path.join(os.tmpdir(), 'idle-memory-'));
const config = path.join(dir, 'idle.toml');
writeFileSync(
  config,
  [
    'demo_ticker_ms = 0',
    '[limits]',
    'sessions_per_ip_per_second = 0',
    'channels_per_ip_per_second = 0',
    'channels_per_second = 0',
    'connections_per_ip = 0',
    '[namespaces.idle]',
    'subscribe = "anonymous"',
    'publish = "anonymous"',
    'presence = "anonymous"',
    '',
  ].join('\n'),
);

async function freePort() {
  const server = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const { port } = server.address();
  await new Promise((r) => server.close(r));
  return port;
}

const port = await freePort();
// `--wrap heaptrack` (any command taking the program and its arguments) runs the gateway under it.
const wrap = opt('--wrap', '');
const command = [...(wrap ? wrap.split(' ') : []), bin, '--listen', `127.0.0.1:${port}`, '--config', config, ...extra];
const gateway = spawn(command[0], command.slice(1), {
  env: { ...process.env, STICKLESS_LOG: 'warn', ...env },
  stdio: ['ignore', 'inherit', 'inherit'],
});
process.on('exit', () => gateway.kill('SIGKILL'));
for (let i = 0; ; i++) {
  if (i > 100) throw new Error('the gateway did not start');
  const up = await new Promise((r) => {
    const s = net.connect(port, '127.0.0.1', () => (s.destroy(), r(true))).on('error', () => r(false));
  });
  if (up) break;
  await sleep(100);
}
// Under a wrapper, the gateway is the process whose command line names this port.
const pid = (() => {
  if (!wrap) return gateway.pid;
  const listen = `127.0.0.1:${port}`;
  for (const entry of readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (cmdline.includes(listen) && readlinkSync(`/proc/${entry}/exe`) === realpathSync(bin)) return Number(entry);
    } catch {}
  }
  throw new Error('no gateway process found under the wrapper');
})();

/** Opens one connection; resolves with it once its `welcome` arrived. */
function open() {
  const query = `channels=${encodeURIComponent(channel)}`;
  return new Promise((resolve, reject) => {
    if (transport === 'ws') {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/ws?${query}`, { perMessageDeflate: false });
      ws.once('message', () => resolve({ close: () => ws.terminate() }));
      ws.once('error', reject);
      return;
    }
    const socket = net.connect(port, '127.0.0.1', () =>
      socket.write(`GET /v1/sse?${query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n`),
    );
    let seen = '';
    const onData = (chunk) => {
      seen += chunk.toString('latin1');
      if (seen.includes('"welcome"')) {
        socket.off('data', onData);
        socket.on('data', () => {});
        resolve({ close: () => socket.destroy() });
      } else if (seen.length > 65536) reject(new Error(seen.slice(0, 200)));
    };
    socket.on('data', onData);
    socket.once('error', reject);
  });
}

async function openMany(n) {
  const out = [];
  for (let i = 0; i < n; i += 200) {
    out.push(...(await Promise.all(Array.from({ length: Math.min(200, n - i) }, open))));
  }
  return out;
}

const warm = await openMany(100);
warm.forEach((c) => c.close());
await sleep(1500);
const base = { rss: rssKiB(pid), slab: slabKiB(), tcp: tcpKiB() };
console.log(`${transport}: baseline RSS ${base.rss} KiB (pid ${pid}, env ${JSON.stringify(env)}, args ${extra.join(' ')})`);
const conns = [];
for (const target of counts) {
  const started = Date.now();
  conns.push(...(await openMany(target - conns.length)));
  const opened = Date.now() - started;
  await sleep(settleMs);
  const now = { rss: rssKiB(pid), slab: slabKiB(), tcp: tcpKiB() };
  const per = (a, b) => ((a - b) / target).toFixed(2);
  console.log(
    `${transport} ${target}: RSS ${now.rss} KiB, ${per(now.rss, base.rss)} KiB per connection; ` +
      `kernel slab ${per(now.slab, base.slab)} KiB and TCP buffers ${per(now.tcp, base.tcp)} KiB per pair ` +
      `(machine-wide); opened in ${opened} ms`,
  );
}
// `--publish-bytes N`: then one message of N bytes of data to the channel, delivered to every connection, and
// the memory the idle connections keep after it.
const publishBytes = Number(opt('--publish-bytes', '0'));
if (publishBytes > 0) {
  const body = JSON.stringify({ channel, data: 'x'.repeat(publishBytes) });
  const res = await fetch(`http://127.0.0.1:${port}/v1/publish`, { method: 'POST', body });
  if (res.status !== 200) throw new Error(`publish: ${res.status} ${await res.text()}`);
  await sleep(settleMs);
  const after = rssKiB(pid);
  console.log(
    `${transport} ${conns.length} after one ${publishBytes}-byte message each: RSS ${after} KiB, ` +
      `${((after - base.rss) / conns.length).toFixed(2)} KiB per connection`,
  );
}
if (process.env.IDLE_HOLD_MS) await sleep(Number(process.env.IDLE_HOLD_MS));
// SIGKILL: what is still allocated then is what the open connections held (a wrapper like heaptrack reports it
// as leaked).
process.kill(pid, 'SIGKILL');
await new Promise((r) => (gateway.exitCode !== null ? r() : gateway.once('exit', r)));
conns.forEach((c) => c.close());
process.exit(0);
