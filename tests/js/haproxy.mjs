// HAProxy for the Node tests: runs the shipped deploy/haproxy/haproxy.cfg itself (not a copy of it) with only the
// lines between its "servers" markers replaced by the test's nodes, on free loopback ports, with its admin socket
// and pidfile in a temp dir. Never touches a system haproxy.

import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { REPO, freePort, makeTempDir, portOpen, startProcess } from "./harness.mjs";

export const HAPROXY_CFG = join(REPO, "deploy", "haproxy", "haproxy.cfg");
const BEGIN = /^[ \t]*# --- servers: BEGIN\b.*$/m;
const END = /^[ \t]*# --- servers: END ---[ \t]*$/m;

/** The config text with its servers block replaced by `server <name> 127.0.0.1:<port>` lines. */
export function renderHaproxyConfig(text, servers) {
  const b = BEGIN.exec(text);
  const e = END.exec(text);
  if (!b || !e || e.index < b.index) throw new Error("haproxy.cfg: the `# --- servers: BEGIN` / `# --- servers: END ---` markers are missing");
  const lines = servers.map((s) => `    server ${s.name} 127.0.0.1:${s.port}`).join("\n");
  return text.slice(0, b.index) + lines + text.slice(e.index + e[0].length);
}

/**
 * The `timeout` settings of the config's `defaults` section, in ms: {connect, client, server, tunnel, ...}.
 * HAProxy's units: us, ms, s, m, h, d; a bare number is ms.
 */
export function haproxyTimeouts(text) {
  const units = { us: 0.001, ms: 1, s: 1000, m: 60000, h: 3600000, d: 86400000, "": 1 };
  const out = {};
  let section = null;
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*/, "").trimEnd();
    if (!line.trim()) continue;
    if (!/^\s/.test(line)) {
      section = line.trim().split(/\s+/)[0];
      continue;
    }
    const m = /^\s+timeout\s+(\S+)\s+(\d+)(us|ms|s|m|h|d)?$/.exec(line);
    if (m && section === "defaults") out[m[1]] = Number(m[2]) * units[m[3] || ""];
  }
  return out;
}

/** Sends one command to an HAProxy admin socket; resolves with the answer text. */
export function adminCommand(socketPath, command, timeoutMs = 3000) {
  return new Promise((resolve, reject) => {
    const s = connect(socketPath);
    let buf = "";
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`haproxy admin socket: no answer to ${JSON.stringify(command)} within ${timeoutMs} ms`));
    }, timeoutMs);
    s.on("connect", () => s.write(command + "\n"));
    s.on("data", (d) => (buf += d.toString()));
    s.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    s.on("close", () => {
      clearTimeout(timer);
      resolve(buf);
    });
  });
}

/** `show stat` as objects keyed by the CSV header (pxname, svname, status, check_status, ...). */
export async function showStat(socketPath) {
  const text = await adminCommand(socketPath, "show stat");
  const lines = text.split("\n").filter((l) => l.trim());
  const header = lines.shift().replace(/^# /, "").split(",");
  return lines.map((l) => Object.fromEntries(l.split(",").map((v, i) => [header[i], v])));
}

/**
 * Runs haproxy with deploy/haproxy/haproxy.cfg (or `config`, another file with the same markers) in front of
 * `servers` ([{name, port}]), as `haproxy -f CFG -db -p PIDFILE`. Returns {url, port, statsUrl, dir, cfg, socket,
 * logs(), stat(), serverStatus(name), stop()}.
 */
export async function startHaproxy({ servers, config = HAPROXY_CFG, bin = process.env.HAPROXY_BIN || "haproxy", env = {}, timeoutMs = 15000 }) {
  const dir = makeTempDir("stickless-haproxy-");
  const port = await freePort();
  const statsPort = await freePort();
  const cfg = join(dir, "haproxy.cfg");
  writeFileSync(cfg, renderHaproxyConfig(readFileSync(config, "utf8"), servers));
  const socket = join(dir, "admin.sock");
  const p = await startProcess({
    cmd: bin,
    args: ["-f", cfg, "-db", "-p", join(dir, "haproxy.pid")],
    env: {
      STICKLESS_BIND: `127.0.0.1:${port}`,
      HAPROXY_STATS_BIND: `127.0.0.1:${statsPort}`,
      HAPROXY_RUN_DIR: dir,
      // This machine's descriptor limit is 20,000: HAProxy needs about 2 x maxconn.
      HAPROXY_MAXCONN: "2000",
      ...env,
    },
    ready: async () => existsSync(socket) && (await portOpen(port)),
    what: "haproxy",
    timeoutMs,
  });
  const stat = () => showStat(socket);
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    statsUrl: `http://127.0.0.1:${statsPort}`,
    dir,
    cfg,
    socket,
    proc: p.proc,
    logs: p.logs,
    stat,
    /** The backend server's status as the health checks see it: "UP", "DOWN", "UP 1/2", "DOWN 1/2", "MAINT"... */
    serverStatus: async (name) => (await stat()).find((r) => r.pxname === "stickless" && r.svname === name)?.status,
    stop: p.stop,
  };
}
