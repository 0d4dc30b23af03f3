// stickless live demo: a chat room and a ticker on one session, with a live transport switch and an
// independent check that every channel's offsets arrive contiguous (no gap, no duplicate) across switches,
// drops and fallbacks. Plain ES module, no build step. Query parameters (all optional):
//   gateway=<url>     gateway base URL (default: this page's origin)
//   transport=<name>  auto | websocket | sse | long-polling (default auto)
//   ticker=<channel>  chat=<channel>  (default demo:ticker, demo:chat)
//   name=<text>       chat name (default: remembered, or a random guest name)
//   block=websocket   start with WebSocket blocked (a restrictive network from the first connect)
import { Stickless } from "./stickless.js";

const TRANSPORTS = ["auto", "websocket", "sse", "long-polling"];
const LABEL = { auto: "Auto", websocket: "WebSocket", sse: "SSE", "long-polling": "Long-polling" };
const params = new URLSearchParams(location.search);
const GATEWAY = params.get("gateway") || location.origin;
const TICKER = params.get("ticker") || "demo:ticker";
const CHAT = params.get("chat") || "demo:chat";
const START = TRANSPORTS.includes(params.get("transport")) ? params.get("transport") : "auto";
const CHART_WINDOW_MS = 60_000;
const RATE_WINDOW_MS = 5_000;

const byId = (id) => document.querySelector(`[data-testid="${id}"]`);
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
};
const fmtTime = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
const fmtInt = (n) => n.toLocaleString("en-US");
const short = (s, n = 8) => (s && s.length > n ? s.slice(0, n) + "…" : s || "");

// ---------------------------------------------------------------------------------------------------------
// State that tests may read through window.__demo (the screen shows the same numbers).

/** Per channel: the demo's own contiguity check, independent of the client's de-duplication. */
const seq = new Map();
/** Per node: deliveries (messages it served) and polls (long-poll responses it answered). */
const nodes = new Map();
const arrivals = []; // receive times, for messages per second
const latencies = []; // {t, v, transport}
const timeline = [];
let total = 0;
let lastTickerPrice = null;
let servingNode = null; // the node behind the latest welcome, poll or delivery
let blocked = params.get("block") === "websocket";
const byTransport = {}; // transport -> messages delivered over it

const demo = {
  gateway: GATEWAY,
  channels: { ticker: TICKER, chat: CHAT },
  client: null,
  seq,
  nodes,
  timeline,
  byTransport,
  get total() { return total; },
  get transport() { return demo.client?.transport ?? null; },
  get state() { return demo.client?.state ?? null; },
  get reconnects() { return demo.client?.reconnects ?? 0; },
  counters() {
    const out = {};
    for (const [ch, c] of seq) out[ch] = { received: c.received, gaps: c.gaps + c.serverGaps, duplicates: c.duplicates, first: c.first, offset: c.offset, epoch: c.epoch };
    return out;
  },
  nodeCounts() {
    const out = {};
    for (const [n, c] of nodes) out[n] = { deliveries: c.deliveries, polls: c.polls };
    return out;
  },
  ready: null,
};
window.__demo = demo;

function seqFor(channel) {
  let c = seq.get(channel);
  if (!c) {
    c = { channel, received: 0, gaps: 0, missing: 0, duplicates: 0, epochChanges: 0, serverGaps: 0, epoch: null, offset: null, first: null };
    seq.set(channel, c);
  }
  return c;
}

function checkSequence(m) {
  const c = seqFor(m.channel);
  c.received++;
  if (c.epoch === null) {
    c.epoch = m.epoch; c.offset = m.offset; c.first = m.offset;
    return "first";
  }
  if (m.epoch !== c.epoch) {
    // A new epoch means the server's history was lost; the client was told by a gap frame. Start over.
    c.epochChanges++; c.epoch = m.epoch; c.offset = m.offset;
    return "epoch";
  }
  if (m.offset === c.offset + 1) { c.offset = m.offset; return "ok"; }
  if (m.offset <= c.offset) { c.duplicates++; return "duplicate"; }
  c.gaps++; c.missing += m.offset - c.offset - 1; c.offset = m.offset;
  return "gap";
}

function nodeFor(name) {
  const key = name || "?";
  let n = nodes.get(key);
  if (!n) { n = { name: key, deliveries: 0, polls: 0, index: nodes.size }; nodes.set(key, n); }
  return n;
}

// ---------------------------------------------------------------------------------------------------------
// Rendering. Cheap things (a chat row) go to the DOM at once; counters are redrawn at most every 150 ms so a
// burst of thousands of messages stays smooth. Timers, not requestAnimationFrame: background tabs keep counting.

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => { renderQueued = false; render(); }, 150);
}

