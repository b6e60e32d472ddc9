/**
 * The worker's memos (hashes, headers, parsed requests, replies asked for once) are Maps kept to a bound
 * by forgetting their oldest entries: {@link setWithin} is the one way they grow.
 *
 * @module
 */

/**
 * Sets `key` to `value` in `map`, and once `map` holds more than `max` entries forgets its oldest (in
 * insertion order) down to seven eighths of `max`, in one pass. Forgetting one entry per insertion cost
 * more than the rest of a request: V8 leaves a deleted entry's slot in place until the table is rebuilt,
 * and an iteration from the start steps over every such slot to find the oldest entry still there.
 */
export function setWithin<K, V>(map: Map<K, V>, key: K, value: V, max: number): void {
  map.set(key, value);
  if (map.size <= max) return;
  let excess = map.size - max + Math.ceil(max / 8);
  for (const old of map.keys()) {
    if (excess-- <= 0) break;
    map.delete(old);
  }
}
