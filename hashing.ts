/**
 * SHA-256 and HMAC-SHA256 for the server and the client, from node:crypto loaded on first need, and the
 * folder digests a listing's `known` is made of. Loading it
 * costs 10-16 ms of a process's start: a worker loads it after it has said it is ready, and a client only
 * when it will hash or prove a token (a `--no-verify` fetch into a device or standard output never hashes).
 *
 * @module
 */

import type { Hash } from "node:crypto";

/** node:crypto, once {@link loadHashing} has run. */
let nodeCrypto: typeof import("node:crypto") | null = null;

/** Loads the SHA-256 implementation; to be awaited before {@link createSha256}. */
export async function loadHashing(): Promise<void> {
  nodeCrypto ??= await import("node:crypto");
}

/**
 * node:crypto itself, for what needs more than SHA-256 and HMAC (minisign's Ed25519 and BLAKE2b-512).
 * Throws if {@link loadHashing} has not completed.
 */
export function loadedCrypto(): typeof import("node:crypto") {
  if (nodeCrypto === null) throw new Error("node:crypto used before loadHashing() completed");
  return nodeCrypto;
}

/** A new SHA-256. Throws if {@link loadHashing} has not completed. */
export function createSha256(): Hash {
  if (nodeCrypto === null) throw new Error("SHA-256 used before loadHashing() completed");
  return nodeCrypto.createHash("sha256");
}

/**
 * HMAC-SHA256 of the concatenation of `parts`, keyed by `key` (a token's secret). Throws if
 * {@link loadHashing} has not completed.
 */
export function hmacSha256(key: Uint8Array, parts: readonly Uint8Array[]): Uint8Array {
  if (nodeCrypto === null) throw new Error("HMAC used before loadHashing() completed");
  const mac = nodeCrypto.createHmac("sha256", key);
  for (const part of parts) mac.update(part);
  return new Uint8Array(mac.digest());
}

/**
 * True if `a` and `b` hold the same bytes, in a time that depends only on their length (node:crypto's
 * timingSafeEqual); false for different lengths. Throws if {@link loadHashing} has not completed.
 */
export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (nodeCrypto === null) throw new Error("constantTimeEqual used before loadHashing() completed");
  return a.byteLength === b.byteLength && nodeCrypto.timingSafeEqual(a, b);
}

/**
 * Orders names as their UTF-8 bytes order (a listing's order, PROTOCOL.md): by code point, where
 * JavaScript's own comparison orders UTF-16 code units and so puts U+E000-U+FFFF after the surrogates.
 */
export function compareUtf8(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i), y = b.charCodeAt(i);
    if (x === y) continue;
    // A surrogate (0xD800-0xDFFF) starts a code point above U+FFFF: above anything in the BMP.
    const surrogateX = x >= 0xd800 && x <= 0xdfff, surrogateY = y >= 0xd800 && y <= 0xdfff;
    return surrogateX === surrogateY ? x - y : surrogateX ? 1 : -1;
  }
  return a.length - b.length;
}

/**
 * The digest of a folder's files as a listing gives them (PROTOCOL.md, `list`, `known`): the first 16
 * bytes, in base64url, of the SHA-256 of the folder's path, then of a line feed, the name, a tab and the
 * etag for each file it holds directly, in the order of `compareUtf8`. Files must be added in that order.
 * Throws if {@link loadHashing} has not completed.
 */
export class FolderDigest {
  readonly #hash = createSha256();
  #text: string;

  /** @param folder the folder's path relative to the served directory (`""` for the root) */
  constructor(folder: string) {
    this.#text = folder;
  }

  /** Adds the next file of the folder. */
  add(name: string, etag: string): void {
    this.#text += `\n${name}\t${etag}`;
    // A string of a few KiB per update, not an update (a call into node:crypto) per file.
    if (this.#text.length >= 8192) {
      this.#hash.update(this.#text);
      this.#text = "";
    }
  }

  /** The digest of the files added. */
  digest(): string {
    this.#hash.update(this.#text);
    this.#text = "";
    return this.#hash.digest().subarray(0, 16).toString("base64url");
  }
}

/** The {@link FolderDigest} of the folder `folder` holding `files`, in the order of `compareUtf8`. */
export function folderDigest(folder: string, files: Iterable<{ name: string; etag: string }>): string {
  const digest = new FolderDigest(folder);
  for (const { name, etag } of files) digest.add(name, etag);
  return digest.digest();
}
