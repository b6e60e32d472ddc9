/**
 * Network admission, decided by the master right after accept4(2), before a connection reaches a worker:
 *
 * 1. PROXY protocol (`--proxy-protocol CIDR`): a peer inside those prefixes must open with a PROXY
 *    header (v1 or v2), read here without blocking; from then on the client it names is the connection's
 *    address. A peer outside them that sends one is refused.
 * 2. Allow-lists (`--deny CIDR`, `--allow CIDR`) on that address: a denied address is refused, whatever
 *    `--allow` says; with any `--allow`, an address that matches none is refused.
 * 3. The per-address limit (`--max-conns-per-ip N`): connections open per address, from accept until
 *    the worker says the connection ended. One more is answered BUSY (by the master, as the queue bound).
 *
 * A refused connection is closed at once, counted, and logged at most once per address per minute.
 *
 * @module
 */

import { type Cidr, firstMatch, formatIp, type IpAddress, ipOfSockaddr, sockaddrOf } from "./cidr.ts";
import { looksLikeProxyHeader, parseProxyHeader, PROXY_HEADER_MAX_BYTES } from "./proxy_header.ts";
import type { Epoll } from "../ffi/epoll.ts";
import { EPOLLIN } from "../ffi/epoll.ts";
import { C, close, LibcError, tryRecv, WOULD_BLOCK } from "../ffi/libc.ts";

/** The admission rules of the command line. */
export interface AdmissionRules {
  /** `--allow`: with any, only addresses inside one are served. */
  allow: Cidr[];
  /** `--deny`: addresses never served; deny wins over allow. */
  deny: Cidr[];
  /** `--proxy-protocol`: peers that must send a PROXY header, and the only ones that may. */
  proxyFrom: Cidr[];
  /** `--max-conns-per-ip`: connections open per client address; 0 for no limit. */
  maxConnsPerIp: number;
}

/** What the master knows of an accepted connection; `peer` is replaced by the real client's address. */
export interface AdmittedConn {
  /** The socket. */
  fd: number;
  /** The master's id for it. */
  id: number;
  /** The client's sockaddr (after a PROXY header: the client the proxy relays). */
  peer: Uint8Array;
}

/**
 * What became of a connection: go on with it (`admit`), answer it BUSY (`over-limit`: the caller does, it
 * owns the BUSY answer), nothing more to do (`closed`: refused and closed here), or `waiting` for the rest
 * of its PROXY header (the fd is in the master's epoll; {@link Admission.onReadable} goes on).
 */
export type Verdict = "admit" | "over-limit" | "closed" | "waiting";

/** Counts since the start, for tests and the log. */
export interface AdmissionCounts {
  /** Closed by --allow/--deny. */
  refused: number;
  /** Answered BUSY by --max-conns-per-ip. */
  overLimit: number;
  /** Closed for their PROXY header: sent by a peer not listed, malformed, or missing. */
  badProxy: number;
}

/** Refusals of one address are logged at most once in this long, in milliseconds. */
const LOG_INTERVAL_MS = 60_000;
/** Addresses remembered for that; past it, entries older than the interval are forgotten. */
const LOG_MEMORY = 4096;
/** Connections that may wait for their PROXY header at once; past it, a new one is closed. */
const MAX_WAITING = 1024;

/** Where the first bytes of a connection are peeked at and a PROXY header read. */
const HEADER_SCRATCH = new Uint8Array(new ArrayBuffer(PROXY_HEADER_MAX_BYTES));

/** The master's admission state: rules, the per-address counts, PROXY headers awaited, log limiting. */
export class Admission<T extends AdmittedConn> {
  readonly #rules: AdmissionRules;
  readonly #epoll: Epoll;
  readonly #log: (line: string) => void;
  readonly #headerTimeoutMs: number;
  /** Per address (formatIp), connections open; per connection id, its address and its worker (0: none). */
  readonly #openPerIp = new Map<string, number>();
  readonly #openConns = new Map<number, { ip: string; worker: number }>();
  /** Connections waiting for their PROXY header, by fd, with the time they must have it by. */
  readonly #waiting = new Map<number, { conn: T; deadline: number }>();
  /** Per address: when a refusal was last logged, and refusals not logged since. */
  readonly #logged = new Map<string, { at: number; unlogged: number }>();
  readonly #counts: AdmissionCounts = { refused: 0, overLimit: 0, badProxy: 0 };

  /**
   * @param rules the command line's rules
   * @param epoll the master's epoll, where connections waiting for a PROXY header are watched
   * @param log the master's log
   * @param headerTimeoutMs how long a proxy has to send its whole header (the server's idle timeout)
   */
  constructor(rules: AdmissionRules, epoll: Epoll, log: (line: string) => void, headerTimeoutMs: number) {
    this.#rules = rules;
    this.#epoll = epoll;
    this.#log = log;
    this.#headerTimeoutMs = headerTimeoutMs;
  }

