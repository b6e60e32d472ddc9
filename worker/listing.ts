/**
 * The answer to `list`: a walk of the folder (recursive or not) that reports what it had to leave out
 * instead of hiding it, done a bounded amount at a time so that a large tree never holds up the worker's
 * other connections. The walk is a {@link Body} of the reply: the connection pumps it like a file body,
 * and each pump call reads, opens and sends only so much before it yields its turn.
 *
 * A streamed listing (`"stream": true`) sends its entries in Entries frames as it goes, without a limit on
 * their number; one that is not streamed gathers at most {@link MAX_LIST_ENTRIES} into one Header, as
 * protocol clients before streaming expect. Both say what was left out (PROTOCOL.md, `list`).
 *
 * @module
 */

import type { Body, PumpResult } from "./bodies.ts";
import {
  C,
  close,
  type FileStat,
  getdents,
  LibcError,
  statWordsAt,
  trySend,
  WOULD_BLOCK,
} from "../ffi/libc.ts";
import {
  decodeStatVersion,
  direntsOf,
  DT,
  nameText,
  sizeOfStat,
  STAT,
  type StatVersion,
} from "../ffi/structs.ts";
import { compressedFrame } from "./compression.ts";
import { BufferPool } from "./reply_pool.ts";
import {
  encodeJsonFrame,
  END_FRAME,
  ErrorCode,
  type FolderRecord,
  FRAME_HEADER_SIZE,
  FrameType,
  INLINE_BATCH_BYTES,
  LEFT_OUT_SHOWN,
  type LeftOut,
  LIST_BATCH_BYTES,
  type ListEntry,
  type ListTrailer,
  MAX_INLINE_FILE,
  MAX_KNOWN_FOLDER_FILES,
  MAX_LIST_DEPTH,
  MAX_LIST_ENTRIES,
  MAX_PARTIAL_RECORD_BYTES,
  MAX_RESPONSE_FRAME,
  type PartialRecord,
  PROTOCOL_VERSION,
  putFrameLength,
  type Request,
} from "../framing.ts";
import { etagOf, identityOf } from "./hash_cache.ts";
import { WorkerCell, workerMetrics } from "../metrics/registry.ts";
import { etagInEntry, type FolderNames, SHA256_FIELD_LENGTH, withSha256 } from "./listing_memo.ts";
import type { WatchMark } from "./folder_watch.ts";
import { FolderDigest } from "../hashing.ts";
import {
  ErrorPiece,
  openBeneath,
  openBeneathUnlooked,
  openError,
  readWholeFile,
  type Reply,
  type ReplyContext,
} from "./operations.ts";
import type { Reach } from "../tokens.ts";

/**
 * Work one pump call may do before the connection's turn ends: a file costs one unit (open, fstat,
 * close), a folder's open or one read of its names a few. About a millisecond on a warm cache, the order
 * of what a 512 KiB data turn costs.
 */
const UNITS_PER_TURN = 256;
const UNITS_PER_READ = 8;

/** Bytes asked of getdents64 per call: a few hundred names. */
const DIRENT_BUFFER = 32 * 1024;

/**
 * The JSON of a Header that is not streamed stays below this, whatever the paths (a path of 4096 bytes
 * escaped as `\uXXXX` takes six times that): the frame must fit {@link MAX_RESPONSE_FRAME}.
 */
const MAX_HEADER_JSON = MAX_RESPONSE_FRAME - 64 * 1024;

const utf8 = new TextEncoder();

/** Answers `list`: NOT_FOUND, FORBIDDEN or NOT_A_FILE for a folder that cannot be listed, else the walk. */
export function list(request: Readonly<Request>, ctx: ReplyContext): Reply {
  const path = request.path!;
  const label = `LIST ${JSON.stringify(path)}${request.recursive ? " recursive" : ""}${
    request.stream ? " stream" : ""
  }${request.inline ? ` inline=${request.inline}` : ""}${
    request.inlineSince ? ` since=${request.inlineSince}` : ""
  }${request.known ? ` known=${request.known.length}` : ""}`;
  const opened = openBeneath(ctx, path, "directory");
  if (opened instanceof LibcError || !("fd" in opened)) {
    const body = opened instanceof LibcError ? openError(opened, path) : opened;
    return { label, pieces: [new ErrorPiece(body)], files: [] };
  }
  // A streamed listing's batches are compressed when the client offers zstd: paths repeat, and a large
  // tree's listing is megabytes that a slow link carries before any file.
  const compress = request.stream === true && request.accept?.includes("zstd") === true;
  const reply: Reply = { label: compress ? `${label} zstd` : label, pieces: [], files: [] };
  const reach = ctx.access.required ? ctx.access.reach(path) : "read";
  const walk = new Walk(
    ctx,
    path,
    opened,
    request.recursive === true,
    reach,
    request.brief === true,
    request.known === undefined ? null : new Set(request.known),
    request.knownSince === undefined ? null : instantOf(BigInt(request.knownSince)),
    request.folders === true,
  );
  reply.pieces.push(
    new ListingBody(
      walk,
      request.stream === true,
      (result) => reply.result = result,
      compress,
      request.inline ?? (request.inlineSince === undefined ? 0 : MAX_INLINE_FILE),
      request.inlineSince === undefined ? null : instantOf(BigInt(request.inlineSince)),
    ),
  );
  return reply;
}

/**
 * A file the walk found: its path, its size, its ctime (in two numbers: no object more per file), its JSON
 * and that JSON's length in UTF-8. Or, with `record`, a folder whose files the client knows (`whole`), or
 * knows but for those listed after the record (`partial`): its FolderRecord's or PartialRecord's JSON, and
 * in `size` the number of the files it stands for.
 */
interface Found {
  path: string;
  size: number;
  ctimeSeconds: number;
  ctimeNanoseconds: number;
  json: string;
  bytes: number;
  /** `whole` or `partial`: a folder record; `empty`: an empty folder's entry (`folders`). */
  record?: "whole" | "partial" | "empty";
}

/** A time as whole seconds since the epoch and nanoseconds: exact, as a file system stamps it. */
interface Instant {
  seconds: number;
  nanoseconds: number;
}

/** The time `ns` (nanoseconds since the epoch) as an {@link Instant}. */
function instantOf(ns: bigint): Instant {
  return { seconds: Number(ns / 1_000_000_000n), nanoseconds: Number(ns % 1_000_000_000n) };
}

