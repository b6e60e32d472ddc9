/**
 * The log's two formats, shared by the master and the workers: `text`, one line of `key=value` fields
 * (the default), and `json`, one JSON object per line with the same fields, for log shippers.
 *
 * @module
 */

/** The values of `--log-format`. */
export const LOG_FORMATS = ["text", "json"] as const;

/** One of {@link LOG_FORMATS}. */
export type LogFormat = typeof LOG_FORMATS[number];

/**
 * A line of the server's own log (not a request's) as JSON: the time, who says it (`{"process":
 * "master"}` or `{"worker": N}`) and what.
 */
export function jsonServiceLine(time: string, who: Record<string, string | number>, message: string): string {
  return JSON.stringify({ time, ...who, message });
}
