/**
 * Request mode refuses every path that leaves the served directory and every malformed request with the
 * right error frame, and goes on serving: a malformed request ends its connection (error frame, then the
 * server closes), a refused path does not (the same connection serves the next request), and either way a
 * new connection is served normally. Real server, real sockets, a real temporary root.
 */

import assert from "node:assert/strict";
import { ErrorCode, type ErrorCodeValue, FrameType, MAX_PATH_BYTES, MAX_REQUEST_FRAME } from "../framing.ts";
import { makeFile, RawConnection, repoPath, startServer, tempDir } from "./helpers.ts";

const encoder = new TextEncoder();
const OK_SIZE = 5000;

/** Builds a frame: the length `length` (the payload's by default) and the payload. */
function frame(payload: Uint8Array, length = payload.byteLength): Uint8Array {
  const out = new Uint8Array(4 + payload.byteLength);
  new DataView(out.buffer).setInt32(0, length, true);
  out.set(payload, 4);
  return out;
}

/** A request frame whose payload is 'R' followed by `body` taken as raw text or bytes. */
function requestFrame(body: string | Uint8Array, type: number = FrameType.Request): Uint8Array {
  const bytes = typeof body === "string" ? encoder.encode(body) : body;
  return frame(new Uint8Array([type, ...bytes]));
}

/**
 * The served root, beside a directory outside it:
 * served/ok.txt, served/sub/ (a directory), served/escape -> ../outside/secret.txt, served/escape-abs -> the same
 * by absolute path, served/locked.txt (mode 000); outside/secret.txt.
 */
async function makeTree(base: string): Promise<{ root: string; okBytes: Uint8Array }> {
  const root = `${base}/served`;
  await Deno.mkdir(`${root}/sub`, { recursive: true });
  await Deno.mkdir(`${base}/outside`);
  await Deno.writeTextFile(`${base}/outside/secret.txt`, "secret\n");
  await Deno.symlink("../outside/secret.txt", `${root}/escape`);
  await Deno.symlink(`${base}/outside/secret.txt`, `${root}/escape-abs`);
  await Deno.chmod(await makeFile(root, "locked.txt", 100), 0o000);
  const okBytes = await Deno.readFile(await makeFile(root, "ok.txt", OK_SIZE));
  return { root, okBytes };
}

interface Served {
  port: number;
  okBytes: Uint8Array;
}