/** Where a `struct stat` given as u32 words has `st_ctim`: seconds (two words), then nanoseconds. */
const CTIME_WORD = STAT.st_ctim / 4;

/** The seconds of `st_ctim` of a `struct stat` given as u32 words. */
function ctimeSecondsOf(words: Uint32Array): number {
  return words[CTIME_WORD] + words[CTIME_WORD + 1] * 0x1_0000_0000;
}

/** True when the file `found` changed at `since` or later, by its ctime. */
function changedSince(found: Found, since: Instant): boolean {
  return found.ctimeSeconds > since.seconds ||
    (found.ctimeSeconds === since.seconds && found.ctimeNanoseconds >= since.nanoseconds);
}

/** A folder on the walk's stack: being read (`fd` open), or read and being gone through. */
interface Folder {
  /** Path relative to the root (`""` for the root). */
  path: string;
  /** Levels below the listed folder. */
  depth: number;
  /** The open folder, until the walk leaves it: its regular files are looked at relative to it. */
  fd: number;
  /** The folder's fstat when it was opened: what its names are kept under (`listing_memo.ts`). */
  stat: FileStat;
  /** The names read so far, raw, until the folder is read whole. */
  reading: { name: Uint8Array; type: number }[];
  /** Its names in byte order once read whole (or as the memo kept them); null until then. */
  names: FolderNames | null;
  /** Names that are not UTF-8, raw, by their place in `names` (whose text for them is empty). */
  notUtf8: Map<number, Uint8Array> | null;
  /** The next name to look at. */
  next: number;
  /** True once the folder's files were looked at for a digest (a request with `known`), or need not be. */
  digested: boolean;
  /**
   * The entries of its files made so far, each at its name's place, once a look began; null before, or
   * when the folder was known (`known`: its files are not listed).
   */
  files: Found[] | null;
  /**
   * What the look found of its files: their fstat words, STAT_WORDS at each name's place below
   * `lookedUpTo`, of which a file's entry is made when it is listed. A look needs only their etags: a
   * folder sent as a record needs no entry at all.
   */
  looked: Uint32Array | null;
  /** The places whose words {@link looked} holds: those below it that are regular files. */
  lookedUpTo: number;
  /** True when the client knows the folder's files: they were sent as one FolderRecord. */
  known: boolean;
  /** Set when the folder was sent as a PartialRecord: only its files changed since then are listed. */
  partialSince: Instant | null;
  /**
   * The look at the folder's files for its digest, while it takes more than one turn; `linked` once a file
   * with another link was found (its digest is then not kept: see `folder_watch.ts`).
   */
  digesting: { digest: FolderDigest; at: number; count: number; linked: boolean } | null;
  /** The worker's watch's mark of the folder, taken when it was opened for a digest; null without. */
  mark: WatchMark | null;
  /**
   * "read" inside the token's scopes (everything below is listed), "way" above a scope (only the names on
   * the way down to a scope are looked at; the others are passed over without a trace, not even as left
   * out, so a listing says nothing of what the token may not read).
   */
  reach: Reach;
}

/** Byte order of raw names: the order `LC_ALL=C ls` shows, for names in any encoding. */
function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.byteLength, b.byteLength);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.byteLength - b.byteLength;
}

/**
 * The walk of a listing, depth first in byte order of the names, one step at a time: each step reads a
 * batch of a folder's names or looks at one name (a regular file by fstatat in its folder, anything else by
 * an open beneath the root). It holds an fd for each folder it is in, at most one per level.
 */
class Walk {
  /** Left-out folders and entries so far. */
  readonly leftOut: LeftOut = { count: 0, first: [] };
  /** Files found by the last steps, for the body to take: each one's path, size and entry's JSON. */
  readonly found: Found[] = [];
  readonly #stack: Folder[] = [];
  static readonly #buffer = new Uint8Array(DIRENT_BUFFER);
  /**
   * What {@link Walk.#statAhead} found: for the names of `#aheadOf` from place `#aheadFrom` on, each regular
   * file's `struct stat` as words, or the error of its fstatat. The walk's own: other walks take turns.
   */
  readonly #aheadWords = new Uint32Array(STATS_AHEAD * STAT_WORDS);
  readonly #aheadErrors: (LibcError | null)[] = [];
  #aheadOf: Folder | null = null;
  #aheadFrom = 0;
  #aheadCount = 0;

  /**
   * @param ctx the worker's root, hash cache
   * @param path the listed folder, relative to the root
   * @param opened the listed folder, open (the walk closes it), and its fstat
   * @param recursive true to descend into subfolders
   * @param reach where the listed folder stands for the connection's token ("read" without tokens)
   * @param brief leave each entry's `mtimeNs` and `mode` out
   * @param known the digests of the folders whose files the client holds (the request's `known`), or null
   * @param knownSince the request's `knownSince`: the time the client's copy was listed, or null
   * @param folders list each empty folder below the listed one (the request's `folders`)
   */
  constructor(
    readonly ctx: ReplyContext,
    path: string,
    opened: { fd: number; stat: FileStat },
    readonly recursive: boolean,
    reach: Reach,
    readonly brief = false,
    readonly known: ReadonlySet<string> | null = null,
    readonly knownSince: Instant | null = null,
    readonly folders = false,
  ) {
    const { fd, stat } = opened;
    this.#stack.push(this.#folder(path, 0, fd, stat, reach));
  }

