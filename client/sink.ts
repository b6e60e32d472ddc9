/**
 * Where received bytes go: standard output, a device written in place (such as /dev/null, which cannot be
 * renamed over), or a file published atomically (`publish.ts`). One interface for all three, so the
 * transfer code does not care which.
 *
 * @module
 */

import { isDirectory } from "./local_tree.ts";
import { AtomicFile, LocalIoError, placeOfPath, type PublishMetadata } from "./publish.ts";

/** A place the body goes. */
export interface Sink {
  /** Writes all of `chunk`. Throws LocalIoError. */
  write(chunk: Uint8Array): Promise<void>;
  /** Completes the output (publishes a file). Throws LocalIoError. */
  commit(meta: PublishMetadata): Promise<void>;
  /** Gives up: a file's temporary part is removed; never throws. */
  abort(): Promise<void>;
}

/** What a target names: standard output (`-`), a device or FIFO, or a regular file (existing or not). */
export type TargetKind = "stdout" | "device" | "file";

/**
 * True when `-o OUT` names a directory to put the file in, under its own name, as `cp` and `curl
 * --output-dir` do: OUT is a directory, or is written as one (with a trailing `/`).
 */
export function intoDirectory(output: string): boolean {
  return output.endsWith("/") || isDirectory(output);
}

/** Tells what `target` names. A directory counts as a file (`get` puts its file in one: intoDirectory). */
export async function targetKind(target: string): Promise<TargetKind> {
  if (target === "-") return "stdout";
  const info = await Deno.stat(target).catch(() => null);
  return info !== null && !info.isFile && !info.isDirectory ? "device" : "file";
}

/** Standard output. */
export function stdoutSink(): Sink {
  return {
    write: async (chunk) => {
      try {
        let done = 0;
        while (done < chunk.byteLength) done += await Deno.stdout.write(chunk.subarray(done));
      } catch (e) {
        throw new LocalIoError("cannot write to standard output", e);
      }
    },
    commit: async () => {},
    abort: async () => {},
  };
}

/** A device or FIFO such as /dev/null: written in place, since it cannot be renamed over. */
export async function deviceSink(target: string): Promise<Sink> {
  let device: Deno.FsFile;
  let charDevice: boolean;
  try {
    device = await Deno.open(target, { write: true });
    charDevice = (await device.stat()).isCharDevice === true;
  } catch (e) {
    throw new LocalIoError(`cannot open ${target}`, e);
  }
  let closed = false;
  const close = () => {
    if (!closed) device.close();
    closed = true;
    return Promise.resolve();
  };
  return {
    write: async (chunk) => {
      try {
        let done = 0;
        // A character device (/dev/null) takes writes at once: no thread hop. A FIFO may block: async.
        while (done < chunk.byteLength) {
          const rest = chunk.subarray(done);
          done += charDevice ? device.writeSync(rest) : await device.write(rest);
        }
      } catch (e) {
        throw new LocalIoError(`cannot write ${target}`, e);
      }
    },
    commit: close,
    abort: close,
  };
}

/** A file published atomically when committed. */
export function atomicSink(file: AtomicFile): Sink {
  return {
    write: (chunk) => file.write(chunk),
    commit: (meta) => file.commit(meta),
    abort: () => file.abort(),
  };
}

/** Where the bytes for `target` go, for a transfer that cannot be resumed (classic mode). */
export async function openSink(target: string): Promise<Sink> {
  const kind = await targetKind(target);
  if (kind === "stdout") return coalescing(stdoutSink());
  if (kind === "device") return coalescing(await deviceSink(target));
  const place = placeOfPath(target);
  let file: AtomicFile;
  try {
    file = await AtomicFile.create(place);
  } catch (e) {
    place.dir.close();
    throw e;
  }
  const sink = atomicSink(file);
  return coalescing({
    write: sink.write,
    commit: async (meta) => {
      try {
        await sink.commit(meta);
      } finally {
        place.dir.close();
      }
    },
    abort: async () => {
      await sink.abort();
      place.dir.close();
    },
  });
}

const COALESCE_BYTES = 1024 * 1024;

/**
 * Gathers small chunks (classic mode's 1000-byte frames) into 1 MiB writes; large chunks pass straight
 * through, so request mode's big reads are not copied.
 */
export function coalescing(inner: Sink): Sink {
  const buffer = new Uint8Array(COALESCE_BYTES);
  let used = 0;
  const flush = async () => {
    if (used > 0) await inner.write(buffer.subarray(0, used));
    used = 0;
  };
  return {
    write: async (chunk) => {
      // A large chunk goes straight through, but only after what is buffered: order is the file's order.
      if (used + chunk.byteLength > buffer.byteLength || chunk.byteLength >= buffer.byteLength / 2) {
        await flush();
      }
      if (chunk.byteLength >= buffer.byteLength / 2) return inner.write(chunk);
      buffer.set(chunk, used);
      used += chunk.byteLength;
    },
    commit: async (meta) => {
      await flush();
      await inner.commit(meta);
    },
    abort: () => inner.abort(),
  };
}
