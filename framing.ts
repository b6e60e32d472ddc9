/**
 * ferry's wire format, in one place: every protocol constant, frame encoding, and the messages of request
 * mode. PROTOCOL.md describes the same thing in prose; the two must agree.
 *
 * A frame is a 4-byte little-endian signed length `L` followed by `L` bytes. `L = 0` is an end frame.
 * In classic mode the bytes are raw (name, then content). In request mode every non-empty frame starts
 * with one type byte ({@link FrameType}); control frames carry a UTF-8 JSON object after it.
 *
 * @module
 */

/** Version of the request-mode protocol spoken by this code. */
export const PROTOCOL_VERSION = 1;

/** Bytes in a frame's length prefix. */
export const FRAME_HEADER_SIZE = 4;

/** Largest content frame of classic mode: the seed's `char buf[1000]`. */
export const CLASSIC_CHUNK = 1000;

/**
 * Largest request frame a server accepts. Far below 16 MiB on purpose: a later HTTP listener on the same
 * port tells `GET ` (0x20544547 read as a length) from a ferry frame by its length being out of range.
 */
export const MAX_REQUEST_FRAME = 64 * 1024;

/** Largest path in a request, in UTF-8 bytes (Linux PATH_MAX). */
export const MAX_PATH_BYTES = 4096;

/**
 * Payload of the data frames a ferry server sends in request mode: the largest whole MiB under
 * {@link MAX_RESPONSE_FRAME}. Each frame costs the server a header write and the reader a header read:
 * with 64 clients fetching one 64 MiB file, 15 MiB frames moved 7.8-8.0 GB/s where 1 MiB frames moved
 * 6.2-6.9 (scripts/bench/tried.md).
 */
export const DATA_FRAME_PAYLOAD = 15 * 1024 * 1024;

/** Largest frame a client accepts in request mode; a larger length is a protocol error. */
export const MAX_RESPONSE_FRAME = 16 * 1024 * 1024 - 1;

/** The type byte at the start of every non-empty request-mode frame. */
export const FrameType = {
  /** Client to server: a request, JSON {@link Request}. */
  Request: 0x52, // 'R'
  /** Server to client: the response header, JSON {@link ResponseHeader}. */
  Header: 0x48, // 'H'
  /** Server to client: file bytes. */
  Data: 0x44, // 'D'
  /** Server to client: fields known only after the data (e.g. a SHA-256), JSON. */
  Trailer: 0x54, // 'T'
  /** Server to client: an error, JSON {@link ErrorBody}. */
  Error: 0x45, // 'E'
  /** Server to client: a batch of a streamed listing's files, JSON {@link ListBatch}. */
  Entries: 0x4c, // 'L'
  /**
   * Server to client, in a `get` answer whose Header names a `compression`: file bytes as one independent
   * compressed chunk, after their uncompressed length (u32, little-endian). See {@link COMPRESSED_PREFIX}.
   */
  Compressed: 0x5a, // 'Z'
} as const;

/** Error codes carried by error frames. */
export const ErrorCode = {
  /** The request frame or its JSON is malformed. */
  BadRequest: "BAD_REQUEST",
  /** The request frame's length is negative or above {@link MAX_REQUEST_FRAME}. */
  TooLarge: "TOO_LARGE",
  /** The request's protocol version is not spoken by this server. */
  UnsupportedVersion: "UNSUPPORTED_VERSION",
  /** The request's operation is unknown. */
  UnknownOp: "UNKNOWN_OP",
  /** The path leaves the served directory, or the file is not readable. */
  Forbidden: "FORBIDDEN",
  /** No such file. */
  NotFound: "NOT_FOUND",
  /** The path names a directory or another non-regular file. */
  NotAFile: "NOT_A_FILE",
  /** No complete request arrived within the server's idle timeout. */
  Timeout: "TIMEOUT",
  /** Every worker is full and the queue too: try again after `retryAfterMs`. */
  Busy: "BUSY",
  /** The file was truncated or rewritten while it was being sent; the data must be discarded. */
  FileChanged: "FILE_CHANGED",
  /** `ifMatch` named another version of the file: start again from offset 0. */
  Changed: "CHANGED",
  /** The server failed to read the file. */
  Internal: "INTERNAL",
  /**
   * No valid token on the connection, a failed `auth`, or a path outside the token's scopes: the same
   * answer whether the path exists or not.
   */
  Unauthorized: "UNAUTHORIZED",
} as const;

/** One of the {@link ErrorCode} values. */
export type ErrorCodeValue = typeof ErrorCode[keyof typeof ErrorCode];

/**
 * Whether the server closes the connection after an error of each code (PROTOCOL.md's table): a request it
 * could not read, a refusal of the whole connection, or data to discard ends it; a refusal of one file
 * leaves it open for the next request.
 */
