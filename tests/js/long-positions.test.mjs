// Long positions behind proxies (issue 9, acceptance 6). A legal session - 64 channels (max_subscriptions) with
// 128-character names - spelled out in full has a 9.5 KB position: over nginx's default 8 KB limits a poll
// carrying it answers 414 and an SSE reconnect with it in Last-Event-ID answers 400. Positions write such names as
// keys (`~` and a 16-hex hash, docs/PROTOCOL.md), about 42 bytes per channel. Here two Redis-backed nodes run
// behind the shipped nginx template (nginx/gateway.conf) and the shipped HAProxy config (deploy/haproxy), and:
// - the real client, on each transport, subscribed to 64 long names, gets every message exactly once and in order
//   across the death of the node it is on (messages published meanwhile), resuming with its full position;
// - a poll carrying the full position answers 200, and an SSE attach with `Last-Event-ID: <session>;<position>`
//   answers 200 and resumes, where the spelled-out position is refused by nginx.
// Run: node --test tests/js/long-positions.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import WebSocket from "ws";
import { EventSource } from "eventsource";
import { Stickless } from "../../web/stickless.js";
import { formatPosition, parsePosition, positionKey } from "../../web/client/protocol.js";
import { REPO, startRedis, startGateway, startBalancer, freePort, getJson, postJson, waitFor, uniq } from "./harness.mjs";
import { startHaproxy } from "./haproxy.mjs";

const CHANNELS = 64; // the default max_subscriptions
const NAME_LEN = 128; // ChannelName::MAX_LEN
const POLL_TIMEOUT_MS = 1000;
// A test that cannot finish (an attach refused for good keeps the client retrying) fails instead of hanging.
const TEST_TIMEOUT = { timeout: 60000 };
const NODE_ARGS = ["--demo-ticker-ms", "0", "--poll-timeout-ms", String(POLL_TIMEOUT_MS)];

let redis;
/** The two nodes by id; a node killed by a test is started again on its port, under the same id. */
const nodes = {};
const ports = {};
const proxies = {};

async function startNode(id) {
  nodes[id] = await startGateway({ args: ["--node-id", id, "--redis-url", redis.url, ...NODE_ARGS], port: ports[id] });
}

before(async () => {
  redis = await startRedis();
  for (const id of ["n1", "n2"]) {
    ports[id] = await freePort();
    await startNode(id);
  }
  const servers = Object.keys(nodes).map((name) => ({ name, port: ports[name] }));
  proxies.nginx = await startBalancer({ nodes: Object.values(nodes) });
  proxies.haproxy = await startHaproxy({ servers });
  await everyNodeUp(proxies.haproxy);
});

after(async () => {
  for (const p of Object.values(proxies)) await p.stop();
  for (const n of Object.values(nodes)) await n.stop();
  await redis?.stop();
});

/** Waits until `proxy` sends traffic to both nodes again (HAProxy's checks; nginx has none to wait for). */
async function everyNodeUp(proxy) {
  if (!proxy.serverStatus) return;
  const up = async () => (await proxy.serverStatus("n1")) === "UP" && (await proxy.serverStatus("n2")) === "UP";
  await waitFor(up, 15000, "haproxy to mark both nodes UP", 100);
}

/** 64 distinct legal names of exactly 128 characters. */
function longNames(tag) {
  return Array.from({ length: CHANNELS }, (_, i) => `${tag}/${String(i).padStart(2, "0")}/`.padEnd(NAME_LEN, "x"));
}

/** Publishes `data` to every channel in one batch through `url`; resolves with the stored cursors by channel. */
async function publishAll(url, channels, data) {
  const { status, body } = await postJson(`${url}/v1/publish`, { messages: channels.map((channel) => ({ channel, data })) });
  assert.equal(status, 200, JSON.stringify(body));
  for (const r of body.results) assert.ok(r.offset > 0, `stored: ${JSON.stringify(r)}`);
  return new Map(body.results.map((r) => [r.channel, r]));
}

