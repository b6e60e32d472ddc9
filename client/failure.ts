/**
 * The client's failures: one exit code per cause, so that a script or a systemd unit can act on them, and
 * for each failure whether trying again can help. Every error the client meets is turned into a
 * {@link ClientError} by {@link classify}; its message is the one line printed on stderr.
 *
 * @module
 */

import { type ErrorBody, ErrorCode } from "../framing.ts";
import { StallError, TruncatedError } from "./frame_reader.ts";
import { LocalIoError, PartLockedError } from "./publish.ts";

/** The client's exit codes: one per cause. */
export const ExitCode = {
  /** Every file was fetched and published, or was already current. */
  Ok: 0,
  /** An unexpected internal error (a bug: please report it). */
  Internal: 1,
  /** The command line is wrong. */
  Usage: 2,
  /** Could not connect, the connection stalled, or --timeout expired. */
  Connect: 3,
  /** The server was still busy after the retries. */
  Busy: 4,
  /** The server refused the path: not found, forbidden, or not a regular file (or directory). */
  NotFound: 5,
  /** The server's answer broke the protocol, the connection was cut, or the server failed. */
  Protocol: 6,
  /** The data arrived but did not match the server's size or SHA-256. */
  Verification: 7,
  /** A local file or directory could not be read or written. */
  LocalIo: 8,
  /** Another run holds the lock (--lock, or the partial download of the same file). */
  Locked: 9,
  /**
   * mirror: the server's listing was not the whole tree (folders or files it could not read, names it
   * cannot serve, limits): what it listed was mirrored, and nothing was deleted.
   */
  Partial: 10,
  /**
   * The server refused for want of a valid token (UNAUTHORIZED): none given while it needs one, a name or
   * secret it does not know, or a path outside the token's scopes. Not retried.
   */
  Unauthorized: 11,
} as const;

/** One of the {@link ExitCode} values. */
export type ExitCodeValue = typeof ExitCode[keyof typeof ExitCode];

/** How a {@link ClientError} may be retried. */
export interface RetryAdvice {
  /** True if the same operation may succeed when tried again (a network or server-side hiccup). */
  retryable?: boolean;
  /** The server's hint: do not try again sooner than this, in milliseconds. */
  retryAfterMs?: number;
  /** The id the server gave the answer that failed, to find it in the server's log. */
  requestId?: string;
}

/** A failure with the exit code it maps to; its message is the one line printed on stderr. */
export class ClientError extends Error {
  /** The exit code for this failure. */
  readonly exitCode: ExitCodeValue;
  /** True if trying again may help. */
  readonly retryable: boolean;
  /** The server's lower bound for the next try, in milliseconds. */
  readonly retryAfterMs: number | undefined;
  /** The server's id of the answer that failed, when a server answered with one. */
  readonly requestId: string | undefined;
  /**
   * @param exitCode one of {@link ExitCode}
   * @param message one line saying what went wrong
   * @param advice whether and when to try again (default: not retryable), and the error it stands for
   */
  constructor(exitCode: ExitCodeValue, message: string, advice: RetryAdvice & { cause?: unknown } = {}) {
    super(message, { cause: advice.cause });
    this.name = "ClientError";
    this.exitCode = exitCode;
    this.retryable = advice.retryable ?? false;
    this.retryAfterMs = advice.retryAfterMs;
    this.requestId = advice.requestId;
  }
}

/** A failure of the command line (exit 2). */
export function usageError(message: string): ClientError {
  return new ClientError(ExitCode.Usage, message);
}

/** An answer that breaks the protocol (exit 6, not retried: the same server would answer the same). */
export function protocolError(message: string): ClientError {
  return new ClientError(ExitCode.Protocol, `protocol error: ${message}`);
}

