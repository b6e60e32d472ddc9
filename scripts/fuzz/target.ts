/**
 * The server the fuzzer, the soak and the flood run against: a real `server.ts` on loopback serving a
 * temporary root of known files (started with the tests' `startServer`), a "normal client" that checks the
 * server still answers a ping and a `get` with the right bytes, the crash check read from the server's own
 * log and /proc, and the open fds and resident memory of each of its processes.
 *
 * @module
 */

import { readFile } from "node:fs/promises";
import {
  childPids,
  isAlive,
  patterned,
  RawConnection,
  sha256,
  startServer,
  type TestServer,
} from "../../tests/helpers.ts";

/** The files of the served root, by path, with their bytes (symlinks and folders are not listed here). */
export const FIXTURE_FILES: Readonly<Record<string, number>> = {
  "known.bin": 64 * 1024,
  "small.txt": 4 * 1024,
  "tiny.txt": 100,
  "empty": 0,
  "big.bin": 4 * 1024 * 1024,
  "dir/a.txt": 1000,
  "dir/sub/b.bin": 20_000,
  "dir/sub/ü-名 space.txt": 10,
};

/** Symlinks in the served root: some lead inside it, some out of it, one nowhere, one to itself. */
const FIXTURE_LINKS: Readonly<Record<string, string>> = {
  "inside": "tiny.txt",
  "out": "/etc/passwd",
  "updir": "..",
  "dangling": "nope",
  "loop": "loop",
};

/** A file of the fixture and what a correct answer carries. */
export interface FixtureFile {
  /** Its bytes. */
  bytes: Uint8Array;
  /** Its SHA-256, hex. */
  sha256: string;
}

/** A running server over the fixture. */
export interface Target {
  /** The server (its log, pid, stop). */
  server: TestServer;
  /** The port it listens on, on 127.0.0.1. */
  port: number;
  /** The served root. */
  root: string;
  /** The fixture's files by path. */
  files: ReadonlyMap<string, FixtureFile>;
  /** The worker pids seen once the server was ready. */
  workersAtStart: number[];
  /** Stops the server, removes the root; returns the master's exit status. */
  close(): Promise<Deno.CommandStatus>;
}

/** Options of {@link startTarget}. */
export interface TargetOptions {
  /** Worker processes. @default 2 */
  workers?: number;
  /** More server flags (e.g. `--idle-timeout 5`). */
  extraArgs?: string[];
  /** Where the request log goes. @default "/dev/null" (written, so its code runs, and thrown away) */
  requestLog?: string;
}

/** Writes the fixture into a new temporary root and starts a server over it. */
export async function startTarget(options: TargetOptions = {}): Promise<Target> {
  const root = await Deno.makeTempDir({ prefix: "ferry-fuzz-" });
  const files = new Map<string, FixtureFile>();
  try {
    for (const [path, size] of Object.entries(FIXTURE_FILES)) {
      const bytes = patterned(size);
      await Deno.mkdir(`${root}/${path}`.replace(/\/[^/]*$/, ""), { recursive: true });
      await Deno.writeFile(`${root}/${path}`, bytes);
      files.set(path, { bytes, sha256: sha256(bytes) });
    }
    for (const [path, target] of Object.entries(FIXTURE_LINKS)) await Deno.symlink(target, `${root}/${path}`);
    await Deno.mkdir(`${root}/dir/empty`); // named by a listing that asks for `folders`
    const server = await startServer([
      "--listen",
      "127.0.0.1:0",
      "--root",
      root,
      "--workers",
      String(options.workers ?? 2),
      "--request-log",
      options.requestLog ?? "/dev/null",
      // The fuzzer checks answers against ferry's framing; HTTP on the same port, which would answer its
      // foreign "GET /" bytes in HTTP, has its own mangled-request test (tests/http_test.ts).
      "--no-http",
      ...options.extraArgs ?? [],
    ]);
    return {
      server,
      port: server.ports[0],
      root,
      files,
      workersAtStart: await childPids(server.pid),
      close: async () => {
        const status = await server.stop();
        await Deno.remove(root, { recursive: true });
        return status;
      },
    };
  } catch (e) {
    await Deno.remove(root, { recursive: true });
    throw e;
  }
}

/** Server log lines that mean a process died or could not start: a worker exit, a broken channel, a throw. */
const CRASH_LINE = /exited with|channel error|cannot start|hand-off failed|Uncaught|panicked/;

