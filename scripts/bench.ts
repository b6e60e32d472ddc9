/**
 * `deno task bench`: throughput of ferry's data path, measured side by side in one run, written to
 * BENCHMARKS.md with the machine, the date and the command.
 *
 * Cases (each run several times, alternating, median and min-max reported):
 * - request mode: ferry server + ferry client (`get -o /dev/null`), one large file;
 * - classic mode: ferry server + ferry client (`pull -o /dev/null`);
 * - classic mode with the seed's own client (C, built from `scripts/seed/` when gcc is present), against
 *   ferry and against the seed's C server, so the ratio shows what ferry's worker gains over the seed.
 *
 * Flags: `--quick` (256 MiB, 1 run: a developer's loop), `--size MiB`, `--runs N`, `--output FILE`
 * (default BENCHMARKS.md; `-` prints only).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";

const repo = (p: string) => fileURLToPath(new URL(`../${p}`, import.meta.url));

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean" },
    size: { type: "string" },
    runs: { type: "string" },
    output: { type: "string" },
  },
});
const sizeMiB = Number(flags.size ?? (flags.quick ? 256 : 1024));
const runs = Number(flags.runs ?? (flags.quick ? 1 : 3));
const output = flags.output ?? repo("BENCHMARKS.md");
if (!(sizeMiB > 0) || !(runs > 0)) {
  console.error("bench: --size and --runs must be positive numbers");
  Deno.exit(2);
}

/** Every process this script started, stopped on exit, failure or Ctrl-C. */
const started = new Set<Deno.ChildProcess>();
function stopAll(): void {
  for (const p of started) {
    try {
      p.kill("SIGTERM");
    } catch { /* already gone */ }
  }
}
Deno.addSignalListener("SIGINT", () => {
  stopAll();
  Deno.exit(130);
});

const work = await Deno.makeTempDir({ prefix: "ferry-bench-" });

async function makeData(path: string, bytes: number): Promise<void> {
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  const block = crypto.getRandomValues(new Uint8Array(1 << 16));
  const big = new Uint8Array(1 << 20);
  for (let i = 0; i < big.length; i += block.length) big.set(block, i);
  for (let left = bytes; left > 0; left -= big.length) {
    big[0] = left & 0xff;
    const n = Math.min(left, big.length);
    let done = 0;
    while (done < n) done += await file.write(big.subarray(done, n));
  }
  file.close();
}

/** Starts a server process and resolves once `ready` matches its stderr; returns it and its ports. */
async function startProcess(
  command: string,
  args: string[],
  ready: RegExp,
): Promise<{ process: Deno.ChildProcess; lines: string[] }> {
  const process = new Deno.Command(command, { args, stdin: "null", stdout: "piped", stderr: "piped" })
    .spawn();
  started.add(process);
  const lines: string[] = [];
  const decoder = new TextDecoder();
  let found: () => void;
  const isReady = new Promise<void>((resolve) => found = resolve);
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    let rest = "";
    for await (const chunk of stream) {
      const parts = (rest + decoder.decode(chunk)).split("\n");
      rest = parts.pop()!;
      for (const line of parts) {
        if (lines.length < 64) lines.push(line);
        if (ready.test(line)) found();
      }
    }
  };
  pump(process.stdout);
  pump(process.stderr);
  await Promise.race([
    isReady,
    process.status.then(() => Promise.reject(new Error(`${command} exited:\n${lines.join("\n")}`))),
  ]);
  return { process, lines };
}

async function stopProcess(process: Deno.ChildProcess): Promise<void> {
  try {
    process.kill("SIGTERM");
  } catch { /* gone */ }
  await process.status;
  started.delete(process);
}

