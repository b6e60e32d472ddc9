/**
 * Atomic publication of a downloaded file: bytes go to a temporary file beside the target (same directory,
 * so the rename cannot cross file systems); only a complete, checked file is fsynced and renamed over the
 * target, and the directory is fsynced so the rename survives a crash. Until then the target is untouched.
 *
 * Everything happens by name in a directory held open (a {@link Place}): the part is created, opened,
 * renamed and removed relative to that directory's fd, a symlink at a part's name is never followed,
 * and the rename replaces whatever non-directory stands at the target's name instead of writing through it.
 *
 * The temporary file is a *part*, `.NAME.ferry-TAG.part`. When TAG is the server's etag of the version
 * being fetched, the name is deterministic: a later run finds the part, knows which version it belongs to,
 * and resumes it. Every part is held under an exclusive flock while it is written, so two runs never
 * write one part, and a part is deleted (or renamed) only by whoever holds its lock.
 *
 * @module
 */

import {
  C,
  close,
  fchmod,
  fstat,
  futimens,
  LibcError,
  lstatAt,
  OPEN,
  openAt,
  renameOver,
  unlinkAt,
} from "../ffi/libc.ts";
import { basename, dirname } from "node:path";
import { fileSystemRefusal, LocalDir, LocalIoError, reopen } from "./local_tree.ts";
import { pageAlignedBuffer } from "../ffi/page_aligned.ts";

export { LocalIoError } from "./local_tree.ts";

/** Another run is writing the same part: its lock is held. */
export class PartLockedError extends Error {
  /** @param path the part file */
  constructor(path: string) {
    super(`${path} is being written by another ferry run (its lock is held)`);
    this.name = "PartLockedError";
  }
}

/** True if `e` says the disk or the user's quota is full (ENOSPC, EDQUOT; not EROFS). */
function isDiskFull(e: unknown): boolean {
  const refusal = fileSystemRefusal(e);
  return refusal === "ENOSPC" || refusal === "EDQUOT";
}

/** Metadata applied to the published file. */
export interface PublishMetadata {
  /** Modification time in nanoseconds since the epoch. */
  mtimeNs?: bigint;
  /** Permission bits. */
  mode?: number;
}

/** Where a file is published: a name in a directory held open. */
export interface Place {
  /** The directory; whoever made the place closes it, after the files published in it. */
  dir: LocalDir;
  /** The file's name in it: one path component. */
  name: string;
  /**
   * Whether an existing file at `name` is read through a symlink: yes for `get -o LINK` (the path the
   * user wrote), no for `mirror`, where a symlink there counts as no file and is replaced.
   */
  followLink: boolean;
}

/** How messages name the place's file. */
export function shownPath(place: Place): string {
  return place.dir.shownPath(place.name);
}

/**
 * The place of a path the user wrote (`get -o`, `pull -o`): its directory is opened as the path says,
 * symlinks followed. The caller closes `dir`. Throws LocalIoError.
 */
export function placeOfPath(target: string): Place {
  try {
    return { dir: LocalDir.open(dirname(target)), name: basename(target), followLink: true };
  } catch (e) {
    throw new LocalIoError(`cannot create ${target}`, e);
  }
}

/** Tags of parts that cannot be resumed (no etag to resume against) start with this. */
const TEMP_TAG = "tmp-";

/** A tag that can be a part's name: the server's etag when it is a plain token. */
const RESUMABLE_TAG = /^[A-Za-z0-9_-]{1,128}$/;

/** True if `etag` can name a resumable part (a plain token, so it is safe in a file name). */
export function isResumableTag(etag: string): boolean {
  return RESUMABLE_TAG.test(etag) && !etag.startsWith(TEMP_TAG);
}

/**
 * Longest name a part's name holds whole: with the `.` before it, `.ferry-`, a tag of up to 64 characters
 * (an etag is 32) and `.part`, the part's name stays within NAME_MAX, 255 bytes.
 */