/** `promise`, or a rejection naming `what()` once `ms` have passed. */
function within(promise, ms, what) {
  let timer;
  const late = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`not ${what()} within ${ms} ms`)), ms)));
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Reads an SSE answer's events (parsed `data`) until `enough(events)`; rejects after `timeoutMs`. */
async function readEvents(res, enough, timeoutMs = 10000) {
  const events = [];
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  const timer = setTimeout(() => reader.cancel(), timeoutMs);
  let buf = "";
  try {
    while (!enough(events)) {
      const { value, done } = await reader.read();
      assert.ok(!done, `the stream ended (or ${timeoutMs} ms passed) after ${events.length} events`);
      buf += decoder.decode(value, { stream: true });
      for (let cut; (cut = buf.indexOf("\n\n")) >= 0; buf = buf.slice(cut + 2)) {
        const data = buf.slice(0, cut).split("\n").filter((l) => l.startsWith("data:"));
        if (data.length) events.push(JSON.parse(data.map((l) => l.slice(5).trim()).join("\n")));
      }
    }
    return events;
  } finally {
    clearTimeout(timer);
  }
}

/** [channel, cursor] pairs as a position with every name spelled out, as positions were written before keys. */
const spelledOut = (cursors) => [...cursors].map(([ch, c]) => `${ch}@${c.epoch}@${c.offset}`).join(",");

test("position keys: the JS client writes and reads the shared table's cases as the server does", () => {
  const { cases } = JSON.parse(readFileSync(join(REPO, "tests", "fixtures", "position-keys.json"), "utf8"));
  for (const { channel, written } of cases) {
    assert.equal(positionKey(channel), written, channel);
    assert.equal(formatPosition([[channel, { epoch: "e1", offset: 7 }]]), `${written}@e1@7`);
    assert.deepEqual(parsePosition(`${written}@e1@7`, [channel, "other"]), [[channel, { epoch: "e1", offset: 7 }]]);
  }
  assert.deepEqual(parsePosition("~0123456789abcdef@e1@7"), [["~0123456789abcdef", { epoch: "e1", offset: 7 }]], "an unknown key stays a key");
  const names = longNames("size");
  const text = formatPosition(names.map((n) => [n, { epoch: "0123456789abcdef", offset: 123456 }]));
  assert.equal(text.length, CHANNELS * 42 - 1, "42 bytes per channel");
});

