// send.js - POST /v1/send, the upstream path of the transports that only receive (SSE and long-polling), like
// transports/src/send.rs on the server. The session core sends its queued frames through it; the transports use it
// to ask whether a session still exists and may be served, which a refused attach cannot always tell them.

import { readError } from "./errors.js";

/** POSTs upstream frames to `session`; resolves with the fetch Response (the caller reads it). */
export function postFrames(fetch, baseUrl, session, frames, signal) {
  return fetch(`${baseUrl}/v1/send?session=${encodeURIComponent(session)}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(frames),
    cache: "no-store",
    signal,
  });
}

/**
 * What the server says of `session`, asked with one ping frame `{type: "ping", id}`: resolves {status, code}, the
 * HTTP status (0 when no answer came within timeoutMs) and "ok" when the ping was acked, else the error code
 * the server answered with - for the whole send (e.g. "session_unknown", status 404) or for the ping inside a 200
 * answer (e.g. "token_expired": the session exists but may not be served) - or "unreachable".
 */
export async function probeSession(fetch, baseUrl, session, id, timeoutMs) {
  const ctrl = new AbortController();
  const limit = setTimeout(() => ctrl.abort(), timeoutMs);
  try {
    const res = await postFrames(fetch, baseUrl, session, [{ type: "ping", id }], ctrl.signal);
    if (!res.ok) return { status: res.status, code: (await readError(res)).code };
    const answers = await res.json().catch(() => null);
    const answer = Array.isArray(answers) ? answers[0] : answers;
    return { status: res.status, code: answer && answer.type === "error" && answer.code ? answer.code : "ok" };
  } catch (_) {
    return { status: 0, code: "unreachable" };
  } finally {
    clearTimeout(limit);
  }
}
