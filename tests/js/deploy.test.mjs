// The Kubernetes manifests in deploy/kubernetes/ against the real binary. No cluster here, so this runs the
// container's command line as the Deployment states it (args, env from the Secret, ConfigMap and downward API,
// the ConfigMap mounted where --config reads it, the pod's user id) on loopback, and checks that every probe
// path, port, path and signal the manifests name works: the probes answer 200 within their timeouts on the
// containerPort that --listen binds, the Ingress's paths are routes, /metrics is where the scrape annotations
// say, liveness stays 200 while Redis is down, and SIGTERM drains and exits 0 within terminationGracePeriodSeconds
// (after the preStop sleep). It also checks that the manifests agree with each other and that the Ingress's
// timeouts exceed the gateway's poll hold and heartbeat.
//
// The manifests are parsed by a small strict parser for the YAML they use (block mappings and sequences, plain
// and quoted scalars, `|` literal blocks, `---`); anything else fails loudly.
// Run: node --test tests/js/deploy.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync, readdirSync, writeFileSync, mkdirSync, chmodSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import WebSocket from "ws";
import { REPO, DEFAULT_BIN, startRedis, freePort, makeTempDir, track, getJson, sleep, waitFor } from "./harness.mjs";

const KUBE = join(REPO, "deploy", "kubernetes");
const BIN = process.env.STICKLESS_BIN || DEFAULT_BIN;

// --- a strict parser for the YAML subset of the manifests ---------------------------------------------------------

class YamlError extends Error {}

