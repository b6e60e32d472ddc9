/**
 * The ferry client, for scripts and cron jobs: `get` fetches one file in request mode, `pull` receives the
 * file a classic-mode server pushes. Files are published atomically (see `publish.ts`): on any failure
 * the target is untouched, and the exit code says what went wrong (see {@link ExitCode}).
 *
 * Run `deno run -A client.ts --help` for the command line.
 *
 * @module
 */

import { basename, join } from "node:path";
import { parseArgs } from "node:util";
import { FrameReader, StallError, TruncatedError } from "./frame_reader.ts";
import {
  CLASSIC_CHUNK,
  decodeJson,
  encodeRequest,
  type ErrorBody,
  ErrorCode,
  FrameType,
  MAX_RESPONSE_FRAME,
  PROTOCOL_VERSION,
  type Request,
  type ResponseHeader,
} from "./framing.ts";
import { AtomicFile, LocalIoError } from "./publish.ts";

/** The client's exit codes: one per cause, so a script can act on them. */
export const ExitCode = {
  /** The file was fetched and published. */
  Ok: 0,
  /** An unexpected internal error (a bug: please report it). */
  Internal: 1,
  /** The command line is wrong. */
  Usage: 2,
  /** Could not connect, or a timeout expired. */
  Connect: 3,
  /** The server was busy. */
  Busy: 4,
  /** The server refused the path: not found, forbidden, or not a regular file. */
  NotFound: 5,
  /** The server's answer broke the protocol, ended early, or reported an error of its own. */
  Protocol: 6,
  /** The file arrived but failed verification (size). */
  Verification: 7,
  /** A local file could not be written. */
  LocalIo: 8,
} as const;

/** A failure with the exit code it maps to; its message is the one line printed on stderr. */
export class ClientError extends Error {
  /** The exit code for this failure. */
  readonly exitCode: number;
  /**
   * @param exitCode one of {@link ExitCode}
   * @param message one line saying what went wrong
   */
  constructor(exitCode: number, message: string) {
    super(message);
    this.name = "ClientError";
    this.exitCode = exitCode;
  }
}

const HELP = `ferry client: fetch files from a ferry server, atomically.

Usage:
  client get HOST:PORT PATH [-o OUT]   fetch PATH (request mode); OUT defaults to PATH's base name,
                                       '-o -' writes to standard output
  client pull HOST:PORT [-o DIR|OUT]   receive the file a classic-mode server pushes: into DIR under the
                                       name the server gives (default .), or as OUT if OUT is not a directory

Options:
  -o, --output OUT         where to write (see above)
  --connect-timeout SECS   give up connecting after this long (default 10)
  --stall-timeout SECS     give up when no byte arrives for this long (default 30)
  -q, --quiet              print nothing but errors
  -h, --help               show this help

The file is written to a temporary file beside the target and renamed over it only when complete;
on failure the target is untouched.

Exit codes:
  0 ok               1 internal error (a bug)     2 usage
  3 connect/timeout  4 server busy                5 not found / forbidden
  6 protocol error   7 verification failed        8 local I/O error`;

/** What the command line asks for. */
interface ClientOptions {
  command: "get" | "pull";
  hostname: string;
  port: number;
  path: string;
  output: string | null;
  connectTimeoutMs: number;
  stallTimeoutMs: number;
  quiet: boolean;
}

function seconds(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback * 1000;
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) {
    throw new ClientError(ExitCode.Usage, `--${name}: '${text}' is not a positive number`);
  }
  return n * 1000;
}

/** Splits `HOST:PORT` or `[IPV6]:PORT`; hostnames are allowed on the client side. */
export function parseServerAddress(text: string): { hostname: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:\[\]]+)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 1 || port > 65535) {
    throw new ClientError(ExitCode.Usage, `'${text}' is not HOST:PORT (IPv6 as [ADDR]:PORT, port 1-65535)`);
  }
  return { hostname: m[1] ?? m[2], port };
}

