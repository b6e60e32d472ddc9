/**
 * A streamed listing asked with `known` and `knownSince` (the `walkedAt` of the listing the client's copy
 * was made from) sends a folder whose digest is not in `known` as one PartialRecord, followed by the
 * entries of the files changed since, when some did not change: the record's count and digest let the
 * client check that it holds the others as the server does. `mirror` asks for it, and asks for the whole
 * listing again when its state does not agree with a record.
 */

import assert from "node:assert/strict";
import { compareUtf8, folderDigest, loadHashing } from "../hashing.ts";
import { lstatAt } from "../ffi/libc.ts";
import { logged, withServer } from "./client_fixture.ts";
import { assertListRefused, RawConnection, runClient, streamedListing, tempDir, treeOf } from "./helpers.ts";

const AT_FDCWD = -100;
// libc is bound on first use and stays bound: bound before the tests, as the sanitizer counts it a leak.
lstatAt(AT_FDCWD, ".");

/** The ctime of `path`, in nanoseconds. */
function ctimeNs(path: string): bigint {
  return lstatAt(AT_FDCWD, path).ctimeNs;
}

/** A time after the ctime of every one of `paths`: what a listing begun after they were written says. */
function after(paths: string[]): bigint {
  return paths.map(ctimeNs).reduce((a, b) => a > b ? a : b) + 1n;
}

/** Writes `text` to `path` in place until the clock that stamps files has reached `since`. */
async function rewriteAfter(path: string, text: string, since: bigint): Promise<void> {
  for (let tries = 0; tries < 100_000 && ctimeNs(path) < since; tries++) await Deno.writeTextFile(path, text);
  assert.ok(ctimeNs(path) >= since, `${path} has a ctime at or after ${since}`);
}

/** The digest of the folder `folder` of a listing's entries, as a client holding those versions makes it. */
function digestOf(entries: Record<string, unknown>[], folder: string): string {
  const files = entries.filter((e) => String(e.path).startsWith(`${folder}/`)).map((e) => ({
    name: String(e.path).slice(folder.length + 1),
    etag: String(e.etag),
  }));
  return folderDigest(folder, files.sort((a, b) => compareUtf8(a.name, b.name)));
}

Deno.test("with knownSince, a folder changed since comes as a partial record and its changed files' entries; with names when names changed", async () => {
  await loadHashing();
  await withServer(async ({ src, server }) => {
    const files = ["a/1.txt", "a/2.txt", "a/3.txt", "b/x.txt", "b/y.txt", "c/z.txt", "d/w.txt"];
    for (const dir of ["a", "b", "c", "d"]) await Deno.mkdir(`${src}/${dir}`);
    for (const path of files) await Deno.writeTextFile(`${src}/${path}`, `${path}\n`);
    const conn = await RawConnection.open(server.ports[0]);
    try {
      const before = await streamedListing(conn, {});
      const known = ["a", "b", "c", "d"].map((folder) => digestOf(before.values, folder));
      const since = after(files.map((path) => `${src}/${path}`));
      // a/2.txt rewritten in place: a's names are as they were. b/y.txt removed: b's are not. d's only
      // file rewritten: nothing of d is held as it was.
      await rewriteAfter(`${src}/a/2.txt`, "two, longer\n", since);
      await Deno.remove(`${src}/b/y.txt`);
      await rewriteAfter(`${src}/d/w.txt`, "w, longer\n", since);
      const now = await streamedListing(conn, {});
      const entryOf = (path: string) => now.values.find((e) => e.path === path)!;

      const listing = await streamedListing(conn, { known, knownSince: String(since) });
      assert.deepEqual(listing.values, [
        {
          folder: "a",
          files: 3,
          digest: digestOf(now.values, "a"),
          changed: [["2.txt", entryOf("a/2.txt").etag]],
        },
        entryOf("a/2.txt"),
        { folder: "b", files: 1, digest: digestOf(now.values, "b"), changed: [], names: ["x.txt"] },
        { folder: "c", files: 1 },
        entryOf("d/w.txt"),
      ]);
      assert.notEqual(entryOf("a/2.txt").etag, before.values.find((e) => e.path === "a/2.txt")!.etag);
      assert.equal(listing.listed, 5, "listed counts the records");
      await logged(
        server,
        new RegExp(
          `LIST "" recursive stream known=4 .*result=ok listed=5 known-folders=1 partial-folders=2$`,
        ),
      );
    } finally {
      conn.close();
    }
  });
});

