/**
 * A worker's cached small replies are used only while the path still leads to the very file they were
 * built from: real files for the cache itself, and a real server for what a client sees when a cached
 * file is rewritten, removed, or its path is turned into a way out of the served directory.
 */

import assert from "node:assert/strict";
import { close, fstat, openRead, statAt } from "../ffi/libc.ts";
import {
  EVICTION_WINDOW,
  HEAP_REPLY_MAX,
  type NewReply,
  ReplyCache,
  SPARSE_ADMISSION,
} from "../worker/reply_cache.ts";
import type { Body } from "../worker/bodies.ts";
import { ErrorCode } from "../framing.ts";
import {
  drain,
  getOnce,
  patterned,
  receiveAll,
  runServerToExit,
  sha256,
  socketPair,
  startServer,
  tempDir,
  type TestServer,
} from "./helpers.ts";

// libc's symbols are bound on first use and stay bound for the process. Bind the ones used here before any
// test starts: the test sanitizer counts a library opened during a test as a leak.
const warmUp = openRead(".", { directory: true });
fstat(warmUp);
statAt(warmUp, ".");
assert.throws(() => statAt(warmUp, "no such file"), /ENOENT/); // binds the errno name lookups
close(warmUp);
{ // ... and those of the memory file: a large reply stored, sent, and evicted
  const dir = Deno.makeTempDirSync();
  Deno.writeTextFileSync(`${dir}/f`, "f");
  const rootFd = openRead(dir, { directory: true });
  const cache = new ReplyCache(1 << 20);
  cache.store("f", entryFor(rootFd, "f", HEAP_REPLY_MAX + 1));
  const body = cache.piece(cache.lookup(rootFd, "f")!) as Body;
  receiveAll(body);
  body.release?.();
  cache.store("f", entryFor(rootFd, "f", 1));
  cache.close();
  close(rootFd);
  Deno.removeSync(dir, { recursive: true });
}

/** A directory's fd, closed when disposed. */
function openRoot(path: string): { fd: number } & Disposable {
  const fd = openRead(path, { directory: true });
  return { fd, [Symbol.dispose]: () => close(fd) };
}

/** A reply for `path` under `root` as the worker would make it (the reply bytes are stand-ins). */
function entryFor(rootFd: number, path: string, replyBytes: number | Uint8Array): NewReply {
  const fd = openRead(path, { beneath: rootFd });
  try {
    return {
      stat: fstat(fd),
      etag: "e",
      sha256: "s",
      whole: typeof replyBytes === "number" ? new Uint8Array(replyBytes) : replyBytes,
      unchanged: new Uint8Array(10),
    };
  } finally {
    close(fd);
  }
}

Deno.test("a cached reply is found while its file is untouched, and dropped once the file changes", async () => {
  await using dir = await tempDir();
  await Deno.writeTextFile(`${dir.path}/a.txt`, "version 1");
  using root = openRoot(dir.path);
  const rootFd = root.fd;
  using cache = new ReplyCache(1024);
  const entry = entryFor(rootFd, "a.txt", 100);
  cache.store("a.txt", entry);
  assert.equal(cache.lookup(rootFd, "a.txt")?.stat.ino, entry.stat.ino);
  assert.equal(cache.lookup(rootFd, "b.txt"), null, "never stored");

  await Deno.chmod(`${dir.path}/a.txt`, 0o600); // ctime moves
  assert.equal(cache.lookup(rootFd, "a.txt"), null, "after chmod");
  assert.equal(cache.bytes, 0);

  cache.store("a.txt", entryFor(rootFd, "a.txt", 100));
  await Deno.writeTextFile(`${dir.path}/a.new`, "version 2");
  await Deno.rename(`${dir.path}/a.new`, `${dir.path}/a.txt`);
  assert.equal(cache.lookup(rootFd, "a.txt"), null, "after a rename over it");

  cache.store("a.txt", entryFor(rootFd, "a.txt", 100));
  await Deno.remove(`${dir.path}/a.txt`);
  assert.equal(cache.lookup(rootFd, "a.txt"), null, "after removal");
  assert.equal(cache.bytes, 0);
});

Deno.test("a reply is admitted from the second request for the same version of its path, never the first", () => {
  using cache = new ReplyCache(1024);
  assert.equal(cache.admit("a.txt", "v1"), false, "first request");
  assert.equal(cache.admit("b.txt", "v1"), false, "another path's first request");
  assert.equal(cache.admit("a.txt", "v1"), true, "second request, same version");
  assert.equal(cache.admit("b.txt", "v2"), false, "second request, but a new version: counts as a first");
  assert.equal(cache.admit("b.txt", "v2"), true);
  using none = new ReplyCache(0);
  none.admit("a.txt", "v1");
  assert.equal(none.admit("a.txt", "v1"), false, "--reply-cache 0 keeps nothing");
});