const PART_STEM_BYTES = 255 - ".".length - ".ferry-".length - 64 - ".part".length;

const utf8 = new TextEncoder();

/**
 * What a part's name holds of the file's name `name`: the name itself; for one longer than
 * {@link PART_STEM_BYTES} bytes (a name may have 255), its first whole characters, `~` and 16 hex digits of
 * a hash of all of it (FNV-1a, 64 bits), so that the part of a file of any valid name can be created.
 */
export function partStem(name: string): string {
  // A UTF-16 unit is at most three bytes of UTF-8: most names need no encoding to tell.
  if (3 * name.length <= PART_STEM_BYTES) return name;
  const bytes = utf8.encode(name);
  if (bytes.length <= PART_STEM_BYTES) return name;
  let hash = 0xcbf29ce484222325n;
  for (const byte of bytes) hash = BigInt.asUintN(64, (hash ^ BigInt(byte)) * 0x100000001b3n);
  const suffix = `~${hash.toString(16).padStart(16, "0")}`;
  let cut = PART_STEM_BYTES - suffix.length;
  while ((bytes[cut] & 0xc0) === 0x80) cut--; // not inside a character
  return new TextDecoder().decode(bytes.subarray(0, cut)) + suffix;
}

/** True when a part's name holds `name` as {@link partStem} cuts a long one (it ends in `~` and the hash). */
export function isPartStem(name: string): boolean {
  return /~[0-9a-f]{16}$/.test(name);
}

function partPrefix(name: string): string {
  return `.${partStem(name)}.ferry-`;
}

/** The name of the part of the file `name` for version `tag`. */
export function partName(name: string, tag: string): string {
  return `${partPrefix(name)}${tag}.part`;
}

/** A part found beside a target. */
export interface PartInfo {
  /** Its name, in the target's directory. */
  name: string;
  /** The tag in its name (an etag, or a temporary tag). */
  tag: string;
  /** Its size in bytes. */
  size: number;
  /** Its modification time, in milliseconds since the epoch. */
  mtimeMs: number;
}

/** The parts of the place's file in its directory, newest first: regular files only, symlinks ignored. */
export async function findParts(place: Place): Promise<PartInfo[]> {
  const prefix = partPrefix(place.name);
  const parts: PartInfo[] = [];
  try {
    for await (const entry of Deno.readDir(place.dir.procPath())) {
      if (!entry.isFile || !entry.name.startsWith(prefix) || !entry.name.endsWith(".part")) continue;
      const tag = entry.name.slice(prefix.length, -".part".length);
      let info;
      try {
        info = lstatAt(place.dir.fd, entry.name);
      } catch {
        continue; // gone meanwhile
      }
      if (tag === "" || !info.isFile) continue;
      parts.push({ name: entry.name, tag, size: info.size, mtimeMs: Number(info.mtimeNs / 1_000_000n) });
    }
  } catch (e) {
    throw new LocalIoError(`cannot read directory ${place.dir.shown}`, e);
  }
  return parts.sort((a, b) => b.mtimeMs - a.mtimeMs);
}

/** The resumable part of the place's file with the most recent writes, if any. */
export async function newestResumablePart(place: Place): Promise<PartInfo | undefined> {
  return (await findParts(place)).find((p) => isResumableTag(p.tag));
}

/** A part open twice: libc's fd (fchmod, stat) and Deno's handle of the same open file (writes, locks). */
interface OpenPart {
  fd: number;
  file: Deno.FsFile;
}

function closePart(part: OpenPart): void {
  try {
    part.file.close();
  } catch { /* already closed */ }
  close(part.fd);
}

/**
 * Opens the part `name` in `dir` for reading and writing, `create`: 0, O_CREAT, or O_CREAT | O_EXCL.
 * No symlink is followed (O_EXCL refuses anything at `name`); null when a symlink or anything but a
 * regular file stands there, or a file with another hard link (writing it would change that file too).
 * Throws LibcError.
 */
