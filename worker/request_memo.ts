/**
 * Parsed requests remembered by their exact bytes. A fleet sends the same few requests over and over
 * (the same paths, often the same `ifNoneMatch`), and decoding and checking the JSON was the largest
 * share of a worker's JavaScript per request once small replies came from memory. A request found here
 * costs a hash and a comparison of its bytes, both in plain JavaScript.
 *
 * @module
 */

import { parseRequest, type Request } from "../framing.ts";
import { setWithin } from "./bounded_map.ts";

/** Requests remembered at most; beyond, the oldest are forgotten. */
const MAX_REQUESTS = 4096;

/** Requests larger than this are parsed every time (they are rare, and keeping them costs memory). */
const MAX_REMEMBERED_BYTES = 512;

interface Remembered {
  bytes: Uint8Array;
  request: Readonly<Request>;
}

const remembered = new Map<number, Remembered>();

/**
 * {@link parseRequest}, remembering the requests that parse: the same bytes give the same, shared
 * Request object, which callers must not modify. A request that fails to parse throws every time.
 */
export function parseRequestRemembered(payload: Uint8Array): Readonly<Request> {
  if (payload.byteLength > MAX_REMEMBERED_BYTES) return parseRequest(payload);
  const key = fnv1a(payload);
  const known = remembered.get(key);
  if (known !== undefined && sameBytes(known.bytes, payload)) return known.request;
  const request = parseRequest(payload);
  // An `auth` is never sent twice (its proof is made for one nonce): remembering it would only push out
  // requests that come again.
  if (request.op === "auth") return request;
  setWithin(remembered, key, { bytes: payload.slice(), request: Object.freeze(request) }, MAX_REQUESTS);
  return request;
}

/** 32-bit FNV-1a: a cheap, well-spread hash for short byte strings (not a defence against collisions). */
function fnv1a(bytes: Uint8Array): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < bytes.byteLength; i++) hash = Math.imul(hash ^ bytes[i], 0x01000193);
  return hash >>> 0;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}
