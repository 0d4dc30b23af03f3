// Acceptance 4: two gateway nodes sharing Redis behind nginx round-robin (no stickiness). The page in
// long-polling mode shows polls and deliveries from both nodes, and the sequence check shows no gap and no
// duplicate.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { publish, waitFor } from "../js/harness.mjs";
import { launchBrowser, startCluster, openDemo, waitConnected, waitSubscribed, assertSeqClean, assertShownOnce, tid, publishStream } from "./support.mjs";

let cluster, browser;

before(async () => {
  cluster = await startCluster({ tickerMs: 200 });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
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

test("long-polling through nginx round-robin shows both nodes and no gaps", async () => {
  const { page, context, errors } = await openDemo(browser, cluster.url, { query: { transport: "long-polling", name: "poller" } });
  try {
    await waitConnected(page, "long-polling");
    await waitSubscribed(page);
    // Backends publish to whichever node they like: alternate, so each node stores some of them.
    let k = 0;
    const stream = publishStream((ch, d) => publish(k++ % 2 ? cluster.n1.url : cluster.n2.url, ch, d), "demo:chat", {
      count: 120,
      everyMs: 25,
      data: (i) => ({ user: "backend", text: `via round-robin ${i}` }),
    });
    const acks = await stream.done;
    const last = acks[acks.length - 1].offset;
    await waitFor(async () => {
      const shown = await nodesOnScreen(page);
      return ["n1", "n2"].every((n) => shown[n] && shown[n].polls > 0 && shown[n].deliveries > 0);
    }, 20000, "polls and deliveries from both n1 and n2 in the node table", 100);

    await assertShownOnce(page, "demo:chat", last);
    await assertSeqClean(page, { channels: ["demo:ticker"] });
    // Node tags on individual deliveries: both nodes appear among the chat rows.
    const tags = await page.locator(`${tid("chat-list")} li .meta .tag`).allInnerTexts();
    assert.ok(tags.includes("n1") && tags.includes("n2"), `chat rows tagged by both nodes: ${[...new Set(tags)]}`);
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});
