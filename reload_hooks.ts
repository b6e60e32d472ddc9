/**
 * What a reload (SIGHUP to the master) re-reads, in one place. The master runs {@link masterReload},
 * then sends each worker a `Reload` message on its channel (`channel/messages.ts`); each worker runs
 * {@link workerReload} and answers `Reloaded`. A module that owns something the operator may change
 * while the server runs (a file named on the command line, a directory it opened) adds a hook here
 * when it sets that thing up; nothing else needs to know about it.
 *
 * Registered today:
 * - master: `root` (`server/service.ts`): logs where `--root` leads now, when a symlink was switched.
 * - worker: `request log` (`worker.ts`): reopens the `--request-log` file (after logrotate renamed it).
 * - worker: `root` (`worker/root_reload.ts`): reopens `--root`, so new requests see the tree it leads
 *   to now; connections that started before keep the tree they began with.
 * - worker: `tokens` (`worker.ts`, `worker/access.ts`): reads `--tokens` again; a file that does not
 *   check out leaves the tokens in force.
 *
 * A hook returns a few words saying what changed (logged), or null when nothing did. A hook that
 * throws leaves its old state in place: its error is logged and the other hooks still run.
 *
 * @module
 */

/** One thing a reload re-reads. */
export interface ReloadHook {
  /** What it reloads, for the log: `root`, `request log`, `tokens`. */
  name: string;
  /** Re-reads it; returns what changed, or null when nothing did. Throws to keep the old state. */
  reload: () => string | null;
}

/** The outcome of one hook: a change, nothing, or an error (the old state kept). */
export interface ReloadOutcome {
  /** The hook's name. */
  name: string;
  /** What changed, or null. */
  changed: string | null;
  /** Why it failed, or null. */
  error: string | null;
}

/** An ordered list of hooks, run in the order they were added. */
export class ReloadHooks {
  readonly #hooks: ReloadHook[] = [];

  /** Adds a hook; it runs on every reload from now on. */
  add(hook: ReloadHook): void {
    this.#hooks.push(hook);
  }

  /** Removes a hook added before (e.g. by a test that drives a worker's parts directly). */
  remove(hook: ReloadHook): void {
    const at = this.#hooks.indexOf(hook);
    if (at !== -1) this.#hooks.splice(at, 1);
  }

  /** Runs every hook; one that throws does not stop the others. */
  runAll(): ReloadOutcome[] {
    return this.#hooks.map(({ name, reload }) => {
      try {
        return { name, changed: reload(), error: null };
      } catch (e) {
        return { name, changed: null, error: (e as Error).message };
      }
    });
  }
}

/** The master's hooks: run on SIGHUP, before the workers are told. */
export const masterReload: ReloadHooks = new ReloadHooks();

/** A worker's hooks: run when the master's `Reload` message arrives. */
export const workerReload: ReloadHooks = new ReloadHooks();

/** One log line for what a reload did: `root: now ... ; request log: reopened; tokens: failed: ...`. */
export function describeReload(outcomes: readonly ReloadOutcome[]): string {
  const parts = outcomes.flatMap(({ name, changed, error }) =>
    error !== null
      ? [`${name}: FAILED, kept as it was: ${error}`]
      : changed !== null
      ? [`${name}: ${changed}`]
      : []
  );
  return parts.length === 0 ? "nothing changed" : parts.join("; ");
}
