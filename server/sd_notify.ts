/**
 * systemd's readiness protocol (sd_notify(3)) without libsystemd: each state is one datagram of
 * `KEY=VALUE` lines sent to the Unix socket named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract
 * namespace). The master sends `READY=1` once its workers are ready, `RELOADING=1` with
 * `MONOTONIC_USEC` (which systemd 253 and later ask for) when a reload starts and `READY=1` when it is
 * done, `STOPPING=1` when it stops, and `WATCHDOG=1` at half of `WATCHDOG_USEC` when a watchdog is set.
 * Without `NOTIFY_SOCKET` (not started by systemd) nothing is sent.
 *
 * @module
 */

import { C, close, monotonicMicros, socket, trySendTo } from "../ffi/libc.ts";
import { encodeUnixSockaddr } from "../ffi/sockaddr.ts";

/** Sends states to systemd's notification socket. */
export class SystemdNotifier {
  readonly #fd: number;
  readonly #address: Uint8Array;
  readonly #socketName: string;
  #failed = false;

  private constructor(socketName: string) {
    this.#socketName = socketName;
    this.#address = encodeUnixSockaddr(socketName);
    this.#fd = socket(C.AF_UNIX, C.SOCK_DGRAM | C.SOCK_CLOEXEC | C.SOCK_NONBLOCK);
  }

  /** The notifier for `NOTIFY_SOCKET`, or null when it is not set (or names no usable socket). */
  static fromEnv(log: (line: string) => void): SystemdNotifier | null {
    const name = Deno.env.get("NOTIFY_SOCKET");
    if (name === undefined || name === "") return null;
    try {
      return new SystemdNotifier(name);
    } catch (e) {
      log(`NOTIFY_SOCKET '${name}': ${(e as Error).message}; not notifying systemd`);
      return null;
    }
  }

  /**
   * Sends one state (lines `KEY=VALUE`). A failure is logged once and otherwise ignored: systemd may
   * have stopped listening, and serving matters more than telling it.
   */
  send(state: string, log: (line: string) => void): void {
    try {
      trySendTo(this.#fd, new TextEncoder().encode(state), this.#address);
    } catch (e) {
      if (!this.#failed) log(`cannot notify systemd on ${this.#socketName}: ${(e as Error).message}`);
      this.#failed = true;
    }
  }

  /** `RELOADING=1` with the monotonic time systemd 253+ wants beside it. */
  static reloading(): string {
    return `RELOADING=1\nMONOTONIC_USEC=${monotonicMicros()}`;
  }

  /** Closes the socket. */
  close(): void {
    close(this.#fd);
  }
}

/**
 * How often to send `WATCHDOG=1`, in milliseconds (half of `WATCHDOG_USEC`), or null without a watchdog.
 * `WATCHDOG_PID`, when set, must be this process, or the master this one replaced in an upgrade (systemd
 * set it for that master, and this one took its place).
 */
export function watchdogIntervalMs(upgradedFrom: number | null): number | null {
  const usec = Number(Deno.env.get("WATCHDOG_USEC"));
  if (!Number.isInteger(usec) || usec <= 0) return null;
  const pid = Deno.env.get("WATCHDOG_PID");
  if (pid !== undefined && Number(pid) !== Deno.pid && Number(pid) !== upgradedFrom) return null;
  return usec / 2000;
}
