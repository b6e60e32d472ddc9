/**
 * The master-worker channel over a real socketpair: several connections handed over in one message arrive
 * with their own fds, ids, modes and addresses, in order; a message whose size or fds do not match its
 * kind is refused, and the fds it brought are closed rather than leaked.
 */

import assert from "node:assert/strict";
import { trySendWithFds } from "../ffi/fdpass.ts";
import { close, memfdCreate, pread, pwriteAll, tryRead, tryWrite } from "../ffi/libc.ts";
import {
  createChannel,
  decodeHashKnown,
  type HandedConn,
  MAX_CONNS_PER_MESSAGE,
  MAX_ENDED_PER_DONE,
  MessageKind,
  receiveMessage,
  sendConns,
  sendDone,
  sendHashKnown,
  sendMessage,
  sendSignatureKnown,
  ServeMode,
} from "../channel/messages.ts";
import { encodeSockaddr } from "../ffi/sockaddr.ts";
import { parseEndpoint } from "../host_port.ts";

/** Two connected sockets standing in for a client connection: what goes in one end comes out the other. */
const socketPair = createChannel;

/**
 * The fds of this process that lead to the very socket `fd` is open on: /proc/self/fd names a socket by its
 * inode. Counting all fds would count those of other test files running in the same process (--parallel);
 * no other test can hold this socket.
 */
