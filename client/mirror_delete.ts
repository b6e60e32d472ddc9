/**
 * `mirror --delete`: removes what LOCAL_DIR holds and the server no longer has. Only regular files and the
 * folders that leaves empty are removed, each by name in its folder's fd; no symlink is followed or
 * removed, and the client's own state folder is left alone.
 *
 * @module
 */

import { basename } from "node:path";
import { ClientError, ExitCode } from "./failure.ts";
import type { FileReport } from "./fetch_file.ts";
import {
  type FolderCache,
  type LocalDir,
  LocalIoError,
  type LocalTree,
  parentPath,
  PART_NAME,
} from "./local_tree.ts";
import { STATE_DIR } from "./mirror_state.ts";
import { isPartStem, partStem, removeStaleParts } from "./publish.ts";
import { identityAt, unlinkAt } from "../ffi/libc.ts";

/** How {@link deleteExtraneous} may spare itself work, and what it must leave. */
export interface DeleteOptions {
  /** Remove nothing: report each file that would be removed. */
  dryRun?: boolean;
  /** The run's folders: those it has read already are not read again. */
  cache?: FolderCache;
  /** The server's empty folders: not removed, nor those above them. */
  keepFolders?: ReadonlySet<string>;
  /**
   * Folders whose every file is kept and that hold no other file (as the state recorded them, unchanged
   * since): their files are not looked at one by one. Their subfolders are.
   */
  keptWhole?: ReadonlySet<string>;
}

/**
 * Removes local regular files below LOCAL_DIR that are not in `keep` (relative paths), the parts of such
 * files, and then-empty directories; no symlink is followed, and none is removed. Reports each removal
 * (or its failure) to `onFile`, with the size of a file removed.
 */
export async function deleteExtraneous(
  remoteDir: string,
  tree: LocalTree,
  keep: Set<string>,
  onFile: (report: FileReport, rel: string, size?: number) => void,
  { dryRun = false, cache, keepFolders = new Set(), keptWhole = new Set() }: DeleteOptions = {},
): Promise<void> {
  const dirs: string[] = [];
  const own = (rel: string) => rel === STATE_DIR;
  let stems: Set<string> | undefined;
  for (const rel of tree.walk(dirs, cache, own, (folder) => keptWhole.has(folder))) {
    if (own(rel)) continue;
    const name = rel.slice(rel.lastIndexOf("/") + 1);
    const part = name.startsWith(".") ? PART_NAME.exec(name) : null;
    const target = part ? `${rel.slice(0, rel.length - name.length)}${part[1]}` : rel;
    // A file the server has, or its part (for a resume); a long name's part holds a stem of it (partStem).
    if (keep.has(rel) || keep.has(target)) continue;
    if (part && isPartStem(part[1]) && (stems ??= longNameStems(keep)).has(target)) continue;
    if (dryRun) {
      // Parts are the client's own leftovers, not files of the tree: a dry run lists only the files.
      if (!part) onFile({ ...reportOf(remoteDir, tree, rel), status: "would delete", attempts: 0 }, rel);
      continue;
    }
    const started = performance.now();
    const report = reportOf(remoteDir, tree, rel);
    let dir: LocalDir | null = null;
    let size: number | undefined;
    try {
      dir = tree.findParent(rel);
      if (dir === null) continue; // its folder is no longer a folder
      if (part) {
        await removeStaleParts({ dir, name: part[1], followLink: false }); // parts another run holds stay
        continue;
      }
      const local = identityAt(dir.fd, name);
      if (local === null || !local.isFile) continue; // gone or replaced meanwhile: only files are removed
      unlinkAt(dir.fd, name);
      size = local.size;
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
    onFile(report, rel, size);
  }
  if (dryRun) return;
  // A folder that holds a file the server has cannot end up empty: only the others are tried.
  const holding = new Set<string>();
  for (const rel of [...keepFolders, ...keptWhole]) {
    for (let folder = rel; folder !== "" && !holding.has(folder); folder = parentPath(folder)) {
      holding.add(folder);
    }
  }
  // The kept files are looked through only for a folder that is still in question.
  const undecided = dirs.filter((rel) => !own(rel) && !holding.has(rel));
  for (const rel of undecided.length === 0 ? [] : keep) {
    for (let slash = rel.lastIndexOf("/"); slash > 0; slash = rel.lastIndexOf("/", slash - 1)) {
      const folder = rel.slice(0, slash);
      if (holding.has(folder)) break;
      holding.add(folder);
    }
  }
  for (const rel of undecided) {
    if (holding.has(rel)) continue;
    try {
      using dir = tree.findParent(rel);
      if (dir !== null) unlinkAt(dir.fd, basename(rel), { directory: true }); // only empty ones go
    } catch { /* not empty, or gone */ }
  }
}

/**
 * The paths of the kept files whose parts hold a stem of their name (`partStem`), by the path the stem
 * makes: made once a run meets a part that may be one of them.
 */
function longNameStems(keep: ReadonlySet<string>): Set<string> {
  const stems = new Set<string>();
  for (const rel of keep) {
    const slash = rel.lastIndexOf("/") + 1;
    const stem = partStem(rel.slice(slash));
    if (stem !== rel.slice(slash)) stems.add(rel.slice(0, slash) + stem);
  }
  return stems;
}

/** The report of the removal of `rel`, a local file below LOCAL_DIR. */
function reportOf(remoteDir: string, tree: LocalTree, rel: string): FileReport {
  return {
    path: remoteDir === "" ? rel : `${remoteDir}/${rel}`, // where it would be on the server
    target: tree.root.shownPath(rel),
    status: "deleted",
    bytes: 0,
    seconds: 0,
    attempts: 1,
  };
}
