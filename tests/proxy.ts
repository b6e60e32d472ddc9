/**
 * A test-only TCP proxy between the client and a real server, for what cannot be provoked from either end:
 * it parses the request-mode frames going both ways, records the requests and response headers of each
 * connection, counts data frames and bytes, and on request flips one byte of the data in flight or holds
 * the data after a given number of bytes until the test releases it (so a test can act, e.g. kill a
 * process, at a known point of a transfer without sleeping).
 *
 * @module
 */

import { FrameType, getFrameLength } from "../framing.ts";

/** What the proxy saw on one connection. */
export interface ProxiedConnection {
  /** The client's requests, parsed. */
  requests: Record<string, unknown>[];
  /** The server's control frames (Header, Trailer, Error), parsed, with their type letter. */
  controls: { type: string; body: Record<string, unknown> }[];
  /** Data frames forwarded to the client. */
  dataFrames: number;
  /** Data bytes (payload, without type bytes) forwarded to the client. */
  dataBytes: number;
  /**
   * How many of the server's control frames had reached the client when the client's end frame passed
   * the proxy (0: it went out with the request, before any answer); null if the client sent none.
   */
  endFrameAfterControls: number | null;
}

/** What the proxy does to the data. */
export interface ProxyRules {
  /** Flip the bits of the data byte at `dataByte` (counted over the connection's data) on connection `connection`. */
  corrupt?: { connection: number; dataByte: number };
  /** Stop forwarding to the client once `bytes` data bytes went through on connection `connection`. */
  hold?: { connection: number; bytes: number };
}

/**
 * Data (`D`) and Compressed (`Z`) frames carry file bytes: both count as data (a `Z` frame as it is sent),
 * except the Compressed frames of a streamed listing (after a Header with `stream`), which carry entries.
 */
const isData = (type: number, inListing: boolean) =>
  type === FrameType.Data || (type === FrameType.Compressed && !inListing);

/** Parses a stream of request-mode frames incrementally; data payloads are reported as ranges. */
class FrameParser {
  #length = new Uint8Array(4);
  #lengthHave = 0;
  #left = 0;
  #typePending = false;
  #type = 0;
  #control: Uint8Array[] = [];
  /** True from a streamed listing's Header until the next answer's Header. */
  #inListing = false;
  constructor(
    readonly onControl: (type: string, body: Record<string, unknown>) => void,
    readonly onDataFrame: () => void,
    readonly onEndFrame: () => void = () => {},
  ) {}

