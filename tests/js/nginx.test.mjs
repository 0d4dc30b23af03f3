// Sticky and non-sticky side by side: the same two Redis-backed gateway nodes behind two nginx instances rendered
// from nginx/gateway.conf, one round-robin (no affinity) and one sticky (a consistent hash of ?session=). A plain
// long-polling client (fetch against /v1/poll and /v1/send) gets every message exactly once and in order through
// both; the `node` each poll answer names shows where nginx sent that poll.
// Run: node --test tests/js/nginx.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startRedisNodes, startBalancer, publish, getJson, postJson, sleep, uniq, tally } from "./harness.mjs";

const COUNT = 300;
// Short poll hold: after the last message, one more poll must come back empty (nothing delivered twice) quickly.
const POLL_TIMEOUT_MS = 1000;

let cluster, n1, n2, proxies;

before(async () => {
  const args = ["--demo-ticker-ms", "0", "--poll-timeout-ms", String(POLL_TIMEOUT_MS)];
  cluster = await startRedisNodes({ n1: args, n2: args });
  ({ n1, n2 } = cluster.nodes);
  proxies = {
    "round-robin": cluster.add(await startBalancer({ nodes: [n1, n2], balance: "round-robin" })),
    sticky: cluster.add(await startBalancer({ nodes: [n1, n2], balance: "sticky" })),
  };
});

after(async () => {
  await cluster?.stop();
});


/** GET /v1/poll through `base`; resolves with the answer {node, session, position, frames}. */
async function poll(base, query) {
  const { status, body } = await getJson(`${base}/v1/poll?${new URLSearchParams(query)}`, { signal: AbortSignal.timeout(POLL_TIMEOUT_MS + 15000) });
  assert.equal(status, 200, `poll ${JSON.stringify(query)}: ${JSON.stringify(body)}`);
  assert.ok(typeof body.node === "string" && Array.isArray(body.frames), `poll answer: ${JSON.stringify(body)}`);
  return body;
}

/** Creates a session with a first poll (no ?session=, so it answers at once with `welcome`). */
async function openSession(base, query = {}) {
  const body = await poll(base, query);
  const welcome = body.frames.find((f) => f.type === "welcome");
  assert.ok(welcome && welcome.session && welcome.session === body.session, `welcome in the first poll: ${JSON.stringify(body)}`);
  return { session: body.session, position: body.position || "", createdOn: body.node };
}

/** The next poll of session `s` (carrying ?session= and its position); advances s.position. */
async function nextPoll(base, s) {
  const query = { session: s.session };
  if (s.position) query.position = s.position;
  const body = await poll(base, query);
  assert.equal(body.session, s.session, "poll answer names our session");
  s.position = body.position;
  return body;
}

/**
 * One long-polling client through `base`: creates a session, subscribes to a fresh channel by POST /v1/send,
 * then polls while a backend publishes COUNT messages straight to the nodes (alternating n1 and n2, so each node
 * stores some). Resolves with {messages, polls (the node of each poll of the session, in order), createdOn}.
 */
async function longPollRun(base) {
  const channel = uniq("lp");
  const s = await openSession(base);
  const { status, body: acks } = await postJson(`${base}/v1/send?session=${s.session}`, [{ type: "subscribe", id: "sub-1", channel }]);
  assert.equal(status, 200, JSON.stringify(acks));
  assert.equal(acks[0]?.type, "ack", `subscribe acked: ${JSON.stringify(acks)}`);

  const publishing = (async () => {
    for (let i = 1; i <= COUNT; i++) {
      const ack = await publish(i % 2 ? n1.url : n2.url, channel, { i });
      assert.equal(ack.offset, i, `publish #${i} stored at offset ${i}`);
      if (i % 10 === 0) await sleep(5);
    }
  })();

  const messages = [];
  const polls = [];
  const deadline = Date.now() + 60000;
  try {
    while (!messages.some((m) => m.offset >= COUNT)) {
      assert.ok(Date.now() < deadline, `timed out with ${messages.length} of ${COUNT} messages after ${polls.length} polls`);
      const body = await nextPoll(base, s);
      polls.push(body.node);
      for (const f of body.frames) {
        assert.notEqual(f.type, "gap", `no gap: ${JSON.stringify(f)}`);
        if (f.type === "message" && f.channel === channel) messages.push(f);
      }
    }
  } finally {
    await publishing;
  }
  // One more poll: nothing is left to deliver, so it waits out the hold and answers empty (no late duplicate).
  const tail = await nextPoll(base, s);
  polls.push(tail.node);
  assert.deepEqual(tail.frames, [], "nothing after the last message");
  return { messages, polls, createdOn: s.createdOn };
}

