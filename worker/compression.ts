/**
 * Compressed `get` bodies and listing batches (PROTOCOL.md "Compression"): when a client offers zstd, the
 * server compresses a file's bytes only if a sample of them compresses, and then one chunk at a time, each
 * chunk an independent zstd frame in its own Compressed frame, so the client can decode, resume and verify
 * as it does raw bytes.
 * The work is done in slices: at most one turn's budget of the file is read and compressed per turn, so a
 * connection that compresses delays the worker's other connections by a few milliseconds, not by a file.
 *
 * @module
 */

import type * as Zlib from "node:zlib";
import { C, pread, trySend, WOULD_BLOCK } from "../ffi/libc.ts";
import {
  COMPRESSED_PREFIX,
  FileShrankError,
  FRAME_HEADER_SIZE,
  FrameType,
  putDataFrameHeader,
  putFrameLength,
} from "../framing.ts";
import type { Body, PumpResult } from "./bodies.ts";
import { pageAlignedBuffer } from "../ffi/page_aligned.ts";

/**
 * The sample that decides, and the first chunk sent: its compressed form is reused, so a small file is
 * compressed once. A smaller first chunk also lets the first bytes go out sooner.
 */
export const COMPRESSION_SAMPLE_BYTES = 64 * 1024;

/**
 * Uncompressed bytes of every later chunk. zstd at level 1 on log-like text: 64 KiB chunks kept 21.8% of
 * the bytes at 150-166 MB/s, 256 KiB 20.7% at 171-200 MB/s, 1 MiB 20.4% at 164-170 MB/s (one core of this
 * machine under load): 256 KiB is the fastest, and still small to hold per connection.
 */
export const COMPRESSION_CHUNK_BYTES = 256 * 1024;

/**
 * A sample (or chunk) is sent compressed only if zstd saves at least this share of its bytes: below it, the
 * client's decoding and the server's CPU buy too little.
 */
export const MIN_SAVING = 0.1;

/** Bodies shorter than this are sent raw: a few hundred bytes saved cost more than they bring. */
export const MIN_COMPRESSED_BODY = 1024;

/**
 * After this many chunks in a row that did not compress, a body stops trying and sends the rest raw: a
 * file whose start compresses may go on with bytes that do not (an archive after its text header).
 */
export const GIVE_UP_AFTER = 4;

/**
 * zstd's level: 1 compressed log-like text as well as 3 (20.7% against 20.9% of the bytes) and at least
 * as fast; the point is to keep a 100 Mbit/s link busy without the CPU becoming the bottleneck.
 */
const ZSTD_LEVEL = 1;

/** node:zlib and the options of its zstd, once a client has offered zstd: see {@link zstd}. */
let loaded: { zlib: typeof Zlib; options: Zlib.ZstdOptions } | null = null;

/**
 * node:zlib, loaded on the first answer that may be compressed. Loading it took 70-110 ms on a busy
 * machine: a server whose clients never offer zstd should not pay that at every worker's start. The worker's
 * loop never yields to the event loop, so the load is synchronous (the `process` of Deno's Node layer, which
 * node:crypto has set up by then): it holds this worker once.
 */
function zstd(): { zlib: typeof Zlib; options: Zlib.ZstdOptions } {
  if (loaded === null) {
    // deno-lint-ignore no-process-global
    const zlib = process.getBuiltinModule("node:zlib") as typeof Zlib;
    loaded = {
      zlib,
      // The output in one piece of a chunk's size, not zlib's default 16 KiB pieces joined after.
      options: {
        params: { [zlib.constants.ZSTD_c_compressionLevel]: ZSTD_LEVEL },
        chunkSize: COMPRESSION_CHUNK_BYTES,
      },
    };
  }
  return loaded;
}

/** Where chunks are read to be compressed: one per worker, as a chunk is read and compressed in one go. */
const readBuffer = pageAlignedBuffer(COMPRESSION_CHUNK_BYTES);

/** Compresses `raw`; returns the compressed bytes, or null if they would not save {@link MIN_SAVING}. */
function compressChunk(raw: Uint8Array): Uint8Array | null {
  const { zlib, options } = zstd();
  const packed = zlib.zstdCompressSync(raw, options);
  return packed.byteLength + COMPRESSED_PREFIX <= raw.byteLength * (1 - MIN_SAVING) ? packed : null;
}

/** Reads `length` bytes at `offset` into {@link readBuffer}; throws FileShrankError if the file ends first. */
function readChunk(fd: number, offset: number, length: number, end: number): Uint8Array {
  const raw = readBuffer.subarray(0, length);
  for (let got = 0; got < length;) {
    const n = pread(fd, raw.subarray(got), offset + got);
    if (n <= 0) throw new FileShrankError(offset + got, end);
    got += n;
  }
  return raw;
}

/** A frame ready to send: its header (Data or Compressed) and its payload, each sent from where it stopped. */
interface Frame {
  header: Uint8Array;
  payload: Uint8Array;
  sent: number;
}

