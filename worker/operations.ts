/**
 * What a worker answers to each request-mode operation (`get`, `stat`, `list`, `ping`, `sig`), as a list of
 * output pieces for the connection to send: bytes, file bodies, and deferred pieces that complete when
 * a SHA-256 becomes known or the transfer ends. The connection (`connection.ts`) does the I/O; this
 * module decides what to say and opens files only beneath the served directory; `listing.ts` answers
 * `list`, `delta_ops.ts` answers `sig` and a `get` of byte ranges. With tokens, every request passes
 * `access.ts`'s gate first, and every open of a served path its rule.
 *
 * @module
 */

import { type Body, FramedFileBody } from "./bodies.ts";
import { close, type FileStat, fstat, LibcError, openRead, pread } from "../ffi/libc.ts";
import {
  encodeJsonFrame,
  END_FRAME,
  ERROR_CLOSES,
  type ErrorBody,
  ErrorCode,
  FRAME_HEADER_SIZE,
  FrameType,
  PROTOCOL_VERSION,
  putDataFrameHeader,
  putFrameLength,
  type Request,
  type ResponseHeader,
} from "../framing.ts";
import { etagOf, type HashCache, identityOf } from "./hash_cache.ts";
import { createSha256 } from "../hashing.ts";
import { returnReplyBuffer, takeReplyBuffer } from "./reply_pool.ts";
import type { ReplyCache } from "./reply_cache.ts";
import { list } from "./listing.ts";
import { rangedGet, sig } from "./delta_ops.ts";
import { compressedBody } from "./compression.ts";
import type { SignatureCache } from "./signature_cache.ts";
import type { ListingMemo } from "./listing_memo.ts";
import { type Access, authorize, authorizeRequest, ConnectionAccess } from "./access.ts";
import { setWithin } from "./bounded_map.ts";
import { pageAlignedBuffer } from "../ffi/page_aligned.ts";

/** An error answer. */
export class ErrorPiece {
  /** True if the connection closes after this error: its code says so ({@link ERROR_CLOSES}). */
  readonly closes: boolean;
  /** @param body the error frame's JSON */
  constructor(readonly body: ErrorBody) {
    this.closes = ERROR_CLOSES[body.code];
  }
}

/** A piece known only later: `settle` returns the pieces that replace it, or null while it must wait. */
export class Deferred {
  /** @param settle called when the connection reaches this piece, and again after each wake-up */
  constructor(readonly settle: () => Piece[] | null) {}
}

/** One piece of a reply. */
export type Piece = Uint8Array | Body | Deferred | ErrorPiece;

/** A reply to one request. */
export interface Reply {
  /** The request as it appears in the log. */
  label: string;
  /** What to send, in order. */
  pieces: Piece[];
  /** Files to close when the reply is finished or abandoned. */
  files: number[];
  /** The log's result when not plain "ok" (e.g. "unchanged"). */
  result?: string;
  /**
   * HTTP: the connection ends once this reply is sent: "close" (the client asked, or HTTP/1.0), or
   * "linger" (a malformed request: the client's further bytes are read and dropped for a while first).
   */
  closeAfter?: "close" | "linger";
}

/** What an operation needs from its worker. */
export interface ReplyContext {
  /** The served directory, open. */
  rootFd: number;
  /** The worker's SHA-256 cache. */
  hashes: HashCache;
  /** The worker's cache of delta signatures. */
  signatures: SignatureCache;
  /** What the worker's listings learnt of the tree, for the next walk of it. */
  listingMemo: ListingMemo;
  /** Asks the worker to run the connection again (a hash it waited for is known). */
  wake: () => void;
  /** The worker's cached small replies. */
  replies: ReplyCache;
  /** What this connection may reach of the tree (its token), checked before any file is touched. */
  access: Access;
}

/** The JSON of a Header frame with these fields. */
const headerBody = (h: Omit<ResponseHeader, "v" | "status">): ResponseHeader => ({
  v: PROTOCOL_VERSION,
  status: "ok",
  ...h,
});

