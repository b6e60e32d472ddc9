/**
 * A worker's listing memo (`worker/listing_memo.ts`) only ever saves work: a folder's names are taken
 * from it while the folder is as it was when they were read (and never when it changed within a second of
 * that), a file's entry while its stat says the same, and a listing asked again after the tree changed
 * shows the tree as it is now.
 */

import assert from "node:assert/strict";
import { close, fstat, futimens, lstatAt, OPEN, openAt, openRead, statWordsAt } from "../ffi/libc.ts";
import { STAT } from "../ffi/structs.ts";
import { ListingMemo } from "../worker/listing_memo.ts";
import { withServer } from "./client_fixture.ts";
import { RawConnection, runServerToExit, tempDir } from "./helpers.ts";

const SECOND = 1_000_000_000n;

// libc's symbols are bound on first use and stay bound: bind the ones used here before any test starts,
// since the test sanitizer counts a library opened during a test as a leak.
{
  const fd = openRead(".", { directory: true });
  fstat(fd);
  statWordsAt(fd, ".");
  lstatAt(fd, ".");
  close(openAt(fd, ".", OPEN.O_RDONLY));
  assert.throws(() => futimens(-1, 0n)); // no such fd
  close(fd);
}

/** The fstat of the folder `path`. */
function folderStat(path: string) {
  const fd = openRead(path, { directory: true });
  try {
    return fstat(fd);
  } finally {
    close(fd);
  }
}

Deno.test("a folder's names are kept under its identity, not when it changed within a second of their reading, and not once it changes; full, the unused go first", async () => {
  await using dir = await tempDir();
  await Deno.mkdir(`${dir.path}/d`);
  await Deno.writeTextFile(`${dir.path}/d/one.txt`, "one\n");
  const memo = new ListingMemo(100, 100);
  const names = { texts: ["one.txt"], types: new Uint8Array([8]) };
  const before = folderStat(`${dir.path}/d`);

  memo.keepNames("d", before, names, before.ctimeNs + SECOND / 2n);
  assert.equal(memo.namesOf("d", before), undefined, "read in the same second as the folder's last change");

  memo.keepNames("d", before, names, before.ctimeNs + 2n * SECOND);
  assert.equal(memo.namesOf("d", before), names);
  assert.equal(memo.namesOf("e", before), undefined, "another path");

  await Deno.writeTextFile(`${dir.path}/d/two.txt`, "two\n");
  const after = folderStat(`${dir.path}/d`);
  assert.notEqual(after.ctimeNs, before.ctimeNs);
  assert.equal(memo.namesOf("d", after), undefined, "a name was added since");

  // Full: what no walk used since the last sweep makes room; what all walks use stays.
  const later = before.ctimeNs + 2n * SECOND;
  const full = new ListingMemo(2, 10);
  full.keepNames("d", before, names, later);
  full.keepNames("e", before, names, later);
  full.keepNames("f", before, names, later);
  assert.equal(full.namesOf("f", before), undefined, "past the bound, while every folder kept is new");
  assert.equal(full.namesOf("d", before), names);
  full.keepNames("f", before, names, later);
  assert.equal(full.namesOf("f", before), names, "kept in the place of one no walk used");
  assert.equal(full.namesOf("e", before), undefined, "forgotten: no walk used it since the last sweep");
  assert.equal(full.namesOf("d", before), names);
});