function parseClientArgs(argv: string[]): ClientOptions | "help" {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        output: { type: "string", short: "o" },
        "connect-timeout": { type: "string" },
        "stall-timeout": { type: "string" },
        quiet: { type: "boolean", short: "q" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    throw new ClientError(ExitCode.Usage, (e as Error).message);
  }
  const { values: v, positionals: p } = parsed;
  if (v.help) return "help";
  const [command, address, path, ...extra] = p;
  if (command !== "get" && command !== "pull") {
    throw new ClientError(
      ExitCode.Usage,
      command ? `unknown command '${command}'` : "give a command: get or pull",
    );
  }
  if (address === undefined) {
    throw new ClientError(ExitCode.Usage, `${command}: give the server as HOST:PORT`);
  }
  if (command === "get" && path === undefined) {
    throw new ClientError(ExitCode.Usage, "get: give the PATH to fetch");
  }
  const surplus = command === "pull" ? [path, ...extra] : extra;
  if (surplus.some((x) => x !== undefined)) {
    throw new ClientError(
      ExitCode.Usage,
      `${command}: unexpected argument '${surplus.find((x) => x !== undefined)}'`,
    );
  }
  return {
    command,
    ...parseServerAddress(address),
    path: path ?? "",
    output: v.output ?? null,
    connectTimeoutMs: seconds("connect-timeout", v["connect-timeout"], 10),
    stallTimeoutMs: seconds("stall-timeout", v["stall-timeout"], 30),
    quiet: v.quiet ?? false,
  };
}

/** Connects within the connect timeout. */
async function connect(options: ClientOptions): Promise<Deno.TcpConn> {
  const where = options.hostname.includes(":")
    ? `[${options.hostname}]:${options.port}`
    : `${options.hostname}:${options.port}`;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new ClientError(
            ExitCode.Connect,
            `cannot connect to ${where}: no answer within ${options.connectTimeoutMs / 1000}s`,
          ),
        ),
      options.connectTimeoutMs,
    );
  });
  try {
    const conn = await Promise.race([
      Deno.connect({ hostname: options.hostname, port: options.port }),
      timeout,
    ]);
    conn.setNoDelay(true);
    return conn;
  } catch (e) {
    if (e instanceof ClientError) throw e;
    throw new ClientError(ExitCode.Connect, `cannot connect to ${where}: ${(e as Error).message}`);
  } finally {
    clearTimeout(timer);
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.byteLength) done += await conn.write(bytes.subarray(done));
}

/** Maps a server's error frame to a client error with the right exit code. */
function fromErrorFrame(body: ErrorBody, path: string): ClientError {
  const code = body.code === ErrorCode.Busy
    ? ExitCode.Busy
    : [ErrorCode.NotFound, ErrorCode.Forbidden, ErrorCode.NotAFile].includes(body.code as never)
    ? ExitCode.NotFound
    : ExitCode.Protocol;
  const retry = body.retryAfterMs !== undefined ? ` (retry after ${body.retryAfterMs}ms)` : "";
  return new ClientError(
    code,
    `server refused ${JSON.stringify(path)}: ${body.code}: ${body.message}${retry}`,
  );
}

function protocolError(message: string): ClientError {
  return new ClientError(ExitCode.Protocol, `protocol error: ${message}`);
}

/** Reads one control frame (Header or Error) of request mode and returns its type and JSON. */
async function readControlFrame(reader: FrameReader, what: string): Promise<{ type: number; body: unknown }> {
  const len = await reader.readLength(what);
  if (len <= 0 || len > MAX_RESPONSE_FRAME) throw protocolError(`${what} has length ${len}`);
  const payload = await reader.readExact(len, what);
  const type = payload[0];
  if (type !== FrameType.Header && type !== FrameType.Error) {
    throw protocolError(`expected ${what}, got frame type ${type}`);
  }
  try {
    return { type, body: decodeJson(payload.subarray(1)) };
  } catch {
    throw protocolError(`${what} is not valid JSON`);
  }
}

/** A place the body goes: a file published atomically, or standard output. */
interface Sink {
  write(chunk: Uint8Array): Promise<void>;
  commit(header: ResponseHeader): Promise<void>;
  abort(): Promise<void>;
}

