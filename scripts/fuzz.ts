/**
 * `deno task fuzz`: fuzzes a ferry server over the network (scripts/fuzz/fuzzer.ts) and prints what it
 * saw: frames and connections sent, answers by result, how connections ended, anomalies, the normal
 * client's rounds and any crash. Exits 0 only with no crash, no anomaly and every normal round served.
 *
 * Usage: `deno run -A scripts/fuzz.ts [--frames N] [--seed S] [--concurrency C] [--workers W] [--json]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import { fuzzPassed, type FuzzReport, runFuzz } from "./fuzz/fuzzer.ts";

const USAGE =
  "usage: fuzz.ts [--frames N (1000000)] [--seed S (1)] [--concurrency C (32)] [--workers W (2)] [--json]";

function positiveInteger(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 1) {
    console.error(`fuzz: --${name}: '${text}' is not a positive integer\n${USAGE}`);
    Deno.exit(2);
  }
  return n;
}

function print(report: FuzzReport): void {
  const n = (x: number) => x.toLocaleString("en-US");
  const list = (r: Record<string, number>) => Object.entries(r).map(([k, v]) => `${k} ${n(v)}`).join(", ");
  console.log(
    `seed ${report.seed}: ${n(report.framesSent)} frames on ${n(report.connections)} connections in ${
      report.seconds.toFixed(1)
    } s`,
  );
  console.log(`connections by kind: ${list(report.kinds)}`);
  console.log(`answers by result: ${list(report.answers)}`);
  console.log(`connections by end: ${list(report.ends)}`);
  console.log(`anomalies: ${report.anomalies.count}`);
  for (const a of report.anomalies.first) console.log(`  connection ${a.index} (${a.kind}): ${a.what}`);
  console.log(`normal client: ${n(report.normal.passed)} rounds passed, ${report.normal.failed} failed`);
  for (const f of report.normal.failures) console.log(`  ${f}`);
  const { workerCrashes, masterAlive, workersLost } = report.crashes;
  console.log(
    `crashes: ${workerCrashes.length} worker exits or errors in the log, ${workersLost.length} workers replaced, ` +
      `master ${masterAlive ? "alive" : "GONE"}, master exit code ${report.masterExit} after SIGTERM`,
  );
  for (const line of workerCrashes.slice(0, 20)) console.log(`  ${line}`);
  console.log(fuzzPassed(report) ? "PASS" : "FAIL");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      frames: { type: "string" },
      seed: { type: "string" },
      concurrency: { type: "string" },
      workers: { type: "string" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const report = await runFuzz({
    frames: positiveInteger("frames", values.frames, 1_000_000),
    seed: positiveInteger("seed", values.seed, 1),
    concurrency: positiveInteger("concurrency", values.concurrency, 32),
    workers: positiveInteger("workers", values.workers, 2),
    onProgress: (sent) => console.error(`fuzz: ${sent.toLocaleString("en-US")} frames sent`),
  });
  if (values.json) console.log(JSON.stringify(report));
  else print(report);
  Deno.exit(fuzzPassed(report) ? 0 : 1);
}
