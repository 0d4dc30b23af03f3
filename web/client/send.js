// send.js - POST /v1/send, the upstream path of the transports that only receive (SSE and long-polling), like
// transports/src/send.rs on the server. The session core sends its queued frames through it; the SSE and
// long-polling transports use it to ask whether a session still exists, which their attach cannot tell them.

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
 * Whether `session` exists, by sending it one ping frame `{type: "ping", id}`: resolves "ok", the error code of
 * the answer (e.g. "session_unknown"), or "unreachable" when no answer came within timeoutMs.
 */
export async function probeSession(fetch, baseUrl, session, id, timeoutMs) {
  const ctrl = new AbortController();
  const limit = setTimeout(() => ctrl.abort(), timeoutMs);
  try {
    const res = await postFrames(fetch, baseUrl, session, [{ type: "ping", id }], ctrl.signal);
    if (res.ok) {
      await res.arrayBuffer();
      return "ok";
    }
    return (await readError(res)).code;
  } catch (_) {
    return "unreachable";
  } finally {
    clearTimeout(limit);
  }
}
