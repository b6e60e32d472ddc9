/**
 * A streamed listing asked for `inline` brings the content of the small files with their entries: each
 * after the Entries frame that lists it, in batches a client can read whole, through the same checks as a
 * `get`; asked for `inlineSince`, of those changed since. `mirror` asks for all into an empty folder, and
 * afterwards for those changed since its last listing, and publishes those files as it publishes fetched
 * ones; bytes unlike the hash that came with them are never published.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  decodeJson,
  encodeJsonFrame,
  END_FRAME,
  FRAME_HEADER_SIZE,
  FrameType,
  getFrameLength,
  INLINE_BATCH_BYTES,
  MAX_INLINE_FILE,
  putFrameLength,
} from "../framing.ts";
import { lstatAt } from "../ffi/libc.ts";
import { logged, withServer } from "./client_fixture.ts";
import { assertListRefused, RawConnection, runClient, tempDir, treeOf } from "./helpers.ts";

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

/** A streamed listing's frames, as the client must read them: each batch's entries and inlined content. */
async function inlineListing(
  conn: RawConnection,
  request: Record<string, unknown>,
): Promise<{
  header: Record<string, unknown>;
  batches: { entries: Record<string, unknown>[]; content: Uint8Array | null }[];
  types: string;
}> {
  await conn.sendRequest({ op: "list", path: "", recursive: true, stream: true, ...request });
  const batches: { entries: Record<string, unknown>[]; content: Uint8Array | null }[] = [];
  let types = "", header: Record<string, unknown> = {};
  for (;;) {
    const frame = await conn.readFrame();
    if (frame === null) throw new Error(`the connection ended after frames '${types}'`);
    if (frame.length === 0) return { header, batches, types };
    const type = String.fromCharCode(frame.payload[0]);
    types += type;
    const body = frame.payload.subarray(1);
    if (type === "H") header = decodeJson(body) as Record<string, unknown>;
    if (type === "L") {
      batches.push({
        entries: (decodeJson(body) as { entries: Record<string, unknown>[] }).entries,
        content: null,
      });
    } else if (type === "D") {
      assert.equal(batches.at(-1)?.content, null, "one Data frame at most after each Entries frame");
      batches.at(-1)!.content = body.slice();
    }
  }
}

Deno.test("a streamed listing with inline brings each file of at most that size after its Entries frame, described as the bytes sent; larger files as usual", async () => {
  await withServer(async ({ src, server }) => {
    await Deno.mkdir(`${src}/small`);
    const files: Record<string, Uint8Array> = {
      "small/empty": new Uint8Array(0),
      "small/one.txt": new TextEncoder().encode("one\n"),
      "small/edge.bin": crypto.getRandomValues(new Uint8Array(1000)),
      "big.bin": crypto.getRandomValues(new Uint8Array(1001)),
    };
    for (const [path, bytes] of Object.entries(files)) await Deno.writeFile(`${src}/${path}`, bytes);
    await Deno.chmod(`${src}/small/edge.bin`, 0o640);
    // A symlink to a file inside the root is served, and inlined, as that file.
    await Deno.symlink("small/one.txt", `${src}/link.txt`);
    const conn = await RawConnection.open(server.ports[0]);
    try {
      const { batches: plain } = await inlineListing(conn, {});
      const full = new Map(plain.flatMap((b) => b.entries).map((e) => [e.path, e]));
      const { batches, types } = await inlineListing(conn, { brief: true, inline: 1000 });
      assert.equal(types, "HLDT", "the Data frame right after the Entries frame");
      const [{ entries, content }] = batches;
      assert.deepEqual(entries.map((e) => e.path), [
        "big.bin",
        "link.txt",
        "small/edge.bin",
        "small/empty",
        "small/one.txt",
      ]);
      // An inlined entry has what a `get` header would say, though the listing is brief; the others are brief.
      const { mtimeNs: _m, mode: _mode, ...briefBig } = full.get("big.bin")!;
      assert.deepEqual(entries[0], briefBig);
      let at = 0;
      for (const entry of entries.slice(1)) {
        const path = String(entry.path);
        const bytes = files[path === "link.txt" ? "small/one.txt" : path];
        assert.deepEqual({ ...entry }, { ...full.get(path), sha256: sha256(bytes), inline: true }, path);
        assert.deepEqual(content!.subarray(at, at += bytes.byteLength), bytes, path);
      }
      assert.equal(at, content!.byteLength, "the Data frame holds the inlined files and nothing else");
      assert.equal(full.get("small/edge.bin")!.mode, 0o640);
      await logged(server, /LIST "" recursive stream inline=1000 .*result=ok listed=5 inlined=4$/);
    } finally {
      conn.close();
    }
  });
});

