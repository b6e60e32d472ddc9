/**
 * `HOST:PORT` as command lines write it, with an IPv6 address in brackets (`[::1]:7420`): one syntax for
 * the server's `--listen`, the client's server argument and the scripts' targets.
 *
 * @module
 */

import { C } from "./ffi/libc.ts";
import { addressBytes, type Endpoint } from "./ffi/sockaddr.ts";

/** `HOST:PORT` or `[IPV6]:PORT`, split; null if the text is neither. */
export function splitHostPort(text: string): { host: string; bracketed: boolean; port: number } | null {
  const m = /^(?:\[([^\]]+)\]|([^:\[\]]+)):(\d{1,5})$/.exec(text);
  if (m === null) return null;
  return { host: m[1] ?? m[2], bracketed: m[1] !== undefined, port: Number(m[3]) };
}

/**
 * Parses `HOST:PORT`, `[IPV6]:PORT` or `localhost:PORT` into an {@link Endpoint} with a numeric address:
 * what a socket is bound or connected to without a name lookup. Port 0 is allowed (bind: any free port).
 * Throws an Error naming the text and what is wrong with it.
 */
export function parseEndpoint(text: string): Endpoint {
  const split = splitHostPort(text);
  if (split === null) throw new Error(`'${text}' is not HOST:PORT (IPv6 as [ADDR]:PORT)`);
  const { port, bracketed } = split;
  if (port > 65535) throw new Error(`'${text}': port ${port} is out of range 0-65535`);
  const host = split.host === "localhost" ? "127.0.0.1" : split.host;
  const family = bracketed ? C.AF_INET6 : C.AF_INET;
  if (addressBytes(family, host) === null) {
    throw new Error(
      `'${text}': '${host}' is not a numeric ${family === C.AF_INET ? "IPv4" : "IPv6"} address`,
    );
  }
  return { family, host, port };
}
