/**
 * Case 8: `client.ts mirror` against rsync (`rsync -a --delete` from an rsync daemon, and the same with
 * `--fsync`, the like-for-like row for ferry's durability) on three generated trees, through a counting
 * relay that sees both tools' bytes at the socket. Every round of every tree is checked with `diff -r`
 * afterwards; a failure (an exit code, a timeout, a difference) is reported as that tool's failure in that
 * round, and its copy is then repaired from the source so that every tool starts each round from the
 * same state. Then a fan-out: many clients mirror tree (a) from one server at once.
 *
 * @module
 */

import { join } from "node:path";
import { WORKERS } from "./cases.ts";
import { repo, startFerry, startRsyncDaemon } from "./peers.ts";
import { cpuSeconds, cpuSecondsWithReaped, processTree, run } from "./procs.ts";
import { startRelay } from "./relay.ts";
import { int, num, ratio, type Section, table } from "./report.ts";
import {
  describeTree,
  type EditSizes,
  makeTree,
  mixedEdit,
  roundsOf,
  treeBytes,
  type TreeSpec,
} from "./trees.ts";

const KiB = 1024, MiB = 1024 * KiB, GiB = 1024 * MiB;

/** What case 8 measures in one profile. */
export interface MirrorProfile {
  /** The trees, in order; the first one is also the fan-out's. */
  trees: TreeSpec[];
  /** How much the edit rounds change. */
  edits: EditSizes;
  /** Clients of the fan-out. */
  fanClients: number;
  /** Seconds after which one client run is stopped and counted as failed. */
  timeoutSeconds: number;
  /**
   * Runs of each tool in a round with nothing changed, the tools taking turns: such a run changes nothing,
   * so it can be repeated, and one run moved by some hundredths of a second from one run to the next.
   */
  unchangedRuns: number;
  /**
   * Passes of each edit round: the tree is edited again before each (other bytes, the same kind of change)
   * and every tool follows it, the tools taking turns; the row is the pass of median wall time. One pass
   * moved some edit ratios across their target from one run of the benchmark to the next.
   */
  editRuns: number;
}

const small = (key: string, files: number, folders: number, minBytes: number, maxBytes: number) => ({
  key,
  files,
  folders,
  minBytes,
  maxBytes,
  large: 0,
  largeBytes: 0,
});

/** Case 8's profiles, named as the benchmark's. */
export const MIRROR_PROFILES: Record<"full" | "quick" | "tiny", MirrorProfile> = {
  full: {
    trees: [
      { ...small("a", 5000, 50, 4 * KiB, 64 * KiB), large: 5, largeBytes: 20 * MiB },
      small("b", 100_000, 1000, KiB, 8 * KiB),
      { ...small("c", 0, 0, 0, 0), large: 1, largeBytes: GiB },
    ],
    edits: { rewrite: 60, insert: MiB },
    fanClients: 32,
    timeoutSeconds: 1200,
    unchangedRuns: 3,
    editRuns: 3,
  },
  quick: {
    trees: [
      { ...small("a", 300, 10, 4 * KiB, 64 * KiB), large: 5, largeBytes: 2 * MiB },
      small("b", 2000, 20, KiB, 8 * KiB),
      { ...small("c", 0, 0, 0, 0), large: 1, largeBytes: 32 * MiB },
    ],
    edits: { rewrite: 10, insert: 256 * KiB },
    fanClients: 8,
    timeoutSeconds: 120,
    unchangedRuns: 3,
    editRuns: 3,
  },
  tiny: {
    trees: [{ ...small("a", 20, 4, 4 * KiB, 16 * KiB), large: 3, largeBytes: 256 * KiB }],
    edits: { rewrite: 3, insert: 16 * KiB },
    fanClients: 2,
    timeoutSeconds: 60,
    unchangedRuns: 2,
    editRuns: 2,
  },
};