  /**
   * A folder to go through, its names not read yet. Where a digest is wanted, the folder is marked for it
   * first, before anything is read of it: a listing with `known` digests its folders to answer it, any
   * other recursive listing to keep each digest with its mark, for the next listing with `known` (a first
   * copy's listing, then the next run's).
   */
  #folder(path: string, depth: number, fd: number, stat: FileStat, reach: Reach): Folder {
    const wanted = reach === "read" && (this.known !== null || this.recursive);
    const mark = wanted ? this.ctx.listingMemo.markFolder(fd, stat) : null;
    // Without `known`, a digest that cannot be kept is not worth making.
    const digested = this.known === null && mark === null;
    return {
      path,
      depth,
      fd,
      stat,
      reading: [],
      names: null,
      notUtf8: null,
      next: 0,
      reach,
      digested,
      files: null,
      looked: null,
      lookedUpTo: 0,
      known: false,
      partialSince: null,
      digesting: null,
      mark,
    };
  }

  /** True once every folder has been gone through. */
  get done(): boolean {
    return this.#stack.length === 0;
  }

  /** Notes a folder or file that cannot be part of the listing. */
  leaveOut(path: string, reason: string): void {
    if (this.leftOut.first.length < LEFT_OUT_SHOWN) this.leftOut.first.push({ path, reason });
    this.leftOut.count++;
  }

  /** Closes the folder being read, if any; the walk is over (also when the listing's limit is reached). */
  release(): void {
    for (const folder of this.#stack) if (folder.fd >= 0) close(folder.fd);
    this.#stack.length = 0;
  }

  /** One step of the walk; returns the work units it took. */
  step(): number {
    const folder = this.#stack.at(-1)!;
    const { names } = folder;
    if (names === null) return this.#heldUnread(folder) ? 1 : this.#readNames(folder);
    if (!folder.digested) return this.#digest(folder);
    if (folder.next >= names.texts.length) {
      close(folder.fd);
      this.#stack.pop();
      // A folder of no name at all (the listed one aside): one that only holds what is not served is not.
      if (
        this.folders && names.texts.length === 0 && !folder.known && folder.depth > 0 &&
        folder.reach === "read"
      ) {
        const json = JSON.stringify({ emptyFolder: folder.path });
        const bytes = utf8Length(json);
        this.found.push({
          path: folder.path,
          size: 0,
          ctimeSeconds: 0,
          ctimeNanoseconds: 0,
          json,
          bytes,
          record: "empty",
        });
      }
      return 0;
    }
    const at = folder.next++;
    const raw = folder.notUtf8?.get(at);
    if (raw !== undefined) {
      // Above a scope, such a name is not on the way down (scopes are text): not a word of it.
      if (folder.reach === "read") {
        this.leaveOut(join(folder.path, nameText(raw, true)), "name is not valid UTF-8");
      }
      return 1;
    }
    const text = names.texts[at], type = names.types[at];
    const rel = join(folder.path, text);
    const reach = folder.reach === "read" ? "read" : this.ctx.access.reach(rel);
    if (reach === "none") return 1;
    if (type === DT.DIR) return this.#enter(folder, rel, reach);
    if (reach === "way" && type !== DT.UNKNOWN) return 1; // neither a file nor a symlink leads to a scope
    if (type === DT.REG) {
      if (folder.known) return 1; // sent in its folder's record
      const found = folder.files?.[at] ?? this.#lookedEntry(folder, at, rel);
      if (found !== undefined) {
        // After a partial record, only the files it names as changed.
        const since = folder.partialSince;
        if (since === null || changedSince(found, since)) this.found.push(found);
        return 1;
      }
      if (this.#statInFolder(folder, at, rel)) return 1;
    }
    if (type === DT.REG || type === DT.LNK || type === DT.UNKNOWN) {
      return this.#look(folder, rel, type, reach);
    }
    return 1; // FIFOs, sockets, devices: not served, by design
  }

  /**
   * Reads a batch of the folder's names; once all are read, sorts them. A folder as the memo kept it is
   * not read: its names come from there.
   */
  #readNames(folder: Folder): number {
    const memo = this.ctx.listingMemo;
    if (folder.reading.length === 0) {
      const kept = memo.namesOf(folder.path, folder.stat);
      if (kept !== undefined) {
        folder.names = kept;
        return 1;
      }
    }
    let n: number;
    try {
      n = getdents(folder.fd, Walk.#buffer);
    } catch (e) {
      if (!(e instanceof LibcError)) throw e;
      // Removed while being read (ENOENT), or an I/O error: what was read of it cannot be trusted whole.
      this.leaveOut(folder.path, `cannot read the folder: ${e.errnoName}`);
      close(folder.fd);
      this.#stack.pop();
      return UNITS_PER_READ;
    }
    if (n > 0) {
      for (const { name, type } of direntsOf(Walk.#buffer, n)) {
        folder.reading.push({ name: name.slice(), type });
      }
      return UNITS_PER_READ;
    }
    workerMetrics.count(WorkerCell.ListingFoldersRead);
    const raw = folder.reading.sort((a, b) => compareBytes(a.name, b.name));
    folder.reading = [];
    const texts: string[] = [], types = new Uint8Array(raw.length);
    for (const [i, { name, type }] of raw.entries()) {
      types[i] = type;
      try {
        texts.push(nameText(name));
      } catch {
        texts.push("");
        (folder.notUtf8 ??= new Map()).set(i, name);
      }
    }
    folder.names = { texts, types };
    // A name that is not UTF-8 is said again by each walk: such a folder is read each time.
    if (folder.notUtf8 === null) {
      memo.keepNames(folder.path, folder.stat, folder.names, BigInt(Date.now()) * 1_000_000n);
    }
    return 1;
  }

  /** Descends into the subfolder `rel` of `folder`, or says why not. */
  #enter(folder: Folder, rel: string, reach: Reach): number {
    if (!this.recursive) return 1;
    if (folder.depth >= MAX_LIST_DEPTH) {
      this.leaveOut(rel, `deeper than ${MAX_LIST_DEPTH} levels`);
      return 1;
    }
    const opened = openBeneath(this.ctx, rel, "directory");
    if (opened instanceof LibcError) {
      this.#failedOpen(rel, opened, DT.DIR);
    } else if (!("fd" in opened)) {
      this.leaveOut(rel, "changed from a folder to something else during the listing");
    } else {
      this.#stack.push(this.#folder(rel, folder.depth + 1, opened.fd, opened.stat, reach));
    }
    return 2;
  }

  /**
   * Lists a regular file by fstatat(2) in its open folder, without following a symlink: one system call
   * where an open beneath the root costs three, and the name is one component of a folder opened beneath
   * the root, so nothing can lead outside. False when the name is no longer a regular file (replaced
   * meanwhile), for `#look` to decide.
   */
  #statInFolder(folder: Folder, at: number, rel: string): boolean {
    const found = this.#fileAt(folder, at, rel);
    if (found === null) return false;
    if (found instanceof LibcError) this.#failedOpen(rel, found, DT.REG);
    else this.found.push(found);
    return true;
  }

  /**
   * The entry of the regular file at place `at` of `folder`'s names (see {@link #statInFolder}), or the
   * error of its fstatat; null when it is no longer a regular file.
   */
  #fileAt(folder: Folder, at: number, rel: string): Found | LibcError | null {
    let words: Uint32Array;
    try {
      // Above a scope most names are passed over: there each is looked at alone.
      words = folder.reach === "read"
        ? this.#statAhead(folder, at)
        : statWordsAt(folder.fd, folder.names!.texts[at]);
    } catch (e) {
      if (!(e instanceof LibcError)) throw e;
      return e;
    }
    return this.#entryFrom(folder, at, rel, words);
  }

  /** The entry of the file at place `at` of `folder` whose fstat gave `words`; null if it is no regular file. */
  #entryFrom(folder: Folder, at: number, rel: string, words: Uint32Array): Found | null {
    const { listingMemo: memo, hashes } = this.ctx;
    const name = folder.names!.texts[at];
    const kept = memo.entryOf(
      folder.path,
      name,
      words,
      this.brief,
      (etag) => hashes.byEtag(etag),
      hashes.learned,
    );
    if (kept !== undefined) {
      workerMetrics.count(WorkerCell.ListingEntriesReused);
      return {
        path: rel,
        size: sizeOfStat(words),
        ctimeSeconds: ctimeSecondsOf(words),
        ctimeNanoseconds: words[CTIME_WORD + 2],
        json: kept,
        bytes: memo.lastEntryBytes,
      };
    }
    const stat = decodeStatVersion(words);
    if (!stat.isFile) return null;
    const ctime = { seconds: ctimeSecondsOf(words), nanoseconds: words[CTIME_WORD + 2] };
    const { found, json, bytes, hashed } = this.#found(rel, stat, ctime);
    // The hash cache was just asked: the next listing need not ask again unless it learns more.
    memo.keepEntry(folder.path, name, words, this.brief, json, bytes, hashed ? NaN : hashes.learned);
    return found;
  }

  /**
   * Looks at all of `folder`'s files before listing any, for the digest a request's `known` may hold
   * (hashing.ts, `FolderDigest`), or the next one's, a turn's worth of files at a time: other connections
   * take their turns in between, as during any walk. If `known` holds the digest, the folder's files are
   * sent as one FolderRecord; else each is listed, from what this look found. A folder with a symlink, a
   * name of no type or that is not UTF-8, above a scope, without files or with more than
   * MAX_KNOWN_FOLDER_FILES gets no digest: what its listing would hold takes more than an fstatat per file
   * to know, or too much memory to hold. Returns the work units taken.
   */
  #digest(folder: Folder): number {
    let look = folder.digesting;
    if (look === null) {
      if (folder.reach !== "read" || folder.notUtf8 !== null) return this.#undigested(folder);
      let count = 0;
      for (const type of folder.names!.types) {
        if (type === DT.LNK || type === DT.UNKNOWN) return this.#undigested(folder);
        if (type === DT.REG) count++;
      }
      if (count === 0 || count > MAX_KNOWN_FOLDER_FILES) return this.#undigested(folder);
      look = folder.digesting = { digest: new FolderDigest(folder.path), at: 0, count, linked: false };
      folder.files = [];
      folder.looked = new Uint32Array(folder.names!.texts.length * STAT_WORDS);
    }
    const { texts, types } = folder.names!;
    let units = 0;
    for (; look.at < texts.length && units < UNITS_PER_TURN; look.at++) {
      if (types[look.at] !== DT.REG) continue;
      units++;
      let words: Uint32Array;
      try {
        words = this.#statAhead(folder, look.at);
      } catch (e) {
        if (!(e instanceof LibcError)) throw e;
        return units + this.#undigested(folder); // listed one by one from here, where the walk says why
      }
      // The etag of its entry, kept (a regular file's), made for the memo, or worked out alone where the memo
      // is full: the digest needs no more of the file.
      const memo = this.ctx.listingMemo;
      let etag = memo.keptEtag(folder.path, texts[look.at], words);
      if (etag === undefined && memo.hasRoom) {
        const found = this.#entryFrom(folder, look.at, join(folder.path, texts[look.at]), words);
        // Replaced meanwhile: listed one by one from here, where the walk says what became of it.
        if (found === null) return units + this.#undigested(folder);
        folder.files![look.at] = found;
        etag = etagInEntry(found.json);
      } else if (etag === undefined) {
        const version = decodeStatVersion(words);
        if (!version.isFile) return units + this.#undigested(folder); // as above
        etag = etagOf(identityOf(version));
      }
      folder.looked!.set(words, look.at * STAT_WORDS);
      folder.lookedUpTo = look.at + 1;
      look.digest.add(texts[look.at], etag);
      if (words[NLINK_WORD] !== 1 || words[NLINK_WORD + 1] !== 0) look.linked = true;
    }
    if (look.at < texts.length) return units; // the look goes on at the folder's next turn
    this.#undigested(folder);
    const digest = look.digest.digest();
    if (folder.mark !== null && !look.linked) {
      const subfolders = texts.filter((_, at) => types[at] === DT.DIR);
      this.ctx.listingMemo.keepDigest(folder.path, folder.stat, digest, look.count, subfolders, folder.mark);
    }
    if (this.known === null) return units; // its files are listed from what the look found
    if (this.known.has(digest)) this.#held(folder, look.count, WorkerCell.ListingRecordsByLook);
    else if (this.knownSince !== null) this.#partial(folder, look.count, digest, this.knownSince);
    return units;
  }

  /**
   * Sends `folder` as one record, before its names are read or its files looked at, when the memo kept its
   * digest, the client holds that digest, and the worker's watch vouches that nothing changed in it since
   * (`folder_watch.ts`): its names are then those the digest was made from, of which the walk still needs
   * only the subfolders', kept with the digest. A tree of more names than the memo keeps had every such
   * folder read again by each listing: a million files in 1,000 folders cost a worker 1.5-1.7 s of CPU per
   * listing that found nothing changed, against 0.08-0.10 s without those reads.
   */
  #heldUnread(folder: Folder): boolean {
    if (this.known === null || folder.reach !== "read" || folder.reading.length > 0) return false;
    const kept = this.ctx.listingMemo.digestOf(folder.path, folder.stat);
    if (kept === undefined || !this.known.has(kept.digest)) return false;
    folder.names = { texts: kept.subfolders, types: new Uint8Array(kept.subfolders.length).fill(DT.DIR) };
    this.#undigested(folder);
    this.#held(folder, kept.files, WorkerCell.ListingRecordsByWatch);
    return true;
  }

  /**
   * Sends `folder`, of `count` files, as one FolderRecord (the client holds it as it is), counted in the
   * metrics' cell `by`: its files are not listed.
   */
  #held(
    folder: Folder,
    count: number,
    by: typeof WorkerCell.ListingRecordsByWatch | typeof WorkerCell.ListingRecordsByLook,
  ): void {
    folder.known = true;
    folder.files = null;
    folder.looked = null;
    this.#record({ folder: folder.path, files: count } satisfies FolderRecord, count, "whole");
    workerMetrics.count(by);
  }

  /**
   * Sends `folder` (digested, not known) as a PartialRecord followed by the entries of its files changed
   * since `since`, when some of its files did not change and the record is not too long: the client holds
   * those as the listing of `since` gave them, which the record's digest lets it check.
   */
  #partial(folder: Folder, count: number, digest: string, since: Instant): void {
    const { texts, types } = folder.names!;
    const changed: [string, string][] = [], names: string[] = [];
    for (let at = 0; at < texts.length; at++) {
      if (types[at] !== DT.REG) continue;
      const found = folder.files![at] ?? this.#lookedEntry(folder, at, join(folder.path, texts[at]))!;
      names.push(texts[at]);
      if (changedSince(found, since)) changed.push([texts[at], etagInEntry(found.json)]);
    }
    if (changed.length === count) return;
    // A name added, removed or renamed stamps the folder's ctime: only then need the client be told them.
    const renamed = folder.stat.ctimeNs >= BigInt(since.seconds) * 1_000_000_000n + BigInt(since.nanoseconds);
    const record: PartialRecord = { folder: folder.path, files: count, digest, changed };
    if (renamed) record.names = names;
    if (!this.#record(record, count - changed.length, "partial")) return;
    folder.partialSince = since;
  }

  /** Adds a folder's record to what was found, unless a partial one is too long; returns whether it did. */
  #record(record: FolderRecord, files: number, kind: "whole" | "partial"): boolean {
    const json = JSON.stringify(record);
    const bytes = utf8Length(json);
    if (kind === "partial" && bytes > MAX_PARTIAL_RECORD_BYTES) return false;
    this.found.push({
      path: record.folder,
      size: files,
      ctimeSeconds: 0,
      ctimeNanoseconds: 0,
      json,
      bytes,
      record: kind,
    });
    return true;
  }

  /**
   * The entry of the file at place `at` of `folder` (path `rel`) made of what the folder's look found, kept
   * for the folder's listing; undefined where the look found nothing.
   */
  #lookedEntry(folder: Folder, at: number, rel: string): Found | undefined {
    if (folder.looked === null || at >= folder.lookedUpTo) return undefined;
    const found = this.#entryFrom(
      folder,
      at,
      rel,
      folder.looked.subarray(at * STAT_WORDS, (at + 1) * STAT_WORDS),
    );
    if (found === null) return undefined;
    folder.files![at] = found;
    return found;
  }

  /** Ends the look of {@link #digest} at `folder`: its files are listed from what it found, if anything. */
  #undigested(folder: Folder): number {
    folder.digested = true;
    folder.digesting = null;
    return 0;
  }

  /**
   * The fstatat of the regular file at place `at` of `folder`'s names (throws its LibcError), made in a
   * loop with those of the next regular files, up to STATS_AHEAD names on. Looked at in one loop and then
   * made into entries, the 100,000 files of a listing whose entries the memo had cost its worker about a
   * quarter less CPU than each looked at and made into its entry in turn.
   */
  #statAhead(folder: Folder, at: number): Uint32Array {
    if (this.#aheadOf !== folder || at < this.#aheadFrom || at >= this.#aheadFrom + this.#aheadCount) {
      const { texts, types } = folder.names!;
      let n = 0;
      for (let place = at; place < texts.length && n < STATS_AHEAD; place++, n++) {
        this.#aheadErrors[n] = null;
        if (types[place] !== DT.REG || folder.notUtf8?.has(place)) continue;
        try {
          this.#aheadWords.set(statWordsAt(folder.fd, texts[place]), n * STAT_WORDS);
        } catch (e) {
          if (!(e instanceof LibcError)) throw e;
          this.#aheadErrors[n] = e;
        }
      }
      this.#aheadOf = folder;
      this.#aheadFrom = at;
      this.#aheadCount = n;
    }
    const k = at - this.#aheadFrom;
    const error = this.#aheadErrors[k];
    if (error !== null) throw error;
    return this.#aheadWords.subarray(k * STAT_WORDS, (k + 1) * STAT_WORDS);
  }

  /** Lists the file `rel` (a regular file, or a symlink to one), or says why not. */
  #look(folder: Folder, rel: string, type: number, reach: Reach): number {
    // Above a scope only a folder may lead on: a name of unknown type is tried as one.
    if (reach === "way") return this.#enter(folder, rel, reach);
    const opened = openBeneath(this.ctx, rel, "file");
    if (opened instanceof LibcError) {
      this.#failedOpen(rel, opened, type);
      return 1;
    }
    if (!("fd" in opened)) {
      // A symlink to a folder is not followed; one the file system did not type may be a folder.
      if (type === DT.UNKNOWN) return this.#enter(folder, rel, reach);
      if (type === DT.REG) this.leaveOut(rel, "changed from a file to something else during the listing");
      return 1;
    }
    close(opened.fd);
    this.found.push(this.#found(rel, opened.stat, instantOf(opened.stat.ctimeNs)).found);
    return 1;
  }

  /**
   * The entry of the regular file `rel`; also its JSON without the `sha256` (which the worker may learn
   * later), which ends with the etag, as `listing_memo.ts` expects, its UTF-8 length, and whether the
   * worker knew the hash.
   */
  #found(
    rel: string,
    s: FileStat | StatVersion,
    ctime: Instant,
  ): { found: Found; json: string; bytes: number; hashed: boolean } {
    workerMetrics.count(WorkerCell.ListingEntriesBuilt);
    const mtimeNs = String(s.mtimeNs);
    const etag = etagOf(identityOf(s));
    const entry: ListEntry = this.brief
      ? { path: rel, size: s.size, etag }
      : { path: rel, size: s.size, mtimeNs, mode: s.mode & 0o7777, etag };
    const json = JSON.stringify(entry), bytes = utf8Length(json);
    const sha256 = this.ctx.hashes.byEtag(etag);
    const found = {
      path: rel,
      size: s.size,
      ctimeSeconds: ctime.seconds,
      ctimeNanoseconds: ctime.nanoseconds,
      json: withSha256(json, sha256),
      bytes: sha256 === undefined ? bytes : bytes + SHA256_FIELD_LENGTH,
    };
    return { found, json, bytes, hashed: sha256 !== undefined };
  }

  /**
   * A folder or file the walk saw and could not open. A symlink leading outside the root is not served by
   * design and stays out silently; anything else (EACCES, EMFILE, ENOMEM, gone meanwhile) is left out
   * and said: the listing is then not the whole tree.
   */
  #failedOpen(rel: string, e: LibcError, type: number): void {
    if (type === DT.LNK && (e.errnoName === "EXDEV" || e.errnoName === "ELOOP")) return;
    if (e.errnoName === "ENOENT" && type !== DT.LNK) {
      this.leaveOut(rel, "removed during the listing");
      return;
    }
    if (type === DT.LNK && e.errnoName === "ENOENT") return; // a dangling symlink: no file to serve
    const body = openError(e, rel);
    const reason = body.code === ErrorCode.Forbidden && e.errnoName !== "ENAMETOOLONG"
      ? `not readable by the server (${e.errnoName})`
      : `cannot open: ${e.errnoName}`;
    this.leaveOut(rel, reason);
  }
}

