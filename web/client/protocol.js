// protocol.js - the wire formats the client reads and writes outside of plain frame objects (docs/PROTOCOL.md):
// the position text `channel@epoch@offset,...` and the JSON text of one downstream frame. One place each, so the
// session core and every transport agree on them.

/** Writes cursors (an iterable of [channel, {epoch, offset}]) as a protocol position string. */
export function formatPosition(cursors) {
  const parts = [];
  for (const [channel, c] of cursors) parts.push(`${channel}@${c.epoch}@${c.offset}`);
  return parts.join(",");
}

/** Parses a protocol position string into [channel, {epoch, offset}] pairs (channels never contain `@`). */
export function parsePosition(text) {
  const out = [];
  if (!text) return out;
  for (const part of String(text).split(",")) {
    const last = part.lastIndexOf("@");
    const first = part.indexOf("@");
    if (first <= 0 || last === first) continue;
    const offset = Number(part.slice(last + 1));
    if (!Number.isSafeInteger(offset)) continue;
    out.push([part.slice(0, first), { epoch: part.slice(first + 1, last), offset }]);
  }
  return out;
}

/** The frame in one WebSocket message or SSE event, or null when it is not JSON (such input is ignored). */
export function parseFrame(text) {
  try {
    return JSON.parse(text);
  } catch (_) {
    return null;
  }
}