/** Runs a command to completion and returns its wall time in seconds; throws if it fails. */
async function timed(command: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command(command, { args, stdin: "null", stdout: "null", stderr: "piped" })
    .output();
  const seconds = (performance.now() - t0) / 1000;
  if (!out.success) {
    throw new Error(`${command} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return seconds;
}

async function buildSeed(): Promise<{ server: string; client: string } | null> {
  const gcc = await new Deno.Command("gcc", { args: ["--version"], stdout: "null", stderr: "null" }).output()
    .catch(() => null);
  if (!gcc?.success) return null;
  const built = { server: `${work}/seed_server`, client: `${work}/seed_client` };
  for (const [name, out] of [["seed_server", built.server], ["seed_client", built.client]]) {
    await timed("gcc", ["-O2", "-o", out, repo(`scripts/seed/${name}.c`)]);
  }
  return built;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

async function machine(): Promise<string> {
  const cpu = (await Deno.readTextFile("/proc/cpuinfo")).match(/model name\s*:\s*(.*)/)?.[1] ?? "unknown CPU";
  const mem = Math.round(Deno.systemMemoryInfo().total / 2 ** 30);
  return `${navigator.hardwareConcurrency} x ${cpu}, ${mem} GiB RAM, Linux ${Deno.osRelease()}, Deno ${Deno.version.deno}`;
}

interface Case {
  name: string;
  peer?: string;
  run: () => Promise<number>;
}

const bytes = sizeMiB * 2 ** 20;
const results = new Map<string, number[]>();
try {
  const data = `${work}/data.bin`;
  console.error(`bench: writing a ${sizeMiB} MiB test file`);
  await makeData(data, bytes);
  const deno = Deno.execPath();
  const ferry = await startProcess(deno, [
    "run",
    "--allow-all",
    repo("server.ts"),
    "--listen",
    "127.0.0.1:0",
    "--root",
    work,
    "--push-listen",
    "127.0.0.1:0",
    "--push",
    data,
    "--workers",
    "2",
  ], /ready with/);
  const ports = ferry.lines.filter((l) => l.includes("listening on")).map((l) =>
    Number(/:(\d+) \(/.exec(l)![1])
  );
  const [requestPort, classicPort] = ports;
  const client = (args: string[]) =>
    timed(deno, ["run", "--allow-all", repo("client.ts"), "--quiet", ...args]);
  const cases: Case[] = [
    {
      name: "request mode: ferry client get -o /dev/null",
      run: () => client(["get", `127.0.0.1:${requestPort}`, "data.bin", "-o", "/dev/null"]),
    },
    {
      name: "classic mode: ferry client pull -o /dev/null",
      run: () => client(["pull", `127.0.0.1:${classicPort}`, "-o", "/dev/null"]),
    },
  ];
  const seed = await buildSeed();
  let seedServer: Deno.ChildProcess | null = null;
  if (seed) {
    const seed0 = await startProcess(seed.server, ["127.0.0.1", "0", "2", data], /listening on/);
    seedServer = seed0.process;
    const seedPort = Number(/:(\d+)$/.exec(seed0.lines.find((l) => l.includes("listening on"))!)![1]);
    cases.push(
      {
        name: "classic mode, seed C client: ferry server",
        run: () => timed(seed.client, ["127.0.0.1", String(classicPort), "/dev/null"]),
      },
      {
        name: "classic mode, seed C client: seed C server",
        peer: "seed",
        run: () => timed(seed.client, ["127.0.0.1", String(seedPort), "/dev/null"]),
      },
    );
  } else {
    console.error("bench: gcc not found: the seed-client cases are skipped");
  }
  for (let r = 0; r < runs; r++) {
    for (const c of cases) {
      const seconds = await c.run();
      results.set(c.name, [...results.get(c.name) ?? [], seconds]);
      console.error(`bench: run ${r + 1}/${runs}: ${c.name}: ${(bytes / seconds / 1e9).toFixed(2)} GB/s`);
    }
  }
  await stopProcess(ferry.process);
  if (seedServer) await stopProcess(seedServer);

  const gbps = (s: number) => bytes / s / 1e9;
  const rows = cases.map((c) => {
    const speeds = results.get(c.name)!.map(gbps);
    return { name: c.name, median: median(speeds), min: Math.min(...speeds), max: Math.max(...speeds) };
  });
  const seedRow = rows.find((r) => r.name.endsWith("seed C server"));
  const ferrySeedRow = rows.find((r) => r.name.endsWith("ferry server"));
  const command = `deno task bench${Deno.args.length ? " " + Deno.args.join(" ") : ""}`;
  const report = [
    "# Benchmarks",
    "",
    `Produced by \`${command}\` on ${new Date().toISOString().slice(0, 10)}.`,
    "",
    `Machine: ${await machine()}.`,
    "",
    `One ${sizeMiB} MiB file over loopback (127.0.0.1), ${runs} run(s) per case, cases alternating; ferry with`,
    "2 workers. Times are wall-clock times of the whole client process (start-up included), so small",
    "sizes understate throughput. GB/s = 10^9 bytes per second.",
    "",
    "| case | median GB/s | min-max GB/s |",
    "| --- | ---: | ---: |",
    ...rows.map((r) => `| ${r.name} | ${r.median.toFixed(2)} | ${r.min.toFixed(2)}-${r.max.toFixed(2)} |`),
    "",
    seedRow && ferrySeedRow
      ? `Classic mode with the seed's own client: ferry's server is ${
        (ferrySeedRow.median / seedRow.median).toFixed(1)
      }x the seed's C server (median over median).`
      : "The seed's C server and client were not built (no gcc): no ratio.",
    "",
  ].join("\n");
  console.log(report);
  if (output !== "-") await Deno.writeTextFile(output, report);
} finally {
  stopAll();
  await Deno.remove(work, { recursive: true });
}
