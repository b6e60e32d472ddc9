/**
 * The benchmark's cases. Each one runs its measurements `runs` times, alternating the servers within
 * every run, and returns a report section with medians, min-max and ferry's ratio to its peer.
 *
 * @module
 */

import type { LoadResult } from "../loadgen.ts";
import { percentile } from "./histogram.ts";
import {
  type FerryServer,
  iperf3,
  repo,
  type Seed,
  type Server,
  startFerry,
  startNginx,
  startSeedServer,
} from "./peers.ts";
import { cpuSeconds, fdCount, peakSampler, processTree, residentKiB, run, start } from "./procs.ts";
import {
  bytesLabel,
  int,
  medianRange,
  num,
  type Panel,
  range,
  ratio,
  type Section,
  summarize,
  type Summary,
  table,
} from "./report.ts";

/** How much a run measures: `full` (the default), `quick` (under two minutes) or `tiny` (tests). */
export interface Profile {
  /** Its name, for the report. */
  name: "full" | "quick" | "tiny";
  /** Runs per measurement. */
  runs: number;
  /** Runs per measurement of the cases that are quick to run and vary widely: 1, 2, 3 and 6. */
  shortRuns: number;
  /** The large file of cases 1, 2 and 6, in MiB. */
  bigMiB: number;
  /** Case 3: clients, and the file they all fetch (MiB). */
  fanClients: number;
  /** Case 3's file size in MiB. */
  fanMiB: number;
  /** Case 4: file sizes in bytes. */
  smallSizes: number[];
  /** Case 4: concurrent clients. */
  smallClients: number[];
  /** Case 4: distinct files per size. */
  smallFiles: number;
  /** Seconds per load measurement (cases 4 and 7). */
  pointSeconds: number;
  /** Case 5: slow readers held open. */
  hold: number;
  /** Case 5: seconds they are held before the probes. */
  holdSeconds: number;
  /** Case 5: probe fetches. */
  probes: number;
  /** Case 5: connections of the burst that follows. */
  burst: number;
  /** Case 7: client counts (1 MiB files, a new connection per file). */
  sweepClients: number[];
  /** Case 7: file sizes in bytes (fetched by `sweepSizeClients` clients). */
  sweepSizes: number[];
  /** Case 7: clients of the size sweep. */
  sweepSizeClients: number;
  /** Start-up measurements. */
  startRuns: number;
}

const KiB = 1024, MiB = 1024 * 1024, GiB = 1024 * MiB;

/** The three profiles. */
export const PROFILES: Record<Profile["name"], Profile> = {
  full: {
    name: "full",
    runs: 3,
    shortRuns: 5,
    bigMiB: 1024,
    fanClients: 64,
    fanMiB: 64,
    smallSizes: [4 * KiB, 64 * KiB],
    smallClients: [2, 8, 64],
    smallFiles: 100,
    pointSeconds: 1.5,
    hold: 10_000,
    holdSeconds: 3,
    probes: 5,
    burst: 300,
    sweepClients: [1, 10, 100, 1000],
    sweepSizes: [4 * KiB, 64 * KiB, MiB, 16 * MiB, 256 * MiB, GiB],
    sweepSizeClients: 10,
    startRuns: 5,
  },
  quick: {
    name: "quick",
    runs: 1,
    shortRuns: 1,
    bigMiB: 256,
    fanClients: 64,
    fanMiB: 16,
    smallSizes: [4 * KiB, 64 * KiB],
    smallClients: [8, 64],
    smallFiles: 100,
    pointSeconds: 0.5,
    hold: 2000,
    holdSeconds: 1,
    probes: 3,
    burst: 100,
    sweepClients: [1, 100, 1000],
    sweepSizes: [4 * KiB, MiB, 256 * MiB],
    sweepSizeClients: 10,
    startRuns: 3,
  },
  tiny: {
    name: "tiny",
    runs: 1,
    shortRuns: 1,
    bigMiB: 1,
    fanClients: 8,
    fanMiB: 1,
    smallSizes: [4 * KiB],
    smallClients: [2],
    smallFiles: 10,
    pointSeconds: 0.2,
    hold: 50,
    holdSeconds: 0.2,
    probes: 2,
    burst: 20,
    sweepClients: [1, 10],
    sweepSizes: [4 * KiB, MiB],
    sweepSizeClients: 2,
    startRuns: 1,
  },
};

/** The files served, as paths relative to the served directory. */
export interface Files {
  /** The large file (cases 1, 2, 6). */
  big: string;
  /** Its size. */
  bigBytes: number;
  /** Case 3's file. */
  fan: string;
  /** Its size. */
  fanBytes: number;
  /** Case 4's files by size. */
  small: Map<number, string[]>;
  /** Case 7's files by size. */
  sweep: Map<number, string>;
}

/** What every case needs: the profile, the servers, the files and a place for notes. */
export interface Bench {
  /** The profile. */
  profile: Profile;
  /** The served directory (a temporary directory). */
  root: string;
  /** Tools available (nginx, curl, iperf3, strace, gcc). */
  tools: Set<string>;
  /** Lines for the report's notes: peers skipped and why. */
  notes: string[];
  /** Progress on stderr. */
  log: (line: string) => void;
  /** The ferry server of cases 1-4, 6 and 7. */
  ferry: FerryServer;
  /** The nginx configurations of case 1. */
  nginx: Server[];
  /**
   * nginx with as many workers as ferry, for the many-connection cases (null without nginx): sendfile on,
   * tcp_nopush off (its best for large files).
   */
  nginxMany: Server | null;
  /** The same with tcp_nopush on, its best for small files; cases 3 and 4 compare ferry with the better. */
  nginxSmall: Server | null;
  /** The best nginx configuration of case 1 (set by case 1). */
  bestNginx: Server | null;
  /** The seed's binaries (null without gcc). */
  seed: Seed | null;
  /** The files. */
  files: Files;
  /** Charts made by case 7. */
  chart: Panel[];
}

/** The benchmark's ferry and nginx configuration for the many-connection cases. */
export const WORKERS = 2;

/** Writes a file of `bytes` pseudo-random bytes. */
export async function makeFile(path: string, bytes: number): Promise<void> {
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  const block = crypto.getRandomValues(new Uint8Array(1 << 16));
  const big = new Uint8Array(Math.min(1 << 20, Math.max(bytes, 1)));
  for (let i = 0; i < big.length; i += block.length) big.set(block.subarray(0, big.length - i), i);
  for (let left = bytes; left > 0; left -= big.length) {
    big[0] = left & 0xff;
    const n = Math.min(left, big.length);
    let done = 0;
    while (done < n) done += await file.write(big.subarray(done, n));
  }
  file.close();
}

/** Creates every file the profile needs under `root`. */
export async function makeFiles(root: string, p: Profile, log: (line: string) => void): Promise<Files> {
  log(`writing test files (${p.bigMiB} MiB, ${p.fanMiB} MiB, small files, sweep files)`);
  const files: Files = {
    big: "big.bin",
    bigBytes: p.bigMiB * MiB,
    fan: "fan.bin",
    fanBytes: p.fanMiB * MiB,
    small: new Map(),
    sweep: new Map(),
  };
  await makeFile(`${root}/${files.big}`, files.bigBytes);
  await makeFile(`${root}/${files.fan}`, files.fanBytes);
  await Deno.mkdir(`${root}/small`, { recursive: true });
  for (const size of p.smallSizes) {
    const paths: string[] = [];
    for (let i = 0; i < p.smallFiles; i++) {
      const path = `small/${size}-${i}.bin`;
      await makeFile(`${root}/${path}`, size);
      paths.push(path);
    }
    files.small.set(size, paths);
  }
  await Deno.mkdir(`${root}/sweep`, { recursive: true });
  for (const size of new Set([...p.sweepSizes, MiB])) {
    const path = `sweep/${size}.bin`;
    await makeFile(`${root}/${path}`, size);
    files.sweep.set(size, path);
  }
  return files;
}

