/**
 * The worker's command line: what the master passes to each worker it spawns, and how the worker reads
 * it back. Kept apart from `worker.ts` so that the master builds it without loading the worker's code.
 *
 * It is one JSON argument rather than flags: workers are started only by the master, and a worker that
 * loads no `node:` module before it is ready starts about 5 ms sooner (node:util's parseArgs would be
 * the first).
 *
 * @module
 */

import type { LogFormat } from "./log_format.ts";

/** The flag that carries the JSON. */
const FLAG = "--worker-config";

/**
 * Listed files' entries a worker remembers for the next listing of the tree unless `--listing-memo` says
 * otherwise: about 40 MB of a worker's memory for a tree of 100,000 files.
 */
export const LISTING_MEMO_ENTRIES = 250_000;

/** The worker's command line, as the master builds it. */
export interface WorkerArgs {
  /** The inherited channel fd. */
  channelFd: number;
  /** This worker's number, for logs. */
  workerId: number;
  /** Served directory (request mode), or null. */
  root: string | null;
  /** Pushed file (classic mode) and the name sent for it (its base name), or null. */
  push: { path: string; name: string } | null;
  /** Idle timeout in seconds. */
  idleTimeout: number;
  /** Where request lines go: "-" for stderr, a file to append to, or null for nowhere. */
  requestLog: string | null;
  /** Bytes of small replies kept in memory; 0 for none. */
  replyCacheBytes: number;
  /**
   * Listed files' entries remembered (and twice as many folders' names); 0 for none; absent:
   * {@link LISTING_MEMO_ENTRIES}.
   */
  listingMemoEntries?: number;
  /** False with `--no-http`: request-mode connections speak only ferry's protocol. @default true */
  http?: boolean;
  /** The `--tokens` file, read by the worker (and again on reload); null or absent: no tokens. */
  tokens?: string | null;
  /**
   * Tell the master the id of each connection that closes (it counts connections per address for
   * --max-conns-per-ip); off, a turn's Done message carries counts only. Absent means off.
   */
  reportClosed?: boolean;
  /** The inherited metrics region (a memfd), or -1 when metrics are off. */
  metricsFd: number;
  /** The region's slots (the master's and one per worker). */
  metricsSlots: number;
  /** How log lines are written. */
  logFormat: LogFormat;
  /** Whether `ping` requests are logged. */
  logHealth: boolean;
}

/** Parses the worker's arguments (the master's {@link workerArgv} output). */
export function parseWorkerArgs(argv: string[]): WorkerArgs {
  const notByHand = "workers are started by the ferry server, not by hand";
  if (argv.length !== 2 || argv[0] !== FLAG) throw new Error(`worker: expected ${FLAG} JSON: ${notByHand}`);
  let args: WorkerArgs;
  try {
    args = JSON.parse(argv[1]);
  } catch {
    throw new Error(`worker: ${FLAG} is not JSON: ${notByHand}`);
  }
  if (!Number.isInteger(args.channelFd) || args.channelFd < 0) {
    throw new Error(`worker: ${FLAG} has no channelFd: ${notByHand}`);
  }
  return args;
}

/** Builds the argument list for a worker (the inverse of {@link parseWorkerArgs}). */
export function workerArgv(args: WorkerArgs): string[] {
  return [FLAG, JSON.stringify(args)];
}
