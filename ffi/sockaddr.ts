/**
 * Socket addresses between their text (`127.0.0.1`, `::1`) and the `sockaddr_in`/`sockaddr_in6` the kernel
 * takes and gives (layouts in `structs.ts`), through inet_pton(3) and inet_ntop(3).
 *
 * @module
 */

import { C, LibcError, sys } from "./libc.ts";
import { SOCKADDR_IN, SOCKADDR_IN6 } from "./structs.ts";

/** An IP endpoint: IPv4 dotted quad or IPv6 address (no brackets), and a port. */
export interface Endpoint {
  /** `AF_INET` or `AF_INET6`. */
  family: number;
  /** Numeric address text, e.g. `127.0.0.1` or `::1`. */
  host: string;
  /** Port number, 0 meaning "pick a free one". */
  port: number;
}

/** Formats an endpoint as `127.0.0.1:7420` or `[::1]:7420`. */
export function formatEndpoint(ep: Endpoint): string {
  return ep.family === C.AF_INET6 ? `[${ep.host}]:${ep.port}` : `${ep.host}:${ep.port}`;
}

/** The address bytes of `host` in `family` (inet_pton(3)), or null if it is not a numeric address of it. */
export function addressBytes(family: number, host: string): Uint8Array | null {
  const out = new Uint8Array(16);
  const r = sys.inet_pton(family, new TextEncoder().encode(host + "\0"), out);
  if (r === -1) throw new LibcError("inet_pton", C.EAFNOSUPPORT, `(family ${family})`);
  return r === 1 ? out : null;
}

/** Encodes an endpoint as a `sockaddr_in` (16 bytes) or `sockaddr_in6` (28 bytes). */
export function encodeSockaddr(ep: Endpoint): Uint8Array {
  const raw = addressBytes(ep.family, ep.host);
  if (raw === null) throw new Error(`'${ep.host}' is not a numeric address`);
  const layout = ep.family === C.AF_INET6 ? SOCKADDR_IN6 : SOCKADDR_IN;
  const buf = new Uint8Array(layout.size);
  const view = new DataView(buf.buffer);
  view.setUint16(layout.family, ep.family, true);
  view.setUint16(layout.port, ep.port, false);
  buf.set(raw.subarray(0, layout.addrSize), layout.addr);
  return buf;
}

/** Longest path of a `sockaddr_un` (its `sun_path` is 108 bytes). */
const UNIX_PATH_MAX = 108;

/**
 * Encodes a Unix socket's address as a `sockaddr_un`: a file system path, or with a leading `@` a name in
 * the abstract namespace (as systemd writes it in NOTIFY_SOCKET), whose length is exact, without a NUL.
 */
export function encodeUnixSockaddr(path: string): Uint8Array {
  const abstract = path.startsWith("@");
  const name = new TextEncoder().encode(abstract ? path.slice(1) : path);
  if (name.byteLength === 0 || name.byteLength >= UNIX_PATH_MAX) {
    throw new Error(`'${path}' is not a Unix socket address (1 to ${UNIX_PATH_MAX - 1} bytes)`);
  }
  // sa_family (2 bytes), then the path: NUL-terminated, or after one NUL for the abstract namespace.
  const buf = new Uint8Array(2 + name.byteLength + 1);
  new DataView(buf.buffer).setUint16(0, C.AF_UNIX, true);
  buf.set(name, abstract ? 3 : 2);
  return buf;
}

const ntopOut = new Uint8Array(64);

/** True for an IPv4 or IPv6 address (a TCP peer), false for anything else (a Unix socket's). */
export function isInetSockaddr(buf: Uint8Array): boolean {
  if (buf.byteLength < 2) return false;
  const family = buf[SOCKADDR_IN.family] | (buf[SOCKADDR_IN.family + 1] << 8);
  return family === C.AF_INET || family === C.AF_INET6;
}

/** Decodes a `sockaddr_in`/`sockaddr_in6` written by the kernel; null for any other family. */
export function decodeSockaddr(buf: Uint8Array): Endpoint | null {
  if (!isInetSockaddr(buf)) return null;
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const family = view.getUint16(SOCKADDR_IN.family, true);
  const port = view.getUint16(SOCKADDR_IN.port, false);
  // Dotted quads are formatted here: inet_ntop(3) formats them with sprintf, once per connection.
  if (family === C.AF_INET) {
    const a = SOCKADDR_IN.addr;
    return { family, host: `${buf[a]}.${buf[a + 1]}.${buf[a + 2]}.${buf[a + 3]}`, port };
  }
  const raw = buf.slice(SOCKADDR_IN6.addr, SOCKADDR_IN6.addr + SOCKADDR_IN6.addrSize);
  const p = sys.inet_ntop(family, raw, ntopOut, ntopOut.byteLength);
  if (p === null) return null;
  return { family, host: Deno.UnsafePointerView.getCString(p), port };
}
