/**
 * Load and admission control: many concurrent clients on a small pool, and what happens past the queue
 * (BUSY in request mode, a logged close in classic mode). Real server processes, real sockets, real files.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { DATA_FRAME_PAYLOAD } from "../framing.ts";
import {
  makeFile,
  RawConnection,
  runClient,
  sha256,
  sha256File,
  sparseFile,
  startServer,
  tempDir,
} from "./helpers.ts";

const MiB = 1024 * 1024;

/** One request-mode fetch on its own connection; the connection is closed afterwards. */
async function fetchOnce(port: number, path: string) {
  const conn = await RawConnection.open(port);
  try {
    await conn.sendRequest({ op: "get", path });
    return await conn.readResponse();
  } finally {
    conn.close();
  }
}

/** Opens a connection, requests `path` and reads only the header: a worker is then serving it. */
async function slowReader(port: number, path: string): Promise<RawConnection> {
  const conn = await RawConnection.open(port);
  try {
    await conn.sendRequest({ op: "get", path });
    const header = await conn.readFrame();
    assert.ok(header !== null && header.length > 0, "a header frame arrives");
    assert.equal(String.fromCharCode(header.payload[0]), "H");
    return conn;
  } catch (e) {
    conn.close();
    throw e;
  }
}

/**
 * Reads a whole classic-mode stream (name frame, content frames of at most 1000 bytes, end frame, then
 * the close) for a file of `size` bytes; returns the name and the SHA-256 of the content.
 */
async function readClassic(conn: RawConnection, size: number): Promise<{ name: string; sha: string }> {
  const nameFrame = await conn.readFrame();
  assert.ok(nameFrame !== null, "a name frame arrives");
  const frames = Math.ceil(size / 1000);
  const total = size + frames * 4 + 4;
  const body = new Uint8Array(total);
  for (let at = 0; at < total;) {
    const piece = await conn.readBytes(Math.min(MiB, total - at));
    assert.ok(piece !== null, `stream ended at ${at} of ${total} body bytes`);
    body.set(piece, at);
    at += piece.byteLength;
  }
  const view = new DataView(body.buffer);
  const hash = createHash("sha256");
  let pos = 0;
  for (let i = 0; i < frames; i++) {
    const len = view.getInt32(pos, true);
    assert.equal(len, Math.min(1000, size - i * 1000), `length of content frame ${i}`);
    hash.update(body.subarray(pos + 4, pos + 4 + len));
    pos += 4 + len;
  }
  assert.equal(view.getInt32(pos, true), 0, "the end frame closes the body");
  assert.equal(await conn.isClosedByPeer(), true, "the server closes after the end frame");
  return { name: new TextDecoder().decode(nameFrame.payload), sha: hash.digest("hex") };
}

