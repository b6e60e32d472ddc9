/**
 * Admission by the master: --allow/--deny (IPv4 and IPv6), --max-conns-per-ip (BUSY, then served again
 * once connections end), and PROXY headers (v1, v2, LOCAL, malformed, from a peer not allowed to send
 * one), with real sockets from distinct loopback source addresses (127.0.0.2, 127.0.0.3).
 */

import assert from "node:assert/strict";
import net from "node:net";
import {
  childPids,
  concat,
  eventually,
  runServerToExit,
  startServer,
  tempDir,
  type TestServer,
} from "./helpers.ts";
import {
  decodeJson,
  encodeRequest,
  FRAME_HEADER_SIZE,
  getFrameLength,
  PROTOCOL_VERSION,
} from "../framing.ts";
import type { Request } from "../framing.ts";
import { PROXY_V2_SIGNATURE } from "../server/proxy_header.ts";

/** A TCP connection from a chosen local address (Deno.connect cannot bind one; node:net can). */
class SourcedConn {
  #buf = new Uint8Array(0);
  #ended = false;
  #wake: (() => void) | null = null;
  private constructor(readonly socket: net.Socket) {
    socket.on("data", (chunk: Uint8Array) => {
      const merged = new Uint8Array(this.#buf.byteLength + chunk.byteLength);
      merged.set(this.#buf);
      merged.set(chunk, this.#buf.byteLength);
      this.#buf = merged;
      this.#wake?.();
    });
    const end = () => {
      this.#ended = true;
      this.#wake?.();
    };
    socket.on("end", end);
    socket.on("close", end);
    socket.on("error", end);
  }

  /** Connects to 127.0.0.1:`port` (or `host`) from `from`. */
  static open(
    port: number,
    from: string,
    host = from.includes(":") ? "::1" : "127.0.0.1",
  ): Promise<SourcedConn> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port, localAddress: from });
      socket.once("connect", () => resolve(new SourcedConn(socket)));
      socket.once("error", reject);
    });
  }

  /** Writes `bytes`. */
  send(bytes: Uint8Array | string): void {
    this.socket.write(typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes);
  }

  async #fill(n: number): Promise<boolean> {
    while (this.#buf.byteLength < n) {
      if (this.#ended) return false;
      await new Promise<void>((r) => this.#wake = r);
      this.#wake = null;
    }
    return true;
  }

  /** The next frame's payload, or null if the connection ended first (closed or reset). */
  async readFrame(): Promise<Uint8Array | null> {
    if (!await this.#fill(FRAME_HEADER_SIZE)) return null;
    const length = getFrameLength(this.#buf, 0);
    if (!await this.#fill(FRAME_HEADER_SIZE + length)) return null;
    const payload = this.#buf.slice(FRAME_HEADER_SIZE, FRAME_HEADER_SIZE + length);
    this.#buf = this.#buf.slice(FRAME_HEADER_SIZE + length);
    return payload;
  }

  /** The first frame of an answer as type letter and JSON, or null if the server closed without one. */
  async answer(): Promise<{ type: string; json: Record<string, unknown> } | null> {
    const frame = await this.readFrame();
    if (frame === null) return null;
    return {
      type: String.fromCharCode(frame[0]),
      json: decodeJson(frame.subarray(1)) as Record<string, unknown>,
    };
  }

  /** Resolves once the server has closed the connection. */
  async ended(): Promise<void> {
    while (await this.#fill(this.#buf.byteLength + 1)) this.#buf = new Uint8Array(0);
  }

  /** Closes our end. */
  close(): void {
    this.socket.destroy();
  }
}

const request = (r: Partial<Request>) => encodeRequest({ v: PROTOCOL_VERSION, ...r } as Request);
const PING = request({ op: "ping" });

/** One ping from `from`: the first answer frame's type ("H": served, "E": an error), or "closed". */
async function pingFrom(port: number, from: string, prefix: Uint8Array | string = ""): Promise<string> {
  const conn = await SourcedConn.open(port, from);
  try {
    conn.send(
      prefix === ""
        ? PING
        : concat(typeof prefix === "string" ? new TextEncoder().encode(prefix) : prefix, PING),
    );
    const a = await conn.answer();
    return a === null ? "closed" : a.type === "E" ? `E ${a.json.code}` : a.type;
  } finally {
    conn.close();
  }
}

async function serve(root: string, ...flags: string[]): Promise<TestServer> {
  return await startServer(["--root", root, "--workers", "1", "--listen", "127.0.0.1:0", ...flags]);
}

/** Lines of the master's log that refused `address`. */
const refusalsOf = (server: TestServer, address: string) =>
  server.log.filter((l) => /master\[\d+\]: refused /.test(l) && l.includes(`refused ${address}:`));

Deno.test("--deny closes a denied IPv4 peer before any answer and logs it once a minute; others are served", async () => {
  await using dir = await tempDir();
  const server = await serve(dir.path, "--deny", "127.0.0.2/32", "--deny", "127.0.0.3");
  try {
    const port = server.ports[0];
    for (let i = 0; i < 3; i++) assert.equal(await pingFrom(port, "127.0.0.2"), "closed");
    assert.equal(await pingFrom(port, "127.0.0.1"), "H");
    // Another address's refusal comes after those in the master's log: by then all three were handled.
    assert.equal(await pingFrom(port, "127.0.0.3"), "closed");
    await server.waitForLog(/refused 127\.0\.0\.3: denied by --deny 127\.0\.0\.3/);
    const lines = refusalsOf(server, "127.0.0.2");
    assert.equal(lines.length, 1, lines.join("\n"));
    assert.match(lines[0], /denied by --deny 127\.0\.0\.2\/32/);
  } finally {
    await server.stop();
  }
});

Deno.test("--allow serves only the addresses inside it; --deny wins over --allow", async () => {
  await using dir = await tempDir();
  const server = await serve(dir.path, "--allow", "127.0.0.0/30", "--deny", "127.0.0.2");
  try {
    const port = server.ports[0];
    assert.equal(await pingFrom(port, "127.0.0.1"), "H"); // inside the allowed /30
    assert.equal(await pingFrom(port, "127.0.0.3"), "H");
    assert.equal(await pingFrom(port, "127.0.0.2"), "closed"); // allowed, but denied
    assert.equal(await pingFrom(port, "127.0.0.5"), "closed"); // outside every --allow
    await server.waitForLog(/refused 127\.0\.0\.5: not inside any --allow/);
  } finally {
    await server.stop();
  }
});

Deno.test("IPv6: --deny ::1 refuses the loopback peer; --allow ::1/128 serves it, --allow of IPv4 only does not", async () => {
  await using dir = await tempDir();
  for (
    const [flags, expected] of [
      [["--deny", "::1"], "closed"],
      [["--allow", "::1/128"], "H"],
      [["--allow", "127.0.0.0/8"], "closed"],
    ] as const
  ) {
    const server = await startServer(["--root", dir.path, "--workers", "1", "--listen", "[::1]:0", ...flags]);
    try {
      assert.equal(await pingFrom(server.ports[0], "::1"), expected, flags.join(" "));
      if (expected === "closed") await server.waitForLog(/refused 0:0:0:0:0:0:0:1: /);
    } finally {
      await server.stop();
    }
  }
});

Deno.test("a bad CIDR is a one-line usage error naming it", async () => {
  for (
    const [flag, text] of [["--allow", "10.0.0.300/8"], ["--deny", "10.0.0.1/8"], [
      "--proxy-protocol",
      "::1/129",
    ]]
  ) {
    const { code, stderr } = await runServerToExit(["--root", ".", "--listen", "127.0.0.1:0", flag, text]);
    assert.equal(code, 2);
    assert.equal(stderr.trim().split("\n").length, 1, stderr);
    assert.ok(stderr.includes(`${flag}: '${text}' is not a CIDR`), stderr);
  }
});

Deno.test("--max-conns-per-ip: one more connection from an address is BUSY, others are served, and it recovers", async () => {
  await using dir = await tempDir();
  const server = await serve(dir.path, "--max-conns-per-ip", "2");
  const held: SourcedConn[] = [];
  try {
    const port = server.ports[0];
    // Two connections from 127.0.0.2, open (between requests) for as long as they are held; their answer
    // proves the master handed them to a worker.
    for (let i = 0; i < 2; i++) {
      const { conn, type } = await holdOpen(port, "127.0.0.2");
      held.push(conn);
      assert.equal(type, "H");
    }
    assert.equal(await pingFrom(port, "127.0.0.2"), "E BUSY");
    assert.equal(await pingFrom(port, "127.0.0.3"), "H"); // another address is not limited by it
    await server.waitForLog(/refused 127\.0\.0\.2: answered BUSY: 2 connections open from it/);
    // One ends: the worker tells the master, and 127.0.0.2 is served again.
    held.shift()!.close();
    let answer = "";
    await eventually(
      "127.0.0.2 is served again",
      async () => (answer = await pingFrom(port, "127.0.0.2")) === "H",
    );
    assert.equal(answer, "H");
    // Everything ends: every connection made (the pings too) must have been counted out again, or two
    // held at once would stay BUSY for good.
    while (held.length > 0) held.pop()!.close();
    await eventually("two connections from 127.0.0.2 are held again", async () => {
      const pair = await Promise.all([holdOpen(port, "127.0.0.2"), holdOpen(port, "127.0.0.2")]);
      held.push(...pair.map((p) => p.conn));
      if (pair.every((p) => p.type === "H")) return true;
      while (held.length > 0) held.pop()!.close();
      return false;
    });
    assert.equal(await pingFrom(port, "127.0.0.2"), "E BUSY");
  } finally {
    for (const conn of held) conn.close();
    await server.stop();
  }
});

/** A connection from `from` that pings and reads the answer's first frame: open until it is closed. */
async function holdOpen(
  port: number,
  from: string,
): Promise<{ conn: SourcedConn; type: string | undefined }> {
  const conn = await SourcedConn.open(port, from);
  conn.send(PING);
  return { conn, type: (await conn.answer())?.type };
}

/** A PROXY v2 header: PROXY (or LOCAL) over TCP, from `source` (4 or 16 bytes) port `port`. */
function proxyV2(source: number[] | null, port = 0, command: "PROXY" | "LOCAL" = "PROXY"): Uint8Array {
  const body: number[] = [];
  let family = 0x00;
  if (source !== null) {
    family = source.length === 4 ? 0x11 : 0x21;
    const destination = new Array(source.length).fill(0);
    destination[destination.length - 1] = 1;
    body.push(...source, ...destination, port >> 8, port & 0xff, 0x1c, 0xfc);
  }
  body.push(0x04, 0x00, 0x01, 0x00); // a NOOP TLV: TLVs are skipped
  return new Uint8Array([
    ...PROXY_V2_SIGNATURE,
    command === "PROXY" ? 0x21 : 0x20,
    family,
    body.length >> 8,
    body.length & 0xff,
    ...body,
  ]);
}

Deno.test("--proxy-protocol: v1 and v2 headers from a listed proxy name the client that is logged and allow-listed", async () => {
  await using dir = await tempDir();
  const server = await serve(
    dir.path,
    "--proxy-protocol",
    "127.0.0.2/32",
    "--deny",
    "192.0.2.0/24",
    "--request-log",
    "-",
    "--log-health", // the pings' lines name the client
  );
  try {
    const port = server.ports[0];
    assert.equal(await pingFrom(port, "127.0.0.2", "PROXY TCP4 198.51.100.7 127.0.0.1 5555 7420\r\n"), "H");
    await server.waitForLog(/peer=198\.51\.100\.7:5555 .*request=PING/);
    const v6 = [0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 0x09];
    assert.equal(await pingFrom(port, "127.0.0.2", proxyV2(v6, 6666)), "H");
    await server.waitForLog(/peer=\[2001:db8::9\]:6666 .*request=PING/);
    // A v4 client in v2, its header arriving in two pieces (the master waits for the rest without blocking).
    const conn = await SourcedConn.open(port, "127.0.0.2");
    const header = proxyV2([203, 0, 113, 4], 7777);
    conn.send(header.subarray(0, 10));
    conn.send(concat(header.subarray(10), PING));
    assert.equal((await conn.answer())?.type, "H");
    conn.close();
    await server.waitForLog(/peer=203\.0\.113\.4:7777 .*request=PING/);
    // LOCAL (a health check of the proxy's own) and v1 UNKNOWN: the proxy's address stands.
    assert.equal(await pingFrom(port, "127.0.0.2", proxyV2(null, 0, "LOCAL")), "H");
    assert.equal(await pingFrom(port, "127.0.0.2", "PROXY UNKNOWN\r\n"), "H");
    await server.waitForLog(/peer=127\.0\.0\.2:\d+ .*request=PING/);
    // The allow-lists see the client the header names, not the proxy.
    assert.equal(await pingFrom(port, "127.0.0.2", "PROXY TCP4 192.0.2.9 127.0.0.1 5555 7420\r\n"), "closed");
    await server.waitForLog(/refused 192\.0\.2\.9: denied by --deny 192\.0\.2\.0\/24/);
    // A peer not listed is served as usual without a header.
    assert.equal(await pingFrom(port, "127.0.0.1"), "H");
  } finally {
    await server.stop();
  }
});

Deno.test("--proxy-protocol: a header from a peer not listed, a malformed header, and a listed peer without one are closed", async () => {
  await using dir = await tempDir();
  const server = await serve(
    dir.path,
    "--proxy-protocol",
    "127.0.0.2",
    "--proxy-protocol",
    "127.0.0.3",
    "--proxy-protocol",
    "127.0.0.4",
    "--idle-timeout",
    "1",
  );
  try {
    const port = server.ports[0];
    assert.equal(await pingFrom(port, "127.0.0.1", "PROXY TCP4 10.1.1.1 127.0.0.1 5555 7420\r\n"), "closed");
    await server.waitForLog(
      /refused 127\.0\.0\.1: sent a PROXY header but is not listed with --proxy-protocol/,
    );
    assert.equal(
      await pingFrom(port, "127.0.0.2", "PROXY TCP4 10.1.1.999 127.0.0.1 5555 7420\r\n"),
      "closed",
    );
    await server.waitForLog(
      /refused 127\.0\.0\.2: proxy 127\.0\.0\.2 sent an invalid PROXY header: bad TCP4 address/,
    );
    assert.equal(await pingFrom(port, "127.0.0.3"), "closed"); // a plain request where the header belongs
    await server.waitForLog(
      /refused 127\.0\.0\.3: proxy 127\.0\.0\.3 sent an invalid PROXY header: no PROXY header/,
    );
    // A v2 header that claims more bytes than the limit.
    const huge = proxyV2([10, 0, 0, 1], 1);
    huge[14] = 0xff;
    assert.equal(await pingFrom(port, "127.0.0.2", huge), "closed");
    // Part of a header, then nothing: closed once the idle timeout has passed.
    const silent = await SourcedConn.open(port, "127.0.0.4");
    silent.send(proxyV2([10, 0, 0, 1], 1).subarray(0, 20));
    await silent.ended();
    silent.close();
    await server.waitForLog(/refused 127\.0\.0\.4: sent no whole PROXY header within 1s/);
    // The server still serves everyone else.
    assert.equal(await pingFrom(port, "127.0.0.1"), "H");
    assert.equal(await pingFrom(port, "127.0.0.2", "PROXY TCP4 10.1.1.1 127.0.0.1 5555 7420\r\n"), "H");
  } finally {
    await server.stop();
  }
});

Deno.test("--max-conns-per-ip counts the connections of a worker that died as ended", async () => {
  await using dir = await tempDir();
  const server = await serve(dir.path, "--max-conns-per-ip", "1");
  const held: SourcedConn[] = [];
  try {
    const port = server.ports[0];
    const first = await holdOpen(port, "127.0.0.2");
    held.push(first.conn);
    assert.equal(first.type, "H");
    assert.equal(await pingFrom(port, "127.0.0.2"), "E BUSY");
    const [worker] = await childPids(server.pid);
    Deno.kill(worker, "SIGKILL");
    await first.conn.ended(); // its connection died with it
    await server.waitForLog(/worker 1 is gone/);
    await eventually(
      "127.0.0.2 is served by the new worker",
      async () => (await pingFrom(port, "127.0.0.2")) === "H",
    );
  } finally {
    for (const conn of held) conn.close();
    await server.stop();
  }
});

Deno.test("--max-conns-per-ip behind --proxy-protocol counts the clients the proxy names, not the proxy", async () => {
  await using dir = await tempDir();
  const server = await serve(dir.path, "--max-conns-per-ip", "1", "--proxy-protocol", "127.0.0.2");
  const held: SourcedConn[] = [];
  try {
    const port = server.ports[0];
    const header = (client: string) => `PROXY TCP4 ${client} 127.0.0.1 5555 7420\r\n`;
    const conn = await SourcedConn.open(port, "127.0.0.2");
    held.push(conn);
    conn.send(concat(new TextEncoder().encode(header("198.51.100.7")), PING));
    assert.equal((await conn.answer())?.type, "H");
    assert.equal(await pingFrom(port, "127.0.0.2", header("198.51.100.7")), "E BUSY");
    assert.equal(await pingFrom(port, "127.0.0.2", header("198.51.100.8")), "H");
    await server.waitForLog(/refused 198\.51\.100\.7: answered BUSY: 1 connections open from it/);
  } finally {
    for (const conn of held) conn.close();
    await server.stop();
  }
});
