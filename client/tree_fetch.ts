/**
 * `mirror`'s fast path: many files fetched over one connection with their requests pipelined (or, small
 * files a first copy lacks or a later run finds changed, brought by the listing: {@link InlinePublisher}), written to parts beside their targets, and
 * published in batches whose durability costs a `syncfs` call rather than an fsync per file and per
 * directory (the way dpkg unpacks a package):
 *
 * 1. each file's bytes go to its part, `.NAME.ferry-ETAG.part`, created in its directory's fd (no symlink
 *    followed), checked against the server's size and SHA-256, given the server's mode and mtime;
 * 2. once a batch is complete, a `syncfs` puts every part's data on disk, in the background: the next
 *    batch is fetched meanwhile;
 * 3. once that `syncfs` is done, each part of the batch is renamed over its target (renameat within the
 *    directory fd);
 * 4. the next `syncfs` (the next batch's, or one more at the end) makes the renames durable, and only
 *    then are the files reported as updated.
 *
 * A crash before 3 leaves parts, which the next run resumes or removes, and the targets as they were; a
 * crash between 3 and 4 may leave some targets renamed and others not, each either the old or the new
 * version in full. No file is ever published whose bytes are not on disk.
 *
 * What this path does not do it hands back to the caller, who fetches those files one by one with
 * `fetch_file.ts` (resume, delta, retries with backoff): a file with a part already beside it, a file the
 * server changed during the transfer, a connection lost twice while the file was in flight.
 *
 * @module
 */

import type { Hash } from "node:crypto";
import { createSha256, loadHashing } from "../hashing.ts";
import { classify, ClientError, ExitCode, protocolError, ServerRefusal } from "./failure.ts";
import {
  ErrorCode,
  isSha256Hex,
  type ListEntry,
  PROTOCOL_VERSION,
  type Request,
  type ResponseHeader,
} from "../framing.ts";
import type { Deadline } from "./deadline.ts";
import type { LocalDir } from "./local_tree.ts";
import { LocalIoError } from "./local_tree.ts";
import { isResumableTag, partName } from "./publish.ts";
import type { ManifestFile } from "./manifest.ts";
import type { Session } from "./session.ts";
import {
  close,
  fchmod,
  futimens,
  LibcError,
  OPEN,
  openAt,
  pwriteAll,
  renameAt,
  renameOver,
  syncfsInBackground,
  unlinkAt,
} from "../ffi/libc.ts";

/** A file to fetch. */
export interface TreeFile {
  /** Its path on the server. */
  readonly path: string;
  /** Its directory below LOCAL_DIR, held open by the caller until the fetcher is done. */
  readonly dir: LocalDir;
  /** Its name in `dir`. */
  readonly name: string;
  /** SHA-256 of the local copy, sent as `ifNoneMatch`; none when there is no copy. */
  readonly localSha256?: string;
  /**
   * What a signed manifest says of the file: the bytes written must have this size and SHA-256, whatever
   * the server says (and no local hash is offered: the server cannot call the copy current).
   */
  readonly expected?: ManifestFile;
  /**
   * True when a file is at `name` now, which publishing replaces: the rename then holds it open and lets
   * go of it on Deno's blocking pool, where the kernel frees its blocks (`renameOver`). False or absent:
   * a plain rename, which a first copy makes of every file.
   */
  readonly replaces?: boolean;
}

/** Where {@link fetchTree} takes its files from, in order, one at a time. */
export interface TreeFileSource<F extends TreeFile> {
  /** Files not taken yet. */
  readonly waiting: number;
  /** The next file (called only while some are waiting): a source may make its object only now. */
  take(): F;
}

/** What became of a file. */
export type TreeOutcome =
  | {
    /** Published (durable), or found current by the server. */
    status: "updated" | "unchanged";
    /** The file's SHA-256 (undefined only when not verifying and the server sent none). */
    sha256?: string;
    /** The server's etag of this version. */
    etag?: string;
    size: number;
    /** Data bytes received. */
    bytes: number;
    /** From the request to publication. */
    seconds: number;
    /** The server's id of its answer, if it sent one. */
    requestId?: string;
  }
  | { status: "failed"; error: ClientError; bytes: number; seconds: number }
  /** Not done here: fetch it one by one (`fetch_file.ts`). */
  | { status: "handed back"; bytes: number; seconds: number };