/** Runs `fn` against a fresh one-worker server on a fresh root; the server must then stop with exit 0. */
async function withServer(extraArgs: string[], fn: (s: Served) => Promise<void>): Promise<void> {
  await using dir = await tempDir();
  const { root, okBytes } = await makeTree(dir.path);
  const args = ["--listen", "127.0.0.1:0", "--root", root, "--workers", "1", ...extraArgs];
  const server = await startServer(args);
  try {
    await fn({ port: server.ports[0], okBytes });
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
}

/** Asserts that `conn` answers a get of ok.txt with a header and the exact bytes. */
async function assertGetOk(conn: RawConnection, okBytes: Uint8Array): Promise<void> {
  await conn.sendRequest({ op: "get", path: "ok.txt" });
  const r = await conn.readResponse();
  assert.equal(r.types[0], "H", `expected a header, got frames '${r.types}'`);
  assert.equal(r.json[0].status, "ok");
  assert.equal(r.json[0].size, OK_SIZE);
  assert.deepEqual(r.data, okBytes);
}

/** A normal request on a new connection succeeds. */
async function assertNextRequestServed({ port, okBytes }: Served): Promise<void> {
  const conn = await RawConnection.open(port);
  try {
    await assertGetOk(conn, okBytes);
  } finally {
    conn.close();
  }
}

/** Reads one response and asserts it is an error frame with `code` and a message, then the end frame. */
async function assertErrorResponse(conn: RawConnection, code: ErrorCodeValue): Promise<void> {
  const r = await conn.readResponse();
  assert.equal(r.types, "E", `expected one error frame, got '${r.types}'`);
  assert.equal(r.json[0].code, code, `message: ${r.json[0].message}`);
  assert.equal(typeof r.json[0].message, "string");
  assert.notEqual(r.json[0].message, "");
}

/**
 * A malformed request: `bytes` (then, if `closeWrite`, end of input) is answered with an error frame of
 * `code`, after which the server closes the connection; a new connection is then served.
 */
async function assertMalformed(
  s: Served,
  bytes: Uint8Array,
  code: ErrorCodeValue,
  closeWrite = false,
): Promise<void> {
  const conn = await RawConnection.open(s.port);
  try {
    await conn.send(bytes);
    if (closeWrite) await conn.closeWrite();
    await assertErrorResponse(conn, code);
    assert.ok(await conn.isClosedByPeer(), "the server closes the connection after a malformed request");
  } finally {
    conn.close();
  }
  await assertNextRequestServed(s);
}

/**
 * A refused path: a get of `path` is answered with an error frame of `code`, the same connection then
 * serves a normal request (PROTOCOL.md: FORBIDDEN, NOT_FOUND and NOT_A_FILE leave it open), and so does a
 * new connection.
 */
async function assertPathRefused(s: Served, path: string, code: ErrorCodeValue): Promise<void> {
  const conn = await RawConnection.open(s.port);
  try {
    await conn.sendRequest({ op: "get", path });
    await assertErrorResponse(conn, code);
    await assertGetOk(conn, s.okBytes);
  } finally {
    conn.close();
  }
  await assertNextRequestServed(s);
}

/** A get request frame for `path`, built by hand (so that any string goes into the JSON). */
function getFrame(path: string): Uint8Array {
  return requestFrame(JSON.stringify({ v: 1, op: "get", path }));
}

Deno.test("request mode: a path with '..' is refused with FORBIDDEN and the next request succeeds", async () => {
  await withServer([], async (s) => {
    for (const path of ["..", "../x", "a/../../x", "sub/../ok.txt", "../served/ok.txt", "sub/.."]) {
      await assertPathRefused(s, path, ErrorCode.Forbidden);
    }
  });
});

Deno.test("request mode: an absolute path is refused with FORBIDDEN and the next request succeeds", async () => {
  await withServer([], async (s) => {
    for (const path of ["/etc/passwd", "/", "/ok.txt"]) await assertPathRefused(s, path, ErrorCode.Forbidden);
  });
});

Deno.test("request mode: a path with a NUL byte is refused with FORBIDDEN and the next request succeeds", async () => {
  await withServer([], async (s) => {
    await assertPathRefused(s, "ok.txt\0.jpg", ErrorCode.Forbidden);
  });
});

Deno.test("request mode: a path longer than 4096 bytes is refused with FORBIDDEN and the next request succeeds", async () => {
  await withServer([], async (s) => {
    const long = "d/".repeat(MAX_PATH_BYTES / 2) + "x"; // 4097 bytes
    assert.ok(encoder.encode(long).byteLength > MAX_PATH_BYTES);
    await assertPathRefused(s, long, ErrorCode.Forbidden);
  });
});

Deno.test("request mode: a symlink inside the root that leads outside is refused with FORBIDDEN, the connection stays usable", async () => {
  await withServer([], async (s) => {
    await assertPathRefused(s, "escape", ErrorCode.Forbidden);
    await assertPathRefused(s, "escape-abs", ErrorCode.Forbidden);
  });
});

Deno.test("request mode: a directory is refused with NOT_A_FILE, the connection stays usable", async () => {
  await withServer([], async (s) => {
    await assertPathRefused(s, "sub", ErrorCode.NotAFile);
    await assertPathRefused(s, "sub/", ErrorCode.NotAFile);
  });
});

Deno.test("request mode: a Unix socket file and a fifo are refused with NOT_A_FILE, the connection stays usable", async () => {
  await using dir = await tempDir();
  const { root, okBytes } = await makeTree(dir.path);
  const listener = Deno.listen({ transport: "unix", path: `${root}/socket` }); // a socket file: open(2) says ENXIO
  const mkfifo = await new Deno.Command("mkfifo", { args: [`${root}/fifo`] }).output(); // open(2) would block
  assert.equal(mkfifo.code, 0, new TextDecoder().decode(mkfifo.stderr));
  const server = await startServer(["--listen", "127.0.0.1:0", "--root", root, "--workers", "1"]);
  try {
    const s = { port: server.ports[0], okBytes };
    for (const path of ["socket", "fifo"]) {
      await assertPathRefused(s, path, ErrorCode.NotAFile);
      const conn = await RawConnection.open(s.port);
      try {
        await conn.sendRequest({ op: "stat", path });
        await assertErrorResponse(conn, ErrorCode.NotAFile);
        await assertGetOk(conn, okBytes);
      } finally {
        conn.close();
      }
    }
  } finally {
    listener.close();
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("request mode: a missing file is NOT_FOUND and the same connection then serves more requests", async () => {
  await withServer([], async (s) => {
    await assertPathRefused(s, "missing.txt", ErrorCode.NotFound);
    await assertPathRefused(s, "ok.txt/below", ErrorCode.NotFound);
    // Pipelined: a refused request and a good one sent in one write are answered in order.
    const conn = await RawConnection.open(s.port);
    try {
      await conn.send(new Uint8Array([...getFrame("missing.txt"), ...getFrame("ok.txt")]));
      await assertErrorResponse(conn, ErrorCode.NotFound);
      const r = await conn.readResponse();
      assert.equal(r.types[0], "H");
      assert.deepEqual(r.data, s.okBytes);
      await assertGetOk(conn, s.okBytes);
    } finally {
      conn.close();
    }
  });
});

Deno.test("request mode: a file the server may not read (mode 000) is refused with FORBIDDEN", async () => {
  await using dir = await tempDir();
  const { root, okBytes } = await makeTree(dir.path);
  // Root bypasses file modes (CAP_DAC_OVERRIDE), and the tests usually run as root. Then the server runs
  // under setpriv(1) without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so that mode 000 binds it too.
  const bypass = canRead(`${root}/locked.txt`);
  const setpriv = bypass && await hasSetpriv();
  const args = ["--listen", "127.0.0.1:0", "--root", root, "--workers", "1"];
  const server = await startServerWith(setpriv ? dropDacCapabilities() : [], args);
  try {
    if (bypass && !setpriv) {
      // Skipped, and only this assertion: the server runs with root's bypass and reads any file, and
      // without setpriv(1) there is no way here to take that away from it.
      console.warn("refusal_test: running as root without setpriv(1): the mode-000 assertion is skipped");
      await assertNextRequestServed({ port: server.port, okBytes });
    } else {
      await assertPathRefused({ port: server.port, okBytes }, "locked.txt", ErrorCode.Forbidden);
    }
  } finally {
    assert.equal((await server.stop()).code, 0);
  }
});

Deno.test("request mode: negative and oversized frame lengths are refused with TOO_LARGE and the next request succeeds", async () => {
  await withServer([], async (s) => {
    await assertMalformed(s, frame(new Uint8Array(0), -1), ErrorCode.TooLarge);
    await assertMalformed(s, frame(new Uint8Array(0), -0x80000000), ErrorCode.TooLarge);
    await assertMalformed(s, frame(new Uint8Array(0), MAX_REQUEST_FRAME + 1), ErrorCode.TooLarge);
  });
});

Deno.test("request mode with --no-http: an HTTP request is a frame too large (TOO_LARGE), and the next request succeeds", async () => {
  await withServer(["--no-http"], async (s) => {
    // "GET " read as a length is 0x20544547, far above the largest request frame.
    const http = encoder.encode("GET /ok.txt HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert.equal(new DataView(http.buffer).getInt32(0, true), 0x20544547);
    await assertMalformed(s, http, ErrorCode.TooLarge);
  });
});

Deno.test("request mode: a request frame of exactly 64 KiB is accepted", async () => {
  await withServer([], async (s) => {
    const json = JSON.stringify({ v: 1, op: "ping" });
    const padded = requestFrame(json + " ".repeat(MAX_REQUEST_FRAME - 1 - json.length));
    assert.equal(padded.byteLength, 4 + MAX_REQUEST_FRAME);
    const conn = await RawConnection.open(s.port);
    try {
      await conn.send(padded);
      const r = await conn.readResponse();
      assert.equal(r.types, "H");
      assert.equal(r.json[0].status, "ok");
    } finally {
      conn.close();
    }
  });
});

Deno.test("request mode: payloads that are not a JSON object are refused with BAD_REQUEST and the next request succeeds", async () => {
  await withServer([], async (s) => {
    const bad: (string | Uint8Array)[] = [
      '{"v":1,"op":"get","path":"ok.txt"', // not JSON
      "", // no JSON at all
      new Uint8Array([0xff, 0xfe, 0x7b, 0x7d]), // not UTF-8
      '[1,"get","ok.txt"]', // JSON, not an object
      '"get ok.txt"',
      "null",
      "42",
    ];
    for (const body of bad) await assertMalformed(s, requestFrame(body), ErrorCode.BadRequest);
    // A JSON object in a frame whose type byte is not 'R'.
    await assertMalformed(s, requestFrame('{"v":1,"op":"ping"}', FrameType.Header), ErrorCode.BadRequest);
  });
});

Deno.test("request mode: requests missing a field are refused with BAD_REQUEST and the next request succeeds", async () => {
  await withServer([], async (s) => {
    for (
      const body of [
        { op: "get", path: "ok.txt" }, // no version
        { v: "1", op: "get", path: "ok.txt" }, // version not an integer
        { v: 1, op: "get" }, // no path
        { v: 1, op: "get", path: 7 }, // path not a string
        { v: 1, op: "get", path: "" }, // empty path
      ]
    ) {
      await assertMalformed(s, requestFrame(JSON.stringify(body)), ErrorCode.BadRequest);
    }
  });
});

Deno.test("request mode: an unknown operation is refused with UNKNOWN_OP and the next request succeeds", async () => {
  await withServer([], async (s) => {
    await assertMalformed(s, requestFrame('{"v":1,"op":"delete","path":"ok.txt"}'), ErrorCode.UnknownOp);
    await assertMalformed(s, requestFrame('{"v":1,"path":"ok.txt"}'), ErrorCode.UnknownOp);
  });
});

Deno.test("request mode: an unsupported protocol version is refused with UNSUPPORTED_VERSION and the next request succeeds", async () => {
  await withServer([], async (s) => {
    for (const v of [0, 2, -1]) {
      await assertMalformed(s, requestFrame(JSON.stringify({ v, op: "ping" })), ErrorCode.UnsupportedVersion);
    }
  });
});

Deno.test("request mode: a connection that ends inside a request frame gets BAD_REQUEST and the next request succeeds", async () => {
  await withServer([], async (s) => {
    const whole = getFrame("ok.txt");
    await assertMalformed(s, whole.subarray(0, whole.byteLength >> 1), ErrorCode.BadRequest, true);
    await assertMalformed(s, whole.subarray(0, 2), ErrorCode.BadRequest, true); // half a length
  });
});

Deno.test("request mode: a client that sends no complete request within --idle-timeout gets a TIMEOUT error frame", async () => {
  await withServer(["--idle-timeout", "1"], async (s) => {
    // Both at once: nothing at all (the server speaks first, with the reason), and half a request frame.
    await Promise.all([new Uint8Array(0), getFrame("ok.txt").subarray(0, 6)].map(async (sent) => {
      const conn = await RawConnection.open(s.port);
      try {
        await conn.send(sent);
        await assertErrorResponse(conn, ErrorCode.Timeout);
        assert.ok(await conn.isClosedByPeer(), "the server closes after TIMEOUT");
      } finally {
        conn.close();
      }
    }));
    await assertNextRequestServed(s);
  });
});

Deno.test("request mode: ping is answered with a Header frame and an end frame, on a reusable connection", async () => {
  await withServer([], async (s) => {
    const conn = await RawConnection.open(s.port);
    try {
      await conn.sendRequest({ op: "ping" });
      const r = await conn.readResponse();
      assert.equal(r.types, "H");
      assert.equal(r.json[0].v, 1);
      assert.equal(r.json[0].status, "ok");
      assert.equal(r.data.byteLength, 0);
      await assertGetOk(conn, s.okBytes);
    } finally {
      conn.close();
    }
  });
});

// --- a server that root's file-mode bypass does not reach ------------------------------------------------

/** True if this process can open `path` for reading. */
function canRead(path: string): boolean {
  try {
    Deno.openSync(path, { read: true }).close();
    return true;
  } catch {
    return false;
  }
}

/** True if setpriv(1) can be run. */
async function hasSetpriv(): Promise<boolean> {
  try {
    return (await new Deno.Command("setpriv", { args: ["--version"], stdout: "null", stderr: "null" })
      .output())
      .success;
  } catch {
    return false;
  }
}

/** The setpriv(1) prefix that runs a command without the two capabilities that bypass file modes. */
function dropDacCapabilities(): string[] {
  const caps = "-dac_override,-dac_read_search";
  return ["setpriv", "--bounding-set", caps, "--inh-caps", caps, "--"];
}

/**
 * Starts `server.ts` like helpers' startServer, behind a command prefix such as {@link dropDacCapabilities},
 * and waits until it is ready. Keeps reading its log so that it never blocks on a full pipe.
 */
async function startServerWith(
  prefix: string[],
  args: string[],
): Promise<{ port: number; stop(): Promise<Deno.CommandStatus> }> {
  const argv = [...prefix, Deno.execPath(), "run", "--allow-all", repoPath("server.ts"), ...args];
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  })
    .spawn();
  let log = "";
  let ended = false;
  let wake = () => {};
  const pump = (async () => {
    for await (const text of child.stderr.pipeThrough(new TextDecoderStream())) {
      log += text;
      wake();
    }
    ended = true;
    wake();
  })();
  while (!/ready with \d+ workers/.test(log) && !ended) await new Promise<void>((resolve) => wake = resolve);
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
    const [status] = await Promise.all([child.status, pump]);
    return status;
  };
  const port = /listening on [^ ]*:(\d+) \(/.exec(log);
  if (port === null) {
    await stop();
    throw new Error(`server did not start:\n${log}`);
  }
  return { port: Number(port[1]), stop };
}
