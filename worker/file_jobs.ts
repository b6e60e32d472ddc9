/**
 * Work that reads a whole file version once, in slices between I/O: the worker's loop advances every job
 * by a bounded number of bytes per turn ({@link FileJobs.step}), so reading a large file never stalls
 * the other connections, and callers that need the same result for the same version share one job.
 * The SHA-256 cache (`hash_cache.ts`) and the signature cache (`signature_cache.ts`) run their work here.
 *
 * @module
 */

import { close, dupCloseOnExec, fstat, pread } from "../ffi/libc.ts";
import { identityOf } from "./hash_cache.ts";
import { pageAlignedBuffer } from "../ffi/page_aligned.ts";

/** What a job computes from the file's bytes, fed in order. */
export interface JobWork<R> {
  /** Takes the next bytes of the file. */
  update(bytes: Uint8Array): void;
  /** The result, once every byte was fed. */
  result(): R;
}

/** How a job ended, for its owner's log and cache. */
export interface JobEnd<R> {
  /** The file version's identity (`identityOf`). */
  identity: string;
  /** What the job was started for, for the log. */
  label: string;
  /** Bytes read. */
  bytes: number;
  /** Seconds from start to end. */
  seconds: number;
  /** The result; null if the file changed while it was read. */
  result: R | null;
  /** False when the job was ended by a result found elsewhere ({@link FileJobs.end}). */
  computedHere: boolean;
}

interface Job<R> {
  label: string;
  started: number;
  fd: number;
  size: number;
  offset: number;
  work: JobWork<R>;
  waiters: ((result: R | null) => void)[];
}

/** One worker-wide read buffer: jobs run one slice at a time, never concurrently. */
const readBuffer = pageAlignedBuffer(1024 * 1024);

/** Jobs by file identity, each reading its file once, shared by all who wait for its result. */
export class FileJobs<R> {
  readonly #jobs = new Map<string, Job<R>>();
  readonly #onEnd: (end: JobEnd<R>) => void;

  /** @param onEnd told of each job's end before its waiters are (to log, cache and share the result) */
  constructor(onEnd: (end: JobEnd<R>) => void) {
    this.#onEnd = onEnd;
  }

  /** True while some job is waiting to be advanced by {@link step}. */
  get busy(): boolean {
    return this.#jobs.size > 0;
  }

  /** The identities of the jobs running. */
  identities(): IterableIterator<string> {
    return this.#jobs.keys();
  }

  /**
   * Calls `done` with the result for this version once computed (or null if the file changed while it was
   * read): joins the running job, else starts one with `work()`. `fd` is the caller's: a new job reads a
   * duplicate, so the caller may close its own whenever it likes.
   */
  request(
    identity: string,
    fd: number,
    size: number,
    label: string,
    work: () => JobWork<R>,
    done: (result: R | null) => void,
  ): void {
    const job = this.#jobs.get(identity);
    if (job !== undefined) {
      job.waiters.push(done);
      return;
    }
    this.#jobs.set(identity, {
      label,
      started: performance.now(),
      fd: dupCloseOnExec(fd),
      size,
      offset: 0,
      work: work(),
      waiters: [done],
    });
  }

  /** Ends the job for `identity`, if any, with a result found elsewhere. */
  end(identity: string, result: R): void {
    const job = this.#jobs.get(identity);
    if (job !== undefined) this.#finish(identity, job, result, false);
  }

  /** Advances the jobs by up to `budget` bytes in total; returns what is left of the budget. */
  step(budget: number): number {
    for (const [identity, job] of this.#jobs) {
      while (budget > 0 && job.offset < job.size) {
        const want = Math.min(readBuffer.byteLength, job.size - job.offset, budget);
        const n = pread(job.fd, readBuffer.subarray(0, want), job.offset);
        if (n <= 0) break; // the file shrank: caught below
        job.work.update(readBuffer.subarray(0, n));
        job.offset += n;
        budget -= n;
      }
      if (job.offset < job.size && budget > 0) {
        this.#finish(identity, job, null, true);
        return budget;
      }
      if (job.offset >= job.size) {
        const unchanged = identityOf(fstat(job.fd)) === identity;
        this.#finish(identity, job, unchanged ? job.work.result() : null, true);
      }
      if (budget <= 0) return 0;
    }
    return budget;
  }

  #finish(identity: string, job: Job<R>, result: R | null, computedHere: boolean): void {
    this.#jobs.delete(identity);
    close(job.fd);
    const seconds = (performance.now() - job.started) / 1000;
    this.#onEnd({ identity, label: job.label, bytes: job.offset, seconds, result, computedHere });
    for (const waiter of job.waiters) waiter(result);
  }
}
