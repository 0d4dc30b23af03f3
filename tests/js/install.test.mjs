// The binary carries the demo: `cargo install --path .` and then `stickless` run from another directory serves
// the demo page and the client at `/` (issue 9, acceptance 7). The install reuses this repo's target dir (a
// debug build, as the suite has built), so it only copies the binary; rust-embed's debug-embed puts web/ in it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { REPO, makeTempDir, startGateway } from "./harness.mjs";

test("an installed binary serves the demo from any directory", async () => {
  // Both directories go at exit (the harness removes its temp dirs): the installed debug binary is ~200 MB, and a
  // disk that filled with them failed a CI run.
  const root = makeTempDir("stickless-install-");
  execFileSync(
    "cargo",
    ["install", "--path", REPO, "--root", root, "--debug", "--target-dir", join(REPO, "target"), "--offline", "--locked", "--quiet"],
    { stdio: ["ignore", "inherit", "inherit"], timeout: 600_000 },
  );
  const elsewhere = makeTempDir("stickless-cwd-");
  const gw = await startGateway({ bin: join(root, "bin", "stickless"), cwd: elsewhere, secure: true });
  try {
    const page = await fetch(`${gw.url}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-type"), /text\/html/);
    assert.match(await page.text(), /stickless/);
    for (const file of ["stickless.js", "client/session.js", "demo.js", "demo.css"]) {
      const r = await fetch(`${gw.url}/${file}`);
      assert.equal(r.status, 200, file);
      assert.match(r.headers.get("content-type"), file.endsWith(".css") ? /text\/css/ : /javascript/, file);
    }
    assert.equal((await fetch(`${gw.url}/nope.js`)).status, 404);
  } finally {
    await gw.stop();
  }
});
