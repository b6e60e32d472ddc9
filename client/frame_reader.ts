/**
 * Reading ferry frames from a connection on the client side: one reused buffer, large reads, no copy of
 * data frames (callers get views valid until the next read), and a stall watchdog that closes the
 * connection when a read has waited for the stall timeout without a byte, so no read can hang. Time spent
 * between reads (writing to disk, hashing, idling between requests of a persistent connection) is not
 * the server's stall and does not count.
 *
 * @module
 */

import { FRAME_HEADER_SIZE, getFrameLength } from "../framing.ts";
import { pageAlignedBuffer } from "../ffi/page_aligned.ts";

/** The connection ended before a frame did. */
export class TruncatedError extends Error {
  /** @param what what was being read */
  constructor(what: string) {
    super(`connection closed by the server in the middle of ${what}`);
    this.name = "TruncatedError";
  }
}

/** No byte arrived for the stall timeout. */
export class StallError extends Error {
  /** @param seconds the stall timeout */
  constructor(seconds: number) {
    super(`no data from the server for ${seconds}s (--stall-timeout)`);
    this.name = "StallError";
  }
}

/** Options of {@link FrameReader}. */
export interface FrameReaderOptions {
  /** Close the connection when no byte arrives for this long, in milliseconds. */
  stallTimeoutMs: number;
  /** Size of the reused read buffer. @default 1 MiB + 64 KiB */
  bufferSize?: number;
}

/** Reads frames from a connection through one reused buffer. */
export class FrameReader {
  readonly #conn: Deno.Conn;
  readonly #buf: Uint8Array;
  #start = 0;
  #end = 0;
  /** When the pending read began waiting, or its last byte arrived; null while no read is pending. */
  #waitingSince: number | null = null;
  #stalled = false;
  #bytesRead = 0;
  readonly #watchdog: ReturnType<typeof setInterval>;
  readonly #stallTimeoutMs: number;

  /**
   * @param conn the connection to read from (closed by the watchdog on a stall)
   * @param options stall timeout and buffer size
   */
  constructor(conn: Deno.Conn, { stallTimeoutMs, bufferSize = 1024 * 1024 + 64 * 1024 }: FrameReaderOptions) {
    this.#conn = conn;
    this.#buf = pageAlignedBuffer(bufferSize);
    this.#stallTimeoutMs = stallTimeoutMs;
    this.#watchdog = setInterval(() => {
      if (this.#waitingSince !== null && performance.now() - this.#waitingSince >= stallTimeoutMs) {
        this.#stalled = true;
        try {
          conn.close();
        } catch { /* already closed */ }
      }
    }, Math.min(1000, Math.max(10, stallTimeoutMs / 4)));
  }

  /** Stops the watchdog (the connection is left to the caller). */
  dispose(): void {
    clearInterval(this.#watchdog);
  }

  /** Bytes received from the connection so far (consumed or buffered). */
  get bytesRead(): number {
    return this.#bytesRead;
  }

  /** Bytes buffered and not yet consumed. */
  get #buffered(): number {
    return this.#end - this.#start;
  }

  /** Reads until at least `n` bytes are buffered (n <= buffer size); false if the stream ended first. */
  async #fill(n: number): Promise<boolean> {
    if (this.#buffered >= n) return true;
    if (this.#start > 0 && this.#start + n > this.#buf.byteLength) {
      this.#buf.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    while (this.#buffered < n) {
      let got: number | null;
      this.#waitingSince = performance.now();
      try {
        got = await this.#conn.read(this.#buf.subarray(this.#end));
      } catch (e) {
        if (this.#stalled) throw new StallError(this.#stallTimeoutMs / 1000);
        throw e;
      } finally {
        this.#waitingSince = null;
      }
      if (this.#stalled) throw new StallError(this.#stallTimeoutMs / 1000);
      if (got === null) return false;
      this.#end += got;
      this.#bytesRead += got;
    }
    return true;
  }

  /** Reads a frame's length prefix; `what` names the frame in errors. */
  async readLength(what: string): Promise<number> {
    if (!await this.#fill(FRAME_HEADER_SIZE)) {
      if (this.#buffered === 0) throw new TruncatedError(`the response (expected ${what})`);
      throw new TruncatedError(`the length of ${what}`);
    }
    const len = getFrameLength(this.#buf, this.#start);
    this.#start += FRAME_HEADER_SIZE;
    return len;
  }

  /** Reads exactly `n` bytes (at most the buffer size); the view is valid until the next read. */
  async readExact(n: number, what: string): Promise<Uint8Array> {
    if (n > this.#buf.byteLength) throw new Error(`${what}: ${n} bytes do not fit the read buffer`);
    if (!await this.#fill(n)) throw new TruncatedError(what);
    const view = this.#buf.subarray(this.#start, this.#start + n);
    this.#start += n;
    return view;
  }

  /**
   * Reads `n` bytes as a series of views (each valid until the next call), for data frames of any size
   * without copying them.
   */
  async *readChunks(n: number, what: string): AsyncGenerator<Uint8Array> {
    let left = n;
    while (left > 0) {
      if (this.#buffered === 0) {
        this.#start = this.#end = 0;
        if (!await this.#fill(1)) throw new TruncatedError(what);
      }
      const take = Math.min(left, this.#buffered);
      const view = this.#buf.subarray(this.#start, this.#start + take);
      this.#start += take;
      left -= take;
      yield view;
    }
  }
}
