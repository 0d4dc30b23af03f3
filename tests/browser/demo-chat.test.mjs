// Acceptance 1: the demo page loads, connects in auto mode, and a chat message sent from one browser context
// shows up in a second one (and in the sender's own room), with the node and transport that delivered it.
// The gateway serves the page itself (web/ at `/`), so every browser test loads it from the gateway's origin.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { startGateway, waitFor } from "../js/harness.mjs";
import { WEB, launchBrowser, openDemo, waitConnected, waitSubscribed, assertSeqClean, text, tid, seqOnScreen } from "./support.mjs";

let gw, browser;

before(async () => {
  gw = await startGateway({ args: ["--node-id", "chat-n1"], secure: true });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gw?.stop();
});

test("the gateway serves the demo page and the client at its own origin", async () => {
  for (const [path, file, type] of [
    ["/", "index.html", /^text\/html/],
    ["/stickless.js", "stickless.js", /^(text|application)\/javascript/],
  ]) {
    const res = await fetch(`${gw.url}${path}`);
    const body = await res.text();
    assert.equal(res.status, 200, `GET ${path}`);
    assert.match(res.headers.get("content-type") ?? "", type, `GET ${path} content-type`);
    assert.equal(body, await readFile(join(WEB, file), "utf8"), `GET ${path} is web/${file}`);
  }
});

test("auto mode connects and a chat message reaches a second browser", async () => {
  const alice = await openDemo(browser, gw.url, { query: { name: "alice" } });
  const bob = await openDemo(browser, gw.url, { query: { name: "bob" } });
  try {
    // Auto mode: the first transport tried is WebSocket, and nothing blocks it here.
    await waitConnected(alice.page, "websocket");
    await waitConnected(bob.page, "websocket");
    assert.equal(await alice.page.locator(`${tid("transport-auto")}`).isChecked(), true);
    assert.match(await text(alice.page, "why-full"), /^Auto chose WebSocket/);
    assert.equal(await text(alice.page, "node"), "node chat-n1");
    // Both pages have subscribed before the message is sent (otherwise it would rightly not be delivered).
    for (const p of [alice.page, bob.page]) await waitSubscribed(p);

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
    await waitFor(async () => (await seqOnScreen(bob.page, "demo:chat")).received >= 1, 5000, "bob's sequence check to count the message");
    await assertSeqClean(bob.page, { channels: ["demo:chat"] });
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors, []);
  } finally {
    await alice.context.close();
    await bob.context.close();
  }
});
