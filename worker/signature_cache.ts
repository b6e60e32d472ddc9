/**
 * A worker's cache of delta signatures (`delta.ts`): each file version is cut into chunks once, by a
 * shared job that reads it in slices between I/O (`file_jobs.ts`), and the encoded signature is kept
 * under the version's identity, within a byte bound, for every later `sig` request. The same read
 * gives the file's SHA-256 when it is not known yet, which the hash cache then keeps and shares.
 *
 * A signature computed here is passed to the other workers (`onComputed`: the worker writes it into a memfd
 * whose fd the master relays), and one computed by another worker is read from its memfd when first asked
 * for ({@link SignatureCache.learn}), so a version is signed once per server.
 *
 * @module
 */

import type { Hash } from "node:crypto";
import {
  chunkBitsFor,
  decodeSignature,
  encodeSignature,
  GuidedSignatureBuilder,
  type Signature,
  SignatureBuilder,
} from "../delta.ts";
import { createSha256 } from "../hashing.ts";
import { close, type FileStat, fstat, pread } from "../ffi/libc.ts";
import { FileJobs } from "./file_jobs.ts";
import { etagOf, type HashCache, identityOf } from "./hash_cache.ts";
import { setWithin } from "./bounded_map.ts";

/** A file version's signature, encoded for the wire, and its SHA-256. */
export interface Signed {
  /** `encodeSignature`'s bytes; shared, never written to. */
  signature: Uint8Array;
  /** The whole file's SHA-256, hex. */
  sha256: string;
  /** When signed here by following the previous version's signature: the bytes found in it (for the log). */
  followed?: number;
}

/** Bytes read per {@link SignatureCache.step} call at most, across all jobs (as the hash cache's). */
const STEP_BYTES = 256 * 1024;

/**
 * Bytes of signatures kept by default: a 1 GiB file's is under 400 KB, so this holds the signatures of
 * about a hundred such files, or thousands of small ones.
 */
export const SIGNATURE_CACHE_BYTES = 32 * 1024 * 1024;

/** Signatures other workers computed, held as their memfds until asked for, at most. */
const MAX_SHARED = 64;

/** Paths whose last signed version is remembered, at most (see {@link SignatureCache.request}). */
const MAX_PATHS = 4096;

/** Signatures by file identity, least recently used forgotten first, with shared background jobs. */
export class SignatureCache {
  readonly #known = new Map<string, Signed>();
  #bytes = 0;
  readonly #jobs: FileJobs<Signed>;
  /** Signatures other workers computed, by etag: a memfd holding the signature, and the SHA-256. */
  readonly #shared = new Map<string, { fd: number; sha256: string }>();
  /** The identity of each path's version signed (or learned) last, by the label the path is asked with. */
  readonly #lastOf = new Map<string, string>();
  /** When each path may be signed ahead again (see {@link signAhead}), in `performance.now()` ms. */
  readonly #aheadNotBefore = new Map<string, number>();
  /**
   * Told the label of each path a version of which was just signed here (or taken from another worker for
   * a request): its next version is worth signing ahead (the worker's `SignAhead` watches its folder).
   */
  onSigned: (label: string) => void = () => {};