Deno.test("inlined content comes in batches of at most INLINE_BATCH_BYTES, each after the entries it belongs to", async () => {
  await withServer(async ({ src, server }) => {
    const files = new Map<string, Uint8Array>();
    for (let i = 0; i < 40; i++) {
      const name = `f${String(i).padStart(2, "0")}`;
      files.set(name, crypto.getRandomValues(new Uint8Array(MAX_INLINE_FILE - i)));
      await Deno.writeFile(`${src}/${name}`, files.get(name)!);
    }
    const conn = await RawConnection.open(server.ports[0]);
    try {
      const { batches } = await inlineListing(conn, { inline: MAX_INLINE_FILE });
      assert.ok(batches.length >= 3, `${batches.length} batches for 40 files of about 64 KiB`);
      const seen: string[] = [];
      for (const { entries, content } of batches) {
        assert.ok(
          content !== null && content.byteLength <= INLINE_BATCH_BYTES,
          `${content?.byteLength} bytes`,
        );
        let at = 0;
        for (const entry of entries) {
          const bytes = files.get(String(entry.path))!;
          assert.equal(entry.inline, true);
          assert.deepEqual(content.subarray(at, at += bytes.byteLength), bytes, String(entry.path));
          seen.push(String(entry.path));
        }
        assert.equal(at, content.byteLength);
      }
      assert.deepEqual(seen, [...files.keys()]);
    } finally {
      conn.close();
    }
  });
});

Deno.test("inlined entries that fill their Entries frames (long names, tiny files) each still come with their content, listing after listing", async () => {
  await withServer(async ({ src, server }) => {
    // Names of 240 bytes of UTF-8 (80 characters of 3 bytes): some 1,000 entries of ~400 bytes fill
    // several Entries frames of LIST_BATCH_BYTES while their content stays far below INLINE_BATCH_BYTES.
    const files = new Map<string, Uint8Array>();
    for (let i = 0; i < 1000; i++) {
      const name = `${"日".repeat(76)}${String(i).padStart(4, "0")}`;
      files.set(name, crypto.getRandomValues(new Uint8Array(1 + (i % 40))));
      await Deno.writeFile(`${src}/${name}`, files.get(name)!);
    }
    const conn = await RawConnection.open(server.ports[0]);
    try {
      // Twice on one connection: the second listing's Data frames are buffers the first one gave back.
      for (const round of ["first", "second"]) {
        const { batches } = await inlineListing(conn, { brief: true, inline: MAX_INLINE_FILE });
        assert.ok(batches.length >= 4, `${round}: ${batches.length} batches`);
        const seen: string[] = [];
        for (const { entries, content } of batches) {
          let at = 0;
          for (const entry of entries) {
            const bytes = files.get(String(entry.path))!;
            assert.equal(entry.inline, true, `${round}: ${entry.path}`);
            assert.deepEqual(content!.subarray(at, at += bytes.byteLength), bytes, `${round}: ${entry.path}`);
            seen.push(String(entry.path));
          }
          assert.equal(at, content!.byteLength, `${round}: the Data frame holds its batch's files only`);
        }
        assert.deepEqual(seen.toSorted(), [...files.keys()].toSorted(), round);
      }
    } finally {
      conn.close();
    }
  });
});

/** The ctime of `path`, in nanoseconds. */
function ctimeNs(path: string): bigint {
  return lstatAt(AT_FDCWD, path).ctimeNs;
}
const AT_FDCWD = -100;
// libc is bound on first use and stays bound: bound before the tests, as the sanitizer counts it a leak.
ctimeNs(".");

