/**
 * `client mirror` as a whole run: `--dry-run` (what would change, and LOCAL_DIR left byte for byte as it
 * was), the summary that ends `--json`, and the one progress bar of the tree.
 */

import assert from "node:assert/strict";
import { renderTreeProgress } from "../client/progress.ts";
import { allJsonLines, jsonLines, withServer } from "./client_fixture.ts";
import { type ClientResult, makeFile, repoPath, runClient, sha256File } from "./helpers.ts";
import { FrameProxy } from "./proxy.ts";

const MiB = 1024 * 1024;

/**
 * Everything `lstat` and a read can tell of each entry below `root` (LOCAL_DIR itself included): kind,
 * mode, size, mtime and ctime, the content's SHA-256, a symlink's target. Two equal snapshots mean nothing
 * was created, removed, written, renamed or touched.
 */
async function snapshot(root: string): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  const walk = async (rel: string) => {
    const path = rel === "" ? root : `${root}/${rel}`;
    const info = await Deno.lstat(path);
    const kind = info.isFile ? "file" : info.isDirectory ? "dir" : info.isSymlink ? "link" : "other";
    out[rel === "" ? "." : rel] = {
      kind,
      mode: info.mode,
      size: info.size,
      mtime: info.mtime?.getTime(),
      ctime: info.ctime?.getTime(),
      content: kind === "file" ? await sha256File(path) : kind === "link" ? await Deno.readLink(path) : null,
    };
    if (kind !== "dir") return;
    for await (const entry of Deno.readDir(path)) {
      await walk(rel === "" ? entry.name : `${rel}/${entry.name}`);
    }
  };
  await walk("");
  return out;
}

/** `{path: status}` of a run's per-file --json lines. */
function statuses(r: ClientResult): Record<string, unknown> {
  return Object.fromEntries(jsonLines(r).map((l) => [l.path, l.status]));
}

/** The summary that ends a mirror's --json output; it must be the last line, and the only summary. */
function summaryOf(r: ClientResult): Record<string, unknown> {
  const lines = allJsonLines(r);
  assert.equal(lines.filter((l) => "summary" in l).length, 1, "one summary");
  const last = lines.at(-1)!;
  assert.ok("summary" in last, "the summary is the last line");
  return last.summary as Record<string, unknown>;
}

