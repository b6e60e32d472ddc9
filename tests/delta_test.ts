/**
 * Delta transfer's arithmetic, in process: a new version built from an old copy and the fetched ranges is
 * byte-identical to the server's, whatever the edit; an edit costs about its own size; a signature that
 * cannot describe the file is refused.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  chunkBitsFor,
  Chunker,
  chunkLimits,
  decodeSignature,
  type DeltaPlan,
  encodeSignature,
  findChunks,
  GuidedSignatureBuilder,
  indexChunks,
  planDelta,
  type Signature,
  SignatureBuilder,
  SignatureError,
  signatureOf,
} from "../delta.ts";
import { loadHashing } from "../hashing.ts";
import { concat } from "./helpers.ts";
import { CHUNK_GEAR_SEED, MAX_CHUNK_BITS, MIN_CHUNK_BITS, SIGNATURE_HEADER_SIZE } from "../framing.ts";

await loadHashing();

/** A seeded xorshift32: the same edit scripts on every run. */
function random(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n: number) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
}

function randomBytes(next: (n: number) => number, length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = next(256);
  return bytes;
}

type Edit = "insert" | "delete" | "overwrite" | "append" | "truncate" | "move";
const EDITS: Edit[] = ["insert", "delete", "overwrite", "append", "truncate", "move"];

/** Applies one edit of kind `kind` at a random place; the edit's size is up to `scale` bytes. */
function applyEdit(data: Uint8Array, kind: Edit, next: (n: number) => number, scale: number): Uint8Array {
  const at = next(data.length + 1);
  const size = 1 + next(scale);
  switch (kind) {
    case "insert":
      return concat(data.subarray(0, at), randomBytes(next, size), data.subarray(at));
    case "delete":
      return concat(data.subarray(0, at), data.subarray(Math.min(data.length, at + size)));
    case "overwrite": {
      const out = data.slice();
      out.set(randomBytes(next, Math.min(size, data.length - at)), at);
      return out;
    }
    case "append":
      return concat(data, randomBytes(next, size));
    case "truncate":
      return data.subarray(0, at);
    case "move": {
      // A block cut out and put back elsewhere: its bytes are all in the old copy, at another offset.
      const end = Math.min(data.length, at + size);
      const block = data.subarray(at, end);
      const rest = concat(data.subarray(0, at), data.subarray(end));
      const to = next(rest.length + 1);
      return concat(rest.subarray(0, to), block, rest.subarray(to));
    }
  }
}

/** Builds the new file as a client would: old bytes copied, fetched ranges consumed in order. */
function assemble(plan: DeltaPlan, oldCopy: Uint8Array, fetched: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(size);
  let consumed = 0;
  for (const step of plan.steps) {
    if (step.from === null) {
      out.set(fetched.subarray(consumed, consumed + step.length), step.offset);
      consumed += step.length;
    } else {
      out.set(oldCopy.subarray(step.from, step.from + step.length), step.offset);
    }
  }
  assert.equal(consumed, fetched.length, "every fetched byte is used once");
  return out;
}

/** What the server sends for the plan's ranges, in order. */
const fetch = (plan: DeltaPlan, newVersion: Uint8Array): Uint8Array =>
  concat(...plan.ranges.map(([offset, length]) => newVersion.subarray(offset, offset + length)));

/** {@link findChunks} over bytes in memory, read in pieces of at most `piece` bytes. */
function findIn(remote: Signature, oldCopy: Uint8Array, piece = Infinity) {
  return findChunks(remote, oldCopy.length, (buffer, offset) => {
    const n = Math.min(buffer.length, piece, oldCopy.length - offset);
    buffer.set(oldCopy.subarray(offset, offset + n));
    return n;
  });
}