function render() {
  const client = demo.client;
  const now = Date.now();
  while (arrivals.length && arrivals[0] < now - RATE_WINDOW_MS) arrivals.shift();
  while (latencies.length && latencies[0].t < now - CHART_WINDOW_MS) latencies.shift();

  const transport = client?.transport ?? null;
  const state = client?.state ?? "connecting";
  const why = client?.why ?? "";
  setText("state", state);
  setText("tile-state", state);
  byId("conn-dot").dataset.state = state;
  setText("transport", transport ? LABEL[transport] ?? transport : "—");
  const tileT = byId("tile-transport");
  tileT.textContent = transport ? LABEL[transport] ?? transport : "—";
  tileT.dataset.transport = transport ?? "";
  const mode = currentMode();
  setText("why", mode === "auto" ? "chosen by auto" : "set by the switch");
  byId("why").title = why;
  const label = transport ? LABEL[transport] ?? transport : null;
  setText("why-full", explainTransport(mode, label, why, state));
  setText("reconnects", fmtInt(client?.reconnects ?? 0));
  const sid = client?.sessionId;
  setText("session", sid ? `session ${short(sid, 10)}` : "no session yet");
  const nodeTag = byId("node");
  if (servingNode) {
    nodeTag.hidden = false;
    nodeTag.textContent = `node ${servingNode}`;
    nodeTag.title = "the gateway node that served the latest delivery or poll";
    nodeTag.className = `tag node-tag node-${nodeFor(servingNode).index % 6}`;
  }

  const span = Math.min(RATE_WINDOW_MS, Math.max(1000, now - startedAt));
  setText("rate", (arrivals.length / (span / 1000)).toFixed(1));
  setText("total", `${fmtInt(total)} received`);

  if (latencies.length) {
    const last = latencies[latencies.length - 1].v;
    const sorted = latencies.map((l) => l.v).sort((a, b) => a - b);
    const pct = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
    setText("latency", `${fmtMs(last)} ms`);
    setText("latency-pct", `p50 ${fmtMs(pct(0.5))} · p95 ${fmtMs(pct(0.95))} ms`);
  }

  renderSeq();
  renderNodes();
  renderChart(now);
}

/** One sentence on why the client uses the transport it uses (the client's own `why`, made readable). */
function explainTransport(mode, label, why, state) {
  const switched = /\(setTransport\)/.test(why);
  if (mode === "auto") {
    if (!label) return why ? `Auto is choosing: ${why}` : "Auto is choosing a transport…";
    if (switched) return `Auto: staying on ${label} while it works; after a failure the client tries WebSocket, then SSE, then long-polling.`;
    return `Auto chose ${label}${why ? `: ${why}` : "."}`;
  }
  const forced = `${LABEL[mode]} only, set by the switch.`;
  if (state !== "connected" && why) return `${forced} Last attempt: ${why}`;
  if (state !== "connected" && blocked && mode === "websocket") return `${forced} WebSocket is blocked, so it cannot connect.`;
  return forced;
}

const fmtMs = (v) => (v < 10 ? v.toFixed(1) : Math.round(v).toString());

function setText(id, text) {
  const node = byId(id);
  if (node && node.textContent !== text) node.textContent = text;
}

function seqLine(c) {
  const gaps = c.gaps + c.serverGaps;
  return `${c.channel}: ${fmtInt(c.received)} received, ${fmtInt(gaps)} ${gaps === 1 ? "gap" : "gaps"}, ${fmtInt(c.duplicates)} ${c.duplicates === 1 ? "duplicate" : "duplicates"}`;
}

function renderSeq() {
  const list = byId("seq-list");
  for (const ch of [TICKER, CHAT]) seqFor(ch);
  for (const c of seq.values()) {
    let li = list.querySelector(`[data-channel="${CSS.escape(c.channel)}"]`);
    if (!li) {
      li = el("li", { dataset: { channel: c.channel, testid: `seq-${c.channel}` } },
        el("span", { class: "mark", "aria-hidden": "true" }),
        el("span", { class: "line" }, el("span", { class: "text" }), el("span", { class: "sub" })));
      list.append(li);
    }
    const bad = c.gaps + c.serverGaps + c.duplicates > 0;
    li.classList.toggle("bad", bad);
    li.querySelector(".mark").textContent = bad ? "!" : "✓";
    const text = seqLine(c);
    const t = li.querySelector(".text");
    if (t.textContent !== text) t.textContent = text;
    let sub;
    if (c.epoch === null) sub = "waiting for the first message";
    else {
      sub = `offsets ${c.first}…${c.offset} contiguous`;
      if (c.gaps) sub = `${c.missing} missing offsets detected`;
      if (c.serverGaps) sub += ` · ${c.serverGaps} gap reported by the server`;
      if (c.epochChanges) sub += ` · epoch changed ${c.epochChanges}×`;
    }
    const s = li.querySelector(".sub");
    if (s.textContent !== sub) s.textContent = sub;
  }
}

