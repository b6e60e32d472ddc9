import assert from "node:assert/strict";
import {
  getOnce,
  makeFile,
  RawConnection,
  sha256,
  sha256File,
  sparseFile,
  startServer,
  tempDir,
  type TestServer,
} from "./helpers.ts";
import { encodeLastRequest, encodeRequest, PROTOCOL_VERSION } from "../framing.ts";

/** One worker, so that every request meets the same hash cache. */
async function serve(root: string): Promise<TestServer> {
  return await startServer(["--listen", "127.0.0.1:0", "--root", root, "--workers", "1"]);
}

const get = getOnce;

Deno.test("get: the first response carries the SHA-256 in a trailer, the next one in the header, hashed once", async () => {
  await using dir = await tempDir();
  const path = await makeFile(dir.path, "a.bin", 3 * 1024 * 1024 + 17);
  const expected = await sha256File(path);
  const server = await serve(dir.path);
  try {
    const first = await get(server.ports[0], { path: "a.bin" });
    assert.equal(first.types.at(-1), "T");
    assert.equal(first.json.at(-1)!.sha256, expected);
    assert.equal(sha256(first.data), expected);
    const second = await get(server.ports[0], { path: "a.bin" });
    assert.doesNotMatch(second.types, /T/);
    assert.equal(second.json[0].sha256, expected);
    assert.equal(second.json[0].etag, first.json[0].etag);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
  // The worker logs each hash it computes: one for two fetches means the second did not re-read the file.
  assert.equal(server.log.filter((l) => /hashed "a\.bin" bytes=3145745 .*result=ok/.test(l)).length, 1);
});

Deno.test("get with ifNoneMatch: a small file not hashed yet is hashed on the spot and answered at once; a larger one waits for the worker's hash job", async () => {
  await using dir = await tempDir();
  const small = await makeFile(dir.path, "small.bin", 64 * 1024);
  const large = await makeFile(dir.path, "large.bin", 64 * 1024 + 1);
  const server = await serve(dir.path);
  try {
    for (const [name, path] of [["small.bin", small], ["large.bin", large]]) {
      const own = await sha256File(path);
      const same = await get(server.ports[0], { path: name, ifNoneMatch: own });
      assert.equal(same.types, "H", name);
      assert.equal(same.json[0].unchanged, true, name);
      assert.equal(same.json[0].sha256, own, name);
      const other = await get(server.ports[0], { path: name, ifNoneMatch: "0".repeat(64) });
      assert.equal(sha256(other.data), own, name);
    }
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
  // The worker logs each hash its background job computes: none for the small file.
  assert.equal(server.log.filter((l) => /hashed "small\.bin"/.test(l)).length, 0);
  assert.equal(server.log.filter((l) => /hashed "large\.bin" bytes=65537 .*result=ok/.test(l)).length, 1);
});

Deno.test("get with offset and the current etag resumes: only the rest is sent, the hash is the whole file's", async () => {
  await using dir = await tempDir();
  const path = await makeFile(dir.path, "r.bin", 2_500_000);
  const whole = await Deno.readFile(path);
  const server = await serve(dir.path);
  try {
    const first = await get(server.ports[0], { path: "r.bin" });
    const etag = first.json[0].etag;
    const rest = await get(server.ports[0], { path: "r.bin", offset: 1_000_000, ifMatch: etag });
    assert.equal(rest.json[0].offset, 1_000_000);
    assert.equal(rest.data.byteLength, 1_500_000);
    assert.deepEqual(rest.data, whole.subarray(1_000_000));
    assert.equal(rest.json[0].sha256, sha256(whole));
  } finally {
    await server.stop();
  }
});

Deno.test("get with a stale etag answers CHANGED and the connection stays usable", async () => {
  await using dir = await tempDir();
  await makeFile(dir.path, "c.bin", 5000);
  const server = await serve(dir.path);
  const conn = await RawConnection.open(server.ports[0]);
  try {
    await conn.sendRequest({ op: "get", path: "c.bin", offset: 10, ifMatch: "0123456789abcdef01234567" });
    const refused = await conn.readResponse();
    assert.equal(refused.types, "E");
    assert.equal(refused.json[0].code, "CHANGED");
    await conn.sendRequest({ op: "get", path: "c.bin" });
    assert.equal((await conn.readResponse()).data.byteLength, 5000);
  } finally {
    conn.close();
    await server.stop();
  }
});

Deno.test("get with ifNoneMatch of the file's own hash answers unchanged and sends no data frame", async () => {
  await using dir = await tempDir();
  const path = await makeFile(dir.path, "u.bin", 1_200_000);
  const hash = await sha256File(path);
  const server = await serve(dir.path);
  try {
    const same = await get(server.ports[0], { path: "u.bin", ifNoneMatch: hash });
    assert.equal(same.types, "H");
    assert.equal(same.json[0].unchanged, true);
    assert.equal(same.json[0].sha256, hash);
    const other = await get(server.ports[0], { path: "u.bin", ifNoneMatch: "0".repeat(64) });
    assert.match(other.types, /^HD+$/);
    assert.equal(other.json[0].sha256, hash);
    assert.equal(sha256(other.data), hash);
  } finally {
    await server.stop();
  }
  assert.ok(
    server.log.some((l) => l.includes('request=GET "u.bin" ifNoneMatch') && l.endsWith("result=unchanged")),
  );
});

Deno.test("stat answers size, mode, etag and SHA-256 without data; a directory is NOT_A_FILE", async () => {
  await using dir = await tempDir();
  const path = await makeFile(dir.path, "s.bin", 70_000);
  await Deno.chmod(path, 0o640);
  await Deno.mkdir(`${dir.path}/sub`);
  const server = await serve(dir.path);
  const conn = await RawConnection.open(server.ports[0]);
  try {
    await conn.sendRequest({ op: "stat", path: "s.bin" });
    const r = await conn.readResponse();
    assert.equal(r.types, "H");
    assert.equal(r.json[0].size, 70_000);
    assert.equal(r.json[0].mode, 0o640);
    assert.equal(r.json[0].sha256, await sha256File(path));
    assert.equal(typeof r.json[0].etag, "string");
    await conn.sendRequest({ op: "stat", path: "sub" });
    assert.equal((await conn.readResponse()).json[0].code, "NOT_A_FILE");
  } finally {
    conn.close();
    await server.stop();
  }
});

Deno.test("list names the regular files under a directory, recursively on request, never outside the root", async () => {
  await using dir = await tempDir();
  await using outside = await tempDir();
  await Deno.mkdir(`${dir.path}/d/e`, { recursive: true });
  await makeFile(dir.path, "top.txt", 3);
  await makeFile(`${dir.path}/d`, "mid.txt", 4);
  await makeFile(`${dir.path}/d/e`, "deep.txt", 5);
  await makeFile(outside.path, "secret", 6);
  await Deno.symlink(`${outside.path}/secret`, `${dir.path}/d/escape`);
  await Deno.symlink("mid.txt", `${dir.path}/d/alias`);
  const server = await serve(dir.path);
  const conn = await RawConnection.open(server.ports[0]);
  try {
    await conn.sendRequest({ op: "list", path: "", recursive: true });
    const all = await conn.readResponse();
    const entries = all.json[0].entries as { path: string; size: number }[];
    assert.deepEqual(entries.map((e) => [e.path, e.size]), [
      ["d/alias", 4],
      ["d/e/deep.txt", 5],
      ["d/mid.txt", 4],
      ["top.txt", 3],
    ]);
    assert.equal(all.json[0].truncated, false);
    await conn.sendRequest({ op: "list", path: "d" });
    const flat = (await conn.readResponse()).json[0].entries as { path: string }[];
    assert.deepEqual(flat.map((e) => e.path), ["d/alias", "d/mid.txt"]);
    await conn.sendRequest({ op: "list", path: "top.txt" });
    assert.equal((await conn.readResponse()).json[0].code, "NOT_A_FILE");
    await conn.sendRequest({ op: "list", path: "../" });
    assert.equal((await conn.readResponse()).json[0].code, "FORBIDDEN");
  } finally {
    conn.close();
    await server.stop();
  }
});

/** Starts a 64 MiB transfer and reads its header and first data frame, so it is surely in flight. */
async function transferInFlight(server: TestServer, name: string) {
  const conn = await RawConnection.open(server.ports[0]);
  await conn.sendRequest({ op: "get", path: name });
  const head = await conn.readFrame();
  assert.equal(String.fromCharCode(head!.payload[0]), "H");
  const firstData = await conn.readFrame();
  assert.equal(String.fromCharCode(firstData!.payload[0]), "D");
  return conn;
}

Deno.test("a file replaced by rename during a transfer is sent whole in its old version", async () => {
  await using dir = await tempDir();
  const path = await makeFile(dir.path, "big.bin", 64 * 1024 * 1024);
  const oldHash = await sha256File(path);
  const server = await serve(dir.path);
  const conn = await transferInFlight(server, "big.bin");
  try {
    await makeFile(dir.path, "new.bin", 1000);
    await Deno.rename(`${dir.path}/new.bin`, path);
    const rest = await conn.readResponse();
    assert.equal(rest.types.at(-1), "T");
    assert.equal(rest.json.at(-1)!.sha256, oldHash);
  } finally {
    conn.close();
    await server.stop();
  }
});

/** Changes the file with `mutate` while a transfer of it is in flight; the response must end in FILE_CHANGED. */
async function assertFileChangedDuringTransfer(mutate: (path: string) => Promise<void>): Promise<void> {
  await using dir = await tempDir();
  const path = await makeFile(dir.path, "big.bin", 64 * 1024 * 1024);
  const server = await serve(dir.path);
  const conn = await transferInFlight(server, "big.bin");
  try {
    await mutate(path);
    const rest = await conn.readResponse();
    assert.equal(rest.types.at(-1), "E");
    assert.equal(rest.json.at(-1)!.code, "FILE_CHANGED");
  } finally {
    conn.close();
    await server.stop();
  }
}

Deno.test("a file truncated during a transfer ends in FILE_CHANGED, not in an end frame after short data", async () => {
  await assertFileChangedDuringTransfer((path) => Deno.truncate(path, 1000));
});

Deno.test("a file rewritten in place (same size) during a transfer ends in FILE_CHANGED", async () => {
  await assertFileChangedDuringTransfer(async (path) => {
    const file = await Deno.open(path, { write: true });
    await file.write(new Uint8Array(4096).fill(7));
    file.close();
    await Deno.utime(path, 1, 1); // a different modification time, whatever the clock's resolution
  });
});

Deno.test("a hash computed by one worker is passed to the others: a file is hashed once per server", async () => {
  await using dir = await tempDir();
  const path = await makeFile(dir.path, "shared.bin", 2_000_000);
  const expected = await sha256File(path);
  await sparseFile(dir.path, "held.bin", 64 * 1024 * 1024);
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", dir.path, "--workers", "2"]);
  // Connections that take a transfer they do not read keep their worker answering (one waiting for its
  // next request would hold no slot); the master counts a connection on a worker when it hands it over.
  const holder = await RawConnection.open(server.ports[0]);
  const first = await RawConnection.open(server.ports[0]);
  try {
    await holder.sendRequest({ op: "get", path: "held.bin" }); // worker 1: both idle, the lower id wins
    assert.equal(String.fromCharCode((await holder.readFrame())!.payload[0]), "H");
    // Worker 2, the less loaded; the transfer behind it keeps it as loaded as worker 1.
    await first.send(
      new Uint8Array([
        ...encodeRequest({ v: PROTOCOL_VERSION, op: "get", path: "shared.bin" }),
        ...encodeRequest({ v: PROTOCOL_VERSION, op: "get", path: "held.bin" }),
      ]),
    );
    const a = await first.readResponse();
    assert.equal(a.json.at(-1)!.sha256, expected);
    assert.equal(String.fromCharCode((await first.readFrame())!.payload[0]), "H");
    const b = await get(server.ports[0], { path: "shared.bin" }); // worker 1 again: a tie
    assert.equal(b.json[0].sha256, expected);
    assert.doesNotMatch(b.types, /T/);
  } finally {
    holder.close();
    first.close();
    assert.equal((await server.stop()).code, 0);
  }
  const served = server.log.filter((l) => l.includes('request=GET "shared.bin"')).map((l) =>
    /worker=(\d)/.exec(l)![1]
  );
  assert.deepEqual(served.sort(), ["1", "2"]);
  assert.equal(server.log.filter((l) => /hashed "shared\.bin"/.test(l)).length, 1);
});

Deno.test("small replies reuse buffers only once sent: a stalled pipelined reader and other clients each get their own bytes", async () => {
  await using dir = await tempDir();
  const names = ["a.bin", "b.bin", "c.bin"]; // asked for by the stalled reader
  const contents = new Map<string, Uint8Array>();
  for (const name of [...names, "other.bin"]) {
    // Random, so that no two files share bytes (makeFile's content depends on the size only).
    const bytes = crypto.getRandomValues(new Uint8Array(60_000));
    await Deno.writeFile(`${dir.path}/${name}`, bytes);
    contents.set(name, bytes);
  }
  const server = await serve(dir.path);
  try {
    // Hashes known, so every later answer is built whole in one buffer.
    for (const [name, bytes] of contents) {
      assert.deepEqual((await get(server.ports[0], { path: name })).data, bytes);
    }
    // 300 pipelined requests (18 MB of answers) that this client does not read yet: more than the kernel
    // buffers hold, so the worker is left holding a half-sent reply while it serves the others.
    const stalled = await RawConnection.open(server.ports[0]);
    try {
      const order = Array.from({ length: 300 }, (_, i) => names[i % 3]);
      const requests = order.map((path) => encodeRequest({ v: PROTOCOL_VERSION, op: "get", path }));
      await stalled.send(new Uint8Array(requests.flatMap((r) => [...r])));
      // Another file, so that a buffer wrongly shared with the stalled reply would show in its bytes.
      for (let i = 0; i < 30; i++) {
        const { data } = await get(server.ports[0], { path: "other.bin" });
        assert.ok(equalBytes(data, contents.get("other.bin")!), `other client #${i} got its file`);
      }
      for (const [i, name] of order.entries()) {
        const r = await stalled.readResponse();
        assert.equal(r.types, "HD", `pipelined #${i}`);
        assert.ok(equalBytes(r.data, contents.get(name)!), `pipelined #${i} (${name}) arrived intact`);
      }
    } finally {
      stalled.close();
    }
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && a.every((x, i) => x === b[i]);
}

Deno.test("a repeated get answers the file's current mode and version: a chmod or a rewrite shows in the next header", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/m.bin`;
  await Deno.writeFile(path, new TextEncoder().encode("first version"), { mode: 0o644 });
  await Deno.chmod(path, 0o644);
  const server = await serve(dir.path);
  try {
    await get(server.ports[0], { path: "m.bin" }); // hashed: the next answers are small replies
    const before = await get(server.ports[0], { path: "m.bin" });
    assert.equal(before.json[0].mode, 0o644);
    await Deno.chmod(path, 0o600);
    const chmodded = await get(server.ports[0], { path: "m.bin" });
    assert.equal(chmodded.json[0].mode, 0o600, "the mode after chmod");
    assert.equal(chmodded.json[0].etag, before.json[0].etag, "chmod leaves the content's version alone");
    const second = new TextEncoder().encode("second version, longer");
    await Deno.writeFile(`${path}.new`, second, { mode: 0o600 });
    await Deno.rename(`${path}.new`, path);
    await get(server.ports[0], { path: "m.bin" }); // the new version gets hashed
    const rewritten = await get(server.ports[0], { path: "m.bin" });
    assert.deepEqual(rewritten.data, second);
    assert.equal(rewritten.json[0].size, second.byteLength);
    assert.equal(rewritten.json[0].sha256, sha256(second));
    assert.notEqual(rewritten.json[0].etag, before.json[0].etag);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("a request with the end frame behind it is answered, then the server closes the connection", async () => {
  await using dir = await tempDir();
  const bytes = await Deno.readFile(await makeFile(dir.path, "last.bin", 70_000));
  const server = await serve(dir.path);
  try {
    for (let i = 0; i < 3; i++) { // hashed, then whole, then from the reply cache
      const conn = await RawConnection.open(server.ports[0]);
      try {
        await conn.send(encodeLastRequest({ v: PROTOCOL_VERSION, op: "get", path: "last.bin" }));
        const r = await conn.readResponse();
        assert.deepEqual(r.data, bytes, `fetch ${i}`);
        assert.ok(await conn.isClosedByPeer(), `fetch ${i}: closed by the server`);
      } finally {
        conn.close();
      }
    }
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});
