/**
 * A request-mode connection seen from the client: connect within a timeout, send a request, read its
 * answer frame by frame with the {@link FrameReader} (stall watchdog included). One session serves many
 * requests over one persistent connection, as `mirror` does; a connection that broke, or that the
 * server closed after an error, is replaced by a new one at the next request. With a token, each new
 * connection starts with the handshake (PROTOCOL.md, Authentication): `hello` and its nonce (the one extra
 * round trip), then `auth`, whose answer is read before the first request's, so the requests behind it go
 * out at once.
 *
 * @module
 */

import { ClientError, ExitCode, protocolError, ServerRefusal } from "./failure.ts";
import { FrameReader, TruncatedError } from "./frame_reader.ts";
import { checkCompressedLength, decodeChunk, loadDecompression } from "./decompress.ts";
import {
  AUTH_NONCE_BYTES,
  decodeJson,
  encodeLastRequest,
  encodeRequest,
  END_FRAME,
  type ErrorBody,
  errorClosesConnection,
  ErrorCode,
  FrameType,
  getFrameLength,
  INLINE_BATCH_BYTES,
  isSha256Hex,
  type LeftOut,
  LIST_BATCH_BYTES,
  type ListEntry,
  MAX_INLINE_FILE,
  MAX_RESPONSE_FRAME,
  NANOSECONDS,
  PROTOCOL_VERSION,
  type Request,
  type ResponseHeader,
} from "../framing.ts";
import { loadHashing } from "../hashing.ts";
import { authProof, type ClientToken, fromHex, toHex } from "../tokens.ts";

/** Where the server is. */
export interface Endpoint {
  /** Host name or address (IPv6 without brackets). */
  hostname: string;
  /** TCP port. */
  port: number;
  /** Speak TLS (to a terminator in front of the server, e.g. HAProxy or stunnel); absent for plain TCP. */
  tls?: TlsSettings;
}

/** How the client checks the TLS terminator it talks to (`--tls`, `--cacert`, `--tls-server-name`). */
export interface TlsSettings {
  /** PEM certificates trusted besides the built-in roots (`--cacert`). */
  caCerts: string[];
  /** The name the certificate must carry, sent as SNI. @default the endpoint's hostname */
  serverName: string;
}

/** `HOST:PORT`, with brackets around an IPv6 address. */
export function describeEndpoint({ hostname, port }: Endpoint): string {
  return hostname.includes(":") ? `[${hostname}]:${port}` : `${hostname}:${port}`;
}

/**
 * True when `hostname` (an address as Deno reports a connection's peer) is this host's loopback:
 * 127.0.0.0/8, written as it is or mapped into IPv6, or ::1.
 */
export function isLoopback(hostname: string): boolean {
  const v4 = hostname.toLowerCase().startsWith("::ffff:") ? hostname.slice(7) : hostname;
  return /^127\.[0-9]+\.[0-9]+\.[0-9]+$/.test(v4) || hostname === "::1";
}

/** Options of {@link connectTcp}. */
export interface ConnectOptions {
  /** Give up connecting after this long, in milliseconds. */
  connectTimeoutMs: number;
  /** Gives up at once when it aborts (the run's deadline). */
  signal?: AbortSignal;
}

/**
 * Connects within the connect timeout, with the TLS handshake when `endpoint.tls` says so (the timeout
 * covers both). Failures are ClientErrors with exit code 3, retryable but for a certificate that does not
 * check out (a wrong CA or name will not change by trying again).
 */
export async function connectTcp(endpoint: Endpoint, options: ConnectOptions): Promise<Deno.Conn> {
  const where = describeEndpoint(endpoint);
  const { signal, connectTimeoutMs } = options;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let onAbort = () => {};
  const giveUp = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(
        new ClientError(
          ExitCode.Connect,
          `cannot connect to ${where}: no answer within ${connectTimeoutMs / 1000}s`,
          {
            retryable: true,
          },
        ),
      );
    }, connectTimeoutMs);
    onAbort = () => reject(new ClientError(ExitCode.Connect, `cannot connect to ${where}: cancelled`));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
  if (signal?.aborted) onAbort();
  const attempt = Deno.connect({ hostname: endpoint.hostname, port: endpoint.port }).then(
    (tcp): Deno.Conn | Promise<Deno.Conn> => {
      tcp.setNoDelay(true);
      return endpoint.tls === undefined ? tcp : handshake(tcp, endpoint.tls);
    },
  );
  try {
    return await Promise.race([attempt, giveUp]);
  } catch (e) {
    attempt.then((late) => late.close(), () => {}); // a connection that completes after we gave up
    if (e instanceof ClientError) throw e;
    const message = (e as Error).message.split("\n")[0];
    if (e instanceof TlsFailure) {
      throw new ClientError(ExitCode.Connect, `cannot connect to ${where}: TLS: ${message}`, {
        retryable: !e.certificate,
      });
    }
    throw new ClientError(ExitCode.Connect, `cannot connect to ${where}: ${message}`, {
      retryable: true,
    });
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  }
}