Deno.test("while the replies it evicts were never used, the cache keeps one in SPARSE_ADMISSION; once they are, all again", async () => {
  await using dir = await tempDir();
  const files = 17; // prime to SPARSE_ADMISSION: the replies kept while sparse are of different files
  for (let i = 0; i < files; i++) await Deno.writeTextFile(`${dir.path}/${i}`, `${i}`);
  using root = openRoot(dir.path);
  using cache = new ReplyCache(250); // room for two entries of 110 bytes
  let asked = 0;
  /** A file asked for twice, as by two hosts; its reply kept if admitted, and used if `use`. True if kept. */
  const keep = (use: boolean): boolean => {
    const path = String(asked % files), version = `v${asked++}`; // a version of its own: a first request
    cache.admit(path, version);
    if (!cache.admit(path, version)) return false;
    cache.store(path, entryFor(root.fd, path, 100));
    if (use) assert.notEqual(cache.lookup(root.fd, path), null);
    return true;
  };
  const kept = (times: number, use: boolean) =>
    Array.from({ length: times }, () => keep(use)).filter(Boolean).length;

  // Hosts too far apart: every reply kept is evicted before it is asked for again.
  assert.equal(kept(EVICTION_WINDOW + 2, false), EVICTION_WINDOW + 2, "all kept until a window of evictions");
  assert.equal(kept(3 * SPARSE_ADMISSION, false), 3, "then one in SPARSE_ADMISSION");

  // Replies that answer requests before they are evicted (here, at once) make keeping them pay again.
  assert.equal(kept((EVICTION_WINDOW - 3) * SPARSE_ADMISSION, true), EVICTION_WINDOW - 3);
  assert.equal(kept(10, true), 10, "all kept again");
});

Deno.test("a cache that holds what it is asked for keeps admitting, however many replies it took in", async () => {
  await using dir = await tempDir();
  for (let i = 0; i < 4; i++) await Deno.writeTextFile(`${dir.path}/${i}`, `${i}`);
  using root = openRoot(dir.path);
  using cache = new ReplyCache(1024);
  for (let round = 0; round < EVICTION_WINDOW * 2; round++) {
    const path = String(round % 4);
    cache.admit(path, `v${round}`); // a new version each time: it replaces the one kept, evicting nothing
    assert.ok(cache.admit(path, `v${round}`), `round ${round}`);
    cache.store(path, entryFor(root.fd, path, 100));
  }
});

Deno.test("the cache holds at most its budget, dropping the oldest replies first", async () => {
  await using dir = await tempDir();
  for (const name of ["1", "2", "3"]) await Deno.writeTextFile(`${dir.path}/${name}`, name);
  using root = openRoot(dir.path);
  const rootFd = root.fd;
  using cache = new ReplyCache(250); // room for two entries of 110 bytes
  for (const name of ["1", "2", "3"]) cache.store(name, entryFor(rootFd, name, 100));
  assert.equal(cache.bytes, 220);
  assert.equal(cache.lookup(rootFd, "1"), null, "the oldest went");
  assert.notEqual(cache.lookup(rootFd, "2"), null);
  assert.notEqual(cache.lookup(rootFd, "3"), null);
  cache.store("big", entryFor(rootFd, "1", 300));
  assert.equal(cache.lookup(rootFd, "big"), null, "a reply larger than the budget is not kept");
  assert.equal(cache.bytes, 220);
});

Deno.test("a reply over HEAP_REPLY_MAX is kept in the memory file and sent from it byte for byte", async () => {
  await using dir = await tempDir();
  await Deno.writeTextFile(`${dir.path}/big`, "big");
  using root = openRoot(dir.path);
  const rootFd = root.fd;
  using cache = new ReplyCache(1 << 20);
  const reply = patterned(64 * 1024 + 300);
  cache.store("big", entryFor(rootFd, "big", reply));
  const piece = cache.piece(cache.lookup(rootFd, "big")!);
  assert.ok(!(piece instanceof Uint8Array), "a body, not bytes in the heap");
  assert.deepEqual(receiveAll(piece, 10_000), reply);
  assert.equal(cache.bytes, 17 * 4096 + 10, "whole pages, and the unchanged answer");
  assert.ok(fstat(cache.memoryFd).blocks * 512 >= 17 * 4096, "the pages are there");
  piece.release?.();
  const again = cache.piece(cache.lookup(rootFd, "big")!);
  assert.deepEqual(receiveAll(again as Body), reply, "again, from the same pages");
});