/** A loadgen run against a server, with the server's CPU time and peak memory meanwhile. */
export interface LoadRun {
  /** What the generator reported. */
  result: LoadResult;
  /** CPU seconds the server's processes used during the run. */
  serverCpu: number;
  /** Peak resident memory of the server's processes during the run, KiB. */
  serverPeakRssKiB: number;
}

/** `deno run` arguments that start the load generator against `server`. */
function loadgenCommand(server: Server): string[] {
  return [
    "run",
    "--allow-all",
    repo("scripts/loadgen.ts"),
    "--protocol",
    server.protocol,
    "--target",
    `127.0.0.1:${server.port}`,
  ];
}

/** Runs `scripts/loadgen.ts` against `server` with `args`. */
export async function loadgen(server: Server, args: string[]): Promise<LoadRun> {
  const cpu0 = cpuSeconds(server.pids);
  const sampler = peakSampler(() => residentKiB(server.pids), 50);
  let out;
  let serverPeakRssKiB = 0;
  try {
    out = await run(Deno.execPath(), [...loadgenCommand(server), ...args]);
  } finally {
    serverPeakRssKiB = sampler.stop();
  }
  const serverCpu = cpuSeconds(server.pids) - cpu0;
  const result = JSON.parse(out.stdout.trim().split("\n").pop()!) as LoadResult;
  return { result, serverCpu, serverPeakRssKiB };
}

/** The generator's CPU use as a percentage of one core over its run. */
function genCpuPercent(r: LoadResult): number {
  return ((r.cpu.user + r.cpu.system) / r.seconds) * 100;
}

/** "0.30x to 0.46x": the range of a list of ratios. */
function spread(xs: number[]): string {
  if (xs.length === 0) return "-";
  const lo = Math.min(...xs), hi = Math.max(...xs);
  return lo === hi ? ratio(lo, 1) : `${ratio(lo, 1)} to ${ratio(hi, 1)}`;
}

function errorText(errors: Record<string, number>): string {
  const entries = Object.entries(errors);
  return entries.length === 0 ? "none" : entries.map(([k, v]) => `${k}: ${v}`).join(", ");
}

/** Collects named series of numbers over runs. */
class Runs {
  readonly #values = new Map<string, number[]>();
  add(key: string, value: number): void {
    this.#values.set(key, [...(this.#values.get(key) ?? []), value]);
  }
  get(key: string): Summary {
    return summarize(this.#values.get(key) ?? []);
  }
}

const gbps = (bytes: number, seconds: number) => bytes / seconds / 1e9;

/** Runs the ferry client; returns its process wall time and the transfer time it reports. */
async function ferryClient(args: string[]): Promise<{ wall: number; own: number }> {
  const out = await run(Deno.execPath(), ["run", "--allow-all", repo("client.ts"), ...args]);
  const own = Number(/ in (\d+\.\d+)s/.exec(out.stderr)?.[1] ?? NaN);
  return { wall: out.seconds, own };
}

/** Runs curl; returns its process wall time and its own total time. */
async function curl(url: string, output: string): Promise<{ wall: number; own: number }> {
  const out = await run("curl", ["-s", "-S", "-f", "-o", output, "-w", "%{time_total}", url]);
  return { wall: out.seconds, own: Number(out.stdout.trim()) };
}

/** One measured variant of a case. */
interface Variant {
  name: string;
  run: () => Promise<void>;
}

/** Runs `variants` `runs` times, alternating them within each run, after one warm-up of each. */
async function alternate(
  b: Bench,
  label: string,
  variants: Variant[],
  warmUp = true,
  runs = b.profile.runs,
): Promise<void> {
  if (warmUp) {
    for (const v of variants) await v.run();
  }
  for (let r = 0; r < runs; r++) {
    for (const v of variants) {
      b.log(`${label}: run ${r + 1}/${runs}: ${v.name}`);
      await v.run();
    }
  }
}

// --- case 1 -------------------------------------------------------------------------------------------

/** Syscall counts of a server during one transfer (strace -c -f). */
interface SyscallCount {
  total: number;
  top: { name: string; calls: number }[];
}

/** The table of syscall counts per server: totals, per `unit` (the total over `units`), the most frequent. */
function syscallTable(counts: [string, SyscallCount][], unit: string, units: number): string[] {
  return table(
    ["server", "syscalls", unit, "most frequent (calls)"],
    counts.map(([name, c]) => [
      name,
      int(c.total),
      num(c.total / units, 1),
      c.top.map((t) => `${t.name} ${int(t.calls)}`).join(", "),
    ]),
  );
}

async function straceDuring(pids: number[], action: () => Promise<void>, dir: string): Promise<SyscallCount> {
  const tids = pids.flatMap((pid) => {
    try {
      return [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => e.name);
    } catch {
      return [];
    }
  });
  const file = `${dir}/strace-${crypto.randomUUID().slice(0, 8)}.txt`;
  const tracer = start("strace", ["-c", "-f", "-o", file, ...tids.flatMap((t) => ["-p", t])]);
  // Attached once every thread has a tracer (TracerPid in /proc).
  const traced = (tid: string) => {
    try {
      return !/TracerPid:\s+0\n/.test(Deno.readTextFileSync(`/proc/${tid}/status`));
    } catch {
      return true; // gone
    }
  };
  const deadline = performance.now() + 10_000;
  while (!tids.every(traced) && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  await new Promise((r) => setTimeout(r, 200));
  try {
    await action();
  } finally {
    tracer.process.kill("SIGINT");
    await tracer.process.status;
  }
  const text = await Deno.readTextFile(file);
  await Deno.remove(file);
  const rows: { name: string; calls: number }[] = [];
  let total = 0;
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length < 5 || !/^\d/.test(f[0])) continue;
    const name = f[f.length - 1];
    const calls = Number(f[3]);
    if (name === "total") total = calls;
    else rows.push({ name, calls });
  }
  rows.sort((a, b) => b.calls - a.calls);
  return { total, top: rows.slice(0, 10) };
}

