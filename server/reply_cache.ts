/**
 * Whole small replies kept in a worker's memory by path, for the files a fleet asks for again and again:
 * a cached answer costs one fstatat(2) instead of open, fstat, read, fstat and close, and no copying.
 *
 * An entry is made only from a reply just built from a file opened beneath the served directory, and it
 * is used only while the path still leads to that same file (device and inode) with the same size,
 * mtime, ctime and mode. The ctime moves on any chmod, chown, link count change or rename, so a file made
 * unreadable, or moved away, is looked up afresh by the usual path, which then answers as it must. The
 * assumption is the hash cache's: the same file with the same size and times holds the same bytes.
 * Beyond the budget, the oldest entries go first.
 *
 * @module
 */

import { type FileStat, LibcError, statAt } from "../ffi/libc.ts";

/** One cached answer to a plain `get` of a whole file. */
export interface CachedReply {
  /** The file as it was when the reply was built. */
  readonly stat: FileStat;
  /** Its etag. */
  readonly etag: string;
  /** Its SHA-256, hex. */
  readonly sha256: string;
  /** Header frame, Data frame, end frame: shared between connections, never written to. */
  readonly whole: Uint8Array;
  /** The answer to an `ifNoneMatch` of this SHA-256: Header frame (`unchanged`) and end frame. */
  readonly unchanged: Uint8Array;
}

/** Cached replies by path. */
export class ReplyCache {
  readonly #entries = new Map<string, CachedReply>();
  #bytes = 0;

  /** @param budget bytes of replies kept at most (the server's `--reply-cache`); 0 keeps none */
  constructor(readonly budget: number) {}

  /** Bytes of replies held now. */
  get bytes(): number {
    return this.#bytes;
  }

  /**
   * The cached reply for `path` if the path, resolved from `rootFd` now, is still the file it was built
   * from; otherwise null (and the entry is dropped).
   */
  lookup(rootFd: number, path: string): CachedReply | null {
    const entry = this.#entries.get(path);
    if (entry === undefined) return null;
    let now: FileStat;
    try {
      now = statAt(rootFd, path);
    } catch (e) {
      if (!(e instanceof LibcError)) throw e;
      this.#drop(path, entry);
      return null;
    }
    const then = entry.stat;
    if (
      now.ino !== then.ino || now.dev !== then.dev || now.size !== then.size ||
      now.mtimeNs !== then.mtimeNs || now.ctimeNs !== then.ctimeNs || now.mode !== then.mode
    ) {
      this.#drop(path, entry);
      return null;
    }
    return entry;
  }

  /** Keeps `entry` as the answer for `path`, unless it alone is larger than the budget. */
  store(path: string, entry: CachedReply): void {
    const size = sizeOf(entry);
    if (size > this.budget) return;
    const old = this.#entries.get(path);
    if (old !== undefined) this.#drop(path, old);
    this.#entries.set(path, entry);
    this.#bytes += size;
    for (const [oldest, victim] of this.#entries) {
      if (this.#bytes <= this.budget) break;
      this.#drop(oldest, victim);
    }
  }

  #drop(path: string, entry: CachedReply): void {
    this.#entries.delete(path);
    this.#bytes -= sizeOf(entry);
  }
}

function sizeOf(entry: CachedReply): number {
  return entry.whole.byteLength + entry.unchanged.byteLength;
}
