// The JavaScript client with connection tokens, against the real gateway (tests/fixtures/tokens.toml: tokens
// required everywhere but demo:*): a token refreshed in place before its exp on each transport without a
// reconnect, recovery by reconnecting after token_expired, refused tokens at attach, the secure default without a
// token, waiting out rate limits, and the refresh schedule as a table. Each case runs on WebSocket, SSE and
// long-polling at once.
// Run: node --test tests/js/

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { WebSocket } from "ws";
import { EventSource } from "eventsource";
import { Stickless, StickError } from "../../web/stickless.js";
import { refreshDelay, tokenExpiry } from "../../web/client/token.js";
import { REPO, startGateway, makeTempDir, publish, waitFor, sleep, uniq } from "./harness.mjs";

const TRANSPORTS = ["websocket", "sse", "long-polling"];
const SECRET = "stickless-client-auth-test-secret-0123456789";
const impls = { WebSocket, EventSource, fetch: globalThis.fetch };
const clients = new Set();
let gw;

const b64url = (value) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

/** An HS256 JWT signed with `secret`. */
function sign(claims, secret = SECRET) {
  const unsigned = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(claims)}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

/** A token for `sub` valid `ttl` seconds from now (exp is whole seconds), allowing every `secret:` channel. */
function tokenFor(sub, ttl = 4, { subscribe = ["secret:*"], publish = ["secret:*"], secret } = {}) {
  const now = Math.floor(Date.now() / 1000);
  return sign({ sub, iat: now, exp: now + ttl, stickless: { subscribe, publish, presence: [] } }, secret);
}

function newClient(options) {
  const c = new Stickless({ url: gw.url, ...impls, storage: null, ...options });
  clients.add(c);
  return c;
}


/** Records the `message` events of one channel, and the `error` and `token` events. */
function observe(client, channel) {
  const seen = { messages: [], errors: [], tokens: [] };
  client.on("message", (m) => m.channel === channel && seen.messages.push(m));
  client.on("error", (e) => seen.errors.push(e));
  client.on("token", (t) => seen.tokens.push(t));
  return seen;
}

/** Asserts offsets 1..n exactly once, in order, each carrying data.i === offset. */
function assertExactlyOnce(got, n, what) {
  const offsets = got.map((m) => m.offset);
  const firstWrong = offsets.findIndex((o, i) => o !== i + 1);
  assert.ok(firstWrong === -1 && offsets.length === n, `${what}: expected offsets 1..${n} once each, got ${offsets.length} (first wrong at #${firstWrong + 1}: ${offsets.slice(Math.max(0, firstWrong - 2), firstWrong + 3)})`);
  for (const m of got) assert.equal(m.data && m.data.i, m.offset, `${what}: data of offset ${m.offset}`);
}

/** Publishes n messages on `channel` from the backend, spread over `spanMs`. */
async function stream(channel, n, spanMs) {
  const t0 = Date.now();
  for (let i = 1; i <= n; i++) {
    await publish(gw.url, channel, { i });
    const ahead = t0 + (spanMs * i) / n - Date.now();
    if (ahead > 0) await sleep(ahead);
  }
}

before(async () => {
  gw = await startGateway({ args: ["--config", join(REPO, "tests", "fixtures", "tokens.toml"), "--token-secret", SECRET] });
});

after(async () => {
  for (const c of clients) c.close();
  if (gw) await gw.stop();
});

test("the refresh schedule: exp - max(5 s, 10% of what is left), never before half of it, nothing once past", () => {
  const now = 1_000_000_000_000;
  const cases = [
    // [seconds left, expected delay in ms]
    [3600, 3600_000 - 360_000],
    [60, 54_000], // 10% is more than 5 s
    [30, 25_000], // 5 s is more than 10%
    [8, 4000], // exp - 5 s would be 3 s: half of what is left instead
    [4, 2000],
    [0, null], // the local clock says it has passed: the server's token_expired will tell
    [-30, null],
  ];
  for (const [left, want] of cases) assert.equal(refreshDelay(now / 1000 + left, now), want, `${left} s left`);
  assert.equal(refreshDelay(null, now), null, "no exp: no refresh");
  assert.equal(tokenExpiry(tokenFor("alice", 60)), Math.floor(Date.now() / 1000) + 60);
  assert.equal(tokenExpiry(sign({ sub: "ü", exp: 7, note: "non-ASCII claims decode" })), 7);
  for (const bad of ["", "abc", "a.b.c", "a.bnVsbA.c", null, undefined]) assert.equal(tokenExpiry(bad), null, String(bad));
});

