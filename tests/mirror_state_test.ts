/**
 * The mirror's state file, in process: what it trusts and what it refuses. The whole mirror is tested with
 * real files in mirror_test.ts; here, the rules of trust one by one.
 *
 * @module
 */

import assert from "node:assert/strict";
import { MirrorState, RACY_WINDOW_NS, type StateEntry } from "../client/mirror_state.ts";

const SHA = "ab".repeat(32);
const WRITTEN = 1_800_000_000_000_000_000n;

function entry(fields: Partial<StateEntry> = {}): StateEntry {
  return {
    size: 4096,
    mtimeNs: 1_700_000_000_123_456_789n,
    ctimeNs: WRITTEN - 10n * RACY_WINDOW_NS,
    ino: 1234n,
    sha256: SHA,
    etag: "0123456789abcdef0123456789abcdef",
    ...fields,
  };
}

function roundTrip(state: MirrorState, writtenAtNs = WRITTEN): MirrorState {
  return MirrorState.parse(state.format(), writtenAtNs);
}

Deno.test("a file whose lstat still matches its entry is trusted, across a save and a load", () => {
  const state = new MirrorState();
  state.set("d/a.txt", entry());
  state.set("tab\there/new\nline.txt", entry({ ino: 99n }));
  const loaded = roundTrip(state);
  assert.equal(loaded.size, 2);
  assert.deepEqual(loaded.trusted("d/a.txt", entry()), entry());
  assert.deepEqual(loaded.trusted("tab\there/new\nline.txt", entry({ ino: 99n })), entry({ ino: 99n }));
});

Deno.test("same size and mtime set back, but another inode or ctime: not trusted", () => {
  const state = new MirrorState();
  state.set("f", entry());
  const loaded = roundTrip(state);
  assert.equal(loaded.trusted("f", entry({ ino: 1235n })), undefined, "replaced by another file");
  assert.equal(loaded.trusted("f", entry({ ctimeNs: entry().ctimeNs + 1n })), undefined, "changed in place");
  assert.equal(loaded.trusted("f", entry({ size: 4095 })), undefined);
  assert.equal(loaded.trusted("f", entry({ mtimeNs: 1n })), undefined);
  assert.equal(loaded.trusted("g", entry()), undefined, "a path never published");
});

Deno.test("an entry recorded in the clock tick the state was written in is not trusted (racy clean)", () => {
  const state = new MirrorState();
  const racy = entry({ ctimeNs: WRITTEN - RACY_WINDOW_NS / 2n });
  state.set("racy", racy);
  assert.equal(roundTrip(state).trusted("racy", racy), undefined);
  assert.deepEqual(roundTrip(state, WRITTEN + 2n * RACY_WINDOW_NS).trusted("racy", racy), racy);
});

Deno.test("a corrupt state costs hashing only: bad lines are skipped, a foreign file gives an empty state", () => {
  const state = new MirrorState();
  state.set("good", entry());
  const text = state.format();
  const damaged = text + [
    '4096\t1\t1\t1\tnot-a-hash\t\t"bad-hash"',
    "-1\t1\t1\t1\t" + SHA + '\t\t"negative"',
    "4096\t1\t1\t1\t" + SHA + '\t\t"unterminated',
    "4096\t1\t1",
    "",
  ].join("\n");
  const loaded = MirrorState.parse(damaged, WRITTEN);
  assert.equal(loaded.size, 1);
  assert.deepEqual(loaded.trusted("good", entry()), entry());
  assert.equal(MirrorState.parse("something else\n" + text, WRITTEN).size, 0);
  assert.equal(
    MirrorState.parse(text.slice(0, text.length / 2), WRITTEN).size,
    0,
    "cut inside its only entry",
  );
});