function stdoutSink(): Sink {
  return {
    write: async (chunk) => {
      let done = 0;
      while (done < chunk.byteLength) done += await Deno.stdout.write(chunk.subarray(done));
    },
    commit: async () => {},
    abort: async () => {},
  };
}

/** A device or FIFO such as /dev/null: written in place, since it cannot be renamed over. */
async function deviceSink(target: string): Promise<Sink> {
  let device: Deno.FsFile;
  try {
    device = await Deno.open(target, { write: true });
  } catch (e) {
    throw new LocalIoError(`cannot open ${target}`, e);
  }
  return {
    write: async (chunk) => {
      try {
        let done = 0;
        while (done < chunk.byteLength) done += await device.write(chunk.subarray(done));
      } catch (e) {
        throw new LocalIoError(`cannot write ${target}`, e);
      }
    },
    commit: () => Promise.resolve(device.close()),
    abort: () => Promise.resolve(device.close()),
  };
}

/** Where the bytes for `target` go: standard output, a device, or an atomically published file. */
async function openSink(target: string): Promise<Sink> {
  if (target === "-") return coalescing(stdoutSink());
  const info = await Deno.stat(target).catch(() => null);
  if (info !== null && !info.isFile && !info.isDirectory) return coalescing(await deviceSink(target));
  return coalescing(await fileSink(target));
}

const COALESCE_BYTES = 1024 * 1024;

/**
 * Gathers small chunks (classic mode's 1000-byte frames) into 1 MiB writes; large chunks pass straight
 * through, so request mode's big reads are not copied.
 */
function coalescing(inner: Sink): Sink {
  const buffer = new Uint8Array(COALESCE_BYTES);
  let used = 0;
  const flush = async () => {
    if (used > 0) await inner.write(buffer.subarray(0, used));
    used = 0;
  };
  return {
    write: async (chunk) => {
      // A large chunk goes straight through, but only after what is buffered: order is the file's order.
      if (used + chunk.byteLength > buffer.byteLength || chunk.byteLength >= buffer.byteLength / 2) {
        await flush();
      }
      if (chunk.byteLength >= buffer.byteLength / 2) return inner.write(chunk);
      buffer.set(chunk, used);
      used += chunk.byteLength;
    },
    commit: async (header) => {
      await flush();
      await inner.commit(header);
    },
    abort: () => inner.abort(),
  };
}

async function fileSink(target: string): Promise<Sink> {
  const file = await AtomicFile.create(target);
  return {
    write: (chunk) => file.write(chunk),
    commit: (header) =>
      file.commit({
        mtimeNs: header.mtimeNs === undefined ? undefined : BigInt(header.mtimeNs),
        mode: header.mode,
      }),
    abort: () => file.abort(),
  };
}

/** `get`: one request, one response, published atomically. Returns bytes received. */
async function get(options: ClientOptions): Promise<number> {
  const target = options.output ?? basename(options.path);
  const conn = await connect(options);
  const reader = new FrameReader(conn, { stallTimeoutMs: options.stallTimeoutMs });
  let sink: Sink | null = null;
  try {
    const request: Request = { v: PROTOCOL_VERSION, op: "get", path: options.path };
    await writeAll(conn, encodeRequest(request));
    const { type, body } = await readControlFrame(reader, "the response header");
    if (type === FrameType.Error) throw fromErrorFrame(body as ErrorBody, options.path);
    const header = body as ResponseHeader;
    if (!Number.isSafeInteger(header.size) || header.size! < 0) {
      throw protocolError("header has no valid size");
    }
    sink = await openSink(target);
    let received = 0;
    for (;;) {
      const len = await reader.readLength("a data frame");
      if (len === 0) break;
      if (len < 0 || len > MAX_RESPONSE_FRAME) throw protocolError(`frame length ${len}`);
      const first = await reader.readExact(1, "a frame type");
      if (first[0] === FrameType.Error) {
        const json = await reader.readExact(len - 1, "an error frame");
        throw fromErrorFrame(decodeJson(json) as ErrorBody, options.path);
      }
      if (first[0] === FrameType.Trailer) {
        await reader.readExact(len - 1, "a trailer frame"); // the SHA-256: verified from protocol v1 on
        continue;
      }
      if (first[0] !== FrameType.Data) throw protocolError(`unexpected frame type ${first[0]} in the body`);
      for await (const chunk of reader.readChunks(len - 1, "a data frame")) {
        received += chunk.byteLength;
        if (received > header.size!) throw protocolError(`more than the ${header.size} bytes announced`);
        await sink.write(chunk);
      }
    }
    if (received !== header.size) {
      throw new ClientError(
        ExitCode.Verification,
        `received ${received} bytes, the server announced ${header.size}`,
      );
    }
    await sink.commit(header);
    sink = null;
    return received;
  } finally {
    reader.dispose();
    await sink?.abort();
    try {
      conn.close();
    } catch { /* closed by the stall watchdog */ }
  }
}

