// sse.js - the Server-Sent Events transport (GET /v1/sse): frames downstream on an EventSource, upstream by
// POST /v1/send (the session core sends them). The client resumes with its own position, so the EventSource is
// never left to reconnect by itself; and as an EventSource hides the status of a failed attach (in a browser), a
// session that may have expired or lost its grant is checked with a probe on /v1/send.

import { StickError } from "./errors.js";
import { parseFrame } from "./protocol.js";

/** Opens an EventSource for `link.conn`; returns {close} (see Stickless._attach in session.js). */
function open(link) {
  const { conn, welcome, fail } = link;
  const ES = link.EventSource;
  if (!ES) throw new StickError("unsupported", "no EventSource implementation");
  const url = link.url();
  const token = link.token();
  if (token) url.searchParams.set("token", token); // an EventSource cannot send headers
  const attachedSession = link.client.sessionId;
  const es = new ES(url.toString());
  es.onmessage = (ev) => {
    if (conn.closed) return;
    const f = parseFrame(ev.data);
    if (f === null) return;
    if (f.type === "welcome") welcome(f);
    else link.deliver(f);
  };
  es.onerror = (ev) => {
    if (conn.closed) return;
    // We manage reconnects ourselves (with our own position), so the EventSource never retries on its own.
    try {
      es.close();
    } catch (_) {
      // ignore
    }
    // Node's `eventsource` tells the status of a refused attach; a browser's does not.
    const status = ev && ev.code > 0 ? ev.code : undefined;
    const err = new StickError("sse_error", `event stream failed${status ? ` (HTTP ${status})` : ""}`, { status });
    if (!conn.welcomed && attachedSession) {
      // An EventSource hides the error body: ask /v1/send what is wrong with the session.
      link.explainRefusal(attachedSession, err).then(fail);
    } else {
      fail(err);
    }
  };
  return {
    close() {
      try {
        es.close();
      } catch (_) {
        // ignore
      }
    },
  };
}

export const sse = { name: "sse", path: "/v1/sse", open };