/** A Header frame with these fields. */
export const header = (h: Omit<ResponseHeader, "v" | "status">): Uint8Array =>
  encodeJsonFrame(FrameType.Header, headerBody(h));

/** A Header frame with these fields and the end frame, in one buffer: an answer without data. */
export const unchangedAnswer = (h: Omit<ResponseHeader, "v" | "status">): Uint8Array =>
  encodeJsonFrame(FrameType.Header, headerBody(h), FRAME_HEADER_SIZE);

/**
 * Answers `request`. With tokens, a request its connection may not make is refused here, before anything
 * touches the file system: the answer, and its timing, do not depend on whether the path exists.
 */
export function answer(request: Readonly<Request>, ctx: ReplyContext): Reply {
  const denied = authorizeRequest(ctx.access, request);
  if (denied !== null) {
    const path = request.path === undefined ? "" : ` ${JSON.stringify(request.path)}`;
    return refusal(`${request.op.toUpperCase()}${path}`, denied);
  }
  switch (request.op) {
    case "ping":
      return { label: "PING", pieces: [header({}), END_FRAME], files: [] };
    case "hello":
      return hello(ctx);
    case "auth":
      return auth(request, ctx);
    case "get":
      return request.ranges === undefined ? get(request, ctx) : rangedGet(request, ctx);
    case "sig":
      return sig(request, ctx);
    case "stat":
      return stat(request, ctx);
    case "list":
      return list(request, ctx);
  }
}

/** Answers `hello`: a fresh nonce for `auth`, or, from a server without tokens, none. */
function hello(ctx: ReplyContext): Reply {
  const nonce = ctx.access instanceof ConnectionAccess ? ctx.access.hello() : undefined;
  return { label: "HELLO", pieces: [header({ nonce }), END_FRAME], files: [] };
}

/** Answers `auth`: the token now in force, or UNAUTHORIZED (which closes the connection). */
function auth(request: Readonly<Request>, ctx: ReplyContext): Reply {
  const label = `AUTH ${JSON.stringify(request.name)}`;
  const name = ctx.access instanceof ConnectionAccess
    ? ctx.access.authenticate(request.name!, request.proof!)
    : null;
  if (name === null) {
    const why = ctx.access.required ? "authentication failed" : "this server takes no tokens";
    return refusal(label, { code: ErrorCode.Unauthorized, message: why });
  }
  return { label, pieces: [header({ name }), END_FRAME], files: [] };
}

/** A reply that is one error. */
export function refusal(label: string, body: ErrorBody): Reply {
  return { label, pieces: [new ErrorPiece(body)], files: [] };
}

/** Opens a regular file beneath the root, or says why not. */
export function openFile(ctx: ReplyContext, path: string): { fd: number; stat: FileStat } | ErrorBody {
  const opened = openBeneath(ctx, path, "file");
  return opened instanceof LibcError ? openError(opened, path) : opened;
}

/**
 * The one open of a path below the served directory, for every operation: a regular file, or a folder
 * (`""` is the root), read-only and never leaving the root. Returns the failed open's LibcError (see
 * {@link openError}), or NOT_A_FILE when the path leads to something else than `kind`, or UNAUTHORIZED
 * when the connection's token does not reach it (`access.ts`'s {@link authorize}, checked before the open).
 */
export function openBeneath(
  ctx: ReplyContext,
  path: string,
  kind: "file" | "directory",
): { fd: number; stat: FileStat } | LibcError | ErrorBody {
  const fd = openBeneathUnlooked(ctx, path, kind);
  if (typeof fd !== "number") return fd;
  const fileStat = fstat(fd);
  if (kind === "file" ? !fileStat.isFile : !fileStat.isDirectory) {
    close(fd);
    const what = kind === "file" ? "a regular file" : "a directory";
    return { code: ErrorCode.NotAFile, message: `${JSON.stringify(path)} is not ${what}` };
  }
  return { fd, stat: fileStat };
}

/**
 * The open of {@link openBeneath} (the token's scopes, then an open beneath the root) without its fstat: for
 * a caller that knows which version of the file it expects and fstats it after reading it (a listing's
 * inlined content). Returns the fd.
 */
