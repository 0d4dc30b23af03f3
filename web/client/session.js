// session.js - the session core of the client, the part every transport shares: the public API, the queue of
// upstream frames (resent with the same id after a reconnect, so the server applies each once), the per-channel
// cursors that drop anything already seen, the run loop that negotiates, picks a transport, falls back and backs
// off, and the connection token: taken from getToken(), refreshed in place before its `exp`, replaced after
// `token_expired`. A transport (websocket.js, sse.js, long-polling.js) only moves frames; it reaches the session
// through the `link` that _attach() hands it (and only adds link.token() to its request), and this file names
// none of them outside the TRANSPORTS registry.

import { StickError, readError } from "./errors.js";
import { formatPosition, parsePosition } from "./protocol.js";
import { postFrames, probeSession } from "./send.js";
import { refreshDelay, tokenExpiry } from "./token.js";
import { websocket } from "./websocket.js";
import { sse } from "./sse.js";
import { longPolling } from "./long-polling.js";

/** Every transport by name, in the order auto mode tries them. */
const TRANSPORTS = new Map([websocket, sse, longPolling].map((t) => [t.name, t]));
const STORAGE_KEY = "stickless.transport";
const MAX_BACKOFF_MS = 10000;
const BASE_BACKOFF_MS = 250;
/** How often a frame answered `store_unavailable` (outcome unknown) is sent again, with the same id. */
const MAX_UNKNOWN_RETRIES = 6;
/**
 * The longest channel list a new session's attach URL carries (`channels=`); a longer one is subscribed by frames
 * after the welcome, as a long URL fails behind a proxy (nginx answers 414 past 8 KB, 64 names of 128 characters).
 */
const MAX_ATTACH_CHANNELS_CHARS = 1500;
/** Attach refusals no other transport would fare better with: they are about who the client is, or how often. */
const REFUSALS = new Set(["token_expired", "token_invalid", "forbidden", "rate_limited"]);
/** The refusal a bare HTTP status stands for, when a runtime tells only the status (Node's `ws`, `eventsource`). */
const REFUSAL_BY_STATUS = { 401: "token_invalid", 403: "forbidden", 429: "rate_limited" };

