// The shipped HAProxy config (deploy/haproxy/haproxy.cfg), run by a real haproxy (Debian's package) in front of
// two Redis-backed gateway nodes, round-robin, with the same long-polling workload as tests/js/nginx.test.mjs: one
// session's polls spread over both nodes and every message arrives once, in order. SSE and WebSocket go through
// it too; the health checks on /readyz take a node that is not ready (or stopped) out of rotation; and with the
// gateway's default hold and heartbeat, a poll, an SSE stream and a WebSocket outlive them through HAProxy.
// Run: node --test tests/js/haproxy.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, connect as tcpConnect } from "node:net";
import { createServer as createHttpServer, get as httpGet } from "node:http";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import WebSocket from "ws";
import { startRedis, startGateway, publish, getJson, sleep, waitFor, freePort, makeTempDir, uniq, tally } from "./harness.mjs";
import { HAPROXY_CFG, startHaproxy, haproxyTimeouts } from "./haproxy.mjs";
import { COUNT, POLL_TIMEOUT_MS, openSession, nextPoll, longPollRun, assertExactlyOnceInOrder } from "./long-polling.mjs";

let redis, link, n1, n2, hp;
// A node with the gateway's default hold and heartbeat and a connect hook, behind its own haproxy.
let nd, hpd, hook;

/**
 * A TCP relay to Redis that can be taken down and brought back on the same port: n2 reaches Redis only through
 * it, so down() makes n2 not ready (its /readyz answers 503) while the process still serves /healthz.
 */
async function startLink(targetPort) {
  const port = await freePort();
  const conns = new Set();
  let server = null;
  const up = () =>
    new Promise((resolve, reject) => {
      server = createServer((client) => {
        const upstream = tcpConnect(targetPort, "127.0.0.1");
        conns.add(client).add(upstream);
        const end = () => {
          conns.delete(client);
          conns.delete(upstream);
          client.destroy();
          upstream.destroy();
        };
        client.pipe(upstream);
        upstream.pipe(client);
        for (const s of [client, upstream]) {
          s.on("error", end);
          s.on("close", end);
        }
      });
      server.once("error", reject);
      server.listen(port, "127.0.0.1", resolve);
    });
  const down = () =>
    new Promise((resolve) => {
      const s = server;
      server = null;
      for (const c of conns) c.destroy();
      s ? s.close(() => resolve()) : resolve();
    });
  await up();
  return { url: `redis://127.0.0.1:${port}`, up, down };
}