/** Case 1: one large file, one stream, to /dev/null; plus syscalls per MiB. */
export async function case1(b: Bench): Promise<Section> {
  const bytes = b.files.bigBytes;
  const runs = new Runs();
  const ferryName = "request mode: ferry client get -o /dev/null (verifies SHA-256)";
  const ferryUnverifiedName = "request mode: ferry client get -o /dev/null --no-verify (size checked only)";
  const url = (s: Server) => `http://127.0.0.1:${s.port}/${b.files.big}`;
  const withCpu = async (s: Server, key: string, f: () => Promise<{ wall: number; own: number }>) => {
    const cpu0 = cpuSeconds(s.pids);
    const t = await f();
    runs.add(`${key}:wall`, gbps(bytes, t.wall));
    runs.add(`${key}:own`, gbps(bytes, t.own));
    runs.add(`${key}:cpu`, (cpuSeconds(s.pids) - cpu0) / (bytes / GiB));
  };
  const getBig = ["get", `127.0.0.1:${b.ferry.port}`, b.files.big, "-o", "/dev/null"];
  const variants: Variant[] = [{
    name: ferryName,
    run: () => withCpu(b.ferry, "ferry", () => ferryClient(getBig)),
  }, {
    name: ferryUnverifiedName,
    run: () => withCpu(b.ferry, "ferry-nv", () => ferryClient([...getBig, "--no-verify"])),
  }];
  const overHttp = ferryHttp(b);
  if (b.tools.has("curl")) {
    variants.push({
      name: `${overHttp.name} + curl`,
      run: () => withCpu(overHttp, "ferry-http", () => curl(url(overHttp), "/dev/null")),
    });
    for (const s of b.nginx) {
      variants.push({
        name: `${s.name} + curl`,
        run: () => withCpu(s, s.name, () => curl(url(s), "/dev/null")),
      });
    }
  }
  const verifying = b.tools.has("curl") && b.tools.has("openssl") ? b.nginxMany : null;
  if (verifying) {
    const pipeline = `curl -s -S -f ${url(verifying)} | openssl dgst -sha256 >/dev/null`;
    variants.push({
      name: `${verifying.name} + curl | openssl dgst -sha256`,
      run: async () => {
        const cpu0 = cpuSeconds(verifying.pids);
        const t = await run("bash", ["-o", "pipefail", "-c", pipeline]);
        runs.add("verify:wall", gbps(bytes, t.seconds));
        runs.add("verify:cpu", (cpuSeconds(verifying.pids) - cpu0) / (bytes / GiB));
      },
    });
  }
  const genVariant = (s: Server, key: string): Variant => ({
    name: `loadgen -> ${s.name}`,
    run: async () => {
      const r = await loadgen(s, ["--path", b.files.big, "--clients", "1", "--requests", "1"]);
      runs.add(`${key}:own`, gbps(r.result.bytes, r.result.seconds));
      runs.add(`${key}:cpu`, r.serverCpu / (bytes / GiB));
      runs.add(`${key}:gen`, genCpuPercent(r.result));
    },
  });
  variants.push(genVariant(b.ferry, "gen-ferry"));
  variants.push(genVariant(overHttp, "gen-ferry-http"));
  if (b.nginxMany) variants.push(genVariant(b.nginxMany, "gen-nginx"));
  if (b.tools.has("iperf3")) {
    variants.push({
      name: "iperf3",
      run: async () => runs.add("iperf3:own", (await iperf3(bytes)).gbps),
    });
  }
  await alternate(b, "case 1", variants, true, b.profile.shortRuns);

  // Like with like: the unverified ferry client against curl (which checks nothing) and iperf3; the
  // verifying one against curl piped into a SHA-256.
  const ferryWall = runs.get("ferry-nv:wall").median;
  const ferryOwn = runs.get("ferry-nv:own").median;
  const verifiedWall = runs.get("ferry:wall").median;
  let best: Server | null = null;
  for (const s of b.nginx) {
    if (best === null || runs.get(`${s.name}:wall`).median > runs.get(`${best.name}:wall`).median) best = s;
  }
  b.bestNginx = best;
  const rows: string[][] = [["ferry", ferryName], ["ferry-nv", ferryUnverifiedName]].map(([key, name]) => [
    name,
    num(runs.get(`${key}:wall`).median),
    range(runs.get(`${key}:wall`)),
    medianRange(runs.get(`${key}:own`)),
    num(runs.get(`${key}:cpu`).median),
    "",
  ]);
  const bestWall = best ? runs.get(`${best.name}:wall`).median : NaN;
  if (b.tools.has("curl")) {
    const w = runs.get("ferry-http:wall"), o = runs.get("ferry-http:own");
    rows.push([
      `${overHttp.name} + curl -o /dev/null`,
      num(w.median),
      range(w),
      medianRange(o),
      num(runs.get("ferry-http:cpu").median),
      best ? `${ratio(w.median, bestWall)} (÷ nginx's best, both curl)` : "",
    ]);
    for (const s of b.nginx) {
      const w = runs.get(`${s.name}:wall`), o = runs.get(`${s.name}:own`);
      rows.push([
        `${s.name} + curl -o /dev/null${s === best ? " **(best)**" : ""}`,
        num(w.median),
        range(w),
        medianRange(o),
        num(runs.get(`${s.name}:cpu`).median),
        `${ratio(ferryWall, w.median)} (own timers: ${ratio(ferryOwn, o.median)}; verifying: ${
          ratio(verifiedWall, w.median)
        })`,
      ]);
    }
  }
  if (verifying) {
    const v = runs.get("verify:wall");
    rows.push([
      `${verifying.name} + curl, piped into \`openssl dgst -sha256\` (verifies like ferry's client)`,
      num(v.median),
      range(v),
      "-",
      num(runs.get("verify:cpu").median),
      `${ratio(verifiedWall, v.median)} (verifying ferry)`,
    ]);
  }
  const genFerry = runs.get("gen-ferry:own");
  rows.push([
    `loadgen (ferry protocol) -> ${b.ferry.name}`,
    "-",
    "-",
    medianRange(genFerry),
    num(runs.get("gen-ferry:cpu").median),
    "",
  ]);
  const genHttp = runs.get("gen-ferry-http:own");
  rows.push([
    `loadgen (HTTP) -> ${overHttp.name}`,
    "-",
    "-",
    medianRange(genHttp),
    num(runs.get("gen-ferry-http:cpu").median),
    b.nginxMany ? `${ratio(genHttp.median, runs.get("gen-nginx:own").median)} (÷ loadgen -> nginx)` : "",
  ]);
  if (b.nginxMany) {
    const g = runs.get("gen-nginx:own");
    rows.push([
      `loadgen (HTTP) -> ${b.nginxMany.name}`,
      "-",
      "-",
      medianRange(g),
      num(runs.get("gen-nginx:cpu").median),
      ratio(genFerry.median, g.median),
    ]);
  }
  const ip = runs.get("iperf3:own");
  if (b.tools.has("iperf3")) {
    rows.push([
      "iperf3, 1 MiB writes (loopback ceiling)",
      "-",
      "-",
      medianRange(ip),
      "-",
      `${ratio(ferryOwn, ip.median)} (ferry --no-verify, own timer)`,
    ]);
  }
  const body = [
    `One ${
      bytesLabel(bytes)
    } file, one TCP stream over 127.0.0.1, received into /dev/null. By default ferry's`,
    "client computes the SHA-256 of what it receives and checks it against the server's, even into /dev/null;",
    "curl checks nothing. So ferry runs twice: as it runs by default, and with `--no-verify` (sizes and framing",
    "checked, no hash), which is the like-for-like row against curl and iperf3 (ratios in the last column use",
    "it, with the verifying client's ratio beside). A row pipes curl into `openssl dgst -sha256` (SHA-NI, as",
    'fast a SHA-256 as this CPU has) for a client doing the verifying client\'s work. "Process" times',
    "are the client process's wall time, start-up included (Deno starts in tens of milliseconds, curl in a few);",
    '"own timer" is the transfer as the client itself measures it (ferry: connect to published, curl:',
    "`time_total`, the load generator: connect to last byte, iperf3: its receiver's rate). Server CPU is the",
    "CPU time of the server's master and workers per GiB sent.",
    "",
    ...table(
      [
        "case",
        "median GB/s (process)",
        "min-max GB/s",
        "GB/s, own timer: median (min-max)",
        "server CPU s/GiB",
        "ferry ÷ this",
      ],
      rows,
    ),
    "",
  ];
  if (best) {
    body.push(
      `**ferry vs nginx's best configuration (${best.name}), neither client verifying (ferry --no-verify): ${
        ratio(ferryWall, runs.get(`${best.name}:wall`).median)
      } by process time, ${
        ratio(ferryOwn, runs.get(`${best.name}:own`).median)
      } by the clients' own timers; ferry verifying SHA-256 (its default): ${
        ratio(verifiedWall, runs.get(`${best.name}:wall`).median)
      }** (target: >= 1.0x).`,
    );
  }
  if (best && b.tools.has("curl")) {
    body.push(
      `**ferry over HTTP vs nginx's best configuration, both fetched by curl: ${
        ratio(runs.get("ferry-http:wall").median, bestWall)
      } by process time, ${
        ratio(runs.get("ferry-http:own").median, runs.get(`${best.name}:own`).median)
      } by ` +
        "curl's own timer.**",
    );
  }
  if (b.tools.has("iperf3")) {
    body.push(
      `**ferry (--no-verify) vs iperf3: ${ratio(ferryOwn, ip.median)} by ferry's own timer, ${
        ratio(ferryWall, ip.median)
      } by process time** (target: >= 0.6x).`,
    );
  }
  if (verifying) {
    body.push(
      `**ferry vs nginx + curl | openssl dgst -sha256 (both verify): ${
        ratio(verifiedWall, runs.get("verify:wall").median)
      } by process time.**`,
    );
  }
  body.push(
    `Load generator CPU on its single-stream runs: ${
      num(runs.get("gen-ferry:gen").median, 0)
    }% of one core ` +
      `(ferry), ${num(runs.get("gen-nginx:gen").median, 0)}% (nginx).`,
    "",
  );

  // Syscalls per MiB sent, on the servers only.
  if (b.tools.has("strace")) {
    b.log("case 1: counting syscalls with strace");
    const counts: [string, SyscallCount][] = [];
    counts.push([
      b.ferry.name,
      await straceDuring(b.ferry.pids, async () => {
        await ferryClient(["get", `127.0.0.1:${b.ferry.port}`, b.files.big, "-o", "/dev/null"]);
      }, b.root),
    ]);
    if (best && b.tools.has("curl")) {
      counts.push([
        best.name,
        await straceDuring(best.pids, () => curl(url(best!), "/dev/null").then(() => {}), b.root),
      ]);
    }
    body.push(
      "Syscalls per MiB sent (`strace -c -f` attached to the server's master and workers during one transfer",
      "of the file above; strace slows the transfer, so only the counts mean something):",
      "",
      ...syscallTable(counts, "per MiB", bytes / MiB),
      "",
    );
  } else {
    body.push("strace is not installed: no syscall counts.", "");
  }
  return { title: "1. One large file, one stream, to /dev/null", body };
}

