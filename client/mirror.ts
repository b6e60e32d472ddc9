/**
 * `client mirror`: makes a local directory a copy of a directory on the server. One recursive `list`, then
 * each new or changed file fetched with {@link fetchFile} (resume, verification, atomic publication,
 * only-if-changed), all over one persistent connection (the listing brings the small files with it: all of
 * them into an empty directory, later those changed since the last run); with `--delete`, local regular
 * files the server no longer has are removed, and the directories that leaves empty, but only when the listing is the whole
 * tree: one that left anything out makes the run partial (exit 10) and deletes nothing. A dry run takes the
 * same steps up to the fetch, then reports what it would fetch and delete, and changes nothing.
 *
 * Below LOCAL_DIR no symlink is followed (`local_tree.ts`): every file is created, renamed and removed
 * relative to its directory's fd, and a symlink where the server has a directory is replaced by one. A
 * folder where the server has a file waits for --delete to remove it, and the file is fetched after.
 *
 * @module
 */

import { basename } from "node:path";
import {
  classify,
  ClientError,
  ExitCode,
  protocolError,
  ServerRefusal,
  usageError,
  worstExitCode,
} from "./failure.ts";
import { DELTA_MIN_BYTES, worthDelta } from "./delta_fetch.ts";
import { SignaturePrefetch } from "./signature_prefetch.ts";
import { SignatureStore } from "./signature_store.ts";
import { WholeFileSignatures } from "./whole_signatures.ts";
import { fetchFile, type FetchOptions, type FileReport } from "./fetch_file.ts";
import {
  ErrorCode,
  FOLDER_DIGEST,
  type FolderRecord,
  isSha256Hex,
  type ListEntry,
  MAX_INLINE_FILE,
  MAX_KNOWN_FOLDER_FILES,
  MAX_KNOWN_FOLDERS,
  type PartialRecord,
  PROTOCOL_VERSION,
} from "../framing.ts";
import type { ManifestFile } from "./manifest.ts";
import {
  fileSystemRefusal,
  type Folder,
  FolderCache,
  type LocalDir,
  LocalIoError,
  LocalTree,
  parentPath,
  typeAt,
} from "./local_tree.ts";
import { partStem, type Place, removeStaleParts } from "./publish.ts";
import { DT } from "../ffi/structs.ts";
import {
  C,
  close,
  fstat,
  identityAt,
  LibcError,
  OPEN,
  openAt,
  pread,
  raiseOpenFileLimit,
  type StatIdentity,
} from "../ffi/libc.ts";
import { compareUtf8, createSha256, FolderDigest, loadHashing } from "../hashing.ts";
import { deleteExtraneous } from "./mirror_delete.ts";
import { NO_TREE_PROGRESS, type Progress, type TreeProgress } from "./progress.ts";
import {
  type KnownFolder,
  loadState,
  MirrorState,
  readStateHead,
  saveState,
  sizeOf,
  STATE_DIR,
  StateFile,
  stateSince,
} from "./mirror_state.ts";
import {
  fetchTree,
  InlinePublisher,
  type InlineVersion,
  inlineVersionOf,
  type TreeFile,
  type TreeFileSource,
  type TreeOutcome,
} from "./tree_fetch.ts";
import {
  checkTreeAgainst,
  fetchRelease,
  type Release,
  type TrustOptions,
  writeReleaseFiles,
} from "./trust.ts";
import { withRetries } from "./retry.ts";
import type { Listing, Session } from "./session.ts";
import { pageAlignedBuffer } from "../ffi/page_aligned.ts";

/** How to mirror. */
export interface MirrorOptions extends Omit<FetchOptions, "listed"> {
  /** Remove local files the server no longer has. */
  delete: boolean;
  /** Told of changes the run made that were not asked for (a symlink replaced by a directory). */
  onNotice?: (message: string) => void;
  /**
   * Only look: report each file that would be fetched ("would update") or deleted ("would delete"), and
   * write nothing into LOCAL_DIR (not even the state, or LOCAL_DIR itself when it is missing).
   */
  dryRun?: boolean;
  /**
   * Hash every local file of the listed size, trusting nothing the state recorded (it is written anew
   * from what the hashes found).
   */
  checksum?: boolean;
  /** Shows the run as a whole (the per-file `progress` is not used). */
  treeProgress?: TreeProgress;
  /**
   * Signed releases (`trust.ts`): the manifest is checked before the listing, the listing against the
   * manifest before any file is fetched, and every file's bytes against the manifest's SHA-256.
   */
  trust?: TrustOptions;
  /**
   * False: a file found current is counted in the summary and on the bar, but not passed to `onFile`
   * (a caller that prints nothing of such files spares a run of 100,000 of them as many reports).
   */
  reportsUnchanged?: boolean;
}

/** The counts of the summary line, and the run's exit code. */
export interface MirrorSummary {
  /** Files fetched (in a dry run: that would be). */
  updated: number;
  /** Files already current. */
  unchanged: number;
  /** Local files removed with --delete (in a dry run: that would be). */
  deleted: number;
  /** Files that could not be fetched or removed. */
  failed: number;
  /** Failures of the run as a whole (an incomplete listing), besides the files'. */
  problems: ClientError[];
  /** 0, or the most serious failure's exit code. */
  exitCode: number;
  /** Data bytes received. */
  bytes: number;
}

/** A summary of nothing done yet. */
export function emptySummary(): MirrorSummary {
  return { updated: 0, unchanged: 0, deleted: 0, failed: 0, problems: [], exitCode: 0, bytes: 0 };
}

/**
 * REMOTE_DIR as the protocol wants it: relative, no `.` or empty components, no trailing slash; `""` for
 * the served root (`.`, `/` or `""` on the command line). Throws a usage error for `..`.
 */
export function normalizeRemoteDir(dir: string): string {
  const parts = dir.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) throw usageError(`mirror: REMOTE_DIR '${dir}' must not contain '..'`);
  return parts.join("/");
}

/**
 * Where a listed file goes, relative to LOCAL_DIR: its path below `remoteDir`. Null for a path the
 * server should not have sent (outside `remoteDir`, or one that could climb out of LOCAL_DIR).
 */
export function localRelative(entryPath: string, remoteDir: string): string | null {
  const prefix = remoteDir === "" ? "" : `${remoteDir}/`;
  if (!entryPath.startsWith(prefix)) return null;
  const rel = entryPath.slice(prefix.length);
  return UNSAFE_RELATIVE.test(rel) ? null : rel;
}

/** A relative path with an empty, `.` or `..` component, or a NUL: one regular expression, not a split per file. */
const UNSAFE_RELATIVE = /(?:^|\/)\.{0,2}(?:\/|$)|\0/;

/** Checks a listing's entry; returns null if it is malformed. */
function checkEntry(value: unknown): ListEntry | null {
  if (typeof value !== "object" || value === null) return null;
  const e = value as Record<string, unknown>;
  if (typeof e.path !== "string" || !Number.isSafeInteger(e.size) || (e.size as number) < 0) return null;
  if (e.sha256 !== undefined && !isSha256Hex(e.sha256)) return null;
  if (e.etag !== undefined && typeof e.etag !== "string") return null;
  return e as unknown as ListEntry;
}

/**
 * Asks for the recursive listing of `remoteDir` (streamed, so without a limit on its size), with retries:
 * a listing cut off in the middle is asked for again whole.
 */
async function listRemote(
  session: Session,
  remoteDir: string,
  options: MirrorOptions,
  inline: { since: string | undefined } | null,
  known: { digests: readonly string[]; since?: string },
  onEntries: (batch: unknown[], inlined: Uint8Array | null) => Promise<void>,
  meanwhile: () => void,
): Promise<Listing> {
  const what = `the listing of ${JSON.stringify(remoteDir === "" ? "/" : remoteDir)}`;
  let attempts = 0;
  try {
    return await withRetries(
      (n) => {
        attempts = n;
        return session.list(
          // Brief: mirror takes a file's mode and mtime from its `get`, not from the listing (an inlined
          // entry has them).
          {
            v: PROTOCOL_VERSION,
            op: "list",
            path: remoteDir,
            recursive: true,
            brief: true,
            // Empty folders too, made here; not with a manifest, which signs files only.
            ...(options.trust === undefined ? { folders: true } : {}),
            // Changed files only by `inlineSince` alone: a server that predates it then sends no content.
            ...(inline === null
              ? {}
              : inline.since === undefined
              ? { inline: MAX_INLINE_FILE }
              : { inlineSince: inline.since }),
            ...(known.digests.length === 0 ? {} : { known: [...known.digests] }),
            ...(known.since === undefined || known.digests.length === 0 ? {} : { knownSince: known.since }),
          },
          what,
          onEntries,
          meanwhile,
        );
      },
      {
        retries: options.retries,
        maxTimeMs: options.retryMaxTimeMs,
        signal: options.deadline.signal,
        verdict: (e) => classify(e),
      },
    );
  } catch (e) {
    if (options.deadline.expired) throw options.deadline.error();
    if (e instanceof ServerRefusal && e.body.code === ErrorCode.UnknownOp) {
      throw protocolError(`the server does not know 'list' (it speaks an older protocol): ${e.message}`);
    }
    const error = classify(e);
    if (attempts <= 1) throw error;
    throw new ClientError(error.exitCode, `${error.message} (after ${attempts} attempts)`);
  }
}

