/**
 * HAProxy's PROXY protocol header, versions 1 (text) and 2 (binary), as a proxy sends it first on a
 * connection to say who its client is (https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt).
 * {@link parseProxyHeader} reads it from the bytes at the start of a connection, which may still be
 * incomplete; {@link looksLikeProxyHeader} tells a header sent by a peer that may not send one.
 *
 * No fds, no syscalls: addresses in version 1 are read with inet_pton(3), which refuses the ambiguous
 * forms (leading zeros, which some parsers read as octal).
 *
 * @module
 */

import type { IpAddress } from "./cidr.ts";
import { C } from "../ffi/libc.ts";
import { addressBytes } from "../ffi/sockaddr.ts";

/** The 12 bytes every version 2 header starts with. */
export const PROXY_V2_SIGNATURE: Uint8Array = new Uint8Array([
  0x0d,
  0x0a,
  0x0d,
  0x0a,
  0x00,
  0x0d,
  0x0a,
  0x51,
  0x55,
  0x49,
  0x54,
  0x0a,
]);
const V1_PREFIX = new TextEncoder().encode("PROXY ");
/** Longest version 1 header, CRLF included (the specification's limit). */
const V1_MAX_BYTES = 107;
/** Bytes of a version 2 header before its addresses: signature, version and command, family, length. */
const V2_FIXED_BYTES = 16;
/**
 * Longest version 2 header accepted. Addresses take at most 216 bytes (Unix paths); the rest is TLVs
 * (TLS details, unique ids), which HAProxy keeps to a few hundred bytes. A larger header is refused.
 */
export const PROXY_HEADER_MAX_BYTES = 2048;

/** What the start of a connection holds. */
export type ProxyHeader =
  /** Not all of the header has arrived yet; it may still become valid. */
  | { kind: "incomplete" }
  /** Not a valid header: `reason` says why, in a few words. */
  | { kind: "invalid"; reason: string }
  /** The proxy relays a client: `length` bytes of header, then the client's bytes. */
  | { kind: "proxied"; length: number; version: 1 | 2; source: IpAddress; port: number }
  /**
   * A connection of the proxy's own (v2 LOCAL, e.g. a health check; v1 UNKNOWN; or an address family
   * other than IPv4/IPv6): the connection's own address stands.
   */
  | { kind: "local"; length: number; version: 1 | 2 };

/** True if `bytes` start the way a PROXY header does (at least 4 bytes of it are needed to say). */
export function looksLikeProxyHeader(bytes: Uint8Array): boolean {
  return startsWithPart(bytes, V1_PREFIX, 4) || startsWithPart(bytes, PROXY_V2_SIGNATURE, 4);
}

/** True if `bytes` and `prefix` agree on their common length, which is at least `least`. */
function startsWithPart(bytes: Uint8Array, prefix: Uint8Array, least: number): boolean {
  const n = Math.min(bytes.byteLength, prefix.byteLength);
  if (n < least) return false;
  for (let i = 0; i < n; i++) if (bytes[i] !== prefix[i]) return false;
  return true;
}

/** Parses the PROXY header at the start of `bytes` (version 1 or 2, told apart by its first bytes). */
export function parseProxyHeader(bytes: Uint8Array): ProxyHeader {
  if (bytes.byteLength === 0) return { kind: "incomplete" };
  if (bytes[0] === PROXY_V2_SIGNATURE[0]) return parseV2(bytes);
  if (bytes[0] === V1_PREFIX[0]) return parseV1(bytes);
  return { kind: "invalid", reason: "no PROXY header (the first bytes are neither version 1 nor 2)" };
}