// --- case 2 -------------------------------------------------------------------------------------------

/** Case 2: the same file written to disk. */
export async function case2(b: Bench): Promise<Section> {
  const bytes = b.files.bigBytes;
  const out = `${b.root}/out`;
  await Deno.mkdir(out, { recursive: true });
  const runs = new Runs();
  const variants: Variant[] = [{
    name: "ferry client get (to disk)",
    run: async () => {
      const t = await ferryClient([
        "get",
        `127.0.0.1:${b.ferry.port}`,
        b.files.big,
        "-o",
        `${out}/ferry.bin`,
      ]);
      runs.add("ferry", gbps(bytes, t.wall));
      await Deno.remove(`${out}/ferry.bin`);
    },
  }];
  const peer = b.bestNginx ?? b.nginxMany;
  if (peer && b.tools.has("curl")) {
    variants.push({
      name: `${peer.name} + curl (to disk)`,
      run: async () => {
        const t = await curl(`http://127.0.0.1:${peer.port}/${b.files.big}`, `${out}/curl.bin`);
        runs.add("curl", gbps(bytes, t.wall));
        await Deno.remove(`${out}/curl.bin`);
      },
    });
  }
  await alternate(b, "case 2", variants, true, b.profile.shortRuns);
  const f = runs.get("ferry");
  const rows = [[
    "ferry server + ferry client `get -o FILE`",
    num(f.median),
    range(f),
    "a part file beside the target, SHA-256 of the bytes received checked against the server's, size check, fsync, rename, directory fsync",
    "",
  ]];
  if (peer && b.tools.has("curl")) {
    const c = runs.get("curl");
    rows.push([
      `${peer.name} + curl -o FILE`,
      num(c.median),
      range(c),
      "writes the target in place: no verification, no fsync, no atomic publish",
      ratio(f.median, c.median),
    ]);
  }
  return {
    title: "2. The same file to disk",
    body: [
      `The ${bytesLabel(bytes)} file written to a file on the local disk (the page cache absorbs what is not`,
      "fsynced). Times are process wall times; the output is deleted after every run.",
      "",
      ...table(["case", "median GB/s", "min-max GB/s", "what the client does", "ferry ÷ this"], rows, [
        "l",
        "r",
        "r",
        "l",
        "r",
      ]),
      "",
    ],
  };
}

// --- case 3 -------------------------------------------------------------------------------------------

/** nginx's configurations for the many-connection cases (none without nginx). */
function manyNginx(b: Bench): Server[] {
  return [b.nginxMany, b.nginxSmall].filter((s): s is Server => s !== null);
}

/** The bench's ferry server spoken to in HTTP/1.1 on the same port (README "HTTP"). */
function ferryHttp(b: Bench): Server {
  return { ...b.ferry, name: `${b.ferry.name} over HTTP`, protocol: "http" };
}

/** Of `servers`, the one with the highest median of `metric` in `runs` (null if there are none). */
function bestBy(servers: Server[], runs: Runs, metric: string): Server | null {
  let best: Server | null = null;
  for (const s of servers) {
    if (best === null || runs.get(`${s.name}:${metric}`).median > runs.get(`${best.name}:${metric}`).median) {
      best = s;
    }
  }
  return best;
}

/** Case 3: many clients fetch the same file at once. */
export async function case3(b: Bench): Promise<Section> {
  const { fanClients } = b.profile;
  const servers = [b.ferry, ...manyNginx(b)];
  const runs = new Runs();
  const errors = new Map<string, Record<string, number>>();
  const variants = servers.map((s): Variant => ({
    name: s.name,
    run: async () => {
      const r = await loadgen(s, ["--path", b.files.fan, "--clients", String(fanClients), "--requests", "1"]);
      runs.add(`${s.name}:gbps`, gbps(r.result.bytes, r.result.seconds));
      runs.add(`${s.name}:slowest`, r.result.slowestClientSeconds);
      runs.add(`${s.name}:cpu`, r.serverCpu);
      runs.add(`${s.name}:gen`, genCpuPercent(r.result));
      runs.add(`${s.name}:completed`, r.result.completed);
      const e = errors.get(s.name) ?? {};
      for (const [k, v] of Object.entries(r.result.errors)) e[k] = (e[k] ?? 0) + v;
      errors.set(s.name, e);
    },
  }));
  await alternate(b, "case 3", variants, true, b.profile.shortRuns);
  const ferryGbps = runs.get(`${b.ferry.name}:gbps`).median;
  const ferrySlow = runs.get(`${b.ferry.name}:slowest`).median;
  const nginx = bestBy(manyNginx(b), runs, "gbps");
  const rows = servers.map((s) => [
    s.name,
    medianRange(runs.get(`${s.name}:gbps`)),
    medianRange(runs.get(`${s.name}:slowest`), 3),
    num(runs.get(`${s.name}:cpu`).median),
    `${num(runs.get(`${s.name}:gen`).median, 0)}%`,
    errorText(errors.get(s.name) ?? {}),
    s === b.ferry
      ? ""
      : `${ratio(ferryGbps, runs.get(`${s.name}:gbps`).median)} (slowest client: ${
        ratio(runs.get(`${s.name}:slowest`).median, ferrySlow)
      } as fast)`,
  ]);
  return {
    title: `3. Fan-out: ${fanClients} clients fetch the same ${bytesLabel(b.files.fanBytes)} file at once`,
    body: [
      `${fanClients} connections opened together by the load generator, each fetching the file once; aggregate`,
      "GB/s is all bytes over the time from the first connect to the last byte. Same generator and",
      `${WORKERS} worker processes for both servers. nginx runs with tcp_nopush off and on; ferry is compared`,
      "with the faster.",
      "",
      ...table(
        [
          "server",
          "aggregate GB/s: median (min-max)",
          "slowest client s: median (min-max)",
          "server CPU s",
          "generator CPU (% of a core)",
          "errors",
          "ferry ÷ this",
        ],
        rows,
      ),
      "",
      ...(nginx
        ? [
          `**Fan-out, ferry vs nginx's faster configuration (same generator, ${WORKERS} workers each): ${
            ratio(ferryGbps, runs.get(`${nginx.name}:gbps`).median)
          } in aggregate GB/s; slowest client ${
            ratio(runs.get(`${nginx.name}:slowest`).median, ferrySlow)
          } as fast** (target: >= 1.0x).`,
          "",
        ]
        : []),
    ],
  };
}

