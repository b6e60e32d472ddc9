/**
 * Whole small replies kept by path, for the files a fleet asks for again and again: a cached answer costs
 * one fstatat(2) and one sendfile(2) instead of open, fstat, read, fstat and close.
 *
 * An entry is made only from a reply just built from a file opened beneath the served directory, and it
 * is used only while the path still leads to that same file (device and inode) with the same size,
 * mtime, ctime and mode. The ctime moves on any chmod, chown, link count change or rename, so a file made
 * unreadable, or moved away, is looked up afresh by the usual path, which then answers as it must. The
 * assumption is the hash cache's: the same file with the same size and times holds the same bytes.
 * Beyond the budget, the oldest entries go first. A reply is kept only from the second time its path is
 * asked for, and only one in {@link SPARSE_ADMISSION} while most of the replies evicted lately had never
 * been used (see {@link ReplyCache.admit}).
 *
 * Replies over {@link HEAP_REPLY_MAX} live in one memory file (memfd) per worker rather than in the
 * JavaScript heap, so that they go out with sendfile(2): the socket takes references to the pages instead
 * of copying the bytes, which was a third of a worker's time for replies of 64 KiB. The socket may hold
 * those pages after sendfile returns, so a range of the file is never written twice: each entry gets
 * fresh pages at the end of the file, and an evicted entry's pages are freed (a hole punched) only once
 * no connection is sending it. Smaller replies stay in the heap: their copy is cheap, and a page each
 * would waste most of it.
 *
 * @module
 */

import { close, type FileStat, LibcError, memfdCreate, punchHole, pwriteAll, statAt } from "../ffi/libc.ts";
import { type Body, FileRangeBody } from "./bodies.ts";
import { FRAME_HEADER_SIZE, getFrameLength } from "../framing.ts";
import { WorkerCell, workerMetrics } from "../metrics/registry.ts";
import { setWithin } from "./bounded_map.ts";

/** Entries in the memory file start on a page of their own, so that freeing one frees no other's. */
const PAGE = 4096;

/** Paths remembered as asked for once, at most: their names only, a few MiB at worst. */
const ASKED_ONCE_MAX = 65_536;

/** Evictions after which the cache looks back at how many of them had ever answered a request. */
export const EVICTION_WINDOW = 256;
/** While most evicted replies had never answered a request, one reply in this many that could be kept is. */
export const SPARSE_ADMISSION = 64;

/** Replies of at most this many bytes are kept in the heap and sent with a copy. */
export const HEAP_REPLY_MAX = 16 * 1024;

/** What the worker gives the cache: the reply to a plain `get` of a whole file, just built. */
export interface NewReply {
  /** The file as it was when the reply was built. */
  readonly stat: FileStat;
  /** Its etag. */
  readonly etag: string;
  /** Its SHA-256, hex. */
  readonly sha256: string;
  /** Header frame, Data frame, end frame (copied: the caller may reuse the buffer). */
  readonly whole: Uint8Array;
  /** The answer to an `ifNoneMatch` of this SHA-256: Header frame (`unchanged`) and end frame. */
  readonly unchanged: Uint8Array;
}

/** One cached answer; its `unchanged` answer is shared between connections, never written to. */
export interface CachedReply extends Omit<NewReply, "whole"> {
  /** Bytes of the whole reply. */
  readonly length: number;
}

/** An entry and where its reply lies: in the heap, or in the memory file. */
interface Entry extends CachedReply {
  /** The reply, if it is kept in the heap. */
  readonly whole: Uint8Array | null;
  /** Where it starts in the memory file, if it is kept there. */
  readonly offset: number;
  /** Bytes of its Header frame (the frame head included). */
  readonly headerLength: number;
  /** Bodies sending it now. */
  senders: number;
  /** Evicted: its pages go once `senders` is 0. */
  evicted: boolean;
  /** Whether it has answered a request (see {@link ReplyCache.admit}). */
  used: boolean;
}

