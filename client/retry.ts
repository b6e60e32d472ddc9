/**
 * Retry timing for the client: exponential backoff with full jitter (a random delay between 0 and the
 * exponential cap, so that a fleet of clients that failed together does not retry together), a server's
 * retry-after hint as the lower bound, and a deadline that no delay may cross.
 *
 * @module
 */

/** Options of {@link backoffDelay}. */
export interface BackoffOptions {
  /** The first cap, in milliseconds. @default 500 */
  baseMs?: number;
  /** The largest cap, in milliseconds. @default 30_000 */
  maxMs?: number;
  /** The server's retry-after hint, in milliseconds: the delay is never shorter. */
  retryAfterMs?: number;
  /** A source of uniform random numbers in [0, 1). @default Math.random */
  random?: () => number;
}

/**
 * The delay before retry number `attempt` (1 for the first retry): uniform in
 * [0, min(maxMs, baseMs * 2^(attempt-1))], raised to `retryAfterMs` if that is longer.
 */
export function backoffDelay(attempt: number, options: BackoffOptions = {}): number {
  const { baseMs = 500, maxMs = 30_000, retryAfterMs = 0, random = Math.random } = options;
  const cap = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.max(retryAfterMs, Math.floor(random() * cap));
}

/** Resolves after `ms` milliseconds, or as soon as `signal` aborts (the timer is then cleared). */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** What a failure allows: another try or not, and the server's lower bound for its delay. */
export interface RetryVerdict {
  /** True if trying again may help. */
  retryable: boolean;
  /** Wait at least this long before the next try, in milliseconds. */
  retryAfterMs?: number;
}

/** Options of {@link withRetries}. */
export interface RetryOptions extends Omit<BackoffOptions, "retryAfterMs"> {
  /** Tries after the first one, at most. */
  retries: number;
  /** No retry starts (nor is waited for) later than this after the first try began, in milliseconds. */
  maxTimeMs?: number;
  /** Stops waiting and trying when it aborts (the job's deadline). */
  signal?: AbortSignal;
  /** Judges a failure: may it be retried, and not before when? */
  verdict: (error: unknown) => RetryVerdict;
}

/**
 * Runs `attempt` (numbered from 1) until it succeeds, fails with something not retryable, the retries
 * are used up, the retry time is up, or the signal aborts; then throws the last failure.
 */
export async function withRetries<T>(attempt: (n: number) => Promise<T>, options: RetryOptions): Promise<T> {
  const started = performance.now();
  for (let n = 1;; n++) {
    try {
      return await attempt(n);
    } catch (e) {
      if (options.signal?.aborted) throw e;
      const { retryable, retryAfterMs } = options.verdict(e);
      if (!retryable || n > options.retries) throw e;
      const wait = backoffDelay(n, { ...options, retryAfterMs });
      if (options.maxTimeMs !== undefined && performance.now() - started + wait > options.maxTimeMs) throw e;
      await delay(wait, options.signal);
      if (options.signal?.aborted) throw e;
    }
  }
}
