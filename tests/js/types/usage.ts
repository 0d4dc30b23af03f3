// A typed use of the client's public API, checked by `tsc --noEmit` (tests/js/types.test.mjs): it must compile
// against web/stickless.d.ts, and every `@ts-expect-error` line must really be an error (tsc reports an unused
// one), which proves the declarations are typed and not `any`. It is type-checked only, never run.
// It imports "stickless", the package name, so the package.json `exports` and `types` are checked too.

import Stickless, { Stickless as Named, StickError, parsePosition } from "stickless";
import type { Cursor, ErrorFrame, GapEvent, ChannelMessageEvent, StickEvents, TokenEvent, TransportName, UpstreamFrame } from "stickless";

const client: Stickless = new Named({
  url: "https://gateway.example",
  transport: "auto",
  // The runtime's own implementations fit the options (a browser's; in Node, `ws` and `eventsource`).
  WebSocket: globalThis.WebSocket,
  EventSource: globalThis.EventSource,
  fetch: globalThis.fetch,
  connectTimeoutMs: 4000,
  storage: globalThis.localStorage,
});
new Stickless({ storage: null, transport: "long-polling" });
// Connection tokens: a fixed one, or getToken() (sync or async) for the first connect, refreshes and reconnects.
new Stickless({ url: "https://gateway.example", token: "eyJ.e30.sig" });
new Stickless({ url: "https://gateway.example", getToken: () => "eyJ.e30.sig" });
const authed = new Stickless({
  url: "https://gateway.example",
  token: "eyJ.e30.sig",
  getToken: async () => (await fetch("/api/stickless-token")).text(),
});
authed.on("token", (t: TokenEvent) => console.log(t.via === "refresh" || t.via === "attach", t.exp ?? 0, t.transport));
const refresh: UpstreamFrame = { type: "refresh", id: "r1", token: "eyJ.e30.sig" };
console.log(refresh, authed.refreshes + 1);

client
  .on("message", (m: ChannelMessageEvent) => {
    const offset: number = m.offset;
    const via: TransportName = m.transport;
    // A client-published message says who sent it; the user is null for an anonymous session.
    const sender: string = m.from ? `${m.from.sub ?? "anonymous"}/${m.from.pid}` : "backend";
    console.log(m.channel, m.epoch, offset, m.ts, m.data, m.node, via, sender);
  })
  .on("gap", (g: GapEvent) => console.log(g.reason === "trimmed" || g.reason === "epoch", g.previous.offset))
  .on("state", ({ state, transport, reason, reconnects }) => console.log(state, transport, reason, reconnects + 1))
  .on("welcome", (w) => console.log(w.session, w.heartbeat_ms, w.transport))
  .on("poll", (p) => console.log(p.node, p.frames.length))
  .on("error", (e: StickError | ErrorFrame) => console.log(e.code, e.message));

async function main(): Promise<void> {
  const connected: Stickless = await client.connect();
  const sub = await client.subscribe("chat");
  const start: Cursor = { epoch: sub.epoch, offset: sub.offset };
  const stored = await client.publish("chat", { text: "hi" });
  console.log(connected.sessionId, start, stored.channel, stored.offset + 1);
  const { pids } = await client.presence("chat");
  console.log(pids.join(","), (await client.unsubscribe("chat")).channel, await client.ping());
  const switched: boolean = await client.setTransport("sse");
  client.block("websocket");
  client.block("websocket", false);
  client.drop();
  const position: string = client.position;
  for (const [channel, cursor] of parsePosition(position, new Set(["chat"]))) console.log(channel, cursor.epoch, cursor.offset);
  console.log(switched, client.cursor("chat")?.offset, client.limits.max_frames_per_send, client.state === "connected");
  try {
    await client.publish("chat", 1);
  } catch (err) {
    if (err instanceof StickError && err.code === "session_unknown") console.log(err.status, err.frame?.id);
    if (err instanceof StickError && err.code === "rate_limited") console.log(err.retryAfterMs ?? 1000);
  }
  client.close();
}

// Wrong uses the declarations must reject (each line below the comment is an error, or tsc fails):
function wrongUses(): void {
  // @ts-expect-error a channel is a string
  client.subscribe(42);
  // @ts-expect-error there is no such transport
  client.setTransport("carrier-pigeon");
  // @ts-expect-error an offset is a number
  client.on("message", (m) => m.offset.toUpperCase());
  // @ts-expect-error no such event
  client.on("mesage", () => {});
  // @ts-expect-error "auto" is a mode, not a transport that can be blocked
  client.block("auto");
  // @ts-expect-error presence answers pids, not a count
  client.presence("chat").then((r) => r.count);
  // @ts-expect-error getToken gives a token string (or a promise of one), not a number
  new Stickless({ getToken: async () => 42 });
  // @ts-expect-error a token is a string
  new Stickless({ token: { jwt: "eyJ.e30.sig" } });
  // @ts-expect-error a sender's pid is a string
  client.on("message", (m) => m.from?.pid.toFixed());
  // @ts-expect-error the token event says how: "attach" or "refresh"
  client.on("token", (t) => t.via === "reconnect");
}

const everyEvent: Array<keyof StickEvents> = ["state", "message", "gap", "welcome", "poll", "token", "error"];
console.log(everyEvent, main, wrongUses);
