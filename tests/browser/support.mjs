// Browser-test helpers for the demo page (web/index.html): launching Debian's Chromium, opening the page on a
// gateway, and reading what the page shows. Process management (gateways, redis, nginx) is tests/js/harness.mjs.
//
// The page is loaded from the gateway's own origin when the gateway serves web/ at `/`. If it does not, a small
// Node server started here serves web/ and forwards /v1/* (HTTP and WebSocket upgrades) to the gateway, so the
// page still talks to it same-origin, exactly as it would behind a proxy.

import { chromium } from "playwright-core";
import http from "node:http";
import net from "node:net";
import { readFile } from "node:fs/promises";
import { mkdirSync } from "node:fs";
import { join, extname, normalize } from "node:path";
import { REPO, waitFor } from "../js/harness.mjs";

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

const pageServers = new Set();
process.on("exit", () => {
  for (const s of pageServers) s.close();
});

const TYPES = { ".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml" };

/** Serves web/ and forwards /v1/* to `target` (a base URL). Resolves with its base URL. */
export function startPageServer(target) {
  const t = new URL(target);
  const server = http.createServer(async (req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    if (path.startsWith("/v1/")) {
      const headers = { ...req.headers, host: t.host };
      const up = http.request({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers }, (ur) => {
        res.writeHead(ur.statusCode, ur.headers);
        ur.pipe(res);
      });
      up.on("error", () => {
        if (!res.headersSent) res.writeHead(502, { "content-type": "application/json" });
        res.end('{"error":{"code":"bad_gateway","message":"test page server: upstream failed"}}');
      });
      res.on("close", () => up.destroy());
      req.pipe(up);
      return;
    }
    const rel = normalize(path === "/" ? "/index.html" : path).replace(/^(\.\.[/\\])+/, "");
    try {
      const body = await readFile(join(WEB, rel));
      res.writeHead(200, { "content-type": TYPES[extname(rel)] || "application/octet-stream", "cache-control": "no-store" });
      res.end(body);
    } catch {
      res.writeHead(404);
      res.end();
    }
  });
  server.on("upgrade", (req, socket, head) => {
    const up = net.connect(Number(t.port), t.hostname, () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        const name = req.rawHeaders[i];
        lines.push(`${name}: ${name.toLowerCase() === "host" ? t.host : req.rawHeaders[i + 1]}`);
      }
      up.write(lines.join("\r\n") + "\r\n\r\n");
      if (head && head.length) up.write(head);
      socket.pipe(up).pipe(socket);
    });
    const end = () => {
      socket.destroy();
      up.destroy();
    };
    up.on("error", end);
    socket.on("error", end);
  });
  pageServers.add(server);
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) })));
}

/**
 * The base URL to load the demo from for a gateway (or proxy) at `url`: `url` itself when it serves the page,
 * otherwise a page server forwarding to it. Returns {url, servedBy: "gateway" | "page-server", close()}.
 */
export async function demoOrigin(url) {
  try {
    const res = await fetch(`${url}/`);
    const text = await res.text();
    if (res.ok && text.includes("stickless") && text.includes("demo.js")) {
      const js = await fetch(`${url}/stickless.js`);
      await js.arrayBuffer();
      if (js.ok) return { url, servedBy: "gateway", close: async () => {} };
    }
  } catch {
    // fall through to the page server
  }
  const ps = await startPageServer(url);
  return { url: ps.url, servedBy: "page-server", close: ps.close };
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

/** Publishes `count` messages to `channel` every `everyMs`, in order; resolves with the acks. */
export function publishStream(publishFn, channel, { count, everyMs = 20, data = (i) => ({ i }) }) {
  let stopped = false;
  const acks = [];
  const done = (async () => {
    for (let i = 0; i < count && !stopped; i++) {
      acks.push(await publishFn(channel, data(i)));
      if (everyMs) await new Promise((r) => setTimeout(r, everyMs));
    }
    return acks;
  })();
  return { done, acks, stop: () => (stopped = true) };
}

export function ensureShotsDir() {
  mkdirSync(SHOTS, { recursive: true });
  return SHOTS;
}

/** Does the gateway binary accept `flag`? (reads `--help`; a binary still being written may not have it yet) */
export async function gatewayHasFlag(flag, bin = process.env.STICKLESS_BIN || join(REPO, "target", "debug", "stickless")) {
  const { spawnSync } = await import("node:child_process");
  const r = spawnSync(bin, ["--help"], { encoding: "utf8", timeout: 10000 });
  return `${r.stdout || ""}${r.stderr || ""}`.includes(flag);
}