/** A connect hook that lets everyone in and remembers the client address the gateway saw for each request. */
async function startHook() {
  const ips = [];
  const server = createHttpServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      const msg = JSON.parse(body);
      if (msg.type === "connect") ips.push(msg.client?.ip ?? null);
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify(msg.type === "connect" ? { allow: true, user: { sub: "u1", exp: Math.floor(Date.now() / 1000) + 3600 } } : { allow: true }));
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${server.address().port}/hook`, ips, stop: () => new Promise((r) => server.close(() => r())) };
}

before(async () => {
  redis = await startRedis();
  link = await startLink(redis.port);
  const args = ["--demo-ticker-ms", "0", "--poll-timeout-ms", String(POLL_TIMEOUT_MS)];
  n1 = await startGateway({ args: ["--node-id", "n1", "--redis-url", redis.url, ...args] });
  n2 = await startGateway({ args: ["--node-id", "n2", "--redis-url", link.url, ...args] });
  hp = await startHaproxy({ servers: [{ name: "n1", port: n1.port }, { name: "n2", port: n2.port }] });
  hook = await startHook();
  nd = await startGateway({
    args: ["--node-id", "nd", "--redis-url", redis.url, "--demo-ticker-ms", "0", "--hook-url", hook.url, "--hook-connect", "true", "--allowed-origins", "https://app.example", "--trusted-proxies", "127.0.0.1"],
  });
  hpd = await startHaproxy({ servers: [{ name: "nd", port: nd.port }] });
  await waitFor(async () => (await hp.serverStatus("n1")) === "UP" && (await hp.serverStatus("n2")) === "UP" && (await hpd.serverStatus("nd")) === "UP", 15000, "haproxy's checks to mark every node UP");
});

after(async () => {
  for (const p of [hpd, hp, nd, n2, n1]) await p?.stop();
  await link?.down();
  await redis?.stop();
  await hook?.stop();
});



async function openSse(url) {
  const ac = new AbortController();
  const res = await fetch(url, { signal: ac.signal, headers: { accept: "text/event-stream" } });
  const stream = { status: res.status, headers: res.headers, events: [], comments: [], done: false, close: () => ac.abort() };
  if (res.status !== 200) {
    stream.body = await res.text();
    return stream;
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  stream.finished = (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) stream.comments.push(line.slice(1).trim());
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length) stream.events.push(JSON.parse(data.join("\n")));
        }
      }
    } catch (_) {
      // aborted
    }
    stream.done = true;
  })();
  return stream;
}

/** A WebSocket that collects parsed frames: {ws, frames, closed: promise of {code}}. */
async function openWs(url) {
  const ws = new WebSocket(url);
  const frames = [];
  ws.on("message", (d) => frames.push(JSON.parse(d.toString())));
  const closed = new Promise((resolve) => ws.on("close", (code) => resolve({ code })));
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  return { ws, frames, closed };
}

const wsUrl = (base) => base.replace(/^http/, "ws");

// --- the tests --------------------------------------------------------------------------------------------------

test("the shipped haproxy.cfg is valid as is, round-robin without affinity, timeouts above the gateway's hold and heartbeat", async () => {
  const text = readFileSync(HAPROXY_CFG, "utf8");
  const dir = makeTempDir("stickless-haproxy-check-");
  const out = await new Promise((resolve) =>
    execFile("haproxy", ["-c", "-f", HAPROXY_CFG], { env: { ...process.env, HAPROXY_RUN_DIR: dir }, timeout: 15000 }, (err, stdout, stderr) => resolve({ code: err ? err.code : 0, text: stdout + stderr })),
  );
  assert.equal(out.code, 0, `haproxy -c: ${out.text}`);
  assert.match(out.text, /Configuration file is valid/);

  const live = text.replace(/#.*$/gm, "");
  assert.match(live, /^\s*balance\s+roundrobin\s*$/m);
  for (const sticky of [/^\s*cookie\s/m, /^\s*stick\S*\s/m, /prefer-last-server/, /^\s*balance\s+(source|uri|url_param|hdr|rdp-cookie)/m, /on-marked-down\s+shutdown-sessions/]) {
    assert.doesNotMatch(live, sticky, `no affinity or session cutting: ${sticky}`);
  }
  assert.match(live, /http-check send meth GET uri \/readyz\b/, "health checks GET /readyz");
  assert.match(live, /^\s*option forwardfor\b/m);
  assert.doesNotMatch(live, /^\s*compression\s/m, "no compression (it would buffer SSE)");

  // The gateway's defaults, as a node without overrides announces them.
  const { body: neg } = await getJson(`${nd.url}/v1/negotiate`);
  const t = haproxyTimeouts(text);
  const margin = 5000;
  for (const k of ["client", "server"]) {
    assert.ok(t[k] >= neg.poll_timeout_ms + margin, `timeout ${k} ${t[k]} ms above the poll hold ${neg.poll_timeout_ms} ms`);
    assert.ok(t[k] >= neg.heartbeat_ms + margin, `timeout ${k} ${t[k]} ms above the heartbeat ${neg.heartbeat_ms} ms`);
  }
  assert.ok(t.tunnel >= neg.heartbeat_ms + margin, `timeout tunnel ${t.tunnel} ms above the heartbeat`);
  assert.ok(t.check >= 2000, `timeout check ${t.check} ms leaves /readyz its 1 s Redis bound`);
});

test(`round-robin: ${COUNT} long-polled messages exactly once in order, polls served by both nodes`, async () => {
  const { messages, polls } = await longPollRun(hp.url, { publishTo: (i) => (i % 2 ? n1.url : n2.url) });
  assertExactlyOnceInOrder(messages);
  const t = tally(polls);
  assert.deepEqual(Object.keys(t).sort(), ["n1", "n2"], `polls on both n1 and n2 (${JSON.stringify(t)})`);
});

test("SSE through haproxy: streams land on both nodes, events arrive one by one (no buffering), once and in order", async () => {
  const channel = uniq("sse");
  const streams = [];
  try {
    for (let k = 0; k < 4; k++) streams.push(await openSse(`${hp.url}/v1/sse?channels=${channel}`));
    for (const s of streams) {
      assert.equal(s.status, 200, s.body);
      assert.match(s.headers.get("content-type") || "", /^text\/event-stream/);
      assert.equal(s.headers.get("content-encoding"), null, "not compressed");
    }
    await waitFor(() => streams.every((s) => s.events[0]?.type === "welcome"), 5000, "a welcome on every stream");
    const nodes = tally(streams.map((s) => s.events[0].node));
    assert.deepEqual(Object.keys(nodes).sort(), ["n1", "n2"], `streams on both nodes (${JSON.stringify(nodes)})`);

    const messagesOf = (s) => s.events.filter((e) => e.type === "message" && e.channel === channel);
    // One at a time: the next is published only once every stream has the previous one. A buffering proxy would
    // hold these small events back and time this out.
    for (let i = 1; i <= 20; i++) {
      const sentAt = Date.now();
      await publish(i % 2 ? n1.url : n2.url, channel, { i });
      await waitFor(() => streams.every((s) => messagesOf(s).length >= i), 2000, `event #${i} on every stream within 2 s`, 5);
      assert.ok(Date.now() - sentAt < 2000);
    }
    // Then a burst.
    for (let i = 21; i <= 120; i++) await publish(i % 2 ? n1.url : n2.url, channel, { i });
    await waitFor(() => streams.every((s) => messagesOf(s).length >= 120), 10000, "120 events on every stream");
    for (const s of streams) assertExactlyOnceInOrder(messagesOf(s), 120);
  } finally {
    for (const s of streams) s.close();
  }
});

