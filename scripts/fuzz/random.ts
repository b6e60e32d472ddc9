/**
 * A small seeded pseudo-random generator (mulberry32) for the fuzzer: the same seed gives the same frames,
 * so a run that finds something can be run again.
 *
 * @module
 */

/** A deterministic source of random numbers, bytes and choices. */
export class Random {
  #state: number;

  /** @param seed any integer; equal seeds give equal sequences */
  constructor(seed: number) {
    this.#state = seed >>> 0;
  }

  /** A generator for item `index` of a run seeded with `seed`, independent of the order items run in. */
  static forItem(seed: number, index: number): Random {
    return new Random(Math.imul(seed ^ 0x5bd1e995, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b));
  }

  /** A float in [0, 1). */
  next(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** An integer in [min, max]. */
  between(min: number, max: number): number {
    return min + this.int(max - min + 1);
  }

  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  /** One element of `items`. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }

  /** `n` random bytes. */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }

  /** A random signed 32-bit integer. */
  int32(): number {
    return (this.int(65536) << 16) | this.int(65536);
  }
}
