// errors.js - the one error type the client rejects and emits with, so an application can branch on `code`
// (the protocol's codes from docs/PROTOCOL.md, or the client's own such as "closed" and "timeout") whichever
// transport or HTTP call the failure came from.

/** An error carrying the protocol's error `code` (e.g. "invalid_channel", "session_unknown"). */
export class StickError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = "StickError";
    this.code = code;
    Object.assign(this, extra);
  }
}

/**
 * The StickError of a failed HTTP answer: its `{"error":{code, message}}` body, or `http_<status>` without one;
 * with `retryAfterMs` when it carried a `Retry-After` (in seconds, as the gateway sends it with `rate_limited`).
 */
export async function readError(res) {
  let code = `http_${res.status}`;
  let message = `HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch (_) {
    // not JSON: keep the status
  }
  const extra = { status: res.status };
  const header = res.headers && typeof res.headers.get === "function" ? res.headers.get("retry-after") : null;
  if (header && Number(header) >= 0) extra.retryAfterMs = Number(header) * 1000;
  return new StickError(code, message, extra);
}
