/**
 * Atomic publication of a downloaded file: bytes go to a temporary file beside the target (same directory,
 * so the rename cannot cross file systems); only a complete, checked file is fsynced and renamed over the
 * target, and the directory is fsynced so the rename survives a crash. Until then the target is untouched.
 *
 * The temporary file is a *part*, `.NAME.ferry-TAG.part`. When TAG is the server's etag of the version
 * being fetched, the name is deterministic: a later run finds the part, knows which version it belongs to,
 * and resumes it. Every part is held under an exclusive flock while it is written, so two runs never
 * write one part, and a part is deleted (or renamed) only by whoever holds its lock.
 *
 * @module
 */

import { basename, dirname, join } from "node:path";

/** A local I/O failure (the target directory is not writable, the disk is full...). */
export class LocalIoError extends Error {
  /**
   * @param what what ferry was doing
   * @param cause the underlying error
   */
  constructor(what: string, cause: unknown) {
    super(`${what}: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = "LocalIoError";
  }
}

/** Another run is writing the same part: its lock is held. */
export class PartLockedError extends Error {
  /** @param path the part file */
  constructor(path: string) {
    super(`${path} is being written by another ferry run (its lock is held)`);
    this.name = "PartLockedError";
  }
}

/** Metadata applied to the published file. */
export interface PublishMetadata {
  /** Modification time in nanoseconds since the epoch. */
  mtimeNs?: bigint;
  /** Permission bits. */
  mode?: number;
}

/** Tags of parts that cannot be resumed (no etag to resume against) start with this. */
const TEMP_TAG = "tmp-";

/** A tag that can be a part's name: the server's etag when it is a plain token. */
const RESUMABLE_TAG = /^[A-Za-z0-9_-]{1,128}$/;

/** True if `etag` can name a resumable part (a plain token, so it is safe in a file name). */
export function isResumableTag(etag: string): boolean {
  return RESUMABLE_TAG.test(etag) && !etag.startsWith(TEMP_TAG);
}

function partPrefix(target: string): string {
  return `.${basename(target)}.ferry-`;
}

/** The path of `target`'s part for version `tag`. */
export function partPath(target: string, tag: string): string {
  return join(dirname(target), `${partPrefix(target)}${tag}.part`);
}

/** A part found beside a target. */
export interface PartInfo {
  /** Its path. */
  path: string;
  /** The tag in its name (an etag, or a temporary tag). */
  tag: string;
  /** Its size in bytes. */
  size: number;
  /** Its modification time, in milliseconds since the epoch. */
  mtimeMs: number;
}

/** The parts of `target` in its directory, newest first. A missing directory has none. */
export async function findParts(target: string): Promise<PartInfo[]> {
  const dir = dirname(target);
  const prefix = partPrefix(target);
  const parts: PartInfo[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (!entry.isFile || !entry.name.startsWith(prefix) || !entry.name.endsWith(".part")) continue;
      const tag = entry.name.slice(prefix.length, -".part".length);
      const path = join(dir, entry.name);
      const info = await Deno.lstat(path).catch(() => null);
      if (tag === "" || info === null) continue;
      parts.push({ path, tag, size: info.size, mtimeMs: info.mtime?.getTime() ?? 0 });
    }
  } catch (e) {
    // No directory, no parts: creating the part then fails with the error that says why.
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return [];
    throw new LocalIoError(`cannot read directory ${dir}`, e);
  }
  return parts.sort((a, b) => b.mtimeMs - a.mtimeMs);
}

/** The resumable part of `target` with the most recent writes, if any. */
export async function newestResumablePart(target: string): Promise<PartInfo | undefined> {
  return (await findParts(target)).find((p) => isResumableTag(p.tag));
}

/**
 * Removes the parts of `target` other than `keep` (a path): parts of other versions, or left by runs that
 * died. A part whose lock another run holds is left alone.
 */
export async function removeStaleParts(target: string, keep?: string): Promise<void> {
  for (const part of await findParts(target)) {
    if (part.path === keep) continue;
    const file = await Deno.open(part.path, { read: true, write: true }).catch(() => null);
    if (file === null) continue; // gone meanwhile
    try {
      if (await file.tryLock(true)) await Deno.remove(part.path).catch(() => {});
    } finally {
      file.close();
    }
  }
}

/**
 * Every this many bytes written, a part's data is flushed in the background (see AtomicFile's write): a
 * 1 GiB download to disk took 1.23-1.49 s instead of 1.49-1.89 s here, and on a disk slower than the
 * network the fsync at the end no longer waits for the whole file.
 */
const WRITE_BEHIND_BYTES = 64 * 1024 * 1024;

/**
 * A file being written under a part name, published by {@link AtomicFile.commit}. It holds an exclusive
 * flock on its file from creation until it is published, removed or released.
 */
export class AtomicFile {
  /** The path the file will have once published. */
  readonly target: string;
  /** The part being written. */
  readonly tempPath: string;
  /** The tag in the part's name: the etag of the version it holds, or a temporary tag. */
  readonly tag: string;
  readonly #file: Deno.FsFile;
  #size: number;
  #closed = false;
  /** The size at which the last write-behind flush began; the flush running now, and its failure. */
  #flushedAt = 0;
  #flushing: Promise<void> | null = null;
  #flushError: unknown = null;

  private constructor(target: string, tag: string, file: Deno.FsFile, size: number) {
    this.target = target;
    this.tag = tag;
    this.tempPath = partPath(target, tag);
    this.#file = file;
    this.#size = size;
  }

  /** Bytes in the part: what an earlier run left plus what was written since. */
  get size(): number {
    return this.#size;
  }

  /** Creates a new part with a random name beside `target`, for a version that cannot be resumed. */
  static async create(target: string): Promise<AtomicFile> {
    const tag = `${TEMP_TAG}${crypto.randomUUID().slice(0, 8)}`;
    const tempPath = partPath(target, tag);
    let file: Deno.FsFile;
    try {
      file = await Deno.open(tempPath, { read: true, write: true, createNew: true, mode: 0o644 });
    } catch (e) {
      throw new LocalIoError(`cannot create ${tempPath}`, e);
    }
    await file.lock(true); // a new file nobody else has opened: granted at once
    return new AtomicFile(target, tag, file, 0);
  }

  /**
   * Opens (or creates) the part of `target` for version `tag` to append to it, under its lock.
   * Throws PartLockedError if another run holds it, LocalIoError if it cannot be opened.
   */
  static async openPart(target: string, tag: string): Promise<AtomicFile> {
    const path = partPath(target, tag);
    // The lock is taken on an open file; if the part was removed or replaced by its holder between our
    // open and our lock, we hold a lock on a file no longer at that path, and must open it again.
    for (let tries = 0;; tries++) {
      let file: Deno.FsFile;
      try {
        file = await Deno.open(path, { read: true, write: true, create: true, mode: 0o644 });
      } catch (e) {
        throw new LocalIoError(`cannot create ${path}`, e);
      }
      let keep = false;
      try {
        if (!await file.tryLock(true)) throw new PartLockedError(path);
        const opened = await file.stat();
        const atPath = await Deno.stat(path).catch(() => null);
        if (atPath?.ino === opened.ino && atPath?.dev === opened.dev) {
          await file.seek(0, Deno.SeekMode.End);
          keep = true;
          return new AtomicFile(target, tag, file, opened.size);
        }
        if (tries >= 10) throw new LocalIoError(`cannot open ${path}`, "it keeps being replaced");
      } catch (e) {
        if (e instanceof PartLockedError || e instanceof LocalIoError) throw e;
        throw new LocalIoError(`cannot open ${path}`, e);
      } finally {
        if (!keep) file.close();
      }
    }
  }

  /** Empties the part, to write the version it names from its first byte. Throws LocalIoError. */
  async truncate(): Promise<void> {
    try {
      await this.#flushing;
      await this.#file.truncate(0);
      await this.#file.seek(0, Deno.SeekMode.Start);
      this.#size = this.#flushedAt = 0;
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
      while (done < chunk.byteLength) done += this.#file.writeSync(chunk.subarray(done));
      this.#size += chunk.byteLength;
      if (this.#flushing === null && this.#size - this.#flushedAt >= WRITE_BEHIND_BYTES) this.#flushBehind();
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(new LocalIoError(`cannot write ${this.tempPath}`, e));
    }
  }

  /**
   * Starts writing what the part holds to disk (fdatasync on Deno's blocking pool) while the download
   * goes on, so that the fsync before publishing finds little left to write. A failure is kept for
   * {@link commit}: the kernel reports a write-back error once, and it must not be lost.
   */
  #flushBehind(): void {
    this.#flushedAt = this.#size;
    this.#flushing = this.#file.syncData().then(
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
      reader = await Deno.open(this.tempPath, { read: true });
    } catch (e) {
      throw new LocalIoError(`cannot read ${this.tempPath}`, e);
    }
    try {
      const buf = new Uint8Array(1024 * 1024);
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
   * the rename is done, so no other run can take the part meanwhile. Throws LocalIoError.
   */
  async commit(meta: PublishMetadata = {}): Promise<void> {
    try {
      await this.#flushing;
      if (this.#flushError !== null) throw this.#flushError;
      await this.#file.sync();
      if (meta.mode !== undefined) await Deno.chmod(this.tempPath, meta.mode & 0o777);
      if (meta.mtimeNs !== undefined) {
        const seconds = Number(meta.mtimeNs) / 1e9;
        await this.#file.utime(seconds, seconds);
      }
      await Deno.rename(this.tempPath, this.target);
    } catch (e) {
      await this.abort();
      throw new LocalIoError(`cannot publish ${this.target}`, e);
    }
    await this.release();
    await syncDirectory(dirname(this.target));
  }

  /** Removes the part and releases it; never throws. */
  async abort(): Promise<void> {
    if (this.#closed) return;
    await Deno.remove(this.tempPath).catch(() => {});
    await this.release();
  }

  /** Closes the part and releases its lock, leaving it on disk for a later run to resume. */
  async release(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#flushing;
    try {
      this.#file.close();
    } catch { /* already closed */ }
  }
}

async function syncDirectory(dir: string): Promise<void> {
  try {
    const handle = await Deno.open(dir, { read: true });
    try {
      await handle.sync();
    } finally {
      handle.close();
    }
  } catch (e) {
    throw new LocalIoError(`cannot fsync directory ${dir}`, e);
  }
}
