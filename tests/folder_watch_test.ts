/**
 * A worker's watch of the tree (`worker/folder_watch.ts`): a folder a listing with `known` found as the
 * client holds it is sent as its record by the next such listing without a look at its files, for as long
 * as the kernel reports no change in it; any change to a file or name in it, a file with another link, or
 * events the kernel could not queue send the listing back to the folder's files.
 */

import assert from "node:assert/strict";
import { loadHashing } from "../hashing.ts";
import { close, fileSystemType, fstat, openRead } from "../ffi/libc.ts";
import { FolderWatch, watchesFileSystem } from "../worker/folder_watch.ts";
import { withServer } from "./client_fixture.ts";
import { folderDigestsOf, RawConnection, samples, scrape, streamedListing, tempDir } from "./helpers.ts";

// libc's symbols are bound on first use and stay bound: bind the ones used here before any test starts,
// since the test sanitizer counts a library opened during a test as a leak.
{
  const fd = openRead(".", { directory: true });
  fileSystemType(fd);
  const watch = new FolderWatch();
  const mark = watch.mark(fd, fstat(fd));
  if (mark !== null) watch.unchanged(mark);
  watch.close();
  close(fd);
}

/** The folder records a worker sent so far: vouched for by its watch, and by a look at the files. */
async function recordsSent(port: number): Promise<{ watch: number; look: number }> {
  const s = samples((await scrape(port)).body);
  return {
    watch: s.get('ferry_listing_records_total{by="watch"}') ?? 0,
    look: s.get('ferry_listing_records_total{by="look"}') ?? 0,
  };
}

/** The value of the metrics sample `sample` (name and labels as scraped) of the server on `port`; 0 if absent. */
async function counter(port: number, sample: string): Promise<number> {
  return samples((await scrape(port)).body).get(sample) ?? 0;
}

/** True when `dir` is on a file system the worker watches; else says why the test does not run. */
function watchable(dir: string, test: string): boolean {
  const fd = openRead(dir, { directory: true });
  try {
    const type = fileSystemType(fd);
    if (watchesFileSystem(type)) return true;
    console.log(
      `skipped "${test}": ${dir} is on a file system (f_type 0x${type.toString(16)}) no watch vouches for`,
    );
    return false;
  } finally {
    close(fd);
  }
}

/** What a listing with `known` sent: each folder's record by its folder, each file's entry by its path. */
function byName(values: Record<string, unknown>[]): Map<string, Record<string, unknown>> {
  return new Map(values.map((v) => [String(v.folder ?? v.path), v]));
}

