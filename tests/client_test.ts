/**
 * The client's behaviour and exit codes, against a real server or, to provoke broken answers, a fake peer
 * listening in the test. Every failure must leave the target untouched and no temporary file behind.
 */

import assert from "node:assert/strict";
import { bind, C, close, getsockname, socket } from "../ffi/libc.ts";
import { decodeSockaddr, encodeSockaddr } from "../ffi/sockaddr.ts";
import { makeFile, runClient, sha256, sha256File, startServer, tempDir } from "./helpers.ts";

/**
 * A loopback port that refuses connections, held by a socket bound to it without listening, so that no
 * server another test starts meanwhile can take it. The caller closes the socket.
 */
function refusingPort(): { fd: number; port: number } {
  const fd = socket(C.AF_INET, C.SOCK_STREAM | C.SOCK_CLOEXEC);
  bind(fd, encodeSockaddr({ family: C.AF_INET, host: "127.0.0.1", port: 0 }));
  const addr = new Uint8Array(128);
  getsockname(fd, addr);
  return { fd, port: decodeSockaddr(addr)!.port };
}

// libc's symbols are bound on first use and stay bound: bind these before any test starts, since the test
// sanitizer counts a library opened during a test as a leak.
close(refusingPort().fd);

const encoder = new TextEncoder();

/** Names in a directory, sorted. */
async function listDir(path: string): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(path)) names.push(entry.name);
  return names.sort();
}

function frame(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + payload.byteLength);
  new DataView(out.buffer).setInt32(0, payload.byteLength, true);
  out.set(payload, 4);
  return out;
}

function controlFrame(type: string, body: unknown): Uint8Array {
  const json = encoder.encode(JSON.stringify(body));
  const payload = new Uint8Array(1 + json.byteLength);
  payload[0] = type.charCodeAt(0);
  payload.set(json, 1);
  return frame(payload);
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.byteLength;) done += await conn.write(bytes.subarray(done));
}

async function readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const buf = new Uint8Array(n);
  for (let got = 0; got < n;) {
    const r = await conn.read(buf.subarray(got));
    if (r === null) throw new Error("the client closed early");
    got += r;
  }
  return buf;
}

/** Reads one request frame as a client sends it: 'R' and JSON. */
async function readRequest(conn: Deno.Conn): Promise<unknown> {
  const len = new DataView((await readExactly(conn, 4)).buffer).getInt32(0, true);
  const payload = await readExactly(conn, len);
  assert.equal(payload[0], 0x52, "a request frame starts with 'R'");
  return JSON.parse(new TextDecoder().decode(payload.subarray(1)));
}

/** Waits until the peer closes (or resets) the connection. */
async function untilClosed(conn: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(1024);
  try {
    while (await conn.read(buf) !== null) { /* discard */ }
  } catch { /* reset: closed too */ }
}

/**
 * A fake peer for one connection: `answer` speaks to the client, then the connection is closed.
 * Errors of `answer` (other than the client hanging up early, which tests expect) land in `errors`.
 */
function fakeServer(answer: (conn: Deno.TcpConn) => Promise<void>) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const errors: unknown[] = [];
  const done = (async () => {
    let conn: Deno.TcpConn;
    try {
      conn = await listener.accept();
    } catch {
      return; // closed before any client came
    }
    try {
      await answer(conn);
    } catch (e) {
      errors.push(e);
    } finally {
      try {
        conn.close();
      } catch { /* already closed */ }
    }
  })();
  return {
    address: `127.0.0.1:${listener.addr.port}`,
    errors,
    async [Symbol.asyncDispose]() {
      listener.close();
      await done;
    },
  };
}

const HEADER_1000 = controlFrame("H", { v: 1, status: "ok", size: 1000 });

/** Runs `get` of "f.bin" against `address` into an existing target; checks it is untouched afterwards. */
async function getIntoExistingTarget(address: string, extra: string[] = []) {
  const dir = await tempDir();
  try {
    await Deno.writeTextFile(`${dir.path}/f.bin`, "the old content");
    const r = await runClient(["get", address, "f.bin", "-o", `${dir.path}/f.bin`, ...extra]);
    assert.equal(await Deno.readTextFile(`${dir.path}/f.bin`), "the old content", "target untouched");
    assert.deepEqual(await listDir(dir.path), ["f.bin"], "no temporary file left");
    assert.equal(r.stderr.trim().split("\n").length, 1, `one line on stderr: ${r.stderr}`);
    return r;
  } finally {
    await dir[Symbol.asyncDispose]();
  }
}