test("WebSocket through haproxy: sockets land on both nodes, messages once and in order, publishes over the socket acked", async () => {
  const channel = uniq("ws");
  const sockets = [];
  try {
    for (let k = 0; k < 4; k++) sockets.push(await openWs(`${wsUrl(hp.url)}/v1/ws?channels=${channel}`));
    await waitFor(() => sockets.every((s) => s.frames[0]?.type === "welcome"), 5000, "a welcome on every socket");
    const nodes = tally(sockets.map((s) => s.frames[0].node));
    assert.deepEqual(Object.keys(nodes).sort(), ["n1", "n2"], `sockets on both nodes (${JSON.stringify(nodes)})`);

    // Half the messages from a backend (alternating nodes), half from a client over its own socket.
    const sender = sockets[0];
    for (let i = 1; i <= 100; i++) {
      if (i % 2) await publish(i % 4 === 1 ? n1.url : n2.url, channel, { i });
      else {
        sender.ws.send(JSON.stringify({ type: "publish", id: `p${i}`, channel, data: { i } }));
        await waitFor(() => sender.frames.find((f) => f.type === "ack" && f.id === `p${i}`), 5000, `ack of p${i}`, 5);
      }
    }
    const messagesOf = (s) => s.frames.filter((f) => f.type === "message" && f.channel === channel);
    await waitFor(() => sockets.every((s) => messagesOf(s).length >= 100), 10000, "100 messages on every socket");
    for (const s of sockets) assertExactlyOnceInOrder(messagesOf(s), 100);
    assert.deepEqual(
      sender.frames.filter((f) => f.type === "error"),
      [],
      "no error frames",
    );
  } finally {
    for (const s of sockets) s.ws.close();
  }
});

test("health checks: a node that is not ready (Redis unreachable, process alive) leaves the rotation and returns", async () => {
  await link.down();
  const cutAt = Date.now();
  try {
    await waitFor(async () => (await getJson(`${n2.url}/readyz`)).status === 503, 10000, "n2's /readyz to answer 503");
    const { status: live } = await getJson(`${n2.url}/healthz`);
    assert.equal(live, 200, "n2 still serves (/healthz 200): only an HTTP check on /readyz can tell");
    await waitFor(async () => (await hp.serverStatus("n2"))?.startsWith("DOWN"), 15000, "haproxy to mark n2 DOWN", 100);
    const outAfter = Date.now() - cutAt;
    assert.ok(outAfter < 15000, `n2 out of rotation ${outAfter} ms after losing Redis`);

    // Every request now goes to n1: polls, sends and publishes through haproxy all succeed.
    const { messages, polls } = await longPollRun(hp.url, { count: 60, publishTo: () => hp.url });
    assertExactlyOnceInOrder(messages, 60);
    assert.deepEqual(tally(polls), { n1: polls.length }, "every poll on n1");
  } finally {
    await link.up();
  }
  await waitFor(async () => (await hp.serverStatus("n2")) === "UP", 20000, "n2 back UP once Redis is reachable again", 100);
  const { messages, polls } = await longPollRun(hp.url, { count: 60, publishTo: (i) => (i % 2 ? n1.url : n2.url) });
  assertExactlyOnceInOrder(messages, 60);
  assert.deepEqual(Object.keys(tally(polls)).sort(), ["n1", "n2"], `polls spread again (${JSON.stringify(tally(polls))})`);
});

