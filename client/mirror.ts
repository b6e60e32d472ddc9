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
import { type LocalDir, LocalTree } from "./local_tree.ts";
import { LocalIoError, type Place, removeStaleParts } from "./publish.ts";
import { lstatAt, unlinkAt } from "../ffi/libc.ts";
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

const PART_NAME = /^\.(.+)\.ferry-[^/]+\.part$/;

/** Checks a listing's entry; returns null if it is malformed. */
function checkEntry(value: unknown): ListEntry | null {
  if (typeof value !== "object" || value === null) return null;
  const e = value as Record<string, unknown>;
  if (typeof e.path !== "string" || !Number.isSafeInteger(e.size) || (e.size as number) < 0) return null;
  if (e.sha256 !== undefined && !isSha256Hex(e.sha256)) return null;
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

/**
 * Removes local regular files below LOCAL_DIR that are not in `keep` (relative paths), the parts of such
 * files, and then-empty directories; no symlink is followed, and none is removed. Reports each removal
 * (or its failure) to `onFile`.
 */
async function deleteExtraneous(
  remoteDir: string,
  tree: LocalTree,
  keep: Set<string>,
  onFile: (report: FileReport) => void,
): Promise<void> {
  const { files, dirs } = await tree.walk();
  for (const rel of files) {
    const name = basename(rel);
    const part = PART_NAME.exec(name);
    const target = part ? `${rel.slice(0, rel.length - name.length)}${part[1]}` : rel;
    if (keep.has(rel) || keep.has(target)) continue; // a file the server has, or its part (for a resume)
    const started = performance.now();
    const report: FileReport = {
      path: remoteDir === "" ? rel : `${remoteDir}/${rel}`, // where it would be on the server
      target: tree.root.shownPath(rel),
      status: "deleted",
      bytes: 0,
      seconds: 0,
      attempts: 1,
    };
    let dir: LocalDir | null = null;
    try {
      dir = tree.findParent(rel);
      if (dir === null) continue; // its folder is no longer a folder
      if (part) {
        await removeStaleParts({ dir, name: part[1], followLink: false }); // parts another run holds stay
        continue;
      }
      if (!lstatAt(dir.fd, name).isFile) continue; // replaced meanwhile: only regular files are removed
      unlinkAt(dir.fd, name);
    } catch (e) {
      report.status = "failed";
      report.error = new ClientError(
        ExitCode.LocalIo,
        new LocalIoError(`cannot remove ${report.target}`, e).message,
      );
    } finally {
      dir?.close();
    }
    report.seconds = (performance.now() - started) / 1000;
    onFile(report);
  }
  for (const rel of dirs) {
    try {
      using dir = tree.findParent(rel);
      if (dir !== null) unlinkAt(dir.fd, basename(rel), { directory: true }); // only empty ones go
    } catch { /* not empty, or gone */ }
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
  const keep = new Set<string>();
  let stop: ClientError | null = null;
  let unusable = 0; // entries the listing had but this client could not use: it is not the whole tree here
  for (const value of listing.entries) {
    const entry = checkEntry(value);
    const rel = entry === null ? null : localRelative(entry.path, remoteDir);
    const path = entry?.path ?? JSON.stringify(value);
    if (rel === null) {
      unusable++;
      count({
        path,
        target: "",
        status: "failed",
        bytes: 0,
        seconds: 0,
        attempts: 0,
        error: protocolError(`the listing has an entry that does not belong below REMOTE_DIR: ${path}`),
      });
      continue;
    }
    keep.add(rel);
    const target = tree.root.shownPath(rel);
    if (stop !== null) {
      // The server is unreachable or overloaded, or the deadline passed: asking for more files would only
      // wait the same way for each; they are reported as not attempted.
      const error = new ClientError(stop.exitCode, `not attempted: ${stop.message}`);
      count({ path, target, status: "failed", bytes: 0, seconds: 0, attempts: 0, error });
      continue;
    }
    let place: Place;
    try {
      // No symlink below LOCAL_DIR is followed; one where a directory belongs is replaced by it.
      place = {
        dir: tree.makeParent(rel, options.onNotice),
        name: basename(rel),
        followLink: false,
      };
    } catch (e) {
      count({ path, target, status: "failed", bytes: 0, seconds: 0, attempts: 0, error: classify(e) });
      continue;
    }
    const report = await fetchFile(session, entry!.path, place, { ...options, listed: entry! });
    place.dir.close();
    count(report);
    const code = report.error?.exitCode;
    if (options.deadline.expired || code === ExitCode.Connect || code === ExitCode.Busy) stop = report.error!;
  }

  // Deleting on a listing that is not the whole tree would delete what the server still has, on every host.
  if (listing.truncated || listing.leftOut.count > 0 || unusable > 0) {
    summary.problems.push(incompleteListing(listing, unusable, options.delete));
  } else if (options.delete && !options.deadline.expired) {
    try {
      await deleteExtraneous(remoteDir, tree, keep, count);
    } catch (e) {
      summary.problems.push(classify(e));
    }
  }
  summary.exitCode = worstExitCode([...codes, ...summary.problems.map((p) => p.exitCode)]);
  return summary;
}
