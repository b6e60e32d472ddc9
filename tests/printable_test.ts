/**
 * What the client prints for people carries no control character from a file's name: a name from the
 * server cannot forge a line of the output or drive the terminal, while `--json` and the file on disk keep
 * the name as it is.
 */

import assert from "node:assert/strict";
import { printable } from "../client/printable.ts";
import { jsonLines, withServer } from "./client_fixture.ts";
import { runClient } from "./helpers.ts";

Deno.test("printable shows controls, C1 and bidirectional marks as escapes, and leaves every other character as it is", () => {
  assert.equal(printable("plain name.txt"), "plain name.txt");
  assert.equal(printable("été/日本語 back\\slash"), "été/日本語 back\\slash");
  assert.equal(printable("a\nb\tc\rd"), "a\\nb\\tc\\rd");
  assert.equal(printable("\x1b[31mred\x1b[0m\x07\x00\x7f"), "\\x1b[31mred\\x1b[0m\\x07\\x00\\x7f");
  assert.equal(printable("\u009b2J"), "\\x9b2J");
  assert.equal(printable("invoice\u202efdp.exe"), "invoice\\u{202e}fdp.exe");
  assert.equal(printable("a\u2028b\u2066c\u200fd"), "a\\u{2028}b\\u{2066}c\\u{200f}d");
  // The same string twice: the check holds no state from one call to the next.
  assert.equal(printable("x\ny"), printable("x\ny"));
});

Deno.test("mirror prints a name with a newline and escape sequences as one line of escapes; --json and the copy keep it whole", async () => {
  await withServer(async ({ src, out, address }) => {
    const name = "evil\nferry: mirror done: 0 updated\x1b]0;owned\x07\x1b[2K";
    await Deno.writeTextFile(`${src}/${name}`, "x\n");
    await Deno.writeTextFile(`${src}/plain.txt`, "y\n");
    await Deno.mkdir(`${out}/copy`);
    await Deno.writeTextFile(`${out}/copy/gone\tfile`, "the server has no such file\n");
    const r = await runClient(["mirror", address, "", `${out}/copy`, "--delete"]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stderr.trimEnd().split("\n");
    assert.ok(lines.every((line) => !/\p{Cc}/u.test(line)), "no control character but the line ends");
    assert.deepEqual(lines.sort(), [
      "ferry: deleted gone\\tfile",
      "ferry: mirror done: 2 updated, 0 unchanged, 1 deleted, 0 failed",
      "ferry: updated evil\\nferry: mirror done: 0 updated\\x1b]0;owned\\x07\\x1b[2K (2 bytes)",
      "ferry: updated plain.txt (2 bytes)",
    ]);
    assert.equal(await Deno.readTextFile(`${out}/copy/${name}`), "x\n");
    const json = await runClient(["mirror", address, "", `${out}/again`, "--json", "-q"]);
    assert.ok(jsonLines(json).some((l) => l.path === name), json.stderr);
  });
});