/** How to fetch. */
export interface TreeFetchOptions {
  /** Check each file's SHA-256 (the size is always checked). */
  verify: boolean;
  /** The run's deadline: no new request goes out once it has passed. */
  deadline: Deadline;
  /**
   * True once the run fetches and writes nothing more (LOCAL_DIR's file system takes no more writes): what
   * is left is handed back, as when the deadline has passed.
   */
  halted?: () => boolean;
  /** LOCAL_DIR: its file system is the one `syncfs` flushes. */
  root: LocalDir;
  /** Told of each piece of data received, as it arrives (a progress bar). */
  onBytes?: (n: number) => void;
}

/**
 * Requests in flight at most. Their frames (about 100 bytes each) must fit the socket buffers while
 * nobody reads the answers, and enough of them keep the server busy through the round trips.
 */
const WINDOW = 64;

/**
 * Requests go out once this many answers have come in, together in one write: a write per request
 * cost a system call and a wake-up of the server per file (0.8 s of the client's 12 s for 100,000 small
 * files), and the half of the window still in flight keeps the server busy meanwhile.
 */
const REFILL = WINDOW / 2;

/** A batch is published once it holds this many files... */
const BATCH_FILES = 2048;
/** ...or this many bytes, whichever comes first. */
const BATCH_BYTES = 256 * 1024 * 1024;

/**
 * A body at least this large starts the publishing of the files written before it (their `syncfs` runs
 * while it arrives): they would otherwise wait for its transfer, and a run cut short during it would
 * publish none of them.
 */
const LARGE_BODY = 8 * 1024 * 1024;

/** A file whose request is in flight. */
interface InFlight<F extends TreeFile = TreeFile> {
  file: F;
  started: number;
  tries: number;
}

/** A part written and checked, waiting for its batch to be published. */
interface Written<F extends TreeFile = TreeFile> {
  flight: InFlight<F>;
  part: string;
  sha256?: string;
  etag: string;
  size: number;
  requestId?: string;
}

/**
 * Fetches the files of `files` in order, pipelined over `session`, and tells `onOutcome` what became of
 * each, in the order they end. A file is taken from `files` when its request goes out: once told of its
 * outcome, the fetcher holds nothing of it (a first copy of a million files would otherwise hold them all
 * to its end). Throws only for the deadline.
 */
export async function fetchTree<F extends TreeFile>(
  session: Session,
  files: TreeFileSource<F>,
  options: TreeFetchOptions,
  onOutcome: (file: F, outcome: TreeOutcome) => void,
): Promise<void> {
  if (options.verify) await loadHashing();
  // Files not sent yet: those to send again first, then `files`. A run of a million files makes no
  // object per file before its request goes out.
  const again: InFlight<F>[] = [];
  const waiting = () => again.length + files.waiting;
  const take = () => again.shift() ?? { file: files.take(), started: 0, tries: 0 };
  const inFlight: InFlight<F>[] = [];
  const batch = new Batch<F>(options.root, onOutcome);
  const handBack = (flight: InFlight<F>, bytes = 0) =>
    onOutcome(flight.file, { status: "handed back", bytes, seconds: secondsSince(flight.started) });
  const handBackWaiting = () => {
    while (waiting() > 0) handBack(take());
  };

  while (waiting() > 0 || inFlight.length > 0) {
    if (options.deadline.expired || options.halted?.()) break;
    const sending: InFlight<F>[] = [];
    if (inFlight.length <= WINDOW - REFILL) {
      while (inFlight.length + sending.length < WINDOW && waiting() > 0) sending.push(take());
    }
    if (sending.length > 0) {
      try {
        await session.sendAhead(sending.map((f) => requestOf(f.file)));
      } catch {
        // Cannot even send: the one-by-one path has the retries and the backoff for this.
        for (const flight of [...inFlight, ...sending]) handBack(flight);
        inFlight.length = 0;
        handBackWaiting();
        break;
      }
      const now = performance.now();
      for (const flight of sending) {
        flight.started ||= now;
        flight.tries++;
        inFlight.push(flight);
      }
    }
    const flight = inFlight.shift()!;
    const received = { bytes: 0 };
    try {
      const written = await receive(session, flight, options, received, () => batch.flush());
      if ("unchanged" in written) {
        onOutcome(flight.file, {
          status: "unchanged",
          sha256: written.sha256 ?? flight.file.localSha256,
          etag: written.etag,
          size: written.size,
          requestId: written.requestId,
          bytes: 0,
          seconds: secondsSince(flight.started),
        });
      } else if ("handedBack" in written) {
        handBack(flight, received.bytes);
      } else {
        batch.add(written, received.bytes);
      }
    } catch (e) {
      if (e instanceof ServerRefusal && !retriedElsewhere(e)) {
        onOutcome(flight.file, {
          status: "failed",
          error: classify(e),
          bytes: received.bytes,
          seconds: secondsSince(flight.started),
        });
      } else if (e instanceof LocalIoError || (e instanceof ClientError && !e.retryable)) {
        onOutcome(flight.file, {
          status: "failed",
          error: classify(e),
          bytes: received.bytes,
          seconds: secondsSince(flight.started),
        });
      } else if (!(e instanceof ServerRefusal) && flight.tries < 2) {
        again.unshift(flight); // the connection was lost: once more, on a new one
      } else {
        handBack(flight, received.bytes);
      }
    }
    // An error that closed the connection lost the answers still owed: those requests go out again.
    if (session.ahead < inFlight.length) {
      again.unshift(...inFlight.splice(0));
    }
    if (batch.full) await batch.flush();
  }
  for (const flight of inFlight) handBack(flight);
  handBackWaiting();
  await batch.drain();
}