/**
 * How much earlier than the walk's start its `walkedAt` is: a file's timestamps come from a clock that
 * advances once per kernel tick (up to 10 ms), so a change just after the start may be stamped a little
 * before it. A file system that stamps coarser still (whole seconds) may have a change in that moment
 * stamped before `walkedAt`: that file's content then does not come with the next listing, and the client
 * fetches it with `get`.
 */
const WALKED_AT_MARGIN_MS = 10;

/**
 * The buffers of Data frames of inlined content, each taken by a batch and given back once sent: a fresh
 * zeroed MiB per batch was some 170 MB to zero for a first copy of 5,000 files of 4-64 KiB.
 */
const inlineBuffers = new BufferPool(FRAME_HEADER_SIZE + 1 + INLINE_BATCH_BYTES, 4);

/** An Entries frame's buffer: frame header, type, and at most LIST_BATCH_BYTES of JSON. */
/**
 * Files the FolderRecords of one Entries frame stand for, at most (but for the last record's): about as many
 * as a frame of entries holds (some 600 brief entries of tree-like paths in 64 KiB).
 */
const RECORDED_FILES_PER_BATCH = 512;

const LIST_FRAME_BYTES = FRAME_HEADER_SIZE + 1 + LIST_BATCH_BYTES;

/** The buffers of Entries frames, taken by a batch and given back once sent or compressed. */
const batchBuffers = new BufferPool(LIST_FRAME_BYTES, 8);