Deno.test("with inlineSince, a streamed listing brings the content of the files whose ctime is at or after it, and says when its walk began", async () => {
  await withServer(async ({ src, server }) => {
    await Deno.writeTextFile(`${src}/old.txt`, "old\n");
    const since = ctimeNs(`${src}/old.txt`) + 1n;
    // Written until the clock that stamps files has moved on from old.txt's tick.
    const changed = new TextEncoder().encode("changed\n");
    for (let tries = 0; tries < 100_000; tries++) {
      await Deno.writeFile(`${src}/new.txt`, changed);
      if (ctimeNs(`${src}/new.txt`) >= since) break;
    }
    assert.ok(ctimeNs(`${src}/new.txt`) >= since, "new.txt has a later ctime than old.txt");
    const conn = await RawConnection.open(server.ports[0]);
    try {
      const { header, batches, types } = await inlineListing(conn, {
        brief: true,
        inlineSince: String(since),
      });
      assert.equal(types, "HLDT");
      const [{ entries, content }] = batches;
      assert.deepEqual(entries.map((e) => [e.path, e.inline]), [["new.txt", true], ["old.txt", undefined]]);
      assert.deepEqual(content, changed);
      assert.match(String(header.walkedAt), /^[0-9]+$/);
      assert.ok(BigInt(String(header.walkedAt)) <= BigInt(Date.now()) * 1_000_000n, "walkedAt is past");
      await logged(
        server,
        new RegExp(`LIST "" recursive stream since=${since} .*result=ok listed=2 inlined=1$`),
      );
    } finally {
      conn.close();
    }
  });
});

Deno.test("'inline' that is not an integer from 0 to MAX_INLINE_FILE, 'inlineSince' that is not a time, or either without 'stream', is BAD_REQUEST", async () => {
  await withServer(async ({ src, server }) => {
    await Deno.writeTextFile(`${src}/a.txt`, "a");
    for (
      const [request, message] of [
        [{ stream: true, inline: "yes" }, `'inline' is not an integer from 0 to ${MAX_INLINE_FILE}`],
        [
          { stream: true, inline: MAX_INLINE_FILE + 1 },
          `'inline' is not an integer from 0 to ${MAX_INLINE_FILE}`,
        ],
        [{ stream: true, inline: -1 }, `'inline' is not an integer from 0 to ${MAX_INLINE_FILE}`],
        [{ inline: 100 }, "'inline' needs 'stream'"],
        [{ stream: true, inlineSince: 1 }, "'inlineSince' is not nanoseconds as decimal text"],
        [{ stream: true, inlineSince: "-1" }, "'inlineSince' is not nanoseconds as decimal text"],
        [{ inlineSince: "1" }, "'inlineSince' needs 'stream'"],
      ] as const
    ) {
      await assertListRefused(server.ports[0], request as Record<string, unknown>, message);
    }
  });
});