/** Tools case 8 uses besides ferry: rsync, and GNU time for the clients' CPU. */
export const MIRROR_TOOLS = ["rsync", "time"];

/** What case 8 needs from the benchmark. */
export interface MirrorBench {
  /** The profile's name. */
  profile: keyof typeof MIRROR_PROFILES;
  /** A temporary directory on the local disk. */
  root: string;
  /** Tools available. */
  tools: Set<string>;
  /** Lines for the report's notes. */
  notes: string[];
  /** Progress on stderr. */
  log: (line: string) => void;
}

/** A mirroring tool with its server. */
interface Tool {
  /** Short key: ferry, rsync, rsync-fsync. */
  key: string;
  /** How the report names it. */
  name: string;
  /** The server's own port (the fan-out connects there directly). */
  port: number;
  /** The client's command line mirroring tree `tree` from 127.0.0.1:`port` into `dest`. */
  command(port: number, tree: string, dest: string): string[];
  /** CPU seconds the server has used so far. */
  serverCpu(): number;
  /** Resolves once the server has finished with the connections of the run that just ended. */
  settle(): Promise<void>;
}

/** One client run, measured. */
interface Measured {
  /** Wall seconds until the client exited. */
  wall: number;
  /** User + system CPU of the client and its children. */
  clientCpu: number;
  /** User + system CPU of the server meanwhile. */
  serverCpu: number;
  /** Bytes client to server, at the relay. */
  up: number;
  /** Bytes server to client, at the relay. */
  down: number;
  /** Null, or what went wrong (exit code and message, timeout, differences). */
  failure: string | null;
}

const TIME = "/usr/bin/time";

/** Runs one client under `timeout` (and GNU time, when there, for its CPU). */
async function runClient(
  argv: string[],
  limit: number,
  timeFile: string | null,
): Promise<{ wall: number; cpu: number; failure: string | null }> {
  // timeout kills the client's whole process group (rsync forks its receiver) and exits 124.
  const limited = ["timeout", "-k", "5", String(limit), ...argv];
  const full = timeFile ? [TIME, "-f", "%U %S", "-o", timeFile, ...limited] : limited;
  const out = await run(full[0], full.slice(1), { allowFailure: true });
  let cpu = NaN;
  if (timeFile) {
    // GNU time writes "Command exited with non-zero status N" first when it did.
    const last = (await Deno.readTextFile(timeFile)).trim().split("\n").pop()!.split(" ").map(Number);
    cpu = last[0] + last[1];
  }
  let failure: string | null = null;
  if (out.code === 124 || out.code === 137) failure = `timed out after ${limit} s`;
  else if (out.code !== 0) {
    // ferry's client ends with its own "ferry: ..." line; a crash (or rsync) says the cause first.
    const lines = out.stderr.split("\n").filter((l) => l.trim() !== "");
    const said = lines.findLast((l) => l.startsWith("ferry: ")) ?? lines[0] ?? "no message";
    failure = `exit ${out.code}: ${said.slice(0, 200)}`;
  }
  return { wall: out.seconds, cpu, failure };
}

/**
 * Null if `dest` holds the same files as `src` byte for byte (`diff -r`), else what differs. ferry's mirror
 * keeps its state in `.ferry/` at the top of its copy, which the generated trees never hold: left out.
 */
async function compare(src: string, dest: string): Promise<string | null> {
  const out = await run("diff", ["-r", "-q", "-x", ".ferry", src, dest], { allowFailure: true });
  if (out.code === 0) return null;
  const lines = (out.stdout + out.stderr).trim().split("\n").filter((l) => l !== "");
  const first = (lines[0] ?? "").replaceAll(src, "source").replaceAll(dest, "copy");
  return `diff -r: ${int(lines.length)} difference${lines.length === 1 ? "" : "s"}, e.g. "${first}"`;
}

