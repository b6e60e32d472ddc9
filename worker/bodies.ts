/**
 * File bodies a connection sends: produced on demand, straight from the file to the socket, resumable at
 * any byte. A body keeps only a position, never a copy of the data, so a connection that is slow to read
 * costs a few numbers, not a buffer.
 *
 * @module
 */

import { C, pread, trySend, trySendfile, WOULD_BLOCK } from "../ffi/libc.ts";
import {
  classicBodyLength,
  DATA_FRAME_PAYLOAD,
  FileShrankError,
  fillClassicBody,
  FRAME_HEADER_SIZE,
  putDataFrameHeader,
} from "../framing.ts";
import { pageAlignedBuffer } from "../ffi/page_aligned.ts";

/** What one {@link Body.pump} call achieved. */
export interface PumpResult {
  /** Bytes written to the socket. */
  sent: number;
  /** "done": all sent; "blocked": the socket is full (wait for EPOLLOUT); "yield": the budget is used. */
  status: "done" | "blocked" | "yield";
}

/** A file body being sent. The file's fd belongs to the caller, who closes it. */
export interface Body {
  /** Sends what it can within `budget` bytes. Throws FileShrankError if the file ends early. */
  pump(sock: number, budget: number): PumpResult;
  /** If present, called once when the connection no longer needs the body: sent whole, or dropped. */
  release?(): void;
}

const classicScratch = new Uint8Array(256 * (FRAME_HEADER_SIZE + 1000));

/**
 * File bytes for classic frames, read 256 KiB at a time: the framing asks for 1000 bytes per frame, and
 * one pread per frame would cost a syscall per KB. Worker-wide; `blockOwner` says whose bytes it holds.
 */
const classicBlock = pageAlignedBuffer(256 * 1000);
let blockOwner: ClassicBody | null = null;
let blockStart = 0;
let blockLength = 0;

/**
 * Classic mode content: frames of 1000 bytes and the end frame, regenerated from the file at the stream
 * position into one worker-wide scratch buffer (the framing is fixed, so any position can be rebuilt).
 */
export class ClassicBody implements Body {
  #position = 0;
  readonly #total: number;
  readonly #readAt = (buf: Uint8Array, at: number): number => {
    if (blockOwner !== this || at < blockStart || at >= blockStart + blockLength) {
      blockOwner = this;
      blockStart = at;
      blockLength = Math.max(0, pread(this.fd, classicBlock, at));
      if (blockLength === 0) return 0;
    }
    const n = Math.min(buf.byteLength, blockStart + blockLength - at);
    buf.set(classicBlock.subarray(at - blockStart, at - blockStart + n));
    return n;
  };

  /**
   * @param fd the open file
   * @param size its size when the transfer started
   */
  constructor(readonly fd: number, readonly size: number) {
    this.#total = classicBodyLength(size);
  }

  /** See {@link Body.pump}. */
  pump(sock: number, budget: number): PumpResult {
    let sent = 0;
    while (this.#position < this.#total) {
      if (sent >= budget) return { sent, status: "yield" };
      const filled = fillClassicBody(classicScratch, this.#position, this.size, this.#readAt);
      const n = trySend(sock, classicScratch.subarray(0, filled));
      if (n === WOULD_BLOCK) return { sent, status: "blocked" };
      this.#position += n;
      sent += n;
    }
    if (blockOwner === this) blockOwner = null; // done: do not keep this body alive through the cache
    return { sent, status: "done" };
  }
}

/** Request mode content: Data frames of up to 15 MiB, each a 5-byte header then sendfile(2). */
export class FramedFileBody implements Body {
  readonly #header = new Uint8Array(FRAME_HEADER_SIZE + 1);
  #headerLeft = 0;
  #frameLeft = 0;
  #offset: number;

  /**
   * @param fd the open file
   * @param offset first byte to send
   * @param end the size announced in the header
   */
  constructor(readonly fd: number, offset: number, readonly end: number) {
    this.#offset = offset;
  }

  /** Bytes of the current data frame not yet sent (to be padded if the file shrinks). */
  get frameLeft(): number {
    return this.#frameLeft;
  }

