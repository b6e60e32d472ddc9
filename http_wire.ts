/**
 * HTTP/1.1 on ferry's request-mode port: how a connection's first bytes are told apart from a ferry
 * request frame, the limits of an HTTP request, and the one HTTP answer the master sends itself (503 when
 * it refuses a connection). The worker's HTTP code (`worker/http_parse.ts`, `worker/http.ts`) builds on it;
 * the master loads only this file.
 *
 * A ferry request frame starts with its length as a little-endian int32 of at most 64 KiB
 * (`MAX_REQUEST_FRAME`): its third byte is at most 1 and its fourth 0. An HTTP request starts with its
 * method, a token of capital letters (`GET `, `HEAD`, `POST`...): read as a length, four such bytes are at
 * least 0x20000000 (512 MiB), so the two can never be mistaken for each other.
 *
 * @module
 */

/** Longest request line (method, target, version) accepted; past it, 414. */
export const MAX_HTTP_REQUEST_LINE = 16 * 1024;

/** Longest request head (request line and header fields) accepted; past it, 431. */
export const MAX_HTTP_HEAD = 32 * 1024;

/** Most header fields accepted in one request; past it, 431. */
export const MAX_HTTP_FIELDS = 100;

/** Bytes {@link looksLikeHttp} needs to decide. */
export const HTTP_SNIFF_BYTES = 4;

const isCapital = (byte: number) => byte >= 0x41 && byte <= 0x5a;

/**
 * True if `bytes` (at least {@link HTTP_SNIFF_BYTES} of them) start like an HTTP request: three capital
 * letters, then a fourth or a space. No ferry request frame starts so (see the module's note).
 */
export function looksLikeHttp(bytes: Uint8Array): boolean {
  return bytes.byteLength >= HTTP_SNIFF_BYTES && isCapital(bytes[0]) && isCapital(bytes[1]) &&
    isCapital(bytes[2]) && (isCapital(bytes[3]) || bytes[3] === 0x20);
}

/** Reason phrases of the statuses ferry sends. */
export const HTTP_REASONS: Readonly<Record<number, string>> = {
  200: "OK",
  206: "Partial Content",
  304: "Not Modified",
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  412: "Precondition Failed",
  413: "Content Too Large",
  414: "URI Too Long",
  416: "Range Not Satisfiable",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  503: "Service Unavailable",
  505: "HTTP Version Not Supported",
};

const encoder = new TextEncoder();

/**
 * A whole HTTP/1.1 error answer: the status line, `extra` header lines (each ending in CRLF), a text body
 * of one line, and `Connection: close` unless `keepAlive`.
 */
export function httpErrorResponse(
  status: number,
  message: string,
  extra = "",
  keepAlive = false,
): Uint8Array {
  const body = `${status} ${HTTP_REASONS[status] ?? ""}: ${message}\n`;
  const bodyBytes = encoder.encode(body);
  const head =
    `HTTP/1.1 ${status} ${HTTP_REASONS[status] ?? "Error"}\r\nDate: ${new Date().toUTCString()}\r\n` +
    "Server: ferry\r\n" +
    `Content-Type: text/plain; charset=utf-8\r\nContent-Length: ${bodyBytes.byteLength}\r\n${extra}` +
    (keepAlive ? "" : "Connection: close\r\n") + "\r\n";
  const headBytes = encoder.encode(head);
  const out = new Uint8Array(headBytes.byteLength + bodyBytes.byteLength);
  out.set(headBytes);
  out.set(bodyBytes, headBytes.byteLength);
  return out;
}

/** The 503 the master sends an HTTP client it cannot serve: try again after `retryAfterMs`, rounded up. */
export function httpBusyResponse(message: string, retryAfterMs: number): Uint8Array {
  return httpErrorResponse(503, message, `Retry-After: ${Math.max(1, Math.ceil(retryAfterMs / 1000))}\r\n`);
}
