/**
 * The benchmark's load generator: many concurrent clients in one process, speaking either ferry's request
 * mode (framing.ts) or plain HTTP/1.1 GET with Content-Length, so that ferry and an HTTP server are driven
 * by the same client. One synchronous epoll loop over nonblocking sockets (the same libc binding as the
 * server); response bodies are discarded in the kernel with `recv(MSG_TRUNC)`, so the generator pays for
 * syscalls and framing, not for copying bytes it throws away. It prints one JSON line with its own CPU time,
 * so a report can show that it was not the bottleneck.
 *
 * Load mode (default): `--clients C` clients, each fetching `--path`s in turn, `--per-conn K` requests per
 * connection (1: a new connection per file; 0: one connection for everything), until each made
 * `--requests N` requests or `--seconds S` passed. The K-th request on a connection says it is the last
 * (ferry: the end frame goes with it; HTTP: `Connection: close`), so the server closes after answering.
 *
 * Hold mode (`--hold N`): N slow readers each ask for `--hold-path` with a tiny receive buffer and read a
 * few KiB every couple of seconds, so the server must keep N transfers open. Once all are held the
 * generator prints `{"event":"held",...}` on stderr, keeps them for `--hold-seconds`, then fetches `--path`
 * `--probes` times on new connections (the latency a newcomer sees), then opens `--burst B` connections at
 * once, each fetching `--path`, and counts how they were answered (served, BUSY, other).
 *
 * Usage: `deno run -A scripts/loadgen.ts --protocol ferry|http --target HOST:PORT --path P [...]`
 *
 * @module
 */

import process from "node:process";
import { parseArgs } from "node:util";
import { Epoll, EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT } from "../ffi/epoll.ts";
import {
  C,
  close,
  connect,
  errno,
  errnoName,
  getsockoptInt,
  LibcError,
  raiseOpenFileLimit,
  setsockoptInt,
  socket,
  sys,
  trySend,
  WOULD_BLOCK,
} from "../ffi/libc.ts";
import { encodeSockaddr } from "../ffi/sockaddr.ts";
import { parseEndpoint } from "../host_port.ts";
import {
  CLASSIC_CHUNK,
  decodeJson,
  encodeLastRequest,
  encodeRequest,
  type ErrorBody,
  FRAME_HEADER_SIZE,
  FrameType,
  getFrameLength,
  MAX_RESPONSE_FRAME,
  PROTOCOL_VERSION,
} from "../framing.ts";
import { type Histogram, newHistogram, record } from "./bench/histogram.ts";

/**
 * Which protocol the generator speaks: ferry's request mode, HTTP/1.1, or ferry's classic mode (the
 * seed's format: the server pushes a name frame, 1000-byte content frames and an end frame, then closes).
 */
export type Protocol = "ferry" | "http" | "classic";

/** What the generator prints (one JSON line on stdout) when it is done. */
export interface LoadResult {
  /** The protocol spoken. */
  protocol: Protocol;
  /** Concurrent clients in load mode. */
  clients: number;
  /** Responses received whole and without an error. */
  completed: number;
  /** Failed requests by cause: a ferry error code (`BUSY`), `HTTP 503`, an errno name, `closed early`... */
  errors: Record<string, number>;
  /** Body bytes received by completed requests. */
  bytes: number;
  /** Wall time from the first connect to the last response, in seconds. */
  seconds: number;
  /** Latency of completed requests (from connect when a connection was opened for it, else from send). */
  latency: Histogram;
  /** Time from the start until the slowest client finished its last request, in seconds. */
  slowestClientSeconds: number;
  /** The generator's own CPU time (all threads), in seconds. */
  cpu: { user: number; system: number };
  /** The generator's peak resident memory, in MiB. */
  peakRssMiB: number;
  /** Hold mode only. */
  hold?: HoldResult;
}

/** What hold mode found. */
export interface HoldResult {
  /** Slow readers asked for. */
  wanted: number;
  /** Slow readers whose transfer had started (a header arrived) when the hold began. */
  held: number;
  /** Slow readers still open at the end. */
  stillOpen: number;
  /** Slow readers that could not be set up or were cut, by cause. */
  errors: Record<string, number>;
  /** Seconds it took to open them all. */
  openSeconds: number;
  /** Latency of each probe fetch, in milliseconds (NaN for a failed one). */
  probesMs: number[];
  /** The burst: how its connections were answered. */
  burst: { served: number; busy: number; other: Record<string, number>; seconds: number };
}

const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");

