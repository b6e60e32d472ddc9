/**
 * Upgrading without refusing a connection, as nginx does: on SIGUSR2 the master starts a new master from
 * the program on disk (a compiled binary itself; under `deno run`, the same script), with the same
 * command line, passing it the listening sockets as inherited fds named in `FERRY_LISTEN_FDS`
 * (`fd:request,fd:classic`; see `inherited.ts`) and one end of a socket pair in `FERRY_UPGRADE_FD`.
 * The new master starts its workers; once they are ready it writes `ready` on that socket, and the old
 * master stops accepting and drains its connections within `--grace`. Both accept from the same listening
 * sockets meanwhile, so no connection is refused. If the new master exits first, the old one closes its
 * end, logs why, and goes on serving.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { C, close, setCloseOnExec, socketpair, tryRecv, trySend, WOULD_BLOCK } from "../ffi/libc.ts";

/** What the new master writes to say it serves. */
const READY_WORD = "ready";

/** The old master's view of an upgrade under way. */
export interface Successor {
  /** The new master's process. */
  child: Deno.ChildProcess;
  /** The old master's end of the socket the new one says `ready` on (nonblocking, close-on-exec). */
  readyFd: number;
}

/** The command that runs this program again: the binary itself, or `deno run` of the same script. */
export function programCommand(): { command: string; args: string[] } {
  if (Deno.build.standalone) return { command: Deno.execPath(), args: [] };
  return {
    command: Deno.execPath(),
    args: ["run", "--allow-all", "--no-prompt", fileURLToPath(Deno.mainModule)],
  };
}

/**
 * Starts the new master with `listeners` (fd and name each) and the same arguments as this one. Throws if
 * it cannot be started (nothing is left open then).
 */
export function startSuccessor(listeners: readonly { fd: number; name: string }[]): Successor {
  const [oldEnd, newEnd] = socketpair(C.AF_UNIX, C.SOCK_STREAM | C.SOCK_CLOEXEC | C.SOCK_NONBLOCK);
  const passed = [...listeners.map((l) => l.fd), newEnd];
  const { command, args } = programCommand();
  // Only these fds are inherited (everything ferry opens is close-on-exec), at the same numbers.
  for (const fd of passed) setCloseOnExec(fd, false);
  try {
    const child = new Deno.Command(command, {
      args: [...args, ...Deno.args],
      env: {
        FERRY_LISTEN_FDS: listeners.map((l) => `${l.fd}:${l.name}`).join(","),
        FERRY_UPGRADE_FD: String(newEnd),
        FERRY_UPGRADE_FROM: String(Deno.pid),
      },
      stdin: "null",
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
    // The new master outlives this one: its exit must not hold this process up.
    child.unref();
    return { child, readyFd: oldEnd };
  } catch (e) {
    close(oldEnd);
    throw e;
  } finally {
    for (const fd of passed) if (fd !== newEnd) setCloseOnExec(fd, true);
    close(newEnd);
  }
}

/**
 * Reads what the new master said: "ready", "gone" (it closed its end without saying ready: it exited), or
 * null when nothing is there yet.
 */
export function readSuccessor(readyFd: number): "ready" | "gone" | null {
  const buf = new Uint8Array(64);
  let n;
  try {
    n = tryRecv(readyFd, buf);
  } catch {
    return "gone";
  }
  if (n === WOULD_BLOCK) return null;
  return new TextDecoder().decode(buf.subarray(0, n)).startsWith(READY_WORD) ? "ready" : "gone";
}

/** Tells the old master that this one serves now, and closes the socket. */
export function tellPredecessorReady(fd: number): void {
  try {
    trySend(fd, new TextEncoder().encode(READY_WORD));
  } catch {
    // the old master is gone already: nobody to tell
  }
  close(fd);
}
