/**
 * A worker's request handling without a master: one `Connection` over a real socket pair, serving a real
 * directory with the hash and reply caches the worker builds (`buildServeConfig`), driven the way the
 * worker's loop drives it: readiness, hashing slices, wake-ups, and the idle check with a clock the test
 * gives.
 */

import assert from "node:assert/strict";
import { buildServeConfig } from "../worker.ts";
import { ACCEPT_DEFERRAL_SECONDS } from "../channel/messages.ts";
import { Connection, type ServeConfig } from "../worker/connection.ts";
import { EPOLLIN } from "../ffi/epoll.ts";
import { C, close, shutdown, socketpair, tryRecv, trySend, WOULD_BLOCK } from "../ffi/libc.ts";
import {
  decodeJson,
  encodeRequest,
  ErrorCode,
  FRAME_HEADER_SIZE,
  getFrameLength,
  LINGER_BYTES,
  LINGER_TIMEOUT_MS,
  PROTOCOL_VERSION,
  putFrameLength,
  type Request,
} from "../framing.ts";
import { loadHashing } from "../hashing.ts";
import { drain, patterned, sha256, tempDir } from "./helpers.ts";

await loadHashing(); // the worker loads it before its loop starts

const IDLE_TIMEOUT_S = 30;

/** A served directory and one connection of a worker serving it, with the client's end of the socket. */
interface Rig extends Disposable {
  conn: Connection;
  /** The client's end: nonblocking. */
  client: number;
  config: ServeConfig;
  /** The request log's lines. */
  requestLog: string[];
  /** Runs the connection as the worker's loop would until it waits for its client; returns what it sent. */
  serve(): Uint8Array;
}

function openRig(root: string): Rig {
  const [serverEnd, client] = socketpair(C.AF_UNIX, C.SOCK_STREAM | C.SOCK_NONBLOCK | C.SOCK_CLOEXEC);
  const woken = new Set<Connection>();
  const requestLog: string[] = [];
  const config = buildServeConfig(
    { workerId: 1, root, push: null, idleTimeout: IDLE_TIMEOUT_S, replyCacheBytes: 1 << 20, logHealth: true },
    {
      serviceLine: () => {},
      requestLine: (line) => requestLog.push(line),
      hashKnown: () => {},
      signatureKnown: () => {},
      wake: (conn) => woken.add(conn),
    },
  );
  const conn = new Connection(serverEnd, 7, false, config, new Uint8Array(28));
  const serve = () => {
    conn.onReady(EPOLLIN);
    // The loop's turn: hashing slices, then the connections a finished hash woke.
    while (config.hashes.busy || config.signatures.busy || woken.size > 0) {
      if (config.hashes.busy) config.hashes.step();
      if (config.signatures.busy) config.signatures.step();
      for (const woke of woken) {
        woken.delete(woke);
        if (!woke.closed) woke.onReady();
      }
    }
    const received: number[] = [];
    drain(client, received);
    return new Uint8Array(received);
  };
  return {
    conn,
    client,
    config,
    requestLog,
    serve,
    [Symbol.dispose]() {
      conn.abort("test over");
      close(client);
      close(config.rootFd);
      config.replies.close();
    },
  };
}

/** One response: its frames' type letters, the JSON of its control frames, its data bytes. */
interface Response {
  types: string;
  json: Record<string, unknown>[];
  data: Uint8Array;
}

/** Splits `bytes` into whole responses (each up to its end frame); asserts nothing is left over. */
function responses(bytes: Uint8Array): Response[] {
  const out: Response[] = [];
  let current: Response = { types: "", json: [], data: new Uint8Array(0) };
  let at = 0;
  while (at < bytes.byteLength) {
    assert.ok(at + FRAME_HEADER_SIZE <= bytes.byteLength, "a frame header cut short");
    const length = getFrameLength(bytes, at);
    at += FRAME_HEADER_SIZE;
    if (length === 0) {
      out.push(current);
      current = { types: "", json: [], data: new Uint8Array(0) };
      continue;
    }
    const payload = bytes.subarray(at, at + length);
    assert.equal(payload.byteLength, length, "a frame cut short");
    at += length;
    const type = String.fromCharCode(payload[0]);
    current.types += type;
    if (type === "D") {
      const data = new Uint8Array(current.data.byteLength + length - 1);
      data.set(current.data);
      data.set(payload.subarray(1), current.data.byteLength);
      current.data = data;
    } else {
      current.json.push(decodeJson(payload.subarray(1)) as Record<string, unknown>);
    }
  }
  assert.equal(current.types, "", "frames after the last end frame");
  return out;
}

