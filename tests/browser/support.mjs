// Browser-test helpers for the demo page (web/index.html): launching Debian's Chromium, opening the page on a
// gateway (which serves web/ at `/`, so the page talks to it same-origin, directly or through nginx), starting
// the two-node Redis cluster behind nginx, and reading what the page shows. Process management (gateways, redis,
// nginx) is tests/js/harness.mjs.

import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { REPO, waitFor, sleep, startRedisNodes, startBalancer } from "../js/harness.mjs";

export const WEB = join(REPO, "web");
export const SHOTS = join(REPO, "docs", "screenshots");
export const LABEL = { websocket: "WebSocket", sse: "SSE", "long-polling": "Long-polling" };

const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";

export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
}

/**
 * Two gateway nodes, "n1" and "n2", sharing one redis-server behind nginx round-robin (nginx/gateway.conf with an
 * empty BALANCE: no stickiness). n1 publishes the demo ticker every `tickerMs`; n2 runs none, so the cluster has
 * one ticker. Nothing here is optional: if redis-server, nginx or a node does not come up, this throws (and stops
 * whatever it had started), so the calling hook and its tests fail. Returns {url (nginx's), redis, n1, n2, nginx,
 * stop()}.
 */
export async function startCluster({ tickerMs }) {
  // The demo needs no configuration: the nodes run on the secure default (anonymous clients: demo:* only).
  const cluster = await startRedisNodes({ n1: ["--demo-ticker-ms", String(tickerMs)], n2: ["--demo-ticker-ms", "0"] }, { secure: true });
  try {
    const { n1, n2 } = cluster.nodes;
    const nginx = cluster.add(await startBalancer({ nodes: [n1, n2], balance: "round-robin" }));
    return { url: nginx.url, redis: cluster.redis, n1, n2, nginx, stop: cluster.stop };
  } catch (err) {
    await cluster.stop();
    throw err;
  }
}

/** Opens the demo in a new context. `query` becomes the page's query string (transport, block, name, ...). */
export async function openDemo(browser, base, { query = {}, viewport = { width: 1280, height: 800 }, deviceScaleFactor = 1, isMobile = false } = {}) {
  const context = await browser.newContext({ viewport, deviceScaleFactor, isMobile, hasTouch: isMobile });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => {
    // Failed WebSocket handshakes and aborted requests are the point of some tests: the browser logs those
    // itself. Anything else logged as an error (a listener that threw, a failed import) is a page bug.
    if (m.type() === "error" && !/WebSocket connection to|Failed to load resource|net::ERR_|EventSource/.test(m.text())) errors.push(m.text());
  });
  const qs = new URLSearchParams(query).toString();
  await page.goto(`${base}/${qs ? `?${qs}` : ""}`);
  await page.waitForFunction(() => window.__demo && window.__demo.client);
  return { context, page, errors };
}

const tid = (id) => `[data-testid="${id}"]`;
export { tid };

/** The visible text of an element by data-testid. */
export function text(page, id) {
  return page.locator(tid(id)).first().innerText();
}

/** Waits until the page shows `state` ("connected") via `transport` (a protocol name) in the header. */
export async function waitConnected(page, transport, timeoutMs = 20000) {
  const want = transport ? LABEL[transport] : null;
  await waitFor(
    async () => {
      const [state, shown] = await Promise.all([text(page, "state"), text(page, "transport")]);
      return state === "connected" && (!want || shown === want);
    },
    timeoutMs,
    `page to show "connected via ${want ?? "any"}"`,
    100,
  );
}

const SEQ_RE = /^(.+): ([\d,]+) received, ([\d,]+) gaps?, ([\d,]+) duplicates?$/;

/** Reads the on-screen sequence check line of a channel: {text, received, gaps, duplicates}. */
export async function seqOnScreen(page, channel) {
  const t = (await page.locator(`${tid(`seq-${channel}`)} .text`).innerText()).trim();
  const m = SEQ_RE.exec(t);
  if (!m || m[1] !== channel) throw new Error(`unexpected sequence line: ${JSON.stringify(t)}`);
  const n = (s) => Number(s.replace(/,/g, ""));
  return { text: t, received: n(m[2]), gaps: n(m[3]), duplicates: n(m[4]) };
}

/** The page's own counters (window.__demo): {channel: {received, gaps, duplicates, offset, epoch}}. */
export function counters(page) {
  return page.evaluate(() => window.__demo.counters());
}

/** Waits until the page's timeline says it has subscribed (a message published before that is rightly not delivered). */
export function waitSubscribed(page, timeoutMs = 10000) {
  return waitFor(() => page.evaluate(() => window.__demo.timeline.some((e) => e.text.startsWith("subscribed to"))), timeoutMs, "subscriptions");
}

/** Asserts the on-screen sequence check of each channel shows no gap and no duplicate; returns {channel: reading}. */
export async function assertSeqClean(page, { channels = ["demo:ticker", "demo:chat"], where } = {}) {
  const seen = {};
  for (const ch of channels) {
    const s = await seqOnScreen(page, ch);
    const msg = where ? `${where}: ${s.text}` : s.text;
    assert.equal(s.gaps, 0, msg);
    assert.equal(s.duplicates, 0, msg);
    seen[ch] = s;
  }
  return seen;
}

/**
 * Waits until the page's cursor on `channel` reaches `last` (the offset of the last message published), lets the
 * throttled render catch up, then asserts the screen shows every offset from the page's first one to `last`
 * exactly once. Returns {first, seq} (seq: the on-screen reading).
 */
export async function assertShownOnce(page, channel, last, timeoutMs = 20000) {
  await waitFor(async () => (await counters(page))[channel].offset === last, timeoutMs, `${channel} offset ${last} on the page`, 50);
  await sleep(400);
  const { first } = (await counters(page))[channel];
  const { [channel]: seq } = await assertSeqClean(page, { channels: [channel] });
  assert.equal(seq.received, last - first + 1, `every ${channel} offset from ${first} to ${last} shown once: ${seq.text}`);
  return { first, seq };
}

/** Publishes `count` messages to `channel` every `everyMs`, in order; resolves with the acks. */
export function publishStream(publishFn, channel, { count, everyMs = 20, data = (i) => ({ i }) }) {
  let stopped = false;
  const acks = [];
  const done = (async () => {
    for (let i = 0; i < count && !stopped; i++) {
      acks.push(await publishFn(channel, data(i)));
      if (everyMs) await sleep(everyMs);
    }
    return acks;
  })();
  return { done, acks, stop: () => (stopped = true) };
}

export function ensureShotsDir() {
  mkdirSync(SHOTS, { recursive: true });
  return SHOTS;
}
