/**
 * What `mirror` remembers between runs, like git's index: for each file it published, the file's identity
 * as `lstat` saw it right after publication (size, mtime, ctime, inode), its SHA-256, and the server's etag
 * of the version it came from. A later run trusts a local file whose `lstat` still matches and hashes only
 * the others.
 *
 * The state is only ever a shortcut. Any change to a file moves its ctime (which no program can set back),
 * and a replaced file has another inode, so a stale entry cannot make a changed file look current; a
 * missing or corrupt state costs hashing, nothing else. One race remains, the one git calls "racy clean":
 * a change in the same clock tick as the `lstat` that was recorded, which leaves ctime as it was. Entries
 * recorded within {@link RACY_WINDOW_SECONDS} of the moment the state was written are therefore not trusted.
 *
 * It also records folders, so that a run need not read a folder it finds as it was: a folder is recorded
 * by its identity at a moment it held exactly the files the state lists in it and the folders on the way
 * to the others, and nothing else (no part, no other file, no symlink, no empty folder). Creating,
 * removing or renaming anything in a folder moves its mtime and ctime, so a folder with the identity
 * recorded still holds what the state says, and a run takes its contents from the state instead of
 * reading it. A folder is recorded only from a read taken well after its last change (see
 * {@link changedJustNow}), for the same reason as files.
 *
 * The file is text: a version line, then (if the server gave one) `since` and a space and the `walkedAt` of
 * the listing of the run that wrote it, then one line per file: the identity (size:inode:mtime:ctime), the
 * SHA-256 and the etag, separated by tabs, and the path last (as a JSON string if it holds a tab, a line
 * break or starts with a quote); then one line per folder: `dir` and a space, a digest of the names it
 * held (see {@link namesDigest}), its identity and its path (`.` for LOCAL_DIR itself), separated by tabs.
 * A client that does not know folder lines skips them; the digest makes a folder line that no longer
 * agrees with the file lines (one added, taken out or changed by hand or by damage) count for nothing.
 *
 * @module
 */

import { FOLDER_DIGEST, NANOSECONDS } from "../framing.ts";
import type { StatIdentity } from "../ffi/structs.ts";
import {
  C,
  close,
  coarseClockNow,
  coarseClockTick,
  fstat,
  LibcError,
  mkdirAt,
  OPEN,
  openAt,
  pread,
  pwriteAll,
} from "../ffi/libc.ts";
import { LocalDir, LocalIoError } from "./local_tree.ts";
import { pageAlignedBuffer } from "../ffi/page_aligned.ts";

/** The first line of a state file. */
const STATE_HEADER = "ferry-mirror-state 2";

/**
 * One tick of the clock that stamps files here, in seconds: the kernel's coarse clock, 1 to 10 ms by its
 * configuration (10 ms, the longest, if it cannot be read). The end of a run that changed files waits
 * until that clock is two of them past its last change (see {@link MirrorState.settle}).
 */
const TICK_SECONDS = (() => {
  try {
    return Math.max(coarseClockTick(), 0.001);
  } catch {
    return 0.01;
  }
})();

/**
 * How close to the state's own write time an entry's ctime may be and still be trusted, in seconds. File
 * systems stamp times from a clock that advances in ticks; twice a tick leaves a margin.
 */
export const RACY_WINDOW_SECONDS = 2 * TICK_SECONDS;

/** What `lstat` says of a local file that an entry is checked against (see `ffi/structs.ts`). */
export type LocalIdentity = Pick<StatIdentity, "keyEndIn" | "ctime">;

/**
 * True when a file system object whose ctime is `ctime` (seconds) was seen at `seenAt` (seconds, by a
 * file system timestamp such as the state file's mtime) so soon after it changed that a further change in
 * the same clock tick could have left its ctime as it was.
 */
function isRacy(ctime: number, seenAt: number): boolean {
  return ctime + RACY_WINDOW_SECONDS >= seenAt;
}

/** {@link isRacy} for an object seen now, by the clock that stamps files (not the real one, which it lags). */
function changedJustNow(ctime: number): boolean {
  return isRacy(ctime, coarseClockNow());
}

/**
 * The longest {@link MirrorState.settle} waits, in ms: a ctime ahead of the clock (set back since) is left
 * racy, which costs the next run a hash of its file.
 */
const SETTLE_LIMIT_MS = 100;

/** The size in an identity key (its first field), in bytes. */
export function sizeOf(key: string): number {
  return Number(key.slice(0, key.indexOf(":")));
}

/** The ctime in an identity key (its last field), in seconds. */
function ctimeOf(key: string): number {
  return Number(key.slice(key.lastIndexOf(":") + 1));
}

/**
 * A digest of a folder's names, whatever their order: how many, and the sum of their FNV-1a hashes (it
 * guards against damage, not against an adversary, who could write any state).
 */
function namesDigest(files: readonly string[], subfolders: readonly string[] = []): string {
  const sum = (namesHashSum(files) + namesHashSum(subfolders)) >>> 0;
  return `${files.length + subfolders.length}-${sum.toString(16).padStart(8, "0")}`;
}

/** The sum of the FNV-1a hashes of `names`' last components (a path stands for its last component). */
function namesHashSum(names: readonly string[]): number {
  let sum = 0;
  // Index loops, no iterator: a run asks this of every folder it finds as recorded.
  for (let at = 0; at < names.length; at++) {
    const name = names[at];
    let h = 0x811c9dc5;
    for (let i = name.lastIndexOf("/") + 1; i < name.length; i++) {
      h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
    }
    sum = (sum + (h >>> 0)) >>> 0;
  }
  return sum;
}

/** A folder as the state records it. */
interface RecordedFolder {
  /** Its identity (see `ffi/structs.ts`). */
  key: string;
  /** The {@link namesDigest} of its files' and folders' names. */
  names: string;
}

/** What a folder holds, by name: its files, and its folders. */
export interface FolderNames {
  /** Its files, as paths relative to LOCAL_DIR (the state's own strings: a million names would cost tens of MB). */
  files: readonly string[];
  /** Its folders' names. */
  subfolders: readonly string[];
}

/** A folder's digest for a listing's `known`, and the number of files it was made of. */
export interface KnownFolder {
  /** See `folderDigest` of hashing.ts. */
  digest: string;
  /** How many files it was made of. */
  files: number;
}