/** Makes `dest` an exact copy of `src` again, after a failed round. */
async function repair(src: string, dest: string): Promise<void> {
  await Deno.remove(dest, { recursive: true }).catch(() => {});
  await run("cp", ["-a", src, dest]);
}

/**
 * A sentence on the file system holding `path` when it is ext4 without a journal (no entry of its device
 * in /proc/fs/jbd2), where creating files soon after deleting many costs far more than otherwise; else
 * null.
 */
export function unjournaledNote(path: string): string | null {
  const real = Deno.realPathSync(path);
  let best: { mountPoint: string; type: string; source: string } | null = null;
  for (const line of Deno.readTextFileSync("/proc/self/mountinfo").split("\n")) {
    const [left, right] = line.split(" - ");
    if (right === undefined) continue;
    const mountPoint = left.split(" ")[4].replace(/\\040/g, " ");
    const [type, source] = right.split(" ");
    const inside = real === mountPoint || real.startsWith(mountPoint === "/" ? "/" : `${mountPoint}/`);
    if (inside && mountPoint.length >= (best?.mountPoint.length ?? -1)) best = { mountPoint, type, source };
  }
  if (best?.type !== "ext4" || !best.source.startsWith("/dev/")) return null;
  const device = best.source.slice("/dev/".length);
  const journals = [...Deno.readDirSync("/proc/fs/jbd2")].map((e) => e.name);
  if (journals.some((name) => name.startsWith(`${device}-`))) return null;
  return "The copies are on ext4 without a journal (no entry for its device in /proc/fs/jbd2). There, " +
    "a file created within minutes of many deletions in its block group can cost hundreds of microseconds " +
    "of kernel time (the inode allocator looks at each recently deleted inode and passes it over), so no " +
    "copy is deleted before the case's last run.";
}

/**
 * The run of a tool that stands for its repeated runs of a round: a failed one if any failed, else the one
 * of median wall time (the lower middle of an even count), whose other figures come with it.
 */
function medianRun(runs: Measured[]): Measured {
  const failed = runs.find((m) => m.failure !== null);
  if (failed !== undefined) return failed;
  return [...runs].sort((x, y) => x.wall - y.wall)[Math.floor((runs.length - 1) / 2)];
}

/** "1.2 s" of a number of seconds (or "-"). */
const secs = (x: number) => num(x, x < 10 ? 2 : 1);

/**
 * When each served tree was last written (ms), so that its next edit comes in a later second: rsync's quick
 * check compares sizes and mtimes to the second, and a file rewritten at its size within the second it
 * was written before looks current to it (the tiny profile's rounds take less than a second). Edits at
 * human time scales always come later.
 */
const writtenAt = new Map<string, number>();

/** Applies `edit` to the tree at `src` once a second has passed since it was last written. */
async function editLater(src: string, edit: (dir: string) => Promise<void>): Promise<void> {
  const wait = (writtenAt.get(src) ?? 0) + 1000 - Date.now();
  if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  await edit(src);
  writtenAt.set(src, Date.now());
}

