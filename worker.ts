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
  MAX_ENDED_PER_DONE,
  MessageKind,
  receiveMessage,
  sendDone,
  sendHashKnown,
  sendMessage,
  sendSignatureKnown,
  ServeMode,
} from "./channel/messages.ts";
import { Connection, type ServeConfig } from "./worker/connection.ts";
import { Epoll, EPOLLIN, EPOLLOUT } from "./ffi/epoll.ts";
import { HashCache } from "./worker/hash_cache.ts";
import { SignatureCache, type Signed } from "./worker/signature_cache.ts";
import { ListingMemo } from "./worker/listing_memo.ts";
import { FolderWatch } from "./worker/folder_watch.ts";
import { SignAhead } from "./worker/sign_ahead.ts";
import { loadHashing } from "./hashing.ts";
import { LISTING_MEMO_ENTRIES, parseWorkerArgs, type WorkerArgs } from "./channel/worker_args.ts";
import { ReplyCache } from "./worker/reply_cache.ts";
import { TokenStore } from "./worker/access.ts";
import { ServedRoot } from "./worker/root_reload.ts";
import { describeReload, workerReload } from "./reload_hooks.ts";
import { attachMetricsRegion, metricsRegion, workerMetrics } from "./metrics/registry.ts";
import { renderMetrics } from "./metrics/render.ts";
import { type HttpHandler, plainReply, refusedReply } from "./worker/http.ts";
import { jsonServiceLine } from "./channel/log_format.ts";

export { parseWorkerArgs };
import {
  C,
  close,
  ignoreSignal,
  LibcError,
  memfdCreate,
  openRead,
  pwriteAll,
  raiseOpenFileLimit,
  setNonBlocking,
} from "./ffi/libc.ts";

/**
 * Bytes one connection may send per turn, so that one fast client cannot starve the others. Finer turns
 * also keep more of the connections' pipelines full: 64 clients fetching one 64 MiB file moved 7.3-8.6 GB/s
 * with 512 KiB turns against 6.7-7.6 with 4 MiB, and one stream was as fast, though at four times the
 * syscalls per MiB (scripts/bench/tried.md).
 */
const TURN_BUDGET = 512 * 1024;

const NO_IDS: number[] = [];

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
  constructor(public writer: { writeSync(p: Uint8Array): number }) {}

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

/** Ways a worker's shared serving state reaches the rest of the worker. */
export interface ServeHooks {
  /** A line of the worker's own log (already stamped and attributed). */
  serviceLine: (line: string) => void;
  /** A request's log line, or null when requests are not logged. */
  requestLine: ((line: string) => void) | null;
  /** Tells the other workers a hash this one computed. */
  hashKnown: (etag: string, sha256: string) => void;
  /** Tells the other workers a signature this one computed. */
  signatureKnown: (etag: string, signed: Signed) => void;
  /** Asks the loop to run a connection again soon (a hash it waited for is known). */
  wake: (conn: Connection) => void;
}

/**
 * `GET /metrics` on the file port: the same text as `--metrics-listen`, rendered from the shared counters.
 * With `--tokens` it is refused like every path, as HTTP cannot prove a token (`--metrics-listen`, which
 * the allow-lists govern, serves Prometheus then).
 */
const answerScrape: HttpHandler = (request, ctx) => {
  const label = `HTTP ${request.method} /metrics`;
  if (request.method !== "GET" && request.method !== "HEAD") {
    return refusedReply(request, label, { status: 405, message: "only GET and HEAD", closes: false });
  }
  if (ctx.access.required) {
    const message = "the server requires a token, which HTTP cannot prove; scrape --metrics-listen";
    return refusedReply(request, label, { status: 403, message, closes: true });
  }
  if (metricsRegion() === null) {
    return refusedReply(request, label, {
      status: 404,
      message: "metrics are off (--no-metrics)",
      closes: false,
    });
  }
  const body = new TextEncoder().encode(renderMetrics());
  return { ...plainReply(request, label, "text/plain; version=0.0.4; charset=utf-8", body), op: "scrape" };
};

