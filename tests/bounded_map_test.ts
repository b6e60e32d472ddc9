/**
 * The worker's memos stay within their bound, forgetting the oldest entries first and never the newest.
 */

import assert from "node:assert/strict";
import { setWithin } from "../worker/bounded_map.ts";

Deno.test("setWithin keeps a map within its bound, forgetting the oldest entries first, the newest never", () => {
  const map = new Map<number, string>();
  for (let i = 0; i < 100_000; i++) {
    setWithin(map, i, `v${i}`, 1000);
    assert.ok(map.size <= 1000, `${map.size} entries after ${i + 1}`);
    assert.equal(map.get(i), `v${i}`);
  }
  const kept = [...map.keys()];
  assert.ok(kept.length >= 875, "no more than an eighth forgotten at once");
  assert.deepEqual(
    kept,
    Array.from({ length: kept.length }, (_, k) => 100_000 - kept.length + k),
    "the newest, in order",
  );
  setWithin(map, kept[0], "again", 1000);
  assert.equal(map.get(kept[0]), "again", "a key set again keeps its value");
});
