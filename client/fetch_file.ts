/**
 * Fetching one file with `get`, for `client get` and for each file of `client mirror`:
 *
 * - only if changed: the SHA-256 of an existing target goes out as `ifNoneMatch`; an `unchanged` answer
 *   transfers nothing;
 * - resume: bytes received go to the part named after the version's etag (`publish.ts`), which survives
 *   an interrupted run; the next try or run asks for the rest (`offset` = the part's size, `ifMatch` = its
 *   etag), and starts from 0 when the server says the file CHANGED;
 * - verification: size, and SHA-256 of the whole file (the part's bytes from disk plus the new ones)
 *   against the server's, from the header or the trailer; a mismatch removes the part and never touches
 *   the target. `verify: false` keeps the size check and skips the SHA-256, whose cost (about 0.6 s per
 *   GiB on one core) is what bounds a single stream;
 * - atomic publication with the server's mode and mtime;
 * - retries with backoff (`retry.ts`) for what may pass, within the run's deadline.
 *
 * Standard output and devices get the same protocol without a part: a dropped connection resumes from
 * the bytes already written, but what was written cannot be taken back.
 *
 * @module
 */

import type { Hash } from "node:crypto";
import { createSha256, loadHashing } from "../hashing.ts";
import type { Deadline } from "./deadline.ts";
import { C, close, closeInBackground, fstat, LibcError, OPEN, openAt } from "../ffi/libc.ts";
import { classify, ClientError, ExitCode, protocolError, ServerRefusal, usageError } from "./failure.ts";
import { ErrorCode, isSha256Hex, PROTOCOL_VERSION, type Request, type ResponseHeader } from "../framing.ts";
import type { Progress } from "./progress.ts";
import { reopen } from "./local_tree.ts";
import {
  AtomicFile,
  isResumableTag,
  LocalIoError,
  newestResumablePart,
  type Place,
  placeOfPath,
  type PublishMetadata,
  removeStaleParts,
  shownPath,
} from "./publish.ts";
import { withRetries } from "./retry.ts";
import { DELTA_MIN_BYTES, fetchDelta } from "./delta_fetch.ts";
import type { Signature } from "../delta.ts";
import type { ManifestFile } from "./manifest.ts";
import type { Session } from "./session.ts";
import type { Prefetched } from "./signature_prefetch.ts";
import { deviceSink, type Sink, stdoutSink, targetKind } from "./sink.ts";
import { pageAlignedBuffer } from "../ffi/page_aligned.ts";

/** How to fetch. */
export interface FetchOptions {
  /** Retries after the first try. */
  retries: number;
  /** No retry starts later than this after the first try, in milliseconds. */
  retryMaxTimeMs?: number;
  /** The run's deadline. */
  deadline: Deadline;
  /** Shows the transfer. */
  progress: Progress;
  /** Check the SHA-256 of what is received against the server's (the size is always checked). */
  verify: boolean;
  /**
   * What a listing said of the file: a local copy of another size is not hashed (it differs anyway), and
   * one whose SHA-256 equals a listed one is current without asking.
   */
  listed?: { size: number; sha256?: string };
  /**
   * The local copy's SHA-256 when the caller knows it (mirror's state vouches for the copy by its lstat),
   * so that the copy is not read to hash it. Taken only with `listed`, for a copy of the listed size.
   */
  localSha256?: string;
  /** Each request is the last on its connection (a one-file run): the end frame goes out behind it. */
  lastRequest?: boolean;
  /**
   * What a signed manifest says of the file (`trust.ts`): the bytes written must have this size and
   * SHA-256, whatever the server says, and no local hash is offered, so the server cannot call a copy
   * current. Implies the SHA-256 check.
   */
  expected?: ManifestFile;
  /** The file's signature asked for ahead (mirror's large changed files), for a delta. */
  early?: Prefetched;
  /** The old copy's signature as mirror kept it, for a copy its state vouches for (`signature_store.ts`). */
  oldSignature?: Signature;
  /** Told of the signature of a version built by delta and published, with its SHA-256 as checked. */
  onSignature?: (signature: Uint8Array, sha256: string) => void;
  /**
   * Told once the file's bytes are all in and checked, before they are made durable and published: from
   * then on this fetch neither uses the session nor tries again, so the caller may send its next request
   * while the fsync runs.
   */
  onChecked?: () => void;
}

