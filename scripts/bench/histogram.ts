/**
 * A latency histogram that load generator processes fill and the benchmark merges: logarithmic buckets
 * (16 per doubling, so a percentile is exact to about 4.5%), counted in microseconds. Merging two runs is
 * adding their buckets, so several generator processes can report one p99.
 *
 * @module
 */

/** Buckets per doubling of the latency. */
const PER_DOUBLING = 16;
/** Buckets in all: up to 2^32 microseconds (over an hour). */
const BUCKETS = 32 * PER_DOUBLING;

/** A latency histogram, as the generator prints it in its JSON result. */
export interface Histogram {
  /** Counts per bucket; bucket `i` holds latencies below `2^((i + 1) / 16)` microseconds. */
  buckets: number[];
  /** Latencies recorded. */
  count: number;
  /** Largest latency recorded, in milliseconds. */
  maxMs: number;
  /** Sum of all latencies, in milliseconds. */
  sumMs: number;
}

/** An empty histogram. */
export function newHistogram(): Histogram {
  return { buckets: new Array(BUCKETS).fill(0), count: 0, maxMs: 0, sumMs: 0 };
}

/** Records one latency of `ms` milliseconds. */
export function record(h: Histogram, ms: number): void {
  const us = Math.max(1, ms * 1000);
  const i = Math.min(BUCKETS - 1, Math.floor(Math.log2(us) * PER_DOUBLING));
  h.buckets[i]++;
  h.count++;
  h.sumMs += ms;
  if (ms > h.maxMs) h.maxMs = ms;
}

/** Adds `b` into `a`. */
export function merge(a: Histogram, b: Histogram): void {
  for (let i = 0; i < BUCKETS; i++) a.buckets[i] += b.buckets[i] ?? 0;
  a.count += b.count;
  a.sumMs += b.sumMs;
  a.maxMs = Math.max(a.maxMs, b.maxMs);
}

/** The latency below which a fraction `p` (0-1) of the recorded ones lie, in milliseconds (NaN if empty). */
export function percentile(h: Histogram, p: number): number {
  if (h.count === 0) return NaN;
  const rank = Math.ceil(p * h.count);
  let seen = 0;
  for (let i = 0; i < BUCKETS; i++) {
    seen += h.buckets[i];
    if (seen >= rank) return Math.min(h.maxMs, 2 ** ((i + 1) / PER_DOUBLING) / 1000);
  }
  return h.maxMs;
}
