/**
 * Passing file descriptors between processes over a Unix socket with SCM_RIGHTS: the only code in ferry
 * that builds a `msghdr` or a control message. Each call carries one small message and up to
 * {@link MAX_FDS_PER_MESSAGE} fds; the message's meaning is the business of `channel/messages.ts`.
 *
 * @module
 */

import { C, errno, LibcError, sys, WOULD_BLOCK } from "./libc.ts";
import { addressOf, CMSG, cmsgLenFds, cmsgSpaceFds, IOVEC, MSGHDR } from "./structs.ts";

/** Most fds one message carries. */
export const MAX_FDS_PER_MESSAGE = 16;

const CONTROL_SPACE = cmsgSpaceFds(MAX_FDS_PER_MESSAGE);

// Long-lived scratch structures: the kernel reads pointers inside them, and Deno keeps alive only the
// buffer passed as an argument, so everything they point at must stay referenced here. They share one
// explicit ArrayBuffer, whose memory is outside V8's heap and never moves, so the pointers between them
// are written once, not per message (computing them was most of a hand-off's JS cost).
const scratch = new ArrayBuffer(128 + CONTROL_SPACE);
const msg = new Uint8Array(scratch, 0, MSGHDR.size);
const msgView = new DataView(scratch, 0, MSGHDR.size);
const iov = new Uint8Array(scratch, 64, IOVEC.size);
const iovView = new DataView(scratch, 64, IOVEC.size);
const control = new Uint8Array(scratch, 128, CONTROL_SPACE);
const controlView = new DataView(scratch, 128, CONTROL_SPACE);
msgView.setBigUint64(MSGHDR.iov, addressOf(iov), true);
msgView.setBigUint64(MSGHDR.iovlen, 1n, true);
msgView.setBigUint64(MSGHDR.control, addressOf(control), true);

/**
 * The buffer the iovec points at, kept referenced. Callers reuse one long-lived buffer whose memory does
 * not move (an explicit ArrayBuffer; a small typed array made with a length may live inside V8's heap).
 */
let iovData: Uint8Array | null = null;

/** Addresses of the buffers callers pass: a process alternates between two (received and sent messages). */
const addresses = new WeakMap<Uint8Array, bigint>();

function prepare(data: Uint8Array, length: number, controlLength: number): void {
  if (data !== iovData) {
    let address = addresses.get(data);
    if (address === undefined) addresses.set(data, address = addressOf(data));
    iovView.setBigUint64(IOVEC.base, address, true);
    iovData = data;
  }
  iovView.setBigUint64(IOVEC.len, BigInt(length), true);
  // recvmsg(2) writes these back: reset them for every call.
  msgView.setBigUint64(MSGHDR.controllen, BigInt(controlLength), true);
  msgView.setInt32(MSGHDR.flags, 0, true);
}

/**
 * Sends the first `length` bytes of `data` (at least one: SCM_RIGHTS needs a data byte to ride on) with
 * copies of `fds`. Returns false when the socket is full (EAGAIN); throws LibcError("sendmsg", ...) otherwise.
 */
export function trySendWithFds(
  channel: number,
  data: Uint8Array,
  length: number,
  fds: readonly number[],
): boolean {
  if (fds.length > MAX_FDS_PER_MESSAGE) {
    throw new Error(`sendmsg: ${fds.length} fds in one message, at most ${MAX_FDS_PER_MESSAGE}`);
  }
  let controlLength = 0;
  if (fds.length > 0) {
    controlLength = cmsgSpaceFds(fds.length);
    control.fill(0, 0, controlLength);
    controlView.setBigUint64(CMSG.len, BigInt(cmsgLenFds(fds.length)), true);
    controlView.setInt32(CMSG.level, C.SOL_SOCKET, true);
    controlView.setInt32(CMSG.type, CMSG.SCM_RIGHTS, true);
    for (let i = 0; i < fds.length; i++) controlView.setInt32(CMSG.data + 4 * i, fds[i], true);
  }
  prepare(data, length, controlLength);
  for (;;) {
    const r = sys.sendmsg(channel, msg, C.MSG_NOSIGNAL);
    if (r >= 0n) {
      if (Number(r) !== length) throw new Error(`sendmsg: sent ${r} of ${length} bytes`);
      return true;
    }
    const e = errno();
    if (e === C.EINTR) continue;
    if (e === C.EAGAIN) return false;
    throw new LibcError("sendmsg", e);
  }
}

/** What {@link tryRecvWithFds} received. */
export interface Received {
  /** Bytes of data received into the caller's buffer; 0 means the peer closed the channel. */
  bytes: number;
  /** True if the message was longer than the buffer (the rest is lost). */
  truncated: boolean;
  /** The fds that came with the message (close-on-exec), in the order sent. */
  fds: number[];
  /**
   * True if fds sent with the message were lost on the way in (MSG_CTRUNC): the receiver had no fd
   * free (EMFILE) or no room for them. Those that did arrive are in `fds`; the sender's copies were its
   * own, so the lost ones are closed by the kernel.
   */
  fdsLost: boolean;
}

const NO_FDS: number[] = [];

/**
 * Receives one message into `data` and the fds riding on it (MSG_CMSG_CLOEXEC). Returns null when nothing
 * is waiting (EAGAIN). A control message cut short (the process had no fd free) is not an error: the
 * message comes back with `fdsLost` and whatever fds arrived. A control message of another level or type
 * is an error (any fds it brought are closed first).
 */
export function tryRecvWithFds(channel: number, data: Uint8Array): Received | null {
  prepare(data, data.byteLength, CONTROL_SPACE);
  let r: bigint;
  for (;;) {
    r = sys.recvmsg(channel, msg, C.MSG_CMSG_CLOEXEC);
    if (r >= 0n) break;
    const e = errno();
    if (e === C.EINTR) continue;
    if (e === C.EAGAIN) return null;
    throw new LibcError("recvmsg", e);
  }
  const controlLen = Number(msgView.getBigUint64(MSGHDR.controllen, true));
  const flags = msgView.getInt32(MSGHDR.flags, true);
  const MSG_TRUNC = 0x20;
  const MSG_CTRUNC = 0x8;
  const truncated = (flags & MSG_TRUNC) !== 0;
  const fdsLost = (flags & MSG_CTRUNC) !== 0;
  if (controlLen < CMSG.lenNoData) return { bytes: Number(r), truncated, fds: NO_FDS, fdsLost };
  const len = controlLen >= CMSG.lenNoData ? Number(controlView.getBigUint64(CMSG.len, true)) : 0;
  const level = controlView.getInt32(CMSG.level, true);
  const type = controlView.getInt32(CMSG.type, true);
  const rights = level === C.SOL_SOCKET && type === CMSG.SCM_RIGHTS;
  const count = (len - CMSG.lenNoData) / 4;
  const fds: number[] = [];
  if (rights && Number.isInteger(count) && count > 0 && len <= controlLen) {
    for (let i = 0; i < count; i++) fds.push(controlView.getInt32(CMSG.data + 4 * i, true));
  }
  if (fds.length === 0 && !fdsLost) {
    throw new Error(
      `recvmsg: unexpected control message (level ${level}, type ${type}, length ${len}, flags ${flags})`,
    );
  }
  return { bytes: Number(r), truncated, fds, fdsLost };
}

export { WOULD_BLOCK };
