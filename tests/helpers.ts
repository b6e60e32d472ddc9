/**
 * Test helpers: start a real ferry server as a child process, run the real client, speak raw frames over
 * real sockets, and read /proc. Nothing here is mocked.
 *
 * @module
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { open, readdir, readFile, readlink } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { C, close, socketpair, tryRecv } from "../ffi/libc.ts";
import type { Body } from "../worker/bodies.ts";
import {
  decodeJson,
  encodeRequest,
  FRAME_HEADER_SIZE,
  getFrameLength,
  PROTOCOL_VERSION,
  putFrameLength,
  type Request,
} from "../framing.ts";
import { compareUtf8, folderDigest } from "../hashing.ts";

/**
 * The digest of each folder of a listing's entries (by folder path), as a client holding those versions
 * makes it for `known` (hashing.ts must be loaded).
 */
export function folderDigestsOf(entries: Record<string, unknown>[]): Map<string, string> {
  const folders = new Map<string, { name: string; etag: string }[]>();
  for (const { path, etag } of entries) {
    const slash = String(path).lastIndexOf("/");
    const folder = slash < 0 ? "" : String(path).slice(0, slash);
    if (!folders.has(folder)) folders.set(folder, []);
    folders.get(folder)!.push({ name: String(path).slice(slash + 1), etag: String(etag) });
  }
  return new Map(
    [...folders].map((
      [folder, files],
    ) => [folder, folderDigest(folder, files.sort((a, b) => compareUtf8(a.name, b.name)))]),
  );
}

/** Absolute path of a file of the repository. */
export function repoPath(relative: string): string {
  return fileURLToPath(new URL(`../${relative}`, import.meta.url));
}

/** A running server started by {@link startServer}. */
export interface TestServer {
  /** The master's process. */
  process: Deno.ChildProcess;
  /** The master's pid. */
  pid: number;
  /** The ports the server printed, in the order of its listeners. */
  ports: number[];
  /** Lines of stderr so far (the log), kept up to date. */
  log: string[];
  /**
   * Resolves with the first log line matching `pattern` (already printed or yet to come), looking only
   * at lines from index `from` of {@link TestServer.log} on.
   */
  waitForLog(pattern: RegExp, from?: number): Promise<string>;
  /** Sends a signal to the master. */
  kill(signal?: Deno.Signal): void;
  /** Stops the server (SIGTERM) and waits for it; returns its exit status. */
  stop(): Promise<Deno.CommandStatus>;
}

/** Starts the server through another program (e.g. as another user): `command args... deno-args...`. */
export interface Launcher {
  /** The program to run. */
  command: string;
  /** Its arguments, the last of them the deno executable to run. */
  args: string[];
  /** Environment added to the test's. */
  env?: Record<string, string>;
}

/**
 * Starts `server.ts` with `args` and waits until it says it is ready. Pass `--listen 127.0.0.1:0` to get
 * a free port; the ports printed are in `ports`.
 */
export async function startServer(args: string[], launch?: Launcher): Promise<TestServer> {
  const process = new Deno.Command(launch?.command ?? Deno.execPath(), {
    args: [...launch?.args ?? [], "run", "--allow-all", repoPath("server.ts"), ...args],
    env: launch?.env,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const { log, waitForLog, ended: pump } = watchLog(process.stderr);
  const ready = await waitForLog(/ready with \d+ workers/);
  if (ready === "") {
    await pump;
    await process.status;
    throw new Error(`server did not start:\n${log.join("\n")}`);
  }
  const ports = log.filter((l) => l.includes("listening on")).map((l) => Number(/:(\d+) \(/.exec(l)![1]));
  let status: Promise<Deno.CommandStatus> | null = null;
  return {
    process,
    pid: process.pid,
    ports,
    log,
    waitForLog,
    kill: (signal = "SIGTERM") => process.kill(signal),
    stop: () => {
      if (status === null) {
        try {
          process.kill("SIGTERM");
        } catch { /* already gone */ }
        status = Promise.all([process.status, pump]).then(([s]) => s);
      }
      return status;
    },
  };
}

/** The lines of a process's output, kept as they come, and a way to wait for one. */
export interface LogWatch {
  /** The lines so far. */
  log: string[];
  /** The first line matching `pattern` from index `from` on (already there or yet to come); "" at the end. */
  waitForLog(pattern: RegExp, from?: number): Promise<string>;
  /** Resolves when the output ends (every process that held it has closed it). */
  ended: Promise<void>;
}

/** Reads `stream` (a child's stderr) line by line into a {@link LogWatch}. */
export function watchLog(stream: ReadableStream<Uint8Array>): LogWatch {
  const log: string[] = [];
  const waiters: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  let done = false;
  const ended = (async () => {
    const lines = stream.pipeThrough(new TextDecoderStream()).pipeThrough(lineSplitter());
    for await (const line of lines) {
      log.push(line);
      for (const w of waiters.splice(0)) {
        if (w.pattern.test(line)) w.resolve(line);
        else waiters.push(w);
      }
    }
    done = true;
    for (const w of waiters.splice(0)) w.resolve("");
  })();
  const waitForLog = (pattern: RegExp, from = 0) => {
    const found = log.slice(from).find((l) => pattern.test(l));
    if (found !== undefined || done) return Promise.resolve(found ?? "");
    return new Promise<string>((resolve) => waiters.push({ pattern, resolve }));
  };
  return { log, waitForLog, ended };
}

/** Runs `server.ts` with `args` expecting it to exit at once (a usage error): its exit code and stderr. */
export async function runServerToExit(args: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", repoPath("server.ts"), ...args],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

function lineSplitter(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, controller) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop()!;
      for (const p of parts) controller.enqueue(p);
    },
    flush(controller) {
      if (rest) controller.enqueue(rest);
    },
  });
}