export function openBeneathUnlooked(
  ctx: ReplyContext,
  path: string,
  kind: "file" | "directory" = "file",
): number | LibcError | ErrorBody {
  const denied = authorize(ctx.access, path, kind);
  if (denied !== null) return denied;
  try {
    return openRead(path === "" ? "." : path, { beneath: ctx.rootFd });
  } catch (e) {
    if (!(e instanceof LibcError)) throw e;
    return e;
  }
}

/** FILE_CHANGED for `path`: the data sent must be discarded. */
export function fileChanged(path: string): ErrorPiece {
  return new ErrorPiece({
    code: ErrorCode.FileChanged,
    message: `${JSON.stringify(path)} changed while it was being sent: discard the data`,
  });
}

/**
 * A piece that waits for the file's SHA-256 (hashed by the worker's shared jobs), then becomes
 * `then(sha256)`; a file that changed while being hashed becomes FILE_CHANGED.
 */
function withHash(
  ctx: ReplyContext,
  path: string,
  file: { fd: number; stat: FileStat },
  then: (sha256: string) => Piece[],
): Deferred {
  let result: string | null | undefined;
  let asked = false;
  return new Deferred(() => {
    if (!asked) {
      asked = true;
      ctx.hashes.request(identityOf(file.stat), file.fd, file.stat.size, JSON.stringify(path), (sha) => {
        result = sha;
        ctx.wake();
      });
    }
    if (result === undefined) return null;
    return result === null ? [fileChanged(path)] : then(result);
  });
}

function get(request: Readonly<Request>, ctx: ReplyContext): Reply {
  const path = request.path!;
  const offset = request.offset ?? 0;
  const label = `GET ${JSON.stringify(path)}${offset > 0 ? ` offset=${offset}` : ""}`;
  // A client that offers zstd gets its answer built here, where the sample decides; never a cached raw one.
  const zstd = request.accept?.includes("zstd") === true;
  const cached = offset === 0 && !zstd ? cachedGet(request, ctx, label) : null;
  if (cached !== null) return cached;
  const opened = openFile(ctx, path);
  if (!("fd" in opened)) return refusal(label, opened);
  const { fd, stat: fileStat } = opened;
  const identity = identityOf(fileStat);
  const file: OpenGet = { ctx, path, offset, fd, fileStat, identity, etag: etagOf(identity) };
  if (request.ifMatch !== undefined && request.ifMatch !== file.etag) {
    close(fd);
    return refusal(label, {
      code: ErrorCode.Changed,
      message: `${JSON.stringify(path)} is no longer the version of etag ${request.ifMatch}: start again`,
    });
  }
  if (offset > fileStat.size) {
    close(fd);
    return refusal(label, {
      code: ErrorCode.BadRequest,
      message: `offset ${offset} is beyond the size ${fileStat.size}`,
    });
  }
  const reply: Reply = { label, pieces: [], files: [fd] };
  if (zstd) file.compressed = () => reply.result = "ok zstd";
  const ifNoneMatch = request.ifNoneMatch;
  if (ifNoneMatch !== undefined) reply.label += " ifNoneMatch";
  const answerWith = (sha: string | undefined, read?: Uint8Array): Piece[] => {
    if (sha === undefined || sha !== ifNoneMatch) return sendFile(file, sha, read);
    reply.result = "unchanged";
    return [unchangedGetAnswer(file, sha)];
  };
  const known = ctx.hashes.get(identity);
  // A small file not hashed yet is hashed on the spot, whether or not the client offered its copy's hash.
  const read = known === undefined ? hashSmallFile(file) : undefined;
  const sha = known ?? read?.sha256;
  // A larger one waits for the worker's shared job, if its hash decides the answer; else the hash follows.
  if (sha === undefined && ifNoneMatch !== undefined) {
    reply.pieces.push(withHash(ctx, path, opened, (sha) => answerWith(sha)));
  } else reply.pieces.push(...answerWith(sha, read?.data));
  return reply;
}

