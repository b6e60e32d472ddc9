/**
 * A worker's SHA-256 cache. A file's hash is computed once and reused while its identity
 * (device, inode, size, modification time) is unchanged; a changed file gets a new key, so it is never
 * served with a stale hash. Hashing runs as jobs that the worker's loop advances a slice at a time
 * ({@link HashCache.step}), so a large file being hashed never stalls the other connections, and
 * connections that need the same hash share one job instead of reading the file once each.
 *
 * @module
 */

import { createSha256 } from "../hashing.ts";
import type { FileStat } from "../ffi/libc.ts";
import { FileJobs } from "./file_jobs.ts";

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

/** Bytes hashed per {@link HashCache.step} call at most, across all jobs. */
const STEP_BYTES = 256 * 1024;
/** Entries kept; the oldest is forgotten past this. */
const MAX_ENTRIES = 10_000;

/** SHA-256 by file identity, with shared background jobs. */
export class HashCache {
  readonly #known = new Map<string, string>();
  readonly #jobs: FileJobs<string>;
  readonly #onComputed: (etag: string, sha256: string) => void;

  /**
   * @param log receives one line per hash computed (what, bytes, seconds): the cache's work is visible
   * @param onComputed told of each hash this cache computed itself, to share it with other workers
   */
  constructor(
    log: (line: string) => void = () => {},
    onComputed: (etag: string, sha256: string) => void = () => {},
  ) {
    this.#onComputed = onComputed;
    this.#jobs = new FileJobs<string>((end) => {
      if (end.computedHere) {
        const outcome = end.result === null ? "file changed while hashing" : "ok";
        log(`hashed ${end.label} bytes=${end.bytes} duration=${end.seconds.toFixed(3)}s result=${outcome}`);
      }
      if (end.result !== null) {
        this.#remember(etagOf(end.identity), end.result);
        // Shared before the waiters answer their clients, so a client that fetches again right after may
        // meet another worker that knows the hash already.
        if (end.computedHere) this.#onComputed(etagOf(end.identity), end.result);
      }
    });
  }

  /**
   * Records a hash computed elsewhere (another worker) for the file version named `etag`; a job of this
   * cache for the same version ends at once with it.
   */
  learn(etag: string, sha256: string): void {
    this.#remember(etag, sha256);
    for (const identity of [...this.#jobs.identities()]) {
      if (etagOf(identity) === etag) this.#jobs.end(identity, sha256);
    }
  }

  /**
   * Records a hash this worker computed by other means (along with a signature): kept, shared with the
   * other workers like one of its own jobs' results, and given to a job waiting for it.
   */
  offer(identity: string, sha256: string): void {
    if (this.get(identity) !== undefined) return;
    this.#remember(etagOf(identity), sha256);
    this.#onComputed(etagOf(identity), sha256);
    this.#jobs.end(identity, sha256);
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
    return this.#jobs.busy;
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
    this.#jobs.request(identity, fd, size, label, () => {
      const hash = createSha256();
      return { update: (bytes) => hash.update(bytes), result: () => hash.digest("hex") };
    }, done);
  }

  /** Advances the jobs by up to a few hundred KiB in total; call from the worker loop while {@link busy}. */
  step(): void {
    this.#jobs.step(STEP_BYTES);
  }
}
