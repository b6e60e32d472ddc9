/**
 * Starting a worker process: its channel, its command line and its environment.
 *
 * @module
 */

import { basename } from "node:path";
import { fileURLToPath } from "node:url";
import { createChannel } from "../channel/messages.ts";
import { workerArgv } from "../channel/worker_args.ts";
import { close, setCloseOnExec } from "../ffi/libc.ts";
import type { MetricsRegion } from "../metrics/registry.ts";
import type { ServerOptions } from "./options.ts";

/** The argument that makes a compiled ferry binary run as a worker. */
export const WORKER_ARG = "__ferry_worker";

/** A started worker: its process and the master's end of its channel. */
export interface WorkerProcess {
  /** The worker's process. */
  child: Deno.ChildProcess;
  /** The master's end of the channel (the worker inherited the other end). */
  channel: number;
}

/**
 * V8 flags for workers. Semispaces of 4 MiB instead of V8's larger default: a worker's garbage is
 * short-lived, and the memory of 10,000 held connections fell from 8.5 to 7.1 KiB each (case 5 of
 * BENCHMARKS.md) with small-file throughput unchanged within its noise. Flags the operator set in
 * DENO_V8_FLAGS come after, so they win.
 */
function workerV8Flags(): string {
  const operators = Deno.env.get("DENO_V8_FLAGS");
  return ["--max-semi-space-size=4", ...(operators ? [operators] : [])].join(",");
}

/**
 * The command that starts a worker: this same program, under `deno run` or as a compiled binary. A
 * bundle (`deno task bundle`) is one file, so every module's `import.meta.url` is the bundle's, and the
 * bundle runs as a worker when given {@link WORKER_ARG}, as a compiled binary does.
 */
function workerCommand(argv: string[]): { command: string; args: string[] } {
  if (Deno.build.standalone) return { command: Deno.execPath(), args: [WORKER_ARG, ...argv] };
  const bundled = import.meta.url === Deno.mainModule;
  const module = bundled ? fileURLToPath(import.meta.url) : `${import.meta.dirname}/../worker.ts`;
  return {
    command: Deno.execPath(),
    args: ["run", "--allow-all", "--no-prompt", module, ...(bundled ? [WORKER_ARG] : []), ...argv],
  };
}

/**
 * Starts worker number `workerId` with a new channel, and the metrics region (if any) to count into.
 * Throws if the process cannot be started (its channel is closed then).
 */
export function startWorker(
  options: ServerOptions,
  workerId: number,
  metrics: MetricsRegion | null = null,
): WorkerProcess {
  const [masterEnd, workerEnd] = createChannel();
  const argv = workerArgv({
    channelFd: workerEnd,
    workerId,
    root: options.root,
    push: options.push === null ? null : { path: options.push, name: basename(options.push) },
    idleTimeout: options.idleTimeout,
    requestLog: options.requestLog,
    replyCacheBytes: options.replyCacheBytes,
    listingMemoEntries: options.listingMemoEntries,
    http: options.http,
    tokens: options.tokens,
    reportClosed: options.admission.maxConnsPerIp > 0,
    metricsFd: metrics?.fd ?? -1,
    metricsSlots: metrics?.slots ?? 0,
    logFormat: options.logFormat,
    logHealth: options.logHealth,
  });
  const { command, args } = workerCommand(argv);
  // The worker's end is the one fd it inherits: everything else ferry opens is close-on-exec.
  setCloseOnExec(workerEnd, false);
  // So is the metrics region, inherited by every worker: cleared for this spawn only (spawn is synchronous).
  if (metrics !== null) setCloseOnExec(metrics.fd, false);
  try {
    const child = new Deno.Command(command, {
      args,
      env: { DENO_V8_FLAGS: workerV8Flags() },
      stdin: "null",
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
    return { child, channel: masterEnd };
  } catch (e) {
    close(masterEnd);
    throw e;
  } finally {
    close(workerEnd);
    if (metrics !== null) setCloseOnExec(metrics.fd, true);
  }
}
