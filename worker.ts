/**
 * A ferry worker: started by the master (never by hand) with its end of a channel as an inherited fd.
 * It receives client fds over the channel, serves up to `--conns` of them at once with its own epoll loop,
 * and tells the master how many ended, once per loop turn. It exits when the master says Stop and its
 * connections are done, or at once when the channel closes (the master is gone), so no worker outlives
 * its master.
 *
 * The loop is synchronous on purpose: every call is a nonblocking syscall after epoll said it is ready,
 * and nothing else in the process needs the event loop.
 *
 * @module
 */

import {
  decodeHashKnown,
  type HandedConn,
  MessageKind,
  receiveMessage,
  sendHashKnown,
  sendMessage,
  ServeMode,
} from "./channel/messages.ts";
import { Connection, type ServeConfig } from "./worker/connection.ts";
import { Epoll, EPOLLIN, EPOLLOUT } from "./ffi/epoll.ts";
import { HashCache } from "./worker/hash_cache.ts";
import { loadHashing } from "./hashing.ts";
import { parseWorkerArgs, type WorkerArgs } from "./channel/worker_args.ts";
import { ReplyCache } from "./worker/reply_cache.ts";

export { parseWorkerArgs };
import { C, close, ignoreSignal, openRead, raiseOpenFileLimit, setNonBlocking } from "./ffi/libc.ts";

/**
 * Bytes one connection may send per turn, so that one fast client cannot starve the others. Finer turns
 * also keep more of the connections' pipelines full: 64 clients fetching one 64 MiB file moved 7.3-8.6 GB/s
 * with 512 KiB turns against 6.7-7.6 with 4 MiB, and one stream was as fast, though at four times the
 * syscalls per MiB (scripts/bench/tried.md).
 */
const TURN_BUDGET = 512 * 1024;

/** How often idle connections are looked for, in milliseconds. */
const IDLE_SCAN_MS = 250;

const logEncoder = new TextEncoder();

/** Writes all of `bytes` to a synchronous writer (stderr), whatever it accepts per call. */
function writeAllSync(writer: { writeSync(p: Uint8Array): number }, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.byteLength;) done += writer.writeSync(bytes.subarray(done));
}

/** Lines gathered during a loop turn and written with one write(2): many requests, one call. */
class BatchedLog {
  readonly #lines: string[] = [];
  /** @param writer stderr, or a file opened for append */
  constructor(readonly writer: { writeSync(p: Uint8Array): number }) {}

  /** Adds a line (without its newline). */
  push(line: string): void {
    this.#lines.push(line);
  }

