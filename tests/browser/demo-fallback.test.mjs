// Acceptance 3: with WebSocket made to fail ("Block WebSocket", or a restrictive network from the first
// connect), auto mode lands on SSE or long-polling and keeps receiving; "Drop connection" reconnects and
// resumes. The sequence check stays clean throughout.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, waitFor } from "../js/harness.mjs";
import { launchBrowser, openDemo, waitConnected, assertSeqClean, text, tid, seqOnScreen } from "./support.mjs";

let gw, browser;

before(async () => {
  gw = await startGateway({ args: ["--node-id", "fb-n1", "--demo-ticker-ms", "100"], secure: true });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gw?.stop();
});

const fallbackShown = async (page) => {
  const [state, t] = await Promise.all([text(page, "state"), text(page, "transport")]);
  return state === "connected" && (t === "SSE" || t === "Long-polling") ? t : null;
};

async function tickerKeepsFlowing(page, more = 15) {
  const start = (await seqOnScreen(page, "demo:ticker")).received;
  await waitFor(async () => (await seqOnScreen(page, "demo:ticker")).received >= start + more, 15000, `${more} more ticks on screen`, 100);
  await assertSeqClean(page, { channels: ["demo:ticker"] });
}

test("blocking WebSocket in auto mode falls back and keeps receiving; drop resumes", async () => {
  const { page, context, errors } = await openDemo(browser, gw.url);
  try {
    await waitConnected(page, "websocket");
    await tickerKeepsFlowing(page, 10);

    const block = page.locator(tid("block"));
    assert.equal(await block.getAttribute("aria-pressed"), "false");
    await block.click();
    assert.equal(await block.getAttribute("aria-pressed"), "true");
    assert.match(await block.innerText(), /WebSocket blocked/);

    const landed = await waitFor(() => fallbackShown(page), 20000, "fallback to SSE or long-polling");
    assert.ok(Number(await text(page, "reconnects")) >= 1, "the fallback counts as a reconnect");
    assert.match(await text(page, "why-full"), /^Auto chose (SSE|Long-polling): .*websocket failed/i);
    await tickerKeepsFlowing(page);
    const before = Number(await text(page, "reconnects"));

    // Drop the connection: it comes back (still not on WebSocket: it is blocked) and resumes without loss.
    await page.locator(tid("drop")).click();
    await waitFor(async () => Number(await text(page, "reconnects")) > before, 15000, "a reconnect after drop");
    await waitFor(() => fallbackShown(page), 20000, "connected again after drop");
    await tickerKeepsFlowing(page);

    // The timeline tells the story in words.
    const story = await page.locator(tid("timeline")).innerText();
    assert.match(story, /WebSocket now fails/);
    assert.match(story, /dropped the connection on purpose/);
    assert.match(story, new RegExp(`connected via ${landed}`));
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});

test("a page opened on a restrictive network starts on a fallback transport", async () => {
  const { page, context, errors } = await openDemo(browser, gw.url, { query: { block: "websocket" } });
  try {
    assert.equal(await page.locator(tid("block")).getAttribute("aria-pressed"), "true");
    await waitFor(() => fallbackShown(page), 20000, "auto mode on SSE or long-polling");
    assert.match(await text(page, "why-full"), /websocket failed/i);
    await tickerKeepsFlowing(page);
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});
