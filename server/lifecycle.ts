/**
 * The master's life as a service, apart from serving: the pid file, systemd's notifications and
 * watchdog, the master's reload hooks, and the hand-over to a successor in an upgrade. The master
 * (`master.ts`) calls one method at each step: {@link Lifecycle.ready}, {@link Lifecycle.reloadStarted},
 * {@link Lifecycle.reloadDone}, {@link Lifecycle.stopping}, {@link Lifecycle.exit}, and
 * {@link Lifecycle.tick} on every turn of its loop.
 *
 * @module
 */

import { masterReload } from "../reload_hooks.ts";
import { versionLine } from "../version.ts";
import type { Inherited } from "./inherited.ts";
import type { ServerOptions } from "./options.ts";
import { removePidFile, writePidFile } from "./pid_file.ts";
import { SystemdNotifier, watchdogIntervalMs } from "./sd_notify.ts";
import { readSuccessor, startSuccessor, type Successor, tellPredecessorReady } from "./upgrade.ts";
import { close } from "../ffi/libc.ts";

/** The master's service duties beside serving. */
export class Lifecycle {
  readonly #options: ServerOptions;
  readonly #log: (line: string) => void;
  readonly #notifier: SystemdNotifier | null;
  readonly #watchdogMs: number | null;
  #nextWatchdog = 0;
  /** In a master started by an upgrade: where to tell the old master that this one serves. */
  #predecessor: { from: number; readyFd: number } | null;
  #successor: Successor | null = null;
  #handedOver = false;
  #pidFileWritten = false;

  /**
   * @param options the command line
   * @param inherited the listeners this master inherited, and from whom
   * @param log the master's log
   */
  constructor(options: ServerOptions, inherited: Inherited, log: (line: string) => void) {
    this.#options = options;
    this.#log = log;
    this.#predecessor = inherited.upgrade;
    this.#notifier = SystemdNotifier.fromEnv(log);
    this.#watchdogMs = watchdogIntervalMs(inherited.upgrade?.from ?? null);
    if (options.root !== null) addRootHook(options.root);
  }

  /** The workers are ready and the master accepts: pid file, READY=1, and the old master told. */
  ready(): void {
    this.#log(`${versionLine("ferry-server")}, pid ${Deno.pid}`);
    if (this.#options.pidFile !== null) {
      try {
        writePidFile(this.#options.pidFile);
        this.#pidFileWritten = true;
      } catch (e) {
        this.#log(`--pid-file: cannot write '${this.#options.pidFile}': ${(e as Error).message}`);
      }
    }
    // After an upgrade this process is the service's main one: systemd is told so (NotifyAccess=all).
    const mainPid = this.#predecessor !== null ? `MAINPID=${Deno.pid}\n` : "";
    this.#notify(`${mainPid}READY=1\nSTATUS=serving`);
    if (this.#predecessor !== null) {
      tellPredecessorReady(this.#predecessor.readyFd);
      this.#log(`told the old master (pid ${this.#predecessor.from}) that this one serves now`);
      this.#predecessor = null;
    }
  }

  /** A reload starts: RELOADING=1, then the master's own hooks; returns what they did. */
  reloadStarted(): ReturnType<typeof masterReload.runAll> {
    this.#notify(SystemdNotifier.reloading());
    return masterReload.runAll();
  }

  /** Every worker has reloaded. */
  reloadDone(): void {
    this.#notify("READY=1\nSTATUS=serving");
  }

  /** The master stops (not when it hands over to a successor, which goes on serving the service). */
  stopping(): void {
    if (!this.#handedOver) this.#notify("STOPPING=1");
  }

  /** Sends WATCHDOG=1 when it is due. */
  tick(now: number): void {
    if (this.#watchdogMs === null || now < this.#nextWatchdog) return;
    this.#nextWatchdog = now + this.#watchdogMs;
    this.#notify("WATCHDOG=1");
  }

  /** When {@link tick} next has something to do (performance.now() time), or Infinity. */
  get nextDue(): number {
    return this.#watchdogMs === null ? Infinity : this.#nextWatchdog;
  }

  /** The master exits: its pid file goes (unless a successor's replaced it). */
  exit(): void {
    if (this.#pidFileWritten) removePidFile(this.#options.pidFile!);
    this.#notifier?.close();
  }

  #notify(state: string): void {
    this.#notifier?.send(state, this.#log);
  }

  // --- upgrade ---------------------------------------------------------------------------------------

  /**
   * Starts a successor with these listeners; returns the fd it will say `ready` on (for the master's
   * epoll), or null if one is under way already or it could not start (logged).
   */
  startUpgrade(listeners: readonly { fd: number; name: string }[]): number | null {
    if (this.#successor !== null) {
      this.#log(`SIGUSR2: an upgrade is under way already (new master pid ${this.#successor.child.pid})`);
      return null;
    }
    if (this.#handedOver) return null;
    try {
      this.#successor = startSuccessor(listeners);
    } catch (e) {
      this.#log(`SIGUSR2: cannot start the new master: ${(e as Error).message}; serving on`);
      return null;
    }
    this.#log(`SIGUSR2: started a new master (pid ${this.#successor.child.pid}); serving until it is ready`);
    return this.#successor.readyFd;
  }

  /** The successor's socket is readable: true once it serves (this master then drains and exits). */
  onSuccessor(): boolean {
    const successor = this.#successor!;
    const said = readSuccessor(successor.readyFd);
    if (said === null) return false;
    close(successor.readyFd);
    this.#successor = null;
    if (said === "gone") {
      this.#log(`the new master (pid ${successor.child.pid}) exited before it was ready; serving on`);
      return false;
    }
    this.#handedOver = true;
    return true;
  }

  /** The fd the successor speaks on, or -1. */
  get successorFd(): number {
    return this.#successor?.readyFd ?? -1;
  }
}

/** The master's reload hook for `--root`: says where the path leads now, when a symlink was switched. */
function addRootHook(root: string): void {
  let leadsTo = realPath(root);
  masterReload.add({
    name: "root",
    reload: () => {
      const now = realPath(root);
      if (now === leadsTo) return null;
      const was = leadsTo;
      leadsTo = now;
      return `${root} leads to ${now} now (was ${was})`;
    },
  });
}

function realPath(path: string): string {
  return Deno.realPathSync(path);
}