Deno.test("a file's entry is kept under its stat: any field it is made of that moves makes it new, a SHA-256 learnt since is added; full, the unused go first", async () => {
  await using dir = await tempDir();
  await Deno.writeTextFile(`${dir.path}/f.txt`, "four");
  const fd = openRead(dir.path, { directory: true });
  try {
    const words = statWordsAt(fd, "f.txt").slice();
    const memo = new ListingMemo(100, 100);
    const json = `{"path":"f.txt","size":4,"etag":"${"0123456789abcdef".repeat(2)}"}`;
    const none = () => undefined;
    memo.keepEntry("", "f.txt", words, true, json, json.length);
    assert.equal(memo.entryOf("", "f.txt", words, true, none), json);
    assert.equal(memo.entryOf("", "f.txt", words, false, none), undefined, "kept brief, asked in full");
    assert.equal(memo.entryOf("", "g.txt", words, true, none), undefined, "another path");

    // Kept full (a first copy's listing), asked brief: the same entry without mtimeNs and mode, hash and all.
    const fullJson = `{"path":"f\u00e9.txt","size":4,"mtimeNs":"1700000000123456789","mode":420,"etag":"${
      "0123456789abcdef".repeat(2)
    }"}`;
    const fullBytes = new TextEncoder().encode(fullJson).length;
    const fromFull = new ListingMemo(100, 100);
    fromFull.keepEntry("", "f\u00e9.txt", words, false, fullJson, fullBytes);
    const briefJson = `{"path":"f\u00e9.txt","size":4,"etag":"${"0123456789abcdef".repeat(2)}"}`;
    assert.equal(fromFull.entryOf("", "f\u00e9.txt", words, true, none), briefJson);
    assert.equal(fromFull.lastEntryBytes, new TextEncoder().encode(briefJson).length);
    const hashedBrief = `${briefJson.slice(0, -1)},"sha256":"${"cd".repeat(32)}"}`;
    assert.equal(fromFull.entryOf("", "f\u00e9.txt", words, true, () => "cd".repeat(32)), hashedBrief);
    assert.equal(fromFull.lastEntryBytes, new TextEncoder().encode(hashedBrief).length);
    assert.equal(
      fromFull.entryOf("", "f\u00e9.txt", words, false, none),
      `${fullJson.slice(0, -1)},"sha256":"${"cd".repeat(32)}"}`,
      "still full for a full listing",
    );

    const sha = "ab".repeat(32);
    const asked: string[] = [];
    const known = (etag: string) => (asked.push(etag), sha);
    const hashed = `${json.slice(0, -1)},"sha256":"${sha}"}`;
    assert.equal(memo.entryOf("", "f.txt", words, true, known), hashed);
    assert.equal(memo.lastEntryBytes, hashed.length, "the length of what it returned, hash and all");
    assert.deepEqual(asked, ["0123456789abcdef".repeat(2)], "looked up by the entry's etag");

    // Full: the entries no walk used since the last sweep make room, the others stay.
    const small = new ListingMemo(10, 8);
    const pathOf = (i: number) => `f${i}.txt`;
    for (let i = 0; i < 9; i++) small.keepEntry("", pathOf(i), words, true, json, json.length);
    assert.equal(small.entryOf("", pathOf(8), words, true, none), undefined, "past the bound, all new");
    for (let i = 0; i < 4; i++) assert.equal(small.entryOf("", pathOf(i), words, true, none), json);
    small.keepEntry("", pathOf(9), words, true, json, json.length);
    assert.equal(small.entryOf("", pathOf(9), words, true, none), json, "kept in the place of unused ones");
    for (let i = 0; i < 4; i++) {
      assert.equal(small.entryOf("", pathOf(i), words, true, none), json, pathOf(i));
    }
    for (let i = 4; i < 8; i++) {
      assert.equal(small.entryOf("", pathOf(i), words, true, none), undefined, pathOf(i));
    }

    for (
      const [field, at] of [["ino", STAT.st_ino], ["size", STAT.st_size], [
        "mtime",
        STAT.st_mtim + 8,
      ]] as const
    ) {
      const moved = words.slice();
      moved[at / 4] ^= 1;
      assert.equal(memo.entryOf("", "f.txt", moved, true, none), undefined, `${field} moved`);
    }
  } finally {
    close(fd);
  }
});

Deno.test("an entry whose hash the hash cache did not have is not looked up again until the cache learnt more", () => {
  const words = new Uint32Array(STAT.size / 4);
  const memo = new ListingMemo(10, 8);
  const json = `{"path":"f.txt","size":4,"etag":"${"0".repeat(32)}"}`;
  const sha = "ab".repeat(32);
  memo.keepEntry("", "f.txt", words, true, json, json.length);
  let asked = 0;
  const lookUp = (known: string | undefined) => () => (asked++, known);
  assert.equal(memo.entryOf("", "f.txt", words, true, lookUp(undefined), 5), json);
  assert.equal(
    memo.entryOf("", "f.txt", words, true, lookUp(sha), 5),
    json,
    "nothing learnt since: not asked",
  );
  assert.equal(asked, 1);
  assert.equal(
    memo.entryOf("", "f.txt", words, true, lookUp(sha), 6),
    `${json.slice(0, -1)},"sha256":"${sha}"}`,
  );
  assert.equal(asked, 2);
  // Made anew, the entry is looked up again whatever the count.
  memo.keepEntry("", "f.txt", words, true, json, json.length);
  assert.equal(memo.entryOf("", "f.txt", words, true, lookUp(undefined), 6), json);
  assert.equal(asked, 3);
  // Made anew by a walk that had just asked the cache at count 7: not asked again at 7.
  memo.keepEntry("", "f.txt", words, true, json, json.length, 7);
  assert.equal(memo.entryOf("", "f.txt", words, true, lookUp(sha), 7), json);
  assert.equal(asked, 3);
});

