// A subscriber worker, forked by bench.mjs: opens `count` subscribers of one kind, then for each round counts
// which messages every subscriber received and how late (now - the publisher's `ts`), and reports by IPC.
//
// Kinds (all but `sio-client` and `redis` use the same `ws` client and one JSON.parse per message, so client
// cost is the same and differences are the server's):
//   ws-json     stickless `/v1/ws?channels=bench` or raw axum `/ws`: first frame is a welcome, then
//               {"type":"message",...,"data":{r,seq,ts}} frames.
//   sio-raw     Socket.IO 4 over a plain WebSocket (Engine.IO v4: `0{..}` open, we send `40`, `40{..}` connect,
//               `2`/`3` ping/pong, `42["message",{r,seq,ts}]` events).
//   sio-client  the real socket.io-client (websocket transport only), used for one subscriber per Socket.IO run
//               to show the raw client above speaks the protocol right.
//   redis       a node-redis SUBSCRIBE connection on channel `bench` (payload is {r,seq,ts}).

import WebSocket from 'ws';
import { Histogram, now } from './common.mjs';

let subs = [];

// The publisher writes data as {"r":R,"seq":S,"ts":T} and every server here forwards it byte for byte or
// re-serialises it in the same key order, so the payload is found and parsed alone, not the whole frame: this
// keeps the subscribers' CPU per message low (they share 2 cores with the server). Anything else (welcome,
// gap) is parsed whole.
function payload(text) {
  const i = text.indexOf('{"r":');
  if (i < 0) return null;
  return JSON.parse(text.slice(i, text.indexOf('}', i) + 1));
}
let round = null; // { r, n, hist, seen: Uint8Array[] per sub, got: counts, done, last, stray, dups, gaps }
let closes = 0;
let errors = 0;

function onData(sub, data) {
  const t = now();
  if (!round || data == null || data.r !== round.r) {
    if (round) round.stray++;
    return;
  }
  const seq = data.seq;
  if (!(seq >= 0 && seq < round.n)) {
    round.stray++;
    return;
  }
  if (sub.seen[seq]) {
    round.dups++;
    return;
  }
  sub.seen[seq] = 1;
  sub.got++;
  round.hist.add(t - data.ts);
  if (t > round.last) round.last = t;
  if (sub.got === round.n) {
    round.complete++;
    if (round.complete === subs.length) finish();
  }
}

function finish() {
  if (!round || round.reported) return;
  round.reported = true;
  const got = subs.reduce((s, x) => s + x.got, 0);
  process.send({
    ev: 'round',
    r: round.r,
    complete: round.complete,
    subs: subs.length,
    got,
    expected: round.n * subs.length,
    last: round.last,
    stray: round.stray,
    dups: round.dups,
    gaps: round.gaps,
    closes,
    errors,
    short: subs.filter((x) => x.got < round.n).slice(0, 5).map((x) => `${x.kind} ${x.url} got ${x.got}`),
    hist: round.hist.toJSON(),
  });
}

function connectWsJson(url) {
  return new Promise((resolve, reject) => {
    const sub = { got: 0, seen: null, kind: '', url };
    const ws = new WebSocket(url, { perMessageDeflate: false, skipUTF8Validation: true });
    sub.close = () => ws.terminate();
    let welcomed = false;
    ws.on('message', (raw) => {
      const text = raw.toString();
      const data = payload(text);
      if (data) return onData(sub, data);
      const frame = JSON.parse(text);
      if (frame.type === 'message') onData(sub, frame.data);
      else if (frame.type === 'welcome' && !welcomed) {
        welcomed = true;
        resolve(sub);
      } else if (frame.type === 'gap' && round) round.gaps++;
    });
    ws.on('error', (e) => {
      errors++;
      if (!welcomed) reject(e);
    });
    ws.on('close', () => {
      closes++;
      if (!welcomed) reject(new Error('closed before welcome'));
    });
  });
}

function connectSioRaw(url) {
  return new Promise((resolve, reject) => {
    const sub = { got: 0, seen: null, kind: '', url };
    const ws = new WebSocket(url, { perMessageDeflate: false, skipUTF8Validation: true });
    sub.close = () => ws.terminate();
    let connected = false;
    ws.on('message', (raw) => {
      const text = raw.toString();
      if (text.startsWith('42["message",{"r":')) onData(sub, payload(text));
      else if (text.startsWith('42')) {
        const [event, data] = JSON.parse(text.slice(2));
        if (event === 'message') onData(sub, data);
      } else if (text === '2') ws.send('3');
      else if (text[0] === '0') ws.send('40');
      else if (text.startsWith('40') && !connected) {
        connected = true;
        resolve(sub);
      }
    });
    ws.on('error', (e) => {
      errors++;
      if (!connected) reject(e);
    });
    ws.on('close', () => {
      closes++;
      if (!connected) reject(new Error('closed before connect'));
    });
  });
}

async function connectSioClient(url) {
  const { io } = await import('socket.io-client');
  return new Promise((resolve, reject) => {
    const sub = { got: 0, seen: null, kind: '', url };
    const u = new URL(url.replace(/^ws/, 'http'));
    const socket = io(`${u.protocol}//${u.host}`, {
      transports: ['websocket'],
      query: { channels: u.searchParams.get('channels') },
      reconnection: false,
    });
    sub.close = () => socket.disconnect();
    socket.on('message', (data) => onData(sub, data));
    socket.on('connect', () => resolve(sub));
    socket.on('connect_error', (e) => {
      errors++;
      reject(e);
    });
  });
}

async function connectRedis(url) {
  const { createClient } = await import('redis');
  const client = createClient({ url });
  client.on('error', () => errors++);
  await client.connect();
  const sub = { got: 0, seen: null, kind: 'redis', url, close: () => client.disconnect().catch(() => {}) };
  await client.subscribe('bench', (message) => onData(sub, payload(message)));
  return sub;
}

const connectors = { 'ws-json': connectWsJson, 'sio-raw': connectSioRaw, 'sio-client': connectSioClient, redis: connectRedis };

async function connectAll({ kind, urls, count, offset = 0, concurrency = 100, firstKind }) {
  const started = now();
  let next = 0;
  const out = new Array(count);
  async function lane() {
    while (next < count) {
      const i = next++;
      const k = i === 0 && firstKind ? firstKind : kind;
      out[i] = await connectors[k](urls[(offset + i) % urls.length]);
      out[i].kind = k;
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, lane));
  subs = subs.concat(out);
  return now() - started;
}

process.on('message', async (msg) => {
  try {
    switch (msg.cmd) {
      case 'connect': {
        const ms = await connectAll(msg);
        process.send({ ev: 'connected', count: subs.length, ms });
        break;
      }
      case 'clock':
        process.send({ ev: 'clock', id: msg.id, t: now() });
        break;
      case 'round':
        round = { r: msg.r, n: msg.n, hist: new Histogram(), complete: 0, last: 0, stray: 0, dups: 0, gaps: 0 };
        for (const s of subs) {
          s.got = 0;
          s.seen = new Uint8Array(msg.n);
        }
        process.send({ ev: 'armed', r: msg.r });
        break;
      case 'report':
        finish();
        break;
      case 'close':
        for (const s of subs) s.close();
        setTimeout(() => process.exit(0), 200);
        break;
    }
  } catch (err) {
    process.send({ ev: 'error', message: String(err && err.stack ? err.stack : err) });
  }
});

process.on('disconnect', () => process.exit(0));