export const ERROR_CLOSES: Readonly<Record<ErrorCodeValue, boolean>> = {
  [ErrorCode.BadRequest]: true,
  [ErrorCode.TooLarge]: true,
  [ErrorCode.UnsupportedVersion]: true,
  [ErrorCode.UnknownOp]: true,
  [ErrorCode.Forbidden]: false,
  [ErrorCode.NotFound]: false,
  [ErrorCode.NotAFile]: false,
  [ErrorCode.Timeout]: true,
  [ErrorCode.Busy]: true,
  [ErrorCode.FileChanged]: true,
  [ErrorCode.Changed]: false,
  [ErrorCode.Internal]: false,
  [ErrorCode.Unauthorized]: true,
};

/**
 * True if the server closes the connection after an error with `code` ({@link ERROR_CLOSES}); also for a
 * code not in the table (a newer server's), where keeping the connection would be a guess.
 */
export function errorClosesConnection(code: string): boolean {
  return Object.hasOwn(ERROR_CLOSES, code) ? ERROR_CLOSES[code as ErrorCodeValue] : true;
}

/** A SHA-256 as the protocol writes it: 64 lowercase hex digits. */
const SHA256_HEX = /^[0-9a-f]{64}$/;

/** True if `value` is a SHA-256 in the protocol's form (a string of 64 lowercase hex digits). */
export function isSha256Hex(value: unknown): value is string {
  return typeof value === "string" && SHA256_HEX.test(value);
}

/** Operations of request mode. */
export type Operation = "get" | "stat" | "list" | "ping" | "sig" | "hello" | "auth";

// ---- Tokens (PROTOCOL.md, Authentication): the handshake both sides must compute alike.

/** Bytes of the nonce a server sends in answer to `hello`, fresh for each `hello`. */
export const AUTH_NONCE_BYTES = 32;

/**
 * What the HMAC of `auth` covers before the nonce: names the protocol and its version, so a proof made for
 * ferry can never be taken for a MAC of something else made with the same secret. A NUL ends it.
 */
export const AUTH_CONTEXT = "ferry-auth-v1";

/** A token's name: 1 to 64 letters, digits, `.`, `_`, `@` or `-`. */
export const TOKEN_NAME = /^[A-Za-z0-9._@-]{1,64}$/;

/**
 * Most byte ranges one `get` may ask for. A range is two integers of at most 16 digits in JSON (35
 * bytes with its brackets and comma), so this many, with a path of {@link MAX_PATH_BYTES} even when every
 * byte of it is escaped, stays inside a request frame of {@link MAX_REQUEST_FRAME}; a client that needs
 * more sends several requests.
 */
export const MAX_RANGES = 1024;

/**
 * Largest number of entries in a `list` answer given in one Header (a request without `stream`). A
 * streamed listing has no such limit: its entries come in as many {@link FrameType.Entries} frames as
 * they need.
 */
export const MAX_LIST_ENTRIES = 10_000;

/**
 * Largest JSON of one Entries frame of a streamed listing, in bytes: the server starts a new frame before
 * an entry would take a batch beyond it (one entry, whose path is at most {@link MAX_PATH_BYTES}, always
 * fits), so a client can read each batch whole into a small buffer.
 */
export const LIST_BATCH_BYTES = 64 * 1024;

/**
 * Largest file a streamed `list` sends the content of with its entry (`inline`): a first copy of a tree of
 * small files then costs one answer, not a request and an answer per file.
 */
export const MAX_INLINE_FILE = 64 * 1024;

/**
 * Most bytes of inlined content after one Entries frame: the server starts a new batch before a file's
 * content would take the batch's Data frame beyond it, so a client can read that frame whole.
 */
export const INLINE_BATCH_BYTES = 1024 * 1024;

/** How many of the folders and files a listing left out it names (`leftOut.first`); `count` has them all. */
export const LEFT_OUT_SHOWN = 16;

/** A point in time as nanoseconds since the epoch in decimal text (`inlineSince`, `walkedAt`). */
export const NANOSECONDS = /^[0-9]{1,20}$/;

/** Deepest directory level a recursive `list` descends to. */
export const MAX_LIST_DEPTH = 32;

/**
 * Most folder digests a streamed `list` may carry in `known`: 2,048 of 22 characters (some 51 KB as JSON)
 * keep the request under {@link MAX_REQUEST_FRAME}, with room for its other fields. A client holding more
 * folders names those with the most files.
 */
export const MAX_KNOWN_FOLDERS = 2048;

/**
 * Most files a folder may hold directly for the server to digest it (`known`): it looks at all of them
 * before listing any (over as many turns as it takes), and keeps what it found until they are listed.
 */
export const MAX_KNOWN_FOLDER_FILES = 1024;

/** A folder digest (`known`): 16 bytes of SHA-256 in base64url, without padding. */
export const FOLDER_DIGEST = /^[A-Za-z0-9_-]{22}$/;

// ---- What a server promises about the time and bytes a connection may take (PROTOCOL.md, Connections).

/**
 * After an error that closes the connection, the server reads and discards what the client still sends
 * (so that the error frame is not destroyed by a reset) for at most this long, in milliseconds...
 */
