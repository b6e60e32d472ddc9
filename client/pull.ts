/**
 * `client pull`: receives the file a classic-mode (seed-compatible) server pushes on every connection: a
 * name frame, content frames of at most 1000 bytes, an end frame. Classic mode has no sizes, hashes or
 * offsets, so there is no resume; the file is published atomically, and a connection that ends without
 * the end frame is a failure (a classic server says BUSY that way too), retried like `get`.
 *
 * @module
 */

import { createSha256, loadHashing } from "../hashing.ts";
import { join } from "node:path";
import type { Deadline } from "./deadline.ts";
import { classify, protocolError } from "./failure.ts";
import type { FileReport } from "./fetch_file.ts";
import { FrameReader, TruncatedError } from "./frame_reader.ts";
import { CLASSIC_CHUNK } from "../framing.ts";
import type { Progress } from "./progress.ts";
import { withRetries } from "./retry.ts";
import { connectTcp, type Endpoint } from "./session.ts";
import { intoDirectory, openSink, type Sink } from "./sink.ts";

/** How to pull. */
export interface PullOptions {
  /** Give up connecting after this long, in milliseconds. */
  connectTimeoutMs: number;
  /** Fail a read that waits this long without a byte, in milliseconds. */
  stallTimeoutMs: number;
  /** Retries after the first try. */
  retries: number;
  /** No retry starts later than this after the first try, in milliseconds. */
  retryMaxTimeMs?: number;
  /** The run's deadline. */
  deadline: Deadline;
  /** Shows the transfer (its size is not known in advance: shown as bytes so far). */
  progress: Progress;
}

/** A file name a classic server may give: a plain base name, nothing that walks directories. */
function checkPushedName(name: string): string {
  if (name === "" || name === "." || name === ".." || name.includes("/") || name.includes("\0")) {
    throw protocolError(`the server's file name ${JSON.stringify(name)} is not a plain file name`);
  }
  return name;
}

/** One connection: receive the pushed file into `output` (a directory, or the file to write). */
async function pullOnce(endpoint: Endpoint, output: string, options: PullOptions, report: FileReport) {
  const conn = await connectTcp(endpoint, { ...options, signal: options.deadline.signal });
  const onAbort = () => conn.close();
  options.deadline.signal.addEventListener("abort", onAbort, { once: true });
  const reader = new FrameReader(conn, { stallTimeoutMs: options.stallTimeoutMs });
  let sink: Sink | null = null;
  try {
    const nameLen = await reader.readLength("the name frame");
    if (nameLen <= 0 || nameLen > CLASSIC_CHUNK) throw protocolError(`name frame length ${nameLen}`);
    let name: string;
    try {
      name = new TextDecoder("utf-8", { fatal: true }).decode(
        await reader.readExact(nameLen, "the name frame"),
      );
    } catch (e) {
      if (e instanceof TruncatedError) throw e;
      throw protocolError("the file name is not UTF-8");
    }
    report.path = name;
    report.target = intoDirectory(output) ? join(output, checkPushedName(name)) : output;
    sink = await openSink(report.target);
    await loadHashing();
    const hash = createSha256();
    let received = 0;
    options.progress.start(name, 0, 0);
    for (;;) {
      const len = await reader.readLength("a content frame");
      if (len === 0) break;
      if (len < 0 || len > CLASSIC_CHUNK) {
        throw protocolError(`content frame length ${len} (classic frames are 0-1000)`);
      }
      for await (const chunk of reader.readChunks(len, "a content frame")) {
        await sink.write(chunk);
        hash.update(chunk);
        report.bytes += chunk.byteLength;
        options.progress.advance(chunk.byteLength);
      }
      received += len;
    }
    await sink.commit({});
    sink = null;
    report.size = received;
    report.sha256 = hash.digest("hex");
  } finally {
    options.progress.end();
    options.deadline.signal.removeEventListener("abort", onAbort);
    reader.dispose();
    await sink?.abort();
    try {
      conn.close();
    } catch { /* closed by the stall watchdog or the deadline */ }
  }
}

/**
 * Receives the pushed file into `output`: a directory (under the name the server gives; default `.`),
 * a file path, or `-`. Never throws: failures are in the report.
 */
export async function pull(
  endpoint: Endpoint,
  output: string | null,
  options: PullOptions,
): Promise<FileReport> {
  const started = performance.now();
  const report: FileReport = {
    path: "",
    target: output ?? ".",
    status: "failed",
    bytes: 0,
    seconds: 0,
    attempts: 0,
  };
  try {
    await withRetries((n) => {
      report.attempts = n;
      return pullOnce(endpoint, output ?? ".", options, report);
    }, {
      retries: options.retries,
      maxTimeMs: options.retryMaxTimeMs,
      signal: options.deadline.signal,
      verdict: (e) => classify(e),
    });
    report.status = "updated";
  } catch (e) {
    report.error = options.deadline.expired ? options.deadline.error() : classify(e);
  }
  report.seconds = (performance.now() - started) / 1000;
  return report;
}