Deno.test("a folder a listing went through comes as its record on the watch alone; a file written, truncated, touched, chmodded, created, removed or renamed over in it sends the next listing back to its files", async () => {
  await loadHashing();
  await withServer(async ({ src, server }) => {
    if (!watchable(src, "folder watch: changes")) return;
    const folders = ["d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7"];
    for (const folder of folders) {
      await Deno.mkdir(`${src}/${folder}`);
      for (const name of ["a.txt", "b.txt"]) {
        await Deno.writeTextFile(`${src}/${folder}/${name}`, `${folder}/${name}\n`);
      }
    }
    const conn = await RawConnection.open(server.ports[0]);
    try {
      const known = [...folderDigestsOf((await streamedListing(conn, {})).values).values()];
      const port = server.ports[0];

      // The listing without `known` kept each folder's digest with its mark: the listings with `known` after
      // it need only the watch.
      const first = await streamedListing(conn, { known });
      assert.deepEqual(first.values, folders.map((folder) => ({ folder, files: 2 })));
      assert.deepEqual(await recordsSent(port), { watch: 8, look: 0 });
      const second = await streamedListing(conn, { known });
      assert.deepEqual(second.values, first.values);
      assert.deepEqual(await recordsSent(port), { watch: 16, look: 0 });

      // One change in each folder but d7. Those of d0 to d3 leave the folder's own times as they were.
      using written = await Deno.open(`${src}/d0/a.txt`, { write: true });
      await written.write(new TextEncoder().encode("D0")); // same size: its etag may not even move
      await Deno.truncate(`${src}/d1/a.txt`, 1);
      await Deno.utime(`${src}/d2/a.txt`, 1_000_000, 1_000_000);
      await Deno.chmod(`${src}/d3/a.txt`, 0o600); // its etag stays: its record comes, after a look
      await Deno.writeTextFile(`${src}/d4/c.txt`, "new\n");
      await Deno.remove(`${src}/d5/b.txt`);
      await Deno.writeTextFile(`${src}/d6/tmp`, "renamed over\n");
      await Deno.rename(`${src}/d6/tmp`, `${src}/d6/a.txt`);

      const third = byName((await streamedListing(conn, { known })).values);
      const sent = await recordsSent(port);
      assert.equal(sent.watch, 17, "only d7 is vouched for by the watch");
      assert.deepEqual(third.get("d7"), { folder: "d7", files: 2 });
      assert.deepEqual(third.get("d3"), { folder: "d3", files: 2 });
      assert.equal(third.get("d1/a.txt")?.size, 1);
      assert.ok(third.has("d2/a.txt") && third.has("d2/b.txt"), "d2 is listed file by file");
      assert.ok(third.has("d4/c.txt"));
      assert.ok(third.has("d5/a.txt") && !third.has("d5/b.txt") && !third.has("d5"));
      assert.equal(third.get("d6/a.txt")?.size, "renamed over\n".length);
      // d0 came as entries, or as its record after a look if the write kept its mtime's tick.
      const d0Held = third.has("d0");
      assert.equal(sent.look, 1 + (d0Held ? 1 : 0));

      // Those looks kept the digests they made: the folders the client still holds need only the watch again.
      await streamedListing(conn, { known });
      assert.deepEqual(await recordsSent(port), {
        watch: sent.watch + 2 + (d0Held ? 1 : 0),
        look: sent.look,
      });
    } finally {
      conn.close();
    }
  });
});

Deno.test("a folder holding a file with another link is looked at file by file each time: a write through the other name shows at once", async () => {
  await loadHashing();
  await withServer(async ({ src, server }) => {
    if (!watchable(src, "folder watch: links")) return;
    await using elsewhere = await tempDir();
    await Deno.mkdir(`${src}/d`);
    await Deno.writeTextFile(`${src}/d/linked.txt`, "one\n");
    await Deno.writeTextFile(`${src}/d/plain.txt`, "plain\n");
    // Another name for d/linked.txt, in a folder no watch of the server's sees (same file system).
    await Deno.link(`${src}/d/linked.txt`, `${elsewhere.path}/other-name.txt`);
    const conn = await RawConnection.open(server.ports[0]);
    try {
      const known = [...folderDigestsOf((await streamedListing(conn, {})).values).values()];
      const port = server.ports[0];
      for (let i = 1; i <= 2; i++) {
        assert.deepEqual((await streamedListing(conn, { known })).values, [{ folder: "d", files: 2 }]);
        assert.deepEqual(await recordsSent(port), { watch: 0, look: i });
      }
      await Deno.writeTextFile(`${elsewhere.path}/other-name.txt`, "two, and longer\n", { append: true });
      const after = byName((await streamedListing(conn, { known })).values);
      assert.equal(after.get("d/linked.txt")?.size, "one\ntwo, and longer\n".length);
    } finally {
      conn.close();
    }
  });
});

