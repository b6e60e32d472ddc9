/**
 * The soak: many short connections (default 100,000) against one server, each one request of a mix of
 * `get`, `ping`, `stat`, `list` and requests the server refuses, with bounded concurrency and a normal
 * client checked throughout; the open fds and resident memory (VmRSS) of the master and of every worker are
 * recorded at the start, after a warm-up, at every fifth of the run, at the end and once more after a pause
 * that lets lingering connections close, so that a leak shows as a column that keeps growing.
 *
 * Usage: `deno run -A scripts/soak.ts [--connections N] [--concurrency C] [--workers W] [--seed S]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import { encodeLastRequest, encodeRequest, FrameType, PROTOCOL_VERSION, type Request } from "../framing.ts";
import { runConnection } from "./fuzz/connection.ts";
import type { ConnectionPlan } from "./fuzz/frames.ts";
import { Random } from "./fuzz/random.ts";
import {
  checkCrashes,
  normalClientLoop,
  type ProcessSample,
  sampleProcesses,
  startTarget,
  type Target,
} from "./fuzz/target.ts";

/** One kind of soak request: the request's bytes and the result it must get. */
interface SoakRequest {
  kind: string;
  request: Record<string, unknown> | Uint8Array;
  expect: string;
  /** Data bytes the answer must carry, when known. */
  dataBytes?: number;
}

const v = PROTOCOL_VERSION;
const SOAK_REQUESTS: SoakRequest[] = [
  { kind: "get 4 KiB", request: { v, op: "get", path: "small.txt" }, expect: "ok", dataBytes: 4096 },
  { kind: "get 64 KiB", request: { v, op: "get", path: "known.bin" }, expect: "ok", dataBytes: 65536 },
  { kind: "get 100 B", request: { v, op: "get", path: "tiny.txt" }, expect: "ok", dataBytes: 100 },
  { kind: "ping", request: { v, op: "ping" }, expect: "ok" },
  { kind: "stat", request: { v, op: "stat", path: "dir/a.txt" }, expect: "ok" },
  { kind: "list", request: { v, op: "list", path: "", recursive: true }, expect: "ok" },
  { kind: "not found", request: { v, op: "get", path: "nope" }, expect: "NOT_FOUND" },
  { kind: "forbidden", request: { v, op: "get", path: "out" }, expect: "FORBIDDEN" },
  {
    kind: "bad JSON",
    request: Uint8Array.from([3, 0, 0, 0, FrameType.Request, 0x7b, 0x7d]),
    expect: "BAD_REQUEST",
  },
  {
    kind: "too large",
    request: Uint8Array.from([0xff, 0xff, 0xff, 0x7f, FrameType.Request]),
    expect: "TOO_LARGE",
  },
  { kind: "unknown op", request: { v, op: "delete", path: "tiny.txt" }, expect: "UNKNOWN_OP" },
];

/** The plan of soak connection `index`: one request, then an end frame or a half-close. */
function soakPlan(rng: Random, index: number): { plan: ConnectionPlan; soak: SoakRequest } {
  const soak = rng.pick(SOAK_REQUESTS);
  const endFrame = rng.chance(0.5);
  const bytes = soak.request instanceof Uint8Array
    ? soak.request
    : (endFrame ? encodeLastRequest : encodeRequest)(soak.request as unknown as Request);
  return {
    soak,
    plan: {
      index,
      kind: soak.kind,
      chunks: [bytes],
      frames: endFrame ? 2 : 1,
      sure: soak.expect === "ok" ? 1 : 0,
      ending: endFrame && !(soak.request instanceof Uint8Array) ? "end-frame" : "half-close",
      readBeforeCut: 0,
    },
  };
}

/** A labelled sample of every process. */
interface Checkpoint {
  label: string;
  samples: ProcessSample[];
}

/** Seconds to wait at the end before the last sample: beyond the server's longest linger (5 s). */
const SETTLE_SECONDS = 10;

