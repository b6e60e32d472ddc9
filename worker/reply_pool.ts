/**
 * Buffers for whole small replies (header, data and end frame, sent in one call), reused instead of
 * allocated per request: a fresh zeroed buffer of up to 64 KiB per request was a measurable share of a
 * small file's cost (allocation, zeroing, and the garbage collector's bookkeeping of external memory). A
 * buffer comes back when its connection has sent it whole; one whose connection died first is left to
 * the garbage collector.
 *
 * @module
 */

/** Capacity of each buffer: the largest small reply's data (64 KiB) with room for its frames. */
export const REPLY_BUFFER_BYTES = 80 * 1024;

/** Free buffers kept at most; beyond, returned buffers are dropped. */
const MAX_FREE = 64;

const free: ArrayBuffer[] = [];
const ours = new WeakSet<ArrayBufferLike>();

/** A buffer of {@link REPLY_BUFFER_BYTES} with unspecified contents. */
export function takeReplyBuffer(): Uint8Array {
  let buffer = free.pop();
  if (buffer === undefined) {
    buffer = new ArrayBuffer(REPLY_BUFFER_BYTES);
    ours.add(buffer);
  }
  return new Uint8Array(buffer);
}

/** Gives back the buffer under `piece` if it is one of these and no longer used; anything else is ignored. */
export function returnReplyBuffer(piece: Uint8Array): void {
  if (ours.has(piece.buffer) && free.length < MAX_FREE) free.push(piece.buffer as ArrayBuffer);
}
