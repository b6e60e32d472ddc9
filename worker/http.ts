/**
 * HTTP/1.1 answers on a request-mode connection: GET and HEAD of the files below the served directory,
 * with validators (`ETag`, `Last-Modified`), conditional requests (304, 412), one byte range (206, 416,
 * `If-Range`), and `Repr-Digest` when the file's SHA-256 is known. Files are opened with the same
 * {@link openFile} as ferry's own `get`, through the connection's {@link ReplyContext}: whatever decides
 * there what may be read decides it for HTTP too. Bodies go out with sendfile(2), or for small files in the
 * same one-buffer reply as ferry's. Paths that are not files (such as `/metrics`) are answered by the
 * handlers in {@link HttpConfig.routes}.
 *
 * @module
 */

import { FileRangeBody } from "./bodies.ts";
import { close, type FileStat, fstat, pread } from "../ffi/libc.ts";
import { type ErrorBody, ErrorCode } from "../framing.ts";
import { HTTP_REASONS, httpErrorResponse } from "../http_wire.ts";
import { etagOf, identityOf } from "./hash_cache.ts";
import { createSha256 } from "../hashing.ts";
import { type HttpRefusal, type HttpRequest, parseHttpHead, targetPath } from "./http_parse.ts";
import { Deferred, openFile, type Piece, type Reply, type ReplyContext } from "./operations.ts";
import { returnReplyBuffer, takeReplyBuffer } from "./reply_pool.ts";
import { pageAlignedBuffer } from "../ffi/page_aligned.ts";

/** A reply to an HTTP request. */
export interface HttpReply extends Reply {
  /** The status sent. */
  status: number;
  /**
   * The operation it counts as in the metrics: a GET or HEAD of a file is a `get`; a `scrape` of /metrics
   * is, like a `ping`, logged only with --log-health.
   */
  op: "get" | "none" | "scrape";
}

/** ferry's error code that an HTTP error status stands for, in the request log and the metrics. */
const CODE_OF_STATUS: Readonly<Record<number, string>> = {
  400: ErrorCode.BadRequest,
  403: ErrorCode.Forbidden,
  404: ErrorCode.NotFound,
  405: ErrorCode.UnknownOp,
  408: ErrorCode.Timeout,
  412: ErrorCode.Changed,
  413: ErrorCode.TooLarge,
  414: ErrorCode.TooLarge,
  416: ErrorCode.BadRequest,
  431: ErrorCode.TooLarge,
  500: ErrorCode.Internal,
  505: ErrorCode.UnsupportedVersion,
};

/**
 * Answers a request for a path that is not a file (e.g. `/metrics`). The method is the handler's to check;
 * a request with content never reaches it.
 */
export type HttpHandler = (request: HttpRequest, ctx: ReplyContext) => HttpReply;

/** How a worker speaks HTTP; absent (null in ServeConfig) with `--no-http`. */
export interface HttpConfig {
  /**
   * Handlers by exact request path (before any `?`), looked up before the file tree: the one place where
   * a path such as `/metrics` is given to something else than a file.
   */
  routes: Map<string, HttpHandler>;
}

/** Bodies up to this size are read into the reply's one buffer and sent with its head in one call. */
const SMALL_BODY_BYTES = 64 * 1024;

const encoder = new TextEncoder();