export const LINGER_TIME_MS = 5000;

/** ...and at most this long without a byte, in milliseconds... */
export const LINGER_TIMEOUT_MS = 2000;

/** ...and at most this many bytes; then it closes. */
export const LINGER_BYTES = 1024 * 1024;

/** A request-mode request: the JSON of a Request frame. */
export interface Request {
  /** Protocol version; {@link PROTOCOL_VERSION}. */
  v: number;
  /** The operation. */
  op: Operation;
  /** Path relative to the served directory (for `get`, `stat`, `list`; `""` is the root for `list`). */
  path?: string;
  /** `get`: first byte to send (resume). */
  offset?: number;
  /** `get`: send only if the file is still this version (an `etag` from an earlier header). */
  ifMatch?: string;
  /** `get`: if the file's SHA-256 is this, answer `unchanged` without data. */
  ifNoneMatch?: string;
  /** `list`: descend into subdirectories. */
  recursive?: boolean;
  /** `list`: send the entries in Entries frames after the Header, without the one-Header limit. */
  stream?: boolean;
  /** `list`: leave each entry's `mtimeNs` and `mode` out (a client that takes them from `get`'s header). */
  brief?: boolean;
  /** Recursive `list`: list each empty folder below `path` too, as `{"emptyFolder": PATH}`. */
  folders?: boolean;
  /**
   * Streamed `list`: send the content of each listed file of at most this many bytes (at most
   * {@link MAX_INLINE_FILE}) with its entry, in a Data frame after its Entries frame; 0 or absent, none.
   */
  inline?: number;
  /**
   * Streamed `list`: send the content of the files whose ctime is at or after this time (nanoseconds since
   * the epoch as decimal text), of at most `inline` bytes ({@link MAX_INLINE_FILE} without it): the
   * `walkedAt` of an earlier listing of the same tree, so that the content comes of what changed since (a
   * file written, copied in, renamed in or replaced has a new ctime; none can be set back). A server that
   * predates it ignores it, and sends no content.
   */
  inlineSince?: string;
  /**
   * Streamed `list`: the digests of the folders whose files the client holds as an earlier listing gave
   * them (`folderDigest` of hashing.ts), at most {@link MAX_KNOWN_FOLDERS}. A folder whose digest is
   * among them is sent as one {@link FolderRecord} instead of an entry per file. A server that predates it
   * ignores it.
   */
  known?: string[];
  /**
   * Streamed `list` with `known`: the `walkedAt` of the listing the client's copy was made from
   * (nanoseconds since the epoch as decimal text). A folder the server digests, whose digest is not in
   * `known`, is then sent as one {@link PartialRecord} and entries for the files changed since, when that
   * saves entries. A server that predates it ignores it.
   */
  knownSince?: string;
  /**
   * `get`: send only these `[offset, length]` byte ranges of the file, concatenated (delta transfer):
   * sorted, not overlapping, none empty, all within the file, at most {@link MAX_RANGES}; needs `ifMatch`.
   */
  ranges?: [number, number][];
  /** `auth`: the token's name. */
  name?: string;
  /** `auth`: HMAC-SHA256 over {@link AUTH_CONTEXT}, NUL, the nonce and the name, keyed by the secret; hex. */
  proof?: string;
  /**
   * `get` and a streamed `list`: the compressions the client can decode ({@link COMPRESSIONS}), for a server
   * that may then send Compressed frames; absent, the answer is exactly that of a server without compression.
   */
  accept?: string[];
}

/** One file of a `list` answer. */
export interface ListEntry {
  /** Path relative to the served directory. */
  path: string;
  /** Size in bytes. */
  size: number;
  /** Modification time in nanoseconds, decimal string; not in a `brief` listing. */
  mtimeNs?: string;
  /** Permission bits; not in a `brief` listing. */
  mode?: number;
  /** SHA-256, hex, when the server knows it already. */
  sha256?: string;
  /** The version's etag, as in a `get` header. */
  etag?: string;
  /**
   * True when the file's bytes come with the entry (a streamed `list` with `inline`): in the Data frame after
   * its Entries frame. Such an entry always has `sha256`, `mtimeNs` and `mode`, of the bytes sent.
   */
  inline?: true;
}

/**
 * What a streamed `list` sends, among its entries, for a folder whose digest the request named in `known`:
 * the folder's files are those the client holds, so none of them is listed. Its subfolders are listed as
 * usual.
 */
export interface FolderRecord {
  /** The folder's path relative to the served directory (`""` for the root). */
  folder: string;
  /** How many files the folder holds directly: those the digest was made of. */
  files: number;
}

/**
 * What a streamed `list` with `knownSince` sends for a folder whose digest is not in `known`, before the
 * entries of its files changed since (those whose ctime is `knownSince` or later): the client takes the
 * others from the listing its copy was made from, once their names and etags, with those of `changed` in
 * place, make `files` and `digest`.
 */
