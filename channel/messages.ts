/**
 * The master-worker channel: one `SOCK_SEQPACKET` Unix socketpair per worker carrying small messages of
 * fixed layouts. Every message starts with four little-endian u32: kind, connection id, argument,
 * and a fourth (with Done: how many closed connections' ids follow; else 0). Most are 64 bytes, with a 48-byte payload after that header (a file's hash with
 * {@link MessageKind.HashKnown}); a {@link MessageKind.SignatureKnown} carries one fd besides, a memfd
 * holding a file version's signature. A {@link MessageKind.Conns} message hands over up to
 * {@link MAX_CONNS_PER_MESSAGE} client fds at once as SCM_RIGHTS, with one 40-byte record per
 * connection after the header: id, listener mode, and the client's address. Sequenced packets keep message
 * boundaries, so a message is never half-read; a closed channel is how either side learns that the other
 * is gone.
 *
 * @module
 */

import { tryRecvWithFds, trySendWithFds } from "../ffi/fdpass.ts";
import { C, close, setsockoptInt, socketpair } from "../ffi/libc.ts";

/** Size of every channel message but {@link MessageKind.Conns}. */
export const MESSAGE_SIZE = 64;

/** Where the payload (or a Conns message's first record) starts: after the four u32. */
const PAYLOAD_OFFSET = 16;

/**
 * Most connections one Conns message hands over. Several per message when many arrive at once spare
 * both processes a message each (passing fds costs about 4 us per message and 0.2 us per fd more).
 */
export const MAX_CONNS_PER_MESSAGE = 8;

/** Bytes per connection in a Conns message: id u32, mode u32, then the client's sockaddr (up to 32). */
const CONN_RECORD_SIZE = 40;

/** Size of a Conns message handing over `count` connections. */
function connsMessageSize(count: number): number {
  return PAYLOAD_OFFSET + count * CONN_RECORD_SIZE;
}
/** Bytes of payload: room for a sockaddr_in6 (28), or a 16-byte file identity digest and a 32-byte SHA-256. */
export const PAYLOAD_SIZE = 48;

/** Ids of closed connections one Done message carries: 12 u32 fill its 48-byte payload. */
export const MAX_ENDED_PER_DONE = PAYLOAD_SIZE / 4;

/** What a channel message says. */
export const MessageKind = {
  /** worker -> master: started and ready for connections. */
  Ready: 1,
  /** master -> worker: serve these fds; `arg` is how many, each has a record (see the module's text). */
  Conns: 2,
  /**
   * worker -> master: `arg` slots were freed (connections that ended, or that wait for their client's
   * request or linger after an error, which need no slot), and `id` were taken again (waiting
   * connections whose request arrived). The fourth u32 counts the connections that closed (up to
   * {@link MAX_ENDED_PER_DONE}), whose ids fill the payload, so that the master can count connections
   * per client address (only when it asks for them: `reportClosed` in the worker's arguments). A worker
   * sends one per loop turn (more when more connections closed in it than one message holds).
   */
  Done: 3,
  /** master -> worker: finish the connections you have, then exit. */
  Stop: 4,
  /**
   * worker -> master -> every other worker: a file's SHA-256 is known (payload: identity digest, hash),
   * so that a file is hashed once per server, not once per worker.
   */
  HashKnown: 5,
  /**
   * worker -> master -> every other worker: a file version's delta signature is known. The payload is
   * HashKnown's (the version's etag and SHA-256); the message carries one fd (SCM_RIGHTS), a memfd that
   * holds the encoded signature, so the master relays the fd and never touches the signature's bytes.
   */
  SignatureKnown: 6,
  /**
   * master -> worker: re-read what you own (SIGHUP): the worker runs its reload hooks
   * (`reload_hooks.ts`), then answers Reloaded.
   */
  Reload: 7,
  /** worker -> master: the reload is done; `arg` hooks failed (and kept their old state). */
  Reloaded: 8,
} as const;

