// long-polling.js - the long-polling transport (GET /v1/poll): one held request after another, each carrying the
// position as it is now, so any node can answer any poll; upstream frames go by POST /v1/send (the session core
// sends them). A poll that creates a session answers with a welcome; a poll on an existing session is held until
// something arrives, so that attach is confirmed by a probe on /v1/send instead.

import { StickError, readError } from "./errors.js";

/** Starts polling for `link.conn`; returns {close} (see Stickless._attach in session.js). */
function open(link) {
  const { conn, client, welcome, fail } = link;
  if (!link.fetch) throw new StickError("unsupported", "no fetch implementation");
  let ctrl = null;
  // The welcome of an attach whose answer had none: the answer (or the probe) proves the session and the path work.
  const impliedWelcome = (fields) => welcome({ type: "welcome", ...fields, transport: "long-polling", heartbeat_ms: client.heartbeatMs });
  const loop = async () => {
    while (!conn.closed) {
      const url = link.url();
      // A header, unlike a query parameter, stays out of access logs; fetch can send one.
      const token = link.token();
      const headers = token ? { authorization: `Bearer ${token}` } : undefined;
      ctrl = new AbortController();
      const c = ctrl;
      // The server answers within poll_timeout_ms; a poll hanging well past that is a dead link.
      const limit = setTimeout(() => c.abort(), client.pollTimeoutMs + 10000);
      let body;
      try {
        const res = await link.fetch(url.toString(), { signal: c.signal, cache: "no-store", headers });
        if (!res.ok) throw await readError(res);
        body = await res.json();
      } catch (err) {
        clearTimeout(limit);
        if (conn.closed) return;
        fail(err instanceof StickError ? err : new StickError("poll_failed", err.message || String(err)));
        return;
      }
      clearTimeout(limit);
      if (conn.closed) return;
      const frames = Array.isArray(body.frames) ? body.frames : [];
      if (body.node) conn.node = body.node;
      link.emit("poll", { node: body.node, frames });
      let welcomed = false;
      for (const f of frames) {
        if (conn.closed) return;
        if (f && f.type === "welcome") {
          welcome(f);
          welcomed = true;
        } else {
          if (!conn.welcomed && !welcomed) {
            impliedWelcome({ session: body.session || client.sessionId, node: body.node });
            welcomed = true;
          }
          link.deliver(f, body.node);
        }
      }
      if (!conn.welcomed && !conn.closed) impliedWelcome({ session: body.session || client.sessionId, node: body.node });
      link.adoptEnvelope(body);
    }
  };
  loop();
  const existing = client.sessionId;
  if (existing) {
    // A poll on an existing session is held until something arrives (no welcome): once /v1/send confirms the
    // session and the poll has not been refused meanwhile, the poll - which carries our position - is attached.
    // A ping refused inside a 200 answer still proves the session: the held poll, which carries any new token,
    // is what tells whether it may be served.
    link.probeSession(existing).then(({ status, code }) => {
      if (conn.closed || conn.welcomed) return;
      if (code === "session_unknown") return fail(new StickError(code, "session unknown"));
      if (status !== 200) return fail(new StickError("probe_failed", `session check failed (${code})`));
      setTimeout(() => {
        if (conn.closed || conn.welcomed) return;
        impliedWelcome({ session: existing, pid: client.pid, node: conn.node || client.node });
      }, 150);
    });
  }
  return {
    close() {
      if (ctrl) ctrl.abort();
    },
  };
}

export const longPolling = { name: "long-polling", path: "/v1/poll", open };