/** A version of a file as a listing's inlined entry describes it: what {@link InlinePublisher} writes. */
export interface InlineVersion {
  size: number;
  etag: string;
  sha256: string;
  mode: number;
  mtimeNs: string;
}

/** A modification time in nanoseconds, as a header or an entry gives it: a decimal string. */
const MTIME_NS = /^-?[0-9]{1,20}$/;

/**
 * The version an inlined listing entry describes, its fields checked as a `get` header's are (its etag
 * names a part); null when the entry is not inlined or lacks any of them.
 */
export function inlineVersionOf(entry: ListEntry): InlineVersion | null {
  const { inline, size, etag, sha256, mode, mtimeNs } = entry;
  if (inline !== true || !isSha256Hex(sha256) || typeof etag !== "string" || !isResumableTag(etag)) {
    return null;
  }
  if (!Number.isInteger(mode) || typeof mtimeNs !== "string" || !MTIME_NS.test(mtimeNs)) return null;
  return { size, etag, sha256, mode: mode!, mtimeNs };
}

/**
 * Files whose bytes came with the listing (its inlined content), written to parts and published in batches
 * exactly as {@link fetchTree} publishes the files it fetches, each file's outcome told to `onOutcome`.
 * Whatever this path cannot do it hands back, as fetchTree does: a part already there, bytes unlike the
 * hash that came with them, the deadline passed.
 */
export class InlinePublisher<F extends TreeFile> {
  readonly #batch: Batch<F>;

  constructor(
    readonly options: TreeFetchOptions,
    readonly onOutcome: (file: F, outcome: TreeOutcome) => void,
  ) {
    this.#batch = new Batch<F>(options.root, onOutcome);
  }

