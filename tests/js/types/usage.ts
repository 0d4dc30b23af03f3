// A typed use of the client's public API, checked by `tsc --noEmit` (tests/js/types.test.mjs): it must compile
// against web/stickless.d.ts, and every `@ts-expect-error` line must really be an error (tsc reports an unused
// one), which proves the declarations are typed and not `any`. It is type-checked only, never run.
// It imports "stickless", the package name, so the package.json `exports` and `types` are checked too.

import Stickless, { Stickless as Named, StickError, parsePosition } from "stickless";
import type { Cursor, ErrorFrame, GapEvent, ChannelMessageEvent, StickEvents, TransportName } from "stickless";

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

client
  .on("message", (m: ChannelMessageEvent) => {
    const offset: number = m.offset;
    const via: TransportName = m.transport;
    console.log(m.channel, m.epoch, offset, m.ts, m.data, m.node, via);
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
  for (const [channel, cursor] of parsePosition(position)) console.log(channel, cursor.epoch, cursor.offset);
  console.log(switched, client.cursor("chat")?.offset, client.limits.max_frames_per_send, client.state === "connected");
  try {
    await client.publish("chat", 1);
  } catch (err) {
    if (err instanceof StickError && err.code === "session_unknown") console.log(err.status, err.frame?.id);
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
}

const everyEvent: Array<keyof StickEvents> = ["state", "message", "gap", "welcome", "poll", "error"];
console.log(everyEvent, main, wrongUses);