function renderNodes() {
  const body = byId("nodes-body");
  if (!nodes.size) return;
  const empty = body.querySelector(".empty");
  if (empty) empty.remove();
  const max = Math.max(1, ...[...nodes.values()].map((n) => n.deliveries + n.polls));
  for (const n of nodes.values()) {
    let tr = body.querySelector(`[data-node="${CSS.escape(n.name)}"]`);
    if (!tr) {
      tr = el("tr", { dataset: { node: n.name, testid: `node-${n.name}` } },
        el("td", {}, el("span", { class: `tag node-${n.index % 6}`, text: n.name })),
        el("td", { class: "d" }), el("td", { class: "p" }),
        el("td", {}, el("div", { class: `bar node-${n.index % 6}` }, el("span"))));
      body.append(tr);
    }
    tr.querySelector(".d").textContent = fmtInt(n.deliveries);
    tr.querySelector(".p").textContent = fmtInt(n.polls);
    tr.querySelector(".bar span").style.width = `${(100 * (n.deliveries + n.polls)) / max}%`;
  }
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function renderChart(now) {
  const chart = byId("latency-chart");
  const W = 600, H = 140, top = 12, bottom = 18;
  const vals = latencies.map((l) => l.v).sort((a, b) => a - b);
  const p98 = vals.length ? vals[Math.min(vals.length - 1, Math.floor(vals.length * 0.98))] : 10;
  const ceil = niceCeil(Math.max(5, p98 * 1.15));
  const x = (t) => ((t - (now - CHART_WINDOW_MS)) / CHART_WINDOW_MS) * W;
  const y = (v) => top + (H - top - bottom) * (1 - Math.min(v, ceil) / ceil);
  const frag = document.createDocumentFragment();
  for (const f of [0, 0.5, 1]) {
    frag.append(svg("line", { class: "grid-line", x1: 0, x2: W, y1: y(ceil * f), y2: y(ceil * f) }));
  }
  // One polyline per run of the same transport (joined to the previous run), so a switch shows as a change
  // of colour with a dashed marker.
  const runs = [];
  let prev = null;
  for (const l of latencies) {
    const key = l.transport || "unknown";
    let run = runs[runs.length - 1];
    if (!run || run.key !== key) {
      run = { key, points: prev ? [prev] : [], start: l.t };
      runs.push(run);
    }
    run.points.push(l);
    prev = l;
  }
  for (const r of runs.slice(1)) {
    frag.append(svg("line", { class: "switch", x1: x(r.start), x2: x(r.start), y1: top, y2: H - bottom }));
  }
  for (const r of runs) {
    const pts = r.points.map((l) => `${x(l.t).toFixed(1)},${y(l.v).toFixed(1)}`).join(" ");
    frag.append(svg("polyline", { class: `s-${r.key}`, points: pts }));
  }
  // Text would stretch inside a preserveAspectRatio="none" SVG: the scale label is HTML laid over it.
  setText("chart-max", `${ceil} ms`);
  const title = svg("title", {});
  const last = latencies[latencies.length - 1];
  title.textContent = last ? `Latency chart: last ${fmtMs(last.v)} ms over ${latencies.length} messages` : "Latency chart: no messages yet";
  frag.prepend(title);
  chart.replaceChildren(frag);
}

function niceCeil(v) {
  const steps = [5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000];
  return steps.find((s) => s >= v) ?? Math.ceil(v / 10000) * 10000;
}

// Deliveries feed: newest on top, 14 rows.
const FEED_ROWS = 10;
function addFeedRow(m, lat) {
  const body = byId("feed");
  const tr = el("tr", { class: "fresh", dataset: { channel: m.channel, offset: String(m.offset), node: m.node ?? "" } },
    el("td", { text: m.channel, title: m.channel }),
    el("td", { text: String(m.offset) }),
    el("td", {}, el("span", { class: `tag t-${m.transport}`, text: m.transport === "long-polling" ? "poll" : m.transport === "websocket" ? "ws" : m.transport ?? "?" })),
    el("td", {}, el("span", { class: `tag node-${nodeFor(m.node).index % 6}`, text: m.node ?? "?" })),
    el("td", { class: "lat", text: `${fmtMs(lat)}` }));
  body.prepend(tr);
  while (body.children.length > FEED_ROWS) body.lastElementChild.remove();
}

function addTimeline(text, kind = "") {
  const entry = { t: Date.now(), text, kind };
  timeline.push(entry);
  if (timeline.length > 200) timeline.shift();
  const list = byId("timeline");
  list.prepend(el("li", {}, el("time", { text: fmtTime(entry.t) }), el("span", { class: kind ? `ev-${kind}` : "", text })));
  while (list.children.length > 30) list.lastElementChild.remove();
}

// ---------------------------------------------------------------------------------------------------------
// Ticker and chat.

function showTick(m) {
  const d = m.data ?? {};
  const price = Number(d.price);
  if (Number.isFinite(price)) {
    byId("price").textContent = price.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    const delta = byId("delta");
    if (lastTickerPrice !== null) {
      const diff = price - lastTickerPrice;
      delta.textContent = `${diff >= 0 ? "▲" : "▼"} ${Math.abs(diff).toFixed(2)}`;
      delta.className = `delta ${diff >= 0 ? "up" : "down"}`;
    }
    lastTickerPrice = price;
  }
  const seqNo = d.seq ?? m.offset;
  byId("ticker-seq").textContent = `tick #${seqNo} · offset ${m.offset} · node ${m.node ?? "?"}`;
}

const myName = (() => {
  const fromQuery = params.get("name");
  if (fromQuery) return fromQuery.slice(0, 24);
  try {
    const saved = localStorage.getItem("stickless.demo.name");
    if (saved) return saved;
  } catch { /* storage may be disabled */ }
  return `guest-${Math.random().toString(36).slice(2, 6)}`;
})();

function showChat(m) {
  const d = m.data;
  const user = typeof d === "object" && d !== null && typeof d.user === "string" ? d.user : "backend";
  const text = typeof d === "object" && d !== null && typeof d.text === "string" ? d.text : JSON.stringify(d);
  const list = byId("chat-list");
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const li = el("li", { class: user === myName ? "mine" : "", dataset: { offset: String(m.offset), testid: "chat-message" } },
    el("div", {}, el("span", { class: "who", text: user }), el("span", { class: "text", text })),
    el("div", { class: "meta" },
      el("span", { text: fmtTime(m.ts) }),
      el("span", { text: `#${m.offset}` }),
      el("span", { class: `tag t-${m.transport}`, text: m.transport ?? "?", title: `received here over ${m.transport}` }),
      el("span", { class: `tag node-${nodeFor(m.node).index % 6}`, text: m.node ?? "?", title: `delivered by gateway node ${m.node}` })));
  list.append(li);
  while (list.children.length > 200) list.firstElementChild.remove();
  if (nearBottom) list.scrollTop = list.scrollHeight;
}

// ---------------------------------------------------------------------------------------------------------
// Wiring.

const startedAt = Date.now();

function currentMode() {
  return document.querySelector('input[name="transport"]:checked')?.value ?? "auto";
}

function onMessage(m) {
  const now = Date.now();
  total++;
  const verdict = checkSequence(m);
  if (verdict === "gap") addTimeline(`${m.channel}: gap before offset ${m.offset}`, "bad");
  if (verdict === "duplicate") addTimeline(`${m.channel}: duplicate offset ${m.offset}`, "bad");
  arrivals.push(now);
  const lat = Math.max(0, now - Number(m.ts));
  if (Number.isFinite(lat)) latencies.push({ t: now, v: lat, transport: m.transport });
  nodeFor(m.node).deliveries++;
  if (m.node) servingNode = m.node;
  byTransport[m.transport] = (byTransport[m.transport] ?? 0) + 1;
  addFeedRow(m, lat);
  if (m.channel === TICKER) showTick(m);
  else if (m.channel === CHAT) showChat(m);
  scheduleRender();
}

function onGap(g) {
  const c = seqFor(g.channel);
  c.serverGaps++;
  // The server says history no longer reaches back: the cursor moves to (epoch, offset) and delivery goes on
  // from offset + 1. Count the loss once here, not again as a jump.
  if (c.epoch !== null) { c.epoch = g.epoch; c.offset = g.offset; }
  addTimeline(`${g.channel}: server reported a gap (${g.reason}) — history ended before offset ${g.previous?.offset ?? "?"}`, "bad");
  scheduleRender();
}

let lastState = null;
let stateShown = null;
let stateSince = Date.now();
function onState(s) {
  const key = `${s.state}|${s.transport}`;
  if (key !== lastState) {
    lastState = key;
    const kind = s.state === "connected" ? "ok" : /fail|closed|disconnect/.test(s.state) ? "bad" : "";
    const via = s.transport ? ` via ${LABEL[s.transport] ?? s.transport}` : "";
    const reason = s.reason && s.reason !== "connect()" ? ` — ${s.reason}` : "";
    addTimeline(`${s.state}${via}${reason}`, kind);
  }
  if (s.state !== stateShown) { stateShown = s.state; stateSince = Date.now(); }
  setText("state-reason", s.state === "connected" || !s.reason || s.reason === "connect()" ? `since ${fmtTime(stateSince)}` : s.reason);
  scheduleRender();
}

function onWelcome(w) {
  servingNode = w.node ?? servingNode;
  addTimeline(`welcome from node ${w.node ?? "?"} (${LABEL[w.transport] ?? w.transport ?? "?"}, pid ${short(w.pid, 6)})`);
  scheduleRender();
}

function onPoll(p) {
  nodeFor(p.node).polls++;
  if (p.node) servingNode = p.node;
  scheduleRender();
}

function setupControls(client) {
  for (const input of document.querySelectorAll('input[name="transport"]')) {
    input.checked = input.value === START;
    input.addEventListener("change", () => {
      if (!input.checked) return;
      const t = input.value;
      addTimeline(`switch → ${LABEL[t]}`);
      const url = new URL(location.href);
      url.searchParams.set("transport", t);
      history.replaceState(null, "", url);
      Promise.resolve()
        .then(() => client.setTransport(t))
        .catch((e) => addTimeline(`switch to ${LABEL[t]} failed: ${e?.message ?? e}`, "bad"))
        .finally(scheduleRender);
    });
  }
  byId("drop").addEventListener("click", () => {
    addTimeline("dropped the connection on purpose", "bad");
    client.drop();
    scheduleRender();
  });
  const blockBtn = byId("block");
  blockBtn.setAttribute("aria-pressed", String(blocked));
  if (blocked) client.block("websocket", true);
  blockBtn.addEventListener("click", () => {
    blocked = !blocked;
    blockBtn.setAttribute("aria-pressed", String(blocked));
    client.block("websocket", blocked);
    addTimeline(blocked ? "restrictive network: WebSocket now fails" : "network restored: WebSocket allowed", blocked ? "bad" : "ok");
    scheduleRender();
  });

  const name = byId("chat-name");
  name.value = myName;
  const form = byId("chat-form");
  const input = byId("chat-input");
  const err = byId("chat-error");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    const user = name.value.trim() || myName;
    if (!text) return;
    try { localStorage.setItem("stickless.demo.name", user); } catch { /* ignore */ }
    input.value = "";
    try {
      await client.publish(CHAT, { user, text });
      err.hidden = true;
    } catch (e) {
      input.value = text;
      err.hidden = false;
      err.textContent = `Not sent: ${e?.message ?? e}`;
    }
  });
  name.addEventListener("change", () => {
    // The "mine" highlight follows the name actually used.
    for (const li of byId("chat-list").children) li.classList.toggle("mine", li.querySelector(".who")?.textContent === name.value.trim());
  });
}