/** Answers a parsed request: a route's handler, or a file of the served directory. */
export function answerHttp(request: HttpRequest, ctx: ReplyContext, config: HttpConfig): HttpReply {
  const query = request.target.search(/[?#]/);
  const route = config.routes.get(query < 0 ? request.target : request.target.slice(0, query));
  // A request with content is refused before any route: its content would be taken for the next request.
  if (route !== undefined && !request.hasContent) return route(request, ctx);
  const head = request.method === "HEAD";
  if (request.method !== "GET" && !head) {
    return refusedReply(request, `HTTP ${request.method.slice(0, 16)}`, {
      status: 405,
      message: `${request.method.slice(0, 16)} is not served here: only GET and HEAD`,
      closes: request.hasContent,
    }, "Allow: GET, HEAD\r\n");
  }
  if (request.hasContent) {
    return refusedReply(request, `HTTP ${request.method} (with content)`, {
      status: 413,
      message: "a request with content: this server takes none",
      closes: true,
    });
  }
  const path = targetPath(request.target);
  if (typeof path !== "string") return refusedReply(request, `HTTP ${request.method} (path refused)`, path);
  const label = `HTTP ${request.method} ${JSON.stringify(path)}`;
  if (path === "") {
    return refusedReply(request, label, { status: 403, message: "/ is a directory", closes: false });
  }
  const opened = openFile(ctx, path);
  if (!("fd" in opened)) return refusedReply(request, label, refusalOf(opened));
  return fileReply(request, ctx, label, opened.fd, opened.stat, head);
}

/**
 * The HTTP status for a refused open, ferry's error code mapped: a directory or a device is 403, and so is
 * a path the connection's token does not reach (UNAUTHORIZED: HTTP has no way to prove a ferry token, and
 * 401 would promise one).
 */
function refusalOf(body: ErrorBody): HttpRefusal {
  const status = body.code === ErrorCode.NotFound
    ? 404
    : body.code === ErrorCode.Forbidden || body.code === ErrorCode.NotAFile ||
        body.code === ErrorCode.Unauthorized
    ? 403
    : 500;
  return { status, message: body.message, closes: body.code === ErrorCode.Unauthorized, code: body.code };
}

/**
 * An error answer to `request` (Connection: close when the refusal or the request says so); `answerFields`
 * when there is no request (a malformed head).
 */
export function refusedReply(
  request: HttpRequest | null,
  label: string,
  refusal: HttpRefusal,
  extra = "",
  answerFields = request?.answerFields ?? "",
): HttpReply {
  const keepAlive = request !== null && request.keepAlive && !refusal.closes;
  const bytes = httpErrorResponse(refusal.status, refusal.message, extra + answerFields, keepAlive);
  const code = refusal.code ?? CODE_OF_STATUS[refusal.status] ?? ErrorCode.BadRequest;
  return {
    label,
    pieces: [request?.method === "HEAD" ? bytes.subarray(0, headLength(bytes)) : bytes],
    files: [],
    status: refusal.status,
    op: request?.method === "GET" || request?.method === "HEAD" ? "get" : "none",
    result: `refused ${code} http=${refusal.status}`,
    closeAfter: keepAlive ? undefined : refusal.closes ? "linger" : "close",
  };
}

/** A successful answer whose body is `body` (for route handlers). */
export function plainReply(
  request: HttpRequest,
  label: string,
  contentType: string,
  body: Uint8Array,
): HttpReply {
  const head =
    `HTTP/1.1 200 OK\r\nDate: ${httpDate(Date.now())}\r\nServer: ferry\r\nContent-Type: ${contentType}\r\n` +
    `Content-Length: ${body.byteLength}\r\n${request.answerFields}${connectionField(request)}\r\n`;
  const pieces: Piece[] = [encoder.encode(head)];
  if (request.method !== "HEAD") pieces.push(body);
  return {
    label,
    pieces,
    files: [],
    status: 200,
    op: "none",
    result: "ok http=200",
    closeAfter: closeOf(request),
  };
}

/** Bytes up to and including the blank line of an encoded answer. */
function headLength(bytes: Uint8Array): number {
  for (let i = 3; i < bytes.byteLength; i++) {
    if (bytes[i] === 0x0a && bytes[i - 1] === 0x0d && bytes[i - 2] === 0x0a) return i + 1;
  }
  return bytes.byteLength;
}

const connectionField = (request: HttpRequest) =>
  !request.keepAlive ? "Connection: close\r\n" : request.minor === 0 ? "Connection: keep-alive\r\n" : "";

const closeOf = (request: HttpRequest): "close" | undefined => request.keepAlive ? undefined : "close";

/** The answer for an open regular file: 200, 206, 304, 412 or 416, its head and its body. */
function fileReply(
  request: HttpRequest,
  ctx: ReplyContext,
  label: string,
  fd: number,
  stat: FileStat,
  head: boolean,
): HttpReply {
  const identity = identityOf(stat);
  const etag = `"${etagOf(identity)}"`;
  const mtimeSeconds = Number(stat.mtimeNs / 1_000_000_000n);
  const lastModified = httpDate(mtimeSeconds * 1000);
  const size = stat.size;
  let status = 200;
  let start = 0;
  let end = size; // exclusive
  const ifMatch = request.fields.get("if-match");
  const ifNoneMatch = request.fields.get("if-none-match");
  const ifModifiedSince = request.fields.get("if-modified-since");
  if (ifMatch !== undefined && !etagListHas(ifMatch, etag, true)) status = 412;
  else if (
    ifNoneMatch !== undefined
      ? etagListHas(ifNoneMatch, etag, false)
      : notModifiedSince(ifModifiedSince, mtimeSeconds)
  ) {
    status = 304;
  } else if (
    !head && request.fields.has("range") && ifRangeHolds(request.fields.get("if-range"), etag, lastModified)
  ) {
    const range = parseRange(request.fields.get("range")!, size);
    if (range === "unsatisfiable") status = 416;
    else if (range !== null) [status, start, end] = [206, range.start, range.end];
  }
  let fields = `Date: ${
    httpDate(Date.now())
  }\r\nServer: ferry\r\nLast-Modified: ${lastModified}\r\nETag: ${etag}\r\n${request.answerFields}`;
  if (status === 304 || status === 412) {
    close(fd);
    if (status === 412) {
      return refusedReply(request, label, {
        status,
        message: `the file is no longer ${ifMatch}`,
        closes: false,
      });
    }
    const bytes = encoder.encode(`HTTP/1.1 304 Not Modified\r\n${fields}${connectionField(request)}\r\n`);
    return {
      label: `${label} conditional`,
      pieces: [bytes],
      files: [],
      status,
      op: "get",
      result: "unchanged http=304",
      closeAfter: closeOf(request),
    };
  }
  if (status === 416) {
    close(fd);
    return refusedReply(request, `${label} range=${request.fields.get("range")!.slice(0, 64)}`, {
      status,
      message: `no range of ${
        JSON.stringify(request.fields.get("range")!.slice(0, 64))
      } is within the ${size} bytes`,
      closes: false,
    }, `Content-Range: bytes */${size}\r\n`);
  }
  const whole = status === 200;
  let sha256 = ctx.hashes.get(identity);
  let small: Uint8Array | null = null;
  if (!head && end - start <= SMALL_BODY_BYTES) {
    small = readSmall(fd, start, end, identity);
    // A whole small file is hashed on the spot, as ferry's get does: its digest then goes with it.
    if (small !== null && whole && sha256 === undefined) {
      sha256 = createSha256().update(small).digest("hex");
      ctx.hashes.note(identity, sha256);
    }
  }
  fields += "Accept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n";
  if (sha256 !== undefined) fields += `Repr-Digest: sha-256=:${hexToBase64(sha256)}:\r\n`;
  if (!whole) fields += `Content-Range: bytes ${start}-${end - 1}/${size}\r\n`;
  const headBytes = encoder.encode(
    `HTTP/1.1 ${status} ${HTTP_REASONS[status]}\r\n${fields}Content-Length: ${end - start}\r\n${
      connectionField(request)
    }\r\n`,
  );
  const reply: HttpReply = {
    label: whole ? label : `${label} range=${start}-${end - 1}`,
    pieces: [],
    files: [],
    status,
    op: "get",
    result: `ok http=${status}`,
    closeAfter: closeOf(request),
  };
  if (head || start === end) {
    close(fd);
    reply.pieces.push(headBytes);
  } else if (small !== null) {
    close(fd);
    reply.pieces.push(oneBuffer(headBytes, small));
  } else {
    reply.files.push(fd);
    reply.pieces.push(
      headBytes,
      new FileRangeBody(fd, start, end),
      new Deferred(() => {
        // A file rewritten in place while it was sent: HTTP has no way to say so after the body, so the
        // connection closes, and the log says it.
        if (identityOf(fstat(fd)) !== identity) {
          reply.closeAfter = "close";
          reply.result = `file changed http=${status}`;
        }
        return [];
      }),
    );
  }
  return reply;
}

/** Where {@link readSmall} reads; allocated on first use. */
let smallBuffer: Uint8Array | null = null;

/** Bytes `start` to `end` of the file, read whole; null if it came short or changed meanwhile. */
function readSmall(fd: number, start: number, end: number, identity: string): Uint8Array | null {
  smallBuffer ??= pageAlignedBuffer(SMALL_BODY_BYTES);
  const data = smallBuffer.subarray(0, end - start);
  for (let got = 0; got < data.byteLength;) {
    const n = pread(fd, data.subarray(got), start + got);
    if (n <= 0) return null;
    got += n;
  }
  return identityOf(fstat(fd)) === identity ? data : null;
}

/** The head and a small body in one of the reply pool's buffers (given back once sent), or a new one. */
function oneBuffer(head: Uint8Array, body: Uint8Array): Uint8Array {
  const total = head.byteLength + body.byteLength;
  let buffer = takeReplyBuffer();
  if (total > buffer.byteLength) {
    returnReplyBuffer(buffer);
    buffer = new Uint8Array(total);
  }
  const out = buffer.subarray(0, total);
  out.set(head);
  out.set(body, head.byteLength);
  return out;
}

/**
 * True if the list of entity tags `list` (`*`, or `"a", W/"b"`) holds `etag`: compared strongly for
 * If-Match (a weak tag never matches), weakly for If-None-Match (RFC 9110, 8.8.3.2).
 */
function etagListHas(list: string, etag: string, strong: boolean): boolean {
  if (list.trim() === "*") return true;
  for (const item of list.split(",")) {
    let tag = item.trim();
    if (tag.startsWith("W/")) {
      if (strong) continue;
      tag = tag.slice(2);
    }
    if (tag === etag) return true;
  }
  return false;
}

/** True if If-Modified-Since holds a valid date at or after the file's modification (in whole seconds). */
function notModifiedSince(value: string | undefined, mtimeSeconds: number): boolean {
  if (value === undefined) return false;
  const since = Date.parse(value);
  return !Number.isNaN(since) && mtimeSeconds <= Math.floor(since / 1000);
}

/** True if the Range may be applied: no If-Range, or one naming this version (strong tag, or exact date). */
function ifRangeHolds(value: string | undefined, etag: string, lastModified: string): boolean {
  if (value === undefined) return true;
  const v = value.trim();
  if (v.startsWith('"') || v.startsWith("W/")) return v === etag;
  return v === lastModified;
}

/**
 * The one byte range of a Range field over `size` bytes, end exclusive; null when the field is to be
 * ignored (not bytes, malformed, or several ranges: the whole file is sent then, with 200); "unsatisfiable"
 * when no range starts within the file (416).
 */
export function parseRange(
  value: string,
  size: number,
): { start: number; end: number } | null | "unsatisfiable" {
  const m = /^bytes=(.*)$/i.exec(value.trim());
  if (m === null) return null;
  const specs = m[1].split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (specs.length === 0) return null;
  let found: { start: number; end: number } | null = null;
  let satisfiable = 0;
  for (const spec of specs) {
    const r = /^(\d*)-(\d*)$/.exec(spec);
    if (r === null || (r[1] === "" && r[2] === "")) return null;
    if (r[1] === "") {
      const suffix = Number(r[2]);
      if (!Number.isSafeInteger(suffix)) return null;
      if (suffix > 0 && size > 0) {
        [found, satisfiable] = [{ start: Math.max(0, size - suffix), end: size }, satisfiable + 1];
      }
      continue;
    }
    const first = Number(r[1]);
    const last = r[2] === "" ? Infinity : Number(r[2]);
    if (!Number.isSafeInteger(first) || !(Number.isSafeInteger(last) || last === Infinity) || last < first) {
      return null;
    }
    if (first < size) {
      [found, satisfiable] = [{ start: first, end: Math.min(last, size - 1) + 1 }, satisfiable + 1];
    }
  }
  if (satisfiable === 0) return "unsatisfiable";
  return satisfiable === 1 && specs.length === 1 ? found : null;
}

let datedAt = -1;
let dated = "";

/** An HTTP date (IMF-fixdate) for `ms`; the current second's is formatted once. */
export function httpDate(ms: number): string {
  const second = Math.floor(ms / 1000);
  if (second === datedAt) return dated;
  const text = new Date(second * 1000).toUTCString();
  if (Math.abs(second * 1000 - Date.now()) < 1000) [datedAt, dated] = [second, text];
  return text;
}

/** A SHA-256 in hex as base64 (Repr-Digest carries the bytes so). */
function hexToBase64(hex: string): string {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return btoa(String.fromCharCode(...bytes));
}

/**
 * The answer to the request whose head starts `input` (its first `length` bytes), and how many bytes that
 * head took; null while the head is incomplete. A malformed head is answered with its 4xx and a close.
 */
export function nextHttpReply(
  input: Uint8Array,
  length: number,
  ctx: ReplyContext,
  config: HttpConfig,
  requestId: string,
): { reply: HttpReply; consumed: number } | null {
  const parsed = parseHttpHead(input, length);
  if (parsed === null) return null;
  const answerFields = `X-Request-Id: ${requestId}\r\n`;
  if ("status" in parsed) {
    return { reply: refusedReply(null, "HTTP (malformed)", parsed, "", answerFields), consumed: length };
  }
  parsed.answerFields = answerFields;
  return { reply: answerHttp(parsed, ctx, config), consumed: parsed.headLength };
}
