import assert from "node:assert/strict";
import { repoPath } from "./helpers.ts";

Deno.test("the benchmark script runs end to end on a tiny case and prints its tables", async () => {
  // A tiny run never installs anything: peers that are missing (nginx, curl, iperf3, strace, gcc) are
  // skipped and the report says so.
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      repoPath("scripts/bench.ts"),
      "--size",
      "1",
      "--runs",
      "1",
      "--no-install",
      "--output",
      "-",
    ],
    stdin: "null",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  assert.match(
    stdout,
    /\| request mode: ferry client get -o \/dev\/null \(verifies SHA-256\) \| \d+\.\d+ \|/,
  );
  assert.match(
    stdout,
    /\| request mode: ferry client get -o \/dev\/null --no-verify \(size checked only\) \| \d+\.\d+ \|/,
  );
  assert.match(stdout, /\| classic mode: ferry client pull -o \/dev\/null \| \d+\.\d+ \|/);
  // With gcc the seed's C server and client are built and compared; without it the report says so.
  assert.match(stdout, /ferry's server is \d+\.\dx the seed's C server|no gcc/);
  // The load generator drove ferry in the many-connection cases, and no request failed.
  assert.match(stdout, /\| loadgen \(ferry protocol\) -> ferry \(2 workers\) \| - \| - \| \d+\.\d+ /);
  assert.match(stdout, /\| 4 KiB \| new per file \| 2 \| [\d,]+ /);
  // ferry over HTTP, driven by the same generator as nginx.
  assert.match(stdout, /\| loadgen \(HTTP\) -> ferry \(2 workers\) over HTTP \| - \| - \| \d+\.\d+ /);
  // The report's own line says which requests failed: the message quotes it, not the whole report.
  assert.match(stdout, /No request failed\./, stdout.match(/Failed requests: [^\n]*/)?.[0]);
  assert.match(stdout, /\| ferry \(2 workers\) \| 50 of 50 \|/);
  assert.match(stdout, /\| loadgen as a classic client, 1 stream: ferry server \| \d+\.\d+ \|/);
  // Case 9: the compressible file crossed the slow link compressed, the random one raw.
  assert.match(
    stdout,
    /\| 100 Mbit\/s \| log-like text, --compress \| [\d.]+ \([\d.-]+\) \| [\d.]+ \| [\d,]+ \| 0\.[0-4]\d\d \|/,
  );
  assert.match(
    stdout,
    /\| 100 Mbit\/s \| random bytes, --compress \| [\d.]+ \([\d.-]+\) \| [\d.]+ \| [\d,]+ \| 1\.000 \|/,
  );
  assert.match(stdout, /\| ferry server, ready with 2 workers \| \d+\.\d+ \|/);
  // Case 8: ferry's mirror copied the tree, found nothing changed and followed the edit, each checked with
  // diff -r; then the fan-out's clients all made exact copies. Nothing changed and the edit (edited again
  // for each pass) are run more than once: their rows show the range of the runs.
  for (const round of ["first copy", "nothing changed", "edit"]) {
    const range = round === "first copy" ? "" : " \\([\\d.]+-[\\d.]+\\)";
    assert.match(
      stdout,
      new RegExp(
        `\\| ${round} \\| ferry mirror --delete \\(server: 2 workers\\) \\| [\\d.]+${range} \\|.*\\| ok \\|`,
      ),
    );
  }
  // The fan-out: a first copy into each client's empty folder, then the fan-out's own edit, all exact.
  for (const round of ["first copy", "edit"]) {
    assert.match(
      stdout,
      new RegExp(
        `\\| ${round} \\| ferry mirror --delete \\(server: 2 workers\\) \\| [\\d.]+ \\| \\d+ \\|.*\\| ok \\|`,
      ),
    );
  }
  // The tiny tree's edit can cost the rsync daemon less than one 10 ms tick of CPU: that ratio is then "-".
  assert.match(stdout, /The edit, ferry ÷ rsync: [\d.]+x by the time .*, ([\d.]+x|-) by the server's CPU/);
});

Deno.test("BENCHMARKS.md's hand-kept sections are scripts/bench/tried.md and reliability.md as they are", async () => {
  // The benchmark writes them from those files: an entry added to BENCHMARKS.md alone is lost at the next run.
  const report = await Deno.readTextFile(repoPath("BENCHMARKS.md"));
  const section = (title: string, next?: string) => {
    const start = report.indexOf(`\n## ${title}\n\n`);
    assert.ok(start >= 0, `BENCHMARKS.md has no "## ${title}" section`);
    const end = next === undefined ? report.length : report.indexOf(`\n## ${next}\n`, start);
    return report.slice(start + title.length + 6, end).trimEnd();
  };
  const kept = async (name: string) => (await Deno.readTextFile(repoPath(`scripts/bench/${name}`))).trimEnd();
  assert.equal(section("What was tried", "Reliability"), await kept("tried.md"));
  assert.equal(section("Reliability"), await kept("reliability.md"));
});