/** Where a connection is in one exchange. */
const enum Phase {
  Connecting,
  Sending,
  /** ferry: a frame's 4-byte length. */
  Length,
  /** ferry: a frame's type byte. */
  Type,
  /** ferry: the JSON of a Header, Trailer or Error frame. */
  Control,
  /** Body bytes to discard (ferry Data payload, HTTP body). */
  Skip,
  /** http: the response head, up to the blank line. */
  Head,
}

const SCRATCH = new Uint8Array(256 * 1024);
/**
 * Most bytes read between a ferry response's data frames, where only the next frame's header is wanted:
 * a full read there would copy up to SCRATCH's size of the next frame's payload into this process once
 * per MiB frame, where an HTTP body is dropped in the kernel after its one head.
 */
const BETWEEN_FRAMES_READ = 4096;
/** Most bytes discarded by one recv(MSG_TRUNC). */
const DISCARD_MAX = 16 * 1024 * 1024;
/** Connections being opened at once, so that the listen backlog never overflows (SYN retries). */
const CONNECTS_IN_FLIGHT = 128;
const MSG_TRUNC = 0x20;
const TCP_MAXSEG = 2;

/** One connection and the exchange on it. */
class Conn {
  fd = -1;
  phase = Phase.Connecting;
  request: Uint8Array = new Uint8Array(0);
  sent = 0;
  /** Bytes of the current frame (ferry) or body (http) still to come. */
  left = 0;
  /** Small buffer for frame lengths, control frames and HTTP heads. */
  acc = new Uint8Array(512);
  accLen = 0;
  frameType = 0;
  /** The body size announced by the header, for checking. */
  announced = -1;
  body = 0;
  error: string | null = null;
  /** The server will close the connection after this response. */
  closes = false;
  /** When this exchange started (connect or send). */
  started = 0;
  /** Requests made on this connection. */
  onConn = 0;
  /** The epoll events registered for `fd` (0: not registered). */
  interest = 0;

  reset(): void {
    this.frameType = 0;
    this.left = 0;
    this.accLen = 0;
    this.announced = -1;
    this.body = 0;
    this.error = null;
  }

  keep(bytes: Uint8Array): void {
    if (this.accLen + bytes.byteLength > this.acc.byteLength) {
      const bigger = new Uint8Array(Math.max(this.acc.byteLength * 2, this.accLen + bytes.byteLength));
      bigger.set(this.acc.subarray(0, this.accLen));
      this.acc = bigger;
    }
    this.acc.set(bytes, this.accLen);
    this.accLen += bytes.byteLength;
  }
}

/** What a connection's readiness led to. */
type Outcome = "wait" | "done" | "failed";

/** Opens `c` for `path`; a connect that fails at once is a failed outcome with its errno on `c`. */
function openOrFail(speaker: Speaker, c: Conn, path: string): Outcome {
  try {
    return speaker.open(c, path);
  } catch (e) {
    c.error = e instanceof LibcError ? e.errnoName : String(e);
    return "failed";
  }
}

/** Speaks one protocol over nonblocking connections: open, send, read and parse one response. */
class Speaker {
  readonly #addr: Uint8Array;
  readonly #family: number;
  readonly #requests = new Map<string, Uint8Array>();
  readonly #lastRequests = new Map<string, Uint8Array>();

  /**
   * @param protocol what to speak
   * @param target HOST:PORT
   * @param epoll the generator's epoll
   * @param requestsPerConn requests per connection (0: no limit): the last one on a connection says so
   */
  constructor(
    readonly protocol: Protocol,
    target: string,
    readonly epoll: Epoll,
    readonly requestsPerConn = 0,
  ) {
    const ep = parseEndpoint(target);
    this.#addr = encodeSockaddr(ep);
    this.#family = ep.family;
    this.host = target;
  }

  readonly host: string;

  /**
   * The request for `path`. The last on its connection says so, as a client with nothing more to ask
   * would: ferry's end frame goes out with it, HTTP adds `Connection: close`. Either server then closes
   * after answering instead of waiting for the client to.
   */
  requestFor(path: string, last: boolean): Uint8Array {
    const cache = last ? this.#lastRequests : this.#requests;
    let r = cache.get(path);
    if (r === undefined) {
      const request = { v: PROTOCOL_VERSION, op: "get" as const, path };
      const close = last ? "Connection: close\r\n" : "";
      r = this.protocol === "ferry"
        ? (last ? encodeLastRequest(request) : encodeRequest(request))
        : this.protocol === "http"
        ? encoder.encode(`GET /${path} HTTP/1.1\r\nHost: ${this.host}\r\n${close}\r\n`)
        : new Uint8Array(0);
      cache.set(path, r);
    }
    return r;
  }

