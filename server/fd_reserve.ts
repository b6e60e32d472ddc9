/**
 * File descriptors the master holds in reserve for when its open-file limit is reached: with every fd in
 * use, it could neither accept a connection to answer BUSY (the connection would wait in the kernel's
 * queue until the client gives up) nor start a worker (socketpair: EMFILE). Closing reserved fds makes
 * room for exactly that work; they are taken again right after.
 *
 * @module
 */

import { close, openRead } from "../ffi/libc.ts";

/** A few fds held open on /dev/null, released to make room when the process has no fd free. */
export class FdReserve {
  readonly #want: number;
  readonly #held: number[] = [];

  /** @param size how many fds to hold */
  constructor(size: number) {
    this.#want = size;
    this.refill();
  }

  /** Fds held now. */
  get held(): number {
    return this.#held.length;
  }

  /** Closes up to `count` held fds, so that the next calls that open fds find them free; returns how many. */
  release(count: number): number {
    let released = 0;
    while (released < count && this.#held.length > 0) {
      close(this.#held.pop()!);
      released++;
    }
    return released;
  }

  /** Takes fds back up to the reserve's size, as far as the limit allows; true if it is full. */
  refill(): boolean {
    while (this.#held.length < this.#want) {
      try {
        this.#held.push(openRead("/dev/null"));
      } catch {
        return false; // EMFILE/ENFILE: try again later
      }
    }
    return true;
  }
}
