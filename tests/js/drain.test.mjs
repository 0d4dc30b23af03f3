// A draining node (SIGTERM) tells each client when to come back; the client waits that long, not its own
// backoff, and resumes its session on whatever node then answers, losing nothing (issue 9, drain).
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { EventSource } from "eventsource";
import { Stickless } from "../../web/stickless.js";
import { startRedis, startGateway, freePort, publish, waitFor } from "./harness.mjs";

for (const transport of ["websocket", "sse", "long-polling"]) {
  test(`over ${transport}, a draining node's client comes back after the delay it was given, missing nothing`, async () => {
    const redis = await startRedis();
    const port = await freePort();
    const args = ["--redis-url", redis.url, "--drain-window-ms", "3000", "--drain-timeout-ms", "4000"];
    let gw = await startGateway({ args, port });
    const client = new Stickless({ url: gw.url, transport, WebSocket, EventSource });
    const got = [];
    const states = [];
    client.on("message", (m) => got.push(m.data));
    client.on("state", (s) => states.push({ ...s, at: Date.now() }));
    try {
      await client.connect();
      await client.subscribe("drain");
      await publish(gw.url, "drain", 1);
      await waitFor(() => got.length === 1, 10000, "the first message");
      const signalled = Date.now();
      gw.proc.kill("SIGTERM");
      await waitFor(() => states.some((s) => s.state === "reconnecting" && /draining/.test(s.reason || "")), 10000, "told to reconnect");
      const told = states.find((s) => /draining/.test(s.reason || ""));
      const after = Number(/reconnecting in (\d+) ms/.exec(told.reason)[1]);
      assert.ok(after >= 0 && after < 3000, `a delay within the window: ${after}`);
      // The replacement node (same address, same Redis) is up before the delay ends; published meanwhile: 2.
      await waitFor(() => gw.proc.exitCode !== null, 10000, "the drained node exits");
      gw = await startGateway({ args, port });
      await publish(gw.url, "drain", 2);
      await waitFor(() => got.length === 2, 15000, "the message published while the client was away");
      const back = states.find((s) => s.state === "connected" && s.at > told.at);
      assert.ok(back, "reconnected");
      assert.ok(back.at - told.at >= after - 50, `waited the delay it was given (${after} ms), came back after ${back.at - told.at} ms`);
      assert.deepEqual(got, [1, 2]);
      assert.ok(back.at - signalled < 15000);
    } finally {
      client.close();
      await gw.stop();
      await redis.stop();
    }
  });
}
