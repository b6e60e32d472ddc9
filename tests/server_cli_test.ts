/**
 * The server's command line: each mistake is one line on stderr that names the flag and what was wrong,
 * with exit code 2, before anything listens.
 *
 * @module
 */

import assert from "node:assert/strict";
import { runServerToExit } from "./helpers.ts";

const mistakes: [string, string[], RegExp][] = [
  ["an unknown flag", ["--listen", "127.0.0.1:0", "--root", "demo", "--colour"], /'--colour'/],
  ["a flag whose value is missing", ["--root", "demo", "--listen", "-x"], /'--listen'/],
  ["a root that is not a directory", ["--listen", "127.0.0.1:0", "--root", "demo/hello.txt"], /--root: /],
  [
    "a worker count that is not a number",
    ["--listen", "127.0.0.1:0", "--root", "demo", "--workers", "two"],
    /--workers: 'two'/,
  ],
  ["an address without a port", ["--listen", "127.0.0.1", "--root", "demo"], /--listen: /],
  ["neither --root nor --push", ["--listen", "127.0.0.1:0"], /--root DIR .* --push FILE/],
];

for (const [what, args, names] of mistakes) {
  Deno.test(`server usage: ${what} is one line naming it, exit code 2`, async () => {
    const { code, stderr } = await runServerToExit(args);
    assert.equal(code, 2, stderr);
    const lines = stderr.split("\n").filter((l) => l !== "");
    assert.equal(lines.length, 1, stderr);
    assert.match(lines[0], /^ferry server: .* \(see --help\)$/);
    assert.match(lines[0], names);
  });
}
