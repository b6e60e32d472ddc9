/**
 * The master's loop: one epoll loop over its listening sockets and one channel per worker. It accepts,
 * hands each connection to the least-loaded worker with room (see `dispatcher.ts`), queues connections
 * within a bound and answers BUSY past it, respawns workers that die, and stops gracefully on SIGTERM or
 * SIGINT. SIGHUP reloads (`reload_hooks.ts`), SIGUSR2 upgrades (`upgrade.ts`); the pid file and systemd's
 * notifications are `lifecycle.ts`'s. It never reads or writes file bytes.
 *
 * @module
 */

import {
  ACCEPT_DEFERRAL_SECONDS,
  MAX_CONNS_PER_MESSAGE,
  MessageKind,
  receiveMessage,
  sendConns,
  sendMessage,
  ServeMode,
} from "../channel/messages.ts";
import { Admission, type Verdict } from "./admission.ts";
import { AwaitingRequest, MAX_AWAITING } from "./awaiting_request.ts";
import { jsonServiceLine, type LogFormat } from "../channel/log_format.ts";
import { Dispatcher } from "./dispatcher.ts";
import { MetricsListener } from "./metrics_listener.ts";
import {
  clearWorkerGauges,
  createMetricsRegion,
  MasterCell,
  masterCells,
  type MetricsRegion,
} from "../metrics/registry.ts";
import { FdReserve } from "./fd_reserve.ts";
import type { ServerOptions } from "./options.ts";
import { startWorker } from "./worker_process.ts";
import type { Inherited } from "./inherited.ts";
import { Lifecycle } from "./lifecycle.ts";
import { describeReload } from "../reload_hooks.ts";
import { Epoll, EPOLLIN, EPOLLOUT } from "../ffi/epoll.ts";
import {
  bind,
  C,
  close,
  eventfd,
  getsockname,
  LibcError,
  listen,
  raiseOpenFileLimit,
  setsockoptInt,
  shutdown,
  socket,
  tryAccept4,
  tryRead,
  tryRecv,
  trySend,
  tryWrite,
  WOULD_BLOCK,
} from "../ffi/libc.ts";
import { decodeSockaddr, encodeSockaddr, type Endpoint, formatEndpoint } from "../ffi/sockaddr.ts";
import { SOCKADDR_MAX } from "../ffi/structs.ts";
import { encodeErrorResponse, ErrorCode, LINGER_BYTES, LINGER_TIME_MS } from "../framing.ts";
import { HTTP_SNIFF_BYTES, httpBusyResponse, looksLikeHttp } from "../http_wire.ts";

/** At most this many refused connections linger at once; past it they are closed at once. */
const LINGER_MAX = 256;
/** The retry-after hint of a BUSY answer. */
const BUSY_RETRY_AFTER_MS = 1000;
/**
 * How long the master, once woken, keeps waiting on its own thread before it returns to the event loop,
 * in milliseconds: also the longest a signal waits to be handled while connections keep coming.
 */
const SYNC_SLICE_MS = 20;
/** How long accepting pauses after EMFILE/ENFILE when the fd reserve is spent too, in milliseconds. */
const ACCEPT_PAUSE_MS = 100;
/**
 * Fds held in reserve for when the open-file limit is reached: enough to start a worker (its channel's
 * two ends, and the pipes and /dev/null that spawning takes) and to accept one connection to answer BUSY.
 */
const RESERVE_FDS = 16;
/** Fds a worker holds before its first connection (Deno's own, its channel, epoll, the root: about 26). */
const WORKER_BASE_FDS = 32;
/** Fds a connection may hold in a worker: its socket and the file it sends. */
const WORKER_FDS_PER_CONN = 2;
/** Respawn backoff: first delay, cap, and how long a worker must live for the backoff to reset. */
const RESPAWN_FIRST_MS = 100;
const RESPAWN_MAX_MS = 10_000;
const RESPAWN_RESET_MS = 10_000;

/** The master's log format (`--log-format`), set when the master is made. */
let logFormat: LogFormat = "text";

function log(line: string): void {
  const time = new Date().toISOString();
  console.error(
    logFormat === "json"
      ? jsonServiceLine(time, { process: "master", pid: Deno.pid }, line)
      : `${time} master[${Deno.pid}]: ${line}`,
  );
}

/** A listening socket and what it serves. */
interface Listener {
  fd: number;
  endpoint: Endpoint;
  mode: number;
}