/** A file name a classic server may give: a plain base name, nothing that walks directories. */
function checkPushedName(name: string): string {
  if (name === "" || name === "." || name === ".." || name.includes("/") || name.includes("\0")) {
    throw protocolError(`the server's file name ${JSON.stringify(name)} is not a plain file name`);
  }
  return name;
}

/** `pull`: receive the pushed file in classic (seed) framing, published atomically. */
async function pull(options: ClientOptions): Promise<number> {
  const conn = await connect(options);
  const reader = new FrameReader(conn, { stallTimeoutMs: options.stallTimeoutMs });
  let sink: Sink | null = null;
  try {
    const nameLen = await reader.readLength("the name frame");
    if (nameLen <= 0 || nameLen > CLASSIC_CHUNK) throw protocolError(`name frame length ${nameLen}`);
    let name: string;
    try {
      name = new TextDecoder("utf-8", { fatal: true }).decode(
        await reader.readExact(nameLen, "the name frame"),
      );
    } catch (e) {
      if (e instanceof TruncatedError) throw e;
      throw protocolError("the file name is not UTF-8");
    }
    const output = options.output ?? ".";
    const outputIsDir = (await Deno.stat(output).catch(() => null))?.isDirectory ?? false;
    sink = await openSink(outputIsDir ? join(output, checkPushedName(name)) : output);
    let received = 0;
    for (;;) {
      const len = await reader.readLength("a content frame");
      if (len === 0) break;
      if (len < 0 || len > CLASSIC_CHUNK) {
        throw protocolError(`content frame length ${len} (classic frames are 0-1000)`);
      }
      for await (const chunk of reader.readChunks(len, "a content frame")) await sink.write(chunk);
      received += len;
    }
    await sink.commit({ v: PROTOCOL_VERSION, status: "ok", size: received });
    sink = null;
    return received;
  } finally {
    reader.dispose();
    await sink?.abort();
    try {
      conn.close();
    } catch { /* closed by the stall watchdog */ }
  }
}

/** Turns any failure into a ClientError with its exit code. */
function classify(e: unknown): ClientError {
  if (e instanceof ClientError) return e;
  if (e instanceof StallError) return new ClientError(ExitCode.Connect, e.message);
  if (e instanceof TruncatedError) return protocolError(e.message);
  if (e instanceof LocalIoError) return new ClientError(ExitCode.LocalIo, e.message);
  if (e instanceof Deno.errors.ConnectionReset || e instanceof Deno.errors.BrokenPipe) {
    return protocolError(`connection lost: ${(e as Error).message}`);
  }
  return new ClientError(ExitCode.Internal, `internal error: ${e instanceof Error ? e.stack : String(e)}`);
}

/** Runs the client with `argv`; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  try {
    const options = parseClientArgs(argv);
    if (options === "help") {
      console.log(HELP);
      return ExitCode.Ok;
    }
    const started = performance.now();
    const bytes = options.command === "get" ? await get(options) : await pull(options);
    if (!options.quiet && options.output !== "-") {
      const secs = (performance.now() - started) / 1000;
      console.error(`ferry: ${options.command} done: ${bytes} bytes in ${secs.toFixed(3)}s`);
    }
    return ExitCode.Ok;
  } catch (e) {
    const error = classify(e);
    console.error(`ferry: ${error.message}`);
    return error.exitCode;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
