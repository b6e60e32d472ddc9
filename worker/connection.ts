/**
 * One client connection inside a worker: a small state machine driven by epoll readiness on a nonblocking
 * socket. It reads request frames, answers them with a queue of output pieces (small frames and file
 * bodies), and writes that queue with exact-length loops that stop at EAGAIN and resume where they stopped
 * when the socket is writable again. Classic mode skips the request and pushes one file.
 *
 * @module
 */

import { silentAllowanceMs } from "../channel/messages.ts";
import { ClassicBody, FramedFileBody, ZeroPadding } from "./bodies.ts";
import { CompressedFileBody } from "./compression.ts";
import { EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT } from "../ffi/epoll.ts";
import {
  C,
  close,
  fstat,
  LibcError,
  openRead,
  setsockoptInt,
  shutdown,
  tryRecv,
  trySend,
  WOULD_BLOCK,
} from "../ffi/libc.ts";
import { decodeSockaddr, formatEndpoint, isInetSockaddr } from "../ffi/sockaddr.ts";
import {
  encodeErrorResponse,
  encodeRawFrame,
  ERROR_CLOSES,
  type ErrorBody,
  ErrorCode,
  FileShrankError,
  FRAME_HEADER_SIZE,
  getFrameLength,
  LINGER_BYTES,
  LINGER_TIME_MS,
  LINGER_TIMEOUT_MS,
  MAX_REQUEST_FRAME,
  ProtocolError,
  type Request,
} from "../framing.ts";
import type { HashCache } from "./hash_cache.ts";
import type { ReplyCache } from "./reply_cache.ts";
import type { SignatureCache } from "./signature_cache.ts";
import type { ListingMemo } from "./listing_memo.ts";
import { answer, Deferred, ErrorPiece, type Piece, type Reply, type ReplyContext } from "./operations.ts";
import { returnReplyBuffer } from "./reply_pool.ts";
import { ConnectionAccess, OPEN_ACCESS, type TokenStore } from "./access.ts";
import { parseRequestRemembered } from "./request_memo.ts";
import { type HttpConfig, nextHttpReply } from "./http.ts";
import { httpErrorResponse, looksLikeHttp } from "../http_wire.ts";
import type { LogFormat } from "../channel/log_format.ts";
import { workerMetrics } from "../metrics/registry.ts";
import { nextRequestId, stampRequestId } from "./request_id.ts";
import { formatRequestLine, metricResult } from "./request_log.ts";

/** The result of a connection that ended without a request: neither logged as one nor counted. */
const NO_REQUEST = "closed (no request)";

/** What a worker serves, shared by all its connections. */
export interface ServeConfig {
  /**
   * An fd of the served directory (request mode), or -1. A reload may replace it (`root_reload.ts`); a
   * connection keeps the one it had at its first request.
   */
  rootFd: number;
  /** The file pushed in classic mode and the name sent for it, or null. */
  push: { path: string; name: string } | null;
  /** How long a connection may make no progress before it is closed, in milliseconds. */
  idleTimeoutMs: number;
  /** Bytes one connection may send per turn before the others get theirs. */
  turnBudget: number;
  /** Writes one request's log line; null when requests are not logged. */
  log: ((line: string) => void) | null;
  /** Worker number, for the log. */
  workerId: number;
  /** How request lines are written. */
  logFormat: LogFormat;
  /** Whether `ping` requests are logged (they are counted either way). */
  logHealth: boolean;
  /** The worker's SHA-256 cache. */
  hashes: HashCache;
  /** The worker's cached small replies. */
  replies: ReplyCache;
  /** The worker's cache of delta signatures. */
  signatures: SignatureCache;
  /** What the worker's listings learnt of the tree. */
  listingMemo: ListingMemo;
  /** Asks the worker to run this connection again soon (a hash it waited for is known). */
  wake: (conn: Connection) => void;
  /** How HTTP requests on request-mode connections are answered; null with `--no-http`. */
  http: HttpConfig | null;
  /** The tokens of `--tokens`, or null when the server takes none (every connection reads everything). */
  tokens: TokenStore | null;
}