Deno.test("events the kernel could not queue void every watch: a change among them still shows", async () => {
  await loadHashing();
  await withServer(async ({ src, server }) => {
    if (!watchable(src, "folder watch: overflow")) return;
    const queued = Number(await Deno.readTextFile("/proc/sys/fs/inotify/max_queued_events"));
    for (const folder of ["busy", "quiet"]) await Deno.mkdir(`${src}/${folder}`);
    for (const name of ["busy/1", "busy/2", "quiet/x.txt"]) await Deno.writeTextFile(`${src}/${name}`, "x\n");
    const conn = await RawConnection.open(server.ports[0]);
    try {
      const known = [...folderDigestsOf((await streamedListing(conn, {})).values).values()];
      const port = server.ports[0];
      assert.deepEqual((await streamedListing(conn, { known })).values, [
        { folder: "busy", files: 2 },
        { folder: "quiet", files: 1 },
      ]);
      assert.deepEqual(await recordsSent(port), { watch: 2, look: 0 });
      // More events than the worker's queue holds (two names in turn: the kernel merges only repeats of the
      // last event), then the change in quiet/, whose event is lost.
      using one = await Deno.open(`${src}/busy/1`, { write: true });
      using two = await Deno.open(`${src}/busy/2`, { write: true });
      const byte = new Uint8Array([0x79]);
      for (let i = 0; i <= queued / 2; i++) {
        one.writeSync(byte);
        two.writeSync(byte);
      }
      await Deno.writeTextFile(`${src}/quiet/x.txt`, "changed, and longer\n");
      const after = byName((await streamedListing(conn, { known })).values);
      assert.equal(after.get("quiet/x.txt")?.size, "changed, and longer\n".length);
      assert.equal((await recordsSent(port)).watch, 2, "no folder was vouched for by the watch");
    } finally {
      conn.close();
    }
  });
});

Deno.test("a mark vouches for its folder until something in it changes, whatever another folder does; a restart or the folder's removal voids its marks", async () => {
  await using dir = await tempDir();
  if (!watchable(dir.path, "folder watch: marks")) return;
  for (const folder of ["a", "b"]) {
    await Deno.mkdir(`${dir.path}/${folder}`);
    await Deno.writeTextFile(`${dir.path}/${folder}/x`, "x\n");
  }
  const watch = new FolderWatch();
  const a = openRead(`${dir.path}/a`, { directory: true });
  let b = openRead(`${dir.path}/b`, { directory: true });
  try {
    const markA = watch.mark(a, fstat(a))!, markB = watch.mark(b, fstat(b))!;
    assert.ok(watch.unchanged(markA) && watch.unchanged(markB));
    assert.ok(watch.unchanged(watch.mark(a, fstat(a))!));
    assert.equal(watch.watched, 2, "a folder marked again keeps its one watch");

    await Deno.writeTextFile(`${dir.path}/b/x`, "y\n");
    assert.ok(watch.unchanged(markA));
    assert.ok(!watch.unchanged(markB));
    const markB2 = watch.mark(b, fstat(b))!;
    assert.ok(watch.unchanged(markB2), "a mark taken after the change vouches again");

    watch.restart();
    assert.equal(watch.watched, 0);
    assert.ok(!watch.unchanged(markA) && !watch.unchanged(markB2));
    const markA2 = watch.mark(a, fstat(a))!, markB3 = watch.mark(b, fstat(b))!;
    assert.ok(watch.unchanged(markA2) && watch.unchanged(markB3));

    close(b); // as a walk does once it leaves a folder
    b = -1;
    await Deno.remove(`${dir.path}/b`, { recursive: true });
    assert.ok(!watch.unchanged(markB3));
    assert.ok(watch.unchanged(markA2));
  } finally {
    close(a);
    if (b >= 0) close(b);
    watch.close();
  }
});

Deno.test("a queue overflow restarts the watch: no mark taken before vouches for its folder, and no watch is left counted", async () => {
  await using dir = await tempDir();
  if (!watchable(dir.path, "folder watch: overflow restart")) return;
  const queued = Number(await Deno.readTextFile("/proc/sys/fs/inotify/max_queued_events"));
  for (const name of ["1", "2"]) await Deno.writeTextFile(`${dir.path}/${name}`, "x\n");
  const watch = new FolderWatch();
  const folder = openRead(dir.path, { directory: true });
  try {
    const mark = watch.mark(folder, fstat(folder))!;
    assert.equal(watch.watched, 1);
    // Two names in turn: the kernel merges only repeats of the last event.
    using one = await Deno.open(`${dir.path}/1`, { write: true });
    using two = await Deno.open(`${dir.path}/2`, { write: true });
    const byte = new Uint8Array([0x79]);
    for (let i = 0; i <= queued / 2; i++) {
      one.writeSync(byte);
      two.writeSync(byte);
    }
    assert.ok(!watch.unchanged(mark));
    assert.equal(watch.watched, 0, "the watches of before the overflow were ended, not forgotten");
    assert.ok(watch.unchanged(watch.mark(folder, fstat(folder))!), "a mark taken since vouches again");
    assert.equal(watch.watched, 1);
  } finally {
    close(folder);
    watch.close();
  }
});

