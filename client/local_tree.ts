/**
 * The client's local directories, held open as fds, so that what ferry creates, renames or removes is
 * named relative to a directory it opened, never by a path the kernel looks up again:
 *
 * - {@link LocalDir}: one open directory. Files in it are opened, renamed and removed by name relative to
 *   its fd (`ffi/libc.ts`); Deno's path APIs reach it as `/proc/self/fd/N`, where the kernel starts from
 *   the opened directory itself, so a directory renamed or swapped for a symlink meanwhile cannot
 *   redirect them.
 * - {@link LocalTree}: `mirror`'s LOCAL_DIR. Below it, every component is opened without following a
 *   symlink (openat2 RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH); a symlink, or any non-directory, that stands
 *   where the server has a directory is replaced by a directory, as rsync does, and reported. LOCAL_DIR
 *   itself is opened as the user named it, symlinks followed.
 *
 * @module
 */

import { join } from "node:path";
import {
  close,
  dupCloseOnExec,
  fsync,
  getdents,
  identityAt,
  LibcError,
  lstatAt,
  mkdirAt,
  OPEN,
  openAt,
  renameAt,
  unlinkAt,
} from "../ffi/libc.ts";
import { direntsOf, DT, nameText, S_IFLNK, S_IFMT } from "../ffi/structs.ts";
import type { FolderNames, MirrorState } from "./mirror_state.ts";