/** A `get` whose file is open and checked: what building its reply needs. */
export interface OpenGet {
  /** The worker's caches and wake-up. */
  ctx: ReplyContext;
  /** The path asked for. */
  path: string;
  /** Where the data starts. */
  offset: number;
  /** The file, open; the reply closes it. */
  fd: number;
  /** Its fstat when opened: the version announced. */
  fileStat: FileStat;
  /** That version's identity (`identityOf`). */
  identity: string;
  /** That version's etag. */
  etag: string;
  /** Present when the client offered zstd: called if the answer is sent compressed. */
  compressed?: () => void;
}

/** The whole reply to a `get` from offset 0, from the worker's cache; null if it is not there or stale. */
function cachedGet(request: Readonly<Request>, ctx: ReplyContext, label: string): Reply | null {
  const cached = ctx.replies.lookup(ctx.rootFd, request.path!);
  // A stale ifMatch takes the usual path, which answers CHANGED.
  if (cached === null || (request.ifMatch !== undefined && request.ifMatch !== cached.etag)) return null;
  if (request.ifNoneMatch === undefined) return { label, pieces: [ctx.replies.piece(cached)], files: [] };
  const unchanged = request.ifNoneMatch === cached.sha256;
  return {
    label: `${label} ifNoneMatch`,
    pieces: [unchanged ? cached.unchanged : ctx.replies.piece(cached)],
    files: [],
    result: unchanged ? "unchanged" : undefined,
  };
}

/** The Header frame's fields of a `get`, but the SHA-256. */
export function getFields(file: OpenGet): Omit<ResponseHeader, "v" | "status"> {
  const { fileStat, etag, offset } = file;
  return {
    size: fileStat.size,
    mtimeNs: String(fileStat.mtimeNs),
    mode: fileStat.mode & 0o7777,
    etag,
    offset,
  };
}

/** The answer to a `get` whose `ifNoneMatch` matched: a Header saying so, and no data. */
function unchangedGetAnswer(file: OpenGet, sha256: string): Uint8Array {
  return unchangedAnswer({ ...getFields(file), offset: file.fileStat.size, sha256, unchanged: true });
}

/**
 * The pieces that send the file: a small file with a known hash as one buffer (kept in the reply cache when
 * whole), else a Header, the data frames, and what follows the data.
 */
/** Where {@link hashSmallFile} reads a file; allocated on first use. */
let smallFileBuffer: Uint8Array | null = null;

/**
 * The SHA-256 of a small file not hashed yet, computed on the spot: reading and hashing 64 KiB at most costs
 * less than the background job it would otherwise get (a wake-up, a sendfile, a Trailer), and the reply
 * can then be built whole, sent in one call and cached; with `ifNoneMatch`, the answer is known at once.
 * Most of a mirror's requests are for such files (those its listing did not bring). The hash is kept in
 * this worker only: passing it to the others would cost the master a wake-up per file, more than hashing
 * it again. The bytes read are returned too (valid until the next call), so that the reply is built from
 * them rather than read again. Undefined for a larger file, or one that changed while being read.
 */
function hashSmallFile(file: OpenGet): { sha256: string; data: Uint8Array } | undefined {
  const { ctx, fd, fileStat, identity } = file;
  if (fileStat.size > SMALL_REPLY_BYTES) return undefined;
  smallFileBuffer ??= pageAlignedBuffer(SMALL_REPLY_BYTES);
  const data = smallFileBuffer.subarray(0, fileStat.size);
  const sha256 = readWholeFile(ctx, fd, data, (read) => read === identity, undefined)?.sha256;
  return sha256 === undefined ? undefined : { sha256, data };
}

/**
 * Reads all of the open file `fd` into `into`, which has the size of the version the caller expects, then
 * fstats it: the bytes are that version's when `isVersion` accepts the identity found after the read (a
 * stat taken before the read, by the caller, names the version). Returns that stat and the version's
 * SHA-256: `known`, the worker's, which the caller looked up already, else computed here and kept in this
 * worker only (see {@link hashSmallFile}). Undefined when the file is no longer that version: it ended
 * early, or its identity is another.
 */