/**
 * The whole round: signatures on both sides, the wire form in between, the plan, the assembly. The old
 * copy's chunks are found both ways, by cutting all of it and by following the remote signature (read in
 * pieces of `piece` bytes): the plans must be the same. And the new version, signed by following the old
 * copy's signature (as the server signs a new version of a file it signed before), has the same signature as
 * when cut whole.
 */
function delta(oldCopy: Uint8Array, newVersion: Uint8Array, bits?: number, piece?: number): DeltaPlan {
  const signature = signatureOf(newVersion, bits);
  const remote = decodeSignature(encodeSignature(signature), newVersion.length);
  const local = signatureOf(oldCopy, remote.bits);
  const plan = planDelta(remote, indexChunks(local));
  assert.deepEqual(planDelta(remote, findIn(remote, oldCopy, piece)), plan, "found as when cut whole");
  assert.deepEqual(signFollowing(local, newVersion, piece), signature, "signed as when cut whole");
  const built = assemble(plan, oldCopy, fetch(plan, newVersion), remote.size);
  assert.ok(Buffer.from(built).equals(Buffer.from(newVersion)), "the built file is the new version");
  assert.equal(plan.fetchBytes + plan.reusedBytes, newVersion.length);
  return plan;
}

/** The signature of `data` fed in pieces of at most `piece` bytes to a builder following `guide`. */
function signFollowing(guide: Signature, data: Uint8Array, piece = Infinity): Signature {
  const builder = new GuidedSignatureBuilder(guide);
  for (let at = 0; at < data.length; at += Math.min(piece, data.length)) {
    builder.update(data.subarray(at, at + Math.min(piece, data.length)));
  }
  return builder.finish();
}

Deno.test("1,200 random edit scripts: the file built from the old copy and the fetched ranges is the new version", () => {
  const next = random(20261205);
  let fetched = 0, total = 0;
  for (let trial = 0; trial < 1200; trial++) {
    const bits = MIN_CHUNK_BITS + next(MAX_CHUNK_BITS - MIN_CHUNK_BITS + 1);
    const { max } = chunkLimits(bits);
    const oldCopy = randomBytes(next, next(4 * max));
    let newVersion = oldCopy;
    const edits = 1 + next(5);
    for (let e = 0; e < edits; e++) {
      newVersion = applyEdit(newVersion, EDITS[next(EDITS.length)], next, 1 << bits);
    }
    const plan = delta(oldCopy, newVersion, bits, 1 + next(3 * max));
    fetched += plan.fetchBytes;
    total += newVersion.length;
  }
  // Edits of about a chunk each leave most of a file in place: most bytes come from the old copies.
  assert.ok(fetched < 0.6 * total, `fetched ${fetched} of ${total} bytes`);
});

Deno.test("an unchanged file is built wholly from the old copy, and a new one wholly fetched", () => {
  const next = random(7);
  const data = randomBytes(next, 300_000);
  assert.equal(delta(data, data).fetchBytes, 0);
  assert.equal(delta(new Uint8Array(0), data).fetchBytes, data.length);
  assert.equal(delta(data, new Uint8Array(0)).steps.length, 0);
});

Deno.test("an edit costs about its own size: 4 KiB overwritten or 1 MiB inserted in 8 MiB", () => {
  const next = random(99);
  const oldCopy = randomBytes(next, 8 << 20);
  const { max } = chunkLimits(chunkBitsFor(oldCopy.length));

  const overwritten = oldCopy.slice();
  overwritten.set(randomBytes(next, 4096), 4 << 20);
  const small = delta(oldCopy, overwritten);
  assert.ok(small.fetchBytes <= 4096 + 2 * max, `fetched ${small.fetchBytes} bytes for a 4 KiB edit`);

  const inserted = concat(
    oldCopy.subarray(0, 3 << 20),
    randomBytes(next, 1 << 20),
    oldCopy.subarray(3 << 20),
  );
  const large = delta(oldCopy, inserted);
  assert.ok(
    large.fetchBytes <= (1 << 20) + 2 * max,
    `fetched ${large.fetchBytes} bytes for a 1 MiB insertion`,
  );
  assert.equal(large.ranges.length, 1, "one range around the insertion");
});