Deno.test("an evicted reply still being sent keeps its pages until its body is released, then they are freed", async () => {
  await using dir = await tempDir();
  for (const name of ["a", "b"]) await Deno.writeTextFile(`${dir.path}/${name}`, name);
  using root = openRoot(dir.path);
  const rootFd = root.fd;
  using cache = new ReplyCache(100 * 1024); // room for one reply of 64 KiB
  using pair = socketPair();
  const { ours, theirs } = pair;
  const replyA = patterned(64 * 1024);
  cache.store("a", entryFor(rootFd, "a", replyA));
  const body = cache.piece(cache.lookup(rootFd, "a")!) as Body;
  const received: number[] = [];
  assert.equal(body.pump(ours, 1000).status, "yield");
  drain(theirs, received);

  cache.store("b", entryFor(rootFd, "b", new Uint8Array(64 * 1024).fill(0xbb))); // evicts "a"
  assert.equal(cache.lookup(rootFd, "a"), null, "a is gone from the cache");
  const blocksWhileSending = fstat(cache.memoryFd).blocks;
  assert.ok(blocksWhileSending * 512 >= 2 * 16 * 4096, "a's pages are kept while its body sends them");

  while (body.pump(ours, 1000).status !== "done") drain(theirs, received);
  drain(theirs, received);
  assert.deepEqual(new Uint8Array(received), replyA, "a arrives intact, although b was written after it");
  body.release?.();
  body.release?.(); // a second release changes nothing
  assert.ok(fstat(cache.memoryFd).blocks < blocksWhileSending, "released: a's pages are freed");
  assert.notEqual(cache.lookup(rootFd, "b"), null, "b stays");
});

/** One worker, so that every request meets the same cache. */
async function serve(root: string, ...more: string[]): Promise<TestServer> {
  return await startServer(["--listen", "127.0.0.1:0", "--root", root, "--workers", "1", ...more]);
}

const get = getOnce;

const encoder = new TextEncoder();

Deno.test("served again and again, a small file is answered with its current bytes after each rewrite, from the heap or the memory file", async () => {
  await using dir = await tempDir();
  const server = await serve(dir.path);
  try {
    for (let version = 1; version <= 3; version++) {
      // Version 1 is kept in the heap, versions 2 and 3 (40 and 60 kB) in the memory file.
      const bytes = encoder.encode(`version ${version} `.repeat(version === 1 ? 100 : version * 2000));
      await Deno.writeFile(`${dir.path}/v.new`, bytes);
      await Deno.rename(`${dir.path}/v.new`, `${dir.path}/v.txt`);
      for (let i = 0; i < 3; i++) { // the first is hashed, the next ones come whole, then from the cache
        const r = await get(server.ports[0], { path: "v.txt" });
        assert.deepEqual(r.data, bytes, `version ${version}, fetch ${i}`);
      }
      const sha = sha256(bytes);
      const unchanged = await get(server.ports[0], { path: "v.txt", ifNoneMatch: sha });
      assert.equal(unchanged.types, "H", `version ${version}: unchanged, no data`);
      assert.equal(unchanged.json[0].unchanged, true);
      assert.equal(unchanged.json[0].sha256, sha);
      const stale = await get(server.ports[0], { path: "v.txt", ifMatch: "0".repeat(32) });
      assert.equal(stale.json[0].code, ErrorCode.Changed);
    }
    await Deno.remove(`${dir.path}/v.txt`);
    const gone = await get(server.ports[0], { path: "v.txt" });
    assert.equal(gone.json[0].code, ErrorCode.NotFound);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("a cached path turned into a symlink leading outside the root is refused, not served from memory", async () => {
  await using dir = await tempDir();
  const root = `${dir.path}/served`;
  await Deno.mkdir(root);
  await Deno.writeTextFile(`${dir.path}/secret.txt`, "outside the root");
  await Deno.writeTextFile(`${root}/inside.txt`, "inside the root");
  await Deno.symlink("inside.txt", `${root}/link`);
  const server = await serve(root);
  try {
    for (let i = 0; i < 3; i++) {
      const r = await get(server.ports[0], { path: "link" });
      assert.equal(new TextDecoder().decode(r.data), "inside the root");
    }
    await Deno.symlink("../secret.txt", `${root}/link.new`);
    await Deno.rename(`${root}/link.new`, `${root}/link`);
    const r = await get(server.ports[0], { path: "link" });
    assert.equal(r.json[0].code, ErrorCode.Forbidden);
    assert.equal(r.data.byteLength, 0);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("--reply-cache 0 serves every request from the file itself; a size that is not a number is refused", async () => {
  await using dir = await tempDir();
  const server = await serve(dir.path, "--reply-cache", "0");
  try {
    for (const text of ["one", "two, longer", "three"]) {
      await Deno.writeTextFile(`${dir.path}/f.new`, text);
      await Deno.rename(`${dir.path}/f.new`, `${dir.path}/f.txt`);
      for (let i = 0; i < 3; i++) {
        assert.equal(new TextDecoder().decode((await get(server.ports[0], { path: "f.txt" })).data), text);
      }
    }
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
  const refused = await runServerToExit(["--listen", "127.0.0.1:0", "--root", ".", "--reply-cache", "lots"]);
  assert.equal(refused.code, 2);
  assert.equal(refused.stderr, "ferry server: --reply-cache: 'lots' is not a positive number (see --help)\n");
});
