/**
 * Atomic publication of a downloaded file: bytes go to a temporary file beside the target (same directory,
 * so the rename cannot cross file systems); only a complete, checked file is fsynced and renamed over the
 * target, and the directory is fsynced so the rename survives a crash. Until then the target is untouched,
 * and on failure the temporary file is removed.
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

/** Metadata applied to the published file. */
export interface PublishMetadata {
  /** Modification time in nanoseconds since the epoch. */
  mtimeNs?: bigint;
  /** Permission bits. */
  mode?: number;
}

/** A file being written under a temporary name, published by {@link AtomicFile.commit}. */
export class AtomicFile {
  /** The path the file will have once published. */
  readonly target: string;
  /** The temporary path being written. */
  readonly tempPath: string;
  readonly #file: Deno.FsFile;
  #closed = false;

  private constructor(target: string, tempPath: string, file: Deno.FsFile) {
    this.target = target;
    this.tempPath = tempPath;
    this.#file = file;
  }

  /** Creates the temporary file beside `target`. Throws LocalIoError. */
  static async create(target: string): Promise<AtomicFile> {
    const tempPath = join(
      dirname(target),
      `.${basename(target)}.ferry-${crypto.randomUUID().slice(0, 8)}.part`,
    );
    try {
      const file = await Deno.open(tempPath, { write: true, createNew: true, mode: 0o644 });
      return new AtomicFile(target, tempPath, file);
    } catch (e) {
      throw new LocalIoError(`cannot create ${tempPath}`, e);
    }
  }

  /** Appends all of `chunk`. Throws LocalIoError. */
  async write(chunk: Uint8Array): Promise<void> {
    try {
      let done = 0;
      while (done < chunk.byteLength) done += await this.#file.write(chunk.subarray(done));
    } catch (e) {
      throw new LocalIoError(`cannot write ${this.tempPath}`, e);
    }
  }

  /** fsyncs, applies metadata, renames over the target and fsyncs the directory. Throws LocalIoError. */
  async commit(meta: PublishMetadata = {}): Promise<void> {
    try {
      await this.#file.sync();
      if (meta.mode !== undefined) await Deno.chmod(this.tempPath, meta.mode & 0o777);
      if (meta.mtimeNs !== undefined) {
        const seconds = Number(meta.mtimeNs) / 1e9;
        await this.#file.utime(seconds, seconds);
      }
      this.#file.close();
      this.#closed = true;
      await Deno.rename(this.tempPath, this.target);
    } catch (e) {
      await this.abort();
      throw new LocalIoError(`cannot publish ${this.target}`, e);
    }
    await syncDirectory(dirname(this.target));
  }

  /** Closes and removes the temporary file; never throws. */
  async abort(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.#file.close();
      } catch { /* already closed */ }
    }
    await Deno.remove(this.tempPath).catch(() => {});
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
