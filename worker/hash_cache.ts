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
import { WorkerCell, workerMetrics } from "../metrics/registry.ts";
import type { FileStat, StatVersion } from "../ffi/libc.ts";
import { FileJobs } from "./file_jobs.ts";
import { setWithin } from "./bounded_map.ts";

/**
 * The identity of a file's content as far as the server can tell without reading it. The fields print
 * alike as bigints (a {@link FileStat}) or as their decimal text (a listing's `StatVersion`).
 */
export function identityOf(stat: Pick<FileStat | StatVersion, "dev" | "ino" | "size" | "mtimeNs">): string {
  return `${stat.dev}:${stat.ino}:${stat.size}:${stat.mtimeNs}`;
}

/**
 * A short public name for an identity: the `etag` of PROTOCOL.md (a 128-bit hash of the identity, which
 * does not show device and inode numbers as they are), and the key under which workers tell each other a
 * file's hash: 16 bytes, as 32 hex digits.
 *
 * It is computed for every file of every listing, so it is a multiplicative hash in four 32-bit lanes
 * finished by murmur3's mixer, a fraction of a microsecond, rather than a SHA-256 (a node:crypto object per
 * call cost about 7 us: 0.7 s of a listing of 100,000 files). It names versions, not secrets: whoever can
 * make two versions collide is the server's own operator.
 */
export function etagOf(identity: string): string {
  let h1 = 0x9e3779b9, h2 = 0x85ebca6b, h3 = 0xc2b2ae35, h4 = 0x27d4eb2f;
  for (let i = 0; i < identity.length; i++) {
    const k = Math.imul(identity.charCodeAt(i) + 1, 0xcc9e2d51);
    h1 = (Math.imul(h1 ^ k, 0x01000193) + h4) | 0;
    h2 = (Math.imul(((h2 ^ k) << 13) | ((h2 ^ k) >>> 19), 5) + 0xe6546b64) | 0;
    h3 = Math.imul(h3 + k, 0x1b873593) ^ (h3 >>> 15);
    h4 = (Math.imul(h4 ^ (k >>> 7), 0x85ebca6b) + h2) | 0;
  }
  h1 = mix32(h1 ^ h3);
  h2 = mix32(h2 ^ h1);
  h3 = mix32(h3 ^ h2);
  h4 = mix32(h4 ^ h3 ^ identity.length);
  return hex32(h1) + hex32(h2) + hex32(h3) + hex32(h4);
}

/** murmur3's 32-bit finalizer: every input bit reaches every output bit. */
function mix32(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** Two hex digits for each byte value: a listing formats four words per file. */
const HEX_BYTES = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, "0"));

const hex32 = (n: number) =>
  HEX_BYTES[n >>> 24] + HEX_BYTES[(n >>> 16) & 0xff] + HEX_BYTES[(n >>> 8) & 0xff] + HEX_BYTES[n & 0xff];

/** Bytes hashed per {@link HashCache.step} call at most, across all jobs. */
const STEP_BYTES = 256 * 1024;
/** Hashes kept; the oldest is forgotten past this. */
export const HASH_CACHE_ENTRIES = 10_000;

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
        if (end.result !== null) workerMetrics.count(WorkerCell.HashesComputed);
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

  /** Records a hash this worker computed for itself, without telling the other workers. */
  note(identity: string, sha256: string): void {
    workerMetrics.count(WorkerCell.HashesComputed);
    this.#remember(etagOf(identity), sha256);
  }

  /**
   * Records a hash this worker computed by other means (along with a signature): kept, shared with the
   * other workers like one of its own jobs' results, and given to a job waiting for it.
   */
  offer(identity: string, sha256: string): void {
    if (this.get(identity) !== undefined) return;
    workerMetrics.count(WorkerCell.HashesComputed);
    this.#remember(etagOf(identity), sha256);
    this.#onComputed(etagOf(identity), sha256);
    this.#jobs.end(identity, sha256);
  }

  /**
   * How many hashes this cache took in so far: a caller that did not find a version's hash need not look
   * again while this stays the same (a listing memo's entries, looked up on every listing of the tree).
   */
  get learned(): number {
    return this.#learned;
  }
  #learned = 0;

  #remember(etag: string, sha256: string): void {
    this.#learned++;
    setWithin(this.#known, etag, sha256, HASH_CACHE_ENTRIES);
  }

  /** The cached hash for this identity, if known. */
  get(identity: string): string | undefined {
    return this.#known.get(etagOf(identity));
  }

  /** The cached hash for the version named `etag` (see {@link etagOf}), if known. */
  byEtag(etag: string): string | undefined {
    return this.#known.get(etag);
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
