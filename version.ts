/**
 * ferry's version: the one place it is written. The server's and the client's `--version` print it, and
 * the server's log names it when it is ready, so that after an upgrade the log says which one answers.
 *
 * @module
 */

/** The version of this ferry (server and client are released together). */
export const FERRY_VERSION = "1.0.0";

/** The line `--version` prints: `ferry-server 1.0.0 (deno 2.9.6)`, for `program`. */
export function versionLine(program: string): string {
  return `${program} ${FERRY_VERSION} (deno ${Deno.version.deno})`;
}