/** Cached replies by path. */
export class ReplyCache {
  readonly #entries = new Map<string, Entry>();
  /** Etag by path of the replies asked for once and not kept, oldest first. */
  readonly #askedOnce = new Map<string, string>();
  /** Evictions since the last look back, and how many of them had never answered a request. */
  #evictions = 0;
  #unusedEvictions = 0;
  /** True when most replies evicted in the last window had never answered a request. */
  #sparse = false;
  /** Replies that could have been kept while sparse, to keep one in SPARSE_ADMISSION. */
  #couldKeep = 0;
  #bytes = 0;
  #memory = -1;
  #end = 0;

  /** Why the memory file is not used although the budget asks for it; new replies then go to the heap. */
  #memoryError: string | null = null;

  /**
   * @param budget bytes of replies kept at most (the server's `--reply-cache`); 0 keeps none. The memory
   * file is made now, so that a worker's fds are all open once it is ready. Where memfd_create(2) is
   * refused (a sandbox's syscall filter), the cache keeps working, from the heap.
   * @param onMemoryError told once, with the reason, if the memory file cannot be made, written or freed
   */
  constructor(readonly budget: number, readonly onMemoryError: (message: string) => void = () => {}) {
    if (budget === 0) return;
    try {
      this.#memory = memfdCreate("ferry-replies");
    } catch (e) {
      if (!(e instanceof LibcError)) throw e;
      this.#giveUpMemory(e.message);
    }
  }

  #giveUpMemory(message: string): void {
    if (this.#memoryError !== null) return;
    this.#memoryError = message;
    this.onMemoryError(message);
  }

  /** Bytes of replies held now (whole pages, as they take memory). */
  get bytes(): number {
    return this.#bytes;
  }

  /** The memory file holding the larger replies, or -1 when there is none. */
  get memoryFd(): number {
    return this.#memory;
  }

  /**
   * The cached reply for `path` if the path, resolved from `rootFd` now, is still the file it was built
   * from; otherwise null (and the entry is dropped).
   */
  lookup(rootFd: number, path: string): CachedReply | null {
    const entry = this.#entries.get(path);
    if (entry === undefined) {
      if (this.budget > 0) workerMetrics.count(WorkerCell.ReplyCacheMisses);
      return null;
    }
    let now: FileStat;
    try {
      now = statAt(rootFd, path);
    } catch (e) {
      if (!(e instanceof LibcError)) throw e;
      this.#drop(path, entry);
      workerMetrics.count(WorkerCell.ReplyCacheMisses);
      return null;
    }
    const then = entry.stat;
    if (
      now.ino !== then.ino || now.dev !== then.dev || now.size !== then.size ||
      now.mtimeNs !== then.mtimeNs || now.ctimeNs !== then.ctimeNs || now.mode !== then.mode
    ) {
      this.#drop(path, entry);
      workerMetrics.count(WorkerCell.ReplyCacheMisses);
      return null;
    }
    workerMetrics.count(WorkerCell.ReplyCacheHits);
    entry.used = true;
    return entry;
  }