/** Opens a nonblocking, close-on-exec listening socket; the endpoint returned has the real port. */
function openListener(
  endpoint: Endpoint,
  backlog: number,
  deferSeconds: number,
): Endpoint & { fd: number } {
  const fd = socket(endpoint.family, C.SOCK_STREAM | C.SOCK_NONBLOCK | C.SOCK_CLOEXEC);
  try {
    setsockoptInt(fd, C.SOL_SOCKET, C.SO_REUSEADDR, 1);
    // An IPv6 listener serves IPv6 only, so [::]:P and 0.0.0.0:P can be given side by side.
    if (endpoint.family === C.AF_INET6) setsockoptInt(fd, C.IPPROTO_IPV6, C.IPV6_V6ONLY, 1);
    // Replies are coalesced with MSG_MORE; without NODELAY, Nagle would hold a reply's small last frame
    // until the client's delayed ACK. Linux copies it to every accepted socket: no setsockopt per connection.
    setsockoptInt(fd, C.IPPROTO_TCP, C.TCP_NODELAY, 1);
    // Request mode: the kernel hands over a connection only once its first bytes (the request) are in,
    // so the worker's first read finds them instead of waiting for another wake-up. Classic-mode clients
    // send nothing and must be accepted at once.
    if (deferSeconds > 0) setsockoptInt(fd, C.IPPROTO_TCP, C.TCP_DEFER_ACCEPT, deferSeconds);
    bind(fd, encodeSockaddr(endpoint));
    listen(fd, backlog);
    const addr = new Uint8Array(SOCKADDR_MAX);
    getsockname(fd, addr);
    return { ...decodeSockaddr(addr)!, fd };
  } catch (e) {
    close(fd);
    throw e;
  }
}

/** An accepted connection on its way to a worker. */
interface PendingConn {
  fd: number;
  id: number;
  mode: number;
  /** The client's sockaddr as accept4(2) gave it. */
  peer: Uint8Array;
}

/** Where accept4(2) writes each client's address. */
const PEER_SCRATCH = new Uint8Array(new ArrayBuffer(SOCKADDR_MAX)); // outside V8's heap: see tryAccept4

/** One worker slot: the process in it changes when a worker dies and is respawned. */
interface WorkerSlot {
  id: number;
  channel: number;
  child: Deno.ChildProcess | null;
  startedAt: number;
  respawnAt: number;
  failures: number;
  /** Connections placed on this worker and not sent yet: they go in one message at the end of the turn. */
  outbox: PendingConn[];
}

/** The master: listeners, workers, dispatch, supervision and shutdown, all driven by one epoll loop. */
export class Master {
  readonly #options: ServerOptions;
  readonly #epoll = new Epoll(256);
  readonly #wake = eventfd();
  readonly #listeners = new Map<number, Listener>();
  readonly #slots: WorkerSlot[] = [];
  readonly #slotByChannel = new Map<number, WorkerSlot>();
  readonly #dispatcher: Dispatcher<PendingConn>;
  /** Refused connections being read until they close: fd -> when to close at the latest, bytes read. */
  readonly #lingering = new Map<number, { deadline: number; bytes: number }>();
  #nextConnId = 1;
  #accepting = false;
  #acceptPausedUntil = 0;
  #announced = false;
  #stopRequested = 0;
  #graceDeadline = Infinity;
  #stopSent = false;
  readonly #readyWorkers = new Set<number>();
  readonly #reserve = new FdReserve(RESERVE_FDS);
  /** Worker slots whose last start failed (socketpair or spawn): a new connection may not wait for them. */
  readonly #cannotStart = new Set<number>();
  /** --allow/--deny, --max-conns-per-ip and PROXY headers (see admission.ts); skipped when none is set. */
  readonly #admission: Admission<PendingConn>;
  /** Connections of request listeners whose client has sent nothing yet (see awaiting_request.ts). */
  readonly #awaiting: AwaitingRequest<PendingConn>;
  readonly #inherited: Inherited;
  readonly #lifecycle: Lifecycle;
  #reloadRequested = false;
  #upgradeRequested = false;
  /** During a reload: the workers that have not said Reloaded yet. */
  #reloadWaiting: Set<number> | null = null;
  /** The shared counters (null with --no-metrics, or where the kernel refused the memory), and the master's. */
  readonly #metrics: MetricsRegion | null = null;
  readonly #counts: Float64Array;
  #metricsListener: MetricsListener | null = null;