export interface PartialRecord extends FolderRecord {
  /** The digest of the folder as it is (as in `known`). */
  digest: string;
  /** The name and etag of each file changed since `knownSince`, in the listing's order. */
  changed: [string, string][];
  /**
   * The names of all the folder's files, in the listing's order, when names may have been added or
   * removed since (the folder's own ctime is `knownSince` or later); absent, they are those of the
   * listing the client's copy was made from.
   */
  names?: string[];
}

/**
 * Most bytes of a {@link PartialRecord}'s JSON: a folder whose record would be longer is listed file by
 * file, so that a record always fits an Entries frame with room to spare.
 */
export const MAX_PARTIAL_RECORD_BYTES = 16 * 1024;

/** A folder or file a listing could not include, and why. */
export interface LeftOutEntry {
  /** Path relative to the served directory (a name that is not UTF-8 is shown with U+FFFD in its place). */
  path: string;
  /** Why it was left out, for humans: e.g. `not readable by the server (EACCES)`. */
  reason: string;
}

/** What a listing left out: every folder it could not read and every entry it could not serve. */
export interface LeftOut {
  /** How many were left out. */
  count: number;
  /** The first {@link LEFT_OUT_SHOWN} of them, in listing order. */
  first: LeftOutEntry[];
}

/** The JSON of an Entries frame: one batch of a streamed listing. */
export interface ListBatch {
  /** The files, in listing order. */
  entries: ListEntry[];
}

/** The JSON of the Trailer that ends a streamed listing. */
export interface ListTrailer {
  /** Entries sent in all the Entries frames. */
  listed: number;
  /** True if anything was left out: the listing is not the whole tree. */
  truncated: boolean;
  /** What was left out. */
  leftOut: LeftOut;
}

/** The JSON of a Header frame. */
export interface ResponseHeader {
  /** Protocol version of the server. */
  v: number;
  /** Always "ok": failures are Error frames. */
  status: "ok";
  /** File size in bytes (the whole file, whatever the offset). */
  size?: number;
  /** Modification time in nanoseconds since the epoch, as a decimal string (it exceeds 2^53). */
  mtimeNs?: string;
  /** File mode bits (permissions), e.g. 0o644 = 420. */
  mode?: number;
  /** Names this version of the file, for `ifMatch`. */
  etag?: string;
  /** Where the data starts (`get`). */
  offset?: number;
  /** SHA-256 of the whole file, hex, when known before the data; else it comes in the Trailer. */
  sha256?: string;
  /** True when `ifNoneMatch` matched: no data follows. */
  unchanged?: boolean;
  /** `list`: the files (a listing that is not streamed). */
  entries?: ListEntry[];
  /** `list`: true if anything was left out (too many, too deep, unreadable): not the whole tree. */
  truncated?: boolean;
  /** `list`: what was left out (a listing that is not streamed; a streamed one says it in its Trailer). */
  leftOut?: LeftOut;
  /** `list`: true when the entries follow in Entries frames, then a {@link ListTrailer}. */
  stream?: boolean;
  /** `sig`: bytes of the encoded signature that follow in Data frames (delta.ts's `encodeSignature`). */
  signatureLength?: number;
  /** `hello`: {@link AUTH_NONCE_BYTES} random bytes in hex, for `auth`; absent from a server without tokens. */
  nonce?: string;
  /** `auth`: the name of the token now in force on the connection. */
  name?: string;
  /** The id of this answer in the server's request log (servers that predate it send none). */
  requestId?: string;
  /** `get`, streamed `list`: the compression of the Compressed frames that may follow (one `accept` named). */
  compression?: Compression;
  /**
   * Streamed `list`: the server's clock shortly before the walk began (by the tick of the clock that stamps
   * files), nanoseconds since the epoch as decimal text, for a later listing's `inlineSince`: a file
   * changed after the walk read its entry has a later ctime.
   */
  walkedAt?: string;
}

/** The JSON of a Trailer frame. */
export interface Trailer {
  /** SHA-256 of the whole file, hex. */
  sha256: string;
}