export function readWholeFile(
  ctx: ReplyContext,
  fd: number,
  into: Uint8Array,
  isVersion: (identity: string) => boolean,
  known: string | undefined,
): { stat: FileStat; sha256: string } | undefined {
  for (let got = 0; got < into.byteLength;) {
    const n = pread(fd, into.subarray(got), got);
    if (n <= 0) return undefined;
    got += n;
  }
  const stat = fstat(fd), identity = identityOf(stat);
  if (!isVersion(identity)) return undefined;
  if (known !== undefined) return { stat, sha256: known };
  const sha256 = createSha256().update(into).digest("hex");
  ctx.hashes.note(identity, sha256);
  return { stat, sha256 };
}

/**
 * The pieces of a `get` answer with data. `read`: the whole file's bytes, just read and checked against
 * the identity (by {@link hashSmallFile}), which a small reply then sends as they are.
 */
function sendFile(file: OpenGet, sha: string | undefined, read?: Uint8Array): Piece[] {
  const { ctx, path, offset, fd, fileStat, identity, etag } = file;
  const compressed = file.compressed === undefined ? null : compressedBody(fd, offset, fileStat.size);
  if (compressed !== null) {
    file.compressed!();
    return [
      header({ ...getFields(file), sha256: sha, compression: "zstd" }),
      compressed,
      afterData(file, sha),
    ];
  }
  const head = sha !== undefined && offset === 0
    ? wholeFileHeader(identity, fileStat.mode & 0o7777, () => ({ ...getFields(file), sha256: sha }))
    : header({ ...getFields(file), sha256: sha });
  if (sha !== undefined && fileStat.size - offset <= SMALL_REPLY_BYTES) {
    const whole = smallReply(head, fd, offset, fileStat.size, identity, read);
    if (whole !== null) {
      if (offset === 0 && ctx.replies.admit(path, etag)) {
        ctx.replies.store(path, {
          stat: fileStat,
          etag,
          sha256: sha,
          whole, // copied by the cache: the pooled buffer goes back once sent
          unchanged: unchangedGetAnswer(file, sha),
        });
      }
      return [whole];
    }
  }
  return [head, new FramedFileBody(fd, offset, fileStat.size), afterData(file, sha)];
}

/** After the data: the file must still be the version announced, and the hash follows if it was not known. */
export function afterData(file: OpenGet, knownSha: string | undefined): Deferred {
  const { ctx, path, fd, fileStat, identity } = file;
  let hashed: string | null | undefined = knownSha;
  if (knownSha === undefined) {
    ctx.hashes.request(identity, fd, fileStat.size, JSON.stringify(path), (sha) => {
      hashed = sha;
      ctx.wake();
    });
  }
  return new Deferred(() => {
    if (identityOf(fstat(fd)) !== identity) return [fileChanged(path)];
    if (knownSha !== undefined) return [END_FRAME];
    if (hashed === undefined) return null;
    if (hashed === null) return [fileChanged(path)];
    return [encodeJsonFrame(FrameType.Trailer, { sha256: hashed }), END_FRAME];
  });
}

/**
 * Header frames of whole-file replies whose hash is known, by identity and mode. The same few files are
 * asked for again and again, and their Header frame is the same every time: building its JSON was the
 * largest share of a small reply's JavaScript. The frames are shared, never written to.
 */
const wholeFileHeaders = new Map<string, Uint8Array>();
const MAX_WHOLE_FILE_HEADERS = 4096;

function wholeFileHeader(
  identity: string,
  mode: number,
  fields: () => Omit<ResponseHeader, "v" | "status">,
): Uint8Array {
  // The mode is not part of the identity: chmod(1) leaves size and mtime alone.
  const key = `${identity}:${mode}`;
  let frame = wholeFileHeaders.get(key);
  if (frame === undefined) {
    frame = header(fields());
    setWithin(wholeFileHeaders, key, frame, MAX_WHOLE_FILE_HEADERS);
  }
  return frame;
}

/** Replies carrying at most this many file bytes (with a known hash) are built whole and sent at once. */
const SMALL_REPLY_BYTES = 64 * 1024;

