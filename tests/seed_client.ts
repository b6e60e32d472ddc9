/**
 * A reference client for classic mode, written from the seed outline's wire format (sections 7 and 8 of
 * the seed), not from ferry's code: ferry's classic mode must be byte-compatible with it. It is a
 * line-by-line translation of the seed's C client onto ferry's libc FFI layer:
 *
 * ```c
 * sockfd = socket(AF_INET, SOCK_STREAM, 0);
 * connect(sockfd, &server, sizeof(server));
 * char buf[1024] = {0};
 * recv_n(sockfd, &len, sizeof(int));            // file name length
 * recv_n(sockfd, buf, len);                     // file name
 * int fd = open(buf, O_CREAT | O_RDWR, 0666);
 * while (1) {
 *   recv_n(sockfd, &len, sizeof(int));          // content length
 *   if (len == 0) break;                        // end frame
 *   recv_n(sockfd, buf, len);                   // content
 *   write(fd, buf, len);
 * }
 * ```
 *
 * Deviations, all for safety in tests: `recv_n` fails on end of stream instead of spinning, every recv
 * has a receive timeout (SO_RCVTIMEO) so a server bug cannot hang a test, a length that would overflow
 * the seed's 1024-byte buffer is reported instead of corrupting memory, the name must be a plain file
 * name, and the file is created in a given directory (the seed uses its working directory). It also
 * connects over IPv6 when given `[ADDR]:PORT` (the seed speaks IPv4 only).
 *
 * Run as a program: `deno run -A tests/seed_client.ts HOST:PORT DIR` prints one JSON line
 * ({@link SeedResult}) on stdout and exits 0, or prints the error on stderr and exits 1.
 *
 * @module
 */

import { closeSync, constants, openSync } from "node:fs";
import { join } from "node:path";
import { C, close, connect, setsockoptTimeval, socket, tryRecv, tryWrite, WOULD_BLOCK } from "../ffi/libc.ts";
import { encodeSockaddr } from "../ffi/sockaddr.ts";
import { parseEndpoint } from "../host_port.ts";

/** What the seed client received. */
export interface SeedResult {
  /** The file name from the name frame. */
  name: string;
  /** Content bytes written to the file. */
  bytes: number;
  /** Content frames received (the end frame not counted). */
  frames: number;
  /** The largest content frame length seen (0 if none). */
  largestFrame: number;
  /** Content frames shorter than the seed's 1000 bytes (only the last may be). */
  shortFrames: number;
}

/** The seed's `char buf[1024]`. */
const SEED_BUFFER = 1024;
/** The seed's `char buf[1000]` on the sending side: the largest content frame. */
const SEED_CHUNK = 1000;

/** Section 7 of the seed: receive exactly `len` bytes into `p`, one recv(2) after another. */
function recv_n(sockfd: number, p: Uint8Array, len: number): void {
  let total = 0;
  while (total < len) {
    const ret = tryRecv(sockfd, p.subarray(total, len));
    if (ret === WOULD_BLOCK) throw new Error("seed client: recv timed out (SO_RCVTIMEO)");
    if (ret === 0) throw new Error(`seed client: connection closed after ${total} of ${len} bytes`);
    total += ret;
  }
}

/** The seed's `write(fd, buf, len)`, looping over short writes. */
function write_n(fd: number, p: Uint8Array, len: number): void {
  let total = 0;
  while (total < len) {
    const ret = tryWrite(fd, p.subarray(total, len));
    if (ret <= 0) throw new Error(`seed client: write returned ${ret}`);
    total += ret;
  }
}

/**
 * Section 8 of the seed: connects to `address` (`HOST:PORT` or `[ADDR]:PORT`), receives the pushed file and
 * writes it into `dir` under the name the server sent. Blocking calls, each bounded by `timeoutMs`.
 */
export function seedPull(address: string, dir: string, timeoutMs = 10_000): SeedResult {
  const endpoint = parseEndpoint(address);
  const sockfd = socket(endpoint.family, C.SOCK_STREAM | C.SOCK_CLOEXEC);
  try {
    setsockoptTimeval(sockfd, C.SOL_SOCKET, C.SO_RCVTIMEO, timeoutMs);
    connect(sockfd, encodeSockaddr(endpoint)); // (1) connect
    const buf = new Uint8Array(SEED_BUFFER); // char buf[1024] = {0};
    const lenBox = new Int32Array(1); // int len: host byte order, as the seed sends it
    const lenBytes = new Uint8Array(lenBox.buffer);

    recv_n(sockfd, lenBytes, 4); // (2) file name length
    let len = lenBox[0];
    // The name is used as a C string: it needs a NUL after it inside the 1024 bytes.
    if (len <= 0 || len >= SEED_BUFFER) throw new Error(`seed client: name frame length ${len}`);
    recv_n(sockfd, buf, len); // (3) file name
    const nameBytes = buf.subarray(0, len);
    if (nameBytes.includes(0)) throw new Error("seed client: the name contains a NUL byte");
    const name = new TextDecoder().decode(nameBytes);
    if (name.includes("/") || name === "." || name === "..") {
      throw new Error(`seed client: ${JSON.stringify(name)} is not a plain file name`);
    }

    // (4) open(buf, O_CREAT|O_RDWR, 0666)
    const fd = openSync(join(dir, name), constants.O_CREAT | constants.O_RDWR, 0o666);
    const result: SeedResult = { name, bytes: 0, frames: 0, largestFrame: 0, shortFrames: 0 };
    try {
      for (;;) {
        recv_n(sockfd, lenBytes, 4); // (5) content length
        len = lenBox[0];
        if (len === 0) break; // end frame
        if (len < 0 || len > SEED_BUFFER) {
          throw new Error(`seed client: content frame length ${len} does not fit the seed's buffer`);
        }
        buf.fill(0); // bzero
        recv_n(sockfd, buf, len); // (6) content
        write_n(fd, buf, len); // (7) write
        result.bytes += len;
        result.frames++;
        result.largestFrame = Math.max(result.largestFrame, len);
        if (len < SEED_CHUNK) result.shortFrames++;
      }
    } finally {
      closeSync(fd);
    }
    return result;
  } finally {
    close(sockfd);
  }
}

if (import.meta.main) {
  const [address, dir] = Deno.args;
  if (address === undefined || dir === undefined) {
    console.error("usage: seed_client.ts HOST:PORT DIR");
    Deno.exit(2);
  }
  try {
    console.log(JSON.stringify(seedPull(address, dir)));
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(1);
  }
}