  /** Writes what was gathered. */
  flush(): void {
    if (this.#lines.length === 0) return;
    writeAllSync(this.writer, logEncoder.encode(this.#lines.join("\n") + "\n"));
    this.#lines.length = 0;
  }
}

/** Runs a worker until it is told to stop or its master goes away; never returns. */
export async function runWorker(args: WorkerArgs): Promise<never> {
  // Ctrl-C and systemd's SIGTERM reach the whole process group: the master decides how to stop.
  ignoreSignal(C.SIGINT);
  ignoreSignal(C.SIGTERM);
  raiseOpenFileLimit();
  const channel = args.channelFd;
  setNonBlocking(channel, true);
  const serviceLog = new BatchedLog(Deno.stderr);
  const requestLog = args.requestLog === null
    ? null
    : args.requestLog === "-"
    ? serviceLog
    : new BatchedLog(Deno.openSync(args.requestLog, { append: true, create: true, mode: 0o644 }));
  /** A line of the worker's own log, stamped and attributed. */
  const serviceLine = (line: string) =>
    serviceLog.push(`${new Date().toISOString()} worker=${args.workerId} ${line}`);
  const flushLog = () => {
    serviceLog.flush();
    requestLog?.flush();
  };
  const config: ServeConfig = {
    rootFd: args.root === null ? -1 : openRead(args.root, { directory: true }),
    push: args.push,
    idleTimeoutMs: args.idleTimeout * 1000,
    turnBudget: TURN_BUDGET,
    workerId: args.workerId,
    log: requestLog === null ? null : (line) => requestLog.push(line),
    hashes: new HashCache(
      serviceLine,
      (etag, sha256) => sendHashKnown(channel, etag, sha256),
    ),
    wake: (conn) => woken.add(conn),
    replies: new ReplyCache(
      args.replyCacheBytes,
      (why) => serviceLine(`reply cache kept in the heap: ${why}`),
    ),
  };
  const woken = new Set<Connection>();
  const epoll = new Epoll(1024);
  epoll.add(channel, EPOLLIN);
  const connections = new Map<number, Connection>();
  let stopping = false;
  let nextIdleScan = performance.now() + IDLE_SCAN_MS;

  // Connections that ended and the master has not been told of: one Done message per turn says how many.
  let endedUntold = 0;
  let channelEvents = EPOLLIN;
  const tellEnded = () => {
    if (endedUntold === 0) return;
    if (sendMessage(channel, MessageKind.Done, 0, endedUntold)) endedUntold = 0;
    // A channel the master has not read yet may be full (a socketpair holds only a few messages): the
    // count is then kept, and sent when epoll says the channel has room again.
    const wanted = endedUntold === 0 ? EPOLLIN : EPOLLIN | EPOLLOUT;
    if (wanted !== channelEvents) epoll.modify(channel, channelEvents = wanted);
  };

  const settle = (conn: Connection, interestBefore: number) => {
    if (conn.closed) {
      connections.delete(conn.fd); // close() already removed it from epoll: no other process holds it
      endedUntold++;
    } else if (conn.interest !== interestBefore) {
      epoll.modify(conn.fd, conn.interest);
    }
  };

  const exit = (code: number, reason: string): never => {
    for (const conn of connections.values()) conn.abort(reason);
    flushLog();
    Deno.exit(code);
  };

  const onChannel = () => {
    for (;;) {
      const message = receiveMessage(channel);
      if (message === null) return;
      if (message === "closed") exit(0, "master gone");
      else if (message.kind === MessageKind.Conns) {
        for (const handed of message.conns) serveNew(handed);
      } else if (message.kind === MessageKind.Stop) stopping = true;
      else if (message.kind === MessageKind.HashKnown) {
        const { etag, sha256 } = decodeHashKnown(message.payload);
        config.hashes.learn(etag, sha256);
      }
    }
  };

  const serveNew = (handed: HandedConn) => {
    const conn = accept(handed.fd, handed.id, handed.mode === ServeMode.Classic, handed.peer);
    if (conn === null) return;
    conn.onReady(); // the request is there already (TCP_DEFER_ACCEPT); classic mode can start writing
    if (conn.closed) {
      endedUntold++;
      return;
    }
    connections.set(conn.fd, conn);
    epoll.add(conn.fd, conn.interest);
  };

  const accept = (fd: number, id: number, classic: boolean, peer: Uint8Array): Connection | null => {
    try {
      return new Connection(fd, id, classic, config, peer);
    } catch (e) {
      // E.g. the pushed file was removed: this connection fails, the worker goes on.
      serviceLog.push(`worker ${args.workerId}: cannot serve connection ${id}: ${(e as Error).message}`);
      close(fd);
      endedUntold++;
      return null;
    }
  };

  sendMessage(channel, MessageKind.Ready);
  // The master may hand over connections from now on; they wait in the channel while this loads.
  await loadHashing();
  for (;;) {
    if (stopping && connections.size === 0) exit(0, "stopped");
    // While hashes are being computed, only poll: the loop alternates hashing slices and serving.
    const ready = epoll.wait(config.hashes.busy ? 0 : IDLE_SCAN_MS);
    for (let i = 0; i < ready; i++) {
      const fd = epoll.fdAt(i);
      if (fd === channel) {
        onChannel();
        continue;
      }
      const conn = connections.get(fd);
      if (conn === undefined) continue;
      const before = conn.interest;
      conn.onReady(epoll.eventsAt(i));
      settle(conn, before);
    }
    if (config.hashes.busy) config.hashes.step();
    for (const conn of woken) {
      woken.delete(conn);
      if (conn.closed) continue;
      const before = conn.interest;
      conn.onReady();
      settle(conn, before);
    }
    const now = performance.now();
    if (now >= nextIdleScan) {
      nextIdleScan = now + IDLE_SCAN_MS;
      for (const conn of connections.values()) {
        const before = conn.interest;
        if (conn.checkIdle(now)) settle(conn, before);
      }
    }
    flushLog();
    tellEnded();
  }
}

if (import.meta.main) {
  await runWorker(parseWorkerArgs(Deno.args));
}