async function soak(target: Target, options: { connections: number; concurrency: number; seed: number }) {
  const checkpoints: Checkpoint[] = [{ label: "start", samples: await sampleProcesses(target.server.pid) }];
  const marks = [1000, ...[1, 2, 3, 4, 5].map((i) => Math.round(options.connections * i / 5))];
  const results = new Map<string, number>();
  const failures: string[] = [];
  let failed = 0;
  let next = 0;
  let done = 0;
  const started = performance.now();
  const run = async (upTo: number) => {
    const lane = async () => {
      while (next < upTo) {
        const { plan, soak } = soakPlan(Random.forItem(options.seed, next), next++);
        const outcome = await runConnection(target.port, plan, results);
        done++;
        const wrong = outcome.anomaly ??
          (outcome.results[0] !== soak.expect ? `answered ${outcome.results[0] ?? "nothing"}` : null) ??
          (soak.dataBytes !== undefined && outcome.dataBytes !== soak.dataBytes
            ? `${outcome.dataBytes} data bytes`
            : null);
        if (wrong !== null) {
          failed++;
          if (failures.length < 10) failures.push(`connection ${plan.index} (${soak.kind}): ${wrong}`);
        }
      }
    };
    await Promise.all(Array.from({ length: options.concurrency }, lane));
  };
  let finished = (): void => {};
  const normal = normalClientLoop(target, new Promise<void>((resolve) => finished = resolve));
  for (const mark of marks.filter((m, i) => m <= options.connections && marks.indexOf(m) === i)) {
    await run(mark);
    checkpoints.push({
      label: mark === 1000 ? "1,000 (warm)" : mark.toLocaleString("en-US"),
      samples: await sampleProcesses(target.server.pid),
    });
    console.error(`soak: ${done.toLocaleString("en-US")} connections`);
  }
  const seconds = (performance.now() - started) / 1000;
  finished();
  const normalResult = await normal;
  await new Promise((r) => setTimeout(r, SETTLE_SECONDS * 1000)); // a script's pause, not a test's sync
  checkpoints.push({ label: `${SETTLE_SECONDS} s later`, samples: await sampleProcesses(target.server.pid) });
  return { checkpoints, results, failed, failures, seconds, done, normal: normalResult };
}

function table(checkpoints: Checkpoint[], field: "fds" | "rssKiB"): string {
  const roles = checkpoints[0].samples.map((s) => s.role);
  const head = `| ${field === "fds" ? "open fds" : "VmRSS (MiB)"} | ${
    checkpoints.map((c) => c.label).join(" | ")
  } |`;
  const rows = roles.map((role) => {
    const cells = checkpoints.map((c) => {
      const s = c.samples.find((x) => x.role === role);
      if (s === undefined) return "gone";
      return field === "fds" ? String(s.fds) : (s.rssKiB / 1024).toFixed(1);
    });
    const pid = checkpoints.at(-1)!.samples.find((x) => x.role === role)?.pid ?? "?";
    return `| ${role} (pid ${pid}) | ${cells.join(" | ")} |`;
  });
  return [head, `|${" --- |".repeat(checkpoints.length + 1)}`, ...rows].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      connections: { type: "string", default: "100000" },
      concurrency: { type: "string", default: "64" },
      workers: { type: "string", default: "2" },
      seed: { type: "string", default: "1" },
    },
  });
  const connections = Number(values.connections), concurrency = Number(values.concurrency);
  const target = await startTarget({ workers: Number(values.workers) });
  let ok = false;
  try {
    const r = await soak(target, { connections, concurrency, seed: Number(values.seed) });
    const crashes = await checkCrashes(target);
    const n = (x: number) => x.toLocaleString("en-US");
    console.log(
      `${n(r.done)} connections (${concurrency} at once) in ${r.seconds.toFixed(1)} s, ` +
        `${n(Math.round(r.done / r.seconds))} per second`,
    );
    console.log(`answers by result: ${[...r.results].map(([k, c]) => `${k} ${n(c)}`).join(", ")}`);
    console.log(`connections answered wrongly: ${r.failed}`);
    for (const f of r.failures) console.log(`  ${f}`);
    console.log(`normal client: ${n(r.normal.passed)} rounds passed, ${r.normal.failed} failed`);
    for (const f of r.normal.failures) console.log(`  ${f}`);
    console.log(
      `crashes: ${crashes.workerCrashes.length} worker exits or errors in the log, ` +
        `${crashes.workersLost.length} workers replaced, master ${crashes.masterAlive ? "alive" : "GONE"}`,
    );
    console.log("");
    console.log(table(r.checkpoints, "fds"));
    console.log("");
    console.log(table(r.checkpoints, "rssKiB"));
    ok = r.failed === 0 && r.normal.failed === 0 && crashes.workerCrashes.length === 0 && crashes.masterAlive;
  } finally {
    const status = await target.close();
    console.log(`master exit code after SIGTERM: ${status.code}`);
    ok &&= status.code === 0;
  }
  Deno.exit(ok ? 0 : 1);
}
