/**
 * Delta transfer by content-defined chunks, for the server and the client alike.
 *
 * The server cuts each file version into chunks once and serves the list (the *signature*); a client cuts
 * its old copy the same way, keeps the chunks whose hash and length appear in the signature, and asks only
 * for the byte ranges of the others. The server's work per version does not depend on what any client
 * holds, as with zsync, and because cut points depend on content (a gear hash over the last 32 bytes, as in
 * FastCDC), an insertion changes only the chunks around it, which fixed blocks cannot do without rsync's
 * per-client search on the server.
 *
 * A chunk's identity is its length and the first 8 bytes of its SHA-256. A collision can only make the
 * client build a wrong file, which the whole file's SHA-256 then refuses: nothing unverified is published.
 *
 * @module
 */

import { createSha256 } from "./hashing.ts";
import {
  CHUNK_GEAR_SEED,
  MAX_CHUNK_BITS,
  MIN_CHUNK_BITS,
  SIGNATURE_ENTRY_SIZE,
  SIGNATURE_HEADER_SIZE,
  SIGNATURE_MAGIC,
} from "./framing.ts";
import { pageAlignedBuffer } from "./ffi/page_aligned.ts";

/** The gear table: 256 pseudo-random 32-bit values from a fixed xorshift32 seed, the same on both sides. */
const GEAR: Uint32Array = (() => {
  const table = new Uint32Array(256);
  let x = CHUNK_GEAR_SEED;
  for (let i = 0; i < 256; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    table[i] = x >>> 0;
  }
  return table;
})();

/**
 * The chunk size for a file of `size` bytes, as a power of two: about twice the square root of the size
 * (rsync sizes its blocks at the square root), between 2^MIN_CHUNK_BITS and 2^MAX_CHUNK_BITS. Larger
 * chunks make a shorter signature and cost less to cut (hashing a chunk has a fixed cost of some 5 us);
 * smaller ones fetch less around an edit. At twice the root, the shorter signature saves more bytes than
 * the larger chunks around an edit add, for edits of a few places in a file.
 */
export function chunkBitsFor(size: number): number {
  const bits = Math.round(Math.log2(Math.max(1, 2 * Math.sqrt(size))));
  return Math.min(MAX_CHUNK_BITS, Math.max(MIN_CHUNK_BITS, bits));
}

/** The bounds of a chunk's length for a chunk size of 2^bits: a quarter of it at least, four times at most. */
export function chunkLimits(bits: number): { min: number; max: number } {
  return { min: 1 << (bits - 2), max: 1 << (bits + 2) };
}

/** Bytes the gear hash depends on: each step shifts it left by one bit, so older bytes drop out of 32 bits. */
const GEAR_WINDOW = 32;

/**
 * Finds cut points in a stream of bytes. A chunk ends where the gear hash's top `bits` bits are all zero,
 * once it is at least `min` long, or when it reaches `max`. The hash of a byte depends only on the 32
 * bytes before it, so cuts re-synchronise right after an edit.
 *
 * For the same reason the first `min - 32` bytes of a chunk need no hashing at all (as FastCDC skips them):
 * the hash at `min` is the same whatever came before its last 32 bytes. The cut points are those of hashing
 * every byte; only the time differs.
 */
export class Chunker {
  readonly #mask: number;
  readonly #min: number;
  readonly #max: number;
  #hash = 0;
  #length = 0;