/** Result of {@link runClient}. */
export interface ClientResult {
  /** Exit code. */
  code: number;
  /** Everything printed on stderr. */
  stderr: string;
  /** Everything printed on stdout. */
  stdout: Uint8Array;
}

/** Runs `client.ts` with `args` in `cwd` and waits for it. */
export async function runClient(args: string[], cwd?: string): Promise<ClientResult> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", repoPath("client.ts"), ...args],
    cwd,
    stdin: "null",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr), stdout: out.stdout };
}

/** SHA-256 of a file, hex. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  const file = await open(path);
  try {
    for await (const chunk of file.createReadStream()) hash.update(chunk as Uint8Array);
  } finally {
    await file.close();
  }
  return hash.digest("hex");
}

/** SHA-256 of bytes, hex. */
export function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Writes a file of `size` pseudo-random bytes (deterministic per size) and returns its path. */
export async function makeFile(dir: string, name: string, size: number): Promise<string> {
  const path = `${dir}/${name}`;
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  const block = new Uint8Array(Math.min(size, 1 << 20));
  let seed = size + 1;
  for (let i = 0; i < block.length; i++) {
    seed = (seed * 1103515245 + 12345) >>> 0;
    block[i] = seed >>> 24;
  }
  let left = size;
  let round = 0;
  while (left > 0) {
    const n = Math.min(left, block.length);
    block[0] = round++ & 0xff; // blocks differ, so a misplaced block changes the hash
    let done = 0;
    while (done < n) done += await file.write(block.subarray(done, n));
    left -= n;
  }
  file.close();
  return path;
}

/** Creates a file of `size` bytes that costs no disk (a hole) and returns its path. */
export async function sparseFile(dir: string, name: string, size: number): Promise<string> {
  const path = `${dir}/${name}`;
  await Deno.writeFile(path, new Uint8Array(0));
  await Deno.truncate(path, size);
  return path;
}

/** One frame read by {@link RawConnection}: the length and the payload. */
export interface RawFrame {
  /** The length prefix. */
  length: number;
  /** The payload (type byte first in request mode). */
  payload: Uint8Array;
}

