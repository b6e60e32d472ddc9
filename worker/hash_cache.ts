/**
 * A worker's SHA-256 cache. A file's hash is computed once and reused while its identity
 * (device, inode, size, modification time) is unchanged; a changed file gets a new key, so it is never
 * served with a stale hash. Hashing runs as jobs that the worker's loop advances a slice at a time
 * ({@link HashCache.step}), so a large file being hashed never stalls the other connections, and
 * connections that need the same hash share one job instead of reading the file once each.
 *
 * @module
 */

import type { Hash } from "node:crypto";
import { createSha256 } from "../hashing.ts";
import { close, dupCloseOnExec, type FileStat, fstat, pread } from "../ffi/libc.ts";

/** The identity of a file's content as far as the server can tell without reading it. */
export function identityOf(stat: FileStat): string {
  return `${stat.dev}:${stat.ino}:${stat.size}:${stat.mtimeNs}`;
}

/**
 * A short public name for an identity: the `etag` of PROTOCOL.md (it does not reveal inode numbers), and
 * the key under which workers tell each other a file's hash: 16 bytes, as 32 hex digits.
 */
export function etagOf(identity: string): string {
  // Asked for on every request; a SHA-256 object per call cost more than the rest of a small reply.
  let etag = etags.get(identity);
  if (etag === undefined) {
    etag = createSha256().update(identity).digest("hex").slice(0, 32);
    if (etags.size >= MAX_ENTRIES) etags.delete(etags.keys().next().value!);
    etags.set(identity, etag);
  }
  return etag;
}

/** {@link etagOf}'s results, oldest first. */
const etags = new Map<string, string>();

/** A hash being computed, and who waits for it. */
interface Job {
  label: string;
  started: number;
  fd: number;
  size: number;
  offset: number;
  hash: Hash;
  waiters: ((sha256: string | null) => void)[];
}

/** Bytes hashed per {@link HashCache.step} call at most, across all jobs. */
const STEP_BYTES = 256 * 1024;
/** Entries kept; the oldest is forgotten past this. */
const MAX_ENTRIES = 10_000;

/** SHA-256 by file identity, with shared background jobs. */
export class HashCache {
  readonly #known = new Map<string, string>();
  readonly #jobs = new Map<string, Job>();
  readonly #buffer = new Uint8Array(1024 * 1024);
  readonly #log: (line: string) => void;
  readonly #onComputed: (etag: string, sha256: string) => void;

  /**
   * @param log receives one line per hash computed (what, bytes, seconds): the cache's work is visible
   * @param onComputed told of each hash this cache computed itself, to share it with other workers
   */
  constructor(
    log: (line: string) => void = () => {},
    onComputed: (etag: string, sha256: string) => void = () => {},
  ) {
    this.#log = log;
    this.#onComputed = onComputed;
  }

  /**
   * Records a hash computed elsewhere (another worker) for the file version named `etag`; a job of this
   * cache for the same version ends at once with it.
   */
  learn(etag: string, sha256: string): void {
    this.#remember(etag, sha256);
    for (const [identity, job] of this.#jobs) {
      if (etagOf(identity) === etag) this.#finish(identity, job, sha256, false);
    }
  }

  #remember(etag: string, sha256: string): void {
    if (this.#known.size >= MAX_ENTRIES) this.#known.delete(this.#known.keys().next().value!);
    this.#known.set(etag, sha256);
  }

  /** The cached hash for this identity, if known. */
  get(identity: string): string | undefined {
    return this.#known.get(etagOf(identity));
  }

  /** True while some job is waiting to be advanced by {@link step}. */
  get busy(): boolean {
    return this.#jobs.size > 0;
  }

  /**
   * Calls `done` with the file's SHA-256 (hex) once known (at once if cached), or with null if the file
   * changed while it was hashed. `fd` is the caller's open file: a new job reads a duplicate of it, so the
   * caller may close its own fd whenever it likes.
   */
  request(
    identity: string,
    fd: number,
    size: number,
    label: string,
    done: (sha256: string | null) => void,
  ): void {
    const known = this.get(identity);
    if (known !== undefined) return done(known);
    const job = this.#jobs.get(identity);
    if (job) {
      job.waiters.push(done);
      return;
    }
    this.#jobs.set(identity, {
      label,
      started: performance.now(),
      fd: dupCloseOnExec(fd),
      size,
      offset: 0,
      hash: createSha256(),
      waiters: [done],
    });
  }

  /** Advances the jobs by up to a few MiB in total; call from the worker loop while {@link busy}. */
  step(): void {
    let budget = STEP_BYTES;
    for (const [identity, job] of this.#jobs) {
      while (budget > 0 && job.offset < job.size) {
        const want = Math.min(this.#buffer.byteLength, job.size - job.offset, budget);
        const n = pread(job.fd, this.#buffer.subarray(0, want), job.offset);
        if (n <= 0) break; // the file shrank: caught below
        job.hash.update(this.#buffer.subarray(0, n));
        job.offset += n;
        budget -= n;
      }
      if (job.offset < job.size && budget > 0) return this.#finish(identity, job, null, true);
      if (job.offset >= job.size) {
        const after = identityOf(fstat(job.fd));
        this.#finish(identity, job, after === identity ? job.hash.digest("hex") : null, true);
      }
      if (budget <= 0) return;
    }
  }

  #finish(identity: string, job: Job, sha256: string | null, computedHere: boolean): void {
    this.#jobs.delete(identity);
    close(job.fd);
    if (computedHere) {
      const seconds = ((performance.now() - job.started) / 1000).toFixed(3);
      const outcome = sha256 === null ? "file changed while hashing" : "ok";
      this.#log(`hashed ${job.label} bytes=${job.offset} duration=${seconds}s result=${outcome}`);
    }
    if (sha256 !== null) {
      this.#remember(etagOf(identity), sha256);
      // Shared before the waiters answer their clients, so a client that fetches again right after may
      // meet another worker that knows the hash already.
      if (computedHere) this.#onComputed(etagOf(identity), sha256);
    }
    for (const waiter of job.waiters) waiter(sha256);
  }
}
