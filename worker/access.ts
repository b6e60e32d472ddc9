/**
 * Who may read what, inside a worker: the tokens of `--tokens` ({@link TokenStore}, reloadable), what one
 * connection has proven ({@link ConnectionAccess}: the `hello` nonce, the `auth` check), and the one rule
 * every access to the served tree obeys, {@link authorize}. `operations.ts` calls it for every request
 * before anything touches the file system (so no answer and no timing depends on whether a path exists)
 * and again in `openBeneath`, the one open of a served path; `listing.ts` asks {@link Access.reach} for
 * each name it would list. A front door that serves files through those functions obeys the same rule.
 *
 * @module
 */

import { AUTH_NONCE_BYTES, type ErrorBody, ErrorCode, type Request } from "../framing.ts";
import { constantTimeEqual } from "../hashing.ts";
import { authProof, fromHex, type Reach, reachOf, readTokensFile, toHex, type Token } from "../tokens.ts";

/**
 * The tokens a worker accepts, read from the `--tokens` file. {@link reload} reads it again; a file that
 * became invalid leaves the tokens as they were.
 */
export class TokenStore {
  #tokens: Map<string, Token>;
  /** Grows at each reload that changed the tokens: connections look their token up again. */
  generation = 0;

  /**
   * Reads the file. A worker that cannot (the file changed since the master checked it) logs why and
   * accepts no token at all: it fails closed, and `ping` still answers.
   * @param path the tokens file
   * @param log a line of the worker's own log
   */
  constructor(readonly path: string, readonly log: (line: string) => void) {
    try {
      this.#tokens = readTokensFile(path);
    } catch (e) {
      this.#tokens = new Map();
      log(`tokens: no token accepted: ${(e as Error).message}`);
    }
  }

  /** The token named `name`, if there is one. */
  get(name: string): Token | undefined {
    return this.#tokens.get(name);
  }

  /** How many tokens are in force. */
  get size(): number {
    return this.#tokens.size;
  }

  /**
   * Reads the tokens file again (on the server's reload). If it is valid, its tokens replace the old ones
   * for every connection from its next request on (a removed token, or a changed secret, is refused; a
   * changed scope applies); if not, the old tokens stay and the log says why. Returns true if it took the
   * new file.
   */
  reload(): boolean {
    try {
      this.#tokens = readTokensFile(this.path);
    } catch (e) {
      this.log(
        `tokens: reload refused, the ${this.#tokens.size} tokens in force stay: ${(e as Error).message}`,
      );
      return false;
    }
    this.generation++;
    this.log(`tokens: reloaded ${this.#tokens.size} tokens from ${this.path}`);
    return true;
  }
}

/** What a connection may reach of the served tree: the one question every file access asks. */
export interface Access {
  /** True when tokens are in force: a connection without a valid one may do nothing but `ping`. */
  readonly required: boolean;
  /** Where `path` (relative to the served directory) stands for this connection. */
  reach(path: string): Reach;
  /** The refusal for anything this connection may not reach: the same whatever the path. */
  refusal(): ErrorBody;
}

/** The access of every connection of a server without `--tokens`: the whole tree. */
export const OPEN_ACCESS: Access = {
  required: false,
  reach: () => "read",
  refusal: () => ({ code: ErrorCode.Unauthorized, message: "refused" }), // never asked for
};

/** A key for the HMAC of an `auth` naming no token: the check costs the same as for a real one. */
const NO_SECRET = new Uint8Array(32);

/** One connection's standing with a server that has tokens: the nonce it was given, the token it proved. */
export class ConnectionAccess implements Access {
  readonly required = true;
  #nonce: Uint8Array | null = null;
  /** The token proven by `auth`, as it was then. */
  #proven: Token | null = null;
  /** The token in force now ({@link TokenStore.generation} `#checkedAt`), or null. */
  #current: Token | null = null;
  #checkedAt = -1;

  /** @param store the worker's tokens */
  constructor(readonly store: TokenStore) {}

  /** Answers `hello`: a fresh random nonce (hex) for the next `auth`, replacing any earlier one. */
  hello(): string {
    this.#nonce = crypto.getRandomValues(new Uint8Array(AUTH_NONCE_BYTES));
    return toHex(this.#nonce);
  }

  /**
   * Checks an `auth`: `proof` must be the HMAC of this connection's last nonce and `name`, keyed by the
   * token's secret, compared in constant time. The nonce is used up either way, so a proof counts once,
   * on the connection it was made for. Returns the token's name, or null (an unknown name and a wrong
   * secret are told apart by nobody, and take the same time).
   */
  authenticate(name: string, proof: string): string | null {
    const nonce = this.#nonce;
    this.#nonce = null;
    this.#proven = this.#current = null;
    this.#checkedAt = -1;
    const given = fromHex(proof);
    if (nonce === null || given === null) return null;
    const token = this.store.get(name);
    const expected = authProof(token?.secret ?? NO_SECRET, nonce, name);
    if (!constantTimeEqual(expected, given) || token === undefined) return null;
    this.#proven = token;
    return name;
  }

  /** The token in force on this connection, looked up again after a reload: null if it is gone or changed. */
  get token(): Token | null {
    if (this.#proven === null) return null;
    if (this.#checkedAt !== this.store.generation) {
      const now = this.store.get(this.#proven.name);
      this.#current = now !== undefined && sameBytes(now.secret, this.#proven.secret) ? now : null;
      this.#checkedAt = this.store.generation;
    }
    return this.#current;
  }

  reach(path: string): Reach {
    const token = this.token;
    return token === null ? "none" : reachOf(token.scopes, path);
  }

  refusal(): ErrorBody {
    const token = this.token;
    return {
      code: ErrorCode.Unauthorized,
      message: token === null
        ? "a valid token is needed (hello, then auth)"
        : `the token ${JSON.stringify(token.name)} does not grant this path`,
    };
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && a.every((x, i) => x === b[i]);
}

/**
 * The rule of every access to the served tree: null if `access` may open `path` as `kind` (a file inside
 * its scopes; a folder inside them or on the way down to one), else the refusal, UNAUTHORIZED. It looks at
 * the path's text only, never at the file system.
 */
export function authorize(access: Access, path: string, kind: "file" | "directory"): ErrorBody | null {
  if (!access.required) return null;
  const reach = access.reach(path);
  return reach === "read" || (reach === "way" && kind === "directory") ? null : access.refusal();
}

/**
 * The gate of a request, before anything else is done for it: `ping`, `hello` and `auth` are open to all;
 * `get`, `stat` and `sig` need their path inside the token's scopes; `list` needs its folder inside them or
 * above one. Null if the request may go on, else the refusal.
 */
export function authorizeRequest(access: Access, request: Readonly<Request>): ErrorBody | null {
  if (!access.required) return null;
  switch (request.op) {
    case "ping":
    case "hello":
    case "auth":
      return null;
    case "list":
      return authorize(access, request.path!, "directory");
    default:
      return authorize(access, request.path!, "file");
  }
}