/** One published file. */
export interface StateEntry {
  /** The file's identity as `lstat` saw it once published (see `ffi/structs.ts`). */
  key: string;
  /** SHA-256 of its content, hex. */
  sha256: string;
  /** The server's etag of the version it came from ("" if not known). */
  etag: string;
}

/**
 * The state of one LOCAL_DIR: entries by path relative to it, each held as where its line starts in the
 * state's text. A line read from the file stays as it is until a run looks it up, and stays so if it
 * still vouches for its file (a run of a large tree looks up every entry once, and most are current:
 * checking each line's fields up front cost more than the rest of reading the file). An entry the run
 * records is a line added to the text, as the file will have it. An offset costs no memory of its own,
 * where an object and a string per field cost some 250 bytes per file: hundreds of MB for a million.
 * Recorded lines can also leave memory for a file until the state is saved (see {@link spillInto}).
 */
export class MirrorState implements Disposable {
  /**
   * Values: the position of the path's line in {@link #texts}: piece * PIECE_SPAN + offset in the piece.
   * Null until a caller needs every entry by path (see {@link #entries}).
   */
  #entriesByPath: Map<string, number> | null = null;
  /**
   * The lines read, by the folder of their path ("" for LOCAL_DIR), in the file's order: what the entries
   * are made from when first needed. A run that finds every folder as the state has it asks for each
   * folder's files, and for nothing else: it never makes a map of a path per file (for 100,000 files that
   * map was most of the time it took to read the state).
   */
  #linesByFolder = new Map<string, FolderLines>();
  /** How many of the lines read had a path. */
  #linesRead = 0;
  /**
   * The state's text: the file's as read, then the lines recorded since; in pieces of whole lines, so
   * that it is never a buffer of it all. A piece moved to {@link #spill} is null here.
   */
  #texts: (string | null)[] = [];
  /** Where full pieces of recorded lines go, once {@link #spillDir} is opened for them; null: nowhere. */
  #spill: Spill | null = null;
  /** LOCAL_DIR, whose STATE_DIR is to hold {@link #spill} once a piece of recorded lines is full. */
  #spillDir: LocalDir | null = null;
  /** The piece of {@link #spill} last read back, for the lines looked up in it one after another. */
  #readBack: { piece: number; text: string } | null = null;
  /** Lines recorded since the last piece was made: the next piece, once joined (see {@link #text}). */
  #added: string[] = [];
  /** Characters in {@link #added}. */
  #addedLength = 0;
  /** Recorded folders by path ("" for LOCAL_DIR): identity key, and the digest of the names it held. */
  #folders = new Map<string, RecordedFolder>();
  /**
   * The digests of folders for a listing's `known` (PROTOCOL.md), by the folder's path on the server: as
   * read, or as the run set them; each with the number of files it was made of. Written with the state,
   * from the entries it is written with.
   */
  #knownFolders = new Map<string, KnownFolder>();
  /** True when the digests were made for the entries: read from a state that had them (or said it had none), or set. */
  #digested = false;
  /** The files and folders each folder held by the entries as read, made when a recorded folder is first asked for. */
  #asRead: Map<string, FolderNames> | null = null;
  /**
   * The positions of the lines of {@link #asRead}'s files, in the same order, when it was made from the
   * lines read (not from {@link #entries}).
   */
  #asReadLines: Map<string, number[]> | null = null;
  readonly #writtenAt: number;
  #newestCtime = 0;
  #changed = false;
  /**
   * True when the digests came after other lines (an older client's layout): the state is written again
   * once, with them first, so that the next run asks for its listing before it reads the entries.
   */
  #digestsLast = false;
  /** The folders that gained or lost an entry since the state was read, and every folder above them. */
  readonly #regrouped = new Set<string>();
  /**
   * The `walkedAt` of the listing of the run that last wrote the state (PROTOCOL.md): the next run asks for
   * the content of the small files changed since with its listing. Written with the state, never alone: a
   * run that changed nothing leaves the time of the last run that did, which changes nothing either.
   */
  since: string | undefined;

  /** @param writtenAt when the state was written (its file's mtime, in seconds); entries near it are racy */
  constructor(writtenAt = 0) {
    this.#writtenAt = writtenAt;
  }

  /**
   * The entries by path, made from the lines read when first asked for: every change to the entries goes
   * through it.
   */
  get #entries(): Map<string, number> {
    if (this.#entriesByPath !== null) return this.#entriesByPath;
    const entries = new Map<string, number>();
    for (const { positions, paths } of this.#linesByFolder.values()) {
      for (let at = 0; at < positions.length; at++) entries.set(paths[at], positions[at]);
    }
    this.#linesByFolder = new Map();
    return this.#entriesByPath = entries;
  }

