/**
 * The server's metrics in Prometheus' text exposition format (version 0.0.4), rendered from the shared
 * region (`registry.ts`) by whichever process holds it: the master for `--metrics-listen`, or a worker
 * answering `GET /metrics`. Rendering reads memory and, for the open-fd gauges, lists `/proc/PID/fd` of
 * each process: no message to any other process, so a scrape waits for nobody.
 *
 * @module
 */

import {
  DURATION_BUCKETS,
  MasterCell,
  type MetricsRegion,
  metricsRegion,
  OPS,
  RESULTS,
  slotCells,
  WorkerCell,
} from "./registry.ts";

/** The Content-Type of {@link renderMetrics}'s text. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Lines of one metric family, with its HELP and TYPE. */
class Exposition {
  readonly lines: string[] = [];

  family(name: string, type: "counter" | "gauge" | "histogram", help: string): this {
    this.lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    return this;
  }

  sample(name: string, labels: Record<string, string>, value: number): this {
    const pairs = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
    this.lines.push(`${name}${pairs.length > 0 ? `{${pairs.join(",")}}` : ""} ${formatValue(value)}`);
    return this;
  }
}

function formatValue(value: number): string {
  return Number.isFinite(value) ? String(value) : value > 0 ? "+Inf" : value < 0 ? "-Inf" : "NaN";
}

/** Open fds of process `pid`, or NaN if it cannot be told (gone, or not ours to look at). */
function openFds(pid: number): number {
  let n = 0;
  try {
    for (const _ of Deno.readDirSync(`/proc/${pid}/fd`)) n++;
  } catch {
    return NaN;
  }
  return n;
}

/**
 * Renders every metric of `region` (by default this process's), or a comment saying metrics are off.
 *
 * @example
 * ```ts
 * import { renderMetrics } from "./render.ts";
 * const text: string = renderMetrics();
 * ```
 */
