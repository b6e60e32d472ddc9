/**
 * Plays one {@link ConnectionPlan} against a server: connects, writes its chunks while reading the answers
 * (so that pipelined answers never wait on the fuzzer), ends the connection as planned, and says how it went.
 *
 * @module
 */

import { AnswerReader } from "./answers.ts";
import type { ConnectionPlan } from "./frames.ts";

/** How a connection went. */
export interface ConnectionOutcome {
  /** `closed` (the server ended it), `cut` (the fuzzer did), `reset`, `refused` (connect failed). */
  end: "closed" | "cut" | "reset" | "refused";
  /** True if a write failed because the server had closed already (after an error that closes). */
  writeRefused: boolean;
  /** What departed from the protocol or from the plan, or null. */
  anomaly: string | null;
  /** The results of the first answers (`ok` or an error code), in order. */
  results: string[];
  /** Data bytes received. */
  dataBytes: number;
}

/** Longest a connection may take before it counts as hung: well beyond the server's idle timeout. */
export const CONNECTION_LIMIT_MS = 30_000;

/** Runs `plan` on a new connection to 127.0.0.1:`port`; answers are counted into `results`. */
export async function runConnection(
  port: number,
  plan: ConnectionPlan,
  results: Map<string, number>,
): Promise<ConnectionOutcome> {
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
  } catch (e) {
    return {
      end: "refused",
      writeRefused: false,
      anomaly: `connect: ${(e as Error).message}`,
      results: [],
      dataBytes: 0,
    };
  }
  const reader = new AnswerReader(results);
  let cutting = false;
  let hung = false;
  const cut = () => {
    cutting = true;
    try {
      conn.close();
    } catch { /* closed already */ }
  };
  const guard = setTimeout(() => {
    hung = true;
    cut();
  }, CONNECTION_LIMIT_MS);
  const reading = (async (): Promise<"closed" | "cut" | "reset"> => {
    const buf = new Uint8Array(64 * 1024);
    let read = 0;
    for (;;) {
      if (plan.ending === "cut-answer" && (read >= plan.readBeforeCut || reader.answers === plan.frames)) {
        cut();
        return "cut";
      }
      let n: number | null;
      try {
        n = await conn.read(buf);
      } catch (e) {
        if (cutting) return "cut";
        if (e instanceof Deno.errors.ConnectionReset) return "reset";
        throw e;
      }
      if (n === null) return cutting ? "cut" : "closed";
      reader.feed(buf.subarray(0, n));
      read += n;
    }
  })();
  let writeRefused = false;
  try {
    for (const chunk of plan.chunks) {
      for (let done = 0; done < chunk.byteLength;) done += await conn.write(chunk.subarray(done));
    }
    if (plan.ending === "half-close") await conn.closeWrite();
  } catch (e) {
    if (!cutting && !(e instanceof Deno.errors.BrokenPipe || e instanceof Deno.errors.ConnectionReset)) {
      throw e;
    }
    writeRefused = true;
  }
  if (plan.ending === "cut") cut();
  const end = await reading;
  clearTimeout(guard);
  if (!cutting) cut();
  return {
    end,
    writeRefused,
    anomaly: hung ? `no end within ${CONNECTION_LIMIT_MS} ms` : judge(plan, reader, end),
    results: reader.firstResults,
    dataBytes: reader.dataBytes,
  };
}

/** What, if anything, is wrong with how the server answered `plan`. */
function judge(plan: ConnectionPlan, reader: AnswerReader, end: string): string | null {
  if (reader.anomaly !== null) return reader.anomaly;
  if (end === "cut") return null; // the fuzzer left: nothing more is owed
  if (reader.midAnswer) return "the server ended the connection inside an answer";
  // BUSY refuses the whole connection before any request is read.
  if (reader.firstResults[0] === "BUSY") return null;
  if (reader.answers < plan.sure) return `${reader.answers} answers to ${plan.sure} valid requests`;
  return null;
}
