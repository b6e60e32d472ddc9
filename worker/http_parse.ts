/**
 * Reading an HTTP/1.1 request head from a connection's input: the request line, the header fields, whether
 * the connection stays open, and the request target turned into a path below the served directory with the
 * same checks as ferry's own requests (`checkRelativePath`). Pure functions over bytes: nothing here does
 * I/O, so every malformed input ends in an {@link HttpRefusal}, never an exception.
 *
 * @module
 */

import { checkRelativePath, MAX_PATH_BYTES, ProtocolError } from "../framing.ts";
import { MAX_HTTP_FIELDS, MAX_HTTP_HEAD, MAX_HTTP_REQUEST_LINE } from "../http_wire.ts";

/** A request head, parsed. */
export interface HttpRequest {
  /** The method as sent (case matters in HTTP: `get` is not `GET`). */
  method: string;
  /** The request target as sent. */
  target: string;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor: number;
  /** Header fields by lower-case name; repeated fields joined with ", ". */
  fields: Map<string, string>;
  /** True if the connection stays open after the answer (HTTP/1.1 unless `close`; 1.0 with `keep-alive`). */
  keepAlive: boolean;
  /**
   * True if content follows the head (Transfer-Encoding, or a Content-Length other than 0). ferry takes
   * none: such a request is refused and the connection closed, as the content would have to be read past
   * to find the next request.
   */
  hasContent: boolean;
  /** Bytes the head took in the input, blank line included. */
  headLength: number;
  /** Header lines (each ending in CRLF) that every answer to this request carries: its `X-Request-Id`. */
  answerFields: string;
}

/** A request that is answered with an error status. */
export interface HttpRefusal {
  /** The status. */
  status: number;
  /** One line saying what was wrong. */
  message: string;
  /** True if the connection must close after the answer (the input cannot be trusted to go on). */
  closes: boolean;
  /** ferry's error code it stands for, in the log and the metrics; by default the status's (see http.ts). */
  code?: string;
}

const latin1 = new TextDecoder("latin1");
const utf8 = new TextDecoder("utf-8", { fatal: true });

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const VERSION = /^HTTP\/(\d)\.(\d)$/;

const refuse = (status: number, message: string, closes = true): HttpRefusal => ({ status, message, closes });

/**
 * Parses the request head at the start of `input` (its first `length` bytes). Returns null while the head
 * is incomplete and within the limits, the request once whole, or a refusal (400, 413, 414, 431, 505).
 */
export function parseHttpHead(input: Uint8Array, length: number): HttpRequest | HttpRefusal | null {
  const end = findHeadEnd(input, length);
  if (end < 0) {
    const firstLine = input.subarray(0, Math.min(length, MAX_HTTP_REQUEST_LINE + 1)).indexOf(0x0a);
    if (firstLine < 0 && length > MAX_HTTP_REQUEST_LINE) {
      return refuse(414, `the request line is longer than ${MAX_HTTP_REQUEST_LINE} bytes`);
    }
    if (length > MAX_HTTP_HEAD) return refuse(431, `the request head is longer than ${MAX_HTTP_HEAD} bytes`);
    return null;
  }
  if (end > MAX_HTTP_HEAD) return refuse(431, `the request head is longer than ${MAX_HTTP_HEAD} bytes`);
  const lines = latin1.decode(input.subarray(0, end)).split("\n").map((l) =>
    l.endsWith("\r") ? l.slice(0, -1) : l
  );
  while (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  const requestLine = lines[0];
  if (requestLine.length > MAX_HTTP_REQUEST_LINE) {
    return refuse(414, `the request line is longer than ${MAX_HTTP_REQUEST_LINE} bytes`);
  }
  const parts = requestLine.split(" ");
  if (parts.length !== 3 || !TOKEN.test(parts[0]) || parts[1] === "") {
    return refuse(400, "the request line is not METHOD TARGET HTTP/1.x");
  }
  const [method, target, version] = parts;
  const v = VERSION.exec(version);
  if (v === null) return refuse(400, `${JSON.stringify(version.slice(0, 40))} is not an HTTP version`);
  if (v[1] !== "1") return refuse(505, `HTTP/${v[1]}.${v[2]} is not spoken here: use HTTP/1.1`);
  const minor = v[2] === "0" ? 0 : 1;
  if (lines.length - 1 > MAX_HTTP_FIELDS) return refuse(431, `more than ${MAX_HTTP_FIELDS} header fields`);
  const fields = new Map<string, string>();
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const colon = line.indexOf(":");
    // A field folded over lines (obsolete) or a space before the colon is refused (RFC 9112, 5.1 and 5.2).
    if (colon <= 0 || !TOKEN.test(line.slice(0, colon))) {
      return refuse(400, `header line ${i} is not NAME: VALUE`);
    }
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).trim();
    const before = fields.get(name);
    if (before !== undefined && (name === "host" || name === "content-length") && before !== value) {
      return refuse(400, `two different ${name} fields`);
    }
    fields.set(
      name,
      before === undefined || name === "host" || name === "content-length" ? value : `${before}, ${value}`,
    );
  }
  if (minor === 1 && !fields.has("host")) return refuse(400, "an HTTP/1.1 request without Host");
  const contentLength = fields.get("content-length");
  if (contentLength !== undefined && !/^\d+$/.test(contentLength)) {
    return refuse(400, "Content-Length is not a number");
  }
  const hasContent = fields.has("transfer-encoding") ||
    (contentLength !== undefined && Number(contentLength) !== 0);
  const connection = (fields.get("connection") ?? "").toLowerCase().split(",").map((t) => t.trim());
  const keepAlive = minor === 1 ? !connection.includes("close") : connection.includes("keep-alive");
  return { method, target, minor, fields, keepAlive, hasContent, headLength: end, answerFields: "" };
}