async function openPartFile(dir: LocalDir, name: string, create: number): Promise<OpenPart | null> {
  let fd: number;
  try {
    // O_NONBLOCK: a FIFO planted at the name must not block the open; the fstat below refuses it.
    fd = openAt(dir.fd, name, OPEN.O_RDWR | C.O_NONBLOCK | create, { mode: 0o644, noSymlinks: true });
  } catch (e) {
    if (e instanceof LibcError && e.errnoName === "ELOOP") return null;
    throw e;
  }
  let part: OpenPart | null = null;
  try {
    const stat = fstat(fd);
    if (stat.isFile && stat.nlink === 1) part = { fd, file: await reopen(fd, { write: true }) };
    return part;
  } finally {
    if (part === null) close(fd);
  }
}

/**
 * Removes the parts of the place's file other than the one named `keep`: parts of other versions, or
 * left by runs that died. A part whose lock another run holds is left alone.
 */
export async function removeStaleParts(place: Place, keep?: string): Promise<void> {
  for (const found of await findParts(place)) {
    if (found.name === keep) continue;
    const part = await openPartFile(place.dir, found.name, 0).catch(() => null);
    if (part === null) continue; // gone meanwhile, or no longer a regular file: not a part to remove
    try {
      if (await part.file.tryLock(true)) {
        try {
          unlinkAt(place.dir.fd, found.name);
        } catch { /* removed meanwhile */ }
      }
    } finally {
      closePart(part);
    }
  }
}

/**
 * Every this many bytes written, a part's data is flushed in the background (see AtomicFile's write): a
 * 1 GiB download to disk took 1.23-1.49 s instead of 1.49-1.89 s here, and on a disk slower than the
 * network the fsync at the end no longer waits for the whole file. At 8 MiB rather than 64, the fsync
 * before publishing a 20 MiB file that delta transfer rebuilt waits for its last few MiB only (7.7 ms
 * against 12 ms here), and a 1 GiB download takes as long.
 */
const WRITE_BEHIND_BYTES = 8 * 1024 * 1024;

/**
 * A file being written under a part name, published by {@link AtomicFile.commit}. It holds an exclusive
 * flock on its file from creation until it is published, removed or released.
 */
export class AtomicFile {
  /** Where the file will be once published. */
  readonly place: Place;
  /** The part's name, in the place's directory. */
  readonly tempName: string;
  /** The tag in the part's name: the etag of the version it holds, or a temporary tag. */
  readonly tag: string;
  readonly #part: OpenPart;
  #size: number;
  #closed = false;
  /**
   * The whole file's size, when the caller knows it: a disk that fills up is then reported with how much
   * room the file needs.
   */
  expectedSize: number | undefined;
  /** The size at which the last write-behind flush began; the flush running now, and its failure. */
  #flushedAt = 0;
  #flushing: Promise<void> | null = null;
  #flushError: unknown = null;

  private constructor(place: Place, tag: string, part: OpenPart, size: number) {
    this.place = place;
    this.tag = tag;
    this.tempName = partName(place.name, tag);
    this.#part = part;
    this.#size = size;
  }

  /** How messages name the file once published. */
  get target(): string {
    return shownPath(this.place);
  }

  /** How messages name the part. */
  get tempPath(): string {
    return this.place.dir.shownPath(this.tempName);
  }

  /** Bytes in the part: what an earlier run left plus what was written since. */
  get size(): number {
    return this.#size;
  }

  /** Creates a new part with a random name beside the place's file, for a version that cannot be resumed. */
  static async create(place: Place): Promise<AtomicFile> {
    const tag = `${TEMP_TAG}${crypto.randomUUID().slice(0, 8)}`;
    const name = partName(place.name, tag);
    let part: OpenPart | null;
    try {
      part = await openPartFile(place.dir, name, OPEN.O_CREAT | OPEN.O_EXCL);
    } catch (e) {
      throw new LocalIoError(`cannot create ${place.dir.shownPath(name)}`, e);
    }
    if (part === null) throw new LocalIoError(`cannot create ${place.dir.shownPath(name)}`, "not a file");
    try {
      await part.file.lock(true); // a new file nobody else has opened: granted at once
    } catch (e) {
      closePart(part);
      throw new LocalIoError(`cannot lock ${place.dir.shownPath(name)}`, e);
    }
    return new AtomicFile(place, tag, part, 0);
  }

