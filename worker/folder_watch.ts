/**
 * Which folders of the served tree changed since a listing looked at them, as the kernel tells it
 * (inotify(7)), so that a listing can send a folder the client holds as it was as one record without an
 * fstatat of each of its files: for tree (b) of the benchmark (100,000 files), those fstatats and the
 * entries made of them were most of a worker's CPU for a listing that found nothing changed.
 *
 * A walk that wants a folder's digest marks the folder when it opens it, before it reads its names or looks
 * at its files: any change after the mark (a file written, truncated, touched, created, deleted or renamed
 * in it, or the folder itself moved or removed) queues an event, and the kernel queues it before the call
 * that made the change returns. So a mark that no event has followed, read when a later listing reaches
 * the folder, vouches that the folder is as that walk found it.
 *
 * What an event cannot vouch for is not trusted to one:
 *
 * - only file systems whose changes all pass through this kernel are watched (ext2/3/4, XFS, Btrfs, F2FS,
 *   tmpfs): not NFS or other network file systems, where other hosts write, nor FUSE or overlayfs;
 * - a file with more than one link can be written through a name in another folder, which tells this one
 *   nothing: its folder is looked at file by file (`Walk` keeps no digest for it);
 * - a write through a shared mapping (mmap(2)) queues no event, nor does one through a link made in another
 *   folder after the look (a link count's change is told to watches of the file, not of its folders): a
 *   mark vouches for at most {@link WATCH_TRUST_MS}, after which the folder is looked at again, as nginx's
 *   `open_file_cache_valid` bounds what its cache may miss;
 * - when the kernel's queue overflows, every mark is void.
 *
 * A worker watches at most {@link MAX_WATCHED_FOLDERS} folders, and none once the kernel refuses a watch
 * (the user's `fs.inotify.max_user_watches`, shared with every other program of the user): past that,
 * folders are looked at file by file, as without a watch.
 *
 * @module
 */

import {
  C,
  close,
  type FileStat,
  fileSystemType,
  inotifyEventsQueued,
  inotifyInit,
  inotifyWatchOpen,
  LibcError,
} from "../ffi/libc.ts";

/** How long a mark vouches for its folder without a look at its files: see the module's documentation. */
export const WATCH_TRUST_MS = 60_000;

/** Folders a worker watches at most (each watch takes some kernel memory, and one of the user's watches). */
export const MAX_WATCHED_FOLDERS = 16_384;

/** The `f_type` of the file systems whose every change this kernel makes, and so reports (statfs(2)). */
const LOCAL_FILE_SYSTEMS = new Set([
  0xef53, // ext2, ext3, ext4
  0x58465342, // XFS
  0x9123683e, // Btrfs
  0xf2f52010, // F2FS
  0x01021994, // tmpfs
]);

/** True when the file system of type `type` (statfs(2)'s `f_type`) is one whose changes a watch sees. */
export function watchesFileSystem(type: number): boolean {
  return LOCAL_FILE_SYSTEMS.has(type);
}

/** What a folder without a watch costs, as the service log says it. */
const UNWATCHED = "the folders not watched yet have their files looked at by every listing";

/** Changes to a folder's files or names, or to the folder itself. */
const WATCHED_EVENTS = C.IN_MODIFY | C.IN_ATTRIB | C.IN_CLOSE_WRITE | C.IN_MOVED_FROM | C.IN_MOVED_TO |
  C.IN_CREATE | C.IN_DELETE | C.IN_DELETE_SELF | C.IN_MOVE_SELF;

/**
 * A folder's watch as a walk found it: its watch descriptor, the events seen on it then, the watch's
 * generation (see {@link FolderWatch.restart}), and when.
 */
export interface WatchMark {
  readonly wd: number;
  readonly events: number;
  readonly generation: number;
  readonly atMs: number;
}

/** A worker's inotify instance and what it has reported; see the module's documentation. */
export class FolderWatch {
  #fd: number;
  /** Each watched folder's watch descriptor, by `dev:ino`, and the other way round. */
  readonly #wdOf = new Map<string, number>();
  readonly #folderOf = new Map<number, string>();
  /** Events read so far, by watch descriptor. */
  readonly #events = new Map<number, number>();
  /**
   * Restarts so far (a new root, a queue overflow): each one voids every mark taken before it, as a new
   * inotify instance numbers its watches from 1 again.
   */
  #generation = 0;
  /** Whether each device's file system reports all its changes, by `st_dev`. */
  readonly #local = new Map<bigint, boolean>();
  /** Set once the kernel refused a watch (ENOSPC): the user's watches are all taken. */
  #refused = false;
  static readonly #buffer = new Uint8Array(64 * 1024);

  /** Set once a folder was not watched for the bound: said once. */
  #full = false;

