// Acceptance 5: screenshots of the demo for the docs, desktop (1280x800) and phone (390x844), saved to
// docs/screenshots/. The desktop page walks WebSocket -> SSE -> long-polling while two people chat, so the chart,
// the feed and the node table have something to show; it runs on two nodes sharing Redis behind nginx
// round-robin (the node table then shows non-sticky polling). The phone page starts on a restrictive network.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { statSync } from "node:fs";
import { sleep } from "../js/harness.mjs";
import { launchBrowser, startCluster, openDemo, waitConnected, tid, assertSeqClean, ensureShotsDir } from "./support.mjs";

let cluster, browser;

before(async () => {
  cluster = await startCluster({ tickerMs: 250 });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
});

async function say(page, line) {
  await page.locator(tid("chat-input")).fill(line);
  await page.locator(tid("chat-send")).click();
  await page.locator(`${tid("chat-list")} li`, { hasText: line }).first().waitFor({ timeout: 10000 });
}

test("saves desktop and phone screenshots of a lively demo", async () => {
  const dir = ensureShotsDir();
  const desk = await openDemo(browser, cluster.url, { query: { name: "ana" }, viewport: { width: 1280, height: 800 } });
  const friend = await openDemo(browser, cluster.url, { query: { name: "bo", transport: "long-polling" }, viewport: { width: 1280, height: 800 } });
  try {
    await waitConnected(desk.page, "websocket");
    await waitConnected(friend.page, "long-polling");
    await sleep(1500);
    await say(friend.page, "hi! I'm on long-polling behind the proxy");
    await sleep(2500);
    await say(desk.page, "hey bo, WebSocket here. switching to SSE now");
    await desk.page.locator('label[for="t-sse"]').click();
    await waitConnected(desk.page, "sse");
    await sleep(3500);
    await say(friend.page, "every tick still arrives here");
    await desk.page.locator('label[for="t-long-polling"]').click();
    await waitConnected(desk.page, "long-polling");
    await sleep(1500);
    await say(desk.page, "long-polling now. sequence check: 0 gaps, 0 duplicates");
    await sleep(3500);
    await assertSeqClean(desk.page);
    await desk.page.mouse.move(0, 0);
    const deskPath = join(dir, "demo-desktop.png");
    await desk.page.screenshot({ path: deskPath });
    assert.ok(statSync(deskPath).size > 10000);

    const phone = await openDemo(browser, cluster.url, {
      query: { name: "cy", block: "websocket" },
      viewport: { width: 390, height: 844 },
      deviceScaleFactor: 2,
      isMobile: true,
    });
    try {
      await phone.page.waitForFunction(() => window.__demo.state === "connected");
      await sleep(4000);
      const phonePath = join(dir, "demo-phone.png");
      await phone.page.screenshot({ path: phonePath });
      assert.ok(statSync(phonePath).size > 10000);
      // Nothing on the phone page overflows sideways.
      const overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      assert.ok(overflow <= 0, `the phone page scrolls sideways by ${overflow}px`);
    } finally {
      await phone.context.close();
    }
  } finally {
    await desk.context.close();
    await friend.context.close();
  }
});
