// The client as a package: web/stickless.d.ts type-checks a typed use of the API (tests/js/types/usage.ts, whose
// `@ts-expect-error` lines prove the declarations are not `any`), and `npm install <this repo>` gives a project
// the client - only the client's files - importable as "stickless". Run: node --test tests/js/

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { REPO, makeTempDir } from "./harness.mjs";

const run = promisify(execFile);

/** Runs a command to its end; resolves {code, stdout, output} (output: stdout and stderr) instead of throwing. */
async function outcome(cmd, args, opts = {}) {
  try {
    const { stdout, stderr } = await run(cmd, args, { maxBuffer: 16 << 20, ...opts });
    return { code: 0, stdout, output: stdout + stderr };
  } catch (err) {
    return { code: err.code, stdout: err.stdout || "", output: `${err.stdout || ""}${err.stderr || ""}${err.message}` };
  }
}

test("stickless.d.ts type-checks the typed usage file with tsc --noEmit (strict), rejecting every wrong use", { timeout: 120000 }, async () => {
  const tsc = join(REPO, "node_modules", "typescript", "bin", "tsc");
  const { code, output } = await outcome(process.execPath, [tsc, "--noEmit", "-p", join(REPO, "tests", "js", "types", "tsconfig.json")]);
  assert.equal(code, 0, `tsc reported errors:\n${output}`);
});

test("npm install <repo path> installs only the client files, importable as 'stickless'", { timeout: 120000 }, async () => {
  const app = makeTempDir("stickless-app-");
  // --install-links packs the repo as npm would for a git URL (a plain path would only be symlinked), so `files`
  // decides what the project gets; the client has no dependencies, so nothing is fetched.
  const install = await outcome("npm", ["install", "--install-links", "--offline", "--no-audit", "--no-fund", "--no-package-lock", REPO], { cwd: app });
  assert.equal(install.code, 0, `npm install failed:\n${install.output}`);
  const installed = join(app, "node_modules", "stickless");
  for (const file of ["web/stickless.js", "web/stickless.d.ts", "web/client/session.js", "web/client/long-polling.js"]) {
    assert.ok(existsSync(join(installed, file)), `${file} is installed`);
  }
  for (const file of ["web/demo.js", "web/index.html", "tests", "src", "bench"]) {
    assert.ok(!existsSync(join(installed, file)), `${file} is not part of the client package`);
  }
  const script = 'import Stickless, * as api from "stickless"; console.log(JSON.stringify([Object.keys(api).sort(), Stickless === api.Stickless]));';
  const imported = await outcome(process.execPath, ["--input-type=module", "-e", script], { cwd: app });
  assert.equal(imported.code, 0, `import "stickless" failed:\n${imported.output}`);
  const repoExports = Object.keys(await import("../../web/stickless.js")).sort();
  assert.deepEqual(JSON.parse(imported.stdout), [repoExports, true]);
  assert.deepEqual(repoExports, ["StickError", "Stickless", "default", "parsePosition"]);
});
