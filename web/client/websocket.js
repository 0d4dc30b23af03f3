// websocket.js - the WebSocket transport (GET /v1/ws): frames both ways on one socket, so it is the only transport
// that carries upstream frames itself (it returns `send`). Browsers cannot see WebSocket pings, so it watches for the
// server's heartbeat frames and fails the connection after 2.5 heartbeats of silence. A browser cannot read why an
// upgrade was refused (401, 403, 429 come before it), so a refused re-attach asks /v1/send about the session.

import { StickError } from "./errors.js";
import { parseFrame } from "./protocol.js";

/** Opens a WebSocket for `link.conn`; returns {send, close} (see Stickless._attach in session.js). */
function open(link) {
  const { conn, client, welcome, fail } = link;
  const WS = link.WebSocket;
  if (!WS) throw new StickError("unsupported", "no WebSocket implementation");
  const url = link.url();
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const token = link.token();
  if (token) url.searchParams.set("token", token); // a browser WebSocket cannot send headers
  const attachedSession = client.sessionId;
  const ws = new WS(url.toString());
  let silence = null;
  const arm = () => {
    if (!conn.welcomed) return;
    clearTimeout(silence);
    // Browsers cannot see WebSocket pings: the server's heartbeat frames are how we notice a dead link.
    silence = setTimeout(() => fail(new StickError("silence", "no frame for 2.5 heartbeats")), client.heartbeatMs * 2.5);
  };
  let sessionError = null;
  ws.onmessage = (ev) => {
    if (conn.closed) return;
    if (typeof ev.data !== "string") return;
    const f = parseFrame(ev.data);
    if (f === null) return;
    if (f.type === "welcome") {
      welcome(f);
      arm();
      return;
    }
    arm();
    if (f.type === "error" && f.code === "session_unknown" && f.id == null) {
      sessionError = new StickError("session_unknown", f.message || "session unknown");
      fail(sessionError);
      return;
    }
    link.deliver(f);
  };
  // The status of a refused upgrade, where the runtime tells it (Node's `ws`: "Unexpected server response: 401").
  let refusedStatus = 0;
  // An error is always followed by close, which fails the connection; the handler keeps Node's `ws` from throwing.
  ws.onerror = (ev) => {
    const m = /server response: (\d{3})/.exec((ev && ev.message) || "");
    if (m) refusedStatus = Number(m[1]);
  };
  ws.onclose = (ev) => {
    clearTimeout(silence);
    if (conn.closed) return;
    if (sessionError) return fail(sessionError);
    // The server closes with the error code as the reason (`token_expired`, `session_unknown`).
    const reason = ev && typeof ev.reason === "string" ? ev.reason : "";
    if (/^[a-z_]+$/.test(reason)) return fail(new StickError(reason, `websocket closed (${ev.code} ${reason})`));
    if (ev && ev.code === 1008) return fail(new StickError("session_unknown", reason || "closed 1008"));
    const status = refusedStatus ? ` (HTTP ${refusedStatus})` : "";
    const err = new StickError("closed", `websocket closed${ev && ev.code ? ` (${ev.code})` : ""}${status}`, refusedStatus ? { status: refusedStatus } : {});
    if (!conn.welcomed && attachedSession) {
      // Refused before the upgrade: ask /v1/send what is wrong with the session.
      link.explainRefusal(attachedSession, err).then(fail);
    } else {
      fail(err);
    }
  };
  return {
    send(frame) {
      if (ws.readyState !== 1) return false;
      try {
        ws.send(JSON.stringify(frame));
        return true;
      } catch (_) {
        return false;
      }
    },
    close() {
      clearTimeout(silence);
      try {
        ws.close();
      } catch (_) {
        // already closing
      }
    },
  };
}

export const websocket = { name: "websocket", path: "/v1/ws", open };