test("a node stopped with SIGTERM: it drains and leaves the rotation, and no poll through haproxy fails", async () => {
  // A session in mid-flight when n2 stops.
  const channel = uniq("stop");
  const s = await openSession(hp.url, { channels: channel });
  const signalledAt = Date.now();
  n2.proc.kill("SIGTERM");
  // While n2 drains (503 `draining` to new attaches, for its drain window), once haproxy marks it DOWN, and after
  // it has exited (connections refused): every poll is answered, by n1 (HAProxy retries a 503 or a refused GET
  // on the next node).
  const failures = [];
  const polls = [];
  let down = null;
  let exited = null;
  n2.proc.exited.then((r) => (exited = { ...r, afterMs: Date.now() - signalledAt }));
  let extra = 10;
  for (let i = 1; extra > 0; i++) {
    assert.ok(Date.now() - signalledAt < 60000, `n2 down (${down}) and exited (${JSON.stringify(exited)}) within 60 s`);
    await publish(hp.url, channel, { i });
    try {
      const body = await nextPoll(hp.url, s);
      polls.push(body.node);
      assert.deepEqual(
        body.frames.map((f) => f.data?.i),
        [i],
        `poll #${i} carries message #${i}`,
      );
    } catch (err) {
      failures.push(`#${i} (${Date.now() - signalledAt} ms after SIGTERM): ${err.message}`);
    }
    if (down === null && (await hp.serverStatus("n2"))?.startsWith("DOWN")) down = Date.now() - signalledAt;
    if (down !== null && exited) extra--;
    await sleep(100);
  }
  assert.deepEqual(failures, [], "every poll answered");
  assert.ok(down < 10000, `haproxy took n2 out ${down} ms after SIGTERM`);
  assert.equal(exited.code, 0, `n2 exits 0 (${JSON.stringify(exited)})`);
  const t = tally(polls);
  assert.ok(polls.length >= 20 && t.n1 >= polls.length - 1, `polls answered by n1 (${JSON.stringify(t)}; at most the first by n2)`);
  const retried = (await hp.stat()).find((r) => r.pxname === "stickless" && r.svname === "BACKEND");
  console.log(`n2: DOWN after ${down} ms, exited after ${exited.afterMs} ms; ${polls.length} polls ${JSON.stringify(t)}; haproxy retries ${retried?.wretr}, redispatches ${retried?.wredis}`);
});

test("default hold and heartbeat through haproxy: a 25 s poll, an idle SSE stream and an idle WebSocket all survive", async () => {
  const { body: neg } = await getJson(`${nd.url}/v1/negotiate`);
  assert.equal(neg.poll_timeout_ms, 25000, "nd runs the default poll hold");
  const channel = uniq("idle");
  const s = await openSession(hpd.url, { channels: channel });
  const sse = await openSse(`${hpd.url}/v1/sse?channels=${channel}`);
  const sock = await openWs(`${wsUrl(hpd.url)}/v1/ws?channels=${channel}`);
  try {
    const started = Date.now();
    const held = await nextPoll(hpd.url, s, neg.poll_timeout_ms);
    const heldMs = Date.now() - started;
    assert.deepEqual(held.frames, [], "the poll waited out its hold and answered empty");
    assert.ok(heldMs >= neg.poll_timeout_ms - 1000, `the poll was held ${heldMs} ms`);
    // Longer than one heartbeat: both streams got one and are still open.
    assert.ok(sse.comments.includes("hb"), `an SSE heartbeat comment (${JSON.stringify(sse.comments.slice(-3))})`);
    assert.equal(sse.done, false, "the SSE stream is still open");
    assert.ok(sock.frames.some((f) => f.type === "heartbeat"), "a WebSocket heartbeat frame");
    assert.equal(sock.ws.readyState, WebSocket.OPEN, "the WebSocket is still open");
    // And both still deliver.
    await publish(nd.url, channel, { after: "idle" });
    await waitFor(() => sse.events.some((e) => e.type === "message" && e.data?.after === "idle"), 3000, "the SSE stream to deliver after idling");
    await waitFor(() => sock.frames.some((f) => f.type === "message" && f.data?.after === "idle"), 3000, "the WebSocket to deliver after idling");
  } finally {
    sse.close();
    sock.ws.close();
  }
});

test("X-Forwarded-For: the gateway (trusting haproxy) sees the client's address, not haproxy's and not a forged one", async () => {
  const before = hook.ips.length;
  // From 127.0.0.2 (a second loopback address), with a forged header: HAProxy replaces it with the address it saw.
  const status = await new Promise((resolve, reject) => {
    const req = httpGet(`${hpd.url}/v1/poll?channels=${uniq("xff")}`, { localAddress: "127.0.0.2", headers: { "x-forwarded-for": "203.0.113.9" } }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
    });
    req.on("error", reject);
    req.setTimeout(10000, () => req.destroy(new Error("timeout")));
  });
  assert.equal(status, 200);
  assert.deepEqual(hook.ips.slice(before), ["127.0.0.2"], "the connect hook saw the client's address");
});