// --- case 4 -------------------------------------------------------------------------------------------

/** Case 4: small files, new connection per file and many requests per connection. */
export async function case4(b: Bench): Promise<Section> {
  const overHttp = ferryHttp(b);
  const servers = [b.ferry, overHttp, ...manyNginx(b)];
  const ratios: Record<number, number[]> = { 0: [], 1: [] };
  const httpRatios: Record<number, number[]> = { 0: [], 1: [] };
  const rows: string[][] = [];
  const errorLines: string[] = [];
  for (const size of b.profile.smallSizes) {
    for (const perConn of [1, 0]) {
      for (const clients of b.profile.smallClients) {
        const runs = new Runs();
        const variants = servers.map((s): Variant => ({
          name: s.name,
          run: async () => {
            const r = await loadgen(s, [
              ...b.files.small.get(size)!.flatMap((p) => ["--path", p]),
              "--clients",
              String(clients),
              "--per-conn",
              String(perConn),
              "--seconds",
              String(b.profile.pointSeconds),
            ]);
            runs.add(`${s.name}:rate`, r.result.completed / r.result.seconds);
            runs.add(`${s.name}:p99`, percentile(r.result.latency, 0.99));
            runs.add(`${s.name}:cpu`, (r.serverCpu / Math.max(1, r.result.completed)) * 1e6);
            runs.add(`${s.name}:gen`, genCpuPercent(r.result));
            if (Object.keys(r.result.errors).length > 0) {
              errorLines.push(
                `${s.name}, ${bytesLabel(size)}, ${clients} clients: ${errorText(r.result.errors)}`,
              );
            }
          },
        }));
        const label = `case 4: ${bytesLabel(size)}, ${
          perConn === 1 ? "new connection per file" : "keep-alive"
        }, ${clients} clients`;
        await alternate(b, label, variants, false);
        const f = runs.get(`${b.ferry.name}:rate`);
        const nginx = bestBy(manyNginx(b), runs, "rate");
        const n = nginx ? runs.get(`${nginx.name}:rate`) : null;
        const h = runs.get(`${overHttp.name}:rate`);
        if (n) ratios[perConn].push(f.median / n.median);
        if (n) httpRatios[perConn].push(h.median / n.median);
        rows.push([
          bytesLabel(size),
          perConn === 1 ? "new per file" : "one per client",
          String(clients),
          `${int(f.median)} (${range(f, 0, (x) => int(x))})`,
          n ? `${int(n.median)} (${range(n, 0, (x) => int(x))})` : "-",
          nginx === null ? "-" : nginx === b.nginxSmall ? "on" : "off",
          n ? ratio(f.median, n.median) : "-",
          `${int(h.median)} (${range(h, 0, (x) => int(x))})`,
          n ? ratio(h.median, n.median) : "-",
          medianRange(runs.get(`${b.ferry.name}:p99`)),
          medianRange(runs.get(`${overHttp.name}:p99`)),
          nginx ? medianRange(runs.get(`${nginx.name}:p99`)) : "-",
          num(runs.get(`${b.ferry.name}:cpu`).median, 0),
          num(runs.get(`${overHttp.name}:cpu`).median, 0),
          nginx ? num(runs.get(`${nginx.name}:cpu`).median, 0) : "-",
          `${num(runs.get(`${b.ferry.name}:gen`).median, 0)}% / ${
            nginx ? num(runs.get(`${nginx.name}:gen`).median, 0) : "-"
          }%`,
        ]);
      }
    }
  }
  // Syscalls per file on the servers, 4 KiB files, a new connection per file.
  const counts: [string, SyscallCount][] = [];
  const perClient = b.profile.name === "tiny" ? 10 : 250;
  const smallest = b.profile.smallSizes[0];
  if (b.tools.has("strace")) {
    b.log("case 4: counting syscalls with strace");
    for (const s of servers) {
      counts.push([
        s.name,
        await straceDuring(s.pids, async () => {
          await loadgen(s, [
            ...b.files.small.get(smallest)!.flatMap((p) => ["--path", p]),
            "--clients",
            "8",
            "--per-conn",
            "1",
            "--requests",
            String(perClient),
          ]);
        }, b.root),
      ]);
    }
  }
  const files = perClient * 8;
  const syscalls = counts.length === 0 ? ["strace is not installed: no syscall counts.", ""] : [
    `Syscalls per file on the server (\`strace -c -f\` on master and workers while 8 clients fetch ${files}`,
    `${
      bytesLabel(smallest)
    } files, a new connection per file; strace slows the servers, only counts matter):`,
    "",
    ...syscallTable(counts, "per file", files),
    "",
  ];
  return {
    title: "4. Small files: files/s and p99 latency",
    body: [
      `${b.profile.smallFiles} distinct files of each size, fetched in turn by each client for ${b.profile.pointSeconds}s`,
      'per measurement. "new per file": a new TCP connection for every file (latency from connect to last',
      "byte), whose request says it is the last, as a one-shot client's does (ferry's end frame goes with it, as",
      "ferry's `get` sends it; HTTP asks `Connection: close`), so either server closes once it has answered;",
      '"one per client": every client keeps one connection for all its requests (latency from request',
      `to last byte). ferry and nginx both have ${WORKERS} worker processes and are driven by the same generator.`,
      "nginx runs with tcp_nopush off and on; each row shows the faster (its figures and which it was).",
      '"ferry over HTTP" is the same ferry server asked by the same generator in HTTP/1.1, as nginx is, on the',
      "same port (README, HTTP): each request opens the file; ferry's cache of whole small replies is for its own",
      "protocol.",
      "Server CPU is the server's CPU time per file served.",
      "",
      ...table(
        [
          "file",
          "connections",
          "clients",
          "ferry files/s: median (min-max)",
          "nginx files/s: median (min-max)",
          "nginx tcp_nopush",
          "ferry ÷ nginx",
          "ferry over HTTP files/s",
          "ferry over HTTP ÷ nginx",
          "ferry p99 ms",
          "ferry over HTTP p99 ms",
          "nginx p99 ms",
          "ferry CPU µs/file",
          "ferry over HTTP CPU µs/file",
          "nginx CPU µs/file",
          "generator CPU (ferry / nginx runs)",
        ],
        rows,
      ),
      "",
      errorLines.length === 0 ? "No request failed." : `Failed requests: ${errorLines.join("; ")}.`,
      "",
      ...(b.nginxMany
        ? [
          `**Small files, ferry vs nginx's faster configuration (same generator, ${WORKERS} workers each): ${
            spread(ratios[1])
          } with a new ` +
          `connection per file, ${spread(ratios[0])} with one connection per client** (target: >= 1.0x).`,
          "",
          `**ferry over HTTP (the same server, the same port, answering the same generator's HTTP/1.1) vs nginx: ${
            spread(httpRatios[1])
          } with a new connection per file, ${spread(httpRatios[0])} with one connection per client.**`,
          "",
        ]
        : []),
      ...syscalls,
    ],
  };
}

// --- case 5 -------------------------------------------------------------------------------------------

/** What case 5 measured on one server. */
interface HoldFigures {
  name: string;
  result: LoadResult;
  rssBeforeKiB: number;
  rssHeldKiB: number;
  fdsBefore: number;
  fdsHeld: number;
  pids: number;
  acceptedAfter: boolean;
  /** Kernel TCP memory of the whole machine (both ends of every connection), MiB. */
  tcpMemBeforeMiB: number;
  tcpMemHeldMiB: number;
}