Deno.test("mirror --dry-run lists exactly the new, changed and extra files, fetches nothing, and leaves LOCAL_DIR byte-identical", async () => {
  await withServer(async ({ src, out, server, address }) => {
    const local = `${out}/copy`;
    await Deno.mkdir(`${src}/sub`);
    await Deno.mkdir(`${src}/kept`);
    await Deno.mkdir(`${local}/kept`, { recursive: true });
    await Deno.mkdir(`${local}/extra-dir`);
    for (
      const [name, server, mine] of [
        ["same.txt", "same\n", "same\n"],
        ["kept/same.txt", "also same\n", "also same\n"],
        ["resized.txt", "longer now\n", "short\n"],
        ["same-size.txt", "version 2\n", "version 1\n"], // only a hash tells it changed
        ["new.txt", "new\n", null],
        ["partial.txt", "left half-way\n", null], // its part is below: a dry run leaves it there
        ["sub/new.txt", "in a folder LOCAL_DIR lacks\n", null],
        ["extra.txt", null, "the server has none\n"],
        ["extra-dir/x.txt", null, "nor this\n"],
      ]
    ) {
      if (server !== null) await Deno.writeTextFile(`${src}/${name}`, server);
      if (mine !== null) await Deno.writeTextFile(`${local}/${name}`, mine);
    }
    await Deno.writeTextFile(`${local}/.partial.txt.ferry-0123456789abcdef0123456789abcdef.part`, "left ");
    await makeFile(src, "big.bin", 2 * MiB); // changed, large: would go one by one
    await Deno.writeFile(`${local}/big.bin`, new Uint8Array(2 * MiB));
    const before = await snapshot(local);
    const wouldChange = {
      "resized.txt": "would update",
      "same-size.txt": "would update",
      "new.txt": "would update",
      "partial.txt": "would update",
      "sub/new.txt": "would update",
      "big.bin": "would update",
      "extra.txt": "would delete",
      "extra-dir/x.txt": "would delete",
    };

    const proxy = new FrameProxy(server.ports[0]);
    let r;
    try {
      r = await runClient(["mirror", proxy.address, ".", local, "--delete", "--dry-run", "--json"]);
      // The listing, and a `stat` for each local copy of the listed size whose hash it did not give.
      const ops = proxy.connections.flatMap((c) => c.requests.map((q) => q.op));
      assert.deepEqual(ops.filter((op) => op !== "stat"), ["list"], "no file is asked for");
      assert.equal(proxy.connections.reduce((n, c) => n + c.dataFrames, 0), 0);
    } finally {
      await proxy.close();
    }
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(statuses(r), { ...wouldChange, "same.txt": "unchanged", "kept/same.txt": "unchanged" });
    assert.deepEqual(
      jsonLines(r).filter((l) => l.status === "would update").map((l) => [l.path, l.size, l.bytes]).sort(),
      [["big.bin", 2 * MiB, 0], ["new.txt", 4, 0], ["partial.txt", 14, 0], ["resized.txt", 11, 0], [
        "same-size.txt",
        10,
        0,
      ], [
        "sub/new.txt",
        28,
        0,
      ]],
    );
    assert.deepEqual(summaryOf(r), {
      dryRun: true,
      updated: 6,
      unchanged: 2,
      deleted: 2,
      failed: 0,
      bytes: 0,
      seconds: summaryOf(r).seconds,
      exitCode: 0,
      problems: [],
    });
    assert.deepEqual(await snapshot(local), before, "LOCAL_DIR is as it was: no part, no state, no folder");

    // For people: one line per would-be change, and the summary says it was a dry run.
    const people = await runClient(["mirror", address, ".", local, "--delete", "--dry-run"]);
    assert.equal(people.code, 0, people.stderr);
    assert.match(people.stderr, /^ferry: would update sub\/new\.txt \(28 bytes\)$/m);
    assert.match(people.stderr, /^ferry: would delete extra-dir\/x\.txt$/m);
    assert.match(
      people.stderr,
      /ferry: mirror dry run: 6 would update, 2 unchanged, 2 would delete, 0 failed\n$/,
    );
    assert.deepEqual(await snapshot(local), before);

    // The real run then does what the dry run said, no more.
    const real = await runClient(["mirror", address, ".", local, "--delete", "--json"]);
    assert.equal(real.code, 0, real.stderr);
    const done: Record<string, string> = { "would update": "updated", "would delete": "deleted" };
    assert.deepEqual(
      statuses(real),
      Object.fromEntries(Object.entries(statuses(r)).map(([path, s]) => [path, done[s as string] ?? s])),
    );
    // The small file's part was not worth resuming: it is gone, and the file came with the others.
    assert.deepEqual([...Deno.readDirSync(local)].filter((e) => e.name.endsWith(".part")), []);
    assert.equal(await Deno.readTextFile(`${local}/partial.txt`), "left half-way\n");
  });
});

