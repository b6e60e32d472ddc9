/**
 * A small wrapper over one epoll instance: register fds with an event mask, wait, and read the ready list
 * without allocating. The fd itself is stored as the event's data, so callers look their state up by fd.
 *
 * @module
 */

import { C, close, errno, LibcError, sys } from "./libc.ts";
import { EPOLL_EVENT } from "./structs.ts";

/** epoll event bits. */
export const EPOLLIN = 0x001;
/** Writable. */
export const EPOLLOUT = 0x004;
/** Error on the fd (always reported). */
export const EPOLLERR = 0x008;
/** Hang-up (always reported). */
export const EPOLLHUP = 0x010;
/** The peer shut down its writing side. */
export const EPOLLRDHUP = 0x2000;

const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;
const EPOLL_CLOEXEC = 0o2000000;

/** One epoll instance and its ready-list buffer. */
export class Epoll {
  /** The epoll fd (close-on-exec). */
  readonly fd: number;
  readonly #events: Uint8Array;
  readonly #view: DataView;
  readonly #ctl = new Uint8Array(EPOLL_EVENT.size);
  readonly #ctlView = new DataView(this.#ctl.buffer);
  readonly #capacity: number;

  /** @param capacity how many ready events one wait can return */
  constructor(capacity = 256) {
    const fd = sys.epoll_create1(EPOLL_CLOEXEC);
    if (fd === -1) throw new LibcError("epoll_create1", errno());
    this.fd = fd;
    this.#capacity = capacity;
    this.#events = new Uint8Array(capacity * EPOLL_EVENT.size);
    this.#view = new DataView(this.#events.buffer);
  }

  #control(op: number, name: string, fd: number, events: number): void {
    this.#ctlView.setUint32(EPOLL_EVENT.events, events, true);
    this.#ctlView.setBigUint64(EPOLL_EVENT.data, BigInt(fd), true);
    if (sys.epoll_ctl(this.fd, op, fd, this.#ctl) === -1) throw new LibcError(name, errno(), `(fd ${fd})`);
  }

  /** Starts watching `fd` for `events`. */
  add(fd: number, events: number): void {
    this.#control(EPOLL_CTL_ADD, "epoll_ctl(ADD)", fd, events);
  }

  /** Changes the events watched on `fd`. */
  modify(fd: number, events: number): void {
    this.#control(EPOLL_CTL_MOD, "epoll_ctl(MOD)", fd, events);
  }

  /** Stops watching `fd` (call before closing it if other processes may hold copies of it). */
  remove(fd: number): void {
    this.#control(EPOLL_CTL_DEL, "epoll_ctl(DEL)", fd, 0);
  }

  /**
   * Waits up to `timeoutMs` (-1 forever) on the calling thread. Returns the number of ready events
   * (0 on timeout or on a signal, which interrupts the wait so that signal flags are seen promptly).
   */
  wait(timeoutMs: number): number {
    const n = sys.epoll_wait(this.fd, this.#events, this.#capacity, timeoutMs);
    if (n >= 0) return n;
    if (errno() === C.EINTR) return 0;
    throw new LibcError("epoll_wait", errno());
  }

  /**
   * Waits on Deno's blocking pool, leaving the event loop free for signals and child processes. errno is
   * not readable after a call on another thread, so a failed wait counts as an empty one.
   */
  async waitAsync(timeoutMs: number): Promise<number> {
    const n = await sys.epoll_wait_async(this.fd, this.#events, this.#capacity, timeoutMs);
    return n > 0 ? n : 0;
  }

  /** The fd of ready event `i` of the last wait. */
  fdAt(i: number): number {
    return Number(this.#view.getBigUint64(i * EPOLL_EVENT.size + EPOLL_EVENT.data, true));
  }

  /** The event bits of ready event `i` of the last wait. */
  eventsAt(i: number): number {
    return this.#view.getUint32(i * EPOLL_EVENT.size + EPOLL_EVENT.events, true);
  }

  /** Closes the epoll fd. */
  close(): void {
    close(this.fd);
  }
}
