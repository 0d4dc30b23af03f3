// Acceptance 1: the demo page loads, connects in auto mode, and a chat message sent from one browser context
// shows up in a second one (and in the sender's own room), with the node and transport that delivered it.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, waitFor } from "../js/harness.mjs";
import { launchBrowser, demoOrigin, openDemo, waitConnected, text, tid, seqOnScreen } from "./support.mjs";

let gw, origin, browser;

before(async () => {
  gw = await startGateway({ args: ["--node-id", "chat-n1"] });
  origin = await demoOrigin(gw.url);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await origin?.close();
  await gw?.stop();
});

test("auto mode connects and a chat message reaches a second browser", async () => {
  const alice = await openDemo(browser, origin.url, { query: { name: "alice" } });
  const bob = await openDemo(browser, origin.url, { query: { name: "bob" } });
  try {
    // Auto mode: the first transport tried is WebSocket, and nothing blocks it here.
    await waitConnected(alice.page, "websocket");
    await waitConnected(bob.page, "websocket");
    assert.equal(await alice.page.locator(`${tid("transport-auto")}`).isChecked(), true);
    assert.match(await text(alice.page, "why-full"), /^Auto chose WebSocket/);
    assert.equal(await text(alice.page, "node"), "node chat-n1");
    // Both pages have subscribed before the message is sent (otherwise it would rightly not be delivered).
    for (const p of [alice.page, bob.page]) {
      await waitFor(() => p.evaluate(() => window.__demo.timeline.some((e) => e.text.startsWith("subscribed to"))), 10000, "subscriptions");
    }

    const line = `hello from alice ${Date.now()}`;
    await alice.page.locator(tid("chat-input")).fill(line);
    await alice.page.keyboard.press("Enter"); // the form submits from the keyboard

    for (const [who, p] of [["bob", bob.page], ["alice", alice.page]]) {
      const row = p.locator(`${tid("chat-list")} li`, { hasText: line });
      await row.waitFor({ state: "visible", timeout: 10000 });
      const shown = await row.innerText();
      assert.match(shown, /alice/, `${who} sees the sender's name`);
      assert.match(shown, /websocket/, `${who} sees the transport tag`);
      assert.match(shown, /chat-n1/, `${who} sees the node tag`);
    }
    assert.equal(await alice.page.locator(`${tid("chat-list")} li.mine`, { hasText: line }).count(), 1, "alice's own message is marked as hers");
    assert.equal(await bob.page.locator(`${tid("chat-list")} li.mine`, { hasText: line }).count(), 0);
    assert.equal(await alice.page.locator(tid("chat-input")).inputValue(), "", "the input is cleared after sending");

    // The counters are redrawn a moment after the row appears.
    const seq = await waitFor(async () => {
      const s = await seqOnScreen(bob.page, "demo.chat");
      return s.received >= 1 && s;
    }, 5000, "bob's sequence check to count the message");
    assert.equal(seq.gaps, 0, seq.text);
    assert.equal(seq.duplicates, 0, seq.text);
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors, []);
  } finally {
    await alice.context.close();
    await bob.context.close();
  }
});