/** A plain TCP connection for speaking (and breaking) the protocol by hand. */
export class RawConnection {
  readonly #conn: Deno.TcpConn;
  #buf = new Uint8Array(0);
  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
  }
  /** Connects to `hostname:port`. */
  static async open(port: number, hostname = "127.0.0.1"): Promise<RawConnection> {
    return new RawConnection(await Deno.connect({ hostname, port }));
  }
  /** The client's port of this connection. */
  get localPort(): number {
    return (this.#conn.localAddr as Deno.NetAddr).port;
  }
  /** Writes all of `bytes`. */
  async send(bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.byteLength) done += await this.#conn.write(bytes.subarray(done));
  }
  /** Sends a request frame. */
  sendRequest(request: Partial<Request> & Record<string, unknown>): Promise<void> {
    return this.send(encodeRequest({ v: PROTOCOL_VERSION, ...request } as Request));
  }
  /** Half-closes: the server sees end of input. */
  closeWrite(): Promise<void> {
    return this.#conn.closeWrite();
  }
  /**
   * Reads until `n` bytes are buffered (false if the connection ends first). The pieces are joined once,
   * not at every read: a frame of many MiB would otherwise be copied over and over.
   */
  async #fill(n: number): Promise<boolean> {
    if (this.#buf.byteLength >= n) return true;
    const parts = [this.#buf];
    let size = this.#buf.byteLength;
    let ended = false;
    while (size < n) {
      const chunk = new Uint8Array(Math.max(256 * 1024, n - size));
      const got = await this.#conn.read(chunk);
      if (got === null) {
        ended = true;
        break;
      }
      parts.push(chunk.subarray(0, got));
      size += got;
    }
    const joined = new Uint8Array(size);
    let at = 0;
    for (const part of parts) {
      joined.set(part, at);
      at += part.byteLength;
    }
    this.#buf = joined;
    return !ended;
  }
  /** Reads exactly `n` bytes, or null if the connection ended first. */
  async readBytes(n: number): Promise<Uint8Array | null> {
    if (!await this.#fill(n)) return null;
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }
  /** Reads one frame, or null at end of stream. */
  async readFrame(): Promise<RawFrame | null> {
    const head = await this.readBytes(FRAME_HEADER_SIZE);
    if (head === null) return null;
    const length = getFrameLength(head, 0);
    const payload = length > 0 ? await this.readBytes(length) : new Uint8Array(0);
    if (payload === null) throw new Error(`connection ended inside a frame of ${length} bytes`);
    return { length, payload };
  }
  /**
   * Reads a whole request-mode response: frames up to and including the end frame.
   * Returns the type letters, the parsed JSON of control frames, and the data bytes joined.
   */
  async readResponse(): Promise<{ types: string; json: Record<string, unknown>[]; data: Uint8Array }> {
    let types = "";
    const json: Record<string, unknown>[] = [];
    const parts: Uint8Array[] = [];
    for (;;) {
      const frame = await this.readFrame();
      if (frame === null) throw new Error(`connection ended after frames '${types}'`);
      if (frame.length === 0) break;
      const type = String.fromCharCode(frame.payload[0]);
      types += type;
      if (type === "D") parts.push(frame.payload.subarray(1));
      else json.push(decodeJson(frame.payload.subarray(1)) as Record<string, unknown>);
    }
    const data = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
    let at = 0;
    for (const p of parts) {
      data.set(p, at);
      at += p.byteLength;
    }
    return { types, json, data };
  }
  /** True if the server closed the connection (reads end of stream) without sending more. */
  async isClosedByPeer(): Promise<boolean> {
    return !await this.#fill(this.#buf.byteLength + 1);
  }
  /** Closes the connection. */
  close(): void {
    try {
      this.#conn.close();
    } catch { /* already closed */ }
  }
}

/** One `get` (`request` adds to `{op: "get"}`) on a connection of its own, closed afterwards. */
export async function getOnce(
  port: number,
  request: Record<string, unknown>,
): ReturnType<RawConnection["readResponse"]> {
  const conn = await RawConnection.open(port);
  try {
    await conn.sendRequest({ op: "get", ...request });
    return await conn.readResponse();
  } finally {
    conn.close();
  }
}

/** Pids of the direct children of `pid`, from /proc. */
export async function childPids(pid: number): Promise<number[]> {
  const out: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = await readFile(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) out.push(Number(entry));
    } catch { /* gone meanwhile */ }
  }
  return out.sort((a, b) => a - b);
}

/** True while a process exists and is not a zombie. */
export async function isAlive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/** The targets of a process's open fds, from /proc/PID/fd (e.g. `socket:[1234]`, `anon_inode:[eventpoll]`). */
export async function openFds(pid: number): Promise<Map<number, string>> {
  const fds = new Map<number, string>();
  for (const entry of await readdir(`/proc/${pid}/fd`)) {
    try {
      fds.set(Number(entry), await readlink(`/proc/${pid}/fd/${entry}`));
    } catch { /* closed meanwhile */ }
  }
  return fds;
}

/** Inodes of the sockets a process holds. */
export async function socketInodes(pid: number): Promise<Set<string>> {
  const inodes = new Set<string>();
  for (const target of (await openFds(pid)).values()) {
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m) inodes.add(m[1]);
  }
  return inodes;
}

