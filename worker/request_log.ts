/**
 * The request log's line, in either `--log-format`: `text`, key=value fields after the time (the request's
 * label and result last, as they may hold spaces), or `json`, one object with the same fields.
 *
 * @module
 */

import type { LogFormat } from "../channel/log_format.ts";

/** What one request's line says. */
export interface RequestRecord {
  /** When it ended, ISO 8601. */
  time: string;
  /** Its request id, or "-" for a connection that sent none. */
  id: string;
  /** The client's address. */
  peer: string;
  /** The worker that answered. */
  worker: number;
  /** The request, e.g. `GET "a.txt" offset=10`. */
  request: string;
  /** Bytes sent for it. */
  bytes: number;
  /** Seconds from its arrival to the end of its answer. */
  seconds: number;
  /** How it ended: `ok`, `unchanged`, `refused NOT_FOUND`, ... */
  result: string;
}

/** The line for `record` in `format` (no newline). */
export function formatRequestLine(format: LogFormat, record: RequestRecord): string {
  const { time, id, peer, worker, request, bytes, seconds, result } = record;
  if (format === "json") {
    return JSON.stringify({
      time,
      id,
      peer,
      worker,
      request,
      bytes,
      duration: Number(seconds.toFixed(6)),
      result,
    });
  }
  return `${time} id=${id} peer=${peer} worker=${worker} request=${request} bytes=${bytes} ` +
    `duration=${seconds.toFixed(3)}s result=${result}`;
}

/** The metrics' result for a log result: the first word, an error code in lower case, else `aborted`. */
export function metricResult(result: string): string {
  // "refused CODE", or "refused CODE http=404" for an HTTP answer: the code is the result.
  if (result.startsWith("refused ")) return result.slice("refused ".length).split(" ", 1)[0].toLowerCase();
  const word = result.split(" ", 1)[0];
  return word === "ok" || word === "unchanged" || word === "partial" || word === "timeout" ? word : "aborted";
}
