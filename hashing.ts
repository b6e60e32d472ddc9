/**
 * SHA-256 and HMAC-SHA256 for the server and the client, from node:crypto loaded on first need. Loading it
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