  /**
   * Opens (or creates) the part of the place's file for version `tag` to append to it, under its lock.
   * Throws PartLockedError if another run holds it, LocalIoError if it cannot be opened. A symlink or
   * anything but a regular file at its name is removed, never followed, and the part made in its place.
   */
  static async openPart(place: Place, tag: string): Promise<AtomicFile> {
    const name = partName(place.name, tag);
    const shown = place.dir.shownPath(name);
    // The lock is taken on an open file; if the part was removed or replaced by its holder between our
    // open and our lock, we hold a lock on a file no longer at that name, and must open it again.
    for (let tries = 0;; tries++) {
      let part: OpenPart | null;
      try {
        part = await openPartFile(place.dir, name, OPEN.O_CREAT);
        if (part === null && tries < 10) {
          // A symlink or some other non-file at the part's name, which is ferry's: it goes, never followed.
          try {
            unlinkAt(place.dir.fd, name);
          } catch { /* gone meanwhile, or a directory: the next open tells */ }
          continue;
        }
      } catch (e) {
        throw new LocalIoError(`cannot create ${shown}`, e);
      }
      if (part === null) {
        throw new LocalIoError(`cannot create ${shown}`, "something else keeps standing there");
      }
      let keep = false;
      try {
        if (!await part.file.tryLock(true)) throw new PartLockedError(shown);
        const opened = fstat(part.fd);
        let atName = null;
        try {
          atName = lstatAt(place.dir.fd, name);
        } catch (e) {
          if (!(e instanceof LibcError)) throw e;
        }
        if (atName?.ino === opened.ino && atName?.dev === opened.dev) {
          await part.file.seek(0, Deno.SeekMode.End);
          keep = true;
          return new AtomicFile(place, tag, part, opened.size);
        }
        if (tries >= 10) throw new LocalIoError(`cannot open ${shown}`, "it keeps being replaced");
      } catch (e) {
        if (e instanceof PartLockedError || e instanceof LocalIoError) throw e;
        throw new LocalIoError(`cannot open ${shown}`, e);
      } finally {
        if (!keep) closePart(part);
      }
    }
  }