/**
 * A whole reply in one buffer: the Header frame `head`, one Data frame with the file's bytes, end frame.
 * One send(2) instead of three sends and a sendfile, for the small files that make up most requests. The
 * buffer is one of `reply_pool.ts`'s, which the connection gives back once it has sent it whole. Null if
 * the file no longer matches the identity announced (the caller then takes the general path, which
 * reports FILE_CHANGED). With `read` (the whole file's bytes, read and checked just now) nothing is read
 * again.
 */
function smallReply(
  head: Uint8Array,
  fd: number,
  offset: number,
  size: number,
  identity: string,
  read?: Uint8Array,
): Uint8Array | null {
  const length = size - offset;
  const dataHeader = length > 0 ? FRAME_HEADER_SIZE + 1 : 0;
  const total = head.byteLength + dataHeader + length + FRAME_HEADER_SIZE;
  const buffer = takeReplyBuffer();
  if (total > buffer.byteLength) {
    returnReplyBuffer(buffer);
    return null;
  }
  const out = buffer.subarray(0, total);
  out.set(head);
  if (read !== undefined && read.byteLength === size) {
    // Read and checked against the identity just now (hashSmallFile): copied, not read again.
    if (length > 0) {
      putDataFrameHeader(out.subarray(head.byteLength), length);
      out.set(read.subarray(offset), head.byteLength + dataHeader);
    }
  } else if (
    !readInto(out, head.byteLength, dataHeader, fd, offset, length) || identityOf(fstat(fd)) !== identity
  ) {
    returnReplyBuffer(buffer);
    return null;
  }
  putFrameLength(out, total - FRAME_HEADER_SIZE, 0); // the end frame
  return out;
}

/** Puts a Data frame with the file's `length` bytes from `offset` at `at` in `out`; false if it came short. */
function readInto(
  out: Uint8Array,
  at: number,
  dataHeader: number,
  fd: number,
  offset: number,
  length: number,
): boolean {
  if (length === 0) return true;
  putDataFrameHeader(out.subarray(at), length);
  const data = out.subarray(at + dataHeader, at + dataHeader + length);
  for (let got = 0; got < length;) {
    const n = pread(fd, data.subarray(got), offset + got);
    if (n <= 0) return false;
    got += n;
  }
  return true;
}

function stat(request: Readonly<Request>, ctx: ReplyContext): Reply {
  const path = request.path!;
  const label = `STAT ${JSON.stringify(path)}`;
  const opened = openFile(ctx, path);
  if (!("fd" in opened)) return refusal(label, opened);
  const { fd, stat: fileStat } = opened;
  const identity = identityOf(fileStat);
  return {
    label,
    files: [fd],
    pieces: [withHash(ctx, path, opened, (sha256) => [
      header({
        size: fileStat.size,
        mtimeNs: String(fileStat.mtimeNs),
        mode: fileStat.mode & 0o7777,
        etag: etagOf(identity),
        sha256,
      }),
      END_FRAME,
    ])],
  };
}

/** The error answer for a failed open. */
export function openError(e: LibcError, path: string): ErrorBody {
  const quoted = JSON.stringify(path);
  switch (e.errnoName) {
    case "ENOENT":
    case "ENOTDIR":
      return { code: ErrorCode.NotFound, message: `${quoted} does not exist` };
    case "EXDEV":
    case "ELOOP":
      return { code: ErrorCode.Forbidden, message: `${quoted} leads outside the served directory` };
    case "EACCES":
    case "EPERM":
      return { code: ErrorCode.Forbidden, message: `${quoted} is not readable by the server` };
    case "ENAMETOOLONG":
      return { code: ErrorCode.Forbidden, message: `${quoted} is too long` };
    // A Unix socket file cannot be opened (ENXIO), nor a device without its driver (ENXIO, ENODEV). A fifo
    // opens (O_NONBLOCK: no waiting for a writer) and is refused after fstat, like any non-regular file.
    case "ENXIO":
    case "ENODEV":
      return { code: ErrorCode.NotAFile, message: `${quoted} is not a regular file` };
    default:
      return { code: ErrorCode.Internal, message: `cannot open ${quoted}: ${e.errnoName}` };
  }
}
