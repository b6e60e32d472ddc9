/**
 * A real HAProxy for tests: finding the binary, a free port for its frontend, and running it in the
 * foreground from a configuration file until the test stops it.
 *
 * @module
 */

import { eventually, watchLog } from "./helpers.ts";

/** The path of `tool` on PATH (or in /usr/sbin and /sbin, where Debian puts haproxy), or null. */
export function which(tool: string): string | null {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/sbin", "/sbin"];
  for (const dir of dirs) {
    try {
      const path = `${dir}/${tool}`;
      if (Deno.statSync(path).isFile) return path;
    } catch { /* not here */ }
  }
  return null;
}

/** A port free now on 127.0.0.1 (HAProxy binds it a moment later). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** A running HAProxy started by {@link startHaproxy}. */
export interface TestHaproxy {
  /** HAProxy's output so far (its log, when the configuration logs to stderr), a line each. */
  log: string[];
  /** Stops it (SIGTERM) and waits for it to exit. */
  stop(): Promise<void>;
}

/**
 * Runs `haproxy -db -f config` and resolves once `port` (its frontend on 127.0.0.1) accepts a
 * connection; throws with HAProxy's own output if it exits first.
 */
export async function startHaproxy(haproxy: string, config: string, port: number): Promise<TestHaproxy> {
  const proxy = new Deno.Command(haproxy, {
    args: ["-db", "-f", config],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const { log, ended } = watchLog(proxy.stderr);
  let exited = false;
  const status = proxy.status.then(() => exited = true);
  const stop = async () => {
    try {
      proxy.kill("SIGTERM");
    } catch { /* it exited already */ }
    await status;
    await ended;
  };
  try {
    await eventually("haproxy listens", async () => {
      if (exited) {
        await ended;
        throw new Error(`haproxy exited: ${log.join("\n")}`);
      }
      try {
        (await Deno.connect({ hostname: "127.0.0.1", port })).close();
        return true;
      } catch {
        return false;
      }
    });
  } catch (e) {
    await stop();
    throw e;
  }
  return { log, stop };
}
