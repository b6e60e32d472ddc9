/**
 * The server's command line: its flags, their defaults and checks, and the help text.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ServeMode } from "../channel/messages.ts";
import type { Endpoint } from "../ffi/sockaddr.ts";
import { parseEndpoint } from "../host_port.ts";
import { readTokensFile, TokenFileError } from "../tokens.ts";
import { type Cidr, parseCidr } from "./cidr.ts";
import type { AdmissionRules } from "./admission.ts";
import { LOG_FORMATS, type LogFormat } from "../channel/log_format.ts";
import { LISTING_MEMO_ENTRIES } from "../channel/worker_args.ts";

/** Everything the server's command line decides. */
export interface ServerOptions {
  /** Listeners and how each one serves. */
  listen: { endpoint: Endpoint; mode: number }[];
  /** Served directory for request mode, or null. */
  root: string | null;
  /** Pushed file for classic mode, or null. */
  push: string | null;
  /** Worker processes. @default navigator.hardwareConcurrency */
  workers: number;
  /** Connections one worker serves at once. @default 64 */
  connsPerWorker: number;
  /** Connections that may wait when all workers are full. @default 1024 */
  queue: number;
  /** Seconds that transfers in flight get to finish on SIGTERM/SIGINT. @default 30 */
  grace: number;
  /** Seconds without progress after which a connection is closed. @default 30 */
  idleTimeout: number;
  /** listen(2) backlog. @default 4096 (the kernel caps it at net.core.somaxconn) */
  backlog: number;
  /** Where the one-line-per-request log goes: "-" for stderr, a file appended to, or null for nowhere. */
  requestLog: string | null;
  /** Bytes of small replies each worker keeps in memory; 0 turns the cache off. @default 8 MiB */
  replyCacheBytes: number;
  /** Listed files' entries each worker remembers (and twice as many folders' names); 0 for none. @default 250,000 */
  listingMemoEntries: number;
  /** Answer HTTP/1.1 GET and HEAD on request-mode listeners (false with `--no-http`). @default true */
  http: boolean;
  /** The tokens file (`--tokens`), checked; null when every client may read everything. */
  tokens: string | null;
  /** --allow, --deny, --proxy-protocol and --max-conns-per-ip (none by default). */
  admission: AdmissionRules;
  /** Where the master writes its pid once it serves, or null. */
  pidFile: string | null;
  /** Whether counters are kept (a shared memory region); false with `--no-metrics`. @default true */
  metrics: boolean;
  /** Where `GET /metrics` is answered, or null for no listener of its own. */
  metricsListen: Endpoint | null;
  /** How log lines are written: "text" (key=value) or "json" (one object per line). @default "text" */
  logFormat: LogFormat;
  /** Whether `ping` requests are logged too. @default false */
  logHealth: boolean;
}