function request(fields: Partial<Request>): Uint8Array {
  return encodeRequest({ v: PROTOCOL_VERSION, op: "get", ...fields } as Request);
}

function sendAll(fd: number, bytes: Uint8Array): void {
  assert.equal(trySend(fd, bytes), bytes.byteLength);
}

/** True if the client's end reads end of stream (the server shut down its side); false if it would wait. */
function clientSeesEnd(fd: number): boolean {
  const buf = new Uint8Array(4096);
  for (;;) {
    const n = tryRecv(fd, buf);
    if (n === 0) return true;
    if (n === WOULD_BLOCK) return false;
  }
}

const A_TXT = patterned(5000);

async function makeRoot(path: string): Promise<void> {
  await Deno.writeFile(`${path}/a.txt`, A_TXT);
  await Deno.mkdir(`${path}/sub`);
  await Deno.writeTextFile(`${path}/sub/b.txt`, "bee");
}

/** Opens a rig on a fresh root, passes it to `fn`, and cleans up. */
async function withRig(fn: (rig: Rig) => void): Promise<void> {
  await using dir = await tempDir();
  await makeRoot(dir.path);
  using rig = openRig(dir.path);
  fn(rig);
}

// libc's symbols are bound on first use and stay bound for the process, and the test sanitizer counts a
// library opened during a test as a leak: run every path once before the tests start.
{
  const dir = Deno.makeTempDirSync();
  Deno.writeFileSync(`${dir}/a.txt`, A_TXT);
  const rig = openRig(dir);
  sendAll(rig.client, request({ path: "a.txt" }));
  rig.serve();
  sendAll(rig.client, request({ path: "a.txt" })); // from the reply cache
  rig.serve();
  Deno.writeFileSync(`${dir}/c.txt`, A_TXT);
  sendAll(rig.client, request({ op: "stat", path: "c.txt" })); // hashed by a background job
  rig.serve();
  sendAll(rig.client, request({ op: "list", path: "", recursive: true }));
  rig.serve();
  sendAll(rig.client, request({ path: "missing" }));
  rig.serve();
  rig.conn.checkIdle(performance.now() + IDLE_TIMEOUT_S * 1000);
  rig.serve();
  shutdown(rig.client, C.SHUT_WR);
  rig.serve();
  rig[Symbol.dispose]();
  Deno.removeSync(dir, { recursive: true });
}

Deno.test("a worker's connection answers get, stat, list and ping, one after another on one connection", async () => {
  await withRig((rig) => {
    sendAll(rig.client, request({ path: "a.txt" }));
    const [got] = responses(rig.serve());
    // A small file not hashed before is hashed on the spot: the hash comes in the header, no trailer.
    assert.equal(got.types, "HD");
    assert.equal(got.json[0].size, A_TXT.byteLength);
    assert.deepEqual(got.data, A_TXT);
    assert.equal(got.json[0].sha256, sha256(A_TXT));

    sendAll(rig.client, request({ op: "stat", path: "sub/b.txt" }));
    const [stat] = responses(rig.serve());
    assert.equal(stat.types, "H");
    assert.equal(stat.json[0].size, 3);
    assert.equal(stat.json[0].sha256, sha256(new TextEncoder().encode("bee")));

    sendAll(rig.client, request({ op: "list", path: "", recursive: true }));
    const [list] = responses(rig.serve());
    assert.equal(list.types, "H");
    const entries = list.json[0].entries as { path: string; size: number; sha256?: string }[];
    assert.deepEqual(entries.map((e) => [e.path, e.size]), [["a.txt", 5000], ["sub/b.txt", 3]]);
    assert.equal(entries[0].sha256, sha256(A_TXT), "a hash the worker computed shows in the listing");

    sendAll(rig.client, request({ op: "ping" }));
    const [ping] = responses(rig.serve());
    assert.equal(ping.types, "H");
    assert.equal(ping.json[0].status, "ok");

    assert.equal(rig.requestLog.length, 4);
    assert.match(rig.requestLog[0], /request=GET "a.txt" bytes=\d+ .*result=ok$/);
    assert.match(rig.requestLog[3], /request=PING .*result=ok$/);
    assert.equal(rig.conn.closed, false);
  });
});

