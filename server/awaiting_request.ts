/**
 * Connections whose client has not sent a byte yet wait here, in the master, rather than on a worker.
 *
 * `TCP_DEFER_ACCEPT` keeps most silent connections in the kernel, but not all: past the SYN queue the
 * kernel answers with SYN cookies, which skip the deferral, and after the deferral a silent connection is
 * accepted anyway. Handed to a worker, each would cost a hand-off message, and the master would count it on
 * a worker slot until the worker's next notice, so a burst of thousands of idle connections could fill
 * every slot and the queue and make a real client's request BUSY. Held here, a connection costs an fd, an
 * epoll entry and a map entry, and no worker hears of it until its first byte arrives. Only ferry's request
 * listeners wait (HTTP too: its client also speaks first); a classic client is sent its file at once.
 *
 * @module
 */

import type { Epoll } from "../ffi/epoll.ts";
import { EPOLLIN } from "../ffi/epoll.ts";
import { silentAllowanceMs } from "../channel/messages.ts";
import { C, close, LibcError, tryRecv, trySend, WOULD_BLOCK } from "../ffi/libc.ts";

/** Connections that may wait at once; past it, a new one goes to a worker as before (no wait, no refusal). */
export const MAX_AWAITING = 16_384;

/** What {@link AwaitingRequest.hold} did with a connection. */
export type HoldResult = "ready" | "waiting" | "closed";

const PEEK_SCRATCH = new Uint8Array(1);

/** The connections waiting for their first byte, by fd, each with the time it must have sent one by. */
export class AwaitingRequest<T extends { fd: number }> {
  readonly #epoll: Epoll;
  readonly #timeoutMs: number;
  readonly #onClosed: (conn: T) => void;
  readonly #farewell: Uint8Array;
  readonly #limit: number;
  readonly #fdCeiling: number;
  /** In the order they came, which is also the order of their deadlines (all wait the same time). */
  readonly #waiting = new Map<number, { conn: T; deadline: number }>();

  /**
   * @param epoll the master's epoll, where waiting connections are watched for their first byte
   * @param timeoutMs how long a client may stay silent (the server's idle timeout)
   * @param onClosed told of each connection closed here (its client closed, reset, or stayed silent)
   * @param farewell sent to a connection closed for its silence: the TIMEOUT a worker would send
   * @param limit connections that may wait at once
   * @param fdCeiling a connection whose fd is this or above is not held: the kernel gives out the lowest
   *   free fd, so such an fd means that many are in use already, and the rest are kept for the queue, the
   *   channels and the reserve (past it, silent clients go to the workers, which have fds of their own)
   */
  constructor(
    epoll: Epoll,
    timeoutMs: number,
    onClosed: (conn: T) => void,
    farewell: Uint8Array,
    limit = MAX_AWAITING,
    fdCeiling = Infinity,
  ) {
    this.#epoll = epoll;
    this.#timeoutMs = timeoutMs;
    this.#onClosed = onClosed;
    this.#farewell = farewell;
    this.#fdCeiling = fdCeiling;
    this.#limit = limit;
  }

  /** Connections waiting now. */
  get size(): number {
    return this.#waiting.size;
  }

  /** True if `fd` is a waiting connection. */
  has(fd: number): boolean {
    return this.#waiting.has(fd);
  }

  /**
   * Looks at a connection just accepted: `ready` if its client has sent bytes (or the wait is full: it goes
   * on to a worker), `waiting` if it is now held here, `closed` if its client already closed or reset it.
   */
  hold(conn: T): HoldResult {
    const state = peek(conn.fd);
    if (state !== "silent") return this.#settle(conn, state);
    if (this.#waiting.size >= this.#limit || conn.fd >= this.#fdCeiling) return "ready";
    this.#waiting.set(conn.fd, { conn, deadline: performance.now() + silentAllowanceMs(this.#timeoutMs) });
    this.#epoll.add(conn.fd, EPOLLIN);
    return "waiting";
  }

  /** A waiting connection became readable: the connection if it goes on to a worker, else null. */
  onReadable(fd: number): T | null {
    const entry = this.#waiting.get(fd);
    if (entry === undefined) return null;
    const state = peek(fd);
    if (state === "silent") return null; // woken without data: keep waiting
    this.#waiting.delete(fd);
    if (state === "bytes") this.#epoll.remove(fd);
    return this.#settle(entry.conn, state) === "ready" ? entry.conn : null;
  }

  /**
   * Closes the connections that stayed silent past their deadline (the idle timeout, counted from the
   * connect: {@link silentAllowanceMs}), as a worker closes a silent one: with a TIMEOUT error frame,
   * sent if the socket takes it at once (an empty socket's buffer always does).
   */
  expire(now: number): void {
    for (const [fd, { conn, deadline }] of this.#waiting) {
      if (now < deadline) break; // the rest came later, so their deadlines are later
      this.#waiting.delete(fd);
      try {
        trySend(fd, this.#farewell);
      } catch { /* reset meanwhile: nobody is left to tell */ }
      close(fd);
      this.#onClosed(conn);
    }
  }

  /** When {@link expire} next has work, as a performance.now() time; Infinity if never. */
  nextDeadline(): number {
    for (const { deadline } of this.#waiting.values()) return deadline;
    return Infinity;
  }

  /** Stops watching every waiting connection and returns them, in order (at shutdown: they go to workers). */
  releaseAll(): T[] {
    const conns = [...this.#waiting.values()].map(({ conn }) => conn);
    for (const conn of conns) this.#epoll.remove(conn.fd);
    this.#waiting.clear();
    return conns;
  }

  #settle(conn: T, state: "bytes" | "gone"): HoldResult {
    if (state === "bytes") return "ready";
    close(conn.fd); // closing takes it out of epoll too
    this.#onClosed(conn);
    return "closed";
  }
}

/** Whether the client sent bytes, is still silent, or closed or reset the connection: one peeked byte. */
function peek(fd: number): "bytes" | "silent" | "gone" {
  try {
    const n = tryRecv(fd, PEEK_SCRATCH, C.MSG_PEEK);
    return n === WOULD_BLOCK ? "silent" : n > 0 ? "bytes" : "gone";
  } catch (e) {
    if (!(e instanceof LibcError)) throw e;
    return "gone";
  }
}
