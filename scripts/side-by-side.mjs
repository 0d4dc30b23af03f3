#!/usr/bin/env node
// Sticky and non-sticky side by side: one redis-server, two gateway nodes (n1, n2) on it, and two nginx instances
// rendered from nginx/gateway.conf in front of the same two nodes, round-robin on 127.0.0.1:8080 and sticky (a
// consistent hash of ?session=) on 127.0.0.1:8081. Open the demo through both in long-polling mode: the node
// table shows the polls spreading over both nodes through round-robin and staying on one node through sticky,
// with no gap and no duplicate either way. Runs until Ctrl-C, then stops everything and removes its temp dirs.
//
//   node scripts/side-by-side.mjs
//   RR_PORT=9080 STICKY_PORT=9081 TICKER_MS=500 node scripts/side-by-side.mjs
//
// Needs redis-server and nginx on PATH (or REDIS_SERVER_BIN / NGINX_BIN) and a built gateway
// (target/debug/stickless, or STICKLESS_BIN). Processes are managed by tests/js/harness.mjs.

import { startRedisNodes, startBalancer, BALANCE } from "../tests/js/harness.mjs";

/** An integer from the environment variable `name` (within min..max), or `fallback` when it is unset. */
function intFromEnv(name, fallback, min, max) {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${name}=${raw}: expected an integer in ${min}..${max}`);
  return n;
}

const rrPort = intFromEnv("RR_PORT", 8080, 1, 65535);
const stickyPort = intFromEnv("STICKY_PORT", 8081, 1, 65535);
const tickerMs = intFromEnv("TICKER_MS", 1000, 1, 3600000);

// n1 publishes the demo ticker (so polls keep coming back); n2 runs none, so the cluster has one ticker.
const cluster = await startRedisNodes({ n1: ["--demo-ticker-ms", String(tickerMs)], n2: ["--demo-ticker-ms", "0"] });
let rr, sticky;
try {
  const nodes = [cluster.nodes.n1, cluster.nodes.n2];
  rr = cluster.add(await startBalancer({ nodes, balance: "round-robin", port: rrPort }));
  sticky = cluster.add(await startBalancer({ nodes, balance: "sticky", port: stickyPort }));
} catch (err) {
  await cluster.stop();
  console.error(`side-by-side: could not start: ${err.message}`);
  process.exit(1);
}

const { redis, nodes } = cluster;
const demo = (p) => `${p.url}/?transport=long-polling`;
console.log(`stickless side by side: two nodes on one Redis, two nginx (nginx/gateway.conf) in front of both

  redis        ${redis.url}
  node n1      ${nodes.n1.url}   (publishes demo:ticker every ${tickerMs} ms)
  node n2      ${nodes.n2.url}
  round-robin  ${rr.url}   nginx, no affinity: each request goes to the next node
  sticky       ${sticky.url}   nginx, "${BALANCE.sticky}" on ?session=: a session stays on one node

Open these two side by side:
  ${demo(rr)}
  ${demo(sticky)}

In each page's node table ("polls" column): through round-robin the polls alternate between n1 and n2; through
sticky every poll after the first stays on one node (the first poll creates the session, carries no ?session=
and may land on either node). Both pages show every message once, in order. Publish from a backend with
  curl -s -XPOST ${nodes.n2.url}/v1/publish -d '{"channel":"demo:chat","data":{"user":"backend","text":"hi"}}'

nginx logs: ${rr.dir}/logs/access.log and ${sticky.dir}/logs/access.log
Ctrl-C stops everything.`);

// A process that dies on its own takes the demo down with it (the harness kills the rest on exit).
for (const [name, p] of [["redis-server", redis], ["node n1", nodes.n1], ["node n2", nodes.n2], ["nginx round-robin", rr], ["nginx sticky", sticky]]) {
  p.proc.exited.then(({ code, signal }) => {
    // On Ctrl-C the terminal signals the children too: give our own SIGINT handling a moment to exit first.
    setTimeout(() => {
      console.error(`\nside-by-side: ${name} exited (code ${code}, signal ${signal}); stopping.\n${p.proc.output().slice(-2000)}`);
      process.exit(1);
    }, 1000);
  });
}
// Ctrl-C: tests/js/harness.mjs stops every process it started and removes the temp dirs, then exits.
process.on("exit", (code) => {
  if (code === 130) console.log("\nside-by-side: stopped.");
});
