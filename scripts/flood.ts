/**
 * What a new client sees while the server is flooded: 1,000 connections that send a request one byte every
 * few seconds and 5,000 that send nothing are held open at once from 127.0.0.2 and up (scripts/flood/hold.ts,
 * its own process, which opens a new connection for each one the server closes), and meanwhile a client on
 * 127.0.0.1 times, again and again, a `ping` and a 4 KiB `get` on new connections (from connect to the end of
 * the answer, the bytes checked). Prints max, p50 and p99 of each and how many took over 100 ms.
 *
 * Usage: `deno run -A scripts/flood.ts [--drip 1000] [--idle 5000] [--rounds 200] [--every-ms 150]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import { raiseOpenFileLimit } from "../ffi/libc.ts";
import { RawConnection, repoPath, sha256 } from "../tests/helpers.ts";
import { start, stop } from "./bench/procs.ts";
import { checkCrashes, startTarget, type Target, within } from "./fuzz/target.ts";

/** The file fetched by the measured client. */
const GET_PATH = "small.txt";
/** A latency over this is counted. */
const SLOW_MS = 100;
/** An answer not come after this counts as failed. */
const ANSWER_LIMIT_MS = 10_000;

/** Latencies of one kind of request, in ms, and the failures. */
interface Timings {
  ms: number[];
  /** When each latency over {@link SLOW_MS} began, in s from the start of the measurement. */
  slowAt: { at: number; ms: number }[];
  failures: string[];
}

/** Times one request on a new connection from 127.0.0.1, from connect to the answer's end. */
async function timeOne(target: Target, op: "ping" | "get", into: Timings, since: number): Promise<void> {
  const t0 = performance.now();
  let conn: RawConnection | undefined;
  try {
    const problem = await within(
      ANSWER_LIMIT_MS,
      op,
      (async () => {
        conn = await RawConnection.open(target.port);
        await conn.sendRequest(op === "ping" ? { op } : { op, path: GET_PATH });
        const answer = await conn.readResponse();
        if (answer.types[0] !== "H") return `${op} answered '${answer.types}' ${JSON.stringify(answer.json)}`;
        if (
          op === "get" && sha256(answer.data) !== target.files.get(GET_PATH)!.sha256
        ) return "get: wrong bytes";
        return null;
      })(),
    );
    const ms = performance.now() - t0;
    if (problem !== null) into.failures.push(`at ${((t0 - since) / 1000).toFixed(1)} s: ${problem}`);
    else into.ms.push(ms);
    if (ms > SLOW_MS) into.slowAt.push({ at: (t0 - since) / 1000, ms });
  } catch (e) {
    into.failures.push(`at ${((t0 - since) / 1000).toFixed(1)} s: ${(e as Error).message}`);
  } finally {
    conn?.close();
  }
}

function summary(name: string, t: Timings): string {
  const sorted = [...t.ms].sort((a, b) => a - b);
  const at = (p: number) => sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)] ?? NaN;
  const slow = sorted.filter((ms) => ms > SLOW_MS).length;
  return `| ${name} | ${sorted.length} | ${t.failures.length} | ${at(0.5).toFixed(1)} | ${
    at(0.99).toFixed(1)
  } | ` +
    `${(sorted.at(-1) ?? NaN).toFixed(1)} | ${slow} |`;
}

/** Counters of the kernel's TCP (TcpExt of /proc/net/netstat, for the whole machine) that tell of a flood. */
const KERNEL_COUNTERS = ["ListenOverflows", "ListenDrops", "TCPReqQFullDoCookies", "SyncookiesSent"];

async function kernelCounters(): Promise<Record<string, number>> {
  const lines = (await Deno.readTextFile("/proc/net/netstat")).split("\n").filter((l) =>
    l.startsWith("TcpExt:")
  );
  const names = lines[0].split(" "), values = lines[1].split(" ");
  return Object.fromEntries(KERNEL_COUNTERS.map((k) => [k, Number(values[names.indexOf(k)])]));
}

