/**
 * `--metrics-listen`: a listener of its own, in the master's epoll loop, whose connections the master
 * answers itself: rendering reads shared memory (`metrics/render.ts`), and the answer, a few KiB, fits a
 * fresh socket's buffer, so each step is one nonblocking call. A connection is read until its request
 * head is complete, answered, and closed; it has {@link SCRAPE_TIMEOUT_MS} for all of it, and at most
 * {@link MAX_SCRAPES} are open at once (more are closed at once), so scrapes cannot take the master's fds
 * or time from serving.
 *
 * @module
 */

import type { Epoll } from "../ffi/epoll.ts";
import { EPOLLIN, EPOLLOUT } from "../ffi/epoll.ts";
import {
  bind,
  C,
  close,
  getsockname,
  listen,
  setsockoptInt,
  socket,
  tryAccept4,
  tryRecv,
  trySend,
  WOULD_BLOCK,
} from "../ffi/libc.ts";
import { decodeSockaddr, encodeSockaddr, type Endpoint, formatEndpoint } from "../ffi/sockaddr.ts";
import { SOCKADDR_MAX } from "../ffi/structs.ts";
import { answerScrape, MAX_SCRAPE_REQUEST } from "../metrics/http_responder.ts";
import { MasterCell, masterCells } from "../metrics/registry.ts";

/** Scrape connections open at once at most. */
const MAX_SCRAPES = 16;
/** Time a scrape connection gets to send its request and read the answer. */
const SCRAPE_TIMEOUT_MS = 5000;

/** One scrape connection: what it sent so far, or what is left of its answer. */
interface Scrape {
  deadline: number;
  received: Uint8Array;
  length: number;
  answer: Uint8Array | null;
}

/** The metrics listener and its connections, driven by the master's loop. */
export class MetricsListener {
  readonly #fd: number;
  readonly #epoll: Epoll;
  readonly #scrapes = new Map<number, Scrape>();
  /** The address of the peer accepted last (outside V8's heap: see tryAccept4). */
  readonly #peer = new Uint8Array(new ArrayBuffer(SOCKADDR_MAX));
  /** Where it listens (the port resolved). */
  readonly endpoint: Endpoint;

  /** Opens the listener on `endpoint` and adds it to `epoll`. Throws naming the address if it cannot. */
  /**
   * @param endpoint where to listen
   * @param epoll the master's loop
   * @param admits whether the peer (its sockaddr) may scrape: the allow-lists every way in obeys
   */
  constructor(endpoint: Endpoint, epoll: Epoll, readonly admits: (peer: Uint8Array) => boolean = () => true) {
    const fd = socket(endpoint.family, C.SOCK_STREAM | C.SOCK_NONBLOCK | C.SOCK_CLOEXEC);
    try {
      setsockoptInt(fd, C.SOL_SOCKET, C.SO_REUSEADDR, 1);
      if (endpoint.family === C.AF_INET6) setsockoptInt(fd, C.IPPROTO_IPV6, C.IPV6_V6ONLY, 1);
      bind(fd, encodeSockaddr(endpoint));
      listen(fd, 64);
      const addr = new Uint8Array(SOCKADDR_MAX);
      getsockname(fd, addr);
      this.endpoint = decodeSockaddr(addr)!;
    } catch (e) {
      close(fd);
      throw new Error(`cannot listen for metrics on ${formatEndpoint(endpoint)}: ${(e as Error).message}`);
    }
    this.#fd = fd;
    this.#epoll = epoll;
    epoll.add(fd, EPOLLIN);
  }

  /** Handles readiness of `fd` if it is the listener or one of its connections; false if it is not ours. */
  onReady(fd: number): boolean {
    if (fd === this.#fd) {
      this.#acceptAll();
      return true;
    }
    const scrape = this.#scrapes.get(fd);
    if (scrape === undefined) return false;
    try {
      if (scrape.answer === null) this.#read(fd, scrape);
      if (scrape.answer !== null) this.#write(fd, scrape);
    } catch {
      this.#end(fd); // reset by the client, or any other failure: this scrape only
    }
    return true;
  }

  /** When the next scrape connection runs out of time (performance.now() time), or Infinity. */
  nextDeadline(): number {
    let next = Infinity;
    for (const { deadline } of this.#scrapes.values()) next = Math.min(next, deadline);
    return next;
  }

  /** Closes the connections past their deadline. */
  tick(now: number): void {
    for (const [fd, { deadline }] of this.#scrapes) if (now >= deadline) this.#end(fd);
  }

  /** Closes the listener and every connection. */
  close(): void {
    for (const fd of [...this.#scrapes.keys()]) this.#end(fd);
    this.#epoll.remove(this.#fd);
    close(this.#fd);
  }

  #acceptAll(): void {
    for (;;) {
      let fd;
      try {
        fd = tryAccept4(this.#fd, C.SOCK_NONBLOCK | C.SOCK_CLOEXEC, this.#peer);
      } catch {
        return; // EMFILE and the like: the listener stays ready, and is tried again on the next wake-up
      }
      if (fd === WOULD_BLOCK) return;
      if (this.#scrapes.size >= MAX_SCRAPES || !this.admits(this.#peer)) {
        close(fd);
        continue;
      }
      const scrape = {
        deadline: performance.now() + SCRAPE_TIMEOUT_MS,
        received: new Uint8Array(MAX_SCRAPE_REQUEST),
        length: 0,
        answer: null,
      };
      this.#scrapes.set(fd, scrape);
      this.#epoll.add(fd, EPOLLIN);
    }
  }

  #read(fd: number, scrape: Scrape): void {
    for (;;) {
      const n = tryRecv(fd, scrape.received.subarray(scrape.length));
      if (n === WOULD_BLOCK) return;
      if (n === 0) return this.#end(fd);
      scrape.length += n;
      scrape.answer = answerScrape(scrape.received.subarray(0, scrape.length));
      if (scrape.answer !== null) {
        masterCells()[MasterCell.Scrapes]++;
        return;
      }
    }
  }

  #write(fd: number, scrape: Scrape): void {
    const answer = scrape.answer!;
    const n = trySend(fd, answer);
    if (n === WOULD_BLOCK) return this.#epoll.modify(fd, EPOLLOUT);
    if (n < answer.byteLength) {
      scrape.answer = answer.subarray(n);
      return this.#epoll.modify(fd, EPOLLOUT);
    }
    this.#end(fd);
  }

  #end(fd: number): void {
    if (!this.#scrapes.delete(fd)) return;
    this.#epoll.remove(fd);
    close(fd);
  }
}