/** What became of one file: a line of `--json` (see README). */
export interface FileReport {
  /** The path on the server. */
  path: string;
  /** Where it went (`-` for standard output). */
  target: string;
  /** The outcome; "deleted" only for `mirror --delete`, "would ..." only for `mirror --dry-run`. */
  status: "updated" | "unchanged" | "deleted" | "failed" | "would update" | "would delete";
  /** Data bytes received in this run. */
  bytes: number;
  /** The file's size, when known. */
  size?: number;
  /** The file's SHA-256 as verified, when known. */
  sha256?: string;
  /** The version's etag, as the server's last answer for the file named it (PROTOCOL.md). */
  etag?: string;
  /** Seconds spent. */
  seconds: number;
  /** Tries made (0 when a listing's hash showed the copy current). */
  attempts: number;
  /** Where the last transfer started, when it resumed a part. */
  resumedFrom?: number;
  /** Bytes of the new version copied from the old copy, when it was fetched by delta. */
  reused?: number;
  /** The server's id of its last answer for this file (from servers that send one). */
  requestId?: string;
  /** Why it failed. */
  error?: ClientError;
  /**
   * True for a file a run gave up on before asking for it (the server unreachable, the deadline passed,
   * nothing more can be written here): `--json` has its line, and people one line for all of them.
   */
  notAttempted?: boolean;
}

/** The server's header for a `get`, checked. */
interface GetHeader {
  size: number;
  offset: number;
  etag?: string;
  sha256?: string;
  unchanged: boolean;
  meta: PublishMetadata;
  requestId?: string;
}

function checkHeader(header: ResponseHeader): GetHeader {
  const { size, offset = 0, etag, sha256, mode, mtimeNs } = header;
  if (!Number.isSafeInteger(size) || size! < 0) throw protocolError("header has no valid size");
  if (!Number.isSafeInteger(offset) || offset < 0 || offset > size!) {
    throw protocolError(`header offset ${offset} is outside the file's ${size} bytes`);
  }
  if (etag !== undefined && typeof etag !== "string") throw protocolError("header etag is not a string");
  if (sha256 !== undefined && !isSha256Hex(sha256)) {
    throw protocolError("header sha256 is not a SHA-256 in hex");
  }
  let mtime: bigint | undefined;
  try {
    mtime = mtimeNs === undefined ? undefined : BigInt(mtimeNs);
  } catch {
    throw protocolError(`header mtimeNs ${JSON.stringify(mtimeNs)} is not a number`);
  }
  return {
    size: size!,
    offset,
    etag,
    sha256,
    unchanged: header.unchanged === true,
    meta: { mtimeNs: mtime, mode: Number.isInteger(mode) ? mode : undefined },
    requestId: typeof header.requestId === "string" ? header.requestId : undefined,
  };
}

/** SHA-256 (hex) of the bytes `chunks` yields, checking the deadline between chunks. */
export async function hashChunks(chunks: AsyncIterable<Uint8Array>, deadline: Deadline): Promise<Hash> {
  await loadHashing();
  const hash = createSha256();
  for await (const chunk of chunks) {
    deadline.check();
    hash.update(chunk);
  }
  return hash;
}

/** A SHA-256 for the bytes to come, or null when not verifying. */
function newHash(verify: boolean): Hash | null {
  return verify ? createSha256() : null;
}

/**
 * The regular file at the place's name, opened for reading (a symlink there followed only if the place
 * says so), if it is one and, when `size` is given, of that size; else null. Throws LibcError.
 */
async function openExisting(place: Place, size?: number): Promise<Deno.FsFile | null> {
  const fd = openRegular(place, size);
  if (fd === null) return null;
  try {
    return await reopen(fd, { write: false });
  } finally {
    close(fd);
  }
}