test("a token refreshed in place before exp on each transport: 300 messages exactly once, no reconnect", { timeout: 40000 }, async () => {
  await Promise.all(
    TRANSPORTS.map(async (transport) => {
      const channel = uniq(`secret:refresh-${transport}`);
      let issued = 0;
      const c = newClient({ transport, getToken: async () => (issued++, tokenFor("alice", 4)) });
      const seen = observe(c, channel);
      await c.connect();
      const session = c.sessionId;
      await c.subscribe(channel);
      await stream(channel, 300, 8000);
      await waitFor(() => seen.messages.length >= 300, 20000, `${transport}: 300 messages (have ${seen.messages.length})`);
      await sleep(100); // anything repeated would arrive right behind
      assertExactlyOnce(seen.messages, 300, transport);
      assert.ok(c.refreshes >= 2, `${transport}: refreshed in place (${c.refreshes} times)`);
      assert.equal(seen.tokens.filter((t) => t.via === "refresh").length, c.refreshes);
      assert.deepEqual(seen.tokens.filter((t) => t.via === "attach").length, 1, `${transport}: one attach with a token`);
      assert.ok(seen.tokens.every((t) => t.exp > 0));
      assert.equal(issued, c.refreshes + 1, `${transport}: getToken() once for the connect, once per refresh`);
      assert.equal(c.reconnects, 0, `${transport}: no reconnect`);
      assert.equal(c.sessionId, session);
      assert.equal(c.transport, transport);
      assert.deepEqual(seen.errors, [], `${transport}: no errors`);
      // A publish by this client says who sent it.
      const ack = await c.publish(channel, { i: 301 });
      assert.equal(ack.offset, 301);
      await waitFor(() => seen.messages.length === 301, 10000, `${transport}: its own message`);
      assert.deepEqual(seen.messages[300].from, { sub: "alice", pid: c.pid });
      assert.equal(seen.messages[0].from, undefined, "a backend message has no sender");
      c.close();
    }),
  );
});

test("a refused refresh: token_expired at exp, then a reconnect with a fresh token resumes the session with nothing lost", { timeout: 40000 }, async () => {
  await Promise.all(
    TRANSPORTS.map(async (transport) => {
      const channel = uniq(`secret:expire-${transport}`);
      let issued = 0;
      let firstExp = 0;
      // 1: the connect; 2: the refresh, for another user (refused); 3 on: good, long-lived.
      const getToken = async () => {
        issued++;
        if (issued === 1) {
          const t = tokenFor("bob", 4);
          firstExp = tokenExpiry(t);
          return t;
        }
        return issued === 2 ? tokenFor("mallory", 30) : tokenFor("bob", 30);
      };
      const c = newClient({ transport, getToken });
      const seen = observe(c, channel);
      let expiredAt = 0;
      c.on("error", (e) => e.code === "token_expired" && !expiredAt && (expiredAt = Date.now()));
      await c.connect();
      const session = c.sessionId;
      await c.subscribe(channel);
      await stream(channel, 150, 7000);
      await waitFor(() => seen.messages.length >= 150, 20000, `${transport}: 150 messages (have ${seen.messages.length})`);
      await sleep(100);
      assertExactlyOnce(seen.messages, 150, transport);
      assert.ok(seen.errors.some((e) => e.code === "forbidden"), `${transport}: the refresh for another user was refused`);
      assert.ok(expiredAt, `${transport}: token_expired came`);
      assert.ok(expiredAt >= firstExp * 1000 - 100 && expiredAt < firstExp * 1000 + 3000, `${transport}: token_expired at exp (${expiredAt - firstExp * 1000} ms after)`);
      assert.equal(c.refreshes, 0);
      assert.equal(c.reconnects, 1, `${transport}: one reconnect`);
      assert.equal(issued, 3, `${transport}: getToken() for the connect, the refresh and the reconnect`);
      assert.deepEqual(seen.tokens.map((t) => t.via), ["attach", "attach"]);
      assert.equal(c.sessionId, session, `${transport}: the same session resumed`);
      assert.equal(c.state, "connected");
      c.close();
    }),
  );
});