/** The kernel's TCP buffer memory in use, all sockets of the machine (/proc/net/sockstat), MiB. */
function tcpMemMiB(): number {
  const m = /TCP: .* mem (\d+)/.exec(Deno.readTextFileSync("/proc/net/sockstat"));
  return m ? (Number(m[1]) * 4096) / MiB : NaN;
}

async function holdOn(b: Bench, server: Server): Promise<HoldFigures> {
  const p = b.profile;
  const small = b.files.small.get(p.smallSizes[0])![0];
  // Warm up: one fetch of the probe file, so the baseline includes a served request.
  await loadgen(server, ["--path", small, "--clients", "1", "--requests", "1"]);
  const pids = processTree(server.pids[0]);
  const rssBeforeKiB = residentKiB(pids);
  const fdsBefore = fdCount(pids);
  const tcpMemBeforeMiB = tcpMemMiB();
  const gen = start(Deno.execPath(), [
    ...loadgenCommand(server),
    "--hold",
    String(p.hold),
    "--hold-path",
    b.files.fan,
    "--hold-seconds",
    String(p.holdSeconds),
    "--path",
    small,
    "--probes",
    String(p.probes),
    "--burst",
    String(p.burst),
  ]);
  await gen.waitFor(/"event":"held"/, 180_000);
  await new Promise((r) => setTimeout(r, Math.min(1000, (p.holdSeconds * 1000) / 2)));
  const rssHeldKiB = residentKiB(pids);
  const fdsHeld = fdCount(pids);
  const tcpMemHeldMiB = tcpMemMiB();
  const status = await gen.process.status;
  if (!status.success) throw new Error(`loadgen (hold) failed: ${gen.lines.slice(-10).join("\n")}`);
  const result = JSON.parse(gen.stdout[gen.stdout.length - 1]) as LoadResult;
  // The server still accepts and serves after the slow readers are gone.
  const after = await loadgen(server, ["--path", small, "--clients", "1", "--requests", "3"]);
  return {
    name: server.name,
    result,
    rssBeforeKiB,
    rssHeldKiB,
    fdsBefore,
    fdsHeld,
    pids: pids.length,
    acceptedAfter: after.result.completed === 3,
    tcpMemBeforeMiB,
    tcpMemHeldMiB,
  };
}

/** Case 5: many connections held open by slow readers. */
export async function case5(b: Bench): Promise<Section> {
  const p = b.profile;
  // Room for the held connections and 100 more; no queue, so past that a connection gets BUSY (planned).
  const perWorker = Math.ceil((p.hold + 100) / WORKERS);
  const figures: HoldFigures[] = [];
  b.log(`case 5: ferry with ${WORKERS} workers x ${perWorker} connections, queue 0; ${p.hold} slow readers`);
  const ferry = await startFerry({ root: b.root, workers: WORKERS, connsPerWorker: perWorker, queue: 0 });
  try {
    figures.push(await holdOn(b, ferry));
  } finally {
    await ferry.stop();
  }
  if (b.tools.has("nginx")) {
    b.log(`case 5: nginx with ${WORKERS} workers; ${p.hold} slow readers`);
    const nginx = await startNginx({
      root: b.root,
      dir: `${b.root}/.nginx-case5`,
      workers: WORKERS,
      sendfile: true,
      nopush: false,
      connections: p.hold + 2000,
    });
    try {
      figures.push(await holdOn(b, nginx));
    } finally {
      await nginx.stop();
    }
  }
  const rows = figures.map((f) => {
    const h = f.result.hold!;
    const probes = summarize(h.probesMs);
    const perConn = (f.rssHeldKiB - f.rssBeforeKiB) / Math.max(1, h.held);
    return [
      f.name,
      `${int(h.held)} of ${int(h.wanted)}`,
      num(h.openSeconds, 1),
      `${num(probes.median, 1)} (max ${num(probes.max, 1)})`,
      `${num(f.rssBeforeKiB / 1024, 1)} -> ${num(f.rssHeldKiB / 1024, 1)}`,
      num(perConn, 2),
      `${int(f.fdsBefore)} -> ${int(f.fdsHeld)}`,
      `${num(f.tcpMemBeforeMiB, 0)} -> ${num(f.tcpMemHeldMiB, 0)}`,
      `${h.burst.served} served, ${h.burst.busy} BUSY, other: ${errorText(h.burst.other)}`,
      `${int(h.stillOpen)} still open; errors: ${errorText(h.errors)}`,
      f.acceptedAfter ? "yes" : "**no**",
    ];
  });
  const ferryFig = figures[0];
  const fh = ferryFig.result.hold!;
  const ferryPerConn = (ferryFig.rssHeldKiB - ferryFig.rssBeforeKiB) / Math.max(1, fh.held);
  const otherErrors = Object.keys(fh.errors).length + Object.keys(fh.burst.other).length;
  return {
    title: `5. ${int(p.hold)} connections held open by slow readers`,
    body: [
      `The generator opens ${int(p.hold)} connections (at most 128 connecting at once), each asking for the`,
      `${
        bytesLabel(b.files.fanBytes)
      } file with a 4 KiB receive buffer and reading 8 KiB every 2 s, so every`,
      `transfer stays open. Once all are held it waits ${p.holdSeconds}s, fetches a ${
        bytesLabel(p.smallSizes[0])
      }`,
      `file ${p.probes} times on new connections (the latency a newcomer sees), then opens ${p.burst} connections at`,
      `once. ferry runs ${WORKERS} workers with room for ${
        int(perWorker * WORKERS)
      } connections and no queue, so the`,
      `burst's connections past that room are answered BUSY by design; nginx runs ${WORKERS} workers with`,
      "worker_connections above the load (it has no BUSY answer). Memory is the resident memory of the master",
      "and workers together (anonymous pages summed, file-backed pages such as the executable counted once);",
      "per held connection = (held - before) / held connections. After",
      "the run, a few more fetches check that the server still accepts and serves. This case runs once per",
      "server: it checks capacity rather than speed. Kernel TCP memory (socket",
      "buffers of both ends, whole machine) is outside every RSS. The slow readers announce a 1448-byte MSS, as",
      "on Ethernet; with loopback's 64 KiB segments the server's kernel would queue megabytes per connection.",
      "",
      ...table(
        [
          "server",
          "held",
          "seconds to open",
          "probe latency ms: median (max)",
          "RSS MiB before -> held",
          "KiB per held connection",
          "fds before -> held",
          "kernel TCP MiB before -> held",
          "burst",
          "slow readers at the end",
          "accepts after",
        ],
        rows,
      ),
      "",
      `**ferry: ${fh.held === fh.wanted ? "kept serving every held connection" : "did not hold them all"}, ` +
      `${num(ferryPerConn, 2)} KiB per held connection (target: within 8 KiB), ` +
      `${
        otherErrors === 0 ? "no error other than the planned BUSY" : "errors other than BUSY (see the table)"
      }.**`,
      "",
    ],
  };
}

// --- case 6 -------------------------------------------------------------------------------------------

