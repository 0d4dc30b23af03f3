// Sticky and non-sticky side by side: the same two Redis-backed gateway nodes behind two nginx instances rendered
// from nginx/gateway.conf, one round-robin (no affinity) and one sticky (a consistent hash of ?session=). A plain
// long-polling client (fetch against /v1/poll and /v1/send) gets every message exactly once and in order through
// both; the `node` each poll answer names shows where nginx sent that poll.
// Run: node --test tests/js/nginx.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startRedisNodes, startBalancer, publish, uniq, tally } from "./harness.mjs";
import { COUNT, POLL_TIMEOUT_MS, openSession, nextPoll, longPollRun, assertExactlyOnceInOrder } from "./long-polling.mjs";

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


test(`round-robin: ${COUNT} messages exactly once in order, polls served by both nodes`, async () => {
  const { messages, polls } = await longPollRun(proxies["round-robin"].url, { publishTo: (i) => (i % 2 ? n1.url : n2.url) });
  assertExactlyOnceInOrder(messages);
  const t = tally(polls);
  assert.ok(t.n1 > 0 && t.n2 > 0, `polls on both n1 and n2 (${JSON.stringify(t)})`);
  assert.deepEqual(Object.keys(t).sort(), ["n1", "n2"]);
});

test(`sticky: ${COUNT} messages exactly once in order, every poll of the session served by one node`, async () => {
  const { messages, polls, createdOn } = await longPollRun(proxies.sticky.url, { publishTo: (i) => (i % 2 ? n1.url : n2.url) });
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