Deno.test("the SHA-256 of a version whose content a listing inlined is kept with its entry, for that etag only, until the entry is made anew", () => {
  const words = new Uint32Array(STAT.size / 4);
  const memo = new ListingMemo(10, 8);
  const json = `{"path":"f.txt","size":4,"etag":"${"0".repeat(32)}"}`;
  const [etag, other, sha] = ["1".repeat(32), "2".repeat(32), "ab".repeat(32)];
  memo.noteInlined("f.txt", etag, sha);
  assert.equal(memo.inlinedSha256("f.txt", etag), undefined, "no entry kept: nothing noted");
  memo.keepEntry("", "f.txt", words, true, json, json.length);
  memo.noteInlined("f.txt", etag, sha);
  assert.equal(memo.inlinedSha256("f.txt", etag), sha);
  assert.equal(memo.inlinedSha256("f.txt", other), undefined, "another version of the file");
  assert.equal(memo.inlinedSha256("g.txt", etag), undefined, "another path");
  assert.equal(
    memo.entryOf("", "f.txt", words, true, () => undefined),
    json,
    "the listing's entry is as it was",
  );
  const moved = words.slice();
  moved[STAT.st_size / 4] = 5;
  memo.keepEntry("", "f.txt", moved, true, json, json.length);
  assert.equal(memo.inlinedSha256("f.txt", etag), undefined, "the entry made anew");
});

Deno.test("a listing asked again after files changed in place, were renamed over, added and removed shows the tree as it is now", async () => {
  await listedAsItIsNow([]);
});

Deno.test("--listing-memo 0 keeps nothing and lists the same; a count that is not a whole number is refused", async () => {
  const none = ListingMemo.forEntries(0);
  const names = { texts: ["a"], types: new Uint8Array([8]) };
  const stat = folderStat(".");
  none.keepNames("d", stat, names, stat.ctimeNs + 2n * SECOND);
  assert.equal(none.namesOf("d", stat), undefined);
  await listedAsItIsNow(["--listing-memo", "0"]);
  const refused = await runServerToExit(["--listen", "127.0.0.1:0", "--root", ".", "--listing-memo", "1.5"]);
  assert.equal(refused.code, 2);
  assert.equal(
    refused.stderr,
    "ferry server: --listing-memo: '1.5' is not a positive integer (see --help)\n",
  );
});

/** Lists a tree twice, changes it, lists it again: the last listing shows it as it is now. */
async function listedAsItIsNow(serverArgs: string[]): Promise<void> {
  await withServer(async ({ src, server }) => {
    await Deno.mkdir(`${src}/d`);
    for (const name of ["a", "b", "c", "gone"]) await Deno.writeTextFile(`${src}/d/${name}.txt`, `${name}\n`);
    const conn = await RawConnection.open(server.ports[0]); // one connection: the same worker, its memo
    try {
      const listing = async () => {
        await conn.sendRequest({ op: "list", path: "", recursive: true, stream: true });
        const frames = (await conn.readResponse()).json;
        const entries = frames.flatMap((f) => (f.entries ?? []) as Record<string, unknown>[]);
        return new Map(entries.map((e) => [e.path as string, e]));
      };
      const first = await listing();
      assert.deepEqual(await listing(), first, "asked again with nothing changed");

      // a.txt: other bytes of the same size, written in place, with another mtime.
      await Deno.writeTextFile(`${src}/d/a.txt`, "A\n");
      await Deno.utime(`${src}/d/a.txt`, new Date(2001, 0, 1), new Date(2001, 0, 1));
      // b.txt: replaced by a rename with the same size and mtime, to the nanosecond: only its inode tells.
      const folder = openRead(`${src}/d`, { directory: true });
      try {
        const { mtimeNs } = lstatAt(folder, "b.txt");
        await Deno.writeTextFile(`${src}/d/b.new`, "B\n");
        const fd = openAt(folder, "b.new", OPEN.O_WRONLY);
        futimens(fd, mtimeNs);
        close(fd);
      } finally {
        close(folder);
      }
      await Deno.rename(`${src}/d/b.new`, `${src}/d/b.txt`);
      await Deno.remove(`${src}/d/gone.txt`);
      await Deno.writeTextFile(`${src}/d/new.txt`, "new\n");

      const now = await listing();
      assert.deepEqual([...now.keys()].sort(), ["d/a.txt", "d/b.txt", "d/c.txt", "d/new.txt"]);
      assert.equal(now.get("d/a.txt")!.mtimeNs, String(BigInt(new Date(2001, 0, 1).getTime()) * 1_000_000n));
      assert.notEqual(now.get("d/a.txt")!.etag, first.get("d/a.txt")!.etag);
      assert.equal(now.get("d/b.txt")!.mtimeNs, first.get("d/b.txt")!.mtimeNs);
      assert.notEqual(now.get("d/b.txt")!.etag, first.get("d/b.txt")!.etag, "a new inode is a new version");
      assert.deepEqual(now.get("d/c.txt"), first.get("d/c.txt"));
    } finally {
      conn.close();
    }
  }, serverArgs);
}