/** Case 8: ferry's mirror against rsync. */
export async function case8(b: MirrorBench): Promise<Section> {
  const p = MIRROR_PROFILES[b.profile];
  const work = join(b.root, "mirror");
  const served = join(work, "trees");
  await Deno.mkdir(served, { recursive: true });
  const timeFile = (await Deno.stat(TIME).catch(() => null)) ? join(work, "time.txt") : null;
  if (!timeFile) b.notes.push("GNU time is not installed: case 8 has no client CPU");

  b.log("case 8: starting ferry and the rsync daemon");
  const ferryServer = await startFerry({
    root: served,
    workers: WORKERS,
    connsPerWorker: 2000,
    queue: 20_000,
  });
  const stops: (() => Promise<void>)[] = [() => ferryServer.stop()];
  const tools: Tool[] = [{
    key: "ferry",
    name: `ferry mirror --delete (server: ${WORKERS} workers)`,
    port: ferryServer.port,
    command: (port, tree, dest) => [
      Deno.execPath(),
      "run",
      "--allow-all",
      repo("client.ts"),
      "mirror",
      "--delete",
      "-q",
      `127.0.0.1:${port}`,
      tree,
      dest,
    ],
    serverCpu: () => cpuSeconds(ferryServer.pids),
    settle: () => Promise.resolve(),
  }];
  const relays = new Map<string, ReturnType<typeof startRelay>>();
  relays.set("ferry", startRelay(ferryServer.port));
  if (b.tools.has("rsync")) {
    const daemon = await startRsyncDaemon(served, join(work, "rsyncd"));
    stops.push(() => daemon.stop());
    relays.set("rsync", startRelay(daemon.port));
    const fsync = (await run("rsync", ["--help"], { allowFailure: true })).stdout.includes("--fsync");
    if (!fsync) b.notes.push("this rsync has no --fsync: case 8 has no `rsync --fsync` row");
    for (const extra of fsync ? [[], ["--fsync"]] : [[]]) {
      tools.push({
        key: extra.length ? "rsync-fsync" : "rsync",
        name: `rsync -a --delete${extra.length ? " --fsync" : ""} (daemon)`,
        port: daemon.port,
        command: (port, tree, dest) => [
          "rsync",
          "-a",
          "--delete",
          ...extra,
          `rsync://127.0.0.1:${port}/trees/${tree}/`,
          `${dest}/`,
        ],
        // The daemon forks a child per connection and reaps it: its own CPU plus its reaped children's.
        serverCpu: () => cpuSecondsWithReaped(daemon.pid),
        settle: async () => {
          for (let i = 0; i < 1000 && processTree(daemon.pid).length > 1; i++) {
            await new Promise((r) => setTimeout(r, 10));
          }
        },
      });
    }
  } else {
    b.notes.push("rsync is not installed: case 8 measures ferry's mirror alone");
  }
  const ferryTool = tools.find((t) => t.key === "ferry")!;
  const relayOf = (t: Tool) => relays.get(t.key === "ferry" ? "ferry" : "rsync")!;
  // Deno compiles the client's modules on its first run: not a cost of any one round.
  await run(Deno.execPath(), ["run", "--allow-all", repo("client.ts"), "--help"], { allowFailure: true });

  /** One run of `tool`; its server's CPU counted from `cpuFrom` (a reading taken before), else from now. */
  const measure = async (
    tool: Tool,
    tree: string,
    src: string,
    dest: string,
    cpuFrom?: number,
  ): Promise<Measured> => {
    const relay = relayOf(tool);
    relay.reset();
    const cpu0 = cpuFrom ?? tool.serverCpu();
    const r = await runClient(tool.command(relay.port, tree, dest), p.timeoutSeconds, timeFile);
    await relay.idle();
    await tool.settle();
    const m: Measured = {
      wall: r.wall,
      clientCpu: r.cpu,
      serverCpu: tool.serverCpu() - cpu0,
      up: relay.bytes.up,
      down: relay.bytes.down,
      failure: r.failure ?? await compare(src, dest),
    };
    if (m.failure) await repair(src, dest);
    return m;
  };

  const body: string[] = [];
  const targets: { what: string; value: number; met: (x: number) => boolean; failed: boolean }[] = [];
  const fail = (m: Measured | undefined) => !m || m.failure !== null;
  // Nothing is deleted before the last run: see fanOut.
  const removeLater: string[] = [];
  let fanTree: { tree: TreeSpec; src: string; bytes: number } | null = null;
  try {
    for (const [index, tree] of p.trees.entries()) {
      const src = join(served, tree.key);
      b.log(`case 8: writing tree (${tree.key}): ${describeTree(tree)}`);
      await makeTree(src, tree);
      writtenAt.set(src, Date.now());
      const bytes = treeBytes(src);
      const dests = new Map(tools.map((t) => [t.key, join(work, `${t.key}-${tree.key}`)]));
      for (const d of dests.values()) await Deno.mkdir(d);
      const rows: string[][] = [];
      const ratioRows: string[][] = [];
      const rounds = roundsOf(tree, p.edits);
      for (const [r, round] of rounds.entries()) {
        const runs = round.name === "nothing changed" ? p.unchangedRuns : round.edit ? p.editRuns : 1;
        const all = new Map<string, Measured[]>(tools.map((t) => [t.key, []]));
        for (let pass = 0; pass < runs; pass++) {
          // ferry's server signs what the edit changed as soon as it is written, before its client asks: its
          // CPU for an edit round counts from the edit. The rsync daemon does nothing before its client comes.
          const ferryCpuAtEdit = round.edit ? ferryTool.serverCpu() : undefined;
          if (round.edit) await editLater(src, (dir) => round.edit!(dir, pass));
          const order = tools.map((_, i) => tools[(i + r + index + pass) % tools.length]);
          for (const tool of order) {
            b.log(
              `case 8: tree (${tree.key}), ${round.name}${
                runs > 1 ? ` (${pass + 1}/${runs})` : ""
              }: ${tool.name}`,
            );
            // Nothing dirty is left for the next tool to write out: the edit just made to the source (which
            // on a real fleet lives on the server's disk) or the copy the previous tool left in the page
            // cache would otherwise go to disk inside ferry's syncfs or rsync --fsync's journal commits.
            await new Deno.Command("sync").output();
            const cpuFrom = tool.key === "ferry" ? ferryCpuAtEdit : undefined;
            all.get(tool.key)!.push(await measure(tool, tree.key, src, dests.get(tool.key)!, cpuFrom));
          }
        }
        const got = new Map([...all].map(([key, measured]) => [key, medianRun(measured)]));
        for (const tool of tools) {
          const m = got.get(tool.key)!;
          const walls = all.get(tool.key)!.map((x) => x.wall);
          rows.push([
            tool === tools[0] ? round.name : "",
            tool.name,
            runs > 1
              ? `${secs(m.wall)} (${secs(Math.min(...walls))}-${secs(Math.max(...walls))})`
              : secs(m.wall),
            secs(m.clientCpu),
            secs(m.serverCpu),
            int(m.up),
            int(m.down),
            m.failure ? `**failed**: ${m.failure.replaceAll("|", "\\|")}` : "ok",
          ]);
        }
        const f = got.get("ferry"), rs = got.get("rsync"), rf = got.get("rsync-fsync");
        const both = (peer: Measured | undefined, x: (m: Measured) => number) =>
          fail(f) || fail(peer) ? (peer ? "failed" : "-") : ratio(x(f!), x(peer!));
        const edit = round.edit !== undefined;
        ratioRows.push([
          round.name,
          both(rs, (m) => m.wall),
          both(rf, (m) => m.wall),
          both(rs, (m) => m.up + m.down),
          both(rs, (m) => m.serverCpu),
        ]);
        if (rs) {
          const add = (
            what: string,
            peer: Measured | undefined,
            x: (m: Measured) => number,
            limit: number,
          ) => {
            if (!peer) return;
            targets.push({
              what: `(${tree.key}) ${round.name}: ${what}`,
              value: fail(f) || fail(peer) ? NaN : x(f!) / x(peer),
              met: (v) => v <= limit,
              failed: fail(f) || fail(peer),
            });
          };
          if (tree.files > 0) {
            add("time ≤ 1.0x rsync --fsync's", rf, (m) => m.wall, 1);
            add("time ≤ 1.25x rsync's", rs, (m) => m.wall, 1.25);
          }
          if (tree.files > 0 && tree.large === 0 && round.name === "nothing changed") {
            add("time ≤ 0.5x rsync's", rs, (m) => m.wall, 0.5);
          }
          if (edit) {
            add("bytes on the wire ≤ 1.1x rsync's", rs, (m) => m.up + m.down, 1.1);
            add("server CPU ≤ 0.5x the rsync daemon's", rs, (m) => m.serverCpu, 0.5);
          }
        }
      }
      body.push(
        `### Tree (${tree.key}): ${describeTree(tree)} (${int(bytes)} bytes)`,
        "",
        rounds.filter((r) => r.detail).map((r) =>
          `${r.name[0].toUpperCase()}${r.name.slice(1)}: ${r.detail}.`
        )
          .join(" "),
        "",
        ...table(
          ["round", "tool", "wall s", "client CPU s", "server CPU s", "bytes up", "bytes down", "diff -r"],
          rows,
          ["l", "l", "r", "r", "r", "r", "r", "l"],
        ),
        "",
        ...(tools.length > 1
          ? [
            ...table(
              [
                "round",
                "ferry ÷ rsync, time",
                "÷ rsync --fsync, time",
                "÷ rsync, bytes on the wire",
                "÷ rsync daemon, server CPU",
              ],
              ratioRows,
            ),
            "",
          ]
          : []),
      );
      // Kept until the case is done, as the fan-out's copies are: see fanOut.
      if (index === 0) fanTree = { tree, src, bytes };
      else removeLater.push(src);
      removeLater.push(...dests.values());
    }
    if (fanTree !== null) {
      const { tree, src, bytes } = fanTree;
      body.push(...await fanOut(b, p, tools, tree, src, work, bytes, targets, removeLater));
      removeLater.push(src);
    }
  } finally {
    for (const d of removeLater) await Deno.remove(d, { recursive: true }).catch(() => {});
    for (const relay of relays.values()) await relay.close();
    for (const stop of stops) await stop();
  }

  const met = targets.filter((t) => !t.failed && t.met(t.value)).length;
  const fileSystem = unjournaledNote(b.root);
  const intro = [
    "`client.ts mirror --delete -q` (ferry's client as it is, verifying SHA-256) against `rsync -a --delete`",
    "(the default delta algorithm) and `rsync -a --delete --fsync` (which fsyncs every file it writes; ferry",
    "makes every file durable before publishing it, in batches) from an rsync daemon, each tool mirroring into its own folder on the local disk. Trees are generated",
    "from seeded pseudo-random bytes (no block repeats). Rounds run in order on each tree: a first copy into",
    "an empty folder, a run with nothing changed, then the edits (each at least a second after the tree was",
    "last written, so that rsync's quick check, which compares mtimes to the second, can see it); within a round the tools take turns going",
    "first, and each starts after a `sync`, so that none writes out what the edit or the previous tool left",
    "dirty (ferry's `syncfs` would, and so would rsync --fsync's journal commits). After every run `diff -r` compares the copy with the source; a run that fails (exit code, timeout",
    `of ${p.timeoutSeconds} s, or a difference) is marked failed and its copy is then restored with \`cp -a\`, so`,
    "every tool starts every round from the same state. A first copy is one run of each tool. With nothing",
    `changed each tool runs ${p.unchangedRuns} times, the tools taking turns (such a run changes nothing); an edit round`,
    `is ${p.editRuns} passes, the tree edited again before each (the same kind of change to other bytes, another`,
    "file deleted) and every tool following it in turn. Such a row is the tool's run of median wall time, its",
    "CPU and bytes that run's, with the range of the runs' wall times beside it. ferry keeps what it knows of its",
    "copy (sizes, times, inodes and hashes of the files it published) in `.ferry/state` inside the copy, which",
    "`diff -r` leaves out; rsync keeps nothing between runs.",
    "",
    "Each server sits behind a counting TCP relay (scripts/bench/relay.ts, in the benchmark's process, Nagle",
    "off) that counts the bytes it forwards in each direction: bytes up are client to server, down server to",
    "client, the same socket-level count for both tools. The relay adds a hop to every round trip, alike for",
    "both tools; ferry's mirror makes a request per changed file where rsync streams (in a first copy the",
    "listing brings ferry's small files with it). Wall time is the client",
    "process's, start-up included (Deno's start is tens of milliseconds). Client CPU is user + system of the",
    "client and everything it forked (GNU `time`, which reads the rusage of the reaped process tree). Server",
    `CPU: for ferry, the master and its ${WORKERS} workers from /proc/PID/stat before and after the run (in an edit`,
    "round from just before the edit, since ferry's workers sign the changed files as they are written); for",
    "rsync, the daemon's own time plus that of the children it forked for the connection and reaped",
    "(cutime + cstime of its /proc/PID/stat, read once its children are gone).",
    "",
    ...(fileSystem === null ? [] : [fileSystem, ""]),
  ];
  const targetRows = targets.map((t) => [
    t.what,
    t.failed ? "failed" : ratio(t.value, 1),
    t.failed
      ? "no (a tool failed)"
      : !Number.isFinite(t.value)
      ? "- (nothing measurable)"
      : t.met(t.value)
      ? "yes"
      : "no",
  ]);
  return {
    title: `8. Mirror a tree: ferry against rsync`,
    body: [
      ...intro,
      ...(targets.length > 0
        ? [
          `**ferry mirror vs rsync: ${met} of ${targets.length} targets met** (ferry over rsync, from this run; a failed run meets no target).`,
          "",
        ]
        : []),
      ...body,
      ...(targets.length > 0
        ? ["Targets:", "", ...table(["target", "measured", "met"], targetRows, ["l", "r", "l"]), ""]
        : []),
    ],
  };
}

