/**
 * Buffers for whole small replies (header, data and end frame, sent in one call), and pools of other
 * buffers (a listing's Data frames of inlined content), reused instead of allocated per request: a fresh
 * zeroed buffer of up to 64 KiB per request was a measurable share of a small file's cost (allocation,
 * zeroing, and the garbage collector's bookkeeping of external memory). A buffer comes back when its
 * connection has sent it whole; one whose connection died first is left to the garbage collector.
 *
 * @module
 */

/** Capacity of each buffer: the largest small reply's data (64 KiB) with room for its frames. */
export const REPLY_BUFFER_BYTES = 80 * 1024;

/**
 * Buffers of one size, taken and given back: a buffer given back while something still reads it would
 * be handed out again, so only its last user gives it back.
 */
export class BufferPool {
  readonly #free: ArrayBuffer[] = [];
  readonly #ours = new WeakSet<ArrayBufferLike>();

  /**
   * @param bytes the size of each buffer
   * @param maxFree free buffers kept at most; beyond, buffers given back are dropped
   */
  constructor(readonly bytes: number, readonly maxFree: number) {}

  /** A buffer of {@link bytes} with unspecified contents. */
  take(): Uint8Array {
    let buffer = this.#free.pop();
    if (buffer === undefined) {
      buffer = new ArrayBuffer(this.bytes);
      this.#ours.add(buffer);
    }
    return new Uint8Array(buffer);
  }

  /** Gives back the buffer under `piece` if it is one of this pool's; anything else is ignored. */
  give(piece: Uint8Array): void {
    if (this.#ours.has(piece.buffer) && this.#free.length < this.maxFree) {
      this.#free.push(piece.buffer as ArrayBuffer);
    }
  }
}

const replies = new BufferPool(REPLY_BUFFER_BYTES, 64);

/** A buffer of {@link REPLY_BUFFER_BYTES} with unspecified contents. */
export function takeReplyBuffer(): Uint8Array {
  return replies.take();
}

/** Gives back the buffer under `piece` if it is one of these and no longer used; anything else is ignored. */
export function returnReplyBuffer(piece: Uint8Array): void {
  replies.give(piece);
}
