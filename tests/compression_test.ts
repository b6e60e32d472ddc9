/**
 * Compression negotiated per request, end to end: a real server and the real client over loopback. A client
 * that offers zstd gets a compressible file in fewer bytes and byte-identical, an incompressible one raw; a
 * request that offers nothing is answered exactly as before; a compressed transfer cut off resumes; mirror
 * compresses too; a malformed compressed frame publishes nothing.
 *
 * @module
 */

import assert from "node:assert/strict";
import { zstdCompressSync, zstdDecompressSync } from "node:zlib";
import {
  COMPRESSED_PREFIX,
  encodeJsonFrame,
  FRAME_HEADER_SIZE,
  FrameType,
  getFrameLength,
  putFrameLength,
} from "../framing.ts";
import { getArgs, jsonLines, listDir, logged, spawnClient, withServer } from "./client_fixture.ts";
import { FrameProxy } from "./proxy.ts";
import { isLoopback } from "../client/session.ts";
import {
  answerUntilClosed,
  eventually,
  frame,
  patterned,
  RawConnection,
  readRequest,
  runClient,
  sha256,
  tempDir,
  treeOf,
} from "./helpers.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** `size` bytes of text like a server's log: compresses to about a fifth with zstd. Deterministic. */
function logLike(size: number, seed = 1): Uint8Array {
  const out = new Uint8Array(size);
  const encoder = new TextEncoder();
  let state = seed;
  const next = () => (state = (Math.imul(state, 1103515245) + 12345) >>> 0);
  const paths = ["/api/v1/users", "/static/app.js", "/healthz", "/api/v1/orders/"];
  for (let at = 0, i = 0; at < size; i++) {
    const line =
      `2026-12-05T10:${String(i % 60).padStart(2, "0")}:${String(next() % 60).padStart(2, "0")}Z ` +
      `INFO req=${next().toString(16)} ip=10.0.${i % 256}.${next() % 256} ${paths[i % 4]} ` +
      `status=${i % 17 === 0 ? 500 : 200} bytes=${next() % 100000}\n`;
    at += encoder.encodeInto(line, out.subarray(at)).written;
  }
  return out;
}

/** The `bytes=` of a request log line: what crossed the socket. */
const loggedBytes = (line: string) => Number(/ bytes=(\d+) /.exec(line)![1]);

/** The one `--json` line of a run, checked to be a success. */
function report(r: Awaited<ReturnType<typeof runClient>>): Record<string, unknown> {
  assert.equal(r.code, 0, r.stderr);
  return jsonLines(r)[0];
}

/** Reads a `get` answer frame by frame: type letters, the JSON frames, and the file bytes (Z frames decoded). */
async function readAnswer(conn: RawConnection) {
  let types = "";
  const json: Record<string, unknown>[] = [];
  const parts: Uint8Array[] = [];
  for (;;) {
    const f = await conn.readFrame();
    assert.ok(f !== null, `the connection ended after frames '${types}'`);
    if (f.length === 0) break;
    const type = String.fromCharCode(f.payload[0]);
    types += type;
    const body = f.payload.subarray(1);
    if (type === "D") parts.push(body);
    else if (type === "Z") {
      const chunk = zstdDecompressSync(body.subarray(COMPRESSED_PREFIX));
      assert.equal(chunk.byteLength, getFrameLength(body, 0), "a Z frame names its uncompressed length");
      parts.push(chunk);
    } else json.push(JSON.parse(new TextDecoder().decode(body)));
  }
  const data = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  parts.reduce((at, p) => (data.set(p, at), at + p.byteLength), 0);
  return { types, json, data };
}

Deno.test("get --compress: a compressible file arrives byte-identical in fewer bytes; an incompressible one is sent raw", async () => {
  await withServer(async ({ src, out, server, address }) => {
    const text = logLike(4 * MiB);
    const noise = patterned(2 * MiB);
    await Deno.writeFile(`${src}/app.log`, text);
    await Deno.writeFile(`${src}/noise.bin`, noise);

    const line = report(await runClient(getArgs(address, "app.log", out, "--compress", "--json")));
    assert.equal(line.sha256, sha256(text));
    assert.deepEqual(await Deno.readFile(`${out}/app.log`), text);
    const [compressed] = await logged(server, /GET "app\.log" .*result=ok zstd/);
    assert.ok(loggedBytes(compressed) < text.byteLength / 2, compressed);

    // Without --compress the same file crosses whole.
    await Deno.remove(`${out}/app.log`);
    report(await runClient(getArgs(address, "app.log", out, "--json")));
    const [raw] = await logged(server, /GET "app\.log" .*result=ok$/);
    assert.ok(loggedBytes(raw) > text.byteLength, raw);

    report(await runClient(getArgs(address, "noise.bin", out, "--compress", "--json")));
    assert.deepEqual(await Deno.readFile(`${out}/noise.bin`), noise);
    const [sent] = await logged(server, /GET "noise\.bin" /);
    assert.match(sent, /result=ok$/, "offered, but the sample did not compress: sent raw");
    assert.ok(loggedBytes(sent) > noise.byteLength, sent);
    assert.deepEqual(await listDir(out), ["app.log", "noise.bin"], "no part left");
  });
});

