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
import { jsonLines, logged, withServer } from "./client_fixture.ts";
import {
  assertListRefused,
  concat,
  randomBytes,
  RawConnection,
  runClient,
  streamedListing,
  tempDir,
  treeOf,
} from "./helpers.ts";

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

/** Writes `content` to `path` in place until the clock that stamps files has reached `since`. */
async function rewriteAfter(path: string, content: string | Uint8Array, since: bigint): Promise<void> {
  const bytes = typeof content === "string" ? new TextEncoder().encode(content) : content;
  for (let tries = 0; tries < 100_000 && ctimeNs(path) < since; tries++) await Deno.writeFile(path, bytes);
  assert.ok(ctimeNs(path) >= since, `${path} has a ctime at or after ${since}`);
}

/** Sets the time the state at `statePath` says its listing began, as if its files were written before. */
async function setSince(statePath: string, since: bigint): Promise<void> {
  const text = await Deno.readTextFile(statePath);
  await Deno.writeTextFile(statePath, text.replace(/^since [0-9]+$/m, `since ${since}`));
}

/** The digest of the folder `folder` of a listing's entries, as a client holding those versions makes it. */
function digestOf(entries: Record<string, unknown>[], folder: string): string {
  const files = entries.filter((e) => String(e.path).startsWith(`${folder}/`)).map((e) => ({
    name: String(e.path).slice(folder.length + 1),
    etag: String(e.etag),
  }));
  return folderDigest(folder, files.sort((a, b) => compareUtf8(a.name, b.name)));
}

/**
 * A listing with `knownSince` after changes to three of four folders sends the records and entries it
 * should, from a server started with `serverArgs`.
 */
async function partialRecordsAfterChanges(serverArgs: string[]): Promise<void> {
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
  }, serverArgs);
}

Deno.test("with knownSince, a folder changed since comes as a partial record and its changed files' entries; with names when names changed", () =>
  partialRecordsAfterChanges([]));

Deno.test("the same from a server whose listing memo is full, where a look at a folder works out its etags alone", () =>
  partialRecordsAfterChanges(["--listing-memo", "1"]));

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
    let since = after(paths);
    await setSince(statePath, since);
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
    await setSince(statePath, since);
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
    assert.match(lists[3], /LIST "tree" recursive stream since=[0-9]+ .*result=ok listed=14 inlined=1$/);
    assert.deepEqual(await treeOf(out), await treeOf(`${src}/tree`));
  });
});

Deno.test("large files a partial record names as changed have their signatures asked for with the state's hash before their entries come, once each; an 'unchanged' to that question is not taken for a copy changed here", async () => {
  await withServer(async ({ src, server }) => {
    await using dir = await tempDir();
    const out = `${dir.path}/out`, statePath = `${out}/.ferry/state`;
    const top = `${src}/tree/top.bin`, deeper = `${src}/tree/sub/deeper.bin`;
    // tree/top.bin's entry comes after tree/sub's, its folder's record before them: its signature is asked
    // for before sub/deeper.bin's, and taken first.
    await Deno.mkdir(`${src}/tree/sub`, { recursive: true });
    await Deno.writeTextFile(`${src}/tree/keep.txt`, "kept\n");
    await Deno.writeTextFile(`${src}/tree/sub/s.txt`, "sub\n");
    const MiB = 1024 * 1024, first = randomBytes(2 * MiB), deeperFirst = randomBytes(2 * MiB);
    await Deno.writeFile(top, first);
    await Deno.writeFile(deeper, deeperFirst);
    const paths = [`${src}/tree/keep.txt`, `${src}/tree/sub/s.txt`, top, deeper];
    const address = `127.0.0.1:${server.ports[0]}`;
    const signed = (name: string, count: number) =>
      logged(server, new RegExp(`request=SIG "tree/${name}"`), count);
    const mirror = async () => {
      const r = await runClient(["mirror", "--delete", "--json", "--retries", "0", address, "tree", out]);
      assert.equal(r.code, 0, r.stderr);
      return jsonLines(r);
    };
    await mirror(); // which asks for the signature of each large file, to keep

    // top.bin appended to: a copy of another size asks without a hash, and takes this answer too.
    // sub/deeper.bin changed in place.
    let since = after(paths);
    await setSince(statePath, since);
    const second = concat(first, randomBytes(64 * 1024));
    await rewriteAfter(top, second, since);
    await rewriteAfter(deeper, concat(randomBytes(4096), deeperFirst.subarray(4096)), since);
    const lines = await mirror();
    for (const name of ["top.bin", "sub/deeper.bin"]) {
      const line = lines.find((l) => l.path === `tree/${name}`) ?? {};
      assert.equal(line.status, "updated", name);
      assert.ok((line.bytes as number) < MiB, `${name}: ${line.bytes} bytes came over: a delta`);
      const asked = (await signed(name, 2)).slice(1);
      assert.equal(asked.length, 1, `${name}: asked once`);
      assert.match(asked[0], /ifNoneMatch .*result=ok/, name);
    }
    assert.deepEqual(await treeOf(out), await treeOf(`${src}/tree`));
    // The state records the versions the answers named, which the listing did not know the hashes of: the
    // next run holds both folders as they are, by their records.
    await mirror();
    await logged(server, /LIST "tree" .*result=ok listed=2 .*known-folders=2 partial-folders=0$/);

    // Written again with the same bytes on the server (a new version of the state's SHA-256), and appended
    // to here: the answer to the state's hash is "unchanged", which says nothing of the copy here.
    since = after(paths);
    await setSince(statePath, since);
    await rewriteAfter(top, second, since);
    await Deno.writeFile(`${out}/top.bin`, randomBytes(1000), { append: true });
    const line = (await mirror()).find((l) => l.path === "tree/top.bin") ?? {};
    assert.equal(line.status, "updated");
    const asked = (await signed("top.bin", 4)).slice(2);
    assert.equal(asked.length, 2, "asked with the state's hash, then again without one");
    assert.match(asked[0], /ifNoneMatch .*result=unchanged/);
    assert.match(asked[1], /result=ok/);
    assert.deepEqual(await Deno.readFile(`${out}/top.bin`), second);
    assert.deepEqual(await treeOf(out), await treeOf(`${src}/tree`));
  });
});