  /**
   * @param hashes the worker's SHA-256 cache: told of the hashes computed here, asked before computing one
   * @param log receives one line per signature computed (what, bytes, chunks, seconds)
   * @param onComputed told of each signature computed here, to pass it to the other workers
   * @param maxBytes bytes of signatures kept at most
   */
  constructor(
    readonly hashes: HashCache,
    log: (line: string) => void = () => {},
    onComputed: (etag: string, signed: Signed) => void = () => {},
    readonly maxBytes: number = SIGNATURE_CACHE_BYTES,
  ) {
    this.#jobs = new FileJobs<Signed>((end) => {
      if (end.computedHere) {
        const outcome = end.result === null ? "file changed while signing" : "ok";
        const size = end.result === null ? "" : ` signature=${end.result.signature.byteLength}`;
        const followed = end.result?.followed === undefined ? "" : ` followed=${end.result.followed}`;
        log(
          `signed ${end.label} bytes=${end.bytes}${size}${followed} duration=${
            end.seconds.toFixed(3)
          }s result=${outcome}`,
        );
      }
      if (end.result === null) return;
      this.#remember(end.identity, end.result);
      setWithin(this.#lastOf, end.label, end.identity, MAX_PATHS);
      this.onSigned(end.label);
      if (!end.computedHere) return;
      this.hashes.offer(end.identity, end.result.sha256);
      // Passed on before the waiters answer, so a client's next request may meet a worker that has it.
      onComputed(etagOf(end.identity), end.result);
    });
  }

  /**
   * Takes a signature another worker computed for the version named `etag`: `fd` (a memfd holding it) is
   * now this cache's to close. It is read when first asked for; a job of this cache for the same version
   * ends at once with it.
   */
  learn(etag: string, sha256: string, fd: number): void {
    const before = this.#shared.get(etag);
    if (before !== undefined) close(before.fd);
    this.#shared.delete(etag);
    if (this.#shared.size >= MAX_SHARED) {
      const [oldest, entry] = this.#shared.entries().next().value!;
      close(entry.fd);
      this.#shared.delete(oldest);
    }
    this.#shared.set(etag, { fd, sha256 });
    for (const identity of [...this.#jobs.identities()]) {
      if (etagOf(identity) !== etag) continue;
      const signed = this.#takeShared(identity);
      if (signed !== undefined) this.#jobs.end(identity, signed);
    }
  }

  /** The signature another worker passed for this version, read from its memfd, if there is one. */
  #takeShared(identity: string): Signed | undefined {
    const etag = etagOf(identity);
    const shared = this.#shared.get(etag);
    if (shared === undefined) return undefined;
    this.#shared.delete(etag);
    try {
      const signature = new Uint8Array(fstat(shared.fd).size);
      for (let got = 0; got < signature.byteLength;) {
        const n = pread(shared.fd, signature.subarray(got), got);
        if (n <= 0) return undefined; // a memfd nobody writes does not shrink; if it did, sign here
        got += n;
      }
      const signed = { signature, sha256: shared.sha256 };
      this.#remember(identity, signed);
      return signed;
    } finally {
      close(shared.fd);
    }
  }

  /** True when {@link signAhead} would sign a version of `label` now: the caller need not open it else. */
  signsAhead(label: string): boolean {
    return this.#lastOf.has(label) && performance.now() >= (this.#aheadNotBefore.get(label) ?? 0);
  }

  /**
   * Signs the version of the file `label` open as `fd` (its fstat: `stat`; `fd` stays the caller's), just
   * written, ahead of any request: when a version of the same path was signed here (or taken from another
   * worker for a request), whose clients will ask for this one on their next run. A path is signed ahead
   * at most a tenth of the time: a large file closed again and again (a log) costs a tenth of a core at
   * most, and the requests sign what this leaves out, as without it.
   */
  signAhead(label: string, fd: number, stat: Pick<FileStat, "dev" | "ino" | "size" | "mtimeNs">): void {
    if (!this.signsAhead(label)) return;
    const started = performance.now();
    setWithin(this.#aheadNotBefore, label, Infinity, MAX_PATHS); // not again while this runs
    this.request(identityOf(stat), fd, stat.size, label, () => {
      const now = performance.now();
      setWithin(this.#aheadNotBefore, label, now + 9 * (now - started), MAX_PATHS);
    });
  }

  /** True while some job is waiting to be advanced by {@link step}. */
  get busy(): boolean {
    return this.#jobs.busy;
  }

  /**
   * Calls `done` with the version's signature and SHA-256 once known (at once if cached), or with null if
   * the file changed while it was read. `fd` is the caller's; a job reads a duplicate of it. A version of a
   * path (`label`) whose previous version's signature is still kept here is signed by following that one
   * (`delta.ts`, GuidedSignatureBuilder): where the file did not change, its chunks are only hashed.
   */
  request(
    identity: string,
    fd: number,
    size: number,
    label: string,
    done: (signed: Signed | null) => void,
  ): void {
    const known = this.#known.get(identity);
    if (known !== undefined) {
      this.#known.delete(identity); // most recently used last
      this.#known.set(identity, known);
      return done(known);
    }
    const shared = this.#takeShared(identity);
    if (shared !== undefined) {
      setWithin(this.#lastOf, label, identity, MAX_PATHS);
      this.onSigned(label);
      return done(shared);
    }
    const hashes = this.hashes;
    this.#jobs.request(
      identity,
      fd,
      size,
      label,
      () => signing(size, () => hashes.get(identity), this.#guideFor(label)),
      done,
    );
  }

  /** The signature of the version of `label` signed last, if it is still kept (and well formed). */
  #guideFor(label: string): Signature | null {
    const previous = this.#lastOf.get(label);
    const signed = previous === undefined ? undefined : this.#known.get(previous);
    if (signed === undefined) return null;
    try {
      return decodeSignature(signed.signature);
    } catch {
      return null; // ours, so never; without a guide the version is cut whole
    }
  }

  /** Advances the jobs; call from the worker loop while {@link busy}. */
  step(): void {
    this.#jobs.step(STEP_BYTES);
  }

  #remember(identity: string, signed: Signed): void {
    const bytes = signed.signature.byteLength;
    if (bytes > this.maxBytes) return;
    while (this.#bytes + bytes > this.maxBytes) {
      const [oldest, entry] = this.#known.entries().next().value!;
      this.#known.delete(oldest);
      this.#bytes -= entry.signature.byteLength;
    }
    this.#known.set(identity, signed);
    this.#bytes += bytes;
  }
}

/**
 * The work of one signature job: the chunks (following `guide`, the previous version's signature, when it
 * was cut with the same bits), and the SHA-256 unless `knownSha` gives it. It may come while the job runs:
 * a first copy's `get` has the version hashed on one worker while another signs it, and whichever hash
 * comes first is the one both keep.
 */
function signing(size: number, knownSha: () => string | undefined, guide: Signature | null) {
  const bits = chunkBitsFor(size);
  const guided = guide?.bits === bits ? new GuidedSignatureBuilder(guide) : null;
  const builder = guided ?? new SignatureBuilder(bits);
  let sha = knownSha();
  let hash: Hash | null = sha === undefined ? createSha256() : null;
  return {
    update(bytes: Uint8Array): void {
      builder.update(bytes);
      if (hash === null) return;
      sha = knownSha();
      if (sha === undefined) hash.update(bytes);
      else hash = null;
    },
    result(): Signed {
      const signature = encodeSignature(builder.finish());
      const sha256 = sha ?? hash!.digest("hex");
      return guided === null ? { signature, sha256 } : { signature, sha256, followed: guided.followed };
    },
  };
}
