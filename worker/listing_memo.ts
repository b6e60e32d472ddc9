/**
 * What a worker's listings learnt of the tree, so that the next walk of it costs less (a host's cron job
 * lists the same tree every few minutes, and a fleet lists it many times in the same minute):
 *
 * - each folder's names, kept under the folder's identity (device, inode, mtime and ctime), which any name
 *   created, removed or renamed in it moves; a walk that finds the folder so takes its names from here
 *   instead of reading them;
 * - each file's entry as the listing sends it, kept under the fields of its `struct stat` that the entry
 *   is made of (device, inode, mode, size, mtime) and its ctime; a walk still looks at every file (one
 *   fstatat), and rebuilds the entry only when one of those fields moved. An entry takes its SHA-256 in
 *   once the worker knows it, and keeps it while those fields stay, as the hash cache keeps only so many.
 *
 * - each folder's digest (what a request's `known` holds), kept with the mark of the worker's watch of it
 *   (`folder_watch.ts`) taken before the walk read it: while no change follows the mark, a listing sends
 *   the folder as its record without looking at its files.
 *
 * So a listing from here is the listing a fresh walk would send, with a hash wherever one was known. A folder's names are kept only once its
 * ctime is a second older than their reading: a change in the same tick of the clock as the reading would
 * leave its mtime and ctime as they were (git's "racily clean" index entries have the same cure).
 *
 * Both are bounded. When one is full, what no walk has used since the last sweep (files and folders gone,
 * or no longer listed) is forgotten; if all of it was used, the tree is larger than the bound and what is
 * kept stays kept, so that the next walk still finds that much of it.
 *
 * @module
 */

import type { FileStat } from "../ffi/structs.ts";
import { STAT } from "../ffi/structs.ts";
import { type FolderWatch, MAX_WATCHED_FOLDERS, type WatchMark } from "./folder_watch.ts";

/** A folder's names in byte order: each one's text, and its `d_type` (DT_UNKNOWN where not told). */
export interface FolderNames {
  /** The names, as text. */
  readonly texts: readonly string[];
  /** Their `d_type`s, in the same order. */
  readonly types: Uint8Array;
}

/** A version of a file whose content a listing inlined: its etag, and the SHA-256 of the bytes read. */
interface InlinedVersion {
  etag: string;
  sha256: string;
}

/** A folder's names as kept: under its identity, and whether a walk used them since the last sweep. */
interface KeptFolder {
  identity: string;
  names: FolderNames;
  used: boolean;
}

/** A folder's digest as a walk made it, under the folder's identity, and the mark that vouches for it. */
interface KeptDigest {
  identity: string;
  digest: string;
  files: number;
  /** The names of its subfolders, as the walk that made the digest read them (its only other names). */
  subfolders: readonly string[];
  mark: WatchMark;
}

/** Folders' names kept for each file entry kept (a name takes some 40 bytes, an entry some 250). */
const NAMES_PER_ENTRY = 2;
/** How much older than the reading of its names a folder's ctime must be for the names to be kept. */
const RACY_NS = 1_000_000_000n;

/**
 * The `struct stat` words (u32) an entry is kept under: dev, ino, mode, size, mtime seconds and nanoseconds
 * (what the entry is made of), and ctime (which no program can set back: an entry that has its SHA-256 keeps
 * it only while the content cannot have changed, even with its mtime put back).
 */
const ENTRY_WORDS = [
  STAT.st_dev / 4,
  STAT.st_dev / 4 + 1,
  STAT.st_ino / 4,
  STAT.st_ino / 4 + 1,
  STAT.st_mode / 4,
  STAT.st_size / 4,
  STAT.st_size / 4 + 1,
  STAT.st_mtim / 4,
  STAT.st_mtim / 4 + 1,
  STAT.st_mtim / 4 + 2,
  STAT.st_ctim / 4,
  STAT.st_ctim / 4 + 1,
  STAT.st_ctim / 4 + 2,
] as const;
const WORDS = ENTRY_WORDS.length;