function randomHex(bytes) {
  const a = new Uint8Array(bytes);
  const c = globalThis.crypto;
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(a);
  else for (let i = 0; i < bytes; i++) a[i] = Math.floor(Math.random() * 256);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

function defaultStorage() {
  try {
    const s = globalThis.localStorage;
    if (s && typeof s.getItem === "function") return s;
  } catch (_) {
    // localStorage throws in sandboxed frames and with cookies disabled: just do not remember.
  }
  return null;
}

export class Stickless {
  constructor(options = {}) {
    const g = globalThis;
    const origin = g.location && g.location.origin && g.location.origin !== "null" ? g.location.origin : "";
    this.url = String(options.url || origin).replace(/\/+$/, "");
    if (!this.url) throw new Error("stickless: options.url is required outside a browser page");
    const mode = options.transport || "auto";
    if (mode !== "auto" && !TRANSPORTS.has(mode)) throw new Error(`stickless: unknown transport ${mode}`);
    this._mode = mode;
    this._WebSocket = options.WebSocket || g.WebSocket;
    this._EventSource = options.EventSource || g.EventSource;
    const f = options.fetch || g.fetch;
    // Called as a plain function: a browser's fetch throws "Illegal invocation" when called as our method.
    this._fetch = f ? (...args) => f(...args) : null;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 4000;
    this._storage = options.storage !== undefined ? options.storage : defaultStorage();
    if (options.getToken != null && typeof options.getToken !== "function") throw new Error("stickless: options.getToken must be a function");
    this._getToken = options.getToken || null;

    this.transport = null;
    this.state = "idle";
    this.sessionId = null;
    this.pid = null;
    this.node = null;
    this.reconnects = 0;
    this.refreshes = 0;
    this.why = "";
    this.heartbeatMs = 15000;
    this.pollTimeoutMs = 25000;
    this.limits = { max_frames_per_send: 100 };

    this._listeners = new Map();
    this._blocked = new Set();
    this._cursors = new Map(); // channel -> {epoch, offset}: the last message seen
    this._subs = new Set(); // channels the application wants
    this._pending = new Map(); // id -> {frame, resolve, reject, sentOn, inflight}
    this._idPrefix = randomHex(6) + "-";
    this._seq = 0;
    this._connSeq = 0;
    this._conn = null; // the active, welcomed connection
    this._switch = null; // {conn} while setTransport attaches a new connection
    this._negotiated = null;
    this._failures = 0;
    this._closed = false;
    this._running = false; // the (re)connect loop is active
    this._wakeLoop = null;
    this._needResubscribe = false;
    this._everConnected = false;
    this._http = { busy: false, retryTimer: null };
    this._holdTimer = null; // sends the frames the server rate-limited (p.holdUntil) once they are due
    this._connectWaiters = [];
    this._connectPromise = null;
    // The connection token: the current one and its exp (s), the one the server's session holds (an attach
    // sends a token only when they differ), whether the next attach needs a fresh one from getToken(), and
    // whether this run of refused attaches already had its immediate retry with one.
    this._token = options.token ? String(options.token) : null;
    this._tokenExp = tokenExpiry(this._token);
    this._sessionToken = null;
    this._tokenStale = false;
    this._retriedRefusal = false;
    this._subscribeAfterWelcome = false;
    this._refresh = { timer: null, running: false, token: null }; // token: the one the timer is for
  }

  // ---- events ---------------------------------------------------------------------------------------------

  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return this;
  }

  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) set.delete(fn);
    return this;
  }

  _emit(event, payload) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(payload);
      } catch (err) {
        // A listener's bug must not break delivery to the others or the client's own bookkeeping.
        console.error(`stickless: "${event}" listener threw`, err);
      }
    }
  }

  _setState(state, reason) {
    this.state = state;
    this._emit("state", { state, transport: this.transport, reason: reason || "", reconnects: this.reconnects });
  }

  // ---- public API -----------------------------------------------------------------------------------------

  /** The protocol position: `channel@epoch@offset` (a long name as its key) for every subscribed channel with a known cursor. */
  get position() {
    return formatPosition([...this._subs].filter((ch) => this._cursors.has(ch)).map((ch) => [ch, this._cursors.get(ch)]));
  }

  /** The cursor {epoch, offset} of one channel, or null. */
  cursor(channel) {
    const c = this._cursors.get(channel);
    return c ? { ...c } : null;
  }

  /** Resolves once a transport is connected (welcome received). Rejects only if close() is called first. */
  connect() {
    if (this._closed) return Promise.reject(new StickError("closed", "client is closed"));
    if (this.state === "connected") return Promise.resolve(this);
    if (!this._connectPromise) {
      this._connectPromise = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
      if (!this._running) {
        this._setState("connecting", "connect()");
        this._runLoop(false);
      }
    }
    return this._connectPromise;
  }

  subscribe(channel) {
    this._subs.add(channel);
    return this._request(this._subscribeFrame(channel)).catch((err) => {
      if (err && err.code && err.code !== "closed") this._subs.delete(channel);
      throw err;
    });
  }

  unsubscribe(channel) {
    this._subs.delete(channel);
    this._cursors.delete(channel);
    return this._request({ type: "unsubscribe", channel });
  }

  publish(channel, data) {
    return this._request({ type: "publish", channel, data });
  }

  presence(channel) {
    return this._request({ type: "presence", channel });
  }

  ping() {
    return this._request({ type: "ping" });
  }

  /**
   * Switches transport live ("auto" only changes what the next reconnect tries). Make-before-break: the new
   * transport attaches with the current position; the old one is closed after the new one's welcome.
   * Resolves true once switched (false if a later setTransport or close() superseded it); rejects with an
   * Error carrying .code when the new transport failed, in which case the old one is kept.
   */
  async setTransport(name) {
    if (name !== "auto" && !TRANSPORTS.has(name)) throw new Error(`stickless: unknown transport ${name}`);
    this._mode = name;
    if (name === "auto") return true;
    if (this.state === "idle" || this._closed) return true; // connect() will use it
    if (this.state !== "connected" || !this._conn) {
      if (this._wakeLoop) this._wakeLoop(); // reconnecting: try the new choice now
      await this._waitConnected();
      return this.setTransport(name); // whatever connected meanwhile, switch to `name` live
    }
    if (this._conn.name === name && !this._switch) return true;
    if (this._switch) {
      const prev = this._switch;
      this._switch = null;
      if (prev.conn) prev.conn.abort("superseded by another setTransport");
    }
    const old = this._conn;
    const sw = { conn: null };
    this._switch = sw;
    try {
      const conn = await this._attach(name, (c) => (sw.conn = c));
      if (this._switch !== sw || this._closed || conn.closed) {
        conn.close("switch abandoned");
        if (this._switch === sw) this._switch = null;
        this._reconnectIfLostDuringSwitch();
        return false;
      }
      this._switch = null;
      this._activate(conn, `switched from ${old.name} to ${name} (setTransport)`, false);
      old.close("replaced by " + name);
      return true;
    } catch (err) {
      if (this._switch === sw) this._switch = null;
      const failure = new StickError(err.code || "switch_failed", `switch to ${name} failed: ${err.message}`);
      if (err.code === "aborted") return false; // superseded by a later setTransport, or close()
      this._emit("error", failure);
      this._reconnectIfLostDuringSwitch();
      throw failure;
    }
  }

  /** Simulates a restrictive network: a blocked transport attaches to a path that does not exist, so it fails. */
  block(name, blocked = true) {
    if (!TRANSPORTS.has(name)) throw new Error(`stickless: unknown transport ${name}`);
    if (blocked) this._blocked.add(name);
    else this._blocked.delete(name);
    if (!blocked && !this._conn && this._wakeLoop) this._wakeLoop(); // reconnecting: try again now
    if (blocked && this._conn && this._conn.name === name) {
      this._connectionLost(this._conn, new StickError("blocked", `${name} blocked`));
    }
  }

  /** Asks the server about `session` with a ping over POST /v1/send; with every transport blocked (`block`), the
   * network is down and nothing reaches the server. */
  _probe(session) {
    if ([...TRANSPORTS.keys()].every((name) => this._blocked.has(name))) return Promise.resolve({ status: 0, code: "unreachable" });
    return probeSession(this._fetch, this.url, session, this._nextId(), this.connectTimeoutMs);
  }

  /** Drops the current connection like a network failure; the client reconnects and resumes. */
  drop() {
    if (this._conn) this._connectionLost(this._conn, new StickError("dropped", "dropped by drop()"));
  }

  close() {
    if (this._closed) return;
    this._closed = true;
    if (this._switch && this._switch.conn) this._switch.conn.abort("client closed");
    this._switch = null;
    if (this._conn) this._conn.close("client closed");
    this._conn = null;
    if (this._wakeLoop) this._wakeLoop();
    clearTimeout(this._http.retryTimer);
    clearTimeout(this._holdTimer);
    clearTimeout(this._refresh.timer);
    const err = new StickError("closed", "client closed");
    for (const p of this._pending.values()) p.reject(err);
    this._pending.clear();
    for (const w of this._connectWaiters.splice(0)) w.reject(err);
    this._setState("closed", "close()");
  }

  // ---- upstream frames ------------------------------------------------------------------------------------

  _nextId() {
    return this._idPrefix + ++this._seq;
  }

  /** A subscribe frame for `channel`, resuming from its cursor when there is one. */
  _subscribeFrame(channel) {
    const frame = { type: "subscribe", channel };
    const c = this._cursors.get(channel);
    if (c) frame.since = { epoch: c.epoch, offset: c.offset };
    return frame;
  }

  _request(frame) {
    if (this._closed) return Promise.reject(new StickError("closed", "client is closed"));
    const id = this._nextId();
    const full = { ...frame, id };
    return new Promise((resolve, reject) => {
      this._pending.set(id, { frame: full, resolve, reject, sentOn: 0, inflight: false });
      this._flush();
    });
  }

  /**
   * Sends every pending frame not yet sent on the active connection (same id on a resend: the server dedupes):
   * on the connection itself when its transport carries upstream frames (`conn.send`), else by POST /v1/send.
   */
  _flush() {
    const conn = this._conn;
    if (!conn || conn.closed || this._closed) return;
    if (conn.send) {
      const now = Date.now();
      for (const p of this._pending.values()) {
        if (p.sentOn === conn.id || p.inflight || p.holdUntil > now) continue;
        if (!conn.send(p.frame)) return;
        p.sentOn = conn.id;
      }
    } else {
      this._httpFlush();
    }
  }

  async _httpFlush() {
    if (this._http.busy || !this.sessionId) return;
    const max = Math.max(1, this.limits.max_frames_per_send || 100);
    const batch = [];
    const now = Date.now();
    for (const p of this._pending.values()) {
      if (p.inflight || p.holdUntil > now) continue;
      batch.push(p);
      if (batch.length >= max) break;
    }
    if (!batch.length) return;
    this._http.busy = true;
    const session = this.sessionId;
    for (const p of batch) p.inflight = true;
    let retryLater = false;
    let retryAfterMs = null;
    // A send on a dead pooled connection would hang forever with our frames marked in flight.
    const ctrl = new AbortController();
    const limit = setTimeout(() => ctrl.abort(), 15000);
    try {
      const res = await postFrames(this._fetch, this.url, session, batch.map((p) => p.frame), ctrl.signal);
      if (res.ok) {
        const answers = await res.json();
        for (const p of batch) p.inflight = false;
        for (const f of Array.isArray(answers) ? answers : [answers]) this._onAnswer(f);
        // Anything the server did not answer stays pending and goes again.
      } else {
        const err = await readError(res);
        for (const p of batch) p.inflight = false;
        if (err.code === "session_unknown") {
          if (this.sessionId === session) this._sessionLost(err);
        } else if (res.status >= 500 || res.status === 429) {
          retryLater = true;
          retryAfterMs = err.retryAfterMs ?? null;
        } else {
          for (const p of batch) {
            this._pending.delete(p.frame.id);
            p.reject(err);
          }
        }
      }
    } catch (err) {
      // Network failure: nothing is known about these frames; they go again with the same ids.
      for (const p of batch) p.inflight = false;
      retryLater = true;
    } finally {
      clearTimeout(limit);
      this._http.busy = false;
    }
    if (retryLater) {
      clearTimeout(this._http.retryTimer);
      this._http.retryTimer = setTimeout(() => this._flush(), retryAfterMs ?? 500 + Math.random() * 1000);
    } else if (this._conn && !this._conn.send) {
      this._httpFlush();
    } else {
      this._flush();
    }
  }

  _onAnswer(f) {
    if (!f || typeof f !== "object") return;
    if (f.type === "ack") {
      const p = this._pending.get(f.id);
      if (!p) return; // a second answer to a resent frame
      this._pending.delete(f.id);
      const r = f.result;
      if (p.frame.type === "subscribe" && r && r.epoch != null && this._subs.has(p.frame.channel)) {
        // The cursor delivery starts after: it lets a resume name this channel even before its first message.
        const c = this._cursors.get(p.frame.channel);
        if (!c) this._cursors.set(p.frame.channel, { epoch: r.epoch, offset: r.offset });
      }
      p.resolve(r);
    } else if (f.type === "error") {
      this._emit("error", f);
      if (f.id != null) {
        const p = this._pending.get(f.id);
        if (!p) return;
        if (f.code === "rate_limited") {
          this._holdBack(p); // over the session's rate: the same frame (same id) goes again later
          return;
        }
        if (f.code === "store_unavailable" && (p.holds || 0) < MAX_UNKNOWN_RETRIES) {
          // Outcome unknown (it may be stored): the same frame, same id, again later; the server stores it once
          // and answers where.
          this._holdBack(p);
          return;
        }
        this._pending.delete(f.id);
        p.reject(new StickError(f.code, f.message, { frame: f }));
      } else if (f.code === "session_unknown") {
        this._sessionLost(new StickError(f.code, f.message));
      }
    }
  }

  /** Holds a rate-limited frame back, doubling the wait each time (about 0.5 s up to 10 s), then sends it again. */
  _holdBack(p) {
    p.holds = (p.holds || 0) + 1;
    p.holdUntil = Date.now() + Math.min(MAX_BACKOFF_MS, 500 * 2 ** (p.holds - 1)) * (0.5 + Math.random() / 2);
    p.sentOn = 0;
    this._wakeHeld();
  }

  /**
   * Sets the timer for the earliest held frame: then what is due is sent, and the timer set for the next. A held
   * frame that fell due while its timer had not fired yet (another frame held back in the same turn clears the
   * timer) is sent now: left out of the next timer, it would wait for a reconnect forever.
   */
  _wakeHeld() {
    clearTimeout(this._holdTimer);
    if (this._closed) return;
    let now = Date.now();
    const late = [...this._pending.values()].some((p) => p.holds && p.holdUntil <= now && !p.sentOn && !p.inflight);
    if (late) {
      this._flush();
      now = Date.now();
    }
    let due = Infinity;
    for (const p of this._pending.values()) if (p.holdUntil > now) due = Math.min(due, p.holdUntil);
    if (due === Infinity) return;
    this._holdTimer = setTimeout(() => {
      this._flush();
      this._wakeHeld();
    }, due - now);
  }

  // ---- downstream frames ----------------------------------------------------------------------------------

  /** Moves the cursor of a subscribed channel to a `message` or `gap` frame; false if the frame is not new. */
  _advance(f) {
    if (!this._subs.has(f.channel)) return false;
    const c = this._cursors.get(f.channel);
    if (c && c.epoch === f.epoch && !(f.offset > c.offset)) return false; // seen already (switch overlap, resend)
    this._cursors.set(f.channel, { epoch: f.epoch, offset: f.offset });
    return true;
  }

  _onFrame(conn, f, node) {
    if (conn.closed || !f || typeof f !== "object") return;
    switch (f.type) {
      case "message": {
        if (!this._advance(f)) return;
        const m = {
          channel: f.channel,
          epoch: f.epoch,
          offset: f.offset,
          ts: f.ts,
          data: f.data,
          node: node || conn.node || this.node,
          transport: conn.name,
        };
        if (f.from) m.from = f.from; // published by a client: who (backend messages have none)
        this._emit("message", m);
        return;
      }
      case "gap": {
        if (this._advance(f)) this._emit("gap", { ...f, transport: conn.name });
        return;
      }
      case "reconnect": {
        // The node is draining: come back after the delay it drew (spreading its clients over its window), to
        // whichever node the balancer picks, with our session and position.
        const after = Number.isFinite(f.after_ms) && f.after_ms >= 0 ? f.after_ms : null;
        this._reconnectAfterMs = after;
        this._connectionLost(conn, new StickError("draining", `the node is draining: reconnecting in ${after ?? "a moment"} ms`));
        return;
      }
      case "ack":
        this._onAnswer(f);
        return;
      case "error":
        this._onAnswer(f);
        if (f.id == null && f.code === "token_expired") {
          // The feed's last frame: the session stops until it has a new token (see _connectionLost).
          this._connectionLost(conn, new StickError(f.code, f.message || "the connection token has expired", { frame: f }));
        }
        return;
      default:
        return; // welcome is handled by the connection; heartbeat only feeds the silence timer
    }
  }

  /**
   * A long-poll answer's envelope, after its frames: its session, and the server's cursor for subscribed channels
   * we have not seen a message on yet, so the next poll does not start again from the subscription point.
   */
  _adoptEnvelope(body) {
    if (body.session && !this.sessionId) this.sessionId = body.session;
    for (const [ch, cur] of parsePosition(body.position, this._subs)) {
      if (this._subs.has(ch) && !this._cursors.has(ch)) this._cursors.set(ch, cur);
    }
  }

  // ---- connection token -----------------------------------------------------------------------------------

  /** The token an attach presents: only when the server's session does not hold it yet (new session, new token). */
  _attachToken() {
    if (!this._token) return null;
    return !this.sessionId || this._token !== this._sessionToken ? this._token : null;
  }

  /** Before a connect round: a token from getToken() when there is none yet, the server refused it, or it expired. */
  async _prepareToken() {
    if (!this._getToken) return;
    const expired = this._tokenExp != null && Date.now() >= this._tokenExp * 1000;
    if (!this._token || this._tokenStale || expired) this._takeToken(await this._getToken());
    else if (this._refresh.token !== this._token) this._scheduleRefresh(); // options.token: schedule its refresh
  }

  /** Makes `token` the one later attaches present, and schedules its refresh. */
  _takeToken(token) {
    if (typeof token !== "string" || !token) throw new StickError("token_unavailable", "getToken() gave no token");
    this._token = token;
    this._tokenExp = tokenExpiry(token);
    this._tokenStale = false;
    this._scheduleRefresh();
  }

  _scheduleRefresh() {
    clearTimeout(this._refresh.timer);
    this._refresh.timer = null;
    this._refresh.token = this._token;
    if (!this._getToken || this._closed) return;
    const delay = refreshDelay(this._tokenExp, Date.now());
    if (delay != null) this._refresh.timer = setTimeout(() => this._refreshInPlace(), delay);
  }

  /**
   * Before `exp`: a new token from getToken(), handed to the session by a `refresh` frame on the current
   * connection (POST /v1/send for SSE and long-polling) - no reconnect, nothing lost. A refresh the server
   * refuses (a token for another user, an invalid one) is not retried: at `exp` the server ends the feed with
   * `token_expired`, and the reconnect that follows asks getToken() again.
   */
  async _refreshInPlace() {
    this._refresh.timer = null;
    if (this._closed || this._refresh.running || !this._getToken) return;
    if (!this._conn || !this.sessionId) {
      this._tokenStale = true; // not connected: the next attach takes a fresh token instead
      return;
    }
    this._refresh.running = true;
    try {
      const token = await this._getToken();
      if (typeof token !== "string" || !token) throw new StickError("token_unavailable", "getToken() gave no token");
      if (token === this._token) return; // nothing newer to hand over; at exp the reconnect asks again
      const result = await this._request({ type: "refresh", token });
      this._sessionToken = token;
      const exp = tokenExpiry(token) ?? (result && result.exp) ?? null;
      // A reconnect may have taken a newer token meanwhile: keep whichever lives longer.
      if (this._tokenExp == null || exp == null || exp >= this._tokenExp) this._takeToken(token);
      this.refreshes++;
      this._emit("token", { via: "refresh", exp, transport: this.transport });
    } catch (err) {
      if (this._closed || (err && err.code === "closed")) return;
      // An `error` frame was emitted as it came; anything else (getToken() threw, an HTTP failure) is told here.
      if (!(err && err.frame)) this._emit("error", err instanceof StickError ? err : new StickError("token_unavailable", `getToken() failed: ${err && err.message}`));
    } finally {
      this._refresh.running = false;
    }
  }

  // ---- connection management ------------------------------------------------------------------------------

  _waitConnected() {
    if (this.state === "connected") return Promise.resolve();
    return new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
  }

  /** After a setTransport ended without switching: if the old connection died meanwhile, reconnect. */
  _reconnectIfLostDuringSwitch() {
    if (!this._switch && !this._conn && !this._closed) {
      this._setState("reconnecting", "connection lost during a transport switch");
      this._runLoop(true);
    }
  }

  /** The server no longer knows our session: the next attach makes a new one and subscribes every channel again. */
  _forgetSession() {
    this.sessionId = null;
    this._needResubscribe = true;
  }

  _sessionLost(err) {
    if (this._closed) return;
    this._forgetSession();
    this._emit("error", err);
    if (this._conn) this._connectionLost(this._conn, err);
  }

  _connectionLost(conn, err) {
    if (conn.closed && conn !== this._conn) return;
    conn.close(err.message);
    if (conn !== this._conn) return;
    this._conn = null;
    if (this._closed) return;
    if (err.code === "session_unknown") this._forgetSession();
    if (err.code === "token_expired") {
      // Told by the feed's last frame (emitted as it came) or by a refused poll: the reconnect takes a token
      // from getToken() and hands it to the same session, which resumes from our position.
      this._tokenStale = true;
      if (!err.frame) this._emit("error", err);
    }
    if (this._switch) {
      // setTransport is attaching a replacement with our position: let it finish or fail first.
      return;
    }
    this._setState("reconnecting", err.message);
    this._runLoop(true);
  }

  _backoff() {
    return Math.random() * Math.min(MAX_BACKOFF_MS, BASE_BACKOFF_MS * 2 ** this._failures);
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        resolve();
      }
      this._wakeLoop = done;
    }).finally(() => (this._wakeLoop = null));
  }

  async _negotiate() {
    const ctrl = typeof AbortController === "function" ? new AbortController() : null;
    const t = setTimeout(() => ctrl && ctrl.abort(), this.connectTimeoutMs);
    try {
      const res = await this._fetch(`${this.url}/v1/negotiate`, { signal: ctrl && ctrl.signal, cache: "no-store" });
      if (!res.ok) throw await readError(res);
      const n = await res.json();
      this._negotiated = n;
      if (n.heartbeat_ms) this.heartbeatMs = n.heartbeat_ms;
      if (n.poll_timeout_ms) this.pollTimeoutMs = n.poll_timeout_ms;
      if (n.limits) this.limits = { ...this.limits, ...n.limits };
      return n;
    } finally {
      clearTimeout(t);
    }
  }

  _remembered() {
    try {
      const v = this._storage && this._storage.getItem(STORAGE_KEY);
      return TRANSPORTS.has(v) ? v : null;
    } catch (_) {
      return null;
    }
  }

  _remember(name) {
    try {
      if (this._storage) this._storage.setItem(STORAGE_KEY, name);
    } catch (_) {
      // quota or privacy mode: not remembering is fine
    }
  }

  /** Which transports to try this round, in order, and a note on why. */
  async _plan(reconnect, previous) {
    // Once negotiated, a reconnect does not wait for it (a pooled keep-alive connection may be the dead one):
    // the answer is refreshed in the background and a transport turned off since simply fails to attach.
    const known = this._negotiated;
    if (known && this._fetch) this._negotiate().catch(() => null);
    if (this._mode !== "auto") {
      if (!known && this._fetch) await this._negotiate().catch(() => null); // only for limits and timings
      return { order: [this._mode], note: `transport set to ${this._mode}` };
    }
    const n = known || (await this._negotiate()); // throws: the round fails and backs off
    const all = [...TRANSPORTS.keys()];
    const enabled = Array.isArray(n.transports) ? n.transports.map((t) => t.name) : all;
    let order = all.filter((t) => enabled.includes(t));
    const notes = [];
    const disabled = all.filter((t) => !enabled.includes(t));
    if (disabled.length) notes.push(`server disabled ${disabled.join(", ")}`);
    const first = reconnect && previous && order.includes(previous) ? previous : this._remembered();
    if (first && order.includes(first) && order[0] !== first) {
      order = [first, ...order.filter((t) => t !== first)];
      notes.push(reconnect && first === previous ? `retrying ${first} first` : `remembered ${first} from last time`);
    } else if (first && first === order[0] && !reconnect) {
      notes.push(`remembered ${first} from last time`);
    }
    return { order, note: notes.join("; ") };
  }

  async _runLoop(reconnect) {
    if (this._running) return;
    this._running = true;
    const previous = this.transport;
    try {
      if (reconnect) {
        // A draining node said when to come back: that, not our backoff (it is not a failure).
        const told = this._reconnectAfterMs;
        this._reconnectAfterMs = null;
        await this._sleep(told ?? this._backoff());
      }
      while (!this._closed && !this._conn) {
        const failures = [];
        let refusal = null; // refused for who the client is or how often: another transport would fare no better
        let plan = null;
        try {
          plan = await this._plan(reconnect, previous);
        } catch (err) {
          failures.push(`negotiate failed (${err.message})`);
        }
        if (plan) {
          try {
            await this._prepareToken();
          } catch (err) {
            failures.push(`getToken() failed (${err.message})`);
            plan = null;
          }
        }
        const mode = this._mode;
        for (const name of plan ? plan.order : []) {
          if (this._closed || this._conn || this._mode !== mode) break; // setTransport changed the plan
          let conn = null;
          let retriedSession = false;
          for (;;) {
            try {
              conn = await this._attach(name);
            } catch (err) {
              if (err.code === "session_unknown" && !retriedSession && !this._closed) {
                // The session expired: a new one, re-subscribed from our cursors, loses nothing history holds.
                retriedSession = true;
                this._emit("error", err);
                this._forgetSession();
                continue;
              }
              failures.push(`${name} failed (${err.message})`);
              refusal = this._refusal(err);
            }
            break;
          }
          if (refusal) break;
          if (conn && conn.closed) {
            failures.push(`${name} failed (closed right after its welcome)`);
            continue;
          }
          if (conn) {
            if (this._closed || this._conn) {
              conn.close("not needed");
              break;
            }
            const first = !failures.length && name === plan.order[0] && !plan.note ? " (first choice)" : "";
            const why = [plan.note, ...failures, `${name} connected${first}`].filter(Boolean).join("; ");
            if (this._mode === "auto") this._remember(name);
            this._activate(conn, why, reconnect);
            break;
          }
        }
        if (this._conn || this._closed) break;
        if (this._mode !== mode) continue; // replan at once with the new choice
        this.why = failures.join("; ");
        this._emit("error", refusal || new StickError("connect_failed", this.why || "no transport connected"));
        this._setState(this._everConnected ? "reconnecting" : "connecting", this.why);
        reconnect = true;
        if (refusal && this._afterRefusal(refusal)) continue;
        this._failures++;
        await this._sleep(Math.max(this._backoff(), (refusal && refusal.retryAfterMs) || 0));
      }
    } finally {
      this._running = false;
    }
  }

  /** The attach refusal `err` stands for (a StickError with its code), or null when it is another failure. */
  _refusal(err) {
    if (REFUSALS.has(err.code)) return err;
    const code = REFUSAL_BY_STATUS[err.status];
    return code ? new StickError(code, err.message, { status: err.status, retryAfterMs: err.retryAfterMs }) : null;
  }

  /**
   * After an attach was refused: changes what the next attach sends, and says whether to try it at once. The
   * same token is not worth another try: the next attach takes a fresh one from getToken(). Only the first retry
   * of a run of refusals is immediate; after that the loop backs off, so a token that never works cannot spin it.
   */
  _afterRefusal(refusal) {
    if (refusal.code === "rate_limited") return false;
    if (refusal.code === "forbidden" && !this.sessionId && this._subs.size && !this._subscribeAfterWelcome) {
      // A new session subscribes at attach (`channels`), and one channel the claims do not allow refuses the
      // whole attach: subscribe after the welcome instead, so only that channel's subscribe fails.
      this._subscribeAfterWelcome = true;
      this._needResubscribe = true;
      return true;
    }
    if (!this._getToken) return false;
    this._tokenStale = true;
    if (this._retriedRefusal) return false;
    this._retriedRefusal = true;
    return true;
  }

  _activate(conn, why, isReconnect) {
    this._conn = conn;
    this.transport = conn.name;
    this.why = why;
    this._failures = 0;
    this._retriedRefusal = false;
    this._subscribeAfterWelcome = false;
    if (isReconnect && this._everConnected) this.reconnects++;
    this._everConnected = true;
    this._setState("connected", why);
    this._connectPromise = null;
    for (const w of this._connectWaiters.splice(0)) w.resolve(this);
    if (this._needResubscribe) {
      this._needResubscribe = false;
      this._resubscribe();
    }
    this._flush();
    // A refresh fell due while this attach was under way (with the token before): hand the next one over now.
    if (this._tokenStale) this._refreshInPlace();
  }

  /** After a new session replaced a lost one: subscribe every channel again from its cursor. */
  _resubscribe() {
    const queued = new Set([...this._pending.values()].filter((p) => p.frame.type === "subscribe").map((p) => p.frame.channel));
    for (const ch of this._subs) {
      if (queued.has(ch)) continue;
      this._request(this._subscribeFrame(ch)).catch((err) => {
        // As for subscribe(): a refused channel (e.g. one a new token no longer allows) is no longer wanted.
        if (err && err.code && err.code !== "closed") this._subs.delete(ch);
        this._emit("error", err);
      });
    }
  }

  _onWelcome(conn, f) {
    const previous = this.sessionId;
    this.sessionId = f.session || this.sessionId;
    if (f.pid) this.pid = f.pid;
    if (f.node) this.node = conn.node = f.node;
    if (f.heartbeat_ms) this.heartbeatMs = f.heartbeat_ms;
    if (previous && f.session && previous !== f.session) this._needResubscribe = true;
    this._emit("welcome", { ...f, transport: conn.name });
    if (conn.token) {
      // The session took the token this attach carried: later attaches need not send it again.
      this._sessionToken = conn.token;
      this._emit("token", { via: "attach", exp: tokenExpiry(conn.token), transport: conn.name });
    }
  }

  /** The URL a transport attaches to: its path (blocked, negotiated or default) and the attach query as of now. */
  _attachUrl(name) {
    let path = TRANSPORTS.get(name).path;
    const t = this._negotiated && Array.isArray(this._negotiated.transports)
      ? this._negotiated.transports.find((x) => x.name === name)
      : null;
    if (t && t.path) path = t.path;
    if (this._blocked.has(name)) path = `/v1/blocked/${name}`; // a path that does not exist: a real failure
    const url = new URL(path, this.url);
    const q = new URLSearchParams();
    if (this.sessionId) q.set("session", this.sessionId);
    const pos = this.position;
    if (pos) q.set("position", pos);
    // A new session (first connect or after session_unknown) subscribes at attach; `position` sets each start. A
    // list too long for the URL is subscribed after the welcome instead, each frame with its cursor.
    if (!this.sessionId && this._subs.size && !this._subscribeAfterWelcome) {
      const channels = [...this._subs].join(",");
      if (channels.length <= MAX_ATTACH_CHANNELS_CHARS) {
        q.set("channels", channels);
      } else {
        this._subscribeAfterWelcome = true;
        this._needResubscribe = true;
      }
    }
    url.search = q.toString();
    return url;
  }

  /**
   * Opens a connection of one transport; resolves with it once its welcome arrived within connectTimeoutMs.
   * A transport is `open(link)`, returning `{close, send?}`: close() frees what it holds (called once, by
   * conn.close), send(frame) only if it carries upstream frames itself. The `link` is all it sees of the
   * session: the connection (`conn`), the client's public state (`client`), the runtime's implementations, and
   * the calls back into this core.
   */
  _attach(name, onCreated) {
    return new Promise((resolve, reject) => {
      let opened = { close() {} };
      const conn = {
        id: ++this._connSeq,
        name,
        node: null,
        welcomed: false,
        closed: false,
        close: () => {
          if (conn.closed) return;
          conn.closed = true;
          opened.close();
        },
        send: null,
        abort: (reason) => fail(new StickError("aborted", reason)),
      };
      let settled = false;
      const timer = setTimeout(() => fail(new StickError("timeout", `no welcome within ${this.connectTimeoutMs} ms`)), this.connectTimeoutMs);
      const welcome = (f) => {
        if (conn.closed || conn.welcomed) return;
        this._onWelcome(conn, f);
        conn.welcomed = true;
        clearTimeout(timer);
        if (!settled) {
          settled = true;
          resolve(conn);
        }
      };
      const fail = (err) => {
        clearTimeout(timer);
        if (!settled) {
          settled = true;
          conn.close(err.message);
          reject(err);
        } else if (!conn.closed) {
          this._connectionLost(conn, err);
        }
      };
      const link = {
        conn,
        client: this,
        WebSocket: this._WebSocket,
        EventSource: this._EventSource,
        fetch: this._fetch,
        url: () => this._attachUrl(name),
        // The token to present, when the session does not hold it yet (a new session, or a fresh token).
        token: () => {
          const token = this._attachToken();
          if (token) conn.token = token;
          return token;
        },
        welcome,
        fail,
        deliver: (f, node) => this._onFrame(conn, f, node),
        emit: (event, payload) => this._emit(event, payload),
        adoptEnvelope: (body) => this._adoptEnvelope(body),
        probeSession: (session) => this._probe(session),
        // A refused attach of an existing session whose answer the runtime hides: the error the server names for
        // the session (session_unknown, token_expired, ...), or `err` when it names none.
        explainRefusal: async (session, err) => {
          const { code } = await this._probe(session);
          return code !== "ok" && code !== "unreachable" ? new StickError(code, `${err.message}: ${code}`, { status: err.status }) : err;
        },
      };
      try {
        opened = TRANSPORTS.get(name).open(link);
        conn.send = opened.send || null;
      } catch (err) {
        fail(err instanceof StickError ? err : new StickError("transport_error", err.message));
      }
      if (onCreated) onCreated(conn);
    });
  }
}
