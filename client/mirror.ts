/**
 * `client mirror`: makes a local directory a copy of a directory on the server. One recursive `list`, then
 * each new or changed file fetched with {@link fetchFile} (resume, verification, atomic publication,
 * only-if-changed), all over one persistent connection; with `--delete`, local regular files the server no
 * longer has are removed, and the directories that leaves empty, but only when the listing is the whole
 * tree: one that left anything out makes the run partial (exit 10) and deletes nothing.
 *
 * Below LOCAL_DIR no symlink is followed (`local_tree.ts`): every file is created, renamed and removed
 * relative to its directory's fd, and a symlink where the server has a directory is replaced by one.
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
import { fetchFile, type FetchOptions, type FileReport } from "./fetch_file.ts";
import { ErrorCode, isSha256Hex, type ListEntry, PROTOCOL_VERSION } from "../framing.ts";
import { type Folder, FolderCache, type LocalDir, LocalIoError, LocalTree } from "./local_tree.ts";
import type { Place } from "./publish.ts";
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
import { createSha256, loadHashing } from "../hashing.ts";
import { deleteExtraneous } from "./mirror_delete.ts";
import { loadState, type MirrorState, saveState, STATE_DIR } from "./mirror_state.ts";
import { fetchTree, type TreeFile } from "./tree_fetch.ts";
import { withRetries } from "./retry.ts";
import type { Listing, Session } from "./session.ts";

/** How to mirror. */
export interface MirrorOptions extends Omit<FetchOptions, "listed"> {
  /** Remove local files the server no longer has. */
  delete: boolean;
  /** Told of changes the run made that were not asked for (a symlink replaced by a directory). */
  onNotice?: (message: string) => void;
}

