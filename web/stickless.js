// stickless.js - the client for the stickless realtime gateway (wire contract: docs/PROTOCOL.md).
// ES modules, no dependencies, no build step; runs in browsers and in Node 20+ (pass `ws` and `eventsource`).
// It speaks WebSocket, SSE and long-polling over one resumable session, keeps its own per-channel cursor and
// drops anything at or below it, so reconnects and live transport switches deliver every message exactly once.
//
// This file is the entry point; the client is split like the server (types: stickless.d.ts):
//   client/session.js       the session core: public API, upstream queue, cursors, run loop, fallback, backoff,
//                           connection tokens (getToken(), refresh in place, reconnect after token_expired)
//   client/websocket.js     one file per transport, each reaching the core only through the link it is given
//   client/sse.js
//   client/long-polling.js
//   client/send.js          POST /v1/send, the upstream path of SSE and long-polling
//   client/token.js         reading a connection token's `exp`, and when to refresh it
//   client/protocol.js      the position text and frame decoding
//   client/errors.js        StickError, and reading an HTTP error body

export { Stickless, Stickless as default } from "./client/session.js";
export { StickError } from "./client/errors.js";
export { parsePosition } from "./client/protocol.js";