/** Where a connection is in its life. "waiting": a reply waits for a hash, nothing to read or write. */
type State = "reading" | "writing" | "waiting" | "lingering" | "closed";

/**
 * Requests are received into one worker-wide buffer (room for the largest request frame); a connection
 * keeps its own copy only of a partial frame, so thousands of idle connections hold no buffers.
 */
const INPUT_SCRATCH = new Uint8Array(FRAME_HEADER_SIZE + MAX_REQUEST_FRAME + 4096);
const NO_INPUT = new Uint8Array(0);

/** Requests of health checks and monitoring, logged only with --log-health (they are counted anyway). */
const HEALTH_OPS: ReadonlySet<string> = new Set(["ping", "scrape"]);

/** One client connection of a worker. */
export class Connection {
  /** Bytes written to the client so far. */
  bytesSent = 0;
  #state: State;
  #out: Piece[] = [];
  #files: number[] = [];
  #outOffset = 0;
  #in = NO_INPUT;
  #inLength = 0;
  #lastProgress: number;
  /**
   * While reading: when the request being waited for must be complete. Set once per request (at the
   * start, and when the previous response was sent), never pushed back by its bytes, so a client that
   * sends a request a byte at a time cannot hold the connection longer than a silent one (nginx's
   * client_header_timeout).
   */
  #requestDeadline: number;
  /** True until the first read: a connection that arrives without a byte has waited in the kernel. */
  #firstRead = true;
  #requestStarted: number;
  #requestBytesAtStart = 0;
  #requestLabel = "-";
  /** The operation being answered, for the metrics ("none" until a request is parsed). */
  #op = "none";
  /** The id of the answer being sent, or "" before one is made. */
  #requestId = "";
  #closeWhenSent = false;
  /** When the lingering close began, and the bytes it has discarded since. */
  #lingerStarted = 0;
  #lingerBytes = 0;
  #served = 0;
  #logged = 0;
  /** The error code of the reply being sent, if it is an error. */
  #errorCode = "";
  /** The reply being sent (for its log result). */
  #reply: Reply | null = null;
  /** Whether the client speaks HTTP, decided by its first bytes (http_wire.ts); undefined until they come. */
  #speaksHttp: boolean | undefined;
  readonly #peer: string;

  /**
   * @param fd the client's socket (nonblocking, close-on-exec)
   * @param id the master's id for it
   * @param classic true for classic mode (push), false for request mode
   * @param config what the worker serves
   * @param peer the client's sockaddr, as the master's accept4(2) got it
   */
  constructor(
    readonly fd: number,
    readonly id: number,
    classic: boolean,
    readonly config: ServeConfig,
    peer: Uint8Array,
  ) {
    this.#lastProgress = this.#requestStarted = performance.now();
    this.#requestDeadline = this.#lastProgress + config.idleTimeoutMs;
    // Only the request log shows the peer: formatting it for every connection otherwise is wasted.
    this.#peer = config.log === null ? "" : formatPeer(peer);
    this.#tcp = isInetSockaddr(peer);
    // TCP_NODELAY (replies are coalesced with MSG_MORE) comes from the listener: see server/master.ts.
    if (classic) {
      this.#state = "writing";
      this.#startClassic();
    } else {
      this.#state = "reading";
    }
  }

  /** True once the connection is finished and its fd closed. */
  get closed(): boolean {
    return this.#state === "closed";
  }

  /** True if the connection ended well (not cut by an error or timeout). */
  ok = true;

  /**
   * True while a request is being answered (or a classic push sent). False while the connection waits
   * for its client's next request, lingers after an error, or is closed: it then needs no worker slot.
   */
  get answering(): boolean {
    return this.#state === "writing" || this.#state === "waiting";
  }

  /** The epoll events this connection waits for now. */
  get interest(): number {
    return this.#state === "writing" ? EPOLLOUT : this.#state === "waiting" ? 0 : EPOLLIN;
  }

