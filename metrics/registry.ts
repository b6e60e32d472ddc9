/**
 * The server's counters and gauges, kept in one shared memory region (a memfd mapped by the master and
 * every worker) instead of being reported in messages: each process owns a fixed slot of 64-bit cells and
 * writes only its own, with plain stores, so counting a request costs a few additions and no system call,
 * and any process that maps the region can render a scrape by summing the slots (`render.ts`).
 *
 * Slot 0 is the master's (BUSY answers, restarts, the queue); slot N is worker N's, and a worker restarted
 * into slot N goes on from the counts its predecessor left, so the totals never go down. The cells are
 * float64: exact up to 2^53, which no counter here reaches, and a V8 float store is one aligned 8-byte
 * store, which a reader in another process never sees half-written.
 *
 * @module
 */

import { close, ftruncate, memfdCreate, mmapShared, setCloseOnExec } from "../ffi/libc.ts";
import { ErrorCode } from "../framing.ts";

/** The operations requests are counted by; `push` is a classic-mode connection, `none` no parsed request. */
export const OPS = ["get", "stat", "list", "sig", "ping", "push", "none"] as const;

/**
 * The results requests are counted by: a success, an error code in lower case, or `aborted` (the
 * connection ended before the answer was sent: the client went away, stopped reading, or the worker
 * stopped).
 */
export const RESULTS = [
  "ok",
  "unchanged",
  "partial",
  ...Object.values(ErrorCode).map((code) => code.toLowerCase()),
  "aborted",
] as const;

/** Upper bounds (seconds) of the request duration histogram's buckets; +Inf is implied. */
export const DURATION_BUCKETS = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
];

/** Cells of the master's slot (slot 0). */
export const MasterCell = {
  Pid: 0,
  /** Connections waiting in the master's queue for a worker slot (gauge). */
  Queued: 1,
  /** Workers ready (gauge). */
  WorkersReady: 2,
  /** Workers restarted after one died (counter). */
  Restarts: 3,
  /**
   * BUSY answers, by reason: every worker and the queue full, no worker running, no fd free, the client's
   * address over --max-conns-per-ip.
   */
  BusyFull: 4,
  BusyNoWorker: 5,
  BusyNoFd: 6,
  /** Metrics scrapes answered by the master's metrics listener. */
  Scrapes: 7,
  BusyPerIp: 8,
  /** Connections closed by the allow-lists (--allow/--deny), and for a PROXY header not taken. */
  RefusedByList: 9,
  RefusedProxyHeader: 10,
  /** Connections held by the master until their client's first byte (gauge). */
  AwaitingRequest: 11,
} as const;

/** Cells of a worker's slot. */
export const WorkerCell = {
  Pid: 0,
  /** Connections the worker holds (gauge). */
  Open: 1,
  /** Connections being answered, which take a slot of `--conns-per-worker` (gauge). */
  Answering: 2,
  /** Bytes written to clients. */
  BytesSent: 3,
  /** SHA-256 hashes of file versions computed (not learnt from another worker). */
  HashesComputed: 4,
  /** Reply cache: a `get` answered from memory, or looked up and not there (or stale). */
  ReplyCacheHits: 5,
  ReplyCacheMisses: 6,
  /** Listing entries: reused from the worker's listing memo, or built from the file's stat. */
  ListingEntriesReused: 7,
  ListingEntriesBuilt: 8,
  /**
   * Folder records (a request's `known`): vouched for by the worker's watch of the folder alone, or by a
   * look at each of its files.
   */
  ListingRecordsByWatch: 9,
  ListingRecordsByLook: 10,
  /** Folders whose names a listing read from the file system (not from the memo, nor skipped for a record). */
  ListingFoldersRead: 11,
  /** The duration histogram: a count per bucket (not cumulative; the last is +Inf), then the sum. */
  Histogram: 12,
  /** The request counts, op-major: `Requests + op * RESULTS.length + result`. */
  Requests: 12 + DURATION_BUCKETS.length + 2,
} as const;

/** Cells per slot (the largest slot's cells, rounded up). */
const SLOT_CELLS = Math.ceil((WorkerCell.Requests + OPS.length * RESULTS.length) / 8) * 8;

/** The shared region: its fd (for workers to inherit) and its cells, for `slots` slots. */
export interface MetricsRegion {
  /** The memfd holding the region: close-on-exec; the master clears that only for a worker's spawn. */
  fd: number;
  /** Slot count: the master's and one per worker. */
  slots: number;
  /** Every slot's cells, slot-major. */
  cells: Float64Array;
}

