/**
 * Passing file descriptors between processes over a Unix socket with SCM_RIGHTS: the only code in ferry
 * that builds a `msghdr` or a control message. Each call carries one small fixed-size message and at most
 * one fd; the message's meaning is the business of `channel.ts`.
 *
 * @module
 */

import { C, errno, LibcError, sys, WOULD_BLOCK } from "./libc.ts";
import { addressOf, CMSG, IOVEC, MSGHDR } from "./structs.ts";

// Long-lived scratch structures: the kernel reads pointers inside them, and Deno keeps alive only the
// buffer passed as an argument, so everything they point at must stay referenced here. They share one
// explicit ArrayBuffer, whose memory is outside V8's heap and never moves, so the pointers between them
// are written once, not per message (computing them was most of a hand-off's JS cost).
const scratch = new ArrayBuffer(256);
const msg = new Uint8Array(scratch, 0, MSGHDR.size);
const msgView = new DataView(scratch, 0, MSGHDR.size);
const iov = new Uint8Array(scratch, 64, IOVEC.size);
const iovView = new DataView(scratch, 64, IOVEC.size);
const control = new Uint8Array(scratch, 128, CMSG.spaceOneFd);
const controlView = new DataView(scratch, 128, CMSG.spaceOneFd);
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

function prepare(data: Uint8Array, withControl: boolean): void {
  if (data !== iovData) {
    let address = addresses.get(data);
    if (address === undefined) addresses.set(data, address = addressOf(data));
    iovView.setBigUint64(IOVEC.base, address, true);
    iovView.setBigUint64(IOVEC.len, BigInt(data.byteLength), true);
    iovData = data;
  }
  // recvmsg(2) writes these back: reset them for every call.
  msgView.setBigUint64(MSGHDR.controllen, withControl ? BigInt(control.byteLength) : 0n, true);
  msgView.setInt32(MSGHDR.flags, 0, true);
}

/**
 * Sends `data` (at least one byte: SCM_RIGHTS needs a data byte to ride on) and, unless `fd` is -1, a copy
 * of `fd`. Returns false when the socket is full (EAGAIN); throws LibcError("sendmsg", ...) otherwise.
 */
export function trySendWithFd(channel: number, data: Uint8Array, fd: number): boolean {
  prepare(data, fd >= 0);
  if (fd >= 0) {
    control.fill(0);
    controlView.setBigUint64(CMSG.len, BigInt(CMSG.lenOneFd), true);
    controlView.setInt32(CMSG.level, C.SOL_SOCKET, true);
    controlView.setInt32(CMSG.type, CMSG.SCM_RIGHTS, true);
    controlView.setInt32(CMSG.data, fd, true);
    msgView.setBigUint64(MSGHDR.controllen, BigInt(CMSG.spaceOneFd), true);
  }
  for (;;) {
    const r = sys.sendmsg(channel, msg, C.MSG_NOSIGNAL);
    if (r >= 0n) {
      if (Number(r) !== data.byteLength) throw new Error(`sendmsg: sent ${r} of ${data.byteLength} bytes`);
      return true;
    }
    const e = errno();
    if (e === C.EINTR) continue;
    if (e === C.EAGAIN) return false;
    throw new LibcError("sendmsg", e);
  }
}

/** What {@link tryRecvWithFd} received. */
export interface Received {
  /** Bytes of data received into the caller's buffer; 0 means the peer closed the channel. */
  bytes: number;
  /** The fd that came with the message (close-on-exec), or -1. */
  fd: number;
}

/**
 * Receives one message into `data` and the fd riding on it, if any (MSG_CMSG_CLOEXEC). Returns null when
 * nothing is waiting (EAGAIN). A control message of the wrong level, type or length, or a truncated one,
 * is an error: any fd it brought is closed first.
 */
export function tryRecvWithFd(channel: number, data: Uint8Array): Received | null {
  prepare(data, true);
  control.fill(0);
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
  if (controlLen === 0) return { bytes: Number(r), fd: -1 };
  const len = Number(controlView.getBigUint64(CMSG.len, true));
  const level = controlView.getInt32(CMSG.level, true);
  const type = controlView.getInt32(CMSG.type, true);
  const fd = len >= CMSG.lenOneFd ? controlView.getInt32(CMSG.data, true) : -1;
  const MSG_CTRUNC = 0x8;
  if (level !== C.SOL_SOCKET || type !== CMSG.SCM_RIGHTS || len !== CMSG.lenOneFd || (flags & MSG_CTRUNC)) {
    if (fd >= 0 && level === C.SOL_SOCKET && type === CMSG.SCM_RIGHTS) sys.close(fd);
    throw new Error(
      `recvmsg: unexpected control message (level ${level}, type ${type}, length ${len}, flags ${flags})`,
    );
  }
  return { bytes: Number(r), fd };
}

export { WOULD_BLOCK };
