/**
 * The network fuzzer: starts a real server over a fixture root, plays generated connections against it
 * with bounded concurrency until the frames asked for are sent, keeps a normal client checking throughout
 * that a ping and a `get` are served with the right bytes, then checks that no worker exited and the master
 * is alive and stops cleanly. `deno task fuzz` (scripts/fuzz.ts) and tests/fuzz_test.ts both run
 * {@link runFuzz}.
 *
 * @module
 */

import { RawConnection } from "../../tests/helpers.ts";
import { type ConnectionOutcome, runConnection } from "./connection.ts";
import { type ConnectionPlan, type FuzzFile, planConnection } from "./frames.ts";
import { Random } from "./random.ts";
import { checkCrashes, type CrashReport, normalClientLoop, startTarget, type Target } from "./target.ts";

/** Options of {@link runFuzz}. */
export interface FuzzOptions {
  /** Frames to send in all. @default 1_000_000 */
  frames?: number;
  /** Seed of the generator: the same seed sends the same connections. @default 1 */
  seed?: number;
  /** Connections open at once. @default 32 */
  concurrency?: number;
  /** The server's worker processes. @default 2 */
  workers?: number;
  /** Called now and then with the frames sent so far. */
  onProgress?: (framesSent: number) => void;
}

/** A connection that departed from the protocol or from its plan. */
export interface Anomaly {
  /** The connection's index (replay it with the same seed). */
  index: number;
  /** Its kind of plan. */
  kind: string;
  /** What was wrong. */
  what: string;
}

/** What a run of the fuzzer saw. */
export interface FuzzReport {
  /** The seed. */
  seed: number;
  /** Frames sent. */
  framesSent: number;
  /** Connections opened. */
  connections: number;
  /** Connections by kind of plan. */
  kinds: Record<string, number>;
  /** Answers by result: `ok` or an error code. */
  answers: Record<string, number>;
  /** Connections by how they ended (`closed`, `cut`, `reset`, `refused`), and `write refused`. */
  ends: Record<string, number>;
  /** How many connections departed from the protocol or their plan, and the first of them. */
  anomalies: { count: number; first: Anomaly[] };
  /** The normal client's rounds. */
  normal: { passed: number; failed: number; failures: string[] };
  /** Worker exits and whether the master lived, before it was stopped. */
  crashes: CrashReport;
  /** The master's exit code after SIGTERM (0 is a clean stop). */
  masterExit: number;
  /** Wall time of the run, in seconds. */
  seconds: number;
}

/** The server's idle timeout in a fuzz run: short, so that requests left unfinished end in TIMEOUT soon. */
const FUZZ_IDLE_TIMEOUT_S = 3;

/** Fuzzes a fresh server; resolves with what it saw (it throws only if the run itself could not be made). */
export async function runFuzz(options: FuzzOptions = {}): Promise<FuzzReport> {
  const { frames = 1_000_000, seed = 1, concurrency = 32, workers = 2, onProgress } = options;
  const started = performance.now();
  const target = await startTarget({ workers, extraArgs: ["--idle-timeout", String(FUZZ_IDLE_TIMEOUT_S)] });
  const report: FuzzReport = {
    seed,
    framesSent: 0,
    connections: 0,
    kinds: {},
    answers: {},
    ends: {},
    anomalies: { count: 0, first: [] },
    normal: { passed: 0, failed: 0, failures: [] },
    crashes: { workerCrashes: [], masterAlive: true, workersLost: [] },
    masterExit: -1,
    seconds: 0,
  };
  try {
    const files = await fuzzFiles(target);
    const results = new Map<string, number>();
    let next = 0;
    let planned = 0;
    let lastProgress = 0;
    const nextPlan = (): ConnectionPlan | null => {
      if (planned >= frames) return null;
      const plan = planConnection(Random.forItem(seed, next), next++, files);
      planned += plan.frames;
      return plan;
    };
    const record = (plan: ConnectionPlan, outcome: ConnectionOutcome) => {
      report.connections++;
      report.framesSent += plan.frames;
      count(report.kinds, plan.kind);
      count(report.ends, outcome.end);
      if (outcome.writeRefused) count(report.ends, "write refused");
      if (outcome.anomaly !== null) {
        report.anomalies.count++;
        if (report.anomalies.first.length < 20) {
          report.anomalies.first.push({ index: plan.index, kind: plan.kind, what: outcome.anomaly });
        }
      }
      if (onProgress && report.framesSent - lastProgress >= frames / 10) {
        lastProgress = report.framesSent;
        onProgress(report.framesSent);
      }
    };
    const lane = async () => {
      for (let plan = nextPlan(); plan !== null; plan = nextPlan()) {
        record(plan, await runConnection(target.port, plan, results));
      }
    };
    const fuzzing = Promise.all(Array.from({ length: concurrency }, lane));
    const normal = normalClientLoop(target, fuzzing);
    await fuzzing;
    report.normal = await normal;
    report.answers = Object.fromEntries([...results].sort((a, b) => b[1] - a[1]));
    report.crashes = await checkCrashes(target);
  } finally {
    report.masterExit = (await target.close()).code;
    report.seconds = (performance.now() - started) / 1000;
  }
  return report;
}

/** True if the report shows no crash, no anomaly, and the normal client served every time. */
export function fuzzPassed(report: FuzzReport): boolean {
  return report.crashes.workerCrashes.length === 0 && report.crashes.masterAlive &&
    report.crashes.workersLost.length === 0 && report.masterExit === 0 && report.anomalies.count === 0 &&
    report.normal.failed === 0 && report.normal.passed > 0;
}

/** The fixture's files with the etags the server gives them (asked with `stat`). */
async function fuzzFiles(target: Target): Promise<FuzzFile[]> {
  const conn = await RawConnection.open(target.port);
  try {
    const files: FuzzFile[] = [];
    for (const [path, file] of target.files) {
      await conn.sendRequest({ op: "stat", path });
      const answer = await conn.readResponse();
      const etag = answer.json[0]?.etag;
      if (typeof etag !== "string") throw new Error(`stat ${path}: ${JSON.stringify(answer.json)}`);
      files.push({ path, size: file.bytes.byteLength, sha256: file.sha256, etag });
    }
    return files;
  } finally {
    conn.close();
  }
}

function count(into: Record<string, number>, key: string): void {
  into[key] = (into[key] ?? 0) + 1;
}