/** The one line that says a listing was not the whole tree, with the first few of what it left out. */
function incompleteListing(listing: Listing, unusable: number, deleting: boolean): ClientError {
  const { count, first } = listing.leftOut;
  const shown = first.slice(0, 3).map((e) => `${JSON.stringify(e.path)}: ${e.reason}`);
  const why = [
    count > 0 ? `${count} left out (${shown.join("; ")}${count > shown.length ? "; ..." : ""})` : "",
    listing.truncated && count === 0 ? "cut short by the server" : "",
    unusable > 0 ? `${unusable} entries unusable` : "",
  ].filter((w) => w !== "").join(", ");
  return new ClientError(
    ExitCode.Partial,
    `the server's listing is incomplete: ${why}: what it listed was mirrored${
      deleting ? ", and --delete was skipped" : ""
    }`,
  );
}

/**
 * Smallest file whose part is resumed. A killed run leaves the parts of the files in flight: a thousand
 * small files resumed one by one, each with a request and two fsyncs of its own, took 4.9-5.1 s, and
 * 1.5-1.6 s fetched whole with the others on the pipelined path; a part under this size saves little.
 */
const RESUME_MIN_BYTES = 1024 * 1024;

/** What a listed file needs (read only: one object can stand for every file with the same need). */
type Need =
  /**
   * Nothing: the local copy is current (its SHA-256 is known); `recorded` when the state already says so
   * in full (same identity, hash and etag), so that there is nothing to record either.
   */
  | { kind: "current"; sha256: string; recorded?: boolean }
  /** Its local copy, of the listed size, must be hashed to tell. */
  | { kind: "hash" }
  /** Parts of it are there, too small to resume: they go before the fetch, and then it is planned anew. */
  | { kind: "drop parts" }
  /** Fetched on the fast path (pipelined, published in batches); `localSha256` goes as ifNoneMatch. */
  | { kind: "fast"; localSha256?: string }
  /**
   * Fetched one by one (a part to resume, or a large file to patch with delta); `localSha256`, which the
   * state vouches for, goes as ifNoneMatch without the copy being read to hash it. `vouched` is the
   * SHA-256 the state vouches the old copy has, whatever its size: the signature kept of it plans the delta.
   */
  | { kind: "one by one"; localSha256?: string; vouched?: string }
  /**
   * A folder stands at its name: fetched once --delete has emptied and removed it, at the end of the run
   * (only a whole listing deletes anything); else it fails, the folder left as it is.
   */
  | { kind: "folder in the way" };

/** Entries of a held listing (one checked against a manifest) planned together: a streamed batch's size. */
const PLAN_SLICE = 1024;

/** The need of most files of a first copy: one object for them all, not one per file of a large tree. */
const FETCH: Need = Object.freeze({ kind: "fast" });

/** The need of a file whose name a local folder holds. */
const FOLDER_IN_THE_WAY: Need = Object.freeze({ kind: "folder in the way" });

/** A listed file on its way; it is also what the pipelined fetch is given (no copy per file). */
class Item implements TreeFile {
  /** What lstat said of the local copy, when there is one. */
  local?: StatIdentity;
  need: Need = FETCH;
  /** True when a signed manifest is in force: the entry carries the manifest's size and hash. */
  signed = false;

  constructor(
    readonly entry: ListEntry,
    readonly rel: string,
    readonly folder: Folder,
  ) {}

  /** Its name in its folder: cut from `rel` when asked, where a string kept per file of a large tree is MBs. */
  get name(): string {
    return this.rel.slice(this.rel.lastIndexOf("/") + 1);
  }

  get path(): string {
    return this.entry.path;
  }

  get dir(): LocalDir {
    return this.folder.dir;
  }

  get localSha256(): string | undefined {
    return this.need.kind === "fast" || this.need.kind === "one by one" ? this.need.localSha256 : undefined;
  }

  get expected(): ManifestFile | undefined {
    return this.signed ? { size: this.entry.size, sha256: this.entry.sha256! } : undefined;
  }

  get replaces(): boolean {
    return this.local !== undefined;
  }
}

/**
 * The files for the pipelined fetch, in order, each taken once. A file with nothing to compare (no hash
 * to offer or check: most of a first copy) waits as its path below LOCAL_DIR, size and folder, and gets
 * its Item only when its request goes out, with an entry of just its path and size (the answer brings
 * the hash and the etag). An Item, the listing's entry and its strings held from the listing to the
 * request made the heap of a first copy of 100,000 files 37.7 MB once listed; this queue holds three array
 * slots a file besides the path, which the run keeps anyway, and the heap is 18.8 MB.
 */
class FetchQueue implements TreeFileSource<Item> {
  /** A waiting file's path below LOCAL_DIR, or its Item; "" once taken. */
  readonly #files: (string | Item)[] = [];
  /** The size of a file waiting as its path. */
  readonly #sizes: number[] = [];
  /** The folder of a file waiting as its path. */
  readonly #folders: (Folder | null)[] = [];
  #next = 0;

  constructor(readonly remoteDir: string) {}

  /** Files not taken yet. */
  get waiting(): number {
    return this.#files.length - this.#next;
  }

  /** Queues `item`: as its path, size and folder when nothing else of it is needed. */
  add(item: Item): void {
    const plain = item.need === FETCH && !item.signed;
    this.#files.push(plain ? item.rel : item);
    this.#sizes.push(plain ? item.entry.size : 0);
    this.#folders.push(plain ? item.folder : null);
  }

