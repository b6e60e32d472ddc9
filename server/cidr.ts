/**
 * IP addresses as the master sees them (the bytes of a `sockaddr_in`/`sockaddr_in6`) and the CIDR
 * prefixes of `--allow`, `--deny` and `--proxy-protocol` matched against them. An IPv4-mapped IPv6
 * address (`::ffff:192.0.2.1`, which a dual-stack proxy may report) is taken as the IPv4 address it
 * carries, so one IPv4 rule covers both spellings.
 *
 * @module
 */

import { C } from "../ffi/libc.ts";
import { addressBytes } from "../ffi/sockaddr.ts";
import { SOCKADDR_IN, SOCKADDR_IN6 } from "../ffi/structs.ts";

/** An IP address: 4 bytes (IPv4) or 16 (IPv6), in network order. */
export type IpAddress = Uint8Array;

/** A CIDR prefix as given on the command line. */
export interface Cidr {
  /** The text given, for messages. */
  text: string;
  /** The network's address bytes (4 or 16). */
  bytes: Uint8Array;
  /** Leading bits that must match. */
  prefix: number;
}

const V4_MAPPED_PREFIX = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/** An IPv4-mapped IPv6 address as its IPv4 address; any other address as it is. */
function unmapped(ip: IpAddress): IpAddress {
  if (ip.byteLength !== 16) return ip;
  for (let i = 0; i < 12; i++) if (ip[i] !== V4_MAPPED_PREFIX[i]) return ip;
  return ip.subarray(12);
}

/**
 * Parses `ADDRESS/BITS` (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (one host). Throws an Error
 * naming the text when it is not one, or when it has bits set past its prefix (`10.0.0.1/8`: most likely
 * a typo for a host or for another network).
 */
export function parseCidr(text: string): Cidr {
  const bad = (why: string) => new Error(`'${text}' is not a CIDR (ADDRESS/BITS, IPv4 or IPv6): ${why}`);
  const slash = text.indexOf("/");
  const host = slash === -1 ? text : text.slice(0, slash);
  const v6 = host.includes(":");
  const raw = addressBytes(v6 ? C.AF_INET6 : C.AF_INET, host);
  if (raw === null) throw bad(`'${host}' is not a numeric ${v6 ? "IPv6" : "IPv4"} address`);
  const given = v6 ? 128 : 32;
  let prefix = given;
  if (slash !== -1) {
    const bitsText = text.slice(slash + 1);
    prefix = /^\d{1,3}$/.test(bitsText) ? Number(bitsText) : NaN;
    if (!(prefix <= given)) throw bad(`'/${bitsText}' is not a prefix length of 0 to ${given}`);
  }
  let bytes = raw.slice(0, given / 8);
  // ::ffff:a.b.c.d/96 and longer: the IPv4 network a.b.c.d/(prefix - 96), which matching compares with.
  if (v6 && prefix >= 96 && unmapped(bytes).byteLength === 4) {
    bytes = bytes.slice(12);
    prefix -= 96;
  }
  for (let bit = prefix; bit < bytes.byteLength * 8; bit++) {
    if (bytes[bit >> 3] & (0x80 >> (bit & 7))) throw bad(`address bits are set past the /${prefix} prefix`);
  }
  return { text, bytes, prefix };
}

/** True if `ip` is inside `cidr`. */
export function cidrContains(cidr: Cidr, ip: IpAddress): boolean {
  const addr = unmapped(ip);
  if (addr.byteLength !== cidr.bytes.byteLength) return false;
  const whole = cidr.prefix >> 3;
  for (let i = 0; i < whole; i++) if (addr[i] !== cidr.bytes[i]) return false;
  const rest = cidr.prefix & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (addr[whole] & mask) === cidr.bytes[whole];
}

/** The first of `cidrs` that contains `ip`, or null. */
export function firstMatch(cidrs: readonly Cidr[], ip: IpAddress): Cidr | null {
  for (const cidr of cidrs) if (cidrContains(cidr, ip)) return cidr;
  return null;
}

/** The IP address of a `sockaddr_in`/`sockaddr_in6` (a view into it), or null for another family. */
export function ipOfSockaddr(sockaddr: Uint8Array): IpAddress | null {
  const family = sockaddr[0] | (sockaddr[1] << 8); // sa_family_t, little-endian on the platforms served
  if (family === C.AF_INET) return sockaddr.subarray(SOCKADDR_IN.addr, SOCKADDR_IN.addr + 4);
  if (family === C.AF_INET6) return sockaddr.subarray(SOCKADDR_IN6.addr, SOCKADDR_IN6.addr + 16);
  return null;
}

/**
 * A `sockaddr_in`/`sockaddr_in6` for `ip` and `port` (a mapped IPv6 address becomes IPv4), in a buffer of
 * `size` bytes (at least 28): what the master hands a worker as the client's address.
 */
export function sockaddrOf(ip: IpAddress, port: number, size = 32): Uint8Array {
  const addr = unmapped(ip);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  const layout = addr.byteLength === 4 ? SOCKADDR_IN : SOCKADDR_IN6;
  view.setUint16(layout.family, addr.byteLength === 4 ? C.AF_INET : C.AF_INET6, true);
  view.setUint16(layout.port, port, false);
  out.set(addr, layout.addr);
  return out;
}

/**
 * The address as text: dotted quad, or IPv6 in full groups without zero compression (`2001:db8:0:0:0:0:0:1`).
 * Used as a map key and in log lines; it does not call into libc, so it costs nothing per connection.
 */
export function formatIp(ip: IpAddress): string {
  const addr = unmapped(ip);
  if (addr.byteLength === 4) return `${addr[0]}.${addr[1]}.${addr[2]}.${addr[3]}`;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((addr[i] << 8) | addr[i + 1]).toString(16));
  return groups.join(":");
}