  /** See {@link Body.pump}. */
  pump(sock: number, budget: number): PumpResult {
    let sent = 0;
    for (;;) {
      if (this.#headerLeft > 0) {
        const from = this.#header.byteLength - this.#headerLeft;
        const n = trySend(sock, this.#header.subarray(from), C.MSG_MORE);
        if (n === WOULD_BLOCK) return { sent, status: "blocked" };
        this.#headerLeft -= n;
        sent += n;
      } else if (this.#frameLeft > 0) {
        if (sent >= budget) return { sent, status: "yield" };
        const wanted = Math.min(this.#frameLeft, budget - sent);
        const n = trySendfile(sock, this.fd, this.#offset, wanted);
        if (n === WOULD_BLOCK) return { sent, status: "blocked" };
        if (n === 0) throw new FileShrankError(this.#offset, this.end);
        this.#offset += n;
        this.#frameLeft -= n;
        sent += n;
        // A short count means the socket's buffer is full: asking again at once would only get EAGAIN.
        // EPOLLOUT is level-triggered, so if there is room after all, the next wait returns at once.
        if (n < wanted) return { sent, status: "blocked" };
      } else if (this.#offset < this.end) {
        const len = Math.min(DATA_FRAME_PAYLOAD, this.end - this.#offset);
        putDataFrameHeader(this.#header, len);
        this.#headerLeft = this.#header.byteLength;
        this.#frameLeft = len;
      } else {
        return { sent, status: "done" };
      }
    }
  }
}

/**
 * A range of bytes of an fd sent as they are, with sendfile(2): a cached reply held ready in a memfd, or an
 * HTTP body straight from the file. No copy through the worker, and the socket takes references to the
 * pages instead of copying them. Throws FileShrankError if the fd ends before the range does.
 */
export class FileRangeBody implements Body {
  #offset: number;

  /**
   * @param fd the file holding the bytes, kept open by its owner at least until `release` runs
   * @param offset where the bytes start
   * @param end where they end
   * @param release called once when the body is sent or dropped, if given
   * @param headerLength bytes of the Header frame the range starts with (a cached reply), or 0
   */
  constructor(
    readonly fd: number,
    offset: number,
    readonly end: number,
    readonly release?: () => void,
    readonly headerLength = 0,
  ) {
    this.#offset = this.start = offset;
  }

  /** Where the bytes start. */
  readonly start: number;

  /** See {@link Body.pump}. */
  pump(sock: number, budget: number): PumpResult {
    let sent = 0;
    while (this.#offset < this.end) {
      if (sent >= budget) return { sent, status: "yield" };
      const wanted = Math.min(this.end - this.#offset, budget - sent);
      const n = trySendfile(sock, this.fd, this.#offset, wanted);
      if (n === WOULD_BLOCK) return { sent, status: "blocked" };
      if (n === 0) throw new FileShrankError(this.#offset, this.end);
      this.#offset += n;
      sent += n;
      if (n < wanted) return { sent, status: "blocked" }; // the socket's buffer is full (see FramedFileBody)
    }
    return { sent, status: "done" };
  }
}

/** Zeros shared by every {@link ZeroPadding}. */
const zeros = new Uint8Array(64 * 1024);

/**
 * Zero bytes that fill a data frame whose file shrank during the transfer, sent from one shared buffer:
 * a frame can announce up to 15 MiB, and a file replaced under many readers must not cost a buffer each.
 */
export class ZeroPadding implements Body {
  #left: number;

  /** @param left how many zero bytes to send */
  constructor(left: number) {
    this.#left = left;
  }

  /** See {@link Body.pump}. */
  pump(sock: number, budget: number): PumpResult {
    let sent = 0;
    while (this.#left > 0) {
      if (sent >= budget) return { sent, status: "yield" };
      const n = trySend(sock, zeros.subarray(0, Math.min(zeros.byteLength, this.#left)));
      if (n === WOULD_BLOCK) return { sent, status: "blocked" };
      this.#left -= n;
      sent += n;
    }
    return { sent, status: "done" };
  }
}