/**
 * What all of a worker's connections share, as the worker builds it: the served directory opened, the
 * SHA-256 cache and the reply cache. Used by {@link WorkerLoop}, and by tests that drive connections directly.
 */
export function buildServeConfig(
  args:
    & Pick<WorkerArgs, "workerId" | "root" | "push" | "idleTimeout" | "replyCacheBytes">
    & Partial<Pick<WorkerArgs, "logFormat" | "logHealth" | "tokens" | "http" | "listingMemoEntries">>,
  hooks: ServeHooks,
): ServeConfig {
  const hashes = new HashCache(hooks.serviceLine, hooks.hashKnown);
  return {
    rootFd: args.root === null ? -1 : openRead(args.root, { directory: true }),
    push: args.push,
    idleTimeoutMs: args.idleTimeout * 1000,
    turnBudget: TURN_BUDGET,
    workerId: args.workerId,
    logFormat: args.logFormat ?? "text",
    logHealth: args.logHealth ?? false,
    log: hooks.requestLine,
    hashes,
    signatures: new SignatureCache(hashes, hooks.serviceLine, hooks.signatureKnown),
    listingMemo: ListingMemo.forEntries(
      args.listingMemoEntries ?? LISTING_MEMO_ENTRIES,
      new FolderWatch(hooks.serviceLine),
    ),
    wake: hooks.wake,
    http: args.http === false ? null : { routes: new Map([["/metrics", answerScrape]]) },
    replies: new ReplyCache(
      args.replyCacheBytes,
      (why) => hooks.serviceLine(`reply cache kept in the heap: ${why}`),
    ),
    tokens: args.tokens ? new TokenStore(args.tokens, hooks.serviceLine) : null,
  };
}

/**
 * A worker's event loop and the state its steps share: the epoll instance over the channel and the client
 * sockets, the connections by fd, those woken by a hash, and what the master has yet to be told.
 */
class WorkerLoop {
  readonly #args: WorkerArgs;
  readonly #channel: number;
  readonly #serviceLog = new BatchedLog(Deno.stderr);
  readonly #requestLog: BatchedLog | null;
  readonly #config: ServeConfig;
  readonly #woken = new Set<Connection>();
  readonly #epoll = new Epoll(1024);
  readonly #connections = new Map<number, Connection>();
  #stopping = false;
  #nextIdleScan = performance.now() + IDLE_SCAN_MS;
  /**
   * Slots freed and taken again that the master has not been told of: one Done message per turn says how
   * many. A connection holds a slot while it is being answered; one waiting for its request (a slow or
   * silent client) or lingering after an error holds none, so such clients cannot lock others out.
   */
  #endedUntold = 0;
  #takenUntold = 0;
  /**
   * Ids of connections closed that the master has not been told of (it counts connections per address),
   * or null when it does not count them: every Done then stays one message per turn.
   */
  readonly #closedUntold: number[] | null;
  /** The connections that hold a slot (the master counted each one handed over as holding one). */
  readonly #holding = new Set<Connection>();
  #channelEvents = EPOLLIN;
  /** Connections handed over that arrived without their fd, since the worker started. */
  #lostHandOffs = 0;
  readonly #root: ServedRoot | null;
  /** Signs ahead the new versions of files signed before (null in classic mode), and the root it watches in. */
  readonly #signAhead: SignAhead | null;
  #signAheadRoot = -1;