/** The holder's status lines (JSON) printed since line `from`. */
function statuses(lines: string[], from: number): Record<string, number>[] {
  return lines.slice(from).filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      drip: { type: "string", default: "1000" },
      idle: { type: "string", default: "5000" },
      rounds: { type: "string", default: "200" },
      "every-ms": { type: "string", default: "150" },
      "drip-ms": { type: "string", default: "3000" },
      workers: { type: "string", default: "2" },
    },
  });
  raiseOpenFileLimit();
  const target = await startTarget({ workers: Number(values.workers) });
  let ok = false;
  try {
    const holder = start(Deno.execPath(), [
      "run",
      "-A",
      repoPath("scripts/flood/hold.ts"),
      "--port",
      String(target.port),
      "--drip",
      values.drip,
      "--idle",
      values.idle,
      "--drip-ms",
      values["drip-ms"],
    ]);
    try {
      const held = JSON.parse(await holder.waitFor(/"event":"held"/, 180_000));
      console.error(`flood: held ${held.drip} dripping and ${held.idle} idle connections`);
      const from = holder.stdout.length;
      const ping: Timings = { ms: [], slowAt: [], failures: [] };
      const get: Timings = { ms: [], slowAt: [], failures: [] };
      const countersBefore = await kernelCounters();
      const started = performance.now();
      for (let round = 0; round < Number(values.rounds); round++) {
        await timeOne(target, "ping", ping, started);
        await timeOne(target, "get", get, started);
        await new Promise((r) => setTimeout(r, Number(values["every-ms"]))); // the measured client's pace
      }
      const seconds = (performance.now() - started) / 1000;
      const countersAfter = await kernelCounters();
      const during = statuses(holder.stdout, from);
      const last = during.at(-1) ?? held;
      const crashes = await checkCrashes(target);
      const min = (k: string) => Math.min(...during.map((s) => s[k]));
      console.log(
        `flood: ${values.drip} dripping (a byte every ${
          values["drip-ms"]
        } ms) and ${values.idle} idle connections ` +
          `from 127.0.0.2 and up; while measuring (${seconds.toFixed(1)} s) at least ${
            min("drip")
          } dripping and ` +
          `${min("idle")} idle were open at every second; the server closed ` +
          `${last.closedByServer - held.closedByServer} of them meanwhile (each opened again at once)`,
      );
      console.log("");
      console.log(
        `| from 127.0.0.1, a new connection each | answered | failed | p50 ms | p99 ms | max ms | over ${SLOW_MS} ms |`,
      );
      console.log("| --- | --- | --- | --- | --- | --- | --- |");
      console.log(summary("ping", ping));
      console.log(summary(`get ${GET_PATH} (4 KiB)`, get));
      for (const f of [...ping.failures, ...get.failures].slice(0, 10)) console.log(`  failed: ${f}`);
      for (const [name, t] of [["ping", ping], ["get", get]] as const) {
        for (const s of t.slowAt) console.log(`  ${name} at ${s.at.toFixed(1)} s: ${s.ms.toFixed(1)} ms`);
      }
      // When the server closed flood connections (each line: second, closed so far), to set beside the above.
      const closes = during.map((s, i) => `${i + 1}s:${s.closedByServer - held.closedByServer}`);
      console.log(`  flood connections closed by the server, by second: ${closes.join(" ")}`);
      const grew = KERNEL_COUNTERS.map((k) => `${k} +${countersAfter[k] - countersBefore[k]}`);
      console.log(`  the kernel's counters (whole machine) while measuring: ${grew.join(", ")}`);
      console.log("");
      console.log(
        `crashes: ${crashes.workerCrashes.length} worker exits or errors in the log, ` +
          `${crashes.workersLost.length} workers replaced, master ${
            crashes.masterAlive ? "alive" : "GONE"
          }; ` +
          `BUSY refusals in the master's log: ${
            target.server.log.filter((l) => / refused: /.test(l)).length
          }`,
      );
      ok = ping.failures.length === 0 && get.failures.length === 0 && crashes.workerCrashes.length === 0;
    } finally {
      await stop(holder);
    }
  } finally {
    const status = await target.close();
    console.log(`master exit code after SIGTERM: ${status.code}`);
  }
  Deno.exit(ok ? 0 : 1);
}
