/**
 * ferry on a kernel without openat2 (before Linux 5.6, as RHEL 8's 4.18 or Ubuntu 20.04's 5.4), where each
 * open walks its path one component at a time by the same rules (`ffi/libc.ts`). A seccomp filter, set by
 * Debian's python3-seccomp and inherited by every process started under it, makes openat2 fail with
 * ENOSYS as such a kernel does; the tests that attack paths and symlinks then run again under it, servers
 * and clients alike, and must all pass. Without python3-seccomp the tests say so and skip.
 */

import assert from "node:assert/strict";
import { repoPath } from "./helpers.ts";

const PYTHON = "/usr/bin/python3";

/** Python that makes openat2 fail with ENOSYS, then runs its arguments (a command) in its place. */
const FILTER = [
  "import os, sys, seccomp",
  "f = seccomp.SyscallFilter(seccomp.ALLOW)",
  "f.add_rule(seccomp.ERRNO(38), 'openat2')",
  "f.load()",
  "os.execv(sys.argv[1], sys.argv[1:])",
].join("\n");

/** True where the filter can be set. */
async function filterAvailable(): Promise<boolean> {
  try {
    const probe = await new Deno.Command(PYTHON, { args: ["-c", "import seccomp"], stderr: "null" }).output();
    return probe.success;
  } catch {
    return false;
  }
}

/** Runs `args` under the filter; stdout and stderr as text. */
async function withoutOpenat2(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(PYTHON, {
    args: ["-c", FILTER, ...args],
    stdin: "null",
    env: { NO_COLOR: "1" }, // a summary to read, without colours
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

/** Whether a process opens paths without openat2, as it says after one open (see `opensWithoutOpenat2`). */
const PROBE = `
import { close, openRead, opensWithoutOpenat2 } from ${JSON.stringify(repoPath("ffi/libc.ts"))};
close(openRead("/", { directory: true }));
console.log(opensWithoutOpenat2() ? "walks" : "openat2");
`;

Deno.test("under the filter openat2 fails with ENOSYS and opens walk their paths; without it they go through openat2", async () => {
  if (!await filterAvailable()) {
    console.warn(
      "without_openat2_test: python3-seccomp is not installed: the tests without openat2 are skipped",
    );
    return;
  }
  const eval_ = [Deno.execPath(), "eval", "--ext=ts", PROBE];
  const filtered = await withoutOpenat2(eval_);
  assert.equal(filtered.code, 0, filtered.stderr);
  assert.equal(filtered.stdout.trim(), "walks");
  const plain = await new Deno.Command(eval_[0], { args: eval_.slice(1) }).output();
  assert.equal(new TextDecoder().decode(plain.stdout).trim(), "openat2");
});

Deno.test("without openat2, the tests of paths, symlinks, HTTP, listings and mirrors pass as they do with it", async () => {
  if (!await filterAvailable()) return; // said by the test above
  const files = [
    "refusal_test.ts", // path attacks on get: .., absolute, symlinks out, magic links
    "http_test.ts",
    "listing_test.ts",
    "transfer_test.ts",
    "mirror_symlink_test.ts", // planted and swapped symlinks below LOCAL_DIR
    "mirror_test.ts",
  ];
  const run = await withoutOpenat2([
    Deno.execPath(),
    "test",
    "--allow-all",
    "--parallel",
    ...files.map((name) => repoPath(`tests/${name}`)),
  ]);
  const summary = run.stdout.match(/(ok|FAILED) \| (\d+) passed.* \| (\d+) failed/);
  assert.ok(summary !== null, run.stdout.slice(-2000) + run.stderr.slice(-2000));
  assert.equal(summary[3], "0", run.stdout.slice(-4000));
  assert.ok(Number(summary[2]) >= 60, summary[0]);
  assert.equal(run.code, 0, run.stderr.slice(-2000));
});