  /** @param args the worker's command line; its channel must be nonblocking already */
  constructor(args: WorkerArgs) {
    this.#args = args;
    this.#channel = args.channelFd;
    this.#closedUntold = args.reportClosed ? [] : null;
    this.#requestLog = args.requestLog === null
      ? null
      : args.requestLog === "-"
      ? this.#serviceLog
      : new BatchedLog(Deno.openSync(args.requestLog, { append: true, create: true, mode: 0o644 }));
    const requestLog = this.#requestLog;
    this.#config = buildServeConfig(args, {
      serviceLine: (line) => this.#serviceLine(line),
      requestLine: requestLog === null ? null : (line) => requestLog.push(line),
      hashKnown: (etag, sha256) => sendHashKnown(this.#channel, etag, sha256),
      signatureKnown: (etag, signed) => this.#shareSignature(etag, signed),
      wake: (conn) => this.#woken.add(conn),
    });
    this.#epoll.add(this.#channel, EPOLLIN);
    this.#signAhead = args.root === null
      ? null
      : new SignAhead(this.#config.signatures, () => this.#config.rootFd);
    this.#config.signatures.onSigned = (label) => {
      try {
        this.#signAhead?.follow(JSON.parse(label));
      } catch { /* a label that names no path */ }
    };
    this.#followRoot();
    this.#root = args.root === null
      ? null
      : new ServedRoot(args.root, this.#config, () => this.#connections.values());
    this.#addReloadHooks();
  }