  /** True if any rule is set: without one, the master skips admission altogether. */
  get active(): boolean {
    const r = this.#rules;
    return r.allow.length + r.deny.length + r.proxyFrom.length > 0 || r.maxConnsPerIp > 0;
  }

  /** Refusals counted since the start. */
  get counts(): Readonly<AdmissionCounts> {
    return this.#counts;
  }

  /** Connections open from the address of `ip` text (as {@link formatIp} writes it), for tests. */
  openFrom(ip: string): number {
    return this.#openPerIp.get(ip) ?? 0;
  }

  /** Decides on a connection just accepted. */
  onAccept(conn: T): Verdict {
    const ip = ipOfSockaddr(conn.peer);
    if (ip === null) return "admit"; // not an IP socket: nothing to match
    if (this.#rules.proxyFrom.length === 0) return this.#decide(conn, ip);
    if (firstMatch(this.#rules.proxyFrom, ip) !== null) return this.#readHeader(conn, ip, true);
    return this.#refuseStrayHeader(conn, ip);
  }

  /** True if `fd` is a connection waiting for its PROXY header. */
  isWaiting(fd: number): boolean {
    return this.#waiting.has(fd);
  }

  /** More bytes of a waiting connection's header arrived: the connection and what became of it. */
  onReadable(fd: number): { conn: T; verdict: Verdict } {
    const { conn } = this.#waiting.get(fd)!;
    const verdict = this.#readHeader(conn, ipOfSockaddr(conn.peer)!, false);
    if (verdict !== "waiting") {
      this.#waiting.delete(fd);
      if (verdict !== "closed") this.#epoll.remove(fd); // closing took it out of epoll already
    }
    return { conn, verdict };
  }

  /** Closes connections whose PROXY header did not come in time. */
  expire(now: number): void {
    for (const [fd, { conn, deadline }] of this.#waiting) {
      if (now < deadline) continue;
      this.#waiting.delete(fd);
      this.#counts.badProxy++;
      this.#refusal(
        ipOfSockaddr(conn.peer)!,
        `sent no whole PROXY header within ${this.#headerTimeoutMs / 1000}s`,
      );
      close(fd);
    }
  }

  /** When {@link expire} next has work, as a performance.now() time; Infinity if never. */
  nextDeadline(): number {
    let at = Infinity;
    for (const { deadline } of this.#waiting.values()) at = Math.min(at, deadline);
    return at;
  }

  /** Records that connection `id` went to `worker`, so that the worker's death ends it. */
  handedTo(id: number, worker: number): void {
    const open = this.#openConns.get(id);
    if (open !== undefined) open.worker = worker;
  }

  /** Records that connection `id` ended (a worker said so, or the master refused it after admission). */
  ended(id: number): void {
    const open = this.#openConns.get(id);
    if (open === undefined) return;
    this.#openConns.delete(id);
    const left = (this.#openPerIp.get(open.ip) ?? 1) - 1;
    if (left > 0) this.#openPerIp.set(open.ip, left);
    else this.#openPerIp.delete(open.ip);
  }

  /** Records that every connection handed to `worker` ended with it. */
  workerGone(worker: number): void {
    for (const [id, open] of this.#openConns) if (open.worker === worker) this.ended(id);
  }

  /** Closes the connections still waiting for a header (at shutdown). */
  closeWaiting(): void {
    for (const fd of this.#waiting.keys()) close(fd);
    this.#waiting.clear();
  }

  /**
   * Reads the PROXY header of a peer that must send one: peeked first, so that only the header is taken
   * from the socket and the client's own bytes stay for the worker.
   */
  #readHeader(conn: T, peerIp: IpAddress, first: boolean): Verdict {
    const n = this.#peek(conn.fd);
    const from = `proxy ${formatIp(peerIp)}`;
    if (n === "error" || n === 0) {
      this.#counts.badProxy++;
      this.#refusal(peerIp, `${from} closed the connection before a whole PROXY header`);
      close(conn.fd);
      return "closed";
    }
    const header = parseProxyHeader(HEADER_SCRATCH.subarray(0, n === WOULD_BLOCK ? 0 : n));
    if (header.kind === "incomplete") {
      if (!first) return "waiting";
      if (this.#waiting.size >= MAX_WAITING) {
        this.#counts.badProxy++;
        this.#refusal(peerIp, `${from}: ${MAX_WAITING} connections already wait for their PROXY header`);
        close(conn.fd);
        return "closed";
      }
      this.#waiting.set(conn.fd, { conn, deadline: performance.now() + this.#headerTimeoutMs });
      this.#epoll.add(conn.fd, EPOLLIN);
      return "waiting";
    }
    if (header.kind === "invalid") {
      this.#counts.badProxy++;
      this.#refusal(peerIp, `${from} sent an invalid PROXY header: ${header.reason}`);
      close(conn.fd);
      return "closed";
    }
    // Take the header off the socket: the peek showed all of it is there, so this reads exactly it.
    const taken = tryRecv(conn.fd, HEADER_SCRATCH.subarray(0, header.length));
    if (taken !== header.length) {
      this.#counts.badProxy++;
      this.#refusal(peerIp, `${from}: reading its PROXY header back gave ${taken} bytes of ${header.length}`);
      close(conn.fd);
      return "closed";
    }
    if (header.kind === "local") return this.#decide(conn, peerIp);
    conn.peer = sockaddrOf(header.source, header.port, conn.peer.byteLength);
    return this.#decide(conn, header.source);
  }

  /** A peer not listed with --proxy-protocol: refused if it opens with a PROXY header anyway. */
  #refuseStrayHeader(conn: T, ip: IpAddress): Verdict {
    const n = this.#peek(conn.fd);
    if (typeof n === "number" && n > 0 && looksLikeProxyHeader(HEADER_SCRATCH.subarray(0, n))) {
      this.#counts.badProxy++;
      this.#refusal(ip, "sent a PROXY header but is not listed with --proxy-protocol");
      close(conn.fd);
      return "closed";
    }
    return this.#decide(conn, ip);
  }

  /** The bytes waiting on `fd`, peeked into the scratch: a count, WOULD_BLOCK, or "error" (reset). */
  #peek(fd: number): number | "error" {
    try {
      return tryRecv(fd, HEADER_SCRATCH, C.MSG_PEEK);
    } catch (e) {
      if (!(e instanceof LibcError)) throw e;
      return "error";
    }
  }

  /**
   * Whether the allow-lists let the peer `sockaddr` in, for a way in that hands nothing to a worker (the
   * metrics listener): the same rules as every connection, never a second door. A refusal is counted and
   * logged as any other; the caller closes the connection.
   */
  allows(sockaddr: Uint8Array): boolean {
    const ip = ipOfSockaddr(sockaddr);
    return ip === null || this.#allowed(ip);
  }

  /** The allow-lists for `ip`; a refusal is counted and logged. */
  #allowed(ip: IpAddress): boolean {
    const { allow, deny } = this.#rules;
    const denied = firstMatch(deny, ip);
    if (denied === null && (allow.length === 0 || firstMatch(allow, ip) !== null)) return true;
    this.#counts.refused++;
    this.#refusal(ip, denied !== null ? `denied by --deny ${denied.text}` : "not inside any --allow");
    return false;
  }

  /** The allow-lists and the per-address limit, for the client's address `ip`. */
  #decide(conn: T, ip: IpAddress): Verdict {
    const { maxConnsPerIp } = this.#rules;
    if (!this.#allowed(ip)) {
      close(conn.fd);
      return "closed";
    }
    if (maxConnsPerIp === 0) return "admit";
    const key = formatIp(ip);
    const open = this.#openPerIp.get(key) ?? 0;
    if (open >= maxConnsPerIp) {
      this.#counts.overLimit++;
      this.#refusal(
        ip,
        `answered BUSY: ${open} connections open from it (--max-conns-per-ip ${maxConnsPerIp})`,
      );
      return "over-limit";
    }
    this.#openPerIp.set(key, open + 1);
    this.#openConns.set(conn.id, { ip: key, worker: 0 });
    return "admit";
  }

  /** Logs a refusal of `ip`, unless one was logged less than a minute ago (it is then counted for the next). */
  #refusal(ip: IpAddress, why: string): void {
    const key = formatIp(ip);
    const now = performance.now();
    const last = this.#logged.get(key);
    if (last !== undefined && now - last.at < LOG_INTERVAL_MS) {
      last.unlogged++;
      return;
    }
    const more = last !== undefined && last.unlogged > 0
      ? `; ${last.unlogged} more refused from it since the last line`
      : "";
    this.#log(`refused ${key}: ${why}${more} (such lines: at most one per address per minute)`);
    this.#logged.delete(key); // set again below: the map stays in the order lines were logged
    if (this.#logged.size >= LOG_MEMORY) {
      for (const [k, v] of this.#logged) if (now - v.at >= LOG_INTERVAL_MS) this.#logged.delete(k);
      // Still full (refusals from more addresses than that within a minute): forget the oldest.
      for (const k of this.#logged.keys()) {
        if (this.#logged.size < LOG_MEMORY) break;
        this.#logged.delete(k);
      }
    }
    this.#logged.set(key, { at: now, unlogged: 0 });
  }
}