/** The text `--help` prints. */
export const HELP = `ferry server: serve files to many clients from a pool of worker processes.

Usage:
  server --listen HOST:PORT --root DIR      request mode: clients ask for files under DIR
  server --listen HOST:PORT --push FILE     classic mode: every connection receives FILE (seed protocol)
  server --listen A --root DIR --push-listen B --push FILE    both, on different listeners

Options:
  --listen HOST:PORT       listen here (repeatable); IPv6 as [::1]:PORT; port 0 picks a free port.
                           Serves request mode if --root is given, else classic mode.
  --push-listen HOST:PORT  listen here in classic mode (repeatable; with --root and --push)
  --root DIR               directory served in request mode
  --push FILE              file pushed in classic mode
  --workers N              worker processes (default: number of CPUs)
  --conns-per-worker C     connections a worker answers at once (default 64; 1 = the seed's behaviour);
                           those waiting for their request take no slot
  --queue Q                connections that may wait when every worker is full (default 1024);
                           past that, new connections get BUSY (classic mode: closed and logged)
  --grace SECONDS          on SIGTERM/SIGINT, time given to transfers in flight (default 30)
  --idle-timeout SECONDS   a request must arrive whole within this long, and a client must read its
                           answer without stopping this long, else the connection closes (default 30)
  --backlog N              listen(2) backlog (default 4096; the kernel caps it at net.core.somaxconn)
  --request-log WHERE      the one line per request: - for stderr (default), a FILE appended to by
                           every worker, or off; the server's own lines always go to stderr
  --reply-cache MIB        memory per worker for small replies answered from memory (default 8);
                           0 opens every file for every request (e.g. a root on NFS, where a stat may
                           come from the attribute cache while an open revalidates)
  --listing-memo ENTRIES   listed files each worker remembers for the next listing of the tree, and
                           twice as many folders' names (default 250000; about 40 MB for 100,000 files);
                           0 reads every folder and builds every entry again on every listing
  --no-http                speak only ferry's protocol on request-mode listeners (by default an
                           HTTP/1.1 GET or HEAD on the same port is answered too)
  --tokens FILE            only clients with a token of FILE may read, each within its scopes; one
                           'NAME SECRET SCOPE...' a line (SCOPE: a path, or * for all); FILE must be
                           open to its owner only. Request mode only: not with classic listeners

Admission (checked by the master right after accept, before a worker sees a byte; all global):
  --deny CIDR              never serve these addresses (repeatable; IPv4 or IPv6; a bare address is
                           one host); deny wins over --allow. A refused client's connection is closed.
  --allow CIDR             serve only these addresses (repeatable); with none given, all are allowed
  --max-conns-per-ip N     connections open at once per client address; one more is answered BUSY
                           (default: no limit)
  --proxy-protocol CIDR    peers here are proxies (e.g. HAProxy with send-proxy-v2) that must open with a
                           PROXY header, v1 or v2 (repeatable). The client it names is then the address
                           logged, allowed and limited. A PROXY header from any other peer is refused.
  --pid-file FILE          write the master's pid to FILE once it serves; removed when it exits
  --version                print the version and exit
  --metrics-listen HOST:PORT  answer GET /metrics (Prometheus' text format) on this address
  --no-metrics             keep no counters (and refuse --metrics-listen)
  --log-format text|json   log lines as key=value text (default) or one JSON object per line
  --log-health             log ping requests too (by default they are counted, not logged)
  -h, --help               show this help

Signals to the master: TERM or INT stops gracefully (twice: at once); HUP reloads (reopens the request
log and --root, re-reads the files named on the command line); USR2 upgrades: starts a new master from
the program on disk, hands it the listening sockets, and drains this one within --grace.
Listening sockets can be inherited from systemd (LISTEN_FDS; LISTEN_FDNAMES 'request' or 'classic'),
and then replace --listen and --push-listen.

The listening addresses are printed on stderr once the workers are ready.`;

/** A usage error: the message is printed after "ferry server: " with exit code 2. */
export class UsageError extends Error {}

function positiveNumber(name: string, text: string | undefined, fallback: number, integer = true): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) {
    throw new UsageError(`--${name}: '${text}' is not a positive ${integer ? "integer" : "number"}`);
  }
  return n;
}

/**
 * Parses and checks the server's command line. Throws UsageError with a one-line reason. With
 * `inheritedListeners` (sockets from systemd or an upgrade), no --listen is needed.
 */