  /** Handles readiness reported by epoll (`events`), or a wake-up from the worker (no events). */
  onReady(events = 0): void {
    try {
      if (this.#state === "waiting") {
        if (events & (EPOLLHUP | EPOLLERR)) return this.#finish(false, "client gone");
        this.#state = "writing";
      }
      if (this.#state === "reading") this.#read();
      else if (this.#state === "lingering") this.#discard();
      if (this.#state === "writing") this.#write();
    } catch (e) {
      const what = e instanceof LibcError ? `${e.call}: ${e.errnoName}` : String(e);
      this.#finish(false, `error (${what})`);
    }
  }

  /** Closes the connection if it made no progress for the idle timeout. Returns true if it did. */
  checkIdle(now: number): boolean {
    // A connection waiting for a hash waits on the server, not on its client: that is not idleness.
    if (this.#state === "closed" || this.#state === "waiting") return false;
    if (this.#state === "lingering") {
      if (now - this.#lingerStarted < LINGER_TIME_MS && now - this.#lastProgress < LINGER_TIMEOUT_MS) {
        return false;
      }
      this.#finish(false, "closed after error");
      return true;
    }
    if (this.#state === "reading") {
      if (now < this.#requestDeadline) return false;
      // An HTTP client keeping an idle connection open is let go without a word, as HTTP servers do.
      if (this.#speaksHttp && this.#inLength === 0) {
        this.#finish(true, null);
        return true;
      }
      // Say why before closing: the client may still be waiting for an answer.
      const partial = this.#inLength > 0 ? " (a partial request frame arrived)" : "";
      this.#fail({
        code: ErrorCode.Timeout,
        message: `no complete request within ${this.config.idleTimeoutMs / 1000}s${partial}`,
      });
      this.onReady();
      if ((this.#state as State) === "writing") this.#finish(false, "timeout");
      return true;
    }
    if (now - this.#lastProgress < this.config.idleTimeoutMs) return false;
    this.#finish(false, "timeout (client stopped reading)");
    return true;
  }

  /**
   * The worker is stopping: an HTTP connection waiting for its next request is closed now (HTTP clients
   * expect an idle connection to close at any time), rather than holding the worker until the idle timeout.
   */
  closeIfIdle(): void {
    if (this.#state === "reading" && this.#speaksHttp && this.#inLength === 0) this.#finish(true, null);
  }

  /** Ends the connection at once (worker shutting down or master gone). */
  abort(reason: string): void {
    if (this.#state !== "closed") this.#finish(false, reason);
  }

  #startClassic(): void {
    const { path, name } = this.config.push!;
    this.#requestLabel = `PUSH ${name}`;
    this.#op = "push";
    this.#requestId = nextRequestId();
    const fd = openRead(path);
    const { size } = fstat(fd);
    this.#files.push(fd);
    this.#out.push(encodeRawFrame(new TextEncoder().encode(name)), new ClassicBody(fd, size));
    this.#closeWhenSent = true;
  }

  #read(): void {
    if (this.#in !== INPUT_SCRATCH) {
      INPUT_SCRATCH.set(this.#in.subarray(0, this.#inLength));
      this.#in = INPUT_SCRATCH;
    }
    try {
      for (;;) {
        // The scratch always has room: a frame that fills it is complete or refused by #parse.
        const n = tryRecv(this.fd, INPUT_SCRATCH.subarray(this.#inLength));
        if (n === WOULD_BLOCK && this.#firstRead) this.#arrivedEmpty();
        this.#firstRead = false;
        if (n === WOULD_BLOCK) return;
        if (n === 0) return this.#onEndOfInput();
        this.#inLength += n;
        this.#lastProgress = performance.now();
        if (this.#parse()) return;
      }
    } finally {
      this.#in = this.#inLength > 0 ? INPUT_SCRATCH.slice(0, this.#inLength) : NO_INPUT;
    }
  }

  /** The connection reached the worker without a byte: see {@link silentAllowanceMs}. */
  #arrivedEmpty(): void {
    this.#requestDeadline = this.#lastProgress + silentAllowanceMs(this.config.idleTimeoutMs);
  }

  /** Parses a complete request frame if one is buffered. Returns true when the state left "reading". */
  #parse(): boolean {
    if (this.#inLength < FRAME_HEADER_SIZE) return false;
    this.#speaksHttp ??= this.config.http !== null && looksLikeHttp(this.#in);
    if (this.#speaksHttp) return this.#parseHttp();
    const len = getFrameLength(this.#in, 0);
    if (len < 0 || len > MAX_REQUEST_FRAME) {
      this.#fail({
        code: ErrorCode.TooLarge,
        message: `request frame length ${len} is outside 0..${MAX_REQUEST_FRAME}`,
      });
      return true;
    }
    if (len === 0) {
      // An end frame from the client: it has no more requests.
      this.#finish(true, this.#served > 0 ? "ok" : NO_REQUEST);
      return true;
    }
    if (this.#inLength < FRAME_HEADER_SIZE + len) return false;
    const payload = this.#in.subarray(FRAME_HEADER_SIZE, FRAME_HEADER_SIZE + len);
    this.#requestStarted = performance.now();
    this.#requestBytesAtStart = this.bytesSent;
    let request: Readonly<Request> | null = null;
    let refusal: ErrorBody | null = null;
    try {
      request = parseRequestRemembered(payload);
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      // A well-formed request for a path that may not be served (absolute, '..', NUL, too long) is refused
      // like a path leading outside the root: the connection stays open (PROTOCOL.md). Others close it.
      if (ERROR_CLOSES[e.code]) {
        this.#fail({ code: e.code, message: e.message });
        return true;
      }
      refusal = { code: e.code, message: e.message };
    }
    this.#in.copyWithin(0, FRAME_HEADER_SIZE + len, this.#inLength);
    this.#inLength -= FRAME_HEADER_SIZE + len;
    this.#requestId = nextRequestId();
    if (request !== null) {
      const reply = answer(request, this.#replyContext);
      this.#op = request.op;
      this.#requestLabel = reply.label;
      this.#out.push(...stampRequestId(reply.pieces, this.#requestId));
      this.#files.push(...reply.files);
      this.#reply = reply;
    } else {
      this.#requestLabel = "GET (path refused)";
      this.#out.push(new ErrorPiece({ ...refusal!, requestId: this.#requestId }));
    }
    this.#state = "writing";
    return true;
  }

  /** Answers a complete HTTP request head if one is buffered. Returns true when the state left "reading". */
  #parseHttp(): boolean {
    // An id is drawn for every look at an incomplete head too: ids need only be unique, not consecutive.
    const id = nextRequestId();
    const next = nextHttpReply(this.#in, this.#inLength, this.#replyContext, this.config.http!, id);
    if (next === null) return false;
    this.#requestId = id;
    this.#op = next.reply.op;
    this.#requestStarted = performance.now();
    this.#requestBytesAtStart = this.bytesSent;
    this.#in.copyWithin(0, next.consumed, this.#inLength);
    this.#inLength -= next.consumed;
    this.#requestLabel = next.reply.label;
    this.#out.push(...next.reply.pieces);
    this.#files.push(...next.reply.files);
    this.#reply = next.reply;
    this.#state = "writing";
    return true;
  }

  #onEndOfInput(): void {
    if (this.#inLength === 0) {
      this.#finish(true, this.#served > 0 ? "ok" : NO_REQUEST);
    } else {
      this.#fail({
        code: ErrorCode.BadRequest,
        message: `connection ended inside a request frame (${this.#inLength} bytes received)`,
      });
    }
  }

  /** Queues an error response, after which the connection lingers and closes. */
  #fail(body: ErrorBody): void {
    this.#requestLabel = this.#requestLabel === "-" ? "(malformed)" : this.#requestLabel;
    this.ok = false;
    if (this.#requestId === "") this.#requestId = nextRequestId();
    if (this.#speaksHttp) {
      this.#errorCode = body.code;
      this.#closeWhenSent = true;
      const status = body.code === ErrorCode.Timeout ? 408 : 400;
      this.#out.push(httpErrorResponse(status, body.message, `X-Request-Id: ${this.#requestId}\r\n`));
    } else {
      this.#out.push(new ErrorPiece({ ...body, requestId: this.#requestId }));
    }
    this.#state = "writing";
  }

  #context: ReplyContext | null = null;

  get #replyContext(): ReplyContext {
    return this.#context ??= {
      rootFd: this.config.rootFd,
      hashes: this.config.hashes,
      signatures: this.config.signatures,
      listingMemo: this.config.listingMemo,
      replies: this.config.replies,
      wake: () => this.config.wake(this),
      access: this.config.tokens === null ? OPEN_ACCESS : new ConnectionAccess(this.config.tokens),
    };
  }

  #closeFiles(): void {
    for (const fd of this.#files) close(fd);
    this.#files = [];
  }

  /**
   * Sends what is queued, as far as the socket and the turn allow. A reply sent while the client's next
   * request is already here goes with MSG_MORE, so that the replies to a pipelined burst of small files
   * leave in full segments instead of one segment (and one trip through the loopback's receive path) per
   * file; whatever a turn left held back is pushed before the turn ends.
   */
  #write(): void {
    this.#writeTurn();
    if (!this.#heldBack || this.#state === "closed") return;
    this.#heldBack = false;
    try {
      setsockoptInt(this.fd, C.IPPROTO_TCP, C.TCP_NODELAY, 1); // tcp(7): forces out what is pending
    } catch (e) {
      if (!(e instanceof LibcError)) throw e; // a socket gone meanwhile: its next call says so
    }
  }

  /** True while bytes sent with MSG_MORE may sit in the socket waiting for more. */
  #heldBack = false;
  /** A TCP connection (TCP_NODELAY pushes what MSG_MORE held back; a Unix socket has neither). */
  readonly #tcp: boolean;

  /** True when a whole request frame of the protocol (not HTTP) waits in the input after this one. */
  #nextRequestHere(): boolean {
    if (this.#speaksHttp !== false || this.#inLength < FRAME_HEADER_SIZE) return false;
    const len = getFrameLength(this.#in, 0);
    return len > 0 && this.#inLength >= FRAME_HEADER_SIZE + len;
  }

  #writeTurn(): void {
    let budget = this.config.turnBudget;
    while (this.#state === "writing") {
      const head = this.#out[0];
      if (head === undefined) {
        this.#onResponseSent(); // may parse a pipelined request and start writing again
        continue;
      }
      if (head instanceof Deferred) {
        const settled = head.settle();
        if (settled === null) {
          this.#state = "waiting";
          return;
        }
        this.#out.splice(0, 1, ...settled);
        continue;
      }
      if (head instanceof ErrorPiece) {
        this.#errorCode = head.body.code;
        if (head.closes) {
          this.ok = false;
          this.#closeWhenSent = true;
        }
        releaseBodies(this.#out.splice(0, this.#out.length, encodeErrorResponse(head.body)));
        continue;
      }
      if (head instanceof Uint8Array) {
        const more = this.#out.length > 1 || (this.#tcp && !this.#closeWhenSent && this.#nextRequestHere())
          ? C.MSG_MORE
          : 0;
        const n = trySend(this.fd, head.subarray(this.#outOffset), more);
        if (n === WOULD_BLOCK) return;
        this.#heldBack = more !== 0 && this.#tcp;
        this.#progress(n);
        this.#outOffset += n;
        if (this.#outOffset < head.byteLength) continue;
        returnReplyBuffer(head); // sent whole: a pooled buffer can serve the next reply
      } else {
        let result;
        try {
          result = head.pump(this.fd, budget);
        } catch (e) {
          if (!(e instanceof FileShrankError)) throw e;
          if (!(head instanceof FramedFileBody || head instanceof CompressedFileBody)) {
            return this.#finish(false, `error (${e.message})`); // classic: no error frame
          }
          // The frame header promised more bytes than the file now has: fill the frame with zeros, then
          // say that the file changed, so the client discards what it got instead of publishing a mix.
          releaseBodies(this.#out.splice(
            0,
            this.#out.length,
            new ZeroPadding(head.frameLeft),
            new ErrorPiece({ code: ErrorCode.FileChanged, message: e.message }),
          ));
          continue;
        }
        this.#progress(result.sent);
        // A listing may spend turns walking without a byte to send: the server is working, not idle.
        if (result.status === "yield") this.#lastProgress = performance.now();
        budget -= result.sent;
        if (result.status !== "done") return; // "blocked": wait for EPOLLOUT; "yield": let others run
        head.release?.();
      }
      this.#out.shift();
      this.#outOffset = 0;
    }
  }

  #progress(n: number): void {
    if (n > 0) {
      this.bytesSent += n;
      this.#lastProgress = performance.now();
    }
  }

  #onResponseSent(): void {
    this.#closeFiles();
    if (this.#errorCode !== "") {
      this.#logRequest(`refused ${this.#errorCode}`);
      this.#errorCode = "";
    } else {
      this.#served++;
      this.#logRequest(this.#reply?.result ?? "ok");
    }
    const closeAfter = this.#reply?.closeAfter;
    this.#reply = null;
    if (closeAfter !== undefined) {
      this.#closeWhenSent = true;
      if (closeAfter === "linger") this.ok = false;
    }
    if (this.#closeWhenSent) {
      if (this.ok) return this.#finish(true, null);
      // Lingering close: the client may still be sending; closing now would reset the connection and
      // could destroy the error frame before the client reads it.
      shutdown(this.fd, C.SHUT_WR);
      this.#state = "lingering";
      this.#lingerStarted = this.#lastProgress = performance.now();
      this.#discard();
      return;
    }
    this.#requestLabel = "-";
    this.#state = "reading";
    this.#requestDeadline = performance.now() + this.config.idleTimeoutMs;
    this.#parse(); // a pipelined request may be buffered already
  }

  /** Reads and drops what the client sends after an error, within the bounds of LINGER_*. */
  #discard(): void {
    for (;;) {
      const n = tryRecv(this.fd, INPUT_SCRATCH);
      if (n === WOULD_BLOCK) return;
      if (n === 0) return this.#finish(false, null);
      this.#lingerBytes += n;
      this.#lastProgress = performance.now();
      if (this.#lingerBytes >= LINGER_BYTES || this.#lastProgress - this.#lingerStarted >= LINGER_TIME_MS) {
        return this.#finish(false, "closed after error (the client kept sending)");
      }
    }
  }

  #logRequest(result: string): void {
    const seconds = (performance.now() - this.#requestStarted) / 1000;
    const bytes = this.bytesSent - this.#requestBytesAtStart;
    if (result !== NO_REQUEST) workerMetrics.request(this.#op, metricResult(result), bytes, seconds);
    const log = this.config.log;
    if (log !== null && (!HEALTH_OPS.has(this.#op) || this.config.logHealth)) {
      log(formatRequestLine(this.config.logFormat, {
        time: timestamp(),
        id: this.#requestId === "" ? "-" : this.#requestId,
        peer: this.#peer,
        worker: this.config.workerId,
        request: this.#requestLabel,
        bytes,
        seconds,
        result,
      }));
    }
    this.#op = "none";
    this.#requestId = "";
    this.#requestBytesAtStart = this.bytesSent;
    this.#requestStarted = performance.now();
    this.#logged++;
  }

  /** Closes the socket and releases files; logs the connection if no request line said it all. */
  #finish(ok: boolean, result: string | null): void {
    if (this.#state === "closed") return;
    this.ok &&= ok;
    releaseBodies(this.#out);
    this.#out = [];
    this.#closeFiles();
    const wasResponding = this.#state === "writing" || this.#state === "waiting";
    this.#state = "closed";
    close(this.fd);
    if (result !== null && (wasResponding || this.#logged === 0)) this.#logRequest(result);
  }
}

/** Lets go of the bodies among `pieces` that the connection will not send (or has sent). */
function releaseBodies(pieces: readonly Piece[]): void {
  for (const piece of pieces) {
    if (piece instanceof Uint8Array || piece instanceof Deferred || piece instanceof ErrorPiece) continue;
    piece.release?.();
  }
}

let stampedAt = 0;
let stamp = "";

/** The time for a log line, formatted once per millisecond however many lines share it. */
function timestamp(): string {
  const now = Date.now();
  if (now !== stampedAt) {
    stampedAt = now;
    stamp = new Date(now).toISOString();
  }
  return stamp;
}

/** A client's sockaddr as the log shows it. */
function formatPeer(sockaddr: Uint8Array): string {
  const ep = decodeSockaddr(sockaddr);
  return ep ? formatEndpoint(ep) : "unknown";
}