Deno.test("requests sent in one write are answered in order, each whole", async () => {
  await withRig((rig) => {
    sendAll(
      rig.client,
      new Uint8Array([
        ...request({ op: "stat", path: "a.txt" }),
        ...request({ path: "missing.txt" }),
        ...request({ path: "sub/b.txt" }),
        ...request({ op: "ping" }),
      ]),
    );
    const got = responses(rig.serve());
    assert.deepEqual(got.map((r) => r.types), ["H", "E", "HD", "H"]);
    assert.equal(got[0].json[0].size, 5000);
    assert.equal(got[1].json[0].code, ErrorCode.NotFound);
    assert.equal(new TextDecoder().decode(got[2].data), "bee");
    assert.equal(rig.conn.closed, false);
  });
});

Deno.test("after NOT_FOUND the connection stays open and serves the next request", async () => {
  await withRig((rig) => {
    sendAll(rig.client, request({ path: "missing.txt" }));
    const [refused] = responses(rig.serve());
    assert.equal(refused.types, "E");
    assert.equal(refused.json[0].code, ErrorCode.NotFound);
    assert.equal(clientSeesEnd(rig.client), false, "the server did not shut its side");
    sendAll(rig.client, request({ path: "sub/b.txt" }));
    const [next] = responses(rig.serve());
    assert.equal(new TextDecoder().decode(next.data), "bee");
    assert.match(rig.requestLog[0], /result=refused NOT_FOUND$/);
  });
});

/** A request frame whose length says more than 64 KiB. */
function oversizedFrame(): Uint8Array {
  const frame = new Uint8Array(FRAME_HEADER_SIZE);
  putFrameLength(frame, 0, 70_000);
  return frame;
}

/** A request frame whose payload is not JSON. */
function notJsonFrame(): Uint8Array {
  const payload = new TextEncoder().encode("R{not json");
  const frame = new Uint8Array(FRAME_HEADER_SIZE + payload.byteLength);
  putFrameLength(frame, 0, payload.byteLength);
  frame.set(payload, FRAME_HEADER_SIZE);
  return frame;
}

for (
  const [what, bytes, code] of [
    ["a frame over 64 KiB", oversizedFrame(), ErrorCode.TooLarge],
    ["a request that is not JSON", notJsonFrame(), ErrorCode.BadRequest],
    ["an offset beyond the file", request({ path: "sub/b.txt", offset: 4 }), ErrorCode.BadRequest],
  ] as const
) {
  Deno.test(`after ${what} the error frame is sent, the server half-closes, and closes once the client does`, async () => {
    await withRig((rig) => {
      // A request behind it in the same write is not answered: the connection is over.
      sendAll(rig.client, new Uint8Array([...bytes, ...request({ op: "ping" })]));
      const [refused, ...rest] = responses(rig.serve());
      assert.equal(refused.types, "E");
      assert.equal(refused.json[0].code, code);
      assert.deepEqual(rest, []);
      assert.equal(clientSeesEnd(rig.client), true, "the server shut down its side");
      assert.equal(rig.conn.closed, false, "it lingers, reading what the client still sends");
      shutdown(rig.client, C.SHUT_WR);
      rig.serve();
      assert.equal(rig.conn.closed, true);
      assert.equal(rig.conn.ok, false);
    });
  });
}

