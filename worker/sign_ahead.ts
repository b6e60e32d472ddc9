/**
 * Signing ahead. A worker that signed a version of a file (for a client that holds it and will ask for the
 * next version's signature on its next run) watches the file's folder, with an inotify instance of its
 * own, for files written there: closed after a write, or renamed in. Each one is offered to the signature
 * cache at once (`SignatureCache.signAhead`, which signs only a path a version of which it signed, and
 * at most a tenth of the time), so the clients find the new version signed instead of waiting for it.
 *
 * Only the folders of files signed are watched, for those two events only: the rest of a tree's writes
 * wake nobody (a watch of every listed folder for every event cost the server 60-100 ms of CPU per 1,000
 * small files rewritten, against 0-30 ms without). A folder renamed after it was watched names its files
 * by its old path: they are then not found, and left to the requests, as without this.
 *
 * @module
 */

import {
  C,
  close,
  fstat,
  inotifyEventsQueued,
  inotifyInit,
  inotifyWatchOpen,
  LibcError,
  openRead,
} from "../ffi/libc.ts";
import { nameText } from "../ffi/structs.ts";
import type { SignatureCache } from "./signature_cache.ts";

/** Folders watched at most (each takes one of the user's inotify watches). */
const MAX_FOLDERS = 4096;

/** A worker's watch of the folders of the files it signed; see the module's documentation. */
export class SignAhead {
  #fd: number;
  /** Each watched folder's path below the root ("" for the root), by watch descriptor, and the other way. */
  readonly #folderOf = new Map<number, string>();
  readonly #wdOf = new Map<string, number>();
  static readonly #buffer = new Uint8Array(64 * 1024);

  /**
   * @param signatures the worker's signature cache, which decides what is signed
   * @param rootFd the served directory as it is now (a reload may replace it)
   */
  constructor(readonly signatures: SignatureCache, readonly rootFd: () => number) {
    this.#fd = SignAhead.#open();
  }

  /** The inotify instance, to wait for events on; -1 where the kernel gave none (nothing is signed ahead). */
  get fd(): number {
    return this.#fd;
  }

  /** Folders watched. */
  get watched(): number {
    return this.#wdOf.size;
  }

  /** Watches the folder of `path` (a file below the root, a version of which was just signed). */
  follow(path: string): void {
    const slash = path.lastIndexOf("/");
    const folder = slash < 0 ? "" : path.slice(0, slash);
    if (this.#fd < 0 || this.rootFd() < 0 || this.#wdOf.has(folder) || this.#wdOf.size >= MAX_FOLDERS) return;
    let dir: number;
    try {
      dir = openRead(folder === "" ? "." : folder, { beneath: this.rootFd(), directory: true });
    } catch {
      return; // gone already, or not the server's to read
    }
    try {
      const wd = inotifyWatchOpen(this.#fd, dir, C.IN_CLOSE_WRITE | C.IN_MOVED_TO | C.IN_ONLYDIR);
      this.#folderOf.set(wd, folder);
      this.#wdOf.set(folder, wd);
    } catch (e) {
      if (!(e instanceof LibcError)) throw e; // no watch left (ENOSPC): the requests sign, as without this
    } finally {
      close(dir);
    }
  }

  /** Reads the events queued, and offers each file written to the signature cache. */
  onReadable(): void {
    if (this.#fd < 0) return;
    for (const { wd, mask, name } of inotifyEventsQueued(this.#fd, SignAhead.#buffer)) {
      if (mask & C.IN_IGNORED) {
        // The folder was removed: its watch ended, and its number may be given again.
        const folder = this.#folderOf.get(wd);
        if (folder !== undefined) this.#wdOf.delete(folder);
        this.#folderOf.delete(wd);
        continue;
      }
      const folder = this.#folderOf.get(wd);
      if (folder === undefined || name.byteLength === 0) continue; // an overflow: what it lost is lost
      let text: string;
      try {
        text = nameText(name);
      } catch {
        continue; // not UTF-8: never served
      }
      this.#offer(folder === "" ? text : `${folder}/${text}`);
    }
  }

  /** Offers the file `path` to be signed ahead, opened beneath the root as a request's file is. */
  #offer(path: string): void {
    const label = JSON.stringify(path);
    if (!this.signatures.signsAhead(label)) return;
    let fd: number;
    try {
      fd = openRead(path, { beneath: this.rootFd() });
    } catch {
      return; // gone meanwhile, or not readable: left to the requests
    }
    try {
      const stat = fstat(fd);
      if (stat.isFile) this.signatures.signAhead(label, fd, stat);
    } finally {
      close(fd);
    }
  }

  /** Ends every watch and starts anew: the root now leads to another tree. */
  restart(): void {
    this.close();
    this.#folderOf.clear();
    this.#wdOf.clear();
    this.#fd = SignAhead.#open();
  }

  /** Stops watching. */
  close(): void {
    if (this.#fd >= 0) close(this.#fd);
    this.#fd = -1;
  }

  static #open(): number {
    try {
      return inotifyInit();
    } catch (e) {
      if (!(e instanceof LibcError)) throw e;
      return -1; // the user's inotify instances are all taken: the requests sign, as without this
    }
  }
}