  /** @param bits log2 of the chunk size ({@link chunkBitsFor}) */
  constructor(readonly bits: number) {
    if (!Number.isInteger(bits) || bits < MIN_CHUNK_BITS || bits > MAX_CHUNK_BITS) {
      throw new RangeError(`chunk bits ${bits} outside ${MIN_CHUNK_BITS}..${MAX_CHUNK_BITS}`);
    }
    this.#mask = (~0 << (32 - bits)) | 0;
    ({ min: this.#min, max: this.#max } = chunkLimits(bits));
  }

  /**
   * Feeds `data`; calls `onCut(end)` with the index in `data` just past each chunk that ends in it. The
   * bytes after the last cut carry over to the next call. An `onCut` that returns true stops the feed at
   * its cut: the rest of `data` is not looked at (for a caller that wants the first chunk only).
   */
  update(data: Uint8Array, onCut: (end: number) => boolean | void): void {
    const mask = this.#mask, min = this.#min, max = this.#max, n = data.length;
    let hash = this.#hash, length = this.#length, i = 0;
    while (i < n) {
      if (length < min - GEAR_WINDOW) {
        const skip = Math.min(min - GEAR_WINDOW - length, n - i);
        i += skip;
        length += skip;
        continue;
      }
      // Up to and including byte `max` of the chunk, stopping after the first byte whose hash cuts.
      const stop = i + Math.min(max - length, n - i);
      const check = i + Math.max(0, min - 1 - length);
      let j = i;
      for (; j < check && j < stop; j++) hash = ((hash << 1) + GEAR[data[j]]) | 0;
      let cut = false;
      for (; j < stop;) {
        hash = ((hash << 1) + GEAR[data[j++]]) | 0;
        if ((hash & mask) === 0) {
          cut = true;
          break;
        }
      }
      length += j - i;
      i = j;
      if (cut || length === max) {
        hash = 0;
        length = 0;
        if (onCut(i) === true) break;
      }
    }
    this.#hash = hash;
    this.#length = length;
  }
}

/** A file's chunks: lengths, and the first 8 bytes of each chunk's SHA-256. */
export interface Signature {
  /** log2 of the chunk size the cuts were made with. */
  bits: number;
  /** The file's size: the sum of the lengths. */
  size: number;
  /** Each chunk's length. */
  lengths: Uint32Array;
  /** Each chunk's 8-byte hash prefix, `8 * lengths.length` bytes. */
  hashes: Uint8Array;
}

/** Most bytes a signature of a file of `size` bytes can take: one entry per 1 KiB (the smallest chunk). */
export function maxSignatureLength(size: number): number {
  return SIGNATURE_HEADER_SIZE + SIGNATURE_ENTRY_SIZE * (Math.ceil(size / 1024) + 1);
}

/**
 * Builds a {@link Signature} from a file's bytes fed in order, in pieces of any size: what the server does
 * once per version, in slices between I/O, and the client over its old copy. Needs {@link loadHashing}.
 */
export class SignatureBuilder {
  readonly #chunker: Chunker;
  readonly #lengths: number[] = [];
  readonly #hashes: number[] = [];
  #hash = createSha256();
  #size = 0;
  /** Bytes of the chunk in progress fed by earlier calls. */
  #carried = 0;

  /** @param bits log2 of the chunk size: {@link chunkBitsFor} of the file's size */
  constructor(readonly bits: number) {
    this.#chunker = new Chunker(bits);
  }

  /** Feeds the next bytes of the file. */
  update(data: Uint8Array): void {
    let start = 0;
    this.#chunker.update(data, (end) => {
      this.#hash.update(data.subarray(start, end));
      this.#close(this.#carried + end - start);
      this.#carried = 0;
      start = end;
    });
    if (start < data.length) {
      this.#hash.update(data.subarray(start));
      this.#carried += data.length - start;
    }
    this.#size += data.length;
  }