function regionBytes(slots: number): number {
  return Math.ceil((slots * SLOT_CELLS * 8) / 4096) * 4096;
}

let attached: MetricsRegion | null = null;

/** The region this process created or attached, or null when metrics are off. */
export function metricsRegion(): MetricsRegion | null {
  return attached;
}

/**
 * Creates the region for a master and `workers` workers, and makes it this process's. Throws a LibcError
 * where memfd_create or mmap is refused.
 */
export function createMetricsRegion(workers: number): MetricsRegion {
  const slots = workers + 1;
  const fd = memfdCreate("ferry-metrics");
  try {
    ftruncate(fd, regionBytes(slots));
    attached = { fd, slots, cells: new Float64Array(mmapShared(fd, regionBytes(slots))) };
  } catch (e) {
    close(fd);
    throw e;
  }
  attached.cells[MasterCell.Pid] = Deno.pid;
  return attached;
}

/** Maps the region a worker inherited as `fd` and makes it this process's; the fd is closed (the map stays). */
export function attachMetricsRegion(fd: number, slots: number): MetricsRegion {
  try {
    setCloseOnExec(fd, true);
    attached = { fd: -1, slots, cells: new Float64Array(mmapShared(fd, regionBytes(slots))) };
  } finally {
    close(fd);
  }
  return attached;
}

/** The cells of slot `slot` (0: the master, N: worker N) of `region`. */
export function slotCells(region: MetricsRegion, slot: number): Float64Array {
  return region.cells.subarray(slot * SLOT_CELLS, (slot + 1) * SLOT_CELLS);
}

/** Zeroes worker `workerId`'s gauges (its process is gone; its counters stay for its successor). */
export function clearWorkerGauges(region: MetricsRegion, workerId: number): void {
  const cells = slotCells(region, workerId);
  cells[WorkerCell.Open] = cells[WorkerCell.Answering] = cells[WorkerCell.Pid] = 0;
}

/** Cells written when metrics are off: counting goes on into them, and nobody reads them. */
const DETACHED = new Float64Array(SLOT_CELLS);

const opIndex = new Map<string, number>(OPS.map((op, i) => [op, i]));
const resultIndex = new Map<string, number>(RESULTS.map((r, i) => [r, i]));

/**
 * A worker's own slot, for counting. Until {@link WorkerMetrics.attach} is called (or with metrics off),
 * it counts into cells nobody reads, so code that counts never asks whether metrics are on.
 */
export class WorkerMetrics {
  /** This worker's cells. */
  cells: Float64Array = DETACHED;

  /** Counts into worker `workerId`'s slot of `region` from now on, and says which process writes there. */
  attach(region: MetricsRegion, workerId: number): void {
    this.cells = slotCells(region, workerId);
    this.cells[WorkerCell.Pid] = Deno.pid;
    this.cells[WorkerCell.Open] = this.cells[WorkerCell.Answering] = 0;
  }

  /** Adds one to a counter cell (one of {@link WorkerCell}). */
  count(cell: number): void {
    this.cells[cell]++;
  }

  /** Sets the connection gauges. */
  connections(open: number, answering: number): void {
    this.cells[WorkerCell.Open] = open;
    this.cells[WorkerCell.Answering] = answering;
  }

  /**
   * Counts one request: its operation (one of {@link OPS}; anything else counts as `none`), its result
   * (one of {@link RESULTS}; anything else as `aborted`), the bytes sent for it and how long it took.
   */
  request(op: string, result: string, bytes: number, seconds: number): void {
    const cells = this.cells;
    const o = opIndex.get(op) ?? OPS.length - 1;
    const r = resultIndex.get(result) ?? RESULTS.length - 1;
    cells[WorkerCell.Requests + o * RESULTS.length + r]++;
    cells[WorkerCell.BytesSent] += bytes;
    let bucket = 0;
    while (bucket < DURATION_BUCKETS.length && seconds > DURATION_BUCKETS[bucket]) bucket++;
    cells[WorkerCell.Histogram + bucket]++;
    cells[WorkerCell.Histogram + DURATION_BUCKETS.length + 1] += seconds;
  }
}

/** This worker process's counters (one per process: a worker is one slot). */
export const workerMetrics = new WorkerMetrics();

/**
 * The master's slot of the region, or cells nobody reads when metrics are off (so that the master's hooks
 * are plain stores either way).
 */
export function masterCells(): Float64Array {
  return attached === null ? DETACHED : slotCells(attached, 0);
}