/** A TLS handshake that failed; `certificate` when the terminator's certificate did not check out. */
class TlsFailure extends Error {
  constructor(message: string, readonly certificate: boolean) {
    super(message);
  }
}

/** Starts TLS on `tcp` and completes the handshake, so that a bad certificate fails here, not at a read. */
async function handshake(tcp: Deno.TcpConn, tls: TlsSettings): Promise<Deno.TlsConn> {
  let conn: Deno.TlsConn | null = null;
  try {
    conn = await Deno.startTls(tcp, { hostname: tls.serverName, caCerts: tls.caCerts });
    await conn.handshake();
    return conn;
  } catch (e) {
    if (conn !== null) conn.close();
    else tcp.close();
    // rustls reports a certificate it refuses as invalid data ("invalid peer certificate: UnknownIssuer").
    const certificate = e instanceof Deno.errors.InvalidData || /certificate/i.test((e as Error).message);
    throw new TlsFailure(`handshake with '${tls.serverName}' failed: ${(e as Error).message}`, certificate);
  }
}

/** Writes all of `bytes` to `conn`. */
export async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.byteLength) done += await conn.write(bytes.subarray(done));
}

/** Options of a {@link Session}. */
export interface SessionOptions extends ConnectOptions {
  /** Fail a read that waits this long without a byte, in milliseconds. */
  stallTimeoutMs: number;
  /** The token to prove on each connection (`--token-file`), or none. */
  token?: ClientToken | null;
  /** Offer zstd in every `get` of whole files (`--compress`): the server compresses what pays. */
  compress?: boolean;
}

/** What a response's body ended with. */
export interface BodyEnd {
  /** Data bytes received. */
  received: number;
  /** The SHA-256 of the Trailer frame, if one came. */
  sha256?: string;
}

/** A `list` answer as the client received it. */
export interface Listing {
  /** The entries, unchecked (the caller checks each). */
  entries: unknown[];
  /** True if the server said the listing is not the whole tree. */
  truncated: boolean;
  /** What the server left out (none from a server that predates `leftOut`). */
  leftOut: LeftOut;
  /** A streamed listing's `walkedAt` (none from a server that predates it). */
  walkedAt?: string;
}

/** The `leftOut` of a listing's Header or Trailer, checked; none when the server sent none. */
function leftOutOf(fields: Record<string, unknown> | ResponseHeader, what: string): LeftOut {
  const value = (fields as Record<string, unknown>).leftOut;
  if (value === undefined) return { count: 0, first: [] };
  const bad = () => protocolError(`${what} has a malformed leftOut`);
  if (typeof value !== "object" || value === null) throw bad();
  const { count, first } = value as Record<string, unknown>;
  if (!Number.isSafeInteger(count) || (count as number) < 0 || !Array.isArray(first)) throw bad();
  for (const e of first) {
    if (typeof e !== "object" || e === null || typeof e.path !== "string" || typeof e.reason !== "string") {
      throw bad();
    }
  }
  return { count: count as number, first };
}

/** A connection's failure that says nothing about the request: it may be sent again on a new one. */
function isConnectionLoss(e: unknown): boolean {
  return e instanceof TruncatedError || e instanceof Deno.errors.ConnectionReset ||
    e instanceof Deno.errors.BrokenPipe || e instanceof Deno.errors.UnexpectedEof ||
    e instanceof Deno.errors.ConnectionAborted;
}

/** An HTTP server's answer ("HTTP/1.1 ...") read as a frame's length prefix. */
const HTTP_AS_LENGTH = getFrameLength(new TextEncoder().encode("HTTP"), 0);