  /** Feeds `chunk`; `onData(from, to)` is called for each range of it that is data payload. */
  feed(chunk: Uint8Array, onData: (from: number, to: number) => void): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.#left === 0 && !this.#typePending) {
        this.#length[this.#lengthHave++] = chunk[i++];
        if (this.#lengthHave === 4) {
          this.#lengthHave = 0;
          const len = getFrameLength(this.#length, 0);
          if (len > 0) {
            this.#left = len;
            this.#typePending = true;
          } else if (len === 0) {
            this.onEndFrame();
          }
        }
      } else if (this.#typePending) {
        this.#typePending = false;
        this.#type = chunk[i++];
        this.#left--;
        this.#control = [];
        if (isData(this.#type, this.#inListing)) this.onDataFrame();
        if (this.#left === 0) this.#endFrame();
      } else {
        const n = Math.min(this.#left, chunk.length - i);
        if (isData(this.#type, this.#inListing)) onData(i, i + n);
        else this.#control.push(chunk.slice(i, i + n));
        i += n;
        this.#left -= n;
        if (this.#left === 0) this.#endFrame();
      }
    }
  }

  #endFrame(): void {
    if (isData(this.#type, this.#inListing)) return;
    const bytes = new Uint8Array(this.#control.reduce((n, c) => n + c.length, 0));
    let at = 0;
    for (const c of this.#control) {
      bytes.set(c, at);
      at += c.length;
    }
    let body: Record<string, unknown> = {};
    try {
      body = JSON.parse(new TextDecoder().decode(bytes));
    } catch { /* not JSON: recorded empty */ }
    if (this.#type === FrameType.Header) this.#inListing = body.stream === true;
    this.onControl(String.fromCharCode(this.#type), body);
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.byteLength;) done += await conn.write(bytes.subarray(done));
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* already closed */ }
}

/** A proxy listening on 127.0.0.1 that forwards to a server on `upstreamPort`. */
export class FrameProxy {
  /** `127.0.0.1:PORT` of the proxy. */
  readonly address: string;
  /** The connections seen, in order of arrival. */
  readonly connections: ProxiedConnection[] = [];
  /** Resolves once the hold rule's point is reached (the data is held from then on). */
  readonly held: Promise<void>;
  readonly #listener: Deno.TcpListener;
  readonly #rules: ProxyRules;
  readonly #pumps: Promise<void>[] = [];
  readonly #open = new Set<Deno.Conn>();
  #reachedHold!: () => void;
  #release!: () => void;
  readonly #released: Promise<void>;
  readonly #accepting: Promise<void>;

  /**
   * @param upstreamPort the server's port on 127.0.0.1
   * @param rules what to do to the data
   */
  constructor(upstreamPort: number, rules: ProxyRules = {}) {
    this.#rules = rules;
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.address = `127.0.0.1:${this.#listener.addr.port}`;
    this.held = new Promise((resolve) => this.#reachedHold = resolve);
    this.#released = new Promise((resolve) => this.#release = resolve);
    this.#accepting = this.#accept(upstreamPort);
  }

  /** Lets held data flow again. */
  release(): void {
    this.#release();
  }

  /** Closes every connection at once (both sides), held or not. */
  cut(): void {
    for (const conn of this.#open) closeQuietly(conn);
    this.#release();
  }

  /** Stops listening, cuts what is left and waits for the forwarding to end. */
  async close(): Promise<void> {
    this.#listener.close();
    await this.#accepting;
    this.cut();
    await Promise.all(this.#pumps);
  }

  async #accept(upstreamPort: number): Promise<void> {
    for (;;) {
      let client: Deno.TcpConn;
      try {
        client = await this.#listener.accept();
      } catch {
        return; // listener closed
      }
      const index = this.connections.length;
      const seen: ProxiedConnection = {
        requests: [],
        controls: [],
        dataFrames: 0,
        dataBytes: 0,
        endFrameAfterControls: null,
      };
      this.connections.push(seen);
      let server: Deno.TcpConn;
      try {
        server = await Deno.connect({ hostname: "127.0.0.1", port: upstreamPort });
      } catch {
        closeQuietly(client);
        continue;
      }
      this.#open.add(client);
      this.#open.add(server);
      this.#pumps.push(this.#up(client, server, seen), this.#down(server, client, seen, index));
    }
  }

  /** Client to server: forwarded as is; requests recorded. */
  async #up(client: Deno.Conn, server: Deno.Conn, seen: ProxiedConnection): Promise<void> {
    const parser = new FrameParser(
      (type, body) => {
        if (type === "R") seen.requests.push(body);
      },
      () => {},
      () => seen.endFrameAfterControls ??= seen.controls.length,
    );
    const buf = new Uint8Array(64 * 1024);
    try {
      for (let n = await client.read(buf); n !== null; n = await client.read(buf)) {
        parser.feed(buf.subarray(0, n), () => {});
        await writeAll(server, buf.subarray(0, n));
      }
      await server.closeWrite();
    } catch { /* either side gone */ }
  }

  /** Server to client: parsed, perhaps corrupted, perhaps held. */
  async #down(server: Deno.Conn, client: Deno.Conn, seen: ProxiedConnection, index: number): Promise<void> {
    const { corrupt, hold } = this.#rules;
    const parser = new FrameParser(
      (type, body) => seen.controls.push({ type, body }),
      () => seen.dataFrames++,
    );
    const buf = new Uint8Array(256 * 1024);
    let holding = hold?.connection === index;
    try {
      for (let n = await server.read(buf); n !== null; n = await server.read(buf)) {
        const chunk = buf.subarray(0, n);
        parser.feed(chunk, (from, to) => {
          if (corrupt?.connection === index) {
            const at = corrupt.dataByte - seen.dataBytes;
            if (at >= 0 && at < to - from) chunk[from + at] ^= 0xff;
          }
          seen.dataBytes += to - from;
        });
        await writeAll(client, chunk);
        if (holding && seen.dataBytes >= hold!.bytes) {
          holding = false;
          this.#reachedHold();
          await this.#released;
        }
      }
    } catch { /* either side gone */ }
    closeQuietly(client);
    closeQuietly(server);
    this.#open.delete(client);
    this.#open.delete(server);
  }
}
