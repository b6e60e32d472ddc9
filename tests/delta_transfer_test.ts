/**
 * Delta transfer end to end: a real server and the real client over loopback, real files. A changed file
 * whose old copy is here comes over as its signature and the ranges the old copy lacks; the server refuses
 * ranges that do not fit; a malformed signature publishes nothing; a version is signed once.
 *
 * @module
 */

import assert from "node:assert/strict";
import { chunkBitsFor, chunkLimits, encodeSignature, signatureOf } from "../delta.ts";
import { loadHashing } from "../hashing.ts";
import { encodeJsonFrame, FRAME_HEADER_SIZE, FrameType, SIGNATURE_HEADER_SIZE } from "../framing.ts";
import { Deadline } from "../client/deadline.ts";
import { fetchFile } from "../client/fetch_file.ts";
import { ExitCode } from "../client/failure.ts";
import { LocalDir } from "../client/local_tree.ts";
import { AtomicFile } from "../client/publish.ts";
import { NO_PROGRESS } from "../client/progress.ts";
import { Session } from "../client/session.ts";
import { SignaturePrefetch } from "../client/signature_prefetch.ts";
import { getArgs, jsonLines, listDir, logged, spawnClient, withServer } from "./client_fixture.ts";
import { FrameProxy } from "./proxy.ts";
import { HashCache, identityOf } from "../worker/hash_cache.ts";
import { SignatureCache } from "../worker/signature_cache.ts";
import { SignAhead } from "../worker/sign_ahead.ts";
import { close, closeInBackground, fstat, openRead } from "../ffi/libc.ts";
import {
  answerUntilClosed,
  concat,
  eventually,
  frame,
  randomBytes,
  RawConnection,
  readRequest,
  runClient,
  sha256,
  sparseFile,
  startServer,
  tempDir,
} from "./helpers.ts";

const MiB = 1024 * 1024;

// libc's calls are bound on first use, each a library the resource sanitizer would count against the test
// that uses it first: the delta fetched in this process lets go of its old copy on Deno's blocking pool.
await closeInBackground(openRead(".", { directory: true }));

// libc binds each symbol on first use and keeps it, which the test sanitizer counts as a leak: what a
// signature cache's job calls is bound here, before the tests.
{
  await loadHashing();
  const path = Deno.makeTempFileSync();
  Deno.writeFileSync(path, new Uint8Array(4096));
  const cache = new SignatureCache(new HashCache());
  const fd = openRead(path);
  const stat = fstat(fd);
  cache.request(identityOf(stat), fd, stat.size, "", () => {});
  close(fd);
  while (cache.busy) cache.step();
  const root = openRead(path.slice(0, path.lastIndexOf("/")), { directory: true });
  const ahead = new SignAhead(cache, () => root);
  ahead.follow(path.slice(path.lastIndexOf("/") + 1));
  ahead.onReadable();
  ahead.close();
  close(root);
  Deno.removeSync(path);
}

/** Bytes of the signature the server sends for `data`. */
async function signatureLength(data: Uint8Array): Promise<number> {
  await loadHashing();
  return encodeSignature(signatureOf(data)).byteLength;
}

/** The largest chunk of a file of `size` bytes. */
const maxChunk = (size: number) => chunkLimits(chunkBitsFor(size)).max;

/** The one `--json` line of a run, checked to be a success. */
function report(r: Awaited<ReturnType<typeof runClient>>): Record<string, unknown> {
  assert.equal(r.code, 0, r.stderr);
  const [line] = jsonLines(r);
  return line;
}

Deno.test("get: 1 MiB inserted into the middle of 20 MiB comes over as about 1 MiB, and the file is byte-identical", async () => {
  await withServer(async ({ src, out, address }) => {
    const old = randomBytes(20 * MiB);
    await Deno.writeFile(`${src}/a.bin`, old);
    assert.equal(report(await runClient(getArgs(address, "a.bin", out, "--json"))).bytes, old.byteLength);
    const changed = concat(old.subarray(0, 10 * MiB), randomBytes(MiB), old.subarray(10 * MiB));
    await Deno.writeFile(`${src}/a.bin`, changed);
    const line = report(await runClient(getArgs(address, "a.bin", out, "--json")));
    assert.equal(line.status, "updated");
    assert.equal(line.sha256, sha256(changed));
    assert.deepEqual(await Deno.readFile(`${out}/a.bin`), changed);
    const allowed = MiB + await signatureLength(changed) + 4 * maxChunk(changed.byteLength);
    assert.ok((line.bytes as number) <= allowed, `${line.bytes} bytes came over, more than ${allowed}`);
    assert.ok((line.reused as number) >= old.byteLength - 4 * maxChunk(changed.byteLength));
    assert.deepEqual((await listDir(out)).filter((n) => n !== ".ferry"), ["a.bin"], "no part left");
  });
});