  /** True if the request about to go out on `c` is its connection's last. */
  #isLast(c: Conn): boolean {
    return this.requestsPerConn > 0 && c.onConn + 1 >= this.requestsPerConn;
  }

  /**
   * Opens a nonblocking connection and starts the exchange. A slow reader (`slow`) gets a tiny receive
   * buffer and an Ethernet-sized MSS, so that loopback's 64 KiB segments do not let the server's kernel
   * queue megabytes per connection, which no real network path would.
   */
  open(c: Conn, path: string, slow = false): Outcome {
    c.fd = socket(this.#family, C.SOCK_STREAM | C.SOCK_NONBLOCK | C.SOCK_CLOEXEC);
    c.onConn = 0;
    c.closes = false;
    if (slow) {
      setsockoptInt(c.fd, C.SOL_SOCKET, C.SO_RCVBUF, SLOW_RCVBUF);
      setsockoptInt(c.fd, C.IPPROTO_TCP, TCP_MAXSEG, SLOW_MSS);
    }
    setsockoptInt(c.fd, C.IPPROTO_TCP, C.TCP_NODELAY, 1);
    c.reset();
    c.request = this.requestFor(path, this.#isLast(c));
    c.sent = 0;
    c.started = performance.now();
    c.interest = 0;
    let connected;
    try {
      connected = connect(c.fd, this.#addr);
    } catch (e) {
      c.error = e instanceof LibcError ? e.errnoName : String(e);
      return "failed";
    }
    c.phase = Phase.Connecting;
    if (connected) return this.#send(c);
    this.want(c, EPOLLOUT);
    return "wait";
  }

  /** Registers or changes the epoll interest of `c` (one syscall, only when it changes). */
  want(c: Conn, events: number): void {
    if (c.interest === events) return;
    if (c.interest === 0) this.epoll.add(c.fd, events);
    else this.epoll.modify(c.fd, events);
    c.interest = events;
  }

  /** Stops watching `c` (its reads are driven by a timer instead). */
  unwatch(c: Conn): void {
    if (c.interest !== 0) this.epoll.remove(c.fd);
    c.interest = 0;
  }

  /** Sends the next request on an open connection. */
  again(c: Conn, path: string): Outcome {
    c.reset();
    c.request = this.requestFor(path, this.#isLast(c));
    c.sent = 0;
    c.started = performance.now();
    return this.#send(c);
  }

  /** Handles epoll readiness `events` for `c`; reads at most `budget` bytes. */
  onReady(c: Conn, events: number, discard = true, budget = Infinity): Outcome {
    if (c.phase === Phase.Connecting) {
      const err = getsockoptInt(c.fd, C.SOL_SOCKET, C.SO_ERROR);
      if (err !== 0) {
        c.error = errnoName(err);
        return "failed";
      }
      if (events & (EPOLLERR | EPOLLHUP) && !(events & EPOLLOUT)) {
        c.error = "connect failed";
        return "failed";
      }
      return this.#send(c);
    }
    if (c.phase === Phase.Sending) return this.#send(c);
    return this.read(c, discard, budget);
  }

  #send(c: Conn): Outcome {
    c.phase = Phase.Sending;
    while (c.sent < c.request.byteLength) {
      let n;
      try {
        n = trySend(c.fd, c.request.subarray(c.sent));
      } catch (e) {
        c.error = e instanceof LibcError ? e.errnoName : String(e);
        return "failed";
      }
      if (n === WOULD_BLOCK) {
        this.want(c, EPOLLOUT);
        return "wait";
      }
      c.sent += n;
    }
    c.onConn++;
    c.phase = this.protocol === "http" ? Phase.Head : Phase.Length;
    this.want(c, EPOLLIN);
    return "wait";
  }

  /**
   * Reads what is there and parses it; `discard` lets body bytes be dropped in the kernel. With `budget`,
   * reads at most that many bytes (a slow reader).
   */
  read(c: Conn, discard = true, budget = Infinity): Outcome {
    // Classic frames carry 1000 bytes: dropping them one recv at a time would cost a syscall per frame.
    if (this.protocol === "classic") discard = false;
    while (budget > 0) {
      let n: number;
      if (c.phase === Phase.Skip && discard) {
        n = recvRaw(c.fd, SCRATCH, Math.min(c.left, DISCARD_MAX, budget), MSG_TRUNC);
      } else {
        const most = discard && c.body > 0 ? BETWEEN_FRAMES_READ : SCRATCH.byteLength;
        n = recvRaw(c.fd, SCRATCH, Math.min(most, budget), 0);
      }
      if (n === WOULD_BLOCK) return "wait";
      if (n < 0) {
        c.error = errnoName(-n);
        return "failed";
      }
      if (n === 0) {
        c.error = c.error ?? "closed early";
        return "failed";
      }
      budget -= n;
      const outcome = c.phase === Phase.Skip && discard
        ? this.#skipped(c, n)
        : this.protocol === "ferry"
        ? this.#feedFerry(c, SCRATCH.subarray(0, n))
        : this.protocol === "classic"
        ? this.#feedClassic(c, SCRATCH.subarray(0, n))
        : this.#feedHttp(c, SCRATCH.subarray(0, n));
      if (outcome !== "wait") return outcome;
    }
    return "wait";
  }

  /** Classic mode: the name frame, content frames, then an end frame (no type bytes). */
  #feedClassic(c: Conn, bytes: Uint8Array): Outcome {
    let i = 0;
    const n = bytes.byteLength;
    while (i < n) {
      if (c.phase === Phase.Skip) {
        const take = Math.min(c.left, n - i);
        i += take;
        c.left -= take;
        if (c.frameType !== 0) c.body += take; // frameType 0 marks the name frame
        if (c.left === 0) {
          c.phase = Phase.Length;
          c.frameType = 1;
        }
        continue;
      }
      // A frame length; the fast path reads it in place when all 4 bytes are here.
      let len: number;
      if (c.accLen === 0 && n - i >= FRAME_HEADER_SIZE) {
        len = bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24);
        i += FRAME_HEADER_SIZE;
      } else {
        const take = Math.min(FRAME_HEADER_SIZE - c.accLen, n - i);
        c.keep(bytes.subarray(i, i + take));
        i += take;
        if (c.accLen < FRAME_HEADER_SIZE) break;
        len = getFrameLength(c.acc, 0);
        c.accLen = 0;
      }
      if (len === 0) {
        if (c.frameType === 0) c.error = "empty name frame";
        return c.error === null ? "done" : "failed";
      }
      if (len < 0 || len > CLASSIC_CHUNK) {
        c.error = `bad classic frame length ${len}`;
        return "failed";
      }
      c.left = len;
      c.phase = Phase.Skip;
    }
    return "wait";
  }

  #skipped(c: Conn, n: number): Outcome {
    c.left -= n;
    c.body += n;
    if (c.left > 0) return "wait";
    if (this.protocol === "ferry") {
      c.phase = Phase.Length;
      return "wait";
    }
    return this.#httpDone(c);
  }

  #feedFerry(c: Conn, bytes: Uint8Array): Outcome {
    let i = 0;
    while (i < bytes.byteLength) {
      switch (c.phase) {
        case Phase.Length: {
          const take = Math.min(FRAME_HEADER_SIZE - c.accLen, bytes.byteLength - i);
          c.keep(bytes.subarray(i, i + take));
          i += take;
          if (c.accLen < FRAME_HEADER_SIZE) break;
          const len = getFrameLength(c.acc, 0);
          c.accLen = 0;
          if (len === 0) {
            if (i < bytes.byteLength) c.error ??= "bytes after the end frame";
            if (c.error !== null) return "failed";
            if (c.announced >= 0 && c.body !== c.announced) {
              c.error = `size mismatch (${c.body} of ${c.announced})`;
              return "failed";
            }
            return "done";
          }
          if (len < 0 || len > MAX_RESPONSE_FRAME) {
            c.error = `bad frame length ${len}`;
            return "failed";
          }
          c.left = len;
          c.phase = Phase.Type;
          break;
        }
        case Phase.Type:
          c.frameType = bytes[i++];
          c.left--;
          if (c.frameType === FrameType.Data) c.phase = c.left > 0 ? Phase.Skip : Phase.Length;
          else if (
            c.frameType === FrameType.Header || c.frameType === FrameType.Trailer ||
            c.frameType === FrameType.Error
          ) {
            c.phase = Phase.Control;
            if (c.left === 0) this.#control(c);
          } else {
            c.error = `unexpected frame type ${c.frameType}`;
            return "failed";
          }
          break;
        case Phase.Control: {
          const take = Math.min(c.left, bytes.byteLength - i);
          c.keep(bytes.subarray(i, i + take));
          i += take;
          c.left -= take;
          if (c.left === 0) this.#control(c);
          break;
        }
        case Phase.Skip: {
          const take = Math.min(c.left, bytes.byteLength - i);
          i += take;
          c.left -= take;
          c.body += take;
          if (c.left === 0) c.phase = Phase.Length;
          break;
        }
        default:
          c.error = "bytes while not reading";
          return "failed";
      }
    }
    return "wait";
  }

  #control(c: Conn): void {
    const json = c.acc.subarray(0, c.accLen);
    c.accLen = 0;
    c.phase = Phase.Length;
    if (c.frameType === FrameType.Trailer) return;
    let body: unknown;
    try {
      body = decodeJson(json);
    } catch {
      c.error = "bad JSON";
      return;
    }
    if (c.frameType === FrameType.Error) {
      c.error = (body as ErrorBody).code ?? "error frame";
      c.closes = true;
    } else {
      const size = (body as { size?: number; offset?: number }).size;
      const offset = (body as { offset?: number }).offset ?? 0;
      if (typeof size === "number") c.announced = size - offset;
    }
  }

  #feedHttp(c: Conn, bytes: Uint8Array): Outcome {
    if (c.phase === Phase.Skip) return this.#skipped(c, Math.min(c.left, bytes.byteLength));
    if (c.phase !== Phase.Head) {
      c.error = "bytes while not reading";
      return "failed";
    }
    const from = Math.max(0, c.accLen - 3);
    c.keep(bytes);
    let end = -1;
    for (let i = from; i + 3 < c.accLen; i++) {
      if (c.acc[i] === 13 && c.acc[i + 1] === 10 && c.acc[i + 2] === 13 && c.acc[i + 3] === 10) {
        end = i + 4;
        break;
      }
    }
    if (end < 0) {
      if (c.accLen > 64 * 1024) {
        c.error = "response head too long";
        return "failed";
      }
      return "wait";
    }
    const head = latin1.decode(c.acc.subarray(0, end));
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? NaN);
    const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    if (/\r\nconnection:\s*close/i.test(head)) c.closes = true;
    if (status !== 200) c.error = Number.isNaN(status) ? "bad status line" : `HTTP ${status}`;
    if (length === null) {
      c.error ??= "no Content-Length";
      return "failed";
    }
    c.left = Number(length[1]);
    c.announced = c.left;
    const rest = c.accLen - end;
    c.accLen = 0;
    c.phase = Phase.Skip;
    if (c.left === 0) return this.#httpDone(c);
    if (rest > 0) {
      const take = Math.min(rest, c.left);
      return this.#skipped(c, take);
    }
    return "wait";
  }

  #httpDone(c: Conn): Outcome {
    c.phase = Phase.Head;
    return c.error === null ? "done" : "failed";
  }

  /** Closes the connection (and forgets it in epoll). */
  shut(c: Conn): void {
    if (c.fd < 0) return;
    close(c.fd); // closing removes it from epoll: nobody else holds it
    c.fd = -1;
    c.interest = 0;
  }
}