  /** Number of entries (lines of the file not looked at yet count, whether or not they are well formed). */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * The entry of `path`'s line, which starts at `position`, if it holds the identity of `local`; a line of
   * that identity that is malformed is forgotten. Called for every file of a run: it reads the fields in
   * place, without first cutting the line out of the text.
   */
  #lineVouching(path: string, position: number, local: LocalIdentity): StateEntry | undefined {
    const text = this.#text(Math.floor(position / PIECE_SPAN)), start = position % PIECE_SPAN;
    const keyEnd = local.keyEndIn(text, start), shaAt = keyEnd + 1;
    if (keyEnd < 0 || text.charCodeAt(keyEnd) !== TAB) return undefined;
    // Both fields checked where they stand, by one match: no field is cut out of a malformed line.
    HASH_AND_ETAG.lastIndex = shaAt;
    if (!HASH_AND_ETAG.test(text)) {
      this.#entries.delete(path);
      return undefined;
    }
    const etagAt = shaAt + SHA256_HEX_LENGTH + 1;
    return {
      key: text.slice(start, keyEnd),
      sha256: text.slice(shaAt, etagAt - 1),
      etag: text.slice(etagAt, HASH_AND_ETAG.lastIndex - 1),
    };
  }

  /**
   * Each folder's files by the entries as they are now (the state's own strings for their paths), those whose
   * lines give an etag: what the folder digests of a listing's `known` are made of (PROTOCOL.md), with
   * {@link recordedEtag}. By folder path ("" for LOCAL_DIR). A folder with a line whose etag cannot be read,
   * or is empty (not known), is not among them. No string or object is made per file: a first copy of a
   * million files made its digests with 280 MB more of heap when each file was an object of its name and
   * etag.
   */
  knownFiles(): Map<string, string[]> {
    const folders = new Map<string, string[] | null>();
    // The entries of a folder mostly follow one another (a listing's order): its list is looked up once for
    // a run of them, and the folder's path is not cut out of each file's.
    let folder = "", files: string[] | null | undefined;
    for (const [path, position] of this.#entries) {
      const slash = path.lastIndexOf("/");
      if (files === undefined || slash !== folder.length || !path.startsWith(folder)) {
        folder = slash < 0 ? "" : path.slice(0, slash);
        files = folders.get(folder);
        if (files === undefined) folders.set(folder, files = []);
      }
      if (files === null) continue;
      if (this.#fieldsAt(position)?.etag) files.push(path);
      else folders.set(folder, files = null);
    }
    const known = new Map<string, string[]>();
    for (const [folder, files] of folders) if (files !== null) known.set(folder, files);
    return known;
  }

  /** The folder digests as read, or as last set (see {@link setKnownFolders}). */
  get knownFolders(): ReadonlyMap<string, KnownFolder> {
    return this.#knownFolders;
  }

  /**
   * False for a state whose writer made no folder digests (an older client's): its next run makes them,
   * even if it changes nothing else.
   */
  get digested(): boolean {
    return this.#digested;
  }

  /**
   * Replaces the folder digests, made from the entries as they are now (see {@link knownFiles}): a state
   * is written with the digests of its own entries, never with those of others.
   */
  setKnownFolders(folders: Map<string, KnownFolder>): void {
    const same = folders.size === this.#knownFolders.size &&
      [...folders].every(([path, { digest }]) => this.#knownFolders.get(path)?.digest === digest);
    if (same && this.#digested) return;
    this.#knownFolders = folders;
    this.#digested = true;
    this.#changed = true;
  }

  /**
   * The size, SHA-256 and etag the line of `path` gives, as read (checked when the file is looked at, by
   * {@link trusted}); undefined if there is no line, or one whose size cannot be read.
   */
  recordedFields(path: string): { size: number; sha256: string; etag: string } | undefined {
    const position = this.#entries.get(path);
    return position === undefined ? undefined : this.#fieldsAt(position);
  }

  /** The etag the line of `path` gives, as read, unchecked; undefined if there is no such line. */
  recordedEtag(path: string): string | undefined {
    const position = this.#entries.get(path);
    const line = position === undefined ? undefined : this.#lineAt(position);
    return line?.text.slice(line.etagAt, line.etagEnd);
  }

  /**
   * The size, SHA-256 and etag of the line at `position`, cut where its tabs are, unchecked but for the
   * size; undefined if they are not where a line puts them.
   */
  #fieldsAt(position: number): { size: number; sha256: string; etag: string } | undefined {
    const line = this.#lineAt(position);
    if (line === undefined) return undefined;
    const { text, start, shaAt, etagAt, etagEnd } = line;
    const size = sizeOf(text.slice(start, shaAt - 1));
    if (!Number.isSafeInteger(size)) return undefined;
    return { size, sha256: text.slice(shaAt, etagAt - 1), etag: text.slice(etagAt, etagEnd) };
  }

  /**
   * The line at `position` in its piece's text: where it starts, and where its SHA-256 and its etag begin
   * and the etag ends; undefined if its tabs are not where a line puts them.
   */
  #lineAt(
    position: number,
  ): { text: string; start: number; shaAt: number; etagAt: number; etagEnd: number } | undefined {
    const text = this.#text(Math.floor(position / PIECE_SPAN)), start = position % PIECE_SPAN;
    const shaAt = text.indexOf("\t", start) + 1, etagAt = shaAt + SHA256_HEX_LENGTH + 1;
    const etagEnd = text.indexOf("\t", etagAt);
    if (shaAt === 0 || text.charCodeAt(etagAt - 1) !== TAB || etagEnd < etagAt) return undefined;
    return { text, start, shaAt, etagAt, etagEnd };
  }

  /**
   * The files of the folder `path` ("" for LOCAL_DIR) by the entries as read, as paths relative to
   * LOCAL_DIR (the state's own strings); undefined if it has none.
   */
  filesAsRead(path: string): readonly string[] | undefined {
    return this.#foldersAsRead().get(path)?.files;
  }

  /** {@link #asRead}, made on first use. */
  #foldersAsRead(): Map<string, FolderNames> {
    if (this.#asRead !== null) return this.#asRead;
    if (this.#entriesByPath !== null) return this.#asRead = this.#byFolder();
    this.#asReadLines = new Map();
    return this.#asRead = this.#byFolder(this.#asReadLines);
  }

  /**
   * True once an entry was added, replaced or removed since the state was read, or when it was read in an
   * older layout: it is worth writing.
   */
  get changed(): boolean {
    return this.#changed || this.#digestsLast;
  }

  /**
   * The entry for `path` if the local file `local` is, by its identity, still the one recorded, and the
   * record is not racy; undefined otherwise (the caller hashes the file).
   */
  trusted(path: string, local: LocalIdentity): StateEntry | undefined {
    const found = this.#entries.get(path);
    if (found === undefined) return undefined;
    // A line is checked only once its identity matches: one whose file changed is replaced or forgotten.
    // The entry returned is the caller's to drop: the line stays.
    const entry = this.#lineVouching(path, found, local);
    if (entry === undefined) return undefined;
    if (isRacy(local.ctime, this.#writtenAt)) return undefined; // the same identity: the same ctime
    return entry;
  }

  /**
   * True if the local file `local` is, by its identity, still the one the line of `path` recorded, and the
   * record is not racy: {@link trusted} for a caller that needs no entry (a run of a large tree where
   * nothing changed asks this of every file). The fields after the identity are neither cut out nor
   * checked: they say nothing of whether the file changed, and a malformed one is found, and its line
   * forgotten, by the run that needs them (through trusted). Checking them here cost a tenth of such a run.
   */
  vouchesFor(path: string, local: LocalIdentity): boolean {
    const found = this.#entries.get(path);
    return found !== undefined && this.#vouchesAt(found, local);
  }

  /**
   * {@link vouchesFor} of the file at `index` in {@link filesAsRead}`(folder)`: by where its line is, with
   * no look-up of its path while no entry has changed (a run where nothing changed asks this of every file).
   */
  vouchesForFileAsRead(folder: string, index: number, local: LocalIdentity): boolean {
    const position = this.#entriesByPath === null ? this.#asReadLines?.get(folder)?.[index] : undefined;
    if (position !== undefined) return this.#vouchesAt(position, local);
    const path = this.filesAsRead(folder)?.[index];
    return path !== undefined && this.vouchesFor(path, local);
  }

  /** {@link vouchesFor} of the line at `position`. */
  #vouchesAt(position: number, local: LocalIdentity): boolean {
    const text = this.#text(Math.floor(position / PIECE_SPAN)),
      keyEnd = local.keyEndIn(text, position % PIECE_SPAN);
    return keyEnd >= 0 && text.charCodeAt(keyEnd) === TAB && !isRacy(local.ctime, this.#writtenAt);
  }

  /**
   * What the folder `path` holds, if it was recorded with the identity `key` it has now (so it is as it
   * was); undefined otherwise (the caller reads it). The answer comes from the entries as read: a run asks
   * for a folder before it changes any entry of a file in it.
   */
  recordedFolder(path: string, key: string): FolderNames | undefined {
    const recorded = this.#folders.get(path);
    if (recorded?.key !== key || isRacy(ctimeOf(key), this.#writtenAt)) return undefined;
    const names = this.#foldersAsRead().get(path) ?? { files: [], subfolders: [] };
    // A line added to the state or taken out of it since would make the folder look other than it is.
    return namesDigest(names.files, names.subfolders) === recorded.names ? names : undefined;
  }

  /**
   * True when what has the identity `key` changed long enough ago that reading it now sees what it
   * holds for as long as the identity stays: a change after the read would move its ctime.
   */
  settledAt(key: string): boolean {
    return !changedJustNow(ctimeOf(key));
  }

  /** What each folder should hold by the entries as they are now (see {@link recordedFolder}). */
  expectedFolders(): Map<string, FolderNames> {
    return this.#byFolder();
  }

  /**
   * Replaces the recorded folders by `seen` (identity key and names by path), each of which was just seen
   * holding exactly what {@link expectedFolders} says. Names null: the folder is as recorded, with the
   * identity `key` and the names the state recorded for it (a run that found it so and changed nothing of
   * it), whose digest is not made again.
   */
  recordFolders(seen: Map<string, { key: string; names: readonly string[] | null }>): void {
    const folders = new Map<string, RecordedFolder>();
    for (const [path, { key, names }] of seen) {
      const recorded = names === null ? this.#folders.get(path) : undefined;
      if (names === null && recorded?.key !== key) continue; // not as recorded after all: left out
      folders.set(path, { key, names: recorded?.names ?? namesDigest(names!) });
    }
    const same = folders.size === this.#folders.size &&
      [...folders].every(([path, { key, names }]) =>
        this.#folders.get(path)?.key === key && this.#folders.get(path)?.names === names
      );
    if (same) return;
    this.#folders = folders;
    this.#changed = true;
  }

  /**
   * The entries' paths grouped by folder: each folder's files, and the folders on the way to them (and
   * the state's own folder). Made from the lines read while no entry has changed, and then with the
   * positions of each folder's lines put in `lines`, in the order of its files.
   */
  #byFolder(lines?: Map<string, number[]>): Map<string, FolderNames> {
    const folders = new Map<string, { files: string[]; subfolders: string[] }>();
    const folderOf = (path: string) => {
      let folder = folders.get(path);
      if (folder === undefined) {
        folders.set(path, folder = { files: [], subfolders: [] });
        if (path !== "") {
          const slash = path.lastIndexOf("/");
          folderOf(slash < 0 ? "" : path.slice(0, slash)).subfolders.push(path.slice(slash + 1));
        }
      }
      return folder;
    };
    folderOf("").subfolders.push(STATE_DIR); // LOCAL_DIR holds the state itself
    if (this.#entriesByPath === null) {
      for (const [path, read] of this.#linesByFolder) {
        let { paths: files, positions } = read;
        // A path on more than one line is one entry, in the place of its first line, with its last line,
        // as in a map of them; a listing's order (of distinct names) tells there is none cheaply.
        if (!files.every((file, at) => at === 0 || files[at - 1] < file)) {
          const last = new Map(files.map((file, at) => [file, read.positions[at]]));
          [files, positions] = [[...last.keys()], [...last.values()]];
        }
        folderOf(path).files = files;
        lines?.set(path, positions);
      }
      return folders;
    }
    for (const path of this.#entries.keys()) {
      const slash = path.lastIndexOf("/");
      folderOf(slash < 0 ? "" : path.slice(0, slash)).files.push(path);
    }
    return folders;
  }

  /** Records (or replaces) the entry for `path`. */
  set(path: string, entry: StateEntry): void {
    const fields = `${entry.key}\t${entry.sha256}\t${entry.etag}\t`;
    const position = this.#entries.get(path);
    if (position !== undefined) {
      const text = this.#text(Math.floor(position / PIECE_SPAN));
      if (text.startsWith(fields, position % PIECE_SPAN)) return;
    }
    if (position === undefined) this.#regroup(path);
    this.#entries.set(path, this.#add(`${fields}${quote(path)}\n`));
    this.#changed = true;
    this.#newestCtime = Math.max(this.#newestCtime, ctimeOf(entry.key));
  }

  /** Adds a line to the text; returns its position. */
  #add(line: string): number {
    if (this.#addedLength + line.length > READ_PIECE) {
      this.#joinAdded();
      this.#spillLastPiece();
    }
    const position = this.#texts.length * PIECE_SPAN + this.#addedLength;
    this.#added.push(line);
    this.#addedLength += line.length;
    return position;
  }

  /** Makes the lines added since the last piece a piece of the text. */
  #joinAdded(): void {
    if (this.#added.length === 0) return;
    this.#texts.push(this.#added.join(""));
    this.#added = [];
    this.#addedLength = 0;
  }

  /**
   * The piece of text numbered `piece`: the lines added last are joined into one when first asked for,
   * and a piece set aside is read back (a run looks up few of the lines it recorded, if any).
   */
  #text(piece: number): string {
    if (piece === this.#texts.length) this.#joinAdded();
    const text = this.#texts[piece];
    if (text !== null) return text;
    if (this.#readBack?.piece !== piece) {
      this.#readBack = { piece, text: new TextDecoder().decode(this.#readSpilled(piece)) };
    }
    return this.#readBack.text;
  }

  /**
   * Lets the lines this run records leave memory, a full piece at a time, for an unnamed file in
   * LOCAL_DIR's STATE_DIR (made if missing) until the state is saved: a first copy of a million files
   * records some 170 MB of them. Where no such file can be had (no O_TMPFILE, a full disk), they stay in
   * memory. The file goes when the state is closed, or with the process.
   */
  spillInto(root: LocalDir): void {
    this.#spillDir = root;
  }

  /** Moves the piece just joined to {@link #spill}, if there is one (opened on first use). */
  #spillLastPiece(): void {
    if (this.#spill === null && this.#spillDir !== null) {
      const root = this.#spillDir;
      try {
        makeStateDir(root);
        const fd = openAt(root.fd, STATE_DIR, OPEN.O_TMPFILE | OPEN.O_RDWR, {
          mode: 0o600,
          noSymlinks: true,
        });
        this.#spill = { fd, pieces: new Map(), end: 0, full: false, buffer: new Uint8Array(0) };
      } catch {
        this.#spillDir = null; // memory it is
      }
    }
    const spill = this.#spill, piece = this.#texts.length - 1;
    if (spill === null || spill.full) return;
    const text = this.#texts[piece]!, bytes = utf8.encode(text);
    try {
      pwriteAll(spill.fd, bytes, spill.end);
    } catch {
      spill.full = true; // this piece and the next stay in memory; the earlier ones are read back
      return;
    }
    spill.pieces.set(piece, { offset: spill.end, bytes: bytes.length, ascii: bytes.length === text.length });
    spill.end += bytes.length;
    this.#texts[piece] = null;
  }

  /** The bytes of `piece` as {@link #spillLastPiece} wrote them, in a buffer that the next call reuses. */
  #readSpilled(piece: number): Uint8Array {
    const spill = this.#spill!, { offset, bytes } = spill.pieces.get(piece)!;
    if (spill.buffer.length < bytes) spill.buffer = pageAlignedBuffer(bytes);
    const buffer = spill.buffer.subarray(0, bytes);
    for (let done = 0; done < bytes;) {
      const n = pread(spill.fd, buffer.subarray(done), offset + done);
      if (n <= 0) {
        throw new Error(`the file of the state's lines set aside ended ${bytes - done} bytes early`);
      }
      done += n;
    }
    return buffer;
  }

  /** Closes the file of lines set aside, if any; the state is then no longer to be saved. */
  close(): void {
    if (this.#spill === null) return;
    close(this.#spill.fd);
    this.#spill = null;
    this.#spillDir = null;
    this.#readBack = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** Forgets `path` (deleted, failed, or no longer listed). */
  delete(path: string): void {
    if (!this.#entries.delete(path)) return;
    this.#changed = true;
    this.#regroup(path);
  }

  /** Notes that the folder of `path` gained or lost it, which changes what the folders above hold too. */
  #regroup(path: string): void {
    for (let slash = path.lastIndexOf("/");; slash = path.lastIndexOf("/", slash - 1)) {
      const folder = slash < 0 ? "" : path.slice(0, slash);
      if (this.#regrouped.has(folder)) return; // and so are those above it
      this.#regrouped.add(folder);
      if (slash < 0) return;
    }
  }

  /**
   * True when the folder `path` holds the same files and folders by the entries now as by those read: no
   * entry of it, or below it, was added or forgotten since.
   */
  holdsAsRead(path: string): boolean {
    return !this.#regrouped.has(path);
  }

  /**
   * Keeps only the entries whose path `keep` accepts: files the server no longer lists are forgotten.
   * `keepsFolder`: true for a folder (a path relative to LOCAL_DIR) all of whose files `keep` accepts.
   */
  retain(keep: (path: string) => boolean, keepsFolder?: (folder: string) => boolean): void {
    // While no entry changed, every folder's files are had without a map of them all, which is made only
    // if one is to be forgotten.
    if (
      this.#entriesByPath === null &&
      [...this.#foldersAsRead()].every(([folder, { files }]) => keepsFolder?.(folder) || files.every(keep))
    ) return;
    for (const path of this.#entries.keys()) if (!keep(path)) this.delete(path);
  }

  /**
   * Waits until the file system's clock has moved a racy window past every ctime recorded, so that the
   * state written next is not racy for them and the next run trusts them all: one wait of about three
   * ticks per run that published files, instead of hashing the run's last files again. The wait is read
   * off the coarse clock that stamps files, not worked out from the real one: on a loaded virtual machine
   * that clock lagged by more than the tick allowed for, and the state was stamped within the window of
   * its last file (a test that needs the state to vouch for it failed one run in four). `alsoKeys`:
   * identities of folders to be read once settled (see {@link settledAt}).
   */
  async settle(alsoKeys: readonly string[] = []): Promise<void> {
    // A loop, not Math.max(...): a tree of a few hundred thousand folders passes more arguments than V8 takes.
    let newest = this.#newestCtime;
    for (const key of alsoKeys) newest = Math.max(newest, ctimeOf(key));
    // Past the window by a microsecond: the clock moves in whole ticks, and its reading can be the window's
    // very end, where the same time read from the key's text or from a stat rounds either way.
    newest += 1e-6;
    const deadline = Date.now() + SETTLE_LIMIT_MS;
    for (let now = coarseClockNow(); isRacy(newest, now) && Date.now() < deadline; now = coarseClockNow()) {
      const waitMs = Math.ceil((newest + RACY_WINDOW_SECONDS - now) * 1000) + 1;
      await new Promise((resolve) => setTimeout(resolve, Math.min(waitMs, SETTLE_LIMIT_MS)));
    }
  }

  /** The state as the text of its file. */
  format(): string {
    const decoder = new TextDecoder(), texts = [];
    for (const chunk of this.chunks()) texts.push(typeof chunk === "string" ? chunk : decoder.decode(chunk));
    return texts.join("");
  }

  /**
   * The state's file in chunks of whole lines, for writing without one string of it all: the lines in
   * memory, then those set aside in a file. A chunk is text, or UTF-8 bytes valid until the next chunk is
   * asked for.
   */
  *chunks(): Generator<string | Uint8Array> {
    yield `${STATE_HEADER}\n`;
    if (this.since !== undefined) yield `${SINCE_LINE}${this.since}\n`;
    // Before the entries: the next run reads them alone ({@link readStateHead}), asks for its listing with
    // them, and reads the entries while the server walks.
    for (const [path, { digest, files }] of this.#knownFolders) {
      yield `${KNOWN_LINE}${digest}\t${files}\t${path === "" ? "." : quote(path)}\n`;
    }
    // Says the digests were made, though no folder has one (all too large, or none with etags).
    if (this.#digested && this.#knownFolders.size === 0) yield `${KNOWN_LINE}${NO_DIGESTS}\n`;
    this.#joinAdded();
    const spilled: number[] = [];
    yield* linesAt(this.#entries.values(), (piece) => this.#texts[piece], spilled);
    // In the order of the file, so that each piece is read back once; an ASCII piece (a path that is not
    // is rare) is not decoded, since its offsets are its bytes'. A buffer and a MB string per piece made
    // garbage that only a full collection frees: saving a million lines set aside grew the process by 90
    // MB, and by 38-40 MB so.
    if (spilled.length > 0) {
      const decoder = new TextDecoder();
      const readBack = (piece: number) => {
        const bytes = this.#readSpilled(piece);
        return this.#spill!.pieces.get(piece)!.ascii ? bytes : decoder.decode(bytes);
      };
      yield* linesAt(Float64Array.from(spilled).sort(), readBack, []);
    }
    for (const [path, { key, names }] of this.#folders) {
      yield `${FOLDER_LINE}${names}\t${key}\t${path === "" ? "." : quote(path)}\n`;
    }
  }

  /** Takes in a folder digest's line, after its `known ` prefix; a malformed one is skipped. */
  #readKnownLine(fields: string): void {
    const [digest, files, written] = fields.split("\t");
    const path = written === "." ? "" : pathOf(written ?? "");
    const count = Number(files);
    if (FOLDER_DIGEST.test(digest) && Number.isSafeInteger(count) && count > 0 && path !== null) {
      this.#knownFolders.set(path, { digest, files: count });
    }
  }

  /** Takes in a folder's line, after its `dir ` prefix; a malformed one is skipped. */
  #readFolderLine(fields: string): void {
    const [digest, key, written] = fields.split("\t");
    const path = written === "." ? "" : pathOf(written ?? "");
    if (/^[0-9]+-[0-9a-f]{8}$/.test(digest) && KEY.test(key ?? "") && path !== null) {
      this.#folders.set(path, { key, names: digest });
    }
  }

  /**
   * Reads a state file's text, written at `writtenAt` (its mtime, in seconds), whole or as pieces that
   * each end with a line break (the last may not). Lines that do not parse are skipped (their files are
   * hashed): a line without a path now, the others when looked up. A file that is not a state file at all
   * gives an empty state. Never throws.
   */
  static parse(text: string | Iterable<string>, writtenAt: number, headOnly = false): MirrorState {
    const state = new MirrorState(writtenAt);
    let header = true;
    for (const piece of typeof text === "string" ? [text] : text) {
      let start = 0;
      if (header) {
        if (!piece.startsWith(`${STATE_HEADER}\n`)) return state;
        start = STATE_HEADER.length + 1;
        header = false;
      }
      const base = state.#texts.length * PIECE_SPAN;
      if (piece.length >= PIECE_SPAN) return state; // not what loadState makes: the rest is not trusted
      state.#texts.push(piece);
      if (state.#readLines(piece, start, base, headOnly)) break;
    }
    return state;
  }

  /**
   * Takes in the lines of `text` from `start` on, a piece whose positions start at `base`; with `headOnly`,
   * stops before the first line that is neither `since` nor a folder digest, and returns true if it did.
   */
  #readLines(text: string, start: number, base: number, headOnly = false): boolean {
    const marks: ReadMarks = { slash: -1, tab: -1, cr: -1, folder: "", lines: null };
    while (start < text.length) {
      let end = text.indexOf("\n", start);
      if (end < 0) end = text.length;
      if (headOnly && !text.startsWith(KNOWN_LINE, start) && !text.startsWith(SINCE_LINE, start)) return true;
      if (text.startsWith(FOLDER_LINE, start)) {
        this.#readFolderLine(text.slice(start + FOLDER_LINE.length, end));
        start = end + 1;
        continue;
      }
      if (text.startsWith(KNOWN_LINE, start)) {
        if (!this.#digested && (this.#linesRead > 0 || this.#folders.size > 0)) this.#digestsLast = true;
        this.#digested = true;
        this.#readKnownLine(text.slice(start + KNOWN_LINE.length, end));
        start = end + 1;
        continue;
      }
      if (text.startsWith(SINCE_LINE, start)) {
        this.since = sinceOf(text.slice(start, end));
        start = end + 1;
        continue;
      }
      const tab1 = text.indexOf("\t", start);
      const tab3 = tab1 < 0 ? -1 : text.indexOf("\t", text.indexOf("\t", tab1 + 1) + 1);
      if (tab1 >= 0 && tab3 >= 0 && tab3 < end) this.#readPath(text, tab3 + 1, end, base + start, marks);
      start = end + 1;
    }
    return false;
  }

  /**
   * Takes in the path of the line at `position`, written in `text` from `from` to `end`, as its folder's;
   * one that is not a path (see {@link pathOf}) is skipped. Only the path is cut out of a line whose path
   * is in the folder of the line before it, not its folder. `marks`: where the next slash, tab and carriage
   * return are in `text`, moved on as lines are read, so that each character is looked at once.
   */
  #readPath(text: string, from: number, end: number, position: number, marks: ReadMarks): void {
    if (marks.tab < from) marks.tab = nextOf(text, "\t", from);
    if (marks.cr < from) marks.cr = nextOf(text, "\r", from);
    if (from === end || marks.tab < end || marks.cr < end || text.charCodeAt(from) === QUOTE) {
      const path = pathOf(text.slice(from, end));
      if (path === null) return;
      const slash = path.lastIndexOf("/");
      this.#lineOf(slash < 0 ? "" : path.slice(0, slash), position, path, marks);
      return;
    }
    if (marks.slash < from) marks.slash = nextOf(text, "/", from);
    let slash = -1;
    while (marks.slash < end) {
      slash = marks.slash;
      marks.slash = nextOf(text, "/", slash + 1);
    }
    const folder = marks.folder;
    if (
      marks.lines !== null &&
      (slash < 0 ? folder.length === 0 : slash - from === folder.length && text.startsWith(folder, from))
    ) {
      marks.lines.positions.push(position);
      marks.lines.paths.push(text.slice(from, end));
      this.#linesRead++;
      return;
    }
    this.#lineOf(slash < 0 ? "" : text.slice(from, slash), position, text.slice(from, end), marks);
  }

  /** Takes in the line at `position` as one of `folder`'s, the folder of the next lines too, likely. */
  #lineOf(folder: string, position: number, path: string, marks: ReadMarks): void {
    let lines = this.#linesByFolder.get(folder);
    if (lines === undefined) this.#linesByFolder.set(folder, lines = { positions: [], paths: [] });
    lines.positions.push(position);
    lines.paths.push(path);
    this.#linesRead++;
    [marks.folder, marks.lines] = [folder, lines];
  }
}

/** The lines of a folder's files as read: where each starts, and its path. */
interface FolderLines {
  positions: number[];
  paths: string[];
}

/** Where {@link MirrorState}'s reading of a piece of text is (see `#readPath`). */
interface ReadMarks {
  /** Where the next slash is (Infinity: none; -1: not looked for yet). */
  slash: number;
  /** Where the next tab is, as {@link slash} says. */
  tab: number;
  /** Where the next carriage return is, as {@link slash} says. */
  cr: number;
  /** The folder of the line read last, and its lines (null before the first). */
  folder: string;
  lines: FolderLines | null;
}

/** Where `char` is next in `text` from `at`; Infinity if nowhere. */
function nextOf(text: string, char: string, at: number): number {
  const found = text.indexOf(char, at);
  return found < 0 ? Infinity : found;
}

/** The file that holds the lines a run recorded, out of memory until the state is saved. */
interface Spill {
  fd: number;
  /**
   * Where each piece set aside is in the file, by its number in the state's text, and whether it is ASCII
   * (one byte a character).
   */
  pieces: Map<number, { offset: number; bytes: number; ascii: boolean }>;
  /** Where pieces are read back into. */
  buffer: Uint8Array;
  /** The file's length. */
  end: number;
  /** True once a write failed: the pieces after it stay in memory. */
  full: boolean;
}

/**
 * The lines that start at `positions` (piece * PIECE_SPAN + offset), in their order, from the pieces of
 * text `textOf` gives; a position whose piece it has not (null) goes to `elsewhere`. Lines that follow one
 * another in a piece go out as one slice of it: a state that changed in a few places is written at the
 * speed of copying, not line by line. A line goes out as it came in, unchecked: a malformed one is
 * forgotten once its file is looked up.
 */
function* linesAt(
  positions: Iterable<number>,
  textOf: (piece: number) => string | Uint8Array | null,
  elsewhere: number[],
): Generator<string | Uint8Array> {
  const cut = (text: string | Uint8Array, start: number, end?: number) =>
    typeof text === "string" ? text.slice(start, end) : text.subarray(start, end);
  let run: { piece: number; text: string | Uint8Array; start: number; end: number } | null = null;
  // The piece asked for last: `textOf` is asked once for each stretch of positions in one piece.
  let shown = -1, text: string | Uint8Array | null = null;
  for (const position of positions) {
    const piece = Math.floor(position / PIECE_SPAN), start = position % PIECE_SPAN;
    if (piece !== shown) {
      // Out before the next piece is asked for, which may be read back into the same buffer.
      if (run !== null) yield cut(run.text, run.start, run.end);
      run = null;
      [shown, text] = [piece, textOf(piece)];
    }
    if (text === null) {
      elsewhere.push(position);
      continue;
    }
    const newline = typeof text === "string" ? text.indexOf("\n", start) : text.indexOf(NEWLINE, start);
    if (run !== null && (newline < 0 || run.end !== start)) {
      yield cut(run.text, run.start, run.end);
      run = null;
    }
    if (newline < 0) { // the file's last line, without its line break
      yield cut(text, start);
      yield "\n";
    } else if (run === null) run = { piece, text, start, end: newline + 1 };
    else run.end = newline + 1;
  }
  if (run !== null) yield cut(run.text, run.start, run.end);
}

const TAB = 9;
const NEWLINE = 10;
const QUOTE = 0x22;
const utf8 = new TextEncoder();
/**
 * Positions per piece of a state's text: more than a piece holds (see {@link READ_PIECE}), and few enough
 * that positions stay small integers (V8 keeps those in the Map's slot; a larger number is an object of
 * its own) for states of up to 512 pieces, some 3 million files.
 */
const PIECE_SPAN = 2 ** 21;
/** Bytes of the state file read at a time. */
const READ_PIECE = 1 << 20;
/** Bytes of the state file read at a time for its head: 1,000 folder digests take some 50 KB. */
const HEAD_PIECE = 64 * 1024;
const SHA256_HEX_LENGTH = 64;

/** How a folder's line starts (a space, not a tab: a client that does not know it sees no path in it). */
const FOLDER_LINE = "dir ";
/** How a folder digest's line starts (older states have none; older clients skip them). */
const KNOWN_LINE = "known ";
/** A digest line's content when the state's writer made digests and no folder has one. */
const NO_DIGESTS = "none";
/** The line after the header that holds {@link MirrorState.since}. */
const SINCE_LINE = "since ";

/** A path as the state writes it: as it is, or as a JSON string when it could be taken for something else. */
function quote(path: string): string {
  return path.startsWith('"') || /[\t\n\r]/.test(path) ? JSON.stringify(path) : path;
}

/** size:inode:mtime:ctime, the times as seconds.nanoseconds: only what such a key can hold. */
const KEY = /^[0-9]+:[0-9]+:-?[0-9]+\.[0-9]{9}:-?[0-9]+\.[0-9]{9}$/;
/** A line's SHA-256 and etag fields, each followed by its tab, matched where they start (sticky). */
const HASH_AND_ETAG = /[0-9a-f]{64}\t[A-Za-z0-9_-]{0,128}\t/y;

/** The path as a line of a state file ends with it, or null if it is not one. */
function pathOf(written: string): string | null {
  let path: unknown = written;
  if (written.startsWith('"')) {
    try {
      path = JSON.parse(written);
    } catch {
      return null;
    }
  }
  if (typeof path !== "string" || path === "" || written.includes("\t") || written.includes("\r")) {
    return null;
  }
  return path;
}

/** The folder in LOCAL_DIR that holds the state; `mirror` neither lists into it nor deletes in it. */
export const STATE_DIR = ".ferry";
const STATE_FILE = "state";
const STATE_TEMP = "state.tmp";

/**
 * LOCAL_DIR's state file, open: its head read first ({@link readStateHead}), then all of it
 * ({@link loadState}), both from this one version whatever another run renames over it meanwhile.
 */
export class StateFile {
  #fd: number;

  private constructor(fd: number, readonly writtenAt: number) {
    this.#fd = fd;
  }

  /**
   * Opens LOCAL_DIR's state; null if it is missing, unreadable, or not a regular file (a symlink planted
   * there is not followed).
   */
  static open(root: LocalDir): StateFile | null {
    let fd: number;
    try {
      fd = openAt(root.fd, `${STATE_DIR}/${STATE_FILE}`, OPEN.O_RDONLY | C.O_NONBLOCK, { noSymlinks: true });
    } catch {
      return null;
    }
    try {
      const stat = fstat(fd);
      if (stat.isFile) return new StateFile(fd, Number(stat.mtimeNs) / 1e9);
    } catch { /* not to be read */ }
    close(fd);
    return null;
  }

  /** Its text in pieces of whole lines of about `pieceBytes` (see {@link piecesOf}). */
  pieces(pieceBytes?: number): Generator<string> {
    return piecesOf(this.#fd, pieceBytes);
  }

  /** Closes it; a second call does nothing. */
  close(): void {
    if (this.#fd < 0) return;
    close(this.#fd);
    this.#fd = -1;
  }
}

/**
 * What a state's first lines say, read before its entries: its `since` and its folder digests. Null when
 * they do not hold the digests (a state of an older client, which writes them last, or none): the caller
 * then reads the whole state before asking for its listing.
 */
export function readStateHead(file: StateFile): Pick<MirrorState, "since" | "knownFolders"> | null {
  try {
    const head = MirrorState.parse(file.pieces(HEAD_PIECE), file.writtenAt, true);
    return head.digested ? head : null;
  } catch {
    return null;
  }
}

/**
 * Loads LOCAL_DIR's state (from `file` if it was opened already; it is closed). A state that is missing,
 * unreadable, or not a regular file (a symlink planted there is not followed) is an empty one: the run
 * then hashes what it finds.
 */
export function loadState(root: LocalDir, file: StateFile | null = StateFile.open(root)): MirrorState {
  if (file === null) return new MirrorState();
  try {
    return MirrorState.parse(file.pieces(), file.writtenAt);
  } catch {
    return new MirrorState();
  } finally {
    file.close();
  }
}

/** The time a `since` line holds, if it is one that holds a time. */
function sinceOf(line: string): string | undefined {
  const time = line.slice(SINCE_LINE.length);
  return line.startsWith(SINCE_LINE) && NANOSECONDS.test(time) ? time : undefined;
}

/**
 * The {@link MirrorState.since} of the state in the folder `localDir` (LOCAL_DIR, as named), read from the
 * state's first lines alone, before the run asks for its listing; undefined if there is none to be had
 * (no state, or one without it). No symlink below LOCAL_DIR is followed.
 */
export function stateSince(localDir: string): string | undefined {
  let root: number | undefined, fd: number | undefined;
  try {
    root = openAt(undefined, localDir, OPEN.O_RDONLY | OPEN.O_DIRECTORY);
    fd = openAt(root, `${STATE_DIR}/${STATE_FILE}`, OPEN.O_RDONLY | C.O_NONBLOCK, { noSymlinks: true });
    if (!fstat(fd).isFile) return undefined;
    const head = new Uint8Array(STATE_HEADER.length + SINCE_LINE.length + 32);
    const lines = new TextDecoder().decode(head.subarray(0, pread(fd, head, 0))).split("\n");
    return lines[0] === STATE_HEADER && lines.length > 2 ? sinceOf(lines[1]) : undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) close(fd);
    if (root !== undefined) close(root);
  }
}

/**
 * The text of the file open as `fd`, in pieces of whole lines of about {@link READ_PIECE} bytes: read into
 * one buffer again and again, where a buffer of the whole file cost a page fault per 4 KiB of it, and
 * as much memory again as the text (170 MB for a million files). A line longer than a piece ends the text.
 */
function* piecesOf(fd: number, pieceBytes = READ_PIECE): Generator<string> {
  const buffer = pageAlignedBuffer(pieceBytes);
  const decoder = new TextDecoder();
  let held = 0; // bytes of an unfinished line, at the start of the buffer
  for (let offset = 0;;) {
    const n = pread(fd, buffer.subarray(held), offset);
    if (n <= 0) {
      if (held > 0) yield decoder.decode(buffer.subarray(0, held));
      return;
    }
    offset += n;
    const filled = held + n;
    const end = buffer.lastIndexOf(0x0a, filled - 1) + 1;
    if (end === 0) {
      if (filled < buffer.length) {
        held = filled;
        continue;
      }
      return;
    }
    yield decoder.decode(buffer.subarray(0, end));
    buffer.copyWithin(0, end, filled);
    held = filled - end;
  }
}

/** Makes LOCAL_DIR's STATE_DIR unless something has that name already. Throws LibcError. */
function makeStateDir(root: LocalDir): void {
  try {
    mkdirAt(root.fd, STATE_DIR, 0o755);
  } catch (e) {
    if (!(e instanceof LibcError) || e.errnoName !== "EEXIST") throw e;
  }
}

/**
 * Writes LOCAL_DIR's state: a temporary file, renamed over the old state, so a reader sees the old or the
 * new one whole. It is not fsynced: a state lost in a crash costs the next run some hashing, no more.
 * Throws LocalIoError.
 */
export function saveState(root: LocalDir, state: MirrorState): void {
  const shown = root.shownPath(`${STATE_DIR}/${STATE_FILE}`);
  try {
    makeStateDir(root);
    using dir = LocalDir.adopt(
      openAt(root.fd, STATE_DIR, OPEN.O_RDONLY | OPEN.O_DIRECTORY, { noSymlinks: true }),
      root.shownPath(STATE_DIR),
    );
    dir.replaceFile(STATE_FILE, STATE_TEMP, 0o600, (fd) => {
      // Through one buffer of a MiB: the state of a million files is some 170 MB of text.
      const buffer = new Uint8Array(READ_PIECE);
      let offset = 0, filled = 0;
      const flush = () => {
        pwriteAll(fd, buffer.subarray(0, filled), offset);
        offset += filled;
        filled = 0;
      };
      for (const chunk of state.chunks()) {
        if (typeof chunk !== "string") {
          flush();
          pwriteAll(fd, chunk, offset);
          offset += chunk.length;
          continue;
        }
        for (let done = 0; done < chunk.length;) {
          const { read, written } = utf8.encodeInto(
            done === 0 ? chunk : chunk.slice(done),
            buffer.subarray(filled),
          );
          done += read;
          filled += written;
          if (done < chunk.length) flush();
        }
      }
      flush();
    });
  } catch (e) {
    if (e instanceof LocalIoError) throw e; // it names the file already
    throw new LocalIoError(`cannot write ${shown}`, e);
  }
}
