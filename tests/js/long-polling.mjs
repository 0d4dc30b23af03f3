// Long-polling as a test client drives it through a proxy: a session opened by a first poll, polls that carry
// the session and its position, and a run that checks a published stream arrives exactly once, in order. Shared
// by the nginx and HAProxy tests, which run the same workload through each balancer.
import assert from "node:assert/strict";
import { getJson, postJson, publish, sleep, uniq } from "./harness.mjs";

/** Messages a run publishes. */
export const COUNT = 300;
/** The nodes' --poll-timeout-ms in these tests: after the last message, one more poll must come back empty quickly. */
export const POLL_TIMEOUT_MS = 1000;

/** GET /v1/poll through `base`; resolves with the answer {node, session, position, frames}. */
export async function poll(base, query, holdMs = POLL_TIMEOUT_MS) {
  const { status, body } = await getJson(`${base}/v1/poll?${new URLSearchParams(query)}`, { signal: AbortSignal.timeout(holdMs + 15000) });
  assert.equal(status, 200, `poll ${JSON.stringify(query)}: ${JSON.stringify(body)}`);
  assert.ok(typeof body.node === "string" && Array.isArray(body.frames), `poll answer: ${JSON.stringify(body)}`);
  return body;
}

/** Creates a session with a first poll (no ?session=, so it answers at once with `welcome`). */
export async function openSession(base, query = {}) {
  const body = await poll(base, query);
  const welcome = body.frames.find((f) => f.type === "welcome");
  assert.ok(welcome && welcome.session && welcome.session === body.session, `welcome in the first poll: ${JSON.stringify(body)}`);
  return { session: body.session, position: body.position || "", createdOn: body.node };
}

/** The next poll of session `s` (carrying ?session= and its position); advances s.position. */
export async function nextPoll(base, s, holdMs) {
  const query = { session: s.session };
  if (s.position) query.position = s.position;
  const body = await poll(base, query, holdMs);
  assert.equal(body.session, s.session, "poll answer names our session");
  s.position = body.position;
  return body;
}

/**
 * One long-polling client through `base` on a fresh channel while a backend publishes `count` messages through
 * `publishTo(i)`. Resolves with {messages, polls (the node of each poll, in order), createdOn}. Every poll must answer 200.
 */
export async function longPollRun(base, { count = COUNT, publishTo }) {
  const channel = uniq("lp");
  const s = await openSession(base);
  const { status, body: acks } = await postJson(`${base}/v1/send?session=${s.session}`, [{ type: "subscribe", id: "sub-1", channel }]);
  assert.equal(status, 200, JSON.stringify(acks));
  assert.equal(acks[0]?.type, "ack", `subscribe acked: ${JSON.stringify(acks)}`);

  const publishing = (async () => {
    for (let i = 1; i <= count; i++) {
      const ack = await publish(publishTo(i), channel, { i });
      assert.equal(ack.offset, i, `publish #${i} stored at offset ${i}`);
      if (i % 10 === 0) await sleep(5);
    }
  })();
  const messages = [];
  const polls = [];
  const deadline = Date.now() + 60000;
  try {
    while (!messages.some((m) => m.offset >= count)) {
      assert.ok(Date.now() < deadline, `timed out with ${messages.length} of ${count} messages after ${polls.length} polls`);
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
  const tail = await nextPoll(base, s);
  polls.push(tail.node);
  assert.deepEqual(tail.frames, [], "nothing after the last message");
  return { messages, polls, createdOn: s.createdOn };
}

export function assertExactlyOnceInOrder(messages, count = COUNT) {
  assert.deepEqual(
    messages.map((m) => m.offset),
    Array.from({ length: count }, (_, k) => k + 1),
    "offsets 1..count, once each, in order",
  );
  for (const m of messages) assert.equal(m.data?.i, m.offset, `data of offset ${m.offset}`);
  assert.equal(new Set(messages.map((m) => m.epoch)).size, 1, "one epoch throughout");
}

// --- SSE and WebSocket clients ---------------------------------------------------------------------------------

/** An SSE stream read with fetch: {status, headers, events (parsed data), comments, ended(), close()}. */