/** {@link openExisting}'s file as the fd it is opened by, or null. Throws LibcError. */
function openRegular(place: Place, size?: number): number | null {
  let fd: number;
  try {
    // O_NONBLOCK: a FIFO at the name must not block the open; it is not a regular file, and is skipped.
    fd = openAt(place.dir.fd, place.name, OPEN.O_RDONLY | C.O_NONBLOCK, { noSymlinks: !place.followLink });
  } catch (e) {
    // Missing, or a symlink not followed (ELOOP): no local copy to compare, and the fetched file replaces it.
    const code = e instanceof LibcError ? e.errnoName : "";
    if (code === "ENOENT" || code === "ELOOP") return null;
    throw e;
  }
  let regular = false;
  try {
    const info = fstat(fd);
    regular = info.isFile && (size === undefined || info.size === size);
  } finally {
    if (!regular) close(fd);
  }
  return regular ? fd : null;
}

/** The chunks of an open local file; closes it. */
async function* fileChunks(file: Deno.FsFile): AsyncGenerator<Uint8Array> {
  try {
    const buf = pageAlignedBuffer(1024 * 1024);
    for (let n = await file.read(buf); n !== null; n = await file.read(buf)) yield buf.subarray(0, n);
  } finally {
    file.close();
  }
}

/**
 * What this run holds of the file and where new bytes go. Two kinds: a part on disk beside a file
 * target, or a stream (standard output, a device) that cannot take back what it was given.
 */
interface Holder {
  /** Bytes held of version {@link etag}. */
  readonly held: number;
  /** The version held, if any bytes are. */
  readonly etag: string | undefined;
  /** Gets ready for the next request; returns the SHA-256 of the current local copy, if any. */
  prepare(): Promise<string | undefined>;
  /** The server's header arrived: make ready to receive from its offset. */
  accept(header: GetHeader): Promise<void>;
  /** Receives data. */
  write(chunk: Uint8Array): Promise<void>;
  /** SHA-256 (hex) of all bytes held; undefined when not verifying. */
  digest(): string | undefined;
  /** Publishes what is held (all of the file, verified). */
  commit(header: GetHeader): Promise<void>;
  /** The local copy is current: drop leftovers. */
  unchanged(): Promise<void>;
  /** Forgets what is held (corrupt, or another version). False if that cannot be done. */
  discard(): Promise<boolean>;
  /** Releases what it holds, keeping a resumable part for the next run. */
  close(): Promise<void>;
}

/** A file target: parts on disk, published atomically. */
class FileHolder implements Holder {
  /** True once this run tried a delta: later tries fetch the whole file (or resume the part). */
  deltaTried = false;
  #part: AtomicFile | null = null;
  #hash: Hash | null;
  #localSha256: string | undefined | null = null; // null: not computed yet
  #searched = false;
  /** @param knownSha256 the SHA-256 of the local copy (of `listedSize` bytes), when the caller knows it */
  constructor(
    readonly place: Place,
    readonly deadline: Deadline,
    readonly verify: boolean,
    readonly listedSize?: number,
    knownSha256?: string,
  ) {
    this.#hash = newHash(verify);
    if (knownSha256 !== undefined) this.#localSha256 = knownSha256;
  }

  get held(): number {
    return this.#part?.size ?? 0;
  }

  get etag(): string | undefined {
    return this.#part !== null && isResumableTag(this.#part.tag) ? this.#part.tag : undefined;
  }

  async prepare(): Promise<string | undefined> {
    if (this.#localSha256 === null) this.#localSha256 = await this.#hashTarget();
    if (!this.#searched) {
      // A part left by an earlier run: resume it if the server still has its version. Looked for once: a
      // later try of this run resumes the part it holds, or (after a discard) starts from 0.
      this.#searched = true;
      const found = await newestResumablePart(this.place);
      if (found !== undefined) await this.#open(found.tag, true);
    }
    return this.#localSha256;
  }

  async #hashTarget(): Promise<string | undefined> {
    try {
      const file = await openExisting(this.place, this.listedSize);
      if (file === null) return undefined;
      return (await hashChunks(fileChunks(file), this.deadline)).digest("hex");
    } catch (e) {
      if (e instanceof ClientError) throw e;
      throw new LocalIoError(`cannot read ${shownPath(this.place)}`, e);
    }
  }