export function parseServerArgs(argv: string[], inheritedListeners = 0): ServerOptions | "help" | "version" {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        listen: { type: "string", multiple: true },
        "push-listen": { type: "string", multiple: true },
        root: { type: "string" },
        push: { type: "string" },
        workers: { type: "string" },
        "conns-per-worker": { type: "string" },
        queue: { type: "string" },
        grace: { type: "string" },
        "idle-timeout": { type: "string" },
        backlog: { type: "string" },
        "request-log": { type: "string" },
        "reply-cache": { type: "string" },
        "listing-memo": { type: "string" },
        "no-http": { type: "boolean" },
        tokens: { type: "string" },
        allow: { type: "string", multiple: true },
        deny: { type: "string", multiple: true },
        "proxy-protocol": { type: "string", multiple: true },
        "max-conns-per-ip": { type: "string" },
        "pid-file": { type: "string" },
        version: { type: "boolean" },
        "metrics-listen": { type: "string" },
        "no-metrics": { type: "boolean" },
        "log-format": { type: "string" },
        "log-health": { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    // node:util's messages can run over several lines: the first says what was wrong.
    throw new UsageError((e as Error).message.split("\n")[0]);
  }
  const v = parsed.values;
  if (v.help) return "help";
  if (v.version) return "version";
  const root = v.root ?? null;
  const push = v.push ?? null;
  if (root === null && push === null) {
    throw new UsageError("give --root DIR (request mode) or --push FILE (classic)");
  }
  if (root !== null && !isKind(root, "dir")) throw new UsageError(`--root: '${root}' is not a directory`);
  if (push !== null && !isKind(push, "file")) {
    throw new UsageError(`--push: '${push}' is not a readable file`);
  }
  const listenMode = root !== null ? ServeMode.Request : ServeMode.Classic;
  const listenTexts = [...(v.listen ?? [])].map((t) => ({ text: t, mode: listenMode }));
  if ((v["push-listen"] ?? []).length > 0 && push === null) {
    throw new UsageError("--push-listen needs --push FILE");
  }
  listenTexts.push(...(v["push-listen"] ?? []).map((t) => ({ text: t, mode: ServeMode.Classic })));
  if (listenTexts.length === 0 && inheritedListeners === 0) {
    throw new UsageError("give at least one --listen HOST:PORT");
  }
  const listenOn = listenTexts.map(({ text, mode }) => {
    try {
      return { endpoint: parseEndpoint(text), mode };
    } catch (e) {
      throw new UsageError(`--listen: ${(e as Error).message}`);
    }
  });
  const tokens = tokensOf(v.tokens, listenOn.some((l) => l.mode === ServeMode.Classic));
  if (v["no-metrics"] && v["metrics-listen"] !== undefined) {
    throw new UsageError("--metrics-listen and --no-metrics contradict each other");
  }
  let metricsListen: Endpoint | null = null;
  if (v["metrics-listen"] !== undefined) {
    try {
      metricsListen = parseEndpoint(v["metrics-listen"]);
    } catch (e) {
      throw new UsageError(`--metrics-listen: ${(e as Error).message}`);
    }
  }
  const logFormat = v["log-format"] ?? "text";
  if (!(LOG_FORMATS as readonly string[]).includes(logFormat)) {
    throw new UsageError(`--log-format: '${logFormat}' is not one of ${LOG_FORMATS.join(", ")}`);
  }
  return {
    listen: listenOn,
    root,
    push,
    workers: positiveNumber("workers", v.workers, navigator.hardwareConcurrency),
    connsPerWorker: positiveNumber("conns-per-worker", v["conns-per-worker"], 64),
    queue: v.queue === "0" ? 0 : positiveNumber("queue", v.queue, 1024),
    grace: positiveNumber("grace", v.grace, 30, false),
    idleTimeout: positiveNumber("idle-timeout", v["idle-timeout"], 30, false),
    backlog: positiveNumber("backlog", v.backlog, 4096),
    requestLog: requestLogOf(v["request-log"]),
    replyCacheBytes: v["reply-cache"] === "0"
      ? 0
      : Math.round(positiveNumber("reply-cache", v["reply-cache"], 8, false) * 1024 * 1024),
    listingMemoEntries: v["listing-memo"] === "0"
      ? 0
      : positiveNumber("listing-memo", v["listing-memo"], LISTING_MEMO_ENTRIES),
    http: v["no-http"] !== true,
    tokens,
    admission: {
      allow: cidrsOf("allow", v.allow),
      deny: cidrsOf("deny", v.deny),
      proxyFrom: cidrsOf("proxy-protocol", v["proxy-protocol"]),
      maxConnsPerIp: v["max-conns-per-ip"] === "0"
        ? 0
        : positiveNumber("max-conns-per-ip", v["max-conns-per-ip"], 0),
    },
    pidFile: v["pid-file"] ?? null,
    metrics: !v["no-metrics"],
    metricsListen,
    logFormat: logFormat as LogFormat,
    logHealth: v["log-health"] === true,
  };
}

/**
 * Checks --tokens now, so that a server with a bad tokens file (open to others, a malformed line) refuses
 * to start; the workers read it again. Classic mode cannot ask for a token: it would push to anyone.
 */
function tokensOf(path: string | undefined, classic: boolean): string | null {
  if (path === undefined) return null;
  if (classic) {
    throw new UsageError(
      "--tokens guards request mode; a classic-mode listener pushes to anyone, so not both",
    );
  }
  try {
    readTokensFile(path);
  } catch (e) {
    if (!(e instanceof TokenFileError)) throw e;
    throw new UsageError(`--tokens: ${e.message}`);
  }
  return path;
}

/** The CIDRs of a repeatable flag; the first bad one is a usage error naming it. */
function cidrsOf(flag: string, texts: string[] | undefined): Cidr[] {
  return (texts ?? []).map((text) => {
    try {
      return parseCidr(text);
    } catch (e) {
      throw new UsageError(`--${flag}: ${(e as Error).message}`);
    }
  });
}

/** Checks --request-log; a file is created if missing, so that a path that cannot be written fails now. */
function requestLogOf(text: string | undefined): string | null {
  if (text === undefined || text === "-") return "-";
  if (text === "off") return null;
  try {
    Deno.openSync(text, { append: true, create: true, mode: 0o644 }).close();
  } catch (e) {
    throw new UsageError(`--request-log: cannot append to '${text}': ${(e as Error).message}`);
  }
  return text;
}

function isKind(path: string, kind: "dir" | "file"): boolean {
  try {
    const s = Deno.statSync(path);
    return kind === "dir" ? s.isDirectory : s.isFile;
  } catch {
    return false;
  }
}