/** How an Entries frame's JSON starts, and where its first entry goes. */
const ENTRIES_PREFIX = utf8.encode('{"entries":[');
const ENTRIES_START = FRAME_HEADER_SIZE + 1 + ENTRIES_PREFIX.byteLength;

/** Any character outside ASCII (a UTF-16 code unit, surrogates included). */
const NOT_ASCII = /[\u0080-\uffff]/;

/** The length of `text` in UTF-8, as TextEncoder writes it (a lone surrogate as U+FFFD, 3 bytes). */
export function utf8Length(text: string): number {
  if (!NOT_ASCII.test(text)) return text.length;
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c < 0xdc00 && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next < 0xe000) {
        bytes += 4;
        i++;
      } else bytes += 3;
    } else bytes += 3;
  }
  return bytes;
}

/**
 * The most bytes an inlined entry's JSON has beyond its path (which takes at most 6 bytes a character,
 * escaped): its field names, size, mtimeNs, mode, etag, sha256 and `inline`, and the comma before it.
 */
const INLINE_ENTRY_FIELDS_BYTES = 256;

/** Names of a folder whose regular files {@link Walk} looks at in one loop. */
const STATS_AHEAD = 64;
/** A `struct stat` in u32 words. */
const STAT_WORDS = STAT.size / 4;
/** Where a `struct stat` given as u32 words has `st_nlink` (a u64). */
const NLINK_WORD = STAT.st_nlink / 4;

