// Shared by the orchestrator (bench.mjs) and the subscriber workers: one clock and one latency histogram.

import { performance } from 'node:perf_hooks';

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes on one machine. */
export const now = () => performance.timeOrigin + performance.now();

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A log-bucketed latency histogram: bucket i holds latencies in [1.01^i, 1.01^(i+1)) microseconds, so every
// percentile is within 1% of the true value; bucket 0 also holds anything under 1 us (and negative values,
// counted separately: a negative latency means the clocks disagree, which the report checks).
const BASE = Math.log(1.01);
const BUCKETS = 2000; // 1.01^2000 us is far past any timeout here

export class Histogram {
  constructor() {
    this.counts = new Float64Array(BUCKETS);
    this.n = 0;
    this.negative = 0;
    this.max = 0;
  }

  /** Records a latency in milliseconds. */
  add(ms) {
    if (ms < 0) this.negative++;
    const us = ms * 1000;
    let i = us <= 1 ? 0 : Math.floor(Math.log(us) / BASE);
    if (i >= BUCKETS) i = BUCKETS - 1;
    this.counts[i]++;
    this.n++;
    if (ms > this.max) this.max = ms;
  }

  /** Sparse form for IPC. */
  toJSON() {
    const sparse = [];
    for (let i = 0; i < BUCKETS; i++) if (this.counts[i]) sparse.push([i, this.counts[i]]);
    return { sparse, n: this.n, negative: this.negative, max: this.max };
  }

  merge(json) {
    for (const [i, c] of json.sparse) this.counts[i] += c;
    this.n += json.n;
    this.negative += json.negative;
    if (json.max > this.max) this.max = json.max;
    return this;
  }

  /** The p-th percentile (0..100) in milliseconds, or NaN when empty. */
  percentile(p) {
    if (!this.n) return NaN;
    const rank = Math.ceil((p / 100) * this.n);
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i];
      if (seen >= rank) return i === 0 ? 0.001 : Math.pow(1.01, i + 0.5) / 1000;
    }
    return this.max;
  }
}