/**
 * The TCP_DEFER_ACCEPT of request-mode listeners, in seconds: the kernel hands over a connection once its
 * first bytes are in, or after this long without any (one SYN-ACK retransmission: 1 s, measured). Short,
 * so that a silent connection reaches a worker early and the worker's own deadline decides; the worker
 * counts this wait as part of the time a connection that arrives empty has had for its request.
 */
export const ACCEPT_DEFERRAL_SECONDS = 1;

/**
 * How long a connection accepted without a byte may stay silent from now, in milliseconds: its client was
 * silent for the kernel's deferral already (or the kernel skipped it, under a SYN flood), and that wait
 * counts, so that silence costs the idle timeout, not the deferral and the timeout after it; but at least
 * half the timeout is left. The master (awaiting_request.ts) and a worker (a connection handed over
 * empty) count alike.
 */
export function silentAllowanceMs(idleTimeoutMs: number): number {
  return idleTimeoutMs - Math.min(ACCEPT_DEFERRAL_SECONDS * 1000, idleTimeoutMs / 2);
}

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
  /** The 48-byte payload (a view valid until the next receive); empty for Conns. */
  payload: Uint8Array;
  /** With Conns: the connections handed over, in the order sent; else empty. */
  conns: HandedConn[];
  /**
   * With Conns whose fds did not all arrive (the receiver had no fd free: MSG_CTRUNC): the ids of the
   * connections handed over, none of which is served (the fds that did arrive are closed here, the kernel
   * closed the others); `conns` is then empty. Else empty.
   */
  lostIds: number[];
  /** With SignatureKnown: the fd it carried, now the receiver's to close; -1 if it was lost on the way. */
  fd: number;
  /** With Done: the ids of connections that closed; else empty. */
  ended: readonly number[];
}

/** One connection handed from the master to a worker. */
export interface HandedConn {
  /** The client's socket. */
  fd: number;
  /** The master's id for it. */
  id: number;
  /** The listener's {@link ServeMode}. */
  mode: number;
  /** The client's sockaddr as accept4(2) wrote it (when received: a view valid until the next receive). */
  peer: Uint8Array;
}

// Made from explicit ArrayBuffers, whose memory is outside V8's heap and never moves: fdpass.ts keeps the
// address of the buffer it last sent or received through.
const LARGEST_MESSAGE = Math.max(MESSAGE_SIZE, connsMessageSize(MAX_CONNS_PER_MESSAGE));
const outBuf = new Uint8Array(new ArrayBuffer(LARGEST_MESSAGE));
const outView = new DataView(outBuf.buffer);
const inBuf = new Uint8Array(new ArrayBuffer(LARGEST_MESSAGE));
const inView = new DataView(inBuf.buffer);
const NO_CONNS: HandedConn[] = [];
const NO_FDS: number[] = [];
const NO_IDS: number[] = [];

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
 * Sends one message of a kind other than Conns, with `fd` for SignatureKnown. Returns false if the channel
 * is full. Throws LibcError when the peer is gone (EPIPE, ECONNRESET).
 */
export function sendMessage(
  channel: number,
  kind: number,
  id = 0,
  arg = 0,
  payload?: Uint8Array,
  fd = -1,
): boolean {
  outView.setUint32(0, kind, true);
  outView.setUint32(4, id, true);
  outView.setUint32(8, arg, true);
  outView.setUint32(12, 0, true);
  outBuf.fill(0, PAYLOAD_OFFSET, MESSAGE_SIZE);
  if (payload) outBuf.set(payload.subarray(0, PAYLOAD_SIZE), PAYLOAD_OFFSET);
  return trySendWithFds(channel, outBuf, MESSAGE_SIZE, fd === -1 ? NO_FDS : [fd]);
}

/** Bytes of a file identity's digest (an etag) in a HashKnown payload; the SHA-256's 32 follow. */
const ETAG_BYTES = 16;
const SHA256_BYTES = 32;
const hashKnownPayload = new Uint8Array(ETAG_BYTES + SHA256_BYTES);