  /** Writes `bytes`, the content of `version` of `file`, into its part, and publishes it with its batch. */
  async write(file: F, version: InlineVersion, bytes: Uint8Array): Promise<void> {
    const flight: InFlight<F> = { file, started: performance.now(), tries: 1 };
    const handBack = () => this.onOutcome(file, { status: "handed back", bytes: 0, seconds: 0 });
    if (this.options.deadline.expired || this.options.halted?.()) return handBack();
    if (this.options.verify) await loadHashing();
    this.options.onBytes?.(bytes.byteLength);
    try {
      const written = await writePart(file, {
        ...version,
        read: (onChunk) => Promise.resolve(void onChunk(bytes)),
        drop: () => Promise.resolve(),
      }, this.options.verify);
      if (written === null) return handBack();
      this.#batch.add({ flight, etag: version.etag, size: version.size, ...written }, bytes.byteLength);
      if (this.#batch.full) await this.#batch.flush();
    } catch (e) {
      if (!(e instanceof LocalIoError)) return handBack(); // e.g. a SHA-256 mismatch: fetched again whole
      this.onOutcome(file, { status: "failed", error: classify(e), bytes: bytes.byteLength, seconds: 0 });
    }
  }

  /** Publishes everything written (see fetchTree's batches). */
  drain(): Promise<void> {
    return this.#batch.drain();
  }
}

/** The process's umask, read once: the kernel takes its bits out of the mode a file is created with. */
let umask: number | undefined;

/**
 * The mode to create a part with, and whether the part then has the file's own permission bits (`mode`,
 * the server's; no set-id bits from a server) without an fchmod(2): one system call fewer per file of a
 * tree, when the umask leaves those bits alone and they let the owner read and write (a part may be
 * resumed by a later run). Without a mode from the server, the part is the owner's alone.
 */
function creationMode(mode: number | undefined): { mode: number; exact: boolean } {
  if (mode === undefined) return { mode: 0o600, exact: true };
  const wanted = mode & 0o777;
  umask ??= Deno.umask();
  const create = wanted | 0o600;
  return { mode: create, exact: (create & ~umask) === wanted };
}

/** Refusals that the one-by-one path may overcome (it waits, resumes, starts again). */
function retriedElsewhere(e: ServerRefusal): boolean {
  const code = e.body.code;
  return code === ErrorCode.Busy || code === ErrorCode.FileChanged || code === ErrorCode.Timeout;
}

function requestOf(file: TreeFile): Request {
  const request: Request = { v: PROTOCOL_VERSION, op: "get", path: file.path };
  if (file.localSha256 !== undefined && file.expected === undefined) request.ifNoneMatch = file.localSha256;
  return request;
}

const secondsSince = (started: number) => started === 0 ? 0 : (performance.now() - started) / 1000;

/**
 * Reads the answer to `flight`'s request into a new part: the part written, the server's word that the
 * local copy is current, or a part of that version found there already (the one-by-one path resumes it).
 */
async function receive<F extends TreeFile>(
  session: Session,
  flight: InFlight<F>,
  { verify, onBytes }: TreeFetchOptions,
  received: { bytes: number },
  beforeLargeBody: () => Promise<void>,
): Promise<
  | Written<F>
  | { unchanged: true; size: number; etag: string; sha256?: string; requestId?: string }
  | { handedBack: true }
> {
  const { file } = flight;
  const header = await session.next(JSON.stringify(file.path));
  const { size, etag, sha256 } = checkHeader(header);
  const requestId = typeof header.requestId === "string" ? header.requestId : undefined;
  if (file.expected !== undefined) {
    await refuseUnlikeManifest(session, file, header.unchanged === true, size, sha256);
  }
  if (header.unchanged === true) {
    await session.finish();
    return { unchanged: true, size, etag, sha256, requestId };
  }
  if (size >= LARGE_BODY) await beforeLargeBody();
  const written = await writePart(file, {
    size,
    etag,
    sha256,
    mode: header.mode,
    mtimeNs: header.mtimeNs,
    read: async (onChunk) =>
      (await session.readBody(size, (chunk) => {
        received.bytes += chunk.byteLength;
        onBytes?.(chunk.byteLength);
        onChunk(chunk);
        return Promise.resolve();
      })).sha256,
    drop: () => session.readBody(size, () => Promise.resolve()).then(() => {}),
  }, verify);
  // A part of this version is there already, from an earlier run: the one-by-one path resumes it.
  if (written === null) return { handedBack: true };
  return { flight, etag, size, requestId, ...written };
}

/** A file's version as the server described it, and the way to its bytes, for {@link writePart}. */
interface PartSource {
  size: number;
  etag: string;
  /** The server's SHA-256 of the version, when it said it before the bytes. */
  sha256?: string;
  mode?: number;
  mtimeNs?: string;
  /** Passes every byte to `onChunk`, in order; resolves with the SHA-256 said after them, if any. */
  read(onChunk: (chunk: Uint8Array) => void): Promise<string | undefined>;
  /** Passes over the bytes, when no part can be made for them. */
  drop(): Promise<void>;
}

/**
 * Writes `source`'s bytes into a new part beside `file` (no symlink followed), checks their size and
 * SHA-256, and gives the part the server's mode and mtime: the part's name and the hash, ready to be
 * published. Null when a part of this version is there already (from an earlier run). A part that fails
 * any check is removed.
 */
async function writePart(
  file: TreeFile,
  source: PartSource,
  verify: boolean,
): Promise<{ part: string; sha256?: string } | null> {
  const { size, etag, sha256, mode, mtimeNs } = source;
  const part = partName(file.name, etag);
  const created = creationMode(mode);
  let fd: number;
  try {
    fd = openAt(file.dir.fd, part, OPEN.O_WRONLY | OPEN.O_CREAT | OPEN.O_EXCL, {
      mode: created.mode,
      noSymlinks: true,
    });
  } catch (e) {
    await source.drop().catch(() => {});
    if (e instanceof LibcError && e.errnoName === "EEXIST") return null;
    throw new LocalIoError(`cannot create ${file.dir.shownPath(part)}`, e);
  }
  let published = false;
  try {
    const hash: Hash | null = verify ? createSha256() : null;
    let offset = 0;
    const trailerSha256 = await source.read((chunk) => {
      pwriteAll(fd, chunk, offset);
      offset += chunk.byteLength;
      hash?.update(chunk);
    });
    if (offset !== size) {
      throw new ClientError(ExitCode.Verification, `received ${offset} bytes, the server announced ${size}`, {
        retryable: true,
      });
    }
    const claimed = sha256 ?? trailerSha256;
    const expected = file.expected?.sha256 ?? claimed;
    const actual = hash?.digest("hex");
    if (expected !== undefined && actual !== undefined && expected !== actual) {
      const by = file.expected !== undefined ? "the signed manifest has" : "the server has";
      throw new ClientError(
        ExitCode.Verification,
        `SHA-256 mismatch for ${JSON.stringify(file.path)}: received ${actual}, ${by} ${expected}`,
        // Bytes unlike the server's own hash were damaged on the way; the server's own bytes come back alike.
        { retryable: claimed !== actual },
      );
    }
    if (!created.exact) fchmod(fd, mode! & 0o777); // no set-id bits from a server
    if (mtimeNs !== undefined) futimens(fd, BigInt(mtimeNs));
    published = true;
    return { part, sha256: actual ?? expected };
  } catch (e) {
    if (e instanceof LibcError) throw new LocalIoError(`cannot write ${file.dir.shownPath(part)}`, e);
    throw e;
  } finally {
    close(fd);
    if (!published) removeQuietly(file.dir, part);
  }
}

/**
 * With a manifest: refuses an answer the manifest contradicts before any byte is written (an "unchanged"
 * that was not asked for, another size, or the server's own SHA-256 another); its body is read and dropped
 * so that the answers behind it stay in step, or the connection closed.
 */
async function refuseUnlikeManifest(
  session: Session,
  file: TreeFile,
  unchanged: boolean,
  size: number,
  sha256: string | undefined,
): Promise<void> {
  const expected = file.expected!;
  const what = JSON.stringify(file.path);
  const contradiction = unchanged
    ? `the server calls ${what} unchanged, but no local copy has the signed manifest's SHA-256`
    : size !== expected.size
    ? `the server's ${what} has ${size} bytes, the signed manifest says ${expected.size}`
    : sha256 !== undefined && sha256 !== expected.sha256
    ? `the server's ${what} has SHA-256 ${sha256}, the signed manifest says ${expected.sha256}`
    : null;
  if (contradiction === null) return;
  if (unchanged) await session.finish();
  // At most the signed size is read and dropped: a body longer than that costs the connection (readBody
  // closes it), never endless data; the answers behind it are then asked for again on a new one.
  else await session.readBody(expected.size, () => Promise.resolve()).catch(() => {});
  throw new ClientError(ExitCode.Verification, `${contradiction}: not published`);
}

/** The fields of a `get` header this path relies on, checked. */
function checkHeader(header: ResponseHeader): { size: number; etag: string; sha256?: string } {
  const { size, offset = 0, etag, sha256, mtimeNs, mode } = header;
  if (!Number.isSafeInteger(size) || size! < 0) throw protocolError("header has no valid size");
  // An unchanged answer's offset is the size (no data follows); any other starts at 0, as asked.
  if (offset !== (header.unchanged === true ? size : 0)) {
    throw protocolError(`header offset ${offset}, none was asked for`);
  }
  if (sha256 !== undefined && !isSha256Hex(sha256)) {
    throw protocolError("header sha256 is not a SHA-256 in hex");
  }
  if (mode !== undefined && !Number.isInteger(mode)) throw protocolError("header mode is not an integer");
  if (mtimeNs !== undefined && !MTIME_NS.test(String(mtimeNs))) {
    throw protocolError(`header mtimeNs ${JSON.stringify(mtimeNs)} is not a number`);
  }
  if (header.unchanged !== true && (typeof etag !== "string" || !isResumableTag(etag))) {
    throw protocolError(`header etag ${JSON.stringify(etag)} cannot name a part`);
  }
  return { size: size!, etag: etag ?? "", sha256 };
}

function removeQuietly(dir: LocalDir, name: string): void {
  try {
    unlinkAt(dir.fd, name);
  } catch { /* gone already, or the directory went away: nothing of ours is left to clean */ }
}

/** A part written and checked, and the bytes received for it. */
interface Held<F extends TreeFile> {
  w: Written<F>;
  bytes: number;
}

/**
 * Parts written and checked, published in batches: one batch is fetched while the disk takes the one
 * before (a `syncfs` on Deno's blocking pool), and the parts of a batch are renamed as soon as it is on
 * disk, between the steps of the fetch (JavaScript runs one thing at a time, so nothing else is touched
 * meanwhile).
 */
class Batch<F extends TreeFile> {
  /** Parts written since the last `syncfs` began. */
  #filling: Held<F>[] = [];
  #bytes = 0;
  /** Parts renamed over their targets, reported once a later `syncfs` has made the renames durable. */
  #renamed: Held<F>[] = [];
  /** The `syncfs` under way, done once its parts are renamed and the renames before it reported. */
  #flushing: Promise<void> | null = null;
  /** What a report threw while no caller was waiting: thrown to the next one. */
  #thrown: unknown = null;
  /** The files replaced by renames, being let go of on Deno's blocking pool (see `renameOver`). */
  #releasing: Promise<void>[] = [];