  /** The next file; throws when none is waiting. */
  take(): Item {
    if (this.waiting <= 0) throw new RangeError("no file is waiting to be fetched");
    const at = this.#next++;
    const file = this.#files[at], folder = this.#folders[at];
    this.#files[at] = "";
    this.#folders[at] = null;
    if (typeof file !== "string") return file;
    const path = this.remoteDir === "" ? file : `${this.remoteDir}/${file}`;
    return new Item({ path, size: this.#sizes[at] }, file, folder!);
  }
}

/**
 * Decides what `item` needs by what LOCAL_DIR holds, without reading any file: the state answers for a
 * file whose lstat matches what was recorded. Throws LocalIoError.
 */
function needOf(item: Item, state: MirrorState, partsDropped = false): Need {
  return needBeforeLstat(item, partsDropped) ?? needByLstat(item, state, lstatOf(item));
}

/** What `item` needs when that is plain without an lstat of its local copy (see {@link needOf}); else null. */
function needBeforeLstat(item: Item, partsDropped: boolean): Need | null {
  const { entry, folder, name } = item;
  // Most folders have no part: asking a Set for the name would first cost hashing the name.
  if (folder.parts.size > 0 && folder.parts.has(partStem(name)) && !partsDropped) {
    // A part beside it: resumed, if what it saves is worth a request and two fsyncs of its own.
    return entry.size >= RESUME_MIN_BYTES ? { kind: "one by one" } : { kind: "drop parts" };
  }
  // A folder as recorded holds the files the state has: lstat tells, where a set of names would cost more.
  if (!folder.recorded && !folder.names.has(name)) return FETCH;
  return null;
}

/** The lstat of `item`'s local copy: null if there is none. Throws LocalIoError. */
function lstatOf(item: Item): StatIdentity | null {
  try {
    return identityAt(item.folder.dir.fd, item.name);
  } catch (e) {
    throw new LocalIoError(`cannot stat ${item.folder.dir.shownPath(item.name)}`, e);
  }
}

/** What `item` needs, its local copy's lstat being `local` (see {@link needOf}). */
function needByLstat(item: Item, state: MirrorState, local: StatIdentity | null): Need {
  const { entry } = item;
  if (local === null) return FETCH;
  // A symlink or special file is replaced by the file; a folder is not, unless --delete removes it.
  if (!local.isFile) return isFolderAt(item) ? FOLDER_IN_THE_WAY : FETCH;
  item.local = local;
  const recorded = state.trusted(item.rel, local);
  const sameVersion = recorded !== undefined &&
    (entry.sha256 !== undefined
      ? recorded.sha256 === entry.sha256
      : entry.etag !== undefined && recorded.etag === entry.etag);
  if (sameVersion) {
    return { kind: "current", sha256: recorded.sha256, recorded: recorded.etag === (entry.etag ?? "") };
  }
  if (local.size !== entry.size) {
    // Changed for sure: no need to hash it, unless delta will read it anyway.
    return worthDelta(local.size, entry.size) ? { kind: "one by one", vouched: recorded?.sha256 } : FETCH;
  }
  // A large file of the same size goes one by one: delta reads the old copy anyway, and the signature's
  // request says "unchanged" when the copy already has the server's hash.
  if (worthDelta(local.size, entry.size)) {
    return { kind: "one by one", localSha256: recorded?.sha256, vouched: recorded?.sha256 };
  }
  if (recorded !== undefined) return needBySha(entry, recorded.sha256);
  return { kind: "hash" };
}

/** The failure of a file the server has where LOCAL_DIR holds the folder `shown`. */
function folderInTheWay(shown: string, why: string): ClientError {
  return new ClientError(ExitCode.LocalIo, `${shown} is a folder where the server has a file: ${why}`);
}

/** True when a folder (not a symlink to one) stands at `item`'s name; not when it cannot be looked at. */
function isFolderAt(item: Item): boolean {
  return typeAt(item.folder.dir.fd, item.name) === DT.DIR;
}

/** What a file of the listed size needs, its local copy's SHA-256 known (null: it is gone meanwhile). */
function needBySha(entry: ListEntry, sha256: string | null): Need {
  if (sha256 === null) return FETCH;
  if (entry.sha256 === sha256) return { kind: "current", sha256 };
  return { kind: "fast", localSha256: sha256 };
}

const hashBuffer = pageAlignedBuffer(1024 * 1024);

/** SHA-256 of the regular file `name` in `dir` (no symlink followed); null if it is not one. */
function hashLocal(dir: LocalDir, name: string): string | null {
  let fd: number;
  try {
    fd = openAt(dir.fd, name, OPEN.O_RDONLY | C.O_NONBLOCK, { noSymlinks: true });
  } catch (e) {
    if (e instanceof LibcError && (e.errnoName === "ENOENT" || e.errnoName === "ELOOP")) return null;
    throw new LocalIoError(`cannot read ${dir.shownPath(name)}`, e);
  }
  try {
    if (!fstat(fd).isFile) return null;
    const hash = createSha256();
    for (let offset = 0;;) {
      const n = pread(fd, hashBuffer, offset);
      if (n <= 0) break;
      hash.update(hashBuffer.subarray(0, n));
      offset += n;
    }
    return hash.digest("hex");
  } catch (e) {
    throw new LocalIoError(`cannot read ${dir.shownPath(name)}`, e);
  } finally {
    close(fd);
  }
}

/** LOCAL_DIR, open for a run: made on the first entry of the listing, so a refused listing makes nothing. */
interface Local {
  tree: LocalTree;
  folders: FolderCache;
  state: MirrorState;
}

/** One `mirror` run: its steps, in the order {@link mirror} takes them, and what they share. */
class MirrorRun {
  /**
   * Paths below LOCAL_DIR the listing has: what --delete keeps, and the state remembers. The files of a
   * folder kept whole without a report of each are not here but kept all the same (see {@link #keptTest}).
   */
  readonly keep = new Set<string>();
  /** Empty folders the server has (`folders`), relative to LOCAL_DIR: made, and not removed by --delete. */
  readonly keepFolders = new Set<string>();
  /**
   * Folders below LOCAL_DIR whose files are all kept and that hold no other (as the state recorded them,
   * unchanged since): --delete need not look at their files one by one. A folder whose every file was
   * found current with no report to make has its files here only, not in {@link keep}: 100,000 paths
   * added to a set cost a run with nothing changed some 25 ms.
   */
  readonly #keptWhole = new Set<string>();
  /** Entries the listing had but this client could not use: the listing is then not the whole tree here. */
  unusable = 0;
  readonly #toHash: Item[] = [];
  readonly #partsToDrop: Item[] = [];
  readonly #fast: FetchQueue;
  readonly #oneByOne: Item[] = [];
  /** Files the server has where LOCAL_DIR holds a folder, waiting for --delete to remove it. */
  readonly #folderInTheWay: Item[] = [];
  readonly #codes: number[] = [];
  /** LOCAL_DIR once opened; null before, and in a dry run that found it missing. */
  #local: Local | null = null;
  #signatureStore: Promise<SignatureStore> | null = null;
  #wholeSignatures: WholeFileSignatures | null = null;
  #opened = false;
  /**
   * LOCAL_DIR and its state file, found to ask for the listing with the state's folder digests before the
   * entries are read ({@link knownDigests}); taken by {@link open} or {@link openIfThere}.
   */
  #found: { tree: LocalTree; file: StateFile | null; since: string | undefined } | null = null;
  readonly dryRun: boolean;
  readonly progress: TreeProgress;
  /** The bytes of the one-by-one fetches, counted on the run's bar. */
  readonly #bytes: Progress;
  /** The signed manifest the run goes by, when trusting keys. */
  release: Release | null = null;
  /** The signatures of the large changed files, asked for ahead on a connection of their own. */
  #prefetch: SignaturePrefetch | null = null;
  /** Files of the last batch whose content came with the listing, to write before the next is read. */
  readonly #inlined: { item: Item; version: InlineVersion; bytes: Uint8Array }[] = [];
  /** What writes and publishes them, made for the first. */
  #publisher: InlinePublisher<Item> | null = null;
  /** LOCAL_DIR as reports show it, without a trailing slash. */
  readonly #shownDir: string;
  /**
   * The folders the listing was told the run holds the files of (`known`), by their path on the server:
   * their path below LOCAL_DIR, and how many files their digest was made of.
   */
  readonly #known = new Map<string, { local: string; files: number }>();
  /** True when a folder record did not agree with the state: the listing is then asked for again whole. */
  relist = false;
  /**
   * Why nothing more is fetched or written, once LOCAL_DIR's file system refused a write that every later
   * one would meet too (see {@link #stopWriting}); null until then.
   */
  #refused: ClientError | null = null;
  /** True when a stop for a refused write still reads the listing to its end, for --delete. */
  readonly #deletesAfterRefusal: boolean;
  /** Files given up on before they were asked for, and why (see {@link FileReport.notAttempted}). */
  #notAttempted: { files: number; why: ClientError } | null = null;

  /**
   * @param inline the listing brings the content of small files
   * @param startsEmpty LOCAL_DIR was missing or empty when the run began
   */
  constructor(
    readonly session: Session,
    readonly remoteDir: string,
    readonly localDir: string,
    readonly options: MirrorOptions,
    readonly onFile: (report: FileReport) => void,
    readonly summary: MirrorSummary,
    readonly inline = false,
    startsEmpty = false,
  ) {
    this.dryRun = options.dryRun ?? false;
    this.#deletesAfterRefusal = (options.delete ?? false) && !startsEmpty;
    this.#shownDir = localDir.replace(/\/+$/, "");
    this.#fast = new FetchQueue(remoteDir);
    this.progress = options.treeProgress ?? NO_TREE_PROGRESS;
    const progress = this.progress;
    this.#bytes = { start() {}, advance: (n) => progress.received(n), end() {} };
  }

  /**
   * LOCAL_DIR, opened (and made) on first use; a dry run only opens it, and has none if it is missing.
   * Throws LocalIoError.
   */
  open(): Local | null {
    if (!this.#opened) {
      this.#take(
        this.#found?.tree ?? (this.dryRun ? LocalTree.find(this.localDir) : LocalTree.open(this.localDir)),
      );
    }
    return this.#local;
  }

  /**
   * Opens LOCAL_DIR and reads its state if LOCAL_DIR is there, making nothing and saying nothing (what
   * fails here fails again in {@link open}, which reports it): called once the listing is asked for, so
   * that reading a large state takes the time the server needs to send the first entries.
   */
  openIfThere(): void {
    if (this.#opened || this.release !== null) return; // a signed tree opens nothing before it is checked
    let tree;
    try {
      tree = this.#found?.tree ?? LocalTree.find(this.localDir);
    } catch {
      return;
    }
    if (tree !== null) this.#take(tree);
  }

  /** The signatures kept of large files (`signature_store.ts`); null until LOCAL_DIR is open. */
  #signatures(): Promise<SignatureStore> | null {
    if (this.#local === null) return null;
    return this.#signatureStore ??= SignatureStore.open(this.#local.tree.root);
  }

  #take(tree: LocalTree | null): void {
    this.#opened = true;
    const file = this.#found?.file;
    this.#found = null;
    if (tree === null) return;
    raiseOpenFileLimit(); // a folder of the tree is held open from its first file to the end of the run
    const state = this.options.checksum ? new MirrorState() : loadState(tree.root, file);
    if (!this.dryRun) state.spillInto(tree.root);
    this.#local = { tree, folders: new FolderCache(tree, this.options.onNotice, state), state };
  }

  /**
   * The digests of the folders whose files the state records, for the listing's `known` (PROTOCOL.md):
   * the server sends one FolderRecord for each such folder it holds as recorded, instead of an entry per
   * file, and {@link planBatch} takes the state's entries for its files. The state holds them as its last
   * writer made them from its entries (see {@link digestFolders}). Reads the state's first lines, which hold
   * them, and leaves its entries for {@link openIfThere}, once the listing is asked for; a state that holds
   * them last (an older client's) is read whole first.
   */
  knownDigests(): string[] {
    const head = this.#readHead();
    if (head === null) this.openIfThere();
    const knownFolders = head?.knownFolders ?? this.#local?.state.knownFolders;
    if (knownFolders === undefined) return [];
    const digests: string[] = [];
    for (const [remote, { digest, files }] of knownFolders) {
      const local = this.#localFolder(remote);
      if (local === null || digests.length >= MAX_KNOWN_FOLDERS) continue;
      this.#known.set(remote, { local, files });
      digests.push(digest);
    }
    return digests;
  }

  /**
   * Sets the state's folder digests from its entries as they are now, for the next run's listing: those of
   * the folders with the most files, at most MAX_KNOWN_FOLDERS, each of at most MAX_KNOWN_FOLDER_FILES.
   */
  async digestFolders(state: MirrorState): Promise<void> {
    const folders = [...state.knownFiles()].filter(([, files]) => files.length <= MAX_KNOWN_FOLDER_FILES)
      .sort((a, b) => b[1].length - a[1].length).slice(0, MAX_KNOWN_FOLDERS);
    if (folders.length > 0) await loadHashing();
    const known = new Map<string, KnownFolder>();
    for (const [folder, files] of folders) {
      const remote = this.#remotePath(folder);
      // The state keeps the order of the listing it was recorded from: sorted already, but for the files
      // added since. Paths of one folder sort as their names do.
      if (!inUtf8Order(files, (path) => path)) files.sort(compareUtf8);
      const digest = new FolderDigest(remote), cut = folder === "" ? 0 : folder.length + 1;
      for (const path of files) digest.add(path.slice(cut), state.recordedEtag(path) ?? "");
      known.set(remote, { digest: digest.digest(), files: files.length });
    }
    state.setKnownFolders(known);
  }

  /**
   * The state's first lines, read alone so that the listing is asked for before the entries are read:
   * those take the time the server needs to send its first batch (a state of 100,000 files, some 0.1 s).
   * Null when LOCAL_DIR is missing, or its state has no head to read alone (see `readStateHead`).
   */
  #readHead(): ReturnType<typeof readStateHead> {
    if (this.#opened || this.release !== null || this.options.checksum) return null;
    let tree;
    try {
      tree = LocalTree.find(this.localDir);
    } catch {
      return null; // open() says why
    }
    if (tree === null) return null;
    const file = StateFile.open(tree.root);
    const head = file === null ? null : readStateHead(file);
    this.#found = { tree, file, since: head?.since };
    return head;
  }

  /** The `walkedAt` of the listing the state was made from, for the listing's `knownSince`. */
  get knownSince(): string | undefined {
    return this.#local?.state.since ?? this.#found?.since;
  }

  /** Forgets the folders named in `known`, before the listing is asked for again without it. */
  forgetKnown(): void {
    this.#known.clear();
  }

  /** LOCAL_DIR, for the steps that a dry run does not take (or takes only once it is open). */
  get local(): Local {
    return this.open()!;
  }

  /**
   * The folder below LOCAL_DIR of the folder `remote` on the server (`""` for REMOTE_DIR itself, which
   * `localRelative`, made for files, refuses); null for one outside REMOTE_DIR.
   */
  #localFolder(remote: string): string | null {
    return remote === this.remoteDir ? "" : localRelative(remote, this.remoteDir);
  }