Deno.test("a request that offers no compression gets Data frames only, as before; one that offers zstd gets Z frames", async () => {
  await withServer(async ({ src, server }) => {
    const big = logLike(MiB + 7);
    const small = logLike(20 * KiB, 2);
    await Deno.writeFile(`${src}/big.log`, big);
    await Deno.writeFile(`${src}/small.log`, small);
    const conn = await RawConnection.open(server.ports[0]);
    try {
      for (const [path, data] of [["big.log", big], ["small.log", small]] as const) {
        for (const offer of [undefined, ["br"]]) {
          await conn.sendRequest({ op: "get", path, ...(offer ? { accept: offer } : {}) });
          const plain = await readAnswer(conn);
          assert.match(plain.types, /^HD+T?$/, `${path} offering ${offer}`);
          assert.equal(plain.json[0].compression, undefined);
          assert.deepEqual(plain.data, data);
        }
        await conn.sendRequest({ op: "get", path, accept: ["zstd"] });
        const packed = await readAnswer(conn);
        assert.match(packed.types, /^HZ+T?$/, path);
        assert.equal(packed.json[0].compression, "zstd");
        assert.deepEqual(packed.data, data);
        // Resume from an offset: the compressed bytes start there.
        await conn.sendRequest({ op: "get", path, accept: ["zstd"], offset: 5000 });
        const rest = await readAnswer(conn);
        assert.equal(rest.json[0].offset, 5000);
        assert.deepEqual(rest.data, data.subarray(5000));
      }
      // Text, then bytes that do not compress (an archive after its header): the chunks that do not
      // compress go as Data frames.
      const mixed = new Uint8Array(2 * MiB);
      mixed.set(logLike(64 * KiB, 4));
      mixed.set(patterned(2 * MiB - 64 * KiB), 64 * KiB);
      await Deno.writeFile(`${src}/mixed.bin`, mixed);
      await conn.sendRequest({ op: "get", path: "mixed.bin", accept: ["zstd"] });
      const parts = await readAnswer(conn);
      assert.match(parts.types, /^HZD{8}T?$/);
      assert.deepEqual(parts.data, mixed);
      await conn.send(
        encodeJsonFrame(FrameType.Request, { v: 1, op: "get", path: "big.log", accept: "zstd" }),
      );
      const refused = await conn.readFrame();
      assert.match(new TextDecoder().decode(refused!.payload), /BAD_REQUEST.*'accept' is not a list/);
    } finally {
      conn.close();
    }
  });
});

/** The part of `name` in `dir` (`.NAME.ferry-ETAG.part`) and its size, or null. */
async function partOf(dir: string, name: string): Promise<{ name: string; size: number } | null> {
  for (const entry of await listDir(dir)) {
    if (entry.startsWith(`.${name}.ferry-`)) {
      return { name: entry, size: (await Deno.stat(`${dir}/${entry}`)).size };
    }
  }
  return null;
}

Deno.test("a compressed transfer cut off leaves a part that the next run resumes, compressed, from its size", async () => {
  await withServer(async ({ src, out, server, address }) => {
    const text = logLike(8 * MiB, 3);
    await Deno.writeFile(`${src}/cut.log`, text);
    const proxy = new FrameProxy(server.ports[0], { hold: { connection: 0, bytes: 200 * KiB } });
    try {
      const client = spawnClient(getArgs(proxy.address, "cut.log", out, "--compress"));
      await proxy.held;
      // Everything before the hold is written into the part: whole frames' worth of decoded bytes.
      await eventually(
        "the part holds the decoded bytes",
        async () => ((await partOf(out, "cut.log"))?.size ?? 0) > 200 * KiB,
      );
      client.process.kill("SIGKILL");
      assert.notEqual((await client.done).code, 0);
    } finally {
      await proxy.close();
    }
    const part = (await partOf(out, "cut.log"))!;
    assert.ok(part.size < text.byteLength, `the part holds ${part.size} bytes`);
    const line = report(await runClient(getArgs(address, "cut.log", out, "--compress", "--json")));
    assert.equal(line.resumedFrom, part.size);
    assert.equal(line.bytes, text.byteLength - part.size);
    assert.deepEqual(await Deno.readFile(`${out}/cut.log`), text);
    await logged(server, new RegExp(`GET "cut\\.log" offset=${part.size} .*result=ok zstd`));
    assert.deepEqual(await listDir(out), ["cut.log"]);
  });
});