/**
 * Requests and responses over a persistent connection, opened on first use. A response is read in two
 * steps: {@link begin} sends the request and returns the header, then {@link readBody} (for `get`) or
 * {@link finish} reads the rest. An Error frame is thrown as {@link ServerRefusal}.
 */
export class Session {
  /** The server. */
  readonly endpoint: Endpoint;
  /** Connections opened so far. */
  connections = 0;
  readonly #options: SessionOptions;
  #conn: Deno.Conn | null = null;
  /** True when {@link #conn} reaches the server over this host's loopback. */
  #loopback = false;
  #reader: FrameReader | null = null;
  /** True when no response is in progress on the connection: it can take the next request. */
  #between = true;
  /** True once the end frame went out behind a request: the server closes the connection after it. */
  #ended = false;
  /** Requests sent ahead ({@link sendAhead}) whose answers {@link next} has not begun to read. */
  #ahead = 0;
  #what = "";
  /** True while the answer to the connection's `auth` is still to be read, before any other. */
  #authOwed = false;
  /** The compression the Header of the answer being read named, if any. */
  #compression: string | undefined;
  readonly #onAbort = () => this.#drop();

  /**
   * @param endpoint the server
   * @param options timeouts, and the run's deadline as a signal: when it aborts the connection is closed
   */
  constructor(endpoint: Endpoint, options: SessionOptions) {
    this.endpoint = endpoint;
    this.#options = options;
    options.signal?.addEventListener("abort", this.#onAbort, { once: true });
  }

  /**
   * Sends `request` and reads the first frame of the answer: returns the Header, throws ServerRefusal for
   * an Error frame. `what` names the request in messages (e.g. the quoted path). With `last`, the end frame
   * goes out behind the request, so the server closes the connection once it has answered (a one-file
   * `get` spares the server a wake-up per connection); a later request opens a new connection.
   * `meanwhile` runs once the request is out and before the answer is read (work the client can do while
   * the server works), on the first attempt only.
   */
  async begin(
    request: Request,
    what: string,
    options: { last?: boolean; meanwhile?: () => void } = {},
  ): Promise<ResponseHeader> {
    this.#what = what;
    let meanwhile = options.meanwhile;
    for (let resend = 0;; resend++) {
      // A response abandoned half-way still has bytes coming: that connection cannot serve another one.
      // Nor can one that was told there would be no more requests, or that owes answers sent ahead.
      if (!this.#between || this.#ended || this.#ahead > 0) this.#drop();
      const reused = this.#conn !== null;
      const { conn, reader } = await this.#open();
      const before = reader.bytesRead;
      this.#between = false;
      try {
        const offered = this.#offer(request);
        await writeAll(conn, options.last ? encodeLastRequest(offered) : encodeRequest(offered));
        this.#ended = options.last === true;
        meanwhile?.();
        meanwhile = undefined;
        return await this.#readHeader();
      } catch (e) {
        // The server closed the idle connection before our request reached it: after its idle timeout
        // (with a TIMEOUT error frame written before our request), or at a restart (no byte of an answer).
        // The request was not served, so it is sent again on a new connection, once.
        const stale = e instanceof ServerRefusal
          ? e.body.code === ErrorCode.Timeout
          : reader.bytesRead === before && isConnectionLoss(e);
        if (!(e instanceof ServerRefusal)) this.#drop();
        if (reused && resend === 0 && stale) continue;
        throw e;
      }
    }
  }

  /**
   * Pipelining: sends `requests` in one write without waiting for their answers, which come in order and
   * are read with {@link next}, then {@link readBody} or {@link finish} as after {@link begin}. Keep the
   * requests in flight few (tens): they must fit the socket buffers while nobody reads the answers. A
   * connection lost meanwhile loses every answer still owed; the caller sends those requests again.
   */
  async sendAhead(requests: Request[]): Promise<void> {
    if (this.#ended) this.#drop();
    const { conn } = await this.#open();
    const frames = requests.map((r) => encodeRequest(this.#offer(r)));
    const bytes = new Uint8Array(frames.reduce((n, f) => n + f.byteLength, 0));
    frames.reduce((at, f) => (bytes.set(f, at), at + f.byteLength), 0);
    try {
      await writeAll(conn, bytes);
    } catch (e) {
      this.#drop();
      throw e;
    }
    this.#ahead += requests.length;
  }

  /** Requests sent ahead whose answers have not been begun. */
  get ahead(): number {
    return this.#ahead;
  }

  /** Reads the header of the next answer owed to {@link sendAhead}; throws ServerRefusal for an Error frame. */
  async next(what: string): Promise<ResponseHeader> {
    if (this.#ahead === 0 || !this.#between || this.#reader === null) {
      throw new Error("Session.next() with no answer owed (a bug)");
    }
    this.#what = what;
    this.#ahead--;
    this.#between = false;
    try {
      return await this.#readHeader();
    } catch (e) {
      if (!(e instanceof ServerRefusal)) this.#drop();
      throw e;
    }
  }

  /**
   * Reads a `get` body after {@link begin}: Data frames (at most `maxBytes` in all) go to `onData` as
   * views valid until it resolves, then an optional Trailer, then the end frame.
   */
  async readBody(maxBytes: number, onData: (chunk: Uint8Array) => Promise<void>): Promise<BodyEnd> {
    const reader = this.#reader!;
    const end: BodyEnd = { received: 0 };
    try {
      for (;;) {
        const len = await reader.readLength("a data frame");
        if (len === 0) break;
        if (len < 0 || len > MAX_RESPONSE_FRAME) throw protocolError(`frame length ${len} in the body`);
        const [type] = await reader.readExact(1, "a frame type");
        if (type === FrameType.Error) await this.#refused(await this.#readJson(len - 1, "an error frame"));
        if (end.sha256 !== undefined) throw protocolError("a frame after the trailer");
        if (type === FrameType.Trailer) {
          const trailer = await this.#readJson(len - 1, "the trailer");
          if (!isSha256Hex(trailer.sha256)) {
            throw protocolError("the trailer has no valid sha256");
          }
          end.sha256 = trailer.sha256;
          continue;
        }
        if (type === FrameType.Compressed && this.#compression !== undefined) {
          checkCompressedLength(len - 1);
          await loadDecompression(); // before reading: the frame is a view valid until the next read
          const payload = await reader.readExact(len - 1, "a compressed frame");
          const chunk = decodeChunk(payload, maxBytes - end.received);
          end.received += chunk.byteLength;
          await onData(chunk);
          continue;
        }
        if (type !== FrameType.Data) throw protocolError(`unexpected frame type ${type} in the body`);
        if (end.received + len - 1 > maxBytes) {
          throw protocolError(`more than the ${maxBytes} bytes announced`);
        }
        for await (const chunk of reader.readChunks(len - 1, "a data frame")) {
          end.received += chunk.byteLength;
          await onData(chunk);
        }
      }
    } catch (e) {
      if (!(e instanceof ServerRefusal)) this.#drop();
      throw e;
    }
    this.#between = true;
    return end;
  }

  /** Reads the end frame of an answer that has only a header (`stat`, `list`, `ping`, unchanged `get`). */
  async finish(): Promise<void> {
    try {
      const len = await this.#reader!.readLength("the end frame");
      if (len !== 0) {
        throw protocolError(`expected the end frame after the header, got a frame of ${len} bytes`);
      }
    } catch (e) {
      this.#drop();
      throw e;
    }
    this.#between = true;
  }

  /** Sends `request` and reads an answer that has only a header. */
  async request(request: Request, what: string): Promise<ResponseHeader> {
    const header = await this.begin(request, what);
    await this.finish();
    return header;
  }

  /**
   * Sends a `list` request asking for a streamed answer and reads all of it: the entries of every Entries
   * frame up to the Trailer, or, from a server that predates streaming, the single Header's. A streamed
   * answer that ends before its Trailer, or whose Trailer counts other entries than came, throws: a
   * listing is never taken for whole when part of it may be missing. With `onEntries`, each batch goes to
   * it as it arrives (so the caller works while the server is still walking) and the result's `entries`
   * stays empty. `meanwhile` is called once the request is sent, before its answer is awaited.
   *
   * With `inline`, `onEntries` also gets the content of the batch's inlined entries (those with
   * `inline: true`), concatenated in their order: a view valid until what it returns resolves, and the next
   * frame is read only then. A listing asked for without `onEntries` reads and drops that content.
   */
  async list(
    request: Request,
    what: string,
    onEntries?: (batch: unknown[], inlined: Uint8Array | null) => void | Promise<void>,
    meanwhile?: () => void,
  ): Promise<Listing> {
    const header = await this.begin({ ...request, stream: true }, what, { meanwhile });
    if (header.stream !== true) {
      await this.finish();
      if (!Array.isArray(header.entries)) throw protocolError(`${what} has no entries`);
      await onEntries?.(header.entries, null);
      return {
        entries: onEntries === undefined ? header.entries : [],
        truncated: header.truncated === true,
        leftOut: leftOutOf(header, what),
      };
    }
    const { walkedAt } = header;
    if (walkedAt !== undefined && (typeof walkedAt !== "string" || !NANOSECONDS.test(walkedAt))) {
      this.#drop();
      throw protocolError(`${what} has a 'walkedAt' that is not nanoseconds as decimal text`);
    }
    const reader = this.#reader!;
    const entries: unknown[] = [];
    let received = 0;
    try {
      for (;;) {
        const len = await reader.readLength(`the next frame of ${what}`);
        if (len === 0) throw protocolError(`${what} ended without its trailer`);
        if (len < 0 || len > MAX_RESPONSE_FRAME) throw protocolError(`frame length ${len} in ${what}`);
        const [type] = await reader.readExact(1, "a frame type");
        if (type === FrameType.Error) await this.#refused(await this.#readJson(len - 1, "an error frame"));
        if (
          type === FrameType.Entries || (type === FrameType.Compressed && this.#compression !== undefined)
        ) {
          const batch = type === FrameType.Entries
            ? await this.#readBatch(len - 1, what)
            : await this.#readCompressedBatch(len - 1, what);
          if (!Array.isArray(batch.entries)) throw protocolError(`a batch of ${what} has no entries`);
          received += batch.entries.length;
          const inlined = await this.#readInlined(batch.entries, what);
          if (onEntries !== undefined) await onEntries(batch.entries, inlined);
          else for (const entry of batch.entries) entries.push(entry);
          continue;
        }
        if (type !== FrameType.Trailer) throw protocolError(`unexpected frame type ${type} in ${what}`);
        const trailer = await this.#readJson(len - 1, `the trailer of ${what}`);
        if (trailer.listed !== received) {
          throw protocolError(`${what} counts ${trailer.listed} entries, ${received} came`);
        }
        if (await reader.readLength("the end frame") !== 0) throw protocolError(`no end frame after ${what}`);
        this.#between = true;
        return {
          entries,
          truncated: trailer.truncated === true,
          leftOut: leftOutOf(trailer, what),
          walkedAt,
        };
      }
    } catch (e) {
      if (!(e instanceof ServerRefusal)) this.#drop();
      throw e;
    }
  }

  /**
   * The Data frame of the content of a batch's inlined entries, which must come right after the batch and
   * hold exactly the sum of their sizes; null when no entry of the batch is inlined.
   */
  async #readInlined(entries: unknown[], what: string): Promise<Uint8Array | null> {
    let total = 0, inlined = 0;
    for (const entry of entries) {
      if (typeof entry !== "object" || entry === null || (entry as ListEntry).inline !== true) continue;
      const size = (entry as ListEntry).size;
      if (!Number.isSafeInteger(size) || size < 0 || size > MAX_INLINE_FILE) {
        throw protocolError(`an inlined entry of ${what} has no size from 0 to ${MAX_INLINE_FILE}`);
      }
      total += size;
      inlined++;
    }
    if (inlined === 0) return null;
    if (total > INLINE_BATCH_BYTES) {
      throw protocolError(`a batch of ${what} inlines ${total} bytes, more than ${INLINE_BATCH_BYTES}`);
    }
    const reader = this.#reader!;
    const len = await reader.readLength(`the inlined content of ${what}`);
    const [type] = len > 0 ? await reader.readExact(1, "a frame type") : [-1];
    if (type !== FrameType.Data || len - 1 !== total) {
      const after = type === FrameType.Data ? `a Data frame of ${len - 1} bytes` : "no Data frame";
      throw protocolError(
        `${what} inlines ${total} bytes in a batch (${inlined} file${
          inlined === 1 ? "" : "s"
        }), followed by ${after}`,
      );
    }
    return await reader.readExact(total, `the inlined content of ${what}`);
  }

  /** A new session to the same server, with the same options: a connection of its own, opened on first use. */
  sibling(): Session {
    return new Session(this.endpoint, this.#options);
  }

  /** Says goodbye (an end frame, so the server logs a clean close) and closes; never throws. */
  async close(): Promise<void> {
    this.#options.signal?.removeEventListener("abort", this.#onAbort);
    if (this.#conn !== null && this.#between && !this.#ended && this.#ahead === 0) {
      await writeAll(this.#conn, END_FRAME).catch(() => {});
    }
    this.#drop();
  }

  async #open(): Promise<{ conn: Deno.Conn; reader: FrameReader }> {
    if (this.#conn === null || this.#reader === null) {
      const conn = await connectTcp(this.endpoint, this.#options);
      if (this.#options.signal?.aborted) {
        conn.close();
        throw new ClientError(ExitCode.Connect, "cancelled");
      }
      this.#conn = conn;
      this.#loopback = isLoopback((conn.remoteAddr as Deno.NetAddr).hostname);
      this.#reader = new FrameReader(conn, { stallTimeoutMs: this.#options.stallTimeoutMs });
      this.#between = true;
      this.connections++;
      const token = this.#options.token;
      if (token) {
        try {
          await this.#authenticate(conn, token);
        } catch (e) {
          this.#drop();
          throw e;
        }
      }
    }
    return { conn: this.#conn!, reader: this.#reader! };
  }

  /**
   * The handshake: `hello` brings the server's nonce, and `auth` goes out with the proof (the secret itself
   * never does); its answer is read by {@link #readHeader} before the next request's. A server that gives
   * no nonce takes no tokens, and the connection goes on without.
   */
  async #authenticate(conn: Deno.Conn, token: ClientToken): Promise<void> {
    const what = this.#what;
    this.#what = "the handshake (hello)";
    await writeAll(conn, encodeRequest({ v: PROTOCOL_VERSION, op: "hello" }));
    let header: ResponseHeader;
    try {
      header = await this.#readHeader();
    } catch (e) {
      if (e instanceof ServerRefusal && e.body.code === ErrorCode.UnknownOp) {
        throw protocolError(`${describeEndpoint(this.endpoint)} does not take tokens (it predates them)`);
      }
      throw e;
    }
    if (await this.#reader!.readLength("the end frame of hello") !== 0) {
      throw protocolError("no end frame after the answer to hello");
    }
    if (header.nonce === undefined) {
      this.#what = what;
      return;
    }
    const nonce = typeof header.nonce === "string" ? fromHex(header.nonce) : null;
    if (nonce === null || nonce.byteLength !== AUTH_NONCE_BYTES) {
      throw protocolError(`the nonce of hello is not ${AUTH_NONCE_BYTES} bytes in hex`);
    }
    await loadHashing();
    const proof = toHex(authProof(token.secret, nonce, token.name));
    await writeAll(conn, encodeRequest({ v: PROTOCOL_VERSION, op: "auth", name: token.name, proof }));
    this.#authOwed = true;
    this.#what = what;
  }

  /** Reads the answer to `auth`: its Header and end frame, or UNAUTHORIZED thrown as a ServerRefusal. */
  async #readAuthAnswer(): Promise<void> {
    this.#authOwed = false;
    const what = this.#what;
    this.#what = `the token ${JSON.stringify(this.#options.token?.name)}`;
    await this.#readHeader();
    if (await this.#reader!.readLength("the end frame of auth") !== 0) {
      throw protocolError("no end frame after the answer to auth");
    }
    this.#what = what;
  }

  /** True when this session offers zstd for file data (`--compress`), which only a `get` can carry. */
  get compressesFiles(): boolean {
    return this.#options.compress === true;
  }

  /**
   * `request` with this session's offer of compression: in a streamed `list` (its batches of JSON shrink
   * about fourfold, for a few milliseconds of the server's time per 10 MB) unless the server is on this
   * host's loopback, where the bytes cost nothing to carry and compressing only costs both ends CPU; and
   * in a `get` of a whole file with `--compress` (file data costs a core to compress, which pays only on a
   * slow link). `--compress` offers it in a listing over loopback too (a port a tunnel forwards).
   */
  #offer(request: Request): Request {
    const offered = (request.op === "list" && request.stream === true && this.#listingsOfferZstd) ||
      (this.#options.compress === true && request.op === "get" && request.ranges === undefined);
    return offered ? { ...request, accept: ["zstd"] } : request;
  }

  /** True when a streamed listing on the connection open now is offered zstd (see {@link #offer}). */
  get #listingsOfferZstd(): boolean {
    return this.#options.compress === true || !this.#loopback;
  }

  /** Closes the connection, if any; the next request opens a new one. */
  #drop(): void {
    this.#reader?.dispose();
    try {
      this.#conn?.close();
    } catch { /* closed already (stall watchdog) */ }
    this.#conn = null;
    this.#reader = null;
    this.#between = true;
    this.#ended = false;
    this.#ahead = 0;
    this.#authOwed = false;
  }

  async #readHeader(): Promise<ResponseHeader> {
    if (this.#authOwed) await this.#readAuthAnswer();
    const reader = this.#reader!;
    const len = await reader.readLength("the response header");
    if (len === HTTP_AS_LENGTH) {
      throw protocolError(
        "the answer starts with 'HTTP': this is an HTTP server, not a ferry server (check HOST:PORT)",
      );
    }
    if (len <= 0 || len > MAX_RESPONSE_FRAME) throw protocolError(`the response header has length ${len}`);
    const [type] = await reader.readExact(1, "the response header");
    if (type !== FrameType.Header && type !== FrameType.Error) {
      throw protocolError(`expected the response header, got frame type ${type}`);
    }
    const body = await this.#readJson(
      len - 1,
      type === FrameType.Header ? "the response header" : "an error frame",
    );
    if (type === FrameType.Error) return await this.#refused(body);
    if (body.status !== "ok") {
      throw protocolError(`the response header's status is ${JSON.stringify(body.status)}`);
    }
    // What was offered (#offer): zstd for a streamed listing but over loopback, and anything with --compress.
    const offered = body.stream === true ? this.#listingsOfferZstd : this.#options.compress === true;
    if (body.compression !== undefined && (body.compression !== "zstd" || !offered)) {
      throw protocolError(
        `the server compressed with ${JSON.stringify(body.compression)}, which was not offered`,
      );
    }
    this.#compression = body.compression;
    return body as unknown as ResponseHeader;
  }

  /** An Entries frame's JSON of `len` bytes, of the listing `what`. */
  #readBatch(len: number, what: string): Promise<Record<string, unknown>> {
    if (len > LIST_BATCH_BYTES) throw protocolError(`a batch of ${what} over ${LIST_BATCH_BYTES} bytes`);
    return this.#readJson(len, `a batch of ${what}`);
  }

  /** A Compressed frame of `len` bytes holding an Entries frame's JSON, of the listing `what`. */
  async #readCompressedBatch(len: number, what: string): Promise<Record<string, unknown>> {
    checkCompressedLength(len);
    await loadDecompression(); // before reading: the frame is a view valid until the next read
    const bytes = decodeChunk(await this.#reader!.readExact(len, `a batch of ${what}`), LIST_BATCH_BYTES);
    return this.#parseJson(bytes, `a batch of ${what}`);
  }

  async #readJson(len: number, what: string): Promise<Record<string, unknown>> {
    return this.#parseJson(await this.#reader!.readExact(len, what), what);
  }

  #parseJson(bytes: Uint8Array, what: string): Record<string, unknown> {
    let value: unknown;
    try {
      value = decodeJson(bytes);
    } catch {
      throw protocolError(`${what} is not valid JSON`);
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw protocolError(`${what} is not a JSON object`);
    }
    return value as Record<string, unknown>;
  }

  /** After an Error frame: reads the end frame, keeps or drops the connection, throws the refusal. */
  async #refused(body: Record<string, unknown>): Promise<never> {
    if (typeof body.code !== "string" || typeof body.message !== "string") {
      throw protocolError("an error frame without code and message");
    }
    const refusal = new ServerRefusal(body as unknown as ErrorBody, this.#what);
    try {
      if (await this.#reader!.readLength("the end frame") !== 0) {
        throw protocolError("no end frame after an error");
      }
    } catch {
      this.#drop(); // the error said what the server meant; a missing end frame only costs the connection
      throw refusal;
    }
    if (errorClosesConnection(body.code)) this.#drop();
    else this.#between = true;
    throw refusal;
  }
}