Deno.test("50 concurrent clients on 3 workers of one connection each all receive the exact file", async () => {
  await using dir = await tempDir();
  const size = DATA_FRAME_PAYLOAD + 12_345;
  const expected = await sha256File(await makeFile(dir.path, "file.bin", size));
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    dir.path,
    "--workers",
    "3",
    "--conns-per-worker",
    "1",
  ]);
  try {
    const results = await Promise.all(
      Array.from({ length: 50 }, () => fetchOnce(server.ports[0], "file.bin")),
    );
    for (const [i, r] of results.entries()) {
      assert.match(
        r.types,
        /^HDDT?$/,
        `client ${i}: header, 2 data frames, trailer unless the header had the hash`,
      );
      assert.equal(r.json[0].size, size, `client ${i}: announced size`);
      assert.equal(r.data.byteLength, size, `client ${i}: bytes received`);
      assert.equal(sha256(r.data), expected, `client ${i}: content`);
    }
    // The load was spread: every worker served requests.
    for (const w of [1, 2, 3]) {
      assert.match(
        await server.waitForLog(new RegExp(`worker=${w} request=GET "file.bin" .*result=ok`)),
        /ok/,
      );
    }
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("12 concurrent client processes each publish the exact file", async () => {
  await using src = await tempDir();
  await using out = await tempDir();
  const path = await makeFile(src.path, "file.bin", 3 * MiB + 999);
  const expected = await sha256File(path);
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", src.path, "--workers", "2"]);
  try {
    const address = `127.0.0.1:${server.ports[0]}`;
    const results = await Promise.all(
      Array.from(
        { length: 12 },
        (_, i) => runClient(["get", address, "file.bin", "-o", `${out.path}/${i}.bin`]),
      ),
    );
    for (const [i, r] of results.entries()) {
      assert.equal(r.code, 0, `client ${i}: ${r.stderr}`);
      assert.equal(await sha256File(`${out.path}/${i}.bin`), expected, `client ${i}: content`);
    }
    const names = [];
    for await (const entry of Deno.readDir(out.path)) names.push(entry.name);
    assert.equal(names.length, 12, `only the published files: ${names}`);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("past a full queue new requests get BUSY and close, queued ones wait and are served when workers free up", async () => {
  await using dir = await tempDir();
  await sparseFile(dir.path, "big.bin", 64 * MiB);
  const smallSize = 200_000;
  const expected = await sha256File(await makeFile(dir.path, "small.bin", smallSize));
  const queue = 2;
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--root",
    dir.path,
    "--workers",
    "3",
    "--conns-per-worker",
    "1",
    "--queue",
    String(queue),
  ]);
  const port = server.ports[0];
  const slow: RawConnection[] = [];
  const queued: RawConnection[] = [];
  try {
    for (let i = 0; i < 3; i++) slow.push(await slowReader(port, "big.bin"));
    // Every worker holds a connection it cannot finish: the next ones wait in the queue...
    for (let i = 0; i < queue; i++) {
      const conn = await RawConnection.open(port);
      queued.push(conn);
      await conn.sendRequest({ op: "get", path: "small.bin" });
    }
    let answered = 0;
    const answers = queued.map((c) => {
      const p = c.readResponse();
      p.then(() => answered++, () => answered++);
      return p;
    });
    // ...and every later one is refused with BUSY, an end frame, and the close.
    for (let i = 0; i < 3; i++) {
      const conn = await RawConnection.open(port);
      try {
        await conn.sendRequest({ op: "get", path: "small.bin" });
        const error = await conn.readFrame();
        assert.ok(error !== null && error.length > 0, `surplus ${i}: an error frame arrives`);
        assert.equal(String.fromCharCode(error.payload[0]), "E");
        const body = JSON.parse(new TextDecoder().decode(error.payload.subarray(1)));
        assert.equal(body.code, "BUSY");
        assert.equal(typeof body.retryAfterMs, "number");
        assert.ok(body.retryAfterMs > 0);
        assert.equal((await conn.readFrame())?.length, 0, `surplus ${i}: an end frame follows`);
        assert.equal(await conn.isClosedByPeer(), true, `surplus ${i}: then the server closes`);
      } finally {
        conn.close();
      }
    }
    assert.match(await server.waitForLog(/connection \d+ refused/), /the queue \(2\) are full/);

    // The real client says so with its BUSY exit code and one line.
    const r = await runClient(["get", `127.0.0.1:${port}`, "small.bin", "-o", `${dir.path}/out.bin`]);
    assert.equal(r.code, 4, r.stderr);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(r.stderr, /BUSY/);
    await assert.rejects(Deno.stat(`${dir.path}/out.bin`), Deno.errors.NotFound);

    assert.equal(answered, 0, "queued connections get no answer while every worker is busy");
    for (const conn of slow.splice(0)) conn.close();
    for (const [i, response] of (await Promise.all(answers)).entries()) {
      assert.match(response.types, /^HDT?$/, `queued ${i}`);
      assert.equal(sha256(response.data), expected, `queued ${i}: content`);
    }
  } finally {
    for (const conn of [...slow, ...queued]) conn.close();
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("in classic mode connections past a full queue are closed without data and the refusal is logged", async () => {
  await using dir = await tempDir();
  const size = 64 * MiB;
  const path = await makeFile(dir.path, "big.bin", size);
  const expected = await sha256File(path);
  const server = await startServer([
    "--listen",
    "127.0.0.1:0",
    "--push",
    path,
    "--workers",
    "3",
    "--conns-per-worker",
    "1",
    "--queue",
    "2",
  ]);
  const port = server.ports[0];
  const conns: RawConnection[] = [];
  try {
    // Three connections that read the name and then nothing: each worker is stuck on one.
    const slow: RawConnection[] = [];
    for (let i = 0; i < 3; i++) {
      const conn = await RawConnection.open(port);
      conns.push(conn);
      slow.push(conn);
      const name = await conn.readFrame();
      assert.equal(new TextDecoder().decode(name?.payload), "big.bin");
    }
    const queued: RawConnection[] = [];
    for (let i = 0; i < 2; i++) {
      const conn = await RawConnection.open(port);
      conns.push(conn);
      queued.push(conn);
    }
    let answered = 0;
    const streams = queued.map((c) => {
      const p = readClassic(c, size);
      p.then(() => answered++, () => answered++);
      return p;
    });
    for (let i = 0; i < 2; i++) {
      const conn = await RawConnection.open(port);
      try {
        assert.equal(await conn.isClosedByPeer(), true, `surplus ${i} is closed without any byte`);
      } finally {
        conn.close();
      }
      assert.match(
        await server.waitForLog(new RegExp(`connection ${6 + i} refused`)),
        /every worker and the queue \(2\) are full/,
      );
    }
    assert.equal(answered, 0, "queued connections get nothing while every worker is busy");
    for (const conn of slow) conn.close();
    for (const [i, got] of (await Promise.all(streams)).entries()) {
      assert.equal(got.name, "big.bin", `queued ${i}: name`);
      assert.equal(got.sha, expected, `queued ${i}: content`);
    }
  } finally {
    for (const conn of conns) conn.close();
    assert.equal((await server.stop()).code, 0);
  }
});