  /**
   * @param options the parsed command line
   * @param inherited listening sockets passed by systemd or by the master this one replaces
   */
  constructor(options: ServerOptions, inherited: Inherited = { listeners: [], from: null, upgrade: null }) {
    this.#options = options;
    this.#inherited = inherited;
    this.#lifecycle = new Lifecycle(options, inherited, log);
    // A worker runs under the same open-file limit (it raises its soft limit to the hard one too): more
    // connections than its fds can hold would arrive without their fd and be closed unserved.
    const limit = raiseOpenFileLimit();
    const fit = Math.max(1, Math.floor((limit - WORKER_BASE_FDS) / WORKER_FDS_PER_CONN));
    if (fit < options.connsPerWorker) {
      log(
        `serving at most ${fit} connections per worker: the open-file limit (${limit}) has room for no more`,
      );
    }
    this.#dispatcher = new Dispatcher(Math.min(fit, options.connsPerWorker), options.queue);
    this.#epoll.add(this.#wake, EPOLLIN);
    this.#admission = new Admission(options.admission, this.#epoll, log, options.idleTimeout * 1000);
    this.#awaiting = new AwaitingRequest(
      this.#epoll,
      options.idleTimeout * 1000,
      (conn) => this.#admission.ended(conn.id),
      encodeErrorResponse({
        code: ErrorCode.Timeout,
        message: `no complete request within ${options.idleTimeout}s`,
      }),
      MAX_AWAITING,
      Math.floor(limit / 2), // half the master's fds at most
    );
    logFormat = options.logFormat;
    if (options.metrics) {
      try {
        this.#metrics = createMetricsRegion(options.workers);
      } catch (e) {
        log(`metrics are off: ${(e as Error).message}`);
      }
    }
    this.#counts = masterCells();
  }

  /** Opens every listener (before any worker starts, so a taken port fails fast). */
  listen(): void {
    if (this.#inherited.listeners.length > 0) return this.#adoptInherited();
    for (const { endpoint, mode } of this.#options.listen) {
      let opened;
      try {
        const defer = mode === ServeMode.Request ? ACCEPT_DEFERRAL_SECONDS : 0;
        opened = openListener(endpoint, this.#options.backlog, defer);
      } catch (e) {
        throw new Error(`cannot listen on ${formatEndpoint(endpoint)}: ${(e as Error).message}`);
      }
      const { fd, ...actual } = opened;
      this.#listeners.set(fd, { fd, endpoint: actual, mode });
    }
    if (this.#options.metricsListen !== null) {
      this.#metricsListener = new MetricsListener(
        this.#options.metricsListen,
        this.#epoll,
        (peer) => !this.#admission.active || this.#admission.allows(peer),
      );
    }
  }

  /** Uses the inherited listeners in place of --listen and --push-listen. */
  #adoptInherited(): void {
    const from = this.#inherited.from === "systemd" ? "systemd" : "the old master";
    for (const { fd, endpoint, name, mode: named } of this.#inherited.listeners) {
      const mode = named ?? (this.#options.root !== null ? ServeMode.Request : ServeMode.Classic);
      const what = `the listener '${name}' on ${formatEndpoint(endpoint)} from ${from}`;
      if (mode === ServeMode.Request && this.#options.root === null) throw new Error(`${what} needs --root`);
      if (mode === ServeMode.Classic && this.#options.push === null) throw new Error(`${what} needs --push`);
      // What openListener sets; a socket systemd opened may lack it (NoDelay=, DeferAcceptSec= in the unit).
      setsockoptInt(fd, C.IPPROTO_TCP, C.TCP_NODELAY, 1);
      if (mode === ServeMode.Request) {
        setsockoptInt(fd, C.IPPROTO_TCP, C.TCP_DEFER_ACCEPT, ACCEPT_DEFERRAL_SECONDS);
      }
      this.#listeners.set(fd, { fd, endpoint, mode });
    }
    if (this.#options.listen.length > 0) {
      log(`using the ${this.#listeners.size} listening socket(s) from ${from}; --listen is not opened`);
    }
  }

  /** Runs until stopped; resolves when every worker has exited. */
  async run(): Promise<void> {
    for (let id = 1; id <= this.#options.workers; id++) {
      const slot: WorkerSlot = {
        id,
        channel: -1,
        child: null,
        startedAt: 0,
        respawnAt: 0,
        failures: 0,
        outbox: [],
      };
      this.#slots.push(slot);
      this.#spawn(slot);
    }
    for (const signal of ["SIGTERM", "SIGINT"] as const) {
      Deno.addSignalListener(signal, () => this.#requestStop(signal));
    }
    Deno.addSignalListener("SIGHUP", () => this.#wakeFor(() => this.#reloadRequested = true));
    Deno.addSignalListener("SIGUSR2", () => this.#wakeFor(() => this.#upgradeRequested = true));
    while (!this.#finished()) {
      let ready = await this.#epoll.waitAsync(this.#nextTimeout());
      // Once awake, wait on this thread for a slice: the kernel wakes it directly, where a wait on the
      // blocking pool costs a thread hop each way (a third of the master's CPU per connection when it
      // was used for every wait). Signals and child exits are delivered in the event loop, which this
      // returns to at the end of each slice.
      const sliceEnd = performance.now() + SYNC_SLICE_MS;
      for (;;) {
        for (let i = 0; i < ready; i++) this.#onReady(this.#epoll.fdAt(i), this.#epoll.eventsAt(i));
        this.#onTick();
        const left = Math.ceil(sliceEnd - performance.now());
        if (left <= 0 || this.#finished()) break;
        ready = this.#epoll.wait(Math.min(left, this.#nextTimeout()));
      }
    }
    await Promise.all(this.#slots.map((s) => s.child?.status));
    this.#lifecycle.exit();
    log("stopped");
  }

  /** Sets a flag from a signal listener and wakes the loop, which acts on it in #onTick. */
  #wakeFor(setFlag: () => void): void {
    setFlag();
    tryWrite(this.#wake, WAKE_VALUE);
  }

  #finished(): boolean {
    return this.#stopRequested > 0 && this.#slots.every((s) => s.channel === -1);
  }

  #nextTimeout(): number {
    let at = performance.now() + 1000;
    for (const slot of this.#slots) {
      if (slot.channel === -1 && slot.respawnAt > 0) at = Math.min(at, slot.respawnAt);
    }
    if (this.#lingering.size > 0) at = Math.min(at, performance.now() + 250);
    if (this.#acceptPausedUntil > 0) at = Math.min(at, this.#acceptPausedUntil);
    at = Math.min(at, this.#graceDeadline, this.#admission.nextDeadline(), this.#lifecycle.nextDue);
    at = Math.min(at, this.#awaiting.nextDeadline());
    if (this.#metricsListener !== null) at = Math.min(at, this.#metricsListener.nextDeadline());
    return Math.max(0, Math.ceil(at - performance.now()));
  }

  #onReady(fd: number, events: number): void {
    if (fd === this.#wake) {
      tryRead(this.#wake, new Uint8Array(8));
      return;
    }
    if (fd === this.#lifecycle.successorFd) {
      if (this.#lifecycle.onSuccessor()) this.#requestStop("upgrade: the new master serves");
      return;
    }
    const listener = this.#listeners.get(fd);
    if (listener) return this.#acceptAll(listener);
    if (this.#metricsListener?.onReady(fd)) return;
    const slot = this.#slotByChannel.get(fd);
    if (slot) {
      if (events & EPOLLOUT) {
        // The channel was full during a hand-off and has room again.
        this.#epoll.modify(slot.channel, EPOLLIN);
        this.#dispatchQueued();
      }
      return this.#onChannel(slot);
    }
    if (this.#lingering.has(fd)) this.#discard(fd);
    else if (this.#awaiting.has(fd)) {
      const conn = this.#awaiting.onReadable(fd);
      if (conn !== null) {
        this.#dispatch(conn);
        this.#sendOutboxes();
      }
    } else if (this.#admission.isWaiting(fd)) {
      const { conn, verdict } = this.#admission.onReadable(fd);
      this.#afterAdmission(conn, verdict);
      this.#sendOutboxes();
    }
  }

  #onTick(): void {
    const now = performance.now();
    if (this.#acceptPausedUntil > 0 && now >= this.#acceptPausedUntil) {
      this.#acceptPausedUntil = 0;
      this.#setAccepting(true);
    }
    for (const slot of this.#slots) {
      if (slot.channel === -1 && slot.respawnAt > 0 && now >= slot.respawnAt && this.#stopRequested === 0) {
        this.#spawn(slot);
      }
    }
    for (const [fd, { deadline }] of this.#lingering) if (now >= deadline) this.#endLinger(fd);
    this.#admission.expire(now);
    this.#awaiting.expire(now);
    if (this.#reloadRequested) this.#reload();
    if (this.#upgradeRequested) this.#upgrade();
    this.#lifecycle.tick(now);
    this.#metricsListener?.tick(now);
    this.#counts[MasterCell.Queued] = this.#dispatcher.queued;
    this.#counts[MasterCell.AwaitingRequest] = this.#awaiting.size;
    this.#counts[MasterCell.WorkersReady] = this.#readyWorkers.size;
    this.#counts[MasterCell.RefusedByList] = this.#admission.counts.refused;
    this.#counts[MasterCell.RefusedProxyHeader] = this.#admission.counts.badProxy;
    if (this.#stopRequested > 0) this.#continueStop(now);
  }

  // --- workers ---------------------------------------------------------------------------------------

  #spawn(slot: WorkerSlot): void {
    let started;
    // Whatever else holds the master's fds (queued and lingering connections), a worker can start.
    this.#reserve.release(RESERVE_FDS);
    try {
      started = startWorker(this.#options, slot.id, this.#metrics);
    } catch (e) {
      slot.respawnAt = this.#backoff(slot);
      log(`worker ${slot.id}: cannot start: ${(e as Error).message}`);
      this.#cannotStart.add(slot.id);
      // With no worker left and none that can start, queued connections would wait, holding their fds,
      // for as long as that lasts: answer them now.
      if (this.#dispatcher.workers === 0) {
        for (const conn of this.#dispatcher.drain()) this.#refuse(conn, REFUSED_NO_WORKER);
      }
      return;
    } finally {
      this.#reserve.refill();
    }
    this.#cannotStart.delete(slot.id);
    const { child, channel } = started;
    slot.child = child;
    slot.channel = channel;
    slot.startedAt = performance.now();
    slot.respawnAt = 0;
    this.#slotByChannel.set(channel, slot);
    this.#epoll.add(channel, EPOLLIN);
    const { pid } = child;
    child.status.then((status) => {
      const how = status.signal ? `signal ${status.signal}` : `code ${status.code}`;
      if (this.#stopRequested === 0 || !status.success) {
        log(`worker ${slot.id} (pid ${pid}) exited with ${how}`);
      }
    });
  }

  #backoff(slot: WorkerSlot): number {
    slot.failures++;
    const delay = Math.min(RESPAWN_MAX_MS, RESPAWN_FIRST_MS * 2 ** (slot.failures - 1));
    return performance.now() + delay;
  }

  #onChannel(slot: WorkerSlot): void {
    for (;;) {
      let message;
      try {
        message = receiveMessage(slot.channel);
      } catch (e) {
        log(`worker ${slot.id}: channel error: ${(e as Error).message}`);
        message = "closed" as const;
      }
      if (message === null) return;
      if (message === "closed") return this.#onWorkerGone(slot);
      for (const handed of message.conns) close(handed.fd); // workers never send fds; do not leak any
      if (message.kind === MessageKind.Ready) {
        this.#dispatcher.addWorker(slot.id);
        this.#readyWorkers.add(slot.id);
        this.#onWorkerReady();
      } else if (message.kind === MessageKind.Done) {
        this.#dispatcher.release(slot.id, message.arg);
        this.#dispatcher.take(slot.id, message.id);
        for (const id of message.ended) this.#admission.ended(id);
      } else if (message.kind === MessageKind.HashKnown) {
        this.#relayHash(slot, message.payload);
      } else if (message.kind === MessageKind.SignatureKnown) {
        this.#relayHash(slot, message.payload, message.fd);
      } else if (message.kind === MessageKind.Reloaded) {
        this.#reloadWaiting?.delete(slot.id);
        this.#reloadFinished();
      }
      if (message.fd !== -1) close(message.fd); // relayed (the kernel holds its own references) or unknown
      this.#dispatchQueued();
    }
  }

  /**
   * Passes a hash one worker computed to the others, or with `fd` a signature (a memfd the master never
   * reads); a full channel just misses this cache hint.
   */
  #relayHash(from: WorkerSlot, payload: Uint8Array, fd = -1): void {
    const kind = fd === -1 ? MessageKind.HashKnown : MessageKind.SignatureKnown;
    for (const slot of this.#slots) {
      if (slot === from || slot.channel === -1) continue;
      try {
        sendMessage(slot.channel, kind, 0, 0, payload, fd);
      } catch {
        // that worker is gone; its hang-up is handled on its own channel
      }
    }
  }

  #onWorkerReady(): void {
    if (this.#announced || this.#stopRequested > 0) return;
    if (this.#readyWorkers.size < this.#slots.length) return;
    this.#announced = true;
    for (const l of this.#listeners.values()) {
      const what = l.mode === ServeMode.Request
        ? `request mode, root ${this.#options.root}`
        : `classic mode, push ${this.#options.push}`;
      log(`listening on ${formatEndpoint(l.endpoint)} (${what})`);
    }
    if (this.#metricsListener !== null) {
      log(`serving metrics at http://${formatEndpoint(this.#metricsListener.endpoint)}/metrics`);
    }
    this.#setAccepting(true);
    this.#lifecycle.ready();
    // Last: whoever waits for this line finds the pid file written and systemd told.
    log(`ready with ${this.#options.workers} workers`);
  }

  #onWorkerGone(slot: WorkerSlot): void {
    this.#epoll.remove(slot.channel);
    this.#slotByChannel.delete(slot.channel);
    close(slot.channel);
    slot.channel = -1;
    this.#dispatcher.removeWorker(slot.id);
    this.#admission.workerGone(slot.id);
    this.#readyWorkers.delete(slot.id);
    // A worker started after this reads everything afresh: it is not waited for.
    if (this.#reloadWaiting?.delete(slot.id)) this.#reloadFinished();
    if (this.#metrics !== null) clearWorkerGauges(this.#metrics, slot.id);
    if (this.#stopRequested > 0) return;
    this.#counts[MasterCell.Restarts]++;
    if (performance.now() - slot.startedAt > RESPAWN_RESET_MS) slot.failures = 0;
    slot.respawnAt = this.#backoff(slot);
    log(
      `worker ${slot.id} is gone (pid ${slot.child?.pid}); respawning in ${
        Math.round(slot.respawnAt - performance.now())
      }ms`,
    );
  }

  // --- connections -----------------------------------------------------------------------------------

  #setAccepting(on: boolean): void {
    if (on === this.#accepting) return;
    this.#accepting = on;
    for (const fd of this.#listeners.keys()) {
      if (on) this.#epoll.add(fd, EPOLLIN);
      else this.#epoll.remove(fd);
    }
  }

  /** Accepts every waiting connection, places each, then hands them over: one message per worker. */
  #acceptAll(listener: Listener): void {
    this.#acceptWaiting(listener);
    this.#sendOutboxes();
  }

  #acceptWaiting(listener: Listener): void {
    for (;;) {
      let fd: number;
      try {
        fd = tryAccept4(listener.fd, C.SOCK_NONBLOCK | C.SOCK_CLOEXEC, PEER_SCRATCH);
      } catch (e) {
        if (!(e instanceof LibcError)) throw e;
        if (e.errnoName === "ECONNABORTED") continue;
        if ((e.errnoName === "EMFILE" || e.errnoName === "ENFILE") && this.#refuseOneWithReserve(listener)) {
          continue;
        }
        log(
          `${e.message} while accepting on ${
            formatEndpoint(listener.endpoint)
          }; pausing accept for ${ACCEPT_PAUSE_MS}ms`,
        );
        this.#setAccepting(false);
        this.#acceptPausedUntil = performance.now() + ACCEPT_PAUSE_MS;
        return;
      }
      if (fd === WOULD_BLOCK) return;
      const conn: PendingConn = {
        fd,
        id: this.#nextConnId++ >>> 0,
        mode: listener.mode,
        peer: PEER_SCRATCH.slice(), // goes to the worker, which would otherwise ask getpeername(2)
      };
      this.#afterAdmission(conn, this.#admission.active ? this.#admission.onAccept(conn) : "admit");
    }
  }

  /** Places a connection admission let through, answers BUSY one over its address's limit. */
  #afterAdmission(conn: PendingConn, verdict: Verdict): void {
    if (verdict === "over-limit") return this.#refuse(conn, REFUSED_PER_IP);
    if (verdict !== "admit") return; // closed, or waiting for its PROXY header
    // A client that has sent nothing yet waits here, holding no worker slot, until its first byte.
    if (
      conn.mode === ServeMode.Request && this.#stopRequested === 0 && this.#awaiting.hold(conn) !== "ready"
    ) {
      return;
    }
    this.#dispatch(conn);
  }

  /** Hands a connection to the least-loaded worker, queues it, or answers it BUSY. */
  #dispatch(conn: PendingConn): void {
    if (this.#dispatcher.workers === 0 && this.#cannotStart.size > 0) {
      return this.#refuse(conn, REFUSED_NO_WORKER);
    }
    const placement = this.#dispatcher.offer(conn);
    if (placement === "refused") this.#refuse(conn, REFUSED_FULL);
    else if (placement !== "queued") this.#place(placement.worker, conn);
  }

  /**
   * With no fd free, accepts one connection in a reserved fd's place and answers it BUSY at once, so
   * that clients learn to come back instead of waiting in the kernel's queue. False when the reserve
   * is spent (or nothing was waiting after all).
   */
  #refuseOneWithReserve(listener: Listener): boolean {
    if (this.#reserve.release(1) === 0) return false;
    try {
      const fd = tryAccept4(listener.fd, C.SOCK_NONBLOCK | C.SOCK_CLOEXEC, PEER_SCRATCH);
      if (fd === WOULD_BLOCK) return false;
      const conn = { fd, id: this.#nextConnId++ >>> 0, mode: listener.mode, peer: PEER_SCRATCH };
      this.#refuse(conn, REFUSED_NO_FD, false);
      return true;
    } catch {
      return false;
    } finally {
      this.#reserve.refill();
    }
  }

  /**
   * Puts a connection the dispatcher placed on `workerId` in that worker's outbox, sending the outbox
   * when it is full. False if that send failed (the outbox went back to the queue).
   */
  #place(workerId: number, conn: PendingConn): boolean {
    const slot = this.#slots[workerId - 1];
    slot.outbox.push(conn);
    return slot.outbox.length < MAX_CONNS_PER_MESSAGE || this.#sendOutbox(slot);
  }

  #sendOutboxes(): void {
    for (const slot of this.#slots) if (slot.outbox.length > 0) this.#sendOutbox(slot);
  }

  /**
   * Sends a worker its outbox in one message and closes the master's copies of the fds. If the channel is
   * full, or the worker is gone, the connections go back to the front of the queue, in order.
   */
  #sendOutbox(slot: WorkerSlot): boolean {
    const conns = slot.outbox;
    slot.outbox = [];
    let sent = false;
    try {
      sent = slot.channel !== -1 && sendConns(slot.channel, conns);
    } catch (e) {
      log(`worker ${slot.id}: hand-off failed: ${(e as Error).message}`); // its hang-up follows
    }
    if (sent) {
      for (const conn of conns) {
        close(conn.fd);
        this.#admission.handedTo(conn.id, slot.id);
      }
      return true;
    }
    for (let i = conns.length - 1; i >= 0; i--) this.#dispatcher.retract(slot.id, conns[i]);
    // A full channel (the worker is behind on reading it): try again when it has room.
    if (slot.channel !== -1) this.#epoll.modify(slot.channel, EPOLLIN | EPOLLOUT);
    return false;
  }

  #dispatchQueued(): void {
    // A failed send puts its connections back at the front of the queue: stop there, or they would come
    // straight back out.
    for (let next = this.#dispatcher.next(); next; next = this.#dispatcher.next()) {
      if (!this.#place(next.worker, next.conn)) break;
    }
    this.#sendOutboxes();
  }

  /**
   * Answers BUSY (request mode) or just closes (classic mode has no error frame), and logs it. Unless
   * `linger` is false (no fd to spare), it then reads what the client still sends, for a bounded time.
   */
  #refuse(conn: PendingConn, why: Refusal, linger = true): void {
    this.#admission.ended(conn.id);
    this.#counts[why.counter]++;
    const line = why.log(this.#options);
    if (line !== "") log(`connection ${conn.id} refused: ${line}`);
    if (conn.mode === ServeMode.Classic) {
      close(conn.fd);
      return;
    }
    try {
      // What the client sent already (its request) is read first: closing a socket with unread bytes
      // resets the connection, which could destroy the BUSY frame before the client reads it.
      const response = this.#options.http && speaksHttp(conn.fd) ? why.httpResponse : why.response;
      if (!linger) tryRecv(conn.fd, LINGER_SCRATCH);
      trySend(conn.fd, response);
      shutdown(conn.fd, C.SHUT_WR);
    } catch {
      close(conn.fd);
      return;
    }
    if (!linger || this.#lingering.size >= LINGER_MAX) {
      close(conn.fd);
      return;
    }
    // Read what the client sends until it closes: closing with unread bytes would reset the connection
    // and could destroy the BUSY frame before the client reads it.
    this.#lingering.set(conn.fd, { deadline: performance.now() + LINGER_TIME_MS, bytes: 0 });
    this.#epoll.add(conn.fd, EPOLLIN);
  }

  #discard(fd: number): void {
    const linger = this.#lingering.get(fd)!;
    try {
      // Bounded in bytes as in time: a client that never stops sending is cut off (LINGER_BYTES).
      while (linger.bytes < LINGER_BYTES) {
        const n = tryRecv(fd, LINGER_SCRATCH);
        if (n === WOULD_BLOCK) return;
        if (n === 0) break;
        linger.bytes += n;
      }
    } catch {
      // reset by the client: done either way
    }
    this.#endLinger(fd);
  }

  #endLinger(fd: number): void {
    this.#lingering.delete(fd);
    close(fd);
  }

  // --- reload and upgrade ----------------------------------------------------------------------------

  /** SIGHUP: the master's hooks, then a Reload message to every worker; done when each says Reloaded. */
  #reload(): void {
    this.#reloadRequested = false;
    if (this.#stopRequested > 0) return;
    log(`SIGHUP: reloading: ${describeReload(this.#lifecycle.reloadStarted())}`);
    this.#reloadWaiting = new Set();
    for (const slot of this.#slots) {
      if (slot.channel === -1) continue;
      try {
        if (sendMessage(slot.channel, MessageKind.Reload)) this.#reloadWaiting.add(slot.id);
        else log(`worker ${slot.id}: channel full; it keeps its state until the next reload`);
      } catch {
        // that worker is gone; its hang-up is handled on its own channel, and its successor starts afresh
      }
    }
    this.#reloadFinished();
  }

  #reloadFinished(): void {
    if (this.#reloadWaiting === null || this.#reloadWaiting.size > 0) return;
    this.#reloadWaiting = null;
    log("reloaded");
    this.#lifecycle.reloadDone();
  }

  /** SIGUSR2: starts a new master with the listening sockets; #onReady hears when it serves. */
  #upgrade(): void {
    this.#upgradeRequested = false;
    if (this.#stopRequested > 0) return;
    const listeners = [...this.#listeners.values()].map(({ fd, mode }) => ({
      fd,
      name: mode === ServeMode.Request ? "request" : "classic",
    }));
    const readyFd = this.#lifecycle.startUpgrade(listeners);
    if (readyFd !== null) this.#epoll.add(readyFd, EPOLLIN);
  }

  // --- stopping --------------------------------------------------------------------------------------

  #requestStop(signal: string): void {
    this.#stopRequested++;
    if (this.#stopRequested === 1) {
      this.#lifecycle.stopping();
      log(`${signal}: no longer accepting; giving transfers in flight ${this.#options.grace}s`);
      this.#graceDeadline = performance.now() + this.#options.grace * 1000;
    } else {
      log(`${signal} again: stopping now`);
      this.#graceDeadline = 0;
    }
    tryWrite(this.#wake, WAKE_VALUE);
  }

  #continueStop(now: number): void {
    this.#metricsListener?.close();
    this.#metricsListener = null;
    if (this.#listeners.size > 0) {
      this.#setAccepting(false);
      for (const fd of this.#listeners.keys()) close(fd);
      this.#listeners.clear();
    }
    this.#admission.closeWaiting();
    // Accepted before the stop: served in the grace time like queued ones, if their request comes.
    if (this.#awaiting.size > 0) {
      for (const conn of this.#awaiting.releaseAll()) this.#dispatch(conn);
      this.#sendOutboxes();
    }
    if (now >= this.#graceDeadline) {
      for (const conn of this.#dispatcher.drain()) close(conn.fd);
      for (const slot of this.#slots) if (slot.channel !== -1) this.#onWorkerGone(slot); // EOF: workers exit
      return;
    }
    // Queued connections were accepted: they are served first; then the workers are told to finish.
    if (!this.#stopSent && this.#dispatcher.queued === 0) {
      this.#stopSent = true;
      for (const slot of this.#slots) {
        if (slot.channel !== -1) sendMessage(slot.channel, MessageKind.Stop);
      }
    }
  }
}

const LINGER_SCRATCH = new Uint8Array(64 * 1024);
const WAKE_VALUE = new Uint8Array(new BigUint64Array([1n]).buffer);

/** Why a connection is refused: the master's log line and the BUSY answer the client gets. */
interface Refusal {
  log: (options: ServerOptions) => string;
  response: Uint8Array;
  /** The same as an HTTP 503, for a client whose request has arrived and starts like HTTP's. */
  httpResponse: Uint8Array;
  /** The master's metrics cell that counts it. */
  counter: number;
}

function busy(message: string): Pick<Refusal, "response" | "httpResponse"> {
  return {
    response: encodeErrorResponse({ code: ErrorCode.Busy, message, retryAfterMs: BUSY_RETRY_AFTER_MS }),
    httpResponse: httpBusyResponse(message, BUSY_RETRY_AFTER_MS),
  };
}

/**
 * True if the connection's first bytes, already arrived (TCP_DEFER_ACCEPT), start like an HTTP request:
 * one peek, made only for a connection being refused. A request still on its way is answered as ferry's.
 */
function speaksHttp(fd: number): boolean {
  try {
    return tryRecv(fd, PEEK_SCRATCH, C.MSG_PEEK) === HTTP_SNIFF_BYTES && looksLikeHttp(PEEK_SCRATCH);
  } catch {
    return false;
  }
}

const PEEK_SCRATCH = new Uint8Array(HTTP_SNIFF_BYTES);

const REFUSED_FULL: Refusal = {
  log: (options) => `every worker and the queue (${options.queue}) are full`,
  ...busy("server busy: every worker and the queue are full"),
  counter: MasterCell.BusyFull,
};
const REFUSED_NO_WORKER: Refusal = {
  log: () => "no worker is running, and starting one failed",
  ...busy("server busy: no worker is running"),
  counter: MasterCell.BusyNoWorker,
};
const REFUSED_PER_IP: Refusal = {
  log: () => "", // admission.ts logs it, at most once per address per minute
  ...busy("server busy: too many connections from your address"),
  counter: MasterCell.BusyPerIp,
};
const REFUSED_NO_FD: Refusal = {
  log: () => "no file descriptor free (the open-file limit is reached)",
  ...busy("server busy: out of file descriptors"),
  counter: MasterCell.BusyNoFd,
};