Deno.test("get publishes the file with exit 0, its permissions, and no temporary file left", async () => {
  await using src = await tempDir();
  await using out = await tempDir();
  await Deno.mkdir(`${src.path}/sub`);
  const path = await makeFile(`${src.path}/sub`, "file.bin", 2_500_000);
  await Deno.chmod(path, 0o640);
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", src.path, "--workers", "1"]);
  try {
    const address = `127.0.0.1:${server.ports[0]}`;
    const r = await runClient(["get", address, "sub/file.bin", "-o", `${out.path}/copy.bin`]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /done: 2500000 bytes/);
    assert.deepEqual(await listDir(out.path), ["copy.bin"]);
    assert.equal(await sha256File(`${out.path}/copy.bin`), await sha256File(path));
    assert.equal((await Deno.stat(`${out.path}/copy.bin`)).mode! & 0o777, 0o640);

    // Without -o: PATH's base name in the current directory.
    const r2 = await runClient(["get", address, "sub/file.bin", "-q"], out.path);
    assert.equal(r2.code, 0, r2.stderr);
    assert.equal(r2.stderr, "", "-q prints nothing on success");
    assert.deepEqual(await listDir(out.path), ["copy.bin", "file.bin"]);
    assert.equal(await sha256File(`${out.path}/file.bin`), await sha256File(path));
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("get -o DIR, or -o with a trailing slash, puts the file in that directory under its base name; a missing one fails and nothing is made", async () => {
  await using src = await tempDir();
  await using out = await tempDir();
  await Deno.mkdir(`${src.path}/sub`);
  const path = await makeFile(`${src.path}/sub`, "file.bin", 300_000);
  await Deno.mkdir(`${out.path}/dir`);
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", src.path, "--workers", "1"]);
  try {
    const address = `127.0.0.1:${server.ports[0]}`;
    const r = await runClient(["get", address, "sub/file.bin", "-o", `${out.path}/dir`]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await listDir(`${out.path}/dir`), ["file.bin"]);
    assert.equal(await sha256File(`${out.path}/dir/file.bin`), await sha256File(path));
    await Deno.remove(`${out.path}/dir/file.bin`);
    const slash = await runClient(["get", address, "sub/file.bin", "-o", `${out.path}/dir/`]);
    assert.equal(slash.code, 0, slash.stderr);
    assert.deepEqual(await listDir(`${out.path}/dir`), ["file.bin"]);

    const missing = await runClient(["get", address, "sub/file.bin", "-o", `${out.path}/nowhere/`]);
    assert.equal(missing.code, 8, missing.stderr);
    assert.match(missing.stderr, /^ferry: cannot create \S+\/nowhere\/file\.bin: [^\n]*ENOENT[^\n]*\n$/);
    assert.deepEqual(await listDir(out.path), ["dir"]);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("get -o - writes the file to stdout and nothing to disk", async () => {
  await using src = await tempDir();
  await using cwd = await tempDir();
  const path = await makeFile(src.path, "file.bin", 1_234_567);
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", src.path, "--workers", "1"]);
  try {
    const r = await runClient(["get", `127.0.0.1:${server.ports[0]}`, "file.bin", "-o", "-"], cwd.path);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.byteLength, 1_234_567);
    assert.equal(sha256(r.stdout), await sha256File(path));
    assert.deepEqual(await listDir(cwd.path), []);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("pull publishes the pushed file under its name in the given directory", async () => {
  await using src = await tempDir();
  await using out = await tempDir();
  const path = await makeFile(src.path, "pushed.bin", 1_000_001);
  const server = await startServer(["--listen", "127.0.0.1:0", "--push", path, "--workers", "1"]);
  try {
    const r = await runClient(["pull", `127.0.0.1:${server.ports[0]}`, "-o", out.path]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await listDir(out.path), ["pushed.bin"]);
    assert.equal(await sha256File(`${out.path}/pushed.bin`), await sha256File(path));
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("pull -o PATH that is not a directory publishes the pushed file as PATH", async () => {
  await using src = await tempDir();
  await using out = await tempDir();
  const path = await makeFile(src.path, "pushed.bin", 54_321);
  await Deno.writeTextFile(`${out.path}/mine.bin`, "replaced once complete");
  const server = await startServer(["--listen", "127.0.0.1:0", "--push", path, "--workers", "1"]);
  try {
    const r = await runClient(["pull", `127.0.0.1:${server.ports[0]}`, "-o", `${out.path}/mine.bin`]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await listDir(out.path), ["mine.bin"]);
    assert.equal(await sha256File(`${out.path}/mine.bin`), await sha256File(path));
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("get -o /dev/null writes through the device, which stays a device", async () => {
  await using src = await tempDir();
  await makeFile(src.path, "file.bin", 3_000_000);
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", src.path, "--workers", "1"]);
  try {
    const r = await runClient(["get", `127.0.0.1:${server.ports[0]}`, "file.bin", "-o", "/dev/null"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /done: 3000000 bytes/);
    assert.equal((await Deno.stat("/dev/null")).isCharDevice, true);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("command-line mistakes exit 2 with one line on stderr", async () => {
  const cases = [
    [],
    ["fetch", "127.0.0.1:1", "x"],
    ["get"],
    ["get", "localhost", "x"],
    ["get", "127.0.0.1:0", "x"],
    ["get", "127.0.0.1:70000", "x"],
    ["get", "127.0.0.1:1"],
    ["get", "127.0.0.1:1", "x", "y"],
    ["pull", "127.0.0.1:1", "extra"],
    ["get", "127.0.0.1:1", "x", "--stall-timeout", "soon"],
    ["get", "127.0.0.1:1", "x", "--no-such-option"],
  ];
  for (const args of cases) {
    const r = await runClient(args);
    assert.equal(r.code, 2, `${JSON.stringify(args)}: ${r.stderr}`);
    assert.match(r.stderr, /^ferry: [^\n]+ \(see --help\)\n$/, JSON.stringify(args));
  }
  const help = await runClient(["--help"]);
  assert.equal(help.code, 0);
  assert.match(new TextDecoder().decode(help.stdout), /Exit codes:/);
});

Deno.test("a refused connection exits 3", async () => {
  const { fd, port } = refusingPort();
  try {
    const r = await getIntoExistingTarget(`127.0.0.1:${port}`);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /cannot connect/);
  } finally {
    close(fd);
  }
});

Deno.test("a missing, forbidden or non-regular path exits 5 and leaves an existing target untouched", async () => {
  await using src = await tempDir();
  await Deno.mkdir(`${src.path}/adir`);
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", src.path, "--workers", "1"]);
  try {
    const address = `127.0.0.1:${server.ports[0]}`;
    for (
      const [path, code] of [["nope.bin", "NOT_FOUND"], ["../etc/passwd", "FORBIDDEN"], [
        "adir",
        "NOT_A_FILE",
      ]]
    ) {
      await using out = await tempDir();
      await Deno.writeTextFile(`${out.path}/t`, "keep me");
      const r = await runClient(["get", address, path, "-o", `${out.path}/t`]);
      assert.equal(r.code, 5, `${path}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`^ferry: [^\\n]*${code}[^\\n]*\\n$`));
      assert.equal(await Deno.readTextFile(`${out.path}/t`), "keep me");
      assert.deepEqual(await listDir(out.path), ["t"]);
    }
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("an answer that is not ferry's protocol exits 6", async () => {
  let request: unknown;
  await using fake = fakeServer(async (conn) => {
    request = await readRequest(conn);
    await writeAll(conn, encoder.encode("HTTP/1.1 400 Bad Request\r\n\r\n"));
  });
  const r = await getIntoExistingTarget(fake.address);
  assert.equal(r.code, 6, r.stderr);
  assert.match(r.stderr, /protocol error: [^\n]*this is an HTTP server/);
  // The existing target's SHA-256 goes along: an unchanged file would not be sent again.
  assert.deepEqual(request, {
    v: 1,
    op: "get",
    path: "f.bin",
    ifNoneMatch: sha256(encoder.encode("the old content")),
  });
  assert.deepEqual(fake.errors, []);
});

Deno.test("a connection closed in the middle of the body exits 6 with the target untouched", async () => {
  await using fake = fakeServer(async (conn) => {
    await readRequest(conn);
    const partial = new Uint8Array(5 + 500);
    new DataView(partial.buffer).setInt32(0, 1001, true);
    partial[4] = 0x44; // 'D', announcing 1000 bytes and sending 500
    await writeAll(conn, new Uint8Array([...HEADER_1000, ...partial]));
  });
  const r = await getIntoExistingTarget(fake.address, ["--retries", "0"]); // the fake answers once
  assert.equal(r.code, 6, r.stderr);
  assert.match(r.stderr, /closed by the server in the middle/);
  assert.deepEqual(fake.errors, []);
});

Deno.test("an error frame in the middle of the body exits 6 with the target untouched", async () => {
  await using fake = fakeServer(async (conn) => {
    await readRequest(conn);
    const data = frame(new Uint8Array([0x44, ...new Uint8Array(400)]));
    const error = controlFrame("E", { code: "FILE_CHANGED", message: "the file shrank" });
    await writeAll(conn, new Uint8Array([...HEADER_1000, ...data, ...error, 0, 0, 0, 0]));
    await untilClosed(conn);
  });
  const r = await getIntoExistingTarget(fake.address, ["--retries", "0"]); // the fake answers once
  assert.equal(r.code, 6, r.stderr);
  assert.match(r.stderr, /FILE_CHANGED/);
});

Deno.test("fewer bytes than the header announced, properly ended, exits 7 with the target untouched", async () => {
  await using fake = fakeServer(async (conn) => {
    await readRequest(conn);
    const data = frame(new Uint8Array([0x44, ...new Uint8Array(999)]));
    await writeAll(conn, new Uint8Array([...HEADER_1000, ...data, 0, 0, 0, 0]));
    await untilClosed(conn);
  });
  const r = await getIntoExistingTarget(fake.address, ["--retries", "0"]); // the fake answers once
  assert.equal(r.code, 7, r.stderr);
  assert.match(r.stderr, /received 999 bytes, the server announced 1000/);
});

Deno.test("a server that stops sending after the header trips --stall-timeout: exit 3", async () => {
  await using fake = fakeServer(async (conn) => {
    await readRequest(conn);
    await writeAll(conn, HEADER_1000);
    await untilClosed(conn); // the client's watchdog hangs up
  });
  const r = await getIntoExistingTarget(fake.address, ["--stall-timeout", "1", "--retries", "0"]);
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr, /stall-timeout/);
});

Deno.test("an output path that cannot be created exits 8 and leaves nothing behind", async () => {
  await using src = await tempDir();
  await using out = await tempDir();
  await makeFile(src.path, "file.bin", 10_000);
  await Deno.writeTextFile(`${out.path}/plain`, "a regular file");
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", src.path, "--workers", "1"]);
  try {
    const address = `127.0.0.1:${server.ports[0]}`;
    for (const target of [`${out.path}/plain/file.bin`, `${out.path}/missing-dir/file.bin`]) {
      const r = await runClient(["get", address, "file.bin", "-o", target]);
      assert.equal(r.code, 8, `${target}: ${r.stderr}`);
      assert.match(r.stderr, /^ferry: cannot create [^\n]*\n$/);
    }
    assert.equal(await Deno.readTextFile(`${out.path}/plain`), "a regular file");
    assert.deepEqual(await listDir(out.path), ["plain"]);
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("pull refuses a pushed name that leaves the directory: exit 6, nothing written", async () => {
  await using root = await tempDir();
  await Deno.mkdir(`${root.path}/out`);
  await using fake = fakeServer(async (conn) => {
    const content = frame(encoder.encode("evil"));
    await writeAll(conn, new Uint8Array([...frame(encoder.encode("../evil.txt")), ...content, 0, 0, 0, 0]));
    await untilClosed(conn);
  });
  const r = await runClient(["pull", fake.address, "-o", `${root.path}/out`]);
  assert.equal(r.code, 6, r.stderr);
  assert.match(r.stderr, /not a plain file name/);
  assert.deepEqual(await listDir(root.path), ["out"]);
  assert.deepEqual(await listDir(`${root.path}/out`), []);
});