function join(dir: string, name: string): string {
  return dir === "" ? name : `${dir}/${name}`;
}

/**
 * A listing being sent: the walk, pumped a bounded number of steps per turn, its entries framed as they
 * come (streamed) or gathered for one Header, and the frames sent with the same resumable loop as the
 * other replies.
 */
class ListingBody implements Body {
  #queue: Uint8Array[] = [];
  #offset = 0;
  #finished = false;
  #listed = 0;
  /** Streamed: the Entries frame being filled. Not streamed: unused. */
  #batch: Uint8Array | null = null;
  #batchLength = 0;
  /** Not streamed: the entries' JSON so far, and its length. */
  readonly #gathered: string[] = [];
  #gatheredBytes = 0;
  /** Not streamed: the limit was reached and the walk stopped. */
  #stopped = false;
  /** The answer's request id, put in its Header (see `request_id.ts`). */
  #requestId: string | undefined;
  /**
   * Streamed with `inline`: the Data frame being filled with the content of the batch's inlined files
   * (its frame header first), the content's length, and the files inlined in the batch and in all.
   */
  #inlineData: Uint8Array | null = null;
  #inlineLength = 0;
  #inlinedInBatch = 0;
  #inlined = 0;
  /** FolderRecords sent: folders whose files the client knew (`known`). */
  #knownFolders = 0;
  /** PartialRecords sent: folders whose files the client knew but for some (`knownSince`). */
  #partialFolders = 0;
  /** The files the FolderRecords of the Entries frame being filled stand for. */
  #filesInBatch = 0;

  /**
   * @param walk the walk to pump
   * @param stream true for Entries frames and a Trailer; false for one Header
   * @param setResult gives the request log's result once the walk is over
   * @param compress streamed: send each batch as a Compressed frame when that saves enough
   * @param inline streamed: send the content of the files of at most this many bytes (0: none)
   * @param inlineSince only of those whose ctime is at or after this; null: all
   */
  constructor(
    readonly walk: Walk,
    readonly stream: boolean,
    readonly setResult: (r: string) => void,
    readonly compress = false,
    readonly inline = 0,
    readonly inlineSince: Instant | null = null,
  ) {
    if (stream) this.#queue.push(this.#streamHeader());
  }