/** The counts of the summary line, and the run's exit code. */
export interface MirrorSummary {
  /** Files fetched. */
  updated: number;
  /** Files already current. */
  unchanged: number;
  /** Local files removed (--delete). */
  deleted: number;
  /** Files that could not be fetched or removed. */
  failed: number;
  /** Failures of the run as a whole (an incomplete listing), besides the files'. */
  problems: ClientError[];
  /** 0, or the most serious failure's exit code. */
  exitCode: number;
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
  const parts = rel.split("/");
  if (rel.includes("\0") || parts.some((p) => p === "" || p === "." || p === "..")) return null;
  return rel;
}

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
async function listRemote(session: Session, remoteDir: string, options: MirrorOptions): Promise<Listing> {
  const what = `the listing of ${JSON.stringify(remoteDir === "" ? "/" : remoteDir)}`;
  try {
    return await withRetries(
      () => session.list({ v: PROTOCOL_VERSION, op: "list", path: remoteDir, recursive: true }, what),
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
    throw classify(e);
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

/** Below this size a changed file is fetched whole on the fast path; from it on, one by one, with delta. */
const DELTA_MIN_SIZE = 1024 * 1024;

/** What a listed file needs. */
type Need =
  /** Nothing: the local copy is current (its SHA-256 is known). */
  | { kind: "current"; sha256: string }
  /** Its local copy, of the listed size, must be hashed to tell. */
  | { kind: "hash" }
  /** Fetched on the fast path (pipelined, published in batches); `localSha256` goes as ifNoneMatch. */
  | { kind: "fast"; localSha256?: string }
  /** Fetched one by one (a part to resume, or a large file to patch with delta). */
  | { kind: "one by one" };

/** A listed file on its way. */
interface Item {
  entry: ListEntry;
  rel: string;
  folder: Folder;
  name: string;
  need: Need;
  /** What lstat said of the local copy, when there is one. */
  local?: StatIdentity;
}

/**
 * Decides what `item` needs by what LOCAL_DIR holds, without reading any file: the state answers for a
 * file whose lstat matches what was recorded. Throws LocalIoError.
 */
function needOf(item: Omit<Item, "need">, state: MirrorState): Need {
  const { entry, folder, name } = item;
  if (folder.parts.has(name)) return { kind: "one by one" }; // a part beside it: resume it
  if (!folder.names.has(name)) return { kind: "fast" };
  let local;
  try {
    local = identityAt(folder.dir.fd, name);
  } catch (e) {
    throw new LocalIoError(`cannot stat ${folder.dir.shownPath(name)}`, e);
  }
  if (local === null || !local.isFile) return { kind: "fast" }; // a symlink or special file is replaced
  item.local = local;
  const recorded = state.trusted(item.rel, local);
  const sameVersion = recorded !== undefined &&
    (entry.sha256 !== undefined
      ? recorded.sha256 === entry.sha256
      : entry.etag !== undefined && recorded.etag === entry.etag);
  if (sameVersion) return { kind: "current", sha256: recorded.sha256 };
  if (local.size !== entry.size) {
    // Changed for sure: no need to hash it, unless delta will read it anyway.
    return local.size >= DELTA_MIN_SIZE && entry.size >= DELTA_MIN_SIZE
      ? { kind: "one by one" }
      : { kind: "fast" };
  }
  if (recorded !== undefined) return needBySha(entry, local, recorded.sha256);
  return { kind: "hash" };
}

/** What a file of the listed size needs, its local copy's SHA-256 known (null: it is gone meanwhile). */
function needBySha(entry: ListEntry, local: StatIdentity, sha256: string | null): Need {
  if (sha256 === null) return { kind: "fast" };
  if (entry.sha256 === sha256) return { kind: "current", sha256 };
  if (entry.sha256 !== undefined && local.size >= DELTA_MIN_SIZE) return { kind: "one by one" };
  return { kind: "fast", localSha256: sha256 };
}

const hashBuffer = new Uint8Array(1024 * 1024);

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

/**
 * Mirrors `remoteDir` (a path on the server, `""` for the root) into `localDir`. Each file's outcome goes
 * to `onFile` as it happens. Throws a ClientError only when nothing could be done (no listing, LOCAL_DIR
 * cannot be created); failures of single files are counted in the summary.
 */
export async function mirror(
  session: Session,
  remoteDir: string,
  localDir: string,
  options: MirrorOptions,
  onFile: (report: FileReport) => void,
): Promise<MirrorSummary> {
  const summary: MirrorSummary = {
    updated: 0,
    unchanged: 0,
    deleted: 0,
    failed: 0,
    problems: [],
    exitCode: 0,
  };
  const codes: number[] = [];
  const count = (report: FileReport) => {
    if (report.status === "failed") {
      summary.failed++;
      codes.push(report.error!.exitCode);
    } else summary[report.status]++;
    onFile(report);
  };
  const listing = await listRemote(session, remoteDir, options);
  using tree = await LocalTree.open(localDir).catch((e) => {
    throw classify(e);
  });
  raiseOpenFileLimit(); // a folder of the tree is held open from its first file to the end of the run
  using folders = new FolderCache(tree, options.onNotice);
  const state = loadState(tree.root);
  const keep = new Set<string>();
  let unusable = 0; // entries the listing had but this client could not use: it is not the whole tree here
  const fast: Item[] = [];
  const oneByOne: Item[] = [];
  const toHash: Item[] = [];
  /** Where messages and reports say a file is: cheaper than a path join per file of a large tree. */
  const shown = (rel: string) => `${localDir.replace(/\/+$/, "")}/${rel}`;
  const failedItem = (item: { entry: ListEntry; rel: string }, error: ClientError) =>
    count({
      path: item.entry.path,
      target: shown(item.rel),
      status: "failed",
      bytes: 0,
      seconds: 0,
      attempts: 0,
      error,
    });
  /**
   * Records a file now current in the state: by `local`, the lstat taken before, when the file was left as
   * it was; else by the lstat of what stands at its name now (it was just published).
   */
  const remember = (item: Item, sha256: string | undefined, etag: string, local?: StatIdentity) => {
    if (sha256 === undefined) return state.delete(item.rel);
    try {
      const now = local ?? identityAt(item.folder.dir.fd, item.name);
      if (now !== null && now.isFile) {
        state.set(item.rel, { key: now.key, ctimeSeconds: now.ctimeSeconds, sha256, etag });
      } else state.delete(item.rel);
    } catch {
      state.delete(item.rel);
    }
  };
  const unchanged = (item: Item, sha256: string) => {
    count({
      path: item.entry.path,
      target: shown(item.rel),
      status: "unchanged",
      bytes: 0,
      size: item.entry.size,
      sha256,
      seconds: 0,
      attempts: 0,
    });
    remember(item, sha256, item.entry.etag ?? "", item.local);
  };
  const route = (item: Item) => {
    if (item.need.kind === "current") unchanged(item, item.need.sha256);
    else if (item.need.kind === "hash") toHash.push(item);
    else if (item.need.kind === "fast") fast.push(item);
    else oneByOne.push(item);
  };

  for (const value of listing.entries) {
    const entry = checkEntry(value);
    const rel = entry === null ? null : localRelative(entry.path, remoteDir);
    const path = entry?.path ?? JSON.stringify(value);
    if (rel === null || rel === STATE_DIR || rel.startsWith(`${STATE_DIR}/`)) {
      unusable++;
      count({
        path,
        target: "",
        status: "failed",
        bytes: 0,
        seconds: 0,
        attempts: 0,
        error: protocolError(
          rel === null
            ? `the listing has an entry that does not belong below REMOTE_DIR: ${path}`
            : `${path} would go in LOCAL_DIR's ${STATE_DIR}/, which holds the mirror's own state`,
        ),
      });
      continue;
    }
    keep.add(rel);
    try {
      // No symlink below LOCAL_DIR is followed; one where a directory belongs is replaced by it.
      const folder = folders.folderOf(rel);
      const partial = { entry: entry!, rel, folder, name: basename(rel) };
      route(Object.assign(partial, { need: needOf(partial, state) }));
    } catch (e) {
      failedItem({ entry: entry!, rel }, classify(e));
    }
  }

  if (toHash.length > 0 || fast.length > 0 || oneByOne.length > 0) await loadHashing();
  for (const item of toHash) {
    try {
      item.need = needBySha(item.entry, item.local!, hashLocal(item.folder.dir, item.name));
      route(item);
    } catch (e) {
      failedItem(item, classify(e));
    }
  }

  const byFile = new Map<TreeFile, Item>();
  const treeFiles = fast.map((item) => {
    const file: TreeFile = {
      path: item.entry.path,
      dir: item.folder.dir,
      name: item.name,
      localSha256: item.need.kind === "fast" ? item.need.localSha256 : undefined,
    };
    byFile.set(file, item);
    return file;
  });
  await fetchTree(
    session,
    treeFiles,
    { verify: options.verify, deadline: options.deadline, root: tree.root },
    (file, outcome) => {
      const item = byFile.get(file)!;
      if (outcome.status === "handed back") {
        oneByOne.push(item);
        return;
      }
      const report: FileReport = {
        path: item.entry.path,
        target: shown(item.rel),
        status: outcome.status,
        bytes: outcome.bytes,
        seconds: outcome.seconds,
        attempts: 1,
      };
      if (outcome.status === "failed") {
        report.error = outcome.error;
        state.delete(item.rel);
      } else {
        report.size = outcome.size;
        if (outcome.sha256 !== undefined && options.verify) report.sha256 = outcome.sha256;
        remember(item, outcome.sha256, outcome.etag ?? "");
      }
      count(report);
    },
  );

  let stop: ClientError | null = null;
  for (const item of oneByOne) {
    if (stop === null && options.deadline.expired) stop = options.deadline.error();
    if (stop !== null) {
      // The server is unreachable or overloaded, or the deadline passed: asking for more files would only
      // wait the same way for each; they are reported as not attempted.
      failedItem(item, new ClientError(stop.exitCode, `not attempted: ${stop.message}`));
      continue;
    }
    const place: Place = { dir: item.folder.dir, name: item.name, followLink: false };
    const report = await fetchFile(session, item.entry.path, place, { ...options, listed: item.entry });
    count(report);
    if (report.status === "failed") state.delete(item.rel);
    // The version fetched is the listed one when their hashes agree; else the next run asks the server.
    else remember(item, report.sha256, report.sha256 === item.entry.sha256 ? item.entry.etag ?? "" : "");
    const code = report.error?.exitCode;
    if (options.deadline.expired || code === ExitCode.Connect || code === ExitCode.Busy) stop = report.error!;
  }

  // Deleting on a listing that is not the whole tree would delete what the server still has, on every host.
  const complete = !(listing.truncated || listing.leftOut.count > 0 || unusable > 0);
  if (!complete) {
    summary.problems.push(incompleteListing(listing, unusable, options.delete));
  } else {
    state.retain((rel) => keep.has(rel));
    if (options.delete && !options.deadline.expired) {
      try {
        await deleteExtraneous(remoteDir, tree, keep, count);
      } catch (e) {
        summary.problems.push(classify(e));
      }
    }
  }
  try {
    if (state.changed) {
      await state.settle();
      saveState(tree.root, state);
    }
  } catch (e) {
    // The tree is as it should be; only the next run's shortcut is lost, which costs it some hashing.
    options.onNotice?.(`${(e as Error).message} (the next run hashes what it cannot trust)`);
  }
  summary.exitCode = worstExitCode([...codes, ...summary.problems.map((p) => p.exitCode)]);
  return summary;
}
