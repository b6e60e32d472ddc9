/**
 * `deno task bench`: ferry side by side with its peers on this machine, in one run, written to
 * BENCHMARKS.md (with the machine, the date, the versions and the command) and docs/bench-cost.svg.
 *
 * Peers: nginx (1 worker and auto, sendfile on and off) fetched by curl (and by curl piped into openssl
 * dgst -sha256, a client that verifies like ferry's); iperf3 with 1 MiB writes as the
 * loopback ceiling; the seed's C server and client (scripts/seed/, built with gcc); an rsync daemon
 * fetched by `rsync -a --delete` (case 8). The many-connection
 * cases drive ferry and nginx with the same load generator (scripts/loadgen.ts). Missing tools are
 * installed from Debian's packages with apt-get, unless `--no-install` is given or the run is tiny, in
 * which case that peer is skipped and the report says so.
 *
 * Cases (see scripts/bench/cases.ts): 1 one large file to /dev/null (and syscalls per MiB), 2 the same to
 * disk, 3 fan-out, 4 small files, 5 connections held by slow readers, 6 classic mode with the seed's
 * client, 7 how cost grows with clients and file size, and the server's start-up time; 8 (see
 * scripts/bench/mirror_case.ts) `client.ts mirror` against rsync on three trees, and a fan-out; 9 (see
 * scripts/bench/compression_case.ts) `get` with and without `--compress` over a 100 Mbit/s relay.
 *
 * Flags: `--quick` (a reduced set, under two minutes), `--size MiB` (the large file; below 16 a tiny run
 * for tests), `--runs N`, `--cases 1,2,...,9,start`, `--no-install`, `--output FILE` (default
 * BENCHMARKS.md; `-` prints the report only).
 *
 * Every process it starts is stopped on exit, on failure and on Ctrl-C.
 *
 * @module
 */

import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import {
  type Bench,
  case1,
  case2,
  case3,
  case4,
  case5,
  case6,
  case7,
  makeFiles,
  type Profile,
  PROFILES,
  startup,
  WORKERS,
} from "./bench/cases.ts";
import {
  buildSeed,
  ensureTools,
  nginxName,
  repo,
  type Server,
  startFerry,
  startNginx,
  versionOf,
} from "./bench/peers.ts";
import { case8, MIRROR_TOOLS } from "./bench/mirror_case.ts";
import { case9 } from "./bench/compression_case.ts";
import { stopAll } from "./bench/procs.ts";
import { type Section, svgChart } from "./bench/report.ts";

const ALL_CASES = ["start", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
/** The tools of cases 1-7 (case 8 brings its own). */
const SHARED_TOOLS = ["nginx", "curl", "iperf3", "strace", "gcc", "openssl"];

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean" },
    size: { type: "string" },
    runs: { type: "string" },
    cases: { type: "string" },
    "no-install": { type: "boolean" },
    output: { type: "string" },
  },
});

const size = flags.size === undefined ? undefined : Number(flags.size);
const runsFlag = flags.runs === undefined ? undefined : Number(flags.runs);
if (
  (size !== undefined && !(size > 0)) ||
  (runsFlag !== undefined && !(Number.isInteger(runsFlag) && runsFlag > 0))
) {
  console.error("bench: --size and --runs must be positive numbers");
  Deno.exit(2);
}
const base: Profile = flags.quick
  ? PROFILES.quick
  : size !== undefined && size < 16
  ? PROFILES.tiny
  : PROFILES.full;
const profile: Profile = {
  ...base,
  bigMiB: size ?? base.bigMiB,
  runs: runsFlag ?? base.runs,
  shortRuns: runsFlag ?? base.shortRuns,
};
const selected = (flags.cases ?? ALL_CASES.join(",")).split(",").map((c) => c.trim());
const unknown = selected.filter((c) => !ALL_CASES.includes(c));
if (unknown.length > 0) {
  console.error(`bench: unknown case(s) ${unknown.join(", ")}; cases are ${ALL_CASES.join(", ")}`);
  Deno.exit(2);
}
const install = !flags["no-install"] && profile.name !== "tiny";
const output = flags.output ?? repo("BENCHMARKS.md");
const log = (line: string) => console.error(`bench: ${line}`);