Deno.test("mirror --compress copies a small tree byte-identical, compressing the files that compress", async () => {
  await withServer(async ({ src, out, server, address }) => {
    await Deno.mkdir(`${src}/logs/old`, { recursive: true });
    for (let i = 0; i < 6; i++) {
      await Deno.writeFile(`${src}/logs/day${i}.log`, logLike((4 + 10 * i) * KiB, i));
    }
    await Deno.writeFile(`${src}/logs/old/big.log`, logLike(3 * MiB, 9));
    await Deno.writeFile(`${src}/blob.bin`, patterned(300 * KiB));
    await Deno.writeFile(`${src}/tiny.txt`, new TextEncoder().encode("hi\n"));
    const r = await runClient(["mirror", address, ".", out, "--compress", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await treeOf(out), await treeOf(src));
    await logged(server, /LIST "" recursive stream zstd /);
    const zstd = await logged(server, /GET .*result=ok zstd/, 7);
    assert.equal(zstd.length, 7, zstd.join("\n")); // the logs; not the noise, not 3 bytes
    assert.ok(server.log.some((l) => /GET "blob\.bin" .*result=ok$/.test(l)));
  });
});

Deno.test("a streamed listing offered zstd comes in Compressed batches: the same entries in fewer bytes", async () => {
  await withServer(async ({ src, server }) => {
    for (let d = 0; d < 10; d++) {
      await Deno.mkdir(`${src}/folder-${d}`);
      for (let f = 0; f < 150; f++) {
        await Deno.writeFile(`${src}/folder-${d}/file-${f}.txt`, new Uint8Array(0));
      }
    }
    const conn = await RawConnection.open(server.ports[0]);
    try {
      const listings = [];
      for (const accept of [undefined, ["zstd"]]) {
        await conn.sendRequest({
          op: "list",
          path: "",
          recursive: true,
          stream: true,
          ...(accept ? { accept } : {}),
        });
        listings.push(await readAnswer(conn));
      }
      const [plain, packed] = listings;
      assert.match(plain.types, /^HL{2,}T$/);
      assert.match(packed.types, /^HLZ{2,}T$/, "the first batch goes as it is, the others compressed");
      assert.equal(plain.json[0].compression, undefined);
      assert.equal(packed.json[0].compression, "zstd");
      // The Z frames decode to the Entries frames' JSON: the same batches.
      const batches = (l: typeof plain) => l.json.slice(1, -1).map((b) => b.entries);
      const entriesOf = new TextDecoder().decode(packed.data).replaceAll(']}{"entries":[', ",");
      const sent = [...batches(packed).flat(), ...JSON.parse(entriesOf).entries];
      assert.deepEqual(sent, batches(plain).flat());
      assert.equal(packed.json.at(-1)!.listed, 1500);
    } finally {
      conn.close();
    }
    const lines = await logged(server, /LIST "" recursive stream/, 2);
    assert.match(lines[1], /LIST "" recursive stream zstd .*result=ok listed=1500/);
    // The first batch (64 KiB, a third of this listing) crosses as it is; the rest shrinks about sixfold.
    assert.ok(loggedBytes(lines[1]) < loggedBytes(lines[0]) / 2, lines.join("\n"));
  });
});

/** Runs `get --compress` against a fake server that answers with `body` after a header naming `compression`. */
async function againstFakeServer(
  header: Record<string, unknown>,
  body: Uint8Array[],
): Promise<{ code: number; stderr: string; request: Record<string, unknown>; left: string[] }> {
  await using out = await tempDir();
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let request: Record<string, unknown> = {};
  const peer = (async () => {
    using conn = await listener.accept();
    request = await readRequest(conn);
    await answerUntilClosed(conn, [
      encodeJsonFrame(FrameType.Header, { v: 1, status: "ok", offset: 0, mode: 420, ...header }),
      ...body,
      new Uint8Array(FRAME_HEADER_SIZE),
    ]);
  })();
  const r = await runClient(
    getArgs(`127.0.0.1:${listener.addr.port}`, "a.log", out.path, "--compress", "--retries", "0"),
  );
  listener.close();
  await peer;
  return { code: r.code, stderr: r.stderr, request, left: await listDir(out.path) };
}

Deno.test("a malformed compressed frame, or compression not offered, makes get exit 6 and publish nothing", async () => {
  const data = logLike(100 * KiB);
  const fields = { size: data.byteLength, etag: "e".repeat(32), sha256: sha256(data), mtimeNs: "1" };
  const garbage = new Uint8Array(COMPRESSED_PREFIX + 500).fill(0x41);
  putFrameLength(garbage, 0, 64 * KiB);
  const bad = await againstFakeServer({ ...fields, compression: "zstd" }, [
    frame(FrameType.Compressed, garbage),
  ]);
  assert.deepEqual(bad.request.accept, ["zstd"]);
  assert.equal(bad.code, 6, bad.stderr);
  assert.match(bad.stderr, /protocol error: a compressed frame does not decode/);
  assert.deepEqual(bad.left, [], "nothing published, no part left");

  // A frame that decodes to more bytes than it names is refused before they are held.
  const liar = zstdCompressSync(data);
  const lying = new Uint8Array(COMPRESSED_PREFIX + liar.byteLength);
  putFrameLength(lying, 0, 1000);
  lying.set(liar, COMPRESSED_PREFIX);
  const long = await againstFakeServer({ ...fields, compression: "zstd" }, [
    frame(FrameType.Compressed, lying),
  ]);
  assert.equal(long.code, 6, long.stderr);
  assert.deepEqual(long.left, []);

  const unoffered = await againstFakeServer({ ...fields, compression: "br" }, [frame(FrameType.Data, data)]);
  assert.equal(unoffered.code, 6, unoffered.stderr);
  assert.match(unoffered.stderr, /compressed with "br", which was not offered/);
  assert.deepEqual(unoffered.left, []);
});

Deno.test("the loopback that has a listing go uncompressed: 127.0.0.0/8, as it is or mapped into IPv6, and ::1", () => {
  for (const address of ["127.0.0.1", "127.255.3.4", "::1", "::ffff:127.0.0.1", "::FFFF:127.1.2.3"]) {
    assert.equal(isLoopback(address), true, address);
  }
  for (
    const address of ["10.0.0.1", "128.0.0.1", "1.127.0.0", "::2", "::ffff:10.0.0.1", "fe80::1", "localhost"]
  ) {
    assert.equal(isLoopback(address), false, address);
  }
});

Deno.test("over loopback, mirror offers zstd for its listing only with --compress: the entries then arrive compressed, the files raw", async () => {
  await withServer(async ({ src, out, server, address }) => {
    await Deno.mkdir(`${src}/site`);
    // Enough entries for several batches: the first goes uncompressed (PROTOCOL.md "Compression").
    for (let i = 0; i < 1200; i++) await Deno.writeFile(`${src}/site/file-${i}.txt`, logLike(200 + i, i));
    // Not first copies (which would bring the files with the listing): each file is fetched on its own.
    // The first run has the server hash the files, so that the entries of the next two carry hashes.
    for (const copy of ["warm", "plain", "packed"]) {
      await Deno.mkdir(`${out}/${copy}`);
      await Deno.writeTextFile(`${out}/${copy}/local.txt`, "mine\n");
    }
    for (const copy of ["warm", "plain"]) {
      const r = await runClient(["mirror", address, "site", `${out}/${copy}`, "-q", "--delete"]);
      assert.equal(r.code, 0, r.stderr);
    }
    const [, raw] = await logged(server, /LIST "site" recursive stream .*result=ok listed=1200/, 2);
    assert.doesNotMatch(raw, / zstd /, "127.0.0.1 is this host: nothing to save by compressing");

    const packed = await runClient([
      "mirror",
      address,
      "site",
      `${out}/packed`,
      "-q",
      "--delete",
      "--compress",
    ]);
    assert.equal(packed.code, 0, packed.stderr);
    for (const copy of ["plain", "packed"]) {
      assert.deepEqual(await treeOf(`${out}/${copy}`), await treeOf(`${src}/site`));
    }
    const [list] = await logged(server, /LIST "site" recursive stream zstd .*result=ok listed=1200/);
    // About 170 bytes of JSON per entry (its hash included); the first 64 KiB go as they are, the rest
    // compressed.
    assert.ok(loggedBytes(list) < 1200 * 100 && loggedBytes(raw) > 1200 * 150, `${raw}\n${list}`);
    const gets = await logged(server, /GET "site\/file-7\.txt" /, 3);
    assert.doesNotMatch(gets[1], /zstd/, "file data is compressed only with --compress");
  });
});
