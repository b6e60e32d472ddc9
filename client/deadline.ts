/**
 * The deadline of a whole client run (`--timeout`): connecting, every request, every retry and the waits
 * between them. When it expires its signal aborts: connections are closed (so pending reads end at once),
 * backoff waits end, and the run fails with exit code 3. A run that must end before its time (nothing more
 * can be written here) stops the same way, with its own error.
 *
 * @module
 */

import { ClientError, ExitCode } from "./failure.ts";

/** A deadline, or none (`ms` null): then its signal never aborts. */
export class Deadline {
  /** Aborts when the deadline expires. */
  readonly signal: AbortSignal;
  readonly #controller = new AbortController();
  readonly #timer: ReturnType<typeof setTimeout> | undefined;
  readonly #ms: number | null;
  #stoppedBy: ClientError | null = null;

  /** @param ms milliseconds from now, or null for no deadline */
  constructor(ms: number | null) {
    this.#ms = ms;
    this.signal = this.#controller.signal;
    if (ms !== null) this.#timer = setTimeout(() => this.#controller.abort(), ms);
  }

  /** True once the deadline has passed. */
  get expired(): boolean {
    return this.signal.aborted;
  }

  /** The failure a run that hit its deadline ends with (or the one it was {@link stop}ped by). */
  error(): ClientError {
    return this.#stoppedBy ??
      new ClientError(ExitCode.Connect, `--timeout: not done within ${(this.#ms ?? 0) / 1000}s`);
  }

  /** Ends the run now, as if its deadline had passed, failing it with `error`; the first stop counts. */
  stop(error: ClientError): void {
    if (this.expired) return;
    this.#stoppedBy = error;
    this.#controller.abort();
  }

  /** Throws {@link error} if the deadline has passed; for loops of local work between network calls. */
  check(): void {
    if (this.expired) throw this.error();
  }

  /** Stops the timer (the run is over). */
  dispose(): void {
    clearTimeout(this.#timer);
  }
}
