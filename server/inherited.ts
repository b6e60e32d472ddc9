/**
 * Listening sockets the master inherits instead of opening them: from systemd's socket activation
 * (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`; the fds are 3, 4, ... in order), or from the master it
 * replaces in an upgrade (`FERRY_LISTEN_FDS`, see `upgrade.ts`). Either way a name says how each one
 * serves: `request` (request mode, needs `--root`) or `classic` (classic mode, needs `--push`); any other
 * name (systemd's default is `unknown`) serves as `--listen` would: request mode with `--root`, else
 * classic. Once taken, the variables are removed from the environment, so that no worker sees them.
 *
 * @module
 */

import { ServeMode } from "../channel/messages.ts";
import { C, getsockname, getsockoptInt, LibcError, setCloseOnExec, setNonBlocking } from "../ffi/libc.ts";
import { decodeSockaddr, type Endpoint } from "../ffi/sockaddr.ts";
import { SOCKADDR_MAX } from "../ffi/structs.ts";

/** What an upgrading master sets for its successor (`upgrade.ts`). */
const UPGRADE_VARIABLES = ["FERRY_LISTEN_FDS", "FERRY_UPGRADE_FD", "FERRY_UPGRADE_FROM"];

/** The first fd systemd passes (SD_LISTEN_FDS_START). */
const SYSTEMD_FIRST_FD = 3;

/** The names of inherited listeners, and the mode each stands for. */
export const LISTENER_NAMES: Record<string, number> = {
  request: ServeMode.Request,
  classic: ServeMode.Classic,
};

/** An inherited listening socket: its fd (close-on-exec and nonblocking now), address, name and mode. */
export interface InheritedListener {
  /** The listening socket. */
  fd: number;
  /** Where it listens. */
  endpoint: Endpoint;
  /** Its name as passed (`request`, `classic`, or another). */
  name: string;
  /** The mode its name asks for, or null to serve as `--listen` would. */
  mode: number | null;
}

/** Where the inherited listeners came from, for the log. */
export type InheritedFrom = "systemd" | "upgrade" | null;

/** The inherited listeners and where they came from; none when nothing was passed. */
export interface Inherited {
  /** The listeners, in the order passed. */
  listeners: InheritedListener[];
  /** systemd, the master this one replaces, or null. */
  from: InheritedFrom;
  /** In a master started by an upgrade: the old master's pid, and the fd to tell it `ready` on. */
  upgrade: { from: number; readyFd: number } | null;
}

/**
 * Takes the listeners passed to this process, if any, and removes the variables that passed them. Throws
 * with one line naming the variable and what is wrong with it.
 */
export function takeInheritedListeners(): Inherited {
  const fromUpgrade = Deno.env.get("FERRY_LISTEN_FDS");
  const upgradeFrom = Number(Deno.env.get("FERRY_UPGRADE_FROM"));
  const systemdCount = Deno.env.get("LISTEN_FDS");
  const systemdPid = Number(Deno.env.get("LISTEN_PID"));
  const systemdNames = Deno.env.get("LISTEN_FDNAMES");
  const readyFd = Number(Deno.env.get("FERRY_UPGRADE_FD"));
  for (const name of [...UPGRADE_VARIABLES, "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"]) {
    Deno.env.delete(name);
  }
  // Each is meant for this very process: a variable that leaked from a parent to another program is not.
  if (fromUpgrade !== undefined && upgradeFrom === Deno.ppid && Number.isInteger(readyFd)) {
    const passed = fromUpgrade.split(",").filter((p) => p !== "").map((p) => {
      const [fd, name = ""] = p.split(":");
      return { fd: Number(fd), name };
    });
    setCloseOnExec(readyFd, true);
    return {
      listeners: passed.map(({ fd, name }) => adopt(fd, name, "FERRY_LISTEN_FDS")),
      from: "upgrade",
      upgrade: { from: upgradeFrom, readyFd },
    };
  }
  if (systemdCount !== undefined && systemdPid === Deno.pid) {
    const count = Number(systemdCount);
    if (!Number.isInteger(count) || count < 0) {
      throw new Error(`LISTEN_FDS: '${systemdCount}' is not a count`);
    }
    const names = systemdNames === undefined ? [] : systemdNames.split(":");
    const listeners = Array.from(
      { length: count },
      (_, i) => adopt(SYSTEMD_FIRST_FD + i, names[i] ?? "unknown", "LISTEN_FDS"),
    );
    return { listeners, from: listeners.length > 0 ? "systemd" : null, upgrade: null };
  }
  return { listeners: [], from: null, upgrade: null };
}

/** Checks that `fd` is a listening TCP socket and makes it close-on-exec and nonblocking. */
function adopt(fd: number, name: string, variable: string): InheritedListener {
  const what = `${variable}: fd ${fd} ('${name}')`;
  if (!Number.isInteger(fd) || fd < 0) throw new Error(`${what} is not an fd number`);
  const addr = new Uint8Array(SOCKADDR_MAX);
  let endpoint;
  try {
    setCloseOnExec(fd, true);
    if (getsockoptInt(fd, C.SOL_SOCKET, C.SO_TYPE) !== C.SOCK_STREAM) throw new Error("not a stream socket");
    if (getsockoptInt(fd, C.SOL_SOCKET, C.SO_ACCEPTCONN) !== 1) throw new Error("not listening");
    getsockname(fd, addr);
    endpoint = decodeSockaddr(addr);
    if (endpoint === null) throw new Error("not a TCP socket (IPv4 or IPv6)");
    setNonBlocking(fd, true);
  } catch (e) {
    const why = e instanceof LibcError && e.errnoName === "EBADF" ? "not open" : (e as Error).message;
    throw new Error(`${what}: ${why}`);
  }
  return { fd, endpoint, name, mode: name in LISTENER_NAMES ? LISTENER_NAMES[name] : null };
}
