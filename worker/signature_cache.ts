/**
 * A worker's cache of delta signatures (`delta.ts`): each file version is cut into chunks once, by a
 * shared job that reads it in slices between I/O (`file_jobs.ts`), and the encoded signature is kept
 * under the version's identity, within a byte bound, for every later `sig` request. The same read
 * gives the file's SHA-256 when it is not known yet, which the hash cache then keeps and shares.
 *
 * The cache is the worker's own: another worker asked for the same version computes it again (once).
 *
 * @module
 */

import type { Hash } from "node:crypto";
import { chunkBitsFor, encodeSignature, SignatureBuilder } from "../delta.ts";
import { createSha256 } from "../hashing.ts";
import { FileJobs } from "./file_jobs.ts";
import type { HashCache } from "./hash_cache.ts";

/** A file version's signature, encoded for the wire, and its SHA-256. */
export interface Signed {
  /** `encodeSignature`'s bytes; shared, never written to. */
  signature: Uint8Array;
  /** The whole file's SHA-256, hex. */
  sha256: string;
}

/** Bytes read per {@link SignatureCache.step} call at most, across all jobs (as the hash cache's). */
const STEP_BYTES = 256 * 1024;

/**
 * Bytes of signatures kept by default: a 1 GiB file's is under 400 KB, so this holds the signatures of
 * about a hundred such files, or thousands of small ones.
 */
export const SIGNATURE_CACHE_BYTES = 32 * 1024 * 1024;

/** Signatures by file identity, least recently used forgotten first, with shared background jobs. */
export class SignatureCache {
  readonly #known = new Map<string, Signed>();
  #bytes = 0;
  readonly #jobs: FileJobs<Signed>;

  /**
   * @param hashes the worker's SHA-256 cache: told of the hashes computed here, asked before computing one
   * @param log receives one line per signature computed (what, bytes, chunks, seconds)
   * @param maxBytes bytes of signatures kept at most
   */
  constructor(
    readonly hashes: HashCache,
    log: (line: string) => void = () => {},
    readonly maxBytes: number = SIGNATURE_CACHE_BYTES,
  ) {
    this.#jobs = new FileJobs<Signed>((end) => {
      const outcome = end.result === null ? "file changed while signing" : "ok";
      const size = end.result === null ? "" : ` signature=${end.result.signature.byteLength}`;
      log(
        `signed ${end.label} bytes=${end.bytes}${size} duration=${end.seconds.toFixed(3)}s result=${outcome}`,
      );
      if (end.result === null) return;
      this.#remember(end.identity, end.result);
      this.hashes.offer(end.identity, end.result.sha256);
    });
  }

  /** True while some job is waiting to be advanced by {@link step}. */
  get busy(): boolean {
    return this.#jobs.busy;
  }

  /**
   * Calls `done` with the version's signature and SHA-256 once known (at once if cached), or with null if
   * the file changed while it was read. `fd` is the caller's; a job reads a duplicate of it.
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
    const knownSha = this.hashes.get(identity);
    this.#jobs.request(identity, fd, size, label, () => signing(size, knownSha), done);
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

/** The work of one signature job: the chunks, and the SHA-256 unless it is known already. */
function signing(size: number, knownSha: string | undefined) {
  const builder = new SignatureBuilder(chunkBitsFor(size));
  const hash: Hash | null = knownSha === undefined ? createSha256() : null;
  return {
    update(bytes: Uint8Array): void {
      builder.update(bytes);
      hash?.update(bytes);
    },
    result(): Signed {
      return { signature: encodeSignature(builder.finish()), sha256: knownSha ?? hash!.digest("hex") };
    },
  };
}