function parseV2(bytes: Uint8Array): ProxyHeader {
  const have = Math.min(bytes.byteLength, PROXY_V2_SIGNATURE.byteLength);
  for (let i = 0; i < have; i++) {
    if (bytes[i] !== PROXY_V2_SIGNATURE[i]) return { kind: "invalid", reason: "bad version 2 signature" };
  }
  if (bytes.byteLength < V2_FIXED_BYTES) return { kind: "incomplete" };
  const versionCommand = bytes[12];
  if (versionCommand >> 4 !== 2) {
    return { kind: "invalid", reason: `version ${versionCommand >> 4} in a version 2 signature` };
  }
  const command = versionCommand & 0x0f;
  if (command > 1) return { kind: "invalid", reason: `unknown command ${command}` };
  const family = bytes[13] >> 4;
  const transport = bytes[13] & 0x0f;
  const length = V2_FIXED_BYTES + ((bytes[14] << 8) | bytes[15]);
  if (length > PROXY_HEADER_MAX_BYTES) {
    return { kind: "invalid", reason: `a ${length}-byte header (at most ${PROXY_HEADER_MAX_BYTES})` };
  }
  if (family > 3 || transport > 2) {
    return { kind: "invalid", reason: `unknown address family/transport 0x${bytes[13].toString(16)}` };
  }
  if (bytes.byteLength < length) return { kind: "incomplete" };
  // LOCAL: the proxy's own connection, whatever addresses follow (the specification says to ignore them).
  if (command === 0) return { kind: "local", length, version: 2 };
  if (family !== 1 && family !== 2) return { kind: "local", length, version: 2 }; // UNSPEC or Unix
  if (transport !== 1) return { kind: "invalid", reason: "a datagram (not a stream) connection" };
  const addressBytes = family === 1 ? 4 : 16;
  if (length < V2_FIXED_BYTES + 2 * addressBytes + 4) {
    return { kind: "invalid", reason: `addresses cut short (${length - V2_FIXED_BYTES} bytes)` };
  }
  const at = V2_FIXED_BYTES;
  const source = bytes.slice(at, at + addressBytes);
  const portAt = at + 2 * addressBytes;
  const port = (bytes[portAt] << 8) | bytes[portAt + 1];
  return { kind: "proxied", length, version: 2, source, port };
}

const V1_LINE = /^PROXY (?:UNKNOWN(?: [^\r\n]*)?|(TCP4|TCP6) (\S+) (\S+) (\d{1,5}) (\d{1,5}))$/;

function parseV1(bytes: Uint8Array): ProxyHeader {
  const have = Math.min(bytes.byteLength, V1_PREFIX.byteLength);
  for (let i = 0; i < have; i++) {
    if (bytes[i] !== V1_PREFIX[i]) return { kind: "invalid", reason: "bad version 1 prefix" };
  }
  const scan = Math.min(bytes.byteLength, V1_MAX_BYTES);
  let end = -1;
  for (let i = 0; i < scan; i++) {
    if (bytes[i] === 0x0a) {
      end = i;
      break;
    }
    if (bytes[i] < 0x20 && bytes[i] !== 0x0d) return { kind: "invalid", reason: "control byte in version 1" };
  }
  if (end === -1) {
    return bytes.byteLength < V1_MAX_BYTES
      ? { kind: "incomplete" }
      : { kind: "invalid", reason: `no CRLF within ${V1_MAX_BYTES} bytes` };
  }
  if (end === 0 || bytes[end - 1] !== 0x0d) return { kind: "invalid", reason: "line not ended by CRLF" };
  const line = new TextDecoder().decode(bytes.subarray(0, end - 1));
  const m = V1_LINE.exec(line);
  if (m === null) return { kind: "invalid", reason: `malformed version 1 line ${JSON.stringify(line)}` };
  const length = end + 1;
  if (m[1] === undefined) return { kind: "local", length, version: 1 };
  const family = m[1] === "TCP4" ? C.AF_INET : C.AF_INET6;
  const source = addressBytes(family, m[2])?.slice(0, family === C.AF_INET ? 4 : 16) ?? null;
  const destination = addressBytes(family, m[3]);
  const port = Number(m[4]);
  if (source === null || destination === null) {
    return { kind: "invalid", reason: `bad ${m[1]} address in ${JSON.stringify(line)}` };
  }
  if (port > 65535 || Number(m[5]) > 65535 || /^0\d/.test(m[4]) || /^0\d/.test(m[5])) {
    return { kind: "invalid", reason: `bad port in ${JSON.stringify(line)}` };
  }
  return { kind: "proxied", length, version: 1, source, port };
}