/**
 * Sends a HashKnown message: the file whose etag is `etag` (32 hex digits) has the SHA-256 `sha256` (64 hex
 * digits). Returns false if the channel is full. Throws LibcError when the peer is gone.
 */
export function sendHashKnown(channel: number, etag: string, sha256: string): boolean {
  putHex(hashKnownPayload, 0, etag, ETAG_BYTES);
  putHex(hashKnownPayload, ETAG_BYTES, sha256, SHA256_BYTES);
  return sendMessage(channel, MessageKind.HashKnown, 0, 0, hashKnownPayload);
}

/**
 * Sends a SignatureKnown message: the file version named `etag`, of SHA-256 `sha256`, has the signature
 * held by the memfd `fd` (the caller still closes its own fd). Returns false if the channel is full.
 */
export function sendSignatureKnown(channel: number, etag: string, sha256: string, fd: number): boolean {
  putHex(hashKnownPayload, 0, etag, ETAG_BYTES);
  putHex(hashKnownPayload, ETAG_BYTES, sha256, SHA256_BYTES);
  return sendMessage(channel, MessageKind.SignatureKnown, 0, 0, hashKnownPayload, fd);
}

/** The etag and SHA-256, as hex, that a HashKnown (or SignatureKnown) message's payload carries. */
export function decodeHashKnown(payload: Uint8Array): { etag: string; sha256: string } {
  return {
    etag: hexOf(payload.subarray(0, ETAG_BYTES)),
    sha256: hexOf(payload.subarray(ETAG_BYTES, ETAG_BYTES + SHA256_BYTES)),
  };
}

