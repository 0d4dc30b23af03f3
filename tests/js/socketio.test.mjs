// Socket.IO and stickless side by side behind the same nginx (nginx/gateway.conf), two nodes each sharing a Redis.
// The README's claim, proven: "Socket.IO cannot do this: behind round-robin its polling clients fail with
// 'Session ID unknown'".
//
// - Socket.IO 4 (tests/js/sio-server.mjs, two nodes on @socket.io/redis-adapter) behind round-robin: an Engine.IO
//   session lives in the memory of the node that answered the handshake, so every poll or send that nginx hands
//   to the other node is refused with HTTP 400 {"code":1,"message":"Session ID unknown"}, step by step with raw
//   requests and as socket.io-client's connect_error on every attempt. Hashing the session id (?sid=, as
//   BALANCE.sticky hashes stickless's ?session=) does not rescue it: the handshake carries no sid yet, so about
//   half the sessions are created on a node their sid does not hash to. Socket.IO needs affinity from the very
//   first request: behind `hash $remote_addr consistent;` (the nginx setup Socket.IO documents) clients from
//   different loopback addresses spread over both nodes, stay each on its own, and get every broadcast.
// - stickless (two nodes on one Redis) behind the same round-robin: every poll and send of one session goes to
//   the next node and is answered, and web/stickless.js over long-polling gets every message exactly once, in
//   order, with its polls served by both nodes.
// Run: node --test tests/js/socketio.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Agent } from "node:http";
import { join } from "node:path";
import { io as ioClient } from "socket.io-client";
import { WebSocket } from "ws";
import { EventSource } from "eventsource";
import { Stickless } from "../../web/stickless.js";
import { REPO, startRedis, startRedisNodes, startProcess, startBalancer, startNginx, freePort, publish, waitFor, getJson, postJson, sleep, uniq, tally } from "./harness.mjs";

const COUNT = 200;
const SESSION_ID_UNKNOWN = '{"code":1,"message":"Session ID unknown"}';
// Balancing directives for the Socket.IO nodes beside the harness's BALANCE (whose `sticky` hashes ?session=,
// which Socket.IO never sends): a hash of Engine.IO's ?sid=, and Socket.IO's documented nginx stickiness.
const BALANCE_SIO_SID = "hash $arg_sid consistent;";
const BALANCE_SIO_REMOTE_ADDR = "hash $remote_addr consistent;";

const started = []; // stopped last first
const clients = new Set();
let sio; // {redis, s1, s2, roundRobin, bySid, byAddr}
let sl; // {n1, n2, roundRobin}

function keep(p) {
  started.push(p);
  return p;
}

/** One Socket.IO node (tests/js/sio-server.mjs) on a free port, up once its Redis adapter is connected. */
async function startSioNode(id, redisUrl) {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const node = await startProcess({
    cmd: process.execPath,
    args: [join(REPO, "tests", "js", "sio-server.mjs")],
    env: { PORT: String(port), REDIS_URL: redisUrl, NODE_ID: id },
    what: `Socket.IO node ${id}`,
    ready: async () => {
      const res = await fetch(`${url}/health`);
      return res.ok && (await res.json()).node === id;
    },
  });
  return { ...node, id, port, url };
}

/** nginx/gateway.conf in front of `nodes` with an explicit balancing directive (not one of the harness's BALANCE). */
function startBalancerWith(nodes, directive) {
  return startNginx({
    template: "nginx/gateway.conf",
    vars: { UPSTREAMS: nodes.map((n) => `server 127.0.0.1:${n.port} max_fails=0;`).join(" "), BALANCE: directive },
  });
}

before(async () => {
  try {
    const redis = keep(await startRedis());
    const s1 = keep(await startSioNode("s1", redis.url));
    const s2 = keep(await startSioNode("s2", redis.url));
    sio = {
      redis,
      s1,
      s2,
      roundRobin: keep(await startBalancer({ nodes: [s1, s2], balance: "round-robin" })),
      bySid: keep(await startBalancerWith([s1, s2], BALANCE_SIO_SID)),
      byAddr: keep(await startBalancerWith([s1, s2], BALANCE_SIO_REMOTE_ADDR)),
    };
    const args = ["--demo-ticker-ms", "0", "--poll-timeout-ms", "1000"];
    const cluster = keep(await startRedisNodes({ n1: args, n2: args }));
    sl = { ...cluster.nodes, roundRobin: cluster.add(await startBalancer({ nodes: [cluster.nodes.n1, cluster.nodes.n2], balance: "round-robin" })) };
  } catch (err) {
    for (const p of started.splice(0).reverse()) await p.stop();
    throw err;
  }
});

