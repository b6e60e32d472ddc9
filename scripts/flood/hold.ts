/**
 * The flood that scripts/flood.ts measures under: it holds `--drip` connections that send a request one
 * byte every `--drip-ms`, and `--idle` connections that send nothing, from source addresses 127.0.0.2 and
 * up (`--per-address` connections each), and opens a new one for every one the server closes, so that the
 * flood stays whole for as long as it runs. One synchronous epoll loop over nonblocking sockets; it prints
 * one JSON line on stdout when every connection is established (`"event":"held"`), then one a second with
 * the counts, and runs until it is killed.
 *
 * Usage: `deno run -A scripts/flood/hold.ts --port P [--drip 1000] [--idle 5000] [--drip-ms 3000]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Epoll, EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP } from "../../ffi/epoll.ts";
import {
  bind,
  C,
  close,
  connect,
  getsockoptInt,
  LibcError,
  raiseOpenFileLimit,
  socket,
  tryRecv,
  trySend,
  WOULD_BLOCK,
} from "../../ffi/libc.ts";
import { encodeSockaddr } from "../../ffi/sockaddr.ts";
import { encodeJsonFrame, FrameType, PROTOCOL_VERSION } from "../../framing.ts";

/** One connection of the flood. */
interface Held {
  /** Its slot: the same slot is opened again, from the same address, when the server closes it. */
  slot: number;
  drip: boolean;
  connected: boolean;
  /** Bytes of the request sent so far (drip connections). */
  sent: number;
  /** When the next byte is due (drip connections), in ms of performance.now(). */
  nextAt: number;
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    port: { type: "string" },
    drip: { type: "string", default: "1000" },
    idle: { type: "string", default: "5000" },
    "drip-ms": { type: "string", default: "3000" },
    "per-address": { type: "string", default: "8" },
  },
});
const port = Number(values.port);
const dripCount = Number(values.drip), idleCount = Number(values.idle);
const dripMs = Number(values["drip-ms"]);
const perAddress = Number(values["per-address"]);
const total = dripCount + idleCount;

const limit = raiseOpenFileLimit();
if (limit < total + 100) {
  console.error(`flood: the open-file limit is ${limit}, below the ${total + 100} this flood needs`);
  Deno.exit(2);
}

const server = encodeSockaddr({ family: C.AF_INET, host: "127.0.0.1", port });
/** The source address of a slot: 127.0.0.2 and up, `perAddress` slots each. */
function sourceOf(slot: number): Uint8Array {
  const n = (127 << 24) + 2 + Math.floor(slot / perAddress);
  const host = [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
  return encodeSockaddr({ family: C.AF_INET, host, port: 0 });
}
const sources = Array.from({ length: total }, (_, slot) => sourceOf(slot));
/** What a drip connection sends, a byte at a time: a ping padded to take minutes at this pace. */
const DRIP_REQUEST = encodeJsonFrame(FrameType.Request, {
  v: PROTOCOL_VERSION,
  op: "ping",
  pad: "x".repeat(100),
});

const epoll = new Epoll(1024);
const byFd = new Map<number, Held>();
const counts = { opened: 0, reopened: 0, closedByServer: 0, connectFailed: 0, bytesFromServer: 0 };

function open(slot: number): void {
  const fd = socket(C.AF_INET, C.SOCK_STREAM | C.SOCK_NONBLOCK | C.SOCK_CLOEXEC);
  bind(fd, sources[slot]);
  connect(fd, server);
  const drip = slot < dripCount;
  byFd.set(fd, { slot, drip, connected: false, sent: 0, nextAt: performance.now() + Math.random() * dripMs });
  epoll.add(fd, EPOLLOUT | EPOLLIN | EPOLLRDHUP);
  counts.opened++;
}

function reopen(fd: number, held: Held): void {
  epoll.remove(fd);
  close(fd);
  byFd.delete(fd);
  counts.reopened++;
  open(held.slot);
}

const scratch = new Uint8Array(4096);
function onEvent(fd: number, events: number): void {
  const held = byFd.get(fd);
  if (held === undefined) return;
  if (!held.connected && (events & EPOLLOUT)) {
    if (getsockoptInt(fd, C.SOL_SOCKET, C.SO_ERROR) !== 0) {
      counts.connectFailed++;
      return reopen(fd, held);
    }
    held.connected = true;
    epoll.modify(fd, EPOLLIN | EPOLLRDHUP);
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    for (;;) {
      let n: number;
      try {
        n = tryRecv(fd, scratch);
      } catch (e) {
        if (!(e instanceof LibcError)) throw e;
        n = 0;
      }
      if (n === WOULD_BLOCK) return;
      if (n === 0) {
        counts.closedByServer++;
        return reopen(fd, held);
      }
      counts.bytesFromServer += n;
    }
  }
}

function drip(now: number): void {
  for (const [fd, held] of byFd) {
    if (!held.drip || !held.connected || held.nextAt > now || held.sent >= DRIP_REQUEST.byteLength) continue;
    held.nextAt = now + dripMs;
    try {
      if (trySend(fd, DRIP_REQUEST.subarray(held.sent, held.sent + 1)) === 1) held.sent++;
    } catch (e) {
      if (!(e instanceof LibcError)) throw e; // the server closed it: the read side reopens it
    }
  }
}

function heldNow(): { drip: number; idle: number } {
  let dripHeld = 0, idleHeld = 0;
  for (const held of byFd.values()) {
    if (held.connected) held.drip ? dripHeld++ : idleHeld++;
  }
  return { drip: dripHeld, idle: idleHeld };
}

// Opened as fast as the loop goes, a few hundred at a time between turns: "at once", as a flood would.
let nextSlot = 0;
let announced = false;
let lastStatus = performance.now();
for (;;) {
  for (let i = 0; i < 256 && nextSlot < total; i++) open(nextSlot++);
  const n = epoll.wait(20);
  for (let i = 0; i < n; i++) onEvent(epoll.fdAt(i), epoll.eventsAt(i));
  const now = performance.now();
  drip(now);
  const held = heldNow();
  if (!announced && held.drip + held.idle === total) {
    announced = true;
    console.log(JSON.stringify({ event: "held", ...held, ...counts }));
  }
  if (now - lastStatus >= 1000) {
    lastStatus = now;
    console.log(JSON.stringify({ event: "status", ...held, ...counts }));
  }
}