Deno.test("'knownSince' that is not nanoseconds as decimal text, or without 'known', is BAD_REQUEST", async () => {
  await withServer(async ({ src, server }) => {
    await Deno.writeTextFile(`${src}/a.txt`, "a");
    const known = ["A".repeat(22)];
    for (
      const [request, expected] of [
        [{ known, knownSince: 1796587894139000000 }, "'knownSince' is not nanoseconds as decimal text"],
        [{ known, knownSince: "1.5e18" }, "'knownSince' is not nanoseconds as decimal text"],
        [{ knownSince: "1796587894139000000" }, "'knownSince' needs 'known'"],
      ] as const
    ) {
      await assertListRefused(
        server.ports[0],
        { stream: true, ...request } as Record<string, unknown>,
        expected,
      );
    }
  });
});

Deno.test("mirror takes a folder's unchanged files from its state by a partial record, undoes local changes, and asks again whole when its state disagrees", async () => {
  await withServer(async ({ src, server }) => {
    await using dir = await tempDir();
    const out = `${dir.path}/out`, statePath = `${out}/.ferry/state`;
    const paths: string[] = [];
    for (const folder of ["a", "b", "c"]) {
      await Deno.mkdir(`${src}/tree/${folder}`, { recursive: true });
      for (let i = 0; i < 4; i++) {
        await Deno.writeTextFile(`${src}/tree/${folder}/${i}.txt`, `${folder}${i}\n`);
        paths.push(`${src}/tree/${folder}/${i}.txt`);
      }
    }
    // Files in the mirrored folder itself, whose record names it as REMOTE_DIR.
    for (let i = 0; i < 3; i++) {
      await Deno.writeTextFile(`${src}/tree/top${i}.txt`, `top${i}\n`);
      paths.push(`${src}/tree/top${i}.txt`);
    }
    const address = `127.0.0.1:${server.ports[0]}`;
    const mirror = () => runClient(["mirror", "--delete", "-q", address, "tree", out]);
    assert.equal((await mirror()).code, 0);
    // The state says when the listing it was made from began: set to a time after every file was written
    // here, as on a server whose files were written long before.
    const setSince = async (since: bigint) =>
      await Deno.writeTextFile(
        statePath,
        (await Deno.readTextFile(statePath)).replace(/^since [0-9]+$/m, `since ${since}`),
      );
    let since = after(paths);
    await setSince(since);
    await rewriteAfter(`${src}/tree/a/1.txt`, "a1, longer\n", since);
    await rewriteAfter(`${src}/tree/top1.txt`, "top1, longer\n", since);
    await Deno.remove(`${src}/tree/b/2.txt`);
    // Here, a/3.txt is overwritten with other bytes of the same size: its lstat no longer vouches for it.
    await Deno.writeTextFile(`${out}/a/3.txt`, "XX\n");
    assert.equal((await mirror()).code, 0);
    await logged(
      server,
      /LIST "tree" .*known=4 .*result=ok listed=6 inlined=2 known-folders=1 partial-folders=3$/,
    );
    assert.deepEqual(await treeOf(out), await treeOf(`${src}/tree`));

    // a/0.txt's etag in the state is not the one the server listed: a's record does not agree with the
    // state, and the listing is asked for again whole, which lists a/0.txt as it is.
    since = after(paths.filter((p) => !p.endsWith("b/2.txt")));
    await rewriteAfter(`${src}/tree/a/1.txt`, "a1, longer still\n", since);
    await setSince(since);
    const lines = (await Deno.readTextFile(statePath)).split("\n");
    await Deno.writeTextFile(
      statePath,
      lines.map((line) => {
        const fields = line.split("\t");
        return fields.at(-1) === "a/0.txt"
          ? [fields[0], fields[1], "0".repeat(32), fields[3]].join("\t")
          : line;
      }).join("\n"),
    );
    const r = await runClient(["mirror", "--delete", "--json", address, "tree", out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /mirror done: 1 updated, 13 unchanged, 0 deleted, 0 failed\n$/);
    const lists = await logged(server, /LIST "tree" /, 4);
    assert.match(lists[2], /known=4 .*result=ok listed=5 inlined=1 known-folders=3 partial-folders=1$/);
    assert.match(lists[3], /LIST "tree" recursive stream since=[0-9]+ zstd .*result=ok listed=14 inlined=1$/);
    assert.deepEqual(await treeOf(out), await treeOf(`${src}/tree`));
  });
});