/** The JSON of an Error frame. */
export interface ErrorBody {
  /** Machine-readable code. */
  code: ErrorCodeValue;
  /** One line for humans. */
  message: string;
  /** For BUSY: how long the client should wait before trying again. */
  retryAfterMs?: number;
  /** The id of this answer in the server's request log (none from the master's BUSY, nor older servers). */
  requestId?: string;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

// Frame headers are written and read byte by byte: a DataView per frame was a measurable allocation on
// the small-reply path.

/** Writes a frame header (length `len`, a little-endian int32) at `offset` of `buf`. */
export function putFrameLength(buf: Uint8Array, offset: number, len: number): void {
  buf[offset] = len;
  buf[offset + 1] = len >>> 8;
  buf[offset + 2] = len >>> 16;
  buf[offset + 3] = len >>> 24;
}

/** Reads a frame header (a little-endian int32, so possibly negative) at `offset` of `buf`. */
export function getFrameLength(buf: Uint8Array, offset: number): number {
  return buf[offset] | buf[offset + 1] << 8 | buf[offset + 2] << 16 | buf[offset + 3] << 24;
}

/** Encodes one classic-mode frame holding `payload` (raw bytes, no type byte). */
export function encodeRawFrame(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(FRAME_HEADER_SIZE + payload.byteLength);
  putFrameLength(out, 0, payload.byteLength);
  out.set(payload, FRAME_HEADER_SIZE);
  return out;
}

/** The end frame: a zero length. */
export const END_FRAME: Uint8Array = new Uint8Array(FRAME_HEADER_SIZE);

/** Where control frames' JSON is encoded before its length is known (one allocation per frame, not two). */
const jsonScratch = new Uint8Array(16 * 1024);

/**
 * Encodes a request-mode control frame: type byte and JSON body, followed by `spare` zero bytes in the
 * same buffer for the caller to fill (a data frame, or an end frame, which is zeros already), so a whole
 * reply can go out in one send.
 */
export function encodeJsonFrame(type: number, body: unknown, spare = 0): Uint8Array {
  const json = jsonBytes(body);
  const out = new Uint8Array(FRAME_HEADER_SIZE + 1 + json.byteLength + spare);
  putControlFrame(out, type, json);
  return out;
}

/**
 * Encodes a control frame at the start of `target`; returns its length, or -1 if it does not fit with
 * `spare` bytes after it.
 */
export function encodeJsonFrameInto(type: number, body: unknown, target: Uint8Array, spare: number): number {
  const json = jsonBytes(body);
  const length = FRAME_HEADER_SIZE + 1 + json.byteLength;
  if (length + spare > target.byteLength) return -1;
  putControlFrame(target, type, json);
  return length;
}

/** The UTF-8 of `body`'s JSON; valid until the next call. */
function jsonBytes(body: unknown): Uint8Array {
  const text = JSON.stringify(body);
  return text.length * 3 <= jsonScratch.byteLength
    ? jsonScratch.subarray(0, encoder.encodeInto(text, jsonScratch).written)
    : encoder.encode(text);
}

function putControlFrame(out: Uint8Array, type: number, json: Uint8Array): void {
  putFrameLength(out, 0, 1 + json.byteLength);
  out[FRAME_HEADER_SIZE] = type;
  out.set(json, FRAME_HEADER_SIZE + 1);
}

/** Encodes an Error frame followed by an end frame: a complete error response. */
export function encodeErrorResponse(body: ErrorBody): Uint8Array {
  return encodeJsonFrame(FrameType.Error, body, FRAME_HEADER_SIZE);
}

/** Writes the 5-byte header of a Data frame carrying `len` bytes into `buf`. */
export function putDataFrameHeader(buf: Uint8Array, len: number): void {
  putFrameLength(buf, 0, len + 1);
  buf[FRAME_HEADER_SIZE] = FrameType.Data;
}

/** Decodes the JSON body of a control frame (the bytes after the type byte); throws on bad UTF-8 or JSON. */
export function decodeJson(body: Uint8Array): unknown {
  return JSON.parse(
    isShortAscii(body) ? String.fromCharCode.apply(null, body as unknown as number[]) : decoder.decode(body),
  );
}

/**
 * True for a body of plain ASCII short enough to pass as arguments: it is its own string, decoded inside
 * V8 without a call into the runtime (requests are ASCII unless a path is not).
 */
function isShortAscii(body: Uint8Array): boolean {
  if (body.byteLength > 2048) return false;
  for (let i = 0; i < body.byteLength; i++) if (body[i] > 0x7f) return false;
  return true;
}

/** A request that failed validation, with the code to answer it with. */
export class ProtocolError extends Error {
  /** The error code for the Error frame. */
  readonly code: ErrorCodeValue;
  /**
   * @param code the error code to report
   * @param message one line saying what was wrong
   */
  constructor(code: ErrorCodeValue, message: string) {
    super(message);
    this.name = "ProtocolError";
    this.code = code;
  }
}

/**
 * Parses the payload of a request frame (type byte first) into a {@link Request}, checking the type byte,
 * the JSON, the version, the operation and the path's form. Throws {@link ProtocolError}.
 */
export function parseRequest(payload: Uint8Array): Request {
  if (payload[0] !== FrameType.Request) {
    throw new ProtocolError(ErrorCode.BadRequest, `expected a request frame, got type byte ${payload[0]}`);
  }
  let value: unknown;
  try {
    value = decodeJson(payload.subarray(1));
  } catch {
    throw new ProtocolError(ErrorCode.BadRequest, "request is not valid UTF-8 JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ProtocolError(ErrorCode.BadRequest, "request is not a JSON object");
  }
  const {
    v,
    op,
    path,
    offset,
    ifMatch,
    ifNoneMatch,
    recursive,
    stream,
    brief,
    folders,
    inline,
    inlineSince,
    known,
    knownSince,
    ranges,
    name,
    proof,
    accept,
  } = value as Record<string, unknown>;
  if (!Number.isInteger(v)) {
    throw new ProtocolError(ErrorCode.BadRequest, "request has no integer version 'v'");
  }
  if (v !== PROTOCOL_VERSION) {
    throw new ProtocolError(
      ErrorCode.UnsupportedVersion,
      `protocol version ${v} is not supported (this server speaks ${PROTOCOL_VERSION})`,
    );
  }
  if (op === "ping" || op === "hello") return { v, op };
  if (op === "auth") {
    if (typeof name !== "string" || !TOKEN_NAME.test(name)) {
      throw new ProtocolError(ErrorCode.BadRequest, "'name' is not a token name");
    }
    if (!isSha256Hex(proof)) {
      throw new ProtocolError(ErrorCode.BadRequest, "'proof' is not 64 lowercase hex digits");
    }
    return { v, op, name, proof };
  }
  if (op !== "get" && op !== "stat" && op !== "list" && op !== "sig") {
    throw new ProtocolError(ErrorCode.UnknownOp, `unknown operation ${JSON.stringify(op)}`);
  }
  if (typeof path !== "string") throw new ProtocolError(ErrorCode.BadRequest, "request has no string 'path'");
  const request: Request = { v, op, path: op === "list" && path === "" ? "" : checkRelativePath(path) };
  if (op === "list") {
    if (recursive !== undefined && typeof recursive !== "boolean") {
      throw new ProtocolError(ErrorCode.BadRequest, "'recursive' is not a boolean");
    }
    request.recursive = recursive === true;
    if (stream !== undefined && typeof stream !== "boolean") {
      throw new ProtocolError(ErrorCode.BadRequest, "'stream' is not a boolean");
    }
    request.stream = stream === true;
    if (brief !== undefined && typeof brief !== "boolean") {
      throw new ProtocolError(ErrorCode.BadRequest, "'brief' is not a boolean");
    }
    if (brief === true) request.brief = true;
    if (folders !== undefined && typeof folders !== "boolean") {
      throw new ProtocolError(ErrorCode.BadRequest, "'folders' is not a boolean");
    }
    if (folders === true && request.recursive) request.folders = true;
    if (inline !== undefined) {
      if (!Number.isSafeInteger(inline) || (inline as number) < 0 || (inline as number) > MAX_INLINE_FILE) {
        throw new ProtocolError(
          ErrorCode.BadRequest,
          `'inline' is not an integer from 0 to ${MAX_INLINE_FILE}`,
        );
      }
      if (inline as number > 0 && !request.stream) {
        throw new ProtocolError(ErrorCode.BadRequest, "'inline' needs 'stream'");
      }
      if (inline as number > 0) request.inline = inline as number;
    }
    if (inlineSince !== undefined) {
      if (typeof inlineSince !== "string" || !NANOSECONDS.test(inlineSince)) {
        throw new ProtocolError(ErrorCode.BadRequest, "'inlineSince' is not nanoseconds as decimal text");
      }
      if (!request.stream) throw new ProtocolError(ErrorCode.BadRequest, "'inlineSince' needs 'stream'");
      request.inlineSince = inlineSince;
    }
    if (known !== undefined) {
      if (
        !Array.isArray(known) || known.length > MAX_KNOWN_FOLDERS ||
        !known.every((digest) => typeof digest === "string" && FOLDER_DIGEST.test(digest))
      ) {
        throw new ProtocolError(
          ErrorCode.BadRequest,
          `'known' is not a list of at most ${MAX_KNOWN_FOLDERS} folder digests (22 characters of base64url)`,
        );
      }
      if (!request.stream) throw new ProtocolError(ErrorCode.BadRequest, "'known' needs 'stream'");
      if (known.length > 0) request.known = known;
    }
    if (knownSince !== undefined) {
      if (typeof knownSince !== "string" || !NANOSECONDS.test(knownSince)) {
        throw new ProtocolError(ErrorCode.BadRequest, "'knownSince' is not nanoseconds as decimal text");
      }
      if (known === undefined) throw new ProtocolError(ErrorCode.BadRequest, "'knownSince' needs 'known'");
      request.knownSince = knownSince;
    }
  }
  if (op === "sig" && ifNoneMatch !== undefined) {
    if (!isSha256Hex(ifNoneMatch)) {
      throw new ProtocolError(ErrorCode.BadRequest, "'ifNoneMatch' is not a SHA-256 in lowercase hex");
    }
    request.ifNoneMatch = ifNoneMatch;
  }
  if (op === "get") {
    if (offset !== undefined && (!Number.isSafeInteger(offset) || (offset as number) < 0)) {
      throw new ProtocolError(ErrorCode.BadRequest, "'offset' is not a non-negative integer");
    }
    if (ifMatch !== undefined && (typeof ifMatch !== "string" || ifMatch.length > 128)) {
      throw new ProtocolError(ErrorCode.BadRequest, "'ifMatch' is not an etag string");
    }
    if (ifNoneMatch !== undefined && !isSha256Hex(ifNoneMatch)) {
      throw new ProtocolError(ErrorCode.BadRequest, "'ifNoneMatch' is not a SHA-256 in lowercase hex");
    }
    request.offset = (offset as number | undefined) ?? 0;
    if (ifMatch !== undefined) request.ifMatch = ifMatch as string;
    if (ifNoneMatch !== undefined) request.ifNoneMatch = ifNoneMatch as string;
    if (ranges !== undefined) {
      if (request.offset !== 0 || ifNoneMatch !== undefined || ifMatch === undefined) {
        throw new ProtocolError(
          ErrorCode.BadRequest,
          "'ranges' needs 'ifMatch', and takes no 'offset' or 'ifNoneMatch'",
        );
      }
      request.ranges = checkRanges(ranges);
    }
  }
  if ((op === "get" || op === "list") && accept !== undefined) {
    if (!Array.isArray(accept) || accept.length > MAX_ACCEPT || accept.some((a) => typeof a !== "string")) {
      throw new ProtocolError(ErrorCode.BadRequest, `'accept' is not a list of at most ${MAX_ACCEPT} names`);
    }
    request.accept = accept as string[];
  }
  return request;
}

/**
 * Checks the form of a `get`'s `ranges`: a list of 1 to {@link MAX_RANGES} `[offset, length]` pairs of
 * integers, each non-empty and starting at or after the end of the one before. Whether they fit the file
 * is for the server to check once it has opened it. Returns them unchanged.
 */
export function checkRanges(ranges: unknown): [number, number][] {
  const bad = (why: string) => new ProtocolError(ErrorCode.BadRequest, `'ranges' ${why}`);
  if (!Array.isArray(ranges) || ranges.length === 0) throw bad("is not a non-empty list");
  if (ranges.length > MAX_RANGES) throw bad(`has ${ranges.length} ranges, more than ${MAX_RANGES}`);
  let end = 0;
  for (const range of ranges) {
    if (
      !Array.isArray(range) || range.length !== 2 || !Number.isSafeInteger(range[0]) ||
      !Number.isSafeInteger(range[1])
    ) {
      throw bad(`holds ${JSON.stringify(range)}, not an [offset, length] pair of integers`);
    }
    const [offset, length] = range as [number, number];
    if (length <= 0) throw bad(`holds the empty or negative range [${offset}, ${length}]`);
    if (offset < end) throw bad(`are not sorted and apart: [${offset}, ${length}] starts before byte ${end}`);
    end = offset + length;
    if (!Number.isSafeInteger(end)) throw bad(`holds [${offset}, ${length}], which ends beyond 2^53`);
  }
  return ranges as [number, number][];
}

/**
 * Checks that `path` is a plain relative path: not empty, not absolute, no NUL, no `..` component, at most
 * {@link MAX_PATH_BYTES}. Returns it unchanged. Symlinks are checked when the file is opened.
 */
export function checkRelativePath(path: string): string {
  if (path === "") throw new ProtocolError(ErrorCode.BadRequest, "path is empty");
  if (path.includes("\0")) throw new ProtocolError(ErrorCode.Forbidden, "path contains a NUL byte");
  // A UTF-16 unit takes at most 3 UTF-8 bytes: most paths are short enough not to need encoding.
  if (path.length * 3 > MAX_PATH_BYTES && encoder.encode(path).byteLength > MAX_PATH_BYTES) {
    throw new ProtocolError(ErrorCode.Forbidden, `path is longer than ${MAX_PATH_BYTES} bytes`);
  }
  if (path.startsWith("/")) throw new ProtocolError(ErrorCode.Forbidden, "path is absolute");
  if (DOT_DOT_COMPONENT.test(path)) throw new ProtocolError(ErrorCode.Forbidden, "path contains '..'");
  return path;
}

/** A `..` component anywhere in a path. */
const DOT_DOT_COMPONENT = /(?:^|\/)\.\.(?:\/|$)/;

/** Encodes a request as a complete Request frame. */
export function encodeRequest(request: Request): Uint8Array {
  return encodeJsonFrame(FrameType.Request, request);
}

/**
 * Encodes a connection's last request: the Request frame and the end frame behind it, for one write. The
 * server answers it, then closes, without waiting for the client to close first.
 */
export function encodeLastRequest(request: Request): Uint8Array {
  return encodeJsonFrame(FrameType.Request, request, FRAME_HEADER_SIZE);
}

/**
 * The total size on the wire of a file of `size` bytes sent in classic mode after its name frame:
 * content frames of {@link CLASSIC_CHUNK} bytes and the end frame.
 */
export function classicBodyLength(size: number): number {
  const frames = Math.ceil(size / CLASSIC_CHUNK);
  return size + frames * FRAME_HEADER_SIZE + FRAME_HEADER_SIZE;
}

/**
 * Fills `out` with classic-mode body bytes (content frames, then the end frame) starting at `streamOffset`
 * within the body, reading file bytes with `readAt(buf, fileOffset)`. Because the layout is fixed
 * (every frame but the last carries exactly 1000 bytes), any position of the stream can be regenerated
 * from the file: a sender keeps one number per connection instead of a buffer.
 * Returns how many bytes of `out` were filled.
 */
export function fillClassicBody(
  out: Uint8Array,
  streamOffset: number,
  size: number,
  readAt: (buf: Uint8Array, fileOffset: number) => number,
): number {
  const total = classicBodyLength(size);
  const stride = FRAME_HEADER_SIZE + CLASSIC_CHUNK;
  let filled = 0;
  let pos = streamOffset;
  // The end frame starts right after the last content frame, which may be shorter than 1000 bytes.
  const endStart = total - FRAME_HEADER_SIZE;
  while (filled < out.byteLength && pos < total) {
    const frame = Math.floor(pos / stride);
    const frameStart = frame * stride;
    const fileOffset = frame * CLASSIC_CHUNK;
    const payload = Math.min(CLASSIC_CHUNK, size - fileOffset);
    // Build the whole frame (or the end frame) in a scratch view, then copy the part from `pos` on.
    if (pos >= endStart) {
      const within = pos - endStart;
      const n = Math.min(FRAME_HEADER_SIZE - within, out.byteLength - filled);
      out.fill(0, filled, filled + n);
      filled += n;
      pos += n;
      continue;
    }
    const within = pos - frameStart;
    const room = out.byteLength - filled;
    if (within === 0 && room >= FRAME_HEADER_SIZE + payload) {
      putFrameLength(out, filled, payload);
      const got = readFully(out.subarray(filled + 4, filled + 4 + payload), fileOffset, readAt);
      if (got < payload) throw new FileShrankError(fileOffset + got, size);
      filled += FRAME_HEADER_SIZE + payload;
      pos += FRAME_HEADER_SIZE + payload;
    } else {
      const scratch = new Uint8Array(FRAME_HEADER_SIZE + payload);
      putFrameLength(scratch, 0, payload);
      const got = readFully(scratch.subarray(4), fileOffset, readAt);
      if (got < payload) throw new FileShrankError(fileOffset + got, size);
      const n = Math.min(scratch.byteLength - within, room);
      out.set(scratch.subarray(within, within + n), filled);
      filled += n;
      pos += n;
    }
  }
  return filled;
}

function readFully(
  buf: Uint8Array,
  fileOffset: number,
  readAt: (buf: Uint8Array, fileOffset: number) => number,
): number {
  let got = 0;
  while (got < buf.byteLength) {
    const n = readAt(buf.subarray(got), fileOffset + got);
    if (n <= 0) break;
    got += n;
  }
  return got;
}

/** The file being sent got shorter than the size announced for it. */
export class FileShrankError extends Error {
  /**
   * @param at the offset where the file ended
   * @param size the size it had when the transfer started
   */
  constructor(at: number, size: number) {
    super(`file ended at byte ${at} of the ${size} announced: it was truncated during the transfer`);
    this.name = "FileShrankError";
  }
}

// Delta transfer (delta.ts): the chunking both sides must agree on, and the signature's wire form.

/** Seed of the xorshift32 generator that fills the gear table of content-defined chunking. */
export const CHUNK_GEAR_SEED = 0x9e3779b9;

/** Smallest chunk size, as a power of two (4 KiB). */
export const MIN_CHUNK_BITS = 12;

/** Largest chunk size, as a power of two (64 KiB). */
export const MAX_CHUNK_BITS = 16;

/** The first bytes of an encoded signature. */
export const SIGNATURE_MAGIC: Uint8Array = new TextEncoder().encode("FCS1");

/** Bytes of a signature before its entries: magic, bits (and 3 spare), size (u64), count (u32). */
export const SIGNATURE_HEADER_SIZE = 20;

/** Bytes of one signature entry: the chunk's length (u32) and its hash prefix (8 bytes). */
export const SIGNATURE_ENTRY_SIZE = 12;

// Compression of a `get` answer (PROTOCOL.md "Compression").

/** The compressions a `get` may offer in `accept` and a Header may name: zstd (RFC 8878). */
export const COMPRESSIONS = ["zstd"] as const;

/** One of {@link COMPRESSIONS}. */
export type Compression = typeof COMPRESSIONS[number];

/** Most names a request's `accept` may hold: later names are for later versions, not for padding. */
export const MAX_ACCEPT = 8;

/** Bytes before the compressed chunk in a Compressed frame (after the type byte): its uncompressed length. */
export const COMPRESSED_PREFIX = 4;

/**
 * Most uncompressed bytes one Compressed frame may stand for, and most compressed bytes it may carry: a
 * client decodes each frame whole, in memory, so a chunk is small (the server sends 64 KiB, then 256 KiB).
 */
export const MAX_COMPRESSED_CHUNK = 1024 * 1024;