  /** The walk's `walkedAt` (see framing.ts): {@link WALKED_AT_MARGIN_MS} before it began, by the wall clock. */
  readonly #walkedAt = String(BigInt(Date.now() - WALKED_AT_MARGIN_MS) * 1_000_000n);

  #streamHeader(): Uint8Array {
    const header = {
      requestId: this.#requestId,
      v: PROTOCOL_VERSION,
      status: "ok",
      stream: true,
      walkedAt: this.#walkedAt,
    };
    return encodeJsonFrame(FrameType.Header, this.compress ? { ...header, compression: "zstd" } : header);
  }

  /** Puts `id` in the Header this listing sends (called before anything is sent). */
  setRequestId(id: string): void {
    this.#requestId = id;
    if (this.stream && this.#offset === 0 && this.#listed === 0) this.#queue[0] = this.#streamHeader();
  }

  /** See {@link Body.pump}: sends what is framed, then walks on, until the turn's work or bytes are used. */
  pump(sock: number, budget: number): PumpResult {
    let sent = 0;
    let units = UNITS_PER_TURN;
    for (;;) {
      while (this.#queue.length > 0) {
        if (sent >= budget) return { sent, status: "yield" };
        const head = this.#queue[0];
        const more = this.#queue.length > 1 ? C.MSG_MORE : 0;
        const n = trySend(sock, head.subarray(this.#offset), more);
        if (n === WOULD_BLOCK) return { sent, status: "blocked" };
        sent += n;
        this.#offset += n;
        if (this.#offset < head.byteLength) continue;
        this.#queue.shift();
        this.#offset = 0;
        // Sent whole: the buffer of an Entries or Data frame can take the next batch.
        batchBuffers.give(head);
        inlineBuffers.give(head);
      }
      if (this.#finished) return { sent, status: "done" };
      if (units <= 0) return { sent, status: "yield" };
      units -= this.walk.done ? 0 : this.walk.step();
      for (const entry of this.walk.found) units -= this.#add(entry);
      this.walk.found.length = 0;
      if (this.walk.done) this.#finish();
    }
  }

  /** Closes the folder the walk was reading, if the reply is dropped half-way. */
  release(): void {
    this.walk.release();
  }

  /** Adds a file to the listing; returns the work units it took beyond the walk's (reading its content). */
  #add(entry: Found): number {
    if (this.#stopped) return 0;
    const { json } = entry;
    if (entry.record && entry.record !== "empty") {
      // Only a streamed listing takes `known`.
      this.#append(json, entry.bytes);
      this.#listed++;
      if (entry.record === "whole") this.#knownFolders++;
      else this.#partialFolders++;
      // A record stands for files the client goes through as it would their entries: sent with as many
      // as a batch of entries holds, so that it works on them while the walk goes on.
      this.#filesInBatch += entry.size;
      if (this.#filesInBatch >= RECORDED_FILES_PER_BATCH) this.#flushBatch();
      return 0;
    }
    if (this.stream) {
      const inlined = this.inline > 0 && entry.record === undefined && entry.size <= this.inline &&
          (this.inlineSince === null || changedSince(entry, this.inlineSince))
        ? inlineEntry(this.walk.ctx, entry, (size) => this.#inlineRoom(size, entry.path))
        : null;
      const data = this.#inlineData;
      this.#append(inlined ?? json, inlined === null ? entry.bytes : utf8Length(inlined));
      this.#listed++;
      if (inlined === null) return 0;
      // #inlineRoom left room for the entry: a batch sent by #append would have taken the content away.
      if (this.#inlineData !== data) {
        throw new Error(`the entry of ${JSON.stringify(entry.path)} did not fit its batch`);
      }
      this.#inlineLength += this.#inlineSize;
      this.#inlinedInBatch++;
      this.#inlined++;
      return 1;
    }
    const bytes = entry.bytes;
    const full = this.#listed >= MAX_LIST_ENTRIES
      ? `more than ${MAX_LIST_ENTRIES} entries`
      : this.#gatheredBytes + bytes + 1 > MAX_HEADER_JSON
      ? `more than ${MAX_HEADER_JSON} bytes of entries`
      : null;
    if (full !== null) {
      // One record stands for the rest of the tree, which is not walked.
      this.walk.release();
      this.#stopped = true;
      this.walk.leaveOut(entry.path, `${full} in one Header: not listed from here on (ask with "stream")`);
      return 0;
    }
    this.#gathered.push(json);
    this.#gatheredBytes += bytes + 1;
    this.#listed++;
    return 0;
  }

  /** Bytes of the content last read into {@link #inlineRoom}'s place. */
  #inlineSize = 0;

  /**
   * Where the content of the next inlined file, of `size` bytes at `path`, is read: straight into the
   * batch's Data frame (copying each file's bytes there after reading them cost as much as a fifth of a
   * first copy's listing). The batch is sent first if the content would take its Data frame past
   * {@link INLINE_BATCH_BYTES}, or the entry (not made yet: its hash comes from the read) might not fit
   * its Entries frame.
   */
  #inlineRoom(size: number, path: string): Uint8Array {
    // The entry's JSON goes in the Entries frame being filled, ahead of the Data frame: both must fit.
    const entryBound = 6 * path.length + INLINE_ENTRY_FIELDS_BYTES;
    if (
      this.#inlineLength + size > INLINE_BATCH_BYTES ||
      (this.#batch !== null && this.#batchLength + 1 + entryBound > this.#batch.byteLength - 2)
    ) this.#flushBatch();
    this.#inlineData ??= inlineBuffers.take();
    this.#inlineSize = size;
    const at = FRAME_HEADER_SIZE + 1 + this.#inlineLength;
    return this.#inlineData.subarray(at, at + size);
  }

  /**
   * Adds an entry's JSON, of `bytes` bytes in UTF-8, to the Entries frame being filled, starting a new one
   * when it is full. The JSON is encoded into the frame when it is sent, all entries in one call: a call
   * per entry cost some 70 ms of a listing of 100,000 files, most of it the call itself.
   */
  #append(json: string, bytes: number): void {
    // Room is kept for the comma before the entry and the closing `]}`.
    if (this.#batch !== null && this.#batchLength + 1 + bytes > this.#batch.byteLength - 2) {
      this.#flushBatch();
    }
    if (this.#batch === null) {
      if (ENTRIES_START + bytes > LIST_FRAME_BYTES - 2) {
        throw new Error(`a listing entry of ${bytes} bytes does not fit an Entries frame`);
      }
      this.#batch = batchBuffers.take();
      this.#batchLength = ENTRIES_START;
    } else this.#batchLength++;
    this.#pending.push(json);
    this.#batchLength += bytes;
  }

  /** The JSON of the entries of the Entries frame being filled, in order (see {@link #append}). */
  #pending: string[] = [];

  /** Batches flushed so far. */
  #batches = 0;

  #flushBatch(): void {
    if (this.#batch === null) return;
    const frame = this.#batch;
    frame[FRAME_HEADER_SIZE] = FrameType.Entries;
    frame.set(ENTRIES_PREFIX, FRAME_HEADER_SIZE + 1);
    const joined = this.#pending.join(",");
    const { read, written } = utf8.encodeInto(joined, frame.subarray(ENTRIES_START, this.#batchLength));
    // A count too low would cut the JSON short where the room ends; too high, leave bytes unwritten.
    if (read !== joined.length || ENTRIES_START + written !== this.#batchLength) {
      throw new Error(
        `an Entries frame's JSON took ${utf8Length(joined)} bytes, not the ${
          this.#batchLength - ENTRIES_START
        } counted`,
      );
    }
    this.#pending.length = 0;
    this.#filesInBatch = 0;
    frame[this.#batchLength++] = 0x5d; // ]
    frame[this.#batchLength++] = 0x7d; // }
    putFrameLength(frame, 0, this.#batchLength - FRAME_HEADER_SIZE);
    // The first batch goes as it is: a listing of one batch is small, and a client that meets no
    // Compressed frame never loads its zstd (tens of milliseconds of its start).
    const packed = this.compress && this.#batches++ > 0
      ? compressedFrame(frame.subarray(FRAME_HEADER_SIZE + 1, this.#batchLength))
      : null;
    this.#queue.push(packed ?? frame.subarray(0, this.#batchLength));
    if (packed !== null) batchBuffers.give(frame); // compressed into a frame of its own: free at once
    this.#batch = null;
    if (this.#inlinedInBatch > 0) {
      // The content of the batch's inlined files, in the order of their entries, right after them.
      const data = this.#inlineData!;
      putFrameLength(data, 0, 1 + this.#inlineLength);
      data[FRAME_HEADER_SIZE] = FrameType.Data;
      this.#queue.push(data.subarray(0, FRAME_HEADER_SIZE + 1 + this.#inlineLength));
      this.#inlineData = null;
      this.#inlineLength = 0;
      this.#inlinedInBatch = 0;
    }
  }

  #finish(): void {
    const { leftOut } = this.walk;
    const truncated = leftOut.count > 0;
    if (this.stream) {
      this.#flushBatch();
      const trailer: ListTrailer = { listed: this.#listed, truncated, leftOut };
      this.#queue.push(encodeJsonFrame(FrameType.Trailer, trailer), END_FRAME);
    } else {
      // The entries are JSON already: the Header is put together around them rather than encoded again.
      const head = JSON.stringify({
        requestId: this.#requestId,
        v: PROTOCOL_VERSION,
        status: "ok",
        truncated,
        leftOut,
      });
      const json = `${head.slice(0, -1)},"entries":[${this.#gathered.join(",")}]}`;
      const bytes = utf8.encode(json);
      const frame = new Uint8Array(FRAME_HEADER_SIZE + 1 + bytes.byteLength + FRAME_HEADER_SIZE);
      putFrameLength(frame, 0, 1 + bytes.byteLength);
      frame[FRAME_HEADER_SIZE] = FrameType.Header;
      frame.set(bytes, FRAME_HEADER_SIZE + 1);
      this.#queue.push(frame); // the end frame is its last four zero bytes
      this.#gathered.length = 0;
    }
    this.#finished = true;
    const first = leftOut.first[0];
    const inlined = `${this.inline > 0 ? ` inlined=${this.#inlined}` : ""}${
      this.walk.known === null ? "" : ` known-folders=${this.#knownFolders}`
    }${this.walk.knownSince === null ? "" : ` partial-folders=${this.#partialFolders}`}`;
    this.setResult(
      truncated
        ? `partial listed=${this.#listed}${inlined} left-out=${leftOut.count} first=${
          JSON.stringify(first.path)
        } (${first.reason})`
        : `ok listed=${this.#listed}${inlined}`,
    );
  }
}

/**
 * The entry of the listed file `listed` with its content, read now through an open beneath the root (the
 * connection's token is checked again) into the place `room` gives for its size. The walk's fstatat named
 * the version; an fstat after the read tells whether the bytes read are that version's (with an fstat after
 * the open too, a first copy of 100,000 files cost the server a median of 2.81 s of CPU, against 2.64). Null
 * when the file cannot be sent whole as that version (gone, changed since the walk or while read, no longer
 * a regular file): its entry is then sent as the walk made it, what was read into the place is not sent,
 * and the client asks for the file with `get`, whose answer says what became of it.
 */
function inlineEntry(ctx: ReplyContext, listed: Found, room: (size: number) => Uint8Array): string | null {
  const rel = listed.path;
  const fd = openBeneathUnlooked(ctx, rel);
  if (typeof fd !== "number") return null;
  try {
    const etag = etagInEntry(listed.json);
    const known = ctx.listingMemo.inlinedSha256(rel, etag) ?? ctx.hashes.byEtag(etag);
    const read = readWholeFile(ctx, fd, room(listed.size), (identity) => etagOf(identity) === etag, known);
    if (read === undefined) return null;
    const { stat, sha256 } = read;
    if (known === undefined) ctx.listingMemo.noteInlined(rel, etag, sha256);
    const entry: ListEntry = {
      path: rel,
      size: stat.size,
      mtimeNs: String(stat.mtimeNs),
      mode: stat.mode & 0o7777,
      etag,
      sha256,
      inline: true,
    };
    return JSON.stringify(entry);
  } catch (e) {
    if (!(e instanceof LibcError)) throw e;
    return null; // no longer a regular file: pread refused it (EISDIR, ESPIPE)
  } finally {
    close(fd);
  }
}