  /**
   * Cuts the part to its first `size` bytes (at most what it holds), to write on from there: 0 empties it,
   * to write the version it names from its first byte. Throws LocalIoError.
   */
  async truncate(size = 0): Promise<void> {
    try {
      await this.#flushing;
      size = Math.min(size, this.#size);
      await this.#part.file.truncate(size);
      await this.#part.file.seek(size, Deno.SeekMode.Start);
      this.#size = size;
      this.#flushedAt = Math.min(this.#flushedAt, size);
    } catch (e) {
      throw new LocalIoError(`cannot truncate ${this.tempPath}`, e);
    }
  }

  /**
   * Appends all of `chunk`. Throws LocalIoError. A regular file's write does not wait on a peer, and the
   * synchronous call skips the thread hop of an async write for every chunk.
   */
  write(chunk: Uint8Array): Promise<void> {
    try {
      let done = 0;
      while (done < chunk.byteLength) done += this.#part.file.writeSync(chunk.subarray(done));
      this.#size += chunk.byteLength;
      if (this.#flushing === null && this.#size - this.#flushedAt >= WRITE_BEHIND_BYTES) this.#flushBehind();
      return Promise.resolve();
    } catch (e) {
      if (isDiskFull(e)) return this.#onDiskFull(e);
      return Promise.reject(new LocalIoError(`cannot write ${this.tempPath}`, e));
    }
  }

  /**
   * The disk (or the user's quota) is full: the part is removed at once, since a part kept for resuming
   * would keep the disk full and make the next run fail the same way, and the error says how much room
   * the file needs.
   */
  async #onDiskFull(e: unknown): Promise<never> {
    const written = this.#size;
    await this.abort();
    const code = (e as { code?: string }).code;
    const needs = this.expectedSize === undefined
      ? `more than the ${written} bytes written`
      : `${this.expectedSize} bytes (${written} were written)`;
    throw new LocalIoError(
      `cannot write ${this.target}`,
      new Error(
        `${code === "EDQUOT" ? "the disk quota is exceeded" : "no space left on the device"} (${code}): ` +
          `the file needs ${needs}; its part was removed`,
        { cause: e }, // the errno, for a run to tell that nothing more can be written (fileSystemRefusal)
      ),
    );
  }

  /**
   * Starts writing what the part holds to disk (fdatasync on Deno's blocking pool) while the download
   * goes on, so that the fsync before publishing finds little left to write. A failure is kept for
   * {@link commit}: the kernel reports a write-back error once, and it must not be lost.
   */
  #flushBehind(): void {
    this.#flushedAt = this.#size;
    this.#flushing = this.#part.file.syncData().then(
      () => {
        this.#flushing = null;
      },
      (e) => {
        this.#flushError ??= e;
        this.#flushing = null;
      },
    );
  }

  /** Reads the part's bytes from the start, in chunks (valid until the next one), e.g. to hash them. */
  async *readBack(): AsyncGenerator<Uint8Array> {
    let reader: Deno.FsFile;
    try {
      reader = await reopen(this.#part.fd, { write: false });
    } catch (e) {
      throw new LocalIoError(`cannot read ${this.tempPath}`, e);
    }
    try {
      const buf = pageAlignedBuffer(1024 * 1024);
      for (let left = this.#size; left > 0;) {
        let n: number | null;
        try {
          n = await reader.read(buf.subarray(0, Math.min(buf.byteLength, left)));
        } catch (e) {
          throw new LocalIoError(`cannot read ${this.tempPath}`, e);
        }
        if (n === null) throw new LocalIoError(`cannot read ${this.tempPath}`, "it is shorter than written");
        left -= n;
        yield buf.subarray(0, n);
      }
    } finally {
      reader.close();
    }
  }

  /**
   * fsyncs, applies metadata, renames over the target and fsyncs the directory. The lock is held until
   * the rename is done, so no other run can take the part meanwhile. The file replaced, if any, is let go
   * of on Deno's blocking pool meanwhile (`renameOver`). Throws LocalIoError.
   */
  async commit(meta: PublishMetadata = {}): Promise<void> {
    let replaced: Promise<void>;
    try {
      await this.#flushing;
      if (this.#flushError !== null) throw this.#flushError;
      await this.#part.file.sync();
      if (meta.mode !== undefined) fchmod(this.#part.fd, meta.mode & 0o777);
      // futimens keeps the nanoseconds, which a time in seconds as a double would round away.
      if (meta.mtimeNs !== undefined) futimens(this.#part.fd, meta.mtimeNs);
      const dir = this.place.dir.fd;
      replaced = renameOver(dir, this.tempName, dir, this.place.name);
    } catch (e) {
      if (isDiskFull(e) || isDiskFull(this.#flushError)) {
        return this.#onDiskFull(isDiskFull(e) ? e : this.#flushError);
      }
      await this.abort();
      throw new LocalIoError(`cannot publish ${this.target}`, e);
    }
    await this.release();
    this.place.dir.sync();
    await replaced;
  }

  /** Removes the part and releases it; never throws. */
  async abort(): Promise<void> {
    if (this.#closed) return;
    try {
      unlinkAt(this.place.dir.fd, this.tempName);
    } catch { /* gone already */ }
    await this.release();
  }

  /** Closes the part and releases its lock, leaving it on disk for a later run to resume. */
  async release(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#flushing;
    closePart(this.#part);
  }
}