/** The frame for `raw` (a view of the read buffer: copied if it goes raw) and its compressed form, if any. */
function frameOf(raw: Uint8Array, packed: Uint8Array | null): Frame {
  if (packed === null) {
    const header = new Uint8Array(FRAME_HEADER_SIZE + 1);
    putDataFrameHeader(header, raw.byteLength);
    return { header, payload: raw.slice(), sent: 0 };
  }
  const header = new Uint8Array(FRAME_HEADER_SIZE + 1 + COMPRESSED_PREFIX);
  putFrameLength(header, 0, 1 + COMPRESSED_PREFIX + packed.byteLength);
  header[FRAME_HEADER_SIZE] = FrameType.Compressed;
  putFrameLength(header, FRAME_HEADER_SIZE + 1, raw.byteLength);
  return { header, payload: packed, sent: 0 };
}

/**
 * A whole Compressed frame holding `payload` (a streamed listing's batch of entries), or null if it is
 * shorter than {@link MIN_COMPRESSED_BODY} or compressing it would not save {@link MIN_SAVING}.
 */
export function compressedFrame(payload: Uint8Array): Uint8Array | null {
  // A listing whose folders the client knows is batches of a few records: to decode a few hundred bytes
  // saved, the client would load its zstd (tens of milliseconds of its run).
  if (payload.byteLength < MIN_COMPRESSED_BODY) return null;
  const packed = compressChunk(payload);
  if (packed === null) return null;
  const frame = frameOf(payload, packed);
  const whole = new Uint8Array(frame.header.byteLength + packed.byteLength);
  whole.set(frame.header);
  whole.set(packed, frame.header.byteLength);
  return whole;
}

/**
 * The body of a `get` from `offset` to `end`, compressed, if the client offered zstd and a sample of the
 * bytes compresses; null to send them raw (with sendfile, as to a client that offered nothing). The
 * sample is read and compressed here, once: it becomes the body's first frame.
 */
export function compressedBody(fd: number, offset: number, end: number): CompressedFileBody | null {
  if (end - offset < MIN_COMPRESSED_BODY) return null;
  const length = Math.min(COMPRESSION_SAMPLE_BYTES, end - offset);
  let raw: Uint8Array;
  try {
    raw = readChunk(fd, offset, length, end);
  } catch (e) {
    if (e instanceof FileShrankError) return null; // the raw body finds it too, and says FILE_CHANGED
    throw e;
  }
  const packed = compressChunk(raw);
  if (packed === null) return null;
  return new CompressedFileBody(fd, offset + length, end, frameOf(raw, packed));
}

/**
 * Request mode content, compressed: frames of at most {@link COMPRESSION_CHUNK_BYTES} of the file, each a
 * Compressed frame, or a Data frame for a chunk that does not compress. It holds at most one frame, the
 * one being sent. A file that shrinks is found before the frame that would need its missing bytes is
 * begun, so no frame is ever padded ({@link frameLeft} is 0).
 */
export class CompressedFileBody implements Body {
  #frame: Frame | null;
  #offset: number;
  /** Chunks in a row that did not compress. */
  #misses = 0;

  /**
   * @param fd the open file
   * @param offset the first byte after `first`
   * @param end the size announced in the header
   * @param first the frame of the sample, sent first
   */
  constructor(readonly fd: number, offset: number, readonly end: number, first: Frame) {
    this.#offset = offset;
    this.#frame = first;
  }

  /** Bytes of a begun frame the file can no longer fill: none, since a chunk is read before its frame. */
  get frameLeft(): number {
    return 0;
  }

  /**
   * See {@link Body.pump}. `budget` bounds the file bytes read and compressed in this call as well as the
   * bytes sent, so a well-compressing file costs a turn no more CPU than another.
   */
  pump(sock: number, budget: number): PumpResult {
    let sent = 0;
    let read = 0;
    for (;;) {
      const frame = this.#frame;
      if (frame !== null) {
        const headerLeft = frame.header.byteLength - frame.sent;
        const n = headerLeft > 0
          ? trySend(sock, frame.header.subarray(frame.sent), C.MSG_MORE)
          : trySend(sock, frame.payload.subarray(frame.sent - frame.header.byteLength));
        if (n === WOULD_BLOCK) return { sent, status: "blocked" };
        frame.sent += n;
        sent += n;
        if (frame.sent === frame.header.byteLength + frame.payload.byteLength) this.#frame = null;
        continue;
      }
      if (this.#offset >= this.end) return { sent, status: "done" };
      if (sent >= budget || read >= budget) return { sent, status: "yield" };
      const length = Math.min(COMPRESSION_CHUNK_BYTES, this.end - this.#offset);
      const raw = readChunk(this.fd, this.#offset, length, this.end);
      const packed = this.#misses < GIVE_UP_AFTER ? compressChunk(raw) : null;
      this.#misses = packed === null ? this.#misses + 1 : 0;
      this.#frame = frameOf(raw, packed);
      this.#offset += length;
      read += length;
    }
  }
}
