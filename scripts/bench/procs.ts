/**
 * Processes of the benchmark: every process it starts is registered here and stopped on exit, on failure
 * and on Ctrl-C; plus what the benchmark reads about processes from /proc (a server's process tree, its
 * resident memory, open fds and CPU time).
 *
 * @module
 */

/** A process started by the benchmark, with the lines it printed so far. */
export interface Started {
  /** The process. */
  process: Deno.ChildProcess;
  /** Its first lines of stdout and stderr (at most 200). */
  lines: string[];
  /** Resolves with the first line (past or future) matching `pattern`. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** Every stdout line, in full (for JSON results). */
  stdout: string[];
}

const running = new Set<Deno.ChildProcess>();

/** Sends `signal` to every process still running; used on exit, failure and Ctrl-C. */
export function signalAll(signal: Deno.Signal): void {
  for (const p of running) {
    try {
      p.kill(signal);
    } catch { /* already gone */ }
  }
}

/** Stops every process still running: SIGTERM, then SIGKILL for those left after `graceMs`. */
export async function stopAll(graceMs = 3000): Promise<void> {
  signalAll("SIGTERM");
  const all = [...running].map((p) => p.status);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<void>((resolve) => timer = setTimeout(resolve, graceMs));
  await Promise.race([Promise.all(all), timeout]);
  clearTimeout(timer);
  signalAll("SIGKILL");
  await Promise.all(all);
}

/**
 * Starts `command`; its output is read line by line (stderr is kept in `lines`, stdout also in
 * `stdout`). Pass `stdin: "piped"` to write to it.
 */
export function start(command: string, args: string[], env?: Record<string, string>): Started {
  const process = new Deno.Command(command, {
    args,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  running.add(process);
  process.status.then(() => running.delete(process));
  const lines: string[] = [];
  const stdout: string[] = [];
  const waiters: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  const pump = async (stream: ReadableStream<Uint8Array>, isStdout: boolean) => {
    const decoder = new TextDecoder();
    let rest = "";
    for await (const chunk of stream) {
      const parts = (rest + decoder.decode(chunk, { stream: true })).split("\n");
      rest = parts.pop()!;
      for (const line of parts) {
        if (lines.length < 200) lines.push(line);
        if (isStdout) stdout.push(line);
        for (const w of [...waiters]) {
          if (w.pattern.test(line)) {
            waiters.splice(waiters.indexOf(w), 1);
            w.resolve(line);
          }
        }
      }
    }
    if (rest !== "") {
      lines.push(rest);
      if (isStdout) stdout.push(rest);
    }
  };
  const pumped = Promise.all([pump(process.stdout, true), pump(process.stderr, false)]);
  const waitFor = (pattern: RegExp, timeoutMs = 60_000): Promise<string> => {
    const seen = lines.find((l) => pattern.test(l));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`${command}: no line matching ${pattern} within ${timeoutMs}ms:\n${tail(lines)}`));
      }, timeoutMs);
      waiters.push({
        pattern,
        resolve: (line) => {
          clearTimeout(timer);
          resolve(line);
        },
      });
      pumped.then(() => {
        clearTimeout(timer);
        reject(new Error(`${command} ended before printing ${pattern}:\n${tail(lines)}`));
      });
    });
  };
  return { process, lines, stdout, waitFor };
}

function tail(lines: string[]): string {
  return lines.slice(-15).join("\n");
}

/** Stops one started process (SIGTERM, SIGKILL after `graceMs`) and waits for it. */
export async function stop(p: Started, graceMs = 5000): Promise<void> {
  try {
    p.process.kill("SIGTERM");
  } catch { /* gone */ }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const killed = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      try {
        p.process.kill("SIGKILL");
      } catch { /* gone */ }
      resolve();
    }, graceMs);
  });
  await Promise.race([p.process.status, killed]);
  clearTimeout(timer);
  await p.process.status;
}

/** Runs a command to completion; returns its wall time in seconds and its output. Throws if it fails. */
export async function run(
  command: string,
  args: string[],
  options: { env?: Record<string, string>; allowFailure?: boolean } = {},
): Promise<{ seconds: number; stdout: string; stderr: string; code: number }> {
  const t0 = performance.now();
  const child = new Deno.Command(command, {
    args,
    env: options.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  running.add(child);
  const out = await child.output();
  running.delete(child);
  const seconds = (performance.now() - t0) / 1000;
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  if (!out.success && !options.allowFailure) {
    throw new Error(`${command} ${args.join(" ")} failed (${out.code}): ${stderr.slice(-2000)}`);
  }
  return { seconds, stdout, stderr, code: out.code };
}

/** True if `command` can be run (found on PATH). */
export async function have(command: string): Promise<boolean> {
  try {
    const out = await new Deno.Command("sh", {
      args: ["-c", `command -v ${command}`],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch {
    return false;
  }
}

/** The pid and every descendant of it (from the parent pids in /proc). */
export function processTree(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      parent.set(Number(entry.name), Number(fields[1]));
    } catch { /* gone */ }
  }
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) {
    for (const [child, ppid] of parent) if (ppid === tree[i]) tree.push(child);
  }
  return tree;
}

/**
 * Resident memory of these processes together, in KiB: their anonymous and shared-memory pages summed,
 * and their file-backed pages counted once, as the largest process's. A server's processes map the same
 * executable and libraries, so summing VmRSS would count those pages once per process (for ferry, whose
 * processes each map Deno's executable, that nearly doubled the figure).
 */
export function residentKiB(pids: number[]): number {
  let own = 0, files = 0;
  for (const pid of pids) {
    try {
      const status = Deno.readTextFileSync(`/proc/${pid}/status`);
      const field = (name: string) => Number(new RegExp(`${name}:\\s*(\\d+) kB`).exec(status)?.[1] ?? 0);
      own += field("RssAnon") + field("RssShmem");
      files = Math.max(files, field("RssFile"));
    } catch { /* gone */ }
  }
  return own + files;
}

/** Open fds of these processes together. */
export function fdCount(pids: number[]): number {
  let total = 0;
  for (const pid of pids) {
    try {
      for (const _ of Deno.readDirSync(`/proc/${pid}/fd`)) total++;
    } catch { /* gone */ }
  }
  return total;
}

/** CPU time (user + system, all threads) of these processes together, in seconds. */
export function cpuSeconds(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      ticks += Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14 and 15 of stat)
    } catch { /* gone */ }
  }
  return ticks / 100; // USER_HZ is 100 on Linux
}

/** Samples the peak of `sample()` every `everyMs` until stopped; `stop()` returns the peak. */
export function peakSampler(sample: () => number, everyMs = 100): { stop(): number } {
  let peak = sample();
  const timer = setInterval(() => {
    peak = Math.max(peak, sample());
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(peak, sample());
    },
  };
}

/** A free TCP port on 127.0.0.1 (asked of the kernel, then released for the server to take). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Resolves once a TCP connection to 127.0.0.1:`port` succeeds; throws after `timeoutMs`. */
export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.close();
      return;
    } catch (e) {
      if (performance.now() > deadline) throw new Error(`nothing listens on port ${port}: ${e}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/**
 * CPU time (user + system) of a process and of every child it has reaped (cutime and cstime of its stat),
 * in seconds: a forking server's total, once its children have exited and been waited for.
 */
export function cpuSecondsWithReaped(pid: number): number {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime, stime, cutime, cstime: fields 14 to 17 of stat.
    return (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) / 100;
  } catch {
    return NaN;
  }
}