const root = await Deno.makeTempDir({ prefix: "ferry-bench-" });
let cleaning: Promise<void> | null = null;
const cleanUp = () =>
  cleaning ??= (async () => {
    await stopAll();
    await Deno.remove(root, { recursive: true }).catch(() => {});
  })();
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, async () => {
    log(`${signal}: stopping every process started`);
    await cleanUp();
    Deno.exit(130);
  });
}

function loadAverage(): string {
  return Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
}

async function machine(): Promise<string> {
  const cpu = (await Deno.readTextFile("/proc/cpuinfo")).match(/model name\s*:\s*(.*)/)?.[1] ?? "unknown CPU";
  const mem = Math.round(Deno.systemMemoryInfo().total / 2 ** 30);
  return `${navigator.hardwareConcurrency} x ${cpu}, ${mem} GiB RAM, Linux ${Deno.osRelease()}`;
}

try {
  const started = performance.now();
  const loadBefore = loadAverage();
  const date = new Date().toISOString().slice(0, 16).replace("T", " ");
  const wants = (c: string) => selected.includes(c);
  // Cases 1-7 share one ferry server, the nginx servers and the files; cases 8 and 9 have their own.
  const shared = selected.some((c) => c !== "8" && c !== "9");
  const { available: tools, notes } = await ensureTools(
    [...(shared ? SHARED_TOOLS : []), ...(wants("8") ? MIRROR_TOOLS : [])],
    install,
    log,
  );
  const sections: Section[] = [];
  const chart: Bench["chart"] = [];
  if (shared) {
    const files = await makeFiles(root, profile, log);
    log("starting ferry");
    const ferry = await startFerry({
      root,
      push: `${root}/${files.big}`,
      workers: WORKERS,
      connsPerWorker: 2000,
      queue: 20_000,
    });
    const nginx: Server[] = [];
    let nginxMany: Server | null = null;
    let nginxSmall: Server | null = null;
    if (tools.has("nginx")) {
      log("starting nginx");
      let i = 0;
      if (wants("1")) {
        for (const workers of [1, "auto"] as const) {
          for (const [sendfile, nopush] of [[true, false], [true, true], [false, false]]) {
            nginx.push(
              await startNginx({
                root,
                dir: `${root}/.nginx-${i++}`,
                workers,
                sendfile,
                nopush,
                connections: 4096,
              }),
            );
          }
        }
      }
      // The many-connection cases: as many workers as ferry, sendfile on; tcp_nopush off, its best for large
      // files, and (for small files, where it was a little ahead) on.
      const many = (nopush: boolean) =>
        (navigator.hardwareConcurrency === WORKERS
          ? nginx.find((s) => s.name === nginxName({ workers: "auto", sendfile: true, nopush }))
          : undefined) ??
          startNginx({
            root,
            dir: `${root}/.nginx-many${nopush ? "-nopush" : ""}`,
            workers: WORKERS,
            sendfile: true,
            nopush,
            connections: 4096,
          });
      nginxMany = await many(false);
      if (wants("3") || wants("4")) nginxSmall = await many(true);
    }
    const seed = tools.has("gcc") ? await buildSeed(root) : null;
    if (!seed) notes.push("gcc is not installed: the seed's C server and client are skipped");
    const bench: Bench = {
      profile,
      root,
      tools,
      notes,
      log,
      ferry,
      nginx,
      nginxMany,
      nginxSmall,
      bestNginx: null,
      seed,
      files,
      chart,
    };
    const cases: [string, (b: Bench) => Promise<Section>][] = [
      ["start", startup],
      ["1", case1],
      ["2", case2],
      ["3", case3],
      ["4", case4],
      ["5", case5],
      ["6", case6],
      ["7", case7],
    ];
    for (const [id, fn] of cases) {
      if (!wants(id)) continue;
      log(`case ${id}`);
      sections.push(await fn(bench));
    }
    log("stopping servers");
    for (const s of new Set([ferry, ...nginx, ...[nginxMany, nginxSmall].filter((s) => s !== null)])) {
      await s.stop();
    }
  }
  if (wants("8")) {
    log("case 8");
    sections.push(await case8({ profile: profile.name, root, tools, notes, log }));
  }
  if (wants("9")) {
    log("case 9");
    sections.push(await case9({ profile: profile.name, root, log }));
  }
  const loadAfter = loadAverage();
  const minutes = (performance.now() - started) / 60_000;

  const versions = [`Deno ${Deno.version.deno}`];
  for (const tool of [...SHARED_TOOLS, "rsync"]) {
    if (tools.has(tool)) versions.push(`${tool} ${await versionOf(tool)}`);
  }
  const command = `deno task bench${Deno.args.length ? " " + Deno.args.join(" ") : ""}`;
  const headlines = sections.flatMap((s) =>
    s.body.filter((l) => l.startsWith("**") || /ferry's server is/.test(l))
  );
  const report = [
    "# Benchmarks",
    "",
    `Produced by \`${command}\` (profile: ${profile.name}; ${profile.shortRuns} runs per measurement in`,
    `cases 1, 2, 3 and 6, ${profile.runs} in the others; servers alternating within each run) on`,
    `${date} UTC, in ${minutes.toFixed(1)} minutes.`,
    "",
    `Machine: ${await machine()}. Load average before the run: ${loadBefore}; after: ${loadAfter}.`,
    "",
    `Versions: ${versions.join("; ")}.`,
    "",
    `Every server listens on 127.0.0.1. ferry runs ${WORKERS} worker processes (\`--workers ${WORKERS}\`);`,
    "nginx runs from a generated config (no access log, keep-alive without a request limit, `open_file_cache`",
    "for up to 10,000 files, as ferry's workers keep small replies in memory), ferry with",
    "`--request-log off` (its own lines still on stderr). Figures are",
    "medians over the runs with min-max beside them; each ratio is ferry's median over its peer's, both from",
    "this same run. GB/s = 10^9 bytes per second. Every client and server shares the machine's cores.",
    "",
    ...(notes.length > 0 ? ["Skipped:", "", ...notes.map((n) => `- ${n}`), ""] : []),
    "## Headline",
    "",
    ...headlines.flatMap((h) => [`- ${h.replace(/^\*\*|\*\*/g, "")}`]),
    "",
    ...sections.flatMap((s) => [`## ${s.title}`, "", ...s.body]),
    "## What was tried",
    "",
    // Kept by hand beside the script: development measurements that no single run of it repeats.
    (await Deno.readTextFile(repo("scripts/bench/tried.md"))).trimEnd(),
    "",
    "## Reliability",
    "",
    // Kept by hand too: the fuzzer, soak and flood runs (scripts/fuzz.ts, soak.ts, flood.ts), not run here.
    (await Deno.readTextFile(repo("scripts/bench/reliability.md"))).trimEnd(),
    "",
  ].join("\n");
  console.log(report);
  if (output !== "-") {
    await Deno.mkdir(dirname(output), { recursive: true });
    await Deno.writeTextFile(output, report);
    if (chart.length > 0) {
      const svg = join(dirname(output), "docs", "bench-cost.svg");
      await Deno.mkdir(dirname(svg), { recursive: true });
      await Deno.writeTextFile(svg, svgChart("ferry vs nginx: how cost grows (medians)", chart));
      log(`wrote ${output} and ${svg}`);
    } else {
      log(`wrote ${output}`);
    }
  }
} finally {
  await cleanUp();
}
