/**
 * Tokens, the parts both ends share: the server's tokens file (`--tokens`) and the client's token file
 * (`--token-file`), read only when no one but their owner can open them; scopes and what a path may reach
 * under them; and the proof of the handshake (PROTOCOL.md, Authentication). The master reads the tokens
 * file to refuse to start on a bad one, each worker reads it to serve (`worker/access.ts`), the client
 * reads its own token file.
 *
 * @module
 */

import { AUTH_CONTEXT, AUTH_NONCE_BYTES, TOKEN_NAME } from "./framing.ts";
import { hmacSha256 } from "./hashing.ts";

/** A token file that cannot be used; the message is one line naming the file (and the line). */
export class TokenFileError extends Error {
  /** @param message one line saying what is wrong, naming the file */
  constructor(message: string) {
    super(message);
    this.name = "TokenFileError";
  }
}

/** A path's relation to a token's scopes. */
export type Reach =
  /** Inside a scope: readable, and so is everything below it. */
  | "read"
  /** A folder above a scope: it may be listed, but only the way down to its scopes shows. */
  | "way"
  /** Neither: refused. */
  | "none";

/** One identity of the server's tokens file. */
export interface Token {
  /** The name the client sends in `auth`. */
  readonly name: string;
  /** The shared secret, as the HMAC key (its UTF-8 bytes). */
  readonly secret: Uint8Array;
  /** The scopes as path segments; null for `*` (the whole tree). */
  readonly scopes: readonly (readonly string[])[] | null;
}

/** The client's token: the name and the secret. */
export interface ClientToken {
  /** The token's name. */
  readonly name: string;
  /** The secret (UTF-8 bytes). */
  readonly secret: Uint8Array;
}

/** A secret shorter than this is refused: it could be guessed. */
export const MIN_SECRET_LENGTH = 16;

const utf8 = new TextEncoder();

/**
 * Reads a token file that holds secrets: refuses it, like ssh does a private key, when it is not a regular
 * file or when its group or others have any permission on it (they could read the secret, or write in a
 * token of their own). Returns its text.
 */
export function readPrivateFile(path: string): string {
  const cannot = (e: unknown) =>
    new TokenFileError(`cannot read the token file ${path}: ${(e as Error).message}`);
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true });
  } catch (e) {
    throw cannot(e);
  }
  try {
    // The open file is what is checked and read: a file swapped in between cannot slip through.
    const stat = file.statSync();
    if (!stat.isFile) throw new TokenFileError(`the token file ${path} is not a regular file`);
    const mode = (stat.mode ?? 0) & 0o777;
    if ((mode & 0o077) !== 0) {
      throw new TokenFileError(
        `the token file ${path} is open to group or others (mode ${octal(mode)}): it holds secrets; ` +
          `chmod 600 it`,
      );
    }
    const bytes = new Uint8Array(stat.size);
    let got = 0;
    for (let n; got < bytes.byteLength && (n = file.readSync(bytes.subarray(got))) !== null;) got += n;
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(0, got));
  } catch (e) {
    if (e instanceof TokenFileError) throw e;
    throw cannot(e);
  } finally {
    file.close();
  }
}

const octal = (mode: number) => `0${mode.toString(8).padStart(3, "0")}`;

/**
 * The lines of a token file that say something: without comments (`#` to the end of the line) and blank
 * lines, each split into its fields (separated by spaces or tabs), with its line number.
 */
function meaningfulLines(text: string): { line: number; fields: string[] }[] {
  const out: { line: number; fields: string[] }[] = [];
  text.split("\n").forEach((raw, i) => {
    const hash = raw.indexOf("#");
    const fields = (hash >= 0 ? raw.slice(0, hash) : raw).trim().split(/[ \t]+/).filter((f) => f !== "");
    if (fields.length > 0) out.push({ line: i + 1, fields });
  });
  return out;
}

/** Checks a name and a secret of a token file's line; returns a reason, or null when both are good. */
function badNameOrSecret(name: string, secret: string | undefined): string | null {
  if (!TOKEN_NAME.test(name)) {
    return `the name ${JSON.stringify(name)} is not 1 to 64 letters, digits, '.', '_', '@' or '-'`;
  }
  if (secret === undefined) return "no secret after the name";
  if (secret.length < MIN_SECRET_LENGTH) {
    return `the secret is shorter than ${MIN_SECRET_LENGTH} characters (make one with: openssl rand -hex 32)`;
  }
  return null;
}