function putHex(out: Uint8Array, at: number, hex: string, bytes: number): void {
  if (hex.length !== 2 * bytes || !/^[0-9a-f]*$/.test(hex)) {
    throw new Error(`channel: ${JSON.stringify(hex)} is not ${bytes} bytes in lowercase hex`);
  }
  for (let i = 0; i < bytes; i++) out[at + i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
}

function hexOf(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Sends a Done message: `freed` slots freed, `taken` taken again, and the ids of connections that closed
 * (at most {@link MAX_ENDED_PER_DONE}). Returns false if the channel is full. Throws LibcError when the
 * peer is gone.
 */
export function sendDone(
  channel: number,
  taken: number,
  freed: number,
  endedIds: readonly number[],
): boolean {
  if (endedIds.length > MAX_ENDED_PER_DONE) {
    throw new Error(
      `channel: ${endedIds.length} ended ids in one Done message, at most ${MAX_ENDED_PER_DONE}`,
    );
  }
  outView.setUint32(0, MessageKind.Done, true);
  outView.setUint32(4, taken, true);
  outView.setUint32(8, freed, true);
  outView.setUint32(12, endedIds.length, true);
  outBuf.fill(0, PAYLOAD_OFFSET, MESSAGE_SIZE);
  for (let i = 0; i < endedIds.length; i++) outView.setUint32(PAYLOAD_OFFSET + 4 * i, endedIds[i], true);
  return trySendWithFds(channel, outBuf, MESSAGE_SIZE, NO_FDS);
}

/**
 * Hands `conns` (1 to {@link MAX_CONNS_PER_MESSAGE}) to a worker in one message, with their fds. Returns
 * false if the channel is full (nothing was sent). Throws LibcError when the worker is gone.
 */
export function sendConns(channel: number, conns: readonly HandedConn[]): boolean {
  if (conns.length === 0 || conns.length > MAX_CONNS_PER_MESSAGE) {
    throw new Error(
      `channel: ${conns.length} connections in one message, 1 to ${MAX_CONNS_PER_MESSAGE} allowed`,
    );
  }
  const size = connsMessageSize(conns.length);
  outView.setUint32(0, MessageKind.Conns, true);
  outView.setUint32(4, 0, true);
  outView.setUint32(8, conns.length, true);
  outView.setUint32(12, 0, true);
  outBuf.fill(0, PAYLOAD_OFFSET, size);
  for (let i = 0; i < conns.length; i++) {
    const at = PAYLOAD_OFFSET + i * CONN_RECORD_SIZE;
    outView.setUint32(at, conns[i].id, true);
    outView.setUint32(at + 4, conns[i].mode, true);
    outBuf.set(conns[i].peer.subarray(0, CONN_RECORD_SIZE - 8), at + 8);
  }
  return trySendWithFds(channel, outBuf, size, conns.map((c) => c.fd));
}

/**
 * Receives one message. Returns null when none is waiting, or "closed" when the peer closed the channel.
 * A message whose size does not match its kind is an error (any fds it brought are closed first).
 */
export function receiveMessage(channel: number): Message | "closed" | null {
  const got = tryRecvWithFds(channel, inBuf);
  if (got === null) return null;
  if (got.bytes === 0 && got.fds.length === 0) return "closed";
  const kind = got.bytes >= PAYLOAD_OFFSET ? inView.getUint32(0, true) : 0;
  const arg = got.bytes >= PAYLOAD_OFFSET ? inView.getUint32(8, true) : 0;
  const expected = kind === MessageKind.Conns ? connsMessageSize(arg) : MESSAGE_SIZE;
  const fdsExpected = kind === MessageKind.Conns ? arg : kind === MessageKind.SignatureKnown ? 1 : 0;
  if (kind === MessageKind.Conns && got.fdsLost && !got.truncated && got.bytes === expected) {
    for (const fd of got.fds) close(fd);
    const lostIds = Array.from(
      { length: arg },
      (_, i) => inView.getUint32(PAYLOAD_OFFSET + i * CONN_RECORD_SIZE, true),
    );
    return {
      kind,
      id: 0,
      arg,
      payload: inBuf.subarray(0, 0),
      conns: NO_CONNS,
      lostIds,
      fd: -1,
      ended: NO_IDS,
    };
  }
  // A signature whose memfd did not arrive (the receiver had no fd free) costs only that cache entry: the
  // message comes with fd -1, and the receiver signs the file itself if it is asked for it.
  const signatureLost = kind === MessageKind.SignatureKnown && got.fdsLost && got.fds.length === 0;
  if (got.truncated || got.bytes !== expected || (got.fds.length !== fdsExpected && !signatureLost)) {
    for (const fd of got.fds) close(fd);
    throw new Error(
      `channel: message of ${got.bytes} bytes with ${got.fds.length} fds, expected ${expected} bytes with ${fdsExpected}`,
    );
  }
  if (kind !== MessageKind.Conns) {
    const endedCount = kind === MessageKind.Done ? inView.getUint32(12, true) : 0;
    if (endedCount > MAX_ENDED_PER_DONE) {
      throw new Error(`channel: Done message with ${endedCount} ended ids, at most ${MAX_ENDED_PER_DONE}`);
    }
    return {
      kind,
      id: inView.getUint32(4, true),
      arg,
      payload: inBuf.subarray(PAYLOAD_OFFSET, MESSAGE_SIZE),
      conns: NO_CONNS,
      lostIds: NO_IDS,
      fd: got.fds[0] ?? -1,
      ended: endedCount === 0
        ? NO_IDS
        : Array.from({ length: endedCount }, (_, i) => inView.getUint32(PAYLOAD_OFFSET + 4 * i, true)),
    };
  }
  const conns: HandedConn[] = [];
  for (let i = 0; i < arg; i++) {
    const at = PAYLOAD_OFFSET + i * CONN_RECORD_SIZE;
    conns.push({
      fd: got.fds[i],
      id: inView.getUint32(at, true),
      mode: inView.getUint32(at + 4, true),
      peer: inBuf.subarray(at + 8, at + CONN_RECORD_SIZE),
    });
  }
  return { kind, id: 0, arg, payload: inBuf.subarray(0, 0), conns, lostIds: NO_IDS, fd: -1, ended: NO_IDS };
}