async function refreshPresence(client) {
  try {
    const r = await client.presence(CHAT);
    const pids = Array.isArray(r) ? r : r?.pids ?? [];
    setText("presence", `${pids.length} here`);
  } catch {
    byId("presence").textContent = "";
  }
}

async function main() {
  byId("gateway-url").textContent = GATEWAY;
  byId("ticker-channel").textContent = TICKER;
  byId("chat-channel").textContent = CHAT;
  const client = new Stickless({ url: GATEWAY, transport: START });
  demo.client = client;
  client.on("message", onMessage);
  client.on("gap", onGap);
  client.on("state", onState);
  client.on("welcome", onWelcome);
  client.on("poll", onPoll);
  setupControls(client);
  render();
  setInterval(render, 1000); // ages the chart and the rate even when nothing arrives
  addTimeline(`connecting to ${GATEWAY} (${LABEL[START]}${blocked ? ", WebSocket blocked" : ""})`);
  await client.connect();
  await Promise.all([client.subscribe(TICKER), client.subscribe(CHAT)]);
  addTimeline(`subscribed to ${TICKER} and ${CHAT}`, "ok");
  refreshPresence(client);
  setInterval(() => refreshPresence(client), 5000);
  scheduleRender();
}

demo.ready = main().catch((e) => {
  addTimeline(`start failed: ${e?.message ?? e}`, "bad");
  console.error(e);
  throw e;
});
demo.ready.catch(() => {});