test("refused tokens at attach: getToken() once more and connect; a fixed bad token backs off with error events", { timeout: 30000 }, async () => {
  await Promise.all(
    TRANSPORTS.map(async (transport) => {
      // A token signed with another key, then a good one.
      let issued = 0;
      const c = newClient({ transport, getToken: () => (++issued === 1 ? tokenFor("carol", 30, { secret: "w".repeat(40) }) : tokenFor("carol", 30)) });
      const seen = observe(c, "none");
      await c.connect();
      assert.equal(issued, 2, `${transport}: getToken() once more after the refusal`);
      assert.ok(seen.errors.some((e) => e instanceof StickError && e.code === "token_invalid"), `${transport}: token_invalid told`);
      assert.equal((await c.subscribe(uniq("secret:after-refusal"))).offset, 0);

      // With no getToken() there is no other token to try: the client keeps trying, backing off.
      const fixed = newClient({ transport, token: tokenFor("carol", 30, { secret: "w".repeat(40) }) });
      const fixedErrors = observe(fixed, "none").errors;
      fixed.connect().catch(() => {});
      await sleep(3000);
      assert.notEqual(fixed.state, "connected");
      const refusals = fixedErrors.filter((e) => e instanceof StickError && e.code === "token_invalid").length;
      assert.ok(refusals >= 2 && refusals <= 12, `${transport}: ${refusals} refusals in 3 s (backing off, not spinning)`);
      fixed.close();
      c.close();
    }),
  );
});

test("a fixed token without getToken(): after its exp every re-attach is refused with token_expired, backing off", { timeout: 30000 }, async () => {
  await Promise.all(
    TRANSPORTS.map(async (transport) => {
      const token = tokenFor("erin", 2);
      const exp = tokenExpiry(token);
      const c = newClient({ transport, token });
      const errors = observe(c, "none").errors;
      await c.connect();
      await waitFor(() => errors.filter((e) => e.code === "token_expired").length >= 3, 15000, `${transport}: three token_expired`);
      assert.ok(Date.now() >= exp * 1000, `${transport}: not before exp`);
      assert.notEqual(c.state, "connected");
      // The refused re-attaches name the cause (a browser's WebSocket and EventSource hide it: a probe on
      // /v1/send tells), and back off rather than spin.
      const since = errors.length;
      await sleep(2000);
      assert.ok(errors.length - since <= 6, `${transport}: ${errors.length - since} errors in 2 s`);
      assert.ok(errors.slice(since).every((e) => e.code === "token_expired"), `${transport}: ${errors.slice(since).map((e) => e.code)}`);
      c.close();
    }),
  );
});

test("a channel outside the claims at attach: only that channel's subscribe fails", { timeout: 30000 }, async () => {
  await Promise.all(
    TRANSPORTS.map(async (transport) => {
      const allowed = uniq("secret:a");
      const c = newClient({ transport, getToken: () => tokenFor("dave", 30, { subscribe: [allowed] }) });
      // Subscribed before the first connect: the new session would subscribe both at attach, and be refused.
      const ok = c.subscribe(allowed);
      const refused = c.subscribe("secret:not-for-dave");
      await c.connect();
      assert.equal((await ok).channel, allowed, transport);
      await assert.rejects(refused, (err) => err instanceof StickError && err.code === "forbidden", transport);
      const got = observe(c, allowed).messages;
      await publish(gw.url, allowed, { i: 1 });
      await waitFor(() => got.length === 1, 10000, `${transport}: the allowed channel delivers`);
      c.close();
    }),
  );
});