/** recv(2) with an explicit length (MSG_TRUNC discards without using the buffer): WOULD_BLOCK, n, or -errno. */
function recvRaw(fd: number, buf: Uint8Array, len: number, flags: number): number {
  for (;;) {
    const r = Number(sys.recv(fd, buf, BigInt(len), flags | C.MSG_DONTWAIT));
    if (r >= 0) return r;
    const e = errno();
    if (e === C.EINTR) continue;
    if (e === C.EAGAIN) return WOULD_BLOCK;
    return -e;
  }
}

function count(map: Record<string, number>, key: string): void {
  map[key] = (map[key] ?? 0) + 1;
}

/** CPU time used since `since` (a `process.cpuUsage()` reading), in seconds. */
function cpuSeconds(since: NodeJS.CpuUsage): { user: number; system: number } {
  const u = process.cpuUsage(since);
  return { user: u.user / 1e6, system: u.system / 1e6 };
}

function peakRssMiB(): number {
  const m = /VmHWM:\s*(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** Options of the load mode. */
export interface LoadOptions {
  /** Protocol to speak. */
  protocol: Protocol;
  /** `HOST:PORT`. */
  target: string;
  /** Paths fetched in turn (each client starts at a different one). */
  paths: string[];
  /** Concurrent clients. */
  clients: number;
  /** Requests per connection; 0 = unlimited. */
  perConn: number;
  /** Requests per client (Infinity: until `seconds`). */
  requests: number;
  /** Time limit in seconds (Infinity: until `requests`). */
  seconds: number;
}

/** Runs load mode and returns its result. */
export function runLoad(o: LoadOptions): LoadResult {
  const cpu0 = process.cpuUsage();
  const epoll = new Epoll(4096);
  const speaker = new Speaker(o.protocol, o.target, epoll, o.perConn);
  const latency = newHistogram();
  const errors: Record<string, number> = {};
  const conns = Array.from({ length: o.clients }, () => new Conn());
  const made = new Array<number>(o.clients).fill(0);
  const finished = new Array<number>(o.clients).fill(0);
  const byFd = new Map<number, number>();
  let completed = 0;
  let bytes = 0;
  let last = 0;
  const start = performance.now();
  const deadline = start + o.seconds * 1000;
  let active = o.clients;
  let connecting = 0;
  const waitingToOpen: number[] = [];
  let nextPath = 0;

  const pathFor = (): string => o.paths[nextPath++ % o.paths.length];
  const wantsMore = (i: number) => made[i] < o.requests && performance.now() < deadline;

  const settle = (i: number, outcome: Outcome): void => {
    const c = conns[i];
    while (outcome !== "wait") {
      const now = performance.now();
      if (outcome === "done") {
        completed++;
        bytes += c.body;
        record(latency, now - c.started);
        last = now;
      } else {
        count(errors, c.error ?? "failed");
        last = now;
      }
      made[i]++;
      const reuse = outcome === "done" && !c.closes && o.protocol !== "classic" &&
        (o.perConn === 0 || c.onConn < o.perConn);
      if (!wantsMore(i)) {
        if (c.fd >= 0) byFd.delete(c.fd);
        speaker.shut(c);
        finished[i] = now;
        active--;
        return;
      }
      if (reuse) {
        outcome = speaker.again(c, pathFor());
        continue;
      }
      if (c.fd >= 0) byFd.delete(c.fd);
      speaker.shut(c);
      waitingToOpen.push(i);
      return;
    }
  };

  const openNext = () => {
    while (waitingToOpen.length > 0 && connecting < CONNECTS_IN_FLIGHT) {
      const i = waitingToOpen.shift()!;
      const c = conns[i];
      let outcome: Outcome;
      try {
        outcome = speaker.open(c, pathFor());
      } catch (e) {
        c.error = e instanceof LibcError ? e.errnoName : String(e);
        outcome = "failed";
      }
      if (c.fd >= 0) byFd.set(c.fd, i);
      if (c.phase === Phase.Connecting && outcome === "wait") connecting++;
      settle(i, outcome);
    }
  };

  for (let i = 0; i < o.clients; i++) {
    nextPath = i; // each client starts at another file
    waitingToOpen.push(i);
  }
  nextPath = 0;
  openNext();
  while (active > 0) {
    const n = epoll.wait(100);
    for (let k = 0; k < n; k++) {
      const i = byFd.get(epoll.fdAt(k));
      if (i === undefined) continue;
      const c = conns[i];
      const wasConnecting = c.phase === Phase.Connecting;
      let outcome: Outcome;
      try {
        outcome = speaker.onReady(c, epoll.eventsAt(k));
      } catch (e) {
        c.error = e instanceof LibcError ? e.errnoName : String(e);
        outcome = "failed";
      }
      if (wasConnecting && c.phase !== Phase.Connecting) connecting--;
      else if (wasConnecting && outcome === "failed") connecting--;
      settle(i, outcome);
    }
    openNext();
  }
  epoll.close();
  return {
    protocol: o.protocol,
    clients: o.clients,
    completed,
    errors,
    bytes,
    seconds: ((last || performance.now()) - start) / 1000,
    latency,
    slowestClientSeconds: Math.max(0, ...finished.map((t) => (t - start) / 1000)),
    cpu: cpuSeconds(cpu0),
    peakRssMiB: peakRssMiB(),
  };
}

/** Options of hold mode. */
export interface HoldOptions {
  /** Protocol to speak. */
  protocol: Protocol;
  /** `HOST:PORT`. */
  target: string;
  /** Slow readers to hold. */
  hold: number;
  /** The large file the slow readers ask for. */
  holdPath: string;
  /** Seconds to keep them after all are held, before probing. */
  holdSeconds: number;
  /** The small file of the probes and the burst. */
  path: string;
  /** Probe fetches, one after the other. */
  probes: number;
  /** Connections opened at once after the probes. */
  burst: number;
}

/** Receive buffer of a slow reader: the kernel doubles it; the window stays a few KiB. */
const SLOW_RCVBUF = 4096;
/** MSS of a slow reader: Ethernet's. */
const SLOW_MSS = 1448;
/** Each slow reader reads this much per visit... */
const SLOW_READ_BYTES = 8192;
/** ...and is visited this often. */
const SLOW_VISIT_MS = 2000;
/** The tick of the slow readers' round. */
const SLOW_TICK_MS = 100;

/** Runs hold mode and returns its result. */
export function runHold(o: HoldOptions): LoadResult {
  const cpu0 = process.cpuUsage();
  const epoll = new Epoll(4096);
  const speaker = new Speaker(o.protocol, o.target, epoll);
  const holdErrors: Record<string, number> = {};
  const slow: Conn[] = [];
  const byFd = new Map<number, Conn>();
  const started = new Set<Conn>(); // header received: the transfer is under way
  const latency = newHistogram();
  const start = performance.now();
  let connecting = 0;
  let opened = 0;
  let tickAt = performance.now() + SLOW_TICK_MS;
  let round = 0;

  const drop = (c: Conn, why: string) => {
    count(holdErrors, why);
    byFd.delete(c.fd);
    started.delete(c);
    speaker.shut(c);
  };

  /** Reads a little from a slice of the held connections; they are not in epoll once started. */
  const tick = () => {
    const now = performance.now();
    if (now < tickAt) return;
    tickAt = now + SLOW_TICK_MS;
    const slices = SLOW_VISIT_MS / SLOW_TICK_MS;
    const slice = round++ % slices;
    for (let i = slice; i < slow.length; i += slices) {
      const c = slow[i];
      if (c.fd < 0 || !started.has(c)) continue;
      const outcome = speaker.read(c, true, SLOW_READ_BYTES);
      if (outcome !== "wait") drop(c, outcome === "done" ? "finished (file too small to hold)" : c.error!);
    }
  };

  /** Handles epoll events for slow readers being set up and for `extra` connections (probes, burst). */
  const poll = (timeoutMs: number, extra: Map<number, (events: number) => void>) => {
    const n = epoll.wait(Math.max(0, Math.ceil(Math.min(timeoutMs, tickAt - performance.now()))));
    for (let k = 0; k < n; k++) {
      const fd = epoll.fdAt(k);
      const other = extra.get(fd);
      if (other) {
        other(epoll.eventsAt(k));
        continue;
      }
      const c = byFd.get(fd);
      if (c === undefined) continue;
      const wasConnecting = c.phase === Phase.Connecting;
      // Until the header is in, read normally (to see BUSY or an error); afterwards the tick reads.
      const outcome = speaker.onReady(c, epoll.eventsAt(k), false, SLOW_READ_BYTES);
      if (wasConnecting && c.phase !== Phase.Connecting) connecting--;
      if (outcome !== "wait") {
        if (wasConnecting && c.phase === Phase.Connecting) connecting--;
        drop(c, outcome === "done" ? "finished (file too small to hold)" : c.error!);
      } else if (!started.has(c) && c.phase !== Phase.Connecting && c.phase !== Phase.Sending) {
        if (c.announced >= 0 || c.body > 0 || (o.protocol === "http" && c.phase === Phase.Skip)) {
          started.add(c);
          speaker.unwatch(c);
        }
      }
    }
    tick();
  };

  // 1. Open the slow readers, a bounded number of connects at a time.
  const setupDeadline = start + 120_000;
  while (performance.now() < setupDeadline) {
    while (opened < o.hold && connecting < CONNECTS_IN_FLIGHT) {
      const c = new Conn();
      slow.push(c);
      opened++;
      let outcome: Outcome;
      try {
        outcome = speaker.open(c, o.holdPath, true);
      } catch (e) {
        c.error = e instanceof LibcError ? e.errnoName : String(e);
        outcome = "failed";
      }
      if (outcome === "failed") {
        count(holdErrors, c.error ?? "failed");
        speaker.shut(c);
        continue;
      }
      byFd.set(c.fd, c);
      if (c.phase === Phase.Connecting) connecting++;
    }
    if (opened >= o.hold && byFd.size === started.size) break;
    poll(50, new Map());
  }
  const openSeconds = (performance.now() - start) / 1000;
  const held = started.size;
  console.error(JSON.stringify({ event: "held", held, wanted: o.hold, errors: holdErrors, openSeconds }));

  // 2. Keep them.
  const holdUntil = performance.now() + o.holdSeconds * 1000;
  while (performance.now() < holdUntil) poll(holdUntil - performance.now(), new Map());

  // 3. Probes: one small fetch at a time on a new connection.
  const probesMs: number[] = [];
  for (let p = 0; p < o.probes; p++) {
    const c = new Conn();
    let outcome = openOrFail(speaker, c, o.path);
    const t0 = c.started;
    const extra = new Map<number, (events: number) => void>();
    extra.set(c.fd, (events) => outcome = speaker.onReady(c, events));
    const giveUp = performance.now() + 30_000;
    while (outcome === "wait" && performance.now() < giveUp) poll(50, extra);
    if (outcome === "done") {
      const ms = performance.now() - t0;
      probesMs.push(ms);
      record(latency, ms);
    } else {
      probesMs.push(NaN);
      count(holdErrors, `probe: ${c.error ?? "timeout"}`);
    }
    speaker.shut(c);
  }

  // 4. Burst: many new connections at once; count how each is answered.
  const burst = { served: 0, busy: 0, other: {} as Record<string, number>, seconds: 0 };
  const burstStart = performance.now();
  const extra = new Map<number, (events: number) => void>();
  const settleBurst = (c: Conn, outcome: Outcome) => {
    if (outcome === "wait") return;
    if (outcome === "done") burst.served++;
    else if (c.error === "BUSY") burst.busy++;
    else count(burst.other, c.error ?? "failed");
    extra.delete(c.fd);
    speaker.shut(c);
  };
  for (let b = 0; b < o.burst; b++) {
    const c = new Conn();
    const outcome = openOrFail(speaker, c, o.path);
    if (outcome === "wait") extra.set(c.fd, (events) => settleBurst(c, speaker.onReady(c, events)));
    else settleBurst(c, outcome);
  }
  const burstDeadline = performance.now() + 30_000;
  while (extra.size > 0 && performance.now() < burstDeadline) poll(50, extra);
  for (const fd of extra.keys()) {
    count(burst.other, "no answer within 30s");
    close(fd);
  }
  burst.seconds = (performance.now() - burstStart) / 1000;

  const stillOpen = slow.filter((c) => c.fd >= 0).length;
  for (const c of slow) speaker.shut(c);
  epoll.close();
  return {
    protocol: o.protocol,
    clients: o.hold,
    completed: latency.count,
    errors: {},
    bytes: 0,
    seconds: (performance.now() - start) / 1000,
    latency,
    slowestClientSeconds: 0,
    cpu: cpuSeconds(cpu0),
    peakRssMiB: peakRssMiB(),
    hold: { wanted: o.hold, held, stillOpen, errors: holdErrors, openSeconds, probesMs, burst },
  };
}

/** A command-line mistake: printed as one line after "loadgen: ", exit code 2. */
class UsageError extends Error {}

function main(argv: string[]): void {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        protocol: { type: "string" },
        target: { type: "string" },
        path: { type: "string", multiple: true },
        clients: { type: "string" },
        "per-conn": { type: "string" },
        requests: { type: "string" },
        seconds: { type: "string" },
        hold: { type: "string" },
        "hold-path": { type: "string" },
        "hold-seconds": { type: "string" },
        probes: { type: "string" },
        burst: { type: "string" },
      },
    });
  } catch (e) {
    // node:util's messages can run over several lines: the first says what was wrong.
    throw new UsageError((e as Error).message.split("\n")[0]);
  }
  const v = parsed.values;
  const protocol = v.protocol;
  if (protocol !== "ferry" && protocol !== "http" && protocol !== "classic") {
    throw new UsageError("--protocol must be ferry, http or classic");
  }
  if (v.target === undefined) throw new UsageError("give --target HOST:PORT");
  if (!v.path?.length) {
    if (protocol !== "classic") throw new UsageError("give --path");
    v.path = ["(pushed)"];
  }
  const num = (name: string, text: string | undefined, fallback: number) => {
    if (text === undefined) return fallback;
    const n = Number(text);
    if (!(n >= 0)) throw new UsageError(`--${name}: '${text}' is not a number of 0 or more`);
    return n;
  };
  raiseOpenFileLimit();
  const result = v.hold !== undefined
    ? runHold({
      protocol,
      target: v.target,
      hold: num("hold", v.hold, 0),
      holdPath: v["hold-path"] ?? v.path[0],
      holdSeconds: num("hold-seconds", v["hold-seconds"], 2),
      path: v.path[0],
      probes: num("probes", v.probes, 5),
      burst: num("burst", v.burst, 0),
    })
    : runLoad({
      protocol,
      target: v.target,
      paths: v.path,
      clients: num("clients", v.clients, 1),
      perConn: num("per-conn", v["per-conn"], 1),
      requests: num("requests", v.requests, Infinity),
      seconds: num("seconds", v.seconds, Infinity),
    });
  console.log(JSON.stringify(result));
}

if (import.meta.main) {
  try {
    main(Deno.args);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`loadgen: ${e.message}`);
    Deno.exit(2);
  }
}
