// token.js - what the client reads from a connection token (a JWT, docs/PROTOCOL.md) and when it refreshes one,
// as pure functions the session core drives. The client never verifies a token (the gateway does); it only reads
// `exp` from the payload to know when to ask getToken() for the next one.

/** The payload of a JWT (base64url JSON, not verified), or null when `token` is not one. */
export function tokenClaims(token) {
  const part = typeof token === "string" ? token.split(".")[1] : undefined;
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" && !Array.isArray(claims) ? claims : null;
  } catch (_) {
    return null;
  }
}

/** The token's `exp` in seconds since 1970, or null when it has none the client can read. */
export function tokenExpiry(token) {
  const claims = tokenClaims(token);
  return claims && Number.isFinite(claims.exp) ? claims.exp : null;
}

/** How long before `exp` a refresh is due at least, and at least which share of the remaining lifetime. */
const REFRESH_MARGIN_MS = 5000;
const REFRESH_MARGIN_SHARE = 0.1;

/**
 * In how many ms to refresh a token expiring at `expSec`, seen at `nowMs`: at exp - max(5 s, 10% of what is left),
 * but never before half of what is left (a token shorter than 10 s would otherwise be refreshed at once, and its
 * successor too, in a loop). Null when there is nothing to schedule: no `exp`, or the local clock says it has
 * passed (a clock that runs ahead must not cause a refresh storm; the server's `token_expired` will tell).
 */
export function refreshDelay(expSec, nowMs) {
  if (expSec == null) return null;
  const remaining = expSec * 1000 - nowMs;
  if (!(remaining > 0)) return null;
  const margin = Math.max(REFRESH_MARGIN_MS, remaining * REFRESH_MARGIN_SHARE);
  return Math.max(remaining - margin, remaining / 2);
}
