// protocol.js - the wire formats the client reads and writes outside of plain frame objects (docs/PROTOCOL.md):
// the position text `channel@epoch@offset,...` and the JSON text of one downstream frame. One place each, so the
// session core and every transport agree on them.

/** The longest channel name a position spells out; a longer one is written as its key (which is this long). */
const SPELLED_MAX = 17;
const FNV_OFFSET = 0xcbf29ce484222325n;
const FNV_PRIME = 0x100000001b3n;
const U64 = 0xffffffffffffffffn;

/**
 * How a position names `channel`: the name itself up to 17 characters, else `~` and the 16 lowercase hex digits
 * of the 64-bit FNV-1a hash of its bytes (channel names are ASCII), as the server writes it (src/model/position.rs).
 * Keeps a position to about 42 bytes per channel, under what proxies allow in a URL or a header.
 */
export function positionKey(channel) {
  const name = String(channel);
  if (name.length <= SPELLED_MAX) return name;
  let hash = FNV_OFFSET;
  for (let i = 0; i < name.length; i++) hash = ((hash ^ BigInt(name.charCodeAt(i))) * FNV_PRIME) & U64;
  return `~${hash.toString(16).padStart(16, "0")}`;
}

/** Writes cursors (an iterable of [channel, {epoch, offset}]) as a protocol position string. */
export function formatPosition(cursors) {
  const parts = [];
  for (const [channel, c] of cursors) parts.push(`${positionKey(channel)}@${c.epoch}@${c.offset}`);
  return parts.join(",");
}

/**
 * Parses a protocol position string into [channel, {epoch, offset}] pairs (channels never contain `@`). An entry
 * written as a key (`~...`, a long name) is named by the channel in `channels` with that key, and keeps its key
 * when none has it.
 */
export function parsePosition(text, channels = []) {
  const out = [];
  if (!text) return out;
  const byKey = new Map();
  for (const ch of channels) byKey.set(positionKey(ch), String(ch));
  for (const part of String(text).split(",")) {
    const last = part.lastIndexOf("@");
    const first = part.indexOf("@");
    if (first <= 0 || last === first) continue;
    const offset = Number(part.slice(last + 1));
    if (!Number.isSafeInteger(offset)) continue;
    const key = part.slice(0, first);
    out.push([byKey.get(key) ?? key, { epoch: part.slice(first + 1, last), offset }]);
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
