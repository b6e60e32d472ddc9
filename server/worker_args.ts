/**
 * The worker's command line: what the master passes to each worker it spawns, and how the worker reads
 * it back. Kept apart from `worker.ts` so that the master builds it without loading the worker's code.
 *
 * @module
 */

import { parseArgs } from "node:util";

/** The worker's command line, as the master builds it. */
export interface WorkerArgs {
  /** The inherited channel fd. */
  channelFd: number;
  /** This worker's number, for logs. */
  workerId: number;
  /** Served directory (request mode), or null. */
  root: string | null;
  /** Pushed file (classic mode), or null. */
  push: string | null;
  /** Idle timeout in seconds. */
  idleTimeout: number;
}

/** Parses the worker's arguments (the master's {@link workerArgv} output). */
export function parseWorkerArgs(argv: string[]): WorkerArgs {
  const { values } = parseArgs({
    args: argv,
    options: {
      "channel-fd": { type: "string" },
      "worker-id": { type: "string" },
      root: { type: "string" },
      push: { type: "string" },
      "idle-timeout": { type: "string" },
    },
  });
  const channelFd = Number(values["channel-fd"]);
  if (!Number.isInteger(channelFd) || channelFd < 0) {
    throw new Error("worker: --channel-fd is missing: workers are started by the ferry server, not by hand");
  }
  return {
    channelFd,
    workerId: Number(values["worker-id"] ?? 0),
    root: values.root ?? null,
    push: values.push ?? null,
    idleTimeout: Number(values["idle-timeout"] ?? 30),
  };
}

/** Builds the argument list for a worker (the inverse of {@link parseWorkerArgs}). */
export function workerArgv(args: WorkerArgs): string[] {
  const argv = ["--channel-fd", String(args.channelFd), "--worker-id", String(args.workerId)];
  if (args.root !== null) argv.push("--root", args.root);
  if (args.push !== null) argv.push("--push", args.push);
  argv.push("--idle-timeout", String(args.idleTimeout));
  return argv;
}