/**
 * Parses the server's tokens file: one identity per line, `NAME SECRET SCOPE...`, where a scope is `*` (the
 * whole tree) or a path relative to the served directory. Throws {@link TokenFileError} naming the line of
 * the first malformed entry.
 */
export function parseTokens(text: string, path: string): Map<string, Token> {
  const tokens = new Map<string, Token>();
  for (const { line, fields } of meaningfulLines(text)) {
    const bad = (why: string) => new TokenFileError(`${path}, line ${line}: ${why}`);
    const [name, secret, ...scopeTexts] = fields;
    const reason = badNameOrSecret(name, secret);
    if (reason !== null) throw bad(reason);
    if (scopeTexts.length === 0) {
      throw bad(`no scope after the secret of ${JSON.stringify(name)} (give * for all)`);
    }
    if (tokens.has(name)) throw bad(`the name ${JSON.stringify(name)} is given twice`);
    let scopes: string[][] | null = [];
    for (const scope of scopeTexts) {
      if (scope === "*") {
        scopes = null;
        continue;
      }
      const segments = segmentsOf(scope);
      if (segments === null || segments.length === 0) {
        throw bad(`the scope ${JSON.stringify(scope)} is not * or a relative path without '..'`);
      }
      scopes?.push(segments);
    }
    tokens.set(name, { name, secret: utf8.encode(secret), scopes });
  }
  return tokens;
}

/** Reads and parses the server's tokens file ({@link readPrivateFile}, {@link parseTokens}). */
export function readTokensFile(path: string): Map<string, Token> {
  return parseTokens(readPrivateFile(path), path);
}

/**
 * Reads the client's token file: one line `NAME SECRET` (comments and blank lines allowed), open to no one
 * but its owner. Throws {@link TokenFileError}.
 */
export function readClientToken(path: string): ClientToken {
  const lines = meaningfulLines(readPrivateFile(path));
  if (lines.length !== 1) {
    throw new TokenFileError(`the token file ${path} must hold one line 'NAME SECRET', not ${lines.length}`);
  }
  const { line, fields } = lines[0];
  const reason = fields.length > 2 ? "more than 'NAME SECRET'" : badNameOrSecret(fields[0], fields[1]);
  if (reason !== null) throw new TokenFileError(`${path}, line ${line}: ${reason}`);
  return { name: fields[0], secret: utf8.encode(fields[1]) };
}

/**
 * The segments of a relative path as the server resolves it: empty and `.` segments dropped (the kernel
 * ignores them too). Null for an absolute path or one with `..` (the protocol refuses those anyway).
 */
export function segmentsOf(path: string): string[] | null {
  if (path.startsWith("/")) return null;
  const segments = path.split("/").filter((s) => s !== "" && s !== ".");
  return segments.includes("..") ? null : segments;
}

/**
 * Where `path` stands with respect to `scopes` (null: the whole tree). Scopes match whole segments: the
 * scope `docs` covers `docs` and everything below it, never `docs2`. A folder above a scope (the root
 * above any) is on the way to it.
 */
export function reachOf(scopes: readonly (readonly string[])[] | null, path: string): Reach {
  if (scopes === null) return "read";
  const segments = segmentsOf(path);
  if (segments === null) return "none";
  let reach: Reach = "none";
  for (const scope of scopes) {
    const n = Math.min(scope.length, segments.length);
    let i = 0;
    while (i < n && scope[i] === segments[i]) i++;
    if (i < n) continue;
    if (segments.length >= scope.length) return "read";
    reach = "way";
  }
  return reach;
}

/**
 * The proof of `auth`: HMAC-SHA256, keyed by the secret, of {@link AUTH_CONTEXT}, a NUL byte, the server's
 * nonce and the name. Needs `loadHashing()` first.
 */
export function authProof(secret: Uint8Array, nonce: Uint8Array, name: string): Uint8Array {
  if (nonce.byteLength !== AUTH_NONCE_BYTES) throw new Error(`a nonce of ${nonce.byteLength} bytes`);
  return hmacSha256(secret, [utf8.encode(AUTH_CONTEXT), new Uint8Array(1), nonce, utf8.encode(name)]);
}

/** Bytes as lowercase hex. */
export function toHex(bytes: Uint8Array): string {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

/** Lowercase hex as bytes; null if it is not an even number of hex digits. */
export function fromHex(hex: string): Uint8Array | null {
  if (hex.length % 2 !== 0 || !/^[0-9a-f]*$/.test(hex)) return null;
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.byteLength; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}