Deno.test("mirror: a changed file that exists locally comes over by delta, byte-identical, its signature asked for ahead", async () => {
  await withServer(async ({ src, out, address, server }) => {
    const old = randomBytes(20 * MiB);
    await Deno.writeFile(`${src}/a.bin`, old);
    assert.equal((await runClient(["mirror", address, ".", out, "-q"])).code, 0);
    // The first copy asked for the signature of the file it fetched whole (kept for this delta).
    const before = (await logged(server, / request=SIG /)).length;
    const changed = concat(old.subarray(0, 7 * MiB), randomBytes(MiB), old.subarray(7 * MiB));
    await Deno.writeFile(`${src}/a.bin`, changed);
    const r = await runClient(["mirror", address, ".", out, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const line = jsonLines(r).find((l) => l.path === "a.bin")!;
    assert.equal(line.status, "updated");
    assert.deepEqual(await Deno.readFile(`${out}/a.bin`), changed);
    const allowed = MiB + await signatureLength(changed) + 4 * maxChunk(changed.byteLength);
    assert.ok((line.bytes as number) <= allowed, `${line.bytes} bytes came over, more than ${allowed}`);
    assert.deepEqual((await listDir(out)).filter((n) => n !== ".ferry"), ["a.bin"], "no part left");
    // The signature was asked for ahead, once, on a connection of its own; the ranges on the listing's.
    const peer = (pattern: RegExp) => (l: string) => pattern.test(l) ? [l.match(/ peer=(\S+)/)![1]] : [];
    const [ranges] = await logged(server, /GET "a\.bin" ranges=/);
    const lists = server.log.flatMap(peer(/ request=LIST /)),
      sigs = server.log.flatMap(peer(/ request=SIG /)).slice(before);
    assert.equal(sigs.length, 1);
    assert.notEqual(sigs[0], lists.at(-1));
    assert.equal(peer(/ranges/)(ranges)[0], lists.at(-1));
  });
});

Deno.test("mirror: a large file overwritten in place, same size, comes by delta too (its state entry no longer matches)", async () => {
  await withServer(async ({ src, out, address }) => {
    const old = randomBytes(8 * MiB);
    await Deno.writeFile(`${src}/same.bin`, old);
    assert.equal((await runClient(["mirror", address, ".", out, "-q"])).code, 0);
    const changed = old.slice();
    changed.set(randomBytes(4096), 4 * MiB);
    await Deno.writeFile(`${src}/same.bin`, changed);
    const r = await runClient(["mirror", address, ".", out, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const line = jsonLines(r).find((l) => l.path === "same.bin")!;
    assert.equal(line.status, "updated");
    assert.deepEqual(await Deno.readFile(`${out}/same.bin`), changed);
    const allowed = 4096 + await signatureLength(changed) + 4 * maxChunk(changed.byteLength);
    assert.ok((line.bytes as number) <= allowed, `${line.bytes} bytes came over, more than ${allowed}`);
  });
});

Deno.test("mirror: a large file touched on the server, same bytes, is compared by the hash the state holds: a dry run and a run both find it unchanged", async () => {
  await withServer(async ({ src, out, address }) => {
    const bytes = randomBytes(2 * MiB);
    await Deno.writeFile(`${src}/touched.bin`, bytes);
    assert.equal((await runClient(["mirror", address, ".", out, "-q"])).code, 0);
    // A new mtime is a new version to the server (another etag, no hash known for it in the listing).
    await Deno.utime(`${src}/touched.bin`, new Date(), new Date(Date.now() + 60_000));

    const dry = await runClient(["mirror", address, ".", out, "--dry-run", "--json"]);
    assert.equal(dry.code, 0, dry.stderr);
    assert.equal(jsonLines(dry).find((l) => l.path === "touched.bin")?.status, "unchanged");
    const run = await runClient(["mirror", address, ".", out, "--json"]);
    assert.equal(run.code, 0, run.stderr);
    const line = jsonLines(run).find((l) => l.path === "touched.bin")!;
    assert.equal(line.status, "unchanged");
    assert.equal(line.bytes, 0);
    assert.deepEqual(await Deno.readFile(`${out}/touched.bin`), bytes);
  });
});

Deno.test("get: a 4 KiB overwrite in 20 MiB fetches a few chunks, and a version is signed once however often it is asked for", async () => {
  await withServer(async ({ src, out, address, server }) => {
    const data = randomBytes(20 * MiB);
    await Deno.writeFile(`${src}/a.bin`, data);
    assert.equal((await runClient(getArgs(address, "a.bin", out, "-q"))).code, 0);
    data.set(randomBytes(4096), 12 * MiB + 100);
    await Deno.writeFile(`${src}/a.bin`, data);
    const line = report(await runClient(getArgs(address, "a.bin", out, "--json")));
    assert.deepEqual(await Deno.readFile(`${out}/a.bin`), data);
    const fetched = (line.bytes as number) - await signatureLength(data);
    assert.ok(fetched <= 3 * maxChunk(data.byteLength), `${fetched} bytes of ranges for a 4 KiB edit`);
    // The same version asked for again, by delta and raw: its signature comes from the cache.
    await Deno.writeFile(`${out}/a.bin`, randomBytes(2 * MiB)); // another old copy: not unchanged
    assert.equal(report(await runClient(getArgs(address, "a.bin", out, "--json"))).sha256, sha256(data));
    const conn = await RawConnection.open(server.ports[0]);
    try {
      await conn.sendRequest({ op: "sig", path: "a.bin" });
      const answer = await conn.readResponse();
      assert.equal(answer.types, "HD");
      assert.equal(answer.json[0].signatureLength, answer.data.byteLength);
      assert.equal(answer.data.byteLength, await signatureLength(data));
    } finally {
      conn.close();
    }
    const signed = await logged(server, /signed "a\.bin" bytes=20971520 .*result=ok/);
    assert.equal(signed.length, 1, signed.join("\n"));
  });
});

Deno.test("get with ranges sends those bytes of the version, and refuses ranges that do not fit with BAD_REQUEST", async () => {
  await withServer(async ({ src, server }) => {
    const data = randomBytes(100_000);
    await Deno.writeFile(`${src}/r.bin`, data);
    await Deno.mkdir(`${src}/dir`);
    const ask = async (request: Record<string, unknown>) => {
      const conn = await RawConnection.open(server.ports[0]);
      try {
        await conn.sendRequest(request);
        return await conn.readResponse();
      } finally {
        conn.close();
      }
    };
    const head = await ask({ op: "sig", path: "r.bin" });
    const etag = head.json[0].etag as string;
    const good = await ask({
      op: "get",
      path: "r.bin",
      ifMatch: etag,
      ranges: [[0, 10], [50_000, 5], [99_990, 10]],
    });
    assert.deepEqual(
      good.data,
      concat(data.subarray(0, 10), data.subarray(50_000, 50_005), data.subarray(99_990, 100_000)),
    );
    assert.equal(good.json.at(-1)!.sha256, sha256(data));
    const code = async (ranges: unknown, ifMatch: string = etag) =>
      (await ask({ op: "get", path: "r.bin", ifMatch, ranges })).json[0].code;
    assert.equal(await code([[99_990, 11]]), "BAD_REQUEST"); // past the end
    assert.equal(await code([[100_000, 1]]), "BAD_REQUEST"); // starts at the end
    assert.equal(await code([[0, 10], [5, 10]]), "BAD_REQUEST"); // overlapping
    assert.equal(await code([[50, 10], [0, 10]]), "BAD_REQUEST"); // unsorted
    assert.equal(await code([[0, 0]]), "BAD_REQUEST"); // empty
    assert.equal(await code([[0.5, 10]]), "BAD_REQUEST"); // not integers
    assert.equal(await code(Array.from({ length: 1025 }, (_, i) => [2 * i, 1])), "BAD_REQUEST"); // too many
    assert.equal(await code([[0, 10]], "0".repeat(32)), "CHANGED"); // another version
    assert.equal((await ask({ op: "sig", path: "dir" })).json[0].code, "NOT_A_FILE");
    const unchanged = await ask({ op: "sig", path: "r.bin", ifNoneMatch: sha256(data) });
    assert.equal(unchanged.types, "H");
    assert.equal(unchanged.json[0].unchanged, true);
  });
});

Deno.test("a server sending a malformed signature makes get exit 6, and leaves the old copy as it was and no part", async () => {
  await using out = await tempDir();
  const old = randomBytes(2 * MiB);
  await Deno.writeFile(`${out.path}/a.bin`, old);
  const size = 3 * MiB;
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const requests: Record<string, unknown>[] = [];
  const peer = (async () => {
    using conn = await listener.accept();
    requests.push(await readRequest(conn));
    // A signature of the right length whose chunk lengths add up to more than the file's size.
    const signature = new Uint8Array(SIGNATURE_HEADER_SIZE + 12);
    const view = new DataView(signature.buffer);
    signature.set(new TextEncoder().encode("FCS1"));
    view.setUint8(4, chunkBitsFor(size));
    view.setBigUint64(8, BigInt(size), true);
    view.setUint32(16, 1, true);
    view.setUint32(SIGNATURE_HEADER_SIZE, 4096, true);
    const header = {
      v: 1,
      status: "ok",
      size,
      mtimeNs: "1",
      mode: 420,
      etag: "e".repeat(32),
      sha256: "0".repeat(64),
      signatureLength: signature.byteLength,
    };
    await answerUntilClosed(conn, [
      encodeJsonFrame(FrameType.Header, header),
      frame(FrameType.Data, signature),
      new Uint8Array(FRAME_HEADER_SIZE),
    ]);
  })();
  const r = await runClient(
    getArgs(`127.0.0.1:${listener.addr.port}`, "a.bin", out.path, "--retries", "2", "--stall-timeout", "5"),
  );
  listener.close(); // a peer still waiting for a connection the client did not make fails
  await peer;
  assert.equal(requests.length, 1);
  assert.equal(requests[0].op, "sig");
  assert.equal(requests[0].ifNoneMatch, sha256(old));
  assert.equal(r.code, 6, r.stderr);
  assert.match(r.stderr, /malformed signature: chunk lengths add up to 4096, not 3145728/);
  assert.deepEqual(await Deno.readFile(`${out.path}/a.bin`), old);
  assert.deepEqual(await listDir(out.path), ["a.bin"]);
});

Deno.test("a server without sig (UNKNOWN_OP) gets asked for the whole file", async () => {
  await using out = await tempDir();
  await Deno.writeFile(`${out.path}/a.bin`, randomBytes(2 * MiB));
  const data = randomBytes(MiB + 5);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const requests: Record<string, unknown>[] = [];
  const peer = (async () => {
    {
      using conn = await listener.accept();
      requests.push(await readRequest(conn));
      const error = { code: "UNKNOWN_OP", message: 'unknown operation "sig"' };
      await conn.write(encodeJsonFrame(FrameType.Error, error));
      await conn.write(new Uint8Array(FRAME_HEADER_SIZE));
    }
    using conn = await listener.accept();
    requests.push(await readRequest(conn));
    const header = { v: 1, status: "ok", size: data.byteLength, etag: "f".repeat(32), offset: 0 };
    await conn.write(encodeJsonFrame(FrameType.Header, header));
    await conn.write(frame(FrameType.Data, data));
    await conn.write(encodeJsonFrame(FrameType.Trailer, { sha256: sha256(data) }));
    await conn.write(new Uint8Array(FRAME_HEADER_SIZE));
    await conn.read(new Uint8Array(1));
  })();
  const r = await runClient(getArgs(`127.0.0.1:${listener.addr.port}`, "a.bin", out.path, "--json"));
  listener.close(); // a peer still waiting for a connection the client did not make fails
  await peer.catch((e) => assert.fail(`the peer: ${e} (requests: ${JSON.stringify(requests)}; ${r.stderr})`));
  assert.deepEqual(requests.map((q) => q.op), ["sig", "get"]);
  assert.equal(requests[1].ranges, undefined);
  assert.equal(report(r).bytes, data.byteLength);
  assert.deepEqual(await Deno.readFile(`${out.path}/a.bin`), data);
});

Deno.test("a signature computed by one worker is passed to the others: a version is signed once per server", async () => {
  await using dir = await tempDir();
  const data = randomBytes(3 * MiB);
  await Deno.writeFile(`${dir.path}/s.bin`, data);
  await sparseFile(dir.path, "hog.bin", 256 * MiB);
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", dir.path, "--workers", "2"]);
  const sigBy = () =>
    server.log.filter((l) => l.includes('request=SIG "s.bin"')).map((l) => /worker=(\d)/.exec(l)![1]);
  const first = await RawConnection.open(server.ports[0]);
  try {
    await first.sendRequest({ op: "sig", path: "s.bin" });
    const a = await first.readResponse();
    assert.equal(a.data.byteLength, await signatureLength(data));
    await logged(server, /request=SIG "s\.bin"/);
    const signer = sigBy()[0];
    // `first` then asks for a large file and reads only its header: its worker stays busy sending it, so
    // new connections go to the other worker once the master has heard that this one is busy (a connection
    // that arrives in the same instant may still land beside it: then the next one is asked).
    await first.sendRequest({ op: "get", path: "hog.bin" });
    assert.equal(String.fromCharCode((await first.readFrame())!.payload[0]), "H");
    for (let tries = 0; tries < 10 && sigBy().every((w) => w === signer); tries++) {
      const other = await RawConnection.open(server.ports[0]);
      try {
        await other.sendRequest({ op: "sig", path: "s.bin" });
        const b = await other.readResponse();
        assert.deepEqual(b.data, a.data);
        assert.equal(b.json[0].sha256, sha256(data));
      } finally {
        other.close();
      }
      await logged(server, /request=SIG "s\.bin"/, tries + 2);
    }
  } finally {
    first.close();
    assert.equal((await server.stop()).code, 0);
  }
  assert.ok(new Set(sigBy()).size === 2, `SIG served by both workers: ${sigBy()}`);
  assert.equal(server.log.filter((l) => /signed "s\.bin"/.test(l)).length, 1);
});

Deno.test("a delta cut off in the middle resumes as a whole-file get from the part's size, and the file is byte-identical", async () => {
  await withServer(async ({ src, out, address, server }) => {
    const old = randomBytes(20 * MiB);
    await Deno.writeFile(`${src}/a.bin`, old);
    assert.equal((await runClient(getArgs(address, "a.bin", out, "-q"))).code, 0);
    const changed = concat(old.subarray(0, 10 * MiB), randomBytes(MiB), old.subarray(10 * MiB));
    await Deno.writeFile(`${src}/a.bin`, changed);
    // Held (then cut) on the first connection once the signature and 300,000 bytes of the insertion came.
    const proxy = new FrameProxy(server.ports[0], {
      hold: { connection: 0, bytes: await signatureLength(changed) + 300_000 },
    });
    try {
      const client = spawnClient(getArgs(proxy.address, "a.bin", out, "--json"));
      await proxy.held;
      proxy.cut();
      const r = await client.done;
      const line = report(r);
      assert.equal(line.attempts, 2);
      assert.deepEqual(await Deno.readFile(`${out}/a.bin`), changed);
      assert.deepEqual(await listDir(out), ["a.bin"]);
      const [sig, ranged] = proxy.connections[0].requests;
      assert.equal(sig.op, "sig");
      assert.ok(Array.isArray(ranged.ranges));
      const resumed = proxy.connections[1].requests[0];
      assert.equal(resumed.op, "get");
      assert.equal(resumed.ranges, undefined);
      assert.equal(resumed.ifMatch, proxy.connections[0].controls[0].body.etag);
      const cutAt = resumed.offset as number;
      assert.ok(cutAt > 10 * MiB && cutAt < 11 * MiB, `resumed at ${cutAt}`);
      assert.equal(line.resumedFrom, cutAt);
    } finally {
      await proxy.close();
    }
  });
});

// libc's symbols are bound on first use and stay bound for the process. Bind the ones a delta into a part
// uses before the in-process tests: the test sanitizer counts a library opened during a test as a leak.
{
  const dir = Deno.makeTempDirSync();
  const place = { dir: LocalDir.open(dir), name: "warm", followLink: true };
  const part = await AtomicFile.openPart(place, "0123456789abcdef01234567");
  await part.commit({ mode: 0o644, mtimeNs: 0n });
  await (await AtomicFile.openPart(place, "76543210fedcba9876543210")).abort(); // a part that failed its check
  place.dir.close();
  Deno.removeSync(dir, { recursive: true });
}

/** A session to `address` with short timeouts. */
function sessionTo(server: { ports: number[] }): Session {
  return new Session({ hostname: "127.0.0.1", port: server.ports[0] }, {
    connectTimeoutMs: 5000,
    stallTimeoutMs: 5000,
  });
}

Deno.test("signatures asked for ahead come on a connection of their own, in order: one passed is given up, a refused one or one of another version is null, a current copy is told so", async () => {
  await withServer(async ({ src, server }) => {
    await loadHashing();
    const a = randomBytes(2 * MiB), b = randomBytes(3 * MiB), c = randomBytes(MiB);
    await Deno.writeFile(`${src}/a.bin`, a);
    await Deno.writeFile(`${src}/b.bin`, b);
    await Deno.writeFile(`${src}/c.bin`, c);
    await Deno.writeFile(`${src}/d.bin`, c);
    const session = sessionTo(server);
    const prefetch = new SignaturePrefetch(session.sibling(), [
      { path: "a.bin" },
      { path: "missing.bin" },
      { path: "b.bin", localSha256: sha256(b) },
      { path: "skipped.bin" },
      { path: "d.bin", etag: "another-version" },
      { path: "c.bin" },
    ]);
    try {
      const first = prefetch.take("a.bin")!;
      assert.equal(first.ifNoneMatch, undefined);
      const signed = await first.answer;
      assert.equal(first.ready, true);
      assert.equal(signed?.header.size, a.byteLength);
      assert.deepEqual(signed?.bytes, encodeSignature(signatureOf(a)));

      assert.equal(await prefetch.take("missing.bin")!.answer, null, "refused: its taker asks again");

      const current = await prefetch.take("b.bin")!.answer;
      assert.equal(current?.header.unchanged, true);
      assert.equal(current?.bytes, null);

      // skipped.bin is passed, and given up; d.bin's answer is of another version than the one named.
      assert.equal(await prefetch.take("d.bin")!.answer, null);
      const last = await prefetch.take("c.bin")!.answer;
      assert.deepEqual(last?.bytes, encodeSignature(signatureOf(c)));
      assert.equal(prefetch.take("skipped.bin"), undefined);
      assert.equal(prefetch.take("a.bin"), undefined, "each is taken once");
      assert.equal(prefetch.take("other.bin"), undefined, "never asked for");
      assert.equal(session.connections, 0, "nothing went over the main connection");
    } finally {
      await prefetch.close();
      await session.close();
    }
  });
});

Deno.test("files added to a prefetch while it runs are asked for in turn; once it is closed, one added is left to its taker", async () => {
  await withServer(async ({ src, server }) => {
    await loadHashing();
    const a = randomBytes(2 * MiB), b = randomBytes(MiB);
    await Deno.writeFile(`${src}/a.bin`, a);
    await Deno.writeFile(`${src}/b.bin`, b);
    const session = sessionTo(server);
    const prefetch = new SignaturePrefetch(session.sibling());
    try {
      // Taken at once, before its request could go out: it is asked for all the same.
      prefetch.add({ path: "a.bin" });
      const first = await prefetch.take("a.bin")!.answer;
      assert.deepEqual(first?.bytes, encodeSignature(signatureOf(a)));
      // Added once the prefetch had answered all it had and waits: asked for then.
      prefetch.add({ path: "b.bin" });
      prefetch.add({ path: "b.bin", localSha256: sha256(b) }); // the same path again: ignored
      const second = prefetch.take("b.bin")!;
      assert.equal(second.ifNoneMatch, undefined);
      assert.deepEqual((await second.answer)?.bytes, encodeSignature(signatureOf(b)));
    } finally {
      await prefetch.close();
    }
    prefetch.add({ path: "a.bin.later" });
    assert.equal(prefetch.take("a.bin.later"), undefined, "not asked for after the close");
    await logged(server, /SIG "b\.bin"/);
    assert.equal(server.log.filter((l) => /SIG "b\.bin"/.test(l)).length, 1);
    await session.close();
  });
});

Deno.test("a prefetch closed with signatures in flight and not taken ends at once, and the server serves on", async () => {
  await withServer(async ({ src, server }) => {
    const wanted = [];
    for (let i = 0; i < 20; i++) {
      await Deno.writeFile(`${src}/f${i}.bin`, randomBytes(256 * 1024));
      wanted.push({ path: `f${i}.bin` });
    }
    const session = sessionTo(server);
    const prefetch = new SignaturePrefetch(session.sibling(), wanted);
    const taken = prefetch.take("f0.bin")!;
    const later = prefetch.take("f1.bin")!;
    assert.notEqual(await taken.answer, null);
    await prefetch.close();
    assert.equal(later.ready, true, "a taken answer is settled by the close, if not before");
    try {
      const stat = await session.request({ v: 1, op: "stat", path: "f19.bin" }, "f19.bin");
      assert.equal(stat.size, 256 * 1024);
    } finally {
      await session.close();
    }
  });
});

Deno.test("a delta whose signature came ahead follows it through the old copy: byte-identical, only the edit fetched", async () => {
  await withServer(async ({ src, out, server }) => {
    await loadHashing();
    const old = randomBytes(12 * MiB);
    const changed = concat(old.subarray(0, 5 * MiB), randomBytes(300_000), old.subarray(5 * MiB + 4096));
    await Deno.writeFile(`${out}/a.bin`, old);
    await Deno.writeFile(`${src}/a.bin`, changed);
    const session = sessionTo(server);
    // Asked with the question the fetch asks: is the old copy (its SHA-256) current?
    const prefetch = new SignaturePrefetch(session.sibling(), [{ path: "a.bin", localSha256: sha256(old) }]);
    try {
      const early = prefetch.take("a.bin")!;
      await early.answer; // in hand: the old copy is not cut
      const report = await fetchFile(session, "a.bin", `${out}/a.bin`, {
        retries: 0,
        deadline: new Deadline(null),
        progress: NO_PROGRESS,
        verify: true,
        early,
      });
      assert.equal(report.status, "updated", report.error?.message);
      assert.deepEqual(await Deno.readFile(`${out}/a.bin`), changed);
      // The signature that came ahead counts among the bytes received, as the other tests' does.
      const allowed = 300_000 + await signatureLength(changed) + 4 * maxChunk(changed.byteLength);
      assert.ok(report.bytes <= allowed, `${report.bytes} bytes came over, more than ${allowed}`);
      assert.ok((report.reused ?? 0) >= changed.byteLength - allowed);
      // The ranges' request is logged after any signature's of the main connection: one was asked for, ahead.
      await logged(server, /GET "a\.bin" ranges=/);
      assert.equal(server.log.filter((l) => /SIG "a\.bin"/.test(l)).length, 1, "asked for once, ahead");
    } finally {
      await prefetch.close();
      await session.close();
    }
  });
});

Deno.test("fetchFile frees its session once the bytes are in and checked, before the file is published; bytes that fail the check never free it", async () => {
  await withServer(async ({ src, out, server }) => {
    // Under DELTA_MIN_BYTES: fetched whole, so that the damage is to the file's own bytes.
    const old = randomBytes(512 * 1024), changed = randomBytes(512 * 1024);
    await Deno.writeFile(`${out}/a.bin`, old);
    await Deno.writeFile(`${src}/a.bin`, changed);
    await Deno.writeFile(`${src}/b.bin`, randomBytes(1000));
    const fetchA = async (session: Session, onChecked: () => Promise<void>) => {
      let pending: Promise<void> | null = null;
      const report = await fetchFile(session, "a.bin", `${out}/a.bin`, {
        retries: 0,
        deadline: new Deadline(null),
        progress: NO_PROGRESS,
        verify: true,
        onChecked: () => void (pending = onChecked()),
      });
      await pending;
      return report;
    };
    // Damaged on the way: the check fails, and nothing is told.
    const proxy = new FrameProxy(server.ports[0], { corrupt: { connection: 0, dataByte: 100 } });
    try {
      const session = new Session({ hostname: "127.0.0.1", port: Number(proxy.address.split(":")[1]) }, {
        connectTimeoutMs: 5000,
        stallTimeoutMs: 5000,
      });
      let told = 0;
      try {
        const report = await fetchA(session, () => Promise.resolve(void told++));
        assert.equal(report.status, "failed");
        assert.equal(report.error?.exitCode, ExitCode.Verification);
      } finally {
        await session.close();
      }
      assert.equal(told, 0, "bytes that failed the check did not free the session");
      assert.equal(sha256(await Deno.readFile(`${out}/a.bin`)), sha256(old));
    } finally {
      await proxy.close();
    }
    // Told while the old copy is still in place; the same session answers another request meanwhile.
    const session = sessionTo(server);
    try {
      let seenThen: Uint8Array | null = null, other: number | undefined;
      const report = await fetchA(session, async () => {
        seenThen = await Deno.readFile(`${out}/a.bin`);
        other = (await session.request({ v: 1, op: "stat", path: "b.bin" }, "b.bin")).size;
      });
      assert.equal(report.status, "updated", report.error?.message);
      // Compared by hash: a failing deepEqual of 512 KiB arrays takes minutes to describe.
      assert.equal(seenThen && sha256(seenThen), sha256(old), "told, and not published yet when told");
      assert.equal(other, 1000);
      assert.equal(sha256(await Deno.readFile(`${out}/a.bin`)), sha256(changed));
      assert.deepEqual(await listDir(out), ["a.bin"]);
    } finally {
      await session.close();
    }
  });
});

Deno.test("a new version of a file signed before is signed by following the old signature: the same signature, the unchanged bytes only hashed", async () => {
  await withServer(async ({ src, out, address, server }) => {
    const first = randomBytes(8 * MiB);
    await Deno.writeFile(`${src}/a.bin`, first);
    assert.equal(report(await runClient(getArgs(address, "a.bin", out, "--json"))).status, "updated");
    // A version never signed before is cut whole.
    const second = concat(first.subarray(0, 3 * MiB), randomBytes(100_000), first.subarray(3 * MiB));
    await Deno.writeFile(`${src}/a.bin`, second);
    assert.equal(report(await runClient(getArgs(address, "a.bin", out, "--json"))).status, "updated");
    const [cutWhole] = await logged(server, /signed "a\.bin" bytes=8488608 /);
    assert.doesNotMatch(cutWhole, /followed=/);
    // The next one follows it: all but the chunks around the edit are found in it.
    const third = second.slice();
    third.set(randomBytes(4096), 6 * MiB);
    await Deno.writeFile(`${src}/a.bin`, third);
    const line = report(await runClient(getArgs(address, "a.bin", out, "--json")));
    assert.equal(line.sha256, sha256(third));
    assert.deepEqual(await Deno.readFile(`${out}/a.bin`), third);
    const followedLines = await logged(server, /signed "a\.bin" .*followed=/);
    assert.equal(followedLines.length, 1);
    const followed = Number(followedLines[0].match(/followed=(\d+)/)![1]);
    assert.ok(followed >= third.length - 4 * maxChunk(third.length), `followed ${followed} bytes`);
    const allowed = 4096 + await signatureLength(third) + 4 * maxChunk(third.length);
    assert.ok((line.bytes as number) <= allowed, `${line.bytes} bytes came over, more than ${allowed}`);
  });
});

Deno.test("a new version of a file whose old one was signed is signed as soon as it is written, before any client asks, and once", async () => {
  await withServer(async ({ src, out, address, server }) => {
    const copy = `${out}/copy`;
    const signed = /signed "big\.bin" .*result=ok/;
    const asked = () => server.log.filter((l) => /request=SIG "big\.bin"/.test(l)).length;
    const mirror = async () => assert.equal((await runClient(["mirror", "-q", address, ".", copy])).code, 0);
    const data = randomBytes(2 * MiB);
    await Deno.writeFile(`${src}/big.bin`, data);
    // A first copy: its listing marks the folder for the watch, and the client asks for the signature of
    // the file it fetched whole, for its next delta.
    await mirror();
    assert.equal((await logged(server, signed, 1)).length, 1);
    const askedBefore = asked();
    data.set(randomBytes(4096), MiB);
    await Deno.writeFile(`${src}/big.bin`, data); // no client runs now
    await logged(server, signed, 2);
    assert.equal(asked(), askedBefore, "signed before anyone asked");
    await mirror();
    assert.deepEqual(await Deno.readFile(`${copy}/big.bin`), data);
    assert.ok(asked() > askedBefore, "the next run asked for it");
    assert.equal(server.log.filter((l) => signed.test(l)).length, 2, "and was answered from what was signed");
  });
});

Deno.test("a path is signed ahead only once one of its versions was signed, not again while that runs, and again later", async () => {
  await loadHashing();
  await using dir = await tempDir();
  const path = `${dir.path}/big.bin`;
  const cache = new SignatureCache(new HashCache());
  const label = JSON.stringify("big.bin");
  const sign = (ahead: boolean) => {
    const fd = openRead(path);
    try {
      const stat = fstat(fd);
      if (ahead) cache.signAhead(label, fd, stat);
      else cache.request(identityOf(stat), fd, stat.size, label, () => {});
    } finally {
      close(fd);
    }
  };
  await Deno.writeFile(path, randomBytes(2 * MiB));
  assert.ok(!cache.signsAhead(label), "no version of it was signed");
  sign(true);
  assert.ok(!cache.busy, "nothing to sign ahead for");
  sign(false); // a request's
  while (cache.busy) cache.step();
  assert.ok(cache.signsAhead(label));
  await Deno.writeFile(path, randomBytes(2 * MiB));
  sign(true);
  assert.ok(cache.busy, "signing the new version ahead");
  assert.ok(!cache.signsAhead(label), "not again while it runs");
  while (cache.busy) cache.step();
  await eventually("signed ahead again, a while later", () => Promise.resolve(cache.signsAhead(label)));
});

Deno.test("signing ahead watches the folders of the files signed only, and signs a new version written there at once", async () => {
  await loadHashing();
  await using dir = await tempDir();
  for (const folder of ["x", "y"]) await Deno.mkdir(`${dir.path}/${folder}`);
  await Deno.writeFile(`${dir.path}/x/big.bin`, randomBytes(2 * MiB));
  await Deno.writeFile(`${dir.path}/y/small.txt`, randomBytes(100));
  const root = openRead(dir.path, { directory: true });
  const cache = new SignatureCache(new HashCache());
  const ahead = new SignAhead(cache, () => root);
  cache.onSigned = (label) => ahead.follow(JSON.parse(label));
  const signed: string[] = [];
  const sign = (path: string) => {
    const fd = openRead(path, { beneath: root });
    try {
      const stat = fstat(fd);
      cache.request(identityOf(stat), fd, stat.size, JSON.stringify(path), (s) => signed.push(s!.sha256));
    } finally {
      close(fd);
    }
  };
  try {
    sign("x/big.bin"); // a client's request
    while (cache.busy) cache.step();
    assert.equal(ahead.watched, 1, "x is watched, y is not");
    const next = randomBytes(2 * MiB);
    await Deno.writeFile(`${dir.path}/y/small.txt`, randomBytes(100));
    await Deno.writeFile(`${dir.path}/x/big.bin`, next); // the kernel queues the event before this returns
    ahead.onReadable();
    assert.ok(cache.busy, "the new version is being signed, before anyone asks");
    while (cache.busy) cache.step();
    sign("x/big.bin"); // the next request finds it
    assert.equal(signed.at(-1), sha256(next));
    assert.ok(!cache.busy, "answered from the cache, not signed again");
  } finally {
    ahead.close();
    close(root);
  }
});