  /**
   * A watch of its own (inotify_init1); one that watches nothing if the kernel gives none.
   * @param say writes a line to the worker's service log: why folders go unwatched, once each
   */
  constructor(readonly say: (line: string) => void = () => {}) {
    this.#fd = this.#open();
  }

  /** How many folders are watched. */
  get watched(): number {
    return this.#wdOf.size;
  }

  /**
   * Marks the folder open as `fd`, whose fstat is `folder`: watches it if it is not yet, and notes what was
   * seen of it so far. Null where it cannot be watched: nothing then vouches for it.
   */
  mark(fd: number, folder: Pick<FileStat, "dev" | "ino">): WatchMark | null {
    if (this.#fd < 0 || !this.#onLocalFileSystem(fd, folder.dev)) return null;
    this.#drain();
    if (this.#fd < 0) return null; // an overflow's restart found no instance
    const key = `${folder.dev}:${folder.ino}`;
    let wd = this.#wdOf.get(key);
    if (wd === undefined) {
      if (this.#refused) return null;
      if (this.#wdOf.size >= MAX_WATCHED_FOLDERS) {
        if (!this.#full) {
          this.say(`folder watch: ${MAX_WATCHED_FOLDERS} folders watched, a worker's most: ${UNWATCHED}`);
        }
        this.#full = true;
        return null;
      }
      try {
        wd = inotifyWatchOpen(this.#fd, fd, WATCHED_EVENTS | C.IN_ONLYDIR);
      } catch (e) {
        if (!(e instanceof LibcError)) throw e;
        if (e.code === C.ENOSPC) {
          this.say(`folder watch: no more watches (${e.message}; fs.inotify.max_user_watches): ${UNWATCHED}`);
          this.#refused = true;
        }
        return null;
      }
      // A watch sees what happens from now on: what happened before is in the walk's own look.
      this.#wdOf.set(key, wd);
      this.#folderOf.set(wd, key);
      if (!this.#events.has(wd)) this.#events.set(wd, 0);
    }
    return { wd, events: this.#events.get(wd)!, generation: this.#generation, atMs: performance.now() };
  }

  /** True when nothing was reported of `mark`'s folder since it was taken, less than WATCH_TRUST_MS ago. */
  unchanged(mark: WatchMark): boolean {
    if (performance.now() - mark.atMs >= WATCH_TRUST_MS) return false;
    this.#drain();
    return this.#generation === mark.generation && this.#events.get(mark.wd) === mark.events;
  }

  /**
   * Ends every watch and starts anew, with a new inotify instance: every mark taken before vouches for
   * nothing. For a root that now leads to another tree, whose folders the old watches would hold on to, and
   * after the kernel's queue overflowed.
   */
  restart(): void {
    this.close();
    this.#wdOf.clear();
    this.#folderOf.clear();
    this.#events.clear();
    this.#refused = this.#full = false;
    this.#generation++;
    this.#fd = this.#open();
  }

  /** Stops watching (closes the inotify instance, which ends its watches). */
  close(): void {
    if (this.#fd >= 0) close(this.#fd);
    this.#fd = -1;
  }

  /** A new inotify instance, or -1 when the kernel gives none (the user's instances all taken). */
  #open(): number {
    try {
      return inotifyInit();
    } catch (e) {
      if (!(e instanceof LibcError)) throw e;
      this.say(
        `folder watch off (${e.message}; fs.inotify.max_user_instances): every listing looks at every file`,
      );
      return -1;
    }
  }

  /**
   * Reads every event queued, counting them by watch. After an overflow the watch starts anew: events were
   * lost, a watch's end among them maybe, so no watch nor the count of them can be trusted.
   */
  #drain(): void {
    if (this.#fd < 0) return;
    for (const { wd, mask } of inotifyEventsQueued(this.#fd, FolderWatch.#buffer)) {
      if (mask & C.IN_Q_OVERFLOW) {
        this.restart();
        return;
      } else if (mask & C.IN_IGNORED) {
        // The watch ended (the folder was removed): its marks are void, and its inode may be reused.
        this.#events.delete(wd);
        const key = this.#folderOf.get(wd);
        if (key !== undefined) this.#wdOf.delete(key);
        this.#folderOf.delete(wd);
      } else {
        this.#events.set(wd, (this.#events.get(wd) ?? 0) + 1);
      }
    }
  }

  /** Whether the file system of `fd` (on device `dev`) reports all its changes: asked once per device. */
  #onLocalFileSystem(fd: number, dev: bigint): boolean {
    let local = this.#local.get(dev);
    if (local === undefined) {
      try {
        local = watchesFileSystem(fileSystemType(fd));
      } catch (e) {
        if (!(e instanceof LibcError)) throw e;
        local = false;
      }
      this.#local.set(dev, local);
    }
    return local;
  }
}
