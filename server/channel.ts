/**
 * The master-worker channel: one `SOCK_SEQPACKET` Unix socketpair per worker carrying fixed 64-byte
 * messages (four little-endian u32: kind, connection id, argument, reserved; then a 48-byte payload:
 * the client's address with {@link MessageKind.Conn}, a file's hash with {@link MessageKind.HashKnown})
 * and, with Conn, the client's fd as SCM_RIGHTS. Sequenced packets keep message boundaries, so a message
 * is never half-read; a closed channel is how either side learns that the other is gone.
 *
 * @module
 */

import { tryRecvWithFd, trySendWithFd } from "../ffi/fdpass.ts";
import { C, setsockoptInt, socketpair } from "../ffi/libc.ts";

/** Size of every channel message. */
export const MESSAGE_SIZE = 64;

/** Where the payload starts and how long it is. */
const PAYLOAD_OFFSET = 16;
/** Bytes of payload: room for a sockaddr_in6 (28), or a 16-byte file identity digest and a 32-byte SHA-256. */
export const PAYLOAD_SIZE = 48;

/** What a channel message says. */
export const MessageKind = {
  /** worker -> master: started and ready for connections. */
  Ready: 1,
  /** master -> worker: serve this fd; `arg` is the listener's {@link ServeMode}, the payload its sockaddr. */
  Conn: 2,
  /**
   * worker -> master: `arg` connections ended. A worker sends one per loop turn for all the connections
   * that ended in it, not one per connection.
   */
  Done: 3,
  /** master -> worker: finish the connections you have, then exit. */
  Stop: 4,
  /**
   * worker -> master -> every other worker: a file's SHA-256 is known (payload: identity digest, hash),
   * so that a file is hashed once per server, not once per worker.
   */
  HashKnown: 5,
} as const;

/** How a listener's connections are served. */
export const ServeMode = {
  /** Push one file to every connection, seed-compatible. */
  Classic: 0,
  /** The client sends requests; see PROTOCOL.md. */
  Request: 1,
} as const;

/** A decoded channel message. */
export interface Message {
  /** One of {@link MessageKind}. */
  kind: number;
  /** The connection id the master gave the fd. */
  id: number;
  /** Kind-specific argument. */
  arg: number;
  /** The fd that came with it, or -1. */
  fd: number;
  /** The 48-byte payload (a view valid until the next receive). */
  payload: Uint8Array;
}

// Made from explicit ArrayBuffers, whose memory is outside V8's heap and never moves: fdpass.ts keeps the
// address of the buffer it last sent or received through.
const outBuf = new Uint8Array(new ArrayBuffer(MESSAGE_SIZE));
const outView = new DataView(outBuf.buffer);
const inBuf = new Uint8Array(new ArrayBuffer(MESSAGE_SIZE));
const inView = new DataView(inBuf.buffer);

/**
 * Creates a channel: [master end, worker end], both nonblocking and close-on-exec (the master clears
 * close-on-exec on the worker's end just for the spawn that hands it over).
 */
export function createChannel(): [number, number] {
  const ends = socketpair(C.AF_UNIX, C.SOCK_SEQPACKET | C.SOCK_CLOEXEC | C.SOCK_NONBLOCK);
  // Room for thousands of hand-offs in flight (the default holds a few hundred): a burst of accepts
  // should not have to wait for the worker to read.
  for (const end of ends) setsockoptInt(end, C.SOL_SOCKET, C.SO_SNDBUF, CHANNEL_BUFFER_BYTES);
  return ends;
}

/** Send buffer of each channel end (the kernel doubles it and caps it at net.core.wmem_max). */
const CHANNEL_BUFFER_BYTES = 4 * 1024 * 1024;

/**
 * Sends one message (with `fd` attached unless it is -1). Returns false if the channel is full.
 * Throws LibcError when the peer is gone (EPIPE, ECONNRESET).
 */
export function sendMessage(
  channel: number,
  kind: number,
  id = 0,
  arg = 0,
  fd = -1,
  payload?: Uint8Array,
): boolean {
  outView.setUint32(0, kind, true);
  outView.setUint32(4, id, true);
  outView.setUint32(8, arg, true);
  outView.setUint32(12, 0, true);
  outBuf.fill(0, PAYLOAD_OFFSET);
  if (payload) outBuf.set(payload.subarray(0, PAYLOAD_SIZE), PAYLOAD_OFFSET);
  return trySendWithFd(channel, outBuf, fd);
}

/**
 * Receives one message. Returns null when none is waiting, or "closed" when the peer closed the channel.
 * A message of the wrong size is an error (the channel carries only fixed messages).
 */
export function receiveMessage(channel: number): Message | "closed" | null {
  const got = tryRecvWithFd(channel, inBuf);
  if (got === null) return null;
  if (got.bytes === 0 && got.fd === -1) return "closed";
  if (got.bytes !== MESSAGE_SIZE) {
    throw new Error(`channel: message of ${got.bytes} bytes, expected ${MESSAGE_SIZE}`);
  }
  return {
    kind: inView.getUint32(0, true),
    id: inView.getUint32(4, true),
    arg: inView.getUint32(8, true),
    fd: got.fd,
    payload: inBuf.subarray(PAYLOAD_OFFSET),
  };
}