/** Inodes of all listening TCP sockets (IPv4 and IPv6), from /proc/net. */
export async function listeningInodes(): Promise<Set<string>> {
  const inodes = new Set<string>();
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    const lines = (await readFile(file, "utf8")).trim().split("\n").slice(1);
    for (const line of lines) {
      const cols = line.trim().split(/\s+/);
      if (cols[3] === "0A") inodes.add(cols[9]); // state LISTEN; inode column
    }
  }
  return inodes;
}

/**
 * Re-checks `condition` until it holds, yielding to the event loop between checks; fails after
 * `limitMs`. For conditions only observable from outside (a process gone, an fd count), not for timing.
 */
export async function eventually(
  what: string,
  condition: () => Promise<boolean>,
  limitMs = 20_000,
): Promise<void> {
  const end = performance.now() + limitMs;
  while (!await condition()) {
    if (performance.now() > end) throw new Error(`still not true after ${limitMs}ms: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A fresh temporary directory, removed by the returned function. */
export async function tempDir(): Promise<{ path: string; [Symbol.asyncDispose](): Promise<void> }> {
  const path = await Deno.makeTempDir({ prefix: "ferry-test-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

/** Drains what is waiting on socket `fd` into `into`. */
export function drain(fd: number, into: number[]): void {
  const buf = new Uint8Array(64 * 1024);
  for (let n = tryRecv(fd, buf); n > 0; n = tryRecv(fd, buf)) into.push(...buf.subarray(0, n));
}

/** A connected pair of nonblocking Unix stream sockets, closed when disposed. */
export function socketPair(): { ours: number; theirs: number } & Disposable {
  const [ours, theirs] = socketpair(C.AF_UNIX, C.SOCK_STREAM | C.SOCK_NONBLOCK | C.SOCK_CLOEXEC);
  return {
    ours,
    theirs,
    [Symbol.dispose]() {
      close(ours);
      close(theirs);
    },
  };
}

/** Everything `body` sends, through a real socket pair, pumping at most `step` bytes at a time. */
export function receiveAll(body: Body, step = Infinity): Uint8Array {
  using pair = socketPair();
  const received: number[] = [];
  while (body.pump(pair.ours, step).status !== "done") drain(pair.theirs, received);
  drain(pair.theirs, received);
  return new Uint8Array(received);
}

/**
 * The seed's sender, written naively: `while ((len = read(fd, buf, 1000)) > 0) send(len, buf)`, then the
 * int 0. Lengths in little-endian, as the seed's host byte order on x86.
 */
export function naiveSeedBody(file: Uint8Array): Uint8Array {
  const parts: number[] = [];
  const int32 = (n: number) => parts.push(n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, (n >>> 24) & 0xff);
  for (let at = 0; at < file.byteLength; at += 1000) {
    const chunk = file.subarray(at, Math.min(at + 1000, file.byteLength));
    int32(chunk.byteLength);
    parts.push(...chunk);
  }
  int32(0);
  return new Uint8Array(parts);
}

/**
 * `n` pseudo-random bytes (a linear congruential generator: the same for the same `n`), so that a byte, or a
 * whole block, out of place shows: a short repeating pattern could hide a block sent from the wrong offset.
 */
export function patterned(n: number): Uint8Array {
  const bytes = new Uint8Array(n);
  for (let i = 0, state = n * 7919 + 17; i < n; i++) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    bytes[i] = state >>> 24;
  }
  return bytes;
}

/**
 * Every regular file below `root` (relative path) with its SHA-256, part files included; the mirror's own
 * state folder (`.ferry/` at the top) is left out, so a mirrored copy compares equal to its source.
 */
export async function treeOf(root: string): Promise<Record<string, string>> {
  const files: Record<string, string> = {};
  const walk = async (rel: string) => {
    for await (const entry of Deno.readDir(rel === "" ? root : `${root}/${rel}`)) {
      const path = rel === "" ? entry.name : `${rel}/${entry.name}`;
      if (path === ".ferry") continue;
      if (entry.isDirectory) await walk(path);
      else files[path] = await sha256File(`${root}/${path}`);
    }
  };
  await walk("");
  return files;
}

/** Reads one request frame from `conn` (a fake server's side of a connection), as JSON. */
export async function readRequest(conn: Deno.Conn): Promise<Record<string, unknown>> {
  const buf = new Uint8Array(64 * 1024);
  let got = 0;
  while (got < FRAME_HEADER_SIZE || got < FRAME_HEADER_SIZE + getFrameLength(buf, 0)) {
    const n = await conn.read(buf.subarray(got));
    if (n === null) throw new Error("the client closed before its request was whole");
    got += n;
  }
  const body = buf.subarray(FRAME_HEADER_SIZE + 1, FRAME_HEADER_SIZE + getFrameLength(buf, 0));
  return decodeJson(body) as Record<string, unknown>;
}

/**
 * Writes `frames` as a fake server's answer on `conn`, then waits for the client to close. A client that
 * refuses what it got may close before the rest is written: that is its behaviour under test, not a
 * failure of the fake server.
 */
export async function answerUntilClosed(conn: Deno.Conn, frames: Uint8Array[]): Promise<void> {
  try {
    for (const frame of frames) await conn.write(frame);
    await conn.read(new Uint8Array(1));
  } catch (e) {
    if (!(e instanceof Deno.errors.BrokenPipe || e instanceof Deno.errors.ConnectionReset)) throw e;
  }
}

/** GET /metrics on `port`: the status line and the body. */
export async function scrape(port: number): Promise<{ status: string; body: string }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    // Connection: close, or the file port would keep the connection for the next request.
    await conn.write(
      new TextEncoder().encode("GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
    );
    const text = await new Response(conn.readable).text(); // the server closes after answering
    const split = text.indexOf("\r\n\r\n");
    return { status: text.slice(0, text.indexOf("\r\n")), body: text.slice(split + 4) };
  } finally {
    try {
      conn.close();
    } catch { /* closed by reading to the end */ }
  }
}

/** The samples of a scrape by series (`name{labels}` as printed); absent series read as 0 via {@link at}. */
export function samples(body: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of body.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const space = line.lastIndexOf(" ");
    out.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return out;
}

/**
 * `n` random bytes: incompressible, so no chunk of an old copy matches them by accident (and more than
 * `crypto.getRandomValues` gives in one call).
 */
export function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let at = 0; at < n; at += 65536) crypto.getRandomValues(out.subarray(at, Math.min(n, at + 65536)));
  return out;
}

/** `parts` joined, as a plain Uint8Array of its own (node's Buffer.concat may hand out a shared pool). */
export function concat(...parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

/** A request-mode frame of `type` carrying `body` as it is, as a fake server sends it. */
export function frame(type: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(FRAME_HEADER_SIZE + 1 + body.byteLength);
  putFrameLength(out, 0, 1 + body.byteLength);
  out[FRAME_HEADER_SIZE] = type;
  out.set(body, FRAME_HEADER_SIZE + 1);
  return out;
}

/**
 * A recursive, streamed, brief listing of the root over `conn`, with `request`'s fields added: the values of
 * its Entries frames, in order, and its Trailer's `listed`. An Error frame throws.
 */
export async function streamedListing(
  conn: RawConnection,
  request: Record<string, unknown>,
): Promise<{ values: Record<string, unknown>[]; listed: number }> {
  await conn.sendRequest({ op: "list", path: "", recursive: true, stream: true, brief: true, ...request });
  const values: Record<string, unknown>[] = [];
  let listed = -1;
  for (;;) {
    const frame = await conn.readFrame();
    if (frame === null) throw new Error("the connection ended before the end frame");
    if (frame.length === 0) return { values, listed };
    const type = String.fromCharCode(frame.payload[0]), body = frame.payload.subarray(1);
    if (type === "L") values.push(...(decodeJson(body) as { entries: Record<string, unknown>[] }).entries);
    if (type === "T") listed = (decodeJson(body) as { listed: number }).listed;
    if (type === "E") throw new Error(`the listing failed: ${new TextDecoder().decode(body)}`);
  }
}

/**
 * Sends the `list` request of `fields` (with `op` and `path` "") on a connection of its own to `port`, and
 * checks that the server refuses it with BAD_REQUEST saying `message`.
 */
export async function assertListRefused(
  port: number,
  fields: Record<string, unknown>,
  message: string,
): Promise<void> {
  const conn = await RawConnection.open(port);
  try {
    await conn.sendRequest({ op: "list", path: "", ...fields });
    const { types, json } = await conn.readResponse();
    assert.equal(types, "E", JSON.stringify(fields).slice(0, 80));
    assert.equal(json[0].code, "BAD_REQUEST");
    assert.equal(json[0].message, message);
  } finally {
    conn.close();
  }
}

/** Mounts a tmpfs of `size` at `dir`; false where this process may not mount (not root, no CAP_SYS_ADMIN). */
export async function mountTmpfs(dir: string, size: string): Promise<boolean> {
  try {
    const out = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch {
    return false;
  }
}