Deno.test("mirror into an empty folder takes the small files from the listing and fetches the large ones; later runs take from it those changed since", async () => {
  await withServer(async ({ src, out, server, address }) => {
    await Deno.mkdir(`${src}/site/deep/er`, { recursive: true });
    for (let i = 0; i < 30; i++) {
      await Deno.writeFile(`${src}/site/deep/er/f${i}.bin`, crypto.getRandomValues(new Uint8Array(i * 2000)));
    }
    await Deno.writeFile(
      `${src}/site/large.bin`,
      new Uint8Array(MAX_INLINE_FILE + 1).map((_, i) => i * 7),
    );
    await Deno.writeTextFile(`${src}/site/top.txt`, "top\n");
    await Deno.chmod(`${src}/site/top.txt`, 0o600);
    const first = await runClient(["mirror", address, "site", `${out}/copy`, "--delete"]);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /\nferry: mirror done: 32 updated, 0 unchanged, 0 deleted, 0 failed\n$/);
    assert.deepEqual(await treeOf(`${out}/copy`), await treeOf(`${src}/site`));
    const copied = await Deno.stat(`${out}/copy/top.txt`);
    const served = await Deno.stat(`${src}/site/top.txt`);
    assert.equal(copied.mode! & 0o777, 0o600);
    assert.equal(copied.mtime!.getTime(), served.mtime!.getTime());
    await logged(server, /LIST "site" recursive stream inline=65536 .*result=ok listed=32 inlined=31$/);
    const gets = server.log.filter((l) => / request=GET /.test(l));
    assert.equal(gets.length, 1, gets.join("\n"));
    assert.match(gets[0], /GET "site\/large\.bin"/);
    // No part is left behind, and the state vouches for every file: the next run fetches nothing, and asks
    // for the content of what changed since the first run's listing began: nothing.
    const again = await runClient(["mirror", address, "site", `${out}/copy`, "--delete"]);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.stderr, "ferry: mirror done: 0 updated, 32 unchanged, 0 deleted, 0 failed\n");
    // Nor does it list the files again: both folders come as records (PROTOCOL.md, `known`).
    const lists = await logged(server, /LIST "site" /, 2);
    assert.match(
      lists[1],
      /LIST "site" recursive stream since=[0-9]+ known=2 .*result=ok listed=2 inlined=0 known-folders=2 partial-folders=0$/,
    );
    assert.deepEqual(
      (await Array.fromAsync(Deno.readDir(`${out}/copy`))).map((e) => e.name).sort(),
      [".ferry", "deep", "large.bin", "top.txt"],
    );
    // A new folder and a file rewritten: their content comes with the listing, and no `get` asks for it.
    await Deno.mkdir(`${src}/site/new`);
    for (let i = 0; i < 5; i++) await Deno.writeTextFile(`${src}/site/new/n${i}.txt`, `new ${i}\n`);
    await Deno.writeTextFile(`${src}/site/top.txt`, "TOP\n");
    const third = await runClient(["mirror", address, "site", `${out}/copy`, "--delete"]);
    assert.equal(third.code, 0, third.stderr);
    assert.match(third.stderr, /\nferry: mirror done: 6 updated, 31 unchanged, 0 deleted, 0 failed\n$/);
    assert.deepEqual(await treeOf(`${out}/copy`), await treeOf(`${src}/site`));
    const thirdList = (await logged(server, /LIST "site" /, 3))[2];
    // site/'s own files (top.txt changed) and new/'s are listed; deep/er/ is as recorded. site/ comes as
    // a partial record with top.txt's entry if large.bin's ctime is before the first run's walk began.
    assert.match(thirdList, /result=ok listed=8 inlined=6 known-folders=1 partial-folders=[01]$/);
    assert.equal(
      server.log.filter((l) => / request=GET /.test(l)).length,
      1,
      "large.bin's, in the first run",
    );
  });
});

/** A frame of `type` carrying `payload`. */
function frameOf(type: number, payload: Uint8Array): Uint8Array {
  const frame = new Uint8Array(FRAME_HEADER_SIZE + 1 + payload.byteLength);
  putFrameLength(frame, 0, 1 + payload.byteLength);
  frame[FRAME_HEADER_SIZE] = type;
  frame.set(payload, FRAME_HEADER_SIZE + 1);
  return frame;
}

/**
 * A server that answers a listing with one inlined file whose content is `sent` (and its hash that of
 * `bytes`), followed by a Data frame or not, and a `get` of it with `bytes`; it records the ops asked for.
 */