Deno.test("a folder the watch vouches for comes as its record without its names read, even where the memo keeps no names; its subfolders are still gone into", async () => {
  await loadHashing();
  // One entry at most in the memo, so two names: no folder here has its names kept, only its digest.
  await withServer(async ({ src, server }) => {
    if (!watchable(src, "folder watch: names unread")) return;
    for (const dir of ["a", "a/sub"]) await Deno.mkdir(`${src}/${dir}`);
    for (const path of ["top.txt", "a/1.txt", "a/2.txt", "a/3.txt", "a/sub/x.txt", "a/sub/y.txt"]) {
      await Deno.writeTextFile(`${src}/${path}`, `${path}\n`);
    }
    const port = server.ports[0];
    const foldersRead = () => counter(port, "ferry_listing_folders_read_total");
    const conn = await RawConnection.open(port);
    try {
      const plain = await streamedListing(conn, {});
      assert.equal(await foldersRead(), 3, "the first listing reads the three folders");
      const known = [...folderDigestsOf(plain.values).values()];

      const held = await streamedListing(conn, { known });
      assert.deepEqual(held.values, [
        { folder: "", files: 1 },
        { folder: "a", files: 3 },
        { folder: "a/sub", files: 2 },
      ]);
      assert.equal(await foldersRead(), 3, "no folder is read again: each comes as its record");
      assert.deepEqual(await recordsSent(port), { watch: 3, look: 0 });

      // A subfolder made since: a's names changed, so a is read and looked at, and the new folder listed.
      await Deno.mkdir(`${src}/a/new`);
      await Deno.writeTextFile(`${src}/a/new/z.txt`, "z\n");
      const after = byName((await streamedListing(conn, { known })).values);
      assert.deepEqual([...after.keys()], ["", "a", "a/new/z.txt", "a/sub"]);
      assert.equal(await foldersRead(), 5, "a and a/new are read");
      assert.deepEqual(await recordsSent(port), { watch: 5, look: 1 });
    } finally {
      conn.close();
    }
  }, ["--listing-memo", "1"]);
});

Deno.test("a look at a folder for its digest makes no entry of its files where the listing memo is full: a folder it finds as the client holds it costs none", async () => {
  await loadHashing();
  // One entry at most in the memo: full after the first file.
  await withServer(async ({ src, server }) => {
    if (!watchable(src, "folder watch: look without entries")) return;
    await Deno.mkdir(`${src}/d`);
    for (const name of ["a.txt", "b.txt", "c.txt"]) await Deno.writeTextFile(`${src}/d/${name}`, `${name}\n`);
    const port = server.ports[0];
    const built = () => counter(port, 'ferry_listing_entries_total{entry="built"}');
    const conn = await RawConnection.open(port);
    try {
      const plain = await streamedListing(conn, {});
      const known = [...folderDigestsOf(plain.values).values()];
      const before = await built();

      // A chmod voids the folder's mark but leaves every etag as it was: the next listing looks at the files.
      await Deno.chmod(`${src}/d/a.txt`, 0o600);
      const held = await streamedListing(conn, { known });
      assert.deepEqual(held.values, [{ folder: "d", files: 3 }]);
      assert.deepEqual(await recordsSent(port), { watch: 0, look: 1 });
      assert.equal(await built(), before, "the look made no entry");

      // A file rewritten: the look's digest differs, and the folder is listed file by file, entries and all.
      await Deno.writeTextFile(`${src}/d/b.txt`, "rewritten, longer\n");
      const listed = byName((await streamedListing(conn, { known })).values);
      assert.deepEqual([...listed.keys()], ["d/a.txt", "d/b.txt", "d/c.txt"]);
      assert.equal(listed.get("d/b.txt")?.size, "rewritten, longer\n".length);
      assert.equal(listed.get("d/a.txt")?.etag, plain.values.find((v) => v.path === "d/a.txt")!.etag);
      assert.equal(await built(), before + 3);
    } finally {
      conn.close();
    }
  }, ["--listing-memo", "1"]);
});