  /** This worker's part of a reload (SIGHUP): see `reload_hooks.ts` for every hook. */
  #addReloadHooks(): void {
    const requestLog = this.#requestLog;
    const path = this.#args.requestLog;
    if (requestLog !== null && path !== null && path !== "-") {
      workerReload.add({
        name: "request log",
        reload: () => {
          // Opened before the old one is let go: a path that cannot be opened keeps the old file.
          const reopened = Deno.openSync(path, { append: true, create: true, mode: 0o644 });
          requestLog.flush();
          const old = requestLog.writer;
          requestLog.writer = reopened;
          if (old instanceof Deno.FsFile) old.close();
          return `${path} reopened`;
        },
      });
    }
    const root = this.#root;
    if (root !== null) workerReload.add({ name: "root", reload: () => root.reload() });
    const tokens = this.#config.tokens;
    if (tokens !== null) {
      workerReload.add({
        name: "tokens",
        reload: () => {
          // The store logs what it read or why it kept the tokens in force.
          if (!tokens.reload()) throw new Error(`${tokens.path} not taken, the tokens in force stay`);
          return `${tokens.path} re-read`;
        },
      });
    }
  }

  #reload(): void {
    const outcomes = workerReload.runAll();
    this.#serviceLine(`reloaded: ${describeReload(outcomes)}`);
    const failed = outcomes.filter((o) => o.error !== null).length;
    this.#flushLog(); // the master's "reloaded" comes after every worker's line
    sendMessage(this.#channel, MessageKind.Reloaded, 0, failed);
  }

  /** Serves until told to stop or the master goes away; never returns. */
  run(): never {
    for (;;) this.#turn();
  }

  #turn(): void {
    if (this.#stopping && this.#connections.size === 0) this.#exit(0, "stopped");
    const { hashes, signatures } = this.#config;
    this.#followRoot();
    // While hashes or signatures are being computed, only poll: the loop alternates their slices and serving.
    const ready = this.#epoll.wait(hashes.busy || signatures.busy ? 0 : IDLE_SCAN_MS);
    for (let i = 0; i < ready; i++) {
      const fd = this.#epoll.fdAt(i);
      if (fd === this.#channel) {
        this.#onChannel();
        continue;
      }
      if (fd === this.#signAhead?.fd) {
        this.#signAhead.onReadable();
        continue;
      }
      const conn = this.#connections.get(fd);
      if (conn !== undefined) this.#drive(conn, this.#epoll.eventsAt(i));
    }
    if (hashes.busy) hashes.step();
    if (signatures.busy) signatures.step();
    for (const conn of this.#woken) {
      this.#woken.delete(conn);
      if (!conn.closed) this.#drive(conn, 0);
    }
    const now = performance.now();
    if (now >= this.#nextIdleScan) {
      this.#nextIdleScan = now + IDLE_SCAN_MS;
      for (const conn of this.#connections.values()) {
        const before = conn.interest;
        if (conn.checkIdle(now)) this.#settle(conn, before);
      }
      if (this.#root !== null && this.#root.retiredCount > 0) this.#root.releaseUnused();
    }
    this.#flushLog();
    this.#tellEnded();
    workerMetrics.connections(this.#connections.size, this.#holding.size);
  }

  /**
   * Keeps signing ahead in the root as it is: a reload that opened another directory ends the old tree's
   * watches, and the new inotify instance is waited for instead (closing the old one took it out of epoll).
   */
  #followRoot(): void {
    const signAhead = this.#signAhead;
    if (signAhead === null || this.#config.rootFd === this.#signAheadRoot) return;
    if (this.#signAheadRoot !== -1) signAhead.restart();
    this.#signAheadRoot = this.#config.rootFd;
    if (signAhead.fd >= 0) this.#epoll.add(signAhead.fd, EPOLLIN);
  }

  /** Lets `conn` handle readiness `events` (0: a wake-up), then updates epoll to what it waits for now. */
  #drive(conn: Connection, events: number): void {
    const before = conn.interest;
    conn.onReady(events);
    this.#settle(conn, before);
  }

  #settle(conn: Connection, interestBefore: number): void {
    if (conn.closed) {
      // close() already removed it from epoll: no other process holds it
      if (this.#connections.delete(conn.fd)) this.#closedUntold?.push(conn.id);
    } else if (conn.interest !== interestBefore) {
      this.#epoll.modify(conn.fd, conn.interest);
    }
    this.#account(conn);
  }

  /** Frees or takes `conn`'s slot as it starts or stops being answered. */
  #account(conn: Connection): void {
    const holds = !conn.closed && conn.answering;
    if (holds === this.#holding.has(conn)) return;
    if (holds) {
      this.#holding.add(conn);
      this.#takenUntold++;
    } else {
      this.#holding.delete(conn);
      this.#endedUntold++;
    }
  }

  #tellEnded(): void {
    const closed = this.#closedUntold ?? NO_IDS;
    const untold = () => this.#endedUntold !== 0 || this.#takenUntold !== 0 || closed.length > 0;
    if (!untold()) return;
    // Done: `arg` slots freed, `id` slots taken again (connections that were waiting got their request),
    // and the ids of connections that closed, a message's worth at a time.
    while (untold()) {
      const ids = closed.length <= MAX_ENDED_PER_DONE ? closed : closed.slice(0, MAX_ENDED_PER_DONE);
      if (!sendDone(this.#channel, this.#takenUntold, this.#endedUntold, ids)) break;
      this.#endedUntold = this.#takenUntold = 0;
      closed.splice(0, ids.length);
    }
    // A channel the master has not read yet may be full (a socketpair holds only a few messages): the
    // count is then kept, and sent when epoll says the channel has room again.
    const wanted = untold() ? EPOLLIN | EPOLLOUT : EPOLLIN;
    if (wanted !== this.#channelEvents) this.#epoll.modify(this.#channel, this.#channelEvents = wanted);
  }

  #onChannel(): void {
    for (;;) {
      const message = receiveMessage(this.#channel);
      if (message === null) return;
      if (message === "closed") this.#exit(0, "master gone");
      else if (message.kind === MessageKind.Conns) {
        for (const handed of message.conns) this.#serveNew(handed);
        if (message.lostIds.length > 0) this.#onLost(message.lostIds);
      } else if (message.kind === MessageKind.Stop) {
        this.#stopping = true;
        for (const conn of this.#connections.values()) {
          const before = conn.interest;
          conn.closeIfIdle();
          this.#settle(conn, before);
        }
      } else if (message.kind === MessageKind.Reload) this.#reload();
      else if (message.kind === MessageKind.HashKnown) {
        const { etag, sha256 } = decodeHashKnown(message.payload);
        this.#config.hashes.learn(etag, sha256);
      } else if (message.kind === MessageKind.SignatureKnown) {
        const { etag, sha256 } = decodeHashKnown(message.payload);
        this.#config.hashes.learn(etag, sha256);
        // Its memfd lost on the way (no fd was free): this worker signs the file itself if asked.
        if (message.fd !== -1) this.#config.signatures.learn(etag, sha256, message.fd);
      } else if (message.fd !== -1) close(message.fd);
    }
  }

  /**
   * Passes a signature to the other workers through the master, as a memfd holding it: the master relays
   * the fd without reading it. A full channel, or no memfd, just leaves the others to compute their own.
   */
  #shareSignature(etag: string, signed: Signed): void {
    let fd = -1;
    try {
      fd = memfdCreate("ferry-signature");
      pwriteAll(fd, signed.signature, 0);
      sendSignatureKnown(this.#channel, etag, signed.sha256, fd);
    } catch (e) {
      if (!(e instanceof LibcError)) throw e;
    } finally {
      if (fd !== -1) close(fd);
    }
  }

  /**
   * Connections handed over whose fds did not arrive (no fd was free): the kernel closed them, so the
   * clients see the connection end. They are counted as ended, and the worker goes on.
   */
  #onLost(ids: readonly number[]): void {
    this.#lostHandOffs += ids.length;
    this.#endedUntold += ids.length;
    this.#closedUntold?.push(...ids);
    this.#serviceLine(
      `${ids.length} connection(s) handed over were closed unserved (no fd free: the worker's open-file ` +
        `limit is reached; ${this.#lostHandOffs} so far)`,
    );
  }

  #serveNew(handed: HandedConn): void {
    const conn = this.#accept(handed);
    if (conn === null) return;
    this.#holding.add(conn); // the master counted it on a slot
    conn.onReady(); // the request is there already (TCP_DEFER_ACCEPT); classic mode can start writing
    if (!conn.closed) {
      this.#connections.set(conn.fd, conn);
      this.#epoll.add(conn.fd, conn.interest);
    } else this.#closedUntold?.push(conn.id);
    this.#account(conn);
  }

  #accept({ fd, id, mode, peer }: HandedConn): Connection | null {
    try {
      return new Connection(fd, id, mode === ServeMode.Classic, this.#config, peer);
    } catch (e) {
      // E.g. the pushed file was removed: this connection fails, the worker goes on.
      this.#serviceLine(`cannot serve connection ${id}: ${(e as Error).message}`);
      close(fd);
      this.#endedUntold++;
      this.#closedUntold?.push(id);
      return null;
    }
  }

  /** A line of the worker's own log, stamped and attributed. */
  #serviceLine(line: string): void {
    const time = new Date().toISOString();
    this.#serviceLog.push(
      this.#args.logFormat === "json"
        ? jsonServiceLine(time, { worker: this.#args.workerId }, line)
        : `${time} worker=${this.#args.workerId} ${line}`,
    );
  }

  #flushLog(): void {
    this.#serviceLog.flush();
    this.#requestLog?.flush();
  }

  #exit(code: number, reason: string): never {
    for (const conn of this.#connections.values()) conn.abort(reason);
    this.#flushLog();
    Deno.exit(code);
  }
}

/** Runs a worker until it is told to stop or its master goes away; never returns. */
export async function runWorker(args: WorkerArgs): Promise<never> {
  // Ctrl-C and systemd's SIGTERM reach the whole process group: the master decides how to stop.
  ignoreSignal(C.SIGINT);
  ignoreSignal(C.SIGTERM);
  // A reload or an upgrade is the master's to carry out, even when the signal reaches the whole group.
  ignoreSignal(C.SIGHUP);
  ignoreSignal(C.SIGUSR2);
  raiseOpenFileLimit();
  setNonBlocking(args.channelFd, true);
  if (args.metricsFd !== -1) {
    workerMetrics.attach(attachMetricsRegion(args.metricsFd, args.metricsSlots), args.workerId);
  }
  const loop = new WorkerLoop(args);
  sendMessage(args.channelFd, MessageKind.Ready);
  // The master may hand over connections from now on; they wait in the channel while this loads.
  await loadHashing();
  return loop.run();
}

if (import.meta.main) {
  await runWorker(parseWorkerArgs(Deno.args));
}