/** The index just past the blank line that ends the head (CRLF CRLF, or bare LFs), or -1. */
function findHeadEnd(input: Uint8Array, length: number): number {
  for (let i = input.indexOf(0x0a); i >= 0 && i < length; i = input.indexOf(0x0a, i + 1)) {
    if (i + 1 < length && input[i + 1] === 0x0a) return i + 2;
    if (i + 2 < length && input[i + 1] === 0x0d && input[i + 2] === 0x0a) return i + 3;
  }
  return -1;
}

/**
 * The path below the served directory that a request target names: the target's path (origin form
 * `/a/b`, or absolute form `http://host/a/b`), query dropped, percent-decoded as UTF-8, its leading `/`
 * removed, then checked as ferry's own requests are (no NUL, no `..` segment, not absolute, at most 4096
 * bytes). `""` is the root. Returns a refusal: 400 for a target that does not decode, 403 for a path that
 * may not be served, 414 for one too long.
 */
export function targetPath(target: string): string | HttpRefusal {
  let path = target;
  const scheme = /^https?:\/\/[^/?#]*/i.exec(path);
  if (scheme !== null) path = path.slice(scheme[0].length) || "/";
  if (!path.startsWith("/")) return refuse(400, "the request target is not a path starting with /");
  const cut = path.search(/[?#]/);
  if (cut >= 0) path = path.slice(0, cut);
  const bytes = percentDecode(path);
  if (bytes === null) return refuse(400, "the request target has a malformed %-escape");
  if (bytes.byteLength > MAX_PATH_BYTES + 1) {
    return refuse(414, `the path is longer than ${MAX_PATH_BYTES} bytes`, false);
  }
  let decoded: string;
  try {
    decoded = utf8.decode(bytes);
  } catch {
    return refuse(400, "the request target's path is not UTF-8");
  }
  const relative = decoded.slice(1);
  if (relative === "") return "";
  try {
    return checkRelativePath(relative);
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw e;
    return refuse(403, e.message, false);
  }
}

/** The bytes of `text` with every %XX escape decoded; null if an escape is malformed. */
function percentDecode(text: string): Uint8Array | null {
  const out = new Uint8Array(text.length * 3);
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x25) {
      const hex = text.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return null;
      out[n++] = parseInt(hex, 16);
      i += 2;
    } else if (c < 0x80) {
      out[n++] = c;
    } else {
      // The head was read as Latin-1: a raw byte above 0x7f stands for itself.
      if (c > 0xff) return null;
      out[n++] = c;
    }
  }
  return out.subarray(0, n);
}