/** A local I/O failure (the target directory is not writable, the disk is full...). */
export class LocalIoError extends Error {
  /**
   * @param what what ferry was doing
   * @param cause the underlying error
   */
  constructor(what: string, cause: unknown) {
    super(`${what}: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    this.name = "LocalIoError";
  }
}

/**
 * The errno names that stop every write to a file system, not one file's: no room left on it (ENOSPC), the
 * user's quota spent (EDQUOT), or mounted read-only (EROFS).
 */
const FILE_SYSTEM_REFUSES = ["ENOSPC", "EDQUOT", "EROFS"];

/**
 * The errno name (`ENOSPC`) if `e`, or an error it was made from (its `cause`, as a {@link LocalIoError} keeps
 * the system call's), says the file system takes no more writes; null for any other failure. A run that
 * meets one stops fetching: every file after it would fail the same way, each after its transfer.
 */
export function fileSystemRefusal(e: unknown): string | null {
  for (let at = e, depth = 0; at instanceof Error && depth < 8; at = at.cause, depth++) {
    const named = at as Error & { errnoName?: unknown; code?: unknown };
    // A LibcError names its errno; Deno's own file errors carry it as `code`.
    const name = named.errnoName ?? named.code;
    if (typeof name === "string" && FILE_SYSTEM_REFUSES.includes(name)) return name;
  }
  return null;
}

/**
 * A Deno file handle of the file open as `fd` (an fd from `ffi/libc.ts`): `/proc/self/fd/N` names the
 * open file itself, so no name is looked up again. The caller still closes `fd`.
 */
export function reopen(fd: number, options: { write: boolean }): Promise<Deno.FsFile> {
  return Deno.open(`/proc/self/fd/${fd}`, { read: true, write: options.write });
}

/** A directory held open. Close it when done (it is Disposable). */
export class LocalDir implements Disposable {
  #fd: number;

  private constructor(fd: number, readonly shown: string) {
    this.#fd = fd;
  }

  /** Opens the directory at `path` as the user wrote it: symlinks are followed. Throws LibcError. */
  static open(path: string): LocalDir {
    return new LocalDir(openAt(undefined, path, OPEN.O_RDONLY | OPEN.O_DIRECTORY), path);
  }

  /** Takes over `fd`, an open directory that messages call `shown`. */
  static adopt(fd: number, shown: string): LocalDir {
    return new LocalDir(fd, shown);
  }

  /** The directory's fd; -1 once closed. */
  get fd(): number {
    return this.#fd;
  }

  /** A second handle of the same open directory, closed on its own. */
  duplicate(): LocalDir {
    return new LocalDir(dupCloseOnExec(this.#fd), this.shown);
  }

  /**
   * A path for Deno's file APIs that the kernel resolves from this very directory: only `name` (one
   * component) is looked up, in it. Such paths need `--allow-all`.
   */
  procPath(name?: string): string {
    return name === undefined ? `/proc/self/fd/${this.#fd}` : `/proc/self/fd/${this.#fd}/${name}`;
  }

  /** How messages name `name` in this directory. */
  shownPath(name: string): string {
    return join(this.shown, name);
  }

  /**
   * Replaces the file `name` in this directory whole: `write` fills a new file `temp` (made here with
   * `mode`; a leftover or a symlink planted at `temp` is removed, never written through), which is then
   * renamed over `name`, so a reader sees the old file or the new one. Not fsynced. Throws LocalIoError.
   */
  replaceFile(name: string, temp: string, mode: number, write: (fd: number) => void): void {
    try {
      try {
        unlinkAt(this.#fd, temp);
      } catch { /* none */ }
      const fd = openAt(this.#fd, temp, OPEN.O_WRONLY | OPEN.O_CREAT | OPEN.O_EXCL, {
        mode,
        noSymlinks: true,
      });
      try {
        write(fd);
      } catch (e) {
        // A half-written file is of no use, and on a full disk it holds the room the next run needs.
        try {
          unlinkAt(this.#fd, temp);
        } catch { /* gone already */ }
        throw e;
      } finally {
        close(fd);
      }
      renameAt(this.#fd, temp, this.#fd, name);
    } catch (e) {
      throw new LocalIoError(`cannot write ${this.shownPath(name)}`, e);
    }
  }

  /** fsyncs the directory, so the renames and removals in it survive a crash. Throws LocalIoError. */
  sync(): void {
    try {
      fsync(this.#fd);
    } catch (e) {
      throw new LocalIoError(`cannot fsync directory ${this.shown}`, e);
    }
  }

  /** Closes the directory; a second call does nothing. */
  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    close(fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** The errno name of a LibcError, or "" for any other error. */
function errnoOf(e: unknown): string {
  return e instanceof LibcError ? e.errnoName : "";
}

/** How often a directory is looked up again when what stands at its name keeps changing. */
const MAX_LOOKUPS = 8;

/** True when `path` leads to a directory; false for anything else, or nothing there. */
export function isDirectory(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}

/** `mirror`'s LOCAL_DIR, held open; paths below it are relative (`a/b/c.txt`), without `.` or `..`. */
export class LocalTree implements Disposable {
  private constructor(readonly root: LocalDir) {}

  /**
   * Creates LOCAL_DIR if needed (with its parents) and opens it; the user named it, so symlinks in its
   * path are followed. Throws LocalIoError.
   */
  static open(localDir: string): LocalTree {
    try {
      Deno.mkdirSync(localDir, { recursive: true });
      return new LocalTree(LocalDir.open(localDir));
    } catch (e) {
      if (e instanceof Deno.errors.AlreadyExists && !isDirectory(localDir)) {
        throw new LocalIoError(`cannot mirror into ${localDir}`, "it is not a directory");
      }
      throw new LocalIoError(`cannot create ${localDir}`, e);
    }
  }

  /**
   * Opens LOCAL_DIR if it is there, creating nothing (a dry run only looks); null if it is missing.
   * Throws LocalIoError.
   */
  static find(localDir: string): LocalTree | null {
    try {
      return new LocalTree(LocalDir.open(localDir));
    } catch (e) {
      if (errnoOf(e) === "ENOENT") return null;
      throw new LocalIoError(`cannot open ${localDir}`, e);
    }
  }

  /**
   * Opens the directory that holds `rel`'s last component, component by component, following no
   * symlink, and making what is missing. A symlink or other non-directory in the way is removed (the link
   * itself, never what it points to) and replaced by a directory, which `onReplaced` is told. The caller
   * closes the result. Throws LocalIoError.
   */
  makeParent(rel: string, onReplaced?: (message: string) => void): LocalDir {
    return this.#parentOf(rel, true, onReplaced)!;
  }

  /**
   * Opens the directory that holds `rel`'s last component, following no symlink; null if a component is
   * missing or not a directory. The caller closes the result. Throws LocalIoError.
   */
  findParent(rel: string): LocalDir | null {
    return this.#parentOf(rel, false);
  }

  #parentOf(rel: string, create: boolean, onReplaced?: (message: string) => void): LocalDir | null {
    const names = rel.split("/").slice(0, -1);
    if (names.length === 0) return this.root.duplicate();
    // The root is opened from, never closed here: no handle of its own (a dup and a close per folder).
    let dir = this.root;
    try {
      for (const name of names) {
        const child = this.#openChild(dir, name, create, onReplaced);
        if (dir !== this.root) dir.close();
        if (child === null) return null;
        dir = child;
      }
      return dir;
    } catch (e) {
      if (dir !== this.root) dir.close();
      throw e;
    }
  }

  /** Opens the directory `name` in `parent` (see {@link makeParent}). */
  #openChild(
    parent: LocalDir,
    name: string,
    create: boolean,
    onReplaced?: (message: string) => void,
  ): LocalDir | null {
    const shown = parent.shownPath(name);
    for (let lookups = 0; lookups < MAX_LOOKUPS; lookups++) {
      try {
        return LocalDir.adopt(
          openAt(parent.fd, name, OPEN.O_RDONLY | OPEN.O_DIRECTORY, { noSymlinks: true }),
          shown,
        );
      } catch (e) {
        const code = errnoOf(e);
        if (code !== "ENOENT" && code !== "ELOOP" && code !== "ENOTDIR") {
          throw new LocalIoError(`cannot open directory ${shown}`, e);
        }
        if (!create) return null;
        try {
          if (code === "ENOENT") mkdirAt(parent.fd, name);
          else this.#replace(parent, name, shown, onReplaced);
        } catch (e) {
          // Something else made or removed it meanwhile: look again.
          if (errnoOf(e) !== "EEXIST" && errnoOf(e) !== "ENOENT") {
            throw new LocalIoError(`cannot create directory ${shown}`, e);
          }
        }
      }
    }
    throw new LocalIoError(`cannot create directory ${shown}`, "what stands there keeps changing");
  }

  /** Replaces the non-directory `name` in `parent` by a directory. */
  #replace(parent: LocalDir, name: string, shown: string, onReplaced?: (message: string) => void): void {
    const stat = lstatAt(parent.fd, name);
    if (stat.isDirectory) return; // a directory again: the next lookup opens it
    const what = (stat.mode & S_IFMT) === S_IFLNK ? "a symlink" : stat.isFile ? "a file" : "a special file";
    unlinkAt(parent.fd, name);
    mkdirAt(parent.fd, name);
    onReplaced?.(`${shown}: replaced ${what} by a directory (the server has a directory there)`);
  }

  /**
   * Regular files (relative paths) below LOCAL_DIR, one at a time, so that a tree of a million files is
   * never a list of them; its directories go into `dirs`, deepest first. Symlinks are left out and never
   * followed; a directory swapped for something else during the walk is skipped. A folder the run's
   * `cache` has read already is not read again; a folder `skip` accepts is left out, and not entered; a
   * folder `skipFiles` accepts is entered, but its files are left out.
   */
  *walk(
    dirs: string[],
    cache?: FolderCache,
    skip?: (rel: string) => boolean,
    skipFiles?: (rel: string) => boolean,
  ): Generator<string> {
    function* visit(rel: string, open: () => LocalDir | null): Generator<string> {
      const known = cache?.known(rel);
      const dir = known === undefined ? open() : null;
      if (known === undefined && dir === null) return;
      try {
        const contents = known ?? readFolder(dir!);
        const at = known?.dir ?? dir!;
        if (!skipFiles?.(rel)) {
          if (contents.paths !== undefined) yield* contents.paths;
          else for (const name of contents.files) yield rel === "" ? name : `${rel}/${name}`;
        }
        for (const name of contents.subfolders) {
          const path = rel === "" ? name : `${rel}/${name}`;
          if (skip?.(path)) continue;
          yield* visit(path, () => {
            try {
              const fd = openAt(at.fd, name, OPEN.O_RDONLY | OPEN.O_DIRECTORY, { noSymlinks: true });
              return LocalDir.adopt(fd, at.shownPath(name));
            } catch {
              return null;
            }
          });
          dirs.push(path);
        }
      } finally {
        dir?.close();
      }
    }
    try {
      const root = this.root;
      yield* visit("", () => root.duplicate());
    } catch (e) {
      throw new LocalIoError(`cannot read ${this.root.shown}`, e);
    }
  }

  /** Closes LOCAL_DIR. */
  close(): void {
    this.root.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** The folder that holds `rel`, a path below LOCAL_DIR ("" for LOCAL_DIR itself). */
export function parentPath(rel: string): string {
  return rel.slice(0, Math.max(0, rel.lastIndexOf("/")));
}

/** A part's name, `.NAME.ferry-TAG.part`, with NAME captured (publish.ts names them; a long NAME by its stem). */
export const PART_NAME = /^\.(.+)\.ferry-[^/]+\.part$/;

/** What a folder below LOCAL_DIR held when it was read. */
export interface FolderContents {
  /** Its entries' names. */
  names: ReadonlySet<string>;
  /** The names that have a part (`.NAME.ferry-TAG.part`) beside them (as `partStem` gives a long one). */
  parts: ReadonlySet<string>;
  /** Its regular files' names (parts included). */
  files: readonly string[];
  /** For a folder as the state recorded it: its files as paths relative to LOCAL_DIR (the state's strings). */
  paths?: readonly string[];
  /** Its subfolders' names (symlinks are not subfolders). */
  subfolders: readonly string[];
}

const direntBuffer = new Uint8Array(64 * 1024);

/** Reads the folder `dir` once. Throws LocalIoError. */
function readFolder(dir: LocalDir): FolderContents {
  const names = new Set<string>();
  const parts = new Set<string>();
  const files: string[] = [];
  const subfolders: string[] = [];
  let fd = -1;
  try {
    // getdents64 on an fd of its own (the held one keeps its offset): Deno's readDirSync made an object of
    // four fields per name and looked the folder up again by its /proc path.
    fd = openAt(dir.fd, ".", OPEN.O_RDONLY | OPEN.O_DIRECTORY);
    for (let n; (n = getdents(fd, direntBuffer)) > 0;) {
      for (const { name: bytes, type } of direntsOf(direntBuffer, n)) {
        const name = nameText(bytes, true);
        const kind = type === DT.UNKNOWN ? typeAt(fd, name) : type;
        names.add(name);
        if (kind === DT.REG) files.push(name);
        else if (kind === DT.DIR) subfolders.push(name);
        if (name.startsWith(".")) {
          const part = PART_NAME.exec(name);
          if (part !== null) parts.add(part[1]);
        }
      }
    }
  } catch (e) {
    throw new LocalIoError(`cannot read ${dir.shown}`, e);
  } finally {
    if (fd >= 0) close(fd);
  }
  return { names, parts, files, subfolders };
}

/**
 * The `d_type` of `name` in the folder open as `fd`: DT.REG, DT.DIR, or DT.UNKNOWN for anything else (a
 * symlink is not followed), or a name gone meanwhile. For a file system that does not fill `d_type` in,
 * and for a name whose type matters now rather than when its folder was read.
 */
export function typeAt(fd: number, name: string): number {
  try {
    const stat = lstatAt(fd, name);
    return stat.isFile ? DT.REG : stat.isDirectory ? DT.DIR : DT.UNKNOWN;
  } catch {
    return DT.UNKNOWN;
  }
}

const NO_PARTS: ReadonlySet<string> = new Set();

/** True when `contents` are exactly `expected`'s names, nothing missing and nothing else. */
function holdsExactly(contents: FolderContents, expected: FolderNames | undefined): boolean {
  const files = (expected?.files ?? []).map((path) => path.slice(path.lastIndexOf("/") + 1));
  const names = [...files, ...expected?.subfolders ?? []];
  return contents.names.size === names.length && names.every((name) => contents.names.has(name));
}

/** A folder's identity key (see `ffi/structs.ts`), or null if it cannot be had. */
function folderKey(dir: LocalDir): string | null {
  try {
    return identityAt(dir.fd, ".")?.key ?? null;
  } catch {
    return null;
  }
}

/**
 * A folder below LOCAL_DIR held open for a run, with what it held when the run first opened it (files
 * published since are not added).
 */
export interface Folder extends FolderContents {
  /** The folder, open. */
  dir: LocalDir;
  /** Its identity when its contents were had; null if it could not be had. */
  key: string | null;
  /** True when the contents hold for as long as the identity stays `key` (see `mirror_state.ts`). */
  settled: boolean;
  /** True when the contents are the state's record of it, which it still matched when opened. */
  recorded: boolean;
}

/**
 * The folders of a run, each opened once (component by component, no symlink followed: see
 * {@link LocalTree.makeParent}) and read once, then held open until the run closes the cache: a tree of
 * many files in few folders costs a few system calls per folder, not per file.
 */
export class FolderCache implements Disposable {
  /** By path below LOCAL_DIR; null for one a look found missing (looked up once, like the others). */
  readonly #folders = new Map<string, Folder | null>();

  /**
   * @param tree LOCAL_DIR
   * @param onReplaced told when a symlink or file where a folder belongs is replaced by a folder
   * @param state the mirror's state, whose recorded folders are taken as they are instead of read
   */
  constructor(
    readonly tree: LocalTree,
    readonly onReplaced?: (message: string) => void,
    readonly state?: MirrorState,
  ) {}

  /** The folder that holds `rel`'s last component, made if missing. Throws LocalIoError. */
  folderOf(rel: string): Folder {
    return this.#folder(rel, true)!;
  }

  /**
   * Makes the folder `rel` and those above it where missing, as {@link folderOf} makes a file's (a symlink
   * or file in the way is replaced). Throws LocalIoError.
   */
  makeFolder(rel: string): void {
    // A folder its parent held when read (or as recorded) is there: not opened, nor read, each run.
    const parent = this.#folder(rel, true)!;
    let subfolders = this.#subfolders.get(parent);
    if (subfolders === undefined) this.#subfolders.set(parent, subfolders = new Set(parent.subfolders));
    if (subfolders.has(rel.slice(rel.lastIndexOf("/") + 1))) return;
    this.#folder(`${rel}/`, true); // the folder that holds the empty name after `rel/`: `rel` itself
  }

  /** Each folder's subfolders as a set, made when {@link makeFolder} first asks. */
  readonly #subfolders = new WeakMap<Folder, ReadonlySet<string>>();

  /**
   * The folder that holds `rel`'s last component, if it is one (no symlink followed); null if it is
   * missing or something else stands there. Makes and changes nothing. Throws LocalIoError.
   */
  lookUp(rel: string): Folder | null {
    return this.#folder(rel, false);
  }

  /** The folder last asked for: a listing names the files of a folder one after another. */
  #last: { path: string; folder: Folder } | null = null;

  #folder(rel: string, make: boolean): Folder | null {
    const slash = rel.lastIndexOf("/");
    const last = this.#last;
    if (last !== null && Math.max(slash, 0) === last.path.length && rel.startsWith(last.path)) {
      return last.folder;
    }
    const key = slash < 0 ? "" : rel.slice(0, slash);
    let folder = this.#folders.get(key);
    if (folder === undefined || (folder === null && make)) {
      const dir = make ? this.tree.makeParent(rel, this.onReplaced) : this.tree.findParent(rel);
      if (dir === null) {
        this.#folders.set(key, null);
        return null;
      }
      try {
        folder = this.#contents(key, dir);
      } catch (e) {
        dir.close();
        throw e;
      }
      this.#folders.set(key, folder);
    }
    if (folder !== null) this.#last = { path: key, folder };
    return folder;
  }

  /** The folder `rel` opened as `dir`, with its contents: from the state if it is as recorded, else read. */
  #contents(rel: string, dir: LocalDir): Folder {
    const key = folderKey(dir);
    const recorded = key === null ? undefined : this.state?.recordedFolder(rel, key);
    if (recorded !== undefined) {
      // A recorded folder holds no part; its names are made only if asked for (a run of a large tree that
      // finds its folders as recorded never does: --delete walks the state's paths, if any).
      const { files: paths, subfolders } = recorded;
      let files: string[] | undefined, names: Set<string> | undefined;
      return {
        dir,
        key,
        settled: true,
        recorded: true,
        parts: NO_PARTS,
        paths,
        subfolders,
        get files() {
          return files ??= paths.map((path) => path.slice(path.lastIndexOf("/") + 1));
        },
        get names() {
          return names ??= new Set([...this.files, ...subfolders]);
        },
      };
    }
    // The identity is had before the read: a change after it moves the identity from the one kept.
    const settled = key !== null && this.state !== undefined && this.state.settledAt(key);
    return { dir, key, settled, recorded: false, ...readFolder(dir) };
  }

  /**
   * Records in the state each folder of the run that holds exactly what the state says it should (see
   * `mirror_state.ts`), once the run has made its last change below LOCAL_DIR. A folder changed since its
   * contents were had (most often by the run itself) is read again, once the changes are old enough to
   * tell from the next one: those old enough already before the wait for the others (into a memory file
   * system, tree (a)'s edit, whose small files are published before its three large ones, spent 10-15 ms
   * less here).
   */
  async record(): Promise<void> {
    const state = this.state;
    if (state === undefined) return;
    const now = new Map<string, string>();
    for (const [rel, folder] of this.#folders) {
      const key = folder === null ? null : folderKey(folder.dir);
      if (key !== null) now.set(rel, key);
    }
    const changedSinceHad = (rel: string, key: string) => {
      const folder = this.#folders.get(rel)!;
      return key !== folder.key || !folder.settled;
    };
    const changed = [...now].filter(([rel, key]) => changedSinceHad(rel, key));
    // A changed folder is read once settled. Those settled already are read while the run waits for the
    // others (and for the files recorded last); null: not readable as it is.
    const read = new Map<string, FolderContents | null>();
    const readSettled = () => {
      for (const [rel, key] of changed) {
        if (read.has(rel) || !state.settledAt(key)) continue;
        const dir = this.#folders.get(rel)!.dir;
        try {
          const contents = readFolder(dir);
          read.set(rel, folderKey(dir) === key ? contents : null);
        } catch {
          read.set(rel, null);
        }
      }
    };
    readSettled();
    await state.settle(changed.filter(([rel]) => !read.has(rel)).map(([, key]) => key));
    readSettled();
    // A folder as recorded, unchanged since, holds what the state says while no entry of it was added or
    // forgotten; the others are checked (for 100,000 files in 1,000 folders, 10 of them changed by the
    // run, checking all of them took 150 ms).
    let expected: Map<string, FolderNames> | undefined;
    const recorded = new Map<string, { key: string; names: string[] | null }>();
    for (const [rel, key] of now) {
      const folder = this.#folders.get(rel)!;
      if (folder.recorded && !changedSinceHad(rel, key) && state.holdsAsRead(rel)) {
        recorded.set(rel, { key, names: null }); // as the state recorded it: its names' digest too
        continue;
      }
      expected ??= state.expectedFolders();
      const contents = changedSinceHad(rel, key) ? read.get(rel) : folder;
      if (contents === null || contents === undefined) continue; // not settled even now, or not readable
      if (holdsExactly(contents, expected.get(rel))) recorded.set(rel, { key, names: [...contents.names] });
    }
    state.recordFolders(recorded);
  }

  /** The folder `rel` (a path below LOCAL_DIR, "" for itself) if the run has read it already. */
  known(rel: string): Folder | undefined {
    return this.#folders.get(rel) ?? undefined;
  }

  /** Closes every folder. */
  close(): void {
    for (const folder of this.#folders.values()) folder?.dir.close();
    this.#folders.clear();
    this.#last = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
