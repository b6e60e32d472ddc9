/**
 * SHA-256 for the server and the client, from node:crypto loaded on first need. Loading it costs 10-16 ms
 * of a process's start: a worker loads it after it has said it is ready, and a client only when it will
 * hash (a `--no-verify` fetch into a device or standard output never does).
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

/** A new SHA-256. Throws if {@link loadHashing} has not completed. */
export function createSha256(): Hash {
  if (nodeCrypto === null) throw new Error("SHA-256 used before loadHashing() completed");
  return nodeCrypto.createHash("sha256");
}