  /**
   * What a connection sends for `reply` (from {@link lookup}): its bytes, shared and never written to, or
   * a body whose pages stay until it is released.
   */
  piece(reply: CachedReply): Uint8Array | Body {
    const entry = reply as Entry;
    if (entry.whole !== null) return entry.whole;
    entry.senders++;
    let released = false;
    return new FileRangeBody(this.#memory, entry.offset, entry.offset + entry.length, () => {
      if (released) return;
      released = true;
      if (--entry.senders === 0 && entry.evicted) this.#free(entry);
    }, entry.headerLength);
  }

  /**
   * True when the reply for `path`, of the version `etag`, is worth keeping: it was asked for before. A
   * host mirroring a tree larger than the cache asks for each file once, and keeping every reply only to
   * evict it unread cost an eighth of a worker's time; a file a fleet asks for is kept from its second
   * request on.
   *
   * Unless the cache is thrashing: hosts of a fleet that mirror a tree larger than the cache each ask for
   * every file, but too far apart for a reply to outlive the ones kept after it, and each reply kept then
   * costs a copy into the cache (for the larger ones, fresh pages of the memory file, freed again when
   * evicted) for nothing. So once most of the last {@link EVICTION_WINDOW} evicted replies had never
   * answered a request, only one reply in {@link SPARSE_ADMISSION} that could be kept is kept, until a
   * window's evicted replies were mostly used again: those live longer, so they tell whether keeping
   * replies pays again. A cache that holds what it is asked for evicts nothing and keeps admitting.
   */
  admit(path: string, etag: string): boolean {
    if (this.budget === 0) return false;
    const before = this.#askedOnce.get(path);
    this.#askedOnce.delete(path);
    if (before === etag && (!this.#sparse || ++this.#couldKeep % SPARSE_ADMISSION === 0)) return true;
    setWithin(this.#askedOnce, path, etag, ASKED_ONCE_MAX);
    return false;
  }

  /** Keeps a copy of `reply` as the answer for `path`, unless it alone is larger than the budget. */
  store(path: string, reply: NewReply): void {
    const length = reply.whole.byteLength;
    const inHeap = length <= HEAP_REPLY_MAX || this.#memory === -1 || this.#memoryError !== null;
    const size = sizeOf(length, reply.unchanged, inHeap);
    if (size > this.budget) return;
    const old = this.#entries.get(path);
    if (old !== undefined) this.#drop(path, old);
    let whole: Uint8Array | null = null, offset = -1;
    if (inHeap) {
      whole = reply.whole.slice();
    } else {
      offset = this.#end;
      this.#end += pages(length); // a range is never written twice, not even after a failed write
      try {
        pwriteAll(this.#memory, reply.whole, offset);
      } catch (e) {
        if (!(e instanceof LibcError)) throw e;
        this.#giveUpMemory(e.message); // e.g. ENOSPC or ENOMEM: this reply is not cached, later ones in the heap
        return;
      }
    }
    const { stat, etag, sha256, unchanged } = reply;
    this.#entries.set(path, {
      headerLength: FRAME_HEADER_SIZE + getFrameLength(reply.whole, 0),
      stat,
      etag,
      sha256,
      length,
      unchanged,
      whole,
      offset,
      senders: 0,
      evicted: false,
      used: false,
    });
    this.#bytes += size;
    for (const [oldest, victim] of this.#entries) {
      if (this.#bytes <= this.budget) break;
      this.#drop(oldest, victim);
      this.#countEviction(victim);
    }
  }

  /** Forgets every reply and closes the memory file (pages a socket still holds stay until it lets go). */
  close(): void {
    this.#entries.clear();
    this.#bytes = 0;
    if (this.#memory !== -1) close(this.#memory);
    this.#memory = -1;
  }

  /** Same as {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #drop(path: string, entry: Entry): void {
    this.#entries.delete(path);
    this.#bytes -= sizeOf(entry.length, entry.unchanged, entry.whole !== null);
    entry.evicted = true;
    if (entry.senders === 0) this.#free(entry);
  }

  /** Looks back at every EVICTION_WINDOW evictions for room: see {@link admit}. */
  #countEviction(victim: Entry): void {
    if (!victim.used) this.#unusedEvictions++;
    if (++this.#evictions < EVICTION_WINDOW) return;
    this.#sparse = this.#unusedEvictions * 2 > this.#evictions;
    this.#evictions = this.#unusedEvictions = 0;
  }

  #free(entry: Entry): void {
    if (entry.whole !== null || this.#memory === -1) return;
    try {
      punchHole(this.#memory, entry.offset, pages(entry.length));
    } catch (e) {
      // Pages that cannot be freed stay (at most the budget's worth); no more are written.
      if (!(e instanceof LibcError)) throw e;
      this.#giveUpMemory(e.message);
    }
  }
}

function pages(bytes: number): number {
  return Math.ceil(bytes / PAGE) * PAGE;
}

/** What an entry takes from the budget: its bytes in the heap, or its whole pages of the memory file. */
function sizeOf(length: number, unchanged: Uint8Array, inHeap: boolean): number {
  return (inHeap ? length : pages(length)) + unchanged.byteLength;
}