/** Case 6: classic mode with seed-format clients, ferry vs the seed's C server. */
export async function case6(b: Bench): Promise<Section> {
  const bytes = b.files.bigBytes;
  const runs = new Runs();
  const classic: Server = { ...b.ferry, name: `${b.ferry.name}, classic listener`, protocol: "classic" };
  classic.port = b.ferry.classicPort;
  const timedOn = async (s: Server, key: string, f: () => Promise<number>) => {
    const cpu0 = cpuSeconds(s.pids);
    runs.add(`${key}`, gbps(bytes, await f()));
    runs.add(`${key}:cpu`, (cpuSeconds(s.pids) - cpu0) / (bytes / GiB));
  };
  const variants: Variant[] = [{
    name: "classic mode: ferry client pull -o /dev/null",
    run: () =>
      timedOn(
        classic,
        "pull",
        async () => (await ferryClient(["pull", `127.0.0.1:${classic.port}`, "-o", "/dev/null"])).wall,
      ),
  }];
  const streams = b.profile.fanClients >= 16 ? 16 : b.profile.fanClients;
  const servers: Server[] = [];
  let seedServer: Server | null = null;
  let ferryFan: Server | null = null;
  let seedFan: Server | null = null;
  const counts: [string, SyscallCount][] = [];
  try {
    if (b.seed) {
      const seed = b.seed;
      seedServer = {
        ...(await startSeedServer(seed, `${b.root}/${b.files.big}`, WORKERS)),
        protocol: "classic",
      };
      servers.push(seedServer);
      const seedClient = (s: Server) => async () =>
        (await run(seed.client, ["127.0.0.1", String(s.port), "/dev/null"])).seconds;
      variants.push(
        {
          name: "classic mode, seed C client: ferry server",
          run: () => timedOn(classic, "seed-ferry", seedClient(classic)),
        },
        {
          name: "classic mode, seed C client: seed C server",
          run: () => timedOn(seedServer!, "seed-seed", seedClient(seedServer!)),
        },
      );
    }
    // The same format read by the load generator: big reads, frames parsed in place, so the client is
    // not what limits the server.
    for (const [key, s] of [["gen-ferry", classic], ["gen-seed", seedServer]] as const) {
      if (s === null) continue;
      variants.push({
        name: `loadgen (classic), 1 stream -> ${s.name}`,
        run: async () => {
          const r = await loadgen(s, ["--clients", "1", "--requests", "1"]);
          runs.add(key, gbps(r.result.bytes, r.result.seconds));
          runs.add(`${key}:cpu`, r.serverCpu / (r.result.bytes / GiB));
        },
      });
    }
    // Many streams at once, on a smaller file: a second ferry and seed server pushing it.
    const fanPath = `${b.root}/${b.files.fan}`;
    const f = await startFerry({
      root: b.root,
      push: fanPath,
      workers: WORKERS,
      connsPerWorker: 64,
      queue: 1024,
    });
    ferryFan = {
      ...f,
      name: `${f.name}, classic listener`,
      protocol: "classic",
      port: f.classicPort,
      stop: f.stop,
    };
    if (b.seed) seedFan = { ...(await startSeedServer(b.seed, fanPath, WORKERS)), protocol: "classic" };
    for (const [key, s] of [["fan-ferry", ferryFan], ["fan-seed", seedFan]] as const) {
      if (s === null) continue;
      variants.push({
        name: `loadgen (classic), ${streams} streams -> ${s.name}`,
        run: async () => {
          const r = await loadgen(s, ["--clients", String(streams), "--requests", "1"]);
          runs.add(key, gbps(r.result.bytes, r.result.seconds));
          runs.add(`${key}:cpu`, r.serverCpu / (r.result.bytes / GiB));
          runs.add(`${key}:gen`, genCpuPercent(r.result));
        },
      });
    }
    await alternate(b, "case 6", variants, false, b.profile.shortRuns);
    if (b.tools.has("strace") && b.seed) {
      b.log("case 6: counting syscalls with strace");
      for (const s of [ferryFan, seedFan]) {
        if (s === null) continue;
        const seedClient = b.seed.client;
        counts.push([
          s.name,
          await straceDuring(s.pids, async () => {
            await run(seedClient, ["127.0.0.1", String(s.port), "/dev/null"]);
          }, b.root),
        ]);
      }
    }
  } finally {
    await seedServer?.stop();
    await ferryFan?.stop();
    await seedFan?.stop();
  }
  const row = (name: string, key: string, peerKey?: string) => {
    const x = runs.get(key);
    return [
      name,
      num(x.median),
      range(x),
      num(runs.get(`${key}:cpu`).median),
      peerKey ? ratio(runs.get(peerKey).median, x.median) : "",
    ];
  };
  const rows = [row("classic mode: ferry client pull -o /dev/null", "pull")];
  if (b.seed) {
    rows.push(
      row("classic mode, seed C client: ferry server", "seed-ferry"),
      row("classic mode, seed C client: seed C server", "seed-seed", "seed-ferry"),
      row(`loadgen as a classic client, 1 stream: ferry server`, "gen-ferry"),
      row(`loadgen as a classic client, 1 stream: seed C server`, "gen-seed", "gen-ferry"),
      row(`loadgen as a classic client, ${streams} streams: ferry server`, "fan-ferry"),
      row(`loadgen as a classic client, ${streams} streams: seed C server`, "fan-seed", "fan-ferry"),
    );
  } else {
    rows.push(
      row(`loadgen as a classic client, 1 stream: ferry server`, "gen-ferry"),
      row(`loadgen as a classic client, ${streams} streams: ferry server`, "fan-ferry"),
    );
  }
  const sf = runs.get("seed-ferry"), ss = runs.get("seed-seed");
  const body = [
    `The ${bytesLabel(bytes)} file pushed in classic mode (1000-byte frames) into /dev/null. ferry with`,
    `${WORKERS} workers, the seed's C server with ${WORKERS} children. The seed's C client reads each frame with`,
    "two recv loops, as the seed does (process wall time). The load generator reads the same format with",
    `large reads and parses the frames in place (its own timer); its ${streams}-stream runs fetch the`,
    `${bytesLabel(b.files.fanBytes)} file from a second pair of servers pushing that file.`,
    "Server CPU is the CPU time of the server's processes per GiB sent.",
    "",
    ...table(["case", "median GB/s", "min-max GB/s", "server CPU s/GiB", "ferry ÷ this"], rows),
    "",
    b.seed
      ? `Classic mode with the seed's own client: ferry's server is ${
        (sf.median / ss.median).toFixed(1)
      }x the seed's C server (median over median; target: >= 10x).`
      : "The seed's C server and client were not built (no gcc): no ratio.",
  ];
  if (b.seed) {
    body.push(
      `**Classic mode, ferry vs the seed's C server: ${
        ratio(sf.median, ss.median)
      } with the seed's C client, ${
        ratio(runs.get("gen-ferry").median, runs.get("gen-seed").median)
      } with the load generator (1 stream), ${
        ratio(runs.get("fan-ferry").median, runs.get("fan-seed").median)
      } (${streams} streams); the seed's server CPU per GiB is ${
        ratio(runs.get("gen-seed:cpu").median, runs.get("gen-ferry:cpu").median)
      } ferry's (1 stream)** (target: >= 10x).`,
    );
  }
  body.push("");
  if (counts.length > 0) {
    body.push(
      `Syscalls per MiB pushed in classic mode (\`strace -c -f\` on the server during one seed-client transfer`,
      `of the ${bytesLabel(b.files.fanBytes)} file):`,
      "",
      ...syscallTable(counts, "per MiB", b.files.fanBytes / MiB),
      "",
    );
  }
  return { title: "6. Classic mode with a seed-format client", body };
}

// --- case 7 -------------------------------------------------------------------------------------------

/** Case 7: throughput and memory as clients and file sizes grow; tables and the chart's panels. */
export async function case7(b: Bench): Promise<Section> {
  // A ferry server of its own, so that its memory is that of this sweep, not of the cases before.
  const ferry = await startFerry({ root: b.root, workers: WORKERS, connsPerWorker: 2000, queue: 20_000 });
  try {
    return await sweeps(b, ferry);
  } finally {
    await ferry.stop();
  }
}