Deno.test("a signature built from pieces of any size equals the one built at once", () => {
  const next = random(3);
  const data = randomBytes(next, 500_000);
  const whole = signatureOf(data, 12);
  const builder = new SignatureBuilder(12);
  for (let at = 0; at < data.length;) {
    const n = 1 + next(40_000);
    builder.update(data.subarray(at, at + n));
    at += n;
  }
  const pieces: Signature = builder.finish();
  assert.deepEqual(pieces, whole);
});

/**
 * The cut points as the protocol defines them (PROTOCOL.md "Delta transfer"), one byte at a time: the gear
 * hash of every byte, a cut where its top bits are zero once the chunk is `min` long, or at `max`.
 */
function referenceCuts(data: Uint8Array, bits: number): number[] {
  const gear = new Uint32Array(256);
  for (let i = 0, x = CHUNK_GEAR_SEED; i < 256; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    gear[i] = x >>> 0;
  }
  const mask = (~0 << (32 - bits)) | 0;
  const { min, max } = chunkLimits(bits);
  const cuts: number[] = [];
  for (let i = 0, hash = 0, length = 0; i < data.length; i++) {
    hash = ((hash << 1) + gear[data[i]]) | 0;
    length++;
    if ((length >= min && (hash & mask) === 0) || length >= max) {
      cuts.push(i + 1);
      hash = 0;
      length = 0;
    }
  }
  return cuts;
}

Deno.test("the chunker, which skips the start of each chunk, cuts where hashing every byte cuts", () => {
  const next = random(77);
  const data = randomBytes(next, 3 * 1024 * 1024);
  data.fill(7, 1024 * 1024, 1536 * 1024); // a run of one byte value: no hash cut, so chunks end at max
  for (let bits = MIN_CHUNK_BITS; bits <= MAX_CHUNK_BITS; bits++) {
    const expected = referenceCuts(data, bits);
    for (const piece of [5, 999, 4096, 70_001, data.length]) {
      const chunker = new Chunker(bits);
      const cuts: number[] = [];
      for (let at = 0; at < data.length; at += piece) {
        chunker.update(data.subarray(at, at + piece), (end) => {
          cuts.push(at + end);
        });
      }
      assert.deepEqual(cuts, expected, `bits ${bits}, fed in pieces of ${piece} bytes`);
    }
  }
});

Deno.test("a signature that cannot describe the file is refused with SignatureError", () => {
  const data = randomBytes(random(5), 100_000);
  const good = encodeSignature(signatureOf(data));
  const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);
  const cases: [string, Uint8Array, number][] = [
    ["too short", good.subarray(0, 10), data.length],
    ["cut in an entry", good.subarray(0, good.length - 3), data.length],
    ["another file's size", good, data.length + 1],
  ];
  const badMagic = good.slice();
  badMagic[0] ^= 1;
  cases.push(["unknown magic", badMagic, data.length]);
  const badBits = good.slice();
  badBits[4] = MAX_CHUNK_BITS + 1;
  cases.push(["chunk bits out of range", badBits, data.length]);
  const zeroLength = good.slice();
  view(zeroLength).setUint32(SIGNATURE_HEADER_SIZE, 0, true);
  cases.push(["a chunk of length 0", zeroLength, data.length]);
  const wrongSum = good.slice();
  view(wrongSum).setUint32(
    SIGNATURE_HEADER_SIZE,
    view(good).getUint32(SIGNATURE_HEADER_SIZE, true) - 1,
    true,
  );
  cases.push(["lengths that do not add up", wrongSum, data.length]);
  for (const [what, bytes, size] of cases) {
    assert.throws(() => decodeSignature(bytes, size), SignatureError, what);
  }
  assert.deepEqual(decodeSignature(good, data.length), signatureOf(data));
});