Deno.test("a connection idle past the timeout gets TIMEOUT and the server shuts its side; one within it is left alone", async () => {
  await withRig((rig) => {
    sendAll(rig.client, request({ op: "ping" }));
    responses(rig.serve());
    sendAll(rig.client, request({ op: "ping" }).subarray(0, 6)); // half a request
    rig.serve();
    const now = performance.now(); // the last progress was before this
    assert.equal(rig.conn.checkIdle(now), false, "less than the timeout has passed");
    assert.equal(rig.conn.checkIdle(now + IDLE_TIMEOUT_S * 1000), true);
    const [timeout] = responses(rig.serve());
    assert.equal(timeout.types, "E");
    assert.equal(timeout.json[0].code, ErrorCode.Timeout);
    assert.match(timeout.json[0].message as string, /within 30s \(a partial request frame arrived\)/);
    assert.equal(clientSeesEnd(rig.client), true);
  });
});

/** Sends an oversized frame, reads the TOO_LARGE it gets: the connection lingers from then on. */
function lingerAfterError(rig: Rig): void {
  sendAll(rig.client, oversizedFrame());
  const [refused] = responses(rig.serve());
  assert.equal(refused.json[0].code, ErrorCode.TooLarge);
  assert.equal(rig.conn.closed, false, "it lingers");
}

Deno.test("lingering after an error ends once LINGER_BYTES are read, however fast the client keeps sending", async () => {
  await withRig((rig) => {
    lingerAfterError(rig);
    const chunk = new Uint8Array(64 * 1024);
    let sent = 0;
    // Bounded: four times the limit, in case the server never stops reading.
    while (!rig.conn.closed && sent < 4 * LINGER_BYTES) {
      const n = trySend(rig.client, chunk);
      if (n !== WOULD_BLOCK) sent += n;
      rig.serve();
    }
    assert.equal(rig.conn.closed, true, `still lingering after ${sent} bytes`);
    assert.ok(sent >= LINGER_BYTES, `closed after ${sent} bytes, before LINGER_BYTES`);
  });
});

Deno.test("lingering after an error ends after LINGER_TIMEOUT_MS without a byte, long before the idle timeout", async () => {
  await withRig((rig) => {
    lingerAfterError(rig);
    const quietSince = performance.now();
    assert.ok(LINGER_TIMEOUT_MS < IDLE_TIMEOUT_S * 1000);
    assert.equal(rig.conn.checkIdle(quietSince + LINGER_TIMEOUT_MS), true);
    assert.equal(rig.conn.closed, true);
  });
});

Deno.test("a request sent a byte at a time gets TIMEOUT at the request's deadline, though every byte came in time", async () => {
  await withRig((rig) => {
    const opened = performance.now(); // the connection was made before this
    const bytes = request({ op: "ping" });
    // Bytes keep coming, the last one after the connection's first milliseconds: the old rule (no byte
    // for the idle timeout) would keep the connection open past the deadline below.
    let sent = 0;
    while (sent < bytes.byteLength - 1 && (sent < 4 || performance.now() - opened < 5)) {
      sendAll(rig.client, bytes.subarray(sent, sent + 1));
      sent++;
      rig.serve();
    }
    assert.ok(performance.now() - opened >= 5 || sent === bytes.byteLength - 1);
    assert.equal(
      rig.conn.checkIdle(opened + IDLE_TIMEOUT_S * 1000),
      true,
      "the whole request was due by now",
    );
    const [timeout] = responses(rig.serve());
    assert.equal(timeout.json[0].code, ErrorCode.Timeout);
    assert.match(timeout.json[0].message as string, /partial request frame/);
  });
});

Deno.test("a connection that reaches the worker without a byte has waited in the kernel: its timeout counts that wait", async () => {
  await withRig((rig) => {
    const opened = performance.now(); // the connection was made before this
    assert.equal(rig.serve().byteLength, 0, "nothing to read, nothing sent");
    const due = opened + (IDLE_TIMEOUT_S - ACCEPT_DEFERRAL_SECONDS) * 1000;
    assert.equal(rig.conn.checkIdle(due), true, "closed the deferral's length before the idle timeout");
    const [timeout] = responses(rig.serve());
    assert.equal(timeout.json[0].code, ErrorCode.Timeout);
  });
});