  /** The path on the server of `rel` (a path below LOCAL_DIR, `""` for LOCAL_DIR itself). */
  #remotePath(rel: string): string {
    return this.remoteDir === "" ? rel : rel === "" ? this.remoteDir : `${this.remoteDir}/${rel}`;
  }

  /** Where reports say a file is: cheaper than a path join per file of a large tree. */
  shown(rel: string): string {
    return `${this.#shownDir}/${rel}`;
  }

  /** Counts and passes on a file's report; `expected`: the bytes the bar expected of it. */
  count(report: FileReport, expected = 0): void {
    const { status } = report;
    if (status === "failed") {
      this.summary.failed++;
      this.#codes.push(report.error!.exitCode);
      const errno = this.#refused === null ? fileSystemRefusal(report.error) : null;
      if (errno !== null) this.#stopWriting(errno);
    } else if (status === "would update") this.summary.updated++;
    else if (status === "would delete") this.summary.deleted++;
    else this.summary[status]++;
    this.summary.bytes += report.bytes;
    if (status !== "deleted" && status !== "would delete") this.progress.fileDone(expected, report.bytes);
    this.onFile(report);
  }

  /**
   * Stops fetching once LOCAL_DIR's file system refused a write with `errno` (full, over quota,
   * read-only): every later file would fail the same way, each after its transfer, on every run of every
   * host until someone makes room. With --delete on a LOCAL_DIR that held files, the listing is still read
   * to its end (its content not written), so that --delete removes what the server no longer has, which
   * may be what makes room for the next run; otherwise the run ends at once.
   */
  #stopWriting(errno: string): void {
    const why = errno === "EROFS"
      ? "its file system is read-only"
      : errno === "EDQUOT"
      ? "the disk quota is exceeded"
      : "its file system is full";
    this.#refused = new ClientError(
      ExitCode.LocalIo,
      `stopped fetching: ${this.#shownDir}: ${why} (${errno})`,
    );
    if (!this.#deletesAfterRefusal) this.options.deadline.stop(this.#refused);
  }

  /** True once nothing more is to be fetched or written (see {@link #stopWriting}). */
  readonly #halted = (): boolean => this.#refused !== null;

  /** Counts `item` failed with `error`; `notAttempted`: given up on before it was asked for. */
  #failed(
    item: { entry: ListEntry; rel: string },
    error: ClientError,
    expected = 0,
    notAttempted = false,
  ): void {
    this.count({
      path: item.entry.path,
      target: this.shown(item.rel),
      status: "failed",
      bytes: 0,
      seconds: 0,
      attempts: 0,
      error,
      ...(notAttempted ? { notAttempted } : {}),
    }, expected);
  }

  /** Reports that a dry run would fetch `entry`. */
  #wouldUpdate(entry: ListEntry, rel: string): void {
    this.count({
      path: entry.path,
      target: this.shown(rel),
      status: "would update",
      bytes: 0,
      size: entry.size,
      seconds: 0,
      attempts: 0,
    });
  }

  /**
   * Records a file now current in the state: by `local`, the lstat taken before, when the file was left as
   * it was; else by the lstat of what stands at its name now (it was just published).
   */
  #remember(item: Item, sha256: string | undefined, etag: string, local?: StatIdentity): void {
    const { state } = this.local;
    if (sha256 === undefined) return state.delete(item.rel);
    // The listing's own strings where they say the same: one copy per file of a large tree, not two.
    const { entry } = item;
    if (etag === entry.etag) etag = entry.etag;
    if (sha256 === entry.sha256) sha256 = entry.sha256;
    try {
      const now = local ?? identityAt(item.folder.dir.fd, item.name);
      if (now !== null && now.isFile) state.set(item.rel, { key: now.key, sha256, etag });
      else state.delete(item.rel);
    } catch {
      state.delete(item.rel);
    }
  }

  /** What the manifest says of a file (its entry carries the manifest's size and hash once checked). */
  #signed(entry: ListEntry): { size: number; sha256: string } | undefined {
    return this.release === null ? undefined : { size: entry.size, sha256: entry.sha256! };
  }

  /**
   * Sends `item` the way its need says; `inlined`, the content the listing brought of it, spares a file
   * that is missing or changed its request.
   */
  #route(item: Item, inlined?: Uint8Array): void {
    const need = item.need;
    if (need.kind === "current") {
      this.#countCurrent(item.rel, item.entry.size, need.sha256, item.entry.path);
      if (!need.recorded) this.#remember(item, need.sha256, item.entry.etag ?? "", item.local);
    } else if (need.kind === "hash") this.#toHash.push(item);
    else if (need.kind === "folder in the way") {
      if (!this.dryRun) {
        this.progress.expect(item.entry.size);
        this.#folderInTheWay.push(item);
      } else if (this.options.delete) this.#wouldUpdate(item.entry, item.rel);
      else this.#failed(item, folderInTheWay(this.shown(item.rel), "left as it is (--delete replaces it)"));
    } else if (need.kind === "drop parts") {
      // A dry run removes nothing: it says the file would be fetched.
      if (this.dryRun) this.#wouldUpdate(item.entry, item.rel);
      else this.#partsToDrop.push(item);
    } else {
      this.progress.expect(item.entry.size);
      // Content that came with the listing replaces a `get` of the whole file, if the file needs one.
      const version = inlined !== undefined && (need === FETCH || need.kind === "fast") && !item.signed
        ? inlineVersionOf(item.entry)
        : null;
      if (version !== null && version.size === inlined!.byteLength) {
        this.#inlined.push({ item, version, bytes: inlined! });
      } else if (need.kind === "fast") {
        this.#fast.add(item);
        this.#askWholeSignature(item);
      } else {
        this.#oneByOne.push(item);
        this.#askSignatureAhead(item);
      }
    }
  }

  /**
   * Asks for the signature of a large file step 4 will patch by delta (a local copy and a version both
   * large enough: worthDelta) on a second connection, as soon as the run knows of it, while the listing
   * still comes: the server computes it meanwhile, and it is in hand when the file's turn comes.
   */
  #askSignatureAhead(item: Item): void {
    // No delta without the SHA-256 check; a dry run fetches nothing.
    if (!this.options.verify || this.dryRun) return;
    if (item.local === undefined || !worthDelta(item.local.size, item.entry.size)) return;
    this.#prefetch ??= new SignaturePrefetch(this.session.sibling());
    this.#prefetch.add({
      path: item.entry.path,
      // What fetchFile offers as ifNoneMatch: never with a manifest; else what the state vouches for.
      localSha256: this.release === null ? item.localSha256 : undefined,
      etag: item.entry.etag,
    });
  }

  /**
   * Asks for the signature of a large file fetched whole (`whole_signatures.ts`), kept for its first delta.
   */
  #askWholeSignature(item: Item): void {
    if (!this.options.verify || this.dryRun || item.entry.size < DELTA_MIN_BYTES) return;
    const store = this.#signatures();
    if (store === null) return;
    this.#wholeSignatures ??= new WholeFileSignatures(this.session.sibling(), store);
    this.#wholeSignatures.want({ rel: item.rel, path: item.entry.path, etag: item.entry.etag });
  }

  /**
   * Step 1, for each batch of entries as the listing streams in: what each needs, from lstat and the
   * state. The batch's lstats are made in one loop, then its decisions in another: taking turns file by
   * file, a run with nothing changed over 100,000 files took about a seventh more time. The lstats took
   * about as long either way; the rest of the work took less once it ran in a loop of its own.
   */
  planBatch(values: readonly unknown[], inlined: Uint8Array | null = null): void {
    const items: Item[] = [], plain: (Need | null)[] = [], contents: (Uint8Array | undefined)[] = [];
    let at = 0;
    for (const value of values) {
      // Each inlined entry's content follows the one before it, whatever becomes of the entry here.
      let content: Uint8Array | undefined;
      if (inlined !== null && isInlined(value)) {
        content = inlined.subarray(at, at += value.size);
      }
      if (isEmptyFolder(value)) {
        this.#planEmptyFolder(value.emptyFolder);
        continue;
      }
      if (isFolderRecord(value)) {
        const from = items.length;
        if ("digest" in value) this.#planPartial(value as PartialRecord, items);
        else this.#planRecord(value, items);
        for (let i = from; i < items.length; i++) {
          plain.push(needBeforeLstat(items[i], false));
          contents.push(undefined);
        }
        continue;
      }
      const item = this.#itemOf(value);
      if (item === null) continue;
      items.push(item);
      plain.push(needBeforeLstat(item, false));
      contents.push(this.inline ? content : undefined);
    }
    if (items.length === 0) return;
    // Each item's lstat (or why it failed), at its own place; none where its need is plain already.
    const lstats: (StatIdentity | null | LocalIoError)[] = new Array(items.length).fill(null);
    for (let i = 0; i < items.length; i++) {
      if (plain[i] !== null) continue;
      try {
        lstats[i] = lstatOf(items[i]);
      } catch (e) {
        if (!(e instanceof LocalIoError)) throw e;
        lstats[i] = e;
      }
    }
    const { state } = this.local;
    for (let i = 0; i < items.length; i++) {
      const item = items[i], local = lstats[i];
      try {
        if (local instanceof LocalIoError) throw local;
        item.need = plain[i] ?? needByLstat(item, state, local);
        this.#route(item, contents[i]);
      } catch (e) {
        this.#failed(item, classify(e));
      }
    }
  }

  /**
   * The item for a listing's entry, its need not decided yet; null when the entry is done with here
   * (unusable, listed again, failed, or a dry run's file with no folder).
   */
  #itemOf(value: unknown): Item | null {
    const entry = checkEntry(value);
    const rel = entry === null ? null : localRelative(entry.path, this.remoteDir);
    const path = entry?.path ?? JSON.stringify(value);
    if (rel === null || rel === STATE_DIR || rel.startsWith(`${STATE_DIR}/`)) {
      this.progress.listed();
      this.#unusable(
        path,
        rel === null
          ? `the listing has an entry that does not belong below REMOTE_DIR: ${path}`
          : `${path} would go in LOCAL_DIR's ${STATE_DIR}/, which holds the mirror's own state`,
      );
      return null;
    }
    return this.#itemFor(entry!, rel);
  }

  /** Makes the empty folder `path` the listing names (and the folders above it), and keeps it from --delete. */
  #planEmptyFolder(path: string): void {
    const rel = localRelative(path, this.remoteDir);
    if (rel === null || rel === "" || rel === STATE_DIR || rel.startsWith(`${STATE_DIR}/`)) {
      return this.#unusable(
        path,
        `the listing names a folder that does not belong below REMOTE_DIR: ${path}`,
      );
    }
    this.keepFolders.add(rel);
    if (this.dryRun) return;
    const local = this.open(); // LOCAL_DIR that cannot be made fails the run, not each folder
    if (local === null) return;
    try {
      local.folders.makeFolder(rel);
    } catch (e) {
      this.summary.problems.push(classify(e));
    }
  }

  /** Counts an entry of the listing this client cannot use: the listing is then not the whole tree. */
  #unusable(path: string, why: string): void {
    this.unusable++;
    this.count({
      path,
      target: "",
      status: "failed",
      bytes: 0,
      seconds: 0,
      attempts: 0,
      error: protocolError(why),
    });
  }

  /**
   * Plans the files of a folder the listing sent as a FolderRecord (`known`), from the state's entries for
   * them ({@link #planHeld}). A record of a folder the run did not name, or of another number of files, is
   * unusable.
   */
  #planRecord(record: FolderRecord, items: Item[]): void {
    const known = this.#known.get(record.folder);
    if (known === undefined || known.files !== record.files) {
      this.progress.listed();
      this.#unusable(
        record.folder,
        `the listing has a record of a folder whose files this run did not say it holds: ${
          JSON.stringify(record)
        }`,
      );
      return;
    }
    const paths = this.local.state.filesAsRead(known.local);
    if (paths?.length !== record.files) {
      // The state's digest line does not agree with its entries (damaged): its files are asked for again.
      this.relist = true;
      return;
    }
    const { state } = this.local, folder = known.local;
    this.#planHeld(paths, items, (at, local) => state.vouchesForFileAsRead(folder, at, local));
  }

  /**
   * Plans the files of a folder the listing sent as a PartialRecord (`knownSince`): those it names as
   * changed have their entries after it; the others are planned from the state's entries, as for a
   * FolderRecord, once the state's names and etags for the folder, with the changed ones in place, make
   * the record's count and digest. If they do not (the state was not made from the listing of
   * `knownSince`, or is damaged), the listing is asked for again whole; a malformed record is unusable.
   */
  #planPartial(record: PartialRecord, items: Item[]): void {
    const local = this.#localFolder(record.folder);
    if (local === null || !isPartialRecord(record)) {
      this.progress.listed();
      this.#unusable(record.folder, `the listing has a malformed partial record: ${JSON.stringify(record)}`);
      return;
    }
    const held = this.#heldAsListed(record, local);
    if (held === null) {
      this.relist = true;
      return;
    }
    this.#askChangedAhead(record, local);
    const { state } = this.local;
    this.#planHeld(held, items, (at, identity) => state.vouchesFor(held[at], identity));
  }

  /**
   * Asks ahead for the signatures of the files a partial record names as changed whose copies here were
   * large enough for a delta, as the state recorded them: the record comes when the server's walk enters
   * the folder, their entries only once it has gone through the folder's subfolders. The question is the
   * one a copy of the same size would ask (`ifNoneMatch`, the recorded SHA-256); a copy of another size
   * takes any answer but "unchanged" (`delta_fetch.ts`).
   */
  #askChangedAhead(record: PartialRecord, local: string): void {
    if (!this.options.verify || this.dryRun) return;
    const prefix = local === "" ? "" : `${local}/`;
    for (const [name, etag] of record.changed) {
      const recorded = this.local.state.recordedFields(prefix + name);
      if (recorded === undefined || recorded.size < DELTA_MIN_BYTES) continue;
      this.#prefetch ??= new SignaturePrefetch(this.session.sibling());
      this.#prefetch.add({ path: this.#remotePath(prefix + name), localSha256: recorded.sha256, etag });
    }
  }

  /**
   * The paths below LOCAL_DIR of the files of `record`'s folder (at `local`) that did not change, if the
   * state holds the folder as `record` says; null if not.
   */
  #heldAsListed(record: PartialRecord, local: string): string[] | null {
    const { state } = this.local;
    const prefix = local === "" ? "" : `${local}/`;
    const etags = new Map<string, string>();
    for (const path of state.filesAsRead(local) ?? []) {
      const etag = state.recordedEtag(path);
      if (etag === undefined) return null;
      etags.set(path.slice(prefix.length), etag);
    }
    const changed = new Set<string>();
    for (const [name, etag] of record.changed) {
      etags.set(name, etag);
      changed.add(name);
    }
    let names = record.names;
    if (names === undefined) {
      // The state keeps the order of the listing it was recorded from: sorted already, but for files added.
      names = [...etags.keys()];
      if (!inUtf8Order(names, (name) => name)) names.sort(compareUtf8);
    }
    if (names.length !== record.files) return null;
    const digest = new FolderDigest(record.folder);
    for (const name of names) {
      const etag = etags.get(name);
      if (etag === undefined) return null;
      digest.add(name, etag);
    }
    if (digest.digest() !== record.digest) return null;
    return names.filter((name) => !changed.has(name)).map((name) => prefix + name);
  }

  /**
   * Plans files the server holds as the state records them (a folder record's), from the state's entries:
   * a file whose lstat the state still vouches for is current there and then, as its entry would have
   * made it, without an item; the others get the items their entries would have made, for
   * {@link planBatch} to go on with. `vouches`: the state's `vouchesFor` of the file `paths[at]`.
   */
  #planHeld(
    paths: readonly string[],
    items: Item[],
    vouches: (at: number, local: StatIdentity) => boolean,
  ): void {
    if (paths.length === 0) return;
    const folderRel = parentPath(paths[0]);
    if (this.#keptWhole.has(folderRel)) return; // planned already (a listing asked for again after a cut)
    const { state } = this.local;
    // The entry the listing would have had, from the state's line; none from a damaged one.
    const entryOf = (path: string): ListEntry | undefined => {
      const fields = state.recordedFields(path);
      return fields && { path: this.#remotePath(path), ...fields };
    };
    const folder = this.#judgedByLstat(paths[0]);
    // Paths that are the folder's files as recorded (the same list) are all the files it holds.
    let whole = folder !== null && folder.recorded && folder.paths === paths;
    // The folder's lstats in one loop, then the decisions in another, as planBatch makes them.
    const names = paths.map((path) => path.slice(path.lastIndexOf("/") + 1));
    const locals: (StatIdentity | null)[] = new Array(paths.length).fill(null);
    if (folder !== null) {
      for (let i = 0; i < paths.length; i++) {
        if (folder.recorded || folder.names.has(names[i])) locals[i] = lstatIn(folder, names[i]);
      }
    }
    if (whole && !this.#reportsUnchanged && this.#allVouchedFor(paths, locals, vouches)) {
      for (let i = 0; i < paths.length; i++) {
        this.progress.listed();
        this.#countUnreported();
      }
      this.#keptWhole.add(folderRel);
      return;
    }
    for (let i = 0; i < paths.length; i++) {
      const path = paths[i], name = names[i];
      if (folder === null || (!folder.recorded && !folder.names.has(name))) {
        const entry = entryOf(path);
        const item = entry === undefined ? null : this.#itemFor(entry, path);
        if (item !== null) items.push(item);
        if (entry === undefined) this.relist = true;
        continue;
      }
      if (!this.#keepOnce(path)) continue;
      const local = locals[i];
      const isFile = local !== null && local.isFile;
      if (isFile && !this.#reportsUnchanged && vouches(i, local)) {
        this.progress.listed();
        this.#countUnreported();
        continue;
      }
      const recorded = isFile ? state.trusted(path, local) : undefined;
      if (recorded === undefined) {
        const entry = entryOf(path);
        if (entry === undefined) {
          // Asked for again, with the others: the listing that comes then plans it.
          this.keep.delete(path);
          whole = false;
          this.relist = true;
        } else {
          this.progress.listed();
          items.push(new Item(entry, path, folder));
        }
        continue;
      }
      this.progress.listed();
      // The state's line stays as it is. Its size is its key's.
      this.#countCurrent(path, sizeOf(recorded.key), recorded.sha256);
    }
    if (whole) this.#keptWhole.add(folderRel);
  }

  /**
   * True if the state vouches for every file of `paths` by its lstat in `locals` (`vouches`, as
   * {@link #planHeld} has it), and none of them was planned before (a listing asked for again after a cut
   * plans a folder's files one by one).
   */
  #allVouchedFor(
    paths: readonly string[],
    locals: readonly (StatIdentity | null)[],
    vouches: (at: number, local: StatIdentity) => boolean,
  ): boolean {
    for (let i = 0; i < paths.length; i++) {
      const local = locals[i];
      if (local === null || !local.isFile || !vouches(i, local)) return false;
      if (this.keep.size > 0 && this.keep.has(paths[i])) return false;
    }
    return true;
  }

  /**
   * A test of whether a path below LOCAL_DIR is kept: in {@link keep}, or a file of a folder in
   * {@link #keptWhole}. For paths in the state's order, where a folder's files follow one another: the
   * folder of the last path is remembered, not cut out of each.
   */
  #keptTest(): (rel: string) => boolean {
    let folder: string | null = null, whole = false;
    return (rel) => {
      if (this.#keptWhole.size > 0) {
        const slash = rel.lastIndexOf("/");
        if (folder === null || slash !== folder.length || !rel.startsWith(folder)) {
          folder = slash < 0 ? "" : rel.slice(0, slash);
          whole = this.#keptWhole.has(folder);
        }
        if (whole) return true;
      }
      return this.keep.has(rel);
    };
  }

  /**
   * Reports the file `rel` here (`path` on the server, by default where `rel` comes from) current: `size`
   * bytes, SHA-256 `sha256`.
   */
  #countCurrent(rel: string, size: number, sha256: string, path?: string): void {
    if (!this.#reportsUnchanged) return this.#countUnreported();
    this.count({
      path: path ?? this.#remotePath(rel),
      target: this.shown(rel),
      status: "unchanged",
      bytes: 0,
      size,
      sha256,
      seconds: 0,
      attempts: 0,
    });
  }

  /** False when nobody reads the reports of current files (`MirrorOptions.reportsUnchanged`). */
  get #reportsUnchanged(): boolean {
    return this.options.reportsUnchanged !== false;
  }

  /** Counts a current file as count() counts it, without the report (and the two paths it names) that nobody reads. */
  #countUnreported(): void {
    this.summary.unchanged++;
    this.progress.fileDone(0, 0);
  }

  /**
   * Adds `rel` to the files the server has; false if it was there already (sent again by a listing asked
   * for again after a cut). One look-up in a set of the whole tree, not a has() and an add().
   */
  #keepOnce(rel: string): boolean {
    if (this.#keptWhole.size > 0 && this.#keptWhole.has(parentPath(rel))) return false; // kept with its folder
    const kept = this.keep.size;
    this.keep.add(rel);
    return this.keep.size !== kept;
  }

  /**
   * The folder of the file `rel`, open, if each of its files can be judged by its lstat and the state
   * alone (no part beside any; not a dry run, which only looks); null if not, or if it cannot be had (each
   * file's item then says why).
   */
  #judgedByLstat(rel: string): Folder | null {
    if (this.dryRun) return null;
    try {
      const folder = this.local.folders.folderOf(rel);
      return folder.parts.size === 0 ? folder : null;
    } catch {
      return null;
    }
  }

  /** The item for the listed file `entry`, to go to `rel` below LOCAL_DIR (see {@link #itemOf}). */
  #itemFor(entry: ListEntry, rel: string): Item | null {
    this.progress.listed();
    if (!this.#keepOnce(rel)) return null;
    const local = this.open(); // LOCAL_DIR that cannot be made fails the run, not each file
    try {
      // No symlink below LOCAL_DIR is followed; one where a directory belongs is replaced by it, which a
      // dry run only looks for: what has no folder yet would be fetched.
      const folder = local === null
        ? null
        : this.dryRun
        ? local.folders.lookUp(rel)
        : local.folders.folderOf(rel);
      if (folder === null) {
        this.#wouldUpdate(entry, rel);
        return null;
      }
      const item = new Item(entry, rel, folder);
      item.signed = this.release !== null;
      return item;
    } catch (e) {
      this.#failed({ entry, rel }, classify(e));
      return null;
    }
  }

  /**
   * Step 2, first: removes the parts beside small files (but one another run holds) and plans those files
   * anew, so that they are fetched with the others.
   */
  async dropParts(): Promise<void> {
    for (const item of this.#partsToDrop) {
      try {
        await removeStaleParts({ dir: item.folder.dir, name: item.name, followLink: false });
        item.need = needOf(item, this.local.state, true);
        this.#route(item);
      } catch (e) {
        this.#failed(item, classify(e));
      }
    }
  }

  /** Step 2: hashes the local copies the state could not vouch for, and routes them. */
  async hash(): Promise<void> {
    if (this.#toHash.length + this.#fast.waiting + this.#oneByOne.length === 0) return;
    await loadHashing();
    for (const item of this.#toHash) {
      try {
        item.need = needBySha(item.entry, hashLocal(item.folder.dir, item.name));
        this.#route(item);
      } catch (e) {
        this.#failed(item, classify(e));
      }
    }
  }

  /**
   * Step 3 of a dry run, instead of the fetch: reports each file it would fetch. A local copy whose hash
   * the listing had none to compare with is compared with the server's by a `stat` (which sends no data).
   */
  async reportWouldFetch(): Promise<void> {
    const toFetch: Item[] = [];
    while (this.#fast.waiting > 0) toFetch.push(this.#fast.take());
    for (const item of [...toFetch, ...this.#oneByOne]) {
      const localSha256 = item.localSha256;
      // With a manifest, the server's hash says nothing: a copy unlike the manifest's would be fetched.
      if (localSha256 === undefined || this.release !== null) {
        this.#wouldUpdate(item.entry, item.rel);
        continue;
      }
      try {
        const request = { v: PROTOCOL_VERSION, op: "stat", path: item.entry.path } as const;
        const header = await this.session.request(request, JSON.stringify(item.entry.path));
        if (header.sha256 === localSha256) {
          item.need = { kind: "current", sha256: localSha256 };
          this.#route(item);
        } else this.#wouldUpdate(item.entry, item.rel);
      } catch (e) {
        this.#failed(item, classify(e));
      }
    }
  }

  /** Step 3: the pipelined fetch (it takes each file as its request goes out); what it hands back goes one by one. */
  async fetchFast(): Promise<void> {
    if (this.#fast.waiting === 0) return; // nothing to fetch: nor node:crypto to load (tens of ms)
    const { verify, deadline } = this.options;
    const onBytes = (n: number) => this.progress.received(n);
    await fetchTree(
      this.session,
      this.#fast,
      { verify, deadline, halted: this.#halted, root: this.local.tree.root, onBytes },
      this.#treeOutcome,
    );
  }

  /** Step 1 too, after each batch is planned: writes and publishes the files whose content it brought. */
  async writeInlined(): Promise<void> {
    if (this.#inlined.length === 0) return;
    const { verify, deadline } = this.options;
    const onBytes = (n: number) => this.progress.received(n);
    this.#publisher ??= new InlinePublisher<Item>(
      { verify, deadline, halted: this.#halted, root: this.local.tree.root, onBytes },
      this.#treeOutcome,
    );
    for (const { item, version, bytes } of this.#inlined.splice(0)) {
      await this.#publisher.write(item, version, bytes);
    }
  }

  /** Publishes what {@link writeInlined} wrote: once the listing is done, and when the run ends. */
  async endInlined(): Promise<void> {
    this.#inlined.length = 0;
    await this.#publisher?.drain();
  }

  /** What became of a file of the pipelined fetch, or of one the listing brought. */
  readonly #treeOutcome = (item: Item, outcome: TreeOutcome): void => {
    if (outcome.status === "handed back") {
      this.progress.expect(outcome.bytes); // received, but for no file: the next try brings it whole
      return void this.#oneByOne.push(item);
    }
    const report: FileReport = {
      path: item.entry.path,
      target: this.shown(item.rel),
      status: outcome.status,
      bytes: outcome.bytes,
      seconds: outcome.seconds,
      attempts: 1,
    };
    if (outcome.status === "failed") {
      report.error = outcome.error;
      report.requestId = outcome.error.requestId;
      this.local.state.delete(item.rel);
    } else {
      report.size = outcome.size;
      report.requestId = outcome.requestId;
      if (outcome.sha256 !== undefined && this.options.verify) report.sha256 = outcome.sha256;
      this.#remember(item, outcome.sha256, outcome.etag ?? "");
    }
    this.count(report, item.entry.size);
  };

  /** Stops asking for signatures ahead, and closes their connection. */
  async endPrefetch(): Promise<void> {
    await this.#prefetch?.close();
    this.#prefetch = null;
  }

  /** Keeps the signatures of the files fetched whole once they came (`wait`), and closes their connection. */
  async endWholeSignatures(wait: boolean): Promise<void> {
    await this.#wholeSignatures?.close(wait);
    this.#wholeSignatures = null;
  }

  /** Step 4: files with a part to resume, large changed files (delta), and what the fast path handed back. */
  async fetchOneByOne(items: readonly Item[] = this.#oneByOne): Promise<void> {
    let stop: ClientError | null = null;
    let publishing: Promise<void> = Promise.resolve();
    // In the order their signatures were asked for ahead (after those asked for none): the prefetch gives
    // up a signature the run went past.
    const prefetch = this.#prefetch;
    const order = (item: Item) => prefetch?.orderOf(item.entry.path) ?? -1;
    for (const item of items.toSorted((a, b) => order(a) - order(b))) {
      if (stop === null && this.options.deadline.expired) stop = this.options.deadline.error();
      stop ??= this.#refused;
      if (stop !== null) {
        // The server is unreachable or overloaded, the deadline passed, or nothing more can be written here:
        // asking for more files would only fail the same way for each; they are reported as not attempted.
        this.#notAttempted ??= { files: 0, why: stop };
        this.#notAttempted.files++;
        this.#failed(
          item,
          new ClientError(stop.exitCode, `not attempted: ${stop.message}`),
          item.entry.size,
          true,
        );
        continue;
      }
      const place: Place = { dir: item.folder.dir, name: item.name, followLink: false };
      const vouched = item.need.kind === "one by one" ? item.need.vouched : undefined;
      const store = await this.#signatures();
      let checked!: () => void;
      const sessionFree = new Promise<void>((resolve) => checked = resolve);
      const fetched = fetchFile(this.session, item.entry.path, place, {
        ...this.options,
        listed: item.entry,
        progress: this.#bytes,
        expected: this.#signed(item.entry),
        localSha256: item.localSha256,
        early: this.#prefetch?.take(item.entry.path),
        oldSignature: vouched === undefined || item.local === undefined
          ? undefined
          : store?.load(item.rel, vouched, item.local.size) ?? undefined,
        onSignature: (signature, sha256) => store?.save(item.rel, sha256, signature),
        onChecked: checked,
      }).then((report) => {
        this.count(report, item.entry.size);
        if (report.status === "failed") this.local.state.delete(item.rel);
        else {
          // The version the server's answer named; from one that names none, the listed one when their
          // hashes agree; else the next run asks the server.
          const listed = report.sha256 === item.entry.sha256 ? item.entry.etag ?? "" : "";
          this.#remember(item, report.sha256, report.etag ?? listed);
        }
        const code = report.error?.exitCode;
        if (this.options.deadline.expired || code === ExitCode.Connect || code === ExitCode.Busy) {
          stop = report.error!;
        }
      });
      // The next file's requests go out while this one is made durable and renamed (its fsync waits on
      // the disk, not on the network); at most one file is published behind the one being fetched.
      await Promise.race([sessionFree, fetched]);
      await publishing;
      publishing = fetched;
    }
    await publishing;
  }

  /**
   * Step 5: --delete, only on a whole listing (else the run is partial), and the state, if it changed (a
   * dry run writes none).
   */
  async finish(listing: Listing): Promise<void> {
    // Deleting on a listing that is not the whole tree would delete what the server still has, on every host.
    const whole = !(listing.truncated || listing.leftOut.count > 0 || this.unusable > 0);
    if (!whole) {
      this.summary.problems.push(incompleteListing(listing, this.unusable, this.options.delete));
    } else if (this.#local !== null) {
      const own = this.#ownReleaseFiles();
      for (const name of own) this.keep.add(name);
      this.#local.state.retain(this.#keptTest(), (folder) => this.#keptWhole.has(folder));
      if (this.options.delete && !this.options.deadline.expired) {
        this.progress.phase("deleting");
        const large: string[] = []; // files that may have a signature kept
        try {
          await deleteExtraneous(
            this.remoteDir,
            this.#local.tree,
            this.keep,
            (report, rel, size) => {
              this.count(report);
              if (size !== undefined && size >= DELTA_MIN_BYTES) large.push(rel);
            },
            {
              dryRun: this.dryRun,
              cache: this.#local.folders,
              keepFolders: this.keepFolders,
              keptWhole: this.#keptWhole,
            },
          );
        } catch (e) {
          this.summary.problems.push(classify(e));
        }
        if (large.length > 0) {
          const store = await this.#signatures();
          for (const rel of large) store?.forget(rel);
        }
      }
    }
    await this.#replaceFolders(whole);
    if (this.#notAttempted !== null) {
      const { files, why } = this.#notAttempted;
      const what = files === 1 ? "1 file" : `${files} files`;
      this.summary.problems.push(new ClientError(why.exitCode, `${what} not attempted: ${why.message}`));
    } else if (this.#refused !== null) this.summary.problems.push(this.#refused);
    this.summary.exitCode = worstExitCode([...this.#codes, ...this.summary.problems.map((p) => p.exitCode)]);
    if (this.dryRun || this.#local === null) return;
    if (
      this.release !== null && this.summary.exitCode === ExitCode.Ok && this.#ownReleaseFiles().length > 0
    ) {
      // LOCAL_DIR is then a signed tree too, that `minisign -V` checks and another server can serve.
      try {
        writeReleaseFiles(this.#local.tree.root, this.release);
      } catch (e) {
        this.summary.problems.push(classify(e));
        this.summary.exitCode = worstExitCode([this.summary.exitCode, ExitCode.LocalIo]);
      }
    }
    const { tree, state, folders } = this.#local;
    state.since = listing.walkedAt; // saved with the state, if it is saved
    try {
      // Digests of the entries the state is written with; a state of an older client gets them once. Made
      // first: recording the folders waits for the files published last to be old enough.
      if (state.changed || !state.digested) await this.digestFolders(state);
      await folders.record(); // after the run's last change below LOCAL_DIR
      if (state.changed) {
        await state.settle();
        saveState(tree.root, state);
      }
    } catch (e) {
      // The tree is as it should be; only the next run's shortcut is lost, which costs it some hashing.
      this.options.onNotice?.(`${(e as Error).message} (the next run hashes what it cannot trust)`);
    }
  }

  /**
   * Fetches the files the server has where LOCAL_DIR held a folder, now that --delete has removed it; a
   * folder still there is left as it is, and its file fails. `whole`: the listing was the whole tree.
   */
  async #replaceFolders(whole: boolean): Promise<void> {
    const fetchable: Item[] = [];
    for (const item of this.#folderInTheWay) {
      if (!isFolderAt(item)) {
        fetchable.push(item);
        continue;
      }
      const why = !this.options.delete
        ? "left as it is (--delete replaces it)"
        : !whole || this.options.deadline.expired
        ? "left as it is (--delete removed nothing: see above)"
        : "it still holds what --delete does not remove (a symlink, a special file, or another run's part)";
      this.#failed(item, folderInTheWay(this.shown(item.rel), why), item.entry.size);
    }
    if (fetchable.length > 0) await this.fetchOneByOne(fetchable);
  }

  /** The manifest and signature as LOCAL_DIR holds them, when the manifest signs REMOTE_DIR itself. */
  #ownReleaseFiles(): string[] {
    if (this.release === null || this.release.base !== this.remoteDir) return [];
    const name = basename(this.release.path);
    return [name, `${name}.minisig`];
  }

  /** Closes LOCAL_DIR, its folders and its state. */
  close(): void {
    this.#found?.file?.close();
    this.#found?.tree.close();
    this.#local?.state.close();
    this.#local?.folders.close();
    this.#local?.tree.close();
  }
}

/**
 * Mirrors `remoteDir` (a path on the server, `""` for the root) into `localDir`. Each file's outcome goes
 * to `onFile` as it happens, and is counted in `summary` (the caller's, to read even when the run throws).
 * Throws a ClientError only when nothing could be done (no listing, LOCAL_DIR cannot be created); failures
 * of single files are counted in the summary.
 */
export async function mirror(
  session: Session,
  remoteDir: string,
  localDir: string,
  options: MirrorOptions,
  onFile: (report: FileReport) => void,
  summary: MirrorSummary = emptySummary(),
): Promise<MirrorSummary> {
  const startsEmpty = holdsNothing(localDir);
  const inline = inlineAsked(session, options, startsEmpty, localDir);
  const run = new MirrorRun(
    session,
    remoteDir,
    localDir,
    options,
    onFile,
    summary,
    inline !== null,
    startsEmpty,
  );
  try {
    if (options.trust !== undefined) {
      run.release = await fetchRelease(session, remoteDir, options.trust, options);
    }
    run.progress.phase("listing");
    // A signed tree is checked against its manifest, entry by entry, before the state is even read.
    const known = run.release === null ? run.knownDigests() : [];
    // Folders changed since the state's listing then come as PartialRecords, checked by their digests.
    const knownSince = known.length === 0 ? undefined : run.knownSince;
    // Each batch is planned as it arrives, while the server walks on; with a manifest, only once the whole
    // listing agrees with it, so that a refused tree has nothing fetched, made or deleted for it.
    const held: unknown[] = [];
    const onEntries = async (batch: unknown[], inlined: Uint8Array | null) => {
      if (run.release === null) {
        // Checking a partial record takes a digest: node:crypto is loaded then, not for a run without one.
        if (batch.some((value) => isFolderRecord(value) && "digest" in value)) await loadHashing();
        run.planBatch(batch, inlined);
        return await run.writeInlined();
      }
      for (const value of batch) held.push(value);
    };
    let listing = await listRemote(
      session,
      remoteDir,
      options,
      inline,
      { digests: known, since: knownSince },
      onEntries,
      () => run.openIfThere(),
    );
    if (run.relist) {
      // Every file the first listing planned is known by its path, and is not planned again.
      run.forgetKnown();
      listing = await listRemote(session, remoteDir, options, inline, { digests: [] }, onEntries, () => {});
    }
    await run.endInlined();
    if (run.release !== null) {
      const checked = checkTreeAgainst(run.release, remoteDir, held);
      for (let at = 0; at < checked.length; at += PLAN_SLICE) {
        run.planBatch(checked.slice(at, at + PLAN_SLICE));
      }
    }
    run.open(); // an empty listing still makes LOCAL_DIR (a dry run only looks for it)
    run.progress.phase("hashing");
    await run.dropParts();
    await run.hash();
    if (run.dryRun) await run.reportWouldFetch();
    else {
      run.progress.phase("fetching");
      await run.fetchFast();
      await run.fetchOneByOne();
      await run.endPrefetch();
      await run.endWholeSignatures(true);
    }
    await run.finish(listing);
    return run.summary;
  } finally {
    await run.endPrefetch();
    await run.endWholeSignatures(false);
    await run.endInlined().catch(() => {}); // each file's outcome is reported already, failures too
    run.close();
  }
}

/**
 * Whether the listing is to bring the content of small files, and of which: all of them into a LOCAL_DIR
 * that is missing or empty (`startsEmpty`: a first copy has no local copy to compare), or those changed
 * since the state's `since` (new folders and rewritten files then cost no request each); null, none. Not
 * with a manifest (the listing is held until the manifest agrees with it, and so would the bytes be), nor
 * with --compress (inlined content is not compressed; each file's `get` decides on its own), nor in a dry
 * run.
 */
function inlineAsked(
  session: Session,
  options: MirrorOptions,
  startsEmpty: boolean,
  localDir: string,
): { since: string | undefined } | null {
  if (options.dryRun || options.trust !== undefined || session.compressesFiles) return null;
  if (startsEmpty) return { since: undefined };
  const since = stateSince(localDir);
  return since === undefined ? null : { since };
}

/** True when `localDir` is missing or empty: nothing there to compare with the server's files. */
function holdsNothing(localDir: string): boolean {
  try {
    for (const _ of Deno.readDirSync(localDir)) return false;
    return true;
  } catch (e) {
    return e instanceof Deno.errors.NotFound;
  }
}

/** True for a listing's entry of an empty folder (PROTOCOL.md, `list`, `folders`). */
function isEmptyFolder(value: unknown): value is { emptyFolder: string } {
  return typeof value === "object" && value !== null &&
    typeof (value as { emptyFolder?: unknown }).emptyFolder === "string";
}

/** True for a listing's FolderRecord (PROTOCOL.md, `list`, `known`). */
function isFolderRecord(value: unknown): value is FolderRecord {
  return typeof value === "object" && value !== null && typeof (value as FolderRecord).folder === "string" &&
    Number.isSafeInteger((value as FolderRecord).files);
}

/** The lstat of the file `name` of `folder`; null if there is none, or it fails (its item's lstat says why). */
function lstatIn(folder: Folder, name: string): StatIdentity | null {
  try {
    return identityAt(folder.dir.fd, name);
  } catch {
    return null;
  }
}

/** True when `items` are in a listing's order (`compareUtf8`) by the names `nameOf` gives them. */
function inUtf8Order<T>(items: readonly T[], nameOf: (item: T) => string): boolean {
  for (let at = 1; at < items.length; at++) {
    if (compareUtf8(nameOf(items[at - 1]), nameOf(items[at])) > 0) return false;
  }
  return true;
}

/** True for a well-formed PartialRecord (PROTOCOL.md, `list`, `knownSince`), its `folder` and `files` checked. */
function isPartialRecord(record: PartialRecord): boolean {
  const isName = (name: unknown) =>
    typeof name === "string" && name !== "" && name !== "." && name !== ".." && !name.includes("/");
  return typeof record.digest === "string" && FOLDER_DIGEST.test(record.digest) &&
    Array.isArray(record.changed) &&
    record.changed.every((pair) =>
      Array.isArray(pair) && pair.length === 2 && isName(pair[0]) && typeof pair[1] === "string"
    ) &&
    (record.names === undefined || (Array.isArray(record.names) && record.names.every(isName)));
}

/** True for a listing's entry whose content came with it (the session checked its size). */
function isInlined(value: unknown): value is ListEntry & { inline: true } {
  return typeof value === "object" && value !== null && (value as ListEntry).inline === true;
}