export function renderMetrics(region: MetricsRegion | null = metricsRegion()): string {
  if (region === null) return "# ferry: metrics are off (--no-metrics)\n";
  const master = slotCells(region, 0);
  const workers = Array.from(
    { length: region.slots - 1 },
    (_, i) => ({ id: i + 1, cells: slotCells(region, i + 1) }),
  );
  const sum = (cell: number) => workers.reduce((total, w) => total + w.cells[cell], 0);
  const out = new Exposition();

  out.family("ferry_requests_total", "counter", "Requests answered, by operation and result.");
  for (let o = 0; o < OPS.length; o++) {
    for (let r = 0; r < RESULTS.length; r++) {
      const value = sum(WorkerCell.Requests + o * RESULTS.length + r);
      // Every operation's "ok" series exists from the start; the others once they happen.
      if (value > 0 || RESULTS[r] === "ok") {
        out.sample("ferry_requests_total", { op: OPS[o], result: RESULTS[r] }, value);
      }
    }
  }

  out.family("ferry_sent_bytes_total", "counter", "Bytes written to clients (frames and file data).")
    .sample("ferry_sent_bytes_total", {}, sum(WorkerCell.BytesSent));

  const h = "ferry_request_duration_seconds";
  out.family(h, "histogram", "Time from a request's arrival to the end of its answer.");
  let cumulative = 0;
  for (let b = 0; b <= DURATION_BUCKETS.length; b++) {
    cumulative += sum(WorkerCell.Histogram + b);
    const le = b < DURATION_BUCKETS.length ? String(DURATION_BUCKETS[b]) : "+Inf";
    out.sample(`${h}_bucket`, { le }, cumulative);
  }
  out.sample(`${h}_sum`, {}, sum(WorkerCell.Histogram + DURATION_BUCKETS.length + 1));
  out.sample(`${h}_count`, {}, cumulative);

  out.family("ferry_connections_open", "gauge", "Client connections a worker holds.");
  for (const w of workers) {
    out.sample("ferry_connections_open", { worker: String(w.id) }, w.cells[WorkerCell.Open]);
  }
  out.family(
    "ferry_connections_answering",
    "gauge",
    "Connections a worker is answering, each taking one of its --conns-per-worker slots.",
  );
  for (const w of workers) {
    out.sample("ferry_connections_answering", { worker: String(w.id) }, w.cells[WorkerCell.Answering]);
  }
  out.family(
    "ferry_connections_queued",
    "gauge",
    "Connections waiting in the master's queue for a worker slot.",
  )
    .sample("ferry_connections_queued", {}, master[MasterCell.Queued]);
  out.family(
    "ferry_connections_awaiting_request",
    "gauge",
    "Connections the master holds until their client sends its first byte; they take no worker slot.",
  )
    .sample("ferry_connections_awaiting_request", {}, master[MasterCell.AwaitingRequest]);

  out.family("ferry_busy_total", "counter", "Connections answered BUSY, by reason.")
    .sample("ferry_busy_total", { reason: "full" }, master[MasterCell.BusyFull])
    .sample("ferry_busy_total", { reason: "no_worker" }, master[MasterCell.BusyNoWorker])
    .sample("ferry_busy_total", { reason: "no_fd" }, master[MasterCell.BusyNoFd])
    .sample("ferry_busy_total", { reason: "per_ip" }, master[MasterCell.BusyPerIp]);

  out.family("ferry_refused_total", "counter", "Connections closed unanswered by admission, by reason.")
    .sample("ferry_refused_total", { reason: "allow_list" }, master[MasterCell.RefusedByList])
    .sample("ferry_refused_total", { reason: "proxy_header" }, master[MasterCell.RefusedProxyHeader]);

  out.family("ferry_workers", "gauge", "Worker processes configured (--workers).")
    .sample("ferry_workers", {}, workers.length);
  out.family("ferry_workers_ready", "gauge", "Worker processes running and ready.")
    .sample("ferry_workers_ready", {}, master[MasterCell.WorkersReady]);
  out.family("ferry_worker_restarts_total", "counter", "Workers started again after one died.")
    .sample("ferry_worker_restarts_total", {}, master[MasterCell.Restarts]);

  out.family(
    "ferry_hashes_computed_total",
    "counter",
    "SHA-256 hashes of file versions computed by the workers.",
  )
    .sample("ferry_hashes_computed_total", {}, sum(WorkerCell.HashesComputed));
  out.family("ferry_reply_cache_hits_total", "counter", "Plain gets answered from a worker's reply cache.")
    .sample("ferry_reply_cache_hits_total", {}, sum(WorkerCell.ReplyCacheHits));
  out.family(
    "ferry_reply_cache_misses_total",
    "counter",
    "Plain gets looked up in a worker's reply cache and not answered from it (absent or stale).",
  ).sample("ferry_reply_cache_misses_total", {}, sum(WorkerCell.ReplyCacheMisses));
  out.family(
    "ferry_listing_entries_total",
    "counter",
    "Files listed: entries reused from a worker's listing memo, or built from the file's stat.",
  )
    .sample("ferry_listing_entries_total", { entry: "reused" }, sum(WorkerCell.ListingEntriesReused))
    .sample("ferry_listing_entries_total", { entry: "built" }, sum(WorkerCell.ListingEntriesBuilt));
  out.family(
    "ferry_listing_records_total",
    "counter",
    "Folders listed as one record (the client holds them as they are): vouched for by the worker's watch of the folder, or by a look at each file.",
  )
    .sample("ferry_listing_records_total", { by: "watch" }, sum(WorkerCell.ListingRecordsByWatch))
    .sample("ferry_listing_records_total", { by: "look" }, sum(WorkerCell.ListingRecordsByLook));
  out.family(
    "ferry_listing_folders_read_total",
    "counter",
    "Folders whose names a listing read from the file system: not kept by a worker's listing memo, nor sent as a record unread.",
  ).sample("ferry_listing_folders_read_total", {}, sum(WorkerCell.ListingFoldersRead));

  out.family("ferry_open_fds", "gauge", "File descriptors open in each ferry process.");
  const masterPid = master[MasterCell.Pid];
  if (masterPid > 0) out.sample("ferry_open_fds", { process: "master" }, openFds(masterPid));
  for (const w of workers) {
    const pid = w.cells[WorkerCell.Pid];
    if (pid > 0) out.sample("ferry_open_fds", { process: "worker", worker: String(w.id) }, openFds(pid));
  }

  out.family("ferry_metrics_scrapes_total", "counter", "Scrapes answered by the --metrics-listen listener.")
    .sample("ferry_metrics_scrapes_total", {}, master[MasterCell.Scrapes]);
  return out.lines.join("\n") + "\n";
}