  /** Opens the part of version `tag`; `resume` hashes what it already holds, else it is emptied. */
  async #open(tag: string, resume: boolean): Promise<void> {
    const part = isResumableTag(tag)
      ? await AtomicFile.openPart(this.place, tag)
      : await AtomicFile.create(this.place);
    this.#part = part;
    if (!resume) await this.#empty();
    else if (this.verify) this.#hash = await hashChunks(part.readBack(), this.deadline);
  }

  /** Empties the part held, to receive its version from byte 0. */
  async #empty(): Promise<void> {
    if (this.#part!.size > 0) await this.#part!.truncate();
    this.#hash = newHash(this.verify);
  }

  async accept(header: GetHeader): Promise<void> {
    const tag = header.etag !== undefined && isResumableTag(header.etag) ? header.etag : undefined;
    if (
      this.#part !== null && tag !== undefined && this.#part.tag === tag && header.offset === this.#part.size
    ) {
      this.#part.expectedSize = header.size;
      return; // resuming: the part holds exactly the bytes before the offset
    }
    if (header.offset !== 0) {
      throw protocolError(`the server sent data from byte ${header.offset}, this run holds ${this.held}`);
    }
    if (this.#part !== null && (tag === undefined || this.#part.tag !== tag)) await this.discard();
    if (this.#part === null) await this.#open(tag ?? "", false);
    else await this.#empty(); // the server did not resume (an older server ignores the offset)
    this.#part!.expectedSize = header.size;
    // Parts of other versions, or left by runs that died, will never be resumed.
    await removeStaleParts(this.place, this.#part!.tempName);
  }

  async write(chunk: Uint8Array): Promise<void> {
    await this.#part!.write(chunk);
    this.#hash?.update(chunk);
    // A guess can be kept up to the end of any write: the hash of what was held then is kept with it.
    this.#guessMarks?.push({ at: this.#part!.size, hash: this.#hash?.copy() ?? null });
  }

  /** While a guess is written: the size held after each write, and the hash of what was held then. */
  #guessMarks: { at: number; hash: Hash | null }[] | null = null;

  /**
   * Starts a part named for no version (not resumed by a later run), for bytes that may begin the next
   * version (a delta's guess, `delta_fetch.ts`); false if bytes are held already.
   */
  async startGuess(): Promise<boolean> {
    if (this.held > 0) return false;
    await this.discard();
    this.#part = await AtomicFile.create(this.place);
    this.#guessMarks = [];
    return true;
  }

  /**
   * The first `upTo` bytes guessed begin the version of `header`: keeps them, as far as the end of the last
   * write within them, and forgets the rest. Returns the bytes kept (0: nothing is, the part is to be
   * discarded); the build goes on after them.
   */
  async keepGuess(header: GetHeader, upTo: number): Promise<number> {
    const marks = this.#guessMarks ?? [];
    this.#guessMarks = null;
    const mark = marks.findLast((m) => m.at <= upTo);
    if (mark === undefined) return 0;
    if (mark.at < this.held) await this.#part!.truncate(mark.at);
    this.#hash = mark.hash;
    this.#part!.expectedSize = header.size;
    await removeStaleParts(this.place, this.#part!.tempName);
    return mark.at;
  }

  digest(): string | undefined {
    return this.#hash?.copy().digest("hex");
  }

  async commit(header: GetHeader): Promise<void> {
    const part = this.#part!;
    this.#part = null;
    await part.commit(header.meta);
  }

  async unchanged(): Promise<void> {
    await this.discard();
    await removeStaleParts(this.place);
  }

  async discard(): Promise<boolean> {
    await this.#part?.abort();
    this.#part = null;
    this.#guessMarks = null;
    this.#hash = newHash(this.verify);
    return true;
  }

  async close(): Promise<void> {
    // A part with bytes of a known version is worth resuming; an empty or unnamed one is not.
    if (this.#part !== null && this.#part.size > 0 && this.etag !== undefined) await this.#part.release();
    else await this.#part?.abort();
    this.#part = null;
  }
}

/** Standard output or a device: bytes written cannot be taken back, so only a clean resume is possible. */
class StreamHolder implements Holder {
  #held = 0;
  #etag: string | undefined;
  readonly #hash: Hash | null;
  constructor(readonly sink: Sink, readonly target: string, verify: boolean) {
    this.#hash = newHash(verify);
  }

  get held(): number {
    return this.#held;
  }

  get etag(): string | undefined {
    return this.#held > 0 ? this.#etag : undefined;
  }

  prepare(): Promise<string | undefined> {
    return Promise.resolve(undefined);
  }

  accept(header: GetHeader): Promise<void> {
    if (header.offset !== this.#held || (this.#held > 0 && header.etag !== this.#etag)) {
      throw new ClientError(
        ExitCode.Protocol,
        `cannot continue ${this.target} after ${this.#held} bytes: the server sent another version or offset`,
      );
    }
    this.#etag = header.etag;
    return Promise.resolve();
  }

  async write(chunk: Uint8Array): Promise<void> {
    await this.sink.write(chunk);
    this.#held += chunk.byteLength;
    this.#hash?.update(chunk);
  }

  digest(): string | undefined {
    return this.#hash?.copy().digest("hex");
  }

  commit(): Promise<void> {
    return this.sink.commit({});
  }

  unchanged(): Promise<void> {
    return Promise.resolve();
  }

  discard(): Promise<boolean> {
    return Promise.resolve(this.#held === 0);
  }

  close(): Promise<void> {
    return this.sink.abort();
  }
}

/** The result of a successful try. */
interface Fetched {
  unchanged: boolean;
  header: GetHeader;
  /** The SHA-256 verified (or, unchanged, matched); undefined when not verifying. */
  sha256?: string;
}

/** One try: request, receive, verify, publish. A part of another version is restarted on the spot. */
async function tryOnce(
  session: Session,
  path: string,
  holder: Holder,
  options: FetchOptions,
  report: FileReport,
): Promise<Fetched> {
  const what = JSON.stringify(path);
  for (let restarted = false;; restarted = true) {
    const prepared = await holder.prepare();
    // With a manifest, the local copy's hash is not offered: a server could answer "unchanged" to anything.
    const localSha256 = options.expected === undefined ? prepared : undefined;
    if (holder instanceof FileHolder && options.verify && !holder.deltaTried && holder.held === 0) {
      holder.deltaTried = true;
      const delta = await tryDelta(session, path, holder, localSha256, options, report);
      if (delta !== null) return delta;
    }
    const request: Request = { v: PROTOCOL_VERSION, op: "get", path };
    if (holder.held > 0 && holder.etag !== undefined) {
      request.offset = holder.held;
      request.ifMatch = holder.etag;
    }
    if (localSha256 !== undefined) request.ifNoneMatch = localSha256;
    let header: GetHeader;
    try {
      header = checkHeader(await session.begin(request, what, { last: options.lastRequest }));
    } catch (e) {
      // What we hold is of a version the server no longer has (CHANGED), or longer than the file it has
      // (BAD_REQUEST for the offset): start again from byte 0, at once, without counting a retry.
      const code = e instanceof ServerRefusal ? e.body.code : "";
      if (
        request.offset !== undefined && !restarted &&
        (code === ErrorCode.Changed || code === ErrorCode.BadRequest)
      ) {
        if (await holder.discard()) continue;
        throw new ClientError(
          ExitCode.Protocol,
          `${what} changed on the server after ${holder.held} bytes were written: cannot start again`,
        );
      }
      throw e;
    }
    const contradiction = manifestContradiction(header, options.expected, what);
    if (contradiction !== null) {
      if (header.unchanged) await session.finish();
      throw contradiction;
    }
    if (header.unchanged) {
      await session.finish();
      await holder.unchanged();
      return { unchanged: true, header, sha256: header.sha256 ?? localSha256 };
    }
    await holder.accept(header);
    options.progress.start(path, header.size, header.offset);
    let end;
    try {
      end = await session.readBody(header.size - header.offset, async (chunk) => {
        await holder.write(chunk);
        report.bytes += chunk.byteLength;
        options.progress.advance(chunk.byteLength);
      });
    } catch (e) {
      // FILE_CHANGED: the bytes of this answer are not the file's (the server padded the frame).
      if (e instanceof ServerRefusal && e.body.code === ErrorCode.FileChanged && !await holder.discard()) {
        throw new ClientError(ExitCode.Protocol, `${e.message}; bytes already written cannot be taken back`);
      }
      throw e;
    } finally {
      options.progress.end();
    }
    return await verifyAndCommit(holder, header, header.sha256 ?? end.sha256, what, options);
  }
}

/**
 * With a manifest: the refusal of an answer the manifest contradicts before any byte is written (an
 * "unchanged" that was not asked for, another size, or the server's own SHA-256 another); else null.
 */
function manifestContradiction(
  header: GetHeader,
  expected: ManifestFile | undefined,
  what: string,
): ClientError | null {
  if (expected === undefined) return null;
  const contradiction = header.unchanged
    ? `the server calls ${what} unchanged, but no local copy has the signed manifest's SHA-256`
    : header.size !== expected.size
    ? `the server's ${what} has ${header.size} bytes, the signed manifest says ${expected.size}`
    : header.sha256 !== undefined && header.sha256 !== expected.sha256
    ? `the server's ${what} has SHA-256 ${header.sha256}, the signed manifest says ${expected.sha256}`
    : null;
  return contradiction === null
    ? null
    : new ClientError(ExitCode.Verification, `${contradiction}: not published`);
}

/**
 * Checks that `holder` has the whole file with the `expected` SHA-256 (the signed manifest's when there
 * is one, else the server's), and publishes it.
 */
async function verifyAndCommit(
  holder: Holder,
  header: GetHeader,
  expected: string | undefined,
  what: string,
  { expected: signed, onChecked }: Pick<FetchOptions, "expected" | "onChecked">,
): Promise<Fetched> {
  const actual = holder.digest();
  const wanted = signed?.sha256 ?? expected;
  const mismatch = holder.held !== header.size
    ? `received ${holder.held} bytes, the server announced ${header.size}`
    : signed !== undefined && holder.held !== signed.size
    ? `received ${holder.held} bytes of ${what}, the signed manifest says ${signed.size}: not published`
    : wanted !== undefined && actual !== undefined && wanted !== actual
    ? `SHA-256 mismatch for ${what}: received ${actual}, the ${
      signed !== undefined ? "signed manifest" : "server"
    } has ${wanted}${signed !== undefined ? ": not published" : ""}`
    : null;
  if (mismatch !== null) {
    // The part is corrupt: the next try starts from byte 0 (a stream cannot: what is written stays). Bytes
    // unlike the signed ones but like the server's own hash are what it has: asking again brings the same;
    // bytes unlike both were damaged on the way.
    const discarded = await holder.discard();
    const retryable = discarded && (signed === undefined || (expected !== undefined && expected !== actual));
    throw new ClientError(ExitCode.Verification, mismatch, { retryable });
  }
  onChecked?.();
  await holder.commit(header);
  return { unchanged: false, header, sha256: actual };
}

/**
 * Fetches by delta (`delta_fetch.ts`) when an old copy of at least {@link DELTA_MIN_BYTES} is at the
 * target; null when there is none, or the server refused a step: the caller then gets the whole file.
 */
async function tryDelta(
  session: Session,
  path: string,
  holder: FileHolder,
  localSha256: string | undefined,
  options: FetchOptions,
  report: FileReport,
): Promise<Fetched | null> {
  // The copy is read through `old`, and held by `held` until the end: once the delta's file replaces it,
  // the last close of it frees its blocks (6 ms for 20 MiB here), which is let go of on Deno's blocking
  // pool while the caller goes on with the next file.
  let held: number | null, old: Deno.FsFile;
  try {
    held = openRegular(holder.place);
    if (held === null) return null;
    try {
      old = await reopen(held, { write: false });
    } catch (e) {
      close(held);
      throw e;
    }
  } catch (e) {
    throw new LocalIoError(`cannot read ${shownPath(holder.place)}`, e);
  }
  try {
    if (old.statSync().size < DELTA_MIN_BYTES) return null;
    const result = await fetchDelta({
      session,
      path,
      old,
      expectedSize: holder.listedSize,
      localSha256,
      checkHeader,
      target: holder,
      deadline: options.deadline,
      progress: options.progress,
      onReceived: (n) => report.bytes += n,
      early: options.early,
      oldSignature: options.oldSignature,
    });
    if (result === null) return null;
    const contradiction = manifestContradiction(result.header, options.expected, JSON.stringify(path));
    if (contradiction !== null) {
      await holder.discard(); // what the delta built is not the signed file: nothing of it is kept
      throw contradiction;
    }
    if (result.header.unchanged) {
      await holder.unchanged();
      return { unchanged: true, header: result.header, sha256: result.sha256 };
    }
    report.reused = result.reused;
    let fetched: Fetched;
    try {
      fetched = await verifyAndCommit(holder, result.header, result.sha256, JSON.stringify(path), options);
    } catch (e) {
      // A kept signature that was not the old copy's (a change its lstat did not show) built a wrong file,
      // now discarded: the file is fetched whole instead. (Only a failed check: after it, the session may
      // be another file's already, see onChecked.)
      const failedCheck = e instanceof ClientError && e.exitCode === ExitCode.Verification;
      if (result.plannedFromKept && failedCheck && holder.held === 0) {
        delete report.reused;
        return null;
      }
      throw e;
    }
    if (result.signature !== undefined && fetched.sha256 !== undefined) {
      options.onSignature?.(result.signature, fetched.sha256);
    }
    return fetched;
  } finally {
    old.close();
    await closeInBackground(held);
  }
}

/**
 * Fetches `path` from the server into `target`: a path the user wrote (a file, a device, or `-` for
 * standard output), or a place in a directory already open (mirror's, whose files are always published
 * by rename). Never throws.
 */
export async function fetchFile(
  session: Session,
  path: string,
  target: string | Place,
  options: FetchOptions,
): Promise<FileReport> {
  const started = performance.now();
  if (options.expected !== undefined) options = { ...options, verify: true, listed: options.expected };
  const shown = typeof target === "string" ? target : shownPath(target);
  const report: FileReport = { path, target: shown, status: "failed", bytes: 0, seconds: 0, attempts: 0 };
  let holder: Holder | null = null;
  let ownPlace: Place | null = null;
  try {
    const kind = typeof target === "string" ? await targetKind(target) : "file";
    if (options.expected !== undefined && kind !== "file") {
      // Bytes given to a stream cannot be taken back when they fail the check.
      throw usageError(
        `--trust-key needs a file to write to: ${shown} cannot take back what fails the check`,
      );
    }
    if (options.verify) await loadHashing(); // hashChunks, used for a local copy either way, loads it itself
    if (kind === "file") {
      let place: Place;
      if (typeof target === "string") place = ownPlace = placeOfPath(target);
      else place = target;
      const fileHolder = new FileHolder(
        place,
        options.deadline,
        options.verify,
        options.listed?.size,
        options.listed === undefined ? undefined : options.localSha256,
      );
      holder = fileHolder;
      const listedSha = options.listed?.sha256;
      if (listedSha !== undefined && await fileHolder.prepare() === listedSha) {
        // The listing already told the file's hash, and the local copy has it: nothing to ask.
        await fileHolder.unchanged();
        return Object.assign(report, { status: "unchanged", size: options.listed!.size, sha256: listedSha });
      }
    } else {
      const sink = kind === "stdout" ? stdoutSink() : await deviceSink(shown);
      holder = new StreamHolder(sink, shown, options.verify);
    }
    const active = holder;
    // Once the caller was told the session is free, a failure (of the publishing) is not tried again.
    let checked = false;
    const onChecked = options.onChecked;
    const attemptOptions = onChecked === undefined ? options : {
      ...options,
      onChecked: () => {
        checked = true;
        onChecked();
      },
    };
    const fetched = await withRetries((n) => {
      report.attempts = n;
      return tryOnce(session, path, active, attemptOptions, report);
    }, {
      retries: options.retries,
      maxTimeMs: options.retryMaxTimeMs,
      signal: options.deadline.signal,
      verdict: (e) => checked ? { retryable: false } : classify(e),
    });
    report.status = fetched.unchanged ? "unchanged" : "updated";
    report.size = fetched.header.size;
    report.sha256 = fetched.sha256;
    report.etag = fetched.header.etag;
    if (fetched.header.offset > 0 && !fetched.unchanged) report.resumedFrom = fetched.header.offset;
    report.requestId = fetched.header.requestId;
  } catch (e) {
    report.error = options.deadline.expired ? options.deadline.error() : classify(e);
    report.requestId = report.error.requestId;
  } finally {
    await holder?.close();
    ownPlace?.dir.close();
    report.seconds = (performance.now() - started) / 1000;
  }
  return report;
}