function fdsOnSameSocket(fd: number): number[] {
  const socket = Deno.readLinkSync(`/proc/self/fd/${fd}`);
  const found: number[] = [];
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${entry.name}`) === socket) found.push(Number(entry.name));
    } catch { /* closed meanwhile by another test */ }
  }
  return found.sort((x, y) => x - y);
}

// libc's symbols are bound on first use and stay bound: bind the ones used here before any test starts,
// since the test sanitizer counts a library opened during a test as a leak.
{
  const [a, b] = createChannel();
  sendMessage(a, MessageKind.Ready);
  receiveMessage(b);
  assert.equal(receiveMessage(b), null);
  tryWrite(a, new Uint8Array(1));
  tryRead(b, new Uint8Array(64));
  close(a);
  close(b);
  encodeSockaddr(parseEndpoint("[::1]:1"));
  encodeSockaddr(parseEndpoint("127.0.0.1:1"));
  const memfd = memfdCreate("bind");
  pwriteAll(memfd, new Uint8Array(1), 0);
  pread(memfd, new Uint8Array(1), 0);
  close(memfd);
}

Deno.test("connections handed over in one message arrive with their own fds, ids, modes and addresses", () => {
  const [master, worker] = createChannel();
  const pairs = Array.from({ length: MAX_CONNS_PER_MESSAGE }, socketPair);
  const received: number[] = [];
  try {
    const conns: HandedConn[] = pairs.map(([, writeEnd], i) => ({
      fd: writeEnd,
      id: 1000 + i,
      mode: i % 2 === 0 ? ServeMode.Request : ServeMode.Classic,
      peer: encodeSockaddr(parseEndpoint(i % 2 === 0 ? `127.0.0.${i + 1}:${4000 + i}` : `[::1]:${4000 + i}`)),
    }));
    assert.ok(sendConns(master, conns));
    assert.ok(sendMessage(master, MessageKind.Stop)); // the next message stays apart
    const message = receiveMessage(worker);
    assert.ok(message !== null && message !== "closed");
    assert.equal(message.kind, MessageKind.Conns);
    assert.equal(message.conns.length, MAX_CONNS_PER_MESSAGE);
    for (const [i, handed] of message.conns.entries()) {
      received.push(handed.fd);
      assert.equal(handed.id, 1000 + i);
      assert.equal(handed.mode, conns[i].mode);
      assert.deepEqual(handed.peer.subarray(0, conns[i].peer.byteLength), conns[i].peer);
      // The fd is a working copy of the one sent: bytes written through it come out of its pair.
      assert.equal(tryWrite(handed.fd, new Uint8Array([i])), 1);
      const got = new Uint8Array(4);
      assert.equal(tryRead(pairs[i][0], got), 1);
      assert.equal(got[0], i);
    }
    const stop = receiveMessage(worker);
    assert.ok(stop !== null && stop !== "closed");
    assert.equal(stop.kind, MessageKind.Stop);
    assert.equal(stop.conns.length, 0);
    assert.throws(() => sendConns(master, []), /1 to 8 allowed/);
  } finally {
    for (const fd of [master, worker, ...received, ...pairs.flat()]) close(fd);
  }
});

Deno.test("a Conns message whose fds do not match its count is refused and its fds are closed", () => {
  const [master, worker] = createChannel();
  const [a, b] = socketPair();
  try {
    assert.deepEqual(fdsOnSameSocket(a), [a]);
    // Claims two connections, carries one fd.
    const bad = new Uint8Array(new ArrayBuffer(16 + 2 * 40));
    new DataView(bad.buffer).setUint32(0, MessageKind.Conns, true);
    new DataView(bad.buffer).setUint32(8, 2, true);
    assert.ok(trySendWithFds(master, bad, bad.byteLength, [a]));
    assert.throws(() => receiveMessage(worker), /expected 96 bytes with 2/);
    assert.deepEqual(fdsOnSameSocket(a), [a], "the copy of the fd that came with it was closed");
  } finally {
    for (const fd of [master, worker, a, b]) close(fd);
  }
});

Deno.test("a HashKnown message carries a file's etag and SHA-256 from one end to the other, as hex", () => {
  const [master, worker] = createChannel();
  try {
    const etag = "0123456789abcdef00ff7f8010203040";
    const sha256 = "f".repeat(8) + "0".repeat(8) + "9a".repeat(24);
    assert.ok(sendHashKnown(worker, etag, sha256));
    const message = receiveMessage(master);
    assert.ok(message !== null && message !== "closed");
    assert.equal(message.kind, MessageKind.HashKnown);
    assert.deepEqual(decodeHashKnown(message.payload), { etag, sha256 });
    assert.throws(() => sendHashKnown(worker, etag.toUpperCase(), sha256), /not 16 bytes in lowercase hex/);
    assert.throws(() => sendHashKnown(worker, etag, sha256.slice(2)), /not 32 bytes in lowercase hex/);
    assert.equal(receiveMessage(master), null, "nothing was sent for a malformed hash");
  } finally {
    close(master);
    close(worker);
  }
});

Deno.test("a SignatureKnown message carries an etag, a SHA-256 and the memfd that holds the signature", () => {
  const [master, worker] = createChannel();
  const memfd = memfdCreate("test-signature");
  let received = -1;
  try {
    const signature = new TextEncoder().encode("FCS1 and the rest of a signature");
    pwriteAll(memfd, signature, 0);
    const etag = "00112233445566778899aabbccddeeff";
    const sha256 = "ab".repeat(32);
    assert.ok(sendSignatureKnown(worker, etag, sha256, memfd));
    const message = receiveMessage(master);
    assert.ok(message !== null && message !== "closed");
    assert.equal(message.kind, MessageKind.SignatureKnown);
    assert.deepEqual(decodeHashKnown(message.payload), { etag, sha256 });
    received = message.fd;
    assert.notEqual(received, memfd, "the receiver has its own fd");
    const back = new Uint8Array(signature.byteLength);
    assert.equal(pread(received, back, 0), signature.byteLength);
    assert.deepEqual(back, signature);
  } finally {
    for (const fd of [master, worker, memfd, received]) if (fd !== -1) close(fd);
  }
});

Deno.test("a Done message carries its slot counts and the ids of up to 12 closed connections, in 64 bytes", () => {
  const [a, b] = createChannel();
  try {
    const ids = Array.from({ length: MAX_ENDED_PER_DONE }, (_, i) => 0xfffffff0 + i);
    assert.ok(sendDone(a, 3, 5, ids));
    assert.ok(sendDone(a, 0, 1, []));
    const full = receiveMessage(b);
    assert.ok(full !== null && full !== "closed");
    assert.deepEqual([full.kind, full.id, full.arg, [...full.ended]], [MessageKind.Done, 3, 5, ids]);
    const none = receiveMessage(b);
    assert.ok(none !== null && none !== "closed");
    assert.deepEqual([none.arg, none.ended.length], [1, 0]);
    assert.throws(() => sendDone(a, 0, 0, [...ids, 1]), /at most 12/);
  } finally {
    close(a);
    close(b);
  }
});
