// Acceptance 4: two gateway nodes sharing Redis behind nginx round-robin (no stickiness). The page in
// long-polling mode shows polls and deliveries from both nodes, and the sequence check shows no gap and no
// duplicate. Pending (skipped, said so) while the gateway binary has no --redis-url.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, startRedis, startNginx, publish, waitFor } from "../js/harness.mjs";
import { launchBrowser, demoOrigin, openDemo, waitConnected, tid, seqOnScreen, counters, publishStream, gatewayHasFlag } from "./support.mjs";

const hasRedis = await gatewayHasFlag("--redis-url");
const pending = hasRedis ? false : "pending: the gateway binary has no --redis-url yet";

let redis, n1, n2, nginx, origin, browser;

before(async () => {
  if (!hasRedis) return;
  redis = await startRedis();
  // One ticker for the cluster: n1 publishes it, n2 only serves.
  n1 = await startGateway({ args: ["--node-id", "n1", "--redis-url", redis.url, "--demo-ticker-ms", "200"] });
  n2 = await startGateway({ args: ["--node-id", "n2", "--redis-url", redis.url, "--demo-ticker-ms", "0"] });
  nginx = await startNginx({
    template: "nginx/round-robin.conf",
    vars: { UPSTREAMS: `server 127.0.0.1:${n1.port} max_fails=0; server 127.0.0.1:${n2.port} max_fails=0;` },
  });
  origin = await demoOrigin(nginx.url);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await origin?.close();
  await nginx?.stop();
  await n1?.stop();
  await n2?.stop();
  await redis?.stop();
});

/** The node table as shown: {node: {deliveries, polls}}. */
async function nodesOnScreen(page) {
  return page.locator(`${tid("nodes-body")} tr[data-node]`).evaluateAll((rows) =>
    Object.fromEntries(rows.map((r) => {
      const cells = [...r.querySelectorAll("td")].map((td) => td.innerText.trim());
      const n = (s) => Number(s.replace(/,/g, ""));
      return [cells[0], { deliveries: n(cells[1]), polls: n(cells[2]) }];
    })),
  );
}

test("long-polling through nginx round-robin shows both nodes and no gaps", { skip: pending }, async () => {
  const { page, context, errors } = await openDemo(browser, origin.url, { query: { transport: "long-polling", name: "poller" } });
  try {
    await waitConnected(page, "long-polling");
    await waitFor(() => page.evaluate(() => window.__demo.timeline.some((e) => e.text.startsWith("subscribed to"))), 10000, "subscriptions");
    // Backends publish to whichever node they like: alternate, so each node stores some of them.
    let k = 0;
    const stream = publishStream((ch, d) => publish(k++ % 2 ? n1.url : n2.url, ch, d), "demo.chat", {
      count: 120,
      everyMs: 25,
      data: (i) => ({ user: "backend", text: `via round-robin ${i}` }),
    });
    const acks = await stream.done;
    const last = acks[acks.length - 1].offset;
    await waitFor(async () => (await counters(page))["demo.chat"].offset === last, 20000, `chat offset ${last} on the page`, 100);
    await waitFor(async () => {
      const shown = await nodesOnScreen(page);
      return ["n1", "n2"].every((n) => shown[n] && shown[n].polls > 0 && shown[n].deliveries > 0);
    }, 20000, "polls and deliveries from both n1 and n2 in the node table", 100);

    await new Promise((r) => setTimeout(r, 400));
    const c = (await counters(page))["demo.chat"];
    const chat = await seqOnScreen(page, "demo.chat");
    assert.equal(chat.gaps, 0, chat.text);
    assert.equal(chat.duplicates, 0, chat.text);
    assert.equal(chat.received, last - c.first + 1, chat.text);
    const ticker = await seqOnScreen(page, "demo.ticker");
    assert.equal(ticker.gaps, 0, ticker.text);
    assert.equal(ticker.duplicates, 0, ticker.text);
    // Node tags on individual deliveries: both nodes appear among the chat rows.
    const tags = await page.locator(`${tid("chat-list")} li .meta .tag`).allInnerTexts();
    assert.ok(tags.includes("n1") && tags.includes("n2"), `chat rows tagged by both nodes: ${[...new Set(tags)]}`);
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});