/** The end of an entry's JSON: `"etag":"` and 32 hex digits, then `}`. */
const ETAG_TAIL = 32 + 2;

/** A worker's memo of folders' names and files' entries; see the module's documentation. */
export class ListingMemo {
  #folders = new Map<string, KeptFolder>();
  #names = 0;
  /**
   * Entry number by folder path and name; each entry's stat words in `#words`, its JSON (brief or full) in
   * `#json`. By folder, then name: a walk's names are the same strings listing after listing (kept with the
   * folder's names), whose hash V8 keeps, where a path joined anew for each look-up had to be hashed each
   * time (50 ms against 3 ms per 100,000 look-ups, measured alone).
   */
  #entries = new Map<string, Map<string, number>>();
  #words = new Uint32Array(1024 * WORDS);
  #json: string[] = [];
  /** Each entry's JSON's length in UTF-8, so that a listing need not count it again. */
  #bytes: number[] = [];
  #brief: boolean[] = [];
  /** Whether the entry's JSON has its `sha256` already (added once the worker knew it). */
  #hashed: boolean[] = [];
  /** Whether a walk used the entry since the last sweep. */
  #used: boolean[] = [];
  /** For an entry without its hash: the `learned` count of the hash cache when it last did not have it. */
  #missedAt: number[] = [];
  /**
   * The SHA-256 of the version of each entry's file whose content a listing inlined, with that version's
   * etag: kept apart from the entry's JSON, which takes in only the hashes the worker's hash cache knows,
   * so that a listing does not grow by a hash for every file a first copy brought.
   */
  #inlined: (InlinedVersion | undefined)[] = [];
  /** Folders' digests by path, each kept with its watch's mark (see {@link keepDigest}). */
  readonly #digests = new Map<string, KeptDigest>();
  /** What was turned away since the last sweep, full: a sweep is tried once per an eighth of a bound. */
  #refusedEntries = 0;
  #refusedNames = 0;

  /**
   * @param maxNames names kept over all folders at most (0: none)
   * @param maxEntries file entries kept at most (0: none, and no folder's digest either)
   * @param watch the worker's watch of the tree, which vouches for folders' digests; null: none are kept
   */
  constructor(
    readonly maxNames: number,
    readonly maxEntries: number,
    readonly watch: FolderWatch | null = null,
  ) {}

  /**
   * A memo of `entries` files' entries and twice as many folders' names (0: one that keeps nothing), and
   * of the digests `watch` vouches for.
   */
  static forEntries(entries: number, watch: FolderWatch | null = null): ListingMemo {
    return new ListingMemo(entries * NAMES_PER_ENTRY, entries, watch);
  }

  /**
   * Marks the folder open as `fd` (its fstat: `folder`) before a walk that may digest it reads it: the mark
   * {@link keepDigest} keeps with the digest. Null when nothing can vouch for the folder later.
   */
  markFolder(fd: number, folder: FileStat): WatchMark | null {
    return this.maxEntries === 0 || this.watch === null ? null : this.watch.mark(fd, folder);
  }

  /**
   * The digest of the folder `path`, its count of files and its subfolders' names, as a walk made them,
   * when the folder is as it was then: the same identity (names neither added nor removed), and its mark
   * not followed by any change.
   */
  digestOf(
    path: string,
    folder: FileStat,
  ): { digest: string; files: number; subfolders: readonly string[] } | undefined {
    const kept = this.#digests.get(path);
    if (kept === undefined) return undefined;
    if (kept.identity === folderIdentity(folder) && this.watch!.unchanged(kept.mark)) return kept;
    this.#digests.delete(path);
    return undefined;
  }

  /** Forgets every folder's digest and restarts the watch: the root now leads to another tree. */
  watchAnew(): void {
    this.#digests.clear();
    this.watch?.restart();
  }