/** The server answered a request with an Error frame. */
export class ServerRefusal extends Error {
  /** The error frame's JSON. */
  readonly body: ErrorBody;
  /**
   * @param body the error frame's JSON
   * @param what the request, for the message (e.g. the path)
   */
  constructor(body: ErrorBody, what: string) {
    const retry = body.retryAfterMs !== undefined ? ` (retry after ${body.retryAfterMs}ms)` : "";
    const id = typeof body.requestId === "string" ? ` [request ${body.requestId}]` : "";
    super(`server refused ${what}: ${body.code}: ${body.message}${retry}${id}`);
    this.name = "ServerRefusal";
    this.body = body;
  }
}

/** The server's error codes that mean "this path cannot be served", whatever one tries. */
const REFUSED_PATH: readonly string[] = [ErrorCode.NotFound, ErrorCode.Forbidden, ErrorCode.NotAFile];

/** Maps a server's Error frame to its exit code and retry advice. */
function fromRefusal(e: ServerRefusal): ClientError {
  const { code, retryAfterMs } = e.body;
  const requestId = typeof e.body.requestId === "string" ? e.body.requestId : undefined;
  if (code === ErrorCode.Busy) {
    return new ClientError(ExitCode.Busy, e.message, { retryable: true, retryAfterMs, requestId });
  }
  if (REFUSED_PATH.includes(code)) return new ClientError(ExitCode.NotFound, e.message, { requestId });
  if (code === ErrorCode.Unauthorized) {
    return new ClientError(ExitCode.Unauthorized, e.message, { requestId });
  }
  // The server gave up waiting for our request: a slow network or a stopped client, worth another try.
  if (code === ErrorCode.Timeout) {
    return new ClientError(ExitCode.Connect, e.message, { retryable: true, requestId });
  }
  // The file moved on while we fetched it: the next try fetches the new version whole.
  if (code === ErrorCode.FileChanged || code === ErrorCode.Changed) {
    return new ClientError(ExitCode.Protocol, e.message, { retryable: true, requestId });
  }
  return new ClientError(ExitCode.Protocol, e.message, { requestId });
}

/** Turns any failure into a ClientError with its exit code and retry advice. */
export function classify(e: unknown): ClientError {
  if (e instanceof ClientError) return e;
  if (e instanceof ServerRefusal) return fromRefusal(e);
  if (e instanceof StallError) return new ClientError(ExitCode.Connect, e.message, { retryable: true });
  if (e instanceof TruncatedError) {
    return new ClientError(ExitCode.Protocol, `protocol error: ${e.message}`, { retryable: true });
  }
  if (e instanceof PartLockedError) return new ClientError(ExitCode.Locked, e.message);
  if (e instanceof LocalIoError) return new ClientError(ExitCode.LocalIo, e.message, { cause: e });
  if (
    e instanceof Deno.errors.ConnectionReset || e instanceof Deno.errors.BrokenPipe ||
    e instanceof Deno.errors.UnexpectedEof || e instanceof Deno.errors.ConnectionAborted
  ) {
    return new ClientError(ExitCode.Protocol, `protocol error: connection lost: ${e.message}`, {
      retryable: true,
    });
  }
  return new ClientError(ExitCode.Internal, `internal error: ${e instanceof Error ? e.stack : String(e)}`);
}

/**
 * Exit codes from the most to the least serious, for a run over many files: a bug first, then what needs
 * the operator on this host (disk, corrupted data, the token), then the server's side, then a listing that was not
 * the whole tree, then a file that was listed and then went away.
 */
const SEVERITY: readonly number[] = [
  ExitCode.Internal,
  ExitCode.LocalIo,
  ExitCode.Verification,
  ExitCode.Locked,
  ExitCode.Unauthorized,
  ExitCode.Protocol,
  ExitCode.Connect,
  ExitCode.Busy,
  ExitCode.Partial,
  ExitCode.NotFound,
  ExitCode.Usage,
];

/** The most serious of `codes` (0 when all are 0). */
export function worstExitCode(codes: Iterable<number>): number {
  let worst: number = ExitCode.Ok;
  for (const code of codes) {
    if (code === ExitCode.Ok) continue;
    if (worst === ExitCode.Ok || SEVERITY.indexOf(code) < SEVERITY.indexOf(worst)) worst = code;
  }
  return worst;
}
