/**
 * The network fuzzer (scripts/fuzz/fuzzer.ts) in CI: 10,000 generated frames against a real server, with a
 * normal client checking a ping and a get throughout. `deno task fuzz` runs the same with 1,000,000.
 */

import assert from "node:assert/strict";
import { runFuzz } from "../scripts/fuzz/fuzzer.ts";

Deno.test("10,000 fuzzed frames crash no worker nor the master, every answer follows the protocol, and a normal client is served throughout", async () => {
  const report = await runFuzz({ frames: 10_000, seed: 17, concurrency: 16 });
  const summary = JSON.stringify(report, null, 1);
  assert.ok(report.framesSent >= 10_000, summary);
  assert.deepEqual(report.crashes, { workerCrashes: [], masterAlive: true, workersLost: [] }, summary);
  assert.equal(report.masterExit, 0, summary);
  assert.equal(report.anomalies.count, 0, summary);
  assert.equal(report.normal.failed, 0, summary);
  assert.ok(report.normal.passed >= 1, summary);
  // The run reached the server's refusals as well as its answers.
  for (const result of ["ok", "BAD_REQUEST", "TOO_LARGE", "NOT_FOUND", "FORBIDDEN"]) {
    assert.ok((report.answers[result] ?? 0) > 0, `no ${result} answer: ${summary}`);
  }
});