  /**
   * Keeps the digest of the folder `path` (its fstat: `folder`), its count of files and the names of its
   * subfolders (a digested folder's other names, if any, are of nothing a listing serves: one with a
   * symlink or a name of no type gets no digest), made by a walk that marked the folder with `mark` before
   * it read the folder's names, and found no file with another link.
   */
  keepDigest(
    path: string,
    folder: FileStat,
    digest: string,
    files: number,
    subfolders: readonly string[],
    mark: WatchMark,
  ): void {
    // Each needs a watch of its own: as many as the watch keeps at most.
    if (this.#digests.size >= MAX_WATCHED_FOLDERS && !this.#digests.has(path)) return;
    this.#digests.set(path, { identity: folderIdentity(folder), digest, files, subfolders, mark });
  }

  /** The names of the folder `path`, if it is as it was when they were read. */
  namesOf(path: string, folder: FileStat): FolderNames | undefined {
    const kept = this.#folders.get(path);
    if (kept === undefined || kept.identity !== folderIdentity(folder)) return undefined;
    kept.used = true;
    return kept.names;
  }

  /**
   * Keeps the names of the folder `path`, read whole after `folder` was taken of it, unless the folder
   * changed too shortly before `readAtNs` (wall clock) for a later change to be sure to move its ctime.
   * The names are the memo's from now on: nobody changes them.
   */
  keepNames(path: string, folder: FileStat, names: FolderNames, readAtNs: bigint): void {
    const before = this.#folders.get(path);
    if (before !== undefined) {
      this.#folders.delete(path);
      this.#names -= before.names.texts.length;
    }
    if (folder.ctimeNs > readAtNs - RACY_NS || names.texts.length > this.maxNames) return;
    if (this.#names + names.texts.length > this.maxNames) {
      this.#refusedNames += names.texts.length;
      if (this.#refusedNames < this.maxNames / 8) return;
      this.#sweepFolders();
      if (this.#names + names.texts.length > this.maxNames) return;
    }
    this.#folders.set(path, { identity: folderIdentity(folder), names, used: true });
    this.#names += names.texts.length;
  }

  /** Forgets the folders no walk used since the last sweep. */
  #sweepFolders(): void {
    const folders = new Map<string, KeptFolder>();
    this.#names = 0;
    for (const [path, kept] of this.#folders) {
      if (!kept.used) continue;
      folders.set(path, { ...kept, used: false });
      this.#names += kept.names.texts.length;
    }
    this.#folders = folders;
    this.#refusedNames = 0;
  }

  /**
   * The JSON of the entry of the file `name` in the folder `folder` (a path, "" for the root) whose fstatat
   * left `words` (a `struct stat` as u32 words), in the form asked (`brief`), with the SHA-256 `sha256`
   * gives for its etag, if any; undefined when it was not kept or its stat moved since. `learned` counts
   * what `sha256` has learnt so far (see `HashCache.learned`): an entry whose hash it did not have is not
   * looked up again until it moves.
   */
  entryOf(
    folder: string,
    name: string,
    words: Uint32Array,
    brief: boolean,
    sha256: (etag: string) => string | undefined,
    learned = NaN,
  ): string | undefined {
    const at = this.#keptAt(folder, name, words);
    // A full entry serves a brief listing too, cut short: after a first copy (full, as it brings the
    // files' content), the next runs' brief listings of the tree found no entry and made each anew (tree
    // (b), 100,000 files: 0.69 s of the worker's CPU against 0.46 s). A brief entry is made anew for a full
    // listing.
    if (at === undefined || (this.#brief[at] && !brief)) return undefined;
    const json = this.#hashedJson(at, sha256, learned);
    return brief === this.#brief[at] ? json : this.#cutShort(json);
  }

  /**
   * The etag of the entry kept for the file `name` of `folder`, if its stat `words` has not moved since
   * (as {@link entryOf} finds it); undefined otherwise. For a look at a folder that needs only etags.
   */
  keptEtag(folder: string, name: string, words: Uint32Array): string | undefined {
    const at = this.#keptAt(folder, name, words);
    return at === undefined ? undefined : etagInEntry(this.#json[at]);
  }

  /**
   * True while the memo can keep another entry without turning one away: a look at a folder then makes
   * its files' entries for the memo to keep, so that the next look only finds them; once full (a tree of
   * more files than it keeps), a look needs only each file's etag, and keeping entries would push out
   * others.
   */
  get hasRoom(): boolean {
    return this.#json.length < this.maxEntries;
  }

  /** Where the entry of the file `name` of `folder` is kept, if its stat `words` has not moved since. */
  #keptAt(folder: string, name: string, words: Uint32Array): number | undefined {
    const at = this.#entries.get(folder)?.get(name);
    if (at === undefined) return undefined;
    const kept = this.#words;
    for (let i = 0; i < WORDS; i++) if (kept[at * WORDS + i] !== words[ENTRY_WORDS[i]]) return undefined;
    this.#used[at] = true;
    return at;
  }

  /** The kept JSON of entry `at`, with its SHA-256 when `sha256` gives it (see {@link entryOf}). */
  #hashedJson(at: number, sha256: (etag: string) => string | undefined, learned: number): string {
    const json = this.#json[at];
    this.#lastBytes = this.#bytes[at];
    if (this.#hashed[at] || this.#missedAt[at] === learned) return json;
    const sha = sha256(json.slice(json.length - ETAG_TAIL, json.length - 2));
    if (sha === undefined) {
      // Most entries of a tree larger than the hash cache: one look-up per listing was a tenth of its CPU.
      this.#missedAt[at] = learned;
      return json;
    }
    // Kept with it: a listing of a large tree then neither looks the hash up again nor makes the string anew.
    this.#json[at] = withSha256(json, sha);
    this.#bytes[at] = this.#lastBytes += SHA256_FIELD_LENGTH;
    this.#hashed[at] = true;
    return this.#json[at];
  }

  /**
   * A full entry's JSON as the brief one of the same stat: without its `mtimeNs` and `mode`, which come
   * between `size` and `etag` (the fields' order is the listing's), all ASCII.
   */
  #cutShort(json: string): string {
    const from = json.lastIndexOf(',"mtimeNs":'), to = json.lastIndexOf(',"etag":');
    this.#lastBytes -= to - from;
    return json.slice(0, from) + json.slice(to);
  }

  /** The length in UTF-8 of the JSON {@link entryOf} last returned. */
  get lastEntryBytes(): number {
    return this.#lastBytes;
  }
  #lastBytes = 0;

  /**
   * The SHA-256 of the version `etag` of the file `path`, if a listing inlined that version's content and
   * the entry is still kept: another first copy then sends it without hashing it again (the hash cache
   * keeps 10,000 hashes, a tenth of the files of a tree of 100,000).
   */
  inlinedSha256(path: string, etag: string): string | undefined {
    const at = this.#at(path);
    const known = at === undefined ? undefined : this.#inlined[at];
    return known?.etag === etag ? known.sha256 : undefined;
  }

  /** Notes the SHA-256 of the version `etag` of the file `path`, whose content a listing read whole. */
  noteInlined(path: string, etag: string, sha256: string): void {
    const at = this.#at(path);
    if (at !== undefined) this.#inlined[at] = { etag, sha256 };
  }

  /** The number of the entry of the file `path`, if kept. */
  #at(path: string): number | undefined {
    const slash = path.lastIndexOf("/");
    return this.#entries.get(slash < 0 ? "" : path.slice(0, slash))?.get(path.slice(slash + 1));
  }

  /**
   * Keeps the entry of the file `name` in the folder `folder` (a path, "" for the root) made from the stat
   * `words`: `json` is its JSON, without a `sha256` field (added when asked for, as the worker may learn it
   * later), ending with its etag; `bytes` is its length in UTF-8. `missedAt`: the hash cache's `learned`
   * count when it was just asked for the entry's hash and did not have it (see {@link entryOf}).
   */
  keepEntry(
    folder: string,
    name: string,
    words: Uint32Array,
    brief: boolean,
    json: string,
    bytes: number,
    missedAt = NaN,
  ): void {
    let names = this.#entries.get(folder);
    let at = names?.get(name);
    if (at === undefined) {
      if (this.maxEntries === 0) return;
      if (this.#json.length >= this.maxEntries) {
        if (++this.#refusedEntries < this.maxEntries / 8) return;
        this.#sweepEntries();
        if (this.#json.length >= this.maxEntries) return;
      }
      at = this.#json.length;
      this.#json.push(json);
      this.#bytes.push(bytes);
      this.#brief.push(brief);
      this.#hashed.push(false);
      this.#used.push(true);
      this.#missedAt.push(missedAt);
      this.#inlined.push(undefined);
      // Looked up again: a sweep made the maps anew.
      names = this.#entries.get(folder);
      if (names === undefined) this.#entries.set(folder, names = new Map());
      names.set(name, at);
      if ((at + 1) * WORDS > this.#words.length) {
        const grown = new Uint32Array(this.#words.length * 2);
        grown.set(this.#words);
        this.#words = grown;
      }
    } else {
      this.#json[at] = json;
      this.#bytes[at] = bytes;
      this.#brief[at] = brief;
      this.#hashed[at] = false;
      this.#used[at] = true;
      this.#missedAt[at] = missedAt;
      this.#inlined[at] = undefined;
    }
    for (let i = 0; i < WORDS; i++) this.#words[at * WORDS + i] = words[ENTRY_WORDS[i]];
  }

  /** Forgets the entries no walk used since the last sweep, and packs the others. */
  #sweepEntries(): void {
    const entries = new Map<string, Map<string, number>>();
    const words = new Uint32Array(this.#words.length);
    const json: string[] = [], bytes: number[] = [], brief: boolean[] = [], hashed: boolean[] = [];
    const missedAt: number[] = [], inlined: (InlinedVersion | undefined)[] = [];
    for (const [folder, names] of this.#entries) {
      const kept = new Map<string, number>();
      for (const [name, at] of names) {
        if (!this.#used[at]) continue;
        words.set(this.#words.subarray(at * WORDS, (at + 1) * WORDS), json.length * WORDS);
        kept.set(name, json.length);
        json.push(this.#json[at]);
        bytes.push(this.#bytes[at]);
        brief.push(this.#brief[at]);
        hashed.push(this.#hashed[at]);
        missedAt.push(this.#missedAt[at]);
        inlined.push(this.#inlined[at]);
      }
      if (kept.size > 0) entries.set(folder, kept);
    }
    this.#entries = entries;
    this.#words = words;
    this.#json = json;
    this.#bytes = bytes;
    this.#brief = brief;
    this.#hashed = hashed;
    this.#missedAt = missedAt;
    this.#inlined = inlined;
    this.#used = json.map(() => false);
    this.#refusedEntries = 0;
  }
}

/** The characters {@link withSha256} adds: `,"sha256":"` and 64 hex digits and `"`. */
export const SHA256_FIELD_LENGTH = 76;

/**
 * An entry's JSON (an object ending with its etag) with `sha256` added last, as JSON.stringify would put
 * it; as it is when `sha256` is unknown. The walk and the memo make the same bytes through it.
 */
export function withSha256(json: string, sha256: string | undefined): string {
  // SHA256_FIELD_LENGTH characters more, all ASCII.
  return sha256 === undefined ? json : `${json.slice(0, -1)},"sha256":"${sha256}"}`;
}

/** What any name created, removed or renamed in a folder moves: its device, inode, mtime and ctime. */
function folderIdentity(folder: FileStat): string {
  return `${folder.dev}:${folder.ino}:${folder.mtimeNs}:${folder.ctimeNs}`;
}

/** The etag of an entry's JSON as the walk and the memo make it: its etag comes last but for `sha256`. */
export function etagInEntry(json: string): string {
  // A path's JSON has its quotes escaped: the last `"etag":"` is the field's.
  const at = json.lastIndexOf('"etag":"') + 8;
  return json.slice(at, json.indexOf('"', at));
}