  /** The signature of everything fed. */
  finish(): Signature {
    if (this.#carried > 0) this.#close(this.#carried);
    this.#carried = 0;
    const lengths = Uint32Array.from(this.#lengths);
    const hashes = Uint8Array.from(this.#hashes);
    return { bits: this.bits, size: this.#size, lengths, hashes };
  }

  #close(length: number): void {
    const digest = this.#hash.digest();
    for (let i = 0; i < 8; i++) this.#hashes.push(digest[i]);
    this.#lengths.push(length);
    this.#hash = createSha256();
  }
}

/** The signature of bytes held in memory. Needs {@link loadHashing}. */
export function signatureOf(data: Uint8Array, bits = chunkBitsFor(data.length)): Signature {
  const builder = new SignatureBuilder(bits);
  builder.update(data);
  return builder.finish();
}

/** A signature that does not describe a file: the client publishes nothing built from it. */
export class SignatureError extends Error {
  /** @param message what is wrong with it */
  constructor(message: string) {
    super(`malformed signature: ${message}`);
    this.name = "SignatureError";
  }
}

/** The wire form: magic, bits, size, count, then per chunk its length (u32) and hash prefix (8 bytes). */
export function encodeSignature(signature: Signature): Uint8Array {
  const count = signature.lengths.length;
  const out = new Uint8Array(SIGNATURE_HEADER_SIZE + count * SIGNATURE_ENTRY_SIZE);
  const view = new DataView(out.buffer);
  out.set(SIGNATURE_MAGIC);
  view.setUint8(4, signature.bits);
  view.setBigUint64(8, BigInt(signature.size), true);
  view.setUint32(16, count, true);
  for (let i = 0; i < count; i++) {
    const at = SIGNATURE_HEADER_SIZE + i * SIGNATURE_ENTRY_SIZE;
    view.setUint32(at, signature.lengths[i], true);
    out.set(signature.hashes.subarray(8 * i, 8 * i + 8), at + 4);
  }
  return out;
}

/**
 * Reads a signature from the wire, checking that it can describe a file of `expectedSize` bytes (if given:
 * else of the size it names): the lengths add up to the size, each within the chunk limits. Throws
 * {@link SignatureError}.
 */
export function decodeSignature(bytes: Uint8Array, expectedSize?: number): Signature {
  if (bytes.length < SIGNATURE_HEADER_SIZE) throw new SignatureError(`${bytes.length} bytes is too short`);
  if (!SIGNATURE_MAGIC.every((b, i) => bytes[i] === b)) throw new SignatureError("unknown magic");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const bits = view.getUint8(4);
  if (bits < MIN_CHUNK_BITS || bits > MAX_CHUNK_BITS) throw new SignatureError(`chunk bits ${bits}`);
  const size = Number(view.getBigUint64(8, true));
  if (expectedSize !== undefined && size !== expectedSize) {
    throw new SignatureError(`size ${size}, the file's is ${expectedSize}`);
  }
  const count = view.getUint32(16, true);
  if (bytes.length !== SIGNATURE_HEADER_SIZE + count * SIGNATURE_ENTRY_SIZE) {
    throw new SignatureError(`${count} chunks do not fit in ${bytes.length} bytes`);
  }
  const { max } = chunkLimits(bits);
  const lengths = new Uint32Array(count);
  const hashes = new Uint8Array(8 * count);
  let total = 0;
  for (let i = 0; i < count; i++) {
    const at = SIGNATURE_HEADER_SIZE + i * SIGNATURE_ENTRY_SIZE;
    const length = view.getUint32(at, true);
    if (length === 0 || length > max) throw new SignatureError(`chunk ${i} has length ${length}`);
    lengths[i] = length;
    hashes.set(bytes.subarray(at + 4, at + 12), 8 * i);
    total += length;
  }
  if (total !== size) throw new SignatureError(`chunk lengths add up to ${total}, not ${size}`);
  return { bits, size, lengths, hashes };
}

/** A chunk's key for lookups: its length and its 8-byte hash prefix (`hashes` from `at`). */
function keyOf(length: number, h: Uint8Array, at: number): string {
  // A string of the length and the 8 bytes: Map lookups on it are exact, with no bigint arithmetic.
  return String.fromCharCode(
    length & 0xffff,
    length >>> 16,
    h[at] | (h[at + 1] << 8),
    h[at + 2] | (h[at + 3] << 8),
    h[at + 4] | (h[at + 5] << 8),
    h[at + 6] | (h[at + 7] << 8),
  );
}

/** The key of chunk `i` of `signature`. */
function chunkKey(signature: Signature, i: number): string {
  return keyOf(signature.lengths[i], signature.hashes, 8 * i);
}

/** Where chunks are in an old copy: offset by chunk key (length and hash prefix). */
export type ChunkIndex = Map<string, number>;

/** The chunks of the old copy's own signature (cut with the remote's bits), each at its offset. */
export function indexChunks(local: Signature): ChunkIndex {
  const have: ChunkIndex = new Map();
  for (let i = 0, at = 0; i < local.lengths.length; at += local.lengths[i], i++) {
    const key = chunkKey(local, i);
    if (!have.has(key)) have.set(key, at);
  }
  return have;
}

/**
 * Finds the chunks of `remote` in an old copy of `size` bytes, read through `readAt` (bytes read into the
 * buffer from the offset; 0 at the end), with the remote signature in hand: the old copy is cut by a
 * {@link GuidedSignatureBuilder} that follows the remote signature, so that where the old copy agrees with
 * the new version its chunks are only hashed. Finds the same chunks as cutting all of it. Needs
 * {@link loadHashing}.
 */
export function findChunks(
  remote: Signature,
  size: number,
  readAt: (buffer: Uint8Array, offset: number) => number,
): ChunkIndex {
  const have: ChunkIndex = new Map();
  const builder = new GuidedSignatureBuilder(remote, (offset, _length, i) => {
    if (i < 0) return;
    const key = chunkKey(remote, i);
    if (!have.has(key)) have.set(key, offset);
  });
  const buffer = pageAlignedBuffer(FIND_BUFFER);
  for (let offset = 0; offset < size;) {
    const n = readAt(buffer.subarray(0, Math.min(buffer.length, size - offset)), offset);
    if (n <= 0) break; // the copy is shorter than it was: what it holds is looked at, no more
    builder.update(buffer.subarray(0, n));
    offset += n;
  }
  builder.finish();
  return have;
}

/**
 * Builds a {@link Signature} like {@link SignatureBuilder}, with the same cuts, from bytes fed in order,
 * following the signature of another version of the file (the `guide`, cut with the same bits): each
 * chunk is first taken to be the guide's chunk that follows the last one found, and only hashed; where
 * that fails (around an edit) the bytes are cut as {@link SignatureBuilder} cuts them, and the chunk looked
 * up among all the guide's, the guesses then going on from the one it matched.
 *
 * A chunk's cut depends only on its own bytes, so a chunk whose bytes are a chunk of the guide is cut where
 * the guide's was: the result is the same signature, without running the gear hash over the bytes that
 * agree. The one exception is the guide's last chunk, which the end of that file may have cut: it is taken
 * only where this file ends too. The server signs a new version by its previous one, and the client finds
 * the new version's chunks in its old copy by the new signature ({@link findChunks}). Needs
 * {@link loadHashing}.
 */
export class GuidedSignatureBuilder {
  readonly bits: number;
  readonly #guide: Signature;
  /** The guide's chunks by key (the first of equal ones). */
  readonly #guideAt = new Map<string, number>();
  readonly #max: number;
  readonly #onChunk: (offset: number, length: number, guideIndex: number) => void;
  /** Bytes fed and not yet in a chunk: `#buffer[#start, #end)`, from file offset `#offset`. */
  #buffer = new Uint8Array(0);
  #start = 0;
  #end = 0;
  #offset = 0;
  /** The guide's chunk expected next. */
  #next = 0;
  /** The offset where that guess failed already (not to hash it again while more bytes come). */
  #failedAt = -1;
  #finished = false;
  readonly #lengths: number[] = [];
  readonly #hashes: number[] = [];
  /** Bytes of the chunks found in the guide. */
  followed = 0;

  /**
   * @param guide the signature followed; its bits are this signature's
   * @param onChunk told of each chunk as it is cut: its offset, length, and index in the guide (-1: not there)
   */
  constructor(
    guide: Signature,
    onChunk: (offset: number, length: number, guideIndex: number) => void = () => {},
  ) {
    this.bits = guide.bits;
    this.#guide = guide;
    this.#max = chunkLimits(guide.bits).max;
    this.#onChunk = onChunk;
    for (let i = guide.lengths.length - 1; i >= 0; i--) this.#guideAt.set(chunkKey(guide, i), i);
  }

  /** Feeds the next bytes of the file (copied: the caller may reuse its buffer). */
  update(data: Uint8Array): void {
    if (this.#end + data.length > this.#buffer.length) {
      const pending = this.#buffer.subarray(this.#start, this.#end);
      const size = pending.length + data.length;
      if (size > this.#buffer.length) {
        const grown = new Uint8Array(Math.max(size, 2 * this.#max, 2 * this.#buffer.length));
        grown.set(pending);
        this.#buffer = grown;
      } else this.#buffer.copyWithin(0, this.#start, this.#end);
      this.#end = pending.length;
      this.#start = 0;
    }
    this.#buffer.set(data, this.#end);
    this.#end += data.length;
    this.#cut();
  }

  /** The signature of everything fed. */
  finish(): Signature {
    this.#finished = true;
    this.#cut();
    const size = this.#offset;
    return {
      bits: this.bits,
      size,
      lengths: Uint32Array.from(this.#lengths),
      hashes: Uint8Array.from(this.#hashes),
    };
  }

  /** Cuts every chunk the bytes held allow (all of them once finished). */
  #cut(): void {
    const guide = this.#guide, count = guide.lengths.length;
    for (let pending = this.#end - this.#start; pending > 0; pending = this.#end - this.#start) {
      const next = this.#next;
      if (next < count && this.#failedAt !== this.#offset) {
        const length = guide.lengths[next], last = next === count - 1;
        // The guess waits for its bytes; the guide's last chunk, which the end of its file may have cut, is
        // a guess only where this file ends too, so it also waits to know whether more bytes come.
        if (!this.#finished && (pending < length || (last && pending === length))) return;
        if (pending >= length && (!last || pending === length)) {
          const digest = this.#digest(length);
          if (keyOf(length, digest, 0) === chunkKey(guide, next)) {
            this.#emit(length, digest, next);
            continue;
          }
        }
        this.#failedAt = this.#offset;
      }
      if (pending < this.#max && !this.#finished) return; // a cut may lie anywhere up to the largest chunk
      const window = Math.min(this.#max, pending);
      let length = window;
      new Chunker(this.bits).update(this.#buffer.subarray(this.#start, this.#start + window), (end) => {
        length = end;
        return true; // the chunk that starts here is all that is wanted
      });
      const digest = this.#digest(length);
      this.#emit(length, digest, this.#guideAt.get(keyOf(length, digest, 0)) ?? -1);
    }
  }

  /** The SHA-256 of the next `length` bytes held. */
  #digest(length: number): Uint8Array {
    return createSha256().update(this.#buffer.subarray(this.#start, this.#start + length)).digest();
  }

  #emit(length: number, digest: Uint8Array, guideIndex: number): void {
    this.#onChunk(this.#offset, length, guideIndex);
    this.#lengths.push(length);
    for (let i = 0; i < 8; i++) this.#hashes.push(digest[i]);
    if (guideIndex >= 0) {
      this.#next = guideIndex + 1;
      this.followed += length;
    }
    this.#start += length;
    this.#offset += length;
  }
}

/** Bytes of the old copy {@link findChunks} reads at a time. */
const FIND_BUFFER = 1024 * 1024;

/** One step of building the new file: bytes copied from the old copy, or fetched from the server. */
export interface DeltaStep {
  /** Where the bytes go in the new file. */
  offset: number;
  /** How many. */
  length: number;
  /** Where they are in the old copy; null when they are fetched. */
  from: number | null;
}

/** How to build the new version from the old copy. */
export interface DeltaPlan {
  /** Every byte of the new file, in order, each run of adjacent steps of one kind merged. */
  steps: DeltaStep[];
  /** The byte ranges to fetch, in order: `[offset, length]` in the new file. */
  ranges: [number, number][];
  /** Bytes fetched. */
  fetchBytes: number;
  /** Bytes copied from the old copy. */
  reusedBytes: number;
}

/**
 * Plans the new version (`remote`, the server's signature) from the chunks found in the old copy (`have`:
 * {@link indexChunks} or {@link findChunks}): a remote chunk found there is copied, the rest fetched.
 */
export function planDelta(remote: Signature, have: ChunkIndex): DeltaPlan {
  const steps: DeltaStep[] = [];
  let fetchBytes = 0;
  for (let i = 0, offset = 0; i < remote.lengths.length; offset += remote.lengths[i], i++) {
    const length = remote.lengths[i];
    const from = have.get(chunkKey(remote, i)) ?? null;
    if (from === null) fetchBytes += length;
    const last = steps.at(-1);
    if (
      last !== undefined && (from === null) === (last.from === null) &&
      (from === null || last.from! + last.length === from)
    ) {
      last.length += length;
    } else {
      steps.push({ offset, length, from });
    }
  }
  const ranges = steps.filter((s) => s.from === null).map((s): [number, number] => [s.offset, s.length]);
  return { steps, ranges, fetchBytes, reusedBytes: remote.size - fetchBytes };
}