/** What {@link checkCrashes} found. */
export interface CrashReport {
  /** Worker exits, respawns and uncaught errors seen in the server's log. */
  workerCrashes: string[];
  /** Whether the master is still running. */
  masterAlive: boolean;
  /** Workers of the start that are gone now (killed and respawned, or lost). */
  workersLost: number[];
}

/** Reads the server's log and /proc for crashes since it started. */
export async function checkCrashes(target: Target): Promise<CrashReport> {
  const now = new Set(await childPids(target.server.pid));
  return {
    workerCrashes: target.server.log.filter((line) => CRASH_LINE.test(line)),
    masterAlive: await isAlive(target.server.pid),
    workersLost: target.workersAtStart.filter((pid) => !now.has(pid)),
  };
}

/** Waits for `promise` at most `ms`; rejects with `what` after. */
export async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, guard]);
  } finally {
    clearTimeout(timer);
  }
}

/** The file the normal client fetches. */
export const NORMAL_CLIENT_FILE = "known.bin";

/**
 * One round of the normal client: on a new connection, a `ping`, then a `get` of {@link NORMAL_CLIENT_FILE}
 * whose bytes and SHA-256 must match the fixture. Resolves with null when all is right, else with what
 * went wrong (an answer that does not come within `limitMs` counts as wrong).
 */
export async function checkNormalClient(target: Target, limitMs = 10_000): Promise<string | null> {
  let conn: RawConnection | undefined;
  const expected = target.files.get(NORMAL_CLIENT_FILE)!;
  try {
    return await within(
      limitMs,
      "the normal client's ping and get",
      (async () => {
        conn = await RawConnection.open(target.port);
        await conn.sendRequest({ op: "ping" });
        const pong = await conn.readResponse();
        if (pong.types !== "H") return `ping answered '${pong.types}' ${JSON.stringify(pong.json)}`;
        await conn.sendRequest({ op: "get", path: NORMAL_CLIENT_FILE });
        const got = await conn.readResponse();
        if (got.types[0] !== "H") return `get answered '${got.types}' ${JSON.stringify(got.json)}`;
        const said = got.json.find((j) => typeof j.sha256 === "string")?.sha256;
        if (said !== expected.sha256) return `get: the server's SHA-256 is ${said}`;
        if (sha256(got.data) !== expected.sha256) return `get: ${got.data.byteLength} bytes, not the file's`;
        return null;
      })(),
    );
  } catch (e) {
    return (e as Error).message;
  } finally {
    conn?.close();
  }
}

/**
 * Runs the normal client round after round until `stop` resolves, then once more; returns how many rounds
 * passed and the failures (the first few in full).
 */
export async function normalClientLoop(
  target: Target,
  stop: Promise<unknown>,
): Promise<{ passed: number; failed: number; failures: string[] }> {
  let stopped = false;
  // Whether the run ended well or not is for its owner to see; here it only ends the loop.
  const ended = stop.then(() => stopped = true, () => stopped = true);
  const result = { passed: 0, failed: 0, failures: [] as string[] };
  const round = async () => {
    const problem = await checkNormalClient(target);
    if (problem === null) result.passed++;
    else {
      result.failed++;
      if (result.failures.length < 10) result.failures.push(problem);
    }
  };
  while (!stopped) {
    await round();
    // A pause between rounds so that the checks sample the whole run instead of competing with it.
    if (!stopped) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([ended, new Promise((r) => timer = setTimeout(r, 20))]);
      clearTimeout(timer);
    }
  }
  await round(); // after the last fuzzed connection too
  return result;
}

/** Open fds and resident memory of one process. */
export interface ProcessSample {
  /** `master` or `worker N` (in pid order). */
  role: string;
  /** Its pid. */
  pid: number;
  /** Entries of /proc/PID/fd. */
  fds: number;
  /** VmRSS of /proc/PID/status, in KiB. */
  rssKiB: number;
}

/** The fds and VmRSS of the master and of each of its workers. */
export async function sampleProcesses(masterPid: number): Promise<ProcessSample[]> {
  const pids = [masterPid, ...await childPids(masterPid)];
  const samples: ProcessSample[] = [];
  for (const [i, pid] of pids.entries()) {
    try {
      let fds = 0;
      for await (const _ of Deno.readDir(`/proc/${pid}/fd`)) fds++;
      const status = await readFile(`/proc/${pid}/status`, "utf8");
      const rssKiB = Number(/VmRSS:\s*(\d+) kB/.exec(status)?.[1] ?? NaN);
      samples.push({ role: i === 0 ? "master" : `worker ${i}`, pid, fds, rssKiB });
    } catch { /* exited meanwhile: the crash check reports it */ }
  }
  return samples;
}