/**
 * The fan-out: every client mirrors `tree` into its own empty folder at once, straight to the server; then
 * `edit` is made to the tree and every client mirrors it again at once, into the copy it holds (the edit
 * of a release that a fleet takes up together, where the server's work for each client counts). It runs
 * after every tree's rounds, and its copies go to `removeLater` with the rest, so that no tool creates its
 * files just after another's deletions (see {@link unjournaledNote} for why that matters).
 */
async function fanOut(
  b: MirrorBench,
  p: MirrorProfile,
  tools: Tool[],
  tree: TreeSpec,
  src: string,
  work: string,
  bytes: number,
  targets: { what: string; value: number; met: (x: number) => boolean; failed: boolean }[],
  removeLater: string[],
): Promise<string[]> {
  const rows: string[][] = [];
  const walls = new Map<string, number>(), editWalls = new Map<string, number>();
  // Without GNU time the clients' CPU is not measured (case8 says so in its notes).
  const timed = (await Deno.stat(TIME).catch(() => null)) !== null;
  const editCpu = new Map<string, number>();
  const failed = new Set<string>(), editFailed = new Set<string>();
  const destsOf = (tool: Tool) =>
    Array.from({ length: p.fanClients }, (_, i) => join(work, `fan-${tool.key}-${i}`));
  /** Every client of `tool` mirrors the tree into its copy at once: one row of the table. */
  /** `cpuFrom`: a reading of the server's CPU taken before, to count from (see the rounds' edits). */
  const together = async (tool: Tool, phase: string, cpuFrom?: number) => {
    b.log(`case 8: fan-out, ${p.fanClients} clients, ${phase}: ${tool.name}`);
    const dests = destsOf(tool);
    await new Deno.Command("sync").output(); // as before every run of the rounds
    const cpu0 = cpuFrom ?? tool.serverCpu();
    const t0 = performance.now();
    const runs = await Promise.all(
      dests.map((d, i) =>
        runClient(
          tool.command(tool.port, tree.key, d),
          p.timeoutSeconds,
          timed ? join(work, `time-${i}.txt`) : null,
        )
      ),
    );
    const wall = (performance.now() - t0) / 1000;
    await tool.settle();
    const serverCpu = tool.serverCpu() - cpu0;
    const failures: string[] = [];
    for (const [i, d] of dests.entries()) {
      const failure = runs[i].failure ?? await compare(src, d);
      if (failure) failures.push(`client ${i + 1}: ${failure}`);
    }
    rows.push([
      tool === tools[0] ? phase : "",
      tool.name,
      secs(wall),
      num((bytes * p.fanClients) / wall / 1e6, 0),
      secs(runs.reduce((s, r) => s + r.cpu, 0)),
      secs(serverCpu),
      failures.length === 0 ? "ok" : `**${failures.length} failed**: ${failures[0].replaceAll("|", "\\|")}`,
    ]);
    return { wall, serverCpu, failed: failures.length > 0 };
  };
  for (const tool of tools) {
    const dests = destsOf(tool);
    for (const d of dests) await Deno.mkdir(d);
    removeLater.push(...dests);
    const run = await together(tool, "first copy");
    walls.set(tool.key, run.wall);
    if (run.failed) failed.add(tool.key);
  }
  const edit = mixedEdit(tree, p.edits, "fan-out edit", 2);
  const ferryCpuAtEdit = tools.find((t) => t.key === "ferry")?.serverCpu();
  await editLater(src, (dir) => edit.edit!(dir, 0));
  for (const tool of tools) {
    const run = await together(tool, "edit", tool.key === "ferry" ? ferryCpuAtEdit : undefined);
    editWalls.set(tool.key, run.wall);
    editCpu.set(tool.key, run.serverCpu);
    if (run.failed) editFailed.add(tool.key);
  }
  const ratios: string[] = [];
  if (tools.length > 1) {
    const f = walls.get("ferry")!, r = walls.get("rsync")!;
    const bad = failed.size > 0;
    targets.push({
      what: `fan-out, ${p.fanClients} clients: aggregate rate ≥ 2x rsync's`,
      value: bad ? NaN : r / f,
      met: (v) => v >= 2,
      failed: bad,
    });
    const badEdit = editFailed.has("ferry") || editFailed.has("rsync");
    const of = (m: Map<string, number>) => badEdit ? "failed" : ratio(m.get("ferry")!, m.get("rsync")!);
    ratios.push(
      `The edit, ferry ÷ rsync: ${of(editWalls)} by the time until the last client was done, ${
        of(editCpu)
      } by the server's CPU (the rsync daemon's, for plain rsync).`,
      "",
    );
  }
  const gigabytes = num((bytes * p.fanClients) / 1e9, 1);
  return [
    `### Fan-out: ${p.fanClients} clients mirror tree (${tree.key}) from one server at once`,
    "",
    "Each client into its own empty folder, all started together, connected straight to the server (not",
    "through the relay, which would be the bottleneck); time until the last one is done. MB/s is the tree's",
    "bytes times the clients over that time. Client CPU is all clients' together. The clients write",
    `${gigabytes} GB between them: ferry and rsync --fsync put it on disk before they are done, plain rsync`,
    "leaves it in the page cache (this machine has the memory for it). The fan-out comes after every tree's",
    "rounds, and no copy is deleted before the last tool has run, so that no tool creates its files just",
    "after another's deletions.",
    "",
    `Then the tree gets another edit like tree (${tree.key})'s (${edit.detail}), and every client mirrors it`,
    "again at once into the copy it holds. The server signs and hashes each new version once for all",
    "clients, where the rsync daemon searches each client's blocks itself: the server's CPU shows what",
    "each more client costs it. MB/s is still the whole tree's bytes over the time.",
    "",
    ...table(
      ["round", "tool", "wall s (last done)", "MB/s together", "client CPU s", "server CPU s", "diff -r"],
      rows,
      ["l", "l", "r", "r", "r", "r", "l"],
    ),
    "",
    ...ratios,
  ];
}