test("no token: secret:x is forbidden while demo:chat works, on each transport", { timeout: 30000 }, async () => {
  await Promise.all(
    TRANSPORTS.map(async (transport) => {
      const c = newClient({ transport });
      const got = observe(c, "demo:chat").messages;
      await c.connect();
      await assert.rejects(c.subscribe("secret:x"), (err) => err instanceof StickError && err.code === "forbidden", `${transport}: subscribe`);
      await assert.rejects(c.publish("secret:x", { i: 1 }), (err) => err instanceof StickError && err.code === "forbidden", `${transport}: publish`);
      await c.subscribe("demo:chat");
      const text = uniq(`hi from ${transport}`);
      const ack = await c.publish("demo:chat", { text });
      await waitFor(() => got.some((m) => m.offset === ack.offset), 10000, `${transport}: its demo:chat message`);
      const mine = got.find((m) => m.offset === ack.offset);
      assert.deepEqual(mine.data, { text });
      assert.deepEqual(mine.from, { sub: null, pid: c.pid }, "an anonymous sender");
      assert.equal(c.reconnects, 0);
      c.close();
    }),
  );
});

test("over a rate limit the client waits and tries again: a second new session, and frames over the session's rate", { timeout: 40000 }, async () => {
  const dir = makeTempDir("stickless-limits-");
  const config = join(dir, "limits.toml");
  writeFileSync(config, ['[namespaces.default]', 'subscribe = "anonymous"', 'publish = "anonymous"', "", "[limits]", "frames_per_second = 5", "bytes_per_second = 0", "sessions_per_ip_per_second = 1", "channels_per_second = 0", "channels_per_ip_per_second = 0", ""].join("\n"));
  const limited = await startGateway({ args: ["--config", config] });
  try {
    for (const transport of TRANSPORTS) {
      // One new session per second from this address: the second client is refused (429) and waits it out.
      const pair = [0, 1].map(() => new Stickless({ url: limited.url, ...impls, storage: null, transport }));
      const errors = pair.map((c) => observe(c, "none").errors);
      const t0 = Date.now();
      await Promise.all(pair.map((c) => c.connect()));
      const refusals = errors.flat().filter((e) => e instanceof StickError && e.code === "rate_limited");
      assert.ok(refusals.length >= 1, `${transport}: a refused attach was told`);
      if (transport === "long-polling") assert.ok(refusals.every((e) => e.retryAfterMs >= 1000), `${transport}: Retry-After read`);
      assert.ok(Date.now() - t0 >= 500, `${transport}: the second client waited`);
      assert.ok(refusals.length <= 6, `${transport}: ${refusals.length} refusals (backing off, not spinning)`);

      // Five frames per second per session: fifteen publishes at once are held back and sent again, each stored once.
      const c = pair[0];
      const channel = uniq(`limited-${transport}`);
      const got = observe(c, channel).messages;
      await c.subscribe(channel);
      const before = errors[0].length;
      const acks = await Promise.all(Array.from({ length: 15 }, (_, k) => c.publish(channel, { k })));
      // Over WebSocket each frame over the rate is refused by an `error` frame; over HTTP a send over it costs a
      // second's worth at most (429 with Retry-After, or accepted whole).
      if (transport === "websocket") assert.ok(errors[0].slice(before).some((e) => e.code === "rate_limited"), "frames were refused, held back and sent again");
      assert.deepEqual(acks.map((a) => a.offset).sort((a, b) => a - b), Array.from({ length: 15 }, (_, k) => k + 1), `${transport}: fifteen stored once each`);
      await waitFor(() => got.length === 15, 10000, `${transport}: the fifteen messages`);
      for (const x of pair) x.close();
    }
  } finally {
    await limited.stop();
  }
});