function inliningServer(
  bytes: Uint8Array,
  sent: Uint8Array | null,
  listHeader: Record<string, unknown> = {},
): { address: string; ops: string[] } & AsyncDisposable {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const ops: string[] = [];
  const entry = {
    path: "f.bin",
    size: bytes.byteLength,
    etag: "0123456789abcdef0123456789abcdef",
    sha256: sha256(bytes),
    mtimeNs: "1700000000000000000",
    mode: 0o644,
  };
  const serve = async (conn: Deno.Conn) => {
    const write = (...frames: Uint8Array[]) => Promise.all(frames.map((f) => conn.write(f)));
    let buffered = new Uint8Array(0);
    const read = async (n: number) => {
      while (buffered.byteLength < n) {
        const chunk = new Uint8Array(64 * 1024);
        const got = await conn.read(chunk);
        if (got === null) return null;
        buffered = new Uint8Array([...buffered, ...chunk.subarray(0, got)]);
      }
      const out = buffered.subarray(0, n);
      buffered = buffered.subarray(n);
      return out;
    };
    for (;;) {
      const head = await read(FRAME_HEADER_SIZE);
      const length = head === null ? 0 : getFrameLength(head, 0);
      if (length === 0) return;
      const request = decodeJson((await read(length))!.subarray(1)) as { op: string };
      ops.push(request.op);
      if (request.op === "list") {
        const batch = { entries: [{ ...entry, inline: true }] };
        await write(
          encodeJsonFrame(FrameType.Header, { v: 1, status: "ok", stream: true, ...listHeader }),
          encodeJsonFrame(FrameType.Entries, batch),
          ...(sent === null ? [] : [frameOf(FrameType.Data, sent)]),
          encodeJsonFrame(FrameType.Trailer, {
            listed: 1,
            truncated: false,
            leftOut: { count: 0, first: [] },
          }),
          END_FRAME,
        );
      } else {
        const { path: _, ...fields } = entry;
        await write(
          encodeJsonFrame(FrameType.Header, { v: 1, status: "ok", offset: 0, ...fields }),
          frameOf(FrameType.Data, bytes),
          END_FRAME,
        );
      }
    }
  };
  const served: Promise<void>[] = [];
  const accepting = (async () => {
    for await (const conn of listener) served.push(serve(conn).catch(() => {}).finally(() => conn.close()));
  })();
  return {
    address: `127.0.0.1:${listener.addr.port}`,
    ops,
    async [Symbol.asyncDispose]() {
      listener.close();
      await accepting.catch(() => {});
      await Promise.all(served);
    },
  };
}

Deno.test("inlined bytes unlike the hash that came with them are not published: mirror fetches the file again", async () => {
  const bytes = crypto.getRandomValues(new Uint8Array(5000));
  const damaged = bytes.slice();
  damaged[2500] ^= 0xff;
  await using server = inliningServer(bytes, damaged);
  await using out = await tempDir();
  const r = await runClient(["mirror", server.address, ".", `${out.path}/copy`, "--json"]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(await Deno.readFile(`${out.path}/copy/f.bin`), bytes);
  assert.deepEqual(server.ops, ["list", "get"]);
});

Deno.test("a listing whose inlined entries come without their Data frame fails the mirror with exit 6, publishing nothing", async () => {
  const bytes = crypto.getRandomValues(new Uint8Array(5000));
  await using server = inliningServer(bytes, null);
  await using out = await tempDir();
  const r = await runClient(["mirror", server.address, ".", `${out.path}/copy`]);
  assert.equal(r.code, 6, r.stderr);
  assert.match(r.stderr, /inlines 5000 bytes in a batch \(1 file\), followed by no Data frame/);
  const made = await Array.fromAsync(Deno.readDir(out.path));
  const inCopy = made.length === 0 ? [] : await Array.fromAsync(Deno.readDir(`${out.path}/copy`));
  assert.deepEqual(inCopy.map((e) => e.name), [], "no file, no part");
});

Deno.test("a listing whose walkedAt is not nanoseconds as decimal text fails the mirror with exit 6, publishing nothing", async () => {
  const bytes = crypto.getRandomValues(new Uint8Array(5000));
  await using server = inliningServer(bytes, bytes, { walkedAt: "1.5e18" });
  await using out = await tempDir();
  const r = await runClient(["mirror", server.address, ".", `${out.path}/copy`]);
  assert.equal(r.code, 6, r.stderr);
  assert.match(r.stderr, /has a 'walkedAt' that is not nanoseconds as decimal text/);
  const made = await Array.fromAsync(Deno.readDir(out.path));
  const inCopy = made.length === 0 ? [] : await Array.fromAsync(Deno.readDir(`${out.path}/copy`));
  assert.deepEqual(inCopy.map((e) => e.name), [], "no file, no part");
});
