/**
 * The smallest HTTP/1.1 responder that answers a scrape: `GET /metrics` (or HEAD) gets the metrics, any
 * other path 404, another method 405, anything that is not an HTTP request line 400; every answer closes
 * the connection. It is deliberately isolated (one function, bytes in, bytes out) so that a full HTTP
 * module can take its place.
 *
 * @module
 */

import { METRICS_CONTENT_TYPE, renderMetrics } from "./render.ts";

/** The most a scrape's request head may take; a longer one is answered 431. */
export const MAX_SCRAPE_REQUEST = 8 * 1024;

const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");

function response(status: string, contentType: string, body: string, withBody = true): Uint8Array {
  const bytes = encoder.encode(body);
  const head =
    `HTTP/1.1 ${status}\r\nContent-Type: ${contentType}\r\nContent-Length: ${bytes.byteLength}\r\n` +
    `Connection: close\r\n\r\n`;
  const headBytes = encoder.encode(head);
  const out = new Uint8Array(headBytes.byteLength + (withBody ? bytes.byteLength : 0));
  out.set(headBytes);
  if (withBody) out.set(bytes, headBytes.byteLength);
  return out;
}

/**
 * The answer to the request head received so far (`received`), or null while it is incomplete (no blank
 * line yet) and within {@link MAX_SCRAPE_REQUEST}.
 *
 * @example
 * ```ts
 * import { answerScrape } from "./http_responder.ts";
 * const answer = answerScrape(new TextEncoder().encode("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
 * ```
 */
export function answerScrape(received: Uint8Array): Uint8Array | null {
  const text = latin1.decode(received);
  if (!text.includes("\r\n\r\n") && !text.includes("\n\n")) {
    if (received.byteLength < MAX_SCRAPE_REQUEST) return null;
    return response("431 Request Header Fields Too Large", "text/plain", "request head too large\n");
  }
  const match = /^([A-Z]+) (\S+) HTTP\/1\.[01]\r?\n/.exec(text);
  if (match === null) return response("400 Bad Request", "text/plain", "not an HTTP/1.x request\n");
  const [, method, target] = match;
  if (method !== "GET" && method !== "HEAD") {
    return response("405 Method Not Allowed", "text/plain", "only GET and HEAD\n");
  }
  if (target.split("?")[0] !== "/metrics") return response("404 Not Found", "text/plain", "try /metrics\n");
  return response("200 OK", METRICS_CONTENT_TYPE, renderMetrics(), method === "GET");
}
