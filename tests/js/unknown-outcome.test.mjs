// Honest 503s (issue 9): while Redis is paused, a publish is answered `store_unavailable` - outcome unknown, since
// a paused Redis runs the write when it wakes. The client sends the same frame again with the same id; the server
// stores it once and answers where. The publish resolves once, and the channel holds the message once.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { EventSource } from "eventsource";
import { Stickless } from "../../web/stickless.js";
import { startRedis, startGateway } from "./harness.mjs";

for (const transport of ["websocket", "long-polling"]) {
  test(`over ${transport}, a publish answered store_unavailable is retried with its id and stored once`, async () => {
    const redis = await startRedis();
    const gw = await startGateway({ args: ["--redis-url", redis.url] });
    const client = new Stickless({ url: gw.url, transport, WebSocket, EventSource });
    const errors = [];
    client.on("error", (e) => errors.push(e.code));
    try {
      await client.connect();
      await client.subscribe("unknown");
      redis.proc.kill("SIGSTOP");
      // Answered store_unavailable after the gateway's 3 s command timeout; Redis wakes after 4 s and runs it.
      const started = Date.now();
      const published = client.publish("unknown", { n: 1 });
      setTimeout(() => redis.proc.kill("SIGCONT"), 4000);
      const stored = await published;
      const took = Date.now() - started;
      assert.ok(took >= 3900, `acknowledged only once Redis was back (${took} ms): the first answer was a 503`);
      if (transport === "websocket") {
        // Over /v1/send the session load itself may time out first: a 503 the client retries without an event.
        assert.ok(errors.includes("store_unavailable"), `the first answer was store_unavailable: ${errors}`);
      }
      const history = await fetch(`${gw.url}/v1/publish`, {
        method: "POST",
        body: JSON.stringify({ channel: "unknown", data: { n: 2 } }),
      }).then((r) => r.json());
      assert.equal(stored.offset, 1, "the retry answered where the first attempt stored it");
      assert.equal(history.offset, 2, "stored once: the next message is offset 2");
    } finally {
      redis.proc.kill("SIGCONT");
      client.close();
      await gw.stop();
      await redis.stop();
    }
  });
}