for (const proxyName of ["nginx", "haproxy"]) {
  test(`${proxyName}: a poll with the full 64-channel position answers 200; an SSE attach with it in Last-Event-ID resumes`, TEST_TIMEOUT, async () => {
    const { url } = proxies[proxyName];
    await everyNodeUp(proxies[proxyName]);
    const names = longNames(uniq(`${proxyName}-wire`));
    const first = await getJson(`${url}/v1/poll`);
    assert.equal(first.status, 200, JSON.stringify(first.body));
    const session = first.body.session;
    const { status, body: acks } = await postJson(`${url}/v1/send?session=${session}`, names.map((channel, i) => ({ type: "subscribe", id: `s${i}`, channel })));
    assert.equal(status, 200, JSON.stringify(acks));
    assert.deepEqual(acks.map((a) => a.type), names.map(() => "ack"), JSON.stringify(acks.find((a) => a.type !== "ack")));

    // Offset 1 on every channel; a client position at offset 0, built by the client's own code.
    const stored = await publishAll(url, names, 1);
    const atZero = names.map((n) => [n, { epoch: stored.get(n).epoch, offset: 0 }]);
    const position = formatPosition(atZero);
    assert.ok(spelledOut(atZero).length > 9000, `spelled out: ${spelledOut(atZero).length} bytes`);
    assert.ok(position.length < CHANNELS * 42, `with keys: ${position.length} bytes`);
    const pollUrl = (p) => `${url}/v1/poll?${new URLSearchParams({ session, position: p })}`;
    if (proxyName === "nginx") {
      const refused = await getJson(pollUrl(spelledOut(atZero)));
      assert.equal(refused.status, 414, "the spelled-out position is over nginx's request-line limit (the control)");
    }

    // Each poll carries the whole position as it is now, as a long-polling client does.
    const got = [];
    let current = position;
    while (got.length < CHANNELS) {
      const poll = await getJson(pollUrl(current), { signal: AbortSignal.timeout(15000) });
      assert.equal(poll.status, 200, JSON.stringify(poll.body).slice(0, 500));
      assert.equal(poll.body.session, session);
      assert.ok(poll.body.frames.length, `no empty poll before all ${CHANNELS} messages came (${got.length} so far)`);
      got.push(...poll.body.frames.filter((f) => f.type === "message"));
      current = poll.body.position;
    }
    assert.deepEqual(got.map((f) => f.channel).sort(), [...names].sort(), "one message per channel, resumed from the position");
    assert.ok(got.every((f) => f.offset === 1 && f.data === 1));
    assert.ok(current.length < CHANNELS * 42, `the answer's position is written with keys (${current.length} bytes)`);
    const atOne = parsePosition(current, names);
    assert.deepEqual(new Map(atOne), new Map(names.map((n) => [n, { epoch: stored.get(n).epoch, offset: 1 }])));

    // Offset 2 on every channel, then an EventSource-style reconnect: no session in the URL, all in Last-Event-ID.
    await publishAll(url, names, 2);
    if (proxyName === "nginx") {
      const refused = await fetch(`${url}/v1/sse`, { headers: { "last-event-id": `${session};${spelledOut(atOne)}` } });
      await refused.arrayBuffer();
      assert.equal(refused.status, 400, "a spelled-out Last-Event-ID is over nginx's header limit (the control)");
    }
    const ac = new AbortController();
    const res = await fetch(`${url}/v1/sse`, { signal: ac.signal, headers: { accept: "text/event-stream", "last-event-id": `${session};${current}` } });
    try {
      assert.equal(res.status, 200, res.status === 200 ? "" : await res.text());
      const events = await readEvents(res, (ev) => ev.filter((e) => e.type === "message").length >= CHANNELS);
      assert.equal(events[0]?.type, "welcome");
      assert.equal(events[0].session, session, "the session named by Last-Event-ID");
      const messages = events.filter((e) => e.type === "message");
      assert.deepEqual(messages.map((m) => m.channel).sort(), [...names].sort(), "one message per channel");
      assert.ok(messages.every((m) => m.offset === 2 && m.data === 2), "resumed after offset 1: only offset 2");
    } finally {
      ac.abort();
    }
  });

  for (const transport of ["websocket", "sse", "long-polling"]) {
    test(`${proxyName}, ${transport}: the client on 64 long channels resumes with its full position across a node's death, each message once, in order`, TEST_TIMEOUT, async () => {
      const proxy = proxies[proxyName];
      await everyNodeUp(proxy);
      const names = longNames(uniq(`${proxyName}-${transport}`));
      const client = new Stickless({ url: proxy.url, transport, WebSocket, EventSource });
      const received = new Map(names.map((n) => [n, []]));
      const errors = [];
      let pollNode = null;
      client.on("message", (m) => received.get(m.channel)?.push(m));
      client.on("gap", (g) => errors.push(`gap ${JSON.stringify(g)}`));
      client.on("poll", (p) => (pollNode = p.node));
      let killed = null;
      try {
        // Subscribed before connecting: a new session's attach would name all 64 (8.3 KB), so they go after the welcome.
        const subscribed = names.map((n) => client.subscribe(n));
        await within(Promise.all([client.connect(), ...subscribed]), 10000, () => `connected and subscribed (${client.why})`);
        await publishAll(nodes.n1.url, names, 1);
        await waitFor(() => [...received.values()].every((r) => r.length >= 1), 15000, "offset 1 on every channel");
        assert.ok(client.position.length < CHANNELS * 42, `the client's position is written with keys (${client.position.length} bytes)`);
        assert.equal(parsePosition(client.position, names).length, CHANNELS);

        // The node the client is on dies; what is published meanwhile (on the other node) comes on the resume.
        killed = transport === "long-polling" ? pollNode : client.node;
        assert.ok(killed in nodes, `on a node: ${killed}`);
        const survivor = killed === "n1" ? nodes.n2 : nodes.n1;
        await nodes[killed].kill();
        await publishAll(survivor.url, names, 2);
        await publishAll(survivor.url, names, 3);
        await waitFor(() => [...received.values()].every((r) => r.length >= 3), 20000, "offsets 2 and 3 on every channel");
        if (transport !== "long-polling") {
          // (A poll cut by the death is retried by the proxy itself on the other node: no reconnect to see there.)
          assert.ok(client.reconnects >= 1, "the client reconnected");
          assert.notEqual(client.node, killed, "on the surviving node");
        }
        for (const [name, messages] of received) {
          assert.deepEqual(messages.map((m) => [m.offset, m.data]), [[1, 1], [2, 2], [3, 3]], `${name}: each message once, in order`);
        }
        assert.deepEqual(errors, []);
      } finally {
        client.close();
        if (killed) await startNode(killed);
      }
    });
  }
}
