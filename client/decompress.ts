/**
 * Decoding the Compressed frames of a `get` answer (PROTOCOL.md "Compression"): each holds one chunk's
 * uncompressed length and the chunk as an independent zstd frame. A frame that does not decode to exactly
 * its length is a protocol error: the part gets nothing from it, and nothing is published.
 *
 * @module
 */

import type * as Zlib from "node:zlib";
import { protocolError } from "./failure.ts";
import { COMPRESSED_PREFIX, getFrameLength, MAX_COMPRESSED_CHUNK } from "../framing.ts";

/** node:zlib, once {@link loadDecompression} has run. */
let zlib: typeof Zlib | null = null;

/**
 * Loads zstd (node:zlib) before the first Compressed frame is decoded: loading it took 70-110 ms of a busy
 * machine, which a client that is never sent one does not pay.
 */
export async function loadDecompression(): Promise<void> {
  zlib ??= await import("node:zlib");
}

/** Throws a protocol error unless a Compressed frame's payload of `length` bytes is within the limits. */
export function checkCompressedLength(length: number): void {
  if (length <= COMPRESSED_PREFIX || length > COMPRESSED_PREFIX + MAX_COMPRESSED_CHUNK) {
    throw protocolError(
      `a compressed frame of ${length} bytes (at most ${COMPRESSED_PREFIX + MAX_COMPRESSED_CHUNK})`,
    );
  }
}

/**
 * The bytes a Compressed frame's `payload` (after the type byte) stands for; `room` is how many bytes the
 * answer may still bring. Decoding never produces more than the length the frame names, so a frame cannot
 * make the client allocate more than {@link MAX_COMPRESSED_CHUNK}. Needs {@link loadDecompression}.
 */
export function decodeChunk(payload: Uint8Array, room: number): Uint8Array {
  checkCompressedLength(payload.byteLength);
  const length = getFrameLength(payload, 0);
  if (length <= 0 || length > MAX_COMPRESSED_CHUNK) {
    throw protocolError(`a compressed frame names ${length} bytes (1 to ${MAX_COMPRESSED_CHUNK})`);
  }
  if (length > room) throw protocolError(`more than the ${room} bytes still announced`);
  if (zlib === null) throw new Error("zstd used before loadDecompression() completed");
  let chunk: Uint8Array;
  try {
    // The output in one piece: with zlib's default 16 KiB pieces, joining them took most of the time.
    chunk = zlib.zstdDecompressSync(payload.subarray(COMPRESSED_PREFIX), {
      maxOutputLength: length,
      chunkSize: Math.max(length, 64),
    });
  } catch (e) {
    throw protocolError(`a compressed frame does not decode: ${(e as Error).message.split("\n")[0]}`);
  }
  if (chunk.byteLength !== length) {
    throw protocolError(
      `a compressed frame decodes to ${chunk.byteLength} bytes, not the ${length} it names`,
    );
  }
  return chunk;
}