function scalar(text, where) {
  const t = text.trim();
  if (t === "" || t === "~" || t === "null") return null;
  if (t.startsWith('"')) {
    if (!/^"(?:[^"\\]|\\.)*"$/.test(t)) throw new YamlError(`${where}: bad double-quoted scalar ${t}`);
    return JSON.parse(t);
  }
  if (t.startsWith("'")) {
    if (!/^'(?:[^']|'')*'$/.test(t)) throw new YamlError(`${where}: bad single-quoted scalar ${t}`);
    return t.slice(1, -1).replace(/''/g, "'");
  }
  if (t === "[]") return [];
  if (t === "{}") return {};
  if (t.startsWith("[") && t.endsWith("]")) return splitFlow(t.slice(1, -1), where).map((s) => scalar(s, where));
  if (/^[&*!|>%@`{[]/.test(t)) throw new YamlError(`${where}: unsupported YAML (anchors, tags, folded or flow maps): ${t}`);
  if (t === "true") return true;
  if (t === "false") return false;
  if (/^-?\d+$/.test(t)) return Number(t);
  if (/^-?\d+\.\d+$/.test(t)) return Number(t);
  return t;
}

function splitFlow(inner, where) {
  const items = [];
  let cur = "";
  let quote = null;
  for (const ch of inner) {
    if (quote) {
      cur += ch;
      if (ch === quote) quote = null;
    } else if (ch === '"' || ch === "'") {
      quote = ch;
      cur += ch;
    } else if (ch === ",") {
      items.push(cur);
      cur = "";
    } else if ("[]{}".includes(ch)) {
      throw new YamlError(`${where}: nested flow collections are not supported`);
    } else cur += ch;
  }
  if (cur.trim()) items.push(cur);
  return items;
}

/** Strips a trailing comment (` #...`) outside quotes. */
function stripComment(s) {
  let quote = null;
  for (let i = 0; i < s.length; i++) {
    const ch = s[i];
    if (quote) {
      if (ch === quote) quote = null;
    } else if (ch === '"' || ch === "'") quote = ch;
    else if (ch === "#" && (i === 0 || /\s/.test(s[i - 1]))) return s.slice(0, i).trimEnd();
  }
  return s.trimEnd();
}

const blank = (line) => /^\s*(#.*)?$/.test(line);
const indentOf = (line) => line.length - line.trimStart().length;

/** Parses every document of a file; returns an array (empty documents skipped). */
export function parseYaml(text, file = "yaml") {
  if (/\t/.test(text.replace(/#.*$/gm, ""))) throw new YamlError(`${file}: tabs`);
  const docs = [[]];
  for (const line of text.split(/\r?\n/)) {
    if (/^---\s*(#.*)?$/.test(line)) docs.push([]);
    else docs[docs.length - 1].push(line);
  }
  const out = [];
  for (const lines of docs) {
    const p = { lines, i: 0, file };
    skip(p);
    if (p.i >= lines.length) continue;
    if (indentOf(lines[p.i]) !== 0) throw new YamlError(`${file}:${p.i + 1}: a document starts at column 0`);
    out.push(block(p, 0));
    skip(p);
    if (p.i < lines.length) throw new YamlError(`${file}:${p.i + 1}: unexpected indentation`);
  }
  return out;
}

function skip(p) {
  while (p.i < p.lines.length && blank(p.lines[p.i])) p.i++;
}

function block(p, indent) {
  skip(p);
  const line = p.lines[p.i];
  return /^-(\s|$)/.test(line.slice(indent)) ? sequence(p, indent) : mapping(p, indent);
}

function sequence(p, indent) {
  const out = [];
  for (;;) {
    skip(p);
    if (p.i >= p.lines.length) return out;
    const line = p.lines[p.i];
    if (indentOf(line) !== indent || !/^-(\s|$)/.test(line.slice(indent))) return out;
    const rest = line.slice(indent + 1);
    const content = rest.trimStart();
    const where = `${p.file}:${p.i + 1}`;
    if (blank(content)) {
      p.i++;
      skip(p);
      const next = indentOf(p.lines[p.i] ?? "");
      if (next <= indent) throw new YamlError(`${where}: empty sequence item`);
      out.push(block(p, next));
    } else if (/^("[^"]*"|'[^']*'|[^\s'"#][^:#]*?)\s*:(\s|$)/.test(content)) {
      // A mapping that starts on the dash's line: re-read this line as the mapping's first key.
      const col = indent + 1 + (rest.length - content.length);
      p.lines[p.i] = " ".repeat(col) + content;
      out.push(mapping(p, col));
    } else {
      out.push(scalar(stripComment(content), where));
      p.i++;
    }
  }
}

function mapping(p, indent) {
  const out = {};
  for (;;) {
    skip(p);
    if (p.i >= p.lines.length) return out;
    const line = p.lines[p.i];
    const where = `${p.file}:${p.i + 1}`;
    const ind = indentOf(line);
    if (ind < indent) return out;
    if (ind > indent) throw new YamlError(`${where}: unexpected indentation`);
    if (/^-(\s|$)/.test(line.slice(indent))) return out;
    const m = /^("[^"]*"|'[^']*'|[^\s'"#][^:#]*?)\s*:(?:\s+(.*))?$/.exec(stripComment(line.slice(indent)));
    if (!m) throw new YamlError(`${where}: not a \`key: value\` line: ${line.trim()}`);
    const key = scalar(m[1], where);
    if (Object.hasOwn(out, key)) throw new YamlError(`${where}: duplicate key ${key}`);
    const rest = (m[2] ?? "").trim();
    p.i++;
    if (rest === "") {
      skip(p);
      const next = p.lines[p.i];
      if (next !== undefined && indentOf(next) > indent) out[key] = block(p, indentOf(next));
      else if (next !== undefined && indentOf(next) === indent && /^-(\s|$)/.test(next.slice(indent))) out[key] = sequence(p, indent);
      else out[key] = null;
    } else if (/^\|[-+]?$/.test(rest)) {
      out[key] = literal(p, indent, rest);
    } else {
      out[key] = scalar(rest, where);
    }
  }
}

function literal(p, indent, style) {
  const body = [];
  let blockIndent = null;
  while (p.i < p.lines.length) {
    const line = p.lines[p.i];
    if (line.trim() === "") {
      body.push("");
      p.i++;
      continue;
    }
    const ind = indentOf(line);
    if (ind <= indent) break;
    if (blockIndent === null) blockIndent = ind;
    if (ind < blockIndent) throw new YamlError(`${p.file}:${p.i + 1}: literal block less indented than its first line`);
    body.push(line.slice(blockIndent));
    p.i++;
  }
  while (body.length && body[body.length - 1] === "") body.pop();
  const text = body.join("\n");
  return style === "|-" ? text : text + "\n";
}

// --- the manifests ----------------------------------------------------------------------------------------------

function loadManifests() {
  const files = readdirSync(KUBE).filter((f) => /\.ya?ml$/.test(f));
  const all = [];
  for (const f of files) for (const doc of parseYaml(readFileSync(join(KUBE, f), "utf8"), f)) all.push({ file: f, doc });
  return { files, all };
}

const { files, all } = loadManifests();
const objects = all.filter((o) => o.doc.kind !== "Kustomization").map((o) => o.doc);
const kinds = (kind) => objects.filter((o) => o.kind === kind);
const one = (kind) => {
  const found = kinds(kind);
  assert.equal(found.length, 1, `exactly one ${kind} in deploy/kubernetes (${found.length})`);
  return found[0];
};
const named = (kind, name) => objects.find((o) => o.kind === kind && o.metadata?.name === name);

const deployment = one("Deployment");
const pod = deployment.spec.template.spec;
const container = pod.containers[0];
const ingress = one("Ingress");
const annotations = ingress.metadata.annotations || {};

/** `--flag value` from a container's args (or undefined). */
function argOf(args, flag) {
  const i = args.indexOf(flag);
  if (i >= 0) return args[i + 1];
  const eq = args.find((a) => a.startsWith(`${flag}=`));
  return eq?.slice(flag.length + 1);
}

/** A probe's or Service's port (a number or a container port's name) as a number. */
function portNumber(port) {
  if (typeof port === "number") return port;
  const p = (container.ports || []).find((cp) => cp.name === port);
  assert.ok(p, `port name ${JSON.stringify(port)} is one of the container's ports`);
  return p.containerPort;
}

/** The manifest's env value of `name` (follows value, secretKeyRef, configMapKeyRef, fieldRef). */
function envValue(name) {
  const e = (container.env || []).find((x) => x.name === name);
  if (!e) return undefined;
  if ("value" in e) return String(e.value);
  const ref = e.valueFrom || {};
  if (ref.secretKeyRef) {
    const s = named("Secret", ref.secretKeyRef.name);
    assert.ok(s, `Secret ${ref.secretKeyRef.name} (for ${name}) is in the manifests`);
    return (s.stringData || {})[ref.secretKeyRef.key] ?? (s.data?.[ref.secretKeyRef.key] !== undefined ? Buffer.from(s.data[ref.secretKeyRef.key], "base64").toString() : undefined);
  }
  if (ref.configMapKeyRef) return named("ConfigMap", ref.configMapKeyRef.name)?.data?.[ref.configMapKeyRef.key];
  if (ref.fieldRef) return { "metadata.name": "stickless-6c9d8f7b5-x2k7q", "metadata.namespace": "default", "status.podIP": "127.0.0.1" }[ref.fieldRef.fieldPath];
  return undefined;
}

/** Seconds (a number of seconds, or a string of them) as ms. */
const secondsMs = (v) => Number(v) * 1000;

/** The binary's default for a flag, from `--help` (`[default: N]`), or undefined. */
async function helpDefault(flag) {
  const text = await new Promise((resolve) => {
    const p = spawn(BIN, ["--help"], { stdio: ["ignore", "pipe", "ignore"] });
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    p.on("close", () => resolve(out));
  });
  const m = new RegExp(`${flag} <[A-Z_]+>\\s*\\n\\s*[^\\n]*\\[default: (\\d+)\\]`).exec(text);
  return m ? Number(m[1]) : undefined;
}

/** A drain setting in ms: the manifest's flag or env, else the binary's default. */
async function drainSetting(flag, envName) {
  const fromArgs = argOf(container.args || [], flag);
  if (fromArgs !== undefined) return Number(fromArgs);
  const fromEnv = envValue(envName);
  if (fromEnv !== undefined) return Number(fromEnv);
  const d = await helpDefault(flag);
  assert.ok(d !== undefined, `${flag} has a default in --help`);
  return d;
}

const preStopSeconds = () => {
  const pre = container.lifecycle?.preStop;
  if (!pre) return 0;
  if (pre.sleep) return Number(pre.sleep.seconds);
  const cmd = pre.exec?.command || [];
  const i = cmd.findIndex((c) => /(^|\/)sleep$/.test(c));
  assert.ok(i >= 0, `preStop is a sleep (${JSON.stringify(pre)})`);
  return Number(cmd[i + 1]);
};

// --- running the container's command line ----------------------------------------------------------------------

/**
 * Starts the binary as the container would: its args with --listen on 127.0.0.1:<free port> (the manifest's port
 * is mapped to it), the env the manifest gives (redis-url replaced by `redisUrl`), the ConfigMap's files where the
 * volumeMount puts them (under a temp dir), as the pod's user when we are root, from /.
 */
async function startPod(redisUrl) {
  const args = [...(container.args || [])];
  const listenAt = args.indexOf("--listen");
  const [host, containerPort] = args[listenAt + 1].split(/:(?=\d+$)/);
  const port = await freePort();
  args[listenAt + 1] = `127.0.0.1:${port}`;

  const root = makeTempDir("stickless-pod-");
  chmodSync(root, 0o755);
  for (const mount of container.volumeMounts || []) {
    const vol = (pod.volumes || []).find((v) => v.name === mount.name);
    assert.ok(vol?.configMap, `volume ${mount.name} is a ConfigMap`);
    const cm = named("ConfigMap", vol.configMap.name);
    assert.ok(cm, `ConfigMap ${vol.configMap.name} is in the manifests`);
    const dir = join(root, mount.mountPath);
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    for (let d = dir; d.length > root.length; d = join(d, "..")) chmodSync(d, 0o755);
    for (const [k, v] of Object.entries(cm.data || {})) {
      writeFileSync(join(dir, k), v);
      chmodSync(join(dir, k), 0o644);
    }
    for (let i = 0; i < args.length; i++) if (args[i].startsWith(mount.mountPath + "/")) args[i] = join(root, args[i]);
  }

  const env = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", HOME: "/" };
  for (const e of container.env || []) env[e.name] = envValue(e.name);
  const redisVar = (container.env || []).find((e) => e.name === "STICKLESS_REDIS_URL");
  assert.ok(redisVar, "STICKLESS_REDIS_URL is set");
  env.STICKLESS_REDIS_URL = redisUrl;

  const sc = { ...(pod.securityContext || {}), ...(container.securityContext || {}) };
  const ids = process.getuid?.() === 0 && sc.runAsUser ? { uid: sc.runAsUser, gid: sc.runAsGroup ?? sc.runAsUser } : {};
  const startedAt = Date.now();
  const proc = track(spawn(BIN, args, { cwd: "/", env, stdio: ["ignore", "pipe", "pipe"], ...ids }));
  let output = "";
  proc.stdout.on("data", (d) => (output = (output + d).slice(-20000)));
  proc.stderr.on("data", (d) => (output = (output + d).slice(-20000)));
  const url = `http://127.0.0.1:${port}`;
  return { proc, url, port, host, containerPort: Number(containerPort), startedAt, asUser: ids.uid, logs: () => output };
}

/** GET url with a timeout; resolves {status, ms, text}. */
async function timedGet(url, timeoutMs) {
  const t = Date.now();
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  return { status: res.status, ms: Date.now() - t, text, headers: res.headers };
}

let redis;
after(async () => {
  await redis?.stop();
});
before(async () => {
  redis = await startRedis();
});

// --- the tests --------------------------------------------------------------------------------------------------

test("the manifests parse, kustomization lists every file, and their names, labels, ports and keys agree", () => {
  const kustomization = all.find((o) => o.doc.kind === "Kustomization")?.doc;
  assert.ok(kustomization, "a kustomization.yaml");
  assert.deepEqual([...kustomization.resources].sort(), files.filter((f) => !/^kustomization\.ya?ml$/.test(f)).sort(), "kustomization lists every manifest");

  // Selectors.
  const labels = deployment.spec.template.metadata.labels;
  for (const [k, v] of Object.entries(deployment.spec.selector.matchLabels)) assert.equal(labels[k], v, `pod label ${k}`);
  for (const svc of kinds("Service")) {
    for (const [k, v] of Object.entries(svc.spec.selector)) assert.equal(labels[k], v, `Service ${svc.metadata.name} selects the pods (${k})`);
    assert.equal(svc.spec.sessionAffinity ?? "None", "None", `Service ${svc.metadata.name}: no affinity`);
    for (const sp of svc.spec.ports) portNumber(sp.targetPort);
  }
  for (const pdb of kinds("PodDisruptionBudget")) for (const [k, v] of Object.entries(pdb.spec.selector.matchLabels)) assert.equal(labels[k], v);

  // Every Ingress backend names a Service port that exists.
  for (const rule of ingress.spec.rules) {
    for (const path of rule.http.paths) {
      const svc = named("Service", path.backend.service.name);
      assert.ok(svc, `Ingress backend Service ${path.backend.service.name}`);
      const want = path.backend.service.port;
      assert.ok(svc.spec.ports.some((sp) => (want.name !== undefined ? sp.name === want.name : sp.port === want.number)), `Service port ${JSON.stringify(want)}`);
    }
  }
  for (const tls of ingress.spec.tls || []) for (const h of tls.hosts) assert.ok(ingress.spec.rules.some((r) => r.host === h), `TLS host ${h} has a rule`);

  // Every env reference resolves; annotation and ConfigMap/Secret values are strings (Kubernetes rejects others).
  for (const e of container.env || []) assert.equal(typeof envValue(e.name), "string", `env ${e.name} resolves to a string`);
  for (const o of objects) {
    for (const [k, v] of Object.entries(o.metadata?.annotations || {})) assert.equal(typeof v, "string", `${o.kind} annotation ${k} is a string`);
    for (const [k, v] of Object.entries(o.data || {})) assert.equal(typeof v, "string", `${o.kind} ${o.metadata.name} data.${k} is a string`);
    for (const [k, v] of Object.entries(o.stringData || {})) assert.equal(typeof v, "string", `${o.kind} ${o.metadata.name} stringData.${k} is a string`);
  }
  for (const [k, v] of Object.entries(deployment.spec.template.metadata.annotations || {})) assert.equal(typeof v, "string", `pod annotation ${k} is a string`);

  // Redis from a Secret.
  const redisEnv = container.env.find((e) => e.name === "STICKLESS_REDIS_URL");
  assert.ok(redisEnv?.valueFrom?.secretKeyRef, "STICKLESS_REDIS_URL comes from a Secret");
  assert.match(envValue("STICKLESS_REDIS_URL"), /^redis(s|-cluster|-sentinel)?:\/\//, "the Secret's placeholder is a Redis URL");

  // --listen on all interfaces, on the declared containerPort; probes on the right paths and that port.
  const listen = argOf(container.args, "--listen");
  assert.match(listen, /^0\.0\.0\.0:\d+$/, "--listen 0.0.0.0:<port>");
  const listenPort = Number(listen.split(":")[1]);
  assert.ok(container.ports.some((p) => p.containerPort === listenPort), `a containerPort equals --listen's port ${listenPort}`);
  assert.equal(container.readinessProbe?.httpGet?.path, "/readyz");
  assert.equal(container.livenessProbe?.httpGet?.path, "/healthz");
  for (const probe of ["readinessProbe", "livenessProbe", "startupProbe"]) {
    if (container[probe]) assert.equal(portNumber(container[probe].httpGet.port), listenPort, `${probe} on --listen's port`);
  }
  const ann = deployment.spec.template.metadata.annotations || {};
  if (ann["prometheus.io/port"]) assert.equal(Number(ann["prometheus.io/port"]), listenPort, "prometheus.io/port is --listen's port");

  // Non-root, no privilege escalation, resources stated.
  const sc = { ...(pod.securityContext || {}), ...(container.securityContext || {}) };
  assert.equal(sc.runAsNonRoot, true, "runAsNonRoot");
  assert.ok(sc.runAsUser > 0, "a non-zero runAsUser");
  assert.equal(sc.allowPrivilegeEscalation, false, "allowPrivilegeEscalation: false");
  assert.ok(container.resources?.requests?.cpu && container.resources?.requests?.memory, "CPU and memory requests");
  assert.ok(container.resources?.limits?.memory, "a memory limit");

  // The --config file is the mounted ConfigMap's.
  const config = argOf(container.args, "--config");
  if (config) {
    const mount = container.volumeMounts.find((m) => config.startsWith(m.mountPath + "/"));
    assert.ok(mount, `--config ${config} is under a volumeMount`);
    const vol = pod.volumes.find((v) => v.name === mount.name);
    const cm = named("ConfigMap", vol.configMap.name);
    assert.ok(cm?.data?.[config.slice(mount.mountPath.length + 1)], `ConfigMap ${vol.configMap.name} has ${config}`);
  }
});

test("the drain fits: terminationGracePeriodSeconds covers preStop + drain window + drain timeout + 5 s", async () => {
  const grace = pod.terminationGracePeriodSeconds;
  assert.ok(Number.isInteger(grace), "terminationGracePeriodSeconds is set");
  const windowMs = await drainSetting("--drain-window-ms", "STICKLESS_DRAIN_WINDOW_MS");
  const timeoutMs = await drainSetting("--drain-timeout-ms", "STICKLESS_DRAIN_TIMEOUT_MS");
  // The binary keeps answering for the window, then gives in-flight requests up to the timeout, then waits up to
  // 5 s for its tasks (src/http/mod.rs serve(); measured: 40 s from SIGTERM with a request in flight).
  const worstMs = preStopSeconds() * 1000 + Math.min(windowMs, timeoutMs / 2) + timeoutMs + 5000;
  assert.ok(grace * 1000 >= worstMs, `terminationGracePeriodSeconds ${grace} s covers preStop ${preStopSeconds()} s + window ${windowMs} ms + timeout ${timeoutMs} ms + 5 s = ${worstMs} ms`);
  assert.ok(preStopSeconds() >= 1 && preStopSeconds() <= 15, `a short preStop sleep (${preStopSeconds()} s) for endpoint removal to reach the Ingress`);
});

test("the Ingress: timeouts above the gateway's poll hold and heartbeat, no buffering, no affinity, no POST replays", async () => {
  // The settings the manifests give the gateway, as a node started with them announces them.
  const pod1 = await startPod(redis.url);
  try {
    await waitFor(async () => (await getJson(`${pod1.url}/v1/negotiate`)).status === 200, 30000, "the pod to serve");
    const { body: neg } = await getJson(`${pod1.url}/v1/negotiate`);
    const margin = 5000;
    for (const k of ["proxy-read-timeout", "proxy-send-timeout"]) {
      const v = annotations[`nginx.ingress.kubernetes.io/${k}`];
      assert.ok(v !== undefined, `${k} is set (ingress-nginx's default is 60 s)`);
      assert.ok(secondsMs(v) >= neg.poll_timeout_ms + margin, `${k} ${v} s above the poll hold ${neg.poll_timeout_ms} ms`);
      assert.ok(secondsMs(v) >= neg.heartbeat_ms + margin, `${k} ${v} s above the heartbeat ${neg.heartbeat_ms} ms`);
    }
    assert.equal(annotations["nginx.ingress.kubernetes.io/proxy-buffering"], "off");
    assert.equal(annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"], "off");
    const body = annotations["nginx.ingress.kubernetes.io/proxy-body-size"];
    if (body) assert.ok(/^(\d+)([km]?)$/i.test(body) && Number(/\d+/.exec(body)[0]) * { "": 1, k: 1024, m: 1048576 }[/[km]?$/i.exec(body)[0].toLowerCase()] >= neg.limits.max_message_bytes, `proxy-body-size ${body} fits a message`);
    for (const k of ["affinity", "upstream-hash-by", "session-cookie-name"]) assert.equal(annotations[`nginx.ingress.kubernetes.io/${k}`], undefined, `no ${k}`);
    assert.doesNotMatch(annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"] || "", /non_idempotent/, "POSTs are never retried by the Ingress");
  } finally {
    pod1.proc.kill("SIGKILL");
    await pod1.proc.exited;
  }
});

test("the container as the Deployment runs it: probes 200 within their timeouts on the containerPort, the Ingress's paths and /metrics answer", async () => {
  const p = await startPod(redis.url);
  try {
    const budget = (probe) => ((probe?.initialDelaySeconds ?? 0) + (probe?.periodSeconds ?? 10) * (probe?.failureThreshold ?? 3)) * 1000;
    // Serving before the startup (or liveness) probe gives up on it.
    const startup = container.startupProbe || container.livenessProbe;
    await waitFor(async () => (await timedGet(`${p.url}${startup.httpGet.path}`, 2000)).status === 200, budget(startup), `${startup.httpGet.path} 200 within the ${startup === container.startupProbe ? "startup" : "liveness"} probe's budget`, 50);
    const servingAfter = Date.now() - p.startedAt;
    // Ready (Redis answers, pub/sub probe delivered) soon after.
    await waitFor(async () => (await timedGet(`${p.url}${container.readinessProbe.httpGet.path}`, 2000)).status === 200, 10000, "/readyz 200", 100);
    for (const name of ["startupProbe", "readinessProbe", "livenessProbe"]) {
      const probe = container[name];
      if (!probe) continue;
      const timeoutMs = (probe.timeoutSeconds ?? 1) * 1000;
      for (let k = 0; k < 5; k++) {
        const r = await timedGet(`${p.url}${probe.httpGet.path}`, timeoutMs);
        assert.equal(r.status, 200, `${name} ${probe.httpGet.path}: ${r.text}`);
        assert.ok(r.ms < timeoutMs, `${name} answered in ${r.ms} ms, under its ${timeoutMs} ms timeout`);
      }
    }
    assert.equal(p.containerPort, portNumber(container.readinessProbe.httpGet.port), "the probes' port is the port --listen binds");

    // The node id comes from the downward API.
    const { body: neg } = await getJson(`${p.url}/v1/negotiate`);
    assert.equal(neg.node, envValue("STICKLESS_NODE_ID"), "STICKLESS_NODE_ID (the pod's name) reached the node");

    // Prometheus scrapes where the pod's annotations say.
    const ann = deployment.spec.template.metadata.annotations || {};
    if (ann["prometheus.io/scrape"] === "true") {
      const m = await timedGet(`${p.url}${ann["prometheus.io/path"] || "/metrics"}`, 5000);
      assert.equal(m.status, 200);
      assert.match(m.text, /^stickless_ready 1$/m, "stickless_ready 1 in the scrape");
    }

    // Every path the Ingress routes is a route of the node (not a 404), and the WebSocket upgrades.
    for (const rule of ingress.spec.rules) {
      for (const { path } of rule.http.paths) {
        if (path === "/v1/ws") {
          const ws = new WebSocket(`ws://127.0.0.1:${p.port}${path}`);
          const first = await new Promise((resolve, reject) => {
            ws.once("message", (d) => resolve(JSON.parse(d.toString())));
            ws.once("error", reject);
            setTimeout(() => reject(new Error("no welcome within 5 s")), 5000);
          });
          assert.equal(first.type, "welcome", `${path}: ${JSON.stringify(first)}`);
          ws.close();
          continue;
        }
        const ac = new AbortController();
        const res = await fetch(`${p.url}${path}`, { signal: ac.signal });
        assert.notEqual(res.status, 404, `${path} is a route (status ${res.status})`);
        ac.abort();
      }
    }
    console.log(`pod${p.asUser ? ` as uid ${p.asUser}` : ""}: /healthz 200 after ${servingAfter} ms`);
  } finally {
    p.proc.kill("SIGKILL");
    await p.proc.exited;
  }
});

test("SIGTERM with clients connected and a request in flight: drains and exits 0 within terminationGracePeriodSeconds - preStop", async () => {
  const p = await startPod(redis.url);
  const sockets = [];
  try {
    await waitFor(async () => (await timedGet(`${p.url}/readyz`, 2000)).status === 200, 30000, "/readyz 200", 100);
    const windowMs = await drainSetting("--drain-window-ms", "STICKLESS_DRAIN_WINDOW_MS");
    // A WebSocket, an SSE stream and a waiting poll (anonymous sessions without channels: the manifests' config
    // gives anonymous clients no channel).
    const ws = new WebSocket(`ws://127.0.0.1:${p.port}/v1/ws`);
    sockets.push(ws);
    const wsFrames = [];
    ws.on("message", (d) => wsFrames.push(JSON.parse(d.toString())));
    const wsClosed = new Promise((resolve) => ws.on("close", (code) => resolve(code)));
    await waitFor(() => wsFrames[0]?.type === "welcome", 5000, "the WebSocket's welcome");
    const sse = await fetch(`${p.url}/v1/sse`);
    assert.equal(sse.status, 200);
    const sseText = sse.text();
    const first = await getJson(`${p.url}/v1/poll`);
    assert.equal(first.status, 200, JSON.stringify(first.body));
    const waitingPoll = getJson(`${p.url}/v1/poll?session=${first.body.session}`);
    await sleep(300);
    // A request in flight: a publish whose body arrives a byte a second (the drain waits for it, up to its timeout).
    const slow = connect(p.port, "127.0.0.1");
    sockets.push(slow);
    await new Promise((resolve) => slow.once("connect", resolve));
    slow.write(`POST /v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${envValue("STICKLESS_API_KEY")}\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{`);
    const drip = setInterval(() => slow.writable && slow.write(" "), 1000);
    slow.on("error", () => {});

    const stopSignal = container.lifecycle?.stopSignal || "SIGTERM";
    const signalledAt = Date.now();
    p.proc.kill(stopSignal);
    const limitMs = (pod.terminationGracePeriodSeconds - preStopSeconds()) * 1000;
    const killer = setTimeout(() => p.proc.kill("SIGKILL"), limitMs);
    const exited = await p.proc.exited;
    clearTimeout(killer);
    clearInterval(drip);
    const tookMs = Date.now() - signalledAt;
    assert.deepEqual({ code: exited.code, signal: exited.signal }, { code: 0, signal: null }, `exits 0 on ${stopSignal} (after ${tookMs} ms; limit ${limitMs} ms):\n${p.logs().slice(-2000)}`);
    assert.ok(tookMs < limitMs, `exited ${tookMs} ms after ${stopSignal}, within terminationGracePeriodSeconds - preStop (${limitMs} ms)`);

    // Every client was told when to come back, within the drain window.
    const polled = await waitingPoll;
    assert.equal(polled.status, 200, "the waiting poll answered");
    const reconnect = polled.body.frames.find((f) => f.type === "reconnect");
    assert.ok(reconnect && reconnect.after_ms <= windowMs, `the poll got a reconnect frame within the window: ${JSON.stringify(polled.body.frames)}`);
    assert.equal(await wsClosed, 1012, "the WebSocket closed with 1012");
    assert.ok(wsFrames.some((f) => f.type === "reconnect" && f.after_ms <= windowMs), "the WebSocket got a reconnect frame");
    assert.match(await sseText, /"type":"reconnect"/, "the SSE stream got a reconnect event before it ended");
    console.log(`${stopSignal}: exited 0 after ${tookMs} ms (limit ${limitMs} ms, drain window ${windowMs} ms)`);
  } finally {
    for (const s of sockets) s.destroy ? s.destroy() : s.terminate();
    p.proc.kill("SIGKILL");
  }
});

test("Redis down: /readyz turns 503 (out of rotation) while /healthz stays 200 (no restart), and SIGTERM still exits 0 in time", async () => {
  const own = await startRedis();
  const p = await startPod(own.url);
  try {
    await waitFor(async () => (await timedGet(`${p.url}/readyz`, 2000)).status === 200, 30000, "/readyz 200", 100);
    await own.stop();
    const ready = container.readinessProbe;
    await waitFor(
      async () => (await timedGet(`${p.url}${ready.httpGet.path}`, ready.timeoutSeconds * 1000)).status === 503,
      10000,
      "/readyz 503 with Redis down",
      200,
    );
    // Longer than the liveness probe would need to fail (periodSeconds x failureThreshold is 30 s: sampled over 5 s,
    // each within its timeout).
    const live = container.livenessProbe;
    for (let k = 0; k < 10; k++) {
      const r = await timedGet(`${p.url}${live.httpGet.path}`, live.timeoutSeconds * 1000);
      assert.equal(r.status, 200, `/healthz with Redis down: ${r.text}`);
      const rr = await timedGet(`${p.url}${ready.httpGet.path}`, ready.timeoutSeconds * 1000);
      assert.equal(rr.status, 503, `/readyz with Redis down answers 503 within its ${ready.timeoutSeconds} s timeout (took ${rr.ms} ms)`);
      await sleep(500);
    }
    const signalledAt = Date.now();
    p.proc.kill(container.lifecycle?.stopSignal || "SIGTERM");
    const limitMs = (pod.terminationGracePeriodSeconds - preStopSeconds()) * 1000;
    const killer = setTimeout(() => p.proc.kill("SIGKILL"), limitMs);
    const exited = await p.proc.exited;
    clearTimeout(killer);
    assert.deepEqual({ code: exited.code, signal: exited.signal }, { code: 0, signal: null }, `exits 0 with Redis down (after ${Date.now() - signalledAt} ms):\n${p.logs().slice(-2000)}`);
  } finally {
    p.proc.kill("SIGKILL");
  }
});

test("the YAML subset parser: what the manifests use, and refusals for what it does not read", () => {
  const [doc] = parseYaml(
    [
      "a: 1",
      "b: \"120\"",
      "c: 'it''s'",
      "d:",
      "  - x",
      "  - k: v",
      "    n: 2",
      "e: [\"--x\", y]",
      "f: |",
      "  line 1",
      "",
      "  line 2",
      "g: off # a comment",
      "h:",
      "- 1",
    ].join("\n"),
  );
  assert.deepEqual(doc, { a: 1, b: "120", c: "it's", d: ["x", { k: "v", n: 2 }], e: ["--x", "y"], f: "line 1\n\nline 2\n", g: "off", h: [1] });
  assert.throws(() => parseYaml("a: &x 1"), YamlError);
  assert.throws(() => parseYaml("a: >\n  folded"), YamlError);
  assert.throws(() => parseYaml("a: 1\na: 2"), YamlError);
  assert.throws(() => parseYaml("a:\n  b: 1\n   c: 2"), YamlError);
});