async function sweeps(b: Bench, ferry: Server): Promise<Section> {
  const servers = [ferry, ...(b.nginxMany ? [b.nginxMany] : [])];
  const colors = ["#d9480f", "#1c7ed6"];
  type Point = { x: number; gbps: Summary; rssMiB: Summary; p99: Summary; gen: Summary; errors: string };
  const sweep = async (
    label: string,
    xs: number[],
    args: (x: number) => string[],
  ): Promise<Map<string, Point[]>> => {
    const out = new Map<string, Point[]>(servers.map((s) => [s.name, []]));
    for (const x of xs) {
      const runs = new Runs();
      const errors = new Map<string, Record<string, number>>();
      const variants = servers.map((s): Variant => ({
        name: s.name,
        run: async () => {
          const r = await loadgen(s, args(x));
          runs.add(`${s.name}:gbps`, gbps(r.result.bytes, r.result.seconds));
          runs.add(`${s.name}:rss`, r.serverPeakRssKiB / 1024);
          runs.add(`${s.name}:p99`, percentile(r.result.latency, 0.99));
          runs.add(`${s.name}:gen`, genCpuPercent(r.result));
          const e = errors.get(s.name) ?? {};
          for (const [k, v] of Object.entries(r.result.errors)) e[k] = (e[k] ?? 0) + v;
          errors.set(s.name, e);
        },
      }));
      await alternate(b, `case 7: ${label} ${x}`, variants, false);
      for (const s of servers) {
        out.get(s.name)!.push({
          x,
          gbps: runs.get(`${s.name}:gbps`),
          rssMiB: runs.get(`${s.name}:rss`),
          p99: runs.get(`${s.name}:p99`),
          gen: runs.get(`${s.name}:gen`),
          errors: errorText(errors.get(s.name) ?? {}),
        });
      }
    }
    return out;
  };
  const seconds = String(b.profile.pointSeconds);
  const byClients = await sweep("clients", b.profile.sweepClients, (c) => [
    "--path",
    b.files.sweep.get(MiB)!,
    "--clients",
    String(c),
    "--per-conn",
    "1",
    "--seconds",
    seconds,
  ]);
  const bySize = await sweep("size", b.profile.sweepSizes, (size) => [
    "--path",
    b.files.sweep.get(size)!,
    "--clients",
    String(b.profile.sweepSizeClients),
    "--per-conn",
    "1",
    "--seconds",
    seconds,
  ]);
  const tableOf = (data: Map<string, Point[]>, xName: string, xFmt: (x: number) => string) => {
    const f = data.get(ferry.name)!;
    const n = b.nginxMany ? data.get(b.nginxMany.name)! : null;
    return table(
      [
        xName,
        "ferry GB/s",
        "nginx GB/s",
        "ferry ÷ nginx",
        "ferry peak RSS MiB",
        "nginx peak RSS MiB",
        "ferry p99 ms",
        "nginx p99 ms",
        "generator CPU (ferry / nginx runs)",
        "failed requests (ferry / nginx)",
      ],
      f.map((p, i) => [
        xFmt(p.x),
        medianRange(p.gbps),
        n ? medianRange(n[i].gbps) : "-",
        n ? ratio(p.gbps.median, n[i].gbps.median) : "-",
        num(p.rssMiB.median, 1),
        n ? num(n[i].rssMiB.median, 1) : "-",
        num(p.p99.median, 1),
        n ? num(n[i].p99.median, 1) : "-",
        `${num(p.gen.median, 0)}% / ${n ? num(n[i].gen.median, 0) : "-"}%`,
        `${p.errors} / ${n ? n[i].errors : "-"}`,
      ]),
    );
  };
  const panel = (
    data: Map<string, Point[]>,
    title: string,
    xLabel: string,
    xTick: (x: number) => string,
    y: (p: Point) => number,
    yLabel: string,
  ): Panel => ({
    title,
    xLabel,
    yLabel,
    xTick,
    series: servers.map((s, i) => ({
      name: s.name,
      color: colors[i],
      points: data.get(s.name)!.map((p) => ({ x: p.x, y: y(p) })),
    })),
  });
  const headline7 = (): string[] => {
    if (!b.nginxMany) return [];
    const ratios = (data: Map<string, Point[]>) =>
      data.get(ferry.name)!.map((p, i) => p.gbps.median / data.get(b.nginxMany!.name)![i].gbps.median);
    const peak = (name: string) =>
      Math.max(...[...byClients.get(name)!, ...bySize.get(name)!].map((p) => p.rssMiB.median));
    return [
      `**How cost grows, ferry vs nginx: throughput ${spread(ratios(byClients))} across client counts, ${
        spread(ratios(bySize))
      } across file sizes; peak RSS ${num(peak(ferry.name), 0)} MiB for ferry vs ${
        num(peak(b.nginxMany.name), 0)
      } MiB for nginx.**`,
      "",
    ];
  };
  const shortBytes = (x: number) => bytesLabel(x).replace(/ ([KMG])iB$/, "$1");
  const clientsLabel = "concurrent clients (1 MiB files)";
  const sizeLabel = `file size (${b.profile.sweepSizeClients} clients)`;
  b.chart = [
    panel(byClients, "Throughput vs clients", clientsLabel, String, (p) => p.gbps.median, "GB/s"),
    panel(bySize, "Throughput vs file size", sizeLabel, shortBytes, (p) => p.gbps.median, "GB/s"),
    panel(
      byClients,
      "Server memory vs clients",
      clientsLabel,
      String,
      (p) => p.rssMiB.median,
      "peak RSS MiB",
    ),
    panel(
      bySize,
      "Server memory vs file size",
      sizeLabel,
      shortBytes,
      (p) => p.rssMiB.median,
      "peak RSS MiB",
    ),
  ];
  return {
    title: "7. How cost grows with clients and file size",
    body: [
      `Each point: the load generator for ${b.profile.pointSeconds}s, a new connection per file, ${WORKERS}`,
      "worker processes for both servers. Peak RSS is that of the server's master and workers together (as in",
      "case 5: anonymous pages summed, file-backed pages counted once; ferry's cached replies over 16 KiB are in",
      "a memory file outside every RSS, at most 8 MiB per worker), sampled",
      "every 50 ms during the point; ferry is started afresh for this case, so its memory is that of the sweep",
      "so far (points run in the order of the tables).",
      "",
      "![Throughput and memory vs clients and file size](docs/bench-cost.svg)",
      "",
      `By concurrent clients, each fetching a 1 MiB file again and again:`,
      "",
      ...tableOf(byClients, "clients", String),
      "",
      `By file size, ${b.profile.sweepSizeClients} clients:`,
      "",
      ...tableOf(bySize, "file", bytesLabel),
      "",
      ...headline7(),
    ],
  };
}

// --- start-up -----------------------------------------------------------------------------------------

/** Server start-up: ready with 2 workers, vs Deno's own start-up measured the same way. */
export async function startup(b: Bench): Promise<Section> {
  const hello = `${b.root}/.hello.ts`;
  await Deno.writeTextFile(hello, 'console.error("ready");\n');
  const runs = new Runs();
  for (let r = 0; r < b.profile.startRuns; r++) {
    b.log(`start-up: run ${r + 1}/${b.profile.startRuns}`);
    const t0 = performance.now();
    const p = start(Deno.execPath(), ["run", "--allow-all", hello]);
    await p.waitFor(/^ready$/);
    runs.add("deno", (performance.now() - t0) / 1000);
    await p.process.status;
    const ferry = await startFerry({ root: b.root, workers: WORKERS, connsPerWorker: 64, queue: 1024 });
    runs.add("ferry", ferry.readySeconds);
    await ferry.stop();
  }
  const d = runs.get("deno"), f = runs.get("ferry");
  return {
    title: "Server start-up",
    body: [
      "Time from spawning the process to the stderr line that says it is ready: for ferry, `ready with 2 workers` (the",
      "master has started both workers and accepts); for Deno, a script that only prints `ready`.",
      "",
      ...table(["what", "median s", "min-max s", "÷ Deno"], [
        ["`deno run` of a script printing one line", num(d.median, 3), range(d, 3), "1.00x"],
        ["ferry server, ready with 2 workers", num(f.median, 3), range(f, 3), ratio(f.median, d.median)],
      ]),
      "",
      `**ferry's start-up is ${ratio(f.median, d.median)} Deno's own** (target: within 3x).`,
      "",
    ],
  };
}