/** Every offset 1..COUNT exactly once, in order, in one epoch, each with its own data. */
function assertExactlyOnceInOrder(messages) {
  const offsets = messages.map((m) => m.offset);
  assert.deepEqual(offsets, Array.from({ length: COUNT }, (_, k) => k + 1), "offsets 1..COUNT, once each, in order");
  for (const m of messages) assert.equal(m.data?.i, m.offset, `data of offset ${m.offset}`);
  assert.equal(new Set(messages.map((m) => m.epoch)).size, 1, "one epoch throughout");
}


test(`round-robin: ${COUNT} messages exactly once in order, polls served by both nodes`, async () => {
  const { messages, polls } = await longPollRun(proxies["round-robin"].url);
  assertExactlyOnceInOrder(messages);
  const t = tally(polls);
  assert.ok(t.n1 > 0 && t.n2 > 0, `polls on both n1 and n2 (${JSON.stringify(t)})`);
  assert.deepEqual(Object.keys(t).sort(), ["n1", "n2"]);
});

test(`sticky: ${COUNT} messages exactly once in order, every poll of the session served by one node`, async () => {
  const { messages, polls, createdOn } = await longPollRun(proxies.sticky.url);
  assertExactlyOnceInOrder(messages);
  // At least COUNT / max_batch polls carried messages, plus the empty tail poll: stickiness is not vacuous.
  assert.ok(polls.length >= 4, `several polls (${polls.length})`);
  const t = tally(polls);
  assert.equal(Object.keys(t).length, 1, `every poll carrying ?session= on one node (${JSON.stringify(t)}; session created on ${createdOn})`);
  assert.ok(["n1", "n2"].includes(polls[0]));
});

test("sticky: first polls spread over both nodes, and each session then stays on its own node", async () => {
  // The affinity is per session, not per proxy: first requests (no ?session=, keyed by $request_id) spread, and
  // different sessions hash onto different nodes, each keeping its own.
  const base = proxies.sticky.url;
  const channel = uniq("spread");
  const sessions = [];
  for (let k = 0; k < 24; k++) sessions.push(await openSession(base, { channels: channel }));
  const created = tally(sessions.map((s) => s.createdOn));
  assert.ok(created.n1 > 0 && created.n2 > 0, `first polls (keyed by $request_id) on both nodes: ${JSON.stringify(created)}`);

  const rounds = [];
  for (let r = 0; r < 3; r++) {
    // Published before the polls: each poll finds a message after its position and answers at once.
    await publish(r % 2 ? n1.url : n2.url, channel, { r });
    // One poll at a time, starting one session later each round: under round-robin a session's polls would
    // change node from one round to the next.
    const nodes = new Array(sessions.length);
    for (let j = 0; j < sessions.length; j++) {
      const k = (j + r) % sessions.length;
      const a = await nextPoll(base, sessions[k]);
      assert.deepEqual(a.frames.map((f) => f.data?.r), [r], `session #${k} gets round ${r}'s message`);
      nodes[k] = a.node;
    }
    rounds.push(nodes);
  }
  for (let k = 0; k < sessions.length; k++) {
    const nodes = rounds.map((nodesOfRound) => nodesOfRound[k]);
    assert.equal(new Set(nodes).size, 1, `session #${k}: its polls on one node (${nodes})`);
  }
  const homes = tally(rounds[0]);
  assert.ok(homes.n1 > 0 && homes.n2 > 0, `sessions hashed onto both nodes: ${JSON.stringify(homes)}`);
});