after(async () => {
  for (const c of clients) c.close();
  for (const p of started.splice(0).reverse()) await p.stop();
});



// ---- Socket.IO ------------------------------------------------------------------------------------------------

/**
 * One raw Engine.IO v4 polling request through `base`: GET (a poll) or POST (`body`, packets to the server), with
 * `sid` once there is a session. Resolves with {status, node (the x-node answer header), text}.
 */
async function eio(base, { method = "GET", sid, body } = {}) {
  const query = new URLSearchParams({ EIO: "4", transport: "polling" });
  if (sid) query.set("sid", sid);
  const init = { method, signal: AbortSignal.timeout(40000) };
  if (body !== undefined) {
    init.body = body;
    init.headers = { "content-type": "text/plain;charset=UTF-8" };
  }
  const res = await fetch(`${base}/socket.io/?${query}`, init);
  return { status: res.status, node: res.headers.get("x-node"), text: await res.text() };
}

/** The Engine.IO handshake: GET without sid; answers `0{"sid":...}` from the node that now holds the session. */
async function eioHandshake(base) {
  const r = await eio(base);
  assert.equal(r.status, 200, `handshake: ${r.text}`);
  assert.match(r.text, /^0\{/, "an Engine.IO OPEN packet");
  const open = JSON.parse(r.text.slice(1));
  assert.ok(typeof open.sid === "string" && open.sid, `handshake sid: ${r.text}`);
  assert.ok(["s1", "s2"].includes(r.node), `handshake answered by a node: ${r.node}`);
  return { sid: open.sid, node: r.node, open };
}

function assertSessionIdUnknown(r, what) {
  assert.equal(r.status, 400, `${what}: status (answered by ${r.node}: ${r.text})`);
  assert.equal(r.text, SESSION_ID_UNKNOWN, `${what}: body`);
  assert.deepEqual(JSON.parse(r.text), { code: 1, message: "Session ID unknown" });
}

/** How many requests naming `sid` each Socket.IO node answered, by status: {s1: {"200": n}, s2: {"400": m}}. */
async function sioRequests(sid) {
  const out = {};
  for (const n of [sio.s1, sio.s2]) out[n.id] = (await getJson(`${n.url}/requests?sid=${encodeURIComponent(sid)}`)).body.statuses;
  return out;
}

/** A socket.io-client (polling only) through `url`, closed after the test. */
function sioClient(url, options = {}) {
  const s = ioClient(url, { transports: ["polling"], forceNew: true, ...options });
  clients.add(s);
  return s;
}

test("Socket.IO behind round-robin: raw Engine.IO v4 polling, every request on the other node gets 400 Session ID unknown", async () => {
  const base = sio.roundRobin.url;
  const hs = await eioHandshake(base);
  const other = hs.node === "s1" ? "s2" : "s1";
  const log = [`GET (handshake) -> ${hs.node} 200`];
  const refused = { GET: 0, POST: 0 };

  // Socket.IO CONNECT to the main namespace ("40"), repeated until the session's own node takes it.
  let connected = false;
  for (let k = 0; k < 10 && !connected; k++) {
    const r = await eio(base, { method: "POST", sid: hs.sid, body: "40" });
    log.push(`POST 40 -> ${r.node} ${r.status} ${r.text}`);
    if (r.node === other) {
      assertSessionIdUnknown(r, `POST on ${other}, which did not answer the handshake`);
      refused.POST++;
    } else {
      assert.equal(r.node, hs.node);
      assert.deepEqual([r.status, r.text], [200, "ok"], "the session's own node takes the CONNECT");
      connected = true;
    }
  }
  assert.ok(connected, `the CONNECT reached the session's node: ${log.join("; ")}`);

  // Polls until the session's own node answers with the CONNECT reply (it is queued there, so that poll is not held).
  let reply = null;
  for (let k = 0; k < 10 && !reply; k++) {
    const r = await eio(base, { sid: hs.sid });
    log.push(`GET -> ${r.node} ${r.status} ${r.text.replace(/\x1e/g, "\\x1e")}`);
    if (r.node === other) {
      assertSessionIdUnknown(r, `poll on ${other}, which did not answer the handshake`);
      refused.GET++;
    } else {
      assert.equal(r.status, 200, r.text);
      assert.match(r.text, /^40\{"sid":"[^"]+"\}(\x1e|$)/, "the CONNECT reply from the session's node (then its `welcome` event)");
      reply = r.text;
    }
  }
  assert.ok(reply, `a poll reached the session's node: ${log.join("; ")}`);
  // Round-robin alternates: the other node got a send and a poll of this session, and refused both.
  assert.ok(refused.POST >= 1 && refused.GET >= 1, `both a send and a poll refused by ${other}: ${log.join("; ")}`);
  const seen = await sioRequests(hs.sid);
  assert.deepEqual(Object.keys(seen[other]), ["400"], `${other} answered this session only with 400: ${JSON.stringify(seen)}`);
  assert.deepEqual(Object.keys(seen[hs.node]), ["200"], `${hs.node} answered it only with 200: ${JSON.stringify(seen)}`);
  console.log(`# Socket.IO behind round-robin: ${log.join("; ")}`);
});

test("Socket.IO behind round-robin: socket.io-client (polling) never connects, every attempt ends in 400 Session ID unknown", { timeout: 60000 }, async () => {
  const ATTEMPTS = 6;
  // Each handshake succeeds, so the Manager counts every attempt as a successful reconnection and resets its
  // backoff: reconnectionAttempts never runs out and the client would loop for ever. Watch ATTEMPTS, then close.
  const s = sioClient(sio.roundRobin.url, { reconnectionDelay: 100, reconnectionDelayMax: 200, randomizationFactor: 0 });
  const errors = [];
  const sids = [];
  const disconnects = [];
  let connects = 0;
  let welcomes = 0;
  s.on("connect", () => connects++);
  s.on("welcome", () => welcomes++);
  // Read at once: after the event, engine.io-client aborts the request, which empties the XHR's status and text.
  s.on("connect_error", (err) =>
    errors.push({
      type: err.type,
      message: err.message,
      description: err.description,
      status: err.context?.status,
      body: err.context?.responseText,
      node: err.context?.getResponseHeader?.("x-node"),
    }),
  );
  s.on("disconnect", (reason) => disconnects.push(reason));
  s.io.on("open", () => sids.push(s.io.engine.id));
  await waitFor(() => errors.length >= ATTEMPTS, 45000, `${ATTEMPTS} connect attempts (have ${errors.length})`);
  s.close();
  await sleep(300); // nothing late: no connect after all

  assert.equal(connects, 0, "never connected");
  assert.equal(welcomes, 0, "no event ever reached the client");
  assert.equal(s.connected, false);
  // Every attempt got through the handshake (an Engine.IO session was created on one node) and then died.
  assert.equal(sids.length, errors.length, `one handshake per attempt: ${sids.length} handshakes, ${errors.length} errors`);
  assert.equal(new Set(sids).size, sids.length, "a new Engine.IO session each time");
  assert.ok(disconnects.length >= ATTEMPTS && disconnects.every((r) => r === "transport error" || r === "io client disconnect"), `disconnect reasons: ${disconnects}`);
  for (const err of errors) {
    assert.equal(err.type, "TransportError");
    assert.match(err.message, /^xhr (post|poll) error$/);
    assert.equal(err.description, 400, "HTTP status of the refused request");
    assert.equal(err.status, 400);
    assert.equal(err.body, SESSION_ID_UNKNOWN);
    assert.ok(["s1", "s2"].includes(err.node), `refused by a node: ${err.node}`);
  }
  // Server side: each of those sessions was refused (400) by exactly one node, the one that did not create it.
  for (const sid of sids) {
    const seen = await sioRequests(sid);
    const refusedBy = Object.keys(seen).filter((n) => seen[n]["400"] > 0);
    assert.equal(refusedBy.length, 1, `one node refused session ${sid}: ${JSON.stringify(seen)}`);
  }
  const kinds = tally(errors.map((e) => e.message));
  console.log(`# socket.io-client behind round-robin: ${errors.length} attempts, 0 connects; connect_error ${JSON.stringify(kinds)}, each HTTP ${errors[0].status} ${errors[0].body} (refused by ${JSON.stringify(tally(errors.map((e) => e.node)))})`);
});

test("Socket.IO behind a hash of ?sid=: the handshake has no sid, so sessions created on the node their sid does not hash to die", async () => {
  const base = sio.bySid.url;
  const outcome = { ok: 0, refused: 0 };
  for (let k = 0; k < 16; k++) {
    const hs = await eioHandshake(base); // no ?sid= yet: nginx balances it round-robin
    const r = await eio(base, { method: "POST", sid: hs.sid, body: "40" }); // hashed by sid: always to one node
    if (r.node === hs.node) {
      assert.deepEqual([r.status, r.text], [200, "ok"]);
      outcome.ok++;
    } else {
      assertSessionIdUnknown(r, `session created on ${hs.node}, its sid hashes to ${r.node}`);
      outcome.refused++;
    }
  }
  // Each session is a coin flip (2 nodes): 16 never all land right by chance (p = 2^-16).
  assert.ok(outcome.refused > 0, `some sessions refused: ${JSON.stringify(outcome)}`);
  console.log(`# Socket.IO behind hash $arg_sid: ${JSON.stringify(outcome)} of 16 sessions`);
});

test(`Socket.IO behind sticky (hash $remote_addr): clients spread over both nodes, each stays on its own, ${COUNT} broadcasts exactly once in order`, { timeout: 90000 }, async () => {
  const room = uniq("room");
  const members = [];
  // Clients from different loopback addresses (127.0.0.2, .3, ...): nginx hashes each address onto one node.
  for (let k = 2; k <= 60 && !(members.length >= 4 && new Set(members.map((m) => m.node)).size === 2); k++) {
    const agent = new Agent({ keepAlive: true, localAddress: `127.0.0.${k}` });
    const s = sioClient(sio.byAddr.url, { agent, reconnection: false });
    const got = [];
    s.on("message", (m) => got.push(m));
    const welcome = await new Promise((resolve, reject) => {
      s.once("welcome", resolve);
      s.once("connect_error", (err) => reject(new Error(`client from 127.0.0.${k}: connect_error ${err.message} ${err.context?.responseText || ""}`)));
    });
    assert.ok(s.connected);
    const joined = await s.timeout(10000).emitWithAck("join", room);
    assert.deepEqual(joined, { node: welcome.node, room });
    members.push({ s, agent, got, node: welcome.node, sid: s.io.engine.id, address: `127.0.0.${k}` });
  }
  const t = tally(members.map((m) => m.node));
  assert.ok(t.s1 > 0 && t.s2 > 0, `clients on both nodes: ${JSON.stringify(t)}`);

  // A backend broadcasts through one node; the Redis adapter carries it to the clients of the other. (Socket.IO
  // orders messages per emitting node only, so one publisher keeps the order assertable.)
  for (let i = 1; i <= COUNT; i++) {
    const { status, body } = await postJson(`${sio.s1.url}/publish?room=${encodeURIComponent(room)}`, { i });
    assert.equal(status, 200, JSON.stringify(body));
    if (i % 20 === 0) await sleep(5);
  }
  await waitFor(() => members.every((m) => m.got.length >= COUNT), 30000, `${COUNT} messages on every client`);
  await sleep(200); // no late duplicates
  for (const m of members) {
    assert.deepEqual(
      m.got.map((x) => x.i),
      Array.from({ length: COUNT }, (_, k) => k + 1),
      `client ${m.address} on ${m.node}: 1..${COUNT} once each, in order`,
    );
    assert.ok(m.s.connected, `client ${m.address} still connected`);
    // Every request of its Engine.IO session went to its own node, and all were answered.
    const seen = await sioRequests(m.sid);
    const other = m.node === "s1" ? "s2" : "s1";
    assert.deepEqual(seen[other], {}, `no request of ${m.address}'s session on ${other}: ${JSON.stringify(seen)}`);
    assert.deepEqual(Object.keys(seen[m.node]), ["200"], `only 200s on ${m.node}: ${JSON.stringify(seen)}`);
    assert.ok(seen[m.node]["200"] >= 3, `several polls and sends on ${m.node}: ${JSON.stringify(seen)}`);
  }
  for (const m of members) {
    m.s.close();
    m.agent.destroy();
  }
  console.log(`# Socket.IO behind hash $remote_addr: ${members.length} clients ${JSON.stringify(t)}, ${COUNT} messages each`);
});

// ---- stickless ------------------------------------------------------------------------------------------------

test("stickless behind round-robin: raw long-polling, a session's polls and sends land on both nodes and every one is answered", async () => {
  const base = sl.roundRobin.url;
  const channel = uniq("raw");
  const first = await getJson(`${base}/v1/poll`);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  const session = first.body.session;
  assert.ok(first.body.frames.some((f) => f.type === "welcome" && f.session === session), "welcome in the first poll");
  let position = first.body.position || "";
  const nodes = [first.body.node];
  const log = [`GET /v1/poll -> ${first.body.node} 200 (session created)`];

  const sub = await postJson(`${base}/v1/send?session=${session}`, [{ type: "subscribe", id: "sub-1", channel }]);
  assert.equal(sub.status, 200, JSON.stringify(sub.body));
  assert.equal(sub.body[0]?.type, "ack", JSON.stringify(sub.body));
  log.push("POST /v1/send subscribe -> 200 ack");

  const offsets = [];
  for (let k = 1; k <= 6; k++) {
    // Published first (alternating the node it is published to): each poll finds a message and answers at once.
    await publish(k % 2 ? sl.n1.url : sl.n2.url, channel, { i: k });
    const q = new URLSearchParams({ session });
    if (position) q.set("position", position);
    const r = await getJson(`${base}/v1/poll?${q}`, { signal: AbortSignal.timeout(15000) });
    assert.equal(r.status, 200, `poll ${k}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.session, session);
    position = r.body.position;
    nodes.push(r.body.node);
    log.push(`GET /v1/poll?session -> ${r.body.node} 200`);
    for (const f of r.body.frames) if (f.type === "message" && f.channel === channel) offsets.push(f.offset);
  }
  assert.deepEqual(offsets, [1, 2, 3, 4, 5, 6], "each message once, in order");
  const t = tally(nodes);
  assert.ok(t.n1 > 0 && t.n2 > 0, `the session's polls answered by both nodes: ${JSON.stringify(t)}`);
  console.log(`# stickless behind round-robin: ${log.join("; ")}`);
});

test(`stickless behind round-robin: web/stickless.js over long-polling gets ${COUNT} messages exactly once in order, polls on both nodes`, { timeout: 120000 }, async () => {
  const channel = uniq("lp");
  const c = new Stickless({ url: sl.roundRobin.url, transport: "long-polling", WebSocket, EventSource, fetch: globalThis.fetch, storage: null });
  clients.add(c);
  const got = [];
  const polls = [];
  const errors = [];
  c.on("message", (m) => m.channel === channel && got.push(m));
  c.on("poll", (p) => polls.push(p.node));
  c.on("error", (e) => errors.push(e));
  await c.connect();
  assert.equal(c.transport, "long-polling");
  const session = c.sessionId;
  const sub = await c.subscribe(channel);
  assert.equal(sub.offset, 0);

  for (let i = 1; i <= COUNT; i++) {
    const ack = await publish(i % 2 ? sl.n1.url : sl.n2.url, channel, { i });
    assert.equal(ack.offset, i, `publish #${i} stored at offset ${i}`);
    if (i % 10 === 0) await sleep(5);
  }
  await waitFor(() => got.some((m) => m.offset >= COUNT), 60000, `offset ${COUNT} (have ${got.length})`);
  await sleep(1500); // one more empty poll round: no late duplicate
  assert.deepEqual(
    got.map((m) => m.offset),
    Array.from({ length: COUNT }, (_, k) => k + 1),
    "offsets 1..COUNT, once each, in order",
  );
  for (const m of got) assert.equal(m.data?.i, m.offset, `data of offset ${m.offset}`);
  assert.equal(new Set(got.map((m) => m.epoch)).size, 1, "one epoch throughout");
  assert.ok(got.every((m) => m.transport === "long-polling"));
  assert.equal(c.sessionId, session, "the same session throughout");
  assert.equal(c.reconnects, 0, "never reconnected");
  assert.deepEqual(errors, []);
  const t = tally(polls);
  assert.ok(t.n1 > 0 && t.n2 > 0, `polls served by both nodes: ${JSON.stringify(t)}`);
  assert.deepEqual(Object.keys(t).sort(), ["n1", "n2"]);
  c.close();
  console.log(`# web/stickless.js behind round-robin: ${COUNT} messages, ${polls.length} polls ${JSON.stringify(t)}`);
});
