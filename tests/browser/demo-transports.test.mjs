// Acceptance 2: on every transport a stream of messages arrives, and flipping the transport switch while
// messages flow leaves the on-screen sequence check with no gap and no duplicate. The switch walks through all
// six ordered pairs of transports (the first flip by keyboard), while a backend publishes to the chat channel
// and the ticker runs fast.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, publish, waitFor } from "../js/harness.mjs";
import { launchBrowser, openDemo, waitConnected, waitSubscribed, assertSeqClean, assertShownOnce, text, tid, seqOnScreen, publishStream, LABEL } from "./support.mjs";

let gw, browser;

before(async () => {
  gw = await startGateway({ args: ["--node-id", "sw-n1", "--demo-ticker-ms", "50"], secure: true });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gw?.stop();
});

test("flipping the transport mid-stream loses and repeats nothing", async () => {
  const { page, context, errors } = await openDemo(browser, gw.url, { query: { transport: "websocket", name: "watcher" } });
  try {
    await waitConnected(page, "websocket");
    await waitSubscribed(page);
    const stream = publishStream((ch, d) => publish(gw.url, ch, d), "demo:chat", {
      count: 100000,
      everyMs: 15,
      data: (i) => ({ user: "backend", text: `stream message ${i}` }),
    });

    const order = ["websocket", "sse", "long-polling", "websocket", "long-polling", "sse", "websocket"];
    for (let k = 0; k < order.length; k++) {
      const t = order[k];
      if (k === 1) {
        // Keyboard: focus the checked radio and move to the next one with the arrow key.
        await page.locator(tid("transport-websocket")).focus();
        await page.keyboard.press("ArrowRight");
        assert.equal(await page.locator(tid("transport-sse")).isChecked(), true);
      } else if (k > 0) {
        await page.locator(`label[for="t-${t}"]`).click();
      }
      await waitConnected(page, t);
      assert.equal(await text(page, "tile-transport"), LABEL[t]);
      const start = await page.evaluate((tr) => window.__demo.byTransport[tr] ?? 0, t);
      await waitFor(
        () => page.evaluate(([tr, n]) => (window.__demo.byTransport[tr] ?? 0) >= n, [t, start + 25]),
        20000,
        `25 more messages over ${t}`,
        50,
      );
      // The feed shows deliveries over this transport.
      const tag = t === "long-polling" ? "poll" : t === "websocket" ? "ws" : "sse";
      assert.ok((await page.locator(`${tid("feed")} tr .tag`, { hasText: tag }).count()) > 0, `feed shows ${tag} rows`);
      await assertSeqClean(page, { where: `after switching to ${t}` });
    }

    stream.stop();
    const acks = await stream.done;
    const last = acks[acks.length - 1].offset;
    const { first, seq: screen } = await assertShownOnce(page, "demo:chat", last);
    assert.ok(screen.received >= 100, `a real stream went through (${screen.received})`);
    assert.ok(first <= acks[0].offset, `the page saw the stream from its first message (first ${first}, stream began at ${acks[0].offset})`);
    await assertSeqClean(page, { where: "at the end" });
    // The ticker ran through every switch; how many ticks that took depends on the machine's speed, so wait
    // for a hundred rather than assume the switches took five seconds.
    await waitFor(async () => (await seqOnScreen(page, "demo:ticker")).received >= 100, 20000, "100 ticker messages", 100);
    const ticker = await seqOnScreen(page, "demo:ticker");
    assert.ok(ticker.received >= 100 && ticker.gaps === 0 && ticker.duplicates === 0, `the ticker streamed too: ${ticker.text}`);
    const visibleLine = await page.locator(tid("seq-demo:chat")).innerText();
    assert.match(visibleLine, new RegExp(`demo:chat: ${screen.received.toLocaleString("en-US")} received, 0 gaps, 0 duplicates`));
    assert.equal(Number(await text(page, "reconnects")), 0, "a switch is not a reconnect");
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});
