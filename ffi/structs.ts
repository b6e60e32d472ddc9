/**
 * C struct layouts used by ferry on x86_64 Linux, written once: `sockaddr_in`, `sockaddr_in6`, the packed
 * `epoll_event`, `msghdr`, `iovec` and `cmsghdr`, with helpers to encode and decode socket addresses.
 *
 * @module
 */

import { C, LibcError, sys } from "./libc.ts";

/** Offsets and sizes of `struct msghdr` (56 bytes), `struct iovec` (16) and `struct cmsghdr` (16 + data). */
export const MSGHDR = {
  size: 56,
  name: 0,
  namelen: 8,
  iov: 16,
  iovlen: 24,
  control: 32,
  controllen: 40,
  flags: 48,
} as const;

/** `struct iovec`: base pointer at 0, length at 8. */
export const IOVEC = { size: 16, base: 0, len: 8 } as const;

/** `struct cmsghdr` header and the CMSG_* sizes for one int of data. */
export const CMSG = {
  len: 0,
  level: 8,
  type: 12,
  data: 16,
  /** CMSG_LEN(0): the header before the fds. */
  lenNoData: 16,
  SCM_RIGHTS: 1,
} as const;

/** CMSG_LEN for `count` fds. */
export function cmsgLenFds(count: number): number {
  return CMSG.lenNoData + 4 * count;
}

/** CMSG_SPACE for `count` fds (the length rounded up to 8). */
export function cmsgSpaceFds(count: number): number {
  return (cmsgLenFds(count) + 7) & ~7;
}

/** `struct epoll_event` is packed on x86_64: events u32 at 0, data u64 at 4. */
export const EPOLL_EVENT = { size: 12, events: 0, data: 4 } as const;

/**
 * `struct linux_dirent64`, as getdents64(2) fills a buffer with them: inode (u64) at 0, offset (i64) at 8,
 * record length (u16) at 16, type (u8) at 18, then the NUL-terminated name; records are 8-byte aligned.
 */
export const DIRENT64 = { ino: 0, off: 8, reclen: 16, type: 18, name: 19 } as const;

/** `d_type` values of {@link DIRENT64}: some file systems say DT_UNKNOWN and leave the type to a stat. */
export const DT = { UNKNOWN: 0, DIR: 4, REG: 8, LNK: 10 } as const;

/** One record of a getdents64(2) buffer: the raw name (a view into the buffer) and its `d_type`. */
export interface RawDirent {
  /** The name's bytes, without the NUL; valid until the buffer is refilled. */
  name: Uint8Array;
  /** One of {@link DT}, or another `d_type`. */
  type: number;
}

/** The records of the first `length` bytes of a getdents64(2) buffer, `.` and `..` left out. */
export function* direntsOf(buf: Uint8Array, length: number): Generator<RawDirent> {
  for (let at = 0; at < length;) {
    const reclen = buf[at + DIRENT64.reclen] | buf[at + DIRENT64.reclen + 1] << 8;
    const start = at + DIRENT64.name;
    let end = start;
    while (end < at + reclen && buf[end] !== 0) end++;
    const name = buf.subarray(start, end);
    const dots = name.byteLength <= 2 && name.every((b) => b === 0x2e);
    if (!dots) yield { name, type: buf[at + DIRENT64.type] };
    at += reclen;
  }
}

/** Size of a buffer large enough for any socket address ferry handles (`sockaddr_in6`, 28 bytes). */
export const SOCKADDR_MAX = 28;

/** A parsed `HOST:PORT` endpoint: IPv4 dotted quad or IPv6 address (brackets removed). */
export interface Endpoint {
  /** `AF_INET` or `AF_INET6`. */
  family: number;
  /** Numeric address text, e.g. `127.0.0.1` or `::1`. */
  host: string;
  /** Port number, 0 meaning "pick a free one". */
  port: number;
}

/**
 * Parses `HOST:PORT`, `[IPV6]:PORT` or `localhost:PORT` into an {@link Endpoint}.
 * Throws an Error naming the text and what is wrong with it.
 */
export function parseEndpoint(text: string): Endpoint {
  const m = /^(?:\[([^\]]+)\]|([^:\[\]]+)):(\d{1,5})$/.exec(text);
  if (!m) throw new Error(`'${text}' is not HOST:PORT (IPv6 as [ADDR]:PORT)`);
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`'${text}': port ${port} is out of range 0-65535`);
  let host = m[1] ?? m[2];
  if (host === "localhost") host = "127.0.0.1";
  const family = m[1] !== undefined ? C.AF_INET6 : C.AF_INET;
  if (pton(family, host) === null) {
    throw new Error(
      `'${text}': '${host}' is not a numeric ${family === C.AF_INET ? "IPv4" : "IPv6"} address`,
    );
  }
  return { family, host, port };
}

/** Formats an endpoint as `127.0.0.1:7420` or `[::1]:7420`. */
export function formatEndpoint(ep: Endpoint): string {
  return ep.family === C.AF_INET6 ? `[${ep.host}]:${ep.port}` : `${ep.host}:${ep.port}`;
}

function pton(family: number, host: string): Uint8Array | null {
  const out = new Uint8Array(16);
  const r = sys.inet_pton(family, new TextEncoder().encode(host + "\0"), out);
  if (r === -1) throw new LibcError("inet_pton", 97 /* EAFNOSUPPORT */);
  return r === 1 ? out : null;
}

/** Encodes an endpoint as a `sockaddr_in` (16 bytes) or `sockaddr_in6` (28 bytes). */
export function encodeSockaddr(ep: Endpoint): Uint8Array {
  const raw = pton(ep.family, ep.host);
  if (raw === null) throw new Error(`'${ep.host}' is not a numeric address`);
  const buf = new Uint8Array(ep.family === C.AF_INET6 ? 28 : 16);
  const view = new DataView(buf.buffer);
  view.setUint16(0, ep.family, true);
  view.setUint16(2, ep.port, false);
  if (ep.family === C.AF_INET6) buf.set(raw.subarray(0, 16), 8);
  else buf.set(raw.subarray(0, 4), 4);
  return buf;
}

const ntopOut = new Uint8Array(64);

/** Decodes a `sockaddr_in`/`sockaddr_in6` written by the kernel; null for any other family. */
export function decodeSockaddr(buf: Uint8Array): Endpoint | null {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const family = view.getUint16(0, true);
  if (family !== C.AF_INET && family !== C.AF_INET6) return null;
  const port = view.getUint16(2, false);
  // Dotted quads are formatted here: inet_ntop(3) formats them with sprintf, once per connection.
  if (family === C.AF_INET) return { family, host: `${buf[4]}.${buf[5]}.${buf[6]}.${buf[7]}`, port };
  const raw = buf.slice(8, 24);
  const p = sys.inet_ntop(family, raw, ntopOut, ntopOut.byteLength);
  if (p === null) return null;
  return { family, host: Deno.UnsafePointerView.getCString(p), port };
}

/** The address of a typed array's first byte, for storing in a struct (the array must stay referenced). */
export function addressOf(buf: Uint8Array): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)));
}