  constructor(
    readonly root: LocalDir,
    readonly onOutcome: (file: F, outcome: TreeOutcome) => void,
  ) {}

  /** True once the parts written since the last `syncfs` make a batch. */
  get full(): boolean {
    return this.#filling.length >= BATCH_FILES || this.#bytes >= BATCH_BYTES;
  }

  add(w: Written<F>, bytes: number): void {
    this.#filling.push({ w, bytes });
    this.#bytes += w.size;
  }

  /**
   * Starts a `syncfs` for the parts written so far and the renames made so far, once the one under way
   * (if any) is done: at most one runs, so a fetch faster than the disk waits here.
   */
  async flush(): Promise<void> {
    await this.#settled();
    if (this.#filling.length === 0 && this.#renamed.length === 0) return;
    const parts = this.#filling, renamed = this.#renamed;
    this.#filling = [];
    this.#bytes = 0;
    this.#renamed = [];
    this.#flushing = syncfsInBackground(this.root.fd).then(
      () => this.#settle(parts, renamed, null),
      (e) =>
        this.#settle(parts, renamed, new LocalIoError(`cannot write ${this.root.shown} to disk (syncfs)`, e)),
    );
  }

  /** Publishes everything written: every part renamed, the renames durable, every file reported. */
  async drain(): Promise<void> {
    while (this.#flushing !== null || this.#filling.length > 0 || this.#renamed.length > 0) {
      await this.flush();
      await this.#settled();
    }
    await Promise.all(this.#releasing.splice(0));
  }

  /**
   * A `syncfs` is done (or failed): the renames made before it began are durable (or not known to be),
   * and the parts written before it began are on disk, to be renamed (or are not, and are removed).
   */
  #settle(parts: Held<F>[], renamed: Held<F>[], error: LocalIoError | null): void {
    this.#flushing = null;
    try {
      const failure = error === null ? null : classify(error);
      for (const { w, bytes } of renamed) {
        const seconds = secondsSince(w.flight.started);
        if (failure !== null) {
          this.onOutcome(w.flight.file, { status: "failed", error: failure, bytes, seconds });
        } else {
          this.onOutcome(w.flight.file, {
            status: "updated",
            sha256: w.sha256,
            etag: w.etag,
            size: w.size,
            requestId: w.requestId,
            bytes,
            seconds,
          });
        }
      }
      for (const held of parts) {
        const { w, bytes } = held;
        const { dir, name } = w.flight.file;
        let why = failure;
        if (why === null) {
          try {
            if (w.flight.file.replaces === true) {
              this.#releasing.push(renameOver(dir.fd, w.part, dir.fd, name));
            } else renameAt(dir.fd, w.part, dir.fd, name);
            this.#renamed.push(held);
            continue;
          } catch (e) {
            why = classify(new LocalIoError(`cannot publish ${dir.shownPath(name)}`, e));
          }
        }
        removeQuietly(dir, w.part);
        this.onOutcome(w.flight.file, {
          status: "failed",
          error: why,
          bytes,
          seconds: secondsSince(w.flight.started),
        });
      }
    } catch (e) {
      this.#thrown ??= e;
    }
  }

  /** Waits for the `syncfs` under way, if any, and throws what a report threw meanwhile. */
  async #settled(): Promise<void> {
    await this.#flushing;
    const thrown = this.#thrown;
    this.#thrown = null;
    if (thrown !== null) throw thrown;
  }
}