Deno.test("mirror --dry-run into a missing LOCAL_DIR creates nothing and lists every file", async () => {
  await withServer(async ({ src, out, address }) => {
    await Deno.mkdir(`${src}/a/b`, { recursive: true });
    await Deno.writeTextFile(`${src}/a/b/deep.txt`, "deep\n");
    await Deno.writeTextFile(`${src}/top.txt`, "top\n");
    const r = await runClient(["mirror", address, ".", `${out}/missing`, "--delete", "--dry-run", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(statuses(r), { "a/b/deep.txt": "would update", "top.txt": "would update" });
    assert.deepEqual(await Array.fromAsync(Deno.readDir(out)), [], "LOCAL_DIR is not created");
  });
});

Deno.test("mirror --json ends with one summary whose counts, bytes and exit code match the per-file lines", async () => {
  await withServer(async ({ src, out, address }) => {
    for (const name of ["1.txt", "2.txt", "3.txt"]) await Deno.writeTextFile(`${src}/${name}`, `${name}\n`);
    await makeFile(src, "big.bin", 3 * MiB);
    await Deno.writeTextFile(`${out}/3.txt`, "3.txt\n");
    await Deno.writeTextFile(`${out}/extra.txt`, "gone from the server\n");
    // A folder where the server has a file, holding a symlink, which --delete does not remove: that file fails.
    await Deno.mkdir(`${out}/2.txt`);
    await Deno.writeTextFile(`${out}/2.txt/keep`, "x\n");
    await Deno.symlink(`${out}/3.txt`, `${out}/2.txt/link`);
    const r = await runClient(["mirror", address, ".", out, "--delete", "--json"]);
    assert.equal(r.code, 8, r.stderr);
    const lines = jsonLines(r);
    const counted = (status: string) => lines.filter((l) => l.status === status).length;
    const summary = summaryOf(r);
    assert.deepEqual(
      [summary.updated, summary.unchanged, summary.deleted, summary.failed],
      [counted("updated"), counted("unchanged"), counted("deleted"), counted("failed")],
    );
    assert.deepEqual([summary.updated, summary.unchanged, summary.failed], [2, 1, 1]);
    // 2.txt/keep is below a folder the server has as a file: --delete removes it too.
    assert.equal(summary.deleted, 2);
    assert.equal(summary.bytes, lines.reduce((n, l) => n + (l.bytes as number), 0));
    assert.equal(summary.bytes, 3 * MiB + 6, "2.txt, which could not be published, was not fetched");
    assert.equal(summary.exitCode, r.code);
    assert.equal(summary.dryRun, false);
    assert.deepEqual(summary.problems, []);
    assert.ok(typeof summary.seconds === "number" && summary.seconds >= 0);

    // A listing the server refuses: nothing done, and the summary still comes, saying why.
    const refused = await runClient(["mirror", address, "nope", `${out}/copy`, "--json"]);
    assert.equal(refused.code, 5);
    assert.deepEqual(jsonLines(refused), []);
    const why = summaryOf(refused);
    assert.equal(why.exitCode, 5);
    assert.deepEqual((why.problems as { exitCode: number }[]).map((p) => p.exitCode), [5]);
    assert.match((why.problems as { error: string }[])[0].error, /NOT_FOUND/);
  });
});

Deno.test("the mirror's bar shows files done of those listed, bytes of those expected, rate and time left", () => {
  const counts = {
    phase: "fetching" as const,
    files: 1234,
    filesDone: 120,
    bytesDone: 25 * MiB,
    bytesTotal: 100 * MiB,
    receivingMs: 5000,
  };
  const line = renderTreeProgress(counts, 100);
  assert.match(
    line,
    /^fetching \[#{5,9}\.+\] 120\/1234 files 25\.0 MiB \/ 100\.0 MiB 5\.0 MiB\/s ETA 0:15$/,
  );
  assert.ok(line.length <= 100);
  // While the listing streams in, the totals may grow: marked with +, no bar, no time left.
  const listing = renderTreeProgress({ ...counts, phase: "listing", bytesDone: 0, receivingMs: 0 }, 100);
  assert.equal(listing, "listing... 120/1234+ files 0 B / 100.0 MiB+ 0 B/s ETA -:--");
  // Nothing to fetch: the bar follows the files.
  const hashing = renderTreeProgress({ ...counts, phase: "hashing", bytesDone: 0, bytesTotal: 0 }, 100);
  assert.match(hashing, /^hashing \[#{3}\.+\] 120\/1234 files 0 B \/ 0 B 0 B\/s ETA -:--$/);
  assert.ok(renderTreeProgress(counts, 30).length <= 30);
});

Deno.test("mirror on a terminal draws one bar for the tree, none per file, and none with --quiet", async () => {
  await withServer(async ({ src, out, address }) => {
    await makeFile(src, "a.bin", 2 * MiB);
    await makeFile(src, "b.bin", 3 * MiB);
    const underTerminal = async (local: string, extra = "") => {
      // script(1) gives the client a pseudo-terminal for stdin, stdout and stderr.
      const command = `'${Deno.execPath()}' run -A '${
        repoPath("client.ts")
      }' mirror ${address} . '${local}' ${extra}`;
      const r = await new Deno.Command("script", { args: ["-qec", command, "/dev/null"], stdin: "null" })
        .output();
      return new TextDecoder().decode(r.stdout);
    };
    const shown = await underTerminal(`${out}/one`);
    assert.match(shown, /listing\.\.\. \d+\/\d+\+ files/);
    assert.match(shown, /fetching \[[#.]+\] \d\/2 files [^\r\n]* \/ 5\.0 MiB [^\r\n]*\/s ETA/);
    assert.doesNotMatch(shown, /%/, "no per-file bar");
    assert.match(shown, /mirror done: 2 updated/);
    assert.doesNotMatch(await underTerminal(`${out}/two`, "--quiet"), /files|ETA/);
  });
});
